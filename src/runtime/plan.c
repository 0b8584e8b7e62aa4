/* Planning: shape inference, constant folding and the memory plan for one input signature.
 *
 * Nodes are visited in topological order. A node whose inputs are all known constants (or whose
 * op reads only shapes) is computed here, once, and becomes a constant of the plan: this is what
 * collapses the Shape -> Gather -> Concat -> Reshape chains of exported models. A node whose output
 * shape depends on data not known yet is left dynamic, and so is everything downstream of it.
 * Every other value gets an offset in one arena, assigned greedily by size over value lifetimes,
 * with elementwise ops writing in place over an input that dies at that node. A Concat whose
 * output is its inputs back to back (nothing before the axis but ones) has its inputs planned
 * inside its output, so their producers write there and the Concat copies nothing. */
#include <stdlib.h>

#include "runtime/runtime.h"

typedef struct buffer {
  size_t size;
  int first, last; /* node index range during which it is live (a parent's covers its children) */
  size_t offset;   /* placed: in the arena; a child: within its parent */
  int parent;      /* -1, or the buffer this one is a slice of (a Concat's output) */
} buffer;

static size_t align_up(size_t n) { return (n + KILN__ALIGN - 1) / KILN__ALIGN * KILN__ALIGN; }

void kiln__plan_free(const kiln__graph *g, kiln__plan *p) {
  if (!p) return;
  if (p->folded)
    for (int v = 0; v < g->n_values; v++) kiln__aligned_free(p->folded[v]);
  kiln__free(p->folded);
  kiln__free(p->sig);
  kiln__free(p->vals);
  kiln__free(p->where);
  kiln__free(p->offset);
  kiln__free(p->mode);
  kiln__free(p->scratch_off);
  kiln__free(p->scratch_bytes);
  kiln__free(p);
}

static int cmp_size_desc(const void *a, const void *b) {
  const buffer *x = *(const buffer *const *)a, *y = *(const buffer *const *)b;
  return x->size < y->size ? 1 : x->size > y->size ? -1 : 0;
}

/* Greedy by size: each buffer, largest first, takes the lowest offset that does not collide
   with an already placed buffer whose lifetime overlaps. */
static kiln_status place_buffers(buffer *bufs, int nb, size_t *arena, kiln_error *err) {
  kiln_status st = KILN_OK;
  buffer **order = kiln__calloc((size_t)nb + 1, sizeof *order);
  buffer **placed = kiln__calloc((size_t)nb + 1, sizeof *placed);
  if (!order || !placed) {
    st = kiln__fail(err, KILN_NO_MEMORY, "out of memory planning the arena");
    goto done;
  }
  int nr = 0; /* children are placed with their parent */
  for (int i = 0; i < nb; i++)
    if (bufs[i].parent < 0) order[nr++] = &bufs[i];
  qsort(order, (size_t)nr, sizeof *order, cmp_size_desc);
  int np = 0;
  size_t total = 0;
  for (int i = 0; i < nr; i++) {
    buffer *b = order[i];
    size_t off = 0;
    /* placed[] is kept sorted by offset, so one sweep finds the first gap */
    for (int j = 0; j < np; j++) {
      const buffer *o = placed[j];
      if (o->last < b->first || o->first > b->last) continue;
      if (o->offset >= off + b->size) break;
      off = KILN__MAX(off, o->offset + o->size);
    }
    b->offset = off;
    int pos = np;
    while (pos > 0 && placed[pos - 1]->offset > off) {
      placed[pos] = placed[pos - 1];
      pos--;
    }
    placed[pos] = b;
    np++;
    total = KILN__MAX(total, off + b->size);
  }
  *arena = total;
done:
  kiln__free(order);
  kiln__free(placed);
  return st;
}

