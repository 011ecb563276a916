/* Rate limits and budgets per API key, atomic in Redis (one Lua script per check/record, run
 * with EVALSHA; see tg_redis_eval).
 *
 * Limits come from the key's struct tg_cfg_limits (0 = unlimited):
 *   requests_per_min  fixed 60 s window (UTC minute); counted at check time
 *   tokens_per_min    fixed 60 s window; the check rejects when used + estimated prompt tokens
 *                     would pass the limit (a single request bigger than the whole limit passes
 *                     when the window is empty, or it could never run); actual prompt +
 *                     completion tokens are added by tg_limits_record()
 *   usd_per_day       spend in the current UTC day (tg_limits_record adds cost_usd)
 *   usd_per_month     spend in the current UTC calendar month
 * Keys: tg:rl:<key>:r:<minute>, tg:rl:<key>:t:<minute>, tg:bud:<key>:d:<YYYYMMDD>,
 *       tg:bud:<key>:m:<YYYYMM> (each with an expiry past its window).
 *
 * Budgets do not reject by themselves: a spent budget sets remote_budget_exhausted, which is the
 * router input that downgrades the request to the local tier when the policy says so; when the
 * policy does not allow that, the gateway answers with tg_limits_reject_budget() (429
 * insufficient_quota).
 *
 * Redis down: with redis.limits_fail_open the check passes (result.degraded = true); otherwise
 * it fails with 503. Threads: the tg_redis client's thread only.
 */
#ifndef TG_GW_RATELIMIT_H
#define TG_GW_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "redis.h"
#include "tg/config.h"

enum tg_limit_kind {
    TG_LIMIT_NONE = 0,
    TG_LIMIT_REQUESTS_PER_MIN,
    TG_LIMIT_TOKENS_PER_MIN,
    TG_LIMIT_USD_PER_DAY,
    TG_LIMIT_USD_PER_MONTH,
    TG_LIMIT_UNAVAILABLE,       /* Redis down and limits fail closed */
};

struct tg_limits_result {
    bool allowed;                 /* false: answer with tg_limits_reply() */
    enum tg_limit_kind kind;      /* the limit hit (rejection) */
    int64_t retry_after_s;        /* seconds until the window frees (>= 1 when rejected) */
    bool remote_budget_exhausted; /* a USD budget is spent: route local or reject */
    enum tg_limit_kind budget_kind;   /* which budget (USD_PER_DAY / USD_PER_MONTH) */
    int64_t budget_retry_after_s; /* seconds until that budget period ends */
    bool degraded;                /* Redis was down and limits failed open */
};

typedef void (*tg_limits_cb)(const struct tg_limits_result *r, void *user);

/* true when the key has any limit at all (no Redis round trip needed otherwise). */
bool tg_limits_any(const struct tg_cfg_limits *l);

/* Check (and count the request against requests_per_min). key_name: the key's label (NULL or
 * "" = open mode: always allowed, no Redis call). est_prompt_tokens: estimate for the tokens/min
 * check. now_unix: wall clock seconds (0 = time(NULL)); tests pass their own.
 * Returns TG_OK and cb runs exactly once later, or - when no Redis call is needed (no limits, or
 * Redis down) - cb runs before this returns and TG_OK is returned as well. */
int tg_limits_check(struct tg_redis *c, const struct tg_cfg_redis *rcfg, const char *key_name,
                    const struct tg_cfg_limits *limits, int64_t est_prompt_tokens,
                    int64_t now_unix, tg_limits_cb cb, void *user);

/* Record what a finished request used: tokens (prompt + completion) into tokens/min, cost_usd
 * into the day and month budgets. Fire and forget; TG_OK, TG_UNAVAILABLE (lost: logged once per
 * outage by the client), TG_NOMEM. */
int tg_limits_record(struct tg_redis *c, const char *key_name, const struct tg_cfg_limits *limits,
                     int64_t tokens, double cost_usd, int64_t now_unix);

/* The HTTP answer for a rejection: status (429, or 503 for TG_LIMIT_UNAVAILABLE), the
 * Retry-After value in seconds (0 = don't send one) and a new OpenAI-shaped error body
 * (type "rate_limit_exceeded", or "insufficient_quota" for budgets). */
json_t *tg_limits_reply(const struct tg_limits_result *r, int *status, int64_t *retry_after_s);

/* The 429 insufficient_quota answer for a spent budget that the policy did not downgrade. */
json_t *tg_limits_reject_budget(const struct tg_limits_result *r, int *status,
                                int64_t *retry_after_s);

const char *tg_limit_kind_name(enum tg_limit_kind k); /* "requests_per_min" ... */

#endif
