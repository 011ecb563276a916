/* Replies: JSON bodies, OpenAI-shaped errors, SSE streams, the x-tiergate-* headers, and noticing
 * clients that hang up while their request is in flight. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "metrics.h"
#include "pipeline.h"
#include "redis_glue.h"
#include "tg/err.h"
#include "tg/json.h"
#include "tg/log.h"

void tg_conn_write_now(struct bufferevent *bev); /* conn.c */

double tg_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status < 400 ? "OK" : "Error";
    }
}

static void add_headers(struct tg_req *r, struct evkeyvalq *h, bool final_cost)
{
    char buf[96];
    evhttp_add_header(h, "x-request-id", r->id);
    evhttp_add_header(h, "x-tiergate-tier", r->tier != NULL ? r->tier : "none");
    evhttp_add_header(h, "x-tiergate-model", tg_pipeline_model_header(r, buf, sizeof buf));
    if (r->routed) {
        snprintf(buf, sizeof buf, "%.3f", r->dec.score);
        evhttp_add_header(h, "x-tiergate-score", buf);
    } else {
        evhttp_add_header(h, "x-tiergate-score", "none");
    }
    evhttp_add_header(h, "x-tiergate-cache", r->cache_result != NULL ? r->cache_result : "bypass");
    if (final_cost) {
        tg_pipeline_finish_record(r);
        evhttp_add_header(h, "x-tiergate-cost-usd", tg_pipeline_cost_header(r, buf, sizeof buf));
    } else if (r->tier != NULL && strcmp(r->tier, "cache") == 0) {
        evhttp_add_header(h, "x-tiergate-cost-usd", "0"); /* a replayed stream costs nothing */
    } else {
        /* Streams send headers before usage is known; the final usage chunk carries the cost. */
        evhttp_add_header(h, "x-tiergate-cost-usd", "pending");
    }
    if (r->fallbacks > 0) {
        snprintf(buf, sizeof buf, "%d; reason=%s", r->fallbacks,
                 r->fallback_reason != NULL ? r->fallback_reason : "unknown");
        evhttp_add_header(h, "x-tiergate-fallback", buf);
    }
    if (r->escalated) {
        snprintf(buf, sizeof buf, "true; reason=%s",
                 r->escalation_reason != NULL ? r->escalation_reason : "unknown");
        evhttp_add_header(h, "x-tiergate-escalated", buf);
    }
    if (atomic_load(&r->w->gw->draining))
        evhttp_add_header(h, "Connection", "close");
}

static void unwatch(struct tg_req *r)
{
    if (r->closewatch != NULL) {
        event_free(r->closewatch);
        r->closewatch = NULL;
    }
    if (r->http != NULL) {
        struct evhttp_connection *evcon = evhttp_request_get_connection(r->http);
        if (evcon != NULL)
            evhttp_connection_set_closecb(evcon, NULL, NULL);
    }
}

static void finish(struct tg_req *r)
{
    r->replied = true;
    atomic_fetch_sub(&r->w->gw->inflight, 1);
    tg_req_maybe_free(r);
}

/* tiergate_gateway_overhead_seconds for a request answered with what a remote call returned:
 * our time before the upstream request was written plus after its response was complete, up to
 * the moment the reply is handed to evhttp (the write itself is left out). Not for requests that
 * ran on the local engine first (escalations): their first half would include the engine's work. */
static void record_overhead(struct tg_req *r, double t_reply)
{
    if (r->t_up_sent <= 0 || r->t_up_done <= 0 || r->escalated || r->t_up_done < r->t_up_sent)
        return;
    tg_metrics_gateway_overhead((r->t_up_sent - r->t_start) + (t_reply - r->t_up_done));
}

void tg_req_reply_json(struct tg_req *r, int status, json_t *body)
{
    if (r->replied) {
        json_decref(body);
        return;
    }
    char *text = body != NULL ? tg_json_dumps(body) : NULL;
    json_decref(body);
    tg_req_reply_raw(r, status, text != NULL ? text : "", text != NULL ? strlen(text) : 0);
    free(text);
}

