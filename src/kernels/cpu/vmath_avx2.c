/* The AVX2+FMA vector-math table: vmath_scalar.h's algorithms eight lanes at a time. Functions
   carry target attributes instead of the file being built with -mavx2, so the library still runs
   on CPUs without AVX2 (kiln__vmath_select() picks this table only where the CPU has it). Tails
   use masked loads and stores, so every element goes through the same vector code. */
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "kernels/cpu/vmath.h"
#include "kernels/cpu/avx2_tail.h"

#define KILN__FMA(a, b, c) fmaf(a, b, c)
#include "kernels/cpu/vmath_scalar.h"

#define AVX2 __attribute__((target("avx2,fma")))
#define S(v) _mm256_set1_ps(v)

/* Lanes [0, rem) set, for rem in [0, 8]. */
AVX2 static inline __m256i tail_mask(size_t rem) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* exp(xc) = p * 2^n for xc in [LO, HI]: n = round(xc / ln 2), p the polynomial of the remainder
   (shared by exp8 and exp8_nonpos, which differ in how they clamp and scale). */
AVX2 static inline __m256 exp_poly(__m256 xc, __m256 *n_out) {
  __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, S(KILN__LOG2E)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, S(KILN__LN2_HI), xc);
  r = _mm256_fnmadd_ps(n, S(KILN__LN2_LO), r);
  __m256 p = S(KILN__EXP_P0);
  p = _mm256_fmadd_ps(p, r, S(KILN__EXP_P1));
  p = _mm256_fmadd_ps(p, r, S(KILN__EXP_P2));
  p = _mm256_fmadd_ps(p, r, S(KILN__EXP_P3));
  p = _mm256_fmadd_ps(p, r, S(KILN__EXP_P4));
  p = _mm256_fmadd_ps(p, r, S(KILN__EXP_P5));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, S(1.0f)));
  *n_out = n;
  return p;
}

/* Lanes below LO compute exp(0) before the blend gives them 0: clamped to LO they made a
   subnormal product (a microcode assist per element: every key a -1e4 mask hides in Softmax). */
AVX2 static inline __m256 exp8(__m256 x) {
  __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  __m256 below = _mm256_cmp_ps(x, S(KILN__EXP_LO), _CMP_LT_OQ);
  __m256 xc = _mm256_min_ps(_mm256_max_ps(x, S(KILN__EXP_LO)), S(KILN__EXP_HI));
  xc = _mm256_andnot_ps(below, xc);
  __m256 n, p = exp_poly(xc, &n);
  /* 2^n as two factors, so n = 128 does not overflow the exponent field. */
  __m256i ni = _mm256_cvtps_epi32(n), h = _mm256_srai_epi32(ni, 1);
  __m256i b = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, b), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), b), 23));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), below);
  y = _mm256_blendv_ps(y, S(INFINITY), _mm256_cmp_ps(x, S(KILN__EXP_HI), _CMP_GT_OQ));
  return _mm256_blendv_ps(y, x, nan);
}

AVX2 static inline __m256 tanh8(__m256 x) {
  __m256 sign = _mm256_and_ps(x, S(-0.0f));
  __m256 a = _mm256_andnot_ps(S(-0.0f), x);
  __m256 z = _mm256_mul_ps(x, x), p = S(KILN__TANH_P0);
  p = _mm256_fmadd_ps(p, z, S(KILN__TANH_P1));
  p = _mm256_fmadd_ps(p, z, S(KILN__TANH_P2));
  p = _mm256_fmadd_ps(p, z, S(KILN__TANH_P3));
  p = _mm256_fmadd_ps(p, z, S(KILN__TANH_P4));
  __m256 small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
  __m256 e = exp8(_mm256_add_ps(a, a));
  __m256 big = _mm256_sub_ps(S(1.0f), _mm256_div_ps(S(2.0f), _mm256_add_ps(e, S(1.0f))));
  big = _mm256_blendv_ps(big, S(1.0f), _mm256_cmp_ps(a, S(KILN__TANH_BIG), _CMP_GE_OQ));
  big = _mm256_or_ps(big, sign);
  return _mm256_blendv_ps(big, small, _mm256_cmp_ps(a, S(KILN__TANH_SMALL), _CMP_LT_OQ));
}

AVX2 static inline __m256 sigmoid8(__m256 x) {
  __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(S(1.0f), _mm256_add_ps(S(1.0f), e));
}

