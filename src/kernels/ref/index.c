/* Reference kernels: index ops (gathers, scatters, selections, Unique, TfIdfVectorizer).
 *
 * Ops that only move elements work on every dtype by element size. Index tensors are int32 or
 * int64; negative indices count from the end and an index outside the dimension fails the run.
 * Ops whose output shape depends on input values (Compress, NonZero, Unique, NonMaxSuppression)
 * return KILN__NEED_DATA from infer() until the values are known, then infer the exact shape. */
#include "kernels/ref/index_ops.h"

#include <math.h>

/* ---- shared helpers -------------------------------------------------------------------------- */

/* Bytes per element; string tensors hold one char* per element. */
static size_t elem_size(kiln_dtype t) {
  return t == KILN_DTYPE_STRING ? sizeof(char *) : kiln_dtype_size(t);
}

static bool is_index_type(kiln_dtype t) {
  return t == KILN_DTYPE_INT32 || t == KILN_DTYPE_INT64;
}

static inline int64_t load_index(const kiln_tensor *t, size_t i) {
  return t->dtype == KILN_DTYPE_INT64 ? ((const int64_t *)t->data)[i]
                                      : (int64_t)((const int32_t *)t->data)[i];
}

/* Normalizes a possibly negative index against `dim`; false when out of range. */
static inline bool norm_index(int64_t v, int64_t dim, int64_t *out) {
  if (v < 0) v += dim;
  if (v < 0 || v >= dim) return false;
  *out = v;
  return true;
}

static size_t dims_prod(const int64_t *dims, int from, int to) {
  size_t p = 1;
  for (int i = from; i < to; i++) p *= (size_t)dims[i];
  return p;
}

static inline void copy_block(void *dst, const void *src, size_t nbytes) {
  switch (nbytes) {
    case 1: *(uint8_t *)dst = *(const uint8_t *)src; break;
    case 2: memcpy(dst, src, 2); break;
    case 4: memcpy(dst, src, 4); break;
    case 8: memcpy(dst, src, 8); break;
    default: memcpy(dst, src, nbytes); break;
  }
}

static kiln_status check_elem(kiln__kctx *c, kiln_dtype t) {
  if (elem_size(t) == 0)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "unsupported data type %s", kiln_dtype_name(t));
  return KILN_OK;
}

static kiln_status check_indices(kiln__kctx *c, const kiln_tensor *t, const char *what) {
  if (!is_index_type(t->dtype))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s must be int32 or int64, got %s", what,
                      kiln_dtype_name(t->dtype));
  return KILN_OK;
}

static kiln_status bad_index(kiln__kctx *c, int64_t v, int64_t dim) {
  return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "index %lld is out of range [%lld, %lld)",
                    (long long)v, (long long)-dim, (long long)dim);
}

/* Advances a row-major multi-index over `dims`. */
static inline void odometer_next(int rank, const int64_t *dims, int64_t *pos) {
  for (int d = rank - 1; d >= 0; d--) {
    if (++pos[d] < dims[d]) return;
    pos[d] = 0;
  }
}

/* ---- reductions for the scatters ------------------------------------------------------------- */

typedef enum reduction { RED_NONE, RED_ADD, RED_MUL, RED_MAX, RED_MIN } reduction;

static kiln_status read_reduction(kiln__kctx *c, reduction *r) {
  const char *s = kiln__attr_str(c->node, "reduction", "none");
  if (!strcmp(s, "none")) *r = RED_NONE;
  else if (!strcmp(s, "add")) *r = RED_ADD;
  else if (!strcmp(s, "mul")) *r = RED_MUL;
  else if (!strcmp(s, "max")) *r = RED_MAX;
  else if (!strcmp(s, "min")) *r = RED_MIN;
  else return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown reduction '%s'", s);
  if (*r != RED_NONE && c->in[0]->dtype == KILN_DTYPE_STRING)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "reduction '%s' on strings", s);
  return KILN_OK;
}

static inline double red_f64(double a, double b, reduction r) {
  switch (r) {
    case RED_ADD: return a + b;
    case RED_MUL: return a * b;
    case RED_MAX: return a > b || a != a ? a : b;
    case RED_MIN: return a < b || a != a ? a : b;
    default: return b;
  }
}

/* dst[i] = dst[i] (r) src[i] for n elements of type t. */
static void reduce_into(void *dst, const void *src, size_t n, kiln_dtype t, reduction r) {
  if (r == RED_NONE) {
    memcpy(dst, src, n * elem_size(t));
    return;
  }
  if (t == KILN_DTYPE_FLOAT) {
    float *d = dst;
    const float *s = src;
    for (size_t i = 0; i < n; i++) d[i] = (float)red_f64(d[i], s[i], r);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    if (kiln__dtype_is_float(t)) {
      kiln__store_f64(dst, t, i, red_f64(kiln__load_f64(dst, t, i), kiln__load_f64(src, t, i), r));
    } else if (t == KILN_DTYPE_UINT64) {
      uint64_t a = ((uint64_t *)dst)[i], b = ((const uint64_t *)src)[i];
      ((uint64_t *)dst)[i] = r == RED_ADD ? a + b : r == RED_MUL ? a * b
                             : r == RED_MAX ? (a > b ? a : b) : (a < b ? a : b);
    } else {
      int64_t a = kiln__load_i64(dst, t, i), b = kiln__load_i64(src, t, i);
      /* Wrapping arithmetic, as the narrower integer types would do. */
      int64_t v = r == RED_ADD ? (int64_t)((uint64_t)a + (uint64_t)b)
                  : r == RED_MUL ? (int64_t)((uint64_t)a * (uint64_t)b)
                  : r == RED_MAX ? (a > b ? a : b) : (a < b ? a : b);
      kiln__store_i64(dst, t, i, v);
    }
  }
}

