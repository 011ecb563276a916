/* Remote executor against the real tg-fake-upstream on a free port: passthrough (exact request
 * the provider receives), Anthropic translation both ways, retries, Retry-After, fallback,
 * circuit breaker, timeouts and cancel. Each test drives its own event_base until a handler ran;
 * a watchdog timer fails the test instead of hanging it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>
#include <jansson.h>

#include "tg/config.h"
#include "tg/err.h"
#include "metrics.h"
#include "tg/buf.h"
#include "tg_testlib.h"
#include "upstream.h"

static int g_port;
static pid_t g_fake;
static struct tg_config *g_cfg;
static char g_base[128];

/* ---- fixture ---- */

static int setup_all(void **state)
{
    if (tg_upstream_global_init() != TG_OK)
        return -1;
    g_port = tg_test_free_port();
    char port[16];
    snprintf(port, sizeof port, "%d", g_port);
    char *argv[] = {TG_FAKE_UPSTREAM, "--port", port, NULL};
    g_fake = tg_test_spawn(argv, NULL, TG_BINARY_DIR "/tests/fake-upstream.log");
    if (!tg_test_wait_port(g_port, 5000))
        return -1;
    snprintf(g_base, sizeof g_base, "http://127.0.0.1:%d", g_port);
    char yaml[4096];
    int closed_port = tg_test_free_port(); /* nothing listens there */
    snprintf(yaml, sizeof yaml,
             "server:\n  open_mode: true\n"
             "providers:\n"
             "  oai:\n    kind: openai\n    base_url: %s/v1\n    api_key: sk-test-openai-secret\n"
             "    retries: 2\n    retry_base_ms: 5\n    first_byte_timeout_ms: 5000\n"
             "    stream_idle_timeout_ms: 300\n    circuit_failures: 1000\n"
             "  ant:\n    kind: anthropic\n    base_url: %s/v1\n    api_key: sk-ant-test-secret\n"
             "    retries: 1\n    retry_base_ms: 5\n    circuit_failures: 1000\n"
             "  slow:\n    kind: openai\n    base_url: %s/v1\n    api_key: sk-slow\n"
             "    retries: 0\n    first_byte_timeout_ms: 200\n    circuit_failures: 1000\n"
             "  brk:\n    kind: openai\n    base_url: %s/v1\n    api_key: sk-brk\n"
             "    retries: 0\n    circuit_failures: 2\n    circuit_window_ms: 60000\n    "
             "circuit_open_ms: 300\n"
             "  off:\n    kind: openai\n    base_url: %s/v1\n    api_key: "
             "${TG_TEST_UPSTREAM_UNSET_KEY}\n"
             "  closed:\n    kind: openai\n    base_url: http://127.0.0.1:%d/v1\n    api_key: "
             "sk-closed\n"
             "    retries: 1\n    retry_base_ms: 5\n    circuit_failures: 1000\n"
             "models:\n"
             "  - {name: phi, tier: local, target: engine}\n"
             "  - {name: oa, tier: remote, provider: oai, upstream_model: gpt-fake}\n"
             "  - {name: oa2, tier: remote, provider: oai, upstream_model: gpt-fake-2}\n"
             "  - {name: an, tier: remote, provider: ant, upstream_model: claude-fake}\n"
             "  - {name: sl, tier: remote, provider: slow}\n"
             "  - {name: cb, tier: remote, provider: brk}\n"
             "  - {name: dis, tier: remote, provider: off}\n"
             "  - {name: nc, tier: remote, provider: closed}\n",
             g_base, g_base, g_base, g_base, g_base, closed_port);
    const char *path = tg_test_write_temp("routes.yaml", yaml);
    char err[512];
    unsetenv("TG_TEST_UPSTREAM_UNSET_KEY");
    if (tg_config_load(path, &g_cfg, err, sizeof err) != TG_OK) {
        fprintf(stderr, "config: %s\n", err);
        return -1;
    }
    return tg_metrics_init(g_cfg, "test") == TG_OK ? 0 : -1;
}

static int teardown_all(void **state)
{
    tg_metrics_shutdown();
    tg_config_unref(g_cfg);
    tg_test_stop(g_fake, SIGTERM, 3000);
    tg_upstream_global_cleanup();
    return 0;
}

/* ---- fake control ---- */

static void fake_reset(void)
{
    char url[256];
    snprintf(url, sizeof url, "%s/_reset", g_base);
    struct tg_test_response r;
    assert_int_equal(tg_test_http("POST", url, NULL, "", &r), 0);
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);
    tg_upstream_circuit_reset_all();
}

static void fake_script(const char *json_array)
{
    char url[256];
    snprintf(url, sizeof url, "%s/_script", g_base);
    struct tg_test_response r;
    assert_int_equal(tg_test_http("POST", url, NULL, json_array, &r), 0);
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);
}

/* The requests the fake received (new reference to a JSON array). */
static json_t *fake_requests(void)
{
    char url[256];
    snprintf(url, sizeof url, "%s/_requests", g_base);
    struct tg_test_response r;
    assert_int_equal(tg_test_http("GET", url, NULL, NULL, &r), 0);
    json_t *v = json_loads(r.body, 0, NULL);
    tg_test_response_free(&r);
    assert_true(json_is_array(v));
    return v;
}

/* ---- driving one call ---- */

