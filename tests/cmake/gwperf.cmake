# gateway connection handling behind the hot-path shortcuts (engineer "gwperf"): upstream
# restart with pooled sockets, back-to-back Connection: close, pipelined keep-alive.
tg_add_gateway_test(test_gateway_conns SOURCES ${TG_TEST_DIR}/gateway/test_gateway_conns.c)
target_compile_definitions(test_gateway_conns PRIVATE
  TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
