/* The real tiergate binary with a real Redis, the real engine on the generated tiny model and the
 * scriptable fake upstream: after a scripted mix of requests (remote, cached, local, classify
 * that may escalate, an upstream failure, bad input), /metrics counters change by exactly what
 * the responses say, cost totals equal usage × price (exact to the nano-dollar, so to the cent),
 * /v1/usage (the Redis ledger) agrees, `promtool check metrics` passes on the scrape, the admin
 * key protects the three pages, and the dashboard renders the numbers in headless Chromium. */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "tg_testlib.h"

#ifndef TG_TIERGATE_BIN
#define TG_TIERGATE_BIN TG_BINARY_DIR "/gateway/tiergate"
#endif
#ifndef TG_FAKE_UPSTREAM_BIN
#define TG_FAKE_UPSTREAM_BIN TG_BINARY_DIR "/tests/tg-fake-upstream"
#endif

#define ADMIN_KEY "admin-e2e-key"
/* sha256("admin-e2e-key") */
#define ADMIN_SHA "00c13a0a2f6e8500075b818d7039b7c17346f22ce482cf007973ec11d8901468"

/* Prices in the config below, in nano-dollars per token (USD per 1M tokens × 1000). */
#define LOCAL_NANO 20        /* local.price_per_mtok_usd 0.02 */
#define MINI_IN_NANO 150     /* gpt-mini 0.15 / 0.60 (also the reference model) */
#define MINI_OUT_NANO 600
#define BIG_IN_NANO 2500     /* gpt-big 2.50 / 10.00 */
#define BIG_OUT_NANO 10000

struct env {
    struct tg_test_redis rs;
    pid_t fake, gw;
    int fake_port, port;
    char dir[256], cfg[512], log[512], base[64];
};
static struct env g;

static void write_config(void)
{
    snprintf(g.cfg, sizeof g.cfg, "%s/routes.yaml", g.dir);
    FILE *f = fopen(g.cfg, "w");
    assert_non_null(f);
    fprintf(f,
            "server:\n  listen: 127.0.0.1:%d\n  io_threads: 1\n  open_mode: true\n"
            "  admin_key_sha256: %s\n"
            "redis:\n  enabled: true\n  url: redis://127.0.0.1:%d/0\n  command_timeout_ms: 2000\n"
            "local:\n  model: %s\n  slots: 2\n  context: 2048\n  threads: 1\n"
            "  price_per_mtok_usd: 0.02\n"
            "providers:\n  fake:\n    kind: openai\n    base_url: http://127.0.0.1:%d/v1\n"
            "    api_key: test\n    retries: 0\n    circuit_failures: 1000\n"
            "models:\n"
            "  - {name: phi, tier: local, target: engine}\n"
            "  - {name: gpt-mini, tier: remote, provider: fake, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60}\n"
            "  - {name: gpt-big, tier: remote, provider: fake, input_usd_per_mtok: 2.50, output_usd_per_mtok: 10.00}\n"
            "aliases:\n  auto: {local: phi, remote: gpt-mini}\n"
            "policy: %s/policies/balanced.yaml\n"
            "cache:\n  enabled: true\n  ttl_s: 600\n"
            "metrics:\n  reference_model: gpt-mini\n  tenant_labels: []\n",
            g.port, ADMIN_SHA, g.rs.port, TG_TINY_MODEL, g.fake_port, TG_SOURCE_DIR);
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    snprintf(g.dir, sizeof g.dir, "%s/metrics-e2e", TG_BINARY_DIR);
    mkdir(g.dir, 0755);
    if (!tg_test_redis_start(&g.rs))
        return -1;
    g.fake_port = tg_test_free_port();
    char port[16];
    snprintf(port, sizeof port, "%d", g.fake_port);
    char *fake_argv[] = {TG_FAKE_UPSTREAM_BIN, "--port", port, NULL};
    char flog[600];
    snprintf(flog, sizeof flog, "%s/fake-upstream.log", g.dir);
    g.fake = tg_test_spawn(fake_argv, NULL, flog);
    if (g.fake <= 0 || !tg_test_wait_port(g.fake_port, 10000))
        return -1;
    g.port = tg_test_free_port();
    write_config();
    snprintf(g.log, sizeof g.log, "%s/tiergate.log", g.dir);
    unlink(g.log);
    char *gw_argv[] = {TG_TIERGATE_BIN, "--config", g.cfg, NULL};
    g.gw = tg_test_spawn(gw_argv, NULL, g.log);
    snprintf(g.base, sizeof g.base, "http://127.0.0.1:%d", g.port);
    if (g.gw <= 0 || !tg_test_wait_port(g.port, 60000))
        return -1;
    char url[128];
    snprintf(url, sizeof url, "%s/readyz", g.base);
    for (int i = 0; i < 600; i++) {
        struct tg_test_response r;
        bool ok = tg_test_http("GET", url, NULL, NULL, &r) == 0 && r.status == 200;
        if (r.body != NULL || r.headers != NULL)
            tg_test_response_free(&r);
        if (ok)
            return 0;
        usleep(100 * 1000);
    }
    return -1;
}

