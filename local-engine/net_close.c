/* nng_close with a time limit. nng 1.5 (Debian 12) can block forever in nng_close while a
 * connection is being torn down (nanomsg/nng#1543, #1813: the reaper waits on a task that never
 * runs). A gateway must never hang on shutdown for that, so the close runs on a helper thread and
 * the caller stops waiting after timeout_ms. */
#include <errno.h>
#include <nng/nng.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net_proto.h"
#include "tg/log.h"

struct closer {
    pthread_mutex_t mtx;
    pthread_cond_t cond;
    nng_socket sock;
    bool done;
    int refs; /* the caller and the thread; the last one frees */
};

static void closer_unref(struct closer *k)
{
    pthread_mutex_lock(&k->mtx);
    bool last = --k->refs == 0;
    pthread_mutex_unlock(&k->mtx);
    if (last) {
        pthread_mutex_destroy(&k->mtx);
        pthread_cond_destroy(&k->cond);
        free(k);
    }
}

static void *closer_main(void *arg)
{
    struct closer *k = arg;
    nng_close(k->sock);
    pthread_mutex_lock(&k->mtx);
    k->done = true;
    pthread_cond_broadcast(&k->cond);
    pthread_mutex_unlock(&k->mtx);
    closer_unref(k);
    return NULL;
}

bool tg_net_close_bounded(nng_socket sock, unsigned timeout_ms, const char *what)
{
    struct closer *k = calloc(1, sizeof(*k));
    pthread_t t;
    if (k == NULL)
        goto inline_close;
    pthread_mutex_init(&k->mtx, NULL);
    pthread_cond_init(&k->cond, NULL);
    k->sock = sock;
    k->refs = 2;
    if (pthread_create(&t, NULL, closer_main, k) != 0) {
        pthread_mutex_destroy(&k->mtx);
        pthread_cond_destroy(&k->cond);
        free(k);
        goto inline_close;
    }
    pthread_detach(t);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&k->mtx);
    while (!k->done)
        if (pthread_cond_timedwait(&k->cond, &k->mtx, &ts) == ETIMEDOUT)
            break;
    bool done = k->done;
    pthread_mutex_unlock(&k->mtx);
    closer_unref(k);
    if (!done)
        tg_error("%s: nng_close did not return within %u ms (nng 1.5 close bug, nanomsg/nng#1543); "
                 "leaving the socket behind",
                 what, timeout_ms);
    return done;

inline_close:
    nng_close(sock);
    return true;
}
