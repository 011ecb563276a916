/* Model references in `local.model`: a GGUF path, or an Ollama model name resolved through the
 * local Ollama store, so a machine that already pulled `phi3.5` with Ollama needs no second copy.
 *
 *   ollama:phi3.5               -> registry.ollama.ai/library/phi3.5/latest
 *   ollama:phi3.5:3.8b          -> registry.ollama.ai/library/phi3.5/3.8b
 *   ollama:user/model:tag       -> registry.ollama.ai/user/model/tag
 *   ollama:host/ns/model:tag    -> host/ns/model/tag
 *
 * The store is $OLLAMA_MODELS, else $HOME/.ollama/models. The manifest
 * (<store>/manifests/<host>/<ns>/<model>/<tag>) is an OCI-style JSON document; its layer with
 * mediaType "application/vnd.ollama.image.model" names the GGUF blob by digest "sha256:<hex>",
 * stored as <store>/blobs/sha256-<hex>.
 *
 * Thread-safe (reads the environment and the file system only).
 */
#ifndef TG_MODEL_REF_H
#define TG_MODEL_REF_H

#include <stdbool.h>
#include <stddef.h>

/* True when ref is an Ollama reference (starts with "ollama:"). */
bool tg_model_ref_is_ollama(const char *ref);

/* Resolve ref to a GGUF file path. A ref that is not "ollama:..." is copied unchanged.
 * Returns 0 and writes path_out (n bytes) on success; returns -1 and writes a message naming the
 * manifest or blob path tried into err (errlen bytes) on failure: bad name, store or manifest
 * missing, manifest not JSON or without a model layer, blob missing. path_out is written only on
 * success. */
int tg_model_ref_resolve(const char *ref, char *path_out, size_t n, char *err, size_t errlen);

#endif
