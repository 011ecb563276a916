/* libFuzzer target: untrusted request text through the router (features, decision, explain,
 * escalation check) and untrusted policy YAML through the loader.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Icommon/include \
 *     -Irouter/include tests/router/fuzz_router.c router/\*.c common/\*.c -ljansson -lyaml -lm
 *   ./a.out -max_len=4096 tests/router/corpus
 *
 * The first input byte picks the mode: even = request text (split into messages at 0x1E),
 * odd = a policy document. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tg/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    char err[512];
    if (data[0] & 1) {
        struct tg_router_policy *p = NULL;
        if (tg_router_policy_load_string("fuzz.yaml", (const char *)data + 1, size - 1, &p, err,
                                         sizeof err) == 0)
            tg_router_policy_unref(p);
        return 0;
    }
    static struct tg_router_policy *policy;
    if (policy == NULL && tg_router_policy_default(&policy) != 0)
        abort();
    struct tg_route_message msgs[8];
    size_t n = 0, start = 1;
    static const char *const ROLES[] = {"system", "user", "assistant", NULL};
    for (size_t i = 1; i <= size && n < 8; i++) {
        if (i == size || data[i] == 0x1E) {
            msgs[n].role = ROLES[n % 4];
            msgs[n].content = (const char *)data + start;
            msgs[n].content_len = i - start;
            n++;
            start = i + 1;
        }
    }
    struct tg_route_request req = tg_route_request_default();
    req.messages = msgs;
    req.n_messages = n;
    req.endpoint = (enum tg_route_endpoint)(data[0] >> 1) % 6;
    req.tier_override = (data[0] >> 4) % 3;
    struct tg_route_decision d;
    if (tg_router_decide(policy, &req, NULL, &d) == 0 && (d.score < 0 || d.score > 1))
        abort();
    json_t *ex = tg_router_explain(policy, &req, NULL);
    json_decref(ex);
    struct tg_route_local_result r = {req.endpoint, (const char *)data, size, -1, 0.5, "stop"};
    struct tg_route_escalation e;
    tg_router_check_local_result(policy, &d, &r, &e);
    /* the same bytes as a JSON body */
    json_t *body = json_loadb((const char *)data + 1, size - 1, 0, NULL);
    if (body != NULL) {
        struct tg_route_parsed pr;
        if (tg_router_parse_json(body, TG_ROUTE_EP_CHAT, &pr, err, sizeof err) == 0) {
            tg_router_decide(policy, &pr.req, NULL, &d);
            tg_router_parsed_free(&pr);
        }
        json_decref(body);
    }
    return 0;
}
