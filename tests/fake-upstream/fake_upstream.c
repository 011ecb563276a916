/* tg-fake-upstream: a scriptable fake LLM provider for tests and benchmarks.
 *
 * Speaks the OpenAI shapes (POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models) and
 * Anthropic Messages (POST /v1/messages), streaming and not. Paths without the /v1 prefix are
 * accepted too.
 *
 * Behaviour per request comes from, in this order: the X-Fake-Script header; the next entry of
 * the script queue (POST /_script with a JSON array of script strings, or one script as text);
 * a request model of the form "script:<script>". A script is "key=value;key;...":
 *   delay_ms=N        wait before sending the response headers
 *   chunk_delay_ms=N  wait between SSE events (slow trickle)
 *   status=N          answer with this HTTP status and a provider-shaped error body
 *   retry_after=S     with status: Retry-After: S (seconds); retry_after_ms=N: retry-after-ms: N
 *   reset             close the connection with a TCP RST instead of answering
 *   cut=N             streaming: close the connection after N SSE events (no terminator)
 *   stall=N           streaming: after N SSE events send nothing more (keep the connection)
 *   stall_ms=M        with stall: the silence lasts M ms, then the answer goes on
 *   error_after=N     streaming: after N SSE events send an error event and end the stream
 *   content=TEXT      the completion text (no ';'); default "Hello from the fake upstream."
 *   echo              the completion is the last user message's text
 *   chunks=N          split the completion into N stream pieces (default: one per word)
 *   noanswer          accept and read the request, then never answer (the connection is held
 *                     until the client closes it)
 *   first_token_ms=N  streaming: headers at once, the first SSE event only after N ms;
 *                     non-streaming: the same as delay_ms=N
 *   malformed=N       streaming: SSE event N (0-based) is replaced by a truncated JSON object;
 *                     non-streaming: a 200 whose body is truncated JSON (N is ignored)
 *   nodone            streaming: the stream ends cleanly but without its terminator
 *                     (OpenAI "data: [DONE]", Anthropic message_stop)
 *   ctx_limit=N       a provider-shaped 400 context-length error when the prompt has more than N
 *                     tokens (OpenAI code context_length_exceeded, Anthropic "prompt is too
 *                     long"); otherwise the normal answer
 *   flap=MS           time windows of MS ms counted from the first flap request this process saw:
 *                     even windows answer normally, odd ones fail with status=N (default 503)
 *   cut / stall on a non-streaming answer: Content-Length is sent with only the first half of
 *                     the body, then the connection is closed (cut) or left silent (stall)
 * Without a script it answers a fixed small completion with minimal work (benchmark reference).
 *
 * Usage is deterministic: prompt_tokens = ceil(bytes of all message text / 4) (at least 1),
 * completion_tokens = number of completion pieces. Structured output: a response_format
 * json_schema (OpenAI), or a forced tool (OpenAI tool_choice function / Anthropic tool_choice
 * tool) is answered with a JSON value generated to match the schema.
 *
 * GET /_requests returns the requests received (most recent last, at most --max-record) as
 * [{"method","path","headers":{lowercase name: value},"body": parsed JSON or string,
 *   "body_raw": the exact bytes}];
 * DELETE /_requests clears them; POST /_reset clears requests and the script queue.
 *
 *   tg-fake-upstream --port P [--host 127.0.0.1] [--threads N] [--no-record] [--max-record N]
 */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <sys/queue.h>
#include <event2/keyvalq_struct.h>
#include <event2/thread.h>

#define MAX_SCRIPT 1024
#define MAX_EVENTS 4096

/* ---- process-wide state: script queue and request log (mutex; the fast path skips both) ---- */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static char **g_queue;
static size_t g_queue_len, g_queue_cap;
static json_t *g_log; /* array */
static bool g_record = true;
static size_t g_max_record = 1000;
static atomic_long g_seq;
static atomic_llong g_flap_epoch_ms; /* monotonic ms of the first flap request, 0 = none yet */

static int parse_int(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

struct script {
    int delay_ms, chunk_delay_ms, status, retry_after_s, retry_after_ms;
    bool reset, echo, noanswer, nodone;
    int cut, stall, error_after, chunks; /* -1 / 0 = off */
    int first_token_ms, flap_ms, stall_ms; /* 0 = off */
    int malformed, ctx_limit;            /* -1 = off */
    char content[512];
    bool has_content;
};

static void script_defaults(struct script *s)
{
    memset(s, 0, sizeof *s);
    s->retry_after_s = -1;
    s->retry_after_ms = -1;
    s->cut = s->stall = s->error_after = -1;
    s->malformed = s->ctx_limit = -1;
}

/* "k=v;k;..." → s; returns -1 with a message on a bad key or value. */
static int script_parse(const char *text, struct script *s, char *err, size_t errlen)
{
    script_defaults(s);
    char copy[MAX_SCRIPT];
    if (strlen(text) >= sizeof copy) {
        snprintf(err, errlen, "script too long");
        return -1;
    }
    memcpy(copy, text, strlen(text) + 1);
    char *rest = copy;
    for (char *item = strsep(&rest, ";"); item != NULL; item = strsep(&rest, ";")) {
        while (*item == ' ')
            item++;
        if (*item == '\0')
            continue;
        char *eq = strchr(item, '=');
        const char *val = "";
        if (eq != NULL) {
            *eq = '\0';
            val = eq + 1;
        }
        long v = 0;
        struct {
            const char *k;
            int *dst;
            long lo, hi;
        } ints[] = {
            {"delay_ms", &s->delay_ms, 0, 600000},
            {"chunk_delay_ms", &s->chunk_delay_ms, 0, 600000},
            {"status", &s->status, 100, 599},
            {"retry_after", &s->retry_after_s, 0, 86400},
            {"retry_after_ms", &s->retry_after_ms, 0, 86400000},
            {"cut", &s->cut, 0, MAX_EVENTS},
            {"stall", &s->stall, 0, MAX_EVENTS},
            {"error_after", &s->error_after, 0, MAX_EVENTS},
            {"chunks", &s->chunks, 1, 1000},
            {"first_token_ms", &s->first_token_ms, 0, 600000},
            {"malformed", &s->malformed, 0, MAX_EVENTS},
            {"ctx_limit", &s->ctx_limit, 0, 100000000},
            {"flap", &s->flap_ms, 1, 3600000},
            {"stall_ms", &s->stall_ms, 1, 600000},
        };
        bool done = false;
        for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
            if (strcmp(item, ints[i].k) == 0) {
                if (parse_int(val, ints[i].lo, ints[i].hi, &v) != 0) {
                    snprintf(err, errlen, "bad value for %s: '%s'", item, val);
                    return -1;
                }
                *ints[i].dst = (int)v;
                done = true;
            }
        }
        if (done)
            continue;
        if (strcmp(item, "reset") == 0) {
            s->reset = true;
        } else if (strcmp(item, "echo") == 0) {
            s->echo = true;
        } else if (strcmp(item, "noanswer") == 0) {
            s->noanswer = true;
        } else if (strcmp(item, "nodone") == 0) {
            s->nodone = true;
        } else if (strcmp(item, "content") == 0) {
            snprintf(s->content, sizeof s->content, "%s", val);
            s->has_content = true;
        } else {
            snprintf(err, errlen, "unknown script key '%s'", item);
            return -1;
        }
    }
    return 0;
}

