/* Reference kernels: matrix products (MatMul, Gemm), normalizations (BatchNormalization,
 * InstanceNormalization, LayerNormalization, LRN, MeanVarianceNormalization), Dropout, the
 * classification losses (NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss) and Det.
 *
 * float32 takes tight loops (and kiln__sgemm for products); the other floating types go through
 * double-precision slow paths. Statistics (means, variances, sums of losses) are accumulated in
 * double whatever the element type. */
#include <math.h>

#include "ir/op.h"
#include "kernels/ref/gemm.h"

/* Elementwise passes smaller than this many elements stay on the calling thread. */
#define PARALLEL_MIN 65536.0

/* ---- helpers --------------------------------------------------------------------------------- */

static const kiln_tensor *in_at(const kiln__kctx *c, int i) { return i < c->n_in ? c->in[i] : NULL; }
static kiln_tensor *out_at(const kiln__kctx *c, int i) { return i < c->n_out ? c->out[i] : NULL; }

static inline double ld(const kiln_tensor *t, size_t i) {
  if (t->dtype == KILN_DTYPE_FLOAT) return ((const float *)t->data)[i];
  return kiln__load_f64(t->data, t->dtype, i);
}

static inline void st(kiln_tensor *t, size_t i, double v) {
  if (t->dtype == KILN_DTYPE_FLOAT) ((float *)t->data)[i] = (float)v;
  else kiln__store_f64(t->data, t->dtype, i, v);
}

static kiln_status need_float(const kiln__kctx *c, const kiln_tensor *t, const char *what) {
  if (!kiln__dtype_is_float(t->dtype))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s must be a floating-point tensor, got %s",
                      what, kiln_dtype_name(t->dtype));
  return KILN_OK;
}

static bool is_numeric(kiln_dtype t) {
  return kiln__dtype_is_float(t) || kiln__dtype_is_signed_int(t) || kiln__dtype_is_unsigned_int(t);
}

static size_t prod(const int64_t *dims, int from, int to) {
  size_t n = 1;
  for (int i = from; i < to; i++) n *= (size_t)dims[i];
  return n;
}

/* A per-channel parameter (scale, bias, mean...) must hold exactly `n` elements. */
static kiln_status check_param(const kiln__kctx *c, const kiln_tensor *t, size_t n,
                               const char *what) {
  kiln_status s = need_float(c, t, what);
  if (s != KILN_OK) return s;
  if (t->rank != 1 || (size_t)t->dims[0] != n)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s must be a 1-D tensor of %zu elements",
                      what, n);
  return KILN_OK;
}

/* ---- MatMul ---------------------------------------------------------------------------------- */

static kiln_status infer_matmul(kiln__kctx *c) {
  const kiln_tensor *a = c->in[0], *b = c->in[1];
  if (a->dtype != b->dtype)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "MatMul operands differ in type (%s, %s)",
                      kiln_dtype_name(a->dtype), kiln_dtype_name(b->dtype));
  if (!is_numeric(a->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "MatMul of %s", kiln_dtype_name(a->dtype));
  kiln__matmul_shape s = {0};
  kiln_status st_ = kiln__matmul_shape_get(a, b, &s, c->err);
  if (st_ != KILN_OK) return st_;
  kiln__set_shape(c->out[0], a->dtype, s.out_rank, s.out_dims);
  return KILN_OK;
}

typedef struct matmul_batch_args {
  const kiln__matmul_shape *s;
  const float *a, *b;
  float *y;
} matmul_batch_args;

/* Many small products: one thread per matrix rather than threads inside each product. */
static void matmul_batch_range(void *arg, size_t begin, size_t end) {
  const matmul_batch_args *p = arg;
  const kiln__matmul_shape *s = p->s;
  for (size_t i = begin; i < end; i++) {
    size_t ao, bo;
    kiln__matmul_offsets(s, i, &ao, &bo);
    kiln__sgemm(NULL, false, false, s->m, s->n, s->k, 1.0f, p->a + ao, s->k, p->b + bo, s->n,
                0.0f, p->y + i * s->m * s->n, s->n);
  }
}

static void matmul_f32(kiln__kctx *c, const kiln__matmul_shape *s) {
  const float *a = c->in[0]->data, *b = c->in[1]->data;
  float *y = c->out[0]->data;
  /* A's matrices lie back to back and B is shared: one tall product. */
  bool a_dense = true;
  for (int d = 0; d < s->batch_rank; d++)
    if (s->batch_dims[d] != 1 && s->a_bstride[d] == 0) a_dense = false;
  if (s->batch == 1 || (!s->b_batched && a_dense)) {
    kiln__sgemm(c->pool, false, false, s->batch * s->m, s->n, s->k, 1.0f, a, s->k, b, s->n, 0.0f,
                y, s->n);
    return;
  }
  if ((double)s->m * (double)s->n * (double)s->k < 262144.0) {
    matmul_batch_args p = {s, a, b, y};
    kiln__parallel_for(c->pool, s->batch, matmul_batch_range, &p);
    return;
  }
  for (size_t i = 0; i < s->batch; i++) {
    size_t ao, bo;
    kiln__matmul_offsets(s, i, &ao, &bo);
    kiln__sgemm(c->pool, false, false, s->m, s->n, s->k, 1.0f, a + ao, s->k, b + bo, s->n, 0.0f,
                y + i * s->m * s->n, s->n);
  }
}

/* Slow path for every other numeric type: double accumulation for floating types, wrapping
   64-bit accumulation for integers. */
