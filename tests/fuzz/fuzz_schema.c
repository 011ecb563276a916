/* Fuzz target: JSON Schema compile + validate + GBNF generation on arbitrary bytes.
 *
 * The input is used twice: whole, as a schema (then validated against itself and turned into
 * grammars), and split at the first newline into a schema line and an instance. Every schema
 * that compiles must yield a grammar; nothing may crash, leak or read out of bounds. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tg/err.h"
#include "tg/schema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void exercise(const char *schema, size_t slen, const char *inst, size_t ilen)
{
    struct tg_schema *s = NULL;
    char err[256];
    if (tg_schema_compile_text(schema, slen, &s, err, sizeof err) != TG_OK)
        return;
    tg_schema_validate_text(s, inst, ilen, err, sizeof err);
    char *g = tg_schema_to_gbnf(s);
    if (g == NULL)
        abort(); /* only allocation failure may give NULL */
    free(g);
    struct tg_gbnf_opts o = {.max_string_chars = 0,
                             .max_array_items = 1,
                             .max_ws = 0,
                             .max_number_digits = 1,
                             .any_depth = 0};
    g = tg_schema_to_gbnf_opts(s, &o);
    if (g == NULL)
        abort();
    free(g);
    tg_schema_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    exercise(text, size, text, size);
    const char *nl = memchr(text, '\n', size);
    if (nl != NULL) {
        size_t slen = (size_t)(nl - text);
        exercise(text, slen, nl + 1, size - slen - 1);
    }
    return 0;
}
