# Metrics: registry/exposition/cost/admin unit tests (+ promtool), the usage ledger on a real Redis,
# deploy/ files (Grafana JSON, Prometheus config) checked against our exposition, and the gateway
# end to end (/metrics, /v1/usage, /dashboard in headless Chromium) when the binary serves them.
tg_add_unit_test(test_metrics SOURCES ${TG_TEST_DIR}/metrics/test_metrics.c
  LIBS tg_gw_metrics tg_testlib m LABELS metrics)
tg_add_unit_test(test_usage SOURCES ${TG_TEST_DIR}/metrics/test_usage.c
  LIBS tg_gw_metrics tg_gw_redis tg_testlib m LABELS "metrics;redis")
tg_add_unit_test(test_deploy_files SOURCES ${TG_TEST_DIR}/metrics/test_deploy.c
  LIBS tg_gw_metrics LABELS metrics)
# End to end through the real binary (real Redis, the tiny model, the fake upstream, Chromium if
# installed). Artifacts (scrape, DOM, screenshot, logs) land in <build>/metrics-e2e/.
if(TARGET tiergate AND EXISTS ${TG_TEST_DIR}/fake-upstream/fake_upstream.c)
  tg_add_unit_test(test_metrics_e2e SOURCES ${TG_TEST_DIR}/metrics/test_metrics_e2e.c
    LIBS tg_testlib PkgConfig::JANSSON m LABELS "metrics;e2e")
  target_compile_definitions(test_metrics_e2e PRIVATE TG_TIERGATE_BIN="$<TARGET_FILE:tiergate>"
    TG_FAKE_UPSTREAM_BIN="$<TARGET_FILE:tg-fake-upstream>")
  add_dependencies(test_metrics_e2e tiergate tg-fake-upstream model-tiny)
endif()
# Fuzz target for the /v1/usage query and admin-key parsing; its corpus replays in the default
# suite (same scheme as tests/cmake/fuzz.cmake). With TG_FUZZ=ON (clang) also fuzz_usage_query:
#   build-fuzz/tests/fuzz_usage_query -max_total_time=60 tests/metrics/corpus/usage_query
add_executable(fuzz_replay_usage_query ${TG_TEST_DIR}/metrics/fuzz_usage_query.c
  ${TG_TEST_DIR}/fuzz/replay.c)
target_link_libraries(fuzz_replay_usage_query PRIVATE tg_gw_metrics)
tg_target_defaults(fuzz_replay_usage_query)
add_test(NAME fuzz_replay_usage_query COMMAND fuzz_replay_usage_query
  ${TG_TEST_DIR}/metrics/corpus/usage_query)
set_tests_properties(fuzz_replay_usage_query PROPERTIES LABELS "unit;fuzz;metrics" TIMEOUT 120)
if(TG_FUZZ)
  # The parsers are compiled into the target itself so libFuzzer sees their coverage.
  set(m ${CMAKE_SOURCE_DIR}/gateway/metrics)
  add_executable(fuzz_usage_query ${TG_TEST_DIR}/metrics/fuzz_usage_query.c ${m}/usage.c
    ${m}/admin.c ${m}/cost.c ${m}/registry.c)
  target_include_directories(fuzz_usage_query PRIVATE ${m})
  target_link_libraries(fuzz_usage_query PRIVATE tg_gw_redis tg_config tg_common OpenSSL::Crypto
    PkgConfig::JANSSON PkgConfig::LIBEVENT Threads::Threads m)
  target_compile_options(fuzz_usage_query PRIVATE -fsanitize=fuzzer,address,undefined
                         -fno-omit-frame-pointer)
  target_link_options(fuzz_usage_query PRIVATE -fsanitize=fuzzer,address,undefined)
  tg_target_defaults(fuzz_usage_query)
endif()
