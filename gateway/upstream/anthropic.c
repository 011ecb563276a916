/* Anthropic Messages adapter: OpenAI chat requests become Messages requests, and Messages
 * responses and stream events become OpenAI chat.completion / chat.completion.chunk shapes.
 *
 * Request mapping
 *   system / developer messages -> `system` (joined with blank lines)
 *   user / assistant text or parts -> content blocks (text, image_url -> image)
 *   assistant tool_calls -> tool_use blocks; role "tool" -> a user tool_result block
 *   max_completion_tokens | max_tokens -> max_tokens (default 4096: Anthropic requires it)
 *   temperature (clamped to Anthropic's 0..1), top_p, stop -> stop_sequences, user -> metadata
 *   tools / tool_choice -> Anthropic tools / tool_choice
 *   response_format json_schema -> one forced tool whose input_schema is the schema; its input
 *   comes back as the message content (a JSON string), as OpenAI structured output would.
 * Response mapping
 *   stop_reason end_turn|stop_sequence -> stop, max_tokens -> length, tool_use -> tool_calls
 *   usage input_tokens (+ cache read/creation) -> prompt_tokens, output_tokens -> completion_tokens
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "tg/json.h"
#include "upstream_int.h"

#define DEFAULT_MAX_TOKENS 4096
#define JSON_TOOL          "json_output"

static int set(json_t *o, const char *k, json_t *v)
{
    return v == NULL || json_object_set_new(o, k, v) != 0 ? TG_NOMEM : TG_OK;
}

/* OpenAI content (string or parts) -> Anthropic content blocks (new array). */
static json_t *content_blocks(const json_t *c, char *err, size_t errlen)
{
    json_t *out = json_array();
    if (json_is_string(c)) {
        json_array_append_new(out, json_pack("{s:s,s:O}", "type", "text", "text", c));
        return out;
    }
    if (json_is_null(c) || c == NULL)
        return out;
    if (!json_is_array(c)) {
        snprintf(err, errlen, "message content must be a string or an array of parts");
        json_decref(out);
        return NULL;
    }
    size_t i;
    const json_t *part;
    json_array_foreach(c, i, part)
    {
        const char *t = json_string_value(json_object_get(part, "type"));
        if (t != NULL && strcmp(t, "text") == 0) {
            const json_t *text = json_object_get(part, "text");
            if (json_is_string(text))
                json_array_append_new(out, json_pack("{s:s,s:O}", "type", "text", "text", text));
        } else if (t != NULL && strcmp(t, "image_url") == 0) {
            const char *url =
                json_string_value(json_object_get(json_object_get(part, "image_url"), "url"));
            if (url == NULL)
                continue;
            const char *comma = strchr(url, ',');
            if (strncmp(url, "data:", 5) == 0 && comma != NULL && strstr(url, ";base64,") != NULL) {
                const char *semi = strchr(url, ';');
                json_t *mt = json_stringn(url + 5, (size_t)(semi - url - 5));
                json_array_append_new(out, json_pack("{s:s,s:{s:s,s:o,s:s}}", "type", "image",
                                                     "source", "type", "base64", "media_type", mt,
                                                     "data", comma + 1));
            } else {
                json_array_append_new(out, json_pack("{s:s,s:{s:s,s:s}}", "type", "image", "source",
                                                     "type", "url", "url", url));
            }
        } else {
            snprintf(err, errlen, "content part type '%s' is not supported by Anthropic targets",
                     t != NULL ? t : "?");
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

static void append_text(struct tg_buf *b, const json_t *c)
{
    if (json_is_string(c)) {
        if (b->len > 0)
            tg_buf_append_str(b, "\n\n");
        tg_buf_append_str(b, json_string_value(c));
        return;
    }
    size_t i;
    const json_t *part;
    json_array_foreach(c, i, part)
    {
        const char *t = json_string_value(json_object_get(part, "text"));
        if (t == NULL)
            continue;
        if (b->len > 0)
            tg_buf_append_str(b, "\n\n");
        tg_buf_append_str(b, t);
    }
}

/* Append blocks to the last message if it has the same role (tool results follow each other as
 * one user turn), else start a new message. */
static void push(json_t *msgs, const char *role, json_t *blocks)
{
    json_t *last = json_array_get(msgs, json_array_size(msgs) - 1);
    const char *lr = json_string_value(json_object_get(last, "role"));
    if (last != NULL && lr != NULL && strcmp(lr, role) == 0) {
        json_array_extend(json_object_get(last, "content"), blocks);
        json_decref(blocks);
        return;
    }
    json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", role, "content", blocks));
}

static json_t *translate_messages(const json_t *in, struct tg_buf *system, char *err, size_t errlen)
{
    json_t *msgs = json_array();
    size_t i;
    const json_t *m;
    json_array_foreach(in, i, m)
    {
        const char *role = json_string_value(json_object_get(m, "role"));
        const json_t *c = json_object_get(m, "content");
        if (role == NULL) {
            snprintf(err, errlen, "messages[%zu].role must be a string", i);
            goto fail;
        }
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            append_text(system, c);
            continue;
        }
        if (strcmp(role, "tool") == 0) {
            const char *id = json_string_value(json_object_get(m, "tool_call_id"));
            json_t *blocks = content_blocks(c, err, errlen);
            if (blocks == NULL)
                goto fail;
            json_t *tr = json_pack("{s:s,s:s,s:o}", "type", "tool_result", "tool_use_id",
                                   id != NULL ? id : "", "content", blocks);
            push(msgs, "user", json_pack("[o]", tr));
            continue;
        }
        if (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0) {
            snprintf(err, errlen, "messages[%zu].role '%s' is not supported", i, role);
            goto fail;
        }
        json_t *blocks = content_blocks(c, err, errlen);
        if (blocks == NULL)
            goto fail;
        size_t k;
        const json_t *tc;
        json_array_foreach(json_object_get(m, "tool_calls"), k, tc)
        {
            const json_t *fn = json_object_get(tc, "function");
            const char *args = json_string_value(json_object_get(fn, "arguments"));
            json_t *input = args != NULL ? json_loads(args, 0, NULL) : NULL;
            if (!json_is_object(input)) {
                json_decref(input);
                input = json_object();
            }
            const char *id = json_string_value(json_object_get(tc, "id"));
            const char *name = json_string_value(json_object_get(fn, "name"));
            json_array_append_new(blocks, json_pack("{s:s,s:s,s:s,s:o}", "type", "tool_use", "id",
                                                    id != NULL ? id : "", "name",
                                                    name != NULL ? name : "", "input", input));
        }
        if (json_array_size(blocks) == 0) {
            json_decref(blocks);
            continue; /* Anthropic rejects empty content */
        }
        push(msgs, role, blocks);
    }
    return msgs;
fail:
    json_decref(msgs);
    return NULL;
}

int up_anthropic_build(const json_t *rq, const struct tg_cfg_model *m, bool stream,
                       struct tg_buf *out, bool *client_usage, bool *forced_json, char *err,
                       size_t errlen)
{
    *forced_json = false;
    *client_usage =
        json_is_true(json_object_get(json_object_get(rq, "stream_options"), "include_usage"));
    const json_t *in = json_object_get(rq, "messages");
    if (!json_is_array(in)) {
        snprintf(err, errlen, "'messages' must be an array");
        return TG_INVAL;
    }
    struct tg_buf system;
    tg_buf_init(&system, 0);
    json_t *o = json_object();
    int rc = TG_INVAL;
    json_t *msgs = translate_messages(in, &system, err, errlen);
    if (msgs == NULL)
        goto out;
    rc = TG_NOMEM;
    const char *up = m->upstream_model != NULL ? m->upstream_model : m->name;
    if (set(o, "model", json_string(up)) != 0 || set(o, "messages", msgs) != 0)
        goto out;
    const json_t *mt = json_object_get(rq, "max_completion_tokens");
    if (!json_is_integer(mt))
        mt = json_object_get(rq, "max_tokens");
    if (set(o, "max_tokens",
            json_integer(json_is_integer(mt) ? json_integer_value(mt) : DEFAULT_MAX_TOKENS)) != 0)
        goto out;
    const json_t *t = json_object_get(rq, "temperature");
    if (json_is_number(t)) {
        double v = json_number_value(t);
        if (set(o, "temperature", json_real(v > 1.0 ? 1.0 : v < 0 ? 0 : v)) != 0)
            goto out;
    }
    const json_t *tp = json_object_get(rq, "top_p");
    if (json_is_number(tp) && set(o, "top_p", json_real(json_number_value(tp))) != 0)
        goto out;
    const json_t *stop = json_object_get(rq, "stop");
    if (json_is_string(stop) && set(o, "stop_sequences", json_pack("[O]", stop)) != 0)
        goto out;
    if (json_is_array(stop) && set(o, "stop_sequences", json_deep_copy(stop)) != 0)
        goto out;
    const json_t *user = json_object_get(rq, "user");
    if (json_is_string(user) && set(o, "metadata", json_pack("{s:O}", "user_id", user)) != 0)
        goto out;
    if (stream && set(o, "stream", json_true()) != 0)
        goto out;

    /* Tools. */
    json_t *tools = NULL;
    size_t i;
    const json_t *tool;
    json_array_foreach(json_object_get(rq, "tools"), i, tool)
    {
        const json_t *fn = json_object_get(tool, "function");
        const char *name = json_string_value(json_object_get(fn, "name"));
        if (name == NULL)
            continue;
        const json_t *params = json_object_get(fn, "parameters");
        json_t *at = json_pack("{s:s,s:o}", "name", name, "input_schema",
                               json_is_object(params) ? json_deep_copy(params)
                                                      : json_pack("{s:s}", "type", "object"));
        const json_t *desc = json_object_get(fn, "description");
        if (json_is_string(desc))
            json_object_set(at, "description", (json_t *)desc);
        if (tools == NULL)
            tools = json_array();
        json_array_append_new(tools, at);
    }
    const json_t *tc = json_object_get(rq, "tool_choice");
    json_t *choice = NULL;
    if (json_is_string(tc)) {
        const char *s = json_string_value(tc);
        choice = strcmp(s, "required") == 0 ? json_pack("{s:s}", "type", "any")
                 : strcmp(s, "none") == 0   ? json_pack("{s:s}", "type", "none")
                                            : json_pack("{s:s}", "type", "auto");
    } else if (json_is_object(tc)) {
        const char *name =
            json_string_value(json_object_get(json_object_get(tc, "function"), "name"));
        if (name != NULL)
            choice = json_pack("{s:s,s:s}", "type", "tool", "name", name);
    }

    /* Structured output: a forced tool carrying the schema. */
    const json_t *rf = json_object_get(rq, "response_format");
    const char *rft = json_string_value(json_object_get(rf, "type"));
    if (rft != NULL && strcmp(rft, "json_schema") == 0) {
        const json_t *js = json_object_get(rf, "json_schema");
        const json_t *schema = json_object_get(js, "schema");
        if (!json_is_object(schema)) {
            snprintf(err, errlen, "response_format.json_schema.schema must be an object");
            json_decref(tools);
            json_decref(choice);
            rc = TG_INVAL;
            goto out;
        }
        const char *name = json_string_value(json_object_get(js, "name"));
        if (name == NULL)
            name = JSON_TOOL;
        if (tools == NULL)
            tools = json_array();
        json_array_append_new(tools, json_pack("{s:s,s:s,s:O}", "name", name, "description",
                                               "Respond with the answer as this tool's input.",
                                               "input_schema", schema));
        json_decref(choice);
        choice = json_pack("{s:s,s:s}", "type", "tool", "name", name);
        *forced_json = true;
    } else if (rft != NULL && strcmp(rft, "json_object") == 0) {
        json_t *hint = json_string("Respond with a single JSON object and nothing else.");
        append_text(&system, hint);
        json_decref(hint);
    }
    if (tools != NULL && set(o, "tools", tools) != 0) {
        json_decref(choice);
        goto out;
    }
    if (choice != NULL && set(o, "tool_choice", choice) != 0)
        goto out;
    if (system.len > 0 && set(o, "system", json_stringn(system.data, system.len)) != 0)
        goto out;
    char *s = json_dumps(o, JSON_COMPACT);
    if (s == NULL)
        goto out;
    rc = tg_buf_append(out, s, strlen(s));
    free(s);
out:
    tg_buf_free(&system);
    json_decref(o);
    return rc;
}

static const char *finish_of(const char *stop_reason, bool forced_json)
{
    if (stop_reason == NULL)
        return NULL;
    if (strcmp(stop_reason, "max_tokens") == 0)
        return "length";
    if (strcmp(stop_reason, "tool_use") == 0)
        return forced_json ? "stop" : "tool_calls";
    if (strcmp(stop_reason, "refusal") == 0)
        return "content_filter";
    return "stop";
}

static void usage_of(const json_t *u, struct tg_upstream_usage *out)
{
    if (!json_is_object(u))
        return;
    const json_t *in = json_object_get(u, "input_tokens");
    const json_t *o = json_object_get(u, "output_tokens");
    int64_t cr = json_integer_value(json_object_get(u, "cache_read_input_tokens"));
    int64_t cc = json_integer_value(json_object_get(u, "cache_creation_input_tokens"));
    if (json_is_integer(in)) {
        out->prompt_tokens = json_integer_value(in) + cr + cc;
        out->cached_tokens = cr;
    }
    if (json_is_integer(o))
        out->completion_tokens = json_integer_value(o);
}

static json_t *usage_json(const struct tg_upstream_usage *u)
{
    int64_t p = u->prompt_tokens < 0 ? 0 : u->prompt_tokens;
    int64_t c = u->completion_tokens < 0 ? 0 : u->completion_tokens;
    return json_pack("{s:I,s:I,s:I,s:{s:I}}", "prompt_tokens", (json_int_t)p, "completion_tokens",
                     (json_int_t)c, "total_tokens", (json_int_t)(p + c), "prompt_tokens_details",
                     "cached_tokens", (json_int_t)u->cached_tokens);
}

int up_anthropic_response(const char *body, size_t len, bool forced_json, json_t **out,
                          struct tg_upstream_usage *u, char *finish, size_t finish_len)
{
    json_t *v = json_loadb(body, len, 0, NULL);
    const json_t *content = json_object_get(v, "content");
    if (!json_is_object(v) || !json_is_array(content)) {
        json_decref(v);
        return TG_PARSE;
    }
    struct tg_buf text;
    tg_buf_init(&text, 0);
    json_t *calls = json_array();
    size_t i;
    const json_t *b;
    json_array_foreach(content, i, b)
    {
        const char *t = json_string_value(json_object_get(b, "type"));
        if (t == NULL)
            continue;
        if (strcmp(t, "text") == 0) {
            const char *s = json_string_value(json_object_get(b, "text"));
            if (s != NULL)
                tg_buf_append_str(&text, s);
        } else if (strcmp(t, "tool_use") == 0) {
            char *args = json_dumps(json_object_get(b, "input"), JSON_COMPACT | JSON_ENCODE_ANY);
            if (forced_json) {
                tg_buf_append_str(&text, args != NULL ? args : "{}");
            } else {
                json_array_append_new(calls,
                                      json_pack("{s:O,s:s,s:{s:O,s:s}}", "id",
                                                json_object_get(b, "id"), "type", "function",
                                                "function", "name", json_object_get(b, "name"),
                                                "arguments", args != NULL ? args : "{}"));
            }
            free(args);
        }
    }
    usage_of(json_object_get(v, "usage"), u);
    const char *f = finish_of(json_string_value(json_object_get(v, "stop_reason")), forced_json);
    if (f != NULL)
        snprintf(finish, finish_len, "%s", f);
    json_t *msg = json_pack("{s:s,s:o,s:n}", "role", "assistant", "content",
                            text.len > 0 || json_array_size(calls) == 0
                                ? json_stringn(text.data ? text.data : "", text.len)
                                : json_null(),
                            "refusal");
    if (json_array_size(calls) > 0)
        json_object_set(msg, "tool_calls", calls);
    json_decref(calls);
    tg_buf_free(&text);
    const char *id = json_string_value(json_object_get(v, "id"));
    char oid[128];
    snprintf(oid, sizeof oid, "chatcmpl-%s", id != NULL ? id : "anthropic");
    const json_t *model = json_object_get(v, "model");
    json_t *r = json_pack("{s:s,s:s,s:I,s:O,s:[{s:i,s:o,s:n,s:s?}],s:o}", "id", oid, "object",
                          "chat.completion", "created", (json_int_t)time(NULL), "model",
                          model != NULL ? model : json_null(), "choices", "index", 0, "message",
                          msg, "logprobs", "finish_reason", f, "usage", usage_json(u));
    json_decref(v);
    if (r == NULL)
        return TG_NOMEM;
    *out = r;
    return TG_OK;
}

/* Emit one chunk {id, object, created, model, choices:[{index, delta, logprobs, finish_reason}]}.
 */
static int emit_chunk(struct up_stream *st, json_t *delta, const char *finish, up_emit_fn emit,
                      void *ctx)
{
    json_t *c =
        json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:o,s:n,s:s?}]}", "id", st->id, "object",
                  "chat.completion.chunk", "created", (json_int_t)st->created, "model", st->model,
                  "choices", "index", 0, "delta", delta, "logprobs", "finish_reason", finish);
    if (c == NULL)
        return TG_NOMEM;
    char *s = json_dumps(c, JSON_COMPACT);
    int rc = s != NULL ? emit(ctx, c, s, strlen(s)) : TG_NOMEM;
    free(s);
    json_decref(c);
    return rc;
}

