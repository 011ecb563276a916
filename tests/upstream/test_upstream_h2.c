/* HTTP/2 to a TLS provider: the executor negotiates h2 by ALPN and multiplexes concurrent calls
 * over one connection. The provider is tests/upstream/h2_server.mjs (node's http2 module) with a
 * throwaway self-signed certificate; the test is skipped when node or openssl is missing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <jansson.h>

#include "tg/config.h"
#include "tg/err.h"
#include "tg_testlib.h"
#include "upstream.h"

#define N_CALLS 8

struct st {
    struct event_base *base;
    int done;
    char content[N_CALLS][64];
};

static void on_complete(void *user, const struct tg_upstream_result *r)
{
    struct st *s = user;
    const char *c = json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(r->response, "choices"), 0), "message"),
        "content"));
    snprintf(s->content[s->done], sizeof s->content[0], "%s", c != NULL ? c : "");
    if (++s->done == N_CALLS)
        event_base_loopbreak(s->base);
}

static void on_error(void *user, const struct tg_upstream_error *e)
{
    struct st *s = user;
    char *t = json_dumps(e->error, 0);
    print_error("call failed: %s\n", t);
    free(t);
    snprintf(s->content[s->done], sizeof s->content[0], "error");
    if (++s->done == N_CALLS)
        event_base_loopbreak(s->base);
}

static void on_watchdog(evutil_socket_t fd, short w, void *arg)
{
    event_base_loopbreak(arg);
}

static void test_http2_multiplexed(void **state)
{
    if (system("command -v node >/dev/null && command -v openssl >/dev/null") != 0)
        skip();
    char dir[] = "/tmp/tg-h2-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
             "-subj /CN=127.0.0.1 -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1",
             dir, dir);
    assert_int_equal(system(cmd), 0);
    int port = tg_test_free_port();
    char sport[16], key[256], cert[256], log[256];
    snprintf(sport, sizeof sport, "%d", port);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(log, sizeof log, "%s/server.log", dir);
    char node[256] = "/usr/bin/node";
    FILE *w = popen("command -v node", "r");
    if (w != NULL) {
        if (fgets(node, sizeof node, w) != NULL)
            node[strcspn(node, "\n")] = '\0';
        pclose(w);
    }
    char *argv[] = {node, TG_TEST_DIR "/upstream/h2_server.mjs", sport, key, cert, NULL};
    pid_t pid = tg_test_spawn(argv, NULL, log);
    assert_true(tg_test_wait_port(port, 10000));

    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "server:\n  open_mode: true\n"
             "providers:\n  h2:\n    kind: openai\n    base_url: https://127.0.0.1:%d/v1\n    "
             "api_key: sk-h2\n"
             "    retries: 0\n"
             "models:\n  - {name: phi, tier: local, target: engine}\n"
             "  - {name: h2m, tier: remote, provider: h2, upstream_model: h2-model}\n",
             port);
    struct tg_config *cfg = NULL;
    char err[256];
    assert_int_equal(tg_config_load(tg_test_write_temp("routes.yaml", yaml), &cfg, err, sizeof err),
                     TG_OK);
    const struct tg_cfg_model *m = tg_config_model(cfg, "h2m");

    struct event_base *base = event_base_new();
    struct tg_upstream_exec_params p = tg_upstream_exec_default_params();
    p.verify_tls = false; /* self-signed */
    struct tg_upstream_exec *ex = tg_upstream_exec_create(base, &p);
    json_t *rq = json_loads(
        "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 0, NULL);
    struct st s = {.base = base};
    static const struct tg_upstream_handlers h = {NULL, on_complete, on_error};
    struct tg_upstream_call call = {.request = rq, .targets = &m, .n_targets = 1};
    /* All started before the loop runs: the first opens the connection, the others wait for
     * it (PIPEWAIT) and share it as HTTP/2 streams. */
    for (int i = 0; i < N_CALLS; i++)
        assert_int_equal(tg_upstream_start(ex, &call, &h, &s, NULL), TG_OK);
    json_decref(rq);
    struct event *wd = evtimer_new(base, on_watchdog, base);
    struct timeval wt = {10, 0};
    evtimer_add(wd, &wt);
    event_base_dispatch(base);
    assert_int_equal(s.done, N_CALLS);
    for (int i = 0; i < N_CALLS; i++)
        assert_string_equal(s.content[i], "http/2.0 sessions=1");
    event_free(wd);
    tg_upstream_exec_destroy(ex);
    event_base_free(base);
    tg_config_unref(cfg);
    tg_test_stop(pid, SIGTERM, 3000);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    tg_upstream_global_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http2_multiplexed),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tg_upstream_global_cleanup();
    return rc;
}
