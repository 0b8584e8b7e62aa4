/* Sessions: the execution context of a model. A session owns the arena, the value table and the
   thread pool; planning happens once per input-shape signature, and a warm run only walks the
   nodes. */
#include <stdlib.h>
#include <unistd.h>

#include "runtime/runtime.h"
#include "sched/sched.h" /* kiln__now_ns */

/* ---- the dynamic arena ------------------------------------------------------------------- */

typedef struct kiln__dynchunk {
  struct kiln__dynchunk *next;
  size_t cap, used;
  uint8_t *data;
} kiln__dynchunk;

void *kiln__dyn_alloc(kiln__dynarena *a, size_t bytes) {
  bytes = (bytes + KILN__ALIGN - 1) / KILN__ALIGN * KILN__ALIGN;
  if (bytes == 0) bytes = KILN__ALIGN;
  void *p = NULL;
  if (a->base && a->cap - a->used >= bytes) {
    p = a->base + a->used;
    a->used += bytes;
  } else {
    kiln__dynchunk *c = a->overflow;
    if (!c || c->cap - c->used < bytes) {
      size_t cap = KILN__MAX(bytes, (size_t)1 << 20);
      c = kiln__malloc(sizeof *c);
      if (!c) return NULL;
      c->data = kiln__aligned_alloc(cap);
      if (!c->data) {
        kiln__free(c);
        return NULL;
      }
      c->cap = cap;
      c->used = 0;
      c->next = a->overflow;
      a->overflow = c;
    }
    p = c->data + c->used;
    c->used += bytes;
    a->used += bytes;
    a->grew = true;
  }
  a->peak = KILN__MAX(a->peak, a->used);
  return p;
}

static void free_overflow(kiln__dynarena *a) {
  while (a->overflow) {
    kiln__dynchunk *c = a->overflow;
    a->overflow = c->next;
    kiln__aligned_free(c->data);
    kiln__free(c);
  }
}

void kiln__dyn_reset(kiln__dynarena *a) {
  if (a->grew) {
    /* Replace the chunks with one block that fits the whole of the last run. */
    free_overflow(a);
    kiln__aligned_free(a->base);
    a->base = kiln__aligned_alloc(a->peak);
    a->cap = a->base ? a->peak : 0;
    a->grew = false;
  }
  a->used = 0;
}

void kiln__dyn_free(kiln__dynarena *a) {
  free_overflow(a);
  kiln__aligned_free(a->base);
  memset(a, 0, sizeof *a);
}

/* ---- running nodes ------------------------------------------------------------------------ */

kiln_status kiln__out_alloc(kiln__kctx *c, int i, kiln_dtype dtype, int rank,
                            const int64_t *dims) {
  kiln_tensor *t = c->out[i];
  if (!t) return KILN_OK;
  size_t count, bytes;
  if (rank < 0 || rank > KILN_MAX_RANK || !kiln__shape_count(rank, dims, &count) ||
      !kiln__mul_ok(count, kiln_dtype_size(dtype), &bytes))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "output %d has an invalid shape", i);
  kiln__set_shape(t, dtype, rank, dims);
  t->data = kiln__dyn_alloc(c->frame->dyn, bytes);
  if (!t->data) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory for output %d", i);
  memset(t->data, 0, bytes);
  return KILN_OK;
}

void *kiln__dyn_scratch(kiln__kctx *c, size_t bytes) {
  return kiln__dyn_alloc(c->frame->dyn, bytes);
}

kiln_status kiln__value_copy(kiln__kctx *c, const kiln_tensor *src, kiln_tensor *dst) {
  *dst = *src;
  if (kiln__is_container(src->dtype)) return KILN_OK; /* elements are already run-stable */
  size_t bytes = kiln_tensor_nbytes(src);
  dst->data = kiln__dyn_alloc(c->frame->dyn, bytes);
  if (!dst->data) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory copying a value");
  if (bytes) memcpy(dst->data, src->data, bytes);
  return KILN_OK;
}