struct outcome {
    struct event_base *base;
    bool completed, failed;
    int n_chunks;
    char text[4096];      /* concatenated delta.content of chunks */
    char tool_args[1024]; /* concatenated delta.tool_calls[0].function.arguments */
    bool got_usage_chunk;
    json_t *response; /* non-stream response (copy) */
    json_t *error;    /* error body (copy) */
    int status;
    bool started, should_retry;
    char kind[32];
    char served[64];
    char finish[32];
    struct tg_upstream_usage usage;
    struct tg_upstream_stats stats;
    int cancel_after;       /* > 0: cancel (from a timer) after this many chunks */
    int cancel_ms;          /* > 0: cancel this long after the start */
    const char *request_id; /* NULL = "req-test-1" */
    bool raw;               /* pass the request text as call.raw_body too */
    int pause_after;        /* > 0: tg_upstream_pause from on_chunk after this many chunks */
    int resume_ms;          /* ... and tg_upstream_resume from a timer this much later */
    struct event *resume_ev;
    int chunks_at_resume;
    struct tg_upstream_req *req;
    struct event *cancel_ev;
    bool handler_after_cancel;
    bool canceled;
};

static int on_chunk(void *user, const struct tg_upstream_chunk *c)
{
    struct outcome *o = user;
    if (o->canceled)
        o->handler_after_cancel = true;
    o->n_chunks++;
    const json_t *choices = json_object_get(c->json, "choices");
    if (json_array_size(choices) == 0 && json_object_get(c->json, "usage") != NULL)
        o->got_usage_chunk = true;
    const char *t = json_string_value(
        json_object_get(json_object_get(json_array_get(choices, 0), "delta"), "content"));
    if (t != NULL)
        strncat(o->text, t, sizeof o->text - strlen(o->text) - 1);
    const json_t *tc = json_array_get(
        json_object_get(json_object_get(json_array_get(choices, 0), "delta"), "tool_calls"), 0);
    const char *args =
        json_string_value(json_object_get(json_object_get(tc, "function"), "arguments"));
    if (args != NULL)
        strncat(o->tool_args, args, sizeof o->tool_args - strlen(o->tool_args) - 1);
    /* the serialised form must be the same JSON */
    json_t *re = json_loadb(c->data, c->len, 0, NULL);
    assert_non_null(re);
    assert_true(json_equal(re, (json_t *)c->json));
    json_decref(re);
    if (o->pause_after > 0 && o->n_chunks == o->pause_after) {
        tg_upstream_pause(o->req);
        struct timeval tv = {.tv_sec = 0, .tv_usec = o->resume_ms * 1000};
        evtimer_add(o->resume_ev, &tv);
    }
    if (o->cancel_after > 0 && o->n_chunks == o->cancel_after) {
        struct timeval tv = {0, 0};
        evtimer_add(o->cancel_ev, &tv);
    }
    return 0;
}

static void on_complete(void *user, const struct tg_upstream_result *r)
{
    struct outcome *o = user;
    if (o->canceled)
        o->handler_after_cancel = true;
    o->completed = true;
    o->usage = r->usage;
    o->stats = r->stats;
    snprintf(o->served, sizeof o->served, "%s", r->served->name);
    snprintf(o->finish, sizeof o->finish, "%s", r->finish_reason != NULL ? r->finish_reason : "");
    if (r->response != NULL) {
        o->response = json_deep_copy(r->response);
        json_t *re = json_loadb(r->body, r->body_len, 0, NULL);
        assert_true(json_equal(re, r->response));
        json_decref(re);
    }
    event_base_loopbreak(o->base);
}

static void on_error(void *user, const struct tg_upstream_error *e)
{
    struct outcome *o = user;
    if (o->canceled)
        o->handler_after_cancel = true;
    o->failed = true;
    o->status = e->status;
    o->error = json_deep_copy(e->error);
    o->started = e->started;
    o->should_retry = e->should_retry;
    o->stats = e->stats;
    snprintf(o->kind, sizeof o->kind, "%s", e->kind != NULL ? e->kind : "");
    event_base_loopbreak(o->base);
}

static const struct tg_upstream_handlers handlers = {on_chunk, on_complete, on_error};

static void on_watchdog(evutil_socket_t fd, short w, void *arg)
{
    event_base_loopbreak(arg);
}

static void on_resume(evutil_socket_t fd, short w, void *arg)
{
    struct outcome *o = arg;
    o->chunks_at_resume = o->n_chunks;
    tg_upstream_resume(o->req);
}

static void on_cancel(evutil_socket_t fd, short w, void *arg)
{
    struct outcome *o = arg;
    tg_upstream_cancel(o->req);
    o->canceled = true;
}

/* Run one call to its end (or watchdog). targets: model names. */
static void run(const char *request, const char *const *targets, struct outcome *o, int watchdog_ms)
{
    struct event_base *base = event_base_new();
    struct tg_upstream_exec *ex = tg_upstream_exec_create(base, NULL);
    assert_non_null(ex);
    const struct tg_cfg_model *tv[8];
    size_t n = 0;
    for (; targets[n] != NULL; n++) {
        tv[n] = tg_config_model(g_cfg, targets[n]);
        assert_non_null(tv[n]);
    }
    json_t *rq = json_loads(request, 0, NULL);
    assert_non_null(rq);
    o->base = base;
    o->cancel_ev = evtimer_new(base, on_cancel, o);
    o->resume_ev = evtimer_new(base, on_resume, o);
    const char *extra[] = {"X-Extra-Test: yes", NULL};
    struct tg_upstream_call call = {.request = rq,
                                    .targets = tv,
                                    .n_targets = n,
                                    .stream = json_is_true(json_object_get(rq, "stream")),
                                    .request_id =
                                        o->request_id != NULL ? o->request_id : "req-test-1",
                                    .headers = extra,
                                    .raw_body = o->raw ? request : NULL,
                                    .raw_len = o->raw ? strlen(request) : 0};
    assert_int_equal(tg_upstream_start(ex, &call, &handlers, o, &o->req), TG_OK);
    json_decref(rq); /* the executor keeps its own reference */
    /* handlers never run inside start */
    assert_false(o->completed || o->failed);
    if (o->cancel_ms > 0) {
        struct timeval ct = {.tv_sec = 0, .tv_usec = o->cancel_ms * 1000};
        evtimer_add(o->cancel_ev, &ct);
    }
    struct event *wd = evtimer_new(base, on_watchdog, base);
    struct timeval wt = {.tv_sec = watchdog_ms / 1000, .tv_usec = (watchdog_ms % 1000) * 1000};
    evtimer_add(wd, &wt);
    event_base_dispatch(base);
    if (!o->canceled)
        assert_int_equal(tg_upstream_exec_inflight(ex), 0);
    event_free(wd);
    event_free(o->cancel_ev);
    event_free(o->resume_ev);
    tg_upstream_exec_destroy(ex);
    event_base_free(base);
}