AVX2 static inline __m256 erf8(__m256 x) {
  __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  __m256 c = _mm256_min_ps(_mm256_max_ps(x, S(-4.0f)), S(4.0f));
  __m256 z = _mm256_mul_ps(c, c), p = S(KILN__ERF_A13);
  p = _mm256_fmadd_ps(p, z, S(KILN__ERF_A11));
  p = _mm256_fmadd_ps(p, z, S(KILN__ERF_A9));
  p = _mm256_fmadd_ps(p, z, S(KILN__ERF_A7));
  p = _mm256_fmadd_ps(p, z, S(KILN__ERF_A5));
  p = _mm256_fmadd_ps(p, z, S(KILN__ERF_A3));
  p = _mm256_fmadd_ps(p, z, S(KILN__ERF_A1));
  __m256 q = S(KILN__ERF_B8);
  q = _mm256_fmadd_ps(q, z, S(KILN__ERF_B6));
  q = _mm256_fmadd_ps(q, z, S(KILN__ERF_B4));
  q = _mm256_fmadd_ps(q, z, S(KILN__ERF_B2));
  q = _mm256_fmadd_ps(q, z, S(KILN__ERF_B0));
  __m256 r = _mm256_div_ps(_mm256_mul_ps(c, p), q);
  r = _mm256_min_ps(_mm256_max_ps(r, S(-1.0f)), S(1.0f));
  return _mm256_blendv_ps(r, x, nan);
}

AVX2 static inline __m256 gelu8(__m256 x) {
  __m256 e = erf8(_mm256_mul_ps(x, S(KILN__SQRT1_2)));
  return _mm256_mul_ps(_mm256_mul_ps(S(0.5f), x), _mm256_add_ps(S(1.0f), e));
}

AVX2 static inline __m256 gelu_tanh8(__m256 x) {
  __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(S(KILN__GELU_C), x), x);
  __m256 u = _mm256_mul_ps(S(KILN__GELU_K), _mm256_fmadd_ps(x3, x, x));
  return _mm256_mul_ps(_mm256_mul_ps(S(0.5f), x), _mm256_add_ps(S(1.0f), tanh8(u)));
}

AVX2 static inline __m256 relu8(__m256 x) {
  /* max(x, 0) would turn NaN into 0: keep x where it is not below zero. */
  return _mm256_blendv_ps(x, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
}

#define UNARY(name, f)                                                        \
  AVX2 static void name(const float *x, float *y, size_t n) {                 \
    size_t i = 0;                                                             \
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, f(_mm256_loadu_ps(x + i))); \
    if (i < n) {                                                              \
      __m256i m = tail_mask(n - i);                                           \
      kiln__avx2_store_head(y + i, f(_mm256_maskload_ps(x + i, m)), n - i);   \
    }                                                                         \
  }
UNARY(v_exp, exp8)
UNARY(v_tanh, tanh8)
UNARY(v_sigmoid, sigmoid8)
UNARY(v_erf, erf8)
UNARY(v_gelu, gelu8)
UNARY(v_gelu_tanh, gelu_tanh8)
UNARY(v_relu, relu8)
#undef UNARY

/* A broadcast operand is loaded once; the masked tail reads only the lanes it needs. */
#define BINARY(name, f)                                                                      \
  AVX2 static void name(const float *a, size_t sa, const float *b, size_t sb, float *y, size_t n) { \
    __m256 va = _mm256_broadcast_ss(a), vb = _mm256_broadcast_ss(b);                         \
    size_t i = 0;                                                                            \
    for (; i + 8 <= n; i += 8) {                                                             \
      if (sa) va = _mm256_loadu_ps(a + i);                                                   \
      if (sb) vb = _mm256_loadu_ps(b + i);                                                   \
      _mm256_storeu_ps(y + i, f(va, vb));                                                    \
    }                                                                                        \
    if (i < n) {                                                                             \
      __m256i m = tail_mask(n - i);                                                          \
      if (sa) va = _mm256_maskload_ps(a + i, m);                                             \
      if (sb) vb = _mm256_maskload_ps(b + i, m);                                             \
      kiln__avx2_store_head(y + i, f(va, vb), n - i);                                        \
    }                                                                                        \
  }
BINARY(v_add, _mm256_add_ps)
BINARY(v_sub, _mm256_sub_ps)
BINARY(v_mul, _mm256_mul_ps)
BINARY(v_div, _mm256_div_ps)
#undef BINARY

