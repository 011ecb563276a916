/* Metrics registry, exposition, cost functions and the admin check: table-driven, plus
 * `promtool check metrics` on the rendered text and exact totals over many records and threads. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <pthread.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "cost.h"
#include "metrics.h"
#include "tg/buf.h"
#include "tg/err.h"
#include "tg_testlib.h"
#include "usage.h"

/* sha256("s3cret-admin") */
#define ADMIN_SHA "77a4e206296282b0c1acebc0bebff60856cf558f731762d241cb9be07b60119a"

static const char k_yaml[] =
    "server:\n"
    "  open_mode: true\n"
    "  admin_key_sha256: " ADMIN_SHA "\n"
    "local:\n"
    "  price_per_mtok_usd: 0.02\n"
    "providers:\n"
    "  oai: {kind: openai, base_url: 'http://127.0.0.1:9', api_key: test}\n"
    "models:\n"
    "  - {name: phi, tier: local, target: engine}\n"
    "  - {name: mini, tier: remote, provider: oai, input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60}\n"
    "  - {name: big, tier: remote, provider: oai, input_usd_per_mtok: 2.5, output_usd_per_mtok: 10}\n"
    "  - {name: 'we\"ird\\name', tier: remote, provider: oai, input_usd_per_mtok: 1, output_usd_per_mtok: 1}\n"
    "aliases:\n"
    "  auto: {local: phi, remote: mini}\n"
    "metrics:\n"
    "  reference_model: mini\n"
    "  tenant_labels: [default]\n";

static struct tg_config *g_cfg;

static int setup(void **state)
{
    const char *path = tg_test_write_temp("metrics.yaml", k_yaml);
    char err[1024];
    if (tg_config_load(path, &g_cfg, err, sizeof err) != TG_OK) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    tg_config_unref(g_cfg);
    return 0;
}

static int reg_setup(void **state)
{
    return tg_metrics_init(g_cfg, "1.2.3") == TG_OK ? 0 : -1;
}

static int reg_teardown(void **state)
{
    tg_metrics_shutdown();
    return 0;
}

static char *render(void)
{
    struct tg_buf b;
    tg_buf_init(&b, 0);
    assert_int_equal(tg_metrics_render(&b), TG_OK);
    assert_non_null(b.data);
    return tg_buf_detach(&b);
}


static size_t count_prefix(const char *text, const char *prefix)
{
    size_t k = 0, n = strlen(prefix);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, prefix, n) == 0)
            k++;
        p = strchr(p, '\n');
        if (p != NULL)
            p++;
    }
    return k;
}

/* ---- cost ------------------------------------------------------------------------------- */

static void test_cost_table(void **state)
{
    static const struct {
        const char *tier, *model;
        int64_t prompt, completion;
        int64_t cost_nano, avoided_nano;
        const char *reason;
    } rows[] = {
        /* 1000×0.15/1e6 + 500×0.60/1e6 = 0.00015 + 0.0003 */
        {"remote", "mini", 1000, 500, 450000, 0, NULL},
        {"remote", "big", 1000000, 1000000, 12500000000LL, 0, NULL},
        {"remote", "auto", 1000, 500, 450000, 0, NULL},        /* alias → remote model */
        {"remote", "unknown-model", 1000, 500, 0, 0, NULL},
        {"local", "phi", 1000, 500, 30000, 450000, "local"},   /* 1500 × 0.02/1e6 */
        {"local", "auto", 7, 3, 200, 2850, "local"},           /* 10×20 nano; 7×150+3×600 */
        {"cache", "mini", 1000, 500, 0, 450000, "cache"},
        {"none", "", 10, 10, 0, 0, NULL},
        {"remote", "mini", -5, -5, 0, 0, NULL},
        {"remote", "mini", 1, 1, 750, 0, NULL},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct tg_cost c;
        tg_cost_compute(g_cfg, rows[i].tier, rows[i].model, rows[i].prompt, rows[i].completion, &c);
        assert_int_equal(c.cost_nano, rows[i].cost_nano);
        assert_int_equal(c.avoided_nano, rows[i].avoided_nano);
        assert_int_equal(c.cost_nano, tg_cost_nano(c.cost_usd));
        if (rows[i].reason == NULL)
            assert_null(c.avoided_reason);
        else
            assert_string_equal(c.avoided_reason, rows[i].reason);
    }
}

