/* Generated grammars against the real llama.cpp: every grammar we emit must parse
 * (llama_sampler_init_grammar returns NULL when it does not), and sampling under it from the
 * tiny random-weight model at temperature 1 must give text that validates against the schema
 * (or parses back to labels) every time. Only this test links llama.cpp; tg_grammar does not.
 *
 * TG_GBNF_SAMPLES (env) overrides the number of generations per schema (default 50). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ggml-backend.h"
#include "llama.h"
#include "tg/buf.h"
#include "tg/err.h"
#include "tg/grammar.h"
#include "tg/schema.h"

#ifndef TG_SCHEMA_SUITE_DIR
#define TG_SCHEMA_SUITE_DIR "/usr/share/json-schema-test-suite/tests"
#endif

#define MAX_GEN_TOKENS 3000

static struct llama_model *g_model;
static struct llama_context *g_ctx;
static const struct llama_vocab *g_vocab;
static llama_token g_prompt[256];
static int g_n_prompt;
static int g_samples = 50;

static void quiet_log(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    if (level >= GGML_LOG_LEVEL_ERROR)
        fputs(text, stderr);
}

static int setup(void **state)
{
    (void)state;
    const char *env = getenv("TG_GBNF_SAMPLES");
    if (env != NULL) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == '\0' && v > 0 && v <= 100000)
            g_samples = (int)v;
    }
    llama_log_set(quiet_log, NULL);
    if (TG_LLAMA_BACKEND_DIR[0] != '\0')
        ggml_backend_load_all_from_path(TG_LLAMA_BACKEND_DIR);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    g_model = llama_model_load_from_file(TG_TINY_MODEL, mp);
    if (g_model == NULL) {
        fprintf(stderr, "cannot load %s\n", TG_TINY_MODEL);
        return -1;
    }
    g_vocab = llama_model_get_vocab(g_model);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 4096;
    cp.n_batch = 512;
    /* One thread: the model is tiny, and on a loaded 2-core machine ggml's spinning workers
     * make two threads many times slower. */
    cp.n_threads = 1;
    cp.n_threads_batch = 1;
    g_ctx = llama_init_from_model(g_model, cp);
    if (g_ctx == NULL)
        return -1;

    struct llama_chat_message msgs[] = {
        {"system", "You extract data as JSON."},
        {"user", "Order 17: two widgets at 3.50 each, paid."},
    };
    char fmt[1024];
    int n = llama_chat_apply_template(llama_model_chat_template(g_model, NULL), msgs, 2, true, fmt,
                                      sizeof fmt);
    if (n <= 0 || n >= (int)sizeof fmt)
        return -1;
    g_n_prompt = llama_tokenize(g_vocab, fmt, n, g_prompt, 256, true, true);
    return g_n_prompt > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    llama_free(g_ctx);
    llama_model_free(g_model);
    llama_backend_free();
    return 0;
}

static bool grammar_parses(const char *gbnf)
{
    struct llama_sampler *s = llama_sampler_init_grammar(g_vocab, gbnf, "root");
    if (s == NULL)
        return false;
    llama_sampler_free(s);
    return true;
}

/* One generation under `gbnf` at temperature 1 into out. false when it did not end (EOG)
 * within MAX_GEN_TOKENS or decoding failed. */