static kiln_status fold_node(kiln__plan *p, const kiln__node *n,
                             kiln__kctx *c, kiln_error *err) {
  for (int o = 0; o < n->n_out; o++) {
    int v = n->out[o];
    if (v < 0) continue;
    size_t bytes = kiln_tensor_nbytes(&p->vals[v]);
    p->folded[v] = kiln__aligned_alloc(bytes ? bytes : 1);
    if (!p->folded[v]) return kiln__fail(err, KILN_NO_MEMORY, "out of memory folding constants");
    memset(p->folded[v], 0, bytes);
    p->vals[v].data = p->folded[v];
  }
  void *scratch = NULL;
  if (n->op->scratch) {
    c->scratch_bytes = n->op->scratch(c);
    if (c->scratch_bytes && !(scratch = kiln__aligned_alloc(c->scratch_bytes)))
      return kiln__fail(err, KILN_NO_MEMORY, "out of memory folding constants");
  }
  c->scratch = scratch;
  kiln_status st = n->op->run(c);
  kiln__aligned_free(scratch);
  c->scratch = NULL;
  if (st != KILN_OK) return st;
  for (int o = 0; o < n->n_out; o++)
    if (n->out[o] >= 0) p->where[n->out[o]] = KILN__AT_CONST;
  return KILN_OK;
}

static size_t buffer_offset(const buffer *bufs, int b) {
  size_t off = 0;
  for (; bufs[b].parent >= 0; b = bufs[b].parent) off += bufs[b].offset;
  return off + bufs[b].offset;
}

/* Plans Concat node i's inputs as slices of its output buffer `out` when that is safe: the
   output is the inputs back to back (dims before the axis all 1), each input is an arena value
   of its own buffer read only by this Concat, and every slice starts on an arena alignment
   boundary (kernels may assume aligned outputs). True when it did. */
static bool concat_in_place(const kiln__graph *g, const kiln__plan *p, int i, const int *uses,
                            const int *buf_of, buffer *bufs, int out) {
  const kiln__node *n = &g->nodes[i];
  if (strcmp(n->op_type, "Concat") || n->domain[0] || n->n_out != 1 || n->n_in < 1) return false;
  const kiln_tensor *y = &p->vals[n->out[0]];
  int axis;
  if (y->dtype == KILN_DTYPE_STRING || !kiln__norm_axis(kiln__attr_int(n, "axis", 1), y->rank, &axis))
    return false;
  for (int d = 0; d < axis; d++)
    if (y->dims[d] != 1) return false;
  size_t off = 0;
  for (int k = 0; k < n->n_in; k++) {
    int v = n->in[k];
    if (v < 0 || p->where[v] != KILN__AT_ARENA || buf_of[v] < 0 || uses[v] != 1 ||
        g->values[v].is_output || bufs[buf_of[v]].parent >= 0 || off % KILN__ALIGN)
      return false;
    off += kiln_tensor_nbytes(&p->vals[v]);
  }
  off = 0;
  for (int k = 0; k < n->n_in; k++) {
    buffer *b = &bufs[buf_of[n->in[k]]];
    b->parent = out;
    b->offset = off;
    bufs[out].first = KILN__MIN(bufs[out].first, b->first);
    off += kiln_tensor_nbytes(&p->vals[n->in[k]]);
  }
  return true;
}

