/* JSON Schema subset: compile errors (exact messages), validation rows, and agreement with
 * Debian's json-schema-test-suite on every case whose schema compiles in our subset. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tg/err.h"
#include "tg/schema.h"

#ifndef TG_SCHEMA_SUITE_DIR
#define TG_SCHEMA_SUITE_DIR "/usr/share/json-schema-test-suite/tests"
#endif

/* ------------------------------------------------------------------ compile errors */

struct compile_row {
    const char *schema;
    int rc;
    const char *msg; /* exact error text, or NULL when rc == TG_OK */
};

static const struct compile_row compile_rows[] = {
    /* the subset compiles */
    {"{}", TG_OK, NULL},
    {"{\"type\":\"string\"}", TG_OK, NULL},
    {"{\"type\":[\"string\",\"null\"]}", TG_OK, NULL},
    {"{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}},\"required\":[\"a\"],"
     "\"additionalProperties\":false,\"title\":\"t\",\"description\":\"d\",\"$schema\":\"x\","
     "\"default\":{},\"examples\":[{}],\"$comment\":\"c\"}",
     TG_OK, NULL},
    {"{\"type\":\"array\",\"items\":{\"enum\":[1,\"a\",null,{\"x\":[1]}]}}", TG_OK, NULL},
    {"{\"const\":\"x\"}", TG_OK, NULL},
    {"{\"type\":\"string\",\"enum\":[\"a\",1]}", TG_OK, NULL},
    /* unsupported keywords name the path of the schema that holds them */
    {"{\"type\":\"object\",\"properties\":{\"items\":{\"type\":\"array\",\"items\":{\"oneOf\":[]}}}"
     "}",
     TG_SCHEMA, "schema path #/properties/items/items: unsupported keyword 'oneOf'"},
    {"{\"$ref\":\"#/definitions/a\"}", TG_SCHEMA, "schema path #: unsupported keyword '$ref'"},
    {"{\"type\":\"string\",\"pattern\":\"^a\"}", TG_SCHEMA,
     "schema path #: unsupported keyword 'pattern'"},
    {"{\"properties\":{\"a\":{\"type\":\"string\",\"minLength\":1}}}", TG_SCHEMA,
     "schema path #/properties/a: unsupported keyword 'minLength'"},
    {"{\"properties\":{\"a/b~c\":{\"format\":\"date\"}}}", TG_SCHEMA,
     "schema path #/properties/a~1b~0c: unsupported keyword 'format'"},
    {"{\"additionalProperties\":true}", TG_SCHEMA,
     "schema path #/additionalProperties: only 'false' is supported"},
    {"{\"additionalProperties\":{\"type\":\"string\"}}", TG_SCHEMA,
     "schema path #/additionalProperties: only 'false' is supported"},
    {"{\"items\":[{\"type\":\"string\"}]}", TG_SCHEMA,
     "schema path #/items: the list (tuple) form of 'items' is not supported"},
    {"{\"items\":true}", TG_SCHEMA, "schema path #/items: boolean schemas are not supported"},
    {"true", TG_SCHEMA, "schema path #: boolean schemas are not supported"},
    {"[1]", TG_SCHEMA, "schema path #: schema must be an object"},
    {"{\"properties\":{\"a\":3}}", TG_SCHEMA,
     "schema path #/properties/a: schema must be an object"},
    /* invalid schemas */
    {"{\"type\":3}", TG_SCHEMA, "schema path #/type: must be a string or a list of strings"},
    {"{\"type\":\"sting\"}", TG_SCHEMA, "schema path #/type: unknown type 'sting'"},
    {"{\"type\":[]}", TG_SCHEMA, "schema path #/type: type list is empty"},
    {"{\"type\":[\"string\",2]}", TG_SCHEMA,
     "schema path #/type: type list item 1 is not a string"},
    {"{\"type\":[\"null\",\"null\"]}", TG_SCHEMA,
     "schema path #/type: type 'null' is listed twice"},
    {"{\"properties\":[]}", TG_SCHEMA, "schema path #/properties: must be an object"},
    {"{\"properties\":{\"a\":{}},\"required\":\"a\"}", TG_SCHEMA,
     "schema path #/required: must be a list of strings"},
    {"{\"properties\":{\"a\":{}},\"required\":[1]}", TG_SCHEMA,
     "schema path #/required: item 0 is not a string"},
    {"{\"properties\":{\"a\":{}},\"required\":[\"a\",\"b\"]}", TG_SCHEMA,
     "schema path #/required: 'b' is not in properties"},
    {"{\"required\":[\"a\"]}", TG_SCHEMA, "schema path #/required: 'a' is not in properties"},
    {"{\"properties\":{\"a\":{}},\"required\":[\"a\",\"a\"]}", TG_SCHEMA,
     "schema path #/required: 'a' is listed twice"},
    {"{\"enum\":[]}", TG_SCHEMA, "schema path #/enum: must not be empty"},
    {"{\"enum\":{}}", TG_SCHEMA, "schema path #/enum: must be a list"},
    {"{\"enum\":[1,1.0]}", TG_SCHEMA, "schema path #/enum: values 0 and 1 are equal"},
    {"{\"type\":\"string\",\"enum\":[1,2]}", TG_SCHEMA,
     "schema path #: no value of 'enum' matches the rest of the schema"},
    {"{\"enum\":[1,2],\"const\":3}", TG_SCHEMA,
     "schema path #: no value of 'enum' matches the rest of the schema"},
    {"{\"type\":\"integer\",\"const\":1.5}", TG_SCHEMA,
     "schema path #: no value of 'const' matches the rest of the schema"},
};

