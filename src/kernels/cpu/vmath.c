/* Choosing the vector-math table: CPU features, or KILN_ISA for tests and comparisons. Read at
   prepare time (model load), never cached in a global. */
#include "kernels/cpu/vmath.h"

#include <float.h>
#include <stdio.h>
#include <stdlib.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "ir/graph.h"

static bool cpu_has_avx2(void) {
#ifdef KILN__VMATH_HAVE_AVX2
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

kiln_status kiln__vmath_select(const kiln__vmath **out, kiln_error *err) {
  const char *want = getenv("KILN_ISA");
  bool avx2 = cpu_has_avx2();
  (void)avx2; /* read only where there is an AVX2 table */
  /* The integer GEMM's ISA names (qgemm.h): the float tables of the same width. */
  if (want && !strcmp(want, "avxvnni")) want = "avx2";
  if (want && !strcmp(want, "avx512vnni")) want = "avx512";
  *out = &kiln__vmath_generic;
  if (!want || !*want || !strcmp(want, "avx512")) {
    /* The best table the CPU runs (avx512: AVX2's with erf and GELU 16 lanes wide). */
#ifdef KILN__VMATH_HAVE_AVX2
    if (avx2) *out = __builtin_cpu_supports("avx512f") ? &kiln__vmath_avx512 : &kiln__vmath_avx2;
#endif
    return KILN_OK;
  }
  if (!strcmp(want, "generic")) return KILN_OK;
  if (!strcmp(want, "neon")) {
#ifdef __aarch64__
    return KILN_OK; /* the portable table, which the compiler vectorizes with NEON */
#else
    return kiln__fail(err, KILN_UNSUPPORTED, "KILN_ISA=neon: this CPU does not support it");
#endif
  }
  if (!strcmp(want, "avx2")) {
#ifdef KILN__VMATH_HAVE_AVX2
    if (avx2) {
      *out = &kiln__vmath_avx2;
      return KILN_OK;
    }
#endif
    return kiln__fail(err, KILN_UNSUPPORTED, "KILN_ISA=avx2, but this CPU has no AVX2 and FMA");
  }
  return kiln__fail(err, KILN_INVALID_ARGUMENT,
                    "KILN_ISA=%s: expected avx512, avx512vnni, avxvnni, avx2, neon or generic", want);
}

/* ---- activations of the fused ops ------------------------------------------------------------ */

bool kiln__act_parse(const char *name, kiln__act *out) {
  static const struct { const char *name; kiln__act act; } names[] = {
      {"", KILN__ACT_NONE},           {"Relu", KILN__ACT_RELU},
      {"Clip", KILN__ACT_CLIP},       {"Sigmoid", KILN__ACT_SIGMOID},
      {"Tanh", KILN__ACT_TANH},       {"HardSigmoid", KILN__ACT_HARDSIGMOID},
      {"HardSwish", KILN__ACT_HARDSWISH}, {"LeakyRelu", KILN__ACT_LEAKYRELU},
      {"Gelu", KILN__ACT_GELU},       {"Silu", KILN__ACT_SILU},
      {"GeluTanh", KILN__ACT_GELU_TANH},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(names); i++)
    if (!strcmp(name, names[i].name)) {
      *out = names[i].act;
      return true;
    }
  return false;
}

/* y = clamp(p0 y + p1, 0, 1) (HardSigmoid) or y clamp(y / 6 + 1/2, 0, 1) (HardSwish), NaN kept.
   Written out with SSE2 because gcc leaves the plain loop scalar: with trapping math it will not
   if-convert two clamps in a row, and the scalar compares and branches were 28% of PP-OCR rec's
   time once its HardSwish was fused into the convs. Same operations, same results. */
static void hard_act(bool swish, float p0, float p1, float *y, size_t n) {
  size_t i = 0;
#if defined(__SSE2__)
  const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.0f), six = _mm_set1_ps(6.0f),
               half = _mm_set1_ps(0.5f), a = _mm_set1_ps(p0), b = _mm_set1_ps(p1);
  for (; i + 4 <= n; i += 4) {
    __m128 x = _mm_loadu_ps(y + i);
    __m128 t = swish ? _mm_add_ps(_mm_div_ps(x, six), half) : _mm_add_ps(_mm_mul_ps(a, x), b);
    t = _mm_andnot_ps(_mm_cmplt_ps(t, zero), t); /* t < 0 -> 0; NaN compares false */
    __m128 hi = _mm_cmpgt_ps(t, one);
    t = _mm_or_ps(_mm_and_ps(hi, one), _mm_andnot_ps(hi, t));
    _mm_storeu_ps(y + i, swish ? _mm_mul_ps(x, t) : t);
  }
#endif
  for (; i < n; i++) {
    float t = swish ? y[i] / 6.0f + 0.5f : p0 * y[i] + p1;
    t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
    y[i] = swish ? y[i] * t : t;
  }
}

