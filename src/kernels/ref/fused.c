/* Reference kernels: Kiln's fused ops (domain ai.kiln), made by the fusion passes. Each computes
   in double what the unfused chain computes op by op, so the fused result is at least as
   accurate; both are float32 in and out.
     LayerNorm(X, gamma?, beta?; epsilon)  over the last axis:
         (x - mean) / sqrt(mean((x - mean)^2) + epsilon) * gamma + beta
         gamma and beta hold 1 or (last dim) elements.
     Gelu(X)  x * 0.5 * (1 + erf(x / sqrt 2)), the exact form.
   and the rest of docs/FUSED_OPS.md: RMSNorm, FusedConv, FusedGemm, FusedMatMul (the linear op,
   then + Bias, + Z, then the activation, each step rounded to float32 as the unfused ops round it,
   so those fusions are bit-equal) and Attention (online softmax over blocks of K/V). */
#include <float.h>
#include <math.h>
#include <stdio.h>

#include "ir/op.h"
#include "kernels/ref/gemm.h"

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
                      "%s %s must be float32 with 1 or %lld elements", c->node->op_type, what,
                      (long long)h);
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

/* approximate="tanh": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the form GPT-2 style
   models export; computed in double like the exact form. */
static inline double gelu_tanh(double x) {
  return 0.5 * x * (1.0 + tanh(0.79788456080286535588 * (x + 0.044715 * x * x * x)));
}

static kiln_status run_gelu(kiln__kctx *c) {
  const float *X = c->in[0]->data;
  float *Y = c->out[0]->data;
  size_t n = kiln_tensor_count(c->in[0]);
  const char *approx = kiln__attr_str(c->node, "approximate", "none");
  bool tanh_form = !strcmp(approx, "tanh");
  if (!tanh_form && strcmp(approx, "none"))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Gelu: unknown approximate '%s'", approx);
  for (size_t i = 0; i < n; i++) {
    double x = X[i];
    Y[i] = (float)(tanh_form ? gelu_tanh(x) : 0.5 * x * (1.0 + erf(x * 0.70710678118654752440)));
  }
  return KILN_OK;
}

/* ---- RMSNorm --------------------------------------------------------------------------------- */

static kiln_status infer_rmsnorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  if (x->rank < 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "RMSNorm input must have rank >= 1");
  kiln_status st = check_affine(c, c->in[1], x->dims[x->rank - 1], "scale");
  return st == KILN_OK ? infer_float_same(c) : st;
}

static kiln_status run_rmsnorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *st = c->in[1];
  size_t h = (size_t)x->dims[x->rank - 1];
  size_t rows = h ? kiln_tensor_count(x) / h : 0;
  double eps = kiln__attr_float(c->node, "epsilon", 1e-6f);
  const float *scale = st->data, *X = x->data;
  size_t ss = kiln_tensor_count(st) > 1;
  float *Y = c->out[0]->data;
  for (size_t r = 0; r < rows; r++) {
    const float *xr = X + r * h;
    float *yr = Y + r * h;
    double sq = 0;
    for (size_t i = 0; i < h; i++) sq += (double)xr[i] * xr[i];
    double inv = 1.0 / sqrt(sq / (double)h + eps);
    for (size_t i = 0; i < h; i++) yr[i] = (float)((double)xr[i] * inv * scale[i * ss]);
  }
  return KILN_OK;
}

/* ---- the epilogue of the fused linear ops: + Bias[N], + Z (broadcast), activation --------------- */

typedef enum act_kind {
  ACT_NONE, ACT_RELU, ACT_CLIP, ACT_SIGMOID, ACT_TANH, ACT_HARDSIGMOID, ACT_HARDSWISH,
  ACT_LEAKYRELU, ACT_GELU, ACT_SILU, ACT_GELU_TANH,
} act_kind;

typedef struct act {
  act_kind kind;
  float p[2];
} act;

static const struct {
  const char *name;
  act_kind kind;
  int n_params;
  float def[2];
} acts[] = {
    {"", ACT_NONE, 0, {0, 0}},
    {"Relu", ACT_RELU, 0, {0, 0}},
    {"Clip", ACT_CLIP, 2, {-FLT_MAX, FLT_MAX}},
    {"Sigmoid", ACT_SIGMOID, 0, {0, 0}},
    {"Tanh", ACT_TANH, 0, {0, 0}},
    {"HardSigmoid", ACT_HARDSIGMOID, 2, {0.2f, 0.5f}},
    {"HardSwish", ACT_HARDSWISH, 0, {0, 0}},
    {"LeakyRelu", ACT_LEAKYRELU, 1, {0.01f, 0}},
    {"Gelu", ACT_GELU, 0, {0, 0}},
    {"Silu", ACT_SILU, 0, {0, 0}},
    {"GeluTanh", ACT_GELU_TANH, 0, {0, 0}}, /* ai.kiln Gelu with approximate="tanh" */
};

