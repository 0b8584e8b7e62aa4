/* The cpu backend's row for com.microsoft MatMulNBits (4-bit weights in blocks along K; layout in
 * kernels/ref/nbits.h). Two float-activation paths, chosen per call by the number of rows M of A:
 *
 *   GEMV (M <= GEMV_MAX_M = 8, LLM decode, small batches): reads the 4-bit codes directly. Per
 *     16 codes (8 bytes): split the nibbles, interleave them back into k order, subtract the
 *     block's zero point in int8, widen to float, and FMA against up to 4 rows of A at once (the
 *     decode is shared by the rows; more rows take more passes). A block's sum is scaled once at its end. Columns are split
 *     over the pool. A is first copied into scratch padded with zeros to whole blocks, so the
 *     padding codes of a last partial block multiply zeros.
 *   Decode-in-the-packing SGEMM (larger M): the packed SGEMM of sgemm.h runs with a B packer
 *     (kiln__sgemm_pack_fn) that decodes the 4-bit blocks straight into the KC x NR panels its
 *     microkernel reads, as each tile asks for them: no float copy of the weights, no second
 *     pack. AVX2 decodes 16 k of 8 columns and transposes them in registers. A is packed once
 *     per call into scratch (else the driver re-packs it for every 128-column tile). The bias
 *     runs in the SGEMM's epilogue. The decode is O(K N) per tile row against O(M K N).
 *   int8 activations (the node's accuracy_level = 4, or KILN_NBITS_PATH=q8), any M: A quantized
 *     per row and block, integer block sums on an 8-column interleaved copy of the codes
 *     (nbits_q8.c); the two paths above are then not used.
 *
 * Weights stay 4-bit in memory (copied at load with the zero points unpacked to one byte per
 * block). Float zero points, g_idx and computed B are left to the reference kernel. Results
 * differ from the reference only by float summation order (tests/test_cpu_nbits.c bounds it); the
 * int8-activation path's from the reference q8 arithmetic (kernels/ref/nbits.h) likewise. */
#include <stdlib.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/nbits_q8.h"
#include "kernels/cpu/sgemm.h"
#include "kernels/ref/nbits.h"

#if defined(__x86_64__) || defined(__i386__)
#define NB_X86 1
#include <immintrin.h>
#endif

#define GEMV_ROWS 4    /* rows of A per pass over the codes (one decode feeds them all) */
#define GEMV_MAX_M 8   /* bench/run_nbits.sh: the GEMV beats the packing SGEMM up to here */

typedef struct nb_state {
  kiln__isa isa;
  kiln__qisa qisa;        /* the int8-activation path's kernels */
  int path;               /* 0 auto, 1 GEMV, 2 SGEMM, 3 int8 activations (KILN_NBITS_PATH) */
  kiln__nbits_q8 *q8;     /* accuracy_level 4 (or path 3) and a block the q8 kernels take */
  size_t k, n, block, nb, blob, kp; /* kp: K padded to whole blocks */
  unsigned bshift;        /* log2(block) */
  uint8_t *codes;         /* [N, nb, blob] as in the file */
  float *scales;          /* [N * nb] */
  uint8_t *zps;           /* [N * nb] one zero point per block */
} nb_state;

static const kiln_tensor *init_of(const kiln__node *n, const kiln__graph *g, int i) {
  const kiln__value *v = kiln__cpu_input(n, g, i);
  return v && v->is_initializer && v->init.data ? &v->init : NULL;
}

