/* Reference kernels: reductions (Reduce*, ArgMax, ArgMin), the softmax family (Softmax,
 * LogSoftmax, Hardmax), CumSum, TopK and LpNormalization.
 *
 * Every Reduce* op goes through one driver. The input's dims are merged into runs of kept and
 * reduced dims (size-1 dims dropped), the input is walked once in memory order and each element is
 * folded into the accumulator of its output element. The innermost run is a tight loop: a reduced
 * run folds into one accumulator, a kept run folds elementwise into a row of accumulators. So the
 * common layouts (reduce the last axes, reduce the leading axes, reduce a middle block) read the
 * input sequentially, and any set of axes works without a transpose.
 *
 * Accumulators are doubles, or int64 for the integer reductions that must stay exact (sum,
 * product, max, min, L1, sum of squares of integer tensors). An empty reduction yields the
 * identity: 0 for sums, 1 for products, -inf / +inf (the type's lowest / highest integer) for
 * max / min, -inf for ReduceLogSum and ReduceLogSumExp, NaN for ReduceMean. With
 * noop_with_empty_axes and no axes nothing is reduced: each element is its own one-element
 * reduction, so the output is the input for sum/mean/max/min/prod (and |x|, x^2, log x for the
 * ops that transform elements). */
#include "ir/op.h"

#include <math.h>

/* ---- shared helpers ------------------------------------------------------------------------- */

static bool is_numeric(kiln_dtype t) {
  return kiln__dtype_is_float(t) || kiln__dtype_is_signed_int(t) ||
         (kiln__dtype_is_unsigned_int(t) && t != KILN_DTYPE_BOOL);
}

static bool is_int(kiln_dtype t) { return !kiln__dtype_is_float(t); }

/* Splits a shape around `axis` into outer x n x inner element counts. */
static void split3(const kiln_tensor *t, int axis, size_t *outer, size_t *n, size_t *inner) {
  size_t o = 1, in = 1;
  for (int i = 0; i < axis; i++) o *= (size_t)t->dims[i];
  for (int i = axis + 1; i < t->rank; i++) in *= (size_t)t->dims[i];
  *outer = o;
  *n = (size_t)t->dims[axis];
  *inner = in;
}

