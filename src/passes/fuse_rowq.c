/* int8-dynamic's per-row form (kiln quantize --per-row) as two Kiln ops.
 *
 *   s = Max(Div(ReduceMax(Abs(x), axes=[-1], keepdims=1), qmax), floor)
 *   x_q = Cast(Add(Round(Div(x, s)), 128), to=UINT8)      (or Cast(Round(..), to=INT8))
 * becomes ai.kiln DynamicQuantizeRows(x) -> (x_q, s): one pass over x (a vector min/max and a
 * vector quantization per row) instead of eight nodes, five of them over all of x. Then
 *   MatMulInteger(x_q, W_q[, zp_a, zp_b]) -> Cast(to=FLOAT) -> Mul(., w_scale) -> Mul(., s)
 *   [-> Add(bias)]
 * with x_q and s from one DynamicQuantizeRows becomes ai.kiln RowQuantMatMul(x_q, W_q, s,
 * w_scale, zp_a, zp_b[, bias]): the GEMM's epilogue converts each sum, multiplies by
 * w_scale[j], then by the row's s, then adds the bias, in registers. Both ops perform the
 * replaced nodes' float operations in their order, so the rewrite is exact on finite inputs
 * (level 2: the ops are Kiln's own; ref/quant.c defines them).
 *
 * Matched only as the quantizer writes it: qmax a float constant in (0, 127] (so the rounded
 * values fit int8, or uint8 after the + 128, before the Cast), floor a positive finite float
 * constant, every intermediate value read once (s may have other readers: it stays, made by the
 * new op), W_q a constant 2-D 8-bit initializer, w_scale one or N floats, zero points constant
 * (one for A). The Muls must come in this order (another order rounds differently). */
#include <math.h>
#include <stdio.h>

#include "passes/pass.h"

/* The live default-domain node `op` producing v (as its only output), or -1. */
static int producer(const kiln__pass_ctx *ctx, int v, const char *op) {
  if (v < 0) return -1;
  int p = ctx->g->values[v].producer;
  return p >= 0 && !ctx->dead[p] && kiln__pass_is(&ctx->g->nodes[p], op) ? p : -1;
}

/* A one-element float constant, or false. */
static bool const_f(const kiln__pass_ctx *ctx, int v, float *out) {
  const kiln_tensor *t = kiln__pass_const_init(ctx, v);
  if (!t || t->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(t) != 1) return false;
  *out = *(const float *)t->data;
  return true;
}

/* Whether ReduceMax node n reduces only the last axis of its rank-`rank` input, keeping it. */
static bool last_axis_kept(const kiln__pass_ctx *ctx, const kiln__node *n, int rank) {
  if (kiln__attr_int(n, "keepdims", 1) != 1) return false;
  const int64_t *ax = NULL;
  size_t cnt = kiln__attr_ints(n, "axes", &ax);
  if (n->n_in > 1 && n->in[1] >= 0) { /* opset 18: axes as an input */
    const kiln_tensor *t = kiln__pass_const_init(ctx, n->in[1]);
    if (cnt || !t || t->dtype != KILN_DTYPE_INT64) return false;
    ax = t->data;
    cnt = kiln_tensor_count(t);
  }
  return cnt == 1 && (ax[0] == -1 || (rank > 0 && ax[0] == rank - 1));
}

