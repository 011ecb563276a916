/* Ollama model names (local.model: ollama:NAME[:TAG]) against a fake Ollama store in a temp dir:
 * the manifest -> model layer -> blob chain, name forms, and every way the chain can break, both
 * through tg_model_ref_resolve and through the config loader (file:line errors). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tg/config.h"
#include "tg/err.h"
#include "tg/model_ref.h"

#define HEX_A "1111111111111111111111111111111111111111111111111111111111111111"
#define HEX_B "2222222222222222222222222222222222222222222222222222222222222222"
#define HEX_C "3333333333333333333333333333333333333333333333333333333333333333"

static char g_store[256];

static void write_file(const char *path, const char *text)
{
    /* mkdir -p of the parent */
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", path);
    for (char *p = dir + 1; *p != '\0'; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(dir, 0755) == -1 && access(dir, F_OK) != 0)
                fail_msg("mkdir %s", dir);
            *p = '/';
        }
    }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

static void store_file(const char *rel, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_store, rel);
    write_file(path, text);
}

/* A manifest the way `ollama pull` writes it: config, model, template, license, params layers. */
static const char *manifest(const char *model_hex)
{
    static char buf[2048];
    snprintf(buf, sizeof buf,
             "{\"schemaVersion\":2,\"mediaType\":\"application/"
             "vnd.docker.distribution.manifest.v2+json\","
             "\"config\":{\"mediaType\":\"application/vnd.docker.container.image.v1+json\","
             "\"digest\":\"sha256:" HEX_C "\",\"size\":483},"
             "\"layers\":[{\"mediaType\":\"application/vnd.ollama.image.license\","
             "\"digest\":\"sha256:" HEX_C "\",\"size\":1084},"
             "{\"mediaType\":\"application/vnd.ollama.image.model\","
             "\"digest\":\"sha256:%s\",\"size\":2176177120},"
             "{\"mediaType\":\"application/vnd.ollama.image.template\","
             "\"digest\":\"sha256:" HEX_C "\",\"size\":148}]}",
             model_hex);
    return buf;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_store, sizeof g_store, "/tmp/tg-ollama-XXXXXX");
    if (mkdtemp(g_store) == NULL)
        return -1;
    setenv("OLLAMA_MODELS", g_store, 1);
    store_file("blobs/sha256-" HEX_A, "GGUF-fake-a");
    store_file("blobs/sha256-" HEX_B, "GGUF-fake-b");
    store_file("manifests/registry.ollama.ai/library/phi3.5/latest", manifest(HEX_A));
    store_file("manifests/registry.ollama.ai/library/phi3.5/3.8b-mini-instruct-q4_K_M",
               manifest(HEX_B));
    store_file("manifests/registry.ollama.ai/alice/tiny/v1", manifest(HEX_B));
    store_file("manifests/example.com/team/tiny/v2", manifest(HEX_A));
    /* manifest naming a blob that is not there */
    store_file("manifests/registry.ollama.ai/library/gone/latest",
               manifest("9999999999999999999999999999999999999999999999999999999999999999"));
    store_file("manifests/registry.ollama.ai/library/notjson/latest", "{\"layers\": [");
    store_file("manifests/registry.ollama.ai/library/nomodel/latest",
               "{\"layers\":[{\"mediaType\":\"application/vnd.ollama.image.template\","
               "\"digest\":\"sha256:" HEX_C "\"}]}");
    store_file("manifests/registry.ollama.ai/library/baddigest/latest",
               "{\"layers\":[{\"mediaType\":\"application/vnd.ollama.image.model\","
               "\"digest\":\"md5:abc\"}]}");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_store);
    return system(cmd) == 0 ? 0 : -1;
}

struct ok_case {
    const char *ref;
    const char *blob_hex; /* NULL: the ref itself comes back (a plain path) */
};

static const struct ok_case ok_cases[] = {
    {"ollama:phi3.5", HEX_A},
    {"ollama:phi3.5:latest", HEX_A},
    {"ollama:phi3.5:3.8b-mini-instruct-q4_K_M", HEX_B},
    {"ollama:alice/tiny:v1", HEX_B},
    {"ollama:example.com/team/tiny:v2", HEX_A},
    {"/models/phi.gguf", NULL},
    {"models/tiny.gguf", NULL},
};

static void test_resolve_ok(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof ok_cases / sizeof ok_cases[0]; i++) {
        const struct ok_case *c = &ok_cases[i];
        char out[1024] = "untouched", err[512] = "";
        int rc = tg_model_ref_resolve(c->ref, out, sizeof out, err, sizeof err);
        if (rc != 0)
            fail_msg("%s: %s", c->ref, err);
        char want[1024];
        if (c->blob_hex != NULL)
            snprintf(want, sizeof want, "%s/blobs/sha256-%s", g_store, c->blob_hex);
        else
            snprintf(want, sizeof want, "%s", c->ref);
        assert_string_equal(out, want);
        assert_int_equal(tg_model_ref_is_ollama(c->ref), c->blob_hex != NULL);
    }
}

struct bad_case {
    const char *ref;
    const char *needle1, *needle2; /* both must appear in the message */
};

