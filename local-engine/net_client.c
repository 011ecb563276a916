/* Engine client: one REQ socket per worker, with an "ops" context (batches of submits and
 * cancels) and a "poll" context (long poll for events + heartbeat). Protocol in
 * tg/engine_net.h.
 *
 * Locking: c->mtx guards everything but the user callbacks. c->cb_mtx serialises event
 * delivery: whoever delivers events (a poll answer, a failed worker, destroy) holds it and
 * decides under c->mtx whether the job is still known, so a job never gets an event after its
 * final one and never two callbacks at once. Neither lock is held across nng calls that could
 * block; nng_aio_cancel is called under c->mtx only where a stale cancel must be avoided (nng
 * completes cancelled aios on its own task threads).
 */
#include "tg/engine_net.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "net_proto.h"
#include "tg/buf.h"
#include "tg/err.h"
#include "tg/log.h"

#define CLI_MAX_WORKERS 64
#define CLI_BUCKETS 1024
#define CLI_MAX_RECONNECT_MS 2000
#define CLI_CLOSE_MS 5000

enum op_kind { OP_SUBMIT, OP_CANCEL };

struct cop {
    struct cop *next;
    enum op_kind kind;
    uint64_t id;
    char *json; /* the whole op object, for OP_SUBMIT; built on demand for OP_CANCEL */
    size_t len;
};

struct cjob {
    struct cjob *next;
    uint64_t id;
    size_t worker;
    tg_engine_event_cb cb;
    void *user;
};

enum chan_state { CH_IDLE, CH_SEND, CH_RECV };

struct worker {
    struct tg_engine_client *c;
    size_t idx;
    char *url;
    nng_socket sock;
    bool sock_open;
    nng_dialer dialer;
    nng_ctx ops_ctx, poll_ctx;
    nng_aio *ops_aio, *poll_aio;
    enum chan_state ops_state, poll_state;
    struct cop *q_head, *q_tail; /* ops waiting for the next batch */
    struct cop *batch;           /* ops in the batch on the wire */
    uint64_t sid;
    int pipes;
    bool live;
    int32_t jobs;
    struct tg_engine_stats stats;
    uint64_t heartbeats;
    bool have_info; /* info came on the current connection */
    struct tg_engine_info info;
};

struct tg_engine_client {
    struct tg_engine_client_params p;
    pthread_mutex_t mtx;
    pthread_cond_t cond;
    pthread_mutex_t cb_mtx;
    struct worker *w;
    size_t n;
    size_t rr;
    struct cjob *buckets[CLI_BUCKETS];
    int32_t n_jobs;
    uint64_t next_id;
    bool closing;
    int active; /* threads between enter() and leave(): they may still call nng */
};

struct tg_engine_client_params tg_engine_client_default_params(void)
{
    struct tg_engine_client_params p = {
        .heartbeat_timeout_ms = 5000,
        .poll_hold_ms = 250,
        .max_msg_bytes = TG_NET_DEFAULT_MAX_MSG,
        .reconnect_ms = 100,
    };
    return p;
}

static uint64_t new_sid(void)
{
    /* Unique enough across clients and reconnects; not a secret. */
    static uint64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)ts.tv_nsec ^
                 ((uint64_t)getpid() << 20) ^ (__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) *
                                                0x9E3779B97F4A7C15ull);
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 29;
    return x != 0 ? x : 1;
}

/* Anything that may call nng on a worker's socket enters first; destroy waits until nobody
 * is inside before closing the sockets (nng must not see a context used while its socket
 * closes). false = closing: do nothing. */
static bool enter(struct tg_engine_client *c)
{
    pthread_mutex_lock(&c->mtx);
    bool ok = !c->closing;
    if (ok)
        c->active++;
    pthread_mutex_unlock(&c->mtx);
    return ok;
}

static void leave(struct tg_engine_client *c)
{
    pthread_mutex_lock(&c->mtx);
    if (--c->active == 0 && c->closing)
        pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mtx);
}

/* ---- job table (mtx held) ------------------------------------------------------------ */

static struct cjob **job_slot(struct tg_engine_client *c, uint64_t id)
{
    struct cjob **pp = &c->buckets[id % CLI_BUCKETS];
    while (*pp != NULL && (*pp)->id != id)
        pp = &(*pp)->next;
    return pp;
}

static struct cjob *job_take(struct tg_engine_client *c, uint64_t id)
{
    struct cjob **pp = job_slot(c, id);
    struct cjob *j = *pp;
    if (j != NULL) {
        *pp = j->next;
        c->n_jobs--;
        c->w[j->worker].jobs--;
    }
    return j;
}

/* ---- ops queue (mtx held) ------------------------------------------------------------ */

static void ops_free(struct cop *o)
{
    while (o != NULL) {
        struct cop *n = o->next;
        free(o->json);
        free(o);
        o = n;
    }
}

static void op_push(struct worker *w, struct cop *o)
{
    o->next = NULL;
    if (w->q_tail != NULL)
        w->q_tail->next = o;
    else
        w->q_head = o;
    w->q_tail = o;
}

