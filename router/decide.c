/* Scoring, hard rules, constraints, explanation and the escalation check. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router_internal.h"
#include "tg/err.h"

static const char *const KIND_NAMES[TG_ROUTE_N_KINDS] = {
#define TG_ROUTE_KIND_STR(name, str) str,
    TG_ROUTE_KIND_MAP(TG_ROUTE_KIND_STR)
#undef TG_ROUTE_KIND_STR
};

/* Reason codes for soft decisions: one per kind, kept static so they are metric-label safe. */
static const char *const KIND_CODES[TG_ROUTE_N_KINDS] = {
#define TG_ROUTE_KIND_CODE(name, str) "kind." str,
    TG_ROUTE_KIND_MAP(TG_ROUTE_KIND_CODE)
#undef TG_ROUTE_KIND_CODE
};

const char *tg_route_kind_name(enum tg_route_kind k)
{
    return (unsigned)k < TG_ROUTE_N_KINDS ? KIND_NAMES[k] : "?";
}

const char *tg_route_tier_name(enum tg_route_tier t)
{
    return t == TG_ROUTE_LOCAL ? "local" : t == TG_ROUTE_REMOTE ? "remote" : "?";
}

const char *tg_route_pii_name(unsigned bit)
{
    switch (bit) {
    case TG_ROUTE_PII_EMAIL:
        return "email";
    case TG_ROUTE_PII_PHONE:
        return "phone";
    case TG_ROUTE_PII_CARD:
        return "card";
    case TG_ROUTE_PII_IBAN:
        return "iban";
    case TG_ROUTE_PII_SSN:
        return "ssn";
    default:
        return "?";
    }
}

static const char *pii_code(unsigned bit)
{
    switch (bit) {
    case TG_ROUTE_PII_EMAIL:
        return "force_local.pii.email";
    case TG_ROUTE_PII_PHONE:
        return "force_local.pii.phone";
    case TG_ROUTE_PII_CARD:
        return "force_local.pii.card";
    case TG_ROUTE_PII_IBAN:
        return "force_local.pii.iban";
    default:
        return "force_local.pii.ssn";
    }
}

struct tg_route_request tg_route_request_default(void)
{
    struct tg_route_request r;
    memset(&r, 0, sizeof r);
    r.endpoint = TG_ROUTE_EP_CHAT;
    r.max_tokens = -1;
    r.local_available = true;
    r.remote_available = true;
    return r;
}

/* ---- scoring --------------------------------------------------------------------------- */

struct term {
    const char *code;
    double weight;
    char text[120];
};

static bool lang_in(const char (*list)[4], size_t n, const char *lang)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], lang) == 0)
            return true;
    return false;
}

/* score = soft kind base + feature terms, clamped to [0,1]. The kind base is the evidence-
 * weighted mean of the kinds' bases (squared evidence, so the leading kind dominates but a
 * close second still pulls). Writes the terms for explanation. */
