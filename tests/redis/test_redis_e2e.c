/* Redis features end to end through the real tiergate binary: a real redis-server, the fake
 * upstream as the remote provider, the tiny generated model as the local tier.
 * Cache hit/miss/bypass, byte-identical stream replay, no cross-tenant hit, 429 + Retry-After,
 * budget -> local downgrade, jobs (incl. kill -9 of tiergate mid-job), signed webhook, Redis
 * killed and restarted under load. */
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
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>

#include "tg_testlib.h"

#ifndef TG_FAKE_UPSTREAM
#define TG_FAKE_UPSTREAM TG_BINARY_DIR "/tests/tg-fake-upstream"
#endif
#define TIERGATE TG_BINARY_DIR "/gateway/tiergate"

/* sha256 of the bearer tokens "secret", "tenant-b", "limited", "budget", "acme-two" */
#define SHA_SECRET "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
#define SHA_TENANT_B "df6b6a5f230ea55af66fbc138653f50906674c62e103019d7af1d3bba6862ac2"
#define SHA_LIMITED "7b508dace774f8adc1b121c1812b740904be6dfd37e3b5e3579bc81fbf6f5553"
#define SHA_ACME_TWO "7ee0763ff48aa85d89548fb982cf57971a757fc16119e90d585246f9645bc839"
#define SHA_BUDGET "0af96a8ed622a394e8b2a239284ee46e9a7a7b0ec38191bbd08571b171118dd6"

static struct tg_test_redis g_redis;
static int g_fake_port, g_port;
static pid_t g_fake_pid, g_gw_pid;
static char g_cfg_path[256], g_log[128], g_fake_log[128];

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_config(void)
{
    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "server:\n  listen: 127.0.0.1:%d\n  io_threads: 2\n  open_mode: false\n  log_level: info\n"
             "  api_keys:\n"
             "    - {name: main, sha256: " SHA_SECRET ", tenant: acme}\n"
             "    - {name: other, sha256: " SHA_TENANT_B ", tenant: globex}\n"
             "    - {name: limited, sha256: " SHA_LIMITED ", tenant: acme, limits: {requests_per_min: 2}}\n"
             "    - {name: budget, sha256: " SHA_BUDGET ", tenant: acme, limits: {usd_per_day: 0.000001}}\n"
             "    - {name: acme2, sha256: " SHA_ACME_TWO ", tenant: acme}\n"
             "redis:\n  url: redis://127.0.0.1:%d/0\n  connect_timeout_ms: 300\n  command_timeout_ms: 500\n"
             "  limits_fail: open\n"
             "local:\n  model: %s\n  slots: 2\n  context: 2048\n  price_per_mtok_usd: 0.02\n"
             "providers:\n  fake:\n    kind: openai\n    base_url: http://127.0.0.1:%d/v1\n"
             "    api_key: sk-fake\n    retries: 0\n    circuit_failures: 1000\n"
             "models:\n"
             "  - {name: phi-3.5-mini, tier: local, target: engine}\n"
             "  - {name: gpt-fake, tier: remote, provider: fake, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6}\n"
             "  - {name: gpt-slow, tier: remote, provider: fake, upstream_model: \"script:delay_ms=3000\","
             " input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6}\n"
             "  - {name: gpt-cut, tier: remote, provider: fake, upstream_model: \"script:error_after=2\","
             " input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6}\n"
             "aliases:\n  auto: {local: phi-3.5-mini, remote: gpt-fake}\n"
             "cache:\n  enabled: true\n  ttl_s: 300\n  max_entry_bytes: 1048576\n"
             "jobs:\n  result_ttl_s: 300\n  webhook_retries: 2\n  claim_idle_ms: 1000\n"
             "  webhook_allow_private: true\n" /* the test receiver is on 127.0.0.1 */
             "  webhook_secret: e2e-hook-secret\n"
             "metrics:\n  reference_model: gpt-fake\n",
             g_port, g_redis.port, TG_TINY_MODEL, g_fake_port);
    const char *p = tg_test_write_temp("routes.yaml", cfg);
    assert_non_null(p);
    snprintf(g_cfg_path, sizeof g_cfg_path, "%s", p);
}

