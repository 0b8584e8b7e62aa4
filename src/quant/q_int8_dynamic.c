/* int8-dynamic: ONNX Runtime's quantize_dynamic layout for MatMul and Gemm with a constant 2-D
 * float32 weight. Weights int8, symmetric per output column; activations quantized per tensor at
 * run time, or per row (opts.per_row) in standard ops that Kiln fuses (fuse-rowq). */
#include <math.h>
#include <stdio.h>

#include "quant/quant.h"

/* Symmetric per-column int8 quantization of W viewed as [K, N] (or [N, K] when `trans`): fills
   q [K, N] and scale [N]. A zero column gets scale 1 so the runtime never divides by zero. */
void kiln__quant_weight_s8(const float *w, size_t k, size_t n, bool trans, int qmax, int8_t *q,
                           float *scale) {
  for (size_t c = 0; c < n; c++) {
    float amax = 0;
    for (size_t r = 0; r < k; r++) {
      float x = fabsf(trans ? w[c * k + r] : w[r * n + c]);
      if (x > amax) amax = x;
    }
    float s = amax > 0 ? amax / (float)qmax : 1.0f;
    scale[c] = s;
    for (size_t r = 0; r < k; r++) {
      float x = (trans ? w[c * k + r] : w[r * n + c]) / s;
      long v = lrintf(x);
      q[r * n + c] = (int8_t)(v > qmax ? qmax : v < -qmax ? -qmax : v);
    }
  }
}

/* The int8 weight [K, N] and its scales [N] for weight v, converted once per orientation. */
static kiln_status int8_weight(kiln__qctx *q, int v, bool trans, int *wq, int *ws) {
  int *cw, *cs;
  kiln_status st = kiln__qcache(q, trans ? KILN__QTAG_S8T_W : KILN__QTAG_S8_W, &cw);
  if (st == KILN_OK) st = kiln__qcache(q, trans ? KILN__QTAG_S8T_S : KILN__QTAG_S8_S, &cs);
  if (st != KILN_OK) return st;
  if (cw[v] >= 0) {
    *wq = cw[v], *ws = cs[v];
    return KILN_OK;
  }
  const kiln_tensor *w = &q->g->values[v].init;
  size_t k = (size_t)(trans ? w->dims[1] : w->dims[0]), n = (size_t)(trans ? w->dims[0] : w->dims[1]);
  int64_t qd[2] = {(int64_t)k, (int64_t)n}, sd[1] = {(int64_t)n};
  kiln_tensor tq, ts;
  st = kiln_tensor_alloc(&tq, KILN_DTYPE_INT8, 2, qd, q->err);
  if (st != KILN_OK) return st;
  if ((st = kiln_tensor_alloc(&ts, KILN_DTYPE_FLOAT, 1, sd, q->err)) != KILN_OK) {
    kiln_tensor_release(&tq);
    return st;
  }
  kiln__quant_weight_s8(w->data, k, n, trans, q->opts->reduce_range ? 63 : 127, tq.data,
                        ts.data);
  char hint[256];
  snprintf(hint, sizeof hint, "%.200s", q->g->values[v].name);
  int a = kiln__qinit(q, hint, &tq);
  int b = kiln__qinit(q, hint, &ts);
  if (a < 0 || b < 0) {
    kiln_tensor_release(&tq);
    kiln_tensor_release(&ts);
    return kiln__qoom(q);
  }
  cw[v] = a, cs[v] = b;
  q->st.weights_converted++;
  q->st.weight_bytes_before += k * n * 4;
  q->st.weight_bytes_after += k * n + n * 4;
  *wq = a, *ws = b;
  return KILN_OK;
}

/* The last nodes of both layouts: Mul(in[0], in[1]) (named base/what) writes node i's output,
   or with a bias a fresh value that Add(., bias) turns into it; node i becomes the last node. */
