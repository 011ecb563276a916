/* tg-exec-bench: the remote executor's own overhead, without the HTTP server in front.
 *
 * Runs N sequential chat calls through tg_upstream_start on one event_base against a provider
 * (normally tg-fake-upstream), then N sequential requests with a reused libcurl easy handle
 * (curl_easy_perform, the cheapest way libcurl can do it) to the same URL, and prints both
 * latency distributions. The difference is what the executor adds per call (adapter, JSON,
 * multi_socket glue, timers).
 *
 *   tg-exec-bench --base-url http://127.0.0.1:PORT/v1 [--n 20000] [--concurrency K] [--prompt-bytes
 * KiB] [--raw 1] (K calls in flight at once on the one executor; the libcurl baseline is always
 * sequential)
 */
#include <curl/curl.h>
#include <stdbool.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "tg/config.h"
#include "upstream.h"

static const char BODY_SMALL[] =
    "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":"
    "\"Say hello in one short sentence.\"}]}";
static const char *BODY = BODY_SMALL;
static bool g_raw; /* --raw 1: hand the exact bytes over too (raw passthrough) */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double g_cpu_us; /* CPU (user + system) per request of the phase just measured */

static void report(const char *name, int64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp64);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (double)v[i];
    printf("{\"name\":\"%s\",\"n\":%zu,\"mean_us\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"cpu_us_"
           "per_req\":%.1f}\n",
           name, n, sum / (double)n / 1000.0, (double)v[n / 2] / 1000.0,
           (double)v[(size_t)((double)n * 0.99)] / 1000.0, g_cpu_us);
}

struct loop {
    struct shared *sh;
    struct event_base *base;
    struct tg_upstream_exec *ex;
    const struct tg_cfg_model *target;
    json_t *rq;
    size_t i, n;
    int64_t t0;
    int64_t *lat;
    int failures;
};

struct shared {
    int chains_left;
};

static void next(struct loop *l);

static void on_complete(void *user, const struct tg_upstream_result *r)
{
    struct loop *l = user;
    l->lat[l->i++] = now_ns() - l->t0;
    next(l);
}

static void on_error(void *user, const struct tg_upstream_error *e)
{
    struct loop *l = user;
    l->failures++;
    l->lat[l->i++] = now_ns() - l->t0;
    next(l);
}

static const struct tg_upstream_handlers H = {NULL, on_complete, on_error};

static void next(struct loop *l)
{
    if (l->i == l->n) {
        if (--l->sh->chains_left == 0)
            event_base_loopbreak(l->base);
        return;
    }
    struct tg_upstream_call call = {.request = l->rq,
                                    .targets = &l->target,
                                    .n_targets = 1,
                                    .raw_body = g_raw ? BODY : NULL,
                                    .raw_len = g_raw ? strlen(BODY) : 0};
    l->t0 = now_ns();
    if (tg_upstream_start(l->ex, &call, &H, l, NULL) != 0) {
        fprintf(stderr, "start failed\n");
        exit(1);
    }
}

static int atoi_checked(const char *s)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || v < 1 || v > 4096) {
        fprintf(stderr, "bad number '%s'\n", s);
        exit(2);
    }
    return (int)v;
}

static size_t sink(char *p, size_t s, size_t n, void *u)
{
    return s * n;
}

