/* Reference kernels: linear quantization (QuantizeLinear, DequantizeLinear,
 * DynamicQuantizeLinear) and the integer products (MatMulInteger, QLinearMatMul, ConvInteger,
 * QLinearConv), and the com.microsoft QLinearConcat, QLinearAdd and QLinearGlobalAveragePool.
 *
 * Rounding is to nearest, ties to even (rint under the default rounding mode), as ONNX specifies.
 * Requantization multiplies in float32, like the reference implementations the tests come from.
 * Integer products accumulate in int32 as the spec requires; ConvInteger and QLinearConv are
 * direct convolutions. */
#include <math.h>

#include "ir/op.h"
#include "kernels/ref/gemm.h"

/* ---- helpers --------------------------------------------------------------------------------- */

static const kiln_tensor *in_at(const kiln__kctx *c, int i) { return i < c->n_in ? c->in[i] : NULL; }

static inline int32_t ldq(const kiln_tensor *t, size_t i) {
  switch (t->dtype) {
  case KILN_DTYPE_UINT8: return ((const uint8_t *)t->data)[i];
  case KILN_DTYPE_INT8: return ((const int8_t *)t->data)[i];
  default: return (int32_t)kiln__load_i64(t->data, t->dtype, i);
  }
}

static inline float ldf(const kiln_tensor *t, size_t i) {
  if (t->dtype == KILN_DTYPE_FLOAT) return ((const float *)t->data)[i];
  return (float)kiln__load_f64(t->data, t->dtype, i);
}

static bool qrange(kiln_dtype t, int32_t *lo, int32_t *hi) {
  *lo = *hi = 0;
  switch (t) {
  case KILN_DTYPE_UINT8: *lo = 0; *hi = 255; return true;
  case KILN_DTYPE_INT8: *lo = -128; *hi = 127; return true;
  case KILN_DTYPE_UINT16: *lo = 0; *hi = 65535; return true;
  case KILN_DTYPE_INT16: *lo = -32768; *hi = 32767; return true;
  default: return false;
  }
}

/* Rounds half to even and saturates into [lo, hi]; NaN maps to 0 before the zero point. */
static inline int32_t saturate(float v, int32_t zp, int32_t lo, int32_t hi) {
  float r = rintf(v);
  if (r != r) r = 0.0f;
  double q = (double)r + zp;
  return q < lo ? lo : q > hi ? hi : (int32_t)q;
}

static inline void stq(kiln_tensor *t, size_t i, int32_t v) {
  switch (t->dtype) {
  case KILN_DTYPE_UINT8: ((uint8_t *)t->data)[i] = (uint8_t)v; break;
  case KILN_DTYPE_INT8: ((int8_t *)t->data)[i] = (int8_t)v; break;
  default: kiln__store_i64(t->data, t->dtype, i, v); break;
  }
}

static bool is_q8(kiln_dtype t) { return t == KILN_DTYPE_UINT8 || t == KILN_DTYPE_INT8; }

/* A quantization parameter: a scalar (any rank, one element) or a 1-D tensor of `n` elements.
   Returns through *count 1 or n. */
static kiln_status check_qparam(const kiln__kctx *c, const kiln_tensor *t, size_t n,
                                const char *what, size_t *count) {
  size_t cnt = kiln_tensor_count(t);
  if (cnt == 1) {
    *count = 1;
    return KILN_OK;
  }
  if (t->rank != 1 || cnt != n)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "%s must be a scalar or a 1-D tensor of %zu elements (has %zu)", what, n,
                      cnt);
  *count = n;
  return KILN_OK;
}

static kiln_status need_scale(const kiln__kctx *c, const kiln_tensor *t, const char *what) {
  if (!kiln__dtype_is_float(t->dtype))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s must be floating point, got %s", what,
                      kiln_dtype_name(t->dtype));
  return KILN_OK;
}

/* ---- QuantizeLinear / DequantizeLinear ------------------------------------------------------- */

/* Per-tensor or per-axis geometry: x viewed as outer x ch x inner, parameters indexed by ch. */
typedef struct qaxis {
  size_t outer, ch, inner;
  bool per_axis;
} qaxis;

static kiln_status qaxis_get(const kiln__kctx *c, qaxis *q) {
  const kiln_tensor *x = c->in[0], *scale = c->in[1], *zp = in_at(c, 2);
  kiln_status s = need_scale(c, scale, "scale");
  if (s != KILN_OK) return s;
  size_t total = kiln_tensor_count(x), sc = kiln_tensor_count(scale);
  /* A one-element scale is per-tensor whatever its rank. */
  q->per_axis = sc != 1;
  if (scale->rank > 1 && q->per_axis)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "scale must be a scalar or 1-D");
  if (!q->per_axis) {
    if (sc != 1) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "scale must be a scalar");
    q->outer = 1;
    q->ch = 1;
    q->inner = total;
  } else {
    int axis = 0;
    int64_t a = kiln__attr_int(c->node, "axis", 1);
    if (!kiln__norm_axis(a, x->rank, &axis))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld out of range for rank %d",
                        (long long)a, x->rank);
    if ((int64_t)sc != x->dims[axis])
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "scale has %zu elements, axis %d has %lld", sc, axis,
                        (long long)x->dims[axis]);
    q->ch = sc;
    q->outer = 1;
    for (int i = 0; i < axis; i++) q->outer *= (size_t)x->dims[i];
    q->inner = 1;
    for (int i = axis + 1; i < x->rank; i++) q->inner *= (size_t)x->dims[i];
  }
  if (zp) {
    if (kiln_tensor_count(zp) != q->ch)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "zero point and scale differ in shape");
  }
  return KILN_OK;
}

static kiln_status infer_quantize(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *zp = in_at(c, 2);
  if (!kiln__dtype_is_float(x->dtype) && x->dtype != KILN_DTYPE_INT32)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "QuantizeLinear of %s",
                      kiln_dtype_name(x->dtype));
  kiln_dtype out = zp ? zp->dtype : KILN_DTYPE_UINT8;
  int32_t lo, hi;
  if (!qrange(out, &lo, &hi))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "QuantizeLinear to %s", kiln_dtype_name(out));
  qaxis q = {0};
  kiln_status s = qaxis_get(c, &q);
  if (s != KILN_OK) return s;
  kiln__set_shape(c->out[0], out, x->rank, x->dims);
  return KILN_OK;
}

static kiln_status run_quantize(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *scale = c->in[1], *zp = in_at(c, 2);
  kiln_tensor *y = c->out[0];
  qaxis q = {0};
  kiln_status s = qaxis_get(c, &q);
  if (s != KILN_OK) return s;
  int32_t lo, hi;
  qrange(y->dtype, &lo, &hi);
  for (size_t k = 0; k < q.ch; k++) {
    float sc = ldf(scale, k);
    int32_t z = zp ? ldq(zp, k) : 0;
    for (size_t o = 0; o < q.outer; o++) {
      size_t base = (o * q.ch + k) * q.inner;
      if (x->dtype == KILN_DTYPE_FLOAT && y->dtype == KILN_DTYPE_UINT8) {
        const float *xp = (const float *)x->data + base;
        uint8_t *yp = (uint8_t *)y->data + base;
        for (size_t i = 0; i < q.inner; i++) yp[i] = (uint8_t)saturate(xp[i] / sc, z, lo, hi);
      } else {
        for (size_t i = 0; i < q.inner; i++)
          stq(y, base + i, saturate(ldf(x, base + i) / sc, z, lo, hi));
      }
    }
  }
  return KILN_OK;
}

