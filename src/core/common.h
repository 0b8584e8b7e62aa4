/* Internal helpers shared by every layer: errors, allocation, dtype conversion. */
#ifndef KILN_CORE_COMMON_H
#define KILN_CORE_COMMON_H

#include "kiln/kiln.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define KILN__ALIGN 64
#define KILN__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define KILN__MIN(a, b) ((a) < (b) ? (a) : (b))
#define KILN__MAX(a, b) ((a) > (b) ? (a) : (b))

#if defined(__GNUC__)
#define KILN__PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KILN__PRINTF(f, a)
#endif

/* Fills `err` (may be NULL) and returns `st`. */
kiln_status kiln__fail(kiln_error *err, kiln_status st, const char *fmt, ...) KILN__PRINTF(3, 4);
/* Prepends context to an existing message: "node 'x' (Conv): <old message>". */
void kiln__err_prefix(kiln_error *err, const char *fmt, ...) KILN__PRINTF(2, 3);

/* Every heap allocation Kiln makes goes through these, so tests can count them and inject
   failures. */
void *kiln__malloc(size_t n);
void *kiln__calloc(size_t n, size_t size);
void *kiln__realloc(void *p, size_t n);
void *kiln__aligned_alloc(size_t n); /* KILN__ALIGN-aligned, freed with kiln__aligned_free */
void kiln__free(void *p);
void kiln__aligned_free(void *p);
char *kiln__strdup(const char *s);
/* Test hook: the n-th allocation from now on fails (0 disables). Not thread-safe; tests only. */
void kiln__alloc_fail_after(uint64_t n);

/* Reads a whole file into memory freed with kiln__free. */
kiln_status kiln__read_file(const char *path, uint8_t **out, size_t *size, kiln_error *err);
/* The folder of `path` ("." when it has none), freed with kiln__free; NULL when out of memory. */
char *kiln__path_dir(const char *path);

/* Checked size arithmetic: return false on overflow. */
static inline bool kiln__mul_ok(size_t a, size_t b, size_t *out) {
  if (a != 0 && b > SIZE_MAX / a) return false;
  *out = a * b;
  return true;
}

/* Element count of a shape; false when it overflows or a dim is negative. */
bool kiln__shape_count(int rank, const int64_t *dims, size_t *count);

/* Half-precision conversions (round to nearest even). */
float kiln__f16_to_f32(uint16_t h);
uint16_t kiln__f32_to_f16(float f);
float kiln__bf16_to_f32(uint16_t h);
uint16_t kiln__f32_to_bf16(float f);

/* Byte order: ONNX raw data and .npy files are little-endian. */
bool kiln__host_is_le(void);
void kiln__swap_bytes(void *data, size_t count, size_t size); /* reverse each size-byte element */
/* Converts `count` little-endian elements of type t to host order (complex: per component). */
void kiln__le_to_host(void *data, size_t count, kiln_dtype t);

/* Generic element access for slow paths and rare dtypes. */
double kiln__load_f64(const void *data, kiln_dtype t, size_t i);
int64_t kiln__load_i64(const void *data, kiln_dtype t, size_t i);
void kiln__store_f64(void *data, kiln_dtype t, size_t i, double v);
void kiln__store_i64(void *data, kiln_dtype t, size_t i, int64_t v);
bool kiln__dtype_is_float(kiln_dtype t);   /* float, double, float16, bfloat16 */
bool kiln__dtype_is_signed_int(kiln_dtype t);
bool kiln__dtype_is_unsigned_int(kiln_dtype t);

#endif
