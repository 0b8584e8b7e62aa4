/* Reference kernels: shape ops (reshaping, reordering, slicing, padding and generating tensors).
 *
 * These kernels move elements without interpreting them, so they work on every dtype of fixed
 * size; STRING tensors (arrays of owned pointers) are refused, since copying the pointers would
 * make two tensors own one string.
 *
 * Most data movement goes through one routine, gather(): it writes a contiguous output by reading
 * the source through a strided view of up to 16 axes. Transpose, Slice, Expand, Tile,
 * DepthToSpace and SpaceToDepth only differ in the view they build. gather() first coalesces the
 * view (drops unit axes, merges axes that are contiguous in the source), then copies whole rows
 * when the innermost axis is contiguous in the source, fills rows when it is broadcast, and
 * transposes in cache-sized blocks when the source's contiguous axis is an outer axis of the
 * output (the common case of Transpose). */
#include "ir/op.h"

#include <math.h>

#define TRY(expr)                           \
  do {                                      \
    kiln_status try_st_ = (expr);           \
    if (try_st_ != KILN_OK) return try_st_; \
  } while (0)

#define VIEW_MAX (2 * KILN_MAX_RANK)
#define BLOCK 32                  /* edge of a transposed tile, in elements */
#define PAR_MIN_BYTES (1u << 16)  /* below this, waking threads costs more than it saves */

/* ---- small helpers --------------------------------------------------------------------------- */

static const kiln_tensor *in_at(const kiln__kctx *c, int i) {
  return i >= 0 && i < c->n_in ? c->in[i] : NULL;
}

static kiln_status get_in(const kiln__kctx *c, int i, const kiln_tensor **t) {
  *t = in_at(c, i);
  if (!*t) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "input %d is missing", i);
  return KILN_OK;
}

static void set_out(kiln__kctx *c, int i, kiln_dtype dtype, int rank, const int64_t *dims) {
  if (i < c->n_out && c->out[i]) kiln__set_shape(c->out[i], dtype, rank, dims);
}

/* Bytes per element of a dtype this file can move. */
static kiln_status elem_size(const kiln__kctx *c, kiln_dtype t, size_t *es) {
  if (t == KILN_DTYPE_STRING)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "string tensors are not supported");
  size_t s = kiln_dtype_size(t);
  if (!s) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "tensor has no element type");
  *es = s;
  return KILN_OK;
}

/* Dtypes kiln__load_f64/kiln__store_f64 handle. */
static bool is_numeric(kiln_dtype t) {
  return kiln__dtype_is_float(t) || kiln__dtype_is_signed_int(t) || kiln__dtype_is_unsigned_int(t);
}

static size_t count_of(int rank, const int64_t *dims) {
  size_t n = 0;
  return kiln__shape_count(rank, dims, &n) ? n : 0;
}

/* An integer list that is the attribute `name` before opset `since` and input `idx` from then
 * on. *present says whether the node gave it. */
static kiln_status ints_arg(const kiln__kctx *c, const char *name, int idx, int64_t since,
                            int64_t *v, size_t cap, size_t *n, bool *present) {
  *n = 0;
  *present = false;
  if (c->node->opset < since) {
    if (!kiln__attr_find(c->node, name)) return KILN_OK;
    const int64_t *p = NULL;
    size_t m = kiln__attr_ints(c->node, name, &p);
    if (m > cap)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "attribute '%s' has %zu values (max %zu)",
                        name, m, cap);
    for (size_t i = 0; i < m; i++) v[i] = p[i];
    *n = m;
    *present = true;
    return KILN_OK;
  }
  const kiln_tensor *t = in_at(c, idx);
  if (!t) return KILN_OK;
  kiln_status st = kiln__read_ints(c, t, v, cap, n);
  if (st != KILN_OK) {
    if (st != KILN__NEED_DATA) kiln__err_prefix(c->err, "input '%s'", name);
    return st;
  }
  *present = true;
  return KILN_OK;
}

/* Writes `n` copies of one element. */
static void fill(void *dst, const void *val, size_t es, size_t n) {
  if (!n) return;
  char *d = dst;
  memcpy(d, val, es);
  size_t done = 1;
  while (done < n) {
    size_t k = KILN__MIN(done, n - done);
    memcpy(d + done * es, d, k * es);
    done += k;
  }
}

/* ---- gather: contiguous output from a strided view of the source ----------------------------- */

typedef struct view {
  int rank;
  int64_t dims[VIEW_MAX];
  int64_t strides[VIEW_MAX]; /* source strides, in elements; may be 0 or negative */
} view;

typedef struct gather_job {
  char *dst;
  const char *src;
  size_t es;
  int rank;
  int64_t dims[VIEW_MAX];
  int64_t sstr[VIEW_MAX]; /* source strides */
  int64_t dstr[VIEW_MAX]; /* destination strides (contiguous) */
  int q;                  /* outer axis read contiguously (blocked transpose), or -1 */
  int n_outer;
  int outer[VIEW_MAX];    /* the axes iterated outside the row kernel */
  size_t nblk;            /* row blocks along q per outer index; 1 without q */
} gather_job;

#define DEFINE_KERNELS(T, sfx)                                                                 \
  static void row_##sfx(void *restrict dst, const void *restrict src, size_t n, int64_t s) {   \
    T *d = dst;                                                                                \
    const T *p = src;                                                                          \
    if (s == 0) {                                                                              \
      T v = p[0];                                                                              \
      for (size_t j = 0; j < n; j++) d[j] = v;                                                 \
    } else {                                                                                   \
      for (size_t j = 0; j < n; j++) d[j] = p[(int64_t)j * s];                                 \
    }                                                                                          \
  }                                                                                            \
  /* d[i * dq + j] = p[i + j * s] for i < ni <= BLOCK, j < nj. Each BLOCK x BLOCK tile goes   \
     through a small buffer, so both the source and the destination are walked along rows:     \
     with power-of-two strides, walking either down a column would thrash the cache sets. */   \
  static void block_##sfx(void *restrict dst, const void *restrict src, size_t ni, size_t nj,  \
                          int64_t dq, int64_t s) {                                             \
    T *d = dst, tmp[BLOCK][BLOCK];                                                             \
    const T *p = src;                                                                          \
    for (size_t j0 = 0; j0 < nj; j0 += BLOCK) {                                                \
      size_t nb = KILN__MIN((size_t)BLOCK, nj - j0);                                           \
      if (ni < BLOCK / 4) { /* a thin tile: the buffer would cost more than it saves */        \
        for (size_t i = 0; i < ni; i++) {                                                      \
          T *dr = d + (int64_t)i * dq + (int64_t)j0;                                           \
          const T *pr = p + (int64_t)j0 * s + (int64_t)i;                                      \
          for (size_t j = 0; j < nb; j++) dr[j] = pr[(int64_t)j * s];                          \
        }                                                                                      \
        continue;                                                                              \
      }                                                                                        \
      for (size_t j = 0; j < nb; j++) {                                                        \
        const T *pr = p + (int64_t)(j0 + j) * s;                                               \
        for (size_t i = 0; i < ni; i++) tmp[i][j] = pr[i];                                     \
      }                                                                                        \
      for (size_t i = 0; i < ni; i++) {                                                        \
        T *dr = d + (int64_t)i * dq + (int64_t)j0;                                             \
        for (size_t j = 0; j < nb; j++) dr[j] = tmp[i][j];                                     \
      }                                                                                        \
    }                                                                                          \
  }

DEFINE_KERNELS(uint8_t, 1)
DEFINE_KERNELS(uint16_t, 2)
DEFINE_KERNELS(uint32_t, 4)
DEFINE_KERNELS(uint64_t, 8)

