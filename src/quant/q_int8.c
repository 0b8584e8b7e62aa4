/* int8 (static): ONNX Runtime's QDQ format (quantize_static with QuantFormat.QDQ) for Conv,
 * MatMul and Gemm with a constant float32 weight:
 *
 *   x -> QuantizeLinear(x_scale, x_zp: uint8) -> DequantizeLinear -> x'      per tensor, calibrated
 *   W_q (int8) -> DequantizeLinear(w_scale[C], w_zp[C] = 0, axis) -> W'      per output channel
 *   b_q (int32) -> DequantizeLinear(x_scale * w_scale[C], axis 0) -> b'
 *   Conv|MatMul|Gemm(x', W', b') -> y_f -> QuantizeLinear -> DequantizeLinear -> y
 *
 * Each activation tensor is quantized once, whatever reads it; a node's output gets its pair
 * unless it is a graph output (the final logits stay float), or after the Relu / Clip(0, .) that
 * alone reads it (act_after). An Add whose two inputs are quantized so, and a GlobalAveragePool
 * whose input is, get the pairs on their inputs and output too (ResNet's residual adds and final
 * pool: chain_node), so that the integer chain does not break. Every other op (Softmax, LayerNorm,
 * attention's products of two activations) reads float as before. The arithmetic is still
 * float32 in the file; a runtime that recognises the pattern runs it in integers. */
#include <math.h>
#include <stdio.h>

#include "quant/quant.h"

typedef struct i8state {
  float *lo, *hi;   /* calibrated range per original value */
  bool *has;        /* a range was calibrated */
  int *w_scale;     /* a converted weight's scale initializer (value index) */
  int *w_axis;      /* and the axis it was quantized along */
  bool *chain;      /* per node: an Add / GlobalAveragePool that joins the integer chain */
} i8state;

void kiln__quant_weight_s8_axis(const float *w, size_t outer, size_t ch, size_t inner, int qmax,
                                int8_t *q, float *scale) {
  for (size_t c = 0; c < ch; c++) {
    float amax = 0;
    for (size_t o = 0; o < outer; o++)
      for (size_t i = 0; i < inner; i++) amax = fmaxf(amax, fabsf(w[(o * ch + c) * inner + i]));
    float s = amax > 0 ? amax / (float)qmax : 1.0f;
    scale[c] = s;
    for (size_t o = 0; o < outer; o++)
      for (size_t i = 0; i < inner; i++) {
        size_t at = (o * ch + c) * inner + i;
        long v = lrintf(w[at] / s);
        q[at] = (int8_t)(v > qmax ? qmax : v < -qmax ? -qmax : v);
      }
  }
}

/* The node's weight, its channel axis (the output channel) and its bias; false when the node
   is not one this format converts. */
static bool candidate(const kiln__qctx *q, const kiln__node *n, int *axis, int *bias) {
  bool conv = kiln__qis_op(n, "Conv"), mm = kiln__qis_op(n, "MatMul"), gemm = kiln__qis_op(n, "Gemm");
  if ((!conv && !mm && !gemm) || n->n_in < 2 || n->n_out != 1 || n->in[0] < 0) return false;
  const kiln_tensor *w = kiln__qweight_f32(q, n->in[1]);
  *bias = n->n_in > 2 ? n->in[2] : -1;
  if (!w) return false;
  if (conv) {
    *axis = 0;
    return w->rank >= 3 && w->dims[0] > 0;
  }
  if (w->rank != 2 || w->dims[0] < 1 || w->dims[1] < 1) return false;
  if (mm) {
    *axis = 1, *bias = -1;
    return true;
  }
  *axis = kiln__attr_int(n, "transB", 0) ? 0 : 1;
  return kiln__attr_int(n, "transA", 0) == 0 && kiln__attr_float(n, "alpha", 1.0f) == 1.0f &&
         (*bias < 0 || kiln__attr_float(n, "beta", 1.0f) == 1.0f);
}

/* v's data when it is a constant: an initializer (not a graph input) or a Constant node's value
   (PyTorch writes Clip's bounds so). */
static const kiln_tensor *const_tensor(const kiln__graph *g, int v) {
  if (v < 0) return NULL;
  const kiln__value *val = &g->values[v];
  if (val->is_initializer) return val->is_input || !val->init.data ? NULL : &val->init;
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    if (n->n_out != 1 || n->out[0] != v) continue;
    const kiln__attr *at = kiln__qis_op(n, "Constant") ? kiln__attr_find(n, "value") : NULL;
    return at && at->type == KILN__ATTR_TENSOR && at->t && at->t->data ? at->t : NULL;
  }
  return NULL;
}

