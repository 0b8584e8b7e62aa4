/* QLinearMatMul -> DequantizeLinear [-> Add(bias)] becomes ai.kiln QLinearMatMulDq.
 *
 * A quantized transformer (fuse-qdq's output) computes every projection as an 8-bit QLinearMatMul
 * whose result goes straight back to float for the bias Add (a MatMul's bias is a separate Add,
 * which stays float): three passes over the activations, the middle ones tiny. The fused op's
 * GEMM epilogue requantizes each sum to the 8-bit value QLinearMatMul would store, dequantizes it
 * as DequantizeLinear does, and adds the bias as Add does, in registers: the same float operations
 * in the same order, so the rewrite is bit-exact (level 2 because the op is Kiln's own).
 *
 * Matched when the QLinearMatMul's output is private and read only by the DequantizeLinear, whose
 * scale and zero point are one-element initializers (not graph inputs); the Add is taken when the
 * DequantizeLinear's output is read only by it and its other operand is an initializer of n
 * floats (n: the constant 2-D B's columns) that broadcasts along the last axis without adding
 * one (rank 1, or leading 1s and no more axes than the output). The last node of the chain
 * becomes the fused op, so the output value and its consumers stay as they are. */
#include "passes/pass.h"

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    const kiln__node *mm = &g->nodes[i];
    if (!kiln__pass_is(mm, "QLinearMatMul") || mm->n_in != 8) continue;
    int slot, i_dq = kiln__pass_sole_user(ctx, mm->out[0], &slot);
    if (i_dq < 0 || slot != 0 || !kiln__pass_is(&g->nodes[i_dq], "DequantizeLinear")) continue;
    const kiln__node *dq = &g->nodes[i_dq];
    const kiln_tensor *ds = kiln__pass_const_init(ctx, dq->in[1]);
    const kiln_tensor *dz = dq->n_in > 2 ? kiln__pass_const_init(ctx, dq->in[2]) : NULL;
    if (!ds || ds->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(ds) != 1) continue;
    if (dq->n_in > 2 && dq->in[2] >= 0 && (!dz || kiln_tensor_count(dz) != 1)) continue;
    /* the bias Add: B's columns known from a constant 2-D B */
    const kiln_tensor *b = kiln__pass_const_init(ctx, mm->in[3]);
    int i_add = -1, bias = -1;
    if (b && b->rank == 2) {
      kiln_status st = kiln__pass_bias_add(ctx, dq->out[0], b->dims[1], &i_add, &bias);
      if (st != KILN_OK) return st;
    }
    int last = i_add >= 0 ? i_add : i_dq;
    int in[11];
    for (int k = 0; k < 8; k++) in[k] = mm->in[k];
    in[8] = dq->in[1];
    in[9] = dq->n_in > 2 ? dq->in[2] : -1;
    in[10] = bias;
    int n_in = bias >= 0 ? 11 : in[9] >= 0 ? 10 : 9;
    kiln__node *f = &g->nodes[last];
    kiln__pass_note(ctx, "%s+%s%s%s", mm->name, dq->name, bias >= 0 ? "+" : "",
                    bias >= 0 ? f->name : "");
    kiln_status st = kiln__pass_set_inputs(ctx, f, in, n_in);
    if (st == KILN_OK) st = kiln__pass_set_op(ctx, f, "ai.kiln", "QLinearMatMulDq");
    if (st != KILN_OK) return st;
    kiln__pass_clear_attrs(f);
    kiln__pass_kill(ctx, i);
    if (last != i_dq) kiln__pass_kill(ctx, i_dq);
    *changed = true;
  }
  return KILN_OK;
}

/* int8-dynamic's MatMulInteger(a_q, W_q[, a_zp, w_zp]) -> Cast(to=FLOAT) -> Mul(., s) with
   s = Mul(a_scale, w_scale) [-> Add(bias)] becomes com.microsoft MatMulIntegerToFloat(a_q, W_q,
   a_scale, w_scale, a_zp, w_zp[, bias]): the GEMM's epilogue converts each sum, multiplies it by
   a_scale * w_scale[j] and adds the bias in registers, the float operations of those nodes in
   their order (exact). W_q is a constant 2-D initializer (its columns size the bias), w_scale a
   constant of one or N floats, and a_scale one element by shape inference (DynamicQuantizeLinear's
   scale). Returns whether node i was rewritten. */
