#include "gw_testenv.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TG_FAKE_UPSTREAM
#define TG_FAKE_UPSTREAM TG_BINARY_DIR "/tests/tg-fake-upstream"
#endif
#define TIERGATE TG_BINARY_DIR "/gateway/tiergate"
/* sha256("secret") */
#define KEY_SHA "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"


bool gw_env_start(struct gw_env *e, const char *extra_server, const char *extra_local,
                  const char *extra_top)
{
    struct gw_env_opts o = {.extra_server = extra_server, .extra_local = extra_local,
                            .extra_top = extra_top};
    return gw_env_start_opts(e, &o);
}

bool gw_env_start_opts(struct gw_env *e, const struct gw_env_opts *o)
{
    const char *extra_server = o->extra_server, *extra_local = o->extra_local,
               *extra_top = o->extra_top;
    memset(e, 0, sizeof *e);
    e->auth_header = "Authorization: Bearer secret";
    e->max_body = 65536;
    e->fake_port = tg_test_free_port();
    snprintf(e->fake_base, sizeof e->fake_base, "http://127.0.0.1:%d", e->fake_port);
    snprintf(e->fake_log_path, sizeof e->fake_log_path, "/tmp/tg-gw-fake-%d.log", e->fake_port);
    char fport[16];
    snprintf(fport, sizeof fport, "%d", e->fake_port);
    char *fargv[] = {TG_FAKE_UPSTREAM, "--port", fport, NULL};
    e->fake_pid = tg_test_spawn(fargv, NULL, e->fake_log_path);
    if (!tg_test_wait_port(e->fake_port, 10000))
        return false;

    e->port = tg_test_free_port();
    snprintf(e->base, sizeof e->base, "http://127.0.0.1:%d", e->port);
    snprintf(e->log_path, sizeof e->log_path, "/tmp/tg-gw-%d.log", e->port);
    unlink(e->log_path);
    char cfg[8192];
    snprintf(cfg, sizeof cfg,
             "server:\n"
             "  listen: 127.0.0.1:%d\n"
             "  io_threads: 2\n"
             "  open_mode: false\n"
             "  header_timeout_ms: 1000\n"
             "  read_timeout_ms: 5000\n"
             "  drain_timeout_ms: %d\n"
             "  max_body_bytes: %zu\n"
             "  log_level: debug\n"
             "  api_keys:\n"
             "    - {name: test, sha256: " KEY_SHA "}\n"
             "    - {name: private, sha256: 67289abcaf488e5784135353253ce19e9885d06779f8938267339f1ee657181a, privacy: true}\n"
             "%s"
             "redis:\n%s"
             "local:\n  model: %s\n  price_per_mtok_usd: 0.02\n%s"
             "providers:\n"
             "  fake:\n    kind: openai\n    base_url: %s/v1\n    api_key: sk-fake-provider-key\n"
             "    retries: 0\n    retry_base_ms: 10\n    circuit_failures: 1000\n"
             "  fake-anthropic:\n    kind: anthropic\n    base_url: %s/v1\n    api_key: sk-ant-fake-key\n"
             "    retries: 0\n"
             "models:\n"
             "  - {name: phi-3.5-mini, tier: local, target: engine, fallbacks: [gpt-fake]}\n"
             "  - {name: gpt-fake, tier: remote, provider: fake, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6}\n"
             "  - {name: gpt-broken, tier: remote, provider: fake, upstream_model: \"script:status=503\", fallbacks: [gpt-fake]}\n"
             "  - {name: gpt-dead, tier: remote, provider: fake, upstream_model: \"script:status=503\"}\n"
             "  - {name: gpt-slow, tier: remote, provider: fake, upstream_model: \"script:delay_ms=5000\"}\n"
             "  - {name: gpt-cut, tier: remote, provider: fake, upstream_model: \"script:cut=2\"}\n"
             "  - {name: claude-fake, tier: remote, provider: fake-anthropic, upstream_model: claude-x, input_usd_per_mtok: 3, output_usd_per_mtok: 15}\n"
             "aliases:\n  auto: {local: phi-3.5-mini, remote: gpt-fake}\n"
             "cache:\n%s"
             "metrics:\n  reference_model: gpt-fake\n"
             "%s",
             e->port, o->drain_timeout_ms > 0 ? o->drain_timeout_ms : 30000, e->max_body,
             extra_server != NULL ? extra_server : "",
             o->redis != NULL ? o->redis : "  enabled: false\n", TG_TINY_MODEL,
             extra_local != NULL ? extra_local : "  slots: 2\n  context: 4096\n", e->fake_base,
             e->fake_base, o->cache != NULL ? o->cache : "  enabled: false\n",
             extra_top != NULL ? extra_top : "");
    const char *path = tg_test_write_temp("routes.yaml", cfg);
    snprintf(e->cfg_path, sizeof e->cfg_path, "%s", path);
    char *argv[] = {TIERGATE, "--config", (char *)path, NULL};
    e->gw_pid = tg_test_spawn(argv, NULL, e->log_path);
    if (!tg_test_wait_port(e->port, 30000))
        return false;
    char url[128];
    snprintf(url, sizeof url, "%s/readyz", e->base);
    for (int i = 0; i < 600; i++) {
        struct tg_test_response r;
        if (tg_test_http("GET", url, NULL, NULL, &r) == 0 && r.status == 200) {
            tg_test_response_free(&r);
            return true;
        }
        tg_test_response_free(&r);
        usleep(100000);
    }
    return false;
}

void gw_env_stop(struct gw_env *e)
{
    if (e->gw_pid > 0)
        tg_test_stop(e->gw_pid, SIGTERM, 30000);
    if (e->fake_pid > 0)
        tg_test_stop(e->fake_pid, SIGTERM, 5000);
    e->gw_pid = e->fake_pid = 0;
}

int gw_post(struct gw_env *e, const char *path, const char *body, const char *extra_header,
            struct tg_test_response *out)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", e->base, path);
    const char *h[] = {e->auth_header, "Content-Type: application/json", extra_header, NULL};
    return tg_test_http("POST", url, h, body, out);
}

int gw_get(struct gw_env *e, const char *path, struct tg_test_response *out)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", e->base, path);
    const char *h[] = {e->auth_header, NULL};
    return tg_test_http("GET", url, h, NULL, out);
}

int gw_fake_received(struct gw_env *e)
{
    char url[128];
    snprintf(url, sizeof url, "%s/_requests", e->fake_base);
    struct tg_test_response r;
    int n = -1;
    if (tg_test_http("GET", url, NULL, NULL, &r) == 0 && r.status == 200) {
        n = 0; /* one recorded object, one "method" key */
        for (const char *p = r.body; (p = strstr(p, "\"method\":")) != NULL; p++)
            n++;
    }
    tg_test_response_free(&r);
    return n;
}

bool gw_log_wait(struct gw_env *e, const char *text, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        char *log = tg_test_read_log(e->log_path);
        bool found = strstr(log, text) != NULL;
        free(log);
        if (found)
            return true;
        usleep(50000);
    }
    return false;
}