static kiln_status infer_dequantize(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *zp = in_at(c, 2);
  if (!is_q8(x->dtype) && x->dtype != KILN_DTYPE_INT32 && x->dtype != KILN_DTYPE_UINT16 &&
      x->dtype != KILN_DTYPE_INT16)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "DequantizeLinear of %s",
                      kiln_dtype_name(x->dtype));
  if (zp && zp->dtype != x->dtype)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "zero point type %s differs from input's %s",
                      kiln_dtype_name(zp->dtype), kiln_dtype_name(x->dtype));
  qaxis q = {0};
  kiln_status s = qaxis_get(c, &q);
  if (s != KILN_OK) return s;
  kiln__set_shape(c->out[0], c->in[1]->dtype, x->rank, x->dims);
  return KILN_OK;
}

static kiln_status run_dequantize(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *scale = c->in[1], *zp = in_at(c, 2);
  kiln_tensor *y = c->out[0];
  qaxis q = {0};
  kiln_status s = qaxis_get(c, &q);
  if (s != KILN_OK) return s;
  for (size_t k = 0; k < q.ch; k++) {
    float sc = ldf(scale, k);
    int32_t z = zp ? ldq(zp, k) : 0;
    for (size_t o = 0; o < q.outer; o++) {
      size_t base = (o * q.ch + k) * q.inner;
      if (y->dtype == KILN_DTYPE_FLOAT) {
        float *yp = (float *)y->data + base;
        for (size_t i = 0; i < q.inner; i++) yp[i] = (float)(ldq(x, base + i) - z) * sc;
      } else {
        for (size_t i = 0; i < q.inner; i++)
          kiln__store_f64(y->data, y->dtype, base + i, (double)((float)(ldq(x, base + i) - z) * sc));
      }
    }
  }
  return KILN_OK;
}

/* ---- DynamicQuantizeLinear ------------------------------------------------------------------- */

static kiln_status infer_dynquant(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  if (!kiln__dtype_is_float(x->dtype))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "DynamicQuantizeLinear of %s",
                      kiln_dtype_name(x->dtype));
  kiln__set_shape(c->out[0], KILN_DTYPE_UINT8, x->rank, x->dims);
  if (c->n_out > 1 && c->out[1]) kiln__set_shape(c->out[1], KILN_DTYPE_FLOAT, 0, NULL);
  if (c->n_out > 2 && c->out[2]) kiln__set_shape(c->out[2], KILN_DTYPE_UINT8, 0, NULL);
  return KILN_OK;
}

static kiln_status run_dynquant(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  size_t n = kiln_tensor_count(x);
  /* The range always includes 0 so that 0 is exactly representable. */
  float mn = 0.0f, mx = 0.0f;
  for (size_t i = 0; i < n; i++) {
    float v = ldf(x, i);
    if (v < mn) mn = v;
    if (v > mx) mx = v;
  }
  float scale = (mx - mn) / 255.0f;
  int32_t zp = 0;
  if (scale > 0.0f && isfinite(scale)) zp = saturate((0.0f - mn) / scale, 0, 0, 255);
  uint8_t *yd = y->data;
  for (size_t i = 0; i < n; i++)
    yd[i] = scale > 0.0f ? (uint8_t)saturate(ldf(x, i) / scale, zp, 0, 255) : (uint8_t)zp;
  if (c->n_out > 1 && c->out[1]) *(float *)c->out[1]->data = scale;
  if (c->n_out > 2 && c->out[2]) *(uint8_t *)c->out[2]->data = (uint8_t)zp;
  return KILN_OK;
}

/* ---- MatMulInteger / QLinearMatMul ----------------------------------------------------------- */

/* Row/column quantization parameters of an integer matmul, all with count 1 or m / n. */
typedef struct qmm_params {
  const kiln_tensor *azp, *bzp;   /* may be NULL */
  size_t azp_n, bzp_n;
} qmm_params;

