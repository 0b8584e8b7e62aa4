/* The AVX2+FMA SGEMM microkernel: a 6 x 16 register tile (12 accumulators, 2 B vectors and one
 * broadcast of A: 15 of the 16 ymm registers). ISA flags are on the functions, not the file, so
 * the library builds for baseline x86-64 and this code only runs where cpuid says it can. */
#include "kernels/cpu/sgemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "kernels/cpu/avx2_tail.h"

#define TARGET __attribute__((target("avx2,fma")))
#define MR 6
#define NR 16

/* ReLU (lo = 0) or Clip [lo, hi] in registers; other activations run after the store. */
TARGET static inline __attribute__((always_inline)) __m256 act_in_regs(__m256 v, kiln__act act,
                                                                       __m256 lo, __m256 hi) {
  if (act == KILN__ACT_RELU) return _mm256_max_ps(v, lo);
  if (act == KILN__ACT_CLIP) return _mm256_min_ps(_mm256_max_ps(v, lo), hi);
  return v;
}

/* Stores one full 16-wide row with the epilogue, while it is still in registers. */
TARGET static inline __attribute__((always_inline)) void
store_row(float *restrict c, size_t r, __m256 v0, __m256 v1, const kiln__uk_store *s) {
  const kiln__epilogue *ep = s->ep;
  __m256 alpha = _mm256_set1_ps(s->alpha);
  if (s->alpha != 1.0f) {
    v0 = _mm256_mul_ps(v0, alpha);
    v1 = _mm256_mul_ps(v1, alpha);
  }
  if (s->load_c) {
    v0 = _mm256_add_ps(v0, _mm256_loadu_ps(c));
    v1 = _mm256_add_ps(v1, _mm256_loadu_ps(c + 8));
  }
  if (ep) {
    if (ep->bias) {
      if (ep->bias_per_row) {
        __m256 b = _mm256_set1_ps(ep->bias[s->row0 + r]);
        v0 = _mm256_add_ps(v0, b);
        v1 = _mm256_add_ps(v1, b);
      } else {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(ep->bias + s->col0));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(ep->bias + s->col0 + 8));
      }
    }
    if (ep->residual) {
      const float *res = ep->residual + (s->row0 + r) * ep->ldr + s->col0;
      v0 = _mm256_add_ps(v0, _mm256_loadu_ps(res));
      v1 = _mm256_add_ps(v1, _mm256_loadu_ps(res + 8));
    }
    if (ep->act == KILN__ACT_RELU || ep->act == KILN__ACT_CLIP) {
      bool clip = ep->act == KILN__ACT_CLIP;
      __m256 lo = clip ? _mm256_set1_ps(ep->lo) : _mm256_setzero_ps();
      __m256 hi = clip ? _mm256_set1_ps(ep->hi) : lo;
      v0 = act_in_regs(v0, ep->act, lo, hi);
      v1 = act_in_regs(v1, ep->act, lo, hi);
    }
  }
  _mm256_storeu_ps(c, v0);
  _mm256_storeu_ps(c + 8, v1);
}

/* The first nr <= 16 columns of a row held in two vectors, with plain stores (avx2_tail.h: a
   masked store is microcoded on AMD). */
TARGET static inline __attribute__((always_inline)) void put_row(float *c, __m256 v0, __m256 v1,
                                                                   size_t nr) {
  if (nr >= 8) {
    _mm256_storeu_ps(c, v0);
    if (nr == NR) _mm256_storeu_ps(c + 8, v1);
    else if (nr > 8) kiln__avx2_store_head(c + 8, v1, nr - 8);
  } else {
    kiln__avx2_store_head(c, v0, nr);
  }
}

/* Stores a tile's first nr columns when its epilogue is at most a bias per row and ReLU or
   Clip (convs' usual one), deciding that once per tile: store_row re-reads the epilogue's fields
   and tests them for every row (a store to C may alias them), which cost pointwise convs with
   k = 16-32 10-35% of their time (bench/RESULTS.md, sixteenth session). Same operations in the same order
   as store_row, so the results are bit-identical. Returns false, storing nothing, when the tile
   needs the general path (alpha, load_c, a residual or a bias per column). */
