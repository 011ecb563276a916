/* Label grammars for classification (llama.cpp GBNF), and the parser that maps generated text
 * back to label indices. Pure C, no llama.cpp dependency. JSON Schema grammars are in schema.h.
 *
 * Output shapes:
 *   single-label: the label text itself, nothing else (e.g. `positive`);
 *   multi-label:  a compact JSON array of label strings, at least one and at most n items,
 *                 e.g. `["billing","urgent"]` (labels JSON-escaped inside the quotes). The
 *                 grammar cannot forbid repeats; the parser drops them.
 *
 * Labels: 1..TG_GRAMMAR_MAX_LABELS of them, each 1..TG_GRAMMAR_MAX_LABEL_BYTES bytes of valid
 * UTF-8 without NUL, all distinct. Quotes, backslashes, control characters and non-ASCII text
 * are fine (escaped for GBNF as needed).
 *
 * Threads: no shared state; every function is safe to call from any thread.
 */
#ifndef TG_GRAMMAR_H
#define TG_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>

#define TG_GRAMMAR_MAX_LABELS      256
#define TG_GRAMMAR_MAX_LABEL_BYTES 256

/* Check a label set against the rules above. TG_OK, or TG_INVAL with e.g.
 * "label 3 is empty" / "label 4 duplicates label 1 ('spam')" / "too many labels (300 > 256)". */
int tg_grammar_check_labels(const char *const *labels, size_t n, char *err, size_t errlen);

/* GBNF (start rule `root`) admitting exactly one label (multi=false) or a JSON array of labels
 * (multi=true). malloc'd, caller frees. NULL on an invalid label set (reason in err, as
 * tg_grammar_check_labels) or allocation failure ("out of memory" in err). */
char *tg_grammar_labels(const char *const *labels, size_t n, bool multi, char *err, size_t errlen);

/* Turn generated text (len bytes) back into label indices. Single-label: the text must equal
 * one label exactly, or after trimming surrounding ASCII whitespace; multi: a JSON array of label
 * strings (an empty array parses to zero labels). idx receives up to `cap` indices in order of
 * first appearance, duplicates dropped; *n_out is the count. Returns TG_OK, or TG_PARSE with the
 * reason in err ("not a label: ...", "invalid JSON ...", "item 2 is not a label: ..."), TG_INVAL
 * for bad arguments, TG_TOOBIG when more than cap distinct labels were found. idx and *n_out are
 * written only on success. */
int tg_grammar_parse_labels(const char *const *labels, size_t n, bool multi, const char *text,
                            size_t len, size_t *idx, size_t cap, size_t *n_out, char *err,
                            size_t errlen);

#endif
