/* The real tiergate binary with the real engine on the tiny generated model and the scriptable
 * fake upstream (tests/fake-upstream) as the remote provider. Covers: chat (stream and not) on
 * the local tier, the remote tier and its fallback / all-failed error, models, completions,
 * responses, embeddings, classify / extract (output valid), route explain, every bad-input class
 * (right status, OpenAI error shape, process still serving), auth, a slowloris connection being
 * dropped, a client hang-up cancelling its engine job, and SIGTERM draining a stream then exit 0.
 * The data-driven proxy cases (tests/gateway/cases, one JSON file each) run in test_gateway_cases.c. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>

#include "gw_testenv.h"
#include "tg/schema.h"

static struct gw_env env;

static int setup(void **state)
{
    (void)state;
    return gw_env_start(&env, "", NULL, NULL) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    gw_env_stop(&env);
    return 0;
}

static json_t *json_body(const struct tg_test_response *r)
{
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, 0, &e);
    if (j == NULL)
        print_error("not JSON (%s): %.*s\n", e.text, (int)(r->body_len > 500 ? 500 : r->body_len), r->body);
    return j;
}

static void assert_header(const struct tg_test_response *r, const char *name, const char *want_prefix)
{
    char v[256];
    if (!tg_test_header(r, name, v, sizeof v)) {
        print_error("missing header %s in:\n%s\n", name, r->headers);
        fail();
    }
    if (want_prefix != NULL && strncmp(v, want_prefix, strlen(want_prefix)) != 0) {
        print_error("header %s = '%s', want '%s...'\n", name, v, want_prefix);
        fail();
    }
}

static void assert_tiergate_headers(const struct tg_test_response *r)
{
    static const char *names[] = {"x-request-id", "x-tiergate-tier", "x-tiergate-model",
                                  "x-tiergate-score", "x-tiergate-cache", "x-tiergate-cost-usd"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_header(r, names[i], NULL);
}

static void assert_openai_error(const struct tg_test_response *r, long status, const char *code)
{
    if (r->status != status)
        print_error("status %ld, want %ld; body %s\n", r->status, status, r->body);
    assert_int_equal(r->status, status);
    json_t *j = json_body(r);
    assert_non_null(j);
    json_t *e = json_object_get(j, "error");
    assert_true(json_is_object(e));
    assert_true(json_is_string(json_object_get(e, "message")));
    assert_true(json_is_string(json_object_get(e, "type")));
    assert_non_null(json_object_get(e, "param")); /* present, may be null */
    assert_non_null(json_object_get(e, "code"));
    if (code != NULL && strcmp(json_string_value(json_object_get(e, "code")), code) != 0) {
        print_error("code %s, want %s\n", json_string_value(json_object_get(e, "code")), code);
        fail();
    }
    json_decref(j);
}

/* Split an SSE body into its data payloads. Returns how many; fills out (strdup'd). */
static size_t sse_data(const char *body, char **out, size_t max)
{
    size_t n = 0;
    const char *p = body;
    while (p != NULL && *p != '\0' && n < max) {
        const char *line_end = strstr(p, "\n");
        size_t len = line_end != NULL ? (size_t)(line_end - p) : strlen(p);
        if (len > 6 && strncmp(p, "data: ", 6) == 0)
            out[n++] = strndup(p + 6, len - 6);
        p = line_end != NULL ? line_end + 1 : NULL;
    }
    return n;
}

/* ---- local tier ---- */

static void test_chat_local(void **state)
{
    (void)state;
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/chat/completions",
                             "{\"model\":\"phi-3.5-mini\",\"messages\":[{\"role\":\"user\",\"content\":"
                             "\"Say hi\"}],\"max_tokens\":6,\"temperature\":0}",
                             NULL, &r),
                     0);
    assert_int_equal(r.status, 200);
    assert_tiergate_headers(&r);
    assert_header(&r, "x-tiergate-tier", "local");
    assert_header(&r, "x-tiergate-model", "phi-3.5-mini; random-weights");
    json_t *j = json_body(&r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "chat.completion");
    assert_string_equal(json_string_value(json_object_get(j, "model")), "phi-3.5-mini");
    json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(c0, "message"), "role")),
                        "assistant");
    assert_true(json_is_string(json_object_get(json_object_get(c0, "message"), "content")));
    json_t *u = json_object_get(j, "usage");
    assert_true(json_integer_value(json_object_get(u, "prompt_tokens")) > 0);
    assert_true(json_integer_value(json_object_get(u, "completion_tokens")) > 0);
    assert_true(json_integer_value(json_object_get(u, "completion_tokens")) <= 6);
    json_decref(j);
    tg_test_response_free(&r);
}