static kiln_status qmm_check(const kiln__kctx *c, const kiln_tensor *a, const kiln_tensor *b,
                             kiln__matmul_shape *s) {
  if (!is_q8(a->dtype) || !is_q8(b->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "integer matmul of %s and %s",
                      kiln_dtype_name(a->dtype), kiln_dtype_name(b->dtype));
  return kiln__matmul_shape_get(a, b, s, c->err);
}

/* Row i of one integer product: row[j] = sum_p (a[i][p] - azp[i]) * (b[p][j] - bzp[j]), for the
   A and B matrices at element offsets ao and bo. `row` holds n int32s. */
static void qmm_matrix(const kiln_tensor *a, size_t ao, const kiln_tensor *b, size_t bo,
                       const kiln__matmul_shape *s, const qmm_params *q, size_t i, int32_t *row) {
  int32_t za = q->azp ? ldq(q->azp, q->azp_n == 1 ? 0 : i) : 0;
  for (size_t j = 0; j < s->n; j++) row[j] = 0;
  for (size_t p = 0; p < s->k; p++) {
    int32_t av = ldq(a, ao + i * s->k + p) - za;
    if (av == 0) continue;
    for (size_t j = 0; j < s->n; j++) {
      int32_t zb = q->bzp ? ldq(q->bzp, q->bzp_n == 1 ? 0 : j) : 0;
      row[j] += av * (ldq(b, bo + p * s->n + j) - zb);
    }
  }
}

static kiln_status infer_matmulint(kiln__kctx *c) {
  kiln__matmul_shape s = {0};
  kiln_status st = qmm_check(c, c->in[0], c->in[1], &s);
  if (st != KILN_OK) return st;
  size_t cnt;
  const kiln_tensor *azp = in_at(c, 2), *bzp = in_at(c, 3);
  if (azp && (st = check_qparam(c, azp, s.m, "a_zero_point", &cnt)) != KILN_OK) return st;
  if (bzp && (st = check_qparam(c, bzp, s.n, "b_zero_point", &cnt)) != KILN_OK) return st;
  kiln__set_shape(c->out[0], KILN_DTYPE_INT32, s.out_rank, s.out_dims);
  return KILN_OK;
}

static kiln_status run_matmulint(kiln__kctx *c) {
  const kiln_tensor *a = c->in[0], *b = c->in[1];
  kiln__matmul_shape s = {0};
  kiln_status st = qmm_check(c, a, b, &s);
  if (st != KILN_OK) return st;
  qmm_params q = {in_at(c, 2), in_at(c, 3), 1, 1};
  if (q.azp && (st = check_qparam(c, q.azp, s.m, "a_zero_point", &q.azp_n)) != KILN_OK) return st;
  if (q.bzp && (st = check_qparam(c, q.bzp, s.n, "b_zero_point", &q.bzp_n)) != KILN_OK) return st;
  int32_t *y = c->out[0]->data;
  for (size_t bi = 0; bi < s.batch; bi++) {
    size_t ao, bo;
    kiln__matmul_offsets(&s, bi, &ao, &bo);
    for (size_t i = 0; i < s.m; i++) qmm_matrix(a, ao, b, bo, &s, &q, i, y + (bi * s.m + i) * s.n);
  }
  return KILN_OK;
}

/* com.microsoft MatMulIntegerToFloat (fuse-qdq-out makes it of int8-dynamic's MatMulInteger ->
   Cast -> Mul(a_scale * b_scale) [-> Add(bias)]): Y = (float)sum * (a_scale * b_scale[j])
   [+ bias[j]], each step a float operation as those nodes do. Inputs: a, b, a_scale (one),
   b_scale (one or n), [a_zero_point] (one or m), [b_zero_point] (one or n), [bias] (n).
   ai.kiln RowQuantMatMul (below) takes the same inputs with one a_scale per row of A. */
static bool rowq_op(const kiln__kctx *c) { return !strcmp(c->node->op_type, "RowQuantMatMul"); }

static kiln_status mif_params(const kiln__kctx *c, kiln__matmul_shape *s, qmm_params *q,
                              size_t *bs_n) {
  const char *op = c->node->op_type;
  bool rows = rowq_op(c);
  if (rows && c->in[1]->rank != 2)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "%s: B must be 2-D (is rank %d)", op,
                      c->in[1]->rank);
  kiln_status st = qmm_check(c, c->in[0], c->in[1], s);
  if (st != KILN_OK) return st;
  const kiln_tensor *as = c->in[2], *bs = c->in[3], *bias = in_at(c, 6);
  *q = (qmm_params){in_at(c, 4), in_at(c, 5), 1, 1};
  if ((st = need_scale(c, as, "a_scale")) != KILN_OK) return st;
  if ((st = need_scale(c, bs, "b_scale")) != KILN_OK) return st;
  if (!rows && kiln_tensor_count(as) != 1)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "%s: a_scale must be a scalar", op);
  if (rows && kiln_tensor_count(as) != s->batch * s->m)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s: a_scale has %zu values for %zu rows "
                      "of A", op, kiln_tensor_count(as), s->batch * s->m);
  if ((st = check_qparam(c, bs, s->n, "b_scale", bs_n)) != KILN_OK) return st;
  if (rows && q->azp && kiln_tensor_count(q->azp) != 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s: a_zero_point must be a scalar", op);
  if (q->azp && (st = check_qparam(c, q->azp, s->m, "a_zero_point", &q->azp_n)) != KILN_OK)
    return st;
  if (q->bzp && (st = check_qparam(c, q->bzp, s->n, "b_zero_point", &q->bzp_n)) != KILN_OK)
    return st;
  if ((q->azp && q->azp->dtype != c->in[0]->dtype) || (q->bzp && q->bzp->dtype != c->in[1]->dtype))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s: a zero point's type differs from its "
                      "operand's", op);
  if (bias && (!kiln__dtype_is_float(bias->dtype) || kiln_tensor_count(bias) != s->n))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s: bias must be %zu floats", op, s->n);
  return KILN_OK;
}

static kiln_status infer_mif(kiln__kctx *c) {
  kiln__matmul_shape s = {0};
  qmm_params q;
  size_t bs_n = 1;
  kiln_status st = mif_params(c, &s, &q, &bs_n);
  if (st != KILN_OK) return st;
  kiln__set_shape(c->out[0], rowq_op(c) ? KILN_DTYPE_FLOAT : c->in[2]->dtype, s.out_rank,
                  s.out_dims);
  return KILN_OK;
}

static kiln_status run_mif(kiln__kctx *c) {
  kiln__matmul_shape s = {0};
  qmm_params q;
  size_t bs_n = 1;
  kiln_status st = mif_params(c, &s, &q, &bs_n);
  if (st != KILN_OK) return st;
  if (c->out[0]->dtype != KILN_DTYPE_FLOAT)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "%s output %s", c->node->op_type,
                      kiln_dtype_name(c->out[0]->dtype));
  const kiln_tensor *a = c->in[0], *b = c->in[1], *as = c->in[2], *bs = c->in[3];
  const kiln_tensor *bias = in_at(c, 6);
  bool rows = rowq_op(c);
  float *y = c->out[0]->data;
  int32_t *row = c->scratch;
  for (size_t bi = 0; bi < s.batch; bi++) {
    size_t ao, bo;
    kiln__matmul_offsets(&s, bi, &ao, &bo);
    for (size_t i = 0; i < s.m; i++) {
      size_t r = bi * s.m + i;
      qmm_matrix(a, ao, b, bo, &s, &q, i, row);
      for (size_t j = 0; j < s.n; j++) {
        float f = (float)row[j], sb = ldf(bs, bs_n == 1 ? 0 : j);
        if (rows) { /* two Mul nodes: by b_scale[j], then by the row's a_scale */
          f *= sb;
          f *= ldf(as, r);
        } else {
          f *= ldf(as, 0) * sb;
        }
        if (bias) f += ldf(bias, j);
        y[r * s.n + j] = f;
      }
    }
  }
  return KILN_OK;
}

static size_t scratch_mif(const kiln__kctx *c) {
  const kiln_tensor *b = c->in[1];
  size_t n = b->rank >= 1 ? (size_t)b->dims[b->rank - 1] : 1;
  return n * sizeof(int32_t);
}

/* ai.kiln DynamicQuantizeRows and RowQuantMatMul (the fuse-rowq pass; int8-dynamic --per-row's
   graph). DynamicQuantizeRows(X) -> (Y, Y_scale): each row r of X (its last axis)
     s = max(max_p |x[r][p]| / qmax, min_scale)              (ReduceMax(Abs) -> Div -> Max)
     y[r][p] = clamp(rint(x[r][p] / s) + zero_point), NaN to 0 before the zero point
                                        (Div -> Round [-> Add(128)] -> Cast to int8 / uint8)
   with Y_scale X's shape with a last dim of 1; attributes qmax (default 127, in (0, 127]),
   min_scale (> 0) and zero_point: 0 (Y int8, the default) or 128 (Y uint8). RowQuantMatMul has
   com.microsoft MatMulIntegerToFloat's inputs (A, B, a_scale, b_scale, a_zero_point,
   b_zero_point, bias) with one a_scale per row of A, a scalar a_zero_point and a 2-D B (run by
   run_mif above):
     y[r][j] = ((float)sum_p (a[r][p] - za) * (b[p][j] - zb[j])) * b_scale[j] * a_scale[r]
               [+ bias[j]]                         (MatMulInteger -> Cast -> Mul -> Mul [-> Add])
   Each step is the float operation of the standard node it replaces, in their order, so both
   equal those nodes bit for bit on finite inputs. */
