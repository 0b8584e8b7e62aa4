/* Preparing an imported graph for the quantizers, so that real exported models (PaddleOCR's
 * paddle2onnx files, e.g.) can be quantized at all:
 *
 * - Constant nodes become initializers: exporters that write every weight as a Constant node
 *   would otherwise leave no "constant float32 weight" for any format to convert.
 * - An older default-domain opset is raised to the one a format needs (QDQ with `axis` and Cast
 *   from bfloat16 need 13, DynamicQuantizeLinear 11): the ONNX file has a single opset for all
 *   its nodes, so the rest of the graph must be written in that opset's forms. Ops whose
 *   interface changed in between are rewritten (Clip, Slice, Squeeze/Unsqueeze attributes become
 *   inputs; Softmax-family ops before 13 normalize over the flattened tail, so they run as
 *   Flatten, the op on axis 1, and a Reshape back); ops known unchanged are relabeled; anything
 *   else is refused with its name, so nothing is silently reinterpreted. */
#include <float.h>
#include <stdio.h>

#include "quant/quant.h"

static void node_clear(kiln__node *n) {
  kiln__free(n->name), kiln__free(n->op_type), kiln__free(n->domain);
  kiln__free(n->in), kiln__free(n->out), kiln__free(n->captures);
  for (int a = 0; a < n->n_attrs; a++) kiln__attr_clear(&n->attrs[a]);
  kiln__free(n->attrs);
}

void kiln__quant_const_to_init(kiln__graph *g) {
  int kept = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    kiln__node *n = &g->nodes[i];
    const kiln__attr *at = n->n_attrs == 1 ? &n->attrs[0] : NULL;
    kiln__value *v = n->n_out == 1 && n->out[0] >= 0 ? &g->values[n->out[0]] : NULL;
    if (kiln__qis_op(n, "Constant") && at && !strcmp(at->name, "value") &&
        at->type == KILN__ATTR_TENSOR && at->t && at->t->data && v && !v->is_output &&
        !v->is_initializer) {
      v->init = *at->t;
      memset(at->t, 0, sizeof *at->t); /* the value owns the data now */
      v->is_initializer = true;
      v->producer = -1;
      v->kind = KILN__VALUE_TENSOR;
      v->dtype = v->init.dtype;
      v->rank = v->init.rank;
      memcpy(v->dims, v->init.dims, sizeof v->dims);
      node_clear(n);
      continue;
    }
    if (kept != i) g->nodes[kept] = *n;
    kept++;
  }
  g->n_nodes = kept;
}

/* Ops whose opset-7..13 versions differ only in added types or clarified wording, so a node can
   be relabeled with the higher opset as it is. */
static const char *const unchanged[] = {
    "Abs", "Add", "And", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast",
    "Ceil", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "DepthToSpace",
    "Div", "Elu", "Equal", "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "Gemm",
    "GlobalAveragePool", "GlobalMaxPool", "Greater", "HardSigmoid", "Identity",
    "InstanceNormalization", "LeakyRelu", "Less", "Log", "LRN", "MatMul", "Max", "MaxPool",
    "Mean", "Min", "Mul", "Neg", "Not", "Or", "Pow", "PRelu", "Reciprocal", "ReduceL1",
    "ReduceL2", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
    "ReduceSumSquare", "Relu", "Reshape", "Selu", "Shape", "Sigmoid", "Sign", "Sin", "Cos",
    "Softplus", "Softsign", "SpaceToDepth", "Sqrt", "Sub", "Sum", "Tanh", "Tile", "Transpose",
    "Where",
};

/* Ops whose interface is the same from opset `since` up to `until` (Resize-10 had no roi input,
   ReduceSum and Split take axes/split as inputs from 13, Pad takes pads as inputs from 11). */
static const struct {
  const char *op;
  int since, until;
} stable[] = {
    {"Resize", 11, 17}, {"Pad", 11, 17}, {"TopK", 10, 23}, {"Range", 11, 23},
    {"ReduceSum", 1, 12}, {"Split", 2, 12},
};

static bool is_unchanged_between(const char *op, int64_t from, int64_t to) {
  for (size_t k = 0; k < sizeof unchanged / sizeof unchanged[0]; k++)
    if (!strcmp(op, unchanged[k])) return true;
  for (size_t k = 0; k < sizeof stable / sizeof stable[0]; k++)
    if (!strcmp(op, stable[k].op)) return from >= stable[k].since && to <= stable[k].until;
  return false;
}

