/* Process and dependency faults, end to end through the real tiergate binary (tests/gateway
 * gw_testenv: the tiny generated model, the scriptable fake upstream as the remote provider), each
 * for streaming and non-streaming requests, with the outcome asserted:
 *   - Redis (a real redis-server) frozen (SIGSTOP), then killed, then restarted: requests keep
 *     being answered with the cache bypassed (x-tiergate-cache: bypass), bounded by the Redis
 *     timeouts; /metrics says tiergate_redis_up 0 (/readyz stays 200: still serving); /v1/jobs
 *     answers a clear 503; after the restart the gateway reconnects by itself and a repeated
 *     request is a cache hit again, and jobs are accepted again;
 *   - a `tiergate engine` worker (local.workers, ipc://) SIGKILLed during a streamed and during a
 *     non-streamed local job: the stream ends with an error event and no [DONE]; the non-stream
 *     request is answered by its configured fallback, or with a clear 503 for a privacy key (no
 *     remote allowed); remote requests keep working; the worker restarted at the same address is
 *     used again;
 *   - SIGTERM with local and remote streams and non-stream requests in flight: new connections
 *     are refused, in-flight work completes ([DONE]) within the drain bound, exit status 0; what
 *     outlasts the drain bound ends with an error event and no [DONE] (stream) or a 503
 *     shutting_down (non-stream), never a dropped connection;
 *   - SIGHUP with an invalid file: the error names file:line, the old configuration keeps serving
 *     (stream and not, local and remote); a valid change is then applied.
 * "Never a double charge": around the Redis and worker faults, /metrics counts every request
 * exactly once and the cost counter grows by exactly what the answered requests cost.
 * The gateway exits 0 with no sanitizer report in its log after every fault.
 * Every observed outcome is printed as a table row ("FAULT | ...", and the whole table at the
 * end). Every wait is bounded; nothing asserts on time beyond hang detection (HANG_MS, far above
 * every configured timeout). TG_TEST_FILTER=<test name> runs one test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gw_testenv.h"
#include "tg_testlib.h"

#define TIERGATE TG_BINARY_DIR "/gateway/tiergate"
/* A request slower than this is a hang (every Redis/engine timeout configured here is < 1 s). */
#define HANG_MS 15000
/* The SIGTERM drain bound: the short streams below finish well inside it, the long one cannot. */
#define DRAIN_MS           10000
#define TG_STR_PROCESS_(x) #x
#define TG_STR_PROCESS(x)  TG_STR_PROCESS_(x)
/* A content delta: the request is mid-generation. */
#define FIRST_TOKEN "\"delta\":{\"content\":\""

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the observed-outcome table ------------------------------------------------------------ */

struct outcome_row {
    char fault[40], mode[12], what[220];
};
static struct outcome_row g_rows[64];
static int g_nrows;

static void outcome_process(const char *fault, const char *mode, const char *fmt, ...)
{
    struct outcome_row *row = &g_rows[g_nrows < 63 ? g_nrows++ : 63];
    snprintf(row->fault, sizeof row->fault, "%s", fault);
    snprintf(row->mode, sizeof row->mode, "%s", mode);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(row->what, sizeof row->what, fmt, ap);
    va_end(ap);
    printf("FAULT | %-28s | %-10s | %s\n", row->fault, row->mode, row->what);
    fflush(stdout);
}

static void print_table_process(void)
{
    printf("\nObserved outcomes (fault x stream):\n| %-28s | %-10s | %s |\n|---|---|---|\n",
           "fault", "request", "what happened");
    for (int i = 0; i < g_nrows; i++)
        printf("| %-28s | %-10s | %s |\n", g_rows[i].fault, g_rows[i].mode, g_rows[i].what);
    fflush(stdout);
}

/* ---- requests ------------------------------------------------------------------------------ */

struct reply_process {
    struct tg_test_response r;
    int rc;
    int64_t ms; /* how long it took */
    char cache[32], tier[32], fallback[32], cost[32], model[64];
};

static void chat_body_process(char *buf, size_t n, const char *model, bool stream, int max_tokens,
                              const char *text)
{
    snprintf(buf, n,
             "{\"model\":\"%s\",\"stream\":%s,\"temperature\":0,\"max_tokens\":%d,"
             "\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
             model, stream ? "true" : "false", max_tokens, text);
}

/* POST path; on_match(user) is called once the body contains match (NULL: never). */
static void post_process(struct gw_env *e, const char *path, const char *body, const char *match,
                         void (*on_match)(void *), void *user, struct reply_process *out)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", e->base, path);
    const char *h[] = {e->auth_header, "Content-Type: application/json", NULL};
    memset(out, 0, sizeof *out);
    int64_t t0 = mono_ms();
    out->rc = tg_test_http_watch("POST", url, h, body, match, on_match, user, &out->r);
    out->ms = mono_ms() - t0;
    tg_test_header(&out->r, "x-tiergate-cache", out->cache, sizeof out->cache);
    tg_test_header(&out->r, "x-tiergate-tier", out->tier, sizeof out->tier);
    tg_test_header(&out->r, "x-tiergate-fallback", out->fallback, sizeof out->fallback);
    tg_test_header(&out->r, "x-tiergate-cost-usd", out->cost, sizeof out->cost);
    tg_test_header(&out->r, "x-tiergate-model", out->model, sizeof out->model);
}

