/* Security end to end, through the real tiergate binary (see sec_env.h):
 *  - secrets (provider keys, client keys, the Redis password, the webhook secret) appear in no
 *    log line at debug level, text and JSON format, and in no error body, even when the provider
 *    echoes our Authorization / x-api-key header back (streamed and not, both provider shapes);
 *  - client API keys are stored nowhere in plaintext (Redis after cache, jobs; logs);
 *  - no CR/LF injection into the requests the gateway makes upstream (the fake's /_requests);
 *  - no SSRF: request fields cannot pick the upstream, callback_url to loopback / private /
 *    link-local / metadata addresses is refused;
 *  - per-tenant cache isolation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sec_env.h"

static const char *const all_secrets[] = {
    SEC_KEY_ALICE, SEC_KEY_ALICE2,   SEC_KEY_BOB,  SEC_KEY_WRONG,   SEC_PROVIDER_KEY,
    SEC_ECHO_KEY,  SEC_ECHO_ANT_KEY, SEC_REDIS_PW, SEC_HOOK_SECRET,
};

static void assert_no_secret(const char *what, const char *text)
{
    for (size_t i = 0; i < sizeof all_secrets / sizeof all_secrets[0]; i++) {
        const char *at = strstr(text, all_secrets[i]);
        if (at == NULL)
            continue;
        const char *from = at;
        while (from > text && from[-1] != '\n' && at - from < 400)
            from--;
        fail_msg("%s contains the secret '%s':\n%.800s", what, all_secrets[i], from);
    }
}

static long post(struct sec_env *e, const char *key, const char *path, const char *body,
                 const char *hdr, struct tg_test_response *r)
{
    assert_int_equal(sec_post(e, key, path, body, hdr, r), 0);
    return r->status;
}

static json_t *fake_requests(struct sec_env *e)
{
    char url[128];
    snprintf(url, sizeof url, "%s/_requests", e->fake_base);
    struct tg_test_response r;
    assert_int_equal(tg_test_http("GET", url, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    json_t *v = json_loads(r.body, 0, NULL);
    tg_test_response_free(&r);
    assert_true(json_is_array(v));
    return v;
}

/* Poll GET /v1/jobs/{id} until succeeded/failed (bounded); returns the final JSON. */
static json_t *wait_job(struct sec_env *e, const char *key, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", id);
    for (int i = 0; i < 600; i++) {
        struct tg_test_response r;
        assert_int_equal(sec_get(e, key, path, &r), 0);
        json_t *v = json_loads(r.body, 0, NULL);
        tg_test_response_free(&r);
        const char *st = json_string_value(json_object_get(v, "status"));
        if (st != NULL && (strcmp(st, "succeeded") == 0 || strcmp(st, "failed") == 0))
            return v;
        json_decref(v);
        usleep(100000);
    }
    fail_msg("job %s did not finish", id);
    return NULL;
}

/* ---- secrets in logs and error bodies (run once per log format) ---- */

