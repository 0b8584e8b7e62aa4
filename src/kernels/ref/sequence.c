/* Reference kernels: sequences and optionals. Their values hold other values (see kiln_dtype);
   elements are copied into the run's dynamic arena when they enter a sequence, so a sequence and
   every element it holds stay valid until the run ends and can be shared without copying. All
   of these ops defer: what they produce is known only by running them. */
#include "ir/op.h"

static kiln_status infer_defer(kiln__kctx *c) {
  (void)c;
  return KILN__DEFER;
}

static size_t seq_len(const kiln_tensor *t) {
  return t->dtype == KILN_DTYPE_SEQUENCE && t->rank == 1 && t->dims[0] > 0 ? (size_t)t->dims[0] : 0;
}

static kiln_status want_seq(kiln__kctx *c, const kiln_tensor *t) {
  if (!t || t->dtype != KILN_DTYPE_SEQUENCE)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "expected a sequence, got %s",
                      t ? kiln_dtype_name(t->dtype) : "nothing");
  return KILN_OK;
}

/* A new sequence of n elements (uninitialised) as output 0. */
static kiln_status new_seq(kiln__kctx *c, size_t n, kiln_tensor **items) {
  kiln_tensor *out = c->out[0];
  memset(out, 0, sizeof *out);
  out->dtype = KILN_DTYPE_SEQUENCE;
  out->rank = 1;
  out->dims[0] = (int64_t)n;
  *items = NULL;
  if (n == 0) return KILN_OK;
  size_t bytes;
  if (!kiln__mul_ok(n, sizeof(kiln_tensor), &bytes) || !(*items = kiln__dyn_scratch(c, bytes)))
    return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory for a sequence");
  out->data = *items;
  return KILN_OK;
}

/* Reads an optional scalar position input; negative counts from the end. */
static kiln_status position(kiln__kctx *c, int idx, size_t n, bool insert, size_t *pos) {
  const kiln_tensor *p = idx < c->n_in ? c->in[idx] : NULL;
  if (!p) {
    *pos = insert ? n : n - 1;
    if (!insert && n == 0) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "the sequence is empty");
    return KILN_OK;
  }
  if (kiln_tensor_count(p) != 1 || (p->dtype != KILN_DTYPE_INT64 && p->dtype != KILN_DTYPE_INT32))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "position must be an int32/int64 scalar");
  int64_t v = kiln__load_i64(p->data, p->dtype, 0), lim = (int64_t)n + (insert ? 1 : 0);
  if (v < 0) v += (int64_t)n;
  if (v < 0 || v >= lim)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "position %lld is outside the sequence of %zu",
                      (long long)kiln__load_i64(p->data, p->dtype, 0), n);
  *pos = (size_t)v;
  return KILN_OK;
}

static kiln_status run_empty(kiln__kctx *c) {
  kiln_tensor *items;
  return new_seq(c, 0, &items);
}

static kiln_status run_construct(kiln__kctx *c) {
  kiln_tensor *items;
  kiln_status st = new_seq(c, (size_t)c->n_in, &items);
  for (int i = 0; st == KILN_OK && i < c->n_in; i++) {
    if (i > 0 && c->in[i]->dtype != c->in[0]->dtype)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "sequence elements differ in dtype");
    st = kiln__value_copy(c, c->in[i], &items[i]);
  }
  return st;
}

static kiln_status run_insert(kiln__kctx *c) {
  kiln_status st = want_seq(c, c->in[0]);
  size_t n = seq_len(c->in[0]), pos = 0;
  if (st == KILN_OK) st = position(c, 2, n, true, &pos);
  const kiln_tensor *old = c->in[0]->data;
  kiln_tensor *items;
  if (st == KILN_OK) st = new_seq(c, n + 1, &items);
  if (st != KILN_OK) return st;
  for (size_t i = 0, k = 0; i <= n; i++)
    if (i != pos) items[i] = old[k++];
  return kiln__value_copy(c, c->in[1], &items[pos]);
}

static kiln_status run_at(kiln__kctx *c) {
  kiln_status st = want_seq(c, c->in[0]);
  size_t n = seq_len(c->in[0]), pos = 0;
  if (st == KILN_OK) st = position(c, 1, n, false, &pos);
  if (st == KILN_OK && !c->in[1])
    st = kiln__fail(c->err, KILN_INVALID_ARGUMENT, "SequenceAt needs a position");
  if (st == KILN_OK) *c->out[0] = ((const kiln_tensor *)c->in[0]->data)[pos];
  return st;
}

static kiln_status run_erase(kiln__kctx *c) {
  kiln_status st = want_seq(c, c->in[0]);
  size_t n = seq_len(c->in[0]), pos = 0;
  if (st == KILN_OK) st = position(c, 1, n, false, &pos);
  const kiln_tensor *old = c->in[0]->data;
  kiln_tensor *items;
  if (st == KILN_OK) st = new_seq(c, n - 1, &items);
  if (st != KILN_OK) return st;
  for (size_t i = 0, k = 0; i < n; i++)
    if (i != pos) items[k++] = old[i];
  return KILN_OK;
}

