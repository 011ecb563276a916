/* Remote executor: libcurl multi_socket on the I/O thread's libevent loop (curl's
 * docs/examples/multi-event.c pattern), with per-attempt timers, retries, fallback and
 * circuit breakers. See upstream.h for the contract. */
#include <curl/curl.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <time.h>
#include <unistd.h>

#include "tg/err.h"
#include "tg/json.h"
#include "tg/log.h"
#include "upstream_int.h"

#define EASY_POOL_MAX 64
#define UP_IDLE_CONNS_MAX 256 /* idle upstream connections kept per I/O thread */

struct sock_ctx {
    struct event ev; /* embedded: no allocation when curl changes what it waits for */
    short kind;      /* flags ev is registered with, 0 = not added */
    bool parked;     /* curl released it (idle in its connection pool); ev still registered */
    curl_socket_t fd;
    struct tg_upstream_exec *ex;
    struct sock_ctx *prev, *next;
};

/* What the executor knows about one descriptor number. */
struct fd_slot {
    struct sock_ctx *sock; /* its event context, if any (active or parked) */
    bool owned;            /* a connection socket opened through our opensocket callback: its
                              close is reported to us (closesocket callback) */
};

struct tg_upstream_exec {
    struct event_base *base;
    CURLM *multi;
    CURLSH *share;
    struct event *timer;
    struct tg_upstream_exec_params params;
    struct tg_upstream_req *reqs; /* doubly linked, for destroy */
    size_t inflight;
    size_t n_active;     /* easy handles in the multi */
    struct event *drain; /* activated: read completions produced by a kick (this loop turn) */
    struct sock_ctx *socks;
    struct fd_slot *fds; /* indexed by descriptor number */
    size_t n_fds;
    CURL *pool[EASY_POOL_MAX]; /* reset easy handles, reused to save setup work */
    size_t n_pool;
    bool in_multi; /* inside curl_multi_socket_action (no add/remove allowed) */
    double wake_s; /* CLOCK_MONOTONIC seconds this socket/timer callback began; 0 outside one */
    size_t n_awaiting; /* attempts written to a provider that have not seen its status line */
    double reply_ewma_s; /* EWMA (weight 1/8) of their first-byte times, seconds; < 0: none yet */
};

struct tg_upstream_req {
    struct tg_upstream_exec *ex;
    struct tg_upstream_req *prev, *next;
    struct tg_upstream_handlers h;
    void *user;
    json_t *request;
    char *raw; /* copy of call->raw_body, NULL if none */
    size_t raw_len;
    const struct tg_cfg_model **targets;
    size_t n_targets, cur; /* cur: index of the target being tried */
    int tries_on_target;   /* attempts made on targets[cur] */
    bool stream, started, dropped, done;
    bool in_start;              /* inside tg_upstream_start: handlers must not run yet */
    bool body_only;             /* call->body_only */
    bool in_multi_handle;       /* easy is added to the multi */
    bool in_write;              /* inside on_write (on_chunk may ask for a pause) */
    bool paused, pause_pending; /* backpressure: provider reads stopped / to stop after on_write */
    char *request_id;
    char **extra; /* copied extra headers */
    size_t n_extra;
    struct tg_buf trail; /* "target: reason; ..." for the final error message */

    /* current attempt */
    CURL *easy;
    struct curl_slist *hdrs;
    struct tg_buf body_out;
    struct tg_buf resp; /* non-stream body or error body */
    struct tg_buf sse;  /* partial SSE event */
    struct up_stream st;
    bool forced_json, probe, got_headers, too_big, parse_failed;
    bool awaiting;     /* counted in ex->n_awaiting */
    double attempt_t0; /* CLOCK_MONOTONIC seconds the attempt was handed to curl */
    long http_status;
    int64_t retry_after_ms; /* from this attempt's headers, -1 if none */
    int64_t attempt_start_ms;
    struct event *timer; /* first-byte / idle timeout of the attempt, or the retry delay */
    enum { T_NONE, T_FIRST_BYTE, T_IDLE, T_RETRY } timer_kind;
    char curl_err[CURL_ERROR_SIZE];

    /* final failure details */
    int fail_status;
    json_t *fail_error;
    const char *fail_kind;
    const struct tg_cfg_model *last_target;

    struct tg_upstream_stats stats;
    int64_t start_ms;
};

static void advance(struct tg_upstream_req *rq);
static void check_multi_info(struct tg_upstream_exec *ex);

/* ---- global ---- */

int tg_upstream_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? TG_OK : TG_INTERNAL;
}

void tg_upstream_global_cleanup(void)
{
    curl_global_cleanup();
}

struct tg_upstream_exec_params tg_upstream_exec_default_params(void)
{
    return (struct tg_upstream_exec_params){.max_response_bytes = 8u << 20,
                                            .max_retry_after_ms = 10000,
                                            .max_backoff_ms = 5000,
                                            .max_host_connections = 0,
                                            .verify_tls = true};
}

/* ---- curl <-> libevent glue ---- */

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sock_free(struct tg_upstream_exec *ex, struct sock_ctx *s);

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    struct sock_ctx *s = arg;
    struct tg_upstream_exec *ex = s->ex;
    if (s->parked) {
        /* An idle pooled connection became readable: the provider closed it (or sent something
         * unasked). curl finds that out itself when it next picks the connection; stop watching
         * so the level-triggered event does not spin. */
        sock_free(ex, s);
        return;
    }
    int flags =
        ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running = 0;
    /* Stamped before curl reads: a response completed here was complete when the loop woke
     * (stats.complete_s, the gateway's overhead metric starts its second half there). */
    ex->wake_s = mono_s();
    ex->in_multi = true;
    curl_multi_socket_action(ex->multi, fd, flags, &running);
    ex->in_multi = false;
    check_multi_info(ex);
    ex->wake_s = 0;
}