static double score_of(const struct tg_router_policy *p, const struct tg_route_features *f,
                       struct term *terms, size_t *n_terms)
{
    double num = 0, den = 0;
    for (int k = 0; k < TG_ROUTE_N_KINDS; k++) {
        double e = f->kind_evidence[k];
        num += e * e * p->kind_base[k];
        den += e * e;
    }
    double base = den > 0 ? num / den : p->kind_base[TG_ROUTE_KIND_CHAT];
    size_t n = 0;
    terms[n].code = KIND_CODES[f->kind];
    terms[n].weight = base;
    snprintf(terms[n].text, sizeof terms[n].text, "task looks like %s (%.0f%% of cue weight)",
             KIND_NAMES[f->kind], 100.0 * f->kind_confidence);
    n++;
    double s = base;
    if (f->has_source_text && p->w_source_text != 0) {
        terms[n].code = "feature.source_text";
        terms[n].weight = p->w_source_text;
        snprintf(terms[n].text, sizeof terms[n].text, "works on provided text (%lld tokens)",
                 (long long)f->n_context_tokens);
        s += terms[n++].weight;
    }
    if (f->n_code_blocks > 0 && p->w_code_block != 0) {
        terms[n].code = "feature.code_block";
        terms[n].weight = p->w_code_block;
        snprintf(terms[n].text, sizeof terms[n].text, "%d code block(s) to work on",
                 (int)f->n_code_blocks);
        s += terms[n++].weight;
    }
    if (f->n_output_tokens > 0 && p->w_output_per_1k != 0) {
        double w = p->w_output_per_1k * (double)f->n_output_tokens / 1000.0;
        if (w > p->w_output_max)
            w = p->w_output_max;
        if (fabs(w) >= 0.01) {
            terms[n].code = "feature.output_length";
            terms[n].weight = w;
            snprintf(terms[n].text, sizeof terms[n].text, "asks for ~%lld output tokens",
                     (long long)f->n_output_tokens);
            s += terms[n++].weight;
        }
    }
    if (f->n_prompt_tokens > p->long_prompt_tokens && p->w_long_prompt != 0) {
        terms[n].code = "feature.long_prompt";
        terms[n].weight = p->w_long_prompt;
        snprintf(terms[n].text, sizeof terms[n].text, "long prompt (%lld tokens > %lld)",
                 (long long)f->n_prompt_tokens, (long long)p->long_prompt_tokens);
        s += terms[n++].weight;
    }
    if (f->n_turns > 2 && p->w_turn != 0) {
        terms[n].code = "feature.turns";
        terms[n].weight = p->w_turn * (f->n_turns - 2);
        snprintf(terms[n].text, sizeof terms[n].text, "%d turns of conversation", (int)f->n_turns);
        s += terms[n++].weight;
    }
    if (strcmp(f->lang, "und") != 0 && p->n_supported_langs > 0 &&
        !lang_in(p->supported_langs, p->n_supported_langs, f->lang) && p->w_other_language != 0) {
        terms[n].code = "feature.language";
        terms[n].weight = p->w_other_language;
        snprintf(terms[n].text, sizeof terms[n].text, "language '%s' is not in the supported list",
                 f->lang);
        s += terms[n++].weight;
    }
    *n_terms = n;
    if (s < 0)
        s = 0;
    if (s > 1)
        s = 1;
    return s;
}

/* ---- decision -------------------------------------------------------------------------- */

static void add_reason(struct tg_route_decision *d, const char *code, double weight,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void add_reason(struct tg_route_decision *d, const char *code, double weight,
                       const char *fmt, ...)
{
    if (d->n_reasons >= TG_ROUTE_MAX_REASONS)
        return;
    struct tg_route_reason *r = &d->reasons[d->n_reasons++];
    r->code = code;
    r->weight = weight;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->text, sizeof r->text, fmt, ap);
    va_end(ap);
}

static void set_targets(struct tg_route_decision *d, const struct tg_router_policy *p,
                        const struct tg_route_targets *t, bool privacy)
{
    d->target = NULL;
    d->n_fallbacks = 0;
    if (t == NULL)
        return;
    if (d->tier == TG_ROUTE_LOCAL) {
        d->target = t->local;
        /* the remote chain is where escalation and fallback go, unless data must stay */
        if (!privacy) {
            if (t->remote != NULL)
                d->fallbacks[d->n_fallbacks++] = t->remote;
            for (size_t i = 0; i < t->n_remote_fallbacks && d->n_fallbacks < TG_ROUTE_MAX_FALLBACKS;
                 i++)
                if (t->remote_fallbacks[i] != NULL)
                    d->fallbacks[d->n_fallbacks++] = t->remote_fallbacks[i];
        }
    } else {
        d->target = t->remote;
        for (size_t i = 0; i < t->n_remote_fallbacks && d->n_fallbacks < TG_ROUTE_MAX_FALLBACKS;
             i++)
            if (t->remote_fallbacks[i] != NULL)
                d->fallbacks[d->n_fallbacks++] = t->remote_fallbacks[i];
        if (p->remote_fallback_local && t->local != NULL && d->n_fallbacks < TG_ROUTE_MAX_FALLBACKS)
            d->fallbacks[d->n_fallbacks++] = t->local;
    }
}

static int cmp_terms(const void *a, const void *b)
{
    double x = fabs(((const struct term *)a)->weight), y = fabs(((const struct term *)b)->weight);
    return (x < y) - (x > y);
}

