# Redis component: client, response cache, rate limits/budgets, durable jobs, webhooks - against
# a real redis-server started by the test on a free port.
tg_add_unit_test(test_redis_component SOURCES ${TG_TEST_DIR}/redis/test_redis_component.c
  LIBS tg_gw_redis tg_testlib OpenSSL::Crypto Threads::Threads LABELS redis)
