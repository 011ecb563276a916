/* The remote tier: hands requests to the upstream executor (gateway/upstream/) and turns its
 * results into the endpoint's answer. Chat requests pass through (the client's body and the
 * provider's bytes, no re-serialisation); the other endpoints are translated to a chat request
 * and back. Classify/extract use the provider's structured output (response_format json_schema)
 * and the result is validated with tg_schema before it is returned. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "pipeline.h"
#include "tg/err.h"
#include "tg/json.h"
#include "tg/log.h"

void tg_pipeline_emit_delta(struct tg_req *r, const char *text, size_t len);
void tg_pipeline_emit_end(struct tg_req *r, const char *finish_reason);
void tg_pipeline_emit_error(struct tg_req *r, const char *message, const char *code);
void tg_pipeline_reply_text(struct tg_req *r, const char *text, const char *finish_reason);
void tg_pipeline_reply_task(struct tg_req *r, json_t *result, double confidence);

#include "upstream.h"

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static void global_init(void)
{
    tg_upstream_global_init();
}

int tg_remote_worker_init(struct tg_worker *w)
{
    pthread_once(&global_once, global_init);
    w->upstream = tg_upstream_exec_create(w->base, NULL);
    return w->upstream != NULL ? TG_OK : TG_NOMEM;
}

bool tg_remote_reply_due(struct tg_worker *w, double within_s)
{
    return tg_upstream_exec_reply_due(w->upstream, within_s);
}

void tg_remote_worker_fini(struct tg_worker *w)
{
    tg_upstream_exec_destroy(w->upstream);
    w->upstream = NULL;
}

bool tg_remote_available(struct tg_req *r)
{
    const struct tg_cfg_model *m = r->remote_model;
    if (m == NULL || r->w->upstream == NULL)
        return false;
    if (m->provider_ref != NULL && m->provider_ref->enabled)
        return true;
    for (size_t i = 0; i < m->n_fallbacks; i++) {
        const struct tg_cfg_model *f = tg_config_model(r->cfg, m->fallbacks[i]);
        if (f != NULL && f->provider_ref != NULL && f->provider_ref->enabled)
            return true;
    }
    return false;
}

bool tg_remote_circuit_open(struct tg_req *r)
{
    return r->remote_model != NULL && tg_upstream_circuit_open(r->remote_model->name);
}

/* The chat request sent upstream for endpoints other than chat. */
static json_t *translated_request(struct tg_req *r)
{
    json_t *msgs = json_array();
    if (r->ep == TG_GW_EP_CLASSIFY || r->ep == TG_GW_EP_EXTRACT) {
        const char *task = r->instructions != NULL ? r->instructions
                           : r->ep == TG_GW_EP_CLASSIFY
                               ? "Classify the user's text. Answer with the JSON object the schema "
                                 "describes, choosing only from the allowed labels."
                               : "Extract the information the JSON schema describes from the "
                                 "user's text. Answer with that JSON object only.";
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", "system", "content", task));
    }
    for (size_t i = 0; i < r->n_msgs; i++)
        json_array_append_new(msgs, json_pack("{s:s,s:s}", "role", r->msgs[i].role, "content",
                                              r->msgs[i].content));
    json_t *req = json_pack("{s:s,s:o}", "model", r->remote_model->name, "messages", msgs);
    if (req == NULL)
        return NULL;
    if (r->max_tokens > 0)
        json_object_set_new(req, "max_tokens", json_integer(r->max_tokens));
    if (r->ep == TG_GW_EP_CLASSIFY || r->ep == TG_GW_EP_EXTRACT) {
        json_object_set_new(req, "temperature", json_real(0));
        json_t *schema;
        if (r->ep == TG_GW_EP_CLASSIFY) {
            json_t *labels = json_array();
            for (size_t i = 0; i < r->n_labels; i++)
                json_array_append_new(labels, json_string(r->labels[i]));
            json_t *prop = r->multi_label
                               ? json_pack("{s:s,s:{s:o}}", "type", "array", "items", "enum", labels)
                               : json_pack("{s:s,s:o}", "type", "string", "enum", labels);
            schema = json_pack("{s:s,s:{s:o},s:[s],s:b}", "type", "object", "properties",
                               r->multi_label ? "labels" : "label", prop, "required",
                               r->multi_label ? "labels" : "label", "additionalProperties", 0);
        } else {
            json_error_t e;
            schema = json_loads(r->schema_text, 0, &e);
        }
        json_object_set_new(req, "response_format",
                            json_pack("{s:s,s:{s:s,s:o}}", "type", "json_schema", "json_schema",
                                      "name", r->ep == TG_GW_EP_CLASSIFY ? "classification" : "extraction",
                                      "schema", schema));
    } else {
        if (r->temperature > 0 || json_object_get(r->body, "temperature") != NULL)
            json_object_set_new(req, "temperature", json_real(r->temperature));
        if (r->top_p > 0)
            json_object_set_new(req, "top_p", json_real(r->top_p));
        if (r->n_stop > 0) {
            json_t *st = json_array();
            for (size_t i = 0; i < r->n_stop; i++)
                json_array_append_new(st, json_string(r->stop[i]));
            json_object_set_new(req, "stop", st);
        }
        if (r->stream)
            json_object_set_new(req, "stream", json_true());
    }
    return req;
}

