/* A running tiergate for integration tests: the real binary on the tiny generated model, with the
 * fake upstream (tests/fake-upstream) as its remote provider. Every wait is bounded. */
#ifndef TG_GW_TESTENV_H
#define TG_GW_TESTENV_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "tg_testlib.h"

struct gw_env {
    int port, fake_port;
    pid_t gw_pid, fake_pid;
    char base[64];           /* http://127.0.0.1:port */
    char fake_base[64];
    char log_path[128];
    char fake_log_path[128];
    const char *auth_header; /* "Authorization: Bearer secret" */
    size_t max_body;
    char cfg_path[256];      /* the config file written (SIGHUP tests rewrite it) */
};

/* Start both processes; extra_server / extra_local are appended to the server: / local:
 * sections (indented lines; local keys given here replace the defaults slots 2, context 4096),
 * extra_top to the end of the file (top-level keys). NULL = nothing. Waits until /readyz is 200. */
bool gw_env_start(struct gw_env *e, const char *extra_server, const char *extra_local,
                  const char *extra_top);

/* gw_env_start with the sections it fixes made replaceable (duplicate YAML keys are errors, so
 * these cannot be appended). NULL / 0 fields keep gw_env_start's defaults. */
struct gw_env_opts {
    const char *extra_server, *extra_local, *extra_top; /* as for gw_env_start */
    const char *redis;      /* body of `redis:` (indented lines); default "  enabled: false\n" */
    const char *cache;      /* body of `cache:`; default "  enabled: false\n" */
    int drain_timeout_ms;   /* server.drain_timeout_ms; default 30000 */
};
bool gw_env_start_opts(struct gw_env *e, const struct gw_env_opts *o);
void gw_env_stop(struct gw_env *e);

int gw_post(struct gw_env *e, const char *path, const char *body, const char *extra_header,
            struct tg_test_response *out);
int gw_get(struct gw_env *e, const char *path, struct tg_test_response *out);

/* Requests the fake upstream has recorded so far (its GET /_requests), -1 if it does not answer. */
int gw_fake_received(struct gw_env *e);

/* Wait until the gateway's log contains text. */
bool gw_log_wait(struct gw_env *e, const char *text, int timeout_ms);

#endif
