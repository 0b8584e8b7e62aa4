/* Integer depthwise convolution (see qconv_dw.h): a portable loop for any geometry, an AVX2
 * row kernel for strides 1 and 2 without horizontal dilation, and an AVX2 3x3 kernel for the
 * small planes (up to DW3_WMAX wide; see its section below). 3x3 strides 1 and 2 with 16 or more
 * channels go to the channels-in-lanes kernel of qconv_dwc.c instead.
 *
 * AVX2 scheme: each input row is widened once per channel to int16 (x - zx), zero-padded (so the
 * padding contributes (zx - zx) = 0, as in the reference), and kept in a small ring of the rows
 * the kernel's height spans. Products go through VPMADDWD, two taps per instruction: an int32
 * lane holds the int16 pair (tap kx, tap kx + 1) of one output and the weight register the pair
 * (w[kx] - zw, w[kx + 1] - zw), so one VPMADDWD gives 8 outputs x 2 taps, exact (|x - zx| and
 * |w - zw| <= 255, a pair sum < 2^17). Both strides load the pairs straight from the padded row
 * (see sums16). An odd kernel width pairs its last tap with a zero weight. The int32 sums are
 * requantized in registers with the float operations of qgemm's epilogue (the reference's), so
 * results are byte-identical to src/kernels/ref/quant.c. */
#include "kernels/cpu/qconv_dw.h"

#include "core/threadpool.h"
#include "ir/op.h"

#ifdef KILN__QGEMM_X86
#include <immintrin.h>
#define TARGET __attribute__((target("avx2,fma")))
#endif

#define GEN_ROW 256     /* accumulators per chunk of the portable loop */
#define ACC_MAX 2048    /* AVX2: int32 accumulators of one output row (ow rounded up to 16) */
#define RING_MAX 16384  /* AVX2: int16 of the cached padded rows */
#define SLOTS_MAX 16
#define WPAIRS_MAX 64

static inline int32_t ld8(const void *p, bool is_signed, size_t i) {
  return is_signed ? ((const int8_t *)p)[i] : ((const uint8_t *)p)[i];
}

static inline int32_t zw_at(const kiln__qzp *z, size_t c) {
  if (!z->n) return 0;
  return ld8(z->p, z->is_signed, z->n == 1 ? 0 : c);
}

static size_t out_esz(const kiln__qdw_args *a) { return a->kind == KILN__QOUT_I32 ? 4 : 1; }

/* acc[0..n) are the exact sums of channel ch: requantize (or copy) them into dst. With za 0, no
   zb and no row_add the epilogue's zero-point correction vanishes (cs is not read). */
static void epilogue(const kiln__qdw_args *a, bool avx2, size_t ch, const int32_t *acc, size_t n,
                     void *dst) {
  kiln__qep_row r = {.acc = acc, .n = n, .kind = a->kind, .dst = dst};
  if (a->kind != KILN__QOUT_I32) {
    r.bias_row = a->bias ? a->bias[ch] : 0;
    r.mult_row = a->mult[ch];
    r.zy = a->zy;
    r.lo = a->kind == KILN__QOUT_U8 ? 0 : -128;
    r.hi = a->kind == KILN__QOUT_U8 ? 255 : 127;
  }
#ifdef KILN__QGEMM_X86
  if (avx2) {
    kiln__qep__avx2(&r);
    return;
  }
#endif
  (void)avx2;
  kiln__qep__generic(&r);
}

