/* AVX2 integer kernels: the 6 x 16 int16-pair microkernel (VPMADDWD), the 6 x 16 byte-quad
 * microkernels (VPMADDUBSW) and their B packing, the requantizing epilogue (also used by the VNNI
 * tiles) and the quantize / dequantize / min-max loops. ISA flags are on the functions, so the
 * library still builds for baseline x86-64.
 *
 * Two paths: VPMADDUBSW multiplies u8 x s8 and adds adjacent pairs into int16 with saturation,
 * and 2 * 255 * 127 > 32767, so full-range weights can silently clip (the reason ONNX Runtime
 * offers reduce_range). Weights whose k pairs pass |w0| + |w1| <= 128 (checked once at pack
 * time) run the byte kernels, which are exact for them; any other weights are widened to int16
 * and run VPMADDWD (int16 x int16, pairs summed into int32), exact for any 8-bit inputs. */
#include "kernels/cpu/qgemm.h"

#ifdef KILN__QGEMM_X86
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma")))
#define MR 6
#define NR 16

TARGET static inline __m256i bcast32(const int16_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return _mm256_set1_epi32(v);
}

/* Row pair i of 16 int32 accumulators: started from C when accumulating (else 0), stored after
   the loop (the kernels below). Loading C before the loop, not adding it after: with the add
   after the loop, gcc 12 -O3 (partial PRE) kept copies of accumulators on the stack and moved
   registers every k group, about 50 instructions per 4 x 16 quad instead of 33, which made the
   byte kernels dispatch-bound rather than multiplier-bound (clang and gcc -O2 were clean). */
#define LOAD(i)                                                                   \
  __m256i c##i##0 = _mm256_setzero_si256(), c##i##1 = _mm256_setzero_si256();     \
  if (accumulate) {                                                               \
    c##i##0 = _mm256_loadu_si256((const __m256i *)(c + i * ldc));                 \
    c##i##1 = _mm256_loadu_si256((const __m256i *)(c + i * ldc + 8));             \
  }
