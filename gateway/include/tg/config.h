/* tiergate configuration (routes.yaml): schema, loader and refcounted snapshots.
 *
 * tg_config_load() reads and validates a whole file. Unknown keys, wrong types and out-of-range
 * values are errors written as "file:line: message". ${VAR} / ${VAR:-default} are interpolated
 * from the environment; a secret whose variable is unset disables what needs it (a provider
 * without its API key is `enabled = false` with `disabled_reason` set) instead of failing.
 *
 * A loaded config is immutable and refcounted: the gateway holds one snapshot, SIGHUP builds a new
 * one, and requests in flight keep the snapshot they started with (tg_config_ref on entry,
 * tg_config_unref on exit). ref/unref are thread-safe (atomic); everything else is read-only.
 * Every key is documented in docs/config.md.
 */
#ifndef TG_CONFIG_H
#define TG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum tg_tier { TG_TIER_LOCAL = 0, TG_TIER_REMOTE = 1 };
enum tg_provider_kind { TG_PROVIDER_OPENAI = 0, TG_PROVIDER_ANTHROPIC = 1 };
enum tg_target_kind { TG_TARGET_ENGINE = 0, TG_TARGET_PROVIDER = 1 };

struct tg_cfg_limits {        /* 0 = unlimited */
    int64_t requests_per_min; /* requests per minute */
    int64_t tokens_per_min;   /* prompt + completion tokens per minute */
    double usd_per_day;       /* spend per UTC day */
    double usd_per_month;     /* spend per UTC calendar month */
};

struct tg_cfg_key {
    char *name;                /* label for logs (never the key itself) */
    unsigned char sha256[32];  /* SHA-256 of the bearer token */
    char *tenant;              /* cache/usage namespace; defaults to name */
    bool privacy;              /* data must not leave: force the local tier */
    struct tg_cfg_limits limits;
};

/* server.tls: HTTPS on the listener. The files are checked at load (readable PEM, key matches the
 * certificate); the gateway builds its SSL_CTX from them at start and again on SIGHUP. */
struct tg_cfg_tls {
    bool enabled;              /* server.tls present: the port speaks HTTPS only */
    char *cert;                /* PEM certificate chain, leaf first (resolved against the config dir) */
    char *key;                 /* PEM private key, unencrypted */
    int min_version;           /* lowest protocol accepted: 12 = TLS 1.2 (default), 13 = TLS 1.3 */
};

/* Default of server.busy_poll_upstream_us: a provider that answers within this long on average
 * (a LAN or local inference server; the bench's fake, ~100 µs) has its reply picked up by a running
 * I/O thread; remote LLM APIs (hundreds of ms) are never waited for this way. Measured in
 * bench/RESULTS.md, "session 5: busy-polling for upstream replies". */
#define TG_CFG_BUSY_POLL_UPSTREAM_US 250

struct tg_cfg_server {
    char *listen_host;         /* "127.0.0.1", "0.0.0.0", "::" */
    int port;
    int io_threads;            /* 0 = number of cores */
    int busy_poll_us;          /* I/O loop: after handling events, keep polling without sleeping
                                * until this many µs pass with nothing to do; 0 = off (block at
                                * once); read when the I/O threads start (not on SIGHUP) */
    int busy_poll_upstream_us; /* I/O loop: while a request on the thread waits for a provider
                                * whose recent first-byte times average at most this many µs,
                                * keep polling for up to this long after the last event instead
                                * of sleeping; 0 = off. Default TG_CFG_BUSY_POLL_UPSTREAM_US;
                                * read when the I/O threads start (not on SIGHUP) */
    size_t max_body_bytes;
    size_t max_header_bytes;
    int read_timeout_ms;       /* whole request (headers + body) must arrive within this */
    int header_timeout_ms;     /* headers must arrive within this (slowloris) */
    int idle_timeout_ms;       /* keep-alive idle connection lifetime */
    int drain_timeout_ms;      /* SIGTERM: time allowed for in-flight requests and streams */
    int max_connections;       /* 0 = unlimited */
    bool open_mode;            /* no API keys required (local development; logged as a warning) */
    struct tg_cfg_key *keys;
    size_t n_keys;
    bool has_admin_key;        /* protects /metrics, /v1/usage, /dashboard */
    unsigned char admin_sha256[32];
    char *log_level;           /* debug|info|warn|error */
    bool log_json;             /* JSON lines instead of text */
    struct tg_cfg_tls tls;
};

struct tg_cfg_redis {
    bool enabled;
    char *url;                 /* redis://host:port/db or unix:///path */
    int connect_timeout_ms;
    int command_timeout_ms;
    bool limits_fail_open;     /* Redis down: let requests through (true) or answer 503 (false) */
};