static int op_push_cancel(struct worker *w, uint64_t id)
{
    struct cop *o = calloc(1, sizeof(*o));
    if (o == NULL)
        return TG_NOMEM;
    o->kind = OP_CANCEL;
    o->id = id;
    op_push(w, o);
    return TG_OK;
}

/* If the ops channel is idle and ops are waiting, move them into a batch and return the
 * message to send (the caller sends it after unlocking). */
static nng_msg *ops_kick_locked(struct worker *w)
{
    struct tg_engine_client *c = w->c;
    if (c->closing || w->ops_state != CH_IDLE || w->q_head == NULL)
        return NULL;
    struct tg_buf b;
    tg_buf_init(&b, 0);
    int rc = tg_buf_printf(&b, "{\"v\":%d,\"sid\":\"%016" PRIx64 "\",\"op\":\"ops\",\"ops\":[",
                           TG_ENGINE_NET_PROTO_VERSION, w->sid);
    size_t budget = c->p.max_msg_bytes - 64;
    struct cop **tail = &w->batch;
    bool first = true;
    while (rc == TG_OK && w->q_head != NULL) {
        struct cop *o = w->q_head;
        char small[96];
        const char *txt = o->json;
        size_t len = o->len;
        if (o->kind == OP_CANCEL) {
            len = (size_t)snprintf(small, sizeof(small), "{\"op\":\"cancel\",\"id\":%" PRIu64 "}",
                                   o->id);
            txt = small;
        }
        if (!first && b.len + len + 4 > budget)
            break;
        if (!first)
            rc = tg_buf_append(&b, ",", 1);
        if (rc == TG_OK)
            rc = tg_buf_append(&b, txt, len);
        if (rc != TG_OK)
            break;
        first = false;
        w->q_head = o->next;
        if (w->q_head == NULL)
            w->q_tail = NULL;
        o->next = NULL;
        *tail = o;
        tail = &o->next;
    }
    if (rc == TG_OK)
        rc = tg_buf_append(&b, "]}", 2);
    nng_msg *m = NULL;
    size_t bytes = b.len;
    if (rc == TG_OK && nng_msg_alloc(&m, 0) == 0 && nng_msg_append(m, b.data, b.len) != 0) {
        nng_msg_free(m);
        m = NULL;
    }
    tg_buf_free(&b);
    if (m == NULL) {
        /* Out of memory: put the batch back; the next submit or answer tries again. */
        tg_error("engine client: cannot build a request for %s (out of memory)", w->url);
        if (w->batch != NULL) {
            *tail = w->q_head;
            w->q_head = w->batch;
            if (w->q_tail == NULL) {
                struct cop *t = w->q_head;
                while (t->next != NULL)
                    t = t->next;
                w->q_tail = t;
            }
            w->batch = NULL;
        }
        return NULL;
    }
    w->ops_state = CH_SEND;
    tg_debug("engine client: request to %s: %zu bytes of ops", w->url, bytes);
    return m;
}

static void ops_send(struct worker *w, nng_msg *m)
{
    if (m == NULL)
        return;
    nng_aio_set_msg(w->ops_aio, m);
    nng_aio_set_timeout(w->ops_aio, (nng_duration)w->c->p.heartbeat_timeout_ms);
    nng_ctx_send(w->ops_ctx, w->ops_aio);
}

/* ---- delivery ------------------------------------------------------------------------ */

struct failed {
    struct cjob *j;
    struct failed *next;
};

/* Fail every job on w with (err, msg): called with cb_mtx held and mtx NOT held. With
 * cancel_remote, cancels are queued so the worker frees their slots if it comes back on the
 * same session; otherwise the session is replaced (the worker drops the old one itself). */
static size_t pick_worker(struct tg_engine_client *c);

static void worker_fail(struct worker *w, int err, const char *msg, bool cancel_remote)
{
    struct tg_engine_client *c = w->c;
    struct cjob *list = NULL;
    nng_msg *m = NULL;
    nng_msg *moved[CLI_MAX_WORKERS] = {NULL};
    pthread_mutex_lock(&c->mtx);
    if (w->live)
        tg_warn("engine worker %s is down: %s", w->url, msg);
    w->live = false;
    /* Submits still queued here never left this process: send them to another live worker
     * instead of failing them (a hung worker's queue can hold many). Cancels queued for this
     * worker are moot now. */
    struct cop *q = w->q_head;
    w->q_head = w->q_tail = NULL;
    size_t rerouted = 0;
    while (q != NULL) {
        struct cop *o = q;
        q = o->next;
        o->next = NULL;
        struct cjob *j = o->kind == OP_SUBMIT ? *job_slot(c, o->id) : NULL;
        size_t to = (j != NULL && j->worker == w->idx) ? pick_worker(c) : SIZE_MAX;
        if (to == SIZE_MAX) {
            ops_free(o);
            continue;
        }
        j->worker = to;
        w->jobs--;
        c->w[to].jobs++;
        op_push(&c->w[to], o);
        rerouted++;
    }
    if (rerouted > 0) {
        tg_info("engine client: %zu job(s) not yet sent to %s moved to other workers", rerouted,
                w->url);
        for (size_t i = 0; i < c->n; i++)
            if (i != w->idx)
                moved[i] = ops_kick_locked(&c->w[i]);
    }
    for (size_t b = 0; b < CLI_BUCKETS; b++) {
        struct cjob **pp = &c->buckets[b];
        while (*pp != NULL) {
            struct cjob *j = *pp;
            if (j->worker == w->idx) {
                *pp = j->next;
                c->n_jobs--;
                w->jobs--;
                j->next = list;
                list = j;
                if (cancel_remote)
                    op_push_cancel(w, j->id);
            } else {
                pp = &j->next;
            }
        }
    }
    if (!cancel_remote)
        w->sid = new_sid();
    else
        m = ops_kick_locked(w);
    pthread_mutex_unlock(&c->mtx);
    ops_send(w, m);
    for (size_t i = 0; i < c->n; i++)
        ops_send(&c->w[i], moved[i]);

    while (list != NULL) {
        struct cjob *j = list;
        list = j->next;
        struct tg_engine_event ev;
        memset(&ev, 0, sizeof(ev));
        ev.type = TG_EV_ERROR;
        ev.job_id = j->id;
        ev.err = err;
        ev.message = msg;
        j->cb(&ev, j->user);
        free(j);
    }
}

