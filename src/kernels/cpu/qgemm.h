/* The integer GEMM of the "cpu" backend: C = epilogue((A - za) (B - zb)) with 8-bit A and B and
 * exact int32 accumulation, for MatMulInteger, QLinearMatMul, ConvInteger and QLinearConv.
 *
 * A is m x k, B is k x n; either may be uint8 or int8. Zero points: za per tensor or per row of A,
 * zb per tensor or per column of B. Both operands are packed before the product: weights once at
 * load, activations (and im2col columns) per call into plan scratch. Zero points are not applied
 * in the inner loop; the microkernel forms the raw sum of stored values and the epilogue corrects
 * it with the row sums of A and column sums of B computed while packing:
 *
 *   sum_p (a - za)(b - zb) = acc - za * colsum(b) - zb * (rowsum(a) - k * za)      (mod 2^32)
 *
 * which is exact (int32 wraps identically to the reference's int32 sum).
 *
 * Formats, one per ISA, plus the AVX2 byte formats:
 *   GENERIC, AVX2: values widened to int16 and grouped by k pairs; the product is VPMADDWD
 *     (int16 x int16 -> int32, two products summed). |a*b| <= 255*255, so a pair fits int32
 *     exactly for any 8-bit values. Costs twice the packed bytes.
 *   AVX2_U8S8 / AVX2_S8U8 (AVX2 machines, constant operands that qualify): bytes in k quads,
 *     VPMADDUBSW (u8 x s8, pairs summed into saturating int16) + VPMADDWD(ones) + VPADDD. Exact
 *     because the signed, constant operand was checked at pack time: |v0| + |v1| <= 128 for
 *     every k pair (7-bit weights, the quantizer's default, always pass), so no pair sum exceeds
 *     255 * 128 = 32640. Half the packed bytes and about twice the MAC rate of AVX2.
 *   AVXVNNI, AVX512VNNI: bytes grouped by k quads, VPDPBUSD (u8 x s8, four products summed into
 *     int32, exact). A is stored as uint8 and B as int8: an int8 A is shifted by +128 and a uint8
 *     B by -128 at pack time, and the operand's zero points by the same offset (zp_off), which the
 *     correction above makes exact.
 * The tile driver cuts C into MC x NC tiles (the work items of kiln__parallel_for), each with an
 * int32 accumulator block on the stack, walks k in KC blocks, then runs the epilogue: int32 out
 * (MatMulInteger, ConvInteger) or requantization to uint8/int8 (QLinear*), which is
 *   y = clamp(rint((float)(acc + bias) * mult) + zy)
 * in exactly the reference kernel's float operations, so its results are bit-identical. In the
 * conv case with k <= KC the AVX2 S8U8 format requantizes full 16-column panels in the
 * microkernel's registers instead (kiln__qgemm_ukernel_req), with the same operations. */
#ifndef KILN_KERNELS_CPU_QGEMM_H
#define KILN_KERNELS_CPU_QGEMM_H

#include "core/common.h"

struct kiln__pool;

/* Which VNNI microkernels this compiler can build (target attributes and intrinsics). */
#if defined(__x86_64__) || defined(__i386__)
#define KILN__QGEMM_X86 1
#define KILN__QGEMM_HAVE_AVX512VNNI 1
#if defined(__clang__)
#if __clang_major__ >= 12
#define KILN__QGEMM_HAVE_AVXVNNI 1
#endif
#elif defined(__GNUC__) && __GNUC__ >= 11
#define KILN__QGEMM_HAVE_AVXVNNI 1
#endif
#endif

