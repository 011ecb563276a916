/* The process-wide Prometheus registry: families of series keyed by their rendered label pairs,
 * one mutex, text exposition written by hand (format 0.0.4). */
#include "metrics.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cost.h"
#include "metrics_int.h"
#include "tg/err.h"

enum fam_kind { FAM_COUNTER, FAM_COUNTER_NANO, FAM_HISTOGRAM };

struct series {
    char *labels;        /* `a="x",b="y"` (escaped), "" for none */
    uint64_t value;      /* FAM_COUNTER */
    int64_t nano;        /* FAM_COUNTER_NANO */
    uint64_t *buckets;   /* FAM_HISTOGRAM: cumulative counts are built at render time */
    double sum;
    uint64_t count;
};

struct family {
    const char *name;    /* without the tiergate_ prefix */
    const char *help;
    enum fam_kind kind;
    size_t max_series;   /* past this, new label sets go to the family's overflow series */
    const char *overflow;
    struct series *s;
    size_t n, cap;
    uint32_t *slots;     /* open-addressing index of s by label hash: series index + 1, 0 = free */
    size_t n_slots;      /* power of two, > 2 × n */
    const double *bounds; /* FAM_HISTOGRAM: upper bounds in seconds; NULL = k_bounds */
    size_t n_bounds;
};

/* Latency buckets in seconds: from a cache hit (ms) to a long remote generation (minutes). */
static const double k_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                  1,     2.5,  5,     10,   30,   60,  120};
#define N_BOUNDS (sizeof k_bounds / sizeof k_bounds[0])

/* The gateway's own time per request is tens of microseconds: 5 µs steps up to 50 µs, then
 * coarser, so that p50/p99 read from the buckets are within a few µs where it matters. */
static const double k_overhead_bounds[] = {
    5e-6,  10e-6, 15e-6, 20e-6, 25e-6,  30e-6,  35e-6,  40e-6,  45e-6,  50e-6,
    60e-6, 70e-6, 80e-6, 90e-6, 100e-6, 125e-6, 150e-6, 175e-6, 200e-6, 250e-6,
    300e-6, 400e-6, 500e-6, 750e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3};

static const double *fam_bounds(const struct family *f, size_t *n)
{
    *n = f->bounds != NULL ? f->n_bounds : N_BOUNDS;
    return f->bounds != NULL ? f->bounds : k_bounds;
}

enum {
    F_REQUESTS, F_DURATION, F_TTFT, F_UPSTREAM_DURATION, F_TOKENS, F_COST, F_AVOIDED, F_CACHE,
    F_ROUTE, F_ESCALATIONS, F_FALLBACKS, F_UPSTREAM_ERRORS, F_BAD_REQUESTS, F_TENANT_REQUESTS,
    F_TENANT_COST, F_LEDGER_ERRORS, F_OVERHEAD, F_COUNT
};

#define MAX_REASONS 64

struct registry {
    pthread_mutex_t lock;
    struct family f[F_COUNT];
    char *version;
    char **names;        /* model, alias and provider names from the config (label allow-list) */
    size_t n_names;
    char **tenants;      /* metrics.tenant_labels */
    size_t n_tenants;
    tg_metrics_gauges_fn gauges_fn;
    void *gauges_user;
    tg_metrics_circuits_fn circuits_fn;
    void *circuits_user;
    bool upstream_hooked; /* tg_metrics_upstream_duration() has reported: it owns the histogram */
};

static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
static struct registry *g_reg;

#define FAM(n, h, k, max, over)                                                                    \
    {.name = (n), .help = (h), .kind = (k), .max_series = (max), .overflow = (over)}
