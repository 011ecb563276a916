/* Fuzz target: tg_ydoc_load_string (common/yaml.h) on arbitrary bytes, then a walk over every
 * node with the tg_yr_* readers, as a config loader would do. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tg/yaml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk(struct tg_yreader *r, const struct tg_ynode *n, int depth)
{
    if (n == NULL || depth > 128)
        return;
    if (n->type == TG_Y_SCALAR) {
        const char *s;
        double d;
        tg_yr_node_str(r, n, "value", &s);
        tg_yr_node_num(r, n, "value", -1e9, 1e9, &d);
        if (n->value != NULL)
            (void)strlen(n->value);
        return;
    }
    for (size_t i = 0; i < n->n; i++) {
        if (n->type == TG_Y_MAP) {
            (void)strlen(n->keys[i]);
            (void)tg_y_get(n, n->keys[i]);
        }
        walk(r, n->items[i], depth + 1);
    }
    if (n->type == TG_Y_MAP) {
        static const char *const allowed[] = {"listen", "tiers", "cache", NULL};
        static const char *const choices[] = {"local", "remote", NULL};
        const char *s;
        int64_t i64;
        double d;
        bool b;
        int e;
        struct tg_yreader r2;
        tg_yr_init(&r2, "fuzz.yaml");
        tg_yr_map(&r2, n, "section", allowed);
        tg_yr_str(&r2, n, "listen", &s);
        tg_yr_int(&r2, n, "port", 0, 65535, &i64);
        tg_yr_num(&r2, n, "weight", 0, 1, &d);
        tg_yr_bool(&r2, n, "enabled", &b);
        tg_yr_enum(&r2, n, "tier", choices, &e);
        tg_yr_seq(&r2, tg_y_get(n, "tiers"), "tiers");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    struct tg_ydoc *d = tg_ydoc_load_string("fuzz.yaml", (const char *)data, size, err, sizeof err);
    if (d == NULL)
        return 0;
    struct tg_yreader r;
    tg_yr_init(&r, tg_ydoc_path(d));
    walk(&r, tg_ydoc_root(d), 0);
    tg_ydoc_free(d);
    return 0;
}