static kiln_status run_length(kiln__kctx *c) {
  kiln_status st = want_seq(c, c->in[0]);
  if (st == KILN_OK) st = kiln__out_alloc(c, 0, KILN_DTYPE_INT64, 0, NULL);
  if (st == KILN_OK) *(int64_t *)c->out[0]->data = (int64_t)seq_len(c->in[0]);
  return st;
}

/* Copies slab [begin, end) of axis `ax` of t into a new tensor. */
static kiln_status take_range(kiln__kctx *c, const kiln_tensor *t, int ax, int64_t begin,
                              int64_t end, bool squeeze, kiln_tensor *dst) {
  memset(dst, 0, sizeof *dst);
  dst->dtype = t->dtype;
  for (int d = 0; d < t->rank; d++) {
    if (d == ax && squeeze) continue;
    dst->dims[dst->rank++] = d == ax ? end - begin : t->dims[d];
  }
  size_t es = kiln_dtype_size(t->dtype), outer = 1, inner = 1, len = (size_t)(end - begin);
  for (int d = 0; d < ax; d++) outer *= (size_t)t->dims[d];
  for (int d = ax + 1; d < t->rank; d++) inner *= (size_t)t->dims[d];
  dst->data = kiln__dyn_scratch(c, outer * len * inner * es);
  if (!dst->data) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory splitting");
  for (size_t o = 0; o < outer; o++)
    memcpy((uint8_t *)dst->data + o * len * inner * es,
           (const uint8_t *)t->data + (o * (size_t)t->dims[ax] + (size_t)begin) * inner * es,
           len * inner * es);
  return KILN_OK;
}

static kiln_status run_split(kiln__kctx *c) {
  const kiln_tensor *t = c->in[0];
  const kiln_tensor *split = c->n_in > 1 ? c->in[1] : NULL;
  int ax;
  if (kiln__is_container(t->dtype) || t->dtype == KILN_DTYPE_STRING)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "SplitToSequence of %s", kiln_dtype_name(t->dtype));
  if (!kiln__norm_axis(kiln__attr_int(c->node, "axis", 0), t->rank, &ax))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis out of range");
  int64_t len = t->dims[ax];
  int64_t sizes[4096];
  size_t n = 0;
  bool squeeze = false;
  if (!split) {
    if (len > 4096) return kiln__fail(c->err, KILN_UNSUPPORTED, "too many pieces");
    for (int64_t i = 0; i < len; i++) sizes[n++] = 1;
    squeeze = kiln__attr_int(c->node, "keepdims", 1) == 0;
  } else if (split->rank == 0) {
    int64_t each = kiln__load_i64(split->data, split->dtype, 0);
    if (each <= 0) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "split must be positive");
    for (int64_t at = 0; at < len && n < 4096; at += each) sizes[n++] = KILN__MIN(each, len - at);
  } else {
    kiln_status st = kiln__read_ints(c, split, sizes, 4096, &n);
    if (st != KILN_OK) return st;
    int64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
      if (sizes[i] < 0) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "negative split");
      sum += sizes[i];
    }
    if (sum != len)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "splits sum to %lld, the axis is %lld",
                        (long long)sum, (long long)len);
  }
  kiln_tensor *items;
  kiln_status st = new_seq(c, n, &items);
  int64_t at = 0;
  for (size_t i = 0; st == KILN_OK && i < n; i++) {
    st = take_range(c, t, ax, at, at + sizes[i], squeeze, &items[i]);
    at += sizes[i];
  }
  return st;
}

static kiln_status run_concat(kiln__kctx *c) {
  kiln_status st = want_seq(c, c->in[0]);
  if (st != KILN_OK) return st;
  size_t n = seq_len(c->in[0]);
  const kiln_tensor *items = c->in[0]->data;
  if (n == 0) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "cannot concatenate an empty sequence");
  bool new_axis = kiln__attr_int(c->node, "new_axis", 0) != 0;
  const kiln_tensor *f = &items[0];
  int rank = f->rank + (new_axis ? 1 : 0), ax;
  if (rank > KILN_MAX_RANK || rank < 1 || !kiln__norm_axis(kiln__attr_int(c->node, "axis", 0), rank, &ax))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis out of range");
  int64_t dims[KILN_MAX_RANK], total = 0;
  for (size_t i = 0; i < n; i++) {
    const kiln_tensor *t = &items[i];
    if (t->dtype != f->dtype || t->rank != f->rank)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "sequence elements differ in type or rank");
    for (int d = 0; d < f->rank; d++)
      if (t->dims[d] != f->dims[d] && (new_axis || d != ax))
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "sequence elements differ in shape");
    total += new_axis ? 1 : t->dims[ax];
  }
  for (int d = 0, k = 0; d < rank; d++) {
    dims[d] = d == ax ? total : f->dims[k];
    k += d != ax || !new_axis;
  }
  st = kiln__out_alloc(c, 0, f->dtype, rank, dims);
  if (st != KILN_OK) return st;
  size_t es = kiln_dtype_size(f->dtype), outer = 1, inner = 1;
  for (int d = 0; d < ax; d++) outer *= (size_t)dims[d];
  for (int d = ax + 1; d < rank; d++) inner *= (size_t)dims[d];
  uint8_t *dst = c->out[0]->data;
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len = new_axis ? 1 : (size_t)items[i].dims[ax];
    for (size_t o = 0; o < outer; o++)
      memcpy(dst + (o * (size_t)total + at) * inner * es,
             (const uint8_t *)items[i].data + o * len * inner * es, len * inner * es);
    at += len;
  }
  return KILN_OK;
}

