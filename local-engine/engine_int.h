/* local-engine private helpers shared by engine.c and its unit tests (not a public header). */
#ifndef TG_ENGINE_INT_H
#define TG_ENGINE_INT_H

#include <stdbool.h>
#include <stddef.h>

/* Length of the longest complete-UTF-8 prefix of s[0..len): a trailing lead byte whose
 * continuation bytes have not arrived yet is held back (at most 3 bytes). Invalid bytes are
 * not held back (they will never become valid). */
size_t tg_engine_utf8_complete_len(const char *s, size_t len);

/* Earliest occurrence of any stop string in text[from..len); returns its offset or
 * (size_t)-1. `from` lets the caller skip text already searched. */
size_t tg_engine_find_stop(const char *text, size_t len, size_t from, char *const *stop,
                           size_t n_stop);

/* Bytes at the end of text[0..len) that could still be the start of a stop string (the
 * longest suffix that is a proper prefix of some stop string); these are held back from
 * streaming until the next token decides. */
size_t tg_engine_stop_holdback(const char *text, size_t len, char *const *stop, size_t n_stop);

#endif
