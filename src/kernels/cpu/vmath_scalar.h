/* Scalar float32 forms of the vector math in vmath.h: the generic table's element functions and
 * the reference the AVX2 code transcribes lane by lane (same constants, same order of
 * operations), so both ISAs share one error analysis. */
#ifndef KILN_KERNELS_CPU_VMATH_SCALAR_H
#define KILN_KERNELS_CPU_VMATH_SCALAR_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The AVX2 file defines this as fmaf (one instruction there); portable code must not call fmaf,
   which is a slow library routine on CPUs without FMA. */
#ifndef KILN__FMA
#define KILN__FMA(a, b, c) ((a) * (b) + (c))
#endif
/* Round to nearest (the default mode) without a libm call: valid for |v| < 2^22. */
#define KILN__ROUND_MAGIC 12582912.0f

/* exp: x = n ln2 + r, |r| <= ln2/2, exp(r) by Cephes' degree-6 polynomial, 2^n via the exponent
   bits. Cody-Waite split of ln2 keeps r exact to float precision. */
#define KILN__EXP_HI 88.7228317f
#define KILN__EXP_LO -87.3365479f /* below: 0; the exact value is subnormal */
#define KILN__LOG2E 1.44269504088896341f
#define KILN__LN2_HI 0.693359375f
#define KILN__LN2_LO -2.12194440e-4f
#define KILN__EXP_P0 1.9875691500e-4f
#define KILN__EXP_P1 1.3981999507e-3f
#define KILN__EXP_P2 8.3334519073e-3f
#define KILN__EXP_P3 4.1665795894e-2f
#define KILN__EXP_P4 1.6666665459e-1f
#define KILN__EXP_P5 5.0000001201e-1f

static inline float kiln__exp1(float x) {
  if (x != x) return x;
  if (x > KILN__EXP_HI) return INFINITY;
  if (x < KILN__EXP_LO) return 0.0f;
  float n = (x * KILN__LOG2E + KILN__ROUND_MAGIC) - KILN__ROUND_MAGIC;
  float r = KILN__FMA(n, -KILN__LN2_HI, x);
  r = KILN__FMA(n, -KILN__LN2_LO, r);
  float p = KILN__EXP_P0;
  p = KILN__FMA(p, r, KILN__EXP_P1);
  p = KILN__FMA(p, r, KILN__EXP_P2);
  p = KILN__FMA(p, r, KILN__EXP_P3);
  p = KILN__FMA(p, r, KILN__EXP_P4);
  p = KILN__FMA(p, r, KILN__EXP_P5);
  p = KILN__FMA(p, r * r, r + 1.0f);
  /* n is in [-126, 128]: 2^n as two factors so n = 128 does not overflow the exponent field. */
  int32_t ni = (int32_t)n, h = ni / 2;
  uint32_t b1 = (uint32_t)(h + 127) << 23, b2 = (uint32_t)(ni - h + 127) << 23;
  float s1, s2;
  memcpy(&s1, &b1, 4);
  memcpy(&s2, &b2, 4);
  return p * s1 * s2;
}

/* tanh: |x| < 0.625 by Cephes' odd polynomial (no cancellation near 0); above, from exp:
   1 - 2 / (exp(2|x|) + 1) (the result is >= 0.55 there, so the subtraction loses nothing). */
#define KILN__TANH_SMALL 0.625f
#define KILN__TANH_BIG 9.0f
#define KILN__TANH_P0 -5.70498872745e-3f
#define KILN__TANH_P1 2.06390887954e-2f
#define KILN__TANH_P2 -5.37397155531e-2f
#define KILN__TANH_P3 1.33314422036e-1f
#define KILN__TANH_P4 -3.33332819422e-1f

static inline float kiln__tanh1(float x) {
  if (x != x) return x;
  float a = fabsf(x), r;
  if (a < KILN__TANH_SMALL) {
    float z = x * x, p = KILN__TANH_P0;
    p = KILN__FMA(p, z, KILN__TANH_P1);
    p = KILN__FMA(p, z, KILN__TANH_P2);
    p = KILN__FMA(p, z, KILN__TANH_P3);
    p = KILN__FMA(p, z, KILN__TANH_P4);
    return KILN__FMA(p * z, x, x);
  }
  if (a >= KILN__TANH_BIG) r = 1.0f;
  else r = 1.0f - 2.0f / (kiln__exp1(2.0f * a) + 1.0f);
  return x < 0 ? -r : r;
}

static inline float kiln__sigmoid1(float x) {
  if (x != x) return x;
  return 1.0f / (1.0f + kiln__exp1(-x));
}

/* erf: x P(x^2) / Q(x^2) on [-4, 4] (the rational approximation of Eigen and XLA); outside,
   erf is +-1 in float. */
#define KILN__ERF_A1 -1.60960333262415e-02f
#define KILN__ERF_A3 -2.95459980854025e-03f
#define KILN__ERF_A5 -7.34990630326855e-04f
#define KILN__ERF_A7 -5.69250639462346e-05f
#define KILN__ERF_A9 -2.10102402082508e-06f
#define KILN__ERF_A11 2.77068142495902e-08f
#define KILN__ERF_A13 -2.72614225801306e-10f
#define KILN__ERF_B0 -1.42647390514189e-02f
#define KILN__ERF_B2 -7.37332916720468e-03f
#define KILN__ERF_B4 -1.68282697438203e-03f
#define KILN__ERF_B6 -2.13374055278905e-04f
#define KILN__ERF_B8 -1.45660718464996e-05f

static inline float kiln__erf1(float x) {
  if (x != x) return x;
  float c = x > 4.0f ? 4.0f : x < -4.0f ? -4.0f : x;
  float z = c * c, p = KILN__ERF_A13;
  p = KILN__FMA(p, z, KILN__ERF_A11);
  p = KILN__FMA(p, z, KILN__ERF_A9);
  p = KILN__FMA(p, z, KILN__ERF_A7);
  p = KILN__FMA(p, z, KILN__ERF_A5);
  p = KILN__FMA(p, z, KILN__ERF_A3);
  p = KILN__FMA(p, z, KILN__ERF_A1);
  float q = KILN__ERF_B8;
  q = KILN__FMA(q, z, KILN__ERF_B6);
  q = KILN__FMA(q, z, KILN__ERF_B4);
  q = KILN__FMA(q, z, KILN__ERF_B2);
  q = KILN__FMA(q, z, KILN__ERF_B0);
  float r = c * p / q;
  return r > 1.0f ? 1.0f : r < -1.0f ? -1.0f : r;
}

#define KILN__SQRT1_2 0.70710678118654752f
#define KILN__GELU_K 0.7978845608028654f
#define KILN__GELU_C 0.044715f

static inline float kiln__gelu1(float x) {
  return 0.5f * x * (1.0f + kiln__erf1(x * KILN__SQRT1_2));
}

static inline float kiln__gelu_tanh1(float x) {
  float u = KILN__GELU_K * KILN__FMA(KILN__GELU_C * x * x, x, x);
  return 0.5f * x * (1.0f + kiln__tanh1(u));
}

#endif
