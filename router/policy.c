/* Policy files: defaults, YAML loading with file:line validation, reference counting. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router_internal.h"
#include "tg/err.h"
#include "tg/yaml.h"

/* The built-in defaults are policies/balanced.yaml's values: a policy file only needs to say
 * what it changes. Kind bases are complexity priors from the Phi-3.5 Mini capability notes:
 * under 0.5 the small model is known to do well, over it a larger model is worth the cost. */
void tg_router_policy_set_defaults(struct tg_router_policy *p)
{
    snprintf(p->name, sizeof p->name, "default");
    p->threshold = 0.5;
    static const double BASE[TG_ROUTE_N_KINDS] = {
        [TG_ROUTE_KIND_CHAT] = 0.50,           [TG_ROUTE_KIND_CLASSIFY] = 0.10,
        [TG_ROUTE_KIND_EXTRACT] = 0.15,        [TG_ROUTE_KIND_CLOSED_QA] = 0.20,
        [TG_ROUTE_KIND_SUMMARIZE] = 0.20,      [TG_ROUTE_KIND_REWRITE] = 0.15,
        [TG_ROUTE_KIND_TRANSLATE] = 0.20,      [TG_ROUTE_KIND_MATH] = 0.25,
        [TG_ROUTE_KIND_CODE_SNIPPET] = 0.30,   [TG_ROUTE_KIND_CODE] = 0.80,
        [TG_ROUTE_KIND_PROOF] = 0.90,          [TG_ROUTE_KIND_CREATIVE] = 0.85,
        [TG_ROUTE_KIND_ROLEPLAY] = 0.90,       [TG_ROUTE_KIND_OPEN_QA] = 0.80,
        [TG_ROUTE_KIND_CURRENT_EVENTS] = 0.95, [TG_ROUTE_KIND_EXPERT] = 0.85,
        [TG_ROUTE_KIND_PLANNING] = 0.75,
    };
    memcpy(p->kind_base, BASE, sizeof BASE);
    p->w_source_text = -0.10;
    p->w_code_block = 0.15;
    p->w_output_per_1k = 0.20;
    p->w_output_max = 0.30;
    p->w_long_prompt = 0.10;
    p->long_prompt_tokens = 8000;
    p->w_turn = 0.02;
    p->w_other_language = 0.25;

    p->privacy_key_flag = true;
    p->pii_local = TG_ROUTE_PII_CARD | TG_ROUTE_PII_IBAN | TG_ROUTE_PII_SSN;
    p->allow_tier_header = true;
    p->pinned_model_remote = true;
    p->embeddings_tier = TG_ROUTE_LOCAL;
    p->max_local_context_tokens = 32768;
    p->described_context = true;
    p->max_local_turns = 9;
    static const char *const REMOTE_LANGS[] = {
        "sw", "bn", "vi", "yo", "ha", "ig", "am", "zu", "xh", "so", "ne", "si", "km", "lo",
        "my", "tl", "mg", "rw", "ti", "ps", "pa", "gu", "mr", "te", "ta", "kn", "ml", "ur"};
    p->n_remote_langs = sizeof REMOTE_LANGS / sizeof REMOTE_LANGS[0];
    for (size_t i = 0; i < p->n_remote_langs; i++)
        snprintf(p->remote_langs[i], sizeof p->remote_langs[i], "%s", REMOTE_LANGS[i]);
    static const char *const SUPPORTED[] = {"en", "fr", "de", "es", "it", "pt", "zh", "ja"};
    p->n_supported_langs = sizeof SUPPORTED / sizeof SUPPORTED[0];
    for (size_t i = 0; i < p->n_supported_langs; i++)
        snprintf(p->supported_langs[i], sizeof p->supported_langs[i], "%s", SUPPORTED[i]);

    p->budget_local = true;
    p->max_engine_wait_ms = 2000;
    p->circuit_open_local = true;
    p->remote_fallback_local = true;

    p->esc_enabled = true;
    p->esc_empty = true;
    p->esc_schema = true;
    p->esc_truncated = true;
    p->esc_repetition = true;
    p->esc_min_confidence = 0.6;
    p->esc_min_distinct_4grams = 0.35;
}

