/* Usage ledger in Redis and GET /v1/usage: spend, avoided spend, tokens and requests, the same
 * on every replica because the counters live in Redis.
 *
 * Layout: one hash per UTC hour, `tg:u:<YYYYMMDDHH>`, expiring after TG_USAGE_RETENTION_S. Per
 * finished request, with <g> = "<tier>|<model>|<tenant>" ('|' in names replaced by '_'):
 *   <g>|req  <g>|err (status >= 400)  <g>|prompt  <g>|completion  <g>|cached
 *   <g>|cost_nano  <g>|avoided_nano (USD × 1e9, exact integers)  <g>|dur_us (sum of durations)
 *   esc|<reason> (escalations)  fb|<reason> (fallback hops)
 * written by one Lua script per request (HINCRBY, integers only, so sums are exact; then EXPIRE):
 * one atomic round trip, fire and forget.
 *
 * Threads: a struct tg_usage belongs to one I/O thread (the thread of its tg_redis client) and is
 * used only there. tg_usage_bind() makes it the ledger that tg_metrics_record() feeds on that
 * thread, so the gateway only calls tg_metrics_record() once per request.
 */
#ifndef TG_GW_USAGE_H
#define TG_GW_USAGE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "metrics.h"
#include "redis.h"

#define TG_USAGE_RETENTION_S (90LL * 24 * 3600)  /* hourly hashes expire after 90 days */
#define TG_USAGE_MAX_WINDOW_S (93LL * 24 * 3600) /* longest window one query may read */

struct tg_usage;

/* A ledger writing and reading through redis (borrowed: it must outlive the ledger; same thread).
 * TG_OK and *out, or TG_NOMEM / TG_INVAL (redis NULL). */
int tg_usage_create(struct tg_redis *redis, struct tg_usage **out);
/* Unbinds it if bound. Queries in flight keep no reference to the ledger: they still answer when
 * Redis replies, or 503 when the redis client is destroyed (destroy the ledger, then the client,
 * on their thread). NULL is a no-op. */
void tg_usage_destroy(struct tg_usage *u);

/* Make u the calling thread's ledger (NULL unbinds): tg_metrics_record() on this thread then
 * also writes the record to Redis. Call on u's thread, e.g. when the I/O thread starts. */
void tg_usage_bind(struct tg_usage *u);
/* The ledger bound to the calling thread, or NULL. */
struct tg_usage *tg_usage_bound(void);

/* Write one record's usage into the hour bucket of unix time `now` (tg_usage_add uses time(NULL)).
 * TG_OK, TG_UNAVAILABLE (Redis down: the usage is lost for the ledger, /metrics still has it),
 * TG_NOMEM. */
int tg_usage_add(struct tg_usage *u, const struct tg_request_record *r);
int tg_usage_add_at(struct tg_usage *u, const struct tg_request_record *r, time_t now);

/* Answer GET /v1/usage. query: the raw query string without '?', may be NULL:
 *   since, until  RFC 3339 ("2026-11-21T05:00:00Z", "...+02:00") or unix seconds;
 *                 default until = now, since = until - 24 h; hours overlapping [since, until)
 *   group_by      tier (default) | model | tenant
 * The answer (application/json):
 *   {"object":"usage","since","until","group_by","bucket":"hour",
 *    "totals":{requests,errors,prompt_tokens,completion_tokens,cached_tokens,spend_usd,
 *              avoided_usd,avg_duration_s},
 *    "groups":[{"key",...same fields}], "by_tier":{"local":{...},"remote":{...},"cache":{...},...},
 *    "series":[{"ts","requests","errors","spend_usd","avoided_usd","avg_duration_s",
 *               "local","remote","cache"}],            one per hour, oldest first
 *    "escalation_reasons":[{"reason","count"}], "fallback_reasons":[...]}  most frequent first
 * Errors: 400 (bad parameter, window over TG_USAGE_MAX_WINDOW_S) and 503 (Redis unavailable)
 * with an OpenAI-shaped error body.
 * Async contract: TG_OK → done runs exactly once, later or (for 400 and when Redis is down)
 * inside this call, on u's thread; anything else (TG_NOMEM) → done never runs. body is borrowed
 * for the call. */
typedef void (*tg_usage_done_fn)(int status, const char *content_type, const char *body,
                                 size_t len, void *user);
int tg_usage_handle(struct tg_usage *u, const char *query, tg_usage_done_fn done, void *user);
/* Same with an explicit "now" (unix seconds) for the defaults; for tests. */
int tg_usage_handle_at(struct tg_usage *u, const char *query, time_t now, tg_usage_done_fn done,
                       void *user);

/* Parse a time parameter: RFC 3339 or unix seconds. TG_OK and *out, or TG_INVAL. */
int tg_usage_parse_time(const char *s, time_t *out);

#endif
