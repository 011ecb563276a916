/* JSON codec of the engine wire protocol (shapes documented in tg/engine_net.h). */
#include "net_proto.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg/buf.h"
#include "tg/err.h"

static int fail(char *err, size_t errlen, int code, const char *fmt, const char *field)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, fmt, field);
    return code;
}

/* ---- encoding ------------------------------------------------------------------------ */

/* Adds key=string when s is not NULL. */
static int put_str(json_t *o, const char *key, const char *s, char *err, size_t errlen)
{
    if (s == NULL)
        return TG_OK;
    json_t *v = json_string(s);
    if (v == NULL)
        return fail(err, errlen, TG_INVAL, "job field '%s' is not valid UTF-8", key);
    if (json_object_set_new(o, key, v) != 0)
        return TG_NOMEM;
    return TG_OK;
}

static int put_num(json_t *o, const char *key, double d, char *err, size_t errlen)
{
    if (d == 0)
        return TG_OK;
    if (!isfinite(d))
        return fail(err, errlen, TG_INVAL, "job field '%s' is not a finite number", key);
    if (json_object_set_new(o, key, json_real(d)) != 0)
        return TG_NOMEM;
    return TG_OK;
}

static int put_int(json_t *o, const char *key, json_int_t i)
{
    if (i == 0)
        return TG_OK;
    return json_object_set_new(o, key, json_integer(i)) == 0 ? TG_OK : TG_NOMEM;
}

static int put_list(json_t *o, const char *key, const char *const *items, size_t n, char *err,
                    size_t errlen)
{
    if (n == 0)
        return TG_OK;
    if (items == NULL)
        return fail(err, errlen, TG_INVAL, "job field '%s' has a count but no items", key);
    if (n > TG_NET_MAX_LIST)
        return fail(err, errlen, TG_INVAL, "job field '%s' has too many items", key);
    json_t *a = json_array();
    if (a == NULL || json_object_set_new(o, key, a) != 0)
        return TG_NOMEM;
    for (size_t i = 0; i < n; i++) {
        if (items[i] == NULL)
            return fail(err, errlen, TG_INVAL, "job field '%s' has a NULL item", key);
        json_t *v = json_string(items[i]);
        if (v == NULL)
            return fail(err, errlen, TG_INVAL, "job field '%s' has an item that is not UTF-8",
                        key);
        if (json_array_append_new(a, v) != 0)
            return TG_NOMEM;
    }
    return TG_OK;
}

static int job_encode_into(const struct tg_engine_job *job, json_t *o, char *err, size_t errlen)
{
    int rc;
    if ((rc = put_int(o, "k", (json_int_t)job->kind)) != TG_OK)
        return rc;
    if (job->n_messages > 0) {
        if (job->messages == NULL)
            return fail(err, errlen, TG_INVAL, "job field '%s' has a count but no items",
                        "messages");
        if (job->n_messages > TG_NET_MAX_MESSAGES)
            return fail(err, errlen, TG_INVAL, "job field '%s' has too many items", "messages");
        json_t *a = json_array();
        if (a == NULL || json_object_set_new(o, "msgs", a) != 0)
            return TG_NOMEM;
        for (size_t i = 0; i < job->n_messages; i++) {
            const struct tg_chat_msg *m = &job->messages[i];
            json_t *role = json_string(m->role != NULL ? m->role : "");
            json_t *content = json_string(m->content != NULL ? m->content : "");
            json_t *pair = json_array();
            if (pair == NULL || json_array_append_new(a, pair) != 0) {
                json_decref(role);
                json_decref(content);
                return TG_NOMEM;
            }
            if (role == NULL || content == NULL) {
                json_decref(role);
                json_decref(content);
                return fail(err, errlen, TG_INVAL, "job field '%s' has text that is not UTF-8",
                            "messages");
            }
            if (json_array_append_new(pair, role) != 0 ||
                json_array_append_new(pair, content) != 0)
                return TG_NOMEM;
        }
    }
    if ((rc = put_str(o, "p", job->prompt, err, errlen)) != TG_OK ||
        (rc = put_num(o, "temp", job->temperature, err, errlen)) != TG_OK ||
        (rc = put_num(o, "top_p", job->top_p, err, errlen)) != TG_OK ||
        (rc = put_int(o, "top_k", job->top_k)) != TG_OK ||
        (rc = put_int(o, "seed", job->seed)) != TG_OK ||
        (rc = put_int(o, "max", job->max_tokens)) != TG_OK ||
        (rc = put_list(o, "stop", job->stop, job->n_stop, err, errlen)) != TG_OK ||
        (rc = put_list(o, "labels", job->labels, job->n_labels, err, errlen)) != TG_OK ||
        (rc = put_str(o, "instr", job->instructions, err, errlen)) != TG_OK ||
        (rc = put_str(o, "schema", job->schema_json, err, errlen)) != TG_OK ||
        (rc = put_str(o, "gbnf", job->grammar, err, errlen)) != TG_OK)
        return rc;
    if (job->multi_label && json_object_set_new(o, "multi", json_true()) != 0)
        return TG_NOMEM;
    if (job->stream && json_object_set_new(o, "stream", json_true()) != 0)
        return TG_NOMEM;
    return TG_OK;
}