/* The node's `prefix`activation and `prefix`activation_params. */
static kiln_status act_get_named(const kiln__kctx *c, const char *prefix, act *a) {
  char attr[64], params[64];
  snprintf(attr, sizeof attr, "%sactivation", prefix);
  snprintf(params, sizeof params, "%sactivation_params", prefix);
  const char *name = kiln__attr_str(c->node, attr, "");
  const float *p = NULL;
  size_t np = kiln__attr_floats(c->node, params, &p);
  for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
    if (strcmp(name, acts[i].name)) continue;
    a->kind = acts[i].kind;
    for (int k = 0; k < 2; k++) a->p[k] = k < (int)np && k < acts[i].n_params ? p[k] : acts[i].def[k];
    return KILN_OK;
  }
  return kiln__fail(c->err, KILN_UNSUPPORTED, "%s: unknown %s '%s'", c->node->op_type, attr,
                    name);
}

static kiln_status act_get(const kiln__kctx *c, act *a) { return act_get_named(c, "", a); }

/* The formulas and roundings of the reference elementwise kernels, so a fusion is bit-equal to the
   op it absorbed (Gelu as ai.kiln.Gelu, SiLU as Sigmoid then Mul). */
static inline float act_apply(const act *a, float x) {
  switch (a->kind) {
  case ACT_NONE: return x;
  case ACT_RELU: return x < 0 ? 0.0f : x;
  case ACT_CLIP: return x < a->p[0] ? a->p[0] : x > a->p[1] ? a->p[1] : x;
  case ACT_SIGMOID: return (float)(1.0 / (1.0 + exp(-(double)x)));
  case ACT_TANH: return (float)tanh((double)x);
  case ACT_HARDSIGMOID: return (float)fmax(0.0, fmin(1.0, (double)(a->p[0] * x + a->p[1])));
  case ACT_HARDSWISH: return (float)(x * fmax(0.0, fmin(1.0, (double)(x / 6.0f + 0.5f))));
  case ACT_LEAKYRELU: return x < 0 ? a->p[0] * x : x;
  case ACT_GELU: return (float)(0.5 * x * (1.0 + erf(x * 0.70710678118654752440)));
  case ACT_SILU: return x * (float)(1.0 / (1.0 + exp(-(double)x)));
  case ACT_GELU_TANH: return (float)gelu_tanh(x);
  }
  return x;
}

/* Z must broadcast to Y's shape without widening it. */
static kiln_status check_residual(const kiln__kctx *c, const kiln_tensor *z, int rank,
                                  const int64_t *dims, bool exact) {
  if (!z) return KILN_OK;
  if (z->dtype != KILN_DTYPE_FLOAT)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s: Z must be float32", c->node->op_type);
  bool ok = z->rank <= rank && (!exact || z->rank == rank);
  for (int d = 0; ok && d < z->rank; d++) {
    int64_t zd = z->dims[z->rank - 1 - d], yd = dims[rank - 1 - d];
    ok = zd == yd || (!exact && zd == 1);
  }
  if (!ok)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s: Z does not %s the output's shape",
                      c->node->op_type, exact ? "have" : "broadcast to");
  return KILN_OK;
}

/* y[i] = f(y[i] + bias[i % n] + z[i]) over the output, Z broadcast in Y's shape. */
static void epilogue(const act *a, kiln_tensor *y, const float *bias, size_t n,
                     const kiln_tensor *z) {
  float *Y = y->data;
  size_t count = kiln_tensor_count(y);
  if (bias)
    for (size_t i = 0; i < count; i++) Y[i] += bias[i % n];
  if (z) {
    const float *Z = z->data;
    if (kiln_tensor_count(z) == count) {
      for (size_t i = 0; i < count; i++) Y[i] += Z[i];
    } else {
      int64_t zs[KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0};
      kiln__bcast_strides(z, y->rank, y->dims, zs);
      int64_t zo = 0;
      for (size_t i = 0; i < count; i++) {
        Y[i] += Z[zo];
        for (int d = y->rank - 1; d >= 0; d--) { /* odometer over Y's index */
          zo += zs[d];
          if (++idx[d] < y->dims[d]) break;
          zo -= zs[d] * idx[d];
          idx[d] = 0;
        }
      }
    }
  }
  if (a->kind != ACT_NONE)
    for (size_t i = 0; i < count; i++) Y[i] = act_apply(a, Y[i]);
}

/* Runs the plain op (Conv, Gemm) on the first `n` inputs of the fused node. */
static kiln__kctx sub_ctx(const kiln__kctx *c, int n) {
  kiln__kctx s = *c;
  s.n_in = c->n_in < n ? c->n_in : n;
  while (s.n_in > 2 && !s.in[s.n_in - 1]) s.n_in--; /* an omitted bias: the plain op's 2 inputs */
  return s;
}

/* ---- FusedConv ------------------------------------------------------------------------------- */

static const kiln__op *plain(const char *name) { return kiln__op_find("", name); }

