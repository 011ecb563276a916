/* Hooks between the request pipeline and the Redis component: limits and budgets before routing,
 * the response cache (lookup, replay, capture, store), and the /v1/jobs endpoints. See
 * redis_glue.h. */
#include "redis_glue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "cache.h"
#include "jobs.h"
#include "pipeline.h"
#include "ratelimit.h"
#include "redis.h"
#include "tg/err.h"
#include "tg/json.h"
#include "tg/log.h"

struct glue {
    struct tg_req *r;
    void (*cont)(struct tg_req *r);
    struct tg_cache_key key;
    bool write;                    /* store the response when it completes */
    bool failed;                   /* stream broke after it started */
    bool budget_exhausted;
    bool limited;                  /* the key has limits: `limits` holds the check's answer */
    struct tg_limits_result limits;
    int waiting;                   /* Redis answers still expected before routing */
    bool issuing;
    struct tg_cache_entry *hit;    /* looked-up entry, until replayed */
    struct tg_cache_entry *entry;  /* response being captured */
};

static struct glue *glue_of(struct tg_req *r)
{
    if (r->redis_state == NULL) {
        struct glue *g = calloc(1, sizeof *g);
        if (g == NULL)
            return NULL;
        g->r = r;
        r->redis_state = g;
    }
    return r->redis_state;
}

void tg_glue_req_free(struct tg_req *r)
{
    struct glue *g = r->redis_state;
    if (g == NULL)
        return;
    tg_cache_entry_free(g->entry);
    tg_cache_entry_free(g->hit);
    free(g);
    r->redis_state = NULL;
}

/* ---- worker ---- */

int tg_glue_worker_init(struct tg_worker *w, const struct tg_config *cfg)
{
    if (!cfg->redis.enabled)
        return TG_OK;
    char name[32];
    snprintf(name, sizeof name, "io-%d", w->index);
    int rc = tg_redis_create(w->base, &cfg->redis, name, &w->redis);
    if (rc != TG_OK)
        return rc;
    struct tg_jobs_params p = tg_jobs_params_from_config(cfg);
    return tg_jobs_create(w->redis, &p, tg_pipeline_execute, w, &w->jobs);
}

void tg_glue_worker_fini(struct tg_worker *w)
{
    tg_jobs_destroy(w->jobs);
    w->jobs = NULL;
    tg_redis_destroy(w->redis);
    w->redis = NULL;
}

void tg_glue_drain(struct tg_worker *w)
{
    tg_jobs_pause(w->jobs);
}

/* ---- helpers ---- */

static const char *ep_path(enum tg_gw_endpoint ep)
{
    switch (ep) {
    case TG_GW_EP_COMPLETIONS: return "/v1/completions";
    case TG_GW_EP_RESPONSES: return "/v1/responses";
    case TG_GW_EP_EMBEDDINGS: return "/v1/embeddings";
    case TG_GW_EP_CLASSIFY: return "/v1/classify";
    case TG_GW_EP_EXTRACT: return "/v1/extract";
    default: return "/v1/chat/completions";
    }
}

static const char *in_header(struct tg_req *r, const char *name)
{
    return r->http != NULL ? evhttp_find_header(evhttp_request_get_input_headers(r->http), name) : NULL;
}

static void retry_after(struct tg_req *r, int64_t s)
{
    if (r->http == NULL || s <= 0)
        return;
    char v[32];
    snprintf(v, sizeof v, "%lld", (long long)s);
    evhttp_add_header(evhttp_request_get_output_headers(r->http), "Retry-After", v);
}

static const char *own(struct tg_req *r, const char *s)
{
    json_t *j = json_string(s != NULL ? s : "");
    if (j == NULL || json_array_append_new(r->owned, j) != 0)
        return "";
    return json_string_value(j);
}