static void matmul_generic(kiln__kctx *c, const kiln__matmul_shape *s) {
  const kiln_tensor *a = c->in[0], *b = c->in[1];
  kiln_tensor *y = c->out[0];
  bool fl = kiln__dtype_is_float(a->dtype);
  for (size_t bi = 0; bi < s->batch; bi++) {
    size_t ao, bo, yo = bi * s->m * s->n;
    kiln__matmul_offsets(s, bi, &ao, &bo);
    for (size_t i = 0; i < s->m; i++)
      for (size_t j = 0; j < s->n; j++) {
        size_t ai = ao + i * s->k, bj = bo + j, yi = yo + i * s->n + j;
        if (fl) {
          double acc = 0;
          for (size_t p = 0; p < s->k; p++)
            acc += kiln__load_f64(a->data, a->dtype, ai + p) *
                   kiln__load_f64(b->data, b->dtype, bj + p * s->n);
          kiln__store_f64(y->data, y->dtype, yi, acc);
        } else {
          uint64_t acc = 0;
          for (size_t p = 0; p < s->k; p++)
            acc += (uint64_t)kiln__load_i64(a->data, a->dtype, ai + p) *
                   (uint64_t)kiln__load_i64(b->data, b->dtype, bj + p * s->n);
          kiln__store_i64(y->data, y->dtype, yi, (int64_t)acc);
        }
      }
  }
}

static kiln_status run_matmul(kiln__kctx *c) {
  kiln__matmul_shape s = {0};
  kiln_status st_ = kiln__matmul_shape_get(c->in[0], c->in[1], &s, c->err);
  if (st_ != KILN_OK) return st_;
  if (s.batch == 0 || s.m == 0 || s.n == 0) return KILN_OK;
  if (c->in[0]->dtype == KILN_DTYPE_FLOAT) matmul_f32(c, &s);
  else matmul_generic(c, &s);
  return KILN_OK;
}

/* ---- Gemm ------------------------------------------------------------------------------------ */

typedef struct gemm_geom {
  bool ta, tb;
  size_t m, n, k;
} gemm_geom;

static kiln_status gemm_geometry(const kiln__kctx *c, gemm_geom *g) {
  const kiln_tensor *a = c->in[0], *b = c->in[1], *cc = in_at(c, 2);
  if (a->rank != 2 || b->rank != 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Gemm needs 2-D A and B (got rank %d, %d)",
                      a->rank, b->rank);
  if (a->dtype != b->dtype || (cc && cc->dtype != a->dtype))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Gemm operands differ in type");
  if (!is_numeric(a->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "Gemm of %s", kiln_dtype_name(a->dtype));
  g->ta = kiln__attr_int(c->node, "transA", 0) != 0;
  g->tb = kiln__attr_int(c->node, "transB", 0) != 0;
  g->m = (size_t)a->dims[g->ta ? 1 : 0];
  g->k = (size_t)a->dims[g->ta ? 0 : 1];
  size_t kb = (size_t)b->dims[g->tb ? 1 : 0];
  g->n = (size_t)b->dims[g->tb ? 0 : 1];
  if (kb != g->k)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Gemm inner dimensions differ (%zu, %zu)",
                      g->k, kb);
  if (cc) {
    size_t want[2] = {g->m, g->n};
    if (cc->rank > 2)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Gemm C has rank %d", cc->rank);
    for (int i = 0; i < cc->rank; i++) {
      size_t d = (size_t)cc->dims[i], w = want[i + 2 - cc->rank];
      if (d != 1 && d != w)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                          "Gemm C (dimension %d is %zu) does not broadcast to %zu x %zu", i, d,
                          g->m, g->n);
    }
  }
  return KILN_OK;
}

static kiln_status infer_gemm(kiln__kctx *c) {
  gemm_geom g = {0};
  kiln_status s = gemm_geometry(c, &g);
  if (s != KILN_OK) return s;
  int64_t dims[2] = {(int64_t)g.m, (int64_t)g.n};
  kiln__set_shape(c->out[0], c->in[0]->dtype, 2, dims);
  return KILN_OK;
}

/* Strides of C viewed as m x n (0 along broadcast dimensions). */
static void gemm_c_strides(const kiln_tensor *cc, size_t *si, size_t *sj) {
  size_t d0 = cc->rank == 2 ? (size_t)cc->dims[0] : 1;
  size_t d1 = cc->rank >= 1 ? (size_t)cc->dims[cc->rank - 1] : 1;
  *sj = d1 == 1 ? 0 : 1;
  *si = d0 == 1 ? 0 : d1;
}

