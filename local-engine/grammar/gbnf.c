/* Compiled JSON Schema -> llama.cpp GBNF.
 *
 * Every schema node becomes a rule `sN` (N = node id). Shared helper rules (ws, string, number,
 * ...) are written once at the end, only when used. Everything that could repeat is bounded
 * ({m,n} repetitions) so that even a random-weight model reaches the end of the grammar.
 * llama.cpp's parser caps one repetition at 2000 generated rules (MAX_REPETITION_THRESHOLD in
 * llama-grammar.cpp); the opts are clamped well below that. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schema_int.h"
#include "tg/err.h"
#include "tg/schema.h"

struct tg_gbnf_opts tg_gbnf_default_opts(void)
{
    return (struct tg_gbnf_opts){
        .max_string_chars = 256,
        .max_array_items = 16,
        .max_ws = 1,
        .max_number_digits = 15,
        .any_depth = 2,
    };
}

enum {
    H_WS = 1u << 0,
    H_STRING = 1u << 1,
    H_NUMBER = 1u << 2,
    H_INTEGER = 1u << 3,
    H_BOOLEAN = 1u << 4,
    H_NULL = 1u << 5,
    H_ANY = 1u << 6,
};

struct gctx {
    struct tg_buf out;
    struct tg_gbnf_opts o;
    unsigned helpers;
    int rc;
};

static void emit(struct gctx *g, const char *s)
{
    if (g->rc == TG_OK)
        g->rc = tg_buf_append_str(&g->out, s);
}

static void emitf(struct gctx *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void emitf(struct gctx *g, const char *fmt, ...)
{
    if (g->rc != TG_OK)
        return;
    va_list ap;
    va_start(ap, fmt);
    g->rc = tg_buf_vprintf(&g->out, fmt, ap);
    va_end(ap);
}

int sc_gbnf_escape(struct tg_buf *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int rc;
        if (c == '"')
            rc = tg_buf_append(b, "\\\"", 2);
        else if (c == '\\')
            rc = tg_buf_append(b, "\\\\", 2);
        else if (c == '\n')
            rc = tg_buf_append(b, "\\n", 2);
        else if (c == '\r')
            rc = tg_buf_append(b, "\\r", 2);
        else if (c == '\t')
            rc = tg_buf_append(b, "\\t", 2);
        else if (c < 0x20 || c == 0x7F)
            rc = tg_buf_printf(b, "\\x%02X", c);
        else /* printable ASCII and UTF-8 bytes go through: llama.cpp decodes UTF-8 literals */
            rc = tg_buf_append(b, &s[i], 1);
        if (rc != TG_OK)
            return rc;
    }
    return TG_OK;
}

/* A JSON value as an exact GBNF literal: "<compact JSON>". */
static void emit_literal(struct gctx *g, const json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (text == NULL) {
        if (g->rc == TG_OK)
            g->rc = TG_NOMEM;
        return;
    }
    emit(g, "\"");
    if (g->rc == TG_OK)
        g->rc = sc_gbnf_escape(&g->out, text, strlen(text));
    emit(g, "\"");
    free(text);
}

static void emit_key_literal(struct gctx *g, const char *key)
{
    json_t *s = json_string(key);
    if (s == NULL) {
        if (g->rc == TG_OK)
            g->rc = TG_NOMEM;
        return;
    }
    emit_literal(g, s);
    json_decref(s);
}

/* Separator used between tokens: nothing when whitespace is off. */
static const char *ws(struct gctx *g)
{
    if (g->o.max_ws == 0)
        return "";
    g->helpers |= H_WS;
    return " ws";
}

/* "[" ws (ITEM ws ("," ws ITEM ws){0,M-1})? "]" */
static void emit_array(struct gctx *g, const char *item)
{
    unsigned m = g->o.max_array_items;
    emitf(g, "\"[\"%s", ws(g));
    if (m >= 1) {
        emitf(g, " (%s%s", item, ws(g));
        if (m >= 2)
            emitf(g, " (\",\"%s %s%s){0,%u}", ws(g), item, ws(g), m - 1);
        emit(g, ")?");
    }
    emit(g, " \"]\"");
}

static void emit_node(struct gctx *g, const struct sc_node *n);

