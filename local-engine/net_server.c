/* Engine server: a REP socket whose requests are each served on an nng context (protocol in
 * tg/engine_net.h).
 *
 * Locking: one mutex (srv->mtx) guards sessions, jobs and the context pool. It is never held
 * across tg_engine_* calls (the engine calls back into us on its own thread) nor across nng
 * calls that might run our callbacks.
 *
 * A context is in one of three states:
 *   RECV    waiting for a request;
 *   PARKED  holding a poll for a session with no events: its aio sleeps for the hold time;
 *           an event for the session cancels the sleep, which wakes it early;
 *   SEND    an answer is on its way.
 * Whenever no context is left in RECV (all parked), one more is opened, up to max_contexts.
 */
#include "tg/engine_net.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "net_proto.h"
#include "tg/buf.h"
#include "tg/err.h"
#include "tg/log.h"

#define SRV_INITIAL_CONTEXTS 4
#define SRV_CLOSE_MS 5000
#define SRV_SWEEP_MS 1000
#define SRV_MAX_HOLD_MS 30000
#define SRV_SESSION_QUEUE_FACTOR 4 /* queued event bytes per session <= factor x max_msg */

struct srv;

struct srv_event {
    struct srv_event *next;
    char *json;
    size_t len;
};

struct srv_job;

struct srv_session {
    struct srv_session *next;
    uint64_t sid;
    uint32_t pipe_id;        /* nng pipe the session last spoke on */
    int64_t last_seen_ms;    /* monotonic */
    struct srv_event *head, *tail;
    size_t queued_bytes;
    struct srv_ctx *parked;  /* poll waiting for events, or NULL */
    struct srv_job *jobs;    /* jobs submitted by this session */
};

struct srv_job {
    struct srv_job *next;     /* in session->jobs, or srv->orphans */
    struct srv *srv;
    struct srv_session *sess; /* NULL once the session is gone */
    uint64_t cid;             /* client's job id */
    uint64_t eid;             /* engine job id (valid once !submitting) */
    bool submitting;          /* tg_engine_submit has not returned yet */
    bool finished;            /* final event seen */
    bool cancel_wanted;       /* cancel asked while submitting */
};

enum ctx_state { CTX_RECV, CTX_PARKED, CTX_SEND };

struct srv_ctx {
    struct srv_ctx *next;
    struct srv *srv;
    nng_ctx ctx;
    nng_aio *aio;
    enum ctx_state state;
    struct srv_session *sess; /* when PARKED */
    bool woken;               /* sleep cancelled because events arrived */
    bool want_info;           /* the parked poll asked for the model info */
};

struct srv {
    struct tg_engine *eng;
    nng_socket sock;
    nng_listener listener;
    char *url;
    struct tg_engine_server_params p;
    pthread_mutex_t mtx;
    pthread_cond_t cond;
    bool closing;
    struct srv_session *sessions;
    struct srv_job *orphans; /* jobs whose session went away, waiting for the final event */
    size_t n_jobs;           /* live srv_job structs (sessions' + orphans) */
    struct srv_ctx *ctxs;
    size_t n_ctxs, n_recv;
    nng_aio *sweep_aio;
    char *info_json; /* tg_engine_info, encoded once: the model does not change */
    int active; /* callbacks between enter() and leave(): they may still call nng */
};

struct tg_engine_server {
    struct srv s;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct tg_engine_server_params tg_engine_server_default_params(void)
{
    struct tg_engine_server_params p = {
        .session_timeout_ms = 15000,
        .max_msg_bytes = TG_NET_DEFAULT_MAX_MSG,
        .max_contexts = 1024,
    };
    return p;
}

/* A callback that will call nng on the socket enters first; stop() waits until none is
 * inside before closing the socket, since nng must not see a context used while (or after)
 * its socket closes. false = closing: do nothing. */
static bool enter(struct srv *s)
{
    pthread_mutex_lock(&s->mtx);
    bool ok = !s->closing;
    if (ok)
        s->active++;
    pthread_mutex_unlock(&s->mtx);
    return ok;
}

static void leave(struct srv *s)
{
    pthread_mutex_lock(&s->mtx);
    if (--s->active == 0 && s->closing)
        pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mtx);
}

/* ---- sessions and jobs (mtx held) ---------------------------------------------------- */

/* Wake a parked poll early. Called with mtx held: the parked context's callback needs mtx
 * before it can answer, so the aio cancelled here is still the sleep (never the answer's
 * send). nng completes a cancelled aio on its task threads, not inside nng_aio_cancel. */