static kiln_status dqrows_params(const kiln__kctx *c, float *qmax, float *min_scale) {
  const kiln_tensor *x = c->in[0];
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank < 1)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "DynamicQuantizeRows of a rank-%d %s (float32 "
                      "of rank 1 or more is needed)", x->rank, kiln_dtype_name(x->dtype));
  *qmax = kiln__attr_float(c->node, "qmax", 127.0f);
  *min_scale = kiln__attr_float(c->node, "min_scale", 0.0f);
  if (!(*qmax > 0.0f && *qmax <= 127.0f) || !(*min_scale > 0.0f && isfinite(*min_scale)))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "DynamicQuantizeRows: qmax %g must be in "
                      "(0, 127] and min_scale %g positive", (double)*qmax, (double)*min_scale);
  int64_t zp = kiln__attr_int(c->node, "zero_point", 0);
  if (zp != 0 && zp != 128)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "DynamicQuantizeRows: zero_point %lld "
                      "(0 for int8 or 128 for uint8)", (long long)zp);
  return KILN_OK;
}

static kiln_status infer_dqrows(kiln__kctx *c) {
  float qmax = 127.0f, min_scale = 1.0f;
  kiln_status st = dqrows_params(c, &qmax, &min_scale);
  if (st != KILN_OK) return st;
  const kiln_tensor *x = c->in[0];
  bool u8 = kiln__attr_int(c->node, "zero_point", 0) == 128;
  kiln__set_shape(c->out[0], u8 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8, x->rank, x->dims);
  if (c->n_out > 1 && c->out[1]) {
    int64_t d[KILN_MAX_RANK];
    memcpy(d, x->dims, (size_t)x->rank * sizeof *d);
    d[x->rank - 1] = 1;
    kiln__set_shape(c->out[1], KILN_DTYPE_FLOAT, x->rank, d);
  }
  return KILN_OK;
}

static kiln_status run_dqrows(kiln__kctx *c) {
  float qmax = 127.0f, min_scale = 1.0f;
  kiln_status st = dqrows_params(c, &qmax, &min_scale);
  if (st != KILN_OK) return st;
  const kiln_tensor *x = c->in[0];
  size_t k = (size_t)x->dims[x->rank - 1], rows = 1;
  for (int d = 0; d < x->rank - 1; d++) rows *= (size_t)x->dims[d];
  const float *xd = x->data;
  kiln_tensor *y = c->out[0];
  int32_t zp = kiln__attr_int(c->node, "zero_point", 0) == 128 ? 128 : 0, lo, hi;
  qrange(y->dtype, &lo, &hi);
  float *ys = c->n_out > 1 && c->out[1] ? c->out[1]->data : NULL;
  for (size_t r = 0; r < rows; r++) {
    const float *xr = xd + r * k;
    float amax = 0.0f;
    for (size_t p = 0; p < k; p++)
      if (fabsf(xr[p]) > amax) amax = fabsf(xr[p]); /* NaN never compares greater */
    float sc = amax / qmax;
    if (!(sc > min_scale)) sc = min_scale;
    for (size_t p = 0; p < k; p++) stq(y, r * k + p, saturate(xr[p] / sc, zp, lo, hi));
    if (ys) ys[r] = sc;
  }
  return KILN_OK;
}

/* Inputs: a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp. */
static kiln_status qlmm_params(const kiln__kctx *c, kiln__matmul_shape *s, size_t *cnt) {
  kiln_status st = qmm_check(c, c->in[0], c->in[3], s);
  if (st != KILN_OK) return st;
  static const char *const names[6] = {"a_scale", "a_zero_point", "b_scale", "b_zero_point",
                                       "y_scale", "y_zero_point"};
  static const int idx[6] = {1, 2, 4, 5, 6, 7};
  for (int i = 0; i < 6; i++) {
    size_t n = i == 2 || i == 3 ? s->n : s->m;
    if ((st = check_qparam(c, c->in[idx[i]], n, names[i], &cnt[i])) != KILN_OK) return st;
  }
  if ((st = need_scale(c, c->in[1], "a_scale")) != KILN_OK) return st;
  if ((st = need_scale(c, c->in[4], "b_scale")) != KILN_OK) return st;
  if ((st = need_scale(c, c->in[6], "y_scale")) != KILN_OK) return st;
  int32_t lo, hi;
  if (!qrange(c->in[7]->dtype, &lo, &hi) || !is_q8(c->in[7]->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "QLinearMatMul output %s",
                      kiln_dtype_name(c->in[7]->dtype));
  return KILN_OK;
}

static kiln_status infer_qlinearmatmul(kiln__kctx *c) {
  kiln__matmul_shape s = {0};
  size_t cnt[6] = {0};
  kiln_status st = qlmm_params(c, &s, cnt);
  if (st != KILN_OK) return st;
  kiln__set_shape(c->out[0], c->in[7]->dtype, s.out_rank, s.out_dims);
  return KILN_OK;
}

static size_t scratch_qlinearmatmul(const kiln__kctx *c) {
  const kiln_tensor *b = c->in[3];
  size_t n = b->rank >= 2 ? (size_t)b->dims[b->rank - 1] : 1;
  return n * sizeof(int32_t);
}

/* Every requantized output value of a QLinearMatMul (whose parameters qlmm_params checked), in
   order: emit(ctx, element index, column, value). */
typedef void (*qlmm_emit)(void *ctx, size_t idx, size_t col, int32_t v);

static void qlmm_each(const kiln__kctx *c, const kiln__matmul_shape *s, const size_t *cnt,
                      qlmm_emit emit, void *ctx) {
  const kiln_tensor *a = c->in[0], *b = c->in[3], *as = c->in[1], *bs = c->in[4],
                    *ys = c->in[6], *yzp = c->in[7];
  qmm_params q = {c->in[2], c->in[5], cnt[1], cnt[3]};
  int32_t lo, hi;
  qrange(yzp->dtype, &lo, &hi);
  int32_t *row = c->scratch;
  for (size_t bi = 0; bi < s->batch; bi++) {
    size_t ao, bo;
    kiln__matmul_offsets(s, bi, &ao, &bo);
    for (size_t i = 0; i < s->m; i++) {
      qmm_matrix(a, ao, b, bo, s, &q, i, row);
      float sa = ldf(as, cnt[0] == 1 ? 0 : i), sy = ldf(ys, cnt[4] == 1 ? 0 : i);
      int32_t zy = ldq(yzp, cnt[5] == 1 ? 0 : i);
      for (size_t j = 0; j < s->n; j++) {
        float mult = sa * ldf(bs, cnt[2] == 1 ? 0 : j) / sy;
        emit(ctx, (bi * s->m + i) * s->n + j, j, saturate((float)row[j] * mult, zy, lo, hi));
      }
    }
  }
}

static void emit_q8(void *ctx, size_t idx, size_t col, int32_t v) {
  (void)col;
  stq(ctx, idx, v);
}

static kiln_status run_qlinearmatmul(kiln__kctx *c) {
  kiln__matmul_shape s = {0};
  size_t cnt[6] = {0};
  kiln_status st = qlmm_params(c, &s, cnt);
  if (st != KILN_OK) return st;
  qlmm_each(c, &s, cnt, emit_q8, c->out[0]);
  return KILN_OK;
}

/* ai.kiln QLinearMatMulDq (the fuse-qdq-out pass): DequantizeLinear(QLinearMatMul(a, ..., y_zp),
   dq_scale, dq_zp) [+ bias], float out. Inputs: QLinearMatMul's eight, dq_scale (one float),
   [dq_zp] (one, y_zp's type), [bias] (n floats, added after the dequantization as Add would). */
static kiln_status qlmmdq_params(const kiln__kctx *c, kiln__matmul_shape *s, size_t *cnt) {
  kiln_status st = qlmm_params(c, s, cnt);
  if (st != KILN_OK) return st;
  const kiln_tensor *ds = c->in[8], *dz = in_at(c, 9), *bias = in_at(c, 10);
  if ((st = need_scale(c, ds, "dq_scale")) != KILN_OK) return st;
  if (kiln_tensor_count(ds) != 1 || (dz && kiln_tensor_count(dz) != 1))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "QLinearMatMulDq: dq_scale and dq_zero_point "
                      "must have one element");
  if (dz && dz->dtype != c->in[7]->dtype)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "QLinearMatMulDq: dq_zero_point is %s, "
                      "y_zero_point %s", kiln_dtype_name(dz->dtype), kiln_dtype_name(c->in[7]->dtype));
  if (bias && (bias->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(bias) != s->n))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "QLinearMatMulDq: bias must be %zu floats",
                      s->n);
  return KILN_OK;
}