TARGET static inline __attribute__((always_inline)) bool
store_tile_simple(float *restrict c, size_t ldc, size_t mr, size_t nr, const kiln__uk_store *s,
                  __m256 c00, __m256 c01, __m256 c10, __m256 c11, __m256 c20, __m256 c21,
                  __m256 c30, __m256 c31, __m256 c40, __m256 c41, __m256 c50, __m256 c51) {
  const kiln__epilogue *ep = s->ep;
  if (s->alpha != 1.0f || s->load_c ||
      (ep && (ep->residual || (ep->bias && !ep->bias_per_row))))
    return false;
  const float *bias = ep && ep->bias ? ep->bias + s->row0 : NULL;
  kiln__act act = ep ? ep->act : KILN__ACT_NONE;
  __m256 lo = _mm256_setzero_ps(), hi = lo;
  if (act == KILN__ACT_CLIP) lo = _mm256_set1_ps(ep->lo), hi = _mm256_set1_ps(ep->hi);
#define KILN_ROW(i)                                                            \
  if (bias) {                                                                  \
    __m256 b = _mm256_set1_ps(bias[i]);                                        \
    c##i##0 = _mm256_add_ps(c##i##0, b), c##i##1 = _mm256_add_ps(c##i##1, b); \
  }                                                                            \
  c##i##0 = act_in_regs(c##i##0, act, lo, hi);                                 \
  c##i##1 = act_in_regs(c##i##1, act, lo, hi);                                 \
  put_row(c + i * ldc, c##i##0, c##i##1, nr);
  KILN_ROW(0)
  if (mr > 1) { KILN_ROW(1) }
  if (mr > 2) { KILN_ROW(2) }
  if (mr > 3) { KILN_ROW(3) }
  if (mr > 4) { KILN_ROW(4) }
  if (mr > 5) { KILN_ROW(5) }
#undef KILN_ROW
  return true;
}

/* An edge panel with at most 8 live columns (ResNet's 7x7 stage: 49 = 3 x 16 + 1) computes only
   the left half of the 16-wide panel: half the FMAs of the full tile. */
TARGET static inline __attribute__((always_inline)) void
uk_6x8(size_t kc, const float *restrict a, const float *restrict b, size_t ldb, float *restrict c,
       size_t ldc, size_t mr, size_t nr, const kiln__uk_store *s) {
  __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
  for (size_t p = 0; p < kc; p++) {
    __m256 b0 = _mm256_loadu_ps(b);
    c0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 0), b0, c0);
    c1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 1), b0, c1);
    c2 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 2), b0, c2);
    c3 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 3), b0, c3);
    c4 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 4), b0, c4);
    c5 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + 5), b0, c5);
    a += MR;
    b += ldb;
  }
  __m256 z = _mm256_setzero_ps();
  if (store_tile_simple(c, ldc, mr, nr, s, c0, z, c1, z, c2, z, c3, z, c4, z, c5, z)) return;
  _Alignas(32) float t[MR * 8];
  _mm256_store_ps(t + 0, c0), _mm256_store_ps(t + 8, c1), _mm256_store_ps(t + 16, c2);
  _mm256_store_ps(t + 24, c3), _mm256_store_ps(t + 32, c4), _mm256_store_ps(t + 40, c5);
  kiln__uk_store_tile(t, 8, c, ldc, mr, nr, s);
}

/* An edge panel of one or two live columns (7x7 planes: 49 = 3 x 16 + 1; 55x55: 3025 = 189 x 16
   + 1) as a column of A times a scalar of B: one FMA per column and k instead of uk_6x8's six.
   The six rows are one masked load of the packed A panel; four partial sums per column hide the
   FMA latency (summed at the end: float reordering only). */