kiln_status kiln__run_node_dynamic(kiln__frame *f, const kiln__node *n, const kiln_tensor **in,
                                   kiln_tensor **out, const kiln__backend *be, void *state) {
  for (int k = 0; k < n->n_in; k++)
    if (in[k] && (in[k]->rank < 0 || (!in[k]->data && kiln_tensor_count(in[k]) > 0 &&
                                      !kiln__is_container(in[k]->dtype))))
      return kiln__fail(f->err, KILN_INTERNAL, "node '%s' (%s): input %d has no value", n->name,
                        n->op_type, k);
  for (int o = 0; o < n->n_out; o++)
    if (out[o]) {
      memset(out[o], 0, sizeof *out[o]);
      out[o]->rank = -1;
    }
  kiln__kctx c = {.node = n, .n_in = n->n_in, .n_out = n->n_out, .in = in, .out = out,
                  .pool = f->pool, .frame = f, .err = f->err};
  kiln_status st = n->op->infer(&c);
  if (st == KILN_OK) {
    for (int o = 0; o < n->n_out && st == KILN_OK; o++)
      if (out[o]) st = kiln__out_alloc(&c, o, out[o]->dtype, out[o]->rank, out[o]->dims);
  } else if (st == KILN__DEFER) {
    st = KILN_OK;
  } else if (st == KILN__NEED_DATA) {
    st = kiln__fail(f->err, KILN_INTERNAL, "shape inference needs data it does not have");
  }
  if (st == KILN_OK && ((be && be->scratch) || n->op->scratch)) {
    c.scratch_bytes = be && be->scratch ? be->scratch(&c, state) : n->op->scratch(&c);
    if (c.scratch_bytes && !(c.scratch = kiln__dyn_alloc(f->dyn, c.scratch_bytes)))
      st = kiln__fail(f->err, KILN_NO_MEMORY, "out of memory for scratch");
  }
  if (st == KILN_OK) st = be ? be->execute(&c, state) : n->op->run(&c);
  if (st != KILN_OK) {
    kiln__err_prefix(f->err, "node '%s' (%s)", n->name, n->op_type);
    return st;
  }
  for (int o = 0; o < n->n_out; o++)
    if (out[o] && out[o]->rank < 0)
      return kiln__fail(f->err, KILN_INTERNAL, "node '%s' (%s) left output %d unset", n->name,
                        n->op_type, o);
  return KILN_OK;
}

kiln_status kiln__subgraph_run(kiln__kctx *c, const kiln__graph *g, const kiln_tensor *inputs,
                               int n_inputs, kiln_tensor *outputs, int n_outputs) {
  kiln__frame *pf = c->frame;
  if (n_inputs != g->n_inputs || n_outputs != g->n_outputs)
    return kiln__fail(c->err, KILN_BAD_MODEL, "subgraph '%s' takes %d inputs and %d outputs",
                      g->name ? g->name : "", g->n_inputs, g->n_outputs);
  size_t slots = 0;
  for (int i = 0; i < g->n_nodes; i++) slots += (size_t)(g->nodes[i].n_in + g->nodes[i].n_out);
  kiln_tensor *vals = kiln__dyn_alloc(pf->dyn, (size_t)g->n_values * sizeof *vals);
  void **ptrs = kiln__dyn_alloc(pf->dyn, (slots + 1) * sizeof *ptrs);
  if (!vals || !ptrs) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory in a subgraph");
  for (int v = 0; v < g->n_values; v++) {
    const kiln__value *val = &g->values[v];
    memset(&vals[v], 0, sizeof vals[v]);
    vals[v].rank = -1;
    if (val->is_initializer) vals[v] = val->init;
    if (val->is_outer) {
      /* the enclosing frame runs the graph whose node holds this subgraph */
      const kiln_tensor *t = &pf->vals[val->outer_index];
      if (pf->g != g->parent || t->rank < 0)
        return kiln__fail(c->err, KILN_INTERNAL, "subgraph reads '%s', which has no value",
                          val->name);
      vals[v] = *t;
    }
  }
  for (int i = 0; i < n_inputs; i++) vals[g->inputs[i]] = inputs[i];
  kiln__frame f = {.g = g, .vals = vals, .parent = pf, .dyn = pf->dyn, .pool = pf->pool,
                   .err = c->err};
  size_t at = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    const kiln_tensor **in = (const kiln_tensor **)(ptrs + at);
    kiln_tensor **out = (kiln_tensor **)(ptrs + at + n->n_in);
    at += (size_t)(n->n_in + n->n_out);
    for (int k = 0; k < n->n_in; k++) in[k] = n->in[k] >= 0 ? &vals[n->in[k]] : NULL;
    for (int o = 0; o < n->n_out; o++) out[o] = n->out[o] >= 0 ? &vals[n->out[o]] : NULL;
    kiln_status st = kiln__run_node_dynamic(&f, n, in, out, NULL, NULL);
    if (st != KILN_OK) return st;
  }
  for (int i = 0; i < n_outputs; i++) outputs[i] = vals[g->outputs[i]];
  return KILN_OK;
}