static bool generate(const char *gbnf, uint32_t seed, struct tg_buf *out, int *n_tokens)
{
    tg_buf_reset(out);
    llama_memory_clear(llama_get_memory(g_ctx), true);
    struct llama_batch b = llama_batch_get_one(g_prompt, g_n_prompt);
    if (llama_decode(g_ctx, b) != 0)
        return false;
    struct llama_sampler *chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
    struct llama_sampler *gs = llama_sampler_init_grammar(g_vocab, gbnf, "root");
    if (gs == NULL) {
        llama_sampler_free(chain);
        return false;
    }
    llama_sampler_chain_add(chain, gs);
    llama_sampler_chain_add(chain, llama_sampler_init_temp(1.0f));
    llama_sampler_chain_add(chain, llama_sampler_init_dist(seed));
    bool ended = false;
    int n = 0;
    for (; n < MAX_GEN_TOKENS; n++) {
        llama_token t = llama_sampler_sample(chain, g_ctx, -1);
        if (llama_vocab_is_eog(g_vocab, t)) {
            ended = true;
            break;
        }
        char piece[256];
        int np = llama_token_to_piece(g_vocab, t, piece, sizeof piece, 0, false);
        if (np < 0 || tg_buf_append(out, piece, (size_t)np) != TG_OK)
            break;
        b = llama_batch_get_one(&t, 1);
        if (llama_decode(g_ctx, b) != 0)
            break;
    }
    llama_sampler_free(chain);
    *n_tokens = n;
    if (out->data == NULL)
        tg_buf_append(out, "", 0);
    return ended;
}

/* ------------------------------------------------------------------ schemas */

static const char *const sample_schemas[] = {
    /* nested order: arrays of closed objects, enum, nullable */
    "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"items\":{\"type\":"
    "\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"sku\":{\"type\":\"string\"},"
    "\"price\":{\"type\":\"number\"},\"qty\":{\"type\":\"integer\"}},\"required\":[\"sku\","
    "\"price\"],\"additionalProperties\":false}},\"status\":{\"enum\":[\"open\",\"paid\","
    "\"void\"]},\"note\":{\"type\":[\"string\",\"null\"]}},\"required\":[\"id\",\"items\"],"
    "\"additionalProperties\":false}",
    /* person: all optional, nested object, array of strings, boolean */
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":"
    "\"integer\"},\"email\":{\"type\":[\"string\",\"null\"]},\"address\":{\"type\":\"object\","
    "\"properties\":{\"street\":{\"type\":\"string\"},\"city\":{\"type\":\"string\"},\"zip\":{"
    "\"type\":\"string\"}},\"required\":[\"city\"]},\"tags\":{\"type\":\"array\",\"items\":{"
    "\"type\":\"string\"}},\"active\":{\"type\":\"boolean\"}}}",
    /* enum of mixed literals, const object, nested arrays */
    "{\"type\":\"object\",\"properties\":{\"sentiment\":{\"enum\":[\"positive\",\"negative\","
    "\"neutral\"]},\"confidence\":{\"type\":\"number\"},\"aspects\":{\"type\":\"array\","
    "\"items\":{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"polarity\":"
    "{\"enum\":[1,-1,0.5,null,{\"k\":[true]}]}},\"required\":[\"name\",\"polarity\"]}},"
    "\"version\":{\"const\":{\"v\":[1,2]}},\"matrix\":{\"type\":\"array\",\"items\":{\"type\":"
    "\"array\",\"items\":{\"type\":\"integer\"}}}},\"required\":[\"sentiment\",\"version\"]}",
    /* keys needing escapes, non-ASCII, free-form values */
    "{\"properties\":{\"naïve \\\"key\\\"\":{\"type\":\"string\"},\"a\\\\b\\n\":{\"type\":"
    "\"number\"},\"meta\":{},\"data\":{\"type\":\"object\"}},\"required\":[\"naïve \\\"key\\\"\","
    "\"a\\\\b\\n\",\"meta\"]}",
    /* top-level type lists and arrays */
    "{\"type\":[\"array\",\"null\"],\"items\":{\"type\":[\"number\",\"string\",\"boolean\"]}}",
    /* required property last, earlier ones optional */
    "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"type\":\"null\"},"
    "\"c\":{\"enum\":[\"x\"]}},\"required\":[\"c\"],\"additionalProperties\":false}",
};

static struct tg_schema *compile_or_fail(const char *text)
{
    struct tg_schema *s = NULL;
    char err[512];
    if (tg_schema_compile_text(text, strlen(text), &s, err, sizeof err) != TG_OK) {
        print_error("compile: %s\n", err);
        fail();
    }
    return s;
}

