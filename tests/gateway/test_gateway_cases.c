/* Data-driven proxy cases (curl tests/data, HAProxy .vtc style): every file in
 * tests/gateway/cases is one JSON case
 *   {"description": "...",
 *    "script": ["fake upstream script", ...],                 (optional, queued on the fake)
 *    "request":  {"method","path","headers":{name:value},"body": JSON or "raw text"},
 *    "upstream": [{"path","headers":{lowercase name: value},"body": JSON}, ...] | null,
 *    "response": {"status", "headers":{lowercase name: value prefix}, "body": JSON}}
 * "upstream" lists the exact requests the provider must receive, in order (bodies compared as
 * JSON values, headers as a subset; null or [] = the request must not reach the provider).
 * response.body is matched as a subset: every key given must be there with an equal value
 * (arrays element by element); "<any>" matches any value, "<string>" any string. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>
#include <jansson.h>

#include "gw_testenv.h"

#define CASES_DIR TG_TEST_DIR "/gateway/cases"

static struct gw_env env;

static bool subset(const json_t *want, const json_t *got, char *path, size_t plen)
{
    if (want == NULL)
        return true;
    if (json_is_string(want) && strcmp(json_string_value(want), "<any>") == 0)
        return got != NULL;
    if (json_is_string(want) && strcmp(json_string_value(want), "<string>") == 0)
        return json_is_string(got);
    if (json_is_object(want)) {
        if (!json_is_object(got))
            return false;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)want, k, v)
        {
            size_t n = strlen(path);
            snprintf(path + n, plen - n, ".%s", k);
            if (!subset(v, json_object_get(got, k), path, plen))
                return false;
            path[n] = '\0';
        }
        return true;
    }
    if (json_is_array(want)) {
        if (!json_is_array(got) || json_array_size(got) != json_array_size(want))
            return false;
        for (size_t i = 0; i < json_array_size(want); i++) {
            size_t n = strlen(path);
            snprintf(path + n, plen - n, "[%zu]", i);
            if (!subset(json_array_get(want, i), json_array_get(got, i), path, plen))
                return false;
            path[n] = '\0';
        }
        return true;
    }
    return got != NULL && json_equal(want, got);
}

static json_t *fake_call(const char *method, const char *path, const char *body)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", env.fake_base, path);
    struct tg_test_response r;
    json_t *j = NULL;
    if (tg_test_http(method, url, NULL, body, &r) == 0) {
        json_error_t e;
        j = json_loadb(r.body, r.body_len, 0, &e);
    }
    tg_test_response_free(&r);
    return j;
}

static void run_case(const char *file)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", CASES_DIR, file);
    json_error_t e;
    json_t *c = json_load_file(path, 0, &e);
    if (c == NULL) {
        print_error("%s: %s (line %d)\n", file, e.text, e.line);
        fail();
    }
    json_decref(fake_call("POST", "/_reset", ""));
    json_t *script = json_object_get(c, "script");
    if (json_is_array(script)) {
        char *s = json_dumps(script, JSON_COMPACT);
        json_decref(fake_call("POST", "/_script", s));
        free(s);
    }
    json_t *req = json_object_get(c, "request");
    const char *method = json_string_value(json_object_get(req, "method"));
    const char *rpath = json_string_value(json_object_get(req, "path"));
    json_t *body = json_object_get(req, "body");
    char *body_text = json_is_string(body) ? strdup(json_string_value(body))
                      : body != NULL       ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER)
                                           : NULL;
    const char *hdrs[16];
    size_t nh = 0;
    char hbuf[16][256];
    json_t *rh = json_object_get(req, "headers");
    if (json_object_get(rh, "Authorization") == NULL)
        hdrs[nh++] = env.auth_header;
    const char *k;
    json_t *v;
    json_object_foreach(rh, k, v)
    {
        if (nh >= 15)
            break;
        snprintf(hbuf[nh], sizeof hbuf[nh], "%s: %s", k, json_string_value(v));
        hdrs[nh] = hbuf[nh];
        nh++;
    }
    hdrs[nh] = NULL;
    char url[256];
    snprintf(url, sizeof url, "%s%s", env.base, rpath);
    struct tg_test_response r;
    assert_int_equal(tg_test_http(method != NULL ? method : "POST", url, hdrs, body_text, &r), 0);
    free(body_text);

    json_t *want = json_object_get(c, "response");
    bool ok = true;
    char where[512] = "";
    if (r.status != json_integer_value(json_object_get(want, "status"))) {
        snprintf(where, sizeof where, "status %ld", r.status);
        ok = false;
    }
    json_object_foreach(json_object_get(want, "headers"), k, v)
    {
        char got[256];
        if (ok && (!tg_test_header(&r, k, got, sizeof got) ||
                   strncmp(got, json_string_value(v), strlen(json_string_value(v))) != 0)) {
            snprintf(where, sizeof where, "header %s", k);
            ok = false;
        }
    }
    json_t *wbody = json_object_get(want, "body");
    json_t *gbody = json_loadb(r.body, r.body_len, 0, &e);
    char jp[256] = "$";
    if (ok && wbody != NULL && !subset(wbody, gbody, jp, sizeof jp)) {
        snprintf(where, sizeof where, "response body at %s", jp);
        ok = false;
    }
    json_t *ups = json_object_get(c, "upstream");
    json_t *got_ups = fake_call("GET", "/_requests", NULL);
    size_t n_want = json_is_array(ups) ? json_array_size(ups) : 0;
    if (ok && json_array_size(got_ups) != n_want) {
        snprintf(where, sizeof where, "%zu upstream requests, want %zu", json_array_size(got_ups), n_want);
        ok = false;
    }
    for (size_t i = 0; ok && i < n_want; i++) {
        json_t *w = json_array_get(ups, i), *g = json_array_get(got_ups, i);
        if (!json_equal(json_object_get(w, "body"), json_object_get(g, "body"))) {
            snprintf(where, sizeof where, "upstream request %zu body", i);
            ok = false;
        }
        if (json_object_get(w, "path") != NULL &&
            !json_equal(json_object_get(w, "path"), json_object_get(g, "path"))) {
            snprintf(where, sizeof where, "upstream request %zu path", i);
            ok = false;
        }
        jp[0] = '\0';
        if (ok && !subset(json_object_get(w, "headers"), json_object_get(g, "headers"), jp, sizeof jp)) {
            snprintf(where, sizeof where, "upstream request %zu header%s", i, jp);
            ok = false;
        }
    }
    if (!ok) {
        /* bodies only, compact: cmocka truncates long messages */
        json_t *bodies = json_array();
        size_t bi;
        json_t *bv;
        json_array_foreach(got_ups, bi, bv)
            json_array_append(bodies, json_object_get(bv, "body"));
        char *gu = json_dumps(bodies, JSON_COMPACT);
        json_decref(bodies);
        print_error("case %s: mismatch in %s\nupstream bodies: %s\n", file, where,
                    gu != NULL ? gu : "null");
        print_error("response %ld: %.1500s\n", r.status, r.body);
        free(gu);
    }
    json_decref(gbody);
    json_decref(got_ups);
    tg_test_response_free(&r);
    json_decref(c);
    assert_true(ok);
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_cases(void **state)
{
    (void)state;
    DIR *d = opendir(CASES_DIR);
    assert_non_null(d);
    char *names[256];
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && n < 256) {
        size_t len = strlen(de->d_name);
        if (len > 5 && strcmp(de->d_name + len - 5, ".json") == 0)
            names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof names[0], cmp);
    assert_true(n > 0);
    for (size_t i = 0; i < n; i++) {
        printf("case %s\n", names[i]);
        run_case(names[i]);
        free(names[i]);
    }
}

static int setup(void **state)
{
    (void)state;
    return gw_env_start(&env, "", NULL, NULL) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    gw_env_stop(&env);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_cases)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
