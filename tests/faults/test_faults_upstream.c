/* Upstream fault suite (issue 9): the real tiergate binary against scripted fake providers
 * (tests/fake-upstream), one fault per table row, streaming and not, OpenAI-shaped and (where
 * cheap) Anthropic providers.
 *
 * Every row gets its own fake upstream process and its own two models (the primary and, when the
 * row has one, a fallback on a second provider pointing at the same fake), so rows run
 * concurrently without sharing a script queue, an attempt log, a circuit breaker or a metric
 * series. Per row the test checks the client-visible outcome (HTTP status, error type/code, body
 * shape, the last SSE data line, x-tiergate-model and x-tiergate-fallback), the attempts each
 * target received (the fake's GET /_requests, told apart by upstream model name), and that the
 * request was counted and charged exactly once (tiergate_requests_total and
 * tiergate_cost_usd_total of the row's models, before and after, against the usage the client
 * saw times the served model's price).
 *
 * Long faults run their real length on the fake (a first token after 20 s, a 30 s stall); the
 * gateway's first-byte and stream-idle timeouts (3 s here) resolve them. A 60 s flapping primary
 * (fails and succeeds by 4 s time windows) runs beside the rows and must be served throughout by
 * its fallback while the circuit breaker opens and probes.
 *
 * Prints an "observed outcome" table; docs/faults.md holds one from a real run. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "tg_testlib.h"

#ifndef TG_FAKE_UPSTREAM
#define TG_FAKE_UPSTREAM TG_BINARY_DIR "/tests/tg-fake-upstream"
#endif
#define TIERGATE TG_BINARY_DIR "/gateway/tiergate"
/* sha256("secret") */
#define KEY_SHA "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
#define AUTH "Authorization: Bearer secret"

#define CLIENT_TIMEOUT_MS 45000 /* a row's request taking longer than this is a hang */
#define FLAP_RUN_S 60
#define FLAP_WINDOW_MS 4000

/* Prices (USD per 1M tokens): primary and fallback differ, so a request charged on both (or
 * twice) cannot add up to the expected amount. */
#define P_IN 1
#define P_OUT 2
#define F_IN 3
#define F_OUT 5

enum outcome { OK, ERR, SSE_ERR }; /* 200 answer / JSON error / stream ending in an error event */

struct row {
    const char *fault;
    bool stream;
    bool anthropic;      /* the primary's provider kind (the fallback is always OpenAI-shaped) */
    const char *queue;   /* JSON array POSTed to the fake's /_script first (one-off faults) */
    const char *script;  /* the primary's upstream_model "script:<this>" (persistent faults) */
    bool fallback;       /* a fallback model is configured (plain answers, no context limit) */
    int retries;         /* the primary provider's retries */
    /* expected */
    enum outcome want;
    int status;
    const char *code;    /* error.code of the JSON error or SSE error event; NULL = not checked */
    bool served_fb;      /* x-tiergate-model is the fallback */
    const char *reason;  /* x-tiergate-fallback "1; reason=<this>", NULL = no header */
    int att_p, att_f;    /* attempts the fake saw on primary / fallback */
};