static void emit_type_alt(struct gctx *g, const struct sc_node *n, unsigned bit, bool *first)
{
    if (!*first)
        emit(g, " | ");
    *first = false;
    switch (bit) {
    case T_NULL:
        g->helpers |= H_NULL;
        emit(g, "null");
        break;
    case T_BOOLEAN:
        g->helpers |= H_BOOLEAN;
        emit(g, "boolean");
        break;
    case T_STRING:
        g->helpers |= H_STRING;
        emit(g, "string");
        break;
    case T_NUMBER:
        g->helpers |= H_NUMBER | H_INTEGER;
        emit(g, "number");
        break;
    case T_INTEGER:
        g->helpers |= H_INTEGER;
        emit(g, "integer");
        break;
    case T_ARRAY: {
        char item[32];
        if (n->items != NULL) {
            snprintf(item, sizeof item, "s%u", n->items->id);
        } else {
            g->helpers |= H_ANY;
            snprintf(item, sizeof item, "any%u", g->o.any_depth > 0 ? g->o.any_depth - 1 : 0);
        }
        emit(g, "(");
        emit_array(g, item);
        emit(g, ")");
        break;
    }
    case T_OBJECT:
        if (n->n_props > 0) {
            emitf(g, "s%u-obj", n->id);
        } else if (n->closed || g->o.any_depth == 0) {
            emitf(g, "(\"{\"%s \"}\")", ws(g));
        } else {
            g->helpers |= H_ANY;
            emitf(g, "any-obj%u", g->o.any_depth);
        }
        break;
    }
}

/* The object rules of node n: sN-obj ::= "{" ws sN-p0 "}", where
 *   sN-pI ("nothing emitted yet, start at property I") ::= kvI sN-rI+1 | sN-pI+1   (optional I)
 *                                                       ::= kvI sN-rI+1              (required I)
 *   sN-rI ("something emitted, continue at I")         ::= ("," ws kvI)? sN-rI+1   (optional)
 *                                                       ::= "," ws kvI sN-rI+1       (required)
 * so commas only ever sit between two present members, required members always appear and
 * members keep schema order. Linear in the number of properties. */
static void emit_object_rules(struct gctx *g, const struct sc_node *n)
{
    size_t np = n->n_props;
    emitf(g, "s%u-obj ::= \"{\"%s s%u-p0 \"}\"\n", n->id, ws(g), n->id);
    for (size_t i = 0; i < np; i++) {
        emitf(g, "s%u-kv%zu ::= ", n->id, i);
        emit_key_literal(g, n->keys[i]);
        emitf(g, "%s \":\"%s s%u%s\n", ws(g), ws(g), n->props[i]->id, ws(g));
    }
    /* sN-pI is only reachable up to the first required property. */
    size_t last_p = np - 1;
    for (size_t i = 0; i < np; i++)
        if (n->required[i]) {
            last_p = i;
            break;
        }
    for (size_t i = 0; i <= last_p; i++) {
        /* An empty alternative is written as (...)? because "x | " would continue on the
         * next line: llama.cpp skips newlines after '|'. */
        bool last_opt = !n->required[i] && i + 1 == np;
        emitf(g, "s%u-p%zu ::= %ss%u-kv%zu", n->id, i, last_opt ? "(" : "", n->id, i);
        if (i + 1 < np)
            emitf(g, " s%u-r%zu", n->id, i + 1);
        if (last_opt)
            emit(g, ")?");
        else if (!n->required[i])
            emitf(g, " | s%u-p%zu", n->id, i + 1);
        emit(g, "\n");
    }
    for (size_t i = 1; i < np; i++) {
        emitf(g, "s%u-r%zu ::= ", n->id, i);
        if (!n->required[i])
            emit(g, "(");
        emitf(g, "\",\"%s s%u-kv%zu", ws(g), n->id, i);
        if (!n->required[i])
            emit(g, ")?");
        if (i + 1 < np)
            emitf(g, " s%u-r%zu", n->id, i + 1);
        emit(g, "\n");
    }
}

/* The type a schema without `type` is generated as: what its keywords imply, else anything. */
static unsigned gen_types(const struct sc_node *n)
{
    unsigned t = n->types;
    if (!n->has_type) {
        if (n->has_properties || n->closed || n->n_required > 0)
            t = T_OBJECT;
        else if (n->items != NULL)
            t = T_ARRAY;
    }
    if ((t & T_NUMBER) != 0)
        t &= ~T_INTEGER; /* number's syntax includes integer's */
    return t;
}

static void emit_node(struct gctx *g, const struct sc_node *n)
{
    emitf(g, "s%u ::= ", n->id);
    if (n->values != NULL) {
        /* Only the values the rest of the node admits (compile made sure there is one). */
        bool first = true;
        for (size_t i = 0; i < json_array_size(n->values); i++) {
            const json_t *v = json_array_get(n->values, i);
            if (!sc_validate_node(n, v, true))
                continue;
            if (!first)
                emit(g, " | ");
            first = false;
            emit_literal(g, v);
        }
        emit(g, "\n");
        return;
    }
    unsigned t = gen_types(n);
    if (!n->has_type && t == (T_ALL & ~T_INTEGER)) {
        g->helpers |= H_ANY;
        emitf(g, "any%u\n", g->o.any_depth);
        return;
    }
    bool first = true;
    for (unsigned bit = 1; bit <= T_INTEGER; bit <<= 1)
        if ((t & bit) != 0)
            emit_type_alt(g, n, bit, &first);
    emit(g, "\n");
    if ((t & T_OBJECT) != 0 && n->n_props > 0)
        emit_object_rules(g, n);
    for (size_t i = 0; i < n->n_props; i++)
        emit_node(g, n->props[i]);
    if (n->items != NULL)
        emit_node(g, n->items);
}

