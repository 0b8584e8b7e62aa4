/* Depthwise 2-D convolution, float32 NCHW (group == C == M, one filter per channel).
 *
 * The GEMM formulation wastes a depthwise conv (k = kh * kw, a 9-deep product per output), so it
 * runs directly. With AVX2, 3x3 at stride 1 or 2 on planes 8 or more outputs wide runs the
 * kernel of conv_dw3x3.c (taps read in place, edges through lane masks), and 3x3 stride 1 on
 * planes narrower than 8 (7x7) its flat kernel (the plane as one zero-bordered row, the left
 * and right taps' wrap-around masked); with AVX-512 the 3x3 kernel has a 16-column twin and
 * outputs up to 8 wide run 16 channels in the lanes (conv_dw3x3_avx512.c). Otherwise there are two
 * paths: planes up to 32 outputs wide run 8 channels at a
 * time with the channel in the vector lanes (an interleaved, zero-bordered copy of the 8 planes;
 * each output position is kh * kw full-width FMAs); wider planes run blocks of 4 output rows x 8
 * columns (4 independent FMA chains) with taps loaded straight from the input (stride 2:
 * 16-float loads de-interleaved), narrow ones through a zero-bordered copy of the plane, wide
 * ones in place with only the edge blocks copied into padded segments. Horizontal strides other
 * than 1 and 2, vertical strides above 4 and the portable build use a row sweep over phase-split
 * padded row buffers. 3x3 and 5x5 are unrolled with their weights in registers. Dilation must be
 * 1. Contract: flat arguments, no allocation, no threads, no errors. */
#ifndef KILN_KERNELS_CPU_CONV_DW_H
#define KILN_KERNELS_CPU_CONV_DW_H

#include "kernels/cpu/sgemm.h"

typedef struct kiln__dw_geom {
  size_t h, w, oh, ow;   /* input and output plane */
  size_t kh, kw, sh, sw; /* kernel and strides (>= 1) */
  size_t pt, pl;         /* leading padding, top and left */
  bool prefetch;         /* the input is far larger than L2: the 3x3 kernel at stride 2 prefetches
                            the input rows one band ahead (a hint only; results do not change) */
} kiln__dw_geom;

/* Whether the row buffers for this geometry fit the kernel's stack block. */
bool kiln__dwconv_fits(const kiln__dw_geom *g);

/* y = act(conv(x, w) + bias + z) on one plane. x: h x w, w: kh x kw, z: NULL or oh x ow (may be
   y), y: oh x ow. The activation is ep->act (RELU and CLIP in registers, the others by
   kiln__act_apply on each finished row); ep's bias and residual fields are ignored. */
void kiln__dwconv_plane_f32(kiln__isa isa, const kiln__dw_geom *g, const float *x,
                            const float *w, float bias, const float *z, float *y,
                            const kiln__epilogue *ep);

/* The AVX2 3x3 kernel of conv_dw3x3.c (x86 only): whether it takes the geometry (3x3, stride 1
   or 2 both ways, left padding <= 2, planes up to 2056 wide), and one plane with the contract of
   kiln__dwconv_plane_f32. */
bool kiln__dw3x3_fits(const kiln__dw_geom *g);
void kiln__dw3x3_plane_avx2(const kiln__dw_geom *g, const float *x, const float *w, float bias,
                            const float *z, float *y, const kiln__epilogue *ep);
/* The kernels that take `count` planes at once: planes in_stride / out_stride floats apart,
   weights w + 9 c, bias NULL or bias[c], z NULL, separate or y; otherwise the contract of
   kiln__dwconv_plane_f32 (x86 only). */
typedef void kiln__dw3x3_planes_fn(const kiln__dw_geom *g, size_t count, const float *x,
                                   size_t in_stride, const float *w, const float *bias,
                                   const float *z, float *y, size_t out_stride,
                                   const kiln__epilogue *ep);
/* Planes narrower than 8 at stride 1 with pads 1 (MobileNet's 7x7), h * w <= 64. */
bool kiln__dw3x3_flat_fits(const kiln__dw_geom *g);
kiln__dw3x3_planes_fn kiln__dw3x3_flat_avx2;
/* Small planes with 16 channels in the lanes (conv_dw3x3_avx512.c), for CPUs with AVX-512F: 3x3
   at stride 1 or 2 both ways, pads <= 2, outputs up to 64 x 64 within its stack blocks. */
bool kiln__dw3x3_c16_fits(const kiln__dw_geom *g);
kiln__dw3x3_planes_fn kiln__dw3x3_c16_avx512;
/* The plane kernel with 16 columns per vector (conv_dw3x3_avx512.c), for CPUs with AVX-512F and
   outputs wider than 8; the same contract. */
void kiln__dw3x3_plane_avx512(const kiln__dw_geom *g, const float *x, const float *w, float bias,
                              const float *z, float *y, const kiln__epilogue *ep);

#endif

/* ---- the node-level kernel (Conv and FusedConv rows) ---------------------------------------- */

struct kiln__node;
struct kiln__graph;
struct kiln__kctx;

typedef struct kiln__dw_conv {
  kiln__isa isa;
  size_t c, kh, kw, sh, sw;
  int64_t pads[4];  /* top, left, bottom, right, when auto_pad is NOTSET */
  int auto_pad;     /* 0 NOTSET, 1 SAME_UPPER, 2 SAME_LOWER, 3 VALID */
  const float *w;   /* the initializer's data: c x kh x kw, owned by the graph */
} kiln__dw_conv;

/* Whether `n` (Conv or FusedConv) is a depthwise conv this kernel runs: float32, a constant
   [C, 1, kh, kw] weight with group == C, 2-D, dilation 1, any strides and pads. Fills *d (all but
   isa) when it is. */
bool kiln__dw_conv_parse(const struct kiln__node *n, const struct kiln__graph *g,
                         kiln__dw_conv *d);
/* The plane geometry of one call (input h x w, output oh x ow from shape inference: pads from
   the attributes or auto_pad); false when the row buffers do not fit (kiln__dwconv_fits). */
bool kiln__dw_conv_geom(const kiln__dw_conv *d, size_t h, size_t w, size_t oh, size_t ow,
                        kiln__dw_geom *g);
/* Runs it for the context's tensors, with y = act(conv + bias + z); z NULL or y's shape. Returns
   false, having done nothing, when the run's shapes are not ones it handles (the caller then runs
   the reference kernel). */
bool kiln__dw_conv_run(struct kiln__kctx *c, const kiln__dw_conv *d, const float *z,
                       const kiln__epilogue *ep);