static kiln_status infer_fconv(kiln__kctx *c) {
  act a;
  kiln_status st = act_get(c, &a);
  kiln__kctx s = sub_ctx(c, 3);
  if (st == KILN_OK) st = plain("Conv")->infer(&s);
  if (st == KILN_OK && c->in[0]->dtype != KILN_DTYPE_FLOAT)
    st = kiln__fail(c->err, KILN_UNSUPPORTED, "FusedConv takes float32");
  if (st == KILN_OK && c->n_in > 3)
    st = check_residual(c, c->in[3], c->out[0]->rank, c->out[0]->dims, true);
  return st;
}

static size_t scratch_fconv(const kiln__kctx *c) {
  kiln__kctx s = sub_ctx(c, 3);
  const kiln__op *op = plain("Conv");
  return op->scratch ? op->scratch(&s) : 0;
}

static kiln_status run_fconv(kiln__kctx *c) {
  act a;
  kiln_status st = act_get(c, &a);
  kiln__kctx s = sub_ctx(c, 3);
  if (st == KILN_OK) st = plain("Conv")->run(&s);
  if (st == KILN_OK) epilogue(&a, c->out[0], NULL, 0, c->n_in > 3 ? c->in[3] : NULL);
  return st;
}

/* ---- DwPwConv -------------------------------------------------------------------------------- */
/* Inputs X, W, B? (the depthwise conv), W2, B2? (the pointwise one), Z?. The node's conv
   attributes and activation are the depthwise conv's; pw_activation the pointwise one's. The
   depthwise result T = FusedConv(X, W, B) goes to scratch (after the plain Conv's own scratch);
   Y = pw_act(W2 T + B2 + Z), the product summed in double. */

/* The depthwise part's context: X, W, B in, T out (shape only: data set by the caller). */
static kiln__kctx dw_ctx(const kiln__kctx *c, kiln_tensor *const *out) {
  kiln__kctx s = sub_ctx(c, 3);
  s.out = out;
  s.n_out = 1;
  return s;
}

static kiln_status infer_dwpw(kiln__kctx *c) {
  act a, a2;
  kiln_tensor t = {0}, *tp = &t;
  kiln__kctx s = dw_ctx(c, &tp);
  kiln_status st = act_get(c, &a);
  if (st == KILN_OK) st = act_get_named(c, "pw_", &a2);
  if (st == KILN_OK) st = plain("Conv")->infer(&s);
  const kiln_tensor *x = c->in[0], *w2 = c->in[3], *b2 = c->n_in > 4 ? c->in[4] : NULL;
  if (st == KILN_OK && (x->dtype != KILN_DTYPE_FLOAT || !w2 || w2->dtype != KILN_DTYPE_FLOAT))
    st = kiln__fail(c->err, KILN_UNSUPPORTED, "DwPwConv takes float32");
  if (st == KILN_OK && (t.rank != 4 || w2->rank != 4 || w2->dims[1] != t.dims[1] ||
                        w2->dims[2] != 1 || w2->dims[3] != 1))
    st = kiln__fail(c->err, KILN_INVALID_ARGUMENT, "DwPwConv: W2 must be [K, C, 1, 1]");
  if (st == KILN_OK && b2 && (b2->dtype != KILN_DTYPE_FLOAT || b2->rank != 1 ||
                              b2->dims[0] != w2->dims[0]))
    st = kiln__fail(c->err, KILN_INVALID_ARGUMENT, "DwPwConv: B2 must be float32 [K]");
  if (st != KILN_OK) return st;
  int64_t dims[4] = {t.dims[0], w2->dims[0], t.dims[2], t.dims[3]};
  kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, 4, dims);
  return c->n_in > 5 ? check_residual(c, c->in[5], 4, dims, true) : KILN_OK;
}

/* T's shape (from the output's), and the plain Conv's scratch for the depthwise part. */
static size_t dwpw_conv_scratch(const kiln__kctx *c, kiln_tensor *t) {
  const kiln_tensor *y = c->out[0];
  int64_t dims[4] = {y->dims[0], c->in[1]->dims[0], y->dims[2], y->dims[3]};
  kiln__set_shape(t, KILN_DTYPE_FLOAT, 4, dims);
  kiln_tensor *tp = t;
  kiln__kctx s = dw_ctx(c, &tp);
  const kiln__op *op = plain("Conv");
  size_t b = op->scratch ? op->scratch(&s) : 0;
  return (b + 63) / 64 * 64;
}

static size_t scratch_dwpw(const kiln__kctx *c) {
  kiln_tensor t = {0};
  size_t b = dwpw_conv_scratch(c, &t);
  return b + kiln_tensor_count(&t) * sizeof(float);
}

