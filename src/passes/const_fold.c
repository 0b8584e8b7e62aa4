/* Constant folding. Shapes are propagated from the graph inputs' declared static dims (which a
   session enforces) and the initializers, with the ops' own infer(); a node whose inputs are all
   constants, or that reads only shapes (Shape, Size) of statically shaped values, is run now on
   its reference kernel and its outputs become initializers. This folds the Shape -> Gather ->
   Unsqueeze -> Concat -> Reshape chains exporters write, and turns Constant nodes into
   initializers, so the patterns after it see constant operands. */
#include "ir/op.h"
#include "passes/pass.h"

enum { MAX_IO = 64 };
/* A fold may grow the model by at most this much over its inputs (Expand, Tile, ConstantOfShape
   would otherwise trade a small computation for a large file-sized tensor). */
#define FOLD_SLACK_BYTES ((size_t)64 << 10)
#define FOLD_MAX_BYTES ((size_t)64 << 20)

static bool static_shape(const kiln__value *v) {
  if (v->kind != KILN__VALUE_TENSOR || v->rank < 0 || v->rank > KILN_MAX_RANK) return false;
  if (v->dtype == KILN_DTYPE_UNDEFINED || kiln_dtype_size(v->dtype) == 0) return false;
  for (int d = 0; d < v->rank; d++)
    if (v->dims[d] < 0) return false;
  return true;
}

