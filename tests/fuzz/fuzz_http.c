/* Fuzz target: raw bytes from a client into the gateway's real HTTP server path: evhttp's
 * request parser, then server.c's dispatch and every handler behind it (the /v1 pipeline with
 * auth, parsing, routing and the remote tier; /healthz, /readyz, /metrics, /dashboard, /v1/usage,
 * /v1/models, /v1/route/explain), in-process (fuzz_gw.c).
 *
 * The input is written on a fresh connection, which is then half-closed; the target runs the
 * gateway's loop until the gateway closes the connection. A connection still open 10 s after the
 * client finished is a hang (abort). Whatever comes back must be an HTTP response (evhttp answers in the version it was asked in, HTTP/0.1 included) or
 * nothing (evhttp drops garbage without an answer). */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "fuzz_gw.h"

double tg_now_s(void); /* gateway/http.c */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct client {
    int fd;
    const uint8_t *p;
    size_t left;
    bool eof;
    char head[16]; /* the first bytes of the answer */
    size_t got;
    struct event *ev;
};

static void on_client(evutil_socket_t fd, short what, void *arg)
{
    struct client *c = arg;
    if ((what & EV_WRITE) && c->left > 0) {
        ssize_t n = send(fd, c->p, c->left, MSG_NOSIGNAL);
        if (n > 0) {
            c->p += n;
            c->left -= (size_t)n;
        } else if (n == -1 && errno != EAGAIN && errno != EINTR) {
            c->left = 0; /* the gateway closed early (e.g. an error on the headers) */
        }
        if (c->left == 0) {
            shutdown(fd, SHUT_WR);
            event_del(c->ev);
            event_assign(c->ev, event_get_base(c->ev), fd, EV_READ | EV_PERSIST, on_client, c);
            event_add(c->ev, NULL);
        }
    }
    if (what & EV_READ) {
        char buf[16384];
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            size_t k = (size_t)n < sizeof c->head - c->got ? (size_t)n : sizeof c->head - c->got;
            memcpy(c->head + c->got, buf, k);
            c->got += (size_t)n;
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            c->eof = true;
            event_del(c->ev);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct tg_gateway *gw = fz_gateway();
    if (gw == NULL)
        abort();
    const double t0 = tg_now_s();
    struct client c = {.p = data, .left = size};
    c.fd = fz_connect();
    if (c.fd == -1 || fcntl(c.fd, F_SETFL, O_NONBLOCK) == -1)
        abort();
    if (size == 0)
        shutdown(c.fd, SHUT_WR);
    c.ev = event_new(gw->workers[0].base, c.fd, EV_READ | (size > 0 ? EV_WRITE : 0) | EV_PERSIST,
                     on_client, &c);
    if (c.ev == NULL || event_add(c.ev, NULL) != 0)
        abort();
    if (!fz_run_until(gw, &c.eof, 10000)) {
        fprintf(stderr, "fuzz_http: the gateway kept the connection open (%zu bytes unsent)\n",
                c.left);
        abort();
    }
    event_free(c.ev);
    close(c.fd);
    if (getenv("TG_FUZZ_VERBOSE") != NULL) /* replay: what each input got back */
        fprintf(stderr, "  -> %.12s (%zu bytes, %.1f ms)\n", c.got > 0 ? c.head : "nothing", c.got,
                (tg_now_s() - t0) * 1e3);
    if (c.got > 0 && (c.got < 9 || memcmp(c.head, "HTTP/", 5) != 0)) {
        fprintf(stderr, "fuzz_http: the answer is not an HTTP response\n");
        abort();
    }
    return 0;
}
