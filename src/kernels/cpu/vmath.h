/* Vector math for float32 and the row kernels built on it, one table per ISA.
 *
 * A kernel picks a table at prepare time with kiln__vmath_select() (CPU features, or the KILN_ISA
 * environment variable: "avx2" or "generic"; "avx512" means the best this file has, AVX2) and keeps
 * the pointer in its node state. Tables are static and constant: no global mutable state.
 *
 * Contract of every function: flat arguments, no allocation, no threads, no errors. Unary and
 * binary functions accept y == x (in place); otherwise arrays must not overlap. NaN inputs give
 * NaN. The "generic" table runs the same algorithms in portable C, so both ISAs share the bounds.
 *
 * Measured error (tests/test_cpu_vec.c, 2^22 evenly spaced points over the range shown plus 2^22
 * geometrically spaced ones in +-[1e-30, 1], against libm in double; both ISAs; the test asserts
 * these bounds; measured maxima on 2026-11-27 in brackets):
 *   exp      x in [-87.3, 88.7]: relative error <= 1.5e-7 [1.19e-7]; x < -87.34 gives 0 (the
 *            exact value is below FLT_MIN), x > 88.72 gives +inf.
 *   tanh     relative error <= 2.0e-7 [1.40e-7]; |x| >= 9 gives exactly +-1.
 *   sigmoid  x in [-87, 40]: relative error <= 2.5e-7 [1.88e-7]; below -87 it underflows to 0
 *            (absolute error < 1.2e-38).
 *   erf      relative error <= 5.0e-7 [4.46e-7 generic, 3.33e-7 avx2]; |x| >= 4 gives +-1.
 *   gelu     0.5 x (1 + erf(x / sqrt 2)): x >= 0 relative error <= 3e-7 [2.53e-7]; x < 0, where
 *            1 + erf cancels, |error| <= 2.5e-7 |x| [2.24e-7 |x|].
 *   gelu_tanh 0.5 x (1 + tanh(0.79788456 (x + 0.044715 x^3))): x >= 0 relative error <= 2e-7
 *            [1.38e-7]; x < 0, |error| <= 1e-7 |x| [5.86e-8 |x|].
 *   softmax_row, softmax_step, layernorm_row: float accumulation in 8 or 16 lanes; checked against the
 *            reference backend (double accumulation) with rtol 1e-5 in the tests. */
#ifndef KILN_KERNELS_CPU_VMATH_H
#define KILN_KERNELS_CPU_VMATH_H

#include "core/common.h"

typedef void (*kiln__vmath_unary)(const float *x, float *y, size_t n);
/* y[i] = a[i*sa] op b[i*sb] with sa, sb in {0, 1} (0: a scalar operand, broadcast). */
typedef void (*kiln__vmath_binary)(const float *a, size_t sa, const float *b, size_t sb, float *y,
                                   size_t n);

enum { KILN__VBIN_ADD, KILN__VBIN_SUB, KILN__VBIN_MUL, KILN__VBIN_DIV, KILN__VBIN_COUNT };

typedef struct kiln__vmath {
  const char *isa; /* "avx2", "generic" */
  kiln__vmath_unary exp, tanh, sigmoid, erf, gelu, gelu_tanh, relu;
  kiln__vmath_binary binary[KILN__VBIN_COUNT];
  /* y = softmax(x) over one contiguous row of n > 0 elements (x == y allowed). */
  void (*softmax_row)(const float *x, float *y, size_t n);
  /* One key block of an online softmax (fused Attention), in place over n > 0 scores:
     m = max(*run_max, max(x)); x[i] = exp(x[i] - m); *run_max = m; returns the sum of the new x.
     While m is -inf (every score so far masked) x becomes zeros and the sum is 0. */
  float (*softmax_step)(float *x, size_t n, float *run_max);
  /* y = (x - mean) / sqrt(var + eps) * scale + bias over one row of n > 0 elements; bias may be
     NULL (zero). Writes the row's mean and 1/sqrt(var + eps) to *mean and *inv. */
  void (*layernorm_row)(const float *x, float *y, size_t n, const float *scale, const float *bias,
                        float eps, float *mean, float *inv);
} kiln__vmath;

extern const kiln__vmath kiln__vmath_generic;
#if defined(__x86_64__) || defined(__i386__)
#define KILN__VMATH_HAVE_AVX2 1
extern const kiln__vmath kiln__vmath_avx2;
/* The AVX2 table with erf and GELU on 16 lanes (the same results), where AVX-512F is present. */
extern const kiln__vmath kiln__vmath_avx512;
#endif

/* Activations of the fused linear ops (docs/FUSED_OPS.md), shared by the SGEMM epilogue and the
   direct convolutions. RELU and CLIP are cheap enough for a microkernel's registers; the others
   run through kiln__act_apply on each finished row while it is still in L1. */
typedef enum kiln__act {
  KILN__ACT_NONE = 0,
  KILN__ACT_RELU,
  KILN__ACT_CLIP,        /* min(max(x, p0), p1) */
  KILN__ACT_SIGMOID,
  KILN__ACT_TANH,
  KILN__ACT_HARDSIGMOID, /* max(0, min(1, p0 x + p1)) */
  KILN__ACT_HARDSWISH,   /* x max(0, min(1, x / 6 + 1/2)) */
  KILN__ACT_LEAKYRELU,   /* x >= 0 ? x : p0 x */
  KILN__ACT_GELU,        /* exact, erf form */
  KILN__ACT_SILU,        /* x sigmoid(x) */
  KILN__ACT_GELU_TANH,   /* tanh approximation ("GeluTanh") */
} kiln__act;

/* The activation named `name` ("" = NONE, else the ONNX op name, as in the `activation`
   attribute); false for a name not in the table. */
bool kiln__act_parse(const char *name, kiln__act *out);
/* y[i] = act(y[i]) for n elements, p0 and p1 the parameters above; v supplies the vector math
   (may be NULL only for NONE, RELU, CLIP, HARDSIGMOID, HARDSWISH and LEAKYRELU). */
void kiln__act_apply(const kiln__vmath *v, kiln__act act, float p0, float p1, float *y, size_t n);

/* A fused node's `activation` and `activation_params` attributes (defaults as the reference
   kernels: Clip -FLT_MAX, FLT_MAX; HardSigmoid 0.2, 0.5; LeakyRelu 0.01). False for an unknown
   name. */
struct kiln__node;
bool kiln__act_from_node(const struct kiln__node *n, kiln__act *act, float *p0, float *p1);
/* The same from the attributes `prefix`activation and `prefix`activation_params (DwPwConv's
   second activation is pw_activation). */
bool kiln__act_from_attrs(const struct kiln__node *n, const char *prefix, kiln__act *act,
                          float *p0, float *p1);

/* The table for this machine, or the one KILN_ISA asks for. Fails (UNSUPPORTED or
   INVALID_ARGUMENT) when KILN_ISA names an ISA this CPU cannot run or an unknown one. */
kiln_status kiln__vmath_select(const kiln__vmath **out, kiln_error *err);

#endif