/* clang-format off */
static const struct row ROWS[] = {
    /* fault                        stream anth  queue                             script                          fb     retries  want    status code                  fb?    reason             p  f */
    {"429 + Retry-After: 1",        false, false, "[\"status=429;retry_after=1\"]", NULL,                        false, 1,       OK,     200, NULL,                    false, NULL,              2, 0},
    {"429 + Retry-After: 1",        true,  false, "[\"status=429;retry_after=1\"]", NULL,                        false, 1,       OK,     200, NULL,                    false, NULL,              2, 0},
    {"429, no Retry-After",         false, false, "[\"status=429\"]",             NULL,                          false, 1,       OK,     200, NULL,                    false, NULL,              2, 0},
    {"429, no Retry-After",         true,  false, "[\"status=429\"]",             NULL,                          false, 1,       OK,     200, NULL,                    false, NULL,              2, 0},
    {"429 persistent, no fallback", false, false, NULL,                           "status=429",                  false, 1,       ERR,    429, "http_429",              false, NULL,              2, 0},
    {"500 once",                    false, false, "[\"status=500\"]",             NULL,                          false, 1,       OK,     200, NULL,                    false, NULL,              2, 0},
    {"500 once",                    true,  false, "[\"status=500\"]",             NULL,                          false, 1,       OK,     200, NULL,                    false, NULL,              2, 0},
    {"503 persistent -> fallback",  false, false, NULL,                           "status=503",                  true,  1,       OK,     200, NULL,                    true,  "http_5xx",        2, 1},
    {"503 persistent -> fallback",  true,  false, NULL,                           "status=503",                  true,  1,       OK,     200, NULL,                    true,  "http_5xx",        2, 1},
    {"503 persistent, no fallback", false, false, NULL,                           "status=503",                  false, 1,       ERR,    503, "http_5xx",              false, NULL,              2, 0},
    {"503 persistent, no fallback", true,  false, NULL,                           "status=503",                  false, 1,       ERR,    503, "http_5xx",              false, NULL,              2, 0},
    {"TCP reset once",              false, false, "[\"reset\"]",                  NULL,                          false, 1,       OK,     200, NULL,                    false, NULL,              2, 0},
    {"TCP reset once",              true,  false, "[\"reset\"]",                  NULL,                          false, 1,       OK,     200, NULL,                    false, NULL,              2, 0},
    {"no response -> fallback",     false, false, NULL,                           "noanswer",                    true,  0,       OK,     200, NULL,                    true,  "timeout",         1, 1},
    {"no response -> fallback",     true,  false, NULL,                           "noanswer",                    true,  0,       OK,     200, NULL,                    true,  "timeout",         1, 1},
    {"no response, no fallback",    false, false, NULL,                           "noanswer",                    false, 0,       ERR,    504, "timeout",               false, NULL,              1, 0},
    {"no response, no fallback",    true,  false, NULL,                           "noanswer",                    false, 0,       ERR,    504, "timeout",               false, NULL,              1, 0},
    {"first token after 20 s",      false, false, NULL,                           "first_token_ms=20000",        true,  0,       OK,     200, NULL,                    true,  "timeout",         1, 1},
    {"first token after 20 s",      true,  false, NULL,                           "first_token_ms=20000",        true,  0,       OK,     200, NULL,                    true,  "timeout",         1, 1},
    {"cut after some tokens",       false, false, NULL,                           "cut=3",                       true,  1,       OK,     200, NULL,                    true,  "reset",           2, 1},
    {"cut after some tokens",       true,  false, NULL,                           "cut=3",                       true,  1,       SSE_ERR,200, "reset",                 false, NULL,              1, 0},
    {"30 s stall mid-answer",       false, false, NULL,                           "stall=3;stall_ms=30000",      true,  0,       OK,     200, NULL,                    true,  "timeout",         1, 1},
    {"30 s stall mid-answer",       true,  false, NULL,                           "stall=3;stall_ms=30000",      true,  0,       SSE_ERR,200, "timeout",               false, NULL,              1, 0},
    {"malformed chunk (first)",     true,  false, NULL,                           "malformed=0",                 true,  0,       OK,     200, NULL,                    true,  "parse",           1, 1},
    {"malformed chunk (mid-stream)",true,  false, NULL,                           "malformed=3",                 true,  0,       SSE_ERR,200, "parse",                 false, NULL,              1, 0},
    {"malformed body",              false, false, NULL,                           "malformed=0",                 true,  0,       OK,     200, NULL,                    true,  "parse",           1, 1},
    {"missing [DONE]",              true,  false, NULL,                           "nodone",                      true,  0,       SSE_ERR,200, "cut",                   false, NULL,              1, 0},
    {"missing [DONE] (n/a: JSON)",  false, false, NULL,                           "nodone",                      true,  0,       OK,     200, NULL,                    false, NULL,              1, 0},
    {"400 context length -> fb",    false, false, NULL,                           "ctx_limit=4",                 true,  1,       OK,     200, NULL,                    true,  "context_length",  1, 1},
    {"400 context length -> fb",    true,  false, NULL,                           "ctx_limit=4",                 true,  1,       OK,     200, NULL,                    true,  "context_length",  1, 1},
    {"400 context length, no fb",   false, false, NULL,                           "ctx_limit=4",                 false, 1,       ERR,    400, "context_length_exceeded", false, NULL,            1, 0},
    {"400 context length, no fb",   true,  false, NULL,                           "ctx_limit=4",                 false, 1,       ERR,    400, "context_length_exceeded", false, NULL,            1, 0},
    {"anthropic 429 once",          false, true,  "[\"status=429\"]",             NULL,                          false, 1,       OK,     200, NULL,                    false, NULL,              2, 0},
    {"anthropic 529 -> fallback",   true,  true,  NULL,                           "status=529",                  true,  0,       OK,     200, NULL,                    true,  "http_5xx",        1, 1},
    {"anthropic cut mid-stream",    true,  true,  NULL,                           "cut=5",                       true,  0,       SSE_ERR,200, "reset",                 false, NULL,              1, 0},
    {"anthropic malformed event",   true,  true,  NULL,                           "malformed=4",                 true,  0,       SSE_ERR,200, "parse",                 false, NULL,              1, 0},
    {"anthropic no message_stop",   true,  true,  NULL,                           "nodone",                      true,  0,       SSE_ERR,200, "cut",                   false, NULL,              1, 0},
    {"anthropic context length->fb",false, true,  NULL,                           "ctx_limit=4",                 true,  0,       OK,     200, NULL,                    true,  "context_length",  1, 1},
};
/* clang-format on */
#define N_ROWS (sizeof ROWS / sizeof ROWS[0])
#define FLAP N_ROWS /* the flap scenario uses the index after the rows */

/* ---- processes ---- */


static int g_gw_port;
static pid_t g_gw_pid;
static char g_gw_log[128];
static int g_fake_port[N_ROWS + 1];
static pid_t g_fake_pid[N_ROWS + 1];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- HTTP ---- */

/* One request with a bound (the "never a hang" check). Returns 0 when a response arrived; -1 and
 * *timed_out on a transport error / the bound. */
static int http(const char *method, int port, const char *path, const char *body, long timeout_ms,
                struct tg_test_response *out, bool *timed_out)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    const char *const h[] = {AUTH, "Content-Type: application/json", NULL};
    return tg_test_http_bounded(method, url, h, body, timeout_ms, out, timed_out);
}

/* ---- metrics ---- */

