/* The generated tiny model loads through llama.cpp, says it has random weights, formats chats in
 * the Phi-3 format with its own template, and generates tokens. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ggml-backend.h"
#include "llama.h"

static struct llama_model *g_model;

static void quiet(enum ggml_log_level level, const char *text, void *ud)
{
    (void)level;
    (void)text;
    (void)ud;
}

static int setup(void **state)
{
    (void)state;
    llama_log_set(quiet, NULL);
    ggml_backend_load_all_from_path(TG_LLAMA_BACKEND_DIR);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    g_model = llama_model_load_from_file(TG_TINY_MODEL, mp);
    return g_model != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    llama_model_free(g_model);
    llama_backend_free();
    return 0;
}

static void test_metadata(void **state)
{
    (void)state;
    char buf[128];
    assert_true(llama_model_meta_val_str(g_model, "general.architecture", buf, sizeof buf) > 0);
    assert_string_equal(buf, "phi3");
    assert_true(llama_model_meta_val_str(g_model, "tiergate.random_weights", buf, sizeof buf) > 0);
    assert_string_equal(buf, "true");
    const struct llama_vocab *vocab = llama_model_get_vocab(g_model);
    assert_int_equal(llama_vocab_n_tokens(vocab), 32064);
}

static void test_chat_template(void **state)
{
    (void)state;
    const char *tmpl = llama_model_chat_template(g_model, NULL);
    assert_non_null(tmpl);
    struct llama_chat_message msgs[] = {{"system", "You classify."}, {"user", "I love it"}};
    char out[512];
    int n = llama_chat_apply_template(tmpl, msgs, 2, true, out, sizeof out);
    assert_true(n > 0 && n < (int)sizeof out);
    out[n] = '\0';
    assert_string_equal(out, "<|system|>\nYou classify.<|end|>\n<|user|>\nI love it<|end|>\n<|assistant|>\n");
    /* special tokens parse to their ids */
    const struct llama_vocab *vocab = llama_model_get_vocab(g_model);
    llama_token toks[64];
    const char *text = "<|user|>\nhi<|end|>\n<|assistant|>\n";
    int nt = llama_tokenize(vocab, text, (int)strlen(text), toks, 64, false, true);
    assert_true(nt > 3);
    assert_int_equal(toks[0], 32010);
    bool has_end = false, has_asst = false;
    for (int i = 0; i < nt; i++) {
        has_end |= toks[i] == 32007;
        has_asst |= toks[i] == 32001;
    }
    assert_true(has_end && has_asst);
    assert_true(llama_vocab_is_eog(vocab, 32007));
}

static void test_generates(void **state)
{
    (void)state;
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = 512;
    cp.n_threads = 2;
    cp.n_threads_batch = 2;
    struct llama_context *ctx = llama_init_from_model(g_model, cp);
    assert_non_null(ctx);
    const struct llama_vocab *vocab = llama_model_get_vocab(g_model);
    const char *prompt = "<|user|>\nSay something.<|end|>\n<|assistant|>\n";
    llama_token toks[64];
    int nt = llama_tokenize(vocab, prompt, (int)strlen(prompt), toks, 64, true, true);
    assert_true(nt > 0);
    struct llama_sampler *s = llama_sampler_chain_init(llama_sampler_chain_default_params());
    llama_sampler_chain_add(s, llama_sampler_init_greedy());
    assert_int_equal(llama_decode(ctx, llama_batch_get_one(toks, nt)), 0);
    int generated = 0;
    for (int i = 0; i < 16; i++) {
        llama_token t = llama_sampler_sample(s, ctx, -1);
        assert_true(t >= 0 && t < llama_vocab_n_tokens(vocab));
        generated++;
        if (llama_vocab_is_eog(vocab, t))
            break;
        assert_int_equal(llama_decode(ctx, llama_batch_get_one(&t, 1)), 0);
    }
    assert_true(generated > 0);
    llama_sampler_free(s);
    llama_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metadata),
        cmocka_unit_test(test_chat_template),
        cmocka_unit_test(test_generates),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