static kiln_status need_numeric(const kiln__kctx *c, const kiln_tensor *t) {
  if (!is_numeric(t->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "%s does not support %s tensors",
                      c->node->op_type, kiln_dtype_name(t->dtype));
  return KILN_OK;
}

static kiln_status need_float(const kiln__kctx *c, const kiln_tensor *t) {
  if (!kiln__dtype_is_float(t->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "%s needs a floating-point tensor, got %s",
                      c->node->op_type, kiln_dtype_name(t->dtype));
  return KILN_OK;
}

static kiln_status bad_axis(const kiln__kctx *c, int64_t axis, int rank) {
  return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                    (long long)axis, rank);
}

static kiln_status short_scratch(kiln__kctx *c, size_t need) {
  return kiln__fail(c->err, KILN_INTERNAL, "%s needs %zu bytes of scratch, got %zu",
                    c->node->op_type, need, c->scratch_bytes);
}

/* ---- the reduction driver ------------------------------------------------------------------- */

typedef enum red_kind {
  RED_SUM,
  RED_MEAN,
  RED_PROD,
  RED_MAX,
  RED_MIN,
  RED_L1,
  RED_L2,
  RED_LOGSUM,
  RED_LOGSUMEXP,
  RED_SUMSQUARE,
} red_kind;

/* How one element enters its accumulator. */
typedef enum red_step {
  STEP_ADD,
  STEP_ADD_ABS,
  STEP_ADD_SQUARE,
  STEP_ADD_EXP, /* adds exp(x - shift), shift being the output element's maximum */
  STEP_MUL,
  STEP_MAX,
  STEP_MIN,
} red_step;

static red_step kind_step(red_kind k) {
  switch (k) {
    case RED_PROD: return STEP_MUL;
    case RED_MAX: return STEP_MAX;
    case RED_MIN: return STEP_MIN;
    case RED_L1: return STEP_ADD_ABS;
    case RED_L2:
    case RED_SUMSQUARE: return STEP_ADD_SQUARE;
    case RED_LOGSUMEXP: return STEP_ADD_EXP;
    default: return STEP_ADD;
  }
}

/* Integer tensors keep int64 accumulators where the result is an integer anyway. */
static bool kind_exact_int(red_kind k) {
  return k != RED_L2 && k != RED_LOGSUM && k != RED_LOGSUMEXP;
}

/* The input's dims merged into alternating runs of kept and reduced dims. */
typedef struct red_plan {
  int n;
  int64_t size[KILN_MAX_RANK];
  bool red[KILN_MAX_RANK];
  size_t ostride[KILN_MAX_RANK]; /* output stride of each run; 0 for reduced runs */
  size_t in_count, out_count, red_count;
} red_plan;

static void plan_reduce(const kiln_tensor *x, const bool *mask, red_plan *p) {
  p->n = 0;
  p->in_count = p->out_count = p->red_count = 1;
  for (int i = 0; i < x->rank; i++) {
    int64_t d = x->dims[i];
    p->in_count *= (size_t)d;
    if (mask[i]) p->red_count *= (size_t)d;
    else p->out_count *= (size_t)d;
    if (d == 1) continue;
    if (p->n > 0 && p->red[p->n - 1] == mask[i]) {
      p->size[p->n - 1] *= d;
    } else {
      p->size[p->n] = d;
      p->red[p->n] = mask[i];
      p->n++;
    }
  }
  if (p->n == 0) { /* one element */
    p->size[0] = 1;
    p->red[0] = false;
    p->n = 1;
  }
  size_t s = 1;
  for (int g = p->n - 1; g >= 0; g--) {
    p->ostride[g] = p->red[g] ? 0 : s;
    if (!p->red[g]) s *= (size_t)p->size[g];
  }
}

/* exp for float32 in portable C that compilers vectorize: range reduction by ln 2 (rounding with
   the 1.5 * 2^23 trick, so no floor call), Cephes' expf polynomial (about 1 ulp) and the scale
   2^n built from bits. Clamping works on the bit patterns with masks, because float compares may
   trap and then block vectorization under the default -ftrapping-math. Below -87.3 the result is
   0, above 88 it saturates at e^88; NaN stays NaN. Used where float32 exponentials are summed
   (softmax, LogSumExp). */
static inline float exp_f32(float x) {
  const uint32_t lo = 0xC2AEAC50u /* -87.33655f */, hi = 0x42B00000u /* 88.0f */;
  uint32_t u;
  memcpy(&u, &x, 4);
  /* Negative floats order as unsigned bit patterns up to -inf (0xFF800000); NaNs lie above. */
  uint32_t under = 0u - (uint32_t)((u > lo) & (u <= 0xFF800000u));
  u = (u & ~under) | (lo & under);
  uint32_t over = 0u - (uint32_t)((u > hi) & (u <= 0x7F800000u));
  u = (u & ~over) | (hi & over);
  memcpy(&x, &u, 4);
  const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
  float t = x * 1.44269504f + magic;
  float n = t - magic;
  float r = x - n * 0.693359375f + n * 2.12194440e-4f; /* ln 2 in two parts */
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t tb, mb;
  memcpy(&tb, &t, 4);
  memcpy(&mb, &magic, 4);
  uint32_t sb = (tb - mb + 127u) << 23; /* 2^n */
  float scale, res;
  memcpy(&scale, &sb, 4);
  res = p * scale;
  memcpy(&u, &res, 4);
  u &= ~under;
  memcpy(&res, &u, 4);
  return res;
}

/* Folds n contiguous elements into acc[0] (red) or acc[0..n) (kept), for float and double.
   Reduced runs keep 8 independent partial results so the loop vectorizes. Max and min let NaN
   win, as numpy does. */
#define KILN_FOLD_LANES(ID, MAP, COMBINE)                                                       \
  do {                                                                                          \
    double l[8];                                                                                \
    for (int q = 0; q < 8; q++) l[q] = (ID);                                                    \
    l[0] = acc[0];                                                                              \
    size_t j = 0;                                                                               \
    for (; j + 8 <= n; j += 8)                                                                  \
      for (int q = 0; q < 8; q++) {                                                             \
        double v = MAP(x[j + q], sh[0]);                                                        \
        l[q] = COMBINE(l[q], v);                                                                \
      }                                                                                         \
    for (; j < n; j++) {                                                                        \
      double v = MAP(x[j], sh[0]);                                                              \
      l[0] = COMBINE(l[0], v);                                                                  \
    }                                                                                           \
    for (int q = 1; q < 8; q++) l[0] = COMBINE(l[0], l[q]);                                     \
    acc[0] = l[0];                                                                              \
  } while (0)

#define KILN_FOLD_ROW(MAP, COMBINE)                                                             \
  for (size_t j = 0; j < n; j++) {                                                              \
    double v = MAP(x[j], sh[j]);                                                                \
    acc[j] = COMBINE(acc[j], v);                                                                \
  }

#define MAP_ID(v, s) ((double)(v))
#define MAP_ABS(v, s) fabs((double)(v))
#define MAP_SQUARE(v, s) ((double)(v) * (double)(v))
#define MAP_EXP_F32(v, s) ((double)exp_f32((float)((double)(v) - (s))))
#define MAP_EXP_F64(v, s) exp((double)(v) - (s))
#define COMB_ADD(a, v) ((a) + (v))
#define COMB_MUL(a, v) ((a) * (v))
#define COMB_MAX(a, v) ((v) > (a) || (v) != (v) ? (v) : (a))
#define COMB_MIN(a, v) ((v) < (a) || (v) != (v) ? (v) : (a))

#define KILN_DEF_FOLD(NAME, T, MAP_EXP)                                                        \
  static void NAME(const T *restrict x, size_t n, bool red, red_step step, double *restrict acc, \
                   const double *restrict sh) {                                                 \
    static const double no_shift = 0;                                                           \
    if (!sh) sh = &no_shift;                                                                    \
    if (red) {                                                                                  \
      switch (step) {                                                                           \
        case STEP_ADD: KILN_FOLD_LANES(0, MAP_ID, COMB_ADD); break;                             \
        case STEP_ADD_ABS: KILN_FOLD_LANES(0, MAP_ABS, COMB_ADD); break;                        \
        case STEP_ADD_SQUARE: KILN_FOLD_LANES(0, MAP_SQUARE, COMB_ADD); break;                  \
        case STEP_ADD_EXP: KILN_FOLD_LANES(0, MAP_EXP, COMB_ADD); break;                        \
        case STEP_MUL: KILN_FOLD_LANES(1, MAP_ID, COMB_MUL); break;                             \
        case STEP_MAX: KILN_FOLD_LANES(-INFINITY, MAP_ID, COMB_MAX); break;                     \
        case STEP_MIN: KILN_FOLD_LANES(INFINITY, MAP_ID, COMB_MIN); break;                      \
      }                                                                                         \
      return;                                                                                   \
    }                                                                                           \
    switch (step) {                                                                             \
      case STEP_ADD: KILN_FOLD_ROW(MAP_ID, COMB_ADD) break;                                     \
      case STEP_ADD_ABS: KILN_FOLD_ROW(MAP_ABS, COMB_ADD) break;                                \
      case STEP_ADD_SQUARE: KILN_FOLD_ROW(MAP_SQUARE, COMB_ADD) break;                          \
      case STEP_ADD_EXP: KILN_FOLD_ROW(MAP_EXP, COMB_ADD) break;                                \
      case STEP_MUL: KILN_FOLD_ROW(MAP_ID, COMB_MUL) break;                                     \
      case STEP_MAX: KILN_FOLD_ROW(MAP_ID, COMB_MAX) break;                                     \
      case STEP_MIN: KILN_FOLD_ROW(MAP_ID, COMB_MIN) break;                                     \
    }                                                                                           \
  }

KILN_DEF_FOLD(fold_f32, float, MAP_EXP_F32)
KILN_DEF_FOLD(fold_f64, double, MAP_EXP_F64)
#undef KILN_DEF_FOLD
#undef KILN_FOLD_LANES
#undef KILN_FOLD_ROW
#undef MAP_ID
#undef MAP_ABS
#undef MAP_SQUARE
#undef MAP_EXP_F32
#undef MAP_EXP_F64
#undef COMB_ADD
#undef COMB_MUL
#undef COMB_MAX
#undef COMB_MIN

/* Other dtypes into double accumulators: converted a chunk at a time. */
static void fold_any(const void *x, kiln_dtype t, size_t off, size_t n, bool red, red_step step,
                     double *acc, const double *sh) {
  double buf[256];
  for (size_t b = 0; b < n; b += KILN__ARRAY_LEN(buf)) {
    size_t m = KILN__MIN(n - b, KILN__ARRAY_LEN(buf));
    for (size_t j = 0; j < m; j++) buf[j] = kiln__load_f64(x, t, off + b + j);
    fold_f64(buf, m, red, step, red ? acc : acc + b, sh ? (red ? sh : sh + b) : NULL);
  }
}

/* Integers into int64 accumulators; wrapping arithmetic, as the integer types themselves wrap. */
static void fold_i64(const void *x, kiln_dtype t, size_t off, size_t n, bool red, red_step step,
                     int64_t *acc) {
  for (size_t j = 0; j < n; j++) {
    int64_t v = kiln__load_i64(x, t, off + j);
    int64_t *a = red ? acc : acc + j;
    switch (step) {
      case STEP_ADD: *a = (int64_t)((uint64_t)*a + (uint64_t)v); break;
      case STEP_ADD_ABS: *a = (int64_t)((uint64_t)*a + (v < 0 ? 0 - (uint64_t)v : (uint64_t)v)); break;
      case STEP_ADD_SQUARE: *a = (int64_t)((uint64_t)*a + (uint64_t)v * (uint64_t)v); break;
      case STEP_MUL: *a = (int64_t)((uint64_t)*a * (uint64_t)v); break;
      case STEP_MAX:
        if (v > *a) *a = v;
        break;
      case STEP_MIN:
        if (v < *a) *a = v;
        break;
      case STEP_ADD_EXP: break; /* never exact-int */
    }
  }
}

/* Walks the input in memory order, folding each innermost run into its accumulators. */
static void reduce_walk(const red_plan *p, const void *x, kiln_dtype t, bool exact_int,
                        red_step step, void *acc, const double *sh) {
  if (p->in_count == 0) return;
  int last = p->n - 1;
  size_t len = (size_t)p->size[last];
  bool red = p->red[last];
  int64_t idx[KILN_MAX_RANK] = {0};
  size_t in_off = 0, out_off = 0;
  for (;;) {
    if (exact_int) {
      fold_i64(x, t, in_off, len, red, step, (int64_t *)acc + out_off);
    } else {
      double *a = (double *)acc + out_off;
      const double *s = sh ? sh + out_off : NULL;
      if (t == KILN_DTYPE_FLOAT) fold_f32((const float *)x + in_off, len, red, step, a, s);
      else if (t == KILN_DTYPE_DOUBLE) fold_f64((const double *)x + in_off, len, red, step, a, s);
      else fold_any(x, t, in_off, len, red, step, a, s);
    }
    in_off += len;
    int g = last - 1;
    for (; g >= 0; g--) {
      out_off += p->ostride[g];
      if (++idx[g] < p->size[g]) break;
      out_off -= p->ostride[g] * (size_t)p->size[g];
      idx[g] = 0;
    }
    if (g < 0) break;
  }
}

static void int_range(kiln_dtype t, int64_t *lo, int64_t *hi) {
  switch (t) {
    case KILN_DTYPE_INT8: *lo = INT8_MIN, *hi = INT8_MAX; break;
    case KILN_DTYPE_INT16: *lo = INT16_MIN, *hi = INT16_MAX; break;
    case KILN_DTYPE_INT32: *lo = INT32_MIN, *hi = INT32_MAX; break;
    case KILN_DTYPE_BOOL: *lo = 0, *hi = 1; break;
    case KILN_DTYPE_UINT8: *lo = 0, *hi = UINT8_MAX; break;
    case KILN_DTYPE_UINT16: *lo = 0, *hi = UINT16_MAX; break;
    case KILN_DTYPE_UINT32: *lo = 0, *hi = UINT32_MAX; break;
    case KILN_DTYPE_UINT64: *lo = 0, *hi = INT64_MAX; break;
    default: *lo = INT64_MIN, *hi = INT64_MAX; break;
  }
}

/* ReduceSum takes axes as an input from opset 13, the other reductions from opset 18. */
static bool axes_are_input(const kiln__node *n) {
  return n->opset >= (strcmp(n->op_type, "ReduceSum") ? 18 : 13);
}

/* Which input axes are reduced. */
static kiln_status reduce_mask(kiln__kctx *c, bool *mask) {
  const kiln_tensor *x = c->in[0];
  int rank = x->rank;
  int64_t axes[KILN_MAX_RANK];
  size_t n = 0;
  const kiln_tensor *ain = c->n_in > 1 ? c->in[1] : NULL;
  if (axes_are_input(c->node)) {
    if (ain && kiln_tensor_count(ain) > 0) {
      kiln_status st = kiln__read_ints(c, ain, axes, KILN_MAX_RANK, &n);
      if (st != KILN_OK) return st;
    }
  } else {
    if (ain)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "%s takes axes as an input only from opset %d (model imports %lld)",
                        c->node->op_type, strcmp(c->node->op_type, "ReduceSum") ? 18 : 13,
                        (long long)c->node->opset);
    const int64_t *v = NULL;
    n = kiln__attr_ints(c->node, "axes", &v);
    if (n > KILN_MAX_RANK)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%zu axes for a tensor of rank %d", n,
                        rank);
    for (size_t i = 0; i < n; i++) axes[i] = v[i];
  }
  if (n == 0) {
    bool noop = kiln__attr_int(c->node, "noop_with_empty_axes", 0) != 0;
    for (int i = 0; i < rank; i++) mask[i] = !noop;
    return KILN_OK;
  }
  for (int i = 0; i < rank; i++) mask[i] = false;
  for (size_t i = 0; i < n; i++) {
    int a;
    if (!kiln__norm_axis(axes[i], rank, &a)) return bad_axis(c, axes[i], rank);
    mask[a] = true;
  }
  return KILN_OK;
}

