/* `tiergate route --explain`: the router's view of requests, from the command line. Uses only
 * tg_router and tg_common, so it runs without Redis, providers or a model. */
#include "cli_route.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg/buf.h"
#include "tg/err.h"
#include "tg/router.h"

/* Ceiling for one request read from stdin or one JSONL line: a 128K-token context is ~512 KB,
 * so 16 MB leaves room for anything the gateway itself would accept. */
#define CLI_ROUTE_MAX_INPUT     (16u << 20)
#define CLI_ROUTE_MAX_FALLBACKS 8

struct cli_opts {
    const char *policy;
    const char *jsonl;
    bool explain, pretty;
    struct tg_route_targets targets;
    const char *fallbacks[CLI_ROUTE_MAX_FALLBACKS];
    struct tg_route_request base; /* key/tier facts applied to every request */
};

static void usage(FILE *f)
{
    fprintf(f, "usage: tiergate route --explain [--policy FILE] [--jsonl FILE|-] [--pretty]\n"
               "         [--local-target NAME] [--remote-target NAME] [--fallback NAME]...\n"
               "         [--privacy] [--budget-exhausted] [--circuit-open] [--engine-wait-ms N]\n"
               "         [--tier local|remote] [--pinned-model NAME] [--ctx TOKENS] [PROMPT...]\n"
               "Prompt from the arguments, else stdin; --jsonl reads one request body per line.\n");
}

static bool parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* One request: route it and print. Returns TG_OK or the decide error. */
static int emit(const struct cli_opts *o, const struct tg_router_policy *p,
                struct tg_route_request *req, const char *id)
{
    req->key_privacy = o->base.key_privacy;
    req->remote_budget_exhausted = o->base.remote_budget_exhausted;
    req->remote_circuit_open = o->base.remote_circuit_open;
    req->engine_wait_ms = o->base.engine_wait_ms;
    req->tier_override = o->base.tier_override;
    req->pinned_model = o->base.pinned_model;
    req->local_context_tokens = o->base.local_context_tokens;
    if (!o->explain) {
        struct tg_route_decision d;
        int rc = tg_router_decide(p, req, &o->targets, &d);
        if (rc != TG_OK)
            return rc;
        if (id != NULL)
            printf("%s\t", id);
        printf("%s\t%s\t%.3f\n", tg_route_tier_name(d.tier), d.reason, d.score);
        return TG_OK;
    }
    json_t *ex = tg_router_explain(p, req, &o->targets);
    if (ex == NULL)
        return TG_NOMEM;
    if (id != NULL) {
        /* the id first, so a person can grep the output */
        json_t *wrapped = json_pack("{s:s}", "id", id);
        if (wrapped == NULL || json_object_update(wrapped, ex) != 0) {
            json_decref(wrapped);
            json_decref(ex);
            return TG_NOMEM;
        }
        json_decref(ex);
        ex = wrapped;
    }
    size_t flags =
        JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6) | (o->pretty ? JSON_INDENT(2) : JSON_COMPACT);
    char *s = json_dumps(ex, flags);
    json_decref(ex);
    if (s == NULL)
        return TG_NOMEM;
    puts(s);
    free(s);
    return TG_OK;
}

static int read_all(FILE *f, struct tg_buf *b)
{
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        int rc = tg_buf_append(b, chunk, n);
        if (rc != TG_OK)
            return rc;
    }
    return ferror(f) ? TG_IO : TG_OK;
}

static int run_text(const struct cli_opts *o, const struct tg_router_policy *p, const char *text,
                    size_t len)
{
    struct tg_route_message m = {"user", text, len};
    struct tg_route_request req = tg_route_request_default();
    req.messages = &m;
    req.n_messages = 1;
    int rc = emit(o, p, &req, NULL);
    if (rc != TG_OK) {
        fprintf(stderr, "tiergate route: %s\n", tg_strerror(rc));
        return 1;
    }
    return 0;
}