/* Rough prompt size for the tokens/min check (~4 bytes a token). */
static int64_t estimate_tokens(const struct tg_req *r)
{
    size_t bytes = r->prompt != NULL ? strlen(r->prompt) : 0;
    for (size_t i = 0; i < r->n_msgs; i++)
        bytes += r->msgs[i].content != NULL ? strlen(r->msgs[i].content) : 0;
    for (size_t i = 0; i < r->n_inputs; i++)
        bytes += r->inputs[i] != NULL ? strlen(r->inputs[i]) : 0;
    return (int64_t)(bytes / 4) + 1;
}

/* ---- limits + cache lookup ------------------------------------------------------------------
 * Both go out at once (one round trip, not two); the request proceeds when both answered. */

/* Both answers are in: reject, replay a hit, or route. */
static void proceed(struct tg_req *r, struct glue *g)
{
    struct tg_cache_entry *e = g->hit;
    g->hit = NULL;
    if (r->replied || r->client_gone) {
        tg_cache_entry_free(e);
        tg_req_maybe_free(r);
        return;
    }
    tg_log_set_request_id(r->id);
    int status;
    int64_t after;
    if (g->limited && !g->limits.allowed) {
        tg_cache_entry_free(e);
        json_t *body = tg_limits_reply(&g->limits, &status, &after);
        retry_after(r, after);
        tg_info("limit %s reached for key %s", tg_limit_kind_name(g->limits.kind), r->key->name);
        tg_req_reply_json(r, status, body);
        goto out;
    }
    if (g->limited && g->limits.remote_budget_exhausted) {
        g->budget_exhausted = true;
        /* The router downgrades to local; a request that can only go remote is refused here,
         * the rest after routing (tg_glue_reject_budget). */
        const struct tg_cfg_model *m = tg_config_model(r->cfg, r->model_req);
        bool remote_only = r->tier_override == 2 || !r->cfg->local.enabled ||
                           (m != NULL && m->tier == TG_TIER_REMOTE);
        if (remote_only && e == NULL) {
            json_t *body = tg_limits_reject_budget(&g->limits, &status, &after);
            retry_after(r, after);
            tg_req_reply_json(r, status, body);
            goto out;
        }
    }
    if (e == NULL) {
        g->cont(r);
        goto out;
    }
    /* Hit: served as stored; cost 0, the avoided cost is computed from the stored usage. */
    g->write = false;
    r->cache_result = "hit";
    r->tier = "cache";
    r->model_served = own(r, e->model);
    r->prompt_tokens = e->prompt_tokens;
    r->completion_tokens = e->completion_tokens;
    if (e->stream) {
        tg_req_sse_begin(r);
        for (size_t i = 0; i < e->n_chunks; i++)
            tg_req_sse_write(r, e->chunks[i].data, e->chunks[i].len);
        tg_req_sse_end(r);
    } else {
        tg_req_reply_raw(r, e->status, e->body != NULL ? e->body : "", e->body_len);
    }
    tg_cache_entry_free(e);
out:
    tg_log_set_request_id(NULL);
}

/* One of the two answers arrived. */
static void answered(struct glue *g)
{
    struct tg_req *r = g->r;
    r->redis_active--;
    if (--g->waiting == 0 && !g->issuing)
        proceed(r, g);
}

static void on_lookup(int err, struct tg_cache_entry *e, void *user)
{
    struct glue *g = user;
    struct tg_req *r = g->r;
    if (err != TG_OK) {
        r->cache_result = "bypass";
        g->write = false;
    } else if (e == NULL || e->status != 200 || e->stream != r->stream) {
        r->cache_result = "miss";
        tg_cache_entry_free(e);
        e = NULL;
    }
    g->hit = e;
    answered(g);
}

static void on_limits(const struct tg_limits_result *res, void *user)
{
    struct glue *g = user;
    g->limits = *res;
    answered(g);
}

