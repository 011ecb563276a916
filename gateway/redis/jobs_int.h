/* Module-private: the process-wide webhook sender used by jobs.c. */
#ifndef TG_GW_JOBS_INT_H
#define TG_GW_JOBS_INT_H

#include <stdbool.h>
#include <sys/socket.h>

/* Reference-counted start/stop of the sender thread (one per process). */
int tg_webhook_start(void);
void tg_webhook_stop(void);

/* Queue one delivery: POST body to url, signed with secret (NULL = unsigned), retried with
 * exponential backoff up to `retries` more times. Copies everything; thread-safe. Unless
 * allow_private, a connection to an address tg_webhook_addr_allowed refuses is not made (the
 * delivery is dropped with a warning, not retried). */
void tg_webhook_enqueue(const char *url, const char *body, const char *secret, int retries,
                        bool allow_private);

/* SSRF policy: false for loopback, unspecified, private (10/8, 172.16/12, 192.168/16, fc00::/7),
 * link-local (169.254/16 - cloud metadata -, fe80::/10), CGNAT 100.64/10, multicast, reserved,
 * and IPv6 forms that embed such an IPv4 address (::ffff:0:0/96, 64:ff9b::/96). */
bool tg_webhook_addr_allowed(const struct sockaddr *sa);

/* callback_url check at POST time: TG_INVAL unless an http(s) URL with a host; TG_UNSUPPORTED when,
 * without allow_private, its host is a refused literal address or "localhost"; TG_OK else
 * (names are checked again, resolved, when delivering); TG_NOMEM. */
int tg_webhook_check_url(const char *url, bool allow_private);

#endif
