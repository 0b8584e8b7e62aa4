/* The NCHW8c layout's kernels (docs/FUSED_OPS.md: ToBlocked, FromBlocked, BlockedConv,
 * BlockedPool), placed by the level-3 pass blocked-layout (src/passes/blocked_layout.c) over
 * MobileNet's and SqueezeNet's conv chains.
 *
 * Why the layout: in NCHW a 1x1 conv reads its input as C planes, one stream per channel, each
 * plane re-read from L2 by every row tile of output channels, and a strided depthwise conv
 * splits even and odd columns with shuffles. In NCHW8c a vector is 8 channels of one pixel:
 * a pointwise tile of 6 pixels x 16 output channels reads C/8 short contiguous runs and keeps
 * them in L1 for every output block, and a depthwise conv at any stride is plain loads.
 *
 * BlockedConv here runs four shapes, everything else goes to the reference kernel:
 *   pointwise  1x1, stride 1, no padding, group 1: Y[ob][p] = sum_c X[c/8][p][c%8] * W[ob][c]
 *              in register tiles of 6 pixels x 2 output blocks (12 accumulators);
 *   depthwise  3x3, group = C = M, stride 1 or 2, pads <= 1: 9 taps of plain loads, 4 output
 *              pixels per tile from one row of input vectors per tap row;
 *   dense      input_layout="NCHW" (a stem: up to 8 channels of NCHW input), group 1, any
 *              kernel up to 7x7, stride and padding: 6 pixels x 2 output blocks per tile, one
 *              broadcast per input tap, so the stem writes the blocked layout itself;
 *   Winograd   3x3, stride 1, group 1, pads <= 1: F(2x2, 3x3) with 8 channels per vector, the
 *              16 products as pointwise convs over the tiles (below).
 * Weights are packed at load ([M/8][C][8], [C/8][9][8], [M/8][C][kh][kw][8], [16][M/8][C][8]);
 * the bias (read per call), the residual Z (same layout as Y) and Relu/Clip are applied in
 * registers before the one store, other activations by kiln__act_apply on finished output.
 * The AVX2 code carries target attributes (the library builds for baseline x86-64); other ISAs
 * run the same tiles in portable C. */
#include <math.h>
#include <unistd.h> /* sysconf: online CPUs */

#include "core/threadpool.h"
#include "kernels/cpu/conv_winograd.h" /* kiln__wino_weight */
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/sgemm.h"
#include "kernels/cpu/vmath.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BC_X86 1
#define AVX2 __attribute__((target("avx2,fma")))
#define INLINE_AVX2 __attribute__((target("avx2,fma"), always_inline)) static inline
#endif

enum {
  B = 8,  /* channels per block */
  PT = 6, /* pointwise tile: pixels */
  DT = 4, /* depthwise tile: output pixels */
};

typedef enum { BC_POINTWISE, BC_DEPTHWISE, BC_DENSE, BC_WINO } bc_kind;

enum { DENSE_MAX_C = 8, DENSE_MAX_K = 7 };

typedef struct bconv_state {
  bc_kind kind;
  size_t c, m;        /* input and output channels (multiples of 8 but a dense conv's C) */
  size_t s, sw;       /* stride (depthwise: both; dense: s vertical, sw horizontal) */
  size_t kh, kw;      /* dense kernel */
  int64_t pt, pl;     /* padding before (top, left) */
  float *w;           /* packed weights (kiln__aligned_alloc) */
  kiln__epilogue ep;  /* act, lo, hi, vm; bias and residual per call */
  bool avx2;
  size_t cpus;        /* online CPUs at prepare: the Winograd kind's scratch slots */
} bconv_state;

/* ---- which nodes ------------------------------------------------------------------------------ */

static const kiln_tensor *bc_weight(const kiln__node *n, const kiln__graph *g) {
  return kiln__cpu_const_f32(kiln__cpu_input(n, g, 1));
}

/* The node's shape class (false: the reference kernel runs it). */
static bool bc_parse(const kiln__node *n, const kiln__graph *g, bc_kind *kind, kiln__conv2d *cv) {
  kiln__act act;
  float p0, p1;
  if (n->n_in < 2 || n->n_in > 4 || !kiln__act_from_node(n, &act, &p0, &p1)) return false;
  for (int i = 0; i < n->n_in; i++) {
    const kiln__value *v = kiln__cpu_input(n, g, i);
    if ((v || i < 2) && !kiln__cpu_maybe_float(v)) return false;
  }
  const kiln_tensor *w = bc_weight(n, g);
  if (!w || !kiln__cpu_conv2d_parse(n, w, cv) || cv->m % B != 0 || cv->dh != 1 || cv->dw != 1)
    return false;
  const char *layout = kiln__attr_str(n, "input_layout", "NCHW8c");
  if (!strcmp(layout, "NCHW")) {
    *kind = BC_DENSE;
    return cv->groups == 1 && cv->cg <= DENSE_MAX_C && cv->kh <= DENSE_MAX_K &&
           cv->kw <= DENSE_MAX_K && cv->pad == KILN__PAD_NOTSET;
  }
  if (strcmp(layout, "NCHW8c") != 0) return false;
  if (cv->groups == 1 && cv->cg % B == 0 && cv->kh == 3 && cv->kw == 3 && cv->sh == 1 &&
      cv->sw == 1 && cv->pad == KILN__PAD_NOTSET && cv->pads[0] <= 1 && cv->pads[1] <= 1 &&
      cv->pads[2] <= 1 && cv->pads[3] <= 1) {
    *kind = BC_WINO;
    return true;
  }
  bool no_pad = cv->pad == KILN__PAD_VALID ||
                (cv->pad == KILN__PAD_NOTSET && !cv->pads[0] && !cv->pads[1] && !cv->pads[2] &&
                 !cv->pads[3]);
  if (cv->groups == 1 && cv->kh == 1 && cv->kw == 1 && cv->sh == 1 && cv->sw == 1 && no_pad &&
      cv->cg % B == 0) {
    *kind = BC_POINTWISE;
    return true;
  }
  bool small_pad = cv->pad == KILN__PAD_NOTSET && cv->pads[0] <= 1 && cv->pads[1] <= 1 &&
                   cv->pads[2] <= 1 && cv->pads[3] <= 1;
  if (cv->groups == cv->m && cv->cg == 1 && cv->kh == 3 && cv->kw == 3 && cv->sh == cv->sw &&
      (cv->sh == 1 || cv->sh == 2) && (small_pad || no_pad)) {
    *kind = BC_DEPTHWISE;
    return true;
  }
  return false;
}

static bool bconv_supports(const kiln__node *n, const kiln__graph *g) {
  bc_kind kind;
  kiln__conv2d cv;
  return bc_parse(n, g, &kind, &cv);
}

static void bconv_release(void *state) {
  bconv_state *s = state;
  if (!s) return;
  kiln__aligned_free(s->w);
  kiln__free(s);
}

