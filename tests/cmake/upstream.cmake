# upstream: the scriptable fake provider and the remote executor's tests.
add_executable(tg-fake-upstream ${TG_TEST_DIR}/fake-upstream/fake_upstream.c)
target_link_libraries(tg-fake-upstream PRIVATE PkgConfig::LIBEVENT PkgConfig::JANSSON Threads::Threads)
tg_target_defaults(tg-fake-upstream)

tg_add_unit_test(test_upstream SOURCES ${TG_TEST_DIR}/upstream/test_upstream.c
  LIBS tg_gw_upstream tg_config tg_testlib PkgConfig::LIBEVENT LABELS integration)
target_compile_definitions(test_upstream PRIVATE TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
add_dependencies(test_upstream tg-fake-upstream)

tg_add_unit_test(test_upstream_sse SOURCES ${TG_TEST_DIR}/upstream/test_upstream_sse.c LIBS tg_gw_upstream)
