#include "tg/yaml.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "tg/buf.h"
#include "tg/err.h"

/* All nodes and strings of a document live in one list of allocations freed together. */
struct tg_ydoc {
    char *path;
    struct tg_ynode *root;
    void **allocs;
    size_t n_allocs, cap_allocs;
    size_t n_nodes; /* converted so far; aliases are expanded, so this bounds "billion laughs" */
};

/* A config tree has hundreds of nodes; alias bombs reach billions from a few hundred bytes. */
#define TG_YDOC_MAX_NODES 100000

static void *doc_alloc(struct tg_ydoc *d, size_t n)
{
    if (d->n_allocs == d->cap_allocs) {
        size_t cap = d->cap_allocs ? d->cap_allocs * 2 : 64;
        void **p = realloc(d->allocs, cap * sizeof *p);
        if (p == NULL)
            return NULL;
        d->allocs = p;
        d->cap_allocs = cap;
    }
    void *p = calloc(1, n ? n : 1);
    if (p != NULL)
        d->allocs[d->n_allocs++] = p;
    return p;
}

static char *doc_strndup(struct tg_ydoc *d, const char *s, size_t n)
{
    char *p = doc_alloc(d, n + 1);
    if (p != NULL)
        memcpy(p, s, n);
    return p;
}

/* ${VAR} and ${VAR:-default}; "$$" is a literal '$'. */
static int interpolate(struct tg_ydoc *d, const char *in, const char **out, const char **missing)
{
    if (strchr(in, '$') == NULL) {
        *out = in;
        return TG_OK;
    }
    struct tg_buf b;
    tg_buf_init(&b, 1 << 20);
    int rc = TG_OK;
    for (const char *p = in; *p != '\0' && rc == TG_OK;) {
        if (p[0] == '$' && p[1] == '$') {
            rc = tg_buf_append(&b, "$", 1);
            p += 2;
        } else if (p[0] == '$' && p[1] == '{') {
            const char *end = strchr(p + 2, '}');
            if (end == NULL) {
                rc = tg_buf_append_str(&b, p);
                break;
            }
            char name[256];
            size_t n = (size_t)(end - (p + 2));
            if (n >= sizeof name)
                n = sizeof name - 1;
            memcpy(name, p + 2, n);
            name[n] = '\0';
            const char *def = NULL;
            char *colon = strstr(name, ":-");
            if (colon != NULL) {
                *colon = '\0';
                def = colon + 2;
            }
            const char *v = getenv(name);
            if (v == NULL || (v[0] == '\0' && def != NULL))
                v = def;
            if (v == NULL) {
                *missing = doc_strndup(d, name, strlen(name));
                v = "";
            }
            rc = tg_buf_append_str(&b, v);
            p = end + 1;
        } else {
            rc = tg_buf_append(&b, p, 1);
            p++;
        }
    }
    if (rc == TG_OK) {
        *out = doc_strndup(d, b.data ? b.data : "", b.len);
        if (*out == NULL)
            rc = TG_NOMEM;
    }
    tg_buf_free(&b);
    return rc;
}

static struct tg_ynode *convert(struct tg_ydoc *d, yaml_document_t *yd, yaml_node_t *yn, int depth)
{
    if (depth > 64 || ++d->n_nodes > TG_YDOC_MAX_NODES)
        return NULL;
    struct tg_ynode *n = doc_alloc(d, sizeof *n);
    if (n == NULL)
        return NULL;
    n->line = (int)yn->start_mark.line + 1;
    switch (yn->type) {
    case YAML_SCALAR_NODE: {
        const char *raw = doc_strndup(d, (const char *)yn->data.scalar.value, yn->data.scalar.length);
        if (raw == NULL)
            return NULL;
        n->plain = yn->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (n->plain && (strcmp(raw, "") == 0 || strcmp(raw, "~") == 0 || strcmp(raw, "null") == 0)) {
            n->type = TG_Y_NULL;
            break;
        }
        n->type = TG_Y_SCALAR;
        if (interpolate(d, raw, &n->value, &n->env_missing) != TG_OK)
            return NULL;
        break;
    }
    case YAML_SEQUENCE_NODE: {
        n->type = TG_Y_SEQ;
        size_t cnt = (size_t)(yn->data.sequence.items.top - yn->data.sequence.items.start);
        n->items = doc_alloc(d, cnt * sizeof *n->items);
        if (n->items == NULL)
            return NULL;
        for (size_t i = 0; i < cnt; i++) {
            yaml_node_t *c = yaml_document_get_node(yd, yn->data.sequence.items.start[i]);
            if (c == NULL || (n->items[i] = convert(d, yd, c, depth + 1)) == NULL)
                return NULL;
        }
        n->n = cnt;
        break;
    }
    case YAML_MAPPING_NODE: {
        n->type = TG_Y_MAP;
        size_t cnt = (size_t)(yn->data.mapping.pairs.top - yn->data.mapping.pairs.start);
        n->items = doc_alloc(d, cnt * sizeof *n->items);
        n->keys = doc_alloc(d, cnt * sizeof *n->keys);
        n->key_lines = doc_alloc(d, cnt * sizeof *n->key_lines);
        if (n->items == NULL || n->keys == NULL || n->key_lines == NULL)
            return NULL;
        for (size_t i = 0; i < cnt; i++) {
            yaml_node_pair_t *pr = &yn->data.mapping.pairs.start[i];
            yaml_node_t *k = yaml_document_get_node(yd, pr->key);
            yaml_node_t *v = yaml_document_get_node(yd, pr->value);
            if (k == NULL || v == NULL || k->type != YAML_SCALAR_NODE)
                return NULL;
            n->keys[i] = doc_strndup(d, (const char *)k->data.scalar.value, k->data.scalar.length);
            n->key_lines[i] = (int)k->start_mark.line + 1;
            if (n->keys[i] == NULL || (n->items[i] = convert(d, yd, v, depth + 1)) == NULL)
                return NULL;
        }
        n->n = cnt;
        break;
    }
    default:
        n->type = TG_Y_NULL;
    }
    return n;
}