/* ---- JSON value generation from a schema (structured output) ---- */

static json_t *schema_instance(const json_t *schema, int depth)
{
    if (!json_is_object(schema) || depth > 16)
        return json_string("example");
    const json_t *en = json_object_get(schema, "enum");
    if (json_is_array(en) && json_array_size(en) > 0)
        return json_deep_copy(json_array_get(en, 0));
    const json_t *cn = json_object_get(schema, "const");
    if (cn != NULL)
        return json_deep_copy(cn);
    const char *keys[] = {"anyOf", "oneOf", "allOf"};
    for (size_t i = 0; i < 3; i++) {
        const json_t *alt = json_object_get(schema, keys[i]);
        if (json_is_array(alt) && json_array_size(alt) > 0)
            return schema_instance(json_array_get(alt, 0), depth + 1);
    }
    const json_t *t = json_object_get(schema, "type");
    const char *type = json_string_value(t);
    if (json_is_array(t)) {
        for (size_t i = 0; i < json_array_size(t); i++) {
            type = json_string_value(json_array_get(t, i));
            if (type != NULL && strcmp(type, "null") != 0)
                break;
        }
    }
    if (type == NULL)
        type = json_object_get(schema, "properties") != NULL ? "object" : "string";
    const json_t *min = json_object_get(schema, "minimum");
    if (strcmp(type, "object") == 0) {
        json_t *o = json_object();
        const char *k;
        json_t *sub;
        json_object_foreach((json_t *)json_object_get(schema, "properties"), k, sub) {
            json_object_set_new(o, k, schema_instance(sub, depth + 1));
        }
        return o;
    }
    if (strcmp(type, "array") == 0) {
        json_t *a = json_array();
        json_int_t n = json_integer_value(json_object_get(schema, "minItems"));
        if (n < 1)
            n = 1;
        for (json_int_t i = 0; i < n && i < 16; i++)
            json_array_append_new(a, schema_instance(json_object_get(schema, "items"), depth + 1));
        return a;
    }
    if (strcmp(type, "integer") == 0)
        return json_integer(json_is_number(min) ? (json_int_t)json_number_value(min) : 1);
    if (strcmp(type, "number") == 0)
        return json_real(json_is_number(min) ? json_number_value(min) : 1.5);
    if (strcmp(type, "boolean") == 0)
        return json_true();
    if (strcmp(type, "null") == 0)
        return json_null();
    return json_string("example");
}

/* ---- request context ---- */

enum api { API_OPENAI, API_ANTHROPIC };

struct rctx {
    struct evhttp_request *req;
    struct evhttp_connection *evcon;
    struct event_base *base;
    struct event *timer;
    struct script sc;
    int status;
    bool stream;
    char *body; /* non-stream body or NULL */
    size_t body_len;
    char *events[MAX_EVENTS]; /* stream pieces, each a complete "data: ...\n\n" (or event:) */
    size_t n_events, next;
    bool headers_sent;
    bool cutting;
    bool first_wait_done; /* first_token_ms has been waited */
    bool stall_done;      /* stall_ms has been waited */
};

static void rctx_free(struct rctx *c)
{
    if (c->evcon != NULL)
        evhttp_connection_set_closecb(c->evcon, NULL, NULL);
    if (c->timer != NULL)
        event_free(c->timer);
    free(c->body);
    for (size_t i = 0; i < c->n_events; i++)
        free(c->events[i]);
    free(c);
}

/* The client went away while we were waiting: libevent frees the request; we free ours. */
static void on_conn_close(struct evhttp_connection *evcon, void *arg)
{
    struct rctx *c = arg;
    struct evhttp_request *req = c->req;
    c->evcon = NULL;
    rctx_free(c);
    /* On EOF libevent detaches a request the user still holds; freeing it is then ours. */
    if (evhttp_request_get_connection(req) == NULL)
        evhttp_request_free(req);
}

static void send_simple(struct evhttp_request *req, int status, const char *ctype, const char *body,
                        size_t len)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, len);
    evhttp_send_reply(req, status, status == 200 ? "OK" : "Error", b);
    evbuffer_free(b);
}

static void send_json(struct evhttp_request *req, int status, json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    send_simple(req, status, "application/json", s, strlen(s));
    free(s);
}