static kiln_status bconv_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                 kiln_error *err) {
  bc_kind kind;
  kiln__conv2d cv;
  if (!bc_parse(n, g, &kind, &cv))
    return kiln__fail(err, KILN_INTERNAL, "BlockedConv: prepare of a node it does not take");
  bconv_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing BlockedConv");
  *s = (bconv_state){.kind = kind, .m = cv.m, .c = kind == BC_DEPTHWISE ? cv.m : cv.cg,
                     .s = (size_t)cv.sh, .sw = (size_t)cv.sw, .kh = cv.kh, .kw = cv.kw,
                     .pt = cv.pads[0], .pl = cv.pads[1]};
  if (cv.pad == KILN__PAD_VALID) s->pt = s->pl = 0;
  kiln__act_from_node(n, &s->ep.act, &s->ep.lo, &s->ep.hi);
  kiln__isa isa;
  kiln_status st = kiln__isa_select(&isa, err);
  if (st == KILN_OK) st = kiln__vmath_select(&s->ep.vm, err);
  if (st != KILN_OK) {
    kiln__free(s);
    return st;
  }
  s->avx2 = isa == KILN__ISA_AVX2 || isa == KILN__ISA_AVX512;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  s->cpus = cpus > 1 ? (size_t)cpus : 1;
  const float *w = bc_weight(n, g)->data;
  size_t kk = s->kh * s->kw;
  size_t floats = kind == BC_DEPTHWISE ? s->c * 9 : kind == BC_WINO ? 16 * s->m * s->c
                                                                    : s->m * s->c * kk;
  s->w = kiln__aligned_alloc(floats * sizeof(float));
  if (!s->w) {
    kiln__free(s);
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory packing BlockedConv weights");
  }
  if (kind == BC_POINTWISE) /* W [M, C, 1, 1] -> [M/8][C][8] */
    for (size_t o = 0; o < s->m; o++)
      for (size_t i = 0; i < s->c; i++) s->w[((o / B) * s->c + i) * B + o % B] = w[o * s->c + i];
  else if (kind == BC_DEPTHWISE) /* W [C, 1, 3, 3] -> [C/8][9][8] */
    for (size_t ch = 0; ch < s->c; ch++)
      for (size_t t = 0; t < 9; t++) s->w[((ch / B) * 9 + t) * B + ch % B] = w[ch * 9 + t];
  else if (kind == BC_DENSE) /* W [M, C, kh, kw] -> [M/8][C][kh * kw][8] */
    for (size_t o = 0; o < s->m; o++)
      for (size_t t = 0; t < s->c * kk; t++)
        s->w[((o / B) * s->c * kk + t) * B + o % B] = w[o * s->c * kk + t];
  else /* U = G g G^T per filter, as 16 pointwise weights [16][M/8][C][8] (the Winograd kind) */
    for (size_t o = 0; o < s->m; o++)
      for (size_t i = 0; i < s->c; i++)
        kiln__wino_weight(w + (o * s->c + i) * 9,
                          s->w + ((o / B) * s->c + i) * B + o % B, s->m * s->c);
  *state = s;
  return KILN_OK;
}

/* ---- one call ---------------------------------------------------------------------------------- */

typedef struct bc_job {
  const bconv_state *s;
  const float *x, *bias, *z;
  float *y;
  size_t n, h, w, oh, ow; /* batch, input and output planes */
  /* pointwise: a unit of work is pix_unit pixels of every output block, or (by_block) every
     pixel of one pair of output blocks; units_per_n of them per image */
  size_t pix_unit, units_per_n;
  bool by_block;
} bc_job;

static inline float act1(const kiln__epilogue *ep, float v) {
  if (ep->act == KILN__ACT_RELU) return v < 0.0f ? 0.0f : v;
  if (ep->act == KILN__ACT_CLIP) return v < ep->lo ? ep->lo : v > ep->hi ? ep->hi : v;
  return v;
}

/* Post activations (not Relu/Clip) over finished output. */
static void post_act(const kiln__epilogue *ep, float *y, size_t floats) {
  if (kiln__act_is_post(ep->act)) kiln__act_apply(ep->vm, ep->act, ep->lo, ep->hi, y, floats);
}

/* Portable pointwise tile: np pixels x no output blocks at pixel p. x: the batch's input,
   y/z: the batch's output and residual; wo: output block ob's packed weights. */
static void pw_tile_c(const bc_job *j, const float *x, const float *wo, const float *z, float *y,
                      size_t ob, size_t no, size_t p, size_t np) {
  const bconv_state *s = j->s;
  size_t hw = j->h * j->w, cb_n = s->c / B;
  float acc[2][PT][B];
  for (size_t o = 0; o < no; o++)
    for (size_t q = 0; q < np; q++)
      for (size_t l = 0; l < B; l++) acc[o][q][l] = j->bias ? j->bias[(ob + o) * B + l] : 0.0f;
  for (size_t cb = 0; cb < cb_n; cb++) {
    const float *xb = x + (cb * hw + p) * B;
    for (size_t i = 0; i < B; i++)
      for (size_t o = 0; o < no; o++) {
        const float *wv = wo + (o * s->c + cb * B + i) * B;
        for (size_t q = 0; q < np; q++)
          for (size_t l = 0; l < B; l++) acc[o][q][l] += xb[q * B + i] * wv[l];
      }
  }
  for (size_t o = 0; o < no; o++)
    for (size_t q = 0; q < np; q++) {
      size_t at = ((ob + o) * hw + p + q) * B;
      for (size_t l = 0; l < B; l++)
        y[at + l] = act1(&s->ep, acc[o][q][l] + (z ? z[at + l] : 0.0f));
    }
}

#ifdef BC_X86
/* y[at] = act(r + z[at]) for one vector: the epilogue of every AVX2 tile (Relu/Clip here, other
   activations by post_act on finished rows). */
INLINE_AVX2 void store_avx2(const bconv_state *s, __m256 r, const float *z, float *y, size_t at) {
  const kiln__epilogue *ep = &s->ep;
  if (z) r = _mm256_add_ps(r, _mm256_loadu_ps(z + at));
  if (ep->act == KILN__ACT_RELU) r = _mm256_max_ps(r, _mm256_setzero_ps());
  else if (ep->act == KILN__ACT_CLIP)
    r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(ep->lo)), _mm256_set1_ps(ep->hi));
  _mm256_storeu_ps(y + at, r);
}

/* The 6-pixel x 2-block register tile shared by the pointwise and stem kernels: NP pixels x NO
   output blocks from ob, starting from the bias; a step multiplies one input float per pixel
   (xp + q xs) by two filter vectors; the store writes pixel q of block o at at0 + o plane8 +
   q B. */
INLINE_AVX2 void tile_init_avx2(__m256 acc[2][PT], const float *bias, size_t ob, size_t NO,
                                size_t NP) {
#pragma GCC unroll 2
  for (size_t o = 0; o < NO; o++) {
    __m256 b = bias ? _mm256_loadu_ps(bias + (ob + o) * B) : _mm256_setzero_ps();
#pragma GCC unroll 6
    for (size_t q = 0; q < NP; q++) acc[o][q] = b;
  }
}

INLINE_AVX2 void tile_step_avx2(__m256 acc[2][PT], __m256 w0, __m256 w1, const float *xp,
                                size_t xs, size_t NO, size_t NP) {
#pragma GCC unroll 6
  for (size_t q = 0; q < NP; q++) {
    __m256 xv = _mm256_broadcast_ss(xp + q * xs);
    acc[0][q] = _mm256_fmadd_ps(w0, xv, acc[0][q]);
    if (NO > 1) acc[1][q] = _mm256_fmadd_ps(w1, xv, acc[1][q]);
  }
}

INLINE_AVX2 void tile_store_avx2(const bconv_state *s, __m256 acc[2][PT], const float *z,
                                 float *y, size_t at0, size_t plane8, size_t NO, size_t NP) {
#pragma GCC unroll 2
  for (size_t o = 0; o < NO; o++)
#pragma GCC unroll 6
    for (size_t q = 0; q < NP; q++) store_avx2(s, acc[o][q], z, y, at0 + o * plane8 + q * B);
}

/* The AVX2 pointwise tile: NP pixels x NO output blocks in NP * NO accumulators. */
INLINE_AVX2 void pw_tile_avx2(const bc_job *j, const float *x, const float *wo, const float *z,
                              float *y, size_t ob, size_t p, size_t NO, size_t NP) {
  const bconv_state *s = j->s;
  size_t hw = j->h * j->w, cb_n = s->c / B;
  __m256 acc[2][PT];
  tile_init_avx2(acc, j->bias, ob, NO, NP);
  const float *w1 = wo + s->c * B;
  for (size_t cb = 0; cb < cb_n; cb++) {
    const float *xb = x + (cb * hw + p) * B;
    const float *wb = wo + cb * B * B;
#pragma GCC unroll 8
    for (size_t i = 0; i < B; i++) {
      __m256 w0v = _mm256_load_ps(wb + i * B);
      __m256 w1v = NO > 1 ? _mm256_load_ps(w1 + (cb * B + i) * B) : w0v;
      tile_step_avx2(acc, w0v, w1v, xb + i, B, NO, NP);
    }
  }
  tile_store_avx2(s, acc, z, y, (ob * hw + p) * B, hw * B, NO, NP);
}

/* Pixels [p0, p1) of output blocks [ob, ob + NO) in tiles of PT and one shorter (one call per
   run of tiles: a call per tile cost as much as a tile's multiply-adds on small C). */
