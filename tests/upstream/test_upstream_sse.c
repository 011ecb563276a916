/* SSE parsing and stream translation, without the network: a provider stream is cut at every
 * byte position (and with CRLF line ends) and must give the same events; Anthropic events must
 * translate to the OpenAI chunks a client expects. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "upstream_int.h"

struct collect {
    char log[4096];
    int n;
};

static int on_event(void *ctx, const char *event, const char *data, size_t len)
{
    struct collect *c = ctx;
    size_t used = strlen(c->log);
    snprintf(c->log + used, sizeof c->log - used, "[%s|%.*s]", event != NULL ? event : "-",
             (int)len, data);
    c->n++;
    return 0;
}

static const char STREAM[] = "event: message_start\ndata: {\"a\":1}\n\n"
                             ": comment line\n\n"
                             "data: line one\ndata: line two\n\n"
                             "data:no-space\n\n"
                             "event: ping\ndata: {}\n\n";
static const char EXPECT[] = "[message_start|{\"a\":1}][-|line one\nline two][-|no-space][ping|{}]";

static void test_sse_split_everywhere(void **state)
{
    size_t n = strlen(STREAM);
    for (size_t cut = 0; cut <= n; cut++) {
        struct tg_buf pending;
        tg_buf_init(&pending, 1 << 16);
        struct collect c = {{0}, 0};
        assert_int_equal(up_sse_feed(&pending, STREAM, cut, on_event, &c), 0);
        assert_int_equal(up_sse_feed(&pending, STREAM + cut, n - cut, on_event, &c), 0);
        assert_string_equal(c.log, EXPECT);
        assert_int_equal(pending.len, 0);
        tg_buf_free(&pending);
    }
    /* byte by byte */
    struct tg_buf pending;
    tg_buf_init(&pending, 1 << 16);
    struct collect c = {{0}, 0};
    for (size_t i = 0; i < n; i++)
        assert_int_equal(up_sse_feed(&pending, STREAM + i, 1, on_event, &c), 0);
    assert_string_equal(c.log, EXPECT);
    tg_buf_free(&pending);
}

static void test_sse_crlf_and_limit(void **state)
{
    struct tg_buf pending;
    tg_buf_init(&pending, 1 << 16);
    struct collect c = {{0}, 0};
    const char *crlf = "data: x\r\n\r\nevent: e\r\ndata: y\r\n\r\n";
    assert_int_equal(up_sse_feed(&pending, crlf, strlen(crlf), on_event, &c), 0);
    assert_string_equal(c.log, "[-|x][e|y]");
    tg_buf_free(&pending);

    /* an event larger than the ceiling fails instead of growing without bound */
    tg_buf_init(&pending, 64);
    char big[200];
    memset(big, 'a', sizeof big);
    memcpy(big, "data: ", 6);
    assert_int_equal(up_sse_feed(&pending, big, sizeof big, on_event, &c), TG_TOOBIG);
    tg_buf_free(&pending);
}

struct chunks {
    json_t *all; /* array of chunks */
};

static int on_chunk(void *ctx, const json_t *chunk, const char *data, size_t len)
{
    struct chunks *k = ctx;
    json_t *re = json_loadb(data, len, 0, NULL);
    assert_non_null(re);
    assert_true(json_equal(re, (json_t *)chunk));
    json_array_append_new(k->all, re);
    return 0;
}

static void feed(struct up_stream *st, struct chunks *k, const char *event, const char *data)
{
    assert_int_equal(up_anthropic_event(st, event, data, strlen(data), on_chunk, k), 0);
}