static int run_jsonl(const struct cli_opts *o, const struct tg_router_policy *p)
{
    bool is_stdin = strcmp(o->jsonl, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(o->jsonl, "r");
    if (f == NULL) {
        fprintf(stderr, "tiergate route: cannot open %s: %s\n", o->jsonl, strerror(errno));
        return 2;
    }
    int status = 0;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0;
    while ((len = getline(&line, &cap, f)) != -1) {
        lineno++;
        size_t n = (size_t)len;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
            n--;
        if (n == 0)
            continue;
        if (n > CLI_ROUTE_MAX_INPUT) {
            fprintf(stderr, "%s:%ld: line longer than %u bytes\n", o->jsonl, lineno,
                    CLI_ROUTE_MAX_INPUT);
            status = 1;
            continue;
        }
        json_error_t jerr;
        json_t *body = json_loadb(line, n, 0, &jerr);
        if (body == NULL) {
            fprintf(stderr, "%s:%ld: invalid JSON: %s (column %d)\n", o->jsonl, lineno, jerr.text,
                    jerr.column);
            status = 1;
            continue;
        }
        char err[256];
        struct tg_route_parsed pr;
        int rc = tg_router_parse_json(body, TG_ROUTE_EP_CHAT, &pr, err, sizeof err);
        if (rc != TG_OK) {
            fprintf(stderr, "%s:%ld: %s\n", o->jsonl, lineno,
                    rc == TG_INVAL ? err : tg_strerror(rc));
            json_decref(body);
            status = 1;
            continue;
        }
        const char *id = json_string_value(json_object_get(body, "id"));
        rc = emit(o, p, &pr.req, id);
        if (rc != TG_OK) {
            fprintf(stderr, "%s:%ld: %s\n", o->jsonl, lineno, tg_strerror(rc));
            status = 1;
        }
        tg_router_parsed_free(&pr);
        json_decref(body);
    }
    free(line);
    if (!is_stdin)
        fclose(f);
    return status;
}

int tg_cli_route(int argc, char **argv)
{
    struct cli_opts o;
    memset(&o, 0, sizeof o);
    o.base = tg_route_request_default();
    o.policy = getenv("TIERGATE_POLICY");
    if (o.policy == NULL || o.policy[0] == '\0')
        o.policy = "policies/balanced.yaml";
    o.targets.remote_fallbacks = o.fallbacks;
    int first_prompt = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has = i + 1 < argc;
        double v;
        if (strcmp(a, "--explain") == 0) {
            o.explain = true;
        } else if (strcmp(a, "--pretty") == 0) {
            o.pretty = true;
        } else if (strcmp(a, "--policy") == 0 && has) {
            o.policy = argv[++i];
        } else if (strcmp(a, "--jsonl") == 0 && has) {
            o.jsonl = argv[++i];
        } else if (strcmp(a, "--local-target") == 0 && has) {
            o.targets.local = argv[++i];
        } else if (strcmp(a, "--remote-target") == 0 && has) {
            o.targets.remote = argv[++i];
        } else if (strcmp(a, "--fallback") == 0 && has) {
            if (o.targets.n_remote_fallbacks == CLI_ROUTE_MAX_FALLBACKS) {
                fprintf(stderr, "tiergate route: at most %d --fallback\n", CLI_ROUTE_MAX_FALLBACKS);
                return 2;
            }
            o.fallbacks[o.targets.n_remote_fallbacks++] = argv[++i];
        } else if (strcmp(a, "--privacy") == 0) {
            o.base.key_privacy = true;
        } else if (strcmp(a, "--budget-exhausted") == 0) {
            o.base.remote_budget_exhausted = true;
        } else if (strcmp(a, "--circuit-open") == 0) {
            o.base.remote_circuit_open = true;
        } else if (strcmp(a, "--engine-wait-ms") == 0 && has) {
            if (!parse_num(argv[++i], 0, 3.6e6, &v)) {
                fprintf(stderr, "tiergate route: --engine-wait-ms needs 0..3600000, got '%s'\n",
                        argv[i]);
                return 2;
            }
            o.base.engine_wait_ms = v;
        } else if (strcmp(a, "--ctx") == 0 && has) {
            if (!parse_num(argv[++i], 1, 1e7, &v)) {
                fprintf(stderr, "tiergate route: --ctx needs a token count, got '%s'\n", argv[i]);
                return 2;
            }
            o.base.local_context_tokens = (int32_t)v;
        } else if (strcmp(a, "--tier") == 0 && has) {
            const char *t = argv[++i];
            if (strcmp(t, "local") == 0) {
                o.base.tier_override = 1;
            } else if (strcmp(t, "remote") == 0) {
                o.base.tier_override = 2;
            } else {
                fprintf(stderr, "tiergate route: --tier must be local or remote, got '%s'\n", t);
                return 2;
            }
        } else if (strcmp(a, "--pinned-model") == 0 && has) {
            o.base.pinned_model = argv[++i];
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--") == 0) {
            first_prompt = i + 1;
            break;
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "tiergate route: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        } else {
            first_prompt = i;
            break;
        }
    }
    if (o.jsonl != NULL && first_prompt < argc) {
        fprintf(stderr, "tiergate route: give either --jsonl or a PROMPT, not both\n");
        return 2;
    }

    char err[512];
    struct tg_router_policy *p = NULL;
    int rc = tg_router_policy_load(o.policy, &p, err, sizeof err);
    if (rc != TG_OK) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    int status;
    if (o.jsonl != NULL) {
        status = run_jsonl(&o, p);
    } else {
        struct tg_buf b;
        tg_buf_init(&b, CLI_ROUTE_MAX_INPUT);
        rc = TG_OK;
        if (first_prompt < argc) {
            for (int i = first_prompt; i < argc && rc == TG_OK; i++) {
                if (i > first_prompt)
                    rc = tg_buf_append(&b, " ", 1);
                if (rc == TG_OK)
                    rc = tg_buf_append_str(&b, argv[i]);
            }
        } else {
            rc = read_all(stdin, &b);
        }
        if (rc != TG_OK) {
            fprintf(stderr, "tiergate route: reading the prompt: %s\n", tg_strerror(rc));
            status = 2;
        } else {
            status = run_text(&o, p, b.data != NULL ? b.data : "", b.len);
        }
        tg_buf_free(&b);
    }
    tg_router_policy_unref(p);
    return status;
}
