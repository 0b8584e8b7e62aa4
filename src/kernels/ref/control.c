/* Reference kernels: control flow (If, Loop, Scan). Bodies run through kiln__subgraph_run, which
   allocates their values from the run's dynamic arena; outputs are copied out at the end. Output
   shapes are known only by running, so infer() defers. */
#include "ir/op.h"

static kiln_status infer_defer(kiln__kctx *c) {
  (void)c;
  return KILN__DEFER;
}

static const kiln__graph *graph_attr(const kiln__node *n, const char *name) {
  const kiln__attr *a = kiln__attr_find(n, name);
  return a && a->type == KILN__ATTR_GRAPH ? a->g : NULL;
}

/* Copies a value into output i (allocated to its shape). */
static kiln_status copy_out(kiln__kctx *c, int i, const kiln_tensor *t) {
  if (!c->out[i]) return KILN_OK;
  if (kiln__is_container(t->dtype)) return kiln__value_copy(c, t, c->out[i]);
  kiln_status st = kiln__out_alloc(c, i, t->dtype, t->rank, t->dims);
  if (st == KILN_OK && kiln_tensor_nbytes(t)) memcpy(c->out[i]->data, t->data, kiln_tensor_nbytes(t));
  return st;
}

static bool scalar_true(const kiln_tensor *t) {
  return t && kiln_tensor_count(t) >= 1 && t->data && kiln__load_i64(t->data, t->dtype, 0) != 0;
}

static kiln_status run_if(kiln__kctx *c) {
  const kiln__graph *g = graph_attr(c->node, scalar_true(c->in[0]) ? "then_branch" : "else_branch");
  if (!g) return kiln__fail(c->err, KILN_BAD_MODEL, "If needs then_branch and else_branch graphs");
  if (g->n_outputs != c->n_out)
    return kiln__fail(c->err, KILN_BAD_MODEL, "If branch has %d outputs, the node %d",
                      g->n_outputs, c->n_out);
  kiln_tensor outs[64];
  if (c->n_out > 64) return kiln__fail(c->err, KILN_UNSUPPORTED, "too many outputs");
  kiln_status st = kiln__subgraph_run(c, g, NULL, 0, outs, c->n_out);
  for (int i = 0; st == KILN_OK && i < c->n_out; i++) st = copy_out(c, i, &outs[i]);
  return st;
}

/* A list of per-iteration tensors, kept in the frame's dynamic arena. */
typedef struct stack {
  kiln_tensor *items;
  size_t n, cap;
} stack;

static kiln_status stack_push(kiln__kctx *c, stack *s, const kiln_tensor *t) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    kiln_tensor *items = kiln__dyn_scratch(c, cap * sizeof *items);
    if (!items) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory in a loop");
    if (s->n) memcpy(items, s->items, s->n * sizeof *items);
    s->items = items;
    s->cap = cap;
  }
  s->items[s->n++] = *t;
  return KILN_OK;
}

/* Output i = the stacked items along `axis` (reversed when `reverse`). */
static kiln_status stack_out(kiln__kctx *c, int i, const stack *s, int axis, bool reverse,
                             const kiln_tensor *proto) {
  if (!c->out[i]) return KILN_OK;
  kiln_tensor shape = s->n ? s->items[0] : *proto;
  if (!s->n && proto->rank < 0) shape.rank = 0;
  int rank = shape.rank + 1;
  if (rank > KILN_MAX_RANK) return kiln__fail(c->err, KILN_UNSUPPORTED, "scan output rank too high");
  int ax;
  if (!kiln__norm_axis(axis, rank, &ax))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "scan output axis %d out of range", axis);
  int64_t dims[KILN_MAX_RANK];
  for (int d = 0, k = 0; d < rank; d++) dims[d] = d == ax ? (int64_t)s->n : shape.dims[k++];
  for (size_t t = 1; t < s->n; t++) {
    bool same = s->items[t].rank == shape.rank && s->items[t].dtype == shape.dtype;
    for (int d = 0; same && d < shape.rank; d++) same = s->items[t].dims[d] == shape.dims[d];
    if (!same) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "scan outputs change shape");
  }
  kiln_status st = kiln__out_alloc(c, i, shape.dtype, rank, dims);
  if (st != KILN_OK || !s->n) return st;
  size_t es = kiln_dtype_size(shape.dtype), outer = 1, inner = 1;
  for (int d = 0; d < ax; d++) outer *= (size_t)dims[d];
  for (int d = ax + 1; d < rank; d++) inner *= (size_t)dims[d];
  uint8_t *dst = c->out[i]->data;
  for (size_t t = 0; t < s->n; t++) {
    const uint8_t *src = s->items[reverse ? s->n - 1 - t : t].data;
    for (size_t o = 0; o < outer; o++)
      memcpy(dst + ((o * s->n + t) * inner) * es, src + o * inner * es, inner * es);
  }
  return KILN_OK;
}

