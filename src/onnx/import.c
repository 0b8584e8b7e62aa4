/* ONNX protobuf -> graph IR.
 *
 * Everything here reads untrusted bytes. The rules: check the nesting depth before protobuf-c
 * sees the bytes (it recurses without a limit); never size an allocation from a declared count
 * before checking it against the data that is really there; keep every lookup hashed or sorted so
 * a hostile file with a million names costs a million steps, not a million squared; and on any
 * failure free everything built so far and say which tensor, node or attribute was wrong. */
#define _XOPEN_SOURCE 700 /* realpath, pread */

#include "onnx/import.h"

#include "onnx/kiln_onnx.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

/* Message nesting the wire-format check allows. A subgraph costs three levels (Graph, Node,
   Attribute), so this leaves room for ~20 nested control-flow bodies. */
#define MAX_PROTO_DEPTH 64
/* protobuf-c may allocate this much beyond the input size times the factor (a message struct is
   bigger than its encoding; a legitimate model stays far below 64x). */
#define PROTO_ALLOC_FACTOR 64
#define PROTO_ALLOC_SLACK ((size_t)64 << 20)
#define MAX_IR_VERSION 10
#define MAX_OPSET 21
/* Bound on printed names, so a message stays readable when a name is huge. */
#define NM "%.120s"

/* ---- wire-format pre-check ------------------------------------------------------------------- */

static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t r = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*p >= end) return false;
    uint8_t b = *(*p)++;
    r |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) {
      *v = r;
      return true;
    }
  }
  return false;
}

/* Walks the message tree iteratively, using the generated descriptors to know which fields are
   messages. Fails on malformed framing and on nesting deeper than MAX_PROTO_DEPTH. */
static kiln_status check_wire(const uint8_t *data, size_t size, const ProtobufCMessageDescriptor *d,
                              kiln_error *err) {
  struct {
    const uint8_t *end;
    const ProtobufCMessageDescriptor *d;
  } stack[MAX_PROTO_DEPTH];
  int top = 0;
  stack[0].end = data + size;
  stack[0].d = d;
  const uint8_t *p = data;
  for (;;) {
    while (top >= 0 && p == stack[top].end) top--;
    if (top < 0) return KILN_OK;
    const uint8_t *end = stack[top].end;
    uint64_t key, v;
    if (!read_varint(&p, end, &key) || (key >> 3) == 0 || (key >> 3) > 0x1fffffff)
      return kiln__fail(err, KILN_BAD_MODEL, "malformed protobuf: bad field key at byte %zu",
                        (size_t)(p - data));
    switch (key & 7) {
    case 0:
      if (!read_varint(&p, end, &v))
        return kiln__fail(err, KILN_BAD_MODEL, "malformed protobuf: truncated varint");
      break;
    case 1:
    case 5: {
      size_t n = (key & 7) == 1 ? 8 : 4;
      if ((size_t)(end - p) < n)
        return kiln__fail(err, KILN_BAD_MODEL, "malformed protobuf: truncated fixed field");
      p += n;
      break;
    }
    case 2: {
      if (!read_varint(&p, end, &v) || v > (uint64_t)(end - p))
        return kiln__fail(err, KILN_BAD_MODEL,
                          "malformed protobuf: field %u claims more bytes than remain",
                          (unsigned)(key >> 3));
      const ProtobufCFieldDescriptor *f =
          protobuf_c_message_descriptor_get_field(stack[top].d, (unsigned)(key >> 3));
      if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
        if (top + 1 >= MAX_PROTO_DEPTH)
          return kiln__fail(err, KILN_UNSUPPORTED, "messages nest deeper than %d levels",
                            MAX_PROTO_DEPTH);
        top++;
        stack[top].end = p + v;
        stack[top].d = f->descriptor;
      } else {
        p += v;
      }
      break;
    }
    default:
      return kiln__fail(err, KILN_BAD_MODEL, "malformed protobuf: wire type %u is not supported",
                        (unsigned)(key & 7));
    }
  }
}

/* protobuf-c allocates through Kiln's allocator (so fault injection reaches it), within a budget
   proportional to the input. */
typedef struct pb_alloc_state {
  size_t used, budget;
  bool out_of_memory, over_budget;
} pb_alloc_state;

static void *pb_alloc(void *ud, size_t n) {
  pb_alloc_state *s = ud;
  if (n > s->budget - s->used) {
    s->over_budget = true;
    return NULL;
  }
  void *p = kiln__malloc(n);
  if (!p) {
    s->out_of_memory = true;
    return NULL;
  }
  s->used += n;
  return p;
}

static void pb_free(void *ud, void *p) {
  (void)ud;
  kiln__free(p);
}

static kiln_status unpack(const ProtobufCMessageDescriptor *d, const void *data, size_t size,
                          ProtobufCMessage **out, kiln_error *err) {
  static const uint8_t empty[1];
  if (!data) data = empty;
  kiln_status st = check_wire(data, size, d, err);
  if (st != KILN_OK) return st;
  pb_alloc_state s = {0};
  s.budget = size > (SIZE_MAX - PROTO_ALLOC_SLACK) / PROTO_ALLOC_FACTOR
                 ? SIZE_MAX
                 : size * PROTO_ALLOC_FACTOR + PROTO_ALLOC_SLACK;
  ProtobufCAllocator a = {pb_alloc, pb_free, &s};
  *out = protobuf_c_message_unpack(d, &a, size, data);
  if (*out) return KILN_OK;
  if (s.out_of_memory)
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory parsing the %s", d->short_name);
  if (s.over_budget)
    return kiln__fail(err, KILN_BAD_MODEL,
                      "parsing the %s would take more than %zu bytes of memory", d->short_name,
                      s.budget);
  return kiln__fail(err, KILN_BAD_MODEL, "malformed protobuf: not a valid %s", d->short_name);
}

static void free_unpacked(ProtobufCMessage *m) {
  if (!m) return;
  ProtobufCAllocator a = {pb_alloc, pb_free, NULL};
  protobuf_c_message_free_unpacked(m, &a);
}

/* ---- names: a hash index over a graph's values ----------------------------------------------- */

typedef struct names {
  int *slot; /* value index, -1 empty; capacity is a power of two */
  size_t cap, n;
} names;

static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

static int names_find(const names *h, const kiln__graph *g, const char *name) {
  if (!h->cap) return -1;
  for (size_t i = hash_str(name) & (h->cap - 1);; i = (i + 1) & (h->cap - 1)) {
    int v = h->slot[i];
    if (v < 0) return -1;
    if (!strcmp(g->values[v].name, name)) return v;
  }
}

