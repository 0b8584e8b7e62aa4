/* Helpers shared by shape inference and kernels. */
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
