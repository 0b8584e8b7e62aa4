/* winograd (level 3): marks the convs that the cpu backend's Winograd F(2x2, 3x3) kernel runs
   faster than its GEMM conv (src/kernels/cpu/conv_winograd.c): Conv or FusedConv with a constant
   float weight [K, C, 3, 3], group 1, stride 1, dilation 1, becomes FusedConv with the attribute
   algorithm="winograd" (a plain Conv first becomes a FusedConv without activation, which
   fuse-linear can still extend). Other backends ignore the attribute: the reference kernel
   computes the direct conv. The rule is the per-node measurement (bench/bench_winograd.c,
   bench/RESULTS.md): Winograd took 0.5-0.8 of the GEMM conv's time on ResNet's 3x3 convs
   (C = K = 64-512, planes 56x56 to 7x7) and 0.8-0.9 on all of SqueezeNet's (C = 16-64,
   K = 64-256, planes 55x55 to 13x13; an earlier build lost at C = 16-48, since fixed), so:
   C >= 16, K >= 64 and a static output plane of at least 7x7 (smaller shapes were not
   measured). */
#include "passes/pass.h"

enum { MIN_IN = 16, MIN_OUT = 64, MIN_PLANE = 7 * 7 };

static bool eligible(const kiln__pass_ctx *ctx, const kiln__node *n) {
  bool plain = !n->domain[0] && !strcmp(n->op_type, "Conv");
  bool fused = !strcmp(n->domain, "ai.kiln") && !strcmp(n->op_type, "FusedConv");
  if ((!plain && !fused) || n->n_out != 1 || n->n_in < 2 || n->out[0] < 0) return false;
  if (kiln__attr_find(n, "algorithm")) return false; /* already decided */
  const kiln_tensor *w = kiln__pass_const_f32(ctx, n->in[1]);
  int64_t x[4], y[4];
  if (!w || w->rank != 4 || w->dims[2] != 3 || w->dims[3] != 3 ||
      !kiln__pass_static4(ctx, n->in[0], x) ||
      !kiln__pass_static4(ctx, n->out[0], y) || kiln__pass_dtype(ctx, n->in[0]) != KILN_DTYPE_FLOAT)
    return false;
  if (kiln__attr_int(n, "group", 1) != 1 || !kiln__pass_ints_all(n, "strides", 2, 1) ||
      !kiln__pass_ints_all(n, "dilations", 2, 1) || !kiln__pass_ints_all(n, "kernel_shape", 2, 3))
    return false;
  return x[1] == w->dims[1] && w->dims[1] >= MIN_IN && w->dims[0] >= MIN_OUT &&
         y[2] * y[3] >= MIN_PLANE;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  kiln_status st = kiln__pass_shapes(ctx);
  if (st != KILN_OK) return st;
  for (int i = 0; i < g->n_nodes; i++) {
    kiln__node *n = &g->nodes[i];
    if (ctx->dead[i] || !eligible(ctx, n)) continue;
    if (!n->domain[0] && (st = kiln__pass_set_op(ctx, n, "ai.kiln", "FusedConv")) != KILN_OK)
      return st;
    if ((st = kiln__pass_add_attr_str(ctx, n, "algorithm", "winograd")) != KILN_OK) return st;
    kiln__pass_note(ctx, "%s", n->name);
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_winograd = {"winograd", 3, run};