static void channel_generic(const kiln__qdw_args *a, bool avx2, size_t b, size_t ch) {
  const uint8_t *x = (const uint8_t *)a->x + (b * a->c + ch) * a->h * a->w;
  const uint8_t *w = (const uint8_t *)a->wt + ch * a->kh * a->kw;
  int32_t zw = zw_at(&a->zw, ch), acc[GEN_ROW];
  size_t esz = out_esz(a);
  uint8_t *y = (uint8_t *)a->y + (b * a->c + ch) * a->oh * a->ow * esz;
  for (size_t oy = 0; oy < a->oh; oy++)
    for (size_t ox0 = 0; ox0 < a->ow; ox0 += GEN_ROW) {
      size_t cnt = KILN__MIN((size_t)GEN_ROW, a->ow - ox0);
      for (size_t t = 0; t < cnt; t++) {
        uint32_t s = 0; /* wraps as the reference's int32 sum */
        for (size_t ky = 0; ky < a->kh; ky++) {
          int64_t iy = (int64_t)oy * a->sh - a->pt + (int64_t)ky * a->dh;
          if (iy < 0 || iy >= (int64_t)a->h) continue;
          for (size_t kx = 0; kx < a->kw; kx++) {
            int64_t ix = (int64_t)(ox0 + t) * a->sw - a->pl + (int64_t)kx * a->dw;
            if (ix < 0 || ix >= (int64_t)a->w) continue;
            int32_t xv = ld8(x, a->x_signed, (size_t)iy * a->w + (size_t)ix) - a->zx;
            int32_t wv = ld8(w, a->w_signed, ky * a->kw + kx) - zw;
            s += (uint32_t)(xv * wv);
          }
        }
        acc[t] = (int32_t)s;
      }
      epilogue(a, avx2, ch, acc, cnt, y + (oy * a->ow + ox0) * esz);
    }
}

/* AVX2 row layout (see the top): plen int16 per padded row, ns rows in the ring, np tap pairs per
   kernel row. */
typedef struct dw_plan {
  size_t ow16, np, ns, plen;
} dw_plan;

#ifdef KILN__QGEMM_X86
static size_t round_up(size_t x, size_t r) { return (x + r - 1) / r * r; }

static bool avx2_plan(const kiln__qdw_args *a, dw_plan *p) {
  if ((a->sw != 1 && a->sw != 2) || a->dw != 1 || a->pt < 0 || a->pl < 0 || a->dh < 1 ||
      a->kh > SLOTS_MAX || a->kw > 2 * WPAIRS_MAX)
    return false;
  p->ow16 = round_up(a->ow, 16);
  p->np = (a->kw + 1) / 2;
  /* The last 16 int16 loaded start at sw (ow16 - 16) + (sw == 1 ? 1 : 16) + 2 (np - 1). */
  p->plen = round_up((size_t)a->sw * p->ow16 + 2 * p->np, 16);
  p->ns = (a->kh - 1) * (size_t)a->dh + 1;
  return p->ns <= SLOTS_MAX && p->ns * p->plen <= RING_MAX && p->ow16 <= ACC_MAX &&
         a->kh * p->np <= WPAIRS_MAX;
}

/* Input row xrow as int16 (x - zx), padded with zeros, into d (plen values). */
TARGET static void fill_row(const kiln__qdw_args *a, const dw_plan *p, const uint8_t *xrow,
                            int16_t *d) {
  size_t lead = KILN__MIN((size_t)a->pl, p->plen), n = KILN__MIN(a->w, p->plen - lead), t = 0;
  memset(d, 0, lead * sizeof *d);
  __m256i z = _mm256_set1_epi16((int16_t)a->zx);
  int16_t *o = d + lead;
  for (; t + 16 <= n; t += 16) {
    __m128i b = _mm_loadu_si128((const __m128i *)(xrow + t));
    __m256i v = a->x_signed ? _mm256_cvtepi8_epi16(b) : _mm256_cvtepu8_epi16(b);
    _mm256_storeu_si256((__m256i *)(o + t), _mm256_sub_epi16(v, z));
  }
  for (; t < n; t++) o[t] = (int16_t)(ld8(xrow, a->x_signed, t) - a->zx);
  memset(o + n, 0, (p->plen - lead - n) * sizeof *d);
}

