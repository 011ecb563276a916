/* The local tier: the engine (embedded behind inproc://, or engine workers over nng) and the
 * hand-over of its events to the I/O thread that owns each request.
 *
 * Engine events arrive on an nng callback thread. The callback copies the event into a heap item
 * and appends it to the owning worker's queue under a mutex, then activates a persistent event on
 * that worker's base (event_active is safe across threads with evthread_use_pthreads). The worker
 * drains the queue in order, so a job's tokens and its final event keep their order.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "pipeline.h"
#include "tg/engine_net.h"
#include "tg/err.h"
#include "tg/log.h"

struct ev_item {
    struct ev_item *next;
    struct tg_req *req;
    enum tg_engine_event_type type;
    int err;
    char *text;            /* token text / final text / error message, NUL-terminated */
    size_t text_len;
    char finish_reason[16];
    struct tg_engine_usage usage;
    double ttft_ms, total_ms, confidence;
    int32_t *label_idx;
    size_t n_label_idx;
    float *embedding;
    int32_t n_embd;
    size_t index;          /* embeddings: which input */
};

struct tg_local_queue {
    pthread_mutex_t mu;
    struct ev_item *head, *tail;
    struct event *ev;
};

/* Per-job user pointer: embeddings run one job per input and need the input index. */
struct job_ctx {
    struct tg_req *req;
    size_t index;
};

static void free_item(struct ev_item *it)
{
    free(it->text);
    free(it->label_idx);
    free(it->embedding);
    free(it);
}

static void deliver(struct ev_item *it)
{
    struct tg_req *r = it->req;
    tg_log_set_request_id(r->id);
    if (it->type == TG_EV_TOKEN) {
        tg_pipeline_local_token(r, it->text, it->text_len);
        return;
    }
    if (it->type == TG_EV_ERROR) {
        tg_pipeline_local_error(r, it->err, it->text != NULL ? it->text : tg_strerror(it->err));
        return;
    }
    struct tg_engine_event ev = {
        .type = TG_EV_DONE,
        .text = it->text != NULL ? it->text : "",
        .text_len = it->text_len,
        .finish_reason = it->finish_reason,
        .usage = it->usage,
        .ttft_ms = it->ttft_ms,
        .total_ms = it->total_ms,
        .label_idx = it->label_idx,
        .n_label_idx = it->n_label_idx,
        .confidence = it->confidence,
        .embedding = it->embedding,
        .n_embd = it->n_embd,
        .job_id = it->index, /* embeddings: the input index travels here */
    };
    tg_pipeline_local_done(r, &ev);
}

static void on_queue(evutil_socket_t fd, short what, void *arg)
{
    struct tg_worker *w = arg;
    struct tg_local_queue *q = w->local_q;
    pthread_mutex_lock(&q->mu);
    struct ev_item *list = q->head;
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&q->mu);
    while (list != NULL) {
        struct ev_item *next = list->next;
        deliver(list);
        free_item(list);
        list = next;
    }
    tg_log_set_request_id(NULL);
}

int tg_local_worker_init(struct tg_worker *w)
{
    struct tg_local_queue *q = calloc(1, sizeof *q);
    if (q == NULL)
        return TG_NOMEM;
    pthread_mutex_init(&q->mu, NULL);
    q->ev = event_new(w->base, -1, EV_PERSIST, on_queue, w);
    if (q->ev == NULL) {
        pthread_mutex_destroy(&q->mu);
        free(q);
        return TG_NOMEM;
    }
    w->local_q = q;
    return TG_OK;
}

void tg_local_worker_fini(struct tg_worker *w)
{
    struct tg_local_queue *q = w->local_q;
    if (q == NULL)
        return;
    struct ev_item *it = q->head;
    while (it != NULL) {
        struct ev_item *next = it->next;
        free_item(it);
        it = next;
    }
    event_free(q->ev);
    pthread_mutex_destroy(&q->mu);
    free(q);
    w->local_q = NULL;
}

static char *dup_bytes(const char *p, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        if (n > 0)
            memcpy(d, p, n);
        d[n] = '\0';
    }
    return d;
}

