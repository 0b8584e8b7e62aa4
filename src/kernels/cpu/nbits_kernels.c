/* The cpu backend's row for com.microsoft MatMulNBits (4-bit weights in blocks along K; layout in
 * kernels/ref/nbits.h), with two paths chosen per call by the number of rows M of A:
 *
 *   GEMV (M <= GEMV_MAX_M = 16, LLM decode, small batches): reads the 4-bit codes directly. Per
 *     16 codes (8 bytes): split the nibbles, interleave them back into k order, subtract the
 *     block's zero point in int8, widen to float, and FMA against up to 4 rows of A at once (the
 *     decode is shared by the rows; more rows take more passes). A block's sum is scaled once at its end. Columns are split
 *     over the pool. A is first copied into scratch padded with zeros to whole blocks, so the
 *     padding codes of a last partial block multiply zeros.
 *   Dequantize + SGEMM (larger M): chunks of NCHUNK columns are dequantized into float (n-major,
 *     k contiguous) in scratch, in parallel, then multiplied by the packed SGEMM of sgemm.h with
 *     the bias in its epilogue. The decode is O(K N) against the product's O(M K N).
 *
 * Weights stay 4-bit in memory (copied at load with the zero points unpacked to one byte per
 * block). Float zero points, g_idx and computed B are left to the reference kernel. Results
 * differ from the reference only by float summation order (tests/test_cpu_nbits.c bounds it). */
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/sgemm.h"
#include "kernels/ref/nbits.h"

#if defined(__x86_64__) || defined(__i386__)
#define NB_X86 1
#include <immintrin.h>
#endif

#define GEMV_ROWS 4    /* rows of A per pass over the codes (one decode feeds them all) */
#define GEMV_MAX_M 16  /* bench/run_nbits.sh: the GEMV beats dequantize + SGEMM up to here */
#define NCHUNK 256   /* columns dequantized per SGEMM call: bounds scratch to NCHUNK * K floats */

typedef struct nb_state {
  kiln__isa isa;
  int path;               /* 0 auto, 1 GEMV always, 2 SGEMM always (KILN_NBITS_PATH, for bench) */
  size_t k, n, block, nb, blob, kp; /* kp: K padded to whole blocks */
  uint8_t *codes;         /* [N, nb, blob] as in the file */
  float *scales;          /* [N * nb] */
  uint8_t *zps;           /* [N * nb] one zero point per block */
} nb_state;

static const kiln_tensor *init_of(const kiln__node *n, const kiln__graph *g, int i) {
  const kiln__value *v = kiln__cpu_input(n, g, i);
  return v && v->is_initializer && v->init.data ? &v->init : NULL;
}

static bool nbits_supports(const kiln__node *n, const kiln__graph *g) {
  if (!n->domain || strcmp(n->domain, "com.microsoft") || n->n_in < 3 || n->n_in > 6) return false;
  int64_t K = kiln__attr_int(n, "K", -1), N = kiln__attr_int(n, "N", -1);
  int64_t block = kiln__attr_int(n, "block_size", -1);
  if (kiln__attr_int(n, "bits", 4) != 4 || K < 1 || N < 1 || K > ((int64_t)1 << 30) ||
      N > ((int64_t)1 << 30) || block < 16 || block > 65536 || (block & (block - 1)))
    return false;
  int64_t nb = (K + block - 1) / block;
  const kiln_tensor *b = init_of(n, g, 1), *s = init_of(n, g, 2);
  const kiln_tensor *zp = n->n_in > 3 && n->in[3] >= 0 ? init_of(n, g, 3) : NULL;
  if (n->n_in > 3 && n->in[3] >= 0 && !zp) return false; /* computed zero points */
  if (n->n_in > 4 && n->in[4] >= 0) return false;        /* g_idx: the reference refuses it */
  if (!b || b->dtype != KILN_DTYPE_UINT8 || b->rank != 3 || b->dims[0] != N || b->dims[1] != nb ||
      b->dims[2] != block / 2)
    return false;
  if (!s || s->dtype != KILN_DTYPE_FLOAT || (int64_t)kiln_tensor_count(s) != N * nb) return false;
  if (zp && (zp->dtype != KILN_DTYPE_UINT8 ||
             (int64_t)kiln_tensor_count(zp) != N * ((nb + 1) / 2)))
    return false;
  return kiln__cpu_maybe_float(kiln__cpu_input(n, g, 0));
}

