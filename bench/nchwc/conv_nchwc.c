/* Direct NCHW8c convolution (see conv_nchwc.h): a portable scalar sweep and an AVX2+FMA kernel of
 * 6-pixel x 2-block register tiles. The AVX2 code carries target attributes, so the library still
 * builds for baseline x86-64. */
#include "conv_nchwc.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define NC_X86 1
#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE_AVX2 __attribute__((target("avx2,fma"), always_inline)) static inline
#endif

enum {
  B = KILN__NCHWC_B,
  OBG = 2,  /* output blocks per register tile */
  WT = 6,   /* output pixels per register tile: 12 accumulators + 2 filters + 1 broadcast */
};

size_t kiln__nchwc_wsize(const kiln__nchwc_geom *g) {
  return g->ocb * g->icb * g->kh * g->kw * B * B;
}

void kiln__nchwc_pack_w(const kiln__nchwc_geom *g, size_t m, size_t c, const float *w, float *wp) {
  memset(wp, 0, kiln__nchwc_wsize(g) * sizeof *wp);
  size_t kk = g->kh * g->kw;
  for (size_t o = 0; o < m; o++)
    for (size_t i = 0; i < c; i++)
      for (size_t k = 0; k < kk; k++)
        wp[(((o / B) * g->icb + i / B) * kk + k) * B * B + (i % B) * B + o % B] =
            w[(o * c + i) * kk + k];
}

void kiln__nchwc_from_nchw(const float *x, size_t c, size_t hw, float *y) {
  for (size_t cb = 0; cb < kiln__nchwc_blocks(c); cb++) {
    float *yb = y + cb * hw * B;
    size_t n = KILN__MIN((size_t)B, c - cb * B);
    const float *xb = x + cb * B * hw;
    for (size_t p = 0; p < hw; p++) {
      size_t l = 0;
      for (; l < n; l++) yb[p * B + l] = xb[l * hw + p];
      for (; l < B; l++) yb[p * B + l] = 0.0f;
    }
  }
}

void kiln__nchwc_to_nchw(const float *x, size_t c, size_t hw, float *y) {
  for (size_t ch = 0; ch < c; ch++) {
    const float *xb = x + (ch / B) * hw * B + ch % B;
    float *yc = y + ch * hw;
    for (size_t p = 0; p < hw; p++) yc[p] = xb[p * B];
  }
}

/* Whether output pixel (oy, ox)'s taps all lie inside the input. */
static inline bool inside(const kiln__nchwc_geom *g, size_t oy, size_t ox) {
  ptrdiff_t iy = (ptrdiff_t)(oy * g->sh) - (ptrdiff_t)g->pt;
  ptrdiff_t ix = (ptrdiff_t)(ox * g->sw) - (ptrdiff_t)g->pl;
  return iy >= 0 && ix >= 0 && iy + (ptrdiff_t)((g->kh - 1) * g->dh) < (ptrdiff_t)g->h &&
         ix + (ptrdiff_t)((g->kw - 1) * g->dw) < (ptrdiff_t)g->w;
}

static inline float act_reg(const kiln__epilogue *ep, float v) {
  if (ep->act == KILN__ACT_RELU) return v < 0.0f ? 0.0f : v;
  if (ep->act == KILN__ACT_CLIP) return v < ep->lo ? ep->lo : (v > ep->hi ? ep->hi : v);
  return v;
}

/* Output pixels [p0, p1) (flat oy * ow + ox) of blocks [ob0, ob1), one at a time. */
static void pixels_generic(const kiln__nchwc_geom *g, const float *x, const float *wp,
                           const float *bias, const float *z, float *y, const kiln__epilogue *ep,
                           size_t ob0, size_t ob1, size_t p0, size_t p1) {
  size_t kk = g->kh * g->kw, plane = g->oh * g->ow;
  for (size_t ob = ob0; ob < ob1; ob++)
    for (size_t p = p0; p < p1; p++) {
      ptrdiff_t iy0 = (ptrdiff_t)(p / g->ow * g->sh) - (ptrdiff_t)g->pt;
      ptrdiff_t ix0 = (ptrdiff_t)(p % g->ow * g->sw) - (ptrdiff_t)g->pl;
      float acc[B];
      for (size_t l = 0; l < B; l++) acc[l] = bias ? bias[ob * B + l] : 0.0f;
      for (size_t ib = 0; ib < g->icb; ib++)
        for (size_t ky = 0; ky < g->kh; ky++)
          for (size_t kx = 0; kx < g->kw; kx++) {
            ptrdiff_t iy = iy0 + (ptrdiff_t)(ky * g->dh), ix = ix0 + (ptrdiff_t)(kx * g->dw);
            if (iy < 0 || ix < 0 || iy >= (ptrdiff_t)g->h || ix >= (ptrdiff_t)g->w) continue;
            const float *xp = x + ((ib * g->h + (size_t)iy) * g->w + (size_t)ix) * B;
            const float *w = wp + ((ob * g->icb + ib) * kk + ky * g->kw + kx) * B * B;
            for (size_t i = 0; i < B; i++)
              for (size_t l = 0; l < B; l++) acc[l] += xp[i] * w[i * B + l];
          }
      size_t off = (ob * plane + p) * B;
      for (size_t l = 0; l < B; l++) y[off + l] = act_reg(ep, acc[l] + (z ? z[off + l] : 0.0f));
    }
}

