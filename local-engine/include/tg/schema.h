/* JSON Schema subset: compile, validate, and turn into a llama.cpp GBNF grammar.
 *
 * Used by the local engine (extract: schema -> grammar -> generated JSON -> validate) and by the
 * gateway (remote structured-output results are validated with the same code). No llama.cpp
 * dependency: this is pure C over jansson.
 *
 * Supported subset (anything else is TG_SCHEMA with the JSON-pointer path of the keyword):
 *   type        "object" | "array" | "string" | "number" | "integer" | "boolean" | "null",
 *               or a non-empty list of those without duplicates (e.g. ["string","null"])
 *   properties  object of sub-schemas (at most TG_SCHEMA_MAX_PROPERTIES)
 *   required    list of distinct strings, each naming a key of `properties`
 *   additionalProperties  false only (true / a schema are rejected as unsupported)
 *   items       a single sub-schema (the tuple form is rejected)
 *   enum        non-empty list of distinct JSON values (at most TG_SCHEMA_MAX_ENUM)
 *   const       one JSON value (treated as a one-element enum)
 *   annotations ignored: description, title, $schema, $comment, default, examples
 * Everything else (oneOf, anyOf, allOf, not, $ref, $defs, pattern, format, minLength, maxLength,
 * minimum, maximum, minItems, uniqueItems, patternProperties, boolean schemas, ...) is rejected:
 *   "schema path #/properties/items/items: unsupported keyword 'oneOf'"
 *
 * Validation follows JSON Schema (draft 6/7) for these keywords: `properties` only constrains
 * objects, an absent `type` admits every type, 3.0 is an integer, 1 equals 1.0 in enum/const,
 * object key order does not matter in enum/const comparisons.
 *
 * Limits (compile fails with TG_SCHEMA naming the path when exceeded): nesting depth
 * TG_SCHEMA_MAX_DEPTH, properties per object TG_SCHEMA_MAX_PROPERTIES, enum values
 * TG_SCHEMA_MAX_ENUM, sub-schemas in total TG_SCHEMA_MAX_NODES, property name length
 * TG_SCHEMA_MAX_KEY_BYTES, one enum/const value serialised TG_SCHEMA_MAX_LITERAL_BYTES.
 * Validation recursion is bounded by the schema depth (never by the instance).
 *
 * Threads: a compiled schema is immutable; any number of threads may validate against it and
 * generate grammars from it at once. It does not reference the json_t it was compiled from.
 */
#ifndef TG_SCHEMA_H
#define TG_SCHEMA_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define TG_SCHEMA_MAX_DEPTH         32
#define TG_SCHEMA_MAX_PROPERTIES    256
#define TG_SCHEMA_MAX_ENUM          256
#define TG_SCHEMA_MAX_NODES         4096
#define TG_SCHEMA_MAX_KEY_BYTES     256
#define TG_SCHEMA_MAX_LITERAL_BYTES 4096

struct tg_schema;

/* Compile `schema` (a JSON object). On success returns TG_OK and writes *out (free with
 * tg_schema_free). On failure *out is untouched and err (errlen bytes, may be NULL) holds
 * "schema path #/json/pointer: what is wrong"; returns TG_SCHEMA for an invalid or unsupported
 * schema, TG_INVAL for NULL arguments, TG_NOMEM. */
int tg_schema_compile(const json_t *schema, struct tg_schema **out, char *err, size_t errlen);

/* Same, from JSON text (len bytes, need not be NUL-terminated). Unparseable text is TG_SCHEMA
 * with "schema: invalid JSON at line L column C: ...". */
int tg_schema_compile_text(const char *text, size_t len, struct tg_schema **out, char *err,
                           size_t errlen);

void tg_schema_free(struct tg_schema *s); /* NULL is fine */

/* true when `instance` is valid. When invalid, err holds the instance path and the reason,
 * e.g. "$.items[2].price: expected number" or "$: missing required property 'name'";
 * keys that are not identifiers are written $["a b"]. Never allocates more than O(depth). */
bool tg_schema_validate(const struct tg_schema *s, const json_t *instance, char *err,
                        size_t errlen);

/* Parse generated text (len bytes) as one JSON value and validate it. Text that is not JSON
 * (or not valid UTF-8, or has trailing bytes) is invalid with "invalid JSON at line L column C:
 * ...". Duplicate object keys are accepted, the last one wins (jansson's default); \u0000
 * inside strings is accepted (JSON allows it). */
bool tg_schema_validate_text(const struct tg_schema *s, const char *text, size_t len, char *err,
                             size_t errlen);

/* Bounds written into generated grammars so that any model (even random weights) terminates.
 * Every text a grammar admits is valid against the schema; the grammar admits a subset. */
struct tg_gbnf_opts {
    /* characters (code points or escapes) per JSON string; 0 = only "" */
    unsigned max_string_chars;
    /* items per array; 0 = only [] */
    unsigned max_array_items;
    /* whitespace characters [ \t\n] allowed at each break point; 0 = none */
    unsigned max_ws;
    /* digits before and after the decimal point, each side; >= 1 */
    unsigned max_number_digits;
    /* nesting of free-form JSON (schema without type, object without properties); 0 = scalars
     * and {} only */
    unsigned any_depth;
};

/* Defaults: strings <= 256 chars, arrays <= 16 items, 1 whitespace char, 15 digits, depth 2.
 * tg_schema_to_gbnf_opts clamps to strings <= 1000, items <= 256, whitespace <= 16, digits
 * 1..18 (integers stay inside int64), depth <= 8 (llama.cpp refuses a repetition that expands
 * to more than 2000 rules). A random-weight model fills strings and arrays to the bound almost
 * every time: tests on generated models want small bounds (e.g. 12 chars, 3 items). */
struct tg_gbnf_opts tg_gbnf_default_opts(void);

/* llama.cpp GBNF text (start rule `root`) admitting only JSON valid against `s`, malloc'd
 * (caller frees), NULL only when s is NULL or on allocation failure; opts NULL = defaults.
 * Shape of what it admits:
 *   - objects: properties in schema order, required ones always, optional ones may be left out,
 *     no other keys (additionalProperties:false semantics even when the schema allows more);
 *     an object schema without properties admits free-form objects of bounded depth;
 *   - enum/const: exactly the listed values, as compact JSON (jansson's serialisation);
 *   - strings: no raw control characters; escapes \" \\ \/ \b \f \n \r \t (no \u);
 *   - integers: -?(0|[1-9][0-9]*) without fraction/exponent; numbers add .digits and e[+-]dd;
 *   - a schema without type (and without properties/items/enum) admits any JSON value.
 * The model's tokens may still form invalid UTF-8 inside a string (overlong byte sequences
 * decode to allowed code points); validate the final text with tg_schema_validate_text. */
char *tg_schema_to_gbnf(const struct tg_schema *s);
char *tg_schema_to_gbnf_opts(const struct tg_schema *s, const struct tg_gbnf_opts *opts);

#endif
