/* QDQ recognition: the static int8 layout ONNX Runtime's quantizer (and `kiln quantize --to
 * int8`) writes, run on the integer kernels instead of float.
 *
 *   DequantizeLinear(x_q, xs, xz)                      activation, per tensor
 *   DequantizeLinear(W_q, ws, wz; axis)                constant int8/uint8 weight, per tensor or
 *                                                      per output channel
 *   [DequantizeLinear(b_q int32, xs * ws; axis 0)]     Conv only: constant bias
 *   -> Conv | MatMul | Gemm -> [Relu | Clip] -> QuantizeLinear(ys, yz)
 * becomes
 *   QLinearConv(x_q, xs, xz, W_q, ws, wz, ys, yz[, b_q])   (Conv attributes kept)
 *   QLinearMatMul(x_q, xs, xz, W_q, ws, wz, ys, yz)        (Gemm: transB folded into W_q)
 *
 * The fused op accumulates (x_q - xz)(W_q - wz) in int32 and requantizes once; the QDQ graph
 * rounds the float product (summed in another order) and quantizes that, so an output may differ
 * by one step of ys (not bit-exact): level 2.
 *
 * An activation between the op and the QuantizeLinear is dropped only when quantizing already
 * does what it does: Relu when Q(0) is the lowest code (yz = 0 for uint8, -128 for int8), Clip
 * when Q(min) is the lowest code and Q(max) the highest. Then Q(act(v)) = Q(v) for every v (Q is
 * monotone and saturates), so the drop itself is exact. Otherwise the node stays float.
 *
 * Left float (documented in docs/PASSES.md): grouped Conv other than depthwise (see fuse_one), Gemm
 * with a bias C, transA, or alpha != 1 (there is no QGemm in the standard domain; a MatMul's
 * bias is a separate Add that stays float after the DequantizeLinear anyway) unless its output is
 * float and its bias int32 (integer_float_out); a Conv bias that is int32 with a scale other than
 * xs * ws[c] bit for bit; zero points or scales that are not constants; 16-bit types. A float constant Conv
 * bias is rounded onto the int32 grid (int32_bias below: not within the QDQ graph's rounding).
 *
 * Residual nets (issue 7): DQ, DQ -> Add -> [Relu | Clip] -> Q becomes com.microsoft QLinearAdd
 * (bit-exact), DQ -> GlobalAveragePool -> Q becomes com.microsoft QLinearGlobalAveragePool
 * (within one step), so a ResNet runs QLinearConv -> QLinearAdd -> QLinearConv with no float.
 *
 * A second rewrite folds DequantizeLinear(x_q, s, z) -> QuantizeLinear(s, z) (the same scale and
 * zero point, 8-bit) into x_q: (x - z) * s / s rounds back to x exactly for |x - z| <= 255 and a
 * normal s, so the pair is an identity. With the fusion this leaves QLinearConv -> QLinearConv
 * chains with nothing between them.
 *
 * Conservative: the op's output (and the activation's) is private and read once; constants are
 * initializers that are not graph inputs. A DequantizeLinear feeding several consumers is left to
 * each: every fused consumer reads x_q directly, and dead-code removes the DequantizeLinear when
 * nothing reads it any more. */
#include <math.h>
#include <stdio.h>

#include "ir/op.h"
#include "passes/pass.h"

static bool is_q8(kiln_dtype t) { return t == KILN_DTYPE_UINT8 || t == KILN_DTYPE_INT8; }

/* The live default-domain node `op` producing v (as its only output), or -1. */
static int producer_is(const kiln__pass_ctx *ctx, int v, const char *op) {
  if (v < 0) return -1;
  int p = ctx->g->values[v].producer;
  if (p < 0 || p >= ctx->g->n_nodes || ctx->dead[p]) return -1;
  const kiln__node *n = &ctx->g->nodes[p];
  return kiln__pass_is(n, op) && n->out[0] == v ? p : -1;
}

/* A DequantizeLinear's operands. */
typedef struct dq {
  int x, s, z;              /* z: -1 when absent */
  const kiln_tensor *st, *zt;
  int axis;                 /* the axis attribute as written (per-axis only matters) */
} dq;

/* v = DequantizeLinear(x, s[, z]) with s (and z) constants; false otherwise. */
static bool dq_of(const kiln__pass_ctx *ctx, int v, dq *d) {
  int p = producer_is(ctx, v, "DequantizeLinear");
  if (p < 0) return false;
  const kiln__node *n = &ctx->g->nodes[p];
  if (n->n_in < 2 || n->n_in > 3 || n->in[0] < 0 || n->in[1] < 0) return false;
  if (kiln__attr_find(n, "block_size")) return false; /* blocked (opset 21) */
  d->x = n->in[0];
  d->s = n->in[1];
  d->z = n->n_in > 2 ? n->in[2] : -1;
  d->st = kiln__pass_const_init(ctx, d->s);
  d->zt = d->z >= 0 ? kiln__pass_const_init(ctx, d->z) : NULL;
  d->axis = (int)kiln__attr_int(n, "axis", 1);
  if (!d->st || d->st->dtype != KILN_DTYPE_FLOAT) return false;
  if (d->z >= 0 && (!d->zt || kiln_tensor_count(d->zt) != kiln_tensor_count(d->st))) return false;
  return true;
}