/* Cache decision and key; true when the entry must be looked up. */
static bool cache_prepare(struct tg_req *r, struct glue *g)
{
    struct tg_redis *c = r->w->redis;
    double default_temp = r->ep == TG_GW_EP_CHAT || r->ep == TG_GW_EP_COMPLETIONS ||
                                  r->ep == TG_GW_EP_RESPONSES
                              ? 1.0
                              : 0.0;
    struct tg_cache_decision d = tg_cache_decide(&r->cfg->cache, r->body, default_temp,
                                                 in_header(r, "Cache-Control"),
                                                 tg_redis_available(c));
    r->cache_result = "bypass";
    if (d.reason != NULL)
        tg_debug("cache: %s", d.reason);
    if (!d.read && !d.write)
        return false;
    char resolved[160];
    snprintf(resolved, sizeof resolved, "%s|tier=%d", r->model_req != NULL ? r->model_req : "auto",
             r->tier_override);
    if (tg_cache_key(r->key != NULL ? r->key->tenant : "", ep_path(r->ep), resolved, r->body,
                     r->stream, &g->key) != TG_OK)
        return false;
    g->write = d.write;
    return d.read;
}

void tg_glue_before_route(struct tg_req *r, void (*cont)(struct tg_req *r))
{
    struct glue *g = r->w->redis != NULL ? glue_of(r) : NULL;
    if (g == NULL) {
        cont(r);
        return;
    }
    g->cont = cont;
    bool lookup = cache_prepare(r, g);
    g->limited = r->key != NULL && tg_limits_any(&r->key->limits);
    /* Callbacks may run inside the submit calls (limits with Redis down): `issuing` keeps them
     * from proceeding before both are out. */
    g->issuing = true;
    if (g->limited) {
        g->waiting++;
        r->redis_active++;
        if (tg_limits_check(r->w->redis, &r->cfg->redis, r->key->name, &r->key->limits,
                            estimate_tokens(r), 0, on_limits, g) != TG_OK) {
            g->waiting--; /* out of memory: no check, the request goes on */
            r->redis_active--;
            g->limited = false;
        }
    }
    if (lookup) {
        g->waiting++;
        r->redis_active++;
        if (tg_cache_lookup(r->w->redis, &g->key, on_lookup, g) != TG_OK) {
            g->waiting--;
            r->redis_active--;
            g->write = false;
        }
    }
    g->issuing = false;
    if (g->waiting == 0)
        proceed(r, g);
}

bool tg_glue_budget_exhausted(const struct tg_req *r)
{
    const struct glue *g = r->redis_state;
    return g != NULL && g->budget_exhausted;
}

void tg_glue_reject_budget(struct tg_req *r)
{
    struct glue *g = r->redis_state;
    int status;
    int64_t after;
    json_t *body = tg_limits_reject_budget(&g->limits, &status, &after);
    retry_after(r, after);
    tg_info("budget %s spent for key %s and the policy keeps the request remote",
            tg_limit_kind_name(g->limits.budget_kind), r->key != NULL ? r->key->name : "-");
    tg_req_reply_json(r, status, body);
}

/* ---- capture and store ---- */

static struct tg_cache_entry *entry_for(struct tg_req *r, struct glue *g, bool stream)
{
    if (g->entry == NULL)
        g->entry = tg_cache_entry_new(200, stream, NULL, r->cfg->cache.max_entry_bytes);
    return g->entry;
}

void tg_glue_capture_body(struct tg_req *r, int status, const char *body, size_t len)
{
    struct glue *g = r->redis_state;
    if (g == NULL || !g->write || status != 200 || r->sse)
        return;
    struct tg_cache_entry *e = entry_for(r, g, false);
    if (e == NULL || tg_cache_entry_set_body(e, body, len) != TG_OK)
        g->write = false; /* too big for the cache: not stored */
}

