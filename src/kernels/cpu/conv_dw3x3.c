/* The AVX2 depthwise 3x3 kernel for stride 1 and 2 (MobileNet's every depthwise layer), one
 * plane at a time. Blocks of 8 output rows (7 at stride 2) x 8 output columns read their taps
 * straight from the input rows: no padded copy of the plane, no row buffers. Each input row a
 * block touches is loaded once and feeds every output row that uses it (8 rows at stride 1 read
 * 10 input rows, not 24), and the rows are independent FMA chains; at stride 2 a plane's
 * last band is a block of exactly the rows left. Padding costs nothing in
 * the interior: a row above or below the plane is a pointer to zeros, and the blocks that
 * cross the left or right edge (or end past the last column) load with lane masks, which read nothing outside the plane. Stride 2 loads 16 columns and splits
 * even and odd lanes with one in-lane shuffle per tap; the lanes come out in the order
 * 0 1 4 5 2 3 6 7 for every tap, so one cross-lane permute per accumulator puts them back.
 * Bias, ReLU/Clip and a residual are applied in registers before the one store. */
#include "kernels/cpu/conv_dw.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include "kernels/cpu/avx2_tail.h"

#define AVX2 __attribute__((target("avx2,fma")))
#define RMAX 8     /* output rows per block, at most (stride 1: 8, stride 2: 7) */
#define ZW 2112    /* floats of the zero row */
#define ZOFF 32    /* the zero row starts here, so that edge columns before 0 stay inside it */

static const float zrow[ZW];

bool kiln__dw3x3_fits(const kiln__dw_geom *g) {
  return g->kh == 3 && g->kw == 3 && g->sh == g->sw && (g->sw == 1 || g->sw == 2) &&
         g->pl <= 2 && g->w + 24 <= ZW - ZOFF && g->ow >= 1 && g->oh >= 1 &&
         g->ow <= ZW; /* column indices stay small ints whatever the right padding */
}