typedef enum kiln__qisa {
  KILN__QISA_GENERIC = 0, /* portable C, int16 pairs, 4x8 tile */
  KILN__QISA_AVX2,        /* int16 pairs, VPMADDWD, 6x16 tile */
  KILN__QISA_AVXVNNI,     /* u8 x s8 quads, VPDPBUSD on ymm, 6x16 tile */
  KILN__QISA_AVX512VNNI,  /* u8 x s8 quads, VPDPBUSD on zmm, 6x32 tile */
  KILN__QISA_COUNT,
  /* Packed formats that are not ISAs of their own (never selected, never named by KILN_ISA):
     kiln__qpack_alloc picks one for a constant AVX2 operand whose stored int8 values satisfy
     |v[2q]| + |v[2q+1]| <= 128 for every k pair, e.g. weights in [-64, 63] (reduce_range), so
     that VPMADDUBSW's saturating int16 pair sum 255 * 128 = 32640 is exact. Bytes in k quads,
     VPMADDUBSW + VPMADDWD(ones) + VPADDD, 4x16 tile. The other operand is packed per call in the
     same format (kiln__qpack with the constant operand's `isa`). */
  KILN__QFMT_AVX2_U8S8 = KILN__QISA_COUNT, /* A u8, B s8 (B is the constant: MatMul weights) */
  KILN__QFMT_AVX2_S8U8,                    /* A s8, B u8 (A is the constant: conv weights) */
  /* The S8U8 layout on an AVX512-VNNI CPU, multiplied by VPDPBUSD (a 16-column k quad is one
     zmm): exact for any values, so kiln__qpack_alloc takes it for all conv weights there, and
     the paths built on that layout (NHWC conv columns, gathered im2col, the requantizing tile)
     run with a quarter of the AVX2 instructions. MatMul weights keep the 6 x 32 tile. */
  KILN__QFMT_VNNI_S8U8,
  KILN__QFMT_COUNT
} kiln__qisa;

const char *kiln__qisa_name(kiln__qisa isa); /* also the byte formats: "avx2-u8s8", ... */
/* Whether this build and machine can run `isa` (compiler support, then cpuid). */
bool kiln__qisa_supported(kiln__qisa isa);
/* The best ISA this machine runs, or the one KILN_ISA names: generic, avx2, avxvnni, avx512vnni
   (avx512 means the best of these). Read once per prepare(). An unknown or unsupported name fails
   rather than being ignored. */
kiln_status kiln__qisa_select(kiln__qisa *out, kiln_error *err);

/* One packed operand: `rows` is m for A, n for B. */
typedef struct kiln__qpacked {
  kiln__qisa isa;
  bool is_a;
  size_t rows, k;
  int32_t zp_off;  /* added to this operand's zero points (the VNNI formats' +-128 shift) */
  int32_t *sums;   /* per row: sum over k of the stored values */
  void *data;
  void *owned;     /* the allocation when packed with kiln__qpack_alloc, else NULL */
} kiln__qpacked;

/* An 8-bit source matrix: element (r, p) of the operand (r < rows, p < k) is at
   base[r * rs + p * ks]. For A = X (m x k row-major): rs = k, ks = 1; for B = W (k x n): rs = 1,
   ks = n. */
typedef struct kiln__qsrc {
  const void *base;
  bool is_signed;  /* int8, else uint8 */
  size_t rs, ks;
  /* B only: the caller's A has every za (with its zp_off) 0, so the column sums are never read;
     the 16-column byte packer then skips them (the stored sums are unspecified). */
  bool no_sums;
} kiln__qsrc;

/* Bytes of packed storage (data and sums) for an operand; 0 on overflow. */
size_t kiln__qpack_bytes(kiln__qisa isa, bool is_a, size_t rows, size_t k);
/* Packs into `mem` (kiln__qpack_bytes of it, KILN__ALIGN-aligned), splitting the rows over the
   pool. No allocation: for per-call operands in scratch. */
void kiln__qpack(struct kiln__pool *pool, kiln__qisa isa, bool is_a, size_t rows, size_t k,
                 const kiln__qsrc *src, void *mem, kiln__qpacked *out);
/* Packs into a new allocation (weights at load); release with kiln__qpacked_free. With `isa`
   AVX2, checks the values once and packs in KILN__QFMT_AVX2_U8S8 (B) / _S8U8 (A) when they
   qualify; out->isa says which format was chosen, and the other operand must use it. */
