/* The AVX-512 depthwise 3x3 kernels: conv_dw3x3.c's scheme (blocks of output rows read their
 * taps straight from the input rows, a row outside the plane is a pointer to zeros, bias,
 * ReLU/Clip and a residual applied in registers) with 16 output columns per block instead of 8.
 * On a CPU with two 512-bit FMA pipes that halves the FMA and load instructions per output, and
 * a 14-wide plane (MobileNet's 14x14 stage) is one masked block per row instead of two; outputs
 * 8 wide or less (7x7) stay with the AVX2 kernels, whose 8 lanes they fill (measured: 16 lanes
 * were 30% slower at stride 2 and 5% slower flat on MobileNet-v2's 7x7 planes). AVX-512
 * masked loads and stores suppress faults on masked lanes and cost no more than plain ones, so
 * every edge is a mask: no moved-left last block, no padded copies. Each input row is loaded
 * once per 16 columns and its three taps made in registers (block() says how): unaligned 512-bit
 * loads that split cache lines are what this kernel waited on. */
#include "kernels/cpu/conv_dw.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define RMAX 8   /* output rows per block, at most (stride 1: 8, stride 2: 7) */
#define ZW 2112  /* floats of the zero row (kiln__dw3x3_fits bounds the plane's width by it) */
#define ZOFF 32  /* the zero row starts here, so that edge columns before 0 stay inside it */

static const float zrow[ZW];

/* Lanes whose column c + i lies in [0, w). */
static inline __mmask16 cols_in(int c, int w) {
  int lo = c < 0 ? -c : 0, hi = w - c < 16 ? w - c : 16; /* lanes [lo, hi) */
  if (hi <= lo) return 0;
  return (__mmask16)((1u << hi) - (1u << lo));
}

/* 16 floats of row r at column c: a plain load inside the row, a masked one at an edge with the
   lanes of m (the address is computed as an integer: a masked lane's is never accessed, and no
   pointer may leave its object). */
AVX512 static inline __m512 ld(const float *r, int c, __mmask16 m, bool edge) {
  if (!edge) return _mm512_loadu_ps(r + c);
  const float *p = (const float *)((uintptr_t)r + (uintptr_t)((intptr_t)c * (intptr_t)sizeof *r));
  return _mm512_maskz_loadu_ps(m, p);
}

/* Column c of row r in every lane: a broadcast load; at an edge, column cc (c clamped into the
   row) kept in the lanes of ok (all when c is inside the row, none when not: the same for every
   row of a block, so no branch per row). */
AVX512 static inline __m512 bc(const float *r, int c, int cc, __mmask16 ok, bool edge) {
  if (!edge) return _mm512_set1_ps(r[c]);
  return _mm512_maskz_mov_ps(ok, _mm512_set1_ps(r[cc]));
}

/* v shifted up one lane, lane 0 from lane 15 of lo; v shifted down one lane, lane 15 from lane 0
   of hi. */
AVX512 static inline __m512 up1(__m512 v, __m512 lo) {
  return _mm512_castsi512_ps(
      _mm512_alignr_epi32(_mm512_castps_si512(v), _mm512_castps_si512(lo), 15));
}
AVX512 static inline __m512 down1(__m512 hi, __m512 v) {
  return _mm512_castsi512_ps(
      _mm512_alignr_epi32(_mm512_castps_si512(hi), _mm512_castps_si512(v), 1));
}

/* acc[r] = bias + the taps of output rows r < R of the block whose first input column is c0;
   rows[j] is input row j of the block (row r, tap ky reads rows[r * S + ky]).
   Each row is read with one 16-float load per 16 columns (from c0 + 1) and the taps are built
   from it in registers: these loads are unaligned, and on Zen 4/5 a 512-bit load that splits two
   cache lines costs about twice an aligned one; the three overlapping loads per row this kernel
   made before left it load-bound (bench/RESULTS.md, fourteenth session). Stride 1: tap 1 is the
   load, taps 0 and 2 it shifted a lane with columns c0 and c0 + 17 (broadcast loads) shifted in.
   Stride 2: taps 1 and 2 are the even and odd columns of two loads, tap 0 tap 2 shifted up a
   lane with column c0. */