static void on_curl_timer(evutil_socket_t fd, short what, void *arg)
{
    struct tg_upstream_exec *ex = arg;
    int running = 0;
    ex->wake_s = mono_s();
    ex->in_multi = true;
    curl_multi_socket_action(ex->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    ex->in_multi = false;
    check_multi_info(ex);
    ex->wake_s = 0;
}

static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    check_multi_info(arg);
}

/* Completions found by a kick are read in this same loop turn, right after the current callback
 * (event_active, not a zero timer: a timer waits for the next turn's epoll_wait). With a fast
 * provider the answer often arrives during the kick; replying in the turn that read the request
 * lets libevent's changelist fold the client socket's read-disable and write-enable into one
 * epoll_ctl, and saves a loop turn of latency. */
static void drain_soon(struct tg_upstream_exec *ex)
{
    event_active(ex->drain, EV_TIMEOUT, 1);
}

static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct tg_upstream_exec *ex = userp;
    if (timeout_ms < 0) {
        evtimer_del(ex->timer);
        return 0;
    }
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    evtimer_add(ex->timer, &tv);
    return 0;
}

static void sock_free(struct tg_upstream_exec *ex, struct sock_ctx *s)
{
    if ((size_t)s->fd < ex->n_fds && ex->fds[s->fd].sock == s)
        ex->fds[s->fd].sock = NULL;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        ex->socks = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    if (s->kind != 0)
        event_del(&s->ev);
    free(s);
}

static struct fd_slot *fd_slot(struct tg_upstream_exec *ex, curl_socket_t fd, bool grow)
{
    if (fd < 0)
        return NULL;
    if ((size_t)fd >= ex->n_fds) {
        if (!grow)
            return NULL;
        size_t n = ex->n_fds > 0 ? ex->n_fds : 64;
        while (n <= (size_t)fd)
            n *= 2;
        struct fd_slot *m = realloc(ex->fds, n * sizeof *m);
        if (m == NULL)
            return NULL;
        memset(m + ex->n_fds, 0, (n - ex->n_fds) * sizeof *m);
        ex->fds = m;
        ex->n_fds = n;
    }
    return &ex->fds[fd];
}

/* Connection sockets are opened and closed through these two callbacks so that the executor
 * knows when a descriptor number stops being the one it registered: a socket curl released
 * stays registered with libevent ("parked") while its connection idles in curl's pool, and
 * libevent must be told before the descriptor is closed (a closed-then-reused number would
 * otherwise never be polled). Parking saves an epoll_ctl pair per reused-connection request. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose,
                                    struct curl_sockaddr *addr)
{
    struct tg_upstream_exec *ex = clientp;
    curl_socket_t fd = socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
    if (fd == CURL_SOCKET_BAD)
        return CURL_SOCKET_BAD;
    struct fd_slot *slot = fd_slot(ex, fd, true);
    if (slot != NULL)
        slot->owned = true; /* if NULL (no memory), it is simply never parked */
    return fd;
}

static int on_close_socket(void *clientp, curl_socket_t fd)
{
    struct tg_upstream_exec *ex = clientp;
    struct fd_slot *slot = fd_slot(ex, fd, false);
    if (slot != NULL) {
        if (slot->sock != NULL)
            sock_free(ex, slot->sock); /* event_del while the descriptor is still open */
        slot->owned = false;
    }
    return close(fd) == 0 ? 0 : 1;
}

static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct tg_upstream_exec *ex = userp;
    struct sock_ctx *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s != NULL) {
            curl_multi_assign(ex->multi, fd, NULL);
            struct fd_slot *slot = fd_slot(ex, fd, false);
            if (slot != NULL && slot->owned && s->kind == (EV_READ | EV_PERSIST))
                s->parked = true; /* keep the registration for the connection's next request */
            else
                sock_free(ex, s);
        }
        return 0;
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) |
                         ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    if (s == NULL) {
        struct fd_slot *slot = fd_slot(ex, fd, false);
        if (slot != NULL && slot->sock != NULL) {
            s = slot->sock; /* a parked socket picked up again: its event may already fit */
            s->parked = false;
        } else {
            s = calloc(1, sizeof *s);
            if (s == NULL)
                return -1;
            s->fd = fd;
            s->ex = ex;
            s->next = ex->socks;
            if (ex->socks != NULL)
                ex->socks->prev = s;
            ex->socks = s;
            slot = fd_slot(ex, fd, true);
            if (slot != NULL)
                slot->sock = s;
        }
        curl_multi_assign(ex->multi, fd, s);
        if (s->kind == kind)
            return 0;
        if (s->kind != 0)
            event_del(&s->ev);
    } else if (s->kind == kind) {
        return 0;
    } else if (s->kind != 0) {
        event_del(&s->ev);
    }
    if (event_assign(&s->ev, ex->base, fd, kind, on_socket_event, s) != 0 ||
        event_add(&s->ev, NULL) != 0) {
        s->kind = 0;
        return -1;
    }
    s->kind = kind;
    return 0;
}

/* ---- executor ---- */