INLINE_AVX2 void pw_run_avx2(const bc_job *j, const float *x, const float *wo, const float *z,
                             float *y, size_t ob, size_t p0, size_t p1, size_t NO) {
  size_t p = p0;
  for (; p + PT <= p1; p += PT) pw_tile_avx2(j, x, wo, z, y, ob, p, NO, PT);
  switch (p1 - p) {
  case 5: pw_tile_avx2(j, x, wo, z, y, ob, p, NO, 5); break;
  case 4: pw_tile_avx2(j, x, wo, z, y, ob, p, NO, 4); break;
  case 3: pw_tile_avx2(j, x, wo, z, y, ob, p, NO, 3); break;
  case 2: pw_tile_avx2(j, x, wo, z, y, ob, p, NO, 2); break;
  case 1: pw_tile_avx2(j, x, wo, z, y, ob, p, NO, 1); break;
  default: break;
  }
}

AVX2 static void pw_run_avx2_any(const bc_job *j, const float *x, const float *wo,
                                 const float *z, float *y, size_t ob, size_t no, size_t p0,
                                 size_t p1) {
  if (no == 2) pw_run_avx2(j, x, wo, z, y, ob, p0, p1, 2);
  else pw_run_avx2(j, x, wo, z, y, ob, p0, p1, 1);
}
#endif

/* Units [ub, ue) of batch u / units_per_n: pixels [pix_unit * (u % units_per_n), ...) of every
   output block (large planes: the unit's input stays in L1/L2 while the output blocks go by,
   two at a time, each pair's weights, C x 16 floats, over the unit's pixel tiles), or
   (by_block) output blocks 2 (u % units_per_n) and the next over every pixel (small planes,
   whose input fits L2: the weights, up to 960 x 160 floats in MobileNet, are read once). */
static void pw_units(void *arg, size_t ub, size_t ue) {
  const bc_job *j = arg;
  const bconv_state *s = j->s;
  size_t hw = j->h * j->w, mb = s->m / B;
  for (size_t u = ub; u < ue; u++) {
    size_t n = u / j->units_per_n, p0 = 0, p1 = hw, ob0 = 0, ob1 = mb;
    if (j->by_block) {
      ob0 = (u % j->units_per_n) * 2;
      ob1 = KILN__MIN(mb, ob0 + 2);
    } else {
      p0 = (u % j->units_per_n) * j->pix_unit;
      p1 = KILN__MIN(hw, p0 + j->pix_unit);
    }
    const float *x = j->x + n * s->c * hw;
    float *y = j->y + n * s->m * hw;
    const float *z = j->z ? j->z + n * s->m * hw : NULL;
    for (size_t ob = ob0; ob < ob1; ob += 2) {
      size_t no = KILN__MIN((size_t)2, mb - ob);
      const float *wo = s->w + ob * s->c * B;
#ifdef BC_X86
      if (s->avx2) pw_run_avx2_any(j, x, wo, z, y, ob, no, p0, p1);
      else
#endif
        for (size_t p = p0; p < p1; p += PT)
          pw_tile_c(j, x, wo, z, y, ob, no, p, KILN__MIN((size_t)PT, p1 - p));
      for (size_t o = 0; o < no; o++)
        post_act(&s->ep, y + ((ob + o) * hw + p0) * B, (p1 - p0) * B);
    }
  }
}

/* Depthwise: output pixel (oy, ox) of one 8-channel block, every tap checked against the plane
   (edge pixels; the portable path for all). */
static void dw_pixel_c(const bc_job *j, const float *xb, const float *wb, const float *bias,
                       const float *zb, float *yb, size_t oy, size_t ox) {
  const bconv_state *s = j->s;
  float acc[B];
  for (size_t l = 0; l < B; l++) acc[l] = bias ? bias[l] : 0.0f;
  for (size_t ky = 0; ky < 3; ky++) {
    int64_t iy = (int64_t)(oy * s->s + ky) - s->pt;
    if (iy < 0 || iy >= (int64_t)j->h) continue;
    for (size_t kx = 0; kx < 3; kx++) {
      int64_t ix = (int64_t)(ox * s->s + kx) - s->pl;
      if (ix < 0 || ix >= (int64_t)j->w) continue;
      const float *xv = xb + ((size_t)iy * j->w + (size_t)ix) * B, *wv = wb + (ky * 3 + kx) * B;
      for (size_t l = 0; l < B; l++) acc[l] += xv[l] * wv[l];
    }
  }
  size_t at = (oy * j->ow + ox) * B;
  for (size_t l = 0; l < B; l++) yb[at + l] = act1(&s->ep, acc[l] + (zb ? zb[at + l] : 0.0f));
}

#ifdef BC_X86
/* One output pixel whose taps may leave the plane (edges): each tap checked. */
AVX2 static void dw_pixel_avx2(const bc_job *j, const float *xb, const float *wb, __m256 b,
                               const float *zb, float *yb, size_t oy, size_t ox) {
  const bconv_state *s = j->s;
  __m256 acc = b;
  for (size_t ky = 0; ky < 3; ky++) {
    int64_t iy = (int64_t)(oy * s->s + ky) - s->pt;
    if (iy < 0 || iy >= (int64_t)j->h) continue;
    for (size_t kx = 0; kx < 3; kx++) {
      int64_t ix = (int64_t)(ox * s->s + kx) - s->pl;
      if (ix < 0 || ix >= (int64_t)j->w) continue;
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(xb + ((size_t)iy * j->w + (size_t)ix) * B),
                            _mm256_load_ps(wb + (ky * 3 + kx) * B), acc);
    }
  }
  store_avx2(s, acc, zb, yb, (oy * j->ow + ox) * B);
}

/* NT <= DT output pixels from ox of row oy, every tap inside the plane: S = 1 reads NT + 2
   input vectors per tap row, S = 2 reads 2 NT + 1. */
INLINE_AVX2 void dw_tile_avx2(const bc_job *j, const float *xb, const float *wb, __m256 b,
                              const float *zb, float *yb, size_t oy, size_t ox, size_t S,
                              size_t NT) {
  const bconv_state *s = j->s;
  enum { NV = 2 * DT + 1 };
  __m256 acc[DT];
#pragma GCC unroll 4
  for (size_t q = 0; q < NT; q++) acc[q] = b;
  size_t ix0 = ox * S - (size_t)s->pl;
#pragma GCC unroll 3
  for (size_t ky = 0; ky < 3; ky++) {
    int64_t iy = (int64_t)(oy * S + ky) - s->pt;
    if (iy < 0 || iy >= (int64_t)j->h) continue;
    const float *row = xb + ((size_t)iy * j->w + ix0) * B;
    __m256 v[NV];
#pragma GCC unroll 9
    for (size_t t = 0; t < (NT - 1) * S + 3; t++) v[t] = _mm256_loadu_ps(row + t * B);
#pragma GCC unroll 3
    for (size_t kx = 0; kx < 3; kx++) {
      __m256 wv = _mm256_load_ps(wb + (ky * 3 + kx) * B);
#pragma GCC unroll 4
      for (size_t q = 0; q < NT; q++) acc[q] = _mm256_fmadd_ps(v[q * S + kx], wv, acc[q]);
    }
  }
#pragma GCC unroll 4
  for (size_t q = 0; q < NT; q++) store_avx2(s, acc[q], zb, yb, (oy * j->ow + ox + q) * B);
}

/* Row oy: edge pixels one by one, the interior [lo, hi) in tiles of DT and one shorter. */
INLINE_AVX2 void dw_row_avx2(const bc_job *j, const float *xb, const float *wb, __m256 b,
                             const float *zb, float *yb, size_t oy, size_t lo, size_t hi) {
  size_t ox = 0;
  for (; ox < lo; ox++) dw_pixel_avx2(j, xb, wb, b, zb, yb, oy, ox);
  if (j->s->s == 1) {
    for (; ox + DT <= hi; ox += DT) dw_tile_avx2(j, xb, wb, b, zb, yb, oy, ox, 1, DT);
    switch (hi - ox) {
    case 3: dw_tile_avx2(j, xb, wb, b, zb, yb, oy, ox, 1, 3); break;
    case 2: dw_tile_avx2(j, xb, wb, b, zb, yb, oy, ox, 1, 2); break;
    case 1: dw_tile_avx2(j, xb, wb, b, zb, yb, oy, ox, 1, 1); break;
    default: break;
    }
  } else {
    for (; ox + DT <= hi; ox += DT) dw_tile_avx2(j, xb, wb, b, zb, yb, oy, ox, 2, DT);
    switch (hi - ox) {
    case 3: dw_tile_avx2(j, xb, wb, b, zb, yb, oy, ox, 2, 3); break;
    case 2: dw_tile_avx2(j, xb, wb, b, zb, yb, oy, ox, 2, 2); break;
    case 1: dw_tile_avx2(j, xb, wb, b, zb, yb, oy, ox, 2, 1); break;
    default: break;
    }
  }
  for (ox = hi; ox < j->ow; ox++) dw_pixel_avx2(j, xb, wb, b, zb, yb, oy, ox);
}

