/* Local engine on the tiny generated model: scheduling, batching, prefix cache, constrained
 * decoding, embeddings, errors. Real llama.cpp, no fakes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine_int.h"
#include "tg/buf.h"
#include "tg/engine.h"
#include "tg/err.h"
#include "tg/schema.h"

#define WAIT_S 240

/* ---------------------------------------------------------------- event collector */

struct coll {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_final;  /* DONE/ERROR events seen (must end up exactly 1) */
    int n_tokens; /* TOKEN events */
    bool token_after_final;
    enum tg_engine_event_type type;
    int err;
    char msg[512];
    char finish[16];
    struct tg_buf text;
    struct tg_buf streamed;
    struct tg_engine_usage usage;
    int32_t labels[16];
    size_t n_labels;
    double confidence;
    float *emb;
    int32_t n_embd;
    double ttft_ms;
};

static void coll_init(struct coll *c)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    tg_buf_init(&c->text, 0);
    tg_buf_init(&c->streamed, 0);
}

static void coll_free(struct coll *c)
{
    tg_buf_free(&c->text);
    tg_buf_free(&c->streamed);
    free(c->emb);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
}

/* A prefix-cache hit (w) and a cold run (k) produced the same text. */
static void assert_same_text(const struct coll *w, const struct coll *k)
{
    assert_int_equal(w->text.len, k->text.len);
    assert_memory_equal(w->text.data, k->text.data, k->text.len);
}

static void on_event(const struct tg_engine_event *ev, void *user)
{
    struct coll *c = user;
    pthread_mutex_lock(&c->mu);
    if (ev->type == TG_EV_TOKEN) {
        if (c->n_final > 0)
            c->token_after_final = true;
        c->n_tokens++;
        tg_buf_append(&c->streamed, ev->text, ev->text_len);
        /* pieces are whole UTF-8 and NUL-terminated */
        if (strlen(ev->text) != ev->text_len)
            c->token_after_final = true;
        pthread_cond_broadcast(&c->cv);
    } else {
        c->n_final++;
        c->type = ev->type;
        c->err = ev->err;
        snprintf(c->msg, sizeof c->msg, "%s", ev->message ? ev->message : "");
        snprintf(c->finish, sizeof c->finish, "%s", ev->finish_reason ? ev->finish_reason : "");
        tg_buf_reset(&c->text);
        tg_buf_append(&c->text, ev->text, ev->text_len);
        c->usage = ev->usage;
        c->n_labels = ev->n_label_idx < 16 ? ev->n_label_idx : 16;
        for (size_t i = 0; i < c->n_labels; i++)
            c->labels[i] = ev->label_idx[i];
        c->confidence = ev->confidence;
        c->ttft_ms = ev->ttft_ms;
        if (ev->embedding) {
            c->emb = malloc(sizeof(float) * (size_t)ev->n_embd);
            memcpy(c->emb, ev->embedding, sizeof(float) * (size_t)ev->n_embd);
            c->n_embd = ev->n_embd;
        }
        pthread_cond_broadcast(&c->cv);
    }
    pthread_mutex_unlock(&c->mu);
}

static void coll_wait(struct coll *c)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += WAIT_S;
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    while (c->n_final == 0 && rc == 0)
        rc = pthread_cond_timedwait(&c->cv, &c->mu, &dl);
    pthread_mutex_unlock(&c->mu);
    assert_int_equal(rc, 0);
}

static void coll_wait_tokens(struct coll *c, int n)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += WAIT_S;
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    while (c->n_tokens < n && c->n_final == 0 && rc == 0)
        rc = pthread_cond_timedwait(&c->cv, &c->mu, &dl);
    pthread_mutex_unlock(&c->mu);
    assert_int_equal(rc, 0);
}

/* ---------------------------------------------------------------- helpers */

/* Tests that run in both KV layouts get their layout as their state from a per-test setup
 * (cmocka's initial_state would lose to the group's shared engine). */
static bool KV_UNIFIED = false, KV_SPLIT = true;
static int kv_unified_setup(void **state)
{
    *state = &KV_UNIFIED;
    return 0;
}
static int kv_split_setup(void **state)
{
    *state = &KV_SPLIT;
    return 0;
}
#define BOTH_KV(f)                                                                          \
    {#f "_unified", f, kv_unified_setup, NULL, NULL},                                       \
    {                                                                                       \
        #f "_kv_split", f, kv_split_setup, NULL, NULL                                       \
    }

static bool kv_split_of(void **state)
{
    return *state && *(const bool *)*state;
}

/* kv_split gives each slot n_ctx / slots cells. */
static struct tg_engine *make_engine_ctx(int32_t n_ctx, int32_t slots, int32_t pc_entries,
                                         int32_t pc_min, bool split, int64_t spill_bytes)
{
    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = TG_TINY_MODEL;
    p.n_ctx = n_ctx;
    p.n_slots = slots;
    p.n_threads = 1; /* 2 cores shared by many: a spinning 2nd thread only hurts */
    p.queue_max = 256;
    p.prefix_cache_entries = pc_entries;
    p.prefix_cache_min_tokens = pc_min;
    p.prefix_cache_spill_bytes = spill_bytes;
    p.kv_split = split;
    p.embed_ctx = -1;
    struct tg_engine *e = NULL;
    char err[256] = "";
    int rc = tg_engine_create(&p, &e, err, sizeof err);
    if (rc != TG_OK)
        fprintf(stderr, "create: %s\n", err);
    assert_int_equal(rc, TG_OK);
    assert_non_null(e);
    return e;
}

static struct tg_engine *make_engine_kv(int32_t slots, int32_t pc_entries, int32_t pc_min,
                                        bool split, int64_t spill_bytes)
{
    return make_engine_ctx(4096, slots, pc_entries, pc_min, split, spill_bytes);
}

static struct tg_engine *make_engine(int32_t slots, int32_t pc_entries, int32_t pc_min)
{
    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = TG_TINY_MODEL;
    p.n_ctx = 4096;
    p.n_slots = slots;
    p.n_threads = 1; /* 2 cores shared by many: a spinning 2nd thread only hurts */
    p.queue_max = 256;
    p.prefix_cache_entries = pc_entries;
    p.prefix_cache_min_tokens = pc_min;
    struct tg_engine *e = NULL;
    char err[256] = "";
    int rc = tg_engine_create(&p, &e, err, sizeof err);
    if (rc != TG_OK)
        fprintf(stderr, "create: %s\n", err);
    assert_int_equal(rc, TG_OK);
    assert_non_null(e);
    return e;
}

static void submit_ok(struct tg_engine *e, const struct tg_engine_job *j, struct coll *c,
                      uint64_t *id)
{
    char err[512] = "";
    int rc = tg_engine_submit(e, j, on_event, c, id, err, sizeof err);
    if (rc != TG_OK)
        fprintf(stderr, "submit: %s: %s\n", tg_errname(rc), err);
    assert_int_equal(rc, TG_OK);
}

static struct tg_engine_job user_job(const struct tg_chat_msg *m, size_t n, int32_t max_tokens)
{
    struct tg_engine_job j;
    memset(&j, 0, sizeof j);
    j.kind = TG_JOB_GENERATE;
    j.messages = m;
    j.n_messages = n;
    j.max_tokens = max_tokens;
    return j;
}

/* Run one job to completion; returns the collector (caller frees). */
static void run_job(struct tg_engine *e, const struct tg_engine_job *j, struct coll *c)
{
    coll_init(c);
    submit_ok(e, j, c, NULL);
    coll_wait(c);
    assert_int_equal(c->n_final, 1);
}

static const char *LONG_SYS =
    "You are a meticulous assistant for an automation pipeline. You read support tickets, "
    "invoices and short emails and answer tersely. Never invent facts that are not in the "
    "text. Prefer the customer's own words. Keep names, numbers and dates exactly as written. "
    "When the text is ambiguous, pick the most literal reading and do not speculate.";

/* ---------------------------------------------------------------- text helpers (pure) */

static void test_utf8_and_stop_helpers(void **state)
{
    (void)state;
    struct {
        const char *s;
        size_t want;
    } u8[] = {
        {"abc", 3},
        {"a\xC3", 1},             /* 2-byte lead without continuation */
        {"a\xC3\xA9", 3},         /* é complete */
        {"\xE2\x82", 0},          /* € missing its last byte */
        {"x\xE2\x82\xAC", 4},     /* € complete */
        {"\xF0\x9F\x98", 0},      /* emoji missing one byte */
        {"\xF0\x9F\x98\x80z", 5}, /* emoji complete */
        {"\x80\x80", 2},          /* stray continuation bytes: not held */
        {"", 0},
    };
    for (size_t i = 0; i < sizeof u8 / sizeof u8[0]; i++)
        assert_int_equal(tg_engine_utf8_complete_len(u8[i].s, strlen(u8[i].s)), u8[i].want);

    char *stops[] = {"STOP", "\n\n"};
    const char *t = "hello STOP there";
    assert_int_equal(tg_engine_find_stop(t, strlen(t), 0, stops, 2), 6);
    assert_int_equal(tg_engine_find_stop(t, strlen(t), 8, stops, 2), 6); /* straddles */
    assert_int_equal(tg_engine_find_stop("abc", 3, 0, stops, 2), (size_t)-1);
    assert_int_equal(tg_engine_find_stop("a\n\nSTOP", 7, 0, stops, 2), 1);
    assert_int_equal(tg_engine_stop_holdback("hello ST", 8, stops, 2), 2);
    assert_int_equal(tg_engine_stop_holdback("hello STO", 9, stops, 2), 3);
    assert_int_equal(tg_engine_stop_holdback("hello\n", 6, stops, 2), 1);
    assert_int_equal(tg_engine_stop_holdback("hello", 5, stops, 2), 0);
    assert_int_equal(tg_engine_stop_holdback("S", 1, stops, 0), 0);
}

/* ---------------------------------------------------------------- create errors / info */

static void test_create_errors(void **state)
{
    (void)state;
    struct tg_engine_params p = tg_engine_default_params();
    struct tg_engine *e = NULL;
    char err[512] = "";

    p.model_path = "/nonexistent/dir/model.gguf";
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_IO);
    assert_null(e);
    assert_non_null(strstr(err, "/nonexistent/dir/model.gguf"));
    assert_non_null(strstr(err, "No such file"));

    char path[] = "/tmp/tg-engine-junk-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char junk[] = "this is not a gguf file at all, just text\n";
    assert_int_equal(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    close(fd);
    p.model_path = path;
    err[0] = '\0';
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_MODEL);
    assert_null(e);
    assert_non_null(strstr(err, path));
    unlink(path);

    p.model_path = TG_TINY_MODEL;
    p.kv_cache_type = "q3_weird";
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_INVAL);
    assert_non_null(strstr(err, "q3_weird"));
    p.kv_cache_type = NULL;
    p.n_slots = 1000;
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_INVAL);
    assert_null(e);
    p.model_path = NULL;
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_INVAL);
    tg_engine_destroy(NULL);
}