static void chat_process(struct gw_env *e, const char *body, struct reply_process *out)
{
    post_process(e, "/v1/chat/completions", body, NULL, NULL, NULL, out);
}

static bool sse_done(const struct reply_process *p)
{
    return p->r.body != NULL && strstr(p->r.body, "data: [DONE]") != NULL;
}

static bool sse_error(const struct reply_process *p)
{
    return p->r.body != NULL && strstr(p->r.body, "data: {\"error\"") != NULL;
}

/* The error message of an OpenAI-shaped error (JSON body or SSE error event), for the table. */
static const char *error_message_process(const struct reply_process *p, char *buf, size_t n)
{
    const char *m = p->r.body != NULL ? strstr(p->r.body, "\"message\":\"") : NULL;
    if (m == NULL) {
        snprintf(buf, n, "-");
        return buf;
    }
    m += 11;
    size_t len = strcspn(m, "\"");
    snprintf(buf, n, "%.*s", (int)(len < 90 ? len : 90), m);
    return buf;
}

/* A request on its own thread (streams in flight while the test injects the fault). */
struct bg_process {
    struct gw_env *e;
    char body[512];
    pthread_t th;
    atomic_bool started; /* the body reached FIRST_TOKEN */
    struct reply_process out;
};

static void on_started_process(void *user)
{
    atomic_store(&((struct bg_process *)user)->started, true);
}

static void *bg_main_process(void *arg)
{
    struct bg_process *b = arg;
    post_process(b->e, "/v1/chat/completions", b->body, FIRST_TOKEN, on_started_process, b,
                 &b->out);
    return NULL;
}

static void bg_start_process(struct bg_process *b, struct gw_env *e)
{
    b->e = e;
    atomic_store(&b->started, false);
    assert_int_equal(pthread_create(&b->th, NULL, bg_main_process, b), 0);
}

static bool wait_started_process(struct bg_process *b, int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    while (!atomic_load(&b->started) && mono_ms() < end)
        usleep(5000);
    return atomic_load(&b->started);
}

/* ---- /metrics -------------------------------------------------------------------------------- */

/* Sum of the samples of tiergate_<name> whose label set contains filter (NULL: all); -1 when
 * /metrics does not answer. */
static double metric_process(struct gw_env *e, const char *name, const char *filter)
{
    struct tg_test_response r;
    if (gw_get(e, "/metrics", &r) != 0 || r.status != 200) {
        tg_test_response_free(&r);
        return -1;
    }
    char prefix[96];
    int plen = snprintf(prefix, sizeof prefix, "tiergate_%s", name);
    double sum = 0;
    for (char *line = r.body; line != NULL && *line != '\0';) {
        char *eol = strchr(line, '\n');
        if (eol != NULL)
            *eol = '\0';
        if (strncmp(line, prefix, (size_t)plen) == 0 && (line[plen] == '{' || line[plen] == ' ') &&
            (filter == NULL || strstr(line, filter) != NULL)) {
            const char *v = strrchr(line, ' ');
            if (v != NULL)
                sum += strtod(v + 1, NULL);
        }
        line = eol != NULL ? eol + 1 : NULL;
    }
    tg_test_response_free(&r);
    return sum;
}

/* Wait (bounded) until the metric equals want; the last value read. Counters of a finished
 * stream are added right after its last byte, so a read just after the response may lag. */
static double metric_wait_process(struct gw_env *e, const char *name, const char *filter,
                                  double want)
{
    double v = -1;
    for (int64_t end = mono_ms() + 5000; mono_ms() < end; usleep(20000)) {
        v = metric_process(e, name, filter);
        if (fabs(v - want) < 1e-9)
            break;
    }
    return v;
}

/* The request and cost counters at one moment (for "never a double charge"). */
struct charge_process {
    double requests, cost;
};

static struct charge_process charge_now_process(struct gw_env *e)
{
    struct charge_process c = {metric_process(e, "requests_total", "endpoint=\"chat\""),
                               metric_process(e, "cost_usd_total", NULL)};
    return c;
}

/* Exactly n more chat requests counted, and cost grown by want_cost (within 1e-9 USD; want_cost
 * < 0: what a cut local stream costs is not known here, only the count is checked): each request
 * charged once. Waits for the counters to settle first. */
