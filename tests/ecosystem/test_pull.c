/* `tiergate pull` against tests/ecosystem/fake_fileserver.c (a hub-shaped local server): a full
 * download through the hub's redirect, resume after a cut (next run, and within one run), a
 * server that ignores Range, SHA-256 mismatch (no final file, no .part), an already-present file,
 * bad arguments. The real binary runs as a child process; no network beyond 127.0.0.1. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "tg_testlib.h"

#define TIERGATE   TG_BINARY_DIR "/gateway/tiergate"
#define FILESERVER TG_BINARY_DIR "/tests/tg-fake-fileserver"
#define MODEL_FILE "Phi-3.5-mini-instruct-Q4_K_M.gguf"
#define FILE_BYTES (3 * 1024 * 1024 + 17)

static char g_tmp[128];
static char g_src[256];
static char g_sha[65];

static void sha256_hex(const unsigned char *p, size_t n, char out[65])
{
    unsigned char md[32];
    unsigned int len = 0;
    assert_int_equal(EVP_Digest(p, n, md, &len, EVP_sha256(), NULL), 1);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_tmp, sizeof g_tmp, "/tmp/tg-pull-XXXXXX");
    if (mkdtemp(g_tmp) == NULL)
        return -1;
    snprintf(g_src, sizeof g_src, "%s/source.gguf", g_tmp);
    unsigned char *data = malloc(FILE_BYTES);
    if (data == NULL)
        return -1;
    /* deterministic, non-repeating content so a misplaced resume changes the hash */
    uint32_t x = 2463534242u;
    for (size_t i = 0; i < FILE_BYTES; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data[i] = (unsigned char)x;
    }
    memcpy(data, "GGUF", 4);
    FILE *f = fopen(g_src, "wb");
    if (f == NULL || fwrite(data, 1, FILE_BYTES, f) != FILE_BYTES || fclose(f) != 0)
        return -1;
    sha256_hex(data, FILE_BYTES, g_sha);
    free(data);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

struct server {
    pid_t pid;
    int port;
    char base[64];
    char log[256];
};

/* extra: further fake-server arguments (NULL-terminated), may be NULL */
static void server_start(struct server *s, const char *etag, const char *const *extra)
{
    s->port = tg_test_free_port();
    snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", s->port);
    snprintf(s->log, sizeof s->log, "%s/server-%d.log", g_tmp, s->port);
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    char *argv[16] = {FILESERVER, "--port", port, "--file", g_src, "--etag", (char *)etag};
    int n = 7;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < 15; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    s->pid = tg_test_spawn(argv, NULL, s->log);
    assert_true(tg_test_wait_port(s->port, 10000));
}

static void server_stop(struct server *s)
{
    tg_test_stop(s->pid, SIGTERM, 5000);
}

