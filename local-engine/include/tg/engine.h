/* tiergate local engine: an embedded llama.cpp model served by one scheduler thread.
 *
 * One engine = one loaded GGUF model + one llama_context with n_slots sequences decoded
 * together (continuous batching: jobs join and leave between decode steps; long prompts are
 * prefilled in chunks of n_batch tokens so running streams keep flowing), a bounded queue in
 * front of the slots, an LRU prefix cache of prompt KV (a hit gives the same tokens as a cold
 * run; see kv_split for the two layouts), and a small second context for pooled
 * embeddings.
 *
 * Threads
 *   - tg_engine_create() starts one scheduler thread; every llama.cpp call on the context
 *     happens there. Every callback (tg_engine_event_cb) runs on that thread.
 *   - tg_engine_submit(), tg_engine_cancel(), tg_engine_stats() and tg_engine_info() are
 *     thread-safe and may be called from any thread, including from inside a callback.
 *   - tg_engine_destroy() must not be called from a callback (it joins the thread).
 *
 * Async contract (libuv style)
 *   If tg_engine_submit() returns an error, the callback never runs for that job. Otherwise
 *   the callback runs zero or more times with TG_EV_TOKEN (only when job->stream) and then
 *   exactly once with TG_EV_DONE or TG_EV_ERROR, always on the scheduler thread. After the
 *   final event the engine never touches `user` again. Event pointers (text, label_idx,
 *   embedding, message) are valid only during the callback: copy what you keep.
 *
 * Errors are enum tg_err values (tg/err.h); error events also carry a readable message.
 */
#ifndef TG_ENGINE_H
#define TG_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tg_engine;

/* Creation parameters, by value. Start from tg_engine_default_params(). */
struct tg_engine_params {
    const char *model_path;       /* GGUF file; required; copied */
    int32_t n_ctx;                /* KV cache cells (tokens); 0 = 4096. With kv_split (the
                                     default) each slot gets n_ctx / n_slots of them and one
                                     job's prompt + output must fit there; unified, the
                                     slots and the prefix cache share all n_ctx. */
    int32_t n_slots;              /* sequences decoded together; 0 = 4; max 64 */
    int32_t n_threads;            /* CPU threads for decode and prefill; 0 = online cores */
    int32_t n_gpu_layers;         /* layers offloaded to a GPU backend; 0 = CPU only,
                                     -1 = all */
    const char *kv_cache_type;    /* "f16" (NULL/default), "q8_0" or "q4_0"; quantized K/V
                                     turns flash attention on */
    int32_t n_batch;              /* tokens per decode step (prefill chunk + one per running
                                     stream); 0 = 512; raised to n_slots +
                                     prefix_cache_entries if smaller */
    int32_t queue_max;            /* jobs waiting for a slot before submit says TG_BUSY;
                                     0 = 64 */
    int32_t prefix_cache_entries; /* cached prompt prefixes (LRU); 0 = 8; -1 = no cache.
                                     kv_split: entries in host memory, beside the one
                                     prompt each idle slot keeps */
    int32_t prefix_cache_min_tokens; /* shortest prompt worth caching, tokens; 0 = 32 */
    int64_t prefix_cache_spill_bytes; /* host memory for cached prefixes, bytes; -1 = none.
                                     kv_split: 0 (default) = as many bytes as the KV cache
                                     (tg_engine_info says how many; at most twice the KV
                                     memory sized by n_ctx, where llama-server's
                                     --cache-ram is a flat 8 GiB): a slot taken for an
                                     unrelated prompt first copies the prompt it kept here
                                     (llama_state_seq_get_data), and a later hit restores
                                     it into its slot (bit-exact); over the budget or
                                     prefix_cache_entries, least recently used first.
                                     Unified: for prefixes no running job shares; 0
                                     (default) = off: entries stay in the KV cache.
                                     llama.cpp attends over every KV cell up
                                     to the highest one in use, so an idle entry left there
                                     costs every decoded token a (masked) scan of its cells;
                                     with a budget, once jobs have decoded 256 tokens beside
                                     an idle entry it is copied out (llama_state_seq_get_data)
                                     and copied back on its next hit (bit-exact). Over the
                                     budget, the least recently used moved entries are
                                     dropped. Pays on small models with long parked
                                     prefixes; on a 3.8 B Q4_K_M model the copies cost more
                                     than the scans they save (bench/RESULTS.md). */
    int32_t embed_ctx;            /* longest embedding input, tokens; 0 = 512; -1 = no
                                     embedding context (TG_JOB_EMBED fails TG_UNSUPPORTED) */
    const char *backend_dir;      /* ggml backend libraries; NULL = build-time default
                                     (TG_LLAMA_BACKEND_DIR), "" = statically linked */
    bool kv_split;                /* true (default) or false.
                                     false: one unified KV cache; any job may use all n_ctx
                                     cells; prefix-cache entries are extra sequences sharing
                                     cells with the jobs that hit them (llama_memory_seq_cp).
                                     true: each slot gets its own n_ctx / n_slots cells (a
                                     job's prompt + output must fit there, else TG_CONTEXT
                                     naming both sizes) and attends over them only, which is
                                     faster with many concurrent streams (llama-server's
                                     layout with -np N; the engine pads the gaps between busy
                                     slots so a step stays one pass over the weights:
                                     engine.c, top). Prefix cache as llama-server's:
                                     an idle slot keeps its last prompt's KV, a job goes to
                                     the idle slot sharing the longest prefix with it and
                                     prefills the rest, and prompts beyond the slots live in
                                     host memory (prefix_cache_spill_bytes). */
    /* Model-load progress, 0.0 .. 1.0, called on the thread that calls tg_engine_create
     * (llama.cpp's progress_callback); NULL = none. For progress bars on large models. */
    void (*load_progress)(float progress, void *user);
    void *load_progress_user;
};

