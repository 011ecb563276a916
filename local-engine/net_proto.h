/* Private to local-engine: the JSON codec of the engine wire protocol (see tg/engine_net.h
 * for the message shapes). Pure functions over jansson; no nng, no threads. */
#ifndef TG_NET_PROTO_H
#define TG_NET_PROTO_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "tg/engine.h"

#define TG_NET_DEFAULT_MAX_MSG ((size_t)8 * 1024 * 1024)
/* Caps on decoded arrays, far above what the engine accepts (it gives the precise error),
 * so a hostile message cannot make us allocate without bound. */
#define TG_NET_MAX_MESSAGES 4096
#define TG_NET_MAX_LIST 1024
#define TG_NET_MAX_EMBD 65536

/* Encode a job as a JSON object (new reference). TG_OK, TG_INVAL (message in err: which
 * field is not UTF-8 / not finite / too long) or TG_NOMEM. */
int tg_net_job_encode(const struct tg_engine_job *job, json_t **out, char *err, size_t errlen);

/* A job decoded from JSON. job's strings point into the json_t passed to decode; the arrays
 * are owned here. Release with tg_net_job_release (the json_t is the caller's). */
struct tg_net_job {
    struct tg_engine_job job;
    struct tg_chat_msg *msgs;
    const char **stop;
    const char **labels;
};

/* TG_OK, or TG_INVAL naming the bad field in err; *out is zeroed first. */
int tg_net_job_decode(const json_t *obj, struct tg_net_job *out, char *err, size_t errlen);
void tg_net_job_release(struct tg_net_job *j);

/* Encode an engine event for client job id `id` (not ev->job_id) as compact JSON text:
 * malloc'd, *len set. Invalid UTF-8 in text (never expected from the engine) is replaced by
 * U+FFFD rather than losing the event. NULL only on allocation failure. */
char *tg_net_event_encode(const struct tg_engine_event *ev, uint64_t id, size_t *len);

/* Decoded event: ev's pointers point into the json_t or into the arrays owned here. */
struct tg_net_event {
    struct tg_engine_event ev;
    int32_t *label_idx;
    float *embedding;
};

/* TG_OK or TG_INVAL (err names the problem). Release with tg_net_event_release. */
int tg_net_event_decode(const json_t *obj, struct tg_net_event *out, char *err, size_t errlen);
void tg_net_event_release(struct tg_net_event *e);

/* Stats as a JSON object (new reference; NULL on allocation failure) and back. Decode
 * ignores missing fields (they stay zero) and returns TG_INVAL on a non-object. */
json_t *tg_net_stats_encode(const struct tg_engine_stats *st);
int tg_net_stats_decode(const json_t *obj, struct tg_engine_stats *out);

/* Model facts (tg_engine_info) as a JSON object and back; decode fills what is there. */
json_t *tg_net_info_encode(const struct tg_engine_info *in);
int tg_net_info_decode(const json_t *obj, struct tg_engine_info *out);

/* nng_close(sock) on a helper thread, waiting at most timeout_ms (nng 1.5 can hang in close).
 * true when it returned; false when it is still blocked: the caller must then leave alone (leak)
 * anything nng might still call back into. `what` names the socket in the log. */
#include <nng/nng.h>
#include <stdbool.h>
bool tg_net_close_bounded(nng_socket sock, unsigned timeout_ms, const char *what);

/* A JSON string for arbitrary bytes: invalid UTF-8 sequences become U+FFFD. New reference,
 * NULL on allocation failure. */
json_t *tg_net_string_lossy(const char *s, size_t len);

#endif