/* ---- Gather ---------------------------------------------------------------------------------- */

static kiln_status gather_infer(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *idx = c->in[1];
  int axis = 0;
  kiln_status st;
  if ((st = check_elem(c, x->dtype)) || (st = check_indices(c, idx, "indices"))) return st;
  int64_t a = kiln__attr_int(c->node, "axis", 0);
  if (!kiln__norm_axis(a, x->rank, &axis))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                      (long long)a, x->rank);
  int rank = x->rank - 1 + idx->rank;
  if (rank > KILN_MAX_RANK)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "output rank %d exceeds %d", rank, KILN_MAX_RANK);
  int64_t dims[KILN_MAX_RANK];
  int r = 0;
  for (int i = 0; i < axis; i++) dims[r++] = x->dims[i];
  for (int i = 0; i < idx->rank; i++) dims[r++] = idx->dims[i];
  for (int i = axis + 1; i < x->rank; i++) dims[r++] = x->dims[i];
  kiln__set_shape(c->out[0], x->dtype, rank, dims);
  return KILN_OK;
}

static kiln_status gather_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *idx = c->in[1];
  int axis = 0;
  kiln__norm_axis(kiln__attr_int(c->node, "axis", 0), x->rank, &axis);
  size_t es = elem_size(x->dtype);
  size_t outer = dims_prod(x->dims, 0, axis);
  size_t inner = dims_prod(x->dims, axis + 1, x->rank) * es;
  size_t n = kiln_tensor_count(idx);
  int64_t dim = x->dims[axis];
  for (size_t j = 0; j < n; j++) {
    int64_t v;
    if (!norm_index(load_index(idx, j), dim, &v)) return bad_index(c, load_index(idx, j), dim);
  }
  const char *src = x->data;
  char *dst = c->out[0]->data;
  for (size_t o = 0; o < outer; o++) {
    const char *base = src + o * (size_t)dim * inner;
    for (size_t j = 0; j < n; j++, dst += inner) {
      int64_t v = load_index(idx, j);
      if (v < 0) v += dim;
      copy_block(dst, base + (size_t)v * inner, inner);
    }
  }
  return KILN_OK;
}

/* ---- GatherElements -------------------------------------------------------------------------- */

/* Checks the shared constraints of GatherElements and ScatterElements: indices have the data's
   rank and fit inside it along every axis but `axis`. */
static kiln_status elements_check(kiln__kctx *c, const kiln_tensor *x, const kiln_tensor *idx,
                                  int *axis) {
  kiln_status st;
  if ((st = check_elem(c, x->dtype)) || (st = check_indices(c, idx, "indices"))) return st;
  int64_t a = kiln__attr_int(c->node, "axis", 0);
  if (!kiln__norm_axis(a, x->rank, axis))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                      (long long)a, x->rank);
  if (idx->rank != x->rank)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "indices rank %d differs from data rank %d",
                      idx->rank, x->rank);
  for (int d = 0; d < x->rank; d++)
    if (d != *axis && idx->dims[d] > x->dims[d])
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "indices dimension %d (%lld) exceeds the data's (%lld)", d,
                        (long long)idx->dims[d], (long long)x->dims[d]);
  return KILN_OK;
}

static kiln_status gather_elements_infer(kiln__kctx *c) {
  int axis = 0;
  kiln_status st = elements_check(c, c->in[0], c->in[1], &axis);
  if (st) return st;
  kiln__set_shape(c->out[0], c->in[0]->dtype, c->in[1]->rank, c->in[1]->dims);
  return KILN_OK;
}

static kiln_status gather_elements_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *idx = c->in[1];
  int axis = 0;
  kiln_status st = elements_check(c, x, idx, &axis);
  if (st) return st;
  int rank = x->rank;
  size_t es = elem_size(x->dtype);
  int64_t xs[KILN_MAX_RANK], pos[KILN_MAX_RANK] = {0};
  kiln__strides(rank, x->dims, xs);
  size_t n = kiln_tensor_count(idx);
  int64_t dim = x->dims[axis];
  const char *src = x->data;
  char *dst = c->out[0]->data;
  for (size_t i = 0; i < n; i++) {
    int64_t v;
    if (!norm_index(load_index(idx, i), dim, &v)) return bad_index(c, load_index(idx, i), dim);
    int64_t off = 0;
    for (int d = 0; d < rank; d++) off += (d == axis ? v : pos[d]) * xs[d];
    copy_block(dst + i * es, src + (size_t)off * es, es);
    odometer_next(rank, idx->dims, pos);
  }
  return KILN_OK;
}

/* ---- GatherND -------------------------------------------------------------------------------- */

typedef struct nd_geom {
  int b, k;            /* batch dims, index tuple length */
  size_t batches;      /* product of the batch dims */
  size_t tuples;       /* index tuples per batch */
  size_t slice;        /* elements per gathered/scattered slice */
  size_t batch_stride; /* data elements per batch */
  int64_t strides[KILN_MAX_RANK]; /* data element strides of the indexed dims */
} nd_geom;