static kiln_status run_loop(kiln__kctx *c) {
  const kiln__graph *body = graph_attr(c->node, "body");
  if (!body) return kiln__fail(c->err, KILN_BAD_MODEL, "Loop needs a body graph");
  int n_carried = c->n_in - 2;
  int n_scan = c->n_out - n_carried;
  if (n_carried < 0 || n_scan < 0 || body->n_inputs != n_carried + 2 ||
      body->n_outputs != n_carried + 1 + n_scan || c->n_in > 64)
    return kiln__fail(c->err, KILN_BAD_MODEL, "Loop inputs, outputs and body do not agree");
  int64_t max_trip = c->in[0] && kiln_tensor_count(c->in[0]) ? kiln__load_i64(c->in[0]->data, c->in[0]->dtype, 0) : INT64_MAX;
  bool cond = c->in[1] ? scalar_true(c->in[1]) : true;
  kiln_tensor args[66], outs[66];
  stack scans[64];
  memset(scans, 0, sizeof scans);
  int64_t *iter = kiln__dyn_scratch(c, sizeof(int64_t));
  uint8_t *condv = kiln__dyn_scratch(c, 1);
  if (!iter || !condv) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory in a loop");
  args[0] = (kiln_tensor){.dtype = KILN_DTYPE_INT64, .rank = 0, .data = iter};
  args[1] = (kiln_tensor){.dtype = KILN_DTYPE_BOOL, .rank = 0, .data = condv};
  for (int k = 0; k < n_carried; k++) args[2 + k] = *c->in[2 + k];
  for (int64_t i = 0; i < max_trip && cond; i++) {
    /* each iteration gets its own counter and condition: bodies may return them as outputs */
    iter = kiln__dyn_scratch(c, sizeof(int64_t));
    condv = kiln__dyn_scratch(c, 1);
    if (!iter || !condv) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory in a loop");
    *iter = i;
    *condv = cond;
    args[0].data = iter;
    args[1].data = condv;
    kiln_status st = kiln__subgraph_run(c, body, args, n_carried + 2, outs, body->n_outputs);
    if (st != KILN_OK) return st;
    cond = scalar_true(&outs[0]);
    for (int k = 0; k < n_carried; k++) args[2 + k] = outs[1 + k];
    for (int k = 0; k < n_scan; k++)
      if ((st = stack_push(c, &scans[k], &outs[1 + n_carried + k])) != KILN_OK) return st;
  }
  for (int k = 0; k < n_carried; k++) {
    kiln_status st = copy_out(c, k, &args[2 + k]);
    if (st != KILN_OK) return st;
  }
  for (int k = 0; k < n_scan; k++) {
    kiln_tensor proto = {.dtype = KILN_DTYPE_FLOAT, .rank = 0};
    const kiln__value *bv = &body->values[body->outputs[1 + n_carried + k]];
    if (bv->dtype) proto.dtype = bv->dtype;
    kiln_status st = stack_out(c, n_carried + k, &scans[k], 0, false, &proto);
    if (st != KILN_OK) return st;
  }
  return KILN_OK;
}

/* Slice t at index i along axis ax into dst (shape without that axis). */
static kiln_tensor take_slice(kiln__kctx *c, const kiln_tensor *t, int ax, int64_t i) {
  kiln_tensor s = {.dtype = t->dtype, .rank = t->rank - 1};
  for (int d = 0, k = 0; d < t->rank; d++)
    if (d != ax) s.dims[k++] = t->dims[d];
  size_t es = kiln_dtype_size(t->dtype), outer = 1, inner = 1;
  for (int d = 0; d < ax; d++) outer *= (size_t)t->dims[d];
  for (int d = ax + 1; d < t->rank; d++) inner *= (size_t)t->dims[d];
  s.data = kiln__dyn_scratch(c, outer * inner * es);
  if (!s.data) return s;
  for (size_t o = 0; o < outer; o++)
    memcpy((uint8_t *)s.data + o * inner * es,
           (const uint8_t *)t->data + ((o * (size_t)t->dims[ax] + (size_t)i) * inner) * es,
           inner * es);
  return s;
}