/* The activation whose output is quantized in place of y, or -1: y's only reader is a Relu, or
   a Clip whose lower bound is a constant 0, and its output is not a graph output. Its range then
   starts at 0, so the zero point is 0 and quantizing clamps as the activation does: as ONNX
   Runtime's quantizer does with such activations, and what lets fuse-qdq run Conv + Relu +
   QuantizeLinear as one QLinearConv with no float step between. (ORT also drops the Relu; it is
   kept here so the file computes the same function read as float.) */
static int act_after(const kiln__qctx *q, int y) {
  const kiln__graph *g = q->g;
  if (y < 0 || g->values[y].is_output) return -1;
  int reader = -1;
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] == y) {
        if (reader >= 0 || k != 0) return -1;
        reader = i;
      }
    for (int k = 0; k < n->n_captures; k++)
      if (n->captures[k] == y) return -1;
  }
  if (reader < 0) return -1;
  const kiln__node *a = &g->nodes[reader];
  if (a->n_out != 1 || a->out[0] < 0 || a->out[0] >= q->n_orig || g->values[a->out[0]].is_output)
    return -1;
  if (kiln__qis_op(a, "Relu")) return reader;
  if (!kiln__qis_op(a, "Clip") || a->opset < 11 || a->n_in < 2 || a->n_in > 3) return -1;
  const kiln_tensor *lo = const_tensor(g, a->in[1]);
  if (!lo || lo->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(lo) != 1 ||
      *(const float *)lo->data != 0.0f)
    return -1;
  return reader;
}

/* An Add of two activations or a GlobalAveragePool: int8_prepare() puts it in the integer chain
   when all its inputs are quantized anyway. */
static bool chain_op(const kiln__qctx *q, const kiln__node *n) {
  if (n->n_out != 1 || n->out[0] < 0 || n->out[0] >= q->n_orig) return false;
  if (kiln__qis_op(n, "Add")) return n->n_in == 2 && n->in[0] >= 0 && n->in[1] >= 0;
  return kiln__qis_op(n, "GlobalAveragePool") && n->n_in == 1 && n->in[0] >= 0;
}

/* The only reader of v when it is a MaxPool, or -1. */
static int maxpool_reader(const kiln__graph *g, int v) {
  int reader = -1;
  for (int i = 0; i < g->n_nodes; i++)
    for (int k = 0; k < g->nodes[i].n_in; k++)
      if (g->nodes[i].in[k] == v) {
        if (reader >= 0) return -1;
        reader = i;
      }
  return reader >= 0 && kiln__qis_op(&g->nodes[reader], "MaxPool") ? reader : -1;
}

/* A Concat whose inputs are all quantized gets one range, the union of its inputs' (which is
   the calibrated range of its output), on every input, on its output and on a MaxPool's output
   that alone reads it. Each input then carries the output's scale and zero point, so fuse-qdq
   turns DQ..DQ -> Concat -> Q into a plain Concat of the 8-bit tensors rather than a
   QLinearConcat that requantizes every element, and the planner computes it in place (no copy
   at all; SqueezeNet's fire modules). The cost: an input with a narrower range than its
   siblings is quantized with the coarser step of the union. */
static void share_concat_ranges(kiln__qctx *q, i8state *s) {
  const kiln__graph *g = q->g;
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    if (!kiln__qis_op(n, "Concat") || n->n_out != 1 || n->out[0] < 0 || n->out[0] >= q->n_orig)
      continue;
    bool all = n->n_in > 0;
    float lo = INFINITY, hi = -INFINITY;
    for (int k = 0; all && k < n->n_in; k++) {
      int v = n->in[k];
      all = v >= 0 && v < q->n_orig && s->has[v];
      if (all) lo = fminf(lo, s->lo[v]), hi = fmaxf(hi, s->hi[v]);
    }
    if (!all) continue;
    for (int k = 0; k < n->n_in; k++) s->lo[n->in[k]] = lo, s->hi[n->in[k]] = hi;
    int y = n->out[0], p = maxpool_reader(g, y);
    if (s->has[y]) s->lo[y] = lo, s->hi[y] = hi;
    if (p >= 0 && g->nodes[p].out[0] >= 0 && g->nodes[p].out[0] < q->n_orig &&
        s->has[g->nodes[p].out[0]])
      s->lo[g->nodes[p].out[0]] = lo, s->hi[g->nodes[p].out[0]] = hi;
  }
}