static void rst_connection(struct evhttp_connection *evcon)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    evutil_socket_t fd = bufferevent_getfd(bev);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == -1)
        perror("setsockopt SO_LINGER");
    evhttp_connection_free(evcon);
}

static void step(struct rctx *c);

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    step(arg);
}

static void arm(struct rctx *c, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static void on_flushed_then_cut(struct evhttp_connection *evcon, void *arg)
{
    struct rctx *c = arg;
    struct evhttp_connection *con = c->evcon;
    rctx_free(c);
    if (con != NULL)
        evhttp_connection_free(con);
}

static void on_flushed(struct evhttp_connection *evcon, void *arg)
{
    struct rctx *c = arg;
    if (c->sc.chunk_delay_ms > 0)
        arm(c, c->sc.chunk_delay_ms);
    else
        step(c);
}

/* Advance the response: headers, then stream events one by one (with delays), then the end. */
static void step(struct rctx *c)
{
    if (c->headers_sent && !c->stream) { /* the stall of a half-sent body is over */
        struct evhttp_request *req = c->req;
        struct evbuffer *b = evbuffer_new();
        evbuffer_add(b, c->body + c->body_len / 2, c->body_len - c->body_len / 2);
        rctx_free(c);
        evhttp_send_reply_chunk(req, b);
        evbuffer_free(b);
        evhttp_send_reply_end(req);
        return;
    }
    if (!c->headers_sent) {
        c->headers_sent = true;
        if (c->sc.reset) {
            struct evhttp_connection *con = c->evcon;
            rctx_free(c);
            rst_connection(con);
            return;
        }
        if (!c->stream && (c->sc.cut >= 0 || c->sc.stall >= 0)) {
            /* A body that stops half-way: the full Content-Length, half of the bytes. */
            struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
            char cl[32];
            snprintf(cl, sizeof cl, "%zu", c->body_len);
            evhttp_add_header(h, "Content-Type", "application/json");
            evhttp_add_header(h, "Content-Length", cl);
            evhttp_send_reply_start(c->req, c->status, "OK");
            struct evbuffer *b = evbuffer_new();
            evbuffer_add(b, c->body, c->body_len / 2);
            if (c->sc.cut >= 0)
                evhttp_send_reply_chunk_with_cb(c->req, b, on_flushed_then_cut, c);
            else
                evhttp_send_reply_chunk(c->req, b); /* then silence; freed when the client closes */
            evbuffer_free(b);
            if (c->sc.cut < 0 && c->sc.stall_ms > 0)
                arm(c, c->sc.stall_ms);
            return;
        }
        if (!c->stream) {
            struct evhttp_request *req = c->req;
            char *body = c->body;
            size_t len = c->body_len;
            int status = c->status;
            c->body = NULL;
            rctx_free(c);
            send_simple(req, status, "application/json", body, len);
            free(body);
            return;
        }
        struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
        evhttp_add_header(h, "Content-Type", "text/event-stream");
        evhttp_add_header(h, "Cache-Control", "no-cache");
        evhttp_send_reply_start(c->req, 200, "OK");
    }
    if (c->sc.first_token_ms > 0 && !c->first_wait_done) {
        c->first_wait_done = true;
        arm(c, c->sc.first_token_ms);
        return;
    }
    if (c->sc.stall >= 0 && c->next >= (size_t)c->sc.stall && !c->stall_done) {
        if (c->sc.stall_ms > 0) {
            c->stall_done = true;
            arm(c, c->sc.stall_ms);
        }
        return; /* stalled: the client's idle timeout must notice; freed when it closes */
    }
    if (c->sc.cut >= 0 && c->next >= (size_t)c->sc.cut) {
        struct evhttp_connection *con = c->evcon;
        rctx_free(c);
        rst_connection(con);
        return;
    }
    if (c->next >= c->n_events) {
        struct evhttp_request *req = c->req;
        rctx_free(c);
        evhttp_send_reply_end(req);
        return;
    }
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, c->events[c->next], strlen(c->events[c->next]));
    c->next++;
    bool cut_next = c->sc.cut >= 0 && c->next >= (size_t)c->sc.cut;
    evhttp_send_reply_chunk_with_cb(c->req, b, cut_next ? on_flushed_then_cut : on_flushed, c);
    evbuffer_free(b);
}

/* ---- response builders ---- */

static size_t text_bytes(const json_t *content)
{
    if (json_is_string(content))
        return json_string_length(content);
    size_t n = 0;
    if (json_is_array(content)) {
        size_t i;
        const json_t *part;
        json_array_foreach(content, i, part) {
            n += json_string_length(json_object_get(part, "text"));
        }
    }
    return n;
}

static int64_t prompt_tokens_of(const json_t *rq)
{
    size_t n = 0, i;
    const json_t *m;
    json_array_foreach(json_object_get(rq, "messages"), i, m) {
        n += text_bytes(json_object_get(m, "content"));
    }
    n += text_bytes(json_object_get(rq, "system"));
    return n == 0 ? 1 : (int64_t)((n + 3) / 4);
}

static const char *last_user_text(const json_t *rq, char *buf, size_t len)
{
    const json_t *msgs = json_object_get(rq, "messages");
    for (size_t i = json_array_size(msgs); i > 0; i--) {
        const json_t *m = json_array_get(msgs, i - 1);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (role == NULL || strcmp(role, "user") != 0)
            continue;
        const json_t *ct = json_object_get(m, "content");
        if (json_is_string(ct)) {
            snprintf(buf, len, "%s", json_string_value(ct));
            return buf;
        }
        const char *t = json_string_value(json_object_get(json_array_get(ct, 0), "text"));
        snprintf(buf, len, "%s", t != NULL ? t : "");
        return buf;
    }
    snprintf(buf, len, "%s", "");
    return buf;
}