kiln_status kiln__plan_build(const kiln_model *m, const kiln_tensor *sig, int n_inputs,
                             kiln__plan **out, kiln_error *err) {
  const kiln__graph *g = m->g;
  int nv = g->n_values, nn = g->n_nodes;
  kiln_status st = KILN_OK;
  buffer *bufs = NULL;
  int *buf_of = NULL, *last_use = NULL, *uses = NULL;
  const kiln_tensor **ins = NULL;
  kiln_tensor **outs = NULL;
  kiln__plan *p = kiln__calloc(1, sizeof *p);
  if (!p) return kiln__fail(err, KILN_NO_MEMORY, "out of memory planning");
  p->n_inputs = n_inputs;
  p->sig = kiln__calloc((size_t)n_inputs + 1, sizeof *p->sig);
  p->vals = kiln__calloc((size_t)nv + 1, sizeof *p->vals);
  p->where = kiln__calloc((size_t)nv + 1, 1);
  p->offset = kiln__calloc((size_t)nv + 1, sizeof *p->offset);
  p->folded = kiln__calloc((size_t)nv + 1, sizeof *p->folded);
  p->mode = kiln__calloc((size_t)nn + 1, 1);
  p->scratch_off = kiln__calloc((size_t)nn + 1, sizeof(size_t));
  p->scratch_bytes = kiln__calloc((size_t)nn + 1, sizeof(size_t));
  bufs = kiln__calloc((size_t)(nv + nn) + 1, sizeof *bufs);
  buf_of = kiln__calloc((size_t)nv + 1, sizeof *buf_of);
  last_use = kiln__calloc((size_t)nv + 1, sizeof *last_use);
  uses = kiln__calloc((size_t)nv + 1, sizeof *uses);
  ins = kiln__calloc(64, sizeof *ins);
  outs = kiln__calloc(64, sizeof *outs);
  if (!p->sig || !p->vals || !p->where || !p->offset || !p->folded || !p->mode ||
      !p->scratch_off || !p->scratch_bytes || !bufs || !buf_of || !last_use || !uses || !ins || !outs) {
    st = kiln__fail(err, KILN_NO_MEMORY, "out of memory planning");
    goto fail;
  }
  for (int i = 0; i < n_inputs; i++) {
    p->sig[i] = sig[i];
    p->sig[i].data = NULL;
  }
  for (int v = 0; v < nv; v++) {
    const kiln__value *val = &g->values[v];
    p->vals[v].rank = -1;
    if (val->is_initializer) {
      p->vals[v] = val->init;
      p->where[v] = KILN__AT_CONST;
    }
    buf_of[v] = -1;
    last_use[v] = -1;
  }
  for (int i = 0; i < n_inputs; i++) {
    p->vals[g->inputs[i]] = p->sig[i];
    p->where[g->inputs[i]] = KILN__AT_INPUT;
  }

  /* Shape inference and folding, node by node. */
  for (int i = 0; i < nn; i++) {
    const kiln__node *n = &g->nodes[i];
    if (n->n_in > 64 || n->n_out > 64) {
      st = kiln__fail(err, KILN_UNSUPPORTED, "node '%s' has more than 64 inputs or outputs",
                      n->name);
      goto fail;
    }
    bool known = true, all_const = true;
    for (int k = 0; k < n->n_in; k++) {
      int v = n->in[k];
      ins[k] = v >= 0 ? &p->vals[v] : NULL;
      if (v < 0) continue;
      if (p->where[v] == KILN__AT_DYNAMIC || kiln__is_container(p->vals[v].dtype)) known = false;
      if (p->where[v] != KILN__AT_CONST) all_const = false;
      last_use[v] = i;
      uses[v]++;
    }
    for (int k = 0; k < n->n_captures; k++) last_use[n->captures[k]] = i, uses[n->captures[k]]++;
    for (int o = 0; o < n->n_out; o++) outs[o] = n->out[o] >= 0 ? &p->vals[n->out[o]] : NULL;
    p->mode[i] = KILN__NODE_DYNAMIC;
    if (!known) continue;
    if (n->op->flags & KILN__OPF_SHAPE_ONLY) all_const = true;
    kiln__kctx c = {.node = n, .n_in = n->n_in, .n_out = n->n_out, .in = ins, .out = outs,
                    .err = err};
    kiln_status ist = n->op->infer(&c);
    if (ist == KILN__NEED_DATA || ist == KILN__DEFER) continue;
    if (ist != KILN_OK) {
      st = ist;
      kiln__err_prefix(err, "node '%s' (%s)", n->name, n->op_type);
      goto fail;
    }
    for (int o = 0; o < n->n_out; o++) {
      if (!outs[o]) continue;
      size_t count;
      if (outs[o]->rank < 0 || outs[o]->rank > KILN_MAX_RANK ||
          !kiln__shape_count(outs[o]->rank, outs[o]->dims, &count) ||
          kiln_dtype_size(outs[o]->dtype) == 0) {
        st = kiln__fail(err, KILN_INTERNAL, "node '%s' (%s): output %d has no valid shape",
                        n->name, n->op_type, o);
        goto fail;
      }
      outs[o]->data = NULL;
    }
    if (all_const && !(n->op->flags & KILN__OPF_NOFOLD)) {
      st = fold_node(p, n, &c, err);
      if (st != KILN_OK) {
        kiln__err_prefix(err, "node '%s' (%s)", n->name, n->op_type);
        goto fail;
      }
      p->mode[i] = KILN__NODE_FOLDED;
      p->folded_nodes++;
      continue;
    }
    p->mode[i] = KILN__NODE_STATIC;
    for (int o = 0; o < n->n_out; o++)
      if (n->out[o] >= 0) p->where[n->out[o]] = KILN__AT_ARENA;
    const kiln__backend *be = m->backends[m->node_backend[i]];
    if (be->scratch) p->scratch_bytes[i] = be->scratch(&c, m->node_state[i]);
    else if (n->op->scratch) p->scratch_bytes[i] = n->op->scratch(&c);
  }
  for (int i = 0; i < g->n_outputs; i++) last_use[g->outputs[i]] = nn;

  /* Buffers: one per arena value (or shared in place), one per node's scratch. */
  int nb = 0;
  for (int i = 0; i < nn; i++) {
    const kiln__node *n = &g->nodes[i];
    if (p->mode[i] != KILN__NODE_STATIC) continue;
    for (int o = 0; o < n->n_out; o++) {
      int v = n->out[o];
      if (v < 0) continue;
      size_t bytes = align_up(kiln_tensor_nbytes(&p->vals[v]));
      p->intermediate_bytes += bytes;
      int last = last_use[v] < 0 ? i : last_use[v];
      int src = n->n_in > 0 ? n->in[0] : -1;
      if (o == 0 && (n->op->flags & KILN__OPF_INPLACE) && src >= 0 && buf_of[src] >= 0 &&
          last_use[src] == i && !g->values[src].is_output &&
          kiln_tensor_nbytes(&p->vals[src]) == kiln_tensor_nbytes(&p->vals[v])) {
        buffer *b = &bufs[buf_of[src]];
        b->last = KILN__MAX(b->last, last);
        buf_of[v] = buf_of[src];
        continue;
      }
      bufs[nb] = (buffer){.size = bytes, .first = i, .last = last, .parent = -1};
      buf_of[v] = nb++;
      if (concat_in_place(g, p, i, uses, buf_of, bufs, nb - 1)) p->concat_in_place++;
    }
    if (p->scratch_bytes[i]) {
      p->intermediate_bytes += align_up(p->scratch_bytes[i]);
      bufs[nb] = (buffer){.size = align_up(p->scratch_bytes[i]), .first = i, .last = i, .parent = -1};
      p->scratch_off[i] = (size_t)nb++; /* buffer index until placed */
    } else {
      p->scratch_off[i] = SIZE_MAX;
    }
  }
  st = place_buffers(bufs, nb, &p->arena_bytes, err);
  if (st != KILN_OK) goto fail;
  for (int v = 0; v < nv; v++)
    if (buf_of[v] >= 0) p->offset[v] = buffer_offset(bufs, buf_of[v]);
  for (int i = 0; i < nn; i++)
    if (p->mode[i] == KILN__NODE_STATIC && p->scratch_off[i] != SIZE_MAX)
      p->scratch_off[i] = bufs[p->scratch_off[i]].offset;
  kiln__free(bufs);
  kiln__free(buf_of);
  kiln__free(last_use);
  kiln__free(uses);
  kiln__free(ins);
  kiln__free(outs);
  *out = p;
  return KILN_OK;
fail:
  kiln__free(bufs);
  kiln__free(buf_of);
  kiln__free(last_use);
  kiln__free(uses);
  kiln__free(ins);
  kiln__free(outs);
  kiln__plan_free(g, p);
  return st;
}