/* The requantization of kiln__qep_tile__avx2 (qgemm_avx2.c) for one channel, fused into the row
   loop: y = clamp(rint((float)(acc + bias) * mult) + zy), the clamp on the float before the
   zero point is added (the bounds are integers, so clamping commutes with rounding) and the
   rounding done by VCVTPS2DQ (nearest even, the default MXCSR mode rintf uses). The NaN test is
   left out: the multiplier is finite (checked by the caller), so the product never is NaN. */
typedef struct rq_consts {
  __m256i bias, zy;
  __m256 mult, lo_z, hi_z;
  bool to_signed;
} rq_consts;

TARGET static rq_consts rq_init(const kiln__qdw_args *a, size_t ch) {
  int32_t lo = a->kind == KILN__QOUT_U8 ? 0 : -128, hi = a->kind == KILN__QOUT_U8 ? 255 : 127;
  rq_consts r = {_mm256_set1_epi32(a->bias ? a->bias[ch] : 0), _mm256_set1_epi32(a->zy),
                 _mm256_set1_ps(a->mult[ch]), _mm256_set1_ps((float)(lo - a->zy)),
                 _mm256_set1_ps((float)(hi - a->zy)), a->kind == KILN__QOUT_S8};
  return r;
}

TARGET static inline __m256i rq8(__m256i v, const rq_consts *r) {
  __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(v, r->bias)), r->mult);
  f = _mm256_min_ps(_mm256_max_ps(f, r->lo_z), r->hi_z);
  return _mm256_add_epi32(_mm256_cvtps_epi32(f), r->zy);
}

/* 16 sums (8 in each register, in order) to 16 bytes in order. */
TARGET static inline __m128i requant16(__m256i a0, __m256i a1, const rq_consts *r) {
  __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(rq8(a0, r), rq8(a1, r)), 0xD8);
  __m128i lo = _mm256_castsi256_si128(w), hi = _mm256_extracti128_si256(w, 1);
  return r->to_signed ? _mm_packs_epi16(lo, hi) : _mm_packus_epi16(lo, hi);
}

/* The int32 sums of outputs ox .. ox + 15 of a row from nr padded rows, np tap pairs each. The
   int32 lane of a 16-value load from P + i holds (P[i + 2l], P[i + 2l + 1]): with stride 2 that
   is tap pair pi of output ox + l at i = 2 ox + 2 pi (and ox + 8 + l at 16 further); with stride
   1 it is the pair of output ox + 2l at i = ox + 2 pi, and of ox + 2l + 1 at one further, so the
   stride-1 sums come out as even and odd outputs and are interleaved at the end. */
TARGET static inline __attribute__((always_inline)) void sums16(
    const int16_t *const *rows, const uint32_t *const *wr, size_t ox, size_t nr, size_t np,
    size_t sw, __m256i *s0, __m256i *s1) {
  __m256i a0 = _mm256_setzero_si256(), a1 = _mm256_setzero_si256();
  size_t next = sw == 1 ? 1 : 16;
  for (size_t r = 0; r < nr; r++) {
    const int16_t *q = rows[r] + sw * ox;
    for (size_t pi = 0; pi < np; pi++, q += 2) {
      __m256i wv = _mm256_set1_epi32((int32_t)wr[r][pi]);
      __m256i v0 = _mm256_loadu_si256((const __m256i *)q);
      __m256i v1 = _mm256_loadu_si256((const __m256i *)(q + next));
      a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(v0, wv));
      a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(v1, wv));
    }
  }
  if (sw == 1) { /* even and odd outputs -> ox .. ox + 7 and ox + 8 .. ox + 15 */
    __m256i lo = _mm256_unpacklo_epi32(a0, a1), hi = _mm256_unpackhi_epi32(a0, a1);
    a0 = _mm256_permute2x128_si256(lo, hi, 0x20);
    a1 = _mm256_permute2x128_si256(lo, hi, 0x31);
  }
  *s0 = a0;
  *s1 = a1;
}

