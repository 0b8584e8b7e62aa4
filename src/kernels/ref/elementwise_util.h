/* Generators for the elementwise kernels: per-dtype X-macro lists and the loop bodies they expand
 * into. Private to kernels/ref/elementwise.c.
 *
 * A dtype list entry is X(args..., sfx, DT, TS, CT, LD, ST):
 *   sfx  function-name suffix        DT  KILN_DTYPE_ suffix
 *   TS   storage type                CT  compute type (float for the 16-bit floats)
 *   LD   storage -> compute          ST  compute -> storage
 * An op's math is a macro EXPR(CT, x[, y], p) evaluated in the compute type; `p` points at the
 * op's ew_args (attributes). <tgmath.h> makes the math functions follow the compute type, so
 * float32 runs on the float functions and float64 on the double ones. */
#ifndef KILN_KERNELS_REF_ELEMENTWISE_UTIL_H
#define KILN_KERNELS_REF_ELEMENTWISE_UTIL_H

#include "ir/op.h"

#include <stddef.h>
#include <tgmath.h>

/* Attributes and type information an elementwise kernel may read. */
typedef struct ew_args {
  double alpha, beta, gamma;
  double lo, hi;      /* Clip bounds for float types */
  int64_t ilo, ihi;   /* ... for signed integers */
  uint64_t ulo, uhi;  /* ... for unsigned integers */
  bool has_lo, has_hi;
  int mode;           /* Mod: fmod; BitShift: 1 = left; IsInf: bit 0 +inf, bit 1 -inf; Gelu: tanh */
  kiln_dtype ta, tb;  /* operand dtypes, for mixed-type kernels (Pow) */
} ew_args;

/* out[i] = f(in[i]) over n contiguous elements. */
typedef void (*ew_unary_fn)(const void *in, void *out, size_t n, const ew_args *p);
/* o[i] = f(a[i * sa], b[i * sb]) over n elements; strides are in elements (usually 0 or 1). */
typedef void (*ew_binary_fn)(const void *a, ptrdiff_t sa, const void *b, ptrdiff_t sb, void *o,
                             size_t n, const ew_args *p);

#define EW_ID(x) (x)
#define EW_TO_BOOL(x) ((uint8_t)((x) != 0))

/* ---- dtype lists -------------------------------------------------------------------------------- */

#define EW_FLOATS(X, ...)                                                                     \
  X(__VA_ARGS__, f32, FLOAT, float, float, EW_ID, EW_ID)                                      \
  X(__VA_ARGS__, f64, DOUBLE, double, double, EW_ID, EW_ID)                                   \
  X(__VA_ARGS__, f16, FLOAT16, uint16_t, float, kiln__f16_to_f32, kiln__f32_to_f16)           \
  X(__VA_ARGS__, bf16, BFLOAT16, uint16_t, float, kiln__bf16_to_f32, kiln__f32_to_bf16)
#define EW_SINTS(X, ...)                                                                      \
  X(__VA_ARGS__, i8, INT8, int8_t, int8_t, EW_ID, EW_ID)                                      \
  X(__VA_ARGS__, i16, INT16, int16_t, int16_t, EW_ID, EW_ID)                                  \
  X(__VA_ARGS__, i32, INT32, int32_t, int32_t, EW_ID, EW_ID)                                  \
  X(__VA_ARGS__, i64, INT64, int64_t, int64_t, EW_ID, EW_ID)
#define EW_UINTS(X, ...)                                                                      \
  X(__VA_ARGS__, u8, UINT8, uint8_t, uint8_t, EW_ID, EW_ID)                                   \
  X(__VA_ARGS__, u16, UINT16, uint16_t, uint16_t, EW_ID, EW_ID)                               \
  X(__VA_ARGS__, u32, UINT32, uint32_t, uint32_t, EW_ID, EW_ID)                               \
  X(__VA_ARGS__, u64, UINT64, uint64_t, uint64_t, EW_ID, EW_ID)
#define EW_BOOLS(X, ...) X(__VA_ARGS__, b8, BOOL, uint8_t, uint8_t, EW_ID, EW_TO_BOOL)

#define EW_INTS(X, ...) EW_SINTS(X, __VA_ARGS__) EW_UINTS(X, __VA_ARGS__)
#define EW_SIGNED(X, ...) EW_FLOATS(X, __VA_ARGS__) EW_SINTS(X, __VA_ARGS__)
#define EW_NUMERIC(X, ...) EW_FLOATS(X, __VA_ARGS__) EW_INTS(X, __VA_ARGS__)
#define EW_ALL(X, ...) EW_NUMERIC(X, __VA_ARGS__) EW_BOOLS(X, __VA_ARGS__)

/* A table entry: [KILN_DTYPE_FLOAT] = relu_f32, */
#define EW_TAB(op, EXPR, sfx, DT, ...) [KILN_DTYPE_##DT] = op##_##sfx,

/* ---- loop bodies -------------------------------------------------------------------------------- */

#define EW_UNARY_BODY(fname, TS, TO, CT, LD, STO, EXPR)                                       \
  static void fname(const void *in_, void *out_, size_t n, const ew_args *p) {                \
    const TS *in = in_;                                                                       \
    TO *out = out_;                                                                           \
    (void)p;                                                                                  \
    for (size_t i = 0; i < n; i++) {                                                          \
      CT x = LD(in[i]);                                                                       \
      out[i] = (TO)STO(EXPR(CT, x, p));                                                       \
    }                                                                                         \
  }