static kiln_status infer_reduce(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  /* Bool is accepted by ReduceMax and ReduceMin (opset 20): they are any / all. */
  bool bool_ok = !strcmp(c->node->op_type, "ReduceMax") || !strcmp(c->node->op_type, "ReduceMin");
  kiln_status st = bool_ok && x->dtype == KILN_DTYPE_BOOL ? KILN_OK : need_numeric(c, x);
  if (st != KILN_OK) return st;
  bool mask[KILN_MAX_RANK];
  if ((st = reduce_mask(c, mask)) != KILN_OK) return st;
  bool keep = kiln__attr_int(c->node, "keepdims", 1) != 0;
  int64_t dims[KILN_MAX_RANK];
  int r = 0;
  for (int i = 0; i < x->rank; i++) {
    if (!mask[i]) dims[r++] = x->dims[i];
    else if (keep) dims[r++] = 1;
  }
  kiln__set_shape(c->out[0], x->dtype, r, dims);
  return KILN_OK;
}

static size_t reduce_acc_bytes(red_kind kind, size_t out_count) {
  return out_count * sizeof(double) * (kind == RED_LOGSUMEXP ? 2 : 1);
}

static size_t scratch_reduce_kind(const kiln__kctx *c, red_kind kind) {
  return c->out[0] ? reduce_acc_bytes(kind, kiln_tensor_count(c->out[0])) : 0;
}