static struct tg_router_policy *policy_new(void)
{
    struct tg_router_policy *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    atomic_init(&p->refs, 1);
    tg_router_policy_set_defaults(p);
    if (tg_router_lex_build(&p->lex) != TG_OK) {
        free(p);
        return NULL;
    }
    return p;
}

int tg_router_policy_default(struct tg_router_policy **out)
{
    if (out == NULL)
        return TG_INVAL;
    struct tg_router_policy *p = policy_new();
    if (p == NULL)
        return TG_NOMEM;
    *out = p;
    return TG_OK;
}

struct tg_router_policy *tg_router_policy_ref(struct tg_router_policy *p)
{
    if (p != NULL)
        atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
    return p;
}

void tg_router_policy_unref(struct tg_router_policy *p)
{
    if (p == NULL)
        return;
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1)
        free(p);
}

const char *tg_router_policy_name(const struct tg_router_policy *p)
{
    return p != NULL ? p->name : "";
}

/* ---- YAML ------------------------------------------------------------------------------ */

static bool valid_lang(const char *s)
{
    size_t n = strlen(s);
    if (n < 2 || n > 3)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 'a' || s[i] > 'z')
            return false;
    return true;
}

static bool read_langs(struct tg_yreader *r, const struct tg_ynode *map, const char *key,
                       char (*dst)[4], size_t *n_out)
{
    const struct tg_ynode *seq = tg_y_get(map, key);
    if (seq == NULL)
        return true;
    if (!tg_yr_seq(r, seq, key))
        return false;
    if (seq->n > POLICY_MAX_LANGS)
        return tg_yr_fail(r, seq->line, "%s: at most %d languages", key, POLICY_MAX_LANGS);
    for (size_t i = 0; i < seq->n; i++) {
        const char *s;
        if (!tg_yr_node_str(r, seq->items[i], key, &s))
            return false;
        if (!valid_lang(s))
            return tg_yr_fail(r, seq->items[i]->line,
                              "%s: '%s' is not an ISO 639 code (two or three lower-case letters)",
                              key, s);
        snprintf(dst[i], 4, "%s", s);
    }
    *n_out = seq->n;
    return true;
}

static bool read_pii(struct tg_yreader *r, const struct tg_ynode *map, unsigned *out)
{
    const struct tg_ynode *seq = tg_y_get(map, "pii");
    if (seq == NULL)
        return true;
    if (!tg_yr_seq(r, seq, "pii"))
        return false;
    unsigned bits = 0;
    for (size_t i = 0; i < seq->n; i++) {
        const char *s;
        if (!tg_yr_node_str(r, seq->items[i], "pii", &s))
            return false;
        unsigned bit = 0;
        for (unsigned b = 0; b < TG_ROUTE_N_PII; b++)
            if (strcmp(s, tg_route_pii_name(1u << b)) == 0)
                bit = 1u << b;
        if (bit == 0)
            return tg_yr_fail(r, seq->items[i]->line,
                              "pii: unknown type '%s' (expected one of: email, phone, card, "
                              "iban, ssn)",
                              s);
        bits |= bit;
    }
    *out = bits;
    return true;
}

static bool read_weights(struct tg_yreader *r, const struct tg_ynode *w, struct tg_router_policy *p)
{
    static const char *const KEYS[] = {
        "kinds",       "source_text",        "code_block", "output_per_1k_tokens", "output_max",
        "long_prompt", "long_prompt_tokens", "turn",       "other_language",       NULL};
    if (!tg_yr_map(r, w, "weights", KEYS))
        return false;
    const struct tg_ynode *kinds = tg_y_get(w, "kinds");
    if (kinds != NULL) {
        const char *names[TG_ROUTE_N_KINDS + 1];
        for (int k = 0; k < TG_ROUTE_N_KINDS; k++)
            names[k] = tg_route_kind_name((enum tg_route_kind)k);
        names[TG_ROUTE_N_KINDS] = NULL;
        if (!tg_yr_map(r, kinds, "weights.kinds", names))
            return false;
        for (int k = 0; k < TG_ROUTE_N_KINDS; k++)
            if (!tg_yr_num(r, kinds, names[k], 0, 1, &p->kind_base[k]))
                return false;
    }
    int64_t lpt = p->long_prompt_tokens;
    bool ok = tg_yr_num(r, w, "source_text", -1, 1, &p->w_source_text) &&
              tg_yr_num(r, w, "code_block", -1, 1, &p->w_code_block) &&
              tg_yr_num(r, w, "output_per_1k_tokens", -1, 1, &p->w_output_per_1k) &&
              tg_yr_num(r, w, "output_max", 0, 1, &p->w_output_max) &&
              tg_yr_num(r, w, "long_prompt", -1, 1, &p->w_long_prompt) &&
              tg_yr_int(r, w, "long_prompt_tokens", 1, INT32_MAX, &lpt) &&
              tg_yr_num(r, w, "turn", -1, 1, &p->w_turn) &&
              tg_yr_num(r, w, "other_language", -1, 1, &p->w_other_language);
    p->long_prompt_tokens = lpt;
    return ok;
}

