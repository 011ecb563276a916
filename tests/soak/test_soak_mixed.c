/* Mixed soak: the real tiergate with the tiny engine (1 thread), the fake upstream as the remote
 * provider and a real redis-server for the response cache, driven at a fixed rate by a libcurl
 * multi loop in this process. The request mix, in turn (one per 1/rate seconds):
 *   local chat (temperature > 0: never cached), remote chat, cached remote question (one of 4,
 *   temperature 0: hits after the first), local stream, remote stream, remote chat, cached local
 *   question (one of 4), GET /metrics.
 * Every answer is checked (200; non-stream: an OpenAI chat object from the expected tier; stream:
 * SSE ending in [DONE] with no error event; metrics: Prometheus text); anything else is an error.
 * Nothing is injected: the run must have zero errors.
 *
 * tiergate's RSS and descriptors (/proc) are sampled every TG_SOAK_SAMPLE_SECONDS (default 5)
 * into a CSV (TG_SOAK_CSV, default ./soak-mixed.csv). At the end of the warm-up (a quarter of
 * the run, 15..60 s) and at the end, the load pauses until nothing is in flight and the process
 * is measured quiet; then:
 *   - RSS growth from warm-up to end < 5 % (skipped in a TG_SANITIZE build: ASan's quarantine
 *     and shadow memory grow by design, so the figure says nothing about leaks there);
 *   - descriptors other than pooled connections (clients' keep-alive sockets, upstream pool) do
 *     not grow at all, and the pools stay within their bounds (this driver keeps at most
 *     MAX_INFLIGHT connections; libcurl in tiergate caches at most 4 x its concurrent transfers).
 *
 * Finally tiergate gets SIGTERM and must exit 0 (under ASan: with no leak report).
 *
 * Duration TG_SOAK_SECONDS (default 60, 30 under TG_SANITIZE); rate TG_SOAK_RATE req/s
 * (default 20). The 10-minute run: `cmake --build build --target soak` (tests/cmake/soak.cmake). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "soak_util.h"
#include "tg_testlib.h"

#ifdef TG_SOAK_SANITIZE
#define DEFAULT_SECONDS 30
#else
#define DEFAULT_SECONDS 60
#endif
#define MAX_INFLIGHT 16
#define MAX_ERRORS_SHOWN 10

enum kind { K_LOCAL, K_REMOTE, K_CACHED_REMOTE, K_LOCAL_STREAM, K_REMOTE_STREAM, K_REMOTE2,
            K_CACHED_LOCAL, K_METRICS, K_COUNT };
static const char *const kind_name[K_COUNT] = {"local", "remote", "cache-remote", "local-stream",
                                               "remote-stream", "remote", "cache-local",
                                               "metrics"};

static struct tg_test_redis g_redis;
static struct soak_gw g_gw;

struct buf {
    char *p;
    size_t n;
};

struct req {
    CURL *h;
    enum kind kind;
    struct curl_slist *hdrs;
    char *body;
    struct buf resp, head;
};

struct stats {
    long started, done, errors, behind;
    long by_kind[K_COUNT];
    long cache_hits, cache_repeats;
};

static size_t on_data(char *p, size_t sz, size_t nm, void *arg)
{
    struct buf *b = arg;
    size_t n = sz * nm;
    char *q = realloc(b->p, b->n + n + 1);
    if (q == NULL)
        return 0;
    memcpy(q + b->n, p, n);
    b->p = q;
    b->n += n;
    b->p[b->n] = '\0';
    return n;
}

static bool header_value(const struct buf *head, const char *name, char *out, size_t outlen)
{
    size_t nl = strlen(name);
    for (const char *l = head->p; l != NULL && *l != '\0';) {
        if (strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
            const char *v = l + nl + 1;
            while (*v == ' ')
                v++;
            size_t k = strcspn(v, "\r\n");
            if (k >= outlen)
                k = outlen - 1;
            memcpy(out, v, k);
            out[k] = '\0';
            return true;
        }
        const char *e = strchr(l, '\n');
        l = e != NULL ? e + 1 : NULL;
    }
    return false;
}

static void start_request(CURLM *m, struct stats *st, long seq)
{
    struct req *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->kind = (enum kind)(seq % K_COUNT);
    r->h = curl_easy_init();
    assert_non_null(r->h);
    char url[128];
    const char *path = r->kind == K_METRICS ? "/metrics" : "/v1/chat/completions";
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", g_gw.port, path);
    r->hdrs = curl_slist_append(NULL, "Authorization: Bearer secret");
    if (r->kind != K_METRICS) {
        r->hdrs = curl_slist_append(r->hdrs, "Content-Type: application/json");
        /* Prompts vary over a bounded set (the engine's prefix cache churns, label sets stay
         * bounded); the cached questions repeat from a set of 4. */
        const char *model = "gpt-fake";
        const char *extra = "\"temperature\":0.8";
        char prompt[128];
        long v = seq / K_COUNT;
        switch (r->kind) {
        case K_LOCAL:
        case K_LOCAL_STREAM:
            model = "phi-3.5-mini";
            snprintf(prompt, sizeof prompt, "Soak %ld: write one word about item %ld.", v % 32,
                     v % 7);
            break;
        case K_CACHED_REMOTE:
        case K_CACHED_LOCAL:
            model = r->kind == K_CACHED_LOCAL ? "phi-3.5-mini" : "gpt-fake";
            extra = "\"temperature\":0";
            snprintf(prompt, sizeof prompt, "Cached soak question number %ld.", v % 4);
            st->cache_repeats += v >= 4; /* every occurrence after a key's first */
            break;
        default:
            snprintf(prompt, sizeof prompt, "Remote soak request %ld.", seq);
            break;
        }
        bool stream = r->kind == K_LOCAL_STREAM || r->kind == K_REMOTE_STREAM;
        size_t cap = 512;
        r->body = malloc(cap);
        assert_non_null(r->body);
        snprintf(r->body, cap,
                 "{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],"
                 "\"max_tokens\":8,%s%s}",
                 model, prompt, extra, stream ? ",\"stream\":true" : "");
        curl_easy_setopt(r->h, CURLOPT_POSTFIELDS, r->body);
    }
    curl_easy_setopt(r->h, CURLOPT_URL, url);
    curl_easy_setopt(r->h, CURLOPT_HTTPHEADER, r->hdrs);
    curl_easy_setopt(r->h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(r->h, CURLOPT_WRITEDATA, &r->resp);
    curl_easy_setopt(r->h, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(r->h, CURLOPT_HEADERDATA, &r->head);
    curl_easy_setopt(r->h, CURLOPT_TIMEOUT, 60L); /* a stuck request is an error, not a hang */
    curl_easy_setopt(r->h, CURLOPT_PRIVATE, r);
    curl_easy_setopt(r->h, CURLOPT_NOSIGNAL, 1L);
    assert_int_equal(curl_multi_add_handle(m, r->h), CURLM_OK);
    st->started++;
}

/* NULL when the answer is right; else what is wrong (static text). */
static const char *check_answer(struct req *r, CURLcode rc, long status, struct stats *st)
{
    if (rc != CURLE_OK)
        return curl_easy_strerror(rc);
    if (status != 200)
        return "HTTP status is not 200";
    const char *body = r->resp.p != NULL ? r->resp.p : "";
    if (r->kind == K_METRICS)
        return strstr(body, "# TYPE tiergate_") != NULL ? NULL : "metrics: no tiergate_ family";
    char tier[32] = "", cache[32] = "", model[64] = "";
    header_value(&r->head, "x-tiergate-tier", tier, sizeof tier);
    header_value(&r->head, "x-tiergate-cache", cache, sizeof cache);
    header_value(&r->head, "x-tiergate-model", model, sizeof model);
    bool hit = strcmp(cache, "hit") == 0;
    bool local = r->kind == K_LOCAL || r->kind == K_LOCAL_STREAM || r->kind == K_CACHED_LOCAL;
    bool cacheable = r->kind == K_CACHED_LOCAL || r->kind == K_CACHED_REMOTE;
    if (hit && !cacheable)
        return "a temperature > 0 request was answered from the cache";
    if (hit)
        st->cache_hits++;
    if (strcmp(tier, hit ? "cache" : local ? "local" : "remote") != 0)
        return "wrong or missing x-tiergate-tier";
    const char *want_model = local ? "phi-3.5-mini" : "gpt-fake";
    if (strncmp(model, want_model, strlen(want_model)) != 0)
        return "wrong or missing x-tiergate-model";
    if (r->kind == K_LOCAL_STREAM || r->kind == K_REMOTE_STREAM) {
        if (strstr(body, "\"error\"") != NULL)
            return "stream carries an error event";
        size_t n = r->resp.n;
        while (n > 0 && (body[n - 1] == '\n' || body[n - 1] == '\r'))
            n--;
        if (n < 12 || strncmp(body + n - 12, "data: [DONE]", 12) != 0)
            return "stream does not end with data: [DONE]";
        if (strstr(body, "chat.completion.chunk") == NULL)
            return "stream has no chunk";
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(body, r->resp.n, 0, &je);
    const char *err = NULL;
    json_t *msg = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
    if (j == NULL)
        err = "body is not JSON";
    else if (!json_is_string(json_object_get(msg, "content")))
        err = "no choices[0].message.content";
    else if (!json_is_integer(json_object_get(json_object_get(j, "usage"), "total_tokens")))
        err = "no usage.total_tokens";
    json_decref(j);
    return err;
}

static void finish(CURLM *m, struct stats *st)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct req *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        long status = 0;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
        const char *err = check_answer(r, msg->data.result, status, st);
        st->done++;
        st->by_kind[r->kind]++;
        if (err != NULL) {
            if (st->errors < MAX_ERRORS_SHOWN)
                fprintf(stderr, "soak-mixed: error (%s): %s; status %ld; body: %.300s\n",
                        kind_name[r->kind], err, status, r->resp.p != NULL ? r->resp.p : "");
            st->errors++;
        }
        curl_multi_remove_handle(m, r->h);
        curl_easy_cleanup(r->h);
        curl_slist_free_all(r->hdrs);
        free(r->body);
        free(r->resp.p);
        free(r->head.p);
        free(r);
    }
}

