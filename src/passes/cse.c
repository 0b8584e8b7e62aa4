/* Common-subexpression elimination: two nodes with the same op, the same inputs in the same
   order and the same attributes compute the same values, so the later one's consumers read the
   earlier one's outputs. Random ops (NOFOLD) and nodes with subgraphs are never merged. */
#include "ir/op.h"
#include "passes/pass.h"

static bool attr_equal(const kiln__attr *a, const kiln__attr *b) {
  if (a->type != b->type) return false;
  switch (a->type) {
    case KILN__ATTR_INT: return a->i == b->i;
    case KILN__ATTR_FLOAT: return !memcmp(&a->f, &b->f, sizeof a->f);
    case KILN__ATTR_STRING: return a->s_len == b->s_len && !memcmp(a->s, b->s, a->s_len);
    case KILN__ATTR_INTS: return a->n == b->n && (!a->n || !memcmp(a->ints, b->ints, a->n * sizeof *a->ints));
    case KILN__ATTR_FLOATS:
      return a->n == b->n && (!a->n || !memcmp(a->floats, b->floats, a->n * sizeof *a->floats));
    case KILN__ATTR_STRINGS:
      if (a->n != b->n) return false;
      for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->strings[i], b->strings[i])) return false;
      return true;
    case KILN__ATTR_TENSOR: {
      const kiln_tensor *x = a->t, *y = b->t;
      if (!x || !y || x->dtype != y->dtype || x->rank != y->rank || x->dtype == KILN_DTYPE_STRING ||
          memcmp(x->dims, y->dims, (size_t)x->rank * sizeof x->dims[0]))
        return false;
      size_t nb = kiln_tensor_nbytes(x);
      return !nb || (x->data && y->data && !memcmp(x->data, y->data, nb));
    }
    default: return false; /* graphs, sparse tensors, type protos: never equal */
  }
}

static bool nodes_equal(const kiln__node *a, const kiln__node *b) {
  if (strcmp(a->op_type, b->op_type) || strcmp(a->domain, b->domain) || a->opset != b->opset ||
      a->n_in != b->n_in || a->n_out != b->n_out || a->n_attrs != b->n_attrs)
    return false;
  for (int k = 0; k < a->n_in; k++)
    if (a->in[k] != b->in[k]) return false;
  for (int o = 0; o < a->n_out; o++)
    if ((a->out[o] < 0) != (b->out[o] < 0)) return false;
  for (int i = 0; i < a->n_attrs; i++) {
    const kiln__attr *other = kiln__attr_find(b, a->attrs[i].name);
    if (!other || !attr_equal(&a->attrs[i], other)) return false;
  }
  return true;
}

static uint64_t node_hash(const kiln__node *n) {
  uint64_t h = 1469598103934665603ull;
  for (const char *p = n->op_type; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
  for (int k = 0; k < n->n_in; k++) h = (h ^ (uint64_t)(n->in[k] + 2)) * 1099511628211ull;
  return h ^ (uint64_t)n->n_attrs;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  size_t cap = 16;
  while (cap < 2 * (size_t)g->n_nodes) cap *= 2;
  int *table = kiln__malloc(cap * sizeof *table);
  if (!table) return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory in CSE");
  for (size_t s = 0; s < cap; s++) table[s] = -1;
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    const kiln__op *op = kiln__op_find(n->domain, n->op_type);
    if (!op || (op->flags & KILN__OPF_NOFOLD) || kiln__pass_has_subgraph(n) || n->n_out == 0)
      continue;
    /* topological order: inputs were already rewritten to their representatives */
    size_t s = (size_t)node_hash(n) & (cap - 1);
    int rep = -1;
    for (; table[s] >= 0; s = (s + 1) & (cap - 1))
      if (nodes_equal(&g->nodes[table[s]], n)) {
        rep = table[s];
        break;
      }
    if (rep < 0) {
      table[s] = i;
      continue;
    }
    bool private = true;
    for (int o = 0; o < n->n_out; o++)
      if (n->out[o] >= 0) private &= kiln__pass_value_private(ctx, n->out[o]);
    if (!private) continue;
    const kiln__node *r = &g->nodes[rep];
    for (int o = 0; o < n->n_out; o++)
      if (n->out[o] >= 0) kiln__pass_replace_uses(ctx, n->out[o], r->out[o]);
    kiln__pass_note(ctx, "%s = %s (%s)", n->name, r->name, n->op_type);
    kiln__pass_kill(ctx, i);
    *changed = true;
  }
  kiln__free(table);
  return KILN_OK;
}

const kiln__pass kiln__pass_cse = {"cse", 1, run};
