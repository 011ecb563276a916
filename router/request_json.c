/* The routing view of an OpenAI-style request body (chat, completions, responses, task API). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg/buf.h"
#include "tg/err.h"
#include "tg/router.h"

/* Ceiling for concatenated multi-part contents; the gateway's body limit is far below it. */
#define PARSED_ARENA_MAX (64u << 20)

static int fail(char *err, size_t errlen, const char *msg)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "%s", msg);
    return TG_INVAL;
}

/* Content of one message: a string, or an array of parts whose text parts are joined with
 * newlines into the arena. Offsets into the arena are stored first and turned into pointers
 * once the arena stops moving. */
struct pending {
    size_t index, off, len;
};

static int add_content(const json_t *content, struct tg_route_message *m, struct tg_buf *arena,
                       struct pending *pend, size_t *n_pend, size_t index)
{
    if (json_is_string(content)) {
        m->content = json_string_value(content);
        m->content_len = json_string_length(content);
        return TG_OK;
    }
    if (json_is_null(content) || content == NULL) {
        m->content = "";
        m->content_len = 0;
        return TG_OK;
    }
    if (!json_is_array(content))
        return TG_INVAL;
    size_t off = arena->len, i;
    const json_t *part;
    bool first = true;
    json_array_foreach(content, i, part)
    {
        const json_t *t = json_object_get(part, "text");
        if (!json_is_string(t))
            continue; /* images, audio: nothing to route on */
        int rc = TG_OK;
        if (!first)
            rc = tg_buf_append(arena, "\n", 1);
        if (rc == TG_OK)
            rc = tg_buf_append(arena, json_string_value(t), json_string_length(t));
        if (rc != TG_OK)
            return rc;
        first = false;
    }
    pend[*n_pend].index = index;
    pend[*n_pend].off = off;
    pend[*n_pend].len = arena->len - off;
    (*n_pend)++;
    return TG_OK;
}

int tg_router_parse_json(const json_t *body, enum tg_route_endpoint ep, struct tg_route_parsed *out,
                         char *err, size_t errlen)
{
    if (body == NULL || out == NULL || !json_is_object(body))
        return fail(err, errlen, "request body must be a JSON object");
    const json_t *messages = json_object_get(body, "messages");
    const json_t *input = json_object_get(body, "input");
    const json_t *prompt = json_object_get(body, "prompt");
    const json_t *text = json_object_get(body, "text");
    const json_t *instructions = json_object_get(body, "instructions");
    const json_t *list = NULL;
    if (json_is_array(messages))
        list = messages;
    else if (json_is_array(input))
        list = input;
    size_t n_list = list != NULL ? json_array_size(list) : 0;
    size_t cap = n_list + 2;
    struct tg_route_message *msgs = calloc(cap, sizeof *msgs);
    struct pending *pend = calloc(cap, sizeof *pend);
    if (msgs == NULL || pend == NULL) {
        free(msgs);
        free(pend);
        return TG_NOMEM;
    }
    struct tg_buf arena;
    tg_buf_init(&arena, PARSED_ARENA_MAX);
    size_t n = 0, n_pend = 0;
    int rc = TG_OK;
    if (json_is_string(instructions)) {
        msgs[n].role = "system";
        msgs[n].content = json_string_value(instructions);
        msgs[n].content_len = json_string_length(instructions);
        n++;
    }
    if (list != NULL) {
        size_t i;
        const json_t *m;
        json_array_foreach(list, i, m)
        {
            if (!json_is_object(m)) {
                rc = fail(err, errlen, "each message must be an object");
                break;
            }
            const json_t *role = json_object_get(m, "role");
            msgs[n].role = json_is_string(role) ? json_string_value(role) : "user";
            rc = add_content(json_object_get(m, "content"), &msgs[n], &arena, pend, &n_pend, n);
            if (rc == TG_INVAL)
                rc = fail(err, errlen, "message content must be a string or an array of parts");
            if (rc != TG_OK)
                break;
            n++;
        }
    } else if (json_is_string(input) || json_is_string(prompt) || json_is_string(text)) {
        const json_t *s = json_is_string(input) ? input : json_is_string(prompt) ? prompt : text;
        msgs[n].role = "user";
        msgs[n].content = json_string_value(s);
        msgs[n].content_len = json_string_length(s);
        n++;
    } else {
        rc = fail(err, errlen, "request has no messages, input, prompt or text");
    }
    if (rc == TG_OK && n == 0)
        rc = fail(err, errlen, "request has no messages");
    if (rc != TG_OK) {
        free(msgs);
        free(pend);
        tg_buf_free(&arena);
        return rc;
    }
    char *base = NULL;
    if (n_pend > 0) {
        /* an all-image message leaves the arena empty: detach still gives a buffer */
        if (arena.len == 0 && tg_buf_append(&arena, "", 0) != TG_OK) {
            free(msgs);
            free(pend);
            return TG_NOMEM;
        }
        base = tg_buf_detach(&arena);
        if (base == NULL) {
            free(msgs);
            free(pend);
            return TG_NOMEM;
        }
        for (size_t k = 0; k < n_pend; k++) {
            msgs[pend[k].index].content = base + pend[k].off;
            msgs[pend[k].index].content_len = pend[k].len;
        }
    }
    tg_buf_free(&arena);
    free(pend);

    struct tg_route_request req = tg_route_request_default();
    req.endpoint = ep;
    req.messages = msgs;
    req.n_messages = n;
    const json_t *labels = json_object_get(body, "labels");
    if (json_is_array(labels))
        req.n_labels = json_array_size(labels);
    const json_t *rf = json_object_get(body, "response_format");
    const json_t *rft = json_object_get(rf, "type");
    if (json_is_object(json_object_get(body, "schema")) ||
        (json_is_string(rft) && (strcmp(json_string_value(rft), "json_schema") == 0 ||
                                 strcmp(json_string_value(rft), "json_object") == 0)))
        req.has_schema = true;
    static const char *const MAXKEYS[] = {"max_tokens", "max_completion_tokens",
                                          "max_output_tokens"};
    for (size_t k = 0; k < 3; k++) {
        const json_t *v = json_object_get(body, MAXKEYS[k]);
        if (json_is_integer(v) && json_integer_value(v) >= 0) {
            req.max_tokens = (int64_t)json_integer_value(v);
            break;
        }
    }
    if (ep == TG_ROUTE_EP_CHAT && req.n_labels > 0)
        req.endpoint = TG_ROUTE_EP_CLASSIFY;
    else if (ep == TG_ROUTE_EP_CHAT && json_is_object(json_object_get(body, "schema")))
        req.endpoint = TG_ROUTE_EP_EXTRACT;
    out->req = req;
    out->msgs = msgs;
    out->arena = base;
    return TG_OK;
}

void tg_router_parsed_free(struct tg_route_parsed *p)
{
    if (p == NULL)
        return;
    free(p->msgs);
    free(p->arena);
    p->msgs = NULL;
    p->arena = NULL;
}