/* Run `tiergate pull ...`; returns the exit code; the child's output goes to *out (malloc'd). */
static int run_pull(const char *const *args, char **out)
{
    static int seq;
    char log[256];
    snprintf(log, sizeof log, "%s/pull-%d.log", g_tmp, seq++);
    char *argv[16] = {TIERGATE, "pull"};
    int n = 2;
    for (size_t i = 0; args[i] != NULL && n < 15; i++)
        argv[n++] = (char *)args[i];
    argv[n] = NULL;
    pid_t pid = tg_test_spawn(argv, NULL, log);
    assert_true(pid > 0);
    int st = -1;
    for (int i = 0; i < 1200; i++) { /* 120 s */
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            break;
        usleep(100000);
        if (i == 1199) {
            tg_test_stop(pid, SIGKILL, 1000);
            fail_msg("tiergate pull did not finish");
        }
    }
    size_t len;
    *out = tg_test_slurp(log, &len);
    if (*out == NULL)
        *out = strdup("");
    printf("--- tiergate pull %s...\n%s", args[0], *out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void fresh_dir(const char *name, char *dir, size_t n)
{
    snprintf(dir, n, "%s/%s", g_tmp, name);
}

static bool exists(const char *dir, const char *suffix)
{
    char p[512];
    snprintf(p, sizeof p, "%s/" MODEL_FILE "%s", dir, suffix);
    return access(p, F_OK) == 0;
}

static void assert_final_matches(const char *dir)
{
    char p[512];
    snprintf(p, sizeof p, "%s/" MODEL_FILE, dir);
    size_t a_len, b_len;
    char *a = tg_test_slurp(p, &a_len), *b = tg_test_slurp(g_src, &b_len);
    assert_non_null(a);
    assert_int_equal(a_len, b_len);
    assert_memory_equal(a, b, a_len);
    free(a);
    free(b);
    assert_false(exists(dir, ".part"));
}

static size_t count(const char *hay, const char *needle)
{
    size_t c = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
        c++;
    return c;
}

static void test_full_download(void **state)
{
    (void)state;
    struct server s;
    server_start(&s, g_sha, NULL);
    char dir[256], *out;
    fresh_dir("full/nested", dir, sizeof dir);
    const char *args[] = {"phi-3.5-mini", "--dir", dir, "--base-url", s.base, NULL};
    assert_int_equal(run_pull(args, &out), 0);
    assert_final_matches(dir);
    /* stderr is a file here: plain progress lines, ending at 100%, then the verification */
    assert_non_null(strstr(out, "pull: 100.0%"));
    assert_non_null(strstr(out, "SHA-256 verified"));
    assert_null(strchr(out, '\r'));
    free(out);

    /* second run: already present, nothing fetched */
    size_t before_len;
    char *before = tg_test_slurp(s.log, &before_len);
    assert_int_equal(run_pull(args, &out), 0);
    assert_non_null(strstr(out, "already present"));
    free(out);
    size_t after_len;
    char *after = tg_test_slurp(s.log, &after_len);
    assert_int_equal(before_len, after_len);
    free(before);
    free(after);

    /* the models dir from $TIERGATE_MODELS when --dir is absent */
    char envdir[300];
    fresh_dir("from-env", dir, sizeof dir);
    snprintf(envdir, sizeof envdir, "TIERGATE_MODELS=%s", dir);
    putenv(envdir);
    const char *args2[] = {"phi-3.5-mini", "--base-url", s.base, NULL};
    assert_int_equal(run_pull(args2, &out), 0);
    unsetenv("TIERGATE_MODELS");
    assert_final_matches(dir);
    free(out);
    server_stop(&s);
}

static void test_resume_next_run(void **state)
{
    (void)state;
    struct server s;
    const char *extra[] = {"--cut-after", "1000000", "--cuts", "1", NULL};
    server_start(&s, g_sha, extra);
    char dir[256], *out;
    fresh_dir("resume", dir, sizeof dir);
    const char *args[] = {"phi-3.5-mini", "--dir",     dir, "--base-url",
                          s.base,         "--retries", "0", NULL};
    assert_int_not_equal(run_pull(args, &out), 0);
    assert_non_null(strstr(out, "run the command again to resume"));
    free(out);
    assert_false(exists(dir, ""));
    assert_true(exists(dir, ".part"));
    char part[512];
    snprintf(part, sizeof part, "%s/" MODEL_FILE ".part", dir);
    struct stat st;
    assert_int_equal(stat(part, &st), 0);
    assert_int_equal(st.st_size, 1000000);

    assert_int_equal(run_pull(args, &out), 0);
    assert_non_null(strstr(out, "resuming at 1.0 MB"));
    free(out);
    assert_final_matches(dir);
    size_t n;
    char *log = tg_test_slurp(s.log, &n);
    printf("--- server log\n%s", log);
    assert_non_null(strstr(log, "range=1000000- status=206"));
    assert_int_equal(count(log, "cut=1"), 1);
    free(log);
    server_stop(&s);
}

static void test_resume_within_run(void **state)
{
    (void)state;
    struct server s;
    const char *extra[] = {"--cut-after", "700000", "--cuts", "3", NULL};
    server_start(&s, g_sha, extra);
    char dir[256], *out;
    fresh_dir("retry", dir, sizeof dir);
    const char *args[] = {"phi-3.5-mini", "--dir", dir, "--base-url", s.base, NULL};
    assert_int_equal(run_pull(args, &out), 0);
    assert_int_equal(count(out, "pull: retry "), 3);
    free(out);
    assert_final_matches(dir);
    size_t n;
    char *log = tg_test_slurp(s.log, &n);
    assert_non_null(strstr(log, "range=none:0- status=200 sent=700000 cut=1"));
    assert_non_null(strstr(log, "range=700000- status=206"));
    assert_non_null(strstr(log, "range=1400000- status=206"));
    assert_non_null(strstr(log, "range=2100000- status=206"));
    free(log);
    server_stop(&s);
}

static void test_server_ignores_range(void **state)
{
    (void)state;
    struct server s;
    const char *extra[] = {"--cut-after", "500000", "--cuts", "1", "--no-range", NULL};
    server_start(&s, g_sha, extra);
    char dir[256], *out;
    fresh_dir("norange", dir, sizeof dir);
    const char *args[] = {"phi-3.5-mini", "--dir", dir, "--base-url", s.base, NULL};
    /* the retry gets a 200 with the whole file: the .part must start over, not be appended to */
    assert_int_equal(run_pull(args, &out), 0);
    free(out);
    assert_final_matches(dir);
    server_stop(&s);
}

static void test_sha_mismatch(void **state)
{
    (void)state;
    struct server s;
    const char *bad = "00000000000000000000000000000000000000000000000000000000000000ff";
    server_start(&s, bad, NULL);
    char dir[256], *out;
    fresh_dir("mismatch", dir, sizeof dir);
    const char *args[] = {"phi-3.5-mini", "--dir", dir, "--base-url", s.base, NULL};
    assert_int_equal(run_pull(args, &out), 1);
    assert_non_null(strstr(out, "SHA-256 mismatch"));
    assert_non_null(strstr(out, bad));
    assert_non_null(strstr(out, g_sha));
    free(out);
    assert_false(exists(dir, ""));
    assert_false(exists(dir, ".part"));

    /* --sha256 wins over the hub's header: the right one makes the same server succeed */
    const char *args2[] = {"phi-3.5-mini", "--dir",    dir,   "--base-url",
                           s.base,         "--sha256", g_sha, NULL};
    assert_int_equal(run_pull(args2, &out), 0);
    free(out);
    assert_final_matches(dir);
    server_stop(&s);

    /* no hash anywhere: refused unless --no-verify */
    server_start(&s, "", NULL);
    fresh_dir("nohash", dir, sizeof dir);
    const char *args3[] = {"phi-3.5-mini", "--dir", dir, "--base-url", s.base, NULL};
    assert_int_equal(run_pull(args3, &out), 1);
    assert_non_null(strstr(out, "no SHA-256 to check"));
    free(out);
    assert_false(exists(dir, ""));
    const char *args4[] = {"phi-3.5-mini", "--dir", dir, "--base-url", s.base, "--no-verify", NULL};
    assert_int_equal(run_pull(args4, &out), 0);
    assert_non_null(strstr(out, "not verified"));
    free(out);
    assert_final_matches(dir);
    server_stop(&s);
}

static void test_bad_usage(void **state)
{
    (void)state;
    char *out;
    struct {
        const char *args[8];
        int code;
        const char *needle;
    } rows[] = {
        {{"nosuch-model", NULL}, 2, "unknown model 'nosuch-model'"},
        {{"phi-3.5-mini", "--base-url", "ftp://x", NULL}, 2, "must start with http://"},
        {{"phi-3.5-mini", "--sha256", "abc", NULL}, 2, "64 hex digits"},
        {{"phi-3.5-mini", "--retries", "x", NULL}, 2, "--retries must be"},
        {{"phi-3.5-mini", "--bogus", NULL}, 2, "unknown or incomplete argument"},
        {{NULL}, 2, "usage: tiergate pull"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        assert_int_equal(run_pull(rows[i].args, &out), rows[i].code);
        if (strstr(out, rows[i].needle) == NULL)
            fail_msg("row %zu: '%s' not in output", i, rows[i].needle);
        free(out);
    }
    /* nothing listening: a transport error, retried, then a clear failure */
    char dir[256], base[64];
    fresh_dir("refused", dir, sizeof dir);
    snprintf(base, sizeof base, "http://127.0.0.1:%d", tg_test_free_port());
    const char *args[] = {"phi-3.5-mini", "--dir", dir, "--base-url", base, "--retries", "1", NULL};
    assert_int_equal(run_pull(args, &out), 1);
    assert_non_null(strstr(out, "transfer interrupted"));
    free(out);

    /* HTTP errors: 404 is final (one request), 503 is retried, and neither leaves a final file */
    struct {
        const char *status;
        const char *retries;
        size_t file_requests;
    } http_rows[] = {{"404", "3", 1}, {"503", "2", 3}};
    for (size_t i = 0; i < sizeof http_rows / sizeof http_rows[0]; i++) {
        struct server s;
        const char *extra[] = {"--fail-status", http_rows[i].status, NULL};
        server_start(&s, g_sha, extra);
        const char *args2[] = {"phi-3.5-mini",       "--dir", dir,
                               "--base-url",         s.base,  "--retries",
                               http_rows[i].retries, NULL};
        assert_int_equal(run_pull(args2, &out), 1);
        char want[64];
        snprintf(want, sizeof want, "answered HTTP %s", http_rows[i].status);
        assert_non_null(strstr(out, want));
        free(out);
        size_t n;
        char *log = tg_test_slurp(s.log, &n);
        char pat[64];
        snprintf(pat, sizeof pat, "status=%s", http_rows[i].status);
        assert_int_equal(count(log, pat), http_rows[i].file_requests);
        free(log);
        assert_false(exists(dir, ""));
        assert_false(exists(dir, ".part")); /* nothing arrived: nothing to resume */
        server_stop(&s);
    }
}

/* `tiergate --help` lists every subcommand; `--version` answers; an unknown argument is 2. */
static void test_cli_help(void **state)
{
    (void)state;
    struct {
        const char *arg;
        int code;
        const char *needles[6];
    } rows[] = {
        {"--help",
         0,
         {"tiergate check", "tiergate route --explain", "tiergate engine --listen",
          "tiergate pull MODEL", "--version", NULL}},
        {"--version", 0, {"tiergate ", NULL}},
        {"--no-such-flag", 2, {"unknown argument", "usage:", NULL}},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char log[256];
        snprintf(log, sizeof log, "%s/help-%zu.log", g_tmp, i);
        char *argv[] = {TIERGATE, (char *)rows[i].arg, NULL};
        pid_t pid = tg_test_spawn(argv, NULL, log);
        int st = tg_test_stop(pid, 0, 10000);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), rows[i].code);
        size_t n;
        char *out = tg_test_slurp(log, &n);
        assert_non_null(out);
        for (size_t k = 0; rows[i].needles[k] != NULL; k++)
            if (strstr(out, rows[i].needles[k]) == NULL)
                fail_msg("%s: '%s' not in:\n%s", rows[i].arg, rows[i].needles[k], out);
        free(out);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_help),
        cmocka_unit_test(test_full_download),
        cmocka_unit_test(test_resume_next_run),
        cmocka_unit_test(test_resume_within_run),
        cmocka_unit_test(test_server_ignores_range),
        cmocka_unit_test(test_sha_mismatch),
        cmocka_unit_test(test_bad_usage),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
