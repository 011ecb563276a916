/* Exact-match response cache: canonical request → SHA-256 key, entry (de)serialization, and the
 * Redis GET/SET around them. See cache.h. */
#include "cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>

#include "tg/err.h"
#include "tg/log.h"

/* Fields that never change what the model answers; everything else is part of the key. */
static const char *const k_ignored[] = {"model", "stream", "stream_options", "user", "metadata",
                                        "store", "service_tier"};

const char *tg_cache_result_name(enum tg_cache_result r)
{
    switch (r) {
    case TG_CACHE_HIT:
        return "hit";
    case TG_CACHE_BYPASS:
        return "bypass";
    default:
        return "miss";
    }
}

static bool has_directive(const char *cc, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = cc; p != NULL && *p != '\0';) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t len = strcspn(p, ",");
        size_t tl = len;
        while (tl > 0 && (p[tl - 1] == ' ' || p[tl - 1] == '\t'))
            tl--;
        if (tl == n && strncasecmp(p, name, n) == 0)
            return true;
        p += len;
    }
    return false;
}

struct tg_cache_decision tg_cache_decide(const struct tg_cfg_cache *cfg, const json_t *body,
                                         double default_temperature, const char *cache_control,
                                         bool redis_up)
{
    struct tg_cache_decision d = {.read = false, .write = false, .reason = NULL};
    if (cfg == NULL || !cfg->enabled) {
        d.reason = "disabled";
        return d;
    }
    if (has_directive(cache_control, "no-store")) {
        d.reason = "no-store";
        return d;
    }
    double temperature = default_temperature;
    const json_t *t = json_object_get(body, "temperature");
    if (json_is_number(t))
        temperature = json_number_value(t);
    const json_t *seed = json_object_get(body, "seed");
    bool deterministic = temperature == 0.0 || (seed != NULL && !json_is_null(seed));
    if (!deterministic && !cfg->cache_nondeterministic) {
        d.reason = "nondeterministic";
        return d;
    }
    if (!redis_up) {
        d.reason = "redis-down";
        return d;
    }
    d.write = true;
    if (has_directive(cache_control, "no-cache")) {
        d.reason = "no-cache";
        return d;
    }
    d.read = true;
    return d;
}

/* Canonical form, fed straight into the digest: a tag byte per value, lengths as 8-byte
 * little-endian, object keys sorted bytewise, strings as raw bytes. Unambiguous without JSON
 * escaping (jansson's encoder costs ~20 µs per KB of text; this is one pass). Integral reals
 * hash as integers, so "temperature": 0 and 0.0 are the same request. */
struct hasher {
    EVP_MD_CTX *md;
    unsigned char buf[4096];
    size_t n;
    bool ok;
};

static void h_put(struct hasher *h, const void *p, size_t n)
{
    if (h->n + n > sizeof h->buf) {
        h->ok = h->ok && EVP_DigestUpdate(h->md, h->buf, h->n) == 1;
        h->n = 0;
        if (n > sizeof h->buf) {
            h->ok = h->ok && EVP_DigestUpdate(h->md, p, n) == 1;
            return;
        }
    }
    memcpy(h->buf + h->n, p, n);
    h->n += n;
}

static void h_u64(struct hasher *h, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    h_put(h, b, 8);
}

static void h_bytes(struct hasher *h, char tag, const char *p, size_t n)
{
    h_put(h, &tag, 1);
    h_u64(h, n);
    h_put(h, p, n);
}

struct kv {
    const char *key;
    size_t len;
    json_t *value;
};

static int cmp_kv(const void *a, const void *b)
{
    const struct kv *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->key, y->key, n);
    return c != 0 ? c : (x->len > y->len) - (x->len < y->len);
}

static bool ignored_top(const char *key)
{
    for (size_t i = 0; i < sizeof k_ignored / sizeof k_ignored[0]; i++)
        if (strcmp(key, k_ignored[i]) == 0)
            return true;
    return false;
}