static bool read_rules(struct tg_yreader *r, const struct tg_ynode *rules,
                       struct tg_router_policy *p)
{
    static const char *const KEYS[] = {"privacy",
                                       "tier_header",
                                       "pinned_model",
                                       "embeddings",
                                       "force_remote",
                                       "budget_exhausted",
                                       "max_engine_wait_ms",
                                       "circuit_open",
                                       "remote_fallback_local",
                                       NULL};
    if (!tg_yr_map(r, rules, "rules", KEYS))
        return false;
    const struct tg_ynode *priv = tg_y_get(rules, "privacy");
    if (priv != NULL) {
        static const char *const PK[] = {"key_flag", "pii", NULL};
        if (!tg_yr_map(r, priv, "rules.privacy", PK) ||
            !tg_yr_bool(r, priv, "key_flag", &p->privacy_key_flag) ||
            !read_pii(r, priv, &p->pii_local))
            return false;
    }
    static const char *const PINNED[] = {"remote", "ignore", NULL};
    static const char *const TIERS[] = {"local", "remote", NULL};
    static const char *const LOCAL_IGNORE[] = {"local", "ignore", NULL};
    int pinned = p->pinned_model_remote ? 0 : 1;
    int emb = p->embeddings_tier == TG_ROUTE_LOCAL ? 0 : 1;
    int budget = p->budget_local ? 0 : 1;
    int circuit = p->circuit_open_local ? 0 : 1;
    if (!tg_yr_bool(r, rules, "tier_header", &p->allow_tier_header) ||
        !tg_yr_enum(r, rules, "pinned_model", PINNED, &pinned) ||
        !tg_yr_enum(r, rules, "embeddings", TIERS, &emb) ||
        !tg_yr_enum(r, rules, "budget_exhausted", LOCAL_IGNORE, &budget) ||
        !tg_yr_num(r, rules, "max_engine_wait_ms", 0, 3600e3, &p->max_engine_wait_ms) ||
        !tg_yr_enum(r, rules, "circuit_open", LOCAL_IGNORE, &circuit) ||
        !tg_yr_bool(r, rules, "remote_fallback_local", &p->remote_fallback_local))
        return false;
    p->pinned_model_remote = pinned == 0;
    p->embeddings_tier = emb == 0 ? TG_ROUTE_LOCAL : TG_ROUTE_REMOTE;
    p->budget_local = budget == 0;
    p->circuit_open_local = circuit == 0;

    const struct tg_ynode *fr = tg_y_get(rules, "force_remote");
    if (fr != NULL) {
        static const char *const FK[] = {"max_local_context_tokens", "described_context",
                                         "max_local_turns", "languages", NULL};
        int64_t ctx = p->max_local_context_tokens, turns = p->max_local_turns;
        if (!tg_yr_map(r, fr, "rules.force_remote", FK) ||
            !tg_yr_int(r, fr, "max_local_context_tokens", 256, INT32_MAX, &ctx) ||
            !tg_yr_bool(r, fr, "described_context", &p->described_context) ||
            !tg_yr_int(r, fr, "max_local_turns", 1, 100000, &turns) ||
            !read_langs(r, fr, "languages", p->remote_langs, &p->n_remote_langs))
            return false;
        p->max_local_context_tokens = ctx;
        p->max_local_turns = (int32_t)turns;
    }
    return true;
}