static void wake_locked(struct srv_ctx *c)
{
    if (!c->woken) {
        c->woken = true;
        nng_aio_cancel(c->aio);
    }
}

static struct srv_session *session_find(struct srv *s, uint64_t sid)
{
    for (struct srv_session *x = s->sessions; x != NULL; x = x->next)
        if (x->sid == sid)
            return x;
    return NULL;
}

static struct srv_session *session_get(struct srv *s, uint64_t sid, uint32_t pipe_id)
{
    struct srv_session *x = session_find(s, sid);
    if (x == NULL) {
        x = calloc(1, sizeof(*x));
        if (x == NULL)
            return NULL;
        x->sid = sid;
        x->next = s->sessions;
        s->sessions = x;
        tg_debug("engine server %s: new session %016" PRIx64, s->url, sid);
    }
    x->pipe_id = pipe_id;
    x->last_seen_ms = now_ms();
    return x;
}

static void session_free_events(struct srv_session *x)
{
    while (x->head != NULL) {
        struct srv_event *e = x->head;
        x->head = e->next;
        free(e->json);
        free(e);
    }
    x->tail = NULL;
    x->queued_bytes = 0;
}

/* Unlink x, move its jobs to the orphans, and append their engine ids to `cancel` (the caller
 * cancels them after unlocking). A parked poll on it is woken (it answers with no events). */
struct id_list {
    uint64_t *v;
    size_t n, cap;
};

static void id_push(struct id_list *l, uint64_t id)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        uint64_t *v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL) {
            /* The job is left to finish on its own; its events are dropped (orphan). */
            tg_error("engine server: out of memory cancelling a job");
            return;
        }
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = id;
}

static void session_remove(struct srv *s, struct srv_session *x, struct id_list *cancel)
{
    for (struct srv_session **pp = &s->sessions; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == x) {
            *pp = x->next;
            break;
        }
    }
    while (x->jobs != NULL) {
        struct srv_job *j = x->jobs;
        x->jobs = j->next;
        j->sess = NULL;
        j->next = s->orphans;
        s->orphans = j;
        if (j->submitting)
            j->cancel_wanted = true;
        else if (!j->finished)
            id_push(cancel, j->eid);
    }
    if (x->parked != NULL) {
        x->parked->sess = NULL;
        wake_locked(x->parked);
        x->parked = NULL;
    }
    session_free_events(x);
    free(x);
}

static void job_unlink(struct srv *s, struct srv_job *j)
{
    struct srv_job **head = j->sess != NULL ? &j->sess->jobs : &s->orphans;
    for (struct srv_job **pp = head; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    }
    s->n_jobs--;
    if (s->n_jobs == 0)
        pthread_cond_broadcast(&s->cond);
}

/* ---- engine callback (engine thread) ------------------------------------------------- */