int tg_net_job_encode(const struct tg_engine_job *job, json_t **out, char *err, size_t errlen)
{
    if (job == NULL)
        return fail(err, errlen, TG_INVAL, "%s", "job is NULL");
    json_t *o = json_object();
    if (o == NULL)
        return TG_NOMEM;
    int rc = job_encode_into(job, o, err, errlen);
    if (rc != TG_OK) {
        if (rc == TG_NOMEM)
            fail(err, errlen, TG_NOMEM, "%s", "out of memory encoding the job");
        json_decref(o);
        return rc;
    }
    *out = o;
    return TG_OK;
}

/* ---- decoding ------------------------------------------------------------------------ */

static int get_str(const json_t *o, const char *key, const char **out, char *err, size_t errlen)
{
    const json_t *v = json_object_get(o, key);
    if (v == NULL || json_is_null(v))
        return TG_OK;
    if (!json_is_string(v))
        return fail(err, errlen, TG_INVAL, "job field '%s' must be a string", key);
    *out = json_string_value(v);
    return TG_OK;
}

static int get_num(const json_t *o, const char *key, double *out, char *err, size_t errlen)
{
    const json_t *v = json_object_get(o, key);
    if (v == NULL || json_is_null(v))
        return TG_OK;
    if (!json_is_number(v))
        return fail(err, errlen, TG_INVAL, "job field '%s' must be a number", key);
    *out = json_number_value(v);
    return TG_OK;
}

static int get_int(const json_t *o, const char *key, int64_t lo, int64_t hi, int64_t *out,
                   char *err, size_t errlen)
{
    const json_t *v = json_object_get(o, key);
    if (v == NULL || json_is_null(v))
        return TG_OK;
    if (!json_is_integer(v))
        return fail(err, errlen, TG_INVAL, "job field '%s' must be an integer", key);
    json_int_t i = json_integer_value(v);
    if (i < lo || i > hi)
        return fail(err, errlen, TG_INVAL, "job field '%s' is out of range", key);
    *out = (int64_t)i;
    return TG_OK;
}

static int get_bool(const json_t *o, const char *key, bool *out, char *err, size_t errlen)
{
    const json_t *v = json_object_get(o, key);
    if (v == NULL || json_is_null(v))
        return TG_OK;
    if (!json_is_boolean(v))
        return fail(err, errlen, TG_INVAL, "job field '%s' must be a boolean", key);
    *out = json_is_true(v);
    return TG_OK;
}

static int get_list(const json_t *o, const char *key, const char ***items, size_t *n, char *err,
                    size_t errlen)
{
    const json_t *a = json_object_get(o, key);
    if (a == NULL || json_is_null(a))
        return TG_OK;
    if (!json_is_array(a))
        return fail(err, errlen, TG_INVAL, "job field '%s' must be an array", key);
    size_t len = json_array_size(a);
    if (len == 0)
        return TG_OK;
    if (len > TG_NET_MAX_LIST)
        return fail(err, errlen, TG_INVAL, "job field '%s' has too many items", key);
    const char **v = calloc(len, sizeof(*v));
    if (v == NULL)
        return fail(err, errlen, TG_NOMEM, "%s", "out of memory decoding the job");
    for (size_t i = 0; i < len; i++) {
        const json_t *s = json_array_get(a, i);
        if (!json_is_string(s)) {
            free(v);
            return fail(err, errlen, TG_INVAL, "job field '%s' must hold strings", key);
        }
        v[i] = json_string_value(s);
    }
    *items = v;
    *n = len;
    return TG_OK;
}

