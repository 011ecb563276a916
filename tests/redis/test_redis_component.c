/* Redis component against a real redis-server (started here on a free port): client, response
 * cache, rate limits/budgets, durable jobs (incl. kill -9 of a consumer mid-job), webhooks,
 * and Redis killed and restarted under load. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <openssl/hmac.h>
#include <pthread.h>

#include "cache.h"
#include "jobs.h"
#include "ratelimit.h"
#include "redis.h"
#include "tg/buf.h"
#include "tg/err.h"
#include "tg/log.h"
#include "tg_testlib.h"

static struct tg_test_redis g_redis;
static char g_url[64];

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Run the loop until *flag is set or timeout_ms passes; returns *flag. */
static bool run_until(struct event_base *base, const volatile bool *flag, int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    while (!*flag && mono_ms() < end) {
        struct timeval tv = {0, 5000};
        event_base_loopexit(base, &tv);
        event_base_dispatch(base);
    }
    return *flag;
}

static void run_for(struct event_base *base, int ms)
{
    bool never = false;
    run_until(base, &never, ms);
}

static struct tg_redis *connect_client(struct event_base *base, const char *url, int cmd_timeout_ms)
{
    struct tg_cfg_redis cfg = {.enabled = true, .url = (char *)url, .connect_timeout_ms = 500,
                               .command_timeout_ms = cmd_timeout_ms, .limits_fail_open = true};
    struct tg_redis *c = NULL;
    assert_int_equal(tg_redis_create(base, &cfg, "test", &c), TG_OK);
    int64_t end = mono_ms() + 3000;
    while (!tg_redis_available(c) && mono_ms() < end)
        run_for(base, 10);
    return c;
}

struct reply_box {
    bool done;
    int err;
    int type;
    long long integer;
    char str[256];
};

static void on_reply(int err, const redisReply *r, void *user)
{
    struct reply_box *b = user;
    b->done = true;
    b->err = err;
    if (r != NULL) {
        b->type = r->type;
        b->integer = r->integer;
        if (r->str != NULL)
            snprintf(b->str, sizeof b->str, "%s", r->str);
    }
}

/* first element of an array reply, as an integer */
static void on_first_int(int err, const redisReply *r, void *user)
{
    struct reply_box *b = user;
    b->done = true;
    b->err = err;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements > 0)
        b->integer = r->element[0]->integer;
}

static int group_setup(void **state)
{
    tg_log_set_level(TG_LOG_WARN);
    evthread_use_pthreads(); /* the webhook receiver's loop is stopped from the test thread */
    if (!tg_test_redis_start(&g_redis))
        return -1;
    snprintf(g_url, sizeof g_url, "redis://127.0.0.1:%d/0", g_redis.port);
    return 0;
}

static int group_teardown(void **state)
{
    tg_test_redis_stop(&g_redis);
    return 0;
}

/* ---- client ---------------------------------------------------------------------------- */

static void test_client_basics(void **state)
{
    struct event_base *base = event_base_new();
    struct tg_redis *c = connect_client(base, g_url, 1000);
    assert_true(tg_redis_available(c));

    struct reply_box b = {0};
    assert_int_equal(tg_redis_command(c, on_reply, &b, "SET %s %b", "tg:test:k", "v\0x", (size_t)3), TG_OK);
    assert_false(b.done); /* never inside the submit call */
    assert_true(run_until(base, &b.done, 2000));
    assert_int_equal(b.err, TG_OK);
    assert_int_equal(b.type, REDIS_REPLY_STATUS);

    /* scripts: EVALSHA after SCRIPT LOAD, then NOSCRIPT fallback after a flush */
    static struct tg_redis_script s = TG_REDIS_SCRIPT("return tonumber(ARGV[1]) + 1");
    const char *args[] = {"41"};
    size_t lens[] = {2};
    memset(&b, 0, sizeof b);
    assert_int_equal(tg_redis_eval(c, &s, on_reply, &b, 0, 1, args, lens), TG_OK);
    assert_true(run_until(base, &b.done, 2000));
    assert_int_equal(b.type, REDIS_REPLY_INTEGER);
    assert_int_equal(b.integer, 42);
    memset(&b, 0, sizeof b);
    tg_redis_command(c, on_reply, &b, "SCRIPT FLUSH");
    assert_true(run_until(base, &b.done, 2000));
    memset(&b, 0, sizeof b);
    assert_int_equal(tg_redis_eval(c, &s, on_reply, &b, 0, 1, args, lens), TG_OK);
    assert_true(run_until(base, &b.done, 2000));
    assert_int_equal(b.type, REDIS_REPLY_INTEGER);
    assert_int_equal(b.integer, 42);
    /* ... and it is loaded again: the next EVALSHA finds it */
    memset(&b, 0, sizeof b);
    assert_int_equal(tg_redis_eval(c, &s, on_reply, &b, 0, 1, args, lens), TG_OK);
    assert_true(run_until(base, &b.done, 2000));
    assert_int_equal(b.integer, 42);
    memset(&b, 0, sizeof b);
    tg_redis_command(c, on_first_int, &b, "SCRIPT EXISTS %s", s.sha1);
    assert_true(run_until(base, &b.done, 2000));
    assert_int_equal(b.integer, 1);

    /* pending callbacks run with TG_UNAVAILABLE on destroy */
    memset(&b, 0, sizeof b);
    assert_int_equal(tg_redis_command(c, on_reply, &b, "PING"), TG_OK);
    tg_redis_destroy(c);
    assert_true(b.done);
    assert_int_equal(b.err, TG_UNAVAILABLE);
    event_base_free(base);
}

