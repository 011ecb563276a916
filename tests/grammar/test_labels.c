/* Label grammars: label-set checks, exact GBNF text (escaping), and the parser back to indices.
 * That llama.cpp accepts these grammars and samples only labels is in test_gbnf.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "tg/err.h"
#include "tg/grammar.h"

struct check_row {
    const char *labels[4];
    size_t n;
    int rc;
    const char *msg;
};

static const struct check_row check_rows[] = {
    {{"spam", "ham"}, 2, TG_OK, NULL},
    {{"a"}, 1, TG_OK, NULL},
    {{"naïve", "日本語", "a\"b\\c"}, 3, TG_OK, NULL},
    {{"x"}, 0, TG_INVAL, "no labels given"},
    {{"spam", ""}, 2, TG_INVAL, "label 1 is empty"},
    {{"spam", NULL}, 2, TG_INVAL, "label 1 is empty"},
    {{"spam", "ham", "spam"}, 3, TG_INVAL, "label 2 duplicates label 0 ('spam')"},
    {{"ok", "\xC3\x28"}, 2, TG_INVAL, "label 1 is not valid UTF-8"},
    {{"\xED\xA0\x80"}, 1, TG_INVAL, "label 0 is not valid UTF-8"}, /* surrogate */
};

static void test_check_rows(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof check_rows / sizeof check_rows[0]; i++) {
        const struct check_row *r = &check_rows[i];
        char err[256] = "";
        int rc = tg_grammar_check_labels(r->labels, r->n, err, sizeof err);
        if (rc != r->rc || (r->msg != NULL && strcmp(err, r->msg) != 0)) {
            print_error("row %zu: rc %d '%s', want %d '%s'\n", i, rc, err, r->rc,
                        r->msg != NULL ? r->msg : "");
            fail();
        }
        char *g = tg_grammar_labels(r->labels, r->n, false, err, sizeof err);
        assert_true((g != NULL) == (r->rc == TG_OK));
        free(g);
    }
}

static void test_limits(void **state)
{
    (void)state;
    static char names[TG_GRAMMAR_MAX_LABELS + 1][8];
    const char *labels[TG_GRAMMAR_MAX_LABELS + 1];
    for (size_t i = 0; i <= TG_GRAMMAR_MAX_LABELS; i++) {
        snprintf(names[i], sizeof names[i], "l%zu", i);
        labels[i] = names[i];
    }
    char err[256];
    assert_int_equal(tg_grammar_check_labels(labels, TG_GRAMMAR_MAX_LABELS, err, sizeof err),
                     TG_OK);
    assert_int_equal(tg_grammar_check_labels(labels, TG_GRAMMAR_MAX_LABELS + 1, err, sizeof err),
                     TG_INVAL);
    assert_string_equal(err, "too many labels (257 > 256)");
    char *g = tg_grammar_labels(labels, TG_GRAMMAR_MAX_LABELS, true, err, sizeof err);
    assert_non_null(g);
    assert_non_null(strstr(g, "(\",\" item){0,255}"));
    free(g);

    char longl[TG_GRAMMAR_MAX_LABEL_BYTES + 2];
    memset(longl, 'x', sizeof longl - 1);
    longl[sizeof longl - 1] = '\0';
    const char *one[] = {longl};
    assert_int_equal(tg_grammar_check_labels(one, 1, err, sizeof err), TG_INVAL);
    assert_string_equal(err, "label 0 is longer than 256 bytes");
}

static void test_grammar_text(void **state)
{
    (void)state;
    const char *labels[] = {"positive", "a\"b\\c", "tab\there", "naïve"};
    char err[256];
    char *g = tg_grammar_labels(labels, 4, false, err, sizeof err);
    assert_non_null(g);
    assert_string_equal(g, "root ::= \"positive\" |\n"
                           "    \"a\\\"b\\\\c\" |\n"
                           "    \"tab\\there\" |\n"
                           "    \"naïve\"\n");
    free(g);

    g = tg_grammar_labels(labels, 4, true, err, sizeof err);
    assert_non_null(g);
    /* Each label is a JSON string (a"b\c -> "a\"b\\c"), escaped again for GBNF. */
    assert_string_equal(g, "root ::= \"[\" item (\",\" item){0,3} \"]\"\n"
                           "item ::= \"\\\"positive\\\"\" |\n"
                           "    \"\\\"a\\\\\\\"b\\\\\\\\c\\\"\" |\n"
                           "    \"\\\"tab\\\\there\\\"\" |\n"
                           "    \"\\\"naïve\\\"\"\n");
    free(g);

    const char *one[] = {"only"};
    g = tg_grammar_labels(one, 1, true, err, sizeof err);
    assert_string_equal(g,
                        "root ::= \"[\" item (\",\" item){0,0} \"]\"\nitem ::= \"\\\"only\\\"\"\n");
    free(g);
}

struct parse_row {
    bool multi;
    const char *text;
    int rc;
    size_t n;
    size_t idx[4];
    const char *msg;
};

