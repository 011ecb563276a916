/* The engine over nng, on the tiny generated model:
 *   - inproc (tg_engine_local_start): streaming generate identical to the engine called
 *     directly, classify, errors crossing the boundary as events, cancel;
 *   - malformed and wrong-version requests get a clear error answer and the server keeps
 *     serving;
 *   - standalone worker processes over ipc:// (the real `tiergate engine` code): cancel frees
 *     the worker's slot; SIGKILL mid-job fails that job only and the client carries on with
 *     the other worker; with no worker left submit says TG_UNAVAILABLE; SIGTERM stops a
 *     worker cleanly (exit 0).
 * Waits are bounded (generous timeouts) only so that a broken build fails instead of hanging;
 * nothing asserts on time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "tg/engine.h"
#include "tg/engine_net.h"
#include "tg/err.h"
#include "tg/log.h"
#include "tg_testlib.h"

#define WAIT_S 120

/* ---- event collector ----------------------------------------------------------------- */

struct col {
    pthread_mutex_t mtx;
    pthread_cond_t cond;
    int n_tokens;
    char tokens[65536];
    size_t tokens_len;
    bool done;
    int n_final;
    bool event_after_final;
    enum tg_engine_event_type final_type;
    int err;
    char message[512];
    char text[65536];
    char finish_reason[32];
    int32_t label_idx[8];
    size_t n_label_idx;
    double confidence;
    struct tg_engine_usage usage;
    uint64_t job_id;
};

static struct col *col_new(void)
{
    struct col *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    pthread_mutex_init(&c->mtx, NULL);
    pthread_cond_init(&c->cond, NULL);
    return c;
}

static void col_free(struct col *c)
{
    pthread_mutex_destroy(&c->mtx);
    pthread_cond_destroy(&c->cond);
    free(c);
}

static void on_event(const struct tg_engine_event *ev, void *user)
{
    struct col *c = user;
    pthread_mutex_lock(&c->mtx);
    if (c->done)
        c->event_after_final = true;
    c->job_id = ev->job_id;
    if (ev->type == TG_EV_TOKEN) {
        c->n_tokens++;
        if (c->tokens_len + ev->text_len < sizeof(c->tokens)) {
            memcpy(c->tokens + c->tokens_len, ev->text, ev->text_len);
            c->tokens_len += ev->text_len;
        }
    } else {
        c->done = true;
        c->n_final++;
        c->final_type = ev->type;
        if (ev->type == TG_EV_ERROR) {
            c->err = ev->err;
            snprintf(c->message, sizeof(c->message), "%s", ev->message);
        } else {
            size_t n = ev->text_len < sizeof(c->text) - 1 ? ev->text_len : sizeof(c->text) - 1;
            memcpy(c->text, ev->text, n);
            c->text[n] = '\0';
            snprintf(c->finish_reason, sizeof(c->finish_reason), "%s",
                     ev->finish_reason != NULL ? ev->finish_reason : "");
            c->n_label_idx = ev->n_label_idx < 8 ? ev->n_label_idx : 8;
            for (size_t i = 0; i < c->n_label_idx; i++)
                c->label_idx[i] = ev->label_idx[i];
            c->confidence = ev->confidence;
            c->usage = ev->usage;
        }
    }
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mtx);
}

static struct timespec deadline(int s)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += s;
    return ts;
}

static void col_wait_done(struct col *c)
{
    struct timespec ts = deadline(WAIT_S);
    pthread_mutex_lock(&c->mtx);
    while (!c->done)
        if (pthread_cond_timedwait(&c->cond, &c->mtx, &ts) == ETIMEDOUT)
            break;
    bool done = c->done;
    pthread_mutex_unlock(&c->mtx);
    if (!done)
        fail_msg("job did not finish within %d s", WAIT_S);
}

static void col_wait_tokens(struct col *c, int n)
{
    struct timespec ts = deadline(WAIT_S);
    pthread_mutex_lock(&c->mtx);
    while (c->n_tokens < n && !c->done)
        if (pthread_cond_timedwait(&c->cond, &c->mtx, &ts) == ETIMEDOUT)
            break;
    int got = c->n_tokens;
    bool done = c->done;
    pthread_mutex_unlock(&c->mtx);
    if (got < n)
        fail_msg("only %d of %d tokens (done=%d: %s)", got, n, done, c->message);
}

/* ---- fixtures ------------------------------------------------------------------------ */

static struct tg_engine_params tiny_params(int slots)
{
    struct tg_engine_params p = tg_engine_default_params();
    p.model_path = TG_TINY_MODEL;
    p.n_ctx = 16384; /* room for long jobs: a job to cancel must still be running */
    p.n_slots = slots;
    p.n_threads = 1; /* 2 threads on this shared 2-core VM spin against each other */
    return p;
}

static const struct tg_chat_msg hello[] = {{"user", "Write a short story about a lighthouse."}};

static struct tg_engine_job gen_job(int32_t max_tokens, bool stream)
{
    struct tg_engine_job j;
    memset(&j, 0, sizeof(j));
    j.kind = TG_JOB_GENERATE;
    j.messages = hello;
    j.n_messages = 1;
    j.max_tokens = max_tokens;
    j.stream = stream;
    return j;
}

/* Wait until pred(worker stats) holds, polling the client's cached heartbeat stats. */
static bool wait_worker(struct tg_engine_client *c, size_t idx,
                        bool (*pred)(const struct tg_engine_worker_stats *))
{
    for (int i = 0; i < WAIT_S * 20; i++) {
        struct tg_engine_worker_stats ws;
        assert_int_equal(tg_engine_client_worker_stats(c, idx, &ws), TG_OK);
        if (pred(&ws))
            return true;
        usleep(50 * 1000);
    }
    return false;
}

