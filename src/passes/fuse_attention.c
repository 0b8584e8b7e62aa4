/* Scaled dot-product attention as BERT/GPT exporters write it, fused into one ai.kiln Attention:
     scores = MatMul(Q, Kt) [Mul(c) | Div(c)] [Add(mask)];  P = Softmax(scores, axis=-1)
     Y = MatMul(P, V)
   with Q [B,H,S,D], Kt [B,H,D,T] and V [B,H,T,Dv] of rank 4 and equal B and H (inferred
   shapes). Attention takes K as [B,H,T,D]:
     Kt = Transpose(K, perm 0,1,3,2)          -> K itself (the Transpose goes)
     Kt = Transpose(X, perm 0,2,3,1), X [B,T,H,D] (the key projection split into heads)
                                              -> that Transpose's perm becomes 0,2,1,3
     anything else                            -> a Transpose(Kt, perm 0,1,3,2) is inserted.
   The mask stays an input (added as the graph adds it, broadcast to [B,H,S,T]); a causal mask is
   not recognised as such, so `causal` stays 0 and the result is the unfused one's. Then the
   heads' split and merge Transposes around it go where all four are there (heads_inside_rows:
   layout BSHD). */
#include <stdio.h>

#include "passes/pass.h"

/* A private value whose only reader is node `reader`: its producer, else -1. */
static int private_producer(const kiln__pass_ctx *ctx, int v, int reader) {
  int slot;
  if (v < 0 || kiln__pass_sole_user(ctx, v, &slot) != reader) return -1;
  int p = ctx->g->values[v].producer;
  return p >= 0 && !ctx->dead[p] ? p : -1;
}

static bool perm_is(const kiln__node *t, const int64_t *want) {
  const int64_t *perm;
  if (!kiln__pass_is(t, "Transpose") || kiln__attr_ints(t, "perm", &perm) != 4) return false;
  for (int d = 0; d < 4; d++)
    if (perm[d] != want[d]) return false;
  return true;
}

/* dims[d] of v agrees with dims[e] of w in both probes. */
static bool dim_eq(const kiln__pass_ctx *ctx, int v, int d, int w, int e) {
  for (int p = 0; p < 2; p++) {
    const kiln_tensor *a = kiln__pass_shape(ctx, v, p), *b = kiln__pass_shape(ctx, w, p);
    if (!a || !b || a->dims[d] != b->dims[e]) return false;
  }
  return true;
}

/* Node q is the scores MatMul, or a Mul/Div by a scalar constant of it. */
static bool leads_to_scores(const kiln__pass_ctx *ctx, int q) {
  const kiln__node *n = &ctx->g->nodes[q];
  if (kiln__pass_is(n, "MatMul")) return true;
  if (n->n_in != 2 || !(kiln__pass_is(n, "Mul") || kiln__pass_is(n, "Div"))) return false;
  double c;
  for (int k = 0; k < 2; k++) {
    int r = private_producer(ctx, n->in[1 - k], q);
    if (kiln__pass_const_scalar(ctx, n->in[k], &c) && r >= 0 &&
        kiln__pass_is(&ctx->g->nodes[r], "MatMul"))
      return true;
  }
  return false;
}

static bool softmax_last(const kiln__pass_ctx *ctx, const kiln__node *sm) {
  if (!kiln__pass_is(sm, "Softmax")) return false;
  int rank = kiln__pass_rank(ctx, sm->in[0]);
  int64_t axis = kiln__attr_int(sm, "axis", sm->opset < 13 ? 1 : -1);
  return rank == 4 && (axis == -1 || axis == 3);
}

/* K as [B,H,T,D] from Kt [B,H,D,T]: -1 on failure (out of memory sets *st). */
static int key_input(kiln__pass_ctx *ctx, int i_qk, int kt, kiln_status *st) {
  kiln__graph *g = ctx->g;
  static const int64_t swap_last[4] = {0, 1, 3, 2}, heads_t[4] = {0, 2, 3, 1};
  static const int64_t heads[4] = {0, 2, 1, 3};
  int p = private_producer(ctx, kt, i_qk);
  if (p >= 0 && perm_is(&g->nodes[p], swap_last)) {
    int k = g->nodes[p].in[0];
    kiln__pass_kill(ctx, p);
    return k;
  }
  if (p >= 0 && perm_is(&g->nodes[p], heads_t)) {
    /* a fresh output: Kt's name may carry value_info for the old shape */
    int k = kiln__pass_new_value(ctx, g->values[kt].name);
    if (k < 0) goto oom;
    kiln__attr *a = (kiln__attr *)kiln__attr_find(&g->nodes[p], "perm");
    memcpy(a->ints, heads, sizeof heads);
    g->nodes[p].out[0] = k;
    g->values[k].producer = p;
    return k;
  }
  int k = kiln__pass_new_value(ctx, g->values[kt].name);
  if (k < 0) goto oom;
  char name[200];
  snprintf(name, sizeof name, "%.150s/kiln_key_t", g->nodes[i_qk].name);
  int t = kiln__pass_add_node(ctx, name, "", "Transpose", &kt, 1, &k, 1);
  if (t < 0) goto oom;
  if ((*st = kiln__pass_add_attr_ints(ctx, &g->nodes[t], "perm", swap_last, 4)) != KILN_OK)
    return -1;
  return k;
oom:
  *st = kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory fusing attention");
  return -1;
}

/* The head split and merge of an exported attention block, absorbed into Attention (i_att) as
   layout BSHD: Q, K and V each a Transpose(0,2,1,3) read only by the Attention, and Y read
   only by a Transpose(0,2,1,3). Then the Attention reads the Transposes' inputs and writes the
   last one's output, so four copies go; with any of the four missing the graph stays BHSD. */
