/* `tiergate pull MODEL`: download a known GGUF from Hugging Face (or a mirror) into the models
 * directory, with resume, SHA-256 verification and a progress bar.
 *
 *   tiergate pull phi-3.5-mini [--dir DIR] [--base-url URL] [--sha256 HEX] [--retries N]
 *                              [--no-verify]
 *
 * The file is fetched from <base-url>/<repo>/resolve/main/<file> (base-url defaults to
 * https://huggingface.co; $HF_TOKEN, when set, is sent as a bearer token) into
 * <dir>/<file>.part. An interrupted download resumes from the .part's size with a Range request,
 * both across runs and within one run (--retries, default 5, with 1 s, 2 s, 4 s... pauses). The
 * finished .part is hashed (SHA-256, OpenSSL EVP) and renamed to <dir>/<file> only when the hash
 * matches; on a mismatch the .part is deleted and the command fails.
 *
 * The expected hash is, in order: --sha256; the hash built into the model table; the hub's
 * X-Linked-Etag header (Hugging Face answers /resolve/ for an LFS file with a redirect whose
 * X-Linked-Etag is the file's SHA-256). With none of these the command refuses unless --no-verify.
 *
 * dir: --dir, else $TIERGATE_MODELS, else $HOME/.local/share/tiergate/models (created).
 * Progress goes to stderr: a redrawn bar (percent, MB/s, ETA) on a TTY, one plain line per 10%
 * otherwise. The final path is printed on stdout.
 * Exit status: 0 done (or already present), 1 download/verify failure, 2 usage error. */
#ifndef TG_CLI_PULL_H
#define TG_CLI_PULL_H

/* argv[0] is "pull". Runs on the calling thread; calls curl_global_init itself. */
int tg_cli_pull(int argc, char **argv);

#endif