/* The executor's fallbacks into the request (idempotent: the executor reports its running total
 * with the first chunk and again at the end). */
static void take_fallbacks(struct tg_req *r, int fallbacks, const char *reason)
{
    r->fallbacks += fallbacks - r->up_fallbacks;
    r->up_fallbacks = fallbacks;
    if (reason != NULL && r->fallback_reason == NULL)
        r->fallback_reason = reason;
}

static int on_chunk_impl(void *user, const struct tg_upstream_chunk *chunk)
{
    struct tg_req *r = user;
    if (r->replied || r->client_gone) {
        r->up_active = false;
        r->up = NULL;
        tg_req_maybe_free(r);
        return 1;
    }
    if (!r->sse) {
        /* The stream's headers go out now: name the target actually serving it (a fallback,
         * perhaps), not the primary. */
        if (chunk->served != NULL)
            r->model_served = chunk->served->name;
        take_fallbacks(r, chunk->fallbacks, chunk->fallback_reason);
    }
    if (r->ep == TG_GW_EP_CHAT) {
        tg_req_sse_begin(r);
        tg_req_sse_write(r, "data: ", 6);
        tg_req_sse_write(r, chunk->data, chunk->len);
        tg_req_sse_write(r, "\n\n", 2);
    } else {
        json_t *choices = json_object_get(chunk->json, "choices");
        json_t *delta = json_object_get(json_array_get(choices, 0), "delta");
        json_t *content = json_object_get(delta, "content");
        if (json_is_string(content) && json_string_length(content) > 0) {
            tg_buf_append(&r->text, json_string_value(content), json_string_length(content));
            tg_pipeline_emit_delta(r, json_string_value(content), json_string_length(content));
        }
    }
    /* Backpressure: a client that stops reading does not make us buffer the whole answer. */
    if (tg_req_pending_out(r) > (8u << 20)) {
        tg_warn("client is not reading its stream; dropping the upstream transfer");
        r->up_active = false;
        r->up = NULL;
        tg_pipeline_emit_error(r, "client too slow", "client_too_slow");
        return 1;
    }
    return 0;
}

static void take_stats(struct tg_req *r, const struct tg_upstream_stats *st)
{
    take_fallbacks(r, st->fallbacks, st->fallback_reason);
    r->upstream_s = st->upstream_s;
}

static const char *message_content(const json_t *resp)
{
    json_t *msg = json_object_get(json_array_get(json_object_get(resp, "choices"), 0), "message");
    return json_string_value(json_object_get(msg, "content"));
}

