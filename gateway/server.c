#include "server.h"

#include <errno.h>
#include <netdb.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <event2/util.h>

#include "pipeline.h"
#include "redis_glue.h"
#include "tls.h"
#include "tg/err.h"
#include "tg/json.h"
#include "tg/log.h"
#include "tg/engine_net.h"
#include "tg/router.h"

#include "metrics.h"
#include "usage.h"
#include "metrics_http.h"

#define TG_GATEWAY_VERSION TG_VERSION /* from CMake (PROJECT_VERSION) */

#define SWEEP_MIN_MS 100
#define SWEEP_MAX_MS 1000
#define DRAIN_POLL_MS 50
/* After the drain deadline ended what was still in flight with an error, this long for those
 * errors to be written before the connections close. */
#define DRAIN_CUT_GRACE_S 0.5

void tg_pipeline_emit_error(struct tg_req *r, const char *message, const char *code);

struct bufferevent *tg_conn_bevcb(struct event_base *base, void *arg);
void tg_conn_sweep(struct tg_worker *w, int header_timeout_ms, int read_timeout_ms,
                   size_t max_header_bytes);
void tg_conn_free_all(struct tg_worker *w);

struct tg_config *tg_gateway_config(struct tg_gateway *gw)
{
    pthread_mutex_lock(&gw->cfg_lock);
    struct tg_config *c = tg_config_ref(gw->cfg);
    pthread_mutex_unlock(&gw->cfg_lock);
    return c;
}

void tg_gateway_snapshot(struct tg_gateway *gw, struct tg_config **cfg,
                         struct tg_router_policy **policy)
{
    pthread_mutex_lock(&gw->cfg_lock);
    *cfg = tg_config_ref(gw->cfg);
    *policy = tg_router_policy_ref(gw->policy);
    pthread_mutex_unlock(&gw->cfg_lock);
}

/* The routing policy named by the config, or the built-in default when none is named. */
static int load_policy(const struct tg_config *cfg, struct tg_router_policy **out, char *err,
                       size_t errlen)
{
    if (cfg->policy == NULL || cfg->policy[0] == '\0')
        return tg_router_policy_default(out);
    return tg_router_policy_load(cfg->policy, out, err, errlen);
}

static void reply_json(struct evhttp_request *req, int status, const char *reason, json_t *body)
{
    char *text = tg_json_dumps(body);
    struct evbuffer *out = evbuffer_new();
    if (text != NULL && out != NULL)
        evbuffer_add(out, text, strlen(text));
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "application/json");
    evhttp_send_reply(req, status, reason, out);
    if (out != NULL)
        evbuffer_free(out);
    free(text);
    json_decref(body);
}


/* Scrape-time gauges: the engine's load and the requests in flight. */
static void gauges_fn(void *user, struct tg_metrics_gauges *out)
{
    struct tg_gateway *gw = user;
    out->inflight_requests = atomic_load(&gw->inflight);
    struct tg_engine_client *c = atomic_load(&gw->engine);
    if (c != NULL) {
        struct tg_engine_client_stats st;
        tg_engine_client_stats(c, &st);
        out->engine_slots_busy = st.engine.slots_busy;
        out->engine_queue_depth = st.engine.queue_depth;
        out->engine_tokens_per_second = st.engine.tokens_per_s;
    }
    struct tg_config *cfg = tg_gateway_config(gw);
    tg_glue_redis_gauges(cfg, &out->redis_up, &out->redis_outages_total);
    tg_config_unref(cfg);
}

