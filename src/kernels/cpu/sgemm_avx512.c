/* The AVX-512F SGEMM microkernel: an 8 x 32 register tile (16 zmm accumulators, 2 B vectors and
 * one broadcast of A: 19 of the 32 zmm registers), narrower kernels for edge panels, and a twin
 * that reads an unpacked B in place. Compiled for every x86-64 build through the
 * target attribute; it only runs where cpuid reports AVX-512F and VL (VL gives the ymm edge
 * kernels all 32 registers). */
#include "kernels/cpu/sgemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define MR 8
#define NR 32

/* Loads and stores of a row's two 16-lane halves: whole vectors, or the lanes of m0 and m1 (an
   edge panel's live columns; masked lanes are never accessed). */
TARGET static inline __attribute__((always_inline)) __m512 ldm(const float *p, __mmask16 m,
                                                               bool full) {
  return full ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p);
}

/* Stores one row of the tile with the epilogue, while it is still in registers: all 32 columns
   (full), or the lanes of m0 and m1. */
TARGET static inline __attribute__((always_inline)) void
store_rowm(float *restrict c, size_t r, __m512 v0, __m512 v1, __mmask16 m0, __mmask16 m1,
           const bool full, const kiln__uk_store *s) {
  const kiln__epilogue *ep = s->ep;
  if (s->alpha != 1.0f) {
    __m512 alpha = _mm512_set1_ps(s->alpha);
    v0 = _mm512_mul_ps(v0, alpha);
    v1 = _mm512_mul_ps(v1, alpha);
  }
  if (s->load_c) {
    v0 = _mm512_add_ps(v0, ldm(c, m0, full));
    v1 = _mm512_add_ps(v1, ldm(c + 16, m1, full));
  }
  if (ep) {
    if (ep->bias) {
      if (ep->bias_per_row) {
        __m512 b = _mm512_set1_ps(ep->bias[s->row0 + r]);
        v0 = _mm512_add_ps(v0, b);
        v1 = _mm512_add_ps(v1, b);
      } else {
        v0 = _mm512_add_ps(v0, ldm(ep->bias + s->col0, m0, full));
        v1 = _mm512_add_ps(v1, ldm(ep->bias + s->col0 + 16, m1, full));
      }
    }
    if (ep->residual) {
      const float *res = ep->residual + (s->row0 + r) * ep->ldr + s->col0;
      v0 = _mm512_add_ps(v0, ldm(res, m0, full));
      v1 = _mm512_add_ps(v1, ldm(res + 16, m1, full));
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
  if (full) {
    _mm512_storeu_ps(c, v0);
    _mm512_storeu_ps(c + 16, v1);
  } else {
    _mm512_mask_storeu_ps(c, m0, v0);
    _mm512_mask_storeu_ps(c + 16, m1, v1);
  }
}

TARGET static inline __attribute__((always_inline)) void
store_row(float *restrict c, size_t r, __m512 v0, __m512 v1, const kiln__uk_store *s) {
  store_rowm(c, r, v0, v1, 0xFFFF, 0xFFFF, true, s);
}

/* The lane masks of nr <= 32 live columns. */
static inline __mmask16 lanes_lo(size_t nr) {
  return (__mmask16)(nr >= 16 ? 0xFFFFu : (1u << nr) - 1);
}
static inline __mmask16 lanes_hi(size_t nr) {
  return (__mmask16)(nr <= 16 ? 0u : nr >= 32 ? 0xFFFFu : (1u << (nr - 16)) - 1);
}

/* An edge panel with at most 16 live columns (a 14x14 plane: 196 = 6 x 32 + 4; 7x7: 49 = 32 +
   17) computes the left half of the panel only: half the FMAs of the full tile, and 8
   accumulators are still enough chains for two FMA pipes of latency 4. */
TARGET static inline __attribute__((always_inline)) void
uk_8x16(size_t kc, const float *restrict a, const float *restrict b, size_t ldb, float *restrict c,
        size_t ldc, size_t mr, size_t nr, const kiln__uk_store *s) {
  __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
  for (size_t p = 0; p < kc; p++) {
    if (p % 2 == 0)
      _mm_prefetch((const char *)((uintptr_t)a + KILN__SGEMM_A_PF * sizeof *a), _MM_HINT_T0);
    __m512 b0 = _mm512_loadu_ps(b);
    c0 = _mm512_fmadd_ps(_mm512_set1_ps(a[0]), b0, c0);
    c1 = _mm512_fmadd_ps(_mm512_set1_ps(a[1]), b0, c1);
    c2 = _mm512_fmadd_ps(_mm512_set1_ps(a[2]), b0, c2);
    c3 = _mm512_fmadd_ps(_mm512_set1_ps(a[3]), b0, c3);
    c4 = _mm512_fmadd_ps(_mm512_set1_ps(a[4]), b0, c4);
    c5 = _mm512_fmadd_ps(_mm512_set1_ps(a[5]), b0, c5);
    c6 = _mm512_fmadd_ps(_mm512_set1_ps(a[6]), b0, c6);
    c7 = _mm512_fmadd_ps(_mm512_set1_ps(a[7]), b0, c7);
    a += MR;
    b += ldb;
  }
  const __mmask16 m = lanes_lo(nr);
  const __m512 z = _mm512_setzero_ps();
  store_rowm(c, 0, c0, z, m, 0, false, s);
  if (mr > 1) store_rowm(c + ldc, 1, c1, z, m, 0, false, s);
  if (mr > 2) store_rowm(c + 2 * ldc, 2, c2, z, m, 0, false, s);
  if (mr > 3) store_rowm(c + 3 * ldc, 3, c3, z, m, 0, false, s);
  if (mr > 4) store_rowm(c + 4 * ldc, 4, c4, z, m, 0, false, s);
  if (mr > 5) store_rowm(c + 5 * ldc, 5, c5, z, m, 0, false, s);
  if (mr > 6) store_rowm(c + 6 * ldc, 6, c6, z, m, 0, false, s);
  if (mr > 7) store_rowm(c + 7 * ldc, 7, c7, z, m, 0, false, s);
}

/* An edge of one to four live columns as the panel's 8 rows of A (one ymm per k step) times a
   scalar of B: ncol FMAs per k instead of the full tile's 16. Two partial sums per column (four
   for one or two columns) hide the FMA latency; they are added at the end (float reordering
   only). ncol is a compile-time constant in each call. */
TARGET static inline __attribute__((always_inline)) void
uk_8xnarrow(size_t kc, const float *restrict a, const float *restrict b, size_t ldb,
            float *restrict c, size_t ldc, size_t mr, size_t nr, const kiln__uk_store *s,
            const int ncol) {
  /* x<column><u>: named, not an array (an array of accumulators stayed in memory, stored at
     every FMA: qgemm_vnni.c) */
  const __m256 z = _mm256_setzero_ps();
  __m256 x00 = z, x01 = z, x02 = z, x03 = z, x10 = z, x11 = z, x12 = z, x13 = z;
  __m256 x20 = z, x21 = z, x22 = z, x23 = z, x30 = z, x31 = z, x32 = z, x33 = z;
#define STEP(u, a, b)                                                                              \
  {                                                                                                \
    const __m256 av = _mm256_loadu_ps(a);                                                          \
    x0##u = _mm256_fmadd_ps(av, _mm256_broadcast_ss(b), x0##u);                                    \
    if (ncol > 1) x1##u = _mm256_fmadd_ps(av, _mm256_broadcast_ss((b) + 1), x1##u);                \
    if (ncol > 2) x2##u = _mm256_fmadd_ps(av, _mm256_broadcast_ss((b) + 2), x2##u);                \
    if (ncol > 3) x3##u = _mm256_fmadd_ps(av, _mm256_broadcast_ss((b) + 3), x3##u);                \
  }
  size_t p = 0;
  for (; p + 4 <= kc; p += 4, a += 4 * MR, b += 4 * ldb) {
    _mm_prefetch((const char *)((uintptr_t)a + KILN__SGEMM_A_PF * sizeof *a), _MM_HINT_T0);
    STEP(0, a, b)
    STEP(1, a + MR, b + ldb)
    STEP(2, a + 2 * MR, b + 2 * ldb)
    STEP(3, a + 3 * MR, b + 3 * ldb)
  }
  for (; p < kc; p++, a += MR, b += ldb) STEP(0, a, b)
#undef STEP
  const __m256 x[4][4] = {
      {x00, x01, x02, x03}, {x10, x11, x12, x13}, {x20, x21, x22, x23}, {x30, x31, x32, x33}};
  _Alignas(32) float col[4][MR], t[MR * 4];
  for (int j = 0; j < ncol; j++)
    _mm256_store_ps(col[j], _mm256_add_ps(_mm256_add_ps(x[j][0], x[j][1]),
                                          _mm256_add_ps(x[j][2], x[j][3])));
  for (int r = 0; r < MR; r++)
    for (int j = 0; j < ncol; j++) t[r * 4 + j] = col[j][r];
  const __mmask16 m = lanes_lo(nr);
  for (size_t r = 0; r < mr; r++)
    store_rowm(c + r * ldc, r, _mm512_maskz_loadu_ps(m, t + r * 4), _mm512_setzero_ps(), m, 0,
               false, s);
}

TARGET static inline __attribute__((always_inline)) void
uk_narrow(size_t kc, const float *restrict a, const float *restrict b, size_t ldb,
          float *restrict c, size_t ldc, size_t mr, size_t nr, const kiln__uk_store *s) {
  switch (nr) {
  case 1: uk_8xnarrow(kc, a, b, ldb, c, ldc, mr, nr, s, 1); break;
  case 2: uk_8xnarrow(kc, a, b, ldb, c, ldc, mr, nr, s, 2); break;
  case 3: uk_8xnarrow(kc, a, b, ldb, c, ldc, mr, nr, s, 3); break;
  default: uk_8xnarrow(kc, a, b, ldb, c, ldc, mr, nr, s, 4); break;
  }
}

/* One row of A (a classifier's Gemm on one image, m = 1): the 8-row tile would run 16 FMAs per k
   for 2 used. Two k steps per iteration on separate accumulators keep 4 FMA chains going; the
   loads of B are the bound. */
TARGET static inline __attribute__((always_inline)) void
uk_1x32(size_t kc, const float *restrict a, const float *restrict b, size_t ldb,
        float *restrict c, size_t nr, const kiln__uk_store *s) {
  __m512 x0 = _mm512_setzero_ps(), x1 = x0, y0 = x0, y1 = x0;
  size_t p = 0;
  for (; p + 2 <= kc; p += 2, a += 2 * MR, b += 2 * ldb) {
    __m512 a0 = _mm512_set1_ps(a[0]), a1 = _mm512_set1_ps(a[MR]);
    x0 = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b), x0);
    x1 = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b + 16), x1);
    y0 = _mm512_fmadd_ps(a1, _mm512_loadu_ps(b + ldb), y0);
    y1 = _mm512_fmadd_ps(a1, _mm512_loadu_ps(b + ldb + 16), y1);
  }
  if (p < kc) {
    __m512 a0 = _mm512_set1_ps(a[0]);
    x0 = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b), x0);
    x1 = _mm512_fmadd_ps(a0, _mm512_loadu_ps(b + 16), x1);
  }
  x0 = _mm512_add_ps(x0, y0);
  x1 = _mm512_add_ps(x1, y1);
  if (nr == NR) store_row(c, 0, x0, x1, s);
  else store_rowm(c, 0, x0, x1, lanes_lo(nr), lanes_hi(nr), false, s);
}