static bool names_put(names *h, const kiln__graph *g, int v) {
  if ((h->n + 1) * 2 > h->cap) {
    size_t cap = h->cap ? h->cap * 2 : 64;
    int *slot = kiln__malloc(cap * sizeof *slot);
    if (!slot) return false;
    for (size_t i = 0; i < cap; i++) slot[i] = -1;
    for (size_t i = 0; i < h->cap; i++) {
      int w = h->slot[i];
      if (w < 0) continue;
      size_t j = hash_str(g->values[w].name) & (cap - 1);
      while (slot[j] >= 0) j = (j + 1) & (cap - 1);
      slot[j] = w;
    }
    kiln__free(h->slot);
    h->slot = slot;
    h->cap = cap;
  }
  size_t j = hash_str(g->values[v].name) & (h->cap - 1);
  while (h->slot[j] >= 0) j = (j + 1) & (h->cap - 1);
  h->slot[j] = v;
  h->n++;
  return true;
}

/* One graph being imported, with the scope that encloses it (for outer-scope captures). */
typedef struct scope {
  kiln__graph *g;
  names idx;
  struct scope *parent;
} scope;

/* Finds or adds the value called `name`. Same result as kiln__graph_value(), in O(1): that one
   searches linearly, which a hostile graph with many values turns quadratic. */
static int value_get(scope *s, const char *name) {
  kiln__graph *g = s->g;
  int i = names_find(&s->idx, g, name);
  if (i >= 0) return i;
  if (g->n_values == INT_MAX) return -1;
  if (g->n_values == g->cap_values) {
    int cap = g->cap_values ? (g->cap_values > INT_MAX / 2 ? INT_MAX : g->cap_values * 2) : 16;
    kiln__value *v = kiln__realloc(g->values, (size_t)cap * sizeof *v);
    if (!v) return -1;
    g->values = v;
    g->cap_values = cap;
  }
  kiln__value *v = &g->values[g->n_values];
  memset(v, 0, sizeof *v);
  v->name = kiln__strdup(name);
  if (!v->name) return -1;
  v->rank = -1;
  v->producer = -1;
  i = g->n_values++;
  if (!names_put(&s->idx, g, i)) return -1;
  return i;
}

/* ---- import context -------------------------------------------------------------------------- */

typedef struct opset_entry {
  const char *domain; /* normalised: "" for ai.onnx */
  int64_t version;
} opset_entry;

typedef struct ictx {
  kiln_error *err;
  const char *base_dir;
  int64_t ir_version, opset;
  opset_entry *opsets; /* sorted by domain */
  size_t n_opsets;
  int depth; /* subgraph nesting */
} ictx;

static const char *norm_domain(const char *d) {
  return !d || !strcmp(d, "ai.onnx") ? "" : d;
}

static int cmp_opset(const void *a, const void *b) {
  return strcmp(((const opset_entry *)a)->domain, ((const opset_entry *)b)->domain);
}

static const opset_entry *opset_find(const ictx *c, const char *domain) {
  opset_entry key = {norm_domain(domain), 0};
  return c->n_opsets ? bsearch(&key, c->opsets, c->n_opsets, sizeof key, cmp_opset) : NULL;
}

static char *dup_str(const char *s) { return kiln__strdup(s ? s : ""); }

static char *dup_bytes(const ProtobufCBinaryData *b) {
  char *s = kiln__malloc(b->len + 1);
  if (!s) return NULL;
  if (b->len) memcpy(s, b->data, b->len);
  s[b->len] = 0;
  return s;
}

static kiln_status no_memory(ictx *c) {
  return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory");
}

/* ---- tensors --------------------------------------------------------------------------------- */

static const char *onnx_type_name(int64_t t) {
  static const char *const extra[] = {"float8e4m3fn", "float8e4m3fnuz", "float8e5m2",
                                      "float8e5m2fnuz", "uint4", "int4", "float4e2m1"};
  if (t > 0 && t < KILN_DTYPE_COUNT) return kiln_dtype_name((kiln_dtype)t);
  if (t >= 17 && t < 17 + (int64_t)KILN__ARRAY_LEN(extra)) return extra[t - 17];
  return "unknown";
}

/* Checks an ONNX element type number. UNDEFINED is an error here (callers that allow it check
   first). */
static kiln_status check_dtype(ictx *c, int64_t t) {
  if (t > KILN_DTYPE_UNDEFINED && t < KILN_DTYPE_COUNT) return KILN_OK;
  if (t >= 17 && t <= 23)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "data type %lld (%s) is not supported",
                      (long long)t, onnx_type_name(t));
  return kiln__fail(c->err, KILN_BAD_MODEL, "invalid data type %lld", (long long)t);
}