static kiln_status infer_qlinearmatmuldq(kiln__kctx *c) {
  kiln__matmul_shape s = {0};
  size_t cnt[6] = {0};
  kiln_status st = qlmmdq_params(c, &s, cnt);
  if (st != KILN_OK) return st;
  kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, s.out_rank, s.out_dims);
  return KILN_OK;
}

typedef struct dq_out {
  float *y, scale;
  int32_t zp;
  const float *bias;
} dq_out;

/* DequantizeLinear's then Add's float operations, one statement each. */
static void emit_dq(void *ctx, size_t idx, size_t col, int32_t v) {
  const dq_out *o = ctx;
  float f = (float)(v - o->zp) * o->scale;
  if (o->bias) f += o->bias[col];
  o->y[idx] = f;
}

static kiln_status run_qlinearmatmuldq(kiln__kctx *c) {
  kiln__matmul_shape s = {0};
  size_t cnt[6] = {0};
  kiln_status st = qlmmdq_params(c, &s, cnt);
  if (st != KILN_OK) return st;
  const kiln_tensor *dz = in_at(c, 9), *bias = in_at(c, 10);
  dq_out o = {c->out[0]->data, ldf(c->in[8], 0), dz ? ldq(dz, 0) : 0,
              bias ? bias->data : NULL};
  qlmm_each(c, &s, cnt, emit_dq, &o);
  return KILN_OK;
}

/* ---- ConvInteger / QLinearConv --------------------------------------------------------------- */

typedef struct conv_geom {
  int sp;                               /* spatial rank */
  size_t n, ci, co, group;
  int64_t in[KILN_MAX_RANK], k[KILN_MAX_RANK], out[KILN_MAX_RANK];
  int64_t stride[KILN_MAX_RANK], dil[KILN_MAX_RANK], pad[KILN_MAX_RANK]; /* pad: begin side */
} conv_geom;

static kiln_status conv_geometry(const kiln__kctx *c, const kiln_tensor *x, const kiln_tensor *w,
                                 conv_geom *g) {
  if (!is_q8(x->dtype) || !is_q8(w->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "integer convolution of %s by %s",
                      kiln_dtype_name(x->dtype), kiln_dtype_name(w->dtype));
  if (x->rank < 3 || w->rank != x->rank)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "convolution needs N x C x D... input and matching weight (ranks %d, %d)",
                      x->rank, w->rank);
  g->sp = x->rank - 2;
  int64_t group = kiln__attr_int(c->node, "group", 1);
  if (group <= 0 || x->dims[1] != w->dims[1] * group || w->dims[0] % group != 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "convolution channels do not match (input %lld, weight %lld x %lld, "
                      "group %lld)",
                      (long long)x->dims[1], (long long)w->dims[0], (long long)w->dims[1],
                      (long long)group);
  g->n = (size_t)x->dims[0];
  g->ci = (size_t)x->dims[1];
  g->co = (size_t)w->dims[0];
  g->group = (size_t)group;
  const int64_t *ks, *st, *dl, *pd;
  size_t nks = kiln__attr_ints(c->node, "kernel_shape", &ks);
  size_t nst = kiln__attr_ints(c->node, "strides", &st);
  size_t ndl = kiln__attr_ints(c->node, "dilations", &dl);
  size_t npd = kiln__attr_ints(c->node, "pads", &pd);
  size_t sp = (size_t)g->sp;
  if ((nks && nks != sp) || (nst && nst != sp) || (ndl && ndl != sp) || (npd && npd != 2 * sp))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "convolution attributes do not match the %d spatial dimensions", g->sp);
  const char *ap = kiln__attr_str(c->node, "auto_pad", "NOTSET");
  bool same_upper = strcmp(ap, "SAME_UPPER") == 0, same_lower = strcmp(ap, "SAME_LOWER") == 0;
  bool valid = strcmp(ap, "VALID") == 0;
  if (!same_upper && !same_lower && !valid && strcmp(ap, "NOTSET") != 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown auto_pad '%s'", ap);
  for (int i = 0; i < g->sp; i++) {
    g->in[i] = x->dims[i + 2];
    g->k[i] = w->dims[i + 2];
    if (nks && ks[i] != g->k[i])
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "kernel_shape differs from the weight's");
    g->stride[i] = nst ? st[i] : 1;
    g->dil[i] = ndl ? dl[i] : 1;
    if (g->stride[i] <= 0 || g->dil[i] <= 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "strides and dilations must be positive");
    int64_t ext = g->dil[i] * (g->k[i] - 1) + 1;
    if (same_upper || same_lower) {
      g->out[i] = (g->in[i] + g->stride[i] - 1) / g->stride[i];
      int64_t total = KILN__MAX((g->out[i] - 1) * g->stride[i] + ext - g->in[i], 0);
      g->pad[i] = same_upper ? total / 2 : total - total / 2;
    } else {
      int64_t pb = valid || !npd ? 0 : pd[i], pe = valid || !npd ? 0 : pd[i + sp];
      if (pb < 0 || pe < 0)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "pads must not be negative");
      g->pad[i] = pb;
      int64_t span = g->in[i] + pb + pe - ext;
      g->out[i] = span < 0 ? 0 : span / g->stride[i] + 1;
    }
  }
  return KILN_OK;
}

static void conv_out_dims(const conv_geom *g, int64_t *dims) {
  dims[0] = (int64_t)g->n;
  dims[1] = (int64_t)g->co;
  for (int i = 0; i < g->sp; i++) dims[i + 2] = g->out[i];
}

/* sum over the receptive field of (x - xzp) * (w - wzp) for output channel `oc` at output
   position `opos` of image `b`; padding contributes nothing. */