#define STORE(i)                                                                  \
  do {                                                                            \
    _mm256_storeu_si256((__m256i *)(c + i * ldc), c##i##0);                       \
    _mm256_storeu_si256((__m256i *)(c + i * ldc + 8), c##i##1);                   \
  } while (0)

TARGET void kiln__qgemm_uk_6x16__avx2(size_t groups, const void *restrict a,
                                      const void *restrict b, int32_t *restrict c, size_t ldc,
                                      bool accumulate) {
  const int16_t *A = a, *B = b;
  LOAD(0) LOAD(1) LOAD(2) LOAD(3) LOAD(4) LOAD(5)
  for (size_t g = 0; g < groups; g++) {
    __m256i b0 = _mm256_loadu_si256((const __m256i *)B);
    __m256i b1 = _mm256_loadu_si256((const __m256i *)(B + 16)), av;
#define ROW(i)                                                    \
  av = bcast32(A + 2 * i);                                        \
  c##i##0 = _mm256_add_epi32(c##i##0, _mm256_madd_epi16(av, b0)); \
  c##i##1 = _mm256_add_epi32(c##i##1, _mm256_madd_epi16(av, b1));
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)
#undef ROW
    A += 2 * MR;
    B += 2 * NR;
  }
  STORE(0);
  STORE(1);
  STORE(2);
  STORE(3);
  STORE(4);
  STORE(5);
}

/* The byte formats (qgemm.h, KILN__QFMT_AVX2_*): k quads of bytes. VPMADDUBSW multiplies the
   unsigned operand's bytes by the signed one's and sums adjacent pairs into int16 with
   saturation, which never triggers because the constant signed operand was checked at pack time
   (|v0| + |v1| <= 128, so |pair| <= 32640); VPMADDWD by ones then sums the two pairs of each quad
   into int32 exactly. U8S8: A (broadcast) unsigned, B signed; S8U8: the reverse.
   4 x 16 tiles, not 6 x 16: each product takes two multiplies (VPMADDUBSW, VPMADDWD) and a
   temporary, so 6 rows need 12 accumulators + 2 B + ones + broadcast + temporary = 17 ymm, and
   gcc 12 spilled and reloaded 8 accumulators every k quad. 4 rows need 13 registers; the
   multiply ports bound both alike, so nothing is lost per product (and a 16-channel conv pads
   its 16 output channels to 16 rows, not 18). */
#define BMR 4
#define BROW(MUL, i)                                                                \
  av = bcast8x4(A + 4 * i);                                                         \
  c##i##0 = _mm256_add_epi32(c##i##0, _mm256_madd_epi16(MUL(av, b0), ones));        \
  c##i##1 = _mm256_add_epi32(c##i##1, _mm256_madd_epi16(MUL(av, b1), ones));
#define MUL_U8S8(av, bv) _mm256_maddubs_epi16(av, bv)
#define MUL_S8U8(av, bv) _mm256_maddubs_epi16(bv, av)

TARGET static inline __m256i bcast8x4(const uint8_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return _mm256_set1_epi32(v);
}

#define BYTE_UK(NAME, MUL)                                                                     \
  TARGET void NAME(size_t groups, const void *restrict a, const void *restrict b,              \
                   int32_t *restrict c, size_t ldc, bool accumulate) {                         \
    const uint8_t *A = a, *B = b;                                                              \
    const __m256i ones = _mm256_set1_epi16(1);                                                 \
    LOAD(0) LOAD(1) LOAD(2) LOAD(3)                                                            \
    for (size_t g = 0; g < groups; g++) {                                                      \
      __m256i b0 = _mm256_loadu_si256((const __m256i *)B);                                     \
      __m256i b1 = _mm256_loadu_si256((const __m256i *)(B + 32)), av;                          \
      BROW(MUL, 0) BROW(MUL, 1) BROW(MUL, 2) BROW(MUL, 3)                                      \
      A += 4 * BMR;                                                                            \
      B += 4 * NR;                                                                             \
    }                                                                                          \
    STORE(0);                                                                                  \
    STORE(1);                                                                                  \
    STORE(2);                                                                                  \
    STORE(3);                                                                                  \
  }

BYTE_UK(kiln__qgemm_uk_4x16__avx2_u8s8, MUL_U8S8)
BYTE_UK(kiln__qgemm_uk_4x16__avx2_s8u8, MUL_S8U8)

/* One row of 16 sums requantized as ep_rows does it (no column terms): + radd, * mult, clamp to
   the integer-valued [lo - zy, hi - zy], VCVTPS2DQ (round to nearest even) + zy, then packed to
   16 bytes. */
TARGET static inline void req_row16(__m256i v0, __m256i v1, const kiln__qreq_rows *q, size_t i,
                                    __m256 lo, __m256 hi, __m256i zy, __m256i order,
                                    uint8_t *d) {
  const __m256i r = _mm256_set1_epi32(q->radd[i]);
  const __m256 m = _mm256_set1_ps(q->mult[i]);
  __m256 f0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(v0, r)), m);
  __m256 f1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(v1, r)), m);
  f0 = _mm256_min_ps(_mm256_max_ps(f0, lo), hi);
  f1 = _mm256_min_ps(_mm256_max_ps(f1, lo), hi);
  __m256i w = _mm256_packs_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(f0), zy),
                                 _mm256_add_epi32(_mm256_cvtps_epi32(f1), zy));
  w = q->to_signed ? _mm256_packs_epi16(w, w) : _mm256_packus_epi16(w, w);
  w = _mm256_permutevar8x32_epi32(w, order);
  _mm_storeu_si128((__m128i *)d, _mm256_castsi256_si128(w));
}

/* The S8U8 4 x 16 tile with its requantization in registers (qgemm.h): for small k (a 16-channel
   pointwise conv runs 4 quads per tile) the int32 store and the epilogue's reload cost as much
   as the products. */
