/* Graph-editing helpers shared by the quantization formats (q_*.c): fresh values, initializers
 * and nodes, and the per-value caches of converted weights. */
#include <stdio.h>

#include "quant/quant.h"

kiln_status kiln__qoom(kiln__qctx *q) {
  return kiln__fail(q->err, KILN_NO_MEMORY, "out of memory quantizing the graph");
}

/* A value with a fresh name derived from `hint`; -1 when out of memory. */
int kiln__qvalue(kiln__qctx *q, const char *hint) {
  char name[256];
  do snprintf(name, sizeof name, "%.200s/kiln_q%u", hint, q->seq++);
  while (kiln__graph_find(q->g, name) >= 0);
  int v = kiln__graph_value(q->g, name);
  if (v >= 0) q->g->values[v].kind = KILN__VALUE_TENSOR;
  return v;
}

/* An initializer that takes `t`'s data (released on failure); -1 when out of memory. */
int kiln__qinit(kiln__qctx *q, const char *hint, kiln_tensor *t) {
  int v = kiln__qvalue(q, hint);
  if (v < 0) {
    kiln_tensor_release(t);
    return -1;
  }
  kiln__value *val = &q->g->values[v];
  val->is_initializer = true;
  val->init = *t;
  val->dtype = t->dtype;
  val->rank = t->rank;
  memcpy(val->dims, t->dims, sizeof val->dims);
  memset(t, 0, sizeof *t);
  return v;
}

/* Sets node n to op `op` of the default domain with the given inputs and outputs and no
   attributes (the old contents are freed). */
kiln_status kiln__qnode_set(kiln__qctx *q, kiln__node *n, const char *name, const char *op,
                            const int *in, int n_in, const int *out, int n_out) {
  char *nm = kiln__strdup(name), *ot = kiln__strdup(op), *dom = kiln__strdup("");
  int *ni = kiln__malloc((size_t)n_in * sizeof *ni), *no = kiln__malloc((size_t)n_out * sizeof *no);
  if (!nm || !ot || !dom || !ni || !no) {
    kiln__free(nm), kiln__free(ot), kiln__free(dom), kiln__free(ni), kiln__free(no);
    return kiln__qoom(q);
  }
  for (int a = 0; a < n->n_attrs; a++) kiln__attr_clear(&n->attrs[a]);
  kiln__free(n->attrs);
  kiln__free(n->name), kiln__free(n->op_type), kiln__free(n->domain);
  kiln__free(n->in), kiln__free(n->out);
  n->attrs = NULL;
  n->n_attrs = 0;
  n->name = nm, n->op_type = ot, n->domain = dom;
  memcpy(ni, in, (size_t)n_in * sizeof *ni);
  memcpy(no, out, (size_t)n_out * sizeof *no);
  n->in = ni, n->n_in = n_in, n->out = no, n->n_out = n_out;
  n->opset = q->g->opset;
  return KILN_OK;
}

/* Appends a node; its index, or -1 (error set) when out of memory. Node pointers taken before
   the call are invalidated. */
int kiln__qnode_add(kiln__qctx *q, const char *name, const char *op, const int *in, int n_in,
                    const int *out, int n_out) {
  kiln__node *n = kiln__graph_add_node(q->g);
  if (!n) {
    kiln__qoom(q);
    return -1;
  }
  if (kiln__qnode_set(q, n, name, op, in, n_in, out, n_out) != KILN_OK) {
    q->g->n_nodes--; /* the slot is empty again */
    return -1;
  }
  return (int)(n - q->g->nodes);
}

kiln_status kiln__qattr_int(kiln__qctx *q, int node, const char *name, int64_t v) {
  kiln__node *n = &q->g->nodes[node];
  kiln__attr *a = kiln__realloc(n->attrs, (size_t)(n->n_attrs + 1) * sizeof *a);
  if (!a) return kiln__qoom(q);
  n->attrs = a;
  memset(&a[n->n_attrs], 0, sizeof *a);
  if (!(a[n->n_attrs].name = kiln__strdup(name))) return kiln__qoom(q);
  a[n->n_attrs].type = KILN__ATTR_INT;
  a[n->n_attrs].i = v;
  n->n_attrs++;
  return KILN_OK;
}

kiln_status kiln__qattr_ints(kiln__qctx *q, int node, const char *name, const int64_t *v,
                             size_t count) {
  kiln_status st = kiln__qattr_int(q, node, name, 0);
  if (st != KILN_OK) return st;
  kiln__node *n = &q->g->nodes[node];
  kiln__attr *a = &n->attrs[n->n_attrs - 1];
  if (!(a->ints = kiln__malloc((count ? count : 1) * sizeof *v))) return kiln__qoom(q);
  a->type = KILN__ATTR_INTS;
  a->n = count;
  if (count) memcpy(a->ints, v, count * sizeof *v);
  return KILN_OK;
}

/* A Cast of `in` to `to`, writing `out`. */
kiln_status kiln__qcast(kiln__qctx *q, const char *name, int in, int out, kiln_dtype to) {
  int k = kiln__qnode_add(q, name, "Cast", &in, 1, &out, 1);
  return k < 0 ? KILN_NO_MEMORY : kiln__qattr_int(q, k, "to", to);
}

/* The float32 initializer in value v that may be rewritten: constant data, not something the
   caller feeds or reads, not captured by a subgraph. */
const kiln_tensor *kiln__qweight_f32(const kiln__qctx *q, int v) {
  if (v < 0 || v >= q->n_orig) return NULL;
  const kiln__value *val = &q->g->values[v];
  if (!val->is_initializer || val->is_input || val->is_output || val->is_outer) return NULL;
  return val->init.dtype == KILN_DTYPE_FLOAT && val->init.data ? &val->init : NULL;
}

bool kiln__qis_op(const kiln__node *n, const char *op) {
  return !n->domain[0] && !strcmp(n->op_type, op);
}

kiln_status kiln__qcache(kiln__qctx *q, int tag, int **out) {
  if (tag < 0 || tag >= KILN__QTAG_COUNT)
    return kiln__fail(q->err, KILN_INTERNAL, "quantize: cache tag %d out of range", tag);
  if (!q->cache[tag]) {
    int *c = kiln__malloc(((size_t)q->n_orig + 1) * sizeof *c);
    if (!c) return kiln__qoom(q);
    for (int v = 0; v < q->n_orig; v++) c[v] = -1;
    q->cache[tag] = c;
  }
  *out = q->cache[tag];
  return KILN_OK;
}

void kiln__qbase(const kiln__qctx *q, int i, char *buf, size_t cap) {
  snprintf(buf, cap, "%.200s", kiln__quant_node_name(q->g, &q->g->nodes[i]));
}