static bool same_const(const kiln_tensor *a, const kiln_tensor *b);

/* A positive, normal float32 scale (a zero, denormal, negative or NaN one is left alone). */
static bool good_scale(float s) { return isnormal(s) && s > 0; }

static bool good_scales(const kiln_tensor *t) {
  const float *p = t->data;
  for (size_t i = 0; i < kiln_tensor_count(t); i++)
    if (!good_scale(p[i])) return false;
  return true;
}

/* Per-tensor activation parameters: one float scale and an 8-bit zero point. */
static bool act_params(const dq *d) {
  return kiln_tensor_count(d->st) == 1 && d->zt && is_q8(d->zt->dtype) &&
         good_scale(*(const float *)d->st->data);
}

static int32_t q8_at(const kiln_tensor *t, size_t i) {
  return t->dtype == KILN_DTYPE_UINT8 ? ((const uint8_t *)t->data)[i]
                                      : ((const int8_t *)t->data)[i];
}

static void q8_range(kiln_dtype t, int32_t *lo, int32_t *hi) {
  *lo = t == KILN_DTYPE_UINT8 ? 0 : -128;
  *hi = t == KILN_DTYPE_UINT8 ? 255 : 127;
}

/* QuantizeLinear of one float the way the reference kernel does it. */
static int32_t quantize1(float v, float s, int32_t z, kiln_dtype t) {
  int32_t lo, hi;
  q8_range(t, &lo, &hi);
  float r = rintf(v / s);
  if (r != r) r = 0.0f;
  double q = (double)r + z;
  return q < lo ? lo : q > hi ? hi : (int32_t)q;
}

/* y = QuantizeLinear(v, ys, yz) per tensor, 8-bit, constants; the node index or -1. */
static int quant_of(const kiln__pass_ctx *ctx, int v, const kiln_tensor **ys, const kiln_tensor **yz) {
  int slot, j = kiln__pass_sole_user(ctx, v, &slot);
  if (j < 0 || slot != 0) return -1;
  const kiln__node *n = &ctx->g->nodes[j];
  if (!kiln__pass_is(n, "QuantizeLinear") || n->n_in != 3 || n->out[0] < 0) return -1;
  if (kiln__attr_find(n, "block_size") || kiln__attr_find(n, "output_dtype")) return -1;
  *ys = kiln__pass_const_init(ctx, n->in[1]);
  *yz = kiln__pass_const_init(ctx, n->in[2]);
  if (!*ys || !*yz || (*ys)->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(*ys) != 1 ||
      !is_q8((*yz)->dtype) || kiln_tensor_count(*yz) != 1 ||
      !good_scale(*(const float *)(*ys)->data))
    return -1;
  return j;
}

/* The Clip bounds of node n (inputs from opset 11, attributes before); false when a bound is not
   a constant. An absent bound is +-infinity. */
static bool clip_bounds(const kiln__pass_ctx *ctx, const kiln__node *n, float *lo, float *hi) {
  *lo = -INFINITY, *hi = INFINITY;
  if (n->opset < 11) {
    *lo = kiln__attr_float(n, "min", -INFINITY);
    *hi = kiln__attr_float(n, "max", INFINITY);
    return true;
  }
  for (int k = 1; k < n->n_in && k < 3; k++) {
    if (n->in[k] < 0) continue;
    double d;
    if (!kiln__pass_const_scalar(ctx, n->in[k], &d)) return false;
    *(k == 1 ? lo : hi) = (float)d;
  }
  return n->n_in <= 3;
}

/* After op output y: [activation] QuantizeLinear. Returns the Q node and sets *act to the
   activation node (or -1) when quantizing makes the activation a no-op. */
static int output_quant(const kiln__pass_ctx *ctx, int y, int *act, const kiln_tensor **ys,
                        const kiln_tensor **yz) {
  *act = -1;
  int q = quant_of(ctx, y, ys, yz);
  if (q >= 0) return q;
  int slot, a = kiln__pass_sole_user(ctx, y, &slot);
  if (a < 0 || slot != 0) return -1;
  const kiln__node *an = &ctx->g->nodes[a];
  bool relu = kiln__pass_is(an, "Relu"), clip = kiln__pass_is(an, "Clip");
  if ((!relu && !clip) || an->n_in < 1) return -1;
  if ((q = quant_of(ctx, an->out[0], ys, yz)) < 0) return -1;
  float s = *(const float *)(*ys)->data, lo = 0, hi = INFINITY;
  int32_t z = q8_at(*yz, 0), qlo, qhi;
  q8_range((*yz)->dtype, &qlo, &qhi);
  if (clip && !clip_bounds(ctx, an, &lo, &hi)) return -1;
  if (lo != lo || hi != hi) return -1;
  bool lo_ok = isinf(lo) ? lo < 0 : quantize1(lo, s, z, (*yz)->dtype) == qlo;
  bool hi_ok = isinf(hi) ? hi > 0 : quantize1(hi, s, z, (*yz)->dtype) == qhi;
  if (!lo_ok || !hi_ok) return -1;
  *act = a;
  return q;
}

/* A weight: constant 8-bit W_q behind a DequantizeLinear whose parameters are per tensor or per
   `out_axis` (of a rank-`rank` weight). */
