/* Per-thread async Redis client: hiredis 0.14 async on the thread's event_base, with our own
 * command timeouts (0.14 has none for async contexts), reconnection with backoff and outage
 * logging. See redis.h for the contract. */
#include "redis.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <openssl/evp.h>

#include "tg/err.h"
#include "tg/log.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define MAX_SCRIPTS 16

enum conn_state { ST_DOWN, ST_CONNECTING, ST_UP };

struct pending {
    struct tg_redis *c;
    tg_redis_cb cb;
    void *user;
    int64_t deadline_ms;
    struct pending *prev, *next;
    /* tg_redis_eval: what is needed to resend as EVAL after NOSCRIPT */
    struct tg_redis_script *script;
    int nkeys, argc;
    char **args;
    size_t *lens;
};

struct tg_redis {
    struct event_base *base;
    char name[48];
    char *host;
    int port;
    char *unix_path;
    int db;
    char *password;
    int connect_timeout_ms;
    int command_timeout_ms;

    redisAsyncContext *ac;          /* NULL while down */
    enum conn_state state;
    int64_t connect_deadline_ms;
    int backoff_ms;
    bool down;                      /* counted in the process-wide outage state */
    int64_t down_since_ms;
    int drop_err;                   /* error given to callbacks when we drop the connection */

    struct event *watchdog;         /* persistent: connect and command timeouts */
    struct event *reconnect;        /* one-shot: next connection attempt */

    struct pending *head, *tail;    /* in send order = reply order */
    const struct tg_redis_script *loaded[MAX_SCRIPTS];
    int n_loaded;
};

static atomic_int g_clients_down;
static atomic_uint_fast64_t g_outages;

uint64_t tg_redis_outages_total(void)
{
    return atomic_load(&g_outages);
}

int tg_redis_clients_down(void)
{
    return atomic_load(&g_clients_down);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void connect_now(struct tg_redis *c);

/* ---- pending list ---- */

static void plist_push(struct tg_redis *c, struct pending *p)
{
    p->prev = c->tail;
    p->next = NULL;
    if (c->tail != NULL)
        c->tail->next = p;
    else
        c->head = p;
    c->tail = p;
}

static void plist_unlink(struct tg_redis *c, struct pending *p)
{
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        c->head = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    else
        c->tail = p->prev;
    p->prev = p->next = NULL;
}

static void pending_free(struct pending *p)
{
    if (p->args != NULL) {
        for (int i = 0; i < p->argc; i++)
            free(p->args[i]);
        free(p->args);
    }
    free(p->lens);
    free(p);
}

/* ---- outage bookkeeping: one line when the process loses Redis, one when it is back ---- */

static void mark_down(struct tg_redis *c, const char *why)
{
    if (c->down)
        return;
    c->down = true;
    c->down_since_ms = now_ms();
    if (atomic_fetch_add(&g_clients_down, 1) == 0) {
        atomic_fetch_add(&g_outages, 1);
        tg_warn("redis: %s unavailable (%s); requests bypass the cache, reconnecting with backoff",
                c->unix_path != NULL ? c->unix_path : c->host, why);
    }
}

static void mark_up(struct tg_redis *c)
{
    c->backoff_ms = BACKOFF_MIN_MS;
    if (!c->down)
        return;
    c->down = false;
    if (atomic_fetch_sub(&g_clients_down, 1) == 1)
        tg_info("redis: %s available again after %.1f s", c->unix_path != NULL ? c->unix_path : c->host,
                (double)(now_ms() - c->down_since_ms) / 1000.0);
}

static void schedule_reconnect(struct tg_redis *c)
{
    struct timeval tv = {.tv_sec = c->backoff_ms / 1000, .tv_usec = (c->backoff_ms % 1000) * 1000};
    event_add(c->reconnect, &tv);
    c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
}

/* Drop the live connection on purpose (timeout, destroy): pending callbacks run with err. */
static void drop_connection(struct tg_redis *c, int err)
{
    redisAsyncContext *ac = c->ac;
    if (ac == NULL)
        return;
    c->ac = NULL;
    c->state = ST_DOWN;
    c->n_loaded = 0;
    c->drop_err = err;
    ac->data = NULL; /* the disconnect callback must not treat this as an unexpected loss */
    redisAsyncFree(ac);
    c->drop_err = TG_UNAVAILABLE;
}

/* ---- hiredis callbacks ---- */

static void on_reply(redisAsyncContext *ac, void *r, void *privdata);

static int send_eval(struct tg_redis *c, struct pending *p, bool by_sha)
{
    const char **argv = malloc(sizeof(char *) * (size_t)(p->argc + 3));
    size_t *lens = malloc(sizeof(size_t) * (size_t)(p->argc + 3));
    char nk[16];
    int rc = REDIS_ERR;
    if (argv != NULL && lens != NULL) {
        snprintf(nk, sizeof nk, "%d", p->nkeys);
        argv[0] = by_sha ? "EVALSHA" : "EVAL";
        argv[1] = by_sha ? p->script->sha1 : p->script->lua;
        argv[2] = nk;
        lens[0] = strlen(argv[0]);
        lens[1] = strlen(argv[1]);
        lens[2] = strlen(nk);
        for (int i = 0; i < p->argc; i++) {
            argv[3 + i] = p->args[i];
            lens[3 + i] = p->lens[i];
        }
        rc = redisAsyncCommandArgv(c->ac, on_reply, p, p->argc + 3, argv, lens);
    }
    free(argv);
    free(lens);
    return rc == REDIS_OK ? TG_OK : TG_UNAVAILABLE;
}

static void on_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    struct pending *p = privdata;
    struct tg_redis *c = p->c;
    redisReply *reply = r;
    plist_unlink(c, p);
    if (reply != NULL && p->script != NULL && reply->type == REDIS_REPLY_ERROR &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0 && c->ac == ac && c->state == ST_UP) {
        /* Script cache flushed since we loaded it: resend the text once, and load it again
         * before its next use on this connection. */
        for (int i = 0; i < c->n_loaded; i++)
            if (c->loaded[i] == p->script)
                c->loaded[i] = c->loaded[--c->n_loaded];
        p->deadline_ms = now_ms() + c->command_timeout_ms;
        plist_push(c, p);
        if (send_eval(c, p, false) == TG_OK) {
            p->script = NULL; /* no second fallback */
            return;
        }
        plist_unlink(c, p);
        if (p->cb != NULL)
            p->cb(TG_UNAVAILABLE, NULL, p->user);
        pending_free(p);
        return;
    }
    if (p->cb != NULL)
        p->cb(reply != NULL ? TG_OK : c->drop_err, reply, p->user);
    pending_free(p);
}