static void test_compile_rows(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof compile_rows / sizeof compile_rows[0]; i++) {
        const struct compile_row *r = &compile_rows[i];
        char err[512] = "";
        struct tg_schema *s = NULL;
        int rc = tg_schema_compile_text(r->schema, strlen(r->schema), &s, err, sizeof err);
        if (rc != r->rc || (r->msg != NULL && strcmp(err, r->msg) != 0)) {
            print_error("row %zu: %s\n  rc %d (want %d), err '%s'\n  want '%s'\n", i, r->schema, rc,
                        r->rc, err, r->msg != NULL ? r->msg : "");
            fail();
        }
        if (rc == TG_OK) {
            assert_non_null(s);
            tg_schema_free(s);
        } else {
            assert_null(s); /* out-parameter untouched on failure */
        }
    }
}

/* Limits are enforced with a message naming where. */
static void test_compile_limits(void **state)
{
    (void)state;
    char err[512];
    struct tg_schema *s = NULL;

    /* depth: 33 nested "items" */
    char deep[2048] = "";
    size_t off = 0;
    for (int i = 0; i < 33; i++)
        off += (size_t)snprintf(deep + off, sizeof deep - off, "{\"items\":");
    off += (size_t)snprintf(deep + off, sizeof deep - off, "{}");
    for (int i = 0; i < 33; i++)
        off += (size_t)snprintf(deep + off, sizeof deep - off, "}");
    assert_int_equal(tg_schema_compile_text(deep, off, &s, err, sizeof err), TG_SCHEMA);
    assert_non_null(strstr(err, "nested deeper than 32 levels"));
    assert_non_null(strstr(err, "schema path #/items/items/"));

    /* 257 properties */
    json_t *props = json_object();
    for (int i = 0; i < 257; i++) {
        char k[16];
        snprintf(k, sizeof k, "p%d", i);
        json_object_set_new(props, k, json_object());
    }
    json_t *js = json_pack("{s:o}", "properties", props);
    assert_int_equal(tg_schema_compile(js, &s, err, sizeof err), TG_SCHEMA);
    assert_string_equal(err, "schema path #/properties: too many properties (257 > 256)");
    json_decref(js);

    /* 257 enum values */
    json_t *vals = json_array();
    for (int i = 0; i < 257; i++)
        json_array_append_new(vals, json_integer(i));
    js = json_pack("{s:o}", "enum", vals);
    assert_int_equal(tg_schema_compile(js, &s, err, sizeof err), TG_SCHEMA);
    assert_string_equal(err, "schema path #/enum: too many values (257 > 256)");
    json_decref(js);

    /* a property name built without jansson's UTF-8 check */
    js = json_object();
    props = json_object();
    json_object_set_new_nocheck(props, "bad\xC3", json_object());
    json_object_set_new(js, "properties", props);
    assert_int_equal(tg_schema_compile(js, &s, err, sizeof err), TG_SCHEMA);
    assert_string_equal(err, "schema path #/properties: a property name is not valid UTF-8");
    json_decref(js);

    /* invalid JSON text and NULL arguments */
    assert_int_equal(tg_schema_compile_text("{\"type\":", 8, &s, err, sizeof err), TG_SCHEMA);
    assert_non_null(strstr(err, "schema: invalid JSON at line 1"));
    assert_int_equal(tg_schema_compile(NULL, &s, err, sizeof err), TG_INVAL);
    /* err may be NULL */
    assert_int_equal(tg_schema_compile_text("{\"oneOf\":[]}", 12, &s, NULL, 0), TG_SCHEMA);
    /* a tiny err buffer is truncated, not overrun */
    char small[8];
    assert_int_equal(tg_schema_compile_text("{\"oneOf\":[]}", 12, &s, small, sizeof small),
                     TG_SCHEMA);
    assert_string_equal(small, "schema ");
}