static const struct family k_families[F_COUNT] = {
    [F_REQUESTS] = FAM("requests_total", "Requests answered, by endpoint, serving tier, model and HTTP status.",
                    FAM_COUNTER, 4096, "endpoint=\"other\",tier=\"other\",model=\"other\",status=\"other\""),
    [F_DURATION] = FAM("request_duration_seconds", "Time from accept to the last byte of the answer.",
                    FAM_HISTOGRAM, 16, "tier=\"other\""),
    [F_TTFT] = FAM("time_to_first_token_seconds", "Time from accept to the first token or byte of the answer.",
                FAM_HISTOGRAM, 16, "tier=\"other\""),
    [F_UPSTREAM_DURATION] = FAM("upstream_duration_seconds", "Time spent in remote provider calls.",
                             FAM_HISTOGRAM, 256, "target=\"other\""),
    [F_TOKENS] = FAM("tokens_total", "Tokens processed, by tier, model and type (prompt, completion, cached).",
                  FAM_COUNTER, 2048, "tier=\"other\",model=\"other\",type=\"other\""),
    [F_COST] = FAM("cost_usd_total", "What requests cost in USD (remote prices, local price per token; cache hits cost 0).",
                FAM_COUNTER_NANO, 1024, "tier=\"other\",model=\"other\""),
    [F_AVOIDED] = FAM("cost_avoided_usd_total", "What local and cached answers would have cost on the reference remote model, in USD.",
                   FAM_COUNTER_NANO, 4, "reason=\"other\""),
    [F_CACHE] = FAM("cache_requests_total", "Response cache look-ups by result (hit, miss, bypass).",
                 FAM_COUNTER, 8, "result=\"other\""),
    [F_ROUTE] = FAM("route_decisions_total", "Router decisions by tier and deciding reason code.",
                 FAM_COUNTER, 2 * MAX_REASONS, "tier=\"other\",reason=\"other\""),
    [F_ESCALATIONS] = FAM("escalations_total", "Local answers that failed their check and were retried remote, by reason.",
                       FAM_COUNTER, MAX_REASONS, "reason=\"other\""),
    [F_FALLBACKS] = FAM("fallbacks_total", "Fallback hops taken to another target, by reason.",
                     FAM_COUNTER, MAX_REASONS, "reason=\"other\""),
    [F_UPSTREAM_ERRORS] = FAM("upstream_errors_total", "Failed remote provider attempts, by target and kind.",
                           FAM_COUNTER, 1024, "target=\"other\",kind=\"other\""),
    [F_BAD_REQUESTS] = FAM("bad_requests_total", "Requests rejected before routing, by reason.",
                        FAM_COUNTER, MAX_REASONS, "reason=\"other\""),
    [F_TENANT_REQUESTS] = FAM("tenant_requests_total", "Requests by tenant (tenants on metrics.tenant_labels; others \"other\", open mode \"none\").",
                           FAM_COUNTER, 1024, "tenant=\"other\""),
    [F_TENANT_COST] = FAM("tenant_cost_usd_total", "What requests cost in USD, by tenant (as tenant_requests_total).",
                       FAM_COUNTER_NANO, 1024, "tenant=\"other\""),
    [F_LEDGER_ERRORS] = FAM("usage_ledger_errors_total", "Request records the Redis usage ledger (/v1/usage) did not get, by kind (unavailable, refused, lost).",
                            FAM_COUNTER, 8, "kind=\"other\""),
    [F_OVERHEAD] = {.name = "gateway_overhead_seconds",
                    .help = "Time inside tiergate per proxied remote request, provider wait excluded: from the request parsed to the upstream request written, plus from the upstream response complete to the reply written.",
                    .kind = FAM_HISTOGRAM, .max_series = 1, .overflow = "",
                    .bounds = k_overhead_bounds,
                    .n_bounds = sizeof k_overhead_bounds / sizeof k_overhead_bounds[0]},
};

/* ---- label values ------------------------------------------------------------------------ */

static const char *const k_endpoints[] = {"chat",    "completions", "responses", "embeddings",
                                          "classify", "extract",    "explain",   "jobs",
                                          "models",   "other"};
static const char *const k_tiers[] = {"local", "remote", "cache", "none"};
static const char *const k_cache_results[] = {"hit", "miss", "bypass"};

static const char *one_of(const char *v, const char *const *set, size_t n, const char *dflt)
{
    if (v == NULL || v[0] == '\0')
        return dflt;
    for (size_t i = 0; i < n; i++)
        if (strcmp(v, set[i]) == 0)
            return set[i];
    return "other";
}
#define ONE_OF(v, set, dflt) one_of((v), (set), sizeof(set) / sizeof((set)[0]), (dflt))

/* A config-defined name (model, alias, provider) or "other"; "none" for absent. Caller holds the
 * lock (names change on reload). */
static const char *config_name(const struct registry *g, const char *v)
{
    if (v == NULL || v[0] == '\0')
        return "none";
    for (size_t i = 0; i < g->n_names; i++)
        if (strcmp(v, g->names[i]) == 0)
            return g->names[i];
    return "other";
}

static const char *tenant_name(const struct registry *g, const char *v)
{
    if (v == NULL || v[0] == '\0')
        return "none";
    for (size_t i = 0; i < g->n_tenants; i++)
        if (strcmp(v, g->tenants[i]) == 0)
            return g->tenants[i];
    return "other";
}

