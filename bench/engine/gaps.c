/* bench-engine-gaps MODEL KV_SPLIT(0|1): what a gap among the busy slots costs.
 *
 * 4 slots, 1 thread, n_ctx 8192; 4 greedy jobs submitted together, three of 256 tokens and
 * one of 8. Jobs take slots in submit order, so the short job sits in slot 1 (when it ends,
 * busy slots 0, 2, 3: a gap) or slot 3 (busy 0, 1, 2: adjacent); 6 runs alternate the two.
 * Same work either way; prints tokens / wall time per run. llama.cpp decodes a multi-stream
 * (kv_split) batch in ubatches of consecutive sequence ids only
 * (llama_batch_allocr::split_equal, sequential), so with kv_split a gap would cost one more
 * pass over the weights per step (35 % of tok/s, small model); the engine fills the gap with
 * a padding row instead (build_batch), which this measures. Unified KV batches any set of
 * sequences in one pass. */
#include "tg/engine.h"
#include "tg/err.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int pending;
static long toks;
static void cb(const struct tg_engine_event *ev, void *u)
{
    (void)u;
    if (ev->type == TG_EV_TOKEN)
        return;
    pthread_mutex_lock(&mu);
    if (ev->type == TG_EV_DONE)
        toks += ev->usage.completion_tokens;
    else
        fprintf(stderr, "err %s\n", ev->message);
    pending--;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}
static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv)
{
    struct tg_engine_params p = tg_engine_default_params();
    if (argc != 3) {
        fprintf(stderr, "usage: bench-engine-gaps MODEL 0|1\n");
        return 2;
    }
    p.model_path = argv[1];
    p.kv_split = strcmp(argv[2], "1") == 0;
    p.n_slots = 4;
    p.n_ctx = 8192;
    p.n_threads = 1;
    struct tg_engine *e;
    char err[256];
    if (tg_engine_create(&p, &e, err, sizeof err) != TG_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    static const char *T[] = {"the weather", "a recipe", "a bicycle", "the ocean"};
    for (int rep = 0; rep < 6; rep++) {
        int hole = rep % 2 == 0 ? 1 : 3;
        toks = 0;
        double t0 = now();
        for (int i = 0; i < 4; i++) {
            char user[64];
            snprintf(user, sizeof user, "Write about %s %d.", T[i], rep);
            struct tg_chat_msg m[] = {{"user", user}};
            struct tg_engine_job j = {.kind = TG_JOB_GENERATE, .messages = m, .n_messages = 1,
                                      .temperature = 0, .max_tokens = i == hole ? 8 : 256};
            pthread_mutex_lock(&mu);
            pending++;
            pthread_mutex_unlock(&mu);
            if (tg_engine_submit(e, &j, cb, NULL, NULL, err, sizeof err) != TG_OK) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
        }
        pthread_mutex_lock(&mu);
        while (pending > 0)
            pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
        double dt = now() - t0;
        printf("kv_split %d short job in slot %d: %ld tokens %.2f s %.1f tok/s\n", p.kv_split, hole,
               toks, dt, toks / dt);
        fflush(stdout);
    }
    tg_engine_destroy(e);
    return 0;
}