static void row_any(char *d, const char *p, size_t n, int64_t s, size_t es) {
  switch (es) {
    case 1: row_1(d, p, n, s); return;
    case 2: row_2(d, p, n, s); return;
    case 4: row_4(d, p, n, s); return;
    case 8: row_8(d, p, n, s); return;
    default:
      for (size_t j = 0; j < n; j++) memcpy(d + j * es, p + (int64_t)j * s * (int64_t)es, es);
  }
}

static void block_any(char *d, const char *p, size_t ni, size_t nj, int64_t dq, int64_t s,
                      size_t es) {
  switch (es) {
    case 1: block_1(d, p, ni, nj, dq, s); return;
    case 2: block_2(d, p, ni, nj, dq, s); return;
    case 4: block_4(d, p, ni, nj, dq, s); return;
    case 8: block_8(d, p, ni, nj, dq, s); return;
    default:
      for (size_t i = 0; i < ni; i++)
        for (size_t j = 0; j < nj; j++)
          memcpy(d + ((int64_t)i * dq + (int64_t)j) * (int64_t)es,
                 p + ((int64_t)i + (int64_t)j * s) * (int64_t)es, es);
  }
}

static void gather_item(const gather_job *g, int64_t so, int64_t dof, size_t blk) {
  int L = g->rank - 1;
  int64_t es = (int64_t)g->es;
  const char *s = g->src + so * es;
  char *d = g->dst + dof * es;
  size_t n = (size_t)g->dims[L];
  int64_t sl = g->sstr[L];
  if (g->q < 0) {
    if (sl == 1) memcpy(d, s, n * g->es);
    else row_any(d, s, n, sl, g->es);
    return;
  }
  int64_t i0 = (int64_t)blk * BLOCK;
  size_t ni = (size_t)KILN__MIN((int64_t)BLOCK, g->dims[g->q] - i0);
  block_any(d + i0 * g->dstr[g->q] * es, s + i0 * es, ni, n, g->dstr[g->q], sl, g->es);
}

static void gather_range(void *arg, size_t begin, size_t end) {
  const gather_job *g = arg;
  int64_t idx[VIEW_MAX];
  size_t blk = begin % g->nblk, o = begin / g->nblk;
  int64_t so = 0, dof = 0;
  for (int k = g->n_outer - 1; k >= 0; k--) {
    int a = g->outer[k];
    idx[k] = (int64_t)(o % (size_t)g->dims[a]);
    o /= (size_t)g->dims[a];
    so += idx[k] * g->sstr[a];
    dof += idx[k] * g->dstr[a];
  }
  for (size_t t = begin; t < end; t++) {
    gather_item(g, so, dof, blk);
    if (++blk < g->nblk) continue;
    blk = 0;
    for (int k = g->n_outer - 1; k >= 0; k--) {
      int a = g->outer[k];
      so += g->sstr[a];
      dof += g->dstr[a];
      if (++idx[k] < g->dims[a]) break;
      so -= g->dims[a] * g->sstr[a];
      dof -= g->dims[a] * g->dstr[a];
      idx[k] = 0;
    }
  }
}

/* Writes the elements of view `v` of `src` (which points at the view's first element) to the
 * contiguous `dst`. */
static void gather(const kiln__kctx *c, void *dst, const void *src, size_t es, view *v) {
  size_t total = count_of(v->rank, v->dims);
  if (!total) return;
  gather_job g;
  g.dst = dst;
  g.src = src;
  g.es = es;
  /* coalesce: drop unit axes, merge an axis into the one outside it when they are contiguous */
  int r = 0;
  for (int i = 0; i < v->rank; i++) {
    if (v->dims[i] == 1) continue;
    if (r > 0 && g.sstr[r - 1] == v->strides[i] * v->dims[i]) {
      g.dims[r - 1] *= v->dims[i];
      g.sstr[r - 1] = v->strides[i];
    } else {
      g.dims[r] = v->dims[i];
      g.sstr[r] = v->strides[i];
      r++;
    }
  }
  if (r == 0) {
    g.dims[0] = 1;
    g.sstr[0] = 1;
    r = 1;
  }
  g.rank = r;
  int64_t s = 1;
  for (int i = r - 1; i >= 0; i--) {
    g.dstr[i] = s;
    s *= g.dims[i];
  }
  int L = r - 1;
  g.q = -1;
  if (g.sstr[L] != 1 && g.sstr[L] != 0)
    for (int i = 0; i < L; i++)
      if (g.sstr[i] == 1) g.q = i;
  g.n_outer = 0;
  for (int i = 0; i < L; i++)
    if (i != g.q) g.outer[g.n_outer++] = i;
  g.nblk = g.q < 0 ? 1 : (size_t)(g.dims[g.q] + BLOCK - 1) / BLOCK;
  size_t items = g.nblk;
  for (int k = 0; k < g.n_outer; k++) items *= (size_t)g.dims[g.outer[k]];
  if (total * es >= PAR_MIN_BYTES && items > 1)
    kiln__parallel_for(c->pool, items, gather_range, &g);
  else
    gather_range(&g, 0, items);
}

/* ---- Reshape, Flatten, Squeeze, Unsqueeze: the same bytes under a new shape ------------------ */

static kiln_status copy_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  if (!y) return KILN_OK;
  size_t n = KILN__MIN(kiln_tensor_nbytes(x), kiln_tensor_nbytes(y));
  if (n && y->data != x->data) memmove(y->data, x->data, n);
  return KILN_OK;
}

static kiln_status reshape_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  int64_t shape[KILN_MAX_RANK];
  size_t n;
  bool present;
  TRY(ints_arg(c, "shape", 1, 5, shape, KILN_MAX_RANK, &n, &present));
  if (!present) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "the target shape is missing");
  bool allowzero = c->node->opset >= 14 && kiln__attr_int(c->node, "allowzero", 0) != 0;
  size_t total = kiln_tensor_count(x), known = 1;
  int neg = -1;
  for (size_t i = 0; i < n; i++) {
    if (shape[i] == 0 && !allowzero) {
      if ((int)i >= x->rank)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                          "shape[%zu] is 0 (keep the input's dimension) but the input has rank %d",
                          i, x->rank);
      shape[i] = x->dims[i];
    }
    if (shape[i] == -1) {
      if (neg >= 0)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "the shape has more than one -1");
      neg = (int)i;
      continue;
    }
    if (shape[i] < 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "shape[%zu] is %lld", i,
                        (long long)shape[i]);
    if (!kiln__mul_ok(known, (size_t)shape[i], &known))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "the shape is too large");
  }
  if (neg >= 0) {
    if (known == 0 || total % known)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "cannot infer the -1 dimension: %zu elements into parts of %zu", total,
                        known);
    shape[neg] = (int64_t)(total / known);
  } else if (known != total) {
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "cannot reshape %zu elements into a shape of %zu", total, known);
  }
  set_out(c, 0, x->dtype, (int)n, shape);
  return KILN_OK;
}

static kiln_status flatten_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  int r = x->rank;
  int64_t axis = kiln__attr_int(c->node, "axis", 1);
  if (axis < -r || axis > r)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is outside [%d, %d]",
                      (long long)axis, -r, r);
  if (axis < 0) axis += r;
  int64_t dims[2] = {1, 1};
  for (int i = 0; i < r; i++) dims[i < axis ? 0 : 1] *= x->dims[i];
  set_out(c, 0, x->dtype, 2, dims);
  return KILN_OK;
}