int tg_router_decide_features(const struct tg_router_policy *p, const struct tg_route_request *req,
                              const struct tg_route_features *f,
                              const struct tg_route_targets *targets, struct tg_route_decision *out)
{
    if (p == NULL || req == NULL || f == NULL || out == NULL)
        return TG_INVAL;
    if (!req->local_available && !req->remote_available)
        return TG_INVAL;
    struct tg_route_decision d;
    memset(&d, 0, sizeof d);
    d.kind = f->kind;
    d.threshold = p->threshold;

    struct term terms[8];
    size_t n_terms = 0;
    d.score = score_of(p, f, terms, &n_terms);

    bool privacy = false;
    int64_t local_limit = p->max_local_context_tokens;
    if (req->local_context_tokens > 0 && req->local_context_tokens < local_limit)
        local_limit = req->local_context_tokens;
    /* the completion needs room in the context too: what the text asks for, or max_tokens up
     * to 4096 (larger values are ceilings SDKs set by habit, and the engine stops at its
     * context end anyway) */
    int64_t out_need = f->n_output_tokens;
    if (req->max_tokens > out_need)
        out_need = req->max_tokens < 4096 ? req->max_tokens : (out_need > 4096 ? out_need : 4096);
    int64_t need = f->n_prompt_tokens + out_need;
    const char *lang_hit = NULL;
    if (lang_in(p->remote_langs, p->n_remote_langs, f->lang))
        lang_hit = f->lang;
    else if (f->target_lang[0] != '\0' &&
             lang_in(p->remote_langs, p->n_remote_langs, f->target_lang))
        lang_hit = f->target_lang;

    /* 1. privacy */
    unsigned pii = f->pii & p->pii_local;
    if (req->key_privacy && p->privacy_key_flag) {
        d.tier = TG_ROUTE_LOCAL;
        d.hard = privacy = true;
        add_reason(&d, "force_local.key_privacy", 0, "the API key is marked: data must not leave");
    } else if (pii != 0) {
        unsigned bit = pii & (~pii + 1);
        d.tier = TG_ROUTE_LOCAL;
        d.hard = privacy = true;
        add_reason(&d, pii_code(bit), 0, "%s found and the policy keeps it on the local tier",
                   tg_route_pii_name(bit));
    } else if (req->tier_override == 1 || req->tier_override == 2) {
        /* 2. the header; the policy may switch it off */
        if (p->allow_tier_header) {
            d.tier = req->tier_override == 1 ? TG_ROUTE_LOCAL : TG_ROUTE_REMOTE;
            d.hard = true;
            add_reason(&d, "override.header", 0, "X-Tiergate-Tier: %s", tg_route_tier_name(d.tier));
        }
    }
    if (!d.hard && req->pinned_model != NULL && p->pinned_model_remote) {
        d.tier = TG_ROUTE_REMOTE;
        d.hard = true;
        add_reason(&d, "force_remote.pinned_model", 0, "client pinned model '%.64s'",
                   req->pinned_model);
    }
    if (!d.hard && req->endpoint == TG_ROUTE_EP_EMBEDDINGS) {
        d.tier = p->embeddings_tier;
        d.hard = true;
        add_reason(&d, "endpoint.embeddings", 0, "embeddings go to the %s tier",
                   tg_route_tier_name(d.tier));
    }
    if (!d.hard) {
        /* 5. force remote: what the small model cannot do at all */
        if (need > local_limit) {
            d.tier = TG_ROUTE_REMOTE;
            d.hard = true;
            add_reason(&d, "force_remote.context", 0,
                       "~%lld tokens (prompt + output) > local context %lld", (long long)need,
                       (long long)local_limit);
        } else if (p->described_context && f->n_described_tokens > local_limit) {
            d.tier = TG_ROUTE_REMOTE;
            d.hard = true;
            add_reason(&d, "force_remote.described_context", 0,
                       "text describes an input of ~%lld tokens > local context %lld",
                       (long long)f->n_described_tokens, (long long)local_limit);
        } else if (f->n_turns > p->max_local_turns) {
            d.tier = TG_ROUTE_REMOTE;
            d.hard = true;
            add_reason(&d, "force_remote.turns", 0, "%d messages > %d the local model handles well",
                       (int)f->n_turns, (int)p->max_local_turns);
        } else if (lang_hit != NULL) {
            d.tier = TG_ROUTE_REMOTE;
            d.hard = true;
            add_reason(&d, "force_remote.language", 0,
                       "language '%s' is in the policy's remote list", lang_hit);
        }
    }
    if (!d.hard) {
        d.tier = d.score >= p->threshold ? TG_ROUTE_REMOTE : TG_ROUTE_LOCAL;
        /* reasons: the kind first, then the terms that pushed the same way */
        add_reason(&d, terms[0].code, terms[0].weight, "%s; score %.2f %s threshold %.2f",
                   terms[0].text, d.score, d.tier == TG_ROUTE_REMOTE ? ">=" : "<", p->threshold);
    }
    /* remaining score terms, largest first, for people reading the explanation */
    if (n_terms > 1)
        qsort(terms + 1, n_terms - 1, sizeof terms[0], cmp_terms);
    for (size_t i = 1; i < n_terms; i++)
        add_reason(&d, terms[i].code, terms[i].weight, "%s", terms[i].text);

    /* constraints: the preferred tier cannot be used */
    if (d.tier == TG_ROUTE_REMOTE && !privacy) {
        const char *code = NULL;
        char why[96] = "";
        if (!req->remote_available) {
            code = "unavailable.remote";
            snprintf(why, sizeof why, "no remote tier available");
        } else if (req->remote_budget_exhausted && p->budget_local) {
            code = "budget.exhausted";
            snprintf(why, sizeof why, "the key's remote budget is exhausted");
        } else if (req->remote_circuit_open && p->circuit_open_local) {
            code = "load.circuit_open";
            snprintf(why, sizeof why, "remote circuit breaker is open");
        }
        if (code != NULL && req->local_available) {
            d.tier = TG_ROUTE_LOCAL;
            d.fallback = true;
            /* the constraint is now what decided: put it first */
            if (d.n_reasons == TG_ROUTE_MAX_REASONS)
                d.n_reasons--;
            memmove(&d.reasons[1], &d.reasons[0], d.n_reasons * sizeof d.reasons[0]);
            d.n_reasons++;
            d.reasons[0].code = code;
            d.reasons[0].weight = 0;
            snprintf(d.reasons[0].text, sizeof d.reasons[0].text, "%s -> local", why);
        }
    } else if (d.tier == TG_ROUTE_LOCAL && !privacy && req->remote_available &&
               !(req->remote_budget_exhausted && p->budget_local) &&
               !(req->remote_circuit_open && p->circuit_open_local)) {
        const char *code = NULL;
        char why[96] = "";
        if (!req->local_available) {
            code = "unavailable.local";
            snprintf(why, sizeof why, "no local tier available");
        } else if (p->max_engine_wait_ms > 0 && req->engine_wait_ms > p->max_engine_wait_ms &&
                   !(d.hard && strcmp(d.reasons[0].code, "override.header") == 0)) {
            code = "load.engine_wait";
            snprintf(why, sizeof why, "engine wait %.0f ms > %.0f ms", req->engine_wait_ms,
                     p->max_engine_wait_ms);
        }
        if (code != NULL) {
            d.tier = TG_ROUTE_REMOTE;
            d.fallback = true;
            if (d.n_reasons == TG_ROUTE_MAX_REASONS)
                d.n_reasons--;
            memmove(&d.reasons[1], &d.reasons[0], d.n_reasons * sizeof d.reasons[0]);
            d.n_reasons++;
            d.reasons[0].code = code;
            d.reasons[0].weight = 0;
            snprintf(d.reasons[0].text, sizeof d.reasons[0].text, "%s -> remote", why);
        }
    }
    if (d.tier == TG_ROUTE_LOCAL && !req->local_available)
        return TG_INVAL; /* privacy forced local but there is no local tier: caller rejects */
    d.reason = d.reasons[0].code;
    d.escalation_allowed = p->esc_enabled && d.tier == TG_ROUTE_LOCAL && !privacy &&
                           req->remote_available &&
                           !(req->remote_budget_exhausted && p->budget_local) &&
                           !(req->remote_circuit_open && p->circuit_open_local);
    set_targets(&d, p, targets, privacy);
    *out = d;
    return TG_OK;
}