/* The simple ones are plain loops the compiler vectorizes; comparisons are written so that NaN
   propagates, as in the reference kernels. */
void kiln__act_apply(const kiln__vmath *v, kiln__act act, float p0, float p1, float *y,
                     size_t n) {
  switch (act) {
  case KILN__ACT_NONE:
    return;
  case KILN__ACT_RELU:
    for (size_t i = 0; i < n; i++) y[i] = y[i] < 0.0f ? 0.0f : y[i];
    return;
  case KILN__ACT_CLIP:
    for (size_t i = 0; i < n; i++) { /* min after max, as ONNX: min > max gives max */
      float t = y[i] < p0 ? p0 : y[i];
      y[i] = t > p1 ? p1 : t;
    }
    return;
  case KILN__ACT_HARDSIGMOID:
  case KILN__ACT_HARDSWISH:
    hard_act(act == KILN__ACT_HARDSWISH, p0, p1, y, n);
    return;
  case KILN__ACT_LEAKYRELU:
    for (size_t i = 0; i < n; i++) y[i] = y[i] < 0.0f ? p0 * y[i] : y[i];
    return;
  case KILN__ACT_SIGMOID:
    v->sigmoid(y, y, n);
    return;
  case KILN__ACT_TANH:
    v->tanh(y, y, n);
    return;
  case KILN__ACT_GELU_TANH:
    v->gelu_tanh(y, y, n);
    return;
  case KILN__ACT_GELU:
    v->gelu(y, y, n);
    return;
  case KILN__ACT_SILU: {
    float s[256];
    for (size_t i = 0; i < n; i += 256) {
      size_t m = KILN__MIN((size_t)256, n - i);
      v->sigmoid(y + i, s, m);
      for (size_t j = 0; j < m; j++) y[i + j] *= s[j];
    }
    return;
  }
  }
}

bool kiln__act_from_node(const kiln__node *n, kiln__act *act, float *p0, float *p1) {
  return kiln__act_from_attrs(n, "", act, p0, p1);
}

bool kiln__act_from_attrs(const kiln__node *n, const char *prefix, kiln__act *act, float *p0,
                          float *p1) {
  char name[64], params[64];
  snprintf(name, sizeof name, "%sactivation", prefix);
  snprintf(params, sizeof params, "%sactivation_params", prefix);
  if (!kiln__act_parse(kiln__attr_str(n, name, ""), act)) return false;
  const float *p = NULL;
  size_t np = kiln__attr_floats(n, params, &p);
  float def[2] = {0.0f, 0.0f};
  size_t used = 0;
  if (*act == KILN__ACT_CLIP) def[0] = -FLT_MAX, def[1] = FLT_MAX, used = 2;
  else if (*act == KILN__ACT_HARDSIGMOID) def[0] = 0.2f, def[1] = 0.5f, used = 2;
  else if (*act == KILN__ACT_LEAKYRELU) def[0] = 0.01f, used = 1;
  *p0 = np > 0 && used > 0 ? p[0] : def[0];
  *p1 = np > 1 && used > 1 ? p[1] : def[1];
  return true;
}