static bool weight_params(const kiln__pass_ctx *ctx, const dq *d, int out_axis) {
  const kiln_tensor *w = kiln__pass_const_init(ctx, d->x);
  if (!w || !is_q8(w->dtype) || !good_scales(d->st)) return false;
  if (d->zt && d->zt->dtype != w->dtype) return false;
  size_t cnt = kiln_tensor_count(d->st);
  if (cnt == 1) return d->st->rank <= 1 && (!d->zt || d->zt->rank <= 1);
  int ax;
  if (!kiln__norm_axis(d->axis, w->rank, &ax) || ax != out_axis) return false;
  return d->st->rank == 1 && (int64_t)cnt == w->dims[out_axis] && (!d->zt || d->zt->rank == 1);
}

/* The Conv bias: DequantizeLinear(b_q int32 [co], xs * ws[c] bit for bit, zero point 0). */
static bool bias_params(const kiln__pass_ctx *ctx, int v, float xs, const kiln_tensor *ws,
                        int64_t co, int *bq) {
  dq d;
  if (!dq_of(ctx, v, &d)) return false;
  const kiln_tensor *b = kiln__pass_const_init(ctx, d.x);
  if (!b || b->dtype != KILN_DTYPE_INT32 || b->rank != 1 || b->dims[0] != co) return false;
  size_t bc = kiln_tensor_count(d.st), wc = kiln_tensor_count(ws);
  if (bc != 1 && bc != (size_t)co) return false;
  int ax;
  if (bc != 1 && !kiln__norm_axis(d.axis, 1, &ax)) return false;
  if (d.zt) {
    if (d.zt->dtype != KILN_DTYPE_INT32) return false;
    for (size_t i = 0; i < kiln_tensor_count(d.zt); i++)
      if (((const int32_t *)d.zt->data)[i] != 0) return false;
  }
  const float *bs = d.st->data, *w = ws->data;
  for (int64_t c = 0; c < co; c++) {
    float want = xs * w[wc == 1 ? 0 : c], have = bs[bc == 1 ? 0 : c];
    if (want != have) return false;
  }
  *bq = d.x;
  return true;
}

/* W_q [N, K] -> [K, N] (Gemm transB). */
static int transposed_weight(kiln__pass_ctx *ctx, const char *hint, int v) {
  const kiln_tensor *w = &ctx->g->values[v].init;
  int64_t n = w->dims[0], k = w->dims[1], dims[2] = {k, n};
  kiln_tensor t = {0};
  kiln_error local = {0};
  if (kiln_tensor_alloc(&t, w->dtype, 2, dims, &local) != KILN_OK) return -1;
  const uint8_t *src = w->data;
  uint8_t *dst = t.data;
  for (int64_t r = 0; r < n; r++)
    for (int64_t c = 0; c < k; c++) dst[c * n + r] = src[r * k + c];
  return kiln__pass_add_init(ctx, hint, &t);
}

/* A scalar zero of dtype t, for an omitted weight zero point (QLinear ops require one). */
static int zero_point(kiln__pass_ctx *ctx, const char *hint, kiln_dtype t) {
  kiln_tensor z = {0};
  kiln_error local = {0};
  if (kiln_tensor_alloc(&z, t, 0, NULL, &local) != KILN_OK) return -1;
  memset(z.data, 0, kiln_dtype_size(t));
  return kiln__pass_add_init(ctx, hint, &z);
}

/* A float Conv bias on the accumulator's grid, as ONNX Runtime's quantizer writes it:
   b_q[c] = round(b[c] / (xs * ws[c])), saturated to int32. This moves the bias by at most half a
   step of xs * ws[c] before requantization (the one rewrite here that is not within the QDQ
   graph's rounding): the files ORT and Kiln write carry int32 biases already, so this is for
   biases the quantizer left float (Kiln's sees no constant through an Identity). */
static int int32_bias(kiln__pass_ctx *ctx, const char *hint, const kiln_tensor *b, float xs,
                      const kiln_tensor *ws) {
  int64_t co = b->dims[0];
  size_t wc = kiln_tensor_count(ws);
  kiln_tensor t = {0};
  kiln_error local = {0};
  if (kiln_tensor_alloc(&t, KILN_DTYPE_INT32, 1, &co, &local) != KILN_OK) return -1;
  const float *bf = b->data, *w = ws->data;
  int32_t *q = t.data;
  for (int64_t c = 0; c < co; c++) {
    float s = xs * w[wc == 1 ? 0 : c]; /* the bias scale the QDQ form would use */
    double v = nearbyint((double)bf[c] / (double)s);
    if (v != v) v = 0;
    q[c] = (int32_t)(v > 2147483647.0 ? 2147483647.0 : v < -2147483647.0 ? -2147483647.0 : v);
  }
  return kiln__pass_add_init(ctx, hint, &t);
}

static kiln_status oom(kiln__pass_ctx *ctx) {
  return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory fusing a QDQ pattern");
}