TARGET static void channel_avx2(const kiln__qdw_args *a, const dw_plan *p, size_t b, size_t ch,
                                int16_t *ring, int32_t *acc) {
  const uint8_t *x = (const uint8_t *)a->x + (b * a->c + ch) * a->h * a->w;
  const uint8_t *w = (const uint8_t *)a->wt + ch * a->kh * a->kw;
  int32_t zw = zw_at(&a->zw, ch);
  size_t esz = out_esz(a), np = p->np;
  uint8_t *y = (uint8_t *)a->y + (b * a->c + ch) * a->oh * a->ow * esz;
  uint32_t wp[WPAIRS_MAX]; /* (w[2pi] - zw) low, (w[2pi + 1] - zw) high; 0 past the width */
  for (size_t ky = 0; ky < a->kh; ky++)
    for (size_t pi = 0; pi < np; pi++) {
      size_t k0 = 2 * pi, k1 = k0 + 1;
      int32_t w0 = ld8(w, a->w_signed, ky * a->kw + k0) - zw;
      int32_t w1 = k1 < a->kw ? ld8(w, a->w_signed, ky * a->kw + k1) - zw : 0;
      wp[ky * np + pi] = (uint16_t)w0 | (uint32_t)(uint16_t)w1 << 16;
    }
  int64_t tag[SLOTS_MAX];
  for (size_t i = 0; i < p->ns; i++) tag[i] = -1;
  rq_consts rq = {0};
  if (a->kind != KILN__QOUT_I32) rq = rq_init(a, ch);
  for (size_t oy = 0; oy < a->oh; oy++) {
    const int16_t *rows[SLOTS_MAX];
    const uint32_t *wr[SLOTS_MAX];
    size_t nr = 0;
    for (size_t ky = 0; ky < a->kh; ky++) {
      int64_t iy = (int64_t)oy * a->sh - a->pt + (int64_t)ky * a->dh;
      if (iy < 0 || iy >= (int64_t)a->h) continue; /* a padding row: all zeros */
      size_t slot = (size_t)iy % p->ns;
      int16_t *r = ring + slot * p->plen;
      if (tag[slot] != iy) {
        fill_row(a, p, x + (size_t)iy * a->w, r);
        tag[slot] = iy;
      }
      rows[nr] = r;
      wr[nr++] = wp + ky * np;
    }
    for (size_t ox = 0; ox < a->ow; ox += 16) {
      __m256i a0, a1;
      /* Constant trip counts for the common 3-wide kernels (3 rows inside, 2 pairs) unroll. */
      if (nr == 3 && np == 2 && a->sw == 1)
        sums16(rows, wr, ox, 3, 2, 1, &a0, &a1);
      else if (nr == 3 && np == 2)
        sums16(rows, wr, ox, 3, 2, 2, &a0, &a1);
      else
        sums16(rows, wr, ox, nr, np, (size_t)a->sw, &a0, &a1);
      size_t cnt = KILN__MIN((size_t)16, a->ow - ox);
      uint8_t *dst = y + (oy * a->ow + ox) * esz;
      if (a->kind == KILN__QOUT_I32) {
        _mm256_storeu_si256((__m256i *)(acc + ox), a0);
        _mm256_storeu_si256((__m256i *)(acc + ox + 8), a1);
        memcpy(dst, acc + ox, cnt * sizeof *acc);
        continue;
      }
      __m128i q = requant16(a0, a1, &rq);
      if (cnt == 16) {
        _mm_storeu_si128((__m128i *)dst, q);
      } else {
        uint8_t t[16];
        _mm_storeu_si128((__m128i *)t, q);
        memcpy(dst, t, cnt);
      }
    }
  }
}