static void outcome_free(struct outcome *o)
{
    json_decref(o->response);
    json_decref(o->error);
}

static const char *const T_OA[] = {"oa", NULL};
static const char *const T_AN[] = {"an", NULL};

/* ---- tests ---- */

static void test_passthrough_exact_request(void **state)
{
    fake_reset();
    struct outcome o = {0};
    run("{\"model\":\"auto\",\"messages\":[{\"role\":\"user\",\"content\":\"hi there\"}],"
        "\"temperature\":0.25,\"x_vendor_field\":{\"keep\":[1,2,3]},\"seed\":7}",
        T_OA, &o, 5000);
    assert_true(o.completed);
    assert_string_equal(o.served, "oa");
    assert_int_equal(o.stats.attempts, 1);
    assert_int_equal(o.stats.fallbacks, 0);
    assert_int_equal(o.usage.prompt_tokens, 2); /* ceil(8 bytes / 4) */
    assert_true(o.usage.completion_tokens > 0);
    assert_string_equal(o.finish, "stop");
    assert_string_equal(
        json_string_value(json_object_get(
            json_object_get(json_array_get(json_object_get(o.response, "choices"), 0), "message"),
            "content")),
        "Hello from the fake upstream.");
    json_t *reqs = fake_requests();
    assert_int_equal(json_array_size(reqs), 1);
    const json_t *r0 = json_array_get(reqs, 0);
    assert_string_equal(json_string_value(json_object_get(r0, "path")), "/v1/chat/completions");
    json_t *expect = json_loads(
        "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"hi there\"}],"
        "\"temperature\":0.25,\"x_vendor_field\":{\"keep\":[1,2,3]},\"seed\":7}",
        0, NULL);
    assert_true(json_equal(expect, json_object_get(r0, "body")));
    json_decref(expect);
    const json_t *h = json_object_get(r0, "headers");
    assert_string_equal(json_string_value(json_object_get(h, "authorization")),
                        "Bearer sk-test-openai-secret");
    assert_string_equal(json_string_value(json_object_get(h, "x-request-id")), "req-test-1");
    assert_string_equal(json_string_value(json_object_get(h, "x-extra-test")), "yes");
    assert_null(json_object_get(h, "expect"));
    json_decref(reqs);
    outcome_free(&o);

    /* a request id that could break the header is not forwarded */
    fake_reset();
    struct outcome o2 = {.request_id = "evil\r\nX-Injected: 1"};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", T_OA, &o2, 5000);
    assert_true(o2.completed);
    reqs = fake_requests();
    h = json_object_get(json_array_get(reqs, 0), "headers");
    assert_null(json_object_get(h, "x-request-id"));
    assert_null(json_object_get(h, "x-injected"));
    json_decref(reqs);
    outcome_free(&o2);
}

static void test_stream_include_usage_added(void **state)
{
    fake_reset();
    struct outcome o = {0};
    run("{\"model\":\"x\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"abcd\"}]}",
        T_OA, &o, 5000);
    assert_true(o.completed);
    assert_string_equal(o.text, "Hello from the fake upstream.");
    assert_false(o.got_usage_chunk); /* the client did not ask for it */
    assert_int_equal(o.usage.prompt_tokens, 1);
    assert_int_equal(o.usage.completion_tokens, 5);
    assert_string_equal(o.finish, "stop");
    json_t *reqs = fake_requests();
    const json_t *body = json_object_get(json_array_get(reqs, 0), "body");
    assert_true(
        json_is_true(json_object_get(json_object_get(body, "stream_options"), "include_usage")));
    json_decref(reqs);
    outcome_free(&o);

    /* The client asked: the usage chunk is relayed. */
    struct outcome o2 = {0};
    run("{\"model\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
        "\"messages\":[{\"role\":\"user\",\"content\":\"abcd\"}]}",
        T_OA, &o2, 5000);
    assert_true(o2.completed);
    assert_true(o2.got_usage_chunk);
    outcome_free(&o2);
}

static void test_anthropic_nonstream(void **state)
{
    fake_reset();
    struct outcome o = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":\"hello "
        "world!\"}],\"temperature\":1.5,\"stop\":\"END\",\"top_p\":0.9}",
        T_AN, &o, 5000);
    assert_true(o.completed);
    assert_string_equal(o.served, "an");
    assert_string_equal(json_string_value(json_object_get(o.response, "object")),
                        "chat.completion");
    const json_t *msg =
        json_object_get(json_array_get(json_object_get(o.response, "choices"), 0), "message");
    assert_string_equal(json_string_value(json_object_get(msg, "content")),
                        "Hello from the fake upstream.");
    assert_string_equal(o.finish, "stop");
    assert_int_equal(o.usage.prompt_tokens, 6); /* ceil((12 + 9) / 4) */
    assert_int_equal(o.usage.completion_tokens, 5);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(o.response, "usage"), "total_tokens")),
        11);
    json_t *reqs = fake_requests();
    const json_t *r0 = json_array_get(reqs, 0);
    assert_string_equal(json_string_value(json_object_get(r0, "path")), "/v1/messages");
    json_t *expect = json_loads(
        "{\"model\":\"claude-fake\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
        "\"text\","
        "\"text\":\"hello world!\"}]}],\"max_tokens\":4096,\"temperature\":1.0,\"top_p\":0.9,"
        "\"stop_sequences\":[\"END\"],\"system\":\"Be brief.\"}",
        0, NULL);
    assert_true(json_equal(expect, json_object_get(r0, "body")));
    json_decref(expect);
    const json_t *h = json_object_get(r0, "headers");
    assert_string_equal(json_string_value(json_object_get(h, "x-api-key")), "sk-ant-test-secret");
    assert_string_equal(json_string_value(json_object_get(h, "anthropic-version")), "2023-06-01");
    assert_null(json_object_get(h, "authorization"));
    json_decref(reqs);
    outcome_free(&o);
}