/* Tries to fuse node i; *done when it did. */
static kiln_status fuse_one(kiln__pass_ctx *ctx, int i, bool *done) {
  kiln__graph *g = ctx->g;
  *done = false;
  const kiln__node *n = &g->nodes[i];
  bool conv = kiln__pass_is(n, "Conv"), mm = kiln__pass_is(n, "MatMul"),
       gemm = kiln__pass_is(n, "Gemm");
  if (!conv && !mm && !gemm) return KILN_OK;
  if (n->n_in < 2 || n->in[0] < 0 || n->in[1] < 0 || !kiln__pass_value_private(ctx, n->out[0]))
    return KILN_OK;
  bool trans_b = false;
  if (gemm) {
    if (n->n_in > 2 && n->in[2] >= 0) return KILN_OK; /* bias C: no standard QGemm */
    if (kiln__attr_int(n, "transA", 0) != 0 || kiln__attr_float(n, "alpha", 1.0f) != 1.0f)
      return KILN_OK;
    trans_b = kiln__attr_int(n, "transB", 0) != 0;
  }
  if (mm && n->n_in != 2) return KILN_OK;
  dq x, w;
  if (!dq_of(ctx, n->in[0], &x) || !act_params(&x) || !dq_of(ctx, n->in[1], &w)) return KILN_OK;
  const kiln_tensor *wt = kiln__pass_const_init(ctx, w.x);
  if (!wt) return KILN_OK;
  int out_axis;
  if (conv) {
    /* Depthwise convs (one input channel per group, one output each) run on the integer
       depthwise kernel (qconv_dw.c). Other grouped convs stay float: the integer backend runs
       them as one small GEMM per group with per-call packing, slower than float. */
    int64_t group = kiln__attr_int(n, "group", 1);
    if (wt->rank < 3 || (group != 1 && !(wt->dims[1] == 1 && wt->dims[0] == group)))
      return KILN_OK;
    out_axis = 0;
  } else {
    if (wt->rank != 2) return KILN_OK;
    out_axis = trans_b ? 0 : 1;
  }
  if (!weight_params(ctx, &w, out_axis)) return KILN_OK;
  int bq = -1;
  const kiln_tensor *fbias = NULL; /* a float bias, quantized below */
  float xs = *(const float *)x.st->data;
  if (conv && n->n_in > 2 && n->in[2] >= 0 &&
      !bias_params(ctx, n->in[2], xs, w.st, wt->dims[0], &bq)) {
    fbias = kiln__pass_const_f32(ctx, n->in[2]);
    if (!fbias || ctx->g->values[n->in[2]].is_input || fbias->rank != 1 ||
        fbias->dims[0] != wt->dims[0])
      return KILN_OK;
  }
  int act = -1;
  const kiln_tensor *ys, *yz;
  int q = output_quant(ctx, n->out[0], &act, &ys, &yz);
  if (q < 0) return KILN_OK;

  /* Matched: new initializers first (they may move the value array). */
  char hint[160];
  snprintf(hint, sizeof hint, "%.150s", n->name ? n->name : "qdq");
  int wq = w.x, wz = w.z;
  if (trans_b && (wq = transposed_weight(ctx, hint, w.x)) < 0) return oom(ctx);
  if (wz < 0 && (wz = zero_point(ctx, hint, g->values[w.x].init.dtype)) < 0) return oom(ctx);
  if (fbias && (bq = int32_bias(ctx, hint, fbias, xs, w.st)) < 0) return oom(ctx);
  kiln__node *qn = &g->nodes[q];
  int in[9] = {x.x, x.s, x.z, wq, w.s, wz, qn->in[1], qn->in[2], bq};
  kiln__node *fn = &g->nodes[i];
  int64_t opset = fn->opset;
  kiln_status st = kiln__pass_set_op(ctx, fn, "", conv ? "QLinearConv" : "QLinearMatMul");
  if (st == KILN_OK) st = kiln__pass_set_inputs(ctx, fn, in, bq >= 0 ? 9 : 8);
  if (st != KILN_OK) return st;
  fn->opset = opset;
  if (!conv) kiln__pass_clear_attrs(fn); /* QLinearMatMul has none; transB is in W_q */
  fn->out[0] = qn->out[0];
  if (act >= 0)
    kiln__pass_note(ctx, "%s+%s+%s", fn->name, g->nodes[act].name, qn->name);
  else
    kiln__pass_note(ctx, "%s+%s", fn->name, qn->name);
  kiln__pass_kill(ctx, q);
  if (act >= 0) kiln__pass_kill(ctx, act);
  *done = true;
  return KILN_OK;
}

/* A Gemm / MatMul with a float output that fuse_one cannot take (a classifier producing the
   graph's logits, a Gemm with an int32 bias C on the xs * ws grid), on integer activations and a
   constant 8-bit weight:
     MatMulInteger(x_q, W_q [K, N], xz, wz) -> [Add(., b_q)] -> Cast(FLOAT) -> Mul(., xs * ws)
   (ORT runs this pattern as its QGemm with a float output). The sum is exact in int32, then one
   rounding to float and one multiply, where the QDQ graph rounds every product and partial sum:
   within float rounding of it, not bit-exact (level 2). The weight stays 1 byte a value (the
   float fallback, fold_float_weight, reads 4: MobileNetV2's classifier was 5% of its int8 time,
   bound by reading 5 MB of float weights). */
