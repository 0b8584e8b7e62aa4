/* Reference kernel: com.microsoft MatMulNBits (see nbits.h for the layout). Each weight is
 * dequantized to float32 as the spec writes it, (code - zero_point) * scale, and the products are
 * summed in double in k order, so this is an oracle at least as accurate as any fast path. */
#include <math.h>

#include "kernels/ref/nbits.h"

static const kiln_tensor *opt_in(const kiln__kctx *c, int i) {
  return i < c->n_in ? c->in[i] : NULL;
}

kiln_status kiln__nbits_check(const kiln__kctx *c, kiln__nbits *g) {
  const kiln__node *nd = c->node;
  int64_t K = kiln__attr_int(nd, "K", -1), N = kiln__attr_int(nd, "N", -1);
  int64_t bits = kiln__attr_int(nd, "bits", 4), block = kiln__attr_int(nd, "block_size", -1);
  if (bits != 4)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "MatMulNBits: bits=%lld is not supported (only 4)",
                      (long long)bits);
  if (K < 1 || N < 1 || K > ((int64_t)1 << 31) || N > ((int64_t)1 << 31))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "MatMulNBits: attributes K and N must be given and positive (K=%lld, N=%lld)",
                      (long long)K, (long long)N);
  if (block < 16 || block > 65536 || (block & (block - 1)))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "MatMulNBits: block_size must be a power of two >= 16 (got %lld)",
                      (long long)block);
  const kiln_tensor *a = c->in[0], *b = c->in[1], *s = c->in[2];
  const kiln_tensor *zp = opt_in(c, 3), *gidx = opt_in(c, 4), *bias = opt_in(c, 5);
  if (gidx)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "MatMulNBits: g_idx (act-order) is not supported");
  if (a->dtype != KILN_DTYPE_FLOAT)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "MatMulNBits: A must be float32, not %s",
                      kiln_dtype_name(a->dtype));
  if (a->rank < 1 || a->dims[a->rank - 1] != K)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "MatMulNBits: A's last dim must equal K=%lld", (long long)K);
  g->k = (size_t)K;
  g->n = (size_t)N;
  g->block = (size_t)block;
  g->n_blocks = (g->k + g->block - 1) / g->block;
  g->blob = g->block / 2;
  g->m = kiln_tensor_count(a) / g->k;
  if (b->dtype != KILN_DTYPE_UINT8 || b->rank != 3 || b->dims[0] != N ||
      b->dims[1] != (int64_t)g->n_blocks || b->dims[2] != (int64_t)g->blob)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "MatMulNBits: B must be uint8 [N=%lld, n_blocks=%zu, block_size/2=%zu]",
                      (long long)N, g->n_blocks, g->blob);
  if (s->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(s) != g->n * g->n_blocks)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "MatMulNBits: scales must be float32 with N * n_blocks = %zu elements",
                      g->n * g->n_blocks);
  g->zp = zp;
  g->zp_float = false;
  if (zp) {
    if (zp->dtype == KILN_DTYPE_FLOAT && kiln_tensor_count(zp) == g->n * g->n_blocks) {
      g->zp_float = true;
    } else if (zp->dtype != KILN_DTYPE_UINT8 ||
               kiln_tensor_count(zp) != g->n * ((g->n_blocks + 1) / 2)) {
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "MatMulNBits: zero_points must be uint8 [N * ceil(n_blocks / 2) = %zu] "
                        "(packed) or float32 [N * n_blocks = %zu]",
                        g->n * ((g->n_blocks + 1) / 2), g->n * g->n_blocks);
    }
  }
  g->bias = bias;
  if (bias && (bias->dtype != KILN_DTYPE_FLOAT || bias->rank != 1 || bias->dims[0] != N))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "MatMulNBits: bias must be float32 [N=%lld]",
                      (long long)N);
  return KILN_OK;
}

void kiln__nbits_q8_quant_row(const float *a, size_t k, size_t block, int8_t *aq, float *sa,
                              int32_t *asum) {
  size_t nb = (k + block - 1) / block;
  for (size_t j = 0; j < nb; j++) {
    size_t k0 = j * block, k1 = k0 + block < k ? k0 + block : k;
    float m = 0;
    for (size_t t = k0; t < k1; t++) m = fmaxf(m, fabsf(a[t]));
    float s = m / 127.0f;
    int32_t sum = 0;
    for (size_t t = 0; t < block; t++) {
      int8_t v = 0;
      if (k0 + t < k1 && s > 0) v = (int8_t)lrintf(a[k0 + t] / s); /* |a / s| <= 127 */
      aq[k0 + t] = v;
      sum += v;
    }
    sa[j] = s;
    asum[j] = sum;
  }
}

int32_t kiln__nbits_q8_block_dot(const uint8_t *blob, const int8_t *aq, size_t block) {
  int32_t sum = 0;
  for (size_t t = 0; t < block; t++) sum += (t % 2 ? blob[t / 2] >> 4 : blob[t / 2] & 15) * aq[t];
  return sum;
}

static kiln_status infer_nbits(kiln__kctx *c) {
  kiln__nbits g;
  kiln_status st = kiln__nbits_check(c, &g);
  if (st != KILN_OK) return st;
  int64_t dims[KILN_MAX_RANK];
  const kiln_tensor *a = c->in[0];
  memcpy(dims, a->dims, (size_t)a->rank * sizeof *dims);
  dims[a->rank - 1] = (int64_t)g.n;
  kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, a->rank, dims);
  return KILN_OK;
}

static kiln_status run_nbits(kiln__kctx *c) {
  kiln__nbits g;
  kiln_status st = kiln__nbits_check(c, &g);
  if (st != KILN_OK) return st;
  const float *A = c->in[0]->data, *S = c->in[2]->data;
  const uint8_t *B = c->in[1]->data;
  const float *bias = g.bias ? g.bias->data : NULL;
  float *Y = c->out[0]->data;
  for (size_t m = 0; m < g.m; m++)
    for (size_t n = 0; n < g.n; n++) {
      double acc = 0;
      for (size_t k = 0; k < g.k; k++) {
        size_t j = k / g.block;
        uint8_t byte = B[(n * g.n_blocks + j) * g.blob + (k % g.block) / 2];
        float code = (float)(k % 2 ? byte >> 4 : byte & 15);
        float w = (code - kiln__nbits_zp(&g, n, j)) * S[n * g.n_blocks + j];
        acc += (double)A[m * g.k + k] * w;
      }
      Y[m * g.n + n] = (float)acc + (bias ? bias[n] : 0.0f);
    }
  return KILN_OK;
}

const kiln__op kiln__ops_nbits[] = {
    {"com.microsoft", "MatMulNBits", infer_nbits, run_nbits, NULL, 0, 3, 6},
    {0},
};
