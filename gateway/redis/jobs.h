/* Durable asynchronous jobs on Redis Streams, and signed webhook callbacks.
 *
 * POST /v1/jobs body: any chat, classify or extract request plus
 *   "endpoint": "/v1/chat/completions" | "/v1/classify" | "/v1/extract"
 *               (or "type": "chat" | "classify" | "extract"; default chat)
 *   "callback_url": optional http(s) URL that receives the result as a POST
 * The request itself is the body without those fields. Header Idempotency-Key: a repeated POST
 * with the same key (per tenant, for result_ttl_s) returns the first job instead of a new one.
 * → 202 {"id":"job_…","object":"job","status":"queued"}.
 * GET /v1/jobs/{id} → 200 {"id","object":"job","status":"queued|running|succeeded|failed",
 *   "endpoint","created_at","completed_at","attempts","result":{"status":<http>,"body":<json>}}
 *   or 404. Jobs are visible only to the tenant that created them.
 *
 * Durability: POST runs one Lua script: job hash tg:job:<id> (fields status, endpoint, body,
 * key, tenant, callback_url, created_at, attempts) + XADD tg:jobs. Every gateway thread reads
 * the stream through consumer group "tiergate" as consumer "<hostname>:<pid>" (XREADGROUP, polled
 * every poll_ms and right after a local POST), runs the request through the gateway pipeline
 * (tg_gw_execute_fn), stores the result (status succeeded/failed, result, completed_at; EXPIRE
 * result_ttl_s) and XACKs. Running jobs are kept fresh with XCLAIM ... JUSTID every
 * claim_idle_ms/3; XAUTOCLAIM takes entries idle longer than jobs.claim_idle_ms, so a gateway
 * killed mid-job (kill -9) loses nothing: the restarted one or another replica finishes it.
 * A job already final when it is (re)delivered is only acknowledged.
 *
 * Webhooks: when callback_url is set, the job JSON (as GET returns it) is POSTed with headers
 * Content-Type: application/json, X-Tiergate-Timestamp: <unix s>, and, when jobs.webhook_secret
 * is set, X-Tiergate-Signature: sha256=<hex HMAC-SHA256(webhook_secret, body)>. Non-2xx or
 * transport errors are retried with exponential backoff (1 s doubling, max 60 s) up to
 * jobs.webhook_retries more times, from a dedicated sender thread (libcurl easy), off the I/O
 * threads. Unless webhook_allow_private, a callback_url whose host is a loopback, private or
 * link-local literal (or "localhost") is a 400 at POST, and a delivery whose resolved address is
 * one is refused at connect time (no redirects, no proxy); see jobs_int.h for the ranges.
 *
 * Redis unavailable: both handlers answer 503 at once.
 *
 * Threads: a struct tg_jobs belongs to one I/O thread (the tg_redis client's); handlers and
 * callbacks run there. The webhook sender is one process-wide thread, started by the first
 * tg_jobs_create and stopped by the last tg_jobs_destroy.
 */
#ifndef TG_GW_JOBS_H
#define TG_GW_JOBS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "redis.h"
#include "tg/config.h"
#include "tg/gw_exec.h"

struct tg_jobs;

struct tg_jobs_params {
    int64_t result_ttl_s;       /* jobs.result_ttl_s */
    const char *webhook_secret; /* jobs.webhook_secret; NULL = unsigned callbacks (copied) */
    int webhook_retries;        /* jobs.webhook_retries: extra attempts after the first */
    int64_t claim_idle_ms;      /* jobs.claim_idle_ms */
    bool webhook_allow_private; /* jobs.webhook_allow_private: callbacks may reach loopback and
                                 * private addresses (false: refused, see webhook.c) */
    int poll_ms;                /* XREADGROUP poll period; 0 = 200 */
    int max_running;            /* jobs run at once by this thread; 0 = 4 */
    const char *consumer;       /* consumer name; NULL = "<hostname>:<pid>" (copied) */
    bool consume;               /* false: accept and answer only, never run jobs (tests) */
};

/* Parameters from a config snapshot (consume = true, the rest from cfg->jobs). */
struct tg_jobs_params tg_jobs_params_from_config(const struct tg_config *cfg);

/* Create the jobs component for one I/O thread. exec/exec_ctx: the gateway's pipeline entry and
 * its per-thread context (struct tg_worker *). TG_OK, TG_NOMEM, TG_INVAL. */
int tg_jobs_create(struct tg_redis *redis, const struct tg_jobs_params *p, tg_gw_execute_fn exec,
                   void *exec_ctx, struct tg_jobs **out);

/* Stop polling and free. Jobs still running are abandoned without XACK (another consumer
 * claims them after claim_idle_ms); their result callbacks, if the pipeline still calls them,
 * are ignored safely only if the pipeline cancels them first — so the gateway destroys this
 * after its pipeline has drained. NULL is a no-op. */
void tg_jobs_destroy(struct tg_jobs *j);

/* The answer to one jobs HTTP request: status, and a JSON body (valid during the call only). */
typedef void (*tg_jobs_reply_cb)(int status, const char *body, size_t len, void *user);

/* POST /v1/jobs. idempotency_key: the header or NULL. key_name: the API key's name (NULL = open
 * mode), tenant: its tenant ("" or NULL in open mode). Answers 202, 400 (bad body), 503 (Redis
 * down). cb runs exactly once, possibly before this returns (validation errors, Redis down). */
void tg_jobs_handle_post(struct tg_jobs *j, const char *body, size_t len,
                         const char *idempotency_key, const char *key_name, const char *tenant,
                         tg_jobs_reply_cb cb, void *user);

/* GET /v1/jobs/{id}: 200, 404 (unknown, expired or another tenant's), 503. Same cb contract. */
void tg_jobs_handle_get(struct tg_jobs *j, const char *id, const char *tenant,
                        tg_jobs_reply_cb cb, void *user);

/* Stop taking new jobs from the stream (SIGTERM drain): running ones finish and are
 * acknowledged; entries not yet read stay for the other replicas or the next start. Handlers
 * keep answering. Idempotent. */
void tg_jobs_pause(struct tg_jobs *j);

/* Kick the poller now (also done after each local POST). */
void tg_jobs_poll_now(struct tg_jobs *j);

/* Jobs this thread has finished (stored a result for) since creation; for tests and metrics. */
uint64_t tg_jobs_completed(const struct tg_jobs *j);

/* Webhook signature: "sha256=<hex HMAC-SHA256(secret, body)>" into out (>= 72 bytes). */
void tg_jobs_sign(const char *secret, const char *body, size_t len, char out[72]);

#endif