static bool slot_busy(const struct tg_engine_worker_stats *ws)
{
    return ws->engine.slots_busy >= 1;
}
static bool slot_free(const struct tg_engine_worker_stats *ws)
{
    return ws->live && ws->engine.slots_busy == 0;
}
static bool not_live(const struct tg_engine_worker_stats *ws)
{
    return !ws->live;
}

/* ---- inproc -------------------------------------------------------------------------- */

static void test_inproc_generate_matches_direct(void **state)
{
    (void)state;
    struct tg_engine_params p = tiny_params(2);
    struct tg_engine_local *l = NULL;
    char err[512] = "";
    int rc = tg_engine_local_start(&p, &l, err, sizeof(err));
    if (rc != TG_OK)
        fail_msg("local start: %s", err);
    struct tg_engine_client *cli = tg_engine_local_client(l);

    struct tg_engine_client_stats cs;
    tg_engine_client_stats(cli, &cs);
    assert_int_equal(cs.n_workers, 1);
    assert_int_equal(cs.workers_live, 1);
    assert_int_equal(cs.engine.n_slots, 2);
    assert_non_null(strstr(tg_engine_local_url(l), "inproc://"));
    /* The worker's model facts cross the boundary. */
    struct tg_engine_info direct, remote;
    tg_engine_info(tg_engine_local_engine(l), &direct);
    assert_int_equal(tg_engine_client_worker_info(cli, 0, &remote), TG_OK);
    assert_string_equal(remote.model_name, direct.model_name);
    assert_string_equal(remote.model_desc, direct.model_desc);
    assert_true(remote.n_params == direct.n_params && remote.model_bytes == direct.model_bytes);
    assert_int_equal(remote.n_ctx, direct.n_ctx);
    assert_int_equal(remote.n_ctx_train, direct.n_ctx_train);
    assert_int_equal(remote.n_slots, 2);
    assert_int_equal(remote.n_embd, direct.n_embd);
    assert_int_equal(remote.n_vocab, direct.n_vocab);
    assert_int_equal(remote.random_weights, direct.random_weights);
    assert_int_equal(remote.embeddings, direct.embeddings);
    assert_int_equal(tg_engine_client_worker_info(cli, 1, &remote), TG_NOTFOUND);

    /* Over nng, streaming. */
    struct tg_engine_job j = gen_job(24, true);
    struct col *a = col_new();
    uint64_t id = 0;
    assert_int_equal(tg_engine_client_submit(cli, &j, on_event, a, &id, err, sizeof(err)), TG_OK);
    assert_true(id > 0);
    col_wait_done(a);
    assert_int_equal(a->final_type, TG_EV_DONE);
    assert_int_equal(a->n_final, 1);
    assert_false(a->event_after_final);
    assert_int_equal(a->job_id, id);
    assert_true(a->n_tokens > 0);
    assert_true(a->usage.completion_tokens > 0);
    assert_true(a->usage.prompt_tokens > 0);
    /* The streamed pieces add up to the final text. */
    assert_int_equal(a->tokens_len, strlen(a->text));
    assert_memory_equal(a->tokens, a->text, a->tokens_len);

    /* The same job submitted to the engine directly gives the same tokens (greedy). */
    struct col *b = col_new();
    assert_int_equal(tg_engine_submit(tg_engine_local_engine(l), &j, on_event, b, NULL, err,
                                      sizeof(err)),
                     TG_OK);
    col_wait_done(b);
    assert_int_equal(b->final_type, TG_EV_DONE);
    assert_string_equal(a->text, b->text);
    assert_string_equal(a->finish_reason, b->finish_reason);
    assert_int_equal(a->usage.completion_tokens, b->usage.completion_tokens);

    /* 8 at once through the boundary (2 slots, the rest queued): all complete, each with
     * the solo run's text, each with exactly one final event. */
    struct col *many[8];
    for (int i = 0; i < 8; i++) {
        many[i] = col_new();
        assert_int_equal(
            tg_engine_client_submit(cli, &j, on_event, many[i], NULL, err, sizeof(err)), TG_OK);
    }
    for (int i = 0; i < 8; i++) {
        col_wait_done(many[i]);
        if (many[i]->final_type != TG_EV_DONE)
            fail_msg("job %d of 8: %s", i, many[i]->message);
        assert_string_equal(many[i]->text, a->text);
        assert_int_equal(many[i]->tokens_len, strlen(a->text));
        assert_int_equal(many[i]->n_final, 1);
        assert_false(many[i]->event_after_final);
        col_free(many[i]);
    }

    /* Not streaming: no token events, same text. */
    struct col *c = col_new();
    j.stream = false;
    assert_int_equal(tg_engine_client_submit(cli, &j, on_event, c, NULL, err, sizeof(err)), TG_OK);
    col_wait_done(c);
    assert_int_equal(c->n_tokens, 0);
    assert_string_equal(c->text, a->text);

    col_free(a);
    col_free(b);
    col_free(c);
    tg_engine_local_stop(l);
}