/* Split text into pieces: n > 0 → n nearly equal parts, else one per word (space kept). */
static size_t split_pieces(const char *text, int n, char **out, size_t max)
{
    size_t len = strlen(text), k = 0;
    if (len == 0) {
        out[k++] = strdup("");
        return k;
    }
    if (n > 0) {
        size_t per = (len + (size_t)n - 1) / (size_t)n;
        for (size_t off = 0; off < len && k < max; off += per)
            out[k++] = strndup(text + off, per < len - off ? per : len - off);
        return k;
    }
    size_t start = 0;
    for (size_t i = 1; i <= len && k < max; i++) {
        if (i == len || text[i] == ' ') {
            out[k++] = strndup(text + start, i - start);
            start = i;
        }
    }
    return k;
}

static char *sse_data(const char *event, json_t *v)
{
    char *s = json_dumps(v, JSON_COMPACT);
    json_decref(v);
    size_t n = strlen(s) + (event != NULL ? strlen(event) : 0) + 32;
    char *out = malloc(n);
    if (event != NULL)
        snprintf(out, n, "event: %s\ndata: %s\n\n", event, s);
    else
        snprintf(out, n, "data: %s\n\n", s);
    free(s);
    return out;
}

/* Schema for structured output, if the request forces one; *tool_name set for tool calls. */
static const json_t *forced_schema(const json_t *rq, enum api api, const char **tool_name)
{
    *tool_name = NULL;
    const json_t *tc = json_object_get(rq, "tool_choice");
    const json_t *tools = json_object_get(rq, "tools");
    if (api == API_OPENAI) {
        const json_t *rf = json_object_get(rq, "response_format");
        const char *t = json_string_value(json_object_get(rf, "type"));
        if (t != NULL && strcmp(t, "json_schema") == 0)
            return json_object_get(json_object_get(rf, "json_schema"), "schema");
        const char *name =
            json_string_value(json_object_get(json_object_get(tc, "function"), "name"));
        size_t i;
        const json_t *tool;
        json_array_foreach(tools, i, tool)
        {
            const json_t *fn = json_object_get(tool, "function");
            const char *n = json_string_value(json_object_get(fn, "name"));
            if (name != NULL && n != NULL && strcmp(n, name) == 0) {
                *tool_name = n;
                return json_object_get(fn, "parameters");
            }
        }
        return NULL;
    }
    const char *ty = json_string_value(json_object_get(tc, "type"));
    const char *name = json_string_value(json_object_get(tc, "name"));
    if (ty == NULL || strcmp(ty, "tool") != 0 || name == NULL)
        return NULL;
    size_t i;
    const json_t *tool;
    json_array_foreach(tools, i, tool)
    {
        const char *n = json_string_value(json_object_get(tool, "name"));
        if (n != NULL && strcmp(n, name) == 0) {
            *tool_name = n;
            return json_object_get(tool, "input_schema");
        }
    }
    return NULL;
}

static json_t *openai_error_body(int status)
{
    const char *type = status == 429   ? "rate_limit_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    char msg[64];
    snprintf(msg, sizeof msg, "fake upstream scripted status %d", status);
    return json_pack("{s:{s:s,s:s,s:n,s:n}}", "error", "message", msg, "type", type, "param",
                     "code");
}

static json_t *anthropic_error_body(int status)
{
    const char *type = status == 429   ? "rate_limit_error"
                       : status == 529 ? "overloaded_error"
                       : status >= 500 ? "api_error"
                                       : "invalid_request_error";
    char msg[64];
    snprintf(msg, sizeof msg, "fake upstream scripted status %d", status);
    return json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error", "type", type, "message", msg);
}

