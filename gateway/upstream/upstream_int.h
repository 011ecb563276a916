/* Private to gateway/upstream: provider adapters, SSE parsing and the circuit registry. */
#ifndef TG_GW_UPSTREAM_INT_H
#define TG_GW_UPSTREAM_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "tg/buf.h"
#include "tg/err.h"
#include "tg/config.h"
#include "upstream.h"

int64_t up_now_ms(void);

/* ---- SSE ----
 * Feed bytes; every complete event (blank-line terminated) goes to fn with its `event:` name
 * (NULL if none) and its data lines joined by '\n'. fn returning non-zero stops and is returned.
 * Partial events stay in pending (bounded by its max: TG_TOOBIG when one event is too big). */
typedef int (*up_sse_fn)(void *ctx, const char *event, const char *data, size_t len);
int up_sse_feed(struct tg_buf *pending, const char *p, size_t n, up_sse_fn fn, void *ctx);

/* Translation state of one streaming attempt. */
struct up_stream {
    bool client_usage; /* the client asked for the usage chunk */
    bool forced_json;  /* Anthropic: response_format became a forced tool */
    bool done;         /* [DONE] / message_stop seen */
    json_t *error;     /* an error event inside the stream (OpenAI-shaped body), owned */
    struct tg_upstream_usage usage;
    char finish[32];
    char id[96];
    char model[128];
    long created;
    int tool_idx[64]; /* Anthropic content block index -> OpenAI tool_calls index, -1 text */
    int n_tools;
};
void up_stream_init(struct up_stream *st);
void up_stream_clear(struct up_stream *st);

/* A chunk for the client: chunk is borrowed; data/len its serialised form. Non-zero = stop. */
typedef int (*up_emit_fn)(void *ctx, const json_t *chunk, const char *data, size_t len);

/* ---- OpenAI-compatible ---- */
/* Request body for target m: rq with model rewritten and, when streaming,
 * stream_options.include_usage forced on. *client_usage: whether rq itself asked for usage. */
int up_openai_build(const json_t *rq, const struct tg_cfg_model *m, bool stream, struct tg_buf *out,
                    bool *client_usage);
/* The same from the client's exact bytes (raw parses to rq): only the model value is replaced
 * (and stream_options added to a stream that has none). TG_UNSUPPORTED: use up_openai_build. */
int up_openai_build_raw(const json_t *rq, const char *raw, size_t raw_len,
                        const struct tg_cfg_model *m, bool stream, struct tg_buf *out,
                        bool *client_usage);
/* Parse a non-streaming response: *out new reference, usage and finish_reason filled. */
int up_openai_response(const char *body, size_t len, json_t **out, struct tg_upstream_usage *u,
                       char *finish, size_t finish_len);
/* The same checks and fields as up_openai_response without building the tree (yajl, event by
 * event): TG_OK, or TG_PARSE when the body is not well-formed JSON or not an object holding a
 * "choices" array. Duplicate keys: the last wins, as in jansson. */
int up_openai_scan_response(const char *body, size_t len, struct tg_upstream_usage *u,
                            char *finish, size_t finish_len);
/* One SSE data payload of a stream. Returns non-zero when emit asked to stop or on a bad event
 * (TG_PARSE). */
int up_openai_event(struct up_stream *st, const char *data, size_t len, up_emit_fn emit, void *ctx);

/* ---- Anthropic Messages ---- */
int up_anthropic_build(const json_t *rq, const struct tg_cfg_model *m, bool stream,
                       struct tg_buf *out, bool *client_usage, bool *forced_json, char *err,
                       size_t errlen);
int up_anthropic_response(const char *body, size_t len, bool forced_json, json_t **out,
                          struct tg_upstream_usage *u, char *finish, size_t finish_len);
int up_anthropic_event(struct up_stream *st, const char *event, const char *data, size_t len,
                       up_emit_fn emit, void *ctx);

/* A provider's error body -> OpenAI-shaped {"error":{...}} (new reference). With
 * include_message false the provider's text is not copied (auth errors may echo key parts). */
json_t *up_error_from_body(enum tg_provider_kind kind, int status, const char *body, size_t len,
                           bool include_message);

/* Mask secrets (tg_log_redact: our provider keys, "Bearer ..." and the like) in every string of
 * v, recursively, in place: a provider that echoes our request headers in an error must not hand
 * our key to the client. */
void up_redact_json(json_t *v);

/* ---- circuit registry ---- */
enum up_admit { UP_ADMIT_DENY = 0, UP_ADMIT_YES = 1, UP_ADMIT_PROBE = 2 };
/* May an attempt go to target name now? PROBE: the half-open probe (report its outcome). */
enum up_admit up_circuit_admit(const char *name, const struct tg_cfg_provider *p, int64_t now_ms);
/* A probe ended without a verdict (cancelled, never sent): the next attempt may probe. */
void up_circuit_release(const char *name);
void up_circuit_report(const char *name, const struct tg_cfg_provider *p, bool success, bool probe,
                       int64_t now_ms);

/* ---- metrics hooks ---- */
void up_metric_error(const char *target, const char *kind);
void up_metric_duration(const char *target, double seconds);
/* Register the breaker visitor with metrics (idempotent; needs tg_metrics_init first). */
void up_metrics_register(void);

#endif
