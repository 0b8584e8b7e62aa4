/* Reference kernels: Kiln's fused ops (domain ai.kiln), made by the fusion passes. Each computes
   in double what the unfused chain computes op by op, so the fused result is at least as
   accurate; both are float32 in and out.
     LayerNorm(X, gamma?, beta?; epsilon)  over the last axis:
         (x - mean) / sqrt(mean((x - mean)^2) + epsilon) * gamma + beta
         gamma and beta hold 1 or (last dim) elements.
     Gelu(X)  x * 0.5 * (1 + erf(x / sqrt 2)), the exact form. */
#include <math.h>

#include "ir/op.h"

static kiln_status infer_float_same(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  if (x->dtype != KILN_DTYPE_FLOAT)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "%s takes float32, not %s", c->node->op_type,
                      kiln_dtype_name(x->dtype));
  kiln__set_shape(c->out[0], x->dtype, x->rank, x->dims);
  return KILN_OK;
}

/* gamma/beta: NULL, or 1 or `h` float elements. */
static kiln_status check_affine(const kiln__kctx *c, const kiln_tensor *t, int64_t h,
                                const char *what) {
  if (!t) return KILN_OK;
  size_t n = kiln_tensor_count(t);
  if (t->dtype != KILN_DTYPE_FLOAT || t->rank > 1 || (n != 1 && (int64_t)n != h))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "LayerNorm %s must be float32 with 1 or %lld elements", what, (long long)h);
  return KILN_OK;
}

static kiln_status infer_layernorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  if (x->rank < 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "LayerNorm input must have rank >= 1");
  int64_t h = x->dims[x->rank - 1];
  kiln_status st = check_affine(c, c->n_in > 1 ? c->in[1] : NULL, h, "scale");
  if (st == KILN_OK) st = check_affine(c, c->n_in > 2 ? c->in[2] : NULL, h, "bias");
  return st == KILN_OK ? infer_float_same(c) : st;
}

static kiln_status run_layernorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  const kiln_tensor *gt = c->n_in > 1 ? c->in[1] : NULL, *bt = c->n_in > 2 ? c->in[2] : NULL;
  size_t h = x->rank ? (size_t)x->dims[x->rank - 1] : 1;
  size_t rows = h ? kiln_tensor_count(x) / h : 0;
  double eps = kiln__attr_float(c->node, "epsilon", 1e-5f);
  const float *gamma = gt ? gt->data : NULL, *beta = bt ? bt->data : NULL;
  size_t gs = gt && kiln_tensor_count(gt) > 1, bs = bt && kiln_tensor_count(bt) > 1;
  const float *X = x->data;
  float *Y = c->out[0]->data;
  for (size_t r = 0; r < rows; r++) {
    const float *xr = X + r * h;
    float *yr = Y + r * h;
    double mean = 0, var = 0;
    for (size_t i = 0; i < h; i++) mean += xr[i];
    mean /= (double)h;
    for (size_t i = 0; i < h; i++) var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
    double inv = 1.0 / sqrt(var / (double)h + eps);
    for (size_t i = 0; i < h; i++) {
      double v = ((double)xr[i] - mean) * inv;
      if (gamma) v *= gamma[i * gs];
      if (beta) v += beta[i * bs];
      yr[i] = (float)v;
    }
  }
  return KILN_OK;
}

static kiln_status run_gelu(kiln__kctx *c) {
  const float *X = c->in[0]->data;
  float *Y = c->out[0]->data;
  size_t n = kiln_tensor_count(c->in[0]);
  for (size_t i = 0; i < n; i++) {
    double x = X[i];
    Y[i] = (float)(0.5 * x * (1.0 + erf(x * 0.70710678118654752440)));
  }
  return KILN_OK;
}

const kiln__op kiln__ops_fused[] = {
    {"ai.kiln", "LayerNorm", infer_layernorm, run_layernorm, NULL, 0, 1, 3},
    {"ai.kiln", "Gelu", infer_float_same, run_gelu, NULL, KILN__OPF_INPLACE, 1, 1},
    {0},
};
