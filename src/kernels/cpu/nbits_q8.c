/* MatMulNBits with int8 activations (see nbits_q8.h). Per call: A is quantized once into scratch
 * (per row and block: s_a, the int8 values, their sum), then columns are split over the pool.
 * Each column tile (TILE columns, their codes stay in cache) is walked by groups of up to 4 rows
 * that share one decode of the codes.
 *
 * x86 layout: per 32 k, the codes' 16 bytes give the 16 even k (low nibbles) then the 16 odd k
 * (high nibbles), so the quantizer stores A's 32 int8 in that order and a code vector is one
 * load, one shift, one AND. The zero point is subtracted in the codes (w = code - zp in
 * [-15, 15], per column, shared by the rows) and the sign moved onto A (VPSIGNB), so
 * VPMADDUBSW(|w| u8, +-a_q s8) sums pairs into int16 exactly (2 * 15 * 127 < 32767) and
 * VPMADDWD(ones) widens to int32; VNNI's VPDPBUSD does both. The integer block sum is the
 * reference's (sum a_q * code - zp * sum a_q), but each int32 lane is a true partial dot: with
 * zp * sum(a_q) subtracted from one lane instead, the lanes cancel in float after conversion
 * (errors of 1e-5 of sum |a w| measured, beyond float rounding). The lanes are converted to
 * float once per block and FMAed with s_a * s_w. */
#include "kernels/cpu/nbits_q8.h"

#include <math.h>

#include "core/threadpool.h"
#include "kernels/ref/nbits.h"

#define Q8_MR 4    /* rows of A per decode of the codes */
#define Q8_TILE 16 /* columns whose codes are reused across the row groups */

typedef struct q8job {
  const kiln__nbits_w *w;
  const int8_t *aq; /* [m, kp] (x86: each 32 k deinterleaved, even k first) */
  const float *sa;  /* [m, nb] */
  const int32_t *asum; /* [m, nb]: the portable kernel's sums of a_q per block */
  size_t m;
  float *y;
  const float *bias;
} q8job;

bool kiln__nbits_q8_ok(const kiln__nbits_w *w) { return w->block % 32 == 0; }

static size_t a_bytes(const kiln__nbits_w *w, size_t m) {
  return (m * w->nb * (sizeof(float) + sizeof(int32_t)) + 63) / 64 * 64;
}

size_t kiln__nbits_q8_scratch(const kiln__nbits_w *w, size_t m) {
  return a_bytes(w, m) + m * w->kp;
}

/* ---- portable ------------------------------------------------------------------------------- */

static void q8_generic(void *arg, size_t c0, size_t c1) {
  const q8job *jb = arg;
  const kiln__nbits_w *w = jb->w;
  for (size_t r = 0; r < jb->m; r++)
    for (size_t c = c0; c < c1; c++) {
      float acc = 0;
      for (size_t j = 0; j < w->nb; j++) {
        size_t b = c * w->nb + j, rj = r * w->nb + j;
        int32_t d = kiln__nbits_q8_block_dot(w->codes + b * w->blob, jb->aq + r * w->kp + j * w->block,
                                             w->block) -
                    (int32_t)w->zps[b] * jb->asum[rj];
        acc += (float)d * (jb->sa[rj] * w->scales[b]);
      }
      jb->y[r * w->n + c] = acc + (jb->bias ? jb->bias[c] : 0.0f);
    }
}

/* ---- x86 ------------------------------------------------------------------------------------ */

#ifdef KILN__QGEMM_X86
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))

/* kiln__nbits_q8_quant_row's values (same max, same division, cvtps rounds to nearest even as
   lrintf does), 32 k at a time stored deinterleaved; no block sums (the kernels take the zero
   point in the codes). */
