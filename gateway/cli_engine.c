/* `tiergate engine`: a standalone engine worker (usage in cli_engine.h). */
#include "cli_engine.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tg/engine.h"
#include "tg/engine_net.h"
#include "tg/err.h"
#include "tg/log.h"

#define STATS_LOG_INTERVAL_S 60

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tiergate engine --listen URL --model FILE [options]\n"
            "  --listen URL       ipc:///path, tcp://host:port or inproc://name\n"
            "  --model FILE       GGUF model\n"
            "  --slots N          sequences decoded together (default 4)\n"
            "  --ctx N            KV cache cells, tokens (default 4096); with --kv-split 1\n"
            "                     each slot gets ctx / slots of them\n"
            "  --kv-split 0|1     1 (default): one KV stream per slot (llama-server -np);\n"
            "                     0: one KV cache any job may fill\n"
            "  --threads N        CPU threads (default: online cores)\n"
            "  --gpu-layers N     layers offloaded to the GPU (0 = CPU, -1 = all)\n"
            "  --kv-type T        f16 | q8_0 | q4_0 (default f16)\n"
            "  --batch N          tokens per decode step (default 512)\n"
            "  --queue N          jobs waiting for a slot before new ones get 'busy' (64)\n"
            "  --log-level L      debug | info | warn | error (default info)\n"
            "  --log-json         log JSON lines\n");
}

/* Strict integer option: the whole string, in [lo, hi]. */
static bool parse_int(const char *opt, const char *s, long lo, long hi, int32_t *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "tiergate engine: %s must be an integer in [%ld, %ld], got '%s'\n", opt,
                lo, hi, s);
        return false;
    }
    *out = (int32_t)v;
    return true;
}

#define SHUTDOWN_WATCHDOG_S 15

static void *shutdown_watchdog(void *arg)
{
    (void)arg;
    struct timespec ts = {.tv_sec = SHUTDOWN_WATCHDOG_S, .tv_nsec = 0};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
    tg_warn("engine worker: shutdown still blocked in nng after %d s; exiting anyway",
            SHUTDOWN_WATCHDOG_S);
    _exit(0);
    return NULL;
}