kiln_status kiln__qpack_alloc(kiln__qisa isa, bool is_a, size_t rows, size_t k,
                              const kiln__qsrc *src, kiln__qpacked *out, kiln_error *err);
void kiln__qpacked_free(kiln__qpacked *p);

/* A B operand (k x n) gathered rather than read from a matrix: im2col columns packed straight
   from the input planes, with no im2col buffer and no second pass over one. The callback writes
   the values at k indices [p0, p0 + kc) (kc <= 64) of the columns [c0, c0 + cn) (cn <= 512)
   to dst, row p at dst + p * ld; kiln__qpack_gather interleaves them into the panels while
   they are in L1. */
typedef void (*kiln__qgather_fn)(const void *ctx, size_t c0, size_t cn, size_t p0, size_t kc,
                                 uint8_t *dst, size_t ld);
/* Whether kiln__qpack_gather packs B for `isa` (the constant operand's format): the 16-column
   byte formats on x86 (AVX2_U8S8 / _S8U8, AVXVNNI). */
bool kiln__qpack_gather_ok(kiln__qisa isa);
/* kiln__qpack of B (n columns) through `fn`; values uint8, or int8 when `is_signed`. */
void kiln__qpack_gather(struct kiln__pool *pool, kiln__qisa isa, size_t n, size_t k,
                        bool is_signed, kiln__qgather_fn fn, const void *ctx, void *mem,
                        kiln__qpacked *out);

/* B (k x n) of a convolution whose input is in NHWC bytes: k = taps * kt ordered tap-major (the
   weights' k must be packed in the same (ky, kx, c) order), kt a multiple of 16, and column j's kt
   values of tap t are the bytes at ptrs[j * taps + t] (the tap's input pixel, or a row of zero
   points for padding). Every 16 k values of 16 columns are one 16 x 16 byte transpose, with no
   im2col rows in between. Values uint8, or int8 when `is_signed`. No column sums: the caller's A
   has every za (with its zp_off) 0. The AVX2 S8U8 byte format only. */
void kiln__qpack_taps(struct kiln__pool *pool, kiln__qisa isa, size_t n, size_t taps, size_t kt,
                      bool is_signed, const uint8_t *const *ptrs, void *mem, kiln__qpacked *out);

/* Zero points: none (n 0), one, or one per row of A / column of B. */
typedef struct kiln__qzp {
  const void *p;
  bool is_signed;
  size_t n;
} kiln__qzp;

typedef enum kiln__qout_kind {
  KILN__QOUT_I32,  /* int32 C, the corrected sum */
  KILN__QOUT_U8,   /* requantized */
  KILN__QOUT_S8,
} kiln__qout_kind;

typedef struct kiln__qgemm_args {
  size_t m, n, k;
  const kiln__qpacked *a, *b; /* packed for the same ISA, with matching m / n and k */
  kiln__qzp za, zb;
  kiln__qout_kind kind;
  void *c;                    /* int32, uint8 or int8 by kind; row stride ldc elements */
  size_t ldc;
  /* Requantization only: */
  const int32_t *bias;        /* NULL, or one per column (per row when per_row) */
  const float *mult;          /* one per column (per row when per_row); finite */
  bool per_row;
  int32_t zy;
  /* With kind U8 / S8: C is float, each requantized value q dequantized in the epilogue as
     (float)(q - dq_zp) * dq_scale, then + dq_bias[j] (QLinearMatMulDq: QLinearMatMul ->
     DequantizeLinear -> Add in one pass, the same float operations). With kind I32: C is float,
     (float)sum * dq_mult[j], then + dq_bias[j] (MatMulInteger -> Cast -> Mul -> Add, as
     com.microsoft MatMulIntegerToFloat); with per_row too, that product is then multiplied by
     mult[i] of its row (ai.kiln RowQuantMatMul: the Mul by the row's activation scale). Kind
     U8 / S8: not with per_row. */
  bool dq;
  int32_t dq_zp;
  float dq_scale;
  const float *dq_mult;    /* kind I32: one per column */
  const float *dq_bias;       /* one per column, or NULL */
} kiln__qgemm_args;

