# faults (issue 9): the upstream fault suite. The real tiergate binary against one scripted fake
# provider per fault row (tests/fake-upstream), rows concurrently, plus a 60 s flapping primary;
# about 65-70 s wall. docs/faults.md has the observed-outcome table.
tg_add_unit_test(test_faults_upstream SOURCES ${TG_TEST_DIR}/faults/test_faults_upstream.c
  LIBS tg_testlib PkgConfig::JANSSON Threads::Threads m LABELS "integration;faults")
target_compile_definitions(test_faults_upstream PRIVATE
  TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
add_dependencies(test_faults_upstream tiergate tg-fake-upstream)
set_tests_properties(test_faults_upstream PROPERTIES TIMEOUT 240)
