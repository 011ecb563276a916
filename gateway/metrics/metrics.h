/* tiergate metrics: a process-wide Prometheus registry and its text exposition (format 0.0.4).
 *
 * Threads: every function here is thread-safe. tg_metrics_record() and the tg_metrics_upstream_*
 * / tg_metrics_bad_request() calls take one short mutex (a few label look-ups and additions);
 * tg_metrics_render() takes it while it copies values out. Gauges that belong to other parts of
 * the process (engine slots, queue depth, tokens/s, in-flight requests, circuit breaker states)
 * are pulled at render time from callbacks registered with tg_metrics_set_*_fn(); those callbacks
 * run on the thread calling tg_metrics_render(), without the registry mutex held.
 *
 * Cardinality is bounded: every label value comes from a fixed set or from the configuration.
 *   endpoint  chat|completions|responses|embeddings|classify|extract|explain|jobs|models|other
 *   tier      local|remote|cache|none            (route decisions: local|remote)
 *   model     a model name in the config, "" (none) or "other"
 *   status    the HTTP code (100..599) or "other"
 *   reason    router/escalation/fallback/bad-request codes: [a-z0-9._-], at most 48 bytes, at most
 *             64 distinct values per metric, anything else "other"
 *   target    a model or provider name in the config, else "other"
 *   kind      upstream error kinds: [a-z0-9_], at most 32 distinct, else "other"
 *   tenant    a tenant on metrics.tenant_labels, "none" (open mode) or "other"; only on the two
 *             tenant_* families (the usage ledger in Redis keeps every tenant)
 * Label sets follow config reloads (tg_metrics_configure); series created earlier stay.
 *
 * Money is kept in integer nano-dollars so sums are exact; it is exposed as float USD.
 *
 * Metric names (all prefixed tiergate_):
 *   requests_total{endpoint,tier,model,status}           counter
 *   request_duration_seconds{tier}                       histogram
 *   time_to_first_token_seconds{tier}                    histogram
 *   upstream_duration_seconds{target}                    histogram, per attempt from
 *       tg_metrics_upstream_duration(); until that first reports, the records' upstream_s stands in
 *       (then reset once: counters in a histogram may only go up, but a scrape in between sees a
 *       reset like a restart, which rate() handles)
 *   tokens_total{tier,model,type=prompt|completion|cached} counter
 *   cost_usd_total{tier,model}                           counter (USD)
 *   cost_avoided_usd_total{reason=local|cache}           counter (USD, on metrics.reference_model)
 *   cache_requests_total{result=hit|miss|bypass}         counter
 *   route_decisions_total{tier,reason}                   counter
 *   escalations_total{reason}                            counter (sum() = all escalations)
 *   fallbacks_total{reason}                              counter of fallback hops
 *   upstream_errors_total{target,kind}                   counter
 *   bad_requests_total{reason}                           counter
 *   tenant_requests_total{tenant}, tenant_cost_usd_total{tenant}   counters (allow-listed tenants)
 *   usage_ledger_errors_total{kind=unavailable|refused|lost}  records /v1/usage (Redis) missed
 *   gateway_overhead_seconds                             histogram (5 µs .. 100 ms buckets): tiergate's
 *       own time per proxied remote request, provider wait excluded (tg_metrics_gateway_overhead)
 *   circuit_state{target}                                gauge: 0 closed, 1 half-open, 2 open
 *   engine_slots_busy, engine_queue_depth, engine_tokens_per_second, inflight_requests  gauges
 *   build_info{version}                                  gauge, always 1
 */
#ifndef TG_GW_METRICS_H
#define TG_GW_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tg/buf.h"
#include "tg/config.h"

/* One finished request, filled by the gateway at the end of each request. Strings are borrowed
 * for the duration of the call; NULL is accepted wherever a string is (treated as absent). */
struct tg_request_record {
    const char *endpoint;        /* "chat"|"completions"|"responses"|"embeddings"|"classify"|"extract"|"explain"|"jobs"|"models"|"other" */
    const char *tier;            /* "local"|"remote"|"cache"|"none" (rejected before routing) */
    const char *model;           /* public model name served, "" if none */
    int status;                  /* HTTP status sent */
    double duration_s;           /* accept → last byte */
    double ttft_s;               /* time to first token/byte of the answer, < 0 if n/a */
    double upstream_s;           /* time spent in the remote call(s), < 0 if none */
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    double cost_usd;             /* what this request cost (see cost.h) */
    double avoided_usd;          /* what it would have cost on metrics.reference_model when served local or from cache, else 0 */
    const char *avoided_reason;  /* "local"|"cache"|NULL */
    const char *cache_result;    /* "hit"|"miss"|"bypass" */
    const char *route_tier;      /* router decision tier "local"|"remote"|NULL */
    const char *route_reason;    /* router's top reason code (bounded set), NULL if not routed */
    bool escalated;              /* local result failed its check, retried remote */
    int fallbacks;               /* fallback hops taken */
    const char *escalation_reason, *fallback_reason;   /* short codes for the dashboard's "top reasons" */
    const char *tenant;          /* key's tenant ("" if open mode) */
};