static void on_select(int err, const redisReply *reply, void *user)
{
    struct tg_redis *c = user;
    if (err == TG_OK && reply->type == REDIS_REPLY_ERROR)
        tg_error("redis: %s: %s", c->name, reply->str);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct tg_redis *c = ac->data;
    if (c == NULL || c->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this callback returns */
        c->ac = NULL;
        c->state = ST_DOWN;
        mark_down(c, ac->errstr[0] != '\0' ? ac->errstr : "connect failed");
        schedule_reconnect(c);
        return;
    }
    c->state = ST_UP;
    c->n_loaded = 0;
    if (c->password != NULL)
        tg_redis_command(c, on_select, c, "AUTH %s", c->password);
    if (c->db != 0)
        tg_redis_command(c, on_select, c, "SELECT %d", c->db);
    mark_up(c);
    tg_debug("redis: %s connected", c->name);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct tg_redis *c = ac->data;
    if (c == NULL || c->ac != ac)
        return;
    /* connection lost: hiredis already ran the pending callbacks with NULL and frees ac */
    c->ac = NULL;
    c->state = ST_DOWN;
    c->n_loaded = 0;
    mark_down(c, ac->errstr[0] != '\0' ? ac->errstr : "connection closed");
    schedule_reconnect(c);
}

static void on_reconnect_timer(evutil_socket_t fd, short ev, void *arg)
{
    connect_now(arg);
}

