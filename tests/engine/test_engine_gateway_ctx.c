/* The gateway with the local engine in kv_split mode (context / slots tokens per slot): a
 * prompt that does not fit one slot goes to the remote tier when the model has a remote
 * fallback, and is a clear 400 context_length_exceeded naming both sizes when nothing may
 * leave the machine (a privacy key). Real tiergate binary, tiny model, fake upstream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_testenv.h"
#include "tg/buf.h"

static struct gw_env env;

static char *long_chat(const char *model)
{
    struct tg_buf b;
    tg_buf_init(&b, 0);
    tg_buf_printf(&b, "{\"model\":\"%s\",\"max_tokens\":4,\"temperature\":0,"
                      "\"messages\":[{\"role\":\"user\",\"content\":\"", model);
    for (int i = 0; i < 120; i++) /* ~370 tokens: fits context 512, not one slot's 256 */
        tg_buf_append_str(&b, "alpha beta gamma ");
    tg_buf_append_str(&b, "\"}]}");
    return tg_buf_detach(&b);
}

static void test_fallback_to_remote(void **state)
{
    (void)state;
    char *body = long_chat("phi-3.5-mini"); /* local, fallbacks: [gpt-fake] */
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/chat/completions", body, NULL, &r), 0);
    char tier[32] = "";
    assert_true(tg_test_header(&r, "x-tiergate-tier", tier, sizeof tier));
    if (r.status != 200 || strcmp(tier, "remote") != 0)
        fprintf(stderr, "status %ld tier %s body %s\n", r.status, tier, r.body);
    assert_int_equal(r.status, 200);
    assert_string_equal(tier, "remote");
    tg_test_response_free(&r);
    free(body);
}

/* The router knows one request's limit in split mode (context / slots, not context): a routed
 * prompt over it goes to the remote tier up front, not to the engine first and then to the
 * fallback (no x-tiergate-fallback header). */
static void test_router_sends_remote_up_front(void **state)
{
    (void)state;
    struct tg_buf b;
    tg_buf_init(&b, 0);
    tg_buf_append_str(&b, "{\"model\":\"auto\",\"max_tokens\":4,\"temperature\":0,"
                          "\"messages\":[{\"role\":\"user\",\"content\":\"Classify the sentiment "
                          "as positive or negative: ");
    for (int i = 0; i < 120; i++)
        tg_buf_append_str(&b, "alpha beta gamma ");
    tg_buf_append_str(&b, "\"}]}");
    char *body = tg_buf_detach(&b);
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/chat/completions", body, NULL, &r), 0);
    char tier[32] = "", fb[128] = "";
    assert_true(tg_test_header(&r, "x-tiergate-tier", tier, sizeof tier));
    bool fell_back = tg_test_header(&r, "x-tiergate-fallback", fb, sizeof fb);
    if (r.status != 200 || strcmp(tier, "remote") != 0 || fell_back)
        fprintf(stderr, "status %ld tier %s fallback '%s' body %s\n", r.status, tier, fb, r.body);
    assert_int_equal(r.status, 200);
    assert_string_equal(tier, "remote");
    assert_false(fell_back);
    tg_test_response_free(&r);
    /* and it is the context rule that sent it there, with one slot's size as the limit */
    assert_int_equal(gw_post(&env, "/v1/route/explain", body, NULL, &r), 0);
    if (r.status != 200 || strstr(r.body, "force_remote.context") == NULL ||
        strstr(r.body, "> local context 256") == NULL)
        fprintf(stderr, "explain: status %ld body %s\n", r.status, r.body);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "force_remote.context"));
    assert_non_null(strstr(r.body, "> local context 256"));
    tg_test_response_free(&r);
    free(body);
}

static void test_private_key_400(void **state)
{
    (void)state;
    const char *saved = env.auth_header;
    env.auth_header = "Authorization: Bearer private-secret"; /* privacy: nothing leaves */
    char *body = long_chat("phi-3.5-mini");
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/chat/completions", body, NULL, &r), 0);
    env.auth_header = saved;
    if (r.status != 400)
        fprintf(stderr, "status %ld body %s\n", r.status, r.body);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "context_length_exceeded"));
    assert_non_null(strstr(r.body, "one slot's context holds at most 255 tokens"));
    assert_non_null(strstr(r.body, "n_ctx 512 over 2 slots"));
    assert_non_null(strstr(r.body, "\"prompt is "));
    tg_test_response_free(&r);
    free(body);
}

/* A prompt that fits a slot is served locally in split mode. */
static void test_fits_local(void **state)
{
    (void)state;
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/chat/completions",
                             "{\"model\":\"phi-3.5-mini\",\"max_tokens\":4,\"temperature\":0,"
                             "\"messages\":[{\"role\":\"user\",\"content\":\"Say hi\"}]}",
                             NULL, &r),
                     0);
    char tier[32] = "";
    assert_true(tg_test_header(&r, "x-tiergate-tier", tier, sizeof tier));
    assert_int_equal(r.status, 200);
    assert_string_equal(tier, "local");
    tg_test_response_free(&r);
}

static int setup(void **state)
{
    (void)state;
    return gw_env_start(&env, "", "  slots: 2\n  context: 512\n  kv_split: true\n", NULL) ? 0
                                                                                          : -1;
}

static int teardown(void **state)
{
    (void)state;
    gw_env_stop(&env);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits_local),
        cmocka_unit_test(test_fallback_to_remote),
        cmocka_unit_test(test_router_sends_remote_up_front),
        cmocka_unit_test(test_private_key_400),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