int tg_router_decide(const struct tg_router_policy *p, const struct tg_route_request *req,
                     const struct tg_route_targets *targets, struct tg_route_decision *out)
{
    if (p == NULL || req == NULL || out == NULL)
        return TG_INVAL;
    struct tg_route_features f;
    tg_router_features(p, req, &f);
    return tg_router_decide_features(p, req, &f, targets, out);
}

/* ---- explain --------------------------------------------------------------------------- */

static json_t *features_json(const struct tg_route_features *f)
{
    json_t *ev = json_object();
    if (ev == NULL)
        return NULL;
    for (int k = 0; k < TG_ROUTE_N_KINDS; k++)
        if (f->kind_evidence[k] > 0)
            json_object_set_new(ev, KIND_NAMES[k],
                                json_real(round(f->kind_evidence[k] * 100.0) / 100.0));
    json_t *pii = json_array();
    for (unsigned b = 0; b < TG_ROUTE_N_PII; b++)
        if (f->pii & (1u << b))
            json_array_append_new(pii, json_string(tg_route_pii_name(1u << b)));
    json_t *o = json_pack(
        "{s:s, s:f, s:o, s:I, s:I, s:I, s:I, s:i, s:i, s:s, s:s?, s:s, s:b, s:i, s:b, s:b, "
        "s:I, s:b, s:o}",
        "kind", KIND_NAMES[f->kind], "kind_confidence", round(f->kind_confidence * 1000.0) / 1000.0,
        "kind_evidence", ev, "prompt_tokens", (json_int_t)f->n_prompt_tokens, "context_tokens",
        (json_int_t)f->n_context_tokens, "described_tokens", (json_int_t)f->n_described_tokens,
        "output_tokens", (json_int_t)f->n_output_tokens, "turns", (int)f->n_turns, "user_turns",
        (int)f->n_user_turns, "language", f->lang, "target_language",
        f->target_lang[0] ? f->target_lang : NULL, "script", f->script, "source_text",
        f->has_source_text, "code_blocks", (int)f->n_code_blocks, "math", f->has_math, "question",
        f->is_question, "labels", (json_int_t)f->n_labels, "schema", f->has_schema, "pii", pii);
    return o;
}