/* ------------------------------------------------------------------ validation rows */

struct valid_row {
    const char *schema;
    const char *instance;
    const char *err; /* NULL = valid; else the exact message */
};

#define ORDER_SCHEMA                                                                               \
    "{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"integer\"},\"items\":{\"type\":"      \
    "\"array\",\"items\":{\"type\":\"object\",\"properties\":{\"sku\":{\"type\":\"string\"},"      \
    "\"price\":{\"type\":\"number\"}},\"required\":[\"sku\",\"price\"],"                           \
    "\"additionalProperties\":false}},\"status\":{\"enum\":[\"open\",\"paid\"]},"                  \
    "\"note\":{\"type\":[\"string\",\"null\"]}},\"required\":[\"id\",\"items\"]}"

static const struct valid_row valid_rows[] = {
    {"{\"type\":\"integer\"}", "3", NULL},
    {"{\"type\":\"integer\"}", "3.0", NULL},
    {"{\"type\":\"integer\"}", "-0.0", NULL},
    {"{\"type\":\"integer\"}", "3.5", "$: expected integer"},
    {"{\"type\":\"integer\"}", "\"3\"", "$: expected integer"},
    {"{\"type\":\"number\"}", "3", NULL},
    {"{\"type\":\"number\"}", "1e3", NULL},
    {"{\"type\":\"number\"}", "true", "$: expected number"},
    {"{\"type\":\"string\"}", "\"\"", NULL},
    {"{\"type\":\"string\"}", "null", "$: expected string"},
    {"{\"type\":\"boolean\"}", "false", NULL},
    {"{\"type\":\"boolean\"}", "0", "$: expected boolean"},
    {"{\"type\":\"null\"}", "null", NULL},
    {"{\"type\":\"null\"}", "{}", "$: expected null"},
    {"{\"type\":[\"string\",\"null\"]}", "null", NULL},
    {"{\"type\":[\"string\",\"null\"]}", "1", "$: expected null or string"},
    {"{\"type\":[\"integer\",\"boolean\",\"array\"]}", "{}",
     "$: expected boolean, array or integer"},
    {"{\"type\":[\"number\",\"integer\"]}", "\"x\"", "$: expected number"},
    {"{}", "[1,{\"a\":null}]", NULL},
    {"{\"enum\":[1,\"a\",null]}", "1.0", NULL},
    {"{\"enum\":[1,\"a\",null]}", "\"b\"", "$: value is not in the enum"},
    {"{\"enum\":[{\"a\":1,\"b\":[true]}]}", "{\"b\":[true],\"a\":1.0}", NULL},
    {"{\"enum\":[{\"a\":1,\"b\":[true]}]}", "{\"b\":[true],\"a\":1,\"c\":1}",
     "$: value is not in the enum"},
    {"{\"enum\":[[1,2]]}", "[2,1]", "$: value is not in the enum"},
    {"{\"enum\":[false]}", "0", "$: value is not in the enum"},
    {"{\"const\":\"x\"}", "\"y\"", "$: expected the const value"},
    {"{\"properties\":{\"a\":{\"type\":\"string\"}}}", "7", NULL},
    {"{\"properties\":{\"a\":{\"type\":\"string\"}}}", "{\"b\":1}", NULL},
    {"{\"properties\":{\"a\":{\"type\":\"string\"}}}", "{\"a\":1}", "$.a: expected string"},
    {"{\"properties\":{\"a b\":{\"type\":\"string\"}}}", "{\"a b\":1}",
     "$[\"a b\"]: expected string"},
    {"{\"properties\":{\"a\":{}},\"additionalProperties\":false}", "{\"a\":1,\"b\":2}",
     "$: unexpected property 'b'"},
    {"{\"additionalProperties\":false}", "{}", NULL},
    {"{\"additionalProperties\":false}", "{\"x\":0}", "$: unexpected property 'x'"},
    {"{\"items\":{\"type\":\"integer\"}}", "[1,2,\"3\"]", "$[2]: expected integer"},
    {"{\"items\":{\"type\":\"integer\"}}", "{\"0\":\"x\"}", NULL},
    {ORDER_SCHEMA, "{\"id\":1,\"items\":[]}", NULL},
    {ORDER_SCHEMA,
     "{\"id\":1,\"items\":[{\"sku\":\"a\",\"price\":1},{\"sku\":\"b\",\"price\":2.5},"
     "{\"sku\":\"c\",\"price\":\"9\"}]}",
     "$.items[2].price: expected number"},
    {ORDER_SCHEMA, "{\"id\":1,\"items\":[{\"sku\":\"a\"}]}",
     "$.items[0]: missing required property 'price'"},
    {ORDER_SCHEMA, "{\"id\":1,\"items\":[{\"sku\":\"a\",\"price\":1,\"qty\":2}]}",
     "$.items[0]: unexpected property 'qty'"},
    {ORDER_SCHEMA, "{\"items\":[]}", "$: missing required property 'id'"},
    {ORDER_SCHEMA, "{\"id\":1,\"items\":[],\"status\":\"void\"}",
     "$.status: value is not in the enum"},
    {ORDER_SCHEMA, "{\"id\":1,\"items\":[],\"note\":null,\"extra\":1}", NULL},
    {ORDER_SCHEMA, "{\"id\":1.5,\"items\":[]}", "$.id: expected integer"},
};

