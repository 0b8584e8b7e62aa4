/* Depthwise convolution kernels (see conv_dw.h): a portable row sweep and an AVX2+FMA one. The
 * AVX2 code carries target attributes, so the library still builds for baseline x86-64. */
#include "kernels/cpu/conv_dw.h"

#include "ir/op.h"
#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DW_X86 1
#endif

/* Floats of the stack block holding the kh padded rows. */
#define ROWBUF 12288

/* A padded input row P (P[i] is input column i - pl, zero outside) is stored split by phase of
   the stride: phase p holds P[s * i + p] at i. Output ox's tap kx is then phase (kx % s) at
   ox + kx / s, so every stride reads contiguous vectors. Each phase holds `plen` floats: enough
   for 16-wide blocks of outputs past ow. */
static size_t phase_len(const kiln__dw_geom *g) {
  return (g->ow + 15) / 16 * 16 + g->kw / g->sw + 8;
}

bool kiln__dwconv_fits(const kiln__dw_geom *g) {
  return g->kh >= 1 && g->kw >= 1 && g->kh <= 16 && g->sw >= 1 &&
         g->kh * g->sw * phase_len(g) <= ROWBUF && g->sw * phase_len(g) <= ROWBUF / 4;
}

static const float zeros[ROWBUF];

/* Writes input row x as the phases of its padded row into r (sw * plen floats); `tmp` holds the
   padded row itself when the stride is above 1. */
static void fill_row(const kiln__dw_geom *g, const float *x, float *r, size_t plen, float *tmp) {
  size_t s = g->sw, total = s * plen;
  float *p = s == 1 ? r : tmp;
  size_t lead = KILN__MIN(g->pl, total), n = KILN__MIN(g->w, total - lead);
  memset(p, 0, lead * sizeof *p);
  memcpy(p + lead, x, n * sizeof *p);
  memset(p + lead + n, 0, (total - lead - n) * sizeof *p);
  if (s == 2) {
    float *restrict e = r, *restrict o = r + plen;
    for (size_t i = 0; i < plen; i++) {
      e[i] = tmp[2 * i];
      o[i] = tmp[2 * i + 1];
    }
  } else if (s > 2) {
    for (size_t ph = 0; ph < s; ph++)
      for (size_t i = 0; i < plen; i++) r[ph * plen + i] = tmp[s * i + ph];
  }
}

/* One output row from kh phase-split rows: y[ox] = bias + sum w[ky][kx] P_ky[ox * sw + kx]. */
typedef void (*row_fn)(const kiln__dw_geom *g, size_t plen, const float *const *rows,
                       const float *w, float bias, const float *z, float *y,
                       const kiln__epilogue *ep);

static inline float act1(const kiln__epilogue *ep, float v) {
  if (ep->act == KILN__ACT_RELU) return v < 0.0f ? 0.0f : v;
  if (ep->act == KILN__ACT_CLIP) {
    v = v < ep->lo ? ep->lo : v;
    return v > ep->hi ? ep->hi : v;
  }
  return v;
}

static void row_generic(const kiln__dw_geom *g, size_t plen, const float *const *rows,
                        const float *w, float bias, const float *z, float *y,
                        const kiln__epilogue *ep) {
  size_t s = g->sw;
  /* Sums in a local chunk, not in y: z may be y. */
  for (size_t o0 = 0; o0 < g->ow; o0 += 64) {
    size_t ow = KILN__MIN((size_t)64, g->ow - o0);
    float acc[64];
    for (size_t ox = 0; ox < ow; ox++) acc[ox] = bias;
    for (size_t ky = 0; ky < g->kh; ky++)
      for (size_t kx = 0; kx < g->kw; kx++) {
        const float *restrict r = rows[ky] + (kx % s) * plen + kx / s + o0;
        float wv = w[ky * g->kw + kx];
        for (size_t ox = 0; ox < ow; ox++) acc[ox] += wv * r[ox];
      }
    for (size_t ox = 0; ox < ow; ox++)
      y[o0 + ox] = act1(ep, acc[ox] + (z ? z[o0 + ox] : 0.0f));
  }
}

#ifdef DW_X86
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline __m256 act8(const kiln__epilogue *ep, __m256 v) {
  if (ep->act == KILN__ACT_RELU) return _mm256_max_ps(v, _mm256_setzero_ps());
  if (ep->act == KILN__ACT_CLIP)
    return _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(ep->lo)), _mm256_set1_ps(ep->hi));
  return v;
}

