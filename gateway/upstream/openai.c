/* OpenAI-compatible adapter: the request passes through (unknown fields kept), only `model` is
 * rewritten and streaming asks for usage; responses and chunks go back as the provider sent
 * them. */
#include <stdio.h>
#include <string.h>

#include "tg/json.h"
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
    const json_t *ct = json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens");
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
    const char *f = json_string_value(json_object_get(json_array_get(json_object_get(v, "choices"), 0),
                                                      "finish_reason"));
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
        st->error = json_is_object(err) ? json_pack("{s:O}", "error", err)
                                        : tg_json_error("upstream stream error", "server_error", NULL, NULL);
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

/* Provider error bodies: OpenAI {"error":{...}}, Anthropic {"type":"error","error":{type,message}}. */
json_t *up_error_from_body(enum tg_provider_kind kind, int status, const char *body, size_t len,
                           bool include_message)
{
    json_t *v = body != NULL && len > 0 ? json_loadb(body, len, 0, NULL) : NULL;
    const json_t *e = json_object_get(v, "error");
    const char *msg = json_string_value(json_object_get(e, "message"));
    const char *etype = json_string_value(json_object_get(e, "type"));
    const char *type = status == 429 ? "rate_limit_error"
                       : status == 401 || status == 403 ? "authentication_error"
                       : status >= 500 ? "server_error" : "invalid_request_error";
    if (etype != NULL && kind == TG_PROVIDER_OPENAI)
        type = etype;
    char text[512];
    if (include_message && msg != NULL)
        snprintf(text, sizeof text, "upstream error (HTTP %d): %.400s", status, msg);
    else
        snprintf(text, sizeof text, "upstream error (HTTP %d)", status);
    const char *param = kind == TG_PROVIDER_OPENAI ? json_string_value(json_object_get(e, "param")) : NULL;
    const char *code = kind == TG_PROVIDER_OPENAI ? json_string_value(json_object_get(e, "code")) : NULL;
    json_t *out = tg_json_error(text, type, param, code);
    json_decref(v);
    return out;
}
