/* Integer GEMM throughput: GOPS (2 m n k per product) of the CPU backend's u8 x s8 -> s32 GEMM
 * (src/kernels/cpu/qgemm.h) against the float SGEMM (sgemm.h) at the same shapes, twice: with
 * full-range int8 weights ("int8 full": on AVX2 the exact int16-pair format) and with 7-bit
 * weights in [-64, 63] ("int8 7-bit": on AVX2 the VPMADDUBSW byte format they qualify for): 256^3, 1024^3
 * and BERT's projections at sequence 128 (bert_tiny: hidden 256, FFN 1024; MiniLM: hidden 384,
 * FFN 1536). Weights (B) are packed once beforehand in both, as at load; the integer side packs A
 * per call (as MatMulInteger does) and that is included in its time. The two are timed in
 * alternating rounds so machine load affects both alike; best round of each.
 * A second table times the QLinearConv GEMM at real conv shapes (ResNet-50, MobileNetV2 and
 * SqueezeNet 1.1 at 224x224, the column count of one im2col chunk as quant_kernels.c cuts it):
 * A = 7-bit int8 weights (oc x c*kh*kw) packed once, B = uint8 columns packed per call (included),
 * uint8 output requantized per output channel; no im2col (the columns are given).
 * Not a test. Built like bench_gemm (bench/README.md):
 *   cc -std=c11 -D_POSIX_C_SOURCE=200809L -O2 -Iinclude -Isrc bench/bench_qgemm.c build/libkiln.a \
 *      -lprotobuf-c -lm -lpthread -o build/bench_qgemm
 * usage: bench_qgemm [THREADS] [SECONDS_PER_SHAPE]   (KILN_ISA picks the ISAs as in the library) */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/threadpool.h"