/* Runs node n on known inputs; on success its outputs are initializers and it is dead. */
static bool fold(kiln__pass_ctx *ctx, int i, const kiln__op *op, kiln__kctx *c,
                 kiln_tensor *vals) {
  kiln__graph *g = ctx->g;
  const kiln__node *n = &g->nodes[i];
  kiln_tensor outs[MAX_IO];
  kiln_tensor *outp[MAX_IO];
  memset(outs, 0, sizeof outs);
  bool ok = true;
  kiln_error local = {0};
  for (int o = 0; o < n->n_out && ok; o++) {
    outp[o] = NULL;
    if (n->out[o] < 0) continue;
    const kiln_tensor *s = &vals[n->out[o]];
    ok = kiln_tensor_alloc(&outs[o], s->dtype, s->rank, s->dims, &local) == KILN_OK;
    outp[o] = &outs[o];
  }
  void *scratch = NULL;
  kiln__kctx rc = *c;
  rc.out = outp;
  rc.err = &local;
  if (ok && op->scratch) {
    rc.scratch_bytes = op->scratch(&rc);
    if (rc.scratch_bytes && !(scratch = kiln__aligned_alloc(rc.scratch_bytes))) ok = false;
    rc.scratch = scratch;
  }
  /* a kernel that fails here fails the same way at run time, where it is reported */
  if (ok) ok = op->run(&rc) == KILN_OK;
  kiln__aligned_free(scratch);
  if (!ok) {
    for (int o = 0; o < n->n_out; o++) kiln_tensor_release(&outs[o]);
    return false;
  }
  for (int o = 0; o < n->n_out; o++) {
    int v = n->out[o];
    if (v < 0) continue;
    kiln__value *val = &g->values[v];
    val->is_initializer = true;
    val->producer = -1; /* finalize keeps producers of initializers: clear the stale one */
    val->init = outs[o];
    val->kind = KILN__VALUE_TENSOR;
    val->dtype = outs[o].dtype;
    val->rank = outs[o].rank;
    memcpy(val->dims, outs[o].dims, sizeof val->dims);
    vals[v] = val->init;
  }
  kiln__pass_note(ctx, "%s (%s)", n->name, n->op_type);
  kiln__pass_kill(ctx, i);
  return true;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  kiln_tensor *vals = kiln__calloc((size_t)g->n_values + 1, sizeof *vals);
  bool *known = kiln__calloc((size_t)g->n_values + 1, sizeof *known);
  if (!vals || !known) {
    kiln__free(vals);
    kiln__free(known);
    return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory folding constants");
  }
  for (int v = 0; v < g->n_values; v++) {
    const kiln__value *val = &g->values[v];
    vals[v].rank = -1;
    if (val->is_initializer) {
      vals[v] = val->init;
      known[v] = val->init.dtype != KILN_DTYPE_STRING;
    } else if (val->is_input && static_shape(val)) {
      vals[v].dtype = val->dtype;
      vals[v].rank = val->rank;
      memcpy(vals[v].dims, val->dims, sizeof val->dims);
      known[v] = true;
    }
  }
  const kiln_tensor *ins[MAX_IO];
  kiln_tensor *outs[MAX_IO];
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    if (n->n_in > MAX_IO || n->n_out > MAX_IO || kiln__pass_has_subgraph(n)) continue;
    const kiln__op *op = kiln__op_find(n->domain, n->op_type);
    if (!op || n->n_in < op->min_inputs || (op->max_inputs >= 0 && n->n_in > op->max_inputs))
      continue;
    bool all_known = true, all_const = true;
    size_t in_bytes = 0;
    for (int k = 0; k < n->n_in; k++) {
      int v = n->in[k];
      ins[k] = v >= 0 ? &vals[v] : NULL;
      if (v < 0) continue;
      all_known &= known[v];
      all_const &= known[v] && vals[v].data != NULL;
      in_bytes += known[v] ? kiln_tensor_nbytes(&vals[v]) : 0;
    }
    if (!all_known) continue;
    kiln_tensor tmp[MAX_IO];
    for (int o = 0; o < n->n_out; o++) {
      memset(&tmp[o], 0, sizeof tmp[o]);
      tmp[o].rank = -1;
      outs[o] = n->out[o] >= 0 ? &tmp[o] : NULL;
    }
    kiln_error local = {0};
    kiln__kctx c = {.node = n, .n_in = n->n_in, .n_out = n->n_out, .in = ins, .out = outs,
                    .err = &local};
    if (op->infer(&c) != KILN_OK) continue;
    size_t out_bytes = 0;
    bool shaped = true;
    for (int o = 0; o < n->n_out && shaped; o++) {
      if (!outs[o]) continue;
      size_t count;
      shaped = tmp[o].rank >= 0 && tmp[o].rank <= KILN_MAX_RANK &&
               kiln_dtype_size(tmp[o].dtype) > 0 &&
               kiln__shape_count(tmp[o].rank, tmp[o].dims, &count);
      if (shaped) out_bytes += kiln_tensor_nbytes(&tmp[o]);
    }
    if (!shaped) continue;
    for (int o = 0; o < n->n_out; o++) {
      if (!outs[o]) continue;
      tmp[o].data = NULL;
      vals[n->out[o]] = tmp[o];
      known[n->out[o]] = true;
    }
    if (op->flags & KILN__OPF_SHAPE_ONLY) all_const = true;
    if (!all_const || (op->flags & KILN__OPF_NOFOLD)) continue;
    /* A quantized weight stays 8-bit behind its DequantizeLinear so fuse-qdq can hand it to an
       integer kernel; unfused, the plan folds it once per plan, so run time is the same. */
    if (!strcmp(n->op_type, "DequantizeLinear") && !n->domain[0]) continue;
    bool is_constant = !strcmp(n->op_type, "Constant") && !n->domain[0];
    if (!is_constant && (out_bytes > FOLD_MAX_BYTES || out_bytes > 2 * in_bytes + FOLD_SLACK_BYTES))
      continue;
    bool outs_private = true;
    for (int o = 0; o < n->n_out; o++)
      if (n->out[o] >= 0) outs_private &= kiln__pass_value_private(ctx, n->out[o]);
    if (!outs_private) continue; /* a graph output stays produced by its node */
    c.in = ins;
    if (fold(ctx, i, op, &c, vals)) *changed = true;
  }
  kiln__free(vals);
  kiln__free(known);
  return KILN_OK;
}

const kiln__pass kiln__pass_const_fold = {"constant-fold", 1, run};