static kiln_status nd_geometry(kiln__kctx *c, const kiln_tensor *x, const kiln_tensor *idx,
                               int64_t batch_dims, nd_geom *g) {
  kiln_status st;
  if ((st = check_elem(c, x->dtype)) || (st = check_indices(c, idx, "indices"))) return st;
  if (x->rank < 1 || idx->rank < 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "data and indices need rank >= 1");
  if (batch_dims < 0 || batch_dims >= KILN__MIN(x->rank, idx->rank))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "batch_dims %lld is out of range",
                      (long long)batch_dims);
  g->b = (int)batch_dims;
  int64_t k = idx->dims[idx->rank - 1];
  if (k < 1 || k > x->rank - g->b)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "indices' last dimension %lld must be in [1, %d]", (long long)k,
                      x->rank - g->b);
  g->k = (int)k;
  for (int i = 0; i < g->b; i++)
    if (x->dims[i] != idx->dims[i])
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "batch dimension %d differs between data and indices", i);
  g->batches = dims_prod(x->dims, 0, g->b);
  g->tuples = dims_prod(idx->dims, g->b, idx->rank - 1);
  g->slice = dims_prod(x->dims, g->b + g->k, x->rank);
  g->batch_stride = dims_prod(x->dims, g->b, x->rank);
  for (int j = 0; j < g->k; j++) g->strides[j] = (int64_t)dims_prod(x->dims, g->b + j + 1, x->rank);
  return KILN_OK;
}

/* Element offset (within one batch) of the slice that index tuple `t` names. */
static kiln_status nd_offset(kiln__kctx *c, const kiln_tensor *x, const kiln_tensor *idx,
                             const nd_geom *g, size_t t, size_t *off) {
  size_t o = 0;
  for (int j = 0; j < g->k; j++) {
    int64_t raw = load_index(idx, t * (size_t)g->k + (size_t)j), v;
    if (!norm_index(raw, x->dims[g->b + j], &v)) return bad_index(c, raw, x->dims[g->b + j]);
    o += (size_t)v * (size_t)g->strides[j];
  }
  *off = o;
  return KILN_OK;
}

static kiln_status gathernd_infer(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *idx = c->in[1];
  nd_geom g = {0};
  int64_t bd = c->node->opset >= 12 ? kiln__attr_int(c->node, "batch_dims", 0) : 0;
  kiln_status st = nd_geometry(c, x, idx, bd, &g);
  if (st) return st;
  int rank = idx->rank - 1 + x->rank - g.b - g.k;
  if (rank > KILN_MAX_RANK)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "output rank %d exceeds %d", rank, KILN_MAX_RANK);
  int64_t dims[KILN_MAX_RANK];
  int r = 0;
  for (int i = 0; i < idx->rank - 1; i++) dims[r++] = idx->dims[i];
  for (int i = g.b + g.k; i < x->rank; i++) dims[r++] = x->dims[i];
  kiln__set_shape(c->out[0], x->dtype, rank, dims);
  return KILN_OK;
}

static kiln_status gathernd_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *idx = c->in[1];
  nd_geom g = {0};
  int64_t bd = c->node->opset >= 12 ? kiln__attr_int(c->node, "batch_dims", 0) : 0;
  kiln_status st = nd_geometry(c, x, idx, bd, &g);
  if (st) return st;
  size_t es = elem_size(x->dtype), bytes = g.slice * es;
  char *dst = c->out[0]->data;
  for (size_t b = 0; b < g.batches; b++) {
    const char *src = (const char *)x->data + b * g.batch_stride * es;
    for (size_t t = 0; t < g.tuples; t++, dst += bytes) {
      size_t off = 0;
      if ((st = nd_offset(c, x, idx, &g, b * g.tuples + t, &off))) return st;
      copy_block(dst, src + off * es, bytes);
    }
  }
  return KILN_OK;
}

/* ---- ScatterND ------------------------------------------------------------------------------- */

static kiln_status scatternd_check(kiln__kctx *c, nd_geom *g) {
  const kiln_tensor *x = c->in[0], *idx = c->in[1], *upd = c->in[2];
  kiln_status st = nd_geometry(c, x, idx, 0, g);
  if (st) return st;
  if (upd->dtype != x->dtype)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "updates type %s differs from data type %s",
                      kiln_dtype_name(upd->dtype), kiln_dtype_name(x->dtype));
  /* updates.shape == indices.shape[:-1] + data.shape[k:] */
  int want = idx->rank - 1 + x->rank - g->k;
  bool ok = upd->rank == want;
  for (int i = 0; ok && i < idx->rank - 1; i++) ok = upd->dims[i] == idx->dims[i];
  for (int i = g->k; ok && i < x->rank; i++) ok = upd->dims[idx->rank - 1 + i - g->k] == x->dims[i];
  if (!ok)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "updates shape must be indices.shape[:-1] + data.shape[k:]");
  return KILN_OK;
}

static kiln_status scatter_same_infer(kiln__kctx *c) {
  kiln_status st = check_elem(c, c->in[0]->dtype);
  if (st) return st;
  kiln__set_shape(c->out[0], c->in[0]->dtype, c->in[0]->rank, c->in[0]->dims);
  return KILN_OK;
}

static kiln_status scatternd_infer(kiln__kctx *c) {
  nd_geom g = {0};
  kiln_status st = scatternd_check(c, &g);
  if (st) return st;
  return scatter_same_infer(c);
}

static kiln_status scatternd_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *idx = c->in[1], *upd = c->in[2];
  nd_geom g = {0};
  reduction red;
  kiln_status st;
  if ((st = scatternd_check(c, &g)) || (st = read_reduction(c, &red))) return st;
  size_t es = elem_size(x->dtype);
  /* Validate every index before touching the output, so a failure leaves no half result. */
  size_t off = 0;
  for (size_t t = 0; t < g.tuples; t++)
    if ((st = nd_offset(c, x, idx, &g, t, &off))) return st;
  char *dst = c->out[0]->data;
  if (dst != x->data) memcpy(dst, x->data, kiln_tensor_count(x) * es);
  const char *src = upd->data;
  for (size_t t = 0; t < g.tuples; t++, src += g.slice * es) {
    nd_offset(c, x, idx, &g, t, &off);
    reduce_into(dst + off * es, src, g.slice, x->dtype, red);
  }
  return KILN_OK;
}

