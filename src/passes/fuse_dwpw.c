/* fuse-dwpw (level 3): a depthwise 3x3 conv (Conv or FusedConv, group == C, stride 1,
   dilation 1, its bias and activation) whose only reader is a pointwise conv (1x1, stride 1, no
   padding, group 1, its bias, residual and activation) becomes one ai.kiln DwPwConv(X, W, B, W2,
   B2, Z) (docs/FUSED_OPS.md). The cpu backend (src/kernels/cpu/conv_dwpw.c) then runs the pair
   band of output rows by band, the depthwise result of a band staying in L2 for the pointwise
   GEMM instead of going out to L3 and back. The rule is the per-node measurement in
   MobileNet-v2 (bench/RESULTS.md, 2026-11-28): fused pairs were faster or even where a band of
   the kernel's 8-row block (its input rows and its result: C (8 OW + 10 W) floats) fits the
   512 KiB L2, and 6-45% slower where it did not (144 x 56 x 56) and at stride 2 (every stride-2
   pair from a 56x56 or 112x112 plane lost, the 28x28 and 14x14 ones were even). Of the pairs
   that fit, those of one band (output height <= 8: 960 x 7 x 7, 0.84-0.94) and the one whose
   depthwise output is over 1 MiB (32 x 112 x 112: its pointwise GEMM, K = 16, is memory-bound;
   0.69-0.95) gained; 384 x 14 x 14 (two bands) was even (0.97-1.05), 192 x 28 x 28 (four) 0-8%
   slower. */
#include "passes/pass.h"

enum { BAND_ROWS = 8, BAND_MAX_FLOATS = 131072, BIG_FLOATS = 262144 };

/* A float Conv or FusedConv with one output and a constant [rows, cols, kh, kw] weight, not
   already given to a special algorithm; its weight, or NULL. */
static const kiln_tensor *conv_weight(const kiln__pass_ctx *ctx, const kiln__node *n) {
  bool plain = !n->domain[0] && !strcmp(n->op_type, "Conv");
  bool fused = !strcmp(n->domain, "ai.kiln") && !strcmp(n->op_type, "FusedConv");
  if ((!plain && !fused) || n->n_out != 1 || n->out[0] < 0 || n->n_in < 2 ||
      kiln__attr_find(n, "algorithm") || kiln__pass_dtype(ctx, n->in[0]) != KILN_DTYPE_FLOAT)
    return NULL;
  const kiln_tensor *w = kiln__pass_const_f32(ctx, n->in[1]);
  return w && w->rank == 4 ? w : NULL;
}

static bool dw_ok(const kiln__pass_ctx *ctx, const kiln__node *n) {
  const kiln_tensor *w = conv_weight(ctx, n);
  int64_t x[4], y[4];
  if (!w || n->n_in > 3 || w->dims[1] != 1 || w->dims[2] != 3 || w->dims[3] != 3 ||
      kiln__attr_int(n, "group", 1) != w->dims[0] || w->dims[0] < 2 ||
      !kiln__pass_static4(ctx, n->in[0], x) || !kiln__pass_static4(ctx, n->out[0], y) ||
      x[1] != w->dims[0])
    return false;
  if (!kiln__pass_ints_all(n, "dilations", 2, 1) || !kiln__pass_ints_all(n, "kernel_shape", 2, 3))
    return false;
  if (!kiln__pass_ints_all(n, "strides", 2, 1)) return false;
  int64_t r = y[2] < BAND_ROWS ? y[2] : BAND_ROWS, in_rows = r + 2 < x[2] ? r + 2 : x[2];
  bool big = x[1] * y[2] * y[3] > BIG_FLOATS;
  return x[1] * (r * y[3] + in_rows * x[3]) <= BAND_MAX_FLOATS &&
         (y[2] <= BAND_ROWS || big);
}

static bool pw_ok(const kiln__pass_ctx *ctx, const kiln__node *n, int64_t c) {
  const kiln_tensor *w = conv_weight(ctx, n);
  const char *ap = kiln__attr_str(n, "auto_pad", "NOTSET");
  return w && w->dims[1] == c && w->dims[2] == 1 && w->dims[3] == 1 &&
         kiln__attr_int(n, "group", 1) == 1 && kiln__pass_ints_all(n, "strides", 2, 1) &&
         kiln__pass_ints_all(n, "pads", 4, 0) &&
         (!*ap || !strcmp(ap, "NOTSET") || !strcmp(ap, "VALID"));
}

/* Copies the pointwise conv's activation onto the fused node as pw_activation(_params). */
static kiln_status copy_act(kiln__pass_ctx *ctx, kiln__node *dst, const kiln__node *pw) {
  const char *a = kiln__attr_str(pw, "activation", "");
  const float *p;
  size_t np = kiln__attr_floats(pw, "activation_params", &p);
  kiln_status st = KILN_OK;
  if (*a) st = kiln__pass_add_attr_str(ctx, dst, "pw_activation", a);
  if (st == KILN_OK && np) st = kiln__pass_add_attr_floats(ctx, dst, "pw_activation_params", p, np);
  return st;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  kiln_status st = kiln__pass_shapes(ctx);
  if (st != KILN_OK) return st;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i] || !dw_ok(ctx, &g->nodes[i])) continue;
    int slot, j = kiln__pass_sole_user(ctx, g->nodes[i].out[0], &slot);
    if (j < 0 || slot != 0 || ctx->dead[j]) continue;
    const kiln__node *pw = &g->nodes[j];
    if (!pw_ok(ctx, pw, kiln__pass_const_f32(ctx, g->nodes[i].in[1])->dims[0])) continue;
    kiln__node *n = &g->nodes[i];
    int in[6] = {n->in[0], n->in[1], n->n_in > 2 ? n->in[2] : -1, pw->in[1],
                 pw->n_in > 2 ? pw->in[2] : -1, pw->n_in > 3 ? pw->in[3] : -1};
    int n_in = 6;
    while (n_in > 4 && in[n_in - 1] < 0) n_in--;
    if ((st = kiln__pass_set_op(ctx, n, "ai.kiln", "DwPwConv")) != KILN_OK ||
        (st = kiln__pass_set_inputs(ctx, n, in, n_in)) != KILN_OK ||
        (st = copy_act(ctx, n, pw)) != KILN_OK)
      return st;
    n->out[0] = pw->out[0];
    kiln__pass_note(ctx, "%s+%s", n->name, pw->name);
    kiln__pass_kill(ctx, j);
    *changed = true;
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_fuse_dwpw = {"fuse-dwpw", 3, run};