static kiln_status run_scan(kiln__kctx *c) {
  const kiln__node *n = c->node;
  const kiln__graph *body = graph_attr(n, "body");
  int64_t m = kiln__attr_int(n, "num_scan_inputs", -1);
  bool v8 = n->opset < 9; /* opset 8: a leading batch axis and an optional sequence_lens */
  int first = v8 ? 1 : 0;
  int n_state = c->n_in - first - (int)m;
  int n_scan_out = c->n_out - n_state;
  if (!body || m < 1 || n_state < 0 || n_scan_out < 0 || c->n_in > 64 ||
      body->n_inputs != n_state + m || body->n_outputs != n_state + n_scan_out)
    return kiln__fail(c->err, KILN_BAD_MODEL, "Scan inputs, outputs and body do not agree");
  if (v8 && c->in[0]) return kiln__fail(c->err, KILN_UNSUPPORTED, "Scan-8 sequence_lens");
  const int64_t *in_axes = NULL, *in_dirs = NULL, *out_axes = NULL, *out_dirs = NULL;
  size_t nia = kiln__attr_ints(n, "scan_input_axes", &in_axes);
  size_t nid = kiln__attr_ints(n, v8 ? "directions" : "scan_input_directions", &in_dirs);
  size_t noa = kiln__attr_ints(n, "scan_output_axes", &out_axes);
  size_t nod = kiln__attr_ints(n, "scan_output_directions", &out_dirs);
  int64_t batch = v8 ? c->in[first + n_state]->dims[0] : 1;
  /* Opset 8 stacks per batch entry: run the scan once per batch row. */
  kiln_tensor state[64], outs[64], args[64];
  stack scans[64];
  stack batched_scans[64];
  memset(batched_scans, 0, sizeof batched_scans);
  stack batched_state[64];
  memset(batched_state, 0, sizeof batched_state);
  for (int64_t b = 0; b < batch; b++) {
    memset(scans, 0, sizeof scans);
    int64_t len = -1;
    int axes[64];
    for (int k = 0; k < m; k++) {
      const kiln_tensor *t = c->in[first + n_state + k];
      kiln_tensor row = *t;
      if (v8) row = take_slice(c, t, 0, b);
      int ax = 0;
      if (!v8 && (size_t)k < nia && !kiln__norm_axis(in_axes[k], row.rank, &ax))
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "scan input axis out of range");
      if (row.rank < 1) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "scan input is a scalar");
      axes[k] = ax;
      if (len >= 0 && row.dims[ax] != len)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "scan inputs differ in length");
      len = row.dims[ax];
      args[n_state + k] = row; /* keep the whole input; sliced below */
    }
    kiln_tensor whole[64];
    for (int k = 0; k < m; k++) whole[k] = args[n_state + k];
    for (int k = 0; k < n_state; k++) state[k] = v8 ? take_slice(c, c->in[first + k], 0, b) : *c->in[first + k];
    for (int64_t t = 0; t < len; t++) {
      for (int k = 0; k < n_state; k++) args[k] = state[k];
      for (int k = 0; k < m; k++) {
        bool rev = (size_t)k < nid && in_dirs[k] == 1;
        args[n_state + k] = take_slice(c, &whole[k], axes[k], rev ? len - 1 - t : t);
        if (!args[n_state + k].data && kiln_tensor_count(&args[n_state + k]))
          return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory in Scan");
      }
      kiln_status st = kiln__subgraph_run(c, body, args, n_state + (int)m, outs, body->n_outputs);
      if (st != KILN_OK) return st;
      for (int k = 0; k < n_state; k++) state[k] = outs[k];
      for (int k = 0; k < n_scan_out; k++)
        if ((st = stack_push(c, &scans[k], &outs[n_state + k])) != KILN_OK) return st;
    }
    if (!v8) {
      for (int k = 0; k < n_state; k++) {
        kiln_status st = copy_out(c, k, &state[k]);
        if (st != KILN_OK) return st;
      }
      for (int k = 0; k < n_scan_out; k++) {
        kiln_tensor proto = {.dtype = KILN_DTYPE_FLOAT};
        kiln_status st = stack_out(c, n_state + k, &scans[k],
                                   (size_t)k < noa ? (int)out_axes[k] : 0,
                                   (size_t)k < nod && out_dirs[k] == 1, &proto);
        if (st != KILN_OK) return st;
      }
      return KILN_OK;
    }
    /* opset 8: gather this batch row's results, stacked along the batch axis below */
    for (int k = 0; k < n_state; k++) {
      kiln_status st = stack_push(c, &batched_state[k], &state[k]);
      if (st != KILN_OK) return st;
    }
    for (int k = 0; k < n_scan_out; k++) {
      kiln_tensor tmp = {.dtype = KILN_DTYPE_FLOAT};
      kiln_tensor *slot = c->out[n_state + k];
      kiln_tensor saved = slot ? *slot : tmp;
      kiln_status st = KILN_OK;
      if (slot) {
        st = stack_out(c, n_state + k, &scans[k], 0, false, &tmp);
        if (st == KILN_OK) st = stack_push(c, &batched_scans[k], slot);
        *slot = saved;
      }
      if (st != KILN_OK) return st;
    }
  }
  for (int k = 0; k < n_state; k++) {
    kiln_tensor proto = {.dtype = KILN_DTYPE_FLOAT};
    kiln_status st = stack_out(c, k, &batched_state[k], 0, false, &proto);
    if (st != KILN_OK) return st;
  }
  for (int k = 0; k < n_scan_out; k++) {
    kiln_tensor proto = {.dtype = KILN_DTYPE_FLOAT};
    kiln_status st = stack_out(c, n_state + k, &batched_scans[k], 0, false, &proto);
    if (st != KILN_OK) return st;
  }
  return KILN_OK;
}

const kiln__op kiln__ops_control[] = {
    {"", "If", infer_defer, run_if, NULL, 0, 1, 1},
    {"", "Loop", infer_defer, run_loop, NULL, 0, 2, -1},
    {"", "Scan", infer_defer, run_scan, NULL, 0, 1, -1},
    {0},
};
