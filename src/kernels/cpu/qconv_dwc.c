/* Integer 3x3 depthwise convolution, channels in lanes (AVX2; see qconv_dw.h).
 *
 * The per-plane kernels of qconv_dw.c put one plane's outputs in the lanes; on MobileNetV2's
 * planes that costs a row set-up per 7-, 14- or 28-wide row and partial blocks, and left every
 * depthwise layer about 2x ONNX Runtime's (which runs NHWC, channels in lanes). Here a job takes
 * 16 channels and a band of output rows:
 *   1. the band's input rows are transposed into a tile t[row][col][16 channels] of int16
 *      x - zx, padded with 0 (a padding tap reads zx, as in the reference);
 *   2. each output position takes its 9 taps as 32-byte loads from the tile, pairs of taps
 *      interleaved (in-lane unpacks) so that one VPMADDWD gives 8 channels x 2 taps, exact
 *      (|x - zx| <= 255 and |w'| <= 255, a pair sum < 2^17);
 *   3. 16 positions' requantized bytes are transposed back to 16 bytes per channel plane.
 * The in-lane unpacks leave channels 0-3, 8-11 in one accumulator and 4-7, 12-15 in the other,
 * which VPACKSSDW puts back in order; the weights and requantization constants are laid out to
 * match. Requantization is qgemm's epilogue's float operations, so the result is byte-identical
 * to src/kernels/ref/quant.c.
 *
 * With AVX512-VNNI (and BW, VL) step 2 takes two output positions per zmm: the same 16 channels
 * of positions i and i + 1 in its two halves (at stride 1 within a row their taps are adjacent
 * columns of the tile, one 64-byte load; otherwise two 32-byte loads), VPDPWSSD for VPMADDWD +
 * VPADDD, and VPMOVWB for the final pack (the clamp already bounds every value to the output
 * type). */
#include "kernels/cpu/qconv_dw.h"

#include "core/threadpool.h"

#ifdef KILN__QGEMM_X86
#include <immintrin.h>
#define TARGET __attribute__((target("avx2")))
#define INLINE TARGET static inline __attribute__((always_inline))

#define CB 16            /* channels per job: one byte lane each */
#define TILE_MAX 32768   /* bytes of a band's input tile */
#define PIX (CB * 2)     /* tile bytes per column */

typedef struct dwc_job {
  const kiln__qdw_args *a;
  size_t ncb, bands, band_rows, wp; /* channel blocks, bands per plane, rows per band, tile cols */
  bool wide;                        /* two positions per zmm (AVX512-VNNI) */
} dwc_job;

bool kiln__qdwc_fits(const kiln__qdw_args *a) {
  if (a->kh != 3 || a->kw != 3 || a->dh != 1 || a->dw != 1 || a->sh != a->sw ||
      (a->sw != 1 && a->sw != 2) || a->pt < 0 || a->pl < 0 || a->kind == KILN__QOUT_I32 ||
      a->c < CB || !a->n || !a->oh || !a->ow)
    return false;
  size_t wp = (a->ow - 1) * (size_t)a->sw + 3;
  return 3 * wp * PIX <= TILE_MAX; /* a band of one output row fits */
}