static bool gw_ready(int timeout_ms)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", g_port);
    int64_t end = mono_ms() + timeout_ms;
    while (mono_ms() < end) {
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

static void gw_start(void)
{
    char *argv[] = {TIERGATE, "--config", g_cfg_path, NULL};
    g_gw_pid = tg_test_spawn(argv, NULL, g_log);
    assert_true(gw_ready(60000));
    usleep(200000); /* Redis connections come up in the background */
}

static int group_setup(void **state)
{
    if (!tg_test_redis_start(&g_redis))
        return -1;
    g_fake_port = tg_test_free_port();
    snprintf(g_fake_log, sizeof g_fake_log, "/tmp/tg-redis-e2e-fake-%d.log", g_fake_port);
    char fport[16];
    snprintf(fport, sizeof fport, "%d", g_fake_port);
    char *fargv[] = {TG_FAKE_UPSTREAM, "--port", fport, NULL};
    g_fake_pid = tg_test_spawn(fargv, NULL, g_fake_log);
    if (!tg_test_wait_port(g_fake_port, 10000))
        return -1;
    g_port = tg_test_free_port();
    snprintf(g_log, sizeof g_log, "/tmp/tg-redis-e2e-%d.log", g_port);
    write_config();
    gw_start();
    return 0;
}

static int group_teardown(void **state)
{
    tg_test_stop(g_gw_pid, SIGTERM, 30000);
    tg_test_stop(g_fake_pid, SIGTERM, 5000);
    tg_test_redis_stop(&g_redis);
    if (getenv("TG_KEEP_LOGS") == NULL) {
        unlink(g_log);
        unlink(g_fake_log);
    } else {
        fprintf(stderr, "logs: %s %s\n", g_log, g_fake_log);
    }
    return 0;
}

/* Cached entries in Redis right now (the store after a miss is fire-and-forget, and the next
 * request may run on another I/O thread's connection: wait for it instead of sleeping). */
static long long cache_keys(void)
{
    redisContext *c = redisConnect("127.0.0.1", g_redis.port);
    assert_true(c != NULL && c->err == 0);
    redisReply *r = redisCommand(c, "KEYS tg:c:*");
    long long n = r != NULL && r->type == REDIS_REPLY_ARRAY ? (long long)r->elements : -1;
    freeReplyObject(r);
    redisFree(c);
    return n;
}

static void wait_stored(long long before)
{
    int64_t end = mono_ms() + 5000;
    while (cache_keys() <= before && mono_ms() < end)
        usleep(10000);
    assert_true(cache_keys() > before);
}

struct resp {
    struct tg_test_response r;
    char cache[32], tier[32], retry_after[32], fallback[96], cost[32];
};

static void post(const char *key, const char *path, const char *body, const char *extra, struct resp *out)
{
    char url[256], auth[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", g_port, path);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
    const char *h[] = {auth, "Content-Type: application/json", extra, NULL};
    memset(out, 0, sizeof *out);
    assert_int_equal(tg_test_http("POST", url, h, body, &out->r), 0);
    tg_test_header(&out->r, "x-tiergate-cache", out->cache, sizeof out->cache);
    tg_test_header(&out->r, "x-tiergate-tier", out->tier, sizeof out->tier);
    tg_test_header(&out->r, "Retry-After", out->retry_after, sizeof out->retry_after);
    tg_test_header(&out->r, "x-tiergate-fallback", out->fallback, sizeof out->fallback);
    tg_test_header(&out->r, "x-tiergate-cost-usd", out->cost, sizeof out->cost);
}

static void get(const char *key, const char *path, struct resp *out)
{
    char url[256], auth[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", g_port, path);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
    const char *h[] = {auth, NULL};
    memset(out, 0, sizeof *out);
    assert_int_equal(tg_test_http("GET", url, h, NULL, &out->r), 0);
}

static void test_cache_hit_miss_bypass(void **state)
{
    const char *body = "{\"model\":\"gpt-fake\",\"temperature\":0,\"messages\":[{\"role\":\"user\","
                       "\"content\":\"Classify ticket 4711: my invoice is wrong\"}]}";
    struct resp a, b, c, d, e;
    long long n0 = cache_keys();
    post("secret", "/v1/chat/completions", body, NULL, &a);
    assert_int_equal(a.r.status, 200);
    assert_string_equal(a.cache, "miss");
    assert_string_equal(a.tier, "remote");
    wait_stored(n0);
    post("secret", "/v1/chat/completions", body, NULL, &b);
    assert_int_equal(b.r.status, 200);
    assert_string_equal(b.cache, "hit");
    assert_string_equal(b.tier, "cache");
    assert_true(atof(b.cost) == 0.0);
    assert_int_equal(a.r.body_len, b.r.body_len);
    assert_memory_equal(a.r.body, b.r.body, a.r.body_len);
    /* no-store: neither read nor written; no-cache: not read */
    post("secret", "/v1/chat/completions", body, "Cache-Control: no-store", &c);
    assert_string_equal(c.cache, "bypass");
    assert_string_equal(c.tier, "remote");
    post("secret", "/v1/chat/completions", body, "Cache-Control: no-cache", &d);
    assert_string_equal(d.cache, "bypass");
    assert_string_equal(d.tier, "remote");
    /* nondeterministic requests are not cached */
    const char *hot = "{\"model\":\"gpt-fake\",\"temperature\":0.8,\"messages\":[{\"role\":\"user\","
                      "\"content\":\"Classify ticket 4711: my invoice is wrong\"}]}";
    post("secret", "/v1/chat/completions", hot, NULL, &e);
    assert_string_equal(e.cache, "bypass");
    struct resp *all[] = {&a, &b, &c, &d, &e};
    for (size_t i = 0; i < 5; i++)
        tg_test_response_free(&all[i]->r);
}

static void test_cross_tenant(void **state)
{
    const char *body = "{\"model\":\"gpt-fake\",\"temperature\":0,\"messages\":[{\"role\":\"user\","
                       "\"content\":\"tenant isolation probe\"}]}";
    struct resp a, b, c;
    long long n0 = cache_keys();
    post("secret", "/v1/chat/completions", body, NULL, &a);
    assert_string_equal(a.cache, "miss");
    wait_stored(n0);
    post("tenant-b", "/v1/chat/completions", body, NULL, &b);
    assert_int_equal(b.r.status, 200);
    assert_string_equal(b.cache, "miss"); /* globex never sees acme's entry */
    wait_stored(n0 + 1);
    post("acme-two", "/v1/chat/completions", body, NULL, &c); /* same tenant acme: shared */
    assert_string_equal(c.cache, "hit");
    tg_test_response_free(&a.r);
    tg_test_response_free(&b.r);
    tg_test_response_free(&c.r);
}

static void test_stream_replay_identical(void **state)
{
    const char *body = "{\"model\":\"gpt-fake\",\"temperature\":0,\"stream\":true,\"messages\":[{\"role\":"
                       "\"user\",\"content\":\"stream me the answer please\"}]}";
    struct resp a, b, j;
    long long n0 = cache_keys();
    post("secret", "/v1/chat/completions", body, NULL, &a);
    assert_int_equal(a.r.status, 200);
    assert_string_equal(a.cache, "miss");
    assert_non_null(strstr(a.r.body, "data: [DONE]"));
    wait_stored(n0);
    post("secret", "/v1/chat/completions", body, NULL, &b);
    assert_int_equal(b.r.status, 200);
    assert_string_equal(b.cache, "hit");
    assert_int_equal(a.r.body_len, b.r.body_len);
    assert_memory_equal(a.r.body, b.r.body, a.r.body_len);
    char ct[64];
    assert_true(tg_test_header(&b.r, "Content-Type", ct, sizeof ct));
    assert_non_null(strstr(ct, "text/event-stream"));
    /* the same request without stream is keyed separately: not a replay of the stream */
    const char *plain = "{\"model\":\"gpt-fake\",\"temperature\":0,\"messages\":[{\"role\":"
                        "\"user\",\"content\":\"stream me the answer please\"}]}";
    post("secret", "/v1/chat/completions", plain, NULL, &j);
    assert_string_equal(j.cache, "miss");
    assert_null(strstr(j.r.body, "data:"));
    tg_test_response_free(&a.r);
    tg_test_response_free(&b.r);
    tg_test_response_free(&j.r);
}

/* A stream that breaks after it started is never stored. */
static void test_partial_stream_not_cached(void **state)
{
    const char *body = "{\"model\":\"gpt-cut\",\"temperature\":0,\"stream\":true,\"messages\":[{\"role\":"
                       "\"user\",\"content\":\"this stream breaks half way through\"}]}";
    long long n0 = cache_keys();
    for (int i = 0; i < 2; i++) {
        struct resp r;
        post("secret", "/v1/chat/completions", body, NULL, &r);
        assert_int_equal(r.r.status, 200);
        assert_string_equal(r.cache, "miss");
        assert_non_null(strstr(r.r.body, "error"));
        tg_test_response_free(&r.r);
        usleep(150000);
    }
    assert_true(cache_keys() == n0); /* nothing was stored */
}

static void test_rate_limit_429(void **state)
{
    /* requests_per_min: 2. Six requests within well under a second span at most one minute
     * boundary, so some window sees a third request: at least one 429 is certain. */
    struct resp r;
    int ok = 0, limited = 0;
    for (int i = 0; i < 6 && limited == 0; i++) {
        char body[256];
        snprintf(body, sizeof body, "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"rl %d\"}]}", i);
        post("limited", "/v1/chat/completions", body, NULL, &r);
        if (r.r.status == 200) {
            ok++;
        } else {
            assert_int_equal(r.r.status, 429);
            limited++;
            long ra = atol(r.retry_after);
            assert_true(ra >= 1 && ra <= 60);
            json_t *j = json_loads(r.r.body, 0, NULL);
            assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "type")),
                                "rate_limit_exceeded");
            json_decref(j);
        }
        tg_test_response_free(&r.r);
    }
    assert_int_equal(limited, 1);
    assert_true(ok >= 2 && ok <= 4);
    /* other keys are not affected */
    post("secret", "/v1/chat/completions", "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"free\"}]}",
         NULL, &r);
    assert_int_equal(r.r.status, 200);
    tg_test_response_free(&r.r);
}