/* Cast node i_c (to INT8) ends the row quantization of some x: replaced by DynamicQuantizeRows. */
static kiln_status quantize_rows(kiln__pass_ctx *ctx, int i_c, bool *changed) {
  kiln__graph *g = ctx->g;
  const kiln__node *c = &g->nodes[i_c];
  int64_t to = kiln__attr_int(c, "to", 0);
  if (to != KILN_DTYPE_INT8 && to != KILN_DTYPE_UINT8) return KILN_OK;
  int slot, i_o = -1, rv = c->in[0]; /* uint8: the + 128 between Round and Cast */
  if (to == KILN_DTYPE_UINT8) {
    float off = 0.0f;
    i_o = producer(ctx, c->in[0], "Add");
    if (i_o < 0 || kiln__pass_sole_user(ctx, c->in[0], &slot) != i_c || g->nodes[i_o].n_in != 2)
      return KILN_OK;
    int oside = const_f(ctx, g->nodes[i_o].in[1], &off) ? 1 : 0;
    if ((!oside && !const_f(ctx, g->nodes[i_o].in[0], &off)) || off != 128.0f) return KILN_OK;
    rv = g->nodes[i_o].in[1 - oside];
  }
  int i_r = producer(ctx, rv, "Round");
  if (i_r < 0 || kiln__pass_sole_user(ctx, rv, &slot) != (i_o >= 0 ? i_o : i_c)) return KILN_OK;
  int i_d1 = producer(ctx, g->nodes[i_r].in[0], "Div");
  if (i_d1 < 0 || kiln__pass_sole_user(ctx, g->nodes[i_r].in[0], &slot) != i_r ||
      g->nodes[i_d1].n_in != 2)
    return KILN_OK;
  int x = g->nodes[i_d1].in[0], s = g->nodes[i_d1].in[1];
  int i_mx = producer(ctx, s, "Max");
  if (i_mx < 0 || g->nodes[i_mx].n_in != 2) return KILN_OK;
  float floor_v = 0.0f, qmax = 0.0f;
  int fside = const_f(ctx, g->nodes[i_mx].in[1], &floor_v)   ? 1
              : const_f(ctx, g->nodes[i_mx].in[0], &floor_v) ? 0
                                                             : -1;
  if (fside < 0 || !(floor_v > 0.0f && isfinite(floor_v))) return KILN_OK;
  int s0 = g->nodes[i_mx].in[1 - fside];
  int i_d0 = producer(ctx, s0, "Div");
  if (i_d0 < 0 || kiln__pass_sole_user(ctx, s0, &slot) != i_mx || g->nodes[i_d0].n_in != 2 ||
      !const_f(ctx, g->nodes[i_d0].in[1], &qmax) || !(qmax > 0.0f && qmax <= 127.0f))
    return KILN_OK;
  int amax = g->nodes[i_d0].in[0];
  int i_rm = producer(ctx, amax, "ReduceMax");
  if (i_rm < 0 || kiln__pass_sole_user(ctx, amax, &slot) != i_d0) return KILN_OK;
  int ax = g->nodes[i_rm].in[0];
  int i_ab = producer(ctx, ax, "Abs");
  if (i_ab < 0 || kiln__pass_sole_user(ctx, ax, &slot) != i_rm || g->nodes[i_ab].in[0] != x)
    return KILN_OK;
  kiln_status st = kiln__pass_shapes(ctx);
  if (st != KILN_OK) return st;
  int rank = kiln__pass_rank(ctx, x);
  if (kiln__pass_dtype(ctx, x) != KILN_DTYPE_FLOAT || rank < 1 ||
      !last_axis_kept(ctx, &g->nodes[i_rm], rank))
    return KILN_OK;
  int xq = c->out[0], outs[2] = {xq, s};
  int dead[8] = {i_ab, i_rm, i_d0, i_mx, i_d1, i_r, i_c, i_o}, n_dead = i_o >= 0 ? 8 : 7;
  char name[256];
  snprintf(name, sizeof name, "%.240s/rows", g->nodes[i_c].name);
  kiln__pass_note(ctx, "%s..%s", g->nodes[i_ab].name, g->nodes[i_c].name);
  int q = kiln__pass_add_node(ctx, name, "ai.kiln", "DynamicQuantizeRows", &x, 1, outs, 2);
  if (q < 0) return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory rewriting the graph");
  for (int k = 0; k < n_dead; k++) kiln__pass_kill(ctx, dead[k]);
  if ((st = kiln__pass_add_attr_float(ctx, &g->nodes[q], "qmax", qmax)) != KILN_OK ||
      (st = kiln__pass_add_attr_float(ctx, &g->nodes[q], "min_scale", floor_v)) != KILN_OK ||
      (i_o >= 0 && (st = kiln__pass_add_attr_int(ctx, &g->nodes[q], "zero_point", 128)) != KILN_OK))
    return st;
  /* the products below look these up before the graph is finalized again */
  g->values[xq].producer = q;
  g->values[s].producer = q;
  *changed = true;
  return KILN_OK;
}

