/* The gateway core's use of the Redis component (gateway/redis/): per-worker client and jobs,
 * rate limits and budgets before routing, the response cache around the pipeline, and the
 * /v1/jobs endpoints. Module-private to gateway/; everything runs on the request's I/O thread.
 * Written by the redis engineer so the pipeline only calls these hooks. */
#ifndef TG_GATEWAY_REDIS_GLUE_H
#define TG_GATEWAY_REDIS_GLUE_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/buffer.h>

#include "tg/config.h"

struct tg_worker;
struct tg_req;

/* Per worker: Redis client (when redis.enabled) and the jobs consumer. TG_OK or an error. */
int tg_glue_worker_init(struct tg_worker *w, const struct tg_config *cfg);
void tg_glue_worker_fini(struct tg_worker *w);

/* Scrape-time Redis health for /metrics: *up = 1 when every worker's connection is up, 0 when
 * one is down, -1 when Redis is disabled; *outages = outages since start. Any thread. */
void tg_glue_redis_gauges(const struct tg_config *cfg, double *up, double *outages);

/* SIGTERM drain: stop taking new async jobs on this worker (call on the worker's thread). */
void tg_glue_drain(struct tg_worker *w);

/* After parsing, before routing: limits, then the cache lookup. Calls cont(r) to route and run
 * the request, or answers it itself (429/503, or a cache hit). */
void tg_glue_before_route(struct tg_req *r, void (*cont)(struct tg_req *r));

/* The router input `remote_budget_exhausted` for r. */
bool tg_glue_budget_exhausted(const struct tg_req *r);

/* r's budget is spent and it would still go remote (the policy does not downgrade, or local
 * cannot serve it): answer 429 insufficient_quota with Retry-After. */
void tg_glue_reject_budget(struct tg_req *r);

/* Reply capture for the cache: a JSON body about to be sent (call before headers are added), an
 * SSE chunk about to be written, and a stream that failed after it started (never stored). */
void tg_glue_capture_body(struct tg_req *r, int status, const char *body, size_t len);
void tg_glue_capture_sse(struct tg_req *r, struct evbuffer *chunk);
void tg_glue_stream_failed(struct tg_req *r);

/* Called once from tg_pipeline_finish_record (cost known): store in the cache if the response
 * completed, and record tokens + cost against the key's limits. */
void tg_glue_finish(struct tg_req *r);

/* Request freed: release the glue state. */
void tg_glue_req_free(struct tg_req *r);

/* Path under /v1/jobs, after auth: POST /v1/jobs and GET /v1/jobs/{id}. Answers r. */
void tg_glue_jobs_http(struct tg_req *r, const char *path);

#endif