static kiln_status run_dwpw(kiln__kctx *c) {
  act a, a2;
  kiln_status st = act_get(c, &a);
  if (st == KILN_OK) st = act_get_named(c, "pw_", &a2);
  if (st != KILN_OK) return st;
  kiln_tensor t = {0}, *tp = &t;
  size_t off = dwpw_conv_scratch(c, &t);
  if (c->scratch_bytes < off + kiln_tensor_count(&t) * sizeof(float))
    return kiln__fail(c->err, KILN_INTERNAL, "DwPwConv: scratch too small");
  t.data = (char *)c->scratch + off;
  kiln__kctx s = dw_ctx(c, &tp);
  s.scratch_bytes = off;
  if ((st = plain("Conv")->run(&s)) != KILN_OK) return st;
  epilogue(&a, &t, NULL, 0, NULL);
  const kiln_tensor *y = c->out[0], *b2 = c->n_in > 4 ? c->in[4] : NULL,
                    *z = c->n_in > 5 ? c->in[5] : NULL;
  size_t n = (size_t)y->dims[0], k = (size_t)y->dims[1], ch = (size_t)t.dims[1];
  size_t p = (size_t)(y->dims[2] * y->dims[3]);
  const float *T = t.data, *W2 = c->in[3]->data;
  float *Y = y->data;
  for (size_t b = 0; b < n; b++)
    for (size_t o = 0; o < k; o++)
      for (size_t q = 0; q < p; q++) {
        double acc = 0;
        for (size_t i = 0; i < ch; i++) acc += (double)W2[o * ch + i] * T[(b * ch + i) * p + q];
        float v = (float)acc;
        if (b2) v += ((const float *)b2->data)[o];
        size_t at = (b * k + o) * p + q;
        if (z) v += ((const float *)z->data)[at];
        Y[at] = act_apply(&a2, v);
      }
  return KILN_OK;
}

/* ---- FusedGemm ------------------------------------------------------------------------------- */

static kiln_status infer_fgemm(kiln__kctx *c) {
  act a;
  kiln_status st = act_get(c, &a);
  kiln__kctx s = sub_ctx(c, 3);
  if (st == KILN_OK) st = plain("Gemm")->infer(&s);
  if (st == KILN_OK && c->in[0]->dtype != KILN_DTYPE_FLOAT)
    st = kiln__fail(c->err, KILN_UNSUPPORTED, "FusedGemm takes float32");
  if (st == KILN_OK && c->n_in > 3)
    st = check_residual(c, c->in[3], c->out[0]->rank, c->out[0]->dims, true);
  return st;
}

static kiln_status run_fgemm(kiln__kctx *c) {
  act a;
  kiln_status st = act_get(c, &a);
  kiln__kctx s = sub_ctx(c, 3);
  if (st == KILN_OK) st = plain("Gemm")->run(&s);
  if (st == KILN_OK) epilogue(&a, c->out[0], NULL, 0, c->n_in > 3 ? c->in[3] : NULL);
  return st;
}

/* ---- FusedMatMul ----------------------------------------------------------------------------- */

/* A shape-only view of an operand with its last two dims swapped when `trans`. */
static bool trans_view(const kiln_tensor *t, bool trans, kiln_tensor *v) {
  *v = *t;
  v->data = NULL;
  if (!trans) return true;
  if (t->rank < 2) return false;
  v->dims[t->rank - 2] = t->dims[t->rank - 1];
  v->dims[t->rank - 1] = t->dims[t->rank - 2];
  return true;
}

typedef struct fmm_geom {
  kiln__matmul_shape s;
  bool ta, tb;
  float alpha;
  const kiln_tensor *bias, *z;
} fmm_geom;

static kiln_status fmm_get(const kiln__kctx *c, fmm_geom *g) {
  const kiln_tensor *a = c->in[0], *b = c->in[1];
  g->ta = kiln__attr_int(c->node, "transA", 0) != 0;
  g->tb = kiln__attr_int(c->node, "transB", 0) != 0;
  g->alpha = kiln__attr_float(c->node, "alpha", 1.0f);
  g->bias = c->n_in > 2 ? c->in[2] : NULL;
  g->z = c->n_in > 3 ? c->in[3] : NULL;
  if (a->dtype != KILN_DTYPE_FLOAT || b->dtype != KILN_DTYPE_FLOAT)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "FusedMatMul takes float32");
  kiln_tensor av, bv;
  if (!trans_view(a, g->ta, &av) || !trans_view(b, g->tb, &bv))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "FusedMatMul: a transposed operand needs rank >= 2");
  kiln_status st = kiln__matmul_shape_get(&av, &bv, &g->s, c->err);
  if (st != KILN_OK) return st;
  if (g->bias && (g->bias->dtype != KILN_DTYPE_FLOAT || g->bias->rank != 1 ||
                  (size_t)g->bias->dims[0] != g->s.n))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "FusedMatMul: Bias must be float32 [%zu]",
                      g->s.n);
  return check_residual(c, g->z, g->s.out_rank, g->s.out_dims, false);
}

static kiln_status infer_fmatmul(kiln__kctx *c) {
  act a;
  fmm_geom g;
  kiln_status st = act_get(c, &a);
  if (st == KILN_OK) st = fmm_get(c, &g);
  if (st == KILN_OK) kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, g.s.out_rank, g.s.out_dims);
  return st;
}

