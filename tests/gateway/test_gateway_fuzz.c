/* tests/gateway/fuzz_http.py (random-mutation HTTP fuzzing of the JSON endpoints, fixed seeds)
 * against the real tiergate: no crash, no 500, every error OpenAI-shaped, still serving after. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "gw_testenv.h"

static void test_fuzz_http(void **state)
{
    (void)state;
    struct gw_env env;
    assert_true(gw_env_start(&env, "", NULL, NULL));
    char cmd[512];
    snprintf(cmd, sizeof cmd, "python3 %s/gateway/fuzz_http.py 7 %d 150 'Bearer secret' 2>&1",
             TG_TEST_DIR, env.port);
    int st = system(cmd);
    struct tg_test_response r;
    assert_int_equal(gw_get(&env, "/healthz", &r), 0);
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);
    gw_env_stop(&env);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_fuzz_http)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