static kiln_status run_map(kiln__kctx *c) {
  const kiln__attr *a = kiln__attr_find(c->node, "body");
  const kiln__graph *body = a && a->type == KILN__ATTR_GRAPH ? a->g : NULL;
  if (!body || body->n_inputs != c->n_in || body->n_outputs != c->n_out || c->n_in > 64)
    return kiln__fail(c->err, KILN_BAD_MODEL, "SequenceMap inputs, outputs and body do not agree");
  kiln_status st = want_seq(c, c->in[0]);
  if (st != KILN_OK) return st;
  size_t n = seq_len(c->in[0]);
  for (int k = 1; k < c->n_in; k++)
    if (c->in[k]->dtype == KILN_DTYPE_SEQUENCE && seq_len(c->in[k]) != n)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "SequenceMap sequences differ in length");
  kiln_tensor *results[64];
  for (int j = 0; j < c->n_out; j++) {
    kiln__kctx one = *c;
    kiln_tensor *const outs[1] = {c->out[j]};
    one.out = outs;
    if ((st = new_seq(&one, n, &results[j])) != KILN_OK) return st;
  }
  kiln_tensor args[64], outs[64];
  for (size_t i = 0; i < n; i++) {
    for (int k = 0; k < c->n_in; k++)
      args[k] = c->in[k]->dtype == KILN_DTYPE_SEQUENCE ? ((const kiln_tensor *)c->in[k]->data)[i]
                                                       : *c->in[k];
    st = kiln__subgraph_run(c, body, args, c->n_in, outs, c->n_out);
    for (int j = 0; st == KILN_OK && j < c->n_out; j++) st = kiln__value_copy(c, &outs[j], &results[j][i]);
    if (st != KILN_OK) return st;
  }
  return KILN_OK;
}

static kiln_status run_optional(kiln__kctx *c) {
  kiln_tensor *out = c->out[0];
  memset(out, 0, sizeof *out);
  out->dtype = KILN_DTYPE_OPTIONAL;
  if (c->n_in < 1 || !c->in[0]) return KILN_OK;
  kiln_tensor *inner = kiln__dyn_scratch(c, sizeof *inner);
  if (!inner) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory for an optional");
  out->data = inner;
  return kiln__value_copy(c, c->in[0], inner);
}

static kiln_status run_has_element(kiln__kctx *c) {
  const kiln_tensor *t = c->n_in > 0 ? c->in[0] : NULL;
  bool has = t && (t->dtype != KILN_DTYPE_OPTIONAL || t->data);
  kiln_status st = kiln__out_alloc(c, 0, KILN_DTYPE_BOOL, 0, NULL);
  if (st == KILN_OK) *(uint8_t *)c->out[0]->data = has;
  return st;
}

static kiln_status run_get_element(kiln__kctx *c) {
  const kiln_tensor *t = c->in[0];
  if (t->dtype != KILN_DTYPE_OPTIONAL) return kiln__value_copy(c, t, c->out[0]);
  if (!t->data) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "the optional has no value");
  *c->out[0] = *(const kiln_tensor *)t->data;
  return KILN_OK;
}

const kiln__op kiln__ops_sequence[] = {
    {"", "SequenceEmpty", infer_defer, run_empty, NULL, 0, 0, 0},
    {"", "SequenceConstruct", infer_defer, run_construct, NULL, 0, 1, -1},
    {"", "SequenceInsert", infer_defer, run_insert, NULL, 0, 2, 3},
    {"", "SequenceAt", infer_defer, run_at, NULL, 0, 2, 2},
    {"", "SequenceErase", infer_defer, run_erase, NULL, 0, 1, 2},
    {"", "SequenceLength", infer_defer, run_length, NULL, 0, 1, 1},
    {"", "SplitToSequence", infer_defer, run_split, NULL, 0, 1, 2},
    {"", "ConcatFromSequence", infer_defer, run_concat, NULL, 0, 1, 1},
    {"", "SequenceMap", infer_defer, run_map, NULL, 0, 1, -1},
    {"", "Optional", infer_defer, run_optional, NULL, 0, 0, 1},
    {"", "OptionalHasElement", infer_defer, run_has_element, NULL, 0, 0, 1},
    {"", "OptionalGetElement", infer_defer, run_get_element, NULL, 0, 1, 1},
    {0},
};