/* out[c] byte r = in[r] byte c (16 x 16 bytes): unpacks of 8, 16, 32, then 64 bits. */
INLINE void transpose16(const __m128i in[16], __m128i out[16]) {
  __m128i s1[16], s2[16], s3[16];
  for (int k = 0; k < 8; k++) { /* rows 2k, 2k + 1: cols 0-7 in s1[k], 8-15 in s1[8 + k] */
    s1[k] = _mm_unpacklo_epi8(in[2 * k], in[2 * k + 1]);
    s1[8 + k] = _mm_unpackhi_epi8(in[2 * k], in[2 * k + 1]);
  }
  for (int h = 0; h < 2; h++) /* s2[4m + q]: rows 4m .. 4m + 3, cols 4q .. 4q + 3 */
    for (int m = 0; m < 4; m++) {
      s2[4 * m + 2 * h] = _mm_unpacklo_epi16(s1[8 * h + 2 * m], s1[8 * h + 2 * m + 1]);
      s2[4 * m + 2 * h + 1] = _mm_unpackhi_epi16(s1[8 * h + 2 * m], s1[8 * h + 2 * m + 1]);
    }
  for (int g = 0; g < 2; g++) /* s3[8g + p]: rows 8g .. 8g + 7, cols 2p, 2p + 1 */
    for (int q = 0; q < 4; q++) {
      s3[8 * g + 2 * q] = _mm_unpacklo_epi32(s2[8 * g + q], s2[8 * g + 4 + q]);
      s3[8 * g + 2 * q + 1] = _mm_unpackhi_epi32(s2[8 * g + q], s2[8 * g + 4 + q]);
    }
  for (int p = 0; p < 8; p++) {
    out[2 * p] = _mm_unpacklo_epi64(s3[p], s3[8 + p]);
    out[2 * p + 1] = _mm_unpackhi_epi64(s3[p], s3[8 + p]);
  }
}

/* Input row iy of channels c0 .. c0 + 15 into tile row d (wp columns; column j is input column
   j - pl) as int16 x - zx. Channels past c, columns outside the row and rows outside the plane
   are 0. The row's last block stores all 16 columns (a store loop of the exact count became a
   rep movs): up to 15 columns past the row's data, into the next row's space (filled after
   this one) or the tile's slack, and the right padding is set after it. */
TARGET static void fill_row(const kiln__qdw_args *a, size_t b, size_t c0, int64_t iy, size_t wp,
                            int16_t *d) {
  size_t pl = (size_t)a->pl, w = KILN__MIN(a->w, wp > pl ? wp - pl : 0);
  if (iy < 0 || iy >= (int64_t)a->h) w = 0;
  memset(d, 0, KILN__MIN(pl, wp) * PIX);
  size_t nc = KILN__MIN((size_t)CB, a->c - c0), plane = a->h * a->w;
  const uint8_t *x = (const uint8_t *)a->x + (b * a->c + c0) * plane;
  const uint8_t *xend = (const uint8_t *)a->x + a->n * a->c * plane;
  if (w) x += (size_t)iy * a->w;
  __m256i zx = _mm256_set1_epi16((int16_t)a->zx);
  for (size_t ix = 0; ix < w; ix += CB) {
    size_t cnt = KILN__MIN((size_t)CB, w - ix);
    __m128i in[16], out[16];
    /* 16 bytes of each channel (past the row's end: other bytes, overwritten later) */
    if (nc == CB && (size_t)(xend - (x + (CB - 1) * plane + ix)) >= 16) {
      for (size_t c = 0; c < CB; c++)
        in[c] = _mm_loadu_si128((const __m128i *)(x + c * plane + ix));
    } else {
      for (size_t c = 0; c < CB; c++) {
        const uint8_t *p = c < nc ? x + c * plane + ix : NULL;
        if (p && (size_t)(xend - p) >= 16) {
          in[c] = _mm_loadu_si128((const __m128i *)p);
          continue;
        }
        uint8_t t[16];
        memset(t, (uint8_t)a->zx, sizeof t);
        if (p) memcpy(t, p, cnt);
        in[c] = _mm_loadu_si128((const __m128i *)t);
      }
    }
    transpose16(in, out);
    __m256i *o = (__m256i *)(d + (pl + ix) * CB);
    if (a->x_signed)
      for (size_t k = 0; k < 16; k++)
        _mm256_storeu_si256(o + k, _mm256_sub_epi16(_mm256_cvtepi8_epi16(out[k]), zx));
    else
      for (size_t k = 0; k < 16; k++)
        _mm256_storeu_si256(o + k, _mm256_sub_epi16(_mm256_cvtepu8_epi16(out[k]), zx));
  }
  if (pl + w < wp) memset(d + (pl + w) * CB, 0, (wp - pl - w) * PIX);
}