AVX2 static inline void store8(float *y, const float *z, __m256 acc, size_t left,
                               const kiln__epilogue *ep) {
  if (left >= 8) {
    if (z) acc = _mm256_add_ps(acc, _mm256_loadu_ps(z));
    _mm256_storeu_ps(y, act8(ep, acc));
    return;
  }
  float t[8];
  _mm256_storeu_ps(t, acc);
  for (size_t i = 0; i < left; i++) y[i] = act1(ep, t[i] + (z ? z[i] : 0.0f));
}

/* KH x KW and the stride known at compile time for the common shapes: the weights stay in
   registers and each output row is swept 16 columns at a time. */
AVX2 static inline __attribute__((always_inline)) void
row_avx2_k(const kiln__dw_geom *g, size_t plen, const float *const *rows, const float *w,
           float bias, const float *z, float *y, const kiln__epilogue *ep, size_t KH, size_t KW,
           size_t S) {
  __m256 wv[25];
  for (size_t i = 0; i < KH * KW; i++) wv[i] = _mm256_broadcast_ss(w + i);
  const float *tap[25];
  for (size_t ky = 0; ky < KH; ky++)
    for (size_t kx = 0; kx < KW; kx++) tap[ky * KW + kx] = rows[ky] + (kx % S) * plen + kx / S;
  size_t ow = g->ow;
  for (size_t ox = 0; ox < ow; ox += 16) {
    __m256 a0 = _mm256_set1_ps(bias), a1 = a0;
    for (size_t t = 0; t < KH * KW; t++) {
      a0 = _mm256_fmadd_ps(wv[t], _mm256_loadu_ps(tap[t] + ox), a0);
      a1 = _mm256_fmadd_ps(wv[t], _mm256_loadu_ps(tap[t] + ox + 8), a1);
    }
    size_t left = ow - ox;
    store8(y + ox, z ? z + ox : NULL, a0, left, ep);
    if (left > 8) store8(y + ox + 8, z ? z + ox + 8 : NULL, a1, left - 8, ep);
  }
}

/* Any other kernel size (<= 25 taps per row sweep is not required): taps from memory. */
AVX2 static void row_avx2_any(const kiln__dw_geom *g, size_t plen, const float *const *rows,
                              const float *w, float bias, const float *z, float *y,
                              const kiln__epilogue *ep) {
  size_t ow = g->ow, s = g->sw;
  for (size_t ox = 0; ox < ow; ox += 8) {
    __m256 acc = _mm256_set1_ps(bias);
    for (size_t ky = 0; ky < g->kh; ky++)
      for (size_t kx = 0; kx < g->kw; kx++)
        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(w + ky * g->kw + kx),
                              _mm256_loadu_ps(rows[ky] + (kx % s) * plen + kx / s + ox), acc);
    store8(y + ox, z ? z + ox : NULL, acc, ow - ox, ep);
  }
}

AVX2 static void row_avx2(const kiln__dw_geom *g, size_t plen, const float *const *rows,
                          const float *w, float bias, const float *z, float *y,
                          const kiln__epilogue *ep) {
  size_t k = g->kh == g->kw ? g->kh : 0;
  if (k == 3 && g->sw == 1) row_avx2_k(g, plen, rows, w, bias, z, y, ep, 3, 3, 1);
  else if (k == 3 && g->sw == 2) row_avx2_k(g, plen, rows, w, bias, z, y, ep, 3, 3, 2);
  else if (k == 5 && g->sw == 1) row_avx2_k(g, plen, rows, w, bias, z, y, ep, 5, 5, 1);
  else if (k == 5 && g->sw == 2) row_avx2_k(g, plen, rows, w, bias, z, y, ep, 5, 5, 2);
  else row_avx2_any(g, plen, rows, w, bias, z, y, ep);
}
/* ---- the direct AVX2 path (horizontal stride 1 or 2) ------------------------------------------

   No row copies: a block of DR output rows x 8 output columns reads its taps straight from the
   input plane. Each block names its input rows through a pointer per row (offset to the block's
   first input column c0 = ox * sw - pl); a row above or below the plane points at zeros, and a
   block whose columns cross the left or right edge (or the last partial block) reads small
   zero-padded copies of its rows instead (`seg`), so padding costs nothing in the interior.
   DR = 4 output rows give 4 independent FMA chains (a 9-tap chain on one accumulator is bound by
   FMA latency) and let rows shared by neighbouring outputs be loaded once. Stride 2 loads 16
   input columns and de-interleaves them: even taps take the even lanes of the load at c0 + kx,
   odd taps the odd lanes of the load at c0 + kx - 1. */
#define DR 4
#define SEG 32          /* floats of a padded segment: >= 8 * sw + kw + 7 for kw <= 16 */
#define MAXROWS 28      /* (DR - 1) * sh + kh for sh <= 4, kh <= 16 */
#define PADMAX 16384    /* floats of the padded plane copy (64 KiB: 112 x 112 with its border) */