static void int8_release(kiln__qctx *q);

static kiln_status int8_prepare(kiln__qctx *q) {
  kiln__graph *g = q->g;
  size_t nv = (size_t)q->n_orig + 1;
  i8state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__qoom(q);
  q->state[KILN_QUANT_INT8] = s;
  s->lo = kiln__calloc(nv, sizeof *s->lo);
  s->hi = kiln__calloc(nv, sizeof *s->hi);
  s->has = kiln__calloc(nv, sizeof *s->has);
  s->w_scale = kiln__malloc(nv * sizeof *s->w_scale);
  s->w_axis = kiln__malloc(nv * sizeof *s->w_axis);
  s->chain = kiln__calloc((size_t)g->n_nodes + 1, sizeof *s->chain);
  int *vals = kiln__malloc(2 * ((size_t)g->n_nodes + 1) * sizeof *vals);
  bool *want = kiln__calloc(nv, sizeof *want);
  float *lo = kiln__malloc(2 * ((size_t)g->n_nodes + 1) * sizeof *lo);
  float *hi = kiln__malloc(2 * ((size_t)g->n_nodes + 1) * sizeof *hi);
  kiln_status st = KILN_OK;
  if (!s->lo || !s->hi || !s->has || !s->w_scale || !s->w_axis || !s->chain || !vals || !want ||
      !lo || !hi)
    st = kiln__qoom(q);
  size_t n = 0;
  /* the inputs of the nodes this format converts, and their outputs but graph outputs */
  for (int i = 0; st == KILN_OK && i < g->n_nodes; i++) {
    const kiln__node *nd = &g->nodes[i];
    int axis, bias;
    if (q->node_format[i] != KILN_QUANT_INT8 || !candidate(q, nd, &axis, &bias)) continue;
    int a = nd->in[0], y = nd->out[0], r = act_after(q, y);
    if (r >= 0) y = g->nodes[r].out[0];
    if (!want[a]) want[a] = true, vals[n++] = a;
    if (y >= 0 && !g->values[y].is_output && !want[y]) want[y] = true, vals[n++] = y;
  }
  /* Residual Adds and the final GlobalAveragePool whose inputs are all quantized already (conv
     outputs, conv inputs, earlier such nodes' outputs: graph order is topological) get QDQ on
     their output too, calibrated, so that fuse-qdq runs them as QLinearAdd /
     QLinearGlobalAveragePool and the integer chain goes on. An Add with one float input (a
     transformer's bias or residual Add beside LayerNorm) stays float: quantizing it would add
     QuantizeLinear steps and nothing would read the result in integers. */
  for (int i = 0; st == KILN_OK && i < g->n_nodes; i++) {
    const kiln__node *nd = &g->nodes[i];
    if (q->node_format[i] != KILN_QUANT_INT8 || !chain_op(q, nd)) continue;
    bool all = true;
    for (int k = 0; k < nd->n_in; k++) all &= nd->in[k] < q->n_orig && want[nd->in[k]];
    if (!all) continue;
    s->chain[i] = true;
    int y = nd->out[0], r = kiln__qis_op(nd, "Add") ? act_after(q, y) : -1;
    if (r >= 0) y = g->nodes[r].out[0];
    if (!g->values[y].is_output && !want[y]) want[y] = true, vals[n++] = y;
  }
  for (int v = 0; st == KILN_OK && v < q->n_orig; v++) s->w_scale[v] = s->w_axis[v] = -1;
  if (st == KILN_OK && n > 0) st = kiln__calibrate(q, vals, n, lo, hi);
  for (size_t k = 0; st == KILN_OK && k < n; k++) {
    s->lo[vals[k]] = lo[k], s->hi[vals[k]] = hi[k];
    s->has[vals[k]] = true;
  }
  if (st == KILN_OK) share_concat_ranges(q, s);
  kiln__free(vals), kiln__free(want), kiln__free(lo), kiln__free(hi);
  if (st != KILN_OK) int8_release(q); /* the driver releases only what prepared */
  return st;
}

