/* The request pipeline: one struct tg_req per request, living on one I/O thread from accept to
 * reply. Stages (pipeline.c): parse -> auth -> limits -> cache lookup -> route -> execute
 * (local / remote, escalation, fallback) -> respond -> cache store -> metrics record.
 *
 * Module-private to gateway/. Everything here runs on the owning worker's thread, except the
 * engine callback in local.c, which only queues a copy of the event for that thread.
 */
#ifndef TG_GATEWAY_PIPELINE_H
#define TG_GATEWAY_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/http.h>
#include <jansson.h>

#include "server.h"
#include "tg/buf.h"
#include "tg/config.h"
#include "tg/engine.h"
#include "tg/gw_exec.h"
#include "tg/router.h"
#include "tg/schema.h"

enum tg_gw_endpoint {
    TG_GW_EP_CHAT,
    TG_GW_EP_COMPLETIONS,
    TG_GW_EP_RESPONSES,
    TG_GW_EP_EMBEDDINGS,
    TG_GW_EP_CLASSIFY,
    TG_GW_EP_EXTRACT,
};

#define TG_GW_MAX_STOP 4

struct tg_upstream_req;

struct tg_req {
    struct tg_worker *w;
    struct tg_req *prev, *next;        /* the worker's list of live requests (shutdown) */
    struct evhttp_request *http;       /* NULL for tg_gw_execute callers or once detached */
    tg_gw_result_cb exec_cb;           /* tg_gw_execute: where the result goes */
    void *exec_user;
    struct tg_config *cfg;             /* snapshot held for the request's life */
    struct tg_router_policy *policy;   /* likewise */
    const struct tg_cfg_key *key;      /* NULL in open mode */
    char id[64];                       /* request id */
    double t_start, t_first;           /* monotonic seconds; t_first = first answer byte */
    /* Remote tier, for tiergate_gateway_overhead_seconds (monotonic seconds, 0 = not yet): the
     * first upstream request written, and the last upstream response complete. */
    double t_up_sent, t_up_done;

    /* parsed request */
    enum tg_gw_endpoint ep;
    const char *ep_name;               /* metric label */
    json_t *body;                      /* the client's JSON body */
    const char *model_req;             /* "model" as sent ("auto" when absent) */
    bool stream, include_usage;
    struct tg_chat_msg *msgs;          /* canonical messages (strings borrowed from body/owned) */
    size_t n_msgs;
    json_t *owned;                     /* strings built while parsing live in this array */
    const char *prompt;                /* /v1/completions: the raw prompt */
    float temperature, top_p;
    int32_t top_k;
    uint32_t seed;
    int64_t max_tokens;                /* -1 = not given */
    const char *stop[TG_GW_MAX_STOP];
    size_t n_stop;
    const char **labels;               /* classify */
    size_t n_labels;
    bool multi_label;
    const char *instructions;
    char *schema_text;                 /* extract: the schema serialised */
    struct tg_schema *schema;
    const char **inputs;               /* embeddings */
    size_t n_inputs;
    bool base64;                       /* embeddings: encoding_format base64 */
    bool json_mode;                    /* chat/responses with a JSON schema response format: the
                                          engine runs it as EXTRACT (r->schema) */
    int tier_override;                 /* X-Tiergate-Tier: 0 none, 1 local, 2 remote */

    /* routing */
    const struct tg_cfg_model *local_model;  /* what "local" means for this request (may be NULL) */
    const struct tg_cfg_model *remote_model; /* what "remote" means (may be NULL) */
    struct tg_route_decision dec;
    bool routed;
    const char *route_reason;

    /* outcome */
    const char *tier;                  /* "local" | "remote" | "cache" | "none" */
    const char *model_served;          /* public model name */
    const char *cache_result;          /* "hit" | "miss" | "bypass" */
    bool escalated;
    const char *escalation_reason;
    int fallbacks;
    const char *fallback_reason;
    int up_fallbacks;                  /* the part of fallbacks the upstream executor reported */
    int64_t prompt_tokens, completion_tokens, cached_tokens;
    double upstream_s;                 /* < 0 when no remote call */
    int status;
    bool replied;                      /* the final byte was handed to evhttp (or exec_cb ran) */
    int should_retry;                  /* x-should-retry: -1 not sent, 0 false, 1 true */
    bool recorded;                     /* metrics record written */
    double cost_usd, avoided_usd;
    const char *avoided_reason;
    char cost_str[32];

    /* local tier */
    uint64_t job_id;
    int jobs_active;                   /* engine jobs whose final event has not been handled */
    struct tg_buf text;                /* output accumulated */
    json_t *emb_data;                  /* embeddings results, by index */
    int emb_error;
    double confidence;
    json_t *labels_out;

