/* The bfloat16 GEMM (see bgemm.h). A call converts A's rows to bfloat16 pairs in scratch (one
 * VCVTNE2PS2BF16 per 32 values), then runs 8 x 32 register tiles: per pair of k, two 64-byte B
 * vectors and 8 broadcast A pairs for 16 VDPBF16PS into 16 named accumulators (gcc copies an
 * array of accumulators at every step, qgemm_vnni.c). Work items are row blocks x column blocks;
 * inside one, each B panel (32 columns, all of k) meets every row panel while it is in L1. */
#include "kernels/cpu/bgemm.h"

#include <stdlib.h>

#include "core/threadpool.h"

#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 10)
#define KILN__BGEMM_X86 1
#include <cpuid.h>
#include <immintrin.h>
#define TARGET __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

#define MR 8
#define NR 32
#define ROWS_PER_ITEM 64  /* rows of a work item (8 panels) */
#define COLS_PER_ITEM 128 /* columns of a work item (4 panels) */

static size_t pairs(size_t k) { return (k + 1) / 2; }

bool kiln__bgemm_wanted(void) {
  const char *e = getenv("KILN_BF16");
  if (!e || strcmp(e, "1") != 0) return false;
#ifdef KILN__BGEMM_X86
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl"))
    return false;
  unsigned a = 0, b = 0, c = 0, d = 0; /* AVX512_BF16: CPUID.(EAX=7, ECX=1):EAX bit 5 */
  return __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 5) & 1u);
#else
  return false;
#endif
}

static uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float at(const float *b, size_t r, size_t c, size_t ldb, bool trans_b) {
  return trans_b ? b[c * ldb + r] : b[r * ldb + c];
}

bool kiln__bgemm_exact(const float *b, size_t k, size_t n, size_t ldb, bool trans_b) {
  for (size_t r = 0; r < k; r++)
    for (size_t c = 0; c < n; c++)
      if (bits_of(at(b, r, c, ldb, trans_b)) & 0xffffu) return false;
  return true;
}

kiln_status kiln__bgemm_pack_b(const float *b, size_t k, size_t n, size_t ldb, bool trans_b,
                               kiln__bgemm_packed *out, kiln_error *err) {
  size_t kp = pairs(k), panels = (n + NR - 1) / NR, words;
  out->k = k, out->n = n;
  if (!kiln__mul_ok(kp, panels * NR, &words) || words > SIZE_MAX / 8 ||
      !(out->data = kiln__aligned_alloc(words * sizeof(uint32_t))))
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory packing a bfloat16 weight");
  for (size_t p = 0; p < panels; p++)
    for (size_t g = 0; g < kp; g++)
      for (size_t j = 0; j < NR; j++) {
        size_t c = p * NR + j, r = 2 * g;
        uint32_t lo = c < n ? bits_of(at(b, r, c, ldb, trans_b)) >> 16 : 0;
        uint32_t hi = c < n && r + 1 < k ? bits_of(at(b, r + 1, c, ldb, trans_b)) >> 16 : 0;
        out->data[(p * kp + g) * NR + j] = lo | hi << 16;
      }
  return KILN_OK;
}

void kiln__bgemm_packed_free(kiln__bgemm_packed *p) {
  kiln__aligned_free(p->data);
  p->data = NULL;
}

size_t kiln__bgemm_scratch(size_t m, size_t k) {
  return (m * pairs(k) + 16) * sizeof(uint32_t) + KILN__ALIGN;
}

#ifdef KILN__BGEMM_X86
typedef struct bjob {
  size_t m, k, kp, n, lda, ldc;
  const float *a;
  uint32_t *abf; /* m rows of kp pairs */
  const kiln__bgemm_packed *b;
  float *c;
  const kiln__epilogue *ep;
  size_t items_n; /* column items */
} bjob;

/* Rows [r0, r1) of A to bfloat16 pairs (round to nearest even; an odd k's last pair has a 0). */
TARGET static void convert_rows(void *arg, size_t r0, size_t r1) {
  const bjob *j = arg;
  for (size_t r = r0; r < r1; r++) {
    const float *x = j->a + r * j->lda;
    uint32_t *d = j->abf + r * j->kp;
    for (size_t p = 0; p < j->k; p += 32) {
      size_t left = j->k - p;
      __mmask16 m0 = (__mmask16)(left >= 16 ? 0xffffu : (1u << left) - 1);
      __mmask16 m1 = (__mmask16)(left >= 32 ? 0xffffu : left > 16 ? (1u << (left - 16)) - 1 : 0);
      __m512 lo = _mm512_maskz_loadu_ps(m0, x + p), hi = _mm512_maskz_loadu_ps(m1, x + p + 16);
      __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo); /* lo's 16 values, then hi's */
      size_t words = KILN__MIN((size_t)16, j->kp - p / 2);
      _mm512_mask_storeu_epi32(d + p / 2, (__mmask16)((1u << words) - 1), v);
    }
  }
}

