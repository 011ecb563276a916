/* tiergate pull: see cli_pull.h for the contract. */
#include "cli_pull.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#ifndef TG_VERSION
#define TG_VERSION "0.0.0"
#endif

#define DEFAULT_BASE_URL "https://huggingface.co"
#define DEFAULT_RETRIES  5
/* A transfer slower than 1 byte/s for this long is treated as a cut connection (and resumed). */
#define STALL_SECONDS 30L

struct known_model {
    const char *name;
    const char *repo;   /* Hugging Face repository */
    const char *file;   /* file in it (also the local file name) */
    const char *sha256; /* NULL: taken from the hub's X-Linked-Etag */
};

/* The Q4_K_M quantisation is the one docs/quickstart.md sizes the machine for (2.2 GB, ~3.5 GB
 * resident with a 4k context). Its SHA-256 is not built in: no copy of the hub's listing was
 * available when this table was written, so the hub's own X-Linked-Etag (the LFS object's
 * SHA-256) is the reference. Pin one with --sha256 when mirroring. */
static const struct known_model known_models[] = {
    {"phi-3.5-mini", "bartowski/Phi-3.5-mini-instruct-GGUF", "Phi-3.5-mini-instruct-Q4_K_M.gguf",
     NULL},
};

struct pull {
    FILE *part;
    uint64_t have;          /* bytes in the .part when the current attempt started */
    uint64_t total;         /* full file size, 0 = unknown */
    uint64_t session_bytes; /* bytes received by this run in finished attempts */
    uint64_t attempt_bytes; /* bytes written by the current attempt */
    long status;            /* final HTTP status of the current attempt */
    bool started;           /* the current attempt's body began */
    bool bad_status;        /* aborted because the status was not 200/206 */
    bool io_error;
    char etag[65]; /* hub's X-Linked-Etag when it is a SHA-256 */
    bool tty;
    struct timespec t0;
    double last_draw;
    int last_decile;
    CURL *curl;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static bool is_sha256_hex(const char *s, size_t len)
{
    if (len != 64)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = 0;
    for (; i < len && isdigit((unsigned char)s[i]); i++) {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (i == 0)
        return false;
    *out = v;
    return true;
}

/* Header lines of every response, redirects included: the hub puts X-Linked-Etag/-Size on the
 * redirect, the CDN answers the Range. */
static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    struct pull *p = ud;
    size_t len = size * n;
    const char *colon = memchr(buf, ':', len);
    if (colon == NULL)
        return len;
    size_t klen = (size_t)(colon - buf);
    const char *v = colon + 1;
    const char *end = buf + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    if (klen == 13 && strncasecmp(buf, "x-linked-etag", klen) == 0) {
        if (end - v >= 2 && v[0] == 'W' && v[1] == '/')
            v += 2;
        if (v < end && *v == '"')
            v++;
        if (end > v && end[-1] == '"')
            end--;
        if (is_sha256_hex(v, (size_t)(end - v))) {
            for (int i = 0; i < 64; i++)
                p->etag[i] = (char)tolower((unsigned char)v[i]);
            p->etag[64] = '\0';
        }
    } else if (klen == 13 && strncasecmp(buf, "x-linked-size", klen) == 0) {
        uint64_t t;
        if (parse_u64(v, (size_t)(end - v), &t) && t > 0)
            p->total = t;
    } else if (klen == 13 && strncasecmp(buf, "content-range", klen) == 0) {
        /* bytes a-b/total */
        const char *slash = memchr(v, '/', (size_t)(end - v));
        uint64_t t;
        if (slash != NULL && parse_u64(slash + 1, (size_t)(end - slash - 1), &t) && t > 0)
            p->total = t;
    }
    return len;
}

static size_t on_body(char *buf, size_t size, size_t n, void *ud)
{
    struct pull *p = ud;
    size_t len = size * n;
    if (!p->started) {
        p->started = true;
        curl_easy_getinfo(p->curl, CURLINFO_RESPONSE_CODE, &p->status);
        if (p->status == 200 && p->have > 0) {
            /* the server ignored the Range: start the file over */
            if (fflush(p->part) != 0 || ftruncate(fileno(p->part), 0) == -1 ||
                fseeko(p->part, 0, SEEK_SET) == -1) {
                p->io_error = true;
                return 0;
            }
            p->have = 0;
        }
        if (p->status == 200) {
            curl_off_t cl = -1;
            curl_easy_getinfo(p->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
            if (cl > 0)
                p->total = (uint64_t)cl;
        } else if (p->status != 206) {
            p->bad_status = true;
            return 0;
        }
    }
    if (fwrite(buf, 1, len, p->part) != len) {
        p->io_error = true;
        return 0;
    }
    p->attempt_bytes += len;
    return len;
}

static void fmt_eta(double s, char *out, size_t n)
{
    if (s < 0 || s > 99 * 3600) {
        snprintf(out, n, "--:--");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else
        snprintf(out, n, "%ld:%02ld", t / 60, t % 60);
}

static void draw(struct pull *p, bool final)
{
    uint64_t done = p->have + p->attempt_bytes;
    double el = now_s() - ((double)p->t0.tv_sec + (double)p->t0.tv_nsec / 1e9);
    double rate = el > 0 ? (double)(p->session_bytes + p->attempt_bytes) / el : 0;
    double pct = p->total > 0 ? 100.0 * (double)done / (double)p->total : 0;
    if (pct > 100)
        pct = 100;
    char eta[32];
    fmt_eta(p->total > 0 && rate > 0
                ? (double)(p->total - (done < p->total ? done : p->total)) / rate
                : -1,
            eta, sizeof eta);
    if (p->tty) {
        double t = now_s();
        if (!final && t - p->last_draw < 0.1)
            return;
        p->last_draw = t;
        char bar[31];
        int fill = (int)(pct * 30 / 100);
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
        bar[30] = '\0';
        fprintf(stderr, "\r[%s] %5.1f%%  %7.1f/%.1f MB  %6.2f MB/s  ETA %s ", bar, pct, done / 1e6,
                p->total / 1e6, rate / 1e6, eta);
        if (final)
            fputc('\n', stderr);
        fflush(stderr);
        return;
    }
    int decile = p->total > 0 ? (int)(pct / 10) : (int)(done / 100000000); /* else per 100 MB */
    if (decile <= p->last_decile)
        return; /* also keeps the final line from repeating 100% */
    p->last_decile = decile;
    fprintf(stderr, "pull: %5.1f%%  %.1f/%.1f MB  %.2f MB/s  ETA %s\n", pct, done / 1e6,
            p->total / 1e6, rate / 1e6, eta);
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal, (void)ulnow;
    struct pull *p = ud;
    if (p->started && !p->bad_status)
        draw(p, false);
    return 0;
}

static int mkdir_p(const char *dir)
{
    char tmp[4096];
    int w = snprintf(tmp, sizeof tmp, "%s", dir);
    if (w < 0 || (size_t)w >= sizeof tmp)
        return -1;
    for (char *s = tmp + 1; *s != '\0'; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(tmp, 0755) == -1 && errno != EEXIST)
            return -1;
        *s = '/';
    }
    if (mkdir(tmp, 0755) == -1 && errno != EEXIST)
        return -1;
    return 0;
}

static int sha256_file(const char *path, char hex[65])
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = -1;
    unsigned char *buf = malloc(1 << 20);
    if (ctx == NULL || buf == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
        goto out;
    size_t k;
    while ((k = fread(buf, 1, 1 << 20, f)) > 0)
        if (EVP_DigestUpdate(ctx, buf, k) != 1)
            goto out;
    if (ferror(f))
        goto out;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen != 32)
        goto out;
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    rc = 0;
out:
    free(buf);
    EVP_MD_CTX_free(ctx);
    fclose(f);
    return rc;
}

static void pull_usage(FILE *f)
{
    fprintf(f,
            "usage: tiergate pull MODEL [--dir DIR] [--base-url URL] [--sha256 HEX] [--retries N] "
            "[--no-verify]\nmodels:");
    for (size_t i = 0; i < sizeof known_models / sizeof known_models[0]; i++)
        fprintf(f, " %s (%s/%s)", known_models[i].name, known_models[i].repo, known_models[i].file);
    fputc('\n', f);
}

/* "--name VALUE" or "--name=VALUE" at argv[*i]; advances *i past a separate value. */
static bool opt_value(int argc, char **argv, int *i, const char *name, const char **out)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return false;
    if (argv[*i][n] == '=') {
        *out = argv[*i] + n + 1;
        return true;
    }
    if (argv[*i][n] == '\0' && *i + 1 < argc) {
        *out = argv[++*i];
        return true;
    }
    return false;
}