static const struct parse_row parse_rows[] = {
    {false, "spam", TG_OK, 1, {0}, NULL},
    {false, " ham\n", TG_OK, 1, {1}, NULL},
    {false, "a\"b", TG_OK, 1, {2}, NULL},
    {false, "Spam", TG_PARSE, 0, {0}, "not a label: 'Spam'"},
    {false, "spam ham", TG_PARSE, 0, {0}, "not a label: 'spam ham'"},
    {false, "", TG_PARSE, 0, {0}, "not a label: ''"},
    {true, "[\"ham\"]", TG_OK, 1, {1}, NULL},
    {true, "[\"ham\",\"spam\",\"ham\",\"naïve\"]", TG_OK, 3, {1, 0, 3}, NULL},
    {true, "[\"a\\\"b\"]", TG_OK, 1, {2}, NULL},
    {true, "[]", TG_OK, 0, {0}, NULL},
    {true, "[\"eggs\"]", TG_PARSE, 0, {0}, "item 0 is not a label: 'eggs'"},
    {true, "[\"ham\",1]", TG_PARSE, 0, {0}, "item 1 is not a string"},
    {true, "\"ham\"", TG_PARSE, 0, {0}, "expected a JSON array of labels"},
    {true, "[\"ham\"", TG_PARSE, 0, {0}, NULL},
};

static void test_parse_rows(void **state)
{
    (void)state;
    const char *labels[] = {"spam", "ham", "a\"b", "naïve"};
    for (size_t i = 0; i < sizeof parse_rows / sizeof parse_rows[0]; i++) {
        const struct parse_row *r = &parse_rows[i];
        size_t idx[4] = {99, 99, 99, 99};
        size_t n = 99;
        char err[256] = "";
        int rc = tg_grammar_parse_labels(labels, 4, r->multi, r->text, strlen(r->text), idx, 4, &n,
                                         err, sizeof err);
        if (rc != r->rc || (r->msg != NULL && strcmp(err, r->msg) != 0)) {
            print_error("row %zu (%s): rc %d '%s', want %d '%s'\n", i, r->text, rc, err, r->rc,
                        r->msg != NULL ? r->msg : "");
            fail();
        }
        if (rc == TG_OK) {
            assert_int_equal(n, r->n);
            for (size_t k = 0; k < n; k++)
                assert_int_equal(idx[k], r->idx[k]);
        } else {
            assert_int_equal(n, 99); /* outputs untouched on failure */
            assert_int_equal(idx[0], 99);
        }
    }
    /* more distinct labels than room */
    size_t idx[1], n = 0;
    char err[128];
    assert_int_equal(tg_grammar_parse_labels(labels, 4, true, "[\"spam\",\"ham\"]", 14, idx, 1, &n,
                                             err, sizeof err),
                     TG_TOOBIG);
    assert_int_equal(tg_grammar_parse_labels(NULL, 4, true, "[]", 2, idx, 1, &n, err, sizeof err),
                     TG_INVAL);
    /* a label with its own spaces matches exactly before any trimming */
    const char *spaced[] = {" a", "a"};
    assert_int_equal(
        tg_grammar_parse_labels(spaced, 2, false, " a", 2, idx, 1, &n, err, sizeof err), TG_OK);
    assert_int_equal(idx[0], 0);
    assert_int_equal(
        tg_grammar_parse_labels(spaced, 2, false, "a ", 2, idx, 1, &n, err, sizeof err), TG_OK);
    assert_int_equal(idx[0], 1);
}

/* Messages quote labels and model output; cut anywhere, they must stay valid UTF-8 (they go
 * into JSON error bodies, and jansson refuses invalid UTF-8). */
static void test_messages_stay_utf8(void **state)
{
    (void)state;
    char big[121];
    for (size_t i = 0; i < 120; i += 2)
        memcpy(big + i, "\xC3\xA9", 2); /* é x 60 */
    big[120] = '\0';
    const char *dup[] = {big, big};
    char odd[] = "x\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9";
    for (size_t errlen = 1; errlen < 120; errlen++) {
        char err[128];
        memset(err, 'Z', sizeof err);
        assert_int_equal(tg_grammar_check_labels(dup, 2, err, errlen), TG_INVAL);
        assert_true(strlen(err) < errlen);
        json_t *js = json_string(err);
        if (js == NULL) {
            print_error("errlen %zu: invalid UTF-8 in '%s'\n", errlen, err);
            fail();
        }
        json_decref(js);
        size_t idx[1], n;
        const char *labels[] = {"a"};
        assert_int_equal(tg_grammar_parse_labels(labels, 1, false, odd + (errlen % 2),
                                                 strlen(odd) - errlen % 2, idx, 1, &n, err, errlen),
                         TG_PARSE);
        js = json_string(err);
        assert_non_null(js);
        json_decref(js);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_rows),         cmocka_unit_test(test_limits),
        cmocka_unit_test(test_grammar_text),       cmocka_unit_test(test_parse_rows),
        cmocka_unit_test(test_messages_stay_utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