static int teardown(void **state)
{
    if (g.gw > 0) {
        int st = tg_test_stop(g.gw, SIGTERM, 20000);
        if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
            fprintf(stderr, "tiergate exit status %d (log: %s)\n", st, g.log);
    }
    if (g.fake > 0)
        tg_test_stop(g.fake, SIGTERM, 5000);
    tg_test_redis_stop(&g.rs);
    return 0;
}

/* ---- exposition parsing ------------------------------------------------------------------- */

/* "0.00045" → 450000 nano, exactly (no float). */
static int64_t dec_to_nano(const char *s)
{
    int64_t whole = 0, frac = 0;
    int neg = *s == '-';
    if (neg)
        s++;
    for (; isdigit((unsigned char)*s); s++)
        whole = whole * 10 + (*s - '0');
    int digits = 0;
    if (*s == '.')
        for (s++; isdigit((unsigned char)*s); s++)
            if (digits < 9) {
                frac = frac * 10 + (*s - '0');
                digits++;
            }
    for (; digits < 9; digits++)
        frac *= 10;
    int64_t v = whole * 1000000000LL + frac;
    return neg ? -v : v;
}

/* The value text of one exact series in a scrape; NULL if absent. */
static const char *series_text(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return p + n + 1;
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return NULL;
}

static int64_t series_int(const char *text, const char *series)
{
    const char *v = series_text(text, series);
    return v != NULL ? strtoll(v, NULL, 10) : 0;
}

static int64_t series_nano(const char *text, const char *series)
{
    const char *v = series_text(text, series);
    return v != NULL ? dec_to_nano(v) : 0;
}

/* Sum of every sample of a family (lines starting with `name{` or `name `). */
static int64_t family_sum(const char *text, const char *name)
{
    int64_t sum = 0;
    size_t n = strlen(name);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, name, n) == 0 && (p[n] == '{' || p[n] == ' ')) {
            const char *sp = strchr(p, ' ');
            const char *close = strchr(p, '}');
            if (close != NULL && close < strchr(p, '\n'))
                sp = close + 1;
            sum += strtoll(sp, NULL, 10);
        }
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return sum;
}

static char *scrape(void)
{
    char url[128];
    snprintf(url, sizeof url, "%s/metrics", g.base);
    const char *h[] = {"Authorization: Bearer " ADMIN_KEY, NULL};
    struct tg_test_response r;
    assert_int_equal(tg_test_http("GET", url, h, NULL, &r), 0);
    if (r.status != 200)
        fail_msg("GET /metrics: %ld %s", r.status, r.body);
    char ct[128];
    assert_true(tg_test_header(&r, "Content-Type", ct, sizeof ct));
    assert_non_null(strstr(ct, "text/plain"));
    char *body = r.body;
    r.body = NULL;
    tg_test_response_free(&r);
    return body;
}

/* ---- the scripted mix --------------------------------------------------------------------- */

struct sent {
    const char *endpoint;
    long status;
    char tier[32], model[64], cache[32];
    int64_t cost_nano, prompt, completion;
    bool escalated;
    int fallbacks;
};

#define MAX_SENT 32
static struct sent g_sent[MAX_SENT];
static size_t g_n;

