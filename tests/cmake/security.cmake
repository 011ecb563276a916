# Security (issue 9 part 5, and the valgrind shutdown of part 4): log/error-body redaction, the
# webhook SSRF policy, CRLF injection into upstream requests, keys hashed at rest, per-tenant
# cache isolation; see docs/operations.md "Security".

# Unit: redaction table and real log lines (text + JSON), SSRF address table, callback_url check,
# the webhook sender's connect-time refusal against a real loopback receiver.
tg_add_unit_test(test_security_unit SOURCES ${TG_TEST_DIR}/security/test_security_unit.c
  LIBS tg_gw_redis tg_testlib PkgConfig::LIBEVENT Threads::Threads LABELS security)
target_include_directories(test_security_unit PRIVATE ${CMAKE_SOURCE_DIR}/gateway/redis)

# End to end through the tiergate binary: password-protected redis-server, fake upstream, an
# in-process provider that echoes our credentials in its errors.
add_library(tg_sec_env STATIC ${TG_TEST_DIR}/security/sec_env.c)
target_link_libraries(tg_sec_env PUBLIC tg_testlib PkgConfig::LIBEVENT PkgConfig::HIREDIS
  OpenSSL::Crypto Threads::Threads)
target_include_directories(tg_sec_env PUBLIC ${TG_TEST_DIR}/security ${TG_TEST_DIR}/lib)
target_compile_definitions(tg_sec_env PRIVATE TG_BINARY_DIR="${CMAKE_BINARY_DIR}"
  TG_TINY_MODEL="${TG_TINY_MODEL}" TG_TEST_DIR="${TG_TEST_DIR}")
if(TARGET tg-fake-upstream)
  target_compile_definitions(tg_sec_env PRIVATE TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
endif()
tg_target_defaults(tg_sec_env)

tg_add_unit_test(test_security_e2e SOURCES ${TG_TEST_DIR}/security/test_security_e2e.c
  LIBS tg_sec_env PkgConfig::JANSSON PkgConfig::HIREDIS LABELS "security;integration")
add_dependencies(test_security_e2e tiergate model-tiny)
if(TARGET tg-fake-upstream)
  add_dependencies(test_security_e2e tg-fake-upstream)
endif()

# valgrind: a leak-free, error-free shutdown of the real binary after local, remote, cache-hit and
# streamed requests (normal build only: valgrind and ASan do not mix).
find_program(VALGRIND valgrind)
if(NOT TG_SANITIZE AND VALGRIND)
  tg_add_unit_test(test_security_valgrind SOURCES ${TG_TEST_DIR}/security/test_security_valgrind.c
    LIBS tg_sec_env LABELS "security;integration;valgrind")
  add_dependencies(test_security_valgrind tiergate model-tiny)
  if(TARGET tg-fake-upstream)
    add_dependencies(test_security_valgrind tg-fake-upstream)
  endif()
  set_tests_properties(test_security_valgrind PROPERTIES TIMEOUT 900)
elseif(NOT TG_SANITIZE)
  message(WARNING "valgrind not found: test_security_valgrind is not registered (deploy/install-deps.sh installs it)")
endif()
