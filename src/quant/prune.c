/* Magnitude pruning of Conv, MatMul and Gemm weights.
 *
 * Unstructured: per layer, the floor(sparsity * count) weights of smallest |w| become 0. Shapes do
 * not change, so dense kernels run exactly as fast; only a compressed file shrinks.
 *
 * Structured: per layer, the floor(sparsity * C) output channels (Conv filters, MatMul/Gemm output
 * columns) of smallest L1 norm are removed, with their bias entries, and the matching input
 * channels of the one layer that consumes them. The path from producer to consumer may pass
 * through ops that keep channels apart (activations, pooling, BatchNormalization and a constant
 * per-channel Add/Mul, whose parameters are sliced too) and a Flatten(axis=1) of an NCHW tensor
 * into a Gemm/MatMul (channel c becomes the block of rows [c*S, (c+1)*S)). Anything else on the
 * path (a residual Add, Concat, Reshape, a second reader, a graph output) leaves the layer whole,
 * and the report says why. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "onnx/export.h"
#include "onnx/import.h"
#include "quant/qeval.h"
#include "quant/quant.h"

void kiln_prune_report_free(kiln_prune_report *r) {
  if (!r) return;
  kiln__free(r->layers);
  r->layers = NULL;
  r->n_layers = 0;
}

/* Nodes reading value v (inputs or subgraph captures); the count, the first in *first. */
static int readers(const kiln__graph *g, int v, int *first) {
  int n = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *nd = &g->nodes[i];
    bool reads = false;
    for (int k = 0; k < nd->n_in; k++) reads |= nd->in[k] == v;
    for (int k = 0; k < nd->n_captures; k++) reads |= nd->captures[k] == v;
    if (reads && n++ == 0) *first = i;
  }
  return n;
}

/* The float32 initializer at value v that only this use reads (so it may be sliced). */
static kiln_tensor *own_weight(kiln__graph *g, int v) {
  if (v < 0) return NULL;
  kiln__value *val = &g->values[v];
  int first;
  if (!val->is_initializer || val->is_input || val->is_output || val->is_outer ||
      val->init.dtype != KILN_DTYPE_FLOAT || !val->init.data || readers(g, v, &first) != 1)
    return NULL;
  return &val->init;
}

/* Keeps the entries `keep` (ascending) along `axis` of t, in place of t. */
static kiln_status slice_axis(kiln__graph *g, int v, int axis, const int64_t *keep, int64_t n_keep,
                              kiln_error *err) {
  kiln__value *val = &g->values[v];
  kiln_tensor *t = &val->init;
  int64_t dims[KILN_MAX_RANK];
  memcpy(dims, t->dims, sizeof dims);
  size_t outer = 1, inner = 1, len = (size_t)t->dims[axis];
  for (int d = 0; d < axis; d++) outer *= (size_t)t->dims[d];
  for (int d = axis + 1; d < t->rank; d++) inner *= (size_t)t->dims[d];
  dims[axis] = n_keep;
  kiln_tensor s;
  kiln_status st = kiln_tensor_alloc(&s, KILN_DTYPE_FLOAT, t->rank, dims, err);
  if (st != KILN_OK) return st;
  const float *src = t->data;
  float *dst = s.data;
  for (size_t o = 0; o < outer; o++)
    for (int64_t k = 0; k < n_keep; k++)
      memcpy(dst + (o * (size_t)n_keep + (size_t)k) * inner,
             src + (o * len + (size_t)keep[k]) * inner, inner * sizeof *dst);
  kiln_tensor_release(t);
  *t = s;
  memcpy(val->dims, s.dims, sizeof val->dims);
  val->rank = s.rank;
  return KILN_OK;
}

/* The axis of a per-channel parameter p of `c` channels on a tensor whose channel axis is `axis`
   of `rank` (numpy broadcasting): -1 when p is not exactly per-channel. */