static void connect_now(struct tg_redis *c)
{
    if (c->ac != NULL)
        return;
    redisAsyncContext *ac = c->unix_path != NULL ? redisAsyncConnectUnix(c->unix_path)
                                                 : redisAsyncConnect(c->host, c->port);
    if (ac == NULL || ac->err != 0) {
        mark_down(c, ac != NULL ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        schedule_reconnect(c);
        return;
    }
    ac->data = c;
    c->ac = ac;
    c->state = ST_CONNECTING;
    c->connect_deadline_ms = now_ms() + c->connect_timeout_ms;
    if (redisLibeventAttach(ac, c->base) != REDIS_OK) {
        drop_connection(c, TG_UNAVAILABLE);
        mark_down(c, "cannot attach to the event loop");
        schedule_reconnect(c);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
}

static void on_watchdog(evutil_socket_t fd, short ev, void *arg)
{
    struct tg_redis *c = arg;
    int64_t now = now_ms();
    if (c->state == ST_CONNECTING && now > c->connect_deadline_ms) {
        drop_connection(c, TG_TIMEOUT);
        mark_down(c, "connect timed out");
        schedule_reconnect(c);
    } else if (c->state == ST_UP && c->head != NULL && now > c->head->deadline_ms) {
        drop_connection(c, TG_TIMEOUT);
        mark_down(c, "command timed out");
        schedule_reconnect(c);
    }
}

/* ---- URL ---- */

static int parse_url(struct tg_redis *c, const char *url)
{
    if (strncmp(url, "unix://", 7) == 0) {
        const char *path = url + 7;
        const char *q = strchr(path, '?');
        c->unix_path = q != NULL ? strndup(path, (size_t)(q - path)) : strdup(path);
        if (q != NULL && strncmp(q, "?db=", 4) == 0) {
            char *end;
            long db = strtol(q + 4, &end, 10);
            if (*end != '\0' || db < 0 || db > 1000)
                return TG_INVAL;
            c->db = (int)db;
        }
        return c->unix_path != NULL && c->unix_path[0] == '/' ? TG_OK : TG_INVAL;
    }
    if (strncmp(url, "redis://", 8) != 0)
        return TG_INVAL;
    const char *p = url + 8;
    const char *at = strchr(p, '@');
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon != NULL ? colon + 1 : p;
        c->password = strndup(pw, (size_t)(at - pw));
        p = at + 1;
    }
    size_t hl = strcspn(p, ":/");
    if (hl == 0)
        return TG_INVAL;
    c->host = strndup(p, hl);
    p += hl;
    c->port = 6379;
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port <= 0 || port > 65535)
            return TG_INVAL;
        c->port = (int)port;
        p = end;
    }
    if (*p == '/' && p[1] != '\0') {
        char *end;
        long db = strtol(p + 1, &end, 10);
        if (*end != '\0' || db < 0 || db > 1000)
            return TG_INVAL;
        c->db = (int)db;
    } else if (*p != '\0' && strcmp(p, "/") != 0) {
        return TG_INVAL;
    }
    return c->host != NULL ? TG_OK : TG_NOMEM;
}

/* ---- public ---- */

static void free_client(struct tg_redis *c)
{
    if (c->watchdog != NULL)
        event_free(c->watchdog);
    if (c->reconnect != NULL)
        event_free(c->reconnect);
    free(c->host);
    free(c->unix_path);
    free(c->password);
    free(c);
}

int tg_redis_create(struct event_base *base, const struct tg_cfg_redis *cfg, const char *name,
                    struct tg_redis **out)
{
    if (base == NULL || cfg == NULL || cfg->url == NULL)
        return TG_INVAL;
    struct tg_redis *c = calloc(1, sizeof *c);
    if (c == NULL)
        return TG_NOMEM;
    c->base = base;
    snprintf(c->name, sizeof c->name, "%s", name != NULL ? name : "redis");
    c->connect_timeout_ms = cfg->connect_timeout_ms > 0 ? cfg->connect_timeout_ms : 1000;
    c->command_timeout_ms = cfg->command_timeout_ms > 0 ? cfg->command_timeout_ms : 1000;
    c->backoff_ms = BACKOFF_MIN_MS;
    c->drop_err = TG_UNAVAILABLE;
    int rc = parse_url(c, cfg->url);
    if (rc != TG_OK) {
        tg_error("redis: invalid url '%s'", cfg->url);
        free_client(c);
        return rc;
    }
    int tick = c->command_timeout_ms / 4;
    tick = tick < 5 ? 5 : tick > 250 ? 250 : tick;
    struct timeval tv = {.tv_sec = tick / 1000, .tv_usec = (tick % 1000) * 1000};
    c->watchdog = event_new(base, -1, EV_PERSIST, on_watchdog, c);
    c->reconnect = evtimer_new(base, on_reconnect_timer, c);
    if (c->watchdog == NULL || c->reconnect == NULL || event_add(c->watchdog, &tv) != 0) {
        free_client(c);
        return TG_NOMEM;
    }
    connect_now(c);
    *out = c;
    return TG_OK;
}

void tg_redis_destroy(struct tg_redis *c)
{
    if (c == NULL)
        return;
    event_del(c->watchdog);
    event_del(c->reconnect);
    drop_connection(c, TG_UNAVAILABLE);
    if (c->down)
        atomic_fetch_sub(&g_clients_down, 1);
    free_client(c);
}

bool tg_redis_available(const struct tg_redis *c)
{
    return c != NULL && c->state == ST_UP;
}

struct event_base *tg_redis_base(const struct tg_redis *c)
{
    return c->base;
}

static struct pending *pending_new(struct tg_redis *c, tg_redis_cb cb, void *user)
{
    struct pending *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->c = c;
    p->cb = cb;
    p->user = user;
    p->deadline_ms = now_ms() + c->command_timeout_ms;
    return p;
}

/* Why hiredis refused a command: the connection is going away (its pending callbacks are being
 * run after an error), or the format was bad. */