static void test_cost_format(void **state)
{
    static const struct {
        int64_t nano;
        const char *text;
    } rows[] = {{0, "0"},           {450000, "0.00045"}, {1, "0.000000001"},
                {12500000000LL, "12.5"}, {-150, "-0.00000015"}, {1000000000, "1"}};
    char buf[40];
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        assert_string_equal(tg_cost_format_usd(rows[i].nano, buf, sizeof buf), rows[i].text);
    assert_int_equal(tg_cost_nano(0.00045), 450000);
    assert_int_equal(tg_cost_nano(12.5), 12500000000LL);
}

/* ---- registry + exposition ---------------------------------------------------------------- */

static struct tg_request_record rec(const char *endpoint, const char *tier, const char *model,
                                    int status, int64_t p, int64_t c)
{
    struct tg_cost cost;
    tg_cost_compute(g_cfg, tier, model, p, c, &cost);
    return (struct tg_request_record){
        .endpoint = endpoint, .tier = tier, .model = model, .status = status,
        .duration_s = 0.2, .ttft_s = 0.05, .upstream_s = strcmp(tier, "remote") == 0 ? 0.15 : -1,
        .prompt_tokens = p, .completion_tokens = c, .cost_usd = cost.cost_usd,
        .avoided_usd = cost.avoided_usd, .avoided_reason = cost.avoided_reason,
        .cache_result = "miss", .route_tier = strcmp(tier, "cache") == 0 ? NULL : tier,
        .route_reason = "score.threshold", .tenant = ""};
}

