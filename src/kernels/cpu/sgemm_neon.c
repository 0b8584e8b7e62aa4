/* The AArch64 NEON SGEMM microkernel: an 8 x 12 register tile (24 accumulators, 2 registers of
 * A and 3 of B: 29 of the 32 q registers). Each k step multiplies the 12 B values by one lane of
 * A (vfmaq_laneq_f32), so A needs no broadcast loads. NEON is part of the AArch64 base ISA: no
 * target attribute, no run-time check. */
#include "kernels/cpu/sgemm.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#define MR 8
#define NR 12

/* Stores one full 12-wide row with the epilogue, while it is still in registers. */
static inline __attribute__((always_inline)) void
store_row(float *restrict c, size_t r, float32x4_t v0, float32x4_t v1, float32x4_t v2,
          const kiln__uk_store *s) {
  const kiln__epilogue *ep = s->ep;
  if (s->alpha != 1.0f) {
    v0 = vmulq_n_f32(v0, s->alpha);
    v1 = vmulq_n_f32(v1, s->alpha);
    v2 = vmulq_n_f32(v2, s->alpha);
  }
  if (s->load_c) {
    v0 = vaddq_f32(v0, vld1q_f32(c));
    v1 = vaddq_f32(v1, vld1q_f32(c + 4));
    v2 = vaddq_f32(v2, vld1q_f32(c + 8));
  }
  if (ep) {
    if (ep->bias) {
      if (ep->bias_per_row) {
        float32x4_t b = vdupq_n_f32(ep->bias[s->row0 + r]);
        v0 = vaddq_f32(v0, b), v1 = vaddq_f32(v1, b), v2 = vaddq_f32(v2, b);
      } else {
        const float *b = ep->bias + s->col0;
        v0 = vaddq_f32(v0, vld1q_f32(b));
        v1 = vaddq_f32(v1, vld1q_f32(b + 4));
        v2 = vaddq_f32(v2, vld1q_f32(b + 8));
      }
    }
    if (ep->residual) {
      const float *res = ep->residual + (s->row0 + r) * ep->ldr + s->col0;
      v0 = vaddq_f32(v0, vld1q_f32(res));
      v1 = vaddq_f32(v1, vld1q_f32(res + 4));
      v2 = vaddq_f32(v2, vld1q_f32(res + 8));
    }
    /* Compare and select rather than vmaxq/vminq (which return NaN for a NaN operand): the same
       results as kiln__uk_store_tile, the path of edge tiles (ReLU turns NaN into 0, Clip keeps
       it). */
    if (ep->act == KILN__ACT_RELU) {
      float32x4_t z = vdupq_n_f32(0.0f);
      v0 = vbslq_f32(vcgtq_f32(v0, z), v0, z);
      v1 = vbslq_f32(vcgtq_f32(v1, z), v1, z);
      v2 = vbslq_f32(vcgtq_f32(v2, z), v2, z);
    } else if (ep->act == KILN__ACT_CLIP) {
      float32x4_t lo = vdupq_n_f32(ep->lo), hi = vdupq_n_f32(ep->hi);
#define CLIP(v) v = vbslq_f32(vcltq_f32(v, lo), lo, v), v = vbslq_f32(vcgtq_f32(v, hi), hi, v)
      CLIP(v0);
      CLIP(v1);
      CLIP(v2);
#undef CLIP
    }
  }
  vst1q_f32(c, v0);
  vst1q_f32(c + 4, v1);
  vst1q_f32(c + 8, v2);
}

void kiln__sgemm_uk_8x12__neon(size_t kc, const float *restrict a, const float *restrict b,
                               float *restrict c, size_t ldc, size_t mr, size_t nr,
                               const kiln__uk_store *s) {
  float32x4_t z = vdupq_n_f32(0.0f);
  float32x4_t c00 = z, c01 = z, c02 = z, c10 = z, c11 = z, c12 = z, c20 = z, c21 = z, c22 = z;
  float32x4_t c30 = z, c31 = z, c32 = z, c40 = z, c41 = z, c42 = z, c50 = z, c51 = z, c52 = z;
  float32x4_t c60 = z, c61 = z, c62 = z, c70 = z, c71 = z, c72 = z;
  for (size_t p = 0; p < kc; p++) {
    float32x4_t a0 = vld1q_f32(a), a1 = vld1q_f32(a + 4);
    float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8);
#define ROW(i, av, lane)                            \
  c##i##0 = vfmaq_laneq_f32(c##i##0, b0, av, lane); \
  c##i##1 = vfmaq_laneq_f32(c##i##1, b1, av, lane); \
  c##i##2 = vfmaq_laneq_f32(c##i##2, b2, av, lane);
    ROW(0, a0, 0) ROW(1, a0, 1) ROW(2, a0, 2) ROW(3, a0, 3)
    ROW(4, a1, 0) ROW(5, a1, 1) ROW(6, a1, 2) ROW(7, a1, 3)
#undef ROW
    a += MR;
    b += NR;
  }
  if (nr == NR) {
    /* Full-width rows store from registers, also in a last row tile shorter than 8. */
    store_row(c, 0, c00, c01, c02, s);
    if (mr > 1) store_row(c + ldc, 1, c10, c11, c12, s);
    if (mr > 2) store_row(c + 2 * ldc, 2, c20, c21, c22, s);
    if (mr > 3) store_row(c + 3 * ldc, 3, c30, c31, c32, s);
    if (mr > 4) store_row(c + 4 * ldc, 4, c40, c41, c42, s);
    if (mr > 5) store_row(c + 5 * ldc, 5, c50, c51, c52, s);
    if (mr > 6) store_row(c + 6 * ldc, 6, c60, c61, c62, s);
    if (mr > 7) store_row(c + 7 * ldc, 7, c70, c71, c72, s);
    return;
  }
  float t[MR * NR];
#define PUT(i) vst1q_f32(t + i * NR, c##i##0), vst1q_f32(t + i * NR + 4, c##i##1), \
               vst1q_f32(t + i * NR + 8, c##i##2)
  PUT(0), PUT(1), PUT(2), PUT(3), PUT(4), PUT(5), PUT(6), PUT(7);
#undef PUT
  kiln__uk_store_tile(t, NR, c, ldc, mr, nr, s);
}

#endif