static void send(const char *endpoint, const char *path, const char *body, const char *extra_header)
{
    assert_true(g_n < MAX_SENT);
    char url[256];
    snprintf(url, sizeof url, "%s%s", g.base, path);
    const char *h[] = {"Content-Type: application/json", extra_header, NULL};
    struct tg_test_response r;
    assert_int_equal(tg_test_http("POST", url, h, body, &r), 0);
    struct sent *s = &g_sent[g_n++];
    *s = (struct sent){.endpoint = endpoint, .status = r.status};
    char buf[128];
    snprintf(s->tier, sizeof s->tier, "none");
    snprintf(s->model, sizeof s->model, "none");
    if (tg_test_header(&r, "x-tiergate-tier", buf, sizeof buf))
        snprintf(s->tier, sizeof s->tier, "%.*s", (int)(sizeof s->tier - 1), buf);
    if (tg_test_header(&r, "x-tiergate-model", buf, sizeof buf))
        snprintf(s->model, sizeof s->model, "%.*s", (int)strcspn(buf, ";"), buf);
    if (tg_test_header(&r, "x-tiergate-cache", buf, sizeof buf))
        snprintf(s->cache, sizeof s->cache, "%.*s", (int)(sizeof s->cache - 1), buf);
    if (tg_test_header(&r, "x-tiergate-cost-usd", buf, sizeof buf))
        s->cost_nano = dec_to_nano(buf);
    if (tg_test_header(&r, "x-tiergate-escalated", buf, sizeof buf))
        s->escalated = strncmp(buf, "true", 4) == 0 || strncmp(buf, "1", 1) == 0;
    if (tg_test_header(&r, "x-tiergate-fallback", buf, sizeof buf))
        s->fallbacks = strncmp(buf, "false", 5) != 0 && strncmp(buf, "0", 1) != 0 ? 1 : 0;
    json_t *j = json_loads(r.body != NULL ? r.body : "", 0, NULL);
    json_t *u = json_object_get(j, "usage");
    s->prompt = json_integer_value(json_object_get(u, "prompt_tokens"));
    s->completion = json_integer_value(json_object_get(u, "completion_tokens"));
    json_decref(j);
    print_message("%-9s %ld tier=%s model=%s cache=%s cost=%lld nano tokens=%lld+%lld%s\n",
                  endpoint, s->status, s->tier, s->model, s->cache, (long long)s->cost_nano,
                  (long long)s->prompt, (long long)s->completion, s->escalated ? " escalated" : "");
    tg_test_response_free(&r);
}

static void queue_fake_script(const char *json_array)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/_script", g.fake_port);
    struct tg_test_response r;
    assert_int_equal(tg_test_http("POST", url, NULL, json_array, &r), 0);
    assert_true(r.status == 200 || r.status == 204);
    tg_test_response_free(&r);
}

/* What the test itself expects a response cost: usage × price, independent of the gateway. */
static int64_t expected_cost(const struct sent *s)
{
    if (strcmp(s->tier, "local") == 0)
        return (s->prompt + s->completion) * LOCAL_NANO;
    if (strcmp(s->tier, "remote") == 0 && strcmp(s->model, "gpt-mini") == 0)
        return s->prompt * MINI_IN_NANO + s->completion * MINI_OUT_NANO;
    if (strcmp(s->tier, "remote") == 0 && strcmp(s->model, "gpt-big") == 0)
        return s->prompt * BIG_IN_NANO + s->completion * BIG_OUT_NANO;
    return 0;
}

static int64_t expected_avoided(const struct sent *s)
{
    if (strcmp(s->tier, "local") == 0 || strcmp(s->tier, "cache") == 0)
        return s->prompt * MINI_IN_NANO + s->completion * MINI_OUT_NANO;
    return 0;
}