static kiln_status dynamic_out(kiln__pass_ctx *ctx, int i, bool *changed) {
  kiln__graph *g = ctx->g;
  const kiln__node *mm = &g->nodes[i];
  const kiln_tensor *w = mm->n_in >= 2 ? kiln__pass_const_init(ctx, mm->in[1]) : NULL;
  if (!w || w->rank != 2) return KILN_OK;
  int64_t n = w->dims[1];
  int slot, i_cast = kiln__pass_sole_user(ctx, mm->out[0], &slot);
  if (i_cast < 0 || !kiln__pass_is(&g->nodes[i_cast], "Cast") ||
      kiln__attr_int(&g->nodes[i_cast], "to", 0) != KILN_DTYPE_FLOAT)
    return KILN_OK;
  int i_mul = kiln__pass_sole_user(ctx, g->nodes[i_cast].out[0], &slot);
  if (i_mul < 0 || !kiln__pass_is(&g->nodes[i_mul], "Mul") || g->nodes[i_mul].n_in != 2)
    return KILN_OK;
  int sv = g->nodes[i_mul].in[1 - slot];
  int i_s = sv >= 0 ? g->values[sv].producer : -1;
  if (i_s < 0 || ctx->dead[i_s] || !kiln__pass_is(&g->nodes[i_s], "Mul") ||
      g->nodes[i_s].n_in != 2 || ctx->uses[sv] != 1 || !kiln__pass_value_private(ctx, sv))
    return KILN_OK;
  const kiln__node *sm = &g->nodes[i_s];
  int ws_side = kiln__pass_const_init(ctx, sm->in[1])   ? 1
                : kiln__pass_const_init(ctx, sm->in[0]) ? 0
                                                        : -1;
  if (ws_side < 0) return KILN_OK;
  const kiln_tensor *ws = kiln__pass_const_init(ctx, sm->in[ws_side]);
  int as = sm->in[1 - ws_side];
  if (ws->dtype != KILN_DTYPE_FLOAT || !(kiln_tensor_count(ws) == 1 || kiln_tensor_count(ws) ==
                                                                           (size_t)n))
    return KILN_OK;
  kiln_status st = kiln__pass_shapes(ctx);
  if (st != KILN_OK) return st;
  for (int probe = 0; probe < 2; probe++) { /* one float, whatever the symbolic dims */
    const kiln_tensor *ash = kiln__pass_shape(ctx, as, probe);
    if (!ash || ash->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(ash) != 1) return KILN_OK;
  }
  int i_add, bias;
  if ((st = kiln__pass_bias_add(ctx, g->nodes[i_mul].out[0], n, &i_add, &bias)) != KILN_OK)
    return st;
  int last = i_add >= 0 ? i_add : i_mul;
  int in[7] = {mm->in[0], mm->in[1], as, sm->in[ws_side], mm->n_in > 2 ? mm->in[2] : -1,
               mm->n_in > 3 ? mm->in[3] : -1, bias};
  int n_in = bias >= 0 ? 7 : in[5] >= 0 ? 6 : in[4] >= 0 ? 5 : 4;
  kiln__node *f = &g->nodes[last];
  kiln__pass_note(ctx, "%s+%s+%s%s%s", mm->name, g->nodes[i_cast].name, g->nodes[i_mul].name,
                  bias >= 0 ? "+" : "", bias >= 0 ? f->name : "");
  if ((st = kiln__pass_set_inputs(ctx, f, in, n_in)) != KILN_OK ||
      (st = kiln__pass_set_op(ctx, f, "com.microsoft", "MatMulIntegerToFloat")) != KILN_OK)
    return st;
  kiln__pass_clear_attrs(f);
  kiln__pass_kill(ctx, i);
  kiln__pass_kill(ctx, i_cast);
  kiln__pass_kill(ctx, i_s);
  if (last != i_mul) kiln__pass_kill(ctx, i_mul);
  *changed = true;
  return KILN_OK;
}

static kiln_status run_all(kiln__pass_ctx *ctx, bool *changed) {
  kiln_status st = run(ctx, changed);
  for (int i = 0; st == KILN_OK && i < ctx->g->n_nodes; i++)
    if (!ctx->dead[i] && kiln__pass_is(&ctx->g->nodes[i], "MatMulInteger"))
      st = dynamic_out(ctx, i, changed);
  return st;
}

const kiln__pass kiln__pass_fuse_qdq_out = {"fuse-qdq-out", 2, run_all};
