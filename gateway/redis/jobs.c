/* Durable async jobs on a Redis Stream with a consumer group, and their HTTP handlers. The
 * webhook sender lives in webhook.c. See jobs.h. */
#include "jobs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "jobs_int.h"
#include "tg/err.h"
#include "tg/json.h"
#include "tg/log.h"

#define STREAM "tg:jobs"
#define GROUP "tiergate"
#define MAX_ATTEMPTS 5
#define IDEM_MAX 255

struct run {
    struct tg_jobs *j;          /* NULL once the jobs object is gone: the result is dropped */
    char entry_id[64];
    char job_id[64];
    char *endpoint, *body, *key_name;
    struct run *prev, *next;
};

struct tg_jobs {
    struct tg_redis *r;
    tg_gw_execute_fn exec;
    void *exec_ctx;
    int64_t result_ttl_s;
    int64_t claim_idle_ms;
    char *secret;
    int webhook_retries;
    bool webhook_allow_private;
    char *consumer;
    int max_running;
    bool consume;
    struct event *poll_ev;
    struct event *claim_ev;
    bool group_ready;
    bool reading;
    int running;
    struct run *runs;
    uint64_t completed;
    int refs;                   /* Redis commands in flight whose callback gets this object */
    bool dead;                  /* destroyed; freed when refs drops to 0 */
};

/* A callback that got j: drop its reference; true when j was destroyed (do nothing more). */
static bool jobs_release(struct tg_jobs *j)
{
    j->refs--;
    if (!j->dead)
        return false;
    if (j->refs == 0)
        free(j);
    return true;
}

/* KEYS: job hash, stream, idempotency key ('' = none).
 * ARGV: id, endpoint, body, key, tenant, callback_url, created_at, result_ttl_s.
 * Returns {created(1|0), id, status}. */
static struct tg_redis_script g_post = TG_REDIS_SCRIPT(
    "if KEYS[3] ~= '' then\n"
    "  local old = redis.call('GET', KEYS[3])\n"
    "  if old then return {0, old, redis.call('HGET', 'tg:job:' .. old, 'status') or 'expired'} end\n"
    "  redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[8])\n"
    "end\n"
    "redis.call('HSET', KEYS[1], 'id', ARGV[1], 'status', 'queued', 'endpoint', ARGV[2],\n"
    "  'body', ARGV[3], 'key', ARGV[4], 'tenant', ARGV[5], 'callback_url', ARGV[6],\n"
    "  'created_at', ARGV[7], 'attempts', '0')\n"
    "redis.call('EXPIRE', KEYS[1], tonumber(ARGV[8]) + 86400)\n"
    "redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])\n"
    "return {1, ARGV[1], 'queued'}\n");

/* KEYS: job hash, stream. ARGV: group, entry id, max attempts, now.
 * Returns {verdict, fields...}: verdict 'run' (marked running, attempts+1), 'done' (already
 * final or gone: entry acknowledged), 'poison' (too many attempts: caller fails it). */
static struct tg_redis_script g_start = TG_REDIS_SCRIPT(
    "local st = redis.call('HGET', KEYS[1], 'status')\n"
    "if (not st) or st == 'succeeded' or st == 'failed' then\n"
    "  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]); redis.call('XDEL', KEYS[2], ARGV[2])\n"
    "  return {'done'}\n"
    "end\n"
    "local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)\n"
    "redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[4])\n"
    "local v = 'run'\n"
    "if n > tonumber(ARGV[3]) then v = 'poison' end\n"
    "local f = redis.call('HMGET', KEYS[1], 'endpoint', 'body', 'key')\n"
    "return {v, f[1] or '', f[2] or '', f[3] or ''}\n");

/* KEYS: job hash, stream. ARGV: group, entry id, status, result_status, result, completed_at,
 * ttl. Writes the result unless the job is already final, acknowledges and deletes the entry,
 * returns the job hash (HGETALL) for the webhook, or {} when it was gone. */
