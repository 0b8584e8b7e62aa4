/* MatMulNBits with int8 activations (see nbits_q8.h). Per call A is quantized once into scratch
 * (per row and block: s_a, the int8 values in k order, their sum), then groups of 8 columns are
 * split over the pool; a tile of groups (their codes stay in cache) is walked by up to 4 rows at
 * a time that share each decode.
 *
 * x86 layout, made at load: per group of 8 columns and block, per 8 k, 32 bytes whose byte
 * 4 l + t holds column l's code for k0 + t (low nibble) and k0 + 4 + t (high nibble). One AND and
 * one shift give two vectors of 4 codes x 8 columns; A's 4 bytes k0..k0+3 broadcast to every
 * lane, VPMADDUBSW(u8 codes, s8 a) sums pairs into int16 exactly (2 * 15 * 128 < 32767) and
 * VPMADDWD(ones) the pairs into int32 (VNNI's VPDPBUSD does both). So lane l accumulates column
 * l's whole integer block sum, exact; less zp_l * sum(a_q) (VPMULLD, still exact), it is
 * converted to float once per block and FMAed with s_a * s_w[l]: one conversion per 8 columns
 * and no horizontal sum. (A first kernel kept one column per vector, its lanes partial sums:
 * 2x slower at 128 rows, and with zp * sum(a_q) in one lane the lanes cancelled after
 * conversion, errors of 1e-5 of sum |a w|.) */
#include "kernels/cpu/nbits_q8.h"

#include <math.h>

#include "core/threadpool.h"
#include "kernels/ref/nbits.h"

#define Q8_MR 4   /* rows of A per decode of the codes */
#define Q8_TILE 2 /* groups of 8 columns whose codes are reused across the row groups */

struct kiln__nbits_q8 {
  kiln__nbits_w w;
  kiln__range_fn fn; /* over column groups (x86) or columns (portable) */
  bool x86;
  size_t groups;     /* ceil(N / 8) */
  uint8_t *codes;    /* x86: [groups, nb, block / 8, 32] */
  float *scales;     /* x86: [groups, nb, 8] (0 past N) */
  int32_t *zps;      /* x86: [groups, nb, 8] */
};

typedef struct q8job {
  const kiln__nbits_q8 *q;
  const float *a;   /* A [m, K] */
  int8_t *aq;       /* [m, kp], quantized from a by quant_rows */
  float *sa;        /* [m, nb] */
  int32_t *asum;
  size_t m;
  float *y;
  const float *bias;
} q8job;

bool kiln__nbits_q8_ok(const kiln__nbits_w *w) { return w->block % 32 == 0; }

static size_t a_bytes(const kiln__nbits_w *w, size_t m) {
  return (m * w->nb * (sizeof(float) + sizeof(int32_t)) + 63) / 64 * 64;
}

size_t kiln__nbits_q8_scratch(const kiln__nbits_q8 *q, size_t m) {
  return a_bytes(&q->w, m) + m * q->w.kp;
}

/* ---- portable ------------------------------------------------------------------------------- */

static void q8_generic(void *arg, size_t c0, size_t c1) {
  const q8job *jb = arg;
  const kiln__nbits_w *w = &jb->q->w;
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

static void quant_a_generic(const kiln__nbits_w *w, const float *A, size_t m, int8_t *aq, float *sa,
                            int32_t *asum) {
  for (size_t r = 0; r < m; r++)
    kiln__nbits_q8_quant_row(A + r * w->k, w->k, w->block, aq + r * w->kp, sa + r * w->nb,
                             asum + r * w->nb);
}

/* ---- x86 ------------------------------------------------------------------------------------ */

#ifdef KILN__QGEMM_X86
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))

/* kiln__nbits_q8_quant_row's values (same max, same division, cvtps rounds to nearest even as
   lrintf does) and block sums, 32 k at a time. */
AVX2 static void quant_a_avx2(const kiln__nbits_w *w, const float *A, size_t m, int8_t *aq,
                              float *sa, int32_t *asum) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (size_t r = 0; r < m; r++)
    for (size_t j = 0; j < w->nb; j++) {
      const float *ab = A + r * w->k + j * w->block;
      size_t len = KILN__MIN(w->block, w->k - j * w->block), t = 0;
      __m256 mx = _mm256_setzero_ps();
      for (; t + 8 <= len; t += 8)
        mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(ab + t), absmask));
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_movehdup_ps(h));
      float mxs = _mm_cvtss_f32(h);
      for (; t < len; t++) mxs = fmaxf(mxs, fabsf(ab[t]));
      float s = mxs / 127.0f;
      __m256 vs = _mm256_set1_ps(s);
      __m256i sum = _mm256_setzero_si256();
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
        sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]),
                                                     _mm256_add_epi32(i[2], i[3])));
        __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        _mm256_storeu_si256((__m256i *)(aq + r * w->kp + j * w->block + g),
                            _mm256_permutevar8x32_epi32(q, perm)); /* back to k order */
      }
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
      sa[r * w->nb + j] = s;
      asum[r * w->nb + j] = _mm_cvtsi128_si32(s4);
    }
}