static int param_axis(const kiln_tensor *p, int64_t c, int axis, int rank) {
  if (!p || p->rank < 1 || p->rank > rank) return -1;
  int pa = axis - (rank - p->rank); /* the channel axis in p's own dims */
  if (pa < 0) return -1;
  for (int d = 0; d < p->rank; d++)
    if (p->dims[d] != (d == pa ? c : 1)) return -1;
  return pa;
}

/* One producer's pruning plan: the values and parameters to slice, found before anything
   changes, so a layer is either pruned whole or left untouched. */
enum { MAX_PARAMS = 16 };
typedef struct plan {
  int params[MAX_PARAMS], axes[MAX_PARAMS]; /* per-channel parameters on the path */
  int n_params;
  int consumer;     /* the node that reads the channels */
  int64_t block;    /* rows per channel in the consumer (Flatten: S; else 1) */
} plan;

/* Follows producer i's output to the layer that consumes its channels. The channel axis is 1 for
   Conv and the last for MatMul/Gemm; `rank` is the output's rank (-1 unknown). */
static const char *follow(kiln__graph *g, int i, int64_t c, plan *p) {
  const kiln__node *n = &g->nodes[i];
  bool conv = !strcmp(n->op_type, "Conv");
  int v = n->out[0];
  int rank = conv ? 4 : 2, axis = conv ? 1 : -1; /* MatMul: last axis, any rank */
  int64_t block = 1;
  p->n_params = 0;
  for (int steps = 0; steps < 64; steps++) {
    const kiln__value *val = &g->values[v];
    if (val->is_output) return "its output is a graph output";
    int r = -1, cnt = readers(g, v, &r);
    if (cnt == 0) return "its output is not read";
    if (cnt > 1) return "its output has several readers (e.g. a residual)";
    const kiln__node *u = &g->nodes[r];
    const char *op = u->domain[0] ? "" : u->op_type;
    if (u->n_out < 1 || u->out[0] < 0) return "a reader with no output";
    static const char *const pointwise[] = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu",
                                            "Selu", "HardSigmoid", "HardSwish", "Softplus",
                                            "Clip", "Gelu", "Identity", "Dropout", "Erf"};
    bool pw = false;
    for (size_t k = 0; k < sizeof pointwise / sizeof pointwise[0]; k++)
      pw |= !strcmp(op, pointwise[k]);
    if (pw && u->in[0] == v) {
      /* Clip's min/max are scalars: per-tensor, fine */
      v = u->out[0];
      continue;
    }
    if (block == 1 && conv && (!strcmp(op, "MaxPool") || !strcmp(op, "AveragePool") ||
                               !strcmp(op, "GlobalAveragePool") || !strcmp(op, "GlobalMaxPool")) &&
        u->n_out == 1) {
      v = u->out[0];
      continue;
    }
    if (block == 1 && !strcmp(op, "BatchNormalization") && u->in[0] == v && u->n_in == 5 &&
        u->n_out == 1) {
      int ax = conv ? 1 : -1;
      if (!conv) return "BatchNormalization after a MatMul/Gemm";
      for (int k = 1; k < 5; k++) {
        kiln_tensor *t = own_weight(g, u->in[k]);
        if (!t || t->rank != 1 || t->dims[0] != c) return "BatchNormalization with shared or odd parameters";
        p->params[p->n_params] = u->in[k];
        p->axes[p->n_params++] = 0;
      }
      (void)ax;
      v = u->out[0];
      continue;
    }
    if (block == 1 && (!strcmp(op, "Add") || !strcmp(op, "Mul")) && u->n_in == 2) {
      int other = u->in[0] == v ? u->in[1] : u->in[0];
      kiln_tensor *t = own_weight(g, other);
      int pa = -1;
      if (t && axis == -1) pa = t->rank >= 1 && t->dims[t->rank - 1] == c ? t->rank - 1 : -1;
      if (pa >= 0 && axis == -1)
        for (int d = 0; d < t->rank - 1; d++)
          if (t->dims[d] != 1) pa = -1;
      if (t && axis >= 0) pa = param_axis(t, c, axis, rank);
      if (pa < 0) return "an Add/Mul with something other than a constant per-channel operand";
      if (p->n_params >= MAX_PARAMS) return "too many parameters on the path";
      p->params[p->n_params] = other;
      p->axes[p->n_params++] = pa;
      v = u->out[0];
      continue;
    }
    if (block == 1 && conv && !strcmp(op, "Flatten") && kiln__attr_int(u, "axis", 1) == 1) {
      block = 0; /* known once the consumer's K is seen */
      v = u->out[0];
      continue;
    }
    if (!strcmp(op, "Conv") && u->in[0] == v && block == 1 && conv &&
        kiln__attr_int(u, "group", 1) == 1) {
      kiln_tensor *w = own_weight(g, u->in[1]);
      if (!w || w->rank < 3 || w->dims[1] != c) return "the consumer Conv's weight is shared or odd";
      p->consumer = r;
      p->block = 1;
      return NULL;
    }
    bool gemm = !strcmp(op, "Gemm"), mm = !strcmp(op, "MatMul");
    if ((gemm || mm) && u->in[0] == v && (conv ? block == 0 : block == 1)) {
      if (gemm && kiln__attr_int(u, "transA", 0)) return "the consumer Gemm has transA";
      kiln_tensor *w = own_weight(g, u->in[1]);
      if (!w || w->rank != 2) return "the consumer's weight is shared, computed or not 2-D";
      int64_t k = gemm && kiln__attr_int(u, "transB", 0) ? w->dims[1] : w->dims[0];
      if (conv) {
        if (k % c) return "Flatten into a layer whose K is not a multiple of the channels";
        block = k / c;
      } else if (k != c) {
        return "the consumer's K does not match";
      }
      p->consumer = r;
      p->block = block;
      return NULL;
    }
    if (block == 0) return "Flatten into something other than a Gemm/MatMul";
    return "an op the channel mapping does not follow";
  }
  return "a path longer than 64 nodes";
}

