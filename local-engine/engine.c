/* The local engine: one llama_context, one scheduler thread, continuous batching over
 * n_slots sequences, chunked prefill, an LRU prefix cache, grammar-constrained
 * classify/extract, pooled embeddings on a second context.
 *
 * Two KV layouts (tg_engine_params.kv_split). Split, the default: one KV stream of
 * n_ctx / n_slots cells per slot, as llama-server runs with -np N; each stream attends over
 * its own cells only, so with all 8 slots decoding it runs 1.02-1.09x llama-server where
 * unified manages 0.93-1.00x (the masked scan of the other streams' cells in CPU attention;
 * bench/RESULTS.md). Its prefix cache keeps prompts in the slots and in host memory
 * ("prefix cache, kv_split" below). llama.cpp splits a multi-stream batch into ubatches of
 * consecutive sequence ids only (llama_batch_allocr::split_equal, sequential), each one graph
 * pass over all the weights; when the busy slots are not contiguous (a short job finished
 * between two long ones) that cost 3 streams around a hole ~35 % of their speed (small model,
 * 1 thread). build_batch therefore fills such holes with a padding row (or one more prompt
 * token of a slot still prefilling): the gap now costs ~5 % (bench-engine-gaps). Unified, for
 * deployments where one job must be able to use all n_ctx cells, is described next.
 *
 * Sequence ids: slot i decodes on seq i; prefix-cache entry j holds its prompt KV on seq
 * n_slots + j. With kv_unified=true a seq_cp only tags cells with another sequence id, so a
 * cached prefix costs KV cells only for the tokens no running job shares.
 *
 * llama.cpp builds each step's attention over KV cells [0, highest cell in use] (rounded up
 * to 256), whichever sequences own them, and scans every masked cell. An entry no running
 * job shares would widen that range for all of them, so while jobs run such entries are
 * copied to host memory (llama_state_seq_get_data) and their cells freed ("spilled"); a
 * hit copies one back (llama_state_seq_set_data, bit-exact KV, so output stays identical
 * to a cold run) and the hit job shares its cells as before. Per cell, one decoded token's
 * scan costs ~1/100 (small, F16) to ~1/400 (Phi-3.5 shape, Q4_K_M) of copying the cell out,
 * page faults included (bench-engine CPU per token with and without spilling, 1 thread), so
 * an idle entry is spilled only once running jobs have decoded SPILL_AFTER_ROWS batch rows
 * beside it (rent, then buy: never more than about twice the better choice in hindsight). A
 * pipeline of short jobs (classify: a few tokens each) that keeps hitting the same prefixes
 * does not pay copies it would not earn back. Off by default (prefix_cache_spill_bytes): it
 * pays on the small model (a single stream beside 6 parked 1,233-token prefixes: +8..22 %
 * CPU/token without it, ~0 with it) but not on the Phi-3.5 shape, where the parked cells
 * cost ~0 and the copies +10 % (bench/RESULTS.md, "engine decode speed").
 *
 * Locking: e->mu guards the queues, the job <-> slot assignment, cancel flags and the
 * counters. The scheduler thread never holds it while calling llama.cpp or a callback.
 */
#include "tg/engine.h"

#include "engine_int.h"
#include "tg/buf.h"
#include "tg/err.h"
#include "tg/grammar.h"
#include "tg/log.h"
#include "tg/schema.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ggml-backend.h"
#include "llama.h"

#ifndef TG_LLAMA_BACKEND_DIR
#define TG_LLAMA_BACKEND_DIR ""
#endif

#define MAX_SLOTS 64
#define MAX_STOP 8
#define MAX_STOP_BYTES 128
#define MAX_INPUT_BYTES (64u << 20) /* formatted prompt; far above any n_ctx we can hold */
#define DEFAULT_SEED 42u
#define SPILL_AFTER_ROWS 256 /* batch rows decoded beside an idle entry before it is spilled */

enum slot_state { SLOT_IDLE, SLOT_PREFILL, SLOT_GEN };

struct job {
    uint64_t id;
    enum tg_job_kind kind;
    tg_engine_event_cb cb;
    void *user;
    llama_token *tokens;
    int32_t n_tokens;
    int32_t max_tokens;
    char **stop;
    size_t n_stop;
    char **labels;
    size_t n_labels;
    bool multi;
    struct tg_schema *schema;
    struct llama_sampler *chain;   /* top-k/top-p/temp/dist or greedy */
    struct llama_sampler *grammar; /* applied before the chain; NULL = unconstrained */
    bool stream;
    bool greedy;    /* temperature <= 0 */
    bool cancelled; /* under e->mu */
    double t_submit_ms;
    struct job *next;
};

struct slot {
    int32_t seq;
    struct job *job; /* written under e->mu by the scheduler; read by cancel/stats */
    enum slot_state state;
    int32_t n_past;      /* tokens of this sequence in the KV cache */
    int32_t n_gen;       /* tokens sampled */
    int32_t batch_idx;   /* row of this slot's logits in the current batch, -1 = none */
    int32_t n_in_batch;  /* tokens this slot put in the current batch */
    llama_pos pad_pos;   /* kv_split, idle slot: position of its padding row, -1 = none */
    llama_token pending; /* sampled, to be decoded next step (SLOT_GEN) */
    struct tg_buf out;   /* generated text */
    size_t emitted;      /* bytes of out already sent as TOKEN events */
    size_t searched;     /* bytes of out already searched for stop strings */
    double logp;         /* CLASSIFY: sum of log p of the sampled tokens */
    int32_t cached;      /* prompt tokens reused from the prefix cache */
    double t_first_ms;
    double t_start_ms;
    llama_token_data *cand; /* n_vocab candidates, reused every step */
    struct pcache_entry *pc_src;  /* entry this job hit (a ref held), NULL = none */
    struct pcache_entry *pc_made; /* entry made from this job's prompt (a ref held) */
    /* kv_split: the prompt tokens whose KV this slot's sequence kept from its last job
     * (a slot-resident prefix-cache entry; n_kept 0 = none). Scheduler thread only. */
    llama_token *kept;
    int32_t n_kept;
    int32_t cap_kept;
    uint64_t kept_used; /* pc_clock when it was last made or hit */
};

struct pcache_entry {
    llama_token *tokens; /* NULL = empty entry */
    int32_t n;
    int32_t seq;
    uint64_t last_used;
    int32_t refs;   /* running slots that hit or made this entry (their cells overlap) */
    int64_t idle_rows; /* batch rows decoded while resident with refs == 0 */
    bool idle_at_step; /* resident with refs == 0 when the current step began */
    uint8_t *blob;  /* spilled: the entry's KV (llama_state_seq_get_data); NULL = in KV */
    size_t blob_len;
};

struct tg_engine {
    struct tg_engine_params p;
    char *model_path;
    char *kv_type;
    struct llama_model *model;
    const struct llama_vocab *vocab;
    struct llama_context *ctx;
    llama_memory_t mem;
    struct llama_context *ectx; /* embeddings; NULL = disabled */
    struct llama_batch batch;
    struct llama_batch ebatch;
    const char *tmpl; /* owned by the model */
    struct tg_engine_info info;
    int32_t n_vocab;
    int32_t n_ctx;
    int32_t n_ctx_seq; /* KV cells one job may use: n_ctx, or n_ctx / n_slots with kv_split */
    int32_t n_batch;
    int32_t embed_ctx;
    int16_t *tok_byte;    /* per token: its byte 0x80..0xFF for byte-fallback tokens, else -1 */
    llama_token *byte_toks; /* the tokens with tok_byte >= 0 */
    int32_t n_byte_toks;

    struct slot slots[MAX_SLOTS];
    int32_t n_slots;
    struct pcache_entry *pc;
    int32_t n_pc;   /* entries in pc[]: with kv_split, host-memory entries only */
    bool pc_on;     /* prefix cache enabled (prefix_cache_entries > 0) */
    bool split;     /* kv_split: one KV stream per slot, prefixes kept in slots + host */
    uint64_t pc_clock;
    int64_t spill_budget; /* bytes; -1 = never spill (unified default) */
    int64_t spill_bytes;  /* held by spilled entries (scheduler thread) */

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping;
    struct job *q_head, *q_tail; /* waiting for a slot */
    int32_t q_len;
    struct job *eq_head, *eq_tail; /* embeddings waiting */
    int32_t eq_len;
    struct job *cancelled; /* cancelled while queued; the scheduler delivers their DONE */
    uint64_t next_id;

    /* counters (under mu) */
    double tps_ewma;
    double prefill_tps_ewma;
    double job_ms_ewma;
    uint64_t jobs_done;
    uint64_t tokens_generated;
    uint64_t pc_hits, pc_misses, pc_tokens;
    uint64_t pc_spills, pc_restores;
    uint64_t gap_rows; /* kv_split filler rows (build_batch), under mu */
    int32_t step_gap_rows; /* this step's, scheduler thread */
    int64_t pc_spilled_bytes; /* copy of spill_bytes for stats */
    atomic_int pc_entries; /* live prefix-cache entries; read by tg_engine_stats on any thread */
};

/* ---------------------------------------------------------------- process-wide setup */

static _Thread_local char tls_llama_err[256];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static const char *g_backend_dir;

static void llama_log_cb(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    if (level == GGML_LOG_LEVEL_ERROR) {
        /* Keep the last error so create() can say why a load failed. */
        size_t n = strlen(text);
        while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' '))
            n--;
        if (n >= sizeof tls_llama_err)
            n = sizeof tls_llama_err - 1;
        memcpy(tls_llama_err, text, n);
        tls_llama_err[n] = '\0';
        tg_warn("llama: %s", tls_llama_err);
        return;
    }
    if (tg_log_get_level() > TG_LOG_DEBUG)
        return;
    size_t n = strlen(text);
    while (n > 0 && text[n - 1] == '\n')
        n--;
    if (n > 0)
        tg_debug("llama: %.*s", (int)n, text);
}