/* Quantized KV cache (flash attention on) and n_batch below n_slots still generate. */
static void test_kv_quant(void **state)
{
    (void)state;
    const char *types[] = {"q8_0", "q4_0"};
    for (int i = 0; i < 2; i++) {
        struct tg_engine_params p = tg_engine_default_params();
        p.model_path = TG_TINY_MODEL;
        p.n_ctx = 512;
        p.n_slots = 4;
        p.n_batch = 2;
        p.n_threads = 1;
        p.kv_cache_type = types[i];
        p.embed_ctx = -1;
        struct tg_engine *e = NULL;
        char err[256];
        assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_OK);
        struct tg_chat_msg m[] = {{"user", "Hello there, how are you?"}};
        struct tg_engine_job j = user_job(m, 1, 8);
        struct coll c[4];
        for (int k = 0; k < 4; k++) {
            coll_init(&c[k]);
            submit_ok(e, &j, &c[k], NULL);
        }
        for (int k = 0; k < 4; k++) {
            coll_wait(&c[k]);
            assert_int_equal(c[k].type, TG_EV_DONE);
            assert_true(c[k].usage.completion_tokens >= 1);
            /* same greedy prompt, same output whatever the batch */
            assert_int_equal(c[k].text.len, c[0].text.len);
            assert_memory_equal(c[k].text.data, c[0].text.data, c[0].text.len);
        }
        for (int k = 0; k < 4; k++)
            coll_free(&c[k]);
        tg_engine_destroy(e);
    }
}

/* Split KV: every slot has its own n_ctx / n_slots cells; batching gives the same greedy
 * tokens; a prompt bigger than one slice is TG_CONTEXT naming both sizes; jobs that start
 * together share no cached prefix, and each slot then keeps its prompt. */
static void test_kv_split(void **state)
{
    (void)state;
    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = TG_TINY_MODEL;
    p.n_ctx = 1024;
    p.n_slots = 4;
    p.n_threads = 1;
    p.kv_split = true;
    p.embed_ctx = -1;
    struct tg_engine *e = NULL;
    char err[256];
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_OK);
    struct tg_chat_msg m[] = {{"system", LONG_SYS}, {"user", "Hello there, how are you?"}};
    struct tg_engine_job j = user_job(m, 2, 0); /* up to the slice */
    struct coll c[4];
    for (int k = 0; k < 4; k++) {
        coll_init(&c[k]);
        submit_ok(e, &j, &c[k], NULL);
    }
    for (int k = 0; k < 4; k++) {
        coll_wait(&c[k]);
        assert_int_equal(c[k].type, TG_EV_DONE);
        assert_int_equal(c[k].usage.cached_tokens, 0);
        assert_true(c[k].usage.prompt_tokens + c[k].usage.completion_tokens <= 1024 / 4);
        assert_int_equal(c[k].text.len, c[0].text.len);
        assert_memory_equal(c[k].text.data, c[0].text.data, c[0].text.len);
    }
    struct tg_engine_stats st;
    tg_engine_stats(e, &st);
    assert_int_equal(st.prefix_cache_hits, 0);
    assert_int_equal(st.prefix_cache_entries, 4); /* one kept prompt per slot */

    struct tg_buf b;
    tg_buf_init(&b, 0);
    for (int i = 0; i < 120; i++) /* ~370 tokens: fits n_ctx, not one slot's 256 */
        tg_buf_append_str(&b, "alpha beta gamma ");
    struct tg_chat_msg big[] = {{"user", b.data}};
    struct tg_engine_job jb = user_job(big, 1, 4);
    assert_int_equal(tg_engine_submit(e, &jb, on_event, NULL, NULL, err, sizeof err),
                     TG_CONTEXT);
    assert_non_null(strstr(err, "at most 255 tokens"));
    assert_non_null(strstr(err, "n_ctx 1024 over 4 slots"));
    tg_buf_free(&b);
    for (int k = 0; k < 4; k++)
        coll_free(&c[k]);
    tg_engine_destroy(e);
}

static void test_info(void **state)
{
    (void)state;
    struct tg_engine *e = make_engine(3, 4, 16);
    struct tg_engine_info in;
    tg_engine_info(e, &in);
    assert_true(in.random_weights);
    assert_int_equal(in.n_slots, 3);
    assert_int_equal(in.n_embd, 128);
    assert_true(in.n_ctx >= 4096);
    assert_true(in.n_params > 1000000);
    assert_true(in.n_vocab > 32000);
    assert_true(in.embeddings);
    assert_true(strlen(in.model_desc) > 0);
    assert_true(strlen(in.model_name) > 0);
    struct tg_engine_stats st;
    tg_engine_stats(e, &st);
    assert_int_equal(st.n_slots, 3);
    assert_int_equal(st.slots_busy, 0);
    assert_int_equal(st.queue_depth, 0);
    assert_true(st.est_wait_ms == 0);
    tg_engine_destroy(e);
}

/* ---------------------------------------------------------------- generation */

static void test_generate_stream(void **state)
{
    struct tg_engine *e = *state;
    struct tg_chat_msg m[] = {{"system", "Be brief."}, {"user", "Say something."}};
    struct tg_engine_job j = user_job(m, 2, 24);
    j.stream = true;
    j.temperature = 0.8f;
    j.top_k = 40;
    j.top_p = 0.95f;
    j.seed = 7;
    struct coll c;
    run_job(e, &j, &c);
    assert_int_equal(c.type, TG_EV_DONE);
    assert_false(c.token_after_final);
    assert_true(strcmp(c.finish, "length") == 0 || strcmp(c.finish, "stop") == 0);
    assert_true(c.usage.completion_tokens >= 1 && c.usage.completion_tokens <= 24);
    assert_true(c.usage.prompt_tokens > 5);
    /* The stream is exactly the final text. */
    assert_int_equal(c.streamed.len, c.text.len);
    if (c.text.len)
        assert_memory_equal(c.streamed.data, c.text.data, c.text.len);
    assert_true(c.ttft_ms > 0);

    /* Same seed, same output. */
    struct coll c2;
    run_job(e, &j, &c2);
    assert_int_equal(c2.text.len, c.text.len);
    if (c.text.len)
        assert_memory_equal(c2.text.data, c.text.data, c.text.len);
    coll_free(&c);
    coll_free(&c2);
}

