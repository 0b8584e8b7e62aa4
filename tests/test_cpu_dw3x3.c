/* The depthwise 3x3 plane kernels (conv_dw3x3.c and the paths of conv_dw.c) against a direct
 * double-precision sum written here: every plane size from 1x1 to 36 wide and MobileNet's, both
 * strides, left/top pads 0-2 with any bottom/right pad, stride 2 at every output height from 6
 * to 15 (each remainder of its bands of 7 rows), each epilogue (none, ReLU, Clip, a post
 * activation) with and without a residual, the residual aliasing the output, and inputs whose
 * rows end at the end of their buffer (read past the plane: ASan). Every ISA this machine runs
 * (the AVX-512 kernel's 16-column blocks: widths past 16 and 32, at both strides).
 * The flat kernel for planes narrower than 8 (7x7) on every such plane up to 64 outputs. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/cpu/conv_dw.h"

static float frand(unsigned *s) {
  *s = *s * 1103515245u + 12345u;
  return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* y[oy][ox] = act(bias + sum w[ky][kx] x[oy*s - pt + ky][ox*s - pl + kx] + z), zero outside. */
static float oracle(const kiln__dw_geom *g, const float *x, const float *w, float bias,
                    const float *z, size_t oy, size_t ox, const kiln__epilogue *ep) {
  double acc = bias;
  for (size_t ky = 0; ky < 3; ky++)
    for (size_t kx = 0; kx < 3; kx++) {
      int64_t iy = (int64_t)(oy * g->sh + ky) - (int64_t)g->pt;
      int64_t ix = (int64_t)(ox * g->sw + kx) - (int64_t)g->pl;
      if (iy >= 0 && iy < (int64_t)g->h && ix >= 0 && ix < (int64_t)g->w)
        acc += (double)w[ky * 3 + kx] * x[iy * (int64_t)g->w + ix];
    }
  if (z) acc += z[oy * g->ow + ox];
  float v = (float)acc;
  if (ep->act == KILN__ACT_RELU) v = v > 0 ? v : 0;
  if (ep->act == KILN__ACT_CLIP) v = v < ep->lo ? ep->lo : v > ep->hi ? ep->hi : v;
  if (ep->act == KILN__ACT_LEAKYRELU) v = v < 0 ? v * ep->lo : v;
  return v;
}

/* The epilogues every case runs: none, Relu, Clip, LeakyRelu (which reads the vector math). */
#define N_EPS 4
static void test_epilogues(kiln__epilogue eps[N_EPS]) {
  const kiln__vmath *vm = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__vmath_select(&vm, &err), KILN_OK);
  eps[0] = (kiln__epilogue){.act = KILN__ACT_NONE};
  eps[1] = (kiln__epilogue){.act = KILN__ACT_RELU};
  eps[2] = (kiln__epilogue){.act = KILN__ACT_CLIP, .lo = 0.0f, .hi = 0.5f};
  eps[3] = (kiln__epilogue){.act = KILN__ACT_LEAKYRELU, .lo = 0.1f, .vm = vm};
}

static bool close_to(float y, float want) {
  return fabsf(y - want) <= 1e-5f * (1.0f + fabsf(want));
}

/* One plane with each epilogue; mode 0 no residual, 1 a separate residual, 2 residual == y. pf:
   the geometry's prefetch hint (stride 2 prefetches one band ahead, past the plane's end in its
   last band: the addresses are never read). */
