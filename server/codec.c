/* Request decoding and response encoding for the Open Inference Protocol (see codec.h). */
#include "codec.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

srv_limits srv_limits_default(void) {
  return (srv_limits){.max_body_bytes = 64u << 20,
                      .max_json_bytes = 32u << 20,
                      .max_json_depth = 32,
                      .max_tensor_elements = 16u << 20,
                      .max_tensors = 64};
}

static const struct {
  kiln_dtype t;
  const char *name;
} dtypes[] = {
    {KILN_DTYPE_BOOL, "BOOL"},    {KILN_DTYPE_UINT8, "UINT8"},    {KILN_DTYPE_UINT16, "UINT16"},
    {KILN_DTYPE_UINT32, "UINT32"}, {KILN_DTYPE_UINT64, "UINT64"}, {KILN_DTYPE_INT8, "INT8"},
    {KILN_DTYPE_INT16, "INT16"},  {KILN_DTYPE_INT32, "INT32"},    {KILN_DTYPE_INT64, "INT64"},
    {KILN_DTYPE_FLOAT16, "FP16"}, {KILN_DTYPE_FLOAT, "FP32"},     {KILN_DTYPE_DOUBLE, "FP64"},
    {KILN_DTYPE_BFLOAT16, "BF16"}, {KILN_DTYPE_STRING, "BYTES"},
};

const char *srv_dtype_name(kiln_dtype t) {
  for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
    if (dtypes[i].t == t) return dtypes[i].name;
  return NULL;
}

kiln_dtype srv_dtype_parse(const char *name) {
  for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
    if (!strcmp(dtypes[i].name, name)) return dtypes[i].t;
  return KILN_DTYPE_UNDEFINED;
}

float srv_half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    float v = ldexpf((float)man, -24);
    return sign ? -v : v;
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* Round to nearest even, overflow to infinity, NaN kept quiet. */
uint16_t srv_float_to_half(float f) {
  uint32_t x;
  memcpy(&x, &f, sizeof x);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
  uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds past 65504 */
  if (ax < 0x38800000u) { /* subnormal half (or zero) */
    float a;
    memcpy(&a, &ax, sizeof a);
    return (uint16_t)(sign | (uint16_t)lrintf(a * 16777216.0f)); /* a / 2^-24, ties to even */
  }
  uint32_t r = ax - 0x38000000u; /* rebias exponent 127 -> 15 */
  r += 0xfff + ((r >> 13) & 1);
  return (uint16_t)(sign | (r >> 13));
}

/* ---- buffer ---------------------------------------------------------------------------------- */

static int buf_reserve(srv_buf *b, size_t extra) {
  if (b->failed) return -1;
  if (b->len + extra + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1) cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p) {
    b->failed = 1;
    return -1;
  }
  b->data = p;
  b->cap = cap;
  return 0;
}

void srv_buf_put(srv_buf *b, const void *p, size_t n) {
  if (buf_reserve(b, n)) return;
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = 0;
}

void srv_buf_puts(srv_buf *b, const char *s) { srv_buf_put(b, s, strlen(s)); }

void srv_buf_printf(srv_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char small[256];
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->failed = 1;
    return;
  }
  if ((size_t)n < sizeof small) {
    srv_buf_put(b, small, (size_t)n);
    return;
  }
  if (buf_reserve(b, (size_t)n)) return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

void srv_buf_json_str(srv_buf *b, const char *s) {
  srv_buf_put(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\') {
      char esc[2] = {'\\', (char)*p};
      srv_buf_put(b, esc, 2);
    } else if (*p < 0x20) {
      srv_buf_printf(b, "\\u%04x", *p);
    } else {
      srv_buf_put(b, p, 1);
    }
  }
  srv_buf_put(b, "\"", 1);
}

void srv_buf_free(srv_buf *b) {
  free(b->data);
  *b = (srv_buf){0};
}