struct tg_upstream_exec *tg_upstream_exec_create(struct event_base *base,
                                                 const struct tg_upstream_exec_params *params)
{
    if (base == NULL)
        return NULL;
    struct tg_upstream_exec *ex = calloc(1, sizeof *ex);
    if (ex == NULL)
        return NULL;
    ex->base = base;
    ex->reply_ewma_s = -1;
    ex->params = params != NULL ? *params : tg_upstream_exec_default_params();
    struct tg_upstream_exec_params d = tg_upstream_exec_default_params();
    if (ex->params.max_response_bytes == 0)
        ex->params.max_response_bytes = d.max_response_bytes;
    if (ex->params.max_retry_after_ms <= 0)
        ex->params.max_retry_after_ms = d.max_retry_after_ms;
    if (ex->params.max_backoff_ms <= 0)
        ex->params.max_backoff_ms = d.max_backoff_ms;
    /* Executors are created by the I/O threads after tg_metrics_init: a good moment to let the
     * /metrics scrape see the breakers. */
    up_metrics_register();
    ex->multi = curl_multi_init();
    ex->share = curl_share_init();
    ex->timer = evtimer_new(base, on_curl_timer, ex);
    ex->drain = evtimer_new(base, on_drain, ex);
    if (ex->multi == NULL || ex->share == NULL || ex->timer == NULL || ex->drain == NULL) {
        tg_upstream_exec_destroy(ex);
        return NULL;
    }
    /* One thread uses this share: no lock functions needed. DNS answers are shared by every
     * transfer of the thread, so a request never waits on a lookup another one already did. */
    curl_share_setopt(ex->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(ex->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_multi_setopt(ex->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
    curl_multi_setopt(ex->multi, CURLMOPT_SOCKETDATA, ex);
    curl_multi_setopt(ex->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(ex->multi, CURLMOPT_TIMERDATA, ex);
    curl_multi_setopt(ex->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    /* curl's default idle-connection cache is 4 x the easy handles in the multi *at that moment*:
     * when a burst drains to a few transfers, the connections beyond that are closed, and the next
     * burst pays new TCP (and TLS) handshakes on both ends (5 % of requests under a 5 000 req/s
     * open-loop load with 32 clients). Keep a fixed pool instead; curl still drops connections
     * idle longer than CURLOPT_MAXAGE_CONN (118 s by default) and ones the provider closed. */
    curl_multi_setopt(ex->multi, CURLMOPT_MAXCONNECTS, (long)UP_IDLE_CONNS_MAX);
    /* No cap by default: LLM streams are long-lived, and a per-host cap on an HTTP/1.1 provider
     * would queue requests inside curl where no timeout of ours sees them. */
    if (ex->params.max_host_connections > 0)
        curl_multi_setopt(ex->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
                          ex->params.max_host_connections);
    return ex;
}

size_t tg_upstream_exec_inflight(const struct tg_upstream_exec *ex)
{
    return ex != NULL ? ex->inflight : 0;
}

bool tg_upstream_exec_reply_due(const struct tg_upstream_exec *ex, double within_s)
{
    return ex != NULL && ex->n_awaiting > 0 && ex->reply_ewma_s >= 0 &&
           ex->reply_ewma_s <= within_s;
}

/* The attempt stops waiting for its provider's first byte. sample: it arrived (the status line),
 * so its time since the attempt started feeds the executor's EWMA; failures and cancels do not. */
static void awaiting_end(struct tg_upstream_req *rq, bool sample)
{
    struct tg_upstream_exec *ex = rq->ex;
    if (!rq->awaiting)
        return;
    rq->awaiting = false;
    ex->n_awaiting--;
    if (!sample)
        return;
    double t = (ex->wake_s > 0 ? ex->wake_s : mono_s()) - rq->attempt_t0;
    if (t < 0)
        t = 0;
    ex->reply_ewma_s = ex->reply_ewma_s < 0 ? t : ex->reply_ewma_s + (t - ex->reply_ewma_s) / 8;
}

/* ---- request bookkeeping ---- */

static void attempt_release(struct tg_upstream_req *rq)
{
    struct tg_upstream_exec *ex = rq->ex;
    awaiting_end(rq, false);
    if (rq->easy != NULL) {
        if (rq->in_multi_handle) {
            curl_multi_remove_handle(ex->multi, rq->easy);
            rq->in_multi_handle = false;
            ex->n_active--;
        }
        if (ex->n_pool < EASY_POOL_MAX) {
            curl_easy_reset(rq->easy);
            ex->pool[ex->n_pool++] = rq->easy;
        } else {
            curl_easy_cleanup(rq->easy);
        }
        rq->easy = NULL;
    }
    curl_slist_free_all(rq->hdrs);
    rq->hdrs = NULL;
    if (rq->timer != NULL)
        evtimer_del(rq->timer);
    rq->timer_kind = T_NONE;
    tg_buf_reset(&rq->body_out);
    tg_buf_reset(&rq->resp);
    tg_buf_reset(&rq->sse);
    up_stream_clear(&rq->st);
}

static void req_free(struct tg_upstream_req *rq)
{
    struct tg_upstream_exec *ex = rq->ex;
    if (rq->probe && rq->easy != NULL)
        up_circuit_release(rq->targets[rq->cur]->name); /* cancelled mid-probe: no verdict */
    attempt_release(rq);
    if (rq->prev != NULL)
        rq->prev->next = rq->next;
    else
        ex->reqs = rq->next;
    if (rq->next != NULL)
        rq->next->prev = rq->prev;
    ex->inflight--;
    if (rq->timer != NULL)
        event_free(rq->timer);
    json_decref(rq->request);
    free(rq->raw);
    json_decref(rq->fail_error);
    free(rq->targets);
    free(rq->request_id);
    for (size_t i = 0; i < rq->n_extra; i++)
        free(rq->extra[i]);
    free(rq->extra);
    tg_buf_free(&rq->trail);
    tg_buf_free(&rq->body_out);
    tg_buf_free(&rq->resp);
    tg_buf_free(&rq->sse);
    free(rq);
}

void tg_upstream_exec_destroy(struct tg_upstream_exec *ex)
{
    if (ex == NULL)
        return;
    while (ex->reqs != NULL)
        req_free(ex->reqs);
    for (size_t i = 0; i < ex->n_pool; i++)
        curl_easy_cleanup(ex->pool[i]);
    if (ex->multi != NULL)
        curl_multi_cleanup(ex->multi);
    if (ex->share != NULL)
        curl_share_cleanup(ex->share);
    while (ex->socks != NULL)
        sock_free(ex, ex->socks);
    free(ex->fds);
    if (ex->timer != NULL)
        event_free(ex->timer);
    if (ex->drain != NULL)
        event_free(ex->drain);
    free(ex);
}

static void stats_finish(struct tg_upstream_req *rq)
{
    rq->stats.upstream_s = (double)(up_now_ms() - rq->start_ms) / 1000.0;
}

static void finish_error(struct tg_upstream_req *rq, int status, json_t *error, const char *kind,
                         bool should_retry)
{
    stats_finish(rq);
    struct tg_upstream_error e = {.status = status,
                                  .error = error,
                                  .kind = kind,
                                  .started = rq->started,
                                  .should_retry = should_retry,
                                  .last_target = rq->last_target,
                                  .stats = rq->stats};
    rq->done = true;
    if (rq->h.on_error != NULL)
        rq->h.on_error(rq->user, &e);
    json_decref(error);
    req_free(rq);
}

/* ---- timers ---- */

static void arm(struct tg_upstream_req *rq, int kind, int64_t ms)
{
    if (ms <= 0 && kind != T_RETRY) {
        evtimer_del(rq->timer);
        rq->timer_kind = T_NONE;
        return;
    }
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000),
                         .tv_usec = (suseconds_t)((ms % 1000) * 1000)};
    rq->timer_kind = kind;
    evtimer_add(rq->timer, &tv);
}

static void attempt_failed(struct tg_upstream_req *rq, const char *kind, int status, json_t *error,
                           bool retryable, bool counts_for_circuit);

static void on_req_timer(evutil_socket_t fd, short what, void *arg)
{
    struct tg_upstream_req *rq = arg;
    int kind = rq->timer_kind;
    rq->timer_kind = T_NONE;
    if (kind == T_RETRY) {
        advance(rq);
        return;
    }
    const char *what_s = kind == T_FIRST_BYTE ? "first-byte"
                         : rq->stream         ? "stream-idle"
                                              : "body-idle";
    char msg[160];
    snprintf(msg, sizeof msg, "upstream %s timeout", what_s);
    attempt_failed(rq, "timeout", 504,
                   tg_json_error(msg, "timeout_error", NULL, "upstream_timeout"), true, true);
}

/* ---- curl callbacks ---- */

static int64_t parse_retry_after(const char *v, size_t n, bool ms)
{
    char buf[64];
    if (n >= sizeof buf)
        return -1;
    memcpy(buf, v, n);
    buf[n] = '\0';
    char *end = NULL;
    errno = 0;
    double d = strtod(buf, &end);
    if (end != buf && errno == 0 && d >= 0) {
        while (*end == ' ')
            end++;
        if (*end == '\0')
            return ms ? (int64_t)d : (int64_t)(d * 1000.0);
    }
    if (ms)
        return -1;
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = strptime(buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (rest == NULL)
        return -1;
    time_t when = timegm(&tm), now = time(NULL);
    return when > now ? (int64_t)(when - now) * 1000 : 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    struct tg_upstream_req *rq = ud;
    size_t len = size * n;
    if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* A new status line (also after 100 Continue): start over. */
        const char *sp = memchr(p, ' ', len);
        rq->http_status = sp != NULL ? strtol(sp + 1, NULL, 10) : 0;
        rq->retry_after_ms = -1;
        if (!rq->got_headers) {
            rq->got_headers = true;
            awaiting_end(rq, true);
            /* The provider answered: the first-byte clock stops; the body (a stream or not) is
             * now watched for idle gaps instead, so a provider that stalls half-way through a
             * JSON body does not hold the client until total_timeout_ms. */
            arm(rq, T_IDLE, rq->targets[rq->cur]->provider_ref->stream_idle_timeout_ms);
        }
        return len;
    }
    const char *colon = memchr(p, ':', len);
    if (colon == NULL)
        return len;
    size_t nl = (size_t)(colon - p);
    const char *v = colon + 1;
    size_t vl = len - nl - 1;
    while (vl > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vl--;
    }
    while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
        vl--;
    if (nl == 11 && strncasecmp(p, "retry-after", 11) == 0 && rq->retry_after_ms < 0)
        rq->retry_after_ms = parse_retry_after(v, vl, false);
    else if (nl == 14 && strncasecmp(p, "retry-after-ms", 14) == 0)
        rq->retry_after_ms = parse_retry_after(v, vl, true);
    return len;
}

static int emit_chunk(void *ctx, const json_t *chunk, const char *data, size_t len)
{
    struct tg_upstream_req *rq = ctx;
    rq->started = true;
    struct tg_upstream_chunk c = {.json = chunk,
                                  .data = data,
                                  .len = len,
                                  .served = rq->targets[rq->cur],
                                  .fallbacks = rq->stats.fallbacks,
                                  .fallback_reason = rq->stats.fallback_reason};
    if (rq->h.on_chunk != NULL && rq->h.on_chunk(rq->user, &c) != 0) {
        rq->dropped = true;
        return TG_CANCELED;
    }
    return 0;
}

static int on_sse_event(void *ctx, const char *event, const char *data, size_t len)
{
    struct tg_upstream_req *rq = ctx;
    const struct tg_cfg_model *m = rq->targets[rq->cur];
    if (rq->st.done)
        return 0;
    int rc = m->provider_ref->kind == TG_PROVIDER_ANTHROPIC
                 ? up_anthropic_event(&rq->st, event, data, len, emit_chunk, rq)
                 : up_openai_event(&rq->st, data, len, emit_chunk, rq);
    if (rc == TG_PARSE)
        rq->parse_failed = true;
    return rc;
}

static size_t on_write(char *p, size_t size, size_t n, void *ud)
{
    struct tg_upstream_req *rq = ud;
    size_t len = size * n;
    if (rq->stream && rq->http_status == 200) {
        arm(rq, T_IDLE, rq->targets[rq->cur]->provider_ref->stream_idle_timeout_ms);
        rq->in_write = true;
        int rc = up_sse_feed(&rq->sse, p, len, on_sse_event, rq);
        rq->in_write = false;
        if (rc == TG_TOOBIG)
            rq->too_big = true;
        if (rc == 0 && rq->pause_pending) {
            /* on_chunk asked for backpressure: this buffer is consumed, curl keeps any rest */
            rq->pause_pending = false;
            curl_easy_pause(rq->easy, CURLPAUSE_RECV);
            arm(rq, T_NONE, 0); /* a paused stream is not idle */
        }
        return rc == 0 ? len : 0; /* 0 makes curl abort the transfer */
    }
    if (tg_buf_append(&rq->resp, p, len) != TG_OK) {
        rq->too_big = true;
        return 0;
    }
    if (rq->timer_kind == T_IDLE)
        arm(rq, T_IDLE, rq->targets[rq->cur]->provider_ref->stream_idle_timeout_ms);
    return len;
}

/* ---- attempts ---- */

static void trail_add(struct tg_upstream_req *rq, const char *target, const char *what)
{
    if (rq->trail.len > 0)
        tg_buf_append_str(&rq->trail, "; ");
    tg_buf_printf(&rq->trail, "%s: %s", target, what);
}

/* A client-supplied value may go into an upstream header only if it cannot break the header:
 * visible ASCII, bounded. */
static bool header_safe(const char *v, size_t max)
{
    size_t n = 0;
    for (; v[n] != '\0'; n++)
        if (n >= max || (unsigned char)v[n] < 0x21 || (unsigned char)v[n] > 0x7e)
            return false;
    return n > 0;
}

static bool url_for(const struct tg_cfg_model *m, char *url, size_t len)
{
    const char *base = m->provider_ref->base_url;
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/')
        bl--;
    const char *path =
        m->provider_ref->kind == TG_PROVIDER_ANTHROPIC ? "/messages" : "/chat/completions";
    int w = snprintf(url, len, "%.*s%s", (int)bl, base, path);
    return w > 0 && (size_t)w < len;
}

/* Start one HTTP attempt on targets[cur]. TG_OK, or an error with the request's failure state
 * already recorded (the caller moves on). */
static int attempt_start(struct tg_upstream_req *rq)
{
    struct tg_upstream_exec *ex = rq->ex;
    const struct tg_cfg_model *m = rq->targets[rq->cur];
    const struct tg_cfg_provider *p = m->provider_ref;
    char err[256] = "";
    int rc;
    up_stream_init(&rq->st);
    if (p->kind == TG_PROVIDER_ANTHROPIC) {
        rc = up_anthropic_build(rq->request, m, rq->stream, &rq->body_out, &rq->st.client_usage,
                                &rq->forced_json, err, sizeof err);
    } else {
        rc = TG_UNSUPPORTED;
        if (rq->raw != NULL) {
            rc = up_openai_build_raw(rq->request, rq->raw, rq->raw_len, m, rq->stream,
                                     &rq->body_out, &rq->st.client_usage);
            if (rc != TG_OK)
                tg_buf_reset(&rq->body_out);
        }
        if (rc == TG_UNSUPPORTED)
            rc = up_openai_build(rq->request, m, rq->stream, &rq->body_out, &rq->st.client_usage);
    }
    rq->st.forced_json = rq->forced_json;
    if (rc != TG_OK)
        return rc == TG_INVAL ? TG_INVAL : TG_NOMEM;
    (void)err;
    char url[1024];
    if (!url_for(m, url, sizeof url))
        return TG_INVAL;
    CURL *e = ex->n_pool > 0 ? ex->pool[--ex->n_pool] : curl_easy_init();
    if (e == NULL)
        return TG_NOMEM;
    rq->easy = e;
    struct curl_slist *h = NULL;
    char line[1024];
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:"); /* no 100-continue round trip before the body */
    if (rq->stream)
        h = curl_slist_append(h, "Accept: text/event-stream");
    if (p->kind == TG_PROVIDER_ANTHROPIC) {
        snprintf(line, sizeof line, "x-api-key: %s", p->api_key);
        h = curl_slist_append(h, line);
        h = curl_slist_append(h, "anthropic-version: 2023-06-01");
    } else {
        snprintf(line, sizeof line, "Authorization: Bearer %s", p->api_key);
        h = curl_slist_append(h, line);
    }
    explicit_bzero(line, sizeof line);
    if (rq->request_id != NULL && header_safe(rq->request_id, 128)) {
        snprintf(line, sizeof line, "X-Request-Id: %s", rq->request_id);
        h = curl_slist_append(h, line);
    }
    for (size_t i = 0; i < rq->n_extra; i++)
        h = curl_slist_append(h, rq->extra[i]);
    if (h == NULL)
        return TG_NOMEM;
    rq->hdrs = h;
    rq->http_status = 0;
    rq->retry_after_ms = -1;
    rq->got_headers = rq->too_big = rq->parse_failed = false;
    rq->curl_err[0] = '\0';
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, rq->body_out.data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_out.len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, rq);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, rq);
    curl_easy_setopt(e, CURLOPT_PRIVATE, rq);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, rq->curl_err);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_SHARE, ex->share);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, ex);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, ex);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_DNS_CACHE_TIMEOUT, 300L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (p->connect_timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)p->connect_timeout_ms);
    if (p->total_timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)p->total_timeout_ms);
    if (!ex->params.verify_tls) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    rq->resp.max = ex->params.max_response_bytes;
    rq->sse.max = ex->params.max_response_bytes;
    rq->attempt_start_ms = up_now_ms();
    rq->stats.attempts++;
    rq->tries_on_target++;
    rq->last_target = m;
    if (curl_multi_add_handle(ex->multi, e) != CURLM_OK)
        return TG_INTERNAL;
    rq->in_multi_handle = true;
    ex->n_active++;
    rq->attempt_t0 = mono_s();
    rq->awaiting = true;
    ex->n_awaiting++;
    arm(rq, T_FIRST_BYTE, p->first_byte_timeout_ms);
    if (!ex->in_multi) {
        /* Kick curl now instead of waiting a loop turn for its zero timer: the request is
         * written before we return. A transfer that ended right away (e.g. connection refused)
         * leaves a message that is read from the loop, never from here (we may be inside
         * tg_upstream_start or inside another request's completion). */
        int running = 0;
        ex->in_multi = true;
        curl_multi_socket_action(ex->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        ex->in_multi = false;
        if ((size_t)running < ex->n_active)
            drain_soon(ex);
    }
    return TG_OK;
}

