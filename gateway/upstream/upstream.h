/* Remote executor: sends OpenAI-shaped chat requests to remote providers (OpenAI-compatible and
 * Anthropic Messages) over libcurl's multi_socket API driven by an I/O thread's libevent
 * event_base, with retries, fallback along a chain of targets, and a circuit breaker per target.
 *
 * Threads
 *   - One executor per I/O thread (tg_upstream_exec_create with that thread's event_base). An
 *     executor, its requests and every callback live on that thread only.
 *   - The circuit breaker registry (tg_upstream_circuit_*) and the metrics hooks are process-wide
 *     and thread-safe.
 *
 * Request lifecycle (the async contract)
 *   - tg_upstream_start() returns TG_OK and a handle, or an error code; when it fails no handler
 *     ever runs. On TG_OK exactly one of on_complete / on_error runs later (never inside
 *     tg_upstream_start), unless the caller cancels first; on_chunk may run any number of times
 *     before it (streaming only). After on_complete / on_error the handle is gone: do not use it.
 *   - tg_upstream_cancel() (client went away) aborts the transfer at once; no handler runs after
 *     it. It must not be called from inside a handler of the same request: to stop from on_chunk,
 *     return non-zero (the request is then dropped silently, like a cancel).
 *   - Retries and fallback happen only before anything was passed to on_chunk. Once a chunk was
 *     delivered, a failure ends the request with on_error(started = true).
 *   - tg_upstream_start and tg_upstream_resume drive curl at once (the request is written before
 *     they return), so on_chunk of OTHER streaming requests on the same executor may run inside
 *     them; on_complete / on_error never do.
 *
 * Ownership
 *   - The call's JSON request is referenced (json_incref) until the request ends: do not modify
 *     it after tg_upstream_start. Target pointers are copied, the models themselves are NOT: the
 *     caller keeps the config snapshot (tg_config_ref) alive until a handler ran or it cancelled.
 *   - Every pointer passed to a handler is borrowed and valid only during the call.
 *
 * Provider adapters
 *   - OpenAI-compatible: the request passes through unchanged (unknown fields kept) except
 *     `model` (rewritten to the target's upstream_model) and, when streaming,
 *     `stream_options.include_usage = true` so the cost is always known. The usage-only chunk is
 *     relayed to on_chunk only if the client itself asked for it.
 *   - Anthropic Messages: request, response and stream events are translated both ways to and
 *     from OpenAI chat.completion / chat.completion.chunk shapes (see anthropic.c).
 */
#ifndef TG_GW_UPSTREAM_H
#define TG_GW_UPSTREAM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tg/config.h"

struct event_base;
struct tg_upstream_exec;
struct tg_upstream_req;

/* ---- executor (one per I/O thread) ---- */

struct tg_upstream_exec_params {
    size_t max_response_bytes; /* ceiling for one upstream response body / SSE event; 0 = 8 MiB */
    int max_retry_after_ms;    /* a Retry-After longer than this moves on to the next target
                                  instead of waiting; 0 = 10000 */
    int max_backoff_ms;        /* cap of one exponential backoff delay; 0 = 5000 */
    long max_host_connections; /* cap of connections per upstream host; 0 = no cap (default) */
    bool verify_tls;           /* verify provider certificates (default true) */
};

/* Defaults for every field above. */
struct tg_upstream_exec_params tg_upstream_exec_default_params(void);

/* Create an executor bound to base (the calling I/O thread's loop). params may be NULL
 * (defaults). Returns NULL on allocation/libcurl failure. Call curl_global_init() once per
 * process before starting threads (tg_upstream_global_init does it). */
struct tg_upstream_exec *tg_upstream_exec_create(struct event_base *base,
                                                 const struct tg_upstream_exec_params *params);

/* Abort every request still in flight (no handlers run) and free the executor. On its thread,
 * before the event_base is freed. NULL is a no-op. */
void tg_upstream_exec_destroy(struct tg_upstream_exec *ex);

/* Number of requests in flight on this executor (for drain and tests). */
size_t tg_upstream_exec_inflight(const struct tg_upstream_exec *ex);

/* True when at least one attempt on this executor has been written to its provider and waits
 * for the response's status line, and the first-byte times of this executor's recent attempts
 * are short: their exponentially weighted mean (weight 1/8 per new sample, seconds from handing
 * the attempt to curl to the loop wake-up that read the status line) is at most within_s. False
 * before the first sample. The I/O thread asks it to decide whether to keep polling instead of
 * sleeping (server.busy_poll_upstream_us, gateway/server.c). Thread: the executor's; O(1). */