static kiln_status heads_inside_rows(kiln__pass_ctx *ctx, int i_att) {
  kiln__graph *g = ctx->g;
  static const int64_t heads[4] = {0, 2, 1, 3};
  int t_in[3], in[4], slot;
  kiln__node *f = &g->nodes[i_att];
  for (int s = 0; s < 3; s++) {
    t_in[s] = private_producer(ctx, f->in[s], i_att);
    if (t_in[s] < 0 || !perm_is(&g->nodes[t_in[s]], heads)) return KILN_OK;
    in[s] = g->nodes[t_in[s]].in[0];
  }
  int t_out = kiln__pass_sole_user(ctx, f->out[0], &slot);
  if (t_out < 0 || ctx->dead[t_out] || !perm_is(&g->nodes[t_out], heads)) return KILN_OK;
  if (f->n_in > 3) in[3] = f->in[3];
  kiln_status st = kiln__pass_set_inputs(ctx, f, in, f->n_in);
  if (st != KILN_OK) return st;
  if ((st = kiln__pass_add_attr_str(ctx, f, "layout", "BSHD")) != KILN_OK) return st;
  f->out[0] = g->nodes[t_out].out[0];
  g->values[f->out[0]].producer = i_att;
  for (int s = 0; s < 3; s++) kiln__pass_kill(ctx, t_in[s]);
  kiln__pass_kill(ctx, t_out);
  return KILN_OK;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  kiln_status st = kiln__pass_shapes(ctx);
  if (st != KILN_OK) return st;
  int n_nodes = g->n_nodes; /* nodes this pass adds are not matched again */
  for (int i = 0; i < n_nodes; i++) {
    if (ctx->dead[i] || !softmax_last(ctx, &g->nodes[i])) continue;
    int i_sm = i, slot;
    int i_pv = kiln__pass_sole_user(ctx, g->nodes[i_sm].out[0], &slot);
    if (i_pv < 0 || slot != 0 || !kiln__pass_is(&g->nodes[i_pv], "MatMul")) continue;
    /* back from the softmax: [Add mask] [Mul/Div scale] MatMul */
    int p = private_producer(ctx, g->nodes[i_sm].in[0], i_sm);
    int i_mask = -1, mask = -1, i_scale = -1;
    double scale = 1.0;
    if (p >= 0 && kiln__pass_is(&g->nodes[p], "Add") && g->nodes[p].n_in == 2) {
      i_mask = p;
      for (int s = 0; s < 2 && mask < 0; s++) {
        int q = private_producer(ctx, g->nodes[p].in[s], p);
        if (q >= 0 && leads_to_scores(ctx, q)) {
          mask = g->nodes[p].in[1 - s];
          p = q;
        }
      }
      if (mask < 0) continue;
    }
    if (p >= 0 && g->nodes[p].n_in == 2 &&
        (kiln__pass_is(&g->nodes[p], "Mul") || kiln__pass_is(&g->nodes[p], "Div"))) {
      const kiln__node *sn = &g->nodes[p];
      bool div = !strcmp(sn->op_type, "Div");
      int s = -1;
      double c;
      for (int k = div ? 1 : 0; k < 2 && s < 0; k++)
        if (kiln__pass_const_scalar(ctx, sn->in[k], &c)) s = k;
      if (s < 0 || (div && c == 0)) continue;
      scale = div ? 1.0 / c : c;
      i_scale = p;
      p = private_producer(ctx, sn->in[1 - s], p);
    }
    if (p < 0 || !kiln__pass_is(&g->nodes[p], "MatMul")) continue;
    int i_qk = p;
    int q = g->nodes[i_qk].in[0], kt = g->nodes[i_qk].in[1], v = g->nodes[i_pv].in[1];
    if (kiln__pass_rank(ctx, q) != 4 || kiln__pass_rank(ctx, kt) != 4 ||
        kiln__pass_rank(ctx, v) != 4 || kiln__pass_dtype(ctx, q) != KILN_DTYPE_FLOAT)
      continue;
    /* no broadcasting over B and H: Attention has none */
    if (!dim_eq(ctx, q, 0, kt, 0) || !dim_eq(ctx, q, 1, kt, 1) || !dim_eq(ctx, q, 0, v, 0) ||
        !dim_eq(ctx, q, 1, v, 1))
      continue;
    int scores = g->nodes[i_sm].in[0];
    if (mask >= 0 && (kiln__pass_dtype(ctx, mask) != KILN_DTYPE_FLOAT ||
                      !kiln__pass_fits(ctx, mask, scores, true)))
      continue;
    int k = key_input(ctx, i_qk, kt, &st);
    if (k < 0) {
      if (st != KILN_OK) return st;
      continue;
    }
    kiln__node *f = &g->nodes[i_pv];
    kiln__pass_note(ctx, "%s..%s", g->nodes[i_qk].name, f->name);
    int in[4] = {q, k, v, mask};
    if ((st = kiln__pass_set_inputs(ctx, f, in, mask >= 0 ? 4 : 3)) != KILN_OK ||
        (st = kiln__pass_set_op(ctx, f, "ai.kiln", "Attention")) != KILN_OK)
      return st;
    kiln__pass_clear_attrs(f);
    if ((st = kiln__pass_add_attr_float(ctx, f, "scale", (float)scale)) != KILN_OK) return st;
    int chain[] = {i_qk, i_scale, i_mask, i_sm};
    for (size_t c = 0; c < sizeof chain / sizeof chain[0]; c++)
      if (chain[c] >= 0) kiln__pass_kill(ctx, chain[c]);
    if ((st = heads_inside_rows(ctx, i_pv)) != KILN_OK) return st;
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_fuse_attention = {"fuse-attention", 2, run};