typedef struct normix {
  double norm;
  int64_t index;
} normix;

static int normix_cmp(const void *a, const void *b) {
  const normix *x = a, *y = b;
  if (x->norm != y->norm) return x->norm < y->norm ? -1 : 1;
  return x->index < y->index ? -1 : x->index > y->index;
}

static int i64_cmp(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* Removes the lowest-L1 output channels of layer i, if its channels can be followed. */
static kiln_status prune_structured(kiln__graph *g, int i, double sparsity, kiln_prune_layer *L,
                                    kiln_error *err) {
  const kiln__node *n = &g->nodes[i];
  bool conv = !strcmp(n->op_type, "Conv");
  bool gemm = !strcmp(n->op_type, "Gemm");
  kiln_tensor *w = own_weight(g, n->in[1]);
  int wv = n->in[1];
  if (!w) return snprintf(L->skipped, sizeof L->skipped, "its weight is shared"), KILN_OK;
  /* the output-channel axis of the weight */
  int wax;
  if (conv) {
    if (kiln__attr_int(n, "group", 1) != 1)
      return snprintf(L->skipped, sizeof L->skipped, "a grouped Conv"), KILN_OK;
    wax = 0;
  } else if (w->rank != 2) {
    return snprintf(L->skipped, sizeof L->skipped, "a weight that is not 2-D"), KILN_OK;
  } else if (gemm) {
    if (kiln__attr_int(n, "transA", 0))
      return snprintf(L->skipped, sizeof L->skipped, "a Gemm with transA"), KILN_OK;
    wax = kiln__attr_int(n, "transB", 0) ? 0 : 1;
  } else {
    wax = 1;
  }
  int64_t c = w->dims[wax];
  L->channels_before = L->channels_after = c;
  int64_t drop = (int64_t)floor(sparsity * (double)c);
  if (drop >= c) drop = c - 1;
  int bias = conv || gemm ? (n->n_in > 2 ? n->in[2] : -1) : -1;
  if (bias >= 0) {
    kiln_tensor *b = own_weight(g, bias);
    if (!b || !(b->rank == 1 && b->dims[0] == c)) {
      return snprintf(L->skipped, sizeof L->skipped, "a bias that is shared or not [C]"), KILN_OK;
    }
  }
  plan p = {0};
  const char *why = follow(g, i, c, &p);
  if (why) return snprintf(L->skipped, sizeof L->skipped, "%s", why), KILN_OK;
  if (drop <= 0) return KILN_OK;
  /* L1 norm per output channel, lowest first (ties: the lower index goes first) */
  normix *nx = kiln__malloc((size_t)c * sizeof *nx);
  int64_t *keep = kiln__malloc((size_t)c * sizeof *keep);
  int64_t *rows = NULL;
  if (!nx || !keep) {
    kiln__free(nx), kiln__free(keep);
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory pruning");
  }
  size_t count = kiln_tensor_count(w), per = count / (size_t)c;
  const float *wd = w->data;
  for (int64_t ch = 0; ch < c; ch++) {
    double s = 0;
    for (size_t k = 0; k < per; k++)
      s += fabs(wax == 0 ? wd[(size_t)ch * per + k] : wd[k * (size_t)c + (size_t)ch]);
    nx[ch] = (normix){s, ch};
  }
  qsort(nx, (size_t)c, sizeof *nx, normix_cmp);
  int64_t n_keep = c - drop;
  for (int64_t k = 0; k < n_keep; k++) keep[k] = nx[drop + k].index;
  qsort(keep, (size_t)n_keep, sizeof *keep, i64_cmp);
  kiln_status st = slice_axis(g, wv, wax, keep, n_keep, err);
  if (st == KILN_OK && bias >= 0) st = slice_axis(g, bias, 0, keep, n_keep, err);
  for (int k = 0; st == KILN_OK && k < p.n_params; k++)
    st = slice_axis(g, p.params[k], p.axes[k], keep, n_keep, err);
  /* the consumer's input channels: Conv W dim 1; Gemm/MatMul K rows (block-wise after Flatten) */
  const kiln__node *u = &g->nodes[p.consumer];
  if (st == KILN_OK) {
    int64_t nr = n_keep * p.block;
    if (!(rows = kiln__malloc((size_t)nr * sizeof *rows))) st = kiln__fail(err, KILN_NO_MEMORY, "out of memory pruning");
    for (int64_t k = 0; rows && k < n_keep; k++)
      for (int64_t s = 0; s < p.block; s++) rows[k * p.block + s] = keep[k] * p.block + s;
    int cax = !strcmp(u->op_type, "Conv") ? 1
              : !strcmp(u->op_type, "Gemm") && kiln__attr_int(u, "transB", 0) ? 1
                                                                              : 0;
    if (st == KILN_OK) st = slice_axis(g, u->in[1], cax, rows, nr, err);
  }
  if (st == KILN_OK) {
    L->channels_after = n_keep;
    /* the shapes of values on the path changed: let the loader infer them again */
    for (int v = 0; v < g->n_values; v++) {
      kiln__value *val = &g->values[v];
      if (!val->is_initializer && !val->is_input && !val->is_output) val->rank = -1;
    }
  }
  kiln__free(nx), kiln__free(keep), kiln__free(rows);
  return st;
}

typedef struct absix {
  float a;
  size_t i;
} absix;

static int absix_cmp(const void *x, const void *y) {
  const absix *a = x, *b = y;
  if (a->a != b->a) return a->a < b->a ? -1 : 1;
  return a->i < b->i ? -1 : a->i > b->i;
}

/* Zeroes the floor(sparsity * count) smallest |w| of layer i's weight (ties: lower index). */
static kiln_status prune_unstructured(kiln__graph *g, int i, double sparsity, kiln_prune_layer *L,
                                      kiln_error *err) {
  kiln__value *val = &g->values[g->nodes[i].in[1]];
  kiln_tensor *w = &val->init;
  size_t n = kiln_tensor_count(w);
  L->weights_before = n;
  size_t drop = (size_t)floor(sparsity * (double)n);
  float *d = w->data;
  if (drop > 0) {
    absix *a = kiln__malloc(n * sizeof *a);
    if (!a) return kiln__fail(err, KILN_NO_MEMORY, "out of memory pruning");
    for (size_t k = 0; k < n; k++) a[k] = (absix){fabsf(d[k]), k};
    qsort(a, n, sizeof *a, absix_cmp);
    for (size_t k = 0; k < drop; k++) d[a[k].i] = 0.0f;
    kiln__free(a);
  }
  for (size_t k = 0; k < n; k++) L->weights_zero += d[k] == 0.0f;
  return KILN_OK;
}

static void count_params(const kiln__graph *g, size_t *params, size_t *zeros) {
  *params = *zeros = 0;
  for (int v = 0; v < g->n_values; v++) {
    const kiln__value *val = &g->values[v];
    if (!val->is_initializer || !val->init.data || val->init.dtype != KILN_DTYPE_FLOAT) continue;
    size_t n = kiln_tensor_count(&val->init);
    const float *d = val->init.data;
    *params += n;
    for (size_t k = 0; k < n; k++) *zeros += d[k] == 0.0f;
  }
}

kiln_status kiln_prune_file(const char *path, const char *out_path, kiln_prune_mode mode,
                            double sparsity, kiln_prune_report *report, kiln_error *err) {
  memset(report, 0, sizeof *report);
  if (!path || !out_path)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "prune: a model and an output path are needed");
  if (!(sparsity >= 0.0 && sparsity < 1.0))
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "prune: sparsity %g is not in [0, 1)", sparsity);
  if (mode != KILN_PRUNE_STRUCTURED && mode != KILN_PRUNE_UNSTRUCTURED)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "prune: unknown mode %d", (int)mode);
  kiln__graph *g = NULL;
  kiln_status st = kiln__onnx_import_file(path, &g, err);
  if (st == KILN_OK) {
    kiln__quant_const_to_init(g); /* weights written as Constant nodes (paddle2onnx) are layers */
    count_params(g, &report->params_before, &report->zeros_before);
    size_t cap = 0;
    for (int i = 0; i < g->n_nodes; i++) cap += kiln__is_weight_layer(g, &g->nodes[i]);
    if (cap == 0)
      st = kiln__fail(err, KILN_UNSUPPORTED,
                      "nothing to prune: no Conv, MatMul or Gemm with a constant float32 weight");
    else if (!(report->layers = kiln__calloc(cap, sizeof *report->layers)))
      st = kiln__fail(err, KILN_NO_MEMORY, "out of memory");
  }
  /* graph order: a layer's input channels may already be fewer when its own turn comes */
  for (int i = 0; st == KILN_OK && i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    if (!kiln__is_weight_layer(g, n)) continue;
    kiln_prune_layer *L = &report->layers[report->n_layers++];
    snprintf(L->name, sizeof L->name, "%s", kiln__quant_node_name(g, n));
    snprintf(L->op, sizeof L->op, "%s", n->op_type);
    st = mode == KILN_PRUNE_STRUCTURED ? prune_structured(g, i, sparsity, L, err)
                                       : prune_unstructured(g, i, sparsity, L, err);
  }
  if (st == KILN_OK) {
    count_params(g, &report->params_after, &report->zeros_after);
    st = kiln__onnx_export(g, "kiln-prune", out_path, err);
  }
  if (st != KILN_OK) {
    kiln__err_prefix(err, "%s", path);
    kiln_prune_report_free(report);
  }
  kiln__graph_free(g);
  return st;
}
