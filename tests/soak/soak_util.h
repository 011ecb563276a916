/* Helpers for the load and soak tests (tests/soak): the file-descriptor limit, and what a process
 * holds according to /proc (RSS, descriptors, and which of its TCP sockets go where).
 * Single-threaded use; every function reads /proc afresh (no caching). Linux only. */
#ifndef TG_SOAK_UTIL_H
#define TG_SOAK_UTIL_H

#include <stdbool.h>
#include <sys/types.h>

/* Raise this process's RLIMIT_NOFILE soft limit to min(hard, want) (children inherit it).
 * Returns the soft limit in force afterwards, or -1 when getrlimit fails. */
long soak_raise_nofile(long want);

/* Resident set size of pid in KiB (VmRSS), or -1 when /proc/PID/status cannot be read. */
long soak_rss_kb(pid_t pid);

/* Descriptors of pid, classified. TCP sockets are matched by inode against /proc/PID/net/tcp{,6}:
 * client = local port is listen_port (connections accepted from clients); upstream = remote port
 * is upstream_port; redis = remote port is redis_port (ports <= 0 match nothing). */
struct soak_fds {
    int total;
    int client;
    int upstream;
    int redis;
};
/* false when /proc/PID/fd cannot be read (the process is gone). */
bool soak_count_fds(pid_t pid, int listen_port, int upstream_port, int redis_port,
                    struct soak_fds *out);

/* Monotonic clock in seconds. */
double soak_now_s(void);

/* fork+exec argv with stdout/stderr appended to log_path; the child gets SIGKILL when this
 * process dies (a test killed by its ctest timeout leaves nothing behind). -1 on fork failure. */

/* An integer from the environment (decimal), def when unset or not a number in [lo, hi]. */
long soak_env_long(const char *name, long def, long lo, long hi);

#endif

/* The system under test: tg-fake-upstream (no request recording) as the remote provider "fake"
 * (model gpt-fake), and tiergate on the tiny model (model phi-3.5-mini: 1 engine thread, 2
 * slots) with 2 I/O threads, the API key "secret", idle keep-alives kept 10 minutes, log level
 * warn and the default header timeout (10 s; TG_SOAK_HEADER_TIMEOUT_MS overrides it). With
 * redis_port > 0 Redis and the response cache are on; otherwise both are off. Both processes
 * die with this one (tg_test_spawn). */
struct soak_gw {
    int port, fake_port, redis_port;
    pid_t gw_pid, fake_pid;
    char log_path[128], fake_log_path[128];
};
/* header_timeout_ms: server.header_timeout_ms, 0 = 10 s (or TG_SOAK_HEADER_TIMEOUT_MS).
 * false when either process does not come up (tiergate: /readyz 200) in time. */
bool soak_gw_start(struct soak_gw *g, int redis_port, int header_timeout_ms);
/* SIGTERM to tiergate (bounded wait, then SIGKILL) and the fake; returns tiergate's waitpid
 * status (-1 when it was not running). */
int soak_gw_stop(struct soak_gw *g);