/* The epilogue of one 16-column half of a tile row. */
TARGET static inline void put(const bjob *j, size_t i, size_t col, __m512 v, __mmask16 m) {
  const kiln__epilogue *ep = j->ep;
  if (ep->bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, ep->bias + col));
  if (ep->residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, ep->residual + i * ep->ldr + col));
  if (ep->act == KILN__ACT_RELU) v = _mm512_max_ps(v, _mm512_setzero_ps());
  else if (ep->act == KILN__ACT_CLIP)
    v = _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(ep->lo)), _mm512_set1_ps(ep->hi));
  _mm512_mask_storeu_ps(j->c + i * j->ldc + col, m, v);
}

/* Rows i0 .. i0 + rows (<= 8) by the 32 columns of panel p (cols of them real). */
TARGET static void tile(const bjob *j, size_t i0, size_t rows, size_t p, size_t cols) {
  const uint32_t *B = j->b->data + p * j->kp * NR;
  const uint32_t *a[MR];
  for (size_t r = 0; r < MR; r++) a[r] = j->abf + (i0 + KILN__MIN(r, rows - 1)) * j->kp;
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
  __m512 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00;
  __m512 c70 = c00, c71 = c00;
  for (size_t g = 0; g < j->kp; g++, B += NR) {
    const __m512bh b0 = (__m512bh)_mm512_load_si512(B), b1 = (__m512bh)_mm512_load_si512(B + 16);
#define ROW(r)                                                                                     \
  {                                                                                                \
    const __m512bh av = (__m512bh)_mm512_set1_epi32((int)a[r][g]);                                 \
    c##r##0 = _mm512_dpbf16_ps(c##r##0, av, b0);                                                   \
    c##r##1 = _mm512_dpbf16_ps(c##r##1, av, b1);                                                   \
  }
    ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5) ROW(6) ROW(7)
#undef ROW
  }
  const __m512 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                             {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
  __mmask16 m0 = (__mmask16)(cols >= 16 ? 0xffffu : (1u << cols) - 1);
  __mmask16 m1 = (__mmask16)(cols >= 32 ? 0xffffu : cols > 16 ? (1u << (cols - 16)) - 1 : 0);
  for (size_t r = 0; r < rows; r++) {
    put(j, i0 + r, p * NR, acc[r][0], m0);
    if (m1) put(j, i0 + r, p * NR + 16, acc[r][1], m1);
  }
}

TARGET static void items(void *arg, size_t t0, size_t t1) {
  const bjob *j = arg;
  for (size_t t = t0; t < t1; t++) {
    size_t r0 = t / j->items_n * ROWS_PER_ITEM, c0 = t % j->items_n * COLS_PER_ITEM;
    size_t r1 = KILN__MIN(r0 + ROWS_PER_ITEM, j->m), c1 = KILN__MIN(c0 + COLS_PER_ITEM, j->n);
    for (size_t p = c0 / NR; p * NR < c1; p++) /* a B panel meets every row panel in L1 */
      for (size_t i = r0; i < r1; i += MR)
        tile(j, i, KILN__MIN((size_t)MR, r1 - i), p, KILN__MIN((size_t)NR, j->n - p * NR));
  }
}
#endif

void kiln__bgemm_run(struct kiln__pool *pool, size_t m, const float *a, size_t lda,
                     const kiln__bgemm_packed *b, float *c, size_t ldc, const kiln__epilogue *ep,
                     void *scratch) {
#ifdef KILN__BGEMM_X86
  if (!m || !b->n) return;
  uintptr_t s = ((uintptr_t)scratch + KILN__ALIGN - 1) / KILN__ALIGN * KILN__ALIGN;
  bjob j = {m, b->k, pairs(b->k), b->n, lda, ldc, a, (uint32_t *)s, b, c, ep,
            (b->n + COLS_PER_ITEM - 1) / COLS_PER_ITEM};
  kiln__parallel_for(kiln__pool_for(pool, (double)m * (double)b->k), m, convert_rows, &j);
  size_t n_items = (m + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM * j.items_n;
  double work = (double)m * (double)b->k * (double)b->n;
  kiln__parallel_for(kiln__pool_for(pool, work / 16.0), n_items, items, &j);
#else
  (void)pool, (void)m, (void)a, (void)lda, (void)b, (void)c, (void)ldc, (void)ep, (void)scratch;
#endif
}
