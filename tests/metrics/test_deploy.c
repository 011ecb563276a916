/* deploy/grafana/tiergate.json and deploy/prometheus/prometheus.yml: the JSON parses, every panel
 * queries Prometheus, every tiergate_* name in a PromQL expression is a family our exposition
 * declares, the dashboard has the panels the issue asks for, and promtool accepts the config. */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>
#include <jansson.h>

#include "metrics.h"
#include "tg/buf.h"
#include "tg/err.h"

static char *g_exposition;

static int setup(void **state)
{
    if (tg_metrics_init(NULL, "test") != TG_OK)
        return -1;
    struct tg_buf b;
    tg_buf_init(&b, 0);
    int rc = tg_metrics_render(&b);
    g_exposition = tg_buf_detach(&b);
    tg_metrics_shutdown();
    return rc == TG_OK ? 0 : -1;
}

static int teardown(void **state)
{
    free(g_exposition);
    return 0;
}

/* "# TYPE <name> <type>" declared in the exposition; *type gets the type. */
static bool declared(const char *name, char *type, size_t typelen)
{
    char want[160];
    snprintf(want, sizeof want, "# TYPE %s ", name);
    const char *p = strstr(g_exposition, want);
    if (p == NULL)
        return false;
    p += strlen(want);
    snprintf(type, typelen, "%.*s", (int)strcspn(p, "\n"), p);
    return true;
}

static void check_expr(const char *expr, size_t *n_names)
{
    for (const char *p = strstr(expr, "tiergate_"); p != NULL; p = strstr(p, "tiergate_")) {
        size_t n = 0;
        while (islower((unsigned char)p[n]) || isdigit((unsigned char)p[n]) || p[n] == '_')
            n++;
        char name[160], type[32];
        snprintf(name, sizeof name, "%.*s", (int)n, p);
        p += n;
        if (declared(name, type, sizeof type)) {
            (*n_names)++;
            continue;
        }
        /* histogram series: <family>_bucket / _sum / _count */
        static const char *const sfx[] = {"_bucket", "_sum", "_count"};
        bool ok = false;
        for (size_t i = 0; i < 3 && !ok; i++) {
            size_t sl = strlen(sfx[i]);
            if (n > sl && strcmp(name + n - sl, sfx[i]) == 0) {
                name[n - sl] = '\0';
                ok = declared(name, type, sizeof type) && strcmp(type, "histogram") == 0;
            }
        }
        if (!ok)
            fail_msg("grafana expr uses '%.*s', which /metrics does not expose: %s", (int)n, p - n,
                     expr);
        (*n_names)++;
    }
}

static void test_grafana(void **state)
{
    json_error_t je;
    json_t *d = json_load_file(TG_SOURCE_DIR "/deploy/grafana/tiergate.json", 0, &je);
    if (d == NULL)
        fail_msg("tiergate.json:%d: %s", je.line, je.text);
    json_t *panels = json_object_get(d, "panels");
    assert_true(json_is_array(panels));
    assert_true(json_array_size(panels) >= 10);
    size_t i, j, n_names = 0;
    json_t *p, *t;
    char titles[4096] = "";
    json_array_foreach(panels, i, p) {
        const char *title = json_string_value(json_object_get(p, "title"));
        assert_non_null(title);
        strncat(titles, title, sizeof titles - strlen(titles) - 2);
        strncat(titles, "\n", sizeof titles - strlen(titles) - 1);
        json_t *targets = json_object_get(p, "targets");
        assert_true(json_array_size(targets) >= 1);
        json_array_foreach(targets, j, t) {
            const char *expr = json_string_value(json_object_get(t, "expr"));
            assert_non_null(expr);
            assert_non_null(strstr(expr, "tiergate_"));
            check_expr(expr, &n_names);
        }
        /* ${datasource}: works both provisioned (deploy/grafana/provisioning) and imported */
        json_t *ds = json_object_get(p, "datasource");
        assert_string_equal(json_string_value(json_object_get(ds, "type")), "prometheus");
        assert_string_equal(json_string_value(json_object_get(ds, "uid")), "${datasource}");
    }
    assert_true(n_names >= 20);
    json_t *var = json_array_get(json_object_get(json_object_get(d, "templating"), "list"), 0);
    assert_string_equal(json_string_value(json_object_get(var, "name")), "datasource");
    assert_string_equal(json_string_value(json_object_get(var, "type")), "datasource");
    assert_string_equal(json_string_value(json_object_get(var, "query")), "prometheus");
    /* the panels of the built-in dashboard */
    static const char *const must[] = {"Spend vs avoided spend", "Share served", "Requests per second",
                                       "Latency", "Top escalation reasons", "Top fallback reasons"};
    for (size_t k = 0; k < sizeof must / sizeof must[0]; k++)
        if (strstr(titles, must[k]) == NULL)
            fail_msg("no panel titled '%s'", must[k]);
    json_decref(d);
}

static void test_prometheus_config(void **state)
{
    FILE *f = fopen(TG_SOURCE_DIR "/deploy/prometheus/prometheus.yml", "r");
    assert_non_null(f);
    char text[8192];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    assert_non_null(strstr(text, "job_name: tiergate"));
    assert_non_null(strstr(text, "metrics_path: /metrics"));
    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        skip();
        return;
    }
    int st = system("promtool check config '" TG_SOURCE_DIR "/deploy/prometheus/prometheus.yml'");
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grafana),
        cmocka_unit_test(test_prometheus_config),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