static void test_anthropic_stream(void **state)
{
    fake_reset();
    struct outcome o = {0};
    run("{\"model\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_"
        "tokens\":50,"
        "\"messages\":[{\"role\":\"user\",\"content\":\"count to three\"}]}",
        T_AN, &o, 5000);
    assert_true(o.completed);
    assert_string_equal(o.text, "Hello from the fake upstream.");
    assert_string_equal(o.finish, "stop");
    assert_true(o.got_usage_chunk);
    assert_int_equal(o.usage.prompt_tokens, 4);
    assert_int_equal(o.usage.completion_tokens, 5);
    json_t *reqs = fake_requests();
    const json_t *body = json_object_get(json_array_get(reqs, 0), "body");
    assert_true(json_is_true(json_object_get(body, "stream")));
    assert_int_equal(json_integer_value(json_object_get(body, "max_tokens")), 50);
    assert_null(json_object_get(body, "stream_options"));
    json_decref(reqs);
    outcome_free(&o);
}

static void test_anthropic_structured_output(void **state)
{
    static const char rq[] =
        "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"extract\"}],"
        "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"person\","
        "\"schema\":"
        "{\"type\":\"object\",\"properties\":{\"name\":{\"type\":\"string\"},\"age\":{\"type\":"
        "\"integer\"}},"
        "\"required\":[\"name\",\"age\"]}}}%s}";
    for (int streaming = 0; streaming < 2; streaming++) {
        fake_reset();
        char body[1024];
        snprintf(body, sizeof body, rq, streaming ? ",\"stream\":true" : "");
        struct outcome o = {0};
        run(body, T_AN, &o, 5000);
        assert_true(o.completed);
        assert_string_equal(o.finish, "stop");
        const char *text =
            streaming
                ? o.text
                : json_string_value(json_object_get(
                      json_object_get(json_array_get(json_object_get(o.response, "choices"), 0),
                                      "message"),
                      "content"));
        json_t *data = json_loads(text, 0, NULL);
        assert_non_null(data);
        assert_true(json_is_string(json_object_get(data, "name")));
        assert_true(json_is_integer(json_object_get(data, "age")));
        json_decref(data);
        json_t *reqs = fake_requests();
        const json_t *sent = json_object_get(json_array_get(reqs, 0), "body");
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(sent, "tool_choice"), "name")),
            "person");
        assert_string_equal(
            json_string_value(json_object_get(json_object_get(sent, "tool_choice"), "type")),
            "tool");
        assert_non_null(json_object_get(
            json_object_get(json_array_get(json_object_get(sent, "tools"), 0), "input_schema"),
            "properties"));
        json_decref(reqs);
        outcome_free(&o);
    }
}

static void test_retry_then_success(void **state)
{
    fake_reset();
    /* reset first, on a fresh connection: on a reused one curl itself re-sends once */
    fake_script("[\"reset\",\"status=503\"]");
    struct outcome o = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", T_OA, &o, 5000);
    assert_true(o.completed);
    assert_int_equal(o.stats.attempts, 3);
    assert_int_equal(o.stats.retries, 2);
    assert_int_equal(o.stats.fallbacks, 0);
    assert_int_equal(o.stats.retry_after_ms, -1);
    outcome_free(&o);
}

static void test_retry_after_honoured(void **state)
{
    fake_reset();
    fake_script("[\"status=429;retry_after=1\"]");
    struct outcome o = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", T_OA, &o, 5000);
    assert_true(o.completed);
    assert_int_equal(o.stats.attempts, 2);
    assert_int_equal(o.stats.retry_after_ms, 1000);
    assert_int_equal(o.stats.backoff_ms, 1000);
    outcome_free(&o);

    /* retry-after-ms (OpenAI's header) too */
    fake_script("[\"status=503;retry_after_ms=40\"]");
    struct outcome o2 = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", T_OA, &o2, 5000);
    assert_true(o2.completed);
    assert_int_equal(o2.stats.retry_after_ms, 40);
    outcome_free(&o2);

    /* longer than the executor's cap: no waiting, straight to the next target */
    fake_script("[\"status=429;retry_after=3600\"]");
    struct outcome o3 = {0};
    const char *const chain[] = {"oa", "oa2", NULL};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", chain, &o3,
        5000);
    assert_true(o3.completed);
    assert_string_equal(o3.served, "oa2");
    assert_int_equal(o3.stats.backoff_ms, 0);
    assert_string_equal(o3.stats.fallback_reason, "http_429");
    outcome_free(&o3);
}

