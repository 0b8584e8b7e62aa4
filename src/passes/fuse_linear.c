/* Epilogue fusion of the linear ops into ai.kiln FusedConv / FusedGemm / FusedMatMul, one step at
   a time on each node until nothing more folds in:
     MatMul input from a Transpose of its last two dims   -> transA / transB
     MatMul + Add(constant [N])                           -> Bias
     op + Add(Z), Z of the output's shape (FusedMatMul: broadcasting to it) -> the residual Z
     op + activation                                      -> activation (ends the chain)
   Activations: Relu, Clip (constant bounds), Sigmoid, Tanh, HardSigmoid, HardSwish, LeakyRelu,
   ai.kiln Gelu (fuse-gelu runs first), x * Sigmoid(x) (SiLU), and HardSwish written as
   x * HardSigmoid(x; 1/6, 1/2) or as x * Clip(x + 3, 0, 6) / 6 (or * 1/6: PaddlePaddle's
   hard_swish, every conv of PP-OCR). The fused kernels compute in the unfused order, so results
   are bit-equal except for the two HardSwish forms: the kernel's x * clip(x / 6 + 1/2, 0, 1)
   rounds differently (a few ulp).
   The epilogue order is bias, Z, activation: an Add after the activation is not a residual. */
#include <float.h>
#include <math.h>

#include "passes/pass.h"

typedef enum family { FAM_NONE, FAM_CONV, FAM_GEMM, FAM_MATMUL } family;

static family family_of(const kiln__node *n) {
  if (n->n_out != 1) return FAM_NONE;
  if (!n->domain[0]) {
    if (!strcmp(n->op_type, "Conv")) return FAM_CONV;
    if (!strcmp(n->op_type, "Gemm")) return FAM_GEMM;
    if (!strcmp(n->op_type, "MatMul")) return FAM_MATMUL;
  } else if (!strcmp(n->domain, "ai.kiln")) {
    if (!strcmp(n->op_type, "FusedConv")) return FAM_CONV;
    if (!strcmp(n->op_type, "FusedGemm")) return FAM_GEMM;
    if (!strcmp(n->op_type, "FusedMatMul")) return FAM_MATMUL;
  }
  return FAM_NONE;
}

static const char *fused_name[] = {NULL, "FusedConv", "FusedGemm", "FusedMatMul"};

/* Turns a plain linear op into its fused form (attributes kept). */
static kiln_status make_fused(kiln__pass_ctx *ctx, kiln__node *n, family f) {
  if (n->domain[0]) return KILN_OK;
  return kiln__pass_set_op(ctx, n, "ai.kiln", fused_name[f]);
}

/* Sets input `slot`, padding omitted inputs with -1. */
static kiln_status set_input(kiln__pass_ctx *ctx, kiln__node *n, int slot, int v) {
  int in[4] = {-1, -1, -1, -1};
  for (int k = 0; k < n->n_in && k < 4; k++) in[k] = n->in[k];
  in[slot] = v;
  int cnt = n->n_in > slot + 1 ? n->n_in : slot + 1;
  return kiln__pass_set_inputs(ctx, n, in, cnt);
}

/* The node now writes what `last` wrote; `last` (and each of `extra` >= 0) die. */
static void absorb(kiln__pass_ctx *ctx, int i, int last, const int *extra, int n_extra) {
  kiln__graph *g = ctx->g;
  g->nodes[i].out[0] = g->nodes[last].out[0];
  kiln__pass_kill(ctx, last);
  for (int k = 0; k < n_extra; k++)
    if (extra[k] >= 0) kiln__pass_kill(ctx, extra[k]);
}

static bool has_activation(const kiln__node *n) {
  return n->domain[0] && kiln__attr_str(n, "activation", "")[0];
}

static bool transposes_last_two(const kiln__node *t) {
  if (!kiln__pass_is(t, "Transpose")) return false;
  const int64_t *perm;
  size_t r = kiln__attr_ints(t, "perm", &perm);
  if (r < 2) return false;
  for (size_t d = 0; d + 2 < r; d++)
    if (perm[d] != (int64_t)d) return false;
  return perm[r - 2] == (int64_t)r - 1 && perm[r - 1] == (int64_t)r - 2;
}

