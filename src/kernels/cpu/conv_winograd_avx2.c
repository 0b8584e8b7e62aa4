/* The Winograd F(2x2, 3x3) transforms written with AVX2 intrinsics (conv_winograd.h for what they
 * compute): eight tiles per vector, a group's 4 x 4 input patches in registers, the 16 transformed
 * values stored straight into the packed-B panel rows, and the output transform with its epilogue
 * in registers. Same operations in the same order as conv_winograd_tf.inc (no FMA contraction),
 * so the results are bit-identical to the portable build. Target attributes instead of -mavx2:
 * kiln__wino_tf_get() picks these only where the CPU has AVX2. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include "kernels/cpu/avx2_tail.h"

#include "kernels/cpu/conv_winograd.h"

#define AVX2 __attribute__((target("avx2,fma")))

/* Lanes [0, n) set, n in [0, 8]. */
AVX2 static inline __m256i lanes(size_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Even and odd elements of p[0, 16): e = p[0], p[2], ..., o = p[1], p[3], ... (from a and b, the
   two halves). */
AVX2 static inline void deinterleave(__m256 a, __m256 b, __m256 *e, __m256 *o) {
  *e = _mm256_castpd_ps(_mm256_permute4x64_pd(
      _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0))), _MM_SHUFFLE(3, 1, 2, 0)));
  *o = _mm256_castpd_ps(_mm256_permute4x64_pd(
      _mm256_castps_pd(_mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1))), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* A group's loads: 8 floats at columns +0, +8, +2, +10 of each patch row, in place, or masked
   (padding: lanes outside the plane read as zero and are never touched). */
typedef struct in_src {
  const float *row[4]; /* column 0 of the group in each of the 4 rows */
  bool masked;
  __m256i m[4][4];     /* [row][load] when masked */
} in_src;

AVX2 static inline __m256 ld(const in_src *s, int r, int k, int off) {
  return s->masked ? _mm256_maskload_ps(s->row[r] + off, s->m[r][k])
                   : _mm256_loadu_ps(s->row[r] + off);
}

/* B^T d B of 8 tiles, tile t's patch at columns 2 t .. 2 t + 3 of the group, into
   dst[(i * 4 + k) * xs + t] for t < n; all 8 lanes when `whole` (the caller's room). */
AVX2 static inline void in8(const in_src *s, size_t n, bool whole, float *dst, size_t xs) {
  __m256 u[4][4];
  for (int r = 0; r < 4; r++) { /* d B, row r */
    __m256 d0, d1, d2, d3;
    deinterleave(ld(s, r, 0, 0), ld(s, r, 1, 8), &d0, &d1);
    deinterleave(ld(s, r, 2, 2), ld(s, r, 3, 10), &d2, &d3);
    u[r][0] = _mm256_sub_ps(d0, d2);
    u[r][1] = _mm256_add_ps(d1, d2);
    u[r][2] = _mm256_sub_ps(d2, d1);
    u[r][3] = _mm256_sub_ps(d1, d3);
  }
  for (int k = 0; k < 4; k++) { /* B^T (d B), column k, stored at once (fewer live registers) */
    __m256 v[4] = {_mm256_sub_ps(u[0][k], u[2][k]), _mm256_add_ps(u[1][k], u[2][k]),
                   _mm256_sub_ps(u[2][k], u[1][k]), _mm256_sub_ps(u[1][k], u[3][k])};
    for (int i = 0; i < 4; i++) {
      float *d = dst + (size_t)(4 * i + k) * xs;
      if (whole) _mm256_storeu_ps(d, v[i]);
      else kiln__avx2_store_head(d, v[i], n);
    }
  }
}

/* Address of x[iy][ix] for a masked load, also where it lies outside the plane (padding): formed
   as an integer, since a pointer outside the array is undefined; only in-plane lanes are read. */
static inline const float *at(const float *x, size_t w, int64_t iy, int64_t ix) {
  int64_t off = (iy * (int64_t)w + ix) * (int64_t)sizeof(float);
  return (const float *)((uintptr_t)x + (uintptr_t)off);
}

