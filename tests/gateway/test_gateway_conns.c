/* Connection handling on both sides of the proxy, as the hot-path shortcuts rely on it
 * (gateway/conn.c, gateway/http.c, gateway/upstream/upstream.c):
 *   - pooled upstream connections stay registered with libevent while idle; when the provider
 *     restarts, those sockets die idle, and the next requests must reconnect and succeed;
 *   - client sockets are closed by their bufferevent (after libevent dropped their events) and
 *     replies are written before evhttp's callback runs: many back-to-back Connection: close
 *     requests (descriptor numbers reused at once) must all be answered, pipelined keep-alive
 *     requests too, and the descriptors must be released afterwards.
 * The real tiergate binary and the fake upstream (gw_testenv). */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw_testenv.h"

#ifndef TG_FAKE_UPSTREAM
#define TG_FAKE_UPSTREAM TG_BINARY_DIR "/tests/tg-fake-upstream"
#endif

static const char CHAT[] = "{\"model\":\"gpt-fake\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";

static void remote_ok(struct gw_env *e, const char *what, int i)
{
    struct tg_test_response r;
    assert_int_equal(gw_post(e, "/v1/chat/completions", CHAT, NULL, &r), 0);
    char tier[32] = "";
    tg_test_header(&r, "x-tiergate-tier", tier, sizeof tier);
    if (r.status != 200 || strcmp(tier, "remote") != 0)
        fail_msg("%s, request %d: status %ld, tier '%s': %.300s", what, i, r.status, tier,
                 r.body != NULL ? r.body : "");
    tg_test_response_free(&r);
}

static void no_libevent_errors(struct gw_env *e)
{
    char *log = tg_test_read_log(e->log_path);
    const char *hit = strstr(log, "libevent:");
    if (hit != NULL)
        fail_msg("libevent complained: %.200s", hit);
    free(log);
}

static void test_upstream_restart(void **state)
{
    (void)state;
    struct gw_env e;
    assert_true(gw_env_start(&e, NULL, NULL, NULL));
    for (int i = 0; i < 5; i++)
        remote_ok(&e, "before the restart", i);
    /* The provider goes away and comes back on the same port: every pooled connection was closed
     * by the other end while idle in tiergate's pool. */
    assert_int_equal(tg_test_stop(e.fake_pid, SIGTERM, 5000), 0);
    e.fake_pid = 0;
    char fport[16];
    snprintf(fport, sizeof fport, "%d", e.fake_port);
    char *fargv[] = {TG_FAKE_UPSTREAM, "--port", fport, NULL};
    e.fake_pid = tg_test_spawn(fargv, NULL, e.fake_log_path);
    assert_true(e.fake_pid > 0);
    assert_true(tg_test_wait_port(e.fake_port, 10000));
    for (int i = 0; i < 10; i++)
        remote_ok(&e, "after the restart", i);
    no_libevent_errors(&e);
    gw_env_stop(&e);
}

/* One raw HTTP/1.1 exchange on a fresh connection with Connection: close; the status code. */
static int close_exchange(int port, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Authorization: Bearer secret\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     strlen(body), body);
    int status = -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0 && send(fd, req, (size_t)n, 0) == n) {
        char buf[4096];
        size_t got = 0;
        ssize_t k;
        while (got < sizeof buf - 1 && (k = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0)
            got += (size_t)k;
        buf[got] = '\0';
        if (got >= 12 && strncmp(buf, "HTTP/1.1 ", 9) == 0)
            status = (int)strtol(buf + 9, NULL, 10);
    }
    close(fd);
    return status;
}

static int open_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    int n = 0;
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static void test_back_to_back_close(void **state)
{
    (void)state;
    struct gw_env e;
    assert_true(gw_env_start(&e, NULL, NULL, NULL));
    remote_ok(&e, "warm-up", 0);
    int base = open_fds(e.gw_pid);
    assert_true(base > 0);
    /* Each closed socket's number is handed to the next connection at once. */
    for (int i = 0; i < 200; i++) {
        int st = close_exchange(e.port, CHAT);
        if (st != 200)
            fail_msg("Connection: close request %d: status %d", i, st);
    }
    /* Finished connections are released soon (not only by the once-a-second deadline sweep):
     * bounded wait, generous for a loaded machine. */
    int now = -1;
    for (int waited = 0; waited < 5000; waited += 50) {
        now = open_fds(e.gw_pid);
        if (now <= base + 2)
            break;
        usleep(50000);
    }
    if (now > base + 2)
        fail_msg("descriptors not released: %d open, %d before", now, base);
    no_libevent_errors(&e);
    gw_env_stop(&e);
}

