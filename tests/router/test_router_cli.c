/* `tiergate route --explain`: run the command in-process with stdout/stderr captured. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "cli_route.h"

#define BALANCED TG_SOURCE_DIR "/policies/balanced.yaml"

struct captured {
    int rc;
    char out[1 << 16];
    char err[4096];
};

static void slurp(const char *path, char *dst, size_t cap)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(dst, 1, cap - 1, f);
    dst[n] = '\0';
    fclose(f);
}

/* Run tg_cli_route(argv) with fd 1 and 2 sent to temporary files. */
static void run(struct captured *c, int argc, char **argv)
{
    char out_path[] = "/tmp/tg-route-out-XXXXXX", err_path[] = "/tmp/tg-route-err-XXXXXX";
    int ofd = mkstemp(out_path), efd = mkstemp(err_path);
    assert_true(ofd != -1 && efd != -1);
    fflush(stdout);
    fflush(stderr);
    int saved_out = dup(1), saved_err = dup(2);
    assert_true(saved_out != -1 && saved_err != -1);
    assert_true(dup2(ofd, 1) != -1 && dup2(efd, 2) != -1);
    c->rc = tg_cli_route(argc, argv);
    fflush(stdout);
    fflush(stderr);
    assert_true(dup2(saved_out, 1) != -1 && dup2(saved_err, 2) != -1);
    close(saved_out);
    close(saved_err);
    close(ofd);
    close(efd);
    slurp(out_path, c->out, sizeof c->out);
    slurp(err_path, c->err, sizeof c->err);
    unlink(out_path);
    unlink(err_path);
}

/* The n-th output line as JSON (new reference). */
static json_t *line_json(const char *out, int n)
{
    const char *p = out;
    for (int i = 0; i < n && p != NULL; i++) {
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    if (p == NULL || *p == '\0')
        return NULL;
    const char *e = strchr(p, '\n');
    size_t len = e != NULL ? (size_t)(e - p) : strlen(p);
    return json_loadb(p, len, 0, NULL);
}

static const char *tier_of(json_t *ex)
{
    return json_string_value(json_object_get(json_object_get(ex, "decision"), "tier"));
}

static void test_prompt_args(void **state)
{
    (void)state;
    static struct captured c;
    char *argv[] = {"route",  "--explain", "--policy", BALANCED, "--remote-target",
                    "gpt-4o", "Write",     "a",        "poem",   "about",
                    "the",    "sea"};
    run(&c, 12, argv);
    assert_int_equal(c.rc, 0);
    json_t *ex = line_json(c.out, 0);
    assert_non_null(ex);
    assert_string_equal(tier_of(ex), "remote");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(ex, "decision"), "target")), "gpt-4o");
    assert_string_equal(json_string_value(json_object_get(json_object_get(ex, "features"), "kind")),
                        "creative");
    assert_non_null(json_object_get(ex, "rules_fired"));
    assert_non_null(json_object_get(ex, "score"));
    json_decref(ex);

    /* key facts from flags: the privacy flag keeps it local */
    char *argv2[] = {"route", "--explain", "--policy", BALANCED, "--privacy", "Write a poem"};
    run(&c, 6, argv2);
    assert_int_equal(c.rc, 0);
    ex = line_json(c.out, 0);
    assert_non_null(ex);
    assert_string_equal(tier_of(ex), "local");
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(ex, "decision"), "reason")),
        "force_local.key_privacy");
    json_decref(ex);

    /* without --explain: one tab-separated line */
    char *argv3[] = {"route", "--policy", BALANCED, "Classify as spam or ham: \"WIN NOW\""};
    run(&c, 4, argv3);
    assert_int_equal(c.rc, 0);
    assert_true(strncmp(c.out, "local\tkind.classify\t", 20) == 0);
}