/* Defaults as documented per field above (model_path = NULL). */
struct tg_engine_params tg_engine_default_params(void);

/* Load the model and start the scheduler thread.
 * Returns TG_OK and sets *out, or:
 *   TG_INVAL  bad parameters (NULL model_path, n_slots out of range, unknown kv_cache_type)
 *   TG_IO     model file missing or unreadable (message names the path and errno text)
 *   TG_MODEL  llama.cpp could not load the model or create the context
 *   TG_NOMEM
 * and writes a NUL-terminated message into err (if errlen > 0). *out is written only on
 * success. The first call in the process loads the ggml backends (once, process-wide) and
 * routes llama.cpp's log to tg_log at debug level (its errors at warn level). */
int tg_engine_create(const struct tg_engine_params *p, struct tg_engine **out, char *err,
                     size_t errlen);

/* Stop the scheduler: queued and running jobs get TG_EV_ERROR with TG_CLOSED; joins the
 * thread; frees everything. NULL is a no-op. Never call it from a callback. */
void tg_engine_destroy(struct tg_engine *e);

struct tg_engine_info {
    char model_desc[128];  /* llama_model_desc(), e.g. "phi3 3B F16" */
    char model_name[128];  /* GGUF general.name, or the file's base name */
    uint64_t n_params;     /* parameters */
    uint64_t model_bytes;  /* size of the weights, bytes */
    int32_t n_ctx;         /* KV cells actually allocated */
    int32_t n_ctx_seq;     /* KV cells one job may use: n_ctx, or n_ctx / n_slots with
                              kv_split (a prompt + output must fit there) */
    bool kv_split;
    int64_t prefix_cache_spill_bytes; /* host-memory budget in effect, bytes; 0 = none */
    int32_t n_ctx_train;   /* context length the model was trained for */
    int32_t n_slots;
    int32_t n_embd;        /* embedding vector length (TG_JOB_EMBED) */
    int32_t n_vocab;
    bool random_weights;   /* GGUF key tiergate.random_weights is true (tg-make-model) */
    bool embeddings;       /* TG_JOB_EMBED available */
};