/* Runs the product. `pool` may be NULL; code inside a kiln__parallel_for job passes NULL. */
void kiln__qgemm_run(struct kiln__pool *pool, const kiln__qgemm_args *g);

/* Tests: the packed format of a prepared MatMulInteger / QLinearMatMul node's constant B, or of
   group `group` of a ConvInteger / QLinearConv node's weights (`kstate`: what the quant kernel's
   prepare() built, kiln__cpu_kernel_state); KILN__QFMT_COUNT when nothing was prepacked. */
kiln__qisa kiln__cpu_quant_weight_format(const char *op_type, const void *kstate, size_t group);
/* Tests: whether a prepared ConvInteger / QLinearConv node takes its columns from an NHWC copy
   of the input (kiln__qpack_taps) when it is not pointwise. */
bool kiln__cpu_qconv_nhwc(const char *op_type, const void *kstate);

/* ---- vectorized conversions (quant_kernels.c), exact against the reference kernels ------------ */

/* y[i] = clamp(rint(x[i] / scale) + zp) into uint8 or int8 (NaN -> zp). */
void kiln__q_quantize(kiln__qisa isa, const float *x, size_t n, float scale, int32_t zp,
                      bool to_signed, void *y);
/* y[i] = (float)(x[i] - zp) * scale. */
void kiln__q_dequantize(kiln__qisa isa, const void *x, bool from_signed, size_t n, int32_t zp,
                        float scale, float *y);
/* min and max of x with 0 included (NaN ignored). */
void kiln__q_minmax(kiln__qisa isa, const float *x, size_t n, float *mn, float *mx);

/* ---- internals shared by the qgemm files ------------------------------------------------------ */

/* c[0:MR, 0:NR] (row stride ldc) = (accumulate ? c : 0) + the tile's raw product over `groups`
   k groups (pairs or quads) of the packed panels a and b. Always the full tile: the driver's
   accumulator block is padded. */
typedef void (*kiln__qgemm_ukernel)(size_t groups, const void *restrict a, const void *restrict b,
                                    int32_t *restrict c, size_t ldc, bool accumulate);

/* What the epilogue needs for one row of a tile, columns j0 .. j0 + n. */
typedef struct kiln__qep_row {
  const int32_t *acc;      /* raw sums */
  size_t n;
  int32_t za, rowterm;     /* za of this row (with offset), rowsum - k * za */
  const int32_t *cs;       /* column sums of B (n); not read when za is 0 */
  const int32_t *zb;       /* per-column zb with offset (n), or NULL when all zero */
  int32_t row_add;         /* added to every sum of the row (mod 2^32): a uniform zb's
                              -zb * rowterm, folded by the driver */
  /* requantization: */
  const int32_t *bias;     /* n values, or NULL */
  int32_t bias_row;        /* the per-row bias (0 if none) */
  const float *mult;       /* n values, or NULL: mult_row for every column */
  float mult_row;
  int32_t zy, lo, hi;
  kiln__qout_kind kind;
  bool dq;                 /* dequantized float out (kiln__qgemm_args.dq) */
  bool dq_row;             /* kind I32 with dq: then times mult_row */
  int32_t dq_zp;
  float dq_scale;
  const float *dq_mult;    /* kind I32: one per column */
  const float *dq_bias;    /* n values, or NULL */
  void *dst;
} kiln__qep_row;

typedef void (*kiln__qep_fn)(const kiln__qep_row *r);

/* The epilogue of one driver tile (rows x n sums at acc, row stride ldacc), run once its last k
   block is done. Row i's values come from the driver's per-row arrays of the tile, column j's
   from the operands' arrays:
     v = acc + radd[i] - za[i] * cs[j] - zb[j] * rowterm[i] + bias[j]       (mod 2^32)
   then int32 out, or requantization with mult_row[i] (per row) or mult[j]. radd folds a uniform
   zb's -zb * rowterm and a per-row bias. */