TARGET void kiln__qgemm_ukq_4x16__avx2_s8u8(size_t groups, const void *restrict a,
                                            const void *restrict b, const kiln__qreq_rows *q,
                                            size_t rows, uint8_t *restrict dst, size_t ldd) {
  const uint8_t *A = a, *B = b;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i c00 = _mm256_setzero_si256(), c01 = _mm256_setzero_si256();
  __m256i c10 = _mm256_setzero_si256(), c11 = _mm256_setzero_si256();
  __m256i c20 = _mm256_setzero_si256(), c21 = _mm256_setzero_si256();
  __m256i c30 = _mm256_setzero_si256(), c31 = _mm256_setzero_si256();
  for (size_t g = 0; g < groups; g++) {
    __m256i b0 = _mm256_loadu_si256((const __m256i *)B);
    __m256i b1 = _mm256_loadu_si256((const __m256i *)(B + 32)), av;
    BROW(MUL_S8U8, 0) BROW(MUL_S8U8, 1) BROW(MUL_S8U8, 2) BROW(MUL_S8U8, 3)
    A += 4 * BMR;
    B += 4 * NR;
  }
  const __m256 lo = _mm256_set1_ps((float)(q->lo - q->zy));
  const __m256 hi = _mm256_set1_ps((float)(q->hi - q->zy));
  const __m256i zy = _mm256_set1_epi32(q->zy);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  req_row16(c00, c01, q, 0, lo, hi, zy, order, dst);
  if (rows > 1) req_row16(c10, c11, q, 1, lo, hi, zy, order, dst + ldd);
  if (rows > 2) req_row16(c20, c21, q, 2, lo, hi, zy, order, dst + 2 * ldd);
  if (rows > 3) req_row16(c30, c31, q, 3, lo, hi, zy, order, dst + 3 * ldd);
}

/* The 4 x 8 edge tile of the same formats: one B vector of 8 columns per k quad. */
#define BROW8(MUL, i)                                                                         \
  c##i = _mm256_add_epi32(c##i, _mm256_madd_epi16(MUL(bcast8x4(A + 4 * i), b0), ones));
#define LOAD8(i)                                                                              \
  __m256i c##i = accumulate ? _mm256_loadu_si256((const __m256i *)(c + i * ldc))              \
                            : _mm256_setzero_si256();
#define STORE8(i) _mm256_storeu_si256((__m256i *)(c + i * ldc), c##i)
#define BYTE_UK8(NAME, MUL)                                                                   \
  TARGET void NAME(size_t groups, const void *restrict a, const void *restrict b,             \
                   int32_t *restrict c, size_t ldc, bool accumulate) {                        \
    const uint8_t *A = a, *B = b;                                                             \
    const __m256i ones = _mm256_set1_epi16(1);                                                \
    LOAD8(0) LOAD8(1) LOAD8(2) LOAD8(3)                                                       \
    for (size_t g = 0; g < groups; g++) {                                                     \
      __m256i b0 = _mm256_loadu_si256((const __m256i *)B);                                    \
      BROW8(MUL, 0) BROW8(MUL, 1) BROW8(MUL, 2) BROW8(MUL, 3)                                 \
      A += 4 * BMR;                                                                           \
      B += 4 * NR / 2;                                                                        \
    }                                                                                         \
    STORE8(0);                                                                                \
    STORE8(1);                                                                                \
    STORE8(2);                                                                                \
    STORE8(3);                                                                                \
  }

/* The S8U8 edge of 1-4 columns (ResNet's 7x7 planes: 49 = 3 x 16 + 1), rows in lanes: per k
   quad, 8 rows of weights (two 4-row panels) times each column's broadcast quad. Four columns
   always (the 8-wide edge panel is zero past its columns), 3 ops each per 8 rows, where the 4 x 8
   tile spent 24 on 8 rows whatever the column count. Writes c[i * ldc + j], i < rows (a multiple
   of 4), j < cols. */
