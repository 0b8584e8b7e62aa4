/* Direct convolution for convs with few input channels: the first conv of a CNN (C = 3), whose
 * im2col has k = 27..147 rows and a column per output position (1.3-1.8 MB to write and pack
 * for a 224x224 image) for a GEMM too short to hide it. conv_stem_avx512.c. */
#ifndef KILN_KERNELS_CPU_CONV_STEM_H
#define KILN_KERNELS_CPU_CONV_STEM_H

#include "core/threadpool.h"
#include "kernels/cpu/vmath.h"

typedef struct kiln__stem_args {
  const float *x;      /* [n, c, h, w] */
  const float *wt;     /* [m, c, kh, kw] */
  const float *bias;   /* [m], or NULL */
  float *y;            /* [n, m, oh, ow] */
  size_t n, c, h, w, m, oh, ow, kh, kw, s; /* one stride for both axes, no dilation */
  int64_t pt, pl;      /* padding before (>= 0) */
  kiln__act act;       /* NONE, RELU or CLIP (lo, hi) */
  float lo, hi;
} kiln__stem_args;

/* Whether the kernel runs this geometry: c <= 4, kernels up to 7x7, stride 1 or 2, and phase
   rows that fit its stack buffer. */
bool kiln__stem_fits(size_t c, size_t kh, size_t kw, size_t s, size_t ow, int64_t pt,
                     int64_t pl);

/* y = act(conv(x, wt) + bias), output rows split over the pool. AVX-512F only: the caller
   checks the ISA. */
void kiln__conv_stem_avx512(struct kiln__pool *pool, const kiln__stem_args *a);

#endif
