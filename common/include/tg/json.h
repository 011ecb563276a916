/* JSON helpers over jansson: typed field access with error messages that name the field,
 * and the OpenAI-shaped error body every 4xx/5xx carries.
 *
 * Getters return TG_OK and write *out only on success; on a missing optional field they return
 * TG_NOTFOUND and leave *out alone; on a wrong type they return TG_INVAL and, when err is not
 * NULL, write "'field' must be a string" style text into err (errlen bytes).
 * Strings returned point into the json_t and live as long as it does.
 */
#ifndef TG_JSON_H
#define TG_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int tg_json_get_str(const json_t *obj, const char *key, const char **out, char *err, size_t errlen);
int tg_json_get_int(const json_t *obj, const char *key, int64_t *out, char *err, size_t errlen);
int tg_json_get_num(const json_t *obj, const char *key, double *out, char *err, size_t errlen);
int tg_json_get_bool(const json_t *obj, const char *key, bool *out, char *err, size_t errlen);

/* OpenAI-shaped error body: {"error":{"message","type","param","code"}}. param and code may be
 * NULL (written as null). Returns a new reference (NULL only on allocation failure). */
json_t *tg_json_error(const char *message, const char *type, const char *param, const char *code);

/* Serialise compactly (no spaces, keys in insertion order) into a malloc'd string. */
char *tg_json_dumps(const json_t *v);

#endif
