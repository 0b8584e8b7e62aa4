/* EXPERIMENT, not part of the library (bench/RESULTS.md, NCHWc section: slower per node than
 * the cpu backend's GEMM conv on most ResNet-50 shapes, so it was not landed).
 *
 * Direct 2-D convolution on channel-blocked tensors (NCHW8c): a tensor [N, C, H, W] is stored as
 * [N, ceil(C/8), H, W, 8], channel c at block c / 8, lane c % 8, lanes past C zero.
 *
 * The idea: the GEMM formulation (gemm_kernels.c) packs the input into im2col panels on every call
 * and tiles the output plane into 16-column panels, which fits small planes (7x7 = 49 outputs)
 * badly. In the blocked layout every tap of every input channel is one broadcast and every output
 * channel block one 8-wide vector, so the kernel reads the input in place: a strip of 6
 * consecutive output pixels (flat index, so strips may span rows) x 2 output blocks stays in 12
 * ymm accumulators over a chunk of input blocks and every tap. Strips wholly inside the input
 * read taps at fixed offsets; others look each pixel's tap up and read a zero vector outside.
 *
 * Weights are packed once as [OCb][ICb][kh][kw][ic 8][oc 8] (zero past C and M). The epilogue adds
 * the bias (OCb * 8 floats), a residual Z in the output's layout (may be y) and the activation
 * (RELU/CLIP in registers, others by kiln__act_apply on the finished range). Group must be 1;
 * depthwise convs stay on conv_dw.c. Contract: flat arguments, no allocation, no threads. */
#ifndef KILN_BENCH_NCHWC_CONV_NCHWC_H
#define KILN_BENCH_NCHWC_CONV_NCHWC_H

#include "kernels/cpu/sgemm.h"

#define KILN__NCHWC_B 8 /* channels per block */

static inline size_t kiln__nchwc_blocks(size_t c) { return (c + KILN__NCHWC_B - 1) / KILN__NCHWC_B; }

typedef struct kiln__nchwc_geom {
  size_t icb, h, w;              /* input blocks and plane */
  size_t ocb, oh, ow;            /* output blocks and plane */
  size_t kh, kw, sh, sw, dh, dw; /* kernel, strides, dilations (>= 1) */
  size_t pt, pl;                 /* leading padding */
} kiln__nchwc_geom;

/* Floats of the packed weights. */
size_t kiln__nchwc_wsize(const kiln__nchwc_geom *g);
/* Packs W [M, C, kh, kw] (group 1; M <= ocb * 8, C <= icb * 8) into wp (wsize floats). */
void kiln__nchwc_pack_w(const kiln__nchwc_geom *g, size_t m, size_t c, const float *w, float *wp);

/* One image's output rows [oy0, oy1) of output blocks [ob0, ob1):
   y = act(conv(x, wp) + bias + z). x: [icb, h, w, 8]; y, z: [ocb, oh, ow, 8]; bias NULL or
   ocb * 8 floats; ep's bias and residual fields are ignored. */
void kiln__nchwc_conv_f32(kiln__isa isa, const kiln__nchwc_geom *g, const float *x,
                          const float *wp, const float *bias, const float *z, float *y,
                          const kiln__epilogue *ep, size_t ob0, size_t ob1, size_t oy0,
                          size_t oy1);

/* Layout changes of one image: x [c, hw] <-> y [ceil(c/8), hw, 8] (lanes past c written 0). */
void kiln__nchwc_from_nchw(const float *x, size_t c, size_t hw, float *y);
void kiln__nchwc_to_nchw(const float *x, size_t c, size_t hw, float *y);

#endif
