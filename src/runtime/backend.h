/* Backends and dispatch.
 *
 * A backend says which nodes it can run and runs them. At load, the partitioner gives every node
 * to the first backend in the model's preference list that supports it; "ref" (the portable
 * reference kernels, the correctness oracle) supports every op Kiln knows, so it is the fallback.
 * A backend may prepare per-node state once at load (packed weights, chosen microkernels). */
#ifndef KILN_RUNTIME_BACKEND_H
#define KILN_RUNTIME_BACKEND_H

#include "ir/op.h"

typedef struct kiln__backend {
  const char *name;
  bool (*supports)(const kiln__node *n, const kiln__graph *g);
  /* Optional: builds per-node state; `state` stays NULL when nothing is needed. */
  kiln_status (*prepare)(const kiln__node *n, const kiln__graph *g, void **state, kiln_error *err);
  void (*release)(void *state);
  kiln_status (*execute)(kiln__kctx *c, void *state);
  /* Optional: scratch bytes execute() needs for these shapes; absent = the op's own scratch(). */
  size_t (*scratch)(const kiln__kctx *c, void *state);
  /* Optional: which of its kernels the node got, for profiles (a static string); absent = the
     backend's name. */
  const char *(*kernel_name)(const void *state);
} kiln__backend;

/* All compiled-in backends, best first. */
size_t kiln__backend_count(void);
const kiln__backend *kiln__backend_at(size_t i);
const kiln__backend *kiln__backend_find(const char *name);

extern const kiln__backend kiln__backend_ref;

#endif
