/* The optimized float32 GEMM of the "cpu" backend: C = epilogue(alpha * op(A) * op(B) [+ C]).
 *
 * All matrices are row-major with explicit row strides. op(A) is m x k (A is k x m when trans_a),
 * op(B) is k x n (B is n x k when trans_b). Either operand may instead come pre-packed (weights are
 * packed once when a node is prepared). The epilogue is applied while the result tile is still in
 * registers, so a fused bias, activation or residual add costs no extra pass over C.
 *
 * Structure: C is cut into tiles of NC columns and a multiple of MC rows, the work items of
 * kiln__parallel_for. A tile walks k in KC blocks; each block packs (unless pre-packed) its KC x NC
 * slab of B into NR-column panels once, and for each MC rows its MC x KC slab of A into MR-row
 * panels, then runs the MR x NR register-blocked microkernel of
 * the chosen ISA over every panel pair. The packing buffers are fixed-size stack blocks, so no
 * call allocates. */
#ifndef KILN_KERNELS_CPU_SGEMM_H
#define KILN_KERNELS_CPU_SGEMM_H

#include "core/common.h"
#include "kernels/cpu/vmath.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

struct kiln__pool;

typedef enum kiln__isa {
  KILN__ISA_GENERIC = 0, /* portable C, vectorized by the compiler */
  KILN__ISA_AVX2,        /* AVX2 + FMA, 6x16 microkernel */
  KILN__ISA_AVX512,      /* AVX-512F, 8x32 microkernel */
  KILN__ISA_NEON,        /* AArch64 NEON (always present there), 8x12 microkernel */
  KILN__ISA_COUNT
} kiln__isa;

const char *kiln__isa_name(kiln__isa isa);
/* Whether this machine can run `isa` (cpuid; GENERIC always). */
bool kiln__isa_supported(kiln__isa isa);
/* The ISA to use: the best this machine runs, or the one the environment variable KILN_ISA names
   (avx512, avx2, neon or generic) when the machine runs it. Read once per prepare(), so tests can
   force each ISA with setenv(). An unknown or unsupported name fails with INVALID_ARGUMENT/UNSUPPORTED
   rather than being silently ignored. */
kiln_status kiln__isa_select(kiln__isa *out, kiln_error *err);

/* Applied to each output element after the product, in this order:
   y = act(alpha * acc [+ old C when accumulating] + bias + residual). */
typedef struct kiln__epilogue {
  const float *bias;        /* NULL, or one value per column (n) or per row (m) of C */
  bool bias_per_row;
  const float *residual;    /* NULL, or an m x n matrix with row stride ldr (may equal C) */
  size_t ldr;
  kiln__act act;           /* RELU, CLIP in the microkernel; the rest by kiln__act_apply */
  float lo, hi;             /* the activation's p0, p1 (vmath.h): CLIP bounds, HardSigmoid's
                               alpha and beta, LeakyRelu's alpha */
  const kiln__vmath *vm;    /* vector math for SIGMOID, TANH, GELU, SILU */
} kiln__epilogue;

/* Whether the activation runs after the microkernel's store rather than in its registers. */
static inline bool kiln__act_is_post(kiln__act a) {
  return a != KILN__ACT_NONE && a != KILN__ACT_RELU && a != KILN__ACT_CLIP;
}

/* A pre-packed operand, laid out for one ISA's register tile. */
typedef struct kiln__sgemm_packed {
  kiln__isa isa;
  bool is_a;        /* packed as the left operand (MR-row panels) or the right (NR-column) */
  size_t rows;      /* m for A, n for B */
  size_t k;
  float *data;      /* owned; kiln__aligned_alloc */
} kiln__sgemm_packed;

/* The k block of the packed layout: a packed operand is its KC-row blocks back to back. */
#define KILN__SGEMM_KC 256

/* How far ahead (floats) the microkernels prefetch their packed A panel. Conv weights are A, and
   on small planes (ResNet's 7x7 and 14x14, MobileNet's 7x7) each weight meets only a few B
   panels, so A streams from memory at the speed of the hardware prefetcher: cold A ran 30-40%
   under hot A on 49-column products (bench/RESULTS.md, 2026-11-28 ninth session). 4 KiB ahead
   made cold as fast as hot on a Zen 5 core; 1 and 2 KiB recovered half of it. */
#define KILN__SGEMM_A_PF 1024

/* The microkernel's B panel width (NR) for `isa` (the generic kernel's for an ISA without one). */
size_t kiln__sgemm_nr(kiln__isa isa);
/* Its A panel height (MR), likewise. */
size_t kiln__sgemm_mr(kiln__isa isa);