static void assert_charged_process(struct gw_env *e, const struct charge_process *before, int n,
                                   double want_cost, const char *fault)
{
    double req =
        metric_wait_process(e, "requests_total", "endpoint=\"chat\"", before->requests + n);
    double cost = want_cost >= 0
                      ? metric_wait_process(e, "cost_usd_total", NULL, before->cost + want_cost)
                      : metric_process(e, "cost_usd_total", NULL);
    usleep(300000); /* nothing more arrives late */
    struct charge_process after = charge_now_process(e);
    char want[48] = "not checked";
    if (want_cost >= 0)
        snprintf(want, sizeof want, "%.9f", want_cost);
    outcome_process(fault, "metrics",
                    "requests_total +%.0f for %d requests; cost_usd_total +%.9f (want %s)",
                    after.requests - before->requests, n, after.cost - before->cost, want);
    assert_true(fabs(req - (before->requests + n)) < 1e-9);
    assert_true(fabs(after.requests - req) < 1e-9);
    if (want_cost >= 0)
        assert_true(fabs(cost - (before->cost + want_cost)) < 1e-9);
    assert_true(fabs(after.cost - cost) < 1e-9);
}

/* After a process exited: no sanitizer report in its log (ASan/UBSan builds write them there). */
static void assert_clean_log_process(const char *path)
{
    char *log = tg_test_read_log(path);
    const char *bad[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *hit = strstr(log, bad[i]);
        if (hit != NULL)
            fail_msg("%s: %.2000s", path, hit);
    }
    free(log);
}

/* Stop the gateway (SIGTERM), fake upstream too; the gateway must exit 0 with a clean log. */
static void env_stop_process(struct gw_env *e)
{
    int status = e->gw_pid > 0 ? tg_test_stop(e->gw_pid, SIGTERM, 30000) : 0;
    e->gw_pid = 0;
    gw_env_stop(e);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_clean_log_process(e->log_path);
}

/* ---- 1. Redis killed and restarted ----------------------------------------------------------- */

/* Repeat body until it is a cache hit (the store after a miss is asynchronous); the attempts. */
static int until_hit_process(struct gw_env *e, const char *body, bool stream)
{
    int64_t end = mono_ms() + 20000; /* the reconnect backoff may hold the first few back */
    for (int i = 1; mono_ms() < end; i++) {
        struct reply_process p;
        chat_process(e, body, &p);
        assert_int_equal(p.r.status, 200);
        if (stream)
            assert_true(sse_done(&p));
        bool hit = strcmp(p.cache, "hit") == 0;
        tg_test_response_free(&p.r);
        if (hit)
            return i;
        usleep(50000);
    }
    return -1;
}