static kiln_status squeeze_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  int64_t axes[KILN_MAX_RANK];
  size_t n;
  bool present;
  TRY(ints_arg(c, "axes", 1, 13, axes, KILN_MAX_RANK, &n, &present));
  bool drop[KILN_MAX_RANK] = {false};
  if (present && n) {
    for (size_t k = 0; k < n; k++) {
      int a;
      if (!kiln__norm_axis(axes[k], x->rank, &a))
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                          (long long)axes[k], x->rank);
      if (drop[a])
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %d is repeated", a);
      if (x->dims[a] != 1)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                          "cannot squeeze axis %d of size %lld", a, (long long)x->dims[a]);
      drop[a] = true;
    }
  } else {
    for (int i = 0; i < x->rank; i++) drop[i] = x->dims[i] == 1;
  }
  int64_t dims[KILN_MAX_RANK];
  int r = 0;
  for (int i = 0; i < x->rank; i++)
    if (!drop[i]) dims[r++] = x->dims[i];
  set_out(c, 0, x->dtype, r, dims);
  return KILN_OK;
}

static kiln_status unsqueeze_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  int64_t axes[KILN_MAX_RANK];
  size_t n;
  bool present;
  TRY(ints_arg(c, "axes", 1, 13, axes, KILN_MAX_RANK, &n, &present));
  if (!present) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axes are missing");
  if (x->rank + (int)n > KILN_MAX_RANK)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "output rank %d exceeds %d", x->rank + (int)n,
                      KILN_MAX_RANK);
  int r = x->rank + (int)n;
  bool ins[KILN_MAX_RANK] = {false};
  for (size_t k = 0; k < n; k++) {
    int a;
    if (!kiln__norm_axis(axes[k], r, &a))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                        (long long)axes[k], r);
    if (ins[a]) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %d is repeated", a);
    ins[a] = true;
  }
  int64_t dims[KILN_MAX_RANK];
  for (int i = 0, j = 0; i < r; i++) dims[i] = ins[i] ? 1 : x->dims[j++];
  set_out(c, 0, x->dtype, r, dims);
  return KILN_OK;
}

/* ---- Shape, Size: read only the input's shape ------------------------------------------------ */

static void shape_range(const kiln__kctx *c, int r, int64_t *start, int64_t *end) {
  int64_t b = 0, e = r;
  if (c->node->opset >= 15) {
    b = kiln__attr_int(c->node, "start", 0);
    e = kiln__attr_int(c->node, "end", r);
  }
  if (b < 0) b += r;
  if (e < 0) e += r;
  *start = KILN__MIN(KILN__MAX(b, 0), (int64_t)r);
  *end = KILN__MIN(KILN__MAX(e, 0), (int64_t)r);
}

static kiln_status shape_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  TRY(get_in(c, 0, &x));
  int64_t b, e;
  shape_range(c, x->rank, &b, &e);
  int64_t len = e > b ? e - b : 0;
  set_out(c, 0, KILN_DTYPE_INT64, 1, &len);
  return KILN_OK;
}

static kiln_status shape_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  if (!c->out[0]) return KILN_OK;
  int64_t b, e, *y = c->out[0]->data;
  shape_range(c, x->rank, &b, &e);
  for (int64_t i = b; i < e; i++) y[i - b] = x->dims[i];
  return KILN_OK;
}

static kiln_status size_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  TRY(get_in(c, 0, &x));
  set_out(c, 0, KILN_DTYPE_INT64, 0, NULL);
  return KILN_OK;
}

static kiln_status size_run(kiln__kctx *c) {
  if (c->out[0]) *(int64_t *)c->out[0]->data = (int64_t)kiln_tensor_count(c->in[0]);
  return KILN_OK;
}

/* ---- Transpose ------------------------------------------------------------------------------- */

static kiln_status transpose_perm(const kiln__kctx *c, const kiln_tensor *x, int *perm) {
  int r = x->rank;
  const int64_t *p = NULL;
  size_t n = kiln__attr_ints(c->node, "perm", &p);
  if (!kiln__attr_find(c->node, "perm")) {
    for (int i = 0; i < r; i++) perm[i] = r - 1 - i;
    return KILN_OK;
  }
  if ((int)n != r)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "perm has %zu entries for rank %d", n, r);
  bool seen[KILN_MAX_RANK] = {false};
  for (int i = 0; i < r; i++) {
    if (!kiln__norm_axis(p[i], r, &perm[i]) || seen[perm[i]])
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "perm is not a permutation of 0..%d",
                        r - 1);
    seen[perm[i]] = true;
  }
  return KILN_OK;
}

static kiln_status transpose_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  int perm[KILN_MAX_RANK];
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  TRY(transpose_perm(c, x, perm));
  int64_t dims[KILN_MAX_RANK];
  for (int i = 0; i < x->rank; i++) dims[i] = x->dims[perm[i]];
  set_out(c, 0, x->dtype, x->rank, dims);
  return KILN_OK;
}

static kiln_status transpose_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  size_t es = 0;
  int perm[KILN_MAX_RANK];
  if (!c->out[0]) return KILN_OK;
  TRY(elem_size(c, x->dtype, &es));
  TRY(transpose_perm(c, x, perm));
  int64_t st[KILN_MAX_RANK];
  kiln__strides(x->rank, x->dims, st);
  view v;
  v.rank = x->rank;
  for (int i = 0; i < x->rank; i++) {
    v.dims[i] = x->dims[perm[i]];
    v.strides[i] = st[perm[i]];
  }
  gather(c, c->out[0]->data, x->data, es, &v);
  return KILN_OK;
}

/* ---- Concat, Split --------------------------------------------------------------------------- */

static kiln_status concat_axis(const kiln__kctx *c, int rank, int *axis) {
  const kiln__attr *a = kiln__attr_find(c->node, "axis");
  if (!a && c->node->opset >= 4)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "attribute 'axis' is missing");
  int64_t v = a ? a->i : 1;
  if (!kiln__norm_axis(v, rank, axis))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                      (long long)v, rank);
  return KILN_OK;
}

static kiln_status concat_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  int axis = 0;
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  TRY(concat_axis(c, x->rank, &axis));
  int64_t dims[KILN_MAX_RANK];
  for (int i = 0; i < x->rank; i++) dims[i] = x->dims[i];
  dims[axis] = 0;
  for (int k = 0; k < c->n_in; k++) {
    const kiln_tensor *t;
    TRY(get_in(c, k, &t));
    if (t->dtype != x->dtype || t->rank != x->rank)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "input %d (%s, rank %d) does not match input 0 (%s, rank %d)", k,
                        kiln_dtype_name(t->dtype), t->rank, kiln_dtype_name(x->dtype), x->rank);
    for (int i = 0; i < x->rank; i++)
      if (i != axis && t->dims[i] != x->dims[i])
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                          "input %d has dimension %d of size %lld, input 0 has %lld", k, i,
                          (long long)t->dims[i], (long long)x->dims[i]);
    if (t->dims[axis] > INT64_MAX - dims[axis])
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "the output is too large");
    dims[axis] += t->dims[axis];
  }
  set_out(c, 0, x->dtype, x->rank, dims);
  return KILN_OK;
}

static kiln_status concat_run(kiln__kctx *c) {
  kiln_tensor *y = c->out[0];
  size_t es = 0;
  int axis = 0;
  if (!y) return KILN_OK;
  TRY(elem_size(c, y->dtype, &es));
  TRY(concat_axis(c, y->rank, &axis));
  size_t outer = count_of(axis, y->dims);
  size_t inner = es * count_of(y->rank - axis - 1, y->dims + axis + 1);
  char *d = y->data;
  for (size_t o = 0; o < outer; o++)
    for (int k = 0; k < c->n_in; k++) {
      size_t n = (size_t)c->in[k]->dims[axis] * inner;
      const char *src = (const char *)c->in[k]->data + o * n;
      if (n && src != d) memcpy(d, src, n); /* equal: planned in place (plan.c) */
      d += n;
    }
  return KILN_OK;
}

/* How Split cuts its axis: an explicit list (attribute or input), or chunks of `chunk`. */
typedef struct split_spec {
  int axis;
  const int64_t *list;
  const kiln_tensor *t;
  int64_t chunk, dim;
} split_spec;