/* nng callback thread: copy and queue. Never touches the request beyond r->w. */
static void on_engine_event(const struct tg_engine_event *ev, void *user)
{
    struct job_ctx *jc = user;
    struct tg_req *r = jc->req;
    struct ev_item *it = calloc(1, sizeof *it);
    if (it == NULL) {
        /* Losing a token is survivable; losing the final event would leak the request. */
        if (ev->type == TG_EV_TOKEN)
            return;
        tg_error("out of memory queueing an engine event; request %s will be dropped", r->id);
        abort();
    }
    it->req = r;
    it->type = ev->type;
    it->index = jc->index;
    if (ev->type == TG_EV_ERROR) {
        it->err = ev->err;
        const char *m = ev->message != NULL ? ev->message : "";
        it->text = dup_bytes(m, strlen(m));
        it->text_len = strlen(m);
    } else {
        it->text = dup_bytes(ev->text != NULL ? ev->text : "", ev->text != NULL ? ev->text_len : 0);
        it->text_len = ev->text != NULL ? ev->text_len : 0;
    }
    if (ev->type == TG_EV_DONE) {
        snprintf(it->finish_reason, sizeof it->finish_reason, "%s",
                 ev->finish_reason != NULL ? ev->finish_reason : "stop");
        it->usage = ev->usage;
        it->ttft_ms = ev->ttft_ms;
        it->total_ms = ev->total_ms;
        it->confidence = ev->confidence;
        if (ev->n_label_idx > 0 && ev->label_idx != NULL) {
            it->label_idx = malloc(ev->n_label_idx * sizeof *it->label_idx);
            if (it->label_idx != NULL) {
                memcpy(it->label_idx, ev->label_idx, ev->n_label_idx * sizeof *it->label_idx);
                it->n_label_idx = ev->n_label_idx;
            }
        }
        if (ev->n_embd > 0 && ev->embedding != NULL) {
            it->embedding = malloc((size_t)ev->n_embd * sizeof *it->embedding);
            if (it->embedding != NULL) {
                memcpy(it->embedding, ev->embedding, (size_t)ev->n_embd * sizeof *it->embedding);
                it->n_embd = ev->n_embd;
            }
        }
    }
    if (ev->type != TG_EV_TOKEN)
        free(jc);
    struct tg_local_queue *q = r->w->local_q;
    pthread_mutex_lock(&q->mu);
    if (q->tail != NULL)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    pthread_mutex_unlock(&q->mu);
    event_active(q->ev, EV_READ, 0);
}

/* ---- engine start / stop ---------------------------------------------------------------- */

/* Model-load progress for large files: a redrawn bar on a terminal, a log line per 25 %
 * otherwise. */