static void secrets_run(bool json_logs)
{
    struct sec_env e;
    assert_true(sec_env_start(&e, json_logs, false));
    struct tg_test_response r;
    static const char *chat = "{\"model\":\"%s\",\"stream\":%s,\"max_tokens\":8,"
                              "\"messages\":[{\"role\":\"user\",\"content\":\"hello %s\"}]}";
    char body[512];

    /* a normal remote call and a local one */
    snprintf(body, sizeof body, chat, "gpt-fake", "false", "remote");
    assert_int_equal(post(&e, SEC_KEY_ALICE, "/v1/chat/completions", body, NULL, &r), 200);
    tg_test_response_free(&r);
    snprintf(body, sizeof body, chat, "phi-3.5-mini", "false", "local");
    assert_int_equal(post(&e, SEC_KEY_ALICE, "/v1/chat/completions", body, NULL, &r), 200);
    tg_test_response_free(&r);

    /* providers that quote our credentials in their errors: both shapes, streamed and not */
    static const char *models[] = {"gpt-echo", "claude-echo"};
    for (int m = 0; m < 2; m++) {
        for (int s = 0; s < 2; s++) {
            int before = sec_echo_calls(&e);
            snprintf(body, sizeof body, chat, models[m], s ? "true" : "false", "echo");
            long st = post(&e, SEC_KEY_ALICE, "/v1/chat/completions", body, NULL, &r);
            assert_true(sec_echo_calls(&e) > before); /* the provider was called and echoed */
            if (s == 0)
                assert_int_equal(st, 400);
            /* the provider's message reached the client (so redaction, not luck, hid the key) */
            if (strstr(r.body, "Incorrect API key provided") == NULL)
                fail_msg("%s stream=%d: provider message not relayed: %s", models[m], s, r.body);
            assert_no_secret("error body", r.body);
            assert_no_secret("error headers", r.headers);
            tg_test_response_free(&r);
        }
    }

    /* a wrong client key */
    assert_int_equal(post(&e, SEC_KEY_WRONG, "/v1/chat/completions", body, NULL, &r), 401);
    assert_no_secret("401 body", r.body);
    tg_test_response_free(&r);

    /* a job whose webhook fails (the log names the URL; the secret signs but is not logged) */
    assert_int_equal(post(&e, SEC_KEY_ALICE, "/v1/jobs",
                          "{\"type\":\"chat\",\"model\":\"gpt-fake\",\"callback_url\":"
                          "\"http://hooks.invalid/cb?token=abc\",\"messages\":[{\"role\":\"user\","
                          "\"content\":\"job\"}]}",
                          NULL, &r),
                     202);
    json_t *j = json_loads(r.body, 0, NULL);
    tg_test_response_free(&r);
    json_t *done = wait_job(&e, SEC_KEY_ALICE, json_string_value(json_object_get(j, "id")));
    json_decref(done);
    json_decref(j);

    int st = sec_env_stop(&e);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    char *log = tg_test_read_log(e.log_path);
    /* debug lines were written, in the format asked for */
    assert_non_null(strstr(log, json_logs ? "\"level\":\"debug\"" : " DEBUG "));
    assert_no_secret("the gateway log", log);
    free(log);
}

static void test_secrets_text_logs(void **state)
{
    (void)state;
    secrets_run(false);
}

static void test_secrets_json_logs(void **state)
{
    (void)state;
    secrets_run(true);
}

/* ---- the rest share one gateway ---- */

static struct sec_env g;

static int setup(void **state)
{
    (void)state;
    return sec_env_start(&g, false, false) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    sec_env_stop(&g);
    return 0;
}

static const char *cache_hdr(const struct tg_test_response *r, char *buf, size_t n)
{
    if (!tg_test_header(r, "x-tiergate-cache", buf, n))
        snprintf(buf, n, "(none)");
    return buf;
}

static void test_cache_isolation(void **state)
{
    (void)state;
    const char *body = "{\"model\":\"gpt-fake\",\"temperature\":0,\"messages\":[{\"role\":\"user\","
                       "\"content\":\"tenant isolation probe\"}]}";
    static const struct {
        const char *key, *want;
    } steps[] = {
        {SEC_KEY_ALICE, "miss"}, /* acme stores it */
        {SEC_KEY_BOB, "miss"},   /* globex must not see acme's entry */
        {SEC_KEY_ALICE2, "hit"}, /* another acme key shares acme's cache */
        {SEC_KEY_BOB, "hit"},    /* and globex now has its own */
        {SEC_KEY_ALICE, "hit"},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        const char *pattern =
            strcmp(steps[i].key, SEC_KEY_BOB) == 0 ? "tg:c:globex:*" : "tg:c:acme:*";
        int entries = sec_redis_count(&g, pattern);
        struct tg_test_response r;
        assert_int_equal(post(&g, steps[i].key, "/v1/chat/completions", body, NULL, &r), 200);
        char h[64];
        if (strcmp(cache_hdr(&r, h, sizeof h), steps[i].want) != 0)
            fail_msg("step %zu: x-tiergate-cache %s, want %s", i, h, steps[i].want);
        tg_test_response_free(&r);
        /* the entry is written after the answer: wait until it is there before the next step */
        if (strcmp(steps[i].want, "miss") == 0)
            assert_true(sec_redis_wait_count(&g, pattern, entries + 1));
    }
    /* the provider saw the prompt exactly twice: once per tenant */
    json_t *reqs = fake_requests(&g);
    size_t n = 0, i;
    json_t *q;
    json_array_foreach(reqs, i, q)
    {
        const char *raw = json_string_value(json_object_get(q, "body_raw"));
        if (raw != NULL && strstr(raw, "tenant isolation probe") != NULL)
            n++;
    }
    json_decref(reqs);
    assert_int_equal(n, 2);
}