static void test_no_retry_after_first_byte(void **state)
{
    fake_reset();
    fake_script("[\"cut=3\"]");
    struct outcome o = {0};
    run("{\"model\":\"x\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        T_OA, &o, 5000);
    assert_true(o.failed);
    assert_true(o.started);
    assert_int_equal(o.n_chunks, 3);
    assert_int_equal(o.stats.attempts, 1);
    json_t *reqs = fake_requests();
    assert_int_equal(json_array_size(reqs), 1);
    json_decref(reqs);
    outcome_free(&o);

    /* an error event inside the stream also ends it (started) */
    fake_script("[\"error_after=2\"]");
    struct outcome o2 = {0};
    run("{\"model\":\"x\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        T_OA, &o2, 5000);
    assert_true(o2.failed);
    assert_true(o2.started);
    assert_int_equal(o2.n_chunks, 2);
    assert_non_null(json_object_get(o2.error, "error"));
    outcome_free(&o2);
}

static void test_fallback_chain(void **state)
{
    fake_reset();
    /* oa: 3 attempts (1 + 2 retries) all 500; oa2 answers. dis is skipped (no key). */
    fake_script("[\"status=500\",\"status=500\",\"status=500\"]");
    const char *const chain[] = {"dis", "oa", "oa2", NULL};
    struct outcome o = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", chain, &o, 5000);
    assert_true(o.completed);
    assert_string_equal(o.served, "oa2");
    assert_int_equal(o.stats.fallbacks, 2);
    assert_int_equal(o.stats.attempts, 4);
    assert_string_equal(o.stats.fallback_reason, "disabled");
    json_t *reqs = fake_requests();
    assert_int_equal(json_array_size(reqs), 4);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_array_get(reqs, 3), "body"), "model")),
                        "gpt-fake-2");
    json_decref(reqs);
    outcome_free(&o);
}

static void test_all_failed(void **state)
{
    fake_reset();
    const char *const chain[] = {"dis", NULL};
    struct outcome o = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", chain, &o, 5000);
    assert_true(o.failed);
    assert_false(o.should_retry);
    assert_false(o.started);
    assert_int_equal(o.status, 503);
    assert_int_equal(o.stats.attempts, 0);
    assert_int_equal(o.stats.fallbacks, 0); /* nothing to fall back to */
    assert_null(o.stats.fallback_reason);
    const char *msg =
        json_string_value(json_object_get(json_object_get(o.error, "error"), "message"));
    assert_non_null(msg);
    assert_non_null(strstr(msg, "TG_TEST_UPSTREAM_UNSET_KEY"));
    outcome_free(&o);

    fake_script("[\"status=500\",\"status=500\",\"status=500\",\"status=401\"]");
    const char *const chain2[] = {"oa", "sl", NULL};
    struct outcome o2 = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", chain2, &o2,
        5000);
    assert_true(o2.failed);
    assert_false(o2.should_retry);
    assert_int_equal(o2.stats.attempts, 4);
    assert_int_equal(o2.stats.fallbacks, 1);
    char *all = json_dumps(o2.error, 0);
    assert_null(strstr(all, "sk-")); /* no key material in errors */
    assert_non_null(strstr(all, "oa: http_5xx"));
    assert_non_null(strstr(all, "sl: auth"));
    free(all);
    outcome_free(&o2);

    /* a client error is final: no retry, no fallback, the provider's status and message */
    fake_script("[\"status=400\"]");
    const char *const chain3[] = {"oa", "oa2", NULL};
    struct outcome o3 = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", chain3, &o3,
        5000);
    assert_true(o3.failed);
    assert_int_equal(o3.status, 400);
    assert_int_equal(o3.stats.attempts, 1);
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(o3.error, "error"), "message")),
               "scripted status 400"));
    outcome_free(&o3);
}

static void test_circuit_breaker(void **state)
{
    fake_reset();
    const char *const cb[] = {"cb", NULL};
    const char *rq = "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    fake_script("[\"status=503\",\"status=503\"]");
    for (int i = 0; i < 2; i++) {
        assert_false(tg_upstream_circuit_open("cb"));
        struct outcome o = {0};
        run(rq, cb, &o, 5000);
        assert_true(o.failed);
        assert_int_equal(o.stats.attempts, 1);
        outcome_free(&o);
    }
    assert_true(tg_upstream_circuit_open("cb"));
    assert_int_equal(tg_upstream_circuit_state("cb"), TG_CIRCUIT_OPEN);
    /* the metrics component sees the failures and the breaker at scrape time */
    {
        struct event_base *b = event_base_new();
        struct tg_upstream_exec *x = tg_upstream_exec_create(b, NULL); /* registers the visitor */
        struct tg_buf text;
        tg_buf_init(&text, 1 << 22);
        assert_int_equal(tg_metrics_render(&text), TG_OK);
        assert_non_null(
            strstr(text.data, "tiergate_upstream_errors_total{target=\"cb\",kind=\"http_5xx\"} 2"));
        assert_non_null(strstr(text.data, "tiergate_circuit_state{target=\"cb\"} 2"));
        assert_non_null(
            strstr(text.data, "tiergate_upstream_duration_seconds_count{target=\"cb\"} 2"));
        tg_buf_free(&text);
        tg_upstream_exec_destroy(x);
        event_base_free(b);
    }
    struct tg_upstream_circuit_info info[8];
    assert_int_equal(tg_upstream_circuit_list(info, 8), 1);
    assert_string_equal(info[0].name, "cb");
    assert_int_equal(info[0].state, TG_CIRCUIT_OPEN);

    /* open: no request reaches the provider */
    struct outcome o = {0};
    run(rq, cb, &o, 5000);
    assert_true(o.failed);
    assert_string_equal(o.kind, "circuit_open");
    assert_int_equal(o.stats.attempts, 0);
    assert_int_equal(o.status, 503);
    outcome_free(&o);
    json_t *reqs = fake_requests();
    assert_int_equal(json_array_size(reqs), 2);
    json_decref(reqs);

    /* after circuit_open_ms: half-open, one probe; its success closes the breaker */
    usleep(350 * 1000);
    assert_int_equal(tg_upstream_circuit_state("cb"), TG_CIRCUIT_HALF_OPEN);
    assert_false(tg_upstream_circuit_open("cb"));
    struct outcome o2 = {0};
    run(rq, cb, &o2, 5000);
    assert_true(o2.completed);
    assert_int_equal(tg_upstream_circuit_state("cb"), TG_CIRCUIT_CLOSED);
    outcome_free(&o2);

    /* a failed probe reopens it at once */
    fake_script("[\"status=503\",\"status=503\",\"status=503\"]");
    for (int i = 0; i < 2; i++) {
        struct outcome ox = {0};
        run(rq, cb, &ox, 5000);
        outcome_free(&ox);
    }
    assert_true(tg_upstream_circuit_open("cb"));
    usleep(350 * 1000);
    struct outcome o3 = {0};
    run(rq, cb, &o3, 5000);
    assert_true(o3.failed);
    assert_int_equal(o3.stats.attempts, 1);
    assert_true(tg_upstream_circuit_open("cb"));
    outcome_free(&o3);

    /* a probe cancelled by its client gives no verdict: the next call probes again */
    usleep(350 * 1000);
    fake_script("[\"delay_ms=2000\"]");
    struct outcome o4 = {.cancel_ms = 100};
    run(rq, cb, &o4, 400);
    assert_true(o4.canceled);
    assert_false(o4.completed || o4.failed);
    assert_int_equal(tg_upstream_circuit_state("cb"), TG_CIRCUIT_HALF_OPEN);
    struct outcome o5 = {0};
    run(rq, cb, &o5, 5000);
    assert_true(o5.completed);
    assert_int_equal(tg_upstream_circuit_state("cb"), TG_CIRCUIT_CLOSED);
    outcome_free(&o5);
    fake_reset();
}

