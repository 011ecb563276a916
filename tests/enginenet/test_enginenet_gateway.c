/* End to end: the real `tiergate` gateway whose local tier is two `tiergate engine` worker
 * processes over ipc:// (config `local.workers`), on the tiny generated model.
 *   - w1 is not running yet: requests are served by w0;
 *   - SIGKILL w0 in the middle of a streamed chat completion: that stream ends with an error
 *     event naming the worker, the gateway stays up, and with no live worker a new request
 *     gets a clear 503;
 *   - start w1: the gateway picks it up and serves again; SIGTERM stops everything with exit 0.
 * Every wait is bounded; nothing asserts on time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <curl/curl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tg_testlib.h"

#define WAIT_MS 120000

static pid_t spawn_worker(const char *url, const char *log)
{
    char *argv[] = {(char *)TG_TIERGATE_BIN, "engine", "--listen", (char *)url,
                    "--model", (char *)TG_TINY_MODEL, "--slots", "2",
                    "--ctx", "16384", "--threads", "1",
                    NULL};
    pid_t pid = tg_test_spawn(argv, NULL, log);
    assert_true(pid > 0);
    return pid;
}

struct stream {
    char buf[1 << 20];
    size_t len;
    pid_t kill_pid; /* SIGKILLed when the first token arrives */
    bool killed;
};

static size_t on_data(char *p, size_t sz, size_t n, void *user)
{
    struct stream *s = user;
    size_t len = sz * n;
    size_t room = sizeof(s->buf) - 1 - s->len;
    memcpy(s->buf + s->len, p, len < room ? len : room);
    s->len += len < room ? len : room;
    s->buf[s->len] = '\0';
    /* A content delta with text in it: the engine is mid-job. */
    if (!s->killed && strstr(s->buf, "\"delta\":{\"content\":\"") != NULL) {
        kill(s->kill_pid, SIGKILL);
        s->killed = true;
    }
    return len;
}

static long post_chat(int port, const char *body, struct stream *s)
{
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/chat/completions", port);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)WAIT_MS);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

static const char *short_req =
    "{\"model\":\"phi-3.5-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
    "\"max_tokens\":4}";

static void test_gateway_with_ipc_workers(void **state)
{
    (void)state;
    char dir[] = "/tmp/tg-enginenet-gw-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char url[2][160], wlog[2][200], gwlog[200], cfg_path[200];
    for (int i = 0; i < 2; i++) {
        snprintf(url[i], sizeof(url[i]), "ipc://%s/w%d.sock", dir, i);
        snprintf(wlog[i], sizeof(wlog[i]), "%s/w%d.log", dir, i);
    }
    snprintf(gwlog, sizeof(gwlog), "%s/gw.log", dir);
    snprintf(cfg_path, sizeof(cfg_path), "%s/routes.yaml", dir);
    int port = tg_test_free_port();
    FILE *f = fopen(cfg_path, "w");
    assert_non_null(f);
    fprintf(f,
            "server:\n  listen: 127.0.0.1:%d\n  io_threads: 1\n  open_mode: true\n"
            "redis:\n  enabled: false\n"
            "local:\n  workers: [%s, %s]\n  price_per_mtok_usd: 0.02\n"
            "models:\n  - {name: phi-3.5-mini, tier: local, target: engine}\n"
            "cache:\n  enabled: false\n",
            port, url[0], url[1]);
    assert_int_equal(fclose(f), 0);

    pid_t w0 = spawn_worker(url[0], wlog[0]);
    char *gargv[] = {(char *)TG_TIERGATE_BIN, "--config", cfg_path, NULL};
    pid_t gw = tg_test_spawn(gargv, NULL, gwlog);
    assert_true(gw > 0);
    assert_true(tg_test_wait_port(port, WAIT_MS));

    /* Served by w0 (w1 is not up). */
    long status = 0;
    for (int i = 0; i < 600 && status != 200; i++) {
        struct stream *s = calloc(1, sizeof(*s));
        status = post_chat(port, short_req, s);
        free(s);
        if (status != 200)
            usleep(100 * 1000);
    }
    assert_int_equal(status, 200);

    /* SIGKILL w0 mid-stream: the stream ends with an error naming it; the gateway lives. */
    struct stream *s = calloc(1, sizeof(*s));
    s->kill_pid = w0;
    status = post_chat(port,
                       "{\"model\":\"phi-3.5-mini\",\"stream\":true,\"max_tokens\":15000,"
                       "\"messages\":[{\"role\":\"user\",\"content\":\"a long story\"}]}",
                       s);
    assert_int_equal(status, 200);
    assert_true(s->killed);
    assert_int_equal(waitpid(w0, NULL, 0), w0);
    if (strstr(s->buf, "\"error\"") == NULL || strstr(s->buf, url[0]) == NULL)
        fail_msg("stream did not end with an error naming the worker: ...%s",
                 s->len > 600 ? s->buf + s->len - 600 : s->buf);
    free(s);
    assert_int_equal(kill(gw, 0), 0);

    /* No live worker: a clear 503, not a hang or a crash. */
    s = calloc(1, sizeof(*s));
    status = post_chat(port, short_req, s);
    assert_int_equal(status, 503);
    free(s);

    /* w1 comes up: new jobs go to it. */
    pid_t w1 = spawn_worker(url[1], wlog[1]);
    status = 0;
    for (int i = 0; i < 600 && status != 200; i++) {
        s = calloc(1, sizeof(*s));
        status = post_chat(port, short_req, s);
        free(s);
        if (status != 200)
            usleep(100 * 1000);
    }
    assert_int_equal(status, 200);

    int st = tg_test_stop(gw, SIGTERM, WAIT_MS);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    st = tg_test_stop(w1, SIGTERM, WAIT_MS);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);

    const char *files[] = {"w0.sock", "w1.sock", "w0.log", "w1.log", "gw.log", "routes.yaml"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char p[256];
        snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gateway_with_ipc_workers),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