json_t *tg_router_explain(const struct tg_router_policy *p, const struct tg_route_request *req,
                          const struct tg_route_targets *targets)
{
    if (p == NULL || req == NULL)
        return NULL;
    struct tg_route_features f;
    tg_router_features(p, req, &f);
    struct tg_route_decision d;
    int rc = tg_router_decide_features(p, req, &f, targets, &d);
    json_t *fj = features_json(&f);
    if (fj == NULL)
        return NULL;
    if (rc != TG_OK) {
        return json_pack("{s:s, s:o, s:n, s:[], s:{s:n, s:s}}", "policy", p->name, "features", fj,
                         "score", "rules_fired", "decision", "tier", "error",
                         "no usable tier for this request");
    }
    json_t *rules = json_array();
    for (size_t i = 0; i < d.n_reasons; i++)
        json_array_append_new(rules, json_pack("{s:s, s:s, s:f}", "code", d.reasons[i].code, "text",
                                               d.reasons[i].text, "weight",
                                               round(d.reasons[i].weight * 1000.0) / 1000.0));
    json_t *fb = json_array();
    for (size_t i = 0; i < d.n_fallbacks; i++)
        json_array_append_new(fb, json_string(d.fallbacks[i]));
    return json_pack("{s:s, s:o, s:f, s:f, s:o, s:{s:s, s:s?, s:o, s:s, s:b, s:b, s:b}}", "policy",
                     p->name, "features", fj, "score", round(d.score * 1000.0) / 1000.0,
                     "threshold", d.threshold, "rules_fired", rules, "decision", "tier",
                     tg_route_tier_name(d.tier), "target", d.target, "fallbacks", fb, "reason",
                     d.reason, "hard", d.hard, "fallback", d.fallback, "escalation_allowed",
                     d.escalation_allowed);
}

/* ---- escalation ------------------------------------------------------------------------ */

/* The tail repeats with a short period: the last `span` bytes equal the bytes `period` before
 * them, for some period up to 200 bytes, and the repeat covers at least 3 periods. */
static bool tail_loops(const char *s, size_t n)
{
    for (size_t period = 1; period <= 200 && period * 4 <= n; period++) {
        size_t span = 0;
        while (span + period < n && s[n - 1 - span] == s[n - 1 - span - period])
            span++;
        /* whitespace-only or very short repeats ("!!!!") need more copies to count */
        if (span >= 3 * period && span >= 48)
            return true;
    }
    return false;
}

