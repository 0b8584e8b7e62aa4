/* The "cpu" backend: dispatch over the kernel families in cpu_backend.h. */
#include "kernels/cpu/cpu_backend.h"

const kiln__value *kiln__cpu_input(const kiln__node *n, const kiln__graph *g, int i) {
  return i < n->n_in && n->in[i] >= 0 ? &g->values[n->in[i]] : NULL;
}

bool kiln__cpu_maybe_float(const kiln__value *v) {
  return v && (v->dtype == KILN_DTYPE_FLOAT || v->dtype == KILN_DTYPE_UNDEFINED);
}

bool kiln__cpu_kiln_domain(const kiln__node *n) {
  return n->domain && !strcmp(n->domain, "ai.kiln");
}

bool kiln__cpu_ints(const kiln__node *n, const char *name, size_t cnt, int64_t lo, int64_t def,
                    int64_t *v) {
  const int64_t *a;
  size_t na = kiln__attr_ints(n, name, &a);
  for (size_t i = 0; i < cnt; i++) v[i] = def;
  if (na == 0) return true;
  if (na != cnt) return false;
  for (size_t i = 0; i < cnt; i++) {
    if (a[i] < lo || a[i] > ((int64_t)1 << 24)) return false;
    v[i] = a[i];
  }
  return true;
}

static const kiln__cpu_kernel *const families[] = {
    kiln__cpu_gemm_kernels, kiln__cpu_vec_kernels, kiln__cpu_dwconv_kernels,
    kiln__cpu_pool_kernels, kiln__cpu_fused_kernels, kiln__cpu_quant_kernels,
    kiln__cpu_nbits_kernels, kiln__cpu_copy_kernels};

static const kiln__cpu_kernel *find(const kiln__node *n, const kiln__graph *g) {
  for (size_t f = 0; f < KILN__ARRAY_LEN(families); f++)
    for (const kiln__cpu_kernel *k = families[f]; k->op; k++)
      if (!strcmp(k->op, n->op_type) && (!k->supports || k->supports(n, g))) return k;
  return NULL;
}

/* Per-node state: the kernel chosen and what its prepare() built. */
typedef struct node_state {
  const kiln__cpu_kernel *k;
  void *state;
} node_state;

static bool cpu_supports(const kiln__node *n, const kiln__graph *g) { return find(n, g) != NULL; }

void *kiln__cpu_kernel_state(void *backend_state) {
  return backend_state ? ((node_state *)backend_state)->state : NULL;
}

static kiln_status cpu_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                               kiln_error *err) {
  node_state *ns = kiln__calloc(1, sizeof *ns);
  if (!ns) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing a kernel");
  ns->k = find(n, g);
  kiln_status st = ns->k->prepare ? ns->k->prepare(n, g, &ns->state, err) : KILN_OK;
  if (st != KILN_OK) {
    kiln__free(ns);
    return st;
  }
  *state = ns;
  return KILN_OK;
}

static void cpu_release(void *state) {
  node_state *ns = state;
  if (ns && ns->k->release && ns->state) ns->k->release(ns->state);
  kiln__free(ns);
}

static kiln_status cpu_execute(kiln__kctx *c, void *state) {
  node_state *ns = state;
  return ns->k->execute(c, ns->state);
}

static size_t cpu_scratch(const kiln__kctx *c, void *state) {
  node_state *ns = state;
  if (ns->k->scratch) return ns->k->scratch(c, ns->state);
  return c->node->op->scratch ? c->node->op->scratch(c) : 0;
}

const kiln__backend kiln__backend_cpu = {
    .name = "cpu",
    .supports = cpu_supports,
    .prepare = cpu_prepare,
    .release = cpu_release,
    .execute = cpu_execute,
    .scratch = cpu_scratch,
};