typedef struct dwc_consts {
  /* lanes: channels 0-3, 8-11 ([0]) and 4-7, 12-15 ([1]) */
  __m256i w[5][2];   /* tap pairs (0,1) (2,3) (4,5) (6,7) (8, 0) */
  __m256i bias[2];
  __m256 mult[2], lo_z, hi_z;
  __m256i zy;        /* int16 */
  bool to_signed;
} dwc_consts;

TARGET static void consts_init(const kiln__qdw_args *a, size_t c0, dwc_consts *k) {
  int32_t wq[9][CB] = {{0}}, bias[CB] = {0};
  float mult[CB] = {0};
  for (size_t c = 0; c < CB && c0 + c < a->c; c++) {
    size_t ch = c0 + c;
    const uint8_t *w = (const uint8_t *)a->wt + ch * 9;
    int32_t zw = 0;
    if (a->zw.n) {
      size_t zi = a->zw.n == 1 ? 0 : ch;
      zw = a->zw.is_signed ? ((const int8_t *)a->zw.p)[zi] : ((const uint8_t *)a->zw.p)[zi];
    }
    for (size_t t = 0; t < 9; t++)
      wq[t][c] = (a->w_signed ? (int32_t)(int8_t)w[t] : (int32_t)w[t]) - zw;
    bias[c] = a->bias ? a->bias[ch] : 0;
    mult[c] = a->mult[ch];
  }
  for (int h = 0; h < 2; h++) {
    int32_t wv[5][8], bv[8];
    float mv[8];
    for (int l = 0; l < 8; l++) {
      int c = (l & 3) + 4 * h + (l >= 4 ? 8 : 0); /* the unpacks' channel order */
      for (int p = 0; p < 5; p++) {
        int32_t w0 = wq[2 * p][c], w1 = p < 4 ? wq[2 * p + 1][c] : 0;
        wv[p][l] = (int32_t)((uint32_t)(uint16_t)w0 | (uint32_t)(uint16_t)w1 << 16);
      }
      bv[l] = bias[c];
      mv[l] = mult[c];
    }
    for (int p = 0; p < 5; p++) k->w[p][h] = _mm256_loadu_si256((const __m256i *)wv[p]);
    k->bias[h] = _mm256_loadu_si256((const __m256i *)bv);
    k->mult[h] = _mm256_loadu_ps(mv);
  }
  int32_t lo = a->kind == KILN__QOUT_U8 ? 0 : -128, hi = a->kind == KILN__QOUT_U8 ? 255 : 127;
  k->lo_z = _mm256_set1_ps((float)(lo - a->zy));
  k->hi_z = _mm256_set1_ps((float)(hi - a->zy));
  k->zy = _mm256_set1_epi16((int16_t)a->zy);
  k->to_signed = a->kind == KILN__QOUT_S8;
}

/* acc += taps p, q (16 channels each) x the weight pair wv. */
INLINE void pair(__m256i acc[2], const int16_t *p, const int16_t *q, const __m256i wv[2]) {
  __m256i x = _mm256_loadu_si256((const __m256i *)p), y = _mm256_loadu_si256((const __m256i *)q);
  acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_unpacklo_epi16(x, y), wv[0]));
  acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_unpackhi_epi16(x, y), wv[1]));
}

/* The 16 requantized channels of the output whose taps start at r[0..3) (+ CB per column).
   The accumulators start at the bias; the clamp in float makes cvt + zy fit int16, so zy is
   added after the first pack (the same values as qgemm's epilogue, which adds it in int32). */