static void worker_fail_locked_cb(struct worker *w, int err, const char *msg, bool cancel_remote)
{
    pthread_mutex_lock(&w->c->cb_mtx);
    worker_fail(w, err, msg, cancel_remote);
    pthread_mutex_unlock(&w->c->cb_mtx);
}

/* ---- poll channel -------------------------------------------------------------------- */

static void poll_start(struct worker *w)
{
    struct tg_engine_client *c = w->c;
    char body[128];
    pthread_mutex_lock(&c->mtx);
    if (c->closing) {
        pthread_mutex_unlock(&c->mtx);
        return;
    }
    int n = snprintf(body, sizeof(body), "{\"v\":%d,\"sid\":\"%016" PRIx64 "\",\"op\":\"poll\","
                     "\"hold\":%u%s}",
                     TG_ENGINE_NET_PROTO_VERSION, w->sid, c->p.poll_hold_ms,
                     w->have_info ? "" : ",\"info\":true");
    w->poll_state = CH_SEND;
    pthread_mutex_unlock(&c->mtx);
    nng_msg *m;
    if (nng_msg_alloc(&m, 0) != 0 || nng_msg_append(m, body, (size_t)n) != 0) {
        /* Cannot even poll: try again after a heartbeat period via a sleep. */
        tg_error("engine client: out of memory polling %s", w->url);
        pthread_mutex_lock(&c->mtx);
        w->poll_state = CH_IDLE;
        pthread_mutex_unlock(&c->mtx);
        nng_sleep_aio((nng_duration)c->p.heartbeat_timeout_ms, w->poll_aio);
        return;
    }
    nng_aio_set_msg(w->poll_aio, m);
    nng_aio_set_timeout(w->poll_aio, (nng_duration)c->p.heartbeat_timeout_ms);
    nng_ctx_send(w->poll_ctx, w->poll_aio);
}

/* Deliver the events of a poll answer; returns false when the answer is an error. */
static bool poll_process(struct worker *w, const json_t *o)
{
    struct tg_engine_client *c = w->c;
    const json_t *e = json_object_get(o, "e");
    if (json_is_integer(e)) {
        const char *m = json_string_value(json_object_get(o, "m"));
        char msg[512];
        snprintf(msg, sizeof(msg), "engine worker %s refused the request: %s", w->url,
                 m != NULL ? m : "no reason given");
        tg_error("%s", msg);
        worker_fail_locked_cb(w, TG_UNAVAILABLE, msg, false);
        return false;
    }
    struct tg_engine_stats st;
    bool have_stats = tg_net_stats_decode(json_object_get(o, "st"), &st) == TG_OK;
    struct tg_engine_info info;
    bool have_info = tg_net_info_decode(json_object_get(o, "info"), &info) == TG_OK;

    pthread_mutex_lock(&c->cb_mtx);
    nng_msg *m = NULL;
    const json_t *evs = json_object_get(o, "ev");
    size_t i;
    const json_t *eo;
    json_array_foreach(evs, i, eo)
    {
        struct tg_net_event ne;
        char err[160];
        if (tg_net_event_decode(eo, &ne, err, sizeof(err)) != TG_OK) {
            tg_warn("engine client: bad event from %s: %s", w->url, err);
            continue;
        }
        bool final = ne.ev.type != TG_EV_TOKEN;
        pthread_mutex_lock(&c->mtx);
        struct cjob *j = *job_slot(c, ne.ev.job_id);
        if (j != NULL && j->worker != w->idx)
            j = NULL;
        if (j != NULL && final)
            job_take(c, j->id);
        else if (j == NULL && !final)
            op_push_cancel(w, ne.ev.job_id); /* a job we already gave up on: free its slot */
        pthread_mutex_unlock(&c->mtx);
        if (j != NULL) {
            j->cb(&ne.ev, j->user);
            if (final)
                free(j);
        }
        tg_net_event_release(&ne);
    }
    pthread_mutex_lock(&c->mtx);
    if (have_stats)
        w->stats = st;
    if (have_info && w->pipes > 0) {
        w->info = info;
        w->have_info = true;
    }
    w->heartbeats++;
    if (!w->live && w->pipes > 0) {
        w->live = true;
        tg_info("engine worker %s is live (%d slots)", w->url, (int)w->stats.n_slots);
        pthread_cond_broadcast(&c->cond);
    }
    m = ops_kick_locked(w);
    pthread_mutex_unlock(&c->mtx);
    pthread_mutex_unlock(&c->cb_mtx);
    ops_send(w, m);
    return true;
}