static void nbits_release(void *state) {
  nb_state *s = state;
  if (!s) return;
  kiln__free(s->codes);
  kiln__free(s->scales);
  kiln__free(s->zps);
  kiln__free(s);
}

static kiln_status nbits_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                 kiln_error *err) {
  nb_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing MatMulNBits");
  kiln_status st = kiln__isa_select(&s->isa, err);
  if (st != KILN_OK) {
    kiln__free(s);
    return st;
  }
  const char *path = getenv("KILN_NBITS_PATH");
  s->path = path && !strcmp(path, "gemv") ? 1 : path && !strcmp(path, "sgemm") ? 2 : 0;
  s->k = (size_t)kiln__attr_int(n, "K", -1);
  s->n = (size_t)kiln__attr_int(n, "N", -1);
  s->block = (size_t)kiln__attr_int(n, "block_size", -1);
  s->nb = (s->k + s->block - 1) / s->block;
  s->blob = s->block / 2;
  s->kp = s->nb * s->block;
  const kiln_tensor *b = init_of(n, g, 1), *sc = init_of(n, g, 2);
  const kiln_tensor *zp = n->n_in > 3 && n->in[3] >= 0 ? init_of(n, g, 3) : NULL;
  size_t nblk = s->n * s->nb;
  s->codes = kiln__malloc(nblk * s->blob);
  s->scales = kiln__malloc(nblk * sizeof *s->scales);
  s->zps = kiln__malloc(nblk);
  if (!s->codes || !s->scales || !s->zps) {
    nbits_release(s);
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory packing MatMulNBits weights");
  }
  memcpy(s->codes, b->data, nblk * s->blob);
  memcpy(s->scales, sc->data, nblk * sizeof *s->scales);
  const uint8_t *z = zp ? zp->data : NULL;
  size_t zrow = (s->nb + 1) / 2;
  for (size_t c = 0; c < s->n; c++)
    for (size_t j = 0; j < s->nb; j++) {
      uint8_t v = z ? z[c * zrow + j / 2] : 8;
      s->zps[c * s->nb + j] = z ? (uint8_t)(j % 2 ? v >> 4 : v & 15) : 8;
    }
  *state = s;
  return KILN_OK;
}

/* ---- portable kernels ------------------------------------------------------------------------ */

/* y[r][c] for columns [c0, c1) and rows r < mr of the padded A (row stride kp). */
static void gemv_generic(const nb_state *s, const float *ap, size_t mr, size_t c0, size_t c1,
                         float *y, size_t ldy, const float *bias) {
  for (size_t c = c0; c < c1; c++) {
    float acc[GEMV_ROWS] = {0};
    for (size_t j = 0; j < s->nb; j++) {
      const uint8_t *q = s->codes + (c * s->nb + j) * s->blob;
      int zp = s->zps[c * s->nb + j];
      float bacc[GEMV_ROWS] = {0};
      for (size_t t = 0; t < s->blob; t++) {
        float w0 = (float)((q[t] & 15) - zp), w1 = (float)((q[t] >> 4) - zp);
        for (size_t r = 0; r < mr; r++) {
          const float *a = ap + r * s->kp + j * s->block + 2 * t;
          bacc[r] += w0 * a[0] + w1 * a[1];
        }
      }
      for (size_t r = 0; r < mr; r++) acc[r] += bacc[r] * s->scales[c * s->nb + j];
    }
    for (size_t r = 0; r < mr; r++) y[r * ldy + c] = acc[r] + (bias ? bias[c] : 0.0f);
  }
}

/* w[(c - c0) * kp + k] = dequantized weight (n-major) for columns [c0, c1). */
static void dequant_generic(const nb_state *s, size_t c0, size_t c1, float *w) {
  for (size_t c = c0; c < c1; c++)
    for (size_t j = 0; j < s->nb; j++) {
      const uint8_t *q = s->codes + (c * s->nb + j) * s->blob;
      int zp = s->zps[c * s->nb + j];
      float sc = s->scales[c * s->nb + j];
      float *o = w + (c - c0) * s->kp + j * s->block;
      for (size_t t = 0; t < s->blob; t++) {
        o[2 * t] = (float)((q[t] & 15) - zp) * sc;
        o[2 * t + 1] = (float)((q[t] >> 4) - zp) * sc;
      }
    }
}