TARGET static inline __attribute__((always_inline)) void
uk_6xnarrow(size_t kc, const float *restrict a, const float *restrict b, size_t ldb,
            float *restrict c, size_t ldc, size_t mr, size_t nr, const kiln__uk_store *s,
            const int ncol) {
  const __m256i mask = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
  __m256 x00 = _mm256_setzero_ps(), x01 = x00, x02 = x00, x03 = x00;
  __m256 x10 = x00, x11 = x00, x12 = x00, x13 = x00;
  size_t p = 0;
  for (; p + 4 <= kc; p += 4) {
    const float *ap = a + p * MR, *bp = b + p * ldb;
#define STEP(u)                                                                             \
  {                                                                                         \
    __m256 av = _mm256_maskload_ps(ap + (u)*MR, mask);                                      \
    x0##u = _mm256_fmadd_ps(av, _mm256_broadcast_ss(bp + (u)*ldb), x0##u);                  \
    if (ncol > 1) x1##u = _mm256_fmadd_ps(av, _mm256_broadcast_ss(bp + (u)*ldb + 1), x1##u); \
  }
    STEP(0) STEP(1) STEP(2) STEP(3)
#undef STEP
  }
  for (; p < kc; p++) {
    __m256 av = _mm256_maskload_ps(a + p * MR, mask);
    x00 = _mm256_fmadd_ps(av, _mm256_broadcast_ss(b + p * ldb), x00);
    if (ncol > 1) x10 = _mm256_fmadd_ps(av, _mm256_broadcast_ss(b + p * ldb + 1), x10);
  }
  _Alignas(32) float col[2][8], t[MR * 2];
  _mm256_store_ps(col[0], _mm256_add_ps(_mm256_add_ps(x00, x01), _mm256_add_ps(x02, x03)));
  _mm256_store_ps(col[1], _mm256_add_ps(_mm256_add_ps(x10, x11), _mm256_add_ps(x12, x13)));
  for (int r = 0; r < MR; r++) t[r * 2] = col[0][r], t[r * 2 + 1] = col[1][r];
  kiln__uk_store_tile(t, 2, c, ldc, mr, nr, s);
}

/* One row of A (a classifier's Gemm on one image, m = 1): the 6-row tile would run 6 FMAs per
   B vector for 1 used. Two k steps per iteration on separate accumulators keep 4 FMA chains
   going; the loads of B are the bound. */
TARGET static inline __attribute__((always_inline)) void
uk_1x16(size_t kc, const float *restrict a, const float *restrict b, size_t ldb, float *restrict c,
        size_t nr, const kiln__uk_store *s) {
  __m256 x0 = _mm256_setzero_ps(), x1 = x0, y0 = x0, y1 = x0;
  size_t p = 0;
  for (; p + 2 <= kc; p += 2, a += 2 * MR, b += 2 * ldb) {
    __m256 a0 = _mm256_broadcast_ss(a), a1 = _mm256_broadcast_ss(a + MR);
    x0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b), x0);
    x1 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b + 8), x1);
    y0 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(b + ldb), y0);
    y1 = _mm256_fmadd_ps(a1, _mm256_loadu_ps(b + ldb + 8), y1);
  }
  if (p < kc) {
    __m256 a0 = _mm256_broadcast_ss(a);
    x0 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b), x0);
    x1 = _mm256_fmadd_ps(a0, _mm256_loadu_ps(b + 8), x1);
  }
  x0 = _mm256_add_ps(x0, y0);
  x1 = _mm256_add_ps(x1, y1);
  if (nr == NR) {
    store_row(c, 0, x0, x1, s);
    return;
  }
  _Alignas(32) float t[NR];
  _mm256_store_ps(t, x0), _mm256_store_ps(t + 8, x1);
  kiln__uk_store_tile(t, NR, c, 0, 1, nr, s);
}

/* Software prefetch of an unpacked B and of C, PF_AHEAD floats (4 panels) to the right of the
   tile: 2 and 8 panels ahead were slower (MobileNet-v2's 32->16 at 112x112). */
#define PF_AHEAD 64
enum { PF_NONE, PF_C, PF_BC };

/* The address n floats past p, as an integer: a prefetch may point past the end of an array,
   and a pointer there must not be formed. */
static inline const char *ahead(const float *p, size_t n) {
  return (const char *)((uintptr_t)p + n * sizeof *p);
}

/* b's rows are ldb floats apart: NR in a packed panel, or a row of an unpacked B (a pointwise
   conv's input planes, read in place). Inlined into every entry point, so the packed one keeps
   a constant stride. pf (compile-time) prefetches C's rows (PF_C), and B's rows (PF_BC). */
