/* route-learn: would a learned scorer beat the hand-set policy? k-fold cross-validation of a
 * logistic regression over hashed word uni/bigrams plus structural features, so the figures
 * are never training-set figures.
 *
 *   route-learn [--data FILE] [--test FILE] [--folds K] [--seed N] [--with-router]
 *               [--policy FILE] [--epochs N] [--l2 X]
 *
 * Features: hashed (2^18) binary word unigrams and bigrams of the system and user messages
 * (ASCII lower-cased, split on non-alphanumerics, UTF-8 bytes kept), plus structural features
 * from the router (prompt tokens, turns, code blocks, source text, language in the policy's
 * remote list, described context over the limit). --with-router also adds the router's cue
 * evidence per kind and its score, i.e. a model stacked on the hand-set policy.
 * Folds are stratified by label and fixed by --seed. --test FILE additionally trains on all of
 * --data and reports on FILE. Prints per-fold and mean accuracy, local and remote recall, and
 * the hand-set policy's figures on the same rows for comparison.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg/err.h"
#include "tg/router.h"

#ifndef TG_SOURCE_DIR
#define TG_SOURCE_DIR "."
#endif

#define HASH_BITS  18
#define N_HASH     (1u << HASH_BITS)
#define N_DENSE    (8 + TG_ROUTE_N_KINDS + 1)
#define MAX_SPARSE 4096

struct example {
    int label; /* 1 = remote */
    size_t n_idx;
    uint32_t idx[MAX_SPARSE];
    float dense[N_DENSE];
    int handset; /* the policy's tier: 1 = remote */
};