AVX2 static inline __m256 dw_tap(const float *r, size_t kx, size_t S) {
  if (S == 1) return _mm256_loadu_ps(r + kx);
  const float *p = r + (kx & ~(size_t)1);
  __m256 lo = _mm256_loadu_ps(p), hi = _mm256_loadu_ps(p + 8);
  __m256 v = (kx & 1) ? _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1))
                      : _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* Input columns a block reads past c0: the last tap's vector (stride 2: its 16-float pair). */
static size_t dw_span(size_t kw, size_t s) {
  return s == 1 ? kw + 7 : ((kw - 1) & ~(size_t)1) + 16;
}

/* acc[r] = bias + sum over taps for the DR x 8 block whose input row j (j = r * sh + ky) is
   rows[j], or base + j * ld when rows is NULL (a block inside the plane: no pointer table).
   KH, KW and SH are compile-time for the unrolled shapes (0: take g's, weights from memory;
   wv holds the broadcast weights otherwise). */
AVX2 static inline __attribute__((always_inline)) void
dw_block(const kiln__dw_geom *g, const float *const *rows, const float *base, size_t ld,
         const float *w, const __m256 *wv, float bias, __m256 acc[DR], size_t KH, size_t KW,
         size_t S, size_t SH) {
  size_t kh = KH ? KH : g->kh, kw = KW ? KW : g->kw, sh = SH ? SH : g->sh;
  for (size_t r = 0; r < DR; r++) acc[r] = _mm256_set1_ps(bias);
#define DW_ROW(j) (rows ? rows[j] : base + (j) * ld)
  if (KH) {
    for (size_t ky = 0; ky < KH; ky++)
      for (size_t kx = 0; kx < KW; kx++)
        for (size_t r = 0; r < DR; r++)
          acc[r] = _mm256_fmadd_ps(wv[ky * KW + kx], dw_tap(DW_ROW(r * sh + ky), kx, S), acc[r]);
    return;
  }
  for (size_t ky = 0; ky < kh; ky++)
    for (size_t kx = 0; kx < kw; kx++) {
      __m256 wt = _mm256_broadcast_ss(w + ky * kw + kx);
      for (size_t r = 0; r < DR; r++)
        acc[r] = _mm256_fmadd_ps(wt, dw_tap(DW_ROW(r * sh + ky), kx, S), acc[r]);
    }
#undef DW_ROW
}

/* Writes the plane into a zero-bordered copy P (hp x wp; input (iy, ix) at (iy + pt, ix + pl)),
   so that every block of the plane reads inside P. One pass over the input, no libc calls. */
KILN__NO_LIBCALL_LOOPS static void pad_plane(const kiln__dw_geom *g, const float *x, float *p,
                                             size_t hp, size_t wp) {
  size_t right = wp - g->pl - g->w;
  for (size_t r = 0; r < hp; r++, p += wp) {
    if (r < g->pt || r >= g->pt + g->h) {
      kiln__zero_floats(p, wp);
      continue;
    }
    kiln__zero_floats(p, g->pl);
    kiln__copy_floats(p + g->pl, x + (r - g->pt) * g->w, g->w);
    kiln__zero_floats(p + g->pl + g->w, right);
  }
}