static const struct tg_gbnf_opts opt_variants[] = {
    {256, 16, 1, 15, 2}, /* defaults */
    {0, 0, 0, 1, 0},     /* everything at its minimum */
    {1, 1, 0, 2, 1},
    {1000, 256, 16, 18, 8}, /* at the clamps */
};

/* The negative control: a broken grammar must be reported, or the checks below prove nothing. */
static void test_parser_rejects_broken(void **state)
{
    (void)state;
    assert_false(grammar_parses("root ::= (\"a\"\n"));
    assert_false(grammar_parses("root ::= undefined-rule\n"));
    assert_true(grammar_parses("root ::= \"a\"\n"));
}

static void test_grammars_parse(void **state)
{
    (void)state;
    size_t checked = 0;
    for (size_t i = 0; i < sizeof sample_schemas / sizeof sample_schemas[0]; i++) {
        struct tg_schema *s = compile_or_fail(sample_schemas[i]);
        for (size_t k = 0; k < sizeof opt_variants / sizeof opt_variants[0]; k++) {
            char *g = tg_schema_to_gbnf_opts(s, &opt_variants[k]);
            assert_non_null(g);
            if (!grammar_parses(g)) {
                print_error("schema %zu opts %zu: llama.cpp rejects:\n%s\n", i, k, g);
                fail();
            }
            checked++;
            free(g);
        }
        tg_schema_free(s);
    }

    /* every suite schema that compiles in our subset */
    static const char *const drafts[] = {"draft6", "draft7"};
    static const char *const files[] = {
        "type.json",  "properties.json",           "required.json", "enum.json",
        "items.json", "additionalProperties.json", "const.json",    "default.json"};
    for (size_t d = 0; d < 2; d++) {
        for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
            char path[512];
            snprintf(path, sizeof path, "%s/%s/%s", TG_SCHEMA_SUITE_DIR, drafts[d], files[f]);
            json_error_t je;
            json_t *doc = json_load_file(path, JSON_ALLOW_NUL, &je);
            assert_non_null(doc);
            size_t gi;
            json_t *group;
            json_array_foreach(doc, gi, group)
            {
                struct tg_schema *s = NULL;
                if (tg_schema_compile(json_object_get(group, "schema"), &s, NULL, 0) != TG_OK)
                    continue;
                char *g = tg_schema_to_gbnf(s);
                assert_non_null(g);
                if (!grammar_parses(g)) {
                    print_error("%s/%s '%s': llama.cpp rejects:\n%s\n", drafts[d], files[f],
                                json_string_value(json_object_get(group, "description")), g);
                    fail();
                }
                checked++;
                free(g);
                tg_schema_free(s);
            }
            json_decref(doc);
        }
    }
    /* label grammars at the edges: one label, 256 labels, labels needing every escape */
    static char names[TG_GRAMMAR_MAX_LABELS][16];
    const char *labels[TG_GRAMMAR_MAX_LABELS];
    for (size_t i = 0; i < TG_GRAMMAR_MAX_LABELS; i++) {
        snprintf(names[i], sizeof names[i], "l\"%zu\\\t\x01", i);
        labels[i] = names[i];
    }
    const size_t counts[] = {1, 2, TG_GRAMMAR_MAX_LABELS};
    for (size_t c = 0; c < 3; c++) {
        for (int multi = 0; multi < 2; multi++) {
            char err[128];
            char *g = tg_grammar_labels(labels, counts[c], multi != 0, err, sizeof err);
            assert_non_null(g);
            if (!grammar_parses(g)) {
                print_error("%zu labels (multi %d): llama.cpp rejects:\n%.2000s\n", counts[c],
                            multi, g);
                fail();
            }
            checked++;
            free(g);
        }
    }
    print_message("%zu generated grammars parsed by llama.cpp\n", checked);
}