/* ---- ScatterElements / Scatter --------------------------------------------------------------- */

static kiln_status scatter_elements_check(kiln__kctx *c, int *axis) {
  const kiln_tensor *x = c->in[0], *idx = c->in[1], *upd = c->in[2];
  kiln_status st = elements_check(c, x, idx, axis);
  if (st) return st;
  if (upd->dtype != x->dtype)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "updates type %s differs from data type %s",
                      kiln_dtype_name(upd->dtype), kiln_dtype_name(x->dtype));
  bool ok = upd->rank == idx->rank;
  for (int d = 0; ok && d < idx->rank; d++) ok = upd->dims[d] == idx->dims[d];
  if (!ok)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "updates and indices shapes differ");
  return KILN_OK;
}

static kiln_status scatter_elements_infer(kiln__kctx *c) {
  int axis = 0;
  kiln_status st = scatter_elements_check(c, &axis);
  if (st) return st;
  return scatter_same_infer(c);
}

static kiln_status scatter_elements_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *idx = c->in[1], *upd = c->in[2];
  int axis = 0;
  reduction red;
  kiln_status st = scatter_elements_check(c, &axis);
  if (st) return st;
  if ((st = read_reduction(c, &red))) return st;
  int rank = x->rank;
  size_t es = elem_size(x->dtype);
  size_t n = kiln_tensor_count(idx);
  int64_t dim = x->dims[axis];
  for (size_t i = 0; i < n; i++) {
    int64_t v;
    if (!norm_index(load_index(idx, i), dim, &v)) return bad_index(c, load_index(idx, i), dim);
  }
  int64_t xs[KILN_MAX_RANK], pos[KILN_MAX_RANK] = {0};
  kiln__strides(rank, x->dims, xs);
  char *dst = c->out[0]->data;
  if (dst != x->data) memcpy(dst, x->data, kiln_tensor_count(x) * es);
  const char *src = upd->data;
  for (size_t i = 0; i < n; i++) {
    int64_t v = load_index(idx, i);
    if (v < 0) v += dim;
    int64_t off = 0;
    for (int d = 0; d < rank; d++) off += (d == axis ? v : pos[d]) * xs[d];
    reduce_into(dst + (size_t)off * es, src + i * es, 1, x->dtype, red);
    odometer_next(rank, idx->dims, pos);
  }
  return KILN_OK;
}

/* ---- Compress -------------------------------------------------------------------------------- */

static inline bool truthy(const kiln_tensor *t, size_t i) {
  if (t->dtype == KILN_DTYPE_BOOL || t->dtype == KILN_DTYPE_UINT8)
    return ((const uint8_t *)t->data)[i] != 0;
  return kiln__load_f64(t->data, t->dtype, i) != 0;
}

/* Returns the axis (-1 when flattening) and the length along it. */
static kiln_status compress_axis(kiln__kctx *c, int *axis, size_t *len) {
  const kiln_tensor *x = c->in[0], *cond = c->in[1];
  kiln_status st = check_elem(c, x->dtype);
  if (st) return st;
  if (cond->rank != 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "condition must be 1-D, got rank %d",
                      cond->rank);
  if (cond->dtype == KILN_DTYPE_STRING || elem_size(cond->dtype) == 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "condition must be bool");
  const kiln__attr *a = kiln__attr_find(c->node, "axis");
  if (!a) {
    *axis = -1;
    *len = kiln_tensor_count(x);
    return KILN_OK;
  }
  if (!kiln__norm_axis(a->i, x->rank, axis))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                      (long long)a->i, x->rank);
  *len = (size_t)x->dims[*axis];
  return KILN_OK;
}

static kiln_status compress_infer(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *cond = c->in[1];
  int axis = 0;
  size_t len = 0;
  kiln_status st = compress_axis(c, &axis, &len);
  if (st) return st;
  if (!cond->data) {
    c->out[0]->dtype = x->dtype;
    return KILN__NEED_DATA;
  }
  /* Entries past the selected axis' length select nothing. */
  size_t n = KILN__MIN(len, kiln_tensor_count(cond)), kept = 0;
  for (size_t i = 0; i < n; i++) kept += truthy(cond, i);
  if (axis < 0) {
    int64_t d = (int64_t)kept;
    kiln__set_shape(c->out[0], x->dtype, 1, &d);
  } else {
    int64_t dims[KILN_MAX_RANK];
    memcpy(dims, x->dims, sizeof(int64_t) * (size_t)x->rank);
    dims[axis] = (int64_t)kept;
    kiln__set_shape(c->out[0], x->dtype, x->rank, dims);
  }
  return KILN_OK;
}

static kiln_status compress_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *cond = c->in[1];
  int axis = 0;
  size_t len = 0;
  kiln_status st = compress_axis(c, &axis, &len);
  if (st) return st;
  size_t es = elem_size(x->dtype);
  size_t outer = axis < 0 ? 1 : dims_prod(x->dims, 0, axis);
  size_t inner = (axis < 0 ? 1 : dims_prod(x->dims, axis + 1, x->rank)) * es;
  size_t n = KILN__MIN(len, kiln_tensor_count(cond)), kept = 0;
  for (size_t j = 0; j < n; j++) kept += truthy(cond, j);
  if (kept != (size_t)c->out[0]->dims[axis < 0 ? 0 : axis])
    return kiln__fail(c->err, KILN_INTERNAL, "condition changed after inference");
  const char *src = x->data;
  char *dst = c->out[0]->data;
  for (size_t o = 0; o < outer; o++) {
    const char *base = src + o * len * inner;
    for (size_t j = 0; j < n; j++)
      if (truthy(cond, j)) {
        copy_block(dst, base + j * inner, inner);
        dst += inner;
      }
  }
  return KILN_OK;
}

