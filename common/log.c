#include "tg/log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = TG_LOG_INFO;
static atomic_bool g_json = false;
static _Thread_local char t_request_id[64];

void tg_log_set_level(enum tg_log_level level) { atomic_store(&g_level, (int)level); }
void tg_log_set_json(bool json) { atomic_store(&g_json, json); }
enum tg_log_level tg_log_get_level(void) { return (enum tg_log_level)atomic_load(&g_level); }

bool tg_log_level_parse(const char *s, enum tg_log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    for (int i = 0; i < 5; i++) {
        if (strcmp(s, names[i]) == 0) {
            *out = (enum tg_log_level)i;
            return true;
        }
    }
    return false;
}

void tg_log_set_request_id(const char *id)
{
    if (id == NULL) {
        t_request_id[0] = '\0';
        return;
    }
    snprintf(t_request_id, sizeof t_request_id, "%s", id);
}

/* Append s to out as JSON string contents (escaped), bounded by cap. */
static size_t json_escape(char *out, size_t n, size_t cap, const char *s)
{
    for (; *s != '\0' && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else if (c < 0x20) {
            n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    return n;
}

void tg_logv(enum tg_log_level level, const char *fmt, va_list ap)
{
    static const char *upper[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
    static const char *lower[] = {"debug", "info", "warn", "error"};
    if ((int)level < atomic_load(&g_level) || level >= TG_LOG_OFF)
        return;

    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    size_t w = strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when + w, sizeof when - w, ".%03ldZ", ts.tv_nsec / 1000000);

    char line[4096];
    size_t n;
    if (atomic_load(&g_json)) {
        n = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\"", when, lower[level]);
        if (t_request_id[0] != '\0') {
            n += (size_t)snprintf(line + n, sizeof line - n, ",\"request_id\":\"");
            n = json_escape(line, n, sizeof line, t_request_id);
            n += (size_t)snprintf(line + n, sizeof line - n, "\"");
        }
        n += (size_t)snprintf(line + n, sizeof line - n, ",\"msg\":\"");
        n = json_escape(line, n, sizeof line - 3, msg);
        line[n++] = '"';
        line[n++] = '}';
    } else if (t_request_id[0] != '\0') {
        n = (size_t)snprintf(line, sizeof line - 1, "%s %s [%s] %s", when, upper[level], t_request_id, msg);
    } else {
        n = (size_t)snprintf(line, sizeof line - 1, "%s %s %s", when, upper[level], msg);
    }
    if (n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    ssize_t rc = write(STDERR_FILENO, line, n);
    (void)rc;
}

void tg_log(enum tg_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    tg_logv(level, fmt, ap);
    va_end(ap);
}
