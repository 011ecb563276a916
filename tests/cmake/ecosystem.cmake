# ecosystem: Ollama model names, `tiergate pull`, n8n request replay, LangChain conformance.
tg_add_unit_test(test_model_ref SOURCES ${TG_TEST_DIR}/ecosystem/test_model_ref.c LIBS tg_config)