static kiln_status integer_float_out(kiln__pass_ctx *ctx, int i, bool *done) {
  kiln__graph *g = ctx->g;
  *done = false;
  const kiln__node *n = &g->nodes[i];
  bool gemm = kiln__pass_is(n, "Gemm");
  if ((!gemm && !kiln__pass_is(n, "MatMul")) || n->n_in < 2 || n->in[0] < 0 || n->in[1] < 0 ||
      n->opset < 10)
    return KILN_OK;
  bool trans_b = false, bias_c = gemm && n->n_in > 2 && n->in[2] >= 0;
  if (gemm) {
    if (kiln__attr_int(n, "transA", 0) != 0 || kiln__attr_float(n, "alpha", 1.0f) != 1.0f ||
        (bias_c && kiln__attr_float(n, "beta", 1.0f) != 1.0f))
      return KILN_OK;
    trans_b = kiln__attr_int(n, "transB", 0) != 0;
  } else if (n->n_in != 2) {
    return KILN_OK;
  }
  dq x, w;
  if (!dq_of(ctx, n->in[0], &x) || !act_params(&x) || !dq_of(ctx, n->in[1], &w)) return KILN_OK;
  const kiln_tensor *wt = kiln__pass_const_init(ctx, w.x);
  if (!wt || wt->rank != 2 || !weight_params(ctx, &w, trans_b ? 0 : 1)) return KILN_OK;
  int64_t nn = wt->dims[trans_b ? 0 : 1];
  float xs = *(const float *)x.st->data;
  int bq = -1;
  if (bias_c && !bias_params(ctx, n->in[2], xs, w.st, nn, &bq)) return KILN_OK;

  char hint[160];
  snprintf(hint, sizeof hint, "%.150s", n->name ? n->name : "qdq");
  kiln_tensor sc = {0};
  kiln_error local = {0};
  if (kiln_tensor_alloc(&sc, KILN_DTYPE_FLOAT, 1, &nn, &local) != KILN_OK) return oom(ctx);
  size_t wc = kiln_tensor_count(w.st);
  for (int64_t c = 0; c < nn; c++)
    ((float *)sc.data)[c] = xs * ((const float *)w.st->data)[wc == 1 ? 0 : c];
  int sv = kiln__pass_add_init(ctx, hint, &sc), wq = w.x, wz = w.z;
  if (sv < 0) return oom(ctx);
  if (trans_b && (wq = transposed_weight(ctx, hint, w.x)) < 0) return oom(ctx);
  int acc = kiln__pass_new_value(ctx, hint), f = kiln__pass_new_value(ctx, hint);
  int sum = bq >= 0 ? kiln__pass_new_value(ctx, hint) : acc;
  if (acc < 0 || f < 0 || sum < 0) return oom(ctx);
  kiln__node *fn = &g->nodes[i];
  int out = fn->out[0];
  int in[4] = {x.x, wq, x.z, wz};
  kiln_status st = kiln__pass_set_op(ctx, fn, "", "MatMulInteger");
  if (st == KILN_OK) st = kiln__pass_set_inputs(ctx, fn, in, wz >= 0 ? 4 : 3);
  if (st != KILN_OK) return st;
  kiln__pass_clear_attrs(fn);
  fn->out[0] = acc;
  char name[200];
  if (bq >= 0) {
    int ab[2] = {acc, bq};
    snprintf(name, sizeof name, "%.150s/kiln_bias", hint);
    if (kiln__pass_add_node(ctx, name, "", "Add", ab, 2, &sum, 1) < 0) return oom(ctx);
  }
  snprintf(name, sizeof name, "%.150s/kiln_cast", hint);
  int c = kiln__pass_add_node(ctx, name, "", "Cast", &sum, 1, &f, 1);
  if (c < 0) return oom(ctx);
  if ((st = kiln__pass_add_attr_int(ctx, &g->nodes[c], "to", KILN_DTYPE_FLOAT)) != KILN_OK)
    return st;
  int fs[2] = {f, sv};
  snprintf(name, sizeof name, "%.150s/kiln_scale", hint);
  if (kiln__pass_add_node(ctx, name, "", "Mul", fs, 2, &out, 1) < 0) return oom(ctx);
  kiln__pass_note(ctx, "%s on integers, float out", hint);
  *done = true;
  return KILN_OK;
}

/* A float Gemm / MatMul that neither fuse_one nor integer_float_out takes (its input not
   dequantized, a float bias C, a bias scale off the xs * ws grid) keeps a weight
   DequantizeLinear(W_q constant) that would run on every call, followed by the SGEMM packing
   the computed B again (10% of mobilenet_v2 int8).
   The weight is replaced by the float initializer DequantizeLinear computes,
   (float)(q - z) * s per element as the reference kernel does: bit-identical values, 4 bytes per
   weight instead of 1 for the layers left float. */
