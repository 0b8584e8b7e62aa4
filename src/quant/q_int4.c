/* int4: weight-only block-wise 4-bit quantization of MatMul and Gemm with a constant 2-D float32
 * weight, written as ONNX Runtime's com.microsoft MatMulNBits (opset 1 of that domain):
 *
 *   MatMulNBits(A, B, scales[, zero_points]; K, N, bits=4, block_size) -> Y     (Gemm: + Add(C))
 *
 *   B            uint8 [N, n_blocks, block_size / 2]: output column n's K weights in blocks
 *                along K, two per byte, the even k in the low nibble (a last partial block is
 *                padded with the zero point);
 *   scales       float32 [N * n_blocks]: by default stored float16 behind Cast(to=FLOAT) (ORT
 *                wants scales of A's type; Kiln's planner folds the Cast at load), the codes
 *                quantized against the rounded scale so they match what is stored;
 *                `fp32_scales` writes them float32;
 *   zero_points  uint8 [N * ceil(n_blocks / 2)], two per byte (even block low), only with
 *                `asymmetric`; absent, the zero point is 8.
 *   W[k, n] = (code - zero_point) * scale of its block.
 *
 * Symmetric blocks take the value of largest magnitude m and scale = m / -8, so m is code 0
 * exactly and the 16 codes are all used (as llama.cpp's Q4_0 and ORT's quantizer do); asymmetric
 * blocks map [min(x, 0), max(x, 0)] onto 0..15. Activations stay float: the op dequantizes the
 * weights (or quantizes A to int8 on the fly where the runtime chooses to). */
#include <math.h>
#include <stdio.h>

#include "quant/quant.h"

/* A scale as stored: with `f16`, the nearest float16 of at least its magnitude (one ulp up when
   the nearest is below), so the block's range still fits the 16 codes and no weight is clamped
   further than with the float32 scale (a tiny one becomes float16's smallest subnormal); false
   when it does not fit float16. */
static bool stored_scale(float *s, bool f16) {
  if (!f16) return true;
  uint16_t h = kiln__f32_to_f16(*s);
  float r = kiln__f16_to_f32(h);
  if (fabsf(r) < fabsf(*s)) r = kiln__f16_to_f32((uint16_t)(h + 1)); /* sign-magnitude */
  *s = r;
  return isfinite(r);
}

bool kiln__quant_row_q4(const float *w, size_t k, size_t stride, size_t block, bool asym,
                        bool f16_scales, uint8_t *packed, float *scales, uint8_t *zps) {
  size_t nb = (k + block - 1) / block;
  for (size_t j = 0; j < nb; j++) {
    size_t k0 = j * block, k1 = k0 + block < k ? k0 + block : k;
    float s, lo = 0, hi = 0, m = 0;
    int zp = 8;
    for (size_t t = k0; t < k1; t++) {
      float x = w[t * stride];
      if (fabsf(x) > fabsf(m)) m = x;
      lo = fminf(lo, x), hi = fmaxf(hi, x);
    }
    if (asym) {
      s = (hi - lo) / 15.0f;
      if (!(s > 0)) s = 1.0f;
      if (!stored_scale(&s, f16_scales)) return false;
      float z = s > 0 ? roundf(-lo / s) : 8.0f;
      zp = z < 0 ? 0 : z > 15 ? 15 : (int)z;
      zps[j] = (uint8_t)zp;
    } else {
      s = m != 0 ? m / -8.0f : 1.0f;
      if (!stored_scale(&s, f16_scales)) return false;
    }
    scales[j] = s;
    uint8_t *blob = packed + j * (block / 2);
    memset(blob, 0, block / 2);
    for (size_t t = 0; t < block; t++) {
      int code = zp; /* padding past K dequantizes to 0 */
      if (k0 + t < k1 && s != 0) {
        long v = lrintf(w[(k0 + t) * stride] / s) + zp;
        code = v < 0 ? 0 : v > 15 ? 15 : (int)v;
      }
      blob[t / 2] |= (uint8_t)(t % 2 ? code << 4 : code);
    }
  }
  return true;
}

/* The scales as the node reads them: float32 `ts` as it is, or stored float16 behind a Cast to
   float32 (value `*out`); ts is released either way once it is in the graph or converted. */