static void h_value(struct hasher *h, json_t *v, int depth)
{
    if (depth > 64) { /* jansson's decoder already bounds depth; belt and braces */
        h->ok = false;
        return;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(v), i = 0;
        struct kv stack[16];
        struct kv *kvs = n <= 16 ? stack : malloc(n * sizeof *kvs);
        if (kvs == NULL) {
            h->ok = false;
            return;
        }
        const char *key;
        json_t *val;
        json_object_foreach(v, key, val)
        {
            if (depth == 0 && ignored_top(key))
                continue;
            kvs[i++] = (struct kv){key, strlen(key), val};
        }
        qsort(kvs, i, sizeof *kvs, cmp_kv);
        h_put(h, "{", 1);
        h_u64(h, i);
        for (size_t k = 0; k < i; k++) {
            h_bytes(h, 'k', kvs[k].key, kvs[k].len);
            h_value(h, kvs[k].value, depth + 1);
        }
        if (kvs != stack)
            free(kvs);
        break;
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        h_put(h, "[", 1);
        h_u64(h, n);
        for (size_t i = 0; i < n; i++)
            h_value(h, json_array_get(v, i), depth + 1);
        break;
    }
    case JSON_STRING:
        h_bytes(h, 's', json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        h_put(h, "i", 1);
        h_u64(h, (uint64_t)json_integer_value(v));
        break;
    case JSON_REAL: {
        double d = json_real_value(v);
        if (d == (double)(int64_t)d && d > -9e18 && d < 9e18) {
            h_put(h, "i", 1);
            h_u64(h, (uint64_t)(int64_t)d);
        } else {
            uint64_t bits;
            memcpy(&bits, &d, sizeof bits);
            h_put(h, "r", 1);
            h_u64(h, bits);
        }
        break;
    }
    case JSON_TRUE:
        h_put(h, "t", 1);
        break;
    case JSON_FALSE:
        h_put(h, "f", 1);
        break;
    default:
        h_put(h, "n", 1);
        break;
    }
}

static EVP_MD *g_sha256;
static pthread_once_t g_sha256_once = PTHREAD_ONCE_INIT;