AVX2 static void quant_row_avx2(const kiln__nbits_w *w, const float *a, int8_t *aq, float *sa) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  const __m256i deint = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0,
                                         2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (size_t j = 0; j < w->nb; j++) {
    const float *ab = a + j * w->block;
    size_t len = KILN__MIN(w->block, w->k - j * w->block), t = 0;
    __m256 mx = _mm256_setzero_ps();
    for (; t + 8 <= len; t += 8) mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(ab + t), absmask));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float m = _mm_cvtss_f32(h);
    for (; t < len; t++) m = fmaxf(m, fabsf(ab[t]));
    float s = m / 127.0f;
    __m256 vs = _mm256_set1_ps(s);
    for (size_t g = 0; g < w->block; g += 32) {
      float pad[32];
      const float *src = ab + g;
      if (g + 32 > len) { /* the block's tail past K: zeros */
        memset(pad, 0, sizeof pad);
        if (g < len) memcpy(pad, ab + g, (len - g) * sizeof *pad);
        src = pad;
      }
      __m256i i[4];
      for (int v = 0; v < 4; v++)
        i[v] = s > 0 ? _mm256_cvtps_epi32(_mm256_div_ps(_mm256_loadu_ps(src + 8 * v), vs))
                     : _mm256_setzero_si256();
      __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
      q = _mm256_permutevar8x32_epi32(q, perm);                                 /* k order */
      q = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(q, deint), 0xd8);        /* even, odd */
      _mm256_storeu_si256((__m256i *)(aq + j * w->block + g), q);
    }
    sa[j] = s;
  }
}

AVX2 static inline float hsum8(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

/* The column kernels, one per dot instruction (nbits_q8_gemv.inc). */
#define Q8_NAME q8_avx2
#define Q8_TARGET AVX2
#define Q8_DOT(acc, u, s)                                                                         \
  _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)))
#include "kernels/cpu/nbits_q8_gemv.inc"

#ifdef KILN__QGEMM_HAVE_AVXVNNI
#define Q8_NAME q8_avxvnni
#define Q8_TARGET __attribute__((target("avx2,fma,avxvnni")))
#define Q8_DOT(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s)
#include "kernels/cpu/nbits_q8_gemv.inc"
#endif

#define Q8_NAME q8_avx512vnni
#define Q8_TARGET __attribute__((target("avx2,fma,avx512f,avx512vl,avx512vnni")))
#define Q8_DOT(acc, u, s) _mm256_dpbusd_epi32(acc, u, s)
#include "kernels/cpu/nbits_q8_gemv.inc"
#endif

/* ---- driver --------------------------------------------------------------------------------- */

static kiln__range_fn pick(kiln__qisa isa) {
#ifdef KILN__QGEMM_X86
  switch (isa) {
  case KILN__QISA_AVX2: return q8_avx2;
#ifdef KILN__QGEMM_HAVE_AVXVNNI
  case KILN__QISA_AVXVNNI: return q8_avxvnni;
#endif
  case KILN__QISA_AVX512VNNI:
    /* the ymm form needs AVX512VL, which every AVX512-VNNI CPU shipped so far has */
    return __builtin_cpu_supports("avx512vl") ? q8_avx512vnni : q8_avx2;
  default: break;
  }
#endif
  (void)isa;
  return q8_generic;
}

void kiln__nbits_q8_run(struct kiln__pool *pool, kiln__qisa isa, const kiln__nbits_w *w,
                        const float *A, size_t m, float *Y, const float *bias, void *scratch) {
  float *sa = scratch;
  int32_t *asum = (int32_t *)(sa + m * w->nb);
  int8_t *aq = (int8_t *)scratch + a_bytes(w, m);
  kiln__range_fn fn = pick(isa);
  for (size_t r = 0; r < m; r++) {
#ifdef KILN__QGEMM_X86
    if (fn != q8_generic) {
      quant_row_avx2(w, A + r * w->k, aq + r * w->kp, sa + r * w->nb);
      continue;
    }
#endif
    kiln__nbits_q8_quant_row(A + r * w->k, w->k, w->block, aq + r * w->kp, sa + r * w->nb,
                             asum + r * w->nb);
  }
  q8job jb = {.w = w, .aq = aq, .sa = sa, .asum = asum, .m = m, .y = Y, .bias = bias};
  kiln__parallel_for(kiln__pool_for(pool, (double)m * (double)w->k * (double)w->n), w->n, fn, &jb);
}