struct tg_cfg_local {
    bool enabled;
    char *model;               /* GGUF path (relative paths resolve against the config's dir) */
    int slots;                 /* concurrent sequences in the batch */
    int context;               /* total KV cache size in tokens (shared by the slots) */
    int threads;               /* 0 = number of cores */
    int gpu_layers;            /* layers offloaded to the GPU; 0 = CPU only */
    char *kv_cache_type;       /* f16|q8_0|q4_0 */
    int queue_max;             /* jobs waiting for a slot before the engine answers busy */
    int prefix_cache_entries;  /* LRU size of cached prompt prefixes; 0 disables */
    bool kv_split;             /* per-slot KV streams of context / slots tokens (llama-server's
                                  -np layout); false = one KV cache any job may fill */
    int64_t prefix_cache_spill_bytes; /* host memory for cached prefixes, bytes; 0 = none;
                                  -1 (the default) = the engine's (tg/engine.h) */
    double price_per_mtok_usd; /* cost of local tokens (power, hardware) per 1M tokens */
    char **workers;            /* nng URLs of engine workers; none = the embedded engine */
    size_t n_workers;
};

struct tg_cfg_provider {
    char *name;
    enum tg_provider_kind kind;
    char *base_url;            /* e.g. https://api.openai.com/v1 */
    char *api_key;             /* NULL when not configured or its variable is unset */
    bool enabled;              /* false when the key's variable is unset */
    char *disabled_reason;     /* why enabled is false, for the startup log; NULL otherwise */
    int connect_timeout_ms;
    int first_byte_timeout_ms;
    int stream_idle_timeout_ms;
    int total_timeout_ms;
    int retries;               /* extra attempts on 429/5xx/connection errors */
    int retry_base_ms;         /* exponential backoff base (with full jitter) */
    int circuit_failures;      /* failures within circuit_window_ms that open the breaker */
    int circuit_window_ms;
    int circuit_open_ms;       /* open time before a half-open probe */
};

struct tg_cfg_model {
    char *name;                /* public model name (what clients send) */
    enum tg_tier tier;
    enum tg_target_kind target;
    char *provider;            /* TG_TARGET_PROVIDER: provider name */
    const struct tg_cfg_provider *provider_ref; /* resolved; NULL for the engine */
    char *upstream_model;      /* name sent upstream; defaults to name */
    double input_usd_per_mtok;
    double output_usd_per_mtok;
    char **fallbacks;          /* model names tried in order when this one fails */
    size_t n_fallbacks;
};

struct tg_cfg_alias {          /* `auto` and friends: the router picks the tier */
    char *name;
    char *local;               /* model used when routed local */
    char *remote;              /* model used when routed remote */
};

struct tg_cfg_cache {
    bool enabled;
    int64_t ttl_s;
    size_t max_entry_bytes;
    bool cache_nondeterministic; /* also cache temperature > 0 without a seed */
};

struct tg_cfg_metrics {
    char *reference_model;     /* remote model whose price defines the avoided cost */
    char **tenant_labels;      /* tenants allowed as a metric label */
    size_t n_tenant_labels;
};

struct tg_cfg_jobs {
    int64_t result_ttl_s;
    char *webhook_secret;      /* HMAC-SHA256 key for callbacks; NULL disables signing */
    int webhook_retries;
    int64_t claim_idle_ms;     /* XAUTOCLAIM: a job idle this long on a dead consumer is taken over */
    bool webhook_allow_private; /* callbacks may reach loopback, private, link-local (metadata)
                                 * and unspecified addresses; false (the default) refuses them */
};

struct tg_config {
    char *path;                /* file it was loaded from */
    char *dir;                 /* its directory (relative paths resolve here) */
    struct tg_cfg_server server;
    struct tg_cfg_redis redis;
    struct tg_cfg_local local;
    struct tg_cfg_provider *providers;
    size_t n_providers;
    struct tg_cfg_model *models;
    size_t n_models;
    struct tg_cfg_alias *aliases;
    size_t n_aliases;
    char *policy;              /* path of the routing policy (resolved against dir) */
    struct tg_cfg_cache cache;
    struct tg_cfg_metrics metrics;
    struct tg_cfg_jobs jobs;
    /* private */
    int refs;
};

/* Load and validate. On success *out holds a snapshot with one reference; on failure returns
 * TG_CONFIG (or TG_IO/TG_NOMEM) and writes "file:line: message" to err. */
int tg_config_load(const char *path, struct tg_config **out, char *err, size_t errlen);

struct tg_config *tg_config_ref(struct tg_config *cfg);
void tg_config_unref(struct tg_config *cfg);

/* Lookups; NULL when absent. */
const struct tg_cfg_model *tg_config_model(const struct tg_config *cfg, const char *name);
const struct tg_cfg_alias *tg_config_alias(const struct tg_config *cfg, const char *name);
const struct tg_cfg_provider *tg_config_provider(const struct tg_config *cfg, const char *name);
/* The API key whose hash matches sha256 (compared in constant time over all keys); NULL if none. */
const struct tg_cfg_key *tg_config_key_by_hash(const struct tg_config *cfg, const unsigned char sha256[32]);

/* Print the effective configuration as YAML, secrets masked ("sk-…" → "****"). */
void tg_config_print(const struct tg_config *cfg, FILE *out);

/* The config path to use: explicit argument, else $TIERGATE_CONFIG, else "./routes.yaml". */
const char *tg_config_default_path(const char *explicit_path);

#endif
