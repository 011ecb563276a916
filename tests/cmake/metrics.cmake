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