TARGET void kiln__qgemm_ukc_avx2_s8u8(size_t groups, const uint8_t *a, size_t a_ps, size_t rows,
                                      const uint8_t *b, size_t bw, size_t cols, int32_t *c,
                                      size_t ldc, bool accumulate) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (size_t r0 = 0; r0 < rows; r0 += 8) {
    bool two = r0 + 8 <= rows;
    const uint8_t *a0 = a + (r0 / 4) * a_ps, *a1 = two ? a0 + a_ps : a0, *B = b;
    __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0;
    for (size_t g = 0; g < groups; g++, a0 += 16, a1 += 16, B += bw) {
      __m256i av = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a0)),
          _mm_loadu_si128((const __m128i *)a1), 1);
#define COL(j) \
  c##j = _mm256_add_epi32(c##j, _mm256_madd_epi16(MUL_S8U8(av, bcast8x4(B + 4 * j)), ones));
      COL(0) COL(1) COL(2) COL(3)
#undef COL
    }
    _Alignas(32) int32_t t[4][8];
    _mm256_store_si256((__m256i *)t[0], c0);
    _mm256_store_si256((__m256i *)t[1], c1);
    _mm256_store_si256((__m256i *)t[2], c2);
    _mm256_store_si256((__m256i *)t[3], c3);
    for (size_t i = 0; i < (two ? 8u : 4u); i++)
      for (size_t j = 0; j < cols; j++) {
        int32_t *d = c + (r0 + i) * ldc + j;
        *d = (int32_t)((accumulate ? (uint32_t)*d : 0u) + (uint32_t)t[j][i]);
      }
  }
}

BYTE_UK8(kiln__qgemm_uk_4x8__avx2_u8s8, MUL_U8S8)
BYTE_UK8(kiln__qgemm_uk_4x8__avx2_s8u8, MUL_S8U8)
#undef BROW8
#undef STORE8
#undef LOAD8
#undef BYTE_UK8
#undef BROW
#undef STORE
#undef LOAD
#undef BMR
#undef BYTE_UK

/* with_sums is a constant in each instance (below). */
__attribute__((always_inline)) TARGET static inline void pack_b16(const uint8_t *src, size_t ks,
                                                                  size_t kc, uint8_t xor_,
                                                                  bool stored_signed, uint8_t *dst,
                                                                  int32_t *sums,
                                                                  const bool with_sums) {
  const __m128i x = _mm_set1_epi8((char)xor_);
  /* Column sums: VPMADDUBSW of the quads by ones (u8 x s8 or, with the operands swapped, the
     stored int8 x u8 ones), then VPMADDWD by ones: one int32 per column per quad, exact. */
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
  for (size_t p = 0; p < kc; p += 4) {
    __m128i r0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + p * ks)), x);
    __m128i r1 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + (p + 1) * ks)), x);
    __m128i r2 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + (p + 2) * ks)), x);
    __m128i r3 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + (p + 3) * ks)), x);
    __m128i t0 = _mm_unpacklo_epi8(r0, r1), t1 = _mm_unpackhi_epi8(r0, r1);
    __m128i t2 = _mm_unpacklo_epi8(r2, r3), t3 = _mm_unpackhi_epi8(r2, r3);
    /* columns 0-3, 4-7 | 8-11, 12-15: each column's 4 bytes in k order */
    __m256i q0 = _mm256_set_m128i(_mm_unpackhi_epi16(t0, t2), _mm_unpacklo_epi16(t0, t2));
    __m256i q1 = _mm256_set_m128i(_mm_unpackhi_epi16(t1, t3), _mm_unpacklo_epi16(t1, t3));
    _mm256_storeu_si256((__m256i *)dst, q0);
    _mm256_storeu_si256((__m256i *)(dst + 32), q1);
    dst += 64;
    if (!with_sums) continue;
    __m256i m0 = stored_signed ? _mm256_maddubs_epi16(ones8, q0) : _mm256_maddubs_epi16(q0, ones8);
    __m256i m1 = stored_signed ? _mm256_maddubs_epi16(ones8, q1) : _mm256_maddubs_epi16(q1, ones8);
    s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(m0, ones16));
    s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(m1, ones16));
  }
  if (!with_sums) return;
  int32_t t[16];
  _mm256_storeu_si256((__m256i *)t, s0);
  _mm256_storeu_si256((__m256i *)(t + 8), s1);
  for (int i = 0; i < 16; i++) sums[i] += t[i];
}

