/* Config loader: a table of valid and invalid files with the exact file:line message expected,
 * env interpolation, disabled providers, and refcounted snapshots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tg/config.h"
#include "tg/err.h"

static char g_dir[256];

static const char *write_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

/* What `tiergate check` prints for cfg (tg_config_print); the caller frees it. */
static char *printed(const struct tg_config *cfg)
{
    char *out = NULL;
    size_t out_len = 0;
    FILE *f = open_memstream(&out, &out_len);
    assert_non_null(f);
    tg_config_print(cfg, f);
    fclose(f);
    return out;
}

#define MIN_OK                                                                                  \
    "server:\n  open_mode: true\nmodels:\n  - name: phi\n    tier: local\n    target: engine\n"

struct bad_case {
    const char *yaml;
    const char *message; /* expected text after "<path>:" */
};

static const struct bad_case bad_cases[] = {
    {"server:\n  open_mode: true\n  listn: 1.2.3.4:80\nmodels: [{name: a, tier: local}]\n",
     "3: unknown key 'listn' in server (expected one of: listen, io_threads, busy_poll_us, "
     "busy_poll_upstream_us, max_body_bytes, max_header_bytes, read_timeout_ms, header_timeout_ms, idle_timeout_ms, "
     "drain_timeout_ms, max_connections, open_mode, api_keys, admin_key_sha256, log_level, log_format, tls)"},
    {MIN_OK "serverr: {}\n",
     "7: unknown key 'serverr' in the top level (expected one of: server, redis, local, providers, "
     "models, aliases, policy, cache, metrics, jobs)"},
    {"server:\n  open_mode: true\n  listen: localhost\n" "models: [{name: a, tier: local}]\n",
     "3: listen must be host:port (got 'localhost')"},
    {"server:\n  open_mode: true\n  io_threads: many\nmodels: [{name: a, tier: local}]\n",
     "3: io_threads must be an integer"},
    {"server:\n  open_mode: true\n  io_threads: 1000\nmodels: [{name: a, tier: local}]\n",
     "3: io_threads must be between 0 and 256 (got 1000)"},
    {"server:\n  open_mode: true\n  busy_poll_us: -1\nmodels: [{name: a, tier: local}]\n",
     "3: busy_poll_us must be between 0 and 10000 (got -1)"},
    {"server:\n  open_mode: true\n  busy_poll_us: 20000\nmodels: [{name: a, tier: local}]\n",
     "3: busy_poll_us must be between 0 and 10000 (got 20000)"},
    {"server:\n  open_mode: true\n  busy_poll_us: 50us\nmodels: [{name: a, tier: local}]\n",
     "3: busy_poll_us must be an integer"},
    {"server:\n  open_mode: true\n  busy_poll_upstream_us: 10001\nmodels: [{name: a, tier: local}]\n",
     "3: busy_poll_upstream_us must be between 0 and 10000 (got 10001)"},
    {"server:\n  open_mode: yes\nmodels: [{name: a, tier: local}]\n", "2: open_mode must be true or false"},
    {MIN_OK "local:\n  slots: 0\n", "8: slots must be between 1 and 256 (got 0)"},
    {MIN_OK "local:\n  kv_cache_type: f8\n", "8: kv_cache_type must be one of f16|q8_0|q4_0 (got 'f8')"},
    {MIN_OK "local:\n  kv_split: sometimes\n", "8: kv_split must be true or false"},
    {MIN_OK "local:\n  slots: 4\n  prefix_cache_spill_bytes: -2\n",
     "9: prefix_cache_spill_bytes must be between -1 and 1099511627776 (got -2)"},
    {MIN_OK "local:\n  prefix_cache_spill_bytes: lots\n", "8: prefix_cache_spill_bytes must be an integer"},
    {MIN_OK "local:\n  kv_split: true\n  slots: 8\n  context: 256\n",
     "10: context (256 tokens) is too small for 8 slots"},
    {MIN_OK "local:\n  workers: [\"http://x\"]\n",
     "8: worker address must be ipc://, tcp:// or inproc:// (got 'http://x')"},
    {MIN_OK "providers:\n  oai:\n    kind: opennai\n    base_url: http://x\n",
     "9: kind must be one of openai|anthropic (got 'opennai')"},
    {MIN_OK "providers:\n  oai:\n    kind: openai\n    base_url: ftp://x\n",
     "10: base_url must start with http:// or https:// (got 'ftp://x')"},
    {MIN_OK "providers:\n  oai:\n    kind: openai\n", "8: provider 'oai' needs base_url"},
    {"server: {open_mode: true}\nmodels:\n  - name: big\n    tier: remote\n    provider: nope\n",
     "5: model 'big' has an unknown provider 'nope'"},
    {"server: {open_mode: true}\nmodels:\n  - name: a\n    tier: middle\n",
     "4: tier must be one of local|remote (got 'middle')"},
    {"server: {open_mode: true}\nmodels:\n  - name: a\n    tier: local\n    fallbacks: [zz]\n",
     "5: model 'a': fallback 'zz' is not a defined model"},
    {MIN_OK "aliases:\n  auto: {local: phi, remote: phi}\n",
     "8: alias 'auto': model 'phi' is not a remote model"},
    {"server:\n  open_mode: false\nmodels: [{name: a, tier: local}]\n",
     "2: no usable api_keys and open_mode is false: nobody could call the gateway"},
    {"server:\n  api_keys:\n    - name: k\n      sha256: abc\nmodels: [{name: a, tier: local}]\n",
     "4: sha256 must be 64 hex digits (sha256sum of the key)"},
    {"server: {open_mode: true}\nmodels:\n  - {name: a, tier: local}\n  - {name: a, tier: local}\n",
     "4: duplicate model name 'a'"},
    {"server: {open_mode: true}\nmodels: []\n", "1: no models defined (models: [...])"},
    {"server: [1, 2]\n", "1: server must be a mapping, not a list"},
    {"server:\n  open_mode: true\n   bad_indent: 1\n", "3: mapping values are not allowed in this context"},
    {MIN_OK "cache:\n  ttl_s: -5\n", "8: ttl_s must be between 1 and 31536000 (got -5)"},
    {MIN_OK "metrics:\n  reference_model: gpt-9\n", "8: reference_model 'gpt-9' is not a defined model"},
    {"- just\n- a list\n", "1: the top level must be a mapping, not a list"},
};