static struct tg_redis_script g_complete = TG_REDIS_SCRIPT(
    "local st = redis.call('HGET', KEYS[1], 'status')\n"
    "redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]); redis.call('XDEL', KEYS[2], ARGV[2])\n"
    "if not st then return {} end\n"
    "if st ~= 'succeeded' and st ~= 'failed' then\n"
    "  redis.call('HSET', KEYS[1], 'status', ARGV[3], 'result_status', ARGV[4], 'result', ARGV[5],\n"
    "    'completed_at', ARGV[6])\n"
    "  redis.call('EXPIRE', KEYS[1], ARGV[7])\n"
    "  redis.call('HDEL', KEYS[1], 'body')\n"
    "  return redis.call('HGETALL', KEYS[1])\n"
    "end\n"
    "return {}\n");

static void on_poll(evutil_socket_t fd, short ev, void *arg);
static void on_claim_tick(evutil_socket_t fd, short ev, void *arg);

struct tg_jobs_params tg_jobs_params_from_config(const struct tg_config *cfg)
{
    struct tg_jobs_params p = {
        .result_ttl_s = cfg->jobs.result_ttl_s,
        .webhook_secret = cfg->jobs.webhook_secret,
        .webhook_retries = cfg->jobs.webhook_retries,
        .claim_idle_ms = cfg->jobs.claim_idle_ms,
        .webhook_allow_private = cfg->jobs.webhook_allow_private,
        .consume = true,
    };
    return p;
}

int tg_jobs_create(struct tg_redis *redis, const struct tg_jobs_params *p, tg_gw_execute_fn exec,
                   void *exec_ctx, struct tg_jobs **out)
{
    if (redis == NULL || p == NULL || (p->consume && exec == NULL))
        return TG_INVAL;
    struct tg_jobs *j = calloc(1, sizeof *j);
    if (j == NULL)
        return TG_NOMEM;
    j->r = redis;
    j->exec = exec;
    j->exec_ctx = exec_ctx;
    j->result_ttl_s = p->result_ttl_s > 0 ? p->result_ttl_s : 86400;
    j->claim_idle_ms = p->claim_idle_ms >= 100 ? p->claim_idle_ms : 30000;
    j->webhook_retries = p->webhook_retries >= 0 ? p->webhook_retries : 0;
    j->webhook_allow_private = p->webhook_allow_private;
    j->max_running = p->max_running > 0 ? p->max_running : 4;
    j->consume = p->consume;
    if (p->webhook_secret != NULL)
        j->secret = strdup(p->webhook_secret);
    if (p->consumer != NULL) {
        j->consumer = strdup(p->consumer);
    } else {
        char host[256] = "localhost";
        if (gethostname(host, sizeof host) == -1)
            snprintf(host, sizeof host, "localhost");
        host[sizeof host - 1] = '\0';
        char name[300];
        snprintf(name, sizeof name, "%s:%ld", host, (long)getpid());
        j->consumer = strdup(name);
    }
    struct event_base *base = tg_redis_base(redis);
    int poll_ms = p->poll_ms > 0 ? p->poll_ms : 200;
    int claim_ms = (int)(j->claim_idle_ms / 3);
    struct timeval ptv = {.tv_sec = poll_ms / 1000, .tv_usec = (poll_ms % 1000) * 1000};
    struct timeval ctv = {.tv_sec = claim_ms / 1000, .tv_usec = (claim_ms % 1000) * 1000};
    j->poll_ev = event_new(base, -1, EV_PERSIST, on_poll, j);
    j->claim_ev = event_new(base, -1, EV_PERSIST, on_claim_tick, j);
    if (j->consumer == NULL || (p->webhook_secret != NULL && j->secret == NULL) ||
        j->poll_ev == NULL || j->claim_ev == NULL || tg_webhook_start() != TG_OK) {
        if (j->poll_ev != NULL)
            event_free(j->poll_ev);
        if (j->claim_ev != NULL)
            event_free(j->claim_ev);
        free(j->secret);
        free(j->consumer);
        free(j);
        return TG_NOMEM;
    }
    if (j->consume) {
        event_add(j->poll_ev, &ptv);
        event_add(j->claim_ev, &ctv);
    }
    *out = j;
    return TG_OK;
}

static void run_free(struct run *r)
{
    free(r->endpoint);
    free(r->body);
    free(r->key_name);
    free(r);
}