AVX512 static inline __attribute__((always_inline)) void
block(const float *const *rows, int c0, int w, const __m512 *wv, __m512 b, __m512 acc[RMAX],
      size_t S, size_t R, bool edge) {
  /* An edge block's lanes and edge columns, the same for every row: computed once here. */
  __mmask16 m0 = 0xffff, m1 = 0xffff, lo_ok = 0xffff, hi_ok = 0xffff;
  const int lo_c = KILN__MAX(0, KILN__MIN(c0, w - 1));
  const int hi_c = KILN__MAX(0, KILN__MIN(c0 + 17, w - 1));
  if (edge) {
    m0 = cols_in(c0 + 1, w), m1 = cols_in(c0 + 17, w);
    lo_ok = c0 >= 0 && c0 < w ? 0xffff : 0, hi_ok = c0 + 17 >= 0 && c0 + 17 < w ? 0xffff : 0;
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#pragma GCC unroll 16
  for (size_t r = 0; r < R; r++) acc[r] = b;
#pragma GCC unroll 16
  for (size_t j = 0; j < (R - 1) * S + 3; j++) {
    const float *row = rows[j];
    __m512 t[3], a = ld(row, c0 + 1, m0, edge), lo = bc(row, c0, lo_c, lo_ok, edge);
    if (S == 1) {
      t[0] = up1(a, lo);
      t[1] = a;
      t[2] = down1(bc(row, c0 + 17, hi_c, hi_ok, edge), a);
    } else {
      __m512 bb = ld(row, c0 + 17, m1, edge);
      t[1] = _mm512_permutex2var_ps(a, even, bb);
      t[2] = _mm512_permutex2var_ps(a, odd, bb);
      t[0] = up1(t[2], lo);
    }
#pragma GCC unroll 16
    for (size_t r = 0; r < R; r++) {
      if (j < r * S || j >= r * S + 3) continue;
      size_t ky = j - r * S;
      acc[r] = _mm512_fmadd_ps(wv[ky * 3 + 0], t[0], acc[r]);
      acc[r] = _mm512_fmadd_ps(wv[ky * 3 + 1], t[1], acc[r]);
      acc[r] = _mm512_fmadd_ps(wv[ky * 3 + 2], t[2], acc[r]);
    }
  }
}

/* y = act(v + z) in the lanes of m. */
AVX512 static inline void put(float *y, const float *z, __m512 v, __mmask16 m,
                              const kiln__epilogue *ep) {
  if (z) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, z));
  if (ep->act == KILN__ACT_RELU) v = _mm512_max_ps(v, _mm512_setzero_ps());
  else if (ep->act == KILN__ACT_CLIP)
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(ep->lo)), _mm512_set1_ps(ep->hi));
  _mm512_mask_storeu_ps(y, m, v);
}

/* Output rows oy .. oy + R - 1, every column; the first `keep` of them are stored. */
AVX512 static inline __attribute__((always_inline)) void
band(const kiln__dw_geom *g, const float *x, const __m512 *wv, __m512 b, const float *z, float *y,
     const kiln__epilogue *ep, size_t oy, size_t S, size_t R, size_t keep) {
  const int wd = (int)g->w, span = S == 1 ? 18 : 34; /* columns an interior block reads */
  const float *rows[(RMAX - 1) * 2 + 3];
  for (size_t j = 0; j < (R - 1) * S + 3; j++) {
    int64_t iy = (int64_t)(oy * S + j) - (int64_t)g->pt;
    rows[j] = iy >= 0 && iy < (int64_t)g->h ? x + (size_t)iy * g->w : zrow + ZOFF;
  }
  /* The next band's input rows, cut evenly over this band's blocks (conv_dw3x3.c: stride 2
     reads 15 short row streams the hardware prefetcher does not learn). */
  size_t pf_next = 0, pf_per_block = 0;
  uintptr_t pf_base = 0;
  if (g->prefetch && S == 2) {
    size_t nb = (g->ow + 15) / 16, lines = (R * S * g->w + 15) / 16;
    int64_t iy_end = (int64_t)(oy * S + (R - 1) * S + 3) - (int64_t)g->pt;
    pf_base = (uintptr_t)x + (uintptr_t)(KILN__MAX(iy_end, (int64_t)0) * (int64_t)g->w * 4);
    pf_per_block = (lines + nb - 1) / nb;
  }
  for (size_t ox = 0; ox < g->ow; ox += 16) {
    for (size_t i = 0; i < pf_per_block; i++, pf_next++)
      _mm_prefetch((const char *)(pf_base + pf_next * 64), _MM_HINT_T0);
    size_t nx = KILN__MIN((size_t)16, g->ow - ox);
    int c0 = (int)(ox * S) - (int)g->pl;
    __m512 acc[RMAX];
    if (c0 >= 0 && c0 + span <= wd) block(rows, c0, wd, wv, b, acc, S, R, false);
    else block(rows, c0, wd, wv, b, acc, S, R, true);
    __mmask16 m = (__mmask16)((1u << nx) - 1);
    for (size_t r = 0; r < keep; r++) {
      size_t o = (oy + r) * g->ow + ox;
      put(y + o, z ? z + o : NULL, acc[r], m, ep);
    }
  }
  if (kiln__act_is_post(ep->act))
    for (size_t r = 0; r < keep; r++)
      kiln__act_apply(ep->vm, ep->act, ep->lo, ep->hi, y + (oy + r) * g->ow, g->ow);
}

