/* tiergate router: from a canonical request to a tier decision, in microseconds, with reasons.
 *
 * Pure code: no I/O after the policy is loaded, no threads, no globals. Everything here may be
 * called from any thread at the same time; a policy is immutable once loaded and is shared by
 * reference counting (the gateway swaps snapshots on SIGHUP: load the new one, swap the pointer,
 * unref the old one; requests that still hold a ref keep using the old one safely).
 *
 * Pipeline:  request --tg_router_features()--> features --policy--> score in [0,1]
 *            --hard rules, threshold, constraints--> decision {tier, target, fallbacks, reasons}
 *
 * Hard rules are applied in this order (first match decides the preferred tier):
 *   1. privacy      key privacy flag, or PII of a type the policy lists  -> LOCAL
 *   2. header       X-Tiergate-Tier override, when the policy allows it  -> that tier
 *   3. pinned model the client named a concrete remote model             -> REMOTE
 *   4. endpoint     embeddings go to the policy's embeddings tier
 *   5. force remote context over the local limit (counted or described), too many turns,
 *                   a language in the policy's remote list               -> REMOTE
 *   6. score        score >= threshold -> REMOTE, else LOCAL   (not a hard rule)
 * then constraints move the preferred tier when it cannot be used (reason says so, fallback=1):
 *   REMOTE but remote budget exhausted, remote circuit open or remote unavailable -> LOCAL
 *   LOCAL but engine wait over the policy's limit or local unavailable            -> REMOTE
 *   (never when privacy decided LOCAL).
 *
 * Token counts are estimates, no tokenizer is run. Formula (tg_router_estimate_tokens):
 *   tokens = ceil(ascii_bytes / 4) + cp2 / 2 + cp3 + 2 * cp4
 * where cpN counts UTF-8 code points of N bytes: 2-byte ones are accented Latin, Greek,
 * Cyrillic, Hebrew, Arabic (about two per token); 3-byte ones are CJK, kana, Hangul, Indic,
 * Thai (about one token each in Phi-3's Llama vocabulary); 4-byte ones (emoji, rare Han) fall
 * back to bytes. Each message adds 4 tokens for the chat template.
 */
#ifndef TG_ROUTER_H
#define TG_ROUTER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tg_route_endpoint {
    TG_ROUTE_EP_CHAT,        /* /v1/chat/completions */
    TG_ROUTE_EP_COMPLETIONS, /* /v1/completions (prompt as one user message) */
    TG_ROUTE_EP_RESPONSES,   /* /v1/responses */
    TG_ROUTE_EP_CLASSIFY,    /* task API: labels given */
    TG_ROUTE_EP_EXTRACT,     /* task API: JSON schema given */
    TG_ROUTE_EP_EMBEDDINGS,  /* /v1/embeddings */
};

enum tg_route_tier { TG_ROUTE_LOCAL = 1, TG_ROUTE_REMOTE = 2 };

/* Task kinds. The names (tg_route_kind_name) are the keys of `weights.kinds` in policies. */
#define TG_ROUTE_KIND_MAP(X)                                                                       \
    X(CHAT, "chat")                     /* nothing recognisable: general chat */                   \
    X(CLASSIFY, "classify")             /* pick a label */                                         \
    X(EXTRACT, "extract")               /* fields / JSON from provided text */                     \
    X(CLOSED_QA, "closed_qa")           /* answer from provided text */                            \
    X(SUMMARIZE, "summarize")           /* summary of provided text */                             \
    X(REWRITE, "rewrite")               /* grammar, tone, format conversion, redaction */          \
    X(TRANSLATE, "translate")           /* translation */                                          \
    X(MATH, "math")                     /* arithmetic, grade-school word problems */               \
    X(CODE_SNIPPET, "code_snippet")     /* one regex / SQL query / formula / one-liner */          \
    X(CODE, "code")                     /* programs, algorithms, debugging */                      \
    X(PROOF, "proof")                   /* competition math, proofs, derivations */                \
    X(CREATIVE, "creative")             /* stories, poems, copy, speeches */                       \
    X(ROLEPLAY, "roleplay")             /* stay in character */                                    \
    X(OPEN_QA, "open_qa")               /* world knowledge, no text provided */                    \
    X(CURRENT_EVENTS, "current_events") /* needs today's information */                            \
    X(EXPERT, "expert")                 /* legal, medical, financial, strategy, architecture */    \
    X(PLANNING, "planning")             /* multi-step plans, itineraries, migrations */