/* A 1-D int64 initializer holding vals[0..n), and a float32 scalar one. */
static int const_i64(kiln__qctx *q, const char *hint, const int64_t *vals, size_t n) {
  kiln_tensor t;
  int64_t d = (int64_t)n;
  if (kiln_tensor_alloc(&t, KILN_DTYPE_INT64, 1, &d, q->err) != KILN_OK) return -1;
  if (n) memcpy(t.data, vals, n * sizeof *vals);
  return kiln__qinit(q, hint, &t);
}

static int const_f32(kiln__qctx *q, const char *hint, float v) {
  kiln_tensor t;
  if (kiln_tensor_alloc(&t, KILN_DTYPE_FLOAT, 0, NULL, q->err) != KILN_OK) return -1;
  *(float *)t.data = v;
  return kiln__qinit(q, hint, &t);
}

/* Rewrites node i with these inputs (its first input, then `extra`), same output, no
   attributes. */
static kiln_status with_inputs(kiln__qctx *q, int i, const int *extra, int n_extra) {
  kiln__node *n = &q->g->nodes[i];
  int in[4] = {n->in[0], -1, -1, -1}, out = n->out[0];
  for (int k = 0; k < n_extra; k++) in[1 + k] = extra[k];
  char name[256], op[32];
  snprintf(name, sizeof name, "%s", n->name ? n->name : "");
  snprintf(op, sizeof op, "%s", n->op_type);
  return kiln__qnode_set(q, n, name, op, in, 1 + n_extra, &out, 1);
}

/* Clip-6: min/max attributes (defaults: the float range) -> Clip-11 inputs. Float32 data is
   assumed (the quantizers handle nothing else); a mismatch fails when the file is loaded. */
static kiln_status clip_inputs(kiln__qctx *q, int i, const char *hint) {
  const kiln__node *n = &q->g->nodes[i];
  int b[2] = {const_f32(q, hint, kiln__attr_float(n, "min", -FLT_MAX)),
              const_f32(q, hint, kiln__attr_float(n, "max", FLT_MAX))};
  return b[0] < 0 || b[1] < 0 ? kiln__qoom(q) : with_inputs(q, i, b, 2);
}

/* Slice-1: starts/ends/axes attributes -> Slice-10 inputs. */
static kiln_status slice_inputs(kiln__qctx *q, int i, const char *hint) {
  const kiln__node *n = &q->g->nodes[i];
  const int64_t *s, *e, *a;
  size_t ns = kiln__attr_ints(n, "starts", &s), ne = kiln__attr_ints(n, "ends", &e);
  size_t na = kiln__attr_ints(n, "axes", &a);
  if (ns != ne || (na && na != ns))
    return kiln__fail(q->err, KILN_BAD_MODEL, "Slice '%s': starts, ends and axes differ in length",
                      hint);
  int b[3] = {const_i64(q, hint, s, ns), const_i64(q, hint, e, ne),
              na ? const_i64(q, hint, a, na) : 0};
  return b[0] < 0 || b[1] < 0 || b[2] < 0 ? kiln__qoom(q) : with_inputs(q, i, b, na ? 3 : 2);
}

/* Squeeze/Unsqueeze-11: axes attribute -> the -13 input (absent stays absent for Squeeze). */
static kiln_status axes_input(kiln__qctx *q, int i, const char *hint) {
  const int64_t *a;
  size_t na = kiln__attr_ints(&q->g->nodes[i], "axes", &a);
  int b = na ? const_i64(q, hint, a, na) : 0;
  return b < 0 ? kiln__qoom(q) : with_inputs(q, i, &b, na ? 1 : 0);
}

/* Softmax, LogSoftmax, Hardmax before 13: the input is viewed as 2-D [prod(dims < axis),
   prod(dims >= axis)] (axis default 1). As opset 13 ops: Flatten(axis) -> op(axis=-1) ->
   Reshape(to Shape(x)); node i becomes the Reshape, so the output keeps its value. */