/* Static facts about the loaded model and context. Thread-safe. */
void tg_engine_info(const struct tg_engine *e, struct tg_engine_info *out);

enum tg_job_kind {
    TG_JOB_GENERATE, /* free text (or GBNF-constrained with job.grammar) */
    TG_JOB_CLASSIFY, /* one label (or a set with multi_label) from job.labels */
    TG_JOB_EXTRACT,  /* JSON that validates against job.schema_json */
    TG_JOB_EMBED,    /* pooled embedding of the prompt / messages' text */
};

struct tg_chat_msg {
    const char *role;    /* "system" | "user" | "assistant" */
    const char *content; /* UTF-8 */
};

/* A job. submit() copies everything it needs; the caller may free the job's memory as soon
 * as submit() returns. Zero-initialise and set what you need. */
struct tg_engine_job {
    enum tg_job_kind kind;
    /* Input: chat messages (formatted with the model's own chat template, generation prompt
     * appended), or a raw prompt (GENERATE: tokenized as is, special tokens parsed; CLASSIFY/
     * EXTRACT/EMBED: the text to work on, wrapped as one user message). messages wins when
     * n_messages > 0. */
    const struct tg_chat_msg *messages;
    size_t n_messages;
    const char *prompt;
    /* Sampling. temperature <= 0 = greedy (deterministic). top_p 0 or >= 1 = off;
     * top_k 0 = off. seed 0 = a fixed default (42) so runs repeat; results are repeatable
     * for a given seed whatever else runs in the batch. */
    float temperature;
    float top_p;
    int32_t top_k;
    uint32_t seed;
    int32_t max_tokens; /* completion tokens; 0 = as many as the context has room for
                           (n_ctx - prompt tokens); larger values are clamped to that */
    const char *const *stop; /* GENERATE: stop strings (not included in the output) */
    size_t n_stop;           /* at most 8, each at most 128 bytes */
    /* CLASSIFY */
    const char *const *labels; /* 1..256 distinct non-empty labels, each <= 256 bytes */
    size_t n_labels;
    bool multi_label;           /* answer is a set: a JSON array of labels, ["a","b"] */
    const char *instructions;   /* CLASSIFY/EXTRACT: task description for the system message;
                                   NULL = a generic one */
    /* EXTRACT */
    const char *schema_json; /* JSON Schema (tg/schema.h subset) */
    /* GENERATE */
    const char *grammar;     /* raw GBNF with a `root` rule; NULL = unconstrained */
    bool stream;             /* deliver TG_EV_TOKEN events */
};

struct tg_engine_usage {
    int32_t prompt_tokens;     /* tokens of the formatted prompt */
    int32_t completion_tokens; /* tokens sampled (including a final end-of-generation) */
    int32_t cached_tokens;     /* prompt tokens whose KV came from the prefix cache */
};

enum tg_engine_event_type { TG_EV_TOKEN, TG_EV_DONE, TG_EV_ERROR };

struct tg_engine_event {
    enum tg_engine_event_type type;
    uint64_t job_id;
    /* TOKEN: the next piece of output (always whole UTF-8 characters; never part of a stop
     * string). DONE: the whole output: text (GENERATE), the label, or the JSON array of
     * labels with multi_label (CLASSIFY), the JSON document (EXTRACT), "" (EMBED).
     * NUL-terminated too. */
    const char *text;
    size_t text_len;
    const char *finish_reason; /* DONE: "stop" | "length" | "cancelled" */
    struct tg_engine_usage usage;
    double ttft_ms;  /* DONE: submit → first sampled token, milliseconds */
    double total_ms; /* DONE: submit → done, milliseconds */
    /* CLASSIFY (DONE): indices into job.labels of the chosen label(s), and
     *   confidence = exp(sum_i log p_i), the product over the sampled tokens i (final
     *   end-of-generation included) of p_i = softmax(logits)[token_i] at temperature 1 over
     *   the tokens the label grammar admits at that step: the model's probability of this
     *   exact answer among the admissible answers, in (0, 1]. */
    const int32_t *label_idx;
    size_t n_label_idx;
    double confidence;
    /* EMBED (DONE): mean-pooled last hidden state over the input tokens, L2-normalised. */
    const float *embedding;
    int32_t n_embd;
    /* ERROR */
    int err;             /* enum tg_err */
    const char *message; /* readable, names sizes/paths where relevant */
};