/* ---- 3x3, strides 1 and 2, small planes ------------------------------------------------------
   Each output row is cut into blocks of 8 outputs, one int32 lane each. The zero point is folded
   out of the inner loop, sum (x - zx) w' = sum x w' - zx sum w' (w' = w - zw, exact mod 2^32 like
   the reference's int32 sum), which holds when every padding tap reads zx: input rows are kept
   as bytes (not widened) in a ring of 3 rows padded with zx, and a row above or below the plane
   is a row of zx bytes. The 9 taps go in 5 VPMADDWD pairs, (r0k0, r0k1) (r0k2, r1k0)
   (r1k1, r1k2) (r2k0, r2k1) (r2k2, 0), built from the bytes by an unpack and a widening: an int16
   pair holds two bytes of one output, |x| <= 255, |w'| <= 255, so a pair sum < 2^17. No lanes are
   wasted on a 7-wide row (the row kernel computes 16), and no per-row widening. An in-place
   version (edge blocks from a small zx-filled copy) was 2x slower: the byte stores of each edge
   copy stalled the wide loads after them (store forwarding). */
#define DW3_ZW 4096 /* bytes of a padded row of the 3x3 kernel (and of its zx row) */
/* Planes up to this wide: measured (bench/RESULTS.md, 2026-11-27) 15-27% faster than the row
   kernel on MobileNetV2's 28-, 14- and 7-wide planes, but equal at 56 and 12-18% slower at 112,
   where the row kernel's one widening per input row beats this one's per-tap widening. */
#define DW3_WMAX 32

static bool dw3_fits(const kiln__qdw_args *a) {
  return a->kh == 3 && a->kw == 3 && a->dh == 1 && a->dw == 1 && a->sh == a->sw &&
         (a->sw == 1 || a->sw == 2) && a->pt >= 0 && a->pt <= 2 && a->pl >= 0 && a->pl <= 2 &&
         a->w <= DW3_WMAX && a->w + 2 + (a->ow + 15) / 16 * 16 * (size_t)a->sw + 20 <= DW3_ZW;
}

/* Bytes b[0..16) of a row as int16, signed or not. */
TARGET static inline __m256i wid(__m128i b, bool sgn) {
  return sgn ? _mm256_cvtepi8_epi16(b) : _mm256_cvtepu8_epi16(b);
}

/* The raw sums sum x w' of 8 outputs from rows r[0..3), each pointing at the byte of the block's
   first tap (column ox * sw - pl) and readable 10 (stride 1) or 18 (stride 2) bytes on;
   p[0..5) the weight pairs. */