static kiln_status fold_float_weight(kiln__pass_ctx *ctx, int i, bool *done) {
  kiln__graph *g = ctx->g;
  *done = false;
  const kiln__node *n = &g->nodes[i];
  bool gemm = kiln__pass_is(n, "Gemm");
  if ((!gemm && !kiln__pass_is(n, "MatMul")) || n->n_in < 2 || n->in[1] < 0) return KILN_OK;
  int act;
  const kiln_tensor *ys, *yz;
  bool bias_c = gemm && n->n_in > 2 && n->in[2] >= 0;
  if (!bias_c && output_quant(ctx, n->out[0], &act, &ys, &yz) >= 0) return KILN_OK; /* fusable */
  dq w;
  if (!dq_of(ctx, n->in[1], &w) || !good_scales(w.st)) return KILN_OK;
  const kiln_tensor *wt = kiln__pass_const_init(ctx, w.x);
  if (!wt || !is_q8(wt->dtype) || wt->rank != 2 || (w.zt && w.zt->dtype != wt->dtype))
    return KILN_OK;
  size_t sc = kiln_tensor_count(w.st), cnt = kiln_tensor_count(wt);
  int ax = 0;
  if (sc != 1 && (w.st->rank != 1 || !kiln__norm_axis(w.axis, 2, &ax) ||
                  (int64_t)sc != wt->dims[ax]))
    return KILN_OK;
  kiln_tensor t = {0};
  kiln_error local = {0};
  if (kiln_tensor_alloc(&t, KILN_DTYPE_FLOAT, 2, wt->dims, &local) != KILN_OK) return oom(ctx);
  const float *sp = w.st->data;
  float *dst = t.data;
  size_t cols = (size_t)wt->dims[1];
  for (size_t e = 0; e < cnt; e++) {
    size_t k = sc == 1 ? 0 : ax == 0 ? e / cols : e % cols;
    int32_t z = w.zt ? q8_at(w.zt, k) : 0;
    dst[e] = (float)(q8_at(wt, e) - z) * sp[k];
  }
  char hint[160];
  snprintf(hint, sizeof hint, "%.150s", n->name ? n->name : "qdq");
  int v = kiln__pass_add_init(ctx, hint, &t);
  if (v < 0) return oom(ctx);
  n = &g->nodes[i];
  kiln__pass_note(ctx, "%s weight dequantized at load", n->name);
  g->nodes[i].in[1] = v;
  *done = true;
  return KILN_OK;
}

/* ---- integer chains: MaxPool and Concat between fused convs -------------------------------- */

/* The inputs of Concat node n as DequantizeLinear(x_i, s_i, z_i), per tensor, every x_i (and
   z_i) of dtype t; false otherwise. */
static bool concat_dq_inputs(const kiln__pass_ctx *ctx, const kiln__node *n, kiln_dtype t) {
  if (n->n_in < 1 || !kiln__attr_find(n, "axis")) return false;
  for (int k = 0; k < n->n_in; k++) {
    dq d;
    if (!dq_of(ctx, n->in[k], &d) || !act_params(&d) || d.zt->dtype != t) /* x's type too */
      return false;
  }
  return true;
}

/* Concat node c becomes com.microsoft QLinearConcat(ys, yz, (x_i, s_i, z_i)...) writing `out`;
   or, when every input already has the output's scale and zero point (the int8 quantizer gives
   a Concat's inputs its range), a Concat of the 8-bit x_i: Q(DQ(x)) = x with equal parameters
   (fold_pair), so that is exact, and the planner can then compute it in place (no copy). */
static kiln_status to_qconcat(kiln__pass_ctx *ctx, int c, int ys, int yz, int out) {
  kiln__graph *g = ctx->g;
  const kiln__node *n = &g->nodes[c];
  int in[2 + 3 * 64];
  if (n->n_in > 64) return KILN_OK; /* not matched by the callers */
  in[0] = ys;
  in[1] = yz;
  bool same = kiln__pass_const_init(ctx, ys) && kiln__pass_const_init(ctx, yz);
  for (int k = 0; k < n->n_in; k++) {
    const kiln__node *d = &g->nodes[g->values[n->in[k]].producer];
    in[2 + 3 * k] = d->in[0];
    in[3 + 3 * k] = d->in[1];
    in[4 + 3 * k] = d->in[2];
    same = same && kiln__pass_const_init(ctx, d->in[1]) && kiln__pass_const_init(ctx, d->in[2]) &&
           same_const(kiln__pass_const_init(ctx, d->in[1]), kiln__pass_const_init(ctx, ys)) &&
           same_const(kiln__pass_const_init(ctx, d->in[2]), kiln__pass_const_init(ctx, yz));
  }
  kiln__node *cn = &g->nodes[c];
  if (same) {
    for (int k = 0; k < n->n_in; k++) in[k] = in[2 + 3 * k];
    kiln_status st = kiln__pass_set_inputs(ctx, cn, in, n->n_in);
    if (st == KILN_OK) cn->out[0] = out;
    return st;
  }
  int cnt = 2 + 3 * n->n_in;
  kiln_status st = kiln__pass_set_op(ctx, cn, "com.microsoft", "QLinearConcat");
  if (st == KILN_OK) st = kiln__pass_set_inputs(ctx, cn, in, cnt);
  if (st == KILN_OK) cn->out[0] = out;
  return st;
}

/* DequantizeLinear(x_i) ... -> Concat -> QuantizeLinear(ys, yz)  ==>  QLinearConcat, which
   computes Q(DQ(x_i)) per element in the same float operations: bit-identical. */
static kiln_status concat_q(kiln__pass_ctx *ctx, int i, bool *done) {
  kiln__graph *g = ctx->g;
  *done = false;
  const kiln__node *n = &g->nodes[i];
  if (!kiln__pass_is(n, "Concat") || n->n_in > 64 || !kiln__pass_value_private(ctx, n->out[0]))
    return KILN_OK;
  const kiln_tensor *ys, *yz;
  int q = quant_of(ctx, n->out[0], &ys, &yz);
  if (q < 0 || !concat_dq_inputs(ctx, n, yz->dtype)) return KILN_OK;
  const kiln__node *qn = &g->nodes[q];
  int qys = qn->in[1], qyz = qn->in[2], out = qn->out[0];
  kiln__pass_note(ctx, "%s+%s", n->name, qn->name);
  kiln__pass_kill(ctx, q);
  kiln_status st = to_qconcat(ctx, i, qys, qyz, out);
  *done = st == KILN_OK;
  return st;
}