TARGET void kiln__qpack_b16_bytes__avx2(const uint8_t *src, size_t ks, size_t kc, uint8_t xor_,
                                        bool stored_signed, uint8_t *dst, int32_t *sums) {
  if (sums) pack_b16(src, ks, kc, xor_, stored_signed, dst, sums, true);
  else pack_b16(src, ks, kc, xor_, stored_signed, dst, NULL, false);
}

/* 8 int32 in [lo, hi] to 8 bytes. */
TARGET static inline void store8(void *dst, __m256i v, bool to_signed) {
  __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  w = to_signed ? _mm_packs_epi16(w, w) : _mm_packus_epi16(w, w);
  _mm_storel_epi64((__m128i *)dst, w);
}

/* clamp(rint(f) + zp) into [lo, hi]: the clamp runs on the integer-valued float before the add,
   which is the same for every f (the bounds are exact in float); NaN becomes 0 first. */
TARGET static inline __m256i round_clamp(__m256 f, float lo_z, float hi_z, __m256i zp) {
  __m256 r = _mm256_round_ps(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q));
  r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(lo_z)), _mm256_set1_ps(hi_z));
  return _mm256_add_epi32(_mm256_cvtps_epi32(r), zp);
}

/* The tile epilogue (qgemm.h): per row, the row's constants are broadcast once and its columns
   run 16 at a time (two vectors packed to 16 bytes in one store), then 8, then the scalar tail.
   Requantization is v -> clamp((float)v * mult) -> VCVTPS2DQ + zy: the clamp to the
   integer-valued bounds [lo - zy, hi - zy] commutes with rounding, and the conversion rounds
   to nearest even (the default MXCSR mode, which rintf uses too), so no separate VROUNDPS. The
   product of an int32 and a finite multiplier is never NaN. */
typedef struct ep_cols {
  const int32_t *cs, *zb, *bias;
  const float *mult;
} ep_cols;

#define EP_INLINE __attribute__((always_inline)) TARGET static inline

/* The corrected sums of columns j .. j + 8 of a row (its acc, za and rowterm broadcast). has_cs
   and has_cmult are constants in each instance of ep_rows (below); the rarer per-column zb and
   bias are tested, expected absent. */
EP_INLINE __m256i ep_sum8(const ep_cols *c, const int32_t *acc, size_t j, __m256i radd,
                          __m256i za, __m256i rt, const bool has_cs) {
  __m256i v = _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(acc + j)), radd);
  if (has_cs)
    v = _mm256_sub_epi32(
        v, _mm256_mullo_epi32(za, _mm256_loadu_si256((const __m256i *)(c->cs + j))));
  if (__builtin_expect(c->zb != NULL, 0))
    v = _mm256_sub_epi32(
        v, _mm256_mullo_epi32(rt, _mm256_loadu_si256((const __m256i *)(c->zb + j))));
  if (__builtin_expect(c->bias != NULL, 0))
    v = _mm256_add_epi32(v, _mm256_loadu_si256((const __m256i *)(c->bias + j)));
  return v;
}

EP_INLINE __m256i ep_req8(const ep_cols *c, size_t j, __m256i v, __m256 mrow, __m256 lo, __m256 hi,
                          __m256i zy, const bool has_cmult) {
  __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), has_cmult ? _mm256_loadu_ps(c->mult + j) : mrow);
  f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
  return _mm256_add_epi32(_mm256_cvtps_epi32(f), zy);
}
#define EP_SUM8(j) ep_sum8(&c, acc, j, radd, za, rt, has_cs)
#define EP_REQ8(j, v) ep_req8(&c, j, v, mrow, lo, hi, zy, has_cmult)