struct counts {
    long long requests;  /* tiergate_requests_total */
    long long cost_nano; /* tiergate_cost_usd_total, nano-dollars */
};

/* Sum the two families over the series whose model label is one of the row's models. */
static bool scrape(const char *m1, const char *m2, struct counts *c)
{
    memset(c, 0, sizeof *c);
    struct tg_test_response r;
    if (http("GET", g_gw_port, "/metrics", NULL, 10000, &r, NULL) != 0 || r.status != 200) {
        tg_test_response_free(&r);
        return false;
    }
    char l1[160], l2[160];
    snprintf(l1, sizeof l1, "model=\"%s\"", m1);
    snprintf(l2, sizeof l2, "model=\"%s\"", m2);
    for (char *line = r.body; line != NULL && *line != '\0';) {
        char *eol = strchr(line, '\n');
        if (eol != NULL)
            *eol = '\0';
        bool mine = strstr(line, l1) != NULL || strstr(line, l2) != NULL;
        const char *sp = strrchr(line, ' ');
        if (mine && sp != NULL) {
            double v = strtod(sp + 1, NULL);
            if (strncmp(line, "tiergate_requests_total{", 24) == 0)
                c->requests += llround(v);
            else if (strncmp(line, "tiergate_cost_usd_total{", 24) == 0)
                c->cost_nano += llround(v * 1e9);
        }
        line = eol != NULL ? eol + 1 : NULL;
    }
    tg_test_response_free(&r);
    return true;
}

/* tiergate_circuit_state{target="name"}: 0 closed, 1 half-open, 2 open; -1 unknown. */
static int circuit_state(const char *name)
{
    struct tg_test_response r;
    int state = -1;
    if (http("GET", g_gw_port, "/metrics", NULL, 10000, &r, NULL) == 0 && r.status == 200) {
        char key[192];
        snprintf(key, sizeof key, "tiergate_circuit_state{target=\"%s\"} ", name);
        const char *p = strstr(r.body, key);
        if (p != NULL)
            state = (int)strtol(p + strlen(key), NULL, 10);
    }
    tg_test_response_free(&r);
    return state;
}

/* ---- the fake's attempt log ---- */

static void fake_attempts(int idx, const char *up_primary, const char *up_fallback, int *p, int *f)
{
    *p = *f = -1;
    struct tg_test_response r;
    if (http("GET", g_fake_port[idx], "/_requests", NULL, 10000, &r, NULL) != 0) {
        tg_test_response_free(&r);
        return;
    }
    json_t *log = json_loads(r.body, 0, NULL);
    tg_test_response_free(&r);
    if (!json_is_array(log)) {
        json_decref(log);
        return;
    }
    *p = *f = 0;
    size_t i;
    json_t *e;
    json_array_foreach(log, i, e) {
        const char *model = json_string_value(json_object_get(json_object_get(e, "body"), "model"));
        if (model == NULL)
            continue;
        if (strcmp(model, up_primary) == 0)
            (*p)++;
        else if (strcmp(model, up_fallback) == 0)
            (*f)++;
    }
    json_decref(log);
}

/* ---- config ---- */

static void model_names(size_t i, char *primary, char *fallback, size_t len)
{
    if (i == FLAP) {
        snprintf(primary, len, "flap");
        snprintf(fallback, len, "flap-fb");
        return;
    }
    snprintf(primary, len, "row%02zu", i);
    snprintf(fallback, len, "row%02zu-fb", i);
}

/* The upstream model names the fake sees (how attempts are told apart in its log). */
static void upstream_names(size_t i, char *up_p, char *up_f, size_t len)
{
    if (i == FLAP)
        snprintf(up_p, len, "script:flap=%d", FLAP_WINDOW_MS);
    else if (ROWS[i].script != NULL)
        snprintf(up_p, len, "script:%s", ROWS[i].script);
    else
        snprintf(up_p, len, "primary-%02zu", i);
    snprintf(up_f, len, "fallback-%02zu", i);
}

struct sbuf {
    char *p;
    size_t n, cap;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int w = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        if (w >= 0 && (size_t)w < b->cap - b->n) {
            b->n += (size_t)w;
            return;
        }
        b->cap = b->cap * 2 + (size_t)(w > 0 ? w : 0) + 256;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
}

/* A provider pointing at fake idx. The timeouts are what the long faults resolve by. */
static void provider_yaml(struct sbuf *b, const char *name, bool anthropic, int port, int retries,
                          int circuit_failures, int circuit_open_ms)
{
    sb_printf(b,
              "  %s:\n"
              "    kind: %s\n"
              "    base_url: http://127.0.0.1:%d/v1\n"
              "    api_key: sk-fault-suite-key\n"
              "    connect_timeout_ms: 2000\n"
              "    first_byte_timeout_ms: 3000\n"
              "    stream_idle_timeout_ms: 3000\n"
              "    total_timeout_ms: 60000\n"
              "    retries: %d\n"
              "    retry_base_ms: 20\n"
              "    circuit_failures: %d\n"
              "    circuit_window_ms: 20000\n"
              "    circuit_open_ms: %d\n",
              name, anthropic ? "anthropic" : "openai", port, retries, circuit_failures,
              circuit_open_ms);
}