static void handle_request(struct evhttp_request *req, void *arg)
{
    struct tg_worker *w = arg;
    struct tg_gateway *gw = w->gw;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (path == NULL)
        path = "/";
    if (strncmp(path, "/v1/", 4) == 0 && strcmp(path, "/v1/usage") != 0) {
        tg_pipeline_http(w, req, path);
        return;
    }
    if (atomic_load(&gw->draining))
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    struct tg_config *mcfg = tg_gateway_config(gw);
    bool handled = tg_metrics_http_handle(req, path, mcfg, w->usage);
    tg_config_unref(mcfg);
    if (handled)
        return;
    if (strcmp(path, "/healthz") == 0) {
        reply_json(req, 200, "OK", json_pack("{s:s}", "status", "ok"));
    } else if (strcmp(path, "/readyz") == 0) {
        bool ready = atomic_load(&gw->ready) && !atomic_load(&gw->draining);
        reply_json(req, ready ? 200 : 503, ready ? "OK" : "Service Unavailable",
                   json_pack("{s:s}", "status", ready ? "ready" : atomic_load(&gw->draining) ? "draining" : "starting"));
    } else {
        reply_json(req, 404, "Not Found",
                   tg_json_error("Unknown path", "invalid_request_error", NULL, "not_found"));
    }
}