static void put_real(srv_buf *b, double v, int digits) {
  if (isnan(v) || isinf(v)) { /* JSON has no NaN or infinity: null, as Triton does */
    srv_buf_puts(b, "null");
    return;
  }
  srv_buf_printf(b, "%.*g", digits, v);
}

void srv_buf_json_data(srv_buf *b, const kiln_tensor *t) {
  size_t n = kiln_tensor_count(t);
  srv_buf_put(b, "[", 1);
  for (size_t i = 0; i < n && !b->failed; i++) {
    if (i) srv_buf_put(b, ",", 1);
    const void *d = t->data;
    switch (t->dtype) {
      case KILN_DTYPE_BOOL: srv_buf_puts(b, ((const uint8_t *)d)[i] ? "true" : "false"); break;
      case KILN_DTYPE_UINT8: srv_buf_printf(b, "%u", ((const uint8_t *)d)[i]); break;
      case KILN_DTYPE_UINT16: srv_buf_printf(b, "%u", ((const uint16_t *)d)[i]); break;
      case KILN_DTYPE_UINT32: srv_buf_printf(b, "%lu", (unsigned long)((const uint32_t *)d)[i]); break;
      case KILN_DTYPE_UINT64: srv_buf_printf(b, "%llu", (unsigned long long)((const uint64_t *)d)[i]); break;
      case KILN_DTYPE_INT8: srv_buf_printf(b, "%d", ((const int8_t *)d)[i]); break;
      case KILN_DTYPE_INT16: srv_buf_printf(b, "%d", ((const int16_t *)d)[i]); break;
      case KILN_DTYPE_INT32: srv_buf_printf(b, "%ld", (long)((const int32_t *)d)[i]); break;
      case KILN_DTYPE_INT64: srv_buf_printf(b, "%lld", (long long)((const int64_t *)d)[i]); break;
      case KILN_DTYPE_FLOAT16: put_real(b, srv_half_to_float(((const uint16_t *)d)[i]), 5); break;
      case KILN_DTYPE_FLOAT: put_real(b, ((const float *)d)[i], 9); break;
      case KILN_DTYPE_DOUBLE: put_real(b, ((const double *)d)[i], 17); break;
      case KILN_DTYPE_STRING: srv_buf_json_str(b, ((char *const *)d)[i]); break;
      default: srv_buf_puts(b, "null"); break;
    }
  }
  srv_buf_put(b, "]", 1);
}

/* ---- decoding -------------------------------------------------------------------------------- */

static kiln_status fail(kiln_error *err, kiln_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static kiln_status fail(kiln_error *err, kiln_status st, const char *fmt, ...) {
  if (err) {
    err->status = st;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
  }
  return st;
}

/* jansson's own depth limit is 2048; a request needs far less, and a cheap pre-scan keeps a
   deeply nested body from building thousands of objects first. */
static int json_too_deep(const uint8_t *p, size_t n, size_t max_depth) {
  size_t depth = 0;
  int in_str = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = p[i];
    if (in_str) {
      if (c == '\\') i++;
      else if (c == '"') in_str = 0;
    } else if (c == '"') {
      in_str = 1;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return 1;
    } else if ((c == ']' || c == '}') && depth) {
      depth--;
    }
  }
  return 0;
}

typedef struct fill {
  kiln_tensor *t;
  size_t count, want;
  const char *name;
  kiln_error *err;
} fill;