static void int8_release(kiln__qctx *q) {
  i8state *s = q->state[KILN_QUANT_INT8];
  if (!s) return;
  kiln__free(s->lo), kiln__free(s->hi), kiln__free(s->has);
  kiln__free(s->w_scale), kiln__free(s->w_axis), kiln__free(s->chain);
  kiln__free(s);
  q->state[KILN_QUANT_INT8] = NULL;
}

/* A float32 scalar or uint8 scalar initializer. */
static int scalar_f32(kiln__qctx *q, const char *hint, float x) {
  kiln_tensor t;
  if (kiln_tensor_alloc(&t, KILN_DTYPE_FLOAT, 0, NULL, q->err) != KILN_OK) return -1;
  *(float *)t.data = x;
  return kiln__qinit(q, hint, &t);
}

static int scalar_u8(kiln__qctx *q, const char *hint, uint8_t x) {
  kiln_tensor t;
  if (kiln_tensor_alloc(&t, KILN_DTYPE_UINT8, 0, NULL, q->err) != KILN_OK) return -1;
  *(uint8_t *)t.data = x;
  return kiln__qinit(q, hint, &t);
}

/* QuantizeLinear(x) -> DequantizeLinear -> out with the calibrated per-tensor parameters. */
static kiln_status qdq_pair(kiln__qctx *q, int x, int out, float scale, uint8_t zp) {
  char hint[256], name[300];
  snprintf(hint, sizeof hint, "%.200s", q->g->values[out].name);
  int sv = scalar_f32(q, hint, scale), zv = scalar_u8(q, hint, zp);
  int xq = kiln__qvalue(q, hint);
  if (sv < 0 || zv < 0 || xq < 0) return kiln__qoom(q);
  int qin[3] = {x, sv, zv}, dqin[3] = {xq, sv, zv};
  snprintf(name, sizeof name, "%s/QuantizeLinear", hint);
  if (kiln__qnode_add(q, name, "QuantizeLinear", qin, 3, &xq, 1) < 0) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/DequantizeLinear", hint);
  if (kiln__qnode_add(q, name, "DequantizeLinear", dqin, 3, &out, 1) < 0) return KILN_NO_MEMORY;
  return KILN_OK;
}

/* The quantized-dequantized view of activation a, made once; its scale in *scale. */
static kiln_status act_qdq(kiln__qctx *q, i8state *s, int a, int *out, float *scale) {
  int *cache;
  kiln_status st = kiln__qcache(q, KILN__QTAG_QDQ_A, &cache);
  if (st != KILN_OK) return st;
  uint8_t zp;
  kiln__calib_qparams(s->lo[a], s->hi[a], scale, &zp);
  if (cache[a] >= 0) {
    *out = cache[a];
    return KILN_OK;
  }
  int dq = kiln__qvalue(q, q->g->values[a].name);
  if (dq < 0) return kiln__qoom(q);
  if ((st = qdq_pair(q, a, dq, *scale, zp)) != KILN_OK) return st;
  cache[a] = *out = dq;
  return KILN_OK;
}

