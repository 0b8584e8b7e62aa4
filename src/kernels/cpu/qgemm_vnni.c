/* VNNI integer microkernels: the AVX2 6 x 16 tile (qgemm_avx2.c) with its k pairs of int16 and
 * VPMADDWD + VPADDD replaced by k quads of bytes and one VPDPBUSD (u8 x s8, four products summed
 * into int32, exact: 4 * 255 * 128 < 2^31). AVX-VNNI uses ymm (same 6 x 16 tile); AVX512-VNNI
 * uses zmm, 6 x 32. The packing (qgemm.c) stores A as uint8 and B as int8 for these formats.
 *
 * Selected by cpuid; the tests run each one the machine supports (a Zen 5 development VM has
 * both extensions).
 *
 * Accumulators are named variables, not arrays: with arrays of VPDPBUSD accumulators (a tied
 * operand) gcc 12 copied every accumulator to another register and back at each k step, and
 * loaded B vectors twice (docs/QUANT.md, ResNet-18 int8 6.7 -> 5.3 ms). */
#include "kernels/cpu/qgemm.h"

#ifdef KILN__QGEMM_X86
#include <immintrin.h>

#define MR 6

static inline int32_t ld32(const uint8_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

#ifdef KILN__QGEMM_HAVE_AVXVNNI
#define TARGET_AVXVNNI __attribute__((target("avx2,fma,avxvnni")))

TARGET_AVXVNNI void kiln__qgemm_uk_6x16__avxvnni(size_t groups, const void *restrict a,
                                                 const void *restrict b, int32_t *restrict c,
                                                 size_t ldc, bool accumulate) {
  const uint8_t *A = a, *B = b;
  const __m256i z = _mm256_setzero_si256();
  __m256i c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z;
  __m256i c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z;
  for (size_t g = 0; g < groups; g++, A += 4 * MR, B += 4 * 16) {
    const __m256i b0 = _mm256_loadu_si256((const __m256i *)B);
    const __m256i b1 = _mm256_loadu_si256((const __m256i *)(B + 32));
#define ROW(i)                                                                                     \
  {                                                                                                \
    const __m256i av = _mm256_set1_epi32(ld32(A + 4 * i));                                         \
    c##i##0 = _mm256_dpbusd_avx_epi32(c##i##0, av, b0);                                            \
    c##i##1 = _mm256_dpbusd_avx_epi32(c##i##1, av, b1);                                            \
  }
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
  }
  const __m256i acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                              {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < MR; i++)
    for (int h = 0; h < 2; h++) {
      __m256i *p = (__m256i *)(c + i * ldc + 8 * h);
      __m256i v = accumulate ? _mm256_add_epi32(acc[i][h], _mm256_loadu_si256(p)) : acc[i][h];
      _mm256_storeu_si256(p, v);
    }
}
#endif

#define TARGET_512 __attribute__((target("avx2,fma,avx512f,avx512vnni")))

TARGET_512 void kiln__qgemm_uk_6x32__avx512vnni(size_t groups, const void *restrict a,
                                                const void *restrict b, int32_t *restrict c,
                                                size_t ldc, bool accumulate) {
  const uint8_t *A = a, *B = b;
  const __m512i z = _mm512_setzero_si512();
  __m512i c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z;
  __m512i c30 = z, c31 = z, c40 = z, c41 = z, c50 = z, c51 = z;
  for (size_t g = 0; g < groups; g++, A += 4 * MR, B += 4 * 32) {
    const __m512i b0 = _mm512_loadu_si512(B), b1 = _mm512_loadu_si512(B + 64);
#define ROW(i)                                                                                     \
  {                                                                                                \
    const __m512i av = _mm512_set1_epi32(ld32(A + 4 * i));                                         \
    c##i##0 = _mm512_dpbusd_epi32(c##i##0, av, b0);                                                \
    c##i##1 = _mm512_dpbusd_epi32(c##i##1, av, b1);                                                \
  }
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
  }
  const __m512i acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                              {c30, c31}, {c40, c41}, {c50, c51}};
  for (int i = 0; i < MR; i++)
    for (int h = 0; h < 2; h++) {
      int32_t *p = c + i * ldc + 16 * h;
      __m512i v = accumulate ? _mm512_add_epi32(acc[i][h], _mm512_loadu_si512(p)) : acc[i][h];
      _mm512_storeu_si512(p, v);
    }
}

