/* Graph construction, topological sort and validation. */
#include "ir/graph.h"

#include <stdlib.h>

kiln__graph *kiln__graph_new(void) { return kiln__calloc(1, sizeof(kiln__graph)); }

void kiln__attr_clear(kiln__attr *a) {
  kiln__free(a->name);
  kiln__free(a->s);
  kiln__free(a->ints);
  kiln__free(a->floats);
  if (a->strings)
    for (size_t i = 0; i < a->n; i++) kiln__free(a->strings[i]);
  kiln__free(a->strings);
  if (a->t) {
    size_t nt = a->type == KILN__ATTR_TENSORS ? a->n : 1;
    for (size_t i = 0; i < nt; i++) kiln_tensor_release(&a->t[i]);
    kiln__free(a->t);
  }
  kiln__graph_free(a->g);
  memset(a, 0, sizeof *a);
}

void kiln__graph_free(kiln__graph *g) {
  if (!g) return;
  for (int i = 0; i < g->n_nodes; i++) {
    kiln__node *n = &g->nodes[i];
    kiln__free(n->name);
    kiln__free(n->op_type);
    kiln__free(n->domain);
    kiln__free(n->in);
    kiln__free(n->out);
    kiln__free(n->captures);
    for (int a = 0; a < n->n_attrs; a++) kiln__attr_clear(&n->attrs[a]);
    kiln__free(n->attrs);
  }
  for (int i = 0; i < g->n_values; i++) {
    kiln__value *v = &g->values[i];
    kiln__free(v->name);
    for (int d = 0; d < KILN_MAX_RANK; d++) kiln__free(v->dim_params[d]);
    kiln_tensor_release(&v->init);
  }
  kiln__free(g->values);
  kiln__free(g->nodes);
  kiln__free(g->inputs);
  kiln__free(g->outputs);
  kiln__free(g->name);
  kiln__free(g);
}

int kiln__graph_find(const kiln__graph *g, const char *name) {
  /* Linear: graphs are built once; the importer keeps lookups off any hot path. */
  for (int i = g->n_values - 1; i >= 0; i--)
    if (!strcmp(g->values[i].name, name)) return i;
  return -1;
}