void tg_jobs_destroy(struct tg_jobs *j)
{
    if (j == NULL)
        return;
    event_free(j->poll_ev);
    event_free(j->claim_ev);
    /* Runs still in the pipeline keep their memory until their result arrives; their entries
     * stay pending in the group and another consumer claims them. */
    for (struct run *r = j->runs; r != NULL; r = r->next)
        r->j = NULL;
    tg_webhook_stop();
    free(j->secret);
    free(j->consumer);
    j->secret = j->consumer = NULL;
    /* Commands still in flight call back with j (the client runs them when it is destroyed). */
    if (j->refs > 0)
        j->dead = true;
    else
        free(j);
}

uint64_t tg_jobs_completed(const struct tg_jobs *j)
{
    return j->completed;
}

void tg_jobs_pause(struct tg_jobs *j)
{
    if (j == NULL || !j->consume)
        return;
    j->consume = false;
    event_del(j->poll_ev);
    /* the claim tick keeps running: it heartbeats the jobs still running here; with consume
     * off it takes nothing over */
}

void tg_jobs_poll_now(struct tg_jobs *j)
{
    if (j->consume)
        event_active(j->poll_ev, EV_TIMEOUT, 0);
}

/* ---- job JSON (GET answer and webhook body) ---- */

static const char *field(const redisReply *h, const char *name)
{
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        if (h->element[i]->type == REDIS_REPLY_STRING && strcmp(h->element[i]->str, name) == 0 &&
            h->element[i + 1]->type == REDIS_REPLY_STRING)
            return h->element[i + 1]->str;
    return NULL;
}

static json_int_t field_int(const redisReply *h, const char *name)
{
    const char *v = field(h, name);
    return v != NULL ? (json_int_t)strtoll(v, NULL, 10) : 0;
}

static char *job_json(const redisReply *h)
{
    json_t *o = json_object();
    const char *v;
    json_object_set_new(o, "id", json_string((v = field(h, "id")) != NULL ? v : ""));
    json_object_set_new(o, "object", json_string("job"));
    json_object_set_new(o, "status", json_string((v = field(h, "status")) != NULL ? v : "unknown"));
    json_object_set_new(o, "endpoint", json_string((v = field(h, "endpoint")) != NULL ? v : ""));
    json_object_set_new(o, "created_at", json_integer(field_int(h, "created_at")));
    if (field(h, "completed_at") != NULL)
        json_object_set_new(o, "completed_at", json_integer(field_int(h, "completed_at")));
    json_object_set_new(o, "attempts", json_integer(field_int(h, "attempts")));
    v = field(h, "callback_url");
    if (v != NULL && v[0] != '\0')
        json_object_set_new(o, "callback_url", json_string(v));
    const char *res = field(h, "result");
    if (res != NULL) {
        json_t *body = json_loads(res, 0, NULL);
        json_object_set_new(o, "result", json_pack("{s:I,s:o}", "status", field_int(h, "result_status"),
                                                   "body", body != NULL ? body : json_string(res)));
    }
    char *text = tg_json_dumps(o);
    json_decref(o);
    return text;
}

/* ---- running jobs ---- */

static void ack_entry(struct tg_jobs *j, const char *entry_id)
{
    tg_redis_command(j->r, NULL, NULL, "XACK %s %s %s", STREAM, GROUP, entry_id);
}

static void run_unlink(struct tg_jobs *j, struct run *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        j->runs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    j->running--;
}

static void on_complete(int err, const redisReply *reply, void *user)
{
    struct run *r = user;
    struct tg_jobs *j = r->j;
    if (j == NULL) {
        run_free(r);
        return;
    }
    run_unlink(j, r);
    if (err != TG_OK || reply->type == REDIS_REPLY_ERROR) {
        /* The entry stays pending: the job reruns after claim_idle_ms (at least once). */
        tg_warn("jobs: %s: result not stored (%s); it will be retried",
                r->job_id, err != TG_OK ? tg_strerror(err) : reply->str);
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
        j->completed++;
        const char *url = field(reply, "callback_url");
        if (url != NULL && url[0] != '\0') {
            char *body = job_json(reply);
            if (body != NULL)
                tg_webhook_enqueue(url, body, j->secret, j->webhook_retries,
                                   j->webhook_allow_private);
            free(body);
        }
        const char *st = field(reply, "status");
        tg_info("jobs: %s %s", r->job_id, st != NULL ? st : "done");
    } else {
        j->completed++;
    }
    run_free(r);
    tg_jobs_poll_now(j);
}

