/* Fuzz target: request JSON -> canonical request. A client body goes through the pipeline's
 * parse and validation for one endpoint (gateway/pipeline.c: messages, content parts, sampling,
 * stop, response_format / JSON schema, responses API input items, classify labels, extract
 * schema, embeddings inputs), then on through routing to the remote tier of the in-process
 * gateway (fuzz_gw.c), through tg_pipeline_execute, the entry the async jobs use.
 *
 * Input: byte 0 picks the endpoint, the rest is the body. Every run must end in exactly one
 * result, within 10 s; an error result must be an OpenAI-shaped {"error": {"message": ...}}. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "fuzz_gw.h"
#include "pipeline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const k_endpoints[] = {
    "/v1/chat/completions", "/v1/completions", "/v1/responses",
    "/v1/embeddings",       "/v1/classify",    "/v1/extract",
};

struct result {
    bool done;
    int calls;
};

static void on_result(int status, const char *content_type, const char *body, size_t len,
                      void *user)
{
    struct result *r = user;
    r->calls++;
    r->done = true;
    if (status < 400)
        return;
    json_t *j = json_loadb(body, len, 0, NULL);
    json_t *e = json_object_get(j, "error");
    if (!json_is_object(e) || !json_is_string(json_object_get(e, "message"))) {
        fprintf(stderr, "fuzz_request: status %d with a body that is not an OpenAI error: %.*s\n",
                status, (int)(len < 300 ? len : 300), body);
        abort();
    }
    json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct tg_gateway *gw = fz_gateway();
    if (gw == NULL)
        abort();
    const char *ep = k_endpoints[data[0] % (sizeof k_endpoints / sizeof k_endpoints[0])];
    struct result r = {0};
    if (tg_pipeline_execute(&gw->workers[0], ep, (const char *)data + 1, size - 1, NULL, on_result,
                            &r) != 0)
        abort(); /* every endpoint above is known */
    if (!fz_run_until(gw, &r.done, 10000)) {
        fprintf(stderr, "fuzz_request: no result within 10 s\n");
        abort();
    }
    /* A second call would show up on the next loop turns. */
    struct event_base *base = gw->workers[0].base;
    event_base_loop(base, EVLOOP_NONBLOCK);
    if (r.calls != 1)
        abort();
    return 0;
}
