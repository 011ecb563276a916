/* server.busy_poll_us: the I/O threads' adaptive busy-polling loop (gateway/server.c worker_loop)
 * on the real tiergate binary, with the fake upstream and the tiny local model.
 *
 *   - the banner says the window; remote non-stream and stream requests, sequential and from
 *     several client threads at once (both I/O threads spinning and blocking in turn), and a
 *     local request (engine events handed to the I/O thread from another thread) are served;
 *   - once idle, the I/O threads block again: within a bounded wait every tg-io-* thread is seen
 *     sleeping at the same moment (a loop that never stops spinning stays runnable);
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

static void test_busy_poll_serves_and_drains(void **state)
{
    (void)state;
    struct gw_env e;
    char server[64];
    snprintf(server, sizeof server, "  busy_poll_us: %d\n", POLL_US);
    struct gw_env_opts o = {.extra_server = server,
                            .extra_local = "  slots: 2\n  context: 4096\n  threads: 1\n"};
    assert_true(gw_env_start_opts(&e, &o));
    printf("gateway log: %s\n", e.log_path);
    char banner[64];
    snprintf(banner, sizeof banner, "(2 I/O threads, busy-polling %d µs)", POLL_US);
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

    /* idle: the spin ends and both I/O threads block in epoll_wait. Sampled until seen (the
     * sweep timer wakes each thread a few times a second, for one window each). */
    char st[8];
    bool all_sleeping = false;
    int n_io = 0;
    for (int i = 0; i < 1000 && !all_sleeping; i++) {
        n_io = io_thread_states(e.gw_pid, st, (int)sizeof st);
        all_sleeping = n_io == 2;
        for (int k = 0; k < n_io; k++)
            all_sleeping = all_sleeping && st[k] == 'S';
        if (!all_sleeping)
            usleep(10000);
    }
    if (!all_sleeping)
        print_error("I/O threads found: %d; states: %.*s\n", n_io, n_io, st);
    assert_true(all_sleeping);

    /* SIGTERM while a slow stream is in flight: the drain lets it finish. */
    char url[128];
    snprintf(url, sizeof url, "%s/_script", e.fake_base);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_busy_poll_serves_and_drains),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
