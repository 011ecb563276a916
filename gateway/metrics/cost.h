/* What a request cost, from its token usage and the configured prices (USD per 1M tokens).
 *
 * The gateway uses these for the x-tiergate-cost-usd header and the task APIs' cost_usd, and
 * passes the same numbers into tg_metrics_record(), so the header, the JSON, /metrics and
 * /v1/usage always agree. Amounts are computed in integer nano-dollars (1e-9 USD), rounded half
 * away from zero once per request, so totals add up exactly; the *_usd forms are nano / 1e9.
 *
 *   remote  = prompt × model.input_usd_per_mtok / 1e6 + completion × model.output_usd_per_mtok / 1e6
 *   local   = (prompt + completion) × local.price_per_mtok_usd / 1e6
 *   cache   = 0
 *   avoided = the remote formula on metrics.reference_model, for local and cache answers; 0 for
 *             remote ones (and when no reference model is configured or it is unknown)
 *
 * Pure functions of their arguments: thread-safe, no allocation. Negative token counts count as 0.
 */
#ifndef TG_GW_COST_H
#define TG_GW_COST_H

#include <stddef.h>
#include <stdint.h>

#include "tg/config.h"

#define TG_NANO_PER_USD 1000000000LL

/* Remote price of the tokens on model m (NULL m → 0). */
int64_t tg_cost_remote_nano(const struct tg_cfg_model *m, int64_t prompt_tokens,
                            int64_t completion_tokens);
/* Local engine price of the tokens (local.price_per_mtok_usd). */
int64_t tg_cost_local_nano(const struct tg_config *cfg, int64_t prompt_tokens,
                           int64_t completion_tokens);
/* What the tokens would have cost on metrics.reference_model; 0 if it is not configured. */
int64_t tg_cost_reference_nano(const struct tg_config *cfg, int64_t prompt_tokens,
                               int64_t completion_tokens);

/* A request's cost as it goes into the record and the headers. */
struct tg_cost {
    int64_t cost_nano;
    int64_t avoided_nano;
    double cost_usd;            /* cost_nano / 1e9 */
    double avoided_usd;         /* avoided_nano / 1e9 */
    const char *avoided_reason; /* "local" | "cache" | NULL (static) */
};

/* tier: "local" | "remote" | "cache" (anything else costs 0 and avoids 0). model: the public
 * model name served (looked up in cfg for the remote price; unknown → 0). Always writes *out. */
void tg_cost_compute(const struct tg_config *cfg, const char *tier, const char *model,
                     int64_t prompt_tokens, int64_t completion_tokens, struct tg_cost *out);

/* USD from nano-dollars, and back (rounded half away from zero). */
double tg_cost_usd(int64_t nano);
int64_t tg_cost_nano(double usd);

/* Format USD for headers and JSON: the shortest decimal with up to 9 fractional digits
 * ("0.00015", "0", "12.5"). Returns buf. buflen >= 32 is always enough. */
const char *tg_cost_format_usd(int64_t nano, char *buf, size_t buflen);

#endif