static void on_engine_event(const struct tg_engine_event *ev, void *user)
{
    struct srv_job *j = user;
    struct srv *s = j->srv;
    bool final = ev->type != TG_EV_TOKEN;
    uint64_t cancel_eid = 0;
    bool cancel = false;

    /* Encoding happens outside the lock; the session may vanish meanwhile, then it is
     * simply dropped. */
    size_t len = 0;
    char *json = NULL;
    pthread_mutex_lock(&s->mtx);
    bool want = j->sess != NULL;
    pthread_mutex_unlock(&s->mtx);
    if (want)
        json = tg_net_event_encode(ev, j->cid, &len);
    if (json != NULL && len + 1024 > s->p.max_msg_bytes) {
        /* One event must fit in one answer (the client drops bigger messages, and its
         * connection with them): say so instead. Tokens are never this big; a final text or
         * embedding can be, with a huge context. */
        size_t orig_len = len;
        free(json);
        json = NULL;
        if (final) {
            char m[160];
            snprintf(m, sizeof(m), "result is %zu bytes encoded, over the %zu-byte message limit",
                     orig_len, s->p.max_msg_bytes);
            struct tg_engine_event e2 = {.type = TG_EV_ERROR, .job_id = ev->job_id,
                                         .err = TG_TOOBIG, .message = m};
            json = tg_net_event_encode(&e2, j->cid, &len);
        }
        tg_warn("engine server %s: job %" PRIu64 ": event of %zu bytes over the limit", s->url,
                j->cid, orig_len);
    }

    pthread_mutex_lock(&s->mtx);
    struct srv_session *x = j->sess;
    if (x != NULL && json != NULL) {
        size_t cap = s->p.max_msg_bytes * SRV_SESSION_QUEUE_FACTOR;
        struct srv_event *e = malloc(sizeof(*e));
        if (e == NULL || x->queued_bytes + len > cap) {
            /* The client stopped reading: rather than grow without bound, end the job. */
            free(e);
            if (!final && !j->submitting) {
                cancel = true;
                cancel_eid = j->eid;
            }
            tg_warn("engine server %s: session %016" PRIx64 " is not reading its events "
                    "(%zu bytes queued); cancelling job %" PRIu64,
                    s->url, x->sid, x->queued_bytes, j->cid);
        } else {
            e->next = NULL;
            e->json = json;
            e->len = len;
            json = NULL;
            if (x->tail != NULL)
                x->tail->next = e;
            else
                x->head = e;
            x->tail = e;
            x->queued_bytes += len;
            if (x->parked != NULL)
                wake_locked(x->parked);
        }
    } else if (x != NULL && json == NULL) {
        tg_error("engine server %s: cannot encode an event for job %" PRIu64 " (out of memory)",
                 s->url, j->cid);
    }
    if (final) {
        j->finished = true;
        if (!j->submitting) {
            job_unlink(s, j);
            free(j);
        }
    }
    pthread_mutex_unlock(&s->mtx);
    free(json);
    if (cancel)
        tg_engine_cancel(s->eng, cancel_eid);
}

/* ---- answers ------------------------------------------------------------------------- */

static nng_msg *msg_from_buf(const struct tg_buf *b)
{
    nng_msg *m;
    if (nng_msg_alloc(&m, 0) != 0)
        return NULL;
    if (nng_msg_append(m, b->data != NULL ? b->data : "", b->len) != 0) {
        nng_msg_free(m);
        return NULL;
    }
    return m;
}

static nng_msg *msg_from_json(json_t *o)
{
    char *txt = json_dumps(o, JSON_COMPACT);
    if (txt == NULL)
        return NULL;
    nng_msg *m;
    if (nng_msg_alloc(&m, 0) != 0) {
        free(txt);
        return NULL;
    }
    if (nng_msg_append(m, txt, strlen(txt)) != 0) {
        nng_msg_free(m);
        m = NULL;
    }
    free(txt);
    return m;
}

static nng_msg *error_answer(int code, const char *msg)
{
    json_t *o = json_pack("{s:i,s:i,s:s}", "v", TG_ENGINE_NET_PROTO_VERSION, "e", code, "m", msg);
    if (o == NULL)
        return NULL;
    nng_msg *m = msg_from_json(o);
    json_decref(o);
    return m;
}

static char *stats_json(struct srv *s)
{
    struct tg_engine_stats st;
    tg_engine_stats(s->eng, &st);
    json_t *o = tg_net_stats_encode(&st);
    if (o == NULL)
        return NULL;
    char *txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return txt;
}

/* Poll answer: as many queued events of x as fit in max_msg_bytes (at least one), plus stats.
 * mtx held; x may be NULL (session gone: empty answer). */
static nng_msg *poll_answer(struct srv *s, struct srv_session *x, const char *stats,
                            bool want_info)
{
    struct tg_buf b;
    tg_buf_init(&b, 0);
    int rc = tg_buf_printf(&b, "{\"v\":%d,\"st\":%s,", TG_ENGINE_NET_PROTO_VERSION,
                           stats != NULL ? stats : "{}");
    if (rc == TG_OK && want_info && s->info_json != NULL)
        rc = tg_buf_printf(&b, "\"info\":%s,", s->info_json);
    if (rc == TG_OK)
        rc = tg_buf_append_str(&b, "\"ev\":[");
    size_t budget = s->p.max_msg_bytes > 64 ? s->p.max_msg_bytes - 64 : 0;
    bool first = true;
    while (rc == TG_OK && x != NULL && x->head != NULL) {
        struct srv_event *e = x->head;
        if (!first && b.len + e->len + 1 > budget)
            break;
        if (!first)
            rc = tg_buf_append(&b, ",", 1);
        if (rc == TG_OK)
            rc = tg_buf_append(&b, e->json, e->len);
        if (rc != TG_OK)
            break;
        first = false;
        x->head = e->next;
        if (x->head == NULL)
            x->tail = NULL;
        x->queued_bytes -= e->len;
        free(e->json);
        free(e);
    }
    if (rc == TG_OK)
        rc = tg_buf_append(&b, "]}", 2);
    nng_msg *m = rc == TG_OK ? msg_from_buf(&b) : NULL;
    tg_buf_free(&b);
    return m;
}