/* b's rows are ldb floats apart: NR in a packed panel, or a row of an unpacked B (a pointwise
   conv's input planes, read in place; the driver then calls it for full-width panels only).
   Inlined into both entry points, so the packed one keeps a constant stride. */
TARGET static inline __attribute__((always_inline)) void
uk_8x32(size_t kc, const float *restrict a, const float *restrict b, size_t ldb,
        float *restrict c, size_t ldc, size_t mr, size_t nr, const kiln__uk_store *s) {
  if (mr == 1 && nr > 4) {
    uk_1x32(kc, a, b, ldb, c, nr, s);
    return;
  }
  if (nr <= 4) {
    uk_narrow(kc, a, b, ldb, c, ldc, mr, nr, s);
    return;
  }
  if (nr <= 16) {
    uk_8x16(kc, a, b, ldb, c, ldc, mr, nr, s);
    return;
  }
  if (nr <= 20) {
    /* 16 columns, then the last one to four (49 = 32 + 16 + 1). */
    uk_8x16(kc, a, b, ldb, c, ldc, mr, 16, s);
    kiln__uk_store s2 = *s;
    s2.col0 += 16;
    uk_narrow(kc, a, b + 16, ldb, c + 16, ldc, mr, nr - 16, &s2);
    return;
  }
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
    b += ldb;
  }
  if (nr == NR) {
    /* Full-width rows store from registers, also in the last row tile (mr < 8). */
    store_row(c, 0, c00, c01, s);
    if (mr > 1) store_row(c + ldc, 1, c10, c11, s);
    if (mr > 2) store_row(c + 2 * ldc, 2, c20, c21, s);
    if (mr > 3) store_row(c + 3 * ldc, 3, c30, c31, s);
    if (mr > 4) store_row(c + 4 * ldc, 4, c40, c41, s);
    if (mr > 5) store_row(c + 5 * ldc, 5, c50, c51, s);
    if (mr > 6) store_row(c + 6 * ldc, 6, c60, c61, s);
    if (mr > 7) store_row(c + 7 * ldc, 7, c70, c71, s);
    return;
  }
  const __mmask16 m0 = lanes_lo(nr), m1 = lanes_hi(nr);
  store_rowm(c, 0, c00, c01, m0, m1, false, s);
  if (mr > 1) store_rowm(c + ldc, 1, c10, c11, m0, m1, false, s);
  if (mr > 2) store_rowm(c + 2 * ldc, 2, c20, c21, m0, m1, false, s);
  if (mr > 3) store_rowm(c + 3 * ldc, 3, c30, c31, m0, m1, false, s);
  if (mr > 4) store_rowm(c + 4 * ldc, 4, c40, c41, m0, m1, false, s);
  if (mr > 5) store_rowm(c + 5 * ldc, 5, c50, c51, m0, m1, false, s);
  if (mr > 6) store_rowm(c + 6 * ldc, 6, c60, c61, m0, m1, false, s);
  if (mr > 7) store_rowm(c + 7 * ldc, 7, c70, c71, m0, m1, false, s);
}