static kiln_status run_gemm(kiln__kctx *c) {
  gemm_geom g = {0};
  kiln_status s = gemm_geometry(c, &g);
  if (s != KILN_OK) return s;
  const kiln_tensor *a = c->in[0], *b = c->in[1], *cc = in_at(c, 2);
  kiln_tensor *y = c->out[0];
  float alpha = kiln__attr_float(c->node, "alpha", 1.0f);
  float beta = kiln__attr_float(c->node, "beta", 1.0f);
  if (g.m == 0 || g.n == 0) return KILN_OK;
  bool use_c = cc && beta != 0.0f;
  size_t si = 0, sj = 0;
  if (use_c) gemm_c_strides(cc, &si, &sj);
  if (a->dtype == KILN_DTYPE_FLOAT) {
    float *yd = y->data;
    if (use_c) {
      const float *cd = cc->data;
      for (size_t i = 0; i < g.m; i++)
        for (size_t j = 0; j < g.n; j++) yd[i * g.n + j] = cd[i * si + j * sj];
    }
    kiln__sgemm(c->pool, g.ta, g.tb, g.m, g.n, g.k, alpha, a->data, g.ta ? g.m : g.k, b->data,
                g.tb ? g.k : g.n, use_c ? beta : 0.0f, yd, g.n);
    return KILN_OK;
  }
  bool fl = kiln__dtype_is_float(a->dtype);
  for (size_t i = 0; i < g.m; i++)
    for (size_t j = 0; j < g.n; j++) {
      double acc = 0;
      for (size_t p = 0; p < g.k; p++) {
        size_t ia = g.ta ? p * g.m + i : i * g.k + p, ib = g.tb ? j * g.k + p : p * g.n + j;
        acc += kiln__load_f64(a->data, a->dtype, ia) * kiln__load_f64(b->data, b->dtype, ib);
      }
      double v = alpha * acc + (use_c ? beta * kiln__load_f64(cc->data, cc->dtype, i * si + j * sj)
                                      : 0.0);
      if (fl) kiln__store_f64(y->data, y->dtype, i * g.n + j, v);
      else kiln__store_i64(y->data, y->dtype, i * g.n + j, (int64_t)v);
    }
  return KILN_OK;
}

/* ---- BatchNormalization ---------------------------------------------------------------------- */

static bool bn_training(const kiln__kctx *c) {
  if (c->node->opset >= 14) return kiln__attr_int(c->node, "training_mode", 0) != 0;
  for (int i = 1; i < c->n_out; i++)
    if (c->out[i]) return true;
  return false;
}

static kiln_status infer_batchnorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status s = need_float(c, x, "BatchNormalization input");
  if (s != KILN_OK) return s;
  if (x->rank < 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "BatchNormalization input has rank %d < 2",
                      x->rank);
  if (c->node->opset < 9 && kiln__attr_int(c->node, "spatial", 1) == 0)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "BatchNormalization with spatial=0");
  size_t ch = (size_t)x->dims[1];
  static const char *const names[4] = {"scale", "B", "mean", "var"};
  for (int i = 1; i < 5; i++) {
    s = check_param(c, c->in[i], ch, names[i - 1]);
    if (s != KILN_OK) return s;
  }
  kiln__set_shape(c->out[0], x->dtype, x->rank, x->dims);
  /* Extra outputs alternate mean-like and variance-like statistics, one per channel. */
  for (int i = 1; i < c->n_out; i++)
    if (c->out[i]) kiln__set_shape(c->out[i], c->in[i % 2 ? 3 : 4]->dtype, 1, &x->dims[1]);
  return KILN_OK;
}

static size_t scratch_batchnorm(const kiln__kctx *c) {
  return 4 * (size_t)c->in[0]->dims[1] * sizeof(double);
}

typedef struct bn_args {
  const float *x;
  float *y;
  const double *mul, *add;
  size_t ch, sp;
} bn_args;

/* y = x * mul + add over whole (image, channel) planes. */
static void bn_planes(void *arg, size_t begin, size_t end) {
  const bn_args *p = arg;
  for (size_t i = begin; i < end; i++) {
    const float *xp = p->x + i * p->sp;
    float *yp = p->y + i * p->sp;
    float m = (float)p->mul[i % p->ch], a = (float)p->add[i % p->ch];
    for (size_t j = 0; j < p->sp; j++) yp[j] = xp[j] * m + a;
  }
}

static kiln_status run_batchnorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *scale = c->in[1], *bias = c->in[2], *mean = c->in[3],
                    *var = c->in[4];
  kiln_tensor *y = c->out[0];
  size_t n = (size_t)x->dims[0], ch = (size_t)x->dims[1], sp = prod(x->dims, 2, x->rank);
  double eps = kiln__attr_float(c->node, "epsilon", 1e-5f);
  double *mul = c->scratch, *add = mul + ch, *bmean = add + ch, *bvar = bmean + ch;
  bool training = bn_training(c);
  for (size_t k = 0; k < ch; k++) {
    double mu, v;
    if (training) {
      double s1 = 0, s2 = 0;
      for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < sp; j++) s1 += ld(x, (i * ch + k) * sp + j);
      size_t cnt = n * sp;
      mu = cnt ? s1 / (double)cnt : 0.0;
      for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < sp; j++) {
          double d = ld(x, (i * ch + k) * sp + j) - mu;
          s2 += d * d;
        }
      v = cnt ? s2 / (double)cnt : 0.0;
      bmean[k] = mu;
      bvar[k] = v;
    } else {
      mu = ld(mean, k);
      v = ld(var, k);
    }
    mul[k] = ld(scale, k) / sqrt(v + eps);
    add[k] = ld(bias, k) - mu * mul[k];
  }
  if (x->dtype == KILN_DTYPE_FLOAT) {
    bn_args p = {x->data, y->data, mul, add, ch, sp};
    if ((double)n * (double)ch * (double)sp < PARALLEL_MIN) bn_planes(&p, 0, n * ch);
    else kiln__parallel_for(c->pool, n * ch, bn_planes, &p);
  } else {
    for (size_t i = 0; i < n; i++)
      for (size_t k = 0; k < ch; k++)
        for (size_t j = 0; j < sp; j++) {
          size_t o = (i * ch + k) * sp + j;
          st(y, o, ld(x, o) * mul[k] + add[k]);
        }
  }
  if (!training) {
    /* Statistics asked for outside training mode: the running ones pass through unchanged. */
    for (int i = 1; i < c->n_out; i++)
      if (c->out[i])
        for (size_t k = 0; k < ch; k++) st(c->out[i], k, ld(i % 2 ? mean : var, k));
  } else {
    double mom = kiln__attr_float(c->node, "momentum", 0.9f);
    kiln_tensor *rm = out_at(c, 1), *rv = out_at(c, 2), *sm = out_at(c, 3), *sv = out_at(c, 4);
    for (size_t k = 0; k < ch; k++) {
      if (rm) st(rm, k, ld(mean, k) * mom + bmean[k] * (1.0 - mom));
      if (rv) st(rv, k, ld(var, k) * mom + bvar[k] * (1.0 - mom));
      if (sm) st(sm, k, bmean[k]);
      if (sv) st(sv, k, bvar[k]);
    }
  }
  return KILN_OK;
}