int tg_net_job_decode(const json_t *o, struct tg_net_job *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (!json_is_object(o))
        return fail(err, errlen, TG_INVAL, "%s", "job must be an object");
    struct tg_engine_job *j = &out->job;
    int64_t kind = 0, top_k = 0, seed = 0, max = 0;
    double temp = 0, top_p = 0;
    int rc;
    if ((rc = get_int(o, "k", TG_JOB_GENERATE, TG_JOB_EMBED, &kind, err, errlen)) != TG_OK ||
        (rc = get_str(o, "p", &j->prompt, err, errlen)) != TG_OK ||
        (rc = get_num(o, "temp", &temp, err, errlen)) != TG_OK ||
        (rc = get_num(o, "top_p", &top_p, err, errlen)) != TG_OK ||
        (rc = get_int(o, "top_k", INT32_MIN, INT32_MAX, &top_k, err, errlen)) != TG_OK ||
        (rc = get_int(o, "seed", 0, UINT32_MAX, &seed, err, errlen)) != TG_OK ||
        (rc = get_int(o, "max", INT32_MIN, INT32_MAX, &max, err, errlen)) != TG_OK ||
        (rc = get_str(o, "instr", &j->instructions, err, errlen)) != TG_OK ||
        (rc = get_str(o, "schema", &j->schema_json, err, errlen)) != TG_OK ||
        (rc = get_str(o, "gbnf", &j->grammar, err, errlen)) != TG_OK ||
        (rc = get_bool(o, "multi", &j->multi_label, err, errlen)) != TG_OK ||
        (rc = get_bool(o, "stream", &j->stream, err, errlen)) != TG_OK)
        goto bad;
    j->kind = (enum tg_job_kind)kind;
    j->temperature = (float)temp;
    j->top_p = (float)top_p;
    j->top_k = (int32_t)top_k;
    j->seed = (uint32_t)seed;
    j->max_tokens = (int32_t)max;

    if ((rc = get_list(o, "stop", &out->stop, &j->n_stop, err, errlen)) != TG_OK ||
        (rc = get_list(o, "labels", &out->labels, &j->n_labels, err, errlen)) != TG_OK)
        goto bad;
    j->stop = out->stop;
    j->labels = out->labels;

    const json_t *msgs = json_object_get(o, "msgs");
    if (msgs != NULL && !json_is_null(msgs)) {
        size_t n = json_array_size(msgs);
        if (!json_is_array(msgs) || n > TG_NET_MAX_MESSAGES) {
            rc = fail(err, errlen, TG_INVAL, "%s",
                      "job field 'msgs' must be an array of at most 4096 messages");
            goto bad;
        }
        if (n > 0) {
            out->msgs = calloc(n, sizeof(*out->msgs));
            if (out->msgs == NULL) {
                rc = fail(err, errlen, TG_NOMEM, "%s", "out of memory decoding the job");
                goto bad;
            }
            for (size_t i = 0; i < n; i++) {
                const json_t *pair = json_array_get(msgs, i);
                const json_t *role = json_array_get(pair, 0);
                const json_t *content = json_array_get(pair, 1);
                if (!json_is_array(pair) || json_array_size(pair) != 2 ||
                    !json_is_string(role) || !json_is_string(content)) {
                    rc = fail(err, errlen, TG_INVAL, "%s",
                              "job field 'msgs' must hold [role, content] string pairs");
                    goto bad;
                }
                out->msgs[i].role = json_string_value(role);
                out->msgs[i].content = json_string_value(content);
            }
            j->messages = out->msgs;
            j->n_messages = n;
        }
    }
    return TG_OK;
bad:
    tg_net_job_release(out);
    return rc;
}

void tg_net_job_release(struct tg_net_job *j)
{
    free(j->msgs);
    free(j->stop);
    free(j->labels);
    memset(j, 0, sizeof(*j));
}