static kiln_status run_fmatmul(kiln__kctx *c) {
  act a;
  fmm_geom g;
  kiln_status st = act_get(c, &a);
  if (st == KILN_OK) st = fmm_get(c, &g);
  if (st != KILN_OK) return st;
  const kiln__matmul_shape *s = &g.s;
  const float *A = c->in[0]->data, *B = c->in[1]->data;
  float *Y = c->out[0]->data;
  if (s->batch == 0 || s->m == 0 || s->n == 0) return KILN_OK;
  size_t lda = g.ta ? s->m : s->k, ldb = g.tb ? s->k : s->n;
  bool a_dense = true;
  for (int d = 0; d < s->batch_rank; d++)
    if (s->batch_dims[d] != 1 && s->a_bstride[d] == 0) a_dense = false;
  if (!g.ta && (s->batch == 1 || (!s->b_batched && a_dense))) {
    /* A's matrices lie back to back and B is shared: one tall product */
    kiln__sgemm(c->pool, false, g.tb, s->batch * s->m, s->n, s->k, g.alpha, A, lda, B, ldb, 0.0f,
                Y, s->n);
  } else {
    for (size_t i = 0; i < s->batch; i++) {
      size_t ao, bo;
      kiln__matmul_offsets(s, i, &ao, &bo);
      kiln__sgemm(c->pool, g.ta, g.tb, s->m, s->n, s->k, g.alpha, A + ao, lda, B + bo, ldb, 0.0f,
                  Y + i * s->m * s->n, s->n);
    }
  }
  epilogue(&a, c->out[0], g.bias ? g.bias->data : NULL, s->n, g.z);
  return KILN_OK;
}

/* ---- Attention ------------------------------------------------------------------------------- */

/* Keys per block of the online softmax: the scores of one block live in scratch, never [S, T]. */
enum { ATT_BLOCK = 64 };

static kiln_status infer_attention(kiln__kctx *c) {
  const kiln_tensor *q = c->in[0], *k = c->in[1], *v = c->in[2];
  const kiln_tensor *mask = c->n_in > 3 ? c->in[3] : NULL;
  if (!kiln__attr_find(c->node, "scale"))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Attention needs a scale attribute");
  if (q->dtype != KILN_DTYPE_FLOAT || k->dtype != KILN_DTYPE_FLOAT || v->dtype != KILN_DTYPE_FLOAT)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "Attention takes float32");
  kiln__att_geom g;
  kiln_status st = kiln__att_geom_of(c->node, q, k, v, &g, c->err);
  if (st != KILN_OK) return st;
  int64_t sdims[4] = {(int64_t)g.B, (int64_t)g.H, (int64_t)g.S, (int64_t)g.T};
  if (mask) {
    if (mask->dtype != KILN_DTYPE_FLOAT)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Attention mask must be float32");
    if ((st = check_residual(c, mask, 4, sdims, false)) != KILN_OK) return st;
  }
  /* Y has Q's shape with Dv for D, in Q's layout */
  int64_t y[4] = {q->dims[0], q->dims[1], q->dims[2], v->dims[3]};
  kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, 4, y);
  return KILN_OK;
}

static size_t scratch_attention(const kiln__kctx *c) {
  return (ATT_BLOCK + (size_t)c->in[2]->dims[3]) * sizeof(double);
}