/* ---- sessions ----------------------------------------------------------------------------- */

static int default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

kiln_status kiln_session_create(kiln_model *m, kiln_session **out, kiln_error *err) {
  *out = NULL;
  const kiln__graph *g = m->g;
  kiln_session *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory creating a session");
  s->m = m;
  size_t slots_in = 0, slots_out = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    slots_in += (size_t)g->nodes[i].n_in;
    slots_out += (size_t)g->nodes[i].n_out;
  }
  s->vals = kiln__calloc((size_t)g->n_values + 1, sizeof *s->vals);
  s->in_ptrs = kiln__calloc(slots_in + 1, sizeof *s->in_ptrs);
  s->out_ptrs = kiln__calloc(slots_out + 1, sizeof *s->out_ptrs);
  s->in_start = kiln__calloc((size_t)g->n_nodes + 1, sizeof *s->in_start);
  s->out_start = kiln__calloc((size_t)g->n_nodes + 1, sizeof *s->out_start);
  s->sig = kiln__calloc((size_t)g->n_inputs + 1, sizeof *s->sig);
  if (!s->vals || !s->in_ptrs || !s->out_ptrs || !s->in_start || !s->out_start || !s->sig) {
    kiln_session_free(s);
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory creating a session");
  }
  size_t ai = 0, ao = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    s->in_start[i] = ai;
    s->out_start[i] = ao;
    for (int k = 0; k < n->n_in; k++) s->in_ptrs[ai++] = n->in[k] >= 0 ? &s->vals[n->in[k]] : NULL;
    for (int o = 0; o < n->n_out; o++)
      s->out_ptrs[ao++] = n->out[o] >= 0 ? &s->vals[n->out[o]] : NULL;
  }
  int threads = m->opts.intra_threads > 0 ? m->opts.intra_threads : default_threads();
  kiln_status st = kiln__pool_create(threads, &s->pool, err);
  if (st != KILN_OK) {
    kiln_session_free(s);
    return st;
  }
  *out = s;
  return KILN_OK;
}

void kiln_session_free(kiln_session *s) {
  if (!s) return;
  kiln__pool_free(s->pool);
  kiln__dyn_free(&s->dyn);
  kiln__aligned_free(s->arena);
  kiln__free(s->vals);
  kiln__free(s->in_ptrs);
  kiln__free(s->out_ptrs);
  kiln__free(s->in_start);
  kiln__free(s->out_start);
  kiln__free(s->sig);
  kiln__free(s);
}

static bool same_sig(const kiln_tensor *a, const kiln_tensor *b, int n) {
  for (int i = 0; i < n; i++) {
    if (a[i].dtype != b[i].dtype || a[i].rank != b[i].rank) return false;
    for (int d = 0; d < a[i].rank; d++)
      if (a[i].dims[d] != b[i].dims[d]) return false;
  }
  return true;
}