/* ---- the byte format KILN__QFMT_VNNI_S8U8 (conv weights) ---------------------------------------
   The AVX2 S8U8 format's packing (qgemm_avx2.c): A (weights, int8) in 4-row panels of k quads
   (16 bytes per quad), B (activations, uint8) in 16-column panels (64 bytes per quad: one zmm,
   column j's 4 bytes in lane j) or an 8-column edge panel (32 bytes: one ymm). VPDPBUSD takes
   its first operand as uint8 (B) and its second as int8 (A). Four rows give four dependent
   chains per k quad, too few for VPDPBUSD's latency, so even and odd quads sum into separate
   accumulators (added at the end: integer sums, exact). */
#define TARGET_BYTES __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bw,avx512vnni")))
#define BMR 4
/* The requantizing tile prefetches its A panel (the weights) 4 KiB ahead: a conv's weights come
   from L3 or memory once per inference (ResNet-50 int8 12.3 -> 11.2 ms; 1 KiB ahead gained 2/3
   of that, 8 KiB the same as 4), as the SGEMM's (KILN__SGEMM_A_PF). */
#define QPF 4096

TARGET_BYTES static inline __m512i bcast512(const uint8_t *p) {
  return _mm512_set1_epi32(ld32(p));
}
TARGET_BYTES static inline __m256i bcast256(const uint8_t *p) {
  return _mm256_set1_epi32(ld32(p));
}

/* acc[i] = row i of the 4 x 16 tile over `groups` quads. */
TARGET_BYTES static inline __attribute__((always_inline)) void
tile4x16(size_t groups, const uint8_t *A, const uint8_t *B, __m512i acc[BMR]) {
  __m512i x[2][BMR];
  for (int i = 0; i < BMR; i++) x[0][i] = x[1][i] = _mm512_setzero_si512();
  size_t g = 0;
  for (; g + 2 <= groups; g += 2, A += 8 * BMR, B += 128) {
    for (int u = 0; u < 2; u++) {
      __m512i bv = _mm512_loadu_si512(B + 64 * u);
      for (int i = 0; i < BMR; i++) {
        __m512i av = bcast512(A + 4 * BMR * u + 4 * i);
        x[u][i] = _mm512_dpbusd_epi32(x[u][i], bv, av);
      }
    }
  }
  if (g < groups) {
    __m512i bv = _mm512_loadu_si512(B);
    for (int i = 0; i < BMR; i++) {
      __m512i av = bcast512(A + 4 * i);
      x[0][i] = _mm512_dpbusd_epi32(x[0][i], bv, av);
    }
  }
  for (int i = 0; i < BMR; i++) acc[i] = _mm512_add_epi32(x[0][i], x[1][i]);
}

TARGET_BYTES void kiln__qgemm_uk_4x16__vnni_s8u8(size_t groups, const void *restrict a,
                                                 const void *restrict b, int32_t *restrict c,
                                                 size_t ldc, bool accumulate) {
  __m512i acc[BMR];
  tile4x16(groups, a, b, acc);
  for (int i = 0; i < BMR; i++) {
    int32_t *p = c + i * ldc;
    _mm512_storeu_si512(p, accumulate ? _mm512_add_epi32(acc[i], _mm512_loadu_si512(p)) : acc[i]);
  }
}

