#include "tg/model_ref.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define OLLAMA_PREFIX      "ollama:"
#define OLLAMA_HOST        "registry.ollama.ai"
#define OLLAMA_NS          "library"
#define OLLAMA_MODEL_MEDIA "application/vnd.ollama.image.model"
/* A manifest is a few hundred bytes; anything much larger is not one. */
#define MANIFEST_MAX_BYTES (1 << 20)

bool tg_model_ref_is_ollama(const char *ref)
{
    return ref != NULL && strncmp(ref, OLLAMA_PREFIX, strlen(OLLAMA_PREFIX)) == 0;
}

/* One path component of a name: letters, digits, '.', '_', '-'; not "." or ".." (the name
 * becomes a path, so it must not climb out of the store). */
static bool valid_part(const char *s, size_t len)
{
    if (len == 0 || len > 128)
        return false;
    if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return false;
    }
    return true;
}

/* Split "[host/][ns/]model[:tag]" into the manifest's relative path host/ns/model/tag. */
static int manifest_rel(const char *name, char *out, size_t n, char *err, size_t errlen)
{
    const char *parts[3];
    size_t lens[3];
    int np = 0;
    const char *colon = strrchr(name, ':');
    const char *slash = strrchr(name, '/');
    /* a ':' before the last '/' would be a host port, which the store does not name */
    if (colon != NULL && slash != NULL && colon < slash)
        colon = NULL;
    const char *end = colon != NULL ? colon : name + strlen(name);
    const char *tag = colon != NULL ? colon + 1 : "latest";
    for (const char *p = name; p < end;) {
        const char *q = memchr(p, '/', (size_t)(end - p));
        size_t len = q != NULL ? (size_t)(q - p) : (size_t)(end - p);
        if (np == 3 || !valid_part(p, len)) {
            snprintf(err, errlen,
                     "'%s%s' is not an Ollama model name ([host/][namespace/]model[:tag])",
                     OLLAMA_PREFIX, name);
            return -1;
        }
        parts[np] = p;
        lens[np] = len;
        np++;
        if (q == NULL)
            break;
        p = q + 1;
        if (p == end) { /* trailing '/' */
            np = 0;
            break;
        }
    }
    if (np == 0 || !valid_part(tag, strlen(tag))) {
        snprintf(err, errlen, "'%s%s' is not an Ollama model name ([host/][namespace/]model[:tag])",
                 OLLAMA_PREFIX, name);
        return -1;
    }
    int w;
    if (np == 1)
        w = snprintf(out, n, "%s/%s/%.*s/%s", OLLAMA_HOST, OLLAMA_NS, (int)lens[0], parts[0], tag);
    else if (np == 2)
        w = snprintf(out, n, "%s/%.*s/%.*s/%s", OLLAMA_HOST, (int)lens[0], parts[0], (int)lens[1],
                     parts[1], tag);
    else
        w = snprintf(out, n, "%.*s/%.*s/%.*s/%s", (int)lens[0], parts[0], (int)lens[1], parts[1],
                     (int)lens[2], parts[2], tag);
    if (w < 0 || (size_t)w >= n) {
        snprintf(err, errlen, "Ollama model name '%s' is too long", name);
        return -1;
    }
    return 0;
}

static int store_dir(char *out, size_t n, char *err, size_t errlen)
{
    const char *env = getenv("OLLAMA_MODELS");
    int w;
    if (env != NULL && env[0] != '\0') {
        w = snprintf(out, n, "%s", env);
    } else {
        const char *home = getenv("HOME");
        if (home == NULL || home[0] == '\0') {
            snprintf(err, errlen,
                     "cannot find the Ollama store: neither OLLAMA_MODELS nor HOME is set");
            return -1;
        }
        w = snprintf(out, n, "%s/.ollama/models", home);
    }
    if (w < 0 || (size_t)w >= n) {
        snprintf(err, errlen, "Ollama store path is too long");
        return -1;
    }
    return 0;
}

static bool is_hex64(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return true;
}

int tg_model_ref_resolve(const char *ref, char *path_out, size_t n, char *err, size_t errlen)
{
    if (ref == NULL || path_out == NULL || n == 0) {
        snprintf(err, errlen, "no model reference given");
        return -1;
    }
    if (!tg_model_ref_is_ollama(ref)) {
        if (strlen(ref) >= n) {
            snprintf(err, errlen, "model path is too long");
            return -1;
        }
        memcpy(path_out, ref, strlen(ref) + 1);
        return 0;
    }
    char rel[1024], store[2048], manifest[4096], blob[4096];
    if (manifest_rel(ref + strlen(OLLAMA_PREFIX), rel, sizeof rel, err, errlen) != 0 ||
        store_dir(store, sizeof store, err, errlen) != 0)
        return -1;
    int w = snprintf(manifest, sizeof manifest, "%s/manifests/%s", store, rel);
    if (w < 0 || (size_t)w >= sizeof manifest) {
        snprintf(err, errlen, "Ollama manifest path is too long");
        return -1;
    }
    struct stat st;
    if (stat(manifest, &st) == -1 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen,
                 "Ollama model '%s' not found: no manifest at %s (run `ollama pull %s`)",
                 ref + strlen(OLLAMA_PREFIX), manifest, ref + strlen(OLLAMA_PREFIX));
        return -1;
    }
    if (st.st_size > MANIFEST_MAX_BYTES) {
        snprintf(err, errlen, "Ollama manifest %s is too large to be a manifest", manifest);
        return -1;
    }
    json_error_t jerr;
    json_t *doc = json_load_file(manifest, 0, &jerr);
    if (doc == NULL) {
        snprintf(err, errlen, "Ollama manifest %s is not JSON: %s (line %d)", manifest, jerr.text,
                 jerr.line);
        return -1;
    }
    const char *digest = NULL;
    json_t *layers = json_object_get(doc, "layers");
    size_t i;
    json_t *layer;
    json_array_foreach(layers, i, layer)
    {
        const char *mt = json_string_value(json_object_get(layer, "mediaType"));
        if (mt != NULL && strcmp(mt, OLLAMA_MODEL_MEDIA) == 0) {
            digest = json_string_value(json_object_get(layer, "digest"));
            break;
        }
    }
    if (digest == NULL || strncmp(digest, "sha256:", 7) != 0 || !is_hex64(digest + 7)) {
        snprintf(err, errlen,
                 "Ollama manifest %s has no layer of mediaType %s with a sha256 digest", manifest,
                 OLLAMA_MODEL_MEDIA);
        json_decref(doc);
        return -1;
    }
    w = snprintf(blob, sizeof blob, "%s/blobs/sha256-%s", store, digest + 7);
    json_decref(doc);
    if (w < 0 || (size_t)w >= sizeof blob) {
        snprintf(err, errlen, "Ollama blob path is too long");
        return -1;
    }
    if (stat(blob, &st) == -1 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "Ollama model '%s': manifest %s names blob %s, which is missing",
                 ref + strlen(OLLAMA_PREFIX), manifest, blob);
        return -1;
    }
    if ((size_t)w >= n) {
        snprintf(err, errlen, "model path buffer too small for %s", blob);
        return -1;
    }
    memcpy(path_out, blob, (size_t)w + 1);
    return 0;
}