static void test_exposition(void **state)
{
    struct tg_request_record a = rec("chat", "local", "phi", 200, 100, 20);
    tg_metrics_record(&a);
    tg_metrics_record(&a);
    struct tg_request_record b = rec("classify", "remote", "mini", 200, 1000, 500);
    b.escalated = true;
    b.escalation_reason = "escalate.low_confidence";
    b.fallbacks = 1;
    b.fallback_reason = "http_5xx";
    b.cached_tokens = 64;
    tg_metrics_record(&b);
    struct tg_request_record c = rec("chat", "cache", "mini", 200, 1000, 500);
    c.cache_result = "hit";
    c.ttft_s = 0.003;
    c.duration_s = 0.004;
    tg_metrics_record(&c);
    struct tg_request_record d = {.endpoint = "chat", .tier = "none", .model = "", .status = 400,
                                  .duration_s = 0.001, .ttft_s = -1, .upstream_s = -1};
    tg_metrics_record(&d);
    tg_metrics_bad_request("invalid_json");
    tg_metrics_upstream_error("mini", "http_5xx");
    tg_metrics_upstream_duration("mini", 0.3);

    char *t = render();
    assert_int_equal(tg_test_metric_value(t, "tiergate_requests_total{endpoint=\"chat\",tier=\"local\",model=\"phi\",status=\"200\"}"), 2);
    assert_int_equal(tg_test_metric_value(t, "tiergate_requests_total{endpoint=\"classify\",tier=\"remote\",model=\"mini\",status=\"200\"}"), 1);
    assert_int_equal(tg_test_metric_value(t, "tiergate_requests_total{endpoint=\"chat\",tier=\"none\",model=\"none\",status=\"400\"}"), 1);
    assert_int_equal(tg_test_metric_value(t, "tiergate_tokens_total{tier=\"local\",model=\"phi\",type=\"prompt\"}"), 200);
    assert_int_equal(tg_test_metric_value(t, "tiergate_tokens_total{tier=\"local\",model=\"phi\",type=\"completion\"}"), 40);
    assert_int_equal(tg_test_metric_value(t, "tiergate_tokens_total{tier=\"remote\",model=\"mini\",type=\"cached\"}"), 64);
    /* local: 2 × 120 tokens × 0.02/1e6 = 0.0000048; remote 0.00045; cache 0 */
    assert_non_null(strstr(t, "\ntiergate_cost_usd_total{tier=\"local\",model=\"phi\"} 0.0000048\n"));
    assert_non_null(strstr(t, "\ntiergate_cost_usd_total{tier=\"remote\",model=\"mini\"} 0.00045\n"));
    assert_non_null(strstr(t, "\ntiergate_cost_usd_total{tier=\"cache\",model=\"mini\"} 0\n"));
    /* avoided: local 2 × (100×0.15 + 20×0.6)/1e6 = 0.000054; cache 0.00045 */
    assert_non_null(strstr(t, "\ntiergate_cost_avoided_usd_total{reason=\"local\"} 0.000054\n"));
    assert_non_null(strstr(t, "\ntiergate_cost_avoided_usd_total{reason=\"cache\"} 0.00045\n"));
    assert_int_equal(tg_test_metric_value(t, "tiergate_cache_requests_total{result=\"hit\"}"), 1);
    assert_int_equal(tg_test_metric_value(t, "tiergate_cache_requests_total{result=\"miss\"}"), 3);
    assert_int_equal(tg_test_metric_value(t, "tiergate_cache_requests_total{result=\"bypass\"}"), 0);
    assert_int_equal(tg_test_metric_value(t, "tiergate_route_decisions_total{tier=\"local\",reason=\"score.threshold\"}"), 2);
    assert_int_equal(tg_test_metric_value(t, "tiergate_escalations_total{reason=\"escalate.low_confidence\"}"), 1);
    assert_int_equal(tg_test_metric_value(t, "tiergate_fallbacks_total{reason=\"http_5xx\"}"), 1);
    assert_int_equal(tg_test_metric_value(t, "tiergate_upstream_errors_total{target=\"mini\",kind=\"http_5xx\"}"), 1);
    assert_int_equal(tg_test_metric_value(t, "tiergate_bad_requests_total{reason=\"invalid_json\"}"), 1);
    /* tenants: open mode "" → none */
    assert_int_equal(tg_test_metric_value(t, "tiergate_tenant_requests_total{tenant=\"none\"}"), 5);
    assert_non_null(strstr(t, "\ntiergate_tenant_cost_usd_total{tenant=\"none\"} 0.0004548\n"));
    /* histograms: cumulative buckets, +Inf = count */
    assert_int_equal(tg_test_metric_value(t, "tiergate_request_duration_seconds_bucket{tier=\"local\",le=\"0.1\"}"), 0);
    assert_int_equal(tg_test_metric_value(t, "tiergate_request_duration_seconds_bucket{tier=\"local\",le=\"0.25\"}"), 2);
    assert_int_equal(tg_test_metric_value(t, "tiergate_request_duration_seconds_bucket{tier=\"local\",le=\"+Inf\"}"), 2);
    assert_int_equal(tg_test_metric_value(t, "tiergate_request_duration_seconds_count{tier=\"local\"}"), 2);
    assert_true(tg_test_metric_value(t, "tiergate_request_duration_seconds_sum{tier=\"local\"}") > 0.39);
    assert_int_equal(tg_test_metric_value(t, "tiergate_time_to_first_token_seconds_bucket{tier=\"cache\",le=\"0.005\"}"), 1);
    assert_int_equal(tg_test_metric_value(t, "tiergate_time_to_first_token_seconds_count{tier=\"none\"}"), -1);
    /* the executor's per-attempt hook took over from the records' upstream_s: one source only */
    assert_int_equal(tg_test_metric_value(t, "tiergate_upstream_duration_seconds_count{target=\"mini\"}"), 1);
    assert_true(tg_test_metric_value(t, "tiergate_upstream_duration_seconds_sum{target=\"mini\"}") == 0.3);
    assert_non_null(strstr(t, "# TYPE tiergate_request_duration_seconds histogram\n"));
    assert_non_null(strstr(t, "# TYPE tiergate_engine_slots_busy gauge\n"));
    assert_non_null(strstr(t, "\ntiergate_build_info{version=\"1.2.3\"} 1\n"));
    free(t);
    tg_metrics_record(&b); /* hooked: the record's upstream_s is not observed again */
    t = render();
    assert_int_equal(tg_test_metric_value(t, "tiergate_upstream_duration_seconds_count{target=\"mini\"}"), 1);
    free(t);
}

