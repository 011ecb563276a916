/* OpenAI-compatible adapter: the request passes through (unknown fields kept), only `model` is
 * rewritten and streaming asks for usage; responses and chunks go back as the provider sent
 * them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg/json.h"
#include "tg/log.h"
#include "upstream_int.h"

int up_openai_build(const json_t *rq, const struct tg_cfg_model *m, bool stream, struct tg_buf *out,
                    bool *client_usage)
{
    /* A shallow copy: only top-level keys change, nested values are shared with rq. */
    json_t *o = json_copy((json_t *)rq);
    if (o == NULL)
        return TG_NOMEM;
    int rc = TG_NOMEM;
    const char *up = m->upstream_model != NULL ? m->upstream_model : m->name;
    if (json_object_set_new(o, "model", json_string(up)) != 0)
        goto out;
    *client_usage = false;
    if (stream) {
        if (json_object_set_new(o, "stream", json_true()) != 0)
            goto out;
        const json_t *so = json_object_get(rq, "stream_options");
        *client_usage = json_is_true(json_object_get(so, "include_usage"));
        json_t *nso = json_is_object(so) ? json_copy((json_t *)so) : json_object();
        if (nso == NULL || json_object_set_new(nso, "include_usage", json_true()) != 0 ||
            json_object_set_new(o, "stream_options", nso) != 0)
            goto out;
    } else if (json_is_true(json_object_get(rq, "stream"))) {
        if (json_object_set_new(o, "stream", json_false()) != 0)
            goto out;
    }
    char *s = json_dumps(o, JSON_COMPACT);
    if (s == NULL)
        goto out;
    rc = tg_buf_append(out, s, strlen(s));
    free(s);
out:
    json_decref(o);
    return rc;
}