static int64_t split_at(const split_spec *s, int k) {
  if (s->list) return s->list[k];
  if (s->t) return kiln__load_i64(s->t->data, s->t->dtype, (size_t)k);
  int64_t start = (int64_t)k * s->chunk;
  return start >= s->dim ? 0 : KILN__MIN(s->chunk, s->dim - start);
}

static kiln_status split_prepare(const kiln__kctx *c, const kiln_tensor *x, split_spec *s) {
  memset(s, 0, sizeof *s);
  int64_t axis = kiln__attr_int(c->node, "axis", 0);
  if (!kiln__norm_axis(axis, x->rank, &s->axis))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                      (long long)axis, x->rank);
  s->dim = x->dims[s->axis];
  int n_out = c->n_out;
  size_t n = 0;
  if (c->node->opset < 13 && kiln__attr_find(c->node, "split")) {
    n = kiln__attr_ints(c->node, "split", &s->list);
    if (!s->list) n = 0;
  } else if ((c->node->opset >= 13 || c->node->opset < 2) && in_at(c, 1)) {
    const kiln_tensor *t = in_at(c, 1);
    if (!t->data) return KILN__NEED_DATA;
    if (t->dtype != KILN_DTYPE_INT64 && t->dtype != KILN_DTYPE_INT32)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "split must be int64, got %s",
                        kiln_dtype_name(t->dtype));
    n = kiln_tensor_count(t);
    if (n) s->t = t;
  }
  if (s->list || s->t) {
    if ((int64_t)n != n_out)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "split has %zu entries for %d outputs", n,
                        n_out);
    int64_t sum = 0;
    for (int k = 0; k < n_out; k++) {
      int64_t v = split_at(s, k);
      if (v < 0 || v > s->dim - sum)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                          "split sizes do not add up to the axis size %lld", (long long)s->dim);
      sum += v;
    }
    if (sum != s->dim)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "split sizes add up to %lld, the axis has %lld", (long long)sum,
                        (long long)s->dim);
    return KILN_OK;
  }
  if (n_out < 1) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Split has no outputs");
  const kiln__attr *num = c->node->opset >= 18 ? kiln__attr_find(c->node, "num_outputs") : NULL;
  if (num) {
    if (num->i != n_out)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "num_outputs is %lld but the node has %d",
                        (long long)num->i, n_out);
    s->chunk = (s->dim + n_out - 1) / n_out;
    return KILN_OK;
  }
  if (s->dim % n_out)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis of size %lld does not split into %d",
                      (long long)s->dim, n_out);
  s->chunk = s->dim / n_out;
  return KILN_OK;
}

static kiln_status split_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  split_spec s;
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  TRY(split_prepare(c, x, &s));
  int64_t dims[KILN_MAX_RANK];
  for (int i = 0; i < x->rank; i++) dims[i] = x->dims[i];
  for (int k = 0; k < c->n_out; k++) {
    dims[s.axis] = split_at(&s, k);
    set_out(c, k, x->dtype, x->rank, dims);
  }
  return KILN_OK;
}

static kiln_status split_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  size_t es = 0;
  split_spec s;
  TRY(elem_size(c, x->dtype, &es));
  TRY(split_prepare(c, x, &s));
  size_t outer = count_of(s.axis, x->dims);
  size_t inner = es * count_of(x->rank - s.axis - 1, x->dims + s.axis + 1);
  size_t row = (size_t)s.dim * inner, off = 0;
  for (int k = 0; k < c->n_out; k++) {
    size_t n = (size_t)split_at(&s, k) * inner;
    if (c->out[k] && n)
      for (size_t o = 0; o < outer; o++)
        memcpy((char *)c->out[k]->data + o * n, (const char *)x->data + o * row + off, n);
    off += n;
  }
  return KILN_OK;
}

/* ---- Slice ----------------------------------------------------------------------------------- */

/* Per axis of x: first index, step and output length. */
static kiln_status slice_prepare(const kiln__kctx *c, const kiln_tensor *x, int64_t *start,
                                 int64_t *step, int64_t *len) {
  int r = x->rank;
  for (int i = 0; i < r; i++) {
    start[i] = 0;
    step[i] = 1;
    len[i] = x->dims[i];
  }
  int64_t st[KILN_MAX_RANK], en[KILN_MAX_RANK], ax[KILN_MAX_RANK], sp[KILN_MAX_RANK];
  size_t ns, ne, na, np = 0;
  bool has_st, has_en, has_axes, has_steps = false;
  if (c->node->opset < 10) {
    TRY(ints_arg(c, "starts", -1, 10, st, KILN_MAX_RANK, &ns, &has_st));
    TRY(ints_arg(c, "ends", -1, 10, en, KILN_MAX_RANK, &ne, &has_en));
    TRY(ints_arg(c, "axes", -1, 10, ax, KILN_MAX_RANK, &na, &has_axes));
  } else {
    TRY(ints_arg(c, "starts", 1, 10, st, KILN_MAX_RANK, &ns, &has_st));
    TRY(ints_arg(c, "ends", 2, 10, en, KILN_MAX_RANK, &ne, &has_en));
    TRY(ints_arg(c, "axes", 3, 10, ax, KILN_MAX_RANK, &na, &has_axes));
    TRY(ints_arg(c, "steps", 4, 10, sp, KILN_MAX_RANK, &np, &has_steps));
  }
  if (!has_st || !has_en)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "starts and ends are required");
  if (ns != ne || (has_axes && na != ns) || (has_steps && np != ns))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "starts, ends, axes and steps have different lengths");
  bool seen[KILN_MAX_RANK] = {false};
  for (size_t k = 0; k < ns; k++) {
    int a = (int)k;
    if (has_axes ? !kiln__norm_axis(ax[k], r, &a) : a >= r)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                        (long long)(has_axes ? ax[k] : (int64_t)k), r);
    if (seen[a]) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %d is repeated", a);
    seen[a] = true;
    int64_t s = has_steps ? sp[k] : 1, d = x->dims[a], b = st[k], e = en[k], n;
    if (s == 0) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "step is 0 on axis %d", a);
    if (b < 0) b += d;
    if (e < 0) e += d;
    if (s > 0) {
      b = KILN__MIN(KILN__MAX(b, 0), d);
      e = KILN__MIN(KILN__MAX(e, 0), d);
      n = e > b ? (e - b - 1) / s + 1 : 0;
    } else {
      b = KILN__MIN(KILN__MAX(b, 0), d - 1);
      e = KILN__MIN(KILN__MAX(e, -1), d - 1);
      n = b > e ? (int64_t)((uint64_t)(b - e - 1) / ((uint64_t)0 - (uint64_t)s)) + 1 : 0;
    }
    start[a] = n > 0 ? b : 0;
    step[a] = n > 1 ? s : 1; /* a step never used keeps the view's strides small */
    len[a] = n;
  }
  return KILN_OK;
}

static kiln_status slice_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  int64_t start[KILN_MAX_RANK], step[KILN_MAX_RANK], len[KILN_MAX_RANK];
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  TRY(slice_prepare(c, x, start, step, len));
  set_out(c, 0, x->dtype, x->rank, len);
  return KILN_OK;
}

static kiln_status slice_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  size_t es = 0;
  int64_t start[KILN_MAX_RANK], step[KILN_MAX_RANK], len[KILN_MAX_RANK], st[KILN_MAX_RANK];
  if (!c->out[0]) return KILN_OK;
  TRY(elem_size(c, x->dtype, &es));
  TRY(slice_prepare(c, x, start, step, len));
  if (!count_of(x->rank, len)) return KILN_OK;
  kiln__strides(x->rank, x->dims, st);
  view v;
  v.rank = x->rank;
  int64_t base = 0;
  for (int i = 0; i < x->rank; i++) {
    base += start[i] * st[i];
    v.dims[i] = len[i];
    v.strides[i] = step[i] * st[i];
  }
  gather(c, c->out[0]->data, (const char *)x->data + base * (int64_t)es, es, &v);
  return KILN_OK;
}