typedef void (*tg_engine_event_cb)(const struct tg_engine_event *ev, void *user);

/* Queue a job. On TG_OK, *job_id (if not NULL) is set and the callback will run (see the
 * async contract above). Errors (callback never runs; message in err when errlen > 0):
 *   TG_INVAL     bad job (no input, bad labels, too many stop strings, bad grammar ...)
 *   TG_CONTEXT   prompt does not fit: message names the prompt tokens and n_ctx
 *   TG_SCHEMA    EXTRACT schema invalid/unsupported: message names the schema path
 *   TG_BUSY      queue_max jobs already waiting
 *   TG_UNSUPPORTED  EMBED without an embedding context
 *   TG_CLOSED    engine is shutting down
 * Tokenization and template formatting happen here, on the caller's thread. */
int tg_engine_submit(struct tg_engine *e, const struct tg_engine_job *job,
                     tg_engine_event_cb cb, void *user, uint64_t *job_id, char *err,
                     size_t errlen);

/* Cancel a queued or running job. Its slot counts as free at once (tg_engine_stats shows
 * it before this returns); its KV is dropped before the next decode step, and the job gets
 * TG_EV_DONE with finish_reason "cancelled" (and the text so far) on the scheduler thread.
 * Returns TG_OK, or TG_NOTFOUND when the job is unknown or already finished. */
int tg_engine_cancel(struct tg_engine *e, uint64_t job_id);

struct tg_engine_stats {
    int32_t n_slots;
    int32_t slots_busy;       /* slots holding a job that is not cancelled */
    int32_t queue_depth;      /* jobs waiting for a slot */
    int32_t queue_max;
    double est_wait_ms;       /* expected wait for a job submitted now before it gets a
                                 slot: 0 when a slot is free for it, else
                                 ceil((queue_depth + 1 - free_slots) / n_slots) *
                                 mean job time (EWMA, alpha 0.2, of recent jobs' time
                                 in a slot, ms) */
    double tokens_per_s;      /* decode throughput of recent decode steps, tokens/s
                                 (EWMA, alpha 0.1, of sampled tokens / step time) */
    double prefill_tokens_per_s; /* prompt tokens/s of recent prefill steps (EWMA) */
    uint64_t jobs_done;       /* jobs that got their final event */
    uint64_t tokens_generated; /* all sampled tokens */
    uint64_t prefix_cache_hits;   /* jobs that reused >= 1 cached prompt token */
    uint64_t prefix_cache_misses; /* jobs that reused nothing */
    uint64_t prefix_cache_tokens; /* prompt tokens whose prefill was skipped */
    int32_t prefix_cache_entries; /* prefixes held now (in the KV cache or moved out) */
    uint64_t prefix_cache_spills;   /* idle entries copied out of the KV cache */
    uint64_t prefix_cache_restores; /* hits on a moved-out entry (copied back) */
    int64_t prefix_cache_spilled_bytes; /* host memory held by moved-out entries now */
    uint64_t gap_rows; /* kv_split: batch rows added for slots between busy ones (an idle
                          slot's padding row, or one more prompt token of a slot still
                          prefilling), so each step stays one ubatch; 0 in unified mode */
};

/* A consistent snapshot of the counters. Thread-safe. */
void tg_engine_stats(struct tg_engine *e, struct tg_engine_stats *out);

#endif
