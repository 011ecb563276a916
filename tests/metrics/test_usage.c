/* Usage ledger on a real redis-server: records written through tg_metrics_record() (thread-bound
 * ledger) and tg_usage_add_at(), read back by GET /v1/usage's handler; totals must equal
 * usage × price to the nano-dollar; bad parameters give 400 and a stopped Redis gives 503. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/event.h>
#include <jansson.h>

#include "cost.h"
#include "metrics.h"
#include "redis.h"
#include "tg/err.h"
#include "tg_testlib.h"
#include "usage.h"

static const char k_yaml[] =
    "server: {open_mode: true}\n"
    "local: {price_per_mtok_usd: 0.02}\n"
    "providers: {oai: {kind: openai, base_url: 'http://127.0.0.1:9', api_key: t}}\n"
    "models:\n"
    "  - {name: phi, tier: local, target: engine}\n"
    "  - {name: mini, tier: remote, provider: oai, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60}\n"
    "  - {name: big, tier: remote, provider: oai, input_usd_per_mtok: 2.5, output_usd_per_mtok: 10}\n"
    "metrics: {reference_model: mini}\n";

struct env {
    struct tg_config *cfg;
    struct tg_test_redis rs;
    struct event_base *base;
    struct tg_redis *redis;
    struct tg_usage *usage;
};

static struct env g;

static void loop_until(bool *flag, int timeout_ms)
{
    for (int waited = 0; !*flag && waited < timeout_ms; waited += 10) {
        struct timeval tv = {0, 10000};
        event_base_loopexit(g.base, &tv);
        event_base_dispatch(g.base);
    }
}

static void on_pong(int err, const redisReply *r, void *user)
{
    *(bool *)user = true;
}

/* Redis answers in order: once a PING sent after the writes has its reply, they are applied. */
static void flush_redis(void)
{
    bool done = false;
    assert_int_equal(tg_redis_command(g.redis, on_pong, &done, "PING"), TG_OK);
    loop_until(&done, 5000);
    assert_true(done);
}

static int setup(void **state)
{
    char err[512];
    if (tg_config_load(tg_test_write_temp("usage.yaml", k_yaml), &g.cfg, err, sizeof err) != TG_OK) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    if (!tg_test_redis_start(&g.rs))
        return -1;
    g.base = event_base_new();
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", g.rs.port);
    struct tg_cfg_redis rc = {.enabled = true, .url = url, .connect_timeout_ms = 1000,
                              .command_timeout_ms = 2000, .limits_fail_open = true};
    if (tg_redis_create(g.base, &rc, "test", &g.redis) != TG_OK)
        return -1;
    for (int i = 0; i < 500 && !tg_redis_available(g.redis); i++) {
        struct timeval tv = {0, 10000};
        event_base_loopexit(g.base, &tv);
        event_base_dispatch(g.base);
    }
    if (!tg_redis_available(g.redis))
        return -1;
    if (tg_usage_create(g.redis, &g.usage) != TG_OK)
        return -1;
    return tg_metrics_init(g.cfg, "test") == TG_OK ? 0 : -1;
}

static int teardown(void **state)
{
    tg_metrics_shutdown();
    tg_usage_destroy(g.usage);
    tg_redis_destroy(g.redis);
    event_base_free(g.base);
    tg_test_redis_stop(&g.rs);
    tg_config_unref(g.cfg);
    return 0;
}

struct answer {
    bool done;
    int status;
    json_t *body;
};

static void on_answer(int status, const char *ctype, const char *body, size_t len, void *user)
{
    struct answer *a = user;
    assert_false(a->done); /* exactly once */
    assert_string_equal(ctype, "application/json");
    a->done = true;
    a->status = status;
    json_error_t je;
    a->body = json_loadb(body, len, 0, &je);
    assert_non_null(a->body);
}

static struct answer ask(const char *query, time_t now)
{
    struct answer a = {0};
    assert_int_equal(tg_usage_handle_at(g.usage, query, now, on_answer, &a), TG_OK);
    loop_until(&a.done, 5000);
    assert_true(a.done);
    return a;
}