AVX2 static inline __attribute__((always_inline)) void
plane_direct(const kiln__dw_geom *g, const float *x, const float *w, float bias, const float *z,
             float *y, const kiln__epilogue *ep, size_t KH, size_t KW, size_t S, size_t SH) {
  size_t kh = KH ? KH : g->kh, kw = KW ? KW : g->kw, sh = SH ? SH : g->sh;
  size_t span = dw_span(kw, S), nrows = (DR - 1) * sh + kh;
  __m256 wv[25];
  if (KH)
    for (size_t t = 0; t < KH * KW; t++) wv[t] = _mm256_broadcast_ss(w + t);
  /* Narrow planes are copied once with their zero border (the last block's last row and column
     included), so every block reads in bounds: otherwise most of their blocks would cross an
     edge. Wide planes read the input in place: few blocks cross an edge, and the copy would be
     one more pass over a plane that is usually not in cache. */
  size_t wp = (g->ow - 1) / 8 * 8 * S + span, hp = (g->oh - 1) / DR * DR * sh + nrows;
  wp = KILN__MAX(wp, g->pl + g->w);
  hp = KILN__MAX(hp, g->pt + g->h);
  _Alignas(32) float pbuf[PADMAX];
  bool padded = hp * wp <= PADMAX && g->w < 64;
  const float *src = x;
  size_t ld = g->w, top = g->pt, left = g->pl, h = g->h, wd = g->w;
  if (padded) {
    pad_plane(g, x, pbuf, hp, wp);
    src = pbuf, ld = wp, top = 0, left = 0, h = hp, wd = wp;
  }
  _Alignas(32) float seg[MAXROWS][SEG];
  const float *rows[MAXROWS];
  for (size_t oy = 0; oy < g->oh; oy += DR) {
    size_t dr = KILN__MIN((size_t)DR, g->oh - oy);
    int64_t iy0 = (int64_t)(oy * sh) - (int64_t)top;
    bool rows_in = iy0 >= 0 && iy0 + (int64_t)nrows <= (int64_t)h;
    for (size_t ox = 0; ox < g->ow; ox += 8) {
      size_t nx = KILN__MIN((size_t)8, g->ow - ox);
      int64_t c0 = (int64_t)(ox * S) - (int64_t)left;
      __m256 acc[DR];
      if (rows_in && c0 >= 0 && c0 + (int64_t)span <= (int64_t)wd) {
        dw_block(g, NULL, src + (size_t)iy0 * ld + (size_t)c0, ld, w, wv, bias, acc, KH, KW, S,
                 SH);
      } else {
        /* A block crossing an edge of the unpadded input: rows outside read zeros, and rows
           crossing a side are copied into zero-padded segments. */
        for (size_t j = 0; j < nrows; j++) {
          int64_t iy = iy0 + (int64_t)j;
          if (iy < 0 || iy >= (int64_t)h) {
            rows[j] = zeros;
          } else if (c0 >= 0 && c0 + (int64_t)span <= (int64_t)wd) {
            rows[j] = src + (size_t)iy * ld + (size_t)c0;
          } else {
            const float *xr = src + (size_t)iy * ld;
            for (size_t i = 0; i < span; i++) {
              int64_t ix = c0 + (int64_t)i;
              seg[j][i] = ix >= 0 && ix < (int64_t)wd ? xr[ix] : 0.0f;
            }
            rows[j] = seg[j];
          }
        }
        dw_block(g, rows, NULL, 0, w, wv, bias, acc, KH, KW, S, SH);
      }
      for (size_t r = 0; r < dr; r++) {
        size_t o = (oy + r) * g->ow + ox;
        store8(y + o, z ? z + o : NULL, acc[r], nx, ep);
      }
    }
    if (kiln__act_is_post(ep->act))
      for (size_t r = 0; r < dr; r++)
        kiln__act_apply(ep->vm, ep->act, ep->lo, ep->hi, y + (oy + r) * g->ow, g->ow);
  }
}

/* ---- small planes, 8 channels in the lanes (AVX2) --------------------------------------------

   A 7x7 or 14x14 plane is too narrow for vectors along its rows (a 7-wide row fills one 8-lane
   vector badly, and per-plane set-up costs more than its 441 multiply-adds), so 8 channels are
   run together: their planes are interleaved into a zero-bordered copy with the channel in the
   lanes (the NCHW8c layout, for this node only), every output position is then kh * kw
   full-width FMAs, and the results are scattered back to the 8 NCHW planes. */
#define NC8MAX 16384 /* floats of the interleaved copy (64 KiB) */

static bool nc8_fits(const kiln__dw_geom *g, size_t *hp, size_t *wp) {
  *hp = (g->oh - 1) * g->sh + g->kh;
  *wp = (g->ow - 1) * g->sw + g->kw;
  return g->ow <= 32 && g->kh * g->kw <= 49 && *hp * *wp * 8 <= NC8MAX;
}

