/* Graph-editing helpers shared by the passes. */
#include <stdio.h>

#include "passes/pass.h"

void kiln__pass_note(kiln__pass_ctx *ctx, const char *fmt, ...) {
  if (!ctx->log || ctx->log_entry < 0) return;
  kiln__pass_rec *r = &ctx->log->recs[ctx->log_entry];
  r->matches++;
  enum { CAP = 2048 };
  if (r->where_len >= CAP) return;
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  size_t add = strlen(buf) + 2;
  if (!r->where) {
    r->where = kiln__calloc(CAP + 8, 1);
    if (!r->where) return;
    r->where_cap = CAP + 8;
  }
  if (r->where_len + add >= CAP) {
    strcpy(r->where + r->where_len, r->where_len ? ", ..." : "...");
    r->where_len = CAP; /* full: later notes only count */
    return;
  }
  if (r->where_len) {
    strcpy(r->where + r->where_len, ", ");
    r->where_len += 2;
  }
  strcpy(r->where + r->where_len, buf);
  r->where_len += strlen(buf);
}

void kiln__pass_kill(kiln__pass_ctx *ctx, int i) {
  if (ctx->dead[i]) return;
  const kiln__node *n = &ctx->g->nodes[i];
  for (int k = 0; k < n->n_in; k++)
    if (n->in[k] >= 0) ctx->uses[n->in[k]]--;
  for (int k = 0; k < n->n_captures; k++) ctx->uses[n->captures[k]]--;
  ctx->dead[i] = true;
  ctx->n_dead++;
}

void kiln__pass_replace_uses(kiln__pass_ctx *ctx, int from, int to) {
  kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    kiln__node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] == from) {
        n->in[k] = to;
        ctx->uses[from]--;
        ctx->uses[to]++;
      }
  }
}

bool kiln__pass_value_private(const kiln__pass_ctx *ctx, int v) {
  const kiln__value *val = &ctx->g->values[v];
  return !val->is_input && !val->is_output && !val->is_outer && !ctx->captured[v];
}

int kiln__pass_sole_user(const kiln__pass_ctx *ctx, int v, int *slot) {
  if (ctx->uses[v] != 1 || !kiln__pass_value_private(ctx, v)) return -1;
  const kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    const kiln__node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] == v) {
        if (slot) *slot = k;
        return i;
      }
  }
  return -1;
}

int kiln__pass_add_init(kiln__pass_ctx *ctx, const char *hint, kiln_tensor *t) {
  kiln__graph *g = ctx->g;
  char name[200];
  int v;
  /* a fresh name: the graph may already use any name the exporter chose */
  do snprintf(name, sizeof name, "%.150s/kiln_folded_%u", hint, ctx->name_seq++);
  while (kiln__graph_find(g, name) >= 0);
  if ((v = kiln__graph_value(g, name)) < 0) {
    kiln_tensor_release(t);
    return -1;
  }
  bool *cap = kiln__realloc(ctx->captured, (size_t)g->n_values * sizeof *cap);
  int *uses = kiln__realloc(ctx->uses, (size_t)g->n_values * sizeof *uses);
  if (cap) ctx->captured = cap;
  if (uses) ctx->uses = uses;
  if (!cap || !uses) {
    kiln_tensor_release(t);
    return -1;
  }
  ctx->captured[v] = false;
  ctx->uses[v] = 0;
  kiln__value *val = &g->values[v];
  val->is_initializer = true;
  val->kind = KILN__VALUE_TENSOR;
  val->init = *t;
  val->dtype = t->dtype;
  val->rank = t->rank;
  memcpy(val->dims, t->dims, sizeof val->dims);
  memset(t, 0, sizeof *t);
  return v;
}

const kiln_tensor *kiln__pass_const_f32(const kiln__pass_ctx *ctx, int v) {
  if (v < 0) return NULL;
  const kiln__value *val = &ctx->g->values[v];
  return val->is_initializer && val->init.dtype == KILN_DTYPE_FLOAT && val->init.data
             ? &val->init
             : NULL;
}

const kiln_tensor *kiln__pass_const_init(const kiln__pass_ctx *ctx, int v) {
  if (v < 0) return NULL;
  const kiln__value *val = &ctx->g->values[v];
  return val->is_initializer && !val->is_input && val->init.data ? &val->init : NULL;
}

bool kiln__pass_bias_fits(const kiln_tensor *bias, int64_t n, int out_rank) {
  if (!bias || bias->dtype != KILN_DTYPE_FLOAT || bias->rank < 1 ||
      bias->dims[bias->rank - 1] != n)
    return false;
  if (bias->rank == 1) return true;
  if (out_rank < bias->rank) return false;
  for (int d = 0; d < bias->rank - 1; d++)
    if (bias->dims[d] != 1) return false;
  return true;
}