enum tg_route_kind {
#define TG_ROUTE_KIND_ENUM(name, str) TG_ROUTE_KIND_##name,
    TG_ROUTE_KIND_MAP(TG_ROUTE_KIND_ENUM)
#undef TG_ROUTE_KIND_ENUM
        TG_ROUTE_N_KINDS
};

/* PII types, as a bit set in tg_route_features.pii. */
enum tg_route_pii {
    TG_ROUTE_PII_EMAIL = 1 << 0, /* local@domain.tld */
    TG_ROUTE_PII_PHONE = 1 << 1, /* +CC or (NNN) NNN-NNNN style numbers, 9-15 digits */
    TG_ROUTE_PII_CARD = 1 << 2,  /* 13-19 digits passing the Luhn check */
    TG_ROUTE_PII_IBAN = 1 << 3,  /* country code + 2 check digits + BBAN, mod-97 valid */
    TG_ROUTE_PII_SSN = 1 << 4,   /* US SSN NNN-NN-NNNN */
};
#define TG_ROUTE_N_PII 5

/* One chat message; pointers are borrowed for the duration of the call. content need not be
 * NUL-terminated. role is "system", "developer", "user", "assistant" or "tool" (NULL = user). */
struct tg_route_message {
    const char *role;
    const char *content;
    size_t content_len; /* bytes */
};

/* The canonical request, built by the gateway. All pointers borrowed for the call. */
struct tg_route_request {
    enum tg_route_endpoint endpoint;
    const struct tg_route_message *messages;
    size_t n_messages;
    size_t n_labels;              /* classify: number of labels given; 0 = none */
    bool has_schema;              /* extract / response_format json_schema given */
    int64_t max_tokens;           /* requested completion limit; -1 = not given */
    const char *pinned_model;     /* non-NULL when the client named a concrete remote model */
    int tier_override;            /* X-Tiergate-Tier: 0 none, 1 local, 2 remote */
    bool key_privacy;             /* the API key is marked "data must not leave" */
    bool remote_budget_exhausted; /* the key's remote budget is spent */
    double engine_wait_ms;        /* engine's estimated queue wait, ms; 0 = idle/unknown */
    bool remote_circuit_open;     /* remote tier's circuit breaker is open */
    bool local_available;         /* a local tier exists and is up */
    bool remote_available;        /* a remote tier is configured (key set) and up */
    int32_t local_context_tokens; /* local engine context size, tokens; 0 = policy limit only */
};

/* A request with the defaults: CHAT, max_tokens -1, both tiers available, nothing else. */
struct tg_route_request tg_route_request_default(void);

/* Features the router extracted. Plain value; no pointers into the request. */
struct tg_route_features {
    enum tg_route_kind kind;               /* the kind with most evidence */
    float kind_evidence[TG_ROUTE_N_KINDS]; /* cue weight found per kind (>= 0) */
    float kind_confidence;                 /* top evidence / total evidence, 0 when none */
    int64_t n_prompt_tokens;               /* estimate over all messages (formula above) */
    int64_t n_context_tokens;              /* estimate of provided source text (non-instruction) */
    int64_t n_described_tokens;            /* input size the text describes ("~220k tokens",
                                              "94,000 words", "218 pages"); 0 = none */
    int64_t n_output_tokens;               /* output the text asks for ("800 words" -> ~1066);
                                              0 = not said. max_tokens is not counted here (SDKs
                                              set it as a ceiling); the context check uses it */
    int32_t n_turns;                       /* non-system messages */
    int32_t n_user_turns;
    char lang[4];          /* ISO 639-1 guess of the last user message ("und") */
    char target_lang[4];   /* a poorly supported language the text names
                              ("into Swahili" -> "sw"); "" when none */
    const char *script;    /* static: dominant script of the last user message ("latin",
                              "han", "kana", "hangul", "cyrillic", "bengali", ...; "none") */
    bool has_source_text;  /* a passage/data is provided to work on */
    int32_t n_code_blocks; /* ``` fenced blocks */
    bool has_math;         /* math symbols (∫ √ ≤ ℝ ...) or '^' anywhere */
    bool is_question;      /* the last user message asks a question */
    size_t n_labels;       /* from the request, else 0 */
    bool has_schema;
    unsigned pii; /* enum tg_route_pii bits found anywhere */
};