static void finish_run(struct run *r, int status, const char *body, size_t len)
{
    struct tg_jobs *j = r->j;
    char key[96], st[16], now[32], ttl[32];
    snprintf(key, sizeof key, "tg:job:%s", r->job_id);
    snprintf(st, sizeof st, "%d", status);
    snprintf(now, sizeof now, "%lld", (long long)time(NULL));
    snprintf(ttl, sizeof ttl, "%lld", (long long)j->result_ttl_s);
    const char *state = status >= 200 && status < 300 ? "succeeded" : "failed";
    const char *args[] = {key, STREAM, GROUP, r->entry_id, state, st, body, now, ttl};
    size_t lens[9];
    for (int i = 0; i < 9; i++)
        lens[i] = i == 6 ? len : strlen(args[i]);
    if (tg_redis_eval(j->r, &g_complete, on_complete, r, 2, 9, args, lens) != TG_OK) {
        tg_warn("jobs: %s: result not stored (Redis unavailable); it will be retried", r->job_id);
        run_unlink(j, r);
        run_free(r);
    }
}

static void on_result(int status, const char *content_type, const char *body, size_t len, void *user)
{
    struct run *r = user;
    if (r->j == NULL) {
        run_free(r);
        return;
    }
    finish_run(r, status, body != NULL ? body : "", body != NULL ? len : 0);
}

static void fail_run(struct run *r, int status, const char *message)
{
    json_t *e = tg_json_error(message, "server_error", NULL, "job_failed");
    char *text = tg_json_dumps(e);
    json_decref(e);
    finish_run(r, status, text != NULL ? text : "{}", text != NULL ? strlen(text) : 2);
    free(text);
}

static void on_start(int err, const redisReply *reply, void *user)
{
    struct run *r = user;
    struct tg_jobs *j = r->j;
    if (j == NULL) {
        run_free(r);
        return;
    }
    if (err != TG_OK || reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
        reply->element[0]->type != REDIS_REPLY_STRING) {
        if (err == TG_OK && reply->type == REDIS_REPLY_ERROR)
            tg_error("jobs: start script failed: %s", reply->str);
        run_unlink(j, r);
        run_free(r);
        return;
    }
    const char *verdict = reply->element[0]->str;
    if (strcmp(verdict, "done") == 0 || reply->elements < 4) {
        run_unlink(j, r);
        run_free(r);
        tg_jobs_poll_now(j);
        return;
    }
    r->endpoint = strdup(reply->element[1]->str);
    r->body = malloc(reply->element[2]->len + 1);
    r->key_name = strdup(reply->element[3]->str);
    if (r->endpoint == NULL || r->body == NULL || r->key_name == NULL) {
        run_unlink(j, r);
        run_free(r);
        return;
    }
    memcpy(r->body, reply->element[2]->str, reply->element[2]->len);
    r->body[reply->element[2]->len] = '\0';
    size_t body_len = reply->element[2]->len;
    if (strcmp(verdict, "poison") == 0) {
        tg_warn("jobs: %s: failed after %d attempts", r->job_id, MAX_ATTEMPTS);
        fail_run(r, 500, "The job was attempted too many times without completing.");
        return;
    }
    tg_info("jobs: %s running (%s) on %s", r->job_id, r->endpoint, j->consumer);
    int rc = j->exec(j->exec_ctx, r->endpoint, r->body, body_len,
                     r->key_name[0] != '\0' ? r->key_name : NULL, on_result, r);
    if (rc != 0)
        fail_run(r, rc == TG_BUSY ? 503 : 500, tg_strerror(rc));
}

