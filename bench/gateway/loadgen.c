/* tg-loadgen: a fixed-rate (open-loop) HTTP/1.1 load generator, wrk2-style, for bench/gateway.
 *
 * Requests are scheduled at exact intended times (rate per second); each goes out on an idle
 * keep-alive connection as soon as it is due. Two latencies are recorded per request:
 *   service   write of the request -> last byte of the response
 *   corrected intended send time -> last byte (includes queueing when the target falls behind:
 *             no coordinated omission)
 * Only Content-Length responses are supported (the benchmark is non-streaming).
 *
 *   tg-loadgen --url http://127.0.0.1:8080/v1/chat/completions --rate 5000 --duration 10
 *              [--connections 64] [--warmup 2] [--header "K: V"]... [--body STR | --body-file F]
 *   tg-loadgen --idle-conns N --url http://127.0.0.1:8080/v1/models --hold 30
 *              (open N keep-alive connections, one GET each, then keep them idle)
 *
 * Output: one JSON line with rate, counts and percentiles in microseconds.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

struct conn;

struct lg {
    struct event_base *base;
    struct sockaddr_in addr;
    char *request; /* the full HTTP request bytes */
    size_t request_len;
    double rate;
    int64_t start_ns, warm_end_ns, end_ns, interval_ns;
    int64_t next_ns;  /* intended time of the next request */
    int64_t *backlog; /* intended times waiting for a connection (ring) */
    size_t bl_head, bl_len, bl_cap;
    struct conn **idle;
    size_t n_idle;
    struct conn *conns;
    int n_conns;
    struct event *tick;
    int64_t *service, *corrected;
    size_t n_samples, cap_samples;
    uint64_t sent, ok, errors, non2xx, reconnects;
    bool stopping;
    /* idle mode */
    int idle_target, idle_ready;
};

