/* bench-enginenet: what the nng boundary costs, on one engine.
 *
 *   bench-enginenet --model FILE [--threads N] [--slots N] [--jobs N] [--tokens N]
 *   bench-enginenet --worker --listen URL --model FILE ...   (internal: the ipc worker)
 *
 * For each path — direct (tg_engine_submit), inproc (tg_engine_client over inproc://), ipc
 * (tg_engine_client to a worker process over ipc://) — it measures:
 *   latency   submit → DONE of a 1-token non-streaming job, sequentially (--jobs N);
 *   ttft      submit → first TOKEN event of a streaming job;
 *   stream    tokens/s seen by the consumer of one greedy streaming job of --tokens tokens,
 *             and this process's CPU time per streamed token (for ipc: the client side only,
 *             i.e. what a gateway pays per token of a remote worker);
 *   batch     aggregate tokens/s of --slots such jobs at once.
 * The direct and inproc paths share one engine; the ipc worker loads the same model with the
 * same parameters.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli_engine.h"
#include "tg/engine.h"
#include "tg/engine_net.h"
#include "tg/err.h"
#include "tg/log.h"

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

struct waiter {
    pthread_mutex_t mtx;
    pthread_cond_t cond;
    int pending;        /* jobs not finished */
    double t_submit;
    double t_first;     /* first token of any job, ms */
    long tokens;        /* completion tokens of finished jobs */
    int errors;
};

static void on_event(const struct tg_engine_event *ev, void *user)
{
    struct waiter *w = user;
    pthread_mutex_lock(&w->mtx);
    if (ev->type == TG_EV_TOKEN && w->t_first == 0)
        w->t_first = now_ms();
    if (ev->type != TG_EV_TOKEN) {
        if (ev->type == TG_EV_ERROR) {
            w->errors++;
            fprintf(stderr, "job error: %s\n", ev->message);
        } else {
            w->tokens += ev->usage.completion_tokens;
        }
        /* Wake the waiter only when it has something to do: a wake-up per token would put
         * the bench's own thread switches on the engine's path. */
        if (--w->pending == 0)
            pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->mtx);
}

typedef int (*submit_fn)(void *h, const struct tg_engine_job *job, struct waiter *w);

static int submit_direct(void *h, const struct tg_engine_job *job, struct waiter *w)
{
    char err[256];
    int rc = tg_engine_submit(h, job, on_event, w, NULL, err, sizeof(err));
    if (rc != TG_OK)
        fprintf(stderr, "submit: %s\n", err);
    return rc;
}

static int submit_client(void *h, const struct tg_engine_job *job, struct waiter *w)
{
    char err[256];
    int rc = tg_engine_client_submit(h, job, on_event, w, NULL, err, sizeof(err));
    if (rc != TG_OK)
        fprintf(stderr, "submit: %s\n", err);
    return rc;
}

static void waiter_init(struct waiter *w, int n)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mtx, NULL);
    pthread_cond_init(&w->cond, NULL);
    w->pending = n;
    w->t_submit = now_ms();
}

static void waiter_wait(struct waiter *w)
{
    pthread_mutex_lock(&w->mtx);
    while (w->pending > 0)
        pthread_cond_wait(&w->cond, &w->mtx);
    pthread_mutex_unlock(&w->mtx);
}

