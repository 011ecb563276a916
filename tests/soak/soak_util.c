#include "soak_util.h"

#include "tg_testlib.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

long soak_raise_nofile(long want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    rlim_t target = (rlim_t)want;
    if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max)
        target = rl.rlim_max;
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= target)
        return rl.rlim_cur == RLIM_INFINITY ? want : (long)rl.rlim_cur;
    rl.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        fprintf(stderr, "setrlimit(NOFILE, %ld): %s\n", (long)target, strerror(errno));
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    return (long)rl.rlim_cur;
}

long soak_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

/* inode -> which kind of peer; sorted for bsearch */
struct sock_class {
    unsigned long inode;
    int kind; /* 1 client, 2 upstream, 3 redis, 0 other */
};

static int cmp_inode(const void *a, const void *b)
{
    unsigned long x = ((const struct sock_class *)a)->inode;
    unsigned long y = ((const struct sock_class *)b)->inode;
    return x < y ? -1 : x > y;
}

static void read_tcp_table(const char *path, int lport_want, int up_port, int redis_port,
                           struct sock_class **v, size_t *n, size_t *cap)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return; /* no IPv6 in this namespace: nothing to add */
    char line[512];
    if (fgets(line, sizeof line, f) == NULL) { /* the header line */
        fclose(f);
        return;
    }
    while (fgets(line, sizeof line, f) != NULL) {
        unsigned lport = 0, rport = 0, st = 0;
        unsigned long inode = 0;
        /* sl: local:port remote:port st tx:rx tr:when retrnsmt uid timeout inode */
        if (sscanf(line,
                   " %*d: %*[0-9A-Fa-f]:%x %*[0-9A-Fa-f]:%x %x %*x:%*x %*x:%*x %*x %*u %*u %lu",
                   &lport, &rport, &st, &inode) != 4 ||
            inode == 0)
            continue;
        int kind = 0;
        if (st != 0x0A && lport_want > 0 && (int)lport == lport_want) /* 0x0A = LISTEN */
            kind = 1;
        else if (up_port > 0 && (int)rport == up_port)
            kind = 2;
        else if (redis_port > 0 && (int)rport == redis_port)
            kind = 3;
        if (kind == 0)
            continue;
        if (*n == *cap) {
            size_t nc = *cap != 0 ? *cap * 2 : 1024;
            struct sock_class *nv = realloc(*v, nc * sizeof *nv);
            if (nv == NULL)
                break;
            *v = nv;
            *cap = nc;
        }
        (*v)[(*n)++] = (struct sock_class){inode, kind};
    }
    fclose(f);
}

bool soak_count_fds(pid_t pid, int listen_port, int upstream_port, int redis_port,
                    struct soak_fds *out)
{
    memset(out, 0, sizeof *out);
    char path[64];
    struct sock_class *v = NULL;
    size_t n = 0, cap = 0;
    snprintf(path, sizeof path, "/proc/%d/net/tcp", (int)pid);
    read_tcp_table(path, listen_port, upstream_port, redis_port, &v, &n, &cap);
    snprintf(path, sizeof path, "/proc/%d/net/tcp6", (int)pid);
    read_tcp_table(path, listen_port, upstream_port, redis_port, &v, &n, &cap);
    if (n > 0)
        qsort(v, n, sizeof *v, cmp_inode);

    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL) {
        free(v);
        return false;
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        out->total++;
        char link[320], target[64];
        snprintf(link, sizeof link, "%s/%s", path, de->d_name);
        ssize_t len = readlink(link, target, sizeof target - 1);
        if (len <= 0)
            continue; /* closed between readdir and readlink */
        target[len] = '\0';
        unsigned long inode = 0;
        if (sscanf(target, "socket:[%lu]", &inode) != 1 || n == 0)
            continue;
        struct sock_class key = {inode, 0};
        const struct sock_class *hit = bsearch(&key, v, n, sizeof *v, cmp_inode);
        if (hit == NULL)
            continue;
        if (hit->kind == 1)
            out->client++;
        else if (hit->kind == 2)
            out->upstream++;
        else if (hit->kind == 3)
            out->redis++;
    }
    closedir(d);
    free(v);
    return true;
}

double soak_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}