struct conn {
    struct lg *lg;
    struct bufferevent *bev;
    bool busy;
    int64_t intended_ns, sent_ns;
    int idx;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void conn_open(struct conn *c);

static void dispatch_due(struct lg *g);

static void conn_done(struct conn *c, bool ok, int status)
{
    struct lg *g = c->lg;
    int64_t t = now_ns();
    if (ok && c->intended_ns >= g->warm_end_ns && c->intended_ns < g->end_ns) {
        if (status >= 200 && status < 300) {
            g->ok++;
            if (g->n_samples < g->cap_samples) {
                g->service[g->n_samples] = t - c->sent_ns;
                g->corrected[g->n_samples] = t - c->intended_ns;
                g->n_samples++;
            }
        } else {
            g->non2xx++;
        }
    }
    c->busy = false;
    g->idle[g->n_idle++] = c;
    dispatch_due(g);
}

static void on_read(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        struct evbuffer_ptr p = evbuffer_search(in, "\r\n\r\n", 4, NULL);
        if (p.pos < 0)
            return;
        size_t hlen = (size_t)p.pos + 4;
        char *h = (char *)evbuffer_pullup(in, (ev_ssize_t)hlen);
        int status = 0;
        if (hlen > 12 && strncmp(h, "HTTP/1.", 7) == 0)
            status = (int)strtol(h + 9, NULL, 10);
        long clen = -1;
        for (size_t i = 0; i + 16 < hlen; i++) {
            if ((h[i] == '\n') && strncasecmp(h + i + 1, "content-length:", 15) == 0) {
                clen = strtol(h + i + 16, NULL, 10);
                break;
            }
        }
        if (clen < 0) {
            /* unsupported framing: count as an error and reconnect */
            c->lg->errors++;
            bufferevent_free(c->bev);
            c->bev = NULL;
            c->busy = false;
            conn_open(c);
            return;
        }
        if (evbuffer_get_length(in) < hlen + (size_t)clen)
            return;
        evbuffer_drain(in, hlen + (size_t)clen);
        if (c->lg->idle_target > 0) {
            c->lg->idle_ready++;
            c->busy = false;
            continue;
        }
        if (c->busy)
            conn_done(c, true, status);
    }
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    struct lg *g = c->lg;
    if (what & BEV_EVENT_CONNECTED) {
        int one = 1;
        setsockopt(bufferevent_getfd(bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (g->idle_target > 0) {
            bufferevent_write(bev, g->request, g->request_len);
            return;
        }
        g->idle[g->n_idle++] = c;
        dispatch_due(g);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        bool was_busy = c->busy;
        if (was_busy)
            g->errors++;
        else {
            /* remove from the idle list */
            for (size_t i = 0; i < g->n_idle; i++)
                if (g->idle[i] == c) {
                    g->idle[i] = g->idle[--g->n_idle];
                    break;
                }
        }
        bufferevent_free(c->bev);
        c->bev = NULL;
        c->busy = false;
        if (!g->stopping && g->idle_target == 0) {
            g->reconnects++;
            conn_open(c);
        }
    }
}

static void conn_open(struct conn *c)
{
    c->bev = bufferevent_socket_new(c->lg->base, -1, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, (struct sockaddr *)&c->lg->addr, sizeof c->lg->addr) !=
        0) {
        c->lg->errors++;
    }
}

static void send_on(struct conn *c, int64_t intended)
{
    c->busy = true;
    c->intended_ns = intended;
    c->sent_ns = now_ns();
    c->lg->sent++;
    bufferevent_write(c->bev, c->lg->request, c->lg->request_len);
}

static void dispatch_due(struct lg *g)
{
    while (g->n_idle > 0 && g->bl_len > 0) {
        int64_t t = g->backlog[g->bl_head];
        g->bl_head = (g->bl_head + 1) % g->bl_cap;
        g->bl_len--;
        send_on(g->idle[--g->n_idle], t);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct lg *g = arg;
    int64_t t = now_ns();
    if (t >= g->end_ns) {
        g->stopping = true;
        event_base_loopexit(g->base, &(struct timeval){0, 200000}); /* let in-flight answers land */
        return;
    }
    while (g->next_ns <= t) {
        if (g->bl_len == g->bl_cap) {
            g->errors++; /* hopelessly behind: drop (counted) */
        } else {
            g->backlog[(g->bl_head + g->bl_len) % g->bl_cap] = g->next_ns;
            g->bl_len++;
        }
        g->next_ns += g->interval_ns;
    }
    dispatch_due(g);
    int64_t wait = g->next_ns - now_ns();
    if (wait < 0)
        wait = 0;
    struct timeval tv = {.tv_sec = wait / 1000000000, .tv_usec = (wait % 1000000000) / 1000};
    evtimer_add(g->tick, &tv);
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(int64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return (double)v[i] / 1000.0;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s == NULL || fread(s, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(s);
        return NULL;
    }
    s[n] = '\0';
    fclose(f);
    return s;
}

int main(int argc, char **argv)
{
    struct lg g;
    memset(&g, 0, sizeof g);
    const char *url = NULL, *body = NULL;
    char *body_alloc = NULL;
    double duration = 10, warmup = 1;
    int conns = 64, hold = 0;
    const char *headers[32];
    int n_headers = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL)
            goto usage;
        if (strcmp(a, "--url") == 0)
            url = v;
        else if (strcmp(a, "--rate") == 0)
            g.rate = strtod(v, NULL);
        else if (strcmp(a, "--duration") == 0)
            duration = strtod(v, NULL);
        else if (strcmp(a, "--warmup") == 0)
            warmup = strtod(v, NULL);
        else if (strcmp(a, "--connections") == 0)
            conns = (int)strtol(v, NULL, 10);
        else if (strcmp(a, "--header") == 0 && n_headers < 32)
            headers[n_headers++] = v;
        else if (strcmp(a, "--body") == 0)
            body = v;
        else if (strcmp(a, "--body-file") == 0) {
            body_alloc = read_file(v);
            if (body_alloc == NULL) {
                fprintf(stderr, "cannot read %s\n", v);
                return 2;
            }
            body = body_alloc;
        } else if (strcmp(a, "--idle-conns") == 0)
            g.idle_target = (int)strtol(v, NULL, 10);
        else if (strcmp(a, "--hold") == 0)
            hold = (int)strtol(v, NULL, 10);
        else
            goto usage;
        i++;
    }
    if (url == NULL || strncmp(url, "http://", 7) != 0 || (g.rate <= 0 && g.idle_target <= 0) ||
        conns < 1)
        goto usage;
    char host[256];
    int port = 80;
    const char *hp = url + 7;
    const char *slash = strchr(hp, '/');
    const char *path = slash != NULL ? slash : "/";
    size_t hl = slash != NULL ? (size_t)(slash - hp) : strlen(hp);
    if (hl >= sizeof host)
        goto usage;
    memcpy(host, hp, hl);
    host[hl] = '\0';
    char *colon = strchr(host, ':');
    if (colon != NULL) {
        *colon = '\0';
        port = (int)strtol(colon + 1, NULL, 10);
    }
    g.addr.sin_family = AF_INET;
    g.addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &g.addr.sin_addr) != 1) {
        fprintf(stderr, "host must be an IPv4 address\n");
        return 2;
    }
    /* Build the request once. */
    size_t cap = 4096 + (body != NULL ? strlen(body) : 0);
    g.request = malloc(cap);
    int off = snprintf(g.request, cap, "%s %s HTTP/1.1\r\nHost: %s:%d\r\n",
                       body != NULL ? "POST" : "GET", path, host, port);
    for (int i = 0; i < n_headers; i++)
        off += snprintf(g.request + off, cap - (size_t)off, "%s\r\n", headers[i]);
    if (body != NULL)
        off += snprintf(g.request + off, cap - (size_t)off,
                        "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                        strlen(body), body);
    else
        off += snprintf(g.request + off, cap - (size_t)off, "\r\n");
    g.request_len = (size_t)off;
    signal(SIGPIPE, SIG_IGN);

    struct event_config *ecfg = event_config_new();
    event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    g.base = event_base_new_with_config(ecfg);
    event_config_free(ecfg);

    if (g.idle_target > 0) {
        g.n_conns = g.idle_target;
        g.conns = calloc((size_t)g.n_conns, sizeof *g.conns);
        g.idle = calloc((size_t)g.n_conns, sizeof *g.idle);
        for (int i = 0; i < g.n_conns; i++) {
            g.conns[i].lg = &g;
            g.conns[i].idx = i;
            conn_open(&g.conns[i]);
            if (i % 500 == 499) /* pace the connects a little so the accept queue keeps up */
                event_base_loop(g.base, EVLOOP_NONBLOCK);
        }
        int64_t deadline = now_ns() + 60LL * 1000000000;
        while (g.idle_ready + (int)g.errors < g.idle_target && now_ns() < deadline)
            event_base_loop(g.base, EVLOOP_ONCE);
        printf("{\"idle_connections\":%d,\"errors\":%llu}\n", g.idle_ready,
               (unsigned long long)g.errors);
        fflush(stdout);
        event_base_loopexit(g.base, &(struct timeval){hold, 0});
        event_base_dispatch(g.base);
        return 0;
    }

    g.n_conns = conns;
    g.conns = calloc((size_t)conns, sizeof *g.conns);
    g.idle = calloc((size_t)conns, sizeof *g.idle);
    g.bl_cap = (size_t)(g.rate * 5) + 16;
    g.backlog = calloc(g.bl_cap, sizeof *g.backlog);
    g.cap_samples = (size_t)(g.rate * (duration + 1)) + 16;
    g.service = calloc(g.cap_samples, sizeof *g.service);
    g.corrected = calloc(g.cap_samples, sizeof *g.corrected);
    for (int i = 0; i < conns; i++) {
        g.conns[i].lg = &g;
        g.conns[i].idx = i;
        conn_open(&g.conns[i]);
    }
    /* let the connections establish */
    int64_t until = now_ns() + 300000000;
    while (now_ns() < until && g.n_idle < (size_t)conns)
        event_base_loop(g.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    g.interval_ns = (int64_t)(1e9 / g.rate);
    g.start_ns = now_ns();
    g.warm_end_ns = g.start_ns + (int64_t)(warmup * 1e9);
    g.end_ns = g.warm_end_ns + (int64_t)(duration * 1e9);
    g.next_ns = g.start_ns;
    g.tick = evtimer_new(g.base, on_tick, &g);
    struct timeval zero = {0, 0};
    evtimer_add(g.tick, &zero);
    event_base_dispatch(g.base);

    qsort(g.service, g.n_samples, sizeof *g.service, cmp64);
    qsort(g.corrected, g.n_samples, sizeof *g.corrected, cmp64);
    double achieved = (double)g.n_samples / duration;
    printf(
        "{\"target_rate\":%.0f,\"achieved_rate\":%.1f,\"sent\":%llu,\"ok\":%llu,\"non2xx\":%llu,"
        "\"errors\":%llu,"
        "\"reconnects\":%llu,\"service_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,"
        "\"max\":%.1f},"
        "\"corrected_us\":{\"p50\":%.1f,\"p90\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f}}\n",
        g.rate, achieved, (unsigned long long)g.sent, (unsigned long long)g.ok,
        (unsigned long long)g.non2xx, (unsigned long long)g.errors,
        (unsigned long long)g.reconnects, pct(g.service, g.n_samples, 50),
        pct(g.service, g.n_samples, 90), pct(g.service, g.n_samples, 99),
        pct(g.service, g.n_samples, 99.9), pct(g.service, g.n_samples, 100),
        pct(g.corrected, g.n_samples, 50), pct(g.corrected, g.n_samples, 90),
        pct(g.corrected, g.n_samples, 99), pct(g.corrected, g.n_samples, 99.9),
        pct(g.corrected, g.n_samples, 100));
    for (int i = 0; i < conns; i++)
        if (g.conns[i].bev != NULL)
            bufferevent_free(g.conns[i].bev);
    event_free(g.tick);
    event_base_free(g.base);
    free(g.conns);
    free(g.idle);
    free(g.backlog);
    free(g.service);
    free(g.corrected);
    free(g.request);
    free(body_alloc);
    return 0;
usage:
    fprintf(stderr,
            "usage: tg-loadgen --url http://IP:PORT/path (--rate R [--duration S] [--warmup S] "
            "[--connections C] | --idle-conns N [--hold S]) [--header 'K: V']... "
            "[--body STR | --body-file F]\n");
    return 2;
}
