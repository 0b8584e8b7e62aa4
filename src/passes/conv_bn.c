/* Conv + BatchNormalization (inference mode, constant parameters) folded into the conv:
     s = scale / sqrt(var + eps),  W'[m] = W[m] * s[m],  B'[m] = (B[m] - mean[m]) * s[m] + beta[m]
   computed in double and rounded once. New initializers are made because W may be shared. */
#include <math.h>

#include "passes/pass.h"

static bool per_channel(const kiln_tensor *t, int64_t m) {
  return t && (int64_t)kiln_tensor_count(t) == m;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    kiln__node *conv = &g->nodes[i];
    if (conv->domain[0] || strcmp(conv->op_type, "Conv") || conv->n_out != 1 || conv->n_in < 2)
      continue;
    const kiln_tensor *w = kiln__pass_const_f32(ctx, conv->in[1]);
    const kiln_tensor *b = conv->n_in > 2 ? kiln__pass_const_f32(ctx, conv->in[2]) : NULL;
    if (!w || w->rank < 3 || (conv->n_in > 2 && conv->in[2] >= 0 && !b)) continue;
    int64_t m = w->dims[0];
    if (b && !per_channel(b, m)) continue;
    int slot;
    int j = kiln__pass_sole_user(ctx, conv->out[0], &slot);
    if (j < 0 || slot != 0) continue;
    kiln__node *bn = &g->nodes[j];
    if (bn->domain[0] || strcmp(bn->op_type, "BatchNormalization") || bn->n_in != 5) continue;
    if (kiln__attr_int(bn, "training_mode", 0) != 0) continue;
    /* the ref kernel trains when any extra output is present (opset < 14) */
    bool extra = false;
    for (int o = 1; o < bn->n_out; o++) extra |= bn->out[o] >= 0;
    if (extra || bn->out[0] < 0) continue;
    const kiln_tensor *sc = kiln__pass_const_f32(ctx, bn->in[1]), *be = kiln__pass_const_f32(ctx, bn->in[2]),
                      *mu = kiln__pass_const_f32(ctx, bn->in[3]), *var = kiln__pass_const_f32(ctx, bn->in[4]);
    if (!per_channel(sc, m) || !per_channel(be, m) || !per_channel(mu, m) || !per_channel(var, m))
      continue;
    double eps = kiln__attr_float(bn, "epsilon", 1e-5f);
    kiln_tensor nw, nb;
    kiln_error local = {0};
    if (kiln_tensor_alloc(&nw, KILN_DTYPE_FLOAT, w->rank, w->dims, &local) != KILN_OK)
      return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory folding BatchNormalization");
    if (kiln_tensor_alloc(&nb, KILN_DTYPE_FLOAT, 1, &m, &local) != KILN_OK) {
      kiln_tensor_release(&nw);
      return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory folding BatchNormalization");
    }
    size_t per = kiln_tensor_count(w) / (size_t)m;
    const float *W = w->data, *S = sc->data, *BE = be->data, *MU = mu->data, *V = var->data;
    float *NW = nw.data, *NB = nb.data;
    for (int64_t c = 0; c < m; c++) {
      double s = (double)S[c] / sqrt((double)V[c] + eps);
      for (size_t k = 0; k < per; k++) NW[(size_t)c * per + k] = (float)((double)W[(size_t)c * per + k] * s);
      double bias = b ? (double)((const float *)b->data)[c] : 0.0;
      NB[c] = (float)((bias - (double)MU[c]) * s + (double)BE[c]);
    }
    /* add_init may grow the value array: take names before */
    int vw = kiln__pass_add_init(ctx, conv->name, &nw);
    int vb = vw >= 0 ? kiln__pass_add_init(ctx, conv->name, &nb) : -1;
    if (vw < 0 || vb < 0) {
      kiln_tensor_release(&nb);
      return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory folding BatchNormalization");
    }
    int in[3] = {conv->in[0], vw, vb};
    kiln_status st = kiln__pass_set_inputs(ctx, conv, in, 3);
    if (st != KILN_OK) return st;
    kiln__pass_note(ctx, "%s+%s", conv->name, bn->name);
    conv->out[0] = bn->out[0];
    kiln__pass_kill(ctx, j);
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_conv_bn = {"conv-bn-fold", 1, run};
