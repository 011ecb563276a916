/* JSON Schema subset: compile a schema into a node tree, validate instances against it.
 * The subset and its limits are documented in tg/schema.h. */
#include "tg/schema.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "schema_int.h"
#include "tg/buf.h"
#include "tg/err.h"

/* ---------------------------------------------------------------- small helpers */

size_t sc_utf8_prefix(const char *s, size_t len, size_t max)
{
    if (len <= max)
        return len;
    size_t cut = max;
    /* Back off over continuation bytes to the start of the sequence that straddles the cut. */
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80)
        cut--;
    return cut;
}

void sc_put_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    if (n < 0) {
        err[0] = '\0';
    } else if ((size_t)n >= errlen) {
        size_t len = strlen(err);
        /* The byte after the kept text decides whether the last sequence was cut; it is gone,
         * so look at the lead byte of the last sequence and the bytes that follow it. */
        size_t lead = len;
        while (lead > 0 && ((unsigned char)err[lead - 1] & 0xC0) == 0x80)
            lead--;
        if (lead > 0) {
            unsigned char c = (unsigned char)err[lead - 1];
            size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
            if (len - (lead - 1) < need)
                err[lead - 1] = '\0';
        }
    }
}

#define put_err sc_put_err

bool sc_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        unsigned cp;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i - 1 < need)
            return false;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        /* Reject overlong forms, UTF-16 surrogates and values past Unicode. */
        if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += need + 1;
    }
    return true;
}

/* ---------------------------------------------------------------- node lifetime */

static void node_free(struct sc_node *n)
{
    if (n == NULL)
        return;
    for (size_t i = 0; i < n->n_props; i++) {
        free(n->keys[i]);
        node_free(n->props[i]);
    }
    free(n->keys);
    free(n->props);
    free(n->required);
    node_free(n->items);
    json_decref(n->values);
    free(n);
}

void tg_schema_free(struct tg_schema *s)
{
    if (s == NULL)
        return;
    node_free(s->root);
    free(s);
}

/* ---------------------------------------------------------------- compile */

struct cctx {
    struct tg_buf path; /* JSON pointer of the schema being compiled, "#/..." */
    char *err;
    size_t errlen;
    int rc; /* first error */
    unsigned n_nodes;
};

static int cfail(struct cctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int cfail(struct cctx *c, const char *fmt, ...)
{
    if (c->rc != TG_OK)
        return c->rc;
    c->rc = TG_SCHEMA;
    if (c->err != NULL && c->errlen > 0) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (n < 0)
            msg[0] = '\0';
        put_err(c->err, c->errlen, "schema path %s: %s", c->path.data != NULL ? c->path.data : "#",
                msg);
    }
    return c->rc;
}

static int cnomem(struct cctx *c)
{
    if (c->rc == TG_OK) {
        c->rc = TG_NOMEM;
        put_err(c->err, c->errlen, "out of memory");
    }
    return c->rc;
}

/* Append "/seg" with JSON-pointer escaping (~ -> ~0, / -> ~1); returns the previous length so
 * the caller can pop the segment. */
static int path_push(struct cctx *c, const char *seg, size_t *saved)
{
    *saved = c->path.len;
    if (tg_buf_append(&c->path, "/", 1) != TG_OK)
        return cnomem(c);
    for (const char *p = seg; *p != '\0'; p++) {
        int rc;
        if (*p == '~')
            rc = tg_buf_append(&c->path, "~0", 2);
        else if (*p == '/')
            rc = tg_buf_append(&c->path, "~1", 2);
        else
            rc = tg_buf_append(&c->path, p, 1);
        if (rc != TG_OK)
            return cnomem(c);
    }
    return TG_OK;
}

static void path_pop(struct cctx *c, size_t saved)
{
    c->path.len = saved;
    c->path.data[saved] = '\0';
}

static const char *const type_names[] = {"null",   "boolean", "object", "array",
                                         "number", "string",  "integer"};