static void load_progress(float progress, void *user)
{
    int *last = user;
    int pct = (int)(progress * 100.0f);
    if (isatty(STDERR_FILENO)) {
        if (pct == *last)
            return;
        char bar[41];
        int fill = pct * 40 / 100;
        for (int i = 0; i < 40; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[40] = '\0';
        fprintf(stderr, "\rloading model [%s] %3d%%%s", bar, pct, pct >= 100 ? "\n" : "");
    } else if (pct / 25 != *last / 25 || *last < 0) {
        tg_info("local tier: loading model %d%%", pct);
    }
    *last = pct;
}

static void *local_thread_main(void *arg)
{
    struct tg_gateway *gw = arg;
    struct tg_config *cfg = NULL;
    struct tg_router_policy *pol = NULL;
    tg_gateway_snapshot(gw, &cfg, &pol);
    char err[512] = "";
    int rc;
    struct tg_engine_client *client = NULL;
    if (cfg->local.n_workers > 0) {
        rc = tg_engine_client_create((const char *const *)cfg->local.workers, cfg->local.n_workers,
                                     NULL, &gw->engine_remote_workers, err, sizeof err);
        if (rc == TG_OK) {
            client = gw->engine_remote_workers;
            if (tg_engine_client_wait_ready(client, 1, 30000) != TG_OK)
                tg_warn("local tier: no engine worker answered yet; requests route remote "
                        "until one does");
            tg_info("local tier: %zu engine worker(s): %s%s", cfg->local.n_workers,
                    cfg->local.workers[0], cfg->local.n_workers > 1 ? ", ..." : "");
            snprintf(gw->model_desc, sizeof gw->model_desc, "engine workers");
        }
    } else {
        struct tg_engine_params ep = tg_engine_default_params();
        ep.model_path = cfg->local.model;
        ep.n_ctx = cfg->local.context;
        ep.n_slots = cfg->local.slots;
        ep.n_threads = cfg->local.threads;
        ep.n_gpu_layers = cfg->local.gpu_layers;
        ep.kv_cache_type = cfg->local.kv_cache_type;
        ep.queue_max = cfg->local.queue_max;
        ep.prefix_cache_entries =
            cfg->local.prefix_cache_entries > 0 ? cfg->local.prefix_cache_entries : -1;
        ep.kv_split = cfg->local.kv_split;
        /* config: -1 = the engine's default (0 there), 0 = none (-1 there) */
        ep.prefix_cache_spill_bytes = cfg->local.prefix_cache_spill_bytes < 0   ? 0
                                      : cfg->local.prefix_cache_spill_bytes == 0 ? -1
                                                                                : cfg->local.prefix_cache_spill_bytes;
        struct stat st;
        int last_pct = -1;
        if (stat(cfg->local.model, &st) == 0 && st.st_size > (256 << 20)) {
            ep.load_progress = load_progress;
            ep.load_progress_user = &last_pct;
            tg_info("local tier: loading %s (%.1f GB)", cfg->local.model, (double)st.st_size / 1e9);
        }
        rc = tg_engine_local_start(&ep, &gw->engine_local, err, sizeof err);
        if (rc == TG_OK) {
            client = tg_engine_local_client(gw->engine_local);
            struct tg_engine_info info;
            tg_engine_info(tg_engine_local_engine(gw->engine_local), &info);
            atomic_store(&gw->random_weights, info.random_weights);
            char per_slot[48] = "";
            if (info.kv_split)
                snprintf(per_slot, sizeof per_slot, ", %d per slot", info.n_ctx_seq);
            snprintf(gw->model_desc, sizeof gw->model_desc,
                     "%.100s (%.100s, %d slots, ctx %d%s)", info.model_name, info.model_desc,
                     info.n_slots, info.n_ctx, per_slot);
            tg_info("local tier: model %s loaded from %s", gw->model_desc, cfg->local.model);
            if (info.random_weights)
                tg_warn("local tier: %s is a generated RANDOM-WEIGHT model: its free text is "
                        "meaningless; constrained output (labels, JSON) is still valid",
                        cfg->local.model);
        }
    }
    char state[600];
    if (rc != TG_OK) {
        tg_error("local tier unavailable: %s", err);
        snprintf(state, sizeof state, "unavailable: %.500s", err);
    } else {
        atomic_store(&gw->engine, client);
        snprintf(state, sizeof state, "ready: %s", gw->model_desc);
    }
    /* The banner first: a client that saw /readyz turn 200 finds it in the log. */
    tg_gateway_banner(gw, state);
    atomic_store(&gw->ready, true);
    tg_config_unref(cfg);
    tg_router_policy_unref(pol);
    return NULL;
}

int tg_local_start(struct tg_gateway *gw)
{
    struct tg_config *cfg = NULL;
    struct tg_router_policy *pol = NULL;
    tg_gateway_snapshot(gw, &cfg, &pol);
    bool enabled = cfg->local.enabled && (cfg->local.n_workers > 0 || cfg->local.model != NULL);
    tg_config_unref(cfg);
    tg_router_policy_unref(pol);
    if (!enabled) {
        tg_info("local tier disabled");
        tg_gateway_banner(gw, "disabled");
        atomic_store(&gw->ready, true);
        return TG_OK;
    }
    if (pthread_create(&gw->local_thread, NULL, local_thread_main, gw) != 0)
        return TG_INTERNAL;
    gw->local_thread_started = true;
    return TG_OK;
}

void tg_local_stop(struct tg_gateway *gw)
{
    if (gw->local_thread_started) {
        pthread_join(gw->local_thread, NULL);
        gw->local_thread_started = false;
    }
    atomic_store(&gw->engine, NULL);
    /* In-flight jobs end with TG_CLOSED events; they are queued, never delivered. */
    tg_engine_local_stop(gw->engine_local);
    gw->engine_local = NULL;
    tg_engine_client_destroy(gw->engine_remote_workers);
    gw->engine_remote_workers = NULL;
}

bool tg_local_available(struct tg_gateway *gw)
{
    struct tg_engine_client *c = atomic_load(&gw->engine);
    if (c == NULL)
        return false;
    struct tg_engine_client_stats st;
    tg_engine_client_stats(c, &st);
    return st.workers_live > 0;
}

double tg_local_wait_ms(struct tg_gateway *gw)
{
    struct tg_engine_client *c = atomic_load(&gw->engine);
    if (c == NULL)
        return 0;
    struct tg_engine_client_stats st;
    tg_engine_client_stats(c, &st);
    return st.engine.est_wait_ms;
}

/* ---- submit ---------------------------------------------------------------------------- */

static int submit_one(struct tg_req *r, struct tg_engine_client *c, const struct tg_engine_job *job,
                      size_t index, char *err, size_t errlen)
{
    struct job_ctx *jc = malloc(sizeof *jc);
    if (jc == NULL)
        return TG_NOMEM;
    jc->req = r;
    jc->index = index;
    uint64_t id = 0;
    int rc = tg_engine_client_submit(c, job, on_engine_event, jc, &id, err, errlen);
    if (rc != TG_OK) {
        free(jc);
        return rc;
    }
    r->job_id = id;
    r->jobs_active++;
    return TG_OK;
}

int tg_local_submit(struct tg_req *r, char *err, size_t errlen)
{
    struct tg_engine_client *c = atomic_load(&r->w->gw->engine);
    if (c == NULL) {
        snprintf(err, errlen, "the local engine is not available");
        return TG_UNAVAILABLE;
    }
    struct tg_engine_job job = {0};
    job.messages = r->msgs;
    job.n_messages = r->n_msgs;
    job.prompt = r->prompt;
    job.temperature = r->temperature;
    job.top_p = r->top_p;
    job.top_k = r->top_k;
    job.seed = r->seed;
    job.max_tokens = r->max_tokens > 0 ? (int32_t)(r->max_tokens > INT32_MAX ? INT32_MAX : r->max_tokens) : 0;
    job.stop = r->stop;
    job.n_stop = r->n_stop;
    job.stream = r->stream;
    switch (r->ep) {
    case TG_GW_EP_CLASSIFY:
        job.kind = TG_JOB_CLASSIFY;
        job.labels = r->labels;
        job.n_labels = r->n_labels;
        job.multi_label = r->multi_label;
        job.instructions = r->instructions;
        job.stream = false;
        break;
    case TG_GW_EP_EXTRACT:
        job.kind = TG_JOB_EXTRACT;
        job.schema_json = r->schema_text;
        job.instructions = r->instructions;
        job.stream = false;
        break;
    case TG_GW_EP_EMBEDDINGS: {
        job.kind = TG_JOB_EMBED;
        job.stream = false;
        job.messages = NULL;
        job.n_messages = 0;
        for (size_t i = 0; i < r->n_inputs; i++) {
            job.prompt = r->inputs[i];
            int rc = submit_one(r, c, &job, i, err, errlen);
            if (rc != TG_OK) {
                /* Jobs already queued finish on their own; their results are dropped. */
                if (r->jobs_active > 0) {
                    r->emb_error = rc;
                    return TG_OK;
                }
                return rc;
            }
        }
        return TG_OK;
    }
    case TG_GW_EP_COMPLETIONS:
        /* Legacy text completion: the prompt is tokenized as is, no chat template. */
        job.kind = TG_JOB_GENERATE;
        job.messages = NULL;
        job.n_messages = 0;
        break;
    default:
        job.kind = TG_JOB_GENERATE;
        if (r->json_mode) {
            /* response_format with a schema: generated under the schema's grammar */
            job.kind = TG_JOB_EXTRACT;
            job.schema_json = r->schema_text;
            job.stream = false;
            job.n_stop = 0;
        }
        break;
    }
    return submit_one(r, c, &job, 0, err, errlen);
}

void tg_local_cancel(struct tg_req *r)
{
    struct tg_engine_client *c = atomic_load(&r->w->gw->engine);
    if (c != NULL && r->jobs_active > 0 && r->ep != TG_GW_EP_EMBEDDINGS)
        tg_engine_client_cancel(c, r->job_id);
}