static kiln_status put_value(fill *f, const json_t *v) {
  if (f->count >= f->want)
    return fail(f->err, KILN_INVALID_ARGUMENT, "input '%s': more data than its shape holds",
                f->name);
  size_t i = f->count++;
  void *d = f->t->data;
  kiln_dtype dt = f->t->dtype;
  if (dt == KILN_DTYPE_BOOL) {
    if (json_is_boolean(v)) ((uint8_t *)d)[i] = json_is_true(v);
    else if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1))
      ((uint8_t *)d)[i] = (uint8_t)json_integer_value(v);
    else return fail(f->err, KILN_INVALID_ARGUMENT, "input '%s': BOOL data must be true or false",
                     f->name);
    return KILN_OK;
  }
  if (dt == KILN_DTYPE_FLOAT || dt == KILN_DTYPE_DOUBLE || dt == KILN_DTYPE_FLOAT16) {
    if (!json_is_number(v))
      return fail(f->err, KILN_INVALID_ARGUMENT, "input '%s': element %zu is not a number",
                  f->name, i);
    double x = json_number_value(v);
    if (dt == KILN_DTYPE_DOUBLE) ((double *)d)[i] = x;
    else if (dt == KILN_DTYPE_FLOAT) ((float *)d)[i] = (float)x;
    else ((uint16_t *)d)[i] = srv_float_to_half((float)x);
    return KILN_OK;
  }
  if (!json_is_integer(v))
    return fail(f->err, KILN_INVALID_ARGUMENT, "input '%s': element %zu is not an integer",
                f->name, i);
  json_int_t x = json_integer_value(v);
  long long lo, hi;
  switch (dt) {
    case KILN_DTYPE_UINT8: lo = 0, hi = UINT8_MAX; break;
    case KILN_DTYPE_UINT16: lo = 0, hi = UINT16_MAX; break;
    case KILN_DTYPE_UINT32: lo = 0, hi = UINT32_MAX; break;
    case KILN_DTYPE_UINT64: lo = 0, hi = INT64_MAX; break; /* jansson holds int64 only */
    case KILN_DTYPE_INT8: lo = INT8_MIN, hi = INT8_MAX; break;
    case KILN_DTYPE_INT16: lo = INT16_MIN, hi = INT16_MAX; break;
    case KILN_DTYPE_INT32: lo = INT32_MIN, hi = INT32_MAX; break;
    default: lo = INT64_MIN, hi = INT64_MAX; break;
  }
  if (x < lo || x > hi)
    return fail(f->err, KILN_INVALID_ARGUMENT, "input '%s': element %zu (%lld) is out of range",
                f->name, i, (long long)x);
  switch (dt) {
    case KILN_DTYPE_UINT8: ((uint8_t *)d)[i] = (uint8_t)x; break;
    case KILN_DTYPE_UINT16: ((uint16_t *)d)[i] = (uint16_t)x; break;
    case KILN_DTYPE_UINT32: ((uint32_t *)d)[i] = (uint32_t)x; break;
    case KILN_DTYPE_UINT64: ((uint64_t *)d)[i] = (uint64_t)x; break;
    case KILN_DTYPE_INT8: ((int8_t *)d)[i] = (int8_t)x; break;
    case KILN_DTYPE_INT16: ((int16_t *)d)[i] = (int16_t)x; break;
    case KILN_DTYPE_INT32: ((int32_t *)d)[i] = (int32_t)x; break;
    default: ((int64_t *)d)[i] = (int64_t)x; break;
  }
  return KILN_OK;
}

/* Nested or flat, row-major: arrays are flattened in order (the depth pre-scan bounds recursion). */
static kiln_status put_data(fill *f, const json_t *v) {
  if (!json_is_array(v)) return put_value(f, v);
  size_t i;
  const json_t *e;
  json_array_foreach(v, i, e) {
    kiln_status st = put_data(f, e);
    if (st != KILN_OK) return st;
  }
  return KILN_OK;
}

static const char *param_obj(const json_t *obj, const char *key, json_t **out) {
  json_t *p = json_object_get(obj, "parameters");
  *out = NULL;
  if (!p) return NULL;
  if (!json_is_object(p)) return "'parameters' must be an object";
  *out = json_object_get(p, key);
  return NULL;
}

/* BYTES: Kiln's string tensors, one block holding the element pointers and then the
   NUL-terminated bytes (so free(t->data) frees it all). A NUL inside an element is refused:
   Kiln's strings end at the first one. */