static unsigned type_bit(const char *name)
{
    for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++)
        if (strcmp(name, type_names[i]) == 0)
            return 1u << i;
    return 0;
}

static bool is_annotation(const char *k)
{
    static const char *const ann[] = {"description", "title",   "$schema",
                                      "$comment",    "default", "examples"};
    for (size_t i = 0; i < sizeof ann / sizeof ann[0]; i++)
        if (strcmp(k, ann[i]) == 0)
            return true;
    return false;
}

static bool is_keyword(const char *k)
{
    static const char *const kw[] = {"type",  "properties", "required", "additionalProperties",
                                     "items", "enum",       "const"};
    for (size_t i = 0; i < sizeof kw / sizeof kw[0]; i++)
        if (strcmp(k, kw[i]) == 0)
            return true;
    return false;
}

static int compile_node(struct cctx *c, const json_t *js, unsigned depth, struct sc_node **out);

static int compile_type(struct cctx *c, struct sc_node *n, const json_t *t)
{
    size_t saved;
    if (path_push(c, "type", &saved) != TG_OK)
        return c->rc;
    n->has_type = true;
    n->types = 0;
    if (json_is_string(t)) {
        unsigned b = type_bit(json_string_value(t));
        if (b == 0)
            return cfail(c, "unknown type '%s'", json_string_value(t));
        n->types = b;
    } else if (json_is_array(t)) {
        if (json_array_size(t) == 0)
            return cfail(c, "type list is empty");
        size_t i;
        json_t *e;
        json_array_foreach(t, i, e)
        {
            if (!json_is_string(e))
                return cfail(c, "type list item %zu is not a string", i);
            unsigned b = type_bit(json_string_value(e));
            if (b == 0)
                return cfail(c, "unknown type '%s'", json_string_value(e));
            if ((n->types & b) != 0)
                return cfail(c, "type '%s' is listed twice", json_string_value(e));
            n->types |= b;
        }
    } else {
        return cfail(c, "must be a string or a list of strings");
    }
    path_pop(c, saved);
    return TG_OK;
}

static int compile_properties(struct cctx *c, struct sc_node *n, const json_t *p, unsigned depth)
{
    size_t saved;
    if (path_push(c, "properties", &saved) != TG_OK)
        return c->rc;
    if (!json_is_object(p))
        return cfail(c, "must be an object");
    size_t np = json_object_size(p);
    if (np > TG_SCHEMA_MAX_PROPERTIES)
        return cfail(c, "too many properties (%zu > %d)", np, TG_SCHEMA_MAX_PROPERTIES);
    n->has_properties = true;
    if (np > 0) {
        n->keys = calloc(np, sizeof *n->keys);
        n->props = calloc(np, sizeof *n->props);
        n->required = calloc(np, sizeof *n->required);
        if (n->keys == NULL || n->props == NULL || n->required == NULL)
            return cnomem(c);
    }
    const char *key;
    json_t *sub;
    /* jansson keeps insertion order, so the grammar emits properties in schema order. */
    json_object_foreach((json_t *)p, key, sub)
    {
        size_t klen = strlen(key);
        /* jansson checks UTF-8 when it parses, not when a caller builds objects with _nocheck;
         * the name stays out of the message so that the message itself is valid UTF-8. */
        if (!sc_utf8_valid(key, klen))
            return cfail(c, "a property name is not valid UTF-8");
        size_t saved2;
        if (path_push(c, key, &saved2) != TG_OK)
            return c->rc;
        if (klen > TG_SCHEMA_MAX_KEY_BYTES)
            return cfail(c, "property name longer than %d bytes", TG_SCHEMA_MAX_KEY_BYTES);

        char *k = strdup(key);
        if (k == NULL)
            return cnomem(c);
        n->keys[n->n_props] = k;
        n->n_props++;
        if (compile_node(c, sub, depth + 1, &n->props[n->n_props - 1]) != TG_OK)
            return c->rc;
        path_pop(c, saved2);
    }
    path_pop(c, saved);
    return TG_OK;
}

