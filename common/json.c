#include "tg/json.h"

#include <stdio.h>

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

json_t *tg_json_error(const char *message, const char *type, const char *param, const char *code)
{
    return json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", message, "type", type,
                     "param", param, "code", code);
}

/* 10 significant digits: costs and scores read as 0.85, not 0.84999999999999998 */
char *tg_json_dumps(const json_t *v)
{
    return json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
}