static void doc_destroy(struct tg_ydoc *d)
{
    if (d == NULL)
        return;
    for (size_t i = 0; i < d->n_allocs; i++)
        free(d->allocs[i]);
    free(d->allocs);
    free(d->path);
    free(d);
}

struct tg_ydoc *tg_ydoc_load_string(const char *name, const char *text, size_t len, char *err,
                                    size_t errlen)
{
    struct tg_ydoc *d = calloc(1, sizeof *d);
    if (d == NULL || (d->path = strdup(name)) == NULL) {
        snprintf(err, errlen, "%s: out of memory", name);
        free(d);
        return NULL;
    }
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, errlen, "%s:%zu: %s%s%s", name, parser.problem_mark.line + 1,
                 parser.problem ? parser.problem : "YAML syntax error",
                 parser.context ? " " : "", parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        doc_destroy(d);
        return NULL;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (root == NULL) {
        d->root = doc_alloc(d, sizeof *d->root);
        if (d->root != NULL) {
            d->root->type = TG_Y_NULL;
            d->root->line = 1;
        }
    } else {
        d->root = convert(d, &doc, root, 0);
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (d->root == NULL) {
        snprintf(err, errlen, "%s:1: document too deep, too many nodes (alias expansion), malformed, or out of memory", name);
        doc_destroy(d);
        return NULL;
    }
    return d;
}

struct tg_ydoc *tg_ydoc_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct tg_buf b;
    tg_buf_init(&b, 16u << 20);
    char chunk[8192];
    size_t n;
    int rc = TG_OK;
    while (rc == TG_OK && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        rc = tg_buf_append(&b, chunk, n);
    int read_err = ferror(f);
    fclose(f);
    if (rc != TG_OK || read_err) {
        snprintf(err, errlen, "%s: cannot read: %s", path, rc != TG_OK ? tg_strerror(rc) : "I/O error");
        tg_buf_free(&b);
        return NULL;
    }
    if (b.len == 0) {
        snprintf(err, errlen, "%s:1: file is empty", path);
        tg_buf_free(&b);
        return NULL;
    }
    struct tg_ydoc *d = tg_ydoc_load_string(path, b.data, b.len, err, errlen);
    tg_buf_free(&b);
    return d;
}

const struct tg_ynode *tg_ydoc_root(const struct tg_ydoc *doc) { return doc->root; }
const char *tg_ydoc_path(const struct tg_ydoc *doc) { return doc->path; }
void tg_ydoc_free(struct tg_ydoc *doc) { doc_destroy(doc); }

const struct tg_ynode *tg_y_get(const struct tg_ynode *map, const char *key)
{
    if (map == NULL || map->type != TG_Y_MAP)
        return NULL;
    for (size_t i = 0; i < map->n; i++)
        if (strcmp(map->keys[i], key) == 0)
            return map->items[i];
    return NULL;
}

void tg_yr_init(struct tg_yreader *r, const char *file)
{
    r->file = file;
    r->failed = false;
    r->err[0] = '\0';
}

bool tg_yr_fail(struct tg_yreader *r, int line, const char *fmt, ...)
{
    if (r->failed)
        return false;
    r->failed = true;
    int n = snprintf(r->err, sizeof r->err, "%s:%d: ", r->file, line);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof r->err)
        vsnprintf(r->err + n, sizeof r->err - (size_t)n, fmt, ap);
    va_end(ap);
    return false;
}

static const char *type_name(enum tg_ytype t)
{
    switch (t) {
    case TG_Y_NULL:
        return "null";
    case TG_Y_SCALAR:
        return "a scalar";
    case TG_Y_MAP:
        return "a mapping";
    case TG_Y_SEQ:
        return "a list";
    }
    return "?";
}