/* The vector part of every row (columns 0 .. n & ~7); returns n & ~7. */
EP_INLINE size_t ep_rows(const kiln__qep_tile *t, const bool has_cs, const bool has_cmult) {
  const size_t n = t->n, n8 = n & ~(size_t)7, n16 = n & ~(size_t)15;
  const bool i32 = t->kind == KILN__QOUT_I32, to_signed = t->kind == KILN__QOUT_S8;
  /* Locals, so that the byte stores (which may alias anything) do not force reloads. */
  const ep_cols c = {t->cs, t->zb, t->bias, t->mult};
  const __m256 lo = _mm256_set1_ps((float)(t->lo - t->zy));
  const __m256 hi = _mm256_set1_ps((float)(t->hi - t->zy));
  const __m256i zy = _mm256_set1_epi32(t->zy);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i dqz = _mm256_set1_epi32(t->dq_zp);
  const __m256 dqs = _mm256_set1_ps(t->dq_scale);
  for (size_t i = 0; i < t->rows; i++) {
    const int32_t *acc = t->acc + i * t->ldacc;
    const __m256i radd = _mm256_set1_epi32(t->radd[i]);
    const __m256i za = _mm256_set1_epi32(has_cs ? t->za[i] : 0);
    const __m256i rt = _mm256_set1_epi32(t->zb ? t->rowterm[i] : 0);
    const __m256 mrow = _mm256_set1_ps(has_cmult || !t->mult_row ? 0.0f : t->mult_row[i]);
    size_t j = 0;
    if (i32 && t->dq) { /* Cast's, Mul's and Add's float operations, one at a time */
      float *d = (float *)t->dst + i * t->ldd;
      for (; j < n8; j += 8) {
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(EP_SUM8(j)), _mm256_loadu_ps(t->dq_mult + j));
        if (t->mult_row) f = _mm256_mul_ps(f, mrow);
        if (t->dq_bias) f = _mm256_add_ps(f, _mm256_loadu_ps(t->dq_bias + j));
        _mm256_storeu_ps(d + j, f);
      }
      continue;
    }
    if (i32) {
      int32_t *d = (int32_t *)t->dst + i * t->ldd;
      for (; j < n8; j += 8) _mm256_storeu_si256((__m256i *)(d + j), EP_SUM8(j));
      continue;
    }
    if (t->dq) { /* DequantizeLinear's multiply, then Add's add: two roundings, as the ops */
      float *d = (float *)t->dst + i * t->ldd;
      for (; j < n8; j += 8) {
        __m256i q = _mm256_sub_epi32(EP_REQ8(j, EP_SUM8(j)), dqz);
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(q), dqs);
        if (t->dq_bias) f = _mm256_add_ps(f, _mm256_loadu_ps(t->dq_bias + j));
        _mm256_storeu_ps(d + j, f);
      }
      continue;
    }
    uint8_t *d = (uint8_t *)t->dst + i * t->ldd;
    for (; j < n16; j += 16) {
      __m256i q0 = EP_REQ8(j, EP_SUM8(j)), q1 = EP_REQ8(j + 8, EP_SUM8(j + 8));
      /* int16 per lane: q0[0-3] q1[0-3] | q0[4-7] q1[4-7]; bytes the same, dwords reordered */
      __m256i w = _mm256_packs_epi32(q0, q1);
      w = to_signed ? _mm256_packs_epi16(w, w) : _mm256_packus_epi16(w, w);
      w = _mm256_permutevar8x32_epi32(w, order);
      _mm_storeu_si128((__m128i *)(d + j), _mm256_castsi256_si128(w));
    }
    if (j < n8) store8(d + j, EP_REQ8(j, EP_SUM8(j)), to_signed);
  }
  return n8;
}
#undef EP_SUM8
#undef EP_REQ8
#undef EP_INLINE

/* Instances for the common cases: conv (per-row multiplier, weights' za 0) and MatMul
   (per-column multiplier, with or without the activations' za). Returns n & ~7. */