static bool parse_u64(const char *s, uint64_t *out) {
  if (!s || !*s) return false;
  uint64_t v = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return false;
    unsigned d = (unsigned)(*s - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

/* A location must be a relative path that stays inside base_dir, also after symlinks. */
static kiln_status check_location(ictx *c, const char *loc) {
  if (!loc || !*loc) return kiln__fail(c->err, KILN_BAD_MODEL, "external data has no location");
  if (loc[0] == '/')
    return kiln__fail(c->err, KILN_BAD_MODEL,
                      "external data location '" NM "' is not a relative path", loc);
  for (const char *p = loc; *p;) {
    const char *e = strchr(p, '/');
    size_t len = e ? (size_t)(e - p) : strlen(p);
    if (len == 2 && p[0] == '.' && p[1] == '.')
      return kiln__fail(c->err, KILN_BAD_MODEL,
                        "external data location '" NM "' leaves the model's folder", loc);
    p += len;
    if (*p == '/') p++;
  }
  return KILN_OK;
}

/* Validates a tensor's external data (location inside base_dir, range inside the file, exactly
   `bytes` long) and opens it, before anything is allocated for it. */
static kiln_status open_external(ictx *c, const KilnOnnx__TensorProto *tp, size_t bytes, int *fd_out,
                                 uint64_t *offset_out) {
  *fd_out = -1;
  const char *loc = NULL;
  uint64_t offset = 0, length = 0;
  bool has_length = false;
  for (size_t i = 0; i < tp->n_external_data; i++) {
    const KilnOnnx__StringStringEntryProto *e = tp->external_data[i];
    if (!e->key) continue;
    if (!strcmp(e->key, "location")) {
      loc = e->value;
    } else if (!strcmp(e->key, "offset")) {
      if (!parse_u64(e->value, &offset))
        return kiln__fail(c->err, KILN_BAD_MODEL, "external data offset '" NM "' is invalid",
                          e->value ? e->value : "");
    } else if (!strcmp(e->key, "length")) {
      if (!parse_u64(e->value, &length))
        return kiln__fail(c->err, KILN_BAD_MODEL, "external data length '" NM "' is invalid",
                          e->value ? e->value : "");
      has_length = true;
    }
  }
  if (!c->base_dir)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "the tensor's data is in an external file, and no base folder was given");
  kiln_status st = check_location(c, loc);
  if (st != KILN_OK) return st;

  size_t nb = strlen(c->base_dir), nl = strlen(loc);
  char *path = kiln__malloc(nb + nl + 2);
  if (!path) return no_memory(c);
  memcpy(path, c->base_dir, nb);
  path[nb] = '/';
  memcpy(path + nb + 1, loc, nl + 1);
  char real_base[PATH_MAX], real_path[PATH_MAX];
  bool ok_base = realpath(c->base_dir, real_base) != NULL;
  bool ok_path = ok_base && realpath(path, real_path) != NULL;
  kiln__free(path);
  if (!ok_base)
    return kiln__fail(c->err, KILN_IO_ERROR, "cannot resolve the model folder '" NM "': %s",
                      c->base_dir, strerror(errno));
  if (!ok_path)
    return kiln__fail(c->err, KILN_IO_ERROR, "cannot open external data file '" NM "': %s", loc,
                      strerror(errno));
  size_t rb = strlen(real_base);
  bool inside = !strcmp(real_base, "/") ? true
                                        : !strncmp(real_path, real_base, rb) && real_path[rb] == '/';
  if (!inside)
    return kiln__fail(c->err, KILN_BAD_MODEL,
                      "external data file '" NM "' resolves outside the model's folder", loc);

  /* O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not regular). */
  int fd = open(real_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0)
    return kiln__fail(c->err, KILN_IO_ERROR, "cannot open external data file '" NM "': %s", loc,
                      strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    return kiln__fail(c->err, KILN_BAD_MODEL, "external data '" NM "' is not a regular file",
                      loc);
  }
  uint64_t fsize = (uint64_t)sb.st_size;
  if (offset > fsize) {
    close(fd);
    return kiln__fail(c->err, KILN_BAD_MODEL,
                      "external data offset %llu is past the end of '" NM "' (%llu bytes)",
                      (unsigned long long)offset, loc, (unsigned long long)fsize);
  }
  if (!has_length) length = fsize - offset;
  if (length > fsize - offset || length != bytes) {
    close(fd);
    return kiln__fail(c->err, KILN_BAD_MODEL,
                      "external data in '" NM "' has %llu bytes at offset %llu (file: %llu "
                      "bytes), the tensor needs %zu",
                      loc, (unsigned long long)length, (unsigned long long)offset,
                      (unsigned long long)fsize, bytes);
  }
  *fd_out = fd;
  *offset_out = offset;
  return KILN_OK;
}

static kiln_status read_external(ictx *c, int fd, uint64_t offset, size_t bytes, void *dst) {
  size_t done = 0;
  while (done < bytes) {
    size_t want = KILN__MIN(bytes - done, (size_t)1 << 30);
    ssize_t r = pread(fd, (uint8_t *)dst + done, want, (off_t)(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      return kiln__fail(c->err, KILN_IO_ERROR, "cannot read external data: %s",
                        r < 0 ? strerror(errno) : "the file became shorter");
    done += (size_t)r;
  }
  return KILN_OK;
}

/* Converts a TensorProto; on success `out` owns its data (kiln_tensor_release frees it). */
static kiln_status tensor_from_proto(ictx *c, const KilnOnnx__TensorProto *tp, kiln_tensor *out) {
  memset(out, 0, sizeof *out);
  kiln_error *err = c->err;
  if (!tp->has_data_type || tp->data_type == KILN_DTYPE_UNDEFINED)
    return kiln__fail(err, KILN_BAD_MODEL, "the tensor has no data type");
  kiln_status st = check_dtype(c, tp->data_type);
  if (st != KILN_OK) return st;
  kiln_dtype dt = (kiln_dtype)tp->data_type;
  if (tp->n_dims > KILN_MAX_RANK)
    return kiln__fail(err, KILN_UNSUPPORTED, "rank %zu is more than the %d Kiln supports",
                      tp->n_dims, KILN_MAX_RANK);
  int rank = (int)tp->n_dims;
  int64_t dims[KILN_MAX_RANK] = {0};
  for (int i = 0; i < rank; i++) {
    if (tp->dims[i] < 0)
      return kiln__fail(err, KILN_BAD_MODEL, "dimension %d is negative (%lld)", i,
                        (long long)tp->dims[i]);
    dims[i] = tp->dims[i];
  }
  size_t count, bytes, esize = kiln_dtype_size(dt);
  if (!kiln__shape_count(rank, dims, &count) || !kiln__mul_ok(count, esize, &bytes) ||
      bytes > (size_t)PTRDIFF_MAX)
    return kiln__fail(err, KILN_BAD_MODEL, "the shape's element count overflows");
  if (tp->segment)
    return kiln__fail(err, KILN_UNSUPPORTED, "segmented tensors are not supported");

  bool external = tp->has_data_location && tp->data_location == KILN_ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
  if (tp->has_data_location && !external &&
      tp->data_location != KILN_ONNX__TENSOR_PROTO__DATA_LOCATION__DEFAULT)
    return kiln__fail(err, KILN_BAD_MODEL, "invalid data_location %d", (int)tp->data_location);
  size_t typed = tp->n_float_data + tp->n_int32_data + tp->n_string_data + tp->n_int64_data +
                 tp->n_double_data + tp->n_uint64_data;
  if ((external || tp->has_raw_data) && typed)
    return kiln__fail(err, KILN_BAD_MODEL, "the tensor has both %s data and typed data fields",
                      external ? "external" : "raw");
  if (external && tp->has_raw_data)
    return kiln__fail(err, KILN_BAD_MODEL, "the tensor has both external and raw data");
  if (dt == KILN_DTYPE_STRING && (external || tp->has_raw_data))
    return kiln__fail(err, KILN_BAD_MODEL, "a string tensor must use string_data");

  /* Every path below checks the declared size against data that exists before allocating. */
  size_t want = 0, have = 0; /* elements of the typed field: expected, present */
  const char *field = NULL;
  int fd = -1;
  uint64_t offset = 0;
  if (external) {
    st = open_external(c, tp, bytes, &fd, &offset);
    if (st != KILN_OK) return st;
  } else if (tp->has_raw_data) {
    if (tp->raw_data.len != bytes)
      return kiln__fail(err, KILN_BAD_MODEL,
                        "raw_data has %zu bytes; a %s tensor of %zu elements needs %zu",
                        tp->raw_data.len, kiln_dtype_name(dt), count, bytes);
  } else {
    want = count;
    switch (dt) {
    case KILN_DTYPE_FLOAT: field = "float_data", have = tp->n_float_data; break;
    case KILN_DTYPE_COMPLEX64: field = "float_data", have = tp->n_float_data, want = 2 * count; break;
    case KILN_DTYPE_DOUBLE: field = "double_data", have = tp->n_double_data; break;
    case KILN_DTYPE_COMPLEX128: field = "double_data", have = tp->n_double_data, want = 2 * count; break;
    case KILN_DTYPE_INT64: field = "int64_data", have = tp->n_int64_data; break;
    case KILN_DTYPE_UINT32:
    case KILN_DTYPE_UINT64: field = "uint64_data", have = tp->n_uint64_data; break;
    case KILN_DTYPE_STRING: field = "string_data", have = tp->n_string_data; break;
    default: field = "int32_data", have = tp->n_int32_data; break;
    }
    if (have != want)
      return kiln__fail(err, KILN_BAD_MODEL, "%s has %zu values; the shape needs %zu", field,
                        have, want);
    if (typed != have)
      return kiln__fail(err, KILN_BAD_MODEL, "a %s tensor has values in fields other than %s",
                        kiln_dtype_name(dt), field);
  }

  void *data = kiln__aligned_alloc(bytes ? bytes : 1);
  if (!data) {
    if (fd >= 0) close(fd);
    return no_memory(c);
  }
  if (bytes) memset(data, 0, bytes);
  if (external) {
    st = read_external(c, fd, offset, bytes, data);
    close(fd);
    if (st != KILN_OK) {
      kiln__aligned_free(data);
      return st;
    }
    kiln__le_to_host(data, count, dt);
  } else if (tp->has_raw_data) {
    if (bytes) memcpy(data, tp->raw_data.data, bytes);
    kiln__le_to_host(data, count, dt);
    if (dt == KILN_DTYPE_BOOL)
      for (size_t i = 0; i < count; i++) ((uint8_t *)data)[i] = ((uint8_t *)data)[i] != 0;
  } else {
    switch (dt) {
    case KILN_DTYPE_FLOAT:
    case KILN_DTYPE_COMPLEX64:
      if (want) memcpy(data, tp->float_data, want * sizeof(float));
      break;
    case KILN_DTYPE_DOUBLE:
    case KILN_DTYPE_COMPLEX128:
      if (want) memcpy(data, tp->double_data, want * sizeof(double));
      break;
    case KILN_DTYPE_INT64:
      if (want) memcpy(data, tp->int64_data, want * sizeof(int64_t));
      break;
    case KILN_DTYPE_UINT64:
      if (want) memcpy(data, tp->uint64_data, want * sizeof(uint64_t));
      break;
    case KILN_DTYPE_UINT32:
      for (size_t i = 0; i < count; i++) ((uint32_t *)data)[i] = (uint32_t)tp->uint64_data[i];
      break;
    case KILN_DTYPE_STRING: {
      char **s = data;
      for (size_t i = 0; i < count; i++) {
        s[i] = dup_bytes(&tp->string_data[i]);
        if (!s[i]) {
          for (size_t k = 0; k < i; k++) kiln__free(s[k]);
          kiln__aligned_free(data);
          return no_memory(c);
        }
      }
      break;
    }
    case KILN_DTYPE_BOOL:
      for (size_t i = 0; i < count; i++) ((uint8_t *)data)[i] = tp->int32_data[i] != 0;
      break;
    case KILN_DTYPE_INT8:
    case KILN_DTYPE_UINT8:
      for (size_t i = 0; i < count; i++) ((uint8_t *)data)[i] = (uint8_t)tp->int32_data[i];
      break;
    case KILN_DTYPE_INT16:
    case KILN_DTYPE_UINT16:
    case KILN_DTYPE_FLOAT16:
    case KILN_DTYPE_BFLOAT16:
      for (size_t i = 0; i < count; i++) ((uint16_t *)data)[i] = (uint16_t)tp->int32_data[i];
      break;
    case KILN_DTYPE_INT32:
      if (count) memcpy(data, tp->int32_data, count * sizeof(int32_t));
      break;
    default:
      break;
    }
  }
  out->dtype = dt;
  out->rank = rank;
  if (rank) memcpy(out->dims, dims, (size_t)rank * sizeof *dims);
  out->data = data;
  return KILN_OK;
}

/* ---- value types ----------------------------------------------------------------------------- */

static kiln_status apply_shape(ictx *c, kiln__value *v, const KilnOnnx__TensorShapeProto *sp) {
  for (int d = 0; d < KILN_MAX_RANK; d++) {
    kiln__free(v->dim_params[d]);
    v->dim_params[d] = NULL;
  }
  v->rank = -1;
  if (!sp) return KILN_OK;
  if (sp->n_dim > KILN_MAX_RANK)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "rank %zu is more than the %d Kiln supports",
                      sp->n_dim, KILN_MAX_RANK);
  for (size_t d = 0; d < sp->n_dim; d++) {
    const KilnOnnx__TensorShapeProto__Dimension *dim = sp->dim[d];
    v->dims[d] = -1;
    if (dim->value_case == KILN_ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
      if (dim->dim_value < 0)
        return kiln__fail(c->err, KILN_BAD_MODEL, "dimension %zu is negative (%lld)", d,
                          (long long)dim->dim_value);
      v->dims[d] = dim->dim_value;
    } else if (dim->value_case == KILN_ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM &&
               dim->dim_param && *dim->dim_param) {
      v->dim_params[d] = kiln__strdup(dim->dim_param);
      if (!v->dim_params[d]) return no_memory(c);
    }
  }
  v->rank = (int)sp->n_dim;
  return KILN_OK;
}

static kiln_status elem_type(ictx *c, bool has, int32_t t, kiln_dtype *out) {
  *out = KILN_DTYPE_UNDEFINED;
  if (!has || t == 0) return KILN_OK;
  kiln_status st = check_dtype(c, t);
  if (st == KILN_OK) *out = (kiln_dtype)t;
  return st;
}

/* Copies what a TypeProto says into a value: its kind, and for tensors (also inside a sequence or
   optional) the element type; the shape where the value itself is a tensor or optional tensor. */
static kiln_status apply_type(ictx *c, kiln__value *v, const KilnOnnx__TypeProto *tp) {
  if (!tp) return KILN_OK;
  kiln_status st = KILN_OK;
  switch (tp->value_case) {
  case KILN_ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE:
    v->kind = KILN__VALUE_TENSOR;
    st = elem_type(c, tp->tensor_type->has_elem_type, tp->tensor_type->elem_type, &v->dtype);
    if (st == KILN_OK) st = apply_shape(c, v, tp->tensor_type->shape);
    return st;
  case KILN_ONNX__TYPE_PROTO__VALUE_SEQUENCE_TYPE:
  case KILN_ONNX__TYPE_PROTO__VALUE_OPTIONAL_TYPE: {
    bool seq = tp->value_case == KILN_ONNX__TYPE_PROTO__VALUE_SEQUENCE_TYPE;
    v->kind = seq ? KILN__VALUE_SEQUENCE : KILN__VALUE_OPTIONAL;
    const KilnOnnx__TypeProto *inner =
        seq ? tp->sequence_type->elem_type : tp->optional_type->elem_type;
    /* The element type of the innermost tensor, however deep (the wire check bounds depth). */
    const KilnOnnx__TypeProto *t = inner;
    while (t && (t->value_case == KILN_ONNX__TYPE_PROTO__VALUE_SEQUENCE_TYPE ||
                 t->value_case == KILN_ONNX__TYPE_PROTO__VALUE_OPTIONAL_TYPE))
      t = t->value_case == KILN_ONNX__TYPE_PROTO__VALUE_SEQUENCE_TYPE
              ? t->sequence_type->elem_type
              : t->optional_type->elem_type;
    if (t && t->value_case == KILN_ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE) {
      st = elem_type(c, t->tensor_type->has_elem_type, t->tensor_type->elem_type, &v->dtype);
      if (st == KILN_OK && !seq && t == inner) st = apply_shape(c, v, t->tensor_type->shape);
    }
    return st;
  }
  case KILN_ONNX__TYPE_PROTO__VALUE_MAP_TYPE:
  case KILN_ONNX__TYPE_PROTO__VALUE_SPARSE_TENSOR_TYPE:
    v->kind = KILN__VALUE_OTHER;
    return KILN_OK;
  default:
    return KILN_OK;
  }
}

static bool value_untyped(const kiln__value *v) {
  return !v->is_input && !v->is_initializer && v->kind == KILN__VALUE_TENSOR &&
         v->dtype == KILN_DTYPE_UNDEFINED && v->rank < 0;
}

/* ---- graphs, nodes, attributes --------------------------------------------------------------- */

static kiln_status import_graph(ictx *c, scope *s, const KilnOnnx__GraphProto *gp);

static kiln_status import_subgraph(ictx *c, scope *parent, const KilnOnnx__GraphProto *gp,
                                   kiln__graph **out) {
  *out = NULL;
  kiln__graph *g = kiln__graph_new();
  if (!g) return no_memory(c);
  g->parent = parent->g;
  g->ir_version = c->ir_version;
  g->opset = c->opset;
  scope s = {g, {0}, parent};
  c->depth++;
  kiln_status st = import_graph(c, &s, gp);
  c->depth--;
  /* Names the subgraph captures must exist in the enclosing graph too: there they are defined,
     or captured again from further out (checked when that graph is done). */
  for (int i = 0; st == KILN_OK && i < g->n_values; i++)
    if (g->values[i].is_outer && value_get(parent, g->values[i].name) < 0) st = no_memory(c);
  kiln__free(s.idx.slot);
  if (st != KILN_OK) {
    kiln__graph_free(g);
    return st;
  }
  *out = g;
  return KILN_OK;
}

/* Old writers (IR < 3) may leave out the attribute type; it is then the one payload present. */
static int infer_attr_type(const KilnOnnx__AttributeProto *ap) {
  int type = KILN__ATTR_UNDEFINED, found = 0;
#define KILN_TRY_(cond, t) \
  if (cond) {              \
    type = t;              \
    found++;               \
  }
  KILN_TRY_(ap->has_f, KILN__ATTR_FLOAT)
  KILN_TRY_(ap->has_i, KILN__ATTR_INT)
  KILN_TRY_(ap->has_s, KILN__ATTR_STRING)
  KILN_TRY_(ap->t, KILN__ATTR_TENSOR)
  KILN_TRY_(ap->g, KILN__ATTR_GRAPH)
  KILN_TRY_(ap->n_floats, KILN__ATTR_FLOATS)
  KILN_TRY_(ap->n_ints, KILN__ATTR_INTS)
  KILN_TRY_(ap->n_strings, KILN__ATTR_STRINGS)
  KILN_TRY_(ap->n_tensors, KILN__ATTR_TENSORS)
  KILN_TRY_(ap->n_graphs, KILN__ATTR_GRAPHS)
#undef KILN_TRY_
  return found == 1 ? type : KILN__ATTR_UNDEFINED;
}

static kiln_status import_attr(ictx *c, scope *s, kiln__attr *a,
                               const KilnOnnx__AttributeProto *ap) {
  a->name = dup_str(ap->name);
  if (!a->name) return no_memory(c);
  if (ap->ref_attr_name && *ap->ref_attr_name)
    return kiln__fail(c->err, KILN_BAD_MODEL,
                      "refers to function attribute '" NM "' outside a function",
                      ap->ref_attr_name);
  int type = ap->has_type ? (int)ap->type : infer_attr_type(ap);
  kiln_status st = KILN_OK;
  switch (type) {
  case KILN__ATTR_FLOAT:
    a->type = KILN__ATTR_FLOAT;
    a->f = ap->f;
    return KILN_OK;
  case KILN__ATTR_INT:
    a->type = KILN__ATTR_INT;
    a->i = ap->i;
    return KILN_OK;
  case KILN__ATTR_STRING:
    a->type = KILN__ATTR_STRING;
    a->s = dup_bytes(&ap->s);
    if (!a->s) return no_memory(c);
    a->s_len = ap->s.len;
    return KILN_OK;
  case KILN__ATTR_FLOATS:
    a->type = KILN__ATTR_FLOATS;
    a->floats = kiln__malloc(ap->n_floats * sizeof(float));
    if (!a->floats) return no_memory(c);
    if (ap->n_floats) memcpy(a->floats, ap->floats, ap->n_floats * sizeof(float));
    a->n = ap->n_floats;
    return KILN_OK;
  case KILN__ATTR_INTS:
    a->type = KILN__ATTR_INTS;
    a->ints = kiln__malloc(ap->n_ints * sizeof(int64_t));
    if (!a->ints) return no_memory(c);
    if (ap->n_ints) memcpy(a->ints, ap->ints, ap->n_ints * sizeof(int64_t));
    a->n = ap->n_ints;
    return KILN_OK;
  case KILN__ATTR_STRINGS:
    a->type = KILN__ATTR_STRINGS;
    a->strings = kiln__calloc(ap->n_strings, sizeof(char *));
    if (!a->strings) return no_memory(c);
    a->n = ap->n_strings;
    for (size_t i = 0; i < ap->n_strings; i++)
      if (!(a->strings[i] = dup_bytes(&ap->strings[i]))) return no_memory(c);
    return KILN_OK;
  case KILN__ATTR_TENSOR:
    a->type = KILN__ATTR_TENSOR;
    if (!ap->t) return kiln__fail(c->err, KILN_BAD_MODEL, "a TENSOR attribute has no tensor");
    a->t = kiln__calloc(1, sizeof(kiln_tensor));
    if (!a->t) return no_memory(c);
    return tensor_from_proto(c, ap->t, a->t);
  case KILN__ATTR_TENSORS:
    a->type = KILN__ATTR_TENSORS;
    a->t = kiln__calloc(ap->n_tensors, sizeof(kiln_tensor));
    if (!a->t) return no_memory(c);
    a->n = ap->n_tensors;
    for (size_t i = 0; i < ap->n_tensors && st == KILN_OK; i++) {
      st = tensor_from_proto(c, ap->tensors[i], &a->t[i]);
      if (st != KILN_OK) kiln__err_prefix(c->err, "tensor %zu", i);
    }
    return st;
  case KILN__ATTR_GRAPH:
    a->type = KILN__ATTR_GRAPH;
    if (!ap->g) return kiln__fail(c->err, KILN_BAD_MODEL, "a GRAPH attribute has no graph");
    return import_subgraph(c, s, ap->g, &a->g);
  case KILN__ATTR_TYPE_PROTO: {
    /* Encoded as: i = the kiln__value_kind, t = one data-less tensor holding the element type of
       the innermost tensor and, for a plain or optional tensor, its shape where it is fixed. */
    a->type = KILN__ATTR_TYPE_PROTO;
    if (!ap->tp) return kiln__fail(c->err, KILN_BAD_MODEL, "a TYPE_PROTO attribute has no type");
    a->t = kiln__calloc(1, sizeof(kiln_tensor));
    if (!a->t) return no_memory(c);
    kiln__value v = {.rank = -1};
    st = apply_type(c, &v, ap->tp);
    a->i = v.kind;
    a->t->dtype = v.dtype;
    for (int d = 0; d < KILN_MAX_RANK; d++) kiln__free(v.dim_params[d]);
    if (st == KILN_OK && v.rank > 0) {
      a->t->rank = v.rank;
      memcpy(a->t->dims, v.dims, sizeof v.dims);
    }
    return st;
  }
  case KILN__ATTR_GRAPHS:
  case KILN__ATTR_SPARSE_TENSOR:
  case 12: /* SPARSE_TENSORS */
  case 14: /* TYPE_PROTOS */
    return kiln__fail(c->err, KILN_UNSUPPORTED, "attributes of type %s are not supported",
                      type == KILN__ATTR_GRAPHS          ? "GRAPHS"
                      : type == KILN__ATTR_SPARSE_TENSOR ? "SPARSE_TENSOR"
                      : type == 12                       ? "SPARSE_TENSORS"
                                                         : "TYPE_PROTOS");
  default:
    return kiln__fail(c->err, KILN_BAD_MODEL, "invalid attribute type %d", type);
  }
}

static int cmp_str_ptr(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Sorts the names in `tmp` to find a repeat in O(n log n). Returns the repeated name or NULL. */
static const char *find_repeat(const char **tmp, size_t n) {
  qsort(tmp, n, sizeof *tmp, cmp_str_ptr);
  for (size_t i = 1; i < n; i++)
    if (!strcmp(tmp[i - 1], tmp[i])) return tmp[i];
  return NULL;
}

static kiln_status node_names(ictx *c, scope *s, const char *const *names_in, size_t n, int **out,
                              int *n_out) {
  if (n > INT_MAX / 2)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "too many inputs or outputs (%zu)", n);
  *out = kiln__malloc((n ? n : 1) * sizeof(int));
  if (!*out) return no_memory(c);
  *n_out = (int)n;
  for (size_t i = 0; i < n; i++) {
    const char *nm = names_in[i];
    if (!nm || !*nm) {
      (*out)[i] = -1;
      continue;
    }
    int v = value_get(s, nm);
    if (v < 0) {
      *n_out = (int)i;
      return no_memory(c);
    }
    (*out)[i] = v;
  }
  return KILN_OK;
}

static kiln_status import_node_body(ictx *c, scope *s, kiln__node *n,
                                    const KilnOnnx__NodeProto *np) {
  const opset_entry *os = opset_find(c, n->domain);
  if (!os)
    return kiln__fail(c->err, KILN_BAD_MODEL, "uses domain '" NM "', which the model does not "
                      "import (opset_import)", n->domain);
  n->opset = os->version;
  kiln_status st = node_names(c, s, (const char *const *)np->input, np->n_input, &n->in, &n->n_in);
  if (st == KILN_OK)
    st = node_names(c, s, (const char *const *)np->output, np->n_output, &n->out, &n->n_out);
  if (st != KILN_OK) return st;
  size_t na = np->n_attribute;
  if (na > INT_MAX / 2)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "too many attributes (%zu)", na);
  for (size_t i = 0; i < na; i++)
    if (!np->attribute[i]->name || !*np->attribute[i]->name)
      return kiln__fail(c->err, KILN_BAD_MODEL, "attribute %zu has no name", i);
  if (na > 1) {
    const char **tmp = kiln__malloc(na * sizeof *tmp);
    if (!tmp) return no_memory(c);
    for (size_t i = 0; i < na; i++) tmp[i] = np->attribute[i]->name;
    const char *rep = find_repeat(tmp, na);
    if (rep) st = kiln__fail(c->err, KILN_BAD_MODEL, "attribute '" NM "' is given twice", rep);
    kiln__free(tmp);
    if (st != KILN_OK) return st;
  }
  n->attrs = kiln__calloc(na, sizeof(kiln__attr));
  if (!n->attrs) return no_memory(c);
  n->n_attrs = (int)na;
  for (size_t i = 0; i < na; i++) {
    st = import_attr(c, s, &n->attrs[i], np->attribute[i]);
    if (st != KILN_OK) {
      kiln__err_prefix(c->err, "attribute '" NM "'", np->attribute[i]->name);
      return st;
    }
  }
  return KILN_OK;
}

static kiln_status import_node(ictx *c, scope *s, const KilnOnnx__NodeProto *np, size_t idx) {
  if (!np->op_type || !*np->op_type)
    return kiln__fail(c->err, KILN_BAD_MODEL, "node %zu ('" NM "') has no op_type", idx,
                      np->name ? np->name : "");
  kiln__node *n = kiln__graph_add_node(s->g);
  if (!n) return no_memory(c);
  n->op_type = kiln__strdup(np->op_type);
  n->domain = kiln__strdup(norm_domain(np->domain));
  if (np->name && *np->name) {
    n->name = kiln__strdup(np->name);
  } else {
    char buf[96];
    snprintf(buf, sizeof buf, "node_%zu_%.64s", idx, np->op_type);
    n->name = kiln__strdup(buf);
  }
  if (!n->op_type || !n->domain || !n->name) return no_memory(c);
  /* `n` stays valid: only a subgraph's node array grows while this node is imported. */
  kiln_status st = import_node_body(c, s, n, np);
  if (st != KILN_OK) kiln__err_prefix(c->err, "node '" NM "' (" NM ")", n->name, n->op_type);
  return st;
}

static kiln_status value_list(ictx *c, size_t n, int **out, int *n_out) {
  if (n > INT_MAX / 2) return kiln__fail(c->err, KILN_UNSUPPORTED, "too many graph inputs/outputs");
  *out = kiln__malloc((n ? n : 1) * sizeof(int));
  if (!*out) return no_memory(c);
  *n_out = 0;
  return KILN_OK;
}

static kiln_status import_graph_body(ictx *c, scope *s, const KilnOnnx__GraphProto *gp) {
  kiln__graph *g = s->g;
  kiln_error *err = c->err;
  kiln_status st;
  g->name = dup_str(gp->name);
  if (!g->name) return no_memory(c);
  if (gp->n_sparse_initializer)
    return kiln__fail(err, KILN_UNSUPPORTED, "sparse initializers are not supported");
  if (gp->n_node > INT_MAX / 2)
    return kiln__fail(err, KILN_UNSUPPORTED, "too many nodes (%zu)", gp->n_node);

  for (size_t i = 0; i < gp->n_initializer; i++) {
    const KilnOnnx__TensorProto *tp = gp->initializer[i];
    if (!tp->name || !*tp->name)
      return kiln__fail(err, KILN_BAD_MODEL, "initializer %zu has no name", i);
    int v = value_get(s, tp->name);
    if (v < 0) return no_memory(c);
    kiln__value *val = &g->values[v];
    if (val->is_initializer)
      return kiln__fail(err, KILN_BAD_MODEL, "initializer '" NM "' is given twice", tp->name);
    st = tensor_from_proto(c, tp, &val->init);
    if (st != KILN_OK) {
      kiln__err_prefix(err, "initializer '" NM "'", tp->name);
      return st;
    }
    val->is_initializer = true;
    val->kind = KILN__VALUE_TENSOR;
    val->dtype = val->init.dtype;
    val->rank = val->init.rank;
    memcpy(val->dims, val->init.dims, sizeof val->dims);
  }

  st = value_list(c, gp->n_input, &g->inputs, &g->n_inputs);
  if (st != KILN_OK) return st;
  for (size_t i = 0; i < gp->n_input; i++) {
    const KilnOnnx__ValueInfoProto *vi = gp->input[i];
    if (!vi->name || !*vi->name)
      return kiln__fail(err, KILN_BAD_MODEL, "graph input %zu has no name", i);
    int v = value_get(s, vi->name);
    if (v < 0) return no_memory(c);
    kiln__value *val = &g->values[v];
    if (val->is_input)
      return kiln__fail(err, KILN_BAD_MODEL, "graph input '" NM "' is listed twice", vi->name);
    /* An input that an initializer also defines (IR < 4 lists every initializer as an input)
       keeps the initializer and is not fed by the caller. */
    if (val->is_initializer) continue;
    st = apply_type(c, val, vi->type);
    if (st != KILN_OK) {
      kiln__err_prefix(err, "graph input '" NM "'", vi->name);
      return st;
    }
    val->is_input = true;
    g->inputs[g->n_inputs++] = v;
  }

  for (size_t i = 0; i < gp->n_node; i++) {
    st = import_node(c, s, gp->node[i], i);
    if (st != KILN_OK) return st;
  }

  st = value_list(c, gp->n_output, &g->outputs, &g->n_outputs);
  if (st != KILN_OK) return st;
  for (size_t i = 0; i < gp->n_output; i++) {
    const KilnOnnx__ValueInfoProto *vi = gp->output[i];
    if (!vi->name || !*vi->name)
      return kiln__fail(err, KILN_BAD_MODEL, "graph output %zu has no name", i);
    int v = value_get(s, vi->name);
    if (v < 0) return no_memory(c);
    if (value_untyped(&g->values[v]) && (st = apply_type(c, &g->values[v], vi->type)) != KILN_OK) {
      kiln__err_prefix(err, "graph output '" NM "'", vi->name);
      return st;
    }
    g->outputs[g->n_outputs++] = v;
  }

  for (size_t i = 0; i < gp->n_value_info; i++) {
    const KilnOnnx__ValueInfoProto *vi = gp->value_info[i];
    if (!vi->name) continue;
    int v = names_find(&s->idx, g, vi->name);
    if (v < 0 || !value_untyped(&g->values[v])) continue;
    st = apply_type(c, &g->values[v], vi->type);
    if (st != KILN_OK) {
      kiln__err_prefix(err, "value_info '" NM "'", vi->name);
      return st;
    }
  }

  if (s->parent) {
    /* A name this graph reads but does not define comes from an enclosing scope. Node outputs
       are marked through `producer` here; finalize recomputes it. */
    for (int i = 0; i < g->n_nodes; i++)
      for (int o = 0; o < g->nodes[i].n_out; o++)
        if (g->nodes[i].out[o] >= 0) g->values[g->nodes[i].out[o]].producer = i;
    for (int v = 0; v < g->n_values; v++) {
      kiln__value *val = &g->values[v];
      if (val->producer < 0 && !val->is_input && !val->is_initializer) val->is_outer = true;
    }
  }
  /* finalize also rejects a name that a subgraph reads and no enclosing graph defines */
  return kiln__graph_finalize(g, err);
}

static kiln_status import_graph(ictx *c, scope *s, const KilnOnnx__GraphProto *gp) {
  kiln_status st = import_graph_body(c, s, gp);
  if (st != KILN_OK && s->parent)
    kiln__err_prefix(c->err, "subgraph '" NM "'", gp->name ? gp->name : "");
  return st;
}

/* ---- entry points ---------------------------------------------------------------------------- */

static kiln_status import_model(ictx *c, const KilnOnnx__ModelProto *m, kiln__graph **out) {
  kiln_error *err = c->err;
  if (!m->has_ir_version || m->ir_version <= 0)
    return kiln__fail(err, KILN_BAD_MODEL, "the model has no ir_version");
  if (m->ir_version > MAX_IR_VERSION)
    return kiln__fail(err, KILN_UNSUPPORTED, "IR version %lld is newer than the %d Kiln supports",
                      (long long)m->ir_version, MAX_IR_VERSION);
  c->ir_version = m->ir_version;

  c->opsets = kiln__malloc((m->n_opset_import ? m->n_opset_import : 1) * sizeof *c->opsets);
  if (!c->opsets) return no_memory(c);
  c->n_opsets = m->n_opset_import;
  for (size_t i = 0; i < m->n_opset_import; i++) {
    const KilnOnnx__OperatorSetIdProto *o = m->opset_import[i];
    c->opsets[i].domain = norm_domain(o->domain);
    c->opsets[i].version = o->has_version ? o->version : 0;
    if (c->opsets[i].version < 1)
      return kiln__fail(err, KILN_BAD_MODEL, "opset_import for domain '" NM "' has version %lld",
                        c->opsets[i].domain, (long long)c->opsets[i].version);
  }
  if (c->n_opsets > 1) {
    qsort(c->opsets, c->n_opsets, sizeof *c->opsets, cmp_opset);
    for (size_t i = 1; i < c->n_opsets; i++)
      if (!strcmp(c->opsets[i - 1].domain, c->opsets[i].domain))
        return kiln__fail(err, KILN_BAD_MODEL, "opset_import lists domain '" NM "' twice",
                          c->opsets[i].domain);
  }
  const opset_entry *def = opset_find(c, "");
  /* IR 1-2 predate opset_import: those models are opset 1. A newer model may import only other
     domains (opset stays 0; a default-domain node is then rejected by the lookup). */
  static const opset_entry legacy = {"", 1};
  if (!def && c->ir_version < 3 && !c->n_opsets) {
    c->opsets[0] = legacy;
    c->n_opsets = 1;
    def = &c->opsets[0];
  }
  if (def && def->version > MAX_OPSET)
    return kiln__fail(err, KILN_UNSUPPORTED,
                      "opset %lld is newer than the %d Kiln supports", (long long)def->version,
                      MAX_OPSET);
  c->opset = def ? def->version : 0;
  if (!m->graph) return kiln__fail(err, KILN_BAD_MODEL, "the model has no graph");

  kiln__graph *g = kiln__graph_new();
  if (!g) return no_memory(c);
  g->ir_version = c->ir_version;
  g->opset = c->opset;
  scope s = {g, {0}, NULL};
  kiln_status st = import_graph(c, &s, m->graph);
  kiln__free(s.idx.slot);
  for (size_t i = 0; st == KILN_OK && i < m->n_metadata_props; i++) {
    const KilnOnnx__StringStringEntryProto *e = m->metadata_props[i];
    if (!e->key || strcmp(e->key, "kiln.optimized_level")) continue;
    const char *v = e->value ? e->value : "";
    if (v[0] < '0' || v[0] > '9' || v[1])
      st = kiln__fail(err, KILN_BAD_MODEL, "metadata kiln.optimized_level is '" NM "'", v);
    else
      g->optimized_level = v[0] - '0';
  }
  if (st != KILN_OK) {
    kiln__graph_free(g);
    return st;
  }
  *out = g;
  return KILN_OK;
}

kiln_status kiln__onnx_import(const void *data, size_t size, const char *base_dir,
                              kiln__graph **out, kiln_error *err) {
  if (!out) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no output pointer");
  *out = NULL;
  if (!data && size) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no model bytes");
  kiln_error e = {0};
  ictx c = {.err = &e, .base_dir = base_dir};
  ProtobufCMessage *m = NULL;
  kiln_status st = unpack(&kiln_onnx__model_proto__descriptor, data, size, &m, &e);
  if (st == KILN_OK) st = import_model(&c, (const KilnOnnx__ModelProto *)m, out);
  kiln__free(c.opsets);
  free_unpacked(m);
  if (st != KILN_OK && err) *err = e;
  return st;
}

kiln_status kiln__onnx_import_file(const char *path, kiln__graph **out, kiln_error *err) {
  *out = NULL;
  uint8_t *data;
  size_t size;
  kiln_status st = kiln__read_file(path, &data, &size, err);
  if (st != KILN_OK) return st;
  char *dir = kiln__path_dir(path);
  if (!dir) st = kiln__fail(err, KILN_NO_MEMORY, "out of memory");
  if (st == KILN_OK) st = kiln__onnx_import(data, size, dir, out, err);
  kiln__free(dir);
  kiln__free(data);
  return st;
}

kiln_status kiln__onnx_tensor(const void *data, size_t size, kiln_tensor *out, kiln_error *err) {
  if (!out) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no output tensor");
  memset(out, 0, sizeof *out);
  if (!data && size) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no tensor bytes");
  kiln_error e = {0};
  ictx c = {.err = &e};
  ProtobufCMessage *m = NULL;
  kiln_status st = unpack(&kiln_onnx__tensor_proto__descriptor, data, size, &m, &e);
  if (st == KILN_OK) {
    const KilnOnnx__TensorProto *tp = (const KilnOnnx__TensorProto *)m;
    st = tensor_from_proto(&c, tp, out);
    if (st != KILN_OK && tp->name && *tp->name) kiln__err_prefix(&e, "tensor '" NM "'", tp->name);
  }
  free_unpacked(m);
  if (st != KILN_OK && err) *err = e;
  return st;
}

/* ---- sequences and optionals (test data) ------------------------------------------------------ */

static kiln_status seq_from_proto(ictx *c, const KilnOnnx__SequenceProto *sp, kiln_tensor *out);

static kiln_status opt_from_proto(ictx *c, const KilnOnnx__OptionalProto *op, kiln_tensor *out) {
  memset(out, 0, sizeof *out);
  out->dtype = KILN_DTYPE_OPTIONAL;
  if (!op->tensor_value && !op->sequence_value) return KILN_OK; /* an empty optional */
  kiln_tensor *inner = kiln__aligned_alloc(sizeof *inner);
  if (!inner) return no_memory(c);
  out->data = inner;
  return op->tensor_value ? tensor_from_proto(c, op->tensor_value, inner)
                          : seq_from_proto(c, op->sequence_value, inner);
}

static kiln_status seq_from_proto(ictx *c, const KilnOnnx__SequenceProto *sp, kiln_tensor *out) {
  memset(out, 0, sizeof *out);
  out->dtype = KILN_DTYPE_SEQUENCE;
  out->rank = 1;
  if (sp->n_sparse_tensor_values || sp->n_map_values)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "sequences of sparse tensors or maps");
  size_t n = sp->n_tensor_values + sp->n_sequence_values + sp->n_optional_values;
  if (n == 0) return KILN_OK;
  kiln_tensor *items = kiln__aligned_alloc(n * sizeof *items);
  if (!items) return no_memory(c);
  memset(items, 0, n * sizeof *items);
  out->data = items;
  kiln_status st = KILN_OK;
  size_t k = 0;
  for (size_t i = 0; st == KILN_OK && i < sp->n_tensor_values; i++, k++)
    st = tensor_from_proto(c, sp->tensor_values[i], &items[k]);
  for (size_t i = 0; st == KILN_OK && i < sp->n_sequence_values; i++, k++)
    st = seq_from_proto(c, sp->sequence_values[i], &items[k]);
  for (size_t i = 0; st == KILN_OK && i < sp->n_optional_values; i++, k++)
    st = opt_from_proto(c, sp->optional_values[i], &items[k]);
  out->dims[0] = (int64_t)k; /* what was read, so a release after an error frees just that */
  return st;
}

kiln_status kiln__onnx_value(const void *data, size_t size, kiln_dtype kind, kiln_tensor *out,
                             kiln_error *err) {
  if (kind != KILN_DTYPE_SEQUENCE && kind != KILN_DTYPE_OPTIONAL)
    return kiln__onnx_tensor(data, size, out, err);
  if (!out) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no output value");
  memset(out, 0, sizeof *out);
  if (!data && size) return kiln__fail(err, KILN_INVALID_ARGUMENT, "no value bytes");
  kiln_error e = {0};
  ictx c = {.err = &e};
  ProtobufCMessage *m = NULL;
  bool seq = kind == KILN_DTYPE_SEQUENCE;
  kiln_status st = unpack(seq ? &kiln_onnx__sequence_proto__descriptor
                              : &kiln_onnx__optional_proto__descriptor,
                          data, size, &m, &e);
  if (st == KILN_OK)
    st = seq ? seq_from_proto(&c, (const KilnOnnx__SequenceProto *)m, out)
             : opt_from_proto(&c, (const KilnOnnx__OptionalProto *)m, out);
  free_unpacked(m);
  if (st != KILN_OK) {
    kiln_tensor_release(out);
    if (err) *err = e;
  }
  return st;
}