TARGET static inline __attribute__((always_inline)) __m256i dw3_sums(const uint8_t *const *r,
                                                                    const __m256i *p, int sw,
                                                                    bool sgn) {
  __m256i s;
  if (sw == 1) { /* pairs of bytes c + l and c + l + 1 (or the next row's c + l) */
    __m128i k0[3], k1[3], k2[3];
    for (int i = 0; i < 3; i++) {
      k0[i] = _mm_loadl_epi64((const __m128i *)r[i]);
      k1[i] = _mm_loadl_epi64((const __m128i *)(r[i] + 1));
      k2[i] = _mm_loadl_epi64((const __m128i *)(r[i] + 2));
    }
    s = _mm256_madd_epi16(wid(_mm_unpacklo_epi8(k0[0], k1[0]), sgn), p[0]);
    s = _mm256_add_epi32(s, _mm256_madd_epi16(wid(_mm_unpacklo_epi8(k2[0], k0[1]), sgn), p[1]));
    s = _mm256_add_epi32(s, _mm256_madd_epi16(wid(_mm_unpacklo_epi8(k1[1], k2[1]), sgn), p[2]));
    s = _mm256_add_epi32(s, _mm256_madd_epi16(wid(_mm_unpacklo_epi8(k0[2], k1[2]), sgn), p[3]));
    __m256i l2 = sgn ? _mm256_cvtepi8_epi32(k2[2]) : _mm256_cvtepu8_epi32(k2[2]); /* x (w22, 0) */
    s = _mm256_add_epi32(s, _mm256_madd_epi16(l2, p[4]));
  } else { /* 16 bytes from c hold the pairs (k0, k1) of the 8 outputs; from c + 2, k2 evenly */
    __m256i a[3], c[3];
    for (int i = 0; i < 3; i++) {
      a[i] = wid(_mm_loadu_si128((const __m128i *)r[i]), sgn);
      c[i] = wid(_mm_loadu_si128((const __m128i *)(r[i] + 2)), sgn);
    }
    /* (k2 of row i, k0 of row i + 1): the low int16 of c[i]'s lane, the low of a[i + 1]'s. */
    __m256i m01 = _mm256_blend_epi16(c[0], _mm256_slli_epi32(a[1], 16), 0xAA);
    s = _mm256_madd_epi16(a[0], p[0]);
    s = _mm256_add_epi32(s, _mm256_madd_epi16(m01, p[1]));
    /* (k1, k2) of row 1: shift a[1] right by one int16 across its pairs is c[1] shifted back by
       one: lane l of (a[1] >> 16) | (c[1] << 16) is (x[c + 2l + 1], x[c + 2l + 2]). */
    __m256i r1 = _mm256_blend_epi16(_mm256_srli_epi32(a[1], 16), _mm256_slli_epi32(c[1], 16),
                                    0xAA);
    s = _mm256_add_epi32(s, _mm256_madd_epi16(r1, p[2]));
    s = _mm256_add_epi32(s, _mm256_madd_epi16(a[2], p[3]));
    s = _mm256_add_epi32(s, _mm256_madd_epi16(c[2], p[4])); /* (k2, k3) x (w22, 0) */
  }
  return s;
}


/* Input row xrow (w <= DW3_WMAX bytes) into padded ring row d at byte 2. The ring's padding is
   zx from the start (planes_avx2) and stays so: only bytes 0 .. 32 are written, zx but on the
   row's bytes 2 .. 2 + w (keep2: 0xFF there, from planes_avx2). Rows up to 30 wide are built in
   a register and stored as one 32-byte store from d, so that the taps' loads right after it
   (within its 32 bytes) are forwarded from it; a libc memset/memcpy per row, several stores the
   loads straddled, was most of the cost of the 7- and 14-wide planes. A row whose 16- or
   32-byte load would pass the input's end (xend) takes memcpy. */
TARGET static inline void dw3_fill(uint8_t *d, const uint8_t *xrow, size_t w, const uint8_t *xend,
                                   __m256i zx, __m256i keep2) {
  size_t left = (size_t)(xend - xrow);
  if (w <= 14 && left >= 16) {
    __m128i v = _mm_slli_si128(_mm_loadu_si128((const __m128i *)xrow), 2);
    __m256i r = _mm256_inserti128_si256(zx, v, 0);
    _mm256_storeu_si256((__m256i *)d, _mm256_blendv_epi8(zx, r, keep2));
  } else if (w <= 30 && left >= 32) {
    __m256i v = _mm256_loadu_si256((const __m256i *)xrow);
    /* v << 2 bytes across the lanes: the high lane takes the low lane's last two bytes */
    v = _mm256_alignr_epi8(v, _mm256_permute2x128_si256(v, v, 0x08), 14);
    _mm256_storeu_si256((__m256i *)d, _mm256_blendv_epi8(zx, v, keep2));
  } else {
    memcpy(d + 2, xrow, w);
  }
}

/* One plane of the 3x3 kernel; zrow: DW3_ZW bytes of zx, ring: 3 x DW3_ZW bytes, zx everywhere
   but the rows' bytes (dw3_fill). Padded row byte i is input column i - 2. */