/* ---- requests ------------------------------------------------------------------------ */

static void ctx_send(struct srv_ctx *c, nng_msg *m)
{
    if (m == NULL) {
        /* Out of memory: no answer; the client's heartbeat will notice. Keep serving. */
        tg_error("engine server %s: cannot build an answer (out of memory)", c->srv->url);
        pthread_mutex_lock(&c->srv->mtx);
        c->state = CTX_RECV;
        c->srv->n_recv++;
        pthread_mutex_unlock(&c->srv->mtx);
        nng_ctx_recv(c->ctx, c->aio);
        return;
    }
    c->state = CTX_SEND;
    nng_aio_set_msg(c->aio, m);
    nng_ctx_send(c->ctx, c->aio);
}

static int handle_submit(struct srv *s, struct srv_session *sess_unused, uint64_t sid,
                         uint32_t pipe_id, uint64_t cid, const json_t *jobj, char *err,
                         size_t errlen)
{
    (void)sess_unused;
    struct tg_net_job nj;
    int rc = tg_net_job_decode(jobj, &nj, err, errlen);
    if (rc != TG_OK)
        return rc;
    struct srv_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        tg_net_job_release(&nj);
        snprintf(err, errlen, "out of memory");
        return TG_NOMEM;
    }
    j->srv = s;
    j->cid = cid;
    j->submitting = true;

    pthread_mutex_lock(&s->mtx);
    struct srv_session *x = session_get(s, sid, pipe_id);
    bool closing = s->closing;
    if (x == NULL || closing) {
        pthread_mutex_unlock(&s->mtx);
        free(j);
        tg_net_job_release(&nj);
        snprintf(err, errlen, closing ? "engine worker is shutting down" : "out of memory");
        return closing ? TG_CLOSED : TG_NOMEM;
    }
    j->sess = x;
    j->next = x->jobs;
    x->jobs = j;
    s->n_jobs++;
    pthread_mutex_unlock(&s->mtx);

    uint64_t eid = 0;
    rc = tg_engine_submit(s->eng, &nj.job, on_engine_event, j, &eid, err, errlen);
    tg_net_job_release(&nj);

    bool cancel = false;
    pthread_mutex_lock(&s->mtx);
    j->submitting = false;
    j->eid = eid;
    if (rc != TG_OK || j->finished) {
        job_unlink(s, j);
        free(j);
    } else if (j->cancel_wanted) {
        cancel = true;
    }
    pthread_mutex_unlock(&s->mtx);
    if (cancel)
        tg_engine_cancel(s->eng, eid);
    if (rc == TG_OK)
        tg_debug("engine server %s: job %" PRIu64 " of session %016" PRIx64
                 " is engine job %" PRIu64,
                 s->url, cid, sid, eid);
    return rc;
}

static void handle_cancel(struct srv *s, uint64_t sid, uint64_t cid)
{
    uint64_t eid = 0;
    bool found = false;
    pthread_mutex_lock(&s->mtx);
    struct srv_session *x = session_find(s, sid);
    for (struct srv_job *j = x != NULL ? x->jobs : NULL; j != NULL; j = j->next) {
        if (j->cid == cid && !j->finished) {
            if (j->submitting) {
                j->cancel_wanted = true;
            } else {
                eid = j->eid;
                found = true;
            }
            break;
        }
    }
    pthread_mutex_unlock(&s->mtx);
    if (found) {
        tg_debug("engine server %s: cancel job %" PRIu64 " (engine job %" PRIu64 ")", s->url,
                 cid, eid);
        tg_engine_cancel(s->eng, eid);
    }
}