TARGET static size_t ep_vec(const kiln__qep_tile *t) {
  bool cs = t->za != NULL, cmult = t->mult != NULL;
  return cs ? (cmult ? ep_rows(t, true, true) : ep_rows(t, true, false))
            : (cmult ? ep_rows(t, false, true) : ep_rows(t, false, false));
}

/* The last n - n8 (< 8) columns of every row through the vector path: the column values and up
   to 8 rows' sums copied into zero-padded 8-wide buffers, the results into a buffer of which the
   row's part is copied out. The portable epilogue (rintf, a double per value) took 2% of
   MobileNetV2 int8: its 7x7 and 14x14 planes make GEMMs 49 and 196 columns wide. Same values:
   the vector and portable paths are the same requantization. */
TARGET static void ep_tail(const kiln__qep_tile *t, size_t n8) {
  const size_t r = t->n - n8;
  const bool wide = t->kind == KILN__QOUT_I32 || t->dq; /* 4-byte outputs */
  int32_t cs[8] = {0}, zb[8] = {0}, bias[8] = {0}, acc[8 * 8], out[8 * 8];
  float mult[8] = {0}, dq_bias[8] = {0}, dq_mult[8] = {0}, outf[8 * 8];
  for (size_t j = 0; j < r; j++) {
    if (t->za) cs[j] = t->cs[n8 + j];
    if (t->zb) zb[j] = t->zb[n8 + j];
    if (t->bias) bias[j] = t->bias[n8 + j];
    if (t->mult) mult[j] = t->mult[n8 + j];
    if (t->dq_bias) dq_bias[j] = t->dq_bias[n8 + j];
    if (t->dq_mult) dq_mult[j] = t->dq_mult[n8 + j];
  }
  kiln__qep_tile u = *t;
  u.acc = acc;
  u.ldacc = 8;
  u.n = 8;
  u.cs = cs;
  u.zb = t->zb ? zb : NULL;
  u.bias = t->bias ? bias : NULL;
  u.mult = t->mult ? mult : NULL;
  u.dq_bias = t->dq_bias ? dq_bias : NULL;
  u.dq_mult = t->dq_mult ? dq_mult : NULL;
  u.dst = t->dq ? (void *)outf : (void *)out;
  u.ldd = 8;
  for (size_t i0 = 0; i0 < t->rows; i0 += 8) {
    size_t rows = KILN__MIN((size_t)8, t->rows - i0);
    for (size_t i = 0; i < rows; i++)
      for (size_t j = 0; j < 8; j++)
        acc[i * 8 + j] = j < r ? t->acc[(i0 + i) * t->ldacc + n8 + j] : 0;
    u.rows = rows;
    u.radd = t->radd + i0;
    u.za = t->za ? t->za + i0 : NULL;
    u.rowterm = t->rowterm + i0;
    u.mult_row = t->mult_row ? t->mult_row + i0 : NULL;
    ep_vec(&u);
    size_t esz = wide ? 4 : 1;
    for (size_t i = 0; i < rows; i++) {
      /* r < 8 elements as fixed-size pieces (inlined; a variable memcpy is a libc call) */
      uint8_t *d = (uint8_t *)t->dst + ((i0 + i) * t->ldd + n8) * esz;
      const uint8_t *o = (const uint8_t *)u.dst + i * 8 * esz;
      size_t at = 0;
      if (wide) {
        if (r & 4) memcpy(d, o, 16), at = 16;
        if (r & 2) memcpy(d + at, o + at, 8), at += 8;
        if (r & 1) memcpy(d + at, o + at, 4);
      } else {
        if (r & 4) memcpy(d, o, 4), at = 4;
        if (r & 2) memcpy(d + at, o + at, 2), at += 2;
        if (r & 1) memcpy(d + at, o + at, 1);
      }
    }
  }
}