/* A reason: `code` is a static string from a small fixed set (safe as a metric label):
 *   force_local.key_privacy, force_local.pii.{email,phone,card,iban,ssn},
 *   override.header, force_remote.pinned_model, endpoint.embeddings, force_remote.context,
 *   force_remote.described_context, force_remote.turns, force_remote.language,
 *   kind.<kind name>, feature.{source_text,code_block,output_length,long_prompt,turns,
 *   language}, budget.exhausted, load.engine_wait, load.circuit_open,
 *   unavailable.local, unavailable.remote
 * `text` is for people. `weight` is the score contribution (0 for hard rules). */
struct tg_route_reason {
    const char *code;
    char text[120];
    double weight;
};

#define TG_ROUTE_MAX_REASONS   8
#define TG_ROUTE_MAX_FALLBACKS 8

/* Targets are config's job: the caller passes the names, the decision echoes the chosen one. */
struct tg_route_targets {
    const char *local;                   /* local target name (may be NULL) */
    const char *remote;                  /* primary remote target (may be NULL) */
    const char *const *remote_fallbacks; /* further remote targets, in order */
    size_t n_remote_fallbacks;
};

struct tg_route_decision {
    enum tg_route_tier tier;
    double score;     /* complexity in [0,1]; >= policy threshold prefers REMOTE */
    double threshold; /* the policy's threshold, for headers and explain */
    enum tg_route_kind kind;
    bool hard;               /* a hard rule (not the score) chose the tier */
    bool fallback;           /* a constraint moved the request off its preferred tier */
    bool escalation_allowed; /* a failed local result may be retried remote */
    const char *reason;      /* the deciding reason code (metric label), static */
    size_t n_reasons;        /* reasons[0] decided; the rest are the top contributors */
    struct tg_route_reason reasons[TG_ROUTE_MAX_REASONS];
    const char *target; /* borrowed from tg_route_targets; NULL if none given */
    size_t n_fallbacks;
    const char *fallbacks[TG_ROUTE_MAX_FALLBACKS]; /* borrowed, in the order to try */
};

struct tg_router_policy;

/* Load and validate a policy file. TG_OK and *out (refcount 1) on success; otherwise a tg_err
 * (TG_CONFIG, TG_IO, TG_NOMEM) and "file:line: message" in err (errlen bytes); *out untouched.
 * The file is read once; the policy keeps no reference to it. */
int tg_router_policy_load(const char *path, struct tg_router_policy **out, char *err,
                          size_t errlen);
/* Same from memory; `name` stands for the file name in messages. */
int tg_router_policy_load_string(const char *name, const char *text, size_t len,
                                 struct tg_router_policy **out, char *err, size_t errlen);
/* A policy with the built-in defaults (the same values as policies/balanced.yaml). */
int tg_router_policy_default(struct tg_router_policy **out);
/* Reference counting (atomic; any thread). unref(NULL) is a no-op. */
struct tg_router_policy *tg_router_policy_ref(struct tg_router_policy *p);
void tg_router_policy_unref(struct tg_router_policy *p);
/* The policy's `name` (static for the policy's life). */
const char *tg_router_policy_name(const struct tg_router_policy *p);

/* Extract features. Cost is linear in the total message bytes. Never fails: a NULL or empty
 * request gives kind CHAT and zero counts. */
void tg_router_features(const struct tg_router_policy *p, const struct tg_route_request *req,
                        struct tg_route_features *out);

/* Decide. targets may be NULL. TG_OK and *out written; TG_INVAL (out untouched) for a NULL
 * argument, a request with neither tier available, or one that privacy keeps local while no
 * local tier is available (the caller rejects it: the data must not go remote). */
int tg_router_decide(const struct tg_router_policy *p, const struct tg_route_request *req,
                     const struct tg_route_targets *targets, struct tg_route_decision *out);