static nng_msg *handle_ops(struct srv *s, uint64_t sid, uint32_t pipe_id, const json_t *ops)
{
    json_t *res = json_array();
    if (res == NULL)
        return NULL;
    size_t i;
    const json_t *op;
    json_array_foreach(ops, i, op)
    {
        const char *name = json_string_value(json_object_get(op, "op"));
        const json_t *idv = json_object_get(op, "id");
        if (name == NULL || !json_is_integer(idv)) {
            json_array_append_new(res, json_pack("{s:i,s:i,s:s}", "id", -1, "e", TG_INVAL, "m",
                                                 "op needs 'op' and integer 'id'"));
            continue;
        }
        uint64_t cid = (uint64_t)json_integer_value(idv);
        if (strcmp(name, "submit") == 0) {
            char err[512] = "";
            int rc = handle_submit(s, NULL, sid, pipe_id, cid, json_object_get(op, "job"), err,
                                   sizeof(err));
            if (rc == TG_OK)
                json_array_append_new(res, json_pack("{s:I,s:i}", "id", (json_int_t)cid, "e", 0));
            else
                json_array_append_new(res,
                                      json_pack("{s:I,s:i,s:o}", "id", (json_int_t)cid, "e", rc,
                                                "m", tg_net_string_lossy(err, strlen(err))));
        } else if (strcmp(name, "cancel") == 0) {
            handle_cancel(s, sid, cid);
            json_array_append_new(res, json_pack("{s:I,s:i}", "id", (json_int_t)cid, "e", 0));
        } else {
            json_array_append_new(res, json_pack("{s:I,s:i,s:s}", "id", (json_int_t)cid, "e",
                                                 TG_UNSUPPORTED, "m", "unknown op"));
        }
    }
    char *st = stats_json(s);
    json_t *o = json_pack("{s:i,s:o}", "v", TG_ENGINE_NET_PROTO_VERSION, "res", res);
    if (o != NULL && st != NULL) {
        json_t *sto = json_loads(st, 0, NULL);
        if (sto != NULL)
            json_object_set_new(o, "st", sto);
    }
    free(st);
    nng_msg *m = o != NULL ? msg_from_json(o) : NULL;
    json_decref(o);
    return m;
}

static void ctx_cb(void *arg);

/* Open one more context in RECV state. mtx held by the caller; nng_ctx_recv is started by
 * the caller after unlocking (returned pointer), NULL when at the cap or out of memory. */
static struct srv_ctx *ctx_add_locked(struct srv *s)
{
    if (s->closing || s->n_ctxs >= s->p.max_contexts)
        return NULL;
    struct srv_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->srv = s;
    if (nng_aio_alloc(&c->aio, ctx_cb, c) != 0) {
        free(c);
        return NULL;
    }
    if (nng_ctx_open(&c->ctx, s->sock) != 0) {
        nng_aio_free(c->aio);
        free(c);
        return NULL;
    }
    c->state = CTX_RECV;
    c->next = s->ctxs;
    s->ctxs = c;
    s->n_ctxs++;
    s->n_recv++;
    return c;
}

