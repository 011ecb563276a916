/* The request pipeline: parse -> auth -> limits -> cache lookup -> route -> execute (local /
 * remote, escalation, fallback) -> respond -> cache store -> metrics record.
 *
 * Every function here runs on the request's I/O thread. The parsed request keeps pointers into
 * the client's JSON body (r->body) instead of copying strings; strings that have to be built
 * (text parts joined, responses API items) live in r->owned, which dies with the request.
 */
#include "pipeline.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/evp.h>

#include "redis_glue.h"
#include "tg/err.h"
#include "tg/json.h"
#include "tg/log.h"

#include "cost.h"
#include "metrics.h"

#define MAX_MESSAGES 4096
#define MAX_LABELS 256
#define MAX_INPUTS 2048

/* ---- small helpers ------------------------------------------------------------------------ */

static const char *ep_name(enum tg_gw_endpoint ep)
{
    static const char *names[] = {"chat", "completions", "responses", "embeddings", "classify",
                                  "extract"};
    return names[ep];
}

static void bad_request(const char *reason)
{
    tg_metrics_bad_request(reason);
}

/* A 4xx before or during parsing: counted, OpenAI-shaped, connection kept. */
static void reject(struct tg_req *r, int status, const char *code, const char *param,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void reject(struct tg_req *r, int status, const char *code, const char *param,
                   const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bad_request(code);
    const char *type = status == 401   ? "authentication_error"
                       : status == 404 ? "invalid_request_error"
                       : status == 429 ? "rate_limit_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    tg_req_reply_error(r, status, msg, type, param, code);
}

static const char *own_str(struct tg_req *r, const char *s, size_t len)
{
    json_t *j = json_stringn_nocheck(s, len);
    if (j == NULL || json_array_append_new(r->owned, j) != 0)
        return NULL;
    return json_string_value(j);
}

/* Parsers return -1 once they have answered (r may be freed by then): out of memory too. */
static int oom(struct tg_req *r)
{
    tg_req_reply_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
    return -1;
}

static uint64_t next_rand(struct tg_worker *w)
{
    /* xorshift64*: request ids only need to be unique, not secret. */
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static bool id_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && strchr("-_.:", s[i]) == NULL)
            return false;
    return true;
}

/* ---- request life ------------------------------------------------------------------------ */

static struct tg_req *req_new(struct tg_worker *w)
{
    struct tg_req *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->w = w;
    r->owned = json_array();
    if (r->owned == NULL) {
        free(r);
        return NULL;
    }
    tg_gateway_snapshot(w->gw, &r->cfg, &r->policy);
    r->t_start = tg_now_s();
    r->max_tokens = -1;
    r->upstream_s = -1;
    r->should_retry = -1;
    r->confidence = -1;
    r->tier = "none";
    r->cache_result = "bypass";
    r->model_served = "";
    r->ep_name = "other";
    tg_buf_init(&r->text, 64u << 20);
    r->next = w->reqs;
    if (w->reqs != NULL)
        w->reqs->prev = r;
    w->reqs = r;
    atomic_fetch_add(&w->gw->inflight, 1);
    return r;
}

static void req_free(struct tg_req *r)
{
    struct tg_worker *w = r->w;
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        w->reqs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    if (r->closewatch != NULL)
        event_free(r->closewatch);
    tg_glue_req_free(r);
    json_decref(r->body);
    json_decref(r->owned);
    json_decref(r->emb_data);
    json_decref(r->labels_out);
    free(r->msgs);
    free(r->labels);
    free(r->inputs);
    free(r->schema_text);
    tg_schema_free(r->schema);
    tg_buf_free(&r->text);
    tg_config_unref(r->cfg);
    tg_router_policy_unref(r->policy);
    free(r);
}

void tg_req_maybe_free(struct tg_req *r)
{
    if (r->replied && r->jobs_active == 0 && !r->up_active && r->redis_active == 0)
        req_free(r);
}

void tg_pipeline_free_all(struct tg_worker *w)
{
    while (w->reqs != NULL) {
        struct tg_req *r = w->reqs;
        r->http = NULL; /* evhttp_free already released the requests it owned */
        if (!r->replied)
            atomic_fetch_sub(&w->gw->inflight, 1);
        req_free(r);
    }
}

/* ---- cost, headers, metrics --------------------------------------------------------------- */

static void compute_cost(struct tg_req *r)
{
    const char *tier = r->tier;
    struct tg_cost c;
    tg_cost_compute(r->cfg, tier, r->model_served, r->prompt_tokens, r->completion_tokens, &c);
    r->cost_usd = c.cost_usd;
    r->avoided_usd = c.avoided_usd;
    r->avoided_reason = c.avoided_reason;
    tg_cost_format_usd(c.cost_nano, r->cost_str, sizeof r->cost_str);
}

const char *tg_pipeline_cost_header(struct tg_req *r, char *buf, size_t len)
{
    if (r->cost_str[0] == '\0')
        compute_cost(r);
    snprintf(buf, len, "%s", r->cost_str);
    return buf;
}

const char *tg_pipeline_model_header(struct tg_req *r, char *buf, size_t len)
{
    const char *m = r->model_served != NULL && r->model_served[0] != '\0' ? r->model_served : "none";
    if (strcmp(r->tier, "local") == 0 && atomic_load(&r->w->gw->random_weights))
        snprintf(buf, len, "%s; random-weights", m);
    else
        snprintf(buf, len, "%s", m);
    return buf;
}

void tg_pipeline_finish_record(struct tg_req *r)
{
    if (r->recorded)
        return;
    r->recorded = true;
    compute_cost(r);
    tg_glue_finish(r);
    double now = tg_now_s();
    tg_debug("%s %s tier=%s model=%s status=%d tokens=%lld+%lld cost=%s %.1fms%s%s", r->ep_name,
            r->model_req != NULL ? r->model_req : "-", r->tier, r->model_served, r->status,
            (long long)r->prompt_tokens, (long long)r->completion_tokens, r->cost_str,
            (now - r->t_start) * 1e3, r->escalated ? " escalated" : "",
            r->fallbacks > 0 ? " fallback" : "");
    struct tg_request_record rec = {
        .endpoint = r->ep_name,
        .tier = r->tier,
        .model = r->model_served,
        .status = r->status,
        .duration_s = now - r->t_start,
        .ttft_s = r->t_first > 0 ? r->t_first - r->t_start : -1,
        .upstream_s = r->upstream_s,
        .prompt_tokens = r->prompt_tokens,
        .completion_tokens = r->completion_tokens,
        .cached_tokens = r->cached_tokens,
        .cost_usd = r->cost_usd,
        .avoided_usd = r->avoided_usd,
        .avoided_reason = r->avoided_reason,
        .cache_result = r->cache_result,
        .route_tier = r->routed ? tg_route_tier_name(r->dec.tier) : NULL,
        .route_reason = r->routed ? r->route_reason : NULL,
        .escalated = r->escalated,
        .fallbacks = r->fallbacks,
        .escalation_reason = r->escalation_reason,
        .fallback_reason = r->fallback_reason,
        .tenant = r->key != NULL ? r->key->tenant : "",
    };
    tg_metrics_record(&rec);
}

/* ---- parsing ----------------------------------------------------------------------------- */

/* Text of a message content: a string, null, or an array of parts whose text parts are joined. */
static int content_text(struct tg_req *r, json_t *content, const char **out, const char *param)
{
    if (content == NULL || json_is_null(content)) {
        *out = "";
        return 0;
    }
    if (json_is_string(content)) {
        *out = json_string_value(content);
        return 0;
    }
    if (!json_is_array(content)) {
        reject(r, 400, "invalid_type", param, "'%s' must be a string or an array of content parts",
               param);
        return -1;
    }
    struct tg_buf b;
    tg_buf_init(&b, r->cfg->server.max_body_bytes);
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!json_is_object(part) || type == NULL) {
            tg_buf_free(&b);
            reject(r, 400, "invalid_type", param, "'%s[%zu]' must be an object with a 'type'", param, i);
            return -1;
        }
        json_t *text = json_object_get(part, "text");
        if (json_is_string(text)) {
            if (b.len > 0)
                tg_buf_append(&b, "\n", 1);
            tg_buf_append(&b, json_string_value(text), json_string_length(text));
        }
    }
    *out = own_str(r, b.data != NULL ? b.data : "", b.len);
    tg_buf_free(&b);
    return *out != NULL ? 0 : oom(r);
}

static const char *engine_role(const char *role)
{
    if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0)
        return "system";
    if (strcmp(role, "assistant") == 0)
        return "assistant";
    return "user";
}