static void test_timeouts(void **state)
{
    fake_reset();
    /* stalled stream: idle timeout after the first events (already relayed: no retry) */
    fake_script("[\"stall=2\"]");
    struct outcome o = {0};
    run("{\"model\":\"x\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        T_OA, &o, 5000);
    assert_true(o.failed);
    assert_string_equal(o.kind, "timeout");
    assert_int_equal(o.status, 504);
    assert_true(o.started);
    assert_int_equal(o.n_chunks, 2);
    outcome_free(&o);

    /* no first byte within first_byte_timeout_ms */
    fake_script("[\"delay_ms=3000\"]");
    const char *const sl[] = {"sl", NULL};
    struct outcome o2 = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", sl, &o2, 5000);
    assert_true(o2.failed);
    assert_string_equal(o2.kind, "timeout");
    assert_int_equal(o2.status, 504);
    assert_false(o2.started);
    assert_int_equal(o2.stats.attempts, 1);
    outcome_free(&o2);
}

static void test_connect_refused(void **state)
{
    /* the transfer fails at once (no listener): retried, then reported from the loop */
    const char *const nc[] = {"nc", NULL};
    struct outcome o = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", nc, &o, 5000);
    assert_true(o.failed);
    assert_string_equal(o.kind, "connect");
    assert_int_equal(o.status, 502);
    assert_int_equal(o.stats.attempts, 2);
    assert_false(o.should_retry);
    outcome_free(&o);
    /* and on to the next target */
    const char *const chain[] = {"nc", "oa", NULL};
    struct outcome o2 = {0};
    run("{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", chain, &o2,
        5000);
    assert_true(o2.completed);
    assert_string_equal(o2.served, "oa");
    assert_string_equal(o2.stats.fallback_reason, "connect");
    outcome_free(&o2);
}

static void test_cancel(void **state)
{
    fake_reset();
    fake_script("[\"chunk_delay_ms=50;chunks=40\"]");
    struct outcome o = {.cancel_after = 2};
    run("{\"model\":\"x\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        T_OA, &o, 800);
    assert_true(o.canceled);
    assert_false(o.completed);
    assert_false(o.failed);
    assert_false(o.handler_after_cancel);
    assert_true(o.n_chunks >= 2 && o.n_chunks < 10);
    outcome_free(&o);
}

/* tg_upstream_exec_reply_due (the I/O thread's busy-polling for upstream replies): false with no
 * first-byte sample yet and whenever no attempt waits for its status line; with one waiting, it
 * compares the executor's first-byte average with the bound. The fake delays each answer by
 * 400 ms, so the average is at least 0.4 s whatever the machine's load: no upper time bound is
 * assumed. A cancel stops the wait. */
static void start_one(struct tg_upstream_exec *ex, struct event_base *base, struct outcome *o)
{
    const struct tg_cfg_model *tv[] = {tg_config_model(g_cfg, "oa")};
    assert_non_null(tv[0]);
    json_t *rq = json_loads("{\"model\":\"x\",\"messages\":[{\"role\":\"user\","
                            "\"content\":\"hi\"}]}", 0, NULL);
    assert_non_null(rq);
    o->base = base;
    struct tg_upstream_call call = {.request = rq, .targets = tv, .n_targets = 1,
                                    .request_id = "req-due"};
    assert_int_equal(tg_upstream_start(ex, &call, &handlers, o, &o->req), TG_OK);
    json_decref(rq);
}

static void test_reply_due(void **state)
{
    fake_reset();
    fake_script("[\"delay_ms=400\",\"delay_ms=400\",\"delay_ms=400\"]");
    struct event_base *base = event_base_new();
    struct tg_upstream_exec *ex = tg_upstream_exec_create(base, NULL);
    assert_non_null(ex);
    struct event *wd = evtimer_new(base, on_watchdog, base);
    struct timeval wt = {.tv_sec = 10, .tv_usec = 0};
    assert_false(tg_upstream_exec_reply_due(ex, 10.0));
    assert_false(tg_upstream_exec_reply_due(NULL, 10.0));

    /* first request: waiting, but no sample yet */
    struct outcome o1 = {0};
    start_one(ex, base, &o1);
    assert_false(tg_upstream_exec_reply_due(ex, 10.0));
    evtimer_add(wd, &wt);
    event_base_dispatch(base);
    assert_true(o1.completed);
    assert_false(tg_upstream_exec_reply_due(ex, 10.0)); /* nothing waits */

    /* second: the average (>= 0.4 s) is within 10 s, not within 0.3 s */
    struct outcome o2 = {0};
    start_one(ex, base, &o2);
    assert_true(tg_upstream_exec_reply_due(ex, 10.0));
    assert_false(tg_upstream_exec_reply_due(ex, 0.3));
    event_base_dispatch(base);
    assert_true(o2.completed);
    assert_false(tg_upstream_exec_reply_due(ex, 10.0));

    /* third, cancelled while it waits: the wait ends with it */
    struct outcome o3 = {0};
    start_one(ex, base, &o3);
    assert_true(tg_upstream_exec_reply_due(ex, 10.0));
    tg_upstream_cancel(o3.req);
    assert_false(tg_upstream_exec_reply_due(ex, 10.0));
    assert_int_equal(tg_upstream_exec_inflight(ex), 0);
    assert_false(o3.completed || o3.failed);

    event_free(wd);
    tg_upstream_exec_destroy(ex);
    event_base_free(base);
    outcome_free(&o1);
    outcome_free(&o2);
    outcome_free(&o3);
}

/* want ⊆ got: every key of every object in want is in got with a matching value; arrays match
 * element by element with the same length. */
static bool subset(const json_t *want, const json_t *got)
{
    if (got == NULL)
        return false;
    if (json_is_object(want)) {
        const char *k;
        json_t *v;
        if (!json_is_object(got))
            return false;
        json_object_foreach((json_t *)want, k, v) {
            if (!subset(v, json_object_get(got, k)))
                return false;
        }
        return true;
    }
    if (json_is_array(want)) {
        if (!json_is_array(got) || json_array_size(want) != json_array_size(got))
            return false;
        for (size_t i = 0; i < json_array_size(want); i++)
            if (!subset(json_array_get(want, i), json_array_get(got, i)))
                return false;
        return true;
    }
    return json_equal((json_t *)want, (json_t *)got);
}

/* Data-driven proxy cases (tests/upstream/proxy_cases.json): the client request, the exact
 * request the provider must receive, and what the client must get back. */
static void test_proxy_cases(void **state)
{
    json_error_t jerr;
    json_t *cases = json_load_file(TG_TEST_DIR "/upstream/proxy_cases.json", 0, &jerr);
    if (cases == NULL)
        fail_msg("proxy_cases.json:%d: %s", jerr.line, jerr.text);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const char *name = json_string_value(json_object_get(c, "name"));
        print_message("case %zu: %s\n", i, name);
        fake_reset();
        const char *script = json_string_value(json_object_get(c, "script"));
        if (script != NULL) {
            char q[256];
            snprintf(q, sizeof q, "[\"%s\"]", script);
            fake_script(q);
        }
        const char *targets[] = {json_string_value(json_object_get(c, "target")), NULL};
        char *rq = json_dumps(json_object_get(c, "request"), JSON_COMPACT);
        struct outcome o = {0};
        run(rq, targets, &o, 5000);
        free(rq);
        json_t *reqs = fake_requests();
        const json_t *want_up = json_object_get(c, "upstream_request");
        if (want_up != NULL) {
            const json_t *got = json_object_get(json_array_get(reqs, 0), "body");
            if (!json_equal((json_t *)want_up, (json_t *)got)) {
                char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
                char *w = json_dumps(want_up, JSON_COMPACT | JSON_SORT_KEYS);
                print_error("case '%s': upstream request\n  got:  %s\n  want: %s\n", name, g, w);
                free(g);
                free(w);
                fail();
            }
        }
        const char *path = json_string_value(json_object_get(c, "upstream_path"));
        if (path != NULL)
            assert_string_equal(json_string_value(json_object_get(json_array_get(reqs, 0), "path")),
                                path);
        if (json_is_true(json_object_get(c, "no_upstream_request")))
            assert_int_equal(json_array_size(reqs), 0);
        json_decref(reqs);
        const json_t *st = json_object_get(c, "error_status");
        if (st != NULL) {
            assert_true(o.failed);
            assert_int_equal(o.status, json_integer_value(st));
            const json_t *we = json_object_get(c, "error");
            if (we != NULL)
                assert_true(subset(we, o.error));
        } else {
            assert_true(o.completed);
        }
        const json_t *wr = json_object_get(c, "response");
        if (wr != NULL && !subset(wr, o.response)) {
            char *g = json_dumps(o.response, JSON_COMPACT | JSON_SORT_KEYS);
            print_error("case '%s': response %s\n", name, g);
            free(g);
            fail();
        }
        const char *text = json_string_value(json_object_get(c, "text"));
        if (text != NULL)
            assert_string_equal(o.text, text);
        const char *args = json_string_value(json_object_get(c, "tool_arguments"));
        if (args != NULL)
            assert_string_equal(o.tool_args, args);
        const char *finish = json_string_value(json_object_get(c, "finish"));
        if (finish != NULL)
            assert_string_equal(o.finish, finish);
        const json_t *att = json_object_get(c, "attempts");
        if (att != NULL)
            assert_int_equal(o.stats.attempts, json_integer_value(att));
        outcome_free(&o);
    }
    json_decref(cases);
}

static void test_backpressure(void **state)
{
    /* 40 pieces, 20 ms apart; paused after the 2nd for 600 ms, longer than the provider's
     * 300 ms stream-idle timeout: no timeout, nothing read meanwhile, everything after resume */
    fake_reset();
    fake_script(
        "[\"chunk_delay_ms=20;chunks=40;content=abcdefghijklmnopqrstuvwxyz0123456789ABCD\"]");
    struct outcome o = {.pause_after = 2, .resume_ms = 600};
    run("{\"model\":\"x\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        T_OA, &o, 8000);
    assert_true(o.completed);
    assert_string_equal(o.text, "abcdefghijklmnopqrstuvwxyz0123456789ABCD");
    print_message("chunks at resume: %d of %d\n", o.chunks_at_resume, o.n_chunks);
    assert_true(o.chunks_at_resume >= 2);
    assert_true(o.chunks_at_resume <= 10); /* unpaused, ~30 would have arrived by then */
    outcome_free(&o);
}

static void test_raw_passthrough(void **state)
{
    static const struct {
        const char *request, *upstream; /* upstream NULL: the JSON path (compare parsed) */
    } rows[] = {
        /* the client's bytes, formatting and number spelling kept; only the model value changes */
        {"{ \"model\" : \"auto\", \"temperature\": 1e0,\n "
         "\"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9\"}],"
         " \"z\":[1, 2] }",
         "{ \"model\" : \"gpt-fake\", \"temperature\": 1e0,\n "
         "\"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9\"}],"
         " \"z\":[1, 2] }"},
        /* a stream without stream_options gets include_usage appended */
        {"{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"}{\"}],\"model\":\"m\"}",
         "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"}{\"}],\"model\":\"gpt-"
         "fake\","
         "\"stream_options\":{\"include_usage\":true}}"},
        /* an escaped key that means "model": the JSON path takes over */
        {"{\"mod\\u0065l\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", NULL},
        /* stream_options without include_usage: the JSON path sets it */
        {"{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":false},"
         "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
         NULL},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        fake_reset();
        struct outcome o = {.raw = true};
        run(rows[i].request, T_OA, &o, 5000);
        assert_true(o.completed);
        json_t *reqs = fake_requests();
        const json_t *r0 = json_array_get(reqs, 0);
        const char *got = json_string_value(json_object_get(r0, "body_raw"));
        if (rows[i].upstream != NULL) {
            assert_string_equal(got, rows[i].upstream);
        } else {
            json_t *want = json_loads(rows[i].request, 0, NULL);
            json_object_set_new(want, "model", json_string("gpt-fake"));
            if (json_is_true(json_object_get(want, "stream")))
                json_object_set_new(want, "stream_options", json_pack("{s:b}", "include_usage", 1));
            assert_true(json_equal(want, json_object_get(r0, "body")));
            json_decref(want);
        }
        json_decref(reqs);
        outcome_free(&o);
    }
}

/* The fake provider's own surface, as other tests and the benchmark use it. */
static void test_fake_endpoints(void **state)
{
    fake_reset();
    char url[256];
    struct tg_test_response r;
    snprintf(url, sizeof url, "%s/v1/models", g_base);
    assert_int_equal(tg_test_http("GET", url, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"object\":\"list\""));
    tg_test_response_free(&r);

    snprintf(url, sizeof url, "%s/v1/embeddings", g_base);
    const char *ct[] = {"Content-Type: application/json", NULL};
    assert_int_equal(
        tg_test_http("POST", url, ct, "{\"model\":\"e\",\"input\":[\"a\",\"bb\"]}", &r), 0);
    assert_int_equal(r.status, 200);
    json_t *v = json_loads(r.body, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(v, "data")), 2);
    assert_int_equal(json_array_size(json_object_get(json_array_get(json_object_get(v, "data"), 0),
                                                     "embedding")),
                     8);
    json_decref(v);
    tg_test_response_free(&r);

    snprintf(url, sizeof url, "%s/v1/chat/completions", g_base);
    const char *hs[] = {"Content-Type: application/json", "X-Fake-Script: status=418", NULL};
    assert_int_equal(tg_test_http("POST", url, hs, "{\"model\":\"m\",\"messages\":[]}", &r), 0);
    assert_int_equal(r.status, 418);
    tg_test_response_free(&r);

    assert_int_equal(tg_test_http("POST", url, ct,
                                  "{\"model\":\"script:content=yo\",\"messages\":[{\"role\":"
                                  "\"user\",\"content\":\"x\"}]}",
                                  &r),
                     0);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"content\":\"yo\""));
    tg_test_response_free(&r);

    assert_int_equal(tg_test_http("POST", url, ct, "not json", &r), 0);
    assert_int_equal(r.status, 400);
    tg_test_response_free(&r);

    snprintf(url, sizeof url, "%s/_script", g_base);
    assert_int_equal(tg_test_http("POST", url, NULL, "[\"bogus=1\"]", &r), 0);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "unknown script key 'bogus'"));
    tg_test_response_free(&r);
}

