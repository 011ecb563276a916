/* Helpers for integration tests: free loopback ports, child processes, a real redis-server on a
 * free port, and HTTP requests through libcurl. Every wait is bounded so a broken build fails the
 * test instead of hanging it. Link with tg_testlib. */
#ifndef TG_TESTLIB_H
#define TG_TESTLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close). */
int tg_test_free_port(void);

/* fork+exec argv (argv[0] a path, or a name looked up in PATH); stdout+stderr appended to
 * log_path (NULL = inherit). envp_extra: NULL-terminated "K=V" strings added to the child's
 * environment (may be NULL). The child is killed when the test process dies (PR_SET_PDEATHSIG;
 * spawn from the main thread: the signal follows the thread that forked). */
pid_t tg_test_spawn(char *const argv[], const char *const envp_extra[], const char *log_path);

/* Wait until 127.0.0.1:port accepts a connection; true on success within timeout_ms. */
bool tg_test_wait_port(int port, int timeout_ms);

/* Send sig, wait up to timeout_ms for exit (then SIGKILL). Returns the exit status as
 * from waitpid (use WIFEXITED/WEXITSTATUS), or -1. */
int tg_test_stop(pid_t pid, int sig, int timeout_ms);

struct tg_test_redis {
    int port;
    pid_t pid;
    char dir[128];
};
/* Start `redis-server` (no persistence) on a free port in a temp dir; false if it won't start. */
bool tg_test_redis_start(struct tg_test_redis *r);
void tg_test_redis_stop(struct tg_test_redis *r);
/* Start redis-server again on r's port and dir (after the test killed it: an outage and a
 * recovery at the same address, as a restarted Redis looks to clients); false if it won't. */
bool tg_test_redis_restart(struct tg_test_redis *r);

struct tg_test_response {
    long status;     /* HTTP status, 0 on transport error */
    char *body;      /* NUL-terminated, malloc'd */
    size_t body_len;
    char *headers;   /* raw response headers, malloc'd */
};
/* One HTTP request. headers: NULL-terminated "Name: value" list (may be NULL); body may be NULL.
 * Returns 0 when a response arrived (any status). Free with tg_test_response_free. */
int tg_test_http(const char *method, const char *url, const char *const *headers, const char *body,
                 struct tg_test_response *out);
/* tg_test_http with its own bound (tg_test_http allows 120 s): -1 and *timed_out (may be NULL)
 * set when the whole exchange did not finish within timeout_ms. */
int tg_test_http_bounded(const char *method, const char *url, const char *const *headers,
                         const char *body, long timeout_ms, struct tg_test_response *out,
                         bool *timed_out);
/* tg_test_http that calls on_match(user) once, from inside the transfer, the first time the body
 * received so far contains match: a test can act mid-response (kill a process once a stream has
 * produced its first token). */
int tg_test_http_watch(const char *method, const char *url, const char *const *headers,
                       const char *body, const char *match, void (*on_match)(void *user),
                       void *user, struct tg_test_response *out);
void tg_test_response_free(struct tg_test_response *r);
/* Value of a response header (case-insensitive name) copied into buf; false if absent. */
bool tg_test_header(const struct tg_test_response *r, const char *name, char *buf, size_t buflen);

/* Whole file into a NUL-terminated malloc'd buffer; *len (may be NULL) gets its size.
 * NULL when the file cannot be read. */
char *tg_test_slurp(const char *path, size_t *len);
/* A child's log: like tg_test_slurp, but an empty string (never NULL) when it is missing. */
char *tg_test_read_log(const char *path);
/* The value on the /metrics exposition line that starts with `series ` (the exact series text,
 * labels included: "name{a=\"b\"}" or "name"); -1 if there is none. */
double tg_test_metric_value(const char *text, const char *series);

/* Write text to a new file in a fresh temp dir; returns the path (static storage per call slot). */
const char *tg_test_write_temp(const char *name, const char *text);

#endif