static void test_keys_hashed_at_rest(void **state)
{
    (void)state;
    struct tg_test_response r;
    /* a cacheable stream and a job by each tenant (earlier tests added cache entries too) */
    const char *keys[] = {SEC_KEY_ALICE, SEC_KEY_BOB};
    for (int k = 0; k < 2; k++) {
        assert_int_equal(
            post(&g, keys[k], "/v1/chat/completions",
                 "{\"model\":\"gpt-fake\",\"temperature\":0,\"stream\":true,\"messages\":"
                 "[{\"role\":\"user\",\"content\":\"at rest\"}]}",
                 NULL, &r),
            200);
        tg_test_response_free(&r);
        assert_int_equal(post(&g, keys[k], "/v1/jobs",
                              "{\"type\":\"chat\",\"model\":\"gpt-fake\",\"messages\":[{\"role\":"
                              "\"user\",\"content\":\"job at rest\"}]}",
                              "Idempotency-Key: idem-at-rest", &r),
                         202);
        json_t *j = json_loads(r.body, 0, NULL);
        tg_test_response_free(&r);
        json_t *done = wait_job(&g, keys[k], json_string_value(json_object_get(j, "id")));
        assert_string_equal(json_string_value(json_object_get(done, "status")), "succeeded");
        json_decref(done);
        json_decref(j);
    }
    assert_true(sec_redis_wait_count(&g, "tg:c:*", 2));
    char *dump = sec_redis_dump(&g);
    /* we looked at real content: cache entries and job records with the key's name */
    if (strstr(dump, "tg:c:acme:") == NULL || strstr(dump, "tg:c:globex:") == NULL ||
        strstr(dump, "tg:job:") == NULL || strstr(dump, "\nalice\n") == NULL)
        fail_msg("Redis lacks the expected cache entries / job records:\n%.3000s", dump);
    assert_no_secret("Redis", dump);
    free(dump);
    char *cfg = tg_test_slurp(g.cfg_path, NULL);
    assert_non_null(cfg);
    /* client keys are there as sha256 only; provider keys and the webhook secret as ${VAR} */
    static const char *const not_in_file[] = {SEC_KEY_ALICE,    SEC_KEY_ALICE2, SEC_KEY_BOB,
                                              SEC_PROVIDER_KEY, SEC_ECHO_KEY,   SEC_ECHO_ANT_KEY,
                                              SEC_HOOK_SECRET};
    for (size_t i = 0; i < sizeof not_in_file / sizeof not_in_file[0]; i++)
        assert_null(strstr(cfg, not_in_file[i]));
    free(cfg);
    char *log = tg_test_read_log(g.log_path);
    assert_no_secret("the gateway log", log);
    free(log);
}

/* No request field can pick the upstream: the echo provider is reachable only by config. */
static void test_no_ssrf_through_request_fields(void **state)
{
    (void)state;
    int before = sec_echo_calls(&g);
    char body[1024];
    snprintf(body, sizeof body,
             "{\"model\":\"gpt-fake\",\"base_url\":\"http://127.0.0.1:%d/v1\",\"api_base\":"
             "\"http://127.0.0.1:%d/v1\",\"url\":\"http://127.0.0.1:%d/v1/chat/completions\","
             "\"provider\":\"echo\",\"messages\":[{\"role\":\"user\",\"content\":\"where to\"}]}",
             g.echo_port, g.echo_port, g.echo_port);
    struct tg_test_response r;
    long st = post(&g, SEC_KEY_ALICE, "/v1/chat/completions", body, NULL, &r);
    tg_test_response_free(&r);
    assert_true(st == 200 || st == 400);
    snprintf(body, sizeof body,
             "{\"model\":\"http://127.0.0.1:%d/"
             "v1\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
             g.echo_port);
    st = post(&g, SEC_KEY_ALICE, "/v1/chat/completions", body, NULL, &r);
    tg_test_response_free(&r);
    assert_true(st >= 400 && st < 500);
    assert_int_equal(sec_echo_calls(&g), before);
}