INLINE __m128i position(const int16_t *const r[3], const dwc_consts *k) {
  __m256i acc[2] = {k->bias[0], k->bias[1]};
  pair(acc, r[0], r[0] + CB, k->w[0]);
  pair(acc, r[0] + 2 * CB, r[1], k->w[1]);
  pair(acc, r[1] + CB, r[1] + 2 * CB, k->w[2]);
  pair(acc, r[2], r[2] + CB, k->w[3]);
  pair(acc, r[2] + 2 * CB, r[2] + 2 * CB, k->w[4]); /* tap 8 twice, against (w8, 0) */
  __m256i q[2];
  for (int h = 0; h < 2; h++) {
    __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[h]), k->mult[h]);
    q[h] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(f, k->lo_z), k->hi_z));
  }
  __m256i w16 = _mm256_add_epi16(_mm256_packs_epi32(q[0], q[1]), k->zy); /* channels in order */
  __m128i lo = _mm256_castsi256_si128(w16), hi = _mm256_extracti128_si256(w16, 1);
  return k->to_signed ? _mm_packs_epi16(lo, hi) : _mm_packus_epi16(lo, hi);
}

/* The positions [p0, p0 + cnt) of the band (consecutive, rows wrapping) out of q[cnt]: transposed
   to 16 bytes per channel, stored into each channel's plane. */
TARGET static void store16(const kiln__qdw_args *a, size_t b, size_t c0, size_t p0, size_t cnt,
                           __m128i q[16]) {
  __m128i out[16];
  for (size_t i = cnt; i < 16; i++) q[i] = _mm_setzero_si128();
  transpose16(q, out);
  size_t nc = KILN__MIN((size_t)CB, a->c - c0), plane = a->oh * a->ow;
  uint8_t *y = (uint8_t *)a->y + (b * a->c + c0) * plane + p0;
  for (size_t c = 0; c < nc; c++, y += plane) {
    if (cnt == 16) {
      _mm_storeu_si128((__m128i *)y, out[c]);
    } else {
      uint8_t t[16];
      _mm_storeu_si128((__m128i *)t, out[c]);
      memcpy(y, t, cnt);
    }
  }
}

INLINE void band_body(const dwc_job *j, size_t b, size_t c0, size_t oy0, size_t oy1,
                      const int16_t *tile, const dwc_consts *k, size_t s) {
  const kiln__qdw_args *a = j->a;
  size_t row = j->wp * CB, ow = a->ow;
  size_t p = oy0 * ow, pend = oy1 * ow, oy = oy0, ox = 0;
  while (p < pend) {
    size_t cnt = KILN__MIN((size_t)16, pend - p);
    __m128i q[16];
    for (size_t i = 0; i < cnt; i++) {
      const int16_t *t0 = tile + (oy - oy0) * s * row + ox * s * CB;
      const int16_t *r[3] = {t0, t0 + row, t0 + 2 * row};
      q[i] = position(r, k);
      if (++ox == ow) ox = 0, oy++;
    }
    store16(a, b, c0, p, cnt, q);
    p += cnt;
  }
}

TARGET static void body_avx2(const dwc_job *j, size_t b, size_t c0, size_t oy0, size_t oy1,
                             const int16_t *tile, const dwc_consts *k) {
  if (j->a->sw == 1) band_body(j, b, c0, oy0, oy1, tile, k, 1); /* a constant stride inlined */
  else band_body(j, b, c0, oy0, oy1, tile, k, 2);
}

/* ---- two positions per zmm (AVX512-VNNI) ---------------------------------------------------- */
#define TARGET512 __attribute__((target("avx2,avx512f,avx512vl,avx512bw,avx512vnni")))
#define INLINE512 TARGET512 static inline __attribute__((always_inline))

typedef struct dwc_consts512 { /* dwc_consts, the same 8 lanes in both halves */
  __m512i w[5][2], bias[2], zy;
  __m512 mult[2], lo_z, hi_z;
} dwc_consts512;

INLINE512 __m512i dup(__m256i v) {
  return _mm512_broadcast_i64x4(v);
}