/* MaxPool -> QuantizeLinear(ys, yz) on an 8-bit path:
     DequantizeLinear(x, ys, yz) -> MaxPool -> Q          ==>  MaxPool(x)
     DequantizeLinear(x_i)... -> Concat -> MaxPool -> Q   ==>  QLinearConcat(ys, yz) -> MaxPool
   Exact: DequantizeLinear and QuantizeLinear are monotone (positive scales) and the inputs are
   dequantized integers (never NaN), so max commutes with both; Q(DQ(x)) = x with the same
   parameters (fold_pair). Explicit pads must be smaller than the kernel, so every window holds
   an input element (ceil_mode drops windows that start in the padding). */
static kiln_status pool_q(kiln__pass_ctx *ctx, int i, bool *done) {
  kiln__graph *g = ctx->g;
  *done = false;
  const kiln__node *n = &g->nodes[i];
  if (!kiln__pass_is(n, "MaxPool") || n->n_in != 1 || n->in[0] < 0 ||
      !kiln__pass_value_private(ctx, n->out[0]))
    return KILN_OK;
  const int64_t *ks, *pads;
  size_t nk = kiln__attr_ints(n, "kernel_shape", &ks), np = kiln__attr_ints(n, "pads", &pads);
  if (!nk || (np && np != 2 * nk)) return KILN_OK;
  for (size_t d = 0; d < np; d++)
    if (pads[d] >= ks[d % nk]) return KILN_OK;
  const kiln_tensor *ys, *yz;
  int q = quant_of(ctx, n->out[0], &ys, &yz);
  if (q < 0) return KILN_OK;
  const kiln__node *qn = &g->nodes[q];
  int qys = qn->in[1], qyz = qn->in[2], out = qn->out[0];
  kiln_dtype t = yz->dtype; /* x of a DequantizeLinear has its zero point's type */
  dq d;
  if (dq_of(ctx, n->in[0], &d)) {
    if (!act_params(&d) || !same_const(d.st, ys) || !same_const(d.zt, yz)) return KILN_OK;
    kiln__pass_note(ctx, "%s+%s", n->name, qn->name);
    kiln__pass_kill(ctx, q);
    g->nodes[i].in[0] = d.x;
    g->nodes[i].out[0] = out;
    *done = true;
    return KILN_OK;
  }
  int c = producer_is(ctx, n->in[0], "Concat");
  if (c < 0 || !kiln__pass_value_private(ctx, n->in[0]) || g->nodes[c].n_in > 64 ||
      !concat_dq_inputs(ctx, &g->nodes[c], t))
    return KILN_OK;
  char hint[160];
  snprintf(hint, sizeof hint, "%.140s/q8", g->nodes[c].name ? g->nodes[c].name : "concat");
  int v8 = kiln__pass_new_value(ctx, hint);
  if (v8 < 0) return oom(ctx);
  g->values[v8].dtype = t;
  n = &g->nodes[i];
  qn = &g->nodes[q];
  kiln__pass_note(ctx, "%s+%s+%s", g->nodes[c].name, n->name, qn->name);
  kiln__pass_kill(ctx, q);
  kiln_status st = to_qconcat(ctx, c, qys, qyz, v8);
  if (st != KILN_OK) return st;
  g->nodes[i].in[0] = v8;
  g->nodes[i].out[0] = out;
  *done = true;
  return KILN_OK;
}

/* ---- integer chains: residual Add and GlobalAveragePool -------------------------------------- */

/* DequantizeLinear(a_q, sa, za), DequantizeLinear(b_q, sb, zb) -> Add -> [Relu | Clip] ->
   QuantizeLinear(sc, zc)  ==>  com.microsoft QLinearAdd(a_q, sa, za, b_q, sb, zb, sc, zc), which
   computes Q(DQ(a) + DQ(b)) per element in the same float operations (with broadcasting):
   bit-identical. The activation is dropped under output_quant's rule (exact too). */
static kiln_status add_q(kiln__pass_ctx *ctx, int i, bool *done) {
  kiln__graph *g = ctx->g;
  *done = false;
  const kiln__node *n = &g->nodes[i];
  if (!kiln__pass_is(n, "Add") || n->n_in != 2 || n->in[0] < 0 || n->in[1] < 0 ||
      !kiln__pass_value_private(ctx, n->out[0]))
    return KILN_OK;
  dq a, b;
  if (!dq_of(ctx, n->in[0], &a) || !act_params(&a) || !dq_of(ctx, n->in[1], &b) ||
      !act_params(&b) || a.zt->dtype != b.zt->dtype)
    return KILN_OK;
  int act;
  const kiln_tensor *ys, *yz;
  int q = output_quant(ctx, n->out[0], &act, &ys, &yz);
  if (q < 0 || yz->dtype != a.zt->dtype) return KILN_OK;
  const kiln__node *qn = &g->nodes[q];
  int in[8] = {a.x, a.s, a.z, b.x, b.s, b.z, qn->in[1], qn->in[2]}, out = qn->out[0];
  if (act >= 0)
    kiln__pass_note(ctx, "%s+%s+%s", n->name, g->nodes[act].name, qn->name);
  else
    kiln__pass_note(ctx, "%s+%s", n->name, qn->name);
  kiln__pass_kill(ctx, q);
  if (act >= 0) kiln__pass_kill(ctx, act);
  kiln__node *an = &g->nodes[i];
  kiln_status st = kiln__pass_set_op(ctx, an, "com.microsoft", "QLinearAdd");
  if (st == KILN_OK) st = kiln__pass_set_inputs(ctx, an, in, 8);
  if (st != KILN_OK) return st;
  an->out[0] = out;
  *done = true;
  return KILN_OK;
}