/* Where element (p, j) of a k x n operand packed as B (panels of nr columns) lies: lets a caller
   write B's panels itself (Winograd's input transform) and run on them as a packed view
   (kiln__sgemm_packed with data pointing at its own memory, never freed). */
static inline size_t kiln__sgemm_pb_offset(size_t nr, size_t k, size_t n, size_t p, size_t j) {
  size_t p0 = p / KILN__SGEMM_KC * KILN__SGEMM_KC;
  size_t kc = KILN__MIN((size_t)KILN__SGEMM_KC, k - p0);
  return p0 * ((n + nr - 1) / nr * nr) + j / nr * nr * kc + (p - p0) * nr + j % nr;
}
/* Floats of a k x n operand packed as B. */
static inline size_t kiln__sgemm_pb_floats(size_t nr, size_t k, size_t n) {
  return k * ((n + nr - 1) / nr * nr);
}

/* Packs op(A) (m x k) or op(B) (k x n) for `isa`. Release with kiln__sgemm_packed_free. */
kiln_status kiln__sgemm_pack_a(kiln__isa isa, bool trans_a, size_t m, size_t k, const float *a,
                               size_t lda, kiln__sgemm_packed *out, kiln_error *err);
kiln_status kiln__sgemm_pack_b(kiln__isa isa, bool trans_b, size_t k, size_t n, const float *b,
                               size_t ldb, kiln__sgemm_packed *out, kiln_error *err);
void kiln__sgemm_packed_free(kiln__sgemm_packed *p);

/* Per-call packing of op(A) into caller memory, for a left operand that changes every call but
   meets a B packed per tile (pack_b): the driver would otherwise re-pack each A block once per
   128-column tile. Floats needed (0 for an ISA without a kernel); then packs into `mem` (that
   many floats; the microkernels broadcast A, so float alignment is enough) over the pool's
   threads, and makes `out` a view of it that owns nothing (never kiln__sgemm_packed_free it). */
size_t kiln__sgemm_pack_a_floats(kiln__isa isa, size_t m, size_t k);
void kiln__sgemm_pack_a_into(struct kiln__pool *pool, kiln__isa isa, bool trans_a, size_t m,
                             size_t k, const float *a, size_t lda, float *mem,
                             kiln__sgemm_packed *out);

/* Writes op(B)[p0:p0+kc, j0:j0+nc] as ceil(nc/nr) panels of kc x nr, back to back, columns past
   nc zero: the layout the microkernels read. Lets a caller build B's panels straight from its own
   data (Conv: implicit im2col, no column buffer), called from inside the GEMM's tiles, possibly
   on several threads at once with different ranges. */
typedef void (*kiln__sgemm_pack_fn)(const void *ctx, size_t nr, size_t p0, size_t kc, size_t j0,
                                    size_t nc, float *restrict dst);

typedef struct kiln__sgemm_args {
  size_t m, n, k;
  const float *a;                  /* ignored when pa is set */
  size_t lda;
  bool trans_a;
  const kiln__sgemm_packed *pa;    /* NULL, or A packed for this ISA with matching m, k */
  const float *b;                  /* ignored when pb is set */
  size_t ldb;
  bool trans_b;
  const kiln__sgemm_packed *pb;
  kiln__sgemm_pack_fn pack_b;      /* NULL, or B's packer (b, ldb and trans_b are then ignored) */
  bool b_in_place;                 /* with b, !trans_b: full-width panels read b where it lies
                                      (ISAs with a strided kernel; the others pack) */
  const void *pack_b_ctx;
  float *b_scratch;                /* NULL, or room for B packed whole (b_scratch_floats >=
                                      kiln__sgemm_pb_floats(nr, k, n)): when the threads would
                                      split the rows of C and each pack the same B slabs, the
                                      driver packs B once, across the threads, into it */
  size_t b_scratch_floats;
  float *c;
  size_t ldc;
  float alpha;
  bool accumulate;                 /* add the product to C's current values */
  kiln__epilogue ep;
} kiln__sgemm_args;

/* Copy and clear of a few floats (a panel row: 8-32) for the packers. Written out with SSE2 (the
   x86-64 baseline) or NEON and a tail without a loop, because gcc turns plain loops into calls to
   memcpy/memset, which cost more than the work at these lengths (pack_b_block's memcpy calls
   were 3% of ResNet-50's time). */
/* On packing functions: keep gcc from turning their short copy/clear loops into memcpy/memset
   calls (what glibc's inhibit_loop_to_libcall does for the same reason). */