static int parse_messages(struct tg_req *r, json_t *msgs, const char *param)
{
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        reject(r, 400, msgs == NULL ? "missing_required_parameter" : "invalid_type", param,
               msgs == NULL ? "'%s' is required" : "'%s' must be a non-empty array", param);
        return -1;
    }
    size_t n = json_array_size(msgs);
    if (n > MAX_MESSAGES) {
        reject(r, 400, "too_many_messages", param, "'%s' has %zu items; at most %d are accepted",
               param, n, MAX_MESSAGES);
        return -1;
    }
    r->msgs = calloc(n, sizeof *r->msgs);
    if (r->msgs == NULL)
        return oom(r);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        char p[64];
        snprintf(p, sizeof p, "%s[%zu]", param, i);
        if (!json_is_object(m)) {
            reject(r, 400, "invalid_type", p, "'%s' must be an object", p);
            return -1;
        }
        const char *role = json_string_value(json_object_get(m, "role"));
        if (role == NULL) {
            reject(r, 400, "invalid_value", p, "'%s.role' must be one of system, developer, user, "
                   "assistant, tool", p);
            return -1;
        }
        if (strcmp(role, "system") != 0 && strcmp(role, "developer") != 0 &&
            strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0 &&
            strcmp(role, "tool") != 0 && strcmp(role, "function") != 0) {
            reject(r, 400, "invalid_value", p, "'%s.role' has an unknown value '%.40s'", p, role);
            return -1;
        }
        char cp[80];
        snprintf(cp, sizeof cp, "%s.content", p);
        const char *text;
        if (content_text(r, json_object_get(m, "content"), &text, cp) != 0)
            return -1;
        r->msgs[i].role = engine_role(role);
        r->msgs[i].content = text;
    }
    r->n_msgs = n;
    return 0;
}

/* Optional typed fields shared by the generation endpoints. */
static int parse_sampling(struct tg_req *r, json_t *b)
{
    char err[160];
    double d;
    int64_t i64;
    int rc = tg_json_get_num(b, "temperature", &d, err, sizeof err);
    if (rc == TG_OK) {
        if (d < 0 || d > 2) {
            reject(r, 400, "invalid_value", "temperature", "'temperature' must be between 0 and 2");
            return -1;
        }
        r->temperature = (float)d;
    } else if (rc == TG_INVAL && !json_is_null(json_object_get(b, "temperature"))) {
        reject(r, 400, "invalid_type", "temperature", "%s", err);
        return -1;
    }
    rc = tg_json_get_num(b, "top_p", &d, err, sizeof err);
    if (rc == TG_OK) {
        if (d < 0 || d > 1) {
            reject(r, 400, "invalid_value", "top_p", "'top_p' must be between 0 and 1");
            return -1;
        }
        r->top_p = (float)d;
    } else if (rc == TG_INVAL && !json_is_null(json_object_get(b, "top_p"))) {
        reject(r, 400, "invalid_type", "top_p", "%s", err);
        return -1;
    }
    static const char *max_keys[] = {"max_tokens", "max_completion_tokens", "max_output_tokens"};
    for (size_t k = 0; k < 3; k++) {
        rc = tg_json_get_int(b, max_keys[k], &i64, err, sizeof err);
        if (rc == TG_OK) {
            if (i64 < 1) {
                reject(r, 400, "invalid_value", max_keys[k], "'%s' must be at least 1", max_keys[k]);
                return -1;
            }
            r->max_tokens = i64;
        } else if (rc == TG_INVAL && !json_is_null(json_object_get(b, max_keys[k]))) {
            reject(r, 400, "invalid_type", max_keys[k], "'%s' must be an integer", max_keys[k]);
            return -1;
        }
    }
    rc = tg_json_get_int(b, "seed", &i64, err, sizeof err);
    if (rc == TG_OK) {
        r->seed = (uint32_t)i64;
    } else if (rc == TG_INVAL && !json_is_null(json_object_get(b, "seed"))) {
        reject(r, 400, "invalid_type", "seed", "'seed' must be an integer");
        return -1;
    }
    json_t *stop = json_object_get(b, "stop");
    if (json_is_string(stop)) {
        r->stop[0] = json_string_value(stop);
        r->n_stop = 1;
    } else if (json_is_array(stop)) {
        if (json_array_size(stop) > TG_GW_MAX_STOP) {
            reject(r, 400, "invalid_value", "stop", "'stop' accepts at most %d strings", TG_GW_MAX_STOP);
            return -1;
        }
        for (size_t i = 0; i < json_array_size(stop); i++) {
            const char *s = json_string_value(json_array_get(stop, i));
            if (s == NULL || s[0] == '\0' || strlen(s) > 128) {
                reject(r, 400, "invalid_value", "stop", "'stop' must hold non-empty strings of at most 128 bytes");
                return -1;
            }
            r->stop[r->n_stop++] = s;
        }
    } else if (stop != NULL && !json_is_null(stop)) {
        reject(r, 400, "invalid_type", "stop", "'stop' must be a string or an array of strings");
        return -1;
    }
    json_t *st = json_object_get(b, "stream");
    if (st != NULL && !json_is_null(st)) {
        if (!json_is_boolean(st)) {
            reject(r, 400, "invalid_type", "stream", "'stream' must be a boolean");
            return -1;
        }
        r->stream = json_is_true(st);
    }
    json_t *so = json_object_get(b, "stream_options");
    if (so != NULL && !json_is_null(so)) {
        if (!json_is_object(so)) {
            reject(r, 400, "invalid_type", "stream_options", "'stream_options' must be an object");
            return -1;
        }
        r->include_usage = json_is_true(json_object_get(so, "include_usage"));
    }
    return 0;
}

static int parse_text_or_messages(struct tg_req *r, json_t *b)
{
    json_t *text = json_object_get(b, "text");
    json_t *msgs = json_object_get(b, "messages");
    if (text != NULL && !json_is_null(text)) {
        if (!json_is_string(text) || json_string_length(text) == 0) {
            reject(r, 400, "invalid_type", "text", "'text' must be a non-empty string");
            return -1;
        }
        r->msgs = calloc(1, sizeof *r->msgs);
        if (r->msgs == NULL)
            return oom(r);
        r->msgs[0].role = "user";
        r->msgs[0].content = json_string_value(text);
        r->n_msgs = 1;
        return 0;
    }
    if (msgs == NULL || json_is_null(msgs)) {
        reject(r, 400, "missing_required_parameter", "text", "one of 'text' or 'messages' is required");
        return -1;
    }
    return parse_messages(r, msgs, "messages");
}

static int parse_instructions(struct tg_req *r, json_t *b)
{
    json_t *ins = json_object_get(b, "instructions");
    if (ins == NULL || json_is_null(ins))
        return 0;
    if (!json_is_string(ins)) {
        reject(r, 400, "invalid_type", "instructions", "'instructions' must be a string");
        return -1;
    }
    r->instructions = json_string_value(ins);
    return 0;
}

static int parse_classify(struct tg_req *r, json_t *b)
{
    if (parse_text_or_messages(r, b) != 0 || parse_instructions(r, b) != 0)
        return -1;
    json_t *labels = json_object_get(b, "labels");
    if (labels == NULL || json_is_null(labels)) {
        reject(r, 400, "missing_required_parameter", "labels", "'labels' is required");
        return -1;
    }
    if (!json_is_array(labels)) {
        reject(r, 400, "invalid_type", "labels", "'labels' must be an array of strings");
        return -1;
    }
    size_t n = json_array_size(labels);
    if (n == 0 || n > MAX_LABELS) {
        reject(r, 422, "invalid_labels", "labels", "'labels' must hold 1 to %d labels (got %zu)",
               MAX_LABELS, n);
        return -1;
    }
    r->labels = calloc(n, sizeof *r->labels);
    if (r->labels == NULL)
        return oom(r);
    for (size_t i = 0; i < n; i++) {
        json_t *l = json_array_get(labels, i);
        if (!json_is_string(l)) {
            reject(r, 400, "invalid_type", "labels", "'labels[%zu]' must be a string", i);
            return -1;
        }
        size_t len = json_string_length(l);
        if (len == 0 || len > 256) {
            reject(r, 422, "invalid_labels", "labels", "'labels[%zu]' must be 1 to 256 bytes", i);
            return -1;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(r->labels[j], json_string_value(l)) == 0) {
                reject(r, 422, "invalid_labels", "labels", "'labels' has a duplicate: '%.80s'",
                       r->labels[j]);
                return -1;
            }
        r->labels[i] = json_string_value(l);
    }
    r->n_labels = n;
    json_t *ml = json_object_get(b, "multi_label");
    if (ml != NULL && !json_is_null(ml)) {
        if (!json_is_boolean(ml)) {
            reject(r, 400, "invalid_type", "multi_label", "'multi_label' must be a boolean");
            return -1;
        }
        r->multi_label = json_is_true(ml);
    }
    return 0;
}