/* Build the complete response plan (body or SSE events) for a chat / messages request. */
static void plan_chat(struct rctx *c, const json_t *rq, enum api api)
{
    long seq = atomic_fetch_add(&g_seq, 1);
    const char *model = json_string_value(json_object_get(rq, "model"));
    if (model == NULL)
        model = "fake-model";
    int64_t ptok = prompt_tokens_of(rq);
    char buf[4096];
    const char *text = "Hello from the fake upstream.";
    if (c->sc.has_content)
        text = c->sc.content;
    else if (c->sc.echo)
        text = last_user_text(rq, buf, sizeof buf);
    const char *tool_name = NULL;
    const json_t *schema = forced_schema(rq, api, &tool_name);
    char *structured = NULL;
    if (schema != NULL) {
        json_t *inst = schema_instance(schema, 0);
        structured = json_dumps(inst, JSON_COMPACT | JSON_ENCODE_ANY);
        json_decref(inst);
        text = structured;
    }
    char *pieces[512];
    size_t n =
        split_pieces(text, schema != NULL && c->sc.chunks == 0 ? 4 : c->sc.chunks, pieces, 512);
    int64_t ctok = (int64_t)n;
    char id[64];
    snprintf(id, sizeof id, api == API_OPENAI ? "chatcmpl-fake-%ld" : "msg_fake_%ld", seq);
    long created = (long)time(NULL);
    bool include_usage =
        json_is_true(json_object_get(json_object_get(rq, "stream_options"), "include_usage"));
    const char *finish = tool_name != NULL ? "tool_calls" : "stop";

    if (!c->stream) {
        json_t *resp;
        if (api == API_OPENAI) {
            json_t *msg = json_pack("{s:s,s:n}", "role", "assistant", "refusal");
            if (tool_name != NULL) {
                json_object_set_new(msg, "content", json_null());
                json_object_set_new(msg, "tool_calls",
                                    json_pack("[{s:s,s:s,s:{s:s,s:s}}]", "id", "call_fake_1",
                                              "type", "function", "function", "name", tool_name,
                                              "arguments", text));
            } else {
                json_object_set_new(msg, "content", json_string(text));
            }
            resp = json_pack("{s:s,s:s,s:i,s:s,s:[{s:i,s:o,s:n,s:s}],s:{s:I,s:I,s:I},s:s}", "id",
                             id, "object", "chat.completion", "created", (int)created, "model",
                             model, "choices", "index", 0, "message", msg, "logprobs",
                             "finish_reason", finish, "usage", "prompt_tokens", (json_int_t)ptok,
                             "completion_tokens", (json_int_t)ctok, "total_tokens",
                             (json_int_t)(ptok + ctok), "system_fingerprint", "fp_fake");
        } else {
            json_t *content = json_array();
            if (tool_name != NULL) {
                json_t *input = json_loads(text, JSON_DECODE_ANY, NULL);
                json_array_append_new(content,
                                      json_pack("{s:s,s:s,s:s,s:o}", "type", "tool_use", "id",
                                                "toolu_fake_1", "name", tool_name, "input", input));
            } else {
                json_array_append_new(content,
                                      json_pack("{s:s,s:s}", "type", "text", "text", text));
            }
            resp =
                json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:n,s:{s:I,s:I}}", "id", id, "type", "message",
                          "role", "assistant", "model", model, "content", content, "stop_reason",
                          tool_name != NULL ? "tool_use" : "end_turn", "stop_sequence", "usage",
                          "input_tokens", (json_int_t)ptok, "output_tokens", (json_int_t)ctok);
        }
        c->body = json_dumps(resp, JSON_COMPACT);
        c->body_len = strlen(c->body);
        json_decref(resp);
        if (c->sc.malformed >= 0) { /* valid bytes, invalid JSON: cut the document short */
            c->body_len /= 2;
            c->body[c->body_len] = '\0';
        }
        for (size_t i = 0; i < n; i++)
            free(pieces[i]);
        free(structured);
        return;
    }

    size_t k = 0;
    if (api == API_OPENAI) {
        c->events[k++] =
            sse_data(NULL, json_pack("{s:s,s:s,s:i,s:s,s:[{s:i,s:{s:s,s:s},s:n,s:n}]}", "id", id,
                                     "object", "chat.completion.chunk", "created", (int)created,
                                     "model", model, "choices", "index", 0, "delta", "role",
                                     "assistant", "content", "", "logprobs", "finish_reason"));
        for (size_t i = 0; i < n && k < MAX_EVENTS - 4; i++) {
            json_t *delta;
            if (tool_name != NULL)
                delta = i == 0 ? json_pack("{s:[{s:i,s:s,s:s,s:{s:s,s:s}}]}", "tool_calls", "index",
                                           0, "id", "call_fake_1", "type", "function", "function",
                                           "name", tool_name, "arguments", pieces[i])
                               : json_pack("{s:[{s:i,s:{s:s}}]}", "tool_calls", "index", 0,
                                           "function", "arguments", pieces[i]);
            else
                delta = json_pack("{s:s}", "content", pieces[i]);
            c->events[k++] =
                sse_data(NULL, json_pack("{s:s,s:s,s:i,s:s,s:[{s:i,s:o,s:n,s:n}]}", "id", id,
                                         "object", "chat.completion.chunk", "created", (int)created,
                                         "model", model, "choices", "index", 0, "delta", delta,
                                         "logprobs", "finish_reason"));
        }
        c->events[k++] = sse_data(NULL, json_pack("{s:s,s:s,s:i,s:s,s:[{s:i,s:{},s:n,s:s}]}", "id",
                                                  id, "object", "chat.completion.chunk", "created",
                                                  (int)created, "model", model, "choices", "index",
                                                  0, "delta", "logprobs", "finish_reason", finish));
        if (include_usage)
            c->events[k++] =
                sse_data(NULL, json_pack("{s:s,s:s,s:i,s:s,s:[],s:{s:I,s:I,s:I}}", "id", id,
                                         "object", "chat.completion.chunk", "created", (int)created,
                                         "model", model, "choices", "usage", "prompt_tokens",
                                         (json_int_t)ptok, "completion_tokens", (json_int_t)ctok,
                                         "total_tokens", (json_int_t)(ptok + ctok)));
        c->events[k++] = strdup("data: [DONE]\n\n");
    } else {
        c->events[k++] = sse_data("message_start",
                                  json_pack("{s:s,s:{s:s,s:s,s:s,s:s,s:[],s:n,s:n,s:{s:I,s:i}}}",
                                            "type", "message_start", "message", "id", id, "type",
                                            "message", "role", "assistant", "model", model,
                                            "content", "stop_reason", "stop_sequence", "usage",
                                            "input_tokens", (json_int_t)ptok, "output_tokens", 1));
        json_t *block = tool_name != NULL
                            ? json_pack("{s:s,s:s,s:s,s:{}}", "type", "tool_use", "id",
                                        "toolu_fake_1", "name", tool_name, "input")
                            : json_pack("{s:s,s:s}", "type", "text", "text", "");
        c->events[k++] = sse_data("content_block_start",
                                  json_pack("{s:s,s:i,s:o}", "type", "content_block_start", "index",
                                            0, "content_block", block));
        c->events[k++] = sse_data("ping", json_pack("{s:s}", "type", "ping"));
        for (size_t i = 0; i < n && k < MAX_EVENTS - 4; i++) {
            json_t *delta =
                tool_name != NULL
                    ? json_pack("{s:s,s:s}", "type", "input_json_delta", "partial_json", pieces[i])
                    : json_pack("{s:s,s:s}", "type", "text_delta", "text", pieces[i]);
            c->events[k++] = sse_data("content_block_delta",
                                      json_pack("{s:s,s:i,s:o}", "type", "content_block_delta",
                                                "index", 0, "delta", delta));
        }
        c->events[k++] = sse_data("content_block_stop",
                                  json_pack("{s:s,s:i}", "type", "content_block_stop", "index", 0));
        c->events[k++] =
            sse_data("message_delta",
                     json_pack("{s:s,s:{s:s,s:n},s:{s:I}}", "type", "message_delta", "delta",
                               "stop_reason", tool_name != NULL ? "tool_use" : "end_turn",
                               "stop_sequence", "usage", "output_tokens", (json_int_t)ctok));
        c->events[k++] = sse_data("message_stop", json_pack("{s:s}", "type", "message_stop"));
    }
    if (c->sc.nodone && k > 0)
        free(c->events[--k]); /* [DONE] / message_stop is the last event */
    if (c->sc.malformed >= 0 && (size_t)c->sc.malformed < k) {
        free(c->events[c->sc.malformed]);
        c->events[c->sc.malformed] =
            strdup(api == API_OPENAI
                       ? "data: {\"id\":\"chatcmpl-broken\",\"choices\":[{\"delta\":{\"content\n\n"
                       : "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\n\n");
    }
    c->n_events = k;
    if (c->sc.error_after >= 0 && (size_t)c->sc.error_after < k) {
        for (size_t i = (size_t)c->sc.error_after; i < k; i++)
            free(c->events[i]);
        c->n_events = (size_t)c->sc.error_after;
        c->events[c->n_events++] = api == API_OPENAI ? sse_data(NULL, openai_error_body(500))
                                                     : sse_data("error", anthropic_error_body(529));
    }
    for (size_t i = 0; i < n; i++)
        free(pieces[i]);
    free(structured);
}

