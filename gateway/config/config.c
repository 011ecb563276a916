#include "tg/config.h"

#include <errno.h>
#include <libgen.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "tg/err.h"
#include "tg/log.h"
#include "tg/model_ref.h"
#include "tg/yaml.h"

#define KEYS(...) ((const char *const[]){__VA_ARGS__, NULL})
/* local.kv_split's default: see docs/config.md and bench/RESULTS.md (engsplit) */
#define TG_CFG_KV_SPLIT true


/* Relative paths in the file resolve against the file's directory, so `tiergate --config
 * /etc/tiergate/routes.yaml` works from any working directory. */
static char *resolve_path(const struct tg_config *c, const char *p)
{
    if (p == NULL)
        return NULL;
    if (p[0] == '/' || strchr(p, ':') != NULL || strcmp(c->dir, ".") == 0)
        return strdup(p);
    size_t n = strlen(c->dir) + strlen(p) + 2;
    char *out = malloc(n);
    if (out != NULL)
        snprintf(out, n, "%s/%s", c->dir, p);
    return out;
}

static bool parse_hex32(const char *s, unsigned char out[32])
{
    if (s == NULL || strlen(s) != 64)
        return false;
    for (int i = 0; i < 32; i++) {
        unsigned v = 0;
        for (int j = 0; j < 2; j++) {
            char ch = s[2 * i + j];
            v <<= 4;
            if (ch >= '0' && ch <= '9')
                v |= (unsigned)(ch - '0');
            else if (ch >= 'a' && ch <= 'f')
                v |= (unsigned)(ch - 'a' + 10);
            else if (ch >= 'A' && ch <= 'F')
                v |= (unsigned)(ch - 'A' + 10);
            else
                return false;
        }
        out[i] = (unsigned char)v;
    }
    return true;
}

static bool read_int(struct tg_yreader *r, const struct tg_ynode *m, const char *k, int64_t lo,
                     int64_t hi, int *out)
{
    int64_t v = *out;
    if (!tg_yr_int(r, m, k, lo, hi, &v))
        return false;
    *out = (int)v;
    return true;
}

static bool read_size(struct tg_yreader *r, const struct tg_ynode *m, const char *k, int64_t lo,
                      int64_t hi, size_t *out)
{
    int64_t v = (int64_t)*out;
    if (!tg_yr_int(r, m, k, lo, hi, &v))
        return false;
    *out = (size_t)v;
    return true;
}

static bool read_strdup(struct tg_yreader *r, const struct tg_ynode *m, const char *k, char **out)
{
    const char *s = NULL;
    if (!tg_yr_str(r, m, k, &s))
        return false;
    if (s != NULL) {
        free(*out);
        *out = strdup(s);
    }
    return true;
}

static bool read_str_list(struct tg_yreader *r, const struct tg_ynode *m, const char *k,
                          char ***out, size_t *n_out)
{
    const struct tg_ynode *seq = tg_y_get(m, k);
    if (seq == NULL || seq->type == TG_Y_NULL)
        return !r->failed;
    if (!tg_yr_seq(r, seq, k))
        return false;
    char **v = calloc(seq->n + 1, sizeof *v);
    if (v == NULL)
        return tg_yr_fail(r, seq->line, "out of memory");
    for (size_t i = 0; i < seq->n; i++) {
        const char *s;
        if (!tg_yr_node_str(r, seq->items[i], k, &s)) {
            for (size_t j = 0; j < i; j++)
                free(v[j]);
            free(v);
            return false;
        }
        v[i] = strdup(s);
    }
    *out = v;
    *n_out = seq->n;
    return true;
}

static bool read_limits(struct tg_yreader *r, const struct tg_ynode *m, struct tg_cfg_limits *l)
{
    const struct tg_ynode *n = tg_y_get(m, "limits");
    if (!tg_yr_map(r, n, "limits",
                   KEYS("requests_per_min", "tokens_per_min", "usd_per_day", "usd_per_month")))
        return false;
    return tg_yr_int(r, n, "requests_per_min", 0, INT64_C(1) << 40, &l->requests_per_min) &&
           tg_yr_int(r, n, "tokens_per_min", 0, INT64_C(1) << 50, &l->tokens_per_min) &&
           tg_yr_num(r, n, "usd_per_day", 0, 1e12, &l->usd_per_day) &&
           tg_yr_num(r, n, "usd_per_month", 0, 1e12, &l->usd_per_month);
}

/* Without a callback PEM_read_bio_PrivateKey would prompt on the terminal for a passphrase;
 * an encrypted key is refused instead (the service cannot type one). */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

static FILE *open_pem(struct tg_yreader *r, int line, const char *what, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        tg_yr_fail(r, line, "server.tls.%s: cannot read %s: %s", what, path, strerror(errno));
    return f;
}

/* The certificate and key are read here, with libcrypto, so that a missing file, a file that is
 * not PEM or a key that belongs to another certificate is a config error naming the file (at
 * start, in `tiergate check` and on SIGHUP, where it keeps the running configuration). The
 * gateway's TLS context reads the same files again when it is built. */