/* Codes from the router and the executor are short static identifiers; anything that does not
 * look like one (free text, a key, a URL) would be a cardinality leak and becomes "other". */
static const char *code_value(const char *v, size_t maxlen)
{
    if (v == NULL || v[0] == '\0')
        return "none";
    size_t n = 0;
    for (; v[n] != '\0'; n++) {
        unsigned char c = (unsigned char)v[n];
        if (n >= maxlen || !(islower(c) || isdigit(c) || c == '.' || c == '_' || c == '-'))
            return "other";
    }
    return v;
}

int tg_metrics_escape_label(struct tg_buf *out, const char *v)
{
    int rc = TG_OK;
    while (*v != '\0' && rc == TG_OK) {
        size_t run = strcspn(v, "\\\"\n"); /* copy plain runs in one go */
        if (run > 0)
            rc = tg_buf_append(out, v, run);
        v += run;
        if (*v == '\0' || rc != TG_OK)
            break;
        rc = tg_buf_append(out, *v == '\\' ? "\\\\" : *v == '"' ? "\\\"" : "\\n", 2);
        v++;
    }
    return rc;
}

/* Render name="value" pairs (NULL-terminated list of name, value) into buf. */
static int labels_build(struct tg_buf *b, ...)
{
    va_list ap;
    va_start(ap, b);
    tg_buf_reset(b);
    int rc = tg_buf_append(b, "", 0);
    bool first = true;
    for (;;) {
        const char *name = va_arg(ap, const char *);
        if (name == NULL)
            break;
        const char *value = va_arg(ap, const char *);
        if (rc == TG_OK && !first)
            rc = tg_buf_append(b, ",", 1);
        if (rc == TG_OK)
            rc = tg_buf_append_str(b, name);
        if (rc == TG_OK)
            rc = tg_buf_append(b, "=\"", 2);
        if (rc == TG_OK)
            rc = tg_metrics_escape_label(b, value);
        if (rc == TG_OK)
            rc = tg_buf_append(b, "\"", 1);
        first = false;
    }
    va_end(ap);
    return rc;
}

/* ---- series ------------------------------------------------------------------------------ */

static uint32_t label_hash(const char *labels)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)labels; *p != '\0'; p++)
        h = (h ^ *p) * 16777619u;
    return h;
}

static struct series *series_find(struct family *f, const char *labels)
{
    if (f->n_slots == 0)
        return NULL;
    size_t mask = f->n_slots - 1;
    for (size_t i = label_hash(labels) & mask;; i = (i + 1) & mask) {
        uint32_t k = f->slots[i];
        if (k == 0)
            return NULL;
        if (strcmp(f->s[k - 1].labels, labels) == 0)
            return &f->s[k - 1];
    }
}

/* Keep the index at most half full; rebuilt from the series array when it grows. */
static int index_grow(struct family *f)
{
    if (f->n_slots > 2 * (f->n + 1))
        return TG_OK;
    size_t n_slots = f->n_slots ? f->n_slots * 2 : 16;
    while (n_slots <= 2 * (f->n + 1))
        n_slots *= 2;
    uint32_t *slots = calloc(n_slots, sizeof *slots);
    if (slots == NULL)
        return TG_NOMEM;
    for (size_t k = 0; k < f->n; k++) {
        size_t i = label_hash(f->s[k].labels) & (n_slots - 1);
        while (slots[i] != 0)
            i = (i + 1) & (n_slots - 1);
        slots[i] = (uint32_t)k + 1;
    }
    free(f->slots);
    f->slots = slots;
    f->n_slots = n_slots;
    return TG_OK;
}

static struct series *series_add(struct family *f, const char *labels)
{
    if (index_grow(f) != TG_OK)
        return NULL;
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        struct series *s = realloc(f->s, cap * sizeof *s);
        if (s == NULL)
            return NULL;
        f->s = s;
        f->cap = cap;
    }
    struct series *s = &f->s[f->n];
    *s = (struct series){.labels = strdup(labels)};
    if (s->labels == NULL)
        return NULL;
    if (f->kind == FAM_HISTOGRAM) {
        size_t nb;
        fam_bounds(f, &nb);
        s->buckets = calloc(nb, sizeof *s->buckets);
        if (s->buckets == NULL) {
            free(s->labels);
            return NULL;
        }
    }
    size_t mask = f->n_slots - 1;
    size_t i = label_hash(labels) & mask;
    while (f->slots[i] != 0)
        i = (i + 1) & mask;
    f->slots[i] = (uint32_t)f->n + 1;
    f->n++;
    return s;
}

