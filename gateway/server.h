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

struct tg_worker {
    int index;
    struct tg_gateway *gw;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *bound;
    pthread_t thread;
};

struct tg_gateway {
    const char *config_path;
    pthread_mutex_t cfg_lock;   /* guards `cfg` pointer swaps; readers take a reference */
    struct tg_config *cfg;      /* current snapshot */
    struct event_base *main_base;
    struct tg_worker *workers;
    int n_workers;
    atomic_bool draining;       /* SIGTERM received: readiness fails, new work refused */
    atomic_int inflight;        /* requests accepted and not yet answered */
    atomic_bool ready;          /* set once every tier that is configured has started */
    bool random_weights;        /* the local model is a generated random-weight one */
    char model_desc[256];
};

/* Current config snapshot with a reference the caller must drop with tg_config_unref(). */
struct tg_config *tg_gateway_config(struct tg_gateway *gw);

/* Run the gateway until SIGTERM/SIGINT and a drain; returns the process exit code. */
int tg_gateway_run(const char *config_path);

#endif
