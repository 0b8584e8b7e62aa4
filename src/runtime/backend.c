/* The backend list and the reference backend. */
#include "runtime/backend.h"

#include "kernels/cpu/cpu_backend.h"

static bool ref_supports(const kiln__node *n, const kiln__graph *g) {
  (void)g;
  return n->op && n->op->run;
}

static kiln_status ref_execute(kiln__kctx *c, void *state) {
  (void)state;
  return c->node->op->run(c);
}

const kiln__backend kiln__backend_ref = {
    .name = "ref",
    .supports = ref_supports,
    .execute = ref_execute,
};

/* Best first: an optimized backend goes before "ref" when one is compiled in. */
static const kiln__backend *const backends[] = {&kiln__backend_cpu, &kiln__backend_ref};

size_t kiln__backend_count(void) { return KILN__ARRAY_LEN(backends); }

const kiln__backend *kiln__backend_at(size_t i) {
  return i < KILN__ARRAY_LEN(backends) ? backends[i] : NULL;
}

const kiln__backend *kiln__backend_find(const char *name) {
  for (size_t i = 0; i < KILN__ARRAY_LEN(backends); i++)
    if (!strcmp(backends[i]->name, name)) return backends[i];
  return NULL;
}