/* The 8-row A panel packer (sgemm.h): 8 columns of the 8 rows at a time, an 8x8 transpose in
   ymm registers (unpack, shuffle, 128-bit permute), 8 whole stores; scalar tail for kc % 8.
   The scalar loop was 7% of bert_tiny's samples (its projections pack their activations). */
TARGET void kiln__sgemm_pack_a_8__avx512(const float *restrict a, size_t lda, size_t kc,
                                         float *restrict dst) {
  const float *r[MR];
  for (int i = 0; i < MR; i++) r[i] = a + (size_t)i * lda;
  size_t p = 0;
  for (; p + 8 <= kc; p += 8, dst += 8 * MR) {
    __m256 x[8], t[8], u[8];
    for (int i = 0; i < 8; i++) x[i] = _mm256_loadu_ps(r[i] + p);
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);     /* rows i, i+1 of columns 0,1 | 4,5 */
      t[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]); /* columns 2,3 | 6,7 */
    }
    for (int h = 0; h < 8; h += 4) {                 /* rows h .. h+3 */
      u[h] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(1, 0, 1, 0));     /* col 0 | 4 */
      u[h + 1] = _mm256_shuffle_ps(t[h], t[h + 2], _MM_SHUFFLE(3, 2, 3, 2)); /* col 1 | 5 */
      u[h + 2] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(1, 0, 1, 0)); /* 2 | 6 */
      u[h + 3] = _mm256_shuffle_ps(t[h + 1], t[h + 3], _MM_SHUFFLE(3, 2, 3, 2)); /* 3 | 7 */
    }
    for (int c = 0; c < 4; c++) {
      _mm256_storeu_ps(dst + c * MR, _mm256_permute2f128_ps(u[c], u[4 + c], 0x20));
      _mm256_storeu_ps(dst + (4 + c) * MR, _mm256_permute2f128_ps(u[c], u[4 + c], 0x31));
    }
  }
  for (; p < kc; p++, dst += MR)
    for (int i = 0; i < MR; i++) dst[i] = r[i][p];
}

TARGET void kiln__sgemm_uk_8x32__avx512(size_t kc, const float *restrict a,
                                        const float *restrict b, float *restrict c, size_t ldc,
                                        size_t mr, size_t nr, const kiln__uk_store *s) {
  uk_8x32(kc, a, b, NR, c, ldc, mr, nr, s);
}

TARGET void kiln__sgemm_uk_8x32s__avx512(size_t kc, const float *restrict a,
                                         const float *restrict b, size_t ldb, float *restrict c,
                                         size_t ldc, size_t mr, size_t nr,
                                         const kiln__uk_store *s) {
  uk_8x32(kc, a, b, ldb, c, ldc, mr, nr, s);
}

#endif