/* ---- NonZero --------------------------------------------------------------------------------- */

static inline bool nonzero_at(const kiln_tensor *t, size_t i) {
  switch (t->dtype) {
    case KILN_DTYPE_FLOAT: return ((const float *)t->data)[i] != 0.0f;
    case KILN_DTYPE_DOUBLE: return ((const double *)t->data)[i] != 0.0;
    case KILN_DTYPE_FLOAT16:
    case KILN_DTYPE_BFLOAT16: return (((const uint16_t *)t->data)[i] & 0x7fff) != 0;
    case KILN_DTYPE_BOOL:
    case KILN_DTYPE_UINT8:
    case KILN_DTYPE_INT8: return ((const uint8_t *)t->data)[i] != 0;
    case KILN_DTYPE_INT16:
    case KILN_DTYPE_UINT16: return ((const uint16_t *)t->data)[i] != 0;
    case KILN_DTYPE_INT32:
    case KILN_DTYPE_UINT32: return ((const uint32_t *)t->data)[i] != 0;
    case KILN_DTYPE_INT64:
    case KILN_DTYPE_UINT64: return ((const uint64_t *)t->data)[i] != 0;
    case KILN_DTYPE_STRING: return ((char *const *)t->data)[i] && ((char *const *)t->data)[i][0];
    default: return false;
  }
}

static kiln_status nonzero_infer(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  if (elem_size(x->dtype) == 0 || x->dtype == KILN_DTYPE_COMPLEX64 ||
      x->dtype == KILN_DTYPE_COMPLEX128)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "unsupported data type %s",
                      kiln_dtype_name(x->dtype));
  c->out[0]->dtype = KILN_DTYPE_INT64;
  if (!x->data) return KILN__NEED_DATA;
  size_t n = kiln_tensor_count(x), nz = 0;
  for (size_t i = 0; i < n; i++) nz += nonzero_at(x, i);
  /* A scalar is treated as a 1-D tensor of one element. */
  int64_t dims[2] = {KILN__MAX(x->rank, 1), (int64_t)nz};
  kiln__set_shape(c->out[0], KILN_DTYPE_INT64, 2, dims);
  return KILN_OK;
}

static kiln_status nonzero_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  int rank = x->rank;
  size_t n = kiln_tensor_count(x), nz = (size_t)c->out[0]->dims[1];
  int64_t *out = c->out[0]->data;
  int64_t pos[KILN_MAX_RANK] = {0};
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    if (nonzero_at(x, i)) {
      if (k >= nz) return kiln__fail(c->err, KILN_INTERNAL, "input changed after inference");
      if (rank == 0) out[k] = 0;
      for (int d = 0; d < rank; d++) out[(size_t)d * nz + k] = pos[d];
      k++;
    }
    odometer_next(rank, x->dims, pos);
  }
  return KILN_OK;
}

/* ---- Unique ---------------------------------------------------------------------------------- */

void kiln__sort_indices(size_t *v, size_t *tmp, size_t n, kiln__idx_cmp cmp, const void *ctx) {
  size_t *a = v, *b = tmp;
  for (size_t w = 1; w < n; w *= 2) {
    for (size_t lo = 0, mid, hi; lo < n; lo = hi) {
      mid = lo + KILN__MIN(w, n - lo);
      hi = mid + KILN__MIN(w, n - mid);
      size_t i = lo, j = mid, k = lo;
      while (i < mid && j < hi) b[k++] = cmp(ctx, a[j], a[i]) < 0 ? a[j++] : a[i++];
      while (i < mid) b[k++] = a[i++];
      while (j < hi) b[k++] = a[j++];
    }
    size_t *t = a;
    a = b;
    b = t;
  }
  if (a != v) memcpy(v, a, n * sizeof(size_t));
}

typedef struct unique_view {
  const kiln_tensor *x;
  size_t outer, dim, inner; /* slices along the axis: outer x dim x inner elements */
} unique_view;

/* Orders NaN after every number and equal to itself, as numpy's sort does. */
static inline int cmp_f64(double a, double b) {
  if (a < b) return -1;
  if (a > b) return 1;
  if (a == b) return 0;
  return (a != a) - (b != b);
}

static int cmp_elem(const kiln_tensor *x, size_t i, size_t j) {
  const void *p = x->data;
  switch (x->dtype) {
    case KILN_DTYPE_FLOAT: return cmp_f64(((const float *)p)[i], ((const float *)p)[j]);
    case KILN_DTYPE_UINT64: {
      uint64_t a = ((const uint64_t *)p)[i], b = ((const uint64_t *)p)[j];
      return (a > b) - (a < b);
    }
    case KILN_DTYPE_STRING: {
      const char *a = ((char *const *)p)[i], *b = ((char *const *)p)[j];
      int r = strcmp(a ? a : "", b ? b : "");
      return (r > 0) - (r < 0);
    }
    default:
      if (kiln__dtype_is_float(x->dtype))
        return cmp_f64(kiln__load_f64(p, x->dtype, i), kiln__load_f64(p, x->dtype, j));
      int64_t a = kiln__load_i64(p, x->dtype, i), b = kiln__load_i64(p, x->dtype, j);
      return (a > b) - (a < b);
  }
}