static void poll_cb_inner(struct worker *w, int rv, nng_msg *m);

static void poll_cb(void *arg)
{
    struct worker *w = arg;
    int rv = nng_aio_result(w->poll_aio);
    nng_msg *m = nng_aio_get_msg(w->poll_aio);
    nng_aio_set_msg(w->poll_aio, NULL);
    if (!enter(w->c)) {
        if (m != NULL)
            nng_msg_free(m);
        return;
    }
    poll_cb_inner(w, rv, m);
    leave(w->c);
}

static void poll_cb_inner(struct worker *w, int rv, nng_msg *m)
{
    struct tg_engine_client *c = w->c;

    pthread_mutex_lock(&c->mtx);
    bool closing = c->closing;
    enum chan_state st = w->poll_state;
    if (!closing && st == CH_SEND && rv == 0)
        w->poll_state = CH_RECV;
    pthread_mutex_unlock(&c->mtx);
    if (closing) {
        if (m != NULL)
            nng_msg_free(m);
        return;
    }

    if (st == CH_IDLE) { /* the retry sleep after running out of memory */
        poll_start(w);
        return;
    }
    if (st == CH_SEND) {
        if (rv == 0) {
            nng_aio_set_timeout(w->poll_aio, (nng_duration)(c->p.poll_hold_ms +
                                                            c->p.heartbeat_timeout_ms));
            nng_ctx_recv(w->poll_ctx, w->poll_aio);
            return;
        }
        if (m != NULL)
            nng_msg_free(m);
        /* Not connected (timed out waiting for a pipe): jobs cannot be on it, but say so. */
        if (rv != NNG_ETIMEDOUT && rv != NNG_ECANCELED)
            tg_warn("engine client: poll to %s failed: %s", w->url, nng_strerror(rv));
        poll_start(w);
        return;
    }

    if (rv != 0) {
        char msg[384];
        if (rv == NNG_ETIMEDOUT)
            snprintf(msg, sizeof(msg),
                     "engine worker %s: no heartbeat within %u ms", w->url,
                     c->p.poll_hold_ms + c->p.heartbeat_timeout_ms);
        else
            snprintf(msg, sizeof(msg), "engine worker %s: connection lost (%s)", w->url,
                     nng_strerror(rv));
        worker_fail_locked_cb(w, TG_UNAVAILABLE, msg, rv == NNG_ETIMEDOUT);
        poll_start(w);
        return;
    }
    json_error_t jerr;
    json_t *o = json_loadb(nng_msg_body(m), nng_msg_len(m), JSON_ALLOW_NUL, &jerr);
    nng_msg_free(m);
    if (o == NULL || !json_is_object(o)) {
        char msg[384];
        snprintf(msg, sizeof(msg), "engine worker %s sent a malformed answer (%s)", w->url,
                 o == NULL ? jerr.text : "not an object");
        json_decref(o);
        worker_fail_locked_cb(w, TG_UNAVAILABLE, msg, true);
        poll_start(w);
        return;
    }
    poll_process(w, o);
    json_decref(o);
    poll_start(w);
}

/* ---- ops channel --------------------------------------------------------------------- */

static void ops_answer(struct worker *w, const json_t *o)
{
    struct tg_engine_client *c = w->c;
    const json_t *e = json_object_get(o, "e");
    if (json_is_integer(e)) {
        const char *m = json_string_value(json_object_get(o, "m"));
        char msg[512];
        snprintf(msg, sizeof(msg), "engine worker %s refused the request: %s", w->url,
                 m != NULL ? m : "no reason given");
        tg_error("%s", msg);
        worker_fail_locked_cb(w, TG_UNAVAILABLE, msg, false);
        return;
    }
    struct tg_engine_stats st;
    bool have_stats = tg_net_stats_decode(json_object_get(o, "st"), &st) == TG_OK;
    const json_t *res = json_object_get(o, "res");
    size_t i;
    const json_t *r;
    pthread_mutex_lock(&c->cb_mtx);
    json_array_foreach(res, i, r)
    {
        json_int_t code = json_integer_value(json_object_get(r, "e"));
        if (code == 0)
            continue;
        uint64_t id = (uint64_t)json_integer_value(json_object_get(r, "id"));
        const char *m = json_string_value(json_object_get(r, "m"));
        pthread_mutex_lock(&c->mtx);
        struct cjob *j = *job_slot(c, id);
        if (j != NULL && j->worker == w->idx)
            job_take(c, id);
        else
            j = NULL;
        pthread_mutex_unlock(&c->mtx);
        if (j != NULL) {
            struct tg_engine_event ev;
            memset(&ev, 0, sizeof(ev));
            ev.type = TG_EV_ERROR;
            ev.job_id = id;
            ev.err = (int)code;
            ev.message = m != NULL ? m : tg_strerror((int)code);
            j->cb(&ev, j->user);
            free(j);
        }
    }
    pthread_mutex_unlock(&c->cb_mtx);
    if (have_stats) {
        pthread_mutex_lock(&c->mtx);
        w->stats = st;
        pthread_mutex_unlock(&c->mtx);
    }
}

