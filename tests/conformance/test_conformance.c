/* Runs tests/conformance/conformance.mjs (the official openai@6 npm client) against the real
 * tiergate binary (tiny model + fake upstream). Installs the pinned client with `npm ci` into
 * tests/conformance/node_modules when it is not there yet. Skipped, with a message saying so, only
 * when npm cannot reach its registry. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw_testenv.h"

#define CONF_DIR TG_TEST_DIR "/conformance"

static char *run(const char *cmd, int *status)
{
    FILE *p = popen(cmd, "r");
    if (p == NULL) {
        *status = -1;
        return strdup("");
    }
    size_t cap = 1 << 16, n = 0;
    char *out = malloc(cap);
    size_t k;
    while ((k = fread(out + n, 1, cap - n - 1, p)) > 0) {
        n += k;
        if (n + 1 >= cap) {
            cap *= 2;
            out = realloc(out, cap);
        }
    }
    out[n] = '\0';
    *status = pclose(p);
    return out;
}

static bool client_installed(void)
{
    FILE *f = fopen(CONF_DIR "/node_modules/openai/package.json", "r");
    if (f == NULL)
        return false;
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strstr(buf, "\"version\": \"6.30.1\"") != NULL;
}

static void test_openai_client(void **state)
{
    (void)state;
    int st;
    if (!client_installed()) {
        char *out = run("cd " CONF_DIR " && npm ci --no-audit --no-fund 2>&1", &st);
        if (st != 0) {
            bool offline = strstr(out, "ENOTFOUND") != NULL || strstr(out, "EAI_AGAIN") != NULL ||
                           strstr(out, "ECONNREFUSED") != NULL || strstr(out, "ETIMEDOUT") != NULL ||
                           strstr(out, "ENETUNREACH") != NULL;
            if (offline) {
                printf("SKIP: npm cannot reach its registry, openai@6 not installed:\n%s\n", out);
                free(out);
                skip();
            }
            print_error("npm ci failed:\n%s\n", out);
            free(out);
            fail();
        }
        free(out);
    }
    struct gw_env env;
    assert_true(gw_env_start(&env, "", NULL, NULL));
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "cd " CONF_DIR " && TIERGATE_BASE_URL=%s/v1 TIERGATE_API_KEY=secret node conformance.mjs 2>&1",
             env.base);
    char *out = run(cmd, &st);
    printf("%s", out);
    gw_env_stop(&env);
    bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    free(out);
    assert_true(ok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_openai_client)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