/* Matches the caller's inputs to graph inputs and checks them against the model's declaration;
   fills s->sig and s->vals for inputs. */
static kiln_status bind_inputs(kiln_session *s, const char *const *names,
                               const kiln_tensor *inputs, size_t n_inputs, kiln_error *err) {
  const kiln__graph *g = s->m->g;
  for (size_t k = 0; k < n_inputs; k++) {
    bool known = false;
    for (int i = 0; names[k] && i < g->n_inputs && !known; i++)
      known = !strcmp(names[k], g->values[g->inputs[i]].name);
    if (!known)
      return kiln__fail(err, KILN_INVALID_ARGUMENT, "the model has no input named '%s'",
                        names[k] ? names[k] : "(null)");
  }
  for (int i = 0; i < g->n_inputs; i++) {
    const kiln__value *v = &g->values[g->inputs[i]];
    const kiln_tensor *t = NULL;
    for (size_t k = 0; k < n_inputs && !t; k++)
      if (!strcmp(names[k], v->name)) t = &inputs[k];
    if (!t) return kiln__fail(err, KILN_INVALID_ARGUMENT, "input '%s' is not given", v->name);
    if (v->kind == KILN__VALUE_SEQUENCE || v->kind == KILN__VALUE_OPTIONAL) {
      kiln_dtype want = v->kind == KILN__VALUE_SEQUENCE ? KILN_DTYPE_SEQUENCE : KILN_DTYPE_OPTIONAL;
      if (t->dtype != want || t->rank != (want == KILN_DTYPE_SEQUENCE ? 1 : 0) ||
          (want == KILN_DTYPE_SEQUENCE && t->dims[0] < 0))
        return kiln__fail(err, KILN_INVALID_ARGUMENT, "input '%s' must be a %s", v->name,
                          kiln_dtype_name(want));
      s->sig[i] = *t;
      s->sig[i].data = NULL;
      s->vals[g->inputs[i]] = *t;
      continue;
    }
    if (t->rank < 0 || t->rank > KILN_MAX_RANK)
      return kiln__fail(err, KILN_INVALID_ARGUMENT, "input '%s': rank %d is not valid", v->name,
                        t->rank);
    if (v->dtype != KILN_DTYPE_UNDEFINED && t->dtype != v->dtype)
      return kiln__fail(err, KILN_INVALID_ARGUMENT, "input '%s' is %s, the model expects %s",
                        v->name, kiln_dtype_name(t->dtype), kiln_dtype_name(v->dtype));
    if (kiln_dtype_size(t->dtype) == 0)
      return kiln__fail(err, KILN_UNSUPPORTED, "input '%s': dtype %s is not supported", v->name,
                        kiln_dtype_name(t->dtype));
    if (v->rank >= 0 && t->rank != v->rank)
      return kiln__fail(err, KILN_INVALID_ARGUMENT, "input '%s' has rank %d, the model expects %d",
                        v->name, t->rank, v->rank);
    size_t count;
    if (!kiln__shape_count(t->rank, t->dims, &count) ||
        !kiln__mul_ok(count, kiln_dtype_size(t->dtype), &count))
      return kiln__fail(err, KILN_INVALID_ARGUMENT, "input '%s' has an invalid shape", v->name);
    for (int d = 0; v->rank >= 0 && d < t->rank; d++)
      if (v->dims[d] >= 0 && t->dims[d] != v->dims[d])
        return kiln__fail(err, KILN_INVALID_ARGUMENT,
                          "input '%s': dimension %d is %lld, the model expects %lld", v->name, d,
                          (long long)t->dims[d], (long long)v->dims[d]);
    s->sig[i] = *t;
    s->sig[i].data = NULL;
    s->vals[g->inputs[i]] = *t;
  }
  return KILN_OK;
}