/* ---- InstanceNormalization ------------------------------------------------------------------- */

static kiln_status infer_instancenorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status s = need_float(c, x, "InstanceNormalization input");
  if (s != KILN_OK) return s;
  if (x->rank < 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "InstanceNormalization input has rank %d < 2", x->rank);
  if ((s = check_param(c, c->in[1], (size_t)x->dims[1], "scale")) != KILN_OK) return s;
  if ((s = check_param(c, c->in[2], (size_t)x->dims[1], "B")) != KILN_OK) return s;
  kiln__set_shape(c->out[0], x->dtype, x->rank, x->dims);
  return KILN_OK;
}

static kiln_status run_instancenorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *scale = c->in[1], *bias = c->in[2];
  kiln_tensor *y = c->out[0];
  size_t n = (size_t)x->dims[0], ch = (size_t)x->dims[1], sp = prod(x->dims, 2, x->rank);
  double eps = kiln__attr_float(c->node, "epsilon", 1e-5f);
  if (sp == 0) return KILN_OK;
  for (size_t i = 0; i < n * ch; i++) {
    size_t base = i * sp, k = i % ch;
    double s1 = 0, s2 = 0;
    if (x->dtype == KILN_DTYPE_FLOAT) {
      const float *xp = (const float *)x->data + base;
      for (size_t j = 0; j < sp; j++) s1 += xp[j];
      double mu = s1 / (double)sp;
      for (size_t j = 0; j < sp; j++) s2 += (xp[j] - mu) * (xp[j] - mu);
      double m = ld(scale, k) / sqrt(s2 / (double)sp + eps);
      float fm = (float)m, fa = (float)(ld(bias, k) - mu * m);
      float *yp = (float *)y->data + base;
      for (size_t j = 0; j < sp; j++) yp[j] = xp[j] * fm + fa;
    } else {
      for (size_t j = 0; j < sp; j++) s1 += ld(x, base + j);
      double mu = s1 / (double)sp;
      for (size_t j = 0; j < sp; j++) s2 += (ld(x, base + j) - mu) * (ld(x, base + j) - mu);
      double m = ld(scale, k) / sqrt(s2 / (double)sp + eps), a = ld(bias, k) - mu * m;
      for (size_t j = 0; j < sp; j++) st(y, base + j, ld(x, base + j) * m + a);
    }
  }
  return KILN_OK;
}

/* ---- LayerNormalization ---------------------------------------------------------------------- */

/* Scale and B broadcast (numpy-style) to the normalized shape X[axis:]. */
static kiln_status check_norm_param(const kiln__kctx *c, const kiln_tensor *t, int axis,
                                    const char *what) {
  const kiln_tensor *x = c->in[0];
  kiln_status s = need_float(c, t, what);
  if (s != KILN_OK) return s;
  int nr = x->rank - axis;
  if (t->rank > nr)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "LayerNormalization %s has rank %d > %d",
                      what, t->rank, nr);
  for (int i = 0; i < t->rank; i++) {
    int64_t d = t->dims[i], w = x->dims[x->rank - t->rank + i];
    if (d != 1 && d != w)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "LayerNormalization %s does not broadcast to the normalized shape", what);
  }
  return KILN_OK;
}

static kiln_status ln_axis(const kiln__kctx *c, int *axis) {
  int64_t a = kiln__attr_int(c->node, "axis", -1);
  if (!kiln__norm_axis(a, c->in[0]->rank, axis))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "LayerNormalization axis %lld out of range",
                      (long long)a);
  return KILN_OK;
}

static kiln_status infer_layernorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status s = need_float(c, x, "LayerNormalization input");
  if (s != KILN_OK) return s;
  int axis = 0;
  if ((s = ln_axis(c, &axis)) != KILN_OK) return s;
  if ((s = check_norm_param(c, c->in[1], axis, "Scale")) != KILN_OK) return s;
  if (in_at(c, 2) && (s = check_norm_param(c, c->in[2], axis, "B")) != KILN_OK) return s;
  int64_t stash = kiln__attr_int(c->node, "stash_type", 1);
  if (stash <= 0 || stash >= KILN_DTYPE_COUNT || !kiln__dtype_is_float((kiln_dtype)stash))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "LayerNormalization stash_type %lld",
                      (long long)stash);
  kiln__set_shape(c->out[0], x->dtype, x->rank, x->dims);
  int64_t sdims[KILN_MAX_RANK];
  for (int i = 0; i < x->rank; i++) sdims[i] = i < axis ? x->dims[i] : 1;
  for (int i = 1; i < 3; i++)
    if (out_at(c, i)) kiln__set_shape(c->out[i], (kiln_dtype)stash, x->rank, sdims);
  return KILN_OK;
}