static void test_stop_string(void **state)
{
    struct tg_engine *e = *state;
    struct tg_chat_msg m[] = {{"user", "Write a long answer."}};
    struct tg_engine_job j = user_job(m, 1, 48);
    struct coll ref;
    run_job(e, &j, &ref);
    assert_int_equal(ref.type, TG_EV_DONE);
    if (ref.text.len < 12) {
        coll_free(&ref);
        skip(); /* the model ended too early to pick a stop string */
    }
    /* Pick 3 bytes from the middle (at a UTF-8 boundary) as the stop string. */
    size_t at = ref.text.len / 2;
    while (at > 0 && ((unsigned char)ref.text.data[at] & 0xC0) == 0x80)
        at--;
    size_t sl = 3;
    while (at + sl < ref.text.len && ((unsigned char)ref.text.data[at + sl] & 0xC0) == 0x80)
        sl++;
    char stop[16];
    memcpy(stop, ref.text.data + at, sl);
    stop[sl] = '\0';
    const char *first = strstr(ref.text.data, stop);
    size_t want = (size_t)(first - ref.text.data);
    const char *stops[] = {stop};
    j.stop = stops;
    j.n_stop = 1;
    j.stream = true;
    struct coll c;
    run_job(e, &j, &c);
    assert_int_equal(c.type, TG_EV_DONE);
    assert_string_equal(c.finish, "stop");
    assert_int_equal(c.text.len, want);
    assert_memory_equal(c.text.data, ref.text.data, want);
    assert_int_equal(c.streamed.len, want); /* the stop string never went out */
    coll_free(&ref);
    coll_free(&c);
}

static void test_raw_grammar(void **state)
{
    struct tg_engine *e = *state;
    struct tg_engine_job j;
    memset(&j, 0, sizeof j);
    j.kind = TG_JOB_GENERATE;
    j.prompt = "<|user|>\nCount.<|end|>\n<|assistant|>\n";
    j.grammar = "root ::= [a-c] [a-c] [a-c] \"!\"";
    j.temperature = 1.0f;
    j.max_tokens = 32;
    struct coll c;
    run_job(e, &j, &c);
    assert_int_equal(c.type, TG_EV_DONE);
    assert_string_equal(c.finish, "stop");
    assert_int_equal(c.text.len, 4);
    for (int i = 0; i < 3; i++)
        assert_true(c.text.data[i] >= 'a' && c.text.data[i] <= 'c');
    assert_int_equal(c.text.data[3], '!');
    coll_free(&c);

    j.grammar = "root ::= \"unterminated";
    char err[256] = "";
    assert_int_equal(tg_engine_submit(e, &j, on_event, NULL, NULL, err, sizeof err), TG_INVAL);
    assert_non_null(strstr(err, "grammar"));
}

static void test_bad_jobs(void **state)
{
    struct tg_engine *e = *state;
    char err[256];
    struct tg_engine_job j;
    memset(&j, 0, sizeof j);
    j.kind = TG_JOB_GENERATE;
    assert_int_equal(tg_engine_submit(e, &j, on_event, NULL, NULL, err, sizeof err), TG_INVAL);
    j.prompt = "hi";
    j.max_tokens = -1;
    assert_int_equal(tg_engine_submit(e, &j, on_event, NULL, NULL, err, sizeof err), TG_INVAL);
    j.max_tokens = 0;
    const char *stops[] = {""};
    j.stop = stops;
    j.n_stop = 1;
    assert_int_equal(tg_engine_submit(e, &j, on_event, NULL, NULL, err, sizeof err), TG_INVAL);
    j.n_stop = 0;
    j.kind = TG_JOB_CLASSIFY;
    assert_int_equal(tg_engine_submit(e, &j, on_event, NULL, NULL, err, sizeof err), TG_INVAL);
    const char *dup[] = {"a", "b", "a"};
    j.labels = dup;
    j.n_labels = 3;
    assert_int_equal(tg_engine_submit(e, &j, on_event, NULL, NULL, err, sizeof err), TG_INVAL);
    assert_non_null(strstr(err, "duplicate"));
    j.kind = TG_JOB_EXTRACT;
    assert_int_equal(tg_engine_submit(e, &j, on_event, NULL, NULL, err, sizeof err), TG_INVAL);
    struct tg_chat_msg bad[] = {{"user", NULL}};
    j.kind = TG_JOB_GENERATE;
    j.messages = bad;
    j.n_messages = 1;
    assert_int_equal(tg_engine_submit(e, &j, on_event, NULL, NULL, err, sizeof err), TG_INVAL);
    assert_int_equal(tg_engine_cancel(e, 999999), TG_NOTFOUND);
    assert_int_equal(tg_engine_submit(e, NULL, on_event, NULL, NULL, err, sizeof err), TG_INVAL);
}

/* Both layouts: the message names the prompt's tokens and the context it must fit (with
 * kv_split, one slot's share of n_ctx, and n_ctx itself). */
static void test_overlong_prompt(void **state)
{
    bool split = kv_split_of(state);
    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = TG_TINY_MODEL;
    p.n_ctx = 256;
    p.kv_split = split;
    p.n_slots = 2;
    p.n_threads = 1; /* 2 cores shared by many: a spinning 2nd thread only hurts */
    p.embed_ctx = 64;
    struct tg_engine *e = NULL;
    char err[512] = "";
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_OK);
    struct tg_buf b;
    tg_buf_init(&b, 0);
    for (int i = 0; i < 200; i++)
        tg_buf_append_str(&b, "alpha beta gamma ");
    struct tg_engine_info in;
    tg_engine_info(e, &in);
    struct tg_chat_msg m[] = {{"user", b.data}};
    struct tg_engine_job j = user_job(m, 1, 8);
    err[0] = '\0';
    assert_int_equal(tg_engine_submit(e, &j, on_event, NULL, NULL, err, sizeof err), TG_CONTEXT);
    /* The message names both sizes. */
    char nctx[32];
    snprintf(nctx, sizeof nctx, "n_ctx %d", in.n_ctx);
    assert_non_null(strstr(err, nctx));
    assert_non_null(strstr(err, "prompt is "));
    long n_prompt = strtol(strstr(err, "prompt is ") + strlen("prompt is "), NULL, 10);
    assert_true(n_prompt > in.n_ctx);
    char limit[64];
    snprintf(limit, sizeof limit, "holds at most %d tokens", in.n_ctx_seq - 1);
    assert_non_null(strstr(err, limit));
    assert_int_equal(in.n_ctx_seq, split ? in.n_ctx / 2 : in.n_ctx);
    assert_int_equal(in.kv_split, split);
    if (split) { /* a prompt that fits n_ctx but not one slot's share */
        struct tg_buf mid;
        tg_buf_init(&mid, 0);
        long reps = 200L * (in.n_ctx + in.n_ctx_seq) / 2 / n_prompt; /* ~192 tokens */
        for (long i = 0; i < reps; i++)
            tg_buf_append_str(&mid, "alpha beta gamma ");
        struct tg_chat_msg mm[] = {{"user", mid.data}};
        struct tg_engine_job jm = user_job(mm, 1, 8);
        assert_int_equal(tg_engine_submit(e, &jm, on_event, NULL, NULL, err, sizeof err),
                         TG_CONTEXT);
        n_prompt = strtol(strstr(err, "prompt is ") + strlen("prompt is "), NULL, 10);
        assert_true(n_prompt < in.n_ctx && n_prompt >= in.n_ctx_seq);
        assert_non_null(strstr(err, "one slot's context"));
        assert_non_null(strstr(err, nctx));
        tg_buf_free(&mid);
    }

    struct tg_engine_job ej;
    memset(&ej, 0, sizeof ej);
    ej.kind = TG_JOB_EMBED;
    ej.prompt = b.data;
    assert_int_equal(tg_engine_submit(e, &ej, on_event, NULL, NULL, err, sizeof err),
                     TG_CONTEXT);
    assert_non_null(strstr(err, "embedding"));
    tg_buf_free(&b);
    tg_engine_destroy(e);
}

/* ---------------------------------------------------------------- batching */

static const char *USERS[8] = {
    "Tell me a joke.",          "What is 2+2?",        "Summarize: the cat sat.",
    "Translate hello to French.", "List three colours.", "Name a planet.",
    "Spell 'banana'.",          "Why is the sky blue?",
};

/* A temperature-0 prompt gives the same tokens alone and inside a full batch of 8; all 8
 * concurrent jobs complete. */
