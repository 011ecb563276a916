/* server.busy_poll_us and server.busy_poll_upstream_us: the I/O threads' busy-polling loop
 * (gateway/server.c worker_loop) on the real tiergate binary, with the fake upstream and the tiny
 * local model. Each scenario runs twice: with busy_poll_us 200 (and the upstream window off), and
 * with only the upstream window (its default value is checked in test_config).
 *
 *   - the banner says the windows; remote non-stream and stream requests, sequential and from
 *     several client threads at once (both I/O threads spinning and blocking in turn), and a
 *     local request (engine events handed to the I/O thread from another thread) are served;
 *   - once idle, the I/O threads block again: within a bounded wait every tg-io-* thread is seen
 *     sleeping at the same moment (a loop that never stops spinning stays runnable);
 *   - the same while a request waits 3 s for a provider that answered the earlier ones at once:
 *     the upstream window is bounded from the last event, it does not spin for the whole wait;
 *   - SIGTERM with a remote stream in flight drains as with plain event_base_dispatch: the stream
 *     ends with [DONE], the process exits 0, with a clean log. */
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "gw_testenv.h"

#define WAIT_MS 30000
#define POLL_US 200
#define N_CLIENTS 6
#define PER_CLIENT 8

#define CHAT_BODY(model, stream) \
    "{\"model\":\"" model "\",\"stream\":" stream ",\"max_tokens\":8," \
    "\"messages\":[{\"role\":\"user\",\"content\":\"busy poll probe\"}]}"

/* Constant request bodies: the client threads share them read-only. */
static const char *body_for(bool stream, const char *model)
{
    if (strcmp(model, "gpt-fake") == 0)
        return stream ? CHAT_BODY("gpt-fake", "true") : CHAT_BODY("gpt-fake", "false");
    return CHAT_BODY("phi-3.5-mini", "false");
}

/* One remote request through the gateway; true when it was answered completely. */
static bool remote_ok(struct gw_env *e, bool stream)
{
    struct tg_test_response r;
    bool ok = gw_post(e, "/v1/chat/completions", body_for(stream, "gpt-fake"), NULL, &r) == 0 &&
              r.status == 200 &&
              strstr(r.body, stream ? "data: [DONE]" : "\"choices\"") != NULL;
    char tier[32] = "";
    tg_test_header(&r, "x-tiergate-tier", tier, sizeof tier);
    ok = ok && strcmp(tier, "remote") == 0;
    if (!ok)
        print_error("remote %s request: HTTP %ld tier '%s' body %.300s\n",
                    stream ? "stream" : "non-stream", r.status, tier, r.body ? r.body : "");
    tg_test_response_free(&r);
    return ok;
}

struct client {
    struct gw_env *e;
    int index;
    pthread_t th;
    int ok;
};

static void *client_main(void *arg)
{
    struct client *c = arg;
    for (int i = 0; i < PER_CLIENT; i++)
        c->ok += remote_ok(c->e, (c->index + i) % 2 == 0);
    return NULL;
}

/* First line of a /proc file (their size reads as 0, so no slurp) into buf; false if unreadable. */
static bool proc_line(const char *path, char *buf, size_t n)
{
    FILE *f = fopen(path, "r");
    bool ok = f != NULL && fgets(buf, (int)n, f) != NULL;
    if (f != NULL)
        fclose(f);
    return ok;
}

/* Scheduler state ('R' runnable, 'S' sleeping, ...) of each of pid's threads named tg-io-*;
 * returns how many there are (at most n). */
static int io_thread_states(pid_t pid, char *states, int n)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    DIR *d = opendir(dir);
    if (d == NULL)
        return 0;
    int found = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && found < n) {
        if (de->d_name[0] == '.')
            continue;
        char path[384];
        snprintf(path, sizeof path, "%s/%s/comm", dir, de->d_name);
        char line[512];
        if (!proc_line(path, line, sizeof line) || strncmp(line, "tg-io-", 6) != 0)
            continue;
        snprintf(path, sizeof path, "%s/%s/stat", dir, de->d_name);
        const char *paren = proc_line(path, line, sizeof line) ? strrchr(line, ')') : NULL;
        if (paren != NULL && paren[1] == ' ')
            states[found++] = paren[2];
    }
    closedir(d);
    return found;
}

struct bg_stream {
    struct gw_env *e;
    pthread_t th;
    atomic_bool started;
    struct tg_test_response r;
    int rc;
};

static void on_first_chunk(void *user)
{
    atomic_store(&((struct bg_stream *)user)->started, true);
}

static void *bg_stream_main(void *arg)
{
    struct bg_stream *b = arg;
    char url[128];
    snprintf(url, sizeof url, "%s/v1/chat/completions", b->e->base);
    const char *h[] = {b->e->auth_header, "Content-Type: application/json", NULL};
    b->rc = tg_test_http_watch("POST", url, h, body_for(true, "gpt-fake"), "data: {",
                               on_first_chunk, b, &b->r);
    return NULL;
}

/* Within max_ms, every tg-io-* thread of the gateway is seen sleeping at the same moment.
 * Sampled every 10 ms until seen (the sweep timer wakes each thread a few times a second). */
static bool all_io_sleeping(pid_t pid, int max_ms)
{
    char st[8];
    int n_io = 0;
    for (int i = 0; i < max_ms / 10; i++) {
        n_io = io_thread_states(pid, st, (int)sizeof st);
        bool all = n_io == 2;
        for (int k = 0; k < n_io; k++)
            all = all && st[k] == 'S';
        if (all)
            return true;
        usleep(10000);
    }
    print_error("I/O threads found: %d; states: %.*s\n", n_io, n_io, st);
    return false;
}

struct bg_request {
    struct gw_env *e;
    pthread_t th;
    bool ok;
};