/* Run the multi loop for up to wait_s, starting requests that fall due when issuing. */
struct sched {
    double rate, next_due;
    long seq;
    bool issuing;
};

static int pump(CURLM *m, struct sched *s, struct stats *st, double until)
{
    int running = 0;
    for (;;) {
        double now = soak_now_s();
        if (s->issuing) {
            while (s->next_due <= now) {
                if (st->started - st->done < MAX_INFLIGHT)
                    start_request(m, st, s->seq++);
                else
                    st->behind++; /* the gateway is behind: skipped, counted, reported */
                s->next_due += 1.0 / s->rate;
            }
        }
        curl_multi_perform(m, &running);
        finish(m, st);
        now = soak_now_s();
        if (now >= until)
            return running;
        double wait = until - now;
        if (s->issuing && s->next_due - now < wait)
            wait = s->next_due - now;
        int ms = (int)(wait * 1000) + 1;
        curl_multi_poll(m, NULL, 0, ms > 200 ? 200 : ms, NULL);
    }
}

/* Stop issuing, let everything in flight finish (bounded), then let the gateway settle. */
static void quiesce(CURLM *m, struct sched *s, struct stats *st)
{
    s->issuing = false;
    double end = soak_now_s() + 90;
    while (st->started > st->done && soak_now_s() < end)
        pump(m, s, st, soak_now_s() + 0.1);
    pump(m, s, st, soak_now_s() + 1.0);
}

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (!tg_test_redis_start(&g_redis))
        return -1;
    return soak_gw_start(&g_gw, g_redis.port, 0) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    soak_gw_stop(&g_gw); /* no-op unless the test failed before stopping it */
    tg_test_redis_stop(&g_redis);
    return 0;
}

