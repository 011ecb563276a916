# ecosystem: Ollama model names, `tiergate pull`, n8n request replay, LangChain conformance.
tg_add_unit_test(test_model_ref SOURCES ${TG_TEST_DIR}/ecosystem/test_model_ref.c LIBS tg_config)

# `tiergate pull` against a hub-shaped local file server (redirect + X-Linked-Etag, Range, cuts).
add_executable(tg-fake-fileserver ${TG_TEST_DIR}/ecosystem/fake_fileserver.c)
tg_target_defaults(tg-fake-fileserver)
set_target_properties(tg-fake-fileserver PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
tg_add_unit_test(test_pull SOURCES ${TG_TEST_DIR}/ecosystem/test_pull.c
  LIBS tg_testlib OpenSSL::Crypto LABELS integration)
if(TARGET test_pull)
  add_dependencies(test_pull tiergate tg-fake-fileserver)
endif()

# LangChain's ChatOpenAI (@langchain/openai 0.6) against the real binary (tests/conformance/langchain).
# gateway.cmake (which defines tg_gw_testenv) is included after this file: defer to the end of tests/.
function(tg_ecosystem_gateway_tests)
  if(NOT TARGET tg_gw_testenv)
    return()
  endif()
  tg_add_unit_test(test_langchain SOURCES ${TG_TEST_DIR}/conformance/langchain/test_langchain.c
    LIBS tg_gw_testenv LABELS integration)
  if(TARGET test_langchain)
    add_dependencies(test_langchain tiergate model-tiny)
    if(TARGET tg-fake-upstream)
      add_dependencies(test_langchain tg-fake-upstream)
    endif()
  endif()
endfunction()
cmake_language(DEFER CALL tg_ecosystem_gateway_tests)
