/* Security unit tests: log redaction (tg_log_redact, and what tg_log really writes in text and
 * JSON format), the webhook SSRF policy (address table, callback_url check) and the connect-time
 * check of the real webhook sender against a real loopback receiver. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>

#include "jobs_int.h"
#include "tg/err.h"
#include "tg/log.h"
#include "tg_testlib.h"

/* ---- redaction ---- */

static void test_redact_table(void **state)
{
    (void)state;
    tg_log_clear_secrets();
    assert_true(tg_log_add_secret("sk-live-0123456789"));
    assert_true(tg_log_add_secret("sk-live-0123456789")); /* again (a reload): kept once */
    assert_true(tg_log_add_secret("r3dis-pass"));
    assert_false(tg_log_add_secret("short")); /* < TG_LOG_SECRET_MIN would mask ordinary words */
    assert_false(tg_log_add_secret(NULL));
    static const struct {
        const char *in, *out;
    } rows[] = {
        {"nothing secret here", "nothing secret here"},
        {"key sk-live-0123456789 twice sk-live-0123456789.", "key **** twice ****."},
        {"Authorization: Bearer tgk-client-abc.def", "Authorization: Bearer ****"},
        {"authorization: bearer    tgk-x\"rest", "authorization: bearer    ****\"rest"},
        {"{\"h\":\"x-api-key: sk-ant-zz9\",\"n\":1}", "{\"h\":\"x-api-key: ****\",\"n\":1}"},
        {"url redis://:r3dis-pass@127.0.0.1:6379/0 down",
         "url redis://:****@127.0.0.1:6379/0 down"},
        {"url redis://user:pw-not-registered@h/0", "url redis://user:****@h/0"},
        {"url http://127.0.0.1:8080/v1 fine", "url http://127.0.0.1:8080/v1 fine"},
        {"password=hunter2&x=1", "password=****&x=1"},
        {"Bearer ****", "Bearer ****"}, /* already masked: unchanged */
        {"the short word stays", "the short word stays"},
        /* key-shaped words, registered or not, in any field */
        {"unknown model 'sk-proj-AbCdEf0123456789_xyz'", "unknown model '****'"},
        {"model=sk-ant-api03-aaaaaaaaaaaaaaaaaaaa end", "model=**** end"},
        {"gsk_0123456789abcdefABCD and xai-0123456789abcdefABCD", "**** and ****"},
        {"AIzaSyA0123456789abcdefgh", "****"},
        {"sk-short stays; task-0123456789abcdefghij stays",
         "sk-short stays; task-0123456789abcdefghij stays"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", rows[i].in);
        tg_log_redact(buf);
        if (strcmp(buf, rows[i].out) != 0)
            fail_msg("row %zu: '%s' -> '%s', want '%s'", i, rows[i].in, buf, rows[i].out);
    }
    tg_log_clear_secrets();
    char buf[64];
    snprintf(buf, sizeof buf, "sk-live-0123456789");
    assert_false(tg_log_redact(buf)); /* cleared */

    /* many rotations: the newest 64 are kept, the oldest forgotten */
    for (int i = 0; i < 70; i++) {
        char k[32];
        snprintf(k, sizeof k, "rotated-key-%02d", i);
        assert_true(tg_log_add_secret(k));
    }
    snprintf(buf, sizeof buf, "rotated-key-69 rotated-key-06 rotated-key-05");
    tg_log_redact(buf);
    assert_string_equal(buf, "**** **** rotated-key-05");
    tg_log_clear_secrets();
}

/* What tg_log really writes (stderr), in both formats, at debug level. */
static void test_log_lines_redacted(void **state)
{
    (void)state;
    tg_log_clear_secrets();
    assert_true(tg_log_add_secret("sk-prov-in-config-42"));
    char path[] = "/tmp/tg-sec-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd != -1);
    int saved = dup(2);
    assert_true(saved != -1);
    assert_int_equal(dup2(fd, 2), 2);
    tg_log_set_level(TG_LOG_DEBUG);
    for (int json = 0; json < 2; json++) {
        tg_log_set_json(json == 1);
        tg_log_set_request_id("req-sk-prov-in-config-42");
        tg_debug("upstream said: bad key sk-prov-in-config-42 (Authorization: Bearer tgk-cli-1)");
        tg_log_set_request_id(NULL);
        tg_warn("redis://:pw-in-url@host:1/0 unreachable");
        tg_error("x-api-key: sk-ant-other and password=abc123");
        /* cut at the 2 KB message limit in the middle of the secret: its head is masked too */
        tg_info("%2040s sk-prov-in-config-42 and more", "padding");
    }
    dup2(saved, 2);
    close(saved);
    tg_log_set_json(false);
    tg_log_set_level(TG_LOG_INFO);
    char *log = tg_test_slurp(path, NULL);
    close(fd);
    unlink(path);
    assert_non_null(log);
    static const char *secrets[] = {"sk-prov-in-config-42", "tgk-cli-1", "pw-in-url",
                                    "sk-ant-other",         "abc123",    " sk-p"};
    for (size_t i = 0; i < sizeof secrets / sizeof secrets[0]; i++)
        if (strstr(log, secrets[i]) != NULL)
            fail_msg("'%s' was logged:\n%s", secrets[i], log);
    /* the lines are there, masked, in both formats */
    assert_non_null(strstr(log, "DEBUG [req-****] upstream said: bad key ****"));
    assert_non_null(strstr(log, "\"request_id\":\"req-****\""));
    assert_non_null(strstr(log, "\"msg\":\"x-api-key: **** and password=****\""));
    free(log);
    tg_log_clear_secrets();
}

/* ---- SSRF policy ---- */

static bool allowed(const char *ip)
{
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
    if (inet_pton(AF_INET, ip, &a4.sin_addr) == 1)
        return tg_webhook_addr_allowed((struct sockaddr *)&a4);
    assert_int_equal(inet_pton(AF_INET6, ip, &a6.sin6_addr), 1);
    return tg_webhook_addr_allowed((struct sockaddr *)&a6);
}

static void test_addr_policy(void **state)
{
    (void)state;
    static const struct {
        const char *ip;
        bool ok;
    } rows[] = {
        {"8.8.8.8", true},
        {"93.184.216.34", true},
        {"100.63.255.255", true},
        {"172.15.0.1", true},
        {"172.32.0.1", true},
        {"169.253.1.1", true},
        {"2606:4700::1111", true},
        {"::ffff:8.8.8.8", true},
        {"64:ff9b::808:808", true},
        {"127.0.0.1", false},
        {"127.255.0.9", false},
        {"0.0.0.0", false},
        {"10.1.2.3", false},
        {"172.16.0.1", false},
        {"172.31.255.255", false},
        {"192.168.0.10", false},
        {"169.254.169.254", false},
        {"100.64.0.1", false},
        {"192.0.0.170", false},
        {"198.18.0.1", false},
        {"224.0.0.1", false},
        {"255.255.255.255", false},
        {"::", false},
        {"::1", false},
        {"::ffff:127.0.0.1", false},
        {"::ffff:169.254.169.254", false},
        {"64:ff9b::a9fe:a9fe", false},
        {"::127.0.0.1", false},
        {"fc00::1", false},
        {"fd12:3456::1", false},
        {"fe80::1", false},
        {"fec0::1", false},
        {"ff02::1", false},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        if (allowed(rows[i].ip) != rows[i].ok)
            fail_msg("%s: allowed=%d, want %d", rows[i].ip, !rows[i].ok, rows[i].ok);
}

static void test_callback_url_check(void **state)
{
    (void)state;
    static const struct {
        const char *url;
        int strict, permissive; /* without / with webhook_allow_private */
    } rows[] = {
        {"https://hooks.example.com/tiergate", TG_OK, TG_OK},
        {"http://93.184.216.34:8080/x", TG_OK, TG_OK},
        {"http://127.0.0.1:9000/hook", TG_UNSUPPORTED, TG_OK},
        {"http://localhost/hook", TG_UNSUPPORTED, TG_OK},
        {"http://LOCALHOST./hook", TG_UNSUPPORTED, TG_OK},
        {"http://api.localhost/hook", TG_UNSUPPORTED, TG_OK},
        {"http://[::1]:80/", TG_UNSUPPORTED, TG_OK},
        {"http://[::ffff:127.0.0.1]/", TG_UNSUPPORTED, TG_OK},
        {"http://[fe80::1%25eth0]/", TG_UNSUPPORTED, TG_OK},
        {"http://169.254.169.254/latest/meta-data/", TG_UNSUPPORTED, TG_OK},
        {"http://10.0.0.8/", TG_UNSUPPORTED, TG_OK},
        {"http://0.0.0.0:80/", TG_UNSUPPORTED, TG_OK},
        {"http://user:pw@192.168.1.1/", TG_UNSUPPORTED, TG_OK},
        {"ftp://example.com/", TG_INVAL, TG_INVAL},
        {"http://", TG_INVAL, TG_INVAL},
        {"not a url", TG_INVAL, TG_INVAL},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        int a = tg_webhook_check_url(rows[i].url, false);
        int b = tg_webhook_check_url(rows[i].url, true);
        if (a != rows[i].strict || b != rows[i].permissive)
            fail_msg("%s: %d/%d, want %d/%d", rows[i].url, a, b, rows[i].strict,
                     rows[i].permissive);
    }
}

/* ---- the sender's connect-time check, against a real receiver on 127.0.0.1 ---- */

struct receiver {
    struct event_base *base;
    struct evhttp *http;
    pthread_t thread;
    pthread_mutex_t lock;
    char paths[512];
    atomic_int n;
};

static void on_hook(struct evhttp_request *req, void *arg)
{
    struct receiver *r = arg;
    pthread_mutex_lock(&r->lock);
    size_t l = strlen(r->paths);
    snprintf(r->paths + l, sizeof r->paths - l, "%s ", evhttp_request_get_uri(req));
    pthread_mutex_unlock(&r->lock);
    atomic_fetch_add(&r->n, 1);
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void *recv_main(void *arg)
{
    event_base_dispatch(((struct receiver *)arg)->base);
    return NULL;
}

static void test_sender_refuses_at_connect(void **state)
{
    (void)state;
    evthread_use_pthreads();
    struct receiver r = {.lock = PTHREAD_MUTEX_INITIALIZER};
    r.base = event_base_new();
    r.http = evhttp_new(r.base);
    evhttp_set_gencb(r.http, on_hook, &r);
    int port = -1;
    for (int i = 0; i < 5 && port == -1; i++) {
        port = tg_test_free_port();
        if (evhttp_bind_socket(r.http, "127.0.0.1", (uint16_t)port) != 0)
            port = -1;
    }
    assert_true(port > 0);
    assert_int_equal(pthread_create(&r.thread, NULL, recv_main, &r), 0);
    assert_int_equal(tg_webhook_start(), TG_OK);

    /* Names are not checked by the string test at enqueue: only the connect-time check on the
     * resolved address (127.0.0.1 / ::1) stands between these and the receiver. One sender
     * thread delivers in order, so once /allowed arrived the others have been decided. */
    char url[128];
    snprintf(url, sizeof url, "http://localhost:%d/refused-name", port);
    tg_webhook_enqueue(url, "{}", NULL, 3, false);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/refused-literal", port);
    tg_webhook_enqueue(url, "{}", NULL, 3, false);
    snprintf(url, sizeof url, "http://2130706433:%d/refused-decimal", port); /* 127.0.0.1 */
    tg_webhook_enqueue(url, "{}", NULL, 3, false);
    snprintf(url, sizeof url, "http://localhost:%d/allowed", port);
    tg_webhook_enqueue(url, "{\"ok\":1}", "s3cret-hook", 0, true);
    for (int i = 0; i < 300 && atomic_load(&r.n) == 0; i++)
        usleep(50000);
    usleep(200000); /* anything refused wrongly would have arrived before /allowed anyway */
    tg_webhook_stop();
    event_base_loopbreak(r.base);
    pthread_join(r.thread, NULL);
    evhttp_free(r.http);
    event_base_free(r.base);
    assert_int_equal(atomic_load(&r.n), 1);
    assert_string_equal(r.paths, "/allowed ");
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redact_table),
        cmocka_unit_test(test_log_lines_redacted),
        cmocka_unit_test(test_addr_policy),
        cmocka_unit_test(test_callback_url_check),
        cmocka_unit_test(test_sender_refuses_at_connect),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