/* The tap at offset t of positions a and b: one load when b's taps follow a's in the tile. */
INLINE512 __m512i ld2(const int16_t *ta, const int16_t *tb, size_t t, const bool adjacent) {
  if (adjacent) return _mm512_loadu_si512(ta + t);
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(ta + t))),
                            _mm256_loadu_si256((const __m256i *)(tb + t)), 1);
}

/* position() for the outputs whose taps start at ta and tb (rows `row` int16 apart): their 16
   channels' bytes in the low and high 16 bytes. Named accumulators (a gcc array would be copied
   at each VPDPWSSD, qgemm_vnni.c). */
INLINE512 __m256i position2(const int16_t *ta, const int16_t *tb, size_t row,
                            const dwc_consts512 *k, const bool adjacent) {
  __m512i a0 = k->bias[0], a1 = k->bias[1];
#define PAIR(t0, t1, wv)                                                                           \
  {                                                                                                \
    const __m512i x = ld2(ta, tb, t0, adjacent), y = ld2(ta, tb, t1, adjacent);                   \
    a0 = _mm512_dpwssd_epi32(a0, _mm512_unpacklo_epi16(x, y), (wv)[0]);                           \
    a1 = _mm512_dpwssd_epi32(a1, _mm512_unpackhi_epi16(x, y), (wv)[1]);                           \
  }
  PAIR(0, CB, k->w[0])
  PAIR(2 * CB, row, k->w[1])
  PAIR(row + CB, row + 2 * CB, k->w[2])
  PAIR(2 * row, 2 * row + CB, k->w[3])
  PAIR(2 * row + 2 * CB, 2 * row + 2 * CB, k->w[4])
#undef PAIR
  __m512 f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(a0), k->mult[0]);
  __m512 f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(a1), k->mult[1]);
  __m512i q0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(f0, k->lo_z), k->hi_z));
  __m512i q1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(f1, k->lo_z), k->hi_z));
  __m512i w16 = _mm512_add_epi16(_mm512_packs_epi32(q0, q1), k->zy); /* channels in order */
  return _mm512_cvtepi16_epi8(w16); /* each value is in the output type's range: exact */
}

/* store16 with AVX-512BW: a short block's bytes through a lane mask, not a copy per channel. */
TARGET512 static void store16_512(const kiln__qdw_args *a, size_t b, size_t c0, size_t p0,
                                  size_t cnt, __m128i q[16]) {
  __m128i out[16];
  for (size_t i = cnt; i < 16; i++) q[i] = _mm_setzero_si128();
  transpose16(q, out);
  size_t nc = KILN__MIN((size_t)CB, a->c - c0), plane = a->oh * a->ow;
  uint8_t *y = (uint8_t *)a->y + (b * a->c + c0) * plane + p0;
  const __mmask16 m = (__mmask16)((1u << cnt) - 1);
  for (size_t c = 0; c < nc; c++, y += plane) _mm_mask_storeu_epi8(y, m, out[c]);
}

INLINE512 void band_body2(const dwc_job *j, size_t b, size_t c0, size_t oy0, size_t oy1,
                          const int16_t *tile, const dwc_consts *k, const dwc_consts512 *kz,
                          size_t s) {
  const kiln__qdw_args *a = j->a;
  size_t row = j->wp * CB, ow = a->ow;
  size_t p = oy0 * ow, pend = oy1 * ow, oy = oy0, ox = 0;
  while (p < pend) {
    size_t cnt = KILN__MIN((size_t)16, pend - p), i = 0;
    __m128i q[16];
    for (; i + 2 <= cnt; i += 2) {
      const int16_t *ta = tile + (oy - oy0) * s * row + ox * s * CB;
      bool same_row = ++ox < ow; /* (oy, ox) is now the second position */
      if (!same_row) ox = 0, oy++;
      const int16_t *tb = tile + (oy - oy0) * s * row + ox * s * CB;
      if (++ox == ow) ox = 0, oy++;
      __m256i v = s == 1 && same_row ? position2(ta, tb, row, kz, true)
                                     : position2(ta, tb, row, kz, false);
      q[i] = _mm256_castsi256_si128(v);
      q[i + 1] = _mm256_extracti128_si256(v, 1);
    }
    if (i < cnt) { /* the band's odd last position */
      const int16_t *t0 = tile + (oy - oy0) * s * row + ox * s * CB;
      const int16_t *r[3] = {t0, t0 + row, t0 + 2 * row};
      q[i] = position(r, k);
      if (++ox == ow) ox = 0, oy++;
    }
    store16_512(a, b, c0, p, cnt, q);
    p += cnt;
  }
}

