/* Usage ledger: hourly Redis hashes written with HINCRBY, read back for GET /v1/usage. */
#include "usage.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cost.h"
#include "metrics_int.h"
#include "tg/err.h"
#include "tg/json.h"
#include "tg/log.h"

struct tg_usage {
    struct tg_redis *redis;
};

static _Thread_local struct tg_usage *t_bound;

int tg_usage_create(struct tg_redis *redis, struct tg_usage **out)
{
    if (redis == NULL || out == NULL)
        return TG_INVAL;
    struct tg_usage *u = calloc(1, sizeof *u);
    if (u == NULL)
        return TG_NOMEM;
    u->redis = redis;
    *out = u;
    return TG_OK;
}

void tg_usage_destroy(struct tg_usage *u)
{
    if (u == NULL)
        return;
    if (t_bound == u)
        t_bound = NULL;
    free(u);
}

void tg_usage_bind(struct tg_usage *u)
{
    t_bound = u;
}

struct tg_usage *tg_usage_bound(void)
{
    return t_bound;
}

void tg_usage_record_hook(const struct tg_request_record *r)
{
    if (t_bound != NULL)
        tg_usage_add(t_bound, r);
}

/* ---- writing ------------------------------------------------------------------------------ */

static void hour_key(time_t t, char *buf, size_t len)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, len, "tg:u:%04d%02d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour);
}

/* Field parts are names from the config or short codes; '|' separates parts, so it is replaced,
 * and length is capped so a hash field stays small. */
static void field_part(char *dst, size_t len, const char *s, const char *dflt)
{
    if (s == NULL || s[0] == '\0')
        s = dflt;
    size_t n = 0;
    for (; s[n] != '\0' && n + 1 < len && n < 64; n++)
        dst[n] = s[n] == '|' || (unsigned char)s[n] < 0x20 ? '_' : s[n];
    dst[n] = '\0';
}

/* One request's increments in one atomic round trip: a reader never sees half a request.
 * KEYS[1] = the hour's hash; ARGV[1] = TTL in seconds; then field, increment pairs. */
static struct tg_redis_script k_add_script = TG_REDIS_SCRIPT(
    "for i = 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[1])\n"
    "return #ARGV\n");

static void on_added(int err, const redisReply *reply, void *user)
{
    if (err != TG_OK) {
        tg_metrics_ledger_error("lost");
        tg_debug("usage ledger: write lost: %s", tg_strerror(err));
    } else if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        tg_metrics_ledger_error("refused");
        tg_warn("usage ledger: Redis refused the write: %s", reply->str);
    }
}

#define MAX_INCS 10

int tg_usage_add_at(struct tg_usage *u, const struct tg_request_record *r, time_t now)
{
    if (u == NULL || r == NULL)
        return TG_INVAL;
    char key[32], tier[24], model[72], tenant[72], group[200], reason[72], ttl[24];
    char fields[MAX_INCS][240], nums[MAX_INCS][24];
    const char *args[2 + 2 * MAX_INCS];
    size_t lens[2 + 2 * MAX_INCS];
    hour_key(now, key, sizeof key);
    snprintf(ttl, sizeof ttl, "%lld", (long long)TG_USAGE_RETENTION_S);
    field_part(tier, sizeof tier, r->tier, "none");
    field_part(model, sizeof model, r->model, "none");
    field_part(tenant, sizeof tenant, r->tenant, "none");
    snprintf(group, sizeof group, "%s|%s|%s", tier, model, tenant);

    double dur = r->duration_s > 0 && r->duration_s < 1e6 ? r->duration_s : 0;
    const struct {
        const char *name;
        int64_t by;
    } inc[] = {
        {"req", 1},
        {"err", r->status >= 400 ? 1 : 0},
        {"prompt", r->prompt_tokens > 0 ? r->prompt_tokens : 0},
        {"completion", r->completion_tokens > 0 ? r->completion_tokens : 0},
        {"cached", r->cached_tokens > 0 ? r->cached_tokens : 0},
        {"cost_nano", tg_cost_nano(r->cost_usd)},
        {"avoided_nano", r->avoided_reason != NULL ? tg_cost_nano(r->avoided_usd) : 0},
        {"dur_us", (int64_t)(dur * 1e6 + 0.5)},
    };
    int n = 0;
    for (size_t i = 0; i < sizeof inc / sizeof inc[0]; i++) {
        if (inc[i].by == 0)
            continue;
        snprintf(fields[n], sizeof fields[n], "%s|%s", group, inc[i].name);
        snprintf(nums[n], sizeof nums[n], "%lld", (long long)inc[i].by);
        n++;
    }
    if (r->escalated) {
        field_part(reason, sizeof reason, r->escalation_reason, "none");
        snprintf(fields[n], sizeof fields[n], "esc|%s", reason);
        snprintf(nums[n], sizeof nums[n], "1");
        n++;
    }
    if (r->fallbacks > 0) {
        field_part(reason, sizeof reason, r->fallback_reason, "none");
        snprintf(fields[n], sizeof fields[n], "fb|%s", reason);
        snprintf(nums[n], sizeof nums[n], "%d", r->fallbacks);
        n++;
    }
    args[0] = key;
    args[1] = ttl;
    for (int i = 0; i < n; i++) {
        args[2 + 2 * i] = fields[i];
        args[3 + 2 * i] = nums[i];
    }
    int argc = 2 + 2 * n;
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(args[i]);
    int rc = tg_redis_eval(u->redis, &k_add_script, on_added, NULL, 1, argc, args, lens);
    if (rc != TG_OK) {
        tg_metrics_ledger_error("unavailable");
        tg_debug("usage ledger: write skipped: %s", tg_strerror(rc));
    }
    return rc;
}