static kiln_status rescale_bias(kiln__qctx *q, int i, const char *base, const char *what,
                                const int in[2], int bias) {
  char name[256];
  int y = q->g->nodes[i].out[0];
  snprintf(name, sizeof name, "%s/%s", base, what);
  if (bias < 0) return kiln__qnode_set(q, &q->g->nodes[i], name, "Mul", in, 2, &y, 1);
  int ys = kiln__qvalue(q, base);
  if (ys < 0) return kiln__qoom(q);
  if (kiln__qnode_add(q, name, "Mul", in, 2, &ys, 1) < 0) return KILN_NO_MEMORY;
  int b_in[2] = {ys, bias};
  snprintf(name, sizeof name, "%s/bias", base);
  return kiln__qnode_set(q, &q->g->nodes[i], name, "Add", b_in, 2, &y, 1);
}

/* MatMulInteger(mm_in[0..2]) -> Y_i32 -> Cast(to=FLOAT) -> *yf, named after base. */
static kiln_status int_product(kiln__qctx *q, const char *base, const int mm_in[3], int *yf) {
  char name[256];
  int yi = kiln__qvalue(q, base);
  if (yi < 0 || (*yf = kiln__qvalue(q, base)) < 0) return kiln__qoom(q);
  snprintf(name, sizeof name, "%s/matmul_integer", base);
  if (kiln__qnode_add(q, name, "MatMulInteger", mm_in, 3, &yi, 1) < 0) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/cast", base);
  return kiln__qcast(q, name, yi, *yf, KILN_DTYPE_FLOAT);
}

/* Rewrites node i, Y = A W (+ C), as
     DynamicQuantizeLinear(A) -> a_q, a_scale, a_zp
     MatMulInteger(a_q, W_q, a_zp) -> Y_i32;  Cast(Y_i32, to=float) -> Y_f
     Mul(a_scale, W_scale) -> s;  Mul(Y_f, s) -> Y  (or -> Y_s, then Add(Y_s, C) -> Y)
   the layout ONNX Runtime's quantize_dynamic writes. */
static kiln_status int8_node(kiln__qctx *q, int i, int a, int w, bool trans, int bias) {
  int wq = -1, ws = -1;
  kiln_status st = int8_weight(q, w, trans, &wq, &ws);
  if (st != KILN_OK) return st;
  char base[220], name[256];
  kiln__qbase(q, i, base, sizeof base);
  int aq = kiln__qvalue(q, base), as = kiln__qvalue(q, base), az = kiln__qvalue(q, base);
  int sc = kiln__qvalue(q, base), yf = -1;
  if (aq < 0 || as < 0 || az < 0 || sc < 0) return kiln__qoom(q);
  int dq_out[3] = {aq, as, az}, mm_in[3] = {aq, wq, az}, s_in[2] = {as, ws};
  snprintf(name, sizeof name, "%s/dynamic_quantize", base);
  if (kiln__qnode_add(q, name, "DynamicQuantizeLinear", &a, 1, dq_out, 3) < 0) return KILN_NO_MEMORY;
  if ((st = int_product(q, base, mm_in, &yf)) != KILN_OK) return st;
  int y_in[2] = {yf, sc};
  snprintf(name, sizeof name, "%s/scale", base);
  if (kiln__qnode_add(q, name, "Mul", s_in, 2, &sc, 1) < 0) return KILN_NO_MEMORY;
  return rescale_bias(q, i, base, "rescale", y_in, bias);
}

/* A float32 scalar initializer; -1 when out of memory. */
static int scalar_f32(kiln__qctx *q, const char *hint, float v) {
  kiln_tensor t;
  kiln_error e = {0};
  if (kiln_tensor_alloc(&t, KILN_DTYPE_FLOAT, 0, NULL, &e) != KILN_OK) return -1;
  *(float *)t.data = v;
  return kiln__qinit(q, hint, &t);
}

/* The per-row quantization of activation a (its last axis) and its zero point for
   MatMulInteger, made once per activation so that the MatMuls reading one tensor (Q, K and V)
   share them:
     s = Max(Div(ReduceMax(Abs(A), axes=[-1], keepdims=1), 127), FLT_MIN)      [..., M, 1]
     a_q = Cast(Add(Round(Div(A, s)), 128), to=UINT8)                   in [1, 255], zero 128
   Symmetric values stored as uint8 with zero point 128 rather than as int8: ONNX Runtime's
   MatMulInteger runs int8 x int8 on a slow generic path (bert_tiny per row: 22.2 ms against
   3.8 with uint8 activations). The FLT_MIN floor keeps an all-zero row's scale positive (it
   quantizes to 0). */