#if defined(__GNUC__) && !defined(__clang__)
#define KILN__NO_LIBCALL_LOOPS __attribute__((optimize("no-tree-loop-distribute-patterns")))
#else
#define KILN__NO_LIBCALL_LOOPS
#endif

static inline void kiln__copy_floats(float *restrict d, const float *restrict s, size_t n) {
  size_t i = 0;
#if defined(__SSE2__)
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(d + i, _mm_loadu_ps(s + i));
  if (i < n) d[i] = s[i];
  if (i + 1 < n) d[i + 1] = s[i + 1];
  if (i + 2 < n) d[i + 2] = s[i + 2];
#elif defined(__aarch64__)
  for (; i + 4 <= n; i += 4) vst1q_f32(d + i, vld1q_f32(s + i));
  if (i < n) d[i] = s[i];
  if (i + 1 < n) d[i + 1] = s[i + 1];
  if (i + 2 < n) d[i + 2] = s[i + 2];
#else
  for (; i < n; i++) d[i] = s[i];
#endif
}

static inline void kiln__zero_floats(float *d, size_t n) {
  size_t i = 0;
#if defined(__SSE2__)
  for (; i + 4 <= n; i += 4) _mm_storeu_ps(d + i, _mm_setzero_ps());
  if (i < n) d[i] = 0.0f;
  if (i + 1 < n) d[i + 1] = 0.0f;
  if (i + 2 < n) d[i + 2] = 0.0f;
#elif defined(__aarch64__)
  for (; i + 4 <= n; i += 4) vst1q_f32(d + i, vdupq_n_f32(0.0f));
  if (i < n) d[i] = 0.0f;
  if (i + 1 < n) d[i + 1] = 0.0f;
  if (i + 2 < n) d[i + 2] = 0.0f;
#else
  for (; i < n; i++) d[i] = 0.0f;
#endif
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>
/* The packers' copy of a whole panel row of the AVX2 and AVX-512 kernels (nr >= 16 floats, a
   multiple of 8): 32-byte moves, half the stores of kiln__copy_floats; stores are what the
   Zen 3 host's slow phases slow (bench/RESULTS.md, sixteenth session). Call it only for nr >= 16:
   the ISA selection gives such panels only where the CPU has AVX. */
__attribute__((target("avx"))) static inline void kiln__copy_row_avx(float *restrict d,
                                                                      const float *restrict s,
                                                                      size_t nr) {
  for (size_t i = 0; i < nr; i += 8) _mm256_storeu_ps(d + i, _mm256_loadu_ps(s + i));
}
/* d[t] = s[2 t] for t < 16 with AVX2 (the panel row of a stride-2 conv): two 32-byte stores
   instead of four 16-byte ones. Reads s[0, 31), the last 8 with a masked load (s[31] may lie
   past the input). */
__attribute__((target("avx2"))) static inline void kiln__gather16_s2_avx2(float *restrict d,
                                                                          const float *s) {
  __m256 a = _mm256_loadu_ps(s), b = _mm256_loadu_ps(s + 8), c = _mm256_loadu_ps(s + 16);
  __m256 e = _mm256_maskload_ps(s + 24, _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, -1, 0));
  __m256 lo = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
  __m256 hi = _mm256_shuffle_ps(c, e, _MM_SHUFFLE(2, 0, 2, 0));
  _mm256_storeu_ps(d, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(lo), 0xd8)));
  _mm256_storeu_ps(d + 8, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(hi), 0xd8)));
}
#define KILN__HAVE_ROW_AVX 1
#endif

/* Runs the GEMM. A and B must not overlap C (the residual may). Packed operands must have been
   packed for the same ISA (their ISA is the one used). `pool` may be NULL; code already
   inside a kiln__parallel_for job must pass NULL. */
void kiln__sgemm_run(struct kiln__pool *pool, kiln__isa isa, const kiln__sgemm_args *g);

/* ---- microkernels (internal to the sgemm files) ---------------------------------------------- */

/* What a microkernel does when it writes its tile: scale by alpha, add C's old values when
   load_c, then the epilogue when ep is set (the last k block). row0/col0 place the tile in C for
   indexing bias and residual. */
typedef struct kiln__uk_store {
  float alpha;
  bool load_c;
  const kiln__epilogue *ep;
  size_t row0, col0;
} kiln__uk_store;

/* c[0:mr, 0:nr] (row stride ldc) <- store(sum over kc of a-panel column x b-panel row). `a` is a
   packed kc x MR panel, `b` a packed kc x NR panel; mr <= MR and nr <= NR (padding is zeros). */
typedef void (*kiln__sgemm_ukernel)(size_t kc, const float *restrict a, const float *restrict b,
                                    float *restrict c, size_t ldc, size_t mr, size_t nr,
                                    const kiln__uk_store *s);

