/* Tensor files: NumPy .npy (format versions 1-3) and serialized onnx.TensorProto.
 *
 * .npy layout: "\x93NUMPY", major, minor, header length (uint16 LE for v1, uint32 LE for v2/v3),
 * then a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded
 * with spaces to a 64-byte boundary and ended by '\n', then the raw C-order data. The header
 * parser accepts exactly that grammar (either quote style, any whitespace, keys in any order,
 * each once) and nothing else; the data must fill the rest of the file exactly. */
#define _XOPEN_SOURCE 700

#include "core/common.h"
#include "onnx/import.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAX_HEADER ((size_t)1 << 20)

static const struct {
  const char *descr; /* without the byte-order character */
  kiln_dtype dtype;
} npy_types[] = {
    {"f4", KILN_DTYPE_FLOAT},     {"f8", KILN_DTYPE_DOUBLE},      {"f2", KILN_DTYPE_FLOAT16},
    {"i1", KILN_DTYPE_INT8},      {"i2", KILN_DTYPE_INT16},       {"i4", KILN_DTYPE_INT32},
    {"i8", KILN_DTYPE_INT64},     {"u1", KILN_DTYPE_UINT8},       {"u2", KILN_DTYPE_UINT16},
    {"u4", KILN_DTYPE_UINT32},    {"u8", KILN_DTYPE_UINT64},      {"b1", KILN_DTYPE_BOOL},
    {"c8", KILN_DTYPE_COMPLEX64}, {"c16", KILN_DTYPE_COMPLEX128},
};

/* ---- header parsing -------------------------------------------------------------------------- */

typedef struct hparse {
  const char *p, *end;
} hparse;

static void skip_ws(hparse *h) {
  while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r'))
    h->p++;
}

static bool eat(hparse *h, char c) {
  skip_ws(h);
  if (h->p < h->end && *h->p == c) {
    h->p++;
    return true;
  }
  return false;
}

/* A quoted string without escapes, copied into buf (truncation is an error). */
static bool parse_str(hparse *h, char *buf, size_t cap) {
  skip_ws(h);
  if (h->p >= h->end || (*h->p != '\'' && *h->p != '"')) return false;
  char q = *h->p++;
  size_t n = 0;
  while (h->p < h->end && *h->p != q) {
    if (*h->p == '\\' || n + 1 >= cap) return false;
    buf[n++] = *h->p++;
  }
  if (h->p >= h->end) return false;
  h->p++;
  buf[n] = 0;
  return true;
}

static bool parse_word(hparse *h, const char *w) {
  skip_ws(h);
  size_t n = strlen(w);
  if ((size_t)(h->end - h->p) < n || memcmp(h->p, w, n)) return false;
  h->p += n;
  return true;
}