/* A request arrived on c (RECV state, already counted out of n_recv). */
static void handle_request(struct srv_ctx *c, nng_msg *req)
{
    struct srv *s = c->srv;
    uint32_t pipe_id = nng_pipe_id(nng_msg_get_pipe(req));
    json_error_t jerr;
    json_t *o = json_loadb(nng_msg_body(req), nng_msg_len(req), 0, &jerr);
    nng_msg_free(req);
    if (o == NULL || !json_is_object(o)) {
        json_decref(o);
        tg_warn("engine server %s: malformed request (%s)", s->url,
                o == NULL ? jerr.text : "not an object");
        ctx_send(c, error_answer(TG_PARSE, "malformed request: not a JSON object"));
        return;
    }
    const json_t *vv = json_object_get(o, "v");
    if (!json_is_integer(vv) || json_integer_value(vv) != TG_ENGINE_NET_PROTO_VERSION) {
        char m[160];
        snprintf(m, sizeof(m),
                 "engine protocol version %" JSON_INTEGER_FORMAT
                 " not supported (this worker speaks %d)",
                 json_is_integer(vv) ? json_integer_value(vv) : (json_int_t)0,
                 TG_ENGINE_NET_PROTO_VERSION);
        tg_warn("engine server %s: %s", s->url, m);
        json_decref(o);
        ctx_send(c, error_answer(TG_UNSUPPORTED, m));
        return;
    }
    const char *op = json_string_value(json_object_get(o, "op"));
    const char *sids = json_string_value(json_object_get(o, "sid"));
    uint64_t sid = 0;
    char *end = NULL;
    if (sids != NULL) {
        errno = 0;
        sid = strtoull(sids, &end, 16);
    }
    if (op == NULL || sids == NULL || end == sids || *end != '\0' || errno != 0) {
        json_decref(o);
        ctx_send(c, error_answer(TG_INVAL, "request needs 'op' and a hex 'sid'"));
        return;
    }

    if (strcmp(op, "ops") == 0) {
        const json_t *ops = json_object_get(o, "ops");
        if (!json_is_array(ops)) {
            json_decref(o);
            ctx_send(c, error_answer(TG_INVAL, "'ops' must be an array"));
            return;
        }
        pthread_mutex_lock(&s->mtx);
        session_get(s, sid, pipe_id);
        pthread_mutex_unlock(&s->mtx);
        nng_msg *m = handle_ops(s, sid, pipe_id, ops);
        json_decref(o);
        ctx_send(c, m);
        return;
    }
    if (strcmp(op, "poll") != 0) {
        json_decref(o);
        ctx_send(c, error_answer(TG_UNSUPPORTED, "unknown op"));
        return;
    }
    json_int_t hold = json_integer_value(json_object_get(o, "hold"));
    bool want_info = json_is_true(json_object_get(o, "info"));
    json_decref(o);
    if (hold < 0)
        hold = 0;
    if (hold > SRV_MAX_HOLD_MS)
        hold = SRV_MAX_HOLD_MS;

    char *st = stats_json(s);
    struct srv_ctx *added = NULL;
    nng_msg *m = NULL;
    bool park = false;
    pthread_mutex_lock(&s->mtx);
    struct srv_session *x = session_get(s, sid, pipe_id);
    if (x != NULL && x->head == NULL && hold > 0 && !s->closing) {
        /* A poll still parked for this session was abandoned by its client (it timed out
         * and asked again): answer it empty so its context comes back. */
        if (x->parked != NULL) {
            x->parked->sess = NULL;
            wake_locked(x->parked);
        }
        x->parked = c;
        c->sess = x;
        c->woken = false;
        c->want_info = want_info;
        c->state = CTX_PARKED;
        park = true;
        if (s->n_recv == 0)
            added = ctx_add_locked(s);
        /* Started under mtx so that an event arriving right now finds the sleep to cancel. */
        nng_sleep_aio((nng_duration)hold, c->aio);
    } else {
        m = poll_answer(s, x, st, want_info);
    }
    pthread_mutex_unlock(&s->mtx);
    free(st);
    if (added != NULL)
        nng_ctx_recv(added->ctx, added->aio);
    if (!park)
        ctx_send(c, m);
}

static void ctx_cb_inner(struct srv_ctx *c, int rv);

static void ctx_cb(void *arg)
{
    struct srv_ctx *c = arg;
    struct srv *s = c->srv;
    int rv = nng_aio_result(c->aio);
    if (!enter(s)) {
        if (c->state == CTX_SEND && rv != 0) {
            nng_msg_free(nng_aio_get_msg(c->aio));
            nng_aio_set_msg(c->aio, NULL);
        } else if (c->state == CTX_RECV && rv == 0) {
            nng_msg_free(nng_aio_get_msg(c->aio));
            nng_aio_set_msg(c->aio, NULL);
        }
        return;
    }
    ctx_cb_inner(c, rv);
    leave(s);
}

static void ctx_cb_inner(struct srv_ctx *c, int rv)
{
    struct srv *s = c->srv;
    switch (c->state) {
    case CTX_RECV: {
        if (rv == NNG_ECLOSED || s->closing)
            return;
        if (rv != 0) {
            tg_warn("engine server %s: receive failed: %s", s->url, nng_strerror(rv));
            nng_ctx_recv(c->ctx, c->aio);
            return;
        }
        nng_msg *req = nng_aio_get_msg(c->aio);
        nng_aio_set_msg(c->aio, NULL);
        pthread_mutex_lock(&s->mtx);
        s->n_recv--;
        pthread_mutex_unlock(&s->mtx);
        handle_request(c, req);
        return;
    }
    case CTX_PARKED: {
        /* Hold time over (rv == 0) or woken by an event (NNG_ECANCELED). */
        if (s->closing)
            return;
        char *st = stats_json(s);
        pthread_mutex_lock(&s->mtx);
        struct srv_session *x = c->sess;
        if (x != NULL && x->parked == c)
            x->parked = NULL;
        c->sess = NULL;
        nng_msg *m = poll_answer(s, x, st, c->want_info);
        pthread_mutex_unlock(&s->mtx);
        free(st);
        ctx_send(c, m);
        return;
    }
    case CTX_SEND:
        if (rv != 0) {
            /* The requester is gone (pipe closed): the answer is dropped; sessions are
             * cleaned up by the pipe notification or the sweep. */
            nng_msg_free(nng_aio_get_msg(c->aio));
            nng_aio_set_msg(c->aio, NULL);
            if (rv == NNG_ECLOSED || s->closing)
                return;
        }
        pthread_mutex_lock(&s->mtx);
        c->state = CTX_RECV;
        s->n_recv++;
        bool closing = s->closing;
        pthread_mutex_unlock(&s->mtx);
        if (!closing)
            nng_ctx_recv(c->ctx, c->aio);
        return;
    }
}

