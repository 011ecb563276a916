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
