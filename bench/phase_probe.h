/* The host-phase probe of bench/pair.c and bench/lockstep.c: microseconds to store 16 KiB (in
 * L1) 64 times with 32-byte stores 4 bytes off alignment, half of which cross a cache line. On
 * the Zen 3 host (bench/RESULTS.md, sixteenth session) such stores ran ~1.6x slower in the slow
 * phases, aligned ones ~1.2x, while L1 loads and register-only FMAs did not change at all; the
 * probe splits iterations at 1.25 times its fastest reading. Header-only: two bench tools. */
#ifndef KILN_BENCH_PHASE_PROBE_H
#define KILN_BENCH_PHASE_PROBE_H
#include <string.h>
#include <time.h>

static double phase_now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx"), noinline)) static void phase_store_avx(float *p) {
  __m256 v = _mm256_set1_ps(1.0f);
  for (int r = 0; r < 64; r++) {
    for (size_t i = 0; i < 4096; i += 8) _mm256_storeu_ps(p + i, v);
    __asm__ volatile("" : : "r"(p) : "memory");
  }
}
#endif

/* buf: at least 4096 + 8 floats. */
static double phase_probe(float *buf) {
  float *p = buf + 1; /* 4 bytes past buf's (at least 4-byte) alignment */
  double t0 = phase_now_us();
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx")) {
    phase_store_avx(p);
    return phase_now_us() - t0;
  }
#endif
  float v[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  for (int r = 0; r < 64; r++) {
    for (size_t i = 0; i < 4096; i += 8) memcpy(p + i, v, sizeof v);
    __asm__ volatile("" : : "r"(p) : "memory");
  }
  return phase_now_us() - t0;
}
#endif