static void start_entry(struct tg_jobs *j, const char *entry_id, const char *job_id)
{
    for (struct run *x = j->runs; x != NULL; x = x->next)
        if (strcmp(x->entry_id, entry_id) == 0)
            return; /* already running here (re-delivered by XAUTOCLAIM to ourselves) */
    struct run *r = calloc(1, sizeof *r);
    if (r == NULL)
        return;
    r->j = j;
    snprintf(r->entry_id, sizeof r->entry_id, "%s", entry_id);
    snprintf(r->job_id, sizeof r->job_id, "%s", job_id);
    char key[96], max[16], now[32];
    snprintf(key, sizeof key, "tg:job:%s", job_id);
    snprintf(max, sizeof max, "%d", MAX_ATTEMPTS);
    snprintf(now, sizeof now, "%lld", (long long)time(NULL));
    const char *args[] = {key, STREAM, GROUP, entry_id, max, now};
    size_t lens[6];
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(args[i]);
    r->next = j->runs;
    if (j->runs != NULL)
        j->runs->prev = r;
    j->runs = r;
    j->running++;
    if (tg_redis_eval(j->r, &g_start, on_start, r, 2, 6, args, lens) != TG_OK) {
        run_unlink(j, r);
        run_free(r);
    }
}

/* entries: [[id, [field, value, ...]], ...] */
static void start_entries(struct tg_jobs *j, const redisReply *entries)
{
    if (entries == NULL || entries->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING)
            continue;
        const redisReply *f = e->element[1];
        const char *job = f->type == REDIS_REPLY_ARRAY ? field(f, "job") : NULL;
        if (job == NULL) {
            ack_entry(j, e->element[0]->str); /* malformed or deleted entry: drop it */
            continue;
        }
        start_entry(j, e->element[0]->str, job);
    }
}

static void on_read(int err, const redisReply *reply, void *user)
{
    struct tg_jobs *j = user;
    if (jobs_release(j))
        return;
    j->reading = false;
    if (err != TG_OK)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        if (strncmp(reply->str, "NOGROUP", 7) == 0)
            j->group_ready = false; /* Redis lost its data (restart without persistence) */
        else
            tg_warn("jobs: XREADGROUP: %s", reply->str);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY)
        return; /* nil: nothing new */
    for (size_t s = 0; s < reply->elements; s++) {
        const redisReply *st = reply->element[s];
        if (st->type == REDIS_REPLY_ARRAY && st->elements == 2)
            start_entries(j, st->element[1]);
    }
}

static void read_new(struct tg_jobs *j)
{
    if (j->reading || j->running >= j->max_running)
        return;
    int rc = tg_redis_command(j->r, on_read, j, "XREADGROUP GROUP %s %s COUNT %d STREAMS %s >", GROUP,
                              j->consumer, j->max_running - j->running, STREAM);
    j->reading = rc == TG_OK;
    j->refs += rc == TG_OK;
}

/* Consumers are named <hostname>:<pid>, so every restart leaves one behind. Forget those with
 * nothing pending that have been idle for an hour (their work was claimed or acknowledged). */
#define STALE_CONSUMER_MS 3600000LL

static void on_consumers(int err, const redisReply *reply, void *user)
{
    struct tg_jobs *j = user;
    if (jobs_release(j) || err != TG_OK || reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *c = reply->element[i];
        if (c->type != REDIS_REPLY_ARRAY)
            continue;
        const char *name = NULL;
        long long pending = -1, idle = -1;
        for (size_t k = 0; k + 1 < c->elements; k += 2) {
            const redisReply *key = c->element[k], *val = c->element[k + 1];
            if (key->type != REDIS_REPLY_STRING)
                continue;
            if (strcmp(key->str, "name") == 0 && val->type == REDIS_REPLY_STRING)
                name = val->str;
            else if (strcmp(key->str, "pending") == 0 && val->type == REDIS_REPLY_INTEGER)
                pending = val->integer;
            else if (strcmp(key->str, "idle") == 0 && val->type == REDIS_REPLY_INTEGER)
                idle = val->integer;
        }
        if (name != NULL && pending == 0 && idle > STALE_CONSUMER_MS && strcmp(name, j->consumer) != 0)
            tg_redis_command(j->r, NULL, NULL, "XGROUP DELCONSUMER %s %s %s", STREAM, GROUP, name);
    }
}