struct point {
    long rss_kb;
    struct soak_fds f;
};

static void measure(struct point *p)
{
    p->rss_kb = soak_rss_kb(g_gw.gw_pid);
    assert_true(p->rss_kb > 0);
    assert_true(soak_count_fds(g_gw.gw_pid, g_gw.port, g_gw.fake_port, g_redis.port, &p->f));
}

static void csv_row(FILE *csv, double t, const char *phase, const struct point *p,
                    const struct stats *st)
{
    fprintf(csv, "%.1f,%s,%ld,%d,%d,%d,%d,%ld,%ld,%ld\n", t, phase, p->rss_kb, p->f.total,
            p->f.client, p->f.upstream, p->f.redis, st->done, st->errors, st->started - st->done);
    fflush(csv);
}

static void test_mixed_soak(void **state)
{
    (void)state;
    long seconds = soak_env_long("TG_SOAK_SECONDS", DEFAULT_SECONDS, 10, 86400);
    long rate = soak_env_long("TG_SOAK_RATE", 20, 1, 1000);
    long sample_s = soak_env_long("TG_SOAK_SAMPLE_SECONDS", 5, 1, 3600);
    double warm = (double)seconds / 4;
    warm = warm < 15 ? 15 : warm > 60 ? 60 : warm;
    const char *csv_path = getenv("TG_SOAK_CSV");
    if (csv_path == NULL || *csv_path == '\0')
        csv_path = "soak-mixed.csv";
    FILE *csv = fopen(csv_path, "w");
    assert_non_null(csv);
    fprintf(csv, "t_s,phase,rss_kb,fds,fds_client,fds_upstream,fds_redis,done,errors,inflight\n");
    printf("soak-mixed: %ld s at %ld req/s, warm-up %.0f s, samples every %ld s into %s\n",
           seconds, rate, warm, sample_s, csv_path);

    CURLM *m = curl_multi_init();
    assert_non_null(m);
    /* keep this driver's own connection pool fixed, so tiergate's client sockets are bounded */
    curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)MAX_INFLIGHT);
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)MAX_INFLIGHT);
    struct stats st;
    memset(&st, 0, sizeof st);
    double t0 = soak_now_s();
    struct sched s = {.rate = (double)rate, .next_due = t0, .issuing = true};
    struct point p, p_warm, p_end;
    measure(&p);
    csv_row(csv, 0, "start", &p, &st);

    double next_sample = t0 + (double)sample_s;
    bool warmed = false;
    double end = t0 + (double)seconds;
    while (soak_now_s() < end) {
        double until = next_sample < end ? next_sample : end;
        if (!warmed && t0 + warm < until)
            until = t0 + warm;
        pump(m, &s, &st, until);
        double now = soak_now_s();
        if (!warmed && now >= t0 + warm) {
            quiesce(m, &s, &st);
            measure(&p_warm);
            csv_row(csv, soak_now_s() - t0, "warm", &p_warm, &st);
            warmed = true;
            s.issuing = true;
            s.next_due = soak_now_s(); /* no burst to catch up with the pause */
        }
        if (now >= next_sample) {
            measure(&p);
            csv_row(csv, soak_now_s() - t0, "run", &p, &st);
            next_sample += (double)sample_s;
        }
    }
    quiesce(m, &s, &st);
    measure(&p_end);
    csv_row(csv, soak_now_s() - t0, "end", &p_end, &st);
    fclose(csv);
    curl_multi_cleanup(m);

    double growth = 100.0 * (double)(p_end.rss_kb - p_warm.rss_kb) / (double)p_warm.rss_kb;
    int other_warm = p_warm.f.total - p_warm.f.client - p_warm.f.upstream;
    int other_end = p_end.f.total - p_end.f.client - p_end.f.upstream;
    printf("soak-mixed: %ld requests (", st.done);
    for (int k = 0; k < K_COUNT; k++)
        if (k != K_REMOTE2)
            printf("%s%s %ld", k != 0 ? ", " : "", kind_name[k],
                   st.by_kind[k] + (k == K_REMOTE ? st.by_kind[K_REMOTE2] : 0));
    printf("), %ld errors, %ld skipped (behind), cache hits %ld of %ld repeats\n", st.errors,
           st.behind, st.cache_hits, st.cache_repeats);
    printf("soak-mixed: RSS warm %.1f MiB -> end %.1f MiB (%+.2f %%); fds warm %d (client %d, "
           "upstream %d, redis %d) -> end %d (client %d, upstream %d, redis %d)\n",
           (double)p_warm.rss_kb / 1024, (double)p_end.rss_kb / 1024, growth, p_warm.f.total,
           p_warm.f.client, p_warm.f.upstream, p_warm.f.redis, p_end.f.total, p_end.f.client,
           p_end.f.upstream, p_end.f.redis);

    assert_int_equal(st.errors, 0);
    assert_true(st.done > 0 && st.done == st.started);
    /* the cache really served: most repeats are hits (a repeat can race its key's first store) */
    assert_true(st.cache_hits * 2 >= st.cache_repeats);
    assert_true(other_end <= other_warm);
    assert_true(p_end.f.client <= MAX_INFLIGHT);
    assert_true(p_end.f.upstream <= 4 * MAX_INFLIGHT);
#ifndef TG_SOAK_SANITIZE
    assert_true(growth < 5.0);
#else
    printf("soak-mixed: TG_SANITIZE build: RSS growth not asserted (ASan quarantine)\n");
#endif
    int ws = soak_gw_stop(&g_gw);
    printf("soak-mixed: tiergate exit status %d\n", WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
    assert_true(WIFEXITED(ws));
    assert_int_equal(WEXITSTATUS(ws), 0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixed_soak),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    curl_global_cleanup();
    return rc;
}
