/* GELU as exporters write it, fused into one ai.kiln Gelu:
     exact:  e1 = Add(Erf(Div(x, sqrt 2)), 1)     (or Mul(x, 1/sqrt 2))
     tanh:   e1 = Add(Tanh(Mul(Add(x, Mul(x^3, 0.044715)), sqrt(2/pi))), 1)
             with x^3 as Pow(x, 3) or Mul(x, Mul(x, x)), commutative operands in either order
     then    y  = Mul(Mul(x, e1), 0.5)            or  Mul(Mul(x, 0.5), e1)
   The tanh form becomes Gelu(approximate="tanh"): each form is fused into itself, never into the
   other (that would change results). */
#include <math.h>

#include "passes/pass.h"

static bool is_op(const kiln__node *n, const char *op) {
  return !n->domain[0] && !strcmp(n->op_type, op) && n->n_out == 1;
}

static bool is_const(const kiln__pass_ctx *ctx, int v, double want, double tol) {
  double c;
  return kiln__pass_const_scalar(ctx, v, &c) && fabs(c - want) <= tol;
}

/* Node p produces v, is a live binary op `op`, and v is read once and private. */
static bool private_op(const kiln__pass_ctx *ctx, int v, const char *op, int *p) {
  *p = v >= 0 ? ctx->g->values[v].producer : -1;
  return *p >= 0 && !ctx->dead[*p] && is_op(&ctx->g->nodes[*p], op) &&
         ctx->g->nodes[*p].n_in == 2 && ctx->uses[v] == 1 && kiln__pass_value_private(ctx, v);
}

/* The other operand of binary node n when one operand is the scalar constant `want`; -1 else. */
static int with_const(const kiln__pass_ctx *ctx, const kiln__node *n, double want, double tol) {
  if (is_const(ctx, n->in[1], want, tol)) return n->in[0];
  if (is_const(ctx, n->in[0], want, tol)) return n->in[1];
  return -1;
}

/* The tanh form's argument u = sqrt(2/pi) (x + 0.044715 x^3) ending at Tanh's input: x, and the
   nodes computing u (up to 5) in chain; -1 when it does not match. */
static int match_tanh_arg(const kiln__pass_ctx *ctx, int u, int *chain, int *n_chain) {
  const kiln__graph *g = ctx->g;
  int p_scale, p_add, p_coef, p_cube, p_sq;
  if (!private_op(ctx, u, "Mul", &p_scale)) return -1;
  int inner = with_const(ctx, &g->nodes[p_scale], 0.79788456080286535588, 1e-6);
  if (!private_op(ctx, inner, "Add", &p_add)) return -1;
  for (int side = 0; side < 2; side++) {
    int x = g->nodes[p_add].in[side], term = g->nodes[p_add].in[1 - side];
    if (!private_op(ctx, term, "Mul", &p_coef)) continue;
    int cube = with_const(ctx, &g->nodes[p_coef], 0.044715, 1e-6);
    int p = cube >= 0 ? g->values[cube].producer : -1;
    if (p < 0 || ctx->dead[p] || ctx->uses[cube] != 1 || !kiln__pass_value_private(ctx, cube))
      continue;
    const kiln__node *c = &g->nodes[p];
    *n_chain = 0;
    if (is_op(c, "Pow") && c->n_in == 2 && c->in[0] == x && is_const(ctx, c->in[1], 3.0, 0)) {
      p_cube = p;
    } else if (is_op(c, "Mul") && c->n_in == 2 && (c->in[0] == x || c->in[1] == x)) {
      /* x * (x * x), either order */
      int sq = c->in[0] == x ? c->in[1] : c->in[0];
      if (!private_op(ctx, sq, "Mul", &p_sq) || g->nodes[p_sq].in[0] != x ||
          g->nodes[p_sq].in[1] != x)
        continue;
      p_cube = p;
      chain[(*n_chain)++] = p_sq;
    } else {
      continue;
    }
    chain[(*n_chain)++] = p_cube;
    chain[(*n_chain)++] = p_coef;
    chain[(*n_chain)++] = p_add;
    chain[(*n_chain)++] = p_scale;
    return x;
  }
  return -1;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    const kiln__node *erf = &g->nodes[i];
    bool tanh_form = is_op(erf, "Tanh");
    if ((!is_op(erf, "Erf") && !tanh_form) || erf->in[0] < 0) continue;
    int arg[5], n_arg = 0, x = -1, slot;
    if (tanh_form) {
      x = match_tanh_arg(ctx, erf->in[0], arg, &n_arg);
      if (x < 0) continue;
    } else {
      int i_scale = g->values[erf->in[0]].producer;
      if (i_scale < 0 || ctx->dead[i_scale] || !kiln__pass_value_private(ctx, erf->in[0]) ||
          ctx->uses[erf->in[0]] != 1)
        continue;
      const kiln__node *sc = &g->nodes[i_scale];
      if (sc->n_in != 2) continue;
      bool div = is_op(sc, "Div") && is_const(ctx, sc->in[1], 1.41421356237309504880, 1e-6);
      bool mul = is_op(sc, "Mul") && is_const(ctx, sc->in[1], 0.70710678118654752440, 1e-7);
      if (!div && !mul) continue;
      x = sc->in[0];
      arg[n_arg++] = i_scale;
    }
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
    kiln__pass_note(ctx, "%s..%s%s", g->nodes[arg[0]].name, f->name, tanh_form ? " (tanh)" : "");
    kiln_status st = kiln__pass_set_inputs(ctx, f, &x, 1);
    if (st == KILN_OK) st = kiln__pass_set_op(ctx, f, "ai.kiln", "Gelu");
    if (st != KILN_OK) return st;
    kiln__pass_clear_attrs(f);
    if (tanh_form && (st = kiln__pass_add_attr_str(ctx, f, "approximate", "tanh")) != KILN_OK)
      return st;
    int chain[] = {i, i_add, i_m1, i_half};
    for (size_t k = 0; k < sizeof chain / sizeof chain[0]; k++)
      if (chain[k] != last) kiln__pass_kill(ctx, chain[k]);
    for (int k = 0; k < n_arg; k++) kiln__pass_kill(ctx, arg[k]);
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_fuse_gelu = {"fuse-gelu", 2, run};