static kiln_status bytes_block(kiln_tensor *t, size_t count, size_t bytes, const char *name,
                               kiln_error *err) {
  if (bytes > SIZE_MAX - count * (sizeof(char *) + 1))
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': too large", name);
  t->data = malloc(count * (sizeof(char *) + 1) + bytes + 1);
  if (!t->data) return fail(err, KILN_NO_MEMORY, "input '%s': out of memory", name);
  return KILN_OK;
}

/* The binary tensor extension's BYTES layout: per element a 4-byte little-endian length, then
   that many bytes; the elements must fill binary_data_size exactly. */
static kiln_status bytes_from_binary(const uint8_t *p, size_t size, size_t count, const char *name,
                                     kiln_tensor *t, kiln_error *err) {
  size_t at = 0, n = 0, total = 0;
  while (at < size) { /* first pass: check the framing, count and size the bytes */
    if (size - at < 4)
      return fail(err, KILN_INVALID_ARGUMENT, "input '%s': BYTES element %zu: truncated length", name, n);
    uint32_t len = (uint32_t)p[at] | (uint32_t)p[at + 1] << 8 | (uint32_t)p[at + 2] << 16 |
                   (uint32_t)p[at + 3] << 24;
    at += 4;
    if (len > size - at)
      return fail(err, KILN_INVALID_ARGUMENT, "input '%s': BYTES element %zu: %u bytes past the end",
                  name, n, len);
    if (memchr(p + at, 0, len))
      return fail(err, KILN_INVALID_ARGUMENT, "input '%s': BYTES element %zu holds a NUL byte", name, n);
    at += len;
    total += len;
    if (++n > count) break;
  }
  if (n != count)
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': %s BYTES elements for shape of %zu", name,
                n > count ? "more" : "fewer", count);
  kiln_status st = bytes_block(t, count, total, name, err);
  if (st != KILN_OK) return st;
  char **ptrs = t->data, *dst = (char *)(ptrs + count);
  at = 0;
  for (size_t i = 0; i < count; i++) {
    uint32_t len = (uint32_t)p[at] | (uint32_t)p[at + 1] << 8 | (uint32_t)p[at + 2] << 16 |
                   (uint32_t)p[at + 3] << 24;
    at += 4;
    memcpy(dst, p + at, len);
    dst[len] = 0;
    ptrs[i] = dst;
    dst += len + 1;
    at += len;
  }
  return KILN_OK;
}

/* Counts (collect == NULL) or copies the strings of nested or flat JSON data, row-major. */
static kiln_status walk_strings(const json_t *d, size_t *n, size_t *bytes, char **ptrs, char **dst,
                                size_t want, const char *name, kiln_error *err) {
  if (json_is_array(d)) {
    size_t i;
    const json_t *e;
    json_array_foreach(d, i, e) {
      kiln_status st = walk_strings(e, n, bytes, ptrs, dst, want, name, err);
      if (st != KILN_OK) return st;
    }
    return KILN_OK;
  }
  if (!json_is_string(d))
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': BYTES data must be strings", name);
  size_t len = json_string_length(d);
  const char *v = json_string_value(d);
  if (memchr(v, 0, len))
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': BYTES element %zu holds a NUL byte", name, *n);
  if (*n >= want)
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': more data elements than the shape's %zu",
                name, want);
  if (ptrs) {
    memcpy(*dst, v, len + 1);
    ptrs[*n] = *dst;
    *dst += len + 1;
  }
  (*n)++;
  *bytes += len;
  return KILN_OK;
}

static kiln_status bytes_from_json(const json_t *d, size_t count, const char *name, kiln_tensor *t,
                                   kiln_error *err) {
  size_t n = 0, total = 0;
  kiln_status st = walk_strings(d, &n, &total, NULL, NULL, count, name, err);
  if (st != KILN_OK) return st;
  if (n != count)
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': %zu data elements for shape of %zu", name,
                n, count);
  if ((st = bytes_block(t, count, total, name, err)) != KILN_OK) return st;
  char **ptrs = t->data, *dst = (char *)(ptrs + count);
  n = total = 0;
  return walk_strings(d, &n, &total, ptrs, &dst, count, name, err);
}