int main(int argc, char **argv)
{
    const char *base_url = NULL;
    size_t n = 20000;
    int conc = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--concurrency") == 0)
            conc = atoi_checked(argv[i + 1]);
        else if (strcmp(argv[i], "--raw") == 0)
            g_raw = strcmp(argv[i + 1], "1") == 0;
        else if (strcmp(argv[i], "--prompt-bytes") == 0) {
            /* one user message of this many bytes (words of prose), instead of the short one */
            size_t nb = (size_t)atoi_checked(argv[i + 1]) * 1024;
            json_t *text = json_stringn_nocheck("", 0);
            char *t = malloc(nb + 1);
            for (size_t k = 0; k < nb; k++)
                t[k] = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "[k % 57];
            t[nb] = '\0';
            json_decref(text);
            json_t *b = json_pack("{s:s,s:[{s:s,s:s}]}", "model", "gpt-4o-mini", "messages", "role",
                                  "user", "content", t);
            BODY = json_dumps(b, JSON_COMPACT);
            json_decref(b);
            free(t);
        }
        if (strcmp(argv[i], "--base-url") == 0)
            base_url = argv[i + 1];
        else if (strcmp(argv[i], "--n") == 0)
            n = (size_t)strtoul(argv[i + 1], NULL, 10);
    }
    if (base_url == NULL || n < 10) {
        fprintf(stderr, "usage: tg-exec-bench --base-url http://127.0.0.1:PORT/v1 [--n N]\n");
        return 2;
    }
    tg_upstream_global_init();
    struct tg_cfg_provider p = {.name = "fake",
                                .kind = TG_PROVIDER_OPENAI,
                                .base_url = (char *)base_url,
                                .api_key = "sk-bench",
                                .enabled = true,
                                .connect_timeout_ms = 5000,
                                .first_byte_timeout_ms = 60000,
                                .stream_idle_timeout_ms = 30000,
                                .total_timeout_ms = 600000,
                                .retries = 0,
                                .retry_base_ms = 100,
                                .circuit_failures = 5,
                                .circuit_window_ms = 30000,
                                .circuit_open_ms = 15000};
    struct tg_cfg_model m = {.name = "gpt-4o-mini",
                             .tier = TG_TIER_REMOTE,
                             .target = TG_TARGET_PROVIDER,
                             .provider = "fake",
                             .provider_ref = &p,
                             .upstream_model = "gpt-4o-mini"};
    struct event_base *base = event_base_new();
    struct tg_upstream_exec *ex = tg_upstream_exec_create(base, NULL);
    json_t *rq = json_loads(BODY, 0, NULL);
    struct loop *chains = calloc((size_t)conc, sizeof *chains);
    int64_t *all = calloc(n, sizeof *all);
    struct shared sh;
    int failures = 0;
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0 warms up (connections, pools); pass 1 is measured */
        size_t per = pass == 0 ? 200 : n / (size_t)conc;
        sh.chains_left = conc;
        for (int k = 0; k < conc; k++) {
            free(chains[k].lat);
            chains[k] =
                (struct loop){.sh = &sh, .base = base, .ex = ex, .target = &m, .rq = rq, .n = per};
            chains[k].lat = calloc(per, sizeof *chains[k].lat);
        }
        double c0 = cpu_s();
        int64_t t0 = now_ns();
        for (int k = 0; k < conc; k++)
            next(&chains[k]);
        event_base_dispatch(base);
        double wall = (double)(now_ns() - t0) / 1e9;
        if (pass == 1) {
            size_t m_ = 0;
            for (int k = 0; k < conc; k++) {
                memcpy(all + m_, chains[k].lat, per * sizeof *all);
                m_ += per;
                failures += chains[k].failures;
            }
            g_cpu_us = (cpu_s() - c0) / (double)m_ * 1e6;
            printf("{\"concurrency\":%d,\"req_per_s\":%.0f}\n", conc, (double)m_ / wall);
            report("executor", all, m_);
        }
    }
    if (failures > 0)
        fprintf(stderr, "%d failures\n", failures);
    double c0;
    char url[1024];
    snprintf(url, sizeof url, "%s/chat/completions", base_url);
    CURL *e = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, "Authorization: Bearer sk-bench");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, BODY);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink);
    int64_t *raw = calloc(n, sizeof *raw);
    for (size_t i = 0; i < 200; i++)
        curl_easy_perform(e);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    c0 = cpu_s();
    for (size_t i = 0; i < n; i++) {
        int64_t t0 = now_ns();
        curl_easy_perform(e);
        raw[i] = now_ns() - t0;
    }
    g_cpu_us = (cpu_s() - c0) / (double)n * 1e6;
    report("curl_easy_reused", raw, n);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    free(raw);
    for (int k = 0; k < conc; k++)
        free(chains[k].lat);
    free(chains);
    free(all);
    json_decref(rq);
    tg_upstream_exec_destroy(ex);
    event_base_free(base);
    tg_upstream_global_cleanup();
    return 0;
}