static void *bg_request_main(void *arg)
{
    struct bg_request *b = arg;
    b->ok = remote_ok(b->e, false);
    return NULL;
}

static void run_scenario(const char *server, const char *banner)
{
    struct gw_env e;
    struct gw_env_opts o = {.extra_server = server,
                            .extra_local = "  slots: 2\n  context: 4096\n  threads: 1\n"};
    assert_true(gw_env_start_opts(&e, &o));
    printf("gateway log: %s\n", e.log_path);
    assert_true(gw_log_wait(&e, banner, WAIT_MS));

    /* sequential: each request alone, the reply picked up while the thread still polls */
    for (int i = 0; i < 10; i++)
        assert_true(remote_ok(&e, i % 2 == 1));

    /* several clients at once over both I/O threads */
    struct client cl[N_CLIENTS];
    for (int i = 0; i < N_CLIENTS; i++) {
        cl[i] = (struct client){.e = &e, .index = i};
        assert_int_equal(pthread_create(&cl[i].th, NULL, client_main, &cl[i]), 0);
    }
    for (int i = 0; i < N_CLIENTS; i++) {
        assert_int_equal(pthread_join(cl[i].th, NULL), 0);
        assert_int_equal(cl[i].ok, PER_CLIENT);
    }

    /* local tier: the engine's events reach the I/O thread from the engine's own thread */
    struct tg_test_response r;
    const char *local = body_for(false, "phi-3.5-mini");
    assert_int_equal(gw_post(&e, "/v1/chat/completions", local, NULL, &r), 0);
    char tier[32] = "";
    tg_test_header(&r, "x-tiergate-tier", tier, sizeof tier);
    if (r.status != 200)
        print_error("local: HTTP %ld %.300s\n", r.status, r.body);
    assert_int_equal(r.status, 200);
    assert_string_equal(tier, "local");
    tg_test_response_free(&r);

    /* idle: the spin ends and both I/O threads block in epoll_wait */
    assert_true(all_io_sleeping(e.gw_pid, 10000));

    /* a request waiting for a slow answer from a provider that was fast so far: the threads
     * still sleep (the upstream window ends a bounded time after the last event) */
    char url[128];
    snprintf(url, sizeof url, "%s/_script", e.fake_base);
    assert_int_equal(tg_test_http("POST", url, NULL, "delay_ms=3000", &r), 0);
    assert_int_equal(r.status / 100, 2);
    tg_test_response_free(&r);
    int before = gw_fake_received(&e);
    assert_true(before >= 0);
    struct bg_request slow = {.e = &e};
    assert_int_equal(pthread_create(&slow.th, NULL, bg_request_main, &slow), 0);
    for (int i = 0; i < WAIT_MS / 10 && gw_fake_received(&e) == before; i++)
        usleep(10000);
    assert_true(gw_fake_received(&e) > before); /* in flight: the fake holds it for 3 s */
    assert_true(all_io_sleeping(e.gw_pid, 2000)); /* seen before the answer */
    assert_int_equal(pthread_join(slow.th, NULL), 0);
    assert_true(slow.ok);

    /* SIGTERM while a slow stream is in flight: the drain lets it finish. */
    assert_int_equal(tg_test_http("POST", url, NULL, "chunk_delay_ms=150", &r), 0);
    assert_int_equal(r.status / 100, 2);
    tg_test_response_free(&r);
    struct bg_stream bg = {.e = &e};
    assert_int_equal(pthread_create(&bg.th, NULL, bg_stream_main, &bg), 0);
    for (int i = 0; i < WAIT_MS / 10 && !atomic_load(&bg.started); i++)
        usleep(10000);
    assert_true(atomic_load(&bg.started));
    assert_int_equal(kill(e.gw_pid, SIGTERM), 0);
    assert_int_equal(pthread_join(bg.th, NULL), 0);
    assert_int_equal(bg.rc, 0);
    assert_int_equal(bg.r.status, 200);
    assert_non_null(strstr(bg.r.body, "data: [DONE]"));
    assert_null(strstr(bg.r.body, "shutting_down"));
    tg_test_response_free(&bg.r);
    /* bounded wait for the exit (tg_test_stop SIGKILLs after it: then not WIFEXITED) */
    int status = tg_test_stop(e.gw_pid, 0, WAIT_MS);
    e.gw_pid = 0;
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    char *log = tg_test_read_log(e.log_path);
    const char *want[] = {"SIGTERM received", "drained: no request in flight", "tiergate stopped"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (strstr(log, want[i]) == NULL)
            fail_msg("gateway log lacks '%s'", want[i]);
    const char *bad[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (strstr(log, bad[i]) != NULL)
            fail_msg("%s: %.2000s", e.log_path, strstr(log, bad[i]));
    free(log);
    gw_env_stop(&e);
}

static void test_busy_poll_serves_and_drains(void **state)
{
    (void)state;
    char server[96], banner[96];
    snprintf(server, sizeof server, "  busy_poll_us: %d\n  busy_poll_upstream_us: 0\n", POLL_US);
    snprintf(banner, sizeof banner, "(2 I/O threads, busy-polling %d µs)", POLL_US);
    run_scenario(server, banner);
}

/* Only the upstream window, 10 ms: the fake's first-byte times here (0.1-0.7 ms, more under a
 * sanitizer) are well within it, so the threads do spin while a reply is due, and the slow
 * request's 3 s wait shows that the spin stops 10 ms after the last event. */
static void test_busy_poll_upstream(void **state)
{
    (void)state;
    run_scenario("  busy_poll_upstream_us: 10000\n",
                 "(2 I/O threads, busy-polling for upstream replies 10000 µs)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_busy_poll_serves_and_drains),
        cmocka_unit_test(test_busy_poll_upstream),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
