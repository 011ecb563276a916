/* The three admin pages over libevent's evhttp, ready to route: GET /metrics, GET /dashboard and
 * GET /v1/usage, each behind the admin key when server.admin_key_sha256 is set (401 otherwise;
 * see tg_metrics_admin_allowed). The gateway core calls this before its own routing:
 *
 *     if (tg_metrics_http_handle(req, path, cfg, NULL))
 *         return;                                  // answered (or answering, for /v1/usage)
 *
 * Threads: call on the I/O thread that owns req. usage: the ledger to read for /v1/usage; NULL =
 * the one bound to this thread with tg_usage_bind(); none → 503 "usage ledger needs Redis".
 * /v1/usage answers asynchronously (when Redis replies, on this thread). If the client goes away
 * first, libevent detaches the request and frees it when the reply is sent, so no callback has to
 * be cancelled. Methods other than GET/HEAD get 405. Returns false, having sent nothing, for any
 * other path. cfg is read during the call only.
 */
#ifndef TG_GW_METRICS_HTTP_H
#define TG_GW_METRICS_HTTP_H

#include <stdbool.h>

#include <event2/http.h>

#include "tg/config.h"
#include "usage.h"

bool tg_metrics_http_handle(struct evhttp_request *req, const char *path,
                            const struct tg_config *cfg, struct tg_usage *usage);

#endif