static kiln_status q4_scales(kiln__qctx *q, const char *hint, kiln_tensor *ts, int *out) {
  if (!q->opts->fp32_scales) {
    kiln_tensor h;
    kiln_status st = kiln_tensor_alloc(&h, KILN_DTYPE_FLOAT16, ts->rank, ts->dims, q->err);
    if (st != KILN_OK) return kiln_tensor_release(ts), st;
    const float *src = ts->data;
    uint16_t *dst = h.data;
    for (size_t i = 0, cnt = kiln_tensor_count(ts); i < cnt; i++) dst[i] = kiln__f32_to_f16(src[i]);
    kiln_tensor_release(ts);
    *ts = h;
  }
  int sv = kiln__qinit(q, hint, ts);
  if (sv < 0) return kiln_tensor_release(ts), kiln__qoom(q);
  if (q->opts->fp32_scales) return *out = sv, KILN_OK;
  int fv = kiln__qvalue(q, hint);
  if (fv < 0) return kiln__qoom(q);
  char name[280];
  snprintf(name, sizeof name, "%.200s/kiln_scales_f32", hint);
  *out = fv;
  return kiln__qcast(q, name, sv, fv, KILN_DTYPE_FLOAT);
}

/* The weight's packed B, scales (float32, or float16 behind a Cast) and zero points (-1 when
   symmetric), converted once per orientation. */
static kiln_status q4_weight(kiln__qctx *q, int v, bool trans, size_t block, int out[3]) {
  static const int tags[2][3] = {{KILN__QTAG_Q4_B, KILN__QTAG_Q4_S, KILN__QTAG_Q4_Z},
                                 {KILN__QTAG_Q4T_B, KILN__QTAG_Q4T_S, KILN__QTAG_Q4T_Z}};
  int *cache[3];
  kiln_status st = KILN_OK;
  for (int c = 0; c < 3 && st == KILN_OK; c++) st = kiln__qcache(q, tags[trans][c], &cache[c]);
  if (st != KILN_OK) return st;
  if (cache[0][v] >= 0) {
    for (int c = 0; c < 3; c++) out[c] = cache[c][v];
    return KILN_OK;
  }
  bool asym = q->opts->asymmetric, f16 = !q->opts->fp32_scales;
  const kiln_tensor *w = &q->g->values[v].init;
  size_t k = (size_t)(trans ? w->dims[1] : w->dims[0]), n = (size_t)(trans ? w->dims[0] : w->dims[1]);
  size_t nb = (k + block - 1) / block, zrow = (nb + 1) / 2;
  int64_t bd[3] = {(int64_t)n, (int64_t)nb, (int64_t)(block / 2)};
  int64_t sd[1] = {(int64_t)(n * nb)}, zd[1] = {(int64_t)(n * zrow)};
  kiln_tensor tb = {0}, ts = {0}, tz = {0};
  uint8_t *zrow_buf = kiln__malloc(nb + 1);
  if (!zrow_buf) return kiln__qoom(q);
  if ((st = kiln_tensor_alloc(&tb, KILN_DTYPE_UINT8, 3, bd, q->err)) != KILN_OK ||
      (st = kiln_tensor_alloc(&ts, KILN_DTYPE_FLOAT, 1, sd, q->err)) != KILN_OK ||
      (asym && (st = kiln_tensor_alloc(&tz, KILN_DTYPE_UINT8, 1, zd, q->err)) != KILN_OK)) {
    kiln_tensor_release(&tb), kiln_tensor_release(&ts), kiln_tensor_release(&tz);
    kiln__free(zrow_buf);
    return st;
  }
  const float *wf = w->data;
  bool fits = true;
  for (size_t c = 0; c < n && fits; c++) {
    const float *row = trans ? wf + c * k : wf + c;
    fits = kiln__quant_row_q4(row, k, trans ? 1 : n, block, asym, f16,
                              (uint8_t *)tb.data + c * nb * (block / 2), (float *)ts.data + c * nb,
                              zrow_buf);
    if (!asym) continue;
    uint8_t *zp = (uint8_t *)tz.data + c * zrow;
    memset(zp, 0, zrow);
    for (size_t j = 0; j < nb; j++) zp[j / 2] |= (uint8_t)(j % 2 ? zrow_buf[j] << 4 : zrow_buf[j]);
  }
  kiln__free(zrow_buf);
  char hint[256];
  snprintf(hint, sizeof hint, "%.200s", q->g->values[v].name);
  if (!fits) {
    kiln_tensor_release(&tb), kiln_tensor_release(&ts), kiln_tensor_release(&tz);
    return kiln__fail(q->err, KILN_INVALID_ARGUMENT,
                      "int4: weight '%s' has a block scale beyond float16's range (|w| > 5.2e5); "
                      "use float32 scales (--scale-type fp32)", hint);
  }
  out[0] = kiln__qinit(q, hint, &tb);
  if (out[0] < 0) {
    kiln_tensor_release(&tb), kiln_tensor_release(&ts), kiln_tensor_release(&tz);
    return kiln__qoom(q);
  }
  if ((st = q4_scales(q, hint, &ts, &out[1])) != KILN_OK) return kiln_tensor_release(&tz), st;
  out[2] = asym ? kiln__qinit(q, hint, &tz) : -1;
  if (asym && out[2] < 0) return kiln_tensor_release(&tz), kiln__qoom(q);
  for (int c = 0; c < 3; c++) cache[c][v] = out[c];
  q->st.weights_converted++;
  q->st.weight_bytes_before += k * n * 4;
  q->st.weight_bytes_after += n * nb * (block / 2) + n * nb * (f16 ? 2 : 4) + (asym ? n * zrow : 0);
  return KILN_OK;
}