/* ---- raw passthrough: splice the client's bytes instead of re-serialising ----
 * Re-serialising costs ~5 ns per byte (string escaping): 160 µs for a 32 KB prompt. When the
 * caller hands over the exact body, only the top-level "model" value is replaced (and, for a
 * stream without stream_options, one member is added before the closing brace). Anything
 * unusual (escaped or repeated keys, stream flags to change) falls back to the JSON path. */

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p at '"': past the closing quote, or NULL. *escaped: the string had a backslash. */
static const char *skip_string(const char *p, const char *end, bool *escaped)
{
    *escaped = false;
    for (p++; p < end; p++) {
        if (*p == '\\') {
            *escaped = true;
            p++;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

/* Past one JSON value (validated by the caller's parse already), or NULL. */
static const char *skip_value(const char *p, const char *end)
{
    bool esc;
    if (p >= end)
        return NULL;
    if (*p == '"')
        return skip_string(p, end, &esc);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (p < end) {
            if (*p == '"') {
                p = skip_string(p, end, &esc);
                if (p == NULL)
                    return NULL;
                continue;
            }
            if (*p == '{' || *p == '[')
                depth++;
            else if (*p == '}' || *p == ']') {
                if (--depth == 0)
                    return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' &&
           *p != '\r' && *p != '\t')
        p++;
    return p;
}

int up_openai_build_raw(const json_t *rq, const char *raw, size_t raw_len,
                        const struct tg_cfg_model *m, bool stream, struct tg_buf *out,
                        bool *client_usage)
{
    const json_t *so = json_object_get(rq, "stream_options");
    bool rq_stream = json_is_true(json_object_get(rq, "stream"));
    *client_usage = json_is_true(json_object_get(so, "include_usage"));
    if (stream != rq_stream || (stream && so != NULL && !*client_usage))
        return TG_UNSUPPORTED;
    const char *p = raw, *end = raw + raw_len;
    p = skip_ws(p, end);
    if (p >= end || *p != '{')
        return TG_UNSUPPORTED;
    p++;
    const char *mv = NULL, *mv_end = NULL;
    for (;;) {
        p = skip_ws(p, end);
        if (p < end && *p == '}')
            break;
        if (p >= end || *p != '"')
            return TG_UNSUPPORTED;
        bool esc;
        const char *k = p + 1;
        p = skip_string(p, end, &esc);
        if (p == NULL || esc)
            return TG_UNSUPPORTED; /* an escaped key could spell "model" */
        bool is_model = p - k - 1 == 5 && memcmp(k, "model", 5) == 0;
        p = skip_ws(p, end);
        if (p >= end || *p != ':')
            return TG_UNSUPPORTED;
        p = skip_ws(p + 1, end);
        const char *v = p;
        p = skip_value(p, end);
        if (p == NULL)
            return TG_UNSUPPORTED;
        if (is_model) {
            if (mv != NULL)
                return TG_UNSUPPORTED; /* repeated key */
            mv = v;
            mv_end = p;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p < end && *p == '}')
            break;
        return TG_UNSUPPORTED;
    }
    const char *close = p; /* the object's closing brace */
    if (mv == NULL || skip_ws(close + 1, end) != end)
        return TG_UNSUPPORTED;
    const char *up = m->upstream_model != NULL ? m->upstream_model : m->name;
    json_t *js = json_string(up);
    char *model = js != NULL ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
    json_decref(js);
    if (model == NULL)
        return TG_NOMEM;
    int rc = tg_buf_append(out, raw, (size_t)(mv - raw));
    if (rc == TG_OK)
        rc = tg_buf_append_str(out, model);
    if (rc == TG_OK && stream && so == NULL) {
        rc = tg_buf_append(out, mv_end, (size_t)(close - mv_end));
        if (rc == TG_OK)
            rc = tg_buf_append_str(out, ",\"stream_options\":{\"include_usage\":true}");
        if (rc == TG_OK)
            rc = tg_buf_append(out, close, (size_t)(end - close));
    } else if (rc == TG_OK) {
        rc = tg_buf_append(out, mv_end, (size_t)(end - mv_end));
    }
    free(model);
    return rc;
}

static void usage_from(const json_t *u, struct tg_upstream_usage *out)
{
    if (!json_is_object(u))
        return;
    const json_t *p = json_object_get(u, "prompt_tokens");
    const json_t *c = json_object_get(u, "completion_tokens");
    if (json_is_integer(p))
        out->prompt_tokens = json_integer_value(p);
    if (json_is_integer(c))
        out->completion_tokens = json_integer_value(c);
    const json_t *ct =
        json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens");
    if (json_is_integer(ct))
        out->cached_tokens = json_integer_value(ct);
}

int up_openai_response(const char *body, size_t len, json_t **out, struct tg_upstream_usage *u,
                       char *finish, size_t finish_len)
{
    json_t *v = json_loadb(body, len, 0, NULL);
    if (!json_is_object(v) || !json_is_array(json_object_get(v, "choices"))) {
        json_decref(v);
        return TG_PARSE;
    }
    usage_from(json_object_get(v, "usage"), u);
    const char *f = json_string_value(
        json_object_get(json_array_get(json_object_get(v, "choices"), 0), "finish_reason"));
    if (f != NULL)
        snprintf(finish, finish_len, "%s", f);
    *out = v;
    return TG_OK;
}

int up_openai_event(struct up_stream *st, const char *data, size_t len, up_emit_fn emit, void *ctx)
{
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        st->done = true;
        return 0;
    }
    json_t *v = json_loadb(data, len, 0, NULL);
    if (!json_is_object(v)) {
        json_decref(v);
        return TG_PARSE;
    }
    int rc = 0;
    const json_t *err = json_object_get(v, "error");
    if (err != NULL) {
        /* A provider error inside the stream ends it; the caller reports it (started). */
        json_decref(st->error);
        st->error = json_is_object(err)
                        ? json_pack("{s:o}", "error", json_deep_copy(err))
                        : tg_json_error("upstream stream error", "server_error", NULL, NULL);
        up_redact_json(st->error);
        st->done = true;
        goto out;
    }
    const json_t *choices = json_object_get(v, "choices");
    const json_t *usage = json_object_get(v, "usage");
    usage_from(usage, &st->usage);
    const json_t *c0 = json_array_get(choices, 0);
    const char *f = json_string_value(json_object_get(c0, "finish_reason"));
    if (f != NULL)
        snprintf(st->finish, sizeof st->finish, "%s", f);
    if (json_array_size(choices) == 0 && json_is_object(usage)) {
        /* The usage chunk we asked for: the client sees it only if it asked too. */
        if (st->client_usage)
            rc = emit(ctx, v, data, len);
        goto out;
    }
    if (!st->client_usage && json_is_null(usage)) {
        /* include_usage makes providers add "usage": null everywhere; hide what we added. */
        json_object_del(v, "usage");
        char *s = json_dumps(v, JSON_COMPACT);
        if (s == NULL) {
            rc = TG_NOMEM;
            goto out;
        }
        rc = emit(ctx, v, s, strlen(s));
        free(s);
        goto out;
    }
    rc = emit(ctx, v, data, len);
out:
    json_decref(v);
    return rc;
}

static void redact_depth(json_t *v, int depth)
{
    if (depth > 8)
        return;
    if (json_is_string(v)) {
        char *copy = strdup(json_string_value(v));
        /* masking replaces whole ASCII-delimited runs, so the text stays UTF-8; if the set
         * still failed, the whole string goes rather than the secret staying */
        if (copy != NULL && tg_log_redact(copy) && json_string_set(v, copy) != 0)
            json_string_set(v, "****");
        free(copy);
    } else if (json_is_object(v)) {
        const char *k;
        json_t *x;
        json_object_foreach(v, k, x)
        {
            redact_depth(x, depth + 1);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            redact_depth(x, depth + 1);
        }
    }
}

void up_redact_json(json_t *v)
{
    redact_depth(v, 0);
}

/* Provider error bodies: OpenAI {"error":{...}}, Anthropic {"type":"error","error":{type,message}}.
 */
json_t *up_error_from_body(enum tg_provider_kind kind, int status, const char *body, size_t len,
                           bool include_message)
{
    json_t *v = body != NULL && len > 0 ? json_loadb(body, len, 0, NULL) : NULL;
    const json_t *e = json_object_get(v, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *etype = json_string_value(json_object_get(e, "type"));
    const char *type = status == 429                    ? "rate_limit_error"
                       : status == 401 || status == 403 ? "authentication_error"
                       : status >= 500                  ? "server_error"
                                                        : "invalid_request_error";
    if (etype != NULL && kind == TG_PROVIDER_OPENAI)
        type = etype;
    char text[512];
    if (include_message && msg != NULL)
        snprintf(text, sizeof text, "upstream error (HTTP %d): %.400s", status, msg);
    else
        snprintf(text, sizeof text, "upstream error (HTTP %d)", status);
    const char *param =
        kind == TG_PROVIDER_OPENAI ? json_string_value(json_object_get(e, "param")) : NULL;
    const char *code =
        kind == TG_PROVIDER_OPENAI ? json_string_value(json_object_get(e, "code")) : NULL;
    json_t *out = tg_json_error(text, type, param, code);
    up_redact_json(out);
    json_decref(v);
    return out;
}