static void test_client_down_fails_fast(void **state)
{
    struct event_base *base = event_base_new();
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", tg_test_free_port());
    struct tg_cfg_redis cfg = {.enabled = true, .url = url, .connect_timeout_ms = 200,
                               .command_timeout_ms = 200};
    struct tg_redis *c = NULL;
    assert_int_equal(tg_redis_create(base, &cfg, "down", &c), TG_OK);
    run_for(base, 100);
    assert_false(tg_redis_available(c));
    struct reply_box b = {0};
    int64_t t0 = mono_ms();
    assert_int_equal(tg_redis_command(c, on_reply, &b, "PING"), TG_UNAVAILABLE);
    assert_false(b.done);
    (void)t0;
    assert_true(tg_redis_outages_total() >= 1);
    tg_redis_destroy(c);

    /* bad URLs are rejected up front */
    const char *bad[] = {"http://x", "redis://", "redis://h:99999", "redis://h:1/x", "unix://rel"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg.url = (char *)bad[i];
        assert_int_equal(tg_redis_create(base, &cfg, "bad", &c), TG_INVAL);
    }
    event_base_free(base);
}

/* ---- cache: key and decision ---------------------------------------------------------------- */

static void key_of(const char *tenant, const char *body, bool stream, struct tg_cache_key *k)
{
    json_t *j = json_loads(body, 0, NULL);
    assert_non_null(j);
    assert_int_equal(tg_cache_key(tenant, "/v1/chat/completions", "phi-local", j, stream, k), TG_OK);
    json_decref(j);
}

static void test_cache_key(void **state)
{
    struct tg_cache_key a, b;
    static const struct {
        const char *x, *y;
        bool same;
    } rows[] = {
        /* key order and ignored fields do not matter */
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":0}",
         "{\"temperature\":0,\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}]}", true},
        {"{\"messages\":[],\"temperature\":0,\"user\":\"a\",\"model\":\"x\"}",
         "{\"messages\":[],\"temperature\":0,\"user\":\"b\",\"model\":\"y\",\"metadata\":{}}", true},
        {"{\"messages\":[],\"temperature\":0}", "{\"messages\":[],\"temperature\":0.0}", true},
        {"{\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"a\":1,\"b\":2}}}",
         "{\"response_format\":{\"json_schema\":{\"b\":2,\"a\":1},\"type\":\"json_schema\"}}", true},
        /* anything that changes the output does */
        {"{\"messages\":[],\"temperature\":0}", "{\"messages\":[],\"temperature\":\"0\"}", false},
        {"{\"messages\":[],\"stop\":[\"a\",\"b\"]}", "{\"messages\":[],\"stop\":[\"ab\"]}", false},
        {"{\"metadata\":{\"x\":{\"user\":1}}}", "{\"metadata\":{\"x\":{\"user\":2}}}", true},
        {"{\"a\":{\"user\":1}}", "{\"a\":{\"user\":2}}", false},
        {"{\"messages\":[],\"temperature\":0}", "{\"messages\":[],\"temperature\":0.5}", false},
        {"{\"messages\":[],\"seed\":1}", "{\"messages\":[],\"seed\":2}", false},
        {"{\"messages\":[],\"max_tokens\":5}", "{\"messages\":[],\"max_tokens\":6}", false},
        {"{\"messages\":[],\"tools\":[]}", "{\"messages\":[]}", false},
        {"{\"messages\":[],\"response_format\":{\"type\":\"json_object\"}}", "{\"messages\":[]}", false},
        {"{\"text\":\"t\",\"labels\":[\"a\",\"b\"]}", "{\"text\":\"t\",\"labels\":[\"b\",\"a\"]}", false},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi \"}]}", false},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        key_of("t1", rows[i].x, false, &a);
        key_of("t1", rows[i].y, false, &b);
        if (rows[i].same != (strcmp(a.hex, b.hex) == 0))
            fail_msg("row %zu: %s vs %s", i, rows[i].x, rows[i].y);
    }
    const char *body = "{\"messages\":[],\"temperature\":0}";
    key_of("t1", body, false, &a);
    key_of("t2", body, false, &b);
    assert_string_not_equal(a.hex, b.hex);                 /* tenants never share */
    assert_memory_equal(a.redis_key, "tg:c:t1:", 8);
    assert_memory_equal(b.redis_key, "tg:c:t2:", 8);
    key_of("t1", body, true, &b);
    assert_string_not_equal(a.hex, b.hex);                 /* stream keyed separately */
    key_of("a:b c", body, false, &b);
    assert_memory_equal(b.redis_key, "tg:c:a_b_c:", 11);   /* namespace sanitized */
    key_of(NULL, body, false, &b);
    assert_memory_equal(b.redis_key, "tg:c:_:", 7);
    json_t *arr = json_array();
    assert_int_equal(tg_cache_key("t", "/v1/x", NULL, arr, false, &a), TG_INVAL);
    json_decref(arr);
}

static void test_cache_decide(void **state)
{
    struct tg_cfg_cache on = {.enabled = true, .ttl_s = 60, .max_entry_bytes = 1 << 20};
    struct tg_cfg_cache nondet = on;
    nondet.cache_nondeterministic = true;
    struct tg_cfg_cache off = on;
    off.enabled = false;
    static const struct {
        int cfg; /* 0 on, 1 nondet, 2 off */
        const char *body, *cc;
        double deftemp;
        bool up, read, write;
    } rows[] = {
        {0, "{\"temperature\":0}", NULL, 1.0, true, true, true},
        {0, "{}", NULL, 1.0, true, false, false},             /* default temperature 1 */
        {0, "{}", NULL, 0.0, true, true, true},               /* task APIs default to 0 */
        {0, "{\"temperature\":0.7,\"seed\":3}", NULL, 1.0, true, true, true},
        {0, "{\"temperature\":0.7,\"seed\":null}", NULL, 1.0, true, false, false},
        {1, "{\"temperature\":0.7}", NULL, 1.0, true, true, true},
        {2, "{\"temperature\":0}", NULL, 1.0, true, false, false},
        {0, "{\"temperature\":0}", "no-cache", 1.0, true, false, true},
        {0, "{\"temperature\":0}", "max-age=0, No-Store", 1.0, true, false, false},
        {0, "{\"temperature\":0}", "no-cachex", 1.0, true, true, true},
        {0, "{\"temperature\":0}", NULL, 1.0, false, false, false},
    };
    const struct tg_cfg_cache *cfgs[] = {&on, &nondet, &off};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        json_t *j = json_loads(rows[i].body, 0, NULL);
        struct tg_cache_decision d = tg_cache_decide(cfgs[rows[i].cfg], j, rows[i].deftemp, rows[i].cc, rows[i].up);
        json_decref(j);
        if (d.read != rows[i].read || d.write != rows[i].write)
            fail_msg("row %zu: read %d write %d", i, d.read, d.write);
    }
    assert_string_equal(tg_cache_result_name(TG_CACHE_HIT), "hit");
    assert_string_equal(tg_cache_result_name(TG_CACHE_MISS), "miss");
    assert_string_equal(tg_cache_result_name(TG_CACHE_BYPASS), "bypass");
}

