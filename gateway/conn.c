/* Header and read deadlines for client connections (slowloris).
 *
 * libevent 2.1's evhttp only has an inactivity timeout, which a client that trickles one byte at a
 * time never trips. We create each connection's bufferevent ourselves (evhttp_set_bevcb), keep an
 * extra reference to it, and sweep the list a few times a second:
 *   - evhttp released the bufferevent (all its callbacks cleared): drop our reference;
 *   - reading disabled, or the read callback cleared while evhttp writes a reply: evhttp is
 *     handling a request on it (not the client's fault);
 *   - bytes arrived since the connection was last idle or answered, but no request completed
 *     within header_timeout_ms (read_timeout_ms once more than max_header_bytes arrived, i.e. in
 *     the body): shut the socket down; evhttp sees EOF and frees the connection. Not while
 *     bytes still sit unread in the socket (FIONREAD): then this thread is behind, not the client.
 * Byte counts come from TCP_INFO (kernel counters), so nothing is added to the read path.
 */
#include <errno.h>
#include <stddef.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <linux/tcp.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "server.h"
#include "tg/log.h"
#include "tls.h"

struct tg_conn {
    struct tg_conn *next;
    struct bufferevent *bev;
    double mark_s;      /* when the connection was last idle, busy or answered */
    uint64_t rx_mark;   /* bytes received at mark */
    uint64_t tx_mark;   /* bytes sent at mark */
};

double tg_now_s(void);

/* evhttp has let the connection go: bufferevent_free() clears all three callbacks. The read
 * callback alone says nothing: evhttp_write_buffer() sets it to NULL for as long as a reply is
 * being written (a long SSE stream), while the event callback (evhttp_error_cb) stays. */
static bool released(struct bufferevent *bev)
{
    bufferevent_event_cb eventcb = NULL;
    bufferevent_getcb(bev, NULL, NULL, &eventcb, NULL);
    return eventcb == NULL || bufferevent_getfd(bev) < 0;
}

/* Over server.max_connections: evhttp sets the socket on the bufferevent after the callback, so
 * the refusal happens on the next loop turn. The client sees the connection closed. */
static void refuse(evutil_socket_t fd, short what, void *arg)
{
    struct bufferevent *bev = arg;
    evutil_socket_t s = bufferevent_getfd(bev);
    /* Released: evhttp already let it go, and its socket number may belong to another one. */
    if (!released(bev) && shutdown(s, SHUT_RDWR) == -1 && errno != ENOTCONN)
        tg_debug("shutdown: %s", strerror(errno));
    bufferevent_decref(bev);
}

/* *pp is a record evhttp has released: unlink it and drop our reference, which closes the
 * socket (BEV_OPT_CLOSE_ON_FREE). False, and nothing done, while evhttp still holds it. */
static bool drop_if_released(struct tg_worker *w, struct tg_conn **pp)
{
    struct tg_conn *c = *pp;
    if (!released(c->bev))
        return false;
    *pp = c->next;
    bufferevent_decref(c->bev);
    free(c);
    w->n_conns--;
    return true;
}

static void reap_released(struct tg_worker *w)
{
    for (struct tg_conn **pp = &w->conns; *pp != NULL;)
        if (!drop_if_released(w, pp))
            pp = &(*pp)->next;
}

/* A released connection keeps its socket open until our reference goes (BEV_OPT_CLOSE_ON_FREE).
 * The deadline sweep runs up to once a second; with many short connections (Connection: close
 * clients) that would hold thousands of finished sockets. So a connection arriving schedules a
 * reap REAP_DELAY_MS later: one pass over the list, no syscalls except the closes themselves. */
#define REAP_DELAY_MS 50

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    reap_released(arg);
}

static void schedule_reap(struct tg_worker *w, struct event_base *base)
{
    if (w->reap == NULL)
        w->reap = evtimer_new(base, on_reap, w);
    if (w->reap != NULL && !evtimer_pending(w->reap, NULL)) {
        struct timeval tv = {0, REAP_DELAY_MS * 1000};
        evtimer_add(w->reap, &tv);
    }
}

struct bufferevent *tg_conn_bevcb(struct event_base *base, void *arg)
{
    struct tg_worker *w = arg;
    /* BEV_OPT_CLOSE_ON_FREE: the socket is closed by the bufferevent when the last reference
     * goes (ours, below, dropped by the sweep), after libevent has deleted its events. Without it
     * evhttp closes the socket itself while our reference keeps the bufferevent's read event
     * registered: with the epoll changelist (server.c) a new connection that got the same number
     * was then never added to epoll. The TLS bufferevent is created the same way. */
    struct bufferevent *bev = w->gw->tls != NULL
                                  ? tg_tls_bev_new(w->gw->tls, base)
                                  : bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL)
        return NULL;
    if (w->max_conns > 0 && w->n_conns >= w->max_conns) {
        static _Atomic unsigned long refused;
        if (refused++ % 1000 == 0)
            tg_warn("server.max_connections reached: refusing new connections");
        bufferevent_incref(bev);
        if (event_base_once(base, -1, EV_TIMEOUT, refuse, bev, NULL) != 0)
            bufferevent_decref(bev);
        return bev;
    }
    schedule_reap(w, base);
    struct tg_conn *c = calloc(1, sizeof *c);
    if (c != NULL) {
        c->bev = bev;
        c->mark_s = tg_now_s();
        bufferevent_incref(bev);
        c->next = w->conns;
        w->conns = c;
        w->n_conns++;
    }
    return bev;
}