static bool check_tls_files(struct tg_yreader *r, const struct tg_ynode *n, const struct tg_cfg_tls *t)
{
    int line = tg_y_get(n, "cert")->line, key_line = tg_y_get(n, "key")->line;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    FILE *f = open_pem(r, line, "cert", t->cert);
    if (f != NULL) {
        x = PEM_read_X509(f, NULL, no_passphrase, NULL);
        fclose(f);
        if (x == NULL)
            tg_yr_fail(r, line, "server.tls.cert: %s holds no PEM certificate", t->cert);
    }
    f = x != NULL ? open_pem(r, key_line, "key", t->key) : NULL;
    if (f != NULL) {
        k = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
        fclose(f);
        if (k == NULL)
            tg_yr_fail(r, key_line, "server.tls.key: %s holds no unencrypted PEM private key", t->key);
        else if (X509_check_private_key(x, k) != 1)
            tg_yr_fail(r, key_line, "server.tls.key: %s does not match the certificate in %s", t->key,
                       t->cert);
    }
    if (!r->failed && X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
        tg_warn("config: server.tls.cert %s has expired: clients will refuse it", t->cert);
    /* Failures leave entries in this thread's OpenSSL error queue; they are reported above. */
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(k);
    return !r->failed;
}

static bool load_tls(struct tg_yreader *r, const struct tg_ynode *n, struct tg_config *c)
{
    struct tg_cfg_tls *t = &c->server.tls;
    if (n == NULL || n->type == TG_Y_NULL)
        return !r->failed;
    if (!tg_yr_map(r, n, "tls", KEYS("cert", "key", "min_version")))
        return false;
    if (n->type != TG_Y_MAP)
        return tg_yr_fail(r, n->line, "tls must be a mapping with cert and key");
    const char *cert = NULL, *key = NULL;
    int minv = t->min_version == 13 ? 1 : 0;
    if (!(tg_yr_str(r, n, "cert", &cert) && tg_yr_str(r, n, "key", &key) &&
          tg_yr_enum(r, n, "min_version", KEYS("1.2", "1.3"), &minv)))
        return false;
    if (cert == NULL || cert[0] == '\0')
        return tg_yr_fail(r, n->line, "tls needs cert (a PEM certificate chain file)");
    if (key == NULL || key[0] == '\0')
        return tg_yr_fail(r, n->line, "tls needs key (a PEM private key file)");
    t->cert = resolve_path(c, cert);
    t->key = resolve_path(c, key);
    if (t->cert == NULL || t->key == NULL)
        return tg_yr_fail(r, n->line, "out of memory");
    t->min_version = minv == 1 ? 13 : 12;
    t->enabled = true;
    return check_tls_files(r, n, t);
}

static bool load_server(struct tg_yreader *r, const struct tg_ynode *n, struct tg_config *c)
{
    struct tg_cfg_server *s = &c->server;
    if (!tg_yr_map(r, n, "server",
                   KEYS("listen", "io_threads", "busy_poll_us", "busy_poll_upstream_us", "max_body_bytes",
                        "max_header_bytes", "read_timeout_ms", "header_timeout_ms",
                        "idle_timeout_ms", "drain_timeout_ms", "max_connections", "open_mode",
                        "api_keys", "admin_key_sha256", "log_level", "log_format", "tls")))
        return false;
    const char *listen = NULL;
    if (!tg_yr_str(r, n, "listen", &listen))
        return false;
    if (listen != NULL) {
        /* host:port, [v6]:port */
        const char *colon = strrchr(listen, ':');
        char *end = NULL;
        long port = colon != NULL ? strtol(colon + 1, &end, 10) : -1;
        if (colon == NULL || colon == listen || end == colon + 1 || *end != '\0' || port <= 0 ||
            port > 65535)
            return tg_yr_fail(r, tg_y_get(n, "listen")->line,
                              "listen must be host:port (got '%s')", listen);
        const char *h = listen;
        size_t hl = (size_t)(colon - listen);
        if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
            h++;
            hl -= 2;
        }
        free(s->listen_host);
        s->listen_host = strndup(h, hl);
        s->port = (int)port;
    }
    int fmt = s->log_json ? 1 : 0;
    if (!(read_int(r, n, "io_threads", 0, 256, &s->io_threads) &&
          read_int(r, n, "busy_poll_us", 0, 10000, &s->busy_poll_us) &&
          read_int(r, n, "busy_poll_upstream_us", 0, 10000, &s->busy_poll_upstream_us) &&
          read_size(r, n, "max_body_bytes", 1024, INT64_C(1) << 30, &s->max_body_bytes) &&
          read_size(r, n, "max_header_bytes", 1024, 1 << 20, &s->max_header_bytes) &&
          read_int(r, n, "read_timeout_ms", 100, 3600000, &s->read_timeout_ms) &&
          read_int(r, n, "header_timeout_ms", 100, 600000, &s->header_timeout_ms) &&
          read_int(r, n, "idle_timeout_ms", 100, 3600000, &s->idle_timeout_ms) &&
          read_int(r, n, "drain_timeout_ms", 0, 600000, &s->drain_timeout_ms) &&
          read_int(r, n, "max_connections", 0, 10000000, &s->max_connections) &&
          tg_yr_bool(r, n, "open_mode", &s->open_mode) &&
          tg_yr_enum(r, n, "log_format", KEYS("text", "json"), &fmt) &&
          read_strdup(r, n, "log_level", &s->log_level)))
        return false;
    s->log_json = fmt == 1;
    enum tg_log_level lvl;
    if (!tg_log_level_parse(s->log_level, &lvl))
        return tg_yr_fail(r, tg_y_get(n, "log_level")->line,
                          "log_level must be one of debug|info|warn|error|off (got '%s')", s->log_level);
    const struct tg_ynode *adm = tg_y_get(n, "admin_key_sha256");
    if (adm != NULL && adm->type != TG_Y_NULL) {
        const char *hex;
        if (!tg_yr_node_str(r, adm, "admin_key_sha256", &hex))
            return false;
        if (adm->env_missing != NULL) {
            tg_warn("config: admin key variable %s is unset: /metrics, /v1/usage and /dashboard are open",
                    adm->env_missing);
        } else if (!parse_hex32(hex, s->admin_sha256)) {
            return tg_yr_fail(r, adm->line, "admin_key_sha256 must be 64 hex digits (sha256sum of the key)");
        } else {
            s->has_admin_key = true;
        }
    }
    if (!load_tls(r, tg_y_get(n, "tls"), c))
        return false;

    const struct tg_ynode *keys = tg_y_get(n, "api_keys");
    if (!tg_yr_seq(r, keys, "api_keys"))
        return false;
    size_t nk = keys != NULL && keys->type == TG_Y_SEQ ? keys->n : 0;
    s->keys = calloc(nk + 1, sizeof *s->keys);
    if (s->keys == NULL)
        return tg_yr_fail(r, n->line, "out of memory");
    for (size_t i = 0; i < nk; i++) {
        const struct tg_ynode *k = keys->items[i];
        struct tg_cfg_key *key = &s->keys[s->n_keys];
        if (!tg_yr_map(r, k, "api key", KEYS("name", "sha256", "tenant", "privacy", "limits")))
            return false;
        if (k->type != TG_Y_MAP)
            return tg_yr_fail(r, k->line, "api key must be a mapping with name and sha256");
        const char *name = NULL, *hex = NULL, *tenant = NULL;
        if (!(tg_yr_str(r, k, "name", &name) && tg_yr_str(r, k, "sha256", &hex) &&
              tg_yr_str(r, k, "tenant", &tenant) && tg_yr_bool(r, k, "privacy", &key->privacy) &&
              read_limits(r, k, &key->limits)))
            return false;
        if (name == NULL)
            return tg_yr_fail(r, k->line, "api key needs a name");
        if (hex == NULL)
            return tg_yr_fail(r, k->line, "api key '%s' needs sha256", name);
        const struct tg_ynode *hn = tg_y_get(k, "sha256");
        if (hn->env_missing != NULL) {
            tg_warn("config: api key '%s' disabled: variable %s is unset", name, hn->env_missing);
            continue;
        }
        if (!parse_hex32(hex, key->sha256))
            return tg_yr_fail(r, hn->line, "sha256 must be 64 hex digits (sha256sum of the key)");
        key->name = strdup(name);
        key->tenant = strdup(tenant != NULL ? tenant : name);
        s->n_keys++;
    }
    return true;
}