typedef struct kiln__qep_tile {
  const int32_t *acc;
  size_t ldacc, rows, n;
  const int32_t *radd;      /* rows values */
  const int32_t *za;        /* rows values, or NULL when every za is 0 (cs is then not read) */
  const int32_t *rowterm;   /* rows values; read only with zb */
  const float *mult_row;    /* rows values, or NULL: mult per column (kind I32 with dq: the
                               row factors after dq_mult, or NULL for none) */
  const int32_t *cs, *zb;   /* n values; zb NULL when none */
  const int32_t *bias;      /* n values, or NULL */
  const float *mult;        /* n values, or NULL (int32 out, or per-row mult) */
  int32_t zy, lo, hi;
  kiln__qout_kind kind;
  bool dq;                  /* dequantized float out (kiln__qgemm_args.dq) */
  int32_t dq_zp;
  float dq_scale;
  const float *dq_mult;    /* kind I32: one per column */
  const float *dq_bias;     /* n values, or NULL */
  void *dst;
  size_t ldd;               /* row stride of dst, elements */
} kiln__qep_tile;

typedef void (*kiln__qep_tile_fn)(const kiln__qep_tile *t);
void kiln__qep_tile__generic(const kiln__qep_tile *t);
void kiln__qep_tile__avx2(const kiln__qep_tile *t);

void kiln__qgemm_uk_4x8__generic(size_t groups, const void *restrict a, const void *restrict b,
                                 int32_t *restrict c, size_t ldc, bool accumulate);
void kiln__qep__generic(const kiln__qep_row *r);
void kiln__qgemm_uk_6x16__avx2(size_t groups, const void *restrict a, const void *restrict b,
                               int32_t *restrict c, size_t ldc, bool accumulate);
void kiln__qep__avx2(const kiln__qep_row *r);
void kiln__qgemm_uk_4x16__avx2_u8s8(size_t groups, const void *restrict a, const void *restrict b,
                                    int32_t *restrict c, size_t ldc, bool accumulate);
void kiln__qgemm_uk_4x16__avx2_s8u8(size_t groups, const void *restrict a, const void *restrict b,
                                    int32_t *restrict c, size_t ldc, bool accumulate);
/* The byte formats' edge tiles: 4 x 8, for a last B panel of 1-8 columns packed 8 wide (32 bytes
   per k quad), so that e.g. 49 columns cost 56, not 64. */
void kiln__qgemm_uk_4x8__avx2_u8s8(size_t groups, const void *restrict a, const void *restrict b,
                                   int32_t *restrict c, size_t ldc, bool accumulate);
void kiln__qgemm_uk_4x8__avx2_s8u8(size_t groups, const void *restrict a, const void *restrict b,
                                   int32_t *restrict c, size_t ldc, bool accumulate);
/* The S8U8 edge panel's first cols (1-4) columns for rows (a multiple of 4) rows of A's 4-row
   panels (a_ps bytes apart), rows in lanes: c[i * ldc + j] = (accumulate ? c : 0) + sum. b is the
   edge panel (bw bytes per k quad). */
void kiln__qgemm_ukc_avx2_s8u8(size_t groups, const uint8_t *a, size_t a_ps, size_t rows,
                               const uint8_t *b, size_t bw, size_t cols, int32_t *c, size_t ldc,
                               bool accumulate);
/* The requantization of whole rows of a tile in the microkernel's registers (the conv case:
   per-row multiplier, weights' za 0, uniform zb, no per-column bias), for a k that fits one k
   block: no int32 tile is stored and read back. Row i's sums become
   clamp((float)(acc + radd[i]) * mult[i]) + zy, in the tile epilogue's exact operations. */
typedef struct kiln__qreq_rows {
  const int32_t *radd; /* per row: the folded zb term and bias */
  const float *mult;   /* per row */
  int32_t zy, lo, hi;
  bool to_signed;
} kiln__qreq_rows;

