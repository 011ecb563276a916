/* Label grammars (classification) and their parser; contract in tg/grammar.h. */
#include "tg/grammar.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schema_int.h"
#include "tg/buf.h"
#include "tg/err.h"

#define lfail(err, errlen, rc, ...) (sc_put_err((err), (errlen), __VA_ARGS__), (rc))

/* Quoted text in messages is cut to this many bytes, on a UTF-8 boundary. */
#define QUOTE_MAX 64

int tg_grammar_check_labels(const char *const *labels, size_t n, char *err, size_t errlen)
{
    if (labels == NULL || n == 0)
        return lfail(err, errlen, TG_INVAL, "no labels given");
    if (n > TG_GRAMMAR_MAX_LABELS)
        return lfail(err, errlen, TG_INVAL, "too many labels (%zu > %d)", n, TG_GRAMMAR_MAX_LABELS);
    for (size_t i = 0; i < n; i++) {
        if (labels[i] == NULL || labels[i][0] == '\0')
            return lfail(err, errlen, TG_INVAL, "label %zu is empty", i);
        size_t len = strlen(labels[i]);
        if (len > TG_GRAMMAR_MAX_LABEL_BYTES)
            return lfail(err, errlen, TG_INVAL, "label %zu is longer than %d bytes", i,
                         TG_GRAMMAR_MAX_LABEL_BYTES);
        if (!sc_utf8_valid(labels[i], len))
            return lfail(err, errlen, TG_INVAL, "label %zu is not valid UTF-8", i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[i], labels[j]) == 0)
                return lfail(err, errlen, TG_INVAL, "label %zu duplicates label %zu ('%.*s')", i, j,
                             (int)sc_utf8_prefix(labels[i], len, QUOTE_MAX), labels[i]);
    }
    return TG_OK;
}

char *tg_grammar_labels(const char *const *labels, size_t n, bool multi, char *err, size_t errlen)
{
    if (tg_grammar_check_labels(labels, n, err, errlen) != TG_OK)
        return NULL;
    struct tg_buf b;
    /* 256 labels x 256 bytes, each escaped to at most 4x plus JSON quoting: well under 2 MiB. */
    tg_buf_init(&b, 4u * 1024 * 1024);
    int rc = tg_buf_append_str(&b, multi ? "root ::= \"[\" item (\",\" item){0," : "root ::= ");
    if (rc == TG_OK && multi)
        rc = tg_buf_printf(&b, "%zu} \"]\"\nitem ::= ", n - 1);
    for (size_t i = 0; i < n && rc == TG_OK; i++) {
        /* '|' ends the line: llama.cpp continues an alternation across a newline after '|'. */
        if (i > 0)
            rc = tg_buf_append_str(&b, " |\n    ");
        if (rc == TG_OK)
            rc = tg_buf_append(&b, "\"", 1);
        if (rc == TG_OK && multi) {
            /* The label as a JSON string (quotes, backslashes, control chars escaped), then that
             * text escaped again as a GBNF literal. */
            json_t *s = json_string(labels[i]);
            char *js = s != NULL ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
            rc = js != NULL ? sc_gbnf_escape(&b, js, strlen(js)) : TG_NOMEM;
            free(js);
            json_decref(s);
        } else if (rc == TG_OK) {
            rc = sc_gbnf_escape(&b, labels[i], strlen(labels[i]));
        }
        if (rc == TG_OK)
            rc = tg_buf_append(&b, "\"", 1);
    }
    if (rc == TG_OK)
        rc = tg_buf_append(&b, "\n", 1);
    if (rc != TG_OK) {
        tg_buf_free(&b);
        sc_put_err(err, errlen, "%s", tg_strerror(rc));
        return NULL;
    }
    return tg_buf_detach(&b);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static long find_label(const char *const *labels, size_t n, const char *s, size_t len)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(labels[i]) == len && memcmp(labels[i], s, len) == 0)
            return (long)i;
    return -1;
}

int tg_grammar_parse_labels(const char *const *labels, size_t n, bool multi, const char *text,
                            size_t len, size_t *idx, size_t cap, size_t *n_out, char *err,
                            size_t errlen)
{
    if (labels == NULL || text == NULL || n_out == NULL || (idx == NULL && cap > 0))
        return lfail(err, errlen, TG_INVAL, "NULL argument");
    if (n == 0 || n > TG_GRAMMAR_MAX_LABELS)
        return lfail(err, errlen, TG_INVAL, "label count %zu out of range", n);
    if (!multi) {
        size_t b = 0, e = len;
        /* Exact first: a label may itself start or end with a space. */
        long k = find_label(labels, n, text, len);
        if (k < 0) {
            while (b < e && is_space(text[b]))
                b++;
            while (e > b && is_space(text[e - 1]))
                e--;
            k = find_label(labels, n, text + b, e - b);
        }
        if (k < 0)
            return lfail(err, errlen, TG_PARSE, "not a label: '%.*s'",
                         (int)sc_utf8_prefix(text + b, e - b, QUOTE_MAX), text + b);
        if (cap < 1)
            return lfail(err, errlen, TG_TOOBIG, "no room for the label index");
        idx[0] = (size_t)k;
        *n_out = 1;
        return TG_OK;
    }

    json_error_t je;
    json_t *arr = json_loadb(text, len, JSON_DECODE_ANY, &je);
    if (arr == NULL)
        return lfail(err, errlen, TG_PARSE, "invalid JSON at line %d column %d: %s", je.line,
                     je.column, je.text);
    if (!json_is_array(arr)) {
        json_decref(arr);
        return lfail(err, errlen, TG_PARSE, "expected a JSON array of labels");
    }
    /* Collect into a scratch list first: outputs are written only on success. */
    size_t found[TG_GRAMMAR_MAX_LABELS];
    bool seen[TG_GRAMMAR_MAX_LABELS] = {false};
    size_t nf = 0;
    int rc = TG_OK;
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e)
    {
        if (!json_is_string(e)) {
            rc = lfail(err, errlen, TG_PARSE, "item %zu is not a string", i);
            break;
        }
        long k = find_label(labels, n, json_string_value(e), json_string_length(e));
        if (k < 0) {
            rc = lfail(err, errlen, TG_PARSE, "item %zu is not a label: '%.*s'", i,
                       (int)sc_utf8_prefix(json_string_value(e), json_string_length(e), QUOTE_MAX),
                       json_string_value(e));
            break;
        }
        if (seen[k])
            continue;
        seen[k] = true;
        found[nf++] = (size_t)k;
    }
    json_decref(arr);
    if (rc != TG_OK)
        return rc;
    if (nf > cap)
        return lfail(err, errlen, TG_TOOBIG, "%zu distinct labels, room for %zu", nf, cap);
    if (nf > 0)
        memcpy(idx, found, nf * sizeof *idx);
    *n_out = nf;
    return TG_OK;
}
