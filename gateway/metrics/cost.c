#include "cost.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* price_per_mtok USD per 1e6 tokens = price × 1e3 nano-dollars per token. Computed in long double
 * so token counts up to 2^53 times prices with a few decimals stay exact before the one rounding. */
static int64_t price_nano(int64_t tokens, double usd_per_mtok)
{
    if (tokens <= 0 || !(usd_per_mtok > 0))
        return 0;
    long double v = (long double)tokens * (long double)usd_per_mtok * 1000.0L;
    if (v >= 9.2e18L)
        return INT64_MAX;
    return (int64_t)llroundl(v);
}

static int64_t add_sat(int64_t a, int64_t b)
{
    return a > INT64_MAX - b ? INT64_MAX : a + b;
}

int64_t tg_cost_remote_nano(const struct tg_cfg_model *m, int64_t prompt_tokens,
                            int64_t completion_tokens)
{
    if (m == NULL)
        return 0;
    return add_sat(price_nano(prompt_tokens, m->input_usd_per_mtok),
                   price_nano(completion_tokens, m->output_usd_per_mtok));
}

int64_t tg_cost_local_nano(const struct tg_config *cfg, int64_t prompt_tokens,
                           int64_t completion_tokens)
{
    if (cfg == NULL)
        return 0;
    int64_t p = prompt_tokens > 0 ? prompt_tokens : 0;
    int64_t c = completion_tokens > 0 ? completion_tokens : 0;
    return price_nano(p > INT64_MAX - c ? INT64_MAX : p + c, cfg->local.price_per_mtok_usd);
}

int64_t tg_cost_reference_nano(const struct tg_config *cfg, int64_t prompt_tokens,
                               int64_t completion_tokens)
{
    if (cfg == NULL || cfg->metrics.reference_model == NULL)
        return 0;
    return tg_cost_remote_nano(tg_config_model(cfg, cfg->metrics.reference_model), prompt_tokens,
                               completion_tokens);
}

/* The served name may be an alias (`auto`); its price is the one of the model it resolves to on
 * the tier that served it. */
static const struct tg_cfg_model *served_model(const struct tg_config *cfg, const char *tier,
                                               const char *model)
{
    if (model == NULL)
        return NULL;
    const struct tg_cfg_model *m = tg_config_model(cfg, model);
    if (m != NULL)
        return m;
    const struct tg_cfg_alias *a = tg_config_alias(cfg, model);
    if (a == NULL)
        return NULL;
    return tg_config_model(cfg, strcmp(tier, "local") == 0 ? a->local : a->remote);
}

void tg_cost_compute(const struct tg_config *cfg, const char *tier, const char *model,
                     int64_t prompt_tokens, int64_t completion_tokens, struct tg_cost *out)
{
    *out = (struct tg_cost){0};
    if (cfg == NULL || tier == NULL)
        return;
    if (strcmp(tier, "remote") == 0) {
        out->cost_nano =
            tg_cost_remote_nano(served_model(cfg, tier, model), prompt_tokens, completion_tokens);
    } else if (strcmp(tier, "local") == 0) {
        out->cost_nano = tg_cost_local_nano(cfg, prompt_tokens, completion_tokens);
        out->avoided_nano = tg_cost_reference_nano(cfg, prompt_tokens, completion_tokens);
        out->avoided_reason = "local";
    } else if (strcmp(tier, "cache") == 0) {
        out->avoided_nano = tg_cost_reference_nano(cfg, prompt_tokens, completion_tokens);
        out->avoided_reason = "cache";
    }
    out->cost_usd = tg_cost_usd(out->cost_nano);
    out->avoided_usd = tg_cost_usd(out->avoided_nano);
}

double tg_cost_usd(int64_t nano)
{
    return (double)nano / 1e9;
}

int64_t tg_cost_nano(double usd)
{
    if (!(usd == usd) || usd <= -9.2e9 || usd >= 9.2e9)
        return usd > 0 ? INT64_MAX : 0;
    return (int64_t)llround(usd * 1e9);
}

const char *tg_cost_format_usd(int64_t nano, char *buf, size_t buflen)
{
    if (buflen == 0)
        return buf;
    /* Integer arithmetic so the text is the exact decimal of the nano amount (no float noise). */
    const char *sign = nano < 0 ? "-" : "";
    uint64_t v = nano < 0 ? (uint64_t)0 - (uint64_t)nano : (uint64_t)nano;
    uint64_t whole = v / 1000000000u, frac = v % 1000000000u;
    if (frac == 0) {
        snprintf(buf, buflen, "%s%llu", sign, (unsigned long long)whole);
        return buf;
    }
    char f[16];
    snprintf(f, sizeof f, "%09llu", (unsigned long long)frac);
    size_t n = strlen(f);
    while (n > 0 && f[n - 1] == '0')
        f[--n] = '\0';
    snprintf(buf, buflen, "%s%llu.%s", sign, (unsigned long long)whole, f);
    return buf;
}
