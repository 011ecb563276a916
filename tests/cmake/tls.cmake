# tls: HTTPS on the listener (server.tls) against the real binary; certificates generated at test
# time with the openssl CLI.
tg_add_unit_test(test_tls SOURCES ${TG_TEST_DIR}/tls/test_tls.c
  LIBS tg_testlib tg_config OpenSSL::SSL OpenSSL::Crypto CURL::libcurl Threads::Threads
  LABELS integration security)
target_compile_definitions(test_tls PRIVATE TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
add_dependencies(test_tls tiergate model-tiny tg-fake-upstream)