/* A whole plane per call: a call per row cost a quarter of the time on 7x7 planes. */
AVX2 static void dw_plane_avx2(const bc_job *j, const float *xb, const float *wb,
                               const float *bias, const float *zb, float *yb, size_t lo,
                               size_t hi) {
  __m256 b = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  for (size_t oy = 0; oy < j->oh; oy++) dw_row_avx2(j, xb, wb, b, zb, yb, oy, lo, hi);
}
#endif

/* Units are (batch, channel block) planes. */
static void dw_units(void *arg, size_t ub, size_t ue) {
  const bc_job *j = arg;
  const bconv_state *s = j->s;
  size_t cb_n = s->c / B, hw = j->h * j->w, ohw = j->oh * j->ow;
  /* Output columns whose taps all lie inside the row: [lo, hi). */
  size_t S = s->s, lo = ((size_t)s->pl + S - 1) / S, hi = 0;
  if (j->w + (size_t)s->pl >= 3) hi = (j->w + (size_t)s->pl - 3) / S + 1;
  hi = KILN__MIN(hi, j->ow);
  if (lo > hi) lo = hi;
  for (size_t u = ub; u < ue; u++) {
    size_t n = u / cb_n, cb = u % cb_n;
    const float *xb = j->x + (n * cb_n + cb) * hw * B, *wb = s->w + cb * 9 * B;
    const float *bias = j->bias ? j->bias + cb * B : NULL;
    const float *zb = j->z ? j->z + (n * cb_n + cb) * ohw * B : NULL;
    float *yb = j->y + (n * cb_n + cb) * ohw * B;
#ifdef BC_X86
    if (s->avx2) dw_plane_avx2(j, xb, wb, bias, zb, yb, lo, hi);
    else
#endif
      for (size_t oy = 0; oy < j->oh; oy++)
        for (size_t ox = 0; ox < j->ow; ox++) dw_pixel_c(j, xb, wb, bias, zb, yb, oy, ox);
    post_act(&s->ep, yb, ohw * B);
  }
}

/* Dense with NCHW input: output pixel (oy, ox) of output blocks [ob, ob + no), every tap
   checked against the plane (edges; the portable path for all). x: the image's input. */
static void dense_pixel_c(const bc_job *j, const float *x, const float *z, float *y, size_t ob,
                          size_t no, size_t oy, size_t ox) {
  const bconv_state *s = j->s;
  size_t kk = s->kh * s->kw, ohw = j->oh * j->ow;
  for (size_t o = ob; o < ob + no; o++) {
    float acc[B];
    for (size_t l = 0; l < B; l++) acc[l] = j->bias ? j->bias[o * B + l] : 0.0f;
    for (size_t ch = 0; ch < s->c; ch++)
      for (size_t ky = 0; ky < s->kh; ky++) {
        int64_t iy = (int64_t)(oy * s->s + ky) - s->pt;
        if (iy < 0 || iy >= (int64_t)j->h) continue;
        for (size_t kx = 0; kx < s->kw; kx++) {
          int64_t ix = (int64_t)(ox * s->sw + kx) - s->pl;
          if (ix < 0 || ix >= (int64_t)j->w) continue;
          float xv = x[(ch * j->h + (size_t)iy) * j->w + (size_t)ix];
          const float *wv = s->w + ((o * s->c + ch) * kk + ky * s->kw + kx) * B;
          for (size_t l = 0; l < B; l++) acc[l] += xv * wv[l];
        }
      }
    size_t at = (o * ohw + oy * j->ow + ox) * B;
    for (size_t l = 0; l < B; l++) y[at + l] = act1(&s->ep, acc[l] + (z ? z[at + l] : 0.0f));
  }
}

#ifdef BC_X86
/* One output pixel of every output block whose taps may leave the plane (edges). */
AVX2 static void dense_pixel_avx2(const bc_job *j, const float *x, const float *z, float *y,
                                  size_t oy, size_t ox) {
  const bconv_state *s = j->s;
  size_t kk = s->kh * s->kw, ohw = j->oh * j->ow;
  for (size_t o = 0; o < s->m / B; o++) {
    __m256 acc = j->bias ? _mm256_loadu_ps(j->bias + o * B) : _mm256_setzero_ps();
    for (size_t ch = 0; ch < s->c; ch++)
      for (size_t ky = 0; ky < s->kh; ky++) {
        int64_t iy = (int64_t)(oy * s->s + ky) - s->pt;
        if (iy < 0 || iy >= (int64_t)j->h) continue;
        for (size_t kx = 0; kx < s->kw; kx++) {
          int64_t ix = (int64_t)(ox * s->sw + kx) - s->pl;
          if (ix < 0 || ix >= (int64_t)j->w) continue;
          __m256 xv = _mm256_broadcast_ss(x + (ch * j->h + (size_t)iy) * j->w + (size_t)ix);
          acc = _mm256_fmadd_ps(_mm256_load_ps(s->w + ((o * s->c + ch) * kk + ky * s->kw + kx) * B),
                                xv, acc);
        }
      }
    store_avx2(s, acc, z, y, (o * ohw + oy * j->ow + ox) * B);
  }
}

/* NP pixels from ox of row oy (every tap inside the row; rows outside the plane skipped) x NO
   output blocks from ob: one broadcast per tap and pixel feeds NO blocks. KW and SW, when not
   0, are the kernel width and horizontal stride known at compile time (the tap loop unrolled:
   at run time its loop and address arithmetic took ~40% of a 3x3 stem's tile). */
INLINE_AVX2 void dense_tile_avx2(const bc_job *j, const float *x, const float *z, float *y,
                                 size_t ob, size_t oy, size_t ox, size_t NO, size_t NP,
                                 size_t KW, size_t SW) {
  const bconv_state *s = j->s;
  /* KW set: a square KW x KW kernel (the tap rows unrolled too) */
  size_t kw = KW ? KW : s->kw, kh = KW ? KW : s->kh, sw = SW ? SW : s->sw;
  size_t kk = kh * kw, ohw = j->oh * j->ow;
  __m256 acc[2][PT];
  tile_init_avx2(acc, j->bias, ob, NO, NP);
  const float *w0 = s->w + ob * s->c * kk * B, *w1 = w0 + s->c * kk * B;
  for (size_t ch = 0; ch < s->c; ch++)
#pragma GCC unroll 7
    for (size_t ky = 0; ky < kh; ky++) {
      int64_t iy = (int64_t)(oy * s->s + ky) - s->pt;
      if (iy < 0 || iy >= (int64_t)j->h) continue;
      const float *row = x + (ch * j->h + (size_t)iy) * j->w + ox * sw - (size_t)s->pl;
      size_t t0 = (ch * kk + ky * kw) * B;
#pragma GCC unroll 7
      for (size_t kx = 0; kx < kw; kx++) {
        __m256 a = _mm256_load_ps(w0 + t0 + kx * B);
        __m256 c = NO > 1 ? _mm256_load_ps(w1 + t0 + kx * B) : a;
        tile_step_avx2(acc, a, c, row + kx, sw, NO, NP);
      }
    }
  tile_store_avx2(s, acc, z, y, (ob * ohw + oy * j->ow + ox) * B, ohw * B, NO, NP);
}