static char *write_config(void)
{
    struct sbuf b = {0};
    sb_printf(&b,
              "server:\n"
              "  listen: 127.0.0.1:%d\n"
              "  io_threads: 2\n"
              "  open_mode: false\n"
              "  drain_timeout_ms: 5000\n"
              "  log_level: info\n"
              "  api_keys:\n"
              "    - {name: faults, sha256: " KEY_SHA "}\n"
              "redis:\n  enabled: false\n"
              "local:\n  enabled: false\n"
              "cache:\n  enabled: false\n"
              "providers:\n",
              g_gw_port);
    char name[32];
    for (size_t i = 0; i < N_ROWS; i++) {
        snprintf(name, sizeof name, "p%02zu", i);
        provider_yaml(&b, name, ROWS[i].anthropic, g_fake_port[i], ROWS[i].retries, 1000, 15000);
        snprintf(name, sizeof name, "f%02zu", i);
        provider_yaml(&b, name, false, g_fake_port[i], 0, 1000, 15000);
    }
    /* the flapping primary: a breaker that opens after 2 failures and probes after 1.5 s */
    provider_yaml(&b, "pflap", false, g_fake_port[FLAP], 0, 2, 1500);
    provider_yaml(&b, "fflap", false, g_fake_port[FLAP], 0, 1000, 15000);
    sb_printf(&b, "models:\n");
    char mp[32], mf[32], up[128], uf[128], pp[32], pf[32];
    for (size_t i = 0; i <= N_ROWS; i++) {
        bool flap = i == FLAP;
        model_names(i, mp, mf, sizeof mp);
        upstream_names(i, up, uf, sizeof up);
        if (flap) {
            snprintf(pp, sizeof pp, "pflap");
            snprintf(pf, sizeof pf, "fflap");
        } else {
            snprintf(pp, sizeof pp, "p%02zu", i);
            snprintf(pf, sizeof pf, "f%02zu", i);
        }
        bool fb = flap || ROWS[i].fallback;
        sb_printf(&b,
                  "  - {name: %s, tier: remote, provider: %s, upstream_model: \"%s\", "
                  "input_usd_per_mtok: %d, output_usd_per_mtok: %d%s%s%s}\n",
                  mp, pp, up, P_IN, P_OUT, fb ? ", fallbacks: [" : "", fb ? mf : "",
                  fb ? "]" : "");
        sb_printf(&b,
                  "  - {name: %s, tier: remote, provider: %s, upstream_model: \"%s\", "
                  "input_usd_per_mtok: %d, output_usd_per_mtok: %d}\n",
                  mf, pf, uf, F_IN, F_OUT);
    }
    char *path = strdup(tg_test_write_temp("routes.yaml", b.p));
    free(b.p);
    return path;
}

/* ---- checking one answer ---- */

struct result {
    double elapsed;
    long status;
    bool hang;
    char served[64], fbhdr[96], cost_hdr[40], shape[96];
    int att_p, att_f;
    long long d_req, d_cost, want_cost;
    char fail[768]; /* empty = the row passed */
};

static void failf(struct result *r, const char *fmt, ...)
{
    size_t n = strlen(r->fail);
    if (n + 4 >= sizeof r->fail)
        return;
    if (n > 0) {
        memcpy(r->fail + n, "; ", 3);
        n += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->fail + n, sizeof r->fail - n, fmt, ap);
    va_end(ap);
}

static long long cost_nano(const json_t *usage, bool fallback)
{
    json_int_t pt = json_integer_value(json_object_get(usage, "prompt_tokens"));
    json_int_t ct = json_integer_value(json_object_get(usage, "completion_tokens"));
    /* USD per 1M tokens -> nano-dollars per token: x 1000 */
    return ((long long)pt * (fallback ? F_IN : P_IN) + (long long)ct * (fallback ? F_OUT : P_OUT)) *
           1000;
}

/* The data: payloads of an SSE body, in order (malloc'd array of malloc'd strings). */
static size_t sse_data_lines(const char *body, char ***out)
{
    size_t n = 0, cap = 16;
    char **v = malloc(cap * sizeof *v);
    for (const char *p = body; p != NULL && *p != '\0';) {
        const char *eol = strchr(p, '\n');
        size_t len = eol != NULL ? (size_t)(eol - p) : strlen(p);
        if (len >= 6 && strncmp(p, "data: ", 6) == 0) {
            if (n == cap)
                v = realloc(v, (cap *= 2) * sizeof *v);
            size_t l = len - 6;
            if (l > 0 && p[6 + l - 1] == '\r')
                l--;
            v[n++] = strndup(p + 6, l);
        }
        p = eol != NULL ? eol + 1 : NULL;
    }
    *out = v;
    return n;
}