static bool load_redis(struct tg_yreader *r, const struct tg_ynode *n, struct tg_config *c)
{
    struct tg_cfg_redis *x = &c->redis;
    int fail = x->limits_fail_open ? 0 : 1;
    if (!(tg_yr_map(r, n, "redis",
                    KEYS("enabled", "url", "connect_timeout_ms", "command_timeout_ms", "limits_fail")) &&
          tg_yr_bool(r, n, "enabled", &x->enabled) && read_strdup(r, n, "url", &x->url) &&
          read_int(r, n, "connect_timeout_ms", 10, 600000, &x->connect_timeout_ms) &&
          read_int(r, n, "command_timeout_ms", 1, 600000, &x->command_timeout_ms) &&
          tg_yr_enum(r, n, "limits_fail", KEYS("open", "closed"), &fail)))
        return false;
    x->limits_fail_open = fail == 0;
    if (x->enabled && strncmp(x->url, "redis://", 8) != 0 && strncmp(x->url, "unix://", 7) != 0)
        return tg_yr_fail(r, tg_y_get(n, "url")->line, "url must start with redis:// or unix:// (got '%s')",
                          x->url);
    return true;
}

static bool load_local(struct tg_yreader *r, const struct tg_ynode *n, struct tg_config *c)
{
    struct tg_cfg_local *l = &c->local;
    if (!(tg_yr_map(r, n, "local",
                    KEYS("enabled", "model", "slots", "context", "threads", "gpu_layers",
                         "kv_cache_type", "queue_max", "prefix_cache_entries", "kv_split",
                         "prefix_cache_spill_bytes", "price_per_mtok_usd", "workers")) &&
          tg_yr_bool(r, n, "enabled", &l->enabled) &&
          read_int(r, n, "slots", 1, 256, &l->slots) &&
          read_int(r, n, "context", 256, 1 << 20, &l->context) &&
          read_int(r, n, "threads", 0, 1024, &l->threads) &&
          read_int(r, n, "gpu_layers", 0, 1000, &l->gpu_layers) &&
          read_int(r, n, "queue_max", 0, 1000000, &l->queue_max) &&
          read_int(r, n, "prefix_cache_entries", 0, 100000, &l->prefix_cache_entries) &&
          tg_yr_bool(r, n, "kv_split", &l->kv_split) &&
          tg_yr_int(r, n, "prefix_cache_spill_bytes", -1, INT64_C(1) << 40,
                    &l->prefix_cache_spill_bytes) &&
          tg_yr_num(r, n, "price_per_mtok_usd", 0, 1e6, &l->price_per_mtok_usd) &&
          read_str_list(r, n, "workers", &l->workers, &l->n_workers)))
        return false;
    int kv = 0;
    if (!tg_yr_enum(r, n, "kv_cache_type", KEYS("f16", "q8_0", "q4_0"), &kv))
        return false;
    const char *kvs[] = {"f16", "q8_0", "q4_0"};
    if (tg_y_get(n, "kv_cache_type") != NULL) {
        free(l->kv_cache_type);
        l->kv_cache_type = strdup(kvs[kv]);
    }
    const char *model = NULL;
    if (!tg_yr_str(r, n, "model", &model))
        return false;
    if (model != NULL) {
        free(l->model);
        l->model = NULL;
        if (tg_model_ref_is_ollama(model)) {
            /* ollama:NAME[:TAG] -> the GGUF blob in the local Ollama store (gateway/config/model_ref.c) */
            char path[4096], merr[400];
            if (tg_model_ref_resolve(model, path, sizeof path, merr, sizeof merr) != 0)
                return tg_yr_fail(r, tg_y_get(n, "model")->line, "local.model: %s", merr);
            l->model = strdup(path);
        } else {
            l->model = resolve_path(c, model);
        }
    }
    if (l->context < l->slots * 64)
        return tg_yr_fail(r, tg_y_get(n, "context") ? tg_y_get(n, "context")->line : n->line,
                          "context (%d tokens) is too small for %d slots", l->context, l->slots);
    for (size_t i = 0; i < l->n_workers; i++)
        if (strncmp(l->workers[i], "ipc://", 6) != 0 && strncmp(l->workers[i], "tcp://", 6) != 0 &&
            strncmp(l->workers[i], "inproc://", 9) != 0)
            return tg_yr_fail(r, tg_y_get(n, "workers")->items[i]->line,
                              "worker address must be ipc://, tcp:// or inproc:// (got '%s')",
                              l->workers[i]);
    return true;
}

