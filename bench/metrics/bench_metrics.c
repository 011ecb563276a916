/* bench-metrics: cost of the metrics hot path (tg_metrics_record per finished request, from 1..N
 * threads on one registry), of tg_cost_compute, and of a /metrics render with a realistic number
 * of series. Prints one line per measurement.
 *
 *   bench-metrics [--threads N] [--records N] [--config routes.yaml]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cost.h"
#include "metrics.h"
#include "tg/err.h"

static struct tg_config *g_cfg;
static long g_records = 1000000;

/* Process CPU time: the build machine is shared, so wall time measures the neighbours too. */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *const k_models[] = {"phi-3.5-mini", "gpt-4o-mini", "gpt-4o", "claude-3-5-haiku"};
static const char *const k_tiers[] = {"local", "remote", "remote", "remote"};
static const char *const k_endpoints[] = {"chat", "classify", "extract", "responses"};
static const char *const k_reasons[] = {"score.threshold", "kind.classify", "feature.long_prompt",
                                        "force_local.pii.email"};

static void *worker(void *arg)
{
    long id = (long)(intptr_t)arg;
    for (long i = 0; i < g_records; i++) {
        size_t m = (size_t)(i + id) % 4;
        struct tg_cost c;
        tg_cost_compute(g_cfg, k_tiers[m], k_models[m], 200 + i % 1000, 50 + i % 300, &c);
        struct tg_request_record r = {
            .endpoint = k_endpoints[i % 4], .tier = k_tiers[m], .model = k_models[m],
            .status = i % 50 == 0 ? 502 : 200, .duration_s = 0.001 * (double)(i % 5000),
            .ttft_s = 0.0005 * (double)(i % 3000), .upstream_s = m ? 0.3 : -1,
            .prompt_tokens = 200 + i % 1000, .completion_tokens = 50 + i % 300,
            .cost_usd = c.cost_usd, .avoided_usd = c.avoided_usd,
            .avoided_reason = c.avoided_reason, .cache_result = i % 7 ? "miss" : "hit",
            .route_tier = k_tiers[m], .route_reason = k_reasons[i % 4], .tenant = "default"};
        tg_metrics_record(&r);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 1;
    const char *config = TG_SOURCE_DIR_FALLBACK;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = (int)strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--records") == 0 && i + 1 < argc)
            g_records = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            config = argv[++i];
        else {
            fprintf(stderr, "usage: bench-metrics [--threads N] [--records N] [--config FILE]\n");
            return 2;
        }
    }
    if (threads < 1 || threads > 64 || g_records < 1) {
        fprintf(stderr, "bench-metrics: --threads 1..64, --records >= 1\n");
        return 2;
    }
    char err[1024];
    if (tg_config_load(config, &g_cfg, err, sizeof err) != TG_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (tg_metrics_init(g_cfg, "bench") != TG_OK)
        return 1;

    /* cost alone */
    double t0 = now_s();
    volatile int64_t sink = 0;
    for (long i = 0; i < g_records; i++) {
        struct tg_cost c;
        tg_cost_compute(g_cfg, k_tiers[i % 4], k_models[i % 4], 200 + i % 1000, 50 + i % 300, &c);
        sink += c.cost_nano;
    }
    double t1 = now_s();
    printf("tg_cost_compute: %.0f CPU-ns/op\n", (t1 - t0) / (double)g_records * 1e9);

    pthread_t th[64];
    t0 = now_s();
    for (int i = 0; i < threads; i++)
        pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    t1 = now_s();
    double total = (double)g_records * threads;
    printf("tg_metrics_record: %d thread(s), %.0f records: %.0f CPU-ns/record (incl. cost), %.2f M records per CPU-second\n",
           threads, total, (t1 - t0) / total * 1e9, total / (t1 - t0) / 1e6);

    struct tg_buf b;
    tg_buf_init(&b, 0);
    int reps = 200;
    t0 = now_s();
    for (int i = 0; i < reps; i++) {
        tg_buf_reset(&b);
        tg_metrics_render(&b);
    }
    t1 = now_s();
    size_t lines = 0;
    for (size_t i = 0; i < b.len; i++)
        lines += b.data[i] == '\n';
    printf("tg_metrics_render: %zu bytes, %zu lines: %.1f CPU-us/render\n", b.len, lines,
           (t1 - t0) / reps * 1e6);
    tg_buf_free(&b);
    tg_metrics_shutdown();
    tg_config_unref(g_cfg);
    return (int)(sink & 0);
}