static void run_mix(void)
{
    static const char chat_remote[] =
        "{\"model\":\"gpt-mini\",\"temperature\":0,\"messages\":[{\"role\":\"user\","
        "\"content\":\"Summarise the causes of the French revolution in two sentences.\"}]}";
    send("chat", "/v1/chat/completions", chat_remote, NULL);             /* remote */
    for (int i = 0; i < 5; i++) {                                        /* cached (store is async) */
        send("chat", "/v1/chat/completions", chat_remote, NULL);
        if (strcmp(g_sent[g_n - 1].cache, "hit") == 0)
            break;
        usleep(100 * 1000);
    }
    send("chat", "/v1/chat/completions",
         "{\"model\":\"gpt-big\",\"messages\":[{\"role\":\"user\",\"content\":\"Write a haiku.\"}]}",
         NULL);                                                          /* remote, other price */
    send("chat", "/v1/chat/completions",
         "{\"model\":\"phi\",\"max_tokens\":8,\"temperature\":0.7,\"messages\":[{\"role\":\"user\","
         "\"content\":\"Say hello.\"}]}",
         NULL);                                                          /* local */
    send("chat", "/v1/chat/completions",
         "{\"model\":\"auto\",\"max_tokens\":6,\"temperature\":0.7,\"messages\":[{\"role\":\"user\","
         "\"content\":\"Is this positive? I love it.\"}]}",
         "X-Tiergate-Tier: local");                                      /* local via alias */
    send("classify", "/v1/classify",
         "{\"model\":\"auto\",\"text\":\"The parcel arrived broken and support never answered.\","
         "\"labels\":[\"complaint\",\"praise\",\"question\"]}",
         NULL);                                                          /* local, may escalate */
    queue_fake_script("[\"status=500\",\"status=500\",\"status=500\",\"status=500\"]");
    send("chat", "/v1/chat/completions",
         "{\"model\":\"gpt-big\",\"messages\":[{\"role\":\"user\",\"content\":\"fail please\"}]}",
         NULL);                                                          /* upstream failure */
    send("chat", "/v1/chat/completions", "{\"model\": ", NULL);          /* bad JSON */
    send("chat", "/v1/chat/completions",
         "{\"model\":\"no-such-model\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         NULL);                                                          /* unknown model */
    /* drain the fake's queue in case the failure took fewer attempts than scripted */
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/_reset", g.fake_port);
    struct tg_test_response r;
    if (tg_test_http("POST", url, NULL, "", &r) == 0)
        tg_test_response_free(&r);
}

/* ---- the test ----------------------------------------------------------------------------- */

static void check_counters(const char *before, const char *after)
{
    char series[256];
    /* every request counted once, under the labels its response headers announced */
    assert_int_equal(family_sum(after, "tiergate_requests_total") -
                         family_sum(before, "tiergate_requests_total"),
                     (int64_t)g_n);
    for (size_t i = 0; i < g_n; i++) {
        const struct sent *s = &g_sent[i];
        int64_t want = 0;
        if (strcmp(s->tier, "none") == 0) {
            /* Rejected before routing: a body that is not JSON may be counted before its
             * endpoint is known ("other"); check the (tier, status) total instead. */
            int64_t got = 0;
            for (size_t k = 0; k < g_n; k++)
                want += strcmp(g_sent[k].tier, "none") == 0 && g_sent[k].status == s->status;
            static const char *const eps[] = {"chat", "classify", "other"};
            for (size_t e = 0; e < 3; e++) {
                snprintf(series, sizeof series,
                         "tiergate_requests_total{endpoint=\"%s\",tier=\"none\",model=\"none\","
                         "status=\"%ld\"}", eps[e], s->status);
                got += series_int(after, series) - series_int(before, series);
            }
            if (got != want)
                fail_msg("requests rejected with %ld: delta %lld, want %lld", s->status,
                         (long long)got, (long long)want);
            continue;
        }
        for (size_t k = 0; k < g_n; k++)
            want += strcmp(g_sent[k].endpoint, s->endpoint) == 0 &&
                    strcmp(g_sent[k].tier, s->tier) == 0 &&
                    strcmp(g_sent[k].model, s->model) == 0 && g_sent[k].status == s->status;
        snprintf(series, sizeof series,
                 "tiergate_requests_total{endpoint=\"%s\",tier=\"%s\",model=\"%s\",status=\"%ld\"}",
                 s->endpoint, s->tier, s->model, s->status);
        if (series_int(after, series) - series_int(before, series) != want)
            fail_msg("%s: delta %lld, want %lld", series,
                     (long long)(series_int(after, series) - series_int(before, series)),
                     (long long)want);
    }
    /* cost per (tier, model): the headers' sum == the metric delta == usage × price */
    int64_t total_cost = 0, total_avoided_local = 0, total_avoided_cache = 0;
    for (size_t i = 0; i < g_n; i++) {
        const struct sent *s = &g_sent[i];
        if (s->status == 200) {
            if (s->cost_nano != expected_cost(s))
                fail_msg("response %zu (%s %s): header cost %lld nano, usage × price %lld", i,
                         s->tier, s->model, (long long)s->cost_nano, (long long)expected_cost(s));
        }
        total_cost += s->cost_nano;
        if (s->status == 200 && strcmp(s->tier, "local") == 0)
            total_avoided_local += expected_avoided(s);
        if (s->status == 200 && strcmp(s->tier, "cache") == 0)
            total_avoided_cache += expected_avoided(s);
        int64_t want = 0;
        bool first = true;
        for (size_t k = 0; k < g_n; k++) {
            if (strcmp(g_sent[k].tier, s->tier) != 0 || strcmp(g_sent[k].model, s->model) != 0)
                continue;
            first = first && k >= i;
            want += g_sent[k].cost_nano;
        }
        if (!first || strcmp(s->tier, "none") == 0)
            continue;
        snprintf(series, sizeof series, "tiergate_cost_usd_total{tier=\"%s\",model=\"%s\"}", s->tier,
                 s->model);
        int64_t delta = series_nano(after, series) - series_nano(before, series);
        if (delta != want)
            fail_msg("%s: delta %lld nano, responses say %lld", series, (long long)delta,
                     (long long)want);
    }
    int64_t metric_cost = 0;
    for (const char *p = after; (p = strstr(p, "\ntiergate_cost_usd_total{")) != NULL; p++) {
        const char *line = p + 1;
        size_t n = strcspn(line, " ");
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)n, line);
        metric_cost += series_nano(after, name) - series_nano(before, name);
    }
    assert_int_equal(metric_cost, total_cost);
    assert_int_equal(series_nano(after, "tiergate_cost_avoided_usd_total{reason=\"local\"}") -
                         series_nano(before, "tiergate_cost_avoided_usd_total{reason=\"local\"}"),
                     total_avoided_local);
    assert_int_equal(series_nano(after, "tiergate_cost_avoided_usd_total{reason=\"cache\"}") -
                         series_nano(before, "tiergate_cost_avoided_usd_total{reason=\"cache\"}"),
                     total_avoided_cache);

    /* tokens of served answers, cache hits, escalations */
    int64_t hits = 0, escalated = 0, prompt_remote_mini = 0, prompt_local = 0;
    for (size_t i = 0; i < g_n; i++) {
        const struct sent *s = &g_sent[i];
        hits += strcmp(s->cache, "hit") == 0;
        escalated += s->escalated;
        if (strcmp(s->tier, "remote") == 0 && strcmp(s->model, "gpt-mini") == 0)
            prompt_remote_mini += s->prompt;
        if (strcmp(s->tier, "local") == 0 && strcmp(s->model, "phi") == 0)
            prompt_local += s->prompt;
    }
    /* the mix covers every kind of outcome the issue names */
    assert_true(hits >= 1);
    assert_true(escalated >= 1); /* the tiny random-weight model (seed 1) is never confident */
    assert_int_equal(series_int(after, "tiergate_cache_requests_total{result=\"hit\"}") -
                         series_int(before, "tiergate_cache_requests_total{result=\"hit\"}"),
                     hits);
    assert_int_equal(family_sum(after, "tiergate_escalations_total") -
                         family_sum(before, "tiergate_escalations_total"),
                     escalated);
    assert_int_equal(
        series_int(after, "tiergate_tokens_total{tier=\"remote\",model=\"gpt-mini\",type=\"prompt\"}") -
            series_int(before, "tiergate_tokens_total{tier=\"remote\",model=\"gpt-mini\",type=\"prompt\"}"),
        prompt_remote_mini);
    assert_int_equal(
        series_int(after, "tiergate_tokens_total{tier=\"local\",model=\"phi\",type=\"prompt\"}") -
            series_int(before, "tiergate_tokens_total{tier=\"local\",model=\"phi\",type=\"prompt\"}"),
        prompt_local);
    assert_true(family_sum(after, "tiergate_bad_requests_total") -
                    family_sum(before, "tiergate_bad_requests_total") >= 1);

    /* the executor reports every attempt (a scripted 5xx is an upstream error of its target) and
     * its breakers; the scrape-time gauges are wired */
    int64_t remote_5xx = 0, remote_answers = 0;
    for (size_t i = 0; i < g_n; i++) {
        remote_5xx += strcmp(g_sent[i].tier, "remote") == 0 && g_sent[i].status >= 500;
        remote_answers += strcmp(g_sent[i].tier, "remote") == 0;
    }
    assert_true(remote_5xx >= 1);
    assert_true(family_sum(after, "tiergate_upstream_errors_total") -
                    family_sum(before, "tiergate_upstream_errors_total") >= remote_5xx);
    assert_true(series_int(after, "tiergate_upstream_errors_total{target=\"gpt-big\",kind=\"http_5xx\"}") -
                    series_int(before, "tiergate_upstream_errors_total{target=\"gpt-big\",kind=\"http_5xx\"}") >= 1);
    assert_true(family_sum(after, "tiergate_upstream_duration_seconds_count") -
                    family_sum(before, "tiergate_upstream_duration_seconds_count") >= remote_answers);
    assert_non_null(strstr(after, "\ntiergate_circuit_state{target=\"gpt-big\"} "));
    assert_non_null(strstr(after, "\ntiergate_inflight_requests "));
    assert_non_null(strstr(after, "\ntiergate_engine_slots_busy "));
}