int tg_usage_add(struct tg_usage *u, const struct tg_request_record *r)
{
    return tg_usage_add_at(u, r, time(NULL));
}

/* ---- parameters --------------------------------------------------------------------------- */

int tg_usage_parse_time(const char *s, time_t *out)
{
    if (s == NULL || *s == '\0')
        return TG_INVAL;
    bool digits = true;
    for (const char *p = s; *p != '\0'; p++)
        digits = digits && isdigit((unsigned char)*p);
    if (digits) {
        errno = 0;
        char *end = NULL;
        long long v = strtoll(s, &end, 10);
        if (errno != 0 || *end != '\0' || v > 253402300799LL) /* 9999-12-31 */
            return TG_INVAL;
        *out = (time_t)v;
        return TG_OK;
    }
    int Y, M, D, h, m, sec, n = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &Y, &M, &D, &n) != 3 || n != 10)
        return TG_INVAL;
    const char *p = s + 10;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return TG_INVAL;
    p++;
    if (sscanf(p, "%2d:%2d:%2d%n", &h, &m, &sec, &n) != 3 || n != 8)
        return TG_INVAL;
    p += 8;
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++)
            ;
    long off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-' || *p == ' ') {
        /* A raw '+' in a query string arrives as a space. */
        int sign = *p == '-' ? -1 : 1, oh, om;
        if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &n) != 2 || n != 5 || oh > 23 || om > 59)
            return TG_INVAL;
        off = sign * (oh * 3600L + om * 60L);
        p += 6;
    } else {
        return TG_INVAL;
    }
    if (*p != '\0' || Y < 1970 || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 ||
        sec > 60)
        return TG_INVAL;
    struct tm tm = {.tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D, .tm_hour = h,
                    .tm_min = m, .tm_sec = sec};
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return TG_INVAL;
    *out = t - off;
    return TG_OK;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

enum param { P_ABSENT, P_OK, P_BAD };

/* The value of parameter `name` in query, percent-decoded into buf. P_BAD when it does not fit
 * or decodes to a NUL byte: such a value is refused, never silently ignored or cut. */
static enum param query_param(const char *query, const char *name, char *buf, size_t buflen)
{
    size_t nl = strlen(name);
    for (const char *p = query; p != NULL && *p != '\0';) {
        const char *end = p + strcspn(p, "&");
        if ((size_t)(end - p) >= nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t n = 0;
            for (const char *q = p + nl + 1; q < end; q++) {
                int c = (unsigned char)*q;
                if (c == '%' && end - q > 2 && hexval(q[1]) >= 0 && hexval(q[2]) >= 0) {
                    c = hexval(q[1]) * 16 + hexval(q[2]);
                    q += 2;
                }
                if (c == 0 || n + 1 >= buflen)
                    return P_BAD;
                buf[n++] = (char)c;
            }
            buf[n] = '\0';
            return P_OK;
        }
        p = *end != '\0' ? end + 1 : end;
    }
    return P_ABSENT;
}

/* ---- reading ------------------------------------------------------------------------------ */

struct stats {
    int64_t req, err, prompt, completion, cached, cost_nano, avoided_nano, dur_us;
};

struct named {
    char *key;
    struct stats st;
    int64_t count; /* reasons */
};

struct named_list {
    struct named *v;
    size_t n, cap;
};

struct hour {
    struct stats st;
    int64_t local, remote, cache;
};

enum group_by { BY_TIER, BY_MODEL, BY_TENANT };