static void sample_schema(const char *schema_text, const struct tg_gbnf_opts *o, int n_samples,
                          uint32_t seed0)
{
    struct tg_schema *s = compile_or_fail(schema_text);
    char *g = tg_schema_to_gbnf_opts(s, o);
    assert_non_null(g);
    struct tg_buf out;
    tg_buf_init(&out, 0);
    size_t total_tokens = 0, max_len = 0;
    for (int i = 0; i < n_samples; i++) {
        int nt = 0;
        bool ended = generate(g, seed0 + (uint32_t)i, &out, &nt);
        char err[512] = "";
        if (!ended || !tg_schema_validate_text(s, out.data, out.len, err, sizeof err)) {
            print_error("sample %d (seed %u, %d tokens, %s): %s\n--- output\n%s\n--- grammar\n%s\n",
                        i, seed0 + (uint32_t)i, nt, ended ? "ended" : "DID NOT END", err, out.data,
                        g);
            fail();
        }
        total_tokens += (size_t)nt;
        if (out.len > max_len)
            max_len = out.len;
    }
    print_message("%d/%d valid; %.1f tokens avg, longest %zu bytes; e.g. %.160s\n", n_samples,
                  n_samples, (double)total_tokens / n_samples, max_len, out.data);
    tg_buf_free(&out);
    free(g);
    tg_schema_free(s);
}

/* Small bounds keep a random model's outputs short; the defaults are sampled below too. */
static void test_sample_schemas(void **state)
{
    (void)state;
    struct tg_gbnf_opts o = {.max_string_chars = 12,
                             .max_array_items = 3,
                             .max_ws = 1,
                             .max_number_digits = 6,
                             .any_depth = 2};
    for (size_t i = 0; i < sizeof sample_schemas / sizeof sample_schemas[0]; i++)
        sample_schema(sample_schemas[i], &o, g_samples, 1000u * (uint32_t)(i + 1));
}

static void test_sample_default_opts(void **state)
{
    (void)state;
    struct tg_gbnf_opts d = tg_gbnf_default_opts();
    int n = g_samples < 10 ? g_samples : 10;
    sample_schema(sample_schemas[5], &d, g_samples, 7000);
    sample_schema(sample_schemas[0], &d, n, 8000);
}

static void sample_labels(const char *const *labels, size_t nl, bool multi, uint32_t seed0)
{
    char err[256];
    char *g = tg_grammar_labels(labels, nl, multi, err, sizeof err);
    assert_non_null(g);
    assert_true(grammar_parses(g));
    struct tg_buf out;
    tg_buf_init(&out, 0);
    size_t hits[8] = {0};
    for (int i = 0; i < g_samples; i++) {
        int nt = 0;
        bool ended = generate(g, seed0 + (uint32_t)i, &out, &nt);
        size_t idx[8], n = 0;
        int rc = ended ? tg_grammar_parse_labels(labels, nl, multi, out.data, out.len, idx, 8, &n,
                                                 err, sizeof err)
                       : TG_PARSE;
        if (rc != TG_OK || n == 0) {
            print_error("labels sample %d: rc %d %s: '%s'\n", i, rc, err, out.data);
            fail();
        }
        for (size_t k = 0; k < n; k++)
            hits[idx[k]]++;
    }
    print_message("%d/%d parsed (%s); per label:", g_samples, g_samples,
                  multi ? "multi" : "single");
    for (size_t k = 0; k < nl; k++)
        print_message(" %zu", hits[k]);
    print_message("\n");
    tg_buf_free(&out);
    free(g);
}

static void test_sample_labels(void **state)
{
    (void)state;
    const char *labels[] = {"positive", "negative", "neutral", "a\"b\\c", "naïve ☃", "x, y"};
    sample_labels(labels, 6, false, 100);
    sample_labels(labels, 6, true, 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parser_rejects_broken), cmocka_unit_test(test_grammars_parse),
        cmocka_unit_test(test_sample_labels),         cmocka_unit_test(test_sample_schemas),
        cmocka_unit_test(test_sample_default_opts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