static kiln_status block_size(const kiln__qctx *q, size_t *out) {
  int b = q->opts->block_size ? q->opts->block_size : 32;
  if (b < 16 || b > 4096 || (b & (b - 1)))
    return kiln__fail(q->err, KILN_INVALID_ARGUMENT,
                      "int4 block size %d: a power of two from 16 to 4096 is needed", b);
  *out = (size_t)b;
  return KILN_OK;
}

static kiln_status int4_prepare(kiln__qctx *q) {
  size_t b;
  if (q->opts->accuracy_level < 0 || q->opts->accuracy_level > 4)
    return kiln__fail(q->err, KILN_INVALID_ARGUMENT,
                      "int4 accuracy level %d: 0 (not written) to 4 (int8 activations) is needed",
                      q->opts->accuracy_level);
  return block_size(q, &b);
}

/* An embedding table (Gather of a constant 2-D float32 table on axis 0): int8 per row behind a
   DequantizeLinear(axis 0), standard ONNX that ORT and Kiln both run. Embeddings are a third or
   more of an encoder's file and no MatMul reads them; com.microsoft's GatherBlockQuantized would
   take them to 4 bits but is not an op Kiln has. */
static kiln_status embedding(kiln__qctx *q, int i, kiln__qoutcome *out) {
  const kiln__node *n = &q->g->nodes[i];
  int v = n->n_in == 2 ? n->in[0] : -1;
  const kiln_tensor *w = kiln__qweight_f32(q, v);
  if (!w || w->rank != 2 || w->dims[0] < 1 || w->dims[1] < 1 || kiln__attr_int(n, "axis", 0) != 0 ||
      q->g->opset < 13)
    return KILN_OK;
  int *cache;
  kiln_status st = kiln__qcache(q, KILN__QTAG_Q4_EMB, &cache);
  if (st != KILN_OK) return st;
  if (cache[v] < 0) {
    size_t rows = (size_t)w->dims[0], cols = (size_t)w->dims[1];
    int64_t rd[1] = {(int64_t)rows};
    kiln_tensor tq = {0}, ts = {0}, tz = {0};
    if ((st = kiln_tensor_alloc(&tq, KILN_DTYPE_INT8, 2, w->dims, q->err)) != KILN_OK ||
        (st = kiln_tensor_alloc(&ts, KILN_DTYPE_FLOAT, 1, rd, q->err)) != KILN_OK ||
        (st = kiln_tensor_alloc(&tz, KILN_DTYPE_INT8, 1, rd, q->err)) != KILN_OK) {
      kiln_tensor_release(&tq), kiln_tensor_release(&ts), kiln_tensor_release(&tz);
      return st;
    }
    kiln__quant_weight_s8_axis(w->data, 1, rows, cols, 127, tq.data, ts.data);
    memset(tz.data, 0, rows);
    char hint[256], name[300];
    snprintf(hint, sizeof hint, "%.200s", q->g->values[v].name);
    int a = kiln__qinit(q, hint, &tq), b = kiln__qinit(q, hint, &ts), z = kiln__qinit(q, hint, &tz);
    int dq = kiln__qvalue(q, hint);
    if (a < 0 || b < 0 || z < 0 || dq < 0) {
      kiln_tensor_release(&tq), kiln_tensor_release(&ts), kiln_tensor_release(&tz);
      return kiln__qoom(q);
    }
    int in[3] = {a, b, z};
    snprintf(name, sizeof name, "%s/DequantizeLinear", hint);
    int k = kiln__qnode_add(q, name, "DequantizeLinear", in, 3, &dq, 1);
    if (k < 0) return KILN_NO_MEMORY;
    if ((st = kiln__qattr_int(q, k, "axis", 0)) != KILN_OK) return st;
    cache[v] = dq;
    q->st.weights_converted++;
    q->st.weight_bytes_before += rows * cols * 4;
    q->st.weight_bytes_after += rows * cols + rows * 5;
  }
  q->g->nodes[i].in[0] = cache[v];
  *out = KILN__Q_QUANTIZED;
  return KILN_OK;
}