static kiln_status row_quantize(kiln__qctx *q, int a, const char *base, int *aq_out, int *sc_out,
                                int *zp_out) {
  int *cq = NULL, *cs = NULL, *cz = NULL;
  kiln_status st = KILN_OK;
  if (a < q->n_orig) {
    if ((st = kiln__qcache(q, KILN__QTAG_ROW_Q, &cq)) != KILN_OK ||
        (st = kiln__qcache(q, KILN__QTAG_ROW_S, &cs)) != KILN_OK ||
        (st = kiln__qcache(q, KILN__QTAG_ROW_Z, &cz)) != KILN_OK)
      return st;
    if (cq[a] >= 0) {
      *aq_out = cq[a], *sc_out = cs[a], *zp_out = cz[a];
      return KILN_OK;
    }
  }
  char name[256];
  int v[8];
  for (int k = 0; k < 8; k++)
    if ((v[k] = kiln__qvalue(q, base)) < 0) return kiln__qoom(q);
  int ax = v[0], amax = v[1], s0 = v[2], sc = v[3], af = v[4], ar = v[5], ao = v[6], aq = v[7];
  int c127 = scalar_f32(q, base, 127.0f), tiny = scalar_f32(q, base, 1.17549435e-38f);
  int c128 = scalar_f32(q, base, 128.0f), az = -1;
  if (c127 < 0 || tiny < 0 || c128 < 0) return kiln__qoom(q);
  kiln_tensor zt; /* the zero point of A_q for MatMulInteger */
  if ((st = kiln_tensor_alloc(&zt, KILN_DTYPE_UINT8, 0, NULL, q->err)) != KILN_OK) return st;
  *(uint8_t *)zt.data = 128;
  if ((az = kiln__qinit(q, base, &zt)) < 0) return kiln__qoom(q);
  int64_t last = -1;
  snprintf(name, sizeof name, "%s/abs", base);
  if (kiln__qnode_add(q, name, "Abs", &a, 1, &ax, 1) < 0) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/row_max", base);
  int rm_in[2] = {ax, -1}, k;
  if (q->g->opset >= 18) { /* axes became an input */
    kiln_tensor t;
    int64_t one = 1;
    if (kiln_tensor_alloc(&t, KILN_DTYPE_INT64, 1, &one, q->err) != KILN_OK) return q->err->status;
    *(int64_t *)t.data = last;
    if ((rm_in[1] = kiln__qinit(q, base, &t)) < 0) return kiln__qoom(q);
  }
  if ((k = kiln__qnode_add(q, name, "ReduceMax", rm_in, rm_in[1] >= 0 ? 2 : 1, &amax, 1)) < 0)
    return KILN_NO_MEMORY;
  if (rm_in[1] < 0 && (st = kiln__qattr_ints(q, k, "axes", &last, 1)) != KILN_OK) return st;
  if ((st = kiln__qattr_int(q, k, "keepdims", 1)) != KILN_OK) return st;
  int d0[2] = {amax, c127}, mx[2] = {s0, tiny}, d1[2] = {a, sc};
  snprintf(name, sizeof name, "%s/row_scale", base);
  if (kiln__qnode_add(q, name, "Div", d0, 2, &s0, 1) < 0) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/row_scale_floor", base);
  if (kiln__qnode_add(q, name, "Max", mx, 2, &sc, 1) < 0) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/row_quantize", base);
  if (kiln__qnode_add(q, name, "Div", d1, 2, &af, 1) < 0) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/round", base);
  if (kiln__qnode_add(q, name, "Round", &af, 1, &ar, 1) < 0) return KILN_NO_MEMORY;
  int o_in[2] = {ar, c128};
  snprintf(name, sizeof name, "%s/offset", base);
  if (kiln__qnode_add(q, name, "Add", o_in, 2, &ao, 1) < 0) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/to_uint8", base);
  if ((st = kiln__qcast(q, name, ao, aq, KILN_DTYPE_UINT8)) != KILN_OK) return st;
  if (cq) cq[a] = aq, cs[a] = sc, cz[a] = az;
  *aq_out = aq, *sc_out = sc, *zp_out = az;
  return KILN_OK;
}