/* Check the client-visible answer against want/status/code; sets r->shape and r->want_cost. */
static void check_answer(struct result *r, const struct tg_test_response *resp, bool stream,
                         enum outcome want, int status, const char *code, bool served_fb)
{
    r->want_cost = 0;
    if (resp->status != status)
        failf(r, "status %ld, want %d", resp->status, status);
    char ctype[128] = "";
    tg_test_header(resp, "content-type", ctype, sizeof ctype);
    bool sse = strstr(ctype, "text/event-stream") != NULL;
    if (want == ERR || !stream) {
        json_t *v = json_loads(resp->body, 0, NULL);
        if (!json_is_object(v) || sse) {
            failf(r, "body is not one JSON object (%.80s)", resp->body);
            snprintf(r->shape, sizeof r->shape, "unparsable body");
            json_decref(v);
            return;
        }
        if (want == ERR) {
            json_t *e = json_object_get(v, "error");
            const char *msg = json_string_value(json_object_get(e, "message"));
            const char *type = json_string_value(json_object_get(e, "type"));
            const char *c = json_string_value(json_object_get(e, "code"));
            if (msg == NULL || type == NULL)
                failf(r, "not an OpenAI-shaped error: %.120s", resp->body);
            if (code != NULL && (c == NULL || strcmp(c, code) != 0))
                failf(r, "error code %s, want %s", c != NULL ? c : "null", code);
            if (strstr(resp->body, "sk-fault-suite-key") != NULL)
                failf(r, "the provider key leaked into the error");
            snprintf(r->shape, sizeof r->shape, "JSON error %s/%s", type != NULL ? type : "?",
                     c != NULL ? c : "null");
        } else {
            const json_t *msg =
                json_object_get(json_array_get(json_object_get(v, "choices"), 0), "message");
            const char *content = json_string_value(json_object_get(msg, "content"));
            const json_t *usage = json_object_get(v, "usage");
            if (content == NULL || content[0] == '\0')
                failf(r, "no message content: %.120s", resp->body);
            if (!json_is_integer(json_object_get(usage, "prompt_tokens")))
                failf(r, "no usage in the answer");
            r->want_cost = cost_nano(usage, served_fb);
            snprintf(r->shape, sizeof r->shape, "chat.completion");
        }
        json_decref(v);
        return;
    }
    /* a stream */
    if (!sse)
        failf(r, "content-type %s for a stream", ctype);
    char **lines;
    size_t n = sse_data_lines(resp->body, &lines);
    size_t done = 0, content_chunks = 0;
    json_t *usage = NULL, *last_json = NULL;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(lines[i], "[DONE]") == 0) {
            done++;
            continue;
        }
        json_t *v = json_loads(lines[i], 0, NULL);
        if (v == NULL) {
            failf(r, "SSE data line %zu is not JSON: %.80s", i, lines[i]);
            continue;
        }
        const json_t *delta =
            json_object_get(json_array_get(json_object_get(v, "choices"), 0), "delta");
        const char *c = json_string_value(json_object_get(delta, "content"));
        if (c != NULL && c[0] != '\0')
            content_chunks++;
        if (json_is_object(json_object_get(v, "usage"))) {
            json_decref(usage);
            usage = json_incref(json_object_get(v, "usage"));
        }
        json_decref(last_json);
        last_json = v;
    }
    const char *last = n > 0 ? lines[n - 1] : "";
    if (want == OK) {
        if (done != 1 || strcmp(last, "[DONE]") != 0)
            failf(r, "stream does not end with exactly one [DONE] (last: %.60s)", last);
        if (content_chunks == 0)
            failf(r, "no content in the stream");
        if (usage == NULL)
            failf(r, "no usage chunk (include_usage was asked)");
        else
            r->want_cost = cost_nano(usage, served_fb);
        snprintf(r->shape, sizeof r->shape, "SSE, %zu content chunks, last: [DONE]",
                 content_chunks);
    } else {
        const json_t *e = json_object_get(last_json, "error");
        const char *c = json_string_value(json_object_get(e, "code"));
        if (done != 0)
            failf(r, "a failed stream carries [DONE]: it would look complete");
        if (!json_is_object(e) || strcmp(last, "[DONE]") == 0 || last_json == NULL ||
            strncmp(last, "{\"error\"", 8) != 0)
            failf(r, "the last SSE event is not an error (last: %.80s)", last);
        if (code != NULL && (c == NULL || strcmp(c, code) != 0))
            failf(r, "stream error code %s, want %s", c != NULL ? c : "null", code);
        if (content_chunks == 0)
            failf(r, "the fault was meant to hit a stream that had started");
        snprintf(r->shape, sizeof r->shape, "SSE, %zu content chunks, last: error %s, no [DONE]",
                 content_chunks, c != NULL ? c : "?");
    }
    json_decref(usage);
    json_decref(last_json);
    for (size_t i = 0; i < n; i++)
        free(lines[i]);
    free(lines);
}

static const char *request_body(const char *model, bool stream, char *buf, size_t len)
{
    snprintf(buf, len,
             "{\"model\":\"%s\",%s\"messages\":[{\"role\":\"user\",\"content\":\"Fault suite "
             "request for %s: answer in a few words.\"}]}",
             model, stream ? "\"stream\":true,\"stream_options\":{\"include_usage\":true}," : "",
             model);
    return buf;
}

/* Metrics are recorded when the answer ends; a scrape racing the last bytes waits a little. */
static void counts_after(const char *mp, const char *mf, const struct counts *before,
                         long long want_requests, struct counts *after)
{
    for (int i = 0; i < 60; i++) {
        if (scrape(mp, mf, after) && after->requests - before->requests >= want_requests)
            return;
        usleep(50000);
    }
}

/* ---- one row ---- */

static struct result g_res[N_ROWS];
static pthread_mutex_t g_print = PTHREAD_MUTEX_INITIALIZER;