static json_t *usage_json(void)
{
    char url[256];
    snprintf(url, sizeof url, "%s/v1/usage?group_by=model", g.base);
    const char *h[] = {"Authorization: Bearer " ADMIN_KEY, NULL};
    struct tg_test_response r;
    assert_int_equal(tg_test_http("GET", url, h, NULL, &r), 0);
    if (r.status != 200)
        fail_msg("GET /v1/usage: %ld %s", r.status, r.body);
    json_t *j = json_loads(r.body, 0, NULL);
    tg_test_response_free(&r);
    assert_non_null(j);
    return j;
}

static void check_usage(void)
{
    int64_t cost = 0, avoided = 0;
    for (size_t i = 0; i < g_n; i++) {
        cost += g_sent[i].cost_nano;
        avoided += g_sent[i].status == 200 ? expected_avoided(&g_sent[i]) : 0;
    }
    /* the ledger is written fire-and-forget at request end: wait for the last write */
    json_t *j = NULL;
    for (int i = 0; i < 50; i++) {
        json_decref(j);
        j = usage_json();
        if (json_integer_value(json_object_get(json_object_get(j, "totals"), "requests")) >=
            (json_int_t)g_n)
            break;
        usleep(100 * 1000);
    }
    json_t *t = json_object_get(j, "totals");
    assert_int_equal(json_integer_value(json_object_get(t, "requests")), g_n);
    assert_int_equal(json_integer_value(json_object_get(t, "spend_nano_usd")), cost);
    assert_int_equal(json_integer_value(json_object_get(t, "avoided_nano_usd")), avoided);
    double spend = json_real_value(json_object_get(t, "spend_usd"));
    assert_true(llround(spend * 100) == llround((double)cost / 1e7));
    json_decref(j);
}