static void test_pipelined_keepalive(void **state)
{
    (void)state;
    struct gw_env e;
    assert_true(gw_env_start(&e, NULL, NULL, NULL));
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)e.port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char one[1024];
    int n = snprintf(one, sizeof one,
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Authorization: Bearer secret\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     strlen(CHAT), CHAT);
    enum { N = 5 };
    char all[N * sizeof one];
    for (int i = 0; i < N; i++)
        memcpy(all + (size_t)i * (size_t)n, one, (size_t)n);
    assert_int_equal(send(fd, all, (size_t)n * N, 0), n * N);
    char buf[65536];
    size_t got = 0;
    int answers = 0;
    while (answers < N && got < sizeof buf - 1) {
        ssize_t k = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (k <= 0)
            break;
        got += (size_t)k;
        buf[got] = '\0';
        answers = 0;
        for (const char *p = buf; (p = strstr(p, "HTTP/1.1 200 OK")) != NULL; p++)
            answers++;
    }
    close(fd);
    if (answers != N)
        fail_msg("%d pipelined requests, %d answers", N, answers);
    gw_env_stop(&e);
}

/* A connection stays tracked while evhttp writes a reply (evhttp clears the bufferevent's read
 * callback for as long as a long SSE stream is being written): afterwards a request that stops
 * halfway on the same keep-alive connection is still dropped at header_timeout_ms (1 s here). */
static void test_slowloris_after_stream(void **state)
{
    (void)state;
    struct gw_env e;
    assert_true(gw_env_start(&e, NULL, NULL, NULL));
    char url[128];
    snprintf(url, sizeof url, "%s/_script", e.fake_base);
    struct tg_test_response sr;
    assert_int_equal(tg_test_http("POST", url, NULL, "chunk_delay_ms=400;chunks=6", &sr), 0);
    assert_int_equal(sr.status, 200);
    tg_test_response_free(&sr);

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)e.port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    static const char body[] = "{\"model\":\"gpt-fake\",\"stream\":true,"
                               "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "Authorization: Bearer secret\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     strlen(body), body);
    assert_int_equal(send(fd, req, (size_t)n, 0), n);
    char buf[65536];
    size_t got = 0;
    while (got < sizeof buf - 1) { /* the whole stream: [DONE], then the last chunk */
        ssize_t k = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (k <= 0)
            break;
        got += (size_t)k;
        buf[got] = '\0';
        if (strstr(buf, "data: [DONE]") != NULL && got >= 5 &&
            strcmp(buf + got - 5, "0\r\n\r\n") == 0)
            break;
    }
    if (strstr(buf, "data: [DONE]") == NULL)
        fail_msg("stream did not complete: %.300s", buf);

    /* Let the sweep see the stream's last bytes acknowledged first: bytes that arrive in the same
     * sweep period as the end of a reply count as answered (conn.c's marks), like idle keep-alive. */
    usleep(600 * 1000);
    static const char half[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    assert_int_equal(send(fd, half, sizeof half - 1, 0), (ssize_t)(sizeof half - 1));
    char c;
    ssize_t k = recv(fd, &c, 1, 0); /* EOF once the sweep drops it; -1 after 10 s if it never does */
    if (k < 0)
        fail_msg("a half request after a stream was not dropped within 10 s: %s", strerror(errno));
    close(fd);
    assert_true(gw_log_wait(&e, "dropping a connection whose request did not arrive", 5000));
    gw_env_stop(&e);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_upstream_restart),
                                       cmocka_unit_test(test_back_to_back_close),
                                       cmocka_unit_test(test_pipelined_keepalive),
                                       cmocka_unit_test(test_slowloris_after_stream)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