static void check_pf(kiln__isa isa, size_t h, size_t w, size_t s, size_t pt, size_t pl, size_t pb,
                     size_t pr, bool pf) {
  kiln__dw_geom g = {.h = h, .w = w, .kh = 3, .kw = 3, .sh = s, .sw = s, .pt = pt, .pl = pl,
                     .prefetch = pf};
  if (h + pt + pb < 3 || w + pl + pr < 3) return;
  g.oh = (h + pt + pb - 3) / s + 1;
  g.ow = (w + pl + pr - 3) / s + 1;
  if (!kiln__dwconv_fits(&g)) return;
  size_t in = h * w, out = g.oh * g.ow;
  /* Exactly sized buffers: a read or write past the plane is an ASan error. */
  float *x = malloc(in * sizeof *x), *y = malloc(out * sizeof *y), *z = malloc(out * sizeof *z);
  float *want = malloc(out * sizeof *want);
  assert_non_null(x), assert_non_null(y), assert_non_null(z), assert_non_null(want);
  unsigned seed = (unsigned)(h * 131 + w * 7 + s * 3 + pt + pl * 5 + pb * 11 + pr * 13);
  float wt[9];
  for (size_t i = 0; i < in; i++) x[i] = frand(&seed) * 3.0f;
  for (size_t i = 0; i < 9; i++) wt[i] = frand(&seed);
  float bias = frand(&seed);
  kiln__epilogue eps[N_EPS];
  test_epilogues(eps);
  for (size_t e = 0; e < N_EPS; e++)
    for (int mode = 0; mode < 3; mode++) {
      for (size_t i = 0; i < out; i++) z[i] = frand(&seed);
      const float *zz = mode == 0 ? NULL : z;
      for (size_t oy = 0; oy < g.oh; oy++)
        for (size_t ox = 0; ox < g.ow; ox++)
          want[oy * g.ow + ox] = oracle(&g, x, wt, bias, zz, oy, ox, &eps[e]);
      float *dst = y;
      if (mode == 2) dst = z; /* y = act(conv + y) */
      else
        for (size_t i = 0; i < out; i++) y[i] = NAN;
      kiln__dwconv_plane_f32(isa, &g, x, wt, bias, zz, dst, &eps[e]);
      for (size_t i = 0; i < out; i++)
        if (!close_to(dst[i], want[i])) {
          fail_msg("isa %s h %zu w %zu s %zu pads %zu %zu %zu %zu act %zu mode %d: y[%zu] = %g, "
                   "want %g", kiln__isa_name(isa), h, w, s, pt, pl, pb, pr, e, mode, i,
                   (double)dst[i], (double)want[i]);
        }
    }
  free(x), free(y), free(z), free(want);
}

static void check(kiln__isa isa, size_t h, size_t w, size_t s, size_t pt, size_t pl, size_t pb,
                  size_t pr) {
  check_pf(isa, h, w, s, pt, pl, pb, pr, false);
}

static void each_isa(void (*fn)(kiln__isa)) {
  for (int i = 0; i < KILN__ISA_COUNT; i++)
    if (kiln__isa_supported((kiln__isa)i)) fn((kiln__isa)i);
}

static void small_planes(kiln__isa isa) {
  for (size_t s = 1; s <= 2; s++)
    for (size_t h = 1; h <= 10; h++)
      for (size_t w = 1; w <= 36; w++)
        for (size_t p = 0; p <= 2; p++) {
          check(isa, h, w, s, p, p, p, p);
          check(isa, h, w, s, p, p, 0, 0);
          check(isa, h, w, s, 0, p, 2 - p, 1);
        }
}

static void every_small_plane(void **st) {
  (void)st;
  each_isa(small_planes);
}

static void stride2_heights(kiln__isa isa) {
  /* Stride 2 runs bands of 7 output rows and a last band of the rows left: output heights 6
     to 15, so every band remainder 0-6, on narrow, one-vector, and multi-vector rows. */
  static const size_t ws[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 34, 35, 48, 67};
  for (size_t h = 11; h <= 30; h++)
    for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
      for (size_t p = 0; p <= 2; p++) {
        check(isa, h, ws[i], 2, p, p, p, p);
        check(isa, h, ws[i], 2, 0, p, 2 - p, 1);
        check_pf(isa, h, ws[i], 2, p, p, p, p, true);
      }
}

static void stride2_band_tails(void **st) {
  (void)st;
  each_isa(stride2_heights);
}

static void large_planes(kiln__isa isa) {
  /* MobileNet's planes and their odd neighbours; a plane wider than the kernel takes. */
  static const size_t sides[][2] = {{7, 7}, {14, 14}, {28, 28}, {29, 27}, {56, 56}, {57, 55},
                                    {112, 112}, {113, 111}, {9, 64}, {6, 65}, {5, 2100}};
  for (size_t i = 0; i < sizeof sides / sizeof sides[0]; i++)
    for (size_t s = 1; s <= 2; s++)
      for (int pf = 0; pf < 2; pf++) {
        check_pf(isa, sides[i][0], sides[i][1], s, 1, 1, 1, 1, pf);
        check_pf(isa, sides[i][0], sides[i][1], s, 0, 0, 1, 1, pf);
        check_pf(isa, sides[i][0], sides[i][1], s, 2, 2, 0, 0, pf);
        check_pf(isa, sides[i][0], sides[i][1], s, 1, 0, 0, 2, pf);
      }
}