void tg_glue_capture_sse(struct tg_req *r, struct evbuffer *chunk)
{
    struct glue *g = r->redis_state;
    if (g == NULL || !g->write)
        return;
    size_t len = evbuffer_get_length(chunk);
    const char *data = (const char *)evbuffer_pullup(chunk, -1);
    struct tg_cache_entry *e = entry_for(r, g, true);
    if (e == NULL || data == NULL || tg_cache_entry_add_chunk(e, data, len) != TG_OK)
        g->write = false;
}

void tg_glue_stream_failed(struct tg_req *r)
{
    struct glue *g = r->redis_state;
    if (g != NULL)
        g->failed = true;
}

void tg_glue_finish(struct tg_req *r)
{
    struct glue *g = r->redis_state;
    struct tg_redis *c = r->w->redis;
    if (g == NULL || c == NULL)
        return;
    if (r->key != NULL && tg_limits_any(&r->key->limits) && strcmp(r->tier, "cache") != 0)
        tg_limits_record(c, r->key->name, &r->key->limits, r->prompt_tokens + r->completion_tokens,
                         r->cost_usd, 0);
    if (g->write && g->entry != NULL && !g->failed && !r->client_gone && r->status == 200 &&
        strcmp(r->tier, "cache") != 0 && (g->entry->stream || g->entry->body != NULL)) {
        tg_cache_entry_set_usage(g->entry, r->model_served, r->prompt_tokens, r->completion_tokens);
        tg_cache_store(c, &g->key, g->entry, r->cfg->cache.ttl_s);
    }
    tg_cache_entry_free(g->entry);
    g->entry = NULL;
    g->write = false;
}

/* ---- /v1/jobs ---- */

static void on_jobs_reply(int status, const char *body, size_t len, void *user)
{
    struct tg_req *r = user;
    r->redis_active--;
    if (r->replied || r->client_gone) {
        tg_req_maybe_free(r);
        return;
    }
    tg_req_reply_raw(r, status, body, len);
}

void tg_glue_jobs_http(struct tg_req *r, const char *path)
{
    r->ep_name = "jobs";
    struct tg_jobs *j = r->w->jobs;
    if (j == NULL) {
        r->should_retry = 0;
        tg_req_reply_error(r, 503, "Async jobs need Redis (redis.enabled is false).", "server_error",
                           NULL, "jobs_unavailable");
        return;
    }
    enum evhttp_cmd_type method = evhttp_request_get_command(r->http);
    const char *tenant = r->key != NULL ? r->key->tenant : "";
    const char *key_name = r->key != NULL ? r->key->name : NULL;
    if (strcmp(path, "/v1/jobs") == 0 && method == EVHTTP_REQ_POST) {
        struct evbuffer *in = evhttp_request_get_input_buffer(r->http);
        size_t len = evbuffer_get_length(in);
        if (len > r->cfg->server.max_body_bytes) {
            tg_req_reply_error(r, 413, "The job body is too large.", "invalid_request_error", NULL,
                               "request_too_large");
            return;
        }
        const char *data = len > 0 ? (const char *)evbuffer_pullup(in, (ev_ssize_t)len) : "";
        tg_req_watch_client(r);
        r->redis_active++;
        tg_jobs_handle_post(j, data, len, in_header(r, "Idempotency-Key"), key_name, tenant,
                            on_jobs_reply, r);
        return;
    }
    if (strncmp(path, "/v1/jobs/", 9) == 0 && method == EVHTTP_REQ_GET) {
        tg_req_watch_client(r);
        r->redis_active++;
        tg_jobs_handle_get(j, path + 9, tenant, on_jobs_reply, r);
        return;
    }
    tg_req_reply_error(r, 405, "Use POST /v1/jobs or GET /v1/jobs/{id}.", "invalid_request_error",
                       NULL, "method_not_allowed");
}

void tg_glue_redis_gauges(const struct tg_config *cfg, double *up, double *outages)
{
    if (!cfg->redis.enabled) {
        *up = -1;
        *outages = 0;
        return;
    }
    *up = tg_redis_clients_down() == 0 ? 1 : 0;
    *outages = (double)tg_redis_outages_total();
}