static void test_batch_identical_and_concurrent(void **state)
{
    (void)state;
    struct tg_engine *e = make_engine(8, -1, 0);
    struct tg_chat_msg m0[] = {{"user", USERS[0]}};
    struct tg_engine_job j0 = user_job(m0, 1, 32);
    struct coll alone;
    run_job(e, &j0, &alone);
    assert_int_equal(alone.type, TG_EV_DONE);

    struct tg_chat_msg m[8][1];
    struct coll c[8];
    uint64_t ids[8];
    for (int i = 0; i < 8; i++) {
        m[i][0] = (struct tg_chat_msg){"user", USERS[(i + 3) % 8]};
        struct tg_engine_job j = user_job(m[i], 1, 32);
        j.temperature = i % 2 ? 0.9f : 0.0f;
        j.seed = (uint32_t)(100 + i);
        j.stream = i % 3 == 0;
        coll_init(&c[i]);
        submit_ok(e, &j, &c[i], &ids[i]);
    }
    for (int i = 0; i < 8; i++) {
        coll_wait(&c[i]);
        assert_int_equal(c[i].n_final, 1);
        assert_int_equal(c[i].type, TG_EV_DONE);
        assert_true(c[i].usage.completion_tokens >= 1);
        for (int k = 0; k < i; k++)
            assert_true(ids[k] != ids[i]);
    }
    /* Now the greedy prompt from above inside a full batch of 8 (7 sampled neighbours). */
    struct coll d[8];
    for (int i = 0; i < 8; i++) {
        m[i][0] = (struct tg_chat_msg){"user", USERS[i]};
        struct tg_engine_job j = user_job(m[i], 1, 32);
        j.temperature = i == 0 ? 0.0f : 1.0f;
        j.seed = (uint32_t)(7 + i);
        coll_init(&d[i]);
        submit_ok(e, &j, &d[i], NULL);
    }
    for (int i = 0; i < 8; i++)
        coll_wait(&d[i]);
    assert_int_equal(d[0].type, TG_EV_DONE);
    assert_int_equal(d[0].usage.completion_tokens, alone.usage.completion_tokens);
    assert_int_equal(d[0].text.len, alone.text.len);
    assert_memory_equal(d[0].text.data, alone.text.data, alone.text.len);

    struct tg_engine_stats st;
    tg_engine_stats(e, &st);
    assert_int_equal(st.jobs_done, 17);
    assert_true(st.tokens_per_s > 0);
    assert_int_equal(st.slots_busy, 0);
    for (int i = 0; i < 8; i++) {
        coll_free(&c[i]);
        coll_free(&d[i]);
    }
    coll_free(&alone);
    tg_engine_destroy(e);
}

/* ---------------------------------------------------------------- cancel / busy / destroy */

static void test_cancel_frees_slot(void **state)
{
    (void)state;
    struct tg_engine *e = make_engine(1, -1, 0);
    struct tg_chat_msg m[] = {{"user", "Go on forever."}};
    struct tg_engine_job j = user_job(m, 1, 0);
    j.stream = true;
    j.temperature = 1.0f;
    struct coll c, q;
    coll_init(&c);
    coll_init(&q);
    uint64_t id, qid;
    submit_ok(e, &j, &c, &id);
    coll_wait_tokens(&c, 2);
    /* A second job waits behind it in the queue. */
    struct tg_engine_job j2 = user_job(m, 1, 4);
    submit_ok(e, &j2, &q, &qid);
    struct tg_engine_stats st;
    tg_engine_stats(e, &st);
    assert_int_equal(st.slots_busy, 1);
    assert_int_equal(st.queue_depth, 1);

    assert_int_equal(tg_engine_cancel(e, id), TG_OK);
    tg_engine_stats(e, &st);
    assert_int_equal(st.slots_busy, 0); /* free at once, before the scheduler runs */
    coll_wait(&c);
    assert_int_equal(c.type, TG_EV_DONE);
    assert_string_equal(c.finish, "cancelled");
    assert_true(c.usage.completion_tokens < 4000);
    assert_int_equal(tg_engine_cancel(e, id), TG_NOTFOUND);
    /* The queued job gets the slot and finishes. */
    coll_wait(&q);
    assert_int_equal(q.type, TG_EV_DONE);
    assert_int_equal(q.n_final, 1);

    /* Cancelling a queued job: DONE "cancelled" without ever running. a runs (long), b
     * waits behind it. */
    struct coll a, b;
    coll_init(&a);
    coll_init(&b);
    uint64_t aid, bid;
    j.max_tokens = 0; /* the whole context: it will not finish before we cancel it */
    submit_ok(e, &j, &a, &aid);
    coll_wait_tokens(&a, 1);
    submit_ok(e, &j, &b, &bid);
    tg_engine_stats(e, &st);
    assert_int_equal(st.queue_depth, 1);
    /* two jobs have finished, so the mean job time is known: b has to wait */
    assert_true(st.est_wait_ms > 0);
    assert_int_equal(tg_engine_cancel(e, bid), TG_OK);
    tg_engine_stats(e, &st);
    assert_int_equal(st.queue_depth, 0);
    assert_int_equal(tg_engine_cancel(e, aid), TG_OK);
    coll_wait(&a);
    coll_wait(&b);
    assert_string_equal(b.finish, "cancelled");
    assert_int_equal(b.usage.completion_tokens, 0);
    assert_int_equal(b.n_tokens, 0);
    assert_string_equal(a.finish, "cancelled");
    usleep(50000);
    assert_int_equal(a.n_final, 1);
    assert_int_equal(b.n_final, 1);
    assert_int_equal(c.n_final, 1);
    assert_false(a.token_after_final);
    tg_engine_destroy(e);
    coll_free(&a);
    coll_free(&b);
    coll_free(&c);
    coll_free(&q);
}

static void test_busy_and_destroy_pending(void **state)
{
    (void)state;
    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = TG_TINY_MODEL;
    p.n_ctx = 2048;
    p.n_slots = 1;
    p.n_threads = 1; /* 2 cores shared by many: a spinning 2nd thread only hurts */
    p.queue_max = 2;
    p.embed_ctx = -1;
    struct tg_engine *e = NULL;
    char err[256];
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_OK);
    struct tg_chat_msg m[] = {{"user", "Go on forever."}};
    struct tg_engine_job j = user_job(m, 1, 2000);
    j.temperature = 1.0f;
    struct coll c[4];
    for (int i = 0; i < 4; i++)
        coll_init(&c[i]);
    submit_ok(e, &j, &c[0], NULL);
    /* wait until it runs so the queue is empty again */
    for (int t = 0; t < 1000; t++) {
        struct tg_engine_stats st;
        tg_engine_stats(e, &st);
        if (st.slots_busy == 1)
            break;
        usleep(1000);
    }
    submit_ok(e, &j, &c[1], NULL);
    submit_ok(e, &j, &c[2], NULL);
    err[0] = '\0';
    assert_int_equal(tg_engine_submit(e, &j, on_event, &c[3], NULL, err, sizeof err), TG_BUSY);
    assert_non_null(strstr(err, "queue"));
    struct tg_engine_stats st;
    tg_engine_stats(e, &st);
    assert_int_equal(st.queue_depth, 2);

    struct tg_engine_job ej;
    memset(&ej, 0, sizeof ej);
    ej.kind = TG_JOB_EMBED;
    ej.prompt = "x";
    assert_int_equal(tg_engine_submit(e, &ej, on_event, &c[3], NULL, err, sizeof err),
                     TG_UNSUPPORTED);

    tg_engine_destroy(e); /* every accepted job gets exactly one final event */
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c[i].n_final, 1);
        assert_int_equal(c[i].type, TG_EV_ERROR);
        assert_int_equal(c[i].err, TG_CLOSED);
    }
    assert_int_equal(c[3].n_final, 0);
    for (int i = 0; i < 4; i++)
        coll_free(&c[i]);
}

/* ---------------------------------------------------------------- prefix cache */

/* Both layouts. With kv_split the third prompt finds the second one's prompt in the slot
 * (the first one's was cut back to the shared system prompt when the second one hit it). */
static void test_prefix_cache_identical(void **state)
{
    bool split = kv_split_of(state);
    struct tg_engine *warm = make_engine_kv(2, 4, 16, split, 0);
    struct tg_engine *cold = make_engine(2, -1, 0);
    const char *asks[3] = {"Ticket 1: my invoice is wrong.", "Ticket 2: the app crashes.",
                           "Ticket 1: my invoice is wrong."};
    for (int i = 0; i < 3; i++) {
        struct tg_chat_msg m[] = {{"system", LONG_SYS}, {"user", asks[i]}};
        struct tg_engine_job j = user_job(m, 2, 24);
        struct coll w, c;
        run_job(warm, &j, &w);
        run_job(cold, &j, &c);
        assert_int_equal(w.type, TG_EV_DONE);
        assert_int_equal(c.type, TG_EV_DONE);
        assert_int_equal(c.usage.cached_tokens, 0);
        if (i == 0)
            assert_int_equal(w.usage.cached_tokens, 0);
        else
            assert_true(w.usage.cached_tokens > 40); /* the whole system prompt at least */
        if (i == 2 && !split) /* same prompt again: all but the last token */
            assert_int_equal(w.usage.cached_tokens, w.usage.prompt_tokens - 1);
        assert_int_equal(w.usage.completion_tokens, c.usage.completion_tokens);
        assert_int_equal(w.text.len, c.text.len);
        assert_memory_equal(w.text.data, c.text.data, c.text.len);
        coll_free(&w);
        coll_free(&c);
    }
    struct tg_engine_stats st;
    tg_engine_stats(warm, &st);
    assert_int_equal(st.prefix_cache_hits, 2);
    assert_int_equal(st.prefix_cache_misses, 1);
    assert_true(st.prefix_cache_tokens > 80);
    assert_true(st.prefix_cache_entries >= 1 && st.prefix_cache_entries <= 4);
    tg_engine_destroy(warm);
    tg_engine_destroy(cold);
}

