/* A tiergate for the security tests: the real binary on the tiny model (1 engine thread), a real
 * redis-server that requires a password, the fake upstream (tests/fake-upstream) as provider
 * "fake", and an in-process "echo" provider that answers every call with an error quoting the
 * credentials it received (as careless providers do), so redaction can be checked end to end.
 * Every secret is a distinctive string the tests grep for. Every wait is bounded. */
#ifndef TG_SEC_ENV_H
#define TG_SEC_ENV_H

#include <stdbool.h>
#include <sys/types.h>

#include "tg_testlib.h"

/* Secrets the gateway is configured with or sees; none may ever appear in a log line, an error
 * body or Redis. The client keys' sha256 are in the config, never the keys. */
#define SEC_KEY_ALICE    "tgk-alice-plain-5a1c3e"  /* tenant acme */
#define SEC_KEY_ALICE2   "tgk-alice2-plain-77b0d4" /* tenant acme */
#define SEC_KEY_BOB      "tgk-bob-plain-c0ffee9"   /* tenant globex */
#define SEC_KEY_WRONG    "tgk-wrong-plain-9d8e7f"  /* not a configured key */
#define SEC_PROVIDER_KEY "sk-prov-fake-4f1d2a"     /* provider fake (OpenAI shape) */
#define SEC_ECHO_KEY     "sk-prov-echo-81bb07"     /* provider echo (OpenAI shape) */
#define SEC_ECHO_ANT_KEY "sk-ant-echo-3cc6e2"      /* provider echo-ant (Anthropic shape) */
#define SEC_REDIS_PW     "redis-pw-6e0f15b2"
#define SEC_HOOK_SECRET  "hook-secret-aa41c9"

struct sec_env {
    struct tg_test_redis redis;
    int port, fake_port, echo_port;
    pid_t gw_pid, fake_pid;
    char base[64], fake_base[64];
    char log_path[160], fake_log_path[160], cfg_path[256];
    char vg_log_path[160]; /* valgrind's own log (valgrind runs only) */
    bool valgrind;
    struct echo_server *echo;
};

/* json_logs: server.log_format json (else text); level is always debug. valgrind: run the
 * gateway under valgrind (leak check; its log in vg_log_path). Waits until /readyz is 200. */
bool sec_env_start(struct sec_env *e, bool json_logs, bool valgrind);
/* SIGTERM the gateway and wait for it (valgrind: up to 240 s); returns its waitpid status or -1.
 * Then stops the fake, the echo provider and Redis. */
int sec_env_stop(struct sec_env *e);

/* POST/GET with "Authorization: Bearer <key>" (key NULL: none) and optional extra header. */
int sec_post(struct sec_env *e, const char *key, const char *path, const char *body,
             const char *extra_header, struct tg_test_response *out);
int sec_get(struct sec_env *e, const char *key, const char *path, struct tg_test_response *out);

/* A synchronous redis connection to the test Redis (authenticated); NULL on failure. The caller
 * frees it with redisFree. Declared as void * to keep hiredis out of this header. */
void *sec_redis_connect(struct sec_env *e);

/* Every key and value in Redis as one text (GET strings, HGETALL hashes, XRANGE streams, TYPE
 * for the rest); malloc'd. */
char *sec_redis_dump(struct sec_env *e);

/* Number of Redis keys matching pattern (KEYS), -1 on error. */
int sec_redis_count(struct sec_env *e, const char *pattern);
/* Wait (bounded, 20 s) until at least n keys match pattern; false on timeout. */
bool sec_redis_wait_count(struct sec_env *e, const char *pattern, int n);

/* How many calls the echo provider answered. */
int sec_echo_calls(struct sec_env *e);

/* Raw bytes to the gateway (for headers libcurl would not send); the reply, NUL-terminated,
 * malloc'd (empty on a connection error). */
char *sec_raw_request(struct sec_env *e, const char *bytes, size_t len);

#endif