static const char *outcome_text(const struct row *w, const struct result *r, char *buf, size_t len)
{
    if (r->hang)
        snprintf(buf, len, "HANG (no answer in %d s)", CLIENT_TIMEOUT_MS / 1000);
    else
        snprintf(buf, len, "%ld %s", r->status, r->shape);
    (void)w;
    return buf;
}

static void print_row(size_t i)
{
    const struct row *w = &ROWS[i];
    const struct result *r = &g_res[i];
    char out[160], charged[64];
    if (r->d_req == 1 && r->d_cost == r->want_cost)
        snprintf(charged, sizeof charged, "once, %lld n$", r->d_cost);
    else
        snprintf(charged, sizeof charged, "%lld req, %lld n$ (want %lld)", r->d_req, r->d_cost,
                 r->want_cost);
    printf("| %-30s | %-6s | %-60s | %-9s | %-24s | %d/%d | %-18s | %5.1f s | %s%s\n", w->fault,
           w->stream ? "stream" : "json", outcome_text(w, r, out, sizeof out), r->served,
           r->fbhdr[0] != '\0' ? r->fbhdr : "-", r->att_p, r->att_f, charged, r->elapsed,
           r->fail[0] == '\0' ? "PASS" : "FAIL: ", r->fail);
    fflush(stdout);
}

static void *row_main(void *arg)
{
    size_t i = (size_t)(uintptr_t)arg;
    const struct row *w = &ROWS[i];
    struct result *r = &g_res[i];
    char mp[32], mf[32], up[128], uf[128], body[512];
    model_names(i, mp, mf, sizeof mp);
    upstream_names(i, up, uf, sizeof up);
    struct tg_test_response resp;
    if (w->queue != NULL) {
        if (http("POST", g_fake_port[i], "/_script", w->queue, 10000, &resp, NULL) != 0 ||
            resp.status != 200)
            failf(r, "could not queue the script");
        tg_test_response_free(&resp);
    }
    struct counts before, after;
    if (!scrape(mp, mf, &before))
        failf(r, "/metrics failed before");
    double t0 = now_s();
    int rc = http("POST", g_gw_port, "/v1/chat/completions",
                  request_body(mp, w->stream, body, sizeof body), CLIENT_TIMEOUT_MS, &resp,
                  &r->hang);
    r->elapsed = now_s() - t0;
    r->status = resp.status;
    if (rc != 0 || r->hang) {
        failf(r, r->hang ? "no answer within %d s (a hang)" : "transport error (%d)",
              CLIENT_TIMEOUT_MS / 1000);
    } else {
        check_answer(r, &resp, w->stream, w->want, w->status, w->code, w->served_fb);
        if (!tg_test_header(&resp, "x-tiergate-model", r->served, sizeof r->served))
            failf(r, "no x-tiergate-model");
        else if (strcmp(r->served, w->served_fb ? mf : mp) != 0)
            failf(r, "served by %s, want %s", r->served, w->served_fb ? mf : mp);
        bool has_fb = tg_test_header(&resp, "x-tiergate-fallback", r->fbhdr, sizeof r->fbhdr);
        char want_fb[96];
        snprintf(want_fb, sizeof want_fb, "1; reason=%s", w->reason != NULL ? w->reason : "");
        if (w->reason == NULL && has_fb)
            failf(r, "unexpected x-tiergate-fallback: %s", r->fbhdr);
        else if (w->reason != NULL && (!has_fb || strcmp(r->fbhdr, want_fb) != 0))
            failf(r, "x-tiergate-fallback '%s', want '%s'", has_fb ? r->fbhdr : "(none)", want_fb);
        char retry[16] = "";
        if (w->want == ERR &&
            (!tg_test_header(&resp, "x-should-retry", retry, sizeof retry) ||
             strcmp(retry, "false") != 0))
            failf(r, "x-should-retry '%s' on a final error, want false", retry);
        tg_test_header(&resp, "x-tiergate-cost-usd", r->cost_hdr, sizeof r->cost_hdr);
        /* Streams send headers before the usage is known: "pending"; answers carry the cost. */
        if (w->stream && w->want != ERR) {
            if (strcmp(r->cost_hdr, "pending") != 0)
                failf(r, "stream cost header '%s'", r->cost_hdr);
        } else if (llround(strtod(r->cost_hdr, NULL) * 1e9) != r->want_cost) {
            failf(r, "x-tiergate-cost-usd %s, want %lld n$", r->cost_hdr, r->want_cost);
        }
    }
    tg_test_response_free(&resp);
    counts_after(mp, mf, &before, 1, &after);
    r->d_req = after.requests - before.requests;
    r->d_cost = after.cost_nano - before.cost_nano;
    if (r->d_req != 1)
        failf(r, "requests_total moved by %lld, want 1", r->d_req);
    if (r->d_cost != r->want_cost)
        failf(r, "cost_usd_total moved by %lld n$, want %lld n$ (charged once)", r->d_cost,
              r->want_cost);
    fake_attempts(i, up, uf, &r->att_p, &r->att_f);
    if (r->att_p != w->att_p || r->att_f != w->att_f)
        failf(r, "upstream attempts %d/%d, want %d/%d", r->att_p, r->att_f, w->att_p, w->att_f);
    pthread_mutex_lock(&g_print);
    print_row(i);
    pthread_mutex_unlock(&g_print);
    return NULL;
}

/* ---- the flapping primary ---- */