AVX2 static inline __attribute__((always_inline)) void
nc8_body(const kiln__dw_geom *g, size_t hp, size_t wp, const float *x, size_t in_stride,
         const float *w, const float *bias, const float *z, float *y, size_t out_stride,
         const kiln__epilogue *ep, size_t KH, size_t KW) {
  size_t kh = KH ? KH : g->kh, kw = KW ? KW : g->kw, k = kh * kw;
  _Alignas(32) float p[NC8MAX];
  for (size_t i = 0; i < hp * wp * 8; i += 8) _mm256_store_ps(p + i, _mm256_setzero_ps());
  size_t rows = KILN__MIN(g->h, hp > g->pt ? hp - g->pt : 0);
  size_t cols = KILN__MIN(g->w, wp > g->pl ? wp - g->pl : 0);
  for (size_t ch = 0; ch < 8; ch++)
    for (size_t iy = 0; iy < rows; iy++) {
      const float *xr = x + ch * in_stride + iy * g->w;
      float *d = p + ((iy + g->pt) * wp + g->pl) * 8 + ch;
      for (size_t ix = 0; ix < cols; ix++) d[ix * 8] = xr[ix];
    }
  __m256 wv[49];
  for (size_t t = 0; t < k; t++)
    wv[t] = _mm256_setr_ps(w[t], w[k + t], w[2 * k + t], w[3 * k + t], w[4 * k + t],
                           w[5 * k + t], w[6 * k + t], w[7 * k + t]);
  __m256 b = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  bool post = kiln__act_is_post(ep->act);
  for (size_t oy = 0; oy < g->oh; oy++)
    for (size_t ox = 0; ox < g->ow; ox++) {
      const float *base = p + (oy * g->sh * wp + ox * g->sw) * 8;
      __m256 a0 = b, a1 = _mm256_setzero_ps();
      for (size_t ky = 0; ky < kh; ky++) {
        const float *r = base + ky * wp * 8;
        for (size_t kx = 0; kx < kw; kx++) {
          /* Two chains halve the FMA latency each position waits for. */
          if (ky & 1) a1 = _mm256_fmadd_ps(wv[ky * kw + kx], _mm256_load_ps(r + kx * 8), a1);
          else a0 = _mm256_fmadd_ps(wv[ky * kw + kx], _mm256_load_ps(r + kx * 8), a0);
        }
      }
      __m256 acc = _mm256_add_ps(a0, a1);
      size_t o = oy * g->ow + ox;
      _Alignas(32) float t[8];
      if (!z) acc = act8(ep, acc);
      _mm256_store_ps(t, acc);
      if (z)
        for (size_t ch = 0; ch < 8; ch++)
          y[ch * out_stride + o] = act1(ep, t[ch] + z[ch * out_stride + o]);
      else
        for (size_t ch = 0; ch < 8; ch++) y[ch * out_stride + o] = t[ch];
    }
  if (post)
    for (size_t ch = 0; ch < 8; ch++)
      kiln__act_apply(ep->vm, ep->act, ep->lo, ep->hi, y + ch * out_stride, g->oh * g->ow);
}

AVX2 static void nc8_avx2(const kiln__dw_geom *g, size_t hp, size_t wp, const float *x,
                          size_t in_stride, const float *w, const float *bias, const float *z,
                          float *y, size_t out_stride, const kiln__epilogue *ep) {
  if (g->kh == 3 && g->kw == 3)
    nc8_body(g, hp, wp, x, in_stride, w, bias, z, y, out_stride, ep, 3, 3);
  else
    nc8_body(g, hp, wp, x, in_stride, w, bias, z, y, out_stride, ep, 0, 0);
}

AVX2 static void plane_avx2(const kiln__dw_geom *g, const float *x, const float *w, float bias,
                            const float *z, float *y, const kiln__epilogue *ep) {
  bool k3 = g->kh == 3 && g->kw == 3, k5 = g->kh == 5 && g->kw == 5;
  if (g->sw == 1 && g->sh == 1) {
    if (k3) plane_direct(g, x, w, bias, z, y, ep, 3, 3, 1, 1);
    else if (k5) plane_direct(g, x, w, bias, z, y, ep, 5, 5, 1, 1);
    else plane_direct(g, x, w, bias, z, y, ep, 0, 0, 1, 0);
  } else if (g->sw == 2 && g->sh == 2) {
    if (k3) plane_direct(g, x, w, bias, z, y, ep, 3, 3, 2, 2);
    else if (k5) plane_direct(g, x, w, bias, z, y, ep, 5, 5, 2, 2);
    else plane_direct(g, x, w, bias, z, y, ep, 0, 0, 2, 0);
  } else if (g->sw == 1) {
    plane_direct(g, x, w, bias, z, y, ep, 0, 0, 1, 0);
  } else {
    plane_direct(g, x, w, bias, z, y, ep, 0, 0, 2, 0);
  }
}
#endif

