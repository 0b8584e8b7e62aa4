/* What the host's slow phases slow (bench/RESULTS.md, nineteenth session): ROUNDS rounds of
 * eleven loops, each timed on its own, then per loop the minimum, the median and their ratio.
 * On the Zen 3 VM the median over the minimum read up to 2x for stores to L1, 1.2-1.5x for
 * cache and memory traffic and 1.14-1.27x for FMA chains in registers: the signature of another
 * tenant on the same core (a frequency change would slow the FMA chains as much as the stores).
 * A kernel whose time rises with the store and cache rows more than ORT's is what loses p50
 * there. Pin it to one CPU for a clean reading (taskset -c 0). x86 with AVX2 only; not part of
 * ctest.
 *
 *   cc -std=c11 -D_POSIX_C_SOURCE=200809L -O2 -mavx2 -mfma bench/host_probe.c -o build/host_probe
 *   taskset -c 0 build/host_probe [ROUNDS]          (default 200; ~40 ms a round) */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { LOOPS = 11, MAX_ROUNDS = 10000 };

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

/* The loops are out of line and end each pass with a compiler barrier, so none is folded away. */
__attribute__((noinline)) static void stores(float *p, size_t n, int passes) {
  const __m256 v = _mm256_set1_ps(1.0f);
  for (int r = 0; r < passes; r++) {
    for (size_t i = 0; i < n; i += 8) _mm256_storeu_ps(p + i, v);
    __asm__ volatile("" : : "r"(p) : "memory");
  }
}

__attribute__((noinline)) static float loads(const float *p, size_t n, int passes) {
  __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
  for (int r = 0; r < passes; r++) {
    for (size_t i = 0; i < n; i += 32) {
      a = _mm256_add_ps(a, _mm256_loadu_ps(p + i));
      b = _mm256_add_ps(b, _mm256_loadu_ps(p + i + 8));
      c = _mm256_add_ps(c, _mm256_loadu_ps(p + i + 16));
      d = _mm256_add_ps(d, _mm256_loadu_ps(p + i + 24));
    }
    __asm__ volatile("" : : "r"(p) : "memory");
  }
  float f[8];
  _mm256_storeu_ps(f, _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
  return f[0];
}

__attribute__((noinline)) static void copy(float *d, const float *s, size_t n) {
  for (size_t i = 0; i < n; i += 8) _mm256_storeu_ps(d + i, _mm256_loadu_ps(s + i));
  __asm__ volatile("" : : "r"(d) : "memory");
}

/* 8 independent chains: two FMA pipes of 4-cycle latency kept full, nothing touching memory
   (named variables: gcc kept an array of them in memory, which made this a store-forwarding
   loop). */
__attribute__((noinline)) static float fmas(int steps) {
  const __m256 m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(0.001f);
  __m256 a0 = _mm256_set1_ps(0.0f), a1 = _mm256_set1_ps(1.0f), a2 = _mm256_set1_ps(2.0f);
  __m256 a3 = _mm256_set1_ps(3.0f), a4 = _mm256_set1_ps(4.0f), a5 = _mm256_set1_ps(5.0f);
  __m256 a6 = _mm256_set1_ps(6.0f), a7 = _mm256_set1_ps(7.0f);
  for (int r = 0; r < steps; r++) {
    a0 = _mm256_fmadd_ps(a0, m, c), a1 = _mm256_fmadd_ps(a1, m, c);
    a2 = _mm256_fmadd_ps(a2, m, c), a3 = _mm256_fmadd_ps(a3, m, c);
    a4 = _mm256_fmadd_ps(a4, m, c), a5 = _mm256_fmadd_ps(a5, m, c);
    a6 = _mm256_fmadd_ps(a6, m, c), a7 = _mm256_fmadd_ps(a7, m, c);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  float f[8];
  _mm256_storeu_ps(f, s);
  return f[0];
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 200;
  if (rounds < 1 || rounds > MAX_ROUNDS) {
    fprintf(stderr, "usage: host_probe [ROUNDS (1-%d)]\n", MAX_ROUNDS);
    return 2;
  }
  const size_t l1 = 4096, l2 = 49152, big = (size_t)1 << 20; /* floats: 16 KiB, 192 KiB, 4 MiB */
  const size_t mem = (size_t)64 << 20;                       /* 256 MiB, walked 4 MiB a round */
  float *a = aligned_alloc(64, (l1 + 16) * sizeof(float));
  float *b = aligned_alloc(64, l2 * sizeof(float));
  float *c = aligned_alloc(64, 2 * big * sizeof(float));
  float *d = aligned_alloc(64, mem * sizeof(float));
  float *e = aligned_alloc(64, mem * sizeof(float));
  double *t = malloc((size_t)rounds * LOOPS * sizeof(double));
  if (!a || !b || !c || !d || !e || !t) {
    fprintf(stderr, "host_probe: out of memory\n");
    return 1;
  }
  memset(a, 0, (l1 + 16) * sizeof(float));
  memset(b, 0, l2 * sizeof(float));
  memset(c, 0, 2 * big * sizeof(float));
  memset(d, 0, mem * sizeof(float));
  memset(e, 0, mem * sizeof(float));
  static const char *const names[LOOPS] = {
      "stores L1 aligned", "stores L1 4 B off", "loads L1",     "loads L2 (192 KiB)",
      "loads 4 MiB",       "loads memory",      "stores L2",    "stores 4 MiB",
      "stores memory",     "copy 4 MiB",        "FMA chains"};
  volatile float sink = 0;
  size_t off = 0;
  for (int r = 0; r < rounds; r++, off = (off + big) % (mem - big)) {
    double *row = t + (size_t)r * LOOPS, t0;
#define TIME(i, stmt) (t0 = now_us(), (stmt), row[i] = now_us() - t0)
    TIME(0, stores(a, l1, 64));
    TIME(1, stores(a + 1, l1, 64)); /* half the 32-byte stores cross a line */
    TIME(2, sink += loads(a, l1, 64));
    TIME(3, sink += loads(b, l2, 4));
    TIME(4, sink += loads(c, big, 1));
    TIME(5, sink += loads(d + off, big, 1));
    TIME(6, stores(b, l2, 4));
    TIME(7, stores(c, big, 1));
    TIME(8, stores(e + off, big, 1));
    TIME(9, copy(c + big, c, big));
    TIME(10, sink += fmas(20000));
#undef TIME
  }
  printf("%-20s %10s %10s %8s   (us per loop, %d rounds)\n", "loop", "min", "median", "med/min",
         rounds);
  double *col = malloc((size_t)rounds * sizeof(double));
  if (!col) return 1;
  for (int i = 0; i < LOOPS; i++) {
    for (int r = 0; r < rounds; r++) col[r] = t[(size_t)r * LOOPS + i];
    qsort(col, (size_t)rounds, sizeof *col, by_value);
    printf("%-20s %10.1f %10.1f %8.2f\n", names[i], col[0], col[rounds / 2],
           col[rounds / 2] / col[0]);
  }
  free(col);
  free(t);
  free(a), free(b), free(c), free(d), free(e);
  return sink == 12345.0f; /* keeps sink live; 0 in practice */
}