/* Unified: an entry no running job shares is moved out of the KV cache while other jobs run
 * (so the attention range of their steps does not cover it) and copied back on a hit.
 * kv_split: a slot's kept prompt is copied to host memory when the slot is taken for an
 * unrelated prompt and restored into whichever slot the hit gets. Either way the output
 * stays identical to a cold run. spill_bytes: the budget under test (1 GiB: moved out and
 * back; 1 = too small for any entry: dropped instead; 0 = the default: off when unified (the
 * entry stays in the KV cache), the KV cache's size with kv_split; -1 = off). */
static void prefix_spill_case(bool split, int64_t spill_bytes)
{
    bool moves = spill_bytes > 1 || (split && spill_bytes == 0);
    bool hit = moves || (!split && spill_bytes <= 0);
    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = TG_TINY_MODEL;
    p.n_ctx = 4096;
    p.n_slots = 2;
    p.n_threads = 1; /* 2 cores shared by many: a spinning 2nd thread only hurts */
    p.prefix_cache_entries = 8; /* room for a's entry and every b's */
    p.prefix_cache_min_tokens = 16;
    p.prefix_cache_spill_bytes = spill_bytes;
    p.kv_split = split;
    p.embed_ctx = -1;
    struct tg_engine *warm = NULL;
    char err[256] = "";
    assert_int_equal(tg_engine_create(&p, &warm, err, sizeof err), TG_OK);
    struct tg_engine *cold = make_engine(1, -1, 0);

    /* The b jobs decode > SPILL_AFTER_ROWS (256) batch rows beside a's idle entry: four
     * prompts of ~100 tokens that share no cacheable prefix (each starts with its own
     * number), so each is prefilled in full. */
    static const char *OTHER_SYS =
        "You translate shipping notices into short plain summaries for a warehouse team, "
        "listing the parcel count, the carrier, the sender, the expected delivery day and "
        "any customs paperwork that is still missing. Quote reference numbers exactly as "
        "written, keep weights in the units given, and say plainly when a notice does not "
        "name a carrier or a delivery day instead of guessing one.";
    struct tg_chat_msg a[] = {{"system", LONG_SYS}, {"user", "Ticket 1: my invoice is wrong."}};
    struct tg_chat_msg c[] = {{"system", LONG_SYS}, {"user", "Ticket 2: the app crashes."}};
    struct tg_engine_job ja = user_job(a, 2, 8), jc = user_job(c, 2, 24);
    struct coll w, k;
    run_job(warm, &ja, &w);
    coll_free(&w);
    struct tg_engine_stats st;
    tg_engine_stats(warm, &st);
    assert_int_equal(st.prefix_cache_spills, 0); /* nothing ran beside it: nothing moved */
    int rows = 0;
    for (int i = 0; i < 4; i++) { /* a's entry is idle while the b jobs run */
        char sys[1024];
        snprintf(sys, sizeof sys, "%d. %s", 17 + 13 * i, OTHER_SYS);
        struct tg_chat_msg b[] = {{"system", sys}, {"user", "Two parcels, DHL, Friday."}};
        struct tg_engine_job jb = user_job(b, 2, 8);
        run_job(warm, &jb, &w);
        assert_int_equal(w.usage.cached_tokens, 0);
        rows += w.usage.prompt_tokens + w.usage.completion_tokens - 1;
        coll_free(&w);
    }
    assert_true(rows > 256);
    tg_engine_stats(warm, &st);
    if (moves) {
        assert_true(st.prefix_cache_spills >= 1);
        assert_true(st.prefix_cache_spilled_bytes > 0);
    } else {
        assert_int_equal(st.prefix_cache_spills, 0);
        assert_int_equal(st.prefix_cache_spilled_bytes, 0);
    }

    run_job(warm, &jc, &w); /* shares a's system prompt */
    run_job(cold, &jc, &k);
    assert_int_equal(w.type, TG_EV_DONE);
    assert_int_equal(k.type, TG_EV_DONE);
    tg_engine_stats(warm, &st);
    if (!hit) { /* no room to keep it: dropped, so a miss */
        assert_int_equal(w.usage.cached_tokens, 0);
        assert_int_equal(st.prefix_cache_restores, 0);
    } else {
        assert_true(w.usage.cached_tokens > 40);
        assert_int_equal(st.prefix_cache_restores, moves ? 1 : 0);
    }
    struct tg_engine_info in;
    tg_engine_info(warm, &in);
    assert_true(in.prefix_cache_spill_bytes == 0 || st.prefix_cache_spilled_bytes <=
                                                        in.prefix_cache_spill_bytes);
    assert_int_equal(w.usage.completion_tokens, k.usage.completion_tokens);
    assert_same_text(&w, &k);
    coll_free(&w);
    coll_free(&k);
    tg_engine_destroy(warm);
    tg_engine_destroy(cold);
}

static void test_prefix_cache_spill(void **state)
{
    bool split = kv_split_of(state);
    prefix_spill_case(split, (int64_t)1 << 30);
    prefix_spill_case(split, 1);
    prefix_spill_case(split, 0);
    if (split)
        prefix_spill_case(split, -1);
}

/* Many distinct prompts through a small KV cache: cached prefixes are evicted instead of
 * failing jobs (unified); with kv_split each slot's share holds its job and its kept
 * prefix, which the next job cuts back to the shared part. */
static void test_prefix_cache_eviction(void **state)
{
    bool split = kv_split_of(state);
    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = TG_TINY_MODEL;
    p.n_ctx = split ? 512 : 256;
    p.kv_split = split;
    p.n_slots = 2;
    p.n_threads = 1; /* 2 cores shared by many: a spinning 2nd thread only hurts */
    p.prefix_cache_entries = 8;
    p.prefix_cache_min_tokens = 8;
    p.embed_ctx = -1;
    struct tg_engine *e = NULL;
    char err[256];
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_OK);
    for (int i = 0; i < 12; i++) {
        char user[128];
        snprintf(user, sizeof user, "Request number %d about topic %d, please answer.", i,
                 i * 7);
        struct tg_chat_msg m[] = {{"system", LONG_SYS}, {"user", user}};
        struct tg_engine_job j = user_job(m, 2, 40);
        struct coll c;
        run_job(e, &j, &c);
        assert_int_equal(c.type, TG_EV_DONE);
        coll_free(&c);
    }
    struct tg_engine_stats st;
    tg_engine_stats(e, &st);
    assert_int_equal(st.prefix_cache_hits, 11);
    tg_engine_destroy(e);
}

/* Both layouts: prompts with distinct prefixes through one slot and two entries; the least
 * recently used entry goes (unified: by count; kv_split: host entries by count and by
 * bytes), a hit on a surviving one equals a cold run. */
static void test_prefix_cache_lru(void **state)
{
    bool split = kv_split_of(state);
    static const char *SYS =
        "You sort warehouse notices for a logistics team. Read the notice and state the "
        "parcel count, the carrier and the delivery day in one short line, quoting "
        "reference numbers exactly and never guessing what the notice does not say.";
    char sys[4][512];
    struct tg_chat_msg m[4][2];
    struct tg_engine_job jobs[4];
    for (int i = 0; i < 4; i++) {
        snprintf(sys[i], sizeof sys[i], "%d. %s", 21 + 11 * i, SYS);
        m[i][0] = (struct tg_chat_msg){"system", sys[i]};
        m[i][1] = (struct tg_chat_msg){"user", "Three parcels, UPS, Monday."};
        jobs[i] = user_job(m[i], 2, 12);
    }
    struct tg_engine *cold = make_engine(1, -1, 0);
    struct tg_engine *warm = make_engine_kv(1, 2, 16, split, (int64_t)1 << 30);
    struct coll w, k;
    for (int i = 0; i < 3; i++) { /* P0 P1 P2: P0 is the least recently used */
        run_job(warm, &jobs[i], &w);
        assert_int_equal(w.usage.cached_tokens, 0);
        coll_free(&w);
    }
    struct tg_engine_stats st;
    tg_engine_stats(warm, &st);
    assert_true(st.prefix_cache_entries <= 3); /* 2 entries (+ the slot's own, split) */
    run_job(warm, &jobs[1], &w); /* P1 survived */
    run_job(cold, &jobs[1], &k);
    assert_int_equal(w.usage.cached_tokens, w.usage.prompt_tokens - 1);
    assert_same_text(&w, &k);
    coll_free(&w);
    coll_free(&k);
    run_job(warm, &jobs[0], &w); /* P0 was evicted */
    assert_int_equal(w.usage.cached_tokens, 0);
    coll_free(&w);
    tg_engine_stats(warm, &st);
    if (split) {
        assert_int_equal(st.prefix_cache_restores, 1);
        /* By bytes: a budget for one entry and a half keeps only the newest copy. */
        int64_t one = st.prefix_cache_spilled_bytes / 2;
        assert_true(one > 0);
        tg_engine_destroy(warm);
        warm = make_engine_kv(1, 8, 16, true, one + one / 2);
        for (int i = 0; i < 3; i++) { /* host: P0, then P1 replaces it */
            run_job(warm, &jobs[i], &w);
            coll_free(&w);
        }
        tg_engine_stats(warm, &st);
        assert_true(st.prefix_cache_spilled_bytes <= one + one / 2);
        assert_int_equal(st.prefix_cache_spills, 2);
        run_job(warm, &jobs[1], &w); /* the newest copy: a hit */
        assert_int_equal(w.usage.cached_tokens, w.usage.prompt_tokens - 1);
        coll_free(&w);
        run_job(warm, &jobs[0], &w); /* dropped for the budget: a miss */
        assert_int_equal(w.usage.cached_tokens, 0);
        coll_free(&w);
    }
    tg_engine_destroy(warm);
    tg_engine_destroy(cold);
}