AVX2 static void in_avx2(const float *x, size_t h, size_t w, int64_t iy0, int64_t ix0, size_t nt,
                         float *dst, size_t xs, size_t room) {
  /* Group g of 8 tiles reads columns [c, c + 18), c = ix0 + 16 g: in place when those and the 4
     rows lie inside the plane, else with masks (columns as int32: w < 2^31 - 32). */
  in_src s;
  for (size_t t = 0; t < nt; t += 8) {
    int64_t c = ix0 + (int64_t)t * KILN__WINO_M;
    s.masked = !(iy0 >= 0 && iy0 + KILN__WINO_A <= (int64_t)h && c >= 0 && c + 18 <= (int64_t)w);
    for (int r = 0; r < 4; r++) s.row[r] = at(x, w, iy0 + r, c);
    if (s.masked) {
      static const int off[4] = {0, 8, 2, 10};
      __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), wv = _mm256_set1_epi32((int)w);
      for (int k = 0; k < 4; k++) { /* column in [0, w) */
        __m256i col = _mm256_add_epi32(idx, _mm256_set1_epi32((int)(c + off[k])));
        __m256i in = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), col),
                                         _mm256_cmpgt_epi32(wv, col));
        for (int r = 0; r < 4; r++) {
          bool row_in = iy0 + r >= 0 && iy0 + r < (int64_t)h;
          s.m[r][k] = row_in ? in : _mm256_setzero_si256();
        }
      }
    }
    size_t n = KILN__MIN(nt - t, (size_t)8);
    in8(&s, n, n == 8 || t + 8 <= room, dst + t, xs);
  }
}

/* y = act(o + bias + z) of n <= 16 columns of one output row, o in registers (two halves). */
AVX2 static inline void out_row(__m256 o0, __m256 o1, float *y, const float *z, size_t n,
                                const kiln__wino_ep *ep) {
  __m256 o[2] = {o0, o1};
  for (int hf = 0; hf < 2 && (size_t)hf * 8 < n; hf++) {
    size_t c = KILN__MIN(n - (size_t)hf * 8, (size_t)8);
    __m256i m = lanes(c);
    __m256 b = o[hf];
    if (z) {
      const float *zh = z + hf * 8;
      b = _mm256_add_ps(b, c == 8 ? _mm256_loadu_ps(zh) : _mm256_maskload_ps(zh, m));
    }
    if (ep->act == KILN__ACT_RELU) { /* b > 0 ? b : 0 (NaN and -0 give 0, as max's 2nd operand) */
      b = _mm256_max_ps(b, _mm256_setzero_ps());
    } else if (ep->act == KILN__ACT_CLIP) { /* b < lo ? lo : (b > hi ? hi : b) */
      __m256 lo = _mm256_set1_ps(ep->lo), hi = _mm256_set1_ps(ep->hi);
      __m256 t = _mm256_blendv_ps(b, hi, _mm256_cmp_ps(b, hi, _CMP_GT_OQ));
      b = _mm256_blendv_ps(t, lo, _mm256_cmp_ps(b, lo, _CMP_LT_OQ));
    }
    if (c == 8) _mm256_storeu_ps(y + hf * 8, b);
    else kiln__avx2_store_head(y + hf * 8, b, c);
  }
}

AVX2 static void out_avx2(const float *src, size_t xs, float *y, size_t ldy, size_t rows,
                          size_t cols, const kiln__wino_ep *ep) {
  size_t nt = (cols + 1) / 2;
  __m256 bias = _mm256_set1_ps(ep->bias);
  for (size_t t = 0; t < nt; t += 8) {
    size_t n = KILN__MIN(nt - t, (size_t)8);
    __m256i m = lanes(n);
    __m256 mv[16]; /* lanes past n: zeros, never stored */
    for (int i = 0; i < 16; i++)
      mv[i] = n == 8 ? _mm256_loadu_ps(src + (size_t)i * xs + t)
                     : _mm256_maskload_ps(src + (size_t)i * xs + t, m);
    __m256 u[4][2];
    for (int i = 0; i < 4; i++) { /* m A, row i */
      u[i][0] = _mm256_add_ps(_mm256_add_ps(mv[4 * i], mv[4 * i + 1]), mv[4 * i + 2]);
      u[i][1] = _mm256_sub_ps(_mm256_sub_ps(mv[4 * i + 1], mv[4 * i + 2]), mv[4 * i + 3]);
    }
    __m256 o[2][2]; /* A^T (m A): o[p][q], output row p, column q of each tile */
    for (int q = 0; q < 2; q++) {
      o[0][q] = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(u[0][q], u[1][q]), u[2][q]), bias);
      o[1][q] = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(u[1][q], u[2][q]), u[3][q]), bias);
    }
    size_t c0 = 2 * t, nc = KILN__MIN(cols - c0, (size_t)16);
    for (size_t p = 0; p < rows; p++) { /* interleave the tiles' columns 0 and 1 */
      __m256 lo = _mm256_unpacklo_ps(o[p][0], o[p][1]), hi = _mm256_unpackhi_ps(o[p][0], o[p][1]);
      out_row(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31),
              y + p * ldy + c0, ep->z ? ep->z + p * ldy + c0 : NULL, nc, ep);
    }
  }
}

static const kiln__wino_tf tf_avx2 = {in_avx2, out_avx2};

const kiln__wino_tf *kiln__wino_tf_avx2(void) { return &tf_avx2; }

#else
typedef int kiln__wino_avx2_unused; /* ISO C: no empty translation unit */
#endif