static kiln_status run_attention(kiln__kctx *c) {
  const kiln_tensor *q = c->in[0], *k = c->in[1], *v = c->in[2];
  const kiln_tensor *mask = c->n_in > 3 ? c->in[3] : NULL;
  kiln__att_geom g;
  kiln_status st = kiln__att_geom_of(c->node, q, k, v, &g, c->err);
  if (st != KILN_OK) return st;
  size_t B = g.B, H = g.H, S = g.S, D = g.D, T = g.T, Dv = g.Dv;
  double scale = kiln__attr_float(c->node, "scale", 1.0f);
  bool causal = kiln__attr_int(c->node, "causal", 0) != 0;
  int64_t ms[4] = {0, 0, 0, 0};
  int64_t sdims[4] = {(int64_t)B, (int64_t)H, (int64_t)S, (int64_t)T};
  if (mask) kiln__bcast_strides(mask, 4, sdims, ms);
  const float *Q = q->data, *K = k->data, *V = v->data, *M = mask ? mask->data : NULL;
  float *Y = c->out[0]->data;
  double *sc = c->scratch, *acc = sc + ATT_BLOCK;
  for (size_t b = 0; b < B; b++)
    for (size_t h = 0; h < H; h++) {
      const float *Qh = Q + b * g.q.sb + h * g.q.sh, *Kh = K + b * g.k.sb + h * g.k.sh;
      const float *Vh = V + b * g.v.sb + h * g.v.sh;
      for (size_t s = 0; s < S; s++) {
        const float *qr = Qh + s * g.q.ld;
        /* keys past s + (T - S) are masked in causal mode */
        size_t t_end = !causal ? T : s + T < S ? 0 : s + T - S + 1 < T ? s + T - S + 1 : T;
        double run_max = -INFINITY, run_sum = 0;
        for (size_t e = 0; e < Dv; e++) acc[e] = 0;
        for (size_t t0 = 0; t0 < t_end; t0 += ATT_BLOCK) {
          size_t nt = t_end - t0 < ATT_BLOCK ? t_end - t0 : ATT_BLOCK;
          double bmax = -INFINITY;
          for (size_t j = 0; j < nt; j++) {
            const float *kr = Kh + (t0 + j) * g.k.ld;
            double dot = 0;
            for (size_t d = 0; d < D; d++) dot += (double)qr[d] * kr[d];
            double x = scale * dot;
            if (M)
              x += M[(int64_t)b * ms[0] + (int64_t)h * ms[1] + (int64_t)s * ms[2] +
                     (int64_t)(t0 + j) * ms[3]];
            sc[j] = x;
            if (x > bmax) bmax = x;
          }
          if (bmax == -INFINITY) continue; /* a fully masked block adds nothing */
          double new_max = bmax > run_max ? bmax : run_max;
          double corr = exp(run_max - new_max); /* 0 on the first block */
          run_sum *= corr;
          for (size_t e = 0; e < Dv; e++) acc[e] *= corr;
          for (size_t j = 0; j < nt; j++) {
            double p = exp(sc[j] - new_max);
            run_sum += p;
            const float *vr = Vh + (t0 + j) * g.v.ld;
            for (size_t e = 0; e < Dv; e++) acc[e] += p * vr[e];
          }
          run_max = new_max;
        }
        float *yr = Y + b * g.y.sb + h * g.y.sh + s * g.y.ld;
        /* every key masked: 0/0, the NaN the unfused Softmax gives */
        for (size_t e = 0; e < Dv; e++) yr[e] = (float)(acc[e] / run_sum);
      }
    }
  return KILN_OK;
}

/* ---- NCHW8c: ToBlocked, FromBlocked, BlockedConv ------------------------------------------- */

/* A tensor [N, C, H, W] stored as [N, C/8, H, W, 8]: channel c in block c / 8, lane c % 8. */
enum { BLK = 8 };

static kiln_status infer_to_blocked(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank != 4 || x->dims[1] % BLK != 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "ToBlocked takes float32 [N, C, H, W] with C a multiple of 8");
  int64_t d[5] = {x->dims[0], x->dims[1] / BLK, x->dims[2], x->dims[3], BLK};
  kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, 5, d);
  return KILN_OK;
}

static kiln_status infer_from_blocked(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank != 5 || x->dims[4] != BLK)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "%s takes float32 [N, C/8, H, W, 8]", c->node->op_type);
  int64_t d[4] = {x->dims[0], x->dims[1] * BLK, x->dims[2], x->dims[3]};
  kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, 4, d);
  return KILN_OK;
}

/* planes = N * C / 8 blocks of hw pixels: x [N, C, H, W] <-> y [N, C/8, H, W, 8]. */
static void to_blocked(const float *x, size_t blocks, size_t hw, float *y) {
  for (size_t b = 0; b < blocks; b++)
    for (size_t l = 0; l < BLK; l++)
      for (size_t p = 0; p < hw; p++) y[(b * hw + p) * BLK + l] = x[(b * BLK + l) * hw + p];
}

static void from_blocked(const float *x, size_t blocks, size_t hw, float *y) {
  for (size_t b = 0; b < blocks; b++)
    for (size_t l = 0; l < BLK; l++)
      for (size_t p = 0; p < hw; p++) y[(b * BLK + l) * hw + p] = x[(b * hw + p) * BLK + l];
}

static kiln_status run_to_blocked(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  to_blocked(x->data, (size_t)(x->dims[0] * x->dims[1]) / BLK, (size_t)(x->dims[2] * x->dims[3]),
             c->out[0]->data);
  return KILN_OK;
}

static kiln_status run_from_blocked(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  from_blocked(x->data, (size_t)(x->dims[0] * x->dims[1]), (size_t)(x->dims[2] * x->dims[3]),
               c->out[0]->data);
  return KILN_OK;
}

/* BlockedConv is FusedConv on NCHW8c X, Z and Y (X in NCHW with input_layout="NCHW"): the
   reference converts X to [N, C, H, W] in scratch, runs the plain Conv there, converts the
   result into Y and applies the epilogue (elementwise, so in either layout), bit for bit
   FusedConv's result. `*xv` and `*yv` get the [N, C, H, W] views of X and Y (data NULL). */
static bool bconv_x_nchw(const kiln__node *n) {
  return !strcmp(kiln__attr_str(n, "input_layout", "NCHW8c"), "NCHW");
}

