/* Data-movement kernels of the "cpu" backend: Concat.
 *
 * The output of Concat is contiguous; for outer index o it is input 0's o-th row (dims[axis] x
 * inner elements), then input 1's, and so on. The reference kernel copies those rows in order on
 * one thread. Here the output is cut into byte ranges of CHUNK, each mapped back to the rows it
 * covers, so a large Concat (SqueezeNet's fire modules: two 0.8 MB halves with outer == 1) spreads
 * over the pool even when it is a handful of big rows, and a small one runs inline. Any dtype of
 * fixed size is a byte copy; strings go to the reference kernel. */
#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"

/* Bytes per work item; a job below PAR_BYTES runs inline (a hand-off costs a few microseconds,
   about what copying 64 KiB takes). */
#define CHUNK ((size_t)64 * 1024)
#define PAR_BYTES ((size_t)256 * 1024)

typedef struct concat_job {
  const kiln__kctx *c;
  size_t row;        /* bytes of one output row (all inputs' rows for one outer index) */
  size_t inner;      /* bytes per unit of the axis */
  int axis;
  char *y;
  size_t total;
} concat_job;

/* Copies output bytes [b, e): walks the rows and pieces that range covers. */
static void concat_range(const concat_job *j, size_t b, size_t e) {
  size_t o = b / j->row, off = b % j->row;
  int k = 0;
  size_t start = 0, n = 0; /* input k's piece is [start, start + n) of the row */
  for (;; k++) {
    n = (size_t)j->c->in[k]->dims[j->axis] * j->inner;
    if (off < start + n) break;
    start += n;
  }
  while (b < e) {
    size_t take = KILN__MIN(start + n - off, e - b);
    memcpy(j->y + b, (const char *)j->c->in[k]->data + o * n + (off - start), take);
    b += take;
    off += take;
    if (b >= e) break;
    /* Next non-empty piece, wrapping to the next row. */
    do {
      start += n;
      if (++k == j->c->n_in) {
        k = 0;
        start = 0;
        off = 0;
        o++;
      }
      n = (size_t)j->c->in[k]->dims[j->axis] * j->inner;
    } while (n == 0);
  }
}

static void concat_chunks(void *arg, size_t c0, size_t c1) {
  const concat_job *j = arg;
  concat_range(j, c0 * CHUNK, KILN__MIN(c1 * CHUNK, j->total));
}

static bool concat_supports(const kiln__node *n, const kiln__graph *g) {
  (void)g;
  return n->n_in >= 1;
}

/* Whether the planner put every input where the output wants it (plan.c): nothing to copy. */
static bool in_place(const kiln__kctx *c, const kiln_tensor *y, int axis, size_t inner) {
  const char *at = y->data;
  for (int k = 0; k < c->n_in; k++) {
    if (c->in[k]->data != at) return false;
    at += (size_t)c->in[k]->dims[axis] * inner;
  }
  return true;
}

static kiln_status concat_execute(kiln__kctx *c, void *state) {
  (void)state;
  kiln_tensor *y = c->out[0];
  const kiln__attr *a = kiln__attr_find(c->node, "axis");
  int axis = 0;
  /* Anything unusual (strings, a missing input, a bad axis) gets the reference kernel and its
     error messages. */
  if (!y || y->dtype == KILN_DTYPE_STRING || !kiln_dtype_size(y->dtype) ||
      (!a && c->node->opset >= 4) || !kiln__norm_axis(a ? a->i : 1, y->rank, &axis))
    return c->node->op->run(c);
  for (int k = 0; k < c->n_in; k++)
    if (!c->in[k] || c->in[k]->dtype != y->dtype || c->in[k]->rank != y->rank)
      return c->node->op->run(c);
  size_t inner = kiln_dtype_size(y->dtype), outer = 1;
  for (int i = axis + 1; i < y->rank; i++) inner *= (size_t)y->dims[i];
  for (int i = 0; i < axis; i++) outer *= (size_t)y->dims[i];
  if (outer == 1 && in_place(c, y, axis, inner)) return KILN_OK;
  concat_job j = {.c = c, .inner = inner, .axis = axis, .y = y->data};
  j.row = (size_t)y->dims[axis] * inner;
  j.total = outer * j.row;
  if (!j.total) return KILN_OK;
  size_t chunks = (j.total + CHUNK - 1) / CHUNK;
  if (j.total < PAR_BYTES || !c->pool) concat_range(&j, 0, j.total);
  else kiln__parallel_for(c->pool, chunks, concat_chunks, &j);
  return KILN_OK;
}

const kiln__cpu_kernel kiln__cpu_copy_kernels[] = {
    {"Concat", concat_supports, NULL, NULL, concat_execute, NULL},
    {0},
};
