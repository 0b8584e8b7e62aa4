/* Weight quantizers: rewrite an imported graph into fp16 or int8-dynamic form using only standard
 * ONNX ops, so the file runs in Kiln and in ONNX Runtime alike.
 *
 * Both rewrites only add nodes and values and retarget inputs; the one node replaced by a pattern
 * (a MatMul or Gemm) becomes the pattern's last node, so its output keeps its name and no node is
 * ever deleted. Weights nothing reads any more lose their data, so the exporter drops them. */
#include <math.h>
#include <stdio.h>

#include "kiln/quant.h"
#include "onnx/export.h"
#include "onnx/import.h"
#include "quant/quant.h"

kiln_status kiln_quant_format_parse(const char *name, kiln_quant_format *out, kiln_error *err) {
  if (name && !strcmp(name, "fp16")) *out = KILN_QUANT_FP16;
  else if (name && !strcmp(name, "int8-dynamic")) *out = KILN_QUANT_INT8_DYNAMIC;
  else
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "unknown quantization format '%s' (expected fp16 or int8-dynamic)",
                      name ? name : "(null)");
  return KILN_OK;
}

const char *kiln_quant_format_name(kiln_quant_format f) {
  switch (f) {
  case KILN_QUANT_FP16: return "fp16";
  case KILN_QUANT_INT8_DYNAMIC: return "int8-dynamic";
  }
  return "?";
}

/* ---- graph editing ---------------------------------------------------------------------------- */

typedef struct qctx {
  kiln__graph *g;
  kiln_error *err;
  unsigned seq;            /* for fresh names */
  int n_orig;              /* values before the rewrite: the weight maps cover these */
  int *map[2];             /* per original value: its replacement (int8: [0] weight [1] scale) */
  int *map_t[2];           /* the same for Gemm weights with transB=1 (stored transposed) */
  kiln_quant_stats st;
} qctx;

static kiln_status oom(qctx *q) {
  return kiln__fail(q->err, KILN_NO_MEMORY, "out of memory quantizing the graph");
}

/* A value with a fresh name derived from `hint`; -1 when out of memory. */
static int new_value(qctx *q, const char *hint) {
  char name[256];
  do snprintf(name, sizeof name, "%.200s/kiln_q%u", hint, q->seq++);
  while (kiln__graph_find(q->g, name) >= 0);
  int v = kiln__graph_value(q->g, name);
  if (v >= 0) q->g->values[v].kind = KILN__VALUE_TENSOR;
  return v;
}

/* An initializer that takes `t`'s data (released on failure); -1 when out of memory. */
static int new_init(qctx *q, const char *hint, kiln_tensor *t) {
  int v = new_value(q, hint);
  if (v < 0) {
    kiln_tensor_release(t);
    return -1;
  }
  kiln__value *val = &q->g->values[v];
  val->is_initializer = true;
  val->init = *t;
  val->dtype = t->dtype;
  val->rank = t->rank;
  memcpy(val->dims, t->dims, sizeof val->dims);
  memset(t, 0, sizeof *t);
  return v;
}

/* Sets node n to op `op` of the default domain with the given inputs and outputs and no
   attributes (the old contents are freed). */
static kiln_status node_set(qctx *q, kiln__node *n, const char *name, const char *op,
                            const int *in, int n_in, const int *out, int n_out) {
  char *nm = kiln__strdup(name), *ot = kiln__strdup(op), *dom = kiln__strdup("");
  int *ni = kiln__malloc((size_t)n_in * sizeof *ni), *no = kiln__malloc((size_t)n_out * sizeof *no);
  if (!nm || !ot || !dom || !ni || !no) {
    kiln__free(nm), kiln__free(ot), kiln__free(dom), kiln__free(ni), kiln__free(no);
    return oom(q);
  }
  for (int a = 0; a < n->n_attrs; a++) kiln__attr_clear(&n->attrs[a]);
  kiln__free(n->attrs);
  kiln__free(n->name), kiln__free(n->op_type), kiln__free(n->domain);
  kiln__free(n->in), kiln__free(n->out);
  n->attrs = NULL;
  n->n_attrs = 0;
  n->name = nm, n->op_type = ot, n->domain = dom;
  memcpy(ni, in, (size_t)n_in * sizeof *ni);
  memcpy(no, out, (size_t)n_out * sizeof *no);
  n->in = ni, n->n_in = n_in, n->out = no, n->n_out = n_out;
  n->opset = q->g->opset;
  return KILN_OK;
}