AVX2 static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

AVX2 static inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/* exp8 for x <= 0 (a score minus its row's max): nothing overflows and n >= -126, so 2^n is one
   factor, and max(LO, x) passes NaN through to the result without the blend. Lanes below LO (the
   keys a padding mask of -1e4 hides: half of them in BERT's attention) compute exp(0) and are
   zeroed: computed at LO they made a subnormal product per element, and those microcode assists
   made minilm_l12's masked Attention 1.4x slower than unmasked (bench/RESULTS.md). */
AVX2 static inline __m256 exp8_nonpos(__m256 x) {
  __m256 below = _mm256_cmp_ps(x, S(KILN__EXP_LO), _CMP_LT_OQ);
  __m256 xc = _mm256_andnot_ps(below, _mm256_max_ps(S(KILN__EXP_LO), x));
  __m256 n, p = exp_poly(xc, &n);
  __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(e, 23)));
  return _mm256_andnot_ps(below, y);
}

/* The largest of init and x[0:n]. */
AVX2 static inline float row_max(const float *x, size_t n, float init) {
  __m256 vm = S(init);
  size_t i = 0, rem = n % 8, body = n - rem;
  for (; i < body; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
  if (rem) {
    __m256i tm = tail_mask(rem);
    vm = _mm256_max_ps(vm, _mm256_blendv_ps(S(-INFINITY), _mm256_maskload_ps(x + body, tm),
                                            _mm256_castsi256_ps(tm)));
  }
  return hmax(vm);
}

/* y = exp(x - m) and its sum; nonpos picks exp8_nonpos (the caller knows x - m <= 0). y may be
   x. Inlined with a constant nonpos, so each caller gets one loop. */
AVX2 static inline float exp_sub_sum(const float *x, float *y, size_t n, float m, bool nonpos) {
  size_t i = 0, rem = n % 8, body = n - rem;
  __m256 mv = S(m), s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
#define EXP8(v) (nonpos ? exp8_nonpos(v) : exp8(v))
  for (; i + 16 <= body; i += 16) {
    __m256 e0 = EXP8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
    __m256 e1 = EXP8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mv));
    _mm256_storeu_ps(y + i, e0);
    _mm256_storeu_ps(y + i + 8, e1);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
  }
  for (; i < body; i += 8) {
    __m256 e = EXP8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
    _mm256_storeu_ps(y + i, e);
    s0 = _mm256_add_ps(s0, e);
  }
  if (rem) {
    __m256i tm = tail_mask(rem);
    __m256 e = EXP8(_mm256_sub_ps(_mm256_maskload_ps(x + body, tm), mv));
    e = _mm256_and_ps(e, _mm256_castsi256_ps(tm));
    kiln__avx2_store_head(y + body, e, rem);
    s0 = _mm256_add_ps(s0, e);
  }
#undef EXP8
  return hsum(_mm256_add_ps(s0, s1));
}

AVX2 static void softmax_row(const float *x, float *y, size_t n) {
  float m = row_max(x, n, -INFINITY);
  if (m == -INFINITY) m = 0; /* an all -inf row gives NaN, as the reference does */
  __m256 r = S(1.0f / exp_sub_sum(x, y, n, m, false));
  size_t i, rem = n % 8, body = n - rem;
  for (i = 0; i < body; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), r));
  if (rem) {
    __m256i tm = tail_mask(rem);
    kiln__avx2_store_head(y + body, _mm256_mul_ps(_mm256_maskload_ps(y + body, tm), r), rem);
  }
}

AVX2 static float softmax_step(float *x, size_t n, float *run_max) {
  float m = row_max(x, n, *run_max);
  *run_max = m;
  if (m == -INFINITY) {
    size_t rem = n % 8, body = n - rem;
    for (size_t i = 0; i < body; i += 8) _mm256_storeu_ps(x + i, _mm256_setzero_ps());
    if (rem) kiln__avx2_store_head(x + body, _mm256_setzero_ps(), rem);
    return 0.0f;
  }
  return exp_sub_sum(x, x, n, m, true);
}