/* The 4 x 8 edge tile: one ymm of B per quad. */
TARGET_BYTES void kiln__qgemm_uk_4x8__vnni_s8u8(size_t groups, const void *restrict a,
                                                const void *restrict b, int32_t *restrict c,
                                                size_t ldc, bool accumulate) {
  const uint8_t *A = a, *B = b;
  __m256i x[2][BMR];
  for (int i = 0; i < BMR; i++) x[0][i] = x[1][i] = _mm256_setzero_si256();
  size_t g = 0;
  for (; g + 2 <= groups; g += 2, A += 8 * BMR, B += 64)
    for (int u = 0; u < 2; u++) {
      __m256i bv = _mm256_loadu_si256((const __m256i *)(B + 32 * u));
      for (int i = 0; i < BMR; i++)
        x[u][i] = _mm256_dpbusd_epi32(x[u][i], bv, bcast256(A + 4 * BMR * u + 4 * i));
    }
  if (g < groups) {
    __m256i bv = _mm256_loadu_si256((const __m256i *)B);
    for (int i = 0; i < BMR; i++)
      x[0][i] = _mm256_dpbusd_epi32(x[0][i], bv, bcast256(A + 4 * i));
  }
  for (int i = 0; i < BMR; i++) {
    __m256i v = _mm256_add_epi32(x[0][i], x[1][i]);
    __m256i *p = (__m256i *)(c + i * ldc);
    _mm256_storeu_si256(p, accumulate ? _mm256_add_epi32(v, _mm256_loadu_si256(p)) : v);
  }
}

/* The S8U8 tile requantized in registers (qgemm.h, kiln__qreq_rows), over np (1-4) adjacent full
   B panels pstride bytes apart: 4 rows x 16 np columns, each k quad loading np B vectors and 4
   broadcasts for 4 np products (one panel at a time loads 5 for 4, which bound it on the load
   ports: ResNet-18 int8 7.7 -> 6.4 ms). The AVX2 kernel's exact operations: + radd, to float,
   * mult, clamp to the integer-valued [lo - zy, hi - zy], VCVTPS2DQ (nearest even) + zy; the
   result lies in [lo, hi], so its low byte is the stored value. */
TARGET_BYTES static inline __attribute__((always_inline)) void
reqn(size_t groups, const uint8_t *A, const uint8_t *B, size_t pstride, const kiln__qreq_rows *q,
     size_t rows, uint8_t *restrict dst, size_t ldd, const int np) {
  const __m512i z = _mm512_setzero_si512();
  __m512i x00 = z, x01 = z, x02 = z, x03 = z, x10 = z, x11 = z, x12 = z, x13 = z;
  __m512i x20 = z, x21 = z, x22 = z, x23 = z, x30 = z, x31 = z, x32 = z, x33 = z;
  for (size_t g = 0; g < groups; g++, A += 4 * BMR, B += 64) {
    _mm_prefetch((const char *)A + QPF, _MM_HINT_T0);
    /* np is a constant here (the caller's switch): the unused panels compile away */
    const __m512i b0 = _mm512_loadu_si512(B);
    const __m512i b1 = np > 1 ? _mm512_loadu_si512(B + pstride) : z;
    const __m512i b2 = np > 2 ? _mm512_loadu_si512(B + 2 * pstride) : z;
    const __m512i b3 = np > 3 ? _mm512_loadu_si512(B + 3 * pstride) : z;
#define ROW(i)                                                                                     \
  {                                                                                                \
    const __m512i av = bcast512(A + 4 * i);                                                        \
    x0##i = _mm512_dpbusd_epi32(x0##i, b0, av);                                                    \
    if (np > 1) x1##i = _mm512_dpbusd_epi32(x1##i, b1, av);                                        \
    if (np > 2) x2##i = _mm512_dpbusd_epi32(x2##i, b2, av);                                        \
    if (np > 3) x3##i = _mm512_dpbusd_epi32(x3##i, b3, av);                                        \
  }
    ROW(0) ROW(1) ROW(2) ROW(3)
#undef ROW
  }
  const __m512i x[4][BMR] = {
      {x00, x01, x02, x03}, {x10, x11, x12, x13}, {x20, x21, x22, x23}, {x30, x31, x32, x33}};
  const __m512 lo = _mm512_set1_ps((float)(q->lo - q->zy));
  const __m512 hi = _mm512_set1_ps((float)(q->hi - q->zy));
  const __m512i zy = _mm512_set1_epi32(q->zy);
  for (size_t i = 0; i < rows; i++) {
    const __m512i r = _mm512_set1_epi32(q->radd[i]);
    const __m512 m = _mm512_set1_ps(q->mult[i]);
    for (int p = 0; p < np; p++) {
      __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(x[p][i], r)), m);
      f = _mm512_min_ps(_mm512_max_ps(f, lo), hi);
      __m512i v = _mm512_add_epi32(_mm512_cvtps_epi32(f), zy);
      _mm_storeu_si128((__m128i *)(dst + i * ldd + 16 * p), _mm512_cvtepi32_epi8(v));
    }
  }
}