static void test_chat_local_stream(void **state)
{
    (void)state;
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/chat/completions",
                             "{\"model\":\"phi-3.5-mini\",\"messages\":[{\"role\":\"user\",\"content\":"
                             "\"Say hi\"}],\"max_tokens\":5,\"stream\":true,"
                             "\"stream_options\":{\"include_usage\":true}}",
                             NULL, &r),
                     0);
    assert_int_equal(r.status, 200);
    assert_header(&r, "content-type", "text/event-stream");
    assert_tiergate_headers(&r);
    char *data[64] = {0};
    size_t n = sse_data(r.body, data, 64);
    assert_true(n >= 4); /* role chunk, >= 1 content, finish, usage, [DONE] */
    assert_string_equal(data[n - 1], "[DONE]");
    json_error_t e;
    json_t *first = json_loads(data[0], 0, &e);
    assert_non_null(first);
    const char *id = json_string_value(json_object_get(first, "id"));
    json_int_t created = json_integer_value(json_object_get(first, "created"));
    bool saw_finish = false;
    for (size_t i = 0; i + 1 < n; i++) {
        json_t *c = json_loads(data[i], 0, &e);
        assert_non_null(c);
        assert_string_equal(json_string_value(json_object_get(c, "object")), "chat.completion.chunk");
        assert_string_equal(json_string_value(json_object_get(c, "id")), id);
        assert_int_equal(json_integer_value(json_object_get(c, "created")), created);
        json_t *fr = json_object_get(json_array_get(json_object_get(c, "choices"), 0), "finish_reason");
        if (json_is_string(fr))
            saw_finish = true;
        if (i == n - 2) { /* usage chunk: choices [] */
            assert_int_equal(json_array_size(json_object_get(c, "choices")), 0);
            assert_true(json_integer_value(json_object_get(json_object_get(c, "usage"), "completion_tokens")) > 0);
        }
        json_decref(c);
    }
    assert_true(saw_finish);
    json_decref(first);
    for (size_t i = 0; i < n; i++)
        free(data[i]);
    tg_test_response_free(&r);
}