static bool load_providers(struct tg_yreader *r, const struct tg_ynode *n, struct tg_config *c)
{
    /* provider names are free-form keys, so no allow-list here */
    if (n == NULL || n->type == TG_Y_NULL)
        return true;
    if (n->type != TG_Y_MAP)
        return tg_yr_fail(r, n->line, "providers must be a mapping of name: {kind, base_url, ...}");
    c->providers = calloc(n->n + 1, sizeof *c->providers);
    if (c->providers == NULL)
        return tg_yr_fail(r, n->line, "out of memory");
    for (size_t i = 0; i < n->n; i++) {
        const struct tg_ynode *p = n->items[i];
        struct tg_cfg_provider *pv = &c->providers[c->n_providers++];
        *pv = (struct tg_cfg_provider){
            .name = strdup(n->keys[i]), .enabled = true, .connect_timeout_ms = 5000,
            .first_byte_timeout_ms = 60000, .stream_idle_timeout_ms = 30000,
            .total_timeout_ms = 600000, .retries = 2, .retry_base_ms = 200,
            .circuit_failures = 5, .circuit_window_ms = 30000, .circuit_open_ms = 15000};
        if (p->type != TG_Y_MAP)
            return tg_yr_fail(r, p->line, "provider '%s' must be a mapping", n->keys[i]);
        int kind = -1;
        if (!(tg_yr_map(r, p, "provider",
                        KEYS("kind", "base_url", "api_key", "connect_timeout_ms",
                             "first_byte_timeout_ms", "stream_idle_timeout_ms", "total_timeout_ms",
                             "retries", "retry_base_ms", "circuit_failures", "circuit_window_ms",
                             "circuit_open_ms")) &&
              tg_yr_enum(r, p, "kind", KEYS("openai", "anthropic"), &kind) &&
              read_strdup(r, p, "base_url", &pv->base_url) &&
              read_int(r, p, "connect_timeout_ms", 10, 600000, &pv->connect_timeout_ms) &&
              read_int(r, p, "first_byte_timeout_ms", 10, 3600000, &pv->first_byte_timeout_ms) &&
              read_int(r, p, "stream_idle_timeout_ms", 10, 3600000, &pv->stream_idle_timeout_ms) &&
              read_int(r, p, "total_timeout_ms", 10, 86400000, &pv->total_timeout_ms) &&
              read_int(r, p, "retries", 0, 10, &pv->retries) &&
              read_int(r, p, "retry_base_ms", 1, 60000, &pv->retry_base_ms) &&
              read_int(r, p, "circuit_failures", 1, 10000, &pv->circuit_failures) &&
              read_int(r, p, "circuit_window_ms", 100, 3600000, &pv->circuit_window_ms) &&
              read_int(r, p, "circuit_open_ms", 10, 3600000, &pv->circuit_open_ms)))
            return false;
        const int pline = n->key_lines[i];
        if (kind < 0)
            return tg_yr_fail(r, pline, "provider '%s' needs kind: openai|anthropic", pv->name);
        pv->kind = (enum tg_provider_kind)kind;
        if (pv->base_url == NULL)
            return tg_yr_fail(r, pline, "provider '%s' needs base_url", pv->name);
        if (strncmp(pv->base_url, "http://", 7) != 0 && strncmp(pv->base_url, "https://", 8) != 0)
            return tg_yr_fail(r, tg_y_get(p, "base_url")->line,
                              "base_url must start with http:// or https:// (got '%s')", pv->base_url);
        const struct tg_ynode *key = tg_y_get(p, "api_key");
        if (key != NULL && key->type == TG_Y_SCALAR) {
            if (key->env_missing != NULL) {
                pv->enabled = false;
                size_t len = strlen(key->env_missing) + 64;
                pv->disabled_reason = malloc(len);
                if (pv->disabled_reason != NULL)
                    snprintf(pv->disabled_reason, len, "environment variable %s is not set",
                             key->env_missing);
            } else {
                pv->api_key = strdup(key->value);
            }
        } else if (key != NULL && key->type != TG_Y_NULL) {
            return tg_yr_fail(r, key->line, "api_key must be a string");
        }
    }
    return true;
}