static int32_t conv_acc(const conv_geom *g, const kiln_tensor *x, const kiln_tensor *w,
                        size_t b, size_t oc, const int64_t *opos, int32_t xzp, int32_t wzp) {
  size_t cig = g->ci / g->group, cog = g->co / g->group, grp = oc / cog;
  size_t kcount = 1, icount = 1;
  for (int i = 0; i < g->sp; i++) {
    kcount *= (size_t)g->k[i];
    icount *= (size_t)g->in[i];
  }
  int32_t acc = 0;
  for (size_t kp = 0; kp < kcount; kp++) {
    size_t rem = kp, ioff = 0, istr = 1;
    bool inside = true;
    for (int d = g->sp - 1; d >= 0; d--) {
      int64_t kd = (int64_t)(rem % (size_t)g->k[d]);
      rem /= (size_t)g->k[d];
      int64_t pos = opos[d] * g->stride[d] - g->pad[d] + kd * g->dil[d];
      if (pos < 0 || pos >= g->in[d]) {
        inside = false;
        break;
      }
      ioff += (size_t)pos * istr;
      istr *= (size_t)g->in[d];
    }
    if (!inside) continue;
    size_t xb = (b * g->ci + grp * cig) * icount + ioff, wb = oc * cig * kcount + kp;
    for (size_t ic = 0; ic < cig; ic++)
      acc += (ldq(x, xb + ic * icount) - xzp) * (ldq(w, wb + ic * kcount) - wzp);
  }
  return acc;
}

/* Walks every output element in order: emit(arg, flat index, output channel, accumulator). */
typedef void (*conv_emit)(void *arg, size_t i, size_t oc, int32_t acc);

static void conv_walk(const conv_geom *g, const kiln_tensor *x, const kiln_tensor *w,
                      int32_t xzp, const kiln_tensor *wzp, size_t wzp_n, conv_emit emit,
                      void *arg) {
  size_t ocount = 1;
  for (int i = 0; i < g->sp; i++) ocount *= (size_t)g->out[i];
  size_t flat = 0;
  for (size_t b = 0; b < g->n; b++)
    for (size_t oc = 0; oc < g->co; oc++) {
      int32_t zw = wzp ? ldq(wzp, wzp_n == 1 ? 0 : oc) : 0;
      int64_t opos[KILN_MAX_RANK] = {0};
      for (size_t o = 0; o < ocount; o++, flat++) {
        emit(arg, flat, oc, conv_acc(g, x, w, b, oc, opos, xzp, zw));
        for (int d = g->sp - 1; d >= 0; d--) {
          if (++opos[d] < g->out[d]) break;
          opos[d] = 0;
        }
      }
    }
}

static kiln_status infer_convint(kiln__kctx *c) {
  conv_geom g = {0};
  kiln_status st = conv_geometry(c, c->in[0], c->in[1], &g);
  if (st != KILN_OK) return st;
  size_t cnt;
  const kiln_tensor *xzp = in_at(c, 2), *wzp = in_at(c, 3);
  if (xzp && (st = check_qparam(c, xzp, 1, "x_zero_point", &cnt)) != KILN_OK) return st;
  if (wzp && (st = check_qparam(c, wzp, g.co, "w_zero_point", &cnt)) != KILN_OK) return st;
  int64_t dims[KILN_MAX_RANK];
  conv_out_dims(&g, dims);
  kiln__set_shape(c->out[0], KILN_DTYPE_INT32, c->in[0]->rank, dims);
  return KILN_OK;
}

static void emit_int32(void *arg, size_t i, size_t oc, int32_t acc) {
  ((int32_t *)arg)[i] = acc;
}

static kiln_status run_convint(kiln__kctx *c) {
  conv_geom g = {0};
  kiln_status st = conv_geometry(c, c->in[0], c->in[1], &g);
  if (st != KILN_OK) return st;
  const kiln_tensor *xzp = in_at(c, 2), *wzp = in_at(c, 3);
  size_t wzp_n = 1;
  if (wzp && (st = check_qparam(c, wzp, g.co, "w_zero_point", &wzp_n)) != KILN_OK) return st;
  conv_walk(&g, c->in[0], c->in[1], xzp ? ldq(xzp, 0) : 0, wzp, wzp_n, emit_int32,
            c->out[0]->data);
  return KILN_OK;
}

/* QLinearConv inputs: x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B (optional). */
typedef struct qlconv {
  conv_geom g;
  size_t ws_n, wzp_n;
} qlconv;

static kiln_status qlconv_get(const kiln__kctx *c, qlconv *q) {
  kiln_status st = conv_geometry(c, c->in[0], c->in[3], &q->g);
  if (st != KILN_OK) return st;
  size_t cnt;
  if ((st = check_qparam(c, c->in[1], 1, "x_scale", &cnt)) != KILN_OK) return st;
  if ((st = check_qparam(c, c->in[2], 1, "x_zero_point", &cnt)) != KILN_OK) return st;
  if ((st = check_qparam(c, c->in[4], q->g.co, "w_scale", &q->ws_n)) != KILN_OK) return st;
  if ((st = check_qparam(c, c->in[5], q->g.co, "w_zero_point", &q->wzp_n)) != KILN_OK) return st;
  if ((st = check_qparam(c, c->in[6], 1, "y_scale", &cnt)) != KILN_OK) return st;
  if ((st = check_qparam(c, c->in[7], 1, "y_zero_point", &cnt)) != KILN_OK) return st;
  if ((st = need_scale(c, c->in[1], "x_scale")) != KILN_OK) return st;
  if ((st = need_scale(c, c->in[4], "w_scale")) != KILN_OK) return st;
  if ((st = need_scale(c, c->in[6], "y_scale")) != KILN_OK) return st;
  if (!is_q8(c->in[7]->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "QLinearConv output %s",
                      kiln_dtype_name(c->in[7]->dtype));
  const kiln_tensor *bias = in_at(c, 8);
  if (bias && (bias->dtype != KILN_DTYPE_INT32 || bias->rank != 1 ||
               (size_t)bias->dims[0] != q->g.co))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "QLinearConv B must be int32 [%zu]",
                      q->g.co);
  return KILN_OK;
}

static kiln_status infer_qlinearconv(kiln__kctx *c) {
  qlconv q = {0};
  kiln_status st = qlconv_get(c, &q);
  if (st != KILN_OK) return st;
  int64_t dims[KILN_MAX_RANK];
  conv_out_dims(&q.g, dims);
  kiln__set_shape(c->out[0], c->in[7]->dtype, c->in[0]->rank, dims);
  return KILN_OK;
}

typedef struct qlconv_out {
  kiln_tensor *y;
  const kiln_tensor *ws, *bias;
  size_t ws_n;
  float xs, ys;
  int32_t zy, lo, hi;
} qlconv_out;

static void emit_requant(void *arg, size_t i, size_t oc, int32_t acc) {
  const qlconv_out *o = arg;
  if (o->bias) acc += ((const int32_t *)o->bias->data)[oc];
  float mult = o->xs * ldf(o->ws, o->ws_n == 1 ? 0 : oc) / o->ys;
  stq(o->y, i, saturate((float)acc * mult, o->zy, o->lo, o->hi));
}