/* local.kv_split and local.prefix_cache_spill_bytes: defaults, explicit values, and what
 * `tiergate check` prints (tg_config_print; its output loads again). */
static void test_local_engine_keys(void **state)
{
    (void)state;
    struct tg_config *cfg = NULL;
    char err[1024] = "";
    const char *path = write_file("local.yaml", MIN_OK "local:\n  slots: 8\n  context: 8192\n");
    assert_int_equal(tg_config_load(path, &cfg, err, sizeof err), TG_OK);
    const struct tg_cfg_local *dl = &cfg->local;
    assert_int_equal(dl->prefix_cache_spill_bytes, -1);
    tg_config_unref(cfg);
    for (int v = 0; v < 2; v++) {
        char yaml[512];
        snprintf(yaml, sizeof yaml,
                 MIN_OK "local:\n  slots: 8\n  context: 8192\n  kv_split: %s\n"
                        "  prefix_cache_spill_bytes: %s\n",
                 v ? "true" : "false", v ? "0" : "268435456");
        path = write_file("local.yaml", yaml);
        cfg = NULL;
        assert_int_equal(tg_config_load(path, &cfg, err, sizeof err), TG_OK);
        const struct tg_cfg_local *l = &cfg->local;
        assert_int_equal(l->kv_split, v == 1);
        assert_int_equal(l->prefix_cache_spill_bytes, v ? 0 : 268435456);
        char *out = printed(cfg);
        assert_non_null(strstr(out, v ? "  kv_split: true  # 1024 tokens per slot\n"
                                      : "  kv_split: false\n"));
        assert_non_null(strstr(out, v ? "  prefix_cache_spill_bytes: 0\n"
                                      : "  prefix_cache_spill_bytes: 268435456\n"));
        free(out);
        tg_config_unref(cfg);
    }
}

