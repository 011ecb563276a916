/* The engine wire codec: jobs, events and stats survive a JSON round trip; bad input gives a
 * clear error naming the field, never a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "net_proto.h"
#include "tg/err.h"

static void assert_str_eq_or_null(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        assert_ptr_equal(a, b);
    else
        assert_string_equal(a, b);
}

/* Encode → dump → parse → decode, and compare every field. */
static void roundtrip_job(const struct tg_engine_job *in)
{
    json_t *o = NULL;
    char err[256] = "";
    assert_int_equal(tg_net_job_encode(in, &o, err, sizeof(err)), TG_OK);
    char *txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    json_error_t jerr;
    json_t *back = json_loads(txt, 0, &jerr);
    free(txt);
    assert_non_null(back);
    struct tg_net_job nj;
    assert_int_equal(tg_net_job_decode(back, &nj, err, sizeof(err)), TG_OK);
    const struct tg_engine_job *j = &nj.job;
    assert_int_equal(j->kind, in->kind);
    assert_int_equal(j->n_messages, in->n_messages);
    for (size_t i = 0; i < in->n_messages; i++) {
        assert_string_equal(j->messages[i].role, in->messages[i].role);
        assert_string_equal(j->messages[i].content, in->messages[i].content);
    }
    assert_str_eq_or_null(j->prompt, in->prompt);
    assert_true(j->temperature == in->temperature);
    assert_true(j->top_p == in->top_p);
    assert_int_equal(j->top_k, in->top_k);
    assert_int_equal(j->seed, in->seed);
    assert_int_equal(j->max_tokens, in->max_tokens);
    assert_int_equal(j->n_stop, in->n_stop);
    for (size_t i = 0; i < in->n_stop; i++)
        assert_string_equal(j->stop[i], in->stop[i]);
    assert_int_equal(j->n_labels, in->n_labels);
    for (size_t i = 0; i < in->n_labels; i++)
        assert_string_equal(j->labels[i], in->labels[i]);
    assert_int_equal(j->multi_label, in->multi_label);
    assert_str_eq_or_null(j->instructions, in->instructions);
    assert_str_eq_or_null(j->schema_json, in->schema_json);
    assert_str_eq_or_null(j->grammar, in->grammar);
    assert_int_equal(j->stream, in->stream);
    tg_net_job_release(&nj);
    json_decref(back);
}

