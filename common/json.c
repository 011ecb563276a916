#include "tg/json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tg/err.h"

static int type_error(const char *key, const char *what, char *err, size_t errlen)
{
    if (err != NULL && errlen > 0)
        snprintf(err, errlen, "'%s' must be %s", key, what);
    return TG_INVAL;
}

int tg_json_get_str(const json_t *obj, const char *key, const char **out, char *err, size_t errlen)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return TG_NOTFOUND;
    if (!json_is_string(v))
        return type_error(key, "a string", err, errlen);
    *out = json_string_value(v);
    return TG_OK;
}

int tg_json_get_int(const json_t *obj, const char *key, int64_t *out, char *err, size_t errlen)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return TG_NOTFOUND;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return TG_OK;
    }
    /* 3.0 is an integer to every OpenAI client */
    if (json_is_real(v) && json_real_value(v) == (double)(int64_t)json_real_value(v)) {
        *out = (int64_t)json_real_value(v);
        return TG_OK;
    }
    return type_error(key, "an integer", err, errlen);
}

int tg_json_get_num(const json_t *obj, const char *key, double *out, char *err, size_t errlen)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return TG_NOTFOUND;
    if (!json_is_number(v))
        return type_error(key, "a number", err, errlen);
    *out = json_number_value(v);
    return TG_OK;
}

int tg_json_get_bool(const json_t *obj, const char *key, bool *out, char *err, size_t errlen)
{
    const json_t *v = json_object_get(obj, key);
    if (v == NULL || json_is_null(v))
        return TG_NOTFOUND;
    if (!json_is_boolean(v))
        return type_error(key, "a boolean", err, errlen);
    *out = json_is_true(v);
    return TG_OK;
}

/* Length of the well-formed UTF-8 sequence at s (1-4), or 0 when the bytes there are not one. */
static size_t utf8_seq_len(const unsigned char *s)
{
    unsigned c = s[0];
    size_t n = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                                                    : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] > 0x9F) || (c == 0xF0 && s[1] < 0x90) ||
        (c == 0xF4 && s[1] > 0x8F))
        return 0; /* overlong, surrogate, beyond U+10FFFF */
    return n;
}

json_t *tg_json_error(const char *message, const char *type, const char *param, const char *code)
{
    json_t *e = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", message, "type", type,
                          "param", param, "code", code);
    if (e != NULL || message == NULL)
        return e;
    /* Messages quote client text, often cut with "%.40s", which can split a multi-byte
     * character; jansson refuses invalid UTF-8 and the client would get an empty body. Such
     * bytes become '?'. */
    size_t len = strlen(message);
    char *fixed = malloc(len + 1);
    if (fixed == NULL)
        return NULL;
    const unsigned char *s = (const unsigned char *)message;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq_len(s + i);
        if (n == 0) {
            fixed[o++] = '?';
            i++;
        } else {
            memcpy(fixed + o, s + i, n);
            o += n;
            i += n;
        }
    }
    fixed[o] = '\0';
    e = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", fixed, "type", type, "param",
                  param, "code", code);
    free(fixed);
    return e;
}

/* 10 significant digits: costs and scores read as 0.85, not 0.84999999999999998 */
char *tg_json_dumps(const json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
}
