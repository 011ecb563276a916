/* HTTPS on the listener (server.tls): the listener's TLS context and each connection's TLS
 * bufferevent. Module-private to gateway/.
 *
 * One struct tg_tls per process holds the current SSL_CTX. Every new connection takes an SSL from
 * the context current at accept time; SSL_new holds a reference on its SSL_CTX, so a reload
 * (SIGHUP) that swaps in a new context leaves connections already open on the certificate they
 * started with, and the old context is freed with its last connection.
 *
 * Threads: tg_tls_bev_new runs on the I/O threads, tg_tls_reload on the main thread; they
 * synchronise on a mutex held only for the pointer read and SSL_new (no I/O under it).
 */
#ifndef TG_GATEWAY_TLS_H
#define TG_GATEWAY_TLS_H

#include <stddef.h>

#include <event2/bufferevent.h>
#include <event2/event.h>

#include "tg/config.h"

struct tg_tls;

/* Build the context from cfg (certificate chain, key, minimum version). On success *out is set
 * and TG_OK returned; otherwise TG_CONFIG (or TG_NOMEM) with a message naming the file in err
 * and *out untouched. Logs the certificate's subject, serial and expiry. */
int tg_tls_create(const struct tg_cfg_tls *cfg, struct tg_tls **out, char *err, size_t errlen);

/* Build a new context from cfg and make it current for new connections. On failure the current
 * context stays, the error (naming the file) is in err, and TG_CONFIG/TG_NOMEM is returned. */
int tg_tls_reload(struct tg_tls *t, const struct tg_cfg_tls *cfg, char *err, size_t errlen);

/* A server-side TLS bufferevent for evhttp's bevcb: no socket yet (evhttp sets it), handshake as
 * the accepting side, closes its socket and frees its SSL when the bufferevent is destroyed.
 * NULL on allocation failure. Called on the I/O thread that owns base. */
struct bufferevent *tg_tls_bev_new(struct tg_tls *t, struct event_base *base);

/* Drop the process's reference to the current context (connections still open keep theirs).
 * After the I/O threads have stopped. NULL is a no-op. */
void tg_tls_destroy(struct tg_tls *t);

#endif
