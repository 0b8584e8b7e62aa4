/* Integer depthwise convolution (QLinearConv / ConvInteger with group == channels, one input and
 * one output channel per group): y[b, c] = epilogue(sum (x - zx)(w[c] - zw[c])) per plane, exact
 * int32 sums and the requantization of qgemm.h's epilogue, so the result is byte-identical to
 * the reference kernel. The GEMM path would run it as one M = 1 GEMM per channel with im2col and
 * per-call packing; this walks each plane once instead. */
#ifndef KILN_KERNELS_CPU_QCONV_DW_H
#define KILN_KERNELS_CPU_QCONV_DW_H

#include "kernels/cpu/qgemm.h"

typedef struct kiln__qdw_args {
  const void *x;        /* [n, c, h, w], uint8 or int8 */
  bool x_signed;
  size_t n, c, h, w, oh, ow;
  size_t kh, kw;
  int64_t sh, sw, dh, dw, pt, pl; /* strides, dilations, padding before (>= 0) */
  const void *wt;       /* [c, 1, kh, kw], uint8 or int8 */
  bool w_signed;
  int32_t zx;
  kiln__qzp zw;         /* per tensor or per channel */
  kiln__qout_kind kind; /* int32 (ConvInteger) or requantized */
  const int32_t *bias;  /* per channel, or NULL */
  const float *mult;    /* per channel (requantization only) */
  int32_t zy;
  void *y;              /* [n, c, oh, ow] */
  /* qconv_dwp.c's small-plane blocks made at session creation (or NULL); used when its geometry
     is the call's */
  const struct kiln__qdwp_plan *plan;
} kiln__qdw_args;

/* Runs the convolution over the pool (channels split). `isa` picks the AVX2 row kernel (strides
   1 and 2) where the machine has it; other geometries run a portable loop. */
void kiln__qconv_dw(struct kiln__pool *pool, kiln__qisa isa, const kiln__qdw_args *a);

/* The channels-in-lanes 3x3 kernel (qconv_dwc.c, AVX2): whether it runs `a`, and running it. */
bool kiln__qdwc_fits(const kiln__qdw_args *a);
void kiln__qdwc(struct kiln__pool *pool, kiln__qisa isa, const kiln__qdw_args *a);

/* The 3x3 kernel with a plane's columns in the lanes (qconv_dwp.c, AVX512-VBMI + VNNI, int8
   weights with zero point 0): whether the CPU has it, whether it runs `a`, and running it. */
bool kiln__qdwp_supported(void);
bool kiln__qdwp_fits(const kiln__qdw_args *a);
void kiln__qdwp(struct kiln__pool *pool, const kiln__qdw_args *a);

/* The small-plane (ow < 16) blocks of a 3x3 geometry, made once per node; NULL where the kernel
   runs such planes by rows (or out of memory). */
typedef struct kiln__qdwp_plan kiln__qdwp_plan;
kiln__qdwp_plan *kiln__qdwp_plan_make(size_t h, size_t w, size_t oh, size_t ow, int64_t s,
                                      int64_t pt, int64_t pl);
void kiln__qdwp_plan_free(kiln__qdwp_plan *p);

#endif