bool tg_upstream_exec_reply_due(const struct tg_upstream_exec *ex, double within_s);

/* curl_global_init / cleanup wrappers: once per process, from the main thread. */
int tg_upstream_global_init(void);
void tg_upstream_global_cleanup(void);

/* ---- one call ---- */

struct tg_upstream_call {
    const json_t *request; /* OpenAI chat.completions request body; a reference is
                              kept until the end: do not modify it afterwards */
    const struct tg_cfg_model *const *targets; /* primary first, then fallbacks, in order */
    size_t n_targets;                          /* >= 1; engine targets are skipped */
    bool stream;                               /* ask the provider for SSE and relay chunks */
    const char *request_id;                    /* sent as X-Request-Id; may be NULL */
    const char *const *headers;                /* extra "Name: value" headers, NULL-terminated,
                                                  may be NULL; never auth headers */
    const char *raw_body;                      /* optional: the exact bytes `request` was parsed
                                                  from (copied). OpenAI-compatible targets then get
                                                  these bytes with only the model value replaced,
                                                  instead of a re-serialisation (~5 ns/byte saved);
                                                  NULL = serialise `request` */
    size_t raw_len;
    bool body_only; /* non-streaming: the caller uses only result.body, usage and finish_reason.
                       OpenAI-compatible targets then have their response checked (well-formed
                       JSON, an object with a choices array) by a streaming parse that builds no
                       tree, and result.response is NULL (jansson's tree cost ~13 ns per byte:
                       4-5 us for a 350-byte completion). Anthropic responses are translated, so
                       they always come with response set. */
};

/* One OpenAI chat.completion.chunk. json is the parsed chunk; data/len its serialised form (the
 * exact bytes the provider sent for OpenAI-compatible targets) to write after "data: ". */
struct tg_upstream_chunk {
    const json_t *json;
    const char *data;
    size_t len;
    /* Where the stream comes from, for response headers sent with the first chunk: the serving
     * target and the fallbacks taken before it (no retry or fallback happens once a chunk was
     * relayed, so these do not change during a stream). */
    const struct tg_cfg_model *served;
    int fallbacks;
    const char *fallback_reason;
};

struct tg_upstream_usage {
    int64_t prompt_tokens;     /* -1 when the provider reported none */
    int64_t completion_tokens; /* -1 when the provider reported none */
    int64_t cached_tokens;     /* prompt tokens served from the provider's prompt cache, 0 if n/a */
};

/* What happened across attempts (both on success and failure). */
struct tg_upstream_stats {
    int attempts;           /* HTTP attempts made, all targets together */
    int retries;            /* attempts beyond the first on the same target */
    int fallbacks;          /* moves to the next target (after a failure, or skipping one that
                               is disabled or has its circuit open); failing the last is not one */
    int64_t backoff_ms;     /* total delay requested between attempts (backoff + Retry-After) */
    int64_t retry_after_ms; /* the last Retry-After honoured, -1 if none */
    const char *fallback_reason; /* short code of the first fallback ("timeout", "http_503",
                                    "connect", "circuit_open", "disabled", ...), NULL if none */
    double upstream_s;           /* wall time from start to the end, seconds */
    double complete_s;           /* CLOCK_MONOTONIC seconds when the loop woke for the event that
                                    completed the last attempt (its response's last bytes read),
                                    0 if no attempt completed */
};

struct tg_upstream_result {
    const struct tg_cfg_model *served; /* the target that answered */
    /* Non-streaming: the OpenAI chat.completion response (parsed) and its serialised bytes (the
     * provider's exact body for OpenAI-compatible targets). Streaming: response is NULL and body
     * is NULL (chunks went to on_chunk). */
    const json_t *response;
    const char *body;
    size_t body_len;
    const char *finish_reason; /* "stop", "length", "tool_calls", ... or NULL if unknown */
    struct tg_upstream_usage usage;
    struct tg_upstream_stats stats;
};

struct tg_upstream_error {
    int status;          /* HTTP status to send the client (502, 504, 429, 400, ...) */
    const json_t *error; /* OpenAI-shaped body {"error":{"message","type","param","code"}} */
    const char *kind;    /* short code of the final failure (as fallback_reason) */
    bool started;        /* chunks were already relayed: send as `data: {"error":...}` */
    bool should_retry;   /* value for the x-should-retry header (false when all failed) */
    const struct tg_cfg_model *last_target; /* the last target tried, NULL if none was tried */
    struct tg_upstream_stats stats;
};

