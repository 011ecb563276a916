/* Per-I/O-thread asynchronous Redis client (hiredis 0.14 async + its libevent adapter).
 *
 * One struct tg_redis per I/O thread, created with that thread's event_base and used only on it
 * (not thread-safe; every callback runs on that base's thread). It connects in the background,
 * reconnects with exponential backoff (100 ms doubling to 5 s) after any failure, and logs ONE
 * warning when an outage starts and one info line when Redis is back, never one per request.
 *
 * Fail fast: while the connection is down, tg_redis_command() returns TG_UNAVAILABLE at once and
 * its callback never runs; nothing ever blocks the event loop. A command that gets no reply
 * within redis.command_timeout_ms marks the connection broken: it is dropped (every pending
 * callback gets TG_TIMEOUT or TG_UNAVAILABLE) and reconnected, because hiredis cannot cancel one
 * command on a connection without losing the reply order.
 *
 * Async contract: when a submit function returns TG_OK, its callback runs exactly once, later
 * (never inside the submit call), on the client's thread; it runs with TG_UNAVAILABLE when the
 * client is destroyed first. When it returns anything else the callback never runs.
 */
#ifndef TG_GW_REDIS_H
#define TG_GW_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "tg/config.h"

struct tg_redis;

/* err: TG_OK with a reply (which may be a REDIS_REPLY_ERROR: check reply->type), or
 * TG_UNAVAILABLE (connection lost / client destroyed) / TG_TIMEOUT with reply NULL.
 * The reply is owned by the client and valid only during the call. */
typedef void (*tg_redis_cb)(int err, const redisReply *reply, void *user);

/* Create a client for cfg->url ("redis://host[:port][/db]" or "unix:///path[?db=N]") on base.
 * Starts connecting at once (returns before the connection is up). Errors: TG_INVAL (bad URL),
 * TG_NOMEM. cfg is copied; the caller may drop it. `name` (may be NULL) prefixes log lines, e.g.
 * "io-2". */
int tg_redis_create(struct event_base *base, const struct tg_cfg_redis *cfg, const char *name,
                    struct tg_redis **out);

/* Close the connection; pending callbacks run with TG_UNAVAILABLE before this returns. Call on
 * the client's thread, not from inside one of its callbacks. NULL is a no-op. */
void tg_redis_destroy(struct tg_redis *c);

/* true while the connection is up (cheap; what the gateway reads per request). */
bool tg_redis_available(const struct tg_redis *c);

/* Process-wide count of outages seen by all clients since start (a counter for /metrics), and
 * how many clients are down right now (0 = Redis fully available; a gauge). Thread-safe. */
uint64_t tg_redis_outages_total(void);
int tg_redis_clients_down(void);

/* The client's event base (for components that schedule their own timers on it). */
struct event_base *tg_redis_base(const struct tg_redis *c);

/* Send one command, hiredis format ("SET %s %b", key, val, len). cb may be NULL (fire and
 * forget). TG_OK, TG_UNAVAILABLE (down), TG_INVAL (bad format), TG_NOMEM. */
int tg_redis_command(struct tg_redis *c, tg_redis_cb cb, void *user, const char *fmt, ...);
int tg_redis_command_argv(struct tg_redis *c, tg_redis_cb cb, void *user, int argc,
                          const char **argv, const size_t *argvlen);

/* A Lua script known by its text. Define one statically with TG_REDIS_SCRIPT(lua); its SHA-1 is
 * computed on first use (thread-safe). */
struct tg_redis_script {
    const char *lua;
    char sha1[41];      /* lowercase hex, filled lazily */
    _Atomic int state;  /* private: 0 = not computed, 2 = ready */
};
#define TG_REDIS_SCRIPT(text) {.lua = (text)}

/* Run a script atomically: EVALSHA, with SCRIPT LOAD issued once per connection before the first
 * use, and a transparent fallback to EVAL when Redis answers NOSCRIPT (script cache flushed).
 * args = nkeys keys followed by the other arguments (argc in total, binary-safe lengths).
 * Same return values and callback contract as tg_redis_command(). */
int tg_redis_eval(struct tg_redis *c, struct tg_redis_script *script, tg_redis_cb cb, void *user,
                  int nkeys, int argc, const char **args, const size_t *lens);

#endif