void tg_req_reply_raw(struct tg_req *r, int status, const char *text, size_t len)
{
    if (r->replied)
        return;
    r->status = status;
    if (r->t_first <= 0)
        r->t_first = tg_now_s();
    tg_glue_capture_body(r, status, text, len);
    if (r->exec_cb != NULL) {
        tg_pipeline_finish_record(r);
        r->exec_cb(status, "application/json", text, len, r->exec_user);
        r->exec_cb = NULL;
    } else if (r->http != NULL) {
        unwatch(r);
        struct evkeyvalq *h = evhttp_request_get_output_headers(r->http);
        evhttp_add_header(h, "Content-Type", "application/json");
        add_headers(r, h, true);
        if (r->should_retry >= 0)
            evhttp_add_header(h, "x-should-retry", r->should_retry ? "true" : "false");
        struct evbuffer *out = evbuffer_new();
        if (out != NULL)
            evbuffer_add(out, text, len);
        /* Plain sockets: the reply is written before we return (conn.c). The reference keeps the
         * bufferevent valid across evhttp_send_reply. */
        struct evhttp_connection *evcon = evhttp_request_get_connection(r->http);
        struct bufferevent *bev = evcon != NULL && r->w->gw->tls == NULL
                                      ? evhttp_connection_get_bufferevent(evcon)
                                      : NULL;
        if (bev != NULL)
            bufferevent_incref(bev);
        /* The overhead window ends as the reply is handed to evhttp: a clock read after the
         * write could include a preemption the client, already holding its reply, never saw. */
        double t_reply = tg_now_s();
        /* Recorded before the send: once the reply is written the client may read /metrics on
         * another I/O thread, and must find this request's sample there. */
        record_overhead(r, t_reply);
        evhttp_send_reply(r->http, status, reason_phrase(status), out);
        if (out != NULL)
            evbuffer_free(out);
        r->http = NULL;
        if (bev != NULL) {
            tg_conn_write_now(bev);
            bufferevent_decref(bev);
        }
    } else {
        tg_pipeline_finish_record(r);
    }
    finish(r);
}

void tg_req_reply_error(struct tg_req *r, int status, const char *message, const char *type,
                        const char *param, const char *code)
{
    if (status >= 500)
        tg_warn("%d %s", status, message);
    else
        tg_debug("%d %s", status, message);
    tg_req_reply_json(r, status, tg_json_error(message, type, param, code));
}

void tg_req_sse_begin(struct tg_req *r)
{
    if (r->sse || r->replied)
        return;
    r->sse = true;
    r->status = 200;
    if (r->t_first <= 0)
        r->t_first = tg_now_s();
    if (r->http == NULL)
        return;
    struct evkeyvalq *h = evhttp_request_get_output_headers(r->http);
    evhttp_add_header(h, "Content-Type", "text/event-stream; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    add_headers(r, h, false);
    evhttp_send_reply_start(r->http, 200, "OK");
}

/* TLS connections (bufferevent_openssl) run evhttp's "written" callback deferred, so one that
 * was scheduled when an earlier chunk drained can run after evhttp_send_reply_end() queued the
 * last bytes: evhttp then takes the reply as sent, stops writing, and the end of the stream stays
 * queued until the idle timeout (about 1 stream in 10 over TLS lost its [DONE]). So every chunk
 * goes out with a "written" callback, and the end of the stream is queued only from a callback
 * that found the output empty: a stale one finds it non-empty and waits for the next. */
static void sse_end_now(struct tg_req *r)
{
    if (r->http != NULL) {
        unwatch(r);
        evhttp_send_reply_end(r->http);
        r->http = NULL;
    }
    finish(r);
}

static void on_sse_written(struct evhttp_connection *evcon, void *arg)
{
    struct tg_req *r = arg;
    if (r->http == NULL || r->replied || tg_req_pending_out(r) > 0)
        return;
    r->sse_unacked = false;
    if (r->sse_end_pending) {
        r->sse_end_pending = false;
        sse_end_now(r);
    }
}

static void sse_send(struct tg_req *r, struct evbuffer *b)
{
    if (r->sse_end_pending)
        return;
    tg_glue_capture_sse(r, b);
    r->sse_unacked = true;
    evhttp_send_reply_chunk_with_cb(r->http, b, on_sse_written, r);
}

void tg_req_sse_write(struct tg_req *r, const char *data, size_t len)
{
    if (r->http == NULL || r->replied)
        return;
    struct evbuffer *b = evbuffer_new();
    if (b == NULL)
        return;
    evbuffer_add(b, data, len);
    sse_send(r, b);
    evbuffer_free(b);
}

void tg_req_sse_data_json(struct tg_req *r, const char *event, json_t *obj)
{
    char *text = tg_json_dumps(obj);
    json_decref(obj);
    if (text == NULL)
        return;
    if (r->http != NULL && !r->replied) {
        struct evbuffer *b = evbuffer_new();
        if (b != NULL) {
            if (event != NULL)
                evbuffer_add_printf(b, "event: %s\n", event);
            evbuffer_add(b, "data: ", 6);
            evbuffer_add(b, text, strlen(text));
            evbuffer_add(b, "\n\n", 2);
            sse_send(r, b);
            evbuffer_free(b);
        }
    }
    free(text);
}

void tg_req_sse_end(struct tg_req *r)
{
    if (r->replied || r->sse_end_pending)
        return;
    tg_pipeline_finish_record(r);
    if (r->http != NULL && r->sse_unacked) {
        r->sse_end_pending = true; /* on_sse_written ends it */
        return;
    }
    sse_end_now(r);
}

size_t tg_req_pending_out(struct tg_req *r)
{
    if (r->http == NULL)
        return 0;
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->http);
    if (evcon == NULL)
        return 0;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    return bev != NULL ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
}

