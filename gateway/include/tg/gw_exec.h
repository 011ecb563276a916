/* The gateway pipeline entry for non-HTTP callers (async jobs): runs a request body through the
 * same pipeline as HTTP (auth already done, routing, cache, engine/remote, escalation, metrics)
 * and calls back with the final result. Components cannot include the core's private headers,
 * so they receive this as a function pointer at creation. */
#ifndef TG_GW_EXEC_H
#define TG_GW_EXEC_H

#include <stddef.h>

/* Final result of a pipeline run. body is owned by the caller of the callback (valid during the
 * call only); content_type is usually "application/json". Called exactly once, on the I/O thread
 * that owns ctx, when tg_gw_execute_fn returned 0. */
typedef void (*tg_gw_result_cb)(int status, const char *content_type, const char *body, size_t len,
                                void *user);

/* ctx = the I/O thread's struct tg_worker (opaque to components); call on that thread only.
 * endpoint_path: "/v1/chat/completions", "/v1/classify", "/v1/extract" (also "/v1/completions",
 * "/v1/embeddings", "/v1/responses"). key_name: the API key's name, NULL = open mode.
 * Returns 0 when accepted: cb then runs exactly once, possibly before this call returns (a cache
 * hit or an immediate error). Returns a tg_err code otherwise, and cb never runs. A "stream": true
 * body is answered as if it were false. */
typedef int (*tg_gw_execute_fn)(void *ctx, const char *endpoint_path, const char *body, size_t len,
                                const char *key_name, tg_gw_result_cb cb, void *user);

#endif