TARGET static void channel_dw3(const kiln__qdw_args *a, size_t b, size_t ch, const uint8_t *zrow,
                               uint8_t *ring, __m256i zxv, __m256i keep2) {
  const uint8_t *x = (const uint8_t *)a->x + (b * a->c + ch) * a->h * a->w;
  const uint8_t *w = (const uint8_t *)a->wt + ch * 9;
  int32_t zw = zw_at(&a->zw, ch), wq[10];
  uint32_t wsum = 0;
  for (size_t k = 0; k < 9; k++) {
    wq[k] = ld8(w, a->w_signed, k) - zw;
    wsum += (uint32_t)wq[k];
  }
  wq[9] = 0;
  __m256i p[5];
  for (size_t i = 0; i < 5; i++)
    p[i] = _mm256_set1_epi32(
        (int32_t)((uint16_t)wq[2 * i] | (uint32_t)(uint16_t)wq[2 * i + 1] << 16));
  uint32_t corr = (uint32_t)a->zx * wsum; /* the sum's zx term, subtracted mod 2^32 */
  size_t esz = out_esz(a);
  uint8_t *y = (uint8_t *)a->y + (b * a->c + ch) * a->oh * a->ow * esz;
  rq_consts rq = {0};
  __m256i neg = _mm256_set1_epi32((int32_t)(0u - corr));
  if (a->kind != KILN__QOUT_I32) {
    rq = rq_init(a, ch);
    rq.bias = _mm256_add_epi32(rq.bias, neg);
  }
  int sw = (int)a->sw;
  bool sgn = a->x_signed;
  const uint8_t *xend = (const uint8_t *)a->x + a->n * a->c * a->h * a->w;
  /* Output bytes past a row's end may be stored whole (16 or 8): the next row rewrites them. The
     plane's last row, whose next bytes are another plane's, stores exactly. */
  uint8_t *yend = y + a->oh * a->ow * esz;
  int64_t tag[3] = {-1, -1, -1};
  for (size_t oy = 0; oy < a->oh; oy++) {
    const uint8_t *row[3];
    for (int k = 0; k < 3; k++) {
      int64_t iy = (int64_t)oy * sw - a->pt + k;
      if (iy < 0 || iy >= (int64_t)a->h) {
        row[k] = zrow;
        continue;
      }
      uint8_t *d = ring + (size_t)(iy % 3) * DW3_ZW;
      if (tag[iy % 3] != iy) {
        dw3_fill(d, x + (size_t)iy * a->w, a->w, xend, zxv, keep2);
        tag[iy % 3] = iy;
      }
      row[k] = d;
    }
    for (size_t ox = 0; ox < a->ow; ox += 16) {
      __m256i v[2];
      size_t cnt = KILN__MIN((size_t)16, a->ow - ox);
      for (size_t h = 0; h < 2; h++) {
        if (h && cnt <= 8) {
          v[1] = v[0];
          break;
        }
        int c = (int)(ox + 8 * h) * sw - (int)a->pl + 2;
        const uint8_t *r[3] = {row[0] + c, row[1] + c, row[2] + c};
        v[h] = sw == 1 ? dw3_sums(r, p, 1, sgn) : dw3_sums(r, p, 2, sgn);
      }
      uint8_t *dst = y + (oy * a->ow + ox) * esz;
      if (a->kind == KILN__QOUT_I32) {
        int32_t t[16];
        _mm256_storeu_si256((__m256i *)t, _mm256_add_epi32(v[0], neg));
        _mm256_storeu_si256((__m256i *)(t + 8), _mm256_add_epi32(v[1], neg));
        memcpy(dst, t, cnt * sizeof *t);
        continue;
      }
      size_t room = (size_t)(yend - dst);
      if (cnt <= 8) { /* one requantized vector (requant16 would do this one twice) */
        __m256i q8 = rq8(v[0], &rq);
        __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(q8), _mm256_extracti128_si256(q8, 1));
        w = rq.to_signed ? _mm_packs_epi16(w, w) : _mm_packus_epi16(w, w);
        if (room >= 8) {
          _mm_storel_epi64((__m128i *)dst, w);
        } else {
          uint8_t t[16];
          _mm_storeu_si128((__m128i *)t, w);
          memcpy(dst, t, cnt);
        }
        continue;
      }
      __m128i q = requant16(v[0], v[1], &rq);
      if (room >= 16) {
        _mm_storeu_si128((__m128i *)dst, q);
      } else {
        uint8_t t[16];
        _mm_storeu_si128((__m128i *)t, q);
        memcpy(dst, t, cnt);
      }
    }
  }
}
#endif

