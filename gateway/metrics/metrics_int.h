/* Private to gateway/metrics/: shared between the registry and the usage ledger. */
#ifndef TG_GW_METRICS_INT_H
#define TG_GW_METRICS_INT_H

#include "metrics.h"
#include "tg/buf.h"

/* Append v escaped for a label value (backslash, double quote, newline). */
int tg_metrics_escape_label(struct tg_buf *out, const char *v);

/* A record the Redis ledger did not get: kind "unavailable" (not sent: Redis down), "refused"
 * (Redis answered an error), "lost" (connection dropped before the reply). */
void tg_metrics_ledger_error(const char *kind);

/* tg_metrics_record() hands the record to the ledger bound to the calling thread, if any. */
void tg_usage_record_hook(const struct tg_request_record *r);

#endif