/* ---- strings ------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (1..4), or 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t left)
{
    unsigned char c = s[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (left < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

json_t *tg_net_string_lossy(const char *s, size_t len)
{
    if (s == NULL)
        return json_string("");
    json_t *v = json_stringn(s, len);
    if (v != NULL)
        return v;
    /* Slow path only for text jansson rejected. */
    struct tg_buf b;
    tg_buf_init(&b, 0);
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_seq(p + i, len - i);
        int rc = n > 0 ? tg_buf_append(&b, p + i, n) : tg_buf_append(&b, "\xEF\xBF\xBD", 3);
        if (rc != TG_OK) {
            tg_buf_free(&b);
            return NULL;
        }
        i += n > 0 ? n : 1;
    }
    v = json_stringn(b.data != NULL ? b.data : "", b.len);
    tg_buf_free(&b);
    return v;
}

/* ---- events -------------------------------------------------------------------------- */

static int set_new(json_t *o, const char *key, json_t *v)
{
    return v != NULL && json_object_set_new(o, key, v) == 0 ? 0 : -1;
}

char *tg_net_event_encode(const struct tg_engine_event *ev, uint64_t id, size_t *len)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    int bad = set_new(o, "id", json_integer((json_int_t)id));
    bad |= set_new(o, "t", json_integer((json_int_t)ev->type));
    if (ev->type == TG_EV_ERROR) {
        bad |= set_new(o, "e", json_integer(ev->err));
        const char *m = ev->message != NULL ? ev->message : tg_strerror(ev->err);
        bad |= set_new(o, "m", tg_net_string_lossy(m, strlen(m)));
    } else {
        size_t tl = ev->text != NULL ? ev->text_len : 0;
        bad |= set_new(o, "x", tg_net_string_lossy(ev->text, tl));
    }
    if (ev->type == TG_EV_DONE) {
        const char *fr = ev->finish_reason != NULL ? ev->finish_reason : "stop";
        bad |= set_new(o, "fr", tg_net_string_lossy(fr, strlen(fr)));
        bad |= set_new(o, "u",
                       json_pack("[iii]", (int)ev->usage.prompt_tokens,
                                 (int)ev->usage.completion_tokens, (int)ev->usage.cached_tokens));
        bad |= set_new(o, "ttft", json_real(isfinite(ev->ttft_ms) ? ev->ttft_ms : 0));
        bad |= set_new(o, "tot", json_real(isfinite(ev->total_ms) ? ev->total_ms : 0));
        if (ev->n_label_idx > 0 && ev->label_idx != NULL) {
            json_t *li = json_array();
            for (size_t i = 0; li != NULL && i < ev->n_label_idx; i++)
                bad |= json_array_append_new(li, json_integer(ev->label_idx[i]));
            bad |= set_new(o, "li", li);
            bad |= set_new(o, "cf", json_real(isfinite(ev->confidence) ? ev->confidence : 0));
        }
        if (ev->n_embd > 0 && ev->embedding != NULL) {
            json_t *emb = json_array();
            for (int32_t i = 0; emb != NULL && i < ev->n_embd; i++) {
                double f = ev->embedding[i];
                bad |= json_array_append_new(emb, json_real(isfinite(f) ? f : 0));
            }
            bad |= set_new(o, "emb", emb);
        }
    }
    char *s = NULL;
    if (!bad) {
        s = json_dumps(o, JSON_COMPACT);
        if (s != NULL)
            *len = strlen(s);
    }
    json_decref(o);
    return s;
}