static void test_cache_entry_codec(void **state)
{
    struct tg_cache_entry *e = tg_cache_entry_new(200, true, NULL, 0);
    assert_int_equal(tg_cache_entry_add_header(e, "x-tiergate-model", "phi"), TG_OK);
    assert_int_equal(tg_cache_entry_add_chunk(e, "data: {\"a\":1}\n\n", 15), TG_OK);
    assert_int_equal(tg_cache_entry_add_chunk(e, "data: [DONE]\n\n", 14), TG_OK);
    assert_int_equal(tg_cache_entry_set_usage(e, "phi", 12, 34), TG_OK);
    char *data;
    size_t len;
    assert_int_equal(tg_cache_entry_encode(e, &data, &len), TG_OK);
    struct tg_cache_entry *d = NULL;
    assert_int_equal(tg_cache_entry_decode(data, len, &d), TG_OK);
    assert_true(d->stream);
    assert_int_equal(d->n_chunks, 2);
    assert_int_equal(d->chunks[1].len, 14);
    assert_memory_equal(d->chunks[0].data, "data: {\"a\":1}\n\n", 15);
    assert_string_equal(d->headers[0].value, "phi");
    assert_int_equal(d->completion_tokens, 34);
    tg_cache_entry_free(d);
    /* every truncation and a few corruptions are rejected, never crash */
    for (size_t cut = 0; cut < len; cut++) {
        d = NULL;
        assert_int_equal(tg_cache_entry_decode(data, cut, &d), TG_PARSE);
    }
    data[8] = (char)0xff; /* stream flag word: still parses (any non-zero) */
    data[15] = (char)0x7f; /* content type length: huge */
    assert_int_equal(tg_cache_entry_decode(data, len, &d), TG_PARSE);
    free(data);
    tg_cache_entry_free(e);

    /* ceiling */
    e = tg_cache_entry_new(200, false, NULL, 200);
    char big[300];
    memset(big, 'x', sizeof big);
    assert_int_equal(tg_cache_entry_set_body(e, big, sizeof big), TG_TOOBIG);
    assert_int_equal(tg_cache_entry_set_body(e, big, 50), TG_OK);
    tg_cache_entry_free(e);
}

/* ---- cache: Redis ------------------------------------------------------------------------ */

struct lookup_box {
    bool done;
    int err;
    struct tg_cache_entry *e;
};

static void on_lookup(int err, struct tg_cache_entry *e, void *user)
{
    struct lookup_box *b = user;
    b->done = true;
    b->err = err;
    b->e = e;
}

static struct lookup_box lookup(struct event_base *base, struct tg_redis *c, const struct tg_cache_key *k)
{
    struct lookup_box b = {0};
    assert_int_equal(tg_cache_lookup(c, k, on_lookup, &b), TG_OK);
    assert_true(run_until(base, &b.done, 2000));
    return b;
}

static void test_cache_roundtrip(void **state)
{
    struct event_base *base = event_base_new();
    struct tg_redis *c = connect_client(base, g_url, 1000);
    const char *body = "{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"classify this\"}],\"temperature\":0}";
    struct tg_cache_key k, ks, kother;
    key_of("acme", body, false, &k);
    key_of("acme", body, true, &ks);
    key_of("globex", body, false, &kother);

    struct lookup_box b = lookup(base, c, &k); /* miss */
    assert_int_equal(b.err, TG_OK);
    assert_null(b.e);

    struct tg_cache_entry *e = tg_cache_entry_new(200, false, "application/json", 1 << 20);
    const char *resp = "{\"id\":\"chatcmpl-1\",\"choices\":[{\"message\":{\"content\":\"billing\"}}]}";
    tg_cache_entry_set_body(e, resp, strlen(resp));
    tg_cache_entry_add_header(e, "x-tiergate-model", "phi-local");
    tg_cache_entry_set_usage(e, "phi-local", 20, 1);
    assert_int_equal(tg_cache_store(c, &k, e, 60), TG_OK);
    tg_cache_entry_free(e);

    b = lookup(base, c, &k); /* hit */
    assert_int_equal(b.err, TG_OK);
    assert_non_null(b.e);
    assert_false(b.e->stream);
    assert_int_equal(b.e->body_len, strlen(resp));
    assert_memory_equal(b.e->body, resp, strlen(resp));
    assert_int_equal(b.e->prompt_tokens, 20);
    assert_true(b.e->created_unix > 0);
    tg_cache_entry_free(b.e);

    b = lookup(base, c, &kother); /* another tenant: no hit */
    assert_null(b.e);
    b = lookup(base, c, &ks); /* streamed request: not served from the JSON entry */
    assert_null(b.e);

    /* a stream is stored chunk by chunk and replays byte-identically */
    const char *chunks[] = {"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n",
                            "data: {\"choices\":[{\"delta\":{\"content\":\"bill\"}}]}\n\n",
                            "data: {\"choices\":[{\"delta\":{\"content\":\"ing\"}}]}\n\n",
                            ": keep-alive\n\n", "data: [DONE]\n\n"};
    struct tg_buf orig;
    tg_buf_init(&orig, 0);
    e = tg_cache_entry_new(200, true, "text/event-stream", 1 << 20);
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(tg_cache_entry_add_chunk(e, chunks[i], strlen(chunks[i])), TG_OK);
        tg_buf_append_str(&orig, chunks[i]);
    }
    assert_int_equal(tg_cache_store(c, &ks, e, 60), TG_OK);
    tg_cache_entry_free(e);
    b = lookup(base, c, &ks);
    assert_non_null(b.e);
    assert_true(b.e->stream);
    struct tg_buf replay;
    tg_buf_init(&replay, 0);
    for (size_t i = 0; i < b.e->n_chunks; i++)
        tg_buf_append(&replay, b.e->chunks[i].data, b.e->chunks[i].len);
    assert_int_equal(replay.len, orig.len);
    assert_memory_equal(replay.data, orig.data, orig.len);
    assert_string_equal(b.e->content_type, "text/event-stream");
    tg_cache_entry_free(b.e);
    tg_buf_free(&replay);
    tg_buf_free(&orig);

    /* TTL is set */
    struct reply_box r = {0};
    tg_redis_command(c, on_reply, &r, "TTL %s", k.redis_key);
    assert_true(run_until(base, &r.done, 2000));
    assert_true(r.integer > 0 && r.integer <= 60);

    /* corrupt value counts as a miss */
    memset(&r, 0, sizeof r);
    tg_redis_command(c, on_reply, &r, "SET %s garbage", k.redis_key);
    assert_true(run_until(base, &r.done, 2000));
    b = lookup(base, c, &k);
    assert_int_equal(b.err, TG_OK);
    assert_null(b.e);

    tg_redis_destroy(c);
    event_base_free(base);
}