/* ---- client hang-up -------------------------------------------------------------------- */

/* On the HTTPS listener (server.tls) a client that hangs up sends close_notify before its FIN:
 * a TLS alert record (type 0x15) up to TLS 1.2; in TLS 1.3 an encrypted record of 19 bytes
 * (2-byte alert, content type, 16-byte AEAD tag) that only its length tells apart. It means the
 * client left, as an EOF does; no HTTP request starts with these bytes or is that short. */
static bool is_tls_close_notify(const unsigned char *h, ssize_t n)
{
    if (h[0] == 0x15)
        return true;
    return n >= 5 && h[0] == 0x17 && h[1] == 0x03 && h[3] == 0x00 && h[4] == 0x13;
}

/* evhttp disables reading while a request is being handled, so a client that closes its
 * socket is not noticed until we write. Watch the socket ourselves: EOF means the client left. */
static void on_closewatch(evutil_socket_t fd, short what, void *arg)
{
    struct tg_req *r = arg;
    unsigned char h[5];
    ssize_t n = recv(fd, h, sizeof h, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0 && !is_tls_close_notify(h, n))
        return; /* a pipelined request: not ours to judge; stop watching (event is one-shot) */
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        event_add(r->closewatch, NULL);
        return;
    }
    tg_info("client closed the connection; cancelling the request");
    if (r->http != NULL) {
        struct evhttp_connection *evcon = evhttp_request_get_connection(r->http);
        if (evcon != NULL) {
            evhttp_connection_set_closecb(evcon, NULL, NULL);
            /* Frees the connection and the request evhttp holds for it. */
            evhttp_connection_free(evcon);
        }
        r->http = NULL;
    }
    tg_req_client_gone(r);
}

static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    struct tg_req *r = arg;
    /* evhttp detached the unfinished request from the dying connection: it is ours to free. */
    if (r->http != NULL && !r->replied) {
        evhttp_request_free(r->http);
        r->http = NULL;
    }
    tg_req_client_gone(r);
}

/* Most requests are answered within milliseconds; watching their socket would cost two
 * epoll_ctl calls each. Start watching only once a request has been in flight this long. */
#define CLOSEWATCH_DELAY_MS 20

static void on_closewatch_arm(evutil_socket_t unused, short what, void *arg)
{
    struct tg_req *r = arg;
    if (r->http == NULL || r->replied)
        return;
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->http);
    struct bufferevent *bev = evcon != NULL ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev != NULL ? bufferevent_getfd(bev) : -1;
    if (fd < 0)
        return;
    /* The timer has fired, so the event is not pending and may be re-assigned to the socket. */
    event_assign(r->closewatch, r->w->base, fd, EV_READ, on_closewatch, r);
    event_add(r->closewatch, NULL);
}

void tg_req_watch_client(struct tg_req *r)
{
    if (r->http == NULL || r->closewatch != NULL)
        return;
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->http);
    if (evcon == NULL)
        return;
    evhttp_connection_set_closecb(evcon, on_conn_close, r);
    r->closewatch = evtimer_new(r->w->base, on_closewatch_arm, r);
    if (r->closewatch != NULL) {
        struct timeval tv = {0, CLOSEWATCH_DELAY_MS * 1000};
        evtimer_add(r->closewatch, &tv);
    }
}

void tg_req_client_gone(struct tg_req *r)
{
    if (r->client_gone)
        return;
    r->client_gone = true;
    if (r->closewatch != NULL) {
        event_free(r->closewatch);
        r->closewatch = NULL;
    }
    if (r->jobs_active > 0)
        tg_local_cancel(r);
    if (r->up_active)
        tg_remote_cancel(r);
    tg_glue_stream_failed(r); /* a cut response is never cached */
    if (!r->replied) {
        if (r->status == 0)
            r->status = 499; /* nginx's "client closed request", for the metrics */
        tg_pipeline_finish_record(r);
        finish(r);
    } else {
        tg_req_maybe_free(r);
    }
}