static bool load_models(struct tg_yreader *r, const struct tg_ynode *n, struct tg_config *c)
{
    if (!tg_yr_seq(r, n, "models"))
        return false;
    size_t cnt = n != NULL && n->type == TG_Y_SEQ ? n->n : 0;
    c->models = calloc(cnt + 1, sizeof *c->models);
    if (c->models == NULL)
        return tg_yr_fail(r, n ? n->line : 1, "out of memory");
    for (size_t i = 0; i < cnt; i++) {
        const struct tg_ynode *m = n->items[i];
        struct tg_cfg_model *md = &c->models[c->n_models++];
        if (m->type != TG_Y_MAP)
            return tg_yr_fail(r, m->line, "each model must be a mapping with name and tier");
        int tier = -1;
        const char *target = NULL;
        if (!(tg_yr_map(r, m, "model",
                        KEYS("name", "tier", "target", "provider", "upstream_model",
                             "input_usd_per_mtok", "output_usd_per_mtok", "fallbacks")) &&
              read_strdup(r, m, "name", &md->name) &&
              tg_yr_enum(r, m, "tier", KEYS("local", "remote"), &tier) &&
              tg_yr_str(r, m, "target", &target) &&
              read_strdup(r, m, "provider", &md->provider) &&
              read_strdup(r, m, "upstream_model", &md->upstream_model) &&
              tg_yr_num(r, m, "input_usd_per_mtok", 0, 1e6, &md->input_usd_per_mtok) &&
              tg_yr_num(r, m, "output_usd_per_mtok", 0, 1e6, &md->output_usd_per_mtok) &&
              read_str_list(r, m, "fallbacks", &md->fallbacks, &md->n_fallbacks)))
            return false;
        if (md->name == NULL)
            return tg_yr_fail(r, m->line, "model needs a name");
        if (tier < 0)
            return tg_yr_fail(r, m->line, "model '%s' needs tier: local|remote", md->name);
        md->tier = (enum tg_tier)tier;
        if (md->upstream_model == NULL)
            md->upstream_model = strdup(md->name);
        if (target != NULL && strcmp(target, "engine") != 0)
            return tg_yr_fail(r, tg_y_get(m, "target")->line,
                              "target must be 'engine' (use provider: NAME for an endpoint)");
        if (md->provider != NULL && target != NULL)
            return tg_yr_fail(r, m->line, "model '%s': give either target: engine or provider, not both",
                              md->name);
        if (md->provider != NULL) {
            md->target = TG_TARGET_PROVIDER;
            md->provider_ref = tg_config_provider(c, md->provider);
            if (md->provider_ref == NULL)
                return tg_yr_fail(r, tg_y_get(m, "provider")->line, "model '%s' has an unknown provider '%s'",
                                  md->name, md->provider);
        } else if (md->tier == TG_TIER_LOCAL) {
            md->target = TG_TARGET_ENGINE;
        } else {
            return tg_yr_fail(r, m->line, "remote model '%s' needs provider: NAME", md->name);
        }
        for (size_t j = 0; j + 1 < c->n_models; j++)
            if (strcmp(c->models[j].name, md->name) == 0)
                return tg_yr_fail(r, tg_y_get(m, "name")->line, "duplicate model name '%s'", md->name);
    }
    /* fallbacks may name models defined later: check once all are read */
    for (size_t i = 0; i < cnt; i++) {
        const struct tg_cfg_model *md = &c->models[i];
        for (size_t j = 0; j < md->n_fallbacks; j++)
            if (tg_config_model(c, md->fallbacks[j]) == NULL)
                return tg_yr_fail(r, tg_y_get(n->items[i], "fallbacks")->items[j]->line,
                                  "model '%s': fallback '%s' is not a defined model", md->name,
                                  md->fallbacks[j]);
    }
    return true;
}

static bool load_aliases(struct tg_yreader *r, const struct tg_ynode *n, struct tg_config *c)
{
    if (n == NULL || n->type == TG_Y_NULL)
        return true;
    if (n->type != TG_Y_MAP)
        return tg_yr_fail(r, n->line, "aliases must be a mapping of name: {local, remote}");
    c->aliases = calloc(n->n + 1, sizeof *c->aliases);
    if (c->aliases == NULL)
        return tg_yr_fail(r, n->line, "out of memory");
    for (size_t i = 0; i < n->n; i++) {
        const struct tg_ynode *a = n->items[i];
        struct tg_cfg_alias *al = &c->aliases[c->n_aliases++];
        al->name = strdup(n->keys[i]);
        if (!(tg_yr_map(r, a, "alias", KEYS("local", "remote")) &&
              read_strdup(r, a, "local", &al->local) && read_strdup(r, a, "remote", &al->remote)))
            return false;
        if (a->type != TG_Y_MAP || (al->local == NULL && al->remote == NULL))
            return tg_yr_fail(r, a->line, "alias '%s' needs local and/or remote model names", al->name);
        if (tg_config_model(c, al->name) != NULL)
            return tg_yr_fail(r, n->key_lines[i], "alias '%s' has the name of a model", al->name);
        const char *which[2] = {"local", "remote"};
        const char *names[2] = {al->local, al->remote};
        for (int t = 0; t < 2; t++) {
            if (names[t] == NULL)
                continue;
            const struct tg_cfg_model *m = tg_config_model(c, names[t]);
            int line = tg_y_get(a, which[t])->line;
            if (m == NULL)
                return tg_yr_fail(r, line, "alias '%s': %s model '%s' is not defined", al->name,
                                  which[t], names[t]);
            if ((int)m->tier != t)
                return tg_yr_fail(r, line, "alias '%s': model '%s' is not a %s model", al->name,
                                  names[t], which[t]);
        }
    }
    return true;
}

static bool load_misc(struct tg_yreader *r, const struct tg_ynode *root, struct tg_config *c)
{
    const struct tg_ynode *cache = tg_y_get(root, "cache");
    const struct tg_ynode *met = tg_y_get(root, "metrics");
    const struct tg_ynode *jobs = tg_y_get(root, "jobs");
    int64_t max_entry = (int64_t)c->cache.max_entry_bytes;
    if (!(tg_yr_map(r, cache, "cache", KEYS("enabled", "ttl_s", "max_entry_bytes", "cache_nondeterministic")) &&
          tg_yr_bool(r, cache, "enabled", &c->cache.enabled) &&
          tg_yr_int(r, cache, "ttl_s", 1, INT64_C(365) * 86400, &c->cache.ttl_s) &&
          tg_yr_int(r, cache, "max_entry_bytes", 256, INT64_C(512) << 20, &max_entry) &&
          tg_yr_bool(r, cache, "cache_nondeterministic", &c->cache.cache_nondeterministic) &&
          tg_yr_map(r, met, "metrics", KEYS("reference_model", "tenant_labels")) &&
          read_strdup(r, met, "reference_model", &c->metrics.reference_model) &&
          read_str_list(r, met, "tenant_labels", &c->metrics.tenant_labels, &c->metrics.n_tenant_labels) &&
          tg_yr_map(r, jobs, "jobs", KEYS("result_ttl_s", "webhook_secret", "webhook_retries", "claim_idle_ms",
                                          "webhook_allow_private")) &&
          tg_yr_bool(r, jobs, "webhook_allow_private", &c->jobs.webhook_allow_private) &&
          tg_yr_int(r, jobs, "result_ttl_s", 1, INT64_C(365) * 86400, &c->jobs.result_ttl_s) &&
          read_int(r, jobs, "webhook_retries", 0, 100, &c->jobs.webhook_retries) &&
          tg_yr_int(r, jobs, "claim_idle_ms", 100, INT64_C(86400000), &c->jobs.claim_idle_ms)))
        return false;
    c->cache.max_entry_bytes = (size_t)max_entry;
    const struct tg_ynode *ws = tg_y_get(jobs, "webhook_secret");
    if (ws != NULL && ws->type == TG_Y_SCALAR) {
        if (ws->env_missing != NULL)
            tg_warn("config: jobs.webhook_secret: variable %s is unset, webhook callbacks are unsigned",
                    ws->env_missing);
        else
            c->jobs.webhook_secret = strdup(ws->value);
    }
    if (c->metrics.reference_model != NULL) {
        const struct tg_cfg_model *m = tg_config_model(c, c->metrics.reference_model);
        if (m == NULL)
            return tg_yr_fail(r, tg_y_get(met, "reference_model")->line,
                              "reference_model '%s' is not a defined model", c->metrics.reference_model);
    }
    const char *policy = NULL;
    if (!tg_yr_str(r, root, "policy", &policy))
        return false;
    if (policy != NULL) {
        free(c->policy);
        c->policy = resolve_path(c, policy);
    }
    return true;
}

