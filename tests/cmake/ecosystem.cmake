# ecosystem: Ollama model names, `tiergate pull`, n8n request replay, LangChain conformance.
tg_add_unit_test(test_model_ref SOURCES ${TG_TEST_DIR}/ecosystem/test_model_ref.c LIBS tg_config)

# local.model: ollama:NAME end to end (tiergate check + serving from the blob).
tg_add_unit_test(test_ollama_e2e SOURCES ${TG_TEST_DIR}/ecosystem/test_ollama_e2e.c
  LIBS tg_testlib LABELS integration)
if(TARGET test_ollama_e2e)
  add_dependencies(test_ollama_e2e tiergate model-tiny)
endif()

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

# n8n. Opt-in (not in ctest): `cmake --build BUILD --target test-n8n` installs n8n 1.123.x from npm
# under BUILD/n8n and runs the deploy/n8n workflows against a live tiergate. The default suite
# replays the requests those runs recorded (tests/ecosystem/n8n/requests.jsonl).
function(tg_ecosystem_n8n_targets)
  set(fake ${CMAKE_BINARY_DIR}/tests/tg-fake-upstream)
  if(TARGET tg-fake-upstream)
    set(fake $<TARGET_FILE:tg-fake-upstream>)
  endif()
  add_custom_target(test-n8n
    COMMAND ${TG_TEST_DIR}/ecosystem/n8n/run-n8n.sh ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}
            $<TARGET_FILE:tiergate> ${fake} ${TG_TINY_MODEL}
    USES_TERMINAL
    COMMENT "n8n 1.123 workflows (deploy/n8n) against tiergate")
  add_dependencies(test-n8n tiergate model-tiny)
  if(TARGET tg-fake-upstream)
    add_dependencies(test-n8n tg-fake-upstream)
  endif()
  tg_add_unit_test(test_n8n_replay SOURCES ${TG_TEST_DIR}/ecosystem/test_n8n_replay.c
    LIBS tg_testlib PkgConfig::JANSSON LABELS integration)
  if(TARGET test_n8n_replay)
    add_dependencies(test_n8n_replay tiergate model-tiny)
    if(TARGET tg-fake-upstream)
      add_dependencies(test_n8n_replay tg-fake-upstream)
      target_compile_definitions(test_n8n_replay PRIVATE TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
    endif()
  endif()
endfunction()
cmake_language(DEFER CALL tg_ecosystem_n8n_targets)
