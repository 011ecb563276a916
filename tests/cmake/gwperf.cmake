# gateway connection handling behind the hot-path shortcuts (engineer "gwperf"): upstream
# restart with pooled sockets, back-to-back Connection: close, pipelined keep-alive.
tg_add_unit_test(test_gateway_conns SOURCES ${TG_TEST_DIR}/gateway/test_gateway_conns.c
  LIBS tg_gw_testenv LABELS integration)
add_dependencies(test_gateway_conns tiergate model-tiny)
if(TARGET tg-fake-upstream)
  add_dependencies(test_gateway_conns tg-fake-upstream)
  target_compile_definitions(test_gateway_conns PRIVATE
    TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
endif()
target_compile_definitions(test_gateway_conns PRIVATE TG_BINARY_DIR="${CMAKE_BINARY_DIR}")