/* ---- pipe removal and sweep ---------------------------------------------------------- */

static void cancel_all(struct srv *s, struct id_list *ids)
{
    for (size_t i = 0; i < ids->n; i++)
        tg_engine_cancel(s->eng, ids->v[i]);
    free(ids->v);
    memset(ids, 0, sizeof(*ids));
}

/* Remove sessions matching (pipe_id != 0: that pipe; else idle past the timeout). */
static void sessions_reap(struct srv *s, uint32_t pipe_id, const char *why)
{
    for (;;) {
        struct id_list ids = {0};
        bool more = false;
        int64_t now = now_ms();
        pthread_mutex_lock(&s->mtx);
        for (struct srv_session *x = s->sessions; x != NULL; x = x->next) {
            bool match = pipe_id != 0 ? x->pipe_id == pipe_id
                                      : (x->parked == NULL &&
                                         now - x->last_seen_ms > (int64_t)s->p.session_timeout_ms);
            if (match) {
                tg_info("engine server %s: session %016" PRIx64 " %s; cancelling its jobs",
                        s->url, x->sid, why);
                session_remove(s, x, &ids);
                more = true;
                break;
            }
        }
        pthread_mutex_unlock(&s->mtx);
        cancel_all(s, &ids);
        if (!more)
            return;
    }
}

static void on_pipe(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    struct srv *s = arg;
    if (ev == NNG_PIPE_EV_ADD_POST) {
        tg_debug("engine server %s: client connected (pipe %u)", s->url, nng_pipe_id(p));
    } else if (ev == NNG_PIPE_EV_REM_POST) {
        tg_debug("engine server %s: client disconnected (pipe %u)", s->url, nng_pipe_id(p));
        sessions_reap(s, nng_pipe_id(p), "lost its connection");
    }
}

static void sweep_cb(void *arg)
{
    struct srv *s = arg;
    if (nng_aio_result(s->sweep_aio) != 0 || !enter(s))
        return;
    sessions_reap(s, 0, "timed out");
    nng_sleep_aio(SRV_SWEEP_MS, s->sweep_aio);
    leave(s);
}

/* ---- start / stop -------------------------------------------------------------------- */

int tg_engine_server_start(struct tg_engine *eng, const char *url,
                           const struct tg_engine_server_params *pp,
                           struct tg_engine_server **out, char *err, size_t errlen)
{
    if (eng == NULL || url == NULL || out == NULL) {
        snprintf(err, errlen, "engine server: engine and url are required");
        return TG_INVAL;
    }
    struct tg_engine_server_params p = pp != NULL ? *pp : tg_engine_server_default_params();
    struct tg_engine_server_params d = tg_engine_server_default_params();
    if (p.session_timeout_ms == 0)
        p.session_timeout_ms = d.session_timeout_ms;
    if (p.max_msg_bytes == 0)
        p.max_msg_bytes = d.max_msg_bytes;
    if (p.max_contexts == 0)
        p.max_contexts = d.max_contexts;
    if (p.max_msg_bytes < 4096) {
        snprintf(err, errlen, "engine server: max_msg_bytes must be at least 4096");
        return TG_INVAL;
    }