static size_t scratch_layernorm(const kiln__kctx *c) {
  int axis = 0;
  if (ln_axis(c, &axis) != KILN_OK) return 0;
  return 2 * prod(c->in[0]->dims, axis, c->in[0]->rank) * sizeof(double);
}

/* Expands a parameter broadcast over the normalized shape (rank nr, dims) into `dd` (double) or,
   when that is NULL, into `fd` (float). A missing parameter expands to zeros. */
static void expand_param(const kiln_tensor *t, int nr, const int64_t *dims, size_t cols,
                         double *dd, float *fd) {
  int64_t str[KILN_MAX_RANK];
  if (t) kiln__bcast_strides(t, nr, dims, str);
  for (size_t j = 0; j < cols; j++) {
    double v = 0.0;
    if (t) {
      size_t rem = j, off = 0;
      for (int d = nr - 1; d >= 0; d--) {
        off += (rem % (size_t)dims[d]) * (size_t)str[d];
        rem /= (size_t)dims[d];
      }
      v = ld(t, off);
    }
    if (dd) dd[j] = v;
    else fd[j] = (float)v;
  }
}

typedef struct ln_args {
  const kiln_tensor *x;
  kiln_tensor *y, *mo, *io;
  const double *w, *b; /* expanded parameters (other types) */
  const float *wf, *bf; /* expanded parameters (float32) */
  size_t cols;
  double eps;
} ln_args;

static void ln_rows(void *arg, size_t begin, size_t end) {
  const ln_args *p = arg;
  const kiln_tensor *x = p->x;
  kiln_tensor *y = p->y;
  size_t cols = p->cols;
  const double *w = p->w, *b = p->b;
  for (size_t r = begin; r < end; r++) {
    size_t base = r * cols;
    double s1 = 0, s2 = 0, mu, inv;
    if (x->dtype == KILN_DTYPE_FLOAT) {
      const float *xp = (const float *)x->data + base;
      float *yp = (float *)y->data + base;
      const float *wf = p->wf, *bf = p->bf;
      for (size_t j = 0; j < cols; j++) s1 += xp[j];
      mu = s1 / (double)cols;
      for (size_t j = 0; j < cols; j++) s2 += (xp[j] - mu) * (xp[j] - mu);
      inv = 1.0 / sqrt(s2 / (double)cols + p->eps);
      float fm = (float)mu, fi = (float)inv;
      for (size_t j = 0; j < cols; j++) yp[j] = (xp[j] - fm) * fi * wf[j] + bf[j];
    } else {
      for (size_t j = 0; j < cols; j++) s1 += ld(x, base + j);
      mu = s1 / (double)cols;
      for (size_t j = 0; j < cols; j++) s2 += (ld(x, base + j) - mu) * (ld(x, base + j) - mu);
      inv = 1.0 / sqrt(s2 / (double)cols + p->eps);
      for (size_t j = 0; j < cols; j++) st(y, base + j, (ld(x, base + j) - mu) * inv * w[j] + b[j]);
    }
    if (p->mo) st(p->mo, r, mu);
    if (p->io) st(p->io, r, inv);
  }
}

static kiln_status run_layernorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0], *mo = out_at(c, 1), *io = out_at(c, 2);
  int axis = 0;
  kiln_status s = ln_axis(c, &axis);
  if (s != KILN_OK) return s;
  size_t rows = prod(x->dims, 0, axis), cols = prod(x->dims, axis, x->rank);
  double eps = kiln__attr_float(c->node, "epsilon", 1e-5f);
  if (cols == 0) return KILN_OK;
  int nr = x->rank - axis;
  ln_args p = {x, y, mo, io, NULL, NULL, NULL, NULL, cols, eps};
  if (x->dtype == KILN_DTYPE_FLOAT) {
    float *wf = c->scratch, *bf = wf + cols;
    expand_param(c->in[1], nr, x->dims + axis, cols, NULL, wf);
    expand_param(in_at(c, 2), nr, x->dims + axis, cols, NULL, bf);
    p.wf = wf;
    p.bf = bf;
  } else {
    double *w = c->scratch, *b = w + cols;
    expand_param(c->in[1], nr, x->dims + axis, cols, w, NULL);
    expand_param(in_at(c, 2), nr, x->dims + axis, cols, b, NULL);
    p.w = w;
    p.b = b;
  }
  if ((double)rows * (double)cols < PARALLEL_MIN) ln_rows(&p, 0, rows);
  else kiln__parallel_for(c->pool, rows, ln_rows, &p);
  return KILN_OK;
}

/* ---- LRN ------------------------------------------------------------------------------------- */

static kiln_status infer_lrn(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status s = need_float(c, x, "LRN input");
  if (s != KILN_OK) return s;
  if (x->rank < 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "LRN input has rank %d < 2", x->rank);
  if (kiln__attr_int(c->node, "size", 0) <= 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "LRN needs a positive 'size'");
  kiln__set_shape(c->out[0], x->dtype, x->rank, x->dims);
  return KILN_OK;
}