#ifdef NC_X86
/* What a tap outside the input reads: 8 zero lanes. */
static const float zeros[B];

/* The register tile: NP consecutive output pixels (flat index p0...; they may span rows) x NOB
   output blocks, over the input blocks [ib0, ib1). INNER: every tap of every pixel is inside the
   input and the pixels share a row, so taps are read at fixed offsets; otherwise each pixel's tap
   is looked up and reads zeros outside the input. Constant NP and NOB at each call site unroll it
   into NP * NOB accumulators. `first` starts from the bias, otherwise from the partial sums in y;
   `last` adds z and applies the activation. */
INLINE_AVX2 void tile_avx2(const kiln__nchwc_geom *g, const float *x, const float *wp,
                           const float *bias, const float *z, float *y, const kiln__epilogue *ep,
                           size_t ob0, size_t p0, size_t oy, size_t ox, size_t ib0, size_t ib1,
                           bool first, bool last,
                           const bool INNER, const int NP, const int NOB) {
  size_t kk = g->kh * g->kw, wob = g->icb * kk * B * B, xs = g->sw * B, plane = g->oh * g->ow;
  /* (oy, ox) is pixel p0; the others follow along the row and wrap (no divisions). */
  ptrdiff_t iy0[WT], ix0[WT];
#pragma GCC unroll 6
  for (int j = 0; j < NP; j++) {
    iy0[j] = (ptrdiff_t)(oy * g->sh) - (ptrdiff_t)g->pt;
    ix0[j] = (ptrdiff_t)(ox * g->sw) - (ptrdiff_t)g->pl;
    if (++ox == g->ow) ox = 0, oy++;
  }
  __m256 acc[OBG][WT];
#pragma GCC unroll 2
  for (int b = 0; b < NOB; b++) {
    float *yb = y + ((ob0 + (size_t)b) * plane + p0) * B;
    __m256 bv = bias ? _mm256_loadu_ps(bias + (ob0 + (size_t)b) * B) : _mm256_setzero_ps();
#pragma GCC unroll 6
    for (int j = 0; j < NP; j++) acc[b][j] = first ? bv : _mm256_loadu_ps(yb + (size_t)j * B);
  }
  const float *wb = wp + ob0 * wob;
  for (size_t ib = ib0; ib < ib1; ib++) {
    const float *xc = x + ib * g->h * g->w * B;
    for (size_t ky = 0; ky < g->kh; ky++)
      for (size_t kx = 0; kx < g->kw; kx++) {
        const float *xp[WT];
        if (INNER) {
          const float *x0 = xc + ((size_t)(iy0[0] + (ptrdiff_t)(ky * g->dh)) * g->w +
                                  (size_t)(ix0[0] + (ptrdiff_t)(kx * g->dw))) * B;
#pragma GCC unroll 6
          for (int j = 0; j < NP; j++) xp[j] = x0 + (size_t)j * xs;
        } else {
#pragma GCC unroll 6
          for (int j = 0; j < NP; j++) {
            ptrdiff_t iy = iy0[j] + (ptrdiff_t)(ky * g->dh), ix = ix0[j] + (ptrdiff_t)(kx * g->dw);
            bool in = iy >= 0 && ix >= 0 && iy < (ptrdiff_t)g->h && ix < (ptrdiff_t)g->w;
            xp[j] = in ? xc + ((size_t)iy * g->w + (size_t)ix) * B : zeros;
          }
        }
        const float *w = wb + (ib * kk + ky * g->kw + kx) * B * B;
#pragma GCC unroll 8
        for (int i = 0; i < B; i++) {
          __m256 wv[OBG];
#pragma GCC unroll 2
          for (int b = 0; b < NOB; b++)
            wv[b] = _mm256_loadu_ps(w + (size_t)b * wob + (size_t)i * B);
#pragma GCC unroll 6
          for (int j = 0; j < NP; j++) {
            __m256 xb = _mm256_broadcast_ss(xp[j] + i);
#pragma GCC unroll 2
            for (int b = 0; b < NOB; b++) acc[b][j] = _mm256_fmadd_ps(xb, wv[b], acc[b][j]);
          }
        }
      }
  }
  __m256 zero = _mm256_setzero_ps(), lo = _mm256_set1_ps(ep->lo), hi = _mm256_set1_ps(ep->hi);
#pragma GCC unroll 2
  for (int b = 0; b < NOB; b++) {
    size_t off = ((ob0 + (size_t)b) * plane + p0) * B;
#pragma GCC unroll 6
    for (int j = 0; j < NP; j++) {
      __m256 v = acc[b][j];
      if (last) {
        if (z) v = _mm256_add_ps(v, _mm256_loadu_ps(z + off + (size_t)j * B));
        if (ep->act == KILN__ACT_RELU) v = _mm256_max_ps(v, zero);
        else if (ep->act == KILN__ACT_CLIP) v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
      }
      _mm256_storeu_ps(y + off + (size_t)j * B, v);
    }
  }
}