int tg_net_event_decode(const json_t *o, struct tg_net_event *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    struct tg_engine_event *ev = &out->ev;
    const json_t *id = json_object_get(o, "id");
    const json_t *t = json_object_get(o, "t");
    if (!json_is_object(o) || !json_is_integer(id) || !json_is_integer(t))
        return fail(err, errlen, TG_INVAL, "%s", "event needs integer 'id' and 't'");
    json_int_t type = json_integer_value(t);
    if (type < TG_EV_TOKEN || type > TG_EV_ERROR)
        return fail(err, errlen, TG_INVAL, "%s", "event type out of range");
    ev->type = (enum tg_engine_event_type)type;
    ev->job_id = (uint64_t)json_integer_value(id);
    if (ev->type == TG_EV_ERROR) {
        const json_t *e = json_object_get(o, "e");
        const json_t *m = json_object_get(o, "m");
        if (!json_is_integer(e) || !json_is_string(m))
            return fail(err, errlen, TG_INVAL, "%s", "error event needs 'e' and 'm'");
        ev->err = (int)json_integer_value(e);
        ev->message = json_string_value(m);
        if (ev->err == TG_OK)
            ev->err = TG_INTERNAL; /* an error event must carry an error */
        return TG_OK;
    }
    const json_t *x = json_object_get(o, "x");
    if (!json_is_string(x))
        return fail(err, errlen, TG_INVAL, "%s", "event needs text 'x'");
    ev->text = json_string_value(x);
    ev->text_len = json_string_length(x);
    if (ev->type == TG_EV_TOKEN)
        return TG_OK;

    const json_t *fr = json_object_get(o, "fr");
    ev->finish_reason = json_is_string(fr) ? json_string_value(fr) : "stop";
    const json_t *u = json_object_get(o, "u");
    if (json_is_array(u) && json_array_size(u) == 3) {
        ev->usage.prompt_tokens = (int32_t)json_integer_value(json_array_get(u, 0));
        ev->usage.completion_tokens = (int32_t)json_integer_value(json_array_get(u, 1));
        ev->usage.cached_tokens = (int32_t)json_integer_value(json_array_get(u, 2));
    }
    ev->ttft_ms = json_number_value(json_object_get(o, "ttft"));
    ev->total_ms = json_number_value(json_object_get(o, "tot"));
    const json_t *li = json_object_get(o, "li");
    size_t nli = json_array_size(li);
    if (nli > 0) {
        if (nli > TG_NET_MAX_LIST)
            return fail(err, errlen, TG_INVAL, "%s", "event has too many label indices");
        out->label_idx = calloc(nli, sizeof(int32_t));
        if (out->label_idx == NULL)
            return fail(err, errlen, TG_NOMEM, "%s", "out of memory");
        for (size_t i = 0; i < nli; i++)
            out->label_idx[i] = (int32_t)json_integer_value(json_array_get(li, i));
        ev->label_idx = out->label_idx;
        ev->n_label_idx = nli;
        ev->confidence = json_number_value(json_object_get(o, "cf"));
    }
    const json_t *emb = json_object_get(o, "emb");
    size_t ne = json_array_size(emb);
    if (ne > 0) {
        if (ne > TG_NET_MAX_EMBD) {
            tg_net_event_release(out);
            return fail(err, errlen, TG_INVAL, "%s", "event embedding too long");
        }
        out->embedding = calloc(ne, sizeof(float));
        if (out->embedding == NULL) {
            tg_net_event_release(out);
            return fail(err, errlen, TG_NOMEM, "%s", "out of memory");
        }
        for (size_t i = 0; i < ne; i++)
            out->embedding[i] = (float)json_number_value(json_array_get(emb, i));
        ev->embedding = out->embedding;
        ev->n_embd = (int32_t)ne;
    }
    return TG_OK;
}

void tg_net_event_release(struct tg_net_event *e)
{
    free(e->label_idx);
    free(e->embedding);
    e->label_idx = NULL;
    e->embedding = NULL;
}

/* ---- stats --------------------------------------------------------------------------- */

json_t *tg_net_stats_encode(const struct tg_engine_stats *st)
{
    return json_pack("{s:i,s:i,s:i,s:i,s:f,s:f,s:f,s:I,s:I,s:I,s:I,s:I,s:i}", "ns", st->n_slots,
                     "sb", st->slots_busy, "qd", st->queue_depth, "qm", st->queue_max, "ew",
                     isfinite(st->est_wait_ms) ? st->est_wait_ms : 0.0, "tps",
                     isfinite(st->tokens_per_s) ? st->tokens_per_s : 0.0, "ptps",
                     isfinite(st->prefill_tokens_per_s) ? st->prefill_tokens_per_s : 0.0, "jd",
                     (json_int_t)st->jobs_done, "tg", (json_int_t)st->tokens_generated, "ph",
                     (json_int_t)st->prefix_cache_hits, "pm",
                     (json_int_t)st->prefix_cache_misses, "pt",
                     (json_int_t)st->prefix_cache_tokens, "pe", st->prefix_cache_entries);
}

