/* Webhook sender: one process-wide thread with a due-time ordered queue, so slow or failing
 * receivers never hold an I/O thread. Deliveries are best effort: a gateway that exits drops
 * what is still queued (the job result itself is durable in Redis). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "jobs.h"
#include "jobs_int.h"
#include "tg/err.h"
#include "tg/log.h"

#define BACKOFF_BASE_MS 1000
#define BACKOFF_MAX_MS 60000
#define TIMEOUT_MS 10000

struct delivery {
    char *url, *body, *secret;
    int attempt, retries;
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

/* One POST; true on a 2xx answer. */
static bool deliver(const struct delivery *d)
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
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK)
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
        if (ok || d->attempt >= d->retries) {
            if (!ok)
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

void tg_webhook_enqueue(const char *url, const char *body, const char *secret, int retries)
{
    struct delivery *d = calloc(1, sizeof *d);
    if (d == NULL)
        return;
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
