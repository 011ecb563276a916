/* Every deployment file parses, and the files agree with each other and with the binary: ports,
 * paths, probes, service names, the config inside the Kubernetes ConfigMap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tg_testlib.h"
#include <jansson.h>

#include "tg/config.h"
#include "tg/err.h"
#include "tg/yaml.h"

#define DEPLOY TG_SOURCE_DIR "/deploy/"

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static struct tg_ydoc *load(const char *path)
{
    char err[512];
    struct tg_ydoc *d = tg_ydoc_load(path, err, sizeof err);
    if (d == NULL)
        print_error("%s\n", err);
    assert_non_null(d);
    return d;
}

/* "a.b.0.c" path lookup; numbers index lists */
static const struct tg_ynode *at(const struct tg_ynode *n, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    /* split on '.', except inside "routes.yaml" style keys we look up whole */
    char *parts[32];
    int np = 0;
    for (char *p = buf; np < 32;) {
        parts[np++] = p;
        char *dot = strchr(p, '.');
        if (dot == NULL || strncmp(p, "routes.yaml", 11) == 0)
            break;
        *dot = '\0';
        p = dot + 1;
    }
    for (int k = 0; k < np && n != NULL; k++) {
        char *tok = parts[k];
        if (n->type == TG_Y_SEQ) {
            char *end;
            long i = strtol(tok, &end, 10);
            n = (*end == '\0' && i >= 0 && (size_t)i < n->n) ? n->items[i] : NULL;
        } else {
            n = tg_y_get(n, tok);
        }
    }
    return n;
}

static const char *str_at(const struct tg_ynode *n, const char *path)
{
    const struct tg_ynode *v = at(n, path);
    if (v == NULL || v->type != TG_Y_SCALAR) {
        print_error("missing scalar at %s\n", path);
        fail();
    }
    return v->value;
}

static bool seq_has(const struct tg_ynode *seq, const char *value)
{
    for (size_t i = 0; seq != NULL && seq->type == TG_Y_SEQ && i < seq->n; i++)
        if (seq->items[i]->type == TG_Y_SCALAR && strcmp(seq->items[i]->value, value) == 0)
            return true;
    return false;
}

static void test_compose(void **state)
{
    (void)state;
    struct tg_ydoc *d = load(DEPLOY "docker-compose.yml");
    const struct tg_ynode *s = at(tg_ydoc_root(d), "services");
    const char *names[] = {"tiergate", "redis", "prometheus", "grafana"};
    for (int i = 0; i < 4; i++)
        assert_non_null(tg_y_get(s, names[i]));
    assert_true(seq_has(at(s, "tiergate.ports"), "8080:8080"));
    assert_string_equal(str_at(s, "tiergate.environment.TIERGATE_LISTEN"), "0.0.0.0:8080");
    assert_string_equal(str_at(s, "tiergate.environment.TIERGATE_REDIS_URL"), "redis://redis:6379/0");
    assert_string_equal(str_at(s, "tiergate.build.dockerfile"), "deploy/Dockerfile");
    assert_true(exists(DEPLOY "../deploy/Dockerfile"));
    /* every host path mounted from the repo exists (./models is the user's) */
    const char *svcs[] = {"prometheus", "grafana"};
    for (int i = 0; i < 2; i++) {
        const struct tg_ynode *vols = at(s, svcs[i]);
        vols = tg_y_get(vols, "volumes");
        assert_non_null(vols);
        for (size_t j = 0; j < vols->n; j++) {
            char host[256];
            snprintf(host, sizeof host, "%s", vols->items[j]->value);
            char *colon = strchr(host, ':');
            assert_non_null(colon);
            *colon = '\0';
            char path[512];
            snprintf(path, sizeof path, DEPLOY "%s", host);
            if (!exists(path))
                print_error("compose mounts %s which does not exist\n", path);
            assert_true(exists(path));
        }
    }
    tg_ydoc_free(d);

    /* Prometheus scrapes the compose service on its port */
    char *prom = tg_test_slurp(DEPLOY "prometheus/prometheus.yml", NULL);
    assert_non_null(prom);
    assert_non_null(strstr(prom, "tiergate:8080"));
    free(prom);
}

