/* Fuzz target for what the executor parses: client requests translated for providers (untrusted:
 * straight from clients), provider responses, SSE streams and stream events. The first byte picks
 * the parser, the second where the input is split in two reads (streams arrive in pieces).
 *
 * With clang: build fuzz-upstream (-fsanitize=fuzzer) and run
 *   build/tests/fuzz-upstream -max_len=8192 tests/upstream/corpus
 * Any compiler: upstream-fuzz-replay DIR runs every corpus file once (a ctest). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "upstream_int.h"

static int sink(void *ctx, const json_t *chunk, const char *data, size_t len)
{
    (void)ctx;
    (void)chunk;
    (void)data;
    (void)len;
    return 0;
}

struct fz {
    struct up_stream st;
    bool anthropic;
};

static int on_event(void *ctx, const char *event, const char *data, size_t len)
{
    struct fz *f = ctx;
    if (f->anthropic)
        up_anthropic_event(&f->st, event, data, len, sink, NULL);
    else
        up_openai_event(&f->st, data, len, sink, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    int mode = data[0] % 7;
    size_t split = data[1];
    const char *p = (const char *)data + 2;
    size_t n = size - 2;
    if (split > n)
        split = n;
    struct tg_cfg_provider prov = {
        .name = "p", .base_url = "http://x", .api_key = "k", .enabled = true};
    struct tg_cfg_model m = {.name = "m", .upstream_model = "up", .provider_ref = &prov};
    switch (mode) {
    case 0:
    case 1: {
        struct fz f;
        up_stream_init(&f.st);
        f.anthropic = mode == 1;
        f.st.client_usage = (split & 1) != 0;
        struct tg_buf pending;
        tg_buf_init(&pending, 4096);
        if (up_sse_feed(&pending, p, split, on_event, &f) == 0)
            up_sse_feed(&pending, p + split, n - split, on_event, &f);
        tg_buf_free(&pending);
        up_stream_clear(&f.st);
        break;
    }
    case 2:
    case 3: {
        json_t *out = NULL;
        struct tg_upstream_usage u = {-1, -1, 0};
        char finish[32] = "";
        if (mode == 2) {
            int rc = up_openai_response(p, n, &out, &u, finish, sizeof finish);
            /* the tree-less check must agree with jansson: same verdict, same fields (jansson
             * alone refuses \u0000 in strings; yajl passes it through) */
            struct tg_upstream_usage su = {-1, -1, 0};
            char sfinish[32] = "";
            if (rc != TG_OK)
                finish[0] = '\0';
            int src = up_openai_scan_response(p, n, &su, sfinish, sizeof sfinish);
            bool nul = memmem(p, n, "\\u0000", 6) != NULL;
            if ((rc == TG_OK) != (src == TG_OK) && !nul) {
                fprintf(stderr, "scan verdict %d, jansson %d\n", src, rc);
                abort();
            }
            if (rc == TG_OK && src == TG_OK &&
                (u.prompt_tokens != su.prompt_tokens || u.completion_tokens != su.completion_tokens ||
                 u.cached_tokens != su.cached_tokens || strcmp(finish, sfinish) != 0)) {
                fprintf(stderr, "scan %lld/%lld/%lld '%s', jansson %lld/%lld/%lld '%s'\n",
                        (long long)su.prompt_tokens, (long long)su.completion_tokens,
                        (long long)su.cached_tokens, sfinish, (long long)u.prompt_tokens,
                        (long long)u.completion_tokens, (long long)u.cached_tokens, finish);
                abort();
            }
        } else
            up_anthropic_response(p, n, (split & 1) != 0, &out, &u, finish, sizeof finish);
        json_decref(out);
        break;
    }
    case 6: {
        /* differential: the raw splice must parse to the JSON path's result */
        json_t *rq = json_loadb(p, n, 0, NULL);
        if (json_is_object(rq)) {
            bool stream = json_is_true(json_object_get(rq, "stream"));
            struct tg_buf body;
            tg_buf_init(&body, 1 << 20);
            bool cu = false;
            if (up_openai_build_raw(rq, p, n, &m, stream, &body, &cu) == TG_OK) {
                json_t *got = json_loadb(body.data, body.len, 0, NULL);
                json_t *want = json_copy(rq);
                json_object_set_new(want, "model", json_string("up"));
                if (stream && json_object_get(rq, "stream_options") == NULL)
                    json_object_set_new(want, "stream_options",
                                        json_pack("{s:b}", "include_usage", 1));
                if (got == NULL || !json_equal(got, want))
                    abort();
                json_decref(got);
                json_decref(want);
            }
            tg_buf_free(&body);
        }
        json_decref(rq);
        break;
    }
    default: {
        json_t *rq = json_loadb(p, n, 0, NULL);
        if (json_is_object(rq)) {
            struct tg_buf body;
            tg_buf_init(&body, 1 << 20);
            bool cu = false, fj = false;
            char err[256];
            if (mode == 4)
                up_openai_build(rq, &m, (split & 1) != 0, &body, &cu);
            else
                up_anthropic_build(rq, &m, (split & 1) != 0, &body, &cu, &fj, err, sizeof err);
            tg_buf_free(&body);
        }
        json_decref(rq);
        break;
    }
    }
    json_t *e = up_error_from_body(TG_PROVIDER_ANTHROPIC, 500, p, n, true);
    json_decref(e);
    return 0;
}

#ifndef TG_LIBFUZZER
int main(int argc, char **argv)
{
    int files = 0;
    static uint8_t buf[1 << 20];
    for (int a = 1; a < argc; a++) {
        DIR *d = opendir(argv[a]);
        if (d == NULL) {
            perror(argv[a]);
            return 1;
        }
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[a], e->d_name);
            FILE *f = fopen(path, "rb");
            if (f == NULL) {
                perror(path);
                closedir(d);
                return 1;
            }
            size_t len = fread(buf, 1, sizeof buf, f);
            fclose(f);
            LLVMFuzzerTestOneInput(buf, len);
            files++;
        }
        closedir(d);
    }
    printf("%d corpus files replayed\n", files);
    return files > 0 ? 0 : 1;
}
#endif