/* ---- Expand, Tile ---------------------------------------------------------------------------- */

static kiln_status expand_infer(kiln__kctx *c) {
  const kiln_tensor *x, *s;
  size_t es = 0, n = 0;
  int64_t shape[KILN_MAX_RANK], dims[KILN_MAX_RANK];
  int r;
  TRY(get_in(c, 0, &x));
  TRY(get_in(c, 1, &s));
  TRY(elem_size(c, x->dtype, &es));
  TRY(kiln__read_ints(c, s, shape, KILN_MAX_RANK, &n));
  for (size_t i = 0; i < n; i++)
    if (shape[i] < 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "shape[%zu] is %lld", i,
                        (long long)shape[i]);
  TRY(kiln__broadcast(x->rank, x->dims, (int)n, shape, &r, dims, c->err));
  set_out(c, 0, x->dtype, r, dims);
  return KILN_OK;
}

static kiln_status expand_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  size_t es = 0;
  if (!y) return KILN_OK;
  TRY(elem_size(c, x->dtype, &es));
  view v;
  v.rank = y->rank;
  for (int i = 0; i < y->rank; i++) v.dims[i] = y->dims[i];
  kiln__bcast_strides(x, y->rank, y->dims, v.strides);
  gather(c, y->data, x->data, es, &v);
  return KILN_OK;
}

static kiln_status tile_repeats(const kiln__kctx *c, const kiln_tensor *x, int64_t *rep) {
  int r = x->rank;
  if (c->node->opset < 6) { /* Tile-1: a count of tiles along one axis */
    const kiln_tensor *t, *a;
    TRY(get_in(c, 1, &t));
    TRY(get_in(c, 2, &a));
    if (!t->data || !a->data) return KILN__NEED_DATA;
    if (kiln_tensor_count(t) != 1 || kiln_tensor_count(a) != 1 || !is_numeric(t->dtype) ||
        !is_numeric(a->dtype))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "tiles and axis must be scalars");
    int axis = 0;
    if (!kiln__norm_axis(kiln__load_i64(a->data, a->dtype, 0), r, &axis))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis is out of range");
    for (int i = 0; i < r; i++) rep[i] = 1;
    rep[axis] = kiln__load_i64(t->data, t->dtype, 0);
  } else {
    const kiln_tensor *t;
    size_t n;
    TRY(get_in(c, 1, &t));
    TRY(kiln__read_ints(c, t, rep, KILN_MAX_RANK, &n));
    if ((int)n != r)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "repeats has %zu entries for rank %d", n,
                        r);
  }
  for (int i = 0; i < r; i++)
    if (rep[i] < 0 || (rep[i] > 0 && x->dims[i] > INT64_MAX / rep[i]))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "repeats[%d] is %lld", i,
                        (long long)rep[i]);
  return KILN_OK;
}

static kiln_status tile_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  int64_t rep[KILN_MAX_RANK], dims[KILN_MAX_RANK];
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  TRY(tile_repeats(c, x, rep));
  for (int i = 0; i < x->rank; i++) dims[i] = x->dims[i] * rep[i];
  set_out(c, 0, x->dtype, x->rank, dims);
  return KILN_OK;
}

static kiln_status tile_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  size_t es = 0;
  int64_t rep[KILN_MAX_RANK], st[KILN_MAX_RANK];
  if (!c->out[0]) return KILN_OK;
  TRY(elem_size(c, x->dtype, &es));
  TRY(tile_repeats(c, x, rep));
  kiln__strides(x->rank, x->dims, st);
  /* output axis i seen as (repeat, dims[i]): the repeat reads the same source again */
  view v;
  v.rank = 2 * x->rank;
  for (int i = 0; i < x->rank; i++) {
    v.dims[2 * i] = rep[i];
    v.strides[2 * i] = 0;
    v.dims[2 * i + 1] = x->dims[i];
    v.strides[2 * i + 1] = st[i];
  }
  gather(c, c->out[0]->data, x->data, es, &v);
  return KILN_OK;
}

/* ---- Pad ------------------------------------------------------------------------------------- */

enum { PAD_CONSTANT, PAD_REFLECT, PAD_EDGE, PAD_WRAP };

static kiln_status pad_prepare(const kiln__kctx *c, const kiln_tensor *x, int64_t *pb,
                               int64_t *pe, int *mode) {
  int r = x->rank;
  const char *m = kiln__attr_str(c->node, "mode", "constant");
  if (!strcmp(m, "constant")) *mode = PAD_CONSTANT;
  else if (!strcmp(m, "reflect")) *mode = PAD_REFLECT;
  else if (!strcmp(m, "edge")) *mode = PAD_EDGE;
  else if (!strcmp(m, "wrap")) *mode = PAD_WRAP;
  else return kiln__fail(c->err, KILN_UNSUPPORTED, "unknown pad mode '%s'", m);
  int64_t pads[2 * KILN_MAX_RANK], axes_v[KILN_MAX_RANK];
  size_t n, na = 0;
  bool present, has_axes = false;
  if (c->node->opset < 2)
    TRY(ints_arg(c, "paddings", -1, 11, pads, 2 * KILN_MAX_RANK, &n, &present));
  else
    TRY(ints_arg(c, "pads", 1, 11, pads, 2 * KILN_MAX_RANK, &n, &present));
  if (!present) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "pads are missing");
  if (c->node->opset >= 18) TRY(ints_arg(c, "axes", 3, 18, axes_v, KILN_MAX_RANK, &na, &has_axes));
  int axes[KILN_MAX_RANK];
  if (has_axes) {
    for (size_t k = 0; k < na; k++)
      if (!kiln__norm_axis(axes_v[k], r, &axes[k]))
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range",
                          (long long)axes_v[k]);
  } else {
    na = (size_t)r;
    for (int i = 0; i < r; i++) axes[i] = i;
  }
  if (n != 2 * na)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "pads has %zu entries for %zu axes", n, na);
  for (int i = 0; i < r; i++) pb[i] = pe[i] = 0;
  for (size_t k = 0; k < na; k++) {
    const int64_t lim = INT64_MAX / 4;
    if (pads[k] > lim || pads[k] < -lim || pads[na + k] > lim || pads[na + k] < -lim)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "pads are too large");
    pb[axes[k]] = pads[k];
    pe[axes[k]] = pads[na + k];
  }
  for (int i = 0; i < r; i++) {
    int64_t d = x->dims[i] + pb[i] + pe[i];
    if (d < 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "pads make axis %d negative", i);
    if (*mode != PAD_CONSTANT && x->dims[i] == 0 && d > 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "cannot pad the empty axis %d in mode '%s'", i, m);
  }
  return KILN_OK;
}

static kiln_status pad_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  int64_t pb[KILN_MAX_RANK], pe[KILN_MAX_RANK], dims[KILN_MAX_RANK];
  int mode = 0;
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  TRY(pad_prepare(c, x, pb, pe, &mode));
  for (int i = 0; i < x->rank; i++) dims[i] = x->dims[i] + pb[i] + pe[i];
  set_out(c, 0, x->dtype, x->rank, dims);
  return KILN_OK;
}

/* Maps an index of the padded axis, relative to the source, to a source index; false where
 * constant padding applies. */
static bool pad_map(int64_t s, int64_t n, int mode, int64_t *m) {
  if (s >= 0 && s < n) {
    *m = s;
    return true;
  }
  int64_t t;
  switch (mode) {
    case PAD_EDGE: *m = s < 0 ? 0 : n - 1; return true;
    case PAD_REFLECT:
      if (n == 1) {
        *m = 0;
        return true;
      }
      t = s % (2 * (n - 1));
      if (t < 0) t += 2 * (n - 1);
      *m = t < n ? t : 2 * (n - 1) - t;
      return true;
    case PAD_WRAP:
      t = s % n;
      *m = t < 0 ? t + n : t;
      return true;
    default: return false;
  }
}