/* server.busy_poll_us: off by default; server.busy_poll_upstream_us: TG_CFG_BUSY_POLL_UPSTREAM_US
 * by default, 0 turns it off; explicit values, and what `tiergate check` prints. */
static void test_busy_poll_key(void **state)
{
    (void)state;
    for (int v = 0; v < 2; v++) {
        const char *path = write_file("bad.yaml", v ? "server:\n  open_mode: true\n  busy_poll_us: 200\n"
                                                      "  busy_poll_upstream_us: 0\n"
                                                      "models: [{name: a, tier: local}]\n"
                                                    : MIN_OK);
        struct tg_config *cfg = NULL;
        char err[1024] = "";
        assert_int_equal(tg_config_load(path, &cfg, err, sizeof err), TG_OK);
        assert_int_equal(cfg->server.busy_poll_us, v ? 200 : 0);
        assert_int_equal(cfg->server.busy_poll_upstream_us, v ? 0 : TG_CFG_BUSY_POLL_UPSTREAM_US);
        char *out = printed(cfg);
        assert_non_null(strstr(out, v ? "\n  busy_poll_us: 200\n" : "\n  busy_poll_us: 0\n"));
        char want[64];
        snprintf(want, sizeof want, "\n  busy_poll_upstream_us: %d\n",
                 v ? 0 : TG_CFG_BUSY_POLL_UPSTREAM_US);
        assert_non_null(strstr(out, want));
        free(out);
        tg_config_unref(cfg);
    }
}

static void test_bad_files(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const char *path = write_file("bad.yaml", bad_cases[i].yaml);
        struct tg_config *cfg = NULL;
        char err[1024] = "";
        int rc = tg_config_load(path, &cfg, err, sizeof err);
        char want[1200];
        snprintf(want, sizeof want, "%s:%s", path, bad_cases[i].message);
        if (rc != TG_CONFIG || strcmp(err, want) != 0) {
            print_error("case %zu:\n  want: %s\n  got:  %s (rc %d)\n", i, want, err, rc);
            failures++;
        }
        assert_null(cfg);
    }
    assert_int_equal(failures, 0);
}

static void test_reference_config(void **state)
{
    (void)state;
    unsetenv("OPENAI_API_KEY");
    setenv("ANTHROPIC_API_KEY", "sk-ant-test", 1);
    struct tg_config *cfg = NULL;
    char err[1024] = "";
    int rc = tg_config_load(TG_SOURCE_DIR "/routes.yaml", &cfg, err, sizeof err);
    if (rc != TG_OK)
        print_error("%s\n", err);
    assert_int_equal(rc, TG_OK);
    const struct tg_cfg_provider *oai = tg_config_provider(cfg, "openai");
    const struct tg_cfg_provider *ant = tg_config_provider(cfg, "anthropic");
    assert_non_null(oai);
    assert_false(oai->enabled);
    assert_string_equal(oai->disabled_reason, "environment variable OPENAI_API_KEY is not set");
    assert_true(ant->enabled);
    assert_string_equal(ant->api_key, "sk-ant-test");
    const struct tg_cfg_alias *a = tg_config_alias(cfg, "auto");
    assert_non_null(a);
    assert_string_equal(a->local, "phi-3.5-mini");
    const struct tg_cfg_model *m = tg_config_model(cfg, "gpt-4o-mini");
    assert_non_null(m);
    assert_ptr_equal(m->provider_ref, oai);
    assert_true(m->output_usd_per_mtok > 0.59 && m->output_usd_per_mtok < 0.61);
    /* relative paths resolve against the config's directory */
    assert_string_equal(cfg->local.model, TG_SOURCE_DIR "/build/models/tiny.gguf");
    assert_string_equal(cfg->policy, TG_SOURCE_DIR "/policies/balanced.yaml");
    /* the printed config masks secrets */
    char *text = printed(cfg);
    assert_null(strstr(text, "sk-ant-test"));
    assert_non_null(strstr(text, "api_key: \"****\""));
    free(text);
    tg_config_unref(cfg);
    unsetenv("ANTHROPIC_API_KEY");
}