static kiln_status run_qlinearconv(kiln__kctx *c) {
  qlconv q = {0};
  kiln_status st = qlconv_get(c, &q);
  if (st != KILN_OK) return st;
  qlconv_out o = {c->out[0], c->in[4], in_at(c, 8), q.ws_n, ldf(c->in[1], 0), ldf(c->in[6], 0),
                  ldq(c->in[7], 0), 0, 0};
  qrange(o.y->dtype, &o.lo, &o.hi);
  conv_walk(&q.g, c->in[0], c->in[3], ldq(c->in[2], 0), c->in[5], q.wzp_n, emit_requant, &o);
  return KILN_OK;
}

/* ---- com.microsoft QLinearConcat ------------------------------------------------------------- */

/* Inputs: Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input; attribute axis.
   Each element is y = Q(DQ(x)): (float)(x - zx) * sx, then quantized with Y's scale and zero
   point, the float operations of DequantizeLinear followed by QuantizeLinear, so the op equals
   DequantizeLinear -> Concat -> QuantizeLinear bit for bit (ONNX Runtime's kernel requantizes
   the same way through a table). Per-tensor parameters, every X of Y's 8-bit type. */
static kiln_status qconcat_check(const kiln__kctx *c, int *axis) {
  if (c->n_in < 5 || (c->n_in - 2) % 3)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "QLinearConcat takes Y_scale, Y_zero_point and (X, scale, zero point) "
                      "triples");
  const kiln_tensor *ys = c->in[0], *yz = c->in[1], *x0 = c->in[2];
  size_t cnt;
  kiln_status st;
  if ((st = need_scale(c, ys, "Y_scale")) != KILN_OK) return st;
  if (kiln_tensor_count(ys) != 1 || kiln_tensor_count(yz) != 1 || !is_q8(yz->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED,
                      "QLinearConcat: per-tensor 8-bit Y parameters only");
  const kiln__attr *at = kiln__attr_find(c->node, "axis");
  if (!at || !kiln__norm_axis(at->i, x0->rank, axis))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "QLinearConcat: bad or missing axis");
  for (int i = 2; i < c->n_in; i += 3) {
    const kiln_tensor *x = c->in[i], *xs = c->in[i + 1], *xz = c->in[i + 2];
    if (!x || !xs || !xz || x->dtype != yz->dtype || xz->dtype != yz->dtype)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "QLinearConcat: every X and zero point must be %s",
                        kiln_dtype_name(yz->dtype));
    if ((st = check_qparam(c, xs, 1, "X_scale", &cnt)) != KILN_OK) return st;
    if ((st = check_qparam(c, xz, 1, "X_zero_point", &cnt)) != KILN_OK) return st;
    if ((st = need_scale(c, xs, "X_scale")) != KILN_OK) return st;
    if (x->rank != x0->rank)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "QLinearConcat: ranks differ");
    for (int d = 0; d < x->rank; d++)
      if (d != *axis && x->dims[d] != x0->dims[d])
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "QLinearConcat: dim %d differs", d);
  }
  return KILN_OK;
}

static kiln_status infer_qlinearconcat(kiln__kctx *c) {
  int axis;
  kiln_status st = qconcat_check(c, &axis);
  if (st != KILN_OK) return st;
  int64_t dims[KILN_MAX_RANK];
  const kiln_tensor *x0 = c->in[2];
  for (int d = 0; d < x0->rank; d++) dims[d] = x0->dims[d];
  dims[axis] = 0;
  for (int i = 2; i < c->n_in; i += 3) dims[axis] += c->in[i]->dims[axis];
  kiln__set_shape(c->out[0], c->in[1]->dtype, x0->rank, dims);
  return KILN_OK;
}

static kiln_status run_qlinearconcat(kiln__kctx *c) {
  int axis;
  kiln_status st = qconcat_check(c, &axis);
  if (st != KILN_OK) return st;
  kiln_tensor *y = c->out[0];
  float sy = ldf(c->in[0], 0);
  int32_t zy = ldq(c->in[1], 0), lo, hi;
  qrange(y->dtype, &lo, &hi);
  size_t outer = 1, row = 0;
  for (int d = 0; d < axis; d++) outer *= (size_t)y->dims[d];
  for (int d = axis; d < y->rank; d++) row = (d == axis ? 1 : row) * (size_t)y->dims[d];
  size_t off = 0;
  for (int i = 2; i < c->n_in; i += 3) {
    const kiln_tensor *x = c->in[i];
    float sx = ldf(c->in[i + 1], 0);
    int32_t zx = ldq(c->in[i + 2], 0);
    size_t inner = outer ? kiln_tensor_count(x) / outer : 0;
    for (size_t o = 0; o < outer; o++)
      for (size_t e = 0; e < inner; e++) {
        float v = (float)(ldq(x, o * inner + e) - zx) * sx;
        stq(y, o * row + off + e, saturate(v / sy, zy, lo, hi));
      }
    off += inner;
  }
  return KILN_OK;
}

/* ---- com.microsoft QLinearAdd ---------------------------------------------------------------- */

/* Inputs: A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale[, C_zero_point]; the zero
   points may be omitted (0). C = Q(DQ(A) + DQ(B)) with numpy broadcasting, per element
     (float)(a - za) * sa + (float)(b - zb) * sb, divided by sc, rounded half to even, + zc,
   saturated: ONNX Runtime's scalar kernel (MlasQLinearAddKernelRawHelper) and the float
   operations of DequantizeLinear, Add and QuantizeLinear in that order, so the op equals the QDQ
   graph it replaces bit for bit. (ORT's AVX2 kernel uses fixed-point multipliers and may differ
   from its own scalar kernel by a step.) Per-tensor parameters, A, B and C of one 8-bit type. */
static kiln_status qadd_check(const kiln__kctx *c) {
  const kiln_tensor *a = c->in[0], *b = in_at(c, 3);
  if (!a || !b || !in_at(c, 1) || !in_at(c, 4) || !in_at(c, 6))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "QLinearAdd takes A, A_scale, [A_zero_point], B, B_scale, [B_zero_point], "
                      "C_scale[, C_zero_point]");
  if (!is_q8(a->dtype) || b->dtype != a->dtype)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "QLinearAdd: A and B must both be uint8 or "
                      "both int8");
  static const int scales[3] = {1, 4, 6}, zps[3] = {2, 5, 7};
  for (int k = 0; k < 3; k++) {
    const kiln_tensor *s = c->in[scales[k]], *z = in_at(c, zps[k]);
    kiln_status st = need_scale(c, s, "QLinearAdd scale");
    if (st != KILN_OK) return st;
    if (kiln_tensor_count(s) != 1 || (z && kiln_tensor_count(z) != 1))
      return kiln__fail(c->err, KILN_UNSUPPORTED, "QLinearAdd: per-tensor parameters only");
    if (z && z->dtype != a->dtype)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "QLinearAdd: zero points must be %s",
                        kiln_dtype_name(a->dtype));
  }
  return KILN_OK;
}