long soak_env_long(const char *name, long def, long lo, long hi)
{
    const char *s = getenv(name);
    if (s == NULL || *s == '\0')
        return def;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "%s=%s ignored (want an integer in %ld..%ld), using %ld\n", name, s, lo, hi,
                def);
        return def;
    }
    return v;
}

#ifndef TG_FAKE_UPSTREAM
#define TG_FAKE_UPSTREAM TG_BINARY_DIR "/tests/tg-fake-upstream"
#endif
#define TIERGATE TG_BINARY_DIR "/gateway/tiergate"
/* sha256("secret") */
#define KEY_SHA "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"

static bool gw_ready(int port, int timeout_ms)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", port);
    for (int waited = 0; waited < timeout_ms; waited += 100) {
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

bool soak_gw_start(struct soak_gw *g, int redis_port, int header_timeout_ms)
{
    memset(g, 0, sizeof *g);
    g->redis_port = redis_port;
    g->fake_port = tg_test_free_port();
    snprintf(g->fake_log_path, sizeof g->fake_log_path, "/tmp/tg-soak-fake-%d.log", g->fake_port);
    char fport[16];
    snprintf(fport, sizeof fport, "%d", g->fake_port);
    char *fargv[] = {TG_FAKE_UPSTREAM, "--port", fport, "--no-record", NULL};
    g->fake_pid = tg_test_spawn(fargv, NULL, g->fake_log_path);
    if (g->fake_pid < 0 || !tg_test_wait_port(g->fake_port, 10000))
        return false;

    g->port = tg_test_free_port();
    snprintf(g->log_path, sizeof g->log_path, "/tmp/tg-soak-gw-%d.log", g->port);
    unlink(g->log_path);
    char redis[160];
    if (redis_port > 0)
        snprintf(redis, sizeof redis,
                 "redis:\n  url: redis://127.0.0.1:%d/0\n  command_timeout_ms: 2000\n"
                 "cache:\n  enabled: true\n  ttl_s: 3600\n",
                 redis_port);
    else
        snprintf(redis, sizeof redis, "redis:\n  enabled: false\ncache:\n  enabled: false\n");
    /* TG_SOAK_HEADER_TIMEOUT_MS reproduces the slowloris-sweep finding (test_soak_conns.c) */
    long header_ms = header_timeout_ms > 0
                         ? header_timeout_ms
                         : soak_env_long("TG_SOAK_HEADER_TIMEOUT_MS", 10000, 100, 600000);
    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "server:\n  listen: 127.0.0.1:%d\n  io_threads: 2\n  open_mode: false\n"
             "  idle_timeout_ms: 600000\n  header_timeout_ms: %ld\n  log_level: warn\n"
             "  api_keys:\n    - {name: soak, sha256: " KEY_SHA "}\n"
             "%s"
             "local:\n  model: %s\n  slots: 2\n  context: 1024\n  threads: 1\n"
             "  price_per_mtok_usd: 0.02\n"
             "providers:\n  fake:\n    kind: openai\n    base_url: http://127.0.0.1:%d/v1\n"
             "    api_key: sk-soak-provider\n    retries: 0\n    circuit_failures: 1000\n"
             "models:\n"
             "  - {name: phi-3.5-mini, tier: local, target: engine}\n"
             "  - {name: gpt-fake, tier: remote, provider: fake, input_usd_per_mtok: 0.15,"
             " output_usd_per_mtok: 0.6}\n"
             "metrics:\n  reference_model: gpt-fake\n",
             g->port, header_ms, redis, TG_TINY_MODEL, g->fake_port);
    const char *path = tg_test_write_temp("routes.yaml", cfg);
    if (path == NULL)
        return false;
    char *argv[] = {TIERGATE, "--config", (char *)path, NULL};
    g->gw_pid = tg_test_spawn(argv, NULL, g->log_path);
    if (g->gw_pid < 0 || !tg_test_wait_port(g->port, 30000) || !gw_ready(g->port, 60000))
        return false;
    usleep(300000); /* Redis connections come up in the background */
    return true;
}

int soak_gw_stop(struct soak_gw *g)
{
    int ws = -1;
    if (g->gw_pid > 0)
        ws = tg_test_stop(g->gw_pid, SIGTERM, 30000);
    if (g->fake_pid > 0)
        tg_test_stop(g->fake_pid, SIGTERM, 5000);
    g->gw_pid = g->fake_pid = 0;
    return ws;
}