static void test_job_roundtrip(void **state)
{
    (void)state;
    static const struct tg_chat_msg msgs[] = {
        {"system", "You are terse."},
        {"user", "Say \"hi\"\n\tand \xC3\xA9t\xC3\xA9 \xF0\x9F\x98\x80"},
    };
    static const char *const stop[] = {"\n\n", "END"};
    static const char *const labels[] = {"positive", "negative", "neutral"};
    const struct tg_engine_job rows[] = {
        {.kind = TG_JOB_GENERATE, .messages = msgs, .n_messages = 2, .temperature = 0.7f,
         .top_p = 0.9f, .top_k = 40, .seed = 4000000000u, .max_tokens = 17, .stop = stop,
         .n_stop = 2, .stream = true},
        {.kind = TG_JOB_GENERATE, .prompt = "<|user|>\nraw<|end|>\n<|assistant|>\n",
         .grammar = "root ::= \"yes\" | \"no\""},
        {.kind = TG_JOB_CLASSIFY, .prompt = "great product", .labels = labels, .n_labels = 3,
         .multi_label = true, .instructions = "Sentiment.", .temperature = 1.0f},
        {.kind = TG_JOB_EXTRACT, .prompt = "Bob is 42",
         .schema_json = "{\"type\":\"object\",\"properties\":{\"age\":{\"type\":\"integer\"}}}"},
        {.kind = TG_JOB_EMBED, .prompt = ""},
        {.kind = TG_JOB_GENERATE}, /* all zero: stays all zero */
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        roundtrip_job(&rows[i]);
}

static void test_job_encode_rejects(void **state)
{
    (void)state;
    static const char *const bad_stop[] = {"ok", "\xFF\xFE"};
    static const struct tg_chat_msg bad_msg[] = {{"user", "\xC3"}};
    struct row {
        struct tg_engine_job job;
        const char *needle;
    } rows[] = {
        {{.prompt = "a\xC0\xAF"}, "'p' is not valid UTF-8"},
        {{.prompt = "x", .temperature = NAN}, "'temp' is not a finite number"},
        {{.prompt = "x", .top_p = INFINITY}, "'top_p' is not a finite number"},
        {{.prompt = "x", .stop = bad_stop, .n_stop = 2}, "'stop'"},
        {{.prompt = "x", .stop = NULL, .n_stop = 1}, "'stop' has a count but no items"},
        {{.messages = bad_msg, .n_messages = 1}, "'messages'"},
        {{.schema_json = "\xED\xA0\x80"}, "'schema'"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        json_t *o = NULL;
        char err[256] = "";
        assert_int_equal(tg_net_job_encode(&rows[i].job, &o, err, sizeof(err)), TG_INVAL);
        assert_null(o);
        if (strstr(err, rows[i].needle) == NULL)
            fail_msg("row %zu: '%s' does not mention '%s'", i, err, rows[i].needle);
    }
}

static void test_job_decode_rejects(void **state)
{
    (void)state;
    struct row {
        const char *json;
        const char *needle;
    } rows[] = {
        {"[]", "must be an object"},
        {"{\"k\":9}", "'k' is out of range"},
        {"{\"k\":\"generate\"}", "'k' must be an integer"},
        {"{\"p\":5}", "'p' must be a string"},
        {"{\"temp\":\"hot\"}", "'temp' must be a number"},
        {"{\"seed\":-1}", "'seed' is out of range"},
        {"{\"max\":1e30}", "'max' must be an integer"},
        {"{\"stop\":\"x\"}", "'stop' must be an array"},
        {"{\"stop\":[1]}", "'stop' must hold strings"},
        {"{\"labels\":[\"a\",null]}", "'labels' must hold strings"},
        {"{\"msgs\":[[\"user\"]]}", "[role, content]"},
        {"{\"msgs\":{\"role\":\"user\"}}", "'msgs' must be an array"},
        {"{\"multi\":1}", "'multi' must be a boolean"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        json_t *o = json_loads(rows[i].json, JSON_DECODE_ANY, NULL);
        assert_non_null(o);
        struct tg_net_job nj;
        char err[256] = "";
        assert_int_equal(tg_net_job_decode(o, &nj, err, sizeof(err)), TG_INVAL);
        if (strstr(err, rows[i].needle) == NULL)
            fail_msg("row %zu (%s): '%s' does not mention '%s'", i, rows[i].json, err,
                     rows[i].needle);
        json_decref(o);
    }
}

static void test_job_decode_caps_lists(void **state)
{
    (void)state;
    json_t *o = json_object();
    json_t *a = json_array();
    for (int i = 0; i < TG_NET_MAX_LIST + 1; i++)
        json_array_append_new(a, json_string("l"));
    json_object_set_new(o, "labels", a);
    struct tg_net_job nj;
    char err[256] = "";
    assert_int_equal(tg_net_job_decode(o, &nj, err, sizeof(err)), TG_INVAL);
    assert_non_null(strstr(err, "too many"));
    json_decref(o);
}

static json_t *event_roundtrip(const struct tg_engine_event *ev, uint64_t id)
{
    size_t len = 0;
    char *txt = tg_net_event_encode(ev, id, &len);
    assert_non_null(txt);
    assert_int_equal(strlen(txt), len);
    json_error_t jerr;
    json_t *o = json_loads(txt, JSON_ALLOW_NUL, &jerr);
    if (o == NULL)
        fail_msg("cannot parse '%s': %s", txt, jerr.text);
    free(txt);
    return o;
}

static void test_event_roundtrip(void **state)
{
    (void)state;
    /* token with an embedded NUL and multibyte text */
    static const char tok[] = "a\0b \xE2\x82\xAC";
    struct tg_engine_event ev = {.type = TG_EV_TOKEN, .job_id = 99, .text = tok,
                                 .text_len = sizeof(tok) - 1};
    json_t *o = event_roundtrip(&ev, 7);
    struct tg_net_event ne;
    char err[128];
    assert_int_equal(tg_net_event_decode(o, &ne, err, sizeof(err)), TG_OK);
    assert_int_equal(ne.ev.type, TG_EV_TOKEN);
    assert_int_equal(ne.ev.job_id, 7); /* the client's id, not the engine's */
    assert_int_equal(ne.ev.text_len, sizeof(tok) - 1);
    assert_memory_equal(ne.ev.text, tok, sizeof(tok) - 1);
    tg_net_event_release(&ne);
    json_decref(o);

    /* done with labels, confidence, usage, embedding */
    int32_t li[] = {2, 0};
    float emb[] = {0.5f, -0.25f, 1e-7f, 3.4028235e38f};
    struct tg_engine_event done = {.type = TG_EV_DONE, .text = "[\"c\",\"a\"]", .text_len = 9,
                                   .finish_reason = "stop",
                                   .usage = {.prompt_tokens = 12, .completion_tokens = 5,
                                             .cached_tokens = 8},
                                   .ttft_ms = 1.5, .total_ms = 20.25, .label_idx = li,
                                   .n_label_idx = 2, .confidence = 0.125, .embedding = emb,
                                   .n_embd = 4};
    o = event_roundtrip(&done, 1);
    assert_int_equal(tg_net_event_decode(o, &ne, err, sizeof(err)), TG_OK);
    assert_int_equal(ne.ev.type, TG_EV_DONE);
    assert_string_equal(ne.ev.text, "[\"c\",\"a\"]");
    assert_string_equal(ne.ev.finish_reason, "stop");
    assert_int_equal(ne.ev.usage.prompt_tokens, 12);
    assert_int_equal(ne.ev.usage.completion_tokens, 5);
    assert_int_equal(ne.ev.usage.cached_tokens, 8);
    assert_true(ne.ev.ttft_ms == 1.5 && ne.ev.total_ms == 20.25);
    assert_int_equal(ne.ev.n_label_idx, 2);
    assert_int_equal(ne.ev.label_idx[0], 2);
    assert_int_equal(ne.ev.label_idx[1], 0);
    assert_true(ne.ev.confidence == 0.125);
    assert_int_equal(ne.ev.n_embd, 4);
    for (int i = 0; i < 4; i++)
        assert_true(ne.ev.embedding[i] == emb[i]); /* exact: floats survive %.17g */
    tg_net_event_release(&ne);
    json_decref(o);

    /* error */
    struct tg_engine_event e = {.type = TG_EV_ERROR, .err = TG_CONTEXT,
                                .message = "prompt is 5000 tokens, n_ctx is 4096"};
    o = event_roundtrip(&e, 3);
    assert_int_equal(tg_net_event_decode(o, &ne, err, sizeof(err)), TG_OK);
    assert_int_equal(ne.ev.type, TG_EV_ERROR);
    assert_int_equal(ne.ev.err, TG_CONTEXT);
    assert_string_equal(ne.ev.message, "prompt is 5000 tokens, n_ctx is 4096");
    tg_net_event_release(&ne);
    json_decref(o);
}

static void test_event_lossy_text(void **state)
{
    (void)state;
    /* Invalid UTF-8 from the engine must not lose the event: it becomes U+FFFD. */
    struct tg_engine_event ev = {.type = TG_EV_TOKEN, .text = "ok\xFFz", .text_len = 4};
    json_t *o = event_roundtrip(&ev, 1);
    struct tg_net_event ne;
    assert_int_equal(tg_net_event_decode(o, &ne, NULL, 0), TG_OK);
    assert_string_equal(ne.ev.text, "ok\xEF\xBF\xBDz");
    tg_net_event_release(&ne);
    json_decref(o);
}

static void test_event_decode_rejects(void **state)
{
    (void)state;
    const char *rows[] = {
        "{}", "{\"id\":1}", "{\"id\":\"1\",\"t\":0,\"x\":\"\"}", "{\"id\":1,\"t\":7,\"x\":\"\"}",
        "{\"id\":1,\"t\":0}", "{\"id\":1,\"t\":2,\"e\":3}", "[1,2]",
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        json_t *o = json_loads(rows[i], JSON_DECODE_ANY, NULL);
        assert_non_null(o);
        struct tg_net_event ne;
        char err[128] = "";
        assert_int_equal(tg_net_event_decode(o, &ne, err, sizeof(err)), TG_INVAL);
        assert_true(err[0] != '\0');
        json_decref(o);
    }
}

static void test_stats_roundtrip(void **state)
{
    (void)state;
    struct tg_engine_stats st = {.n_slots = 8, .slots_busy = 3, .queue_depth = 2,
                                 .queue_max = 64, .est_wait_ms = 1234.5, .tokens_per_s = 99.25,
                                 .prefill_tokens_per_s = 2000, .jobs_done = 1ull << 40,
                                 .tokens_generated = 123456789, .prefix_cache_hits = 5,
                                 .prefix_cache_misses = 6, .prefix_cache_tokens = 7000,
                                 .prefix_cache_entries = 4};
    json_t *o = tg_net_stats_encode(&st);
    assert_non_null(o);
    struct tg_engine_stats back;
    assert_int_equal(tg_net_stats_decode(o, &back), TG_OK);
    assert_int_equal(back.n_slots, 8);
    assert_int_equal(back.slots_busy, 3);
    assert_int_equal(back.queue_depth, 2);
    assert_int_equal(back.queue_max, 64);
    assert_true(back.est_wait_ms == 1234.5 && back.tokens_per_s == 99.25);
    assert_true(back.prefill_tokens_per_s == 2000);
    assert_true(back.jobs_done == (1ull << 40));
    assert_int_equal(back.tokens_generated, 123456789);
    assert_int_equal(back.prefix_cache_hits, 5);
    assert_int_equal(back.prefix_cache_misses, 6);
    assert_int_equal(back.prefix_cache_tokens, 7000);
    assert_int_equal(back.prefix_cache_entries, 4);
    json_decref(o);
    assert_int_equal(tg_net_stats_decode(NULL, &back), TG_INVAL);
}

static void test_info_roundtrip(void **state)
{
    (void)state;
    struct tg_engine_info in;
    memset(&in, 0, sizeof(in));
    snprintf(in.model_name, sizeof(in.model_name), "phi-3.5 \"mini\"");
    snprintf(in.model_desc, sizeof(in.model_desc), "phi3 3B Q4_K - Medium");
    in.n_params = 3821079552ull;
    in.model_bytes = 2393232384ull;
    in.n_ctx = 4096;
    in.n_ctx_train = 131072;
    in.n_slots = 4;
    in.n_embd = 3072;
    in.n_vocab = 32064;
    in.random_weights = true;
    in.embeddings = true;
    in.n_ctx_seq = 1024;
    in.kv_split = true;
    in.prefix_cache_spill_bytes = INT64_C(1) << 33;
    json_t *o = tg_net_info_encode(&in);
    assert_non_null(o);
    char *txt = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    o = json_loads(txt, 0, NULL);
    free(txt);
    struct tg_engine_info back;
    assert_int_equal(tg_net_info_decode(o, &back), TG_OK);
    json_decref(o);
    assert_string_equal(back.model_name, in.model_name);
    assert_string_equal(back.model_desc, in.model_desc);
    assert_true(back.n_params == in.n_params && back.model_bytes == in.model_bytes);
    assert_int_equal(back.n_ctx, 4096);
    assert_int_equal(back.n_ctx_train, 131072);
    assert_int_equal(back.n_slots, 4);
    assert_int_equal(back.n_embd, 3072);
    assert_int_equal(back.n_vocab, 32064);
    assert_true(back.random_weights && back.embeddings);
    assert_int_equal(back.n_ctx_seq, 1024);
    assert_true(back.kv_split);
    assert_true(back.prefix_cache_spill_bytes == INT64_C(1) << 33);
    assert_int_equal(tg_net_info_decode(NULL, &back), TG_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_roundtrip),
        cmocka_unit_test(test_job_encode_rejects),
        cmocka_unit_test(test_job_decode_rejects),
        cmocka_unit_test(test_job_decode_caps_lists),
        cmocka_unit_test(test_event_roundtrip),
        cmocka_unit_test(test_event_lossy_text),
        cmocka_unit_test(test_event_decode_rejects),
        cmocka_unit_test(test_stats_roundtrip),
        cmocka_unit_test(test_info_roundtrip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
