/* Circuit breakers, one per target (model name), shared by every I/O thread.
 *
 * A mutex guards a small array: the number of targets is the number of remote models in the
 * config (tens at most), and the lock is held for a few comparisons per attempt. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "metrics.h"
#include "upstream_int.h"

#define MAX_BREAKERS 256
#define MAX_FAILS    64

struct breaker {
    char name[128];
    enum tg_circuit_state state;
    int64_t fails[MAX_FAILS]; /* ring of recent failure times (ms) */
    int n_fails, head;
    int64_t open_until_ms;
    bool probe_inflight;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct breaker g_br[MAX_BREAKERS];
static size_t g_n;

int64_t up_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct breaker *find(const char *name, bool create)
{
    for (size_t i = 0; i < g_n; i++)
        if (strcmp(g_br[i].name, name) == 0)
            return &g_br[i];
    if (!create || g_n == MAX_BREAKERS || strlen(name) >= sizeof g_br[0].name)
        return NULL;
    struct breaker *b = &g_br[g_n++];
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    return b;
}

static int window_fails(const struct breaker *b, int64_t window_ms, int64_t now)
{
    int n = 0;
    for (int i = 0; i < b->n_fails; i++)
        if (now - b->fails[i] <= window_ms)
            n++;
    return n;
}

/* The open time elapsed: the next admit is the half-open probe. */
static void refresh(struct breaker *b, int64_t now)
{
    if (b->state == TG_CIRCUIT_OPEN && now >= b->open_until_ms) {
        b->state = TG_CIRCUIT_HALF_OPEN;
        b->probe_inflight = false;
    }
}

enum up_admit up_circuit_admit(const char *name, const struct tg_cfg_provider *p, int64_t now)
{
    if (p == NULL || p->circuit_failures <= 0)
        return UP_ADMIT_YES;
    enum up_admit r = UP_ADMIT_YES;
    pthread_mutex_lock(&g_lock);
    struct breaker *b = find(name, false);
    if (b != NULL) {
        refresh(b, now);
        if (b->state == TG_CIRCUIT_OPEN) {
            r = UP_ADMIT_DENY;
        } else if (b->state == TG_CIRCUIT_HALF_OPEN) {
            if (b->probe_inflight) {
                r = UP_ADMIT_DENY;
            } else {
                b->probe_inflight = true;
                r = UP_ADMIT_PROBE;
            }
        }
    }
    pthread_mutex_unlock(&g_lock);
    return r;
}

void up_circuit_report(const char *name, const struct tg_cfg_provider *p, bool success, bool probe,
                       int64_t now)
{
    if (p == NULL || p->circuit_failures <= 0)
        return;
    pthread_mutex_lock(&g_lock);
    struct breaker *b = find(name, !success);
    if (b == NULL)
        goto out;
    if (success) {
        /* A success closes a half-open breaker; in the closed state old failures age out. */
        if (b->state == TG_CIRCUIT_HALF_OPEN || probe) {
            b->state = TG_CIRCUIT_CLOSED;
            b->n_fails = 0;
            b->head = 0;
            b->probe_inflight = false;
        }
        goto out;
    }
    if (probe || b->state == TG_CIRCUIT_HALF_OPEN) {
        b->state = TG_CIRCUIT_OPEN;
        b->open_until_ms = now + p->circuit_open_ms;
        b->probe_inflight = false;
        goto out;
    }
    if (b->state == TG_CIRCUIT_OPEN)
        goto out; /* an attempt admitted before it opened: already counted */
    b->fails[b->head] = now;
    b->head = (b->head + 1) % MAX_FAILS;
    if (b->n_fails < MAX_FAILS)
        b->n_fails++;
    int need = p->circuit_failures < MAX_FAILS ? p->circuit_failures : MAX_FAILS;
    if (window_fails(b, p->circuit_window_ms, now) >= need) {
        b->state = TG_CIRCUIT_OPEN;
        b->open_until_ms = now + p->circuit_open_ms;
    }
out:
    pthread_mutex_unlock(&g_lock);
}

void up_circuit_release(const char *name)
{
    pthread_mutex_lock(&g_lock);
    struct breaker *b = find(name, false);
    if (b != NULL)
        b->probe_inflight = false;
    pthread_mutex_unlock(&g_lock);
}

enum tg_circuit_state tg_upstream_circuit_state(const char *name)
{
    enum tg_circuit_state s = TG_CIRCUIT_CLOSED;
    if (name == NULL)
        return s;
    pthread_mutex_lock(&g_lock);
    struct breaker *b = find(name, false);
    if (b != NULL) {
        refresh(b, up_now_ms());
        s = b->state;
    }
    pthread_mutex_unlock(&g_lock);
    return s;
}

bool tg_upstream_circuit_open(const char *name)
{
    return tg_upstream_circuit_state(name) == TG_CIRCUIT_OPEN;
}

size_t tg_upstream_circuit_list(struct tg_upstream_circuit_info *out, size_t max)
{
    int64_t now = up_now_ms();
    pthread_mutex_lock(&g_lock);
    size_t n = g_n;
    for (size_t i = 0; i < g_n && i < max; i++) {
        refresh(&g_br[i], now);
        memcpy(out[i].name, g_br[i].name, sizeof out[i].name);
        out[i].state = g_br[i].state;
        /* No provider here: count failures of the last minute as "recent". */
        out[i].recent_failures = window_fails(&g_br[i], 60000, now);
    }
    pthread_mutex_unlock(&g_lock);
    return n;
}

void tg_upstream_circuits_visit(void *user,
                                void (*visit)(void *vctx, const char *target, int state),
                                void *vctx)
{
    int64_t now = up_now_ms();
    pthread_mutex_lock(&g_lock);
    for (size_t i = 0; i < g_n; i++) {
        refresh(&g_br[i], now);
        visit(vctx, g_br[i].name, (int)g_br[i].state);
    }
    pthread_mutex_unlock(&g_lock);
}

void tg_upstream_circuit_reset_all(void)
{
    pthread_mutex_lock(&g_lock);
    g_n = 0;
    pthread_mutex_unlock(&g_lock);
}

/* ---- metrics hooks ---- */

static struct tg_upstream_metrics_hooks g_hooks;

void tg_upstream_set_metrics_hooks(const struct tg_upstream_metrics_hooks *hooks)
{
    if (hooks == NULL)
        memset(&g_hooks, 0, sizeof g_hooks);
    else
        g_hooks = *hooks;
}

/* Without hooks the metrics component gets the reports directly (a no-op before tg_metrics_init).
 */
void up_metric_error(const char *target, const char *kind)
{
    if (g_hooks.error != NULL)
        g_hooks.error(target, kind);
    else
        tg_metrics_upstream_error(target, kind);
}

void up_metric_duration(const char *target, double seconds)
{
    if (g_hooks.duration != NULL)
        g_hooks.duration(target, seconds);
    else
        tg_metrics_upstream_duration(target, seconds);
}

void up_metrics_register(void)
{
    tg_metrics_set_circuits_fn(tg_upstream_circuits_visit, NULL);
}
