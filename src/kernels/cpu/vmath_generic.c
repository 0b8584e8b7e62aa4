/* The portable vector-math table: the scalar forms of vmath_scalar.h in plain loops (the
   compiler vectorizes what it can for the baseline ISA). */
#include "kernels/cpu/vmath.h"
#include "kernels/cpu/vmath_scalar.h"

#define UNARY(name, expr)                                      \
  static void name(const float *x, float *y, size_t n) {      \
    for (size_t i = 0; i < n; i++) {                           \
      float v = x[i];                                          \
      y[i] = (expr);                                           \
    }                                                          \
  }
UNARY(v_exp, kiln__exp1(v))
UNARY(v_tanh, kiln__tanh1(v))
UNARY(v_sigmoid, kiln__sigmoid1(v))
UNARY(v_erf, kiln__erf1(v))
UNARY(v_gelu, kiln__gelu1(v))
UNARY(v_gelu_tanh, kiln__gelu_tanh1(v))
UNARY(v_relu, v < 0.0f ? 0.0f : v) /* NaN stays NaN */
#undef UNARY

#define BINARY(name, OP)                                                                     \
  static void name(const float *a, size_t sa, const float *b, size_t sb, float *y, size_t n) { \
    if (sa && sb)                                                                            \
      for (size_t i = 0; i < n; i++) y[i] = a[i] OP b[i];                                    \
    else if (sa) {                                                                           \
      float s = b[0];                                                                        \
      for (size_t i = 0; i < n; i++) y[i] = a[i] OP s;                                       \
    } else if (sb) {                                                                         \
      float s = a[0];                                                                        \
      for (size_t i = 0; i < n; i++) y[i] = s OP b[i];                                       \
    } else                                                                                   \
      for (size_t i = 0; i < n; i++) y[i] = a[0] OP b[0];                                    \
  }
BINARY(v_add, +)
BINARY(v_sub, -)
BINARY(v_mul, *)
BINARY(v_div, /)
#undef BINARY

/* Eight partial results so the loops vectorize and the sums stay pairwise-ish. */
static float max8(const float *x, size_t n) {
  float l[8];
  for (int q = 0; q < 8; q++) l[q] = -INFINITY;
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int q = 0; q < 8; q++) l[q] = x[k + q] > l[q] ? x[k + q] : l[q];
  for (; k < n; k++) l[0] = x[k] > l[0] ? x[k] : l[0];
  float m = l[0];
  for (int q = 1; q < 8; q++) m = l[q] > m ? l[q] : m;
  return m;
}

static float sum8(const float *l) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

static void softmax_row(const float *x, float *y, size_t n) {
  float m = max8(x, n);
  if (m == -INFINITY) m = 0; /* an all -inf row gives NaN, as the reference does */
  float l[8] = {0};
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int q = 0; q < 8; q++) {
      float e = kiln__exp1(x[k + q] - m);
      y[k + q] = e;
      l[q] += e;
    }
  for (; k < n; k++) {
    float e = kiln__exp1(x[k] - m);
    y[k] = e;
    l[0] += e;
  }
  float r = 1.0f / sum8(l);
  for (k = 0; k < n; k++) y[k] *= r;
}

static float softmax_step(float *x, size_t n, float *run_max) {
  float m = max8(x, n);
  m = m > *run_max ? m : *run_max;
  *run_max = m;
  float l[8] = {0};
  if (m == -INFINITY) {
    for (size_t k = 0; k < n; k++) x[k] = 0.0f;
    return 0.0f;
  }
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int q = 0; q < 8; q++) {
      float e = kiln__exp1(x[k + q] - m);
      x[k + q] = e;
      l[q] += e;
    }
  for (; k < n; k++) {
    float e = kiln__exp1(x[k] - m);
    x[k] = e;
    l[0] += e;
  }
  return sum8(l);
}

static void layernorm_row(const float *x, float *y, size_t n, const float *scale, const float *bias,
                          float eps, float *mean, float *inv) {
  float l[8] = {0};
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int q = 0; q < 8; q++) l[q] += x[k + q];
  for (; k < n; k++) l[0] += x[k];
  float mu = sum8(l) / (float)n;
  for (int q = 0; q < 8; q++) l[q] = 0;
  for (k = 0; k + 8 <= n; k += 8)
    for (int q = 0; q < 8; q++) l[q] += (x[k + q] - mu) * (x[k + q] - mu);
  for (; k < n; k++) l[0] += (x[k] - mu) * (x[k] - mu);
  float iv = 1.0f / sqrtf(sum8(l) / (float)n + eps);
  if (bias)
    for (k = 0; k < n; k++) y[k] = (x[k] - mu) * iv * scale[k] + bias[k];
  else
    for (k = 0; k < n; k++) y[k] = (x[k] - mu) * iv * scale[k];
  *mean = mu;
  *inv = iv;
}

const kiln__vmath kiln__vmath_generic = {
    .isa = "generic",
    .exp = v_exp,
    .tanh = v_tanh,
    .sigmoid = v_sigmoid,
    .erf = v_erf,
    .gelu = v_gelu,
    .gelu_tanh = v_gelu_tanh,
    .relu = v_relu,
    .binary = {v_add, v_sub, v_mul, v_div},
    .softmax_row = softmax_row,
    .softmax_step = softmax_step,
    .layernorm_row = layernorm_row,
};