/* DequantizeLinear(x_q, xs, xz) -> GlobalAveragePool -> QuantizeLinear(ys, yz)  ==>
   com.microsoft QLinearGlobalAveragePool(x_q, xs, xz, ys, yz): the exact int32 sum requantized
   once, where the QDQ graph sums dequantized floats, divides and quantizes; an output may move by
   one step of ys (level 2, like QLinearConv). */
static kiln_status gap_q(kiln__pass_ctx *ctx, int i, bool *done) {
  kiln__graph *g = ctx->g;
  *done = false;
  const kiln__node *n = &g->nodes[i];
  if (!kiln__pass_is(n, "GlobalAveragePool") || n->n_in != 1 || n->in[0] < 0 ||
      !kiln__pass_value_private(ctx, n->out[0]))
    return KILN_OK;
  dq x;
  const kiln_tensor *ys, *yz;
  if (!dq_of(ctx, n->in[0], &x) || !act_params(&x)) return KILN_OK;
  int q = quant_of(ctx, n->out[0], &ys, &yz);
  if (q < 0 || yz->dtype != x.zt->dtype) return KILN_OK;
  const kiln__node *qn = &g->nodes[q];
  int in[5] = {x.x, x.s, x.z, qn->in[1], qn->in[2]}, out = qn->out[0];
  kiln__pass_note(ctx, "%s+%s", n->name, qn->name);
  kiln__pass_kill(ctx, q);
  kiln__node *pn = &g->nodes[i];
  kiln_status st = kiln__pass_set_op(ctx, pn, "com.microsoft", "QLinearGlobalAveragePool");
  if (st == KILN_OK) st = kiln__pass_set_inputs(ctx, pn, in, 5);
  if (st != KILN_OK) return st;
  pn->out[0] = out;
  *done = true;
  return KILN_OK;
}

static bool same_const(const kiln_tensor *a, const kiln_tensor *b) {
  if (a == b) return true;
  if (a->dtype != b->dtype || kiln_tensor_count(a) != kiln_tensor_count(b)) return false;
  return !memcmp(a->data, b->data, kiln_tensor_nbytes(a));
}

/* DequantizeLinear(x_q, s, z) -> QuantizeLinear(s, z) -> y  ==>  readers of y read x_q. */
static bool fold_pair(kiln__pass_ctx *ctx, int i) {
  kiln__graph *g = ctx->g;
  const kiln__node *qn = &g->nodes[i];
  if (!kiln__pass_is(qn, "QuantizeLinear") || qn->n_in != 3 || qn->in[1] < 0 || qn->in[2] < 0)
    return false;
  if (kiln__attr_find(qn, "block_size") || kiln__attr_find(qn, "output_dtype")) return false;
  int y = qn->out[0];
  if (y < 0 || !kiln__pass_value_private(ctx, y)) return false;
  dq d;
  if (!dq_of(ctx, qn->in[0], &d) || !d.zt || !is_q8(d.zt->dtype) || !good_scales(d.st))
    return false;
  const kiln_tensor *s = kiln__pass_const_init(ctx, qn->in[1]), *z = kiln__pass_const_init(ctx, qn->in[2]);
  if (!s || !z || !same_const(s, d.st) || !same_const(z, d.zt)) return false;
  if (kiln_tensor_count(s) != 1) { /* per axis: the same axis too */
    int dn = g->values[qn->in[0]].producer;
    if (kiln__attr_int(&g->nodes[dn], "axis", 1) != kiln__attr_int(qn, "axis", 1)) return false;
  }
  kiln__pass_replace_uses(ctx, y, d.x);
  kiln__pass_note(ctx, "%s+%s", g->nodes[g->values[qn->in[0]].producer].name, qn->name);
  kiln__pass_kill(ctx, i);
  return true;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    if (fold_pair(ctx, i)) {
      *changed = true;
      continue;
    }
    bool done;
    kiln_status st = fuse_one(ctx, i, &done);
    if (st == KILN_OK && !done) st = integer_float_out(ctx, i, &done);
    if (st == KILN_OK && !done) st = fold_float_weight(ctx, i, &done);
    if (st == KILN_OK && !done) st = pool_q(ctx, i, &done);
    if (st == KILN_OK && !done) st = concat_q(ctx, i, &done);
    if (st == KILN_OK && !done) st = add_q(ctx, i, &done);
    if (st == KILN_OK && !done) st = gap_q(ctx, i, &done);
    if (st != KILN_OK) return st;
    *changed |= done;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_fuse_qdq = {"fuse-qdq", 2, run};