/* Both layouts: a job that hit the cache is cancelled mid-generation; later hits on the
 * same prefix (and on its own prompt) still equal a cold run. */
static void test_prefix_cache_cancel_hit(void **state)
{
    bool split = kv_split_of(state);
    struct tg_engine *warm = make_engine_kv(1, 4, 16, split, 0);
    struct tg_engine *cold = make_engine(1, -1, 0);
    struct tg_chat_msg a[] = {{"system", LONG_SYS}, {"user", "Ticket 1: my invoice is wrong."}};
    struct tg_chat_msg b[] = {{"system", LONG_SYS}, {"user", "Ticket 2: the app crashes."}};
    struct tg_chat_msg c[] = {{"system", LONG_SYS}, {"user", "Ticket 3: where is my order?"}};
    struct tg_engine_job ja = user_job(a, 2, 8), jb = user_job(b, 2, 0), jc = user_job(c, 2, 24);
    jb.stream = true;
    jb.temperature = 1.0f;
    struct coll w, k;
    run_job(warm, &ja, &w);
    coll_free(&w);
    uint64_t id;
    coll_init(&w);
    submit_ok(warm, &jb, &w, &id);
    coll_wait_tokens(&w, 2);
    assert_int_equal(tg_engine_cancel(warm, id), TG_OK);
    coll_wait(&w);
    assert_string_equal(w.finish, "cancelled");
    assert_true(w.usage.cached_tokens > 40);
    coll_free(&w);
    struct tg_engine_job jobs[2] = {jc, jb};
    jobs[1].stream = false;
    jobs[1].temperature = 0;
    jobs[1].max_tokens = 24;
    for (int i = 0; i < 2; i++) {
        run_job(warm, &jobs[i], &w);
        run_job(cold, &jobs[i], &k);
        assert_int_equal(w.type, TG_EV_DONE);
        assert_true(w.usage.cached_tokens > 40);
        assert_same_text(&w, &k);
        coll_free(&w);
        coll_free(&k);
    }
    tg_engine_destroy(warm);
    tg_engine_destroy(cold);
}

/* Both layouts: 8 concurrent jobs sharing a system prompt, twice; the second round hits the
 * cache (kv_split: every job finds its own earlier prompt in a slot) and gives the same
 * tokens as the first, cold one. */
static void test_prefix_cache_concurrent8(void **state)
{
    bool split = kv_split_of(state);
    struct tg_engine *e = make_engine_kv(8, 8, 16, split, 0);
    struct coll c[2][8];
    struct tg_chat_msg m[8][2];
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < 8; i++) {
            m[i][0] = (struct tg_chat_msg){"system", LONG_SYS};
            m[i][1] = (struct tg_chat_msg){"user", USERS[i]};
            struct tg_engine_job j = user_job(m[i], 2, 16);
            coll_init(&c[r][i]);
            submit_ok(e, &j, &c[r][i], NULL);
        }
        for (int i = 0; i < 8; i++) {
            coll_wait(&c[r][i]);
            assert_int_equal(c[r][i].type, TG_EV_DONE);
            if (r == 1)
                assert_true(c[r][i].usage.cached_tokens > 40);
        }
    }
    for (int i = 0; i < 8; i++) {
        assert_int_equal(c[1][i].text.len, c[0][i].text.len);
        assert_memory_equal(c[1][i].text.data, c[0][i].text.data, c[0][i].text.len);
        if (split) /* its own prompt, all but the last token */
            assert_int_equal(c[1][i].usage.cached_tokens, c[1][i].usage.prompt_tokens - 1);
        coll_free(&c[0][i]);
        coll_free(&c[1][i]);
    }
    tg_engine_destroy(e);
}

/* Both layouts: jobs in slots 0 and 2 keep decoding after the short one in slot 1 ended
 * and left its prompt in the slot. With kv_split each step then gets a padding row in slot 1
 * (so the batch stays one ubatch of consecutive sequences), removed after the decode: the
 * running jobs' tokens and a later hit on slot 1's kept prompt must match cold runs, and
 * every step gets its padding row. Slot 1's kept prompt is so long that its share of the
 * cache has no room for one padding row per step: rows left behind would stop the padding
 * before the other jobs end. */
static void test_gap_fill_identical(void **state)
{
    bool split = kv_split_of(state);
    struct tg_engine *e = make_engine_ctx(3 * 256, 3, 4, 16, split, 0);
    struct tg_engine *cold = make_engine(1, -1, 0);
    struct tg_buf long_ask;
    tg_buf_init(&long_ask, 0);
    tg_buf_append_str(&long_ask, "Ticket 2: the app crashes when I open the settings page.");
    for (int i = 0; i < 16; i++)
        tg_buf_append_str(&long_ask, " The error mentions a network timeout.");
    const char *asks[3] = {"Ticket 1: my invoice is wrong.", long_ask.data,
                           "Ticket 3: where is my parcel?"};
    const int32_t max[3] = {60, 2, 60};
    struct tg_chat_msg m[3][2];
    struct coll c[3], k;
    for (int i = 0; i < 3; i++) {
        m[i][0] = (struct tg_chat_msg){"system", LONG_SYS};
        m[i][1] = (struct tg_chat_msg){"user", asks[i]};
        struct tg_engine_job j = user_job(m[i], 2, max[i]);
        coll_init(&c[i]);
        submit_ok(e, &j, &c[i], NULL); /* empty slots are taken lowest first: slot i */
    }
    for (int i = 0; i < 3; i++) {
        coll_wait(&c[i]);
        assert_int_equal(c[i].type, TG_EV_DONE);
        struct tg_engine_job j = user_job(m[i], 2, max[i]);
        run_job(cold, &j, &k);
        assert_same_text(&c[i], &k);
        coll_free(&k);
    }
    assert_int_equal(c[0].usage.completion_tokens, 60);
    assert_int_equal(c[1].usage.completion_tokens, 2);
    struct tg_engine_info in;
    tg_engine_info(e, &in);
    struct tg_engine_stats st;
    tg_engine_stats(e, &st);
    if (split) {
        /* one row per step after slot 1's job ended, give or take the start; more than the
         * cells left beside slot 1's kept prompt */
        assert_true(c[1].usage.prompt_tokens + 60 - 6 > in.n_ctx_seq);
        assert_true(st.gap_rows >= 60 - 6);
    } else {
        assert_int_equal(st.gap_rows, 0);
    }

    /* Slot 1's kept prompt (split) or the cached prefix (unified), after the padding. */
    struct tg_engine_job j = user_job(m[1], 2, 8);
    coll_free(&c[1]);
    run_job(e, &j, &c[1]);
    assert_int_equal(c[1].type, TG_EV_DONE);
    assert_true(c[1].usage.cached_tokens > 40);
    run_job(cold, &j, &k);
    assert_same_text(&c[1], &k);
    coll_free(&k);
    for (int i = 0; i < 3; i++)
        coll_free(&c[i]);
    tg_buf_free(&long_ask);
    tg_engine_destroy(e);
    tg_engine_destroy(cold);
}

/* ---------------------------------------------------------------- classify */

