/* Fuzz target: routes.yaml and routing-policy parsing. Byte 0 picks the loader:
 *   even: the gateway's config loader (gateway/config/config.c, tg_config_load) on the rest as a
 *         routes.yaml, then tg_config_print (secrets masked) and every lookup on what it built;
 *   odd:  the router's policy loader (tg_router_policy_load_string), then a decision and an
 *         explanation of a fixed request under that policy.
 * The config loader reads files, so the bytes go through an in-memory file (memfd). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>

#include "tg/config.h"
#include "tg/err.h"
#include "tg/log.h"
#include "tg/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int g_fd = -1;
static FILE *g_null;

static void check_config(const struct tg_config *c)
{
    fseek(g_null, 0, SEEK_SET);
    tg_config_print(c, g_null);
    for (size_t i = 0; i < c->n_models; i++) {
        const struct tg_cfg_model *m = &c->models[i];
        if (tg_config_model(c, m->name) == NULL)
            abort(); /* a model it loaded cannot be found by its name */
        for (size_t k = 0; k < m->n_fallbacks; k++)
            (void)tg_config_model(c, m->fallbacks[k]);
        if (m->provider != NULL)
            (void)tg_config_provider(c, m->provider);
    }
    for (size_t i = 0; i < c->n_aliases; i++)
        if (tg_config_alias(c, c->aliases[i].name) == NULL)
            abort();
    static const unsigned char zero[32];
    (void)tg_config_key_by_hash(c, zero);
}

static void check_policy(const struct tg_router_policy *p)
{
    (void)tg_router_policy_name(p);
    struct tg_route_message msgs[] = {
        {.role = "system", .content = "You are terse."},
        {.role = "user", .content = "Prove that there are infinitely many primes, step by step."},
    };
    for (size_t i = 0; i < 2; i++)
        msgs[i].content_len = strlen(msgs[i].content);
    struct tg_route_request rq = tg_route_request_default();
    rq.messages = msgs;
    rq.n_messages = 2;
    const char *fb[] = {"gpt-b"};
    struct tg_route_targets t = {.local = "phi", .remote = "gpt-a", .remote_fallbacks = fb,
                                 .n_remote_fallbacks = 1};
    struct tg_route_decision d;
    (void)tg_router_decide(p, &rq, &t, &d);
    json_decref(tg_router_explain(p, &rq, &t));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    char err[1024] = "";
    if (data[0] & 1) {
        struct tg_router_policy *p = NULL;
        if (tg_router_policy_load_string("fuzz-policy.yaml", text, len, &p, err, sizeof err) ==
            TG_OK) {
            check_policy(p);
            tg_router_policy_unref(p);
        }
        return 0;
    }
    if (g_fd == -1) {
        tg_log_set_level(TG_LOG_OFF);
        g_fd = memfd_create("fuzz-routes.yaml", MFD_CLOEXEC);
        g_null = fopen("/dev/null", "w");
        if (g_fd == -1 || g_null == NULL)
            abort();
    }
    if (ftruncate(g_fd, 0) == -1 || pwrite(g_fd, text, len, 0) != (ssize_t)len)
        abort();
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", g_fd);
    struct tg_config *c = NULL;
    if (tg_config_load(path, &c, err, sizeof err) == TG_OK) {
        check_config(c);
        tg_config_unref(c);
    } else if (err[0] == '\0') {
        abort(); /* a refused config always says why */
    }
    return 0;
}
