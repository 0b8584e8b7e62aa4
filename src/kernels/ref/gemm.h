/* Reference float32 GEMM shared by MatMul, Gemm, Conv and the quantized matmuls.
 *
 * C = alpha * op(A) * op(B) + beta * C, all row-major.
 *   op(A) is m x k: A is m x k with row stride lda when !trans_a, k x m with row stride lda when
 *   trans_a. op(B) is k x n: B is k x n (ldb) when !trans_b, n x k (ldb) when trans_b. C is m x n
 *   with row stride ldc.
 * beta == 0 overwrites C without reading it (so C may hold garbage or NaN). k == 0 scales C by
 * beta. A and B must not overlap C.
 *
 * Cache-blocked, portable C written for the compiler to vectorize; rows of C are split over the
 * pool's threads (pool NULL runs serially). A pool runs one parallel_for at a time, so code that
 * is already inside a kiln__parallel_for job must pass NULL. Allocates nothing: the packing
 * buffers (192 KiB) live on the stack. */
#ifndef KILN_KERNELS_REF_GEMM_H
#define KILN_KERNELS_REF_GEMM_H

#include "core/common.h"

struct kiln__pool;

void kiln__sgemm(struct kiln__pool *pool, bool trans_a, bool trans_b, size_t m, size_t n, size_t k,
                 float alpha, const float *a, size_t lda, const float *b, size_t ldb, float beta,
                 float *c, size_t ldc);

/* The geometry of a numpy-style batched matmul of A (..., m, k) by B (..., k, n): 1-D operands
   are promoted ([k] -> [1, k] for A, [k, 1] for B) and the promoted dimension is dropped from the
   output; batch dimensions broadcast. */
typedef struct kiln__matmul_shape {
  size_t m, n, k;
  size_t batch;                            /* number of output matrices */
  int batch_rank;
  int64_t batch_dims[KILN_MAX_RANK];
  size_t a_bstride[KILN_MAX_RANK];         /* element offset of A per step of a batch dim (0 =
                                              broadcast) */
  size_t b_bstride[KILN_MAX_RANK];
  bool a_batched, b_batched;               /* whether A / B vary along the batch at all */
  int out_rank;
  int64_t out_dims[KILN_MAX_RANK];
} kiln__matmul_shape;

/* Fills `s` from the operands' shapes; fails (INVALID_ARGUMENT) on rank 0, mismatched k or
   batch dims that do not broadcast. */
kiln_status kiln__matmul_shape_get(const kiln_tensor *a, const kiln_tensor *b,
                                   kiln__matmul_shape *s, kiln_error *err);
/* Element offsets of the A and B matrices that produce output matrix `i` (< s->batch). */
void kiln__matmul_offsets(const kiln__matmul_shape *s, size_t i, size_t *a_off, size_t *b_off);

#endif