/* DequantizeLinear(W_q, scale, 0, axis) for weight v, made once. */
static kiln_status weight_dq(kiln__qctx *q, i8state *s, int v, int axis, int *out) {
  int *cache;
  kiln_status st = kiln__qcache(q, KILN__QTAG_QDQ_W, &cache);
  if (st != KILN_OK) return st;
  if (cache[v] >= 0) {
    *out = cache[v];
    return KILN_OK;
  }
  const kiln_tensor *w = &q->g->values[v].init; /* moves when values are added below */
  size_t cnt = kiln_tensor_count(w);
  size_t outer = 1, inner = 1, ch = (size_t)w->dims[axis];
  for (int d = 0; d < axis; d++) outer *= (size_t)w->dims[d];
  for (int d = axis + 1; d < w->rank; d++) inner *= (size_t)w->dims[d];
  int64_t cd[1] = {(int64_t)ch};
  kiln_tensor tq = {0}, ts = {0}, tz = {0};
  if ((st = kiln_tensor_alloc(&tq, KILN_DTYPE_INT8, w->rank, w->dims, q->err)) != KILN_OK ||
      (st = kiln_tensor_alloc(&ts, KILN_DTYPE_FLOAT, 1, cd, q->err)) != KILN_OK ||
      (st = kiln_tensor_alloc(&tz, KILN_DTYPE_INT8, 1, cd, q->err)) != KILN_OK) {
    kiln_tensor_release(&tq), kiln_tensor_release(&ts), kiln_tensor_release(&tz);
    return st;
  }
  /* 7-bit weights keep u8 x s8 pair sums inside int16 (AVX2's VPMADDUBSW saturates) */
  kiln__quant_weight_s8_axis(w->data, outer, ch, inner, q->opts->reduce_range ? 63 : 127, tq.data,
                             ts.data);
  memset(tz.data, 0, ch);
  char hint[256], name[300];
  snprintf(hint, sizeof hint, "%.200s", q->g->values[v].name);
  int a = kiln__qinit(q, hint, &tq), b = kiln__qinit(q, hint, &ts), z = kiln__qinit(q, hint, &tz);
  int dq = kiln__qvalue(q, hint);
  if (a < 0 || b < 0 || z < 0 || dq < 0) {
    kiln_tensor_release(&tq), kiln_tensor_release(&ts), kiln_tensor_release(&tz);
    return kiln__qoom(q);
  }
  int in[3] = {a, b, z};
  snprintf(name, sizeof name, "%s/DequantizeLinear", hint);
  int k = kiln__qnode_add(q, name, "DequantizeLinear", in, 3, &dq, 1);
  if (k < 0) return KILN_NO_MEMORY;
  if ((st = kiln__qattr_int(q, k, "axis", axis)) != KILN_OK) return st;
  cache[v] = *out = dq;
  s->w_scale[v] = b, s->w_axis[v] = axis;
  q->st.weights_converted++;
  q->st.weight_bytes_before += cnt * 4;
  q->st.weight_bytes_after += cnt + ch * 5;
  return KILN_OK;
}

/* The int32 bias b / (x_scale * w_scale[c]) behind its DequantizeLinear; -1 in *out when the
   bias stays float (not a constant float32 vector of one value per channel). */
static kiln_status bias_dq(kiln__qctx *q, i8state *s, int b, int w, float x_scale, int *out) {
  *out = -1;
  const kiln_tensor *bt = kiln__qweight_f32(q, b);
  int sv = s->w_scale[w];
  if (!bt || bt->rank != 1 || sv < 0) return KILN_OK;
  const kiln_tensor *ws = &q->g->values[sv].init;
  size_t ch = (size_t)ws->dims[0];
  if ((size_t)bt->dims[0] != ch) return KILN_OK;
  int64_t cd[1] = {(int64_t)ch};
  kiln_tensor tq = {0}, ts = {0};
  kiln_status st;
  if ((st = kiln_tensor_alloc(&tq, KILN_DTYPE_INT32, 1, cd, q->err)) != KILN_OK ||
      (st = kiln_tensor_alloc(&ts, KILN_DTYPE_FLOAT, 1, cd, q->err)) != KILN_OK) {
    kiln_tensor_release(&tq);
    return st;
  }
  const float *bf = bt->data, *wsf = ws->data;
  int32_t *bq = tq.data;
  float *bs = ts.data;
  for (size_t c = 0; c < ch; c++) {
    bs[c] = x_scale * wsf[c];
    double v = bs[c] > 0 ? nearbyint((double)bf[c] / (double)bs[c]) : 0;
    bq[c] = (int32_t)(v > 2147483647.0 ? 2147483647.0 : v < -2147483647.0 ? -2147483647.0 : v);
  }
  char hint[256], name[300];
  snprintf(hint, sizeof hint, "%.200s", q->g->values[b].name);
  int a = kiln__qinit(q, hint, &tq), z = kiln__qinit(q, hint, &ts);
  int dq = kiln__qvalue(q, hint);
  if (a < 0 || z < 0 || dq < 0) {
    kiln_tensor_release(&tq), kiln_tensor_release(&ts);
    return kiln__qoom(q);
  }
  int in[2] = {a, z};
  snprintf(name, sizeof name, "%s/DequantizeLinear", hint);
  int k = kiln__qnode_add(q, name, "DequantizeLinear", in, 2, &dq, 1);
  if (k < 0) return KILN_NO_MEMORY;
  if ((st = kiln__qattr_int(q, k, "axis", 0)) != KILN_OK) return st;
  int *cache; /* written, never read: the scale depends on the node's input, so no sharing */
  if ((st = kiln__qcache(q, KILN__QTAG_QDQ_B, &cache)) != KILN_OK) return st;
  cache[b] = dq;
  q->st.weight_bytes_before += ch * 4;
  q->st.weight_bytes_after += ch * 8;
  *out = dq;
  return KILN_OK;
}