/* ---- rate limits and budgets ------------------------------------------------------------- */

struct limits_box {
    bool done;
    struct tg_limits_result r;
};

static void on_limits(const struct tg_limits_result *r, void *user)
{
    struct limits_box *b = user;
    b->done = true;
    b->r = *r;
}

static struct tg_limits_result check(struct event_base *base, struct tg_redis *c, const struct tg_cfg_redis *rc,
                                     const char *key, const struct tg_cfg_limits *l, int64_t est, int64_t now)
{
    struct limits_box b = {0};
    assert_int_equal(tg_limits_check(c, rc, key, l, est, now, on_limits, &b), TG_OK);
    assert_true(run_until(base, &b.done, 2000));
    return b.r;
}

static void test_limits(void **state)
{
    struct event_base *base = event_base_new();
    struct tg_redis *c = connect_client(base, g_url, 1000);
    struct tg_cfg_redis rcfg = {.limits_fail_open = false};
    int64_t now = 1800000000 + 15; /* 15 s into a minute */

    struct tg_cfg_limits rpm = {.requests_per_min = 2};
    assert_true(check(base, c, &rcfg, "k-rpm", &rpm, 10, now).allowed);
    assert_true(check(base, c, &rcfg, "k-rpm", &rpm, 10, now).allowed);
    struct tg_limits_result r = check(base, c, &rcfg, "k-rpm", &rpm, 10, now);
    assert_false(r.allowed);
    assert_int_equal(r.kind, TG_LIMIT_REQUESTS_PER_MIN);
    assert_int_equal(r.retry_after_s, 45);
    int status;
    int64_t retry;
    json_t *body = tg_limits_reply(&r, &status, &retry);
    assert_int_equal(status, 429);
    assert_int_equal(retry, 45);
    assert_string_equal(json_string_value(json_object_get(json_object_get(body, "error"), "type")),
                        "rate_limit_exceeded");
    json_decref(body);
    /* the next minute is a new window */
    assert_true(check(base, c, &rcfg, "k-rpm", &rpm, 10, now + 60).allowed);
    /* another key is independent */
    assert_true(check(base, c, &rcfg, "k-other", &rpm, 10, now).allowed);

    /* tokens per minute: recorded usage + the estimate */
    struct tg_cfg_limits tpm = {.tokens_per_min = 1000};
    assert_true(check(base, c, &rcfg, "k-tpm", &tpm, 5000, now).allowed); /* empty window: passes */
    assert_int_equal(tg_limits_record(c, "k-tpm", &tpm, 900, 0.0, now), TG_OK);
    assert_true(check(base, c, &rcfg, "k-tpm", &tpm, 50, now).allowed);
    r = check(base, c, &rcfg, "k-tpm", &tpm, 200, now);
    assert_false(r.allowed);
    assert_int_equal(r.kind, TG_LIMIT_TOKENS_PER_MIN);

    /* budgets: spent → downgrade flag, not a rejection; reject helper gives insufficient_quota */
    struct tg_cfg_limits bud = {.usd_per_day = 1.0, .usd_per_month = 10.0};
    r = check(base, c, &rcfg, "k-bud", &bud, 10, now);
    assert_true(r.allowed);
    assert_false(r.remote_budget_exhausted);
    assert_int_equal(tg_limits_record(c, "k-bud", &bud, 100, 0.6, now), TG_OK);
    r = check(base, c, &rcfg, "k-bud", &bud, 10, now);
    assert_false(r.remote_budget_exhausted);
    assert_int_equal(tg_limits_record(c, "k-bud", &bud, 100, 0.5, now), TG_OK);
    r = check(base, c, &rcfg, "k-bud", &bud, 10, now);
    assert_true(r.allowed);
    assert_true(r.remote_budget_exhausted);
    assert_int_equal(r.budget_kind, TG_LIMIT_USD_PER_DAY);
    assert_int_equal(r.budget_retry_after_s, 86400 - (now % 86400));
    body = tg_limits_reject_budget(&r, &status, &retry);
    assert_int_equal(status, 429);
    assert_true(retry > 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(body, "error"), "type")),
                        "insufficient_quota");
    json_decref(body);
    /* the next day the daily budget is fresh, the monthly one still counts 1.1 of 10 */
    r = check(base, c, &rcfg, "k-bud", &bud, 10, now + 86400);
    assert_false(r.remote_budget_exhausted);
    struct tg_cfg_limits month = {.usd_per_month = 1.0};
    r = check(base, c, &rcfg, "k-bud", &month, 10, now + 86400);
    assert_true(r.remote_budget_exhausted);
    assert_int_equal(r.budget_kind, TG_LIMIT_USD_PER_MONTH);

    /* open mode / no limits: no Redis needed */
    struct tg_cfg_limits none = {0};
    struct limits_box lb = {0};
    tg_limits_check(c, &rcfg, "k", &none, 1, now, on_limits, &lb);
    assert_true(lb.done && lb.r.allowed);

    tg_redis_destroy(c);

    /* Redis down: fail closed (503) or open */
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", tg_test_free_port());
    struct tg_cfg_redis dcfg = {.enabled = true, .url = url, .connect_timeout_ms = 100, .command_timeout_ms = 100};
    assert_int_equal(tg_redis_create(base, &dcfg, "down", &c), TG_OK);
    memset(&lb, 0, sizeof lb);
    tg_limits_check(c, &rcfg, "k", &rpm, 1, now, on_limits, &lb);
    assert_true(lb.done);
    assert_false(lb.r.allowed);
    assert_int_equal(lb.r.kind, TG_LIMIT_UNAVAILABLE);
    body = tg_limits_reply(&lb.r, &status, &retry);
    assert_int_equal(status, 503);
    json_decref(body);
    rcfg.limits_fail_open = true;
    memset(&lb, 0, sizeof lb);
    tg_limits_check(c, &rcfg, "k", &rpm, 1, now, on_limits, &lb);
    assert_true(lb.done && lb.r.allowed && lb.r.degraded);
    tg_redis_destroy(c);
    event_base_free(base);
}