/* Share of distinct word 4-grams; 1 when too short to judge. */
static double distinct_4grams(const char *s, size_t n)
{
    enum { MAXG = 1024 };
    uint64_t words[4] = {0};
    uint64_t seen[MAXG * 2];
    memset(seen, 0, sizeof seen);
    size_t total = 0, distinct = 0, nw = 0;
    size_t i = 0;
    while (i < n && total < MAXG) {
        while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r'))
            i++;
        size_t st = i;
        while (i < n && !(s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r'))
            i++;
        if (i == st)
            break;
        words[0] = words[1];
        words[1] = words[2];
        words[2] = words[3];
        words[3] = lex_word_hash(s + st, i - st);
        if (++nw < 4)
            continue;
        uint64_t g = lex_ngram(lex_ngram(lex_ngram(words[0], words[1]), words[2]), words[3]);
        total++;
        for (size_t k = (size_t)g & (MAXG * 2 - 1);; k = (k + 1) & (MAXG * 2 - 1)) {
            if (seen[k] == g)
                break;
            if (seen[k] == 0) {
                seen[k] = g;
                distinct++;
                break;
            }
        }
    }
    return total >= 24 ? (double)distinct / (double)total : 1.0;
}

static int esc_result(struct tg_route_escalation *out, bool esc, const char *reason,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int esc_result(struct tg_route_escalation *out, bool esc, const char *reason,
                      const char *fmt, ...)
{
    out->escalate = esc;
    out->reason = reason;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->text, sizeof out->text, fmt, ap);
    va_end(ap);
    return TG_OK;
}

int tg_router_check_local_result(const struct tg_router_policy *p,
                                 const struct tg_route_decision *d,
                                 const struct tg_route_local_result *r,
                                 struct tg_route_escalation *out)
{
    if (out == NULL)
        return TG_INVAL;
    if (p == NULL || r == NULL) {
        esc_result(out, false, "ok", "nothing to check");
        return TG_INVAL;
    }
    /* find the problem first, then say whether escalation may act on it */
    const char *reason = NULL;
    char text[120] = "";
    size_t n = r->text != NULL ? r->text_len : 0;
    size_t nonspace = 0;
    for (size_t i = 0; i < n; i++)
        if (!(r->text[i] == ' ' || r->text[i] == '\n' || r->text[i] == '\t' || r->text[i] == '\r'))
            nonspace++;
    bool wants_schema = r->endpoint == TG_ROUTE_EP_EXTRACT || r->schema_valid >= 0;
    if (p->esc_empty && nonspace == 0) {
        reason = "escalate.empty";
        snprintf(text, sizeof text, "local output is empty");
    } else if (p->esc_truncated && wants_schema && r->finish_reason != NULL &&
               strcmp(r->finish_reason, "length") == 0) {
        reason = "escalate.truncated";
        snprintf(text, sizeof text, "structured output cut off at the token limit");
    } else if (p->esc_schema && r->schema_valid == 0) {
        reason = "escalate.schema_invalid";
        snprintf(text, sizeof text, "local output does not validate against the schema");
    } else if (r->confidence >= 0 && r->confidence < p->esc_min_confidence &&
               (r->endpoint == TG_ROUTE_EP_CLASSIFY || r->endpoint == TG_ROUTE_EP_EXTRACT)) {
        reason = "escalate.low_confidence";
        snprintf(text, sizeof text, "confidence %.2f < %.2f", r->confidence, p->esc_min_confidence);
    } else if (p->esc_repetition && n > 0) {
        double dg = distinct_4grams(r->text, n);
        if (tail_loops(r->text, n)) {
            reason = "escalate.repetition";
            snprintf(text, sizeof text, "output ends in a repeating loop");
        } else if (dg < p->esc_min_distinct_4grams) {
            reason = "escalate.repetition";
            snprintf(text, sizeof text, "only %.0f%% distinct word 4-grams (< %.0f%%)", dg * 100.0,
                     p->esc_min_distinct_4grams * 100.0);
        }
    }
    if (reason == NULL)
        return esc_result(out, false, "ok", "local result passed the checks");
    if (!p->esc_enabled)
        return esc_result(out, false, "escalation.disabled", "%s; escalation is off", text);
    if (d != NULL && !d->escalation_allowed)
        return esc_result(out, false, "escalation.not_allowed",
                          "%s; this request may not go remote", text);
    return esc_result(out, true, reason, "%s", text);
}
