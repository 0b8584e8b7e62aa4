/* Loading a model: import, resolve every op, give every node to a backend. */
#include <stdio.h>
#include <stdlib.h>

#include "onnx/import.h"
#include "passes/passes.h"
#include "runtime/runtime.h"

kiln_model_opts kiln_model_opts_default(void) {
  kiln_model_opts o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.opt_level = -1;
  return o;
}

/* Resolves ops in a graph and its subgraphs; an unknown op fails the load naming the node. */
static kiln_status resolve_ops(kiln__graph *g, kiln_error *err) {
  for (int i = 0; i < g->n_nodes; i++) {
    kiln__node *n = &g->nodes[i];
    n->op = kiln__op_find(n->domain, n->op_type);
    if (!n->op)
      return kiln__fail(err, KILN_UNSUPPORTED,
                        "node '%s': operator '%s' (domain '%s', opset %lld) is not supported",
                        n->name, n->op_type, n->domain[0] ? n->domain : "ai.onnx",
                        (long long)n->opset);
    if (n->n_in < n->op->min_inputs ||
        (n->op->max_inputs >= 0 && n->n_in > n->op->max_inputs))
      return kiln__fail(err, KILN_BAD_MODEL, "node '%s' (%s) has %d inputs", n->name,
                        n->op_type, n->n_in);
    for (int a = 0; a < n->n_attrs; a++) {
      kiln__attr *at = &n->attrs[a];
      if (at->type == KILN__ATTR_GRAPH && at->g) {
        kiln_status st = resolve_ops(at->g, err);
        if (st != KILN_OK) return st;
      }
    }
  }
  return KILN_OK;
}

static kiln_status partition(kiln_model *m, kiln_error *err) {
  const kiln__graph *g = m->g;
  m->node_backend = kiln__calloc((size_t)g->n_nodes + 1, 1);
  m->node_state = kiln__calloc((size_t)g->n_nodes + 1, sizeof(void *));
  if (!m->node_backend || !m->node_state)
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory partitioning the graph");
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    size_t b = 0;
    while (b < m->n_backends && !m->backends[b]->supports(n, g)) b++;
    if (b == m->n_backends)
      return kiln__fail(err, KILN_UNSUPPORTED, "node '%s' (%s): no enabled backend runs it",
                        n->name, n->op_type);
    m->node_backend[i] = (uint8_t)b;
    m->backend_nodes[b]++;
    if (m->backends[b]->prepare) {
      kiln_status st = m->backends[b]->prepare(n, g, &m->node_state[i], err);
      if (st != KILN_OK) {
        kiln__err_prefix(err, "node '%s' (%s)", n->name, n->op_type);
        return st;
      }
    }
  }
  return KILN_OK;
}

static kiln_status choose_backends(kiln_model *m, kiln_error *err) {
  if (!m->opts.backends) {
    for (size_t i = 0; i < kiln__backend_count() && i < KILN__MAX_BACKENDS; i++)
      m->backends[m->n_backends++] = kiln__backend_at(i);
  } else {
    for (const char *const *b = m->opts.backends; *b; b++) {
      const kiln__backend *be = kiln__backend_find(*b);
      if (!be) return kiln__fail(err, KILN_INVALID_ARGUMENT, "unknown backend '%s'", *b);
      if (m->n_backends == KILN__MAX_BACKENDS)
        return kiln__fail(err, KILN_INVALID_ARGUMENT, "too many backends");
      m->backends[m->n_backends++] = be;
    }
  }
  /* The reference backend is always the last resort. */
  bool has_ref = false;
  for (size_t i = 0; i < m->n_backends; i++) has_ref |= m->backends[i] == &kiln__backend_ref;
  if (!has_ref && m->n_backends < KILN__MAX_BACKENDS) m->backends[m->n_backends++] = &kiln__backend_ref;
  return KILN_OK;
}

kiln_status kiln_model_load_memory(const void *data, size_t size, const char *base_dir,
                                   const kiln_model_opts *opts, kiln_model **out,
                                   kiln_error *err) {
  *out = NULL;
  kiln_model *m = kiln__calloc(1, sizeof *m);
  if (!m) return kiln__fail(err, KILN_NO_MEMORY, "out of memory loading the model");
  m->opts = kiln_model_opts_default();
  if (opts) {
    if (opts->struct_size < offsetof(kiln_model_opts, backends) + sizeof(void *) ||
        opts->struct_size > sizeof *opts) {
      kiln__free(m);
      return kiln__fail(err, KILN_INVALID_ARGUMENT, "kiln_model_opts.struct_size is wrong");
    }
    memcpy(&m->opts, opts, opts->struct_size);
  }
  pthread_mutex_init(&m->plan_mu, NULL);
  kiln_status st = kiln__onnx_import(data, size, base_dir, &m->g, err);
  if (st == KILN_OK)
    st = kiln__optimize(m->g, m->opts.opt_level < 0 ? KILN__OPT_MAX : m->opts.opt_level, err);
  if (st == KILN_OK) st = resolve_ops(m->g, err);
  if (st == KILN_OK) st = choose_backends(m, err);
  if (st == KILN_OK) st = partition(m, err);
  if (st != KILN_OK) {
    kiln_model_free(m);
    return st;
  }
  for (int v = 0; v < m->g->n_values; v++)
    if (m->g->values[v].is_initializer) {
      m->param_count += kiln_tensor_count(&m->g->values[v].init);
      m->param_bytes += kiln_tensor_nbytes(&m->g->values[v].init);
    }
  *out = m;
  return KILN_OK;
}

