# server.busy_poll_us and busy_poll_upstream_us (gateway/server.c worker_loop): the real tiergate
# binary busy-polling, with remote, stream and local requests, idle blocking (also while a slow
# provider is awaited), and a SIGTERM drain.
tg_add_gateway_test(test_busy_poll SOURCES ${TG_TEST_DIR}/gateway/test_busy_poll.c)