void kiln__dwconv_plane_f32(kiln__isa isa, const kiln__dw_geom *g, const float *x,
                            const float *w, float bias, const float *z, float *y,
                            const kiln__epilogue *ep) {
#ifdef DW_X86
  /* 3x3 at stride 1 or 2 (conv_dw3x3.c), then the direct path for the other shapes CNNs use;
     other strides keep the phase-split row ring. */
  if (isa != KILN__ISA_GENERIC && kiln__dw3x3_fits(g)) {
    if (isa == KILN__ISA_AVX512 && g->ow > 8) kiln__dw3x3_plane_avx512(g, x, w, bias, z, y, ep);
    else kiln__dw3x3_plane_avx2(g, x, w, bias, z, y, ep);
    return;
  }
  if (isa != KILN__ISA_GENERIC && (g->sw == 1 || g->sw == 2) && g->sh <= 4 && g->kh <= 16 &&
      g->kw <= 16) {
    plane_avx2(g, x, w, bias, z, y, ep);
    return;
  }
#endif
  _Alignas(32) float buf[ROWBUF];
  float tmp[ROWBUF / 4];
  size_t plen = phase_len(g), len = g->sw * plen;
  /* Ring of padded rows: input row iy lives in slot iy % kh (kh consecutive rows never share a
     slot); held[] says which row each slot holds. */
  int64_t held[16];
  for (size_t s = 0; s < g->kh; s++) held[s] = -1;
  row_fn row = row_generic;
#ifdef DW_X86
  if (isa != KILN__ISA_GENERIC) row = row_avx2;
#else
  (void)isa;
#endif
  const float *rows[16];
  for (size_t oy = 0; oy < g->oh; oy++) {
    for (size_t ky = 0; ky < g->kh; ky++) {
      int64_t iy = (int64_t)(oy * g->sh + ky) - (int64_t)g->pt;
      if (iy < 0 || iy >= (int64_t)g->h) {
        rows[ky] = zeros;
        continue;
      }
      size_t slot = (size_t)iy % g->kh;
      float *r = buf + slot * len;
      if (held[slot] != iy) {
        fill_row(g, x + (size_t)iy * g->w, r, plen, tmp);
        held[slot] = iy;
      }
      rows[ky] = r;
    }
    float *yr = y + oy * g->ow;
    row(g, plen, rows, w, bias, z ? z + oy * g->ow : NULL, yr, ep);
    if (kiln__act_is_post(ep->act)) kiln__act_apply(ep->vm, ep->act, ep->lo, ep->hi, yr, g->ow);
  }
}

/* ---- the node-level kernel ------------------------------------------------------------------- */

bool kiln__dw_conv_parse(const kiln__node *n, const kiln__graph *g, kiln__dw_conv *d) {
  const kiln__value *wv = kiln__cpu_input(n, g, 1), *bv = kiln__cpu_input(n, g, 2);
  if (n->n_in < 2 || !kiln__cpu_maybe_float(kiln__cpu_input(n, g, 0)) || !wv || !wv->is_initializer ||
      wv->init.dtype != KILN_DTYPE_FLOAT || !wv->init.data || wv->init.rank != 4 ||
      (bv && !kiln__cpu_maybe_float(bv)))
    return false;
  const kiln_tensor *w = &wv->init;
  int64_t group = kiln__attr_int(n, "group", 1);
  if (w->dims[0] < 2 || w->dims[0] != group || w->dims[1] != 1 || w->dims[2] < 1 ||
      w->dims[3] < 1 || w->dims[2] > 16 || w->dims[3] > 16)
    return false;
  const int64_t *ks;
  size_t nks = kiln__attr_ints(n, "kernel_shape", &ks);
  if (nks && (nks != 2 || ks[0] != w->dims[2] || ks[1] != w->dims[3])) return false;
  int64_t st[2], dl[2];
  if (!kiln__cpu_ints(n, "strides", 2, 1, 1, st) || !kiln__cpu_ints(n, "dilations", 2, 1, 1, dl) ||
      !kiln__cpu_ints(n, "pads", 4, 0, 0, d->pads) || dl[0] != 1 || dl[1] != 1)
    return false;
  const char *ap = kiln__attr_str(n, "auto_pad", "NOTSET");
  static const char *const modes[] = {"NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"};
  d->auto_pad = -1;
  for (int i = 0; i < 4; i++)
    if (!strcmp(ap, modes[i])) d->auto_pad = i;
  if (!*ap) d->auto_pad = 0;
  if (d->auto_pad < 0) return false;
  d->c = (size_t)w->dims[0];
  d->kh = (size_t)w->dims[2];
  d->kw = (size_t)w->dims[3];
  d->sh = (size_t)st[0];
  d->sw = (size_t)st[1];
  d->w = w->data;
  return true;
}

typedef struct dw_job {
  const kiln__dw_conv *d;
  kiln__dw_geom g;
  size_t gsz; /* channels per work item: 8, or 16 for the 16-channel kernel */
  bool c16;   /* kiln__dw3x3_c16_avx512 runs the groups */
  const float *x, *bias, *z;
  float *y;
  const kiln__epilogue *ep;
} dw_job;

