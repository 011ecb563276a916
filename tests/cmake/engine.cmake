# engine: the local engine (tg_engine) on the tiny generated model.
if(TARGET tg_engine)
  tg_add_unit_test(test_engine SOURCES ${TG_TEST_DIR}/engine/test_engine.c
      LIBS tg_engine tg_common Threads::Threads m LABELS llama)
  # engine_int.h (text helpers) is module-private; only this test reaches into it.
  target_include_directories(test_engine PRIVATE ${CMAKE_SOURCE_DIR}/local-engine)
  add_dependencies(test_engine model-tiny)
endif()
if(TARGET test_engine)
  # ~90 s of CPU on one thread; the machine's cores are shared, so allow for waiting.
  set_tests_properties(test_engine PROPERTIES TIMEOUT 1500)
endif()

# The gateway in front of a kv_split engine: a prompt over one slot's context goes remote
# (fallback) or is a 400 naming both sizes. Real tiergate binary + fake upstream (~3 s).
if(TARGET tg_engine AND TARGET tiergate)
  tg_add_unit_test(test_engine_gateway_ctx SOURCES ${TG_TEST_DIR}/engine/test_engine_gateway_ctx.c
      LIBS tg_gw_testenv tg_common LABELS integration)
  add_dependencies(test_engine_gateway_ctx tiergate model-tiny)
  if(TARGET tg-fake-upstream)
    add_dependencies(test_engine_gateway_ctx tg-fake-upstream)
  endif()
endif()