static int parse_extract(struct tg_req *r, json_t *b)
{
    if (parse_text_or_messages(r, b) != 0 || parse_instructions(r, b) != 0)
        return -1;
    json_t *schema = json_object_get(b, "schema");
    if (schema == NULL || json_is_null(schema)) {
        reject(r, 400, "missing_required_parameter", "schema", "'schema' is required");
        return -1;
    }
    if (!json_is_object(schema)) {
        reject(r, 400, "invalid_type", "schema", "'schema' must be a JSON Schema object");
        return -1;
    }
    char err[256];
    if (tg_schema_compile(schema, &r->schema, err, sizeof err) != TG_OK) {
        reject(r, 422, "invalid_schema", "schema", "%s", err);
        return -1;
    }
    r->schema_text = tg_json_dumps(schema);
    return r->schema_text != NULL ? 0 : oom(r);
}

static int parse_embeddings(struct tg_req *r, json_t *b)
{
    json_t *in = json_object_get(b, "input");
    if (in == NULL || json_is_null(in)) {
        reject(r, 400, "missing_required_parameter", "input", "'input' is required");
        return -1;
    }
    size_t n = json_is_array(in) ? json_array_size(in) : 1;
    if (!json_is_string(in) && !json_is_array(in)) {
        reject(r, 400, "invalid_type", "input", "'input' must be a string or an array of strings");
        return -1;
    }
    if (n == 0 || n > MAX_INPUTS) {
        reject(r, 400, "invalid_value", "input", "'input' must hold 1 to %d strings", MAX_INPUTS);
        return -1;
    }
    r->inputs = calloc(n, sizeof *r->inputs);
    if (r->inputs == NULL)
        return oom(r);
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(in) ? json_array_get(in, i) : in;
        if (!json_is_string(s) || json_string_length(s) == 0) {
            reject(r, 400, "invalid_value", "input",
                   "'input' must be a non-empty string or an array of non-empty strings "
                   "(token arrays are not supported)");
            return -1;
        }
        r->inputs[i] = json_string_value(s);
    }
    r->n_inputs = n;
    const char *fmt = json_string_value(json_object_get(b, "encoding_format"));
    if (fmt != NULL && strcmp(fmt, "base64") != 0 && strcmp(fmt, "float") != 0) {
        reject(r, 400, "invalid_value", "encoding_format", "'encoding_format' must be float or base64");
        return -1;
    }
    r->base64 = fmt != NULL && strcmp(fmt, "base64") == 0;
    r->emb_data = json_array();
    for (size_t i = 0; i < n && r->emb_data != NULL; i++)
        json_array_append_new(r->emb_data, json_null());
    return r->emb_data != NULL ? 0 : oom(r);
}

static int parse_responses(struct tg_req *r, json_t *b)
{
    json_t *in = json_object_get(b, "input");
    const char *ins = json_string_value(json_object_get(b, "instructions"));
    size_t n = json_is_array(in) ? json_array_size(in) : 1;
    if (in == NULL || json_is_null(in)) {
        reject(r, 400, "missing_required_parameter", "input", "'input' is required");
        return -1;
    }
    if (!json_is_string(in) && !json_is_array(in)) {
        reject(r, 400, "invalid_type", "input", "'input' must be a string or an array of input items");
        return -1;
    }
    if (n == 0 || n > MAX_MESSAGES) {
        reject(r, 400, "invalid_value", "input", "'input' must hold 1 to %d items", MAX_MESSAGES);
        return -1;
    }
    r->msgs = calloc(n + 1, sizeof *r->msgs);
    if (r->msgs == NULL)
        return oom(r);
    if (ins != NULL) {
        r->msgs[r->n_msgs].role = "system";
        r->msgs[r->n_msgs++].content = ins;
    }
    if (json_is_string(in)) {
        r->msgs[r->n_msgs].role = "user";
        r->msgs[r->n_msgs++].content = json_string_value(in);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(in, i);
        char p[48];
        snprintf(p, sizeof p, "input[%zu]", i);
        const char *type = json_string_value(json_object_get(item, "type"));
        const char *role = json_string_value(json_object_get(item, "role"));
        if (!json_is_object(item) || (type != NULL && strcmp(type, "message") != 0) || role == NULL) {
            reject(r, 400, "unsupported_value", p,
                   "'%s': only message items ({role, content}) are supported", p);
            return -1;
        }
        char cp[64];
        snprintf(cp, sizeof cp, "%s.content", p);
        const char *text;
        if (content_text(r, json_object_get(item, "content"), &text, cp) != 0)
            return -1;
        r->msgs[r->n_msgs].role = engine_role(role);
        r->msgs[r->n_msgs++].content = text;
    }
    return 0;
}

static int parse_completions(struct tg_req *r, json_t *b)
{
    json_t *p = json_object_get(b, "prompt");
    if (json_is_array(p) && json_array_size(p) == 1)
        p = json_array_get(p, 0);
    if (p == NULL || json_is_null(p)) {
        reject(r, 400, "missing_required_parameter", "prompt", "'prompt' is required");
        return -1;
    }
    if (!json_is_string(p)) {
        reject(r, 400, "invalid_type", "prompt", "'prompt' must be a string (or an array of one string)");
        return -1;
    }
    r->prompt = json_string_value(p);
    /* The router (and remote providers) see the prompt as one user message. */
    r->msgs = calloc(1, sizeof *r->msgs);
    if (r->msgs == NULL)
        return oom(r);
    r->msgs[0].role = "user";
    r->msgs[0].content = r->prompt;
    r->n_msgs = 1;
    if (r->max_tokens < 0)
        r->max_tokens = 16; /* the legacy API's documented default */
    return 0;
}

/* Chat's response_format {"type":"json_schema","json_schema":{"schema":...}} (Responses API:
 * text.format {"type":"json_schema","schema":...}) or {"type":"json_object"}: the local engine
 * then generates under the schema's grammar, so the content is always valid JSON for it. A schema
 * outside the engine's subset is not an error: the request is served remote instead. */
static int parse_response_format(struct tg_req *r, json_t *b)
{
    json_t *rf = json_object_get(b, "response_format");
    json_t *schema = NULL;
    const char *param = "response_format";
    if (r->ep == TG_GW_EP_RESPONSES) {
        rf = json_object_get(json_object_get(b, "text"), "format");
        param = "text.format";
    }
    if (rf == NULL || json_is_null(rf))
        return 0;
    const char *type = json_string_value(json_object_get(rf, "type"));
    if (!json_is_object(rf) || type == NULL) {
        reject(r, 400, "invalid_type", param, "'%s' must be an object with a 'type'", param);
        return -1;
    }
    if (strcmp(type, "text") == 0)
        return 0;
    json_t *owned_schema = NULL;
    if (strcmp(type, "json_object") == 0) {
        owned_schema = json_pack("{s:s}", "type", "object");
        schema = owned_schema;
    } else if (strcmp(type, "json_schema") == 0) {
        schema = r->ep == TG_GW_EP_RESPONSES ? json_object_get(rf, "schema")
                                             : json_object_get(json_object_get(rf, "json_schema"), "schema");
        if (!json_is_object(schema)) {
            reject(r, 400, "invalid_value", param, "'%s' of type json_schema needs a schema object", param);
            return -1;
        }
    } else {
        reject(r, 400, "invalid_value", param, "'%s.type' must be text, json_object or json_schema", param);
        return -1;
    }
    char err[256];
    if (tg_schema_compile(schema, &r->schema, err, sizeof err) == TG_OK) {
        r->schema_text = tg_json_dumps(schema);
        r->json_mode = r->schema_text != NULL;
    } else {
        tg_debug("response_format schema not in the engine's subset (%s): remote only", err);
    }
    json_decref(owned_schema);
    return 0;
}

/* ---- routing ----------------------------------------------------------------------------- */

static const struct tg_cfg_model *first_local_model(const struct tg_config *cfg)
{
    for (size_t i = 0; i < cfg->n_models; i++)
        if (cfg->models[i].tier == TG_TIER_LOCAL)
            return &cfg->models[i];
    return NULL;
}

static const struct tg_cfg_model *first_remote_fallback(const struct tg_config *cfg,
                                                        const struct tg_cfg_model *m)
{
    for (size_t i = 0; m != NULL && i < m->n_fallbacks; i++) {
        const struct tg_cfg_model *f = tg_config_model(cfg, m->fallbacks[i]);
        if (f != NULL && f->tier == TG_TIER_REMOTE)
            return f;
    }
    return NULL;
}

static enum tg_route_endpoint route_ep(enum tg_gw_endpoint ep)
{
    switch (ep) {
    case TG_GW_EP_COMPLETIONS: return TG_ROUTE_EP_COMPLETIONS;
    case TG_GW_EP_RESPONSES: return TG_ROUTE_EP_RESPONSES;
    case TG_GW_EP_CLASSIFY: return TG_ROUTE_EP_CLASSIFY;
    case TG_GW_EP_EXTRACT: return TG_ROUTE_EP_EXTRACT;
    case TG_GW_EP_EMBEDDINGS: return TG_ROUTE_EP_EMBEDDINGS;
    default: return TG_ROUTE_EP_CHAT;
    }
}