static void set_defaults(struct tg_config *c)
{
    c->server = (struct tg_cfg_server){
        .listen_host = strdup("127.0.0.1"), .port = 8080, .io_threads = 0,
        .busy_poll_upstream_us = TG_CFG_BUSY_POLL_UPSTREAM_US,
        .max_body_bytes = 4u << 20, .max_header_bytes = 16384, .read_timeout_ms = 60000,
        .header_timeout_ms = 10000, .idle_timeout_ms = 75000, .drain_timeout_ms = 15000,
        .log_level = strdup("info"), .tls = {.min_version = 12}};
    c->redis = (struct tg_cfg_redis){.enabled = true, .url = strdup("redis://127.0.0.1:6379/0"),
                                     .connect_timeout_ms = 1000, .command_timeout_ms = 500,
                                     .limits_fail_open = true};
    c->local = (struct tg_cfg_local){.enabled = true, .slots = 4, .context = 8192, .threads = 0,
                                     .kv_cache_type = strdup("f16"), .queue_max = 64,
                                     .prefix_cache_entries = 16, .kv_split = TG_CFG_KV_SPLIT,
                                     .prefix_cache_spill_bytes = -1};
    c->cache = (struct tg_cfg_cache){.enabled = true, .ttl_s = 86400, .max_entry_bytes = 1u << 20};
    c->jobs = (struct tg_cfg_jobs){.result_ttl_s = 86400, .webhook_retries = 5, .claim_idle_ms = 30000};
}

static void free_strv(char **v, size_t n)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void config_free(struct tg_config *c)
{
    if (c == NULL)
        return;
    free(c->path);
    free(c->dir);
    free(c->server.listen_host);
    free(c->server.log_level);
    free(c->server.tls.cert);
    free(c->server.tls.key);
    for (size_t i = 0; i < c->server.n_keys; i++) {
        free(c->server.keys[i].name);
        free(c->server.keys[i].tenant);
    }
    free(c->server.keys);
    free(c->redis.url);
    free(c->local.model);
    free(c->local.kv_cache_type);
    free_strv(c->local.workers, c->local.n_workers);
    for (size_t i = 0; i < c->n_providers; i++) {
        struct tg_cfg_provider *p = &c->providers[i];
        free(p->name);
        free(p->base_url);
        if (p->api_key != NULL)
            OPENSSL_cleanse(p->api_key, strlen(p->api_key));
        free(p->api_key);
        free(p->disabled_reason);
    }
    free(c->providers);
    for (size_t i = 0; i < c->n_models; i++) {
        struct tg_cfg_model *m = &c->models[i];
        free(m->name);
        free(m->provider);
        free(m->upstream_model);
        free_strv(m->fallbacks, m->n_fallbacks);
    }
    free(c->models);
    for (size_t i = 0; i < c->n_aliases; i++) {
        free(c->aliases[i].name);
        free(c->aliases[i].local);
        free(c->aliases[i].remote);
    }
    free(c->aliases);
    free(c->policy);
    free(c->metrics.reference_model);
    free_strv(c->metrics.tenant_labels, c->metrics.n_tenant_labels);
    if (c->jobs.webhook_secret != NULL)
        OPENSSL_cleanse(c->jobs.webhook_secret, strlen(c->jobs.webhook_secret));
    free(c->jobs.webhook_secret);
    free(c);
}

/* Every secret the config holds is registered with the logger, which masks it in every log line
 * (and the upstream layer in every relayed error body) even where a message quotes it by mistake.
 * Registered on each successful load, so a SIGHUP that rotates a key covers the new one too. */
static void register_secrets(const struct tg_config *c)
{
    for (size_t i = 0; i < c->n_providers; i++)
        tg_log_add_secret(c->providers[i].api_key);
    tg_log_add_secret(c->jobs.webhook_secret);
    /* redis://[user]:password@host... */
    const char *u = c->redis.url != NULL ? strstr(c->redis.url, "://") : NULL;
    if (u != NULL) {
        u += 3;
        size_t hostpart = strcspn(u, "/");
        const char *at = memchr(u, '@', hostpart);
        const char *colon = at != NULL ? memchr(u, ':', (size_t)(at - u)) : NULL;
        if (colon != NULL && at - colon > 1) {
            char pw[512];
            if ((size_t)(at - colon - 1) < sizeof pw) {
                memcpy(pw, colon + 1, (size_t)(at - colon - 1));
                pw[at - colon - 1] = '\0';
                tg_log_add_secret(pw);
                OPENSSL_cleanse(pw, sizeof pw);
            }
        }
    }
}