static evutil_socket_t listen_socket(const char *host, int port)
{
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, service, &hints, &res);
    if (rc != 0) {
        tg_error("cannot resolve listen address %s:%d: %s", host, port, gai_strerror(rc));
        return -1;
    }
    evutil_socket_t fd = -1;
    for (struct addrinfo *ai = res; ai != NULL && fd == -1; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1)
            continue;
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1 ||
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == -1 ||
            bind(fd, ai->ai_addr, ai->ai_addrlen) == -1 || listen(fd, 1024) == -1) {
            tg_error("cannot listen on %s:%d: %s", host, port, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

/* The loop asked to stop: event_base_loopexit (stop_all) or loopbreak. Each event_base_loop call
 * clears both flags when it starts, so they are checked after every call: a plain dispatch would
 * see them itself, our repeated calls must not lose them. */
static bool loop_stopped(struct event_base *base)
{
    return event_base_got_exit(base) || event_base_got_break(base);
}

/* Two busy-polling windows (docs/config.md "Busy-polling"); with both 0 the loop is a plain
 * event_base_dispatch. After a blocking wait (EVLOOP_ONCE) has handled events, the thread keeps
 * polling without sleeping (EVLOOP_NONBLOCK: epoll_wait with timeout 0) while
 *   - fewer than busy_poll_us have passed since the last event (server.busy_poll_us: any event), or
 *   - fewer than upstream_us have passed since the last event and a request on this thread waits
 *     for a provider whose recent first-byte times average at most upstream_us
 *     (server.busy_poll_upstream_us, tg_upstream_exec_reply_due),
 * then blocks again. A provider's reply (or the next request) that arrives meanwhile is picked up
 * by a running thread instead of waking a sleeping one: on a VM that wake-up (IPI, halt exit,
 * cold caches) costs tens of µs per hop. The price is CPU. The upstream window spins only while a
 * fast provider's answer is due, so once the reply is sent the thread sleeps at once, and remote
 * LLM APIs (hundreds of ms to the first byte) are never waited for this way.
 *
 * "Handled an event" is libevent's own high-water mark of active callbacks: cleared to 0 before
 * a non-blocking iteration, it is > 0 afterwards exactly when some callback (a socket, a timer,
 * a deferred bufferevent callback, an event_active from another thread) was made active and
 * therefore run in it; no hook in our callbacks is needed, evhttp's internal ones count too.
 * (An event made active by another thread between two iterations, before the clear, is still run
 * but does not extend the window: harmless.)
 *
 * sched_yield between empty polls: on a machine with fewer cores than busy threads (the bench
 * VM: 2 cores for the load generator, the provider and us), a runnable thread that shares our
 * core gets it at once instead of at the end of the window; when nothing else is runnable the
 * call returns immediately. Under SCHED_FIFO (bench --rt) it is what lets a same-priority
 * thread on this core run at all while we spin. */
static void worker_loop(struct tg_worker *w, int busy_poll_us, int upstream_us)
{
    if (busy_poll_us <= 0 && upstream_us <= 0) {
        event_base_dispatch(w->base);
        return;
    }
    const double window_s = busy_poll_us / 1e6, upstream_s = upstream_us / 1e6;
    for (;;) {
        /* 1: no events left (cannot happen while the sweep timer is pending), -1: backend error;
         * event_base_dispatch returns in both cases too. */
        if (event_base_loop(w->base, EVLOOP_ONCE) != 0 || loop_stopped(w->base))
            return;
        double last_event = tg_now_s(); /* vDSO clock: no syscall */
        for (;;) {
            double quiet = tg_now_s() - last_event;
            if (quiet >= window_s && (quiet >= upstream_s || !tg_remote_reply_due(w, upstream_s)))
                break;
            event_base_get_max_events(w->base, EVENT_BASE_COUNT_ACTIVE, 1);
            if (event_base_loop(w->base, EVLOOP_NONBLOCK) != 0 || loop_stopped(w->base))
                return;
            if (event_base_get_max_events(w->base, EVENT_BASE_COUNT_ACTIVE, 0) > 0)
                last_event = tg_now_s();
            else
                sched_yield();
        }
    }
}

static void *worker_main(void *arg)
{
    struct tg_worker *w = arg;
    char name[16]; /* ps/top/perf tell the I/O threads apart; tests find them by this name */
    snprintf(name, sizeof name, "tg-io-%d", w->index);
    pthread_setname_np(pthread_self(), name); /* best effort: only a label */
    tg_usage_bind(w->usage); /* tg_metrics_record on this thread also feeds the Redis ledger */
    /* Read once: the window is fixed for the thread's life (a restart changes it, not SIGHUP). */
    struct tg_config *cfg = tg_gateway_config(w->gw);
    int busy_poll_us = cfg->server.busy_poll_us;
    int upstream_us = cfg->server.busy_poll_upstream_us;
    tg_config_unref(cfg);
    worker_loop(w, busy_poll_us, upstream_us);
    tg_usage_bind(NULL);
    return NULL;
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    struct tg_worker *w = arg;
    struct tg_config *cfg = tg_gateway_config(w->gw);
    tg_conn_sweep(w, cfg->server.header_timeout_ms, cfg->server.read_timeout_ms,
                  cfg->server.max_header_bytes);
    tg_config_unref(cfg);
}

/* Posted by the main thread on SIGTERM: stop accepting on this worker's socket. */
static void on_drain(evutil_socket_t fd, short what, void *arg)
{
    struct tg_worker *w = arg;
    tg_glue_drain(w); /* stop taking async jobs; running ones finish within the drain */
    if (w->bound != NULL) {
        evhttp_del_accept_socket(w->http, w->bound);
        w->bound = NULL;
    }
}

/* listen_fd: an already listening socket to serve (tg_gateway_test_new), or -1 to listen on the
 * configured address. */
static int worker_init(struct tg_worker *w, struct tg_gateway *gw, const struct tg_config *cfg,
                       evutil_socket_t listen_fd)
{
    w->gw = gw;
    /* The epoll changelist folds the enable/disable churn of evhttp's bufferevents within one
     * loop turn into one epoll_ctl per socket. libevent's condition for it: a descriptor's events
     * are deleted before the descriptor is closed (and none is dup()ed). Client sockets are closed
     * by their bufferevent after its events are gone (BEV_OPT_CLOSE_ON_FREE, conn.c), upstream
     * sockets by curl through our close callback after event_del (upstream.c). Before conn.c did
     * that, evhttp closed sockets whose read event our reference still held, and a new connection
     * that reused the number was never polled (tests/ecosystem test_back_to_back_connections). */
    struct event_config *ec = event_config_new();
    if (ec != NULL)
        event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    w->base = ec != NULL ? event_base_new_with_config(ec) : event_base_new();
    if (ec != NULL)
        event_config_free(ec);
    w->http = w->base != NULL ? evhttp_new(w->base) : NULL;
    if (w->http == NULL)
        return TG_NOMEM;
    /* evhttp answers bodies over its limit itself, with an HTML page. Give it headroom so that
     * moderately oversized bodies reach the pipeline and get an OpenAI-shaped 413; beyond twice
     * the limit evhttp's own 413 protects memory. */
    size_t body_cap = cfg->server.max_body_bytes * 2 + 65536;
    evhttp_set_max_body_size(w->http, (ev_ssize_t)body_cap);
    evhttp_set_max_headers_size(w->http, (ev_ssize_t)cfg->server.max_header_bytes);
    /* evhttp's inactivity timeout covers idle keep-alive connections and stalled writes;
     * header/read deadlines are enforced by the connection sweep (conn.c). */
    struct timeval idle = {cfg->server.idle_timeout_ms / 1000, (cfg->server.idle_timeout_ms % 1000) * 1000};
    evhttp_set_timeout_tv(w->http, &idle);
    evhttp_set_flags(w->http, EVHTTP_SERVER_LINGERING_CLOSE);
    evhttp_set_allowed_methods(w->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_DELETE);
    evhttp_set_gencb(w->http, handle_request, w);
    evhttp_set_bevcb(w->http, tg_conn_bevcb, w);
    if (cfg->server.max_connections > 0) {
        int n = gw->n_workers > 0 ? gw->n_workers : 1;
        w->max_conns = (cfg->server.max_connections + n - 1) / n;
    }
    w->rng = ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)w ^ ((uint64_t)time(NULL) << 16) ^
             ((uint64_t)w->index + 1) * 0x9E3779B97F4A7C15ULL;
    if (w->rng == 0)
        w->rng = 1;
    if (tg_local_worker_init(w) != TG_OK || tg_remote_worker_init(w) != TG_OK)
        return TG_NOMEM;
    int grc = tg_glue_worker_init(w, cfg);
    if (grc != TG_OK) {
        tg_error("Redis component: %s", tg_strerror(grc));
        return grc;
    }
    if (w->redis != NULL && tg_usage_create(w->redis, &w->usage) != TG_OK)
        tg_warn("usage ledger unavailable on I/O thread %d", w->index);
    w->sweep = event_new(w->base, -1, EV_PERSIST, on_sweep, w);
    w->drain_ev = event_new(w->base, -1, 0, on_drain, w);
    if (w->sweep == NULL || w->drain_ev == NULL)
        return TG_NOMEM;
    /* A quarter of the header deadline keeps it accurate to 25% while an idle server with many
     * kept-alive connections pays one getsockopt per connection per sweep. */
    int sweep_ms = cfg->server.header_timeout_ms / 4;
    sweep_ms = sweep_ms < SWEEP_MIN_MS ? SWEEP_MIN_MS : sweep_ms > SWEEP_MAX_MS ? SWEEP_MAX_MS : sweep_ms;
    struct timeval sweep = {sweep_ms / 1000, (sweep_ms % 1000) * 1000};
    event_add(w->sweep, &sweep);
    evutil_socket_t fd = listen_fd >= 0 ? listen_fd
                                        : listen_socket(cfg->server.listen_host, cfg->server.port);
    if (fd == -1)
        return TG_IO;
    w->bound = evhttp_accept_socket_with_handle(w->http, fd);
    return w->bound != NULL ? TG_OK : TG_IO;
}

static struct event *drain_timer;
static double drain_deadline;
static bool drain_cut; /* the deadline passed: on_drain_cut was posted to every worker */

static void stop_all(struct tg_gateway *gw)
{
    for (int i = 0; i < gw->n_workers; i++)
        event_base_loopexit(gw->workers[i].base, NULL);
    event_base_loopexit(gw->main_base, NULL);
}

/* Run on a worker's thread at the drain deadline: what is still in flight gets an error the
 * client can see instead of a closed connection — a started stream an error event and no
 * [DONE] (a cut answer must never look complete), anything else a 503. Its engine job or
 * upstream transfer is cancelled first. Async jobs (no HTTP client) are left to be re-claimed. */
static void on_drain_cut(evutil_socket_t fd, short what, void *arg)
{
    struct tg_worker *w = arg;
    struct tg_req *next;
    for (struct tg_req *r = w->reqs; r != NULL; r = next) {
        next = r->next; /* replying may free r */
        if (r->replied || r->client_gone || r->http == NULL)
            continue;
        if (r->jobs_active > 0)
            tg_local_cancel(r);
        if (r->up_active)
            tg_remote_cancel(r);
        if (r->sse)
            tg_pipeline_emit_error(r, "The server is shutting down: the drain timeout ended this "
                                      "stream before it was complete.", "shutting_down");
        else
            tg_req_reply_error(r, 503, "The server is shutting down; retry the request.",
                               "server_error", NULL, "shutting_down");
    }
}

static void on_drain_poll(evutil_socket_t fd, short what, void *arg)
{
    struct tg_gateway *gw = arg;
    int left = atomic_load(&gw->inflight);
    if (left <= 0) {
        tg_info("drained: no request in flight");
        stop_all(gw);
    } else if (tg_now_s() >= drain_deadline && !drain_cut) {
        tg_warn("drain timeout: %d request(s) still in flight are cut off", left);
        drain_cut = true;
        drain_deadline = tg_now_s() + DRAIN_CUT_GRACE_S;
        for (int i = 0; i < gw->n_workers; i++)
            if (event_base_once(gw->workers[i].base, -1, EV_TIMEOUT, on_drain_cut, &gw->workers[i],
                                NULL) != 0)
                tg_warn("drain: could not end the requests of I/O thread %d", i);
    } else if (tg_now_s() >= drain_deadline) {
        stop_all(gw);
    }
}

static void worker_fini(struct tg_worker *w)
{
    /* Requests still alive were cut off by the drain deadline: nothing may continue them. */
    for (struct tg_req *r = w->reqs; r != NULL; r = r->next) {
        r->client_gone = true;
        if (r->up_active)
            tg_remote_cancel(r);
    }
    tg_local_worker_fini(w);  /* undelivered engine events */
    tg_remote_worker_fini(w);
    tg_usage_destroy(w->usage); /* before its Redis client */
    w->usage = NULL;
    tg_glue_worker_fini(w);   /* pending Redis callbacks run now, while requests still exist */
    if (w->http != NULL)
        evhttp_free(w->http);  /* closes connections; detached requests become ours */
    w->http = NULL;
    tg_pipeline_free_all(w);
    tg_conn_free_all(w);
    if (w->sweep != NULL)
        event_free(w->sweep);
    if (w->drain_ev != NULL)
        event_free(w->drain_ev);
    w->sweep = w->drain_ev = NULL;
    if (w->base != NULL)
        event_base_free(w->base);
    w->base = NULL;
}

static void on_stop_signal(evutil_socket_t sig, short ev, void *arg)
{
    struct tg_gateway *gw = arg;
    if (atomic_exchange(&gw->draining, true)) {
        tg_warn("second stop signal: exiting now");
        stop_all(gw);
        return;
    }
    struct tg_config *cfg = tg_gateway_config(gw);
    int drain_ms = cfg->server.drain_timeout_ms;
    tg_config_unref(cfg);
    tg_info("%s received: no longer accepting connections, draining %d in-flight request(s) "
            "(up to %d ms)",
            sig == SIGTERM ? "SIGTERM" : "SIGINT", atomic_load(&gw->inflight), drain_ms);
    for (int i = 0; i < gw->n_workers; i++)
        event_active(gw->workers[i].drain_ev, EV_TIMEOUT, 0);
    drain_deadline = tg_now_s() + drain_ms / 1000.0;
    drain_timer = event_new(gw->main_base, -1, EV_PERSIST, on_drain_poll, gw);
    struct timeval tv = {0, DRAIN_POLL_MS * 1000};
    if (drain_timer == NULL || event_add(drain_timer, &tv) != 0)
        stop_all(gw);
}

static void on_reload_signal(evutil_socket_t sig, short ev, void *arg)
{
    struct tg_gateway *gw = arg;
    struct tg_config *next = NULL;
    struct tg_router_policy *next_policy = NULL;
    char err[1024];
    if (tg_config_load(gw->config_path, &next, err, sizeof err) != TG_OK) {
        tg_error("SIGHUP: %s; keeping the current configuration", err);
        return;
    }
    if (load_policy(next, &next_policy, err, sizeof err) != TG_OK) {
        tg_error("SIGHUP: routing policy: %s; keeping the current configuration", err);
        tg_config_unref(next);
        return;
    }
    /* Whether the port speaks TLS is fixed at start (clients and probes would break midway);
     * the certificate and key are re-read on every reload, so renewed files at the same path are
     * picked up. New connections get the new certificate, open ones keep theirs. */
    if (next->server.tls.enabled != (gw->tls != NULL)) {
        tg_error("SIGHUP: server.tls cannot be turned %s by a reload (restart for that); keeping "
                 "the current configuration", gw->tls != NULL ? "off" : "on");
        tg_config_unref(next);
        tg_router_policy_unref(next_policy);
        return;
    }
    if (gw->tls != NULL && tg_tls_reload(gw->tls, &next->server.tls, err, sizeof err) != TG_OK) {
        tg_error("SIGHUP: %s; keeping the current configuration and certificate", err);
        tg_config_unref(next);
        tg_router_policy_unref(next_policy);
        return;
    }
    pthread_mutex_lock(&gw->cfg_lock);
    struct tg_config *old = gw->cfg;
    struct tg_router_policy *old_policy = gw->policy;
    gw->cfg = next;
    gw->policy = next_policy;
    pthread_mutex_unlock(&gw->cfg_lock);
    tg_metrics_configure(next);
    tg_config_unref(old);
    tg_router_policy_unref(old_policy);
    tg_info("SIGHUP: configuration reloaded from %s (routing policy %s)", gw->config_path,
            tg_router_policy_name(next_policy));
}

/* libevent's own messages (e.g. the epoll changelist meeting a socket evhttp already closed,
 * which is harmless) go to our log instead of raw stderr. */
static void on_libevent_log(int severity, const char *msg)
{
    if (severity >= EVENT_LOG_ERR)
        tg_error("libevent: %s", msg);
    else
        tg_debug("libevent: %s", msg);
}

void tg_gateway_banner(struct tg_gateway *gw, const char *local_state)
{
    struct tg_config *cfg = NULL;
    struct tg_router_policy *pol = NULL;
    tg_gateway_snapshot(gw, &cfg, &pol);
    const struct tg_cfg_server *s = &cfg->server;
    const bool v6 = strchr(s->listen_host, ':') != NULL;
    char base[160];
    snprintf(base, sizeof base, "%s://%s%s%s:%d", gw->tls != NULL ? "https" : "http", v6 ? "[" : "",
             s->listen_host, v6 ? "]" : "", s->port);
    tg_info("tiergate %s ready", TG_GATEWAY_VERSION);
    char poll[96] = "";
    int n = s->busy_poll_us > 0 ? snprintf(poll, sizeof poll, ", busy-polling %d µs", s->busy_poll_us)
                                : 0;
    if (s->busy_poll_upstream_us > 0)
        snprintf(poll + n, sizeof poll - (size_t)n, ", busy-polling for upstream replies %d µs",
                 s->busy_poll_upstream_us);
    tg_info("  listen     %s (%d I/O threads%s)%s", base, gw->n_workers, poll,
            s->open_mode ? ", OPEN MODE (no API key needed)" : "");
    tg_info("  config     %s, policy %s", cfg->path, tg_router_policy_name(pol));
    tg_info("  local      %s%s", local_state,
            atomic_load(&gw->random_weights) ? " [RANDOM WEIGHTS: free text is meaningless]" : "");
    for (size_t i = 0; i < cfg->n_providers; i++) {
        const struct tg_cfg_provider *p = &cfg->providers[i];
        tg_info("  remote     %s (%s, %s): %s%s", p->name,
                p->kind == TG_PROVIDER_OPENAI ? "openai" : "anthropic", p->base_url,
                p->enabled ? "enabled" : "disabled: ", p->enabled ? "" : p->disabled_reason);
    }
    if (cfg->n_providers == 0)
        tg_info("  remote     no providers configured");
    for (size_t i = 0; i < cfg->n_aliases; i++)
        tg_info("  alias      %s -> local %s | remote %s", cfg->aliases[i].name,
                cfg->aliases[i].local ? cfg->aliases[i].local : "-",
                cfg->aliases[i].remote ? cfg->aliases[i].remote : "-");
    double up, outages;
    tg_glue_redis_gauges(cfg, &up, &outages);
    if (up < 0)
        tg_info("  redis      disabled (no cache, limits, usage ledger or async jobs)");
    else
        tg_info("  redis      %s: %s", cfg->redis.url,
                up > 0 ? "up" : "unreachable (requests bypass the cache; reconnecting)");
    tg_info("  dashboard  %s/dashboard%s   metrics %s/metrics", base,
            s->has_admin_key ? " (admin key)" : "", base);
    tg_config_unref(cfg);
    tg_router_policy_unref(pol);
}

int tg_gateway_run(const char *config_path)
{
    event_set_log_callback(on_libevent_log);
    struct tg_gateway gw = {.config_path = config_path};
    char err[1024];
    if (tg_config_load(config_path, &gw.cfg, err, sizeof err) != TG_OK) {
        tg_error("%s", err);
        return 2;
    }
    enum tg_log_level lvl;
    if (tg_log_level_parse(gw.cfg->server.log_level, &lvl))
        tg_log_set_level(lvl);
    tg_log_set_json(gw.cfg->server.log_json);
    if (load_policy(gw.cfg, &gw.policy, err, sizeof err) != TG_OK) {
        tg_error("policy %s: %s", gw.cfg->policy, err);
        tg_config_unref(gw.cfg);
        return 2;
    }
    tg_info("routing policy: %s", tg_router_policy_name(gw.policy));
    if (gw.cfg->server.tls.enabled &&
        tg_tls_create(&gw.cfg->server.tls, &gw.tls, err, sizeof err) != TG_OK) {
        tg_error("%s", err);
        tg_config_unref(gw.cfg);
        tg_router_policy_unref(gw.policy);
        return 2;
    }
    if (tg_metrics_init(gw.cfg, TG_GATEWAY_VERSION) != TG_OK)
        tg_warn("metrics registry could not be created");
    pthread_mutex_init(&gw.cfg_lock, NULL);
    tg_metrics_set_gauges_fn(gauges_fn, &gw);
    evthread_use_pthreads();
    signal(SIGPIPE, SIG_IGN);

    const struct tg_config *cfg = gw.cfg;
    gw.n_workers = cfg->server.io_threads > 0 ? cfg->server.io_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (gw.n_workers < 1)
        gw.n_workers = 1;
    gw.workers = calloc((size_t)gw.n_workers, sizeof *gw.workers);
    gw.main_base = event_base_new();
    int rc = gw.workers != NULL && gw.main_base != NULL ? TG_OK : TG_NOMEM;
    for (int i = 0; i < gw.n_workers && rc == TG_OK; i++) {
        gw.workers[i].index = i;
        rc = worker_init(&gw.workers[i], &gw, cfg, -1);
    }
    if (rc != TG_OK) {
        tg_error("gateway start failed: %s", tg_strerror(rc));
        for (int i = 0; gw.workers != NULL && i < gw.n_workers; i++)
            worker_fini(&gw.workers[i]);
        free(gw.workers);
        if (gw.main_base != NULL)
            event_base_free(gw.main_base);
        tg_config_unref(gw.cfg);
        tg_router_policy_unref(gw.policy);
        tg_tls_destroy(gw.tls);
        return 1;
    }
    if (cfg->server.open_mode)
        tg_warn("open_mode is on: requests are accepted without an API key (local development only)");
    struct event *sigterm = evsignal_new(gw.main_base, SIGTERM, on_stop_signal, &gw);
    struct event *sigint = evsignal_new(gw.main_base, SIGINT, on_stop_signal, &gw);
    struct event *sighup = evsignal_new(gw.main_base, SIGHUP, on_reload_signal, &gw);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    event_add(sighup, NULL);

    for (int i = 0; i < gw.n_workers; i++)
        pthread_create(&gw.workers[i].thread, NULL, worker_main, &gw.workers[i]);
    tg_info("tiergate listening on %s://%s:%d (%d I/O threads), config %s",
            gw.tls != NULL ? "https" : "http", cfg->server.listen_host, cfg->server.port,
            gw.n_workers, config_path);
    /* The port is open at once; /readyz turns 200 once the local tier has loaded. */
    if (tg_local_start(&gw) != TG_OK) {
        tg_error("cannot start the local tier thread");
        atomic_store(&gw.ready, true);
    }

    event_base_dispatch(gw.main_base);

    /* Shutdown order: loops stopped -> engine (late events only queue) -> per worker: queued
     * events, upstream transfers, evhttp (connections), requests, connection records, base. */
    for (int i = 0; i < gw.n_workers; i++)
        pthread_join(gw.workers[i].thread, NULL);
    atomic_store(&gw.stopping, true);
    tg_local_stop(&gw);
    for (int i = 0; i < gw.n_workers; i++)
        worker_fini(&gw.workers[i]);
    if (drain_timer != NULL)
        event_free(drain_timer);
    drain_timer = NULL;
    drain_cut = false;
    event_free(sigterm);
    event_free(sigint);
    event_free(sighup);
    event_base_free(gw.main_base);
    free(gw.workers);
    tg_metrics_set_gauges_fn(NULL, NULL);
    tg_metrics_shutdown();
    tg_config_unref(gw.cfg);
    tg_router_policy_unref(gw.policy);
    tg_tls_destroy(gw.tls); /* after the workers: their connections held SSLs on it */
    pthread_mutex_destroy(&gw.cfg_lock);
    tg_info("tiergate stopped");
    return 0;
}

int tg_gateway_test_new(struct tg_config *cfg, evutil_socket_t listen_fd, struct tg_gateway **out)
{
    *out = NULL;
    struct tg_gateway *gw = calloc(1, sizeof *gw);
    if (gw == NULL) {
        tg_config_unref(cfg);
        return TG_NOMEM;
    }
    gw->config_path = cfg->path;
    gw->cfg = cfg;
    char err[1024];
    int rc = load_policy(cfg, &gw->policy, err, sizeof err);
    if (rc != TG_OK) {
        tg_error("policy %s: %s", cfg->policy, err);
        tg_config_unref(cfg);
        free(gw);
        return rc;
    }
    pthread_mutex_init(&gw->cfg_lock, NULL);
    if (tg_metrics_init(cfg, TG_GATEWAY_VERSION) != TG_OK)
        tg_warn("metrics registry could not be created");
    gw->n_workers = 1;
    gw->workers = calloc(1, sizeof *gw->workers);
    rc = gw->workers != NULL ? worker_init(&gw->workers[0], gw, cfg, listen_fd) : TG_NOMEM;
    /* No local tier is started: readiness means the HTTP side is up. */
    atomic_store(&gw->ready, true);
    if (rc != TG_OK) {
        tg_gateway_test_free(gw);
        return rc;
    }
    *out = gw;
    return TG_OK;
}

void tg_gateway_test_free(struct tg_gateway *gw)
{
    if (gw == NULL)
        return;
    atomic_store(&gw->stopping, true);
    if (gw->workers != NULL)
        worker_fini(&gw->workers[0]);
    free(gw->workers);
    tg_metrics_shutdown();
    tg_config_unref(gw->cfg);
    tg_router_policy_unref(gw->policy);
    pthread_mutex_destroy(&gw->cfg_lock);
    free(gw);
}