/* Move past targets[cur] to the next target. */
static void next_target(struct tg_upstream_req *rq, const char *reason)
{
    /* Only a move to another target is a fallback; failing the last one is not. */
    if (rq->cur + 1 < rq->n_targets) {
        if (rq->stats.fallback_reason == NULL)
            rq->stats.fallback_reason = reason;
        rq->stats.fallbacks++;
    }
    rq->cur++;
    rq->tries_on_target = 0;
}

static void set_failure(struct tg_upstream_req *rq, int status, json_t *error, const char *kind)
{
    json_decref(rq->fail_error);
    rq->fail_error = error;
    rq->fail_status = status;
    rq->fail_kind = kind;
}

/* Try the current target (or the next usable one). Reports the final error when none is left. */
static void advance(struct tg_upstream_req *rq)
{
    while (rq->cur < rq->n_targets) {
        const struct tg_cfg_model *m = rq->targets[rq->cur];
        const struct tg_cfg_provider *p = m->provider_ref;
        if (m->target != TG_TARGET_PROVIDER || p == NULL) {
            rq->cur++; /* engine targets belong to the local tier: not ours */
            continue;
        }
        if (!p->enabled || p->api_key == NULL) {
            char what[256];
            snprintf(what, sizeof what, "provider '%s' disabled (%s)", p->name,
                     p->disabled_reason != NULL ? p->disabled_reason : "no API key configured");
            trail_add(rq, m->name, what);
            if (rq->fail_error == NULL)
                set_failure(rq, 503, NULL, "disabled");
            up_metric_error(m->name, "disabled");
            next_target(rq, "disabled");
            continue;
        }
        int64_t now = up_now_ms();
        enum up_admit ad = up_circuit_admit(m->name, p, now);
        if (ad == UP_ADMIT_DENY) {
            trail_add(rq, m->name, "circuit open");
            if (rq->fail_error == NULL)
                set_failure(rq, 503, NULL, "circuit_open");
            up_metric_error(m->name, "circuit_open");
            next_target(rq, "circuit_open");
            continue;
        }
        rq->probe = ad == UP_ADMIT_PROBE;
        int rc = attempt_start(rq);
        if (rc == TG_OK)
            return;
        attempt_release(rq);
        if (rq->probe)
            up_circuit_release(m->name); /* not the target's fault: let another probe go */
        rq->probe = false;
        if (rc == TG_INVAL) {
            /* The request cannot be expressed for this provider (e.g. an unsupported content
             * part); another target may take it. */
            trail_add(rq, m->name, "request not supported by this provider");
            set_failure(rq, 400, NULL, "unsupported");
            next_target(rq, "unsupported");
            continue;
        }
        trail_add(rq, m->name, "internal error starting the transfer");
        set_failure(rq, 500, NULL, "internal");
        next_target(rq, "internal");
    }
    if (rq->in_start) {
        arm(rq, T_RETRY, 0); /* report from the loop: handlers never run inside start */
        return;
    }
    /* Nothing left: one OpenAI-shaped error naming what happened on each target. */
    char msg[1024];
    snprintf(msg, sizeof msg, "all upstream targets failed: %s",
             rq->trail.data != NULL ? rq->trail.data : "no remote target");
    int status = rq->fail_status != 0 ? rq->fail_status : 502;
    const char *kind = rq->fail_kind != NULL ? rq->fail_kind : "no_target";
    json_t *err = rq->fail_error;
    rq->fail_error = NULL;
    if (err == NULL || status >= 500 || status == 429) {
        json_decref(err);
        const char *type = status == 429   ? "rate_limit_error"
                           : status == 400 ? "invalid_request_error"
                                           : "upstream_error";
        err = tg_json_error(msg, type, NULL, kind);
    }
    finish_error(rq, status, err, kind, false);
}

