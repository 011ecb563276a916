/* Fuzz target: the Anthropic Messages translation (gateway/upstream/anthropic.c), both ways:
 * an OpenAI-shaped client request into an Anthropic request, and Anthropic responses, stream
 * events and error bodies back into OpenAI shapes.
 *
 * Input: byte 0 picks the direction (% 4) and flags (bit 2: stream / forced JSON), the rest is
 * the JSON (for stream events: "event-name\n" then the data). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "upstream_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int on_chunk(void *ctx, const json_t *chunk, const char *data, size_t len)
{
    (void)ctx;
    json_t *back = json_loadb(data, len, 0, NULL);
    if (chunk == NULL || back == NULL || !json_is_object(back)) /* what the client gets parses */
        abort();
    json_decref(back);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const int mode = data[0] % 4;
    const bool flag = (data[0] & 4) != 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    struct tg_cfg_provider prov = {.name = "anthropic",
                                   .kind = TG_PROVIDER_ANTHROPIC,
                                   .base_url = "http://127.0.0.1:1",
                                   .api_key = "k",
                                   .enabled = true};
    struct tg_cfg_model m = {.name = "claude", .upstream_model = "claude-x", .provider_ref = &prov};
    switch (mode) {
    case 0: { /* client request -> Anthropic request */
        json_t *rq = json_loadb(p, n, 0, NULL);
        if (json_is_object(rq)) {
            struct tg_buf body;
            tg_buf_init(&body, 8u << 20);
            bool cu = false, fj = false;
            char err[256];
            if (up_anthropic_build(rq, &m, flag, &body, &cu, &fj, err, sizeof err) == TG_OK) {
                json_t *out = json_loadb(body.data, body.len, 0, NULL);
                if (!json_is_object(out)) /* what goes to the provider is a JSON object */
                    abort();
                json_decref(out);
            }
            tg_buf_free(&body);
        }
        json_decref(rq);
        break;
    }
    case 1: { /* Anthropic response -> OpenAI response */
        json_t *out = NULL;
        struct tg_upstream_usage u = {-1, -1, 0};
        char finish[32];
        if (up_anthropic_response(p, n, flag, &out, &u, finish, sizeof finish) == TG_OK &&
            !json_is_object(out))
            abort();
        json_decref(out);
        break;
    }
    case 2: { /* one stream event: "name\n" + data */
        const char *nl = memchr(p, '\n', n);
        char event[64];
        size_t el = nl != NULL ? (size_t)(nl - p) : 0;
        if (el >= sizeof event)
            el = sizeof event - 1;
        memcpy(event, p, el);
        event[el] = '\0';
        const char *d = nl != NULL ? nl + 1 : p;
        size_t dl = n - (size_t)(d - p);
        struct up_stream st;
        up_stream_init(&st);
        st.client_usage = flag;
        st.forced_json = (data[0] & 8) != 0;
        up_anthropic_event(&st, nl != NULL ? event : NULL, d, dl, on_chunk, NULL);
        up_stream_clear(&st);
        break;
    }
    default: { /* an error body */
        json_t *e = up_error_from_body(TG_PROVIDER_ANTHROPIC, 400 + data[0] % 100, p, n, flag);
        if (e != NULL && !json_is_object(json_object_get(e, "error")))
            abort();
        json_decref(e);
        break;
    }
    }
    return 0;
}