TARGET512 static void body_512(const dwc_job *j, size_t b, size_t c0, size_t oy0, size_t oy1,
                               const int16_t *tile, const dwc_consts *k) {
  dwc_consts512 kz;
  for (int h = 0; h < 2; h++) {
    for (int p = 0; p < 5; p++) kz.w[p][h] = dup(k->w[p][h]);
    kz.bias[h] = dup(k->bias[h]);
    kz.mult[h] = _mm512_castsi512_ps(dup(_mm256_castps_si256(k->mult[h])));
  }
  kz.lo_z = _mm512_castsi512_ps(dup(_mm256_castps_si256(k->lo_z)));
  kz.hi_z = _mm512_castsi512_ps(dup(_mm256_castps_si256(k->hi_z)));
  kz.zy = dup(k->zy);
  if (j->a->sw == 1) band_body2(j, b, c0, oy0, oy1, tile, k, &kz, 1);
  else band_body2(j, b, c0, oy0, oy1, tile, k, &kz, 2);
}

TARGET static void bands(void *arg, size_t i0, size_t i1) {
  const dwc_job *j = arg;
  const kiln__qdw_args *a = j->a;
  _Alignas(64) int16_t tile[(TILE_MAX + 16 * PIX) / 2]; /* + the last row's overrun */
  dwc_consts k;
  memset(&k, 0, sizeof k);
  size_t last_cb = SIZE_MAX;
  for (size_t i = i0; i < i1; i++) {
    size_t band = i % j->bands, cbi = i / j->bands % j->ncb, b = i / j->bands / j->ncb;
    size_t c0 = cbi * CB, s = (size_t)a->sw;
    if (cbi != last_cb) consts_init(a, c0, &k), last_cb = cbi;
    size_t oy0 = band * j->band_rows, oy1 = KILN__MIN(oy0 + j->band_rows, a->oh);
    size_t rows = (oy1 - oy0 - 1) * s + 3;
    int64_t iy0 = (int64_t)(oy0 * s) - a->pt;
    for (size_t r = 0; r < rows; r++)
      fill_row(a, b, c0, iy0 + (int64_t)r, j->wp, tile + r * j->wp * CB);
    (j->wide ? body_512 : body_avx2)(j, b, c0, oy0, oy1, tile, &k);
  }
}

void kiln__qdwc(struct kiln__pool *pool, kiln__qisa isa, const kiln__qdw_args *a) {
  dwc_job j = {a, (a->c + CB - 1) / CB, 0, 0, (a->ow - 1) * (size_t)a->sw + 3, false};
  j.wide = isa == KILN__QISA_AVX512VNNI && kiln__qisa_supported(KILN__QFMT_VNNI_S8U8) &&
           __builtin_cpu_supports("avx512bw");
  size_t s = (size_t)a->sw, max_rows = TILE_MAX / (j.wp * PIX); /* >= 3 (kiln__qdwc_fits) */
  j.band_rows = KILN__MIN(a->oh, (max_rows - 3) / s + 1);
  j.bands = (a->oh + j.band_rows - 1) / j.band_rows;
  size_t jobs = a->n * j.ncb * j.bands;
  double work = (double)(a->n * a->c) * (double)(a->oh * a->ow) * 9.0;
  kiln__parallel_for(kiln__pool_for(pool, work), jobs, bands, &j);
}
#endif