static void test_inproc_classify_errors_cancel(void **state)
{
    (void)state;
    struct tg_engine_params p = tiny_params(2);
    struct tg_engine_local *l = NULL;
    char err[512] = "";
    int rc = tg_engine_local_start(&p, &l, err, sizeof(err));
    if (rc != TG_OK)
        fail_msg("local start: %s", err);
    struct tg_engine_client *cli = tg_engine_local_client(l);

    /* classify at temperature 1: a valid label, its index, a confidence in (0, 1] */
    static const char *const labels[] = {"billing", "technical", "sales"};
    for (int t = 0; t < 5; t++) {
        struct tg_engine_job j;
        memset(&j, 0, sizeof(j));
        j.kind = TG_JOB_CLASSIFY;
        j.prompt = "My invoice is wrong, please refund me.";
        j.labels = labels;
        j.n_labels = 3;
        j.temperature = 1.0f;
        j.seed = (uint32_t)(t + 1);
        struct col *c = col_new();
        assert_int_equal(tg_engine_client_submit(cli, &j, on_event, c, NULL, err, sizeof(err)),
                         TG_OK);
        col_wait_done(c);
        if (c->final_type != TG_EV_DONE)
            fail_msg("classify failed: %s", c->message);
        assert_int_equal(c->n_label_idx, 1);
        assert_in_range(c->label_idx[0], 0, 2);
        assert_string_equal(c->text, labels[c->label_idx[0]]);
        assert_true(c->confidence > 0 && c->confidence <= 1.0);
        col_free(c);
    }

    /* Errors the engine finds at submit arrive as one ERROR event with the engine's code. */
    struct {
        struct tg_engine_job job;
        int err;
        const char *needle;
    } rows[] = {
        {{.kind = TG_JOB_CLASSIFY, .prompt = "x"}, TG_INVAL, NULL},
        {{.kind = TG_JOB_EXTRACT, .prompt = "x", .schema_json = "{\"type\":\"nonsense\"}"},
         TG_SCHEMA, NULL},
        {{.kind = TG_JOB_GENERATE}, TG_INVAL, NULL},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct col *c = col_new();
        assert_int_equal(
            tg_engine_client_submit(cli, &rows[i].job, on_event, c, NULL, err, sizeof(err)),
            TG_OK);
        col_wait_done(c);
        assert_int_equal(c->final_type, TG_EV_ERROR);
        if (c->err != rows[i].err)
            fail_msg("row %zu: got %s (%s), want %s", i, tg_errname(c->err), c->message,
                     tg_errname(rows[i].err));
        assert_true(c->message[0] != '\0');
        assert_int_equal(c->n_final, 1);
        col_free(c);
    }

    /* An over-long prompt: TG_CONTEXT naming the sizes. */
    size_t big = 16384 * 8;
    char *prompt = malloc(big + 1);
    assert_non_null(prompt);
    for (size_t i = 0; i < big; i++)
        prompt[i] = (i % 6 == 5) ? ' ' : "abcde"[i % 5];
    prompt[big] = '\0';
    struct tg_engine_job lj;
    memset(&lj, 0, sizeof(lj));
    lj.kind = TG_JOB_GENERATE;
    lj.prompt = prompt;
    struct col *c = col_new();
    assert_int_equal(tg_engine_client_submit(cli, &lj, on_event, c, NULL, err, sizeof(err)), TG_OK);
    col_wait_done(c);
    assert_int_equal(c->final_type, TG_EV_ERROR);
    assert_int_equal(c->err, TG_CONTEXT);
    assert_non_null(strstr(c->message, "16384"));
    col_free(c);
    free(prompt);

    /* Synchronous errors: a job that cannot be encoded. */
    struct tg_engine_job bad = gen_job(4, false);
    bad.temperature = NAN;
    assert_int_equal(tg_engine_client_submit(cli, &bad, on_event, NULL, NULL, err, sizeof(err)),
                     TG_INVAL);
    assert_non_null(strstr(err, "temp"));
    assert_int_equal(tg_engine_client_cancel(cli, 999999), TG_NOTFOUND);

    /* Cancel mid-stream: DONE "cancelled", and the slot is free again. */
    struct tg_engine_job long_job = gen_job(0, true);
    struct col *x = col_new();
    uint64_t id = 0;
    assert_int_equal(tg_engine_client_submit(cli, &long_job, on_event, x, &id, err, sizeof(err)),
                     TG_OK);
    col_wait_tokens(x, 2);
    assert_int_equal(tg_engine_client_cancel(cli, id), TG_OK);
    col_wait_done(x);
    assert_int_equal(x->final_type, TG_EV_DONE);
    assert_string_equal(x->finish_reason, "cancelled");
    assert_int_equal(tg_engine_client_cancel(cli, id), TG_NOTFOUND);
    struct tg_engine_stats st;
    tg_engine_stats(tg_engine_local_engine(l), &st);
    assert_int_equal(st.slots_busy, 0);
    col_free(x);

    tg_engine_local_stop(l);
}

/* Jobs still running when the client goes get TG_CLOSED, exactly once; the server then
 * cancels them on the engine. */
static void test_inproc_destroy_with_jobs(void **state)
{
    (void)state;
    struct tg_engine_params p = tiny_params(2);
    struct tg_engine *eng = NULL;
    char err[512] = "";
    assert_int_equal(tg_engine_create(&p, &eng, err, sizeof(err)), TG_OK);
    struct tg_engine_server *srv = NULL;
    assert_int_equal(
        tg_engine_server_start(eng, "inproc://enginenet-destroy", NULL, &srv, err, sizeof(err)),
        TG_OK);
    const char *urls[] = {"inproc://enginenet-destroy"};
    struct tg_engine_client *cli = NULL;
    assert_int_equal(tg_engine_client_create(urls, 1, NULL, &cli, err, sizeof(err)), TG_OK);
    assert_int_equal(tg_engine_client_wait_ready(cli, 1, WAIT_S * 1000), TG_OK);

    struct col *c[3];
    struct tg_engine_job j = gen_job(0, true);
    for (int i = 0; i < 3; i++) {
        c[i] = col_new();
        assert_int_equal(tg_engine_client_submit(cli, &j, on_event, c[i], NULL, err, sizeof(err)),
                         TG_OK);
    }
    col_wait_tokens(c[0], 1);
    tg_engine_client_destroy(cli);
    for (int i = 0; i < 3; i++) {
        assert_true(c[i]->done);
        assert_int_equal(c[i]->n_final, 1);
        /* Either it had finished, or it was closed. */
        if (c[i]->final_type == TG_EV_ERROR)
            assert_int_equal(c[i]->err, TG_CLOSED);
    }
    /* The engine gets its slots back once the server notices the client left. */
    for (int i = 0; i < WAIT_S * 20; i++) {
        struct tg_engine_stats st;
        tg_engine_stats(eng, &st);
        if (st.slots_busy == 0 && st.queue_depth == 0)
            break;
        usleep(50 * 1000);
    }
    struct tg_engine_stats st;
    tg_engine_stats(eng, &st);
    assert_int_equal(st.slots_busy, 0);
    assert_int_equal(st.queue_depth, 0);
    for (int i = 0; i < 3; i++)
        col_free(c[i]);
    tg_engine_server_stop(srv);
    tg_engine_destroy(eng);
}