/* MatMulInteger node i reading a DynamicQuantizeRows output: replaced by RowQuantMatMul. */
static kiln_status product(kiln__pass_ctx *ctx, int i, bool *changed) {
  kiln__graph *g = ctx->g;
  const kiln__node *mm = &g->nodes[i];
  int za = mm->n_in > 2 ? mm->in[2] : -1, zb = mm->n_in > 3 ? mm->in[3] : -1;
  const kiln_tensor *zat = kiln__pass_const_init(ctx, za), *zbt = kiln__pass_const_init(ctx, zb);
  if (mm->n_out != 1 || (za >= 0 && (!zat || kiln_tensor_count(zat) != 1)) || (zb >= 0 && !zbt))
    return KILN_OK;
  int aq = mm->in[0], p = aq >= 0 ? g->values[aq].producer : -1;
  if (p < 0 || ctx->dead[p] || strcmp(g->nodes[p].domain, "ai.kiln") ||
      strcmp(g->nodes[p].op_type, "DynamicQuantizeRows") || g->nodes[p].n_out != 2 ||
      g->nodes[p].out[0] != aq || g->nodes[p].out[1] < 0)
    return KILN_OK;
  int s = g->nodes[p].out[1];
  const kiln_tensor *w = kiln__pass_const_init(ctx, mm->in[1]);
  if (!w || w->rank != 2 || (w->dtype != KILN_DTYPE_INT8 && w->dtype != KILN_DTYPE_UINT8))
    return KILN_OK;
  int64_t n = w->dims[1];
  int slot, i_cast = kiln__pass_sole_user(ctx, mm->out[0], &slot);
  if (i_cast < 0 || !kiln__pass_is(&g->nodes[i_cast], "Cast") ||
      kiln__attr_int(&g->nodes[i_cast], "to", 0) != KILN_DTYPE_FLOAT)
    return KILN_OK;
  int i_m1 = kiln__pass_sole_user(ctx, g->nodes[i_cast].out[0], &slot);
  if (i_m1 < 0 || !kiln__pass_is(&g->nodes[i_m1], "Mul") || g->nodes[i_m1].n_in != 2)
    return KILN_OK;
  int ws = g->nodes[i_m1].in[1 - slot];
  const kiln_tensor *wst = kiln__pass_const_init(ctx, ws);
  if (!wst || wst->dtype != KILN_DTYPE_FLOAT ||
      !(kiln_tensor_count(wst) == 1 || (wst->rank == 1 && kiln_tensor_count(wst) == (size_t)n)))
    return KILN_OK;
  int i_m2 = kiln__pass_sole_user(ctx, g->nodes[i_m1].out[0], &slot);
  if (i_m2 < 0 || !kiln__pass_is(&g->nodes[i_m2], "Mul") || g->nodes[i_m2].n_in != 2 ||
      g->nodes[i_m2].in[1 - slot] != s)
    return KILN_OK;
  int i_add, bias;
  kiln_status st = kiln__pass_bias_add(ctx, g->nodes[i_m2].out[0], n, &i_add, &bias);
  if (st != KILN_OK) return st;
  int last = i_add >= 0 ? i_add : i_m2;
  int in[7] = {aq, mm->in[1], s, ws, za, zb, bias};
  int n_in = bias >= 0 ? 7 : zb >= 0 ? 6 : za >= 0 ? 5 : 4;
  kiln__node *f = &g->nodes[last];
  kiln__pass_note(ctx, "%s+%s+%s+%s%s%s", mm->name, g->nodes[i_cast].name, g->nodes[i_m1].name,
                  g->nodes[i_m2].name, bias >= 0 ? "+" : "", bias >= 0 ? f->name : "");
  st = kiln__pass_set_inputs(ctx, f, in, n_in);
  if (st == KILN_OK) st = kiln__pass_set_op(ctx, f, "ai.kiln", "RowQuantMatMul");
  if (st != KILN_OK) return st;
  kiln__pass_clear_attrs(f);
  kiln__pass_kill(ctx, i);
  kiln__pass_kill(ctx, i_cast);
  kiln__pass_kill(ctx, i_m1);
  if (last != i_m2) kiln__pass_kill(ctx, i_m2);
  *changed = true;
  return KILN_OK;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln_status st = KILN_OK;
  /* the quantizations first: the products look for their outputs */
  for (int i = 0, n = ctx->g->n_nodes; st == KILN_OK && i < n; i++)
    if (!ctx->dead[i] && kiln__pass_is(&ctx->g->nodes[i], "Cast"))
      st = quantize_rows(ctx, i, changed);
  for (int i = 0; st == KILN_OK && i < ctx->g->n_nodes; i++)
    if (!ctx->dead[i] && kiln__pass_is(&ctx->g->nodes[i], "MatMulInteger"))
      st = product(ctx, i, changed);
  return st;
}

const kiln__pass kiln__pass_fuse_rowq = {"fuse-rowq", 2, run};
