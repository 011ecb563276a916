/* The single binary's default engine: engine + inproc server + client. */
#include "tg/engine_net.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tg/err.h"
#include "tg/log.h"

#define LOCAL_READY_MS 10000

struct tg_engine_local {
    struct tg_engine *eng;
    struct tg_engine_server *srv;
    struct tg_engine_client *cli;
    char url[96];
};

int tg_engine_local_start(const struct tg_engine_params *ep, struct tg_engine_local **out,
                          char *err, size_t errlen)
{
    static unsigned counter;
    if (ep == NULL || out == NULL) {
        snprintf(err, errlen, "engine parameters are required");
        return TG_INVAL;
    }
    struct tg_engine_local *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        return TG_NOMEM;
    }
    /* Unique per process and per call: inproc names are process-wide. */
    snprintf(l->url, sizeof(l->url), "inproc://tiergate-engine-%ld-%u", (long)getpid(),
             __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED));
    int rc = tg_engine_create(ep, &l->eng, err, errlen);
    if (rc != TG_OK)
        goto fail;
    rc = tg_engine_server_start(l->eng, l->url, NULL, &l->srv, err, errlen);
    if (rc != TG_OK)
        goto fail;
    const char *urls[1] = {l->url};
    rc = tg_engine_client_create(urls, 1, NULL, &l->cli, err, errlen);
    if (rc != TG_OK)
        goto fail;
    rc = tg_engine_client_wait_ready(l->cli, 1, LOCAL_READY_MS);
    if (rc != TG_OK) {
        snprintf(err, errlen, "in-process engine on %s did not answer within %d ms", l->url,
                 LOCAL_READY_MS);
        goto fail;
    }
    *out = l;
    return TG_OK;
fail:
    tg_engine_local_stop(l);
    return rc;
}

struct tg_engine_client *tg_engine_local_client(struct tg_engine_local *l)
{
    return l->cli;
}

struct tg_engine *tg_engine_local_engine(struct tg_engine_local *l)
{
    return l->eng;
}

const char *tg_engine_local_url(const struct tg_engine_local *l)
{
    return l->url;
}

void tg_engine_local_stop(struct tg_engine_local *l)
{
    if (l == NULL)
        return;
    tg_engine_client_destroy(l->cli);
    tg_engine_server_stop(l->srv);
    tg_engine_destroy(l->eng);
    free(l);
}
