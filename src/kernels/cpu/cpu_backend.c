/* The "cpu" backend: dispatch over the kernel families in cpu_backend.h. */
#include "kernels/cpu/cpu_backend.h"

static const kiln__cpu_kernel *const families[] = {
    kiln__cpu_gemm_kernels, kiln__cpu_vec_kernels, kiln__cpu_dwconv_kernels,
    kiln__cpu_pool_kernels, kiln__cpu_fused_kernels};

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