static int64_t jint(json_t *o, const char *path1, const char *path2, const char *field)
{
    json_t *v = o;
    if (path1 != NULL)
        v = json_object_get(v, path1);
    if (path2 != NULL)
        v = json_object_get(v, path2);
    return json_integer_value(json_object_get(v, field));
}

static json_t *group(json_t *body, const char *key)
{
    size_t i;
    json_t *g1;
    json_array_foreach(json_object_get(body, "groups"), i, g1)
        if (strcmp(json_string_value(json_object_get(g1, "key")), key) == 0)
            return g1;
    return NULL;
}

static struct tg_request_record mk(const char *tier, const char *model, const char *tenant,
                                   int status, int64_t p, int64_t c, struct tg_cost *cost)
{
    tg_cost_compute(g.cfg, tier, model, p, c, cost);
    return (struct tg_request_record){
        .endpoint = "chat", .tier = tier, .model = model, .status = status, .duration_s = 0.5,
        .ttft_s = -1, .upstream_s = -1, .prompt_tokens = p, .completion_tokens = c,
        .cost_usd = cost->cost_usd, .avoided_usd = cost->avoided_usd,
        .avoided_reason = cost->avoided_reason, .cache_result = "miss", .tenant = tenant};
}

static void on_ttl(int err, const redisReply *r, void *user)
{
    struct {
        bool done;
        long long ttl;
    } *tc = user;
    tc->done = true;
    tc->ttl = err == TG_OK && r != NULL && r->type == REDIS_REPLY_INTEGER ? r->integer : -100;
}

/* 2025-11-21T03:00:00Z */
#define H3 1763694000