static void on_complete_impl(void *user, const struct tg_upstream_result *res)
{
    struct tg_req *r = user;
    r->up_active = false;
    r->up = NULL;
    take_stats(r, &res->stats);
    r->t_up_done = res->stats.complete_s;
    if (res->served != NULL)
        r->model_served = res->served->name;
    r->prompt_tokens = res->usage.prompt_tokens > 0 ? res->usage.prompt_tokens : 0;
    r->completion_tokens = res->usage.completion_tokens > 0 ? res->usage.completion_tokens : 0;
    r->cached_tokens = res->usage.cached_tokens > 0 ? res->usage.cached_tokens : 0;
    if (r->replied || r->client_gone) {
        tg_req_maybe_free(r);
        return;
    }
    const char *fr = res->finish_reason != NULL ? res->finish_reason : "stop";
    if (r->stream) {
        if (r->ep == TG_GW_EP_CHAT) {
            tg_req_sse_begin(r);
            tg_req_sse_write(r, "data: [DONE]\n\n", 14);
            tg_req_sse_end(r);
        } else {
            tg_pipeline_emit_end(r, fr);
        }
        return;
    }
    if (r->ep == TG_GW_EP_CHAT) {
        if (res->body != NULL)
            tg_req_reply_raw(r, 200, res->body, res->body_len);
        else
            tg_req_reply_json(r, 200, json_incref((json_t *)res->response));
        return;
    }
    const char *text = message_content(res->response);
    if (text == NULL)
        text = "";
    if (r->ep == TG_GW_EP_CLASSIFY || r->ep == TG_GW_EP_EXTRACT) {
        json_error_t e;
        json_t *doc = json_loads(text, JSON_DECODE_ANY, &e);
        char err[256] = "not JSON";
        if (r->ep == TG_GW_EP_EXTRACT) {
            if (doc != NULL && tg_schema_validate(r->schema, doc, err, sizeof err)) {
                tg_pipeline_reply_task(r, doc, -1);
                return;
            }
        } else {
            json_t *v = json_object_get(doc, r->multi_label ? "labels" : "label");
            bool ok = v != NULL;
            for (size_t i = 0; ok && i < (json_is_array(v) ? json_array_size(v) : 1); i++) {
                const char *l = json_string_value(json_is_array(v) ? json_array_get(v, i) : v);
                ok = false;
                for (size_t k = 0; l != NULL && k < r->n_labels; k++)
                    ok = ok || strcmp(l, r->labels[k]) == 0;
            }
            if (ok && (r->multi_label ? json_is_array(v) : json_is_string(v))) {
                json_incref(v);
                json_decref(doc);
                tg_pipeline_reply_task(r, v, -1);
                return;
            }
            snprintf(err, sizeof err, "answer is not one of the labels");
        }
        json_decref(doc);
        tg_warn("remote %s output rejected: %s", r->ep_name, err);
        r->should_retry = 0;
        tg_req_reply_error(r, 502, "the remote model's structured output did not validate",
                           "server_error", NULL, "schema_invalid");
        return;
    }
    tg_pipeline_reply_text(r, text, fr);
}

static void on_error_impl(void *user, const struct tg_upstream_error *e)
{
    struct tg_req *r = user;
    r->up_active = false;
    r->up = NULL;
    take_stats(r, &e->stats);
    r->t_up_done = e->stats.complete_s;
    if (e->last_target != NULL)
        r->model_served = e->last_target->name;
    if (r->replied || r->client_gone) {
        tg_req_maybe_free(r);
        return;
    }
    json_t *err = json_object_get(e->error, "error");
    const char *msg = json_string_value(json_object_get(err, "message"));
    if (r->sse || e->started) {
        tg_req_sse_begin(r);
        tg_pipeline_emit_error(r, msg != NULL ? msg : "upstream failed", e->kind);
        return;
    }
    r->should_retry = e->should_retry ? 1 : 0;
    tg_req_reply_json(r, e->status > 0 ? e->status : 502,
                      e->error != NULL ? json_incref((json_t *)e->error)
                                       : tg_json_error("upstream failed", "server_error", NULL, e->kind));
}