/* The series for labels; a new one while the family is under its cap, else the overflow series.
 * NULL only when memory runs out (the sample is then dropped, never the process). */
static struct series *series_get(struct family *f, const char *labels)
{
    struct series *s = series_find(f, labels);
    if (s != NULL)
        return s;
    if (f->n >= f->max_series) {
        s = series_find(f, f->overflow);
        if (s != NULL)
            return s;
        labels = f->overflow;
    }
    return series_add(f, labels);
}

static void counter_add(struct family *f, const char *labels, uint64_t n)
{
    struct series *s = series_get(f, labels);
    if (s != NULL)
        s->value += n;
}

static void nano_add(struct family *f, const char *labels, int64_t nano)
{
    struct series *s = series_get(f, labels);
    if (s != NULL)
        s->nano += nano;
}

static void histogram_observe(struct family *f, const char *labels, double v)
{
    if (!(v >= 0) || isinf(v))
        return;
    struct series *s = series_get(f, labels);
    if (s == NULL)
        return;
    size_t nb;
    const double *bounds = fam_bounds(f, &nb);
    for (size_t i = 0; i < nb; i++) {
        if (v <= bounds[i]) {
            s->buckets[i]++;
            break;
        }
    }
    s->sum += v;
    s->count++;
}

/* ---- lifecycle --------------------------------------------------------------------------- */

static void list_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void names_free(struct registry *g)
{
    list_free(g->names, g->n_names);
    g->names = NULL;
    g->n_names = 0;
    list_free(g->tenants, g->n_tenants);
    g->tenants = NULL;
    g->n_tenants = 0;
}

static int names_take(struct registry *g, const struct tg_config *cfg)
{
    size_t n = cfg->n_models + cfg->n_aliases + cfg->n_providers;
    size_t nt = cfg->metrics.n_tenant_labels;
    char **names = calloc(n ? n : 1, sizeof *names);
    char **tenants = calloc(nt ? nt : 1, sizeof *tenants);
    if (names == NULL || tenants == NULL) {
        free(names);
        free(tenants);
        return TG_NOMEM;
    }
    size_t k = 0;
    bool ok = true;
    for (size_t i = 0; i < cfg->n_models; i++)
        ok = (names[k++] = strdup(cfg->models[i].name)) != NULL && ok;
    for (size_t i = 0; i < cfg->n_aliases; i++)
        ok = (names[k++] = strdup(cfg->aliases[i].name)) != NULL && ok;
    for (size_t i = 0; i < cfg->n_providers; i++)
        ok = (names[k++] = strdup(cfg->providers[i].name)) != NULL && ok;
    for (size_t i = 0; i < nt; i++)
        ok = (tenants[i] = strdup(cfg->metrics.tenant_labels[i])) != NULL && ok;
    if (!ok) {
        list_free(names, k);
        list_free(tenants, nt);
        return TG_NOMEM;
    }
    names_free(g);
    g->names = names;
    g->n_names = k;
    g->tenants = tenants;
    g->n_tenants = nt;
    return TG_OK;
}