TARGET_BYTES void kiln__qgemm_ukqn_vnni_s8u8(size_t groups, const void *restrict a,
                                             const void *restrict b, size_t pstride, size_t np,
                                             const kiln__qreq_rows *q, size_t rows,
                                             uint8_t *restrict dst, size_t ldd) {
  switch (np) {
  case 1: reqn(groups, a, b, pstride, q, rows, dst, ldd, 1); break;
  case 2: reqn(groups, a, b, pstride, q, rows, dst, ldd, 2); break;
  case 3: reqn(groups, a, b, pstride, q, rows, dst, ldd, 3); break;
  default: reqn(groups, a, b, pstride, q, rows, dst, ldd, 4); break;
  }
}

/* The S8U8 edge of 1-4 columns, rows in lanes (qgemm_avx2.c's kiln__qgemm_ukc_avx2_s8u8): per k
   quad, 16 rows of weights (four 4-row panels, 64 bytes) times each column's broadcast quad.
   rows is a multiple of 4; a last group of 4, 8 or 12 rows reads only its panels. */
TARGET_BYTES void kiln__qgemm_ukc_vnni_s8u8(size_t groups, const uint8_t *a, size_t a_ps,
                                            size_t rows, const uint8_t *b, size_t bw, size_t cols,
                                            int32_t *c, size_t ldc, bool accumulate) {
  for (size_t r0 = 0; r0 < rows; r0 += 16) {
    size_t np = KILN__MIN((size_t)4, (rows - r0) / 4); /* 4-row panels in this group */
    const uint8_t *ap[4], *B = b;
    for (size_t p = 0; p < 4; p++) ap[p] = a + (r0 / 4 + KILN__MIN(p, np - 1)) * a_ps;
    __m512i x0 = _mm512_setzero_si512(), x1 = x0, x2 = x0, x3 = x0;
    for (size_t g = 0; g < groups; g++, B += bw) {
      __m512i av = _mm512_inserti64x4(
          _mm512_castsi256_si512(_mm256_inserti128_si256(
              _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(ap[0] + 16 * g))),
              _mm_loadu_si128((const __m128i *)(ap[1] + 16 * g)), 1)),
          _mm256_inserti128_si256(
              _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(ap[2] + 16 * g))),
              _mm_loadu_si128((const __m128i *)(ap[3] + 16 * g)), 1),
          1);
      x0 = _mm512_dpbusd_epi32(x0, bcast512(B), av);
      x1 = _mm512_dpbusd_epi32(x1, bcast512(B + 4), av);
      x2 = _mm512_dpbusd_epi32(x2, bcast512(B + 8), av);
      x3 = _mm512_dpbusd_epi32(x3, bcast512(B + 12), av);
    }
    _Alignas(64) int32_t t[4][16];
    _mm512_store_si512(t[0], x0);
    _mm512_store_si512(t[1], x1);
    _mm512_store_si512(t[2], x2);
    _mm512_store_si512(t[3], x3);
    for (size_t i = 0; i < np * 4; i++)
      for (size_t j = 0; j < cols; j++) {
        int32_t *d = c + (r0 + i) * ldc + j;
        *d = (int32_t)((accumulate ? (uint32_t)*d : 0u) + (uint32_t)t[j][i]);
      }
  }
}


