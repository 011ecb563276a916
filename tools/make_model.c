/* tg-make-model: write a random-weight GGUF in the llama.cpp "phi3" architecture with the real
 * Phi-3 tokenizer and chat template (every tokenizer.* key copied from ggml-vocab-phi-3.gguf).
 *
 *   tg-make-model --preset tiny|small|phi-3.5-mini --vocab ggml-vocab-phi-3.gguf --out M.gguf
 *                 [--seed N] [--type f16|f32] [--quant q4_k_m|q8_0|none] [--threads N]
 *
 * Presets (shapes; speed does not depend on the weights' values, so these are honest stand-ins
 * for performance work):
 *   tiny          embd 128,  2 layers,  4 heads, ff 256   ~8.3 M params, F16, for tests
 *   small         embd 768,  8 layers, 12 heads, ff 2048  ~106 M params, F16, engine benchmarks
 *   phi-3.5-mini  embd 3072, 32 layers, 32 heads, ff 8192 3.82 B params (the real shape),
 *                 written F16 then quantized to Q4_K_M with llama_model_quantize (default)
 * The file carries `tiergate.random_weights = true` so the gateway can say plainly that its
 * free text is meaningless. Tensor data is streamed (metadata first), so RAM stays small.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ggml-backend.h"
#include "ggml.h"
#include "gguf.h"
#include "llama.h"

struct preset {
    const char *name;
    int n_embd, n_layer, n_head, n_ff, n_ctx;
    const char *quant; /* default post-quantization, NULL = none */
};

static const struct preset presets[] = {
    {"tiny", 128, 2, 4, 256, 4096, NULL},
    {"small", 768, 8, 12, 2048, 4096, NULL},
    {"phi-3.5-mini", 3072, 32, 32, 8192, 4096, "q4_k_m"},
};

static uint64_t rng_s[2] = {0x9E3779B97F4A7C15ull, 0xD1B54A32D192ED03ull};

static inline uint64_t xorshift128p(void)
{
    uint64_t s1 = rng_s[0];
    const uint64_t s0 = rng_s[1];
    rng_s[0] = s0;
    s1 ^= s1 << 23;
    rng_s[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return rng_s[1] + s0;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* n floats uniform in [-a, a] (std = a/sqrt(3)) */
static void fill_uniform(float *dst, size_t n, float a)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)(int32_t)(uint32_t)xorshift128p() * (a / 2147483648.0f);
}

static int parse_long(const char *s, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || end == s)
        return -1;
    *out = v;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: tg-make-model --preset tiny|small|phi-3.5-mini --vocab VOCAB.gguf --out OUT.gguf\n"
               "                     [--seed N] [--type f16|f32] [--quant q4_k_m|q8_0|none] [--threads N]\n");
}

static void quiet_log(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    if (level >= GGML_LOG_LEVEL_WARN)
        fputs(text, stderr);
}

static int quantize(const char *in, const char *out, const char *q, int threads)
{
    enum llama_ftype ft;
    if (strcmp(q, "q4_k_m") == 0)
        ft = LLAMA_FTYPE_MOSTLY_Q4_K_M;
    else if (strcmp(q, "q8_0") == 0)
        ft = LLAMA_FTYPE_MOSTLY_Q8_0;
    else {
        fprintf(stderr, "unknown quantization '%s'\n", q);
        return 1;
    }
    llama_log_set(quiet_log, NULL);
    ggml_backend_load_all_from_path(TG_LLAMA_BACKEND_DIR);
    llama_backend_init();
    llama_model_quantize_params qp = llama_model_quantize_default_params();
    qp.nthread = threads;
    qp.ftype = ft;
    fprintf(stderr, "quantizing to %s with llama_model_quantize (minutes for the 3.8 B shape)...\n", q);
    double t0 = now_s();
    uint32_t rc = llama_model_quantize(in, out, &qp);
    llama_backend_free();
    if (rc != 0) {
        fprintf(stderr, "llama_model_quantize failed (%u)\n", rc);
        return 1;
    }
    fprintf(stderr, "quantized %s -> %s in %.1f s\n", in, out, now_s() - t0);
    return 0;
}

