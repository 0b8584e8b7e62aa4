/* Shapes for the fusion patterns. A fusion that adds a residual or builds an Attention must know
   that two values have the same shape, or that one broadcasts to another without widening it;
   with symbolic dims ("batch", "seq") no number says so. So shapes are inferred twice with the
   ops' infer(), substituting different sizes for each named symbolic dim of the graph inputs
   (each unnamed one is a symbol of its own): shapes equal under both substitutions are taken as
   the same symbolic shape. Only infer() runs, never a kernel: a shape that depends on data not
   known (a Shape of a symbolic value feeding a Reshape) stays unknown, and patterns needing it
   are left alone. */
#include "ir/op.h"
#include "passes/pass.h"

enum { MAX_IO = 64, MAX_SYMBOLS = 64 };

/* Sizes for symbol j under each substitution: distinct primes, so products of different symbols
   rarely coincide, and never 1 (which would broadcast). */
static const int64_t probe_sizes[2][16] = {
    {11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71},
    {73, 79, 83, 89, 97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151},
};

static int64_t probe_size(int probe, int sym) {
  return probe_sizes[probe][sym % 16] + 160 * (sym / 16) * (probe + 1);
}

/* Shape arithmetic (Shape -> Slice -> Concat -> Reshape of a symbolic value) is data: a node with
   every input's data known and small outputs is run, so the Reshape after it has a shape. */
enum { EVAL_MAX_BYTES = 4096 };

static void eval_small(const kiln__node *n, const kiln__op *op, kiln__kctx *c, kiln_tensor *vals,
                       bool *own) {
  if (op->flags & KILN__OPF_NOFOLD) return;
  bool shape_only = (op->flags & KILN__OPF_SHAPE_ONLY) != 0;
  for (int k = 0; k < n->n_in; k++)
    if (n->in[k] >= 0 && !vals[n->in[k]].data && !shape_only) return;
  size_t bytes = 0;
  for (int o = 0; o < n->n_out; o++)
    if (n->out[o] >= 0) bytes += kiln_tensor_nbytes(&vals[n->out[o]]);
  if (bytes > EVAL_MAX_BYTES || op->scratch) return;
  kiln_tensor res[MAX_IO];
  kiln_tensor *outp[MAX_IO];
  kiln_error local = {0};
  bool ok = true;
  for (int o = 0; o < n->n_out; o++) {
    memset(&res[o], 0, sizeof res[o]);
    outp[o] = NULL;
    if (n->out[o] < 0 || !ok) continue;
    const kiln_tensor *s = &vals[n->out[o]];
    ok = kiln_tensor_alloc(&res[o], s->dtype, s->rank, s->dims, &local) == KILN_OK;
    outp[o] = &res[o];
  }
  kiln__kctx rc = *c;
  rc.out = outp;
  rc.err = &local;
  if (ok) ok = op->run(&rc) == KILN_OK;
  for (int o = 0; o < n->n_out; o++) {
    if (!ok || n->out[o] < 0) {
      kiln_tensor_release(&res[o]);
      continue;
    }
    vals[n->out[o]] = res[o];
    own[n->out[o]] = true;
  }
}