/* Lexicographic comparison of slices a and b, elements taken in row-major order. */
static int unique_cmp(const void *ctx, size_t a, size_t b) {
  const unique_view *u = ctx;
  for (size_t o = 0; o < u->outer; o++) {
    size_t base = o * u->dim * u->inner;
    for (size_t k = 0; k < u->inner; k++) {
      int r = cmp_elem(u->x, base + a * u->inner + k, base + b * u->inner + k);
      if (r) return r;
    }
  }
  return 0;
}

/* axis: -1 flattens. */
static kiln_status unique_view_of(kiln__kctx *c, unique_view *u, int *axis) {
  const kiln_tensor *x = c->in[0];
  kiln_status st = check_elem(c, x->dtype);
  if (st) return st;
  if (x->dtype == KILN_DTYPE_COMPLEX64 || x->dtype == KILN_DTYPE_COMPLEX128)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "Unique of complex numbers");
  u->x = x;
  const kiln__attr *a = kiln__attr_find(c->node, "axis");
  if (!a) {
    *axis = -1;
    u->outer = 1;
    u->dim = kiln_tensor_count(x);
    u->inner = 1;
    return KILN_OK;
  }
  if (!kiln__norm_axis(a->i, x->rank, axis))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis %lld is out of range for rank %d",
                      (long long)a->i, x->rank);
  u->outer = dims_prod(x->dims, 0, *axis);
  u->dim = (size_t)x->dims[*axis];
  u->inner = dims_prod(x->dims, *axis + 1, x->rank);
  return KILN_OK;
}

/* Sorts the slices (perm, with tmp as merge space) and labels each slice with its group in
   sorted order (gid, may be NULL). Returns the number of distinct slices. */
static size_t unique_groups(const unique_view *u, size_t *perm, size_t *tmp, size_t *gid) {
  size_t n = u->dim;
  for (size_t i = 0; i < n; i++) perm[i] = i;
  kiln__sort_indices(perm, tmp, n, unique_cmp, u);
  size_t g = 0;
  for (size_t p = 0; p < n; p++) {
    if (p > 0 && unique_cmp(u, perm[p - 1], perm[p]) != 0) g++;
    if (gid) gid[perm[p]] = g;
  }
  return n ? g + 1 : 0;
}

static kiln_status unique_infer(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  unique_view u = {0};
  int axis = 0;
  kiln_status st = unique_view_of(c, &u, &axis);
  if (st) return st;
  for (int i = 0; i < c->n_out; i++)
    if (c->out[i]) c->out[i]->dtype = i == 0 ? x->dtype : KILN_DTYPE_INT64;
  if (!x->data) return KILN__NEED_DATA;
  size_t bytes;
  if (!kiln__mul_ok(u.dim, 2 * sizeof(size_t), &bytes))
    return kiln__fail(c->err, KILN_NO_MEMORY, "Unique input too large");
  size_t *buf = kiln__malloc(bytes ? bytes : 1);
  if (!buf) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory in Unique");
  size_t groups = unique_groups(&u, buf, buf + u.dim, NULL);
  kiln__free(buf);
  int64_t dims[KILN_MAX_RANK], ng = (int64_t)groups;
  if (axis < 0) {
    kiln__set_shape(c->out[0], x->dtype, 1, &ng);
  } else {
    memcpy(dims, x->dims, sizeof(int64_t) * (size_t)x->rank);
    dims[axis] = ng;
    kiln__set_shape(c->out[0], x->dtype, x->rank, dims);
  }
  if (c->n_out > 1 && c->out[1]) kiln__set_shape(c->out[1], KILN_DTYPE_INT64, 1, &ng);
  int64_t inv = (int64_t)u.dim;
  if (c->n_out > 2 && c->out[2]) kiln__set_shape(c->out[2], KILN_DTYPE_INT64, 1, &inv);
  if (c->n_out > 3 && c->out[3]) kiln__set_shape(c->out[3], KILN_DTYPE_INT64, 1, &ng);
  return KILN_OK;
}

static size_t unique_scratch(const kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  const kiln__attr *a = kiln__attr_find(c->node, "axis");
  int axis = 0;
  size_t n = kiln_tensor_count(x);
  if (a && kiln__norm_axis(a->i, x->rank, &axis)) n = (size_t)x->dims[axis];
  return 3 * n * sizeof(size_t);
}

static kiln_status unique_run(kiln__kctx *c) {
  unique_view u = {0};
  int axis = 0;
  kiln_status st = unique_view_of(c, &u, &axis);
  if (st) return st;
  size_t n = u.dim;
  if (c->scratch_bytes < 3 * n * sizeof(size_t))
    return kiln__fail(c->err, KILN_INTERNAL, "Unique scratch too small");
  size_t *perm = c->scratch, *label = perm + n, *gid = label + n;
  size_t groups = unique_groups(&u, perm, label, gid);
  kiln_tensor *y = c->out[0];
  if (axis < 0 ? (size_t)y->dims[0] != groups : (size_t)y->dims[axis] != groups)
    return kiln__fail(c->err, KILN_INTERNAL, "input changed after inference");
  /* Output position of each group: sorted order, or order of first occurrence. */
  if (kiln__attr_int(c->node, "sorted", 1)) {
    for (size_t g = 0; g < groups; g++) label[g] = g;
  } else {
    for (size_t g = 0; g < groups; g++) label[g] = SIZE_MAX;
    size_t next = 0;
    for (size_t i = 0; i < n; i++)
      if (label[gid[i]] == SIZE_MAX) label[gid[i]] = next++;
  }
  int64_t *indices = c->n_out > 1 && c->out[1] ? c->out[1]->data : NULL;
  int64_t *inverse = c->n_out > 2 && c->out[2] ? c->out[2]->data : NULL;
  int64_t *counts = c->n_out > 3 && c->out[3] ? c->out[3]->data : NULL;
  if (counts) memset(counts, 0, groups * sizeof(int64_t));
  size_t es = elem_size(u.x->dtype), slice = u.inner * es;
  const char *src = u.x->data;
  char *dst = y->data;
  for (size_t p = 0; p < n; p++) {
    size_t i = perm[p], g = gid[i], o = label[g];
    if (p == 0 || gid[perm[p - 1]] != g) {
      /* The first of a group in a stable sort is its first occurrence. */
      for (size_t b = 0; b < u.outer; b++)
        memcpy(dst + (b * groups + o) * slice, src + (b * n + i) * slice, slice);
      if (indices) indices[o] = (int64_t)i;
    }
    if (counts) counts[o]++;
  }
  if (inverse)
    for (size_t i = 0; i < n; i++) inverse[i] = (int64_t)label[gid[i]];
  return KILN_OK;
}