/* Free-form JSON of bounded depth: anyD nests anyD-1, any0 is a scalar. */
static void emit_any(struct gctx *g)
{
    unsigned d = g->o.any_depth;
    g->helpers |= H_STRING | H_NUMBER | H_INTEGER | H_BOOLEAN | H_NULL;
    emit(g, "any0 ::= string | number | boolean | null\n");
    for (unsigned k = 1; k <= d; k++) {
        char prev[32];
        snprintf(prev, sizeof prev, "any%u", k - 1);
        emitf(g, "any%u ::= any0 | any-obj%u | (", k, k);
        emit_array(g, prev);
        emit(g, ")\n");
    }
    for (unsigned k = 1; k <= d; k++) {
        unsigned m = g->o.max_array_items;
        emitf(g, "any-obj%u ::= \"{\"%s", k, ws(g));
        if (m >= 1) {
            emitf(g, " (string%s \":\"%s any%u%s", ws(g), ws(g), k - 1, ws(g));
            if (m >= 2)
                emitf(g, " (\",\"%s string%s \":\"%s any%u%s){0,%u}", ws(g), ws(g), ws(g), k - 1,
                      ws(g), m - 1);
            emit(g, ")?");
        }
        emit(g, " \"}\"\n");
    }
}

static void emit_helpers(struct gctx *g)
{
    if ((g->helpers & H_ANY) != 0)
        emit_any(g);
    if ((g->helpers & H_WS) != 0)
        emitf(g, "ws ::= [ \\t\\n]{0,%u}\n", g->o.max_ws);
    if ((g->helpers & H_STRING) != 0) {
        /* Raw control characters and UTF-16 surrogates are not valid in JSON text; \u escapes
         * are left out so that no escape can form an invalid code point. Code points past
         * U+10FFFF are excluded because llama.cpp decodes invalid lead bytes (F5..FF) of byte
         * tokens into them; excluding them makes it refuse those bytes. */
        emitf(g, "string ::= \"\\\"\" char{0,%u} \"\\\"\"\n", g->o.max_string_chars);
        emit(g, "char ::= [^\"\\\\\\x00-\\x1F\\uD800-\\uDFFF\\U00110000-\\U7FFFFFFF] | "
                "\"\\\\\" [\"\\\\/bfnrt]\n");
    }
    if ((g->helpers & H_NUMBER) != 0)
        /* Two exponent digits keep every value finite as a double (jansson rejects overflow). */
        emitf(g, "number ::= integer (\".\" [0-9]{1,%u})? ([eE] [-+]? [0-9]{1,2})?\n",
              g->o.max_number_digits);
    if ((g->helpers & H_INTEGER) != 0) {
        if (g->o.max_number_digits > 1)
            emitf(g, "integer ::= \"-\"? (\"0\" | [1-9] [0-9]{0,%u})\n",
                  g->o.max_number_digits - 1);
        else
            emit(g, "integer ::= \"-\"? [0-9]\n");
    }
    if ((g->helpers & H_BOOLEAN) != 0)
        emit(g, "boolean ::= \"true\" | \"false\"\n");
    if ((g->helpers & H_NULL) != 0)
        emit(g, "null ::= \"null\"\n");
}

char *tg_schema_to_gbnf_opts(const struct tg_schema *s, const struct tg_gbnf_opts *opts)
{
    if (s == NULL || s->root == NULL)
        return NULL;
    struct gctx g = {.o = opts != NULL ? *opts : tg_gbnf_default_opts(), .rc = TG_OK};
    /* Clamp to what llama.cpp's parser accepts and what keeps integers inside int64. */
    if (g.o.max_string_chars > 1000)
        g.o.max_string_chars = 1000;
    if (g.o.max_array_items > 256)
        g.o.max_array_items = 256;
    if (g.o.max_ws > 16)
        g.o.max_ws = 16;
    if (g.o.max_number_digits < 1)
        g.o.max_number_digits = 1;
    if (g.o.max_number_digits > 18)
        g.o.max_number_digits = 18;
    if (g.o.any_depth > 8)
        g.o.any_depth = 8;
    /* Output is bounded by the schema limits; 64 MiB is far above any accepted schema. */
    tg_buf_init(&g.out, 64u * 1024 * 1024);
    emitf(&g, "root ::= s%u\n", s->root->id);
    emit_node(&g, s->root);
    emit_helpers(&g);
    if (g.rc != TG_OK) {
        tg_buf_free(&g.out);
        return NULL;
    }
    return tg_buf_detach(&g.out);
}

char *tg_schema_to_gbnf(const struct tg_schema *s)
{
    return tg_schema_to_gbnf_opts(s, NULL);
}