#define TILE_NOB(NP, IN)                                                                      \
  do {                                                                                        \
    if (nob == 2) tile_avx2(g, x, wp, bias, z, y, ep, ob0, p, oy, ox, IBS, IN, NP, 2);                \
    else tile_avx2(g, x, wp, bias, z, y, ep, ob0, p, oy, ox, IBS, IN, NP, 1);                         \
  } while (0)
#define TILE(NP) \
  do { if (strip_inner(g, oy, ox, NP)) TILE_NOB(NP, true); else TILE_NOB(NP, false); } while (0)
#define IBS ib0, ib1, first, last

/* Whether pixels [p, p + n) share a row and have all their taps inside the input. */
static inline bool strip_inner(const kiln__nchwc_geom *g, size_t oy, size_t ox, size_t n) {
  return ox + n <= g->ow && inside(g, oy, ox) && inside(g, oy, ox + n - 1);
}

/* Pixels [p0, p1) of blocks [ob0, ob0 + nob), nob <= OBG: strips of WT, then the rest. (Taking
   every block group per strip instead, so the strip's input stays in L1, measured slower.) */
AVX2 static void strips_avx2(const kiln__nchwc_geom *g, const float *x, const float *wp,
                             const float *bias, const float *z, float *y,
                             const kiln__epilogue *ep, size_t ob0, size_t nob, size_t p0,
                             size_t p1, size_t ib0, size_t ib1, bool first, bool last) {
  size_t p = p0, oy = p0 / g->ow, ox = p0 % g->ow;
  for (; p + WT <= p1; p += WT) {
    TILE(6);
    for (ox += WT; ox >= g->ow; ox -= g->ow) oy++;
  }
  switch (p1 - p) {
    case 5: TILE(5); break;
    case 4: TILE(4); break;
    case 3: TILE(3); break;
    case 2: TILE(2); break;
    case 1: TILE(1); break;
    default: break;
  }
}
#endif

/* Work is cut so that the working set stays in cache: a block of output pixels whose partial sums
   for one tile of OB_TILE output blocks take ~BLOCK_BYTES, and within it chunks of input blocks
   whose packed weights (the tile's output blocks x the chunk x the taps) take ~CHUNK_BYTES; the
   block's partial sums stay in y between chunks. */
enum { OB_TILE = 16, BLOCK_BYTES = 131072, CHUNK_BYTES = 32768 };

void kiln__nchwc_conv_f32(kiln__isa isa, const kiln__nchwc_geom *g, const float *x,
                          const float *wp, const float *bias, const float *z, float *y,
                          const kiln__epilogue *ep, size_t ob0, size_t ob1, size_t oy0,
                          size_t oy1) {
  size_t p0 = oy0 * g->ow, p1 = oy1 * g->ow;
  /* A pointwise conv reads input pixel p for output pixel p: one long row, so no strip crosses
     a row and every strip takes the fixed-offset path. */
  kiln__nchwc_geom flat = *g;
  if (g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->pt == 0 && g->pl == 0 &&
      g->h == g->oh && g->w == g->ow) {
    flat.h = flat.oh = 1;
    flat.w = flat.ow = g->h * g->w;
    g = &flat;
  }
#ifdef NC_X86
  if (isa != KILN__ISA_GENERIC) {
    size_t pb = KILN__MAX((size_t)WT, BLOCK_BYTES / (OB_TILE * B * sizeof(float)) / WT * WT);
    for (size_t bp = p0; bp < p1; bp += pb)
      for (size_t ot = ob0; ot < ob1; ot += OB_TILE) {
        size_t ot1 = KILN__MIN(ob1, ot + OB_TILE);
        size_t icc = CHUNK_BYTES / ((ot1 - ot) * g->kh * g->kw * B * B * sizeof(float));
        icc = KILN__MAX((size_t)1, icc);
        for (size_t ib0 = 0; ib0 < g->icb; ib0 += icc) {
          size_t ib1 = KILN__MIN(g->icb, ib0 + icc);
          for (size_t ob = ot; ob < ot1; ob += OBG)
            strips_avx2(g, x, wp, bias, z, y, ep, ob, KILN__MIN((size_t)OBG, ot1 - ob), bp,
                        KILN__MIN(p1, bp + pb), ib0, ib1, ib0 == 0, ib1 == g->icb);
        }
      }
  } else
#endif
  {
    (void)isa;
    pixels_generic(g, x, wp, bias, z, y, ep, ob0, ob1, p0, p1);
  }
  if (kiln__act_is_post(ep->act))
    for (size_t ob = ob0; ob < ob1; ob++)
      kiln__act_apply(ep->vm, ep->act, ep->lo, ep->hi, y + (ob * g->oh * g->ow + p0) * B,
                      (p1 - p0) * B);
}