typedef struct dw_job {
  const kiln__qdw_args *a;
  dw_plan plan;
  bool dw3;  /* the AVX2 3x3 kernel */
  bool vec;  /* the AVX2 row kernel */
  bool avx2; /* the AVX2 epilogue */
} dw_job;

#ifdef KILN__QGEMM_X86
TARGET static void planes_avx2(const dw_job *j, size_t i0, size_t i1) {
  if (j->dw3) {
    uint8_t zrow[DW3_ZW], ring[3 * DW3_ZW];
    memset(zrow, (uint8_t)j->a->zx, sizeof zrow);
    memset(ring, (uint8_t)j->a->zx, sizeof ring);
    static const int8_t iota[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                    11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                    22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
    /* bytes 2 .. 2 + w: iota - 2 in [0, w) */
    __m256i i2 = _mm256_sub_epi8(_mm256_loadu_si256((const __m256i *)iota), _mm256_set1_epi8(2));
    __m256i keep2 = _mm256_andnot_si256(_mm256_cmpgt_epi8(_mm256_setzero_si256(), i2),
                                        _mm256_cmpgt_epi8(_mm256_set1_epi8((int8_t)j->a->w), i2));
    __m256i zxv = _mm256_set1_epi8((int8_t)j->a->zx);
    for (size_t i = i0; i < i1; i++)
      channel_dw3(j->a, i / j->a->c, i % j->a->c, zrow, ring, zxv, keep2);
    return;
  }
  _Alignas(32) int16_t ring[RING_MAX];
  _Alignas(32) int32_t acc[ACC_MAX];
  for (size_t i = i0; i < i1; i++)
    channel_avx2(j->a, &j->plan, i / j->a->c, i % j->a->c, ring, acc);
}
#endif

static void planes(void *arg, size_t i0, size_t i1) {
  const dw_job *j = arg;
#ifdef KILN__QGEMM_X86
  if (j->vec) {
    planes_avx2(j, i0, i1);
    return;
  }
#endif
  for (size_t i = i0; i < i1; i++) channel_generic(j->a, j->avx2, i / j->a->c, i % j->a->c);
}

void kiln__qconv_dw(kiln__pool *pool, kiln__qisa isa, const kiln__qdw_args *a) {
  dw_job j = {a, {0}, false, false, false};
#ifdef KILN__QGEMM_X86
  if (isa == KILN__QISA_AVX512VNNI && kiln__qdwp_supported() && kiln__qdwp_fits(a)) {
    kiln__qdwp(pool, a); /* a plane's columns in lanes, VPERMB + VPDPBUSD */
    return;
  }
  if (isa != KILN__QISA_GENERIC && kiln__qdwc_fits(a)) { /* channels in lanes */
    kiln__qdwc(pool, isa, a);
    return;
  }
  j.avx2 = isa != KILN__QISA_GENERIC;
  j.dw3 = j.avx2 && dw3_fits(a);
  j.vec = j.dw3 || (j.avx2 && avx2_plan(a, &j.plan));
#else
  (void)isa;
#endif
  size_t planes_n = a->n * a->c;
  double work = (double)planes_n * (double)(a->oh * a->ow) * (double)(a->kh * a->kw);
  kiln__parallel_for(kiln__pool_for(pool, work), planes_n, planes, &j);
}