static void on_group(int err, const redisReply *reply, void *user)
{
    struct tg_jobs *j = user;
    if (jobs_release(j) || err != TG_OK)
        return;
    if (reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "BUSYGROUP", 9) != 0) {
        tg_error("jobs: XGROUP CREATE: %s", reply->str);
        return;
    }
    j->group_ready = true;
    j->refs += tg_redis_command(j->r, on_consumers, j, "XINFO CONSUMERS %s %s", STREAM, GROUP) == TG_OK;
    read_new(j);
}

static void on_poll(evutil_socket_t fd, short ev, void *arg)
{
    struct tg_jobs *j = arg;
    if (!tg_redis_available(j->r))
        return;
    if (!j->group_ready) {
        /* "0": entries added before the group existed are consumed too */
        j->refs += tg_redis_command(j->r, on_group, j, "XGROUP CREATE %s %s 0 MKSTREAM", STREAM, GROUP) == TG_OK;
        return;
    }
    read_new(j);
}

static void on_autoclaim(int err, const redisReply *reply, void *user)
{
    struct tg_jobs *j = user;
    if (jobs_release(j) || err != TG_OK)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        if (strncmp(reply->str, "NOGROUP", 7) == 0)
            j->group_ready = false;
        return;
    }
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2) {
        if (reply->element[1]->type == REDIS_REPLY_ARRAY && reply->element[1]->elements > 0)
            tg_info("jobs: took over %zu stalled job(s)", reply->element[1]->elements);
        start_entries(j, reply->element[1]);
    }
}

static void on_claim_tick(evutil_socket_t fd, short ev, void *arg)
{
    struct tg_jobs *j = arg;
    if (!tg_redis_available(j->r) || !j->group_ready)
        return;
    /* Heartbeat: re-claiming our own running entries resets their idle time, so no other
     * consumer takes over a job that is merely slow. */
    if (j->runs != NULL) {
        const char *argv[7 + 64];
        size_t lens[7 + 64];
        int n = 0;
        argv[n++] = "XCLAIM";
        argv[n++] = STREAM;
        argv[n++] = GROUP;
        argv[n++] = j->consumer;
        argv[n++] = "0";
        for (struct run *r = j->runs; r != NULL && n < 6 + 64; r = r->next)
            argv[n++] = r->entry_id;
        argv[n++] = "JUSTID";
        for (int i = 0; i < n; i++)
            lens[i] = strlen(argv[i]);
        tg_redis_command_argv(j->r, NULL, NULL, n, argv, lens);
    }
    if (j->consume && j->running < j->max_running)
        j->refs += tg_redis_command(j->r, on_autoclaim, j, "XAUTOCLAIM %s %s %s %lld 0-0 COUNT %d", STREAM,
                                    GROUP, j->consumer, (long long)j->claim_idle_ms,
                                    j->max_running - j->running) == TG_OK;
}

/* ---- HTTP handlers ---- */

static void reply_error(tg_jobs_reply_cb cb, void *user, int status, const char *msg,
                        const char *type, const char *param, const char *code)
{
    json_t *e = tg_json_error(msg, type, param, code);
    char *text = tg_json_dumps(e);
    json_decref(e);
    cb(status, text != NULL ? text : "{}", text != NULL ? strlen(text) : 2, user);
    free(text);
}

static void reply_unavailable(tg_jobs_reply_cb cb, void *user)
{
    reply_error(cb, user, 503, "The job store (Redis) is unavailable; retry shortly.", "server_error",
                NULL, "jobs_unavailable");
}

struct post_ctx {
    tg_jobs_reply_cb cb;
    void *user;
    struct tg_jobs *j;
};