static kiln_status decode_input(const json_t *in, const srv_limits *lim, const uint8_t *bin,
                                size_t bin_len, size_t *bin_off, srv_input *out, kiln_error *err) {
  if (!json_is_object(in)) return fail(err, KILN_INVALID_ARGUMENT, "each input must be an object");
  const json_t *jname = json_object_get(in, "name"), *jdt = json_object_get(in, "datatype"),
               *jshape = json_object_get(in, "shape"), *jdata = json_object_get(in, "data");
  if (!json_is_string(jname))
    return fail(err, KILN_INVALID_ARGUMENT, "input without a string 'name'");
  const char *name = json_string_value(jname);
  if (!json_is_string(jdt))
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': 'datatype' must be a string", name);
  kiln_dtype dt = srv_dtype_parse(json_string_value(jdt));
  if (dt == KILN_DTYPE_UNDEFINED || dt == KILN_DTYPE_BFLOAT16)
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': unsupported datatype '%s'", name,
                json_string_value(jdt));
  if (!json_is_array(jshape))
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': 'shape' must be an array", name);
  size_t rank = json_array_size(jshape);
  if (rank > KILN_MAX_RANK)
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': rank %zu exceeds %d", name, rank,
                KILN_MAX_RANK);
  kiln_tensor t = {.dtype = dt, .rank = (int)rank};
  size_t count = 1;
  for (size_t i = 0; i < rank; i++) {
    const json_t *d = json_array_get(jshape, i);
    if (!json_is_integer(d) || json_integer_value(d) < 0)
      return fail(err, KILN_INVALID_ARGUMENT, "input '%s': shape[%zu] must be a non-negative integer",
                  name, i);
    json_int_t v = json_integer_value(d);
    if ((uint64_t)v > lim->max_tensor_elements || (v && count > lim->max_tensor_elements / (size_t)v))
      return fail(err, KILN_INVALID_ARGUMENT, "input '%s': more than %zu elements", name,
                  lim->max_tensor_elements);
    t.dims[i] = v;
    count *= (size_t)v;
  }
  if (count > lim->max_tensor_elements)
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': more than %zu elements", name,
                lim->max_tensor_elements);
  size_t esize = kiln_dtype_size(dt), nbytes = count * esize;
  json_t *jbin;
  const char *perr = param_obj(in, "binary_data_size", &jbin);
  if (perr) return fail(err, KILN_INVALID_ARGUMENT, "input '%s': %s", name, perr);
  if (jbin && jdata)
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': both 'data' and binary_data_size", name);
  if (!jbin && !jdata)
    return fail(err, KILN_INVALID_ARGUMENT, "input '%s': no 'data' and no binary_data_size", name);
  if (dt == KILN_DTYPE_STRING) {
    if (jbin && (!json_is_integer(jbin) || json_integer_value(jbin) < 0 ||
                 (uint64_t)json_integer_value(jbin) > bin_len - *bin_off))
      return fail(err, KILN_INVALID_ARGUMENT,
                  "input '%s': binary_data_size must be a non-negative integer within the body", name);
    size_t size = jbin ? (size_t)json_integer_value(jbin) : 0;
    kiln_status st = jbin ? bytes_from_binary(bin + *bin_off, size, count, name, &t, err)
                          : bytes_from_json(jdata, count, name, &t, err);
    if (st != KILN_OK) return st;
    *bin_off += size;
    goto named;
  }
  if (jbin) {
    if (!json_is_integer(jbin) || json_integer_value(jbin) < 0)
      return fail(err, KILN_INVALID_ARGUMENT, "input '%s': binary_data_size must be a non-negative integer", name);
    uint64_t size = (uint64_t)json_integer_value(jbin);
    if (size != nbytes)
      return fail(err, KILN_INVALID_ARGUMENT,
                  "input '%s': binary_data_size %llu does not match shape and datatype (%zu bytes)",
                  name, (unsigned long long)size, nbytes);
    if (nbytes > bin_len - *bin_off)
      return fail(err, KILN_INVALID_ARGUMENT, "input '%s': binary section too short", name);
  }
  t.data = nbytes ? malloc(nbytes) : NULL;
  if (nbytes && !t.data) return fail(err, KILN_NO_MEMORY, "input '%s': out of memory", name);
  if (jbin) {
    memcpy(t.data, bin + *bin_off, nbytes);
    *bin_off += nbytes;
    if (dt == KILN_DTYPE_BOOL)
      for (size_t i = 0; i < count; i++) ((uint8_t *)t.data)[i] = ((uint8_t *)t.data)[i] != 0;
  } else {
    fill f = {.t = &t, .want = count, .name = name, .err = err};
    kiln_status st = put_data(&f, jdata);
    if (st == KILN_OK && f.count != count)
      st = fail(err, KILN_INVALID_ARGUMENT, "input '%s': %zu data elements for shape of %zu", name,
                f.count, count);
    if (st != KILN_OK) {
      free(t.data);
      return st;
    }
  }