static void test_classify_100(void **state)
{
    struct tg_engine *e = *state;
    const char *labels[] = {"positive", "negative", "neutral", "mixed feelings"};
    const char *texts[] = {"I love it!", "Worst purchase ever.", "It is a chair.",
                           "Great screen, awful battery."};
    enum { N = 100 };
    struct coll *c = calloc(N, sizeof *c);
    int counts[4] = {0};
    for (int i = 0; i < N; i++) {
        struct tg_engine_job j;
        memset(&j, 0, sizeof j);
        j.kind = TG_JOB_CLASSIFY;
        j.prompt = texts[i % 4];
        j.labels = labels;
        j.n_labels = 4;
        j.temperature = 1.0f;
        j.seed = (uint32_t)(1000 + i);
        j.instructions = i % 2 ? "Classify the sentiment of the review." : NULL;
        coll_init(&c[i]);
        submit_ok(e, &j, &c[i], NULL);
    }
    for (int i = 0; i < N; i++) {
        coll_wait(&c[i]);
        if (c[i].type != TG_EV_DONE)
            fprintf(stderr, "trial %d: %s\n", i, c[i].msg);
        assert_int_equal(c[i].type, TG_EV_DONE);
        assert_int_equal(c[i].n_labels, 1);
        assert_true(c[i].labels[0] >= 0 && c[i].labels[0] < 4);
        assert_string_equal(c[i].text.data, labels[c[i].labels[0]]);
        assert_true(c[i].confidence > 0.0 && c[i].confidence <= 1.0);
        counts[c[i].labels[0]]++;
        coll_free(&c[i]);
    }
    free(c);
    /* With temperature 1 over random weights more than one label should come up. */
    int distinct = 0;
    for (int k = 0; k < 4; k++)
        distinct += counts[k] > 0;
    assert_true(distinct >= 2);

    /* Greedy: confidence is the product of the label's token probabilities; deterministic. */
    struct tg_engine_job j;
    memset(&j, 0, sizeof j);
    j.kind = TG_JOB_CLASSIFY;
    j.prompt = texts[0];
    j.labels = labels;
    j.n_labels = 4;
    struct coll g1, g2;
    run_job(e, &j, &g1);
    run_job(e, &j, &g2);
    assert_int_equal(g1.labels[0], g2.labels[0]);
    /* Same label, same confidence up to float rounding: attention sums over KV cells in cell
     * order, and which free cells a job gets depends on what earlier jobs and prefix-cache
     * spills left behind (a few ulp in the logits, ~1e-7 relative). */
    if (fabs(g1.confidence - g2.confidence) > 1e-5 * g1.confidence)
        fprintf(stderr, "confidence %.12f vs %.12f\n", g1.confidence, g2.confidence);
    assert_true(fabs(g1.confidence - g2.confidence) <= 1e-5 * g1.confidence);
    coll_free(&g1);
    coll_free(&g2);
}

static void test_classify_multi(void **state)
{
    struct tg_engine *e = *state;
    const char *labels[] = {"billing", "urgent", "bug", "feature \"request\""};
    for (int i = 0; i < 20; i++) {
        struct tg_engine_job j;
        memset(&j, 0, sizeof j);
        j.kind = TG_JOB_CLASSIFY;
        j.prompt = "I was charged twice and the app crashes, fix it now!";
        j.labels = labels;
        j.n_labels = 4;
        j.multi_label = true;
        j.temperature = 1.0f;
        j.seed = (uint32_t)(50 + i);
        struct coll c;
        run_job(e, &j, &c);
        if (c.type != TG_EV_DONE)
            fprintf(stderr, "multi %d: %s\n", i, c.msg);
        assert_int_equal(c.type, TG_EV_DONE);
        assert_true(c.n_labels >= 1 && c.n_labels <= 4);
        assert_true(c.text.data[0] == '[');
        for (size_t k = 0; k < c.n_labels; k++)
            assert_true(c.labels[k] >= 0 && c.labels[k] < 4);
        assert_true(c.confidence > 0.0 && c.confidence <= 1.0);
        coll_free(&c);
    }
}

/* ---------------------------------------------------------------- extract */

static const char *SCHEMAS[] = {
    /* nested object with enum, integer, boolean, null-able */
    "{\"type\":\"object\",\"properties\":{"
    "\"customer\":{\"type\":\"object\",\"properties\":{"
    "\"tier\":{\"enum\":[\"free\",\"pro\",\"enterprise\"]},"
    "\"seats\":{\"type\":\"integer\"},\"active\":{\"type\":\"boolean\"}},"
    "\"required\":[\"tier\",\"seats\"],\"additionalProperties\":false},"
    "\"refund\":{\"type\":[\"number\",\"null\"]}},"
    "\"required\":[\"customer\",\"refund\"],\"additionalProperties\":false}",
    /* array of objects */
    "{\"type\":\"object\",\"properties\":{\"items\":{\"type\":\"array\",\"items\":{"
    "\"type\":\"object\",\"properties\":{\"sku\":{\"enum\":[\"A1\",\"B2\",\"C3\"]},"
    "\"qty\":{\"type\":\"integer\"},\"gift\":{\"type\":\"boolean\"}},"
    "\"required\":[\"sku\",\"qty\"],\"additionalProperties\":false}},"
    "\"total\":{\"type\":\"number\"}},\"required\":[\"items\",\"total\"]}",
    /* strings, arrays of enums, deeper nesting */
    "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"enum\":[\"vip\",\"late\",\"new\"]}},"
    "\"address\":{\"type\":\"object\",\"properties\":{\"geo\":{\"type\":\"object\","
    "\"properties\":{\"lat\":{\"type\":\"number\"},\"lon\":{\"type\":\"number\"}},"
    "\"required\":[\"lat\",\"lon\"]},\"zip\":{\"type\":\"null\"}},\"required\":[\"geo\"]}},"
    "\"required\":[\"name\",\"tags\",\"address\"],\"additionalProperties\":false}",
};

static void test_extract_100(void **state)
{
    struct tg_engine *e = *state;
    int trials = getenv("TG_EXTRACT_TRIALS") ? (int)strtol(getenv("TG_EXTRACT_TRIALS"), NULL, 10)
                                              : 100;
    for (size_t s = 0; s < sizeof SCHEMAS / sizeof SCHEMAS[0]; s++) {
        struct tg_schema *sc = NULL;
        char err[256];
        assert_int_equal(tg_schema_compile_text(SCHEMAS[s], strlen(SCHEMAS[s]), &sc, err,
                                                sizeof err),
                         0);
        struct coll *c = calloc((size_t)trials, sizeof *c);
        for (int i = 0; i < trials; i++) {
            struct tg_engine_job j;
            memset(&j, 0, sizeof j);
            j.kind = TG_JOB_EXTRACT;
            j.prompt = "Order from Ann (pro plan, 3 seats): 2x A1, 1x C3 gift. Refund 12.50.";
            j.schema_json = SCHEMAS[s];
            j.temperature = 1.0f;
            j.seed = (uint32_t)(s * 1000 + (size_t)i + 1);
            j.stream = i % 10 == 0;
            coll_init(&c[i]);
            submit_ok(e, &j, &c[i], NULL);
        }
        for (int i = 0; i < trials; i++) {
            coll_wait(&c[i]);
            if (c[i].type != TG_EV_DONE)
                fprintf(stderr, "schema %zu trial %d: %s\n", s, i, c[i].msg);
            assert_int_equal(c[i].type, TG_EV_DONE);
            assert_string_equal(c[i].finish, "stop");
            /* validate independently of the engine */
            assert_true(tg_schema_validate_text(sc, c[i].text.data, c[i].text.len, err,
                                                sizeof err));
            if (c[i].n_tokens > 0) {
                assert_int_equal(c[i].streamed.len, c[i].text.len);
                assert_memory_equal(c[i].streamed.data, c[i].text.data, c[i].text.len);
            }
            coll_free(&c[i]);
        }
        free(c);
        tg_schema_free(sc);
    }
}