/* Lanes whose column c + i lies in [0, w). */
AVX2 static inline __m256i cols_in(int c, int w) {
  __m256i col = _mm256_add_epi32(_mm256_set1_epi32(c), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_and_si256(_mm256_cmpgt_epi32(col, _mm256_set1_epi32(-1)),
                          _mm256_cmpgt_epi32(_mm256_set1_epi32(w), col));
}

/* 8 floats of row r at column c: a plain load inside the row, a masked one at an edge. */
AVX2 static inline __m256 ld(const float *r, int c, int w, bool edge) {
  if (!edge) return _mm256_loadu_ps(r + c);
  /* The address of a masked lane is never accessed; computed as an integer so that no pointer
     leaves its object. */
  const float *p = (const float *)((uintptr_t)r + (uintptr_t)((intptr_t)c * (intptr_t)sizeof *r));
  return _mm256_maskload_ps(p, cols_in(c, w));
}

/* acc[r] = bias + sum of taps for output rows r < R of the block whose first input column is c0
   (ox * S - pl); rows[j] is input row j of the block (row r, tap ky reads rows[r * S + ky]). */
AVX2 static inline __attribute__((always_inline)) void
block(const float *const *rows, int c0, int w, const __m256 *wv, __m256 b, __m256 acc[RMAX],
      size_t S, size_t R, bool edge) {
  /* Unrolled, so that the accumulators and taps stay in registers (gcc keeps the loops and the
     accumulators in memory otherwise). */
#pragma GCC unroll 16
  for (size_t r = 0; r < R; r++) acc[r] = b;
#pragma GCC unroll 16
  for (size_t j = 0; j < (R - 1) * S + 3; j++) {
    const float *row = rows[j];
    __m256 t[3];
    if (S == 1) {
      t[0] = ld(row, c0, w, edge);
      t[1] = ld(row, c0 + 1, w, edge);
      t[2] = ld(row, c0 + 2, w, edge);
    } else {
      __m256 a = ld(row, c0, w, edge), bb = ld(row, c0 + 8, w, edge);
      __m256 c = ld(row, c0 + 2, w, edge), d = ld(row, c0 + 10, w, edge);
      t[0] = _mm256_shuffle_ps(a, bb, _MM_SHUFFLE(2, 0, 2, 0));
      t[1] = _mm256_shuffle_ps(a, bb, _MM_SHUFFLE(3, 1, 3, 1));
      t[2] = _mm256_shuffle_ps(c, d, _MM_SHUFFLE(2, 0, 2, 0));
    }
#pragma GCC unroll 16
    for (size_t r = 0; r < R; r++) {
      if (j < r * S || j >= r * S + 3) continue;
      size_t ky = j - r * S;
      acc[r] = _mm256_fmadd_ps(wv[ky * 3 + 0], t[0], acc[r]);
      acc[r] = _mm256_fmadd_ps(wv[ky * 3 + 1], t[1], acc[r]);
      acc[r] = _mm256_fmadd_ps(wv[ky * 3 + 2], t[2], acc[r]);
    }
  }
  if (S == 2)
#pragma GCC unroll 16
    for (size_t r = 0; r < R; r++)
      acc[r] = _mm256_castpd_ps(
          _mm256_permute4x64_pd(_mm256_castps_pd(acc[r]), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* y = act(acc + z) for the nx <= 8 columns of one output row. */
AVX2 static inline void put(float *y, const float *z, __m256 v, size_t nx,
                            const kiln__epilogue *ep) {
  if (nx == 8) {
    if (z) v = _mm256_add_ps(v, _mm256_loadu_ps(z));
    if (ep->act == KILN__ACT_RELU) v = _mm256_max_ps(v, _mm256_setzero_ps());
    else if (ep->act == KILN__ACT_CLIP)
      v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(ep->lo)), _mm256_set1_ps(ep->hi));
    _mm256_storeu_ps(y, v);
    return;
  }
  __m256i m = cols_in(0, (int)nx);
  if (z) v = _mm256_add_ps(v, _mm256_maskload_ps(z, m));
  if (ep->act == KILN__ACT_RELU) v = _mm256_max_ps(v, _mm256_setzero_ps());
  else if (ep->act == KILN__ACT_CLIP)
    v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(ep->lo)), _mm256_set1_ps(ep->hi));
  kiln__avx2_store_head(y, v, nx);
}

/* Output rows oy .. oy + R - 1, every column; the first `keep` of them (inside the plane) are
   stored. */
