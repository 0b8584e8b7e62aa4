/* The LayerNorm PyTorch exports, over the last axis, fused into one ai.kiln LayerNorm:
     mu = ReduceMean(x, axes=[-1]); d = Sub(x, mu); var = ReduceMean(Pow(d, 2), axes=[-1])
     y = Div(d, Sqrt(Add(var, eps))) [* gamma] [+ beta]
   Every intermediate must be private to the chain; eps, gamma and beta constant. */
#include "passes/pass.h"

static bool is_op(const kiln__node *n, const char *op) {
  return !n->domain[0] && !strcmp(n->op_type, op);
}

/* ReduceMean over the last axis only, keeping dims (axes as attribute, or input from opset 18). */
static bool mean_last_axis(const kiln__pass_ctx *ctx, const kiln__node *n) {
  if (!is_op(n, "ReduceMean") || n->n_out != 1 || kiln__attr_int(n, "keepdims", 1) != 1)
    return false;
  const int64_t *axes = NULL;
  size_t na = kiln__attr_ints(n, "axes", &axes);
  if (n->n_in > 1 && n->in[1] >= 0) {
    const kiln__value *a = &ctx->g->values[n->in[1]];
    if (!a->is_initializer || a->init.dtype != KILN_DTYPE_INT64) return false;
    axes = a->init.data;
    na = kiln_tensor_count(&a->init);
  }
  return na == 1 && axes[0] == -1;
}

/* The other input of a binary node, given the slot `v` is read from. */
static int other_input(const kiln__node *n, int slot) { return n->in[1 - slot]; }

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    const kiln__node *rm1 = &g->nodes[i];
    if (!mean_last_axis(ctx, rm1) || rm1->in[0] < 0) continue;
    int x = rm1->in[0], slot;
    int i_sub = kiln__pass_sole_user(ctx, rm1->out[0], &slot);
    if (i_sub < 0 || slot != 1) continue;
    const kiln__node *sub = &g->nodes[i_sub];
    if (!is_op(sub, "Sub") || sub->in[0] != x) continue;
    int d = sub->out[0];
    /* d feeds Pow and Div, nothing else */
    if (ctx->uses[d] != 2 || !kiln__pass_value_private(ctx, d)) continue;
    int i_pow = -1, i_div = -1;
    for (int j = 0; j < g->n_nodes; j++) {
      if (ctx->dead[j]) continue;
      const kiln__node *n = &g->nodes[j];
      if (n->n_in == 2 && n->in[0] == d && is_op(n, "Pow")) i_pow = j;
      if (n->n_in == 2 && n->in[0] == d && is_op(n, "Div")) i_div = j;
    }
    if (i_pow < 0 || i_div < 0) continue;
    double c;
    if (!kiln__pass_const_scalar(ctx, g->nodes[i_pow].in[1], &c) || c != 2.0) continue;
    int i_rm2 = kiln__pass_sole_user(ctx, g->nodes[i_pow].out[0], &slot);
    if (i_rm2 < 0 || slot != 0 || !mean_last_axis(ctx, &g->nodes[i_rm2])) continue;
    int i_add = kiln__pass_sole_user(ctx, g->nodes[i_rm2].out[0], &slot);
    if (i_add < 0 || !is_op(&g->nodes[i_add], "Add") || g->nodes[i_add].n_in != 2) continue;
    double eps;
    if (!kiln__pass_const_scalar(ctx, other_input(&g->nodes[i_add], slot), &eps)) continue;
    int i_sqrt = kiln__pass_sole_user(ctx, g->nodes[i_add].out[0], &slot);
    if (i_sqrt < 0 || !is_op(&g->nodes[i_sqrt], "Sqrt")) continue;
    int i_div2 = kiln__pass_sole_user(ctx, g->nodes[i_sqrt].out[0], &slot);
    if (i_div2 != i_div || slot != 1) continue;
    /* optional affine: Mul by gamma, then Add beta (constants of rank <= 1) */
    int last = i_div, gamma = -1, beta = -1, i_mul = -1, i_badd = -1;
    int nxt = kiln__pass_sole_user(ctx, g->nodes[i_div].out[0], &slot);
    if (nxt >= 0 && is_op(&g->nodes[nxt], "Mul") && g->nodes[nxt].n_in == 2) {
      const kiln_tensor *t = kiln__pass_const_f32(ctx, other_input(&g->nodes[nxt], slot));
      if (t && t->rank <= 1) {
        gamma = other_input(&g->nodes[nxt], slot);
        last = i_mul = nxt;
        nxt = kiln__pass_sole_user(ctx, g->nodes[nxt].out[0], &slot);
      }
    }
    if (nxt >= 0 && is_op(&g->nodes[nxt], "Add") && g->nodes[nxt].n_in == 2) {
      const kiln_tensor *t = kiln__pass_const_f32(ctx, other_input(&g->nodes[nxt], slot));
      if (t && t->rank <= 1) {
        beta = other_input(&g->nodes[nxt], slot);
        last = i_badd = nxt;
      }
    }
    kiln__node *f = &g->nodes[last];
    const char *name0 = g->nodes[i].name;
    kiln__pass_note(ctx, "%s..%s (%d nodes)", name0, f->name,
                    7 + (i_mul >= 0) + (i_badd >= 0));
    int in[3] = {x, gamma, beta};
    int n_in = beta >= 0 ? 3 : gamma >= 0 ? 2 : 1;
    kiln_status st = kiln__pass_set_inputs(ctx, f, in, n_in);
    if (st == KILN_OK) st = kiln__pass_set_op(ctx, f, "ai.kiln", "LayerNorm");
    if (st != KILN_OK) return st;
    kiln__pass_clear_attrs(f);
    if ((st = kiln__pass_add_attr_float(ctx, f, "epsilon", (float)eps)) != KILN_OK) return st;
    int chain[] = {i, i_sub, i_pow, i_rm2, i_add, i_sqrt, i_div, i_mul, i_badd};
    for (size_t k = 0; k < sizeof chain / sizeof chain[0]; k++)
      if (chain[k] >= 0 && chain[k] != last) kiln__pass_kill(ctx, chain[k]);
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_fuse_layernorm = {"fuse-layernorm", 2, run};
