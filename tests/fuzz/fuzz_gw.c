/* The in-process gateway of the gateway fuzz targets; see fuzz_gw.h. */
#include "fuzz_gw.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>

#include "tg/config.h"
#include "tg/err.h"
#include "tg/log.h"

/* Port 1 on loopback: nothing listens there, so connects are refused at once. */
static const char k_config[] =
    "server:\n"
    "  listen: 127.0.0.1:1\n"
    "  open_mode: true\n"
    "  max_body_bytes: 65536\n"
    "  header_timeout_ms: 1000\n"
    "  read_timeout_ms: 2000\n"
    "  log_level: off\n"
    "redis:\n  enabled: false\n"
    "cache:\n  enabled: false\n"
    "providers:\n"
    "  dead:\n    kind: openai\n    base_url: http://127.0.0.1:1/v1\n    api_key: sk-fuzz\n"
    "    retries: 0\n    connect_timeout_ms: 500\n    circuit_failures: 10000\n"
    "  dead-anthropic:\n    kind: anthropic\n    base_url: http://127.0.0.1:1/v1\n"
    "    api_key: sk-ant-fuzz\n    retries: 0\n    connect_timeout_ms: 500\n"
    "    circuit_failures: 10000\n"
    "models:\n"
    "  - {name: gpt-x, tier: remote, provider: dead, input_usd_per_mtok: 0.15, "
    "output_usd_per_mtok: 0.6, fallbacks: [claude-x]}\n"
    "  - {name: claude-x, tier: remote, provider: dead-anthropic, upstream_model: claude-3-5, "
    "input_usd_per_mtok: 3, output_usd_per_mtok: 15}\n"
    "aliases:\n  auto: {remote: gpt-x}\n"
    "metrics:\n  reference_model: gpt-x\n";

static struct tg_gateway *g_gw;
static struct sockaddr_un g_addr;
static socklen_t g_addrlen;

static void fz_free(void)
{
    tg_gateway_test_free(g_gw);
    g_gw = NULL;
}

/* The config loader reads files: hand it an anonymous in-memory one. */
static struct tg_config *load_config(void)
{
    int fd = memfd_create("fuzz-routes.yaml", MFD_CLOEXEC);
    if (fd == -1 || write(fd, k_config, sizeof k_config - 1) != (ssize_t)(sizeof k_config - 1)) {
        fprintf(stderr, "fuzz: memfd: %s\n", strerror(errno));
        if (fd != -1)
            close(fd);
        return NULL;
    }
    char path[64], err[1024];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    struct tg_config *cfg = NULL;
    int rc = tg_config_load(path, &cfg, err, sizeof err);
    close(fd);
    if (rc != TG_OK) {
        fprintf(stderr, "fuzz: config: %s\n", err);
        return NULL;
    }
    return cfg;
}

struct tg_gateway *fz_gateway(void)
{
    if (g_gw != NULL)
        return g_gw;
    tg_log_set_level(TG_LOG_OFF);
    struct tg_config *cfg = load_config();
    if (cfg == NULL)
        return NULL;
    /* An abstract unix socket: no file, no port, no TIME_WAIT however many connections. */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int n = snprintf(a.sun_path + 1, sizeof a.sun_path - 1, "tiergate-fuzz-%d", (int)getpid());
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    if (fd == -1 || bind(fd, (struct sockaddr *)&a, alen) == -1 || listen(fd, 64) == -1) {
        fprintf(stderr, "fuzz: listen: %s\n", strerror(errno));
        if (fd != -1)
            close(fd);
        tg_config_unref(cfg);
        return NULL;
    }
    g_addr = a;
    g_addrlen = alen;
    if (tg_gateway_test_new(cfg, fd, &g_gw) != TG_OK) {
        fprintf(stderr, "fuzz: the gateway did not start\n");
        return NULL;
    }
    atexit(fz_free);
    return g_gw;
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    *(bool *)arg = true;
}

bool fz_run_until(struct tg_gateway *gw, const bool *done, int timeout_ms)
{
    struct event_base *base = gw->workers[0].base;
    bool expired = false;
    struct event *t = evtimer_new(base, on_timeout, &expired);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    if (t == NULL || evtimer_add(t, &tv) != 0)
        abort();
    while (!*done && !expired)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    return *done;
}

int fz_connect(void)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -1;
    /* Unix sockets connect at once into the listen backlog: no loop turn needed. */
    if (connect(fd, (struct sockaddr *)&g_addr, g_addrlen) == -1) {
        close(fd);
        return -1;
    }
    return fd;
}