static json_t *embeddings(const json_t *rq)
{
    json_t *in = json_object_get(rq, "input");
    json_t *items = json_is_array(in) ? json_incref(in) : json_pack("[O]", in);
    json_t *data = json_array();
    size_t i, bytes = 0;
    json_t *it;
    json_array_foreach(items, i, it)
    {
        const char *s = json_is_string(it) ? json_string_value(it) : "";
        bytes += strlen(s);
        uint32_t h = 2166136261u;
        for (const char *p = s; *p != '\0'; p++)
            h = (h ^ (uint8_t)*p) * 16777619u;
        json_t *vec = json_array();
        for (int d = 0; d < 8; d++) {
            h = h * 1103515245u + 12345u;
            json_array_append_new(vec, json_real(((double)(h >> 8) / 16777216.0) - 0.5));
        }
        json_array_append_new(data, json_pack("{s:s,s:I,s:o}", "object", "embedding", "index",
                                              (json_int_t)i, "embedding", vec));
    }
    json_decref(items);
    json_int_t pt = bytes == 0 ? 1 : (json_int_t)((bytes + 3) / 4);
    const char *model = json_string_value(json_object_get(rq, "model"));
    return json_pack("{s:s,s:o,s:s,s:{s:I,s:I}}", "object", "list", "data", data, "model",
                     model != NULL ? model : "fake-embed", "usage", "prompt_tokens", pt,
                     "total_tokens", pt);
}

static void record(struct evhttp_request *req, const char *path, const char *body, size_t len)
{
    json_t *hdrs = json_object();
    struct evkeyval *kv;
    TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next)
    {
        char name[128];
        size_t i = 0;
        for (; kv->key[i] != '\0' && i < sizeof name - 1; i++)
            name[i] = (char)(kv->key[i] >= 'A' && kv->key[i] <= 'Z' ? kv->key[i] + 32 : kv->key[i]);
        name[i] = '\0';
        json_object_set_new(hdrs, name, json_string(kv->value));
    }
    json_t *b = json_loadb(body, len, 0, NULL);
    if (b == NULL)
        b = json_stringn(body, len);
    const char *m = evhttp_request_get_command(req) == EVHTTP_REQ_GET      ? "GET"
                    : evhttp_request_get_command(req) == EVHTTP_REQ_DELETE ? "DELETE"
                                                                           : "POST";
    json_t *entry = json_pack("{s:s,s:s,s:o,s:o,s:s%}", "method", m, "path", path, "headers", hdrs,
                              "body", b, "body_raw", body, len);
    pthread_mutex_lock(&g_lock);
    json_array_append_new(g_log, entry);
    while (json_array_size(g_log) > g_max_record)
        json_array_remove(g_log, 0);
    pthread_mutex_unlock(&g_lock);
}

static char *queue_pop(void)
{
    char *s = NULL;
    pthread_mutex_lock(&g_lock);
    if (g_queue_len > 0) {
        s = g_queue[0];
        memmove(g_queue, g_queue + 1, (g_queue_len - 1) * sizeof *g_queue);
        g_queue_len--;
    }
    pthread_mutex_unlock(&g_lock);
    return s;
}

static int queue_push(const char *s)
{
    int rc = 0;
    pthread_mutex_lock(&g_lock);
    if (g_queue_len == g_queue_cap) {
        size_t cap = g_queue_cap == 0 ? 16 : g_queue_cap * 2;
        char **q = realloc(g_queue, cap * sizeof *q);
        if (q == NULL) {
            rc = -1;
            goto out;
        }
        g_queue = q;
        g_queue_cap = cap;
    }
    g_queue[g_queue_len++] = strdup(s);
out:
    pthread_mutex_unlock(&g_lock);
    return rc;
}