/* Same, from features already computed (the gateway may log them). */
int tg_router_decide_features(const struct tg_router_policy *p, const struct tg_route_request *req,
                              const struct tg_route_features *f,
                              const struct tg_route_targets *targets,
                              struct tg_route_decision *out);

/* {policy, features:{...}, score, threshold, rules_fired:[{code,text,weight}],
 *  decision:{tier, target, fallbacks, reason, hard, fallback, escalation_allowed}}
 * New reference; NULL on allocation failure or a NULL argument. No model is run. */
json_t *tg_router_explain(const struct tg_router_policy *p, const struct tg_route_request *req,
                          const struct tg_route_targets *targets);

/* ---- Escalation (the cascade) ----------------------------------------------------------- */

/* What the local tier produced, as the gateway saw it. */
struct tg_route_local_result {
    enum tg_route_endpoint endpoint; /* CLASSIFY / EXTRACT / chat-like */
    const char *text;                /* output text (borrowed), may be NULL */
    size_t text_len;
    int schema_valid;          /* -1 not checked, 0 invalid, 1 valid */
    double confidence;         /* label probability in [0,1]; < 0 = unknown */
    const char *finish_reason; /* "stop", "length", ...; NULL = unknown */
};

struct tg_route_escalation {
    bool escalate;
    const char *reason; /* escalate.{empty,repetition,low_confidence,schema_invalid,truncated}
                           or "ok" / "escalation.disabled" / "escalation.not_allowed"; static */
    char text[120];
};

/* Should a local result be retried on the remote tier? `d` is the decision that sent it local
 * (may be NULL: then only the policy is consulted). Always writes *out; TG_INVAL on NULL p,
 * r or out. Escalation is never advised when d->escalation_allowed is false (privacy, budget,
 * remote circuit open). Checks, in order: empty (only whitespace), schema-invalid, truncated
 * extraction (finish_reason "length" with a schema), classification confidence under
 * `escalation.min_confidence`, looping output (a tail that repeats with a short period, or
 * few distinct word 4-grams). */
int tg_router_check_local_result(const struct tg_router_policy *p,
                                 const struct tg_route_decision *d,
                                 const struct tg_route_local_result *r,
                                 struct tg_route_escalation *out);

/* ---- Small helpers, exposed for the gateway and tests ------------------------------------ */

const char *tg_route_kind_name(enum tg_route_kind k); /* "classify"; "?" when out of range */
const char *tg_route_tier_name(enum tg_route_tier t); /* "local" / "remote" */
/* Token estimate for one text (formula above, without the per-message overhead). */
int64_t tg_router_estimate_tokens(const char *text, size_t len);
/* Name of a PII bit ("email"); "?" for anything else. */
const char *tg_route_pii_name(unsigned bit);

/* ---- Canonical request from an OpenAI-style JSON body ----------------------------------- */

/* A request parsed from JSON; `req.messages` points into `msgs`, whose contents point into the
 * json_t (keep the json_t alive while using it) or into `arena`. */
struct tg_route_parsed {
    struct tg_route_request req;
    struct tg_route_message *msgs;
    char *arena; /* concatenated multi-part contents */
};

/* Build the routing view of a request body. Accepted shapes:
 *   chat:        {"messages":[{"role","content": string | [{"type":"text","text"}...]}], ...}
 *   completions: {"prompt": string}
 *   responses:   {"input": string | [messages]}, optional "instructions"
 *   task API:    {"text": string, "labels":[...]} / {"text": string, "schema":{...}}
 * plus "max_tokens" / "max_completion_tokens" / "max_output_tokens", "labels", "schema",
 * "response_format":{"type":"json_schema"|"json_object"}. Other keys are ignored (the
 * route-dev.jsonl rows carry "id", "label", "category", "why"). The endpoint is taken from `ep`
 * unless `ep` is CHAT and the body has labels (CLASSIFY) or a schema (EXTRACT).
 * Returns TG_OK and fills *out (free with tg_router_parsed_free), TG_INVAL with a message in
 * err for a body with no usable text, TG_NOMEM. Other request fields keep the defaults of
 * tg_route_request_default(). */
int tg_router_parse_json(const json_t *body, enum tg_route_endpoint ep, struct tg_route_parsed *out,
                         char *err, size_t errlen);
void tg_router_parsed_free(struct tg_route_parsed *p);

#endif