/* Node i's output y (or activation node r's, when r >= 0: the pair goes after a Relu /
   Clip(0, .) that alone reads y, act_after) through a calibrated QuantizeLinear ->
   DequantizeLinear pair; nothing when y was not calibrated (a graph output). */
static kiln_status output_pair(kiln__qctx *q, i8state *s, int i, int r) {
  int y = q->g->nodes[r >= 0 ? r : i].out[0];
  if (y < 0 || !s->has[y]) return KILN_OK;
  int *cache;
  kiln_status st = kiln__qcache(q, KILN__QTAG_QDQ_A, &cache);
  if (st != KILN_OK) return st;
  int yf = kiln__qvalue(q, q->g->values[y].name);
  if (yf < 0) return kiln__qoom(q);
  q->g->nodes[r >= 0 ? r : i].out[0] = yf;
  float ys;
  uint8_t yz;
  kiln__calib_qparams(s->lo[y], s->hi[y], &ys, &yz);
  if ((st = qdq_pair(q, yf, y, ys, yz)) != KILN_OK) return st;
  cache[y] = y; /* readers of y get the dequantized tensor already */
  return KILN_OK;
}

/* An Add / GlobalAveragePool of the integer chain: its inputs read their dequantized views, its
   output gets its own calibrated pair (after a Relu that alone reads an Add's output). The
   pool's output parameters are calibrated, not copied from its input as ONNX Runtime's
   quantizer does: the average of a 7x7 image spans a narrower range than its pixels. */
static kiln_status chain_node(kiln__qctx *q, i8state *s, int i) {
  int in[2], nin = q->g->nodes[i].n_in;
  for (int k = 0; k < nin; k++) {
    float scale;
    kiln_status st = act_qdq(q, s, q->g->nodes[i].in[k], &in[k], &scale);
    if (st != KILN_OK) return st;
  }
  kiln__node *n = &q->g->nodes[i]; /* the adds above may have moved the nodes */
  for (int k = 0; k < nin; k++) n->in[k] = in[k];
  return output_pair(q, s, i, kiln__qis_op(n, "Add") ? act_after(q, n->out[0]) : -1);
}

static kiln_status int8_node(kiln__qctx *q, int i, kiln__qoutcome *out) {
  i8state *s = q->state[KILN_QUANT_INT8];
  const kiln__node *n = &q->g->nodes[i];
  int axis = 0, bias = -1;
  if (s->chain[i]) return chain_node(q, s, i); /* not counted: no weights */
  bool cand = candidate(q, n, &axis, &bias);
  *out = kiln__qis_op(n, "Conv") || kiln__qis_op(n, "MatMul") || kiln__qis_op(n, "Gemm")
             ? KILN__Q_KEPT_FLOAT
             : KILN__Q_NOT_CANDIDATE;
  if (!cand) return KILN_OK;
  int a = n->in[0], w = n->in[1], y = n->out[0];
  if (!s->has[a]) return KILN_OK; /* cannot happen: prepare() calibrated every candidate's input */
  int adq = -1, wdq = -1, bdq = -1;
  float x_scale = 1;
  kiln_status st = act_qdq(q, s, a, &adq, &x_scale);
  if (st == KILN_OK) st = weight_dq(q, s, w, axis, &wdq);
  if (st == KILN_OK && bias >= 0 && s->w_axis[w] == axis)
    st = bias_dq(q, s, bias, w, x_scale, &bdq);
  if (st != KILN_OK) return st;
  kiln__node *nn = &q->g->nodes[i]; /* the adds above may have moved the nodes */
  nn->in[0] = adq;
  nn->in[1] = wdq;
  if (bdq >= 0) nn->in[2] = bdq;
  if ((st = output_pair(q, s, i, act_after(q, y))) != KILN_OK) return st;
  *out = KILN__Q_QUANTIZED;
  return KILN_OK;
}

const kiln__quant_format_impl kiln__quant_int8 = {
    .format = KILN_QUANT_INT8,
    .name = "int8",
    .min_opset = 13, /* DequantizeLinear with axis (per channel) */
    .nothing_msg = "nothing to quantize: no Conv, MatMul or Gemm with a constant float32 weight",
    .prepare = int8_prepare,
    .release = int8_release,
    .node = int8_node,
};