/* Appends a node; its index, or -1 (error set) when out of memory. Node pointers taken before
   the call are invalidated. */
static int add_node(qctx *q, const char *name, const char *op, const int *in, int n_in,
                    const int *out, int n_out) {
  kiln__node *n = kiln__graph_add_node(q->g);
  if (!n) {
    oom(q);
    return -1;
  }
  if (node_set(q, n, name, op, in, n_in, out, n_out) != KILN_OK) {
    q->g->n_nodes--; /* the slot is empty again */
    return -1;
  }
  return (int)(n - q->g->nodes);
}

static kiln_status add_attr_int(qctx *q, int node, const char *name, int64_t v) {
  kiln__node *n = &q->g->nodes[node];
  kiln__attr *a = kiln__realloc(n->attrs, (size_t)(n->n_attrs + 1) * sizeof *a);
  if (!a) return oom(q);
  n->attrs = a;
  memset(&a[n->n_attrs], 0, sizeof *a);
  if (!(a[n->n_attrs].name = kiln__strdup(name))) return oom(q);
  a[n->n_attrs].type = KILN__ATTR_INT;
  a[n->n_attrs].i = v;
  n->n_attrs++;
  return KILN_OK;
}

/* A Cast of `in` to `to`, writing `out`. */
static kiln_status add_cast(qctx *q, const char *name, int in, int out, kiln_dtype to) {
  int k = add_node(q, name, "Cast", &in, 1, &out, 1);
  return k < 0 ? KILN_NO_MEMORY : add_attr_int(q, k, "to", to);
}

/* The float32 initializer in value v that may be rewritten: constant data, not something the
   caller feeds or reads, not captured by a subgraph. */
static const kiln_tensor *weight_f32(const qctx *q, int v) {
  if (v < 0 || v >= q->n_orig) return NULL;
  const kiln__value *val = &q->g->values[v];
  if (!val->is_initializer || val->is_input || val->is_output || val->is_outer) return NULL;
  return val->init.dtype == KILN_DTYPE_FLOAT && val->init.data ? &val->init : NULL;
}

static bool is_op(const kiln__node *n, const char *op) {
  return !n->domain[0] && !strcmp(n->op_type, op);
}

/* Releases the data of original initializers that no node, subgraph or output reads any more. */
static void drop_unused(qctx *q) {
  kiln__graph *g = q->g;
  bool *used = kiln__calloc((size_t)g->n_values + 1, sizeof *used);
  if (!used) return; /* the file keeps dead weights; still correct */
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] >= 0) used[n->in[k]] = true;
    for (int k = 0; k < n->n_captures; k++) used[n->captures[k]] = true;
  }
  for (int v = 0; v < q->n_orig; v++) {
    kiln__value *val = &g->values[v];
    if (val->is_initializer && !used[v] && !val->is_input && !val->is_output &&
        (q->map[0][v] >= 0 || q->map_t[0][v] >= 0)) {
      kiln_tensor_release(&val->init);
      val->is_initializer = false;
    }
  }
  kiln__free(used);
}

/* ---- fp16 ------------------------------------------------------------------------------------- */

