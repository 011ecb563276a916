/* Module-private: the policy's layout and the cue lexicon. Not included outside router/. */
#ifndef TG_ROUTER_INTERNAL_H
#define TG_ROUTER_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tg/router.h"

/* Languages the word lexicon votes for (Latin-script ones; other scripts are told apart by
 * code point ranges). */
enum lex_lang {
    LANG_EN,
    LANG_FR,
    LANG_DE,
    LANG_ES,
    LANG_IT,
    LANG_PT,
    LANG_SW,
    LANG_YO,
    LANG_VI,
    LANG_N
};

/* Extra word roles, beside kind cues and language votes. */
enum lex_role {
    ROLE_NONE = 0,
    ROLE_UNIT_WORDS,  /* "words": a number before it is an input size or an output length */
    ROLE_UNIT_TOKENS, /* "tokens": input size */
    ROLE_UNIT_PAGES,  /* "pages": input size */
    ROLE_UNIT_LINES,  /* "lines": input size */
    ROLE_WH,          /* who/what/when/...: a question when first in the message */
    ROLE_LANGNAME,    /* a language's name ("swahili"); `langname` holds its code */
};

#define LEX_MAX_CUES 3
struct lex_slot {
    uint64_t hash; /* 0 = empty slot */
    uint8_t n_cues;
    uint8_t kinds[LEX_MAX_CUES];
    float weights[LEX_MAX_CUES];
    uint16_t langs; /* bit per enum lex_lang */
    uint8_t role;
    char langname[3]; /* ROLE_LANGNAME: ISO 639-1 code */
};

#define LEX_SLOTS 4096u /* power of two; the lexicon holds well under half of it */

/* Non-Latin-script cue (CJK has no spaces: matched as substrings). */
struct lex_substr {
    const char *text;
    uint8_t kind;
    float weight;
};

struct lex_table {
    struct lex_slot slots[LEX_SLOTS];
    size_t n_entries;
};

#define POLICY_MAX_LANGS 48

struct tg_router_policy {
    atomic_int refs;
    char name[64];

    /* scoring */
    double threshold;
    double kind_base[TG_ROUTE_N_KINDS];
    double w_source_text;   /* added when source text is provided */
    double w_code_block;    /* added when a ``` block is present */
    double w_output_per_1k; /* per 1000 requested output tokens */
    double w_output_max;    /* cap for the output-length term */
    double w_long_prompt;   /* added when the prompt is over long_prompt_tokens */
    int64_t long_prompt_tokens;
    double w_turn;           /* per non-system message over 2 */
    double w_other_language; /* language not in `supported_languages` */

    /* hard rules */
    bool privacy_key_flag;
    unsigned pii_local; /* tg_route_pii bits that force LOCAL */
    bool allow_tier_header;
    bool pinned_model_remote;
    enum tg_route_tier embeddings_tier;
    int64_t max_local_context_tokens;
    bool described_context;
    int32_t max_local_turns;
    size_t n_remote_langs, n_supported_langs;
    char remote_langs[POLICY_MAX_LANGS][4];
    char supported_langs[POLICY_MAX_LANGS][4];

    /* constraints */
    bool budget_local;          /* exhausted remote budget -> LOCAL */
    double max_engine_wait_ms;  /* 0 = off */
    bool circuit_open_local;    /* remote circuit open -> LOCAL */
    bool remote_fallback_local; /* remote decisions list the local target as last fallback */

    /* escalation */
    bool esc_enabled, esc_empty, esc_schema, esc_truncated, esc_repetition;
    double esc_min_confidence;
    double esc_min_distinct_4grams; /* looping when distinct/total word 4-grams is under this */

    struct lex_table lex;
};

/* Fill the lexicon (built-in cue lists). TG_OK or TG_INTERNAL if the table overflows. */
int tg_router_lex_build(struct lex_table *t);
const struct lex_slot *tg_router_lex_find(const struct lex_table *t, uint64_t hash);
/* Substring cues for CJK text; *n receives the count. */
const struct lex_substr *tg_router_lex_substrs(size_t *n);

/* Word hash: FNV-1a 64 over the bytes, lower-cased (ASCII; Latin-1 capitals in UTF-8 too, which
 * the scanner folds the same way before hashing). Never 0 (0 marks an empty slot). */
#define LEX_FNV_OFFSET 0xcbf29ce484222325ULL
#define LEX_FNV_PRIME  0x100000001b3ULL
static inline uint64_t lex_word_hash(const char *w, size_t n)
{
    uint64_t h = LEX_FNV_OFFSET;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)w[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c + 32);
        h ^= c;
        h *= LEX_FNV_PRIME;
    }
    return h | 1;
}

/* Hash of "a b" from the hashes of "a" and "b" (order matters). Never 0. */
static inline uint64_t lex_ngram(uint64_t a, uint64_t b)
{
    uint64_t h = a ^ (b + 0x9e3779b97f4a7c15ULL + (a << 6) + (a >> 2));
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h | 1;
}

void tg_router_policy_set_defaults(struct tg_router_policy *p);

#endif