static kiln_status run_reduce_kind(kiln__kctx *c, red_kind kind) {
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  bool mask[KILN_MAX_RANK];
  kiln_status st = reduce_mask(c, mask);
  if (st != KILN_OK) return st;
  red_plan p;
  plan_reduce(x, mask, &p);
  size_t need = reduce_acc_bytes(kind, p.out_count);
  if (c->scratch_bytes < need || (need && !c->scratch)) return short_scratch(c, need);
  if (p.out_count == 0) return KILN_OK;
  kiln_dtype t = x->dtype;
  red_step step = kind_step(kind);
  size_t no = p.out_count;

  if (is_int(t) && kind_exact_int(kind)) {
    int64_t *acc = c->scratch, lo, hi;
    int_range(t, &lo, &hi);
    int64_t init = step == STEP_MUL ? 1 : step == STEP_MAX ? lo : step == STEP_MIN ? hi : 0;
    for (size_t o = 0; o < no; o++) acc[o] = init;
    reduce_walk(&p, x->data, t, true, step, acc, NULL);
    for (size_t o = 0; o < no; o++) {
      if (kind == RED_MEAN) kiln__store_f64(y->data, t, o, (double)acc[o] / (double)p.red_count);
      else kiln__store_i64(y->data, t, o, acc[o]);
    }
    return KILN_OK;
  }

  double *acc = c->scratch, *shift = NULL;
  if (kind == RED_LOGSUMEXP) {
    /* Two passes for stability: the maximum, then sum(exp(x - max)). */
    shift = acc + no;
    for (size_t o = 0; o < no; o++) shift[o] = -INFINITY;
    reduce_walk(&p, x->data, t, false, STEP_MAX, shift, NULL);
    for (size_t o = 0; o < no; o++)
      if (!isfinite(shift[o])) shift[o] = 0; /* +-inf and NaN come out right unshifted */
  }
  double init = step == STEP_MUL ? 1 : step == STEP_MAX ? -INFINITY
                : step == STEP_MIN ? INFINITY : 0;
  for (size_t o = 0; o < no; o++) acc[o] = init;
  reduce_walk(&p, x->data, t, false, step, acc, shift);
  for (size_t o = 0; o < no; o++) {
    double a = acc[o];
    switch (kind) {
      case RED_MEAN: a /= (double)p.red_count; break;
      case RED_L2: a = sqrt(a); break;
      case RED_LOGSUM: a = log(a); break;
      case RED_LOGSUMEXP: a = log(a) + shift[o]; break;
      default: break;
    }
    if (t == KILN_DTYPE_FLOAT) ((float *)y->data)[o] = (float)a;
    else kiln__store_f64(y->data, t, o, a);
  }
  return KILN_OK;
}

#define KILN_DEF_REDUCE(FN, KIND)                                                            \
  static kiln_status run_##FN(kiln__kctx *c) { return run_reduce_kind(c, KIND); }            \
  static size_t scratch_##FN(const kiln__kctx *c) { return scratch_reduce_kind(c, KIND); }

KILN_DEF_REDUCE(reduce_sum, RED_SUM)
KILN_DEF_REDUCE(reduce_mean, RED_MEAN)
KILN_DEF_REDUCE(reduce_prod, RED_PROD)
KILN_DEF_REDUCE(reduce_max, RED_MAX)
KILN_DEF_REDUCE(reduce_min, RED_MIN)
KILN_DEF_REDUCE(reduce_l1, RED_L1)
KILN_DEF_REDUCE(reduce_l2, RED_L2)
KILN_DEF_REDUCE(reduce_log_sum, RED_LOGSUM)
KILN_DEF_REDUCE(reduce_log_sum_exp, RED_LOGSUMEXP)
KILN_DEF_REDUCE(reduce_sum_square, RED_SUMSQUARE)
#undef KILN_DEF_REDUCE

/* ---- ArgMax, ArgMin ------------------------------------------------------------------------- */

static kiln_status arg_axis(kiln__kctx *c, int *axis) {
  int64_t a = kiln__attr_int(c->node, "axis", 0);
  if (!kiln__norm_axis(a, c->in[0]->rank, axis)) return bad_axis(c, a, c->in[0]->rank);
  return KILN_OK;
}

static kiln_status infer_arg(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status st = need_numeric(c, x);
  if (st != KILN_OK) return st;
  int axis;
  if ((st = arg_axis(c, &axis)) != KILN_OK) return st;
  bool keep = kiln__attr_int(c->node, "keepdims", 1) != 0;
  int64_t dims[KILN_MAX_RANK];
  int r = 0;
  for (int i = 0; i < x->rank; i++) {
    if (i != axis) dims[r++] = x->dims[i];
    else if (keep) dims[r++] = 1;
  }
  kiln__set_shape(c->out[0], KILN_DTYPE_INT64, r, dims);
  return KILN_OK;
}