/* One transfer from the current .part size. Returns 0 done, 1 retryable failure, -1 final
 * failure (message printed). */
static int attempt(struct pull *p, const char *url, const char *part_path)
{
    struct stat st;
    if (fstat(fileno(p->part), &st) == -1) {
        fprintf(stderr, "pull: %s: %s\n", part_path, strerror(errno));
        return -1;
    }
    p->have = (uint64_t)st.st_size;
    p->session_bytes += p->attempt_bytes; /* the previous attempt's bytes */
    p->attempt_bytes = 0;
    p->started = p->bad_status = p->io_error = false;
    p->status = 0;
    if (fseeko(p->part, 0, SEEK_END) == -1) {
        fprintf(stderr, "pull: %s: %s\n", part_path, strerror(errno));
        return -1;
    }
    char range[48];
    snprintf(range, sizeof range, "%" PRIu64 "-", p->have);
    curl_easy_setopt(p->curl, CURLOPT_RANGE, p->have > 0 ? range : NULL);
    if (p->have > 0)
        fprintf(stderr, "pull: resuming at %.1f MB\n", p->have / 1e6);
    CURLcode rc = curl_easy_perform(p->curl);
    if (fflush(p->part) != 0)
        p->io_error = true;
    if (p->status == 0)
        curl_easy_getinfo(p->curl, CURLINFO_RESPONSE_CODE, &p->status);
    if (p->io_error) {
        fprintf(stderr, "pull: writing %s failed: %s\n", part_path, strerror(errno));
        return -1;
    }
    if (rc == CURLE_OK && (p->status == 200 || p->status == 206)) {
        if (p->total > 0 && p->have + p->attempt_bytes < p->total)
            return 1; /* closed early without an error from curl: resume */
        draw(p, true);
        return 0;
    }
    if (p->status == 416 && p->have > 0) {
        /* nothing left past our size: the .part is complete (the hash decides) */
        return 0;
    }
    if (p->bad_status || (rc == CURLE_OK && p->status >= 300)) {
        fprintf(stderr, "pull: %s answered HTTP %ld\n", url, p->status);
        return p->status >= 500 || p->status == 429 ? 1 : -1;
    }
    if (p->tty && p->started)
        fputc('\n', stderr);
    fprintf(stderr, "pull: transfer interrupted: %s\n", curl_easy_strerror(rc));
    return rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL ? -1 : 1;
}