/* A MatMul input that is a private Transpose of the last two dims: read its input instead. */
static kiln_status fold_transposes(kiln__pass_ctx *ctx, int i, bool *did) {
  kiln__graph *g = ctx->g;
  for (int slot = 0; slot < 2; slot++) {
    kiln__node *n = &g->nodes[i];
    int v = n->in[slot];
    if (v < 0 || ctx->uses[v] != 1 || !kiln__pass_value_private(ctx, v)) continue;
    int p = g->values[v].producer;
    if (p < 0 || ctx->dead[p] || !transposes_last_two(&g->nodes[p])) continue;
    const char *an = slot ? "transB" : "transA";
    int64_t tr = !kiln__attr_int(n, an, 0);
    kiln_status st = make_fused(ctx, n, FAM_MATMUL);
    if (st == KILN_OK) st = set_input(ctx, n, slot, g->nodes[p].in[0]);
    if (st != KILN_OK) return st;
    kiln__attr *a = (kiln__attr *)kiln__attr_find(n, an);
    if (a) a->i = tr;
    else if ((st = kiln__pass_add_attr_int(ctx, n, an, tr)) != KILN_OK) return st;
    kiln__pass_note(ctx, "%s: %s folded (%s)", n->name, g->nodes[p].name, an);
    kiln__pass_kill(ctx, p);
    *did = true;
  }
  return KILN_OK;
}

typedef struct act_match {
  const char *name;
  float p[2];
  int n_params;
  int last;     /* the node whose output the fused op takes over */
  int extra[3]; /* other nodes that die (Sigmoid / HardSigmoid of x * f(x), ...), or -1 */
} act_match;

/* Activation node a reading the linear op's output `y`. */
static bool match_act(const kiln__pass_ctx *ctx, int ia, int y, act_match *m) {
  const kiln__graph *g = ctx->g;
  const kiln__node *a = &g->nodes[ia];
  m->n_params = 0;
  m->last = ia;
  m->extra[0] = m->extra[1] = m->extra[2] = -1;
  if (a->in[0] != y) return false;
  if (kiln__pass_is(a, "Relu") || kiln__pass_is(a, "Sigmoid") || kiln__pass_is(a, "Tanh") ||
      kiln__pass_is(a, "HardSwish")) {
    m->name = a->op_type;
    return a->n_in == 1;
  }
  if (!strcmp(a->domain, "ai.kiln") && !strcmp(a->op_type, "Gelu") && a->n_out == 1) {
    const char *approx = kiln__attr_str(a, "approximate", "none");
    m->name = !strcmp(approx, "tanh") ? "GeluTanh" : "Gelu";
    return !strcmp(approx, "tanh") || !strcmp(approx, "none");
  }
  if (kiln__pass_is(a, "LeakyRelu")) {
    m->name = "LeakyRelu";
    m->p[0] = kiln__attr_float(a, "alpha", 0.01f);
    m->n_params = 1;
    return true;
  }
  if (kiln__pass_is(a, "HardSigmoid")) {
    m->name = "HardSigmoid";
    m->p[0] = kiln__attr_float(a, "alpha", 0.2f);
    m->p[1] = kiln__attr_float(a, "beta", 0.5f);
    m->n_params = 2;
    return true;
  }
  if (kiln__pass_is(a, "Clip")) {
    m->name = "Clip";
    m->n_params = 2;
    if (a->opset < 11) {
      m->p[0] = kiln__attr_float(a, "min", -FLT_MAX);
      m->p[1] = kiln__attr_float(a, "max", FLT_MAX);
      return true;
    }
    double lo = -FLT_MAX, hi = FLT_MAX;
    if (a->n_in > 1 && a->in[1] >= 0 && !kiln__pass_const_scalar(ctx, a->in[1], &lo)) return false;
    if (a->n_in > 2 && a->in[2] >= 0 && !kiln__pass_const_scalar(ctx, a->in[2], &hi)) return false;
    m->p[0] = (float)lo;
    m->p[1] = (float)hi;
    return true;
  }
  return false;
}

/* y (private) read by exactly two nodes: a binary Mul (the gate's product) and another (the
   gate's first step); false otherwise. */