/* The index of the extreme along the axis for every (outer, inner) position. `better(v, b)` says
   whether v replaces the best so far; ties keep the first index unless `last`. */
#define KILN_ARG_LOOP(T, LOAD)                                                                \
  for (size_t o = 0; o < outer; o++)                                                          \
    for (size_t j = 0; j < inner; j++) {                                                      \
      size_t base = o * n * inner + j;                                                        \
      T best = LOAD(base);                                                                    \
      int64_t bi = 0;                                                                         \
      for (size_t k = 1; k < n; k++) {                                                        \
        T v = LOAD(base + k * inner);                                                         \
        bool take = is_max ? (last ? v >= best : v > best) : (last ? v <= best : v < best);   \
        if (take) {                                                                           \
          best = v;                                                                           \
          bi = (int64_t)k;                                                                    \
        }                                                                                     \
      }                                                                                       \
      y[o * inner + j] = bi;                                                                  \
    }

static kiln_status run_arg(kiln__kctx *c, bool is_max) {
  const kiln_tensor *x = c->in[0];
  int axis;
  kiln_status st = arg_axis(c, &axis);
  if (st != KILN_OK) return st;
  size_t outer, n, inner;
  split3(x, axis, &outer, &n, &inner);
  if (outer * inner == 0) return KILN_OK;
  if (n == 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s over an empty axis %d",
                      c->node->op_type, axis);
  bool last = kiln__attr_int(c->node, "select_last_index", 0) != 0;
  int64_t *y = c->out[0]->data;
  const void *xd = x->data;
  kiln_dtype t = x->dtype;
#define LOAD_F32(i) (((const float *)xd)[i])
#define LOAD_F64(i) kiln__load_f64(xd, t, (i))
#define LOAD_I64(i) kiln__load_i64(xd, t, (i))
  if (t == KILN_DTYPE_FLOAT) {
    KILN_ARG_LOOP(float, LOAD_F32)
  } else if (kiln__dtype_is_float(t)) {
    KILN_ARG_LOOP(double, LOAD_F64)
  } else {
    KILN_ARG_LOOP(int64_t, LOAD_I64)
  }
#undef LOAD_F32
#undef LOAD_F64
#undef LOAD_I64
  return KILN_OK;
}
#undef KILN_ARG_LOOP

static kiln_status run_argmax(kiln__kctx *c) { return run_arg(c, true); }
static kiln_status run_argmin(kiln__kctx *c) { return run_arg(c, false); }

/* ---- Softmax, LogSoftmax, Hardmax ----------------------------------------------------------- */

/* Before opset 13 the input is coerced to 2D at `axis` (default 1); from 13 the op works along
   one axis (default -1). Either way the tensor splits into outer x n x inner. */
static kiln_status softmax_split(const kiln__kctx *c, size_t *outer, size_t *n, size_t *inner) {
  const kiln_tensor *x = c->in[0];
  int rank = x->rank;
  if (c->node->opset < 13) {
    int64_t a = kiln__attr_int(c->node, "axis", 1);
    if (a < -rank || a > rank) return bad_axis(c, a, rank);
    int axis = (int)(a < 0 ? a + rank : a);
    size_t o = 1, m = 1;
    for (int i = 0; i < rank; i++) {
      if (i < axis) o *= (size_t)x->dims[i];
      else m *= (size_t)x->dims[i];
    }
    *outer = o;
    *n = m;
    *inner = 1;
    return KILN_OK;
  }
  int64_t a = kiln__attr_int(c->node, "axis", -1);
  int axis;
  if (!kiln__norm_axis(a, rank, &axis)) return bad_axis(c, a, rank);
  split3(x, axis, outer, n, inner);
  return KILN_OK;
}

static kiln_status infer_softmax(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status st = need_float(c, x);
  if (st != KILN_OK) return st;
  size_t outer, n, inner;
  if ((st = softmax_split(c, &outer, &n, &inner)) != KILN_OK) return st;
  kiln__set_shape(c->out[0], x->dtype, x->rank, x->dims);
  return KILN_OK;
}

static size_t scratch_softmax(const kiln__kctx *c) {
  size_t outer = 0, n = 0, inner = 0;
  /* The split cannot fail here: infer validated the axis. */
  if (softmax_split(c, &outer, &n, &inner) != KILN_OK) return 0;
  return c->in[0]->dtype == KILN_DTYPE_FLOAT && inner > 1 ? 2 * inner * sizeof(float) : 0;
}

/* float32: rows (inner == 1) with 8 partial maxima and sums so the loops vectorize; columns
   (inner > 1) vectorized across the inner dim with a running max and sum per column in scratch. */
static void softmax_row_f32(const float *restrict x, float *restrict y, size_t n, bool lg) {
  float l[8];
  for (int q = 0; q < 8; q++) l[q] = -INFINITY;
  size_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int q = 0; q < 8; q++) l[q] = x[k + q] > l[q] ? x[k + q] : l[q];
  for (; k < n; k++) l[0] = x[k] > l[0] ? x[k] : l[0];
  float m = l[0];
  for (int q = 1; q < 8; q++) m = l[q] > m ? l[q] : m;
  if (m == -INFINITY) m = 0;
  for (int q = 0; q < 8; q++) l[q] = 0;
  k = 0;
  if (lg) {
    for (; k + 8 <= n; k += 8)
      for (int q = 0; q < 8; q++) l[q] += exp_f32(x[k + q] - m);
    for (; k < n; k++) l[0] += exp_f32(x[k] - m);
  } else {
    for (; k + 8 <= n; k += 8)
      for (int q = 0; q < 8; q++) {
        float e = exp_f32(x[k + q] - m);
        y[k + q] = e;
        l[q] += e;
      }
    for (; k < n; k++) {
      float e = exp_f32(x[k] - m);
      y[k] = e;
      l[0] += e;
    }
  }
  float s = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
  if (lg) {
    float sh = m + logf(s);
    for (k = 0; k < n; k++) y[k] = x[k] - sh;
  } else {
    float r = 1.0f / s;
    for (k = 0; k < n; k++) y[k] *= r;
  }
}