named:
  out->name = strdup(name);
  if (!out->name) {
    free(t.data);
    return fail(err, KILN_NO_MEMORY, "out of memory");
  }
  out->t = t;
  return KILN_OK;
}

static int bool_param(const json_t *obj, const char *key, int *out, kiln_error *err,
                      kiln_status *st) {
  json_t *v;
  const char *perr = param_obj(obj, key, &v);
  if (perr) {
    *st = fail(err, KILN_INVALID_ARGUMENT, "%s", perr);
    return -1;
  }
  if (!v) return 0;
  if (!json_is_boolean(v)) {
    *st = fail(err, KILN_INVALID_ARGUMENT, "parameter '%s' must be true or false", key);
    return -1;
  }
  *out = json_is_true(v);
  return 0;
}

static kiln_status decode_root(const json_t *root, const srv_limits *lim, const uint8_t *bin,
                               size_t bin_len, srv_infer_req *r, kiln_error *err) {
  if (!json_is_object(root)) return fail(err, KILN_INVALID_ARGUMENT, "request must be a JSON object");
  const json_t *jid = json_object_get(root, "id");
  if (jid) {
    if (!json_is_string(jid)) return fail(err, KILN_INVALID_ARGUMENT, "'id' must be a string");
    if (!(r->id = strdup(json_string_value(jid)))) return fail(err, KILN_NO_MEMORY, "out of memory");
  }
  kiln_status st = KILN_OK;
  if (bool_param(root, "binary_data_output", &r->binary_output, err, &st)) return st;
  json_t *v;
  const char *perr = param_obj(root, "priority", &v);
  if (perr) return fail(err, KILN_INVALID_ARGUMENT, "%s", perr);
  if (v) {
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 4)
      return fail(err, KILN_INVALID_ARGUMENT, "parameter 'priority' must be 1 (critical) .. 4 (low)");
    r->priority = (int)json_integer_value(v);
  }
  param_obj(root, "timeout", &v);
  if (v) {
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
      return fail(err, KILN_INVALID_ARGUMENT, "parameter 'timeout' must be a positive integer (microseconds)");
    r->timeout_us = (int64_t)json_integer_value(v);
  }
  const json_t *jin = json_object_get(root, "inputs");
  if (!json_is_array(jin) || json_array_size(jin) == 0)
    return fail(err, KILN_INVALID_ARGUMENT, "'inputs' must be a non-empty array");
  size_t n = json_array_size(jin);
  if (n > lim->max_tensors)
    return fail(err, KILN_INVALID_ARGUMENT, "more than %zu inputs", lim->max_tensors);
  if (!(r->inputs = calloc(n, sizeof *r->inputs))) return fail(err, KILN_NO_MEMORY, "out of memory");
  size_t bin_off = 0;
  for (size_t i = 0; i < n; i++) {
    st = decode_input(json_array_get(jin, i), lim, bin, bin_len, &bin_off, &r->inputs[i], err);
    if (st != KILN_OK) return st;
    r->n_inputs++;
    for (size_t j = 0; j < i; j++)
      if (!strcmp(r->inputs[j].name, r->inputs[i].name))
        return fail(err, KILN_INVALID_ARGUMENT, "input '%s' given twice", r->inputs[i].name);
  }
  if (bin_off != bin_len)
    return fail(err, KILN_INVALID_ARGUMENT, "binary section has %zu bytes no input claims",
                bin_len - bin_off);
  const json_t *jout = json_object_get(root, "outputs");
  if (jout) {
    if (!json_is_array(jout)) return fail(err, KILN_INVALID_ARGUMENT, "'outputs' must be an array");
    size_t m = json_array_size(jout);
    if (m > lim->max_tensors)
      return fail(err, KILN_INVALID_ARGUMENT, "more than %zu outputs", lim->max_tensors);
    if (m && !(r->outputs = calloc(m, sizeof *r->outputs)))
      return fail(err, KILN_NO_MEMORY, "out of memory");
    for (size_t i = 0; i < m; i++) {
      const json_t *o = json_array_get(jout, i), *jn = json_object_get(o, "name");
      if (!json_is_object(o) || !json_is_string(jn))
        return fail(err, KILN_INVALID_ARGUMENT, "each requested output needs a string 'name'");
      srv_output_req *q = &r->outputs[r->n_outputs];
      q->binary = -1;
      if (!(q->name = strdup(json_string_value(jn)))) return fail(err, KILN_NO_MEMORY, "out of memory");
      r->n_outputs++;
      if (bool_param(o, "binary_data", &q->binary, err, &st)) return st;
    }
  }
  return KILN_OK;
}