/* Fill the router's canonical request. route_msgs must hold r->n_msgs entries. */
static void build_route_request(struct tg_req *r, struct tg_route_request *rq,
                                struct tg_route_message *route_msgs, const char *pinned)
{
    *rq = tg_route_request_default();
    rq->endpoint = route_ep(r->ep);
    size_t n = 0;
    for (size_t i = 0; i < r->n_msgs; i++) {
        route_msgs[n].role = r->msgs[i].role;
        route_msgs[n].content = r->msgs[i].content;
        route_msgs[n].content_len = strlen(r->msgs[i].content);
        n++;
    }
    rq->messages = route_msgs;
    rq->n_messages = n;
    rq->n_labels = r->n_labels;
    rq->has_schema = r->schema != NULL;
    rq->max_tokens = r->max_tokens;
    rq->pinned_model = pinned;
    rq->tier_override = r->tier_override;
    rq->key_privacy = r->key != NULL && r->key->privacy;
    rq->engine_wait_ms = tg_local_wait_ms(r->w->gw);
    rq->local_available = r->local_model != NULL && tg_local_available(r->w->gw);
    rq->remote_available = r->remote_model != NULL && tg_remote_available(r);
    rq->remote_circuit_open = tg_remote_circuit_open(r);
    rq->remote_budget_exhausted = tg_glue_budget_exhausted(r);
    /* What one request may use: with kv_split each slot has its own context / slots cells, so a
     * prompt over that goes to the remote tier up front instead of failing on the engine first. */
    rq->local_context_tokens = r->cfg->local.kv_split && r->cfg->local.slots > 0
                                   ? r->cfg->local.context / r->cfg->local.slots
                                   : r->cfg->local.context;
}

static void run_local(struct tg_req *r);

/* A reason code when the request uses something only a remote provider offers, else NULL. */
static const char *local_cannot_serve(const struct tg_req *r)
{
    if (r->ep != TG_GW_EP_CHAT && r->ep != TG_GW_EP_RESPONSES)
        return NULL;
    json_t *tools = json_object_get(r->body, "tools");
    if (json_is_array(tools) && json_array_size(tools) > 0)
        return "feature.tools";
    json_t *rf = json_object_get(r->body, "response_format");
    const char *rft = json_string_value(json_object_get(rf, "type"));
    if (rft != NULL && strcmp(rft, "text") != 0 && !r->json_mode)
        return "feature.response_format";
    json_int_t n = json_integer_value(json_object_get(r->body, "n"));
    if (n > 1)
        return "feature.n";
    json_t *msgs = json_object_get(r->body, "messages");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        json_t *content = json_object_get(m, "content");
        size_t k;
        json_t *part;
        if (json_is_array(content))
            json_array_foreach(content, k, part)
            {
                const char *type = json_string_value(json_object_get(part, "type"));
                if (type != NULL && strcmp(type, "text") != 0)
                    return "feature.non_text";
            }
    }
    return NULL;
}

/* Resolve the model, ask the router, and start the chosen tier. */
static void route_and_run(struct tg_req *r)
{
    const struct tg_config *cfg = r->cfg;
    const char *pinned = NULL;
    bool pinned_local = false;
    const struct tg_cfg_alias *alias = tg_config_alias(cfg, r->model_req);
    if (alias != NULL) {
        r->local_model = alias->local != NULL ? tg_config_model(cfg, alias->local) : NULL;
        r->remote_model = alias->remote != NULL ? tg_config_model(cfg, alias->remote) : NULL;
    } else {
        const struct tg_cfg_model *m = tg_config_model(cfg, r->model_req);
        if (m == NULL) {
            reject(r, 404, "model_not_found", "model",
                   "The model '%.100s' does not exist or you do not have access to it.",
                   r->model_req);
            return;
        }
        if (m->tier == TG_TIER_LOCAL) {
            r->local_model = m;
            r->remote_model = first_remote_fallback(cfg, m);
            pinned_local = true;
        } else {
            r->remote_model = m;
            r->local_model = first_local_model(cfg); /* privacy keys still stay local */
            pinned = m->name;
        }
    }
    if (r->ep == TG_GW_EP_EMBEDDINGS)
        r->remote_model = NULL; /* embeddings are the local engine's */

    struct tg_route_message stack_msgs[16];
    struct tg_route_message *route_msgs = r->n_msgs <= 16 ? stack_msgs : calloc(r->n_msgs, sizeof *route_msgs);
    if (route_msgs == NULL) {
        tg_req_reply_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
        return;
    }
    struct tg_route_request rq;
    build_route_request(r, &rq, route_msgs, pinned);
    const char *fb_names[TG_ROUTE_MAX_FALLBACKS];
    size_t n_fb = 0;
    for (size_t i = 0; r->remote_model != NULL && i < r->remote_model->n_fallbacks && n_fb < TG_ROUTE_MAX_FALLBACKS; i++)
        fb_names[n_fb++] = r->remote_model->fallbacks[i];
    struct tg_route_targets targets = {
        .local = r->local_model != NULL ? r->local_model->name : NULL,
        .remote = r->remote_model != NULL ? r->remote_model->name : NULL,
        .remote_fallbacks = fb_names,
        .n_remote_fallbacks = n_fb,
    };
    int rc = tg_router_decide(r->policy, &rq, &targets, &r->dec);
    if (route_msgs != stack_msgs)
        free(route_msgs);
    if (rc != TG_OK) {
        r->should_retry = 1;
        tg_req_reply_error(r, 503, "no tier is available for this request (the local engine is "
                           "not ready and no remote provider is configured)",
                           "server_error", NULL, "no_tier_available");
        return;
    }
    r->routed = true;
    r->route_reason = r->dec.reason;
    enum tg_route_tier tier = r->dec.tier;
    /* A concrete local model is pinned to the engine unless it is unavailable. */
    if (pinned_local && rq.local_available && tier == TG_ROUTE_REMOTE && r->tier_override != 2) {
        tier = TG_ROUTE_LOCAL;
        r->route_reason = "force_local.pinned_model";
    }
    if (r->dec.fallback) {
        r->fallbacks = 1;
        r->fallback_reason = r->dec.reason;
    }
    /* Tools, several choices, images: the embedded engine cannot serve them; the remote tier
     * can, unless the data must stay local. */
    const char *needs = local_cannot_serve(r);
    if (tier == TG_ROUTE_LOCAL && needs != NULL && r->remote_model != NULL && tg_remote_available(r) &&
        !(r->key != NULL && r->key->privacy) && r->tier_override != 1) {
        tier = TG_ROUTE_REMOTE;
        r->route_reason = needs;
    }
    if (tier == TG_ROUTE_LOCAL && r->local_model != NULL)
        run_local(r);
    else if (r->remote_model != NULL && tg_glue_budget_exhausted(r))
        tg_glue_reject_budget(r); /* spent budget, and the policy did not downgrade it */
    else if (r->remote_model != NULL)
        tg_remote_run(r);
    else
        tg_req_reply_error(r, 503, "the tier chosen for this request is not available",
                           "server_error", NULL, "tier_unavailable");
}

/* Move a request that has not answered yet from the local tier to the remote one. */
static bool try_remote_instead(struct tg_req *r, const char *reason, bool escalation)
{
    if (r->client_gone || r->sse || r->remote_model == NULL || !tg_remote_available(r))
        return false;
    if (r->key != NULL && r->key->privacy)
        return false;
    if (escalation && r->routed && !r->dec.escalation_allowed)
        return false;
    if (r->ep == TG_GW_EP_EMBEDDINGS || tg_glue_budget_exhausted(r))
        return false;
    if (escalation) {
        r->escalated = true;
        r->escalation_reason = reason;
    } else {
        r->fallbacks++;
        r->fallback_reason = reason;
    }
    tg_buf_reset(&r->text);
    r->prompt_tokens = r->completion_tokens = r->cached_tokens = 0;
    tg_remote_run(r);
    return true;
}

static void run_local(struct tg_req *r)
{
    r->tier = "local";
    r->model_served = r->local_model->name;
    r->created = (int64_t)time(NULL);
    char err[512];
    int rc = tg_local_submit(r, err, sizeof err);
    if (rc == TG_OK) {
        tg_req_watch_client(r);
        return;
    }
    tg_pipeline_local_error(r, rc, err);
}

/* ---- local results ----------------------------------------------------------------------- */

static json_t *usage_json(struct tg_req *r)
{
    return json_pack("{s:I,s:I,s:I,s:{s:I}}", "prompt_tokens", (json_int_t)r->prompt_tokens,
                     "completion_tokens", (json_int_t)r->completion_tokens, "total_tokens",
                     (json_int_t)(r->prompt_tokens + r->completion_tokens),
                     "prompt_tokens_details", "cached_tokens", (json_int_t)r->cached_tokens);
}

static json_t *responses_usage_json(struct tg_req *r)
{
    return json_pack("{s:I,s:{s:I},s:I,s:{s:i},s:I}", "input_tokens", (json_int_t)r->prompt_tokens,
                     "input_tokens_details", "cached_tokens", (json_int_t)r->cached_tokens,
                     "output_tokens", (json_int_t)r->completion_tokens, "output_tokens_details",
                     "reasoning_tokens", 0, "total_tokens",
                     (json_int_t)(r->prompt_tokens + r->completion_tokens));
}