#include "kernels/cpu/qgemm.h"
#include "kernels/cpu/sgemm.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The QLinearConv path at conv shapes: column pack + GEMM + requantizing epilogue. */
static void conv_table(kiln__pool *pool, kiln__qisa qisa, double secs) {
  static const struct { const char *name; size_t m, k, n; } cs[] = {
      {"rn50 conv1 7x7/2", 64, 147, 1664},     {"rn50 l1 1x1 64->64", 64, 64, 3136},
      {"rn50 l1 3x3 64", 64, 576, 384},        {"rn50 l1 1x1 64->256", 256, 64, 3136},
      {"rn50 l2 3x3 128", 128, 1152, 224},     {"rn50 l2 1x1 512->128", 128, 512, 784},
      {"rn50 l3 3x3 256", 256, 2304, 96},      {"rn50 l3 1x1 1024->256", 256, 1024, 196},
      {"rn50 l4 3x3 512 (chunk 32)", 512, 4608, 32}, {"rn50 l4 1x1 2048->512", 512, 2048, 49},
      {"mbv2 1x1 16->96 112^2", 96, 16, 12544}, {"mbv2 1x1 144->24 56^2", 24, 144, 3136},
      {"mbv2 1x1 960->160 7^2", 160, 960, 49}, {"sqz squeeze 128->16", 16, 128, 3025},
      {"sqz expand 3x3 16->64", 64, 144, 1792}, {"sqz expand 1x1 16->64", 64, 16, 3025},
  };
  printf("\nQLinearConv GEMM (7-bit weights, uint8 columns packed per call, uint8 out), GOPS\n");
  kiln_error err = {0};
  for (size_t s = 0; s < sizeof cs / sizeof cs[0]; s++) {
    size_t m = cs[s].m, k = cs[s].k, n = cs[s].n;
    int8_t *w = malloc(m * k);
    uint8_t *col = malloc(k * n), *y = malloc(m * n);
    float *mult = malloc(m * sizeof(float));
    int32_t *bias = malloc(m * sizeof(int32_t));
    for (size_t i = 0; i < m * k; i++) w[i] = (int8_t)((i * 5) % 128 - 64);
    for (size_t i = 0; i < k * n; i++) col[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < m; i++) mult[i] = 1e-4f * (float)(1 + i % 7), bias[i] = (int32_t)i;
    kiln__qpacked pw, pb;
    kiln__qsrc wsrc = {w, true, k, 1}, csrc = {col, false, 1, n};
    if (kiln__qpack_alloc(qisa, true, m, k, &wsrc, &pw, &err) != KILN_OK) {
      fprintf(stderr, "bench_qgemm: %s\n", err.message);
      exit(1);
    }
    void *bmem = kiln__aligned_alloc(kiln__qpack_bytes(pw.isa, false, n, k));
    uint8_t zx = 3;
    kiln__qgemm_args g = {.m = m, .n = n, .k = k, .a = &pw, .b = &pb, .zb = {&zx, false, 1},
                          .kind = KILN__QOUT_U8, .c = y, .ldc = n, .bias = bias, .mult = mult,
                          .per_row = true, .zy = 5};
    double best = 1e30, spent = 0.0;
    for (int round = 0; spent < secs || round < 4; round++) {
      double t0 = now();
      kiln__qpack(pool, pw.isa, false, n, k, &csrc, bmem, &pb);
      kiln__qgemm_run(pool, &g);
      double t = now() - t0;
      if (t < best) best = t;
      spent += t;
    }
    char label[80];
    snprintf(label, sizeof label, "%s %zux%zux%zu", cs[s].name, m, k, n);
    printf("%-44s %8.1f   %s\n", label, 2.0 * (double)m * (double)n * (double)k / best * 1e-9,
           kiln__qisa_name(pw.isa));
    kiln__qpacked_free(&pw);
    kiln__aligned_free(bmem);
    free(w), free(col), free(y), free(mult), free(bias);
  }
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  double secs = argc > 2 ? atof(argv[2]) : 0.3;
  static const struct { const char *name; size_t m, k, n; } shapes[] = {
      {"256^3", 256, 256, 256},           {"1024^3", 1024, 1024, 1024},
      {"bert_tiny qkv/out", 128, 256, 256}, {"bert_tiny ffn up", 128, 256, 1024},
      {"bert_tiny ffn down", 128, 1024, 256}, {"minilm qkv/out", 128, 384, 384},
      {"minilm ffn up", 128, 384, 1536},  {"minilm ffn down", 128, 1536, 384},
  };
  kiln_error err = {0};
  kiln__pool *pool = NULL;
  kiln__isa fisa;
  kiln__qisa qisa;
  if (kiln__pool_create(threads, &pool, &err) != KILN_OK || kiln__isa_select(&fisa, &err) != KILN_OK ||
      kiln__qisa_select(&qisa, &err) != KILN_OK) {
    fprintf(stderr, "bench_qgemm: %s\n", err.message);
    return 1;
  }
  printf("integer GEMM vs SGEMM, %d thread(s), float ISA %s, integer ISA %s\n", threads,
         kiln__isa_name(fisa), kiln__qisa_name(qisa));
  printf("%-34s %8s %10s %10s %8s %8s   %s\n", "shape (m x k x n)", "f32", "int8 full",
         "int8 7-bit", "full/f32", "7bit/f32", "(GFLOP/s, GOPS; 7-bit format)");
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    size_t m = shapes[s].m, k = shapes[s].k, n = shapes[s].n;
    float *af = malloc(m * k * sizeof(float)), *bf = malloc(k * n * sizeof(float)),
          *cf = malloc(m * n * sizeof(float));
    uint8_t *aq = malloc(m * k);
    int8_t *bq = malloc(k * n);
    int32_t *cq = malloc(m * n * sizeof(int32_t));
    void *apack = kiln__aligned_alloc(kiln__qpack_bytes(qisa, true, m, k));
    for (size_t i = 0; i < m * k; i++) af[i] = (float)(i % 13) * 0.1f, aq[i] = (uint8_t)(i * 7);
    int8_t *bq7 = malloc(k * n);
    for (size_t i = 0; i < k * n; i++)
      bf[i] = (float)(i % 7) * 0.1f, bq[i] = (int8_t)(i * 5), bq7[i] = (int8_t)((i * 5) % 128 - 64);
    kiln__sgemm_packed pbf;
    kiln__qpacked pbq, pbq7;
    kiln__qsrc bsrc = {bq, true, 1, n}, bsrc7 = {bq7, true, 1, n}, asrc = {aq, false, k, 1};
    if (kiln__sgemm_pack_b(fisa, false, k, n, bf, n, &pbf, &err) != KILN_OK ||
        kiln__qpack_alloc(qisa, false, n, k, &bsrc, &pbq, &err) != KILN_OK ||
        kiln__qpack_alloc(qisa, false, n, k, &bsrc7, &pbq7, &err) != KILN_OK) {
      fprintf(stderr, "bench_qgemm: %s\n", err.message);
      return 1;
    }
    kiln__sgemm_args fg = {.m = m, .n = n, .k = k, .a = af, .lda = k, .pb = &pbf, .c = cf,
                           .ldc = n, .alpha = 1.0f};
    uint8_t zp = 3;
    kiln__qgemm_args qg = {.m = m, .n = n, .k = k, .b = &pbq, .za = {&zp, false, 1},
                           .kind = KILN__QOUT_I32, .c = cq, .ldc = n};
    double best_f = 1e30, best_q = 1e30, best_q7 = 1e30, spent = 0.0;
    for (int round = 0; spent < secs || round < 4; round++) {
      double t0 = now();
      kiln__sgemm_run(pool, fisa, &fg);
      double t1 = now();
      kiln__qpacked pa;
      kiln__qpack(pool, pbq.isa, true, m, k, &asrc, apack, &pa);
      qg.a = &pa;
      qg.b = &pbq;
      kiln__qgemm_run(pool, &qg);
      double t2 = now();
      kiln__qpack(pool, pbq7.isa, true, m, k, &asrc, apack, &pa);
      qg.b = &pbq7;
      kiln__qgemm_run(pool, &qg);
      double t3 = now();
      if (t1 - t0 < best_f) best_f = t1 - t0;
      if (t2 - t1 < best_q) best_q = t2 - t1;
      if (t3 - t2 < best_q7) best_q7 = t3 - t2;
      spent += t3 - t0;
    }
    double ops = 2.0 * (double)m * (double)n * (double)k;
    char label[64];
    snprintf(label, sizeof label, "%s %zux%zux%zu", shapes[s].name, m, k, n);
    printf("%-34s %8.1f %10.1f %10.1f %7.2fx %7.2fx   %s\n", label, ops / best_f * 1e-9,
           ops / best_q * 1e-9, ops / best_q7 * 1e-9, best_f / best_q, best_f / best_q7,
           kiln__qisa_name(pbq7.isa));
    kiln__sgemm_packed_free(&pbf);
    kiln__qpacked_free(&pbq);
    kiln__qpacked_free(&pbq7);
    kiln__aligned_free(apack);
    free(af), free(bf), free(cf), free(aq), free(bq), free(bq7), free(cq);
  }
  conv_table(pool, qisa, secs);
  kiln__pool_free(pool);
  return 0;
}
