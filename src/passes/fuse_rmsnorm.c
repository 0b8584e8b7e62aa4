/* RMSNorm as exported (T5, LLaMA), over the last axis, fused into one ai.kiln RMSNorm:
     ms = ReduceMean(Pow(x, 2) | Mul(x, x), axes=[-1]);  r = Sqrt(Add(ms, eps))
     y  = Mul(Div(x, r) | Mul(x, Reciprocal(r)), scale)      (either operand order)
   Intermediates private to the chain; eps a scalar constant; scale a constant of 1 or (last dim)
   elements (the op requires one). */
#include "passes/pass.h"

static bool mean_last_axis(const kiln__pass_ctx *ctx, const kiln__node *n) {
  if (!kiln__pass_is(n, "ReduceMean") || kiln__attr_int(n, "keepdims", 1) != 1) return false;
  const int64_t *axes = NULL;
  size_t na = kiln__attr_ints(n, "axes", &axes);
  if (n->n_in > 1 && n->in[1] >= 0) {
    const kiln__value *a = &ctx->g->values[n->in[1]];
    if (!a->is_initializer || a->init.dtype != KILN_DTYPE_INT64) return false;
    axes = a->init.data;
    na = kiln_tensor_count(&a->init);
  }
  if (na != 1) return false;
  int rank = kiln__pass_rank(ctx, n->in[0]);
  return axes[0] == -1 || (rank > 0 && axes[0] == rank - 1);
}

/* The sole reader of v, when it is a binary `op`; *other is its other operand. */
static int binary_user(const kiln__pass_ctx *ctx, int v, const char *op, int *other) {
  int slot, u = kiln__pass_sole_user(ctx, v, &slot);
  if (u < 0 || !kiln__pass_is(&ctx->g->nodes[u], op) || ctx->g->nodes[u].n_in != 2) return -1;
  *other = ctx->g->nodes[u].in[1 - slot];
  return u;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  kiln_status st = kiln__pass_shapes(ctx);
  if (st != KILN_OK) return st;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i] || !mean_last_axis(ctx, &g->nodes[i]) || g->nodes[i].in[0] < 0) continue;
    int sq = g->nodes[i].in[0], slot;
    if (kiln__pass_sole_user(ctx, sq, &slot) != i) continue;
    int i_sq = g->values[sq].producer;
    if (i_sq < 0 || ctx->dead[i_sq] || g->nodes[i_sq].n_in != 2) continue;
    const kiln__node *sqn = &g->nodes[i_sq];
    int x = sqn->in[0];
    double c;
    bool pow2 = kiln__pass_is(sqn, "Pow") && kiln__pass_const_scalar(ctx, sqn->in[1], &c) && c == 2;
    bool mulxx = kiln__pass_is(sqn, "Mul") && sqn->in[1] == x;
    if ((!pow2 && !mulxx) || kiln__pass_dtype(ctx, x) != KILN_DTYPE_FLOAT) continue;
    int eps_v, i_add = binary_user(ctx, g->nodes[i].out[0], "Add", &eps_v);
    double eps;
    if (i_add < 0 || !kiln__pass_const_scalar(ctx, eps_v, &eps)) continue;
    int i_sqrt = kiln__pass_sole_user(ctx, g->nodes[i_add].out[0], &slot);
    if (i_sqrt < 0 || !kiln__pass_is(&g->nodes[i_sqrt], "Sqrt")) continue;
    int r = g->nodes[i_sqrt].out[0], i_norm, i_recip = -1, other;
    int u = kiln__pass_sole_user(ctx, r, &slot);
    if (u < 0) continue;
    if (kiln__pass_is(&g->nodes[u], "Div") && slot == 1 && g->nodes[u].in[0] == x) {
      i_norm = u;
    } else if (kiln__pass_is(&g->nodes[u], "Reciprocal")) {
      i_recip = u;
      i_norm = binary_user(ctx, g->nodes[u].out[0], "Mul", &other);
      if (i_norm < 0 || other != x) continue;
    } else {
      continue;
    }
    int scale = -1, i_mul = binary_user(ctx, g->nodes[i_norm].out[0], "Mul", &scale);
    const kiln_tensor *sc = kiln__pass_const_f32(ctx, scale);
    if (i_mul < 0 || !sc || sc->rank > 1) continue;
    /* Mul's broadcast of a longer or mismatched scale is not a per-feature scale */
    const kiln_tensor *xs = kiln__pass_shape(ctx, x, 0);
    size_t n_scale = kiln_tensor_count(sc);
    if (n_scale != 1 && (!xs || xs->rank < 1 || (int64_t)n_scale != xs->dims[xs->rank - 1]))
      continue;
    kiln__node *f = &g->nodes[i_mul];
    kiln__pass_note(ctx, "%s..%s", g->nodes[i_sq].name, f->name);
    int in[2] = {x, scale};
    if ((st = kiln__pass_set_inputs(ctx, f, in, 2)) != KILN_OK ||
        (st = kiln__pass_set_op(ctx, f, "ai.kiln", "RMSNorm")) != KILN_OK)
      return st;
    kiln__pass_clear_attrs(f);
    if ((st = kiln__pass_add_attr_float(ctx, f, "epsilon", (float)eps)) != KILN_OK) return st;
    int chain[] = {i_sq, i, i_add, i_sqrt, i_recip, i_norm};
    for (size_t k = 0; k < sizeof chain / sizeof chain[0]; k++)
      if (chain[k] >= 0) kiln__pass_kill(ctx, chain[k]);
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_fuse_rmsnorm = {"fuse-rmsnorm", 2, run};