static int compile_required(struct cctx *c, struct sc_node *n, const json_t *r)
{
    size_t saved;
    if (path_push(c, "required", &saved) != TG_OK)
        return c->rc;
    if (!json_is_array(r))
        return cfail(c, "must be a list of strings");
    size_t i;
    json_t *e;
    json_array_foreach(r, i, e)
    {
        if (!json_is_string(e))
            return cfail(c, "item %zu is not a string", i);
        const char *name = json_string_value(e);
        size_t k;
        for (k = 0; k < n->n_props; k++)
            if (strcmp(n->keys[k], name) == 0)
                break;
        if (k == n->n_props)
            return cfail(c, "'%s' is not in properties", name);
        if (n->required[k])
            return cfail(c, "'%s' is listed twice", name);
        n->required[k] = true;
        n->n_required++;
    }
    path_pop(c, saved);
    return TG_OK;
}

static int compile_values(struct cctx *c, struct sc_node *n, const json_t *en, const json_t *cn)
{
    size_t saved;
    if (en != NULL) {
        if (path_push(c, "enum", &saved) != TG_OK)
            return c->rc;
        if (!json_is_array(en))
            return cfail(c, "must be a list");
        size_t ne = json_array_size(en);
        if (ne == 0)
            return cfail(c, "must not be empty");
        if (ne > TG_SCHEMA_MAX_ENUM)
            return cfail(c, "too many values (%zu > %d)", ne, TG_SCHEMA_MAX_ENUM);
        for (size_t i = 0; i < ne; i++) {
            const json_t *v = json_array_get(en, i);
            char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
            if (text == NULL)
                return cnomem(c);
            size_t tl = strlen(text);
            free(text);
            if (tl > TG_SCHEMA_MAX_LITERAL_BYTES)
                return cfail(c, "value %zu is longer than %d bytes as JSON", i,
                             TG_SCHEMA_MAX_LITERAL_BYTES);
            for (size_t j = 0; j < i; j++)
                if (sc_json_equal(v, json_array_get(en, j)))
                    return cfail(c, "values %zu and %zu are equal", j, i);
        }
        path_pop(c, saved);
    }
    if (cn != NULL) {
        if (path_push(c, "const", &saved) != TG_OK)
            return c->rc;
        char *text = json_dumps(cn, JSON_COMPACT | JSON_ENCODE_ANY);
        if (text == NULL)
            return cnomem(c);
        size_t tl = strlen(text);
        free(text);
        if (tl > TG_SCHEMA_MAX_LITERAL_BYTES)
            return cfail(c, "value is longer than %d bytes as JSON", TG_SCHEMA_MAX_LITERAL_BYTES);
        path_pop(c, saved);
    }
    n->values_from_const = en == NULL;
    n->values = json_array();
    if (n->values == NULL)
        return cnomem(c);
    if (en != NULL) {
        for (size_t i = 0; i < json_array_size(en); i++) {
            const json_t *v = json_array_get(en, i);
            if (cn != NULL && !sc_json_equal(v, cn))
                continue;
            json_t *copy = json_deep_copy(v);
            if (copy == NULL || json_array_append_new(n->values, copy) != 0)
                return cnomem(c);
        }
    } else {
        json_t *copy = json_deep_copy(cn);
        if (copy == NULL || json_array_append_new(n->values, copy) != 0)
            return cnomem(c);
    }
    return TG_OK;
}

