/* /metrics, /dashboard and /v1/usage over evhttp (see metrics_http.h). */
#include "metrics_http.h"

#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "metrics.h"
#include "tg/buf.h"
#include "tg/err.h"
#include "tg/json.h"

#define MAX_EXPOSITION_BYTES (64u << 20)

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 405: return "Method Not Allowed";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

static void send_body(struct evhttp_request *req, int status, const char *ctype, const void *body,
                      size_t len, bool by_reference)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", ctype);
    evhttp_add_header(h, "Cache-Control", "no-store");
    struct evbuffer *out = evbuffer_new();
    if (out != NULL && len > 0 &&
        (by_reference ? evbuffer_add_reference(out, body, len, NULL, NULL)
                      : evbuffer_add(out, body, len)) != 0) {
        evbuffer_free(out);
        out = NULL;
        status = 500;
    }
    evhttp_send_reply(req, status, reason_phrase(status), out);
    if (out != NULL)
        evbuffer_free(out);
}

static void send_error(struct evhttp_request *req, int status, const char *msg, const char *code)
{
    json_t *e = tg_json_error(msg, status >= 500 ? "server_error" : "invalid_request_error", NULL,
                              code);
    char *text = e != NULL ? tg_json_dumps(e) : NULL;
    send_body(req, status, "application/json", text != NULL ? text : "", text != NULL ? strlen(text) : 0,
              false);
    free(text);
    json_decref(e);
}

static void usage_done(int status, const char *ctype, const char *body, size_t len, void *user)
{
    send_body(user, status, ctype, body, len, false);
}

bool tg_metrics_http_handle(struct evhttp_request *req, const char *path,
                            const struct tg_config *cfg, struct tg_usage *usage)
{
    if (path == NULL)
        return false;
    enum { P_METRICS, P_DASHBOARD, P_USAGE } which;
    if (strcmp(path, "/metrics") == 0)
        which = P_METRICS;
    else if (strcmp(path, "/dashboard") == 0 || strcmp(path, "/dashboard/") == 0)
        which = P_DASHBOARD;
    else if (strcmp(path, "/v1/usage") == 0)
        which = P_USAGE;
    else
        return false;

    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD");
        send_error(req, 405, "only GET is supported here", "method_not_allowed");
        return true;
    }
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!tg_metrics_admin_allowed(cfg, auth, query)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
        send_error(req, 401, "this page needs the admin key: 'Authorization: Bearer <key>' or ?key=<key>",
                   "invalid_api_key");
        return true;
    }
    switch (which) {
    case P_METRICS: {
        struct tg_buf b;
        tg_buf_init(&b, MAX_EXPOSITION_BYTES);
        if (tg_metrics_render(&b) != TG_OK)
            send_error(req, 500, "the exposition could not be rendered", "internal");
        else
            send_body(req, 200, TG_METRICS_CONTENT_TYPE, b.data, b.len, false);
        tg_buf_free(&b);
        break;
    }
    case P_DASHBOARD: {
        size_t len = 0;
        const char *html = tg_dashboard_html(&len);
        send_body(req, 200, "text/html; charset=utf-8", html, len, true);
        break;
    }
    case P_USAGE:
        if (usage == NULL)
            usage = tg_usage_bound();
        if (usage == NULL)
            send_error(req, 503, "the usage ledger needs Redis (redis.enabled)", "redis_disabled");
        else if (tg_usage_handle(usage, query, usage_done, req) != TG_OK)
            send_error(req, 500, "out of memory", "internal");
        break;
    }
    return true;
}