static void handle_control(struct evhttp_request *req, const char *path, const char *body,
                           size_t len)
{
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    if (strcmp(path, "/_requests") == 0 && cmd == EVHTTP_REQ_GET) {
        pthread_mutex_lock(&g_lock);
        char *s = json_dumps(g_log, JSON_COMPACT);
        pthread_mutex_unlock(&g_lock);
        send_simple(req, 200, "application/json", s, strlen(s));
        free(s);
        return;
    }
    if ((strcmp(path, "/_requests") == 0 && cmd == EVHTTP_REQ_DELETE) ||
        strcmp(path, "/_reset") == 0) {
        pthread_mutex_lock(&g_lock);
        json_array_clear(g_log);
        if (strcmp(path, "/_reset") == 0) {
            for (size_t i = 0; i < g_queue_len; i++)
                free(g_queue[i]);
            g_queue_len = 0;
        }
        pthread_mutex_unlock(&g_lock);
        send_simple(req, 200, "application/json", "{}", 2);
        return;
    }
    if (strcmp(path, "/_script") == 0 && cmd == EVHTTP_REQ_POST) {
        json_t *v = json_loadb(body, len, JSON_DECODE_ANY, NULL);
        char err[256] = "";
        struct script sc;
        size_t i;
        json_t *it;
        if (json_is_array(v)) {
            json_array_foreach(v, i, it)
            {
                if (!json_is_string(it) ||
                    script_parse(json_string_value(it), &sc, err, sizeof err) != 0)
                    break;
            }
            if (err[0] == '\0' && i == json_array_size(v)) {
                json_array_foreach(v, i, it) {
                    queue_push(json_string_value(it));
                }
            } else if (err[0] == '\0') {
                snprintf(err, sizeof err, "scripts must be strings");
            }
        } else {
            char text[MAX_SCRIPT];
            snprintf(text, sizeof text, "%.*s", (int)len, body);
            if (script_parse(text, &sc, err, sizeof err) == 0)
                queue_push(text);
        }
        json_decref(v);
        if (err[0] != '\0') {
            send_json(req, 400,
                      json_pack("{s:{s:s,s:s}}", "error", "message", err, "type",
                                "invalid_request_error"));
            return;
        }
        send_simple(req, 200, "application/json", "{}", 2);
        return;
    }
    send_json(req, 404,
              json_pack("{s:{s:s,s:s}}", "error", "message", "no such control endpoint", "type",
                        "invalid_request_error"));
}

static const char *strip_v1(const char *path)
{
    return strncmp(path, "/v1/", 4) == 0 ? path + 3 : path;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    struct event_base *base = arg;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *full = evhttp_uri_get_path(uri);
    if (full == NULL)
        full = "/";
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *body = len > 0 ? (const char *)evbuffer_pullup(in, -1) : "";
    if (full[0] == '/' && full[1] == '_') {
        handle_control(req, full, body, len);
        return;
    }
    if (g_record)
        record(req, full, body, len);
    const char *path = strip_v1(full);
    if (strcmp(path, "/models") == 0) {
        static const char models[] = "{\"object\":\"list\",\"data\":[{\"id\":\"fake-model\","
                                     "\"object\":\"model\",\"created\":0,"
                                     "\"owned_by\":\"fake\"}]}";
        send_simple(req, 200, "application/json", models, sizeof models - 1);
        return;
    }
    enum api api;
    if (strcmp(path, "/chat/completions") == 0 || strcmp(path, "/embeddings") == 0)
        api = API_OPENAI;
    else if (strcmp(path, "/messages") == 0)
        api = API_ANTHROPIC;
    else {
        send_json(req, 404,
                  json_pack("{s:{s:s,s:s}}", "error", "message", "unknown path", "type",
                            "invalid_request_error"));
        return;
    }
    json_error_t jerr;
    json_t *rq = json_loadb(body, len, 0, &jerr);
    if (!json_is_object(rq)) {
        json_decref(rq);
        send_json(req, 400,
                  json_pack("{s:{s:s,s:s}}", "error", "message",
                            "request body is not a JSON object", "type", "invalid_request_error"));
        return;
    }
    struct rctx *c = calloc(1, sizeof *c);
    c->req = req;
    c->base = base;
    c->status = 200;
    c->sc.cut = -1;
    script_defaults(&c->sc);
    const char *hdr = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Fake-Script");
    char *queued = hdr == NULL ? queue_pop() : NULL;
    const char *model = json_string_value(json_object_get(rq, "model"));
    const char *text = hdr != NULL                                          ? hdr
                       : queued != NULL                                     ? queued
                       : model != NULL && strncmp(model, "script:", 7) == 0 ? model + 7
                                                                            : NULL;
    char err[256];
    if (text != NULL && script_parse(text, &c->sc, err, sizeof err) != 0) {
        free(queued);
        json_decref(rq);
        free(c);
        send_json(
            req, 400,
            json_pack("{s:{s:s,s:s}}", "error", "message", err, "type", "invalid_request_error"));
        return;
    }
    free(queued);
    c->stream = json_is_true(json_object_get(rq, "stream")) && strcmp(path, "/embeddings") != 0;
    if (c->sc.flap_ms > 0) {
        /* Which window of the flap are we in, counted from the first flap request. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        long long now = (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, zero = 0;
        atomic_compare_exchange_strong(&g_flap_epoch_ms, &zero, now);
        bool down = ((now - atomic_load(&g_flap_epoch_ms)) / c->sc.flap_ms) % 2 == 1;
        if (!down)
            c->sc.status = 0;
        else if (c->sc.status == 0)
            c->sc.status = 503;
    }
    if (!c->stream && c->sc.first_token_ms > c->sc.delay_ms)
        c->sc.delay_ms = c->sc.first_token_ms;
    int64_t ptok = prompt_tokens_of(rq);
    if (c->sc.ctx_limit >= 0 && ptok > c->sc.ctx_limit && strcmp(path, "/embeddings") != 0) {
        c->stream = false;
        c->status = 400;
        char msg[256];
        json_t *e;
        if (api == API_OPENAI) {
            snprintf(msg, sizeof msg,
                     "This model's maximum context length is %d tokens. However, your messages "
                     "resulted in %lld tokens. Please reduce the length of the messages.",
                     c->sc.ctx_limit, (long long)ptok);
            e = json_pack("{s:{s:s,s:s,s:s,s:s}}", "error", "message", msg, "type",
                          "invalid_request_error", "param", "messages", "code",
                          "context_length_exceeded");
        } else {
            snprintf(msg, sizeof msg, "prompt is too long: %lld tokens > %d maximum",
                     (long long)ptok, c->sc.ctx_limit);
            e = json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error", "type",
                          "invalid_request_error", "message", msg);
        }
        c->body = json_dumps(e, JSON_COMPACT);
        c->body_len = strlen(c->body);
        json_decref(e);
    } else if (c->sc.status != 0 && c->sc.status != 200) {
        c->stream = false;
        c->status = c->sc.status;
        json_t *e =
            api == API_OPENAI ? openai_error_body(c->status) : anthropic_error_body(c->status);
        c->body = json_dumps(e, JSON_COMPACT);
        c->body_len = strlen(c->body);
        json_decref(e);
        struct evkeyvalq *h = evhttp_request_get_output_headers(req);
        char v[32];
        if (c->sc.retry_after_s >= 0) {
            snprintf(v, sizeof v, "%d", c->sc.retry_after_s);
            evhttp_add_header(h, "Retry-After", v);
        }
        if (c->sc.retry_after_ms >= 0) {
            snprintf(v, sizeof v, "%d", c->sc.retry_after_ms);
            evhttp_add_header(h, "retry-after-ms", v);
        }
    } else if (strcmp(path, "/embeddings") == 0) {
        json_t *e = embeddings(rq);
        c->body = json_dumps(e, JSON_COMPACT);
        c->body_len = strlen(c->body);
        json_decref(e);
    } else {
        plan_chat(c, rq, api);
    }
    json_decref(rq);
    bool simple = c->sc.delay_ms == 0 && !c->sc.reset && !c->stream && !c->sc.noanswer &&
                  c->sc.cut < 0 && c->sc.stall < 0;
    if (simple) { /* the fast path: answer now */
        send_simple(req, c->status, "application/json", c->body, c->body_len);
        rctx_free(c);
        return;
    }
    c->evcon = evhttp_request_get_connection(req);
    c->timer = evtimer_new(base, on_timer, c);
    evhttp_connection_set_closecb(c->evcon, on_conn_close, c);
    if (c->sc.noanswer)
        return; /* read, never answered: freed when the client gives up and closes */
    if (c->sc.delay_ms > 0)
        arm(c, c->sc.delay_ms);
    else
        step(c);
}