static int compile_node(struct cctx *c, const json_t *js, unsigned depth, struct sc_node **out)
{
    if (depth > TG_SCHEMA_MAX_DEPTH)
        return cfail(c, "nested deeper than %d levels", TG_SCHEMA_MAX_DEPTH);
    if (json_is_boolean(js))
        return cfail(c, "boolean schemas are not supported");
    if (!json_is_object(js))
        return cfail(c, "schema must be an object");
    if (c->n_nodes >= TG_SCHEMA_MAX_NODES)
        return cfail(c, "more than %d sub-schemas in total", TG_SCHEMA_MAX_NODES);

    /* Reject unknown keywords first, in document order, so the message names the first one. */
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)js, key, val)
    {
        if (!is_keyword(key) && !is_annotation(key))
            return cfail(c, "unsupported keyword '%s'", key);
    }

    struct sc_node *n = calloc(1, sizeof *n);
    if (n == NULL)
        return cnomem(c);
    *out = n; /* the parent owns it from here on, even if compilation fails below */
    n->id = c->n_nodes++;
    n->types = T_ALL;

    const json_t *t = json_object_get(js, "type");
    if (t != NULL && compile_type(c, n, t) != TG_OK)
        return c->rc;
    const json_t *p = json_object_get(js, "properties");
    if (p != NULL && compile_properties(c, n, p, depth) != TG_OK)
        return c->rc;
    const json_t *r = json_object_get(js, "required");
    if (r != NULL && compile_required(c, n, r) != TG_OK)
        return c->rc;
    const json_t *ap = json_object_get(js, "additionalProperties");
    if (ap != NULL) {
        size_t saved;
        if (path_push(c, "additionalProperties", &saved) != TG_OK)
            return c->rc;
        if (!json_is_false(ap))
            return cfail(c, "only 'false' is supported");
        n->closed = true;
        path_pop(c, saved);
    }
    const json_t *it = json_object_get(js, "items");
    if (it != NULL) {
        size_t saved;
        if (path_push(c, "items", &saved) != TG_OK)
            return c->rc;
        if (json_is_array(it))
            return cfail(c, "the list (tuple) form of 'items' is not supported");
        if (compile_node(c, it, depth + 1, &n->items) != TG_OK)
            return c->rc;
        path_pop(c, saved);
    }
    const json_t *en = json_object_get(js, "enum");
    const json_t *cn = json_object_get(js, "const");
    if ((en != NULL || cn != NULL) && compile_values(c, n, en, cn) != TG_OK)
        return c->rc;

    if (n->values != NULL) {
        /* A grammar needs at least one admissible value; an enum that the rest of the schema
         * rules out entirely is almost certainly a mistake. */
        bool any = false;
        for (size_t i = 0; i < json_array_size(n->values) && !any; i++)
            any = sc_validate_node(n, json_array_get(n->values, i), true);
        if (!any)
            return cfail(c, "no value of %s matches the rest of the schema",
                         en != NULL ? "'enum'" : "'const'");
    }
    return TG_OK;
}

int tg_schema_compile(const json_t *schema, struct tg_schema **out, char *err, size_t errlen)
{
    if (schema == NULL || out == NULL) {
        put_err(err, errlen, "schema: NULL argument");
        return TG_INVAL;
    }
    struct cctx c = {.err = err, .errlen = errlen, .rc = TG_OK};
    /* Worst case path: depth 32 x (keyword + escaped 256-byte key). */
    tg_buf_init(&c.path, 64 * 1024);
    if (tg_buf_append(&c.path, "#", 1) != TG_OK) {
        put_err(err, errlen, "out of memory");
        return TG_NOMEM;
    }
    struct tg_schema *s = calloc(1, sizeof *s);
    if (s == NULL) {
        tg_buf_free(&c.path);
        put_err(err, errlen, "out of memory");
        return TG_NOMEM;
    }
    compile_node(&c, schema, 0, &s->root);
    tg_buf_free(&c.path);
    if (c.rc != TG_OK) {
        tg_schema_free(s);
        return c.rc;
    }
    s->n_nodes = c.n_nodes;
    *out = s;
    return TG_OK;
}

int tg_schema_compile_text(const char *text, size_t len, struct tg_schema **out, char *err,
                           size_t errlen)
{
    if (text == NULL || out == NULL) {
        put_err(err, errlen, "schema: NULL argument");
        return TG_INVAL;
    }
    json_error_t je;
    json_t *js = json_loadb(text, len, JSON_DECODE_ANY, &je);
    if (js == NULL) {
        put_err(err, errlen, "schema: invalid JSON at line %d column %d: %s", je.line, je.column,
                je.text);
        return TG_SCHEMA;
    }
    int rc = tg_schema_compile(js, out, err, errlen);
    json_decref(js);
    return rc;
}

