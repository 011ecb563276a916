/* Runs tests/conformance/langchain/langchain.mjs (LangChain's @langchain/openai ChatOpenAI, pinned
 * in package-lock.json) against the real tiergate binary: tiny model on the local tier, the fake
 * upstream as the remote tier. Installs the pinned packages with `npm ci` into node_modules when
 * they are not there yet. Skipped, with a message saying so, only when npm cannot reach its
 * registry. */
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

#define LC_DIR     TG_TEST_DIR "/conformance/langchain"
#define LC_VERSION "0.6.17"

static char *run(const char *cmd, int *status)
{
    FILE *p = popen(cmd, "r");
    if (p == NULL) {
        *status = -1;
        return strdup("");
    }
    size_t cap = 1 << 16, n = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    size_t k;
    while ((k = fread(out + n, 1, cap - n - 1, p)) > 0) {
        n += k;
        if (n + 1 >= cap) {
            cap *= 2;
            char *grown = realloc(out, cap);
            assert_non_null(grown);
            out = grown;
        }
    }
    out[n] = '\0';
    *status = pclose(p);
    return out;
}

static bool installed(void)
{
    FILE *f = fopen(LC_DIR "/node_modules/@langchain/openai/package.json", "r");
    if (f == NULL)
        return false;
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strstr(buf, "\"version\": \"" LC_VERSION "\"") != NULL;
}

static bool npm_offline(const char *out)
{
    return strstr(out, "ENOTFOUND") != NULL || strstr(out, "EAI_AGAIN") != NULL ||
           strstr(out, "ECONNREFUSED") != NULL || strstr(out, "ETIMEDOUT") != NULL ||
           strstr(out, "ENETUNREACH") != NULL || strstr(out, "ECONNRESET") != NULL;
}

static void test_langchain_chat_openai(void **state)
{
    (void)state;
    int st;
    if (!installed()) {
        char *out = run("cd " LC_DIR " && npm ci --no-audit --no-fund 2>&1", &st);
        if (st != 0) {
            if (npm_offline(out)) {
                printf(
                    "SKIP: npm cannot reach its registry, @langchain/openai not installed:\n%s\n",
                    out);
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
    assert_true(gw_env_start(&env, NULL, NULL, NULL));
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "cd " LC_DIR
             " && TIERGATE_BASE_URL=%s/v1 TIERGATE_API_KEY=secret node langchain.mjs 2>&1",
             env.base);
    char *out = run(cmd, &st);
    printf("%s", out);
    gw_env_stop(&env);
    bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    free(out);
    if (!ok)
        printf("gateway log: %s\n", env.log_path);
    assert_true(ok);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_langchain_chat_openai)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