/* An attempt failed before completing. */
static void attempt_failed(struct tg_upstream_req *rq, const char *kind, int status, json_t *error,
                           bool retryable, bool counts_for_circuit)
{
    const struct tg_cfg_model *m = rq->targets[rq->cur];
    const struct tg_cfg_provider *p = m->provider_ref;
    struct tg_upstream_exec *ex = rq->ex;
    int64_t now = up_now_ms();
    int64_t retry_after = rq->retry_after_ms;
    up_metric_duration(m->name, (double)(now - rq->attempt_start_ms) / 1000.0);
    up_metric_error(m->name, kind);
    if (counts_for_circuit)
        up_circuit_report(m->name, p, false, rq->probe, now);
    else if (rq->probe)
        up_circuit_report(m->name, p, true, true, now);
    rq->probe = false;
    attempt_release(rq);
    if (rq->started) {
        /* Bytes already reached the client: no retry, no fallback. */
        finish_error(rq, status, error, kind, false);
        return;
    }
    char what[128];
    snprintf(what, sizeof what, "%s", kind);
    trail_add(rq, m->name, what);
    set_failure(rq, status, error, kind);
    if (!retryable) {
        /* A context-length 400 is the one client fault another target need not share: a
         * fallback with a larger context window may take the request. */
        if ((status == 400 || status == 413 || status == 422) &&
            strcmp(kind, "context_length") != 0) {
            /* The client's request is at fault: another target would refuse it too. */
            json_t *err = rq->fail_error;
            rq->fail_error = NULL;
            finish_error(rq, status, err, kind, false);
            return;
        }
        next_target(rq, kind);
        advance(rq);
        return;
    }
    if (rq->tries_on_target <= p->retries) {
        int64_t delay;
        if (retry_after >= 0) {
            if (retry_after > ex->params.max_retry_after_ms) {
                next_target(rq, kind); /* waiting that long is worse than the next target */
                advance(rq);
                return;
            }
            delay = retry_after;
            rq->stats.retry_after_ms = retry_after;
        } else {
            /* Exponential backoff with full jitter: uniform in [0, min(cap, base * 2^n)]. */
            int64_t cap = (int64_t)p->retry_base_ms
                          << (rq->tries_on_target - 1 < 20 ? rq->tries_on_target - 1 : 20);
            if (cap > ex->params.max_backoff_ms)
                cap = ex->params.max_backoff_ms;
            uint32_t r = 0;
            if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
                r = (uint32_t)now;
            delay = cap > 0 ? (int64_t)(r % (uint32_t)(cap + 1)) : 0;
        }
        rq->stats.retries++;
        rq->stats.backoff_ms += delay;
        arm(rq, T_RETRY, delay);
        return;
    }
    next_target(rq, kind);
    advance(rq);
}