static void test_bad_arguments(void **state)
{
    struct event_base *base = event_base_new();
    struct tg_upstream_exec *ex = tg_upstream_exec_create(base, NULL);
    const struct tg_cfg_model *m = tg_config_model(g_cfg, "oa");
    json_t *rq = json_object();
    struct tg_upstream_call call = {.request = rq, .targets = &m, .n_targets = 0};
    struct tg_upstream_req *r = NULL;
    assert_int_equal(tg_upstream_start(ex, &call, &handlers, NULL, &r), TG_INVAL);
    call.n_targets = 1;
    call.request = NULL;
    assert_int_equal(tg_upstream_start(ex, &call, &handlers, NULL, &r), TG_INVAL);
    assert_null(r);
    json_decref(rq);
    tg_upstream_exec_destroy(ex);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_passthrough_exact_request),
        cmocka_unit_test(test_stream_include_usage_added),
        cmocka_unit_test(test_anthropic_nonstream),
        cmocka_unit_test(test_anthropic_stream),
        cmocka_unit_test(test_anthropic_structured_output),
        cmocka_unit_test(test_retry_then_success),
        cmocka_unit_test(test_retry_after_honoured),
        cmocka_unit_test(test_no_retry_after_first_byte),
        cmocka_unit_test(test_fallback_chain),
        cmocka_unit_test(test_all_failed),
        cmocka_unit_test(test_circuit_breaker),
        cmocka_unit_test(test_timeouts),
        cmocka_unit_test(test_connect_refused),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_reply_due),
        cmocka_unit_test(test_proxy_cases),
        cmocka_unit_test(test_backpressure),
        cmocka_unit_test(test_raw_passthrough),
        cmocka_unit_test(test_fake_endpoints),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
