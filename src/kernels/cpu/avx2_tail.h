/* The short last piece of a row in the AVX2 kernels: lanes [0, n) of a vector stored with plain
 * stores instead of VMASKMOVPS. A masked store to memory is microcoded on AMD Zen: ~23 cycles
 * each on the Zen 3 host against under one for a full store (bench/RESULTS.md, eighteenth
 * session), and the kernels issue one for every row whose length is not a multiple of 8 (odd
 * planes: SqueezeNet's 55, 27 and 13, ResNet's 7 and 14 in Winograd tiles). Masked loads cost
 * ~1.4 full loads there and stay. x86-64 only; the including file provides <immintrin.h>. */
#ifndef KILN_KERNELS_CPU_AVX2_TAIL_H
#define KILN_KERNELS_CPU_AVX2_TAIL_H

#include <stddef.h>

/* Stores lanes [0, n) of v at p, n < 8: at most one 4-, one 2- and one 1-float store. */
__attribute__((target("avx"), always_inline)) static inline void
kiln__avx2_store_head(float *p, __m256 v, size_t n) {
  __m128 q = _mm256_castps256_ps128(v);
  if (n >= 4) {
    _mm_storeu_ps(p, q);
    q = _mm256_extractf128_ps(v, 1);
    p += 4;
    n -= 4;
  }
  if (n >= 2) {
    _mm_storel_epi64((__m128i *)(void *)p, _mm_castps_si128(q));
    q = _mm_movehl_ps(q, q);
    p += 2;
    n -= 2;
  }
  if (n) _mm_store_ss(p, q);
}

#endif