/* ---------------------------------------------------------------- equality */

bool sc_json_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        if (json_is_integer(a) && json_is_integer(b))
            return json_integer_value(a) == json_integer_value(b);
        return json_number_value(a) == json_number_value(b);
    }
    if (json_typeof(a) != json_typeof(b))
        return false;
    switch (json_typeof(a)) {
    case JSON_STRING:
        return json_string_length(a) == json_string_length(b) &&
               memcmp(json_string_value(a), json_string_value(b), json_string_length(a)) == 0;
    case JSON_ARRAY: {
        size_t na = json_array_size(a);
        if (na != json_array_size(b))
            return false;
        for (size_t i = 0; i < na; i++)
            if (!sc_json_equal(json_array_get(a, i), json_array_get(b, i)))
                return false;
        return true;
    }
    case JSON_OBJECT: {
        if (json_object_size(a) != json_object_size(b))
            return false;
        const char *k;
        json_t *va;
        json_object_foreach((json_t *)a, k, va)
        {
            const json_t *vb = json_object_get(b, k);
            if (vb == NULL || !sc_json_equal(va, vb))
                return false;
        }
        return true;
    }
    default: /* true, false, null: same type is enough */
        return true;
    }
}

/* ---------------------------------------------------------------- validate */

/* Instance path as a stack-allocated chain; it is only formatted when validation fails. */
struct ipath {
    const struct ipath *up;
    const char *key; /* object member, or NULL for an array index */
    size_t index;
};

struct vctx {
    char *err;
    size_t errlen;
    bool want_err;
};

static bool is_ident(const char *k)
{
    if (!((*k >= 'a' && *k <= 'z') || (*k >= 'A' && *k <= 'Z') || *k == '_'))
        return false;
    for (const char *p = k + 1; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
              (*p >= '0' && *p <= '9')))
            return false;
    return true;
}

static void format_path(struct tg_buf *b, const struct ipath *p)
{
    if (p == NULL) {
        tg_buf_append(b, "$", 1);
        return;
    }
    format_path(b, p->up);
    if (p->key == NULL) {
        tg_buf_printf(b, "[%zu]", p->index);
    } else if (is_ident(p->key)) {
        tg_buf_printf(b, ".%s", p->key);
    } else {
        json_t *s = json_string(p->key);
        char *q = s != NULL ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
        tg_buf_printf(b, "[%s]", q != NULL ? q : "?");
        free(q);
        json_decref(s);
    }
}

static bool vfail(struct vctx *v, const struct ipath *p, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static bool vfail(struct vctx *v, const struct ipath *p, const char *fmt, ...)
{
    if (!v->want_err || v->err == NULL || v->errlen == 0)
        return false;
    struct tg_buf b;
    tg_buf_init(&b, v->errlen + 64);
    format_path(&b, p);
    tg_buf_append(&b, ": ", 2);
    va_list ap;
    va_start(ap, fmt);
    tg_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    put_err(v->err, v->errlen, "%s", b.data != NULL ? b.data : "validation failed");
    tg_buf_free(&b);
    return false;
}

static bool type_ok(unsigned types, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_NULL:
        return (types & T_NULL) != 0;
    case JSON_TRUE:
    case JSON_FALSE:
        return (types & T_BOOLEAN) != 0;
    case JSON_OBJECT:
        return (types & T_OBJECT) != 0;
    case JSON_ARRAY:
        return (types & T_ARRAY) != 0;
    case JSON_STRING:
        return (types & T_STRING) != 0;
    case JSON_INTEGER:
        return (types & (T_NUMBER | T_INTEGER)) != 0;
    case JSON_REAL: {
        if ((types & T_NUMBER) != 0)
            return true;
        double d = json_real_value(v);
        return (types & T_INTEGER) != 0 && isfinite(d) && floor(d) == d;
    }
    }
    return false;
}