int kiln__graph_value(kiln__graph *g, const char *name) {
  int i = kiln__graph_find(g, name);
  if (i >= 0) return i;
  if (g->n_values == g->cap_values) {
    int cap = g->cap_values ? g->cap_values * 2 : 16;
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
  return g->n_values++;
}

kiln__node *kiln__graph_add_node(kiln__graph *g) {
  if (g->n_nodes == g->cap_nodes) {
    int cap = g->cap_nodes ? g->cap_nodes * 2 : 16;
    kiln__node *n = kiln__realloc(g->nodes, (size_t)cap * sizeof *n);
    if (!n) return NULL;
    g->nodes = n;
    g->cap_nodes = cap;
  }
  kiln__node *n = &g->nodes[g->n_nodes++];
  memset(n, 0, sizeof *n);
  return n;
}

/* Records, for every node with subgraphs, which values of `g` those subgraphs capture, and points
   each captured subgraph value at its index in `g`. */
static kiln_status link_captures(kiln__graph *g, kiln_error *err) {
  for (int i = 0; i < g->n_nodes; i++) {
    kiln__node *n = &g->nodes[i];
    for (int a = 0; a < n->n_attrs; a++) {
      kiln__graph *sub = n->attrs[a].type == KILN__ATTR_GRAPH ? n->attrs[a].g : NULL;
      for (int v = 0; sub && v < sub->n_values; v++) {
        kiln__value *sv = &sub->values[v];
        if (!sv->is_outer) continue;
        int idx = kiln__graph_find(g, sv->name);
        if (idx < 0)
          return kiln__fail(err, KILN_BAD_MODEL, "node '%s' (%s): subgraph reads '%s', which is "
                            "not defined", n->name, n->op_type, sv->name);
        sv->outer_index = idx;
        bool have = false;
        for (int k = 0; k < n->n_captures && !have; k++) have = n->captures[k] == idx;
        if (have) continue;
        int *caps = kiln__realloc(n->captures, (size_t)(n->n_captures + 1) * sizeof *caps);
        if (!caps) return kiln__fail(err, KILN_NO_MEMORY, "out of memory linking subgraphs");
        n->captures = caps;
        n->captures[n->n_captures++] = idx;
      }
    }
  }
  return KILN_OK;
}

/* A node's dependencies: its inputs, then what its subgraphs capture. */
static int dep_count(const kiln__node *n) { return n->n_in + n->n_captures; }
static int dep_at(const kiln__node *n, int k) {
  return k < n->n_in ? n->in[k] : n->captures[k - n->n_in];
}

kiln_status kiln__graph_finalize(kiln__graph *g, kiln_error *err) {
  kiln_status st = link_captures(g, err);
  if (st != KILN_OK) return st;
  int nn = g->n_nodes, nv = g->n_values;
  int *indeg = kiln__calloc((size_t)nn + 1, sizeof(int));
  int *order = kiln__calloc((size_t)nn + 1, sizeof(int));
  /* users: CSR of value -> consuming nodes */
  int *ucount = kiln__calloc((size_t)nv + 1, sizeof(int));
  int *ustart = kiln__calloc((size_t)nv + 2, sizeof(int));
  int total = 0;
  for (int i = 0; i < nn; i++) total += dep_count(&g->nodes[i]);
  int *users = kiln__calloc((size_t)total + 1, sizeof(int));
  kiln__node *sorted = kiln__calloc((size_t)nn + 1, sizeof(kiln__node));
  if (!indeg || !order || !ucount || !ustart || !users || !sorted) {
    st = kiln__fail(err, KILN_NO_MEMORY, "out of memory sorting the graph");
    goto done;
  }
  for (int v = 0; v < nv; v++)
    if (!g->values[v].is_input && !g->values[v].is_initializer && !g->values[v].is_outer)
      g->values[v].producer = -1;
  for (int i = 0; i < nn; i++) {
    const kiln__node *n = &g->nodes[i];
    for (int o = 0; o < n->n_out; o++) {
      int v = n->out[o];
      if (v < 0) continue;
      kiln__value *val = &g->values[v];
      if (val->producer >= 0 || val->is_input || val->is_initializer || val->is_outer) {
        st = kiln__fail(err, KILN_BAD_MODEL, "value '%s' is defined more than once (node '%s')",
                        val->name, n->name);
        goto done;
      }
      val->producer = i;
    }
  }
  for (int i = 0; i < nn; i++) {
    const kiln__node *n = &g->nodes[i];
    for (int k = 0; k < dep_count(n); k++) {
      int v = dep_at(n, k);
      if (v < 0) continue;
      const kiln__value *val = &g->values[v];
      if (val->producer < 0 && !val->is_input && !val->is_initializer && !val->is_outer) {
        st = kiln__fail(err, KILN_BAD_MODEL, "node '%s' (%s): %s '%s', which nothing defines",
                        n->name, n->op_type, k < n->n_in ? "reads" : "a subgraph reads",
                        val->name);
        goto done;
      }
      if (val->producer >= 0) {
        indeg[i]++;
        ucount[v]++;
      }
    }
  }
  for (int v = 0; v < nv; v++) ustart[v + 1] = ustart[v] + ucount[v];
  memset(ucount, 0, (size_t)nv * sizeof(int));
  for (int i = 0; i < nn; i++) {
    const kiln__node *n = &g->nodes[i];
    for (int k = 0; k < dep_count(n); k++) {
      int v = dep_at(n, k);
      if (v >= 0 && g->values[v].producer >= 0) users[ustart[v] + ucount[v]++] = i;
    }
  }
  /* Kahn's algorithm, keeping the file's order among ready nodes. */
  int head = 0, tail = 0;
  for (int i = 0; i < nn; i++)
    if (indeg[i] == 0) order[tail++] = i;
  while (head < tail) {
    const kiln__node *n = &g->nodes[order[head++]];
    for (int o = 0; o < n->n_out; o++) {
      int v = n->out[o];
      if (v < 0) continue;
      for (int u = ustart[v]; u < ustart[v + 1]; u++)
        if (--indeg[users[u]] == 0) order[tail++] = users[u];
    }
  }
  if (tail != nn) {
    st = kiln__fail(err, KILN_BAD_MODEL, "the graph has a cycle (%d of %d nodes are ordered)",
                    tail, nn);
    goto done;
  }
  for (int i = 0; i < nn; i++) sorted[i] = g->nodes[order[i]];
  if (nn) memcpy(g->nodes, sorted, (size_t)nn * sizeof *sorted);
  for (int i = 0; i < nn; i++)
    for (int o = 0; o < g->nodes[i].n_out; o++)
      if (g->nodes[i].out[o] >= 0) g->values[g->nodes[i].out[o]].producer = i;
  for (int i = 0; i < g->n_outputs; i++) {
    kiln__value *val = &g->values[g->outputs[i]];
    if (val->producer < 0 && !val->is_input && !val->is_initializer && !val->is_outer) {
      st = kiln__fail(err, KILN_BAD_MODEL, "graph output '%s' is never defined", val->name);
      goto done;
    }
    val->is_output = true;
  }
done:
  kiln__free(indeg);
  kiln__free(order);
  kiln__free(ucount);
  kiln__free(ustart);
  kiln__free(users);
  kiln__free(sorted);
  return st;
}

const kiln__attr *kiln__attr_find(const kiln__node *n, const char *name) {
  for (int i = 0; i < n->n_attrs; i++)
    if (!strcmp(n->attrs[i].name, name)) return &n->attrs[i];
  return NULL;
}

int64_t kiln__attr_int(const kiln__node *n, const char *name, int64_t def) {
  const kiln__attr *a = kiln__attr_find(n, name);
  return a && a->type == KILN__ATTR_INT ? a->i : def;
}

float kiln__attr_float(const kiln__node *n, const char *name, float def) {
  const kiln__attr *a = kiln__attr_find(n, name);
  if (!a) return def;
  if (a->type == KILN__ATTR_FLOAT) return a->f;
  if (a->type == KILN__ATTR_INT) return (float)a->i;
  return def;
}

const char *kiln__attr_str(const kiln__node *n, const char *name, const char *def) {
  const kiln__attr *a = kiln__attr_find(n, name);
  return a && a->type == KILN__ATTR_STRING ? a->s : def;
}

size_t kiln__attr_ints(const kiln__node *n, const char *name, const int64_t **v) {
  const kiln__attr *a = kiln__attr_find(n, name);
  if (!a || a->type != KILN__ATTR_INTS) {
    *v = NULL;
    return 0;
  }
  *v = a->ints;
  return a->n;
}

size_t kiln__attr_floats(const kiln__node *n, const char *name, const float **v) {
  const kiln__attr *a = kiln__attr_find(n, name);
  if (!a || a->type != KILN__ATTR_FLOATS) {
    *v = NULL;
    return 0;
  }
  *v = a->floats;
  return a->n;
}
