# Redis component: client, response cache, rate limits/budgets, durable jobs, webhooks - against
# a real redis-server started by the test on a free port.
tg_add_unit_test(test_redis_component SOURCES ${TG_TEST_DIR}/redis/test_redis_component.c
  LIBS tg_gw_redis tg_testlib OpenSSL::Crypto Threads::Threads LABELS redis)

# End to end through the tiergate binary (redis-server + fake upstream + tiny model).
tg_add_unit_test(test_redis_e2e SOURCES ${TG_TEST_DIR}/redis/test_redis_e2e.c
  LIBS tg_testlib PkgConfig::JANSSON PkgConfig::LIBEVENT PkgConfig::HIREDIS OpenSSL::Crypto Threads::Threads
  LABELS "redis;integration")
add_dependencies(test_redis_e2e tiergate model-tiny)
if(TARGET tg-fake-upstream)
  add_dependencies(test_redis_e2e tg-fake-upstream)
  target_compile_definitions(test_redis_e2e PRIVATE TG_FAKE_UPSTREAM="$<TARGET_FILE:tg-fake-upstream>")
endif()

# Fuzz target for the cache's parsers (entry decoding, canonical hashing of client JSON); its
# corpus replays in the default suite. With TG_FUZZ=ON (clang) also the libFuzzer binary:
#   build-fuzz/tests/fuzz_cache -max_total_time=60 tests/redis/corpus/cache
add_executable(fuzz_replay_cache ${TG_TEST_DIR}/redis/fuzz_cache.c ${TG_TEST_DIR}/fuzz/replay.c)
target_link_libraries(fuzz_replay_cache PRIVATE tg_gw_redis)
tg_target_defaults(fuzz_replay_cache)
add_test(NAME fuzz_replay_cache COMMAND fuzz_replay_cache ${TG_TEST_DIR}/redis/corpus/cache)
set_tests_properties(fuzz_replay_cache PROPERTIES LABELS "unit;fuzz;redis" TIMEOUT 120)
if(TG_FUZZ)
  add_executable(fuzz_cache ${TG_TEST_DIR}/redis/fuzz_cache.c ${CMAKE_SOURCE_DIR}/gateway/redis/cache.c
    ${CMAKE_SOURCE_DIR}/gateway/redis/client.c)
  target_include_directories(fuzz_cache PRIVATE ${CMAKE_SOURCE_DIR}/gateway/redis)
  target_link_libraries(fuzz_cache PRIVATE tg_config tg_common PkgConfig::LIBEVENT PkgConfig::HIREDIS
    OpenSSL::Crypto Threads::Threads)
  target_compile_options(fuzz_cache PRIVATE -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer)
  target_link_options(fuzz_cache PRIVATE -fsanitize=fuzzer,address,undefined)
  tg_target_defaults(fuzz_cache)
endif()