struct set {
    struct example *ex;
    size_t n;
};

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void add_ngrams(struct example *e, const char *s, size_t n)
{
    char prev[64] = "";
    size_t i = 0;
    while (i < n && e->n_idx + 2 < MAX_SPARSE) {
        while (i < n && !((unsigned char)s[i] >= 0x80 || (s[i] >= '0' && s[i] <= '9') ||
                          (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')))
            i++;
        char w[64];
        size_t wn = 0;
        while (i < n && ((unsigned char)s[i] >= 0x80 || (s[i] >= '0' && s[i] <= '9') ||
                         (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z'))) {
            char c = s[i++];
            if (c >= 'A' && c <= 'Z')
                c = (char)(c + 32);
            if (wn + 1 < sizeof w)
                w[wn++] = c;
        }
        if (wn == 0)
            break;
        w[wn] = '\0';
        e->idx[e->n_idx++] = (uint32_t)(fnv(w, wn) & (N_HASH - 1));
        if (prev[0] != '\0') {
            char bi[130];
            int bn = snprintf(bi, sizeof bi, "%s %s", prev, w);
            e->idx[e->n_idx++] = (uint32_t)(fnv(bi, (size_t)bn) & (N_HASH - 1));
        }
        memcpy(prev, w, wn + 1);
    }
}

static int load(const char *path, const struct tg_router_policy *p, bool with_router,
                struct set *out)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "route-learn: cannot open %s\n", path);
        return -1;
    }
    size_t cap = 256;
    out->ex = calloc(cap, sizeof *out->ex);
    out->n = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while (out->ex != NULL && (len = getline(&line, &lcap, f)) != -1) {
        json_t *row = json_loadb(line, (size_t)len, 0, NULL);
        const char *label = json_string_value(json_object_get(row, "label"));
        struct tg_route_parsed pr;
        char err[128];
        if (label == NULL || tg_router_parse_json(row, TG_ROUTE_EP_CHAT, &pr, err, sizeof err)) {
            json_decref(row);
            continue;
        }
        if (out->n == cap) {
            cap *= 2;
            struct example *ne = realloc(out->ex, cap * sizeof *ne);
            if (ne == NULL)
                break;
            out->ex = ne;
        }
        struct example *e = &out->ex[out->n++];
        memset(e, 0, sizeof *e);
        e->label = strcmp(label, "remote") == 0;
        for (size_t i = 0; i < pr.req.n_messages; i++) {
            const struct tg_route_message *m = &pr.req.messages[i];
            if (m->role != NULL && strcmp(m->role, "assistant") == 0)
                continue;
            /* the head of long messages carries the task; the rest is pasted material */
            add_ngrams(e, m->content, m->content_len < 1500 ? m->content_len : 1500);
        }
        qsort(e->idx, e->n_idx, sizeof e->idx[0], cmp_u32);
        size_t u = 0;
        for (size_t k = 0; k < e->n_idx; k++)
            if (u == 0 || e->idx[k] != e->idx[u - 1])
                e->idx[u++] = e->idx[k];
        e->n_idx = u;
        struct tg_route_features ft;
        tg_router_features(p, &pr.req, &ft);
        struct tg_route_decision d;
        tg_router_decide_features(p, &pr.req, &ft, NULL, &d);
        e->handset = d.tier == TG_ROUTE_REMOTE;
        size_t k = 0;
        e->dense[k++] = 1.0f; /* bias */
        e->dense[k++] = (float)log1p((double)ft.n_prompt_tokens) / 10.0f;
        e->dense[k++] = (float)ft.n_turns / 10.0f;
        e->dense[k++] = ft.n_code_blocks > 0;
        e->dense[k++] = ft.has_source_text;
        e->dense[k++] = (float)log1p((double)ft.n_output_tokens) / 10.0f;
        bool remote_lang = strcmp(d.reason, "force_remote.language") == 0;
        e->dense[k++] = remote_lang;
        e->dense[k++] = ft.n_described_tokens > 32768;
        if (with_router) {
            for (int q = 0; q < TG_ROUTE_N_KINDS; q++)
                e->dense[k++] = (float)log1p(ft.kind_evidence[q]);
            e->dense[k++] = (float)d.score;
        }
        tg_router_parsed_free(&pr);
        json_decref(row);
    }
    free(line);
    fclose(f);
    return out->ex != NULL ? 0 : -1;
}

struct model {
    float *w; /* N_HASH sparse weights then N_DENSE dense */
};

static double predict(const struct model *m, const struct example *e)
{
    double z = 0;
    for (size_t k = 0; k < e->n_idx; k++)
        z += m->w[e->idx[k]];
    for (size_t k = 0; k < N_DENSE; k++)
        z += m->w[N_HASH + k] * e->dense[k];
    return 1.0 / (1.0 + exp(-z));
}

/* Adagrad logistic regression with L2; examples in `order`. */
static void train(struct model *m, const struct set *s, const size_t *order, size_t n, int epochs,
                  double l2, unsigned seed)
{
    size_t dim = N_HASH + N_DENSE;
    memset(m->w, 0, dim * sizeof *m->w);
    float *g2 = calloc(dim, sizeof *g2);
    size_t *ord = malloc(n * sizeof *ord);
    if (g2 == NULL || ord == NULL) {
        free(g2);
        free(ord);
        return;
    }
    memcpy(ord, order, n * sizeof *ord);
    const double lr = 0.3;
    for (int ep = 0; ep < epochs; ep++) {
        for (size_t i = n; i > 1; i--) { /* deterministic shuffle */
            seed = seed * 1103515245u + 12345u;
            size_t j = (seed >> 8) % i;
            size_t t = ord[i - 1];
            ord[i - 1] = ord[j];
            ord[j] = t;
        }
        for (size_t i = 0; i < n; i++) {
            const struct example *e = &s->ex[ord[i]];
            double g = predict(m, e) - e->label;
            for (size_t k = 0; k < e->n_idx; k++) {
                size_t q = e->idx[k];
                double gq = g + l2 * m->w[q];
                g2[q] += (float)(gq * gq);
                m->w[q] -= (float)(lr * gq / (sqrt(g2[q]) + 1e-6));
            }
            for (size_t k = 0; k < N_DENSE; k++) {
                if (e->dense[k] == 0)
                    continue;
                size_t q = N_HASH + k;
                double gq = g * e->dense[k] + l2 * m->w[q];
                g2[q] += (float)(gq * gq);
                m->w[q] -= (float)(lr * gq / (sqrt(g2[q]) + 1e-6));
            }
        }
    }
    free(g2);
    free(ord);
}

struct tally {
    int ll, lr, rl, rr;
};

static void count(struct tally *t, int label, int pred)
{
    t->ll += !label && !pred;
    t->lr += !label && pred;
    t->rl += label && !pred;
    t->rr += label && pred;
}

static void print_tally(const char *what, const struct tally *t)
{
    int n = t->ll + t->lr + t->rl + t->rr;
    printf("%-34s n=%3d  accuracy %.3f  local recall %.3f  remote recall %.3f\n", what, n,
           n ? (double)(t->ll + t->rr) / n : 0, t->ll + t->lr ? (double)t->ll / (t->ll + t->lr) : 0,
           t->rl + t->rr ? (double)t->rr / (t->rl + t->rr) : 0);
}

int main(int argc, char **argv)
{
    const char *data = TG_SOURCE_DIR "/bench/route-eval/route-dev.jsonl";
    const char *test = NULL;
    const char *policy_path = TG_SOURCE_DIR "/policies/balanced.yaml";
    int folds = 5, epochs = 20;
    unsigned seed = 1;
    double l2 = 1e-4;
    bool with_router = false;
    for (int i = 1; i < argc; i++) {
        bool has = i + 1 < argc;
        if (strcmp(argv[i], "--data") == 0 && has) {
            data = argv[++i];
        } else if (strcmp(argv[i], "--test") == 0 && has) {
            test = argv[++i];
        } else if (strcmp(argv[i], "--policy") == 0 && has) {
            policy_path = argv[++i];
        } else if (strcmp(argv[i], "--folds") == 0 && has) {
            folds = (int)strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--epochs") == 0 && has) {
            epochs = (int)strtol(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--seed") == 0 && has) {
            seed = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--l2") == 0 && has) {
            l2 = strtod(argv[++i], NULL);
        } else if (strcmp(argv[i], "--with-router") == 0) {
            with_router = true;
        } else {
            fprintf(stderr, "usage: route-learn [--data FILE] [--test FILE] [--folds K] "
                            "[--seed N] [--epochs N] [--l2 X] [--with-router] [--policy FILE]\n");
            return 2;
        }
    }
    if (folds < 2 || folds > 50 || epochs < 1 || epochs > 1000) {
        fprintf(stderr, "route-learn: --folds 2..50, --epochs 1..1000\n");
        return 2;
    }
    char err[512];
    struct tg_router_policy *p = NULL;
    if (tg_router_policy_load(policy_path, &p, err, sizeof err) != TG_OK) {
        fprintf(stderr, "route-learn: %s\n", err);
        return 2;
    }
    struct set s = {0}, t = {0};
    struct model m = {calloc(N_HASH + N_DENSE, sizeof(float))};
    int status = 0;
    if (m.w == NULL || load(data, p, with_router, &s) != 0 || s.n < (size_t)folds) {
        fprintf(stderr, "route-learn: cannot load %s\n", data);
        status = 2;
        goto out;
    }
    /* stratified folds: deal local and remote rows round-robin after a seeded shuffle */
    int *fold = malloc(s.n * sizeof *fold);
    size_t *order = malloc(s.n * sizeof *order);
    size_t *perm = malloc(s.n * sizeof *perm);
    if (fold == NULL || order == NULL || perm == NULL) {
        free(fold);
        free(order);
        free(perm);
        status = 2;
        goto out;
    }
    for (size_t i = 0; i < s.n; i++)
        perm[i] = i;
    unsigned sh = seed * 2654435761u;
    for (size_t i = s.n; i > 1; i--) {
        sh = sh * 1103515245u + 12345u;
        size_t j = (sh >> 8) % i;
        size_t tmp = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = tmp;
    }
    int next[2] = {0, 0};
    for (size_t i = 0; i < s.n; i++) {
        int lab = s.ex[perm[i]].label;
        fold[perm[i]] = next[lab]++ % folds;
    }
    printf("route-learn: %s, %zu rows, %d-fold CV, %s, seed %u, %d epochs, l2 %g\n", data, s.n,
           folds, with_router ? "n-grams + structure + router cues/score" : "n-grams + structure",
           seed, epochs, l2);
    struct tally cv = {0}, hand = {0};
    for (int k = 0; k < folds; k++) {
        size_t n = 0;
        for (size_t i = 0; i < s.n; i++)
            if (fold[i] != k)
                order[n++] = i;
        train(&m, &s, order, n, epochs, l2, seed + (unsigned)k);
        struct tally ft = {0};
        for (size_t i = 0; i < s.n; i++) {
            if (fold[i] != k)
                continue;
            count(&ft, s.ex[i].label, predict(&m, &s.ex[i]) >= 0.5);
            count(&cv, s.ex[i].label, predict(&m, &s.ex[i]) >= 0.5);
            count(&hand, s.ex[i].label, s.ex[i].handset);
        }
        char what[48];
        snprintf(what, sizeof what, "  fold %d (held out)", k + 1);
        print_tally(what, &ft);
    }
    print_tally("learned, cross-validated", &cv);
    print_tally("hand-set policy, same rows", &hand);
    if (test != NULL) {
        if (load(test, p, with_router, &t) != 0) {
            status = 2;
        } else {
            for (size_t i = 0; i < s.n; i++)
                order[i] = i;
            train(&m, &s, order, s.n, epochs, l2, seed);
            struct tally tl = {0}, th = {0};
            for (size_t i = 0; i < t.n; i++) {
                count(&tl, t.ex[i].label, predict(&m, &t.ex[i]) >= 0.5);
                count(&th, t.ex[i].label, t.ex[i].handset);
            }
            printf("trained on all of %s, tested on %s:\n", data, test);
            print_tally("learned", &tl);
            print_tally("hand-set policy", &th);
        }
    }
    free(fold);
    free(order);
    free(perm);
out:
    free(s.ex);
    free(t.ex);
    free(m.w);
    tg_router_policy_unref(p);
    return status;
}