struct query {
    tg_usage_done_fn done;
    void *user;
    time_t since, until;
    enum group_by by;
    int64_t first_hour; /* unix hour index */
    size_t n_hours;
    struct hour *hours;
    struct stats totals;
    struct named_list groups, tiers, esc, fb;
    size_t pending;
    int failed; /* tg_err of the first failed command, TG_OK if none */
};

static struct named *named_get(struct named_list *l, const char *key, size_t keylen)
{
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->v[i].key) == keylen && memcmp(l->v[i].key, key, keylen) == 0)
            return &l->v[i];
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        struct named *v = realloc(l->v, cap * sizeof *v);
        if (v == NULL)
            return NULL;
        l->v = v;
        l->cap = cap;
    }
    char *k = strndup(key, keylen);
    if (k == NULL)
        return NULL;
    l->v[l->n] = (struct named){.key = k};
    return &l->v[l->n++];
}

static void named_free(struct named_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].key);
    free(l->v);
}

static void query_free(struct query *q)
{
    named_free(&q->groups);
    named_free(&q->tiers);
    named_free(&q->esc);
    named_free(&q->fb);
    free(q->hours);
    free(q);
}

static int64_t *stat_field(struct stats *s, const char *name, size_t len)
{
#define F(n)                                                                                       \
    if (len == sizeof #n - 1 && memcmp(name, #n, len) == 0)                                        \
        return &s->n;
    F(req) F(err) F(prompt) F(completion) F(cached) F(cost_nano) F(avoided_nano) F(dur_us)
#undef F
    return NULL;
}

static void stats_add(struct stats *d, const struct stats *s)
{
    d->req += s->req;
    d->err += s->err;
    d->prompt += s->prompt;
    d->completion += s->completion;
    d->cached += s->cached;
    d->cost_nano += s->cost_nano;
    d->avoided_nano += s->avoided_nano;
    d->dur_us += s->dur_us;
}

/* One hash field of one hour: "<tier>|<model>|<tenant>|<stat>" or "esc|r" / "fb|r". Fields that do
 * not parse (written by a newer version, or by hand) are skipped. */
static void add_field(struct query *q, struct hour *h, const char *f, size_t flen, int64_t v)
{
    const char *bar[4];
    size_t nb = 0;
    for (size_t i = 0; i < flen && nb < 4; i++)
        if (f[i] == '|')
            bar[nb++] = f + i;
    if (nb == 1) {
        struct named_list *l = flen > 4 && memcmp(f, "esc|", 4) == 0 ? &q->esc
                             : flen > 3 && memcmp(f, "fb|", 3) == 0  ? &q->fb
                                                                     : NULL;
        struct named *n = l != NULL ? named_get(l, bar[0] + 1, (size_t)(f + flen - bar[0] - 1)) : NULL;
        if (n != NULL)
            n->count += v;
        return;
    }
    if (nb != 3)
        return;
    const char *stat = bar[2] + 1;
    struct stats one = {0};
    int64_t *slot = stat_field(&one, stat, (size_t)(f + flen - stat));
    if (slot == NULL)
        return;
    *slot = v;
    size_t tier_len = (size_t)(bar[0] - f);
    const char *gk = q->by == BY_TIER ? f : q->by == BY_MODEL ? bar[0] + 1 : bar[1] + 1;
    size_t gl = q->by == BY_TIER ? tier_len : q->by == BY_MODEL ? (size_t)(bar[1] - bar[0] - 1)
                                                               : (size_t)(bar[2] - bar[1] - 1);
    struct named *g = named_get(&q->groups, gk, gl);
    struct named *t = named_get(&q->tiers, f, tier_len);
    if (g != NULL)
        stats_add(&g->st, &one);
    if (t != NULL)
        stats_add(&t->st, &one);
    stats_add(&q->totals, &one);
    stats_add(&h->st, &one);
    if (one.req != 0) {
        if (tier_len == 5 && memcmp(f, "local", 5) == 0)
            h->local += v;
        else if (tier_len == 6 && memcmp(f, "remote", 6) == 0)
            h->remote += v;
        else if (tier_len == 5 && memcmp(f, "cache", 5) == 0)
            h->cache += v;
    }
}

static void fmt_time(time_t t, char *buf, size_t len)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *stats_json(const struct stats *s)
{
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:I,s:I,s:f}", "requests", (json_int_t)s->req,
                     "errors", (json_int_t)s->err, "prompt_tokens", (json_int_t)s->prompt,
                     "completion_tokens", (json_int_t)s->completion, "cached_tokens",
                     (json_int_t)s->cached, "spend_usd", tg_cost_usd(s->cost_nano), "avoided_usd",
                     tg_cost_usd(s->avoided_nano), "spend_nano_usd", (json_int_t)s->cost_nano,
                     "avoided_nano_usd", (json_int_t)s->avoided_nano, "avg_duration_s",
                     s->req > 0 ? (double)s->dur_us / 1e6 / (double)s->req : 0.0);
}