AVX2 static void layernorm_row(const float *x, float *y, size_t n, const float *scale,
                               const float *bias, float eps, float *mean, float *inv) {
  size_t i, rem = n % 8, body = n - rem;
  __m256i tm = tail_mask(rem);
  __m256 keep = _mm256_castsi256_ps(tm);
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (i = 0; i + 16 <= body; i += 16) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
  }
  for (; i < body; i += 8) s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
  if (rem) s1 = _mm256_add_ps(s1, _mm256_maskload_ps(x + body, tm));
  float mu = hsum(_mm256_add_ps(s0, s1)) / (float)n;
  __m256 mv = S(mu);
  s0 = s1 = _mm256_setzero_ps();
  for (i = 0; i + 16 <= body; i += 16) {
    __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), mv);
    __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mv);
    s0 = _mm256_fmadd_ps(d0, d0, s0);
    s1 = _mm256_fmadd_ps(d1, d1, s1);
  }
  for (; i < body; i += 8) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), mv);
    s0 = _mm256_fmadd_ps(d, d, s0);
  }
  if (rem) {
    __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(x + body, tm), mv), keep);
    s1 = _mm256_fmadd_ps(d, d, s1);
  }
  float iv = 1.0f / sqrtf(hsum(_mm256_add_ps(s0, s1)) / (float)n + eps);
  __m256 ivv = S(iv);
  for (i = 0; i < body; i += 8) {
    __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv), ivv);
    __m256 o = bias ? _mm256_fmadd_ps(d, _mm256_loadu_ps(scale + i), _mm256_loadu_ps(bias + i))
                    : _mm256_mul_ps(d, _mm256_loadu_ps(scale + i));
    _mm256_storeu_ps(y + i, o);
  }
  if (rem) {
    __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(x + body, tm), mv), ivv);
    __m256 o = bias ? _mm256_fmadd_ps(d, _mm256_maskload_ps(scale + body, tm),
                                      _mm256_maskload_ps(bias + body, tm))
                    : _mm256_mul_ps(d, _mm256_maskload_ps(scale + body, tm));
    kiln__avx2_store_head(y + body, o, rem);
  }
  *mean = mu;
  *inv = iv;
}

const kiln__vmath kiln__vmath_avx2 = {
    .isa = "avx2",
    .exp = v_exp,
    .tanh = v_tanh,
    .sigmoid = v_sigmoid,
    .erf = v_erf,
    .gelu = v_gelu,
    .gelu_tanh = v_gelu_tanh,
    .relu = v_relu,
    .binary = {v_add, v_sub, v_mul, v_div},
    .softmax_row = softmax_row,
    .softmax_step = softmax_step,
    .layernorm_row = layernorm_row,
};

/* ---- AVX-512: the same table with erf, GELU (exact form) and softmax_step 16 lanes wide -------
   The operations of erf8 and gelu8 in the same order on 16 lanes, NaN kept through a mask, so
   every result equals the AVX2 table's. GELU is the one of these that takes time in a model (the
   FFN of an encoder, [128, 4 x hidden] per layer: 9% of bert_tiny int8 at 8 lanes). */
#define AVX512 __attribute__((target("avx512f,avx2,fma")))
#define S16(v) _mm512_set1_ps(v)

AVX512 static inline __m512 erf16(__m512 x) {
  __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  __m512 c = _mm512_min_ps(_mm512_max_ps(x, S16(-4.0f)), S16(4.0f));
  __m512 z = _mm512_mul_ps(c, c), p = S16(KILN__ERF_A13);
  p = _mm512_fmadd_ps(p, z, S16(KILN__ERF_A11));
  p = _mm512_fmadd_ps(p, z, S16(KILN__ERF_A9));
  p = _mm512_fmadd_ps(p, z, S16(KILN__ERF_A7));
  p = _mm512_fmadd_ps(p, z, S16(KILN__ERF_A5));
  p = _mm512_fmadd_ps(p, z, S16(KILN__ERF_A3));
  p = _mm512_fmadd_ps(p, z, S16(KILN__ERF_A1));
  __m512 q = S16(KILN__ERF_B8);
  q = _mm512_fmadd_ps(q, z, S16(KILN__ERF_B6));
  q = _mm512_fmadd_ps(q, z, S16(KILN__ERF_B4));
  q = _mm512_fmadd_ps(q, z, S16(KILN__ERF_B2));
  q = _mm512_fmadd_ps(q, z, S16(KILN__ERF_B0));
  __m512 r = _mm512_div_ps(_mm512_mul_ps(c, p), q);
  r = _mm512_min_ps(_mm512_max_ps(r, S16(-1.0f)), S16(1.0f));
  return _mm512_mask_mov_ps(r, nan, x);
}