/* Same-type result. */
#define EW_UNARY_FN(op, EXPR, sfx, DT, TS, CT, LD, ST) \
  EW_UNARY_BODY(op##_##sfx, TS, TS, CT, LD, ST, EXPR)
/* Boolean result. */
#define EW_UNARY_BFN(op, EXPR, sfx, DT, TS, CT, LD, ST) \
  EW_UNARY_BODY(op##_##sfx, TS, uint8_t, CT, LD, EW_TO_BOOL, EXPR)

/* The three stride cases get their own loops so the common ones vectorize. */
#define EW_BINARY_BODY(fname, TS, TO, CT, LD, STO, EXPR)                                      \
  static void fname(const void *a_, ptrdiff_t sa, const void *b_, ptrdiff_t sb, void *o_,    \
                    size_t n, const ew_args *p) {                                             \
    const TS *a = a_, *b = b_;                                                                \
    TO *o = o_;                                                                               \
    (void)p;                                                                                  \
    if (sa == 1 && sb == 1) {                                                                 \
      for (size_t i = 0; i < n; i++) {                                                        \
        CT x = LD(a[i]), y = LD(b[i]);                                                        \
        o[i] = (TO)STO(EXPR(CT, x, y, p));                                                    \
      }                                                                                       \
    } else if (sa == 0 && sb == 1) {                                                          \
      CT x = LD(a[0]);                                                                        \
      for (size_t i = 0; i < n; i++) {                                                        \
        CT y = LD(b[i]);                                                                      \
        o[i] = (TO)STO(EXPR(CT, x, y, p));                                                    \
      }                                                                                       \
    } else if (sa == 1 && sb == 0) {                                                          \
      CT y = LD(b[0]);                                                                        \
      for (size_t i = 0; i < n; i++) {                                                        \
        CT x = LD(a[i]);                                                                      \
        o[i] = (TO)STO(EXPR(CT, x, y, p));                                                    \
      }                                                                                       \
    } else {                                                                                  \
      for (size_t i = 0; i < n; i++) {                                                        \
        CT x = LD(a[(ptrdiff_t)i * sa]), y = LD(b[(ptrdiff_t)i * sb]);                        \
        o[i] = (TO)STO(EXPR(CT, x, y, p));                                                    \
      }                                                                                       \
    }                                                                                         \
  }

#define EW_BINARY_FN(op, EXPR, sfx, DT, TS, CT, LD, ST) \
  EW_BINARY_BODY(op##_##sfx, TS, TS, CT, LD, ST, EXPR)
#define EW_BINARY_BFN(op, EXPR, sfx, DT, TS, CT, LD, ST) \
  EW_BINARY_BODY(op##_##sfx, TS, uint8_t, CT, LD, EW_TO_BOOL, EXPR)

/* Defines op_<sfx> for every dtype of LIST and the table op_tab indexed by dtype. */
#define EW_UNARY_TABLE(op, EXPR, LIST)  \
  LIST(EW_UNARY_FN, op, EXPR)           \
  static const ew_unary_fn op##_tab[KILN_DTYPE_COUNT] = {LIST(EW_TAB, op, EXPR)};
#define EW_UNARY_BTABLE(op, EXPR, LIST) \
  LIST(EW_UNARY_BFN, op, EXPR)          \
  static const ew_unary_fn op##_tab[KILN_DTYPE_COUNT] = {LIST(EW_TAB, op, EXPR)};
#define EW_BINARY_TABLE(op, EXPR, LIST) \
  LIST(EW_BINARY_FN, op, EXPR)          \
  static const ew_binary_fn op##_tab[KILN_DTYPE_COUNT] = {LIST(EW_TAB, op, EXPR)};
#define EW_BINARY_BTABLE(op, EXPR, LIST) \
  LIST(EW_BINARY_BFN, op, EXPR)          \
  static const ew_binary_fn op##_tab[KILN_DTYPE_COUNT] = {LIST(EW_TAB, op, EXPR)};

/* float64 -> float16, rounded once to nearest even (going through float32 can round twice). */
static inline uint16_t ew_f64_to_f16(double d) {
  uint16_t sign = signbit(d) ? 0x8000 : 0;
  double a = fabs(d);
  if (a != a) return (uint16_t)(sign | 0x7e00);
  if (a >= 65520.0) return (uint16_t)(sign | 0x7c00);
  if (a < 6.103515625e-05) /* below 2^-14: subnormal, in units of 2^-24 */
    return (uint16_t)(sign | (uint16_t)nearbyint(a * 16777216.0));
  int e;
  (void)frexp(a, &e);       /* a = m * 2^e, m in [0.5, 1) */
  e -= 1;                   /* a in [2^e, 2^(e+1)) */
  double m = nearbyint(ldexp(a, 10 - e));
  if (m >= 2048.0) {
    m = 1024.0;
    e++;
  }
  if (e > 15) return (uint16_t)(sign | 0x7c00);
  return (uint16_t)(sign | (uint16_t)((e + 15) << 10) | (uint16_t)((int)m - 1024));
}

#endif