/* rows (1..MR) rows of the full 16 columns of a 4 x 16 byte-format tile over `groups` k quads,
   requantized to dst (row stride ldd bytes). */
typedef void (*kiln__qgemm_ukernel_req)(size_t groups, const void *restrict a,
                                        const void *restrict b, const kiln__qreq_rows *q,
                                        size_t rows, uint8_t *restrict dst, size_t ldd);
void kiln__qgemm_ukq_4x16__avx2_s8u8(size_t groups, const void *restrict a, const void *restrict b,
                                     const kiln__qreq_rows *q, size_t rows, uint8_t *restrict dst,
                                     size_t ldd);
/* Packs rows [r0, r0 + 16) x k of a byte-format B panel block from a source with rs == 1 (k x n
   row-major: ks is the row length): 16 columns per k quad, 64 bytes; `xor` (0 or 0x80) applies
   the +-128 shift. Adds each column's sum of stored values (as int8 when `stored_signed`) to
   sums[0..16), unless sums is NULL. Full panels only (16 columns, kc a multiple of 4). */
void kiln__qpack_b16_bytes__avx2(const uint8_t *src, size_t ks, size_t kc, uint8_t xor_,
                                 bool stored_signed, uint8_t *dst, int32_t *sums);
void kiln__qgemm_uk_4x16__vnni_s8u8(size_t groups, const void *restrict a, const void *restrict b,
                                    int32_t *restrict c, size_t ldc, bool accumulate);
void kiln__qgemm_uk_4x8__vnni_s8u8(size_t groups, const void *restrict a, const void *restrict b,
                                   int32_t *restrict c, size_t ldc, bool accumulate);
/* The requantizing tile over np (1-4) adjacent full 16-column B panels, pstride bytes apart (a
   4 x 16 np tile; dst columns 16 np). */
typedef void (*kiln__qgemm_ukernel_reqn)(size_t groups, const void *restrict a,
                                         const void *restrict b, size_t pstride, size_t np,
                                         const kiln__qreq_rows *q, size_t rows,
                                         uint8_t *restrict dst, size_t ldd);
void kiln__qgemm_ukqn_vnni_s8u8(size_t groups, const void *restrict a, const void *restrict b,
                                size_t pstride, size_t np, const kiln__qreq_rows *q, size_t rows,
                                uint8_t *restrict dst, size_t ldd);
void kiln__qgemm_ukc_vnni_s8u8(size_t groups, const uint8_t *a, size_t a_ps, size_t rows,
                               const uint8_t *b, size_t bw, size_t cols, int32_t *c, size_t ldc,
                               bool accumulate);
/* kiln__qpack_taps' step for 64 channels of one tap across a full 16-column panel: column i's 64
   bytes from col[i] (flipped by xor_), stored as 16 k quads of 16 columns (a 16 x 16 transpose
   of 32-bit words, 1 KiB at dst). AVX-512F. */
void kiln__qpack_tap64__avx512(const uint8_t *const col[16], uint8_t xor_, uint8_t *dst);
void kiln__qgemm_uk_6x16__avxvnni(size_t groups, const void *restrict a, const void *restrict b,
                                  int32_t *restrict c, size_t ldc, bool accumulate);
void kiln__qgemm_uk_6x32__avx512vnni(size_t groups, const void *restrict a,
                                     const void *restrict b, int32_t *restrict c, size_t ldc,
                                     bool accumulate);

void kiln__q_quantize__avx2(const float *x, size_t n, float scale, int32_t zp, bool to_signed,
                            void *y);
void kiln__q_quantize__avx512(const float *x, size_t n, float scale, int32_t zp, bool to_signed,
                              void *y); /* AVX512-BW */
void kiln__q_dequantize__avx2(const void *x, bool from_signed, size_t n, int32_t zp, float scale,
                              float *y);
void kiln__q_minmax__avx2(const float *x, size_t n, float *mn, float *mx);

#endif