static kiln_status pad_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  size_t es = 0;
  int64_t pb[KILN_MAX_RANK], pe[KILN_MAX_RANK], st[KILN_MAX_RANK];
  int mode = 0;
  if (!y) return KILN_OK;
  TRY(elem_size(c, x->dtype, &es));
  TRY(pad_prepare(c, x, pb, pe, &mode));
  if (!kiln_tensor_count(y)) return KILN_OK;
  unsigned char val[16] = {0};
  if (mode == PAD_CONSTANT) {
    const kiln_tensor *v = c->node->opset >= 11 ? in_at(c, 2) : NULL;
    if (v && v->data && kiln_tensor_count(v) >= 1) {
      if (v->dtype == x->dtype) memcpy(val, v->data, es);
      else if (is_numeric(v->dtype) && is_numeric(x->dtype))
        kiln__store_f64(val, x->dtype, 0, kiln__load_f64(v->data, v->dtype, 0));
      else
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "constant_value is %s, data is %s",
                          kiln_dtype_name(v->dtype), kiln_dtype_name(x->dtype));
    } else if (c->node->opset < 11 && is_numeric(x->dtype)) {
      kiln__store_f64(val, x->dtype, 0, kiln__attr_float(c->node, "value", 0.0f));
    }
  }
  const char *src = x->data;
  char *dst = y->data;
  if (x->rank == 0) {
    memcpy(dst, src, es);
    return KILN_OK;
  }
  int r = x->rank, L = r - 1;
  kiln__strides(r, x->dims, st);
  int64_t w = y->dims[L], n = x->dims[L], p = pb[L];
  int64_t lo = KILN__MIN(KILN__MAX(p, 0), w), hi = KILN__MAX(KILN__MIN(p + n, w), lo);
  size_t rows = count_of(L, y->dims);
  int64_t idx[KILN_MAX_RANK] = {0};
  for (size_t row = 0; row < rows; row++, dst += (size_t)w * es) {
    int64_t off = 0;
    bool inside = true;
    for (int a = 0; a < L && inside; a++) {
      int64_t m = 0;
      inside = pad_map(idx[a] - pb[a], x->dims[a], mode, &m);
      off += m * st[a];
    }
    for (int a = L - 1; a >= 0; a--) {
      if (++idx[a] < y->dims[a]) break;
      idx[a] = 0;
    }
    if (!inside) {
      fill(dst, val, es, (size_t)w);
      continue;
    }
    const char *s = src + off * (int64_t)es;
    if (hi > lo) memcpy(dst + lo * (int64_t)es, s + (lo - p) * (int64_t)es, (size_t)(hi - lo) * es);
    for (int64_t j = 0; j < w; j++) {
      if (j == lo) j = hi;
      if (j >= w) break;
      int64_t m;
      if (pad_map(j - p, n, mode, &m)) memcpy(dst + j * (int64_t)es, s + m * (int64_t)es, es);
      else memcpy(dst + j * (int64_t)es, val, es);
    }
  }
  return KILN_OK;
}

/* ---- Constant, ConstantOfShape, Range, EyeLike ----------------------------------------------- */

static kiln_status constant_value(const kiln__kctx *c, const kiln__attr **out) {
  static const char *const names[] = {"value",       "value_float", "value_floats",
                                      "value_int",   "value_ints",  "value_string",
                                      "value_strings", "sparse_value"};
  for (size_t i = 0; i < KILN__ARRAY_LEN(names); i++) {
    const kiln__attr *a = kiln__attr_find(c->node, names[i]);
    if (!a) continue;
    if (i >= 5 || (i == 0 && (!a->t || a->t->dtype == KILN_DTYPE_STRING)))
      return kiln__fail(c->err, KILN_UNSUPPORTED, "Constant with '%s' of strings or sparse data",
                        names[i]);
    *out = a;
    return KILN_OK;
  }
  return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Constant has no value attribute");
}

static kiln_status constant_infer(kiln__kctx *c) {
  const kiln__attr *a = NULL;
  TRY(constant_value(c, &a));
  int64_t n = (int64_t)a->n;
  if (!strcmp(a->name, "value")) set_out(c, 0, a->t->dtype, a->t->rank, a->t->dims);
  else if (!strcmp(a->name, "value_float")) set_out(c, 0, KILN_DTYPE_FLOAT, 0, NULL);
  else if (!strcmp(a->name, "value_floats")) set_out(c, 0, KILN_DTYPE_FLOAT, 1, &n);
  else if (!strcmp(a->name, "value_int")) set_out(c, 0, KILN_DTYPE_INT64, 0, NULL);
  else set_out(c, 0, KILN_DTYPE_INT64, 1, &n);
  return KILN_OK;
}

static kiln_status constant_run(kiln__kctx *c) {
  const kiln__attr *a = NULL;
  kiln_tensor *y = c->out[0];
  if (!y) return KILN_OK;
  TRY(constant_value(c, &a));
  const void *src;
  size_t bytes;
  if (!strcmp(a->name, "value")) {
    src = a->t->data;
    bytes = kiln_tensor_nbytes(a->t);
  } else if (!strcmp(a->name, "value_float")) {
    src = &a->f;
    bytes = sizeof(float);
  } else if (!strcmp(a->name, "value_floats")) {
    src = a->floats;
    bytes = a->n * sizeof(float);
  } else if (!strcmp(a->name, "value_int")) {
    src = &a->i;
    bytes = sizeof(int64_t);
  } else {
    src = a->ints;
    bytes = a->n * sizeof(int64_t);
  }
  if (bytes != kiln_tensor_nbytes(y))
    return kiln__fail(c->err, KILN_INTERNAL, "Constant output has the wrong size");
  if (bytes) memcpy(y->data, src, bytes);
  return KILN_OK;
}

static kiln_status cos_value(const kiln__kctx *c, const kiln_tensor **value) {
  *value = NULL;
  const kiln__attr *a = kiln__attr_find(c->node, "value");
  if (!a) return KILN_OK;
  if (a->type != KILN__ATTR_TENSOR || !a->t || kiln_tensor_count(a->t) != 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "value must be a one-element tensor");
  size_t es = 0;
  TRY(elem_size(c, a->t->dtype, &es));
  *value = a->t;
  return KILN_OK;
}

static kiln_status constant_of_shape_infer(kiln__kctx *c) {
  const kiln_tensor *s, *v;
  int64_t dims[KILN_MAX_RANK];
  size_t n;
  TRY(get_in(c, 0, &s));
  TRY(cos_value(c, &v));
  TRY(kiln__read_ints(c, s, dims, KILN_MAX_RANK, &n));
  for (size_t i = 0; i < n; i++)
    if (dims[i] < 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "shape[%zu] is %lld", i,
                        (long long)dims[i]);
  set_out(c, 0, v ? v->dtype : KILN_DTYPE_FLOAT, (int)n, dims);
  return KILN_OK;
}

static kiln_status constant_of_shape_run(kiln__kctx *c) {
  const kiln_tensor *v;
  kiln_tensor *y = c->out[0];
  if (!y) return KILN_OK;
  TRY(cos_value(c, &v));
  size_t n = kiln_tensor_count(y), es = kiln_dtype_size(y->dtype);
  if (v) fill(y->data, v->data, es, n);
  else if (n) memset(y->data, 0, n * es);
  return KILN_OK;
}