static json_t *response_object(struct tg_req *r, const char *status, const char *text)
{
    char msg_id[64];
    snprintf(msg_id, sizeof msg_id, "msg_%s", r->resp_id + 5);
    json_t *output = json_array();
    if (text != NULL)
        json_array_append_new(
            output, json_pack("{s:s,s:s,s:s,s:s,s:[{s:s,s:s,s:[]}]}", "type", "message", "id",
                              msg_id, "status", "completed", "role", "assistant", "content",
                              "type", "output_text", "text", text, "annotations"));
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:n,s:n,s:n,s:s,s:o,s:b,s:n,s:n,s:s,s:[],s:f,s:f,"
                          "s:{s:{s:s}},s:s,s:{}}",
                          "id", r->resp_id, "object", "response", "created_at", (json_int_t)r->created,
                          "status", status, "error", "incomplete_details", "instructions",
                          "model", r->model_served, "output", output, "parallel_tool_calls", 1,
                          "previous_response_id", "reasoning", "tool_choice", "auto", "tools",
                          "temperature", (double)(r->temperature), "top_p",
                          r->top_p > 0 ? (double)r->top_p : 1.0, "text", "format", "type", "text",
                          "truncation", "disabled", "metadata");
    if (o != NULL && text != NULL)
        json_object_set_new(o, "usage", responses_usage_json(r));
    else if (o != NULL)
        json_object_set_new(o, "usage", json_null());
    return o;
}

static void set_ids(struct tg_req *r)
{
    if (r->resp_id[0] != '\0')
        return;
    const char *prefix = r->ep == TG_GW_EP_RESPONSES     ? "resp_"
                         : r->ep == TG_GW_EP_COMPLETIONS ? "cmpl-"
                                                         : "chatcmpl-";
    uint64_t a = next_rand(r->w), b = next_rand(r->w);
    snprintf(r->resp_id, sizeof r->resp_id, "%s%016llx%08llx", prefix, (unsigned long long)a,
             (unsigned long long)(b >> 32));
    if (r->created == 0)
        r->created = (int64_t)time(NULL);
}

/* One streamed piece of text, in the endpoint's SSE shape. Shared by both tiers. */
void tg_pipeline_emit_delta(struct tg_req *r, const char *text, size_t len)
{
    set_ids(r);
    bool first = !r->sse;
    tg_req_sse_begin(r);
    json_t *t = json_stringn_nocheck(text, len);
    if (r->ep == TG_GW_EP_CHAT) {
        if (first)
            tg_req_sse_data_json(
                r, NULL,
                json_pack("{s:s,s:s,s:I,s:s,s:n,s:[{s:i,s:{s:s,s:s},s:n,s:n}]}", "id", r->resp_id,
                          "object", "chat.completion.chunk", "created", (json_int_t)r->created,
                          "model", r->model_served, "system_fingerprint", "choices", "index", 0,
                          "delta", "role", "assistant", "content", "", "logprobs", "finish_reason"));
        tg_req_sse_data_json(r, NULL,
                             json_pack("{s:s,s:s,s:I,s:s,s:n,s:[{s:i,s:{s:o},s:n,s:n}]}", "id",
                                       r->resp_id, "object", "chat.completion.chunk", "created",
                                       (json_int_t)r->created, "model", r->model_served,
                                       "system_fingerprint", "choices", "index", 0, "delta",
                                       "content", t, "logprobs", "finish_reason"));
    } else if (r->ep == TG_GW_EP_COMPLETIONS) {
        tg_req_sse_data_json(r, NULL,
                             json_pack("{s:s,s:s,s:I,s:s,s:[{s:o,s:i,s:n,s:n}]}", "id", r->resp_id,
                                       "object", "text_completion", "created",
                                       (json_int_t)r->created, "model", r->model_served, "choices",
                                       "text", t, "index", 0, "logprobs", "finish_reason"));
    } else if (r->ep == TG_GW_EP_RESPONSES) {
        char msg_id[64];
        snprintf(msg_id, sizeof msg_id, "msg_%s", r->resp_id + 5);
        if (first) {
            tg_req_sse_data_json(r, "response.created",
                                 json_pack("{s:s,s:i,s:o}", "type", "response.created",
                                           "sequence_number", r->seq++, "response",
                                           response_object(r, "in_progress", NULL)));
            tg_req_sse_data_json(r, "response.in_progress",
                                 json_pack("{s:s,s:i,s:o}", "type", "response.in_progress",
                                           "sequence_number", r->seq++, "response",
                                           response_object(r, "in_progress", NULL)));
            tg_req_sse_data_json(
                r, "response.output_item.added",
                json_pack("{s:s,s:i,s:i,s:{s:s,s:s,s:s,s:s,s:[]}}", "type",
                          "response.output_item.added", "sequence_number", r->seq++,
                          "output_index", 0, "item", "type", "message", "id", msg_id, "status",
                          "in_progress", "role", "assistant", "content"));
            tg_req_sse_data_json(
                r, "response.content_part.added",
                json_pack("{s:s,s:i,s:s,s:i,s:i,s:{s:s,s:s,s:[]}}", "type",
                          "response.content_part.added", "sequence_number", r->seq++, "item_id",
                          msg_id, "output_index", 0, "content_index", 0, "part", "type",
                          "output_text", "text", "", "annotations"));
        }
        if (len > 0)
            tg_req_sse_data_json(r, "response.output_text.delta",
                                 json_pack("{s:s,s:i,s:s,s:i,s:i,s:o,s:[]}", "type",
                                           "response.output_text.delta", "sequence_number",
                                           r->seq++, "item_id", msg_id, "output_index", 0,
                                           "content_index", 0, "delta", t, "logprobs"));
        else
            json_decref(t);
        t = NULL;
    } else {
        json_decref(t);
    }
    (void)t;
}

/* The end of a stream: final chunk, usage (when asked), [DONE]. Shared by both tiers. */
void tg_pipeline_emit_end(struct tg_req *r, const char *finish_reason)
{
    if (!r->sse)
        tg_pipeline_emit_delta(r, "", 0);
    compute_cost(r);
    json_t *tiergate = json_pack("{s:s,s:s,s:s}", "tier", r->tier, "model", r->model_served,
                                 "cost_usd", r->cost_str);
    if (r->ep == TG_GW_EP_CHAT) {
        tg_req_sse_data_json(r, NULL,
                             json_pack("{s:s,s:s,s:I,s:s,s:n,s:[{s:i,s:{},s:n,s:s}]}", "id",
                                       r->resp_id, "object", "chat.completion.chunk", "created",
                                       (json_int_t)r->created, "model", r->model_served,
                                       "system_fingerprint", "choices", "index", 0, "delta",
                                       "logprobs", "finish_reason", finish_reason));
        if (r->include_usage)
            tg_req_sse_data_json(r, NULL,
                                 json_pack("{s:s,s:s,s:I,s:s,s:n,s:[],s:o,s:O}", "id", r->resp_id,
                                           "object", "chat.completion.chunk", "created",
                                           (json_int_t)r->created, "model", r->model_served,
                                           "system_fingerprint", "choices", "usage",
                                           usage_json(r), "tiergate", tiergate));
        tg_req_sse_write(r, "data: [DONE]\n\n", 14);
    } else if (r->ep == TG_GW_EP_COMPLETIONS) {
        json_t *c = json_pack("{s:s,s:s,s:I,s:s,s:[{s:s,s:i,s:n,s:s}]}", "id", r->resp_id,
                              "object", "text_completion", "created", (json_int_t)r->created,
                              "model", r->model_served, "choices", "text", "", "index", 0,
                              "logprobs", "finish_reason", finish_reason);
        if (c != NULL && r->include_usage) {
            json_object_set_new(c, "usage", usage_json(r));
            json_object_set(c, "tiergate", tiergate);
        }
        tg_req_sse_data_json(r, NULL, c);
        tg_req_sse_write(r, "data: [DONE]\n\n", 14);
    } else if (r->ep == TG_GW_EP_RESPONSES) {
        char msg_id[64];
        snprintf(msg_id, sizeof msg_id, "msg_%s", r->resp_id + 5);
        const char *text = r->text.data != NULL ? r->text.data : "";
        tg_req_sse_data_json(r, "response.output_text.done",
                             json_pack("{s:s,s:i,s:s,s:i,s:i,s:s,s:[]}", "type",
                                       "response.output_text.done", "sequence_number", r->seq++,
                                       "item_id", msg_id, "output_index", 0, "content_index", 0,
                                       "text", text, "logprobs"));
        tg_req_sse_data_json(r, "response.content_part.done",
                             json_pack("{s:s,s:i,s:s,s:i,s:i,s:{s:s,s:s,s:[]}}", "type",
                                       "response.content_part.done", "sequence_number", r->seq++,
                                       "item_id", msg_id, "output_index", 0, "content_index", 0,
                                       "part", "type", "output_text", "text", text, "annotations"));
        tg_req_sse_data_json(
            r, "response.output_item.done",
            json_pack("{s:s,s:i,s:i,s:{s:s,s:s,s:s,s:s,s:[{s:s,s:s,s:[]}]}}", "type",
                      "response.output_item.done", "sequence_number", r->seq++, "output_index", 0,
                      "item", "type", "message", "id", msg_id, "status", "completed", "role",
                      "assistant", "content", "type", "output_text", "text", text, "annotations"));
        json_t *resp = response_object(r, "completed", text);
        if (resp != NULL)
            json_object_set(resp, "tiergate", tiergate);
        tg_req_sse_data_json(r, "response.completed",
                             json_pack("{s:s,s:i,s:o}", "type", "response.completed",
                                       "sequence_number", r->seq++, "response", resp));
    }
    json_decref(tiergate);
    tg_req_sse_end(r);
}

