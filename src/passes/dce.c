/* Dead-code elimination: nodes none of whose outputs is read, and initializers nothing reads.
   Ops have no side effects in inference, so a node whose results are unused can go. */
#include "passes/pass.h"

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  /* reverse topological order: killing a node can make its producers dead in the same sweep */
  for (int i = g->n_nodes - 1; i >= 0; i--) {
    const kiln__node *n = &g->nodes[i];
    bool used = false;
    for (int o = 0; o < n->n_out && !used; o++)
      used = n->out[o] >= 0 && (ctx->uses[n->out[o]] > 0 || !kiln__pass_value_private(ctx, n->out[o]));
    if (used) continue;
    kiln__pass_note(ctx, "%s (%s)", n->name, n->op_type);
    kiln__pass_kill(ctx, i);
    *changed = true;
  }
  for (int v = 0; v < g->n_values; v++) {
    kiln__value *val = &g->values[v];
    if (!val->is_initializer || ctx->uses[v] > 0 || !kiln__pass_value_private(ctx, v)) continue;
    /* the value stays (indices are stable) but no longer holds data */
    kiln__pass_note(ctx, "initializer %s", val->name);
    kiln_tensor_release(&val->init);
    val->is_initializer = false;
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_dce = {"dead-code", 1, run};
