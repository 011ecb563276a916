#include "tls.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/bufferevent_ssl.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "tg/err.h"
#include "tg/log.h"

struct tg_tls {
    pthread_mutex_t lock; /* guards ctx: swapped by reload, read at each accept */
    SSL_CTX *ctx;         /* current context; one reference owned here */
};

/* The last OpenSSL error as text ("" when the queue is empty); clears the queue. */
static const char *ssl_error(char *buf, size_t len)
{
    unsigned long e = ERR_peek_last_error();
    if (e == 0)
        snprintf(buf, len, "unknown error");
    else
        ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

/* evhttp speaks HTTP/1.1 only: answer ALPN with it, so a client offering h2 first does not
 * guess; a client that offers no http/1.1 gets no ALPN answer and may still try. */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char http11[] = "\x08http/1.1";
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, http11, sizeof http11 - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* libevent's TLS bufferevent writes each piece of its output buffer (status line and headers,
 * body, chunk) as its own TLS record and send(); with Nagle the second waits for the client's
 * delayed ACK, 40 ms per keep-alive request (measured: 186 requests/s instead of thousands).
 * The socket only exists once evhttp has set it, so it is switched to TCP_NODELAY when the
 * handshake starts. */
static void on_ssl_info(const SSL *ssl, int where, int ret)
{
    int fd = SSL_get_fd(ssl);
    if (fd < 0)
        return;
    if (where & SSL_CB_HANDSHAKE_START) {
        int one = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == -1)
            tg_debug("TCP_NODELAY: %s", strerror(errno));
    } else if (where & SSL_CB_EXIT) {
        /* A plain HTTP request on the HTTPS port (OpenSSL recognises "GET ", "POST " ...): say
         * so in plain HTTP, as nginx does, instead of a bare close the client cannot explain.
         * Best effort, one non-blocking send before libevent closes the connection. */
        unsigned long e = ERR_peek_error();
        if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_HTTP_REQUEST) {
            static const char body[] =
                "{\"error\":{\"message\":\"This port speaks HTTPS: use https:// (a plain HTTP "
                "request was sent to it)\",\"type\":\"invalid_request_error\",\"param\":null,"
                "\"code\":\"https_required\"}}";
            char msg[512];
            int n = snprintf(msg, sizeof msg,
                             "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                             "Connection: close\r\nContent-Length: %zu\r\n\r\n%s",
                             sizeof body - 1, body);
            if (n > 0 && (size_t)n < sizeof msg &&
                send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) == -1)
                tg_debug("plain HTTP on the HTTPS port: %s", strerror(errno));
        }
    }
}

/* "CN=..., serial 0x..., expires ..." for the log, so an operator can see which certificate a
 * reload picked up. */
static void describe_cert(SSL_CTX *ctx, char *buf, size_t len)
{
    X509 *x = SSL_CTX_get0_certificate(ctx);
    buf[0] = '\0';
    if (x == NULL)
        return;
    char subject[256] = "", serial[80] = "", expiry[64] = "";
    X509_NAME_oneline(X509_get_subject_name(x), subject, sizeof subject);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
    if (hex != NULL)
        snprintf(serial, sizeof serial, "%s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    BIO *mem = BIO_new(BIO_s_mem());
    if (mem != NULL && ASN1_TIME_print(mem, X509_get0_notAfter(x)) == 1) {
        int n = BIO_read(mem, expiry, (int)sizeof expiry - 1);
        expiry[n > 0 ? n : 0] = '\0';
    }
    BIO_free(mem);
    snprintf(buf, len, "%s, serial %s, expires %s", subject, serial, expiry);
}

static int build_ctx(const struct tg_cfg_tls *cfg, SSL_CTX **out, char *err, size_t errlen)
{
    char e[256];
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "server.tls: cannot create a TLS context: %s", ssl_error(e, sizeof e));
        return TG_NOMEM;
    }
    int rc = TG_CONFIG;
    if (SSL_CTX_set_min_proto_version(ctx, cfg->min_version == 13 ? TLS1_3_VERSION
                                                                  : TLS1_2_VERSION) != 1) {
        snprintf(err, errlen, "server.tls.min_version: %s", ssl_error(e, sizeof e));
        goto fail;
    }
    /* No renegotiation (a client-triggered CPU cost, and nothing here needs it); a client that
     * drops the TCP connection without close_notify is an ordinary EOF for evhttp, not an error. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* An idle keep-alive connection then holds no record buffers: measured 25 -> 16 KiB of RSS per
     * idle TLS connection (1000 of them; plain HTTP ones cost ~3 KiB). */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    SSL_CTX_set_info_callback(ctx, on_ssl_info);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->cert) != 1) {
        snprintf(err, errlen, "server.tls.cert: %s: %s", cfg->cert, ssl_error(e, sizeof e));
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->key, SSL_FILETYPE_PEM) != 1) {
        snprintf(err, errlen, "server.tls.key: %s: %s", cfg->key, ssl_error(e, sizeof e));
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "server.tls.key: %s does not match the certificate in %s: %s",
                 cfg->key, cfg->cert, ssl_error(e, sizeof e));
        goto fail;
    }
    *out = ctx;
    return TG_OK;
fail:
    SSL_CTX_free(ctx);
    return rc;
}

int tg_tls_create(const struct tg_cfg_tls *cfg, struct tg_tls **out, char *err, size_t errlen)
{
    struct tg_tls *t = calloc(1, sizeof *t);
    if (t == NULL) {
        snprintf(err, errlen, "server.tls: out of memory");
        return TG_NOMEM;
    }
    int rc = build_ctx(cfg, &t->ctx, err, errlen);
    if (rc != TG_OK) {
        free(t);
        return rc;
    }
    pthread_mutex_init(&t->lock, NULL);
    char desc[512];
    describe_cert(t->ctx, desc, sizeof desc);
    tg_info("TLS on the listener (TLS %s and later): %s", cfg->min_version == 13 ? "1.3" : "1.2",
            desc);
    *out = t;
    return TG_OK;
}

int tg_tls_reload(struct tg_tls *t, const struct tg_cfg_tls *cfg, char *err, size_t errlen)
{
    SSL_CTX *next = NULL;
    int rc = build_ctx(cfg, &next, err, errlen);
    if (rc != TG_OK)
        return rc;
    pthread_mutex_lock(&t->lock);
    SSL_CTX *old = t->ctx;
    t->ctx = next;
    pthread_mutex_unlock(&t->lock);
    /* Connections accepted on the old context hold references to it (SSL_new), so this frees it
     * only once the last of them is gone. */
    SSL_CTX_free(old);
    char desc[512];
    describe_cert(next, desc, sizeof desc);
    tg_info("TLS certificate reloaded for new connections: %s", desc);
    return TG_OK;
}

struct bufferevent *tg_tls_bev_new(struct tg_tls *t, struct event_base *base)
{
    pthread_mutex_lock(&t->lock);
    SSL *ssl = SSL_new(t->ctx);
    pthread_mutex_unlock(&t->lock);
    if (ssl == NULL) {
        ERR_clear_error();
        return NULL;
    }
    /* BEV_OPT_CLOSE_ON_FREE is what makes libevent free the SSL with the bufferevent; evhttp then
     * leaves the socket to the bufferevent too, so it is closed when the last reference goes. */
    struct bufferevent *bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
                                                             BEV_OPT_CLOSE_ON_FREE);
    /* On failure libevent may or may not have freed ssl already (it depends on where it
     * failed): a rare leak on out-of-memory beats a possible double free. */
    if (bev == NULL)
        return NULL;
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    return bev;
}

void tg_tls_destroy(struct tg_tls *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
