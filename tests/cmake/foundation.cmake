# Foundation: config loader, YAML/buffer helpers, generated model, CLI.
tg_add_unit_test(test_config SOURCES ${TG_TEST_DIR}/config/test_config.c LIBS tg_config)
tg_add_unit_test(test_model SOURCES ${TG_TEST_DIR}/foundation/test_model.c LIBS tg_llama)
add_dependencies(test_model model-tiny)
tg_add_unit_test(test_gateway_smoke SOURCES ${TG_TEST_DIR}/foundation/test_gateway_smoke.c LIBS tg_testlib)
add_dependencies(test_gateway_smoke tiergate model-tiny)
