/* Exact-erf GELU as exporters write it, fused into one ai.kiln Gelu:
     e1 = Add(Erf(Div(x, sqrt 2)), 1)     (or Mul(x, 1/sqrt 2))
     y  = Mul(Mul(x, e1), 0.5)            or  Mul(Mul(x, 0.5), e1)
   The tanh approximation is a different function and is never substituted. */
#include <math.h>

#include "passes/pass.h"

static bool is_op(const kiln__node *n, const char *op) {
  return !n->domain[0] && !strcmp(n->op_type, op) && n->n_out == 1;
}

static bool is_const(const kiln__pass_ctx *ctx, int v, double want, double tol) {
  double c;
  return kiln__pass_const_scalar(ctx, v, &c) && fabs(c - want) <= tol;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    const kiln__node *erf = &g->nodes[i];
    if (!is_op(erf, "Erf") || erf->in[0] < 0) continue;
    int i_scale = g->values[erf->in[0]].producer, slot;
    if (i_scale < 0 || ctx->dead[i_scale] || !kiln__pass_value_private(ctx, erf->in[0]) ||
        ctx->uses[erf->in[0]] != 1)
      continue;
    const kiln__node *sc = &g->nodes[i_scale];
    if (sc->n_in != 2) continue;
    bool div = is_op(sc, "Div") && is_const(ctx, sc->in[1], 1.41421356237309504880, 1e-6);
    bool mul = is_op(sc, "Mul") && is_const(ctx, sc->in[1], 0.70710678118654752440, 1e-7);
    if (!div && !mul) continue;
    int x = sc->in[0];
    int i_add = kiln__pass_sole_user(ctx, erf->out[0], &slot);
    if (i_add < 0 || !is_op(&g->nodes[i_add], "Add") || g->nodes[i_add].n_in != 2 ||
        !is_const(ctx, g->nodes[i_add].in[1 - slot], 1.0, 0))
      continue;
    int i_m1 = kiln__pass_sole_user(ctx, g->nodes[i_add].out[0], &slot);
    if (i_m1 < 0 || !is_op(&g->nodes[i_m1], "Mul") || g->nodes[i_m1].n_in != 2) continue;
    int other = g->nodes[i_m1].in[1 - slot];
    int i_half = -1, last = -1;
    if (other == x) {
      /* x * e1, then * 0.5 */
      int i_m2 = kiln__pass_sole_user(ctx, g->nodes[i_m1].out[0], &slot);
      if (i_m2 < 0 || !is_op(&g->nodes[i_m2], "Mul") || g->nodes[i_m2].n_in != 2 ||
          !is_const(ctx, g->nodes[i_m2].in[1 - slot], 0.5, 0))
        continue;
      i_half = i_m2;
      last = i_m2;
    } else {
      /* (x * 0.5) * e1 */
      int p = other >= 0 ? g->values[other].producer : -1;
      if (p < 0 || ctx->dead[p] || !is_op(&g->nodes[p], "Mul") || g->nodes[p].n_in != 2 ||
          ctx->uses[other] != 1 || !kiln__pass_value_private(ctx, other))
        continue;
      const kiln__node *h = &g->nodes[p];
      if (!((h->in[0] == x && is_const(ctx, h->in[1], 0.5, 0)) ||
            (h->in[1] == x && is_const(ctx, h->in[0], 0.5, 0))))
        continue;
      i_half = p;
      last = i_m1;
    }
    kiln__node *f = &g->nodes[last];
    kiln__pass_note(ctx, "%s..%s", sc->name, f->name);
    kiln_status st = kiln__pass_set_inputs(ctx, f, &x, 1);
    if (st == KILN_OK) st = kiln__pass_set_op(ctx, f, "ai.kiln", "Gelu");
    if (st != KILN_OK) return st;
    kiln__pass_clear_attrs(f);
    int chain[] = {i_scale, i, i_add, i_m1, i_half};
    for (size_t k = 0; k < sizeof chain / sizeof chain[0]; k++)
      if (chain[k] != last) kiln__pass_kill(ctx, chain[k]);
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_fuse_gelu = {"fuse-gelu", 2, run};