kiln_status kiln_model_load(const char *path, const kiln_model_opts *opts, kiln_model **out,
                            kiln_error *err) {
  *out = NULL;
  uint8_t *buf;
  size_t size;
  kiln_status st = kiln__read_file(path, &buf, &size, err);
  if (st != KILN_OK) return st;
  char *dir = kiln__path_dir(path);
  if (!dir) st = kiln__fail(err, KILN_NO_MEMORY, "out of memory");
  if (st == KILN_OK) {
    st = kiln_model_load_memory(buf, size, dir, opts, out, err);
    if (st != KILN_OK) kiln__err_prefix(err, "%s", path);
  }
  kiln__free(dir);
  kiln__free(buf);
  return st;
}

void kiln_model_free(kiln_model *m) {
  if (!m) return;
  if (m->g && m->node_state)
    for (int i = 0; i < m->g->n_nodes; i++)
      if (m->node_state[i]) m->backends[m->node_backend[i]]->release(m->node_state[i]);
  for (size_t i = 0; i < m->n_plans; i++) kiln__plan_free(m->g, m->plans[i]);
  kiln__free(m->plans);
  kiln__free(m->node_backend);
  kiln__free(m->node_state);
  kiln__graph_free(m->g);
  pthread_mutex_destroy(&m->plan_mu);
  kiln__free(m);
}

size_t kiln_model_input_count(const kiln_model *m) { return (size_t)m->g->n_inputs; }
size_t kiln_model_output_count(const kiln_model *m) { return (size_t)m->g->n_outputs; }

static void fill_info(const kiln__value *v, kiln_io_info *info) {
  memset(info, 0, sizeof *info);
  info->name = v->name;
  info->dtype = v->kind == KILN__VALUE_SEQUENCE   ? KILN_DTYPE_SEQUENCE
                : v->kind == KILN__VALUE_OPTIONAL ? KILN_DTYPE_OPTIONAL
                                                  : v->dtype;
  info->rank = v->rank;
  for (int d = 0; d < v->rank && d < KILN_MAX_RANK; d++) {
    info->dims[d] = v->dims[d];
    info->dim_names[d] = v->dim_params[d];
  }
}

kiln_status kiln_model_input_info(const kiln_model *m, size_t i, kiln_io_info *info) {
  if (i >= (size_t)m->g->n_inputs) return KILN_INVALID_ARGUMENT;
  fill_info(&m->g->values[m->g->inputs[i]], info);
  return KILN_OK;
}

kiln_status kiln_model_output_info(const kiln_model *m, size_t i, kiln_io_info *info) {
  if (i >= (size_t)m->g->n_outputs) return KILN_INVALID_ARGUMENT;
  fill_info(&m->g->values[m->g->outputs[i]], info);
  return KILN_OK;
}

void kiln_model_stats_get(const kiln_model *m, kiln_model_stats *st) {
  memset(st, 0, sizeof *st);
  st->ir_version = m->g->ir_version;
  st->opset = m->g->opset;
  st->node_count = (size_t)m->g->n_nodes;
  st->param_count = m->param_count;
  st->param_bytes = m->param_bytes;
  st->backend_count = m->n_backends;
}

size_t kiln_model_op_histogram(const kiln_model *m, const char **op_types, size_t *counts,
                               size_t cap) {
  size_t n = 0;
  for (int i = 0; i < m->g->n_nodes; i++) {
    const char *t = m->g->nodes[i].op_type;
    bool seen = false;
    for (int j = 0; j < i && !seen; j++) seen = !strcmp(m->g->nodes[j].op_type, t);
    if (seen) continue;
    size_t c = 0;
    for (int j = i; j < m->g->n_nodes; j++) c += !strcmp(m->g->nodes[j].op_type, t);
    /* insertion by count, descending */
    size_t pos = KILN__MIN(n, cap);
    while (pos > 0 && counts[pos - 1] < c) {
      if (pos < cap) {
        counts[pos] = counts[pos - 1];
        op_types[pos] = op_types[pos - 1];
      }
      pos--;
    }
    if (pos < cap) {
      counts[pos] = c;
      op_types[pos] = t;
    }
    n++;
  }
  return n;
}

void kiln_model_backend_nodes(const kiln_model *m, size_t i, const char **name, size_t *nodes) {
  *name = i < m->n_backends ? m->backends[i]->name : NULL;
  *nodes = i < m->n_backends ? m->backend_nodes[i] : 0;
}