static void test_completions_and_responses(void **state)
{
    (void)state;
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/completions",
                             "{\"model\":\"phi-3.5-mini\",\"prompt\":\"Once upon\",\"max_tokens\":4}", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    json_t *j = json_body(&r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "text_completion");
    assert_true(json_is_string(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")));
    json_decref(j);
    tg_test_response_free(&r);

    assert_int_equal(gw_post(&env, "/v1/responses",
                             "{\"model\":\"phi-3.5-mini\",\"input\":\"hello\",\"instructions\":\"be brief\","
                             "\"max_output_tokens\":4}", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "response");
    assert_string_equal(json_string_value(json_object_get(j, "status")), "completed");
    json_t *item = json_array_get(json_object_get(j, "output"), 0);
    assert_string_equal(json_string_value(json_object_get(item, "type")), "message");
    json_t *part = json_array_get(json_object_get(item, "content"), 0);
    assert_string_equal(json_string_value(json_object_get(part, "type")), "output_text");
    assert_true(json_integer_value(json_object_get(json_object_get(j, "usage"), "output_tokens")) > 0);
    json_decref(j);
    tg_test_response_free(&r);

    /* streamed legacy completions */
    assert_int_equal(gw_post(&env, "/v1/completions",
                             "{\"model\":\"phi-3.5-mini\",\"prompt\":\"Once\",\"max_tokens\":3,\"stream\":true}",
                             NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"object\":\"text_completion\""));
    assert_non_null(strstr(r.body, "data: [DONE]\n\n"));
    tg_test_response_free(&r);

    /* streamed responses: the event sequence the SDKs expect */
    assert_int_equal(gw_post(&env, "/v1/responses",
                             "{\"model\":\"phi-3.5-mini\",\"input\":[{\"role\":\"user\",\"content\":"
                             "[{\"type\":\"input_text\",\"text\":\"hi\"}]}],\"max_output_tokens\":3,"
                             "\"stream\":true}", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "event: response.created\n"));
    assert_non_null(strstr(r.body, "event: response.output_text.delta\n"));
    assert_non_null(strstr(r.body, "event: response.completed\n"));
    tg_test_response_free(&r);
}

static void test_embeddings(void **state)
{
    (void)state;
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/embeddings", "{\"model\":\"auto\",\"input\":[\"first\",\"second text\"]}",
                             NULL, &r), 0);
    assert_int_equal(r.status, 200);
    json_t *j = json_body(&r);
    json_t *data = json_object_get(j, "data");
    assert_int_equal(json_array_size(data), 2);
    for (size_t i = 0; i < 2; i++) {
        json_t *d = json_array_get(data, i);
        assert_int_equal(json_integer_value(json_object_get(d, "index")), (json_int_t)i);
        json_t *v = json_object_get(d, "embedding");
        assert_true(json_array_size(v) > 8);
        double norm = 0;
        for (size_t k = 0; k < json_array_size(v); k++)
            norm += json_real_value(json_array_get(v, k)) * json_real_value(json_array_get(v, k));
        assert_true(norm > 0.98 && norm < 1.02); /* L2-normalised */
    }
    json_decref(j);
    tg_test_response_free(&r);
    /* base64 (the openai SDK's default) */
    assert_int_equal(gw_post(&env, "/v1/embeddings", "{\"input\":\"x\",\"encoding_format\":\"base64\"}", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    const char *b64 = json_string_value(json_object_get(json_array_get(json_object_get(j, "data"), 0), "embedding"));
    assert_non_null(b64);
    assert_int_equal(strlen(b64) % 4, 0);
    json_decref(j);
    tg_test_response_free(&r);
}

static void test_classify_extract(void **state)
{
    (void)state;
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/classify",
                             "{\"model\":\"phi-3.5-mini\",\"text\":\"The invoice is overdue\","
                             "\"labels\":[\"billing\",\"support\",\"sales\"]}", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_tiergate_headers(&r);
    json_t *j = json_body(&r);
    const char *label = json_string_value(json_object_get(j, "label"));
    assert_non_null(label);
    assert_true(strcmp(label, "billing") == 0 || strcmp(label, "support") == 0 || strcmp(label, "sales") == 0);
    /* Random weights give low confidence: the policy may escalate it to the remote tier, and
     * then the response must say so. */
    const char *tier = json_string_value(json_object_get(j, "tier"));
    if (strcmp(tier, "local") == 0) {
        double conf = json_real_value(json_object_get(j, "confidence"));
        assert_true(conf > 0 && conf <= 1);
    } else {
        assert_string_equal(tier, "remote");
        assert_header(&r, "x-tiergate-escalated", "true");
        assert_true(json_is_true(json_object_get(j, "escalated")));
    }
    assert_true(json_is_number(json_object_get(j, "cost_usd")));
    assert_true(json_is_object(json_object_get(j, "usage")));
    json_decref(j);
    tg_test_response_free(&r);

    assert_int_equal(gw_post(&env, "/v1/classify",
                             "{\"model\":\"phi-3.5-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"red and blue\"}],"
                             "\"labels\":[\"red\",\"blue\",\"green\"],\"multi_label\":true}", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    json_t *labels = json_object_get(j, "labels");
    assert_true(json_is_array(labels));
    json_decref(j);
    tg_test_response_free(&r);

    const char *schema = "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
                         "\"age\":{\"type\":\"integer\"},\"tier\":{\"enum\":[\"gold\",\"silver\"]}},"
                         "\"required\":[\"name\",\"age\",\"tier\"],\"additionalProperties\":false}";
    char body[1024];
    snprintf(body, sizeof body, "{\"model\":\"phi-3.5-mini\",\"text\":\"Ann, 31, gold member\",\"schema\":%s}", schema);
    assert_int_equal(gw_post(&env, "/v1/extract", body, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    struct tg_schema *s = NULL;
    assert_int_equal(tg_schema_compile_text(schema, strlen(schema), &s, NULL, 0), 0);
    char err[256];
    bool ok = tg_schema_validate(s, json_object_get(j, "data"), err, sizeof err);
    if (!ok)
        print_error("extract data invalid: %s\n", err);
    assert_true(ok);
    json_decref(j);
    tg_test_response_free(&r);

    /* chat with response_format json_schema on the local tier: content valid against it */
    snprintf(body, sizeof body,
             "{\"model\":\"phi-3.5-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Ann, 31, gold\"}],"
             "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"p\",\"schema\":%s}}}",
             schema);
    assert_int_equal(gw_post(&env, "/v1/chat/completions", body, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    const char *content = json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message"), "content"));
    assert_non_null(content);
    char served[32];
    assert_true(tg_test_header(&r, "x-tiergate-tier", served, sizeof served));
    if (strcmp(served, "local") == 0) {
        ok = tg_schema_validate_text(s, content, strlen(content), err, sizeof err);
        if (!ok)
            print_error("chat json_schema content invalid: %s: %s\n", err, content);
        assert_true(ok);
    } else {
        assert_header(&r, "x-tiergate-escalated", "true");
    }
    json_decref(j);
    tg_test_response_free(&r);
    tg_schema_free(s);
}

static void test_models_and_explain(void **state)
{
    (void)state;
    struct tg_test_response r;
    assert_int_equal(gw_get(&env, "/v1/models", &r), 0);
    assert_int_equal(r.status, 200);
    json_t *j = json_body(&r);
    assert_string_equal(json_string_value(json_object_get(j, "object")), "list");
    bool auto_seen = false, remote_seen = false;
    size_t i;
    json_t *m;
    json_array_foreach(json_object_get(j, "data"), i, m)
    {
        assert_string_equal(json_string_value(json_object_get(m, "object")), "model");
        auto_seen = auto_seen || strcmp(json_string_value(json_object_get(m, "id")), "auto") == 0;
        remote_seen = remote_seen || strcmp(json_string_value(json_object_get(m, "id")), "gpt-fake") == 0;
    }
    assert_true(auto_seen && remote_seen);
    json_decref(j);
    tg_test_response_free(&r);
    assert_int_equal(gw_get(&env, "/v1/models/gpt-fake", &r), 0);
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);
    assert_int_equal(gw_get(&env, "/v1/models/nope", &r), 0);
    assert_openai_error(&r, 404, "model_not_found");
    tg_test_response_free(&r);

    assert_int_equal(gw_post(&env, "/v1/route/explain",
                             "{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":"
                             "\"Prove that there are infinitely many primes.\"}]}", NULL, &r), 0);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    assert_true(json_is_number(json_object_get(j, "score")));
    assert_true(json_is_object(json_object_get(j, "decision")));
    json_decref(j);
    tg_test_response_free(&r);
}

/* ---- remote tier ---- */

static void test_remote(void **state)
{
    (void)state;
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/chat/completions",
                             "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                             NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_header(&r, "x-tiergate-tier", "remote");
    assert_header(&r, "x-tiergate-model", "gpt-fake");
    json_t *j = json_body(&r);
    json_t *msg = json_object_get(json_array_get(json_object_get(j, "choices"), 0), "message");
    assert_string_equal(json_string_value(json_object_get(msg, "content")), "Hello from the fake upstream.");
    json_decref(j);
    assert_null(strstr(r.headers, "sk-fake-provider-key"));
    char cost[64];
    assert_true(tg_test_header(&r, "x-tiergate-cost-usd", cost, sizeof cost));
    assert_true(strtod(cost, NULL) > 0);
    tg_test_response_free(&r);

    /* streamed through, byte for byte, with [DONE] */
    assert_int_equal(gw_post(&env, "/v1/chat/completions",
                             "{\"model\":\"gpt-fake\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                             NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "fake"));
    assert_non_null(strstr(r.body, "chat.completion.chunk"));
    assert_non_null(strstr(r.body, "data: [DONE]\n\n"));
    tg_test_response_free(&r);

    /* the provider cuts the stream after it started: the client gets data: {"error":...} */
    assert_int_equal(gw_post(&env, "/v1/chat/completions",
                             "{\"model\":\"gpt-cut\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                             NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "data: {\"error\":{"));
    tg_test_response_free(&r);

    /* the first target fails: the fallback answers and the header says so */
    assert_int_equal(gw_post(&env, "/v1/chat/completions",
                             "{\"model\":\"gpt-broken\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                             NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_header(&r, "x-tiergate-fallback", "1");
    assert_header(&r, "x-tiergate-model", "gpt-fake");
    tg_test_response_free(&r);

    /* everything failed: OpenAI-shaped error, x-should-retry: false */
    assert_int_equal(gw_post(&env, "/v1/chat/completions",
                             "{\"model\":\"gpt-dead\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                             NULL, &r), 0);
    assert_true(r.status >= 500);
    assert_openai_error(&r, r.status, NULL);
    assert_header(&r, "x-should-retry", "false");
    assert_null(strstr(r.body, "sk-fake-provider-key")); /* provider keys never leak */
    tg_test_response_free(&r);

    /* task API on the remote tier: structured output, validated */
    assert_int_equal(gw_post(&env, "/v1/classify",
                             "{\"model\":\"gpt-fake\",\"text\":\"refund please\",\"labels\":[\"billing\",\"other\"]}",
                             NULL, &r), 0);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    assert_string_equal(json_string_value(json_object_get(j, "tier")), "remote");
    assert_non_null(json_string_value(json_object_get(j, "label")));
    json_decref(j);
    tg_test_response_free(&r);
    assert_int_equal(gw_post(&env, "/v1/extract",
                             "{\"model\":\"gpt-fake\",\"text\":\"Bob is 7\",\"schema\":{\"type\":\"object\","
                             "\"properties\":{\"age\":{\"type\":\"integer\"}},\"required\":[\"age\"]}}",
                             NULL, &r), 0);
    assert_int_equal(r.status, 200);
    j = json_body(&r);
    assert_true(json_is_integer(json_object_get(json_object_get(j, "data"), "age")));
    json_decref(j);
    tg_test_response_free(&r);
}

/* ---- bad input: a row per class ---- */

struct bad_case {
    const char *method, *path, *body, *header;
    long status;
    const char *code;
};

static const struct bad_case bad_cases[] = {
    {"POST", "/v1/chat/completions", "{not json", NULL, 400, "invalid_json"},
    {"POST", "/v1/chat/completions", "[1,2]", NULL, 400, "invalid_json"},
    {"POST", "/v1/chat/completions", "", NULL, 400, "invalid_json"},
    {"POST", "/v1/chat/completions", "{\"model\":\"auto\"}", NULL, 400, "missing_required_parameter"},
    {"POST", "/v1/chat/completions", "{\"messages\":\"hi\"}", NULL, 400, "invalid_type"},
    {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", NULL, 400, "invalid_value"},
    {"POST", "/v1/chat/completions", "{\"model\":7,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", NULL, 400, "invalid_type"},
    {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}", NULL, 400, "invalid_type"},
    {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":0}", NULL, 400, "invalid_value"},
    {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}", NULL, 400, "invalid_type"},
    {"POST", "/v1/chat/completions", "{\"model\":\"no-such-model\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", NULL, 404, "model_not_found"},
    {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "X-Tiergate-Tier: sideways", 400, "invalid_value"},
    {"POST", "/v1/classify", "{\"text\":\"x\"}", NULL, 400, "missing_required_parameter"},
    {"POST", "/v1/classify", "{\"text\":\"x\",\"labels\":[]}", NULL, 422, "invalid_labels"},
    {"POST", "/v1/classify", "{\"text\":\"x\",\"labels\":[\"a\",\"a\"]}", NULL, 422, "invalid_labels"},
    {"POST", "/v1/classify", "{\"text\":\"x\",\"labels\":[\"a\",3]}", NULL, 400, "invalid_type"},
    {"POST", "/v1/classify", "{\"labels\":[\"a\",\"b\"]}", NULL, 400, "missing_required_parameter"},
    {"POST", "/v1/extract", "{\"text\":\"x\",\"schema\":\"object\"}", NULL, 400, "invalid_type"},
    {"POST", "/v1/extract", "{\"text\":\"x\",\"schema\":{\"oneOf\":[]}}", NULL, 422, "invalid_schema"},
    {"POST", "/v1/extract", "{\"text\":\"x\",\"schema\":{\"type\":\"thing\"}}", NULL, 422, "invalid_schema"},
    {"POST", "/v1/embeddings", "{\"input\":[1,2,3]}", NULL, 400, "invalid_value"},
    {"POST", "/v1/embeddings", "{}", NULL, 400, "missing_required_parameter"},
    {"POST", "/v1/responses", "{\"input\":[{\"type\":\"function_call\"}]}", NULL, 400, "unsupported_value"},
    {"POST", "/v1/completions", "{\"prompt\":5}", NULL, 400, "invalid_type"},
    {"POST", "/v1/nothing-here", "{}", NULL, 404, "unknown_url"},
    {"GET", "/v1/chat/completions", NULL, NULL, 405, "method_not_allowed"},
    {"POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "Authorization: Bearer wrong", 401, "invalid_api_key"},
};

static void test_bad_input(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const struct bad_case *c = &bad_cases[i];
        const char *hdrs[3] = {c->header != NULL && strncmp(c->header, "Authorization", 13) == 0
                                   ? c->header : env.auth_header,
                               c->header != NULL && strncmp(c->header, "Authorization", 13) != 0
                                   ? c->header : NULL,
                               NULL};
        char url[256];
        snprintf(url, sizeof url, "%s%s", env.base, c->path);
        struct tg_test_response r;
        assert_int_equal(tg_test_http(c->method, url, hdrs, c->body, &r), 0);
        if (r.status != c->status)
            print_error("case %zu: %s %s %s\n", i, c->method, c->path, c->body != NULL ? c->body : "");
        assert_openai_error(&r, c->status, c->code);
        assert_header(&r, "x-request-id", NULL);
        tg_test_response_free(&r);
    }
    /* oversized body: 413, OpenAI-shaped */
    size_t n = env.max_body + 1000;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    big[0] = '{';
    big[n - 1] = '}';
    big[n] = '\0';
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/chat/completions", big, NULL, &r), 0);
    assert_openai_error(&r, 413, "request_too_large");
    tg_test_response_free(&r);
    free(big);
    /* still serving */
    assert_int_equal(gw_get(&env, "/healthz", &r), 0);
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);
}

static void test_auth(void **state)
{
    (void)state;
    const char *no_key[] = {NULL};
    char url[256];
    snprintf(url, sizeof url, "%s/v1/models", env.base);
    struct tg_test_response r;
    assert_int_equal(tg_test_http("GET", url, no_key, NULL, &r), 0);
    assert_openai_error(&r, 401, "invalid_api_key");
    tg_test_response_free(&r);
    assert_int_equal(gw_get(&env, "/v1/models", &r), 0); /* with the key */
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);
    /* a client request id is echoed */
    const char *hdrs[] = {env.auth_header, "X-Request-Id: my-id-123", NULL};
    assert_int_equal(tg_test_http("GET", url, hdrs, NULL, &r), 0);
    assert_header(&r, "x-request-id", "my-id-123");
    tg_test_response_free(&r);
}

/* ---- connections ---- */

static int raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

static void test_slowloris(void **state)
{
    (void)state;
    int fd = raw_connect(env.port);
    const char *start = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n";
    assert_int_equal(send(fd, start, strlen(start), 0), (ssize_t)strlen(start));
    /* one header line every 200 ms: never idle long enough for an inactivity timeout, but the
     * request never completes; header_timeout_ms is 1000 in this config */
    bool dropped = false;
    for (int i = 0; i < 100 && !dropped; i++) {
        usleep(200000);
        if (send(fd, "X-Slow: 1\r\n", 11, MSG_NOSIGNAL) == -1)
            dropped = true;
        char c;
        ssize_t k = recv(fd, &c, 1, MSG_DONTWAIT);
        if (k == 0 || (k == -1 && errno != EAGAIN && errno != EWOULDBLOCK))
            dropped = true;
    }
    close(fd);
    assert_true(dropped);
}


struct overhead_snap {
    double count, sum;
};

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* n chat requests to gpt-fake, one after another; the seconds they took as the client saw them
 * (request written to reply read: an upper bound for anything the gateway measures inside). */
static double remote_chats(int n)
{
    const char *body = "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    double total = 0;
    for (int i = 0; i < n; i++) {
        struct tg_test_response r;
        double t0 = mono_now();
        assert_int_equal(gw_post(&env, "/v1/chat/completions", body, NULL, &r), 0);
        total += mono_now() - t0;
        assert_int_equal(r.status, 200);
        tg_test_response_free(&r);
    }
    return total;
}

static void overhead_snap(struct overhead_snap *o)
{
    struct tg_test_response m;
    assert_int_equal(gw_get(&env, "/metrics", &m), 0);
    assert_int_equal(m.status, 200);
    o->count = tg_test_metric_value(m.body, "tiergate_gateway_overhead_seconds_count");
    o->sum = tg_test_metric_value(m.body, "tiergate_gateway_overhead_seconds_sum");
    tg_test_response_free(&m);
}

/* tiergate_gateway_overhead_seconds: one sample per proxied remote reply; it moves; it is bounded
 * by the requests' duration as the client saw it, and leaves the provider's wait (300 ms each
 * in the second round) out. */
static void test_overhead_metric(void **state)
{
    (void)state;
    struct overhead_snap a, b, c;
    overhead_snap(&a);
    if (a.count < 0) /* no remote reply yet in this process: the family has no series */
        a.count = a.sum = 0;
    double seen = remote_chats(5);
    overhead_snap(&b);
    assert_true(b.count == a.count + 5);
    assert_true(b.sum > a.sum); /* it moves */
    assert_true(b.sum - a.sum <= seen);

    /* the fake waits 300 ms before each of the next three answers: that wait is not ours */
    char url[128];
    snprintf(url, sizeof url, "%s/_script", env.fake_base);
    struct tg_test_response sr;
    assert_int_equal(tg_test_http("POST", url, NULL,
                                  "[\"delay_ms=300\",\"delay_ms=300\",\"delay_ms=300\"]", &sr), 0);
    assert_int_equal(sr.status, 200);
    tg_test_response_free(&sr);
    seen = remote_chats(3);
    overhead_snap(&c);
    assert_true(c.count == b.count + 3);
    assert_true(c.sum > b.sum);
    assert_true(seen >= 3 * 0.3);
    assert_true(c.sum - b.sum <= seen - 3 * 0.3);

    /* streams and local answers are not proxied replies: no sample */
    struct tg_test_response r;
    assert_int_equal(gw_post(&env, "/v1/chat/completions",
                             "{\"model\":\"gpt-fake\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                             NULL, &r), 0);
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);
    struct overhead_snap d;
    overhead_snap(&d);
    assert_true(d.count == c.count);
}

static void test_disconnect_cancels(void **state)
{
    (void)state;
    int fd = raw_connect(env.port);
    char req[512];
    const char *body = "{\"model\":\"phi-3.5-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"go on\"}],"
                       "\"max_tokens\":1500}";
    snprintf(req, sizeof req,
             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%s\r\nContent-Length: %zu\r\n\r\n%s",
             env.auth_header, strlen(body), body);
    assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
    usleep(300000);
    close(fd);
    /* the gateway notices, cancels the engine job, and logs it */
    assert_true(gw_log_wait(&env, "client closed the connection; cancelling the request", 10000));
    assert_true(gw_log_wait(&env, "chat phi-3.5-mini tier=local model=phi-3.5-mini status=499", 10000));

    /* a stream the client walks away from: the engine slot is freed within 3 s, long before
     * the 4000 tokens would have been generated (even at 1 ms a token) */
    fd = raw_connect(env.port);
    body = "{\"model\":\"phi-3.5-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"go on\"}],"
           "\"max_tokens\":4000,\"stream\":true}";
    snprintf(req, sizeof req,
             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%s\r\nContent-Length: %zu\r\n\r\n%s",
             env.auth_header, strlen(body), body);
    assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
    char first[256];
    assert_true(recv(fd, first, sizeof first, 0) > 0); /* the stream has started */
    close(fd);
    bool freed = false;
    for (int i = 0; i < 30 && !freed; i++) {
        struct tg_test_response m;
        assert_int_equal(gw_get(&env, "/metrics", &m), 0);
        freed = strstr(m.body, "\ntiergate_engine_slots_busy 0\n") != NULL &&
                strstr(m.body, "\ntiergate_inflight_requests 0\n") != NULL;
        tg_test_response_free(&m);
        if (!freed)
            usleep(100000);
    }
    assert_true(freed);

    /* the same on the remote tier: the upstream transfer is dropped */
    fd = raw_connect(env.port);
    body = "{\"model\":\"gpt-slow\",\"messages\":[{\"role\":\"user\",\"content\":\"go on\"}]}";
    snprintf(req, sizeof req,
             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%s\r\nContent-Length: %zu\r\n\r\n%s",
             env.auth_header, strlen(body), body);
    assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
    usleep(300000);
    close(fd);
    /* well before the fake's 5 s delay is over */
    assert_true(gw_log_wait(&env, "chat gpt-slow tier=remote model=gpt-slow status=499", 3000));
}

static void test_sigterm_drain(void **state)
{
    (void)state;
    struct gw_env e2;
    assert_true(gw_env_start(&e2, "", NULL, NULL));
    /* a stream in flight when SIGTERM arrives still completes; then the process exits 0 */
    int fd = raw_connect(e2.port);
    char req[512];
    const char *body = "{\"model\":\"phi-3.5-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"go\"}],"
                       "\"max_tokens\":24,\"stream\":true}";
    snprintf(req, sizeof req,
             "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n%s\r\nContent-Length: %zu\r\n\r\n%s",
             e2.auth_header, strlen(body), body);
    assert_int_equal(send(fd, req, strlen(req), 0), (ssize_t)strlen(req));
    char buf[65536];
    size_t got = 0;
    /* wait for the first bytes of the stream, then ask the gateway to stop */
    while (got == 0) {
        ssize_t k = recv(fd, buf, sizeof buf - 1, 0);
        assert_true(k > 0);
        got += (size_t)k;
    }
    kill(e2.gw_pid, SIGTERM);
    for (;;) {
        ssize_t k = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (k <= 0)
            break;
        got += (size_t)k;
        buf[got] = '\0';
        if (strstr(buf, "data: [DONE]") != NULL && strstr(buf, "\r\n0\r\n\r\n") != NULL)
            break;
    }
    buf[got] = '\0';
    close(fd);
    if (strstr(buf, "data: [DONE]") == NULL)
        print_error("stream cut: %s\n", buf);
    assert_non_null(strstr(buf, "data: [DONE]"));
    int st = tg_test_stop(e2.gw_pid, 0, 30000);
    e2.gw_pid = 0;
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_true(gw_log_wait(&e2, "drained", 1000));
    gw_env_stop(&e2);
}

/* The engine at capacity (1 slot, 1 queued): a request it refuses falls back to the remote tier
 * and says so. */
struct busy_call {
    struct gw_env *env;
    struct tg_test_response r;
};

static void *busy_thread(void *arg)
{
    struct busy_call *c = arg;
    gw_post(c->env, "/v1/chat/completions",
            "{\"model\":\"phi-3.5-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"go\"}],"
            "\"max_tokens\":40}", NULL, &c->r);
    return NULL;
}

static void test_engine_busy_fallback(void **state)
{
    (void)state;
    struct gw_env e2;
    assert_true(gw_env_start(&e2, "", "  slots: 1\n  queue_max: 1\n  context: 2048\n", NULL));
    enum { N = 4 };
    struct busy_call calls[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        calls[i].env = &e2;
        memset(&calls[i].r, 0, sizeof calls[i].r);
        pthread_create(&th[i], NULL, busy_thread, &calls[i]);
    }
    int fell_back = 0, ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        if (calls[i].r.status == 200)
            ok++;
        char v[128];
        if (tg_test_header(&calls[i].r, "x-tiergate-fallback", v, sizeof v)) {
            fell_back++;
            char tier[32];
            assert_true(tg_test_header(&calls[i].r, "x-tiergate-tier", tier, sizeof tier));
            assert_string_equal(tier, "remote");
            assert_non_null(strstr(v, "reason="));
        }
        tg_test_response_free(&calls[i].r);
    }
    assert_int_equal(ok, N);      /* nobody got an error */
    assert_true(fell_back >= 1);  /* 1 running + 1 queued at most: the rest went remote */
    gw_env_stop(&e2);
}

/* SIGHUP with a broken policy file: logged with its line, the old snapshot keeps serving; a
 * fixed file is then taken. */
static void test_reload_bad_policy(void **state)
{
    (void)state;
    const char *good = "name: reload-test\nthreshold: 0.5\n";
    const char *policy = tg_test_write_temp("policy.yaml", good);
    char top[512];
    snprintf(top, sizeof top, "policy: %s\n", policy);
    struct gw_env e2;
    assert_true(gw_env_start(&e2, "", NULL, top));
    assert_true(gw_log_wait(&e2, "routing policy: reload-test", 2000));
    FILE *f = fopen(policy, "w");
    fputs("name: reload-test\nthreshold: [not a number\n", f);
    fclose(f);
    kill(e2.gw_pid, SIGHUP);
    assert_true(gw_log_wait(&e2, "keeping the current configuration", 5000));
    struct tg_test_response r;
    assert_int_equal(gw_post(&e2, "/v1/chat/completions",
                             "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
                             NULL, &r), 0);
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);
    f = fopen(policy, "w");
    fputs("name: reload-fixed\nthreshold: 0.4\n", f);
    fclose(f);
    kill(e2.gw_pid, SIGHUP);
    assert_true(gw_log_wait(&e2, "configuration reloaded", 5000));
    gw_env_stop(&e2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_local),
        cmocka_unit_test(test_chat_local_stream),
        cmocka_unit_test(test_completions_and_responses),
        cmocka_unit_test(test_embeddings),
        cmocka_unit_test(test_classify_extract),
        cmocka_unit_test(test_models_and_explain),
        cmocka_unit_test(test_remote),
        cmocka_unit_test(test_overhead_metric),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_slowloris),
        cmocka_unit_test(test_disconnect_cancels),
        cmocka_unit_test(test_sigterm_drain),
        cmocka_unit_test(test_reload_bad_policy),
        cmocka_unit_test(test_engine_busy_fallback),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
