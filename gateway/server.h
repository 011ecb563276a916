/* The gateway process: N I/O threads, each with its own event_base and evhttp sharing the
 * listen port through SO_REUSEPORT, plus the main thread that owns signals (SIGTERM/SIGINT drain
 * and exit, SIGHUP reload). Module-private to gateway/. */
#ifndef TG_GATEWAY_SERVER_H
#define TG_GATEWAY_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include <event2/event.h>
#include <event2/http.h>

#include "tg/config.h"

struct tg_gateway;
struct tg_req;
struct tg_local_queue;
struct tg_conn;
struct tg_router_policy;
struct tg_engine_local;
struct tg_engine_client;
struct tg_redis;
struct tg_jobs;
struct tg_usage;
struct tg_tls;

struct tg_worker {
    int index;
    struct tg_gateway *gw;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    pthread_t thread;
    struct tg_local_queue *local_q;   /* engine events handed over from nng threads */
    void *upstream;                   /* struct tg_upstream_exec * when the component exists */
    struct tg_req *reqs;              /* live requests (for shutdown) */
    struct tg_conn *conns;            /* connections (header/read deadlines) */
    int n_conns;                      /* entries in conns */
    int max_conns;                    /* this thread's share of server.max_connections; 0 = no limit */
    struct event *sweep;              /* periodic deadline check */
    struct event *reap;               /* conn.c: soon after accepts, close released sockets */
    struct event *drain_ev;           /* posted by the main thread on SIGTERM */
    uint64_t rng;                     /* request ids */
    struct tg_redis *redis;           /* Redis client (redis.enabled), see redis_glue.c */
    struct tg_jobs *jobs;             /* async jobs consumer */
    struct tg_usage *usage;           /* usage ledger in Redis (metrics component) */
};

struct tg_gateway {
    const char *config_path;
    pthread_mutex_t cfg_lock;   /* guards `cfg` pointer swaps; readers take a reference */
    struct tg_config *cfg;      /* current snapshot */
    struct tg_router_policy *policy; /* its routing policy, swapped together with cfg */
    struct event_base *main_base;
    struct tg_worker *workers;
    int n_workers;
    atomic_bool draining;       /* SIGTERM received: readiness fails, new work refused */
    atomic_int inflight;        /* requests accepted and not yet answered */
    atomic_bool ready;          /* set once every tier that is configured has started */
    atomic_bool random_weights; /* the local model is a generated random-weight one */
    char model_desc[256];
    pthread_t local_thread;     /* starts the engine (model load) without delaying the port */
    bool local_thread_started;
    struct tg_engine_local *engine_local;     /* embedded engine (NULL with local.workers) */
    struct tg_engine_client *_Atomic engine;  /* set once the local tier is up */
    struct tg_engine_client *engine_remote_workers; /* client for local.workers */
    atomic_bool stopping;       /* shutting down: drop late engine events */
    struct tg_tls *tls;         /* server.tls: HTTPS listener (tls.h); NULL = plain HTTP */
};

/* Current config snapshot and its policy, each with a reference the caller must drop
 * (tg_config_unref / tg_router_policy_unref). */
void tg_gateway_snapshot(struct tg_gateway *gw, struct tg_config **cfg,
                         struct tg_router_policy **policy);

/* Current config snapshot with a reference the caller must drop with tg_config_unref(). */
struct tg_config *tg_gateway_config(struct tg_gateway *gw);

/* Run the gateway until SIGTERM/SIGINT and a drain; returns the process exit code. */
int tg_gateway_run(const char *config_path);

/* The startup banner (listen address, tiers and their state, model, Redis, dashboard URL),
 * logged once the local tier has started or failed; local_state says which ("ready: ...",
 * "unavailable: ...", "disabled"). Any thread. */
void tg_gateway_banner(struct tg_gateway *gw, const char *local_state);

/* In-process gateway for tests and fuzz targets (tests/fuzz/fuzz_http.c): cfg (its reference is
 * taken, also on failure) with its routing policy, one I/O worker (gw->workers[0]) serving HTTP
 * on listen_fd (a bound, listening, non-blocking stream socket of any family; closed by
 * tg_gateway_test_free). The caller runs gw->workers[0].base on its own thread. No local tier is
 * started (local requests fall back or fail as with an unavailable engine), no signal handling,
 * no I/O threads. One at a time per process (the metrics registry is global). TG_OK or an error
 * code (logged). */
int tg_gateway_test_new(struct tg_config *cfg, evutil_socket_t listen_fd, struct tg_gateway **out);
/* Frees it: live requests, connections, the listening socket, the metrics registry. */
void tg_gateway_test_free(struct tg_gateway *gw);

#endif
