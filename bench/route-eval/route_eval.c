/* route-eval: run the router over a labelled JSONL set and report how well it splits the work.
 *
 *   route-eval [--policy FILE] [--data FILE] [--min-local-recall X] [--min-remote-recall X]
 *              [--misroutes] [--remote-in-usd X] [--remote-out-usd X] [--local-usd X]
 *              [--output-tokens N]
 *
 * Each row: {"id", "messages":[...], "label":"local"|"remote", "category", ...}.
 * Prints accuracy, local recall (local-labelled rows routed local: the saving), remote recall
 * (remote-labelled rows routed remote: the quality guard), a confusion table per category and
 * the estimated cost saving against sending everything to the remote tier.
 *
 * Cost model: remote price per million input/output tokens (defaults $2.50 / $10.00, a
 * GPT-4o-class price), the local tier at --local-usd per million tokens (default 0: the
 * machine is already paid for); output tokens per request = what the request asks for, else
 * --output-tokens (default 300). Token counts are the router's estimates.
 *
 * Exit status: 0, 1 when a --min-* target is missed, 2 on bad input.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg/err.h"
#include "tg/router.h"

#ifndef TG_SOURCE_DIR
#define TG_SOURCE_DIR "."
#endif

struct cat {
    char name[48];
    int ll, lr, rl, rr; /* label->routed */
};

static void usage(void)
{
    fprintf(stderr, "usage: route-eval [--policy FILE] [--data FILE] [--min-local-recall X] "
                    "[--min-remote-recall X] [--misroutes] [--remote-in-usd X] "
                    "[--remote-out-usd X] [--local-usd X] [--output-tokens N]\n");
}