static void on_post(int err, const redisReply *reply, void *user)
{
    struct post_ctx *p = user;
    if (err != TG_OK || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) {
        if (err == TG_OK && reply->type == REDIS_REPLY_ERROR)
            tg_error("jobs: post script failed: %s", reply->str);
        jobs_release(p->j);
        reply_unavailable(p->cb, p->user);
        free(p);
        return;
    }
    json_t *o = json_pack("{s:s,s:s,s:s}", "id", reply->element[1]->str, "object", "job", "status",
                          reply->element[2]->str);
    char *text = tg_json_dumps(o);
    json_decref(o);
    p->cb(202, text != NULL ? text : "{}", text != NULL ? strlen(text) : 2, p->user);
    free(text);
    if (!jobs_release(p->j) && reply->element[0]->integer == 1)
        tg_jobs_poll_now(p->j);
    free(p);
}

static const char *endpoint_for(const char *type)
{
    if (strcmp(type, "chat") == 0)
        return "/v1/chat/completions";
    if (strcmp(type, "classify") == 0)
        return "/v1/classify";
    if (strcmp(type, "extract") == 0)
        return "/v1/extract";
    return NULL;
}

void tg_jobs_handle_post(struct tg_jobs *j, const char *body, size_t len,
                         const char *idempotency_key, const char *key_name, const char *tenant,
                         tg_jobs_reply_cb cb, void *user)
{
    if (!tg_redis_available(j->r)) {
        reply_unavailable(cb, user);
        return;
    }
    json_error_t jerr;
    json_t *req = json_loadb(body != NULL ? body : "", len, 0, &jerr);
    if (!json_is_object(req)) {
        json_decref(req);
        reply_error(cb, user, 400, "The job body must be a JSON object (a chat, classify or extract "
                    "request).", "invalid_request_error", NULL, "invalid_json");
        return;
    }
    const char *endpoint = "/v1/chat/completions";
    json_t *ep = json_object_get(req, "endpoint");
    json_t *type = json_object_get(req, "type");
    if (ep != NULL) {
        const char *e = json_string_value(ep);
        if (e == NULL || (strcmp(e, "/v1/chat/completions") != 0 && strcmp(e, "/v1/classify") != 0 &&
                          strcmp(e, "/v1/extract") != 0)) {
            json_decref(req);
            reply_error(cb, user, 400, "'endpoint' must be one of /v1/chat/completions, /v1/classify, "
                        "/v1/extract.", "invalid_request_error", "endpoint", "invalid_value");
            return;
        }
        endpoint = e;
    } else if (type != NULL) {
        const char *t = json_string_value(type);
        endpoint = t != NULL ? endpoint_for(t) : NULL;
        if (endpoint == NULL) {
            json_decref(req);
            reply_error(cb, user, 400, "'type' must be one of chat, classify, extract.",
                        "invalid_request_error", "type", "invalid_value");
            return;
        }
    }
    char endpoint_copy[32];
    snprintf(endpoint_copy, sizeof endpoint_copy, "%s", endpoint);
    const char *callback = "";
    json_t *cbu = json_object_get(req, "callback_url");
    char callback_copy[2048] = "";
    if (cbu != NULL && !json_is_null(cbu)) {
        const char *u = json_string_value(cbu);
        if (u == NULL || (strncmp(u, "http://", 7) != 0 && strncmp(u, "https://", 8) != 0) ||
            strlen(u) >= sizeof callback_copy) {
            json_decref(req);
            reply_error(cb, user, 400, "'callback_url' must be an http:// or https:// URL.",
                        "invalid_request_error", "callback_url", "invalid_value");
            return;
        }
        int chk = tg_webhook_check_url(u, j->webhook_allow_private);
        if (chk != TG_OK) {
            json_decref(req);
            if (chk == TG_UNSUPPORTED)
                reply_error(cb, user, 400,
                            "'callback_url' points to a loopback, private or link-local address; "
                            "this gateway does not deliver webhooks there.",
                            "invalid_request_error", "callback_url", "invalid_value");
            else
                reply_error(cb, user, chk == TG_NOMEM ? 500 : 400,
                            "'callback_url' must be an http:// or https:// URL.",
                            "invalid_request_error", "callback_url", "invalid_value");
            return;
        }
        snprintf(callback_copy, sizeof callback_copy, "%s", u);
        callback = callback_copy;
    }
    if (idempotency_key != NULL && strlen(idempotency_key) > IDEM_MAX) {
        json_decref(req);
        reply_error(cb, user, 400, "Idempotency-Key is longer than 255 bytes.",
                    "invalid_request_error", NULL, "invalid_value");
        return;
    }
    json_object_del(req, "endpoint");
    json_object_del(req, "type");
    json_object_del(req, "callback_url");
    json_object_del(req, "stream"); /* a job's result is one JSON document */
    char *inner = tg_json_dumps(req);
    json_decref(req);
    if (inner == NULL) {
        reply_error(cb, user, 500, "Out of memory.", "server_error", NULL, "internal");
        return;
    }
    unsigned char rnd[12];
    char id[64] = "job_";
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        free(inner);
        reply_error(cb, user, 500, "No randomness available.", "server_error", NULL, "internal");
        return;
    }
    for (size_t i = 0; i < sizeof rnd; i++)
        snprintf(id + 4 + 2 * i, 3, "%02x", rnd[i]);
    const char *tn = tenant != NULL ? tenant : "";
    char jkey[96], ikey[IDEM_MAX + 160] = "", now[32], ttl[32];
    snprintf(jkey, sizeof jkey, "tg:job:%s", id);
    if (idempotency_key != NULL && idempotency_key[0] != '\0')
        snprintf(ikey, sizeof ikey, "tg:jobidem:%.64s:%s", tn, idempotency_key);
    snprintf(now, sizeof now, "%lld", (long long)time(NULL));
    snprintf(ttl, sizeof ttl, "%lld", (long long)j->result_ttl_s);
    const char *args[] = {jkey, STREAM, ikey, id, endpoint_copy, inner,
                          key_name != NULL ? key_name : "", tn, callback, now, ttl};
    size_t lens[11];
    for (int i = 0; i < 11; i++)
        lens[i] = strlen(args[i]);
    struct post_ctx *p = malloc(sizeof *p);
    int rc = p != NULL ? tg_redis_eval(j->r, &g_post, on_post, p, 3, 11, args, lens) : TG_NOMEM;
    free(inner);
    if (rc != TG_OK) {
        free(p);
        reply_unavailable(cb, user);
        return;
    }
    p->cb = cb;
    p->user = user;
    p->j = j;
    j->refs++;
}

