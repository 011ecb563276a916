/* Shared by the gateway fuzz targets (fuzz_http.c, fuzz_request.c): one in-process gateway
 * (tg_gateway_test_new) on a fixed configuration, created on first use and freed at exit.
 *
 * The configuration: open mode, Redis and the cache off, no engine (the local tier is
 * unavailable), remote models on an OpenAI-compatible and an Anthropic provider at a closed
 * loopback port (every transfer fails at connect, no retries), so a request runs parse ->
 * auth -> limits -> route -> remote attempt -> fallback -> error reply within one loop turn or
 * two. Logging is off (the fuzzer's speed). Single-threaded: everything runs on the caller's
 * thread, which also runs the worker's event loop. */
#ifndef TG_FUZZ_GW_H
#define TG_FUZZ_GW_H

#include <stdbool.h>

#include "server.h"

/* The gateway (NULL if it could not start: the reason went to stderr). */
struct tg_gateway *fz_gateway(void);

/* A new client connection to it (blocking-mode socket; the caller closes it), or -1. */
int fz_connect(void);

/* Run the worker's loop until *done or timeout_ms elapsed; false on timeout. */
bool fz_run_until(struct tg_gateway *gw, const bool *done, int timeout_ms);

#endif