static const struct bad_case bad_cases[] = {
    {"ollama:phi3.5:nosuchtag", "no manifest at",
     "/manifests/registry.ollama.ai/library/phi3.5/nosuchtag"},
    {"ollama:nosuchmodel", "not found", "/manifests/registry.ollama.ai/library/nosuchmodel/latest"},
    {"ollama:gone", "which is missing", "/blobs/sha256-9999999999"},
    {"ollama:notjson", "is not JSON", "/library/notjson/latest"},
    {"ollama:nomodel", "no layer of mediaType application/vnd.ollama.image.model", "nomodel"},
    {"ollama:baddigest", "no layer of mediaType", "baddigest"},
    {"ollama:", "is not an Ollama model name", "ollama:"},
    {"ollama:../../etc/passwd", "is not an Ollama model name", "../"},
    {"ollama:a/b/c/d", "is not an Ollama model name", "a/b/c/d"},
    {"ollama:phi3.5:", "is not an Ollama model name", "phi3.5:"},
    {"ollama:phi 3", "is not an Ollama model name", "phi 3"},
    {"ollama:phi/", "is not an Ollama model name", "phi/"},
};

static void test_resolve_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const struct bad_case *c = &bad_cases[i];
        char out[1024] = "untouched", err[512] = "";
        int rc = tg_model_ref_resolve(c->ref, out, sizeof out, err, sizeof err);
        if (rc == 0)
            fail_msg("%s: resolved to %s, expected an error", c->ref, out);
        assert_string_equal(out, "untouched"); /* out-parameter written only on success */
        if (strstr(err, c->needle1) == NULL || strstr(err, c->needle2) == NULL)
            fail_msg("%s: message '%s' lacks '%s' / '%s'", c->ref, err, c->needle1, c->needle2);
    }
    /* a path buffer too small is an error, not a truncated path */
    char tiny[8], err[512];
    assert_int_equal(tg_model_ref_resolve("ollama:phi3.5", tiny, sizeof tiny, err, sizeof err), -1);
}

static void test_store_from_home(void **state)
{
    (void)state;
    char home[300], old_home[512];
    snprintf(old_home, sizeof old_home, "%s", getenv("HOME") != NULL ? getenv("HOME") : "/");
    snprintf(home, sizeof home, "%s/home", g_store);
    char rel[1024];
    snprintf(rel, sizeof rel, "%s/.ollama/models/manifests/registry.ollama.ai/library/m/latest",
             home);
    write_file(rel, manifest(HEX_A));
    snprintf(rel, sizeof rel, "%s/.ollama/models/blobs/sha256-" HEX_A, home);
    write_file(rel, "GGUF");
    unsetenv("OLLAMA_MODELS");
    setenv("HOME", home, 1);
    char out[1024], err[512] = "";
    int rc = tg_model_ref_resolve("ollama:m", out, sizeof out, err, sizeof err);
    setenv("HOME", old_home, 1);
    setenv("OLLAMA_MODELS", g_store, 1);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "/home/.ollama/models/blobs/sha256-" HEX_A));
}

static const char *write_config(const char *model)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/routes.yaml", g_store);
    char text[1024];
    snprintf(text, sizeof text,
             "server:\n  open_mode: true\n"
             "local:\n  slots: 2\n  model: %s\n"
             "models:\n  - name: phi\n    tier: local\n    target: engine\n",
             model);
    write_file(path, text);
    return path;
}

static void test_config_loader(void **state)
{
    (void)state;
    struct tg_config *cfg = NULL;
    char err[1024] = "";
    const char *path = write_config("ollama:phi3.5:3.8b-mini-instruct-q4_K_M");
    if (tg_config_load(path, &cfg, err, sizeof err) != TG_OK)
        fail_msg("load: %s", err);
    char want[1024];
    snprintf(want, sizeof want, "%s/blobs/sha256-" HEX_B, g_store);
    assert_string_equal(cfg->local.model, want);
    tg_config_unref(cfg);

    /* missing tag: file:line of the model key, and the manifest path tried */
    cfg = NULL;
    path = write_config("ollama:phi3.5:nope");
    assert_int_not_equal(tg_config_load(path, &cfg, err, sizeof err), TG_OK);
    assert_null(cfg);
    char want_prefix[600];
    snprintf(want_prefix, sizeof want_prefix, "%s:5: local.model: ", path);
    if (strncmp(err, want_prefix, strlen(want_prefix)) != 0 ||
        strstr(err, "manifests/registry.ollama.ai/library/phi3.5/nope") == NULL)
        fail_msg("unexpected message: %s", err);

    /* missing blob */
    path = write_config("ollama:gone");
    assert_int_not_equal(tg_config_load(path, &cfg, err, sizeof err), TG_OK);
    if (strstr(err, ":5: local.model: ") == NULL || strstr(err, "which is missing") == NULL)
        fail_msg("unexpected message: %s", err);

    /* a plain relative path still resolves against the config's directory */
    path = write_config("tiny.gguf");
    if (tg_config_load(path, &cfg, err, sizeof err) != TG_OK)
        fail_msg("load: %s", err);
    snprintf(want, sizeof want, "%s/tiny.gguf", g_store);
    assert_string_equal(cfg->local.model, want);
    tg_config_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resolve_ok),
        cmocka_unit_test(test_resolve_errors),
        cmocka_unit_test(test_store_from_home),
        cmocka_unit_test(test_config_loader),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