static kiln_status run_lrn(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  int64_t size = kiln__attr_int(c->node, "size", 0);
  double alpha = kiln__attr_float(c->node, "alpha", 1e-4f);
  double beta = kiln__attr_float(c->node, "beta", 0.75f);
  double bias = kiln__attr_float(c->node, "bias", 1.0f);
  int64_t lo = (size - 1) / 2, hi = size / 2; /* floor((size-1)/2), ceil((size-1)/2) */
  size_t n = (size_t)x->dims[0], ch = (size_t)x->dims[1], sp = prod(x->dims, 2, x->rank);
  double k = alpha / (double)size;
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < sp; j++)
      for (size_t q = 0; q < ch; q++) {
        int64_t c0 = KILN__MAX((int64_t)q - lo, 0), c1 = KILN__MIN((int64_t)q + hi, (int64_t)ch - 1);
        double sum = 0;
        for (int64_t r = c0; r <= c1; r++) {
          double v = ld(x, (i * ch + (size_t)r) * sp + j);
          sum += v * v;
        }
        size_t o = (i * ch + q) * sp + j;
        st(y, o, ld(x, o) / pow(bias + k * sum, beta));
      }
  return KILN_OK;
}

/* ---- MeanVarianceNormalization --------------------------------------------------------------- */

/* Fills `red` with which axes are normalized over (default 0, 2, 3). */
static kiln_status mvn_axes(const kiln__kctx *c, bool *red) {
  int rank = c->in[0]->rank;
  static const int64_t def[3] = {0, 2, 3};
  const int64_t *axes = def;
  size_t na = kiln__attr_ints(c->node, "axes", &axes);
  if (!kiln__attr_find(c->node, "axes")) {
    axes = def;
    na = 3;
  }
  for (int i = 0; i < rank; i++) red[i] = false;
  for (size_t i = 0; i < na; i++) {
    int a;
    if (!kiln__norm_axis(axes[i], rank, &a) || red[a])
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "MeanVarianceNormalization axis %lld is out of range or repeated",
                        (long long)axes[i]);
    red[a] = true;
  }
  return KILN_OK;
}

static kiln_status infer_mvn(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status s = need_float(c, x, "MeanVarianceNormalization input");
  if (s != KILN_OK) return s;
  bool red[KILN_MAX_RANK];
  if ((s = mvn_axes(c, red)) != KILN_OK) return s;
  kiln__set_shape(c->out[0], x->dtype, x->rank, x->dims);
  return KILN_OK;
}

static size_t scratch_mvn(const kiln__kctx *c) {
  bool red[KILN_MAX_RANK];
  kiln__kctx tmp = *c;
  tmp.err = NULL;
  if (mvn_axes(&tmp, red) != KILN_OK) return 0;
  size_t kept = 1;
  for (int i = 0; i < c->in[0]->rank; i++)
    if (!red[i]) kept *= (size_t)c->in[0]->dims[i];
  return 2 * kept * sizeof(double);
}

/* Visits every element with its slot: the index of its kept (not normalized) coordinates. Without
   `y` it accumulates sums and sums of squares per slot; with `y` it writes the normalized value. */
static void mvn_walk(const kiln_tensor *x, const bool *red, double *s1, double *s2,
                     kiln_tensor *y, const double *mean, const double *den) {
  int rank = x->rank;
  int64_t kstr[KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0};
  size_t ks = 1;
  for (int d = rank - 1; d >= 0; d--) {
    kstr[d] = red[d] ? 0 : (int64_t)ks;
    if (!red[d]) ks *= (size_t)x->dims[d];
  }
  size_t total = kiln_tensor_count(x), slot = 0;
  for (size_t i = 0; i < total; i++) {
    double v = ld(x, i);
    if (y) st(y, i, (v - mean[slot]) / den[slot]);
    else {
      s1[slot] += v;
      s2[slot] += v * v;
    }
    for (int d = rank - 1; d >= 0; d--) {
      slot += (size_t)kstr[d];
      if (++idx[d] < x->dims[d]) break;
      slot -= (size_t)kstr[d] * (size_t)x->dims[d];
      idx[d] = 0;
    }
  }
}

static kiln_status run_mvn(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  bool red[KILN_MAX_RANK];
  kiln_status s = mvn_axes(c, red);
  if (s != KILN_OK) return s;
  size_t kept = 1, cnt = 1;
  for (int i = 0; i < x->rank; i++) {
    if (red[i]) cnt *= (size_t)x->dims[i];
    else kept *= (size_t)x->dims[i];
  }
  if (kiln_tensor_count(x) == 0) return KILN_OK;
  double *s1 = c->scratch, *s2 = s1 + kept;
  for (size_t i = 0; i < 2 * kept; i++) s1[i] = 0.0;
  mvn_walk(x, red, s1, s2, NULL, NULL, NULL);
  for (size_t i = 0; i < kept; i++) {
    double mu = s1[i] / (double)cnt, var = s2[i] / (double)cnt - mu * mu;
    s1[i] = mu;
    s2[i] = sqrt(var > 0 ? var : 0) + 1e-9;
  }
  mvn_walk(x, red, NULL, NULL, c->out[0], s1, s2);
  return KILN_OK;
}

/* ---- Dropout --------------------------------------------------------------------------------- */

static kiln_status infer_dropout(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status s = need_float(c, x, "Dropout input");
  if (s != KILN_OK) return s;
  kiln__set_shape(c->out[0], x->dtype, x->rank, x->dims);
  if (out_at(c, 1))
    kiln__set_shape(c->out[1], c->node->opset >= 10 ? KILN_DTYPE_BOOL : x->dtype, x->rank,
                    x->dims);
  return KILN_OK;
}

/* MT19937 seeded like numpy's legacy RandomState(seed), so that a given `seed` attribute drops
   the same elements as the ONNX reference implementation. The state lives on the stack. */