static void test_validate_rows(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof valid_rows / sizeof valid_rows[0]; i++) {
        const struct valid_row *r = &valid_rows[i];
        char err[512] = "";
        struct tg_schema *s = NULL;
        int rc = tg_schema_compile_text(r->schema, strlen(r->schema), &s, err, sizeof err);
        if (rc != TG_OK) {
            print_error("row %zu: schema does not compile: %s\n", i, err);
            fail();
        }
        err[0] = '\0';
        bool ok = tg_schema_validate_text(s, r->instance, strlen(r->instance), err, sizeof err);
        bool want = r->err == NULL;
        if (ok != want || (!ok && strcmp(err, r->err) != 0)) {
            print_error("row %zu: %s against %s\n  got %s '%s', want %s '%s'\n", i, r->instance,
                        r->schema, ok ? "valid" : "invalid", err, want ? "valid" : "invalid",
                        r->err != NULL ? r->err : "");
            fail();
        }
        tg_schema_free(s);
    }
}

static void test_validate_text_errors(void **state)
{
    (void)state;
    struct tg_schema *s = NULL;
    char err[256];
    assert_int_equal(tg_schema_compile_text("{}", 2, &s, err, sizeof err), TG_OK);
    assert_false(tg_schema_validate_text(s, "{\"a\":", 5, err, sizeof err));
    assert_non_null(strstr(err, "invalid JSON at line 1"));
    assert_false(tg_schema_validate_text(s, "{} x", 4, err, sizeof err));
    assert_false(tg_schema_validate_text(s, "\"\xC0\x80\"", 4, err, sizeof err)); /* overlong */
    assert_true(tg_schema_validate_text(s, "\"\\u0000\"", 8, err, sizeof err));
    assert_false(
        tg_schema_validate_text(s, "\"\\ud800\"", 8, err, sizeof err)); /* lone surrogate */
    assert_true(tg_schema_validate_text(s, "  [1]  ", 7, err, sizeof err));
    assert_false(tg_schema_validate(NULL, NULL, err, sizeof err));
    assert_false(tg_schema_validate_text(s, NULL, 0, err, sizeof err));
    tg_schema_free(s);
    tg_schema_free(NULL);
}

