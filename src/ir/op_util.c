/* Helpers shared by shape inference and kernels. */
#include <string.h>

#include "ir/op.h"

void kiln__set_shape(kiln_tensor *t, kiln_dtype dtype, int rank, const int64_t *dims) {
  t->dtype = dtype;
  t->rank = rank;
  for (int i = 0; i < rank; i++) t->dims[i] = dims[i];
}

kiln_status kiln__broadcast(int ra, const int64_t *a, int rb, const int64_t *b, int *rank,
                            int64_t *dims, kiln_error *err) {
  int r = KILN__MAX(ra, rb);
  for (int i = 0; i < r; i++) {
    int64_t da = i < r - ra ? 1 : a[i - (r - ra)];
    int64_t db = i < r - rb ? 1 : b[i - (r - rb)];
    if (da == db || db == 1) dims[i] = da;
    else if (da == 1) dims[i] = db;
    else
      return kiln__fail(err, KILN_INVALID_ARGUMENT,
                        "shapes cannot broadcast: dimension %d is %lld and %lld", i, (long long)da,
                        (long long)db);
  }
  *rank = r;
  return KILN_OK;
}

void kiln__strides(int rank, const int64_t *dims, int64_t *strides) {
  int64_t s = 1;
  for (int i = rank - 1; i >= 0; i--) {
    strides[i] = s;
    s *= dims[i];
  }
}

void kiln__bcast_strides(const kiln_tensor *t, int rank, const int64_t *dims, int64_t *strides) {
  int64_t own[KILN_MAX_RANK];
  kiln__strides(t->rank, t->dims, own);
  for (int i = 0; i < rank; i++) {
    int j = i - (rank - t->rank);
    strides[i] = (j < 0 || t->dims[j] == 1) && dims[i] != 1 ? 0 : (j < 0 ? 0 : own[j]);
  }
}

/* One tensor of `rows` rows of `width` per head under the layout. */
static kiln__att_view att_view(bool bshd, size_t H, size_t rows, size_t width) {
  if (bshd) return (kiln__att_view){.sb = rows * H * width, .sh = width, .ld = H * width};
  return (kiln__att_view){.sb = H * rows * width, .sh = rows * width, .ld = width};
}

kiln_status kiln__att_geom_of(const kiln__node *n, const kiln_tensor *q, const kiln_tensor *k,
                              const kiln_tensor *v, kiln__att_geom *g, kiln_error *err) {
  const char *layout = kiln__attr_str(n, "layout", "BHSD");
  bool bshd = !strcmp(layout, "BSHD");
  if (!bshd && strcmp(layout, "BHSD") != 0)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "Attention layout must be BHSD or BSHD, not %s",
                      layout);
  int hd = bshd ? 2 : 1, rd = bshd ? 1 : 2; /* the head and row axes */
  if (q->rank != 4 || k->rank != 4 || v->rank != 4 || k->dims[0] != q->dims[0] ||
      v->dims[0] != q->dims[0] || k->dims[hd] != q->dims[hd] || v->dims[hd] != q->dims[hd] ||
      k->dims[3] != q->dims[3] || v->dims[rd] != k->dims[rd])
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      bshd ? "Attention needs Q [B,S,H,D], K [B,T,H,D], V [B,T,H,Dv] (BSHD)"
                           : "Attention needs Q [B,H,S,D], K [B,H,T,D], V [B,H,T,Dv]");
  *g = (kiln__att_geom){.B = (size_t)q->dims[0], .H = (size_t)q->dims[hd],
                        .S = (size_t)q->dims[rd], .T = (size_t)k->dims[rd],
                        .D = (size_t)q->dims[3], .Dv = (size_t)v->dims[3]};
  g->q = att_view(bshd, g->H, g->S, g->D);
  g->k = att_view(bshd, g->H, g->T, g->D);
  g->v = att_view(bshd, g->H, g->T, g->Dv);
  g->y = att_view(bshd, g->H, g->S, g->Dv);
  return KILN_OK;
}

bool kiln__norm_axis(int64_t axis, int rank, int *out) {
  if (axis < -rank || axis >= rank) return false;
  *out = (int)(axis < 0 ? axis + rank : axis);
  return true;
}

kiln_status kiln__read_ints(const kiln__kctx *c, const kiln_tensor *t, int64_t *v, size_t cap,
                            size_t *n) {
  if (!t->data) return KILN__NEED_DATA;
  if (t->dtype != KILN_DTYPE_INT64 && t->dtype != KILN_DTYPE_INT32)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "expected an int32/int64 tensor, got %s",
                      kiln_dtype_name(t->dtype));
  size_t count = kiln_tensor_count(t);
  if (count > cap)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "too many elements (%zu > %zu)", count, cap);
  for (size_t i = 0; i < count; i++) v[i] = kiln__load_i64(t->data, t->dtype, i);
  *n = count;
  return KILN_OK;
}
