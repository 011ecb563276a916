/* YAML documents with line numbers, for routes.yaml and the policy files (libyaml underneath).
 *
 * tg_ydoc_load() reads one document into a tree whose every node knows its 1-based line.
 * Scalars get ${VAR} / ${VAR:-default} interpolated from the environment at load time; a
 * variable that is unset and has no default leaves the scalar empty with `env_missing` naming
 * it, so the caller can disable what needs it (with a log line) instead of failing.
 *
 * The tg_yr_* readers validate while reading: the first error is kept in the reader as
 * "file:line: message" and later calls become no-ops returning false, so a loader can read a
 * whole section and check once. Nothing here is thread-safe; a tree is immutable once loaded
 * and is freed with tg_ydoc_free().
 */
#ifndef TG_YAML_H
#define TG_YAML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tg_ytype { TG_Y_NULL, TG_Y_SCALAR, TG_Y_MAP, TG_Y_SEQ };

struct tg_ynode {
    enum tg_ytype type;
    int line;                /* 1-based line of the node in its file */
    const char *value;       /* TG_Y_SCALAR: text after interpolation, else NULL */
    const char *env_missing; /* TG_Y_SCALAR: name of an unset ${VAR} it used, else NULL */
    bool plain;              /* TG_Y_SCALAR: unquoted (so `null`, `true`, `12` keep meaning) */
    size_t n;                /* MAP: number of pairs; SEQ: number of items */
    const char **keys;       /* MAP: keys (n) */
    int *key_lines;          /* MAP: line of each key (n) */
    struct tg_ynode **items; /* MAP: values; SEQ: items (n) */
};

struct tg_ydoc;

/* Load a file. NULL on error, with "file:line: message" in err. A missing or empty file is an
 * error. The root of an empty document is TG_Y_NULL. */
struct tg_ydoc *tg_ydoc_load(const char *path, char *err, size_t errlen);
/* Same, from memory; `name` is used in messages in place of a path. */
struct tg_ydoc *tg_ydoc_load_string(const char *name, const char *text, size_t len, char *err,
                                    size_t errlen);
const struct tg_ynode *tg_ydoc_root(const struct tg_ydoc *doc);
const char *tg_ydoc_path(const struct tg_ydoc *doc);
void tg_ydoc_free(struct tg_ydoc *doc);

/* Map lookup; NULL when absent or when map is not a map. */
const struct tg_ynode *tg_y_get(const struct tg_ynode *map, const char *key);

struct tg_yreader {
    const char *file;
    bool failed;
    char err[512]; /* "file:line: message" once failed */
};

void tg_yr_init(struct tg_yreader *r, const char *file);
/* Record an error at node's line (printf-style); returns false. */
bool tg_yr_fail(struct tg_yreader *r, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* `node` must be a map whose keys are all in `allowed` (NULL-terminated); `what` names the
 * section in the message ("unknown key 'x' in server"). A TG_Y_NULL node counts as empty. */
bool tg_yr_map(struct tg_yreader *r, const struct tg_ynode *node, const char *what,
               const char *const *allowed);
bool tg_yr_seq(struct tg_yreader *r, const struct tg_ynode *node, const char *what);

/* Typed scalar readers for map[key]. Absent key: true, *out untouched (keep the default).
 * Wrong type or out of [min, max]: false with the key's line. */
bool tg_yr_str(struct tg_yreader *r, const struct tg_ynode *map, const char *key, const char **out);
bool tg_yr_int(struct tg_yreader *r, const struct tg_ynode *map, const char *key, int64_t min,
               int64_t max, int64_t *out);
bool tg_yr_num(struct tg_yreader *r, const struct tg_ynode *map, const char *key, double min,
               double max, double *out);
bool tg_yr_bool(struct tg_yreader *r, const struct tg_ynode *map, const char *key, bool *out);
/* One of `choices` (NULL-terminated); *out is its index. */
bool tg_yr_enum(struct tg_yreader *r, const struct tg_ynode *map, const char *key,
                const char *const *choices, int *out);

/* Scalar node conversions with the same error rules (for sequence items). */
bool tg_yr_node_str(struct tg_yreader *r, const struct tg_ynode *node, const char *what,
                    const char **out);
bool tg_yr_node_num(struct tg_yreader *r, const struct tg_ynode *node, const char *what, double min,
                    double max, double *out);

#endif