int up_anthropic_event(struct up_stream *st, const char *event, const char *data, size_t len,
                       up_emit_fn emit, void *ctx)
{
    json_t *v = json_loadb(data, len, 0, NULL);
    const char *type = json_string_value(json_object_get(v, "type"));
    if (!json_is_object(v) || type == NULL) {
        json_decref(v);
        return TG_PARSE;
    }
    int rc = 0;
    if (strcmp(type, "message_start") == 0) {
        const json_t *m = json_object_get(v, "message");
        const char *id = json_string_value(json_object_get(m, "id"));
        const char *model = json_string_value(json_object_get(m, "model"));
        snprintf(st->id, sizeof st->id, "chatcmpl-%s", id != NULL ? id : "anthropic");
        snprintf(st->model, sizeof st->model, "%s", model != NULL ? model : "");
        st->created = (long)time(NULL);
        usage_of(json_object_get(m, "usage"), &st->usage);
        st->usage.completion_tokens = -1; /* the real count comes with message_delta */
        rc = emit_chunk(st, json_pack("{s:s,s:s}", "role", "assistant", "content", ""), NULL, emit,
                        ctx);
    } else if (strcmp(type, "content_block_start") == 0) {
        json_int_t idx = json_integer_value(json_object_get(v, "index"));
        const json_t *b = json_object_get(v, "content_block");
        const char *bt = json_string_value(json_object_get(b, "type"));
        if (bt != NULL && strcmp(bt, "tool_use") == 0 && !st->forced_json && idx >= 0 && idx < 64) {
            int k = st->n_tools++;
            st->tool_idx[idx] = k;
            rc =
                emit_chunk(st,
                           json_pack("{s:[{s:i,s:O,s:s,s:{s:O,s:s}}]}", "tool_calls", "index", k,
                                     "id", json_object_get(b, "id"), "type", "function", "function",
                                     "name", json_object_get(b, "name"), "arguments", ""),
                           NULL, emit, ctx);
        }
    } else if (strcmp(type, "content_block_delta") == 0) {
        json_int_t idx = json_integer_value(json_object_get(v, "index"));
        const json_t *d = json_object_get(v, "delta");
        const char *dt = json_string_value(json_object_get(d, "type"));
        if (dt != NULL && strcmp(dt, "text_delta") == 0) {
            rc = emit_chunk(st, json_pack("{s:O}", "content", json_object_get(d, "text")), NULL,
                            emit, ctx);
        } else if (dt != NULL && strcmp(dt, "input_json_delta") == 0) {
            const json_t *pj = json_object_get(d, "partial_json");
            if (st->forced_json)
                rc = emit_chunk(st, json_pack("{s:O}", "content", pj), NULL, emit, ctx);
            else if (idx >= 0 && idx < 64 && st->tool_idx[idx] >= 0)
                rc = emit_chunk(st,
                                json_pack("{s:[{s:i,s:{s:O}}]}", "tool_calls", "index",
                                          st->tool_idx[idx], "function", "arguments", pj),
                                NULL, emit, ctx);
        }
    } else if (strcmp(type, "message_delta") == 0) {
        const char *f = finish_of(
            json_string_value(json_object_get(json_object_get(v, "delta"), "stop_reason")),
            st->forced_json);
        const json_t *u = json_object_get(v, "usage");
        const json_t *o = json_object_get(u, "output_tokens");
        if (json_is_integer(o))
            st->usage.completion_tokens = json_integer_value(o);
        if (json_is_integer(json_object_get(u, "input_tokens")))
            usage_of(u, &st->usage);
        if (f != NULL) {
            snprintf(st->finish, sizeof st->finish, "%s", f);
            rc = emit_chunk(st, json_object(), f, emit, ctx);
        }
    } else if (strcmp(type, "message_stop") == 0) {
        st->done = true;
        if (st->client_usage) {
            json_t *c = json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", st->id, "object",
                                  "chat.completion.chunk", "created", (json_int_t)st->created,
                                  "model", st->model, "choices", "usage", usage_json(&st->usage));
            char *s = c != NULL ? json_dumps(c, JSON_COMPACT) : NULL;
            rc = s != NULL ? emit(ctx, c, s, strlen(s)) : TG_NOMEM;
            free(s);
            json_decref(c);
        }
    } else if (strcmp(type, "error") == 0) {
        const json_t *e = json_object_get(v, "error");
        const char *msg = json_string_value(json_object_get(e, "message"));
        const char *et = json_string_value(json_object_get(e, "type"));
        char text[512];
        snprintf(text, sizeof text, "upstream stream error: %.400s", msg != NULL ? msg : "unknown");
        json_decref(st->error);
        st->error = tg_json_error(
            text,
            et != NULL && strcmp(et, "overloaded_error") == 0 ? "server_error" : "server_error",
            NULL, et);
        up_redact_json(st->error);
        st->done = true;
    }
    /* ping, content_block_stop and unknown events carry nothing for the client */
    (void)event;
    json_decref(v);
    return rc;
}