static void test_dockerfile_and_systemd(void **state)
{
    (void)state;
    char *df = tg_test_slurp(DEPLOY "Dockerfile", NULL);
    assert_non_null(df);
    assert_non_null(strstr(df, "\nEXPOSE 8080\n"));
    assert_non_null(strstr(df, "ENTRYPOINT [\"/usr/local/bin/tiergate\"]"));
    assert_non_null(strstr(df, "VOLUME [\"/models\"]"));
    assert_non_null(strstr(df, "TIERGATE_LISTEN=0.0.0.0:8080"));
    assert_true(exists(TG_SOURCE_DIR "/routes.yaml"));
    assert_true(exists(TG_SOURCE_DIR "/policies"));
    free(df);

    char *unit = tg_test_slurp(DEPLOY "systemd/tiergate.service", NULL);
    assert_non_null(unit);
    assert_non_null(strstr(unit, "\nExecStart=/usr/local/bin/tiergate --config /etc/tiergate/routes.yaml\n"));
    assert_non_null(strstr(unit, "\nExecReload=/bin/kill -HUP $MAINPID\n"));
    assert_non_null(strstr(unit, "\nNoNewPrivileges=yes\n"));
    assert_non_null(strstr(unit, "\nProtectSystem=strict\n"));
    free(unit);
}