/* The float32 view of weight v, converted once: a float16 initializer and a Cast to float32. */
static kiln_status fp16_weight(qctx *q, int v, int *out) {
  if (q->map[0][v] >= 0) {
    *out = q->map[0][v];
    return KILN_OK;
  }
  const kiln_tensor *w = &q->g->values[v].init;
  kiln_tensor h;
  kiln_status st = kiln_tensor_alloc(&h, KILN_DTYPE_FLOAT16, w->rank, w->dims, q->err);
  if (st != KILN_OK) return st;
  size_t cnt = kiln_tensor_count(w);
  const float *src = w->data;
  uint16_t *dst = h.data;
  for (size_t i = 0; i < cnt; i++) dst[i] = kiln__f32_to_f16(src[i]);
  char hint[256];
  snprintf(hint, sizeof hint, "%.200s", q->g->values[v].name);
  int hv = new_init(q, hint, &h);
  int fv = hv >= 0 ? new_value(q, hint) : -1;
  if (fv < 0) return oom(q);
  char name[280];
  snprintf(name, sizeof name, "%.200s/kiln_cast_f32", hint);
  if ((st = add_cast(q, name, hv, fv, KILN_DTYPE_FLOAT)) != KILN_OK) return st;
  q->map[0][v] = fv;
  q->st.weights_converted++;
  q->st.weight_bytes_before += cnt * 4;
  q->st.weight_bytes_after += cnt * 2;
  *out = fv;
  return KILN_OK;
}

static kiln_status run_fp16(qctx *q) {
  int n_nodes = q->g->n_nodes; /* the Casts added below are not visited */
  for (int i = 0; i < n_nodes; i++) {
    const kiln__node *n = &q->g->nodes[i];
    int slot = is_op(n, "Conv") || is_op(n, "MatMul") || is_op(n, "Gemm") ? 1 : -1;
    if (slot < 0) continue;
    int w = slot < n->n_in ? n->in[slot] : -1;
    if (!weight_f32(q, w)) {
      q->st.nodes_kept_float++;
      continue;
    }
    int fv = -1;
    kiln_status st = fp16_weight(q, w, &fv);
    if (st != KILN_OK) return st;
    q->g->nodes[i].in[slot] = fv;
    q->st.nodes_quantized++;
  }
  return KILN_OK;
}

/* ---- int8 dynamic ----------------------------------------------------------------------------- */

/* Symmetric per-column int8 quantization of W viewed as [K, N] (or [N, K] when `trans`): fills
   q [K, N] and scale [N]. A zero column gets scale 1 so the runtime never divides by zero. */
void kiln__quant_weight_s8(const float *w, size_t k, size_t n, bool trans, int8_t *q,
                           float *scale) {
  for (size_t c = 0; c < n; c++) {
    float amax = 0;
    for (size_t r = 0; r < k; r++) {
      float x = fabsf(trans ? w[c * k + r] : w[r * n + c]);
      if (x > amax) amax = x;
    }
    float s = amax > 0 ? amax / 127.0f : 1.0f;
    scale[c] = s;
    for (size_t r = 0; r < k; r++) {
      float x = (trans ? w[c * k + r] : w[r * n + c]) / s;
      long v = lrintf(x);
      q[r * n + c] = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : v);
    }
  }
}

/* The int8 weight [K, N] and its scales [N] for weight v, converted once per orientation. */
static kiln_status int8_weight(qctx *q, int v, bool trans, int *wq, int *ws) {
  int **m = trans ? q->map_t : q->map;
  if (m[0][v] >= 0) {
    *wq = m[0][v], *ws = m[1][v];
    return KILN_OK;
  }
  const kiln_tensor *w = &q->g->values[v].init;
  size_t k = (size_t)(trans ? w->dims[1] : w->dims[0]), n = (size_t)(trans ? w->dims[0] : w->dims[1]);
  int64_t qd[2] = {(int64_t)k, (int64_t)n}, sd[1] = {(int64_t)n};
  kiln_tensor tq, ts;
  kiln_status st = kiln_tensor_alloc(&tq, KILN_DTYPE_INT8, 2, qd, q->err);
  if (st != KILN_OK) return st;
  if ((st = kiln_tensor_alloc(&ts, KILN_DTYPE_FLOAT, 1, sd, q->err)) != KILN_OK) {
    kiln_tensor_release(&tq);
    return st;
  }
  kiln__quant_weight_s8(w->data, k, n, trans, tq.data, ts.data);
  char hint[256];
  snprintf(hint, sizeof hint, "%.200s", q->g->values[v].name);
  int a = new_init(q, hint, &tq);
  int b = new_init(q, hint, &ts);
  if (a < 0 || b < 0) {
    kiln_tensor_release(&tq);
    kiln_tensor_release(&ts);
    return oom(q);
  }
  m[0][v] = a, m[1][v] = b;
  q->st.weights_converted++;
  q->st.weight_bytes_before += k * n * 4;
  q->st.weight_bytes_after += k * n + n * 4;
  *wq = a, *ws = b;
  return KILN_OK;
}