static void test_extract_invalid_schema(void **state)
{
    struct tg_engine *e = *state;
    struct {
        const char *schema;
        const char *want; /* in the message */
    } rows[] = {
        {"{\"type\":\"object\",\"properties\":{\"a\":{\"oneOf\":[]}}}", "#/properties/a"},
        {"{\"type\":\"strnig\"}", "#/type"},
        {"{not json", "invalid JSON"},
        {"{\"type\":\"array\",\"items\":[{\"type\":\"string\"}]}", "#/items"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct tg_engine_job j;
        memset(&j, 0, sizeof j);
        j.kind = TG_JOB_EXTRACT;
        j.prompt = "x";
        j.schema_json = rows[i].schema;
        char err[512] = "";
        assert_int_equal(tg_engine_submit(e, &j, on_event, NULL, NULL, err, sizeof err),
                         TG_SCHEMA);
        if (!strstr(err, rows[i].want))
            fprintf(stderr, "row %zu: '%s' lacks '%s'\n", i, err, rows[i].want);
        assert_non_null(strstr(err, rows[i].want));
    }
}

/* ---------------------------------------------------------------- embeddings */

static void embed(struct tg_engine *e, const char *text, struct coll *c)
{
    struct tg_engine_job j;
    memset(&j, 0, sizeof j);
    j.kind = TG_JOB_EMBED;
    j.prompt = text;
    run_job(e, &j, c);
    assert_int_equal(c->type, TG_EV_DONE);
}

static void test_embeddings(void **state)
{
    struct tg_engine *e = *state;
    struct tg_engine_info in;
    tg_engine_info(e, &in);
    struct coll a, b, d;
    embed(e, "The quick brown fox jumps over the lazy dog.", &a);
    embed(e, "The quick brown fox jumps over the lazy dog.", &b);
    embed(e, "Completely different words here.", &d);
    assert_int_equal(a.n_embd, in.n_embd);
    assert_int_equal(d.n_embd, in.n_embd);
    assert_true(a.usage.prompt_tokens > 5);
    assert_memory_equal(a.emb, b.emb, sizeof(float) * (size_t)a.n_embd); /* deterministic */
    double norm = 0, diff = 0;
    for (int32_t i = 0; i < a.n_embd; i++) {
        norm += (double)a.emb[i] * a.emb[i];
        diff += fabs((double)a.emb[i] - d.emb[i]);
        assert_true(isfinite(a.emb[i]));
    }
    assert_true(fabs(norm - 1.0) < 1e-4);
    assert_true(diff > 1e-3);

    /* Embedding while generation runs does not disturb either. */
    struct tg_chat_msg m[] = {{"user", USERS[1]}};
    struct tg_engine_job g = user_job(m, 1, 16);
    struct coll g1, g2, x;
    run_job(e, &g, &g1);
    coll_init(&g2);
    submit_ok(e, &g, &g2, NULL);
    embed(e, "The quick brown fox jumps over the lazy dog.", &x);
    coll_wait(&g2);
    assert_memory_equal(x.emb, a.emb, sizeof(float) * (size_t)a.n_embd);
    assert_int_equal(g1.text.len, g2.text.len);
    assert_memory_equal(g1.text.data, g2.text.data, g1.text.len);
    coll_free(&a);
    coll_free(&b);
    coll_free(&d);
    coll_free(&g1);
    coll_free(&g2);
    coll_free(&x);
}


/* ---------------------------------------------------------------- chunked prefill, KV full */

struct watch {
    struct coll *other; /* stream whose progress we sample */
    int other_tokens_at_first;
    struct coll self;
};

static void on_event_watch(const struct tg_engine_event *ev, void *user)
{
    struct watch *w = user;
    if (ev->type == TG_EV_TOKEN && w->other_tokens_at_first < 0) {
        pthread_mutex_lock(&w->other->mu);
        w->other_tokens_at_first = w->other->n_tokens;
        pthread_mutex_unlock(&w->other->mu);
    }
    on_event(ev, &w->self);
}

/* A long prompt is prefilled in n_batch chunks while a running stream keeps producing
 * tokens, and the chunked prompt gives the same greedy output as a one-shot prefill. */
static void test_chunked_prefill(void **state)
{
    (void)state;
    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = TG_TINY_MODEL;
    p.n_ctx = 2048;
    p.n_slots = 2;
    p.n_threads = 1;
    p.n_batch = 32;
    p.prefix_cache_entries = -1;
    p.embed_ctx = -1;
    struct tg_engine *e = NULL;
    char err[256];
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_OK);
    struct tg_engine *ref = make_engine(1, -1, 0); /* n_batch 512: one-shot prefill */

    struct tg_buf longp;
    tg_buf_init(&longp, 0);
    for (int i = 0; i < 12; i++)
        tg_buf_append_str(&longp, LONG_SYS);
    struct tg_chat_msg mb[] = {{"system", longp.data}, {"user", "Summarize."}};
    struct tg_engine_job jb = user_job(mb, 2, 16);
    jb.stream = true;

    struct tg_chat_msg ma[] = {{"user", "Go on."}};
    struct tg_engine_job ja = user_job(ma, 1, 400);
    ja.stream = true;
    struct coll a;
    coll_init(&a);
    uint64_t aid;
    submit_ok(e, &ja, &a, &aid);
    coll_wait_tokens(&a, 1);

    struct watch w;
    w.other = &a;
    w.other_tokens_at_first = -1;
    coll_init(&w.self);
    assert_int_equal(tg_engine_submit(e, &jb, on_event_watch, &w, NULL, err, sizeof err), TG_OK);
    coll_wait(&w.self);
    assert_int_equal(w.self.type, TG_EV_DONE);
    int n_chunks = (w.self.usage.prompt_tokens + 30) / 31;
    assert_true(n_chunks >= 10);
    /* The stream got about one token per prefill chunk (minus UTF-8/holdback merging). */
    assert_true(w.other_tokens_at_first >= n_chunks / 2);

    struct coll r;
    run_job(ref, &jb, &r);
    assert_int_equal(r.usage.prompt_tokens, w.self.usage.prompt_tokens);
    assert_int_equal(r.text.len, w.self.text.len);
    assert_memory_equal(r.text.data, w.self.text.data, r.text.len);

    assert_int_equal(tg_engine_cancel(e, aid), TG_OK);
    coll_wait(&a);
    coll_free(&a);
    coll_free(&w.self);
    coll_free(&r);
    tg_buf_free(&longp);
    tg_engine_destroy(ref);
    tg_engine_destroy(e);
}

/* Two jobs that together outgrow the KV cache: the newer one fails with TG_CONTEXT, the
 * older one runs to its length limit. */
static void test_kv_full(void **state)
{
    (void)state;
    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = TG_TINY_MODEL;
    p.n_ctx = 256;
    p.n_slots = 2;
    p.n_threads = 1;
    p.kv_split = false; /* one cache both jobs fill (split: each stops at its own share) */
    p.prefix_cache_entries = -1;
    p.embed_ctx = -1;
    struct tg_engine *e = NULL;
    char err[256];
    assert_int_equal(tg_engine_create(&p, &e, err, sizeof err), TG_OK);
    struct tg_chat_msg m[] = {{"user", "Count to a thousand."}};
    struct tg_engine_job j = user_job(m, 1, 0);
    struct coll c[2];
    uint64_t id[2];
    for (int i = 0; i < 2; i++) {
        coll_init(&c[i]);
        submit_ok(e, &j, &c[i], &id[i]);
    }
    coll_wait(&c[0]);
    coll_wait(&c[1]);
    assert_true(id[1] > id[0]);
    if (c[0].type == TG_EV_DONE && strcmp(c[0].finish, "stop") == 0)
        skip(); /* the model ended on its own before the cache filled */
    assert_int_equal(c[1].type, TG_EV_ERROR);
    assert_int_equal(c[1].err, TG_CONTEXT);
    assert_non_null(strstr(c[1].msg, "KV cache full"));
    assert_int_equal(c[0].type, TG_EV_DONE);
    assert_string_equal(c[0].finish, "length");
    /* The engine is fine afterwards. */
    struct tg_engine_job small = user_job(m, 1, 4);
    struct coll d;
    run_job(e, &small, &d);
    assert_int_equal(d.type, TG_EV_DONE);
    coll_free(&c[0]);
    coll_free(&c[1]);
    coll_free(&d);
    tg_engine_destroy(e);
}

/* ---------------------------------------------------------------- main */

static int shared_setup(void **state)
{
    *state = make_engine(4, 8, 32);
    return 0;
}

static int shared_teardown(void **state)
{
    tg_engine_destroy(*state);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_and_stop_helpers),
        cmocka_unit_test(test_create_errors),
        cmocka_unit_test(test_info),
        cmocka_unit_test(test_kv_quant),
        cmocka_unit_test(test_kv_split),
        cmocka_unit_test(test_generate_stream),
        cmocka_unit_test(test_stop_string),
        cmocka_unit_test(test_raw_grammar),
        cmocka_unit_test(test_bad_jobs),
        BOTH_KV(test_overlong_prompt),
        cmocka_unit_test(test_batch_identical_and_concurrent),
        cmocka_unit_test(test_cancel_frees_slot),
        cmocka_unit_test(test_chunked_prefill),
        cmocka_unit_test(test_kv_full),
        cmocka_unit_test(test_busy_and_destroy_pending),
        BOTH_KV(test_prefix_cache_identical),
        BOTH_KV(test_prefix_cache_eviction),
        BOTH_KV(test_prefix_cache_spill),
        BOTH_KV(test_prefix_cache_lru),
        BOTH_KV(test_prefix_cache_cancel_hit),
        BOTH_KV(test_prefix_cache_concurrent8),
        BOTH_KV(test_gap_fill_identical),
        cmocka_unit_test(test_classify_100),
        cmocka_unit_test(test_classify_multi),
        cmocka_unit_test(test_extract_100),
        cmocka_unit_test(test_extract_invalid_schema),
        cmocka_unit_test(test_embeddings),
    };
    if (getenv("TG_TEST_FILTER")) /* e.g. TG_TEST_FILTER='*cancel*' */
        cmocka_set_test_filter(getenv("TG_TEST_FILTER"));
    return cmocka_run_group_tests(tests, shared_setup, shared_teardown);
}
