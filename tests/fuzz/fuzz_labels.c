/* Fuzz target: tg_grammar_parse_labels on arbitrary model output (single and multi-label),
 * and label-grammar generation from labels cut out of the input. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tg/err.h"
#include "tg/grammar.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const fixed[] = {"spam", "ham", "a\"b\\c", "naïve ☃", "x, y", "[", "\""};
    const size_t nf = sizeof fixed / sizeof fixed[0];
    size_t idx[8], n;
    char err[256];
    tg_grammar_parse_labels(fixed, nf, false, (const char *)data, size, idx, 8, &n, err,
                            sizeof err);
    tg_grammar_parse_labels(fixed, nf, true, (const char *)data, size, idx, 8, &n, err, sizeof err);
    tg_grammar_parse_labels(fixed, nf, true, (const char *)data, size, idx, 1, &n, err, sizeof err);

    /* Labels from the input: NUL-separated pieces (at most 16). */
    char *copy = malloc(size + 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    copy[size] = '\0';
    const char *labels[16];
    size_t nl = 0;
    for (size_t off = 0; off <= size && nl < 16;) {
        labels[nl++] = copy + off;
        off += strlen(copy + off) + 1;
    }
    for (int multi = 0; multi < 2; multi++) {
        char *g = tg_grammar_labels(labels, nl, multi != 0, err, sizeof err);
        if (g != NULL && tg_grammar_check_labels(labels, nl, NULL, 0) != TG_OK)
            abort(); /* a grammar for a label set the checker rejects */
        free(g);
    }
    free(copy);
    return 0;
}