int tg_cli_engine(int argc, char **argv)
{
    enum { O_LISTEN = 1, O_MODEL, O_SLOTS, O_CTX, O_THREADS, O_GPU, O_KV, O_BATCH, O_QUEUE,
           O_LOGLEVEL, O_LOGJSON, O_HELP, O_SPLIT };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, O_LISTEN},
        {"model", required_argument, NULL, O_MODEL},
        {"slots", required_argument, NULL, O_SLOTS},
        {"ctx", required_argument, NULL, O_CTX},
        {"threads", required_argument, NULL, O_THREADS},
        {"gpu-layers", required_argument, NULL, O_GPU},
        {"kv-type", required_argument, NULL, O_KV},
        {"kv-split", required_argument, NULL, O_SPLIT},
        {"batch", required_argument, NULL, O_BATCH},
        {"queue", required_argument, NULL, O_QUEUE},
        {"log-level", required_argument, NULL, O_LOGLEVEL},
        {"log-json", no_argument, NULL, O_LOGJSON},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    struct tg_engine_params ep = tg_engine_default_params();
    const char *listen = NULL;
    bool ok = true;

    optind = 1; /* argv[0] is the subcommand; getopt starts after it */
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case O_LISTEN: listen = optarg; break;
        case O_MODEL: ep.model_path = optarg; break;
        case O_SLOTS: ok &= parse_int("--slots", optarg, 1, 64, &ep.n_slots); break;
        case O_CTX: ok &= parse_int("--ctx", optarg, 16, INT32_MAX, &ep.n_ctx); break;
        case O_THREADS: ok &= parse_int("--threads", optarg, 1, 1024, &ep.n_threads); break;
        case O_GPU: ok &= parse_int("--gpu-layers", optarg, -1, 100000, &ep.n_gpu_layers); break;
        case O_KV: ep.kv_cache_type = optarg; break;
        case O_SPLIT: {
            int32_t v = 1;
            ok &= parse_int("--kv-split", optarg, 0, 1, &v);
            ep.kv_split = v == 1;
            break;
        }
        case O_BATCH: ok &= parse_int("--batch", optarg, 1, 1 << 20, &ep.n_batch); break;
        case O_QUEUE: ok &= parse_int("--queue", optarg, 1, 1 << 20, &ep.queue_max); break;
        case O_LOGLEVEL: {
            enum tg_log_level lv;
            if (tg_log_level_parse(optarg, &lv)) {
                tg_log_set_level(lv);
            } else {
                fprintf(stderr, "tiergate engine: unknown --log-level '%s'\n", optarg);
                ok = false;
            }
            break;
        }
        case O_LOGJSON: tg_log_set_json(true); break;
        case O_HELP: usage(stdout); return 0;
        default:
            fprintf(stderr, "tiergate engine: unknown or incomplete option '%s'\n",
                    argv[optind - 1]);
            ok = false;
            break;
        }
    }
    if (ok && optind < argc) {
        fprintf(stderr, "tiergate engine: unexpected argument '%s'\n", argv[optind]);
        ok = false;
    }
    if (ok && (listen == NULL || ep.model_path == NULL)) {
        fprintf(stderr, "tiergate engine: --listen and --model are required\n");
        ok = false;
    }
    if (!ok) {
        usage(stderr);
        return 2;
    }

    /* Block the stop signals before any thread exists so that only sigwait sees them. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    int prc = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (prc != 0) {
        tg_error("engine worker: cannot block signals: %s", strerror(prc));
        return 1;
    }

    char err[512] = "";
    struct tg_engine *eng = NULL;
    tg_info("engine worker: loading %s (slots %d, ctx %d, threads %d, gpu layers %d)",
            ep.model_path, (int)ep.n_slots, (int)ep.n_ctx, (int)ep.n_threads,
            (int)ep.n_gpu_layers);
    int rc = tg_engine_create(&ep, &eng, err, sizeof(err));
    if (rc != TG_OK) {
        tg_error("engine worker: cannot start the engine: %s (%s)", err, tg_errname(rc));
        return 1;
    }
    struct tg_engine_info info;
    tg_engine_info(eng, &info);
    tg_info("engine worker: model '%s' (%s), %d slots, %d KV cells (%s: %d per job)%s",
            info.model_name, info.model_desc, (int)info.n_slots, (int)info.n_ctx,
            info.kv_split ? "split" : "unified", (int)info.n_ctx_seq,
            info.random_weights ? ", random weights" : "");

    struct tg_engine_server *srv = NULL;
    rc = tg_engine_server_start(eng, listen, NULL, &srv, err, sizeof(err));
    if (rc != TG_OK) {
        tg_error("engine worker: %s (%s)", err, tg_errname(rc));
        tg_engine_destroy(eng);
        return 1;
    }
    tg_info("engine worker ready on %s (pid %ld)", listen, (long)getpid());

    int sig = 0;
    for (;;) {
        struct timespec tmo = {.tv_sec = STATS_LOG_INTERVAL_S, .tv_nsec = 0};
        sig = sigtimedwait(&set, NULL, &tmo);
        if (sig == -1 && errno == EINTR)
            continue; /* e.g. SIGSTOP/SIGCONT */
        if (sig == -1 && errno == EAGAIN) {
            struct tg_engine_stats st;
            tg_engine_stats(eng, &st);
            tg_info("engine worker: %d/%d slots busy, %d queued, %llu jobs done, %.1f tokens/s",
                    (int)st.slots_busy, (int)st.n_slots, (int)st.queue_depth,
                    (unsigned long long)st.jobs_done, st.tokens_per_s);
            continue;
        }
        if (sig == -1) {
            tg_error("engine worker: sigtimedwait: %s", strerror(errno));
            break;
        }
        if (sig == SIGHUP) {
            tg_info("engine worker: SIGHUP ignored (nothing to reload; restart to change the "
                    "model)");
            continue;
        }
        break;
    }
    tg_info("engine worker: %s, shutting down", sig > 0 ? strsignal(sig) : "error");
    /* nng 1.5 can hang in nng_close while tearing down a connection (nanomsg/nng#1543): by
     * then our jobs are cancelled and the engine is idle, so a watchdog ends the process
     * rather than leave a worker that never exits. */
    pthread_t wd;
    int wrc = pthread_create(&wd, NULL, shutdown_watchdog, NULL);
    if (wrc == 0)
        pthread_detach(wd);
    else
        tg_warn("engine worker: no shutdown watchdog: %s", strerror(wrc));
    tg_engine_server_stop(srv);
    tg_engine_destroy(eng);
    tg_info("engine worker: stopped");
    return sig > 0 ? 0 : 1;
}