static int by_requests_desc(const void *a, const void *b)
{
    const struct named *x = a, *y = b;
    if (x->st.req != y->st.req)
        return x->st.req < y->st.req ? 1 : -1;
    return strcmp(x->key, y->key);
}

static int by_count_desc(const void *a, const void *b)
{
    const struct named *x = a, *y = b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    return strcmp(x->key, y->key);
}

static const char *const k_group_names[] = {"tier", "model", "tenant"};

static json_t *build_answer(struct query *q)
{
    char since[32], until[32], ts[32];
    fmt_time(q->since, since, sizeof since);
    fmt_time(q->until, until, sizeof until);
    json_t *groups = json_array(), *tiers = json_object(), *series = json_array();
    json_t *esc = json_array(), *fb = json_array();
    if (q->groups.n > 1)
        qsort(q->groups.v, q->groups.n, sizeof *q->groups.v, by_requests_desc);
    for (size_t i = 0; i < q->groups.n; i++) {
        json_t *g = stats_json(&q->groups.v[i].st);
        json_object_set_new(g, "key", json_string(q->groups.v[i].key));
        json_array_append_new(groups, g);
    }
    for (size_t i = 0; i < q->tiers.n; i++)
        json_object_set_new(tiers, q->tiers.v[i].key, stats_json(&q->tiers.v[i].st));
    for (size_t i = 0; i < q->n_hours; i++) {
        const struct hour *h = &q->hours[i];
        fmt_time((time_t)((q->first_hour + (int64_t)i) * 3600), ts, sizeof ts);
        json_array_append_new(
            series, json_pack("{s:s,s:I,s:I,s:f,s:f,s:f,s:I,s:I,s:I}", "ts", ts, "requests",
                              (json_int_t)h->st.req, "errors", (json_int_t)h->st.err, "spend_usd",
                              tg_cost_usd(h->st.cost_nano), "avoided_usd",
                              tg_cost_usd(h->st.avoided_nano), "avg_duration_s",
                              h->st.req > 0 ? (double)h->st.dur_us / 1e6 / (double)h->st.req : 0.0,
                              "local", (json_int_t)h->local, "remote", (json_int_t)h->remote,
                              "cache", (json_int_t)h->cache));
    }
    struct {
        struct named_list *l;
        json_t *out;
    } reasons[] = {{&q->esc, esc}, {&q->fb, fb}};
    for (size_t r = 0; r < 2; r++) {
        if (reasons[r].l->n > 1)
            qsort(reasons[r].l->v, reasons[r].l->n, sizeof *reasons[r].l->v, by_count_desc);
        for (size_t i = 0; i < reasons[r].l->n && i < 20; i++)
            json_array_append_new(reasons[r].out,
                                  json_pack("{s:s,s:I}", "reason", reasons[r].l->v[i].key, "count",
                                            (json_int_t)reasons[r].l->v[i].count));
    }
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:o,s:o,s:o,s:o,s:o,s:o}", "object", "usage", "since",
                     since, "until", until, "group_by", k_group_names[q->by], "bucket", "hour",
                     "totals", stats_json(&q->totals), "groups", groups, "by_tier", tiers,
                     "series", series, "escalation_reasons", esc, "fallback_reasons", fb);
}

static void reply_json(tg_usage_done_fn done, void *user, int status, json_t *body)
{
    /* 15 significant digits print nano-dollar amounts exactly (no 0.15000000000000002). */
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    if (text == NULL) {
        static const char oom[] =
            "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,"
            "\"code\":\"internal\"}}";
        done(500, "application/json", oom, sizeof oom - 1, user);
    } else {
        done(status, "application/json", text, strlen(text), user);
    }
    free(text);
    json_decref(body);
}

static void reply_error(tg_usage_done_fn done, void *user, int status, const char *msg,
                        const char *param, const char *code)
{
    reply_json(done, user, status,
               tg_json_error(msg, status == 400 ? "invalid_request_error" : "server_error", param,
                             code));
}

static void query_finish(struct query *q)
{
    if (q->failed != TG_OK)
        reply_error(q->done, q->user, 503, "usage ledger unavailable: Redis is not reachable",
                    NULL, "redis_unavailable");
    else
        reply_json(q->done, q->user, 200, build_answer(q));
    query_free(q);
}