/* Bands of R rows, then the rows left (conv_dw3x3.c's plane(): at stride 2 a band of exactly
   the rows left, at stride 1 a whole band that stores only those). */
AVX512 static inline __attribute__((always_inline)) void
plane(const kiln__dw_geom *g, const float *x, const float *w, float bias, const float *z,
      float *y, const kiln__epilogue *ep, size_t S, size_t R) {
  __m512 wv[9], b = _mm512_set1_ps(bias);
  for (size_t t = 0; t < 9; t++) wv[t] = _mm512_set1_ps(w[t]);
  size_t oy = 0;
  for (; oy + R <= g->oh; oy += R) band(g, x, wv, b, z, y, ep, oy, S, R, R);
  size_t left = g->oh - oy;
  if (left == 0) return;
  if (S == 1) {
    band(g, x, wv, b, z, y, ep, oy, S, R, left);
    return;
  }
  switch (left) {
  case 1: band(g, x, wv, b, z, y, ep, oy, S, 1, 1); break;
  case 2: band(g, x, wv, b, z, y, ep, oy, S, 2, 2); break;
  case 3: band(g, x, wv, b, z, y, ep, oy, S, 3, 3); break;
  case 4: band(g, x, wv, b, z, y, ep, oy, S, 4, 4); break;
  case 5: band(g, x, wv, b, z, y, ep, oy, S, 5, 5); break;
  default: band(g, x, wv, b, z, y, ep, oy, S, 6, 6); break;
  }
}

AVX512 void kiln__dw3x3_plane_avx512(const kiln__dw_geom *g, const float *x, const float *w,
                                     float bias, const float *z, float *y,
                                     const kiln__epilogue *ep) {
  /* 8 rows at stride 1 and 7 at stride 2, as the AVX2 kernel measured. */
  if (g->sw == 1) plane(g, x, w, bias, z, y, ep, 1, 8);
  else plane(g, x, w, bias, z, y, ep, 2, 7);
}

/* ---- small planes, 16 channels in the lanes --------------------------------------------------

   A 7x7 plane (or 14x14 read at stride 2) leaves 16-lane rows mostly empty and its set-up (nine
   weight broadcasts, the row pointers, masked edges) costs as much as its 441 multiply-adds, so
   16 channels run together: 16 x 16 blocks of their planes are transposed into a zero-bordered
   copy with the channel in the lanes (NCHW16c, for this node only), each output position is
   then nine FMAs on aligned loads, and the results are transposed back with the residual and
   the activation applied in NCHW. MobileNet-v2's 960 x 7 x 7 (in L2): 21 us with the AVX2 flat
   kernel, 15 with this; 14 -> 7 at stride 2 even with the AVX2 3x3 kernel (24 / 23 us); 14 x 14
   at stride 1 slower than the 16-column plane kernel (34 against 29), so the node kernel runs it
   for outputs up to 8 wide only. */
#define C16_IN 8192  /* floats of the bordered copy: (HP x WP) positions x 16 lanes */
#define C16_OUT 4096 /* floats of the results: oh x ow positions x 16 lanes */

static void c16_pad(const kiln__dw_geom *g, size_t *hp, size_t *wp) {
  *hp = (g->oh - 1) * g->sh + 3;
  *wp = (g->ow - 1) * g->sw + 3;
}

bool kiln__dw3x3_c16_fits(const kiln__dw_geom *g) {
  if (g->kh != 3 || g->kw != 3 || g->sh != g->sw || (g->sh != 1 && g->sh != 2) || g->pt > 2 ||
      g->pl > 2 || g->oh == 0 || g->ow == 0 || g->oh > 64 || g->ow > 64)
    return false;
  size_t hp, wp;
  c16_pad(g, &hp, &wp);
  return hp * wp * 16 <= C16_IN && g->oh * g->ow * 16 <= C16_OUT;
}

/* r[i] = column i of the 16 x 16 block whose rows were r[0..15] (64 shuffles in four stages:
   32-bit and 64-bit interleaves within 128-bit lanes, then two 128-bit lane shuffles). */
AVX512 static inline __m512 lo64(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
AVX512 static inline __m512 hi64(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

AVX512 static inline void tr16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) { /* u[i + j]: rows i..i+3 of columns j, j + 4, j + 8, j + 12 */
    u[i] = lo64(t[i], t[i + 2]);
    u[i + 1] = hi64(t[i], t[i + 2]);
    u[i + 2] = lo64(t[i + 1], t[i + 3]);
    u[i + 3] = hi64(t[i + 1], t[i + 3]);
  }
  for (int j = 0; j < 4; j++) {
    __m512 a = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    __m512 b = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    __m512 c = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xdd);
    __m512 d = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xdd);
    r[j] = _mm512_shuffle_f32x4(a, b, 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(a, b, 0xdd);
    r[j + 4] = _mm512_shuffle_f32x4(c, d, 0x88);
    r[j + 12] = _mm512_shuffle_f32x4(c, d, 0xdd);
  }
}