/* ---- jobs -------------------------------------------------------------------------------- */

/* Stand-in for the gateway pipeline (component level): answers asynchronously with the request
 * echoed, or never (hang) to simulate a gateway that dies mid-job. */
struct exec_state {
    struct event_base *base;
    int calls;
    bool hang;
};

struct pending_exec {
    tg_gw_result_cb cb;
    void *user;
    char *body;
};

static void exec_fire(evutil_socket_t fd, short ev, void *arg)
{
    struct pending_exec *p = arg;
    char out[4096];
    int n = snprintf(out, sizeof out, "{\"echo\":%s}", p->body);
    p->cb(200, "application/json", out, (size_t)n, p->user);
    free(p->body);
    free(p);
}

static int test_exec(void *ctx, const char *endpoint, const char *body, size_t len, const char *key_name,
                     tg_gw_result_cb cb, void *user)
{
    struct exec_state *s = ctx;
    s->calls++;
    if (s->hang)
        return 0;
    if (strstr(body, "\"fail\"") != NULL)
        return TG_BUSY;
    struct pending_exec *p = malloc(sizeof *p);
    p->cb = cb;
    p->user = user;
    p->body = strndup(body, len);
    event_base_once(s->base, -1, EV_TIMEOUT, exec_fire, p, &(struct timeval){0, 1000});
    return 0;
}

struct http_box {
    bool done;
    int status;
    char body[8192];
};

static void on_http(int status, const char *body, size_t len, void *user)
{
    struct http_box *b = user;
    b->done = true;
    b->status = status;
    snprintf(b->body, sizeof b->body, "%.*s", (int)len, body);
}

static json_t *post_job(struct event_base *base, struct tg_jobs *j, const char *body, const char *idem,
                        const char *tenant, int *status)
{
    struct http_box b = {0};
    tg_jobs_handle_post(j, body, strlen(body), idem, "key1", tenant, on_http, &b);
    assert_true(run_until(base, &b.done, 3000));
    *status = b.status;
    return json_loads(b.body, 0, NULL);
}

static json_t *get_job(struct event_base *base, struct tg_jobs *j, const char *id, const char *tenant, int *status)
{
    struct http_box b = {0};
    tg_jobs_handle_get(j, id, tenant, on_http, &b);
    assert_true(run_until(base, &b.done, 3000));
    *status = b.status;
    return json_loads(b.body, 0, NULL);
}

static json_t *wait_job(struct event_base *base, struct tg_jobs *j, const char *id, const char *tenant,
                        const char *want, int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    for (;;) {
        int st;
        json_t *o = get_job(base, j, id, tenant, &st);
        assert_int_equal(st, 200);
        if (strcmp(json_string_value(json_object_get(o, "status")), want) == 0)
            return o;
        json_decref(o);
        if (mono_ms() > end)
            fail_msg("job %s never became %s", id, want);
        run_for(base, 50);
    }
}