static void mobilenet_planes(void **st) {
  (void)st;
  each_isa(large_planes);
}

#if defined(__x86_64__) || defined(__i386__)
/* A kernel that takes `count` planes at once (kiln__dw3x3_flat_avx2, kiln__dw3x3_c16_avx512)
   on geometry g: exactly sized buffers (the last plane ends at its buffer's end), with or
   without bias, each epilogue, no residual / a separate one / the residual being y. */
static void check_planes(kiln__dw3x3_planes_fn *fn, const char *name, const kiln__dw_geom *g, size_t count,
                         bool with_bias) {
  size_t p = g->h * g->w, op = g->oh * g->ow, n = p * count, on = op * count;
  float *x = malloc(n * sizeof *x), *y = malloc(on * sizeof *y), *z = malloc(on * sizeof *z);
  float *want = malloc(on * sizeof *want), *wt = malloc(9 * count * sizeof *wt);
  float *bias = malloc(count * sizeof *bias);
  unsigned seed = (unsigned)(g->h * 31 + g->w * 7 + count * 3 + with_bias + g->sh * 17 +
                             g->pt * 5 + g->pl * 11 + g->oh * 13 + g->ow);
  for (size_t i = 0; i < n; i++) x[i] = frand(&seed) * 3.0f;
  for (size_t i = 0; i < 9 * count; i++) wt[i] = frand(&seed);
  for (size_t i = 0; i < count; i++) bias[i] = frand(&seed);
  kiln__epilogue eps[N_EPS];
  test_epilogues(eps);
  for (size_t e = 0; e < N_EPS; e++)
    for (int mode = 0; mode < 3; mode++) {
      for (size_t i = 0; i < on; i++) z[i] = frand(&seed);
      const float *zz = mode == 0 ? NULL : z;
      for (size_t c = 0; c < count; c++)
        for (size_t oy = 0; oy < g->oh; oy++)
          for (size_t ox = 0; ox < g->ow; ox++)
            want[c * op + oy * g->ow + ox] =
                oracle(g, x + c * p, wt + 9 * c, with_bias ? bias[c] : 0.0f,
                       zz ? zz + c * op : NULL, oy, ox, &eps[e]);
      float *dst = mode == 2 ? z : y;
      if (mode != 2)
        for (size_t i = 0; i < on; i++) y[i] = NAN;
      fn(g, count, x, p, wt, with_bias ? bias : NULL, zz, dst, op, &eps[e]);
      for (size_t i = 0; i < on; i++)
        if (!close_to(dst[i], want[i]))
          fail_msg("%s h %zu w %zu s %zu pads %zu %zu out %zu x %zu count %zu bias %d act %zu "
                   "mode %d: y[%zu] = %g, want %g",
                   name, g->h, g->w, g->sh, g->pt, g->pl, g->oh, g->ow, count, with_bias, e, mode,
                   i, (double)dst[i], (double)want[i]);
    }
  free(x), free(y), free(z), free(want), free(wt), free(bias);
}

/* The flat kernel for planes narrower than 8 at stride 1 (kiln__dw3x3_flat_avx2). */
static void check_flat(size_t h, size_t w, size_t count, bool with_bias) {
  kiln__dw_geom g = {.h = h, .w = w, .oh = h, .ow = w, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
                     .pt = 1, .pl = 1};
  if (kiln__dw3x3_flat_fits(&g)) check_planes(kiln__dw3x3_flat_avx2, "flat", &g, count, with_bias);
}

/* The 16-channel kernel for small planes (kiln__dw3x3_c16_avx512): strides 1 and 2, pads 0-2 on
   each side. */