static kiln_status blocked_views(const kiln__kctx *c, kiln_tensor *xv, kiln_tensor *yv) {
  const kiln_tensor *x = c->in[0];
  const char *layout = kiln__attr_str(c->node, "input_layout", "NCHW8c");
  bool nchw = !strcmp(layout, "NCHW");
  if (!nchw && strcmp(layout, "NCHW8c") != 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "BlockedConv input_layout must be NCHW8c or NCHW, not %s", layout);
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank != (nchw ? 4 : 5) || (!nchw && x->dims[4] != BLK))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "BlockedConv takes float32 %s",
                      nchw ? "[N, C, H, W]" : "[N, C/8, H, W, 8]");
  int64_t d[4] = {x->dims[0], nchw ? x->dims[1] : x->dims[1] * BLK, x->dims[2], x->dims[3]};
  *xv = (kiln_tensor){.dtype = KILN_DTYPE_FLOAT};
  kiln__set_shape(xv, KILN_DTYPE_FLOAT, 4, d);
  *yv = (kiln_tensor){.dtype = KILN_DTYPE_FLOAT};
  const kiln_tensor *in[3] = {xv, c->in[1], c->n_in > 2 ? c->in[2] : NULL};
  kiln_tensor *out[1] = {yv};
  kiln__kctx s = sub_ctx(c, 3);
  s.in = in, s.out = out;
  kiln_status st = plain("Conv")->infer(&s);
  if (st == KILN_OK && (yv->rank != 4 || yv->dims[1] % BLK != 0))
    st = kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                    "BlockedConv needs a multiple of 8 output channels");
  return st;
}

static kiln_status infer_bconv(kiln__kctx *c) {
  act a;
  kiln_tensor xv, yv;
  kiln_status st = act_get(c, &a);
  if (st == KILN_OK) st = blocked_views(c, &xv, &yv);
  if (st != KILN_OK) return st;
  int64_t d[5] = {yv.dims[0], yv.dims[1] / BLK, yv.dims[2], yv.dims[3], BLK};
  kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, 5, d);
  return c->n_in > 3 ? check_residual(c, c->in[3], 5, d, true) : KILN_OK;
}

static size_t scratch_bconv(const kiln__kctx *c) {
  kiln_tensor xv, yv;
  kiln_error err = {0};
  kiln__kctx s = sub_ctx(c, 3);
  s.err = &err;
  if (blocked_views(&s, &xv, &yv) != KILN_OK) return 0;
  const kiln_tensor *in[3] = {&xv, c->in[1], c->n_in > 2 ? c->in[2] : NULL};
  kiln_tensor *out[1] = {&yv};
  s.in = in, s.out = out;
  const kiln__op *op = plain("Conv");
  return (kiln_tensor_count(&xv) + kiln_tensor_count(&yv)) * sizeof(float) +
         (op->scratch ? op->scratch(&s) : 0);
}

static kiln_status run_bconv(kiln__kctx *c) {
  act a;
  kiln_tensor xv, yv;
  kiln_status st = act_get(c, &a);
  if (st == KILN_OK) st = blocked_views(c, &xv, &yv);
  if (st != KILN_OK) return st;
  float *mem = c->scratch;
  xv.data = mem;
  yv.data = mem + kiln_tensor_count(&xv);
  size_t hw = (size_t)(xv.dims[2] * xv.dims[3]), ohw = (size_t)(yv.dims[2] * yv.dims[3]);
  if (bconv_x_nchw(c->node)) memcpy(xv.data, c->in[0]->data, kiln_tensor_nbytes(&xv));
  else from_blocked(c->in[0]->data, (size_t)(xv.dims[0] * xv.dims[1]) / BLK, hw, xv.data);
  const kiln_tensor *in[3] = {&xv, c->in[1], c->n_in > 2 ? c->in[2] : NULL};
  kiln_tensor *out[1] = {&yv};
  kiln__kctx s = sub_ctx(c, 3);
  s.in = in, s.out = out;
  s.scratch = (float *)yv.data + kiln_tensor_count(&yv);
  s.scratch_bytes = c->scratch_bytes - (kiln_tensor_count(&xv) + kiln_tensor_count(&yv)) * sizeof(float);
  if ((st = plain("Conv")->run(&s)) != KILN_OK) return st;
  to_blocked(yv.data, (size_t)(yv.dims[0] * yv.dims[1]) / BLK, ohw, c->out[0]->data);
  epilogue(&a, c->out[0], NULL, 0, c->n_in > 3 ? c->in[3] : NULL);
  return KILN_OK;
}

/* BlockedPool: the pool op named by `op` (MaxPool, AveragePool, GlobalAveragePool,
   GlobalMaxPool; its attributes on this node) on NCHW8c X and Y, by way of NCHW copies. */