static kiln_status softmax_2d(kiln__qctx *q, int i, const char *hint) {
  const kiln__node *n = &q->g->nodes[i];
  int64_t axis = kiln__attr_int(n, "axis", 1);
  int x = n->in[0], y = n->out[0];
  char op[32], name[300];
  snprintf(op, sizeof op, "%s", n->op_type);
  int f = kiln__qvalue(q, hint), s = kiln__qvalue(q, hint), sh = kiln__qvalue(q, hint);
  if (f < 0 || s < 0 || sh < 0) return kiln__qoom(q);
  snprintf(name, sizeof name, "%s/flatten", hint);
  int k = kiln__qnode_add(q, name, "Flatten", &x, 1, &f, 1);
  if (k < 0 || kiln__qattr_int(q, k, "axis", axis) != KILN_OK) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/2d", hint);
  if ((k = kiln__qnode_add(q, name, op, &f, 1, &s, 1)) < 0) return KILN_NO_MEMORY;
  if (kiln__qattr_int(q, k, "axis", -1) != KILN_OK) return KILN_NO_MEMORY;
  snprintf(name, sizeof name, "%s/shape", hint);
  if (kiln__qnode_add(q, name, "Shape", &x, 1, &sh, 1) < 0) return KILN_NO_MEMORY;
  int r_in[2] = {s, sh};
  return kiln__qnode_set(q, &q->g->nodes[i], hint, "Reshape", r_in, 2, &y, 1);
}

kiln_status kiln__quant_raise_opset(kiln__qctx *q, int64_t to) {
  kiln__graph *g = q->g;
  int64_t from = g->opset;
  if (from >= to) return KILN_OK;
  if (from < 7)
    return kiln__fail(q->err, KILN_UNSUPPORTED,
                      "the model imports opset %lld; raising it to %lld is done from opset 7 on",
                      (long long)from, (long long)to);
  int n_nodes = g->n_nodes;
  /* check every node first, so a refusal leaves the graph as it was */
  for (int i = 0; i < n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    if (n->domain[0]) continue;
    for (int a = 0; a < n->n_attrs; a++)
      if (n->attrs[a].type == KILN__ATTR_GRAPH || n->attrs[a].type == KILN__ATTR_GRAPHS)
        return kiln__fail(q->err, KILN_UNSUPPORTED,
                          "cannot raise opset %lld to %lld: node '%s' (%s) has a subgraph",
                          (long long)from, (long long)to, kiln__quant_node_name(g, n), n->op_type);
    const char *op = n->op_type;
    bool same = is_unchanged_between(op, from, to);
    bool ok = same || (n->n_in >= 1 && n->n_out == 1 &&
                       (!strcmp(op, "Clip") || !strcmp(op, "Slice") || !strcmp(op, "Squeeze") ||
                        !strcmp(op, "Unsqueeze") || !strcmp(op, "Softmax") ||
                        !strcmp(op, "LogSoftmax") || !strcmp(op, "Hardmax")));
    /* BatchNormalization-7's spatial=0 (per-element statistics) left the op at 9 */
    ok = ok && !(!strcmp(op, "BatchNormalization") && kiln__attr_int(n, "spatial", 1) == 0);
    if (!ok)
      return kiln__fail(q->err, KILN_UNSUPPORTED,
                        "cannot raise opset %lld to %lld: node '%s' (%s) is not an op known to "
                        "keep its meaning", (long long)from, (long long)to,
                        kiln__quant_node_name(g, n), op);
  }
  kiln_status st = KILN_OK;
  for (int i = 0; st == KILN_OK && i < n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    if (n->domain[0] || is_unchanged_between(n->op_type, from, to)) continue;
    char hint[220];
    kiln__qbase(q, i, hint, sizeof hint);
    const char *op = n->op_type;
    if (!strcmp(op, "Clip")) {
      if (from < 11 && to >= 11) st = clip_inputs(q, i, hint);
    } else if (!strcmp(op, "Slice")) {
      if (from < 10 && to >= 10) st = slice_inputs(q, i, hint);
    } else if (!strcmp(op, "Squeeze") || !strcmp(op, "Unsqueeze")) {
      if (from < 13 && to >= 13) st = axes_input(q, i, hint);
    } else if (from < 13 && to >= 13) {
      st = softmax_2d(q, i, hint);
    }
  }
  if (st != KILN_OK) return st;
  g->opset = to;
  for (int i = 0; i < g->n_nodes; i++)
    if (!g->nodes[i].domain[0]) g->nodes[i].opset = to;
  return KILN_OK;
}
