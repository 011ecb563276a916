# Metrics: registry/exposition/cost/admin unit tests (+ promtool), the usage ledger on a real Redis,
# deploy/ files (Grafana JSON, Prometheus config) checked against our exposition, and the gateway
# end to end (/metrics, /v1/usage, /dashboard in headless Chromium) when the binary serves them.
tg_add_unit_test(test_metrics SOURCES ${TG_TEST_DIR}/metrics/test_metrics.c
  LIBS tg_gw_metrics tg_testlib m LABELS metrics)
tg_add_unit_test(test_usage SOURCES ${TG_TEST_DIR}/metrics/test_usage.c
  LIBS tg_gw_metrics tg_gw_redis tg_testlib m LABELS "metrics;redis")
tg_add_unit_test(test_deploy_files SOURCES ${TG_TEST_DIR}/metrics/test_deploy.c
  LIBS tg_gw_metrics LABELS metrics)