static int on_chunk(void *user, const struct tg_upstream_chunk *chunk)
{
    tg_log_set_request_id(((struct tg_req *)user)->id);
    int rc = on_chunk_impl(user, chunk);
    tg_log_set_request_id(NULL);
    return rc;
}

static void on_complete(void *user, const struct tg_upstream_result *res)
{
    tg_log_set_request_id(((struct tg_req *)user)->id);
    on_complete_impl(user, res);
    tg_log_set_request_id(NULL);
}

static void on_error(void *user, const struct tg_upstream_error *e)
{
    tg_log_set_request_id(((struct tg_req *)user)->id);
    on_error_impl(user, e);
    tg_log_set_request_id(NULL);
}

void tg_remote_run(struct tg_req *r)
{
    r->tier = "remote";
    r->model_served = r->remote_model->name;
    r->up_fallbacks = 0;
    const struct tg_cfg_model *targets[1 + TG_ROUTE_MAX_FALLBACKS];
    size_t n = 0;
    targets[n++] = r->remote_model;
    for (size_t i = 0; i < r->remote_model->n_fallbacks && n < 1 + TG_ROUTE_MAX_FALLBACKS; i++) {
        const struct tg_cfg_model *f = tg_config_model(r->cfg, r->remote_model->fallbacks[i]);
        if (f != NULL && f->tier == TG_TIER_REMOTE)
            targets[n++] = f;
    }
    json_t *own = NULL;
    const json_t *body = r->body;
    bool stream = r->stream;
    /* Chat passes through as the client sent it (escalated and fallen-back requests too). */
    if (r->ep != TG_GW_EP_CHAT) {
        own = translated_request(r);
        body = own;
        stream = r->stream && (r->ep == TG_GW_EP_COMPLETIONS || r->ep == TG_GW_EP_RESPONSES);
    }
    if (body == NULL) {
        tg_req_reply_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
        return;
    }
    struct tg_upstream_call call = {
        .request = body,
        .targets = targets,
        .n_targets = n,
        .stream = stream,
        .request_id = r->id,
        /* chat replies with the provider's bytes (on_complete_impl): no parsed tree needed */
        .body_only = r->ep == TG_GW_EP_CHAT && !stream,
    };
    if (own == NULL && r->http != NULL) {
        /* The client's exact bytes (evhttp keeps them until the request is freed; the pipeline
         * already made them contiguous to parse): OpenAI-compatible targets get them with only
         * the model value spliced, instead of a json_copy + re-serialisation of the body. */
        struct evbuffer *in = evhttp_request_get_input_buffer(r->http);
        size_t len = in != NULL ? evbuffer_get_length(in) : 0;
        const char *raw = len > 0 ? (const char *)evbuffer_pullup(in, (ev_ssize_t)len) : NULL;
        if (raw != NULL) {
            call.raw_body = raw;
            call.raw_len = len;
        }
    }
    static const struct tg_upstream_handlers handlers = {on_chunk, on_complete, on_error};
    int rc = tg_upstream_start(r->w->upstream, &call, &handlers, r, &r->up);
    json_decref(own);
    if (rc != TG_OK) {
        tg_req_reply_error(r, 500, "could not start the upstream request", "server_error", NULL,
                           tg_errname(rc));
        return;
    }
    r->up_active = true;
    /* A pooled connection has the request written by now (the executor kicks curl inside
     * tg_upstream_start); a new one is still connecting, which is waiting, not our work. */
    if (r->t_up_sent <= 0)
        r->t_up_sent = tg_now_s();
    if (r->closewatch == NULL)
        tg_req_watch_client(r);
}

void tg_remote_cancel(struct tg_req *r)
{
    if (r->up_active && r->up != NULL) {
        tg_upstream_cancel(r->up);
        r->up = NULL;
        r->up_active = false;
    }
}

