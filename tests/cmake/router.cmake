# Router tests: table-driven decisions, features, escalation, explain; policy files and their
# file:line errors; the `route --explain` command; the recall targets on the dev set.
tg_add_unit_test(test_router_decide SOURCES ${TG_TEST_DIR}/router/test_router_decide.c
  LIBS tg_router tg_common LABELS router)
tg_add_unit_test(test_router_policy SOURCES ${TG_TEST_DIR}/router/test_router_policy.c
  LIBS tg_router tg_common LABELS router)
tg_add_unit_test(test_router_cli SOURCES ${TG_TEST_DIR}/router/test_router_cli.c
  ${CMAKE_SOURCE_DIR}/gateway/cli_route.c LIBS tg_router tg_common LABELS router)
target_include_directories(test_router_cli PRIVATE ${CMAKE_SOURCE_DIR}/gateway)

# The same `route` command as a program, for people and for the smoke test below.
add_executable(tg-route ${TG_TEST_DIR}/router/route_cli_main.c ${CMAKE_SOURCE_DIR}/gateway/cli_route.c)
target_include_directories(tg-route PRIVATE ${CMAKE_SOURCE_DIR}/gateway)
target_link_libraries(tg-route PRIVATE tg_router tg_common)
tg_target_defaults(tg-route)
add_test(NAME router_cli_smoke
  COMMAND tg-route --explain --policy ${CMAKE_SOURCE_DIR}/policies/balanced.yaml
          Write a 1,500-word short story about a lighthouse keeper)
set_tests_properties(router_cli_smoke PROPERTIES LABELS "unit;router"
  PASS_REGULAR_EXPRESSION "\"tier\":\"remote\",.*\"reason\":\"kind.creative\"")

# Recall targets with the default policy (issue 5): local >= 0.90 and remote >= 0.90.
if(TG_BUILD_BENCH)
  add_test(NAME router_route_eval
    COMMAND route-eval --policy ${CMAKE_SOURCE_DIR}/policies/balanced.yaml
            --data ${CMAKE_SOURCE_DIR}/bench/route-eval/route-dev.jsonl
            --min-local-recall 0.90 --min-remote-recall 0.90)
  set_tests_properties(router_route_eval PROPERTIES LABELS "unit;router" TIMEOUT 120)
endif()

# Fuzz corpus as a regression test (any compiler); with clang also the libFuzzer target
# (run it by hand: build/tests/fuzz-router -max_len=4096 tests/router/corpus).
add_executable(router-fuzz-replay ${TG_TEST_DIR}/router/fuzz_replay.c ${TG_TEST_DIR}/router/fuzz_router.c)
target_link_libraries(router-fuzz-replay PRIVATE tg_router tg_common)
tg_target_defaults(router-fuzz-replay)
add_test(NAME router_fuzz_corpus COMMAND router-fuzz-replay ${TG_TEST_DIR}/router/corpus)
set_tests_properties(router_fuzz_corpus PROPERTIES LABELS "unit;router;fuzz")
if(CMAKE_C_COMPILER_ID MATCHES "Clang")
  add_executable(fuzz-router ${TG_TEST_DIR}/router/fuzz_router.c)
  target_compile_options(fuzz-router PRIVATE -fsanitize=fuzzer)
  target_link_options(fuzz-router PRIVATE -fsanitize=fuzzer)
  target_link_libraries(fuzz-router PRIVATE tg_router tg_common)
  tg_target_defaults(fuzz-router)
endif()
