/* Server-sent events parsing for provider streams, incremental and bounded. */
#include <string.h>

#include "upstream_int.h"

/* Dispatch one event block (without its terminating blank line). */
static int dispatch(const char *blk, size_t n, up_sse_fn fn, void *ctx, struct tg_buf *data)
{
    char event[64] = "";
    tg_buf_reset(data);
    size_t i = 0;
    bool have_data = false;
    while (i < n) {
        const char *line = blk + i;
        const char *nl = memchr(line, '\n', n - i);
        size_t ll = nl != NULL ? (size_t)(nl - line) : n - i;
        i += ll + 1;
        if (ll > 0 && line[ll - 1] == '\r')
            ll--;
        if (ll == 0 || line[0] == ':')
            continue;
        const char *colon = memchr(line, ':', ll);
        size_t fl = colon != NULL ? (size_t)(colon - line) : ll;
        const char *v = colon != NULL ? colon + 1 : line + ll;
        size_t vl = ll - (size_t)(v - line);
        if (vl > 0 && v[0] == ' ') {
            v++;
            vl--;
        }
        if (fl == 4 && memcmp(line, "data", 4) == 0) {
            if (have_data && tg_buf_append(data, "\n", 1) != 0)
                return TG_TOOBIG;
            if (tg_buf_append(data, v, vl) != 0)
                return TG_TOOBIG;
            have_data = true;
        } else if (fl == 5 && memcmp(line, "event", 5) == 0) {
            size_t k = vl < sizeof event - 1 ? vl : sizeof event - 1;
            memcpy(event, v, k);
            event[k] = '\0';
        }
    }
    if (!have_data)
        return 0;
    return fn(ctx, event[0] != '\0' ? event : NULL, data->data != NULL ? data->data : "",
              data->len);
}

/* Position just past the first blank line (\n\n or \r\n\r\n) in p[0..n), or 0 if none. Also
 * returns the block length through *blk. */
static size_t find_end(const char *p, size_t n, size_t *blk)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] != '\n')
            continue;
        if (p[i + 1] == '\n') {
            *blk = i;
            return i + 2;
        }
        if (p[i + 1] == '\r' && i + 2 < n && p[i + 2] == '\n') {
            *blk = i;
            return i + 3;
        }
    }
    return 0;
}

int up_sse_feed(struct tg_buf *pending, const char *p, size_t n, up_sse_fn fn, void *ctx)
{
    struct tg_buf data;
    tg_buf_init(&data, pending->max);
    int rc = 0;
    /* Fast path: nothing pending, parse straight from p. */
    if (pending->len == 0) {
        size_t off = 0, blk = 0, end;
        while (off < n && (end = find_end(p + off, n - off, &blk)) != 0) {
            rc = dispatch(p + off, blk, fn, ctx, &data);
            off += end;
            if (rc != 0)
                goto out;
        }
        if (off < n)
            rc = tg_buf_append(pending, p + off, n - off);
        goto out;
    }
    rc = tg_buf_append(pending, p, n);
    if (rc != 0)
        goto out;
    size_t off = 0, blk = 0, end;
    while (off < pending->len &&
           (end = find_end(pending->data + off, pending->len - off, &blk)) != 0) {
        rc = dispatch(pending->data + off, blk, fn, ctx, &data);
        off += end;
        if (rc != 0)
            break;
    }
    if (off > 0) {
        memmove(pending->data, pending->data + off, pending->len - off);
        pending->len -= off;
        pending->data[pending->len] = '\0';
    }
out:
    tg_buf_free(&data);
    return rc;
}

void up_stream_init(struct up_stream *st)
{
    memset(st, 0, sizeof *st);
    st->usage.prompt_tokens = -1;
    st->usage.completion_tokens = -1;
    for (size_t i = 0; i < sizeof st->tool_idx / sizeof st->tool_idx[0]; i++)
        st->tool_idx[i] = -1;
}

void up_stream_clear(struct up_stream *st)
{
    json_decref(st->error);
    up_stream_init(st);
}