typedef struct mt19937 {
  uint32_t s[624];
  int i;
} mt19937;

static void mt_seed(mt19937 *m, uint32_t seed) {
  m->s[0] = seed;
  for (int i = 1; i < 624; i++)
    m->s[i] = 1812433253u * (m->s[i - 1] ^ (m->s[i - 1] >> 30)) + (uint32_t)i;
  m->i = 624;
}

static uint32_t mt_next(mt19937 *m) {
  if (m->i >= 624) {
    for (int k = 0; k < 624; k++) {
      uint32_t y = (m->s[k] & 0x80000000u) | (m->s[(k + 1) % 624] & 0x7fffffffu);
      m->s[k] = m->s[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    m->i = 0;
  }
  uint32_t y = m->s[m->i++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  return y ^ (y >> 18);
}

/* A uniform double in [0, 1) from 53 random bits, as numpy's random_sample. */
static double mt_uniform(mt19937 *m) {
  uint32_t a = mt_next(m) >> 5, b = mt_next(m) >> 6;
  return ((double)a * 67108864.0 + (double)b) / 9007199254740992.0;
}

static kiln_status run_dropout(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0], *mask = out_at(c, 1);
  size_t n = kiln_tensor_count(x);
  bool training = false;
  double ratio = 0.5;
  if (c->node->opset >= 12) {
    const kiln_tensor *r = in_at(c, 1), *t = in_at(c, 2);
    if (t && kiln_tensor_count(t) > 0) training = kiln__load_i64(t->data, t->dtype, 0) != 0;
    if (r && kiln_tensor_count(r) > 0) ratio = kiln__load_f64(r->data, r->dtype, 0);
  }
  if (training && ratio > 0.0) {
    if (!(ratio <= 1.0))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Dropout ratio %g is not in [0, 1]",
                        ratio);
    mt19937 rng;
    mt_seed(&rng, (uint32_t)kiln__attr_int(c->node, "seed", 0));
    double scale = ratio < 1.0 ? 1.0 / (1.0 - ratio) : 0.0;
    for (size_t i = 0; i < n; i++) {
      bool keep = mt_uniform(&rng) >= ratio;
      st(y, i, keep ? ld(x, i) * scale : 0.0);
      if (mask) st(mask, i, keep ? 1.0 : 0.0);
    }
    return KILN_OK;
  }
  if (y->data != x->data) memmove(y->data, x->data, n * kiln_dtype_size(x->dtype));
  if (mask) {
    if (mask->dtype == KILN_DTYPE_BOOL) memset(mask->data, 1, n);
    else
      for (size_t i = 0; i < n; i++) st(mask, i, 1.0);
  }
  return KILN_OK;
}

/* ---- NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss ----------------------------------- */

typedef enum { RED_NONE, RED_SUM, RED_MEAN } reduction;

typedef struct loss_geom {
  size_t n, ch, d;     /* input viewed as N x C x D */
  reduction red;
  bool has_ii;
  int64_t ii;
} loss_geom;

static kiln_status loss_geometry(const kiln__kctx *c, loss_geom *g) {
  const kiln_tensor *x = c->in[0], *t = c->in[1], *w = in_at(c, 2);
  kiln_status s = need_float(c, x, "loss input");
  if (s != KILN_OK) return s;
  if (t->dtype != KILN_DTYPE_INT64 && t->dtype != KILN_DTYPE_INT32)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "loss target must be int32 or int64, got %s",
                      kiln_dtype_name(t->dtype));
  if (x->rank < 2 || t->rank != x->rank - 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "loss input must be N x C x d... and target N x d... (ranks %d, %d)",
                      x->rank, t->rank);
  if (t->dims[0] != x->dims[0])
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "loss target's shape does not match input's");
  for (int i = 1; i < t->rank; i++)
    if (t->dims[i] != x->dims[i + 1])
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "loss target's shape does not match input's");
  g->n = (size_t)x->dims[0];
  g->ch = (size_t)x->dims[1];
  g->d = prod(x->dims, 2, x->rank);
  if (w && (s = check_param(c, w, g->ch, "loss weight")) != KILN_OK) return s;
  const char *r = kiln__attr_str(c->node, "reduction", "mean");
  if (strcmp(r, "none") == 0) g->red = RED_NONE;
  else if (strcmp(r, "sum") == 0) g->red = RED_SUM;
  else if (strcmp(r, "mean") == 0) g->red = RED_MEAN;
  else return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown reduction '%s'", r);
  g->has_ii = kiln__attr_find(c->node, "ignore_index") != NULL;
  g->ii = kiln__attr_int(c->node, "ignore_index", 0);
  return KILN_OK;
}

static kiln_status infer_loss(kiln__kctx *c) {
  loss_geom g = {0};
  kiln_status s = loss_geometry(c, &g);
  if (s != KILN_OK) return s;
  const kiln_tensor *x = c->in[0], *t = c->in[1];
  if (g.red == RED_NONE) kiln__set_shape(c->out[0], x->dtype, t->rank, t->dims);
  else kiln__set_shape(c->out[0], x->dtype, 0, NULL);
  if (out_at(c, 1)) kiln__set_shape(c->out[1], x->dtype, x->rank, x->dims);
  return KILN_OK;
}

/* Shared by both losses: `softmax` selects SoftmaxCrossEntropyLoss (log-softmax over C first,
   optional log_prob output), otherwise the input already holds log-probabilities. */
