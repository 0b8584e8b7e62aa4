/* com.microsoft MatMulNBits (ONNX Runtime's weight-only block quantization, contrib opset 1):
 * the checks the reference kernel (nbits.c) and the cpu kernel (kernels/cpu/nbits_kernels.c)
 * share, so both reject the same inputs with the same messages.
 *
 *   Y[..., n] = sum_k A[..., k] * W[k, n] (+ bias[n])
 *   W[k, n]   = (code(n, k) - zp(n, k / block)) * scales[n * n_blocks + k / block]
 *   code      = B[n, k / block, (k % block) / 2], the low nibble for even k
 *   zp        = 8 without zero_points; uint8 zero_points are packed two per byte
 *               ([N * ceil(n_blocks / 2)], low nibble for the even block); float zero_points
 *               ([N * n_blocks], A's type) are taken as they are
 *
 * Inputs: A, B, scales, zero_points?, g_idx?, bias?. Only bits = 4; g_idx (act-order, deprecated
 * in ORT) is refused; A float32. */
#ifndef KILN_KERNELS_REF_NBITS_H
#define KILN_KERNELS_REF_NBITS_H

#include "ir/op.h"

typedef struct kiln__nbits {
  size_t k, n, block, n_blocks, blob; /* blob: bytes per block (block / 2) */
  size_t m;                           /* rows of A: the product of its leading dims */
  const kiln_tensor *zp;              /* NULL: 8 */
  bool zp_float;                      /* zero_points are float [N * n_blocks] */
  const kiln_tensor *bias;            /* NULL or float [N] */
} kiln__nbits;

/* Checks the attributes and input shapes against each other (not the data, which may be unknown
   at planning time) and fills `g`; a clear INVALID_ARGUMENT / UNSUPPORTED otherwise. */
kiln_status kiln__nbits_check(const kiln__kctx *c, kiln__nbits *g);

/* The zero point of column n's block j (as float), by the rules above. */
static inline float kiln__nbits_zp(const kiln__nbits *g, size_t n, size_t j) {
  if (!g->zp) return 8.0f;
  if (g->zp_float) return ((const float *)g->zp->data)[n * g->n_blocks + j];
  uint8_t b = ((const uint8_t *)g->zp->data)[n * ((g->n_blocks + 1) / 2) + j / 2];
  return (float)(j % 2 ? b >> 4 : b & 15);
}

/* ---- accuracy_level 4: A quantized to int8 (the reference arithmetic of the cpu q8 path) ----
 * Per row of A and per K block (the weights' block): s_a = max |a| / 127 (llama.cpp's Q8_0
 * shape), a_q = round_half_even(a / s_a) in int8 (0 where s_a is 0), A padded with zeros to whole
 * blocks. A block's product is the integer sum of a_q * code (codes unsigned 0..15) less
 * zp * sum(a_q), times s_a * s_w. */

/* One row a[0..k) into aq[n_blocks * block] (zeros past k), sa[n_blocks] and
   asum[n_blocks] = the sum of each block's aq. */
void kiln__nbits_q8_quant_row(const float *a, size_t k, size_t block, int8_t *aq, float *sa,
                              int32_t *asum);

/* The integer sum over one block: sum_t code(t) * aq[t], code(t) the low nibble of
   blob[t / 2] for even t, the high one for odd t. */
int32_t kiln__nbits_q8_block_dot(const uint8_t *blob, const int8_t *aq, size_t block);

#endif
