/* Winograd convolution F(2x2, 3x3) for the cpu backend's 3x3 stride-1 convs (Lavin & Gray
 * 2015): each 2 x 2 output tile is A^T [(G g G^T) . (B^T d B)] A over a 4 x 4 input patch d, so a
 * conv becomes 16 independent GEMMs [K x C] x [C x tiles] on the packed SGEMM (sgemm.h), with
 * 1/2.25 of the direct conv's multiplies. F(4x4, 3x3) (36 GEMMs, 1/4 of the multiplies) was
 * measured faster on ResNet's 56-14 planes but 10-30x less accurate (up to 1e-5 of the output's
 * magnitude per layer; it failed the per-element 1e-4 check of tests/test_cpu_fused.c), so it is
 * not built (bench/RESULTS.md, Winograd section).
 *
 * This header is the per-ISA transform table (conv_winograd_tf.c); the kernel rows are in
 * conv_winograd.c. */
#ifndef KILN_KERNELS_CPU_CONV_WINOGRAD_H
#define KILN_KERNELS_CPU_CONV_WINOGRAD_H

#include "kernels/cpu/sgemm.h"

/* The output tile side m and the input patch side a = m + 2. */
#define KILN__WINO_M 2
#define KILN__WINO_A 4
/* Tiles per transform call: one run of adjacent tiles in a tile row, the vector lanes. */
#define KILN__WINO_RUN 16

/* What the output transform adds before storing: y = act(o + bias + z). RELU and CLIP are applied
   there; other activations by the caller on the stored rows. */
typedef struct kiln__wino_ep {
  float bias;
  const float *z; /* NULL, or the residual at the same offset as y (same row stride) */
  kiln__act act;
  float lo, hi;
} kiln__wino_ep;

/* in: the 4 x 4 transforms of nt <= KILN__WINO_RUN tiles of one channel plane x (h x w) whose
   patches start at row iy0 and columns ix0, ix0 + 2, ...: element (i, k) of tile t goes to
   dst[(i * 4 + k) * xs + t]. Outside the plane reads as zero (padding). Each of the 16 rows may
   be written up to dst[... + room) (room >= nt): lanes [nt, room) may receive other values
   (the caller overwrites them later), so the AVX2 build stores whole vectors there instead of
   masked ones (VMASKMOVPS to memory is microcoded on AMD: avx2_tail.h).
   out: the inverse of the GEMMs' products src[(i * 4 + k) * xs + t] for the tiles of one output
   row band: writes rows < `rows` and columns < `cols` of y (row stride ldy), the tile t owning
   columns [2 t, 2 t + 2), with the epilogue. */
typedef void (*kiln__wino_in_fn)(const float *x, size_t h, size_t w, int64_t iy0, int64_t ix0,
                                 size_t nt, float *dst, size_t xs, size_t room);
typedef void (*kiln__wino_out_fn)(const float *src, size_t xs, float *y, size_t ldy, size_t rows,
                                  size_t cols, const kiln__wino_ep *ep);

typedef struct kiln__wino_tf {
  kiln__wino_in_fn in;
  kiln__wino_out_fn out;
} kiln__wino_tf;

/* The transforms for `isa`: AVX2 intrinsics (conv_winograd_avx2.c, bit-identical results) where
   the machine has it, the portable build otherwise (the compiler's vectorization for the target:
   SSE2, NEON). */
const kiln__wino_tf *kiln__wino_tf_get(kiln__isa isa);
#if defined(__x86_64__) || defined(__i386__)
const kiln__wino_tf *kiln__wino_tf_avx2(void);
#endif

/* The weight transform G g G^T of one 3x3 filter into u[(i * 4 + k) * us], in double then
   rounded. */
void kiln__wino_weight(const float g[9], float *u, size_t us);

#endif