static void test_kubernetes(void **state)
{
    (void)state;
    struct tg_ydoc *dep = load(DEPLOY "k8s/deployment.yaml");
    const struct tg_ynode *r = tg_ydoc_root(dep);
    assert_string_equal(str_at(r, "kind"), "Deployment");
    const struct tg_ynode *c = at(r, "spec.template.spec.containers.0");
    assert_non_null(c);
    assert_string_equal(str_at(c, "ports.0.name"), "http");
    assert_string_equal(str_at(c, "ports.0.containerPort"), "8080");
    assert_string_equal(str_at(c, "readinessProbe.httpGet.path"), "/readyz");
    assert_string_equal(str_at(c, "readinessProbe.httpGet.port"), "http");
    assert_string_equal(str_at(c, "livenessProbe.httpGet.path"), "/healthz");
    assert_string_equal(str_at(c, "livenessProbe.httpGet.port"), "http");
    /* the binary is told to read the ConfigMap key where it is mounted */
    assert_string_equal(str_at(c, "args.1"), "/etc/tiergate/config/routes.yaml");
    assert_string_equal(str_at(c, "volumeMounts.0.mountPath"), "/etc/tiergate/config");
    assert_string_equal(str_at(r, "spec.template.spec.volumes.0.configMap.name"), "tiergate-config");
    assert_string_equal(str_at(c, "envFrom.0.secretRef.name"), "tiergate-secrets");
    const char *app = str_at(r, "spec.template.metadata.labels.app");

    struct tg_ydoc *svc = load(DEPLOY "k8s/service.yaml");
    assert_string_equal(str_at(tg_ydoc_root(svc), "spec.selector.app"), app);
    assert_string_equal(str_at(tg_ydoc_root(svc), "spec.ports.0.targetPort"), "8080");
    struct tg_ydoc *hpa = load(DEPLOY "k8s/hpa.yaml");
    assert_string_equal(str_at(tg_ydoc_root(hpa), "spec.scaleTargetRef.name"), str_at(r, "metadata.name"));

    /* the routes.yaml inside the ConfigMap is a valid tiergate config once its secrets exist */
    char *cm_raw = tg_test_slurp(DEPLOY "k8s/configmap.yaml", NULL);
    char *secret = tg_test_slurp(DEPLOY "k8s/secret.yaml", NULL);
    const char *vars[] = {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TIERGATE_API_KEY_SHA256", "TIERGATE_ADMIN_KEY_SHA256"};
    for (int i = 0; i < 4; i++) {
        char ref[64];
        snprintf(ref, sizeof ref, "${%s}", vars[i]);
        assert_non_null(strstr(cm_raw, ref));
        assert_non_null(strstr(secret, vars[i]));
    }
    free(secret);
    free(cm_raw);
    /* the YAML loader interpolates while loading: set the secrets as Kubernetes would */
    setenv("TIERGATE_API_KEY_SHA256", "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b", 1);
    setenv("TIERGATE_ADMIN_KEY_SHA256", "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b", 1);
    struct tg_ydoc *cm = load(DEPLOY "k8s/configmap.yaml");
    assert_string_equal(str_at(tg_ydoc_root(cm), "metadata.name"), "tiergate-config");
    const char *routes = str_at(tg_ydoc_root(cm), "data.routes.yaml");
    char tmpl[] = "/tmp/tg-cm-XXXXXX";
    int fd = mkstemp(tmpl);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(routes, f);
    fclose(f);
    struct tg_config *cfg = NULL;
    char err[1024] = "";
    int rc = tg_config_load(tmpl, &cfg, err, sizeof err);
    if (rc != TG_OK)
        print_error("%s\n", err);
    assert_int_equal(rc, TG_OK);
    assert_int_equal(cfg->server.port, 8080);
    assert_string_equal(cfg->local.workers[0], "tcp://tiergate-engine:5555");
    tg_config_unref(cfg);
    unlink(tmpl);

    /* engine workers: a Deployment and a Service in one file, port 5555 as the config expects */
    char *ew = tg_test_slurp(DEPLOY "k8s/engine-worker.yaml", NULL);
    assert_non_null(ew);
    char *sep = strstr(ew, "\n---\n");
    assert_non_null(sep);
    *sep = '\0';
    struct tg_ydoc *wd = tg_ydoc_load_string("engine-worker.yaml#0", ew, strlen(ew), err, sizeof err);
    struct tg_ydoc *ws = tg_ydoc_load_string("engine-worker.yaml#1", sep + 5, strlen(sep + 5), err, sizeof err);
    assert_non_null(wd);
    assert_non_null(ws);
    const struct tg_ynode *wc = at(tg_ydoc_root(wd), "spec.template.spec.containers.0");
    assert_string_equal(str_at(wc, "args.0"), "engine");
    assert_string_equal(str_at(wc, "args.1"), "--listen");
    assert_string_equal(str_at(wc, "args.2"), "tcp://0.0.0.0:5555");
    assert_string_equal(str_at(wc, "ports.0.containerPort"), "5555");
    assert_string_equal(str_at(tg_ydoc_root(ws), "metadata.name"), "tiergate-engine");
    assert_string_equal(str_at(tg_ydoc_root(ws), "spec.ports.0.port"), "5555");
    free(ew);
    tg_ydoc_free(wd);
    tg_ydoc_free(ws);
    tg_ydoc_free(cm);
    tg_ydoc_free(hpa);
    tg_ydoc_free(svc);
    tg_ydoc_free(dep);
}

static void test_grafana(void **state)
{
    (void)state;
    json_error_t je;
    json_t *dash = json_load_file(DEPLOY "grafana/tiergate.json", 0, &je);
    if (dash == NULL)
        print_error("grafana/tiergate.json:%d: %s\n", je.line, je.text);
    assert_non_null(dash);
    assert_true(json_array_size(json_object_get(dash, "panels")) > 0);
    json_decref(dash);
    struct tg_ydoc *ds = load(DEPLOY "grafana/provisioning/datasources/prometheus.yml");
    assert_string_equal(str_at(tg_ydoc_root(ds), "datasources.0.url"), "http://prometheus:9090");
    tg_ydoc_free(ds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compose),
        cmocka_unit_test(test_dockerfile_and_systemd),
        cmocka_unit_test(test_kubernetes),
        cmocka_unit_test(test_grafana),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