/* Work items are groups of gsz channels of one image (the last group of an image may be short). */
static void dw_groups(void *arg, size_t g0, size_t g1) {
  const dw_job *j = arg;
  size_t in = j->g.h * j->g.w, out = j->g.oh * j->g.ow, k = j->d->kh * j->d->kw;
  size_t cg = (j->d->c + j->gsz - 1) / j->gsz;
#ifdef DW_X86
  size_t hp = 0, wp = 0;
  /* The 3x3 kernel is faster from 8 columns up. Below, at stride 1 (7x7 planes) the two tie;
     at stride 2 (14x14 -> 7x7) the 3x3 kernel is ~1.8x faster: one band of 7 rows with every
     input row loaded once, where the interleaved copy moves each input float by itself. */
  bool nc8 = j->d->isa != KILN__ISA_GENERIC && nc8_fits(&j->g, &hp, &wp) &&
             (!kiln__dw3x3_fits(&j->g) || (j->g.ow < 8 && j->g.sw == 1));
  /* 7x7 at stride 1: the flat kernel (conv_dw3x3.c) rather than the interleaved copy. */
  bool flat = j->d->isa != KILN__ISA_GENERIC && kiln__dw3x3_flat_fits(&j->g);
#endif
  for (size_t gi = g0; gi < g1; gi++) {
    size_t c0 = gi % cg * j->gsz, cnt = KILN__MIN(j->gsz, j->d->c - c0);
    size_t q0 = gi / cg * j->d->c + c0;
#ifdef DW_X86
    if (j->c16) {
      kiln__dw3x3_c16_avx512(&j->g, cnt, j->x + q0 * in, in, j->d->w + c0 * k,
                             j->bias ? j->bias + c0 : NULL, j->z ? j->z + q0 * out : NULL,
                             j->y + q0 * out, out, j->ep);
      continue;
    }
    if (flat) {
      kiln__dw3x3_flat_avx2(&j->g, cnt, j->x + q0 * in, in, j->d->w + c0 * k,
                            j->bias ? j->bias + c0 : NULL, j->z ? j->z + q0 * out : NULL,
                            j->y + q0 * out, out, j->ep);
      continue;
    }
    if (nc8 && cnt == 8) {
      nc8_avx2(&j->g, hp, wp, j->x + q0 * in, in, j->d->w + c0 * k,
               j->bias ? j->bias + c0 : NULL, j->z ? j->z + q0 * out : NULL, j->y + q0 * out,
               out, j->ep);
      continue;
    }
#endif
    for (size_t q = q0; q < q0 + cnt; q++) {
      size_t ch = q % j->d->c;
      kiln__dwconv_plane_f32(j->d->isa, &j->g, j->x + q * in, j->d->w + ch * k,
                             j->bias ? j->bias[ch] : 0.0f, j->z ? j->z + q * out : NULL,
                             j->y + q * out, j->ep);
    }
  }
}

static int64_t same_pad(int mode, int64_t in, int64_t out, int64_t s, int64_t k) {
  int64_t total = KILN__MAX((out - 1) * s + k - in, (int64_t)0);
  return mode == 1 ? total / 2 : total - total / 2;
}

bool kiln__dw_conv_geom(const kiln__dw_conv *d, size_t h, size_t w, size_t oh, size_t ow,
                        kiln__dw_geom *g) {
  *g = (kiln__dw_geom){.h = h, .w = w, .oh = oh, .ow = ow, .kh = d->kh, .kw = d->kw,
                       .sh = d->sh, .sw = d->sw};
  int64_t pt = 0, pl = 0;
  if (d->auto_pad == 0) {
    pt = d->pads[0];
    pl = d->pads[1];
  } else if (d->auto_pad != 3) {
    pt = same_pad(d->auto_pad, (int64_t)h, (int64_t)oh, (int64_t)d->sh, (int64_t)d->kh);
    pl = same_pad(d->auto_pad, (int64_t)w, (int64_t)ow, (int64_t)d->sw, (int64_t)d->kw);
  }
  g->pt = (size_t)pt;
  g->pl = (size_t)pl;
  return kiln__dwconv_fits(g);
}

bool kiln__dw_conv_run(kiln__kctx *c, const kiln__dw_conv *d, const float *z,
                       const kiln__epilogue *ep) {
  const kiln_tensor *x = c->in[0], *y = c->out[0];
  const kiln_tensor *b = c->n_in > 2 ? c->in[2] : NULL;
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank != 4 || y->rank != 4 ||
      (size_t)x->dims[1] != d->c || (size_t)y->dims[1] != d->c || x->dims[0] != y->dims[0])
    return false;
  if (b && (b->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(b) != d->c)) return false;
  dw_job j = {.d = d, .x = x->data, .bias = b ? b->data : NULL, .z = z, .y = y->data, .ep = ep};
  if (!kiln__dw_conv_geom(d, (size_t)x->dims[2], (size_t)x->dims[3], (size_t)y->dims[2],
                          (size_t)y->dims[3], &j.g))
    return false;
  /* Outputs up to 8 wide (MobileNet-v2's 7x7 and 14 -> 7) on AVX-512: 16 channels in the lanes,
     where the plane kernels' per-plane set-up cost as much as the plane's multiply-adds. */