/* Explicit fetch once: the implicit one in EVP_DigestInit_ex costs ~1 µs per call. */
static void fetch_sha256(void)
{
    g_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

int tg_cache_key(const char *tenant, const char *endpoint, const char *resolved_model,
                 const json_t *body, bool stream, struct tg_cache_key *out)
{
    if (!json_is_object(body))
        return TG_INVAL;
    if (tenant == NULL)
        tenant = "";
    if (endpoint == NULL)
        endpoint = "";
    if (resolved_model == NULL) {
        const char *m = json_string_value(json_object_get(body, "model"));
        resolved_model = m != NULL ? m : "";
    }
    pthread_once(&g_sha256_once, fetch_sha256);
    struct hasher h = {.md = EVP_MD_CTX_new(), .ok = true};
    unsigned char digest[32];
    unsigned int dlen = 0;
    h.ok = h.md != NULL && EVP_DigestInit_ex(h.md, g_sha256 != NULL ? g_sha256 : EVP_sha256(), NULL) == 1;
    if (h.ok) {
        h_bytes(&h, 'v', "tgc2", 4);
        h_bytes(&h, 's', tenant, strlen(tenant));
        h_bytes(&h, 's', endpoint, strlen(endpoint));
        h_bytes(&h, 's', stream ? "stream" : "json", stream ? 6 : 4);
        h_bytes(&h, 's', resolved_model, strlen(resolved_model));
        h_value(&h, (json_t *)body, 0);
        h.ok = h.ok && EVP_DigestUpdate(h.md, h.buf, h.n) == 1 &&
               EVP_DigestFinal_ex(h.md, digest, &dlen) == 1;
    }
    EVP_MD_CTX_free(h.md);
    if (!h.ok || dlen != 32)
        return TG_NOMEM;

    struct tg_cache_key k;
    static const char hexd[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        k.hex[2 * i] = hexd[digest[i] >> 4];
        k.hex[2 * i + 1] = hexd[digest[i] & 15];
    }
    k.hex[64] = '\0';
    /* The namespace is for humans and SCAN; the hash already separates tenants. */
    char ns[65];
    size_t n = 0;
    for (const char *p = tenant; *p != '\0' && n < 64; p++) {
        char ch = *p;
        bool ok_ch = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                     ch == '_' || ch == '.' || ch == '-';
        ns[n++] = ok_ch ? ch : '_';
    }
    ns[n] = '\0';
    snprintf(k.redis_key, sizeof k.redis_key, "tg:c:%s:%s", n > 0 ? ns : "_", k.hex);
    *out = k;
    return TG_OK;
}

/* ---- entries ---- */

struct tg_cache_entry *tg_cache_entry_new(int status, bool stream, const char *content_type,
                                          size_t max_bytes)
{
    struct tg_cache_entry *e = calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    e->status = status;
    e->stream = stream;
    e->max_bytes = max_bytes;
    e->content_type = strdup(content_type != NULL ? content_type
                                                  : stream ? "text/event-stream" : "application/json");
    if (e->content_type == NULL) {
        free(e);
        return NULL;
    }
    e->size = 64 + strlen(e->content_type);
    return e;
}

void tg_cache_entry_free(struct tg_cache_entry *e)
{
    if (e == NULL)
        return;
    free(e->content_type);
    for (size_t i = 0; i < e->n_headers; i++) {
        free(e->headers[i].name);
        free(e->headers[i].value);
    }
    free(e->headers);
    free(e->body);
    for (size_t i = 0; i < e->n_chunks; i++)
        free(e->chunks[i].data);
    free(e->chunks);
    free(e->model);
    free(e);
}

static int account(struct tg_cache_entry *e, size_t add)
{
    if (e->max_bytes != 0 && e->size + add > e->max_bytes)
        return TG_TOOBIG;
    e->size += add;
    return TG_OK;
}

int tg_cache_entry_add_header(struct tg_cache_entry *e, const char *name, const char *value)
{
    if (account(e, strlen(name) + strlen(value) + 8) != TG_OK)
        return TG_TOOBIG;
    struct tg_cache_header *h = realloc(e->headers, (e->n_headers + 1) * sizeof *h);
    if (h == NULL)
        return TG_NOMEM;
    e->headers = h;
    h[e->n_headers].name = strdup(name);
    h[e->n_headers].value = strdup(value);
    if (h[e->n_headers].name == NULL || h[e->n_headers].value == NULL) {
        free(h[e->n_headers].name);
        free(h[e->n_headers].value);
        return TG_NOMEM;
    }
    e->n_headers++;
    return TG_OK;
}

int tg_cache_entry_set_body(struct tg_cache_entry *e, const char *body, size_t len)
{
    if (account(e, len + 4) != TG_OK)
        return TG_TOOBIG;
    char *b = malloc(len + 1);
    if (b == NULL)
        return TG_NOMEM;
    memcpy(b, body, len);
    b[len] = '\0';
    free(e->body);
    e->body = b;
    e->body_len = len;
    return TG_OK;
}

int tg_cache_entry_add_chunk(struct tg_cache_entry *e, const char *data, size_t len)
{
    if (account(e, len + 4) != TG_OK)
        return TG_TOOBIG;
    struct tg_cache_chunk *c = realloc(e->chunks, (e->n_chunks + 1) * sizeof *c);
    if (c == NULL)
        return TG_NOMEM;
    e->chunks = c;
    c[e->n_chunks].data = malloc(len + 1);
    if (c[e->n_chunks].data == NULL)
        return TG_NOMEM;
    memcpy(c[e->n_chunks].data, data, len);
    c[e->n_chunks].data[len] = '\0';
    c[e->n_chunks].len = len;
    e->n_chunks++;
    return TG_OK;
}

int tg_cache_entry_set_usage(struct tg_cache_entry *e, const char *model, int64_t prompt_tokens,
                             int64_t completion_tokens)
{
    char *m = strdup(model != NULL ? model : "");
    if (m == NULL)
        return TG_NOMEM;
    free(e->model);
    e->model = m;
    e->prompt_tokens = prompt_tokens;
    e->completion_tokens = completion_tokens;
    return TG_OK;
}

/* Wire format "TGC1": little-endian u32/u64 and u32-length-prefixed byte strings. */
struct wbuf {
    char *p;
    size_t n, cap;
    bool oom;
};

static void w_bytes(struct wbuf *w, const void *d, size_t n)
{
    if (w->oom)
        return;
    if (w->n + n > w->cap) {
        size_t cap = w->cap * 2 + n + 256;
        char *p = realloc(w->p, cap);
        if (p == NULL) {
            w->oom = true;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->n, d, n);
    w->n += n;
}

static void w_u32(struct wbuf *w, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    w_bytes(w, b, 4);
}

static void w_u64(struct wbuf *w, uint64_t v)
{
    w_u32(w, (uint32_t)v);
    w_u32(w, (uint32_t)(v >> 32));
}

static void w_str(struct wbuf *w, const char *s, size_t n)
{
    w_u32(w, (uint32_t)n);
    w_bytes(w, s != NULL ? s : "", n);
}

int tg_cache_entry_encode(const struct tg_cache_entry *e, char **out, size_t *len)
{
    struct wbuf w = {0};
    w_bytes(&w, "TGC1", 4);
    w_u32(&w, (uint32_t)e->status);
    w_u32(&w, e->stream ? 1 : 0);
    w_str(&w, e->content_type, strlen(e->content_type));
    w_u32(&w, (uint32_t)e->n_headers);
    for (size_t i = 0; i < e->n_headers; i++) {
        w_str(&w, e->headers[i].name, strlen(e->headers[i].name));
        w_str(&w, e->headers[i].value, strlen(e->headers[i].value));
    }
    w_str(&w, e->body, e->body != NULL ? e->body_len : 0);
    w_u32(&w, (uint32_t)e->n_chunks);
    for (size_t i = 0; i < e->n_chunks; i++)
        w_str(&w, e->chunks[i].data, e->chunks[i].len);
    w_u64(&w, (uint64_t)e->prompt_tokens);
    w_u64(&w, (uint64_t)e->completion_tokens);
    w_str(&w, e->model, e->model != NULL ? strlen(e->model) : 0);
    w_u64(&w, (uint64_t)e->created_unix);
    if (w.oom) {
        free(w.p);
        return TG_NOMEM;
    }
    *out = w.p;
    *len = w.n;
    return TG_OK;
}

struct rbuf {
    const unsigned char *p;
    size_t n, off;
    bool bad;
};

static uint32_t r_u32(struct rbuf *r)
{
    if (r->bad || r->n - r->off < 4) {
        r->bad = true;
        return 0;
    }
    const unsigned char *b = r->p + r->off;
    r->off += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static uint64_t r_u64(struct rbuf *r)
{
    uint64_t lo = r_u32(r);
    uint64_t hi = r_u32(r);
    return lo | hi << 32;
}

/* malloc'd NUL-terminated copy; NULL (and bad) on truncation or OOM */
static char *r_str(struct rbuf *r, size_t *len)
{
    uint32_t n = r_u32(r);
    if (r->bad || r->n - r->off < n) {
        r->bad = true;
        return NULL;
    }
    char *s = malloc((size_t)n + 1);
    if (s == NULL) {
        r->bad = true;
        return NULL;
    }
    memcpy(s, r->p + r->off, n);
    s[n] = '\0';
    r->off += n;
    if (len != NULL)
        *len = n;
    return s;
}

int tg_cache_entry_decode(const char *data, size_t len, struct tg_cache_entry **out)
{
    if (len < 4 || memcmp(data, "TGC1", 4) != 0)
        return TG_PARSE;
    struct rbuf r = {.p = (const unsigned char *)data, .n = len, .off = 4};
    struct tg_cache_entry *e = calloc(1, sizeof *e);
    if (e == NULL)
        return TG_NOMEM;
    e->status = (int)r_u32(&r);
    e->stream = r_u32(&r) != 0;
    e->content_type = r_str(&r, NULL);
    uint32_t nh = r_u32(&r);
    /* every header takes >= 8 bytes: bounds the allocation by the input size */
    if (!r.bad && nh > (len - r.off) / 8)
        r.bad = true;
    if (!r.bad && nh > 0) {
        e->headers = calloc(nh, sizeof *e->headers);
        r.bad = e->headers == NULL;
    }
    for (uint32_t i = 0; !r.bad && i < nh; i++) {
        e->headers[i].name = r_str(&r, NULL);
        e->headers[i].value = r_str(&r, NULL);
        e->n_headers = i + 1;
    }
    e->body = r_str(&r, &e->body_len);
    uint32_t nc = r_u32(&r);
    if (!r.bad && nc > (len - r.off) / 4)
        r.bad = true;
    if (!r.bad && nc > 0) {
        e->chunks = calloc(nc, sizeof *e->chunks);
        r.bad = e->chunks == NULL;
    }
    for (uint32_t i = 0; !r.bad && i < nc; i++) {
        e->chunks[i].data = r_str(&r, &e->chunks[i].len);
        e->n_chunks = i + 1;
    }
    e->prompt_tokens = (int64_t)r_u64(&r);
    e->completion_tokens = (int64_t)r_u64(&r);
    e->model = r_str(&r, NULL);
    e->created_unix = (int64_t)r_u64(&r);
    if (r.bad || r.off != len) {
        tg_cache_entry_free(e);
        return TG_PARSE;
    }
    e->size = len;
    *out = e;
    return TG_OK;
}

/* ---- Redis ---- */

struct lookup {
    tg_cache_lookup_cb cb;
    void *user;
    char key[256];
};

static void on_get(int err, const redisReply *reply, void *user)
{
    struct lookup *l = user;
    struct tg_cache_entry *e = NULL;
    if (err == TG_OK && reply->type == REDIS_REPLY_STRING) {
        if (tg_cache_entry_decode(reply->str, reply->len, &e) != TG_OK) {
            tg_warn("cache: ignoring a corrupt entry at %s", l->key);
            e = NULL;
        }
    } else if (err == TG_OK && reply->type == REDIS_REPLY_ERROR) {
        tg_warn("cache: GET %s: %s", l->key, reply->str);
        err = TG_UNAVAILABLE;
    }
    l->cb(err, e, l->user);
    free(l);
}

int tg_cache_lookup(struct tg_redis *c, const struct tg_cache_key *key, tg_cache_lookup_cb cb,
                    void *user)
{
    struct lookup *l = malloc(sizeof *l);
    if (l == NULL)
        return TG_NOMEM;
    l->cb = cb;
    l->user = user;
    snprintf(l->key, sizeof l->key, "%s", key->redis_key);
    int rc = tg_redis_command(c, on_get, l, "GET %s", key->redis_key);
    if (rc != TG_OK)
        free(l);
    return rc;
}

static void on_set(int err, const redisReply *reply, void *user)
{
    if (err == TG_OK && reply->type == REDIS_REPLY_ERROR)
        tg_warn("cache: SET failed: %s", reply->str);
}

int tg_cache_store(struct tg_redis *c, const struct tg_cache_key *key, struct tg_cache_entry *e,
                   int64_t ttl_s)
{
    if (!tg_redis_available(c))
        return TG_UNAVAILABLE;
    e->created_unix = (int64_t)time(NULL);
    char *data;
    size_t len;
    int rc = tg_cache_entry_encode(e, &data, &len);
    if (rc != TG_OK)
        return rc;
    if (e->max_bytes != 0 && len > e->max_bytes) {
        free(data);
        return TG_TOOBIG;
    }
    rc = tg_redis_command(c, on_set, NULL, "SET %s %b EX %lld", key->redis_key, data, len,
                          (long long)(ttl_s > 0 ? ttl_s : 86400));
    free(data);
    return rc;
}