/* ---- bad requests -------------------------------------------------------------------- */

static char *raw_request(nng_socket s, const char *body)
{
    int rv = nng_send(s, (void *)body, strlen(body), 0);
    if (rv != 0)
        fail_msg("send: %s", nng_strerror(rv));
    char *buf = NULL;
    size_t len = 0;
    rv = nng_recv(s, &buf, &len, NNG_FLAG_ALLOC);
    if (rv != 0)
        fail_msg("recv: %s", nng_strerror(rv));
    char *out = malloc(len + 1);
    memcpy(out, buf, len);
    out[len] = '\0';
    nng_free(buf, len);
    return out;
}

static void test_bad_requests(void **state)
{
    (void)state;
    struct tg_engine_params p = tiny_params(1);
    struct tg_engine *eng = NULL;
    char err[512] = "";
    assert_int_equal(tg_engine_create(&p, &eng, err, sizeof(err)), TG_OK);
    struct tg_engine_server *srv = NULL;
    const char *url = "inproc://enginenet-bad";
    assert_int_equal(tg_engine_server_start(eng, url, NULL, &srv, err, sizeof(err)), TG_OK);

    /* The same address twice is a clear error. */
    struct tg_engine_server *srv2 = NULL;
    assert_int_not_equal(tg_engine_server_start(eng, url, NULL, &srv2, err, sizeof(err)), TG_OK);
    assert_non_null(strstr(err, url));
    assert_null(srv2);
    /* So is a URL nng does not know. */
    assert_int_equal(tg_engine_server_start(eng, "bogus://x", NULL, &srv2, err, sizeof(err)),
                     TG_INVAL);

    nng_socket s;
    assert_int_equal(nng_req0_open(&s), 0);
    assert_int_equal(nng_socket_set_ms(s, NNG_OPT_RECVTIMEO, WAIT_S * 1000), 0);
    assert_int_equal(nng_dial(s, url, NULL, 0), 0);
    struct {
        const char *req;
        const char *needle;
    } rows[] = {
        {"not json", "malformed"},
        {"[1,2,3]", "malformed"},
        {"{\"v\":2,\"sid\":\"1\",\"op\":\"poll\"}", "version 2 not supported"},
        {"{\"v\":1,\"op\":\"poll\"}", "sid"},
        {"{\"v\":1,\"sid\":\"zz\",\"op\":\"poll\"}", "sid"},
        {"{\"v\":1,\"sid\":\"1\",\"op\":\"dance\"}", "unknown op"},
        {"{\"v\":1,\"sid\":\"1\",\"op\":\"ops\",\"ops\":5}", "'ops' must be an array"},
        {"{\"v\":1,\"sid\":\"1\",\"op\":\"ops\",\"ops\":[{\"op\":\"submit\"}]}", "integer 'id'"},
        {"{\"v\":1,\"sid\":\"1\",\"op\":\"ops\",\"ops\":[{\"op\":\"submit\",\"id\":1,"
         "\"job\":{\"k\":\"x\"}}]}",
         "'k' must be an integer"},
        {"{\"v\":1,\"sid\":\"1\",\"op\":\"ops\",\"ops\":[{\"op\":\"cancel\",\"id\":77}]}",
         "\"e\":0"},
        {"{\"v\":1,\"sid\":\"1\",\"op\":\"poll\",\"hold\":0}", "\"ev\":[]"},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char *ans = raw_request(s, rows[i].req);
        if (strstr(ans, rows[i].needle) == NULL)
            fail_msg("row %zu: answer '%s' lacks '%s'", i, ans, rows[i].needle);
        free(ans);
    }
    nng_close(s);

    /* The server still serves a real client. */
    const char *urls[] = {url};
    struct tg_engine_client *cli = NULL;
    assert_int_equal(tg_engine_client_create(urls, 1, NULL, &cli, err, sizeof(err)), TG_OK);
    assert_int_equal(tg_engine_client_wait_ready(cli, 1, WAIT_S * 1000), TG_OK);
    struct tg_engine_job j = gen_job(4, false);
    struct col *c = col_new();
    assert_int_equal(tg_engine_client_submit(cli, &j, on_event, c, NULL, err, sizeof(err)), TG_OK);
    col_wait_done(c);
    assert_int_equal(c->final_type, TG_EV_DONE);
    col_free(c);
    tg_engine_client_destroy(cli);
    tg_engine_server_stop(srv);
    tg_engine_destroy(eng);
}