/* ---- AVX2 kernels ---------------------------------------------------------------------------- */

#ifdef NB_X86
#define AVX2 __attribute__((target("avx2,fma")))

/* 16 codes (8 bytes, two per byte, low nibble first) minus the zero point, as 16 int8 in k
   order. */
AVX2 static inline __m128i decode16(const uint8_t *q, __m128i zp, __m128i lo4) {
  __m128i b = _mm_loadl_epi64((const __m128i *)q);
  __m128i lo = _mm_and_si128(b, lo4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), lo4);
  return _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), zp);
}

AVX2 static inline float hsum8(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_movehdup_ps(x));
  return _mm_cvtss_f32(x);
}

/* MR rows at once (a compile-time constant at every call, so the arrays live in registers). */
AVX2 static inline __attribute__((always_inline)) void gemv_avx2_rows(
    const nb_state *s, const float *ap, const int MR, size_t c0, size_t c1, float *y, size_t ldy,
    const float *bias) {
  const __m128i lo4 = _mm_set1_epi8(15);
  for (size_t c = c0; c < c1; c++) {
    __m256 acc[GEMV_ROWS];
    for (int r = 0; r < MR; r++) acc[r] = _mm256_setzero_ps();
    const uint8_t *q = s->codes + c * s->nb * s->blob;
    for (size_t j = 0; j < s->nb; j++) {
      __m128i zp = _mm_set1_epi8((char)s->zps[c * s->nb + j]);
      __m256 b0[GEMV_ROWS], b1[GEMV_ROWS];
      for (int r = 0; r < MR; r++) b0[r] = b1[r] = _mm256_setzero_ps();
      const float *ak = ap + j * s->block;
      for (size_t t = 0; t < s->block; t += 16, q += 8) {
        __m128i v = decode16(q, zp, lo4);
        __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
        __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)));
        for (int r = 0; r < MR; r++) {
          b0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(ak + r * s->kp + t), b0[r]);
          b1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(ak + r * s->kp + t + 8), b1[r]);
        }
      }
      __m256 sc = _mm256_set1_ps(s->scales[c * s->nb + j]);
      for (int r = 0; r < MR; r++) acc[r] = _mm256_fmadd_ps(_mm256_add_ps(b0[r], b1[r]), sc, acc[r]);
    }
    for (int r = 0; r < MR; r++) y[r * ldy + c] = hsum8(acc[r]) + (bias ? bias[c] : 0.0f);
  }
}

AVX2 static void gemv_avx2(const nb_state *s, const float *ap, size_t mr, size_t c0, size_t c1,
                           float *y, size_t ldy, const float *bias) {
  switch (mr) {
  case 1: gemv_avx2_rows(s, ap, 1, c0, c1, y, ldy, bias); break;
  case 2: gemv_avx2_rows(s, ap, 2, c0, c1, y, ldy, bias); break;
  case 3: gemv_avx2_rows(s, ap, 3, c0, c1, y, ldy, bias); break;
  default: gemv_avx2_rows(s, ap, 4, c0, c1, y, ldy, bias); break;
  }
}

AVX2 static void dequant_avx2(const nb_state *s, size_t c0, size_t c1, float *w) {
  const __m128i lo4 = _mm_set1_epi8(15);
  for (size_t c = c0; c < c1; c++) {
    const uint8_t *q = s->codes + c * s->nb * s->blob;
    float *o = w + (c - c0) * s->kp;
    for (size_t j = 0; j < s->nb; j++) {
      __m128i zp = _mm_set1_epi8((char)s->zps[c * s->nb + j]);
      __m256 sc = _mm256_set1_ps(s->scales[c * s->nb + j]);
      for (size_t t = 0; t < s->block; t += 16, q += 8, o += 16) {
        __m128i v = decode16(q, zp, lo4);
        __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
        __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)));
        _mm256_storeu_ps(o, _mm256_mul_ps(w0, sc));
        _mm256_storeu_ps(o + 8, _mm256_mul_ps(w1, sc));
      }
    }
  }
}
#endif