static bool parse_dim(hparse *h, int64_t *out) {
  skip_ws(h);
  if (h->p >= h->end || *h->p < '0' || *h->p > '9') return false;
  int64_t v = 0;
  while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
    int d = *h->p++ - '0';
    if (v > (INT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  if (h->p < h->end && (*h->p == 'L' || *h->p == 'l')) h->p++; /* Python 2 longs */
  *out = v;
  return true;
}

/* "()", "(3,)", "(2, 3)", "(2, 3,)". */
static kiln_status parse_shape(hparse *h, int *rank, int64_t *dims, kiln_error *err) {
  if (!eat(h, '(')) return kiln__fail(err, KILN_BAD_MODEL, "npy header: 'shape' is not a tuple");
  int r = 0;
  skip_ws(h);
  if (eat(h, ')')) {
    *rank = 0;
    return KILN_OK;
  }
  for (;;) {
    int64_t d;
    if (!parse_dim(h, &d))
      return kiln__fail(err, KILN_BAD_MODEL, "npy header: bad dimension in 'shape'");
    if (r == KILN_MAX_RANK)
      return kiln__fail(err, KILN_UNSUPPORTED, "npy shape has more than %d dimensions",
                        KILN_MAX_RANK);
    dims[r++] = d;
    bool comma = eat(h, ',');
    if (eat(h, ')')) {
      if (r == 1 && !comma)
        return kiln__fail(err, KILN_BAD_MODEL, "npy header: 'shape' (n) is not a tuple");
      break;
    }
    if (!comma) return kiln__fail(err, KILN_BAD_MODEL, "npy header: bad 'shape' tuple");
  }
  *rank = r;
  return KILN_OK;
}

static kiln_status parse_header(const char *text, size_t len, kiln_dtype *dtype, int *rank,
                                int64_t *dims, kiln_error *err) {
  hparse h = {text, text + len};
  bool have_descr = false, have_fortran = false, have_shape = false;
  if (!eat(&h, '{')) return kiln__fail(err, KILN_BAD_MODEL, "npy header is not a dict");
  for (;;) {
    if (eat(&h, '}')) break;
    char key[32], descr[16];
    if (!parse_str(&h, key, sizeof key) || !eat(&h, ':'))
      return kiln__fail(err, KILN_BAD_MODEL, "npy header: malformed dict");
    if (!strcmp(key, "descr")) {
      if (have_descr) return kiln__fail(err, KILN_BAD_MODEL, "npy header: 'descr' given twice");
      if (!parse_str(&h, descr, sizeof descr))
        return kiln__fail(err, KILN_BAD_MODEL, "npy header: 'descr' is not a simple type string");
      have_descr = true;
      char order = descr[0];
      if (order == '>')
        return kiln__fail(err, KILN_UNSUPPORTED, "npy data type '%s' is big-endian", descr);
      const char *code = descr + 1;
      if (order != '<' && order != '|' && order != '=')
        return kiln__fail(err, KILN_UNSUPPORTED, "npy data type '%s' is not supported", descr);
      *dtype = KILN_DTYPE_UNDEFINED;
      for (size_t i = 0; i < KILN__ARRAY_LEN(npy_types); i++)
        if (!strcmp(code, npy_types[i].descr)) *dtype = npy_types[i].dtype;
      if (*dtype == KILN_DTYPE_UNDEFINED ||
          (order == '|' && kiln_dtype_size(*dtype) != 1) || (order == '=' && !kiln__host_is_le()))
        return kiln__fail(err, KILN_UNSUPPORTED, "npy data type '%s' is not supported", descr);
    } else if (!strcmp(key, "fortran_order")) {
      if (have_fortran)
        return kiln__fail(err, KILN_BAD_MODEL, "npy header: 'fortran_order' given twice");
      have_fortran = true;
      if (parse_word(&h, "True"))
        return kiln__fail(err, KILN_UNSUPPORTED,
                          "npy array is in Fortran order; save it in C order "
                          "(numpy.ascontiguousarray)");
      if (!parse_word(&h, "False"))
        return kiln__fail(err, KILN_BAD_MODEL, "npy header: 'fortran_order' is not True/False");
    } else if (!strcmp(key, "shape")) {
      if (have_shape) return kiln__fail(err, KILN_BAD_MODEL, "npy header: 'shape' given twice");
      have_shape = true;
      kiln_status st = parse_shape(&h, rank, dims, err);
      if (st != KILN_OK) return st;
    } else {
      return kiln__fail(err, KILN_BAD_MODEL, "npy header: unexpected key '%s'", key);
    }
    if (eat(&h, '}')) break;
    if (!eat(&h, ',')) return kiln__fail(err, KILN_BAD_MODEL, "npy header: malformed dict");
  }
  skip_ws(&h);
  if (h.p != h.end)
    return kiln__fail(err, KILN_BAD_MODEL, "npy header: unexpected text after the dict");
  if (!have_descr || !have_fortran || !have_shape)
    return kiln__fail(err, KILN_BAD_MODEL, "npy header lacks '%s'",
                      !have_descr ? "descr" : !have_fortran ? "fortran_order" : "shape");
  return KILN_OK;
}

/* ---- reading --------------------------------------------------------------------------------- */

static kiln_status read_exact(FILE *f, void *buf, size_t n, const char *path, kiln_error *err) {
  if (n && fread(buf, 1, n, f) != n)
    return kiln__fail(err, ferror(f) ? KILN_IO_ERROR : KILN_BAD_MODEL, "%s: %s", path,
                      ferror(f) ? strerror(errno) : "file is truncated");
  return KILN_OK;
}

/* Opens a regular file and gets its size, which bounds every allocation made for its contents.
   O_NONBLOCK keeps a FIFO from blocking the open (it is then refused as not regular). */
static kiln_status open_sized(const char *path, FILE **f, uint64_t *size, kiln_error *err) {
  *f = NULL;
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return kiln__fail(err, errno == ENOENT ? KILN_NOT_FOUND : KILN_IO_ERROR, "cannot open %s: %s",
                      path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    return kiln__fail(err, KILN_IO_ERROR, "%s is not a regular file", path);
  }
  *f = fdopen(fd, "rb");
  if (!*f) {
    close(fd);
    return kiln__fail(err, KILN_NO_MEMORY, "cannot open %s: %s", path, strerror(errno));
  }
  *size = (uint64_t)sb.st_size;
  return KILN_OK;
}

static kiln_status read_npy(FILE *f, uint64_t fsize, const char *path, kiln_tensor *out,
                            kiln_error *err) {
  uint8_t pre[12];
  kiln_status st = read_exact(f, pre, 8, path, err);
  if (st != KILN_OK) return st;
  if (memcmp(pre, NPY_MAGIC, 6))
    return kiln__fail(err, KILN_BAD_MODEL, "%s is not a .npy file (bad magic)", path);
  unsigned major = pre[6];
  size_t hlen, pre_len;
  if (major == 1) {
    if ((st = read_exact(f, pre + 8, 2, path, err)) != KILN_OK) return st;
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    pre_len = 10;
  } else if (major == 2 || major == 3) {
    if ((st = read_exact(f, pre + 8, 4, path, err)) != KILN_OK) return st;
    hlen = (size_t)pre[8] | (size_t)pre[9] << 8 | (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    pre_len = 12;
  } else {
    return kiln__fail(err, KILN_UNSUPPORTED, "%s: .npy format version %u.%u is not supported",
                      path, major, pre[7]);
  }
  if (fsize < pre_len || hlen > NPY_MAX_HEADER || hlen > fsize - pre_len)
    return kiln__fail(err, KILN_BAD_MODEL, "%s: npy header length %zu is invalid", path, hlen);
  char *text = kiln__malloc(hlen + 1);
  if (!text) return kiln__fail(err, KILN_NO_MEMORY, "out of memory reading %s", path);
  st = read_exact(f, text, hlen, path, err);
  kiln_dtype dtype = KILN_DTYPE_UNDEFINED;
  int rank = 0;
  int64_t dims[KILN_MAX_RANK] = {0};
  if (st == KILN_OK) {
    text[hlen] = 0;
    if (memchr(text, 0, hlen))
      st = kiln__fail(err, KILN_BAD_MODEL, "npy header contains a NUL byte");
    else
      st = parse_header(text, hlen, &dtype, &rank, dims, err);
  }
  kiln__free(text);
  if (st != KILN_OK) {
    kiln__err_prefix(err, "%s", path);
    return st;
  }
  size_t count, bytes;
  uint64_t data_len = fsize - pre_len - hlen;
  if (!kiln__shape_count(rank, dims, &count) ||
      !kiln__mul_ok(count, kiln_dtype_size(dtype), &bytes) || (uint64_t)bytes != data_len)
    return kiln__fail(err, KILN_BAD_MODEL,
                      "%s: the header's shape and type need a different data size than the "
                      "file's %llu bytes",
                      path, (unsigned long long)data_len);
  void *data = kiln__aligned_alloc(bytes ? bytes : 1);
  if (!data) return kiln__fail(err, KILN_NO_MEMORY, "cannot allocate %zu bytes for %s", bytes, path);
  st = read_exact(f, data, bytes, path, err);
  if (st != KILN_OK) {
    kiln__aligned_free(data);
    return st;
  }
  kiln__le_to_host(data, count, dtype);
  if (dtype == KILN_DTYPE_BOOL)
    for (size_t i = 0; i < count; i++) ((uint8_t *)data)[i] = ((uint8_t *)data)[i] != 0;
  out->dtype = dtype;
  out->rank = rank;
  memcpy(out->dims, dims, sizeof dims);
  out->data = data;
  return KILN_OK;
}

kiln_status kiln_tensor_read_npy(const char *path, kiln_tensor *out, kiln_error *err) {
  if (!out) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no output tensor");
  memset(out, 0, sizeof *out);
  if (!path) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no path");
  FILE *f;
  uint64_t fsize;
  kiln_status st = open_sized(path, &f, &fsize, err);
  if (st != KILN_OK) return st;
  st = read_npy(f, fsize, path, out, err);
  fclose(f);
  return st;
}

kiln_status kiln_tensor_read_pb(const char *path, kiln_tensor *out, kiln_error *err) {
  return kiln_value_read_pb(path, KILN_DTYPE_UNDEFINED, out, err);
}

kiln_status kiln_value_read_pb(const char *path, kiln_dtype kind, kiln_tensor *out,
                               kiln_error *err) {
  if (!out) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no output tensor");
  memset(out, 0, sizeof *out);
  if (!path) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no path");
  FILE *f;
  uint64_t fsize;
  kiln_status st = open_sized(path, &f, &fsize, err);
  if (st != KILN_OK) return st;
  if (fsize > SIZE_MAX / 2) {
    fclose(f);
    return kiln__fail(err, KILN_RESOURCE_EXHAUSTED, "%s is too large", path);
  }
  void *buf = kiln__malloc((size_t)fsize ? (size_t)fsize : 1);
  if (!buf) {
    fclose(f);
    return kiln__fail(err, KILN_NO_MEMORY, "cannot allocate %llu bytes for %s",
                      (unsigned long long)fsize, path);
  }
  st = read_exact(f, buf, (size_t)fsize, path, err);
  fclose(f);
  if (st == KILN_OK) {
    st = kiln__onnx_value(buf, (size_t)fsize, kind, out, err);
    if (st != KILN_OK) kiln__err_prefix(err, "%s", path);
  }
  kiln__free(buf);
  return st;
}

/* ---- writing --------------------------------------------------------------------------------- */

kiln_status kiln_tensor_write_npy(const char *path, const kiln_tensor *t, kiln_error *err) {
  if (!path || !t) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no path or tensor");
  const char *code = NULL;
  for (size_t i = 0; i < KILN__ARRAY_LEN(npy_types); i++)
    if (npy_types[i].dtype == t->dtype) code = npy_types[i].descr;
  if (!code)
    return kiln__fail(err, KILN_UNSUPPORTED, "%s tensors cannot be saved as .npy",
                      kiln_dtype_name(t->dtype));
  if (t->rank < 0 || t->rank > KILN_MAX_RANK)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "rank %d is invalid", t->rank);
  size_t count, bytes;
  if (!kiln__shape_count(t->rank, t->dims, &count) ||
      !kiln__mul_ok(count, kiln_dtype_size(t->dtype), &bytes))
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "tensor shape is negative or too large");
  if (bytes && !t->data) return kiln__fail(err, KILN_INVALID_ARGUMENT, "tensor has no data");

  char header[512];
  int n = snprintf(header, sizeof header, "{'descr': '%c%s', 'fortran_order': False, 'shape': (",
                   kiln_dtype_size(t->dtype) == 1 ? '|' : '<', code);
  for (int i = 0; i < t->rank; i++)
    n += snprintf(header + n, sizeof header - (size_t)n, "%s%lld", i ? ", " : "",
                  (long long)t->dims[i]);
  n += snprintf(header + n, sizeof header - (size_t)n, "%s), }", t->rank == 1 ? "," : "");
  /* Pad with spaces so the data starts on a 64-byte boundary; the header ends with '\n'. */
  size_t hlen = (size_t)n + 1;
  size_t total = (10 + hlen + 63) / 64 * 64;
  hlen = total - 10;
  if (hlen >= sizeof header) return kiln__fail(err, KILN_INTERNAL, "npy header too long");
  memset(header + n, ' ', hlen - (size_t)n);
  header[hlen - 1] = '\n';
  uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hlen & 0xff),
                     (uint8_t)(hlen >> 8)};

  FILE *f = fopen(path, "wb");
  if (!f) return kiln__fail(err, KILN_IO_ERROR, "cannot create %s: %s", path, strerror(errno));
  bool ok = fwrite(pre, 1, sizeof pre, f) == sizeof pre && fwrite(header, 1, hlen, f) == hlen;
  if (ok && bytes) {
    if (kiln__host_is_le()) {
      ok = fwrite(t->data, 1, bytes, f) == bytes;
    } else {
      /* Swap through a small buffer, element by element, to keep the caller's data const. */
      size_t es = kiln_dtype_size(t->dtype), cs = es;
      if (t->dtype == KILN_DTYPE_COMPLEX64 || t->dtype == KILN_DTYPE_COMPLEX128) cs /= 2;
      uint8_t tmp[16];
      for (size_t i = 0; ok && i < count; i++) {
        memcpy(tmp, (const uint8_t *)t->data + i * es, es);
        if (cs > 1) kiln__swap_bytes(tmp, es / cs, cs);
        ok = fwrite(tmp, 1, es, f) == es;
      }
    }
  }
  int e = errno;
  if (fclose(f) != 0 && ok) {
    ok = false;
    e = errno;
  }
  if (!ok) {
    remove(path);
    return kiln__fail(err, KILN_IO_ERROR, "cannot write %s: %s", path, strerror(e));
  }
  return KILN_OK;
}
