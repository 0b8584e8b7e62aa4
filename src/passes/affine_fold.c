/* Mul/Add by a constant folded into the weights and bias of the Conv or MatMul before it:
     Conv -> Mul(c):   W'[m] = W[m] * c[m], B'[m] = B[m] * c[m]     (c per output channel)
     Conv -> Add(c):   B'[m] = B[m] + c[m]
     MatMul(X, W) -> Mul(c):  W'[:, n] = W[:, n] * c[n]           (W a 2-D constant)
   c is a scalar or varies only along the output-channel axis, and cannot widen the output's
   rank by broadcasting. Each product is one float rounding away from the unfused result. */
#include "passes/pass.h"

/* c's value for channel m, when c broadcasts against a rank-`rank` output only along `axis`
   (whose size is `m`); NULL when it does not. */
static const float *channel_vector(const kiln_tensor *c, int rank, int axis, int64_t m,
                                   size_t *stride) {
  if (!c || c->rank > rank) return NULL;
  size_t n = kiln_tensor_count(c);
  if (n == 1) {
    *stride = 0;
    return c->data;
  }
  for (int k = 0; k < c->rank; k++) {
    int at = rank - c->rank + k;
    if (c->dims[k] != 1 && !(at == axis && c->dims[k] == m)) return NULL;
  }
  if ((int64_t)n != m) return NULL;
  *stride = 1;
  return c->data;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    kiln__node *n = &g->nodes[i];
    bool conv = !n->domain[0] && !strcmp(n->op_type, "Conv");
    bool matmul = !n->domain[0] && !strcmp(n->op_type, "MatMul");
    if ((!conv && !matmul) || n->n_out != 1 || n->n_in < 2) continue;
    const kiln_tensor *w = kiln__pass_const_f32(ctx, n->in[1]);
    if (!w || (conv && w->rank < 3) || (matmul && w->rank != 2)) continue;
    const kiln_tensor *b = conv && n->n_in > 2 ? kiln__pass_const_f32(ctx, n->in[2]) : NULL;
    if (conv && n->n_in > 2 && n->in[2] >= 0 && !b) continue;
    int64_t m = conv ? w->dims[0] : w->dims[1];
    if (b && (int64_t)kiln_tensor_count(b) != m) continue;
    int slot;
    int j = kiln__pass_sole_user(ctx, n->out[0], &slot);
    if (j < 0) continue;
    kiln__node *e = &g->nodes[j];
    bool mul = !e->domain[0] && !strcmp(e->op_type, "Mul");
    bool add = !e->domain[0] && !strcmp(e->op_type, "Add");
    if ((!mul && !add) || (add && !conv) || e->n_in != 2 || e->n_out != 1) continue;
    const kiln_tensor *c = kiln__pass_const_f32(ctx, e->in[1 - slot]);
    size_t cs;
    /* MatMul's output rank is unknown here (>= 1): c may not add dimensions */
    const float *cv = channel_vector(c, conv ? w->rank : 1, conv ? 1 : 0, m, &cs);
    if (!cv) continue;

    kiln_error local = {0};
    kiln_tensor nw = {0}, nb = {0};
    kiln_status st = KILN_OK;
    if (mul) {
      st = kiln_tensor_alloc(&nw, KILN_DTYPE_FLOAT, w->rank, w->dims, &local);
      if (st == KILN_OK) {
        const float *W = w->data;
        float *NW = nw.data;
        size_t total = kiln_tensor_count(w);
        if (conv) {
          size_t per = total / (size_t)m;
          for (size_t k = 0; k < total; k++) NW[k] = W[k] * cv[(k / per) * cs];
        } else {
          for (size_t k = 0; k < total; k++) NW[k] = W[k] * cv[(k % (size_t)m) * cs];
        }
      }
    }
    if (st == KILN_OK && conv && (b || add)) {
      st = kiln_tensor_alloc(&nb, KILN_DTYPE_FLOAT, 1, &m, &local);
      if (st == KILN_OK) {
        float *NB = nb.data;
        for (int64_t k = 0; k < m; k++) {
          float bias = b ? ((const float *)b->data)[k] : 0.0f;
          NB[k] = mul ? bias * cv[(size_t)k * cs] : bias + cv[(size_t)k * cs];
        }
      }
    }
    int vw = n->in[1], vb = conv && n->n_in > 2 ? n->in[2] : -1;
    if (st == KILN_OK && nw.data && (vw = kiln__pass_add_init(ctx, n->name, &nw)) < 0) st = KILN_NO_MEMORY;
    if (st == KILN_OK && nb.data && (vb = kiln__pass_add_init(ctx, n->name, &nb)) < 0) st = KILN_NO_MEMORY;
    if (st != KILN_OK) {
      kiln_tensor_release(&nw);
      kiln_tensor_release(&nb);
      return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory folding %s into %s", e->op_type,
                        n->op_type);
    }
    int in[3] = {n->in[0], vw, vb};
    st = kiln__pass_set_inputs(ctx, n, in, vb >= 0 ? 3 : 2);
    if (st != KILN_OK) return st;
    kiln__pass_note(ctx, "%s+%s (%s)", n->name, e->name, e->op_type);
    n->out[0] = e->out[0];
    kiln__pass_kill(ctx, j);
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_affine_fold = {"affine-fold", 1, run};