/* An error after the stream started: `data: {"error":{...}}`, then the end of the stream. */
void tg_pipeline_emit_error(struct tg_req *r, const char *message, const char *code)
{
    tg_warn("stream failed after it started: %s", message);
    tg_glue_stream_failed(r);
    r->status = 200;
    tg_req_sse_data_json(r, r->ep == TG_GW_EP_RESPONSES ? "error" : NULL,
                         tg_json_error(message, "server_error", NULL, code));
    /* No [DONE] after it: clients treat [DONE] as "the answer is complete", and this one is not
     * (a cut answer must never look finished). The stream just ends. */
    tg_req_sse_end(r);
}

void tg_pipeline_local_token(struct tg_req *r, const char *text, size_t len)
{
    if (r->replied || r->client_gone)
        return;
    tg_buf_append(&r->text, text, len);
    tg_pipeline_emit_delta(r, text, len);
    /* A client that does not read: stop the job rather than buffer without bound. */
    if (tg_req_pending_out(r) > (8u << 20)) {
        tg_warn("client is not reading its stream (%zu bytes queued); cancelling",
                tg_req_pending_out(r));
        tg_local_cancel(r);
    }
}

static void base64_floats(const float *v, int32_t n, struct tg_buf *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = (const unsigned char *)v;
    size_t len = (size_t)n * sizeof(float);
    for (size_t i = 0; i < len; i += 3) {
        unsigned x = (unsigned)p[i] << 16;
        if (i + 1 < len)
            x |= (unsigned)p[i + 1] << 8;
        if (i + 2 < len)
            x |= p[i + 2];
        char q[4] = {tbl[(x >> 18) & 63], tbl[(x >> 12) & 63], i + 1 < len ? tbl[(x >> 6) & 63] : '=',
                     i + 2 < len ? tbl[x & 63] : '='};
        tg_buf_append(out, q, 4);
    }
}

static void embeddings_done(struct tg_req *r, const struct tg_engine_event *ev)
{
    size_t idx = (size_t)ev->job_id;
    r->prompt_tokens += ev->usage.prompt_tokens;
    json_t *vec;
    if (r->base64) {
        struct tg_buf b;
        tg_buf_init(&b, 0);
        base64_floats(ev->embedding, ev->n_embd, &b);
        vec = json_stringn_nocheck(b.data != NULL ? b.data : "", b.len);
        tg_buf_free(&b);
    } else {
        vec = json_array();
        for (int32_t i = 0; i < ev->n_embd && vec != NULL; i++)
            json_array_append_new(vec, json_real(ev->embedding[i]));
    }
    json_array_set_new(r->emb_data, idx,
                       json_pack("{s:s,s:I,s:o}", "object", "embedding", "index", (json_int_t)idx,
                                 "embedding", vec));
    if (r->jobs_active > 0 || r->replied)
        return;
    if (r->emb_error != 0) {
        tg_req_reply_error(r, r->emb_error == TG_BUSY ? 429 : 503, "the engine could not embed every input",
                           "server_error", NULL, tg_errname(r->emb_error));
        return;
    }
    json_t *out = json_pack("{s:s,s:O,s:s,s:{s:I,s:I}}", "object", "list", "data", r->emb_data,
                            "model", r->model_served, "usage", "prompt_tokens",
                            (json_int_t)r->prompt_tokens, "total_tokens", (json_int_t)r->prompt_tokens);
    tg_req_reply_json(r, 200, out);
}

/* Answer a finished (non-streamed) generation in the endpoint's shape. Used by both tiers: for
 * classify, label_json is the label (or JSON array of labels); for extract, the JSON document. */
void tg_pipeline_reply_text(struct tg_req *r, const char *text, const char *finish_reason)
{
    set_ids(r);
    json_t *out = NULL;
    json_t *usage = usage_json(r);
    switch (r->ep) {
    case TG_GW_EP_CHAT:
        out = json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s,s:s,s:n},s:n,s:s}],s:o,s:n}", "id",
                        r->resp_id, "object", "chat.completion", "created", (json_int_t)r->created,
                        "model", r->model_served, "choices", "index", 0, "message", "role",
                        "assistant", "content", text, "refusal", "logprobs", "finish_reason",
                        finish_reason, "usage", usage, "system_fingerprint");
        break;
    case TG_GW_EP_COMPLETIONS:
        out = json_pack("{s:s,s:s,s:I,s:s,s:[{s:s,s:i,s:n,s:s}],s:o}", "id", r->resp_id, "object",
                        "text_completion", "created", (json_int_t)r->created, "model",
                        r->model_served, "choices", "text", text, "index", 0, "logprobs",
                        "finish_reason", finish_reason, "usage", usage);
        break;
    case TG_GW_EP_RESPONSES:
        json_decref(usage);
        out = response_object(r, "completed", text);
        break;
    default:
        json_decref(usage);
        break;
    }
    tg_req_reply_json(r, 200, out);
}

/* Task API answers: {label(s), confidence, tier, model, usage, cost_usd} / {data, ...}. */
void tg_pipeline_reply_task(struct tg_req *r, json_t *result, double confidence)
{
    compute_cost(r);
    json_t *out = json_object();
    if (r->ep == TG_GW_EP_CLASSIFY) {
        if (r->multi_label)
            json_object_set_new(out, "labels", result);
        else
            json_object_set_new(out, "label", result);
        json_object_set_new(out, "confidence", confidence >= 0 ? json_real(confidence) : json_null());
    } else {
        json_object_set_new(out, "data", result);
    }
    json_object_set_new(out, "tier", json_string(r->tier));
    json_object_set_new(out, "model", json_string(r->model_served));
    json_object_set_new(out, "usage", usage_json(r));
    json_object_set_new(out, "cost_usd", json_real(r->cost_usd));
    json_object_set_new(out, "id", json_string(r->id));
    if (r->escalated)
        json_object_set_new(out, "escalated", json_true());
    tg_req_reply_json(r, 200, out);
}

void tg_pipeline_local_done(struct tg_req *r, const struct tg_engine_event *ev)
{
    r->jobs_active--;
    if (r->replied || r->client_gone) {
        tg_req_maybe_free(r);
        return;
    }
    if (r->ep == TG_GW_EP_EMBEDDINGS) {
        embeddings_done(r, ev);
        return;
    }
    r->prompt_tokens = ev->usage.prompt_tokens;
    r->completion_tokens = ev->usage.completion_tokens;
    r->cached_tokens = ev->usage.cached_tokens;
    const char *fr = strcmp(ev->finish_reason, "cancelled") == 0 ? "stop" : ev->finish_reason;
    if (r->stream && r->json_mode) {
        /* Schema-constrained output is produced whole (EXTRACT does not stream): one delta. */
        tg_buf_append(&r->text, ev->text, ev->text_len);
        tg_pipeline_emit_delta(r, ev->text, ev->text_len);
    }
    if (r->stream && (r->ep == TG_GW_EP_CHAT || r->ep == TG_GW_EP_COMPLETIONS ||
                      r->ep == TG_GW_EP_RESPONSES)) {
        tg_pipeline_emit_end(r, fr);
        return;
    }
    /* The cascade: a local answer that fails its check is retried on the remote tier. */
    struct tg_route_local_result lr = {
        .endpoint = route_ep(r->ep),
        .text = ev->text,
        .text_len = ev->text_len,
        .schema_valid = -1,
        .confidence = r->ep == TG_GW_EP_CLASSIFY ? ev->confidence : -1,
        .finish_reason = ev->finish_reason,
    };
    if (r->ep == TG_GW_EP_EXTRACT || r->json_mode) {
        char err[256];
        lr.schema_valid = tg_schema_validate_text(r->schema, ev->text, ev->text_len, err, sizeof err) ? 1 : 0;
    }
    struct tg_route_escalation esc;
    if (tg_router_check_local_result(r->policy, r->routed ? &r->dec : NULL, &lr, &esc) == TG_OK &&
        esc.escalate && try_remote_instead(r, esc.reason, true))
        return;
    if (r->ep == TG_GW_EP_CLASSIFY) {
        json_t *res;
        if (r->multi_label) {
            res = json_array();
            for (size_t i = 0; i < ev->n_label_idx; i++)
                if (ev->label_idx[i] >= 0 && (size_t)ev->label_idx[i] < r->n_labels)
                    json_array_append_new(res, json_string(r->labels[ev->label_idx[i]]));
        } else if (ev->n_label_idx > 0 && ev->label_idx[0] >= 0 && (size_t)ev->label_idx[0] < r->n_labels) {
            res = json_string(r->labels[ev->label_idx[0]]);
        } else {
            res = json_stringn_nocheck(ev->text, ev->text_len);
        }
        tg_pipeline_reply_task(r, res, ev->confidence);
        return;
    }
    if (r->ep == TG_GW_EP_EXTRACT) {
        json_error_t jerr;
        json_t *data = json_loadb(ev->text, ev->text_len, JSON_DECODE_ANY, &jerr);
        if (data == NULL || lr.schema_valid != 1) {
            json_decref(data);
            tg_req_reply_error(r, 502, "the local engine produced output that does not match the "
                               "schema, and no remote tier could take over",
                               "server_error", NULL, "schema_invalid");
            return;
        }
        tg_pipeline_reply_task(r, data, -1);
        return;
    }
    tg_pipeline_reply_text(r, ev->text, fr);
}

