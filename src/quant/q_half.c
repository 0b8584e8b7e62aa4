/* fp16 and bf16: every float32 weight of MatMul, Gemm (input B) and Conv (input W) stored as a
 * 16-bit float behind a Cast to float32; a weight shared by several nodes is converted once.
 * fp16 rounds with relative error 2^-11, bf16 (round to nearest even, kiln__f32_to_bf16) 2^-9;
 * Cast from bfloat16 exists from opset 13. The planner folds the Casts at load, so arithmetic
 * (and speed) is float32's; only the weights' rounding changes the results. */
#include <stdio.h>

#include "quant/quant.h"

/* The float32 view of weight v, converted once: a 16-bit (`dt`) initializer and a Cast to
   float32. */
static kiln_status half_weight(kiln__qctx *q, int v, kiln_dtype dt, int *out) {
  int *cache;
  kiln_status st = kiln__qcache(q, dt == KILN_DTYPE_FLOAT16 ? KILN__QTAG_FP16 : KILN__QTAG_BF16, &cache);
  if (st != KILN_OK) return st;
  if (cache[v] >= 0) {
    *out = cache[v];
    return KILN_OK;
  }
  const kiln_tensor *w = &q->g->values[v].init;
  kiln_tensor h;
  st = kiln_tensor_alloc(&h, dt, w->rank, w->dims, q->err);
  if (st != KILN_OK) return st;
  size_t cnt = kiln_tensor_count(w);
  const float *src = w->data;
  uint16_t *dst = h.data;
  for (size_t i = 0; i < cnt; i++)
    dst[i] = dt == KILN_DTYPE_FLOAT16 ? kiln__f32_to_f16(src[i]) : kiln__f32_to_bf16(src[i]);
  char hint[256];
  snprintf(hint, sizeof hint, "%.200s", q->g->values[v].name);
  int hv = kiln__qinit(q, hint, &h);
  int fv = hv >= 0 ? kiln__qvalue(q, hint) : -1;
  if (fv < 0) return kiln__qoom(q);
  char name[280];
  snprintf(name, sizeof name, "%.200s/kiln_cast_f32", hint);
  if ((st = kiln__qcast(q, name, hv, fv, KILN_DTYPE_FLOAT)) != KILN_OK) return st;
  cache[v] = fv;
  q->st.weights_converted++;
  q->st.weight_bytes_before += cnt * 4;
  q->st.weight_bytes_after += cnt * 2;
  *out = fv;
  return KILN_OK;
}

static kiln_status half_node(kiln__qctx *q, int i, kiln_dtype dt, kiln__qoutcome *out) {
  const kiln__node *n = &q->g->nodes[i];
  *out = KILN__Q_NOT_CANDIDATE;
  if (!kiln__qis_op(n, "Conv") && !kiln__qis_op(n, "MatMul") && !kiln__qis_op(n, "Gemm"))
    return KILN_OK;
  int w = n->n_in > 1 ? n->in[1] : -1;
  *out = KILN__Q_KEPT_FLOAT;
  if (!kiln__qweight_f32(q, w)) return KILN_OK;
  int fv = -1;
  kiln_status st = half_weight(q, w, dt, &fv);
  if (st != KILN_OK) return st;
  q->g->nodes[i].in[1] = fv;
  *out = KILN__Q_QUANTIZED;
  return KILN_OK;
}

static kiln_status fp16_node(kiln__qctx *q, int i, kiln__qoutcome *out) {
  return half_node(q, i, KILN_DTYPE_FLOAT16, out);
}

static kiln_status bf16_node(kiln__qctx *q, int i, kiln__qoutcome *out) {
  return half_node(q, i, KILN_DTYPE_BFLOAT16, out);
}

#define NOTHING "nothing to quantize: no MatMul, Gemm or Conv with a constant float32 weight"

const kiln__quant_format_impl kiln__quant_fp16 = {
    .format = KILN_QUANT_FP16,
    .name = "fp16",
    .min_opset = 1,
    .nothing_msg = NOTHING,
    .node = fp16_node,
};

const kiln__quant_format_impl kiln__quant_bf16 = {
    .format = KILN_QUANT_BF16,
    .name = "bf16",
    .min_opset = 13, /* Cast from bfloat16 */
    .nothing_msg = NOTHING,
    .node = bf16_node,
};