static kiln_status bpool_views(const kiln__kctx *c, const kiln__op **op, kiln_tensor *xv,
                               kiln_tensor *yv) {
  static const char *const ops[] = {"MaxPool", "AveragePool", "GlobalAveragePool",
                                    "GlobalMaxPool"};
  const char *name = kiln__attr_str(c->node, "op", "");
  *op = NULL;
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
    if (!strcmp(name, ops[i])) *op = plain(ops[i]);
  if (!*op)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "BlockedPool op must be MaxPool, AveragePool, GlobalAveragePool or "
                      "GlobalMaxPool, not '%s'", name);
  const kiln_tensor *x = c->in[0];
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank != 5 || x->dims[4] != BLK)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "BlockedPool takes float32 [N, C/8, H, W, 8]");
  int64_t d[4] = {x->dims[0], x->dims[1] * BLK, x->dims[2], x->dims[3]};
  *xv = (kiln_tensor){.dtype = KILN_DTYPE_FLOAT};
  kiln__set_shape(xv, KILN_DTYPE_FLOAT, 4, d);
  *yv = (kiln_tensor){.dtype = KILN_DTYPE_FLOAT};
  const kiln_tensor *in[1] = {xv};
  kiln_tensor *out[1] = {yv};
  kiln__kctx s = *c;
  s.n_in = 1, s.n_out = 1, s.in = in, s.out = out;
  return (*op)->infer(&s);
}

static kiln_status infer_bpool(kiln__kctx *c) {
  const kiln__op *op;
  kiln_tensor xv, yv;
  kiln_status st = bpool_views(c, &op, &xv, &yv);
  if (st != KILN_OK) return st;
  int64_t d[5] = {yv.dims[0], yv.dims[1] / BLK, yv.dims[2], yv.dims[3], BLK};
  kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, 5, d);
  return KILN_OK;
}

static size_t scratch_bpool(const kiln__kctx *c) {
  const kiln__op *op;
  kiln_tensor xv, yv;
  kiln_error err = {0};
  kiln__kctx s = *c;
  s.err = &err;
  if (bpool_views(&s, &op, &xv, &yv) != KILN_OK) return 0;
  const kiln_tensor *in[1] = {&xv};
  kiln_tensor *out[1] = {&yv};
  s.n_in = 1, s.n_out = 1, s.in = in, s.out = out;
  return (kiln_tensor_count(&xv) + kiln_tensor_count(&yv)) * sizeof(float) +
         (op->scratch ? op->scratch(&s) : 0);
}

static kiln_status run_bpool(kiln__kctx *c) {
  const kiln__op *op;
  kiln_tensor xv, yv;
  kiln_status st = bpool_views(c, &op, &xv, &yv);
  if (st != KILN_OK) return st;
  float *mem = c->scratch;
  xv.data = mem;
  yv.data = mem + kiln_tensor_count(&xv);
  from_blocked(c->in[0]->data, (size_t)(xv.dims[0] * xv.dims[1]) / BLK,
               (size_t)(xv.dims[2] * xv.dims[3]), xv.data);
  const kiln_tensor *in[1] = {&xv};
  kiln_tensor *out[1] = {&yv};
  kiln__kctx s = *c;
  s.n_in = 1, s.n_out = 1, s.in = in, s.out = out;
  s.scratch = (float *)yv.data + kiln_tensor_count(&yv);
  s.scratch_bytes = c->scratch_bytes - (kiln_tensor_count(&xv) + kiln_tensor_count(&yv)) * sizeof(float);
  if ((st = op->run(&s)) != KILN_OK) return st;
  to_blocked(yv.data, (size_t)(yv.dims[0] * yv.dims[1]) / BLK, (size_t)(yv.dims[2] * yv.dims[3]),
             c->out[0]->data);
  return KILN_OK;
}

const kiln__op kiln__ops_fused[] = {
    {"ai.kiln", "LayerNorm", infer_layernorm, run_layernorm, NULL, 0, 1, 3},
    {"ai.kiln", "Gelu", infer_float_same, run_gelu, NULL, KILN__OPF_INPLACE, 1, 1},
    {"ai.kiln", "RMSNorm", infer_rmsnorm, run_rmsnorm, NULL, 0, 2, 2},
    {"ai.kiln", "FusedConv", infer_fconv, run_fconv, scratch_fconv, 0, 2, 4},
    {"ai.kiln", "DwPwConv", infer_dwpw, run_dwpw, scratch_dwpw, 0, 4, 6},
    {"ai.kiln", "FusedGemm", infer_fgemm, run_fgemm, NULL, 0, 2, 4},
    {"ai.kiln", "FusedMatMul", infer_fmatmul, run_fmatmul, NULL, 0, 2, 4},
    {"ai.kiln", "Attention", infer_attention, run_attention, scratch_attention, 0, 3, 4},
    {"ai.kiln", "ToBlocked", infer_to_blocked, run_to_blocked, NULL, 0, 1, 1},
    {"ai.kiln", "FromBlocked", infer_from_blocked, run_from_blocked, NULL, 0, 1, 1},
    {"ai.kiln", "BlockedConv", infer_bconv, run_bconv, scratch_bconv, 0, 2, 4},
    {"ai.kiln", "BlockedPool", infer_bpool, run_bpool, scratch_bpool, 0, 1, 1},
    {0},
};
