/* Growable byte buffer with a ceiling (curl's dynbuf). Every buffer tiergate builds from
 * untrusted or unbounded input has a maximum size; appending past it fails with TG_TOOBIG
 * and leaves the buffer as it was.
 *
 * Not thread-safe; the owner frees with tg_buf_free(). The content is always NUL-terminated
 * (the terminator is not counted in len and does not count against max).
 */
#ifndef TG_BUF_H
#define TG_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct tg_buf {
    char *data; /* NULL until the first append */
    size_t len; /* bytes used, excluding the NUL */
    size_t cap; /* bytes allocated */
    size_t max; /* ceiling for len, in bytes */
};

/* Initialise an empty buffer that may grow to max bytes (0 = SIZE_MAX/2). Allocates nothing. */
void tg_buf_init(struct tg_buf *b, size_t max);
void tg_buf_free(struct tg_buf *b);
void tg_buf_reset(struct tg_buf *b); /* len = 0, keeps the allocation */

/* Append; TG_OK, TG_TOOBIG (over max) or TG_NOMEM. */
int tg_buf_append(struct tg_buf *b, const void *p, size_t n);
int tg_buf_append_str(struct tg_buf *b, const char *s);
int tg_buf_printf(struct tg_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int tg_buf_vprintf(struct tg_buf *b, const char *fmt, va_list ap);

/* Take the data (caller frees with free()); the buffer is left empty. Never NULL on TG_OK. */
char *tg_buf_detach(struct tg_buf *b);

#endif
