/* bench-cache: CPU cost of the cache path's pieces, and the Redis GET round trip through the
 * tg_redis client (one command in flight, so it is pure latency).
 *
 *   bench-cache [--iters N] [--redis-port P]
 *
 * Prints one JSON line: ns per tg_cache_key (1 KB chat body), per entry encode/decode (a 1 KB JSON
 * answer and a 40-chunk stream), and GET round-trip percentiles in microseconds when a port is
 * given. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "cache.h"
#include "redis.h"
#include "tg/err.h"
#include "tg/log.h"

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

struct rt {
    struct event_base *base;
    struct tg_redis *c;
    struct tg_cache_key key;
    int64_t *samples;
    int n, target;
    int64_t t0;
};

static void next_get(struct rt *r);

static void on_lookup(int err, struct tg_cache_entry *e, void *user)
{
    struct rt *r = user;
    r->samples[r->n++] = now_ns() - r->t0;
    if (err != TG_OK || e == NULL) {
        fprintf(stderr, "lookup failed: %s\n", tg_strerror(err));
        exit(1);
    }
    tg_cache_entry_free(e);
    if (r->n < r->target)
        next_get(r);
    else
        event_base_loopbreak(r->base);
}

static void next_get(struct rt *r)
{
    r->t0 = now_ns();
    if (tg_cache_lookup(r->c, &r->key, on_lookup, r) != TG_OK) {
        fprintf(stderr, "redis unavailable\n");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    int iters = 200000, port = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--iters") == 0)
            iters = (int)strtol(argv[i + 1], NULL, 10);
        else if (strcmp(argv[i], "--redis-port") == 0)
            port = (int)strtol(argv[i + 1], NULL, 10);
    }
    if (iters <= 0)
        iters = 1000;
    tg_log_set_level(TG_LOG_WARN);

    char text[1100];
    for (size_t i = 0; i < 1024; i++)
        text[i] = "abcdefghij klmnopqrstuvwxyz."[i % 28];
    text[1024] = '\0';
    json_t *body = json_pack("{s:s,s:f,s:i,s:[{s:s,s:s},{s:s,s:s}]}", "model", "auto", "temperature", 0.0,
                             "max_tokens", 64, "messages", "role", "system", "content",
                             "Classify the ticket.", "role", "user", "content", text);
    struct tg_cache_key key;
    int64_t t = now_ns();
    for (int i = 0; i < iters; i++)
        tg_cache_key("acme", "/v1/chat/completions", "auto|tier=0", body, false, &key);
    double key_ns = (double)(now_ns() - t) / iters;

    struct tg_cache_entry *e = tg_cache_entry_new(200, false, NULL, 1 << 20);
    tg_cache_entry_set_body(e, text, 1024);
    tg_cache_entry_set_usage(e, "phi-3.5-mini", 270, 12);
    struct tg_cache_entry *s = tg_cache_entry_new(200, true, NULL, 1 << 20);
    for (int i = 0; i < 40; i++)
        tg_cache_entry_add_chunk(s, text, 120);
    char *data;
    size_t len;
    t = now_ns();
    for (int i = 0; i < iters; i++) {
        tg_cache_entry_encode(e, &data, &len);
        free(data);
    }
    double enc_ns = (double)(now_ns() - t) / iters;
    tg_cache_entry_encode(e, &data, &len);
    t = now_ns();
    for (int i = 0; i < iters; i++) {
        struct tg_cache_entry *d;
        tg_cache_entry_decode(data, len, &d);
        tg_cache_entry_free(d);
    }
    double dec_ns = (double)(now_ns() - t) / iters;
    free(data);
    tg_cache_entry_encode(s, &data, &len);
    t = now_ns();
    for (int i = 0; i < iters / 10; i++) {
        struct tg_cache_entry *d;
        tg_cache_entry_decode(data, len, &d);
        tg_cache_entry_free(d);
    }
    double dec_stream_ns = (double)(now_ns() - t) / (iters / 10);
    free(data);
    printf("{\"iters\":%d,\"key_ns\":%.0f,\"encode_json_ns\":%.0f,\"decode_json_ns\":%.0f,"
           "\"decode_stream40_ns\":%.0f",
           iters, key_ns, enc_ns, dec_ns, dec_stream_ns);

    if (port > 0) {
        struct rt r = {.base = event_base_new(), .key = key};
        char url[64];
        snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
        struct tg_cfg_redis cfg = {.enabled = true, .url = url, .connect_timeout_ms = 1000,
                                   .command_timeout_ms = 1000};
        if (tg_redis_create(r.base, &cfg, "bench", &r.c) != TG_OK)
            return 1;
        for (int i = 0; i < 5000 && !tg_redis_available(r.c); i++) {
            event_base_loop(r.base, EVLOOP_NONBLOCK);
            usleep(1000);
        }
        if (tg_cache_store(r.c, &key, e, 300) != TG_OK) {
            fprintf(stderr, "cannot reach Redis on port %d\n", port);
            return 1;
        }
        r.target = iters < 50000 ? iters : 50000;
        r.samples = calloc((size_t)r.target, sizeof *r.samples);
        next_get(&r);
        event_base_dispatch(r.base);
        qsort(r.samples, (size_t)r.n, sizeof *r.samples, cmp64);
        printf(",\"get_roundtrip_us\":{\"n\":%d,\"p50\":%.1f,\"p99\":%.1f,\"max\":%.1f}", r.n,
               (double)r.samples[r.n / 2] / 1e3, (double)r.samples[(size_t)(r.n * 0.99)] / 1e3,
               (double)r.samples[r.n - 1] / 1e3);
        free(r.samples);
        tg_redis_destroy(r.c);
        event_base_free(r.base);
    }
    printf("}\n");
    json_decref(body);
    tg_cache_entry_free(e);
    tg_cache_entry_free(s);
    return 0;
}