static kiln_status find_plan(kiln_session *s, kiln_error *err) {
  kiln_model *m = s->m;
  int n = m->g->n_inputs;
  if (s->plan && same_sig(s->plan->sig, s->sig, n)) {
    s->stats.plan_hits++;
    s->stats.pool_hits++; /* the arena was sized for this plan already */
    return KILN_OK;
  }
  kiln_status st = KILN_OK;
  pthread_mutex_lock(&m->plan_mu);
  const kiln__plan *found = NULL;
  for (size_t i = 0; i < m->n_plans && !found; i++)
    if (same_sig(m->plans[i]->sig, s->sig, n)) found = m->plans[i];
  if (found) {
    s->stats.plan_hits++;
  } else {
    kiln__plan *p = NULL;
    s->stats.plan_misses++;
    if (m->n_plans == m->cap_plans) {
      size_t cap = m->cap_plans ? m->cap_plans * 2 : 4;
      kiln__plan **np = kiln__realloc(m->plans, cap * sizeof *np);
      if (!np) st = kiln__fail(err, KILN_NO_MEMORY, "out of memory caching a plan");
      else {
        m->plans = np;
        m->cap_plans = cap;
      }
    }
    if (st == KILN_OK) st = kiln__plan_build(m, s->sig, n, &p, err);
    if (st == KILN_OK) {
      m->plans[m->n_plans++] = p;
      found = p;
    }
  }
  pthread_mutex_unlock(&m->plan_mu);
  if (st != KILN_OK) return st;
  s->plan = found;
  if (s->arena_cap < found->arena_bytes) {
    kiln__aligned_free(s->arena);
    s->arena_cap = 0;
    s->arena = kiln__aligned_alloc(found->arena_bytes);
    if (!s->arena) return kiln__fail(err, KILN_NO_MEMORY, "cannot allocate a %zu-byte arena",
                                     found->arena_bytes);
    s->arena_cap = found->arena_bytes;
    s->stats.pool_misses++;
  } else {
    s->stats.pool_hits++;
  }
  return KILN_OK;
}

kiln_status kiln_session_plan(kiln_session *s, const char *const *names,
                              const kiln_tensor *inputs, size_t n_inputs, kiln_error *err) {
  kiln_status st = bind_inputs(s, names, inputs, n_inputs, err);
  if (st == KILN_OK) st = find_plan(s, err);
  return st;
}

kiln_run_opts kiln_run_opts_default(void) {
  kiln_run_opts o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  return o;
}

kiln_status kiln_session_run(kiln_session *s, const char *const *names, const kiln_tensor *inputs,
                             size_t n_inputs, kiln_error *err) {
  return kiln_session_run_ex(s, names, inputs, n_inputs, NULL, err);
}

/* One node of the main graph that is not folded: straight into the arena when its shapes were
   planned, else shaped now. */
static inline kiln_status run_node(kiln_session *s, kiln__frame *f, int i, const kiln_tensor **in,
                                   kiln_tensor **out, kiln_error *err) {
  const kiln_model *m = s->m;
  const kiln__plan *p = s->plan;
  const kiln__node *n = &m->g->nodes[i];
  const kiln__backend *be = m->backends[m->node_backend[i]];
  if (p->mode[i] == KILN__NODE_DYNAMIC)
    return kiln__run_node_dynamic(f, n, in, out, be, m->node_state[i]);
  kiln__kctx c = {.node = n, .n_in = n->n_in, .n_out = n->n_out, .in = in, .out = out,
                  .pool = s->pool, .frame = f, .err = err};
  if (p->scratch_bytes[i]) {
    c.scratch = s->arena + p->scratch_off[i];
    c.scratch_bytes = p->scratch_bytes[i];
  }
  kiln_status st = be->execute(&c, m->node_state[i]);
  if (st != KILN_OK) kiln__err_prefix(err, "node '%s' (%s)", n->name, n->op_type);
  return st;
}

