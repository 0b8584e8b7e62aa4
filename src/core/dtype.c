/* Element types: names, sizes, half-precision conversion and generic element access. */
#include "core/common.h"

#include <math.h>

static const struct {
  const char *name;
  size_t size;
} dtypes[KILN_DTYPE_COUNT] = {
    [KILN_DTYPE_UNDEFINED] = {"undefined", 0}, [KILN_DTYPE_FLOAT] = {"float32", 4},
    [KILN_DTYPE_UINT8] = {"uint8", 1},         [KILN_DTYPE_INT8] = {"int8", 1},
    [KILN_DTYPE_UINT16] = {"uint16", 2},       [KILN_DTYPE_INT16] = {"int16", 2},
    [KILN_DTYPE_INT32] = {"int32", 4},         [KILN_DTYPE_INT64] = {"int64", 8},
    [KILN_DTYPE_STRING] = {"string", sizeof(char *)},
    [KILN_DTYPE_BOOL] = {"bool", 1},           [KILN_DTYPE_FLOAT16] = {"float16", 2},
    [KILN_DTYPE_DOUBLE] = {"float64", 8},      [KILN_DTYPE_UINT32] = {"uint32", 4},
    [KILN_DTYPE_UINT64] = {"uint64", 8},       [KILN_DTYPE_COMPLEX64] = {"complex64", 8},
    [KILN_DTYPE_COMPLEX128] = {"complex128", 16}, [KILN_DTYPE_BFLOAT16] = {"bfloat16", 2},
};

const char *kiln_dtype_name(kiln_dtype t) {
  if (t == KILN_DTYPE_SEQUENCE) return "sequence";
  if (t == KILN_DTYPE_OPTIONAL) return "optional";
  return (unsigned)t < KILN_DTYPE_COUNT ? dtypes[t].name : "invalid";
}

size_t kiln_dtype_size(kiln_dtype t) { return (unsigned)t < KILN_DTYPE_COUNT ? dtypes[t].size : 0; }

bool kiln__shape_count(int rank, const int64_t *dims, size_t *count) {
  size_t n = 1;
  for (int i = 0; i < rank; i++) {
    if (dims[i] < 0) return false;
    if (!kiln__mul_ok(n, (size_t)dims[i], &n)) return false;
  }
  *count = n;
  return true;
}

size_t kiln_tensor_count(const kiln_tensor *t) {
  size_t n = 0;
  return kiln__shape_count(t->rank, t->dims, &n) ? n : 0;
}

size_t kiln_tensor_nbytes(const kiln_tensor *t) {
  return kiln_tensor_count(t) * kiln_dtype_size(t->dtype);
}

kiln_status kiln_tensor_alloc(kiln_tensor *t, kiln_dtype dtype, int rank, const int64_t *dims,
                              kiln_error *err) {
  memset(t, 0, sizeof *t);
  if (rank < 0 || rank > KILN_MAX_RANK)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "rank %d is outside 0..%d", rank, KILN_MAX_RANK);
  if (dtype <= KILN_DTYPE_UNDEFINED || dtype >= KILN_DTYPE_COUNT)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "invalid dtype %d", (int)dtype);
  size_t count, bytes;
  if (!kiln__shape_count(rank, dims, &count) ||
      !kiln__mul_ok(count, kiln_dtype_size(dtype), &bytes))
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "tensor shape is negative or too large");
  void *data = kiln__aligned_alloc(bytes ? bytes : 1);
  if (!data) return kiln__fail(err, KILN_NO_MEMORY, "cannot allocate %zu bytes", bytes);
  memset(data, 0, bytes);
  t->dtype = dtype;
  t->rank = rank;
  if (rank) memcpy(t->dims, dims, (size_t)rank * sizeof *dims);
  t->data = data;
  return KILN_OK;
}

void kiln_tensor_release(kiln_tensor *t) {
  if (!t) return;
  if (t->dtype == KILN_DTYPE_SEQUENCE || t->dtype == KILN_DTYPE_OPTIONAL) {
    size_t n = t->dtype == KILN_DTYPE_SEQUENCE && t->rank == 1 && t->dims[0] > 0
                   ? (size_t)t->dims[0] : (t->dtype == KILN_DTYPE_OPTIONAL && t->data ? 1 : 0);
    kiln_tensor *items = t->data;
    for (size_t i = 0; i < n; i++) kiln_tensor_release(&items[i]);
  } else if (t->dtype == KILN_DTYPE_STRING && t->data) {
    char **s = t->data;
    size_t n = kiln_tensor_count(t);
    for (size_t i = 0; i < n; i++) kiln__free(s[i]);
  }
  kiln__aligned_free(t->data);
  memset(t, 0, sizeof *t);
}

bool kiln__host_is_le(void) {
  const uint16_t one = 1;
  uint8_t b;
  memcpy(&b, &one, 1);
  return b == 1;
}

void kiln__swap_bytes(void *data, size_t count, size_t size) {
  uint8_t *p = data;
  for (size_t i = 0; i < count; i++, p += size)
    for (size_t a = 0, b = size - 1; a < b; a++, b--) {
      uint8_t t = p[a];
      p[a] = p[b];
      p[b] = t;
    }
}

void kiln__le_to_host(void *data, size_t count, kiln_dtype t) {
  if (kiln__host_is_le()) return;
  size_t size = kiln_dtype_size(t);
  if (t == KILN_DTYPE_COMPLEX64 || t == KILN_DTYPE_COMPLEX128) {
    size /= 2;
    count *= 2;
  }
  if (size > 1) kiln__swap_bytes(data, count, size);
}

