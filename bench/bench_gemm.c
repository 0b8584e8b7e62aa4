/* GEMM efficiency: GFLOP/s of Kiln's SGEMM at 256^3, 1024^3 and the shapes of BERT's projections
 * (bert_tiny: hidden 256, FFN 1024; MiniLM: hidden 384, FFN 1536; sequence 128), against the
 * machine's measured FP32 peak (an FMA loop with enough independent accumulators to cover the
 * latency). Not a test: bench/run.sh builds and runs it.
 *
 * Two GEMMs per shape: the CPU backend's packed SGEMM (src/kernels/cpu/sgemm.h) with B packed once
 * beforehand, as weights are at load, and GEMM_FN, by default the reference kiln__sgemm
 * (src/kernels/ref/gemm.h; another function with the same signature can be named at build time,
 * see bench/README.md).
 * usage: bench_gemm [THREADS] [SECONDS_PER_SHAPE] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/threadpool.h"
#include "kernels/cpu/sgemm.h"
#include "kernels/ref/gemm.h"

#ifndef GEMM_FN
#define GEMM_FN kiln__sgemm
#endif
#define STR2(x) #x
#define STR(x) STR2(x)
#define GEMM_NAME_STR STR(GEMM_FN)

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#if defined(__x86_64__)
#include <immintrin.h>
/* 12 independent 8-wide FMA chains: 2 FMA ports x 4-5 cycles latency needs >= 10. Named
   accumulators so they stay in registers, and each starts from its own value: identical chains
   are one chain to the compiler, which then emits a single FMA per iteration (an earlier version
   did, and reported 1.5x the real peak: one FMA's latency counted as twelve FMAs' work). */
__attribute__((target("avx2,fma"))) static float fma_loop(long iters, float seed) {
  __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
#define SEED(i) _mm256_set1_ps(seed + (float)(i) * 0.125f)
  __m256 c0 = SEED(0), c1 = SEED(1), c2 = SEED(2), c3 = SEED(3), c4 = SEED(4), c5 = SEED(5),
         c6 = SEED(6), c7 = SEED(7), c8 = SEED(8), c9 = SEED(9), c10 = SEED(10), c11 = SEED(11);
#undef SEED
  for (long it = 0; it < iters; it++) {
    c0 = _mm256_fmadd_ps(c0, m, a), c1 = _mm256_fmadd_ps(c1, m, a);
    c2 = _mm256_fmadd_ps(c2, m, a), c3 = _mm256_fmadd_ps(c3, m, a);
    c4 = _mm256_fmadd_ps(c4, m, a), c5 = _mm256_fmadd_ps(c5, m, a);
    c6 = _mm256_fmadd_ps(c6, m, a), c7 = _mm256_fmadd_ps(c7, m, a);
    c8 = _mm256_fmadd_ps(c8, m, a), c9 = _mm256_fmadd_ps(c9, m, a);
    c10 = _mm256_fmadd_ps(c10, m, a), c11 = _mm256_fmadd_ps(c11, m, a);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                           _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}
#define PEAK_FLOPS_PER_ITER (12.0 * 8 * 2)

/* The same with 16-wide chains, for CPUs whose SGEMM runs the AVX-512 microkernel (Zen 5 has two
   512-bit FMA pipes, so its peak is twice the AVX2 loop's). */
__attribute__((target("avx512f"))) static float fma_loop512(long iters, float seed) {
  __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
#define SEED(i) _mm512_set1_ps(seed + (float)(i) * 0.125f)
  __m512 c0 = SEED(0), c1 = SEED(1), c2 = SEED(2), c3 = SEED(3), c4 = SEED(4), c5 = SEED(5),
         c6 = SEED(6), c7 = SEED(7), c8 = SEED(8), c9 = SEED(9), c10 = SEED(10), c11 = SEED(11);
#undef SEED
  for (long it = 0; it < iters; it++) {
    c0 = _mm512_fmadd_ps(c0, m, a), c1 = _mm512_fmadd_ps(c1, m, a);
    c2 = _mm512_fmadd_ps(c2, m, a), c3 = _mm512_fmadd_ps(c3, m, a);
    c4 = _mm512_fmadd_ps(c4, m, a), c5 = _mm512_fmadd_ps(c5, m, a);
    c6 = _mm512_fmadd_ps(c6, m, a), c7 = _mm512_fmadd_ps(c7, m, a);
    c8 = _mm512_fmadd_ps(c8, m, a), c9 = _mm512_fmadd_ps(c9, m, a);
    c10 = _mm512_fmadd_ps(c10, m, a), c11 = _mm512_fmadd_ps(c11, m, a);
  }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(c0, c1), _mm512_add_ps(c2, c3)),
                           _mm512_add_ps(_mm512_add_ps(c4, c5), _mm512_add_ps(c6, c7)));
  s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(c8, c9), _mm512_add_ps(c10, c11)));
  return _mm512_reduce_add_ps(s);
}
#endif