static void test_ledger_totals(void **state)
{
    struct tg_cost c;
    int64_t cost_nano = 0, avoided_nano = 0, prompt = 0, completion = 0;
    int64_t local_req = 0, remote_req = 0, cache_req = 0;
    /* hour 03: explicit adds */
    for (int i = 0; i < 50; i++) {
        const char *tier = i % 5 == 0 ? "cache" : i % 2 ? "local" : "remote";
        const char *model = strcmp(tier, "local") == 0 ? "phi" : i % 3 ? "mini" : "big";
        struct tg_request_record r =
            mk(tier, model, i % 4 ? "acme" : "beta", i == 7 ? 502 : 200, 100 + i * 13, 7 + i, &c);
        if (i == 8) {
            r.escalated = true;
            r.escalation_reason = "escalate.empty";
        }
        if (i == 9 || i == 10) {
            r.fallbacks = 1;
            r.fallback_reason = "http_5xx";
        }
        assert_int_equal(tg_usage_add_at(g.usage, &r, H3 + 60 + i), TG_OK);
        cost_nano += c.cost_nano;
        avoided_nano += c.avoided_nano;
        prompt += r.prompt_tokens;
        completion += r.completion_tokens;
        local_req += strcmp(tier, "local") == 0;
        remote_req += strcmp(tier, "remote") == 0;
        cache_req += strcmp(tier, "cache") == 0;
    }
    /* now: through tg_metrics_record() and the thread-bound ledger (hour of time(NULL)) */
    tg_usage_bind(g.usage);
    struct tg_request_record r = mk("remote", "big", "acme", 200, 1000, 1000, &c);
    tg_metrics_record(&r);
    tg_usage_bind(NULL);
    tg_metrics_record(&r); /* unbound: not in the ledger */
    flush_redis();

    /* the hour hashes expire (retention), so Redis does not grow forever */
    struct ttl_check {
        bool done;
        long long ttl;
    } tc = {0};
    assert_int_equal(tg_redis_command(g.redis, on_ttl, &tc, "TTL tg:u:2025112103"), TG_OK);
    loop_until(&tc.done, 5000);
    assert_true(tc.ttl > 80LL * 24 * 3600 && tc.ttl <= TG_USAGE_RETENTION_S);

    struct answer a = ask("since=2025-11-21T03:00:00Z&until=2025-11-21T05:00:00Z&group_by=tier", H3);
    assert_int_equal(a.status, 200);
    json_t *b = a.body;
    assert_int_equal(jint(b, "totals", NULL, "requests"), 50);
    assert_int_equal(jint(b, "totals", NULL, "errors"), 1);
    assert_int_equal(jint(b, "totals", NULL, "spend_nano_usd"), cost_nano);
    assert_int_equal(jint(b, "totals", NULL, "avoided_nano_usd"), avoided_nano);
    assert_int_equal(jint(b, "totals", NULL, "prompt_tokens"), prompt);
    assert_int_equal(jint(b, "totals", NULL, "completion_tokens"), completion);
    double spend = json_real_value(json_object_get(json_object_get(b, "totals"), "spend_usd"));
    assert_true(llround(spend * 100) == llround((double)cost_nano / 1e7));
    assert_int_equal(jint(b, "by_tier", "local", "requests"), local_req);
    assert_int_equal(jint(b, "by_tier", "remote", "requests"), remote_req);
    assert_int_equal(jint(b, "by_tier", "cache", "requests"), cache_req);
    assert_int_equal(jint(b, "by_tier", "cache", "spend_nano_usd"), 0);
    assert_int_equal(json_integer_value(json_object_get(group(b, "local"), "requests")), local_req);
    json_t *series = json_object_get(b, "series");
    assert_int_equal(json_array_size(series), 2);
    json_t *h0 = json_array_get(series, 0);
    assert_string_equal(json_string_value(json_object_get(h0, "ts")), "2025-11-21T03:00:00Z");
    assert_int_equal(json_integer_value(json_object_get(h0, "requests")), 50);
    assert_int_equal(json_integer_value(json_object_get(h0, "local")), local_req);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(series, 1), "requests")), 0);
    assert_true(json_real_value(json_object_get(h0, "avg_duration_s")) == 0.5);
    json_t *esc = json_object_get(b, "escalation_reasons");
    assert_int_equal(json_array_size(esc), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(esc, 0), "reason")),
                        "escalate.empty");
    json_t *fb = json_array_get(json_object_get(b, "fallback_reasons"), 0);
    assert_int_equal(json_integer_value(json_object_get(fb, "count")), 2);
    json_decref(b);

    /* group by tenant, unix-seconds window */
    char q[128];
    snprintf(q, sizeof q, "since=%d&until=%d&group_by=tenant", H3, H3 + 3600);
    a = ask(q, H3);
    assert_int_equal(a.status, 200);
    assert_int_equal(json_integer_value(json_object_get(group(a.body, "beta"), "requests")), 13);
    assert_int_equal(json_integer_value(json_object_get(group(a.body, "acme"), "requests")), 37);
    json_decref(a.body);

    /* default window (last 24 h before now) contains the one bound record */
    time_t now = time(NULL);
    a = ask(NULL, now);
    assert_int_equal(a.status, 200);
    assert_int_equal(jint(a.body, "totals", NULL, "requests"), 1);
    assert_int_equal(jint(a.body, "totals", NULL, "spend_nano_usd"),
                     tg_cost_remote_nano(tg_config_model(g.cfg, "big"), 1000, 1000));
    /* every hour overlapping [now - 24 h, now) */
    assert_int_equal(json_array_size(json_object_get(a.body, "series")), now % 3600 ? 25 : 24);
    json_decref(a.body);
}