static void test_no_ssrf_through_webhooks(void **state)
{
    (void)state;
    static const char *refused[] = {
        "http://127.0.0.1:%d/hook",
        "http://localhost:%d/hook",
        "http://[::1]:%d/hook",
        "http://[::ffff:127.0.0.1]:%d/hook",
        "http://169.254.169.254:%d/latest",
        "http://10.0.0.1:%d/",
        "http://172.16.5.4:%d/",
        "http://192.168.1.1:%d/",
        "http://0.0.0.0:%d/",
        "http://[fe80::1]:%d/",
        "http://100.64.0.1:%d/",
        "http://[fd00::1]:%d/",
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char url[128], body[512];
        snprintf(url, sizeof url, refused[i], g.echo_port);
        snprintf(body, sizeof body,
                 "{\"type\":\"chat\",\"model\":\"gpt-fake\",\"callback_url\":\"%s\",\"messages\":"
                 "[{\"role\":\"user\",\"content\":\"hook\"}]}",
                 url);
        struct tg_test_response r;
        long st = post(&g, SEC_KEY_ALICE, "/v1/jobs", body, NULL, &r);
        if (st != 400 || strstr(r.body, "callback_url") == NULL)
            fail_msg("%s: %ld %s", url, st, r.body);
        tg_test_response_free(&r);
    }
    /* a public name is accepted (delivery itself is checked again on the resolved address) */
    struct tg_test_response r;
    assert_int_equal(post(&g, SEC_KEY_ALICE, "/v1/jobs",
                          "{\"type\":\"chat\",\"model\":\"gpt-fake\",\"callback_url\":"
                          "\"https://hooks.example.com/x\",\"messages\":[{\"role\":\"user\","
                          "\"content\":\"hook\"}]}",
                          NULL, &r),
                     202);
    tg_test_response_free(&r);
}

/* A key rotated by SIGHUP (now written in the file itself) is masked from the reload on. */
static void test_rotated_key_redacted(void **state)
{
    (void)state;
    static const char rotated[] = "sk-rotated-echo-d41f08";
    char *cfg = tg_test_slurp(g.cfg_path, NULL);
    assert_non_null(cfg);
    char *at = strstr(cfg, "${TG_SEC_ECHO_KEY}");
    assert_non_null(at);
    FILE *f = fopen(g.cfg_path, "w");
    assert_non_null(f);
    fprintf(f, "%.*s%s%s", (int)(at - cfg), cfg, rotated, at + strlen("${TG_SEC_ECHO_KEY}"));
    fclose(f);
    free(cfg);
    char *before = tg_test_read_log(g.log_path);
    size_t seen = strlen(before);
    free(before);
    assert_int_equal(kill(g.gw_pid, SIGHUP), 0);
    bool reloaded = false;
    for (int i = 0; i < 200 && !reloaded; i++) {
        char *log = tg_test_read_log(g.log_path);
        reloaded = strlen(log) > seen && strstr(log + seen, "configuration reloaded") != NULL;
        free(log);
        if (!reloaded)
            usleep(50000);
    }
    assert_true(reloaded);
    for (int s = 0; s < 2; s++) {
        struct tg_test_response r;
        int calls = sec_echo_calls(&g);
        post(&g, SEC_KEY_ALICE, "/v1/chat/completions",
             s ? "{\"model\":\"gpt-echo\",\"stream\":true,\"messages\":[{\"role\":\"user\","
                 "\"content\":\"rotated\"}]}"
               : "{\"model\":\"gpt-echo\",\"messages\":[{\"role\":\"user\",\"content\":"
                 "\"rotated\"}]}",
             NULL, &r);
        assert_true(sec_echo_calls(&g) > calls);
        assert_non_null(strstr(r.body, "Incorrect API key provided"));
        assert_null(strstr(r.body, rotated));
        tg_test_response_free(&r);
    }
    char *log = tg_test_read_log(g.log_path);
    assert_null(strstr(log, rotated));
    free(log);
}

/* ---- CR/LF/NUL never become upstream headers ---- */

static bool header_value_safe(const char *v)
{
    for (; *v != '\0'; v++)
        if (*v == '\r' || *v == '\n' || (unsigned char)*v < 0x20 || *v == 0x7f)
            return false;
    return true;
}