int tg_net_stats_decode(const json_t *o, struct tg_engine_stats *out)
{
    if (!json_is_object(o))
        return TG_INVAL;
    struct tg_engine_stats st;
    memset(&st, 0, sizeof(st));
    st.n_slots = (int32_t)json_integer_value(json_object_get(o, "ns"));
    st.slots_busy = (int32_t)json_integer_value(json_object_get(o, "sb"));
    st.queue_depth = (int32_t)json_integer_value(json_object_get(o, "qd"));
    st.queue_max = (int32_t)json_integer_value(json_object_get(o, "qm"));
    st.est_wait_ms = json_number_value(json_object_get(o, "ew"));
    st.tokens_per_s = json_number_value(json_object_get(o, "tps"));
    st.prefill_tokens_per_s = json_number_value(json_object_get(o, "ptps"));
    st.jobs_done = (uint64_t)json_integer_value(json_object_get(o, "jd"));
    st.tokens_generated = (uint64_t)json_integer_value(json_object_get(o, "tg"));
    st.prefix_cache_hits = (uint64_t)json_integer_value(json_object_get(o, "ph"));
    st.prefix_cache_misses = (uint64_t)json_integer_value(json_object_get(o, "pm"));
    st.prefix_cache_tokens = (uint64_t)json_integer_value(json_object_get(o, "pt"));
    st.prefix_cache_entries = (int32_t)json_integer_value(json_object_get(o, "pe"));
    *out = st;
    return TG_OK;
}

/* ---- model info ---------------------------------------------------------------------- */

json_t *tg_net_info_encode(const struct tg_engine_info *in)
{
    json_t *o = json_pack("{s:I,s:I,s:i,s:i,s:i,s:i,s:i,s:b,s:b,s:i,s:b,s:I}", "np",
                          (json_int_t)in->n_params, "mb", (json_int_t)in->model_bytes, "ctx",
                          in->n_ctx, "ctxt", in->n_ctx_train, "ns", in->n_slots, "ne", in->n_embd,
                          "nv", in->n_vocab, "rw", in->random_weights, "emb", in->embeddings,
                          "ctxs", in->n_ctx_seq, "split", in->kv_split, "spill",
                          (json_int_t)in->prefix_cache_spill_bytes);
    if (o == NULL)
        return NULL;
    if (json_object_set_new(o, "name", tg_net_string_lossy(in->model_name,
                                                           strnlen(in->model_name,
                                                                   sizeof(in->model_name)))) != 0 ||
        json_object_set_new(o, "desc", tg_net_string_lossy(in->model_desc,
                                                           strnlen(in->model_desc,
                                                                   sizeof(in->model_desc)))) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int tg_net_info_decode(const json_t *o, struct tg_engine_info *out)
{
    if (!json_is_object(o))
        return TG_INVAL;
    struct tg_engine_info in;
    memset(&in, 0, sizeof(in));
    const char *name = json_string_value(json_object_get(o, "name"));
    const char *desc = json_string_value(json_object_get(o, "desc"));
    snprintf(in.model_name, sizeof(in.model_name), "%s", name != NULL ? name : "");
    snprintf(in.model_desc, sizeof(in.model_desc), "%s", desc != NULL ? desc : "");
    in.n_params = (uint64_t)json_integer_value(json_object_get(o, "np"));
    in.model_bytes = (uint64_t)json_integer_value(json_object_get(o, "mb"));
    in.n_ctx = (int32_t)json_integer_value(json_object_get(o, "ctx"));
    in.n_ctx_train = (int32_t)json_integer_value(json_object_get(o, "ctxt"));
    in.n_slots = (int32_t)json_integer_value(json_object_get(o, "ns"));
    in.n_embd = (int32_t)json_integer_value(json_object_get(o, "ne"));
    in.n_vocab = (int32_t)json_integer_value(json_object_get(o, "nv"));
    in.random_weights = json_is_true(json_object_get(o, "rw"));
    in.embeddings = json_is_true(json_object_get(o, "emb"));
    /* absent from workers older than kv_split: their jobs could use all of n_ctx */
    in.n_ctx_seq = (int32_t)json_integer_value(json_object_get(o, "ctxs"));
    if (in.n_ctx_seq <= 0)
        in.n_ctx_seq = in.n_ctx;
    in.kv_split = json_is_true(json_object_get(o, "split"));
    in.prefix_cache_spill_bytes = (int64_t)json_integer_value(json_object_get(o, "spill"));
    *out = in;
    return TG_OK;
}