/* Free text, keys and unknown names never become label values. */
static void test_label_bounds(void **state)
{
    char reason[32];
    for (int i = 0; i < 500; i++) {
        struct tg_request_record r = rec("bogus-endpoint", "weird-tier", "sk-live-secret", 200, 1, 1);
        snprintf(reason, sizeof reason, "r%d", i);
        r.route_reason = reason;
        r.route_tier = "local";
        r.status = 1000 + i;
        tg_metrics_record(&r);
        tg_metrics_bad_request(i % 2 ? "has spaces in it" : reason);
        tg_metrics_upstream_error("https://evil.example/x", "Kind With Caps");
    }
    struct tg_request_record ta = rec("chat", "local", "phi", 200, 1, 1);
    ta.tenant = "default";       /* on metrics.tenant_labels */
    tg_metrics_record(&ta);
    ta.tenant = "customer-4711"; /* not on it */
    tg_metrics_record(&ta);
    char *t = render();
    assert_int_equal(tg_test_metric_value(t, "tiergate_tenant_requests_total{tenant=\"default\"}"), 1);
    assert_int_equal(tg_test_metric_value(t, "tiergate_tenant_requests_total{tenant=\"other\"}"), 1);
    assert_null(strstr(t, "customer-4711"));
    assert_null(strstr(t, "sk-live-secret"));
    assert_null(strstr(t, "evil.example"));
    assert_null(strstr(t, "has spaces"));
    assert_int_equal(tg_test_metric_value(t, "tiergate_requests_total{endpoint=\"other\",tier=\"other\",model=\"other\",status=\"other\"}"), 500);
    assert_int_equal(tg_test_metric_value(t, "tiergate_upstream_errors_total{target=\"other\",kind=\"other\"}"), 500);
    /* 500 distinct reason codes: capped (64 per tier pair family ×2, one overflow series) */
    size_t n_route = count_prefix(t, "tiergate_route_decisions_total{");
    assert_true(n_route <= 2 * 64 + 1);
    assert_true(tg_test_metric_value(t, "tiergate_route_decisions_total{tier=\"other\",reason=\"other\"}") > 0);
    assert_true(count_prefix(t, "tiergate_bad_requests_total{") <= 64 + 1);
    assert_true(tg_test_metric_value(t, "tiergate_bad_requests_total{reason=\"other\"}") >= 250);
    free(t);
}

static void test_escaping(void **state)
{
    struct tg_request_record r = rec("chat", "remote", "we\"ird\\name", 200, 10, 10);
    tg_metrics_record(&r);
    char *t = render();
    assert_non_null(strstr(t, "model=\"we\\\"ird\\\\name\""));
    free(t);
}

static void fill_gauges(void *user, struct tg_metrics_gauges *g)
{
    g->engine_slots_busy = 3;
    g->engine_queue_depth = 7;
    g->engine_tokens_per_second = 123.5;
    g->inflight_requests = *(int *)user;
}

static void visit_circuits(void *user, tg_metrics_circuit_visit_fn visit, void *vctx)
{
    visit(vctx, "mini", TG_METRICS_CIRCUIT_OPEN);
    visit(vctx, "big", TG_METRICS_CIRCUIT_CLOSED);
    visit(vctx, "not-in-config", TG_METRICS_CIRCUIT_HALF_OPEN);
}

static void test_gauges(void **state)
{
    char *t = render();
    assert_int_equal(tg_test_metric_value(t, "tiergate_engine_slots_busy"), -1); /* no callback: no sample */
    free(t);
    int inflight = 5;
    tg_metrics_set_gauges_fn(fill_gauges, &inflight);
    tg_metrics_set_circuits_fn(visit_circuits, NULL);
    t = render();
    assert_int_equal(tg_test_metric_value(t, "tiergate_engine_slots_busy"), 3);
    assert_int_equal(tg_test_metric_value(t, "tiergate_engine_queue_depth"), 7);
    assert_true(tg_test_metric_value(t, "tiergate_engine_tokens_per_second") == 123.5);
    assert_int_equal(tg_test_metric_value(t, "tiergate_inflight_requests"), 5);
    assert_int_equal(tg_test_metric_value(t, "tiergate_circuit_state{target=\"mini\"}"), 2);
    assert_int_equal(tg_test_metric_value(t, "tiergate_circuit_state{target=\"big\"}"), 0);
    assert_int_equal(tg_test_metric_value(t, "tiergate_circuit_state{target=\"other\"}"), 1);
    free(t);
}

/* Many records from several threads: the totals equal usage × price exactly. */
struct worker_arg {
    int id;
    int n;
};

static void *worker(void *p)
{
    struct worker_arg *a = p;
    for (int i = 0; i < a->n; i++) {
        int64_t pt = 1 + (i * 37 + a->id) % 3000, ct = 1 + (i * 11 + a->id) % 700;
        struct tg_request_record r = rec("chat", i % 3 == 0 ? "local" : "remote",
                                         i % 3 == 0 ? "phi" : i % 3 == 1 ? "mini" : "big", 200,
                                         pt, ct);
        tg_metrics_record(&r);
    }
    return NULL;
}

