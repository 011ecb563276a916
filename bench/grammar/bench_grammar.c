/* bench-grammar: how long tg_grammar takes on the extract path, per call.
 *   compile   a 20-property nested schema (json_t already parsed)
 *   to_gbnf   GBNF text for it (default opts)
 *   validate  a ~2 KB instance (json_t already parsed)
 *   validate_text  the same instance from text (jansson parse + validate)
 * Each figure is the median of 7 rounds of N calls, in microseconds per call, as wall time and
 * as this thread's CPU time (the CPU figure is the one to compare on a shared, loaded machine).
 * usage: bench-grammar [N]   (default 2000) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tg/err.h"
#include "tg/schema.h"

static const char *schema_text =
    "{\"type\":\"object\",\"additionalProperties\":false,"
    "\"required\":[\"id\",\"customer\",\"items\",\"status\"],\"properties\":{"
    "\"id\":{\"type\":\"integer\"},"
    "\"status\":{\"enum\":[\"open\",\"paid\",\"shipped\",\"void\"]},"
    "\"note\":{\"type\":[\"string\",\"null\"]},"
    "\"total\":{\"type\":\"number\"},"
    "\"gift\":{\"type\":\"boolean\"},\"currency\":{\"enum\":[\"EUR\",\"USD\"]},"
    "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}},"
    "\"customer\":{\"type\":\"object\",\"required\":[\"name\"],\"properties\":{"
    "\"name\":{\"type\":\"string\"},\"email\":{\"type\":[\"string\",\"null\"]},"
    "\"address\":{\"type\":\"object\",\"properties\":{\"street\":{\"type\":\"string\"},"
    "\"city\":{\"type\":\"string\"},\"zip\":{\"type\":\"string\"},"
    "\"country\":{\"enum\":[\"DE\",\"FR\",\"US\",\"JP\"]}},\"required\":[\"city\"]}}},"
    "\"items\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"additionalProperties\":false,"
    "\"required\":[\"sku\",\"qty\",\"price\"],\"properties\":{\"sku\":{\"type\":\"string\"},"
    "\"qty\":{\"type\":\"integer\"},\"price\":{\"type\":\"number\"},"
    "\"discount\":{\"type\":[\"number\",\"null\"]}}}}}}";

static double now_us(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int count_props(const json_t *s)
{
    int n = 0;
    const json_t *p = json_object_get(s, "properties");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)p, k, v)
    {
        n++;
        n += count_props(v);
        if (json_object_get(v, "items") != NULL)
            n += count_props(json_object_get(v, "items"));
    }
    return n;
}

enum op { OP_COMPILE, OP_GBNF, OP_VALIDATE, OP_VALIDATE_TEXT };

int main(int argc, char **argv)
{
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 2000;
    if (n <= 0)
        n = 2000;
    json_error_t je;
    json_t *sj = json_loads(schema_text, 0, &je);
    struct tg_schema *s = NULL;
    char err[256];
    if (sj == NULL || tg_schema_compile(sj, &s, err, sizeof err) != TG_OK) {
        fprintf(stderr, "schema: %s\n", sj == NULL ? je.text : err);
        return 1;
    }
    /* ~2 KB instance: the fixed part plus as many items as fit. */
    json_t *inst = json_pack("{s:i,s:s,s:n,s:f,s:b,s:[s,s],s:{s:s,s:s,s:{s:s,s:s,s:s,s:s}},s:[]}",
                             "id", 4711, "status", "paid", "note", "total", 1234.5, "gift", 0,
                             "tags", "priority", "b2b", "customer", "name", "Ada Lovelace", "email",
                             "ada@example.com", "address", "street", "12 Analytical Way", "city",
                             "London", "zip", "NW1", "country", "FR", "items");
    char *text = NULL;
    for (int i = 0;; i++) {
        json_t *it = json_pack("{s:s,s:i,s:f,s:n}", "sku", "SKU-000000-ABCDEFGH", "qty", i + 1,
                               "price", 19.99 + i, "discount");
        json_array_append_new(json_object_get(inst, "items"), it);
        free(text);
        text = json_dumps(inst, JSON_COMPACT);
        if (strlen(text) >= 2000)
            break;
    }
    if (!tg_schema_validate(s, inst, err, sizeof err)) {
        fprintf(stderr, "instance invalid: %s\n", err);
        return 1;
    }
    char *g = tg_schema_to_gbnf(s);
    printf("schema: %d properties, %zu bytes of GBNF; instance: %zu bytes; %ld calls x 7 rounds\n",
           count_props(sj), strlen(g), strlen(text), n);
    free(g);

    static const char *const names[] = {"compile", "to_gbnf", "validate", "validate_text"};
    for (int op = OP_COMPILE; op <= OP_VALIDATE_TEXT; op++) {
        double rounds[7], cpu[7];
        for (int r = 0; r < 7; r++) {
            double t0 = now_us(CLOCK_MONOTONIC), c0 = now_us(CLOCK_THREAD_CPUTIME_ID);
            for (long i = 0; i < n; i++) {
                if (op == OP_COMPILE) {
                    struct tg_schema *x = NULL;
                    if (tg_schema_compile(sj, &x, err, sizeof err) != TG_OK)
                        return 1;
                    tg_schema_free(x);
                } else if (op == OP_GBNF) {
                    char *x = tg_schema_to_gbnf(s);
                    if (x == NULL)
                        return 1;
                    free(x);
                } else if (op == OP_VALIDATE) {
                    if (!tg_schema_validate(s, inst, err, sizeof err))
                        return 1;
                } else {
                    if (!tg_schema_validate_text(s, text, strlen(text), err, sizeof err))
                        return 1;
                }
            }
            rounds[r] = (now_us(CLOCK_MONOTONIC) - t0) / (double)n;
            cpu[r] = (now_us(CLOCK_THREAD_CPUTIME_ID) - c0) / (double)n;
        }
        qsort(rounds, 7, sizeof rounds[0], cmp_d);
        qsort(cpu, 7, sizeof cpu[0], cmp_d);
        printf(
            "%-14s CPU median %7.2f us/call (min %.2f)   wall median %7.2f (min %.2f, max %.2f)\n",
            names[op], cpu[3], cpu[0], rounds[3], rounds[0], rounds[6]);
    }
    free(text);
    json_decref(inst);
    json_decref(sj);
    tg_schema_free(s);
    return 0;
}