kiln_status srv_decode_infer(const uint8_t *body, size_t len, size_t header_len,
                             const srv_limits *lim, srv_infer_req *out, kiln_error *err) {
  *out = (srv_infer_req){.binary_output = -1};
  if (len > lim->max_body_bytes)
    return fail(err, KILN_INVALID_ARGUMENT, "body of %zu bytes exceeds %zu", len, lim->max_body_bytes);
  size_t json_len = header_len ? header_len : len;
  if (json_len > len)
    return fail(err, KILN_INVALID_ARGUMENT,
                "Inference-Header-Content-Length %zu exceeds the body (%zu bytes)", header_len, len);
  if (json_len > lim->max_json_bytes)
    return fail(err, KILN_INVALID_ARGUMENT, "JSON of %zu bytes exceeds %zu", json_len,
                lim->max_json_bytes);
  if (json_too_deep(body, json_len, lim->max_json_depth))
    return fail(err, KILN_INVALID_ARGUMENT, "JSON nested deeper than %zu", lim->max_json_depth);
  json_error_t jerr;
  json_t *root = json_loadb((const char *)body, json_len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return fail(err, KILN_INVALID_ARGUMENT, "malformed JSON at line %d column %d: %s", jerr.line,
                jerr.column, jerr.text);
  kiln_status st = decode_root(root, lim, body + json_len, len - json_len, out, err);
  json_decref(root);
  if (st != KILN_OK) srv_infer_req_free(out);
  return st;
}

void srv_infer_req_free(srv_infer_req *r) {
  free(r->id);
  for (size_t i = 0; i < r->n_inputs; i++) {
    free(r->inputs[i].name);
    free(r->inputs[i].t.data);
  }
  free(r->inputs);
  for (size_t i = 0; i < r->n_outputs; i++) free(r->outputs[i].name);
  free(r->outputs);
  *r = (srv_infer_req){.binary_output = -1};
}