/* ------------------------------------------------------------------ json-schema-test-suite */

static const char *const suite_drafts[] = {"draft4", "draft6", "draft7"};
/* Files about the keywords of our subset (const only exists from draft 6 on). */
static const char *const suite_files[] = {
    "type.json",  "properties.json",           "required.json", "enum.json",
    "items.json", "additionalProperties.json", "const.json",    "default.json"};

static void test_json_schema_suite(void **state)
{
    (void)state;
    size_t groups = 0, compiled = 0, cases = 0;
    for (size_t d = 0; d < sizeof suite_drafts / sizeof suite_drafts[0]; d++) {
        for (size_t f = 0; f < sizeof suite_files / sizeof suite_files[0]; f++) {
            char path[512];
            snprintf(path, sizeof path, "%s/%s/%s", TG_SCHEMA_SUITE_DIR, suite_drafts[d],
                     suite_files[f]);
            json_error_t je;
            /* The suite has strings with U+0000 in them (enum "nul characters in strings"). */
            json_t *doc = json_load_file(path, JSON_ALLOW_NUL, &je);
            if (doc == NULL) {
                if (strcmp(suite_files[f], "const.json") == 0 && d == 0)
                    continue; /* draft 4 has no const */
                print_error("%s: %s (is json-schema-test-suite installed?)\n", path, je.text);
                fail();
            }
            assert_true(json_is_array(doc));
            size_t gi;
            json_t *group;
            json_array_foreach(doc, gi, group)
            {
                groups++;
                struct tg_schema *s = NULL;
                char err[512];
                if (tg_schema_compile(json_object_get(group, "schema"), &s, err, sizeof err) !=
                    TG_OK)
                    continue;
                compiled++;
                size_t ti;
                json_t *tc;
                json_array_foreach(json_object_get(group, "tests"), ti, tc)
                {
                    bool want = json_is_true(json_object_get(tc, "valid"));
                    err[0] = '\0';
                    bool got = tg_schema_validate(s, json_object_get(tc, "data"), err, sizeof err);
                    cases++;
                    if (got != want) {
                        print_error("%s/%s: '%s' / '%s': got %s (%s), suite says %s\n",
                                    suite_drafts[d], suite_files[f],
                                    json_string_value(json_object_get(group, "description")),
                                    json_string_value(json_object_get(tc, "description")),
                                    got ? "valid" : "invalid", err, want ? "valid" : "invalid");
                        fail();
                    }
                }
                tg_schema_free(s);
            }
            json_decref(doc);
        }
    }
    print_message("json-schema-test-suite: %zu of %zu schemas in our subset, %zu cases agree\n",
                  compiled, groups, cases);
    /* The subset covers most of these files; a collapse here means compile went too strict. */
    assert_true(compiled >= 40);
    assert_true(cases >= 200);
}

/* ------------------------------------------------------------------ GBNF text */

/* The exact grammar for a small schema: property order, required/optional comma chains, enum
 * literals, type lists, bounded arrays/strings/digits, no whitespace when max_ws is 0. That
 * llama.cpp parses it and samples only valid JSON from it is test_gbnf's job. */