/* Rewrites node i, Y = A W (+ C), as
     DynamicQuantizeLinear(A) -> a_q, a_scale, a_zp
     MatMulInteger(a_q, W_q, a_zp) -> Y_i32;  Cast(Y_i32, to=float) -> Y_f
     Mul(a_scale, W_scale) -> s;  Mul(Y_f, s) -> Y  (or -> Y_s, then Add(Y_s, C) -> Y)
   the layout ONNX Runtime's quantize_dynamic writes. */
static kiln_status int8_node(qctx *q, int i, int a, int w, bool trans, int bias) {
  int wq = -1, ws = -1;
  kiln_status st = int8_weight(q, w, trans, &wq, &ws);
  if (st != KILN_OK) return st;
  char base[220], name[256];
  snprintf(base, sizeof base, "%.200s", q->g->nodes[i].name && q->g->nodes[i].name[0]
                                           ? q->g->nodes[i].name
                                           : q->g->values[q->g->nodes[i].out[0]].name);
  int y = q->g->nodes[i].out[0];
  int aq = new_value(q, base), as = new_value(q, base), az = new_value(q, base);
  int yi = new_value(q, base), yf = new_value(q, base), sc = new_value(q, base);
  int ys = bias >= 0 ? new_value(q, base) : y;
  if (aq < 0 || as < 0 || az < 0 || yi < 0 || yf < 0 || sc < 0 || ys < 0) return oom(q);
  int dq_out[3] = {aq, as, az}, mm_in[3] = {aq, wq, az}, s_in[2] = {as, ws}, y_in[2] = {yf, sc};
  snprintf(name, sizeof name, "%s/dynamic_quantize", base);
  if (add_node(q, name, "DynamicQuantizeLinear", &a, 1, dq_out, 3) < 0) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/matmul_integer", base);
  if (add_node(q, name, "MatMulInteger", mm_in, 3, &yi, 1) < 0) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/cast", base);
  if ((st = add_cast(q, name, yi, yf, KILN_DTYPE_FLOAT)) != KILN_OK) return st;
  snprintf(name, sizeof name, "%s/scale", base);
  if (add_node(q, name, "Mul", s_in, 2, &sc, 1) < 0) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/rescale", base);
  if (bias < 0) return node_set(q, &q->g->nodes[i], name, "Mul", y_in, 2, &y, 1);
  if (add_node(q, name, "Mul", y_in, 2, &ys, 1) < 0) return KILN_NO_MEMORY;
  int b_in[2] = {ys, bias};
  snprintf(name, sizeof name, "%s/bias", base);
  return node_set(q, &q->g->nodes[i], name, "Add", b_in, 2, &y, 1);
}