/* A result too big for one message is a clear TG_TOOBIG error, not a dropped connection. */
static void test_oversized_result(void **state)
{
    (void)state;
    struct tg_engine_params p = tiny_params(1);
    struct tg_engine *eng = NULL;
    char err[512] = "";
    assert_int_equal(tg_engine_create(&p, &eng, err, sizeof(err)), TG_OK);
    struct tg_engine_server_params sp = tg_engine_server_default_params();
    sp.max_msg_bytes = 4096;
    struct tg_engine_server *srv = NULL;
    const char *url = "inproc://enginenet-oversized";
    assert_int_equal(tg_engine_server_start(eng, url, &sp, &srv, err, sizeof(err)), TG_OK);
    const char *urls[] = {url};
    struct tg_engine_client *cli = NULL;
    assert_int_equal(tg_engine_client_create(urls, 1, NULL, &cli, err, sizeof(err)), TG_OK);
    assert_int_equal(tg_engine_client_wait_ready(cli, 1, WAIT_S * 1000), TG_OK);

    struct tg_engine_job big = gen_job(1500, false);
    struct col *c = col_new();
    assert_int_equal(tg_engine_client_submit(cli, &big, on_event, c, NULL, err, sizeof(err)),
                     TG_OK);
    col_wait_done(c);
    if (c->final_type == TG_EV_DONE)
        fail_msg("a %zu-byte result came through a 4096-byte limit", strlen(c->text));
    assert_int_equal(c->err, TG_TOOBIG);
    assert_non_null(strstr(c->message, "4096"));
    col_free(c);

    /* The connection survived: a small job still works. */
    struct tg_engine_job small = gen_job(4, true);
    c = col_new();
    assert_int_equal(tg_engine_client_submit(cli, &small, on_event, c, NULL, err, sizeof(err)),
                     TG_OK);
    col_wait_done(c);
    assert_int_equal(c->final_type, TG_EV_DONE);
    col_free(c);
    tg_engine_client_destroy(cli);
    tg_engine_server_stop(srv);
    tg_engine_destroy(eng);
}

/* tcp:// is the same code path: a worker on a loopback port serves a job. */
static void test_tcp_round_trip(void **state)
{
    (void)state;
    struct tg_engine_params p = tiny_params(1);
    struct tg_engine *eng = NULL;
    char err[512] = "";
    assert_int_equal(tg_engine_create(&p, &eng, err, sizeof(err)), TG_OK);
    struct tg_engine_server *srv = NULL;
    char url[64];
    int rc = TG_IO;
    for (int attempt = 0; attempt < 5 && rc != TG_OK; attempt++) {
        snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", tg_test_free_port());
        rc = tg_engine_server_start(eng, url, NULL, &srv, err, sizeof(err));
    }
    if (rc != TG_OK)
        fail_msg("listen: %s", err);
    const char *urls[] = {url};
    struct tg_engine_client *cli = NULL;
    assert_int_equal(tg_engine_client_create(urls, 1, NULL, &cli, err, sizeof(err)), TG_OK);
    assert_int_equal(tg_engine_client_wait_ready(cli, 1, WAIT_S * 1000), TG_OK);
    struct tg_engine_job j = gen_job(8, true);
    struct col *c = col_new();
    assert_int_equal(tg_engine_client_submit(cli, &j, on_event, c, NULL, err, sizeof(err)), TG_OK);
    col_wait_done(c);
    assert_int_equal(c->final_type, TG_EV_DONE);
    assert_true(c->n_tokens > 0);
    col_free(c);
    tg_engine_client_destroy(cli);
    tg_engine_server_stop(srv);
    tg_engine_destroy(eng);
}

static void test_client_without_workers(void **state)
{
    (void)state;
    char err[512] = "";
    struct tg_engine_client *cli = NULL;
    const char *bad[] = {"nonsense://here"};
    assert_int_equal(tg_engine_client_create(bad, 1, NULL, &cli, err, sizeof(err)), TG_INVAL);
    assert_non_null(strstr(err, "nonsense://here"));
    assert_null(cli);
    assert_int_equal(tg_engine_client_create(bad, 0, NULL, &cli, err, sizeof(err)), TG_INVAL);

    /* Nobody listens there: create works (dialing is retried), nothing is live. */
    char dir[] = "/tmp/tg-enginenet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char url[128];
    snprintf(url, sizeof(url), "ipc://%s/none.sock", dir);
    const char *urls[] = {url};
    assert_int_equal(tg_engine_client_create(urls, 1, NULL, &cli, err, sizeof(err)), TG_OK);
    assert_int_equal(tg_engine_client_wait_ready(cli, 1, 300), TG_TIMEOUT);
    struct tg_engine_job j = gen_job(4, false);
    assert_int_equal(tg_engine_client_submit(cli, &j, on_event, NULL, NULL, err, sizeof(err)),
                     TG_UNAVAILABLE);
    assert_non_null(strstr(err, "no live engine worker"));
    struct tg_engine_client_stats cs;
    tg_engine_client_stats(cli, &cs);
    assert_int_equal(cs.n_workers, 1);
    assert_int_equal(cs.workers_live, 0);
    tg_engine_client_destroy(cli);
    rmdir(dir);
}

/* ---- standalone workers over ipc ----------------------------------------------------- */

/* Workers die with the test process (PR_SET_PDEATHSIG), so a failed or timed-out test
 * leaves none behind; teardown_workers() also reaps them after a failed assertion. */
#define MAX_CHILDREN 16
static pid_t children[MAX_CHILDREN];

static pid_t spawn_worker_slots(const char *url, const char *slots)
{
    char *argv[] = {(char *)TG_ENGINE_WORKER_BIN, "--listen", (char *)url,
                    "--model", (char *)TG_TINY_MODEL, "--slots", (char *)slots,
                    "--ctx", "16384", "--threads", "1",
                    NULL};
    pid_t parent = getpid();
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) == -1 || getppid() != parent)
            _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] <= 0) {
            children[i] = pid;
            break;
        }
    }
    return pid;
}

/* kill(SIGSTOP) returns before the target has stopped: wait until every thread shows 'T'. */
static bool wait_stopped(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%ld/task", (long)pid);
    for (int attempt = 0; attempt < WAIT_S * 100; attempt++) {
        DIR *d = opendir(dir);
        if (d == NULL)
            return false;
        bool all = true;
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            char path[400], buf[512];
            snprintf(path, sizeof(path), "%s/%s/stat", dir, de->d_name);
            FILE *f = fopen(path, "r");
            if (f == NULL)
                continue;
            size_t n = fread(buf, 1, sizeof(buf) - 1, f);
            fclose(f);
            buf[n] = '\0';
            const char *p = strrchr(buf, ')'); /* state follows "(comm)" */
            if (p == NULL || p[1] != ' ' || (p[2] != 'T' && p[2] != 't'))
                all = false;
        }
        closedir(d);
        if (all)
            return true;
        usleep(10 * 1000);
    }
    return false;
}