static void softmax_f32(const float *restrict x, float *restrict y, size_t outer, size_t n,
                        size_t inner, bool lg, float *restrict mx, float *restrict sm) {
  for (size_t o = 0; o < outer; o++) {
    const float *xb = x + o * n * inner;
    float *yb = y + o * n * inner;
    if (inner == 1) {
      softmax_row_f32(xb, yb, n, lg);
      continue;
    }
    for (size_t j = 0; j < inner; j++) mx[j] = -INFINITY, sm[j] = 0;
    for (size_t k = 0; k < n; k++)
      for (size_t j = 0; j < inner; j++) mx[j] = xb[k * inner + j] > mx[j] ? xb[k * inner + j] : mx[j];
    for (size_t j = 0; j < inner; j++)
      if (mx[j] == -INFINITY) mx[j] = 0;
    if (lg) {
      for (size_t k = 0; k < n; k++)
        for (size_t j = 0; j < inner; j++) sm[j] += exp_f32(xb[k * inner + j] - mx[j]);
    } else {
      for (size_t k = 0; k < n; k++)
        for (size_t j = 0; j < inner; j++) {
          float e = exp_f32(xb[k * inner + j] - mx[j]);
          yb[k * inner + j] = e;
          sm[j] += e;
        }
    }
    if (lg) {
      for (size_t j = 0; j < inner; j++) mx[j] += logf(sm[j]);
      for (size_t k = 0; k < n; k++)
        for (size_t j = 0; j < inner; j++) yb[k * inner + j] = xb[k * inner + j] - mx[j];
    } else {
      for (size_t j = 0; j < inner; j++) sm[j] = 1.0f / sm[j];
      for (size_t k = 0; k < n; k++)
        for (size_t j = 0; j < inner; j++) yb[k * inner + j] *= sm[j];
    }
  }
}

/* Other float types: one strided column at a time, in double. */
static void softmax_any(const void *x, void *y, kiln_dtype t, size_t outer, size_t n,
                        size_t inner, bool lg) {
  for (size_t o = 0; o < outer; o++)
    for (size_t j = 0; j < inner; j++) {
      size_t base = o * n * inner + j;
      double m = -INFINITY, s = 0;
      for (size_t k = 0; k < n; k++) {
        double v = kiln__load_f64(x, t, base + k * inner);
        m = v > m ? v : m;
      }
      if (m == -INFINITY) m = 0;
      for (size_t k = 0; k < n; k++) s += exp(kiln__load_f64(x, t, base + k * inner) - m);
      double ls = m + log(s);
      for (size_t k = 0; k < n; k++) {
        double v = kiln__load_f64(x, t, base + k * inner);
        kiln__store_f64(y, t, base + k * inner, lg ? v - ls : exp(v - m) / s);
      }
    }
}

static kiln_status run_softmax_kind(kiln__kctx *c, bool lg) {
  const kiln_tensor *x = c->in[0];
  size_t outer, n, inner;
  kiln_status st = softmax_split(c, &outer, &n, &inner);
  if (st != KILN_OK) return st;
  if (x->dtype == KILN_DTYPE_FLOAT) {
    size_t need = inner > 1 ? 2 * inner * sizeof(float) : 0;
    if (c->scratch_bytes < need || (need && !c->scratch)) return short_scratch(c, need);
    float *mx = c->scratch;
    softmax_f32(x->data, c->out[0]->data, outer, n, inner, lg, mx, mx ? mx + inner : NULL);
  } else {
    softmax_any(x->data, c->out[0]->data, x->dtype, outer, n, inner, lg);
  }
  return KILN_OK;
}

static kiln_status run_softmax(kiln__kctx *c) { return run_softmax_kind(c, false); }
static kiln_status run_logsoftmax(kiln__kctx *c) { return run_softmax_kind(c, true); }

static kiln_status run_hardmax(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  size_t outer, n, inner;
  kiln_status st = softmax_split(c, &outer, &n, &inner);
  if (st != KILN_OK) return st;
  kiln_dtype t = x->dtype;
  void *y = c->out[0]->data;
  for (size_t o = 0; o < outer; o++)
    for (size_t j = 0; j < inner; j++) {
      size_t base = o * n * inner + j, bi = 0;
      double best = -INFINITY;
      for (size_t k = 0; k < n; k++) {
        double v = kiln__load_f64(x->data, t, base + k * inner);
        if (k == 0 || v > best) best = v, bi = k;
      }
      for (size_t k = 0; k < n; k++) kiln__store_f64(y, t, base + k * inner, k == bi ? 1.0 : 0.0);
    }
  return KILN_OK;
}

/* ---- CumSum --------------------------------------------------------------------------------- */

static kiln_status infer_cumsum(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *a = c->in[1];
  kiln_status st = need_numeric(c, x);
  if (st != KILN_OK) return st;
  if (a->dtype != KILN_DTYPE_INT32 && a->dtype != KILN_DTYPE_INT64)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "CumSum axis must be int32 or int64, got %s",
                      kiln_dtype_name(a->dtype));
  if (a->rank > 1 || kiln_tensor_count(a) != 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "CumSum axis must be a scalar");
  if (a->data) {
    int64_t ax = kiln__load_i64(a->data, a->dtype, 0);
    int axis;
    if (!kiln__norm_axis(ax, x->rank, &axis)) return bad_axis(c, ax, x->rank);
  }
  kiln__set_shape(c->out[0], x->dtype, x->rank, x->dims);
  return KILN_OK;
}

/* Row k of the output is row k-1 (in scan order) plus input row k (or k-1 when exclusive). */
#define KILN_CUMSUM_LOOP(LOAD, STORE, ZERO)                                                   \
  for (size_t o = 0; o < outer; o++)                                                          \
    for (size_t kk = 0; kk < n; kk++) {                                                       \
      size_t k = rev ? n - 1 - kk : kk, kp = rev ? k + 1 : k - 1;                             \
      size_t row = (o * n + k) * inner, prev = (o * n + kp) * inner;                          \
      for (size_t j = 0; j < inner; j++) {                                                    \
        if (kk == 0) STORE(row + j, excl ? ZERO : LOAD(x, row + j));                          \
        else STORE(row + j, LOAD(y, prev + j) + LOAD(x, excl ? prev + j : row + j));          \
      }                                                                                       \
    }