int main(int argc, char **argv)
{
    const char *preset_name = "tiny", *vocab_path = NULL, *out_path = NULL, *quant = "";
    enum ggml_type wtype = GGML_TYPE_F16;
    long seed = 1, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (strcmp(k, "--help") == 0 || strcmp(k, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(k, "--preset") == 0)
            preset_name = v;
        else if (strcmp(k, "--vocab") == 0)
            vocab_path = v;
        else if (strcmp(k, "--out") == 0)
            out_path = v;
        else if (strcmp(k, "--quant") == 0)
            quant = v;
        else if (strcmp(k, "--type") == 0 && (strcmp(v, "f16") == 0 || strcmp(v, "f32") == 0))
            wtype = v[1] == '3' ? GGML_TYPE_F32 : GGML_TYPE_F16;
        else if (strcmp(k, "--seed") == 0 && parse_long(v, &seed) == 0)
            ;
        else if (strcmp(k, "--threads") == 0 && parse_long(v, &threads) == 0)
            ;
        else {
            fprintf(stderr, "bad argument %s %s\n", k, v);
            usage(stderr);
            return 2;
        }
    }
    const struct preset *p = NULL;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (strcmp(presets[i].name, preset_name) == 0)
            p = &presets[i];
    if (p == NULL || vocab_path == NULL || out_path == NULL) {
        if (p == NULL)
            fprintf(stderr, "unknown preset '%s'\n", preset_name);
        usage(stderr);
        return 2;
    }
    if (quant[0] == '\0')
        quant = p->quant != NULL ? p->quant : "none";
    const bool do_quant = strcmp(quant, "none") != 0;

    rng_s[0] ^= (uint64_t)seed * 0x9E3779B97F4A7C15ull;
    rng_s[1] ^= (uint64_t)seed;
    for (int i = 0; i < 16; i++)
        xorshift128p();

    const double t0 = now_s();
    struct gguf_init_params vp = {.no_alloc = true, .ctx = NULL};
    struct gguf_context *vocab = gguf_init_from_file(vocab_path, vp);
    if (vocab == NULL) {
        fprintf(stderr, "cannot read vocab file %s\n", vocab_path);
        return 1;
    }
    int64_t kid = gguf_find_key(vocab, "tokenizer.ggml.tokens");
    if (kid < 0) {
        fprintf(stderr, "%s has no tokenizer.ggml.tokens\n", vocab_path);
        gguf_free(vocab);
        return 1;
    }
    const int64_t n_vocab = (int64_t)gguf_get_arr_n(vocab, kid);

    struct gguf_context *g = gguf_init_empty();
    gguf_set_kv(g, vocab); /* general.*, phi3.*, tokenizer.* including the chat template */
    gguf_free(vocab);

    const int n_embd = p->n_embd, n_head = p->n_head, n_head_kv = p->n_head;
    const int head_dim = n_embd / n_head, n_embd_gqa = head_dim * n_head_kv;
    char name[128];
    snprintf(name, sizeof name, "tiergate-random-phi3-%s", p->name);
    gguf_set_val_str(g, "general.architecture", "phi3");
    gguf_set_val_str(g, "general.name", name);
    gguf_set_val_bool(g, "tiergate.random_weights", true);
    gguf_set_val_str(g, "tiergate.preset", p->name);
    gguf_set_val_u32(g, "general.file_type", wtype == GGML_TYPE_F16 ? 1 : 0);
    gguf_set_val_u32(g, "phi3.context_length", (uint32_t)p->n_ctx);
    gguf_set_val_u32(g, "phi3.rope.scaling.original_context_length", (uint32_t)p->n_ctx);
    gguf_set_val_u32(g, "phi3.embedding_length", (uint32_t)n_embd);
    gguf_set_val_u32(g, "phi3.feed_forward_length", (uint32_t)p->n_ff);
    gguf_set_val_u32(g, "phi3.block_count", (uint32_t)p->n_layer);
    gguf_set_val_u32(g, "phi3.attention.head_count", (uint32_t)n_head);
    gguf_set_val_u32(g, "phi3.attention.head_count_kv", (uint32_t)n_head_kv);
    gguf_set_val_f32(g, "phi3.attention.layer_norm_rms_epsilon", 1e-5f);
    gguf_set_val_u32(g, "phi3.rope.dimension_count", (uint32_t)head_dim);
    gguf_set_val_f32(g, "phi3.rope.freq_base", 10000.0f);
    gguf_set_val_u32(g, "general.quantization_version", 2);

    /* Tensor metadata (ggml order {ne0 = input dim, ne1 = output dim}), see NOTES.md. */
    const int n_tensors = 3 + 6 * p->n_layer;
    struct ggml_init_params cp = {.mem_size = (size_t)(n_tensors + 8) * ggml_tensor_overhead(),
                                  .mem_buffer = NULL, .no_alloc = true};
    struct ggml_context *ctx = ggml_init(cp);
    struct ggml_tensor **ts = calloc((size_t)n_tensors, sizeof *ts);
    int nt = 0;
    char nm[GGML_MAX_NAME];
#define ADD1(nmx, a) (ts[nt] = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, a), ggml_set_name(ts[nt], nmx), nt++)
#define ADD2(nmx, a, b) (ts[nt] = ggml_new_tensor_2d(ctx, wtype, a, b), ggml_set_name(ts[nt], nmx), nt++)
    ADD2("token_embd.weight", n_embd, n_vocab);
    for (int il = 0; il < p->n_layer; il++) {
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", il);
        ADD1(nm, n_embd);
        snprintf(nm, sizeof nm, "blk.%d.attn_qkv.weight", il);
        ADD2(nm, n_embd, n_embd + 2 * n_embd_gqa);
        snprintf(nm, sizeof nm, "blk.%d.attn_output.weight", il);
        ADD2(nm, n_embd, n_embd);
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", il);
        ADD1(nm, n_embd);
        snprintf(nm, sizeof nm, "blk.%d.ffn_up.weight", il); /* gate and up fused */
        ADD2(nm, n_embd, 2 * p->n_ff);
        snprintf(nm, sizeof nm, "blk.%d.ffn_down.weight", il);
        ADD2(nm, p->n_ff, n_embd);
    }
    ADD1("output_norm.weight", n_embd);
    ADD2("output.weight", n_embd, n_vocab);
    for (int i = 0; i < nt; i++)
        gguf_add_tensor(g, ts[i]);

    char f16_path[4096];
    snprintf(f16_path, sizeof f16_path, "%s%s", out_path, do_quant ? ".f16.tmp" : ".tmp");
    if (!gguf_write_to_file(g, f16_path, /*only_meta=*/true)) {
        fprintf(stderr, "cannot write %s\n", f16_path);
        return 1;
    }
    FILE *f = fopen(f16_path, "ab");
    if (f == NULL) {
        perror(f16_path);
        return 1;
    }
    int64_t n_params = 0;
    for (int i = 0; i < nt; i++)
        n_params += ggml_nelements(ts[i]);
    const bool progress = n_params > 50 * 1000 * 1000;
    const bool tty = isatty(STDERR_FILENO); /* redrawn line on a terminal, a line per 10% in logs */
    const size_t align = gguf_get_alignment(g), CH = (size_t)1 << 22;
    float *fb = malloc(CH * sizeof(float));
    ggml_fp16_t *hb = malloc(CH * sizeof(ggml_fp16_t));
    int64_t done = 0;
    int last_pct = -1;
    bool io_ok = true;
    for (int i = 0; i < nt && io_ok; i++) {
        struct ggml_tensor *t = ts[i];
        const int64_t ne = ggml_nelements(t);
        const bool is_norm = ggml_n_dims(t) == 1;
        const float a = sqrtf(3.0f / (float)t->ne[0]); /* std = 1/sqrt(fan_in) */
        for (int64_t off = 0; off < ne && io_ok; off += (int64_t)CH) {
            size_t n = (size_t)((ne - off) < (int64_t)CH ? (ne - off) : (int64_t)CH);
            if (is_norm)
                for (size_t j = 0; j < n; j++)
                    fb[j] = 1.0f;
            else
                fill_uniform(fb, n, a);
            if (t->type == GGML_TYPE_F16) {
                ggml_fp32_to_fp16_row(fb, hb, (int64_t)n);
                io_ok = fwrite(hb, sizeof(ggml_fp16_t), n, f) == n;
            } else {
                io_ok = fwrite(fb, sizeof(float), n, f) == n;
            }
            done += (int64_t)n;
            int pct = (int)(100 * done / n_params);
            if (progress && pct != last_pct && (tty || pct % 10 == 0)) {
                fprintf(stderr, "%swriting %s weights: %3d%% (%.2f of %.2f B params)%s", tty ? "\r" : "",
                        p->name, pct, (double)done / 1e9, (double)n_params / 1e9, tty ? "" : "\n");
                last_pct = pct;
            }
        }
        static const char zeros[64] = {0};
        size_t nb = ggml_nbytes(t), pad = GGML_PAD(nb, align) - nb;
        if (pad != 0 && io_ok)
            io_ok = fwrite(zeros, 1, pad, f) == pad;
    }
    if (progress && tty)
        fputc('\n', stderr);
    if (fclose(f) != 0 || !io_ok) {
        fprintf(stderr, "write to %s failed\n", f16_path);
        unlink(f16_path);
        return 1;
    }
    free(fb);
    free(hb);
    free(ts);
    ggml_free(ctx);
    gguf_free(g);
    fprintf(stderr, "generated %s: phi3, n_vocab=%lld embd=%d layers=%d heads=%d ff=%d, %.1f M params, %s, %.2f s\n",
            p->name, (long long)n_vocab, n_embd, p->n_layer, n_head, p->n_ff, (double)n_params / 1e6,
            ggml_type_name(wtype), now_s() - t0);

    if (do_quant) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
        int rc = quantize(f16_path, tmp, quant, (int)threads);
        unlink(f16_path);
        if (rc != 0 || rename(tmp, out_path) != 0) {
            unlink(tmp);
            return 1;
        }
    } else if (rename(f16_path, out_path) != 0) {
        perror("rename");
        return 1;
    }
    fprintf(stderr, "wrote %s\n", out_path);
    return 0;
}