static bool gate_readers(const kiln__pass_ctx *ctx, int y, int *i_mul, int *i_other) {
  const kiln__graph *g = ctx->g;
  if (ctx->uses[y] != 2 || !kiln__pass_value_private(ctx, y)) return false;
  *i_mul = *i_other = -1;
  for (int j = 0; j < g->n_nodes; j++) {
    if (ctx->dead[j]) continue;
    const kiln__node *n = &g->nodes[j];
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] == y) {
        if (kiln__pass_is(n, "Mul") && n->n_in == 2) *i_mul = j;
        else *i_other = j;
      }
  }
  return *i_mul >= 0 && *i_other >= 0;
}

/* y read by exactly f(y) and Mul(y, f(y)): SiLU (f = Sigmoid) or HardSwish (f = HardSigmoid with
   alpha 1/6, beta 1/2). */
static bool match_gated(const kiln__pass_ctx *ctx, int y, act_match *m) {
  const kiln__graph *g = ctx->g;
  int i_f, i_mul;
  if (!gate_readers(ctx, y, &i_mul, &i_f)) return false;
  const kiln__node *f = &g->nodes[i_f], *mul = &g->nodes[i_mul];
  int fy = f->out[0], slot;
  if (kiln__pass_sole_user(ctx, fy, &slot) != i_mul || mul->in[1 - slot] != y) return false;
  if (kiln__pass_is(f, "Sigmoid")) {
    m->name = "Silu";
  } else if (kiln__pass_is(f, "HardSigmoid") &&
             fabs(kiln__attr_float(f, "alpha", 0.2f) - 1.0 / 6) < 1e-7 &&
             kiln__attr_float(f, "beta", 0.5f) == 0.5f) {
    m->name = "HardSwish";
  } else {
    return false;
  }
  m->n_params = 0;
  m->last = i_mul;
  m->extra[0] = i_f;
  m->extra[1] = m->extra[2] = -1;
  return true;
}

/* The scalar constant operand of binary node n other than `x` is `want` (within tol); false when
   n is not a binary op reading x or the other operand is not such a constant. */
static bool other_is(const kiln__pass_ctx *ctx, const kiln__node *n, int x, double want,
                     double tol, bool either_side) {
  double c;
  if (n->n_in != 2) return false;
  for (int side = 0; side < (either_side ? 2 : 1); side++)
    if (n->in[side] == x && kiln__pass_const_scalar(ctx, n->in[1 - side], &c) &&
        fabs(c - want) <= tol)
      return true;
  return false;
}

/* y read by exactly Add(y, 3) and Mul(y, .) in x * Clip(x + 3, 0, 6) / 6 (Div by 6 or Mul by
   1/6): HardSwish as PaddlePaddle exports it. */
static bool match_hswish6(const kiln__pass_ctx *ctx, int y, act_match *m) {
  const kiln__graph *g = ctx->g;
  int i_add, i_mul, slot;
  if (!gate_readers(ctx, y, &i_mul, &i_add) || !kiln__pass_is(&g->nodes[i_add], "Add") ||
      !other_is(ctx, &g->nodes[i_add], y, 3.0, 0, true))
    return false;
  int i_clip = kiln__pass_sole_user(ctx, g->nodes[i_add].out[0], &slot);
  if (i_clip < 0 || slot != 0) return false;
  act_match c;
  if (!match_act(ctx, i_clip, g->nodes[i_add].out[0], &c) || strcmp(c.name, "Clip") ||
      c.p[0] != 0.0f || c.p[1] != 6.0f)
    return false;
  const kiln__node *mul = &g->nodes[i_mul];
  if (kiln__pass_sole_user(ctx, g->nodes[i_clip].out[0], &slot) != i_mul || mul->n_in != 2 ||
      mul->in[1 - slot] != y)
    return false;
  int i_div = kiln__pass_sole_user(ctx, mul->out[0], &slot);
  if (i_div < 0) return false;
  const kiln__node *d = &g->nodes[i_div];
  if (!(kiln__pass_is(d, "Div") && slot == 0 && other_is(ctx, d, mul->out[0], 6.0, 0, false)) &&
      !(kiln__pass_is(d, "Mul") && other_is(ctx, d, mul->out[0], 1.0 / 6, 1e-7, true)))
    return false;
  m->name = "HardSwish";
  m->n_params = 0;
  m->last = i_div;
  m->extra[0] = i_add, m->extra[1] = i_clip, m->extra[2] = i_mul;
  return true;
}

