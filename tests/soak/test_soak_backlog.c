/* A backlogged I/O thread is not a slowloris client. tiergate runs with a 1 s header timeout;
 * 2,000 idle keep-alive connections are open; tiergate is stopped (SIGSTOP), a complete
 * GET /healthz is written on every connection, and 1.5 s later it continues (SIGCONT). Its I/O
 * threads then find 2,000 readable sockets and an expired sweep at once; every request must be
 * answered 200, none dropped as "did not arrive within 1000 ms". Before gateway/conn.c checked
 * for unread bytes (FIONREAD) this lost most of them: the sweep judged by the kernel's received
 * byte count and ran before evhttp had read the requests (epoll hands them over a few at a
 * time). Found by test_soak_conns at load 10 with 10,000 connections. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "soak_util.h"
#include "tg_testlib.h"

#define N_CONNS 2000

static struct soak_gw g_gw;

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (soak_raise_nofile(N_CONNS + 256) < N_CONNS + 256) {
        fprintf(stderr, "RLIMIT_NOFILE too low for %d connections (ulimit -Hn)\n", N_CONNS);
        return -1;
    }
    return soak_gw_start(&g_gw, 0, 1000) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    if (g_gw.gw_pid > 0)
        kill(g_gw.gw_pid, SIGCONT); /* a failed assertion may have left it stopped */
    soak_gw_stop(&g_gw);
    return 0;
}

/* Read one response's status from fd (bounded); 0 on EOF, reset or timeout. */
static int read_status(int fd, int timeout_ms)
{
    char buf[512];
    size_t got = 0;
    double end = soak_now_s() + timeout_ms / 1000.0;
    while (got < 12) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int left = (int)((end - soak_now_s()) * 1000);
        if (left <= 0 || poll(&p, 1, left) != 1)
            return 0;
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (n <= 0)
            return 0;
        got += (size_t)n;
    }
    buf[got] = '\0';
    return strncmp(buf, "HTTP/1.1 ", 9) == 0 ? (int)strtol(buf + 9, NULL, 10) : 0;
}

static void test_backlog_is_not_slowloris(void **state)
{
    (void)state;
    static int fds[N_CONNS];
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_gw.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < N_CONNS; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(fds[i] >= 0);
        if (connect(fds[i], (struct sockaddr *)&a, sizeof a) != 0) {
            fprintf(stderr, "connect %d: %s\n", i, strerror(errno));
            fail();
        }
    }
    /* let tiergate accept them all and see them idle */
    struct soak_fds f;
    for (int waited = 0; waited < 20000; waited += 100) {
        assert_true(soak_count_fds(g_gw.gw_pid, g_gw.port, 0, 0, &f));
        if (f.client >= N_CONNS)
            break;
        usleep(100000);
    }
    assert_true(f.client >= N_CONNS);
    usleep(500000);

    char req[128];
    int len = snprintf(req, sizeof req, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n",
                       g_gw.port);
    assert_int_equal(kill(g_gw.gw_pid, SIGSTOP), 0);
    for (int i = 0; i < N_CONNS; i++)
        assert_int_equal(send(fds[i], req, (size_t)len, 0), len);
    usleep(1500000); /* past the 1 s header timeout while tiergate cannot read */
    assert_int_equal(kill(g_gw.gw_pid, SIGCONT), 0);

    int ok = 0, lost = 0;
    for (int i = 0; i < N_CONNS; i++) {
        int st = read_status(fds[i], 30000);
        if (st == 200)
            ok++;
        else
            lost++;
        close(fds[i]);
    }
    char *log = tg_test_read_log(g_gw.log_path);
    int drops = 0;
    for (const char *p = log; (p = strstr(p, "dropping a connection")) != NULL; p++)
        drops++;
    free(log);
    printf("soak-backlog: %d of %d answered 200, %d lost, %d dropped by the header sweep\n", ok,
           N_CONNS, lost, drops);
    assert_int_equal(drops, 0);
    assert_int_equal(ok, N_CONNS);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backlog_is_not_slowloris),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