static void test_redis_killed_and_restarted(void **state)
{
    (void)state;
    struct tg_test_redis rd;
    assert_true(tg_test_redis_start(&rd));
    char redis_cfg[256];
    snprintf(redis_cfg, sizeof redis_cfg,
             "  url: redis://127.0.0.1:%d/0\n  connect_timeout_ms: 300\n  command_timeout_ms: 500\n"
             "  limits_fail: open\n",
             rd.port);
    struct gw_env e;
    struct gw_env_opts o = {.redis = redis_cfg,
                            .cache = "  enabled: true\n  ttl_s: 300\n",
                            .extra_local = "  slots: 2\n  context: 4096\n  threads: 1\n"};
    assert_true(gw_env_start_opts(&e, &o));
    printf("gateway log: %s\n", e.log_path);
    assert_true(metric_wait_process(&e, "redis_up", NULL, 1) == 1);

    char body[2][512];
    chat_body_process(body[0], sizeof body[0], "gpt-fake", false, 16, "redis fault probe");
    chat_body_process(body[1], sizeof body[1], "gpt-fake", true, 16, "redis fault probe");
    /* Redis up: a miss, then a hit, for both; the cost of one uncached answer. */
    struct reply_process p;
    struct charge_process c0 = charge_now_process(&e);
    chat_process(&e, body[0], &p);
    assert_int_equal(p.r.status, 200);
    assert_string_equal(p.cache, "miss");
    double unit_cost = strtod(p.cost, NULL);
    assert_true(unit_cost > 0);
    tg_test_response_free(&p.r);
    assert_charged_process(&e, &c0, 1, unit_cost, "redis up (baseline)");
    for (int s = 0; s < 2; s++)
        assert_true(until_hit_process(&e, body[s], s == 1) > 0);

    /* Redis frozen (SIGSTOP: connections open, no replies): only the command timeout bounds a
     * request now. Answered, bypassing the cache, charged once. */
    const int per_mode = 3;
    assert_int_equal(kill(rd.pid, SIGSTOP), 0);
    struct charge_process cf = charge_now_process(&e);
    for (int s = 0; s < 2; s++) {
        int64_t worst = 0;
        int bypass = 0;
        for (int i = 0; i < per_mode; i++) {
            chat_process(&e, body[s], &p);
            assert_int_equal(p.rc, 0);
            assert_int_equal(p.r.status, 200);
            assert_string_not_equal(p.cache, "hit");
            bypass += strcmp(p.cache, "bypass") == 0;
            if (s == 1) {
                assert_true(sse_done(&p));
                assert_false(sse_error(&p));
            }
            assert_true(p.ms < HANG_MS);
            worst = p.ms > worst ? p.ms : worst;
            tg_test_response_free(&p.r);
        }
        outcome_process("redis frozen (SIGSTOP)", s ? "stream" : "non-stream",
                        "%d/%d answered 200 (%d with x-tiergate-cache: bypass)%s; slowest %lld ms "
                        "(command timeout 500 ms)",
                        per_mode, per_mode, bypass, s ? ", [DONE]" : "", (long long)worst);
        assert_int_equal(bypass, per_mode);
    }
    assert_charged_process(&e, &cf, 2 * per_mode, 2 * per_mode * unit_cost,
                           "redis frozen (SIGSTOP)");
    post_process(&e, "/v1/jobs",
                 "{\"type\":\"chat\",\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\","
                 "\"content\":\"job while redis is frozen\"}]}",
                 NULL, NULL, NULL, &p);
    char msg[128];
    outcome_process("redis frozen (SIGSTOP)", "jobs", "POST /v1/jobs -> %ld \"%s\" in %lld ms",
                    p.r.status, error_message_process(&p, msg, sizeof msg), (long long)p.ms);
    assert_int_equal(p.r.status, 503);
    assert_true(p.ms < HANG_MS);
    tg_test_response_free(&p.r);
    assert_int_equal(kill(rd.pid, SIGCONT), 0);

    /* Redis killed. */
    assert_true(tg_test_stop(rd.pid, SIGKILL, 5000) != -1);
    struct charge_process c1 = charge_now_process(&e);
    for (int s = 0; s < 2; s++) {
        int64_t worst = 0;
        for (int i = 0; i < per_mode; i++) {
            chat_process(&e, body[s], &p);
            assert_int_equal(p.rc, 0);
            assert_int_equal(p.r.status, 200);
            assert_string_equal(p.cache, "bypass"); /* answered without the cache */
            assert_string_equal(p.tier, "remote");
            if (s == 1) {
                assert_true(sse_done(&p));
                assert_false(sse_error(&p));
            }
            assert_true(p.ms < HANG_MS);
            worst = p.ms > worst ? p.ms : worst;
            tg_test_response_free(&p.r);
        }
        outcome_process(
            "redis killed", s ? "stream" : "non-stream",
            "%d/%d answered 200, x-tiergate-cache: bypass, tier remote%s; slowest %lld ms "
            "(redis timeouts 300/500 ms)",
            per_mode, per_mode, s ? ", [DONE]" : "", (long long)worst);
    }
    /* every one of them counted once and charged as uncached */
    assert_charged_process(&e, &c1, 2 * per_mode, 2 * per_mode * unit_cost, "redis killed");
    double up = metric_wait_process(&e, "redis_up", NULL, 0);
    double outages = metric_process(&e, "redis_outages_total", NULL);
    struct tg_test_response rz;
    assert_int_equal(gw_get(&e, "/readyz", &rz), 0);
    outcome_process("redis killed", "probes",
                    "tiergate_redis_up %.0f, redis_outages_total %.0f; "
                    "/readyz %ld (still serving: readiness is the model, not Redis)",
                    up, outages, rz.status);
    assert_true(up == 0);
    assert_true(outages >= 1);
    assert_int_equal(rz.status, 200);
    tg_test_response_free(&rz);
    /* async jobs need Redis: a clear 503, not a hang */
    post_process(&e, "/v1/jobs",
                 "{\"type\":\"chat\",\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\","
                 "\"content\":\"job while redis is down\"}]}",
                 NULL, NULL, NULL, &p);
    outcome_process("redis killed", "jobs", "POST /v1/jobs -> %ld \"%s\" in %lld ms", p.r.status,
                    error_message_process(&p, msg, sizeof msg), (long long)p.ms);
    assert_int_equal(p.r.status, 503);
    assert_non_null(strstr(p.r.body, "\"error\""));
    assert_true(p.ms < HANG_MS);
    tg_test_response_free(&p.r);

    /* Redis restarted (empty): the gateway reconnects by itself and caches again. */
    assert_true(tg_test_redis_restart(&rd));
    for (int s = 0; s < 2; s++) {
        int n = until_hit_process(&e, body[s], s == 1);
        outcome_process(
            "redis restarted", s ? "stream" : "non-stream",
            "reconnected without a gateway restart; cache hit again after %d request(s)", n);
        assert_true(n > 1); /* the restarted Redis is empty: a miss first */
    }
    assert_true(metric_wait_process(&e, "redis_up", NULL, 1) == 1);
    /* jobs accepted again (a connection still in its reconnect backoff may answer 503 meanwhile) */
    int64_t until = mono_ms() + 10000;
    for (;;) {
        post_process(&e, "/v1/jobs",
                     "{\"type\":\"chat\",\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\","
                     "\"content\":\"job after the restart\"}]}",
                     NULL, NULL, NULL, &p);
        if (p.r.status != 503 || mono_ms() > until)
            break;
        tg_test_response_free(&p.r);
        usleep(100000);
    }
    outcome_process("redis restarted", "jobs", "POST /v1/jobs -> %ld", p.r.status);
    assert_int_equal(p.r.status, 202);
    tg_test_response_free(&p.r);
    assert_int_equal(kill(e.gw_pid, 0), 0);
    env_stop_process(&e);
    tg_test_redis_stop(&rd);
}