/* Interior columns [lo, hi) of row oy for output blocks [ob, ob + NO). */
INLINE_AVX2 void dense_run_avx2(const bc_job *j, const float *x, const float *z, float *y,
                                size_t ob, size_t oy, size_t lo, size_t hi, size_t NO, size_t KW,
                                size_t SW) {
  size_t ox = lo;
  for (; ox + PT <= hi; ox += PT) dense_tile_avx2(j, x, z, y, ob, oy, ox, NO, PT, KW, SW);
  switch (hi - ox) {
  case 5: dense_tile_avx2(j, x, z, y, ob, oy, ox, NO, 5, KW, SW); break;
  case 4: dense_tile_avx2(j, x, z, y, ob, oy, ox, NO, 4, KW, SW); break;
  case 3: dense_tile_avx2(j, x, z, y, ob, oy, ox, NO, 3, KW, SW); break;
  case 2: dense_tile_avx2(j, x, z, y, ob, oy, ox, NO, 2, KW, SW); break;
  case 1: dense_tile_avx2(j, x, z, y, ob, oy, ox, NO, 1, KW, SW); break;
  default: break;
  }
}

INLINE_AVX2 void dense_blocks_avx2(const bc_job *j, const float *x, const float *z, float *y,
                                   size_t oy, size_t lo, size_t hi, size_t KW, size_t SW) {
  size_t mb = j->s->m / B;
  for (size_t ob = 0; ob < mb; ob += 2) {
    if (ob + 2 <= mb) dense_run_avx2(j, x, z, y, ob, oy, lo, hi, 2, KW, SW);
    else dense_run_avx2(j, x, z, y, ob, oy, lo, hi, 1, KW, SW);
  }
}

/* Row oy: edge pixels one by one, the interior by tiles (3x3 at stride 2 or 1, the stems of
   MobileNet and SqueezeNet, with the taps unrolled). */
AVX2 static void dense_row_avx2(const bc_job *j, const float *x, const float *z, float *y,
                                size_t oy, size_t lo, size_t hi) {
  const bconv_state *s = j->s;
  for (size_t ox = 0; ox < lo; ox++) dense_pixel_avx2(j, x, z, y, oy, ox);
  if (s->kh == 3 && s->kw == 3 && s->sw == 2) dense_blocks_avx2(j, x, z, y, oy, lo, hi, 3, 2);
  else if (s->kh == 3 && s->kw == 3 && s->sw == 1) dense_blocks_avx2(j, x, z, y, oy, lo, hi, 3, 1);
  else dense_blocks_avx2(j, x, z, y, oy, lo, hi, 0, 0);
  for (size_t ox = hi; ox < j->ow; ox++) dense_pixel_avx2(j, x, z, y, oy, ox);
}
#endif

/* Units are (batch, output row). */
static void dense_units(void *arg, size_t ub, size_t ue) {
  const bc_job *j = arg;
  const bconv_state *s = j->s;
  size_t mb = s->m / B, ohw = j->oh * j->ow;
  /* Output columns whose taps all lie inside the row: [lo, hi). */
  size_t lo = ((size_t)s->pl + s->sw - 1) / s->sw, hi = 0;
  if (j->w + (size_t)s->pl >= s->kw) hi = (j->w + (size_t)s->pl - s->kw) / s->sw + 1;
  hi = KILN__MIN(hi, j->ow);
  if (lo > hi) lo = hi;
  for (size_t u = ub; u < ue; u++) {
    size_t n = u / j->oh, oy = u % j->oh;
    const float *x = j->x + n * s->c * j->h * j->w;
    float *y = j->y + n * s->m * ohw;
    const float *z = j->z ? j->z + n * s->m * ohw : NULL;
#ifdef BC_X86
    if (s->avx2) dense_row_avx2(j, x, z, y, oy, lo, hi);
    else
#endif
      for (size_t ox = 0; ox < j->ow; ox++) dense_pixel_c(j, x, z, y, 0, mb, oy, ox);
    for (size_t o = 0; o < mb; o++) post_act(&s->ep, y + (o * ohw + oy * j->ow) * B, j->ow * B);
  }
}

/* ---- Winograd F(2x2, 3x3) on blocked input --------------------------------------------------
   (conv_winograd.c does it in NCHW with tiles in the vector lanes and transposes into the GEMM's
   panels.) With 8 channels per vector the transforms are plain vector adds per tile: B^T d B of
   the tile's 4 x 4 input vectors is written as V_xi [C/8][tiles][8], 16 blocked tensors whose
   "pixels" are tiles; M_xi = U_xi V_xi is then exactly a pointwise conv over them (the
   pointwise kernel, U_xi packed like its weights); A^T m A of M's 16 vectors per tile gives
   the 2 x 2 output vectors of 8 channels, stored with the epilogue. A unit of work is a block
   of tiles whose V and M fit half of L2. */
enum { WINO_SLOTS = 16, WINO_BYTES = 1536 * 1024 };

typedef struct wino_blk {
  const bc_job *j;
  size_t th, tw, tiles, wb; /* tile rows and columns per image, all tiles, tiles per block */
  float *scratch;
  size_t slot_floats;
} wino_blk;

/* Tiles per block: V and M up to ~768 KiB (a block re-reads all 16 U_xi, C x M floats each, so
   short blocks pay for them again: 12 tiles at SqueezeNet's 64 -> 256 ran 1.7x NCHW Winograd's
   32-tile blocks), whole pointwise tiles, at most 96. */
static size_t wino_block_tiles(size_t c, size_t m) {
  size_t t = WINO_BYTES / (16 * (c + m) * sizeof(float)) / PT * PT;
  return KILN__MIN((size_t)96, KILN__MAX((size_t)PT, t));
}

#ifdef BC_X86
/* The input transform of one tile and channel block: v[xi * vs] = (B^T d B)[xi], d the 4 x 4
   input vectors from (iy0, ix0) of plane xp (zero outside). */
AVX2 static void wino_in_avx2(const bc_job *j, const float *xp, int64_t iy0, int64_t ix0,
                              float *v, size_t vs) {
  __m256 d[4][4], u[4][4];
  bool inside = iy0 >= 0 && ix0 >= 0 && iy0 + 4 <= (int64_t)j->h && ix0 + 4 <= (int64_t)j->w;
  for (int r = 0; r < 4; r++)
    for (int c = 0; c < 4; c++) {
      int64_t iy = iy0 + r, ix = ix0 + c;
      bool in = inside || (iy >= 0 && ix >= 0 && iy < (int64_t)j->h && ix < (int64_t)j->w);
      d[r][c] = in ? _mm256_loadu_ps(xp + ((size_t)iy * j->w + (size_t)ix) * B)
                   : _mm256_setzero_ps();
    }
  for (int r = 0; r < 4; r++) { /* d B, row r */
    u[r][0] = _mm256_sub_ps(d[r][0], d[r][2]);
    u[r][1] = _mm256_add_ps(d[r][1], d[r][2]);
    u[r][2] = _mm256_sub_ps(d[r][2], d[r][1]);
    u[r][3] = _mm256_sub_ps(d[r][1], d[r][3]);
  }
  for (int k = 0; k < 4; k++) { /* B^T (d B), column k */
    _mm256_storeu_ps(v + (size_t)(0 + k) * vs, _mm256_sub_ps(u[0][k], u[2][k]));
    _mm256_storeu_ps(v + (size_t)(4 + k) * vs, _mm256_add_ps(u[1][k], u[2][k]));
    _mm256_storeu_ps(v + (size_t)(8 + k) * vs, _mm256_sub_ps(u[2][k], u[1][k]));
    _mm256_storeu_ps(v + (size_t)(12 + k) * vs, _mm256_sub_ps(u[1][k], u[3][k]));
  }
}

/* The output transform of one tile and output block: the 2 x 2 output vectors at (oy0, ox0)
   (those inside the plane) from m[xi * ms], + bias, epilogue. yb, zb: the output block's plane. */
