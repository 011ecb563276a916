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