static void test_jobs_basic(void **state)
{
    struct event_base *base = event_base_new();
    struct tg_redis *c = connect_client(base, g_url, 1000);
    struct exec_state ex = {.base = base};
    struct tg_jobs_params p = {.result_ttl_s = 300, .claim_idle_ms = 1000, .poll_ms = 50,
                               .consumer = "test-a", .consume = true};
    struct tg_jobs *j = NULL;
    assert_int_equal(tg_jobs_create(c, &p, test_exec, &ex, &j), TG_OK);

    int st;
    json_t *o = post_job(base, j, "{\"type\":\"classify\",\"text\":\"refund please\",\"labels\":[\"billing\",\"tech\"]}",
                         NULL, "acme", &st);
    assert_int_equal(st, 202);
    const char *id = json_string_value(json_object_get(o, "id"));
    assert_non_null(id);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "queued");
    char idbuf[64];
    snprintf(idbuf, sizeof idbuf, "%s", id);
    json_decref(o);

    o = wait_job(base, j, idbuf, "acme", "succeeded", 5000);
    assert_string_equal(json_string_value(json_object_get(o, "endpoint")), "/v1/classify");
    json_t *res = json_object_get(o, "result");
    assert_int_equal(json_integer_value(json_object_get(res, "status")), 200);
    json_t *echo = json_object_get(json_object_get(res, "body"), "echo");
    assert_string_equal(json_string_value(json_object_get(echo, "text")), "refund please");
    assert_null(json_object_get(echo, "type")); /* job fields are not part of the request */
    assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 1);
    json_decref(o);

    /* another tenant cannot see it; unknown and malformed ids are 404 */
    o = get_job(base, j, idbuf, "globex", &st);
    assert_int_equal(st, 404);
    json_decref(o);
    o = get_job(base, j, "job_000000000000000000000000", "acme", &st);
    assert_int_equal(st, 404);
    json_decref(o);
    o = get_job(base, j, "../../etc", "acme", &st);
    assert_int_equal(st, 404);
    json_decref(o);

    /* idempotency: same key → same job, run once */
    int calls = ex.calls;
    o = post_job(base, j, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "idem-1", "acme", &st);
    assert_int_equal(st, 202);
    snprintf(idbuf, sizeof idbuf, "%s", json_string_value(json_object_get(o, "id")));
    json_decref(o);
    o = post_job(base, j, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "idem-1", "acme", &st);
    assert_int_equal(st, 202);
    assert_string_equal(json_string_value(json_object_get(o, "id")), idbuf);
    json_decref(o);
    o = wait_job(base, j, idbuf, "acme", "succeeded", 5000);
    json_decref(o);
    run_for(base, 200);
    assert_int_equal(ex.calls, calls + 1);

    /* the pipeline refusing the job fails it with a result */
    o = post_job(base, j, "{\"messages\":[],\"x\":\"fail\"}", NULL, "acme", &st);
    snprintf(idbuf, sizeof idbuf, "%s", json_string_value(json_object_get(o, "id")));
    json_decref(o);
    o = wait_job(base, j, idbuf, "acme", "failed", 5000);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "result"), "status")), 503);
    json_decref(o);

    /* bad bodies */
    static const char *bad[] = {"not json", "[1]", "{\"type\":\"poem\"}", "{\"endpoint\":\"/v1/models\"}",
                                "{\"callback_url\":\"ftp://x\"}", "{\"callback_url\":5}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct http_box b = {0};
        tg_jobs_handle_post(j, bad[i], strlen(bad[i]), NULL, NULL, NULL, on_http, &b);
        assert_true(run_until(base, &b.done, 2000));
        if (b.status != 400)
            fail_msg("%s → %d", bad[i], b.status);
    }
    /* paused (drain): new jobs are not taken */
    tg_jobs_pause(j);
    o = post_job(base, j, "{\"messages\":[{\"role\":\"user\",\"content\":\"later\"}]}", NULL, "acme", &st);
    assert_int_equal(st, 202);
    char later[64];
    snprintf(later, sizeof later, "%s", json_string_value(json_object_get(o, "id")));
    json_decref(o);
    run_for(base, 400);
    o = get_job(base, j, later, "acme", &st);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "queued");
    json_decref(o);
    /* another consumer (a replica) takes it */
    struct tg_jobs_params p2 = p;
    p2.consumer = "test-b";
    struct tg_jobs *j2 = NULL;
    assert_int_equal(tg_jobs_create(c, &p2, test_exec, &ex, &j2), TG_OK);
    o = wait_job(base, j2, later, "acme", "succeeded", 5000);
    json_decref(o);
    tg_jobs_destroy(j2);

    /* results are kept result_ttl_s */
    struct reply_box ttl = {0};
    tg_redis_command(c, on_reply, &ttl, "TTL tg:job:%s", idbuf);
    assert_true(run_until(base, &ttl.done, 2000));
    assert_true(ttl.integer > 0 && ttl.integer <= 300);
    tg_jobs_destroy(j);
    tg_redis_destroy(c);

    /* Redis down: both handlers answer 503 at once */
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", tg_test_free_port());
    struct tg_cfg_redis dcfg = {.enabled = true, .url = url, .connect_timeout_ms = 100, .command_timeout_ms = 100};
    assert_int_equal(tg_redis_create(base, &dcfg, "down", &c), TG_OK);
    assert_int_equal(tg_jobs_create(c, &p, test_exec, &ex, &j), TG_OK);
    struct http_box hb = {0};
    tg_jobs_handle_post(j, "{\"messages\":[]}", 14, NULL, NULL, NULL, on_http, &hb);
    assert_true(hb.done);
    assert_int_equal(hb.status, 503);
    memset(&hb, 0, sizeof hb);
    tg_jobs_handle_get(j, "job_000000000000000000000000", NULL, on_http, &hb);
    assert_true(hb.done);
    assert_int_equal(hb.status, 503);
    run_for(base, 100); /* the refused connection is noticed */
    assert_true(tg_redis_clients_down() >= 1);
    tg_jobs_destroy(j);
    tg_redis_destroy(c);
    event_base_free(base);
}

/* Destroying the jobs object while its commands are in flight (the client then runs their
 * callbacks with TG_UNAVAILABLE) must not touch freed memory (run under ASan). */
static void test_jobs_destroy_in_flight(void **state)
{
    struct event_base *base = event_base_new();
    struct tg_redis *c = connect_client(base, g_url, 1000);
    struct exec_state ex = {.base = base};
    struct tg_jobs_params p = {.result_ttl_s = 300, .claim_idle_ms = 100, .poll_ms = 1,
                               .consumer = "test-d", .consume = true};
    for (int round = 0; round < 20; round++) {
        struct tg_jobs *j = NULL;
        assert_int_equal(tg_jobs_create(c, &p, test_exec, &ex, &j), TG_OK);
        struct http_box b = {0};
        tg_jobs_handle_post(j, "{\"messages\":[]}", 14, NULL, NULL, NULL, on_http, &b);
        run_for(base, round % 5); /* poll, group, claim and post commands in flight */
        tg_jobs_destroy(j);
        if (round % 2 == 0)
            run_for(base, 20); /* their replies arrive after the destroy */
    }
    tg_redis_destroy(c); /* or they are failed here */
    event_base_free(base);
}