static void check_admin(void)
{
    static const char *const paths[] = {"/metrics", "/v1/usage", "/dashboard"};
    char url[256];
    for (size_t i = 0; i < 3; i++) {
        struct tg_test_response r;
        snprintf(url, sizeof url, "%s%s", g.base, paths[i]);
        assert_int_equal(tg_test_http("GET", url, NULL, NULL, &r), 0);
        if (r.status != 401)
            fail_msg("%s without the admin key: %ld", paths[i], r.status);
        tg_test_response_free(&r);
        snprintf(url, sizeof url, "%s%s?key=wrong", g.base, paths[i]);
        assert_int_equal(tg_test_http("GET", url, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 401);
        tg_test_response_free(&r);
        snprintf(url, sizeof url, "%s%s?key=" ADMIN_KEY, g.base, paths[i]);
        assert_int_equal(tg_test_http("GET", url, NULL, NULL, &r), 0);
        assert_int_equal(r.status, 200);
        tg_test_response_free(&r);
    }
}

static void check_promtool(const char *scrape_text)
{
    char path[600];
    snprintf(path, sizeof path, "%s/scrape.txt", g.dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(scrape_text, f);
    assert_int_equal(fclose(f), 0);
    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        print_message("promtool not installed: exposition lint skipped\n");
        return;
    }
    char cmd[800];
    snprintf(cmd, sizeof cmd, "promtool check metrics < '%s'", path);
    int st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static const char *chromium(void)
{
    static const char *const names[] = {"chromium", "chromium-browser", "google-chrome"};
    static char found[64];
    for (size_t i = 0; i < 3; i++) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", names[i]);
        if (system(cmd) == 0) {
            snprintf(found, sizeof found, "%s", names[i]);
            return found;
        }
    }
    return NULL;
}

static void check_dashboard(void)
{
    const char *browser = chromium();
    if (browser == NULL) {
        print_message("chromium not installed (deploy/install-deps.sh installs it): skipped\n");
        return;
    }
    char cmd[4096], out[600], png[600], profile[600];
    snprintf(out, sizeof out, "%s/dashboard-dom.html", g.dir);
    snprintf(png, sizeof png, "%s/dashboard.png", g.dir);
    unlink(png);
    const char *flags = "--headless --no-sandbox --disable-gpu --disable-background-networking "
                        "--disable-component-update --disable-sync --no-first-run "
                        "--disable-dev-shm-usage --window-size=1280,900 --virtual-time-budget=5000";
    snprintf(profile, sizeof profile, "%s/chromium-profile", g.dir);
    snprintf(cmd, sizeof cmd,
             "rm -rf '%s' && %s %s --user-data-dir='%s' --dump-dom "
             "'%s/dashboard?key=" ADMIN_KEY "' > '%s' 2>/dev/null",
             profile, browser, flags, profile, g.base, out);
    int st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    FILE *f = fopen(out, "r");
    assert_non_null(f);
    static char dom[1 << 20];
    size_t n = fread(dom, 1, sizeof dom - 1, f);
    fclose(f);
    dom[n] = '\0';
    /* the page fetched /v1/usage and rendered its numbers */
    assert_non_null(strstr(dom, "data-loaded=\"1\""));
    char want[128];
    snprintf(want, sizeof want, "id=\"kpi-requests\">%zu<", g_n);
    if (strstr(dom, want) == NULL)
        fail_msg("dashboard DOM lacks '%s' (see %s)", want, out);
    assert_null(strstr(dom, "id=\"status\" class=\"err\""));
    assert_non_null(strstr(dom, "<polyline"));   /* the charts drew */
    assert_non_null(strstr(dom, "id=\"share-local\""));

    snprintf(cmd, sizeof cmd,
             "rm -rf '%s' && %s %s --user-data-dir='%s' --screenshot='%s' "
             "'%s/dashboard?key=" ADMIN_KEY "' >/dev/null 2>&1",
             profile, browser, flags, profile, png, g.base);
    st = system(cmd);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    struct stat sb;
    assert_int_equal(stat(png, &sb), 0);
    /* A blank 1280x900 page compresses to a few KB; charts, text and colours make it much larger. */
    print_message("dashboard screenshot: %s (%lld bytes)\n", png, (long long)sb.st_size);
    assert_true(sb.st_size > 30000);
}

static void save(const char *name, const char *text)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", g.dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void test_mix(void **state)
{
    char *before = scrape();
    save("scrape-before.txt", before);
    run_mix();
    char *after = scrape();
    save("scrape-after.txt", after);
    check_counters(before, after);
    check_promtool(after);
    check_usage();
    check_admin();
    check_dashboard();
    free(before);
    free(after);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_mix)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