    /* remote tier */
    struct tg_upstream_req *up;
    bool up_active;

    /* streaming */
    bool sse;                          /* an SSE reply has started */
    bool client_gone;
    char resp_id[48];
    int64_t created;
    int seq;                           /* responses API sequence_number */
    struct event *closewatch;          /* notices a client that hangs up mid-request */
    bool sse_unacked;                  /* a chunk was queued and no "written" callback saw the
                                        * output empty since (http.c, sse_send) */
    bool sse_end_pending;              /* tg_req_sse_end waits for that callback */

    /* Redis component (redis_glue.c): limits, cache, jobs */
    void *redis_state;
    int redis_active;                  /* Redis commands whose callback has not run */
};

/* server.c -> pipeline.c: an HTTP request for a /v1 path. */
void tg_pipeline_http(struct tg_worker *w, struct evhttp_request *http, const char *path);

/* gw_exec.h entry (ctx = struct tg_worker *). */
int tg_pipeline_execute(void *ctx, const char *endpoint_path, const char *body, size_t len,
                        const char *key_name, tg_gw_result_cb cb, void *user);

/* Free requests still alive at shutdown (after the loop stopped and evhttp was freed). */
void tg_pipeline_free_all(struct tg_worker *w);

/* ---- http.c: replies ---- */
double tg_now_s(void);
/* Send a JSON reply (takes the reference of body) with the tiergate headers; finishes req. */
void tg_req_reply_json(struct tg_req *r, int status, json_t *body);
/* OpenAI-shaped error reply; finishes req. */
void tg_req_reply_error(struct tg_req *r, int status, const char *message, const char *type,
                        const char *param, const char *code);
/* Same with a body that is already serialised (remote passthrough: no re-serialisation). */
void tg_req_reply_raw(struct tg_req *r, int status, const char *body, size_t len);
/* Watch for a client hang-up while r is in flight (closecb + EOF watch). */
void tg_req_watch_client(struct tg_req *r);
/* SSE: begin (status 200 + headers), write one already-framed chunk, end. */
void tg_req_sse_begin(struct tg_req *r);
void tg_req_sse_write(struct tg_req *r, const char *data, size_t len);
void tg_req_sse_data_json(struct tg_req *r, const char *event, json_t *obj); /* takes ref */
void tg_req_sse_end(struct tg_req *r);
/* Bytes queued towards the client and not yet written (backpressure). */
size_t tg_req_pending_out(struct tg_req *r);
/* Frees the request when nothing references it any more. */
void tg_req_maybe_free(struct tg_req *r);
/* Called when the client went away: cancels engine jobs / the upstream transfer. */
void tg_req_client_gone(struct tg_req *r);

/* ---- local.c: the engine tier ---- */
/* Per-worker event queue (created with the worker). */
int tg_local_worker_init(struct tg_worker *w);
void tg_local_worker_fini(struct tg_worker *w);   /* frees undelivered events */
/* Start the configured engine (embedded or workers) on a background thread; sets gw->ready. */
int tg_local_start(struct tg_gateway *gw);
void tg_local_stop(struct tg_gateway *gw);
bool tg_local_available(struct tg_gateway *gw);
double tg_local_wait_ms(struct tg_gateway *gw);
/* Submit r's job for its endpoint. TG_OK: events follow on r's thread. */
int tg_local_submit(struct tg_req *r, char *err, size_t errlen);
void tg_local_cancel(struct tg_req *r);

/* ---- pipeline.c: called back by the tiers ---- */
void tg_pipeline_local_token(struct tg_req *r, const char *text, size_t len);
void tg_pipeline_local_done(struct tg_req *r, const struct tg_engine_event *ev);
void tg_pipeline_local_error(struct tg_req *r, int err, const char *message);

/* ---- remote.c: the remote tier ---- */
bool tg_remote_available(struct tg_req *r);
/* The circuit breaker of r's remote model is open. */
bool tg_remote_circuit_open(struct tg_req *r);
/* Run r on the remote tier starting with r->remote_model; replies when done. */
void tg_remote_run(struct tg_req *r);
void tg_remote_cancel(struct tg_req *r);
int tg_remote_worker_init(struct tg_worker *w);
/* tg_upstream_exec_reply_due for this I/O thread's executor (false when it has none). */
bool tg_remote_reply_due(struct tg_worker *w, double within_s);
void tg_remote_worker_fini(struct tg_worker *w);

/* Finish: cost, headers, metrics. Filled by pipeline.c, used by http.c. */
void tg_pipeline_finish_record(struct tg_req *r);
const char *tg_pipeline_cost_header(struct tg_req *r, char *buf, size_t len);
/* Value for x-tiergate-model. */
const char *tg_pipeline_model_header(struct tg_req *r, char *buf, size_t len);

#endif