static kiln_status range_args(const kiln__kctx *c, const kiln_tensor **t, int64_t *count) {
  for (int i = 0; i < 3; i++) {
    TRY(get_in(c, i, &t[i]));
    if (kiln_tensor_count(t[i]) != 1 || t[i]->rank > 1)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "input %d must be a scalar", i);
    if (t[i]->dtype != t[0]->dtype)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "inputs have different types");
  }
  kiln_dtype dt = t[0]->dtype;
  if (dt != KILN_DTYPE_FLOAT && dt != KILN_DTYPE_DOUBLE && dt != KILN_DTYPE_INT16 &&
      dt != KILN_DTYPE_INT32 && dt != KILN_DTYPE_INT64)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "Range of %s", kiln_dtype_name(dt));
  for (int i = 0; i < 3; i++)
    if (!t[i]->data) return KILN__NEED_DATA;
  if (kiln__dtype_is_float(dt)) {
    double b = kiln__load_f64(t[0]->data, dt, 0), e = kiln__load_f64(t[1]->data, dt, 0),
           d = kiln__load_f64(t[2]->data, dt, 0);
    if (d == 0 || !isfinite(b) || !isfinite(e) || !isfinite(d))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Range needs finite values and delta != 0");
    double n = ceil((e - b) / d);
    if (n > 9.0e15) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Range is too long");
    *count = n > 0 ? (int64_t)n : 0;
    return KILN_OK;
  }
  int64_t b = kiln__load_i64(t[0]->data, dt, 0), e = kiln__load_i64(t[1]->data, dt, 0),
          d = kiln__load_i64(t[2]->data, dt, 0);
  if (d == 0) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Range with delta 0");
  uint64_t span, step;
  if (d > 0) {
    span = e > b ? (uint64_t)e - (uint64_t)b : 0;
    step = (uint64_t)d;
  } else {
    span = b > e ? (uint64_t)b - (uint64_t)e : 0;
    step = (uint64_t)0 - (uint64_t)d;
  }
  uint64_t n = span / step + (span % step != 0);
  if (n > (uint64_t)INT64_MAX)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Range is too long");
  *count = (int64_t)n;
  return KILN_OK;
}

static kiln_status range_infer(kiln__kctx *c) {
  const kiln_tensor *t[3];
  int64_t n = 0;
  TRY(range_args(c, t, &n));
  set_out(c, 0, t[0]->dtype, 1, &n);
  return KILN_OK;
}

static kiln_status range_run(kiln__kctx *c) {
  const kiln_tensor *t[3];
  int64_t n = 0;
  kiln_tensor *y = c->out[0];
  if (!y) return KILN_OK;
  TRY(range_args(c, t, &n));
  switch (t[0]->dtype) {
    case KILN_DTYPE_FLOAT: {
      float b = *(const float *)t[0]->data, d = *(const float *)t[2]->data, *o = y->data;
      for (int64_t i = 0; i < n; i++) o[i] = b + (float)i * d;
      break;
    }
    case KILN_DTYPE_DOUBLE: {
      double b = *(const double *)t[0]->data, d = *(const double *)t[2]->data, *o = y->data;
      for (int64_t i = 0; i < n; i++) o[i] = b + (double)i * d;
      break;
    }
    default: {
      kiln_dtype dt = t[0]->dtype;
      uint64_t b = (uint64_t)kiln__load_i64(t[0]->data, dt, 0);
      uint64_t d = (uint64_t)kiln__load_i64(t[2]->data, dt, 0);
      for (int64_t i = 0; i < n; i++) /* unsigned: wraps instead of overflowing */
        kiln__store_i64(y->data, dt, (size_t)i, (int64_t)(b + (uint64_t)i * d));
    }
  }
  return KILN_OK;
}

static kiln_status eyelike_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  TRY(get_in(c, 0, &x));
  if (x->rank != 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "EyeLike needs a 2-D input, got rank %d",
                      x->rank);
  int64_t dt = kiln__attr_int(c->node, "dtype", (int64_t)x->dtype);
  if (dt <= 0 || dt >= KILN_DTYPE_COUNT || !is_numeric((kiln_dtype)dt))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "EyeLike of dtype %lld", (long long)dt);
  set_out(c, 0, (kiln_dtype)dt, 2, x->dims);
  return KILN_OK;
}

static kiln_status eyelike_run(kiln__kctx *c) {
  kiln_tensor *y = c->out[0];
  if (!y) return KILN_OK;
  int64_t k = kiln__attr_int(c->node, "k", 0), rows = y->dims[0], cols = y->dims[1];
  size_t n = kiln_tensor_count(y);
  if (n) memset(y->data, 0, n * kiln_dtype_size(y->dtype));
  if (k <= -rows || k >= cols) return KILN_OK;
  for (int64_t i = KILN__MAX(0, -k); i < rows && i + k < cols; i++)
    kiln__store_f64(y->data, y->dtype, (size_t)(i * cols + i + k), 1.0);
  return KILN_OK;
}

/* ---- Trilu ----------------------------------------------------------------------------------- */

static kiln_status trilu_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  if (x->rank < 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Trilu needs rank >= 2, got %d", x->rank);
  set_out(c, 0, x->dtype, x->rank, x->dims);
  return KILN_OK;
}

static kiln_status trilu_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *kt = in_at(c, 1);
  kiln_tensor *y = c->out[0];
  size_t es = 0;
  if (!y) return KILN_OK;
  TRY(elem_size(c, x->dtype, &es));
  int64_t k = 0;
  if (kt) {
    if (!kt->data || kiln_tensor_count(kt) != 1 || !is_numeric(kt->dtype))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "k must be a one-element integer tensor");
    k = kiln__load_i64(kt->data, kt->dtype, 0);
  }
  bool upper = kiln__attr_int(c->node, "upper", 1) != 0;
  int64_t rows = x->dims[x->rank - 2], cols = x->dims[x->rank - 1];
  k = KILN__MIN(KILN__MAX(k, -rows - 1), cols + 1);
  size_t mats = count_of(x->rank - 2, x->dims), rb = (size_t)cols * es;
  const char *s = x->data;
  char *d = y->data;
  for (size_t m = 0; m < mats; m++)
    for (int64_t i = 0; i < rows; i++, s += rb, d += rb) {
      /* kept columns: j >= i + k (upper) or j <= i + k (lower) */
      int64_t lo = upper ? KILN__MIN(KILN__MAX(i + k, 0), cols) : 0;
      int64_t hi = upper ? cols : KILN__MIN(KILN__MAX(i + k + 1, 0), cols);
      memset(d, 0, rb);
      if (hi > lo) memcpy(d + lo * (int64_t)es, s + lo * (int64_t)es, (size_t)(hi - lo) * es);
    }
  return KILN_OK;
}

/* ---- DepthToSpace, SpaceToDepth -------------------------------------------------------------- */

static kiln_status block_arg(const kiln__kctx *c, const kiln_tensor *x, int64_t *b) {
  if (x->rank != 4)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "input must be 4-D, got rank %d", x->rank);
  *b = kiln__attr_int(c->node, "blocksize", 0);
  if (*b < 1 || *b > (1 << 20))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "blocksize %lld is invalid",
                      (long long)*b);
  return KILN_OK;
}

static bool d2s_crd(const kiln__kctx *c) {
  return c->node->opset >= 11 && !strcmp(kiln__attr_str(c->node, "mode", "DCR"), "CRD");
}

static kiln_status d2s_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  int64_t b = 0;
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  TRY(block_arg(c, x, &b));
  const char *mode = kiln__attr_str(c->node, "mode", "DCR");
  if (strcmp(mode, "DCR") && strcmp(mode, "CRD"))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown mode '%s'", mode);
  if (x->dims[1] % (b * b))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "channels %lld do not divide by %lld",
                      (long long)x->dims[1], (long long)(b * b));
  int64_t dims[4] = {x->dims[0], x->dims[1] / (b * b), x->dims[2] * b, x->dims[3] * b};
  set_out(c, 0, x->dtype, 4, dims);
  return KILN_OK;
}

