/* VNNI integer microkernels: the AVX2 6 x 16 tile (qgemm_avx2.c) with its k pairs of int16 and
 * VPMADDWD + VPADDD replaced by k quads of bytes and one VPDPBUSD (u8 x s8, four products summed
 * into int32, exact: 4 * 255 * 128 < 2^31). AVX-VNNI uses ymm (same 6 x 16 tile); AVX512-VNNI
 * uses zmm, 6 x 32. The packing (qgemm.c) stores A as uint8 and B as int8 for these formats.
 *
 * Selected by cpuid; the development machine has neither extension, so these are compiled and
 * reviewed but not executed in its tests (they run on a machine with VNNI via the same test). */
#include "kernels/cpu/qgemm.h"

#ifdef KILN__QGEMM_X86
#include <immintrin.h>

#define MR 6

static inline int32_t ld32(const uint8_t *p) {
  int32_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

#ifdef KILN__QGEMM_HAVE_AVXVNNI
#define TARGET_AVXVNNI __attribute__((target("avx2,fma,avxvnni")))

TARGET_AVXVNNI void kiln__qgemm_uk_6x16__avxvnni(size_t groups, const void *restrict a,
                                                 const void *restrict b, int32_t *restrict c,
                                                 size_t ldc, bool accumulate) {
  const uint8_t *A = a, *B = b;
  __m256i acc[MR][2];
  for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  for (size_t g = 0; g < groups; g++) {
    __m256i b0 = _mm256_loadu_si256((const __m256i *)B);
    __m256i b1 = _mm256_loadu_si256((const __m256i *)(B + 32));
    for (int i = 0; i < MR; i++) {
      __m256i av = _mm256_set1_epi32(ld32(A + 4 * i));
      acc[i][0] = _mm256_dpbusd_avx_epi32(acc[i][0], av, b0);
      acc[i][1] = _mm256_dpbusd_avx_epi32(acc[i][1], av, b1);
    }
    A += 4 * MR;
    B += 4 * 16;
  }
  for (int i = 0; i < MR; i++)
    for (int h = 0; h < 2; h++) {
      __m256i *p = (__m256i *)(c + i * ldc + 8 * h);
      __m256i v = accumulate ? _mm256_add_epi32(acc[i][h], _mm256_loadu_si256(p)) : acc[i][h];
      _mm256_storeu_si256(p, v);
    }
}
#endif

#define TARGET_512 __attribute__((target("avx2,fma,avx512f,avx512vnni")))

TARGET_512 void kiln__qgemm_uk_6x32__avx512vnni(size_t groups, const void *restrict a,
                                                const void *restrict b, int32_t *restrict c,
                                                size_t ldc, bool accumulate) {
  const uint8_t *A = a, *B = b;
  __m512i acc[MR][2];
  for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
  for (size_t g = 0; g < groups; g++) {
    __m512i b0 = _mm512_loadu_si512(B), b1 = _mm512_loadu_si512(B + 64);
    for (int i = 0; i < MR; i++) {
      __m512i av = _mm512_set1_epi32(ld32(A + 4 * i));
      acc[i][0] = _mm512_dpbusd_epi32(acc[i][0], av, b0);
      acc[i][1] = _mm512_dpbusd_epi32(acc[i][1], av, b1);
    }
    A += 4 * MR;
    B += 4 * 32;
  }
  for (int i = 0; i < MR; i++)
    for (int h = 0; h < 2; h++) {
      int32_t *p = c + i * ldc + 16 * h;
      __m512i v = accumulate ? _mm512_add_epi32(acc[i][h], _mm512_loadu_si512(p)) : acc[i][h];
      _mm512_storeu_si512(p, v);
    }
}

#endif