struct get_ctx {
    tg_jobs_reply_cb cb;
    void *user;
    char tenant[256];
};

static void reply_not_found(tg_jobs_reply_cb cb, void *user)
{
    reply_error(cb, user, 404, "No such job (unknown, expired, or not yours).",
                "invalid_request_error", NULL, "job_not_found");
}

static void on_get(int err, const redisReply *reply, void *user)
{
    struct get_ctx *g = user;
    if (err != TG_OK || reply->type != REDIS_REPLY_ARRAY) {
        reply_unavailable(g->cb, g->user);
    } else {
        const char *owner = field(reply, "tenant");
        if (reply->elements == 0 || owner == NULL || strcmp(owner, g->tenant) != 0) {
            reply_not_found(g->cb, g->user);
        } else {
            char *text = job_json(reply);
            g->cb(200, text != NULL ? text : "{}", text != NULL ? strlen(text) : 2, g->user);
            free(text);
        }
    }
    free(g);
}

void tg_jobs_handle_get(struct tg_jobs *j, const char *id, const char *tenant,
                        tg_jobs_reply_cb cb, void *user)
{
    bool valid = id != NULL && strncmp(id, "job_", 4) == 0 && strlen(id) == 28;
    for (size_t i = 4; valid && id[i] != '\0'; i++)
        valid = (id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f');
    if (!valid) {
        reply_not_found(cb, user);
        return;
    }
    if (!tg_redis_available(j->r)) {
        reply_unavailable(cb, user);
        return;
    }
    struct get_ctx *g = malloc(sizeof *g);
    if (g == NULL) {
        reply_error(cb, user, 500, "Out of memory.", "server_error", NULL, "internal");
        return;
    }
    g->cb = cb;
    g->user = user;
    snprintf(g->tenant, sizeof g->tenant, "%s", tenant != NULL ? tenant : "");
    if (tg_redis_command(j->r, on_get, g, "HGETALL tg:job:%s", id) != TG_OK) {
        free(g);
        reply_unavailable(cb, user);
    }
}