int tg_cli_pull(int argc, char **argv)
{
    const char *model = NULL, *dir = NULL, *base = NULL, *want_sha = NULL, *retries_s = NULL;
    bool no_verify = false;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            pull_usage(stdout);
            return 0;
        } else if (opt_value(argc, argv, &i, "--dir", &v)) {
            dir = v;
        } else if (opt_value(argc, argv, &i, "--base-url", &v)) {
            base = v;
        } else if (opt_value(argc, argv, &i, "--sha256", &v)) {
            want_sha = v;
        } else if (opt_value(argc, argv, &i, "--retries", &v)) {
            retries_s = v;
        } else if (strcmp(argv[i], "--no-verify") == 0) {
            no_verify = true;
        } else if (argv[i][0] != '-' && model == NULL) {
            model = argv[i];
        } else {
            fprintf(stderr, "pull: unknown or incomplete argument '%s'\n", argv[i]);
            pull_usage(stderr);
            return 2;
        }
    }
    if (model == NULL) {
        pull_usage(stderr);
        return 2;
    }
    const struct known_model *km = NULL;
    for (size_t i = 0; i < sizeof known_models / sizeof known_models[0]; i++)
        if (strcmp(known_models[i].name, model) == 0)
            km = &known_models[i];
    if (km == NULL) {
        fprintf(stderr, "pull: unknown model '%s'\n", model);
        pull_usage(stderr);
        return 2;
    }
    long retries = DEFAULT_RETRIES;
    if (retries_s != NULL) {
        char *end;
        errno = 0;
        retries = strtol(retries_s, &end, 10);
        if (errno != 0 || end == retries_s || *end != '\0' || retries < 0 || retries > 100) {
            fprintf(stderr, "pull: --retries must be 0..100 (got '%s')\n", retries_s);
            return 2;
        }
    }
    char sha_lc[65] = "";
    if (want_sha == NULL)
        want_sha = km->sha256;
    if (want_sha != NULL) {
        if (!is_sha256_hex(want_sha, strlen(want_sha))) {
            fprintf(stderr, "pull: --sha256 must be 64 hex digits\n");
            return 2;
        }
        for (int i = 0; i < 64; i++)
            sha_lc[i] = (char)tolower((unsigned char)want_sha[i]);
        sha_lc[64] = '\0';
    }
    if (base == NULL)
        base = DEFAULT_BASE_URL;
    if (strncmp(base, "http://", 7) != 0 && strncmp(base, "https://", 8) != 0) {
        fprintf(stderr, "pull: --base-url must start with http:// or https:// (got '%s')\n", base);
        return 2;
    }
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;

    char dirbuf[4096];
    if (dir == NULL) {
        const char *env = getenv("TIERGATE_MODELS");
        const char *home = getenv("HOME");
        if (env != NULL && env[0] != '\0')
            snprintf(dirbuf, sizeof dirbuf, "%s", env);
        else if (home != NULL && home[0] != '\0')
            snprintf(dirbuf, sizeof dirbuf, "%s/.local/share/tiergate/models", home);
        else {
            fprintf(stderr, "pull: no --dir given and neither TIERGATE_MODELS nor HOME is set\n");
            return 2;
        }
        dir = dirbuf;
    }
    if (mkdir_p(dir) == -1) {
        fprintf(stderr, "pull: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char final_path[4200], part_path[4300], url[8192];
    snprintf(final_path, sizeof final_path, "%s/%s", dir, km->file);
    snprintf(part_path, sizeof part_path, "%s.part", final_path);
    int w =
        snprintf(url, sizeof url, "%.*s/%s/resolve/main/%s", (int)blen, base, km->repo, km->file);
    if (w < 0 || (size_t)w >= sizeof url) {
        fprintf(stderr, "pull: --base-url is too long\n");
        return 2;
    }
    if (access(final_path, F_OK) == 0) {
        fprintf(stderr, "pull: %s is already present (delete it to download again)\n", final_path);
        printf("%s\n", final_path);
        return 0;
    }

    struct pull p;
    memset(&p, 0, sizeof p);
    p.tty = isatty(STDERR_FILENO) == 1;
    p.last_decile = -1;
    clock_gettime(CLOCK_MONOTONIC, &p.t0);
    p.part = fopen(part_path, "ab");
    if (p.part == NULL) {
        fprintf(stderr, "pull: cannot open %s: %s\n", part_path, strerror(errno));
        return 1;
    }
    /* two pulls appending to one .part would interleave bytes */
    if (flock(fileno(p.part), LOCK_EX | LOCK_NB) == -1) {
        fprintf(stderr, "pull: %s is being written by another process\n", part_path);
        fclose(p.part);
        return 1;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "pull: curl_global_init failed\n");
        fclose(p.part);
        return 1;
    }
    p.curl = curl_easy_init();
    struct curl_slist *hdrs = NULL;
    char auth[1024];
    const char *token = getenv("HF_TOKEN");
    if (token != NULL && token[0] != '\0' &&
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", token) < (int)sizeof auth)
        hdrs = curl_slist_append(hdrs, auth);
    int result = 1;
    if (p.curl == NULL)
        goto out;
    curl_easy_setopt(p.curl, CURLOPT_URL, url);
    curl_easy_setopt(p.curl, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(p.curl, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(p.curl, CURLOPT_USERAGENT, "tiergate/" TG_VERSION);
    curl_easy_setopt(p.curl, CURLOPT_CONNECTTIMEOUT, 20L);
    curl_easy_setopt(p.curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(p.curl, CURLOPT_LOW_SPEED_TIME, STALL_SECONDS);
    curl_easy_setopt(p.curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(p.curl, CURLOPT_HEADERDATA, &p);
    curl_easy_setopt(p.curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(p.curl, CURLOPT_WRITEDATA, &p);
    curl_easy_setopt(p.curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(p.curl, CURLOPT_XFERINFODATA, &p);
    curl_easy_setopt(p.curl, CURLOPT_NOPROGRESS, 0L);
    if (hdrs != NULL)
        curl_easy_setopt(p.curl, CURLOPT_HTTPHEADER, hdrs);

    fprintf(stderr, "pull: %s -> %s\n", url, final_path);
    int st = 1;
    for (long a = 0; a <= retries; a++) {
        if (a > 0) {
            unsigned pause = 1u << (a - 1 < 5 ? a - 1 : 5);
            fprintf(stderr, "pull: retry %ld/%ld in %u s\n", a, retries, pause);
            sleep(pause);
        }
        st = attempt(&p, url, part_path);
        if (st <= 0)
            break;
    }
    if (st != 0) {
        if (st > 0)
            fprintf(stderr, "pull: giving up; run the command again to resume from %s\n",
                    part_path);
        goto out;
    }
    if (sha_lc[0] == '\0' && p.etag[0] != '\0')
        memcpy(sha_lc, p.etag, sizeof sha_lc);
    if (sha_lc[0] == '\0' && !no_verify) {
        fprintf(stderr,
                "pull: no SHA-256 to check %s against (the server sent no X-Linked-Etag); "
                "pass --sha256 HEX, or --no-verify to accept it unchecked\n",
                part_path);
        goto out;
    }
    if (sha_lc[0] != '\0') {
        char got[65];
        fprintf(stderr, "pull: verifying SHA-256\n");
        if (sha256_file(part_path, got) != 0) {
            fprintf(stderr, "pull: cannot hash %s: %s\n", part_path, strerror(errno));
            goto out;
        }
        if (strcmp(got, sha_lc) != 0) {
            fprintf(stderr, "pull: SHA-256 mismatch for %s: expected %s, got %s; deleted it\n",
                    km->file, sha_lc, got);
            if (unlink(part_path) == -1)
                fprintf(stderr, "pull: unlink %s: %s\n", part_path, strerror(errno));
            goto out;
        }
    }
    if (rename(part_path, final_path) == -1) {
        fprintf(stderr, "pull: rename %s: %s\n", part_path, strerror(errno));
        goto out;
    }
    fprintf(stderr, "pull: done%s\n",
            sha_lc[0] != '\0' ? " (SHA-256 verified)" : " (not verified)");
    printf("%s\n", final_path);
    result = 0;
out:
    curl_slist_free_all(hdrs);
    if (p.curl != NULL)
        curl_easy_cleanup(p.curl);
    curl_global_cleanup();
    /* a failure before any byte arrived leaves nothing worth resuming */
    struct stat pst;
    if (result != 0 && fstat(fileno(p.part), &pst) == 0 && pst.st_size == 0 &&
        unlink(part_path) == -1 && errno != ENOENT)
        fprintf(stderr, "pull: unlink %s: %s\n", part_path, strerror(errno));
    fclose(p.part);
    return result;
}