AVX2 static inline __attribute__((always_inline)) void
band(const kiln__dw_geom *g, const float *x, const __m256 *wv, __m256 b, const float *z, float *y,
     const kiln__epilogue *ep, size_t oy, size_t S, size_t R, size_t keep) {
  const int wd = (int)g->w, span = S == 1 ? 10 : 18; /* columns an interior block reads */
  const float *rows[(RMAX - 1) * 2 + 3];
  for (size_t j = 0; j < (R - 1) * S + 3; j++) {
    int64_t iy = (int64_t)(oy * S + j) - (int64_t)g->pt;
    rows[j] = iy >= 0 && iy < (int64_t)g->h ? x + (size_t)iy * g->w : zrow + ZOFF;
  }
  /* Prefetch: the input bytes after this band's rows, as many as the band advances by (the next
     band's new rows, or the next plane's first when this is the last band), cut evenly over
     the band's blocks. A band of 7 rows at stride 2 reads 15 input rows of 8 columns at a time:
     15 short streams the hardware prefetcher does not learn, from L3 when the input was
     written as a whole tensor larger than L2 (MobileNet's 96 x 112 x 112). */
  const size_t line = 64 / sizeof(float);
  size_t pf_next = 0, pf_per_block = 0;
  uintptr_t pf_base = 0;
  if (g->prefetch && S == 2) {
    size_t nb = (g->ow + 7) / 8, lines = (R * S * g->w + line - 1) / line;
    int64_t iy_end = (int64_t)(oy * S + (R - 1) * S + 3) - (int64_t)g->pt;
    pf_base = (uintptr_t)x + (uintptr_t)(KILN__MAX(iy_end, (int64_t)0) * (int64_t)g->w * 4);
    pf_per_block = (lines + nb - 1) / nb;
  }
  for (size_t ox = 0; ox < g->ow; ox += 8) {
    for (size_t i = 0; i < pf_per_block; i++, pf_next++)
      _mm_prefetch((const char *)(pf_base + pf_next * 64), _MM_HINT_T0);
    /* A short last block moves left to end at the last column when the row has 8: a plain
       store that rewrites a few outputs with the same values, where a masked store costs
       more than the block (not when Z is y: the rewritten outputs would add Z twice). */
    if (ox + 8 > g->ow && g->ow >= 8 && z != y) ox = g->ow - 8;
    size_t nx = KILN__MIN((size_t)8, g->ow - ox);
    int c0 = (int)(ox * S) - (int)g->pl;
    __m256 acc[RMAX];
    if (c0 >= 0 && c0 + span <= wd) block(rows, c0, wd, wv, b, acc, S, R, false);
    else block(rows, c0, wd, wv, b, acc, S, R, true);
    for (size_t r = 0; r < keep; r++) {
      size_t o = (oy + r) * g->ow + ox;
      /* Rows narrower than 8 (7x7 planes) are contiguous: a plain 8-wide store runs into the
         next rows, which are stored after it, and only a store that would pass the plane's
         end is masked (masked stores are slow on AMD). Not when Z is y: the lanes past the
         row would overwrite Z before it is added. */
      bool full = nx == 8 || (g->ow < 8 && z != y && o + 8 <= g->oh * g->ow);
      put(y + o, z ? z + o : NULL, acc[r], full ? 8 : nx, ep);
    }
  }
  if (kiln__act_is_post(ep->act))
    for (size_t r = 0; r < keep; r++)
      kiln__act_apply(ep->vm, ep->act, ep->lo, ep->hi, y + (oy + r) * g->ow, g->ow);
}

/* Bands of R rows, then the rows left. At stride 2 they are one band with its own unrolled
   block, so no row past the plane's end is computed (with bands of 6, 28 rows wasted 2 and 14
   rows 4 of 18, and 7x7 outputs ran a band of 6 and another for 1 row). At stride 1 the last
   band stays a whole band of 8 that stores only the rows left: the short bands measured 3-4%
   slower on 14x14 planes in MobileNet-v2 (and 4 bands of 7 there 5% slower on 28x28). */