static void ops_cb_inner(struct worker *w, int rv, nng_msg *m);

static void ops_cb(void *arg)
{
    struct worker *w = arg;
    int rv = nng_aio_result(w->ops_aio);
    nng_msg *m = nng_aio_get_msg(w->ops_aio);
    nng_aio_set_msg(w->ops_aio, NULL);
    if (!enter(w->c)) {
        if (m != NULL)
            nng_msg_free(m);
        return;
    }
    ops_cb_inner(w, rv, m);
    leave(w->c);
}

static void ops_cb_inner(struct worker *w, int rv, nng_msg *m)
{
    struct tg_engine_client *c = w->c;

    pthread_mutex_lock(&c->mtx);
    bool closing = c->closing;
    enum chan_state st = w->ops_state;
    if (!closing && st == CH_SEND && rv == 0)
        w->ops_state = CH_RECV;
    pthread_mutex_unlock(&c->mtx);
    if (closing) {
        if (m != NULL)
            nng_msg_free(m);
        return;
    }
    if (st == CH_SEND && rv == 0) {
        nng_aio_set_timeout(w->ops_aio, (nng_duration)c->p.heartbeat_timeout_ms);
        nng_ctx_recv(w->ops_ctx, w->ops_aio);
        return;
    }

    json_t *o = NULL;
    if (rv == 0) {
        json_error_t jerr;
        o = json_loadb(nng_msg_body(m), nng_msg_len(m), JSON_ALLOW_NUL, &jerr);
        if (o == NULL || !json_is_object(o))
            tg_warn("engine client: malformed answer from %s", w->url);
    }
    if (m != NULL)
        nng_msg_free(m);

    if (o != NULL && json_is_object(o)) {
        ops_answer(w, o);
    } else {
        char msg[384];
        if (rv == NNG_ETIMEDOUT && st == CH_SEND)
            snprintf(msg, sizeof(msg), "engine worker %s: not connected", w->url);
        else if (rv == NNG_ETIMEDOUT)
            snprintf(msg, sizeof(msg), "engine worker %s: no answer within %u ms", w->url,
                     c->p.heartbeat_timeout_ms);
        else
            snprintf(msg, sizeof(msg), "engine worker %s: request failed (%s)", w->url,
                     rv != 0 ? nng_strerror(rv) : "malformed answer");
        /* The batch's jobs cannot be known to have started: fail the worker's jobs. */
        worker_fail_locked_cb(w, TG_UNAVAILABLE, msg, rv == NNG_ETIMEDOUT && st == CH_RECV);
    }
    json_decref(o);

    pthread_mutex_lock(&c->mtx);
    ops_free(w->batch);
    w->batch = NULL;
    w->ops_state = CH_IDLE;
    nng_msg *next = ops_kick_locked(w);
    pthread_mutex_unlock(&c->mtx);
    ops_send(w, next);
}

/* ---- pipes --------------------------------------------------------------------------- */

static void on_pipe_inner(struct worker *w, nng_pipe_ev ev);

static void on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    struct worker *w = arg;
    (void)p;
    if (!enter(w->c))
        return;
    on_pipe_inner(w, ev);
    leave(w->c);
}

static void on_pipe_inner(struct worker *w, nng_pipe_ev ev)
{
    struct tg_engine_client *c = w->c;
    pthread_mutex_lock(&c->mtx);
    if (ev == NNG_PIPE_EV_ADD_POST) {
        w->pipes++;
        pthread_mutex_unlock(&c->mtx);
        tg_debug("engine client: connected to %s", w->url);
        return;
    }
    w->pipes--;
    w->have_info = false; /* a restarted worker may serve another model */
    /* Abort requests in flight so REQ does not resend them (a submit would run twice) on
     * the next connection; their callbacks run on nng's threads after we unlock. */
    if (w->ops_state != CH_IDLE)
        nng_aio_cancel(w->ops_aio);
    if (w->poll_state == CH_RECV)
        nng_aio_cancel(w->poll_aio);
    pthread_mutex_unlock(&c->mtx);
    char msg[384];
    snprintf(msg, sizeof(msg), "engine worker %s: connection lost", w->url);
    worker_fail_locked_cb(w, TG_UNAVAILABLE, msg, false);
}

/* ---- public API ---------------------------------------------------------------------- */