static void test_budget_downgrade(void **state)
{
    /* spend the key's daily budget on the remote model */
    struct resp r;
    post("budget", "/v1/chat/completions",
         "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"spend the budget now "
         "with a long enough prompt to cost something\"}]}", "Cache-Control: no-store", &r);
    assert_int_equal(r.r.status, 200);
    assert_string_equal(r.tier, "remote");
    tg_test_response_free(&r.r);
    usleep(200000);
    /* a pinned remote model can only be refused */
    post("budget", "/v1/chat/completions",
         "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"again\"}]}",
         "Cache-Control: no-store", &r);
    assert_int_equal(r.r.status, 429);
    assert_true(atol(r.retry_after) >= 1);
    json_t *j = json_loads(r.r.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "error"), "type")),
                        "insufficient_quota");
    json_decref(j);
    tg_test_response_free(&r.r);
    /* "auto" with a request the router sends remote is downgraded to the local tier */
    const char *hard = "{\"model\":\"auto\",\"max_tokens\":4,\"messages\":[{\"role\":\"user\",\"content\":"
                       "\"Write a long, original, emotionally rich short story with vivid world-building, "
                       "then prove rigorously that there are infinitely many primes and analyse the "
                       "historical context of the proof in depth.\"}]}";
    post("budget", "/v1/chat/completions", hard, "Cache-Control: no-store", &r);
    assert_int_equal(r.r.status, 200);
    assert_string_equal(r.tier, "local");
    assert_non_null(strstr(r.fallback, "budget"));
    tg_test_response_free(&r.r);
    /* a request only the remote tier can serve (tools) is refused instead */
    post("budget", "/v1/chat/completions",
         "{\"model\":\"auto\",\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"lookup\","
         "\"parameters\":{\"type\":\"object\"}}}],\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
         "Cache-Control: no-store", &r);
    assert_int_equal(r.r.status, 429);
    assert_non_null(strstr(r.r.body, "insufficient_quota"));
    assert_true(atol(r.retry_after) >= 1);
    tg_test_response_free(&r.r);
    /* the same request for a key with budget left goes remote */
    post("secret", "/v1/chat/completions", hard, "Cache-Control: no-store", &r);
    assert_int_equal(r.r.status, 200);
    assert_string_equal(r.tier, "remote");
    tg_test_response_free(&r.r);
}

