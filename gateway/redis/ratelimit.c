/* Per-key rate limits and USD budgets: one Lua script per check and per record, so concurrent
 * gateway replicas never race between reading and counting. See ratelimit.h. */
#include "ratelimit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tg/err.h"
#include "tg/json.h"
#include "tg/log.h"

/* KEYS: requests window, tokens window, day spend, month spend.
 * ARGV: requests/min, tokens/min, estimated prompt tokens, USD/day, USD/month (0 = no limit).
 * Returns {verdict, budget}: verdict 0 ok, 1 requests/min, 2 tokens/min; budget 0 ok, 1 day
 * spent, 2 month spent. Budgets are evaluated first but never reject: the gateway decides. */
static struct tg_redis_script g_check = TG_REDIS_SCRIPT(
    "local rpm, tpm, est = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "local dl, ml = tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local budget = 0\n"
    "if dl > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') >= dl then budget = 1\n"
    "elseif ml > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= ml then budget = 2 end\n"
    "if tpm > 0 then\n"
    "  local used = tonumber(redis.call('GET', KEYS[2]) or '0')\n"
    "  if used > 0 and used + est > tpm then return {2, budget} end\n"
    "end\n"
    "if rpm > 0 then\n"
    "  local n = redis.call('INCR', KEYS[1])\n"
    "  if n == 1 then redis.call('EXPIRE', KEYS[1], 120) end\n"
    "  if n > rpm then return {1, budget} end\n"
    "end\n"
    "return {0, budget}\n");

/* KEYS: tokens window, day spend, month spend. ARGV: tokens, cost_usd. */
static struct tg_redis_script g_record = TG_REDIS_SCRIPT(
    "local t, cost = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "if t > 0 then redis.call('INCRBY', KEYS[1], t); redis.call('EXPIRE', KEYS[1], 120) end\n"
    "if cost > 0 then\n"
    "  redis.call('INCRBYFLOAT', KEYS[2], ARGV[2]); redis.call('EXPIRE', KEYS[2], 172800)\n"
    "  redis.call('INCRBYFLOAT', KEYS[3], ARGV[2]); redis.call('EXPIRE', KEYS[3], 2764800)\n"
    "end\n"
    "return 1\n");

const char *tg_limit_kind_name(enum tg_limit_kind k)
{
    switch (k) {
    case TG_LIMIT_REQUESTS_PER_MIN:
        return "requests_per_min";
    case TG_LIMIT_TOKENS_PER_MIN:
        return "tokens_per_min";
    case TG_LIMIT_USD_PER_DAY:
        return "usd_per_day";
    case TG_LIMIT_USD_PER_MONTH:
        return "usd_per_month";
    case TG_LIMIT_UNAVAILABLE:
        return "unavailable";
    default:
        return "none";
    }
}

bool tg_limits_any(const struct tg_cfg_limits *l)
{
    return l != NULL && (l->requests_per_min > 0 || l->tokens_per_min > 0 || l->usd_per_day > 0 ||
                         l->usd_per_month > 0);
}

struct keys {
    char rpm[192], tpm[192], day[192], month[192];
    int64_t minute_left_s, day_left_s, month_left_s;
};

static void make_keys(const char *key_name, int64_t now, struct keys *k)
{
    time_t t = (time_t)now;
    struct tm tm;
    gmtime_r(&t, &tm);
    int64_t minute = now / 60;
    snprintf(k->rpm, sizeof k->rpm, "tg:rl:%s:r:%lld", key_name, (long long)minute);
    snprintf(k->tpm, sizeof k->tpm, "tg:rl:%s:t:%lld", key_name, (long long)minute);
    snprintf(k->day, sizeof k->day, "tg:bud:%s:d:%04d%02d%02d", key_name, tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday);
    snprintf(k->month, sizeof k->month, "tg:bud:%s:m:%04d%02d", key_name, tm.tm_year + 1900,
             tm.tm_mon + 1);
    k->minute_left_s = 60 - now % 60;
    k->day_left_s = 86400 - now % 86400;
    struct tm next = {.tm_year = tm.tm_year + (tm.tm_mon == 11), .tm_mon = (tm.tm_mon + 1) % 12,
                      .tm_mday = 1};
    k->month_left_s = (int64_t)timegm(&next) - now;
    if (k->month_left_s < 1)
        k->month_left_s = 1;
}

struct check {
    tg_limits_cb cb;
    void *user;
    bool fail_open;
    struct keys k;
};

static void finish_down(tg_limits_cb cb, void *user, bool fail_open)
{
    struct tg_limits_result r = {.allowed = fail_open, .degraded = fail_open};
    if (!fail_open) {
        r.kind = TG_LIMIT_UNAVAILABLE;
        r.retry_after_s = 1;
    }
    cb(&r, user);
}

