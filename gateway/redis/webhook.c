/* Webhook sender: one process-wide thread with a due-time ordered queue, so slow or failing
 * receivers never hold an I/O thread. Deliveries are best effort: a gateway that exits drops
 * what is still queued (the job result itself is durable in Redis).
 *
 * SSRF: callback_url is chosen by the client, so unless jobs.webhook_allow_private is set a
 * delivery never connects to a loopback, private, link-local (cloud metadata), CGNAT, multicast
 * or unspecified address. The check runs on the address libcurl is about to connect to
 * (CURLOPT_OPENSOCKETFUNCTION), after DNS, so a public name that resolves to 127.0.0.1 or
 * 169.254.169.254 is refused as well; redirects are not followed and proxies from the
 * environment are not used (either would connect somewhere the check did not see). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "jobs.h"
#include "jobs_int.h"
#include "tg/err.h"
#include "tg/log.h"

#define BACKOFF_BASE_MS 1000
#define BACKOFF_MAX_MS  60000
#define TIMEOUT_MS      10000

struct delivery {
    char *url, *body, *secret;
    int attempt, retries;
    bool allow_private;
    bool refused; /* the last attempt was refused by the address policy */
    char refused_addr[INET6_ADDRSTRLEN];
    int64_t due_ms;
    struct delivery *next;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cond;
static pthread_t g_thread;
static int g_refs;
static bool g_stop;
static struct delivery *g_queue;
/* tests: base backoff can be shortened with TG_WEBHOOK_BACKOFF_MS */
static int g_backoff_ms = BACKOFF_BASE_MS;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tg_jobs_sign(const char *secret, const char *body, size_t len, char out[72])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), (const unsigned char *)body, len, md, &n);
    memcpy(out, "sha256=", 7);
    for (unsigned int i = 0; i < n && i < 32; i++)
        snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
    out[7 + 64] = '\0';
}

static void delivery_free(struct delivery *d)
{
    free(d->url);
    free(d->body);
    free(d->secret);
    free(d);
}

static void insert_locked(struct delivery *d)
{
    struct delivery **pp = &g_queue;
    while (*pp != NULL && (*pp)->due_ms <= d->due_ms)
        pp = &(*pp)->next;
    d->next = *pp;
    *pp = d;
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *ud)
{
    return size * nmemb;
}

static bool v4_allowed(uint32_t a) /* host byte order */
{
    return !((a >> 24) == 0 ||                   /* 0.0.0.0/8 "this network", unspecified */
             (a >> 24) == 10 ||                  /* 10/8 private */
             (a & 0xffc00000u) == 0x64400000u || /* 100.64/10 carrier-grade NAT */
             (a >> 24) == 127 ||                 /* loopback */
             (a & 0xffff0000u) == 0xa9fe0000u || /* 169.254/16 link-local, cloud metadata */
             (a & 0xfff00000u) == 0xac100000u || /* 172.16/12 private */
             (a & 0xffffff00u) == 0xc0000000u || /* 192.0.0/24 IETF protocol assignments */
             (a & 0xffff0000u) == 0xc0a80000u || /* 192.168/16 private */
             (a & 0xfffe0000u) == 0xc6120000u || /* 198.18/15 benchmarking */
             a >= 0xe0000000u);                  /* multicast, reserved, broadcast */
}

bool tg_webhook_addr_allowed(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return v4_allowed(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
    if (sa->sa_family != AF_INET6)
        return false;
    const unsigned char *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const unsigned char zero[16];
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
    uint32_t v4 = (uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15];
    /* ::a.b.c.d (includes :: and ::1), ::ffff:a.b.c.d and 64:ff9b::a.b.c.d reach an IPv4 host */
    if (memcmp(b, zero, 12) == 0 || memcmp(b, mapped, 12) == 0 || memcmp(b, nat64, 12) == 0)
        return v4_allowed(v4) && memcmp(b, zero, 12) != 0;
    return !((b[0] & 0xfe) == 0xfc ||                   /* fc00::/7 unique local */
             (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) || /* fe80::/10 link-local */
             (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) || /* fec0::/10 site-local */
             b[0] == 0xff);                             /* multicast */
}

int tg_webhook_check_url(const char *url, bool allow_private)
{
    CURLU *u = curl_url();
    if (u == NULL)
        return TG_NOMEM;
    char *scheme = NULL, *host = NULL;
    int rc = TG_INVAL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0' ||
        (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0))
        goto out;
    rc = TG_OK;
    if (allow_private)
        goto out;
    /* Literal addresses and "localhost" are refused here already, for a clear 400; names are
     * checked again on the resolved address at delivery. */
    size_t hl = strlen(host);
    if (host[0] == '[' && hl > 2) {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
        char *zone = strchr(host, '%');
        if (zone != NULL)
            *zone = '\0';
    }
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
    if (inet_pton(AF_INET, host, &a4.sin_addr) == 1)
        rc = tg_webhook_addr_allowed((const struct sockaddr *)&a4) ? TG_OK : TG_UNSUPPORTED;
    else if (inet_pton(AF_INET6, host, &a6.sin6_addr) == 1)
        rc = tg_webhook_addr_allowed((const struct sockaddr *)&a6) ? TG_OK : TG_UNSUPPORTED;
    else if (strcasecmp(host, "localhost") == 0 || strcasecmp(host, "localhost.") == 0 ||
             (hl > 10 && strcasecmp(host + hl - 10, ".localhost") == 0))
        rc = TG_UNSUPPORTED;
out:
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return rc;
}