static void global_init(void)
{
    llama_log_set(llama_log_cb, NULL);
    if (g_backend_dir && g_backend_dir[0])
        ggml_backend_load_all_from_path(g_backend_dir);
    llama_backend_init();
    tg_debug("engine: %zu ggml backend device(s) loaded from '%s'", ggml_backend_dev_count(),
             g_backend_dir ? g_backend_dir : "");
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- params */

struct tg_engine_params tg_engine_default_params(void)
{
    struct tg_engine_params p;
    memset(&p, 0, sizeof p);
    p.n_ctx = 4096;
    p.n_slots = 4;
    p.n_threads = 0;
    p.n_gpu_layers = 0;
    p.kv_cache_type = "f16";
    p.n_batch = 512;
    p.queue_max = 64;
    p.prefix_cache_entries = 8;
    p.prefix_cache_min_tokens = 32;
    p.kv_split = true; /* llama-server's layout with -np N; see the top of this file */
    p.embed_ctx = 512;
    p.backend_dir = NULL;
    return p;
}

static int kv_type_parse(const char *s, enum ggml_type *out)
{
    if (!s || strcmp(s, "f16") == 0)
        *out = GGML_TYPE_F16;
    else if (strcmp(s, "q8_0") == 0)
        *out = GGML_TYPE_Q8_0;
    else if (strcmp(s, "q4_0") == 0)
        *out = GGML_TYPE_Q4_0;
    else
        return TG_INVAL;
    return TG_OK;
}

/* ---------------------------------------------------------------- job memory */

static void strv_free(char **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static char **strv_dup(const char *const *v, size_t n)
{
    char **out = calloc(n ? n : 1, sizeof *out);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        out[i] = strdup(v[i]);
        if (!out[i]) {
            strv_free(out, i);
            return NULL;
        }
    }
    return out;
}

static void job_free(struct job *j)
{
    if (!j)
        return;
    free(j->tokens);
    strv_free(j->stop, j->n_stop);
    strv_free(j->labels, j->n_labels);
    tg_schema_free(j->schema);
    if (j->chain)
        llama_sampler_free(j->chain);
    if (j->grammar)
        llama_sampler_free(j->grammar);
    free(j);
}

/* ---------------------------------------------------------------- events */

static void ev_init(struct tg_engine_event *ev, enum tg_engine_event_type type, uint64_t id)
{
    memset(ev, 0, sizeof *ev);
    ev->type = type;
    ev->job_id = id;
    ev->text = "";
    ev->message = "";
}

static void deliver_error(struct job *j, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void deliver_error(struct job *j, int err, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct tg_engine_event ev;
    ev_init(&ev, TG_EV_ERROR, j->id);
    ev.err = err;
    ev.message = msg;
    ev.total_ms = now_ms() - j->t_submit_ms;
    tg_debug("engine: job %llu failed: %s: %s", (unsigned long long)j->id, tg_errname(err), msg);
    j->cb(&ev, j->user);
}

static void deliver_cancelled_queued(struct job *j)
{
    struct tg_engine_event ev;
    ev_init(&ev, TG_EV_DONE, j->id);
    ev.finish_reason = "cancelled";
    ev.usage.prompt_tokens = j->n_tokens;
    ev.total_ms = now_ms() - j->t_submit_ms;
    j->cb(&ev, j->user);
}

/* ---------------------------------------------------------------- prompt building */

static int format_chat(const struct tg_engine *e, const struct llama_chat_message *msgs,
                       size_t n, char **out, char *err, size_t errlen)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += strlen(msgs[i].role) + strlen(msgs[i].content);
    if (total > MAX_INPUT_BYTES) {
        errf(err, errlen, "input is %zu bytes, more than the %u-byte limit", total,
             MAX_INPUT_BYTES);
        return TG_TOOBIG;
    }
    int32_t cap = (int32_t)(total * 2 + 1024);
    for (int attempt = 0; attempt < 2; attempt++) {
        char *buf = malloc((size_t)cap + 1);
        if (!buf)
            return TG_NOMEM;
        int32_t r = llama_chat_apply_template(e->tmpl, msgs, n, true, buf, cap);
        if (r < 0) {
            free(buf);
            errf(err, errlen, "the model's chat template could not format the messages");
            return TG_MODEL;
        }
        if (r <= cap) {
            buf[r] = '\0';
            *out = buf;
            return TG_OK;
        }
        free(buf);
        cap = r;
    }
    errf(err, errlen, "chat template output kept growing");
    return TG_INTERNAL;
}

static int tokenize(const struct tg_engine *e, const char *text, bool parse_special,
                    int32_t limit, const char *what, llama_token **out, int32_t *n_out,
                    char *err, size_t errlen)
{
    size_t len = strlen(text);
    if (len > MAX_INPUT_BYTES) {
        errf(err, errlen, "%s is %zu bytes, more than the %u-byte limit", what, len,
             MAX_INPUT_BYTES);
        return TG_TOOBIG;
    }
    llama_token *toks = malloc(sizeof *toks * ((size_t)limit + 1));
    if (!toks)
        return TG_NOMEM;
    int32_t n = llama_tokenize(e->vocab, text, (int32_t)len, toks, limit + 1, true,
                               parse_special);
    if (n == INT32_MIN) {
        free(toks);
        errf(err, errlen, "%s is too long to tokenize", what);
        return TG_TOOBIG;
    }
    if (n < 0 || n > limit) {
        free(toks);
        bool emb = strcmp(what, "embedding input") == 0;
        if (!emb && e->split)
            errf(err, errlen,
                 "%s is %d tokens but one slot's context holds at most %d tokens (kv_split: "
                 "n_ctx %d over %d slots, %d cells each)",
                 what, n < 0 ? -n : n, limit, e->n_ctx, e->n_slots, e->n_ctx_seq);
        else
            errf(err, errlen, "%s is %d tokens but the %s holds at most %d tokens (n_ctx %d)",
                 what, n < 0 ? -n : n, emb ? "embedding context" : "context", limit,
                 emb ? e->embed_ctx : e->n_ctx);
        return TG_CONTEXT;
    }
    if (n == 0) {
        free(toks);
        errf(err, errlen, "%s is empty", what);
        return TG_INVAL;
    }
    *out = toks;
    *n_out = n;
    return TG_OK;
}

/* The system message for CLASSIFY/EXTRACT, then the caller's messages (their own system
 * message, if first, is folded into ours so the template sees one). */
static int build_task_prompt(const struct tg_engine *e, const struct tg_engine_job *jb,
                             char **out, char *err, size_t errlen)
{
    struct tg_buf sys;
    tg_buf_init(&sys, MAX_INPUT_BYTES);
    int rc = TG_OK;
    if (jb->kind == TG_JOB_CLASSIFY) {
        rc |= tg_buf_append_str(&sys, jb->instructions ? jb->instructions
                                                       : "Classify the user's text.");
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < jb->n_labels; i++)
            json_array_append_new(arr, json_string(jb->labels[i]));
        char *labels = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
        json_decref(arr);
        if (!labels) {
            tg_buf_free(&sys);
            return TG_NOMEM;
        }
        if (jb->multi_label)
            rc |= tg_buf_printf(&sys,
                                "\nAnswer with a JSON array of every label that applies, "
                                "chosen from: %s. Answer with the array only.",
                                labels);
        else
            rc |= tg_buf_printf(&sys,
                                "\nAnswer with exactly one of these labels and nothing else: "
                                "%s.",
                                labels);
        free(labels);
    } else {
        rc |= tg_buf_append_str(&sys, jb->instructions
                                          ? jb->instructions
                                          : "Extract the requested information from the "
                                            "user's text.");
        rc |= tg_buf_printf(&sys,
                            "\nAnswer with only a JSON value that conforms to this JSON "
                            "Schema:\n%s",
                            jb->schema_json);
    }
    size_t first = 0;
    struct llama_chat_message *msgs = calloc(jb->n_messages + 2, sizeof *msgs);
    if (!msgs) {
        tg_buf_free(&sys);
        return TG_NOMEM;
    }
    if (jb->n_messages > 0 && strcmp(jb->messages[0].role, "system") == 0) {
        rc |= tg_buf_printf(&sys, "\n\n%s", jb->messages[0].content);
        first = 1;
    }
    if (rc != TG_OK) {
        free(msgs);
        tg_buf_free(&sys);
        errf(err, errlen, "instructions too long");
        return TG_TOOBIG;
    }
    size_t n = 0;
    msgs[n++] = (struct llama_chat_message){"system", sys.data};
    if (jb->n_messages > 0) {
        for (size_t i = first; i < jb->n_messages; i++)
            msgs[n++] = (struct llama_chat_message){jb->messages[i].role,
                                                    jb->messages[i].content};
    } else {
        msgs[n++] = (struct llama_chat_message){"user", jb->prompt};
    }
    rc = format_chat(e, msgs, n, out, err, errlen);
    free(msgs);
    tg_buf_free(&sys);
    return rc;
}

static char *join_messages(const struct tg_engine_job *jb)
{
    struct tg_buf b;
    tg_buf_init(&b, MAX_INPUT_BYTES);
    int rc = TG_OK;
    for (size_t i = 0; i < jb->n_messages && rc == TG_OK; i++) {
        if (i > 0)
            rc = tg_buf_append_str(&b, "\n");
        if (rc == TG_OK)
            rc = tg_buf_append_str(&b, jb->messages[i].content);
    }
    if (rc == TG_OK)
        rc = tg_buf_append(&b, "", 0);
    if (rc != TG_OK) {
        tg_buf_free(&b);
        return NULL;
    }
    return tg_buf_detach(&b);
}

static struct llama_sampler *make_chain(const struct tg_engine_job *jb)
{
    struct llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    struct llama_sampler *c = llama_sampler_chain_init(cp);
    if (!c)
        return NULL;
    if (!(jb->temperature > 0.0f)) {
        llama_sampler_chain_add(c, llama_sampler_init_greedy());
        return c;
    }
    if (jb->top_k > 0)
        llama_sampler_chain_add(c, llama_sampler_init_top_k(jb->top_k));
    if (jb->top_p > 0.0f && jb->top_p < 1.0f)
        llama_sampler_chain_add(c, llama_sampler_init_top_p(jb->top_p, 1));
    llama_sampler_chain_add(c, llama_sampler_init_temp(jb->temperature));
    llama_sampler_chain_add(c, llama_sampler_init_dist(jb->seed ? jb->seed : DEFAULT_SEED));
    return c;
}

static struct llama_sampler *make_grammar(const struct tg_engine *e, const char *gbnf,
                                          char *err, size_t errlen)
{
    tls_llama_err[0] = '\0';
    struct llama_sampler *g = llama_sampler_init_grammar(e->vocab, gbnf, "root");
    if (!g)
        errf(err, errlen, "grammar does not parse%s%s", tls_llama_err[0] ? ": " : "",
             tls_llama_err);
    return g;
}

static int check_job(const struct tg_engine *e, const struct tg_engine_job *jb, char *err,
                     size_t errlen)
{
    if (jb->kind < TG_JOB_GENERATE || jb->kind > TG_JOB_EMBED) {
        errf(err, errlen, "unknown job kind %d", (int)jb->kind);
        return TG_INVAL;
    }
    if (jb->n_messages == 0 && !jb->prompt) {
        errf(err, errlen, "job has neither messages nor a prompt");
        return TG_INVAL;
    }
    for (size_t i = 0; i < jb->n_messages; i++) {
        if (!jb->messages || !jb->messages[i].role || !jb->messages[i].content) {
            errf(err, errlen, "message %zu has no role or no content", i);
            return TG_INVAL;
        }
    }
    if (jb->max_tokens < 0) {
        errf(err, errlen, "max_tokens must be >= 0 (got %d)", jb->max_tokens);
        return TG_INVAL;
    }
    if (!isfinite(jb->temperature) || !isfinite(jb->top_p) || jb->top_k < 0) {
        errf(err, errlen, "bad sampling parameters");
        return TG_INVAL;
    }
    if (jb->n_stop > MAX_STOP) {
        errf(err, errlen, "at most %d stop strings (got %zu)", MAX_STOP, jb->n_stop);
        return TG_INVAL;
    }
    for (size_t i = 0; i < jb->n_stop; i++) {
        if (!jb->stop || !jb->stop[i] || jb->stop[i][0] == '\0' ||
            strlen(jb->stop[i]) > MAX_STOP_BYTES) {
            errf(err, errlen, "stop string %zu is empty or longer than %d bytes", i,
                 MAX_STOP_BYTES);
            return TG_INVAL;
        }
    }
    if (jb->kind == TG_JOB_CLASSIFY) {
        if (!jb->labels || jb->n_labels == 0) {
            errf(err, errlen, "classify needs at least one label");
            return TG_INVAL;
        }
        return tg_grammar_check_labels(jb->labels, jb->n_labels, err, errlen);
    }
    if (jb->kind == TG_JOB_EXTRACT && !jb->schema_json) {
        errf(err, errlen, "extract needs a JSON Schema");
        return TG_INVAL;
    }
    if (jb->kind == TG_JOB_EMBED && !e->ectx) {
        errf(err, errlen, "this engine was created without an embedding context");
        return TG_UNSUPPORTED;
    }
    return TG_OK;
}