static void registry_free(struct registry *g)
{
    if (g == NULL)
        return;
    for (int i = 0; i < F_COUNT; i++) {
        for (size_t j = 0; j < g->f[i].n; j++) {
            free(g->f[i].s[j].labels);
            free(g->f[i].s[j].buckets);
        }
        free(g->f[i].s);
        free(g->f[i].slots);
    }
    names_free(g);
    free(g->version);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

int tg_metrics_init(const struct tg_config *cfg, const char *version)
{
    pthread_mutex_lock(&g_init_lock);
    if (g_reg != NULL) {
        pthread_mutex_unlock(&g_init_lock);
        return TG_INVAL;
    }
    struct registry *g = calloc(1, sizeof *g);
    if (g == NULL) {
        pthread_mutex_unlock(&g_init_lock);
        return TG_NOMEM;
    }
    pthread_mutex_init(&g->lock, NULL);
    memcpy(g->f, k_families, sizeof g->f);
    g->version = strdup(version != NULL ? version : "unknown");
    int rc = g->version != NULL ? TG_OK : TG_NOMEM;
    if (rc == TG_OK && cfg != NULL)
        rc = names_take(g, cfg);
    /* Series every dashboard query expects, present from the start so rate() sees them at 0. */
    const char *avoided[] = {"reason=\"local\"", "reason=\"cache\""};
    for (size_t i = 0; rc == TG_OK && i < 2; i++)
        rc = series_get(&g->f[F_AVOIDED], avoided[i]) != NULL ? TG_OK : TG_NOMEM;
    const char *cache[] = {"result=\"hit\"", "result=\"miss\"", "result=\"bypass\""};
    for (size_t i = 0; rc == TG_OK && i < 3; i++)
        rc = series_get(&g->f[F_CACHE], cache[i]) != NULL ? TG_OK : TG_NOMEM;
    if (rc != TG_OK) {
        registry_free(g);
        pthread_mutex_unlock(&g_init_lock);
        return rc;
    }
    g_reg = g;
    pthread_mutex_unlock(&g_init_lock);
    return TG_OK;
}

void tg_metrics_configure(const struct tg_config *cfg)
{
    pthread_mutex_lock(&g_init_lock);
    struct registry *g = g_reg;
    if (g != NULL && cfg != NULL) {
        pthread_mutex_lock(&g->lock);
        names_take(g, cfg); /* on TG_NOMEM the old allow-list stays: still bounded */
        pthread_mutex_unlock(&g->lock);
    }
    pthread_mutex_unlock(&g_init_lock);
}

void tg_metrics_shutdown(void)
{
    pthread_mutex_lock(&g_init_lock);
    registry_free(g_reg);
    g_reg = NULL;
    pthread_mutex_unlock(&g_init_lock);
}

void tg_metrics_set_gauges_fn(tg_metrics_gauges_fn fn, void *user)
{
    pthread_mutex_lock(&g_init_lock);
    if (g_reg != NULL) {
        pthread_mutex_lock(&g_reg->lock);
        g_reg->gauges_fn = fn;
        g_reg->gauges_user = user;
        pthread_mutex_unlock(&g_reg->lock);
    }
    pthread_mutex_unlock(&g_init_lock);
}

void tg_metrics_set_circuits_fn(tg_metrics_circuits_fn fn, void *user)
{
    pthread_mutex_lock(&g_init_lock);
    if (g_reg != NULL) {
        pthread_mutex_lock(&g_reg->lock);
        g_reg->circuits_fn = fn;
        g_reg->circuits_user = user;
        pthread_mutex_unlock(&g_reg->lock);
    }
    pthread_mutex_unlock(&g_init_lock);
}

/* ---- recording --------------------------------------------------------------------------- */

/* Lock the registry for an update: g_init_lock pins it against a concurrent shutdown, the
 * registry's own lock guards the values. NULL (with nothing held) before init. Shutdown happens
 * after the I/O threads stop, so the init lock is never contended in practice. */
static struct registry *reg_lock(void)
{
    pthread_mutex_lock(&g_init_lock);
    struct registry *g = g_reg;
    if (g == NULL) {
        pthread_mutex_unlock(&g_init_lock);
        return NULL;
    }
    pthread_mutex_lock(&g->lock);
    return g;
}

static void reg_unlock(struct registry *g)
{
    pthread_mutex_unlock(&g->lock);
    pthread_mutex_unlock(&g_init_lock);
}

static int64_t clamp_tokens(int64_t n)
{
    return n > 0 ? n : 0;
}

void tg_metrics_record(const struct tg_request_record *r)
{
    if (r == NULL)
        return;
    struct tg_buf lb;
    tg_buf_init(&lb, 4096);
    char status[16];
    if (r->status >= 100 && r->status <= 599)
        snprintf(status, sizeof status, "%d", r->status);
    else
        snprintf(status, sizeof status, "other");
    struct registry *g = reg_lock();
    if (g != NULL) {
        const char *endpoint = ONE_OF(r->endpoint, k_endpoints, "other");
        const char *tier = ONE_OF(r->tier, k_tiers, "none");
        const char *model = config_name(g, r->model);

        if (labels_build(&lb, "endpoint", endpoint, "tier", tier, "model", model, "status", status,
                         (char *)NULL) == TG_OK)
            counter_add(&g->f[F_REQUESTS], lb.data, 1);
        if (labels_build(&lb, "tier", tier, (char *)NULL) == TG_OK) {
            histogram_observe(&g->f[F_DURATION], lb.data, r->duration_s);
            if (r->ttft_s >= 0)
                histogram_observe(&g->f[F_TTFT], lb.data, r->ttft_s);
        }
        /* Per-attempt durations from the executor's hook are the better data; the request's
         * total remote time stands in only while no hook reports, never both. */
        if (r->upstream_s >= 0 && !g->upstream_hooked &&
            labels_build(&lb, "target", model, (char *)NULL) == TG_OK)
            histogram_observe(&g->f[F_UPSTREAM_DURATION], lb.data, r->upstream_s);

        const struct {
            const char *type;
            int64_t n;
        } tok[] = {{"prompt", r->prompt_tokens},
                   {"completion", r->completion_tokens},
                   {"cached", r->cached_tokens}};
        for (size_t i = 0; i < 3; i++)
            if (clamp_tokens(tok[i].n) > 0 &&
                labels_build(&lb, "tier", tier, "model", model, "type", tok[i].type,
                             (char *)NULL) == TG_OK)
                counter_add(&g->f[F_TOKENS], lb.data, (uint64_t)tok[i].n);

        /* Every served request gets its cost series, even at 0, so cost/requests ratios exist. */
        if (strcmp(tier, "none") != 0 &&
            labels_build(&lb, "tier", tier, "model", model, (char *)NULL) == TG_OK)
            nano_add(&g->f[F_COST], lb.data, tg_cost_nano(r->cost_usd));
        if (labels_build(&lb, "tenant", tenant_name(g, r->tenant), (char *)NULL) == TG_OK) {
            counter_add(&g->f[F_TENANT_REQUESTS], lb.data, 1);
            nano_add(&g->f[F_TENANT_COST], lb.data, tg_cost_nano(r->cost_usd));
        }
        int64_t avoided = tg_cost_nano(r->avoided_usd);
        if (avoided != 0 && r->avoided_reason != NULL &&
            labels_build(&lb, "reason",
                         ONE_OF(r->avoided_reason, ((const char *const[]){"local", "cache"}), "other"),
                         (char *)NULL) == TG_OK)
            nano_add(&g->f[F_AVOIDED], lb.data, avoided);

        if (r->cache_result != NULL &&
            labels_build(&lb, "result", ONE_OF(r->cache_result, k_cache_results, "other"),
                         (char *)NULL) == TG_OK)
            counter_add(&g->f[F_CACHE], lb.data, 1);
        if (r->route_tier != NULL &&
            labels_build(&lb, "tier",
                         ONE_OF(r->route_tier, ((const char *const[]){"local", "remote"}), "other"),
                         "reason", code_value(r->route_reason, 48), (char *)NULL) == TG_OK)
            counter_add(&g->f[F_ROUTE], lb.data, 1);
        if (r->escalated &&
            labels_build(&lb, "reason", code_value(r->escalation_reason, 48), (char *)NULL) == TG_OK)
            counter_add(&g->f[F_ESCALATIONS], lb.data, 1);
        if (r->fallbacks > 0 &&
            labels_build(&lb, "reason", code_value(r->fallback_reason, 48), (char *)NULL) == TG_OK)
            counter_add(&g->f[F_FALLBACKS], lb.data, (uint64_t)r->fallbacks);
        reg_unlock(g);
    }
    tg_buf_free(&lb);
    tg_usage_record_hook(r);
}

void tg_metrics_bad_request(const char *reason)
{
    struct tg_buf lb;
    tg_buf_init(&lb, 1024);
    struct registry *g = reg_lock();
    if (g != NULL) {
        if (labels_build(&lb, "reason", code_value(reason, 48), (char *)NULL) == TG_OK)
            counter_add(&g->f[F_BAD_REQUESTS], lb.data, 1);
        reg_unlock(g);
    }
    tg_buf_free(&lb);
}

void tg_metrics_ledger_error(const char *kind)
{
    struct tg_buf lb;
    tg_buf_init(&lb, 256);
    struct registry *g = reg_lock();
    if (g != NULL) {
        if (labels_build(&lb, "kind", code_value(kind, 16), (char *)NULL) == TG_OK)
            counter_add(&g->f[F_LEDGER_ERRORS], lb.data, 1);
        reg_unlock(g);
    }
    tg_buf_free(&lb);
}

void tg_metrics_upstream_error(const char *target, const char *kind)
{
    struct tg_buf lb;
    tg_buf_init(&lb, 1024);
    struct registry *g = reg_lock();
    if (g != NULL) {
        if (labels_build(&lb, "target", config_name(g, target), "kind", code_value(kind, 32),
                         (char *)NULL) == TG_OK)
            counter_add(&g->f[F_UPSTREAM_ERRORS], lb.data, 1);
        reg_unlock(g);
    }
    tg_buf_free(&lb);
}

void tg_metrics_upstream_duration(const char *target, double seconds)
{
    struct tg_buf lb;
    tg_buf_init(&lb, 1024);
    struct registry *g = reg_lock();
    if (g != NULL) {
        if (!g->upstream_hooked) {
            /* Drop what the request records stood in with, so the histogram has one source. */
            struct family *f = &g->f[F_UPSTREAM_DURATION];
            for (size_t i = 0; i < f->n; i++) {
                memset(f->s[i].buckets, 0, N_BOUNDS * sizeof *f->s[i].buckets);
                f->s[i].sum = 0;
                f->s[i].count = 0;
            }
            g->upstream_hooked = true;
        }
        if (labels_build(&lb, "target", config_name(g, target), (char *)NULL) == TG_OK)
            histogram_observe(&g->f[F_UPSTREAM_DURATION], lb.data, seconds);
        reg_unlock(g);
    }
    tg_buf_free(&lb);
}

void tg_metrics_gateway_overhead(double seconds)
{
    struct registry *g = reg_lock();
    if (g != NULL) {
        histogram_observe(&g->f[F_OVERHEAD], "", seconds);
        reg_unlock(g);
    }
}

/* ---- exposition -------------------------------------------------------------------------- */

static int put_double(struct tg_buf *out, double v)
{
    if (isnan(v))
        return tg_buf_append_str(out, "NaN");
    if (isinf(v))
        return tg_buf_append_str(out, v > 0 ? "+Inf" : "-Inf");
    return tg_buf_printf(out, "%.17g", v);
}

static int put_header(struct tg_buf *out, const char *name, const char *help, const char *type)
{
    return tg_buf_printf(out, "# HELP tiergate_%s %s\n# TYPE tiergate_%s %s\n", name, help, name,
                         type);
}

static int render_family(struct tg_buf *out, const struct family *f)
{
    static const char *const types[] = {"counter", "counter", "histogram"};
    int rc = put_header(out, f->name, f->help, types[f->kind]);
    for (size_t i = 0; i < f->n && rc == TG_OK; i++) {
        const struct series *s = &f->s[i];
        const char *open = s->labels[0] ? "{" : "", *close = s->labels[0] ? "}" : "";
        if (f->kind == FAM_COUNTER) {
            rc = tg_buf_printf(out, "tiergate_%s%s%s%s %llu\n", f->name, open, s->labels, close,
                               (unsigned long long)s->value);
        } else if (f->kind == FAM_COUNTER_NANO) {
            char usd[40];
            rc = tg_buf_printf(out, "tiergate_%s%s%s%s %s\n", f->name, open, s->labels, close,
                               tg_cost_format_usd(s->nano, usd, sizeof usd));
        } else {
            uint64_t cum = 0;
            const char *sep = s->labels[0] ? "," : "";
            size_t nb;
            const double *bounds = fam_bounds(f, &nb);
            for (size_t b = 0; b < nb && rc == TG_OK; b++) {
                cum += s->buckets[b];
                rc = tg_buf_printf(out, "tiergate_%s_bucket{%s%sle=\"%g\"} %llu\n", f->name,
                                   s->labels, sep, bounds[b], (unsigned long long)cum);
            }
            if (rc == TG_OK)
                rc = tg_buf_printf(out, "tiergate_%s_bucket{%s%sle=\"+Inf\"} %llu\n", f->name,
                                   s->labels, sep, (unsigned long long)s->count);
            if (rc == TG_OK)
                rc = tg_buf_printf(out, "tiergate_%s_sum%s%s%s ", f->name, open, s->labels, close);
            if (rc == TG_OK)
                rc = put_double(out, s->sum);
            if (rc == TG_OK)
                rc = tg_buf_printf(out, "\ntiergate_%s_count%s%s%s %llu\n", f->name, open,
                                   s->labels, close, (unsigned long long)s->count);
        }
    }
    return rc;
}

static int put_gauge(struct tg_buf *out, const char *name, const char *help, double v)
{
    int rc = put_header(out, name, help, "gauge");
    if (rc == TG_OK && v >= 0) {
        rc = tg_buf_printf(out, "tiergate_%s ", name);
        if (rc == TG_OK)
            rc = put_double(out, v);
        if (rc == TG_OK)
            rc = tg_buf_append(out, "\n", 1);
    }
    return rc;
}

struct circuit_visit {
    struct tg_buf *lines;
    struct registry *g;
    size_t n;
};

static void on_circuit(void *vctx, const char *target, int state)
{
    struct circuit_visit *cv = vctx;
    if (cv->n >= 1024 || target == NULL)
        return;
    /* Names are checked against the allow-list later, under the registry lock. */
    tg_buf_printf(cv->lines, "%d ", state < 0 ? 0 : state > 2 ? 2 : state);
    tg_buf_append(cv->lines, target, strcspn(target, "\n"));
    tg_buf_append(cv->lines, "\n", 1);
    cv->n++;
}

int tg_metrics_render(struct tg_buf *out)
{
    pthread_mutex_lock(&g_init_lock);
    struct registry *g = g_reg;
    if (g == NULL) {
        pthread_mutex_unlock(&g_init_lock);
        return TG_OK;
    }
    pthread_mutex_lock(&g->lock);
    tg_metrics_gauges_fn gauges_fn = g->gauges_fn;
    void *gauges_user = g->gauges_user;
    tg_metrics_circuits_fn circuits_fn = g->circuits_fn;
    void *circuits_user = g->circuits_user;
    pthread_mutex_unlock(&g->lock);

    /* Pull gauges without the registry lock: the callbacks take their owners' locks. */
    struct tg_metrics_gauges gv = {-1, -1, -1, -1, -1, 0};
    if (gauges_fn != NULL)
        gauges_fn(gauges_user, &gv);
    struct tg_buf circuits;
    tg_buf_init(&circuits, 1 << 20);
    struct circuit_visit cv = {&circuits, g, 0};
    if (circuits_fn != NULL)
        circuits_fn(circuits_user, on_circuit, &cv);

    pthread_mutex_lock(&g->lock);
    int rc = TG_OK;
    for (int i = 0; i < F_COUNT && rc == TG_OK; i++)
        rc = render_family(out, &g->f[i]);
    if (rc == TG_OK)
        rc = put_header(out, "circuit_state",
                        "Circuit breaker state per remote target: 0 closed, 1 half-open, 2 open.",
                        "gauge");
    for (const char *p = circuits.data; rc == TG_OK && p != NULL && *p != '\0';) {
        const char *nl = strchr(p, '\n');
        char name[256];
        int state = p[0] - '0';
        size_t n = (size_t)(nl - p) - 2;
        snprintf(name, sizeof name, "%.*s", (int)(n < sizeof name ? n : sizeof name - 1), p + 2);
        rc = tg_buf_append_str(out, "tiergate_circuit_state{target=\"");
        if (rc == TG_OK)
            rc = tg_metrics_escape_label(out, config_name(g, name));
        if (rc == TG_OK)
            rc = tg_buf_printf(out, "\"} %d\n", state);
        p = nl + 1;
    }
    if (rc == TG_OK)
        rc = put_gauge(out, "engine_slots_busy", "Local engine sequences decoding now.",
                       gv.engine_slots_busy);
    if (rc == TG_OK)
        rc = put_gauge(out, "engine_queue_depth", "Local engine jobs waiting for a slot.",
                       gv.engine_queue_depth);
    if (rc == TG_OK)
        rc = put_gauge(out, "engine_tokens_per_second", "Local engine recent generation rate.",
                       gv.engine_tokens_per_second);
    if (rc == TG_OK)
        rc = put_gauge(out, "inflight_requests", "Requests accepted and not yet answered.",
                       gv.inflight_requests);
    if (rc == TG_OK && gv.redis_up >= 0)
        rc = put_gauge(out, "redis_up", "1 when every I/O thread's Redis connection is up.",
                       gv.redis_up);
    if (rc == TG_OK && gv.redis_up >= 0) {
        rc = put_header(out, "redis_outages_total", "Redis outages since start (one per outage).",
                        "counter");
        if (rc == TG_OK)
            rc = tg_buf_printf(out, "tiergate_redis_outages_total %.0f\n", gv.redis_outages_total);
    }
    if (rc == TG_OK)
        rc = put_header(out, "build_info", "tiergate build information (always 1).", "gauge");
    if (rc == TG_OK)
        rc = tg_buf_append_str(out, "tiergate_build_info{version=\"");
    if (rc == TG_OK)
        rc = tg_metrics_escape_label(out, g->version);
    if (rc == TG_OK)
        rc = tg_buf_append_str(out, "\"} 1\n");
    pthread_mutex_unlock(&g->lock);
    pthread_mutex_unlock(&g_init_lock);
    tg_buf_free(&circuits);
    return rc;
}