AVX2 static void wino_out_avx2(const bc_job *j, const float *m, size_t ms, const float *bp,
                               const float *zb, float *yb, size_t oy0, size_t ox0) {
  const bconv_state *s = j->s;
  __m256 u[4][2], bias = bp ? _mm256_loadu_ps(bp) : _mm256_setzero_ps();
  for (int i = 0; i < 4; i++) { /* m A, row i */
    __m256 m0 = _mm256_loadu_ps(m + (size_t)(4 * i) * ms), m1 = _mm256_loadu_ps(m + (size_t)(4 * i + 1) * ms);
    __m256 m2 = _mm256_loadu_ps(m + (size_t)(4 * i + 2) * ms), m3 = _mm256_loadu_ps(m + (size_t)(4 * i + 3) * ms);
    u[i][0] = _mm256_add_ps(_mm256_add_ps(m0, m1), m2);
    u[i][1] = _mm256_sub_ps(_mm256_sub_ps(m1, m2), m3);
  }
  for (size_t q = 0; q < 2; q++) { /* A^T (m A), column q */
    __m256 o0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(u[0][q], u[1][q]), u[2][q]), bias);
    __m256 o1 = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(u[1][q], u[2][q]), u[3][q]), bias);
    size_t ox = ox0 + q;
    if (ox >= j->ow) continue;
    store_avx2(s, o0, zb, yb, (oy0 * j->ow + ox) * B);
    if (oy0 + 1 < j->oh) store_avx2(s, o1, zb, yb, ((oy0 + 1) * j->ow + ox) * B);
  }
}
#endif

/* Block b on `mem` (16 C wb floats of V, then 16 M wb of M). */
static void wino_block_run(const wino_blk *wk, size_t b, float *mem) {
  const bc_job *j = wk->j;
  const bconv_state *s = j->s;
  size_t cb_n = s->c / B, kb_n = s->m / B, wb = wk->wb, tpi = wk->th * wk->tw;
  size_t q0 = b * wb, nt = KILN__MIN(wb, wk->tiles - q0), hw = j->h * j->w, ohw = j->oh * j->ow;
  float *v = mem, *mm = mem + 16 * s->c * wb;
  /* Input transform: V_xi[cb][t] = (B^T d B)[xi] of the tile's 4 x 4 input vectors. */
  for (size_t cb = 0; cb < cb_n; cb++)
    for (size_t t = 0; t < nt; t++) {
      size_t q = q0 + t, img = q / tpi, ty = q % tpi / wk->tw, tx = q % wk->tw;
      int64_t iy0 = (int64_t)(2 * ty) - s->pt, ix0 = (int64_t)(2 * tx) - s->pl;
      const float *xp = j->x + (img * cb_n + cb) * hw * B;
#ifdef BC_X86
      if (s->avx2) {
        wino_in_avx2(j, xp, iy0, ix0, v + (cb * wb + t) * B, cb_n * wb * B);
        continue;
      }
#endif
      float d[4][4][B], u[4][4][B];
      for (int r = 0; r < 4; r++)
        for (int cc = 0; cc < 4; cc++) {
          int64_t iy = iy0 + r, ix = ix0 + cc;
          bool in = iy >= 0 && ix >= 0 && iy < (int64_t)j->h && ix < (int64_t)j->w;
          const float *src = in ? xp + ((size_t)iy * j->w + (size_t)ix) * B : NULL;
          for (size_t l = 0; l < B; l++) d[r][cc][l] = src ? src[l] : 0.0f;
        }
      for (int r = 0; r < 4; r++) /* d B, row r */
        for (size_t l = 0; l < B; l++) {
          u[r][0][l] = d[r][0][l] - d[r][2][l];
          u[r][1][l] = d[r][1][l] + d[r][2][l];
          u[r][2][l] = d[r][2][l] - d[r][1][l];
          u[r][3][l] = d[r][1][l] - d[r][3][l];
        }
      for (int k = 0; k < 4; k++) /* B^T (d B), column k */
        for (size_t l = 0; l < B; l++) {
          float vv[4] = {u[0][k][l] - u[2][k][l], u[1][k][l] + u[2][k][l],
                         u[2][k][l] - u[1][k][l], u[1][k][l] - u[3][k][l]};
          for (int i = 0; i < 4; i++) v[(((size_t)(i * 4 + k) * cb_n + cb) * wb + t) * B + l] = vv[i];
        }
    }
  /* M_xi = U_xi V_xi: a pointwise conv over the block's tiles, no bias, no epilogue. */
  bconv_state gs = *s;
  gs.ep.act = KILN__ACT_NONE;
  bc_job g = {.s = &gs, .h = 1, .w = wb};
  for (size_t xi = 0; xi < 16; xi++) {
    const float *x = v + xi * s->c * wb, *u = s->w + xi * s->m * s->c;
    float *y = mm + xi * s->m * wb;
    for (size_t ob = 0; ob < kb_n; ob += 2) {
      size_t no = KILN__MIN((size_t)2, kb_n - ob);
      const float *wo = u + ob * s->c * B;
#ifdef BC_X86
      if (s->avx2) pw_run_avx2_any(&g, x, wo, NULL, y, ob, no, 0, nt);
      else
#endif
        for (size_t p = 0; p < nt; p += PT)
          pw_tile_c(&g, x, wo, NULL, y, ob, no, p, KILN__MIN((size_t)PT, nt - p));
    }
  }
  /* Output transform: o = A^T m A per tile and block of 8 output channels, + bias, epilogue. */
  for (size_t kb = 0; kb < kb_n; kb++)
    for (size_t t = 0; t < nt; t++) {
      size_t q = q0 + t, img = q / tpi, ty = q % tpi / wk->tw, tx = q % wk->tw;
#ifdef BC_X86
      if (s->avx2) {
        size_t plane = (img * kb_n + kb) * ohw * B;
        wino_out_avx2(j, mm + (kb * wb + t) * B, kb_n * wb * B, j->bias ? j->bias + kb * B : NULL,
                      j->z ? j->z + plane : NULL, j->y + plane, 2 * ty, 2 * tx);
        if (kiln__act_is_post(s->ep.act))
          for (size_t dy = 0; dy < 2 && 2 * ty + dy < j->oh; dy++)
            for (size_t dx = 0; dx < 2 && 2 * tx + dx < j->ow; dx++)
              post_act(&s->ep, j->y + plane + ((2 * ty + dy) * j->ow + 2 * tx + dx) * B, B);
        continue;
      }
#endif
      float m[16][B], u[4][2][B], o[2][2][B], bias[B];
      for (int i = 0; i < 16; i++)
        for (size_t l = 0; l < B; l++) m[i][l] = mm[(((size_t)i * kb_n + kb) * wb + t) * B + l];
      for (int i = 0; i < 4; i++) /* m A, row i */
        for (size_t l = 0; l < B; l++) {
          u[i][0][l] = m[4 * i][l] + m[4 * i + 1][l] + m[4 * i + 2][l];
          u[i][1][l] = m[4 * i + 1][l] - m[4 * i + 2][l] - m[4 * i + 3][l];
        }
      for (size_t l = 0; l < B; l++) bias[l] = j->bias ? j->bias[kb * B + l] : 0.0f;
      for (int qq = 0; qq < 2; qq++) /* A^T (m A), column qq */
        for (size_t l = 0; l < B; l++) {
          o[0][qq][l] = u[0][qq][l] + u[1][qq][l] + u[2][qq][l] + bias[l];
          o[1][qq][l] = u[1][qq][l] - u[2][qq][l] - u[3][qq][l] + bias[l];
        }
      for (size_t dy = 0; dy < 2; dy++)
        for (size_t dx = 0; dx < 2; dx++) {
          size_t oy = 2 * ty + dy, ox = 2 * tx + dx;
          if (oy >= j->oh || ox >= j->ow) continue;
          size_t at = ((img * kb_n + kb) * ohw + oy * j->ow + ox) * B;
          for (size_t l = 0; l < B; l++)
            j->y[at + l] = act1(&s->ep, o[dy][dx][l] + (j->z ? j->z[at + l] : 0.0f));
          post_act(&s->ep, j->y + at, B);
        }
    }
}

static void wino_units(void *arg, size_t ub, size_t ue, size_t slot) {
  const wino_blk *wk = arg;
  float *mem = wk->scratch + slot * wk->slot_floats;
  for (size_t u = ub; u < ue; u++) wino_block_run(wk, u, mem);
}

static size_t wino_slot_floats(const bconv_state *s) {
  return 16 * (s->c + s->m) * wino_block_tiles(s->c, s->m);
}