static void test_threads_exact_totals(void **state)
{
    enum { T = 4, N = 5000 };
    pthread_t th[T];
    struct worker_arg args[T];
    for (int i = 0; i < T; i++) {
        args[i] = (struct worker_arg){i, N};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    /* Expected: usage × price computed independently in integer micro-cents... per row. */
    int64_t tok[3][2] = {{0}};
    for (int t = 0; t < T; t++)
        for (int i = 0; i < N; i++) {
            tok[i % 3][0] += 1 + (i * 37 + t) % 3000;
            tok[i % 3][1] += 1 + (i * 11 + t) % 700;
        }
    /* prices in nano-dollars per token: local 20 (0.02/M), mini 150/600, big 2500/10000 */
    int64_t local_nano = (tok[0][0] + tok[0][1]) * 20;
    int64_t mini_nano = tok[1][0] * 150 + tok[1][1] * 600;
    int64_t big_nano = tok[2][0] * 2500 + tok[2][1] * 10000;
    char *t = render();
    char want[128], buf[40];
    snprintf(want, sizeof want, "\ntiergate_cost_usd_total{tier=\"local\",model=\"phi\"} %s\n",
             tg_cost_format_usd(local_nano, buf, sizeof buf));
    assert_non_null(strstr(t, want));
    snprintf(want, sizeof want, "\ntiergate_cost_usd_total{tier=\"remote\",model=\"mini\"} %s\n",
             tg_cost_format_usd(mini_nano, buf, sizeof buf));
    assert_non_null(strstr(t, want));
    snprintf(want, sizeof want, "\ntiergate_cost_usd_total{tier=\"remote\",model=\"big\"} %s\n",
             tg_cost_format_usd(big_nano, buf, sizeof buf));
    assert_non_null(strstr(t, want));
    /* and to the cent as a float, as Prometheus will read it */
    double total = tg_test_metric_value(t, "tiergate_cost_usd_total{tier=\"local\",model=\"phi\"}") +
                   tg_test_metric_value(t, "tiergate_cost_usd_total{tier=\"remote\",model=\"mini\"}") +
                   tg_test_metric_value(t, "tiergate_cost_usd_total{tier=\"remote\",model=\"big\"}");
    double expect = (double)(local_nano + mini_nano + big_nano) / 1e9;
    assert_true(llround(total * 100) == llround(expect * 100));
    assert_int_equal(tg_test_metric_value(t, "tiergate_requests_total{endpoint=\"chat\",tier=\"local\",model=\"phi\",status=\"200\"}") +
                         tg_test_metric_value(t, "tiergate_requests_total{endpoint=\"chat\",tier=\"remote\",model=\"mini\",status=\"200\"}") +
                         tg_test_metric_value(t, "tiergate_requests_total{endpoint=\"chat\",tier=\"remote\",model=\"big\",status=\"200\"}"),
                     T * N);
    free(t);
}

/* The Debian prometheus package's own linter accepts the text. */
static void test_promtool(void **state)
{
    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        skip();
        return;
    }
    struct tg_request_record a = rec("chat", "local", "phi", 200, 100, 20);
    tg_metrics_record(&a);
    struct tg_request_record b = rec("extract", "remote", "we\"ird\\name", 502, 100, 0);
    b.escalated = true;
    b.escalation_reason = "escalate.schema_invalid";
    tg_metrics_record(&b);
    tg_metrics_upstream_error("mini", "timeout");
    int inflight = 1;
    tg_metrics_set_gauges_fn(fill_gauges, &inflight);
    tg_metrics_set_circuits_fn(visit_circuits, NULL);
    char *t = render();
    char path[512];
    snprintf(path, sizeof path, "%s/metrics-exposition.txt", TG_BINARY_DIR);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(t, f);
    assert_int_equal(fclose(f), 0);
    free(t);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "promtool check metrics < '%s'", path);
    int st = system(cmd);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