struct flap_mode {
    int requests, ok, errors, hangs, primary, fallback, by_5xx, by_circuit;
    long long want_cost;
    char first_error[256];
};

static struct flap_stats {
    struct flap_mode mode[2]; /* [0] JSON, [1] stream */
    int buckets[FLAP_RUN_S / 10];
    bool seen_state[3];
    int att_p, att_f;
    long long d_req, d_cost;
    double elapsed;
    char fail[512];
} g_flap;

static void *flap_main(void *arg)
{
    (void)arg;
    struct flap_stats *s = &g_flap;
    char mp[32], mf[32], up[128], uf[128], body[512];
    model_names(FLAP, mp, mf, sizeof mp);
    upstream_names(FLAP, up, uf, sizeof up);
    struct counts before, after;
    scrape(mp, mf, &before);
    double t0 = now_s(), last_scrape = 0;
    for (int k = 0; now_s() - t0 < FLAP_RUN_S; k++) {
        bool stream = k % 2 == 1;
        struct flap_mode *m = &s->mode[stream];
        struct tg_test_response resp;
        bool hang = false;
        m->requests++;
        int rc = http("POST", g_gw_port, "/v1/chat/completions",
                      request_body(mp, stream, body, sizeof body), CLIENT_TIMEOUT_MS, &resp, &hang);
        char served[64] = "", fb[96] = "";
        tg_test_header(&resp, "x-tiergate-model", served, sizeof served);
        bool by_fb = strcmp(served, mf) == 0;
        struct result r = {0};
        if (rc == 0)
            check_answer(&r, &resp, stream, OK, 200, NULL, by_fb);
        else
            failf(&r, hang ? "hang" : "transport error");
        if (r.fail[0] == '\0') {
            m->ok++;
            m->want_cost += r.want_cost;
            s->buckets[(int)((now_s() - t0) / 10) % (FLAP_RUN_S / 10)]++;
            if (by_fb)
                m->fallback++;
            else if (strcmp(served, mp) == 0)
                m->primary++;
            if (tg_test_header(&resp, "x-tiergate-fallback", fb, sizeof fb)) {
                if (strstr(fb, "reason=circuit_open") != NULL)
                    m->by_circuit++;
                else if (strstr(fb, "reason=http_5xx") != NULL)
                    m->by_5xx++;
            }
        } else {
            m->errors++;
            m->hangs += hang ? 1 : 0;
            if (m->first_error[0] == '\0')
                snprintf(m->first_error, sizeof m->first_error, "%.200s", r.fail);
        }
        tg_test_response_free(&resp);
        if (now_s() - last_scrape > 0.25) {
            int st = circuit_state(mp);
            if (st >= 0 && st <= 2)
                s->seen_state[st] = true;
            last_scrape = now_s();
        }
        usleep(100000);
    }
    s->elapsed = now_s() - t0;
    counts_after(mp, mf, &before, s->mode[0].requests + s->mode[1].requests, &after);
    s->d_req = after.requests - before.requests;
    s->d_cost = after.cost_nano - before.cost_nano;
    fake_attempts(FLAP, up, uf, &s->att_p, &s->att_f);
    return NULL;
}

static void print_flap(void)
{
    const struct flap_stats *s = &g_flap;
    for (int st = 0; st < 2; st++) {
        const struct flap_mode *m = &s->mode[st];
        printf("| %-30s | %-6s | %3d requests: %d ok, %d errors; by primary %d, by fallback %d "
               "(http_5xx %d, circuit_open %d) | %s\n",
               "primary flapping 60 s (4 s)", st ? "stream" : "json", m->requests, m->ok,
               m->errors, m->primary, m->fallback, m->by_5xx, m->by_circuit,
               m->errors == 0 ? "" : m->first_error);
    }
    printf("|   flap: circuit states seen closed=%d half-open=%d open=%d; primary attempts %d of "
           "%d requests, fallback attempts %d; answers per 10 s:",
           s->seen_state[0], s->seen_state[1], s->seen_state[2], s->att_p,
           s->mode[0].requests + s->mode[1].requests, s->att_f);
    for (int b = 0; b < FLAP_RUN_S / 10; b++)
        printf(" %d", s->buckets[b]);
    printf("; charged %lld requests, %lld n$ (want %lld)\n", s->d_req, s->d_cost,
           s->mode[0].want_cost + s->mode[1].want_cost);
    fflush(stdout);
}

static void check_flap(void)
{
    struct flap_stats *s = &g_flap;
    int requests = s->mode[0].requests + s->mode[1].requests;
    int primary = s->mode[0].primary + s->mode[1].primary;
    int fallback = s->mode[0].fallback + s->mode[1].fallback;
    int circuit = s->mode[0].by_circuit + s->mode[1].by_circuit;
    struct result r = {0};
    if (s->mode[0].errors + s->mode[1].errors != 0)
        failf(&r, "%d client-visible errors although a fallback exists",
              s->mode[0].errors + s->mode[1].errors);
    if (primary == 0 || fallback == 0)
        failf(&r, "served by primary %d / fallback %d: both must serve", primary, fallback);
    if (circuit == 0 || !s->seen_state[2])
        failf(&r, "the circuit breaker never opened (circuit_open fallbacks %d)", circuit);
    for (int b = 0; b < FLAP_RUN_S / 10; b++)
        if (s->buckets[b] == 0)
            failf(&r, "no answer in seconds %d-%d", b * 10, b * 10 + 10);
    if (s->att_p < 0 || s->att_p >= requests)
        failf(&r, "the primary saw %d attempts for %d requests: the breaker shed nothing",
              s->att_p, requests);
    if (s->d_req != requests)
        failf(&r, "requests_total moved by %lld for %d requests", s->d_req, requests);
    if (s->d_cost != s->mode[0].want_cost + s->mode[1].want_cost)
        failf(&r, "cost moved by %lld n$, want %lld", s->d_cost,
              s->mode[0].want_cost + s->mode[1].want_cost);
    snprintf(s->fail, sizeof s->fail, "%.500s", r.fail);
}