    struct tg_engine_server *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        snprintf(err, errlen, "out of memory");
        return TG_NOMEM;
    }
    struct srv *s = &h->s;
    s->eng = eng;
    s->p = p;
    s->url = strdup(url);
    pthread_mutex_init(&s->mtx, NULL);
    pthread_cond_init(&s->cond, NULL);
    int rv;
    int code = TG_IO;
    bool sock_open = false;
    if (s->url == NULL) {
        rv = NNG_ENOMEM;
        goto fail;
    }
    struct tg_engine_info info;
    tg_engine_info(eng, &info);
    json_t *io = tg_net_info_encode(&info);
    s->info_json = io != NULL ? json_dumps(io, JSON_COMPACT) : NULL;
    json_decref(io);
    if (s->info_json == NULL) {
        rv = NNG_ENOMEM;
        goto fail;
    }
    if ((rv = nng_rep0_open(&s->sock)) != 0)
        goto fail;
    sock_open = true;
    if ((rv = nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, p.max_msg_bytes)) != 0 ||
        (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_POST, on_pipe, s)) != 0 ||
        (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, on_pipe, s)) != 0 ||
        (rv = nng_aio_alloc(&s->sweep_aio, sweep_cb, s)) != 0)
        goto fail;
    for (int i = 0; i < SRV_INITIAL_CONTEXTS; i++) {
        if (ctx_add_locked(s) == NULL) {
            rv = NNG_ENOMEM;
            goto fail;
        }
    }
    if ((rv = nng_listen(s->sock, url, &s->listener, 0)) != 0) {
        if (rv == NNG_EINVAL || rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP)
            code = TG_INVAL;
        goto fail;
    }
    for (struct srv_ctx *c = s->ctxs; c != NULL; c = c->next)
        nng_ctx_recv(c->ctx, c->aio);
    nng_sleep_aio(SRV_SWEEP_MS, s->sweep_aio);
    tg_info("engine server listening on %s", url);
    *out = h;
    return TG_OK;

fail:
    if (rv == NNG_ENOMEM)
        code = TG_NOMEM;
    snprintf(err, errlen, "engine server: cannot listen on %s: %s", url, nng_strerror(rv));
    s->closing = true;
    if (sock_open)
        nng_close(s->sock);
    while (s->ctxs != NULL) {
        struct srv_ctx *c = s->ctxs;
        s->ctxs = c->next;
        nng_aio_free(c->aio);
        free(c);
    }
    if (s->sweep_aio != NULL)
        nng_aio_free(s->sweep_aio);
    pthread_mutex_destroy(&s->mtx);
    pthread_cond_destroy(&s->cond);
    free(s->info_json);
    free(s->url);
    free(h);
    return code;
}

void tg_engine_server_stop(struct tg_engine_server *h)
{
    if (h == NULL)
        return;
    struct srv *s = &h->s;
    pthread_mutex_lock(&s->mtx);
    s->closing = true;
    while (s->active > 0)
        pthread_cond_wait(&s->cond, &s->mtx);
    pthread_mutex_unlock(&s->mtx);

    /* Stop every context's aio first (callbacks see `closing` and start nothing new), then
     * close: closing a socket with operations outstanding can hang nng 1.5 (nanomsg/nng#1543). */
    nng_aio_stop(s->sweep_aio);
    for (struct srv_ctx *c = s->ctxs; c != NULL; c = c->next)
        nng_aio_stop(c->aio);

    /* Every session goes; its jobs are cancelled, and we wait for the engine's final
     * events, which still reference this server. Done before nng_close so that the engine
     * is idle even if that close is slow. */
    for (;;) {
        struct id_list ids = {0};
        pthread_mutex_lock(&s->mtx);
        bool any = s->sessions != NULL;
        if (any)
            session_remove(s, s->sessions, &ids);
        pthread_mutex_unlock(&s->mtx);
        cancel_all(s, &ids);
        if (!any)
            break;
    }
    pthread_mutex_lock(&s->mtx);
    while (s->n_jobs > 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 5;
        if (pthread_cond_timedwait(&s->cond, &s->mtx, &ts) == ETIMEDOUT)
            tg_warn("engine server %s: still waiting for %zu job(s) to end", s->url, s->n_jobs);
    }
    pthread_mutex_unlock(&s->mtx);
    if (!tg_net_close_bounded(s->sock, SRV_CLOSE_MS, s->url))
        return; /* stuck in nng: it may still notify us, so the server is leaked on purpose */

    while (s->ctxs != NULL) {
        struct srv_ctx *c = s->ctxs;
        s->ctxs = c->next;
        nng_msg *m = nng_aio_get_msg(c->aio);
        if (m != NULL)
            nng_msg_free(m);
        nng_aio_free(c->aio);
        free(c);
    }
    nng_aio_free(s->sweep_aio);
    tg_info("engine server on %s stopped", s->url);
    pthread_mutex_destroy(&s->mtx);
    pthread_cond_destroy(&s->cond);
    free(s->info_json);
    free(s->url);
    free(h);
}
