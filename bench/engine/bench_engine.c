/* bench-engine: throughput and latency of tg_engine on a (generated) GGUF model.
 *
 *   bench-engine --model M.gguf [--threads N] [--gen 128] [--ctx 8192] [--prefix 1000]
 *                [--reps 3] [--streams 4,8|0] [--kv-split 0|1] [--slots N]
 *                [--spill-bytes B] [--verbose 0|1]
 *
 * Measures, all through the public API (tg_engine_submit + callbacks):
 *   single   one greedy stream: decode tok/s = (completion - 1) / (total - TTFT)
 *   agg K    K streams submitted together (distinct prompts, greedy, --gen tokens each):
 *            sum(completion tokens) / wall time from the first submit to the last DONE
 *   after    the single-stream figure again once the prefix cache holds the entries the
 *            ttft phase made (their KV must not slow down jobs that do not share them;
 *            with --kv-split 1 they sit in idle slots' own streams and in host memory)
 *   ttft     a prompt with a --prefix-token shared system prefix: TTFT cold (prefix never
 *            seen) vs warm (the prefix cached by an earlier request), median of --reps
 *   rss      peak resident set size of this process (getrusage ru_maxrss)
 * Prints `key value` lines and one JSON line (prefix "json ") for bench/engine/run.py.
 */
#include "tg/engine.h"
#include "tg/err.h"
#include "tg/log.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

struct done {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;
    int errors;
    long tokens;
    double last_ttft_ms, last_total_ms;
    double t_last_done;
    double cpu_first_tok, cpu_done; /* process CPU ms at the first TOKEN event / at DONE */
};