struct hour_req {
    struct query *q;
    size_t index;
};

static void on_hour(int err, const redisReply *reply, void *user)
{
    struct hour_req *hr = user;
    struct query *q = hr->q;
    if (err != TG_OK || reply == NULL) {
        if (q->failed == TG_OK)
            q->failed = err != TG_OK ? err : TG_UNAVAILABLE;
    } else if (reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            const redisReply *f = reply->element[i], *v = reply->element[i + 1];
            if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            char num[32];
            snprintf(num, sizeof num, "%.*s", (int)(v->len < 31 ? v->len : 31), v->str);
            char *end = NULL;
            errno = 0;
            long long n = strtoll(num, &end, 10);
            if (errno == 0 && end != num && *end == '\0')
                add_field(q, &q->hours[hr->index], f->str, f->len, n);
        }
    } else if (q->failed == TG_OK) {
        q->failed = TG_UPSTREAM;
    }
    free(hr);
    if (--q->pending == 0)
        query_finish(q);
}

int tg_usage_handle_at(struct tg_usage *u, const char *query, time_t now, tg_usage_done_fn done,
                       void *user)
{
    if (u == NULL || done == NULL)
        return TG_INVAL;
    char val[96];
    time_t until = now, since;
    enum group_by by = BY_TIER;
    enum param pu = query_param(query, "until", val, sizeof val);
    if (pu == P_BAD || (pu == P_OK && tg_usage_parse_time(val, &until) != TG_OK)) {
        reply_error(done, user, 400, "'until' must be RFC 3339 or unix seconds", "until",
                    "invalid_time");
        return TG_OK;
    }
    since = until - 24 * 3600;
    enum param ps = query_param(query, "since", val, sizeof val);
    if (ps == P_BAD || (ps == P_OK && tg_usage_parse_time(val, &since) != TG_OK)) {
        reply_error(done, user, 400, "'since' must be RFC 3339 or unix seconds", "since",
                    "invalid_time");
        return TG_OK;
    }
    enum param pg = query_param(query, "group_by", val, sizeof val);
    if (pg == P_OK && strcmp(val, "tier") == 0) {
        by = BY_TIER;
    } else if (pg == P_OK && strcmp(val, "model") == 0) {
        by = BY_MODEL;
    } else if (pg == P_OK && strcmp(val, "tenant") == 0) {
        by = BY_TENANT;
    } else if (pg != P_ABSENT) {
        reply_error(done, user, 400, "'group_by' must be tier, model or tenant", "group_by",
                    "invalid_group_by");
        return TG_OK;
    }
    if (since >= until) {
        reply_error(done, user, 400, "'since' must be before 'until'", "since", "invalid_window");
        return TG_OK;
    }
    if ((int64_t)until - (int64_t)since > TG_USAGE_MAX_WINDOW_S) {
        reply_error(done, user, 400, "window too long: at most 93 days per query", "since",
                    "window_too_long");
        return TG_OK;
    }
    struct query *q = calloc(1, sizeof *q);
    if (q == NULL)
        return TG_NOMEM;
    *q = (struct query){.done = done, .user = user, .since = since, .until = until, .by = by};
    q->first_hour = (int64_t)since / 3600;
    q->n_hours = (size_t)(((int64_t)until + 3599) / 3600 - q->first_hour);
    q->hours = calloc(q->n_hours, sizeof *q->hours);
    if (q->hours == NULL) {
        free(q);
        return TG_NOMEM;
    }
    /* One extra pending count while submitting, so a reply cannot finish the query early. */
    q->pending = 1;
    for (size_t i = 0; i < q->n_hours && q->failed == TG_OK; i++) {
        char key[32];
        hour_key((time_t)((q->first_hour + (int64_t)i) * 3600), key, sizeof key);
        struct hour_req *hr = malloc(sizeof *hr);
        if (hr == NULL) {
            q->failed = TG_NOMEM;
            break;
        }
        *hr = (struct hour_req){q, i};
        const char *argv[] = {"HGETALL", key};
        size_t lens[] = {7, strlen(key)};
        int rc = tg_redis_command_argv(u->redis, on_hour, hr, 2, argv, lens);
        if (rc != TG_OK) {
            free(hr);
            q->failed = rc;
        } else {
            q->pending++;
        }
    }
    if (--q->pending == 0)
        query_finish(q);
    return TG_OK;
}

int tg_usage_handle(struct tg_usage *u, const char *query, tg_usage_done_fn done, void *user)
{
    return tg_usage_handle_at(u, query, time(NULL), done, user);
}