AVX2 static inline __attribute__((always_inline)) void
plane(const kiln__dw_geom *g, const float *x, const float *w, float bias, const float *z,
      float *y, const kiln__epilogue *ep, size_t S, size_t R) {
  __m256 wv[9], b = _mm256_set1_ps(bias);
  for (size_t t = 0; t < 9; t++) wv[t] = _mm256_broadcast_ss(w + t);
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

/* ---- planes narrower than 8 at stride 1 (7x7), run flat -------------------------------------- */

#define FLAT_MAX 64   /* outputs of a plane: 8 vectors */
#define FLAT_BUF 96   /* (w + 1) zeros, the plane, (w + 1) + 8 zeros: at most 8 + 64 + 16 */

bool kiln__dw3x3_flat_fits(const kiln__dw_geom *g) {
  return g->kh == 3 && g->kw == 3 && g->sh == 1 && g->sw == 1 && g->pt == 1 && g->pl == 1 &&
         g->oh == g->h && g->ow == g->w && g->w < 8 && g->h * g->w <= FLAT_MAX;
}

/* The plane as one row of h * w floats between w + 1 zeros on each side: tap (ky, kx) of output
   i is buf[i + (ky - 1) * w + kx - 1], a row above or below the plane reads zeros, and only the
   left and right columns' wrap-around (a tap of column 0 reading the previous row's last float)
   is masked off: the kx = 0 and kx = 2 taps sum on their own and go through a per-lane mask.
   Where the interleaved path (conv_dw.c, nc8) moves every float in and out by itself, this
   loads the plane with a few vectors and stores whole vectors. */
AVX2 void kiln__dw3x3_flat_avx2(const kiln__dw_geom *g, size_t count, const float *x,
                                size_t in_stride, const float *w, const float *bias,
                                const float *z, float *y, size_t out_stride,
                                const kiln__epilogue *ep) {
  const size_t W = g->w, P = g->h * W, nv = (P + 7) / 8, off = W + 1;
  _Alignas(32) float buf[FLAT_BUF] = {0};
  _Alignas(32) int32_t lm[FLAT_MAX], rm[FLAT_MAX];
  for (size_t i = 0; i < nv * 8; i++) {
    lm[i] = i % W != 0 ? -1 : 0;
    rm[i] = i % W != W - 1 ? -1 : 0;
  }
  const size_t tail = P - (nv - 1) * 8; /* live lanes of the last vector */
  const __m256i tmask = cols_in(0, (int)tail);
  const bool post = kiln__act_is_post(ep->act);
  for (size_t c = 0; c < count; c++) {
    const float *xp = x + c * in_stride;
    size_t i = 0;
    for (; i + 8 <= P; i += 8) _mm256_storeu_ps(buf + off + i, _mm256_loadu_ps(xp + i));
    /* the masked lanes load as zeros, so the floats past the plane stay zero */
    if (i < P) _mm256_storeu_ps(buf + off + i, _mm256_maskload_ps(xp + i, tmask));
    __m256 wv[9];
    for (size_t t = 0; t < 9; t++) wv[t] = _mm256_broadcast_ss(w + c * 9 + t);
    const __m256 b = _mm256_set1_ps(bias ? bias[c] : 0.0f);
    float *yp = y + c * out_stride;
    const float *zp = z ? z + c * out_stride : NULL;
    for (size_t v = 0; v < nv; v++) {
      const float *q = buf + off + v * 8;
      __m256 ac = b, al = _mm256_setzero_ps(), ar = _mm256_setzero_ps();
      for (size_t ky = 0; ky < 3; ky++) {
        const float *r = q + ((ptrdiff_t)ky - 1) * (ptrdiff_t)W;
        al = _mm256_fmadd_ps(wv[ky * 3 + 0], _mm256_loadu_ps(r - 1), al);
        ac = _mm256_fmadd_ps(wv[ky * 3 + 1], _mm256_loadu_ps(r), ac);
        ar = _mm256_fmadd_ps(wv[ky * 3 + 2], _mm256_loadu_ps(r + 1), ar);
      }
      al = _mm256_and_ps(al, _mm256_castsi256_ps(_mm256_load_si256((const __m256i *)(lm + v * 8))));
      ar = _mm256_and_ps(ar, _mm256_castsi256_ps(_mm256_load_si256((const __m256i *)(rm + v * 8))));
      __m256 acc = _mm256_add_ps(ac, _mm256_add_ps(al, ar));
      put(yp + v * 8, zp ? zp + v * 8 : NULL, acc, v + 1 < nv ? 8 : tail, ep);
    }
    if (post) kiln__act_apply(ep->vm, ep->act, ep->lo, ep->hi, yp, P);
  }
}

AVX2 void kiln__dw3x3_plane_avx2(const kiln__dw_geom *g, const float *x, const float *w,
                                 float bias, const float *z, float *y,
                                 const kiln__epilogue *ep) {
  /* Rows per block, measured on MobileNet's planes: 8 independent FMA chains at stride 1 (4
     left the FMAs waiting on their latency: 112x112 and 56x56 10-15% slower), 7 at stride 2,
     whose 4 loads and 3 shuffles per input row leave fewer registers (the weights are then
     read from memory): MobileNet's stride-2 outputs (56, 28, 14, 7 rows) are whole bands of
     7, where bands of 6 left a short band (28x28 and 14x14 in the model 1-9% faster). */
  if (g->sw == 1) plane(g, x, w, bias, z, y, ep, 1, 8);
  else plane(g, x, w, bias, z, y, ep, 2, 7);
}

#endif