static bool parse_double(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0')
        return false;
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    const char *policy_path = TG_SOURCE_DIR "/policies/balanced.yaml";
    const char *data_path = TG_SOURCE_DIR "/bench/route-eval/route-dev.jsonl";
    double min_local = 0, min_remote = 0;
    double in_usd = 2.50, out_usd = 10.0, local_usd = 0.0, out_tokens_default = 300;
    bool misroutes = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        double *dst = NULL;
        if (strcmp(a, "--policy") == 0 && has) {
            policy_path = argv[++i];
        } else if (strcmp(a, "--data") == 0 && has) {
            data_path = argv[++i];
        } else if (strcmp(a, "--misroutes") == 0) {
            misroutes = true;
        } else if (strcmp(a, "--min-local-recall") == 0 && has) {
            dst = &min_local;
        } else if (strcmp(a, "--min-remote-recall") == 0 && has) {
            dst = &min_remote;
        } else if (strcmp(a, "--remote-in-usd") == 0 && has) {
            dst = &in_usd;
        } else if (strcmp(a, "--remote-out-usd") == 0 && has) {
            dst = &out_usd;
        } else if (strcmp(a, "--local-usd") == 0 && has) {
            dst = &local_usd;
        } else if (strcmp(a, "--output-tokens") == 0 && has) {
            dst = &out_tokens_default;
        } else {
            usage();
            return 2;
        }
        if (dst != NULL && !parse_double(argv[++i], dst)) {
            fprintf(stderr, "route-eval: %s needs a number, got '%s'\n", a, argv[i]);
            return 2;
        }
    }

    char err[512];
    struct tg_router_policy *policy = NULL;
    int rc = tg_router_policy_load(policy_path, &policy, err, sizeof err);
    if (rc != TG_OK) {
        fprintf(stderr, "route-eval: %s\n", err);
        return 2;
    }
    FILE *f = fopen(data_path, "r");
    if (f == NULL) {
        fprintf(stderr, "route-eval: cannot open %s\n", data_path);
        tg_router_policy_unref(policy);
        return 2;
    }

    struct cat cats[64];
    size_t n_cats = 0;
    int ll = 0, lr = 0, rl = 0, rr = 0;
    double cost_all_remote = 0, cost_routed = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, bad = 0;
    while ((len = getline(&line, &cap, f)) != -1) {
        lineno++;
        if (len <= 1)
            continue;
        json_error_t jerr;
        json_t *row = json_loadb(line, (size_t)len, 0, &jerr);
        const char *label = row != NULL ? json_string_value(json_object_get(row, "label")) : NULL;
        if (row == NULL || label == NULL) {
            fprintf(stderr, "%s:%d: %s\n", data_path, lineno,
                    row == NULL ? jerr.text : "row has no \"label\"");
            json_decref(row);
            bad++;
            continue;
        }
        const char *id = json_string_value(json_object_get(row, "id"));
        const char *category = json_string_value(json_object_get(row, "category"));
        if (category == NULL)
            category = "(none)";
        struct tg_route_parsed pr;
        rc = tg_router_parse_json(row, TG_ROUTE_EP_CHAT, &pr, err, sizeof err);
        if (rc != TG_OK) {
            fprintf(stderr, "%s:%d: %s\n", data_path, lineno, err);
            json_decref(row);
            bad++;
            continue;
        }
        struct tg_route_features feat;
        struct tg_route_decision d;
        tg_router_features(policy, &pr.req, &feat);
        rc = tg_router_decide_features(policy, &pr.req, &feat, NULL, &d);
        if (rc != TG_OK) {
            fprintf(stderr, "%s:%d: decide failed: %s\n", data_path, lineno, tg_strerror(rc));
            tg_router_parsed_free(&pr);
            json_decref(row);
            bad++;
            continue;
        }
        bool want_local = strcmp(label, "local") == 0;
        bool got_local = d.tier == TG_ROUTE_LOCAL;
        size_t c;
        for (c = 0; c < n_cats; c++)
            if (strcmp(cats[c].name, category) == 0)
                break;
        if (c == n_cats && n_cats < sizeof cats / sizeof cats[0]) {
            memset(&cats[c], 0, sizeof cats[c]);
            snprintf(cats[c].name, sizeof cats[c].name, "%s", category);
            n_cats++;
        }
        if (c < n_cats) {
            cats[c].ll += want_local && got_local;
            cats[c].lr += want_local && !got_local;
            cats[c].rl += !want_local && got_local;
            cats[c].rr += !want_local && !got_local;
        }
        ll += want_local && got_local;
        lr += want_local && !got_local;
        rl += !want_local && got_local;
        rr += !want_local && !got_local;
        double in_tok = (double)feat.n_prompt_tokens;
        double out_tok =
            feat.n_output_tokens > 0 ? (double)feat.n_output_tokens : out_tokens_default;
        double remote_cost = (in_tok * in_usd + out_tok * out_usd) / 1e6;
        cost_all_remote += remote_cost;
        cost_routed += got_local ? (in_tok + out_tok) * local_usd / 1e6 : remote_cost;
        if (misroutes && want_local != got_local)
            printf("MISROUTE %s %-18s want=%-6s got=%-6s score=%.2f kind=%s reason=%s lang=%s\n",
                   id != NULL ? id : "?", category, label, tg_route_tier_name(d.tier), d.score,
                   tg_route_kind_name(feat.kind), d.reason, feat.lang);
        tg_router_parsed_free(&pr);
        json_decref(row);
    }
    free(line);
    fclose(f);

    int total = ll + lr + rl + rr;
    double acc = total ? (double)(ll + rr) / total : 0;
    double lrec = ll + lr ? (double)ll / (ll + lr) : 0;
    double rrec = rl + rr ? (double)rr / (rl + rr) : 0;
    double saving = cost_all_remote > 0 ? 1.0 - cost_routed / cost_all_remote : 0;
    printf("policy: %s (%s)\ndata:   %s (%d rows, %d unreadable)\n\n",
           tg_router_policy_name(policy), policy_path, data_path, total, bad);
    printf("%-20s %5s %13s %13s %13s %13s\n", "category", "n", "local->local", "local->remote",
           "remote->local", "remote->remote");
    for (size_t c = 0; c < n_cats; c++)
        printf("%-20s %5d %13d %13d %13d %13d\n", cats[c].name,
               cats[c].ll + cats[c].lr + cats[c].rl + cats[c].rr, cats[c].ll, cats[c].lr,
               cats[c].rl, cats[c].rr);
    printf("%-20s %5d %13d %13d %13d %13d\n\n", "total", total, ll, lr, rl, rr);
    printf("accuracy       %.3f\nlocal recall   %.3f  (%d/%d local-labelled routed local)\n"
           "remote recall  %.3f  (%d/%d remote-labelled routed remote)\n",
           acc, lrec, ll, ll + lr, rrec, rr, rl + rr);
    printf("cost           all-remote $%.4f, routed $%.4f: saving %.1f%% "
           "(remote $%.2f/$%.2f per Mtok in/out, local $%.2f/Mtok)\n",
           cost_all_remote, cost_routed, saving * 100.0, in_usd, out_usd, local_usd);
    tg_router_policy_unref(policy);
    int status = 0;
    if (bad > 0 || total == 0)
        status = 2;
    else if (lrec < min_local || rrec < min_remote) {
        printf("FAIL: target local recall >= %.2f and remote recall >= %.2f\n", min_local,
               min_remote);
        status = 1;
    }
    return status;
}