static kiln_status run_loss(kiln__kctx *c, bool softmax) {
  loss_geom g = {0};
  kiln_status s = loss_geometry(c, &g);
  if (s != KILN_OK) return s;
  const kiln_tensor *x = c->in[0], *t = c->in[1], *w = in_at(c, 2);
  kiln_tensor *y = c->out[0], *lp = softmax ? out_at(c, 1) : NULL;
  double total = 0, wsum = 0;
  for (size_t i = 0; i < g.n; i++)
    for (size_t j = 0; j < g.d; j++) {
      size_t base = i * g.ch * g.d + j, ti = i * g.d + j;
      double lse = 0;
      if (softmax) {
        double mx = -INFINITY, se = 0;
        /* Not fmax(): gcc 12.2 for AArch64 dies vectorizing that reduction (internal compiler
           error). Same result: a NaN element is skipped, as fmax skips it. */
        for (size_t k = 0; k < g.ch; k++) {
          double v = ld(x, base + k * g.d);
          if (v > mx) mx = v;
        }
        for (size_t k = 0; k < g.ch; k++) se += exp(ld(x, base + k * g.d) - mx);
        lse = mx + log(se);
        if (lp)
          for (size_t k = 0; k < g.ch; k++) st(lp, base + k * g.d, ld(x, base + k * g.d) - lse);
      }
      int64_t tgt = kiln__load_i64(t->data, t->dtype, ti);
      double loss = 0, wt = 0;
      if (!(g.has_ii && tgt == g.ii)) {
        if (tgt < 0 || (size_t)tgt >= g.ch)
          return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "loss target %lld is not in [0, %zu)",
                            (long long)tgt, g.ch);
        wt = w ? ld(w, (size_t)tgt) : 1.0;
        loss = -(ld(x, base + (size_t)tgt * g.d) - lse) * wt;
      }
      if (g.red == RED_NONE) st(y, ti, loss);
      total += loss;
      wsum += wt;
    }
  if (g.red == RED_SUM) st(y, 0, total);
  else if (g.red == RED_MEAN) st(y, 0, wsum != 0 ? total / wsum : 0.0);
  return KILN_OK;
}

static kiln_status run_nll(kiln__kctx *c) { return run_loss(c, false); }
static kiln_status run_sce(kiln__kctx *c) { return run_loss(c, true); }

/* ---- Det ------------------------------------------------------------------------------------- */

static kiln_status infer_det(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status s = need_float(c, x, "Det input");
  if (s != KILN_OK) return s;
  if (x->rank < 2 || x->dims[x->rank - 1] != x->dims[x->rank - 2])
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Det needs square matrices (..., M, M)");
  kiln__set_shape(c->out[0], x->dtype, x->rank - 2, x->dims);
  return KILN_OK;
}

static size_t scratch_det(const kiln__kctx *c) {
  size_t m = (size_t)c->in[0]->dims[c->in[0]->rank - 1];
  return m * m * sizeof(double);
}

/* LU decomposition with partial pivoting; the determinant is the signed product of pivots. */
static kiln_status run_det(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  size_t m = (size_t)x->dims[x->rank - 1], batch = prod(x->dims, 0, x->rank - 2);
  double *a = c->scratch;
  for (size_t b = 0; b < batch; b++) {
    for (size_t i = 0; i < m * m; i++) a[i] = ld(x, b * m * m + i);
    double det = 1.0;
    for (size_t col = 0; col < m && det != 0.0; col++) {
      size_t piv = col;
      for (size_t r = col + 1; r < m; r++)
        if (fabs(a[r * m + col]) > fabs(a[piv * m + col])) piv = r;
      if (a[piv * m + col] == 0.0) {
        det = 0.0;
        break;
      }
      if (piv != col) {
        for (size_t k = 0; k < m; k++) {
          double tmp = a[col * m + k];
          a[col * m + k] = a[piv * m + k];
          a[piv * m + k] = tmp;
        }
        det = -det;
      }
      double p = a[col * m + col];
      det *= p;
      for (size_t r = col + 1; r < m; r++) {
        double f = a[r * m + col] / p;
        for (size_t k = col; k < m; k++) a[r * m + k] -= f * a[col * m + k];
      }
    }
    st(y, b, det);
  }
  return KILN_OK;
}

const kiln__op kiln__ops_nn[] = {
    {"", "MatMul", infer_matmul, run_matmul, NULL, 0, 2, 2},
    {"", "Gemm", infer_gemm, run_gemm, NULL, 0, 2, 3},
    {"", "BatchNormalization", infer_batchnorm, run_batchnorm, scratch_batchnorm, 0, 5, 5},
    {"", "InstanceNormalization", infer_instancenorm, run_instancenorm, NULL, 0, 3, 3},
    {"", "LayerNormalization", infer_layernorm, run_layernorm, scratch_layernorm, 0, 2, 3},
    {"", "LRN", infer_lrn, run_lrn, NULL, 0, 1, 1},
    {"", "MeanVarianceNormalization", infer_mvn, run_mvn, scratch_mvn, 0, 1, 1},
    {"", "Dropout", infer_dropout, run_dropout, NULL, KILN__OPF_INPLACE, 1, 3},
    {"", "NegativeLogLikelihoodLoss", infer_loss, run_nll, NULL, 0, 2, 3},
    {"", "SoftmaxCrossEntropyLoss", infer_loss, run_sce, NULL, 0, 2, 3},
    {"", "Det", infer_det, run_det, scratch_det, 0, 1, 1},
    {0},
};
