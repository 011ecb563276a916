/* Exact-match response cache in Redis.
 *
 * Key: SHA-256 (OpenSSL EVP) over a canonical serialization of the request, stored under the
 * tenant's namespace `tg:c:<tenant>:<hex>` (the tenant is hashed too), so two tenants never share
 * an entry. The hashed input is: a format version, the tenant, the endpoint path, "stream" or
 * "json", the resolved model (the requested model or alias plus any X-Tiergate-Tier override),
 * and the request body as a typed, length-prefixed tree with object keys sorted at every level
 * (so key order and whitespace never matter, and 0 and 0.0 are the same number). At the top
 * level the fields that do not change the output are left out: "model" (replaced by the resolved
 * model), "stream", "stream_options", "user", "metadata", "store", "service_tier".
 * Everything else is kept: messages, prompt, input, tools, tool_choice, response_format, labels,
 * schema, and every sampling parameter (temperature, top_p, top_k, min_p, seed, max_tokens,
 * max_completion_tokens, stop, n, presence_penalty, frequency_penalty, repeat_penalty,
 * logit_bias, logprobs, top_logprobs, grammar...). Dropping a list of known no-ops instead of
 * keeping a list of known parameters means an unknown new parameter can only cause a miss, never
 * a wrong hit.
 *
 * Streamed and non-streamed requests are keyed separately ("stream"/"json" above): a streamed
 * entry holds the ordered SSE chunks exactly as sent, so a hit replays a byte-identical stream;
 * a JSON entry holds the final body.
 *
 * Threads: key/decision/entry functions are pure and thread-safe; lookup/store follow the
 * tg_redis contract (the client's thread only).
 */
#ifndef TG_GW_CACHE_H
#define TG_GW_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "redis.h"
#include "tg/config.h"

/* ---- decision ---------------------------------------------------------------------------- */

/* What the gateway sends in x-tiergate-cache. */
enum tg_cache_result { TG_CACHE_MISS = 0, TG_CACHE_HIT = 1, TG_CACHE_BYPASS = 2 };
const char *tg_cache_result_name(enum tg_cache_result r); /* "miss" | "hit" | "bypass" */

struct tg_cache_decision {
    bool read;          /* look the request up */
    bool write;         /* store the response when it completes successfully */
    const char *reason; /* why not, for logs: "disabled", "nondeterministic", "no-store",
                           "no-cache", "redis-down"; NULL when read && write */
};

/* Decide for one request. body: the parsed request; default_temperature: the temperature the
 * endpoint uses when the body has none (1.0 for chat/completions as in OpenAI's API; the task
 * APIs use 0). cache_control: the request's Cache-Control header or NULL. redis_up:
 * tg_redis_available(). Cacheable when temperature == 0, or a "seed" is set, or
 * cache.cache_nondeterministic. "no-cache" = don't read, do write; "no-store" = neither.
 * A request that is not read reports TG_CACHE_BYPASS; one that is read reports hit or miss. */
struct tg_cache_decision tg_cache_decide(const struct tg_cfg_cache *cfg, const json_t *body,
                                         double default_temperature, const char *cache_control,
                                         bool redis_up);

/* ---- key --------------------------------------------------------------------------------- */

struct tg_cache_key {
    char hex[65];           /* SHA-256 of the canonical request, lowercase hex */
    char redis_key[256];    /* "tg:c:<tenant>:<hex>" (tenant reduced to [A-Za-z0-9_.-], max 64) */
};

/* tenant: "" or NULL in open mode; endpoint: request path ("/v1/chat/completions");
 * resolved_model: public model name or tier that will serve the request (NULL = the body's
 * "model"). Returns TG_OK, TG_INVAL (body not an object), TG_NOMEM. */
int tg_cache_key(const char *tenant, const char *endpoint, const char *resolved_model,
                 const json_t *body, bool stream, struct tg_cache_key *out);

/* ---- entries ----------------------------------------------------------------------------- */

struct tg_cache_header {
    char *name;
    char *value;
};

struct tg_cache_chunk {
    char *data;
    size_t len;
};

/* A stored response. Build with tg_cache_entry_new + add_*; free with tg_cache_entry_free. */
struct tg_cache_entry {
    int status;                         /* HTTP status (only 200 is stored by the gateway) */
    bool stream;                        /* chunks hold the SSE stream; body is unused */
    char *content_type;                 /* "application/json" / "text/event-stream" */
    struct tg_cache_header *headers;    /* extra headers worth replaying (x-tiergate-model ...) */
    size_t n_headers;
    char *body;                         /* JSON body (non-stream), NUL-terminated */
    size_t body_len;
    struct tg_cache_chunk *chunks;      /* SSE chunks in order, each exactly as written */
    size_t n_chunks;
    int64_t prompt_tokens;              /* usage of the original response (for avoided cost) */
    int64_t completion_tokens;
    char *model;                        /* model that produced it */
    int64_t created_unix;               /* when it was stored (filled by tg_cache_store) */
    size_t size;                        /* bytes accounted so far (against max_bytes) */
    size_t max_bytes;                   /* ceiling: cache.max_entry_bytes */
};

/* New empty entry; max_bytes = cache.max_entry_bytes (0 = unlimited). NULL on allocation failure. */
struct tg_cache_entry *tg_cache_entry_new(int status, bool stream, const char *content_type,
                                          size_t max_bytes);
void tg_cache_entry_free(struct tg_cache_entry *e);
/* Each returns TG_OK, TG_TOOBIG (entry would pass max_bytes: drop it, don't store) or TG_NOMEM. */
int tg_cache_entry_add_header(struct tg_cache_entry *e, const char *name, const char *value);
int tg_cache_entry_set_body(struct tg_cache_entry *e, const char *body, size_t len);
int tg_cache_entry_add_chunk(struct tg_cache_entry *e, const char *data, size_t len);
int tg_cache_entry_set_usage(struct tg_cache_entry *e, const char *model, int64_t prompt_tokens,
                             int64_t completion_tokens);

/* Binary (de)serialization used for the Redis value (exposed for tests and tools).
 * encode: malloc'd bytes in *out, size in *len; decode: TG_OK or TG_PARSE for anything malformed. */
int tg_cache_entry_encode(const struct tg_cache_entry *e, char **out, size_t *len);
int tg_cache_entry_decode(const char *data, size_t len, struct tg_cache_entry **out);

/* ---- Redis operations -------------------------------------------------------------------- */

/* err: TG_OK (entry = hit, or NULL = miss), TG_UNAVAILABLE/TG_TIMEOUT (treat as bypass).
 * A corrupt stored value counts as a miss (and is logged once). The callback owns entry and
 * frees it with tg_cache_entry_free. */
typedef void (*tg_cache_lookup_cb)(int err, struct tg_cache_entry *entry, void *user);

/* GET the key. Contract as tg_redis_command(). */
int tg_cache_lookup(struct tg_redis *c, const struct tg_cache_key *key, tg_cache_lookup_cb cb,
                    void *user);

/* Store a complete response (SET ... EX ttl_s); fire and forget. The entry is only read during
 * the call (the caller still frees it). Only call once a stream completed successfully: a
 * partial stream must never be stored. Returns TG_OK, TG_TOOBIG (over e->max_bytes),
 * TG_UNAVAILABLE, TG_NOMEM. */
int tg_cache_store(struct tg_redis *c, const struct tg_cache_key *key, struct tg_cache_entry *e,
                   int64_t ttl_s);

#endif