int tg_config_load(const char *path, struct tg_config **out, char *err, size_t errlen)
{
    struct tg_ydoc *doc = tg_ydoc_load(path, err, errlen);
    if (doc == NULL)
        return TG_CONFIG;
    struct tg_config *c = calloc(1, sizeof *c);
    if (c == NULL) {
        tg_ydoc_free(doc);
        snprintf(err, errlen, "%s: out of memory", path);
        return TG_NOMEM;
    }
    c->refs = 1;
    c->path = strdup(path);
    char *tmp = strdup(path);
    c->dir = strdup(dirname(tmp));
    free(tmp);
    set_defaults(c);

    struct tg_yreader r;
    tg_yr_init(&r, path);
    const struct tg_ynode *root = tg_ydoc_root(doc);
    bool ok = tg_yr_map(&r, root, "the top level",
                        KEYS("server", "redis", "local", "providers", "models", "aliases",
                             "policy", "cache", "metrics", "jobs")) &&
              root->type == TG_Y_MAP;
    if (!ok && !r.failed)
        tg_yr_fail(&r, root->line, "the configuration must be a mapping (server:, local:, models:, ...)");
    ok = ok && load_server(&r, tg_y_get(root, "server"), c) &&
         load_redis(&r, tg_y_get(root, "redis"), c) && load_local(&r, tg_y_get(root, "local"), c) &&
         load_providers(&r, tg_y_get(root, "providers"), c) &&
         load_models(&r, tg_y_get(root, "models"), c) &&
         load_aliases(&r, tg_y_get(root, "aliases"), c) && load_misc(&r, root, c);
    if (ok && c->n_models == 0)
        ok = tg_yr_fail(&r, root->line, "no models defined (models: [...])");
    if (ok && c->server.n_keys == 0 && !c->server.open_mode)
        ok = tg_yr_fail(&r, tg_y_get(root, "server") ? tg_y_get(root, "server")->line : 1,
                        "no usable api_keys and open_mode is false: nobody could call the gateway");
    tg_ydoc_free(doc);
    if (!ok) {
        snprintf(err, errlen, "%s", r.err);
        config_free(c);
        return TG_CONFIG;
    }
    register_secrets(c);
    *out = c;
    return TG_OK;
}

struct tg_config *tg_config_ref(struct tg_config *cfg)
{
    __atomic_add_fetch(&cfg->refs, 1, __ATOMIC_RELAXED);
    return cfg;
}

void tg_config_unref(struct tg_config *cfg)
{
    if (cfg != NULL && __atomic_sub_fetch(&cfg->refs, 1, __ATOMIC_ACQ_REL) == 0)
        config_free(cfg);
}

const struct tg_cfg_model *tg_config_model(const struct tg_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_models; i++)
        if (cfg->models[i].name != NULL && strcmp(cfg->models[i].name, name) == 0)
            return &cfg->models[i];
    return NULL;
}

const struct tg_cfg_alias *tg_config_alias(const struct tg_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_aliases; i++)
        if (strcmp(cfg->aliases[i].name, name) == 0)
            return &cfg->aliases[i];
    return NULL;
}

const struct tg_cfg_provider *tg_config_provider(const struct tg_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_providers; i++)
        if (strcmp(cfg->providers[i].name, name) == 0)
            return &cfg->providers[i];
    return NULL;
}

const struct tg_cfg_key *tg_config_key_by_hash(const struct tg_config *cfg, const unsigned char sha256[32])
{
    /* Compare against every key so timing does not tell which (or whether one) matched. */
    const struct tg_cfg_key *found = NULL;
    for (size_t i = 0; i < cfg->server.n_keys; i++) {
        int diff = CRYPTO_memcmp(cfg->server.keys[i].sha256, sha256, 32);
        if (diff == 0 && found == NULL)
            found = &cfg->server.keys[i];
    }
    return found;
}

const char *tg_config_default_path(const char *explicit_path)
{
    if (explicit_path != NULL && explicit_path[0] != '\0')
        return explicit_path;
    const char *env = getenv("TIERGATE_CONFIG");
    return env != NULL && env[0] != '\0' ? env : "./routes.yaml";
}

static void print_limits(FILE *o, const struct tg_cfg_limits *l)
{
    fprintf(o, "      limits: {requests_per_min: %lld, tokens_per_min: %lld, usd_per_day: %g, usd_per_month: %g}\n",
            (long long)l->requests_per_min, (long long)l->tokens_per_min, l->usd_per_day, l->usd_per_month);
}

