/* bench-router: how long routing takes (features + decision), by prompt size.
 *
 *   bench-router [--policy FILE] [--iters N]
 *
 * For each size (1, 2, 4, 8, 16, 32, 64 KB) it builds a realistic prompt (an instruction, then
 * a pasted support thread with names, numbers, an e-mail address and some accented text),
 * routes it N times (default 3000, fewer for the big sizes), timing each call with
 * CLOCK_MONOTONIC, and prints the median and 90th percentile in ns and the median per KB (flat
 * per-KB = linear cost). Issue 5's targets: 1 KB <= 5 us median, 32 KB <= 100 us.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tg/err.h"
#include "tg/router.h"

#ifndef TG_SOURCE_DIR
#define TG_SOURCE_DIR "."
#endif

static const char *const PARTS[] = {
    "[Customer, Mon 09:12] Our nightly CSV export to SFTP failed again, third time this month. "
    "Error says 'auth failed'. Contact me at ops.lead@northwind-design.com.\n",
    "[Agent Ravi, Mon 10:40] We rotated SFTP host keys on the 3rd; your client may have pinned "
    "the old fingerprint. Could you re-accept the key and retry?\n",
    "[Customer, Tue 08:05] Re-accepted, still failing. Order #WD-40917, 1,250 units, total "
    "$7,250.00 due 28 February. Der Kunde möchte eine Rückmeldung bis Freitag.\n",
    "[Agent Lena, Tue 11:30] Logs show the password changed on 2024-05-03T11:02:17Z. Please "
    "reset it in Settings > Integrations and try once more.\n",
};

static int cmp_u64(const void *a, const void *b)
{
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return (x > y) - (x < y);
}

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    const char *policy_path = TG_SOURCE_DIR "/policies/balanced.yaml";
    long iters = 3000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--policy") == 0 && i + 1 < argc) {
            policy_path = argv[++i];
        } else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
            char *end;
            iters = strtol(argv[++i], &end, 10);
            if (*end != '\0' || iters < 10 || iters > 10000000) {
                fprintf(stderr, "bench-router: --iters needs 10..10000000\n");
                return 2;
            }
        } else {
            fprintf(stderr, "usage: bench-router [--policy FILE] [--iters N]\n");
            return 2;
        }
    }
    char err[512];
    struct tg_router_policy *p = NULL;
    if (tg_router_policy_load(policy_path, &p, err, sizeof err) != TG_OK) {
        fprintf(stderr, "bench-router: %s\n", err);
        return 2;
    }
    static const size_t SIZES_KB[] = {1, 2, 4, 8, 16, 32, 64};
    const char *instr = "Summarize this ticket thread in two sentences for the next agent.\n\n";
    printf("policy %s, %ld iterations (fewer above 8 KB)\n", tg_router_policy_name(p), iters);
    printf("%8s %12s %12s %12s %10s\n", "size", "median_ns", "p90_ns", "ns_per_KB", "tier");
    int status = 0;
    for (size_t s = 0; s < sizeof SIZES_KB / sizeof SIZES_KB[0]; s++) {
        size_t n = SIZES_KB[s] * 1024;
        char *text = malloc(n + 1);
        unsigned long long *t = NULL;
        if (text == NULL) {
            status = 1;
            break;
        }
        size_t off = strlen(instr);
        memcpy(text, instr, off);
        for (size_t k = 0; off < n; k++) {
            const char *part = PARTS[k % 4];
            size_t len = strlen(part);
            if (len > n - off)
                len = n - off;
            memcpy(text + off, part, len);
            off += len;
        }
        text[n] = '\0';
        long it = SIZES_KB[s] > 8 ? iters / (long)(SIZES_KB[s] / 8) : iters;
        if (it < 50)
            it = 50;
        t = malloc((size_t)it * sizeof *t);
        if (t == NULL) {
            free(text);
            status = 1;
            break;
        }
        struct tg_route_message m = {"user", text, n};
        struct tg_route_request req = tg_route_request_default();
        req.messages = &m;
        req.n_messages = 1;
        struct tg_route_decision d;
        for (int w = 0; w < 20; w++) /* warm caches and the branch predictor */
            tg_router_decide(p, &req, NULL, &d);
        for (long i = 0; i < it; i++) {
            unsigned long long t0 = now_ns();
            tg_router_decide(p, &req, NULL, &d);
            t[i] = now_ns() - t0;
        }
        qsort(t, (size_t)it, sizeof *t, cmp_u64);
        unsigned long long med = t[it / 2], p90 = t[it * 9 / 10];
        printf("%6zuKB %12llu %12llu %12llu %10s\n", SIZES_KB[s], med, p90, med / SIZES_KB[s],
               tg_route_tier_name(d.tier));
        free(t);
        free(text);
    }
    tg_router_policy_unref(p);
    return status;
}
