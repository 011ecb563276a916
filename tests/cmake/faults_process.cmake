# Process and dependency faults (tests/faults/test_faults_process.c): Redis killed and restarted,
# an engine worker SIGKILLed mid-job, SIGTERM during streams, SIGHUP with an invalid config. The
# real tiergate binary, a real redis-server, `tiergate engine` workers, the fake upstream.
# (add_dependencies may name targets that later tests/cmake files define.)
tg_add_unit_test(test_faults_process SOURCES ${TG_TEST_DIR}/faults/test_faults_process.c
    LIBS tg_gw_testenv Threads::Threads m LABELS "faults;integration")
add_dependencies(test_faults_process tiergate model-tiny tg-fake-upstream)