static int submit_error(const struct tg_redis *c)
{
    const redisAsyncContext *ac = c->ac;
    if (ac == NULL || ac->err != 0 || (ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)) != 0)
        return TG_UNAVAILABLE;
    return TG_INVAL;
}

static int vcommand(struct tg_redis *c, tg_redis_cb cb, void *user, const char *fmt, va_list ap)
{
    if (c == NULL || c->state != ST_UP || c->ac == NULL)
        return TG_UNAVAILABLE;
    struct pending *p = pending_new(c, cb, user);
    if (p == NULL)
        return TG_NOMEM;
    plist_push(c, p);
    if (redisvAsyncCommand(c->ac, on_reply, p, fmt, ap) != REDIS_OK) {
        plist_unlink(c, p);
        pending_free(p);
        return submit_error(c);
    }
    return TG_OK;
}

int tg_redis_command(struct tg_redis *c, tg_redis_cb cb, void *user, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vcommand(c, cb, user, fmt, ap);
    va_end(ap);
    return rc;
}

int tg_redis_command_argv(struct tg_redis *c, tg_redis_cb cb, void *user, int argc,
                          const char **argv, const size_t *argvlen)
{
    if (c == NULL || c->state != ST_UP || c->ac == NULL)
        return TG_UNAVAILABLE;
    struct pending *p = pending_new(c, cb, user);
    if (p == NULL)
        return TG_NOMEM;
    plist_push(c, p);
    if (redisAsyncCommandArgv(c->ac, on_reply, p, argc, argv, argvlen) != REDIS_OK) {
        plist_unlink(c, p);
        pending_free(p);
        return submit_error(c);
    }
    return TG_OK;
}

static pthread_mutex_t g_script_lock = PTHREAD_MUTEX_INITIALIZER;

static void script_sha(struct tg_redis_script *s)
{
    if (atomic_load(&s->state) == 2)
        return;
    pthread_mutex_lock(&g_script_lock); /* first use only */
    if (atomic_load(&s->state) != 2) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        EVP_Digest(s->lua, strlen(s->lua), md, &n, EVP_sha1(), NULL);
        for (unsigned int i = 0; i < n && i < 20; i++)
            snprintf(s->sha1 + 2 * i, 3, "%02x", md[i]);
        atomic_store(&s->state, 2);
    }
    pthread_mutex_unlock(&g_script_lock);
}

static void on_script_load(int err, const redisReply *reply, void *user)
{
    if (err == TG_OK && reply->type == REDIS_REPLY_ERROR)
        tg_error("redis: SCRIPT LOAD failed: %s", reply->str);
}

int tg_redis_eval(struct tg_redis *c, struct tg_redis_script *script, tg_redis_cb cb, void *user,
                  int nkeys, int argc, const char **args, const size_t *lens)
{
    if (c == NULL || c->state != ST_UP || c->ac == NULL)
        return TG_UNAVAILABLE;
    if (script == NULL || nkeys < 0 || nkeys > argc)
        return TG_INVAL;
    script_sha(script);
    bool loaded = false;
    for (int i = 0; i < c->n_loaded; i++)
        loaded = loaded || c->loaded[i] == script;
    if (!loaded) {
        /* Pipelined before the EVALSHA, so the EVALSHA always finds it on this connection. */
        const char *la[] = {"SCRIPT", "LOAD", script->lua};
        size_t ll[] = {6, 4, strlen(script->lua)};
        int rc = tg_redis_command_argv(c, on_script_load, NULL, 3, la, ll);
        if (rc != TG_OK)
            return rc;
        if (c->n_loaded < MAX_SCRIPTS)
            c->loaded[c->n_loaded++] = script;
    }
    struct pending *p = pending_new(c, cb, user);
    if (p == NULL)
        return TG_NOMEM;
    p->script = script;
    p->nkeys = nkeys;
    p->args = calloc((size_t)argc + 1, sizeof(char *));
    p->lens = calloc((size_t)argc + 1, sizeof(size_t));
    if (p->args == NULL || p->lens == NULL) {
        pending_free(p);
        return TG_NOMEM;
    }
    p->argc = argc;
    for (int i = 0; i < argc; i++) {
        p->args[i] = malloc(lens[i] + 1);
        if (p->args[i] == NULL) {
            pending_free(p);
            return TG_NOMEM;
        }
        memcpy(p->args[i], args[i], lens[i]);
        p->args[i][lens[i]] = '\0';
        p->lens[i] = lens[i];
    }
    plist_push(c, p);
    if (send_eval(c, p, true) != TG_OK) {
        plist_unlink(c, p);
        pending_free(p);
        return TG_UNAVAILABLE;
    }
    return TG_OK;
}