static void test_no_header_injection(void **state)
{
    (void)state;
    char url[128];
    snprintf(url, sizeof url, "%s/_requests", g.fake_base);
    struct tg_test_response r;
    assert_int_equal(tg_test_http("DELETE", url, NULL, NULL, &r), 0);
    tg_test_response_free(&r);

    /* client-controlled values with CR, LF, NUL: X-Request-Id (raw bytes, incl. obs-fold), the
     * model, user, metadata, a message name, and headers a proxy might pass through */
    static const char body_ok[] =
        "{\"model\":\"gpt-fake\",\"user\":\"u\\r\\nX-Injected: user\","
        "\"metadata\":{\"k\":\"v\\r\\nX-Injected: meta\"},\"messages\":[{\"role\":\"user\","
        "\"name\":\"n\\r\\nX-Injected: name\",\"content\":\"crlf\\r\\nX-Injected: content\"}]}";
    static const char body_model[] =
        "{\"model\":\"gpt-fake\\r\\nX-Injected: model\",\"messages\":[{\"role\":\"user\","
        "\"content\":\"crlf\"}]}";
    static const struct {
        const char *hdr; /* raw header bytes (may hold CR/LF/NUL), length below */
        size_t hlen;
        const char *body;
        bool forwarded; /* the gateway should still answer it through the fake */
    } rows[] = {
#define RAW(s) s, sizeof s - 1
        {RAW("X-Request-Id: abc\rX-Injected: cr\r\n"), body_ok, true},
        {RAW("X-Request-Id: abc\r\n X-Injected: fold\r\n"), body_ok, true},
        {RAW("X-Request-Id: abc\0X-Injected: nul\r\n"), body_ok, true},
        {RAW("X-Request-Id: abc%0d%0aX-Injected: pct\r\n"), body_ok, true},
        {RAW("OpenAI-Organization: o\rX-Injected: org\r\n"), body_ok, true},
        {RAW("X-Request-Id: id-model\r\n"), body_model, false},
#undef RAW
    };
    int forwarded = 0;
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char req[4096];
        int n = snprintf(req, sizeof req,
                         "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                         "Connection: close\r\nContent-Length: %zu\r\n",
                         SEC_KEY_ALICE, strlen(rows[i].body));
        memcpy(req + n, rows[i].hdr, rows[i].hlen);
        n += (int)rows[i].hlen;
        n += snprintf(req + n, sizeof req - (size_t)n, "\r\n%s", rows[i].body);
        char *resp = sec_raw_request(&g, req, (size_t)n);
        /* an answer, not a crash: 200 when forwarded, else a 4xx */
        if (strncmp(resp, "HTTP/1.1 ", 9) != 0)
            fail_msg("row %zu: no HTTP answer: '%.200s'", i, resp);
        int status = (int)strtol(resp + 9, NULL, 10);
        if (rows[i].forwarded ? status != 200 && status != 400 : status < 400 || status >= 500)
            fail_msg("row %zu: status %d: %.300s", i, status, resp);
        if (status == 200)
            forwarded++;
        free(resp);
    }
    assert_true(forwarded >= 1); /* the check below looked at real upstream requests */

    json_t *reqs = fake_requests(&g);
    assert_int_equal((int)json_array_size(reqs), forwarded);
    size_t i;
    json_t *q;
    json_array_foreach(reqs, i, q)
    {
        const char *k;
        json_t *v;
        json_object_foreach(json_object_get(q, "headers"), k, v)
        {
            if (strstr(k, "injected") != NULL)
                fail_msg("upstream request %zu got header '%s'", i, k);
            const char *s = json_string_value(v);
            if (s == NULL || !header_value_safe(s))
                fail_msg("upstream request %zu: header %s has a control character", i, k);
            if (strcmp(k, "x-request-id") == 0)
                for (const char *c = s; *c != '\0'; c++)
                    if (!isalnum((unsigned char)*c) && strchr("-_.:", *c) == NULL)
                        fail_msg("upstream request %zu: x-request-id '%s'", i, s);
        }
        /* the values travel JSON-escaped in the body, untouched */
        const char *user = json_string_value(json_object_get(json_object_get(q, "body"), "user"));
        if (user != NULL)
            assert_string_equal(user, "u\r\nX-Injected: user");
    }
    json_decref(reqs);
}

int main(void)
{
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_secrets_text_logs),
        cmocka_unit_test(test_secrets_json_logs),
    };
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_cache_isolation),
        cmocka_unit_test(test_no_header_injection),
        cmocka_unit_test(test_no_ssrf_through_request_fields),
        cmocka_unit_test(test_no_ssrf_through_webhooks),
        cmocka_unit_test(test_keys_hashed_at_rest),
        cmocka_unit_test(test_rotated_key_redacted),
    };
    int rc = cmocka_run_group_tests_name("secrets", own, NULL, NULL);
    rc += cmocka_run_group_tests_name("shared", shared, setup, teardown);
    return rc;
}