TARGET static inline __attribute__((always_inline)) void
uk_6x16(size_t kc, const float *restrict a, const float *restrict b, size_t ldb,
        float *restrict c, size_t ldc, size_t mr, size_t nr, const kiln__uk_store *s,
        const int pf) {
  if (nr <= 2) {
    if (nr == 1) uk_6xnarrow(kc, a, b, ldb, c, ldc, mr, nr, s, 1);
    else uk_6xnarrow(kc, a, b, ldb, c, ldc, mr, nr, s, 2);
    return;
  }
  if (mr == 1 && nr > 8) {
    uk_1x16(kc, a, b, ldb, c, nr, s);
    return;
  }
  if (nr <= 8) {
    uk_6x8(kc, a, b, ldb, c, ldc, mr, nr, s);
    return;
  }
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  if (pf != PF_NONE)
    for (size_t r = 0; r < mr; r++) _mm_prefetch(ahead(c + r * ldc, PF_AHEAD), _MM_HINT_T0);
#define ROW(i)                                  \
  av = _mm256_broadcast_ss(a + i);              \
  c##i##0 = _mm256_fmadd_ps(av, b0, c##i##0);   \
  c##i##1 = _mm256_fmadd_ps(av, b1, c##i##1);
#define STEP()                                                       \
  {                                                                  \
    __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), av; \
    if (pf == PF_BC) _mm_prefetch(ahead(b, PF_AHEAD), _MM_HINT_T0);  \
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)                        \
    a += MR;                                                         \
    b += ldb;                                                        \
  }
  /* Two k steps per iteration, A's panel prefetched once per pair (the pair's 12 floats are
     under a line), A_PF floats ahead (sgemm.h: weights stream from memory on small planes).
     Not a `p % 2` test every step: on the Zen 3 host that branch alone made whole models 8-10%
     slower in the phases when another tenant shares the core (bench/RESULTS.md, sixteenth
     session; presumably the shared branch predictor), and no faster in the others. */
  size_t p = 0;
  for (; p + 2 <= kc; p += 2) {
    _mm_prefetch(ahead(a, KILN__SGEMM_A_PF), _MM_HINT_T0);
    STEP() STEP()
  }
  if (p < kc) STEP()
#undef STEP
#undef ROW
  if (nr == NR) {
    /* Full-width rows store from registers, also in the last row tile of an m that is not a
       multiple of 6 (every power of two: most layers' channel counts). */
    if (store_tile_simple(c, ldc, mr, NR, s, c00, c01, c10, c11, c20, c21, c30, c31, c40, c41,
                          c50, c51))
      return;
    store_row(c, 0, c00, c01, s);
    if (mr > 1) store_row(c + ldc, 1, c10, c11, s);
    if (mr > 2) store_row(c + 2 * ldc, 2, c20, c21, s);
    if (mr > 3) store_row(c + 3 * ldc, 3, c30, c31, s);
    if (mr > 4) store_row(c + 4 * ldc, 4, c40, c41, s);
    if (mr > 5) store_row(c + 5 * ldc, 5, c50, c51, s);
    return;
  }
  /* A narrower panel (the edge of n): from registers too, unless the epilogue needs the general
     path; the tile copy and kiln__uk_store_tile's scalar stores cost Winograd's short last blocks
     (13x13: 49 tiles) and the edge panels of odd planes ~2% of SqueezeNet. */
  if (store_tile_simple(c, ldc, mr, nr, s, c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50,
                        c51))
    return;
  _Alignas(32) float t[MR * NR];
  _mm256_store_ps(t + 0 * NR, c00), _mm256_store_ps(t + 0 * NR + 8, c01);
  _mm256_store_ps(t + 1 * NR, c10), _mm256_store_ps(t + 1 * NR + 8, c11);
  _mm256_store_ps(t + 2 * NR, c20), _mm256_store_ps(t + 2 * NR + 8, c21);
  _mm256_store_ps(t + 3 * NR, c30), _mm256_store_ps(t + 3 * NR + 8, c31);
  _mm256_store_ps(t + 4 * NR, c40), _mm256_store_ps(t + 4 * NR + 8, c41);
  _mm256_store_ps(t + 5 * NR, c50), _mm256_store_ps(t + 5 * NR + 8, c51);
  kiln__uk_store_tile(t, NR, c, ldc, mr, nr, s);
}