static void check_c16(size_t h, size_t w, size_t s, size_t pt, size_t pl, size_t pb, size_t pr,
                      size_t count) {
  kiln__dw_geom g = {.h = h, .w = w, .kh = 3, .kw = 3, .sh = s, .sw = s, .pt = pt, .pl = pl};
  if (h + pt + pb < 3 || w + pl + pr < 3) return;
  g.oh = (h + pt + pb - 3) / s + 1;
  g.ow = (w + pl + pr - 3) / s + 1;
  if (kiln__dw3x3_c16_fits(&g))
    check_planes(kiln__dw3x3_c16_avx512, "c16", &g, count, count % 3 != 1);
}

static void c16_small_planes(void **st) {
  (void)st;
  if (!kiln__isa_supported(KILN__ISA_AVX512)) return;
  static const size_t counts[] = {1, 7, 16, 21};
  for (size_t h = 1; h <= 16; h += 3)
    for (size_t w = 1; w <= 17; w += 2)
      for (size_t s = 1; s <= 2; s++)
        for (size_t i = 0; i < 4; i++) {
          check_c16(h, w, s, 1, 1, 1, 1, counts[i]);
          check_c16(h, w, s, 0, 2, 2, 0, counts[(i + 1) % 4]);
          check_c16(h, w, s, 2, 0, 1, 2, counts[(i + 2) % 4]);
        }
  check_c16(7, 7, 1, 1, 1, 1, 1, 960); /* MobileNet-v2's 7x7 and 14 -> 7 */
  check_c16(14, 14, 2, 0, 0, 1, 1, 48);
  check_c16(14, 14, 2, 1, 1, 1, 1, 576);
  /* and what it declines: 5x5, unequal strides, outputs past its blocks */
  kiln__dw_geom g = {.h = 7, .w = 7, .oh = 7, .ow = 7, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
                     .pt = 1, .pl = 1};
  assert_true(kiln__dw3x3_c16_fits(&g));
  g.kh = g.kw = 5;
  assert_false(kiln__dw3x3_c16_fits(&g));
  g = (kiln__dw_geom){.h = 14, .w = 14, .oh = 14, .ow = 7, .kh = 3, .kw = 3, .sh = 1, .sw = 2,
                      .pt = 1, .pl = 1};
  assert_false(kiln__dw3x3_c16_fits(&g));
  g = (kiln__dw_geom){.h = 56, .w = 56, .oh = 56, .ow = 56, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
                      .pt = 1, .pl = 1};
  assert_false(kiln__dw3x3_c16_fits(&g));
}

static void flat_small_planes(void **st) {
  (void)st;
  if (!kiln__isa_supported(KILN__ISA_AVX2)) return;
  for (size_t h = 1; h <= 12; h++)
    for (size_t w = 1; w <= 7; w++)
      for (size_t count = 1; count <= 8; count += 3) check_flat(h, w, count, count != 4);
  /* and the geometries it declines: stride 2, other pads, 8 wide, over 64 outputs */
  kiln__dw_geom g = {.h = 7, .w = 7, .oh = 7, .ow = 7, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
                     .pt = 1, .pl = 1};
  assert_true(kiln__dw3x3_flat_fits(&g));
  g.sh = g.sw = 2, g.oh = g.ow = 4;
  assert_false(kiln__dw3x3_flat_fits(&g));
  g = (kiln__dw_geom){.h = 7, .w = 7, .oh = 5, .ow = 5, .kh = 3, .kw = 3, .sh = 1, .sw = 1};
  assert_false(kiln__dw3x3_flat_fits(&g));
  g = (kiln__dw_geom){.h = 8, .w = 8, .oh = 8, .ow = 8, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
                      .pt = 1, .pl = 1};
  assert_false(kiln__dw3x3_flat_fits(&g));
  g = (kiln__dw_geom){.h = 10, .w = 7, .oh = 10, .ow = 7, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
                      .pt = 1, .pl = 1};
  assert_false(kiln__dw3x3_flat_fits(&g));
}
#endif

int main(void) {
  const struct CMUnitTest tests[] = {
#if defined(__x86_64__) || defined(__i386__)
      cmocka_unit_test(flat_small_planes),
      cmocka_unit_test(c16_small_planes),
#endif
      cmocka_unit_test(every_small_plane),
      cmocka_unit_test(stride2_band_tails),
      cmocka_unit_test(mobilenet_planes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
