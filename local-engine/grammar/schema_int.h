/* tg_grammar internals shared by schema.c (compile, validate) and gbnf.c (grammar text).
 * Not a public header: nothing outside local-engine/grammar includes it. */
#ifndef TG_SCHEMA_INT_H
#define TG_SCHEMA_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "tg/buf.h"

/* Type bits. T_NUMBER admits integers too; T_INTEGER alone admits integral values only. */
enum {
    T_NULL = 1u << 0,
    T_BOOLEAN = 1u << 1,
    T_OBJECT = 1u << 2,
    T_ARRAY = 1u << 3,
    T_NUMBER = 1u << 4,
    T_STRING = 1u << 5,
    T_INTEGER = 1u << 6,
    T_ALL = (1u << 7) - 1,
};

struct sc_node {
    unsigned id;    /* 0 = root; compile (pre-)order, used for GBNF rule names */
    unsigned types; /* T_ALL when the schema has no `type` */
    bool has_type;
    /* object */
    bool has_properties;
    bool closed; /* additionalProperties: false */
    size_t n_props;
    char **keys; /* NUL-terminated UTF-8, schema order */
    struct sc_node **props;
    bool *required;
    size_t n_required;
    /* array */
    struct sc_node *items; /* NULL: any items */
    /* enum/const (intersected when both are given); NULL: no value restriction */
    json_t *values;         /* array, owned */
    bool values_from_const; /* only `const` given: error messages say so */
};

struct tg_schema {
    struct sc_node *root;
    unsigned n_nodes;
};

/* Instance validation of one node, optionally without its enum (used to filter enum values
 * down to the ones the rest of the node admits). */
bool sc_validate_node(const struct sc_node *n, const json_t *v, bool skip_values);

/* JSON equality as JSON Schema defines it: 1 == 1.0, object key order irrelevant. */
bool sc_json_equal(const json_t *a, const json_t *b);

/* Append `s` (len bytes) as the body of a GBNF string literal (no surrounding quotes). */
int sc_gbnf_escape(struct tg_buf *b, const char *s, size_t len);

/* true when s[0..len) is valid UTF-8 (no overlongs, surrogates or code points > U+10FFFF). */
bool sc_utf8_valid(const char *s, size_t len);

/* Longest prefix of s[0..len) of at most max bytes that does not split a UTF-8 sequence. */
size_t sc_utf8_prefix(const char *s, size_t len, size_t max);

/* Error text: vsnprintf into err, then drop a UTF-8 sequence cut by truncation, so messages stay
 * valid UTF-8 (they end up in JSON error bodies). err may be NULL. */
void sc_put_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