static void test_jsonl(void **state)
{
    (void)state;
    char path[] = "/tmp/tg-route-jsonl-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd != -1);
    const char *rows =
        "{\"id\":\"a\",\"messages\":[{\"role\":\"user\",\"content\":\"Extract the order number "
        "from: order #A-123 shipped\"}],\"label\":\"local\"}\n"
        "\n"
        "{\"id\":\"b\",\"messages\":[{\"role\":\"user\",\"content\":\"Who was the first emperor "
        "of the Han dynasty?\"}]}\n"
        "{not json\n"
        "{\"id\":\"d\",\"model\":\"x\"}\n"
        "{\"prompt\":\"Prove that there are infinitely many primes.\"}\n";
    assert_int_equal(write(fd, rows, strlen(rows)), (ssize_t)strlen(rows));
    assert_int_equal(close(fd), 0);

    static struct captured c;
    char *argv[] = {"route", "--explain", "--policy", BALANCED, "--jsonl", path};
    run(&c, 6, argv);
    /* bad lines are reported with file:line and make the exit status 1; good ones print */
    assert_int_equal(c.rc, 1);
    char want[128];
    snprintf(want, sizeof want, "%s:4: invalid JSON", path);
    assert_non_null(strstr(c.err, want));
    snprintf(want, sizeof want, "%s:5: request has no messages", path);
    assert_non_null(strstr(c.err, want));
    static const struct {
        const char *id, *tier;
    } WANT[] = {{"a", "local"}, {"b", "remote"}, {NULL, "remote"}};
    for (int i = 0; i < 3; i++) {
        json_t *ex = line_json(c.out, i);
        assert_non_null(ex);
        if (WANT[i].id != NULL)
            assert_string_equal(json_string_value(json_object_get(ex, "id")), WANT[i].id);
        else
            assert_null(json_object_get(ex, "id"));
        assert_string_equal(tier_of(ex), WANT[i].tier);
        json_decref(ex);
    }
    assert_null(line_json(c.out, 3));
    unlink(path);
}

static void test_errors(void **state)
{
    (void)state;
    static struct captured c;
    char *argv[] = {"route", "--explain", "--policy", "/nonexistent/policy.yaml", "hi"};
    run(&c, 5, argv);
    assert_int_equal(c.rc, 2);
    assert_non_null(strstr(c.err, "/nonexistent/policy.yaml: cannot open"));

    char *argv2[] = {"route", "--explain", "--bogus"};
    run(&c, 3, argv2);
    assert_int_equal(c.rc, 2);
    assert_non_null(strstr(c.err, "unknown or incomplete option '--bogus'"));

    char *argv3[] = {"route", "--explain", "--tier", "middle", "hi"};
    run(&c, 5, argv3);
    assert_int_equal(c.rc, 2);

    char *argv4[] = {"route", "--explain", "--jsonl", "x.jsonl", "and a prompt"};
    run(&c, 5, argv4);
    assert_int_equal(c.rc, 2);

    char *argv5[] = {"route", "--explain", "--policy", BALANCED, "--jsonl", "/nonexistent.jsonl"};
    run(&c, 6, argv5);
    assert_int_equal(c.rc, 2);
}

/* Last: the prompt from stdin (stdin is replaced for the rest of the process). */
static void test_stdin(void **state)
{
    (void)state;
    char path[] = "/tmp/tg-route-stdin-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd != -1);
    const char *prompt = "Translate to English: «Il tecnico passerà giovedì mattina.»\n";
    assert_int_equal(write(fd, prompt, strlen(prompt)), (ssize_t)strlen(prompt));
    assert_int_equal(close(fd), 0);
    assert_non_null(freopen(path, "r", stdin));
    static struct captured c;
    char *argv[] = {"route", "--explain", "--policy", BALANCED};
    run(&c, 4, argv);
    assert_int_equal(c.rc, 0);
    json_t *ex = line_json(c.out, 0);
    assert_non_null(ex);
    assert_string_equal(tier_of(ex), "local");
    assert_string_equal(json_string_value(json_object_get(json_object_get(ex, "features"), "kind")),
                        "translate");
    json_decref(ex);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prompt_args),
        cmocka_unit_test(test_jsonl),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_stdin),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