static bool read_escalation(struct tg_yreader *r, const struct tg_ynode *e,
                            struct tg_router_policy *p)
{
    static const char *const KEYS[] = {
        "enabled",    "empty",          "schema_invalid",      "truncated",
        "repetition", "min_confidence", "min_distinct_4grams", NULL};
    return tg_yr_map(r, e, "escalation", KEYS) && tg_yr_bool(r, e, "enabled", &p->esc_enabled) &&
           tg_yr_bool(r, e, "empty", &p->esc_empty) &&
           tg_yr_bool(r, e, "schema_invalid", &p->esc_schema) &&
           tg_yr_bool(r, e, "truncated", &p->esc_truncated) &&
           tg_yr_bool(r, e, "repetition", &p->esc_repetition) &&
           tg_yr_num(r, e, "min_confidence", 0, 1, &p->esc_min_confidence) &&
           tg_yr_num(r, e, "min_distinct_4grams", 0, 1, &p->esc_min_distinct_4grams);
}

static int load_doc(struct tg_ydoc *doc, struct tg_router_policy **out, char *err, size_t errlen)
{
    struct tg_yreader r;
    tg_yr_init(&r, tg_ydoc_path(doc));
    const struct tg_ynode *root = tg_ydoc_root(doc);
    struct tg_router_policy *p = policy_new();
    if (p == NULL) {
        snprintf(err, errlen, "%s: out of memory", tg_ydoc_path(doc));
        return TG_NOMEM;
    }
    static const char *const KEYS[] = {
        "name",  "description", "threshold", "weights", "supported_languages",
        "rules", "escalation",  NULL};
    bool ok = true;
    if (root->type != TG_Y_MAP)
        ok = tg_yr_fail(&r, root->line,
                        "a policy must be a mapping with name, threshold, "
                        "weights, rules, escalation");
    ok = ok && tg_yr_map(&r, root, "policy", KEYS);
    const char *name = NULL;
    const char *desc = NULL;
    ok = ok && tg_yr_str(&r, root, "name", &name) && tg_yr_str(&r, root, "description", &desc);
    if (ok && name == NULL)
        ok = tg_yr_fail(&r, root->line, "policy: 'name' is required");
    if (ok && (strlen(name) == 0 || strlen(name) >= sizeof p->name))
        ok = tg_yr_fail(&r, tg_y_get(root, "name")->line, "name must be 1 to %zu characters",
                        sizeof p->name - 1);
    if (ok)
        snprintf(p->name, sizeof p->name, "%s", name);
    ok = ok && tg_yr_num(&r, root, "threshold", 0, 1, &p->threshold);
    const struct tg_ynode *n;
    if (ok && (n = tg_y_get(root, "weights")) != NULL)
        ok = read_weights(&r, n, p);
    if (ok)
        ok = read_langs(&r, root, "supported_languages", p->supported_langs, &p->n_supported_langs);
    if (ok && (n = tg_y_get(root, "rules")) != NULL)
        ok = read_rules(&r, n, p);
    if (ok && (n = tg_y_get(root, "escalation")) != NULL)
        ok = read_escalation(&r, n, p);
    if (!ok) {
        snprintf(err, errlen, "%s", r.err);
        free(p);
        return TG_CONFIG;
    }
    *out = p;
    return TG_OK;
}

int tg_router_policy_load(const char *path, struct tg_router_policy **out, char *err, size_t errlen)
{
    char dummy[8];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (path == NULL || out == NULL) {
        snprintf(err, errlen, "policy: no path given");
        return TG_INVAL;
    }
    struct tg_ydoc *doc = tg_ydoc_load(path, err, errlen);
    if (doc == NULL)
        return strstr(err, "cannot") != NULL ? TG_IO : TG_CONFIG;
    int rc = load_doc(doc, out, err, errlen);
    tg_ydoc_free(doc);
    return rc;
}

int tg_router_policy_load_string(const char *name, const char *text, size_t len,
                                 struct tg_router_policy **out, char *err, size_t errlen)
{
    char dummy[8];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    if (name == NULL || text == NULL || out == NULL) {
        snprintf(err, errlen, "policy: no text given");
        return TG_INVAL;
    }
    struct tg_ydoc *doc = tg_ydoc_load_string(name, text, len, err, errlen);
    if (doc == NULL)
        return TG_CONFIG;
    int rc = load_doc(doc, out, err, errlen);
    tg_ydoc_free(doc);
    return rc;
}