void tg_config_print(const struct tg_config *c, FILE *o)
{
    const struct tg_cfg_server *s = &c->server;
    fprintf(o, "# effective configuration of %s (secrets masked)\n", c->path);
    fprintf(o, "server:\n  listen: %s%s%s:%d\n  io_threads: %d\n  busy_poll_us: %d\n"
               "  busy_poll_upstream_us: %d\n"
               "  max_body_bytes: %zu\n  max_header_bytes: %zu\n  read_timeout_ms: %d\n  header_timeout_ms: %d\n"
               "  idle_timeout_ms: %d\n  drain_timeout_ms: %d\n  max_connections: %d\n"
               "  open_mode: %s\n  log_level: %s\n  log_format: %s\n  admin_key_sha256: %s\n  api_keys:%s\n",
            strchr(s->listen_host, ':') ? "[" : "", s->listen_host, strchr(s->listen_host, ':') ? "]" : "",
            s->port, s->io_threads, s->busy_poll_us, s->busy_poll_upstream_us, s->max_body_bytes, s->max_header_bytes,
            s->read_timeout_ms, s->header_timeout_ms, s->idle_timeout_ms, s->drain_timeout_ms, s->max_connections,
            s->open_mode ? "true" : "false", s->log_level, s->log_json ? "json" : "text",
            s->has_admin_key ? "\"****\"" : "null", s->n_keys ? "" : " []");
    for (size_t i = 0; i < s->n_keys; i++) {
        fprintf(o, "    - name: %s\n      sha256: \"****\"\n      tenant: %s\n      privacy: %s\n",
                s->keys[i].name, s->keys[i].tenant, s->keys[i].privacy ? "true" : "false");
        print_limits(o, &s->keys[i].limits);
    }
    if (s->tls.enabled)
        fprintf(o, "  tls: {cert: %s, key: %s, min_version: \"%s\"}\n", s->tls.cert, s->tls.key,
                s->tls.min_version == 13 ? "1.3" : "1.2");
    char rurl[1024]; /* the password in redis://:password@host is masked like other secrets */
    snprintf(rurl, sizeof rurl, "%s", c->redis.url);
    tg_log_redact(rurl);
    fprintf(o, "redis:\n  enabled: %s\n  url: %s\n  connect_timeout_ms: %d\n  command_timeout_ms: %d\n"
               "  limits_fail: %s\n",
            c->redis.enabled ? "true" : "false", rurl, c->redis.connect_timeout_ms,
            c->redis.command_timeout_ms, c->redis.limits_fail_open ? "open" : "closed");
    const struct tg_cfg_local *l = &c->local;
    char kv_note[64] = "", spill[96];
    if (l->kv_split)
        snprintf(kv_note, sizeof kv_note, "  # %d tokens per slot", l->context / l->slots);
    if (l->prefix_cache_spill_bytes < 0)
        snprintf(spill, sizeof spill, "-1  # auto: %s",
                 l->kv_split ? "as many bytes as the KV cache" : "none (unified KV)");
    else
        snprintf(spill, sizeof spill, "%lld", (long long)l->prefix_cache_spill_bytes);
    fprintf(o, "local:\n  enabled: %s\n  model: %s\n  slots: %d\n  context: %d\n  threads: %d\n"
               "  gpu_layers: %d\n  kv_cache_type: %s\n  queue_max: %d\n  prefix_cache_entries: %d\n"
               "  kv_split: %s%s\n  prefix_cache_spill_bytes: %s\n"
               "  price_per_mtok_usd: %g\n  workers:%s\n",
            l->enabled ? "true" : "false", l->model ? l->model : "null", l->slots, l->context,
            l->threads, l->gpu_layers, l->kv_cache_type, l->queue_max, l->prefix_cache_entries,
            l->kv_split ? "true" : "false", kv_note, spill,
            l->price_per_mtok_usd, l->n_workers ? "" : " []");
    for (size_t i = 0; i < l->n_workers; i++)
        fprintf(o, "    - %s\n", l->workers[i]);
    fprintf(o, "providers:%s\n", c->n_providers ? "" : " {}");
    for (size_t i = 0; i < c->n_providers; i++) {
        const struct tg_cfg_provider *p = &c->providers[i];
        fprintf(o, "  %s:\n    kind: %s\n    base_url: %s\n    api_key: %s\n", p->name,
                p->kind == TG_PROVIDER_OPENAI ? "openai" : "anthropic", p->base_url,
                p->api_key ? "\"****\"" : "null");
        if (!p->enabled)
            fprintf(o, "    # disabled: %s\n", p->disabled_reason ? p->disabled_reason : "?");
        fprintf(o, "    connect_timeout_ms: %d\n    first_byte_timeout_ms: %d\n    stream_idle_timeout_ms: %d\n"
                   "    total_timeout_ms: %d\n    retries: %d\n    retry_base_ms: %d\n"
                   "    circuit_failures: %d\n    circuit_window_ms: %d\n    circuit_open_ms: %d\n",
                p->connect_timeout_ms, p->first_byte_timeout_ms, p->stream_idle_timeout_ms,
                p->total_timeout_ms, p->retries, p->retry_base_ms, p->circuit_failures,
                p->circuit_window_ms, p->circuit_open_ms);
    }
    fprintf(o, "models:\n");
    for (size_t i = 0; i < c->n_models; i++) {
        const struct tg_cfg_model *m = &c->models[i];
        fprintf(o, "  - name: %s\n    tier: %s\n", m->name, m->tier == TG_TIER_LOCAL ? "local" : "remote");
        if (m->target == TG_TARGET_ENGINE)
            fprintf(o, "    target: engine\n");
        else
            fprintf(o, "    provider: %s\n", m->provider);
        fprintf(o, "    upstream_model: %s\n    input_usd_per_mtok: %g\n    output_usd_per_mtok: %g\n    fallbacks: [",
                m->upstream_model, m->input_usd_per_mtok, m->output_usd_per_mtok);
        for (size_t j = 0; j < m->n_fallbacks; j++)
            fprintf(o, "%s%s", j ? ", " : "", m->fallbacks[j]);
        fprintf(o, "]\n");
    }
    fprintf(o, "aliases:%s\n", c->n_aliases ? "" : " {}");
    for (size_t i = 0; i < c->n_aliases; i++)
        fprintf(o, "  %s: {local: %s, remote: %s}\n", c->aliases[i].name,
                c->aliases[i].local ? c->aliases[i].local : "null",
                c->aliases[i].remote ? c->aliases[i].remote : "null");
    fprintf(o, "policy: %s\n", c->policy ? c->policy : "null");
    fprintf(o, "cache:\n  enabled: %s\n  ttl_s: %lld\n  max_entry_bytes: %zu\n  cache_nondeterministic: %s\n",
            c->cache.enabled ? "true" : "false", (long long)c->cache.ttl_s, c->cache.max_entry_bytes,
            c->cache.cache_nondeterministic ? "true" : "false");
    fprintf(o, "metrics:\n  reference_model: %s\n  tenant_labels: [",
            c->metrics.reference_model ? c->metrics.reference_model : "null");
    for (size_t i = 0; i < c->metrics.n_tenant_labels; i++)
        fprintf(o, "%s%s", i ? ", " : "", c->metrics.tenant_labels[i]);
    fprintf(o, "]\njobs:\n  result_ttl_s: %lld\n  webhook_secret: %s\n  webhook_retries: %d\n  claim_idle_ms: %lld\n"
               "  webhook_allow_private: %s\n",
            (long long)c->jobs.result_ttl_s, c->jobs.webhook_secret ? "\"****\"" : "null",
            c->jobs.webhook_retries, (long long)c->jobs.claim_idle_ms,
            c->jobs.webhook_allow_private ? "true" : "false");
}