static json_t *job_status(const char *key, const char *id, int *http)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    struct resp r;
    get(key, path, &r);
    *http = (int)r.r.status;
    json_t *j = json_loads(r.r.body, 0, NULL);
    tg_test_response_free(&r.r);
    return j;
}

static json_t *wait_job(const char *id, const char *want, int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    for (;;) {
        int http;
        json_t *j = job_status("secret", id, &http);
        if (http == 200 && strcmp(json_string_value(json_object_get(j, "status")), want) == 0)
            return j;
        json_decref(j);
        if (mono_ms() > end)
            fail_msg("job %s never became %s", id, want);
        usleep(100000);
    }
}

static void test_jobs_survive_kill9(void **state)
{
    struct resp r;
    post("secret", "/v1/jobs",
         "{\"type\":\"chat\",\"model\":\"gpt-slow\",\"messages\":[{\"role\":\"user\",\"content\":\"durable job\"}]}",
         "Idempotency-Key: e2e-kill9", &r);
    assert_int_equal(r.r.status, 202);
    json_t *j = json_loads(r.r.body, 0, NULL);
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    tg_test_response_free(&r.r);

    j = wait_job(id, "running", 5000);
    json_decref(j);
    kill(g_gw_pid, SIGKILL); /* mid-job: the fake upstream answers after 3 s */
    int st;
    waitpid(g_gw_pid, &st, 0);
    assert_true(WIFSIGNALED(st));
    gw_start();

    j = wait_job(id, "succeeded", 20000);
    assert_true(json_integer_value(json_object_get(j, "attempts")) >= 2);
    json_t *res = json_object_get(j, "result");
    assert_int_equal(json_integer_value(json_object_get(res, "status")), 200);
    assert_non_null(json_object_get(json_object_get(res, "body"), "choices"));
    json_decref(j);

    /* idempotent re-post returns the same job; another tenant cannot read it */
    post("secret", "/v1/jobs", "{\"type\":\"chat\",\"model\":\"gpt-slow\",\"messages\":[]}", "Idempotency-Key: e2e-kill9", &r);
    assert_int_equal(r.r.status, 202);
    assert_non_null(strstr(r.r.body, id));
    tg_test_response_free(&r.r);
    int http;
    j = job_status("tenant-b", id, &http);
    assert_int_equal(http, 404);
    json_decref(j);
}