static kiln_status run_cumsum(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  int64_t a;
  size_t na;
  kiln_status st = kiln__read_ints(c, c->in[1], &a, 1, &na);
  if (st == KILN__NEED_DATA)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "CumSum axis has no data");
  if (st != KILN_OK) return st;
  if (na != 1) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "CumSum axis must be a scalar");
  int axis;
  if (!kiln__norm_axis(a, x->rank, &axis)) return bad_axis(c, a, x->rank);
  size_t outer, n, inner;
  split3(x, axis, &outer, &n, &inner);
  bool excl = kiln__attr_int(c->node, "exclusive", 0) != 0;
  bool rev = kiln__attr_int(c->node, "reverse", 0) != 0;
  kiln_dtype t = x->dtype;
  void *y = c->out[0]->data;
  if (t == KILN_DTYPE_FLOAT) {
    const float *xf = x->data;
    float *yf = y;
#define LD(p, i) (p##f[i])
#define ST(i, v) (yf[i] = (v))
    KILN_CUMSUM_LOOP(LD, ST, 0.0f)
#undef LD
#undef ST
  } else if (t == KILN_DTYPE_DOUBLE) {
    const double *xf = x->data;
    double *yf = y;
#define LD(p, i) (p##f[i])
#define ST(i, v) (yf[i] = (v))
    KILN_CUMSUM_LOOP(LD, ST, 0.0)
#undef LD
#undef ST
  } else if (kiln__dtype_is_float(t)) {
    const void *xv = x->data;
#define LD(p, i) kiln__load_f64(p##v, t, (i))
#define ST(i, v) kiln__store_f64(y, t, (i), (v))
    void *yv = y;
    KILN_CUMSUM_LOOP(LD, ST, 0.0)
#undef LD
#undef ST
  } else {
    const void *xv = x->data;
    void *yv = y;
#define LD(p, i) ((uint64_t)kiln__load_i64(p##v, t, (i)))
#define ST(i, v) kiln__store_i64(y, t, (i), (int64_t)(v))
    KILN_CUMSUM_LOOP(LD, ST, 0)
#undef LD
#undef ST
  }
  return KILN_OK;
}
#undef KILN_CUMSUM_LOOP

/* ---- TopK ----------------------------------------------------------------------------------- */

static kiln_status topk_k(kiln__kctx *c, int64_t *k) {
  if (c->node->opset < 10) {
    const kiln__attr *a = kiln__attr_find(c->node, "k");
    if (!a) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "TopK needs attribute k");
    *k = a->i;
  } else {
    if (c->n_in < 2 || !c->in[1])
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "TopK needs input K");
    size_t n;
    kiln_status st = kiln__read_ints(c, c->in[1], k, 1, &n);
    if (st != KILN_OK) return st;
    if (n != 1) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "TopK K must hold one value");
  }
  if (*k < 0) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "TopK K is negative (%lld)",
                                (long long)*k);
  return KILN_OK;
}

static kiln_status topk_args(kiln__kctx *c, int *axis, int64_t *k) {
  const kiln_tensor *x = c->in[0];
  int64_t a = kiln__attr_int(c->node, "axis", -1);
  if (!kiln__norm_axis(a, x->rank, axis)) return bad_axis(c, a, x->rank);
  kiln_status st = topk_k(c, k);
  if (st != KILN_OK) return st;
  if (*k > x->dims[*axis])
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "TopK K (%lld) exceeds axis size %lld",
                      (long long)*k, (long long)x->dims[*axis]);
  return KILN_OK;
}

static kiln_status infer_topk(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status st = need_numeric(c, x);
  if (st != KILN_OK) return st;
  int axis;
  int64_t k;
  if ((st = topk_args(c, &axis, &k)) != KILN_OK) return st;
  int64_t dims[KILN_MAX_RANK];
  memcpy(dims, x->dims, sizeof dims);
  dims[axis] = k;
  if (c->out[0]) kiln__set_shape(c->out[0], x->dtype, x->rank, dims);
  if (c->n_out > 1 && c->out[1]) kiln__set_shape(c->out[1], KILN_DTYPE_INT64, x->rank, dims);
  return KILN_OK;
}

static size_t scratch_topk(const kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  int64_t a = kiln__attr_int(c->node, "axis", -1);
  int axis;
  if (!kiln__norm_axis(a, x->rank, &axis)) return 0;
  return (size_t)x->dims[axis] * (sizeof(double) + sizeof(size_t));
}

/* Candidates are positions along the axis; keys hold their values as double (float types) or
   int64 (integer types). `better` is a strict total order: by value, then the lower index. */
typedef struct topk_keys {
  const double *f;
  const int64_t *i;
  bool largest;
} topk_keys;

static bool topk_better(const topk_keys *kk, size_t a, size_t b) {
  int cmp;
  if (kk->f) {
    double x = kk->f[a], y = kk->f[b];
    bool xn = x != x, yn = y != y; /* NaN sorts above every number */
    cmp = xn || yn ? (int)xn - (int)yn : (x > y) - (x < y);
  } else {
    cmp = (kk->i[a] > kk->i[b]) - (kk->i[a] < kk->i[b]);
  }
  if (cmp != 0) return kk->largest ? cmp > 0 : cmp < 0;
  return a < b;
}

/* Sift-down in a heap whose root is the worst candidate. */
static void topk_sift(const topk_keys *kk, size_t *h, size_t m, size_t i) {
  for (;;) {
    size_t l = 2 * i + 1, w;
    if (l >= m) return;
    w = l;
    if (l + 1 < m && topk_better(kk, h[l], h[l + 1])) w = l + 1;
    if (!topk_better(kk, h[i], h[w])) return;
    size_t tmp = h[i];
    h[i] = h[w];
    h[w] = tmp;
    i = w;
  }
}