/* ---- the test ---- */

static void print_header(void)
{
    printf("| %-30s | %-6s | %-60s | %-9s | %-24s | p/f | %-18s | %7s | verdict\n", "fault",
           "mode", "observed outcome", "served by", "x-tiergate-fallback", "charged", "time");
}

static void test_upstream_faults(void **state)
{
    (void)state;
    assert_int_equal(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    char port[16], log[128];
    for (size_t i = 0; i <= N_ROWS; i++) {
        g_fake_port[i] = tg_test_free_port();
        snprintf(port, sizeof port, "%d", g_fake_port[i]);
        snprintf(log, sizeof log, "/tmp/tg-faults-fake-%d.log", g_fake_port[i]);
        char *argv[] = {TG_FAKE_UPSTREAM, "--port", port, NULL};
        unlink(log);
        g_fake_pid[i] = tg_test_spawn(argv, NULL, log);
        assert_true(g_fake_pid[i] > 0);
    }
    for (size_t i = 0; i <= N_ROWS; i++)
        assert_true(tg_test_wait_port(g_fake_port[i], 20000));
    g_gw_port = tg_test_free_port();
    char *cfg = write_config();
    assert_non_null(cfg);
    snprintf(g_gw_log, sizeof g_gw_log, "/tmp/tg-faults-gw-%d.log", g_gw_port);
    char *argv[] = {TIERGATE, "--config", cfg, NULL};
    unlink(g_gw_log);
    g_gw_pid = tg_test_spawn(argv, NULL, g_gw_log);
    bool ready = false;
    for (int i = 0; i < 600 && !ready; i++) {
        struct tg_test_response r;
        ready = http("GET", g_gw_port, "/readyz", NULL, 2000, &r, NULL) == 0 && r.status == 200;
        tg_test_response_free(&r);
        if (!ready)
            usleep(100000);
    }
    if (!ready) {
        char *l = tg_test_read_log(g_gw_log);
        print_error("tiergate did not become ready:\n%s\n", l);
        free(l);
    }
    assert_true(ready);

    printf("observed outcomes (gateway log %s):\n", g_gw_log);
    print_header();
    fflush(stdout);
    double t0 = now_s();
    pthread_t flap, th[N_ROWS];
    assert_int_equal(pthread_create(&flap, NULL, flap_main, NULL), 0);
    for (size_t i = 0; i < N_ROWS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, row_main, (void *)(uintptr_t)i), 0);
    for (size_t i = 0; i < N_ROWS; i++)
        pthread_join(th[i], NULL);
    double rows_s = now_s() - t0;
    pthread_join(flap, NULL);
    check_flap();

    /* the whole table again, in row order, for docs/faults.md */
    printf("\n### observed outcome table (rows %.1f s, all %.1f s wall)\n\n", rows_s,
           now_s() - t0);
    print_header();
    int failed = 0;
    for (size_t i = 0; i < N_ROWS; i++) {
        print_row(i);
        failed += g_res[i].fail[0] != '\0';
    }
    print_flap();
    if (g_flap.fail[0] != '\0') {
        printf("FLAP FAIL: %s\n", g_flap.fail);
        failed++;
    }

    /* The gateway survived all of it and stops cleanly. */
    struct tg_test_response r;
    assert_int_equal(http("GET", g_gw_port, "/healthz", NULL, 5000, &r, NULL), 0);
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);
    int st = tg_test_stop(g_gw_pid, SIGTERM, 30000);
    int fakes_bad = 0;
    for (size_t i = 0; i <= N_ROWS; i++) {
        /* a fake holding never-answered or stalled connections still exits cleanly (and, under
         * ASan, leak-free) */
        int fst = tg_test_stop(g_fake_pid[i], SIGTERM, 5000);
        snprintf(log, sizeof log, "/tmp/tg-faults-fake-%d.log", g_fake_port[i]);
        if (!(WIFEXITED(fst) && WEXITSTATUS(fst) == 0)) {
            char *l = tg_test_read_log(log);
            print_error("fake upstream %zu exit status %d; log:\n%s\n", i, fst, l);
            free(l);
            fakes_bad++;
        } else {
            unlink(log);
        }
    }
    assert_int_equal(fakes_bad, 0);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0)) {
        char *l = tg_test_read_log(g_gw_log);
        print_error("tiergate exit status %d; log:\n%s\n", st, l);
        free(l);
    }
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    if (failed == 0)
        unlink(g_gw_log);
    free(cfg);
    curl_global_cleanup();
    assert_int_equal(failed, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_upstream_faults)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