/* ---- 2. engine worker killed ----------------------------------------------------------------- */

static pid_t spawn_worker_process(const char *url, const char *log)
{
    char *argv[] = {
        TIERGATE,  "engine", "--listen", (char *)url, "--model",   (char *)TG_TINY_MODEL,
        "--slots", "2",      "--ctx",    "8192",      "--threads", "1",
        NULL};
    pid_t pid = tg_test_spawn(argv, NULL, log);
    assert_true(pid > 0);
    return pid;
}

static void kill_worker_process(void *user)
{
    kill(*(pid_t *)user, SIGKILL);
}

/* A local request answered by the worker (tier local), retried while it is (re)connecting. */
static bool local_served_process(struct gw_env *e, int timeout_ms)
{
    char body[512];
    chat_body_process(body, sizeof body, "phi-3.5-mini", false, 4, "hi");
    for (int64_t end = mono_ms() + timeout_ms; mono_ms() < end; usleep(100000)) {
        struct reply_process p;
        chat_process(e, body, &p);
        bool ok = p.r.status == 200 && strcmp(p.tier, "local") == 0;
        tg_test_response_free(&p.r);
        if (ok)
            return true;
    }
    return false;
}

static void test_engine_worker_killed(void **state)
{
    (void)state;
    char dir[] = "/tmp/tg-faults-worker-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char url[160], wlog[200], local[256];
    snprintf(url, sizeof url, "ipc://%s/w0.sock", dir);
    snprintf(wlog, sizeof wlog, "%s/w0.log", dir);
    snprintf(local, sizeof local, "  workers: [%s]\n", url);
    pid_t w0 = spawn_worker_process(url, wlog);
    struct gw_env e;
    struct gw_env_opts o = {.extra_local = local};
    assert_true(gw_env_start_opts(&e, &o));
    printf("gateway log: %s\n", e.log_path);
    assert_true(local_served_process(&e, 60000));

    /* SIGKILL mid-stream (after the first token): an error event, never [DONE]. */
    char body[512];
    chat_body_process(body, sizeof body, "phi-3.5-mini", true, 7000, "a long story");
    struct charge_process c0 = charge_now_process(&e);
    struct reply_process p;
    post_process(&e, "/v1/chat/completions", body, FIRST_TOKEN, kill_worker_process, &w0, &p);
    assert_int_equal(waitpid(w0, NULL, 0), w0);
    char msg[128];
    outcome_process("engine worker SIGKILL", "stream",
                    "HTTP %ld, tier %s; error event \"%s\"; [DONE] %s; %lld ms", p.r.status, p.tier,
                    error_message_process(&p, msg, sizeof msg), sse_done(&p) ? "SENT" : "absent",
                    (long long)p.ms);
    assert_int_equal(p.r.status, 200);
    assert_string_equal(p.tier, "local");
    assert_true(sse_error(&p));
    assert_false(sse_done(&p));
    assert_true(p.ms < HANG_MS);
    tg_test_response_free(&p.r);
    assert_charged_process(&e, &c0, 1, -1, "engine worker SIGKILL (stream)");

    /* Others keep working with the worker gone: remote as before; local falls back to remote. */
    chat_body_process(body, sizeof body, "gpt-fake", false, 8, "remote while the worker is down");
    chat_process(&e, body, &p);
    outcome_process("engine worker down", "remote", "gpt-fake -> %ld (tier %s)", p.r.status,
                    p.tier);
    assert_int_equal(p.r.status, 200);
    tg_test_response_free(&p.r);
    chat_body_process(body, sizeof body, "phi-3.5-mini", false, 8,
                      "local while the worker is down");
    chat_process(&e, body, &p);
    outcome_process("engine worker down", "local",
                    "phi-3.5-mini -> %ld, tier %s, model %s, fallback %s", p.r.status, p.tier,
                    p.model, p.fallback[0] ? p.fallback : "-");
    assert_int_equal(p.r.status, 200);
    assert_string_equal(p.tier, "remote");
    assert_string_equal(p.model, "gpt-fake");
    tg_test_response_free(&p.r);

    /* The worker restarted at the same address is used again. */
    w0 = spawn_worker_process(url, wlog);
    bool back = local_served_process(&e, 60000);
    outcome_process("engine worker restarted", "non-stream",
                    "local tier served by the restarted worker: %s", back ? "yes" : "NO");
    assert_true(back);

    /* SIGKILL during a non-streamed local job (the engine reports a busy slot): the request is
     * answered by its fallback (phi-3.5-mini -> gpt-fake), charged once, at the fallback's price.
     */
    struct bg_process *bg = calloc(1, sizeof *bg);
    assert_non_null(bg);
    chat_body_process(bg->body, sizeof bg->body, "phi-3.5-mini", false, 7000, "a long story");
    struct charge_process c1 = charge_now_process(&e);
    bg_start_process(bg, &e);
    bool busy = false;
    for (int64_t end = mono_ms() + 30000; !busy && mono_ms() < end; usleep(10000))
        busy = metric_process(&e, "engine_slots_busy", NULL) >= 1;
    assert_true(busy);
    kill(w0, SIGKILL);
    assert_int_equal(waitpid(w0, NULL, 0), w0);
    assert_int_equal(pthread_join(bg->th, NULL), 0);
    p = bg->out;
    outcome_process("engine worker SIGKILL", "non-stream",
                    "HTTP %ld, tier %s, model %s, fallback %s, cost %s; %lld ms", p.r.status,
                    p.tier, p.model, p.fallback[0] ? p.fallback : "-", p.cost, (long long)p.ms);
    assert_int_equal(p.r.status, 200);
    assert_string_equal(p.tier, "remote");
    assert_string_equal(p.model, "gpt-fake");
    assert_true(p.ms < HANG_MS);
    assert_charged_process(&e, &c1, 1, strtod(p.cost, NULL), "engine worker SIGKILL (non-stream)");
    tg_test_response_free(&p.r);

    /* The same for a privacy key (nothing may leave: no remote fallback): a clear error. */
    w0 = spawn_worker_process(url, wlog);
    assert_true(local_served_process(&e, 60000));
    struct gw_env priv = e;
    priv.auth_header = "Authorization: Bearer private-secret";
    memset(bg, 0, sizeof *bg);
    chat_body_process(bg->body, sizeof bg->body, "phi-3.5-mini", false, 7000,
                      "a long private story");
    struct charge_process c2 = charge_now_process(&e);
    bg_start_process(bg, &priv);
    busy = false;
    for (int64_t end = mono_ms() + 30000; !busy && mono_ms() < end; usleep(10000))
        busy = metric_process(&e, "engine_slots_busy", NULL) >= 1;
    assert_true(busy);
    kill(w0, SIGKILL);
    assert_int_equal(waitpid(w0, NULL, 0), w0);
    assert_int_equal(pthread_join(bg->th, NULL), 0);
    p = bg->out;
    outcome_process("engine worker SIGKILL", "non-stream",
                    "privacy key (local only): HTTP %ld \"%s\", fallback %s; %lld ms", p.r.status,
                    error_message_process(&p, msg, sizeof msg), p.fallback[0] ? p.fallback : "-",
                    (long long)p.ms);
    assert_true(p.r.status >= 500 && p.r.status <= 504);
    assert_non_null(strstr(p.r.body, "\"error\""));
    assert_string_equal(p.fallback, "");
    assert_true(p.ms < HANG_MS);
    assert_charged_process(&e, &c2, 1, 0, "engine worker SIGKILL (privacy)"); /* an error is free */
    tg_test_response_free(&p.r);
    free(bg);

    assert_int_equal(kill(e.gw_pid, 0), 0);
    env_stop_process(&e);
    assert_clean_log_process(wlog);
    char path[256];
    const char *files[] = {"w0.sock", "w0.log"};
    for (size_t i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* ---- 3. SIGTERM during streams --------------------------------------------------------------- */

/* Queue one script on the fake upstream for the next request it gets. */
static void fake_script_process(struct gw_env *e, const char *script)
{
    char url[128];
    snprintf(url, sizeof url, "%s/_script", e->fake_base);
    struct tg_test_response r;
    assert_int_equal(tg_test_http("POST", url, NULL, script, &r), 0);
    assert_int_equal(r.status / 100, 2);
    tg_test_response_free(&r);
}

static void test_sigterm_during_streams(void **state)
{
    (void)state;
    struct gw_env e;
    struct gw_env_opts o = {.drain_timeout_ms = DRAIN_MS,
                            .extra_local = "  slots: 2\n  context: 4096\n  threads: 1\n"};
    assert_true(gw_env_start_opts(&e, &o));
    printf("gateway log: %s\n", e.log_path);
    enum { R1, R2, RLONG, NS, NSLONG, L1, L2, N_BG };
    const char *name[N_BG] = {"remote stream",
                              "remote stream",
                              "remote stream > drain",
                              "remote non-stream",
                              "remote non-stream > drain",
                              "local stream",
                              "local stream"};
    /* The remote streams trickle for ~5 s, the long one for ~40 s, the non-stream ones answer
     * after 4 s and 30 s; the local streams are 600 tokens (~1 s unloaded, a few under a
     * sanitizer: inside the drain bound; at 300 tokens one could end, under CI load, before the
     * other had sent its first token and the signal came, leaving 6 in flight). Each
     * remote request is started once the previous one reached the fake, so each gets its own
     * script. */
    const char *script[N_BG] = {"chunk_delay_ms=600",
                                "chunk_delay_ms=600",
                                "chunk_delay_ms=5000",
                                "delay_ms=4000",
                                "delay_ms=30000",
                                NULL,
                                NULL};
    struct bg_process *bg = calloc(N_BG, sizeof *bg);
    assert_non_null(bg);
    for (int i = 0; i < N_BG; i++) {
        if (i >= L1)
            chat_body_process(bg[i].body, sizeof bg[i].body, "phi-3.5-mini", true, 600, "drain me");
        else
            chat_body_process(bg[i].body, sizeof bg[i].body, "gpt-fake", i != NS && i != NSLONG, 64,
                              "drain me");
    }
    int seen = gw_fake_received(&e);
    for (int i = R1; i <= NSLONG; i++) {
        fake_script_process(&e, script[i]);
        bg_start_process(&bg[i], &e);
        int64_t end = mono_ms() + HANG_MS;
        while (gw_fake_received(&e) == seen && mono_ms() < end)
            usleep(5000);
        assert_int_equal(gw_fake_received(&e), ++seen);
    }
    for (int i = L1; i <= L2; i++)
        bg_start_process(&bg[i], &e);
    for (int i = L1; i <= L2; i++)
        assert_true(wait_started_process(&bg[i], HANG_MS));

    int64_t t_term = mono_ms();
    assert_int_equal(kill(e.gw_pid, SIGTERM), 0);
    assert_true(gw_log_wait(&e, "SIGTERM received", HANG_MS));
    /* New connections are refused (or answered 503 while the listener closes). */
    struct tg_test_response r;
    char url[128];
    snprintf(url, sizeof url, "%s/readyz", e.base);
    int rc = -1;
    long st = 0;
    for (int i = 0; i < 50; i++) {
        rc = tg_test_http("GET", url, NULL, NULL, &r);
        st = r.status;
        tg_test_response_free(&r);
        if (rc != 0 || st == 503)
            break;
        usleep(20000);
    }
    outcome_process("SIGTERM", "new conn", "%s",
                    rc != 0     ? "connection refused"
                    : st == 503 ? "503 draining"
                                : "ACCEPTED");
    assert_true(rc != 0 || st == 503);

    for (int i = 0; i < N_BG; i++)
        assert_int_equal(pthread_join(bg[i].th, NULL), 0);
    int status = tg_test_stop(e.gw_pid, 0, HANG_MS);
    int64_t t_exit = mono_ms() - t_term;
    e.gw_pid = 0;
    /* all six were in flight when the signal came */
    bool all_inflight = gw_log_wait(&e, "draining 7 in-flight request(s)", 0);
    outcome_process("SIGTERM", "in flight", "%s",
                    all_inflight
                        ? "7 in flight at SIGTERM: 2 local + 2 remote streams, 1 long stream, "
                          "1 non-stream, 1 long non-stream"
                        : "NOT all 7 in flight at SIGTERM");
    for (int i = 0; i < N_BG; i++) {
        struct reply_process *p = &bg[i].out;
        char msg[128];
        bool ns = i == NS || i == NSLONG;
        if (ns)
            outcome_process("SIGTERM (drain " TG_STR_PROCESS(DRAIN_MS) " ms)", "non-stream",
                            "%s: HTTP %ld%s%s, ended %lld ms after its start", name[i], p->r.status,
                            p->r.status != 200 ? " " : "",
                            p->r.status != 200 ? error_message_process(p, msg, sizeof msg) : "",
                            (long long)p->ms);
        else
            outcome_process(
                "SIGTERM (drain " TG_STR_PROCESS(DRAIN_MS) " ms)", "stream",
                "%s: HTTP %ld, [DONE] %s, error event %s%s, ended %lld ms after its start", name[i],
                p->r.status, sse_done(p) ? "yes" : "no", sse_error(p) ? "yes: " : "no",
                sse_error(p) ? error_message_process(p, msg, sizeof msg) : "", (long long)p->ms);
        assert_int_equal(p->rc, 0); /* a complete HTTP response, not a dropped connection */
        if (i == NSLONG) { /* cut by the deadline: a clear error, not a dropped connection */
            assert_int_equal(p->r.status, 503);
            assert_non_null(strstr(p->r.body, "\"shutting_down\""));
            tg_test_response_free(&p->r);
            continue;
        }
        assert_int_equal(p->r.status, 200);
        if (i == NS) {
            assert_non_null(strstr(p->r.body, "\"choices\""));
        } else if (i == RLONG) {
            assert_true(sse_error(p));
            assert_false(sse_done(p));
        } else {
            assert_true(sse_done(p));
            assert_false(sse_error(p));
        }
        tg_test_response_free(&p->r);
    }
    outcome_process("SIGTERM", "process", "exit %s %d, %lld ms after SIGTERM (drain bound %d ms)",
                    WIFEXITED(status) ? "status" : "signal",
                    WIFEXITED(status)     ? WEXITSTATUS(status)
                    : WIFSIGNALED(status) ? WTERMSIG(status)
                                          : -1,
                    (long long)t_exit, DRAIN_MS);
    assert_true(all_inflight);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    free(bg);
    gw_env_stop(&e);
    assert_clean_log_process(e.log_path);
}

/* ---- 4. SIGHUP with an invalid configuration --------------------------------------------------
 */

/* The config file with lines inserted after the first line that equals after (each ends "\n"). */
static void rewrite_config_process(struct gw_env *e, const char *orig, const char *after,
                                   const char *insert, const char *after2, const char *insert2)
{
    FILE *f = fopen(e->cfg_path, "w");
    assert_non_null(f);
    for (const char *line = orig; *line != '\0';) {
        const char *eol = strchr(line, '\n');
        size_t len = eol != NULL ? (size_t)(eol - line + 1) : strlen(line);
        fwrite(line, 1, len, f);
        if (after != NULL && len == strlen(after) && strncmp(line, after, len) == 0) {
            fputs(insert, f);
            after = NULL;
        }
        if (after2 != NULL && len == strlen(after2) && strncmp(line, after2, len) == 0) {
            fputs(insert2, f);
            after2 = NULL;
        }
        line += len;
    }
    assert_int_equal(fclose(f), 0);
    assert_null(after);
    assert_null(after2);
}

/* Stream and non-stream, local and remote: all answered completely. */
static void serving_process(struct gw_env *e, const char *fault, const char *model)
{
    for (int s = 0; s < 2; s++) {
        char body[512];
        chat_body_process(body, sizeof body, model, s == 1, 8, "after SIGHUP");
        struct reply_process p;
        chat_process(e, body, &p);
        outcome_process(fault, s ? "stream" : "non-stream", "%s -> HTTP %ld, tier %s%s", model,
                        p.r.status, p.tier, s ? (sse_done(&p) ? ", [DONE]" : ", NO [DONE]") : "");
        assert_int_equal(p.r.status, 200);
        if (s == 1) {
            assert_true(sse_done(&p));
            assert_false(sse_error(&p));
        }
        tg_test_response_free(&p.r);
    }
}

static void test_sighup_invalid_config(void **state)
{
    (void)state;
    struct gw_env e;
    assert_true(gw_env_start(&e, NULL, "  slots: 2\n  context: 4096\n  threads: 1\n", NULL));
    printf("gateway log: %s\n", e.log_path);
    char *orig = tg_test_slurp(e.cfg_path, NULL);
    assert_non_null(orig);
    const char *new_model =
        "  - {name: gpt-new, tier: remote, provider: fake, upstream_model: gpt-fake}\n";
    char body[512];
    chat_body_process(body, sizeof body, "gpt-new", false, 8, "new model");
    struct reply_process p;

    /* Invalid: a new model plus a typo'd key on line 2. Nothing of it may be applied. */
    rewrite_config_process(&e, orig, "server:\n", "  listen_adress: 127.0.0.1:1\n", "models:\n",
                           new_model);
    assert_int_equal(kill(e.gw_pid, SIGHUP), 0);
    char want[512];
    snprintf(want, sizeof want, "%s:2: unknown key 'listen_adress' in server", e.cfg_path);
    bool logged = gw_log_wait(&e, want, HANG_MS);
    outcome_process("SIGHUP invalid config", "log", "%s", logged ? want : "file:line NOT logged");
    assert_true(logged);
    assert_true(gw_log_wait(&e, "keeping the current configuration", HANG_MS));
    serving_process(&e, "SIGHUP invalid config", "phi-3.5-mini");
    serving_process(&e, "SIGHUP invalid config", "gpt-fake");
    chat_process(&e, body, &p);
    outcome_process("SIGHUP invalid config", "non-stream",
                    "model only in the rejected file -> HTTP %ld (old config kept)", p.r.status);
    assert_int_equal(p.r.status, 404);
    tg_test_response_free(&p.r);

    /* Valid change: the new model is served. */
    rewrite_config_process(&e, orig, "models:\n", new_model, NULL, NULL);
    assert_int_equal(kill(e.gw_pid, SIGHUP), 0);
    assert_true(gw_log_wait(&e, "SIGHUP: configuration reloaded", HANG_MS));
    serving_process(&e, "SIGHUP valid change", "gpt-new");
    free(orig);
    env_stop_process(&e);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redis_killed_and_restarted),
        cmocka_unit_test(test_engine_worker_killed),
        cmocka_unit_test(test_sigterm_during_streams),
        cmocka_unit_test(test_sighup_invalid_config),
    };
    if (getenv("TG_TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("TG_TEST_FILTER"));
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    print_table_process();
    curl_global_cleanup();
    return rc;
}