/* ---- ReverseSequence ------------------------------------------------------------------------- */

static kiln_status reverse_axes(kiln__kctx *c, int *batch, int *time) {
  const kiln_tensor *x = c->in[0], *lens = c->in[1];
  kiln_status st;
  if ((st = check_elem(c, x->dtype)) || (st = check_indices(c, lens, "sequence_lens"))) return st;
  int64_t b = kiln__attr_int(c->node, "batch_axis", 1), t = kiln__attr_int(c->node, "time_axis", 0);
  if (x->rank < 2 || (b != 0 && b != 1) || (t != 0 && t != 1) || b == t)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "batch_axis and time_axis must be 0 and 1 in some order, rank >= 2");
  *batch = (int)b;
  *time = (int)t;
  if (lens->rank != 1 || lens->dims[0] != x->dims[b])
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "sequence_lens must be 1-D with the batch size %lld", (long long)x->dims[b]);
  return KILN_OK;
}

static kiln_status reverse_infer(kiln__kctx *c) {
  int b = 0, t = 0;
  kiln_status st = reverse_axes(c, &b, &t);
  if (st) return st;
  kiln__set_shape(c->out[0], c->in[0]->dtype, c->in[0]->rank, c->in[0]->dims);
  return KILN_OK;
}

static kiln_status reverse_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *lens = c->in[1];
  int baxis = 0, taxis = 0;
  kiln_status st = reverse_axes(c, &baxis, &taxis);
  if (st) return st;
  size_t es = elem_size(x->dtype);
  size_t inner = dims_prod(x->dims, 2, x->rank) * es;
  size_t batch = (size_t)x->dims[baxis], time = (size_t)x->dims[taxis];
  /* Byte strides of the batch and time axes (the two leading axes). */
  size_t s0 = (size_t)x->dims[1] * inner, s1 = inner;
  size_t bs = baxis == 0 ? s0 : s1, ts = taxis == 0 ? s0 : s1;
  for (size_t b = 0; b < batch; b++) {
    int64_t len = load_index(lens, b);
    if (len < 0 || (size_t)len > time)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "sequence length %lld is out of [0, %zu]",
                        (long long)len, time);
  }
  const char *src = x->data;
  char *dst = c->out[0]->data;
  for (size_t b = 0; b < batch; b++) {
    size_t len = (size_t)load_index(lens, b);
    for (size_t t = 0; t < time; t++) {
      size_t from = t < len ? len - 1 - t : t;
      memcpy(dst + b * bs + t * ts, src + b * bs + from * ts, inner);
    }
  }
  return KILN_OK;
}

/* ---- TfIdfVectorizer ------------------------------------------------------------------------- */

typedef struct tfidf {
  int64_t min_n, max_n, max_skip;
  int mode; /* 0 TF, 1 IDF, 2 TFIDF */
  const int64_t *counts, *indexes, *pool;
  size_t n_counts, n_indexes, n_pool, n_weights;
  const float *weights;
  int64_t out_dim;
} tfidf;

static kiln_status tfidf_read(kiln__kctx *c, tfidf *t) {
  const kiln__node *n = c->node;
  const kiln_tensor *x = c->in[0];
  if (x->dtype == KILN_DTYPE_STRING || kiln__attr_find(n, "pool_strings"))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "TfIdfVectorizer on strings");
  kiln_status st = check_indices(c, x, "input");
  if (st) return st;
  if (x->rank != 1 && x->rank != 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "input must be 1-D or 2-D, got rank %d",
                      x->rank);
  t->min_n = kiln__attr_int(n, "min_gram_length", 0);
  t->max_n = kiln__attr_int(n, "max_gram_length", 0);
  t->max_skip = kiln__attr_int(n, "max_skip_count", 0);
  if (t->min_n < 1 || t->max_n < t->min_n || t->max_skip < 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "need 1 <= min_gram_length <= max_gram_length and max_skip_count >= 0");
  const char *mode = kiln__attr_str(n, "mode", "");
  if (!strcmp(mode, "TF")) t->mode = 0;
  else if (!strcmp(mode, "IDF")) t->mode = 1;
  else if (!strcmp(mode, "TFIDF")) t->mode = 2;
  else return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown mode '%s'", mode);
  t->n_counts = kiln__attr_ints(n, "ngram_counts", &t->counts);
  t->n_indexes = kiln__attr_ints(n, "ngram_indexes", &t->indexes);
  t->n_pool = kiln__attr_ints(n, "pool_int64s", &t->pool);
  t->n_weights = kiln__attr_floats(n, "weights", &t->weights);
  /* ngram_counts[i] is where the (i+1)-grams start in the pool; count the n-grams. */
  size_t total = 0;
  for (size_t i = 0; i < t->n_counts; i++) {
    int64_t lo = t->counts[i], hi = i + 1 < t->n_counts ? t->counts[i + 1] : (int64_t)t->n_pool;
    if (lo < 0 || hi < lo || hi > (int64_t)t->n_pool || (hi - lo) % (int64_t)(i + 1))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "ngram_counts do not partition the pool");
    total += (size_t)(hi - lo) / (i + 1);
  }
  if (total != t->n_indexes)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%zu ngram_indexes for %zu n-grams",
                      t->n_indexes, total);
  t->out_dim = 0;
  for (size_t i = 0; i < t->n_indexes; i++) {
    if (t->indexes[i] < 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "negative ngram index");
    t->out_dim = KILN__MAX(t->out_dim, t->indexes[i] + 1);
  }
  return KILN_OK;
}