/* The output's last dim when the same in both probes, else -1. */
static int64_t last_dim(const kiln__pass_ctx *ctx, int v) {
  const kiln_tensor *a = kiln__pass_shape(ctx, v, 0), *b = kiln__pass_shape(ctx, v, 1);
  if (!a || !b || a->rank < 1 || a->rank != b->rank) return -1;
  int64_t d = a->dims[a->rank - 1];
  return d == b->dims[b->rank - 1] ? d : -1;
}

/* One step on node i; *did when something was folded in. */
static kiln_status step(kiln__pass_ctx *ctx, int i, family f, bool *did) {
  kiln__graph *g = ctx->g;
  kiln__node *n = &g->nodes[i];
  kiln_status st;
  if (has_activation(n)) return KILN_OK;
  int y = n->out[0];
  if (y < 0 || kiln__pass_dtype(ctx, y) != KILN_DTYPE_FLOAT) return KILN_OK;
  bool has_z = n->n_in > 3 && n->in[3] >= 0;
  bool has_bias = n->n_in > 2 && n->in[2] >= 0;
  act_match m;
  int slot, u = kiln__pass_sole_user(ctx, y, &slot);
  if (u >= 0 && kiln__pass_is(&g->nodes[u], "Add") && g->nodes[u].n_in == 2) {
    int other = g->nodes[u].in[1 - slot];
    const kiln_tensor *c = kiln__pass_const_f32(ctx, other);
    if (f == FAM_MATMUL && !has_bias && !has_z && c && c->rank == 1 &&
        c->dims[0] == last_dim(ctx, y) && c->dims[0] > 0) {
      if ((st = make_fused(ctx, n, f)) != KILN_OK || (st = set_input(ctx, n, 2, other)) != KILN_OK)
        return st;
      kiln__pass_note(ctx, "%s+%s (bias)", n->name, g->nodes[u].name);
      absorb(ctx, i, u, NULL, 0);
      *did = true;
      return KILN_OK;
    }
    if (!has_z && other != y && kiln__pass_dtype(ctx, other) == KILN_DTYPE_FLOAT &&
        kiln__pass_fits(ctx, other, y, f == FAM_MATMUL)) {
      if ((st = make_fused(ctx, n, f)) != KILN_OK || (st = set_input(ctx, n, 3, other)) != KILN_OK)
        return st;
      kiln__pass_note(ctx, "%s+%s (residual)", n->name, g->nodes[u].name);
      absorb(ctx, i, u, NULL, 0);
      *did = true;
    }
    return KILN_OK;
  }
  bool found = (u >= 0 && match_act(ctx, u, y, &m)) || match_gated(ctx, y, &m) ||
               match_hswish6(ctx, y, &m);
  if (!found) return KILN_OK;
  if ((st = make_fused(ctx, n, f)) != KILN_OK) return st;
  n = &g->nodes[i];
  if ((st = kiln__pass_add_attr_str(ctx, n, "activation", m.name)) != KILN_OK) return st;
  if (m.n_params &&
      (st = kiln__pass_add_attr_floats(ctx, n, "activation_params", m.p, (size_t)m.n_params)) !=
          KILN_OK)
    return st;
  kiln__pass_note(ctx, "%s+%s (%s)", n->name, g->nodes[m.last].name, m.name);
  absorb(ctx, i, m.last, m.extra, 3);
  *did = true;
  return KILN_OK;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  kiln_status st = kiln__pass_shapes(ctx);
  if (st != KILN_OK) return st;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) continue;
    family f = family_of(&g->nodes[i]);
    if (f == FAM_NONE || kiln__pass_has_subgraph(&g->nodes[i])) continue;
    bool did = false;
    if (f == FAM_MATMUL && (st = fold_transposes(ctx, i, &did)) != KILN_OK) return st;
    *changed |= did;
    /* bias, then residual, then the activation: at most three steps */
    for (int k = 0; k < 3; k++) {
      did = false;
      if ((st = step(ctx, i, f, &did)) != KILN_OK) return st;
      if (!did) break;
      *changed = true;
    }
  }
  return KILN_OK;
}

const kiln__pass kiln__pass_fuse_linear = {"fuse-linear", 2, run};
