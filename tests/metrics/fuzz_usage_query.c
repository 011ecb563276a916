/* Fuzz target: the untrusted text the metrics component parses, i.e. GET /v1/usage's query string
 * (since/until/group_by, percent-decoding, RFC 3339 / unix times) and the admin key in `?key=` and
 * in `Authorization: Bearer`. The ledger's Redis client points at a closed port, so every valid
 * query ends in a synchronous 503 and nothing touches the network; every answer must be JSON. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "metrics.h"
#include "redis.h"
#include "tg/config.h"
#include "tg/err.h"
#include "usage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct event_base *g_base;
static struct tg_redis *g_redis;
static struct tg_usage *g_usage;

static void on_done(int status, const char *ctype, const char *body, size_t len, void *user)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    if (j == NULL || (status != 400 && status != 503 && status != 200))
        abort();
    json_decref(j);
    (*(int *)user)++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (g_usage == NULL) {
        g_base = event_base_new();
        struct tg_cfg_redis rc = {.enabled = true, .url = "redis://127.0.0.1:1/0",
                                  .connect_timeout_ms = 100, .command_timeout_ms = 100};
        if (g_base == NULL || tg_redis_create(g_base, &rc, "fuzz", &g_redis) != TG_OK ||
            tg_usage_create(g_redis, &g_usage) != TG_OK)
            abort();
    }
    char *q = malloc(size + 1);
    if (q == NULL)
        return 0;
    memcpy(q, data, size);
    q[size] = '\0';

    int calls = 0;
    if (tg_usage_handle_at(g_usage, q, 1763694000, on_done, &calls) == TG_OK && calls != 1)
        abort(); /* Redis is never up here: the answer is always synchronous, exactly once */
    time_t t;
    tg_usage_parse_time(q, &t);

    /* sha256("k") as the admin key: the input must never be let in unless it is exactly k */
    static const unsigned char k_sha[32] = {
        0x82, 0x54, 0xc3, 0x29, 0xa9, 0x28, 0x50, 0xf6, 0xd5, 0x39, 0xdd, 0x37, 0x6f, 0x48, 0x16, 0xee, 0x27, 0x64, 0x51, 0x7d, 0xa5, 0xe0, 0x23, 0x55, 0x14, 0xaf, 0x43, 0x31, 0x64, 0x48, 0x0d, 0x7a};
    struct tg_config cfg = {0};
    cfg.server.has_admin_key = true;
    memcpy(cfg.server.admin_sha256, k_sha, 32);
    bool by_query = tg_metrics_admin_allowed(&cfg, NULL, q);
    char auth[4200];
    snprintf(auth, sizeof auth, "Bearer %.4096s", q);
    bool by_header = tg_metrics_admin_allowed(&cfg, auth, NULL);
    const char *k = q + strspn(q, " ");
    size_t kl = strlen(k);
    while (kl > 0 && (k[kl - 1] == ' ' || k[kl - 1] == '\t'))
        kl--;
    if (by_header && !(kl == 1 && k[0] == 'k' && strlen(q) <= 4096))
        abort();
    (void)by_query;
    free(q);
    return 0;
}