static void test_reload_labels(void **state)
{
    struct tg_request_record r = rec("chat", "remote", "newmodel", 200, 1, 1);
    tg_metrics_record(&r);
    char yaml[sizeof k_yaml + 200];
    snprintf(yaml, sizeof yaml, "%s",
             "server: {open_mode: true}\n"
             "providers: {oai: {kind: openai, base_url: 'http://127.0.0.1:9', api_key: t}}\n"
             "models:\n  - {name: newmodel, tier: remote, provider: oai}\n");
    struct tg_config *cfg2 = NULL;
    char err[512];
    assert_int_equal(tg_config_load(tg_test_write_temp("reload.yaml", yaml), &cfg2, err, sizeof err),
                     TG_OK);
    tg_metrics_configure(cfg2);
    tg_metrics_record(&r);
    char *t = render();
    assert_int_equal(tg_test_metric_value(t, "tiergate_requests_total{endpoint=\"chat\",tier=\"remote\",model=\"other\",status=\"200\"}"), 1);
    assert_int_equal(tg_test_metric_value(t, "tiergate_requests_total{endpoint=\"chat\",tier=\"remote\",model=\"newmodel\",status=\"200\"}"), 1);
    free(t);
    tg_config_unref(cfg2);
}

static void test_admin(void **state)
{
    assert_true(tg_metrics_admin_allowed(g_cfg, "Bearer s3cret-admin", NULL));
    assert_true(tg_metrics_admin_allowed(g_cfg, "bearer  s3cret-admin ", NULL));
    assert_false(tg_metrics_admin_allowed(g_cfg, "Bearer s3cret-admiN", NULL));
    assert_false(tg_metrics_admin_allowed(g_cfg, "Basic s3cret-admin", NULL));
    assert_false(tg_metrics_admin_allowed(g_cfg, NULL, NULL));
    assert_false(tg_metrics_admin_allowed(g_cfg, "Bearer ", ""));
    assert_true(tg_metrics_admin_allowed(g_cfg, NULL, "since=1&key=s3cret-admin"));
    assert_true(tg_metrics_admin_allowed(g_cfg, NULL, "key=s3cret%2Dadmin&group_by=tier"));
    assert_false(tg_metrics_admin_allowed(g_cfg, NULL, "key=wrong"));
    assert_false(tg_metrics_admin_allowed(g_cfg, NULL, "xkey=s3cret-admin"));
    assert_false(tg_metrics_admin_allowed(g_cfg, NULL, "key="));
    /* no admin key configured: open */
    struct tg_config open = *g_cfg;
    open.server.has_admin_key = false;
    assert_true(tg_metrics_admin_allowed(&open, NULL, NULL));
}

static void test_parse_time(void **state)
{
    static const struct {
        const char *in;
        int ok;
        long long t;
    } rows[] = {
        {"1763701200", 1, 1763701200},
        {"2025-11-21T05:00:00Z", 1, 1763701200},
        {"2025-11-21T05:00:00.123Z", 1, 1763701200},
        {"2025-11-21T07:00:00+02:00", 1, 1763701200},
        {"2025-11-21T07:00:00 02:00", 1, 1763701200}, /* '+' decoded as space */
        {"2025-11-21T00:00:00-05:00", 1, 1763701200},
        {"2025-11-21", 0, 0},
        {"2025-13-21T05:00:00Z", 0, 0},
        {"2025-11-21T05:00:00", 0, 0},
        {"yesterday", 0, 0},
        {"-5", 0, 0},
        {"", 0, 0},
        {"99999999999999999999", 0, 0},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        time_t t = 0;
        int rc = tg_usage_parse_time(rows[i].in, &t);
        assert_int_equal(rc == TG_OK, rows[i].ok);
        if (rows[i].ok)
            assert_int_equal((long long)t, rows[i].t);
    }
}

static void test_dashboard_page(void **state)
{
    size_t len = 0;
    const char *html = tg_dashboard_html(&len);
    assert_true(len > 1000);
    assert_int_equal(strlen(html), len);
    assert_non_null(strstr(html, "/v1/usage"));
    /* no CDN: nothing loaded from elsewhere */
    assert_null(strstr(html, "<script src"));
    assert_null(strstr(html, "<link"));
    assert_null(strstr(html, "https://"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cost_table),
        cmocka_unit_test(test_cost_format),
        cmocka_unit_test_setup_teardown(test_exposition, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(test_label_bounds, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(test_escaping, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(test_gauges, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(test_threads_exact_totals, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(test_promtool, reg_setup, reg_teardown),
        cmocka_unit_test_setup_teardown(test_reload_labels, reg_setup, reg_teardown),
        cmocka_unit_test(test_admin),
        cmocka_unit_test(test_parse_time),
        cmocka_unit_test(test_dashboard_page),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