/* The column-group kernels, one per dot instruction (nbits_q8_gemv.inc). */
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

/* The interleaved copy of the codes, scales and zero points (layout at the top). */
static void interleave(kiln__nbits_q8 *q) {
  const kiln__nbits_w *w = &q->w;
  size_t steps = w->block / 8;
  for (size_t g = 0; g < q->groups; g++)
    for (size_t j = 0; j < w->nb; j++) {
      size_t gj = g * w->nb + j;
      for (size_t l = 0; l < 8; l++) {
        size_t c = g * 8 + l;
        q->scales[gj * 8 + l] = c < w->n ? w->scales[c * w->nb + j] : 0.0f;
        q->zps[gj * 8 + l] = c < w->n ? w->zps[c * w->nb + j] : 0;
      }
      for (size_t p = 0; p < steps; p++) {
        uint8_t *d = q->codes + (gj * steps + p) * 32;
        for (size_t l = 0; l < 8; l++) {
          size_t c = g * 8 + l;
          const uint8_t *src = c < w->n ? w->codes + (c * w->nb + j) * w->blob + p * 4 : NULL;
          for (size_t t = 0; t < 4; t++) /* src[t / 2]: k = 8p + t; src[2 + t / 2]: k + 4 */
            d[4 * l + t] = !src ? 0
                                : (uint8_t)((t % 2 ? src[t / 2] >> 4 : src[t / 2] & 15) |
                                            (t % 2 ? src[2 + t / 2] & 0xf0 : src[2 + t / 2] << 4));
        }
      }
    }
}
#endif

/* ---- driver --------------------------------------------------------------------------------- */

kiln_status kiln__nbits_q8_prepare(const kiln__nbits_w *w, kiln__qisa isa, kiln__nbits_q8 **out,
                                   kiln_error *err) {
  kiln__nbits_q8 *q = kiln__calloc(1, sizeof *q);
  if (!q) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing MatMulNBits (q8)");
  q->w = *w;
  q->fn = q8_generic;
#ifdef KILN__QGEMM_X86
  switch (isa) {
  case KILN__QISA_AVX2: q->fn = q8_avx2; break;
#ifdef KILN__QGEMM_HAVE_AVXVNNI
  case KILN__QISA_AVXVNNI: q->fn = q8_avxvnni; break;
#endif
  case KILN__QISA_AVX512VNNI:
    /* the ymm form needs AVX512VL, which every AVX512-VNNI CPU shipped so far has */
    q->fn = __builtin_cpu_supports("avx512vl") ? q8_avx512vnni : q8_avx2;
    break;
  default: break;
  }
  q->x86 = q->fn != q8_generic;
  if (q->x86) {
    q->groups = (w->n + 7) / 8;
    size_t gb = q->groups * w->nb;
    q->codes = kiln__malloc(gb * (w->block / 8) * 32);
    q->scales = kiln__malloc(gb * 8 * sizeof *q->scales);
    q->zps = kiln__malloc(gb * 8 * sizeof *q->zps);
    if (!q->codes || !q->scales || !q->zps) {
      kiln__nbits_q8_free(q);
      return kiln__fail(err, KILN_NO_MEMORY, "out of memory packing MatMulNBits weights (q8)");
    }
    interleave(q);
  }
#else
  (void)isa;
#endif
  *out = q;
  return KILN_OK;
}

void kiln__nbits_q8_free(kiln__nbits_q8 *q) {
  if (!q) return;
  kiln__free(q->codes);
  kiln__free(q->scales);
  kiln__free(q->zps);
  kiln__free(q);
}

/* kiln__range_fn over rows of A: quantizes them into the job's scratch. */
static void quant_rows(void *arg, size_t r0, size_t r1) {
  const q8job *jb = arg;
  const kiln__nbits_w *w = &jb->q->w;
  int8_t *aq = jb->aq + r0 * w->kp;
  float *sa = jb->sa + r0 * w->nb;
  int32_t *asum = jb->asum + r0 * w->nb;
#ifdef KILN__QGEMM_X86
  if (jb->q->x86) {
    quant_a_avx2(w, jb->a + r0 * w->k, r1 - r0, aq, sa, asum);
    return;
  }
#endif
  quant_a_generic(w, jb->a + r0 * w->k, r1 - r0, aq, sa, asum);
}

void kiln__nbits_q8_run(struct kiln__pool *pool, const kiln__nbits_q8 *q, const float *A, size_t m,
                        float *Y, const float *bias, void *scratch) {
  const kiln__nbits_w *w = &q->w;
  float *sa = scratch;
  int32_t *asum = (int32_t *)(sa + m * w->nb);
  int8_t *aq = (int8_t *)scratch + a_bytes(w, m);
  q8job jb = {.q = q, .a = A, .aq = aq, .sa = sa, .asum = asum, .m = m, .y = Y, .bias = bias};
  kiln__parallel_for(kiln__pool_for(pool, 8.0 * (double)m * (double)w->k), m, quant_rows, &jb);
  kiln__parallel_for(kiln__pool_for(pool, (double)m * (double)w->k * (double)w->n),
                     q->x86 ? q->groups : w->n, q->fn, &jb);
}