static const char *curl_kind(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
        return "tls";
    default:
        return "reset";
    }
}

/* The provider refused the prompt as longer than the model's context window (OpenAI's code, or
 * Anthropic's message, as up_error_from_body keeps them). */
static bool context_length_error(const json_t *err)
{
    const json_t *e = json_object_get(err, "error");
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    return (code != NULL && strcmp(code, "context_length_exceeded") == 0) ||
           (msg != NULL && strstr(msg, "prompt is too long") != NULL);
}

static void attempt_done(struct tg_upstream_req *rq, CURLcode crc)
{
    const struct tg_cfg_model *m = rq->targets[rq->cur];
    const struct tg_cfg_provider *p = m->provider_ref;
    if (rq->dropped) {
        req_free(rq); /* the caller stopped it from on_chunk */
        return;
    }
    /* Outside a socket/timer callback (a completion found by the kick in tg_upstream_start,
     * read from the drain event) the response was complete by now. */
    rq->stats.complete_s = rq->ex->wake_s > 0 ? rq->ex->wake_s : mono_s();
    long status = rq->http_status;
    if (crc != CURLE_OK && !(crc == CURLE_WRITE_ERROR && rq->parse_failed)) {
        if (rq->too_big) {
            attempt_failed(rq, "too_big", 502,
                           tg_json_error("upstream response exceeds the size limit",
                                         "upstream_error", NULL, "upstream_too_big"),
                           false, false);
            return;
        }
        const char *kind = curl_kind(crc);
        char msg[CURL_ERROR_SIZE + 64];
        snprintf(msg, sizeof msg, "upstream transfer failed: %s",
                 rq->curl_err[0] != '\0' ? rq->curl_err : curl_easy_strerror(crc));
        int st = strcmp(kind, "timeout") == 0 ? 504 : 502;
        attempt_failed(
            rq, kind, st,
            tg_json_error(msg, strcmp(kind, "timeout") == 0 ? "timeout_error" : "upstream_error",
                          NULL, kind),
            true, true);
        return;
    }
    if (status != 200) {
        const char *kind = status == 429 ? "http_429" : status >= 500 ? "http_5xx" : "http_4xx";
        bool auth = status == 401 || status == 403;
        json_t *err = up_error_from_body(p->kind, (int)status, rq->resp.data, rq->resp.len, !auth);
        bool retryable = status == 429 || status == 408 || status == 409 || status >= 500;
        /* The client gets 502 for provider-side faults it cannot fix (auth, our config). */
        int out = retryable || status == 400 || status == 413 || status == 422 ? (int)status : 502;
        if (status == 400 && context_length_error(err))
            kind = "context_length";
        if (auth) {
            kind = "auth";
            tg_warn("upstream %s (provider %s) rejected our credentials (HTTP %ld)", m->name,
                    p->name, status);
        }
        attempt_failed(rq, kind, out, err, retryable, retryable);
        return;
    }
    if (rq->stream) {
        if (rq->parse_failed || !rq->st.done) {
            const char *kind = rq->parse_failed ? "parse" : "cut";
            attempt_failed(rq, kind, 502,
                           tg_json_error(rq->parse_failed
                                             ? "upstream sent a malformed stream event"
                                             : "upstream stream ended before completion",
                                         "upstream_error", NULL, kind),
                           true, true);
            return;
        }
        if (rq->st.error != NULL) {
            json_t *e = json_incref(rq->st.error);
            attempt_failed(rq, "stream_error", 502, e, true, true);
            return;
        }
        int64_t now = up_now_ms();
        up_metric_duration(m->name, (double)(now - rq->attempt_start_ms) / 1000.0);
        up_circuit_report(m->name, p, true, rq->probe, now);
        stats_finish(rq);
        struct tg_upstream_result res = {.served = m,
                                         .finish_reason =
                                             rq->st.finish[0] != '\0' ? rq->st.finish : NULL,
                                         .usage = rq->st.usage,
                                         .stats = rq->stats};
        rq->done = true;
        if (rq->h.on_complete != NULL)
            rq->h.on_complete(rq->user, &res);
        req_free(rq);
        return;
    }
    json_t *resp = NULL;
    struct tg_upstream_usage u = {.prompt_tokens = -1, .completion_tokens = -1};
    char finish[32] = "";
    int rc =
        p->kind == TG_PROVIDER_ANTHROPIC
            ? up_anthropic_response(rq->resp.data, rq->resp.len, rq->forced_json, &resp, &u, finish,
                                    sizeof finish)
        : rq->body_only
            ? up_openai_scan_response(rq->resp.data, rq->resp.len, &u, finish, sizeof finish)
            : up_openai_response(rq->resp.data, rq->resp.len, &resp, &u, finish, sizeof finish);
    if (rc != TG_OK) {
        attempt_failed(
            rq, "parse", 502,
            tg_json_error("upstream sent a malformed response", "upstream_error", NULL, "parse"),
            true, true);
        return;
    }
    int64_t now = up_now_ms();
    up_metric_duration(m->name, (double)(now - rq->attempt_start_ms) / 1000.0);
    up_circuit_report(m->name, p, true, rq->probe, now);
    stats_finish(rq);
    char *ser = NULL;
    const char *body = rq->resp.data;
    size_t blen = rq->resp.len;
    if (p->kind == TG_PROVIDER_ANTHROPIC) {
        ser = json_dumps(resp, JSON_COMPACT);
        body = ser != NULL ? ser : "";
        blen = ser != NULL ? strlen(ser) : 0;
    }
    struct tg_upstream_result res = {.served = m,
                                     .response = resp,
                                     .body = body,
                                     .body_len = blen,
                                     .finish_reason = finish[0] != '\0' ? finish : NULL,
                                     .usage = u,
                                     .stats = rq->stats};
    rq->done = true;
    if (rq->h.on_complete != NULL)
        rq->h.on_complete(rq->user, &res);
    free(ser);
    json_decref(resp);
    req_free(rq);
}