AVX512 static inline __m512 gelu16(__m512 x) {
  __m512 e = erf16(_mm512_mul_ps(x, S16(KILN__SQRT1_2)));
  return _mm512_mul_ps(_mm512_mul_ps(S16(0.5f), x), _mm512_add_ps(S16(1.0f), e));
}

#define UNARY16(name, f)                                                                           \
  AVX512 static void name(const float *x, float *y, size_t n) {                                    \
    size_t i = 0;                                                                                  \
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, f(_mm512_loadu_ps(x + i)));               \
    if (i < n) {                                                                                   \
      __mmask16 m = (__mmask16)((1u << (n - i)) - 1);                                              \
      _mm512_mask_storeu_ps(y + i, m, f(_mm512_maskz_loadu_ps(m, x + i)));                         \
    }                                                                                              \
  }
UNARY16(v_erf16, erf16)
UNARY16(v_gelu16, gelu16)

/* softmax_step on 16 lanes: exp8_nonpos's operations (zeroed below LO, no subnormal products);
   the block's sum adds in another order than the AVX2 table's (fused Attention: 2x fewer
   exponentials per instruction in its score blocks). */
AVX512 static inline __m512 exp16_nonpos(__m512 x) {
  __mmask16 keep = _mm512_cmp_ps_mask(x, S16(KILN__EXP_LO), _CMP_NLT_UQ); /* not below LO */
  __m512 xc = _mm512_maskz_mov_ps(keep, _mm512_max_ps(S16(KILN__EXP_LO), x));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, S16(KILN__LOG2E)),
                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, S16(KILN__LN2_HI), xc);
  r = _mm512_fnmadd_ps(n, S16(KILN__LN2_LO), r);
  __m512 p = S16(KILN__EXP_P0);
  p = _mm512_fmadd_ps(p, r, S16(KILN__EXP_P1));
  p = _mm512_fmadd_ps(p, r, S16(KILN__EXP_P2));
  p = _mm512_fmadd_ps(p, r, S16(KILN__EXP_P3));
  p = _mm512_fmadd_ps(p, r, S16(KILN__EXP_P4));
  p = _mm512_fmadd_ps(p, r, S16(KILN__EXP_P5));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, S16(1.0f)));
  __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
  __m512 y = _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(e, 23)));
  return _mm512_maskz_mov_ps(keep, y);
}

AVX512 static float softmax_step16(float *x, size_t n, float *run_max) {
  size_t i = 0, rem = n % 16, body = n - rem;
  const __mmask16 tm = (__mmask16)((1u << rem) - 1);
  __m512 vm = S16(*run_max);
  for (; i < body; i += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + i));
  if (rem) vm = _mm512_mask_max_ps(vm, tm, vm, _mm512_maskz_loadu_ps(tm, x + body));
  float m = _mm512_reduce_max_ps(vm);
  *run_max = m;
  if (m == -INFINITY) {
    for (i = 0; i < body; i += 16) _mm512_storeu_ps(x + i, _mm512_setzero_ps());
    if (rem) _mm512_mask_storeu_ps(x + body, tm, _mm512_setzero_ps());
    return 0.0f;
  }
  __m512 mv = S16(m), s0 = _mm512_setzero_ps();
  for (i = 0; i < body; i += 16) {
    __m512 e = exp16_nonpos(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
    _mm512_storeu_ps(x + i, e);
    s0 = _mm512_add_ps(s0, e);
  }
  if (rem) {
    __m512 e = exp16_nonpos(_mm512_sub_ps(_mm512_maskz_loadu_ps(tm, x + body), mv));
    e = _mm512_maskz_mov_ps(tm, e);
    _mm512_mask_storeu_ps(x + body, tm, e);
    s0 = _mm512_add_ps(s0, e);
  }
  return _mm512_reduce_add_ps(s0);
}

const kiln__vmath kiln__vmath_avx512 = {
    .isa = "avx512",
    .exp = v_exp,
    .tanh = v_tanh,
    .sigmoid = v_sigmoid,
    .erf = v_erf16,
    .gelu = v_gelu16,
    .gelu_tanh = v_gelu_tanh,
    .relu = v_relu,
    .binary = {v_add, v_sub, v_mul, v_div},
    .softmax_row = softmax_row,
    .softmax_step = softmax_step16,
    .layernorm_row = layernorm_row,
};
#else
typedef int kiln__vmath_avx2_unused; /* ISO C forbids an empty translation unit */
#endif
