#include "server.h"

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>
#include <event2/util.h>

#include "tg/err.h"
#include "tg/json.h"
#include "tg/log.h"

struct tg_config *tg_gateway_config(struct tg_gateway *gw)
{
    pthread_mutex_lock(&gw->cfg_lock);
    struct tg_config *c = tg_config_ref(gw->cfg);
    pthread_mutex_unlock(&gw->cfg_lock);
    return c;
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

static void handle_request(struct evhttp_request *req, void *arg)
{
    struct tg_worker *w = arg;
    struct tg_gateway *gw = w->gw;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    if (path == NULL)
        path = "/";
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

static void *worker_main(void *arg)
{
    struct tg_worker *w = arg;
    event_base_dispatch(w->base);
    return NULL;
}

static int worker_init(struct tg_worker *w, struct tg_gateway *gw, const struct tg_config *cfg)
{
    w->gw = gw;
    w->base = event_base_new();
    w->http = w->base != NULL ? evhttp_new(w->base) : NULL;
    if (w->http == NULL)
        return TG_NOMEM;
    evhttp_set_max_body_size(w->http, (ev_ssize_t)cfg->server.max_body_bytes);
    evhttp_set_max_headers_size(w->http, (ev_ssize_t)cfg->server.max_header_bytes);
    evhttp_set_timeout(w->http, (cfg->server.read_timeout_ms + 999) / 1000);
    evhttp_set_allowed_methods(w->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_DELETE);
    evhttp_set_gencb(w->http, handle_request, w);
    evutil_socket_t fd = listen_socket(cfg->server.listen_host, cfg->server.port);
    if (fd == -1)
        return TG_IO;
    w->bound = evhttp_accept_socket_with_handle(w->http, fd);
    return w->bound != NULL ? TG_OK : TG_IO;
}

static void on_stop_signal(evutil_socket_t sig, short ev, void *arg)
{
    struct tg_gateway *gw = arg;
    if (atomic_exchange(&gw->draining, true))
        return;
    tg_info("%s received: no longer accepting connections, draining %d in-flight request(s)",
            sig == SIGTERM ? "SIGTERM" : "SIGINT", atomic_load(&gw->inflight));
    for (int i = 0; i < gw->n_workers; i++)
        event_base_loopexit(gw->workers[i].base, NULL);
    event_base_loopexit(gw->main_base, NULL);
}

static void on_reload_signal(evutil_socket_t sig, short ev, void *arg)
{
    struct tg_gateway *gw = arg;
    struct tg_config *next = NULL;
    char err[1024];
    if (tg_config_load(gw->config_path, &next, err, sizeof err) != TG_OK) {
        tg_error("SIGHUP: %s; keeping the current configuration", err);
        return;
    }
    pthread_mutex_lock(&gw->cfg_lock);
    struct tg_config *old = gw->cfg;
    gw->cfg = next;
    pthread_mutex_unlock(&gw->cfg_lock);
    tg_config_unref(old);
    tg_info("SIGHUP: configuration reloaded from %s", gw->config_path);
}

int tg_gateway_run(const char *config_path)
{
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
    pthread_mutex_init(&gw.cfg_lock, NULL);
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
        rc = worker_init(&gw.workers[i], &gw, cfg);
    }
    if (rc != TG_OK) {
        tg_error("gateway start failed: %s", tg_strerror(rc));
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
    atomic_store(&gw.ready, true);
    tg_info("tiergate listening on http://%s:%d (%d I/O threads), config %s",
            cfg->server.listen_host, cfg->server.port, gw.n_workers, config_path);

    event_base_dispatch(gw.main_base);

    for (int i = 0; i < gw.n_workers; i++) {
        pthread_join(gw.workers[i].thread, NULL);
        evhttp_free(gw.workers[i].http);
        event_base_free(gw.workers[i].base);
    }
    event_free(sigterm);
    event_free(sigint);
    event_free(sighup);
    event_base_free(gw.main_base);
    free(gw.workers);
    tg_config_unref(gw.cfg);
    pthread_mutex_destroy(&gw.cfg_lock);
    tg_info("tiergate stopped");
    return 0;
}