static void test_anthropic_stream_translation(void **state)
{
    struct up_stream st;
    up_stream_init(&st);
    st.client_usage = true;
    struct chunks k = {json_array()};
    feed(&st, &k, "message_start",
         "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-x\","
         "\"usage\":"
         "{\"input_tokens\":10,\"cache_read_input_tokens\":4,\"output_tokens\":1}}}");
    feed(&st, &k, "content_block_start",
         "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
         "\"text\":\"\"}}");
    feed(&st, &k, "ping", "{\"type\":\"ping\"}");
    feed(&st, &k, "content_block_delta",
         "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
         "\"text\":\"Hi\"}}");
    feed(&st, &k, "content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}");
    feed(&st, &k, "content_block_start",
         "{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\","
         "\"id\":\"tu_1\","
         "\"name\":\"f\",\"input\":{}}}");
    feed(&st, &k, "content_block_delta",
         "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
         "\"partial_json\":\"{\\\"a\\\":\"}}");
    feed(&st, &k, "content_block_delta",
         "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\","
         "\"partial_json\":\"1}\"}}");
    feed(&st, &k, "message_delta",
         "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_"
         "tokens\":7}}");
    assert_false(st.done);
    feed(&st, &k, "message_stop", "{\"type\":\"message_stop\"}");
    assert_true(st.done);
    assert_null(st.error);
    assert_int_equal(st.usage.prompt_tokens, 14);
    assert_int_equal(st.usage.cached_tokens, 4);
    assert_int_equal(st.usage.completion_tokens, 7);
    assert_string_equal(st.finish, "tool_calls");

    json_t *want = json_loads(
        "[{\"id\":\"chatcmpl-msg_1\",\"object\":\"chat.completion.chunk\",\"model\":\"claude-x\","
        "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
        "\"logprobs\":null,\"finish_reason\":null}]},"
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"logprobs\":null,\"finish_"
        "reason\":null}]},"
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"tu_1\","
        "\"type\":\"function\","
        "\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":"
        "null}]},"
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{"
        "\"arguments\":"
        "\"{\\\"a\\\":\"}}]},\"logprobs\":null,\"finish_reason\":null}]},"
        "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{"
        "\"arguments\":\"1}\"}}]},"
        "\"logprobs\":null,\"finish_reason\":null}]},"
        "{\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_"
        "calls\"}]},"
        "{\"choices\":[],\"usage\":{\"prompt_tokens\":14,\"completion_tokens\":7,\"total_tokens\":"
        "21,"
        "\"prompt_tokens_details\":{\"cached_tokens\":4}}}]",
        0, NULL);
    assert_non_null(want);
    assert_int_equal(json_array_size(k.all), json_array_size(want));
    size_t i;
    json_t *w;
    json_array_foreach(want, i, w)
    {
        json_t *got = json_array_get(k.all, i);
        const char *key;
        json_t *v;
        json_object_foreach(w, key, v)
        {
            if (!json_equal(v, json_object_get(got, key))) {
                char *g = json_dumps(got, JSON_COMPACT);
                fail_msg("chunk %zu key %s: got %s", i, key, g);
            }
        }
        /* the same id and created in every chunk */
        assert_string_equal(json_string_value(json_object_get(got, "id")), "chatcmpl-msg_1");
        assert_true(json_equal(json_object_get(got, "created"),
                               json_object_get(json_array_get(k.all, 0), "created")));
    }
    json_decref(want);
    json_decref(k.all);
    up_stream_clear(&st);
}

static void test_stream_errors(void **state)
{
    struct up_stream st;
    up_stream_init(&st);
    struct chunks k = {json_array()};
    feed(&st, &k, "error",
         "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}"
         "}");
    assert_true(st.done);
    assert_non_null(st.error);
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(st.error, "error"), "message")),
               "Overloaded"));
    up_stream_clear(&st);
    /* garbage is a parse error, not a crash */
    assert_int_equal(up_anthropic_event(&st, NULL, "{nope", 5, on_chunk, &k), TG_PARSE);
    assert_int_equal(up_openai_event(&st, "[[[", 3, on_chunk, &k), TG_PARSE);
    assert_int_equal(up_openai_event(&st, "{\"error\":{\"message\":\"boom\"}}", 28, on_chunk, &k),
                     0);
    assert_non_null(st.error);
    assert_int_equal(up_openai_event(&st, "[DONE]", 6, on_chunk, &k), 0);
    assert_true(st.done);
    up_stream_clear(&st);
    json_decref(k.all);
}

static void test_error_bodies(void **state)
{
    const char *oa =
        "{\"error\":{\"message\":\"Incorrect API key provided: sk-abc***xyz\",\"type\":"
        "\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_key\"}}";
    json_t *e = up_error_from_body(TG_PROVIDER_OPENAI, 401, oa, strlen(oa), false);
    char *s = json_dumps(e, 0);
    assert_null(strstr(s, "sk-")); /* auth errors never carry the provider's text */
    free(s);
    json_decref(e);
    const char *an = "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
                     "\"message\":\"max_tokens too big\"}}";
    e = up_error_from_body(TG_PROVIDER_ANTHROPIC, 400, an, strlen(an), true);
    const json_t *in = json_object_get(e, "error");
    assert_string_equal(json_string_value(json_object_get(in, "type")), "invalid_request_error");
    assert_non_null(
        strstr(json_string_value(json_object_get(in, "message")), "max_tokens too big"));
    json_decref(e);
    e = up_error_from_body(TG_PROVIDER_OPENAI, 502, "<html>", 6, true);
    assert_string_equal(json_string_value(json_object_get(json_object_get(e, "error"), "type")),
                        "server_error");
    json_decref(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sse_split_everywhere),
        cmocka_unit_test(test_sse_crlf_and_limit),
        cmocka_unit_test(test_anthropic_stream_translation),
        cmocka_unit_test(test_stream_errors),
        cmocka_unit_test(test_error_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