static int teardown_workers(void **state)
{
    (void)state;
    for (int i = 0; i < MAX_CHILDREN; i++) {
        if (children[i] > 0 && waitpid(children[i], NULL, WNOHANG) == 0) {
            kill(children[i], SIGCONT);
            kill(children[i], SIGKILL);
            waitpid(children[i], NULL, 0);
        }
        children[i] = 0;
    }
    return 0;
}

static pid_t spawn_worker(const char *url)
{
    return spawn_worker_slots(url, "1");
}

static void test_ipc_workers(void **state)
{
    (void)state;
    char dir[] = "/tmp/tg-enginenet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char url[2][160];
    pid_t pid[2];
    for (int i = 0; i < 2; i++) {
        snprintf(url[i], sizeof(url[i]), "ipc://%s/w%d.sock", dir, i);
        pid[i] = spawn_worker(url[i]);
    }
    const char *urls[] = {url[0], url[1]};
    struct tg_engine_client *cli = NULL;
    char err[512] = "";
    assert_int_equal(tg_engine_client_create(urls, 2, NULL, &cli, err, sizeof(err)), TG_OK);
    if (tg_engine_client_wait_ready(cli, 2, WAIT_S * 1000) != TG_OK)
        fail_msg("the two workers did not come up");
    struct tg_engine_client_stats cs;
    tg_engine_client_stats(cli, &cs);
    assert_int_equal(cs.workers_live, 2);
    assert_int_equal(cs.engine.n_slots, 2);
    for (size_t i = 0; i < 2; i++) {
        struct tg_engine_info info;
        assert_int_equal(tg_engine_client_worker_info(cli, i, &info), TG_OK);
        assert_int_equal(info.n_slots, 1);
        assert_int_equal(info.n_ctx, 16384);
        assert_true(info.random_weights);
        assert_true(info.model_name[0] != '\0');
    }

    /* A short job round trip over ipc. */
    struct tg_engine_job shortj = gen_job(8, true);
    struct col *s0 = col_new();
    assert_int_equal(tg_engine_client_submit(cli, &shortj, on_event, s0, NULL, err, sizeof(err)),
                     TG_OK);
    col_wait_done(s0);
    assert_int_equal(s0->final_type, TG_EV_DONE);
    assert_true(s0->n_tokens > 0);
    col_free(s0);

    /* Cancel over ipc frees the worker's (only) slot. */
    struct tg_engine_job longj = gen_job(0, true);
    struct col *x = col_new();
    uint64_t xid = 0;
    size_t xw = 0;
    assert_int_equal(tg_engine_client_submit(cli, &longj, on_event, x, &xid, err, sizeof(err)),
                     TG_OK);
    assert_int_equal(tg_engine_client_job_worker(cli, xid, &xw), TG_OK);
    col_wait_tokens(x, 2);
    assert_true(wait_worker(cli, xw, slot_busy));
    assert_int_equal(tg_engine_client_cancel(cli, xid), TG_OK);
    col_wait_done(x);
    assert_int_equal(x->final_type, TG_EV_DONE);
    assert_string_equal(x->finish_reason, "cancelled");
    assert_true(wait_worker(cli, xw, slot_free));
    col_free(x);

    /* Two long jobs, one per worker (least loaded); SIGKILL one worker mid-job. */
    struct col *a = col_new(), *b = col_new();
    uint64_t aid = 0, bid = 0;
    size_t aw = 0, bw = 0;
    assert_int_equal(tg_engine_client_submit(cli, &longj, on_event, a, &aid, err, sizeof(err)),
                     TG_OK);
    assert_int_equal(tg_engine_client_submit(cli, &longj, on_event, b, &bid, err, sizeof(err)),
                     TG_OK);
    assert_int_equal(tg_engine_client_job_worker(cli, aid, &aw), TG_OK);
    assert_int_equal(tg_engine_client_job_worker(cli, bid, &bw), TG_OK);
    assert_int_not_equal(aw, bw);
    col_wait_tokens(a, 2);
    col_wait_tokens(b, 2);
    assert_int_equal(kill(pid[aw], SIGKILL), 0);
    int status = 0;
    assert_int_equal(waitpid(pid[aw], &status, 0), pid[aw]);
    pid[aw] = -1;
    col_wait_done(a);
    assert_int_equal(a->final_type, TG_EV_ERROR);
    assert_int_equal(a->err, TG_UNAVAILABLE);
    assert_non_null(strstr(a->message, url[aw]));
    assert_int_equal(a->n_final, 1);

    /* b is untouched: it goes on on the other worker (cancelled here to save time; had it
     * already finished, it finished with DONE too). */
    if (tg_engine_client_cancel(cli, bid) == TG_OK) {
        col_wait_done(b);
        assert_int_equal(b->final_type, TG_EV_DONE);
    }
    col_wait_done(b);
    assert_int_equal(b->final_type, TG_EV_DONE);
    assert_int_equal(b->n_final, 1);

    /* New work goes to the live worker. */
    assert_true(wait_worker(cli, aw, not_live));
    tg_engine_client_stats(cli, &cs);
    assert_int_equal(cs.workers_live, 1);
    for (int i = 0; i < 3; i++) {
        struct col *c = col_new();
        uint64_t cid = 0;
        assert_int_equal(tg_engine_client_submit(cli, &shortj, on_event, c, &cid, err, sizeof(err)),
                         TG_OK);
        size_t cw = 99;
        if (tg_engine_client_job_worker(cli, cid, &cw) == TG_OK)
            assert_int_equal(cw, bw);
        col_wait_done(c);
        assert_int_equal(c->final_type, TG_EV_DONE);
        col_free(c);
    }

    /* SIGTERM: the worker shuts down cleanly (exit 0); then nothing is live. */
    int st = tg_test_stop(pid[bw], SIGTERM, WAIT_S * 1000);
    pid[bw] = -1;
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_true(wait_worker(cli, bw, not_live));
    assert_int_equal(tg_engine_client_submit(cli, &shortj, on_event, NULL, NULL, err, sizeof(err)),
                     TG_UNAVAILABLE);

    col_free(a);
    col_free(b);
    tg_engine_client_destroy(cli);
    for (int i = 0; i < 2; i++)
        if (pid[i] > 0)
            tg_test_stop(pid[i], SIGKILL, 5000);
    char path[200];
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof(path), "%s/w%d.sock", dir, i);
        unlink(path);
    }
    rmdir(dir);
}