/* webhook receiver on its own thread */
struct receiver {
    struct event_base *base;
    struct evhttp *http;
    pthread_t thread;
    pthread_mutex_t lock;
    int hits;
    char body[16384];
    char signature[128];
};

static void on_hook(struct evhttp_request *req, void *arg)
{
    struct receiver *r = arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    pthread_mutex_lock(&r->lock);
    r->hits++;
    if (n >= sizeof r->body)
        n = sizeof r->body - 1;
    evbuffer_copyout(in, r->body, n);
    r->body[n] = '\0';
    const char *sig = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Tiergate-Signature");
    snprintf(r->signature, sizeof r->signature, "%s", sig != NULL ? sig : "");
    pthread_mutex_unlock(&r->lock);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void *receiver_main(void *arg)
{
    event_base_dispatch(((struct receiver *)arg)->base);
    return NULL;
}

static void test_job_webhook_signed(void **state)
{
    evthread_use_pthreads();
    struct receiver rcv = {0};
    pthread_mutex_init(&rcv.lock, NULL);
    rcv.base = event_base_new();
    rcv.http = evhttp_new(rcv.base);
    int port = tg_test_free_port();
    assert_int_equal(evhttp_bind_socket(rcv.http, "127.0.0.1", (uint16_t)port), 0);
    evhttp_set_gencb(rcv.http, on_hook, &rcv);
    pthread_create(&rcv.thread, NULL, receiver_main, &rcv);

    char body[512];
    snprintf(body, sizeof body, "{\"type\":\"chat\",\"model\":\"gpt-fake\",\"callback_url\":"
             "\"http://127.0.0.1:%d/hook\",\"messages\":[{\"role\":\"user\",\"content\":\"notify me\"}]}", port);
    struct resp r;
    post("secret", "/v1/jobs", body, NULL, &r);
    assert_int_equal(r.r.status, 202);
    json_t *j = json_loads(r.r.body, 0, NULL);
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    tg_test_response_free(&r.r);

    int64_t end = mono_ms() + 10000;
    int hits = 0;
    while (hits == 0 && mono_ms() < end) {
        usleep(50000);
        pthread_mutex_lock(&rcv.lock);
        hits = rcv.hits;
        pthread_mutex_unlock(&rcv.lock);
    }
    assert_int_equal(hits, 1);
    unsigned char md[32];
    unsigned int n = 0;
    HMAC(EVP_sha256(), "e2e-hook-secret", 15, (unsigned char *)rcv.body, strlen(rcv.body), md, &n);
    char want[80] = "sha256=";
    for (unsigned int i = 0; i < n; i++)
        snprintf(want + 7 + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(rcv.signature, want);
    j = json_loads(rcv.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "id")), id);
    assert_string_equal(json_string_value(json_object_get(j, "status")), "succeeded");
    json_decref(j);

    event_base_loopbreak(rcv.base);
    pthread_join(rcv.thread, NULL);
    evhttp_free(rcv.http);
    event_base_free(rcv.base);
    pthread_mutex_destroy(&rcv.lock);
}