AVX512 void kiln__dw3x3_c16_avx512(const kiln__dw_geom *g, size_t count, const float *x,
                                   size_t in_stride, const float *w, const float *bias,
                                   const float *z, float *y, size_t out_stride,
                                   const kiln__epilogue *ep) {
  _Alignas(64) float in[C16_IN], out[C16_OUT], wt[9 * 16], bs[16];
  size_t hp, wp;
  c16_pad(g, &hp, &wp);
  const size_t P = g->h * g->w, OP = g->oh * g->ow, S = g->sh;
  /* The rows and columns of the plane inside the copy (a window never reads past hp x wp). */
  const size_t rows = KILN__MIN(g->h, hp - g->pt), cols = KILN__MIN(g->w, wp - g->pl);
  for (size_t i = 0; i < hp * wp * 16; i += 16) _mm512_store_ps(in + i, _mm512_setzero_ps());
  const bool post = kiln__act_is_post(ep->act);
  for (size_t c0 = 0; c0 < count; c0 += 16) {
    const size_t nc = KILN__MIN((size_t)16, count - c0);
    for (size_t t = 0; t < 9; t++)
      for (size_t c = 0; c < 16; c++) wt[t * 16 + c] = c < nc ? w[(c0 + c) * 9 + t] : 0.0f;
    for (size_t c = 0; c < 16; c++) bs[c] = bias && c < nc ? bias[c0 + c] : 0.0f;
    /* In: 16 pixels of the 16 planes at a time, transposed into their bordered positions. */
    for (size_t p0 = 0, iy = 0, ix = 0; p0 < P; p0 += 16) {
      const __mmask16 m = (__mmask16)(P - p0 >= 16 ? 0xffffu : (1u << (P - p0)) - 1);
      __m512 r[16];
      for (size_t c = 0; c < 16; c++)
        r[c] = c < nc ? _mm512_maskz_loadu_ps(m, x + (c0 + c) * in_stride + p0)
                      : _mm512_setzero_ps();
      tr16(r);
      for (size_t i = 0; i < 16 && p0 + i < P; i++) {
        if (iy < rows && ix < cols)
          _mm512_store_ps(in + ((iy + g->pt) * wp + ix + g->pl) * 16, r[i]);
        if (++ix == g->w) ix = 0, iy++;
      }
    }
    /* Every output position: nine FMAs over the 16 channels. */
    __m512 wv[9];
    for (size_t t = 0; t < 9; t++) wv[t] = _mm512_load_ps(wt + t * 16);
    const __m512 b = _mm512_load_ps(bs);
    for (size_t oy = 0; oy < g->oh; oy++)
      for (size_t ox = 0; ox < g->ow; ox++) {
        const float *q = in + (oy * S * wp + ox * S) * 16;
        __m512 a0 = b, a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps();
        for (size_t kx = 0; kx < 3; kx++) { /* three chains: the rows of the window */
          a0 = _mm512_fmadd_ps(wv[kx], _mm512_load_ps(q + kx * 16), a0);
          a1 = _mm512_fmadd_ps(wv[3 + kx], _mm512_load_ps(q + (wp + kx) * 16), a1);
          a2 = _mm512_fmadd_ps(wv[6 + kx], _mm512_load_ps(q + (2 * wp + kx) * 16), a2);
        }
        _mm512_store_ps(out + (oy * g->ow + ox) * 16, _mm512_add_ps(_mm512_add_ps(a0, a1), a2));
      }
    /* Out: 16 positions at a time back to the 16 planes, with the residual and activation. */
    for (size_t q0 = 0; q0 < OP; q0 += 16) {
      const size_t n = KILN__MIN((size_t)16, OP - q0);
      const __mmask16 m = (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1);
      __m512 r[16];
      for (size_t i = 0; i < 16; i++)
        r[i] = i < n ? _mm512_load_ps(out + (q0 + i) * 16) : _mm512_setzero_ps();
      tr16(r);
      for (size_t c = 0; c < nc; c++) {
        size_t o = (c0 + c) * out_stride + q0;
        put(y + o, z ? z + o : NULL, r[c], m, ep);
      }
    }
    if (post)
      for (size_t c = 0; c < nc; c++)
        kiln__act_apply(ep->vm, ep->act, ep->lo, ep->hi, y + (c0 + c) * out_stride, OP);
  }
}

#endif