/* webhook receiver: answers 500 to the first delivery, 200 after */
struct receiver {
    struct event_base *base;
    struct evhttp *http;
    int port;
    pthread_t thread;
    pthread_mutex_t lock;
    int hits;
    char body[8192];
    char signature[128];
    char timestamp[32];
};

static void on_hook(struct evhttp_request *req, void *arg)
{
    struct receiver *r = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    pthread_mutex_lock(&r->lock);
    r->hits++;
    int hits = r->hits;
    if (n >= sizeof r->body)
        n = sizeof r->body - 1;
    evbuffer_copyout(in, r->body, n);
    r->body[n] = '\0';
    const char *sig = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Tiergate-Signature");
    const char *ts = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Tiergate-Timestamp");
    snprintf(r->signature, sizeof r->signature, "%s", sig != NULL ? sig : "");
    snprintf(r->timestamp, sizeof r->timestamp, "%s", ts != NULL ? ts : "");
    pthread_mutex_unlock(&r->lock);
    evhttp_send_reply(req, hits == 1 ? 500 : 200, hits == 1 ? "Oops" : "OK", NULL);
}

static void *receiver_main(void *arg)
{
    struct receiver *r = arg;
    event_base_dispatch(r->base);
    return NULL;
}

static void test_jobs_webhook(void **state)
{
    setenv("TG_WEBHOOK_BACKOFF_MS", "50", 1);
    struct receiver rcv = {0};
    pthread_mutex_init(&rcv.lock, NULL);
    rcv.base = event_base_new();
    rcv.http = evhttp_new(rcv.base);
    rcv.port = tg_test_free_port();
    assert_int_equal(evhttp_bind_socket(rcv.http, "127.0.0.1", (uint16_t)rcv.port), 0);
    evhttp_set_gencb(rcv.http, on_hook, &rcv);
    pthread_create(&rcv.thread, NULL, receiver_main, &rcv);

    struct event_base *base = event_base_new();
    struct tg_redis *c = connect_client(base, g_url, 1000);
    struct exec_state ex = {.base = base};
    struct tg_jobs_params p = {.result_ttl_s = 300, .claim_idle_ms = 1000, .poll_ms = 50, .consumer = "test-w",
                               .consume = true, .webhook_secret = "s3cret", .webhook_retries = 3,
                               .webhook_allow_private = true /* the receiver is on loopback */};
    struct tg_jobs *j = NULL;
    assert_int_equal(tg_jobs_create(c, &p, test_exec, &ex, &j), TG_OK);
    char body[256];
    snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"hook\"}],"
             "\"callback_url\":\"http://127.0.0.1:%d/hook\"}", rcv.port);
    int st;
    json_t *o = post_job(base, j, body, NULL, "acme", &st);
    assert_int_equal(st, 202);
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(o, "id")));
    json_decref(o);
    o = wait_job(base, j, id, "acme", "succeeded", 5000);
    json_decref(o);

    int64_t end = mono_ms() + 5000;
    int hits = 0;
    while (mono_ms() < end) {
        pthread_mutex_lock(&rcv.lock);
        hits = rcv.hits;
        pthread_mutex_unlock(&rcv.lock);
        if (hits >= 2)
            break;
        run_for(base, 20);
    }
    assert_int_equal(hits, 2); /* first answered 500, retried with backoff */

    /* verify the signature independently of tg_jobs_sign */
    unsigned char md[32];
    unsigned int n = 0;
    HMAC(EVP_sha256(), "s3cret", 6, (unsigned char *)rcv.body, strlen(rcv.body), md, &n);
    char want[80] = "sha256=";
    for (unsigned int i = 0; i < n; i++)
        snprintf(want + 7 + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(rcv.signature, want);
    assert_true(atoll(rcv.timestamp) > 1600000000);
    json_t *hook = json_loads(rcv.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(hook, "id")), id);
    assert_string_equal(json_string_value(json_object_get(hook, "status")), "succeeded");
    json_decref(hook);
    /* a tampered body does not verify */
    char sig2[72];
    tg_jobs_sign("s3cret", "{\"x\":1}", 7, sig2);
    assert_string_not_equal(sig2, rcv.signature);
    assert_string_equal(rcv.signature, (tg_jobs_sign("s3cret", rcv.body, strlen(rcv.body), sig2), sig2));

    tg_jobs_destroy(j);
    tg_redis_destroy(c);
    event_base_free(base);
    event_base_loopbreak(rcv.base);
    pthread_join(rcv.thread, NULL);
    evhttp_free(rcv.http);
    event_base_free(rcv.base);
    pthread_mutex_destroy(&rcv.lock);
}

/* A consumer process is killed with SIGKILL while the job runs; another consumer takes the
 * entry over after claim_idle_ms and completes it. */