static void on_check(int err, const redisReply *reply, void *user)
{
    struct check *ck = user;
    if (err != TG_OK || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER || reply->element[1]->type != REDIS_REPLY_INTEGER) {
        if (err == TG_OK && reply->type == REDIS_REPLY_ERROR)
            tg_error("limits: check script failed: %s", reply->str);
        finish_down(ck->cb, ck->user, ck->fail_open);
        free(ck);
        return;
    }
    long long verdict = reply->element[0]->integer, budget = reply->element[1]->integer;
    struct tg_limits_result r = {.allowed = verdict == 0};
    if (verdict != 0) {
        r.kind = verdict == 1 ? TG_LIMIT_REQUESTS_PER_MIN : TG_LIMIT_TOKENS_PER_MIN;
        r.retry_after_s = ck->k.minute_left_s;
    }
    if (budget != 0) {
        r.remote_budget_exhausted = true;
        r.budget_kind = budget == 1 ? TG_LIMIT_USD_PER_DAY : TG_LIMIT_USD_PER_MONTH;
        r.budget_retry_after_s = budget == 1 ? ck->k.day_left_s : ck->k.month_left_s;
    }
    ck->cb(&r, ck->user);
    free(ck);
}

int tg_limits_check(struct tg_redis *c, const struct tg_cfg_redis *rcfg, const char *key_name,
                    const struct tg_cfg_limits *limits, int64_t est_prompt_tokens,
                    int64_t now_unix, tg_limits_cb cb, void *user)
{
    bool fail_open = rcfg == NULL || rcfg->limits_fail_open;
    if (key_name == NULL || key_name[0] == '\0' || !tg_limits_any(limits)) {
        struct tg_limits_result r = {.allowed = true};
        cb(&r, user);
        return TG_OK;
    }
    if (!tg_redis_available(c)) {
        finish_down(cb, user, fail_open);
        return TG_OK;
    }
    struct check *ck = calloc(1, sizeof *ck);
    if (ck == NULL)
        return TG_NOMEM;
    ck->cb = cb;
    ck->user = user;
    ck->fail_open = fail_open;
    make_keys(key_name, now_unix > 0 ? now_unix : (int64_t)time(NULL), &ck->k);
    char a[5][40];
    snprintf(a[0], sizeof a[0], "%lld", (long long)limits->requests_per_min);
    snprintf(a[1], sizeof a[1], "%lld", (long long)limits->tokens_per_min);
    snprintf(a[2], sizeof a[2], "%lld", (long long)(est_prompt_tokens > 0 ? est_prompt_tokens : 0));
    snprintf(a[3], sizeof a[3], "%.17g", limits->usd_per_day);
    snprintf(a[4], sizeof a[4], "%.17g", limits->usd_per_month);
    const char *args[] = {ck->k.rpm, ck->k.tpm, ck->k.day, ck->k.month, a[0], a[1], a[2], a[3], a[4]};
    size_t lens[9];
    for (int i = 0; i < 9; i++)
        lens[i] = strlen(args[i]);
    int rc = tg_redis_eval(c, &g_check, on_check, ck, 4, 9, args, lens);
    if (rc != TG_OK) {
        free(ck);
        if (rc != TG_UNAVAILABLE)
            return rc;
        finish_down(cb, user, fail_open);
    }
    return TG_OK;
}

static void on_record(int err, const redisReply *reply, void *user)
{
    if (err == TG_OK && reply->type == REDIS_REPLY_ERROR)
        tg_error("limits: record script failed: %s", reply->str);
}

int tg_limits_record(struct tg_redis *c, const char *key_name, const struct tg_cfg_limits *limits,
                     int64_t tokens, double cost_usd, int64_t now_unix)
{
    if (key_name == NULL || key_name[0] == '\0' || !tg_limits_any(limits))
        return TG_OK;
    struct keys k;
    make_keys(key_name, now_unix > 0 ? now_unix : (int64_t)time(NULL), &k);
    char t[32], usd[40];
    snprintf(t, sizeof t, "%lld", (long long)(tokens > 0 ? tokens : 0));
    snprintf(usd, sizeof usd, "%.17g", cost_usd > 0 ? cost_usd : 0.0);
    const char *args[] = {k.tpm, k.day, k.month, t, usd};
    size_t lens[5];
    for (int i = 0; i < 5; i++)
        lens[i] = strlen(args[i]);
    return tg_redis_eval(c, &g_record, on_record, NULL, 3, 5, args, lens);
}

json_t *tg_limits_reply(const struct tg_limits_result *r, int *status, int64_t *retry_after_s)
{
    char msg[256];
    if (r->kind == TG_LIMIT_UNAVAILABLE) {
        *status = 503;
        *retry_after_s = 1;
        return tg_json_error("Rate limits cannot be checked right now (limit store unavailable); "
                             "retry shortly.", "server_error", NULL, "limits_unavailable");
    }
    *status = 429;
    *retry_after_s = r->retry_after_s > 0 ? r->retry_after_s : 1;
    snprintf(msg, sizeof msg, "Rate limit reached for this API key (%s). Retry after %lld s.",
             r->kind == TG_LIMIT_TOKENS_PER_MIN ? "tokens per minute" : "requests per minute",
             (long long)*retry_after_s);
    return tg_json_error(msg, "rate_limit_exceeded", NULL, "rate_limit_exceeded");
}

json_t *tg_limits_reject_budget(const struct tg_limits_result *r, int *status,
                                int64_t *retry_after_s)
{
    char msg[256];
    *status = 429;
    *retry_after_s = r->budget_retry_after_s > 0 ? r->budget_retry_after_s : 1;
    snprintf(msg, sizeof msg, "The %s budget of this API key is spent. It resets in %lld s.",
             r->budget_kind == TG_LIMIT_USD_PER_MONTH ? "monthly" : "daily", (long long)*retry_after_s);
    return tg_json_error(msg, "insufficient_quota", NULL, "insufficient_quota");
}
