#include "tg/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg/err.h"

void tg_buf_init(struct tg_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max != 0 ? max : SIZE_MAX / 2;
}

void tg_buf_free(struct tg_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void tg_buf_reset(struct tg_buf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

static int reserve(struct tg_buf *b, size_t n)
{
    if (n > b->max || b->len > b->max - n)
        return TG_TOOBIG;
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return TG_OK;
    size_t cap = b->cap != 0 ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL)
        return TG_NOMEM;
    b->data = p;
    b->cap = cap;
    return TG_OK;
}

int tg_buf_append(struct tg_buf *b, const void *p, size_t n)
{
    int rc = reserve(b, n);
    if (rc != TG_OK)
        return rc;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return TG_OK;
}

int tg_buf_append_str(struct tg_buf *b, const char *s) { return tg_buf_append(b, s, strlen(s)); }

int tg_buf_vprintf(struct tg_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return TG_INVAL;
    int rc = reserve(b, (size_t)n);
    if (rc != TG_OK)
        return rc;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return TG_OK;
}

int tg_buf_printf(struct tg_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = tg_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}

char *tg_buf_detach(struct tg_buf *b)
{
    char *p = b->data;
    if (p == NULL)
        p = calloc(1, 1);
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