static void test_bad_params(void **state)
{
    static const struct {
        const char *query;
        const char *param;
    } rows[] = {
        {"since=yesterday", "since"},
        {"until=2025-13-01T00:00:00Z", "until"},
        {"group_by=key", "group_by"},
        {"since=1763694000&until=1763694000", "since"},
        {"since=1000&until=1763694000", "since"}, /* longer than 93 days */
        {"since=", "since"},
        {"since=%zz", "since"},
        {"until=2025-11-21T05:00:00Z%00junk", "until"},
        {"since=2025-11-21T05:00:00Zxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "since"},
        {"group_by=", "group_by"},
        {"group_by=tier%7Cmodel", "group_by"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct answer a = ask(rows[i].query, H3);
        assert_int_equal(a.status, 400);
        json_t *e = json_object_get(a.body, "error");
        assert_non_null(e);
        assert_string_equal(json_string_value(json_object_get(e, "param")), rows[i].param);
        json_decref(a.body);
    }
}

/* Two replicas = two clients and ledgers on the same Redis: each reads the other's writes, and
 * both report identical totals. Fields the ledger did not write are ignored. */
static void test_replicas_agree(void **state)
{
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", g.rs.port);
    struct tg_cfg_redis rc = {.enabled = true, .url = url, .connect_timeout_ms = 1000,
                              .command_timeout_ms = 2000, .limits_fail_open = true};
    struct tg_redis *r2 = NULL;
    struct tg_usage *u2 = NULL;
    assert_int_equal(tg_redis_create(g.base, &rc, "replica-2", &r2), TG_OK);
    for (int i = 0; i < 500 && !tg_redis_available(r2); i++) {
        struct timeval tv = {0, 10000};
        event_base_loopexit(g.base, &tv);
        event_base_dispatch(g.base);
    }
    assert_true(tg_redis_available(r2));
    assert_int_equal(tg_usage_create(r2, &u2), TG_OK);

    time_t h = H3 + 5 * 24 * 3600; /* a day of its own */
    struct tg_cost c;
    int64_t cost = 0;
    for (int i = 0; i < 20; i++) {
        struct tg_request_record r = mk(i % 2 ? "remote" : "local", i % 2 ? "big" : "phi", "acme",
                                        200, 10 + i, 5 + i, &c);
        assert_int_equal(tg_usage_add_at(i % 3 ? g.usage : u2, &r, h + i), TG_OK);
        cost += c.cost_nano;
    }
    /* junk a newer version or a person might have left in the hash */
    assert_int_equal(tg_redis_command(g.redis, NULL, NULL, "HSET tg:u:2025112603 %s %s",
                                      "no-bars", "7"), TG_OK);
    assert_int_equal(tg_redis_command(g.redis, NULL, NULL, "HSET tg:u:2025112603 %s %s",
                                      "local|phi|acme|unknown_stat", "9"), TG_OK);
    assert_int_equal(tg_redis_command(g.redis, NULL, NULL, "HSET tg:u:2025112603 %s %s",
                                      "local|phi|junk|req", "not-a-number"), TG_OK);
    flush_redis();

    char q[128];
    snprintf(q, sizeof q, "since=%lld&until=%lld", (long long)h, (long long)h + 3600);
    struct answer a1 = ask(q, h);
    struct answer a2 = {0};
    assert_int_equal(tg_usage_handle_at(u2, q, h, on_answer, &a2), TG_OK);
    loop_until(&a2.done, 5000);
    assert_int_equal(a1.status, 200);
    assert_int_equal(a2.status, 200);
    assert_true(json_equal(a1.body, a2.body));
    assert_int_equal(jint(a1.body, "totals", NULL, "requests"), 20);
    assert_int_equal(jint(a1.body, "totals", NULL, "spend_nano_usd"), cost);
    json_decref(a1.body);
    json_decref(a2.body);
    tg_usage_destroy(u2);
    tg_redis_destroy(r2);
}

static void test_redis_down(void **state)
{
    tg_test_redis_stop(&g.rs);
    /* the client notices on its next command; give it a moment */
    for (int i = 0; i < 200 && tg_redis_available(g.redis); i++) {
        bool done = false;
        if (tg_redis_command(g.redis, on_pong, &done, "PING") == TG_OK)
            loop_until(&done, 100);
    }
    struct answer a = ask("group_by=model", H3);
    assert_int_equal(a.status, 503);
    json_decref(a.body);
    struct tg_cost c;
    struct tg_request_record r = mk("local", "phi", "", 200, 1, 1, &c);
    assert_int_not_equal(tg_usage_add_at(g.usage, &r, H3), TG_OK);
    /* /metrics says the ledger missed it */
    struct tg_buf b;
    tg_buf_init(&b, 0);
    assert_int_equal(tg_metrics_render(&b), TG_OK);
    assert_non_null(strstr(b.data, "\ntiergate_usage_ledger_errors_total{kind=\"unavailable\"} 1\n"));
    tg_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ledger_totals),
        cmocka_unit_test(test_bad_params),
        cmocka_unit_test(test_replicas_agree),
        cmocka_unit_test(test_redis_down),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