kiln_status kiln__pass_bias_add(kiln__pass_ctx *ctx, int v, int64_t n, int *add, int *bias) {
  *add = *bias = -1;
  int slot, i = kiln__pass_sole_user(ctx, v, &slot);
  if (i < 0 || !kiln__pass_is(&ctx->g->nodes[i], "Add") || ctx->g->nodes[i].n_in != 2)
    return KILN_OK;
  int other = ctx->g->nodes[i].in[1 - slot], out_rank = -1;
  const kiln_tensor *bt = other != v ? kiln__pass_const_init(ctx, other) : NULL;
  if (bt && bt->rank > 1) { /* v's rank, from shape inference (run once per pass) */
    kiln_status st = kiln__pass_shapes(ctx);
    if (st != KILN_OK) return st;
    out_rank = kiln__pass_rank(ctx, v);
  }
  if (kiln__pass_bias_fits(bt, n, out_rank)) *add = i, *bias = other;
  return KILN_OK;
}

bool kiln__pass_const_scalar(const kiln__pass_ctx *ctx, int v, double *out) {
  const kiln_tensor *t = kiln__pass_const_f32(ctx, v);
  if (!t || kiln_tensor_count(t) != 1) return false;
  *out = *(const float *)t->data;
  return true;
}

bool kiln__pass_has_subgraph(const kiln__node *n) {
  for (int a = 0; a < n->n_attrs; a++)
    if (n->attrs[a].type == KILN__ATTR_GRAPH || n->attrs[a].type == KILN__ATTR_GRAPHS) return true;
  return false;
}

kiln_status kiln__pass_set_op(kiln__pass_ctx *ctx, kiln__node *n, const char *domain,
                              const char *op_type) {
  char *d = kiln__strdup(domain), *t = kiln__strdup(op_type);
  if (!d || !t) {
    kiln__free(d);
    kiln__free(t);
    return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory rewriting the graph");
  }
  kiln__free(n->domain);
  kiln__free(n->op_type);
  n->domain = d;
  n->op_type = t;
  n->opset = 1;
  return KILN_OK;
}

kiln_status kiln__pass_set_inputs(kiln__pass_ctx *ctx, kiln__node *n, const int *in, int n_in) {
  int *ni = kiln__malloc((size_t)(n_in ? n_in : 1) * sizeof *ni);
  if (!ni) return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory rewriting the graph");
  for (int k = 0; k < n->n_in; k++)
    if (n->in[k] >= 0) ctx->uses[n->in[k]]--;
  for (int k = 0; k < n_in; k++) {
    ni[k] = in[k];
    if (in[k] >= 0) ctx->uses[in[k]]++;
  }
  kiln__free(n->in);
  n->in = ni;
  n->n_in = n_in;
  return KILN_OK;
}

void kiln__pass_clear_attrs(kiln__node *n) {
  for (int a = 0; a < n->n_attrs; a++) kiln__attr_clear(&n->attrs[a]);
  kiln__free(n->attrs);
  n->attrs = NULL;
  n->n_attrs = 0;
}

static kiln__attr *add_attr(kiln__pass_ctx *ctx, kiln__node *n, const char *name) {
  kiln__attr *a = kiln__realloc(n->attrs, (size_t)(n->n_attrs + 1) * sizeof *a);
  if (!a) return NULL;
  n->attrs = a;
  kiln__attr *at = &a[n->n_attrs];
  memset(at, 0, sizeof *at);
  if (!(at->name = kiln__strdup(name))) return NULL;
  n->n_attrs++;
  return at;
}

kiln_status kiln__pass_add_attr_float(kiln__pass_ctx *ctx, kiln__node *n, const char *name,
                                      float f) {
  kiln__attr *a = add_attr(ctx, n, name);
  if (!a) return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory rewriting the graph");
  a->type = KILN__ATTR_FLOAT;
  a->f = f;
  return KILN_OK;
}

kiln_status kiln__pass_add_attr_int(kiln__pass_ctx *ctx, kiln__node *n, const char *name,
                                    int64_t i) {
  kiln__attr *a = add_attr(ctx, n, name);
  if (!a) return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory rewriting the graph");
  a->type = KILN__ATTR_INT;
  a->i = i;
  return KILN_OK;
}

void kiln__pass_node_clear(kiln__node *n) {
  kiln__free(n->name);
  kiln__free(n->op_type);
  kiln__free(n->domain);
  kiln__free(n->in);
  kiln__free(n->out);
  kiln__free(n->captures);
  kiln__pass_clear_attrs(n);
  memset(n, 0, sizeof *n);
}

kiln_status kiln__pass_add_attr_str(kiln__pass_ctx *ctx, kiln__node *n, const char *name,
                                    const char *str) {
  kiln__attr *a = add_attr(ctx, n, name);
  if (!a || !(a->s = kiln__strdup(str)))
    return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory rewriting the graph");
  a->type = KILN__ATTR_STRING;
  a->s_len = strlen(str);
  return KILN_OK;
}