/* Scratch for the Winograd kind: a slot per thread, up to one per online CPU and WINO_SLOTS
   (the plan sizes it before the session's thread count is known; sixteen slots made
   SqueezeNet's arena 23 MiB on two CPUs); other kinds need none. */
static size_t bconv_scratch(const kiln__kctx *c, void *state) {
  const bconv_state *s = state;
  const kiln__op *op = c->node->op;
  size_t ref = op->scratch ? op->scratch(c) : 0;
  if (s->kind != BC_WINO) return ref;
  size_t slots = KILN__MIN((size_t)WINO_SLOTS, s->cpus);
  return KILN__MAX(ref, (slots * wino_slot_floats(s) + 16) * sizeof(float));
}

static kiln_status bconv_execute(kiln__kctx *c, void *state) {
  const bconv_state *s = state;
  const kiln_tensor *x = c->in[0], *y = c->out[0];
  const kiln_tensor *b = c->n_in > 2 ? c->in[2] : NULL, *z = c->n_in > 3 ? c->in[3] : NULL;
  /* What the load could not see: the call's dtypes and shapes. */
  bool dense = s->kind == BC_DENSE;
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank != (dense ? 4 : 5) || y->rank != 5 ||
      (size_t)x->dims[1] * (dense ? 1 : B) != s->c || (size_t)y->dims[1] * B != s->m ||
      (b && (b->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(b) != s->m)) ||
      (z && (z->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(z) != kiln_tensor_count(y))))
    return c->node->op->run(c);
  bc_job j = {.s = s, .x = x->data, .bias = b ? b->data : NULL, .z = z ? z->data : NULL,
              .y = y->data, .n = (size_t)x->dims[0], .h = (size_t)x->dims[2],
              .w = (size_t)x->dims[3], .oh = (size_t)y->dims[2], .ow = (size_t)y->dims[3]};
  size_t hw = j.h * j.w;
  if (j.n == 0 || j.oh * j.ow == 0) return KILN_OK;
  if (dense) {
    double work = (double)j.n * j.oh * j.ow * s->m * s->c * s->kh * s->kw;
    kiln__parallel_for(kiln__pool_for(c->pool, work), j.n * j.oh, dense_units, &j);
  } else if (s->kind == BC_WINO) {
    size_t th = (j.oh + 1) / 2, tw = (j.ow + 1) / 2;
    wino_blk wk = {.j = &j, .th = th, .tw = tw, .tiles = j.n * th * tw,
                   .slot_floats = wino_slot_floats(s)};
    size_t slots = c->scratch_bytes / sizeof(float) > 16
                       ? (c->scratch_bytes / sizeof(float) - 16) / wk.slot_floats
                       : 0;
    if (slots == 0) return c->node->op->run(c);
    wk.scratch = (float *)(((uintptr_t)c->scratch + 63) & ~(uintptr_t)63);
    double work = (double)wk.tiles * 16.0 * s->c * s->m;
    struct kiln__pool *pool = kiln__pool_for(c->pool, work);
    size_t threads = (size_t)kiln__pool_threads(pool);
    if (slots < threads) pool = NULL, threads = 1;
    /* Blocks in a multiple of the threads (SqueezeNet's 13x13 planes are 49 tiles, one block
       of the largest size), of equal size, none over the slot's. */
    size_t cap = wino_block_tiles(s->c, s->m);
    size_t blocks = KILN__MAX(threads, (wk.tiles + cap - 1) / cap);
    blocks = (blocks + threads - 1) / threads * threads;
    wk.wb = KILN__MIN(cap, (wk.tiles + blocks - 1) / blocks);
    blocks = (wk.tiles + wk.wb - 1) / wk.wb;
    kiln__parallel_for_slots(pool, blocks, wino_units, &wk);
  } else if (s->kind == BC_POINTWISE) {
    if (hw != j.oh * j.ow) return c->node->op->run(c);
    /* An input of an image up to 128 KiB (L2 holds it while the weights stream once): units
       of output blocks. Else 8 units or more per image where the plane allows, whole tiles,
       at most 16 tiles. */
    j.by_block = hw * s->c * sizeof(float) <= 128 * 1024;
    size_t tiles = (hw + PT - 1) / PT;
    j.pix_unit = KILN__MIN((size_t)16, KILN__MAX((size_t)1, tiles / 8)) * PT;
    j.units_per_n = j.by_block ? (s->m / B + 1) / 2 : (hw + j.pix_unit - 1) / j.pix_unit;
    double work = (double)j.n * hw * s->c * s->m;
    kiln__parallel_for(kiln__pool_for(c->pool, work), j.n * j.units_per_n, pw_units, &j);
  } else {
    double work = (double)j.n * s->c * j.oh * j.ow * 9;
    kiln__parallel_for(kiln__pool_for(c->pool, work), j.n * (s->c / B), dw_units, &j);
  }
  return KILN_OK;
}

/* ---- pools ------------------------------------------------------------------------------------ */

/* BlockedPool with op MaxPool (any kernel, stride and explicit pads, dilation 1) or
   GlobalAveragePool: 8 channels per vector; the rest goes to the reference kernel. */
typedef struct bpool_state {
  bool global;          /* GlobalAveragePool, else MaxPool */
  int64_t k[2], s[2], pads[4];
  bool avx2;
} bpool_state;

static bool bpool_parse(const kiln__node *n, bpool_state *p) {
  const char *op = kiln__attr_str(n, "op", "");
  *p = (bpool_state){.global = !strcmp(op, "GlobalAveragePool")};
  if (n->n_in != 1 || n->n_out != 1) return false;
  if (p->global) return true;
  const int64_t *ks;
  int64_t dl[2];
  const char *ap = kiln__attr_str(n, "auto_pad", "NOTSET");
  return !strcmp(op, "MaxPool") && kiln__attr_ints(n, "kernel_shape", &ks) == 2 &&
         (!*ap || !strcmp(ap, "NOTSET")) && kiln__cpu_ints(n, "strides", 2, 1, 1, p->s) &&
         kiln__cpu_ints(n, "dilations", 2, 1, 1, dl) && dl[0] == 1 && dl[1] == 1 &&
         kiln__cpu_ints(n, "pads", 4, 0, 0, p->pads) && ks[0] >= 1 && ks[1] >= 1 &&
         (p->k[0] = ks[0], p->k[1] = ks[1], true);
}

static bool bpool_supports(const kiln__node *n, const kiln__graph *g) {
  bpool_state p;
  return bpool_parse(n, &p) && kiln__cpu_maybe_float(kiln__cpu_input(n, g, 0));
}

static kiln_status bpool_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                 kiln_error *err) {
  (void)g;
  bpool_state *p = kiln__malloc(sizeof *p);
  if (!p) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing BlockedPool");
  bpool_parse(n, p);
  kiln__isa isa;
  kiln_status st = kiln__isa_select(&isa, err);
  if (st != KILN_OK) {
    kiln__free(p);
    return st;
  }
  p->avx2 = isa == KILN__ISA_AVX2 || isa == KILN__ISA_AVX512;
  *state = p;
  return KILN_OK;
}

typedef struct bpool_job {
  const bpool_state *p;
  const float *x;
  float *y;
  size_t h, w, oh, ow;
} bpool_job;

/* max as the reference MaxPool takes it: a NaN tap wins, and stays */
static inline float nan_max(float acc, float v) { return v > acc || v != v ? v : acc; }

#ifdef BC_X86
/* max over one output pixel's ny x nx taps inside the plane, the first at r: the max of the taps
   that are numbers, a NaN tap making the lane NaN (all bits set) as the reference's
   NaN-propagating max does, without a blend in the dependency chain. */