kiln_status kiln_session_run_ex(kiln_session *s, const char *const *names,
                                const kiln_tensor *inputs, size_t n_inputs,
                                const kiln_run_opts *opts, kiln_error *err) {
  kiln_run_opts o = kiln_run_opts_default();
  if (opts) {
    /* older callers' structs end at `user` */
    if (opts->struct_size < offsetof(kiln_run_opts, user) + sizeof(void *) ||
        opts->struct_size > sizeof o)
      return kiln__fail(err, KILN_INVALID_ARGUMENT, "kiln_run_opts.struct_size is wrong");
    memcpy(&o, opts, opts->struct_size);
  }
  const kiln_model *m = s->m;
  const kiln__graph *g = m->g;
  s->ran = false;
  kiln_status st = bind_inputs(s, names, inputs, n_inputs, err);
  if (st == KILN_OK) st = find_plan(s, err);
  if (st != KILN_OK) return st;
  const kiln__plan *p = s->plan;
  for (int v = 0; v < g->n_values; v++) {
    switch (p->where[v]) {
      case KILN__AT_CONST: s->vals[v] = p->vals[v]; break;
      case KILN__AT_INPUT: break; /* bound above */
      case KILN__AT_ARENA:
        s->vals[v] = p->vals[v];
        s->vals[v].data = s->arena + p->offset[v];
        break;
      default:
        memset(&s->vals[v], 0, sizeof s->vals[v]);
        s->vals[v].rank = -1;
    }
  }
  kiln_profile *prof = o.profile;
  if (prof) {
    bool recording;
    st = kiln__profile_run_begin(prof, m, kiln__now_ns(), &recording, err);
    if (st != KILN_OK) return st;
    if (!recording) prof = NULL;
  }
  kiln__dyn_reset(&s->dyn);
  kiln__frame f = {.g = g, .vals = s->vals, .dyn = &s->dyn, .pool = s->pool, .err = err};
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    if (o.interrupt && (st = o.interrupt(o.user)) != KILN_OK)
      return kiln__fail(err, st, "run stopped before node '%s' (%s): %s", n->name, n->op_type,
                        kiln_status_str(st));
    if (p->mode[i] == KILN__NODE_FOLDED) continue;
    const kiln_tensor **in = s->in_ptrs + s->in_start[i];
    kiln_tensor **out = s->out_ptrs + s->out_start[i];
    if (prof) { /* the only cost of profiling when it is off: this branch */
      int64_t t0 = kiln__now_ns();
      st = run_node(s, &f, i, in, out, err);
      if (st == KILN_OK) kiln__profile_node(prof, (size_t)i, n, in, out, t0, kiln__now_ns());
    } else {
      st = run_node(s, &f, i, in, out, err);
    }
    if (st != KILN_OK) return st;
  }
  if (prof) kiln__profile_run_end(prof, kiln__now_ns());
  for (int i = 0; i < g->n_outputs; i++)
    if (s->vals[g->outputs[i]].rank < 0)
      return kiln__fail(err, KILN_INTERNAL, "output '%s' was not computed",
                        g->values[g->outputs[i]].name);
  s->stats.dynamic_bytes = s->dyn.peak;
  s->ran = true;
  return KILN_OK;
}

kiln_status kiln_session_output(const kiln_session *s, size_t i, kiln_tensor *out) {
  const kiln__graph *g = s->m->g;
  if (!s->ran || i >= (size_t)g->n_outputs) return KILN_INVALID_ARGUMENT;
  *out = s->vals[g->outputs[i]];
  return KILN_OK;
}

void kiln_session_stats_get(const kiln_session *s, kiln_session_stats *st) {
  *st = s->stats;
  if (s->plan) {
    st->arena_bytes = s->plan->arena_bytes;
    st->intermediate_bytes = s->plan->intermediate_bytes;
    st->folded_nodes = s->plan->folded_nodes;
    st->concat_in_place = s->plan->concat_in_place;
  }
}