kiln_status kiln__pass_add_attr_floats(kiln__pass_ctx *ctx, kiln__node *n, const char *name,
                                       const float *f, size_t count) {
  kiln__attr *a = add_attr(ctx, n, name);
  if (!a || !(a->floats = kiln__malloc((count ? count : 1) * sizeof *f)))
    return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory rewriting the graph");
  a->type = KILN__ATTR_FLOATS;
  a->n = count;
  if (count) memcpy(a->floats, f, count * sizeof *f);
  return KILN_OK;
}

kiln_status kiln__pass_add_attr_ints(kiln__pass_ctx *ctx, kiln__node *n, const char *name,
                                     const int64_t *v, size_t count) {
  kiln__attr *a = add_attr(ctx, n, name);
  if (!a || !(a->ints = kiln__malloc((count ? count : 1) * sizeof *v)))
    return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory rewriting the graph");
  a->type = KILN__ATTR_INTS;
  a->n = count;
  if (count) memcpy(a->ints, v, count * sizeof *v);
  return KILN_OK;
}

/* Grows the per-value arrays of the context to the graph's value count. */
static bool grow_values(kiln__pass_ctx *ctx) {
  size_t n = (size_t)ctx->g->n_values + 1;
  bool *cap = kiln__realloc(ctx->captured, n * sizeof *cap);
  if (cap) ctx->captured = cap;
  int *uses = kiln__realloc(ctx->uses, n * sizeof *uses);
  if (uses) ctx->uses = uses;
  bool ok = cap && uses;
  for (int p = 0; p < 2 && ok; p++) {
    if (!ctx->shape[p]) continue;
    kiln_tensor *s = kiln__realloc(ctx->shape[p], n * sizeof *s);
    if (s) ctx->shape[p] = s;
    ok = s != NULL;
  }
  return ok;
}

int kiln__pass_new_value(kiln__pass_ctx *ctx, const char *hint) {
  kiln__graph *g = ctx->g;
  char name[200];
  int v;
  do snprintf(name, sizeof name, "%.150s/kiln_%u", hint, ctx->name_seq++);
  while (kiln__graph_find(g, name) >= 0);
  if ((v = kiln__graph_value(g, name)) < 0 || !grow_values(ctx)) return -1;
  ctx->captured[v] = false;
  ctx->uses[v] = 0;
  for (int p = 0; p < 2; p++)
    if (ctx->shape[p]) {
      memset(&ctx->shape[p][v], 0, sizeof ctx->shape[p][v]);
      ctx->shape[p][v].rank = -1;
    }
  if (ctx->shape[0] && v == ctx->shape_n) ctx->shape_n = v + 1;
  return v;
}

int kiln__pass_add_node(kiln__pass_ctx *ctx, const char *name, const char *domain,
                        const char *op_type, const int *in, int n_in, const int *out, int n_out) {
  kiln__graph *g = ctx->g;
  bool *dead = kiln__realloc(ctx->dead, ((size_t)g->n_nodes + 2) * sizeof *dead);
  if (!dead) return -1;
  ctx->dead = dead;
  kiln__node *n = kiln__graph_add_node(g);
  if (!n) return -1;
  int idx = (int)(n - g->nodes);
  ctx->dead[idx] = false;
  n->name = kiln__strdup(name);
  n->op_type = kiln__strdup(op_type);
  n->domain = kiln__strdup(domain);
  n->opset = domain[0] ? 1 : g->opset;
  n->in = kiln__malloc((size_t)(n_in ? n_in : 1) * sizeof *n->in);
  n->out = kiln__malloc((size_t)(n_out ? n_out : 1) * sizeof *n->out);
  if (!n->name || !n->op_type || !n->domain || !n->in || !n->out) {
    kiln__pass_node_clear(n);
    ctx->dead[idx] = true; /* an empty slot the manager drops */
    ctx->n_dead++;
    return -1;
  }
  n->n_in = n_in;
  n->n_out = n_out;
  for (int k = 0; k < n_in; k++)
    if ((n->in[k] = in[k]) >= 0) ctx->uses[in[k]]++;
  for (int k = 0; k < n_out; k++) n->out[k] = out[k];
  return idx;
}

bool kiln__pass_ints_all(const kiln__node *n, const char *name, size_t cnt, int64_t want) {
  const int64_t *v;
  size_t k = kiln__attr_ints(n, name, &v);
  if (!k) return true;
  if (k != cnt) return false;
  for (size_t i = 0; i < k; i++)
    if (v[i] != want) return false;
  return true;
}

bool kiln__pass_is(const kiln__node *n, const char *op) {
  return !n->domain[0] && !strcmp(n->op_type, op) && n->n_out == 1;
}
