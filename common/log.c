#include "tg/log.h"

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = TG_LOG_INFO;
static atomic_bool g_json = false;
static _Thread_local char t_request_id[64];

/* Registered secrets. Read on every log line, written at config (re)load: a reader-writer lock,
 * and an atomic count so the common case (nothing registered) takes no lock at all. */
#define MAX_SECRETS 64
static pthread_rwlock_t g_secrets_lock = PTHREAD_RWLOCK_INITIALIZER;
static char *g_secrets[MAX_SECRETS];
static atomic_int g_n_secrets;

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

bool tg_log_add_secret(const char *s)
{
    if (s == NULL || strlen(s) < TG_LOG_SECRET_MIN)
        return false;
    bool ok = true;
    pthread_rwlock_wrlock(&g_secrets_lock);
    int n = atomic_load(&g_n_secrets);
    for (int i = 0; i < n; i++)
        if (strcmp(g_secrets[i], s) == 0)
            goto out; /* a reload registers the same keys again */
    char *copy = strdup(s);
    ok = copy != NULL;
    if (ok) {
        if (n == MAX_SECRETS) {
            /* Full (many key rotations): forget the oldest; the current config's secrets were
             * registered last, so they stay. */
            for (volatile char *p = g_secrets[0]; *p != '\0'; p++)
                *p = '\0';
            free(g_secrets[0]);
            memmove(g_secrets, g_secrets + 1, (MAX_SECRETS - 1) * sizeof g_secrets[0]);
            n--;
        }
        g_secrets[n] = copy;
        atomic_store(&g_n_secrets, n + 1);
    }
out:
    pthread_rwlock_unlock(&g_secrets_lock);
    return ok;
}

void tg_log_clear_secrets(void)
{
    pthread_rwlock_wrlock(&g_secrets_lock);
    int n = atomic_load(&g_n_secrets);
    for (int i = 0; i < n; i++) {
        /* volatile so the wipe of memory about to be freed is not optimised away */
        for (volatile char *p = g_secrets[i]; *p != '\0'; p++)
            *p = '\0';
        free(g_secrets[i]);
        g_secrets[i] = NULL;
    }
    atomic_store(&g_n_secrets, 0);
    pthread_rwlock_unlock(&g_secrets_lock);
}

/* Replace s[at, at+len) by "****" (len >= 4 keeps the string from growing; shorter runs are
 * overwritten with as many '*'). */
static void mask_at(char *s, size_t at, size_t len)
{
    size_t keep = len < 4 ? len : 4;
    memset(s + at, '*', keep);
    if (len > keep)
        memmove(s + at + keep, s + at + len, strlen(s + at + len) + 1);
}

static const char *find_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    int first = tolower((unsigned char)needle[0]);
    for (; *hay != '\0'; hay++)
        if (tolower((unsigned char)*hay) == first && strncasecmp(hay, needle, n) == 0)
            return hay;
    return NULL;
}

static bool is_token_end(char c)
{
    return c == '\0' || isspace((unsigned char)c) || strchr("\"',;&})\\", c) != NULL;
}

/* Credentials that follow a marker: "Bearer <tok>", "x-api-key: <tok>", "password=<tok>". */
static bool redact_markers(char *s)
{
    static const char *markers[] = {"bearer ", "api-key:", "api-key=", "api_key:", "api_key=",
                                    "password:", "password="};
    bool any = false;
    for (size_t m = 0; m < sizeof markers / sizeof markers[0]; m++) {
        const char *p = s;
        while ((p = find_nocase(p, markers[m])) != NULL) {
            size_t at = (size_t)(p - s) + strlen(markers[m]);
            while (s[at] == ' ' || s[at] == '"')
                at++;
            size_t len = 0;
            while (!is_token_end(s[at + len]))
                len++;
            if (len > 0 && strspn(s + at, "*") < len) {
                mask_at(s, at, len);
                any = true;
            }
            p = s + at;
        }
    }
    return any;
}

/* Credentials recognised by their shape, wherever they appear (a client that sends its key as a
 * model name, in a prompt field, in a URL): the prefixes providers issue keys with, followed by
 * at least KEY_SHAPE_MIN key characters. OpenAI "sk-" / "sk-proj-", Anthropic "sk-ant-",
 * OpenRouter "sk-or-", Groq "gsk_", xAI "xai-", Google "AIza". */