bool tg_yr_map(struct tg_yreader *r, const struct tg_ynode *node, const char *what,
               const char *const *allowed)
{
    if (r->failed)
        return false;
    if (node == NULL || node->type == TG_Y_NULL)
        return true;
    if (node->type != TG_Y_MAP)
        return tg_yr_fail(r, node->line, "%s must be a mapping, not %s", what, type_name(node->type));
    for (size_t i = 0; i < node->n; i++) {
        bool ok = false;
        for (const char *const *a = allowed; *a != NULL && !ok; a++)
            ok = strcmp(*a, node->keys[i]) == 0;
        if (!ok) {
            char list[256] = "";
            size_t len = 0;
            for (const char *const *a = allowed; *a != NULL && len + 2 < sizeof list; a++)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", a == allowed ? "" : ", ", *a);
            return tg_yr_fail(r, node->key_lines[i], "unknown key '%s' in %s (expected one of: %s)",
                              node->keys[i], what, list);
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(node->keys[j], node->keys[i]) == 0)
                return tg_yr_fail(r, node->key_lines[i], "duplicate key '%s' in %s", node->keys[i], what);
    }
    return true;
}

bool tg_yr_seq(struct tg_yreader *r, const struct tg_ynode *node, const char *what)
{
    if (r->failed)
        return false;
    if (node == NULL || node->type == TG_Y_NULL || node->type == TG_Y_SEQ)
        return true;
    return tg_yr_fail(r, node->line, "%s must be a list, not %s", what, type_name(node->type));
}

bool tg_yr_node_str(struct tg_yreader *r, const struct tg_ynode *node, const char *what,
                    const char **out)
{
    if (r->failed)
        return false;
    if (node->type != TG_Y_SCALAR)
        return tg_yr_fail(r, node->line, "%s must be a string, not %s", what, type_name(node->type));
    *out = node->value;
    return true;
}

bool tg_yr_str(struct tg_yreader *r, const struct tg_ynode *map, const char *key, const char **out)
{
    const struct tg_ynode *v = tg_y_get(map, key);
    if (r->failed)
        return false;
    if (v == NULL)
        return true;
    return tg_yr_node_str(r, v, key, out);
}

static bool parse_num(const struct tg_ynode *v, double *out)
{
    if (v->type != TG_Y_SCALAR || v->value[0] == '\0')
        return false;
    char *end;
    errno = 0;
    double d = strtod(v->value, &end);
    if (errno != 0 || *end != '\0' || !isfinite(d))
        return false;
    *out = d;
    return true;
}

bool tg_yr_node_num(struct tg_yreader *r, const struct tg_ynode *node, const char *what, double min,
                    double max, double *out)
{
    if (r->failed)
        return false;
    double d;
    if (!parse_num(node, &d))
        return tg_yr_fail(r, node->line, "%s must be a number", what);
    if (d < min || d > max)
        return tg_yr_fail(r, node->line, "%s must be between %g and %g (got %g)", what, min, max, d);
    *out = d;
    return true;
}

bool tg_yr_num(struct tg_yreader *r, const struct tg_ynode *map, const char *key, double min,
               double max, double *out)
{
    const struct tg_ynode *v = tg_y_get(map, key);
    if (r->failed)
        return false;
    if (v == NULL)
        return true;
    return tg_yr_node_num(r, v, key, min, max, out);
}

bool tg_yr_int(struct tg_yreader *r, const struct tg_ynode *map, const char *key, int64_t min,
               int64_t max, int64_t *out)
{
    const struct tg_ynode *v = tg_y_get(map, key);
    if (r->failed)
        return false;
    if (v == NULL)
        return true;
    char *end;
    errno = 0;
    long long x = v->type == TG_Y_SCALAR ? strtoll(v->value, &end, 10) : 0;
    if (v->type != TG_Y_SCALAR || v->value[0] == '\0' || errno != 0 || *end != '\0')
        return tg_yr_fail(r, v->line, "%s must be an integer", key);
    if (x < min || x > max)
        return tg_yr_fail(r, v->line, "%s must be between %lld and %lld (got %lld)", key,
                          (long long)min, (long long)max, x);
    *out = x;
    return true;
}

bool tg_yr_bool(struct tg_yreader *r, const struct tg_ynode *map, const char *key, bool *out)
{
    const struct tg_ynode *v = tg_y_get(map, key);
    if (r->failed)
        return false;
    if (v == NULL)
        return true;
    if (v->type == TG_Y_SCALAR && (strcmp(v->value, "true") == 0 || strcmp(v->value, "false") == 0)) {
        *out = v->value[0] == 't';
        return true;
    }
    return tg_yr_fail(r, v->line, "%s must be true or false", key);
}

bool tg_yr_enum(struct tg_yreader *r, const struct tg_ynode *map, const char *key,
                const char *const *choices, int *out)
{
    const char *s = NULL;
    const struct tg_ynode *v = tg_y_get(map, key);
    if (!tg_yr_str(r, map, key, &s) || s == NULL)
        return !r->failed;
    for (int i = 0; choices[i] != NULL; i++) {
        if (strcmp(choices[i], s) == 0) {
            *out = i;
            return true;
        }
    }
    char list[256] = "";
    size_t len = 0;
    for (int i = 0; choices[i] != NULL && len + 2 < sizeof list; i++)
        len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", i ? "|" : "", choices[i]);
    return tg_yr_fail(r, v->line, "%s must be one of %s (got '%s')", key, list, s);
}