static void describe_types(struct tg_buf *b, unsigned types)
{
    bool first = true;
    unsigned bits = types;
    /* "integer" alongside "number" adds nothing to the message. */
    if ((bits & T_NUMBER) != 0)
        bits &= ~T_INTEGER;
    size_t nbits = 0;
    for (unsigned x = bits; x != 0; x &= x - 1)
        nbits++;
    size_t seen = 0;
    for (size_t i = 0; i < sizeof type_names / sizeof type_names[0]; i++) {
        if ((bits & (1u << i)) == 0)
            continue;
        seen++;
        if (!first)
            tg_buf_append_str(b, seen == nbits ? " or " : ", ");
        tg_buf_append_str(b, type_names[i]);
        first = false;
    }
}

static bool validate(struct vctx *v, const struct sc_node *n, const json_t *inst,
                     const struct ipath *p, bool skip_values)
{
    if (n->has_type && !type_ok(n->types, inst)) {
        if (!v->want_err)
            return false;
        struct tg_buf b;
        tg_buf_init(&b, 256);
        describe_types(&b, n->types);
        vfail(v, p, "expected %s", b.data != NULL ? b.data : "?");
        tg_buf_free(&b);
        return false;
    }
    if (!skip_values && n->values != NULL) {
        bool found = false;
        for (size_t i = 0; i < json_array_size(n->values) && !found; i++)
            found = sc_json_equal(json_array_get(n->values, i), inst);
        if (!found)
            return n->values_from_const ? vfail(v, p, "expected the const value")
                                        : vfail(v, p, "value is not in the enum");
    }
    if (json_is_object(inst)) {
        for (size_t i = 0; i < n->n_props; i++) {
            const json_t *m = json_object_get(inst, n->keys[i]);
            if (m == NULL) {
                if (n->required[i])
                    return vfail(v, p, "missing required property '%s'", n->keys[i]);
                continue;
            }
            struct ipath sub = {.up = p, .key = n->keys[i]};
            if (!validate(v, n->props[i], m, &sub, false))
                return false;
        }
        if (n->closed) {
            const char *k;
            json_t *m;
            json_object_foreach((json_t *)inst, k, m)
            {
                size_t i;
                for (i = 0; i < n->n_props; i++)
                    if (strcmp(n->keys[i], k) == 0)
                        break;
                if (i == n->n_props)
                    return vfail(v, p, "unexpected property '%s'", k);
            }
        }
    } else if (json_is_array(inst) && n->items != NULL) {
        size_t i;
        json_t *e;
        json_array_foreach(inst, i, e)
        {
            struct ipath sub = {.up = p, .key = NULL, .index = i};
            if (!validate(v, n->items, e, &sub, false))
                return false;
        }
    }
    return true;
}

bool sc_validate_node(const struct sc_node *n, const json_t *inst, bool skip_values)
{
    struct vctx v = {.want_err = false};
    return validate(&v, n, inst, NULL, skip_values);
}

bool tg_schema_validate(const struct tg_schema *s, const json_t *instance, char *err, size_t errlen)
{
    if (s == NULL || instance == NULL) {
        put_err(err, errlen, "$: NULL schema or instance");
        return false;
    }
    struct vctx v = {.err = err, .errlen = errlen, .want_err = true};
    return validate(&v, s->root, instance, NULL, false);
}

bool tg_schema_validate_text(const struct tg_schema *s, const char *text, size_t len, char *err,
                             size_t errlen)
{
    if (s == NULL || text == NULL) {
        put_err(err, errlen, "$: NULL schema or text");
        return false;
    }
    json_error_t je;
    /* \u0000 is valid JSON, and an enum value with it turns into exactly that in the grammar. */
    json_t *js = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (js == NULL) {
        put_err(err, errlen, "invalid JSON at line %d column %d: %s", je.line, je.column, je.text);
        return false;
    }
    bool ok = tg_schema_validate(s, js, err, errlen);
    json_decref(js);
    return ok;
}
