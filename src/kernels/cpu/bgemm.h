/* The bfloat16 GEMM (AVX512-BF16, VDPBF16PS): C = epilogue(A B) with A float32 rounded to
 * bfloat16 per call (round to nearest even) and B a constant whose every value is already a
 * bfloat16 (a `kiln quantize --to bf16` file's weights after the planner folds their Casts),
 * packed once at prepare. Products of bfloat16 pairs are summed in float32.
 *
 * Opt-in (KILN_BF16=1 in the environment at session creation), because rounding the activations
 * changes results: the file's graph is Cast(bf16 weight -> float) then a float32 MatMul, which the
 * FP32 kernels run exactly; this kernel computes what a bf16 MatMul would. It doubles the products
 * per instruction (32 per VDPBF16PS against 16 per FMA). */
#ifndef KILN_KERNELS_CPU_BGEMM_H
#define KILN_KERNELS_CPU_BGEMM_H

#include "kernels/cpu/sgemm.h"

struct kiln__pool;

/* B packed for the kernel: panels of 32 columns, per pair of k rows one 32-bit word per column
   (bfloat16 of row 2g low, of row 2g + 1 high). */
typedef struct kiln__bgemm_packed {
  size_t k, n;
  uint32_t *data; /* owned; kiln__aligned_alloc */
} kiln__bgemm_packed;

/* Whether KILN_BF16 asks for the kernel and this build and CPU can run it. */
bool kiln__bgemm_wanted(void);
/* Whether every value of the k x n matrix b (row stride ldb; n x k when trans_b) is a bfloat16. */
bool kiln__bgemm_exact(const float *b, size_t k, size_t n, size_t ldb, bool trans_b);
kiln_status kiln__bgemm_pack_b(const float *b, size_t k, size_t n, size_t ldb, bool trans_b,
                               kiln__bgemm_packed *out, kiln_error *err);
void kiln__bgemm_packed_free(kiln__bgemm_packed *p);

/* Bytes of scratch kiln__bgemm_run needs for an m-row A. */
size_t kiln__bgemm_scratch(size_t m, size_t k);

/* C (m x n, row stride ldc) = A (m x k, row stride lda) B, then ep's bias (per column),
   residual and a RELU / CLIP activation (other activations are the caller's, after). */
void kiln__bgemm_run(struct kiln__pool *pool, size_t m, const float *a, size_t lda,
                     const kiln__bgemm_packed *b, float *c, size_t ldc, const kiln__epilogue *ep,
                     void *scratch);

#endif