static void infer_probe(kiln__pass_ctx *ctx, int probe, kiln_tensor *vals, bool *own) {
  kiln__graph *g = ctx->g;
  const char *names[MAX_SYMBOLS];
  int n_names = 0, unnamed = 0;
  for (int v = 0; v < g->n_values; v++) {
    const kiln__value *val = &g->values[v];
    kiln_tensor *t = &vals[v];
    memset(t, 0, sizeof *t);
    t->rank = -1;
    if (val->is_initializer) {
      *t = val->init;
    } else if (val->is_input && val->kind == KILN__VALUE_TENSOR && val->rank >= 0 &&
               val->dtype != KILN_DTYPE_UNDEFINED) {
      t->dtype = val->dtype;
      t->rank = val->rank;
      for (int d = 0; d < val->rank; d++) {
        if (val->dims[d] >= 0) {
          t->dims[d] = val->dims[d];
          continue;
        }
        int sym = -1;
        const char *p = val->dim_params[d];
        for (int j = 0; p && j < n_names && sym < 0; j++)
          if (!strcmp(names[j], p)) sym = j;
        if (sym < 0 && p && n_names < MAX_SYMBOLS) {
          names[n_names] = p;
          sym = n_names++;
        }
        if (sym < 0) sym = MAX_SYMBOLS + unnamed++;
        t->dims[d] = probe_size(probe, sym);
      }
    }
  }
  const kiln_tensor *ins[MAX_IO];
  kiln_tensor *outs[MAX_IO];
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    if (ctx->dead[i] || n->n_in > MAX_IO || n->n_out > MAX_IO || kiln__pass_has_subgraph(n))
      continue;
    const kiln__op *op = kiln__op_find(n->domain, n->op_type);
    if (!op || n->n_in < op->min_inputs || (op->max_inputs >= 0 && n->n_in > op->max_inputs))
      continue;
    bool known = true;
    for (int k = 0; k < n->n_in && known; k++) {
      ins[k] = n->in[k] >= 0 ? &vals[n->in[k]] : NULL;
      known = n->in[k] < 0 || vals[n->in[k]].rank >= 0;
    }
    if (!known) continue;
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
    bool shaped = true;
    for (int o = 0; o < n->n_out; o++) {
      if (!outs[o]) continue;
      size_t count;
      shaped &= tmp[o].rank >= 0 && tmp[o].rank <= KILN_MAX_RANK &&
                kiln_dtype_size(tmp[o].dtype) > 0 &&
                kiln__shape_count(tmp[o].rank, tmp[o].dims, &count);
      tmp[o].data = NULL;
    }
    if (!shaped) continue;
    for (int o = 0; o < n->n_out; o++)
      if (outs[o]) vals[n->out[o]] = tmp[o];
    eval_small(n, op, &c, vals, own);
  }
  /* only shapes are kept: initializer data stays with the graph, computed data goes */
  for (int v = 0; v < g->n_values; v++) {
    if (own[v]) kiln_tensor_release(&vals[v]);
    vals[v].data = NULL;
  }
}

kiln_status kiln__pass_shapes(kiln__pass_ctx *ctx) {
  if (ctx->shape[0]) return KILN_OK;
  size_t n = (size_t)ctx->g->n_values + 1;
  for (int p = 0; p < 2; p++)
    if (!(ctx->shape[p] = kiln__calloc(n, sizeof *ctx->shape[p]))) {
      kiln__free(ctx->shape[0]);
      ctx->shape[0] = NULL;
      return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory inferring shapes");
    }
  bool *own = kiln__calloc(n, sizeof *own);
  if (!own) return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory inferring shapes");
  for (int p = 0; p < 2; p++) {
    memset(own, 0, n * sizeof *own);
    infer_probe(ctx, p, ctx->shape[p], own);
  }
  kiln__free(own);
  ctx->shape_n = ctx->g->n_values;
  return KILN_OK;
}

const kiln_tensor *kiln__pass_shape(const kiln__pass_ctx *ctx, int v, int probe) {
  if (v < 0 || v >= ctx->shape_n || !ctx->shape[probe]) return NULL;
  const kiln_tensor *t = &ctx->shape[probe][v];
  return t->rank >= 0 ? t : NULL;
}

int kiln__pass_rank(const kiln__pass_ctx *ctx, int v) {
  const kiln_tensor *a = kiln__pass_shape(ctx, v, 0), *b = kiln__pass_shape(ctx, v, 1);
  return a && b && a->rank == b->rank ? a->rank : -1;
}

kiln_dtype kiln__pass_dtype(const kiln__pass_ctx *ctx, int v) {
  const kiln_tensor *a = kiln__pass_shape(ctx, v, 0), *b = kiln__pass_shape(ctx, v, 1);
  return a && b && a->dtype == b->dtype ? a->dtype : KILN_DTYPE_UNDEFINED;
}

bool kiln__pass_static4(const kiln__pass_ctx *ctx, int v, int64_t dims[4]) {
  const kiln_tensor *a = kiln__pass_shape(ctx, v, 0), *b = kiln__pass_shape(ctx, v, 1);
  if (!a || !b || a->rank != 4 || b->rank != 4) return false;
  for (int d = 0; d < 4; d++) {
    if (a->dims[d] <= 0 || a->dims[d] != b->dims[d]) return false;
    dims[d] = a->dims[d];
  }
  return true;
}

bool kiln__pass_fits(const kiln__pass_ctx *ctx, int a, int b, bool allow_ones) {
  for (int p = 0; p < 2; p++) {
    const kiln_tensor *x = kiln__pass_shape(ctx, a, p), *y = kiln__pass_shape(ctx, b, p);
    if (!x || !y || x->rank > y->rank || (!allow_ones && x->rank != y->rank)) return false;
    for (int d = 1; d <= x->rank; d++) {
      int64_t xd = x->dims[x->rank - d], yd = y->dims[y->rank - d];
      if (xd != yd && !(allow_ones && xd == 1)) return false;
    }
  }
  return true;
}