static kiln_status infer_qlinearadd(kiln__kctx *c) {
  kiln_status st = qadd_check(c);
  if (st != KILN_OK) return st;
  const kiln_tensor *a = c->in[0], *b = c->in[3];
  int rank;
  int64_t dims[KILN_MAX_RANK];
  if ((st = kiln__broadcast(a->rank, a->dims, b->rank, b->dims, &rank, dims, c->err)) != KILN_OK)
    return st;
  kiln__set_shape(c->out[0], a->dtype, rank, dims);
  return KILN_OK;
}

static int32_t zp_or0(const kiln__kctx *c, int i) {
  const kiln_tensor *z = in_at(c, i);
  return z ? ldq(z, 0) : 0;
}

static kiln_status run_qlinearadd(kiln__kctx *c) {
  kiln_status st = qadd_check(c);
  if (st != KILN_OK) return st;
  const kiln_tensor *a = c->in[0], *b = c->in[3];
  kiln_tensor *y = c->out[0];
  float sa = ldf(c->in[1], 0), sb = ldf(c->in[4], 0), sc = ldf(c->in[6], 0);
  int32_t za = zp_or0(c, 2), zb = zp_or0(c, 5), zc = zp_or0(c, 7), lo, hi;
  qrange(y->dtype, &lo, &hi);
  int rank = y->rank;
  int64_t as[KILN_MAX_RANK], bs[KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0};
  kiln__bcast_strides(a, rank, y->dims, as);
  kiln__bcast_strides(b, rank, y->dims, bs);
  size_t n = kiln_tensor_count(y);
  int64_t ao = 0, bo = 0;
  for (size_t e = 0; e < n; e++) {
    float va = (float)(ldq(a, (size_t)ao) - za) * sa, vb = (float)(ldq(b, (size_t)bo) - zb) * sb;
    stq(y, e, saturate((va + vb) / sc, zc, lo, hi));
    for (int d = rank - 1; d >= 0; d--) { /* odometer over y's dims */
      ao += as[d], bo += bs[d];
      if (++idx[d] < y->dims[d]) break;
      ao -= as[d] * y->dims[d], bo -= bs[d] * y->dims[d];
      idx[d] = 0;
    }
  }
  return KILN_OK;
}

/* ---- com.microsoft QLinearGlobalAveragePool -------------------------------------------------- */

/* Inputs X, x_scale, x_zero_point, y_scale, y_zero_point; attribute channels_last (0: [N, C,
   spatial...], 1: [N, spatial..., C]). Y keeps X's rank with every spatial dim 1. As ONNX
   Runtime's MLAS kernel: the exact int32 sum over the image of size m, less zx * m, times the
   float multiplier xs / (ys * (float)m), rounded half to even, + zy, saturated. */
static kiln_status qgap_check(const kiln__kctx *c, bool *last) {
  const kiln_tensor *x = c->in[0];
  if (!is_q8(x->dtype) || x->rank < 3)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "QLinearGlobalAveragePool: X must be 8-bit of rank >= 3");
  for (int k = 1; k < 5; k++) {
    const kiln_tensor *t = c->in[k];
    if (kiln_tensor_count(t) != 1)
      return kiln__fail(c->err, KILN_UNSUPPORTED,
                        "QLinearGlobalAveragePool: per-tensor parameters only");
    if (k % 2 == 1) {
      kiln_status st = need_scale(c, t, "QLinearGlobalAveragePool scale");
      if (st != KILN_OK) return st;
    } else if (t->dtype != x->dtype) {
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "QLinearGlobalAveragePool: zero points must be %s",
                        kiln_dtype_name(x->dtype));
    }
  }
  *last = kiln__attr_int(c->node, "channels_last", 0) != 0;
  return KILN_OK;
}

static kiln_status infer_qlinearglobalavgpool(kiln__kctx *c) {
  bool last;
  kiln_status st = qgap_check(c, &last);
  if (st != KILN_OK) return st;
  const kiln_tensor *x = c->in[0];
  int64_t dims[KILN_MAX_RANK];
  int ch = last ? x->rank - 1 : 1;
  for (int d = 0; d < x->rank; d++) dims[d] = d == 0 || d == ch ? x->dims[d] : 1;
  kiln__set_shape(c->out[0], x->dtype, x->rank, dims);
  return KILN_OK;
}

static kiln_status run_qlinearglobalavgpool(kiln__kctx *c) {
  bool last;
  kiln_status st = qgap_check(c, &last);
  if (st != KILN_OK) return st;
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  size_t n = (size_t)x->dims[0], ch = (size_t)x->dims[last ? x->rank - 1 : 1], m = 1;
  for (int d = 2; d < x->rank; d++) m *= (size_t)x->dims[last ? d - 1 : d];
  int32_t zx = ldq(c->in[2], 0), zy = ldq(c->in[4], 0), lo, hi;
  float mult = ldf(c->in[1], 0) / (ldf(c->in[3], 0) * (float)m);
  qrange(y->dtype, &lo, &hi);
  for (size_t b = 0; b < n; b++)
    for (size_t k = 0; k < ch; k++) {
      int32_t acc = 0;
      for (size_t e = 0; e < m; e++)
        acc += ldq(x, last ? (b * m + e) * ch + k : (b * ch + k) * m + e);
      acc -= zx * (int32_t)m;
      stq(y, b * ch + k, saturate((float)acc * mult, zy, lo, hi));
    }
  return KILN_OK;
}

const kiln__op kiln__ops_quant[] = {
    {"", "QuantizeLinear", infer_quantize, run_quantize, NULL, 0, 2, 3},
    {"", "DequantizeLinear", infer_dequantize, run_dequantize, NULL, 0, 2, 3},
    {"", "DynamicQuantizeLinear", infer_dynquant, run_dynquant, NULL, 0, 1, 1},
    {"", "MatMulInteger", infer_matmulint, run_matmulint, NULL, 0, 2, 4},
    {"", "QLinearMatMul", infer_qlinearmatmul, run_qlinearmatmul, scratch_qlinearmatmul, 0, 8, 8},
    {"ai.kiln", "QLinearMatMulDq", infer_qlinearmatmuldq, run_qlinearmatmuldq,
     scratch_qlinearmatmul, 0, 9, 11},
    {"", "ConvInteger", infer_convint, run_convint, NULL, 0, 2, 4},
    {"", "QLinearConv", infer_qlinearconv, run_qlinearconv, NULL, 0, 8, 9},
    {"com.microsoft", "QLinearConcat", infer_qlinearconcat, run_qlinearconcat, NULL, 0, 5, -1},
    {"com.microsoft", "MatMulIntegerToFloat", infer_mif, run_mif, scratch_mif, 0, 4, 7},
    {"ai.kiln", "DynamicQuantizeRows", infer_dqrows, run_dqrows, NULL, 0, 1, 1},
    {"ai.kiln", "RowQuantMatMul", infer_mif, run_mif, scratch_mif, 0, 4, 7},
    {"com.microsoft", "QLinearAdd", infer_qlinearadd, run_qlinearadd, NULL, KILN__OPF_INPLACE, 7, 8},
    {"com.microsoft", "QLinearGlobalAveragePool", infer_qlinearglobalavgpool,
     run_qlinearglobalavgpool, NULL, 0, 5, 5},
    {0},
};