static bool nbits_supports(const kiln__node *n, const kiln__graph *g) {
  if (n->n_in < 3 || n->n_in > 6) return false;
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

static kiln__nbits_w weights(const nb_state *s) {
  return (kiln__nbits_w){.k = s->k, .n = s->n, .block = s->block, .nb = s->nb, .blob = s->blob,
                         .kp = s->kp, .codes = s->codes, .scales = s->scales, .zps = s->zps};
}

static void nbits_release(void *state) {
  nb_state *s = state;
  if (!s) return;
  kiln__free(s->codes);
  kiln__free(s->scales);
  kiln__free(s->zps);
  kiln__nbits_q8_free(s->q8);
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
  if ((st = kiln__qisa_select(&s->qisa, err)) != KILN_OK) {
    kiln__free(s);
    return st;
  }
  const char *path = getenv("KILN_NBITS_PATH");
  s->path = !path                   ? 0
            : !strcmp(path, "gemv")  ? 1
            : !strcmp(path, "sgemm") ? 2
            : !strcmp(path, "q8")    ? 3
                                     : 0;
  s->k = (size_t)kiln__attr_int(n, "K", -1);
  s->n = (size_t)kiln__attr_int(n, "N", -1);
  s->block = (size_t)kiln__attr_int(n, "block_size", -1);
  s->nb = (s->k + s->block - 1) / s->block;
  s->blob = s->block / 2;
  s->kp = s->nb * s->block;
  while (((size_t)1 << s->bshift) < s->block) s->bshift++;
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
  kiln__nbits_w w = weights(s);
  if ((s->path == 3 || (s->path == 0 && kiln__attr_int(n, "accuracy_level", 0) == 4)) &&
      kiln__nbits_q8_ok(&w) && (st = kiln__nbits_q8_prepare(&w, s->qisa, &s->q8, err)) != KILN_OK) {
    nbits_release(s);
    return st;
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

/* kiln__sgemm_pack_fn with ctx = the nb_state. op(B) is W^T (K x N): column c of the panels is
   weight row c, whose codes run along k. Writes (code - zp) * scale in float32, the reference's
   value bit for bit. p0 is a multiple of the SGEMM's KC (even), so k's parity is p's. */
KILN__NO_LIBCALL_LOOPS static void pack_generic(const void *ctx, size_t nr, size_t p0, size_t kc,
                                                size_t j0, size_t nc, float *restrict dst) {
  const nb_state *s = ctx;
  for (size_t jp = 0; jp < nc; jp += nr, dst += kc * nr) {
    size_t cols = KILN__MIN(nr, nc - jp);
    for (size_t j = 0; j < cols; j++) {
      size_t c = j0 + jp + j;
      for (size_t p = 0; p < kc;) {
        size_t k = p0 + p, blk = c * s->nb + (k >> s->bshift);
        size_t end = KILN__MIN(kc, ((k >> s->bshift) + 1) * s->block - p0);
        const uint8_t *q = s->codes + blk * s->blob + ((k & (s->block - 1)) >> 1);
        int zp = s->zps[blk];
        float sc = s->scales[blk];
        for (; p < end; p += 2, q++) {
          dst[p * nr + j] = (float)((*q & 15) - zp) * sc;
          if (p + 1 < end) dst[(p + 1) * nr + j] = (float)((*q >> 4) - zp) * sc;
        }
      }
    }
    for (size_t j = cols; j < nr; j++)
      for (size_t p = 0; p < kc; p++) dst[p * nr + j] = 0.0f;
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

/* In-register transpose of 8 rows of 8 floats. */
AVX2 static inline void transpose8(__m256 r[8]) {
  __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20), r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20), r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20), r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20), r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* pack_generic's contract for nr a multiple of 8 (AVX2's 16, AVX-512's 32). Per 8 columns and
   16 k: each column's 8 code bytes become 16 int8 along k less the zero point (decode16), then
   two rows of 8 floats times the scale; two transposes turn them into 16 panel rows. A column's
   codes are contiguous over its blocks (byte k / 2), and 16 k never straddle a block (block >= 16,
   p0 a multiple of 16). Groups reaching past K read the file's padding codes (it stores whole
   blocks) but store only the rows below kc. The next group's code lines are prefetched: the
   columns are K / 2 bytes apart, a stride the hardware prefetcher does not follow across 8
   streams. */
AVX2 static void pack_avx2(const void *ctx, size_t nr, size_t p0, size_t kc, size_t j0, size_t nc,
                           float *restrict dst) {
  const nb_state *s = ctx;
  const __m128i lo4 = _mm_set1_epi8(15);
  const size_t row = s->nb * s->blob; /* code bytes per column */
  for (size_t jp = 0; jp < nc; jp += nr, dst += kc * nr)
    for (size_t jg = 0; jg < nr; jg += 8) {
      float *d = dst + jg;
      size_t cols = nc > jp + jg ? KILN__MIN((size_t)8, nc - jp - jg) : 0, c0 = j0 + jp + jg;
      if (!cols) {
        for (size_t p = 0; p < kc; p++) _mm256_storeu_ps(d + p * nr, _mm256_setzero_ps());
        continue;
      }
      const uint8_t *q = s->codes + c0 * row + p0 / 2;
      size_t next = KILN__MIN((size_t)8, s->n - KILN__MIN(s->n, c0 + 8));
      for (size_t i = 0; i < next; i++)
        for (size_t off = 0; off < (kc + 1) / 2; off += 64)
          _mm_prefetch((const char *)(q + (8 + i) * row + off), _MM_HINT_T0);
      for (size_t p = 0; p < kc; p += 16) {
        size_t j = (p0 + p) >> s->bshift;
        __m256 r0[8], r1[8];
        for (size_t i = 0; i < 8; i++) {
          if (i >= cols) {
            r0[i] = r1[i] = _mm256_setzero_ps();
            continue;
          }
          size_t blk = (c0 + i) * s->nb + j;
          __m128i v = decode16(q + i * row + p / 2, _mm_set1_epi8((char)s->zps[blk]), lo4);
          __m256 sc = _mm256_set1_ps(s->scales[blk]);
          r0[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), sc);
          r1[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(v, 8))), sc);
        }
        transpose8(r0);
        transpose8(r1);
        size_t rows = KILN__MIN((size_t)16, kc - p);
        for (size_t i = 0; i < rows && i < 8; i++) _mm256_storeu_ps(d + (p + i) * nr, r0[i]);
        for (size_t i = 8; i < rows; i++) _mm256_storeu_ps(d + (p + i) * nr, r1[i - 8]);
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

static bool use_gemv(const nb_state *s, size_t m) {
  return s->path == 1 || (s->path == 0 && m <= GEMV_MAX_M);
}

static size_t nbits_scratch(const kiln__kctx *c, void *state) {
  const nb_state *s = state;
  size_t m = kiln_tensor_count(c->in[0]) / s->k;
  if (s->q8) return kiln__nbits_q8_scratch(s->q8, m);
  /* GEMV: A padded to whole blocks; SGEMM: A packed once (B's panels come from the stack). */
  return (use_gemv(s, m) ? m * s->kp : kiln__sgemm_pack_a_floats(s->isa, m, s->k)) * sizeof(float);
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
  if (s->q8) {
    kiln__nbits_q8_run(c->pool, s->q8, A, m, Y, bias, c->scratch);
    return KILN_OK;
  }
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
  /* A packed once here, not once per 128-column tile (that was 14% of minilm_l12 int4). */
  kiln__sgemm_packed pa;
  kiln__sgemm_pack_a_into(c->pool, s->isa, false, m, s->k, A, s->k, c->scratch, &pa);
  kiln__sgemm_args a = {.m = m, .n = s->n, .k = s->k, .pa = &pa, .pack_b = pack_generic,
                        .pack_b_ctx = s, .c = Y, .ldc = s->n, .alpha = 1.0f};
#ifdef NB_X86
  if (s->isa != KILN__ISA_GENERIC) a.pack_b = pack_avx2; /* nr 16 or 32 */
#endif
  a.ep.bias = bias;
  kiln__sgemm_run(c->pool, s->isa, &a);
  return KILN_OK;
}

const kiln__cpu_kernel kiln__cpu_nbits_kernels[] = {
    {"MatMulNBits", nbits_supports, nbits_prepare, nbits_release, nbits_execute, nbits_scratch,
     "com.microsoft"},
    {0},
};