static void test_env_interpolation(void **state)
{
    (void)state;
    setenv("TG_TEST_PORT_ADDR", "0.0.0.0:9999", 1);
    unsetenv("TG_TEST_UNSET");
    const char *path = write_file(
        "env.yaml", "server:\n  open_mode: true\n  listen: ${TG_TEST_PORT_ADDR}\n"
                    "redis:\n  url: ${TG_TEST_UNSET:-redis://10.0.0.1:7000/2}\n"
                    "providers:\n  p:\n    kind: openai\n    base_url: http://h/v1\n    api_key: ${TG_TEST_UNSET}\n"
                    "models:\n  - {name: a, tier: local}\n  - {name: b, tier: remote, provider: p}\n");
    struct tg_config *cfg = NULL;
    char err[1024] = "";
    assert_int_equal(tg_config_load(path, &cfg, err, sizeof err), TG_OK);
    assert_string_equal(cfg->server.listen_host, "0.0.0.0");
    assert_int_equal(cfg->server.port, 9999);
    assert_string_equal(cfg->redis.url, "redis://10.0.0.1:7000/2");
    assert_false(cfg->providers[0].enabled);
    assert_null(cfg->providers[0].api_key);
    assert_string_equal(cfg->providers[0].disabled_reason, "environment variable TG_TEST_UNSET is not set");
    tg_config_unref(cfg);
}

static void test_keys_and_refs(void **state)
{
    (void)state;
    /* sha256("secret") */
    const char *path = write_file(
        "keys.yaml", "server:\n  api_keys:\n    - name: team-a\n      sha256: "
                     "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\n"
                     "      privacy: true\n      limits: {requests_per_min: 60, usd_per_day: 1.5}\n"
                     "models: [{name: a, tier: local}]\n");
    struct tg_config *cfg = NULL;
    char err[1024] = "";
    assert_int_equal(tg_config_load(path, &cfg, err, sizeof err), TG_OK);
    assert_int_equal(cfg->server.n_keys, 1);
    unsigned char h[32];
    for (int i = 0; i < 32; i++) {
        unsigned v;
        sscanf("2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b" + 2 * i, "%2x", &v);
        h[i] = (unsigned char)v;
    }
    const struct tg_cfg_key *k = tg_config_key_by_hash(cfg, h);
    assert_non_null(k);
    assert_string_equal(k->tenant, "team-a");
    assert_true(k->privacy);
    assert_int_equal(k->limits.requests_per_min, 60);
    h[0] ^= 1;
    assert_null(tg_config_key_by_hash(cfg, h));
    /* a snapshot outlives the loader's reference while someone holds it */
    struct tg_config *held = tg_config_ref(cfg);
    tg_config_unref(cfg);
    assert_string_equal(held->server.keys[0].name, "team-a");
    tg_config_unref(held);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/tg-config-test-XXXXXX");
    return mkdtemp(g_dir) != NULL ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char path[512];
    const char *names[] = {"bad.yaml", "env.yaml", "keys.yaml"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", g_dir, names[i]);
        unlink(path);
    }
    rmdir(g_dir);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_local_engine_keys),
        cmocka_unit_test(test_busy_poll_key),
        cmocka_unit_test(test_reference_config),
        cmocka_unit_test(test_env_interpolation),
        cmocka_unit_test(test_keys_and_refs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