static void test_gbnf_golden(void **state)
{
    (void)state;
    const char *schema =
        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"},\"b\":{\"enum\":[\"x\","
        "2]},"
        "\"c\":{\"type\":[\"string\",\"null\"]},\"d\":{\"type\":\"array\",\"items\":{\"type\":"
        "\"boolean\"}}},\"required\":[\"b\"],\"additionalProperties\":false}";
    struct tg_schema *s = NULL;
    char err[256];
    assert_int_equal(tg_schema_compile_text(schema, strlen(schema), &s, err, sizeof err), TG_OK);
    struct tg_gbnf_opts o = {.max_string_chars = 4,
                             .max_array_items = 2,
                             .max_ws = 0,
                             .max_number_digits = 3,
                             .any_depth = 1};
    char *g = tg_schema_to_gbnf_opts(s, &o);
    assert_non_null(g);
    assert_string_equal(g, "root ::= s0\n"
                           "s0 ::= s0-obj\n"
                           "s0-obj ::= \"{\" s0-p0 \"}\"\n"
                           "s0-kv0 ::= \"\\\"a\\\"\" \":\" s1\n"
                           "s0-kv1 ::= \"\\\"b\\\"\" \":\" s2\n"
                           "s0-kv2 ::= \"\\\"c\\\"\" \":\" s3\n"
                           "s0-kv3 ::= \"\\\"d\\\"\" \":\" s4\n"
                           "s0-p0 ::= s0-kv0 s0-r1 | s0-p1\n"
                           "s0-p1 ::= s0-kv1 s0-r2\n"
                           "s0-r1 ::= \",\" s0-kv1 s0-r2\n"
                           "s0-r2 ::= (\",\" s0-kv2)? s0-r3\n"
                           "s0-r3 ::= (\",\" s0-kv3)?\n"
                           "s1 ::= integer\n"
                           "s2 ::= \"\\\"x\\\"\" | \"2\"\n"
                           "s3 ::= null | string\n"
                           "s4 ::= (\"[\" (s5 (\",\" s5){0,1})? \"]\")\n"
                           "s5 ::= boolean\n"
                           "string ::= \"\\\"\" char{0,4} \"\\\"\"\n"
                           "char ::= [^\"\\\\\\x00-\\x1F\\uD800-\\uDFFF\\U00110000-\\U7FFFFFFF] | "
                           "\"\\\\\" [\"\\\\/bfnrt]\n"
                           "integer ::= \"-\"? (\"0\" | [1-9] [0-9]{0,2})\n"
                           "boolean ::= \"true\" | \"false\"\n"
                           "null ::= \"null\"\n");
    free(g);

    /* defaults: bounded whitespace, 256-char strings, 16 items; enum values the type rules out
     * are left out of the grammar */
    tg_schema_free(s);
    schema = "{\"type\":\"array\",\"items\":{\"type\":\"string\",\"enum\":[\"k\",7]}}";
    assert_int_equal(tg_schema_compile_text(schema, strlen(schema), &s, err, sizeof err), TG_OK);
    g = tg_schema_to_gbnf(s);
    assert_string_equal(g, "root ::= s0\n"
                           "s0 ::= (\"[\" ws (s1 ws (\",\" ws s1 ws){0,15})? \"]\")\n"
                           "s1 ::= \"\\\"k\\\"\"\n"
                           "ws ::= [ \\t\\n]{0,1}\n");
    free(g);
    tg_schema_free(s);

    /* free-form JSON: bounded depth, and a plain {} when any_depth is 0 */
    schema = "{\"properties\":{\"m\":{\"type\":\"object\"}},\"required\":[\"m\"]}";
    assert_int_equal(tg_schema_compile_text(schema, strlen(schema), &s, err, sizeof err), TG_OK);
    o.any_depth = 0;
    g = tg_schema_to_gbnf_opts(s, &o);
    assert_non_null(strstr(g, "s1 ::= (\"{\" \"}\")\n"));
    assert_null(strstr(g, "any"));
    free(g);
    g = tg_schema_to_gbnf(s);
    assert_non_null(strstr(g, "s1 ::= any-obj2\n"));
    assert_non_null(strstr(g, "any-obj2 ::= \"{\" ws (string ws \":\" ws any1 ws"));
    assert_null(strstr(g, "any3"));
    free(g);
    tg_schema_free(s);
    assert_null(tg_schema_to_gbnf(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compile_rows),      cmocka_unit_test(test_compile_limits),
        cmocka_unit_test(test_validate_rows),     cmocka_unit_test(test_validate_text_errors),
        cmocka_unit_test(test_json_schema_suite), cmocka_unit_test(test_gbnf_golden),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
