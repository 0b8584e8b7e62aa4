/* Identity elimination: Identity, and Dropout as inference runs it (its output is its input).
   Consumers of Y = Identity(X) read X instead. When Y is a graph output (whose name must stay),
   X's producer writes Y directly if X is private to the Identity; otherwise the node stays. */
#include "passes/pass.h"

/* Dropout is an identity unless training mode is on (opset 12+: input 2, when not a constant
   false) or its mask output is read. */
static bool dropout_is_identity(const kiln__pass_ctx *ctx, const kiln__node *n) {
  if (n->n_out > 1 && n->out[1] >= 0 &&
      (ctx->uses[n->out[1]] > 0 || !kiln__pass_value_private(ctx, n->out[1])))
    return false;
  if (n->n_in > 2 && n->in[2] >= 0) {
    const kiln__value *t = &ctx->g->values[n->in[2]];
    if (!t->is_initializer || t->init.dtype != KILN_DTYPE_BOOL || kiln_tensor_count(&t->init) != 1 ||
        *(const uint8_t *)t->init.data != 0)
      return false;
  }
  return kiln__attr_int(n, "is_test", 1) != 0 || n->opset >= 7;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    kiln__node *n = &g->nodes[i];
    if (n->domain[0] || n->n_in < 1 || n->n_out < 1 || n->in[0] < 0 || n->out[0] < 0) continue;
    if (strcmp(n->op_type, "Identity") && strcmp(n->op_type, "Dropout")) continue;
    if (!strcmp(n->op_type, "Dropout") && !dropout_is_identity(ctx, n)) continue;
    if (!strcmp(n->op_type, "Identity") && n->n_in != 1) continue;
    int x = n->in[0], y = n->out[0];
    if (kiln__pass_value_private(ctx, y)) {
      kiln__pass_replace_uses(ctx, y, x);
    } else {
      /* Y must keep its name: let X's producer write Y when nothing else reads X */
      int p = g->values[x].producer;
      if (p < 0 || ctx->dead[p] || ctx->uses[x] != 1 || !kiln__pass_value_private(ctx, x) ||
          g->values[x].is_initializer)
        continue;
      kiln__node *pn = &g->nodes[p];
      int slot = -1;
      for (int o = 0; o < pn->n_out; o++)
        if (pn->out[o] == x) slot = o;
      if (slot < 0) continue;
      pn->out[slot] = y;
    }
    kiln__pass_note(ctx, "%s (%s)", n->name, n->op_type);
    kiln__pass_kill(ctx, i);
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_identity = {"identity-elim", 1, run};