static void client_free(struct tg_engine_client *c)
{
    for (size_t i = 0; i < c->n; i++) {
        struct worker *w = &c->w[i];
        if (w->ops_aio != NULL) {
            nng_msg *m = nng_aio_get_msg(w->ops_aio);
            if (m != NULL)
                nng_msg_free(m);
            nng_aio_free(w->ops_aio);
        }
        if (w->poll_aio != NULL) {
            nng_msg *m = nng_aio_get_msg(w->poll_aio);
            if (m != NULL)
                nng_msg_free(m);
            nng_aio_free(w->poll_aio);
        }
        ops_free(w->q_head);
        ops_free(w->batch);
        free(w->url);
    }
    free(c->w);
    pthread_mutex_destroy(&c->mtx);
    pthread_mutex_destroy(&c->cb_mtx);
    pthread_cond_destroy(&c->cond);
    free(c);
}

/* Closes every socket; false when one is stuck in nng (then nothing may be freed). */
static bool client_close_sockets(struct tg_engine_client *c)
{
    pthread_mutex_lock(&c->mtx);
    c->closing = true;
    while (c->active > 0)
        pthread_cond_wait(&c->cond, &c->mtx);
    pthread_mutex_unlock(&c->mtx);
    /* Stop our aios before closing the sockets: a REQ context with a request outstanding can
     * hang nng 1.5's nng_close (nanomsg/nng#1543, #1813); stopping the aio resets the context
     * first. Callbacks see `closing` and start nothing new. */
    for (size_t i = 0; i < c->n; i++) {
        if (c->w[i].ops_aio != NULL)
            nng_aio_stop(c->w[i].ops_aio);
        if (c->w[i].poll_aio != NULL)
            nng_aio_stop(c->w[i].poll_aio);
    }
    bool closed = true;
    for (size_t i = 0; i < c->n; i++)
        if (c->w[i].sock_open)
            closed &= tg_net_close_bounded(c->w[i].sock, CLI_CLOSE_MS, c->w[i].url);
    return closed;
}

int tg_engine_client_create(const char *const *urls, size_t n,
                            const struct tg_engine_client_params *pp,
                            struct tg_engine_client **out, char *err, size_t errlen)
{
    if (urls == NULL || n == 0 || n > CLI_MAX_WORKERS || out == NULL) {
        snprintf(err, errlen, "engine client: between 1 and %d worker URLs are required",
                 CLI_MAX_WORKERS);
        return TG_INVAL;
    }
    struct tg_engine_client_params d = tg_engine_client_default_params();
    struct tg_engine_client_params p = pp != NULL ? *pp : d;
    if (p.heartbeat_timeout_ms == 0)
        p.heartbeat_timeout_ms = d.heartbeat_timeout_ms;
    if (p.poll_hold_ms == 0)
        p.poll_hold_ms = d.poll_hold_ms;
    if (p.max_msg_bytes == 0)
        p.max_msg_bytes = d.max_msg_bytes;
    if (p.reconnect_ms == 0)
        p.reconnect_ms = d.reconnect_ms;
    if (p.max_msg_bytes < 4096) {
        snprintf(err, errlen, "engine client: max_msg_bytes must be at least 4096");
        return TG_INVAL;
    }

    struct tg_engine_client *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->w = calloc(n, sizeof(*c->w))) == NULL) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return TG_NOMEM;
    }
    c->p = p;
    c->n = n;
    pthread_mutex_init(&c->mtx, NULL);
    pthread_mutex_init(&c->cb_mtx, NULL);
    pthread_cond_init(&c->cond, NULL);

    int code = TG_OK;
    for (size_t i = 0; i < n && code == TG_OK; i++) {
        struct worker *w = &c->w[i];
        w->c = c;
        w->idx = i;
        w->sid = new_sid();
        int rv = 0;
        const char *what = "open a socket";
        if (urls[i] == NULL || (w->url = strdup(urls[i])) == NULL) {
            snprintf(err, errlen, "engine client: worker URL %zu is %s", i,
                     urls[i] == NULL ? "NULL" : "unusable (out of memory)");
            code = urls[i] == NULL ? TG_INVAL : TG_NOMEM;
            break;
        }
        if ((rv = nng_req0_open(&w->sock)) != 0)
            goto nngfail;
        w->sock_open = true;
        what = "configure the socket";
        if ((rv = nng_socket_set_size(w->sock, NNG_OPT_RECVMAXSZ, p.max_msg_bytes)) != 0 ||
            (rv = nng_socket_set_ms(w->sock, NNG_OPT_RECONNMINT, (nng_duration)p.reconnect_ms)) !=
                0 ||
            (rv = nng_socket_set_ms(w->sock, NNG_OPT_RECONNMAXT, CLI_MAX_RECONNECT_MS)) != 0 ||
            (rv = nng_pipe_notify(w->sock, NNG_PIPE_EV_ADD_POST, on_pipe, w)) != 0 ||
            (rv = nng_pipe_notify(w->sock, NNG_PIPE_EV_REM_POST, on_pipe, w)) != 0 ||
            (rv = nng_ctx_open(&w->ops_ctx, w->sock)) != 0 ||
            (rv = nng_ctx_open(&w->poll_ctx, w->sock)) != 0 ||
            /* Resending is ours to decide (a submit must not run twice): never resend. */
            (rv = nng_ctx_set_ms(w->ops_ctx, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE)) !=
                0 ||
            (rv = nng_ctx_set_ms(w->poll_ctx, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE)) !=
                0 ||
            (rv = nng_aio_alloc(&w->ops_aio, ops_cb, w)) != 0 ||
            (rv = nng_aio_alloc(&w->poll_aio, poll_cb, w)) != 0)
            goto nngfail;
        what = "dial";
        if ((rv = nng_dial(w->sock, w->url, &w->dialer, NNG_FLAG_NONBLOCK)) != 0)
            goto nngfail;
        continue;
    nngfail:
        snprintf(err, errlen, "engine client: cannot %s %s: %s", what, w->url, nng_strerror(rv));
        code = (rv == NNG_ENOMEM) ? TG_NOMEM : TG_INVAL;
    }
    if (code != TG_OK) {
        if (client_close_sockets(c))
            client_free(c);
        return code;
    }
    for (size_t i = 0; i < n; i++)
        poll_start(&c->w[i]);
    *out = c;
    return TG_OK;
}