/* A hung worker (SIGSTOP) misses its heartbeat: its job fails with TG_UNAVAILABLE; when it
 * wakes up the client cancels the abandoned job there (the slot frees). Two clients share one
 * worker. A worker restarted on the same address is picked up again. */
static void test_ipc_hung_and_restarted_worker(void **state)
{
    (void)state;
    char dir[] = "/tmp/tg-enginenet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char url[160];
    snprintf(url, sizeof(url), "ipc://%s/w.sock", dir);
    pid_t pid = spawn_worker_slots(url, "2");
    const char *urls[] = {url};
    char err[512] = "";
    struct tg_engine_client_params cp = tg_engine_client_default_params();
    cp.heartbeat_timeout_ms = 3000;
    cp.poll_hold_ms = 200;
    struct tg_engine_client *a = NULL, *b = NULL;
    assert_int_equal(tg_engine_client_create(urls, 1, &cp, &a, err, sizeof(err)), TG_OK);
    assert_int_equal(tg_engine_client_create(urls, 1, NULL, &b, err, sizeof(err)), TG_OK);
    assert_int_equal(tg_engine_client_wait_ready(a, 1, WAIT_S * 1000), TG_OK);
    assert_int_equal(tg_engine_client_wait_ready(b, 1, WAIT_S * 1000), TG_OK);

    /* a: a long job; b: short jobs on the same worker meanwhile. */
    struct tg_engine_job longj = gen_job(0, true), shortj = gen_job(8, true);
    struct col *x = col_new();
    assert_int_equal(tg_engine_client_submit(a, &longj, on_event, x, NULL, err, sizeof(err)),
                     TG_OK);
    col_wait_tokens(x, 2);
    struct col *y = col_new();
    assert_int_equal(tg_engine_client_submit(b, &shortj, on_event, y, NULL, err, sizeof(err)),
                     TG_OK);
    col_wait_done(y);
    assert_int_equal(y->final_type, TG_EV_DONE);
    col_free(y);

    /* Hang the worker: no heartbeat, the job fails. */
    assert_int_equal(kill(pid, SIGSTOP), 0);
    assert_true(wait_stopped(pid));
    col_wait_done(x);
    assert_int_equal(x->final_type, TG_EV_ERROR);
    assert_int_equal(x->err, TG_UNAVAILABLE);
    assert_non_null(strstr(x->message, "no heartbeat"));
    assert_non_null(strstr(x->message, url));
    assert_int_equal(tg_engine_client_submit(a, &shortj, on_event, NULL, NULL, err, sizeof(err)),
                     TG_UNAVAILABLE);

    /* Wake it: live again, and the abandoned job is cancelled there. */
    assert_int_equal(kill(pid, SIGCONT), 0);
    assert_int_equal(tg_engine_client_wait_ready(a, 1, WAIT_S * 1000), TG_OK);
    assert_true(wait_worker(a, 0, slot_free));
    col_free(x);

    /* Kill it and start a new one on the same address: both clients come back. */
    assert_int_equal(kill(pid, SIGKILL), 0);
    assert_int_equal(waitpid(pid, NULL, 0), pid);
    assert_true(wait_worker(a, 0, not_live));
    pid = spawn_worker_slots(url, "2");
    assert_int_equal(tg_engine_client_wait_ready(a, 1, WAIT_S * 1000), TG_OK);
    assert_int_equal(tg_engine_client_wait_ready(b, 1, WAIT_S * 1000), TG_OK);
    struct tg_engine_client *both[] = {a, b};
    for (int i = 0; i < 2; i++) {
        struct col *z = col_new();
        assert_int_equal(
            tg_engine_client_submit(both[i], &shortj, on_event, z, NULL, err, sizeof(err)), TG_OK);
        col_wait_done(z);
        if (z->final_type != TG_EV_DONE)
            fail_msg("client %d after restart: %s", i, z->message);
        col_free(z);
    }

    tg_engine_client_destroy(a);
    tg_engine_client_destroy(b);
    int st = tg_test_stop(pid, SIGTERM, WAIT_S * 1000);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    char path[200];
    snprintf(path, sizeof(path), "%s/w.sock", dir);
    unlink(path);
    rmdir(dir);
}

/* Jobs queued for a worker that goes silent before their submit left the process are moved
 * to a live worker instead of failing; the one already sent fails with TG_UNAVAILABLE. */