/* Write a reply evhttp has just queued on a plain-socket connection now, instead of in the next
 * loop turn once epoll reports the socket writable. When it all went out, evhttp's "written"
 * callback is run later in this same turn (deferred, as bufferevent_writecb would run it), so the
 * write interest evhttp enabled is dropped again before libevent's changelist reaches epoll: per
 * request one epoll_ctl and one loop turn fewer. Partial writes and errors are left to the
 * bufferevent's normal write path. Not for TLS bufferevents (the bytes must go through SSL). */
void tg_conn_write_now(struct bufferevent *bev)
{
    struct evbuffer *out = bufferevent_get_output(bev);
    evutil_socket_t fd = bufferevent_getfd(bev);
    if (fd < 0 || evbuffer_get_length(out) == 0)
        return;
    if (evbuffer_write(out, fd) <= 0)
        return;
    if (evbuffer_get_length(out) == 0)
        bufferevent_trigger(bev, EV_WRITE, BEV_TRIG_DEFER_CALLBACKS);
}

static bool tcp_counters(evutil_socket_t fd, uint64_t *rx, uint64_t *tx)
{
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == -1)
        return false;
    *rx = ti.tcpi_bytes_received;
    /* Bytes sent, not acknowledged: a reply counts when it is written, not when the client's
     * (possibly delayed) ACK arrives. Kernels before 4.19 lack the field (shorter struct). */
    bool has_sent = len >= offsetof(struct tcp_info, tcpi_bytes_sent) + sizeof ti.tcpi_bytes_sent;
    *tx = has_sent ? ti.tcpi_bytes_sent : ti.tcpi_bytes_acked;
    return true;
}

void tg_conn_sweep(struct tg_worker *w, int header_timeout_ms, int read_timeout_ms,
                   size_t max_header_bytes)
{
    double now = tg_now_s();
    struct tg_conn **pp = &w->conns;
    while (*pp != NULL) {
        if (drop_if_released(w, pp))
            continue;
        struct tg_conn *c = *pp;
        evutil_socket_t fd = bufferevent_getfd(c->bev);
        pp = &c->next;
        uint64_t rx = 0, tx = 0;
        if (!tcp_counters(fd, &rx, &tx))
            continue;
        /* Busy: evhttp is handling a request (reading disabled) or writing its reply (read
         * callback cleared by evhttp_write_buffer): the server's turn, not the client's. */
        bufferevent_data_cb readcb = NULL;
        bufferevent_getcb(c->bev, &readcb, NULL, NULL, NULL);
        bool busy = readcb == NULL || (bufferevent_get_enabled(c->bev) & EV_READ) == 0;
        if (busy || tx != c->tx_mark || rx == c->rx_mark) {
            c->mark_s = now;
            c->rx_mark = rx;
            c->tx_mark = tx;
            continue;
        }
        /* A request is arriving: bytes came in, nothing was answered yet. */
        int limit_ms = rx - c->rx_mark > max_header_bytes ? read_timeout_ms : header_timeout_ms;
        if (limit_ms > 0 && (now - c->mark_s) * 1000.0 > limit_ms) {
            /* Bytes the kernel holds that evhttp has not read yet: this thread is behind, not the
             * client (10,000 requests landing at once on a busy machine were dropped here,
             * tests/soak). Judge the connection once they have been read. */
            int unread = 0;
            if (ioctl(fd, FIONREAD, &unread) == 0 && unread > 0)
                continue;
            tg_warn("dropping a connection whose request did not arrive within %d ms "
                    "(%llu bytes so far)", limit_ms, (unsigned long long)(rx - c->rx_mark));
            if (shutdown(fd, SHUT_RDWR) == -1 && errno != ENOTCONN)
                tg_debug("shutdown: %s", strerror(errno));
            c->mark_s = now; /* once */
            c->rx_mark = rx;
        }
    }
}

void tg_conn_free_all(struct tg_worker *w)
{
    if (w->reap != NULL)
        event_free(w->reap);
    w->reap = NULL;
    while (w->conns != NULL) {
        struct tg_conn *c = w->conns;
        w->conns = c->next;
        bufferevent_decref(c->bev);
        free(c);
    }
    w->n_conns = 0;
}