int tg_engine_client_wait_ready(struct tg_engine_client *c, size_t n_live, uint32_t timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&c->mtx);
    int rc = TG_OK;
    for (;;) {
        size_t live = 0;
        for (size_t i = 0; i < c->n; i++)
            live += c->w[i].live;
        if (live >= n_live)
            break;
        if (pthread_cond_timedwait(&c->cond, &c->mtx, &ts) == ETIMEDOUT) {
            rc = TG_TIMEOUT;
            break;
        }
    }
    pthread_mutex_unlock(&c->mtx);
    return rc;
}

/* Least relative load among live workers, ties in turn; SIZE_MAX when none. mtx held. */
static size_t pick_worker(struct tg_engine_client *c)
{
    size_t best = SIZE_MAX;
    int64_t best_load = 0, best_slots = 1;
    for (size_t k = 0; k < c->n; k++) {
        size_t i = (c->rr + k) % c->n;
        struct worker *w = &c->w[i];
        if (!w->live)
            continue;
        int64_t slots = w->stats.n_slots > 0 ? w->stats.n_slots : 1;
        int64_t load = (int64_t)w->stats.slots_busy + w->stats.queue_depth;
        if (w->jobs > load)
            load = w->jobs;
        if (best == SIZE_MAX || load * best_slots < best_load * slots) {
            best = i;
            best_load = load;
            best_slots = slots;
        }
    }
    if (best != SIZE_MAX)
        c->rr = (best + 1) % c->n;
    return best;
}

static int submit_inner(struct tg_engine_client *c, const struct tg_engine_job *job,
                        tg_engine_event_cb cb, void *user, uint64_t *job_id, char *err,
                        size_t errlen);

int tg_engine_client_submit(struct tg_engine_client *c, const struct tg_engine_job *job,
                            tg_engine_event_cb cb, void *user, uint64_t *job_id, char *err,
                            size_t errlen)
{
    if (c == NULL || job == NULL || cb == NULL) {
        snprintf(err, errlen, "engine client: client, job and callback are required");
        return TG_INVAL;
    }
    if (!enter(c)) {
        snprintf(err, errlen, "engine client is shutting down");
        return TG_CLOSED;
    }
    int rc = submit_inner(c, job, cb, user, job_id, err, errlen);
    leave(c);
    return rc;
}

static int submit_inner(struct tg_engine_client *c, const struct tg_engine_job *job,
                        tg_engine_event_cb cb, void *user, uint64_t *job_id, char *err,
                        size_t errlen)
{
    pthread_mutex_lock(&c->mtx);
    uint64_t id = ++c->next_id;
    pthread_mutex_unlock(&c->mtx);

    json_t *jo = NULL;
    int rc = tg_net_job_encode(job, &jo, err, errlen);
    if (rc != TG_OK)
        return rc;
    json_t *op = json_pack("{s:s,s:I,s:o}", "op", "submit", "id", (json_int_t)id, "job", jo);
    char *txt = op != NULL ? json_dumps(op, JSON_COMPACT) : NULL;
    json_decref(op);
    struct cop *o = txt != NULL ? calloc(1, sizeof(*o)) : NULL;
    struct cjob *j = o != NULL ? calloc(1, sizeof(*j)) : NULL;
    if (j == NULL) {
        free(o);
        free(txt);
        snprintf(err, errlen, "out of memory");
        return TG_NOMEM;
    }
    o->kind = OP_SUBMIT;
    o->id = id;
    o->json = txt;
    o->len = strlen(txt);
    if (o->len + 256 > c->p.max_msg_bytes) {
        snprintf(err, errlen, "engine client: job is %zu bytes encoded, over the %zu-byte limit",
                 o->len, c->p.max_msg_bytes);
        ops_free(o);
        free(j);
        return TG_TOOBIG;
    }
    j->id = id;
    j->cb = cb;
    j->user = user;

    pthread_mutex_lock(&c->mtx);
    size_t wi = c->closing ? SIZE_MAX : pick_worker(c);
    if (wi == SIZE_MAX) {
        bool closing = c->closing;
        pthread_mutex_unlock(&c->mtx);
        if (closing)
            snprintf(err, errlen, "engine client is shutting down");
        else
            snprintf(err, errlen, "no live engine worker (%zu configured, first %s)", c->n,
                     c->w[0].url);
        ops_free(o);
        free(j);
        return closing ? TG_CLOSED : TG_UNAVAILABLE;
    }
    struct worker *w = &c->w[wi];
    j->worker = wi;
    struct cjob **slot = &c->buckets[id % CLI_BUCKETS];
    j->next = *slot;
    *slot = j;
    c->n_jobs++;
    w->jobs++;
    op_push(w, o);
    nng_msg *m = ops_kick_locked(w);
    pthread_mutex_unlock(&c->mtx);
    ops_send(w, m);
    if (job_id != NULL)
        *job_id = id;
    return TG_OK;
}

