/* A leak-free, error-free shutdown of the real tiergate under valgrind (memcheck): the tiny model
 * on 1 engine thread, the fake upstream, a password-protected Redis; a local answer, a remote
 * one, a cache hit, a stream (remote and local), a job, a 401; then SIGTERM. valgrind runs with
 * --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=99, so any
 * invalid read/write, use of uninitialised memory, bad free, or a definitely/indirectly lost
 * block turns the exit status into 99; the suppressions (tests/security/valgrind.supp) cover
 * only third-party one-time allocations, each with its reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sec_env.h"

static void expect(struct sec_env *e, const char *key, const char *path, const char *body,
                   long want, const char *cache_want)
{
    struct tg_test_response r;
    assert_int_equal(sec_post(e, key, path, body, NULL, &r), 0);
    if (r.status != want)
        fail_msg("%s %s: %ld, want %ld: %s", path, body, r.status, want, r.body);
    if (cache_want != NULL) {
        char h[32] = "";
        tg_test_header(&r, "x-tiergate-cache", h, sizeof h);
        assert_string_equal(h, cache_want);
    }
    tg_test_response_free(&r);
}

static void test_valgrind_shutdown(void **state)
{
    (void)state;
    struct sec_env e;
    if (!sec_env_start(&e, false, true)) {
        char *log = tg_test_read_log(e.log_path);
        char *vg = tg_test_read_log(e.vg_log_path);
        fail_msg("tiergate under valgrind did not become ready\n%.3000s\n%.3000s", log, vg);
    }
    const char *remote =
        "{\"model\":\"gpt-fake\",\"temperature\":0,\"messages\":[{\"role\":\"user\","
        "\"content\":\"valgrind remote\"}]}";
    expect(&e, SEC_KEY_ALICE, "/v1/chat/completions",
           "{\"model\":\"phi-3.5-mini\",\"max_tokens\":4,\"messages\":[{\"role\":\"user\","
           "\"content\":\"hi\"}]}",
           200, NULL);
    expect(&e, SEC_KEY_ALICE, "/v1/chat/completions", remote, 200, "miss");
    assert_true(sec_redis_wait_count(&e, "tg:c:acme:*", 1)); /* stored after the answer */
    expect(&e, SEC_KEY_ALICE, "/v1/chat/completions", remote, 200, "hit");
    expect(&e, SEC_KEY_ALICE, "/v1/chat/completions",
           "{\"model\":\"gpt-fake\",\"stream\":true,\"messages\":[{\"role\":\"user\","
           "\"content\":\"valgrind stream\"}]}",
           200, NULL);
    expect(&e, SEC_KEY_ALICE, "/v1/chat/completions",
           "{\"model\":\"phi-3.5-mini\",\"stream\":true,\"max_tokens\":4,\"messages\":[{\"role\":"
           "\"user\",\"content\":\"local stream\"}]}",
           200, NULL);
    expect(&e, SEC_KEY_ALICE, "/v1/chat/completions",
           "{\"model\":\"gpt-echo\",\"messages\":[{\"role\":\"user\",\"content\":\"err\"}]}", 400,
           NULL);
    expect(&e, SEC_KEY_WRONG, "/v1/chat/completions", remote, 401, NULL);
    expect(&e, SEC_KEY_BOB, "/v1/jobs",
           "{\"type\":\"chat\",\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\","
           "\"content\":\"valgrind job\"}]}",
           202, NULL);

    int st = sec_env_stop(&e);
    char *vg = tg_test_read_log(e.vg_log_path);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        char *log = tg_test_read_log(e.log_path);
        fail_msg("tiergate under valgrind: status %d (exit %d)\n--- valgrind ---\n%.12000s\n"
                 "--- gateway (tail) ---\n%s",
                 st, WIFEXITED(st) ? WEXITSTATUS(st) : -1, vg,
                 strlen(log) > 3000 ? log + strlen(log) - 3000 : log);
    }
    /* the log really is memcheck's, with its verdicts */
    assert_non_null(strstr(vg, "ERROR SUMMARY: 0 errors"));
    assert_non_null(strstr(vg, "definitely lost: 0 bytes") != NULL     ? "ok"
                    : strstr(vg, "All heap blocks were freed") != NULL ? "ok"
                                                                       : NULL);
    printf("valgrind: %s\n", strstr(vg, "LEAK SUMMARY") != NULL ? strstr(vg, "LEAK SUMMARY") : vg);
    free(vg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_valgrind_shutdown)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