struct tg_upstream_handlers {
    /* Streaming only. Return 0 to go on; non-zero drops the request (no further handler). */
    int (*on_chunk)(void *user, const struct tg_upstream_chunk *chunk);
    void (*on_complete)(void *user, const struct tg_upstream_result *result);
    void (*on_error)(void *user, const struct tg_upstream_error *error);
};

/* Start a call on ex (its thread only). handlers and user are kept until the request ends.
 * Returns TG_OK and *out (may be NULL if the caller never cancels), TG_INVAL (no request /
 * targets / handlers), TG_NOMEM. Errors found later (all targets disabled, every attempt
 * failed) arrive through on_error, never synchronously. */
int tg_upstream_start(struct tg_upstream_exec *ex, const struct tg_upstream_call *call,
                      const struct tg_upstream_handlers *handlers, void *user,
                      struct tg_upstream_req **out);

/* Abort a request now (client disconnected): the transfer is removed from the multi handle and
 * the connection closed; no handler runs afterwards. Not from inside that request's handlers. */
void tg_upstream_cancel(struct tg_upstream_req *req);

/* Backpressure for streams (the client's socket is behind): stop reading the provider until
 * resumed, so TCP flow control slows the provider instead of the gateway buffering the answer.
 * pause may be called from on_chunk (it takes effect once the bytes curl just handed over are
 * processed: a few more on_chunk calls may follow) or from the loop; the stream-idle timeout is
 * suspended while paused (the total timeout is not). resume must be called from the loop, not
 * from this request's handlers; it may deliver buffered chunks to on_chunk before it returns.
 * No-ops for non-streaming calls, finished requests and repeated calls. */
void tg_upstream_pause(struct tg_upstream_req *req);
void tg_upstream_resume(struct tg_upstream_req *req);

/* ---- circuit breakers (process-wide, thread-safe) ----
 * One breaker per target, keyed by the model name (struct tg_cfg_model.name); its thresholds come
 * from the target's provider (circuit_failures within circuit_window_ms open it; after
 * circuit_open_ms one half-open probe is let through; its success closes it, its failure reopens).
 * 429, 5xx, connection errors and timeouts count as failures; other 4xx do not. */

/* Values match metrics.h's TG_METRICS_CIRCUIT_* (0 closed, 1 half-open, 2 open). */
enum tg_circuit_state { TG_CIRCUIT_CLOSED = 0, TG_CIRCUIT_HALF_OPEN = 1, TG_CIRCUIT_OPEN = 2 };

/* True while the breaker of this target is open (and its open time has not yet elapsed): the
 * router's "remote circuit open -> local" rule. Unknown names are closed. */
bool tg_upstream_circuit_open(const char *name);

enum tg_circuit_state tg_upstream_circuit_state(const char *name);

struct tg_upstream_circuit_info {
    char name[128];
    enum tg_circuit_state state;
    int recent_failures; /* failures within the window at the time of the call */
};

/* Copy up to max breakers into out (for /metrics at scrape time); returns how many exist. */
size_t tg_upstream_circuit_list(struct tg_upstream_circuit_info *out, size_t max);

/* Forget every breaker (tests, config reload). */
void tg_upstream_circuit_reset_all(void);

/* Visit every breaker; the signature of metrics.h's tg_metrics_circuits_fn (registered by
 * tg_upstream_exec_create). visit runs under the registry lock: it must not call
 * tg_upstream_circuit_*. */
void tg_upstream_circuits_visit(void *user,
                                void (*visit)(void *vctx, const char *target, int state),
                                void *vctx);

/* ---- metrics (process-wide) ----
 * By default every attempt reports to the metrics component (gateway/metrics/metrics.h):
 * tg_metrics_upstream_error(target, kind) and tg_metrics_upstream_duration(target, seconds), and
 * tg_upstream_exec_create registers tg_upstream_circuits_visit with tg_metrics_set_circuits_fn
 * (both are no-ops before tg_metrics_init). Hooks set here replace the two reports (tests,
 * embedders); NULL restores the default. Set before threads start.
 * error: target = model name, kind = short failure code as in stats.fallback_reason.
 * duration: seconds of one attempt on target (success or failure). */
struct tg_upstream_metrics_hooks {
    void (*error)(const char *target, const char *kind);
    void (*duration)(const char *target, double seconds);
};
void tg_upstream_set_metrics_hooks(const struct tg_upstream_metrics_hooks *hooks);

#endif
