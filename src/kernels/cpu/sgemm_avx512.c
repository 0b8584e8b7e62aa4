/* The AVX-512F SGEMM microkernel: an 8 x 32 register tile (16 zmm accumulators, 2 B vectors and
 * one broadcast of A: 19 of the 32 zmm registers). Compiled for every x86-64 build through the
 * target attribute; it only runs where cpuid reports AVX-512F. */
#include "kernels/cpu/sgemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f")))
#define MR 8
#define NR 32

/* Stores one full 32-wide row with the epilogue, while it is still in registers. */
TARGET static inline __attribute__((always_inline)) void
store_row(float *restrict c, size_t r, __m512 v0, __m512 v1, const kiln__uk_store *s) {
  const kiln__epilogue *ep = s->ep;
  if (s->alpha != 1.0f) {
    __m512 alpha = _mm512_set1_ps(s->alpha);
    v0 = _mm512_mul_ps(v0, alpha);
    v1 = _mm512_mul_ps(v1, alpha);
  }
  if (s->load_c) {
    v0 = _mm512_add_ps(v0, _mm512_loadu_ps(c));
    v1 = _mm512_add_ps(v1, _mm512_loadu_ps(c + 16));
  }
  if (ep) {
    if (ep->bias) {
      if (ep->bias_per_row) {
        __m512 b = _mm512_set1_ps(ep->bias[s->row0 + r]);
        v0 = _mm512_add_ps(v0, b);
        v1 = _mm512_add_ps(v1, b);
      } else {
        v0 = _mm512_add_ps(v0, _mm512_loadu_ps(ep->bias + s->col0));
        v1 = _mm512_add_ps(v1, _mm512_loadu_ps(ep->bias + s->col0 + 16));
      }
    }
    if (ep->residual) {
      const float *res = ep->residual + (s->row0 + r) * ep->ldr + s->col0;
      v0 = _mm512_add_ps(v0, _mm512_loadu_ps(res));
      v1 = _mm512_add_ps(v1, _mm512_loadu_ps(res + 16));
    }
    if (ep->act == KILN__ACT_RELU) {
      v0 = _mm512_max_ps(v0, _mm512_setzero_ps());
      v1 = _mm512_max_ps(v1, _mm512_setzero_ps());
    } else if (ep->act == KILN__ACT_CLIP) {
      __m512 lo = _mm512_set1_ps(ep->lo), hi = _mm512_set1_ps(ep->hi);
      v0 = _mm512_min_ps(_mm512_max_ps(v0, lo), hi);
      v1 = _mm512_min_ps(_mm512_max_ps(v1, lo), hi);
    }
  }
  _mm512_storeu_ps(c, v0);
  _mm512_storeu_ps(c + 16, v1);
}

TARGET void kiln__sgemm_uk_8x32__avx512(size_t kc, const float *restrict a,
                                        const float *restrict b, float *restrict c, size_t ldc,
                                        size_t mr, size_t nr, const kiln__uk_store *s) {
  __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps();
  __m512 c10 = _mm512_setzero_ps(), c11 = _mm512_setzero_ps();
  __m512 c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps();
  __m512 c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps();
  __m512 c40 = _mm512_setzero_ps(), c41 = _mm512_setzero_ps();
  __m512 c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps();
  __m512 c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps();
  __m512 c70 = _mm512_setzero_ps(), c71 = _mm512_setzero_ps();
  for (size_t p = 0; p < kc; p++) {
    /* A's panel a line (two k steps) at a time, A_PF floats ahead (sgemm.h). */
    if (p % 2 == 0)
      _mm_prefetch((const char *)((uintptr_t)a + KILN__SGEMM_A_PF * sizeof *a), _MM_HINT_T0);
    __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), av;
#define ROW(i)                                  \
  av = _mm512_set1_ps(a[i]);                    \
  c##i##0 = _mm512_fmadd_ps(av, b0, c##i##0);   \
  c##i##1 = _mm512_fmadd_ps(av, b1, c##i##1);
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
    a += MR;
    b += NR;
  }
  if (mr == MR && nr == NR) {
    store_row(c, 0, c00, c01, s);
    store_row(c + ldc, 1, c10, c11, s);
    store_row(c + 2 * ldc, 2, c20, c21, s);
    store_row(c + 3 * ldc, 3, c30, c31, s);
    store_row(c + 4 * ldc, 4, c40, c41, s);
    store_row(c + 5 * ldc, 5, c50, c51, s);
    store_row(c + 6 * ldc, 6, c60, c61, s);
    store_row(c + 7 * ldc, 7, c70, c71, s);
    return;
  }
  _Alignas(64) float t[MR * NR];
  _mm512_store_ps(t + 0 * NR, c00), _mm512_store_ps(t + 0 * NR + 16, c01);
  _mm512_store_ps(t + 1 * NR, c10), _mm512_store_ps(t + 1 * NR + 16, c11);
  _mm512_store_ps(t + 2 * NR, c20), _mm512_store_ps(t + 2 * NR + 16, c21);
  _mm512_store_ps(t + 3 * NR, c30), _mm512_store_ps(t + 3 * NR + 16, c31);
  _mm512_store_ps(t + 4 * NR, c40), _mm512_store_ps(t + 4 * NR + 16, c41);
  _mm512_store_ps(t + 5 * NR, c50), _mm512_store_ps(t + 5 * NR + 16, c51);
  _mm512_store_ps(t + 6 * NR, c60), _mm512_store_ps(t + 6 * NR + 16, c61);
  _mm512_store_ps(t + 7 * NR, c70), _mm512_store_ps(t + 7 * NR + 16, c71);
  kiln__uk_store_tile(t, NR, c, ldc, mr, nr, s);
}

#endif
