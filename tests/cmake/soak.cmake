# soak: load and soak tests against the real tiergate (tests/soak).
#   test_soak_conns  10,000 concurrent keep-alive connections (TG_SOAK_CONNS), fds and RSS after
#   test_soak_backlog  requests waiting on a stopped tiergate are not dropped as slowloris
#   test_soak_mixed  local + remote + cache hits + streams at a fixed rate, RSS/fd sampled to CSV;
#                    60 s by default (30 s in a TG_SANITIZE build), TG_SOAK_SECONDS to change it
# The 10-minute run is opt-in: `cmake --build build --target soak` (bench/RESULTS.md, "soak").
add_library(tg_soak_util STATIC ${TG_TEST_DIR}/soak/soak_util.c)
target_include_directories(tg_soak_util PUBLIC ${TG_TEST_DIR}/soak)
target_link_libraries(tg_soak_util PUBLIC tg_testlib)
target_compile_definitions(tg_soak_util PRIVATE TG_BINARY_DIR="${CMAKE_BINARY_DIR}"
    TG_TINY_MODEL="${TG_TINY_MODEL}" TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
tg_target_defaults(tg_soak_util)

tg_add_unit_test(test_soak_conns SOURCES ${TG_TEST_DIR}/soak/test_soak_conns.c
  LIBS tg_soak_util PkgConfig::LIBEVENT LABELS "integration;load")
add_dependencies(test_soak_conns tiergate model-tiny tg-fake-upstream)
if(TG_SANITIZE)
  # RSS assertions are skipped under ASan (its quarantine grows by design); figures still printed
  target_compile_definitions(test_soak_conns PRIVATE TG_SOAK_SANITIZE=1)
endif()

# A backlogged I/O thread (tiergate SIGSTOPped with 2,000 requests waiting) is not a slowloris.
tg_add_unit_test(test_soak_backlog SOURCES ${TG_TEST_DIR}/soak/test_soak_backlog.c
  LIBS tg_soak_util LABELS "integration;load")
add_dependencies(test_soak_backlog tiergate model-tiny tg-fake-upstream)

tg_add_unit_test(test_soak_mixed SOURCES ${TG_TEST_DIR}/soak/test_soak_mixed.c
  LIBS tg_testlib tg_soak_util PkgConfig::JANSSON CURL::libcurl LABELS "integration;load")
add_dependencies(test_soak_mixed tiergate model-tiny tg-fake-upstream)
set_tests_properties(test_soak_mixed PROPERTIES TIMEOUT 400)
if(TG_SANITIZE)
  target_compile_definitions(test_soak_mixed PRIVATE TG_SOAK_SANITIZE=1)
endif()

# Opt-in long run: the 10k-connection test, then a 10-minute mixed soak with its RSS/fd CSV in
# the build directory (soak-mixed-600s.csv). Not part of ctest's default run.
add_custom_target(soak
  COMMAND $<TARGET_FILE:test_soak_conns>
  COMMAND ${CMAKE_COMMAND} -E env TG_SOAK_SECONDS=600
          TG_SOAK_CSV=${CMAKE_BINARY_DIR}/soak-mixed-600s.csv $<TARGET_FILE:test_soak_mixed>
  DEPENDS test_soak_conns test_soak_mixed
  WORKING_DIRECTORY ${CMAKE_BINARY_DIR}
  USES_TERMINAL
  COMMENT "soak: 10,000 connections, then 10 minutes of mixed load (TG_SOAK_SECONDS=600)")