void tg_pipeline_local_error(struct tg_req *r, int err, const char *message)
{
    /* From an engine event a job was active; from a failed submit none was. */
    bool from_event = r->jobs_active > 0;
    if (from_event)
        r->jobs_active--;
    if (r->replied || r->client_gone) {
        tg_req_maybe_free(r);
        return;
    }
    if (r->ep == TG_GW_EP_EMBEDDINGS && from_event) {
        r->emb_error = err;
        if (r->jobs_active > 0)
            return;
    }
    if (r->sse) {
        tg_pipeline_emit_error(r, message, tg_errname(err));
        return;
    }
    switch (err) {
    case TG_INVAL:
        reject(r, 400, "invalid_request", NULL, "%s", message);
        return;
    case TG_SCHEMA:
        reject(r, 422, "invalid_schema", "schema", "%s", message);
        return;
    case TG_CONTEXT:
        if (try_remote_instead(r, "engine.context_length", false))
            return;
        reject(r, 400, "context_length_exceeded", "messages", "%s", message);
        return;
    case TG_BUSY:
        if (try_remote_instead(r, "engine.busy", false))
            return;
        r->should_retry = 1;
        tg_req_reply_error(r, 429, "the local engine is at capacity; retry shortly",
                           "rate_limit_error", NULL, "engine_busy");
        return;
    default:
        if (try_remote_instead(r, "engine.unavailable", false))
            return;
        r->should_retry = 1;
        tg_req_reply_error(r, 503, message, "server_error", NULL, "engine_unavailable");
        return;
    }
}

/* ---- entry points ------------------------------------------------------------------------ */

static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static void sha256_init(void)
{
    /* OpenSSL 3 looks an algorithm up on every EVP_sha256() use; fetch it once. */
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static bool auth(struct tg_req *r, const char *authorization)
{
    pthread_once(&sha256_once, sha256_init);
    const struct tg_config *cfg = r->cfg;
    if (authorization != NULL && strncasecmp(authorization, "Bearer ", 7) == 0) {
        const char *tok = authorization + 7;
        while (*tok == ' ')
            tok++;
        unsigned char md[32];
        unsigned int mdlen = 0;
        if (EVP_Digest(tok, strlen(tok), md, &mdlen, sha256_md != NULL ? sha256_md : EVP_sha256(),
                       NULL) == 1) {
            r->key = tg_config_key_by_hash(cfg, md);
            if (r->key != NULL)
                return true;
        }
    }
    if (cfg->server.open_mode)
        return true;
    bad_request("invalid_api_key");
    tg_req_reply_error(r, 401,
                       authorization == NULL
                           ? "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
                           : "Incorrect API key provided.",
                       "invalid_request_error", NULL, "invalid_api_key");
    return false;
}

static const struct {
    const char *path;
    enum tg_gw_endpoint ep;
} endpoints[] = {
    {"/v1/chat/completions", TG_GW_EP_CHAT}, {"/v1/completions", TG_GW_EP_COMPLETIONS},
    {"/v1/responses", TG_GW_EP_RESPONSES},   {"/v1/embeddings", TG_GW_EP_EMBEDDINGS},
    {"/v1/classify", TG_GW_EP_CLASSIFY},     {"/v1/extract", TG_GW_EP_EXTRACT},
};

/* Parse the body for r->ep and run the rest of the pipeline. Takes the body reference. */
static void run_body(struct tg_req *r, json_t *body)
{
    r->body = body;
    r->ep_name = ep_name(r->ep);
    json_t *model = json_object_get(body, "model");
    if (model != NULL && !json_is_null(model) && !json_is_string(model)) {
        reject(r, 400, "invalid_type", "model", "'model' must be a string");
        return;
    }
    r->model_req = json_is_string(model) && json_string_length(model) > 0 ? json_string_value(model) : "auto";
    if (r->ep != TG_GW_EP_EMBEDDINGS && r->ep != TG_GW_EP_CLASSIFY && r->ep != TG_GW_EP_EXTRACT &&
        parse_sampling(r, body) != 0)
        return;
    int rc = 0;
    switch (r->ep) {
    case TG_GW_EP_CHAT: rc = parse_messages(r, json_object_get(body, "messages"), "messages"); break;
    case TG_GW_EP_COMPLETIONS: rc = parse_completions(r, body); break;
    case TG_GW_EP_RESPONSES: rc = parse_responses(r, body); break;
    case TG_GW_EP_EMBEDDINGS: rc = parse_embeddings(r, body); break;
    case TG_GW_EP_CLASSIFY: rc = parse_classify(r, body); break;
    case TG_GW_EP_EXTRACT: rc = parse_extract(r, body); break;
    }
    if (rc != 0)
        return; /* answered; r may be gone */
    if ((r->ep == TG_GW_EP_CHAT || r->ep == TG_GW_EP_RESPONSES) && parse_response_format(r, body) != 0)
        return;
    /* Task endpoints decide, they do not chat: deterministic unless asked otherwise. */
    if (r->stream && r->exec_cb != NULL)
        r->stream = false;
    /* limits and budgets, then the cache lookup (Redis); they call route_and_run on a miss */
    tg_glue_before_route(r, route_and_run);
}

static json_t *models_list(struct tg_req *r)
{
    json_t *data = json_array();
    const struct tg_config *cfg = r->cfg;
    for (size_t i = 0; i < cfg->n_aliases; i++)
        json_array_append_new(data, json_pack("{s:s,s:s,s:i,s:s}", "id", cfg->aliases[i].name,
                                              "object", "model", "created", 0, "owned_by", "tiergate"));
    for (size_t i = 0; i < cfg->n_models; i++) {
        const struct tg_cfg_model *m = &cfg->models[i];
        json_array_append_new(data, json_pack("{s:s,s:s,s:i,s:s}", "id", m->name, "object",
                                              "model", "created", 0, "owned_by",
                                              m->tier == TG_TIER_LOCAL ? "tiergate-local"
                                                                       : m->provider));
    }
    return data;
}

static void handle_models(struct tg_req *r, const char *path)
{
    r->ep_name = "models";
    json_t *data = models_list(r);
    if (strcmp(path, "/v1/models") == 0) {
        tg_req_reply_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", data));
        return;
    }
    const char *id = path + strlen("/v1/models/");
    char *dec = evhttp_uridecode(id, 0, NULL);
    size_t i;
    json_t *m;
    json_array_foreach(data, i, m)
    {
        if (dec != NULL && strcmp(json_string_value(json_object_get(m, "id")), dec) == 0) {
            json_incref(m);
            json_decref(data);
            free(dec);
            tg_req_reply_json(r, 200, m);
            return;
        }
    }
    json_decref(data);
    reject(r, 404, "model_not_found", "model",
           "The model '%.100s' does not exist or you do not have access to it.", dec != NULL ? dec : id);
    free(dec);
}

static void handle_explain(struct tg_req *r, json_t *body)
{
    r->body = body;
    r->ep_name = "explain";
    const char *kind = json_string_value(json_object_get(body, "endpoint"));
    r->ep = TG_GW_EP_CHAT;
    if (json_object_get(body, "labels") != NULL)
        r->ep = TG_GW_EP_CLASSIFY;
    else if (json_object_get(body, "schema") != NULL)
        r->ep = TG_GW_EP_EXTRACT;
    if (kind != NULL)
        for (size_t i = 0; i < sizeof endpoints / sizeof endpoints[0]; i++)
            if (strcmp(endpoints[i].path + 4, kind) == 0 || strcmp(endpoints[i].path, kind) == 0)
                r->ep = endpoints[i].ep;
    int rc;
    const char *m = json_string_value(json_object_get(body, "model"));
    r->model_req = m != NULL ? m : "auto";
    if (json_object_get(body, "messages") != NULL || json_object_get(body, "text") != NULL)
        rc = parse_text_or_messages(r, body);
    else if (json_object_get(body, "input") != NULL)
        rc = parse_responses(r, body);
    else if (json_object_get(body, "prompt") != NULL)
        rc = parse_completions(r, body);
    else {
        reject(r, 400, "missing_required_parameter", "messages",
               "one of 'messages', 'text', 'input' or 'prompt' is required");
        return;
    }
    if (rc != 0)
        return;
    if (r->ep == TG_GW_EP_CLASSIFY)
        r->n_labels = json_array_size(json_object_get(body, "labels"));
    int64_t mt;
    if (tg_json_get_int(body, "max_tokens", &mt, NULL, 0) == TG_OK)
        r->max_tokens = mt;
    const struct tg_config *cfg = r->cfg;
    const struct tg_cfg_alias *alias = tg_config_alias(cfg, r->model_req);
    const struct tg_cfg_model *model = alias == NULL ? tg_config_model(cfg, r->model_req) : NULL;
    if (alias == NULL && model == NULL) {
        reject(r, 404, "model_not_found", "model", "The model '%.100s' does not exist.", r->model_req);
        return;
    }
    const char *pinned = NULL;
    if (alias != NULL) {
        r->local_model = alias->local != NULL ? tg_config_model(cfg, alias->local) : NULL;
        r->remote_model = alias->remote != NULL ? tg_config_model(cfg, alias->remote) : NULL;
    } else if (model->tier == TG_TIER_LOCAL) {
        r->local_model = model;
        r->remote_model = first_remote_fallback(cfg, model);
    } else {
        r->remote_model = model;
        r->local_model = first_local_model(cfg);
        pinned = model->name;
    }
    struct tg_route_message *msgs = calloc(r->n_msgs + 1, sizeof *msgs);
    if (msgs == NULL) {
        tg_req_reply_error(r, 500, "out of memory", "server_error", NULL, "internal_error");
        return;
    }
    struct tg_route_request rq;
    build_route_request(r, &rq, msgs, pinned);
    const char *fb[TG_ROUTE_MAX_FALLBACKS];
    size_t nfb = 0;
    for (size_t i = 0; r->remote_model != NULL && i < r->remote_model->n_fallbacks && nfb < TG_ROUTE_MAX_FALLBACKS; i++)
        fb[nfb++] = r->remote_model->fallbacks[i];
    struct tg_route_targets t = {
        .local = r->local_model != NULL ? r->local_model->name : NULL,
        .remote = r->remote_model != NULL ? r->remote_model->name : NULL,
        .remote_fallbacks = fb,
        .n_remote_fallbacks = nfb,
    };
    json_t *ex = tg_router_explain(r->policy, &rq, &t);
    free(msgs);
    if (ex == NULL) {
        tg_req_reply_error(r, 500, "the router could not explain this request", "server_error",
                           NULL, "internal_error");
        return;
    }
    tg_req_reply_json(r, 200, ex);
}

static const char *header(struct evhttp_request *http, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(http), name);
}

