/* MatMulNBits with int8 activations (accuracy_level 4; nbits_q8.c): A is quantized per row and
 * K block as kernels/ref/nbits.h says (kiln__nbits_q8_quant_row), then each block's product is
 * an integer sum of a_q * code less zp * sum(a_q), converted to float once per block and
 * multiplied by s_a * s_w. Integer sums equal the reference's exactly; the float sums differ from
 * it only by order. Kernels: portable C, AVX2 (VPMADDUBSW + VPMADDWD), AVX-VNNI and AVX512-VNNI
 * (VPDPBUSD on ymm), chosen by the integer ISA (qgemm.h's kiln__qisa_select: cpuid or KILN_ISA).
 * Blocks must be a multiple of 32 (kiln__nbits_q8_ok). */
#ifndef KILN_KERNELS_CPU_NBITS_Q8_H
#define KILN_KERNELS_CPU_NBITS_Q8_H

#include "kernels/cpu/qgemm.h"

/* The weights as the cpu kernel holds them (nbits_kernels.c's state). */
typedef struct kiln__nbits_w {
  size_t k, n, block, nb, blob, kp; /* kp: K padded to whole blocks */
  const uint8_t *codes;             /* [N, nb, blob] as in the file */
  const float *scales;              /* [N * nb] */
  const uint8_t *zps;               /* [N * nb] one zero point per block */
} kiln__nbits_w;

/* Whether the q8 path takes these weights (block a multiple of 32). */
bool kiln__nbits_q8_ok(const kiln__nbits_w *w);

/* The path's state for weights `w` (which must outlive it) on `isa`: the x86 kernels' copy of
   the codes, 8 columns interleaved (see nbits_q8.c). */
typedef struct kiln__nbits_q8 kiln__nbits_q8;
kiln_status kiln__nbits_q8_prepare(const kiln__nbits_w *w, kiln__qisa isa, kiln__nbits_q8 **out,
                                   kiln_error *err);
void kiln__nbits_q8_free(kiln__nbits_q8 *q);

/* Scratch bytes for m rows: quantized A, its scales and block sums. */
size_t kiln__nbits_q8_scratch(const kiln__nbits_q8 *q, size_t m);

/* Y[m, N] = A[m, K] x W (+ bias); columns split over `pool`. */
void kiln__nbits_q8_run(struct kiln__pool *pool, const kiln__nbits_q8 *q, const float *A, size_t m,
                        float *Y, const float *bias, void *scratch);

#endif
