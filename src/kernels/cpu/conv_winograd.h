/* Winograd convolution F(m x m, 3x3) for the cpu backend's 3x3 stride-1 convs (Lavin & Gray
 * 2015): each m x m output tile is A^T [(G g G^T) . (B^T d B)] A over an (m+2) x (m+2) input
 * patch d, so a conv becomes (m+2)^2 independent GEMMs [K x C] x [C x tiles] on the packed SGEMM
 * (sgemm.h), with (m+2)^2 / (9 m^2) of the direct conv's multiplies (m = 2: 1/2.25, m = 4: 1/4).
 *
 * This header is the per-ISA transform table (conv_winograd_tf.c); the kernel rows are in
 * conv_winograd.c. */
#ifndef KILN_KERNELS_CPU_CONV_WINOGRAD_H
#define KILN_KERNELS_CPU_CONV_WINOGRAD_H

#include "kernels/cpu/sgemm.h"

/* Largest tile (F(4x4)): m and the patch side a = m + 2. */
#define KILN__WINO_M 4
#define KILN__WINO_A 6
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

/* in: the a x a transforms of nt <= KILN__WINO_RUN tiles of one channel plane x (h x w) whose
   patches start at row iy0 and columns ix0, ix0 + m, ...: element (i, k) of tile t goes to
   dst[(i * a + k) * xs + t]. Outside the plane reads as zero (padding).
   out: the inverse of the GEMMs' products src[(i * a + k) * xs + t] for the tiles of one output
   row band: writes rows < `rows` and columns < `cols` of y (row stride ldy), the tile t owning
   columns [t m, t m + m), with the epilogue. */
typedef void (*kiln__wino_in_fn)(const float *x, size_t h, size_t w, int64_t iy0, int64_t ix0,
                                 size_t nt, float *dst, size_t xs);
typedef void (*kiln__wino_out_fn)(const float *src, size_t xs, float *y, size_t ldy, size_t rows,
                                  size_t cols, const kiln__wino_ep *ep);

typedef struct kiln__wino_tf {
  kiln__wino_in_fn in[2];   /* [0]: F(2x2), [1]: F(4x4) */
  kiln__wino_out_fn out[2];
} kiln__wino_tf;

/* The transforms for `isa`: AVX2 builds of the same code where the machine has it, the portable
   build otherwise (the compiler's vectorization for the target: SSE2, NEON). */
const kiln__wino_tf *kiln__wino_tf_get(kiln__isa isa);

/* F(m x m, 3x3)'s weight transform G g G^T of one 3x3 filter into u[(i * a + k) * us], in double
   then rounded (m = 2 or 4). */
void kiln__wino_weight(int m, const float g[9], float *u, size_t us);

#endif