/* Writes an mr x nr corner of a computed tile (row stride ld) into C with the store semantics
   above: the path for edge tiles and for kernels without an in-register epilogue. */
void kiln__uk_store_tile(const float *tile, size_t ld, float *c, size_t ldc, size_t mr, size_t nr,
                         const kiln__uk_store *s);

/* The packed microkernel of `isa` (the generic one for an ISA without its own), MR x NR as
   kiln__sgemm_mr/nr report: for a caller that runs many tiny products over operands it packed
   itself (Winograd's 16 per block of tiles), where the driver's setup per call cost more than
   a few tiles' work. */
kiln__sgemm_ukernel kiln__sgemm_uk(kiln__isa isa);

void kiln__sgemm_uk_4x8__generic(size_t kc, const float *restrict a, const float *restrict b,
                                 float *restrict c, size_t ldc, size_t mr, size_t nr,
                                 const kiln__uk_store *s);
void kiln__sgemm_uk_6x16__avx2(size_t kc, const float *restrict a, const float *restrict b,
                               float *restrict c, size_t ldc, size_t mr, size_t nr,
                               const kiln__uk_store *s);
/* The packed kernel with software prefetch of C's rows a few panels ahead: a short product (a
   stem conv's k = 27) writing a large C cold, row tile after row tile down one column panel,
   more streams than the hardware prefetcher follows. */
void kiln__sgemm_uk_6x16c__avx2(size_t kc, const float *restrict a, const float *restrict b,
                                float *restrict c, size_t ldc, size_t mr, size_t nr,
                                const kiln__uk_store *s);
/* The same product with b's rows ldb floats apart instead of packed: B read in place, no
   per-call packing. Reads NR floats of each row, so the driver calls it only for full-width
   panels and packs an edge panel. */
typedef void (*kiln__sgemm_ukernel_strided)(size_t kc, const float *restrict a,
                                            const float *restrict b, size_t ldb,
                                            float *restrict c, size_t ldc, size_t mr, size_t nr,
                                            const kiln__uk_store *s);
void kiln__sgemm_uk_6x16s__avx2(size_t kc, const float *restrict a, const float *restrict b,
                                size_t ldb, float *restrict c, size_t ldc, size_t mr, size_t nr,
                                const kiln__uk_store *s);
void kiln__sgemm_uk_8x32s__avx512(size_t kc, const float *restrict a, const float *restrict b,
                                  size_t ldb, float *restrict c, size_t ldc, size_t mr,
                                  size_t nr, const kiln__uk_store *s);
/* The strided kernel with software prefetch a few panels ahead, of C's rows (sc) or of C's and
   B's rows (sbc: the first row tile of a panel, which brings B in for the others): for a short
   product over a B whose rows are pages apart, too many streams for the hardware prefetcher. */
void kiln__sgemm_uk_6x16sc__avx2(size_t kc, const float *restrict a, const float *restrict b,
                                 size_t ldb, float *restrict c, size_t ldc, size_t mr, size_t nr,
                                 const kiln__uk_store *s);
void kiln__sgemm_uk_6x16sbc__avx2(size_t kc, const float *restrict a, const float *restrict b,
                                  size_t ldb, float *restrict c, size_t ldc, size_t mr,
                                  size_t nr, const kiln__uk_store *s);
void kiln__sgemm_uk_8x32__avx512(size_t kc, const float *restrict a, const float *restrict b,
                                 float *restrict c, size_t ldc, size_t mr, size_t nr,
                                 const kiln__uk_store *s);
/* Packs one full MR-row panel of a row-major A (MR rows lda floats apart, kc columns each) as
   kc x MR, the layout above: the driver's per-call A packer, vectorized where an ISA has one (the
   scalar loop stores one float at a time, a column of the panel per row). Reads only a[r * lda
   + p] for r < MR, p < kc and writes only dst[0 : kc * MR]. */
typedef void (*kiln__sgemm_pack_a_panel)(const float *restrict a, size_t lda, size_t kc,
                                         float *restrict dst);
void kiln__sgemm_pack_a_6__avx2(const float *restrict a, size_t lda, size_t kc,
                                float *restrict dst);
void kiln__sgemm_pack_a_8__avx512(const float *restrict a, size_t lda, size_t kc,
                                  float *restrict dst);
void kiln__sgemm_uk_8x12__neon(size_t kc, const float *restrict a, const float *restrict b,
                               float *restrict c, size_t ldc, size_t mr, size_t nr,
                               const kiln__uk_store *s);

#endif