static void waiter_fini(struct waiter *w)
{
    pthread_mutex_destroy(&w->mtx);
    pthread_cond_destroy(&w->cond);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static const struct tg_chat_msg msg[] = {{"user", "Tell me about lighthouses and the sea."}};

static void run_path(const char *name, submit_fn submit, void *h, int jobs, int tokens, int slots)
{
    struct tg_engine_job j;
    memset(&j, 0, sizeof(j));
    j.kind = TG_JOB_GENERATE;
    j.messages = msg;
    j.n_messages = 1;

    /* latency: 1-token jobs, one at a time */
    double *lat = calloc((size_t)jobs, sizeof(double));
    j.max_tokens = 1;
    for (int i = 0; i < jobs; i++) {
        struct waiter w;
        waiter_init(&w, 1);
        if (submit(h, &j, &w) != TG_OK)
            exit(1);
        waiter_wait(&w);
        lat[i] = now_ms() - w.t_submit;
        waiter_fini(&w);
    }
    qsort(lat, (size_t)jobs, sizeof(double), cmp_double);
    double sum = 0;
    for (int i = 0; i < jobs; i++)
        sum += lat[i];

    /* ttft + single stream */
    j.max_tokens = tokens;
    j.stream = true;
    double ttft = 0, tps1 = 0, cpu0 = cpu_ms();
    long tok1 = 0;
    const int reps = 3;
    for (int r = 0; r < reps; r++) {
        struct waiter w;
        waiter_init(&w, 1);
        if (submit(h, &j, &w) != TG_OK)
            exit(1);
        waiter_wait(&w);
        double t = now_ms() - w.t_submit;
        ttft += (w.t_first - w.t_submit) / reps;
        tps1 += w.tokens / (t / 1e3) / reps;
        tok1 += w.tokens;
        waiter_fini(&w);
    }
    double cpu_us_tok = (cpu_ms() - cpu0) * 1e3 / (tok1 > 0 ? tok1 : 1);

    /* batch: `slots` streams at once */
    struct waiter w;
    waiter_init(&w, slots);
    for (int i = 0; i < slots; i++)
        if (submit(h, &j, &w) != TG_OK)
            exit(1);
    waiter_wait(&w);
    double tb = now_ms() - w.t_submit;
    double tpsb = w.tokens / (tb / 1e3);
    waiter_fini(&w);

    printf("| %-7s | %8.3f | %8.3f | %8.3f | %8.2f | %9.0f | %9.1f | %9.0f |\n", name,
           sum / jobs, lat[jobs / 2],
           lat[(jobs * 99) / 100 < jobs ? (jobs * 99) / 100 : jobs - 1], ttft, tps1, cpu_us_tok,
           tpsb);
    fflush(stdout);
    free(lat);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--worker") == 0)
        return tg_cli_engine(argc - 1, argv + 1);

    const char *model = NULL;
    int threads = 2, slots = 4, jobs = 200, tokens = 256;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--model") == 0)
            model = argv[i + 1];
        else if (strcmp(argv[i], "--threads") == 0)
            threads = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--slots") == 0)
            slots = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--jobs") == 0)
            jobs = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--tokens") == 0)
            tokens = (int)strtol(argv[i + 1], NULL, 10);
    }
    if (model == NULL || threads < 1 || slots < 1 || jobs < 1 || tokens < 1) {
        fprintf(stderr, "usage: %s --model FILE [--threads N] [--slots N] [--jobs N] "
                        "[--tokens N]\n",
                argv[0]);
        return 2;
    }
    tg_log_set_level(TG_LOG_WARN);
    struct tg_engine_params ep = tg_engine_default_params();
    ep.model_path = model;
    ep.n_threads = threads;
    ep.n_slots = slots;
    ep.n_ctx = 4096;
    ep.prefix_cache_entries = -1; /* the same prompt every time: measure decode, not the cache */

    char err[512];
    struct tg_engine_local *l = NULL;
    if (tg_engine_local_start(&ep, &l, err, sizeof(err)) != TG_OK) {
        fprintf(stderr, "engine: %s\n", err);
        return 1;
    }
    printf("model %s, threads %d, slots %d, %d latency jobs, %d-token streams\n\n", model,
           threads, slots, jobs, tokens);
    printf("| path    | lat mean | lat p50  | lat p99  | ttft ms  | 1 stream  | cpu/token | %d streams |\n",
           slots);
    printf("|---------|---------:|---------:|---------:|---------:|----------:|----------:|----------:|\n");
    printf("|         | ms       | ms       | ms       |          | tokens/s  | us (proc) | tokens/s  |\n");
    /* Warm-up (untimed): first-touch page faults and caches would otherwise count against
     * whichever path runs first. */
    {
        struct tg_engine_job j;
        memset(&j, 0, sizeof(j));
        j.kind = TG_JOB_GENERATE;
        j.messages = msg;
        j.n_messages = 1;
        j.max_tokens = tokens;
        struct waiter w;
        waiter_init(&w, slots);
        for (int i = 0; i < slots; i++)
            if (submit_direct(tg_engine_local_engine(l), &j, &w) != TG_OK)
                return 1;
        waiter_wait(&w);
        waiter_fini(&w);
    }
    run_path("direct", submit_direct, tg_engine_local_engine(l), jobs, tokens, slots);
    run_path("inproc", submit_client, tg_engine_local_client(l), jobs, tokens, slots);
    tg_engine_local_stop(l);

    /* ipc: this binary as a worker process */
    char dir[] = "/tmp/tg-bench-enginenet-XXXXXX";
    if (mkdtemp(dir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    char url[128], th[16], sl[16], self[4096];
    snprintf(url, sizeof(url), "ipc://%s/w.sock", dir);
    snprintf(th, sizeof(th), "%d", threads);
    snprintf(sl, sizeof(sl), "%d", slots);
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        perror("readlink");
        return 1;
    }
    self[n] = '\0';
    pid_t pid = fork();
    if (pid == 0) {
        char *wargv[] = {self,   "--worker", "--listen", url, "--model", (char *)model,
                         "--threads", th, "--slots", sl, "--ctx", "4096", "--log-level",
                         "warn", NULL};
        execv(self, wargv);
        _exit(127);
    }
    const char *urls[] = {url};
    struct tg_engine_client *cli = NULL;
    if (tg_engine_client_create(urls, 1, NULL, &cli, err, sizeof(err)) != TG_OK ||
        tg_engine_client_wait_ready(cli, 1, 60000) != TG_OK) {
        fprintf(stderr, "ipc worker did not come up: %s\n", err);
        kill(pid, SIGKILL);
        return 1;
    }
    run_path("ipc", submit_client, cli, jobs, tokens, slots);
    tg_engine_client_destroy(cli);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    char path[200];
    snprintf(path, sizeof(path), "%s/w.sock", dir);
    unlink(path);
    rmdir(dir);
    return 0;
}