float kiln__f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else { /* subnormal: normalise */
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) {
        man <<= 1;
        exp--;
      }
      bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t kiln__f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) /* inf or nan */
    return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 | ((absx >> 13) & 0x3ff) : 0));
  if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
  if (absx < 0x38800000u) {                                  /* subnormal or zero in half */
    if (absx < 0x33000000u) return (uint16_t)sign;           /* < 2^-25: rounds to 0 */
    uint32_t e = absx >> 23, m = (absx & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e; /* 14 + (113 - e) - ... : bits to drop */
    uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) r++;
    return (uint16_t)(sign | r);
  }
  uint32_t r = absx + 0xfff + ((absx >> 13) & 1); /* round to nearest even */
  r -= 0x38000000u;                                /* rebias exponent 127 -> 15 */
  return (uint16_t)(sign | (r >> 13));
}

float kiln__bf16_to_f32(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t kiln__f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

bool kiln__dtype_is_float(kiln_dtype t) {
  return t == KILN_DTYPE_FLOAT || t == KILN_DTYPE_DOUBLE || t == KILN_DTYPE_FLOAT16 ||
         t == KILN_DTYPE_BFLOAT16;
}

bool kiln__dtype_is_signed_int(kiln_dtype t) {
  return t == KILN_DTYPE_INT8 || t == KILN_DTYPE_INT16 || t == KILN_DTYPE_INT32 ||
         t == KILN_DTYPE_INT64;
}

bool kiln__dtype_is_unsigned_int(kiln_dtype t) {
  return t == KILN_DTYPE_UINT8 || t == KILN_DTYPE_UINT16 || t == KILN_DTYPE_UINT32 ||
         t == KILN_DTYPE_UINT64 || t == KILN_DTYPE_BOOL;
}

double kiln__load_f64(const void *p, kiln_dtype t, size_t i) {
  switch (t) {
    case KILN_DTYPE_FLOAT: return ((const float *)p)[i];
    case KILN_DTYPE_DOUBLE: return ((const double *)p)[i];
    case KILN_DTYPE_FLOAT16: return kiln__f16_to_f32(((const uint16_t *)p)[i]);
    case KILN_DTYPE_BFLOAT16: return kiln__bf16_to_f32(((const uint16_t *)p)[i]);
    case KILN_DTYPE_UINT64: return (double)((const uint64_t *)p)[i];
    default: return (double)kiln__load_i64(p, t, i);
  }
}

int64_t kiln__load_i64(const void *p, kiln_dtype t, size_t i) {
  switch (t) {
    case KILN_DTYPE_BOOL:
    case KILN_DTYPE_UINT8: return ((const uint8_t *)p)[i];
    case KILN_DTYPE_INT8: return ((const int8_t *)p)[i];
    case KILN_DTYPE_UINT16: return ((const uint16_t *)p)[i];
    case KILN_DTYPE_INT16: return ((const int16_t *)p)[i];
    case KILN_DTYPE_INT32: return ((const int32_t *)p)[i];
    case KILN_DTYPE_INT64: return ((const int64_t *)p)[i];
    case KILN_DTYPE_UINT32: return ((const uint32_t *)p)[i];
    case KILN_DTYPE_UINT64: return (int64_t)((const uint64_t *)p)[i];
    default: {
      double d = kiln__load_f64(p, t, i);
      if (d != d) return 0;
      if (d >= 9.2233720368547758e18) return INT64_MAX;
      if (d <= -9.2233720368547758e18) return INT64_MIN;
      return (int64_t)d;
    }
  }
}

void kiln__store_f64(void *p, kiln_dtype t, size_t i, double v) {
  switch (t) {
    case KILN_DTYPE_FLOAT: ((float *)p)[i] = (float)v; break;
    case KILN_DTYPE_DOUBLE: ((double *)p)[i] = v; break;
    case KILN_DTYPE_FLOAT16: ((uint16_t *)p)[i] = kiln__f32_to_f16((float)v); break;
    case KILN_DTYPE_BFLOAT16: ((uint16_t *)p)[i] = kiln__f32_to_bf16((float)v); break;
    case KILN_DTYPE_BOOL: ((uint8_t *)p)[i] = v != 0; break;
    case KILN_DTYPE_UINT64: ((uint64_t *)p)[i] = v <= 0 || v != v ? 0 : v >= 1.8446744073709552e19 ? UINT64_MAX : (uint64_t)v; break;
    default: {
      int64_t x = v != v ? 0 : v >= 9.2233720368547758e18 ? INT64_MAX
                  : v <= -9.2233720368547758e18 ? INT64_MIN : (int64_t)v;
      kiln__store_i64(p, t, i, x);
    }
  }
}

void kiln__store_i64(void *p, kiln_dtype t, size_t i, int64_t v) {
  switch (t) {
    case KILN_DTYPE_BOOL: ((uint8_t *)p)[i] = v != 0; break;
    case KILN_DTYPE_UINT8: ((uint8_t *)p)[i] = (uint8_t)v; break;
    case KILN_DTYPE_INT8: ((int8_t *)p)[i] = (int8_t)v; break;
    case KILN_DTYPE_UINT16: ((uint16_t *)p)[i] = (uint16_t)v; break;
    case KILN_DTYPE_INT16: ((int16_t *)p)[i] = (int16_t)v; break;
    case KILN_DTYPE_INT32: ((int32_t *)p)[i] = (int32_t)v; break;
    case KILN_DTYPE_INT64: ((int64_t *)p)[i] = v; break;
    case KILN_DTYPE_UINT32: ((uint32_t *)p)[i] = (uint32_t)v; break;
    case KILN_DTYPE_UINT64: ((uint64_t *)p)[i] = (uint64_t)v; break;
    default: kiln__store_f64(p, t, i, (double)v); break;
  }
}