static kiln_status run_topk(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  int axis;
  int64_t k64;
  kiln_status st = topk_args(c, &axis, &k64);
  if (st != KILN_OK) return st;
  size_t outer, n, inner, k = (size_t)k64;
  split3(x, axis, &outer, &n, &inner);
  size_t need = n * (sizeof(double) + sizeof(size_t));
  if (c->scratch_bytes < need || (need && !c->scratch)) return short_scratch(c, need);
  if (k == 0) return KILN_OK;
  kiln_dtype t = x->dtype;
  bool fl = kiln__dtype_is_float(t);
  void *keys = c->scratch;
  size_t *h = (size_t *)((char *)c->scratch + n * sizeof(double));
  topk_keys kk = {fl ? (const double *)keys : NULL, fl ? NULL : (const int64_t *)keys,
                  kiln__attr_int(c->node, "largest", 1) != 0};
  size_t es = kiln_dtype_size(t);
  char *yv = c->out[0] ? c->out[0]->data : NULL;
  int64_t *yi = c->n_out > 1 && c->out[1] ? c->out[1]->data : NULL;
  for (size_t o = 0; o < outer; o++)
    for (size_t j = 0; j < inner; j++) {
      size_t base = o * n * inner + j;
      for (size_t p = 0; p < n; p++) {
        if (t == KILN_DTYPE_FLOAT) ((double *)keys)[p] = ((const float *)x->data)[base + p * inner];
        else if (fl) ((double *)keys)[p] = kiln__load_f64(x->data, t, base + p * inner);
        else ((int64_t *)keys)[p] = kiln__load_i64(x->data, t, base + p * inner);
      }
      for (size_t p = 0; p < k; p++) h[p] = p;
      for (size_t p = k / 2; p-- > 0;) topk_sift(&kk, h, k, p);
      for (size_t p = k; p < n; p++)
        if (topk_better(&kk, p, h[0])) {
          h[0] = p;
          topk_sift(&kk, h, k, 0);
        }
      /* Pop the worst to the back until the heap is sorted best first. */
      for (size_t m = k; m > 1; m--) {
        size_t tmp = h[0];
        h[0] = h[m - 1];
        h[m - 1] = tmp;
        topk_sift(&kk, h, m - 1, 0);
      }
      for (size_t r = 0; r < k; r++) {
        size_t dst = (o * k + r) * inner + j, src = base + h[r] * inner;
        if (yv) memcpy(yv + dst * es, (const char *)x->data + src * es, es);
        if (yi) yi[dst] = (int64_t)h[r];
      }
    }
  return KILN_OK;
}

/* ---- LpNormalization ------------------------------------------------------------------------ */

static kiln_status lpnorm_args(kiln__kctx *c, int *axis, int64_t *p) {
  const kiln_tensor *x = c->in[0];
  int64_t a = kiln__attr_int(c->node, "axis", -1);
  if (!kiln__norm_axis(a, x->rank, axis)) return bad_axis(c, a, x->rank);
  *p = kiln__attr_int(c->node, "p", 2);
  if (*p != 1 && *p != 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "LpNormalization p must be 1 or 2, got %lld",
                      (long long)*p);
  return KILN_OK;
}

static kiln_status infer_lpnorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_status st = need_float(c, x);
  if (st != KILN_OK) return st;
  int axis;
  int64_t p;
  if ((st = lpnorm_args(c, &axis, &p)) != KILN_OK) return st;
  kiln__set_shape(c->out[0], x->dtype, x->rank, x->dims);
  return KILN_OK;
}

/* A zero vector normalizes to zero rather than NaN. */
static kiln_status run_lpnorm(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  int axis;
  int64_t p;
  kiln_status st = lpnorm_args(c, &axis, &p);
  if (st != KILN_OK) return st;
  size_t outer, n, inner;
  split3(x, axis, &outer, &n, &inner);
  kiln_dtype t = x->dtype;
  void *y = c->out[0]->data;
  for (size_t o = 0; o < outer; o++)
    for (size_t j = 0; j < inner; j++) {
      size_t base = o * n * inner + j;
      double s = 0;
      for (size_t k = 0; k < n; k++) {
        double v = kiln__load_f64(x->data, t, base + k * inner);
        s += p == 1 ? fabs(v) : v * v;
      }
      double norm = p == 1 ? s : sqrt(s), r = norm != 0 ? 1.0 / norm : 0.0;
      for (size_t k = 0; k < n; k++)
        kiln__store_f64(y, t, base + k * inner, kiln__load_f64(x->data, t, base + k * inner) * r);
    }
  return KILN_OK;
}

/* ---- table ---------------------------------------------------------------------------------- */

#define KILN_REDUCE_ROW(NAME, FN, MAXIN) \
  {"", NAME, infer_reduce, run_##FN, scratch_##FN, 0, 1, MAXIN}

const kiln__op kiln__ops_reduce[] = {
    KILN_REDUCE_ROW("ReduceSum", reduce_sum, 2),
    KILN_REDUCE_ROW("ReduceMean", reduce_mean, 2),
    KILN_REDUCE_ROW("ReduceProd", reduce_prod, 2),
    KILN_REDUCE_ROW("ReduceMax", reduce_max, 2),
    KILN_REDUCE_ROW("ReduceMin", reduce_min, 2),
    KILN_REDUCE_ROW("ReduceL1", reduce_l1, 2),
    KILN_REDUCE_ROW("ReduceL2", reduce_l2, 2),
    KILN_REDUCE_ROW("ReduceLogSum", reduce_log_sum, 2),
    KILN_REDUCE_ROW("ReduceLogSumExp", reduce_log_sum_exp, 2),
    KILN_REDUCE_ROW("ReduceSumSquare", reduce_sum_square, 2),
    {"", "ArgMax", infer_arg, run_argmax, NULL, 0, 1, 1},
    {"", "ArgMin", infer_arg, run_argmin, NULL, 0, 1, 1},
    {"", "Softmax", infer_softmax, run_softmax, scratch_softmax, 0, 1, 1},
    {"", "LogSoftmax", infer_softmax, run_logsoftmax, scratch_softmax, 0, 1, 1},
    {"", "Hardmax", infer_softmax, run_hardmax, NULL, 0, 1, 1},
    {"", "CumSum", infer_cumsum, run_cumsum, NULL, 0, 2, 2},
    {"", "TopK", infer_topk, run_topk, scratch_topk, 0, 1, 2},
    {"", "LpNormalization", infer_lpnorm, run_lpnorm, NULL, 0, 1, 1},
    {0},
};
#undef KILN_REDUCE_ROW