/* ---- execute --------------------------------------------------------------------------------- */

typedef struct nb_job {
  const nb_state *s;
  const float *ap;  /* GEMV: padded A */
  size_t m;
  float *y;
  const float *bias;
  size_t c0;        /* dequant: first column of the chunk */
  float *w;         /* dequant: the chunk */
} nb_job;

static void gemv_range(void *arg, size_t c0, size_t c1) {
  const nb_job *jb = arg;
  const nb_state *s = jb->s;
  for (size_t r = 0; r < jb->m; r += GEMV_ROWS) {
    size_t mr = jb->m - r < GEMV_ROWS ? jb->m - r : GEMV_ROWS;
    const float *ap = jb->ap + r * s->kp;
    float *y = jb->y + r * s->n;
#ifdef NB_X86
    if (s->isa != KILN__ISA_GENERIC) {
      gemv_avx2(s, ap, mr, c0, c1, y, s->n, jb->bias);
      continue;
    }
#endif
    gemv_generic(s, ap, mr, c0, c1, y, s->n, jb->bias);
  }
}

static void dequant_range(void *arg, size_t c0, size_t c1) {
  const nb_job *jb = arg;
  float *w = jb->w + c0 * jb->s->kp;
#ifdef NB_X86
  if (jb->s->isa != KILN__ISA_GENERIC) {
    dequant_avx2(jb->s, jb->c0 + c0, jb->c0 + c1, w);
    return;
  }
#endif
  dequant_generic(jb->s, jb->c0 + c0, jb->c0 + c1, w);
}

static bool use_gemv(const nb_state *s, size_t m) {
  return s->path == 1 || (s->path == 0 && m <= GEMV_MAX_M);
}

static size_t nbits_scratch(const kiln__kctx *c, void *state) {
  const nb_state *s = state;
  size_t m = kiln_tensor_count(c->in[0]) / s->k;
  size_t cols = use_gemv(s, m) ? m : (s->n < NCHUNK ? s->n : NCHUNK);
  return cols * s->kp * sizeof(float);
}

static kiln_status nbits_execute(kiln__kctx *c, void *state) {
  const nb_state *s = state;
  kiln__nbits g;
  kiln_status st = kiln__nbits_check(c, &g);
  if (st != KILN_OK) return st;
  if (g.k != s->k || g.n != s->n || g.block != s->block)
    return kiln__fail(c->err, KILN_INTERNAL, "MatMulNBits: inputs changed since load");
  const float *A = c->in[0]->data;
  float *Y = c->out[0]->data;
  const float *bias = g.bias ? g.bias->data : NULL;
  size_t m = g.m;
  if (m == 0) return KILN_OK;
  nb_job jb = {.s = s, .m = m, .y = Y, .bias = bias};
  if (use_gemv(s, m)) {
    float *ap = c->scratch;
    for (size_t r = 0; r < m; r++) {
      memcpy(ap + r * s->kp, A + r * s->k, s->k * sizeof *ap);
      memset(ap + r * s->kp + s->k, 0, (s->kp - s->k) * sizeof *ap);
    }
    jb.ap = ap;
    kiln__parallel_for(c->pool, s->n, gemv_range, &jb);
    return KILN_OK;
  }
  jb.w = c->scratch;
  for (size_t c0 = 0; c0 < s->n; c0 += NCHUNK) {
    size_t nc = s->n - c0 < NCHUNK ? s->n - c0 : NCHUNK;
    jb.c0 = c0;
    kiln__parallel_for(c->pool, nc, dequant_range, &jb);
    kiln__sgemm_args a = {.m = m, .n = nc, .k = s->k, .a = A, .lda = s->k, .b = jb.w,
                          .ldb = s->kp, .trans_b = true, .c = Y + c0, .ldc = s->n, .alpha = 1.0f};
    a.ep.bias = bias ? bias + c0 : NULL;
    kiln__sgemm_run(c->pool, s->isa, &a);
  }
  return KILN_OK;
}

const kiln__cpu_kernel kiln__cpu_nbits_kernels[] = {
    {"MatMulNBits", nbits_supports, nbits_prepare, nbits_release, nbits_execute, nbits_scratch},
    {0},
};