static kiln_status d2s_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  size_t es = 0;
  int64_t b = 0;
  if (!c->out[0]) return KILN_OK;
  TRY(elem_size(c, x->dtype, &es));
  TRY(block_arg(c, x, &b));
  int64_t C = x->dims[1], H = x->dims[2], W = x->dims[3], Co = C / (b * b);
  /* output [N, C', H, b1, W, b2]; the source reads channel b1*b*C' + b2*C' + c' (DCR) or
     c'*b*b + b1*b + b2 (CRD) */
  int64_t hw = H * W, sc, s1, s2;
  if (d2s_crd(c)) {
    sc = b * b * hw;
    s1 = b * hw;
    s2 = hw;
  } else {
    sc = hw;
    s1 = b * Co * hw;
    s2 = Co * hw;
  }
  view v = {6, {x->dims[0], Co, H, b, W, b}, {C * hw, sc, W, s1, 1, s2}};
  gather(c, c->out[0]->data, x->data, es, &v);
  return KILN_OK;
}

static kiln_status s2d_infer(kiln__kctx *c) {
  const kiln_tensor *x;
  size_t es = 0;
  int64_t b = 0;
  TRY(get_in(c, 0, &x));
  TRY(elem_size(c, x->dtype, &es));
  TRY(block_arg(c, x, &b));
  if (x->dims[2] % b || x->dims[3] % b)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "height and width must divide by %lld",
                      (long long)b);
  int64_t dims[4] = {x->dims[0], x->dims[1] * b * b, x->dims[2] / b, x->dims[3] / b};
  set_out(c, 0, x->dtype, 4, dims);
  return KILN_OK;
}

static kiln_status s2d_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  size_t es = 0;
  int64_t b = 0;
  if (!c->out[0]) return KILN_OK;
  TRY(elem_size(c, x->dtype, &es));
  TRY(block_arg(c, x, &b));
  int64_t C = x->dims[1], H = x->dims[2], W = x->dims[3];
  /* source [N, C, H/b, b1, W/b, b2] read as output [N, b1, b2, C, H/b, W/b] */
  view v = {6, {x->dims[0], b, b, C, H / b, W / b}, {C * H * W, W, 1, H * W, b * W, b}};
  gather(c, c->out[0]->data, x->data, es, &v);
  return KILN_OK;
}

/* ---- OneHot ---------------------------------------------------------------------------------- */

static kiln_status onehot_args(const kiln__kctx *c, const kiln_tensor **ind,
                               const kiln_tensor **val, int *axis, int64_t *depth) {
  const kiln_tensor *dt;
  TRY(get_in(c, 0, ind));
  TRY(get_in(c, 1, &dt));
  TRY(get_in(c, 2, val));
  int r = (*ind)->rank;
  if (!is_numeric((*ind)->dtype) || !is_numeric(dt->dtype))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "indices and depth must be numeric");
  if (kiln_tensor_count(*val) != 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "values must hold [off, on]");
  size_t es = 0;
  TRY(elem_size(c, (*val)->dtype, &es));
  if (r + 1 > KILN_MAX_RANK)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "output rank %d exceeds %d", r + 1,
                      KILN_MAX_RANK);
  int64_t a = kiln__attr_int(c->node, "axis", -1);
  if (!kiln__norm_axis(a, r + 1, axis))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                      (long long)a, r + 1);
  if (kiln_tensor_count(dt) != 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "depth must hold one value");
  if (!dt->data) return KILN__NEED_DATA;
  double d = kiln__load_f64(dt->data, dt->dtype, 0);
  if (!(d >= 1 && d < 9.0e15))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "depth %g is invalid", d);
  *depth = (int64_t)d;
  return KILN_OK;
}

static kiln_status onehot_infer(kiln__kctx *c) {
  const kiln_tensor *ind, *val;
  int axis = 0;
  int64_t depth, dims[KILN_MAX_RANK];
  TRY(onehot_args(c, &ind, &val, &axis, &depth));
  for (int i = 0, j = 0; i <= ind->rank; i++) dims[i] = i == axis ? depth : ind->dims[j++];
  set_out(c, 0, val->dtype, ind->rank + 1, dims);
  return KILN_OK;
}

static kiln_status onehot_run(kiln__kctx *c) {
  const kiln_tensor *ind, *val;
  int axis = 0;
  int64_t depth = 0;
  kiln_tensor *y = c->out[0];
  if (!y) return KILN_OK;
  TRY(onehot_args(c, &ind, &val, &axis, &depth));
  size_t es = kiln_dtype_size(val->dtype);
  const char *off = val->data, *on = off + es;
  char *d = y->data;
  fill(d, off, es, kiln_tensor_count(y));
  size_t outer = count_of(axis, ind->dims);
  size_t inner = count_of(ind->rank - axis, ind->dims + axis);
  bool is_int = !kiln__dtype_is_float(ind->dtype);
  for (size_t o = 0; o < outer; o++)
    for (size_t i = 0; i < inner; i++) {
      size_t at = o * inner + i;
      int64_t k;
      if (is_int) {
        k = kiln__load_i64(ind->data, ind->dtype, at);
        if (k < 0) k += depth;
      } else {
        double v = kiln__load_f64(ind->data, ind->dtype, at);
        if (v < 0) v += (double)depth;
        k = v >= 0 && v < (double)depth ? (int64_t)v : -1;
      }
      if (k >= 0 && k < depth)
        memcpy(d + ((o * (size_t)depth + (size_t)k) * inner + i) * es, on, es);
    }
  return KILN_OK;
}

/* ---- the table ------------------------------------------------------------------------------- */

const kiln__op kiln__ops_shape[] = {
    /* domain, name, infer, run, scratch, flags, min_inputs, max_inputs */
    {"", "Reshape", reshape_infer, copy_run, NULL, KILN__OPF_INPLACE, 1, 2},
    {"", "Flatten", flatten_infer, copy_run, NULL, KILN__OPF_INPLACE, 1, 1},
    {"", "Squeeze", squeeze_infer, copy_run, NULL, KILN__OPF_INPLACE, 1, 2},
    {"", "Unsqueeze", unsqueeze_infer, copy_run, NULL, KILN__OPF_INPLACE, 1, 2},
    {"", "Shape", shape_infer, shape_run, NULL, KILN__OPF_SHAPE_ONLY, 1, 1},
    {"", "Size", size_infer, size_run, NULL, KILN__OPF_SHAPE_ONLY, 1, 1},
    {"", "Transpose", transpose_infer, transpose_run, NULL, 0, 1, 1},
    {"", "Concat", concat_infer, concat_run, NULL, 0, 1, -1},
    {"", "Split", split_infer, split_run, NULL, 0, 1, 2},
    {"", "Slice", slice_infer, slice_run, NULL, 0, 1, 5},
    {"", "Expand", expand_infer, expand_run, NULL, 0, 2, 2},
    {"", "Tile", tile_infer, tile_run, NULL, 0, 2, 3},
    {"", "Pad", pad_infer, pad_run, NULL, 0, 1, 4},
    {"", "Constant", constant_infer, constant_run, NULL, 0, 0, 0},
    {"", "ConstantOfShape", constant_of_shape_infer, constant_of_shape_run, NULL, 0, 1, 1},
    {"", "Range", range_infer, range_run, NULL, 0, 3, 3},
    {"", "EyeLike", eyelike_infer, eyelike_run, NULL, 0, 1, 1},
    {"", "Trilu", trilu_infer, trilu_run, NULL, 0, 1, 2},
    {"", "DepthToSpace", d2s_infer, d2s_run, NULL, 0, 1, 1},
    {"", "SpaceToDepth", s2d_infer, s2d_run, NULL, 0, 1, 1},
    {"", "OneHot", onehot_infer, onehot_run, NULL, 0, 3, 3},
    {0},
};