static void test_jobs_survive_kill9(void **state)
{
    pid_t child = fork();
    assert_true(child != -1);
    if (child == 0) {
        struct event_base *cb = event_base_new();
        struct tg_cfg_redis cfg = {.enabled = true, .url = g_url, .connect_timeout_ms = 500, .command_timeout_ms = 1000};
        struct tg_redis *cc = NULL;
        if (tg_redis_create(cb, &cfg, "child", &cc) != TG_OK)
            _exit(2);
        struct exec_state ex = {.base = cb, .hang = true};
        struct tg_jobs_params p = {.result_ttl_s = 300, .claim_idle_ms = 600, .poll_ms = 20,
                                   .consumer = "doomed", .consume = true};
        struct tg_jobs *cj = NULL;
        if (tg_jobs_create(cc, &p, test_exec, &ex, &cj) != TG_OK)
            _exit(3);
        event_base_dispatch(cb); /* until killed */
        _exit(0);
    }
    struct event_base *base = event_base_new();
    struct tg_redis *c = connect_client(base, g_url, 1000);
    struct exec_state ex = {.base = base};
    /* accept-only front end: never consumes */
    struct tg_jobs_params fp = {.result_ttl_s = 300, .claim_idle_ms = 600, .consume = false};
    struct tg_jobs *front = NULL;
    assert_int_equal(tg_jobs_create(c, &fp, NULL, NULL, &front), TG_OK);
    int st;
    json_t *o = post_job(base, front, "{\"messages\":[{\"role\":\"user\",\"content\":\"durable\"}]}", NULL, "acme", &st);
    assert_int_equal(st, 202);
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(o, "id")));
    json_decref(o);
    o = wait_job(base, front, id, "acme", "running", 5000);
    json_decref(o);
    /* stays running while the child heartbeats, longer than claim_idle_ms */
    run_for(base, 1000);
    o = get_job(base, front, id, "acme", &st);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "running");
    json_decref(o);

    kill(child, SIGKILL);
    int wst;
    waitpid(child, &wst, 0);
    assert_true(WIFSIGNALED(wst));

    struct tg_jobs_params p = {.result_ttl_s = 300, .claim_idle_ms = 600, .poll_ms = 20,
                               .consumer = "survivor", .consume = true};
    struct tg_jobs *j = NULL;
    assert_int_equal(tg_jobs_create(c, &p, test_exec, &ex, &j), TG_OK);
    o = wait_job(base, j, id, "acme", "succeeded", 8000);
    assert_int_equal(json_integer_value(json_object_get(o, "attempts")), 2);
    json_t *echo = json_object_get(json_object_get(json_object_get(o, "result"), "body"), "echo");
    assert_non_null(echo);
    json_decref(o);
    assert_int_equal(ex.calls, 1);

    /* nothing is left pending in the group */
    struct reply_box r = {0};
    tg_redis_command(c, on_reply, &r, "XPENDING tg:jobs tiergate");
    assert_true(run_until(base, &r.done, 2000));
    tg_jobs_destroy(j);
    tg_jobs_destroy(front);
    tg_redis_destroy(c);
    event_base_free(base);
}

/* ---- Redis killed and restarted under load ------------------------------------------------ */

struct load {
    struct tg_redis *c;
    int sent, ok, failed_fast, errors;
    bool ok_after_restart;
    bool restarted;
    struct event *ev;
};

static void on_load_reply(int err, const redisReply *r, void *user)
{
    struct load *l = user;
    if (err == TG_OK && r->type == REDIS_REPLY_STRING) {
        l->ok++;
        if (l->restarted)
            l->ok_after_restart = true;
    } else {
        l->errors++;
    }
}

static void on_load_tick(evutil_socket_t fd, short ev, void *arg)
{
    struct load *l = arg;
    for (int i = 0; i < 20; i++) {
        l->sent++;
        /* SET + GET: the GET answers a string */
        tg_redis_command(l->c, NULL, NULL, "SET tg:load v");
        if (tg_redis_command(l->c, on_load_reply, l, "GET tg:load") != TG_OK)
            l->failed_fast++;
    }
}

static pid_t start_redis_on(int port, const char *dir)
{
    char ps[16], log[256];
    snprintf(ps, sizeof ps, "%d", port);
    snprintf(log, sizeof log, "%s/redis2.log", dir);
    char *argv[] = {"/usr/bin/redis-server", "--port", ps, "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", (char *)dir, NULL};
    pid_t pid = tg_test_spawn(argv, NULL, log);
    assert_true(tg_test_wait_port(port, 5000));
    return pid;
}

static void test_redis_restart_under_load(void **state)
{
    char dir[] = "/tmp/tg-redis2-XXXXXX";
    assert_non_null(mkdtemp(dir));
    int port = tg_test_free_port();
    pid_t pid = start_redis_on(port, dir);
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    struct event_base *base = event_base_new();
    struct tg_redis *c = connect_client(base, url, 300);
    assert_true(tg_redis_available(c));
    uint64_t outages = tg_redis_outages_total();

    struct load l = {.c = c};
    l.ev = event_new(base, -1, EV_PERSIST, on_load_tick, &l);
    event_add(l.ev, &(struct timeval){0, 2000});
    run_for(base, 300);
    assert_true(l.ok > 0);

    tg_test_stop(pid, SIGKILL, 2000);
    run_for(base, 500);
    assert_false(tg_redis_available(c));
    assert_true(l.failed_fast > 0);            /* commands while down fail at once */
    assert_int_equal(tg_redis_outages_total(), outages + 1);

    pid = start_redis_on(port, dir);
    l.restarted = true;
    int64_t end = mono_ms() + 8000;
    while (!(tg_redis_available(c) && l.ok_after_restart) && mono_ms() < end)
        run_for(base, 50);
    assert_true(tg_redis_available(c));
    assert_true(l.ok_after_restart);
    assert_int_equal(tg_redis_outages_total(), outages + 1); /* one outage, however many requests */

    event_free(l.ev);
    tg_redis_destroy(c);
    event_base_free(base);
    tg_test_stop(pid, SIGTERM, 3000);
    char path[300];
    snprintf(path, sizeof path, "%s/redis2.log", dir);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cache_key),
        cmocka_unit_test(test_cache_decide),
        cmocka_unit_test(test_cache_entry_codec),
        cmocka_unit_test(test_client_basics),
        cmocka_unit_test(test_client_down_fails_fast),
        cmocka_unit_test(test_cache_roundtrip),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_jobs_basic),
        cmocka_unit_test(test_jobs_destroy_in_flight),
        cmocka_unit_test(test_jobs_webhook),
        cmocka_unit_test(test_jobs_survive_kill9),
        cmocka_unit_test(test_redis_restart_under_load),
    };
    if (getenv("TG_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("TG_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