#define KEY_SHAPE_MIN 16
static bool is_key_char(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '_';
}

static bool redact_key_shapes(char *s)
{
    static const char *prefixes[] = {"sk-", "gsk_", "xai-", "AIza"};
    bool any = false;
    for (size_t m = 0; m < sizeof prefixes / sizeof prefixes[0]; m++) {
        size_t pl = strlen(prefixes[m]);
        char *p = s;
        while ((p = strstr(p, prefixes[m])) != NULL) {
            if (p > s && is_key_char(p[-1])) { /* inside a longer word: "task-…", "disk-…" */
                p += pl;
                continue;
            }
            size_t len = pl;
            while (is_key_char(p[len]))
                len++;
            if (len - pl >= KEY_SHAPE_MIN) {
                mask_at(s, (size_t)(p - s), len);
                any = true;
                p += 4;
            } else {
                p += len;
            }
        }
    }
    return any;
}

/* URL user info: "scheme://user:password@host" → "scheme://user:****@host". */
static bool redact_userinfo(char *s)
{
    bool any = false;
    const char *p = s;
    while ((p = strstr(p, "://")) != NULL) {
        size_t start = (size_t)(p - s) + 3;
        size_t end = start;
        while (!is_token_end(s[end]) && s[end] != '/' && s[end] != '@')
            end++;
        p = s + end;
        if (s[end] != '@')
            continue;
        const char *colon = memchr(s + start, ':', end - start);
        if (colon == NULL)
            continue;
        size_t at = (size_t)(colon - s) + 1;
        if (end > at && strspn(s + at, "*") < end - at) {
            mask_at(s, at, end - at);
            any = true;
            p = s + at;
        }
    }
    return any;
}

/* s was cut at its end (a bounded buffer): a secret that starts in the last bytes is masked
 * too, or its first half would be written. */
static bool redact_cut_tail(char *s)
{
    bool any = false;
    size_t sl = strlen(s);
    pthread_rwlock_rdlock(&g_secrets_lock);
    int n = atomic_load(&g_n_secrets);
    for (int i = 0; i < n; i++) {
        size_t len = strlen(g_secrets[i]);
        for (size_t k = len - 1 < sl ? len - 1 : sl; k >= 3; k--) {
            if (memcmp(s + sl - k, g_secrets[i], k) == 0) {
                mask_at(s, sl - k, k);
                sl = strlen(s);
                any = true;
                break;
            }
        }
    }
    pthread_rwlock_unlock(&g_secrets_lock);
    return any;
}

bool tg_log_redact(char *s)
{
    bool any = false;
    if (atomic_load(&g_n_secrets) > 0) {
        pthread_rwlock_rdlock(&g_secrets_lock);
        int n = atomic_load(&g_n_secrets);
        for (int i = 0; i < n; i++) {
            size_t len = strlen(g_secrets[i]);
            char *p = s;
            while ((p = strstr(p, g_secrets[i])) != NULL) {
                mask_at(s, (size_t)(p - s), len);
                p += 4;
                any = true;
            }
        }
        pthread_rwlock_unlock(&g_secrets_lock);
    }
    any |= redact_markers(s);
    any |= redact_userinfo(s);
    any |= redact_key_shapes(s);
    return any;
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
    int full = vsnprintf(msg, sizeof msg, fmt, ap);
    tg_log_redact(msg);
    if (full >= (int)sizeof msg)
        redact_cut_tail(msg);
    char rid[sizeof t_request_id];
    memcpy(rid, t_request_id, sizeof rid);
    tg_log_redact(rid);

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
        if (rid[0] != '\0') {
            n += (size_t)snprintf(line + n, sizeof line - n, ",\"request_id\":\"");
            n = json_escape(line, n, sizeof line, rid);
            n += (size_t)snprintf(line + n, sizeof line - n, "\"");
        }
        n += (size_t)snprintf(line + n, sizeof line - n, ",\"msg\":\"");
        n = json_escape(line, n, sizeof line - 3, msg);
        line[n++] = '"';
        line[n++] = '}';
    } else if (rid[0] != '\0') {
        n = (size_t)snprintf(line, sizeof line - 1, "%s %s [%s] %s", when, upper[level], rid, msg);
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