/* Create the registry (process-wide). Call once before the I/O threads start; version goes into
 * tiergate_build_info. TG_OK, or TG_NOMEM. Calling it again without shutdown is TG_INVAL. */
int tg_metrics_init(const struct tg_config *cfg, const char *version);

/* Take the label sets (model, provider and tenant names) from a new config snapshot. Any thread;
 * the snapshot is not kept (names are copied). No-op before init. */
void tg_metrics_configure(const struct tg_config *cfg);

/* Free the registry and drop registered callbacks. Call after the I/O threads stopped. */
void tg_metrics_shutdown(void);

/* Account one finished request (thread-safe, called once per request). Ignored before init.
 * Also feeds the usage ledger hook, if one is set (see usage.h). */
void tg_metrics_record(const struct tg_request_record *r);

/* A request rejected before the pipeline (bad JSON, body too big, unknown model, ...).
 * reason: a short code such as "invalid_json", "body_too_big". */
void tg_metrics_bad_request(const char *reason);

/* Remote executor reports. target: model or provider name from the config; kind: a short code
 * ("timeout", "connect", "http_5xx", "http_429", "reset", "parse", "circuit_open"). */
void tg_metrics_upstream_error(const char *target, const char *kind);
void tg_metrics_upstream_duration(const char *target, double seconds);

/* One proxied remote request's time inside the gateway, in seconds: from the request parsed to
 * the upstream request written, plus from the upstream response complete to the reply written
 * (the wait for the provider, retries and backoff excluded). Thread-safe; ignored before init and
 * for negative or non-finite values. */
void tg_metrics_gateway_overhead(double seconds);

/* Gauges read at scrape time. The callback fills what it knows; fields left at their initial
 * values (-1) are not exported. Runs on the thread that renders; must not call tg_metrics_*. */
struct tg_metrics_gauges {
    double engine_slots_busy;        /* sequences decoding now */
    double engine_queue_depth;       /* jobs waiting for a slot */
    double engine_tokens_per_second; /* recent generation rate */
    double inflight_requests;        /* accepted, not yet answered */
    double redis_up;                 /* 1 every I/O thread's Redis connection is up, 0 not, -1 disabled */
    double redis_outages_total;      /* Redis outages seen since start (one per outage, not per request) */
};
typedef void (*tg_metrics_gauges_fn)(void *user, struct tg_metrics_gauges *out);
void tg_metrics_set_gauges_fn(tg_metrics_gauges_fn fn, void *user); /* NULL fn unregisters */

/* Circuit breaker states at scrape time: call visit once per target. state: 0 closed,
 * 1 half-open, 2 open. Registered by the upstream component; metrics never links it. */
enum { TG_METRICS_CIRCUIT_CLOSED = 0, TG_METRICS_CIRCUIT_HALF_OPEN = 1, TG_METRICS_CIRCUIT_OPEN = 2 };
typedef void (*tg_metrics_circuit_visit_fn)(void *vctx, const char *target, int state);
typedef void (*tg_metrics_circuits_fn)(void *user, tg_metrics_circuit_visit_fn visit, void *vctx);
void tg_metrics_set_circuits_fn(tg_metrics_circuits_fn fn, void *user); /* NULL fn unregisters */

/* Append the whole exposition (text/plain; version=0.0.4) to out. TG_OK, TG_TOOBIG or TG_NOMEM
 * (out may then hold a partial text). Before init it appends nothing and returns TG_OK. */
int tg_metrics_render(struct tg_buf *out);
#define TG_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* Admin protection for /metrics, /v1/usage and /dashboard. true when cfg has no admin key, or
 * when the request carries it: "Authorization: Bearer <key>" (authorization may be NULL) or a
 * `key=<key>` parameter in the query string (the dashboard page's own fetches; query may be NULL,
 * without the leading '?'). The comparison is SHA-256 + constant time. */
bool tg_metrics_admin_allowed(const struct tg_config *cfg, const char *authorization,
                              const char *query);

/* The dashboard page (static HTML, compiled in). Never NULL; *len gets its length in bytes. */
const char *tg_dashboard_html(size_t *len);

#endif