static kiln_status int4_node(kiln__qctx *q, int i, kiln__qoutcome *out) {
  const kiln__node *n = &q->g->nodes[i];
  if (kiln__qis_op(n, "Gather")) {
    *out = KILN__Q_NOT_CANDIDATE;
    return embedding(q, i, out);
  }
  bool mm = kiln__qis_op(n, "MatMul"), gemm = kiln__qis_op(n, "Gemm");
  /* Conv is a candidate kept float: MatMulNBits is a matrix product only */
  *out = kiln__qis_op(n, "Conv") ? KILN__Q_KEPT_FLOAT : KILN__Q_NOT_CANDIDATE;
  if (!mm && !gemm) return KILN_OK;
  *out = KILN__Q_KEPT_FLOAT;
  int w = n->n_in > 1 ? n->in[1] : -1, a = n->in[0];
  const kiln_tensor *wt = kiln__qweight_f32(q, w);
  bool ok = wt && wt->rank == 2 && wt->dims[0] > 0 && wt->dims[1] > 0 && n->n_out == 1 && a >= 0 &&
            q->g->values[a].rank != 1; /* MatMulNBits wants A with rows */
  bool trans = false;
  int bias = -1;
  if (ok && gemm) {
    trans = kiln__attr_int(n, "transB", 0) != 0;
    bias = n->n_in > 2 ? n->in[2] : -1;
    ok = kiln__attr_int(n, "transA", 0) == 0 && kiln__attr_float(n, "alpha", 1.0f) == 1.0f &&
         (bias < 0 || kiln__attr_float(n, "beta", 1.0f) == 1.0f);
  }
  if (!ok) return KILN_OK;
  /* before q4_weight(): adding values moves the array wt points into */
  int64_t K = trans ? wt->dims[1] : wt->dims[0], N = trans ? wt->dims[0] : wt->dims[1];
  size_t block = 32;
  kiln_status st = block_size(q, &block);
  int qw[3];
  if (st == KILN_OK) st = q4_weight(q, w, trans, block, qw);
  if (st != KILN_OK) return st;
  char base[220], name[256];
  kiln__qbase(q, i, base, sizeof base);
  int y = q->g->nodes[i].out[0];
  int ym = bias >= 0 ? kiln__qvalue(q, base) : y;
  if (ym < 0) return kiln__qoom(q);
  int in[4] = {a, qw[0], qw[1], qw[2]};
  snprintf(name, sizeof name, "%s/MatMulNBits", base);
  int k = bias >= 0 ? kiln__qnode_add(q, name, "MatMulNBits", in, qw[2] >= 0 ? 4 : 3, &ym, 1) : i;
  if (k < 0) return KILN_NO_MEMORY;
  if (bias < 0 &&
      (st = kiln__qnode_set(q, &q->g->nodes[i], name, "MatMulNBits", in, qw[2] >= 0 ? 4 : 3,
                            &ym, 1)) != KILN_OK)
    return st;
  kiln__node *nb = &q->g->nodes[k];
  char *dom = kiln__strdup("com.microsoft");
  if (!dom) return kiln__qoom(q);
  kiln__free(nb->domain);
  nb->domain = dom;
  nb->opset = 1;
  if ((st = kiln__qattr_int(q, k, "K", K)) != KILN_OK ||
      (st = kiln__qattr_int(q, k, "N", N)) != KILN_OK ||
      (st = kiln__qattr_int(q, k, "bits", 4)) != KILN_OK ||
      (st = kiln__qattr_int(q, k, "block_size", (int64_t)block)) != KILN_OK ||
      (q->opts->accuracy_level &&
       (st = kiln__qattr_int(q, k, "accuracy_level", q->opts->accuracy_level)) != KILN_OK))
    return st;
  if (bias >= 0) {
    int b_in[2] = {ym, bias};
    snprintf(name, sizeof name, "%s/bias", base);
    if ((st = kiln__qnode_set(q, &q->g->nodes[i], name, "Add", b_in, 2, &y, 1)) != KILN_OK)
      return st;
  }
  *out = KILN__Q_QUANTIZED;
  return KILN_OK;
}

const kiln__quant_format_impl kiln__quant_int4 = {
    .format = KILN_QUANT_INT4,
    .name = "int4",
    .min_opset = 1, /* the op is com.microsoft's, version 1 */
    .nothing_msg = "nothing to quantize: no MatMul or Gemm with a constant 2-D float32 weight "
                   "(int4 keeps Conv in float)",
    .prepare = int4_prepare,
    .node = int4_node,
};