TARGET void kiln__qep_tile__avx2(const kiln__qep_tile *t) {
  size_t n8 = ep_vec(t);
  if (n8 != t->n) ep_tail(t, n8);
}

/* One row (qconv_dw.c): the tile epilogue with one row. */
TARGET void kiln__qep__avx2(const kiln__qep_row *r) {
  int32_t radd = (int32_t)((uint32_t)r->row_add +
                           (uint32_t)(r->kind == KILN__QOUT_I32 || r->bias ? 0 : r->bias_row));
  kiln__qep_tile t = {.acc = r->acc, .rows = 1, .n = r->n, .radd = &radd,
                      .za = r->za ? &r->za : NULL, .rowterm = &r->rowterm,
                      .mult_row = (r->kind == KILN__QOUT_I32 && r->dq ? !r->dq_row : r->mult != NULL)
                                      ? NULL
                                      : &r->mult_row,
                      .cs = r->cs, .zb = r->zb,
                      .bias = r->kind == KILN__QOUT_I32 ? NULL : r->bias, .mult = r->mult,
                      .zy = r->zy, .lo = r->lo, .hi = r->hi, .kind = r->kind, .dq = r->dq,
                      .dq_zp = r->dq_zp, .dq_scale = r->dq_scale, .dq_mult = r->dq_mult,
                      .dq_bias = r->dq_bias, .dst = r->dst};
  kiln__qep_tile__avx2(&t);
}

TARGET void kiln__q_quantize__avx2(const float *x, size_t n, float scale, int32_t zp,
                                   bool to_signed, void *y) {
  int32_t lo = to_signed ? -128 : 0, hi = to_signed ? 127 : 255;
  float lo_z = (float)(lo - zp), hi_z = (float)(hi - zp);
  __m256 s = _mm256_set1_ps(scale);
  __m256i z = _mm256_set1_epi32(zp);
  size_t i = 0;
  /* Division, not a reciprocal multiply: the reference divides, and the results must match. */
  for (; i + 8 <= n; i += 8)
    store8((uint8_t *)y + i, round_clamp(_mm256_div_ps(_mm256_loadu_ps(x + i), s), lo_z, hi_z, z),
           to_signed);
  for (; i < n; i++) {
    float r = __builtin_rintf(x[i] / scale);
    if (r != r) r = 0.0f;
    double d = (double)r + zp;
    int32_t q = d < lo ? lo : d > hi ? hi : (int32_t)d;
    if (to_signed) ((int8_t *)y)[i] = (int8_t)q;
    else ((uint8_t *)y)[i] = (uint8_t)q;
  }
}

TARGET void kiln__q_dequantize__avx2(const void *x, bool from_signed, size_t n, int32_t zp,
                                     float scale, float *y) {
  __m256 s = _mm256_set1_ps(scale);
  __m256i z = _mm256_set1_epi32(zp);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m128i b = _mm_loadl_epi64((const __m128i *)((const uint8_t *)x + i));
    __m256i v = from_signed ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
    _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, z)), s));
  }
  for (; i < n; i++) {
    int32_t v = from_signed ? ((const int8_t *)x)[i] : ((const uint8_t *)x)[i];
    y[i] = (float)(v - zp) * scale;
  }
}

TARGET void kiln__q_minmax__avx2(const float *x, size_t n, float *mn, float *mx) {
  /* min_ps(v, m) returns m when v is NaN, so NaN is ignored as in the scalar loop. */
  __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    a = _mm256_min_ps(v, a);
    b = _mm256_max_ps(v, b);
  }
  float la[8], lb[8];
  _mm256_storeu_ps(la, a);
  _mm256_storeu_ps(lb, b);
  float lo = 0.0f, hi = 0.0f;
  for (int k = 0; k < 8; k++) {
    if (la[k] < lo) lo = la[k];
    if (lb[k] > hi) hi = lb[k];
  }
  for (; i < n; i++) {
    if (x[i] < lo) lo = x[i];
    if (x[i] > hi) hi = x[i];
  }
  *mn = lo;
  *mx = hi;
}

#endif