/* The per-row form (opts.per_row): A's rows quantized by row_quantize(), then
     Y = Mul(Mul(Cast(MatMulInteger(a_q, W_q, 128), to=FLOAT), W_scale), s) [+ C]
   Symmetric rows: ONNX Runtime's MatMulInteger takes only a scalar a_zero_point, so an
   asymmetric per-row form (a zero point per row) would not run there. */
static kiln_status int8_row_node(kiln__qctx *q, int i, int a, int w, bool trans, int bias) {
  int wq = -1, ws = -1;
  kiln_status st = int8_weight(q, w, trans, &wq, &ws);
  if (st != KILN_OK) return st;
  char base[220], name[256];
  kiln__qbase(q, i, base, sizeof base);
  int aq = -1, sc = -1, az = -1, yf = -1;
  if ((st = row_quantize(q, a, base, &aq, &sc, &az)) != KILN_OK) return st;
  int mm_in[3] = {aq, wq, az};
  if ((st = int_product(q, base, mm_in, &yf)) != KILN_OK) return st;
  int y1 = kiln__qvalue(q, base);
  if (y1 < 0) return kiln__qoom(q);
  int m1[2] = {yf, ws}, m2[2] = {y1, sc};
  snprintf(name, sizeof name, "%s/weight_scale", base);
  if (kiln__qnode_add(q, name, "Mul", m1, 2, &y1, 1) < 0) return KILN_NO_MEMORY;
  return rescale_bias(q, i, base, "row_rescale", m2, bias);
}

static kiln_status int8_dynamic_node(kiln__qctx *q, int i, kiln__qoutcome *out) {
  const kiln__node *n = &q->g->nodes[i];
  bool mm = kiln__qis_op(n, "MatMul"), gemm = kiln__qis_op(n, "Gemm");
  /* Conv is a candidate kept float by design: there is no ConvInteger rewrite (yet) */
  *out = kiln__qis_op(n, "Conv") ? KILN__Q_KEPT_FLOAT : KILN__Q_NOT_CANDIDATE;
  if (!mm && !gemm) return KILN_OK;
  *out = KILN__Q_KEPT_FLOAT;
  int w = n->n_in > 1 ? n->in[1] : -1;
  const kiln_tensor *wt = kiln__qweight_f32(q, w);
  bool ok = wt && wt->rank == 2 && wt->dims[0] > 0 && wt->dims[1] > 0 && n->n_out == 1;
  bool trans = false;
  int bias = -1;
  if (ok && gemm) {
    trans = kiln__attr_int(n, "transB", 0) != 0;
    bias = n->n_in > 2 ? n->in[2] : -1;
    ok = kiln__attr_int(n, "transA", 0) == 0 && kiln__attr_float(n, "alpha", 1.0f) == 1.0f &&
         (bias < 0 || kiln__attr_float(n, "beta", 1.0f) == 1.0f);
  }
  if (!ok) return KILN_OK;
  kiln_status st = (q->opts->per_row ? int8_row_node : int8_node)(q, i, n->in[0], w, trans, bias);
  if (st == KILN_OK) *out = KILN__Q_QUANTIZED;
  return st;
}

const kiln__quant_format_impl kiln__quant_int8_dynamic = {
    .format = KILN_QUANT_INT8_DYNAMIC,
    .name = "int8-dynamic",
    .min_opset = 11, /* DynamicQuantizeLinear */
    .nothing_msg = "nothing to quantize: no MatMul or Gemm with a constant 2-D float32 weight "
                   "(int8-dynamic keeps Conv in float)",
    .node = int8_dynamic_node,
};