typedef struct peak_arg {
  long iters;
  bool wide; /* the 16-wide loop */
  volatile float sink;
} peak_arg;

static void peak_range(void *arg, size_t b, size_t e) {
  peak_arg *p = arg;
  for (size_t i = b; i < e; i++) {
#ifdef PEAK_FLOPS_PER_ITER
    p->sink = p->wide ? fma_loop512(p->iters, (float)i) : fma_loop(p->iters, (float)i);
#endif
  }
}

/* Peak GFLOP/s with `threads` threads: each runs one FMA loop. Best of many short repetitions
   (~0.3 ms each, for ~0.3 s): on a shared machine a long run is always interrupted by other load
   and reads low, which made the GEMM lines show more than 100% of "peak". */
static double measure_peak(kiln__pool *pool, int threads) {
#ifdef PEAK_FLOPS_PER_ITER
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
  peak_arg p = {.iters = 100000, .wide = kiln__isa_supported(KILN__ISA_AVX512)};
  double best = 0, t_end = now() + 0.3;
  for (int rep = 0; rep < 10 || now() < t_end; rep++) {
    double t0 = now();
    kiln__parallel_for(pool, (size_t)threads, peak_range, &p);
    double g = PEAK_FLOPS_PER_ITER * (p.wide ? 2 : 1) * (double)p.iters * threads /
               (now() - t0) / 1e9;
    if (g > best) best = g;
  }
  return best;
#else
  (void)pool, (void)threads;
  return 0;
#endif
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  double secs = argc > 2 ? atof(argv[2]) : 0.5;
  kiln__pool *pool = NULL;
  kiln_error err;
  if (kiln__pool_create(threads, &pool, &err) != KILN_OK) {
    fprintf(stderr, "%s\n", err.message);
    return 1;
  }
  double peak = measure_peak(pool, threads);
  const struct { const char *name; size_t m, n, k; } shapes[] = {
      {"256^3", 256, 256, 256},
      {"1024^3", 1024, 1024, 1024},
      {"bert_tiny qkv/out 128x256x256", 128, 256, 256},
      {"bert_tiny ffn1 128x1024x256", 128, 1024, 256},
      {"bert_tiny ffn2 128x256x1024", 128, 256, 1024},
      {"minilm qkv/out 128x384x384", 128, 384, 384},
      {"minilm ffn1 128x1536x384", 128, 1536, 384},
      {"minilm ffn2 128x384x1536", 128, 384, 1536},
  };
  printf("gemm: packed = the cpu backend's SGEMM (B packed ahead), ref = %s; threads %d, "
         "measured peak %.1f GFLOP/s (%s FMA loop)\n", GEMM_NAME_STR, threads, peak,
         kiln__isa_supported(KILN__ISA_AVX512) ? "AVX-512" : "AVX2");
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    size_t m = shapes[s].m, n = shapes[s].n, k = shapes[s].k;
    float *a = malloc(m * k * sizeof *a), *b = malloc(k * n * sizeof *b), *c = malloc(m * n * sizeof *c);
    for (size_t i = 0; i < m * k; i++) a[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < k * n; i++) b[i] = (float)(i % 5) * 0.1f;
    kiln__isa isa;
    kiln__sgemm_packed pb;
    kiln_error err;
    if (kiln__isa_select(&isa, &err) != KILN_OK ||
        kiln__sgemm_pack_b(isa, false, k, n, b, n, &pb, &err) != KILN_OK) {
      fprintf(stderr, "bench_gemm: %s\n", err.message);
      return 1;
    }
    kiln__sgemm_args g = {.m = m, .n = n, .k = k, .a = a, .lda = k, .pb = &pb, .c = c,
                          .ldc = n, .alpha = 1.0f};
    for (int which = 0; which < 2; which++) {
      double best = 1e30, t_end = now() + secs;
      int runs = 0;
      do {
        double t0 = now();
        if (which == 0) kiln__sgemm_run(pool, isa, &g);
        else GEMM_FN(pool, false, false, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
        double t = now() - t0;
        if (runs > 0 && t < best) best = t; /* the first run warms up */
        runs++;
      } while (now() < t_end || runs < 4);
      double gf = 2.0 * (double)m * (double)n * (double)k / best / 1e9;
      printf("gemm %-8s %-32s %8.1f GFLOP/s  %5.1f%% of peak  (best of %d)\n",
             which == 0 ? "packed" : "ref", shapes[s].name, gf,
             peak > 0 ? 100.0 * gf / peak : 0.0, runs - 1);
    }
    kiln__sgemm_packed_free(&pb);
    free(a), free(b), free(c);
  }
  kiln__pool_free(pool);
  return 0;
}