static void test_ipc_reroute_unsent(void **state)
{
    (void)state;
    char dir[] = "/tmp/tg-enginenet-XXXXXX";
    assert_non_null(mkdtemp(dir));
    /* Worker 0 = b (1 slot), worker 1 = a (2 slots). No request goes to a before the hang,
     * so its request channel is idle then and the first job sent to it leaves at once. */
    char url[2][160];
    snprintf(url[0], sizeof(url[0]), "ipc://%s/b.sock", dir);
    snprintf(url[1], sizeof(url[1]), "ipc://%s/a.sock", dir);
    pid_t pb = spawn_worker_slots(url[0], "1");
    pid_t pa = spawn_worker_slots(url[1], "2");
    const char *urls[] = {url[0], url[1]};
    char err[512] = "";
    struct tg_engine_client_params cp = tg_engine_client_default_params();
    cp.heartbeat_timeout_ms = 3000;
    cp.poll_hold_ms = 200;
    struct tg_engine_client *cli = NULL;
    assert_int_equal(tg_engine_client_create(urls, 2, &cp, &cli, err, sizeof(err)), TG_OK);
    assert_int_equal(tg_engine_client_wait_ready(cli, 2, WAIT_S * 1000), TG_OK);

    /* Occupy b's only slot with a long job (the first job goes to worker 0). */
    struct tg_engine_job longj = gen_job(0, true), shortj = gen_job(8, false);
    struct col *l = col_new();
    uint64_t lid = 0;
    size_t lw = 9;
    assert_int_equal(tg_engine_client_submit(cli, &longj, on_event, l, &lid, err, sizeof(err)),
                     TG_OK);
    assert_int_equal(tg_engine_client_job_worker(cli, lid, &lw), TG_OK);
    assert_int_equal(lw, 0);
    col_wait_tokens(l, 1);
    assert_true(wait_worker(cli, 0, slot_busy));

    /* Hang a: j goes out to it at once (a is the less loaded); k, also for a, waits in the
     * client behind j's unanswered request. */
    assert_int_equal(kill(pa, SIGSTOP), 0);
    assert_true(wait_stopped(pa));
    struct col *j = col_new(), *k = col_new();
    uint64_t jid = 0, kid = 0;
    size_t jw = 9, kw = 9;
    assert_int_equal(tg_engine_client_submit(cli, &shortj, on_event, j, &jid, err, sizeof(err)),
                     TG_OK);
    assert_int_equal(tg_engine_client_submit(cli, &shortj, on_event, k, &kid, err, sizeof(err)),
                     TG_OK);
    assert_int_equal(tg_engine_client_job_worker(cli, jid, &jw), TG_OK);
    assert_int_equal(tg_engine_client_job_worker(cli, kid, &kw), TG_OK);
    assert_int_equal(jw, 1);
    assert_int_equal(kw, 1);

    col_wait_done(j);
    assert_int_equal(j->final_type, TG_EV_ERROR);
    assert_int_equal(j->err, TG_UNAVAILABLE);
    /* k now belongs to b, behind the long job: free b's slot and k completes there. */
    if (tg_engine_client_job_worker(cli, kid, &kw) == TG_OK)
        assert_int_equal(kw, 0);
    assert_int_equal(tg_engine_client_cancel(cli, lid), TG_OK);
    col_wait_done(l);
    col_wait_done(k);
    if (k->final_type != TG_EV_DONE)
        fail_msg("rerouted job failed: %s", k->message);
    assert_int_equal(k->n_final, 1);

    assert_int_equal(kill(pa, SIGCONT), 0);
    tg_engine_client_destroy(cli);
    col_free(l);
    col_free(j);
    col_free(k);
    tg_test_stop(pa, SIGTERM, WAIT_S * 1000);
    tg_test_stop(pb, SIGTERM, WAIT_S * 1000);
    char path[200];
    snprintf(path, sizeof(path), "%s/a.sock", dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/b.sock", dir);
    unlink(path);
    rmdir(dir);
}

/* The worker's command line: usage errors exit 2, an unreadable model exits 1. */
static void test_worker_cli_errors(void **state)
{
    (void)state;
    struct {
        const char *args[8];
        int status;
    } rows[] = {
        {{"--model", TG_TINY_MODEL}, 2},
        {{"--listen", "ipc:///tmp/x.sock"}, 2},
        {{"--listen", "ipc:///tmp/x.sock", "--model", TG_TINY_MODEL, "--slots", "abc"}, 2},
        {{"--listen", "ipc:///tmp/x.sock", "--model", TG_TINY_MODEL, "--frobnicate"}, 2},
        {{"--listen", "ipc:///tmp/x.sock", "--model", "/nonexistent/model.gguf"}, 1},
        {{"--listen", "bogus://x", "--model", TG_TINY_MODEL}, 1},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        char *argv[10] = {(char *)TG_ENGINE_WORKER_BIN};
        for (int k = 0; k < 8 && rows[i].args[k] != NULL; k++)
            argv[k + 1] = (char *)rows[i].args[k];
        pid_t pid = tg_test_spawn(argv, NULL, "/dev/null");
        assert_true(pid > 0);
        int status = tg_test_stop(pid, 0, WAIT_S * 1000);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != rows[i].status)
            fail_msg("row %zu: status %d, want exit %d", i, status, rows[i].status);
    }
}

int main(void)
{
    enum tg_log_level lv = TG_LOG_WARN;
    const char *lvs = getenv("TG_TEST_LOG");
    if (lvs != NULL)
        tg_log_level_parse(lvs, &lv);
    tg_log_set_level(lv);
    const char *filter = getenv("TG_TEST_FILTER");
    if (filter != NULL)
        cmocka_set_test_filter(filter);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_client_without_workers),
        cmocka_unit_test(test_inproc_generate_matches_direct),
        cmocka_unit_test(test_inproc_classify_errors_cancel),
        cmocka_unit_test(test_inproc_destroy_with_jobs),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_tcp_round_trip),
        cmocka_unit_test(test_oversized_result),
        cmocka_unit_test(test_worker_cli_errors),
        cmocka_unit_test_teardown(test_ipc_workers, teardown_workers),
        cmocka_unit_test_teardown(test_ipc_hung_and_restarted_worker, teardown_workers),
        cmocka_unit_test_teardown(test_ipc_reroute_unsent, teardown_workers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
