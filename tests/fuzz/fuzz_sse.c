/* Fuzz target: the upstream SSE parser (gateway/upstream/sse.c) and the stream-event handlers
 * behind it (OpenAI chunks, Anthropic events), on a provider stream that arrives in pieces.
 *
 * Input: byte 0 picks the dialect (bit 0: Anthropic) and whether the client asked for usage
 * (bit 1); byte 1 and byte 2 are the lengths of the first two reads, the rest is the stream. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "upstream_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct fz_sse {
    struct up_stream st;
    bool anthropic;
    size_t chunks;
};

static int on_chunk(void *ctx, const json_t *chunk, const char *data, size_t len)
{
    struct fz_sse *f = ctx;
    /* Every chunk handed to the client must be serialised JSON of an object. */
    if (chunk == NULL || !json_is_object(chunk) || data == NULL || len == 0)
        abort();
    f->chunks++;
    return 0;
}

static int on_event(void *ctx, const char *event, const char *data, size_t len)
{
    struct fz_sse *f = ctx;
    if (f->anthropic)
        return up_anthropic_event(&f->st, event, data, len, on_chunk, f) != 0;
    return up_openai_event(&f->st, data, len, on_chunk, f) != 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    struct fz_sse f = {.anthropic = (data[0] & 1) != 0};
    up_stream_init(&f.st);
    f.st.client_usage = (data[0] & 2) != 0;
    size_t cut[3] = {data[1], data[2], 0};
    const char *p = (const char *)data + 3;
    size_t n = size - 3;
    struct tg_buf pending;
    tg_buf_init(&pending, 1u << 20);
    for (int i = 0; i < 3 && n > 0; i++) {
        size_t k = i == 2 || cut[i] > n ? n : cut[i];
        if (up_sse_feed(&pending, p, k, on_event, &f) != 0)
            break;
        p += k;
        n -= k;
    }
    tg_buf_free(&pending);
    up_stream_clear(&f.st);
    return 0;
}
