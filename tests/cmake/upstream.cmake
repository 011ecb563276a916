# upstream: the remote executor's tests (the fake provider, tg-fake-upstream, is defined in
# tests/CMakeLists.txt before every part, so each part's `if(TARGET tg-fake-upstream)` sees it).

tg_add_unit_test(test_upstream SOURCES ${TG_TEST_DIR}/upstream/test_upstream.c
  LIBS tg_gw_upstream tg_config tg_testlib PkgConfig::LIBEVENT LABELS integration)
target_compile_definitions(test_upstream PRIVATE TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
add_dependencies(test_upstream tg-fake-upstream)

tg_add_unit_test(test_upstream_sse SOURCES ${TG_TEST_DIR}/upstream/test_upstream_sse.c LIBS tg_gw_upstream)

# Fuzz corpus replayed as a regression test (any compiler); with clang also the libFuzzer target
# (run by hand: build/tests/fuzz-upstream -max_len=8192 tests/upstream/corpus).
add_executable(upstream-fuzz-replay ${TG_TEST_DIR}/upstream/fuzz_upstream.c)
target_link_libraries(upstream-fuzz-replay PRIVATE tg_gw_upstream)
tg_target_defaults(upstream-fuzz-replay)
add_test(NAME upstream_fuzz_corpus COMMAND upstream-fuzz-replay ${TG_TEST_DIR}/upstream/corpus)
set_tests_properties(upstream_fuzz_corpus PROPERTIES LABELS "unit;upstream;fuzz")
if(CMAKE_C_COMPILER_ID MATCHES "Clang")
  add_executable(fuzz-upstream ${TG_TEST_DIR}/upstream/fuzz_upstream.c)
  target_compile_definitions(fuzz-upstream PRIVATE TG_LIBFUZZER)
  target_compile_options(fuzz-upstream PRIVATE -fsanitize=fuzzer)
  target_link_options(fuzz-upstream PRIVATE -fsanitize=fuzzer)
  target_link_libraries(fuzz-upstream PRIVATE tg_gw_upstream)
  tg_target_defaults(fuzz-upstream)
endif()

# HTTP/2 over TLS to a node http2 server (skipped without node/openssl).
tg_add_unit_test(test_upstream_h2 SOURCES ${TG_TEST_DIR}/upstream/test_upstream_h2.c
  LIBS tg_gw_upstream tg_config tg_testlib PkgConfig::LIBEVENT LABELS integration)