/* ---- server threads ---- */

struct server {
    pthread_t th;
    struct event_base *base;
    struct evhttp *http;
    int fd;
};

static struct event_base *g_main_base;

static int listen_socket(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -1;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == -1) {
        close(fd);
        return -1;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1 ||
        bind(fd, (struct sockaddr *)&a, sizeof a) == -1 || listen(fd, 4096) == -1) {
        close(fd);
        return -1;
    }
    return fd;
}

static void *server_main(void *arg)
{
    struct server *s = arg;
    event_base_dispatch(s->base);
    return NULL;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopbreak(g_main_base);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    long port = 0, threads = 1, maxrec = 1000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 1, 65535, &port) != 0)
                goto usage;
        } else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) {
            host = argv[++i];
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 1, 64, &threads) != 0)
                goto usage;
        } else if (strcmp(argv[i], "--max-record") == 0 && i + 1 < argc) {
            if (parse_int(argv[++i], 1, 1000000, &maxrec) != 0)
                goto usage;
        } else if (strcmp(argv[i], "--no-record") == 0) {
            g_record = false;
        } else {
            goto usage;
        }
    }
    if (port == 0)
        goto usage;
    g_max_record = (size_t)maxrec;
    g_log = json_array();
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();
    struct server *srv = calloc((size_t)threads, sizeof *srv);
    for (long t = 0; t < threads; t++) {
        srv[t].fd = listen_socket(host, (int)port);
        if (srv[t].fd == -1) {
            fprintf(stderr, "tg-fake-upstream: cannot listen on %s:%ld: %s\n", host, port,
                    strerror(errno));
            return 1;
        }
        srv[t].base = event_base_new();
        srv[t].http = evhttp_new(srv[t].base);
        evhttp_set_allowed_methods(srv[t].http,
                                   EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE);
        evhttp_set_max_body_size(srv[t].http, 64 * 1024 * 1024);
        evhttp_set_gencb(srv[t].http, on_request, srv[t].base);
        if (evhttp_accept_socket(srv[t].http, srv[t].fd) != 0) {
            fprintf(stderr, "tg-fake-upstream: evhttp_accept_socket failed\n");
            return 1;
        }
    }
    for (long t = 0; t < threads; t++)
        pthread_create(&srv[t].th, NULL, server_main, &srv[t]);
    g_main_base = event_base_new();
    struct event *sigterm = evsignal_new(g_main_base, SIGTERM, on_signal, NULL);
    struct event *sigint = evsignal_new(g_main_base, SIGINT, on_signal, NULL);
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);
    fprintf(stderr, "tg-fake-upstream: listening on %s:%ld (%ld threads)\n", host, port, threads);
    event_base_dispatch(g_main_base);
    for (long t = 0; t < threads; t++) {
        event_base_loopbreak(srv[t].base);
        pthread_join(srv[t].th, NULL);
        evhttp_free(srv[t].http);
        event_base_free(srv[t].base);
    }
    event_free(sigterm);
    event_free(sigint);
    event_base_free(g_main_base);
    free(srv);
    json_decref(g_log);
    for (size_t i = 0; i < g_queue_len; i++)
        free(g_queue[i]);
    free(g_queue);
    return 0;

usage:
    fprintf(stderr,
            "usage: tg-fake-upstream --port P [--host 127.0.0.1] [--threads N] [--no-record] "
            "[--max-record N]\n");
    return 2;
}