/* ---------------------------------------------------------------- submit / cancel / stats */

int tg_engine_submit(struct tg_engine *e, const struct tg_engine_job *jb, tg_engine_event_cb cb,
                     void *user, uint64_t *job_id, char *err, size_t errlen)
{
    if (!e || !jb || !cb) {
        errf(err, errlen, "NULL engine, job or callback");
        return TG_INVAL;
    }
    int rc = check_job(e, jb, err, errlen);
    if (rc != TG_OK)
        return rc;

    struct job *j = calloc(1, sizeof *j);
    if (!j)
        return TG_NOMEM;
    j->kind = jb->kind;
    j->cb = cb;
    j->user = user;
    j->stream = jb->stream;
    j->multi = jb->multi_label;
    j->greedy = !(jb->temperature > 0.0f);
    j->t_submit_ms = now_ms();

    /* Prompt text -> tokens. */
    char *text = NULL;
    bool parse_special = true;
    if (jb->kind == TG_JOB_GENERATE) {
        if (jb->n_messages > 0) {
            struct llama_chat_message *m = calloc(jb->n_messages, sizeof *m);
            if (!m) {
                rc = TG_NOMEM;
                goto fail;
            }
            for (size_t i = 0; i < jb->n_messages; i++)
                m[i] = (struct llama_chat_message){jb->messages[i].role,
                                                   jb->messages[i].content};
            rc = format_chat(e, m, jb->n_messages, &text, err, errlen);
            free(m);
        } else {
            text = strdup(jb->prompt);
            rc = text ? TG_OK : TG_NOMEM;
        }
    } else if (jb->kind == TG_JOB_EMBED) {
        parse_special = false; /* user text, not markup */
        text = jb->n_messages > 0 ? join_messages(jb) : strdup(jb->prompt);
        rc = text ? TG_OK : TG_NOMEM;
    } else {
        if (jb->kind == TG_JOB_EXTRACT) {
            rc = tg_schema_compile_text(jb->schema_json, strlen(jb->schema_json), &j->schema,
                                        err, errlen);
            if (rc != TG_OK)
                goto fail;
        }
        rc = build_task_prompt(e, jb, &text, err, errlen);
    }
    if (rc != TG_OK)
        goto fail;
    if (jb->kind == TG_JOB_EMBED)
        rc = tokenize(e, text, parse_special, e->embed_ctx, "embedding input", &j->tokens,
                      &j->n_tokens, err, errlen);
    else
        rc = tokenize(e, text, parse_special, e->n_ctx_seq - 1, "prompt", &j->tokens,
                      &j->n_tokens, err, errlen);
    free(text);
    text = NULL;
    if (rc != TG_OK)
        goto fail;

    if (jb->kind != TG_JOB_EMBED) {
        int32_t room = e->n_ctx_seq - j->n_tokens;
        j->max_tokens = jb->max_tokens == 0 || jb->max_tokens > room ? room : jb->max_tokens;
        if (jb->n_stop > 0) {
            j->stop = strv_dup(jb->stop, jb->n_stop);
            if (!j->stop) {
                rc = TG_NOMEM;
                goto fail;
            }
            j->n_stop = jb->n_stop;
        }
        j->chain = make_chain(jb);
        if (!j->chain) {
            rc = TG_NOMEM;
            goto fail;
        }
        char *gbnf = NULL;
        if (jb->kind == TG_JOB_CLASSIFY) {
            j->labels = strv_dup(jb->labels, jb->n_labels);
            if (!j->labels) {
                rc = TG_NOMEM;
                goto fail;
            }
            j->n_labels = jb->n_labels;
            gbnf = tg_grammar_labels(jb->labels, jb->n_labels, jb->multi_label, err, errlen);
            if (!gbnf) {
                rc = TG_INVAL;
                goto fail;
            }
        } else if (jb->kind == TG_JOB_EXTRACT) {
            gbnf = tg_schema_to_gbnf(j->schema);
            if (!gbnf) {
                rc = TG_NOMEM;
                goto fail;
            }
        } else if (jb->grammar) {
            gbnf = strdup(jb->grammar);
            if (!gbnf) {
                rc = TG_NOMEM;
                goto fail;
            }
        }
        if (gbnf) {
            j->grammar = make_grammar(e, gbnf, err, errlen);
            free(gbnf);
            if (!j->grammar) {
                rc = jb->kind == TG_JOB_GENERATE ? TG_INVAL : TG_INTERNAL;
                goto fail;
            }
        }
    }

    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        errf(err, errlen, "engine is shutting down");
        rc = TG_CLOSED;
        goto fail;
    }
    if (jb->kind == TG_JOB_EMBED ? e->eq_len >= e->p.queue_max : e->q_len >= e->p.queue_max) {
        int32_t depth = jb->kind == TG_JOB_EMBED ? e->eq_len : e->q_len;
        pthread_mutex_unlock(&e->mu);
        errf(err, errlen, "engine queue is full (%d jobs waiting, queue_max %d)", depth,
             e->p.queue_max);
        rc = TG_BUSY;
        goto fail;
    }
    j->id = ++e->next_id;
    if (jb->kind == TG_JOB_EMBED) {
        if (e->eq_tail)
            e->eq_tail->next = j;
        else
            e->eq_head = j;
        e->eq_tail = j;
        e->eq_len++;
    } else {
        if (e->q_tail)
            e->q_tail->next = j;
        else
            e->q_head = j;
        e->q_tail = j;
        e->q_len++;
    }
    if (job_id)
        *job_id = j->id;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return TG_OK;

fail:
    free(text);
    job_free(j);
    if (rc == TG_NOMEM)
        errf(err, errlen, "out of memory");
    return rc;
}

static bool queue_remove(struct job **head, struct job **tail, uint64_t id, struct job **out)
{
    struct job *prev = NULL;
    for (struct job *j = *head; j; prev = j, j = j->next) {
        if (j->id != id)
            continue;
        if (prev)
            prev->next = j->next;
        else
            *head = j->next;
        if (*tail == j)
            *tail = prev;
        j->next = NULL;
        *out = j;
        return true;
    }
    return false;
}

