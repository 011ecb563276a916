/* Fuzz target for the engine wire codec: any bytes a peer can send (a request on the worker, an
 * answer on the client) are parsed the way net_server.c / net_client.c parse them; decoded jobs
 * must re-encode and decode to the same job. Corpus: tests/enginenet/corpus/net (replayed in the
 * default suite by fuzz_replay_net_codec). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "net_proto.h"
#include "tg/err.h"

static void check_job_stable(const struct tg_engine_job *a)
{
    json_t *o = NULL;
    char err[256];
    if (tg_net_job_encode(a, &o, err, sizeof(err)) != TG_OK)
        return; /* e.g. a NaN cannot come from JSON, but "-0" or 1e308 can: fine either way */
    struct tg_net_job nb;
    if (tg_net_job_decode(o, &nb, err, sizeof(err)) != TG_OK)
        abort(); /* what we encode we must accept */
    const struct tg_engine_job *b = &nb.job;
    if (a->kind != b->kind || a->n_messages != b->n_messages || a->n_stop != b->n_stop ||
        a->n_labels != b->n_labels || a->stream != b->stream || a->multi_label != b->multi_label ||
        a->max_tokens != b->max_tokens || a->top_k != b->top_k || a->seed != b->seed)
        abort();
    if ((a->prompt == NULL) != (b->prompt == NULL) ||
        (a->prompt != NULL && strcmp(a->prompt, b->prompt) != 0))
        abort();
    for (size_t i = 0; i < a->n_labels; i++)
        if (strcmp(a->labels[i], b->labels[i]) != 0)
            abort();
    tg_net_job_release(&nb);
    json_decref(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    json_t *o = json_loadb((const char *)data, size, JSON_ALLOW_NUL, &jerr);
    if (o == NULL)
        return 0;
    char err[256];

    /* worker side: {"op":"ops","ops":[{"op":"submit","job":{...}}]} */
    size_t i;
    json_t *op;
    json_array_foreach(json_object_get(o, "ops"), i, op)
    {
        struct tg_net_job nj;
        if (tg_net_job_decode(json_object_get(op, "job"), &nj, err, sizeof(err)) == TG_OK) {
            check_job_stable(&nj.job);
            tg_net_job_release(&nj);
        }
    }
    /* a bare job too, so the corpus can be small */
    struct tg_net_job nj;
    if (tg_net_job_decode(o, &nj, err, sizeof(err)) == TG_OK) {
        check_job_stable(&nj.job);
        tg_net_job_release(&nj);
    }

    /* client side: {"st":{...},"info":{...},"ev":[...]} */
    struct tg_engine_stats st;
    (void)tg_net_stats_decode(json_object_get(o, "st"), &st);
    struct tg_engine_info info;
    (void)tg_net_info_decode(json_object_get(o, "info"), &info);
    json_t *ev;
    json_array_foreach(json_object_get(o, "ev"), i, ev)
    {
        struct tg_net_event ne;
        if (tg_net_event_decode(ev, &ne, err, sizeof(err)) == TG_OK) {
            /* what the client hands to callbacks must be re-encodable */
            size_t len = 0;
            char *txt = tg_net_event_encode(&ne.ev, ne.ev.job_id, &len);
            if (txt == NULL)
                abort();
            free(txt);
            tg_net_event_release(&ne);
        }
    }
    json_decref(o);
    return 0;
}