int tg_engine_client_cancel(struct tg_engine_client *c, uint64_t job_id)
{
    if (!enter(c))
        return TG_NOTFOUND;
    pthread_mutex_lock(&c->mtx);
    struct cjob *j = *job_slot(c, job_id);
    if (j == NULL) {
        pthread_mutex_unlock(&c->mtx);
        leave(c);
        return TG_NOTFOUND;
    }
    struct worker *w = &c->w[j->worker];
    int rc = op_push_cancel(w, job_id);
    nng_msg *m = ops_kick_locked(w);
    pthread_mutex_unlock(&c->mtx);
    ops_send(w, m);
    leave(c);
    return rc;
}

int tg_engine_client_job_worker(struct tg_engine_client *c, uint64_t job_id, size_t *index)
{
    pthread_mutex_lock(&c->mtx);
    struct cjob *j = *job_slot(c, job_id);
    if (j != NULL)
        *index = j->worker;
    pthread_mutex_unlock(&c->mtx);
    return j != NULL ? TG_OK : TG_NOTFOUND;
}

void tg_engine_client_stats(struct tg_engine_client *c, struct tg_engine_client_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&c->mtx);
    out->n_workers = (int32_t)c->n;
    out->jobs_in_flight = c->n_jobs;
    bool first = true;
    for (size_t i = 0; i < c->n; i++) {
        const struct worker *w = &c->w[i];
        if (!w->live)
            continue;
        const struct tg_engine_stats *s = &w->stats;
        struct tg_engine_stats *t = &out->engine;
        out->workers_live++;
        t->n_slots += s->n_slots;
        t->slots_busy += s->slots_busy;
        t->queue_depth += s->queue_depth;
        t->queue_max += s->queue_max;
        if (first || s->est_wait_ms < t->est_wait_ms)
            t->est_wait_ms = s->est_wait_ms;
        first = false;
        t->tokens_per_s += s->tokens_per_s;
        t->prefill_tokens_per_s += s->prefill_tokens_per_s;
        t->jobs_done += s->jobs_done;
        t->tokens_generated += s->tokens_generated;
        t->prefix_cache_hits += s->prefix_cache_hits;
        t->prefix_cache_misses += s->prefix_cache_misses;
        t->prefix_cache_tokens += s->prefix_cache_tokens;
        t->prefix_cache_entries += s->prefix_cache_entries;
    }
    pthread_mutex_unlock(&c->mtx);
}

int tg_engine_client_worker_stats(struct tg_engine_client *c, size_t index,
                                  struct tg_engine_worker_stats *out)
{
    if (index >= c->n)
        return TG_NOTFOUND;
    pthread_mutex_lock(&c->mtx);
    const struct worker *w = &c->w[index];
    out->url = w->url;
    out->live = w->live;
    out->jobs_in_flight = w->jobs;
    out->engine = w->stats;
    out->heartbeats = w->heartbeats;
    pthread_mutex_unlock(&c->mtx);
    return TG_OK;
}

int tg_engine_client_worker_info(struct tg_engine_client *c, size_t index,
                                 struct tg_engine_info *out)
{
    if (index >= c->n)
        return TG_NOTFOUND;
    pthread_mutex_lock(&c->mtx);
    const struct worker *w = &c->w[index];
    bool have = w->have_info;
    if (have)
        *out = w->info;
    pthread_mutex_unlock(&c->mtx);
    return have ? TG_OK : TG_NOTFOUND;
}

void tg_engine_client_destroy(struct tg_engine_client *c)
{
    if (c == NULL)
        return;
    bool closed = client_close_sockets(c);
    /* Our aios are stopped: nng calls none of our callbacks but the pipe notifications,
     * which see `closing`. Fail what is left, on this thread. */
    pthread_mutex_lock(&c->cb_mtx);
    for (size_t b = 0; b < CLI_BUCKETS; b++) {
        while (c->buckets[b] != NULL) {
            struct cjob *j = c->buckets[b];
            c->buckets[b] = j->next;
            struct tg_engine_event ev;
            memset(&ev, 0, sizeof(ev));
            ev.type = TG_EV_ERROR;
            ev.job_id = j->id;
            ev.err = TG_CLOSED;
            ev.message = "engine client closed";
            j->cb(&ev, j->user);
            free(j);
        }
    }
    pthread_mutex_unlock(&c->cb_mtx);
    if (closed)
        client_free(c);
    /* else: a socket is stuck in nng's close and may still notify us; the client is leaked
     * on purpose (logged by tg_net_close_bounded). */
}