int tg_engine_cancel(struct tg_engine *e, uint64_t job_id)
{
    if (!e)
        return TG_INVAL;
    int rc = TG_NOTFOUND;
    pthread_mutex_lock(&e->mu);
    struct job *j = NULL;
    if (queue_remove(&e->q_head, &e->q_tail, job_id, &j)) {
        e->q_len--;
    } else if (queue_remove(&e->eq_head, &e->eq_tail, job_id, &j)) {
        e->eq_len--;
    }
    if (j) {
        j->cancelled = true;
        j->next = e->cancelled;
        e->cancelled = j;
        rc = TG_OK;
    } else {
        for (int32_t i = 0; i < e->n_slots; i++) {
            struct job *sj = e->slots[i].job;
            if (sj && sj->id == job_id && !sj->cancelled) {
                sj->cancelled = true; /* the slot counts as free from now on */
                rc = TG_OK;
                break;
            }
        }
    }
    if (rc == TG_OK)
        pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

void tg_engine_stats(struct tg_engine *e, struct tg_engine_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    out->n_slots = e->n_slots;
    for (int32_t i = 0; i < e->n_slots; i++)
        if (e->slots[i].job && !e->slots[i].job->cancelled)
            out->slots_busy++;
    out->queue_depth = e->q_len + e->eq_len;
    out->queue_max = e->p.queue_max;
    int32_t free_slots = e->n_slots - out->slots_busy;
    if (e->q_len + 1 > free_slots) {
        int32_t ahead = e->q_len + 1 - free_slots;
        out->est_wait_ms = ceil((double)ahead / e->n_slots) * e->job_ms_ewma;
    }
    out->tokens_per_s = e->tps_ewma;
    out->prefill_tokens_per_s = e->prefill_tps_ewma;
    out->jobs_done = e->jobs_done;
    out->tokens_generated = e->tokens_generated;
    out->prefix_cache_hits = e->pc_hits;
    out->prefix_cache_misses = e->pc_misses;
    out->prefix_cache_tokens = e->pc_tokens;
    /* pc[].tokens belongs to the scheduler thread; the count is kept atomically for us */
    out->prefix_cache_entries = atomic_load(&e->pc_entries);
    out->prefix_cache_spills = e->pc_spills;
    out->prefix_cache_restores = e->pc_restores;
    out->prefix_cache_spilled_bytes = e->pc_spilled_bytes;
    out->gap_rows = e->gap_rows;
    pthread_mutex_unlock(&e->mu);
}

void tg_engine_info(const struct tg_engine *e, struct tg_engine_info *out)
{
    if (!e) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = e->info; /* immutable after create */
}

/* ---------------------------------------------------------------- prefix cache */

static int32_t common_prefix(const llama_token *a, int32_t na, const llama_token *b, int32_t nb)
{
    int32_t n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return i;
}

static void pcache_drop(struct tg_engine *e, struct pcache_entry *pe);

static void spill_account(struct tg_engine *e, int64_t delta, bool spill, bool restore)
{
    e->spill_bytes += delta;
    pthread_mutex_lock(&e->mu);
    e->pc_spilled_bytes = e->spill_bytes;
    e->pc_spills += spill;
    e->pc_restores += restore;
    pthread_mutex_unlock(&e->mu);
}

/* Scheduler thread: copy an entry's KV to host memory and free its cells. The entry is
 * dropped instead when its state cannot be read or does not fit the budget. */
static void pcache_spill(struct tg_engine *e, struct pcache_entry *pe)
{
    size_t n = llama_state_seq_get_size_ext(e->ctx, pe->seq, LLAMA_STATE_SEQ_FLAGS_NONE);
    if (n == 0) {
        pcache_drop(e, pe);
        return;
    }
    while (e->spill_bytes + (int64_t)n > e->spill_budget) {
        struct pcache_entry *lru = NULL;
        for (int32_t i = 0; i < e->n_pc; i++)
            if (e->pc[i].blob && (!lru || e->pc[i].last_used < lru->last_used))
                lru = &e->pc[i];
        if (!lru)
            break;
        pcache_drop(e, lru);
    }
    uint8_t *blob = e->spill_bytes + (int64_t)n <= e->spill_budget ? malloc(n) : NULL;
    if (!blob ||
        llama_state_seq_get_data_ext(e->ctx, blob, n, pe->seq, LLAMA_STATE_SEQ_FLAGS_NONE) != n) {
        free(blob);
        pcache_drop(e, pe);
        return;
    }
    llama_memory_seq_rm(e->mem, pe->seq, -1, -1);
    pe->blob = blob;
    pe->blob_len = n;
    spill_account(e, (int64_t)n, true, false);
    tg_debug("engine: prefix-cache entry of %d tokens moved out of the KV cache (%zu bytes)",
             pe->n, n);
}

/* Scheduler thread, before a step: which entries sit idle through it. An entry made or
 * released during the step does not count that step's rows (its own prefill, say). */
static void pcache_mark_idle(struct tg_engine *e)
{
    for (int32_t i = 0; i < e->n_pc; i++) {
        struct pcache_entry *pe = &e->pc[i];
        pe->idle_at_step = pe->tokens && !pe->blob && pe->refs == 0;
    }
}

/* Scheduler thread, after a step of `rows` batch rows: spill the entries no running job
 * shares once they have sat beside SPILL_AFTER_ROWS decoded rows, so the KV range every step
 * attends over holds what running jobs use. */
static void pcache_spill_idle(struct tg_engine *e, int32_t rows)
{
    if (e->spill_budget < 0 || rows <= 0)
        return;
    for (int32_t i = 0; i < e->n_pc; i++) {
        struct pcache_entry *pe = &e->pc[i];
        if (!pe->tokens || pe->blob)
            continue;
        if (pe->refs > 0) {
            pe->idle_rows = 0;
            continue;
        }
        if (!pe->idle_at_step)
            continue;
        pe->idle_rows += rows;
        if (pe->idle_rows >= SPILL_AFTER_ROWS)
            pcache_spill(e, pe);
    }
}

/* Scheduler thread: copy a spilled entry back into its sequence; false (entry dropped) when
 * the KV cache has no room for it. */
static bool pcache_restore(struct tg_engine *e, struct pcache_entry *pe)
{
    size_t got = llama_state_seq_set_data_ext(e->ctx, pe->blob, pe->blob_len, pe->seq,
                                              LLAMA_STATE_SEQ_FLAGS_NONE);
    if (got == 0) {
        tg_debug("engine: no KV room to restore a cached prefix of %d tokens; dropped", pe->n);
        pcache_drop(e, pe);
        return false;
    }
    int64_t len = (int64_t)pe->blob_len;
    free(pe->blob);
    pe->blob = NULL;
    pe->blob_len = 0;
    spill_account(e, -len, false, true);
    return true;
}

/* Scheduler thread: point *ref (a slot's pc_src or pc_made) at pe, moving the reference
 * count along (NULL: none). */
static void slot_set_ref(struct pcache_entry **ref, struct pcache_entry *pe)
{
    if (*ref == pe)
        return;
    if (*ref)
        (*ref)->refs--;
    *ref = pe;
    if (pe)
        pe->refs++;
}

/* Scheduler thread. The cache entry sharing the longest prefix with j's prompt (NULL = none),
 * and that length in *len (0 = none). */
static struct pcache_entry *pcache_longest(struct tg_engine *e, const struct job *j, int32_t *len)
{
    struct pcache_entry *best = NULL;
    *len = 0;
    for (int32_t i = 0; i < e->n_pc; i++) {
        struct pcache_entry *pe = &e->pc[i];
        if (!pe->tokens)
            continue;
        int32_t l = common_prefix(pe->tokens, pe->n, j->tokens, j->n_tokens);
        if (l > *len) {
            *len = l;
            best = pe;
        }
    }
    return best;
}

/* Scheduler thread. Copies the KV of the longest cached prefix into the slot's sequence. */
static int32_t pcache_lookup(struct tg_engine *e, struct slot *s)
{
    struct job *j = s->job;
    int32_t best = 0;
    struct pcache_entry *be = pcache_longest(e, j, &best);
    /* The last prompt token is always decoded: its logits start the generation. */
    if (best > j->n_tokens - 1)
        best = j->n_tokens - 1;
    if (!be || best < e->p.prefix_cache_min_tokens)
        return 0;
    if (be->blob && !pcache_restore(e, be))
        return 0;
    llama_memory_seq_cp(e->mem, be->seq, s->seq, 0, best);
    be->last_used = ++e->pc_clock;
    be->idle_rows = 0;
    slot_set_ref(&s->pc_src, be);
    return best;
}

/* Running slots may still point at pe (refs): it stays theirs to release. */
static void pcache_drop(struct tg_engine *e, struct pcache_entry *pe)
{
    if (pe->blob) {
        free(pe->blob);
        pe->blob = NULL;
        spill_account(e, -(int64_t)pe->blob_len, false, false);
        pe->blob_len = 0;
    } else if (pe->seq >= 0) {
        llama_memory_seq_rm(e->mem, pe->seq, -1, -1);
    }
    if (pe->tokens)
        atomic_fetch_sub(&e->pc_entries, 1);
    free(pe->tokens);
    pe->tokens = NULL;
    pe->n = 0;
}

/* Scheduler thread, right after a slot's prompt is fully in the KV cache. */
static void pcache_insert(struct tg_engine *e, struct slot *s)
{
    struct job *j = s->job;
    if (e->n_pc == 0 || j->n_tokens < e->p.prefix_cache_min_tokens)
        return;
    struct pcache_entry *target = NULL;
    for (int32_t i = 0; i < e->n_pc; i++) {
        struct pcache_entry *pe = &e->pc[i];
        if (!pe->tokens)
            continue;
        int32_t l = common_prefix(pe->tokens, pe->n, j->tokens, j->n_tokens);
        if (l == j->n_tokens) { /* already cached (as this or a longer prompt) */
            pe->last_used = ++e->pc_clock;
            return;
        }
        if (l == pe->n) { /* this prompt extends the entry: replace it */
            target = pe;
            break;
        }
    }
    if (!target) {
        for (int32_t i = 0; i < e->n_pc; i++) {
            struct pcache_entry *pe = &e->pc[i];
            if (!pe->tokens) {
                target = pe;
                break;
            }
            if (!target || pe->last_used < target->last_used)
                target = pe;
        }
    }
    llama_token *copy = malloc(sizeof *copy * (size_t)j->n_tokens);
    if (!copy)
        return; /* caching is an optimisation; skip it */
    memcpy(copy, j->tokens, sizeof *copy * (size_t)j->n_tokens);
    if (target->tokens)
        pcache_drop(e, target);
    llama_memory_seq_cp(e->mem, s->seq, target->seq, 0, j->n_tokens);
    target->tokens = copy;
    atomic_fetch_add(&e->pc_entries, 1);
    target->n = j->n_tokens;
    target->last_used = ++e->pc_clock;
    target->idle_rows = 0;
    slot_set_ref(&s->pc_made, target);
}

/* Evict the least recently used entry that holds KV cells; false when there is none. */
static bool pcache_evict_lru(struct tg_engine *e)
{
    struct pcache_entry *lru = NULL;
    for (int32_t i = 0; i < e->n_pc; i++)
        if (e->pc[i].tokens && !e->pc[i].blob &&
            (!lru || e->pc[i].last_used < lru->last_used))
            lru = &e->pc[i];
    if (!lru)
        return false;
    tg_debug("engine: KV cache full, evicting a cached prefix of %d tokens", lru->n);
    pcache_drop(e, lru);
    return true;
}

/* ---------------------------------------------------------------- prefix cache, kv_split
 *
 * With kv_split every slot's sequence is its own KV stream, and llama_memory_seq_cp between
 * streams copies the whole destination stream's buffers (llama-kv-cache.cpp seq_cp), so
 * entries cannot live on sequences of their own as in unified mode. Instead, like
 * llama-server with -np N: a finished job's slot keeps its prompt's KV (slot-resident
 * entry), a new job goes to the idle slot whose kept prompt shares the longest prefix with
 * it and prefills the rest only; when a slot is taken for an unrelated prompt its kept KV is
 * copied to host memory first (llama_state_seq_get_data, as --cache-ram does) and restored
 * into whichever slot a later hit gets (llama_state_seq_set_data, bit-exact). A kept prefix
 * costs running jobs nothing: each stream attends over its own cells only. */

static void slot_kept_clear(struct tg_engine *e, struct slot *s)
{
    if (s->n_kept > 0)
        atomic_fetch_sub(&e->pc_entries, 1);
    s->n_kept = 0;
}

/* Scheduler thread: slot s keeps the first n tokens of toks as its resident entry (its KV
 * beyond them is removed); n below the minimum keeps nothing. */
static void slot_keep(struct tg_engine *e, struct slot *s, const llama_token *toks, int32_t n)
{
    slot_kept_clear(e, s);
    if (!e->pc_on || n < e->p.prefix_cache_min_tokens) {
        llama_memory_seq_rm(e->mem, s->seq, -1, -1);
        return;
    }
    if (n > s->cap_kept) {
        llama_token *k = realloc(s->kept, sizeof *k * (size_t)n);
        if (!k) { /* caching is an optimisation; skip it */
            llama_memory_seq_rm(e->mem, s->seq, -1, -1);
            return;
        }
        s->kept = k;
        s->cap_kept = n;
    }
    memmove(s->kept, toks, sizeof *toks * (size_t)n);
    s->n_kept = n;
    s->kept_used = ++e->pc_clock;
    atomic_fetch_add(&e->pc_entries, 1);
    llama_memory_seq_rm(e->mem, s->seq, n, -1);
}

/* Scheduler thread: the job about to start on a slot (under e->mu, called by engine_main).
 * Picks the idle slot whose kept prompt shares the longest prefix with j (at least the
 * minimum), else an empty one, else the least recently used. */
static struct slot *split_pick_slot(struct tg_engine *e, const struct job *j)
{
    struct slot *best = NULL, *lru = NULL;
    int32_t best_l = 0;
    for (int32_t i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (s->job)
            continue;
        int32_t l = s->n_kept > 0 ? common_prefix(s->kept, s->n_kept, j->tokens, j->n_tokens)
                                  : 0;
        if (l > best_l) {
            best_l = l;
            best = s;
        }
        if (!lru || (lru->n_kept > 0 && (s->n_kept == 0 || s->kept_used < lru->kept_used)))
            lru = s;
    }
    return best && best_l >= e->p.prefix_cache_min_tokens ? best : lru;
}

/* Scheduler thread: copy the slot's kept prompt to a host-memory entry (unless one already
 * covers it or there is no budget), then empty the slot's sequence. pin: an entry that must
 * survive (the one about to be restored); NULL = none. */
static void split_spill_kept(struct tg_engine *e, struct slot *s, struct pcache_entry *pin)
{
    if (s->n_kept > 0 && e->spill_budget > 0 && e->n_pc > 0) {
        struct pcache_entry *target = NULL;
        bool covered = false;
        for (int32_t i = 0; i < e->n_pc && !covered && !target; i++) {
            struct pcache_entry *pe = &e->pc[i];
            if (!pe->tokens)
                continue;
            int32_t l = common_prefix(pe->tokens, pe->n, s->kept, s->n_kept);
            if (l == s->n_kept)
                covered = true; /* already there (as this or a longer prompt) */
            else if (l == pe->n && pe != pin)
                target = pe; /* the kept prompt extends this entry: replace it */
        }
        size_t n = covered ? 0
                           : llama_state_seq_get_size_ext(e->ctx, s->seq,
                                                          LLAMA_STATE_SEQ_FLAGS_NONE);
        if (n > 0 && (int64_t)n <= e->spill_budget) {
            if (target)
                pcache_drop(e, target);
            /* Least recently used entries go until it fits and an entry is free. */
            for (;;) {
                struct pcache_entry *lru = NULL, *empty = NULL;
                for (int32_t i = 0; i < e->n_pc; i++) {
                    struct pcache_entry *pe = &e->pc[i];
                    if (!pe->tokens)
                        empty = empty ? empty : pe;
                    else if (pe != pin && (!lru || pe->last_used < lru->last_used))
                        lru = pe;
                }
                if (empty && e->spill_bytes + (int64_t)n <= e->spill_budget) {
                    target = empty;
                    break;
                }
                if (!lru) {
                    target = NULL;
                    break;
                }
                pcache_drop(e, lru);
            }
            llama_token *toks = target ? malloc(sizeof *toks * (size_t)s->n_kept) : NULL;
            uint8_t *blob = toks ? malloc(n) : NULL;
            if (blob && llama_state_seq_get_data_ext(e->ctx, blob, n, s->seq,
                                                     LLAMA_STATE_SEQ_FLAGS_NONE) == n) {
                memcpy(toks, s->kept, sizeof *toks * (size_t)s->n_kept);
                target->tokens = toks;
                target->n = s->n_kept;
                target->blob = blob;
                target->blob_len = n;
                target->last_used = s->kept_used;
                atomic_fetch_add(&e->pc_entries, 1);
                spill_account(e, (int64_t)n, true, false);
                tg_debug("engine: slot %d's prefix of %d tokens copied to host memory "
                         "(%zu bytes)", s->seq, s->n_kept, n);
            } else {
                free(toks);
                free(blob);
            }
        }
    }
    slot_kept_clear(e, s);
    llama_memory_seq_rm(e->mem, s->seq, -1, -1);
}

/* Scheduler thread, slot_start with kv_split: reuse the slot's kept prefix, or a longer one
 * from host memory restored into the slot. Returns the prompt tokens reused. */
static int32_t split_lookup(struct tg_engine *e, struct slot *s)
{
    struct job *j = s->job;
    int32_t lim = j->n_tokens - 1; /* the last prompt token is always decoded */
    int32_t l = s->n_kept > 0 ? common_prefix(s->kept, s->n_kept, j->tokens, j->n_tokens) : 0;
    if (l > lim)
        l = lim;
    int32_t h = 0;
    struct pcache_entry *he = pcache_longest(e, j, &h);
    if (h > lim)
        h = lim;
    if (!e->pc_on || (l < e->p.prefix_cache_min_tokens && h < e->p.prefix_cache_min_tokens)) {
        split_spill_kept(e, s, NULL);
        return 0;
    }
    if (l >= h) {
        s->kept_used = ++e->pc_clock;
        slot_kept_clear(e, s); /* the running job owns the sequence now */
        llama_memory_seq_rm(e->mem, s->seq, l, -1);
        return l;
    }
    he->last_used = ++e->pc_clock;
    split_spill_kept(e, s, he);
    size_t got = llama_state_seq_set_data_ext(e->ctx, he->blob, he->blob_len, s->seq,
                                              LLAMA_STATE_SEQ_FLAGS_NONE);
    if (got == 0) {
        tg_debug("engine: could not restore a cached prefix of %d tokens; dropped", he->n);
        pcache_drop(e, he);
        llama_memory_seq_rm(e->mem, s->seq, -1, -1);
        return 0;
    }
    llama_memory_seq_rm(e->mem, s->seq, h, -1);
    spill_account(e, 0, false, true);
    return h;
}

/* ---------------------------------------------------------------- scheduler */

/* Free the slot and count the job as done, before its final event goes out (so stats read
 * from a callback or right after it are current). The caller delivers and frees the job.
 * keep (kv_split): the slot keeps the KV of the job's prompt as a prefix-cache entry; a job
 * that failed keeps nothing (its KV may be partial). */
static struct job *slot_detach(struct tg_engine *e, struct slot *s, bool keep)
{
    if (e->split && keep) {
        int32_t n = s->n_past < s->job->n_tokens ? s->n_past : s->job->n_tokens;
        slot_keep(e, s, s->job->tokens, n);
    } else {
        slot_kept_clear(e, s);
        llama_memory_seq_rm(e->mem, s->seq, -1, -1);
    }
    slot_set_ref(&s->pc_src, NULL);
    slot_set_ref(&s->pc_made, NULL);
    struct job *j = s->job;
    double slot_ms = now_ms() - s->t_start_ms;
    pthread_mutex_lock(&e->mu);
    s->job = NULL;
    e->jobs_done++;
    e->job_ms_ewma = e->job_ms_ewma == 0 ? slot_ms : 0.8 * e->job_ms_ewma + 0.2 * slot_ms;
    pthread_mutex_unlock(&e->mu);
    s->state = SLOT_IDLE;
    return j;
}

static void count_done(struct tg_engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->jobs_done++;
    pthread_mutex_unlock(&e->mu);
}

static void fill_usage(const struct slot *s, struct tg_engine_usage *u)
{
    u->prompt_tokens = s->job->n_tokens;
    u->completion_tokens = s->n_gen;
    u->cached_tokens = s->cached;
}

static void slot_fail(struct tg_engine *e, struct slot *s, int err, const char *msg)
{
    struct job *j = slot_detach(e, s, false);
    deliver_error(j, err, "%s", msg);
    job_free(j);
}

/* Send out[emitted..upto) as one TOKEN event. */
static void slot_emit(struct slot *s, size_t upto)
{
    if (!s->job->stream || upto <= s->emitted)
        return;
    struct tg_engine_event ev;
    ev_init(&ev, TG_EV_TOKEN, s->job->id);
    /* Events promise NUL-terminated text: emit from a copy when out continues past upto. */
    char small[512];
    size_t n = upto - s->emitted;
    char *p = n < sizeof small ? small : malloc(n + 1);
    if (!p)
        return;
    memcpy(p, s->out.data + s->emitted, n);
    p[n] = '\0';
    ev.text = p;
    ev.text_len = n;
    s->job->cb(&ev, s->job->user);
    if (p != small)
        free(p);
    s->emitted = upto;
}

static void slot_finish(struct tg_engine *e, struct slot *s, const char *reason)
{
    struct job *j = s->job;
    const char *text = s->out.data ? s->out.data : "";
    size_t len = s->out.len;
    slot_emit(s, len);

    struct tg_engine_event ev;
    ev_init(&ev, TG_EV_DONE, j->id);
    ev.text = text;
    ev.text_len = len;
    ev.finish_reason = reason;
    fill_usage(s, &ev.usage);
    ev.ttft_ms = s->t_first_ms > 0 ? s->t_first_ms - j->t_submit_ms : 0;
    ev.total_ms = now_ms() - j->t_submit_ms;
    bool cancelled = strcmp(reason, "cancelled") == 0;

    char msg[384];
    if (j->kind == TG_JOB_CLASSIFY && !cancelled) {
        size_t idx[TG_GRAMMAR_MAX_LABELS];
        int32_t idx32[TG_GRAMMAR_MAX_LABELS];
        size_t n_idx = 0;
        char perr[256];
        int rc = tg_grammar_parse_labels((const char *const *)j->labels, j->n_labels, j->multi,
                                         text, len, idx, TG_GRAMMAR_MAX_LABELS, &n_idx, perr,
                                         sizeof perr);
        if (rc != TG_OK) {
            snprintf(msg, sizeof msg, "classification did not produce a label (finish %s): %s",
                     reason, perr);
            slot_fail(e, s, TG_MODEL, msg);
            return;
        }
        for (size_t i = 0; i < n_idx; i++)
            idx32[i] = (int32_t)idx[i];
        ev.label_idx = idx32;
        ev.n_label_idx = n_idx;
        ev.confidence = exp(s->logp);
        slot_detach(e, s, true);
        j->cb(&ev, j->user);
        job_free(j);
        return;
    }
    if (j->kind == TG_JOB_EXTRACT && !cancelled) {
        char verr[256];
        if (!tg_schema_validate_text(j->schema, text, len, verr, sizeof verr)) {
            snprintf(msg, sizeof msg,
                     "generated JSON is not valid against the schema (finish %s, %d tokens): %s",
                     reason, s->n_gen, verr);
            slot_fail(e, s, TG_MODEL, msg);
            return;
        }
    }
    slot_detach(e, s, true);
    j->cb(&ev, j->user);
    job_free(j);
}

/* Scheduler thread: a job just got slot s. */
static void slot_start(struct tg_engine *e, struct slot *s)
{
    struct job *j = s->job;
    s->state = SLOT_PREFILL;
    s->n_gen = 0;
    s->batch_idx = -1;
    s->emitted = 0;
    s->searched = 0;
    s->logp = 0;
    s->t_first_ms = 0;
    s->t_start_ms = now_ms();
    tg_buf_reset(&s->out);
    if (e->split) {
        s->cached = split_lookup(e, s);
    } else {
        llama_memory_seq_rm(e->mem, s->seq, -1, -1);
        s->cached = e->n_pc > 0 ? pcache_lookup(e, s) : 0;
    }
    s->n_past = s->cached;
    pthread_mutex_lock(&e->mu);
    if (s->cached > 0) {
        e->pc_hits++;
        e->pc_tokens += (uint64_t)s->cached;
    } else if (e->pc_on) {
        e->pc_misses++;
    }
    pthread_mutex_unlock(&e->mu);
    tg_debug("engine: job %llu on slot %d: %d prompt tokens (%d cached), max %d new",
             (unsigned long long)j->id, s->seq, j->n_tokens, s->cached, j->max_tokens);
}

static void batch_add(struct llama_batch *b, llama_token t, llama_pos pos, llama_seq_id seq,
                      bool logits)
{
    int32_t i = b->n_tokens++;
    b->token[i] = t;
    b->pos[i] = pos;
    b->n_seq_id[i] = 1;
    b->seq_id[i][0] = seq;
    b->logits[i] = logits;
}

/* When out ends inside a UTF-8 character, the range [*lo, *hi] the next byte must be in
 * (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF); false otherwise. */
static bool utf8_pending(const struct tg_buf *out, unsigned char *lo, unsigned char *hi)
{
    size_t len = out->len;
    if (len == 0)
        return false;
    size_t cut = tg_engine_utf8_complete_len(out->data, len);
    if (cut == len)
        return false;
    unsigned char lead = (unsigned char)out->data[cut];
    *lo = 0x80;
    *hi = 0xBF;
    if (len - cut == 1) { /* only the lead so far: it narrows the second byte */
        if (lead == 0xE0)
            *lo = 0xA0;
        else if (lead == 0xED)
            *hi = 0x9F;
        else if (lead == 0xF0)
            *lo = 0x90;
        else if (lead == 0xF4)
            *hi = 0x8F;
    }
    return true;
}

/* EXTRACT: may token t come next without making the output invalid UTF-8? The JSON grammar
 * checks characters, not byte sequences, so byte-fallback tokens are checked here. */
static bool utf8_allows(const struct tg_engine *e, bool pending, unsigned char lo,
                        unsigned char hi, llama_token t)
{
    int b = e->tok_byte[t];
    if (pending)
        return b >= lo && b <= hi;
    return b < 0 || (b >= 0xC2 && b <= 0xF4);
}

/* Sample from row idx of the last decode. With a grammar, it masks the candidates first;
 * *logp_step gets log p(token) under softmax(logits) restricted to the admitted tokens. */
static llama_token slot_sample(struct tg_engine *e, struct slot *s, int32_t idx,
                               double *logp_step)
{
    const float *logits = llama_get_logits_ith(e->ctx, idx);
    struct job *j = s->job;
    if (!logits)
        return LLAMA_TOKEN_NULL; /* llama.cpp logged why; the job fails, the process lives */
    if (j->greedy && !j->grammar) {
        /* The greedy chain keeps no state: an argmax over the logits is the same token
         * without building the candidate array. */
        llama_token best = 0;
        for (int32_t t = 1; t < e->n_vocab; t++)
            if (logits[t] > logits[best])
                best = t;
        return best;
    }
    for (int32_t t = 0; t < e->n_vocab; t++)
        s->cand[t] = (llama_token_data){t, logits[t], 0.0f};
    llama_token_data_array arr = {s->cand, (size_t)e->n_vocab, -1, false};
    unsigned char u_lo = 0, u_hi = 0;
    bool u_pending = false;
    if (j->kind == TG_JOB_EXTRACT) {
        u_pending = utf8_pending(&s->out, &u_lo, &u_hi);
        if (u_pending) {
            for (int32_t t = 0; t < e->n_vocab; t++)
                if (!utf8_allows(e, true, u_lo, u_hi, t))
                    s->cand[t].logit = -INFINITY;
        } else {
            for (int32_t k = 0; k < e->n_byte_toks; k++)
                if (!utf8_allows(e, false, 0, 0, e->byte_toks[k]))
                    s->cand[e->byte_toks[k]].logit = -INFINITY;
        }
    }
    if (j->grammar && j->kind != TG_JOB_CLASSIFY) {
        /* Masking the whole vocabulary with a grammar costs more than the decode step of a
         * small model. Like llama-server, sample unconstrained first and keep the token when
         * the grammar admits it (exact for greedy; a model that follows the format rarely
         * needs the slow path); otherwise mask everything and sample again. CLASSIFY always
         * masks: its confidence needs the masked distribution. */
        llama_sampler_apply(j->chain, &arr);
        if (arr.selected >= 0 && (size_t)arr.selected < arr.size) {
            llama_token tok = arr.data[arr.selected].id;
            llama_token_data one = {tok, 1.0f, 0.0f};
            llama_token_data_array a1 = {&one, 1, -1, false};
            if (j->kind == TG_JOB_EXTRACT && !utf8_allows(e, u_pending, u_lo, u_hi, tok))
                one.logit = -INFINITY;
            else
                llama_sampler_apply(j->grammar, &a1);
            if (isfinite(one.logit)) {
                llama_sampler_accept(j->grammar, tok);
                llama_sampler_accept(j->chain, tok);
                return tok;
            }
        }
        for (int32_t t = 0; t < e->n_vocab; t++)
            s->cand[t] = (llama_token_data){
                t, j->kind == TG_JOB_EXTRACT && !utf8_allows(e, u_pending, u_lo, u_hi, t)
                       ? -INFINITY
                       : logits[t],
                0.0f};
        arr = (llama_token_data_array){s->cand, (size_t)e->n_vocab, -1, false};
    }
    if (j->grammar)
        llama_sampler_apply(j->grammar, &arr);
    if (j->kind == TG_JOB_CLASSIFY) {
        float mx = -INFINITY;
        for (size_t k = 0; k < arr.size; k++)
            if (arr.data[k].logit > mx)
                mx = arr.data[k].logit;
        double sum = 0;
        for (size_t k = 0; k < arr.size; k++)
            if (isfinite(arr.data[k].logit))
                sum += exp((double)arr.data[k].logit - mx);
        *logp_step = -log(sum) - mx; /* + logit of the chosen token, added below */
    }
    llama_sampler_apply(j->chain, &arr);
    if (arr.selected < 0 || (size_t)arr.selected >= arr.size)
        return LLAMA_TOKEN_NULL;
    llama_token tok = arr.data[arr.selected].id;
    if (j->kind == TG_JOB_CLASSIFY)
        *logp_step += logits[tok];
    if (j->grammar)
        llama_sampler_accept(j->grammar, tok);
    llama_sampler_accept(j->chain, tok);
    return tok;
}

/* Handle one sampled token; false when the job finished (slot released). */
static bool slot_on_token(struct tg_engine *e, struct slot *s, llama_token tok)
{
    struct job *j = s->job;
    s->n_gen++;
    if (s->t_first_ms == 0)
        s->t_first_ms = now_ms();
    if (llama_vocab_is_eog(e->vocab, tok)) {
        slot_finish(e, s, "stop");
        return false;
    }
    char piece[256];
    int32_t n = llama_token_to_piece(e->vocab, tok, piece, sizeof piece, 0, false);
    if (n < 0) {
        slot_fail(e, s, TG_INTERNAL, "token text longer than 256 bytes");
        return false;
    }
    if (n > 0 && tg_buf_append(&s->out, piece, (size_t)n) != TG_OK) {
        slot_fail(e, s, TG_NOMEM, "out of memory for the generated text");
        return false;
    }
    if (j->n_stop > 0) {
        size_t at = tg_engine_find_stop(s->out.data, s->out.len, s->searched, j->stop, j->n_stop);
        if (at != (size_t)-1) {
            s->out.len = at; /* the stop string is not part of the output */
            s->out.data[at] = '\0';
            slot_finish(e, s, "stop");
            return false;
        }
        s->searched = s->out.len;
    }
    if (s->n_gen >= j->max_tokens || s->n_past + 1 >= e->n_ctx_seq) {
        slot_finish(e, s, "length");
        return false;
    }
    if (j->stream) {
        size_t safe = s->out.len - tg_engine_stop_holdback(s->out.data, s->out.len, j->stop,
                                                           j->n_stop);
        safe = tg_engine_utf8_complete_len(s->out.data, safe);
        slot_emit(s, safe);
    }
    s->pending = tok;
    s->state = SLOT_GEN;
    return true;
}

static void embed_run(struct tg_engine *e, struct job *j)
{
    llama_memory_clear(llama_get_memory(e->ectx), true);
    e->ebatch.n_tokens = 0;
    for (int32_t i = 0; i < j->n_tokens; i++)
        batch_add(&e->ebatch, j->tokens[i], i, 0, true);
    int32_t rc = llama_decode(e->ectx, e->ebatch);
    if (rc != 0) {
        deliver_error(j, TG_MODEL, "llama_decode failed on the embedding context (%d)", rc);
        return;
    }
    const float *v = llama_get_embeddings_seq(e->ectx, 0);
    if (!v) {
        deliver_error(j, TG_MODEL, "the model produced no pooled embedding");
        return;
    }
    int32_t n = e->info.n_embd;
    float *out = malloc(sizeof *out * (size_t)n);
    if (!out) {
        deliver_error(j, TG_NOMEM, "out of memory");
        return;
    }
    double ss = 0;
    for (int32_t i = 0; i < n; i++)
        ss += (double)v[i] * v[i];
    double inv = ss > 0 ? 1.0 / sqrt(ss) : 0.0;
    for (int32_t i = 0; i < n; i++)
        out[i] = (float)(v[i] * inv);
    struct tg_engine_event ev;
    ev_init(&ev, TG_EV_DONE, j->id);
    ev.finish_reason = "stop";
    ev.usage.prompt_tokens = j->n_tokens;
    ev.embedding = out;
    ev.n_embd = n;
    ev.total_ms = now_ms() - j->t_submit_ms;
    ev.ttft_ms = ev.total_ms;
    j->cb(&ev, j->user);
    free(out);
}

/* Build the next batch: one token per generating slot, then prompt chunks, oldest job
 * first, up to n_batch tokens. Returns the number of prompt tokens added.
 *
 * Rows go into the batch in sequence-id order (slot i is seq i). With kv_split, llama.cpp
 * cuts a batch into ubatches of sequences with consecutive ids, met in batch order
 * (llama_batch_allocr::split_equal, sequential), and every ubatch is one graph pass over all
 * the weights. So, in split mode, every slot between the lowest and the highest one in the
 * batch is put in it too: a slot still prefilling adds its next prompt token (progress it
 * needed anyway); an idle slot adds a padding row (pad_pos) at the end of its kept prefix,
 * with no logits, removed again after the decode (unpad). One more row costs a fraction of
 * a pass: decode on CPU is bound by reading the weights, once per ubatch, not per row
 * (bench-engine-gaps: three streams around an idle slot vs three adjacent ones). */
static int32_t build_batch(struct tg_engine *e, int32_t *n_gen_tokens)
{
    struct llama_batch *b = &e->batch;
    b->n_tokens = 0;
    *n_gen_tokens = 0;
    int32_t n_rows = 0;
    e->step_gap_rows = 0;
    for (int32_t i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        s->batch_idx = -1;
        s->n_in_batch = 0;
        s->pad_pos = -1;
        if (s->job && s->state == SLOT_GEN) {
            s->n_in_batch = 1;
            (*n_gen_tokens)++;
            n_rows++;
        }
    }
    /* Split mode keeps room for the filler rows (at most n_slots - 2: the lowest and highest
     * slots in the batch are in it already) where n_batch has that room beyond the slots. */
    int32_t reserve = e->split ? e->n_slots - 2 : 0;
    if (reserve > e->n_batch - e->n_slots)
        reserve = e->n_batch - e->n_slots;
    int32_t limit = e->n_batch - (reserve > 0 ? reserve : 0);
    int32_t n_prompt = 0;
    for (;;) {
        int32_t budget = limit - n_rows;
        if (budget <= 0)
            break;
        struct slot *pick = NULL;
        for (int32_t i = 0; i < e->n_slots; i++) {
            struct slot *s = &e->slots[i];
            if (s->job && s->state == SLOT_PREFILL && s->n_in_batch == 0 &&
                (!pick || s->job->id < pick->job->id))
                pick = s;
        }
        if (!pick)
            break;
        int32_t left = pick->job->n_tokens - pick->n_past;
        pick->n_in_batch = left < budget ? left : budget;
        n_rows += pick->n_in_batch;
        n_prompt += pick->n_in_batch;
    }
    if (e->split && n_rows > 0) {
        int32_t lo = -1, hi = -1;
        for (int32_t i = 0; i < e->n_slots; i++) {
            if (e->slots[i].n_in_batch > 0) {
                lo = lo < 0 ? i : lo;
                hi = i;
            }
        }
        for (int32_t i = lo + 1; i < hi && n_rows < e->n_batch; i++) {
            struct slot *s = &e->slots[i];
            if (s->n_in_batch > 0)
                continue;
            if (s->job && s->state == SLOT_PREFILL) {
                s->n_in_batch = 1;
                n_prompt++;
                n_rows++;
                e->step_gap_rows++;
            } else if (!s->job) {
                /* An idle stream holds exactly its kept prefix, positions 0..n-1; a full
                 * one has no cell for the row and stays out (the gap is paid). */
                llama_pos next = llama_memory_seq_pos_max(e->mem, s->seq) + 1;
                if (next < e->n_ctx_seq) {
                    s->pad_pos = next;
                    n_rows++;
                    e->step_gap_rows++;
                }
            }
        }
    }
    for (int32_t i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (s->pad_pos >= 0) {
            batch_add(b, 0, s->pad_pos, s->seq, false);
            continue;
        }
        if (s->n_in_batch == 0)
            continue;
        if (s->state == SLOT_GEN) {
            s->batch_idx = b->n_tokens;
            batch_add(b, s->pending, s->n_past, s->seq, true);
            continue;
        }
        struct job *j = s->job;
        for (int32_t k = 0; k < s->n_in_batch; k++) {
            int32_t pos = s->n_past + k;
            bool last = pos == j->n_tokens - 1;
            if (last)
                s->batch_idx = b->n_tokens;
            batch_add(b, j->tokens[pos], pos, s->seq, last);
        }
    }
    return n_prompt;
}

/* After a decode: drop the padding rows build_batch put in idle slots' streams, leaving
 * their kept prefixes as they were. */
static void unpad(struct tg_engine *e)
{
    for (int32_t i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (s->pad_pos >= 0) {
            llama_memory_seq_rm(e->mem, s->seq, s->pad_pos, -1);
            s->pad_pos = -1;
        }
    }
}

static struct slot *newest_in_batch(struct tg_engine *e)
{
    struct slot *n = NULL;
    for (int32_t i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (s->job && s->n_in_batch > 0 && (!n || s->job->id > n->job->id))
            n = s;
    }
    return n;
}

/* One decode step over the running slots; returns the batch rows decoded. */
static int32_t step(struct tg_engine *e)
{
    int32_t n_gen_tokens;
    int32_t n_prompt = build_batch(e, &n_gen_tokens);
    if (e->batch.n_tokens == 0)
        return 0;
    double t0 = now_ms();
    int32_t rc = llama_decode(e->ctx, e->batch);
    while (rc == 1 && pcache_evict_lru(e))
        rc = llama_decode(e->ctx, e->batch);
    unpad(e);
    if (rc == 1) {
        /* No KV room even without cached prefixes: the newest job gives way. */
        struct slot *s = newest_in_batch(e);
        char msg[256];
        snprintf(msg, sizeof msg,
                 "KV cache full: %d cells (n_ctx) are used by the running jobs; this job "
                 "needed %d more tokens",
                 e->n_ctx, s->n_in_batch);
        slot_fail(e, s, TG_CONTEXT, msg);
        return 0;
    }
    if (rc != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "llama_decode failed (%d)", rc);
        tg_error("engine: %s; failing the %d job(s) in the batch", msg, e->batch.n_tokens);
        for (int32_t i = 0; i < e->n_slots; i++) {
            struct slot *s = &e->slots[i];
            if (s->job && s->n_in_batch > 0)
                slot_fail(e, s, TG_MODEL, msg);
        }
        return 0;
    }
    double dt = now_ms() - t0;

    int32_t sampled = 0;
    for (int32_t i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (!s->job || s->n_in_batch == 0)
            continue;
        s->n_past += s->n_in_batch;
        if (s->state == SLOT_PREFILL && s->n_past == s->job->n_tokens && !e->split)
            pcache_insert(e, s);
        if (s->batch_idx < 0)
            continue; /* prompt chunk without its last token yet */
        double lp = 0;
        llama_token tok = slot_sample(e, s, s->batch_idx, &lp);
        if (tok == LLAMA_TOKEN_NULL) {
            slot_fail(e, s, TG_INTERNAL, "no logits or no token selected for this step");
            continue;
        }
        s->logp += lp;
        sampled++;
        slot_on_token(e, s, tok);
    }

    pthread_mutex_lock(&e->mu);
    e->tokens_generated += (uint64_t)sampled;
    e->gap_rows += (uint64_t)e->step_gap_rows;
    if (dt > 0) {
        if (n_prompt == 0 && n_gen_tokens > 0) {
            double tps = n_gen_tokens * 1000.0 / dt;
            e->tps_ewma = e->tps_ewma == 0 ? tps : 0.9 * e->tps_ewma + 0.1 * tps;
        } else if (n_prompt > 0) {
            double tps = n_prompt * 1000.0 / dt;
            e->prefill_tps_ewma =
                e->prefill_tps_ewma == 0 ? tps : 0.9 * e->prefill_tps_ewma + 0.1 * tps;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return n_prompt + n_gen_tokens;
}

static void fail_all(struct tg_engine *e)
{
    pthread_mutex_lock(&e->mu);
    struct job *lists[3] = {e->q_head, e->eq_head, e->cancelled};
    e->q_head = e->q_tail = e->eq_head = e->eq_tail = e->cancelled = NULL;
    e->q_len = e->eq_len = 0;
    pthread_mutex_unlock(&e->mu);
    for (int32_t i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        if (s->job)
            slot_fail(e, s, TG_CLOSED, "engine is shutting down");
    }
    for (int k = 0; k < 3; k++) {
        for (struct job *j = lists[k], *next; j; j = next) {
            next = j->next;
            count_done(e);
            if (k == 2)
                deliver_cancelled_queued(j);
            else
                deliver_error(j, TG_CLOSED, "engine is shutting down");
            job_free(j);
        }
    }
}

static void *engine_main(void *arg)
{
    struct tg_engine *e = arg;
    for (;;) {
        struct slot *cancelled_slots[MAX_SLOTS];
        int32_t n_cancelled = 0;
        struct slot *started[MAX_SLOTS];
        int32_t n_started = 0;

        pthread_mutex_lock(&e->mu);
        for (;;) {
            bool active = false;
            for (int32_t i = 0; i < e->n_slots && !active; i++)
                active = e->slots[i].job != NULL;
            if (e->stopping || active || e->q_head || e->eq_head || e->cancelled)
                break;
            pthread_cond_wait(&e->cv, &e->mu);
        }
        if (e->stopping) {
            pthread_mutex_unlock(&e->mu);
            break;
        }
        struct job *cq = e->cancelled;
        e->cancelled = NULL;
        struct job *ej = e->eq_head;
        if (ej) {
            e->eq_head = ej->next;
            if (!e->eq_head)
                e->eq_tail = NULL;
            e->eq_len--;
            ej->next = NULL;
        }
        for (int32_t i = 0; i < e->n_slots; i++) {
            struct slot *s = &e->slots[i];
            if (s->job && s->job->cancelled)
                cancelled_slots[n_cancelled++] = s;
        }
        for (int32_t i = 0; i < e->n_slots && e->q_head; i++) {
            struct slot *s = &e->slots[i];
            if (s->job)
                continue;
            struct job *j = e->q_head;
            if (e->split && e->pc_on) {
                /* The idle slot that already holds its prefix; slot i, if passed over,
                 * is looked at again. */
                s = split_pick_slot(e, j);
                if (s != &e->slots[i])
                    i--;
            }
            e->q_head = j->next;
            if (!e->q_head)
                e->q_tail = NULL;
            e->q_len--;
            j->next = NULL;
            s->job = j;
            started[n_started++] = s;
        }
        pthread_mutex_unlock(&e->mu);

        for (struct job *j = cq, *next; j; j = next) {
            next = j->next;
            count_done(e);
            deliver_cancelled_queued(j);
            job_free(j);
        }
        for (int32_t i = 0; i < n_cancelled; i++)
            slot_finish(e, cancelled_slots[i], "cancelled");
        for (int32_t i = 0; i < n_started; i++)
            slot_start(e, started[i]);
        if (ej) {
            count_done(e); /* counted before its final event, like the others */
            embed_run(e, ej);
            job_free(ej);
        }
        pcache_mark_idle(e);
        int32_t rows = step(e);
        /* After the step, not before: a hit job's first token does not wait for it. */
        pcache_spill_idle(e, rows);
    }
    fail_all(e);
    return NULL;
}

/* ---------------------------------------------------------------- create / destroy */

static void engine_free(struct tg_engine *e)
{
    for (int32_t i = 0; i < MAX_SLOTS; i++) {
        free(e->slots[i].cand);
        free(e->slots[i].kept);
        tg_buf_free(&e->slots[i].out);
    }
    if (e->pc) {
        for (int32_t i = 0; i < e->n_pc; i++) {
            free(e->pc[i].tokens);
            free(e->pc[i].blob);
        }
        free(e->pc);
    }
    free(e->tok_byte);
    free(e->byte_toks);
    if (e->batch.token)
        llama_batch_free(e->batch);
    if (e->ebatch.token)
        llama_batch_free(e->ebatch);
    if (e->ectx)
        llama_free(e->ectx);
    if (e->ctx)
        llama_free(e->ctx);
    if (e->model)
        llama_model_free(e->model);
    free(e->model_path);
    free(e->kv_type);
    free(e);
}

static void fill_info(struct tg_engine *e)
{
    struct tg_engine_info *in = &e->info;
    memset(in, 0, sizeof *in);
    llama_model_desc(e->model, in->model_desc, sizeof in->model_desc);
    if (llama_model_meta_val_str(e->model, "general.name", in->model_name,
                                 sizeof in->model_name) < 0) {
        const char *base = strrchr(e->model_path, '/');
        snprintf(in->model_name, sizeof in->model_name, "%s", base ? base + 1 : e->model_path);
    }
    char rw[16];
    in->random_weights = llama_model_meta_val_str(e->model, "tiergate.random_weights", rw,
                                                  sizeof rw) > 0 &&
                         strcmp(rw, "true") == 0;
    in->n_params = llama_model_n_params(e->model);
    in->model_bytes = llama_model_size(e->model);
    in->n_ctx = e->n_ctx;
    in->n_ctx_seq = e->n_ctx_seq;
    in->kv_split = e->split;
    in->prefix_cache_spill_bytes = e->spill_budget > 0 ? e->spill_budget : 0;
    in->n_ctx_train = llama_model_n_ctx_train(e->model);
    in->n_slots = e->n_slots;
    in->n_embd = llama_model_n_embd(e->model);
    in->n_vocab = e->n_vocab;
    in->embeddings = e->ectx != NULL;
}

struct load_progress {
    void (*fn)(float progress, void *user);
    void *user;
};

/* llama.cpp's loader callback; returning true keeps loading. */
static bool on_load_progress(float progress, void *user)
{
    const struct load_progress *lp = user;
    lp->fn(progress, lp->user);
    return true;
}

int tg_engine_create(const struct tg_engine_params *pin, struct tg_engine **out, char *err,
                     size_t errlen)
{
    if (!pin || !out || !pin->model_path || !pin->model_path[0]) {
        errf(err, errlen, "engine: model_path is required");
        return TG_INVAL;
    }
    struct tg_engine_params p = *pin;
    struct tg_engine_params d = tg_engine_default_params();
    if (p.n_ctx == 0)
        p.n_ctx = d.n_ctx;
    if (p.n_slots == 0)
        p.n_slots = d.n_slots;
    if (p.n_batch == 0)
        p.n_batch = d.n_batch;
    if (p.queue_max == 0)
        p.queue_max = d.queue_max;
    if (p.prefix_cache_entries == 0)
        p.prefix_cache_entries = d.prefix_cache_entries;
    if (p.prefix_cache_entries < 0)
        p.prefix_cache_entries = 0;
    /* Sequences: one per slot, plus (unified) one per prefix-cache entry; with kv_split the
     * entries live in the slots' own streams and in host memory. */
    int32_t n_seqs = p.n_slots + (p.kv_split ? 0 : p.prefix_cache_entries);
    if (p.prefix_cache_min_tokens <= 0)
        p.prefix_cache_min_tokens = d.prefix_cache_min_tokens;
    if (p.embed_ctx == 0)
        p.embed_ctx = d.embed_ctx;
    if (p.n_threads <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        p.n_threads = nc > 0 ? (int32_t)nc : 1;
    }
    /* Every running stream needs its token in each step, and llama.cpp reserves one output
     * row per sequence (GGML_ASSERT in output_reserve otherwise). */
    if (p.n_batch > p.n_ctx)
        p.n_batch = p.n_ctx; /* llama.cpp clamps it the same way */
    if (p.n_batch > 0 && p.n_batch < n_seqs)
        p.n_batch = n_seqs;
    enum ggml_type kvt;
    if (p.n_slots < 1 || p.n_slots > MAX_SLOTS || p.n_ctx < 16 || p.n_batch < 1 ||
        p.n_ctx < n_seqs || p.prefix_cache_spill_bytes < -1 ||
        p.queue_max < 0 || p.prefix_cache_entries > 256 - MAX_SLOTS || p.embed_ctx < -1) {
        errf(err, errlen,
             "engine: bad parameters (n_slots 1..%d, n_ctx >= 16 and >= n_slots + "
             "prefix_cache_entries, n_batch >= 1, prefix_cache_entries <= %d, "
             "prefix_cache_spill_bytes >= -1)",
             MAX_SLOTS, 256 - MAX_SLOTS);
        return TG_INVAL;
    }
    if (kv_type_parse(p.kv_cache_type, &kvt) != TG_OK) {
        errf(err, errlen, "engine: unknown kv_cache_type '%s' (f16, q8_0 or q4_0)",
             p.kv_cache_type);
        return TG_INVAL;
    }

    /* A clear message for the common mistake, before llama.cpp's own. */
    int fd = open(p.model_path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) {
        errf(err, errlen, "engine: cannot open model file '%s': %s", p.model_path,
             strerror(errno));
        return TG_IO;
    }
    close(fd);

    g_backend_dir = p.backend_dir ? p.backend_dir : TG_LLAMA_BACKEND_DIR;
    pthread_once(&g_once, global_init);

    struct tg_engine *e = calloc(1, sizeof *e);
    if (!e)
        goto nomem;
    e->model_path = strdup(p.model_path);
    e->kv_type = strdup(p.kv_cache_type ? p.kv_cache_type : "f16");
    if (!e->model_path || !e->kv_type)
        goto nomem;
    p.model_path = e->model_path;
    p.kv_cache_type = e->kv_type;
    p.backend_dir = NULL;
    e->p = p;
    e->n_slots = p.n_slots;
    e->n_batch = p.n_batch;
    e->n_pc = p.prefix_cache_entries;
    e->pc_on = e->n_pc > 0;
    e->split = p.kv_split;
    e->spill_budget = p.prefix_cache_spill_bytes > 0 ? p.prefix_cache_spill_bytes : -1;

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = p.n_gpu_layers;
    struct load_progress lp = {p.load_progress, p.load_progress_user};
    if (p.load_progress != NULL) {
        mp.progress_callback = on_load_progress;
        mp.progress_callback_user_data = &lp;
    }
    tls_llama_err[0] = '\0';
    double t0 = now_ms();
    e->model = llama_model_load_from_file(p.model_path, mp);
    if (!e->model) {
        errf(err, errlen, "engine: llama.cpp could not load model '%s'%s%s", p.model_path,
             tls_llama_err[0] ? ": " : " (not a GGUF model?)", tls_llama_err);
        engine_free(e);
        return TG_MODEL;
    }
    e->vocab = llama_model_get_vocab(e->model);
    e->n_vocab = llama_vocab_n_tokens(e->vocab);
    e->tok_byte = malloc(sizeof *e->tok_byte * (size_t)e->n_vocab);
    e->byte_toks = malloc(sizeof *e->byte_toks * 256);
    if (!e->tok_byte || !e->byte_toks)
        goto nomem;
    for (int32_t t = 0; t < e->n_vocab; t++) {
        /* Ordinary tokens are whole UTF-8 characters; a piece that is one byte >= 0x80 is a
         * byte-fallback token (SPM <0xNN>), the only way to emit a partial character. */
        char pc[8];
        int32_t n = llama_token_to_piece(e->vocab, t, pc, sizeof pc, 0, false);
        e->tok_byte[t] = -1;
        if (n == 1 && (unsigned char)pc[0] >= 0x80 && e->n_byte_toks < 256) {
            e->tok_byte[t] = (int16_t)(unsigned char)pc[0];
            e->byte_toks[e->n_byte_toks++] = t;
        }
    }
    e->tmpl = llama_model_chat_template(e->model, NULL);
    if (!e->tmpl)
        e->tmpl = "chatml"; /* the model brings no template: llama.cpp's generic one */

    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)p.n_ctx;
    cp.n_batch = (uint32_t)p.n_batch;
    cp.n_ubatch = (uint32_t)p.n_batch;
    cp.n_seq_max = (uint32_t)n_seqs;
    cp.n_threads = p.n_threads;
    cp.n_threads_batch = p.n_threads;
    /* Unified: prefix copies are metadata only and a job may use all of n_ctx. Split: each
     * slot attends over its own slice only, cheaper with many streams. */
    cp.kv_unified = !p.kv_split;
    cp.type_k = kvt;
    cp.type_v = kvt;
    if (kvt != GGML_TYPE_F16)
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED; /* quantized V needs it */
    cp.no_perf = true;
    e->ctx = llama_init_from_model(e->model, cp);
    if (!e->ctx) {
        errf(err, errlen, "engine: could not create a context (n_ctx %d, %d sequences)%s%s",
             p.n_ctx, n_seqs, tls_llama_err[0] ? ": " : "", tls_llama_err);
        engine_free(e);
        return TG_MODEL;
    }
    e->mem = llama_get_memory(e->ctx);
    e->n_ctx = (int32_t)llama_n_ctx(e->ctx);
    e->n_ctx_seq = (int32_t)llama_n_ctx_seq(e->ctx); /* n_ctx, or its per-slot slice */
    if (e->split && p.prefix_cache_spill_bytes == 0) {
        /* Split mode's default host budget: as many bytes as the KV cache itself, i.e. room
         * for about as many prefixes again as the slots hold. A copy costs about as much
         * as the slot's own prefill of a few dozen tokens and is made only when a slot is
         * taken for an unrelated prompt, so it is cheap where prefixes repeat and it bounds
         * the process to at most twice the KV memory the operator already sized. */
        int32_t n_layer = llama_model_n_layer(e->model);
        int32_t n_head = llama_model_n_head(e->model);
        int32_t n_head_kv = llama_model_n_head_kv(e->model);
        int64_t n_embd_kv = n_head > 0 ? (int64_t)llama_model_n_embd(e->model) / n_head *
                                             (n_head_kv > 0 ? n_head_kv : n_head)
                                       : llama_model_n_embd(e->model);
        int64_t per_cell = (int64_t)n_layer * 2 * (int64_t)ggml_row_size(kvt, n_embd_kv);
        e->spill_budget = per_cell * e->n_ctx;
        if (e->spill_budget <= 0)
            e->spill_budget = -1;
    }
    e->batch = llama_batch_init(p.n_batch, 0, 1);

    if (p.embed_ctx > 0) {
        struct llama_context_params ep = llama_context_default_params();
        ep.n_ctx = (uint32_t)p.embed_ctx;
        ep.n_batch = (uint32_t)p.embed_ctx;
        ep.n_ubatch = (uint32_t)p.embed_ctx;
        ep.n_seq_max = 1;
        ep.n_threads = p.n_threads;
        ep.n_threads_batch = p.n_threads;
        ep.embeddings = true;
        ep.pooling_type = LLAMA_POOLING_TYPE_MEAN;
        ep.no_perf = true;
        e->ectx = llama_init_from_model(e->model, ep);
        if (!e->ectx) {
            errf(err, errlen, "engine: could not create the embedding context (%d tokens)%s%s",
                 p.embed_ctx, tls_llama_err[0] ? ": " : "", tls_llama_err);
            engine_free(e);
            return TG_MODEL;
        }
        e->embed_ctx = (int32_t)llama_n_ctx(e->ectx);
        if (e->embed_ctx > p.embed_ctx)
            e->embed_ctx = p.embed_ctx;
        e->ebatch = llama_batch_init(e->embed_ctx, 0, 1);
    }

    if (e->n_pc > 0) {
        e->pc = calloc((size_t)e->n_pc, sizeof *e->pc);
        if (!e->pc)
            goto nomem;
        for (int32_t i = 0; i < e->n_pc; i++)
            e->pc[i].seq = e->split ? -1 : e->n_slots + i; /* split: host memory only */
    }
    for (int32_t i = 0; i < e->n_slots; i++) {
        struct slot *s = &e->slots[i];
        s->seq = i;
        tg_buf_init(&s->out, 0);
        s->cand = malloc(sizeof *s->cand * (size_t)e->n_vocab);
        if (!s->cand)
            goto nomem;
    }
    fill_info(e);

    if (pthread_mutex_init(&e->mu, NULL) != 0)
        goto nomem;
    if (pthread_cond_init(&e->cv, NULL) != 0) {
        pthread_mutex_destroy(&e->mu);
        goto nomem;
    }
    int prc = pthread_create(&e->thread, NULL, engine_main, e);
    if (prc != 0) {
        pthread_cond_destroy(&e->cv);
        pthread_mutex_destroy(&e->mu);
        errf(err, errlen, "engine: cannot start the scheduler thread: %s", strerror(prc));
        engine_free(e);
        return TG_INTERNAL;
    }
    pthread_setname_np(e->thread, "tg-engine");
    tg_info("engine: %s (%s, %.1fM params%s) loaded in %.0f ms; n_ctx %d, %d slots, "
            "%d prefix-cache entries, %d threads, kv %s%s",
            e->info.model_name, e->info.model_desc, e->info.n_params / 1e6,
            e->info.random_weights ? ", random weights" : "", now_ms() - t0, e->n_ctx,
            e->n_slots, e->n_pc, p.n_threads, e->kv_type, p.kv_split ? " split" : "");
    *out = e;
    return TG_OK;

nomem:
    errf(err, errlen, "engine: out of memory");
    if (e)
        engine_free(e);
    return TG_NOMEM;
}

void tg_engine_destroy(struct tg_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->stopping = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    int rc = pthread_join(e->thread, NULL);
    if (rc != 0)
        tg_error("engine: pthread_join: %s", strerror(rc));
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    engine_free(e);
}
