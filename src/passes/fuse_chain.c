/* Linear chains: MatMul(MatMul(X, W1) [+ b1], W2) -> MatMul(X, W1 @ W2) [+ b1 @ W2], W1 [K, N1]
   and W2 [N1, N2] 2-D float constants, b1 a constant of N1 elements along the last axis (its
   other dims 1), when the folded weight is cheaper per row: K*N1 + N1*N2 > K*N2 (a bottleneck,
   N1 small, stays two products). Products are summed in double, so the result differs from the
   unfused one by reassociation only (within 1e-5 relative, not bit-equal): level 2. The bias Add
   stays a node for fuse-linear to take as the GEMM's bias. */
#include "passes/pass.h"

/* A = B @ C in double, B [m, k], C [k, n], all row-major float. */
static void matmul_f64(float *a, const float *b, const float *c, int64_t m, int64_t k, int64_t n) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      double s = 0;
      for (int64_t p = 0; p < k; p++) s += (double)b[i * k + p] * c[p * n + j];
      a[i * n + j] = (float)s;
    }
}

/* The constant 2-D weight of a default-domain MatMul reading `x` at slot 0, else NULL. */
static const kiln_tensor *matmul_weight(const kiln__pass_ctx *ctx, const kiln__node *n) {
  if (!kiln__pass_is(n, "MatMul") || n->n_in != 2 || n->in[1] < 0) return NULL;
  const kiln_tensor *w = kiln__pass_const_f32(ctx, n->in[1]);
  return w && w->rank == 2 ? w : NULL;
}

/* b's data when it is a float constant of n1 elements, all along its last axis. */
static const kiln_tensor *row_bias(const kiln__pass_ctx *ctx, int v, int64_t n1) {
  const kiln_tensor *b = kiln__pass_const_f32(ctx, v);
  if (!b || b->rank < 1 || b->dims[b->rank - 1] != n1 || (int64_t)kiln_tensor_count(b) != n1)
    return NULL;
  return b;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    const kiln_tensor *w1 = matmul_weight(ctx, &g->nodes[i]);
    if (!w1) continue;
    int64_t k = w1->dims[0], n1 = w1->dims[1];
    /* Optional Add(bias) between, then the second MatMul reading the chain at slot 0. */
    int slot, e = -1, j = kiln__pass_sole_user(ctx, g->nodes[i].out[0], &slot);
    const kiln_tensor *b1 = NULL;
    if (j >= 0 && kiln__pass_is(&g->nodes[j], "Add") && g->nodes[j].n_in == 2) {
      b1 = row_bias(ctx, g->nodes[j].in[1 - slot], n1);
      if (!b1) continue;
      e = j;
      j = kiln__pass_sole_user(ctx, g->nodes[e].out[0], &slot);
    }
    if (j < 0 || slot != 0 || g->nodes[j].n_out != 1) continue;
    const kiln_tensor *w2 = matmul_weight(ctx, &g->nodes[j]);
    if (!w2 || w2->dims[0] != n1) continue;
    int64_t n2 = w2->dims[1];
    if (!(k * n1 + n1 * n2 > k * n2)) continue;

    kiln_error local = {0};
    kiln_tensor nw = {0}, nb = {0};
    int64_t wdims[2] = {k, n2}, bdims[KILN_MAX_RANK];
    kiln_status st = kiln_tensor_alloc(&nw, KILN_DTYPE_FLOAT, 2, wdims, &local);
    if (st == KILN_OK && b1) {
      memcpy(bdims, b1->dims, (size_t)b1->rank * sizeof bdims[0]);
      bdims[b1->rank - 1] = n2; /* same rank: broadcasting against X @ W' is unchanged */
      st = kiln_tensor_alloc(&nb, KILN_DTYPE_FLOAT, b1->rank, bdims, &local);
    }
    if (st == KILN_OK) {
      matmul_f64(nw.data, w1->data, w2->data, k, n1, n2);
      if (b1) matmul_f64(nb.data, b1->data, w2->data, 1, n1, n2);
    }
    int vw = -1, vb = -1;
    if (st == KILN_OK && (vw = kiln__pass_add_init(ctx, g->nodes[i].name, &nw)) < 0)
      st = KILN_NO_MEMORY;
    if (st == KILN_OK && b1 && (vb = kiln__pass_add_init(ctx, g->nodes[e].name, &nb)) < 0)
      st = KILN_NO_MEMORY;
    if (st != KILN_OK) {
      kiln_tensor_release(&nw);
      kiln_tensor_release(&nb);
      return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory folding a MatMul chain");
    }
    kiln__node *n = &g->nodes[i];
    int in[2] = {n->in[0], vw};
    if ((st = kiln__pass_set_inputs(ctx, n, in, 2)) != KILN_OK) return st;
    if (b1) {
      kiln__node *a = &g->nodes[e];
      int ain[2] = {n->out[0], vb};
      if ((st = kiln__pass_set_inputs(ctx, a, ain, 2)) != KILN_OK) return st;
      a->out[0] = g->nodes[j].out[0];
      kiln__pass_note(ctx, "%s+%s+%s", n->name, a->name, g->nodes[j].name);
    } else {
      n->out[0] = g->nodes[j].out[0];
      kiln__pass_note(ctx, "%s+%s", n->name, g->nodes[j].name);
    }
    kiln__pass_kill(ctx, j);
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_fuse_chain = {"fuse-chain", 2, run};