TARGET_BYTES void kiln__qpack_tap64__avx512(const uint8_t *const col[16], uint8_t xor_,
                                           uint8_t *dst) {
  const __m512i fl = _mm512_set1_epi8((char)xor_);
  __m512i r[16], t[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_xor_si512(_mm512_loadu_si512(col[i]), fl);
  /* in each 128-bit lane l: pairs of columns, then four columns' word 4l + m in r[4g + m] */
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  /* then the 128-bit lanes of the four column groups: quad 4l + m = lane l of r[m], r[4 + m],
     r[8 + m], r[12 + m] */
  enum { even = _MM_SHUFFLE(2, 0, 2, 0), odd = _MM_SHUFFLE(3, 1, 3, 1) };
  for (int m = 0; m < 4; m++) {
    __m512i alo = _mm512_shuffle_i32x4(r[m], r[4 + m], even);
    __m512i ahi = _mm512_shuffle_i32x4(r[m], r[4 + m], odd);
    __m512i blo = _mm512_shuffle_i32x4(r[8 + m], r[12 + m], even);
    __m512i bhi = _mm512_shuffle_i32x4(r[8 + m], r[12 + m], odd);
    _mm512_storeu_si512(dst + (0 + m) * 64, _mm512_shuffle_i32x4(alo, blo, even));
    _mm512_storeu_si512(dst + (4 + m) * 64, _mm512_shuffle_i32x4(ahi, bhi, even));
    _mm512_storeu_si512(dst + (8 + m) * 64, _mm512_shuffle_i32x4(alo, blo, odd));
    _mm512_storeu_si512(dst + (12 + m) * 64, _mm512_shuffle_i32x4(ahi, bhi, odd));
  }
}

/* QuantizeLinear on 16 lanes (kiln__q_quantize__avx2's operations: divide, round to nearest
   even, NaN to 0, clamp, + zp), 64 values per step packed to bytes in 128-bit lanes and put in
   order by one VPERMD; the rest through the AVX2 loop. The division bounds the loop, and a zmm
   VDIVPS costs a ymm one's time on Zen 5 (bert_tiny int8: 7.7 -> 3.5 us a node). */
#define TARGET_512BW __attribute__((target("avx2,fma,avx512f,avx512bw")))

TARGET_512BW void kiln__q_quantize__avx512(const float *x, size_t n, float scale, int32_t zp,
                                           bool to_signed, void *y) {
  int32_t lo = to_signed ? -128 : 0, hi = to_signed ? 127 : 255;
  const __m512 s = _mm512_set1_ps(scale), lo_z = _mm512_set1_ps((float)(lo - zp)),
               hi_z = _mm512_set1_ps((float)(hi - zp));
  const __m512i z = _mm512_set1_epi32(zp);
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  uint8_t *d = y;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m512i q[4];
    for (int k = 0; k < 4; k++) {
      __m512 r = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + i + 16 * k), s),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), r); /* NaN -> 0 */
      r = _mm512_min_ps(_mm512_max_ps(r, lo_z), hi_z);
      q[k] = _mm512_add_epi32(_mm512_cvtps_epi32(r), z); /* in [lo, hi]: the packs are exact */
    }
    __m512i w01 = _mm512_packs_epi32(q[0], q[1]), w23 = _mm512_packs_epi32(q[2], q[3]);
    __m512i b = to_signed ? _mm512_packs_epi16(w01, w23) : _mm512_packus_epi16(w01, w23);
    _mm512_storeu_si512(d + i, _mm512_permutexvar_epi32(order, b));
  }
  if (i < n) kiln__q_quantize__avx2(x + i, n - i, scale, zp, to_signed, d + i);
}
#endif
