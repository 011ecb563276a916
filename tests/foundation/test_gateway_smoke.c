/* The real tiergate binary: starts on a config, answers /healthz and /readyz, `check` validates
 * (file:line on a broken copy), SIGHUP with a broken file keeps the old snapshot, SIGTERM exits 0. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tg_testlib.h"

#define TIERGATE TG_BINARY_DIR "/gateway/tiergate"

static void write_config(const char *path, int port, const char *extra)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "server:\n  listen: 127.0.0.1:%d\n  io_threads: 2\n  open_mode: true\n"
            "redis:\n  enabled: false\n"
            "local:\n  model: %s\n"
            "models:\n  - {name: phi-3.5-mini, tier: local, target: engine}\n%s",
            port, TG_TINY_MODEL, extra);
    fclose(f);
}

static void test_check_command(void **state)
{
    (void)state;
    char log[] = "/tmp/tg-check-XXXXXX";
    int fd = mkstemp(log);
    close(fd);
    char *ok[] = {TIERGATE, "check", TG_SOURCE_DIR "/routes.yaml", NULL};
    pid_t pid = tg_test_spawn(ok, NULL, log);
    int st = tg_test_stop(pid, 0, 20000);
    char *out = tg_test_read_log(log);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        print_error("%s\n", out);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_non_null(strstr(out, "routes.yaml: OK"));
    assert_non_null(strstr(out, "aliases:\n  auto: {local: phi-3.5-mini, remote: gpt-4o-mini}"));
    free(out);

    /* a broken copy: a typo'd key on line 3 */
    const char *bad = tg_test_write_temp("routes.yaml", "server:\n  open_mode: true\n  listen_adress: x\n");
    char *bad_argv[] = {TIERGATE, "check", (char *)bad, NULL};
    truncate(log, 0);
    pid = tg_test_spawn(bad_argv, NULL, log);
    st = tg_test_stop(pid, 0, 20000);
    out = tg_test_read_log(log);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    char want[512];
    snprintf(want, sizeof want, "%s:3: unknown key 'listen_adress' in server", bad);
    if (strstr(out, want) == NULL)
        print_error("want '%s' in:\n%s\n", want, out);
    assert_non_null(strstr(out, want));
    free(out);
    unlink(log);
}

static void test_serve_reload_drain(void **state)
{
    (void)state;
    int port = tg_test_free_port();
    const char *cfg = tg_test_write_temp("routes.yaml", "");
    write_config(cfg, port, "");
    char log[] = "/tmp/tg-smoke-XXXXXX";
    int fd = mkstemp(log);
    close(fd);
    char *argv[] = {TIERGATE, "--config", (char *)cfg, NULL};
    pid_t pid = tg_test_spawn(argv, NULL, log);
    assert_true(tg_test_wait_port(port, 60000));

    char url[128];
    struct tg_test_response r;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", port);
    assert_int_equal(tg_test_http("GET", url, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", port);
    for (int i = 0; i < 600; i++) { /* the engine may still be loading */
        assert_int_equal(tg_test_http("GET", url, NULL, NULL, &r), 0);
        if (r.status == 200)
            break;
        tg_test_response_free(&r);
        usleep(100000);
    }
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);

    /* the startup banner names the address, the tiers and their state, Redis and the dashboard */
    char *banner = tg_test_read_log(log);
    char want_listen[128];
    /* "(2 I/O threads, busy-polling ...)": the windows are test_busy_poll's concern */
    snprintf(want_listen, sizeof want_listen, "  listen     http://127.0.0.1:%d (2 I/O threads", port);
    const char *wants[] = {want_listen, "  local      ready: ", "[RANDOM WEIGHTS: free text is meaningless]",
                           "  remote     no providers configured", "  redis      disabled",
                           "/dashboard"};
    for (size_t i = 0; i < sizeof wants / sizeof wants[0]; i++) {
        if (strstr(banner, wants[i]) == NULL)
            print_error("banner lacks '%s':\n%s\n", wants[i], banner);
        assert_non_null(strstr(banner, wants[i]));
    }
    free(banner);

    /* a broken file on SIGHUP: error with file:line, old snapshot keeps serving */
    FILE *f = fopen(cfg, "w");
    fputs("server:\n  open_mode: true\n  io_threads: lots\n", f);
    fclose(f);
    kill(pid, SIGHUP);
    char want[512];
    snprintf(want, sizeof want, "%s:3: io_threads must be an integer", cfg);
    char *out = NULL;
    for (int i = 0; i < 100; i++) {
        free(out);
        out = tg_test_read_log(log);
        if (strstr(out, want) != NULL)
            break;
        usleep(50000);
    }
    if (strstr(out, want) == NULL)
        print_error("want '%s' in log:\n%s\n", want, out);
    assert_non_null(strstr(out, want));
    assert_non_null(strstr(out, "keeping the current configuration"));
    free(out);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", port);
    assert_int_equal(tg_test_http("GET", url, NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    tg_test_response_free(&r);

    /* a valid file on SIGHUP is taken */
    write_config(cfg, port, "");
    kill(pid, SIGHUP);
    out = NULL;
    for (int i = 0; i < 100; i++) {
        free(out);
        out = tg_test_read_log(log);
        if (strstr(out, "configuration reloaded") != NULL)
            break;
        usleep(50000);
    }
    assert_non_null(strstr(out, "configuration reloaded"));
    free(out);

    int st = tg_test_stop(pid, SIGTERM, 30000);
    out = tg_test_read_log(log);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        print_error("exit status %d, log:\n%s\n", st, out);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    free(out);
    unlink(log);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_command),
        cmocka_unit_test(test_serve_reload_drain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