#ifdef DW_X86
  j.c16 = d->isa == KILN__ISA_AVX512 && j.g.ow <= 8 && kiln__dw3x3_c16_fits(&j.g);
#endif
  j.gsz = j.c16 ? 16 : 8;
  size_t planes = (size_t)x->dims[0] * d->c;
  size_t groups = (size_t)x->dims[0] * ((d->c + j.gsz - 1) / j.gsz);
  /* 1 MiB and more: an input the previous node wrote past L2 (conv_dw3x3.c prefetches;
     MobileNet-v2 in the model: 96 x 112 x 112, 4.8 MB, median 385 -> 331 us; 144 x 56 x 56,
     1.8 MB, 4% slower with the three-load AVX2 kernel on Zen 3, 48 -> 43 us with the one-load
     AVX-512 kernel on Zen 5). */
  j.g.prefetch = (double)planes * (double)(j.g.h * j.g.w) * sizeof(float) >= 1048576.0;
  if (planes && j.g.oh && j.g.ow)
    kiln__parallel_for(
        kiln__pool_for(c->pool, (double)planes * j.g.oh * j.g.ow * j.g.kh * j.g.kw), groups,
        dw_groups, &j);
  return true;
}

/* ---- the Conv row ---------------------------------------------------------------------------- */

static bool conv_supports(const kiln__node *n, const kiln__graph *g) {
  kiln__dw_conv d;
  return n->n_in <= 3 && kiln__dw_conv_parse(n, g, &d);
}

static kiln_status conv_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                kiln_error *err) {
  kiln__dw_conv *d = kiln__calloc(1, sizeof *d);
  if (!d) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing Conv");
  kiln__dw_conv_parse(n, g, d);
  kiln_status st = kiln__isa_select(&d->isa, err);
  if (st != KILN_OK) {
    kiln__free(d);
    return st;
  }
  *state = d;
  return KILN_OK;
}

static void conv_release(void *state) { kiln__free(state); }

static kiln_status conv_execute(kiln__kctx *c, void *state) {
  const kiln__epilogue ep = {0};
  return kiln__dw_conv_run(c, state, NULL, &ep) ? KILN_OK : c->node->op->run(c);
}

/* FusedConv (ai.kiln): y = act(conv + bias + Z), Z of y's shape. */
typedef struct fconv_state {
  kiln__dw_conv d;
  kiln__epilogue ep;
} fconv_state;

static bool fconv_supports(const kiln__node *n, const kiln__graph *g) {
  kiln__dw_conv d;
  kiln__act a;
  float p0, p1;
  const kiln__value *z = n->n_in > 3 && n->in[3] >= 0 ? &g->values[n->in[3]] : NULL;
  return n->n_in <= 4 &&
         kiln__act_from_node(n, &a, &p0, &p1) && (!z || kiln__cpu_maybe_float(z)) &&
         kiln__dw_conv_parse(n, g, &d);
}

static kiln_status fconv_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                 kiln_error *err) {
  fconv_state *f = kiln__calloc(1, sizeof *f);
  if (!f) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing FusedConv");
  kiln__dw_conv_parse(n, g, &f->d);
  kiln__act_from_node(n, &f->ep.act, &f->ep.lo, &f->ep.hi);
  kiln_status st = kiln__isa_select(&f->d.isa, err);
  if (st == KILN_OK) st = kiln__vmath_select(&f->ep.vm, err);
  if (st != KILN_OK) {
    kiln__free(f);
    return st;
  }
  *state = f;
  return KILN_OK;
}

static kiln_status fconv_execute(kiln__kctx *c, void *state) {
  const fconv_state *f = state;
  const kiln_tensor *z = c->n_in > 3 ? c->in[3] : NULL;
  if (z && (z->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(z) != kiln_tensor_count(c->out[0])))
    return c->node->op->run(c);
  return kiln__dw_conv_run(c, &f->d, z ? z->data : NULL, &f->ep) ? KILN_OK : c->node->op->run(c);
}

const kiln__cpu_kernel kiln__cpu_dwconv_kernels[] = {
    {"Conv", conv_supports, conv_prepare, conv_release, conv_execute, NULL},
    {"FusedConv", fconv_supports, fconv_prepare, conv_release, fconv_execute, NULL, "ai.kiln"},
    {0},
};