static void check_multi_info(struct tg_upstream_exec *ex)
{
    CURLMsg *msg;
    int left = 0;
    while ((msg = curl_multi_info_read(ex->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct tg_upstream_req *rq = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&rq);
        CURLcode rc = msg->data.result;
        if (rq != NULL)
            attempt_done(rq, rc);
    }
}

/* ---- public ---- */

int tg_upstream_start(struct tg_upstream_exec *ex, const struct tg_upstream_call *call,
                      const struct tg_upstream_handlers *handlers, void *user,
                      struct tg_upstream_req **out)
{
    if (ex == NULL || call == NULL || handlers == NULL || !json_is_object(call->request) ||
        call->targets == NULL || call->n_targets == 0 || handlers->on_complete == NULL ||
        handlers->on_error == NULL)
        return TG_INVAL;
    /* A CR or LF in an extra header would end it early and let the rest inject another one. */
    for (size_t i = 0; call->headers != NULL && call->headers[i] != NULL; i++)
        if (strpbrk(call->headers[i], "\r\n") != NULL)
            return TG_INVAL;
    struct tg_upstream_req *rq = calloc(1, sizeof *rq);
    if (rq == NULL)
        return TG_NOMEM;
    rq->ex = ex;
    rq->h = *handlers;
    rq->user = user;
    rq->stream = call->stream;
    rq->body_only = call->body_only && !call->stream;
    rq->start_ms = up_now_ms();
    rq->stats.retry_after_ms = -1;
    tg_buf_init(&rq->trail, 4096);
    tg_buf_init(&rq->body_out, 0);
    tg_buf_init(&rq->resp, ex->params.max_response_bytes);
    tg_buf_init(&rq->sse, ex->params.max_response_bytes);
    up_stream_init(&rq->st);
    rq->targets = calloc(call->n_targets, sizeof *rq->targets);
    rq->timer = evtimer_new(ex->base, on_req_timer, rq);
    size_t n_extra = 0;
    while (call->headers != NULL && call->headers[n_extra] != NULL)
        n_extra++;
    rq->extra = n_extra > 0 ? calloc(n_extra, sizeof *rq->extra) : NULL;
    rq->request_id = call->request_id != NULL ? strdup(call->request_id) : NULL;
    /* linked before any failure path so req_free can unlink */
    rq->next = ex->reqs;
    if (ex->reqs != NULL)
        ex->reqs->prev = rq;
    ex->reqs = rq;
    ex->inflight++;
    if (rq->targets == NULL || rq->timer == NULL || (n_extra > 0 && rq->extra == NULL) ||
        (call->request_id != NULL && rq->request_id == NULL)) {
        req_free(rq);
        return TG_NOMEM;
    }
    for (size_t i = 0; i < n_extra; i++) {
        rq->extra[i] = strdup(call->headers[i]);
        if (rq->extra[i] == NULL) {
            req_free(rq);
            return TG_NOMEM;
        }
        rq->n_extra++;
    }
    if (call->raw_body != NULL) {
        rq->raw = malloc(call->raw_len > 0 ? call->raw_len : 1);
        if (rq->raw == NULL) {
            req_free(rq);
            return TG_NOMEM;
        }
        memcpy(rq->raw, call->raw_body, call->raw_len);
        rq->raw_len = call->raw_len;
    }
    memcpy(rq->targets, call->targets, call->n_targets * sizeof *rq->targets);
    rq->n_targets = call->n_targets;
    rq->request = json_incref((json_t *)call->request);
    if (ex->in_multi) {
        /* Called from a curl callback (e.g. another request's on_chunk): curl refuses handles
         * added from there, so the first attempt starts from the loop. */
        arm(rq, T_RETRY, 0);
    } else {
        /* Start at once (saves a loop turn). Nothing can complete synchronously; an error found
         * now (all targets disabled or open) is deferred to the loop by advance(). */
        rq->in_start = true;
        advance(rq);
        rq->in_start = false;
    }
    if (out != NULL)
        *out = rq;
    return TG_OK;
}

void tg_upstream_pause(struct tg_upstream_req *req)
{
    if (req == NULL || req->done || req->paused || req->easy == NULL || !req->stream)
        return;
    req->paused = true;
    if (req->in_write) {
        req->pause_pending = true;
        return;
    }
    curl_easy_pause(req->easy, CURLPAUSE_RECV);
    arm(req, T_NONE, 0);
}

void tg_upstream_resume(struct tg_upstream_req *req)
{
    if (req == NULL || req->done || !req->paused)
        return;
    req->paused = false;
    if (req->pause_pending) {
        req->pause_pending = false; /* resumed within the same on_write: never paused */
        return;
    }
    if (req->easy == NULL)
        return;
    struct tg_upstream_exec *ex = req->ex;
    arm(req, T_IDLE, req->targets[req->cur]->provider_ref->stream_idle_timeout_ms);
    /* Unpausing hands curl's buffered bytes to on_write right here: chunks may reach on_chunk
     * before this returns. Mark the multi busy so a tg_upstream_start from there defers. */
    bool was = ex->in_multi;
    ex->in_multi = true;
    curl_easy_pause(req->easy, CURLPAUSE_CONT);
    ex->in_multi = was;
    if (!was)
        drain_soon(ex); /* the transfer may have ended while delivering */
}

void tg_upstream_cancel(struct tg_upstream_req *req)
{
    if (req == NULL || req->done)
        return;
    req_free(req);
}
