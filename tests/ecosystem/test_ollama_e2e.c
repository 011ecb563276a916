/* local.model: ollama:NAME end to end: a fake Ollama store whose model blob is the generated tiny
 * GGUF, `tiergate check` printing the resolved blob, and a real tiergate loading the model from
 * the blob and answering a classify request on the local tier. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tg_testlib.h"

#define TIERGATE TG_BINARY_DIR "/gateway/tiergate"
/* any 64 hex digits: Ollama names blobs by their SHA-256, tiergate only follows the manifest */
#define DIGEST "0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0c0ffee0"

static char g_store[128];

static void put(const char *rel, const char *text)
{
    char path[512], cmd[700];
    snprintf(path, sizeof path, "%s/%s", g_store, rel);
    snprintf(cmd, sizeof cmd, "mkdir -p \"$(dirname '%s')\"", path);
    assert_int_equal(system(cmd), 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

static void test_ollama_model_serves(void **state)
{
    (void)state;
    snprintf(g_store, sizeof g_store, "/tmp/tg-ollama-e2e-XXXXXX");
    assert_non_null(mkdtemp(g_store));
    put("manifests/registry.ollama.ai/library/tiny/latest",
        "{\"schemaVersion\":2,\"layers\":[{\"mediaType\":\"application/vnd.ollama.image.model\","
        "\"digest\":\"sha256:" DIGEST "\",\"size\":1}]}");
    char blob[512], cmd[1200];
    snprintf(blob, sizeof blob, "%s/blobs/sha256-" DIGEST, g_store);
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/blobs' && cp '%s' '%s'", g_store, TG_TINY_MODEL, blob);
    assert_int_equal(system(cmd), 0);

    int port = tg_test_free_port();
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "server:\n  listen: 127.0.0.1:%d\n  open_mode: true\n  io_threads: 1\n"
             "redis:\n  enabled: false\n"
             "local:\n  model: ollama:tiny\n  slots: 1\n  context: 1024\n"
             "models:\n  - {name: phi-3.5-mini, tier: local, target: engine}\n"
             "cache:\n  enabled: false\n",
             port);
    const char *path = tg_test_write_temp("routes.yaml", cfg);
    char env[200];
    snprintf(env, sizeof env, "OLLAMA_MODELS=%s", g_store);
    const char *envp[] = {env, NULL};

    /* tiergate check shows the blob as the model path */
    char log[256];
    snprintf(log, sizeof log, "%s/check.log", g_store);
    char *cargv[] = {TIERGATE, "check", (char *)path, NULL};
    pid_t pid = tg_test_spawn(cargv, envp, log);
    int st = tg_test_stop(pid, 0, 30000);
    char *out = tg_test_read_log(log);
    printf("%s", out);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_non_null(strstr(out, blob));
    free(out);

    /* the gateway loads it and serves from it */
    snprintf(log, sizeof log, "%s/gw.log", g_store);
    char *gargv[] = {TIERGATE, "--config", (char *)path, NULL};
    pid = tg_test_spawn(gargv, envp, log);
    assert_true(tg_test_wait_port(port, 30000));
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", port);
    bool ready = false;
    for (int i = 0; i < 600 && !ready; i++) {
        struct tg_test_response r;
        ready = tg_test_http("GET", url, NULL, NULL, &r) == 0 && r.status == 200;
        tg_test_response_free(&r);
        if (!ready)
            usleep(100000);
    }
    assert_true(ready);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/classify", port);
    const char *h[] = {"Content-Type: application/json", NULL};
    struct tg_test_response r;
    assert_int_equal(tg_test_http("POST", url, h,
                                  "{\"model\":\"phi-3.5-mini\",\"text\":\"refund me\","
                                  "\"labels\":[\"billing\",\"other\"]}",
                                  &r),
                     0);
    printf("%ld %s\n", r.status, r.body);
    assert_int_equal(r.status, 200);
    assert_true(strstr(r.body, "\"label\":\"billing\"") != NULL ||
                strstr(r.body, "\"label\":\"other\"") != NULL);
    assert_non_null(strstr(r.body, "\"tier\":\"local\""));
    tg_test_response_free(&r);
    st = tg_test_stop(pid, SIGTERM, 30000);
    out = tg_test_read_log(log);
    bool loaded = strstr(out, blob) != NULL;
    if (!loaded)
        printf("%s", out);
    free(out);
    assert_true(loaded); /* the startup log names the file it loaded */
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_store);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_ollama_model_serves)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