static kiln_status run_int8_dynamic(qctx *q) {
  int n_nodes = q->g->n_nodes;
  for (int i = 0; i < n_nodes; i++) {
    const kiln__node *n = &q->g->nodes[i];
    bool mm = is_op(n, "MatMul"), gemm = is_op(n, "Gemm");
    if (is_op(n, "Conv")) q->st.nodes_kept_float++; /* float by design: no ConvInteger path yet */
    if (!mm && !gemm) continue;
    int w = n->n_in > 1 ? n->in[1] : -1;
    const kiln_tensor *wt = weight_f32(q, w);
    bool ok = wt && wt->rank == 2 && wt->dims[0] > 0 && wt->dims[1] > 0 && n->n_out == 1;
    bool trans = false;
    int bias = -1;
    if (ok && gemm) {
      trans = kiln__attr_int(n, "transB", 0) != 0;
      bias = n->n_in > 2 ? n->in[2] : -1;
      ok = kiln__attr_int(n, "transA", 0) == 0 && kiln__attr_float(n, "alpha", 1.0f) == 1.0f &&
           (bias < 0 || kiln__attr_float(n, "beta", 1.0f) == 1.0f);
    }
    if (!ok) {
      q->st.nodes_kept_float++;
      continue;
    }
    kiln_status st = int8_node(q, i, n->in[0], w, trans, bias);
    if (st != KILN_OK) return st;
    q->st.nodes_quantized++;
  }
  return KILN_OK;
}

/* ---- files ------------------------------------------------------------------------------------ */

kiln_status kiln__quant_graph(kiln__graph *g, kiln_quant_format format, kiln_quant_stats *stats,
                              kiln_error *err) {
  if (format != KILN_QUANT_FP16 && format != KILN_QUANT_INT8_DYNAMIC)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "unknown quantization format %d", (int)format);
  if (format == KILN_QUANT_INT8_DYNAMIC && g->opset < 11)
    return kiln__fail(err, KILN_UNSUPPORTED,
                      "int8-dynamic needs opset 11 or later (DynamicQuantizeLinear); the model "
                      "imports opset %lld", (long long)g->opset);
  qctx q = {.g = g, .err = err, .n_orig = g->n_values};
  kiln_status st = KILN_OK;
  for (int k = 0; k < 2; k++) {
    q.map[k] = kiln__malloc(((size_t)g->n_values + 1) * sizeof(int));
    q.map_t[k] = kiln__malloc(((size_t)g->n_values + 1) * sizeof(int));
    if (!q.map[k] || !q.map_t[k]) st = oom(&q);
  }
  if (st == KILN_OK) {
    for (int k = 0; k < 2; k++)
      for (int v = 0; v < g->n_values; v++) q.map[k][v] = q.map_t[k][v] = -1;
    st = format == KILN_QUANT_FP16 ? run_fp16(&q) : run_int8_dynamic(&q);
  }
  if (st == KILN_OK && q.st.nodes_quantized == 0)
    st = kiln__fail(err, KILN_UNSUPPORTED,
                    format == KILN_QUANT_FP16
                        ? "nothing to quantize: no MatMul, Gemm or Conv with a constant float32 "
                          "weight"
                        : "nothing to quantize: no MatMul or Gemm with a constant 2-D float32 "
                          "weight (int8-dynamic keeps Conv in float)");
  if (st == KILN_OK) {
    drop_unused(&q);
    st = kiln__graph_finalize(g, err);
  }
  if (stats) *stats = q.st;
  for (int k = 0; k < 2; k++) {
    kiln__free(q.map[k]);
    kiln__free(q.map_t[k]);
  }
  return st;
}

kiln_status kiln_quantize_file(const char *path, const char *out_path, kiln_quant_format format,
                               kiln_quant_stats *stats, kiln_error *err) {
  if (stats) memset(stats, 0, sizeof *stats);
  if (!path || !out_path)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "quantize: a model and an output path are needed");
  kiln__graph *g = NULL;
  kiln_status st = kiln__onnx_import_file(path, &g, err);
  if (st == KILN_OK) st = kiln__quant_graph(g, format, stats, err);
  if (st == KILN_OK) st = kiln__onnx_export(g, "kiln-quantize", out_path, err);
  if (st != KILN_OK) kiln__err_prefix(err, "%s", path);
  kiln__graph_free(g);
  return st;
}