static void test_redis_restart_under_load(void **state)
{
    const char *body = "{\"model\":\"gpt-fake\",\"temperature\":0,\"messages\":[{\"role\":\"user\","
                       "\"content\":\"load while redis restarts\"}]}";
    int port = g_redis.port;
    int served = 0, failed = 0;
    bool killed = false, restarted = false, hit_after = false;
    int64_t t0 = mono_ms();
    while (mono_ms() - t0 < 8000 && !hit_after) {
        int64_t t = mono_ms() - t0;
        if (!killed && t > 500) {
            tg_test_stop(g_redis.pid, SIGKILL, 2000);
            killed = true;
        }
        if (killed && !restarted && t > 1500) {
            char ps[16], log[200];
            snprintf(ps, sizeof ps, "%d", port);
            snprintf(log, sizeof log, "%s/redis.log", g_redis.dir);
            char *argv[] = {"/usr/bin/redis-server", "--port", ps, "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no", "--dir", g_redis.dir, NULL};
            g_redis.pid = tg_test_spawn(argv, NULL, log);
            assert_true(tg_test_wait_port(port, 5000));
            restarted = true;
        }
        struct resp r;
        post("secret", "/v1/chat/completions", body, NULL, &r);
        if (r.r.status == 200)
            served++;
        else
            failed++;
        if (restarted && strcmp(r.cache, "hit") == 0)
            hit_after = true;
        tg_test_response_free(&r.r);
    }
    assert_int_equal(failed, 0);     /* chat is served while Redis is down (cache bypassed) */
    assert_true(served > 0);
    assert_true(restarted);
    assert_true(hit_after);          /* reconnected and caching again, no restart of tiergate */
    assert_int_equal(kill(g_gw_pid, 0), 0);
    /* one log line per outage */
    FILE *f = fopen(g_log, "r");
    assert_non_null(f);
    char line[1024];
    int outage_lines = 0;
    while (fgets(line, sizeof line, f) != NULL)
        if (strstr(line, "unavailable (") != NULL && strstr(line, "redis:") != NULL)
            outage_lines++;
    fclose(f);
    assert_int_equal(outage_lines, 1);

    /* jobs work again on the restarted (empty) Redis: the consumer group is re-created */
    /* (a worker whose connection is still in its reconnect backoff answers 503 meanwhile) */
    struct resp r;
    int64_t until = mono_ms() + 10000;
    for (;;) {
        post("secret", "/v1/jobs", "{\"type\":\"chat\",\"model\":\"gpt-fake\",\"messages\":[{\"role\":"
             "\"user\",\"content\":\"after the restart\"}]}", NULL, &r);
        if (r.r.status != 503 || mono_ms() > until)
            break;
        tg_test_response_free(&r.r);
        usleep(100000);
    }
    assert_int_equal(r.r.status, 202);
    json_t *j = json_loads(r.r.body, 0, NULL);
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    tg_test_response_free(&r.r);
    j = wait_job(id, "succeeded", 10000);
    json_decref(j);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cache_hit_miss_bypass),
        cmocka_unit_test(test_cross_tenant),
        cmocka_unit_test(test_stream_replay_identical),
        cmocka_unit_test(test_partial_stream_not_cached),
        cmocka_unit_test(test_rate_limit_429),
        cmocka_unit_test(test_budget_downgrade),
        cmocka_unit_test(test_jobs_survive_kill9),
        cmocka_unit_test(test_job_webhook_signed),
        cmocka_unit_test(test_redis_restart_under_load),
    };
    if (getenv("TG_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("TG_TEST_FILTER"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