void tg_pipeline_http(struct tg_worker *w, struct evhttp_request *http, const char *path)
{
    struct tg_req *r = req_new(w);
    if (r == NULL) {
        evhttp_send_error(http, 503, "Out of memory");
        return;
    }
    r->http = http;
    const char *rid = header(http, "X-Request-Id");
    if (rid != NULL && id_ok(rid)) {
        snprintf(r->id, sizeof r->id, "%s", rid);
    } else {
        /* "req_" + 16 hex digits, without the printf machinery on the hot path */
        static const char hex[] = "0123456789abcdef";
        uint64_t a = next_rand(w);
        memcpy(r->id, "req_", 4);
        for (int i = 0; i < 16; i++)
            r->id[4 + i] = hex[(a >> (60 - 4 * i)) & 15];
        r->id[20] = '\0';
    }
    tg_log_set_request_id(r->id);
    enum evhttp_cmd_type method = evhttp_request_get_command(http);

    if (atomic_load(&w->gw->draining)) {
        r->should_retry = 1;
        tg_req_reply_error(r, 503, "the gateway is shutting down", "server_error", NULL, "draining");
        goto out;
    }
    if (!auth(r, header(http, "Authorization")))
        goto out;

    if (strcmp(path, "/v1/jobs") == 0 || strncmp(path, "/v1/jobs/", 9) == 0) {
        tg_glue_jobs_http(r, path);
        goto out;
    }
    if (strcmp(path, "/v1/models") == 0 || strncmp(path, "/v1/models/", 11) == 0) {
        if (method != EVHTTP_REQ_GET)
            reject(r, 405, "method_not_allowed", NULL, "use GET for %s", path);
        else
            handle_models(r, path);
        goto out;
    }
    int ep = -1;
    for (size_t i = 0; i < sizeof endpoints / sizeof endpoints[0]; i++)
        if (strcmp(path, endpoints[i].path) == 0)
            ep = (int)i;
    bool explain = strcmp(path, "/v1/route/explain") == 0;
    if (ep < 0 && !explain) {
        reject(r, 404, "unknown_url", NULL, "Unknown request URL: %s %.200s",
               method == EVHTTP_REQ_GET ? "GET" : "POST", path);
        goto out;
    }
    if (method != EVHTTP_REQ_POST) {
        reject(r, 405, "method_not_allowed", NULL, "use POST for %s", path);
        goto out;
    }
    if (ep >= 0) {
        r->ep = endpoints[ep].ep;
        r->ep_name = ep_name(r->ep);
    } else {
        r->ep_name = "explain";
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(http);
    size_t len = evbuffer_get_length(in);
    if (len > r->cfg->server.max_body_bytes) {
        reject(r, 413, "request_too_large", NULL,
               "the request body is %zu bytes; the limit is %zu bytes", len,
               r->cfg->server.max_body_bytes);
        goto out;
    }
    if (len == 0) {
        reject(r, 400, "invalid_json", NULL, "the request body is empty; send a JSON object");
        goto out;
    }
    const char *data = (const char *)evbuffer_pullup(in, (ev_ssize_t)len);
    json_error_t jerr;
    json_t *body = json_loadb(data, len, 0, &jerr); /* duplicate keys: the last wins, as in OpenAI's API */
    if (body == NULL || !json_is_object(body)) {
        if (body == NULL)
            reject(r, 400, "invalid_json", NULL,
                   "We could not parse the JSON body of your request: %s (line %d, column %d)",
                   jerr.text, jerr.line, jerr.column);
        else
            reject(r, 400, "invalid_json", NULL, "the request body must be a JSON object");
        json_decref(body);
        goto out;
    }
    const char *tier = header(http, "X-Tiergate-Tier");
    if (tier != NULL) {
        if (strcasecmp(tier, "local") == 0) {
            r->tier_override = 1;
        } else if (strcasecmp(tier, "remote") == 0) {
            r->tier_override = 2;
        } else {
            json_decref(body);
            reject(r, 400, "invalid_value", NULL, "X-Tiergate-Tier must be 'local' or 'remote'");
            goto out;
        }
    }
    if (explain)
        handle_explain(r, body);
    else
        run_body(r, body);
out:
    tg_log_set_request_id(NULL);
}

int tg_pipeline_execute(void *ctx, const char *endpoint_path, const char *body, size_t len,
                        const char *key_name, tg_gw_result_cb cb, void *user)
{
    struct tg_worker *w = ctx;
    if (w == NULL || endpoint_path == NULL || body == NULL || cb == NULL)
        return TG_INVAL;
    int ep = -1;
    for (size_t i = 0; i < sizeof endpoints / sizeof endpoints[0]; i++)
        if (strcmp(endpoint_path, endpoints[i].path) == 0)
            ep = (int)i;
    if (ep < 0)
        return TG_NOTFOUND;
    struct tg_req *r = req_new(w);
    if (r == NULL)
        return TG_NOMEM;
    r->exec_cb = cb;
    r->exec_user = user;
    r->ep = endpoints[ep].ep;
    snprintf(r->id, sizeof r->id, "job_%016llx", (unsigned long long)next_rand(w));
    if (key_name != NULL) {
        for (size_t i = 0; i < r->cfg->server.n_keys; i++)
            if (strcmp(r->cfg->server.keys[i].name, key_name) == 0)
                r->key = &r->cfg->server.keys[i];
    }
    tg_log_set_request_id(r->id);
    json_error_t jerr;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (j == NULL || !json_is_object(j)) {
        json_decref(j);
        reject(r, 400, "invalid_json", NULL, "the job body is not a JSON object");
    } else {
        run_body(r, j);
    }
    tg_log_set_request_id(NULL);
    return TG_OK;
}