/* libcurl asks us for each socket it connects: the resolved address is checked here. */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct delivery *d = clientp;
    if (!d->allow_private && !tg_webhook_addr_allowed(&a->addr)) {
        d->refused = true;
        const void *ip = a->family == AF_INET
                             ? (const void *)&((struct sockaddr_in *)&a->addr)->sin_addr
                             : (const void *)&((struct sockaddr_in6 *)&a->addr)->sin6_addr;
        if (inet_ntop(a->family, ip, d->refused_addr, sizeof d->refused_addr) == NULL)
            snprintf(d->refused_addr, sizeof d->refused_addr, "?");
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype, a->protocol);
}

/* One POST; true on a 2xx answer. */
static bool deliver(struct delivery *d)
{
    CURL *c = curl_easy_init();
    if (c == NULL)
        return false;
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    char line[128];
    snprintf(line, sizeof line, "X-Tiergate-Timestamp: %lld", (long long)time(NULL));
    h = curl_slist_append(h, line);
    if (d->secret != NULL) {
        char sig[72];
        tg_jobs_sign(d->secret, d->body, strlen(d->body), sig);
        snprintf(line, sizeof line, "X-Tiergate-Signature: %s", sig);
        h = curl_slist_append(h, line);
    }
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, d->url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, d->body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(d->body));
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, d);
    d->refused = false;
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK && d->refused)
        tg_warn("webhook: %s: refused: it resolves to %s, a loopback, private or link-local "
                "address (jobs.webhook_allow_private is off)",
                d->url, d->refused_addr);
    else if (rc != CURLE_OK)
        tg_warn("webhook: %s: %s (attempt %d)", d->url, curl_easy_strerror(rc), d->attempt + 1);
    else if (status < 200 || status >= 300)
        tg_warn("webhook: %s answered %ld (attempt %d)", d->url, status, d->attempt + 1);
    return rc == CURLE_OK && status >= 200 && status < 300;
}

static void *sender_main(void *arg)
{
    pthread_mutex_lock(&g_lock);
    while (!g_stop) {
        if (g_queue == NULL) {
            pthread_cond_wait(&g_cond, &g_lock);
            continue;
        }
        int64_t now = mono_ms();
        if (g_queue->due_ms > now) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            int64_t wait = g_queue->due_ms - now;
            ts.tv_sec += wait / 1000;
            ts.tv_nsec += (wait % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&g_cond, &g_lock, &ts);
            continue;
        }
        struct delivery *d = g_queue;
        g_queue = d->next;
        pthread_mutex_unlock(&g_lock);
        bool ok = deliver(d);
        pthread_mutex_lock(&g_lock);
        /* A refused address is the policy's answer, not a transient fault: no retries. */
        if (ok || d->refused || d->attempt >= d->retries) {
            if (!ok && !d->refused)
                tg_error("webhook: %s: giving up after %d attempts", d->url, d->attempt + 1);
            delivery_free(d);
            continue;
        }
        int64_t backoff = (int64_t)g_backoff_ms << (d->attempt < 16 ? d->attempt : 16);
        d->attempt++;
        d->due_ms = mono_ms() + (backoff > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff);
        insert_locked(d);
    }
    pthread_mutex_unlock(&g_lock);
    return NULL;
}

int tg_webhook_start(void)
{
    int rc = TG_OK;
    pthread_mutex_lock(&g_lock);
    if (g_refs++ == 0) {
        const char *b = getenv("TG_WEBHOOK_BACKOFF_MS");
        if (b != NULL) {
            long v = strtol(b, NULL, 10);
            if (v > 0 && v < 600000)
                g_backoff_ms = (int)v;
        }
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&g_cond, &ca);
        pthread_condattr_destroy(&ca);
        g_stop = false;
        if (pthread_create(&g_thread, NULL, sender_main, NULL) != 0) {
            g_refs = 0;
            rc = TG_NOMEM;
        }
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

void tg_webhook_stop(void)
{
    pthread_mutex_lock(&g_lock);
    bool last = --g_refs == 0;
    if (last) {
        g_stop = true;
        pthread_cond_signal(&g_cond);
    }
    pthread_mutex_unlock(&g_lock);
    if (!last)
        return;
    pthread_join(g_thread, NULL);
    pthread_mutex_lock(&g_lock);
    size_t dropped = 0;
    while (g_queue != NULL) {
        struct delivery *d = g_queue;
        g_queue = d->next;
        delivery_free(d);
        dropped++;
    }
    pthread_mutex_unlock(&g_lock);
    pthread_cond_destroy(&g_cond);
    if (dropped > 0)
        tg_warn("webhook: %zu queued deliveries dropped at shutdown", dropped);
}

void tg_webhook_enqueue(const char *url, const char *body, const char *secret, int retries,
                        bool allow_private)
{
    struct delivery *d = calloc(1, sizeof *d);
    if (d == NULL)
        return;
    d->allow_private = allow_private;
    d->url = strdup(url);
    d->body = strdup(body);
    d->secret = secret != NULL ? strdup(secret) : NULL;
    d->retries = retries;
    d->due_ms = mono_ms();
    if (d->url == NULL || d->body == NULL || (secret != NULL && d->secret == NULL)) {
        delivery_free(d);
        return;
    }
    pthread_mutex_lock(&g_lock);
    insert_locked(d);
    pthread_cond_signal(&g_cond);
    pthread_mutex_unlock(&g_lock);
}
