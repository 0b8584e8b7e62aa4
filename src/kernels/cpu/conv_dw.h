/* Depthwise 2-D convolution, float32 NCHW (group == C == M, one filter per channel).
 *
 * The GEMM formulation wastes a depthwise conv (k = kh * kw, a 9-deep product per output), so it
 * runs directly: per plane, each input row is copied once into a zero-padded row buffer (a ring
 * of kh rows on the stack), split by phase of the horizontal stride so that every tap of every
 * stride is a contiguous load; each output row is then a padding-free sweep of kh * kw
 * multiply-adds over 16 (AVX2) output columns at a time, with 3x3 and 5x5 unrolled and their
 * weights held in registers. Any stride and kernel size up to 16 rows are handled; dilation must
 * be 1. Contract: flat arguments, no allocation, no threads, no errors. */
#ifndef KILN_KERNELS_CPU_CONV_DW_H
#define KILN_KERNELS_CPU_CONV_DW_H

#include "kernels/cpu/sgemm.h"

typedef struct kiln__dw_geom {
  size_t h, w, oh, ow;   /* input and output plane */
  size_t kh, kw, sh, sw; /* kernel and strides (>= 1) */
  size_t pt, pl;         /* leading padding, top and left */
} kiln__dw_geom;

/* Whether the row buffers for this geometry fit the kernel's stack block. */
bool kiln__dwconv_fits(const kiln__dw_geom *g);

/* y = act(conv(x, w) + bias + z) on one plane. x: h x w, w: kh x kw, z: NULL or oh x ow (may be
   y), y: oh x ow. The activation is ep->act (RELU and CLIP in registers, the others by
   kiln__act_apply on each finished row); ep's bias and residual fields are ignored. */
void kiln__dwconv_plane_f32(kiln__isa isa, const kiln__dw_geom *g, const float *x,
                            const float *w, float bias, const float *z, float *y,
                            const kiln__epilogue *ep);

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
/* Runs it for the context's tensors, with y = act(conv + bias + z); z NULL or y's shape. Returns
   false, having done nothing, when the run's shapes are not ones it handles (the caller then runs
   the reference kernel). */
bool kiln__dw_conv_run(struct kiln__kctx *c, const kiln__dw_conv *d, const float *z,
                       const kiln__epilogue *ep);