INLINE_AVX2 __m256 maxpool_px_avx2(const float *r, size_t w, int64_t ny, int64_t nx) {
  __m256 acc = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
  for (int64_t ky = 0; ky < ny; ky++)
    for (int64_t kx = 0; kx < nx; kx++) {
      __m256 v = _mm256_loadu_ps(r + ((size_t)ky * w + (size_t)kx) * B);
      acc = _mm256_max_ps(acc, v);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
  return _mm256_or_ps(acc, nan);
}

/* A plane: per output row the kernel rows inside the plane, per pixel the columns; pixels whose
   columns are all inside take the 3x3 path with the loop bounds known (SqueezeNet's pools). */
AVX2 static void maxpool_plane_avx2(const bpool_job *j, const float *x, float *y) {
  const bpool_state *p = j->p;
  int64_t kh = p->k[0], kw = p->k[1], h = (int64_t)j->h, w = (int64_t)j->w;
  for (size_t oy = 0; oy < j->oh; oy++) {
    int64_t iy0 = (int64_t)oy * p->s[0] - p->pads[0];
    int64_t ky0 = iy0 < 0 ? -iy0 : 0, ky1 = KILN__MIN(kh, h - iy0);
    for (size_t ox = 0; ox < j->ow; ox++) {
      int64_t ix0 = (int64_t)ox * p->s[1] - p->pads[1];
      int64_t kx0 = ix0 < 0 ? -ix0 : 0, kx1 = KILN__MIN(kw, w - ix0);
      /* an output pixel whose window holds no input pixel stays -inf, as the reference's */
      __m256 m = _mm256_set1_ps(-INFINITY);
      if (ky1 > ky0 && kx1 > kx0) {
        const float *r = x + ((size_t)(iy0 + ky0) * j->w + (size_t)(ix0 + kx0)) * B;
        m = ky1 - ky0 == 3 && kx1 - kx0 == 3 ? maxpool_px_avx2(r, j->w, 3, 3)
                                               : maxpool_px_avx2(r, j->w, ky1 - ky0, kx1 - kx0);
      }
      _mm256_storeu_ps(y + (oy * j->ow + ox) * B, m);
    }
  }
}
#endif

/* Units are (batch, channel block) planes. */
static void bpool_units(void *arg, size_t ub, size_t ue) {
  const bpool_job *j = arg;
  const bpool_state *p = j->p;
  size_t hw = j->h * j->w, ohw = j->oh * j->ow;
  for (size_t u = ub; u < ue; u++) {
    const float *x = j->x + u * hw * B;
    float *y = j->y + u * ohw * B;
    if (p->global) { /* in float, in order, as the reference sums */
      float s[B] = {0};
      for (size_t q = 0; q < hw; q++)
        for (size_t l = 0; l < B; l++) s[l] += x[q * B + l];
      for (size_t l = 0; l < B; l++) y[l] = hw ? (float)((double)s[l] / (double)hw) : NAN;
      continue;
    }
#ifdef BC_X86
    if (p->avx2) {
      maxpool_plane_avx2(j, x, y);
      continue;
    }
#endif
    for (size_t oy = 0; oy < j->oh; oy++)
      for (size_t ox = 0; ox < j->ow; ox++) {
        float acc[B];
        for (size_t l = 0; l < B; l++) acc[l] = -INFINITY;
        for (int64_t ky = 0; ky < p->k[0]; ky++) {
          int64_t iy = (int64_t)oy * p->s[0] - p->pads[0] + ky;
          if (iy < 0 || iy >= (int64_t)j->h) continue;
          for (int64_t kx = 0; kx < p->k[1]; kx++) {
            int64_t ix = (int64_t)ox * p->s[1] - p->pads[1] + kx;
            if (ix < 0 || ix >= (int64_t)j->w) continue;
            const float *v = x + ((size_t)iy * j->w + (size_t)ix) * B;
            for (size_t l = 0; l < B; l++) acc[l] = nan_max(acc[l], v[l]);
          }
        }
        for (size_t l = 0; l < B; l++) y[(oy * j->ow + ox) * B + l] = acc[l];
      }
  }
}

static kiln_status bpool_execute(kiln__kctx *c, void *state) {
  const bpool_state *p = state;
  const kiln_tensor *x = c->in[0], *y = c->out[0];
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank != 5 || y->rank != 5 || x->dims[4] != B ||
      y->dims[1] != x->dims[1] || y->dims[0] != x->dims[0])
    return c->node->op->run(c);
  bpool_job j = {.p = p, .x = x->data, .y = y->data, .h = (size_t)x->dims[2],
                 .w = (size_t)x->dims[3], .oh = (size_t)y->dims[2], .ow = (size_t)y->dims[3]};
  size_t units = (size_t)(x->dims[0] * x->dims[1]);
  double work = (double)units * (p->global ? j.h * j.w : j.oh * j.ow * (size_t)(p->k[0] * p->k[1]));
  kiln__parallel_for(kiln__pool_for(c->pool, work * B), units, bpool_units, &j);
  return KILN_OK;
}

/* ---- the reorders ------------------------------------------------------------------------------ */

typedef struct reorder_job {
  const float *x;
  float *y;
  size_t hw;
  bool to;   /* NCHW -> NCHW8c */
  bool avx2;
} reorder_job;

#ifdef BC_X86
/* An 8 x 8 block: rows r of src (stride ls) become columns of dst (stride ld). */
AVX2 static void transpose8(const float *src, size_t ls, float *dst, size_t ld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * ls);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; i++) {
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + i * ld, t[i]); /* t[i]: column i */
}
#endif

/* Units are channel blocks (of every image: x and y hold n * C / 8 of them). */
static void reorder_units(void *arg, size_t ub, size_t ue) {
  const reorder_job *r = arg;
  size_t hw = r->hw;
  for (size_t u = ub; u < ue; u++) {
    const float *x = r->x + u * B * hw;
    float *y = r->y + u * B * hw;
    size_t p = 0;
#ifdef BC_X86
    if (r->avx2)
      for (; p + B <= hw; p += B) {
        if (r->to) transpose8(x + p, hw, y + p * B, B);
        else transpose8(x + p * B, B, y + p, hw);
      }
#endif
    for (; p < hw; p++)
      for (size_t l = 0; l < B; l++) {
        if (r->to) y[p * B + l] = x[l * hw + p];
        else y[l * hw + p] = x[p * B + l];
      }
  }
}

static bool reorder_supports(const kiln__node *n, const kiln__graph *g) {
  return n->n_in == 1 && kiln__cpu_maybe_float(kiln__cpu_input(n, g, 0));
}

/* The state is whether the AVX2 transposes run. */
static kiln_status reorder_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                   kiln_error *err) {
  (void)n, (void)g;
  kiln__isa isa;
  kiln_status st = kiln__isa_select(&isa, err);
  if (st != KILN_OK) return st;
  bool *avx2 = kiln__malloc(sizeof *avx2);
  if (!avx2) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing a reorder");
  *avx2 = isa == KILN__ISA_AVX2 || isa == KILN__ISA_AVX512;
  *state = avx2;
  return KILN_OK;
}

static void reorder_release(void *state) { kiln__free(state); }

static kiln_status reorder_run(kiln__kctx *c, bool to, const bool *avx2) {
  const kiln_tensor *x = c->in[0], *y = c->out[0];
  const kiln_tensor *blk = to ? y : x; /* [N, C/8, H, W, 8] */
  if (x->dtype != KILN_DTYPE_FLOAT || blk->rank != 5 || blk->dims[4] != B)
    return c->node->op->run(c);
  reorder_job r = {.x = x->data, .y = y->data, .hw = (size_t)(blk->dims[2] * blk->dims[3]),
                   .to = to, .avx2 = *avx2};
  size_t units = (size_t)(blk->dims[0] * blk->dims[1]);
  kiln__parallel_for(kiln__pool_for(c->pool, (double)units * r.hw * B), units, reorder_units, &r);
  return KILN_OK;
}

static kiln_status to_blocked_execute(kiln__kctx *c, void *state) {
  return reorder_run(c, true, state);
}

static kiln_status from_blocked_execute(kiln__kctx *c, void *state) {
  return reorder_run(c, false, state);
}

const kiln__cpu_kernel kiln__cpu_blocked_kernels[] = {
    {"BlockedConv", bconv_supports, bconv_prepare, bconv_release, bconv_execute, bconv_scratch,
     "ai.kiln"},
    {"BlockedPool", bpool_supports, bpool_prepare, reorder_release, bpool_execute, NULL,
     "ai.kiln"},
    {"ToBlocked", reorder_supports, reorder_prepare, reorder_release, to_blocked_execute, NULL,
     "ai.kiln"},
    {"FromBlocked", reorder_supports, reorder_prepare, reorder_release, from_blocked_execute,
     NULL, "ai.kiln"},
    {0},
};