/* Four columns of the six rows at a time: a 4x4 transpose of rows 0-3 and an interleave of rows
   4-5, shuffled into the six whole 16-byte vectors that the panel's 24 floats of those columns
   are, so every store is a full one and none passes the panel's end (no masked stores: they are
   slow on AMD). */
TARGET void kiln__sgemm_pack_a_6__avx2(const float *restrict a, size_t lda, size_t kc,
                                       float *restrict dst) {
  const float *r0 = a, *r1 = a + lda, *r2 = a + 2 * lda, *r3 = a + 3 * lda;
  const float *r4 = a + 4 * lda, *r5 = a + 5 * lda;
  size_t p = 0;
  for (; p + 4 <= kc; p += 4, dst += 4 * MR) {
    __m128 x0 = _mm_loadu_ps(r0 + p), x1 = _mm_loadu_ps(r1 + p);
    __m128 x2 = _mm_loadu_ps(r2 + p), x3 = _mm_loadu_ps(r3 + p);
    __m128 y4 = _mm_loadu_ps(r4 + p), y5 = _mm_loadu_ps(r5 + p);
    _MM_TRANSPOSE4_PS(x0, x1, x2, x3); /* x_i: rows 0-3 of column p + i */
    /* rows 4-5 of columns p, p + 1 and of p + 2, p + 3 */
    __m128 lo = _mm_unpacklo_ps(y4, y5), hi = _mm_unpackhi_ps(y4, y5);
    _mm_storeu_ps(dst, x0);
    _mm_storeu_ps(dst + 4, _mm_shuffle_ps(lo, x1, _MM_SHUFFLE(1, 0, 1, 0)));
    _mm_storeu_ps(dst + 8, _mm_shuffle_ps(x1, lo, _MM_SHUFFLE(3, 2, 3, 2)));
    _mm_storeu_ps(dst + 12, x2);
    _mm_storeu_ps(dst + 16, _mm_shuffle_ps(hi, x3, _MM_SHUFFLE(1, 0, 1, 0)));
    _mm_storeu_ps(dst + 20, _mm_shuffle_ps(x3, hi, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  for (; p < kc; p++, dst += MR) {
    dst[0] = r0[p], dst[1] = r1[p], dst[2] = r2[p];
    dst[3] = r3[p], dst[4] = r4[p], dst[5] = r5[p];
  }
}

TARGET void kiln__sgemm_uk_6x16__avx2(size_t kc, const float *restrict a,
                                      const float *restrict b, float *restrict c, size_t ldc,
                                      size_t mr, size_t nr, const kiln__uk_store *s) {
  uk_6x16(kc, a, b, NR, c, ldc, mr, nr, s, PF_NONE);
}

TARGET void kiln__sgemm_uk_6x16c__avx2(size_t kc, const float *restrict a,
                                       const float *restrict b, float *restrict c, size_t ldc,
                                       size_t mr, size_t nr, const kiln__uk_store *s) {
  uk_6x16(kc, a, b, NR, c, ldc, mr, nr, s, PF_C);
}

TARGET void kiln__sgemm_uk_6x16s__avx2(size_t kc, const float *restrict a,
                                       const float *restrict b, size_t ldb, float *restrict c,
                                       size_t ldc, size_t mr, size_t nr,
                                       const kiln__uk_store *s) {
  uk_6x16(kc, a, b, ldb, c, ldc, mr, nr, s, PF_NONE);
}

TARGET void kiln__sgemm_uk_6x16sc__avx2(size_t kc, const float *restrict a,
                                        const float *restrict b, size_t ldb, float *restrict c,
                                        size_t ldc, size_t mr, size_t nr,
                                        const kiln__uk_store *s) {
  uk_6x16(kc, a, b, ldb, c, ldc, mr, nr, s, PF_C);
}

TARGET void kiln__sgemm_uk_6x16sbc__avx2(size_t kc, const float *restrict a,
                                         const float *restrict b, size_t ldb, float *restrict c,
                                         size_t ldc, size_t mr, size_t nr,
                                         const kiln__uk_store *s) {
  uk_6x16(kc, a, b, ldb, c, ldc, mr, nr, s, PF_BC);
}

#endif
