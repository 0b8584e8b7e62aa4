/* Cast on the cpu backend: float16 <-> float32 with F16C (VCVTPH2PS exact, VCVTPS2PH rounding to
 * nearest even), bfloat16 -> float32 by a shift and int32 -> float32 (int8-dynamic graphs' Cast
 * after MatMulInteger: 17 us a node on the reference, 19% of bert_tiny int8-dynamic), eight values
 * per instruction; every other pair of types runs the reference kernel. The results are
 * the reference's bit for bit, NaNs included: it writes a float32 NaN as the float16 NaN 0x7e00
 * with the sign (VCVTPS2PH keeps payload bits: those lanes are rewritten), and it quiets a 16-bit
 * NaN on the way to float32 (its double round trip), as VCVTPH2PS does and as the bfloat16 shift
 * is made to. */
#include <math.h>

#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/sgemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define KILN__CAST_X86 1
#define TARGET __attribute__((target("avx2,f16c")))
#endif

#define GRAIN ((size_t)16384) /* values per task */

typedef enum cast_kind {
  CAST_REF,
  CAST_F16_F32,
  CAST_F32_F16,
  CAST_BF16_F32,
  CAST_I32_F32 /* int8-dynamic's MatMulInteger output: VCVTDQ2PS rounds to nearest even, as the
                  reference's (float)(int64) of the same value */
} cast_kind;

typedef struct cast_job {
  cast_kind kind;
  const void *x;
  void *y;
  size_t n;
} cast_job;

static bool cast_supports(const kiln__node *n, const kiln__graph *g) {
  (void)g;
  return n->n_in == 1 && kiln__attr_find(n, "to");
}

/* The state is whether the fast path runs: the session's ISA (KILN_ISA) is not the portable one
   and the CPU has F16C (every AVX2 CPU does). Nothing to release. */
static kiln_status cast_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                kiln_error *err) {
  (void)n, (void)g;
  kiln__isa isa;
  kiln_status st = kiln__isa_select(&isa, err);
  bool ok = false;
#ifdef KILN__CAST_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  ok = st == KILN_OK && isa != KILN__ISA_GENERIC && __get_cpuid(1, &a, &b, &c, &d) &&
       ((c >> 29) & 1u);
#endif
  *state = ok ? (void *)1 : NULL;
  return st;
}

#ifdef KILN__CAST_X86
/* A 16-bit float widened as the reference does: exact, a NaN quieted (its double round trip). */
static float widen(float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) u |= 0x00400000u;
  memcpy(&v, &u, sizeof v);
  return v;
}

TARGET static void range(void *arg, size_t t0, size_t t1) {
  const cast_job *j = arg;
  size_t i = t0 * GRAIN, end = KILN__MIN(t1 * GRAIN, j->n);
  const uint16_t *h = j->x;
  const float *f = j->x;
  uint16_t *yh = j->y;
  float *yf = j->y;
  const __m256i exp_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  const __m256i quiet = _mm256_set1_epi32(0x00400000);
  for (; i + 8 <= end; i += 8) {
    if (j->kind == CAST_I32_F32) {
      _mm256_storeu_ps(yf + i, _mm256_cvtepi32_ps(
                                   _mm256_loadu_si256((const __m256i *)((const int32_t *)j->x + i))));
    } else if (j->kind == CAST_F16_F32) {
      _mm256_storeu_ps(yf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    } else if (j->kind == CAST_BF16_F32) {
      __m256i v = _mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + i))), 16);
      __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(v, exp_mask), inf);
      v = _mm256_or_si256(v, _mm256_and_si256(nan, quiet));
      _mm256_storeu_si256((__m256i *)(yf + i), v);
    } else {
      __m256 v = _mm256_loadu_ps(f + i);
      _mm_storeu_si128((__m128i *)(yh + i),
                       _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      int nan = _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      for (int k = 0; nan; k++, nan >>= 1)
        if (nan & 1) yh[i + (size_t)k] = (uint16_t)((signbit(f[i + (size_t)k]) ? 0x8000 : 0) | 0x7e00);
    }
  }
  for (; i < end; i++) { /* the reference's conversions, one value */
    if (j->kind == CAST_I32_F32) yf[i] = (float)(int64_t)((const int32_t *)j->x)[i];
    else if (j->kind == CAST_F16_F32) yf[i] = widen(kiln__f16_to_f32(h[i]));
    else if (j->kind == CAST_BF16_F32) yf[i] = widen(kiln__bf16_to_f32(h[i]));
    else if (isnan(f[i])) yh[i] = (uint16_t)((signbit(f[i]) ? 0x8000 : 0) | 0x7e00);
    else yh[i] = kiln__f32_to_f16(f[i]);
  }
}
#endif

static kiln_status cast_execute(kiln__kctx *c, void *state) {
  const kiln__attr *to = kiln__attr_find(c->node, "to");
  kiln_dtype from = c->in[0]->dtype, dst = to ? (kiln_dtype)to->i : KILN_DTYPE_UNDEFINED;
  cast_kind k = CAST_REF;
  if (from == KILN_DTYPE_FLOAT16 && dst == KILN_DTYPE_FLOAT) k = CAST_F16_F32;
  else if (from == KILN_DTYPE_BFLOAT16 && dst == KILN_DTYPE_FLOAT) k = CAST_BF16_F32;
  else if (from == KILN_DTYPE_FLOAT && dst == KILN_DTYPE_FLOAT16) k = CAST_F32_F16;
  else if (from == KILN_DTYPE_INT32 && dst == KILN_DTYPE_FLOAT) k = CAST_I32_F32;
  if (!state || k == CAST_REF || c->out[0]->dtype != dst) return c->node->op->run(c);
#ifdef KILN__CAST_X86
  cast_job j = {k, c->in[0]->data, c->out[0]->data, kiln_tensor_count(c->in[0])};
  kiln__parallel_for(kiln__pool_for(c->pool, (double)j.n), (j.n + GRAIN - 1) / GRAIN, range, &j);
  return KILN_OK;
#else
  return c->node->op->run(c);
#endif
}

const kiln__cpu_kernel kiln__cpu_cast_kernels[] = {
    {"Cast", cast_supports, cast_prepare, NULL, cast_execute, NULL, NULL},
    {0},
};