static double cpu_ms(void);

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void on_event(const struct tg_engine_event *ev, void *user)
{
    struct done *d = user;
    if (ev->type == TG_EV_TOKEN) { /* only streaming jobs (the single-stream phase) */
        pthread_mutex_lock(&d->mu);
        if (d->cpu_first_tok == 0)
            d->cpu_first_tok = cpu_ms();
        pthread_mutex_unlock(&d->mu);
        return;
    }
    double cpu_now = cpu_ms();
    pthread_mutex_lock(&d->mu);
    d->cpu_done = cpu_now;
    if (ev->type == TG_EV_ERROR) {
        fprintf(stderr, "job %llu: %s: %s\n", (unsigned long long)ev->job_id,
                tg_errname(ev->err), ev->message);
        d->errors++;
    } else {
        d->tokens += ev->usage.completion_tokens;
        d->last_ttft_ms = ev->ttft_ms;
        d->last_total_ms = ev->total_ms;
    }
    d->t_last_done = now_ms();
    d->pending--;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

static void wait_all(struct done *d)
{
    pthread_mutex_lock(&d->mu);
    while (d->pending > 0)
        pthread_cond_wait(&d->cv, &d->mu);
    pthread_mutex_unlock(&d->mu);
}

static int submit(struct tg_engine *e, const struct tg_engine_job *j, struct done *d)
{
    char err[256];
    pthread_mutex_lock(&d->mu);
    d->pending++;
    pthread_mutex_unlock(&d->mu);
    int rc = tg_engine_submit(e, j, on_event, d, NULL, err, sizeof err);
    if (rc != TG_OK) {
        fprintf(stderr, "submit: %s: %s\n", tg_errname(rc), err);
        pthread_mutex_lock(&d->mu);
        d->pending--;
        pthread_mutex_unlock(&d->mu);
    }
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double single_stream(struct tg_engine *e, struct tg_engine_job *j, struct done *d,
                            int gen, int reps, double *cpu_per_tok);

static const char *TOPICS[] = {"the weather",  "a recipe",      "a bicycle",   "the ocean",
                               "a small town", "a lost letter", "an old clock", "a garden"};

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Median decode tok/s of one greedy stream, --reps times (a fresh short prompt each).
 * *cpu_per_tok gets this process's CPU ms per decoded token from the first streamed token
 * to DONE (prefill excluded, like llama-bench tg), over all reps: on a loaded machine it
 * moves far less than wall-clock rates. */
static double single_stream(struct tg_engine *e, struct tg_engine_job *j, struct done *d,
                            int gen, int reps, double *cpu_per_tok)
{
    double single[15];
    double cpu = 0;
    long toks = 0;
    j->stream = true; /* TOKEN events mark where decoding starts */
    for (int r = 0; r < reps; r++) {
        char user[128];
        snprintf(user, sizeof user, "Write about %s.", TOPICS[r % 8]);
        struct tg_chat_msg m[] = {{"user", user}};
        j->messages = m;
        j->n_messages = 1;
        j->max_tokens = gen;
        d->tokens = 0;
        d->cpu_first_tok = 0;
        submit(e, j, d);
        wait_all(d);
        single[r] = (d->tokens - 1) * 1000.0 / (d->last_total_ms - d->last_ttft_ms);
        if (d->cpu_first_tok > 0 && d->tokens > 1) {
            cpu += d->cpu_done - d->cpu_first_tok;
            toks += d->tokens - 1;
        }
        if (d->tokens < gen)
            fprintf(stderr, "note: single stream stopped after %ld tokens\n", d->tokens);
    }
    j->stream = false;
    *cpu_per_tok = cpu / (double)(toks > 0 ? toks : 1);
    qsort(single, (size_t)reps, sizeof single[0], cmp_double);
    return single[reps / 2];
}

/* A system prefix of about n tokens (varied words so it is not one repeated token). */
static char *make_prefix(int n_tokens, int variant)
{
    size_t cap = (size_t)n_tokens * 8 + 256;
    char *s = malloc(cap);
    size_t len = (size_t)snprintf(s, cap, "Variant %d. You are a careful assistant. ", variant);
    static const char *words[] = {"invoice", "customer", "refund", "ticket", "priority",
                                  "billing", "account",  "order",  "shipment", "delay",
                                  "address", "payment",  "status", "review",   "answer"};
    /* Phi-3's tokenizer gives about one token per word plus one per punctuation mark. */
    for (int i = 0; len + 16 < cap && i < n_tokens * 9 / 10; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s%s", words[(i * 7 + variant) % 15],
                                i % 12 == 11 ? ". " : " ");
    return s;
}

int main(int argc, char **argv)
{
    const char *model = NULL;
    int threads = 2, gen = 128, ctx = 8192, prefix = 1000, reps = 3;
    int streams[8] = {4, 8};
    int n_streams = 2;
    bool kv_split = false, verbose = false;
    int slots = 0; /* 0: the largest --streams */
    long long spill_bytes = 0; /* prefix_cache_spill_bytes: 0 = off (the default) */
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (strcmp(k, "--kv-split") == 0)
            kv_split = strcmp(v, "1") == 0;
        else if (strcmp(k, "--verbose") == 0)
            verbose = strcmp(v, "1") == 0;
        else if (strcmp(k, "--slots") == 0)
            slots = (int)strtol(v, NULL, 10);
        else if (strcmp(k, "--spill-bytes") == 0)
            spill_bytes = strtoll(v, NULL, 10);
        else if (strcmp(k, "--streams") == 0 && strcmp(v, "0") == 0)
            n_streams = 0;
        else if (strcmp(k, "--model") == 0)
            model = v;
        else if (strcmp(k, "--threads") == 0)
            threads = (int)strtol(v, NULL, 10);
        else if (strcmp(k, "--gen") == 0)
            gen = (int)strtol(v, NULL, 10);
        else if (strcmp(k, "--ctx") == 0)
            ctx = (int)strtol(v, NULL, 10);
        else if (strcmp(k, "--prefix") == 0)
            prefix = (int)strtol(v, NULL, 10);
        else if (strcmp(k, "--reps") == 0)
            reps = (int)strtol(v, NULL, 10);
        else if (strcmp(k, "--streams") == 0) {
            n_streams = 0;
            char *end = (char *)v;
            while (*end && n_streams < 8) {
                streams[n_streams++] = (int)strtol(end, &end, 10);
                if (*end == ',')
                    end++;
            }
        }
    }
    if (!model || threads < 1 || gen < 2 || reps < 1 || reps > 15) {
        fprintf(stderr, "usage: %s --model M.gguf [--threads N] [--gen 128] [--ctx 8192] "
                        "[--prefix 1000] [--reps 3] [--streams 4,8]\n", argv[0]);
        return 2;
    }
    tg_log_set_level(verbose ? TG_LOG_DEBUG : TG_LOG_WARN);
    int max_streams = 1;
    for (int i = 0; i < n_streams; i++)
        if (streams[i] > max_streams)
            max_streams = streams[i];
    if (slots > 0) {
        if (slots < max_streams) {
            fprintf(stderr, "--slots %d is fewer than the largest --streams %d\n", slots,
                    max_streams);
            return 2;
        }
        max_streams = slots;
    }

    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = model;
    p.n_threads = threads;
    p.n_ctx = ctx;
    p.n_slots = max_streams;
    p.prefix_cache_entries = 8;
    p.prefix_cache_min_tokens = 32;
    p.embed_ctx = -1;
    p.kv_split = kv_split;
    p.prefix_cache_spill_bytes = spill_bytes;
    struct tg_engine *e = NULL;
    char err[512];
    double t0 = now_ms();
    if (tg_engine_create(&p, &e, err, sizeof err) != TG_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct tg_engine_info info;
    tg_engine_info(e, &info);
    printf("model %s (%s, %.1fM params), threads %d, slots %d, n_ctx %d, load %.0f ms\n",
           info.model_name, info.model_desc, info.n_params / 1e6, threads, max_streams,
           info.n_ctx, now_ms() - t0);

    struct done d = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

    /* warm-up: first decode allocates buffers */
    struct tg_chat_msg wm[] = {{"user", "Hello."}};
    struct tg_engine_job j;
    memset(&j, 0, sizeof j);
    j.kind = TG_JOB_GENERATE;
    j.messages = wm;
    j.n_messages = 1;
    j.max_tokens = 8;
    submit(e, &j, &d);
    wait_all(&d);

    double single_cpu = 0;
    double single = single_stream(e, &j, &d, gen, reps, &single_cpu);
    printf("single_decode_tps %.1f (cpu %.2f ms/token)\n", single, single_cpu);

    /* K streams together */
    double agg[8] = {0}, agg_cpu[8] = {0};
    for (int si = 0; si < n_streams; si++) {
        int k = streams[si];
        double best[15];
        double c0 = cpu_ms();
        long toks = 0;
        for (int r = 0; r < reps; r++) {
            struct tg_chat_msg m[64][1];
            char users[64][96];
            d.tokens = 0;
            double ts = now_ms();
            for (int i = 0; i < k && i < 64; i++) {
                snprintf(users[i], sizeof users[i], "Stream %d: write about %s.", i,
                         TOPICS[(i + r) % 8]);
                m[i][0] = (struct tg_chat_msg){"user", users[i]};
                j.messages = m[i];
                j.max_tokens = gen;
                submit(e, &j, &d);
            }
            wait_all(&d);
            best[r] = d.tokens * 1000.0 / (d.t_last_done - ts);
            toks += d.tokens;
        }
        agg_cpu[si] = (cpu_ms() - c0) / (double)(toks > 0 ? toks : 1);
        qsort(best, (size_t)reps, sizeof best[0], cmp_double);
        agg[si] = best[reps / 2];
        printf("aggregate_tps_%d %.1f (cpu %.2f ms/token)\n", k, agg[si], agg_cpu[si]);
    }

    if (prefix <= 0) { /* no prefix phase asked for */
        tg_engine_destroy(e);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("peak_rss_mib %.1f\n", ru.ru_maxrss / 1024.0);
        printf("json {\"single_decode_tps\":%.2f,\"single_cpu_ms\":%.3f", single, single_cpu);
        for (int si = 0; si < n_streams; si++)
            printf(",\"aggregate_tps_%d\":%.2f,\"aggregate_cpu_ms_%d\":%.3f", streams[si], agg[si],
               streams[si], agg_cpu[si]);
        printf(",\"peak_rss_mib\":%.1f,\"threads\":%d,\"gen\":%d,\"kv_split\":%d}\n",
               ru.ru_maxrss / 1024.0, threads, gen, kv_split ? 1 : 0);
        return d.errors ? 1 : 0;
    }

    /* TTFT with a shared prefix: cold (new prefix) vs warm (prefix cached by the previous
     * request). max_tokens 1 so the number is prefill + first sample. */
    double cold[15], warm[15];
    int prompt_tokens = 0;
    for (int r = 0; r < reps; r++) {
        char *sys = make_prefix(prefix, 100 + r);
        struct tg_chat_msg m1[] = {{"system", sys}, {"user", "First question?"}};
        struct tg_chat_msg m2[] = {{"system", sys}, {"user", "Another one, please?"}};
        j.max_tokens = 1;
        j.messages = m1;
        j.n_messages = 2;
        submit(e, &j, &d);
        wait_all(&d);
        cold[r] = d.last_ttft_ms;
        j.messages = m2;
        submit(e, &j, &d);
        wait_all(&d);
        warm[r] = d.last_ttft_ms;
        free(sys);
    }
    struct tg_engine_stats st;
    tg_engine_stats(e, &st);
    qsort(cold, (size_t)reps, sizeof cold[0], cmp_double);
    qsort(warm, (size_t)reps, sizeof warm[0], cmp_double);
    prompt_tokens = (int)(st.prefix_cache_tokens / (st.prefix_cache_hits ? st.prefix_cache_hits
                                                                          : 1));
    printf("ttft_cold_ms %.1f\nttft_warm_ms %.1f\nttft_speedup %.1f\n", cold[reps / 2],
           warm[reps / 2], cold[reps / 2] / warm[reps / 2]);
    printf("prefix_cached_tokens_per_hit %d (hits %llu)\n", prompt_tokens,
           (unsigned long long)st.prefix_cache_hits);

    /* One stream again, now that the prefix cache holds the entries made above (parked
     * sequences): their KV cells must not slow down a job that does not use them. */
    double after_cpu = 0;
    double single_after = single_stream(e, &j, &d, gen, reps, &after_cpu);
    tg_engine_stats(e, &st);
    printf("single_decode_after_prefix_tps %.1f (cpu %.2f ms/token; prefix-cache entries %d, "
           "%llu moved out of the KV cache, %llu copied back, %.1f MiB held)\n",
           single_after, after_cpu, st.prefix_cache_entries,
           (unsigned long long)st.prefix_cache_spills,
           (unsigned long long)st.prefix_cache_restores,
           st.prefix_cache_spilled_bytes / 1048576.0);

    tg_engine_destroy(e);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double rss_mib = ru.ru_maxrss / 1024.0;
    printf("peak_rss_mib %.1f\n", rss_mib);
    printf("json {\"single_decode_tps\":%.2f,\"single_after_prefix_tps\":%.2f,"
           "\"single_cpu_ms\":%.3f,\"single_after_cpu_ms\":%.3f", single, single_after,
           single_cpu, after_cpu);
    for (int si = 0; si < n_streams; si++)
        printf(",\"aggregate_tps_%d\":%.2f,\"aggregate_cpu_ms_%d\":%.3f", streams[si], agg[si],
               streams[si], agg_cpu[si]);
    printf(",\"ttft_cold_ms\":%.2f,\"ttft_warm_ms\":%.2f,\"prefix_tokens\":%d,"
           "\"peak_rss_mib\":%.1f,\"threads\":%d,\"gen\":%d,\"kv_split\":%d}\n",
           cold[reps / 2], warm[reps / 2], prompt_tokens, rss_mib, threads, gen,
           kv_split ? 1 : 0);
    return d.errors ? 1 : 0;
}