static kiln_status tfidf_infer(kiln__kctx *c) {
  tfidf t = {0};
  kiln_status st = tfidf_read(c, &t);
  if (st) return st;
  const kiln_tensor *x = c->in[0];
  int64_t dims[2] = {x->dims[0], t.out_dim};
  if (x->rank == 1) kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, 1, &t.out_dim);
  else kiln__set_shape(c->out[0], KILN_DTYPE_FLOAT, 2, dims);
  return KILN_OK;
}

/* Id (position in ngram_indexes) of the n-gram x[s], x[s+d], ... in the pool, or -1. */
static int64_t tfidf_lookup(const tfidf *t, const kiln_tensor *x, size_t s, size_t d, int64_t n) {
  if ((size_t)n > t->n_counts) return -1;
  size_t id = 0;
  for (int64_t i = 0; i + 1 < n; i++) {
    int64_t lo = t->counts[i], hi = t->counts[i + 1];
    id += (size_t)(hi - lo) / (size_t)(i + 1);
  }
  int64_t lo = t->counts[n - 1];
  int64_t hi = (size_t)n < t->n_counts ? t->counts[n] : (int64_t)t->n_pool;
  for (int64_t p = lo; p < hi; p += n, id++) {
    int64_t k = 0;
    while (k < n && t->pool[p + k] == load_index(x, s + (size_t)k * d)) k++;
    if (k == n) return (int64_t)id;
  }
  return -1;
}

static kiln_status tfidf_run(kiln__kctx *c) {
  tfidf t = {0};
  kiln_status st = tfidf_read(c, &t);
  if (st) return st;
  const kiln_tensor *x = c->in[0];
  size_t rows = x->rank == 1 ? 1 : (size_t)x->dims[0];
  size_t len = (size_t)x->dims[x->rank - 1];
  float *out = c->out[0]->data;
  memset(out, 0, rows * (size_t)t.out_dim * sizeof(float));
  for (size_t r = 0; r < rows; r++) {
    float *f = out + r * (size_t)t.out_dim;
    int64_t start_n = t.min_n;
    /* Unigrams are counted once: they do not depend on the skip distance. */
    for (int64_t d = 1; d <= t.max_skip + 1; d++) {
      for (size_t s = 0; s < len; s++) {
        for (int64_t n = start_n; n <= t.max_n; n++) {
          if (s + (size_t)(n - 1) * (size_t)d >= len) break;
          int64_t id = tfidf_lookup(&t, x, r * len + s, (size_t)d, n);
          if (id >= 0) f[t.indexes[id]] += 1.0f;
        }
      }
      if (start_n == 1 && ++start_n > t.max_n) break;
    }
    for (int64_t i = 0; i < t.out_dim; i++) {
      float w = (size_t)i < t.n_weights ? t.weights[i] : 1.0f;
      if (t.mode == 1) f[i] = f[i] > 0 ? w : 0.0f;
      else if (t.mode == 2) f[i] *= w;
    }
  }
  return KILN_OK;
}

/* ---- the table ------------------------------------------------------------------------------- */

const kiln__op kiln__ops_index[] = {
    {"", "Gather", gather_infer, gather_run, NULL, 0, 2, 2},
    {"", "GatherElements", gather_elements_infer, gather_elements_run, NULL, 0, 2, 2},
    {"", "GatherND", gathernd_infer, gathernd_run, NULL, 0, 2, 2},
    {"", "Scatter", scatter_elements_infer, scatter_elements_run, NULL, KILN__OPF_INPLACE, 3, 3},
    {"", "ScatterElements", scatter_elements_infer, scatter_elements_run, NULL, KILN__OPF_INPLACE,
     3, 3},
    {"", "ScatterND", scatternd_infer, scatternd_run, NULL, KILN__OPF_INPLACE, 3, 3},
    {"", "Compress", compress_infer, compress_run, NULL, 0, 2, 2},
    {"", "NonZero", nonzero_infer, nonzero_run, NULL, 0, 1, 1},
    {"", "Unique", unique_infer, unique_run, unique_scratch, 0, 1, 1},
    {"", "ReverseSequence", reverse_infer, reverse_run, NULL, 0, 2, 2},
    {"", "TfIdfVectorizer", tfidf_infer, tfidf_run, NULL, 0, 1, 1},
    {"", "NonMaxSuppression", kiln__nms_infer, kiln__nms_run, kiln__nms_scratch, 0, 2, 5},
    {"", "RoiAlign", kiln__roialign_infer, kiln__roialign_run, NULL, 0, 3, 3},
    {"", "GridSample", kiln__gridsample_infer, kiln__gridsample_run, NULL, 0, 2, 2},
    {0},
};
