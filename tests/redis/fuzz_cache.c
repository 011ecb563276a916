/* Fuzz target for the cache's parsers: byte 0 selects
 *   even: tg_cache_entry_decode on the rest (a Redis value: another writer, a corrupted or
 *         foreign key), and a decode -> encode -> decode round trip of what parsed;
 *   odd:  the rest as a JSON request body -> tg_cache_decide + tg_cache_key (the canonical
 *         hasher walks arbitrary client JSON). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cache.h"
#include "tg/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    if ((data[0] & 1) == 0) {
        struct tg_cache_entry *e = NULL;
        if (tg_cache_entry_decode(p, n, &e) == TG_OK) {
            char *out;
            size_t len;
            if (tg_cache_entry_encode(e, &out, &len) == TG_OK) {
                struct tg_cache_entry *again = NULL;
                if (tg_cache_entry_decode(out, len, &again) != TG_OK || again->n_chunks != e->n_chunks ||
                    again->body_len != e->body_len)
                    abort(); /* what we wrote must read back the same */
                tg_cache_entry_free(again);
                free(out);
            }
            tg_cache_entry_free(e);
        }
        return 0;
    }
    json_t *body = json_loadb(p, n, JSON_REJECT_DUPLICATES, NULL);
    if (body == NULL)
        return 0;
    struct tg_cfg_cache cfg = {.enabled = true, .ttl_s = 60, .max_entry_bytes = 1 << 20};
    (void)tg_cache_decide(&cfg, body, 1.0, "no-cache, no-store", true);
    struct tg_cache_key k;
    if (tg_cache_key("tenant", "/v1/chat/completions", NULL, body, (data[0] & 2) != 0, &k) == TG_OK &&
        strlen(k.hex) != 64)
        abort();
    json_decref(body);
    return 0;
}
