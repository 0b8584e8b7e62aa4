/* The "cpu" backend's kernels for Kiln's fused ops (domain ai.kiln, docs/FUSED_OPS.md) against
 * the reference kernels of src/kernels/ref/fused.c, for every ISA this machine runs, serially and
 * on a 2-thread pool: FusedConv (dense, pointwise, grouped, depthwise, with Z and each
 * activation; and the Winograd kernel of algorithm="winograd" on odd planes, padding 0-2 and
 * asymmetric, C and K off the vector widths, C over one k block, batch 2-3, K in two parts),
 * FusedGemm (C forms with Z), FusedMatMul (transposes, batches, Bias, full and broadcast Z),
 * LayerNorm, RMSNorm, Gelu and Attention (2-D/4-D and broadcast additive masks, -inf masks,
 * causal, odd lengths, key blocks with a partial tail, S = 1, large D and Dv). While the cpu
 * kernel runs, the node's reference run() is replaced by one that fails, so a test passes only
 * if the fast path really computed the output. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/threadpool.h"
#include "kernels/cpu/conv_winograd.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/sgemm.h"
#include "kiln_test_ir.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint32_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}
static float rnd_f(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; }

/* ---- one-node graphs ------------------------------------------------------------------------- */

#define MAX_IN 6

typedef struct onenode {
  kiln__graph *g;
  kiln__node *n;
  kiln_tensor in[MAX_IN];
  int n_in;
  kiln__op fast_only; /* the reference op with run() failing */
} onenode;

/* `prefix`activation "" / name, with up to two params (np of them). */
static void attr_act_named(kiln__node *n, const char *prefix, const char *act, int np, float p0,
                           float p1) {
  if (!act) return;
  char name[64];
  snprintf(name, sizeof name, "%sactivation", prefix);
  kt_attr_str(n, name, act);
  if (!np) return;
  kiln__attr *a = &n->attrs[n->n_attrs++];
  snprintf(name, sizeof name, "%sactivation_params", prefix);
  a->name = kiln__strdup(name);
  a->type = KILN__ATTR_FLOATS;
  a->n = (size_t)np;
  a->floats = kiln__malloc(2 * sizeof *a->floats);
  a->floats[0] = p0;
  a->floats[1] = p1;
}

static void attr_act(kiln__node *n, const char *act, int np, float p0, float p1) {
  attr_act_named(n, "", act, np, p0, p1);
}

static kiln_status run_fails(kiln__kctx *c) {
  return kiln__fail(c->err, KILN_INTERNAL, "the cpu kernel fell back to the reference");
}

/* Inputs with rank 0 and dims[0] < 0 are omitted (an empty name). `init` flags initializers. */
static void onenode_make(onenode *o, const char *op, int n_in, const int *ranks,
                         const int64_t dims[][KILN_MAX_RANK], unsigned init) {
  memset(o, 0, sizeof *o);
  o->g = kiln__graph_new();
  o->n_in = n_in;
  static const char *names[MAX_IN] = {"in0", "in1", "in2", "in3", "in4", "in5"};
  int idx[MAX_IN];
  kiln_error err = {0};
  for (int i = 0; i < n_in; i++) {
    if (ranks[i] < 0) {
      idx[i] = -1;
      continue;
    }
    idx[i] = kiln__graph_value(o->g, names[i]);
    assert_int_equal(kiln_tensor_alloc(&o->in[i], KILN_DTYPE_FLOAT, ranks[i], dims[i], &err),
                     KILN_OK);
    float *d = o->in[i].data;
    for (size_t k = 0; k < kiln_tensor_count(&o->in[i]); k++) d[k] = 2.0f * rnd_f();
    kiln__value *v = &o->g->values[idx[i]];
    v->dtype = KILN_DTYPE_FLOAT;
    if (init & (1u << i)) {
      v->is_initializer = true;
      assert_int_equal(kiln_tensor_alloc(&v->init, KILN_DTYPE_FLOAT, ranks[i], dims[i], &err),
                       KILN_OK);
      memcpy(v->init.data, d, kiln_tensor_nbytes(&o->in[i]));
    }
  }
  int out = kiln__graph_value(o->g, "out");
  o->n = kiln__graph_add_node(o->g);
  o->n->op_type = kiln__strdup(op);
  o->n->domain = kiln__strdup("ai.kiln");
  o->n->name = kiln__strdup("node");
  o->n->opset = 1;
  o->n->n_in = n_in;
  o->n->in = kiln__malloc((size_t)n_in * sizeof(int));
  memcpy(o->n->in, idx, (size_t)n_in * sizeof(int));
  o->n->n_out = 1;
  o->n->out = kiln__malloc(sizeof(int));
  o->n->out[0] = out;
  o->n->attrs = kiln__calloc(12, sizeof(kiln__attr));
  const kiln__op *ref = kiln__op_find("ai.kiln", op);
  assert_non_null(ref);
  o->n->op = ref;
  o->fast_only = *ref;
  o->fast_only.run = run_fails;
}

static void onenode_free(onenode *o) {
  for (int i = 0; i < o->n_in; i++) kiln_tensor_release(&o->in[i]);
  kiln__graph_free(o->g);
}

/* Runs the node on "cpu" (which must take it and must not fall back) and on the reference
   kernel; |cpu - ref| <= tol (1 + |ref|). */
static void onenode_check(onenode *o, kiln__pool *pool, float tol) {
  const kiln__backend *cpu = &kiln__backend_cpu;
  assert_true(cpu->supports(o->n, o->g));
  void *state = NULL;
  kiln_error err = {0};
  assert_int_equal(cpu->prepare(o->n, o->g, &state, &err), KILN_OK);
  const kiln_tensor *ins[MAX_IN];
  for (int i = 0; i < o->n_in; i++) ins[i] = o->in[i].data ? &o->in[i] : NULL;
  kiln_tensor y_cpu = {0}, y_ref = {0};
  kiln_tensor *outs[1] = {&y_cpu};
  kiln__kctx c = {.node = o->n, .n_in = o->n_in, .n_out = 1, .in = ins, .out = outs,
                  .pool = pool, .err = &err};
  kiln_status st = o->n->op->infer(&c);
  if (st != KILN_OK) fail_msg("%s: infer: %s", o->n->op_type, err.message);
  y_ref = y_cpu;
  size_t count = kiln_tensor_count(&y_cpu);
  y_cpu.data = malloc(count * sizeof(float) + 1);
  y_ref.data = malloc(count * sizeof(float) + 1);
  for (size_t i = 0; i < count; i++) ((float *)y_cpu.data)[i] = NAN; /* all must be written */
  c.scratch_bytes = cpu->scratch(&c, state);
  c.scratch = c.scratch_bytes ? malloc(c.scratch_bytes) : NULL;
  o->n->op = &o->fast_only;
  st = cpu->execute(&c, state);
  o->n->op = kiln__op_find("ai.kiln", o->n->op_type);
  if (st != KILN_OK) fail_msg("%s: %s", o->n->op_type, err.message);
  free(c.scratch);
  outs[0] = &y_ref;
  c.pool = NULL;
  c.scratch_bytes = o->n->op->scratch ? o->n->op->scratch(&c) : 0;
  c.scratch = c.scratch_bytes ? malloc(c.scratch_bytes) : NULL;
  assert_int_equal(o->n->op->run(&c), KILN_OK);
  free(c.scratch);
  const float *a = y_cpu.data, *b = y_ref.data;
  for (size_t i = 0; i < count; i++)
    if (!(fabsf(a[i] - b[i]) <= tol * (1.0f + fabsf(b[i]))) && !(isnan(a[i]) && isnan(b[i])))
      fail_msg("%s (ISA %s): element %zu of %zu is %.7g, reference %.7g", o->n->op_type,
               getenv("KILN_ISA"), i, count, a[i], b[i]);
  free(y_cpu.data);
  free(y_ref.data);
  cpu->release(state);
}

static void for_each_isa(void (*fn)(kiln__pool *)) {
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  for (int isa = 0; isa < KILN__ISA_COUNT; isa++) {
    if (!kiln__isa_supported((kiln__isa)isa)) continue;
    setenv("KILN_ISA", kiln__isa_name((kiln__isa)isa), 1);
    fn(NULL);
    fn(pool);
  }
  unsetenv("KILN_ISA");
  kiln__pool_free(pool);
}

/* Every activation of the contract with its parameters (np of them). */
static const struct { const char *name; int np; float p0, p1; } acts[] = {
    {NULL, 0, 0, 0},          {"", 0, 0, 0},           {"Relu", 0, 0, 0},
    {"Clip", 2, 0.0f, 6.0f},  {"Clip", 0, 0, 0},       {"Sigmoid", 0, 0, 0},
    {"Tanh", 0, 0, 0},        {"HardSigmoid", 2, 0.3f, 0.4f}, {"HardSigmoid", 0, 0, 0},
    {"HardSwish", 0, 0, 0},   {"LeakyRelu", 1, 0.1f, 0}, {"LeakyRelu", 0, 0, 0},
    {"Gelu", 0, 0, 0},        {"Silu", 0, 0, 0},       {"GeluTanh", 0, 0, 0},
};

/* ---- FusedConv ------------------------------------------------------------------------------- */

/* A conv node's attributes (square stride and padding, group, activation acts[a]), then the
   check against the reference. */
static void conv_check(onenode *o, kiln__pool *pool, int64_t stride, int64_t pad, int64_t group,
                       size_t a) {
  int64_t s[2] = {stride, stride}, p[4] = {pad, pad, pad, pad};
  kt_attr_ints(o->n, "strides", s, 2);
  kt_attr_ints(o->n, "pads", p, 4);
  kt_attr_int(o->n, "group", group);
  attr_act(o->n, acts[a].name, acts[a].np, acts[a].p0, acts[a].p1);
  onenode_check(o, pool, 1e-4f);
}

static void fconv_cases(kiln__pool *pool) {
  /* N, C, H, W, M, k, group, stride, pad, bias, Z, activation index (-1: every one) */
  static const struct {
    int64_t n, c, h, w, m, k, group, stride, pad;
    int bias, z, act;
  } cases[] = {
      {1, 3, 9, 11, 8, 3, 1, 1, 1, 1, 1, -1},    /* dense 3x3, im2col */
      {1, 16, 7, 9, 24, 1, 1, 1, 0, 1, 1, -1},   /* pointwise: the input is the GEMM's B */
      {1, 12, 10, 13, 12, 3, 12, 1, 1, 1, 1, -1}, /* depthwise, direct kernel */
      {2, 8, 15, 15, 8, 3, 8, 2, 1, 1, 0, 3},    /* depthwise strided, Relu6 */
      {1, 6, 9, 9, 6, 5, 6, 1, 2, 0, 1, 9},      /* depthwise 5x5, HardSwish */
      {1, 16, 9, 9, 16, 5, 16, 1, 2, 1, 1, -1},  /* depthwise 5x5, 8 channels in lanes */
      {1, 16, 7, 7, 16, 3, 16, 1, 1, 1, 1, -1},  /* 3x3 at 7x7: 8 channels in lanes, Z */
      {2, 8, 5, 6, 8, 3, 8, 1, 1, 1, 1, 2},      /* ... rows of 6: 30 outputs, 6 past 8s */
      {1, 8, 70, 70, 8, 3, 8, 1, 1, 1, 1, -1},   /* depthwise on a wide plane, read in place */
      {1, 8, 71, 67, 8, 3, 8, 2, 1, 1, 1, 3},    /* ... strided, Relu6 */
      {1, 8, 40, 40, 8, 3, 8, 1, 1, 0, 1, 2},    /* depthwise on a padded copy (ow > 32) */
      {2, 6, 9, 10, 9, 3, 3, 1, 1, 1, 1, 2},     /* grouped */
      {1, 64, 14, 14, 70, 1, 1, 2, 0, 1, 1, 2},  /* strided 1x1 */
      {1, 40, 60, 60, 20, 3, 1, 1, 1, 1, 1, 13}, /* two im2col column chunks, Silu */
      {2, 3, 30, 27, 7, 3, 1, 2, 1, 1, 0, -1},   /* a stem without Z: conv_stem (Relu, Clip) */
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    size_t a0 = cases[i].act < 0 ? 0 : (size_t)cases[i].act;
    size_t a1 = cases[i].act < 0 ? KILN__ARRAY_LEN(acts) : a0 + 1;
    for (size_t a = a0; a < a1; a++) {
      int64_t oh = (cases[i].h + 2 * cases[i].pad - cases[i].k) / cases[i].stride + 1;
      int64_t ow = (cases[i].w + 2 * cases[i].pad - cases[i].k) / cases[i].stride + 1;
      int n_in = cases[i].z ? 4 : cases[i].bias ? 3 : 2;
      int ranks[4] = {4, 4, cases[i].bias ? 1 : -1, 4};
      int64_t dims[4][KILN_MAX_RANK] = {
          {cases[i].n, cases[i].c, cases[i].h, cases[i].w},
          {cases[i].m, cases[i].c / cases[i].group, cases[i].k, cases[i].k},
          {cases[i].m},
          {cases[i].n, cases[i].m, oh, ow}};
      onenode o;
      onenode_make(&o, "FusedConv", n_in, ranks, dims, 2);
      conv_check(&o, pool, cases[i].stride, cases[i].pad, cases[i].group, a);
      onenode_free(&o);
    }
  }
}

static void fused_conv_matches_reference(void **st) {
  (void)st;
  for_each_isa(fconv_cases);
}

/* ---- NCHW8c: BlockedConv, ToBlocked, FromBlocked (conv_blocked.c) ---------------------------- */

static void blocked_cases(kiln__pool *pool) {
  /* N, C, H, W, M, k, group, stride, pad, bias, Z, activation index (-1: every one) */
  static const struct {
    int64_t n, c, h, w, m, k, group, stride, pad;
    int bias, z, act;
  } cases[] = {
      {1, 16, 7, 9, 24, 1, 1, 1, 0, 1, 1, -1},     /* pointwise: 63 pixels, 3 output blocks */
      {2, 8, 5, 5, 16, 1, 1, 1, 0, 0, 0, 3},       /* 25 pixels (a tile of 1), Relu6, batch 2 */
      {1, 96, 14, 14, 24, 1, 1, 1, 0, 1, 1, 0},    /* a projection with its residual */
      {1, 24, 30, 30, 144, 1, 1, 1, 0, 1, 0, 3},   /* an expansion: units of output blocks */
      {1, 32, 40, 41, 24, 1, 1, 1, 0, 1, 1, 2},    /* 205 KB of input: units of pixels */
      {1, 16, 9, 11, 16, 3, 16, 1, 1, 1, 1, -1},   /* depthwise, stride 1, odd plane */
      {2, 24, 15, 15, 24, 3, 24, 2, 1, 1, 1, 3},   /* depthwise, stride 2, odd plane */
      {1, 8, 56, 56, 8, 3, 8, 2, 1, 1, 0, 3},      /* ... even plane (right pad unused) */
      {1, 32, 7, 7, 32, 3, 32, 1, 1, 1, 0, 2},     /* 7x7: one interior tile per row */
      {1, 8, 3, 2, 8, 3, 8, 1, 1, 0, 0, 0},        /* a plane narrower than the taps */
      {1, 16, 8, 8, 16, 3, 16, 1, 0, 1, 0, 2},     /* no padding */
      /* dense 3x3 stride 1 on blocked input: Winograd F(2x2, 3x3) with 8 channels per vector
         (SqueezeNet's expansions; odd planes leave half tiles, batch 2 spans blocks) */
      {1, 16, 13, 13, 64, 3, 1, 1, 1, 1, 0, 2},
      {2, 8, 9, 11, 24, 3, 1, 1, 1, 1, 1, -1},
      {1, 64, 27, 27, 256, 3, 1, 1, 1, 1, 0, 2},
      {1, 24, 6, 7, 8, 3, 1, 1, 0, 0, 1, 0},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    size_t a0 = cases[i].act < 0 ? 0 : (size_t)cases[i].act;
    size_t a1 = cases[i].act < 0 ? KILN__ARRAY_LEN(acts) : a0 + 1;
    for (size_t a = a0; a < a1; a++) {
      int64_t oh = (cases[i].h + 2 * cases[i].pad - cases[i].k) / cases[i].stride + 1;
      int64_t ow = (cases[i].w + 2 * cases[i].pad - cases[i].k) / cases[i].stride + 1;
      int n_in = cases[i].z ? 4 : cases[i].bias ? 3 : 2;
      int ranks[4] = {5, 4, cases[i].bias ? 1 : -1, 5};
      int64_t dims[4][KILN_MAX_RANK] = {
          {cases[i].n, cases[i].c / 8, cases[i].h, cases[i].w, 8},
          {cases[i].m, cases[i].c / cases[i].group, cases[i].k, cases[i].k},
          {cases[i].m},
          {cases[i].n, cases[i].m / 8, oh, ow, 8}};
      onenode o;
      onenode_make(&o, "BlockedConv", n_in, ranks, dims, 2);
      conv_check(&o, pool, cases[i].stride, cases[i].pad, cases[i].group, a);
      onenode_free(&o);
    }
  }
  /* input_layout="NCHW": dense convs from a few NCHW channels (stems) into NCHW8c */
  static const struct {
    int64_t n, c, h, w, m, k, stride, pad;
    int bias, z, act;
  } dense[] = {
      {2, 3, 15, 17, 16, 3, 2, 1, 1, 0, 3},  /* MobileNet's stem, odd planes, Relu6 */
      {1, 3, 30, 31, 32, 3, 2, 1, 1, 1, -1}, /* every activation, Z */
      {1, 8, 9, 9, 8, 5, 1, 2, 0, 1, 2},     /* 5x5, 8 channels */
      {1, 1, 7, 11, 24, 7, 1, 3, 1, 0, 0},   /* 7x7 over a 7-row plane, 3 output blocks */
      {1, 4, 6, 5, 8, 3, 1, 0, 1, 0, 2},     /* no padding: every column interior */
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(dense); i++) {
    size_t a0 = dense[i].act < 0 ? 0 : (size_t)dense[i].act;
    size_t a1 = dense[i].act < 0 ? KILN__ARRAY_LEN(acts) : a0 + 1;
    for (size_t a = a0; a < a1; a++) {
      int64_t oh = (dense[i].h + 2 * dense[i].pad - dense[i].k) / dense[i].stride + 1;
      int64_t ow = (dense[i].w + 2 * dense[i].pad - dense[i].k) / dense[i].stride + 1;
      int n_in = dense[i].z ? 4 : dense[i].bias ? 3 : 2;
      int ranks[4] = {4, 4, dense[i].bias ? 1 : -1, 5};
      int64_t dims[4][KILN_MAX_RANK] = {{dense[i].n, dense[i].c, dense[i].h, dense[i].w},
                                        {dense[i].m, dense[i].c, dense[i].k, dense[i].k},
                                        {dense[i].m},
                                        {dense[i].n, dense[i].m / 8, oh, ow, 8}};
      onenode o;
      onenode_make(&o, "BlockedConv", n_in, ranks, dims, 2);
      kt_attr_str(o.n, "input_layout", "NCHW");
      conv_check(&o, pool, dense[i].stride, dense[i].pad, 1, a);
      onenode_free(&o);
    }
  }
  /* BlockedPool: MaxPool 3x3 stride 2 with ceil_mode (SqueezeNet's; the last window of 8 columns
     hangs over the edge), with pads 1 (ResNet's), 2x2; GlobalAveragePool */
  static const struct {
    int64_t n, c, h, w, k, stride, pad, ceil;
    bool global;
  } pools[] = {
      {1, 16, 15, 15, 3, 2, 0, 1, false}, {2, 8, 8, 9, 3, 2, 0, 1, false},
      {1, 8, 12, 12, 3, 2, 1, 0, false},  {1, 24, 6, 6, 2, 2, 0, 0, false},
      {2, 16, 13, 13, 0, 0, 0, 0, true},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(pools); i++) {
    int r5[1] = {5}; /* the output's shape: the reference's infer */
    int64_t dims[1][KILN_MAX_RANK] = {{pools[i].n, pools[i].c / 8, pools[i].h, pools[i].w, 8}};
    onenode o;
    onenode_make(&o, "BlockedPool", 1, r5, dims, 0);
    if (pools[i].global) {
      kt_attr_str(o.n, "op", "GlobalAveragePool");
    } else {
      int64_t k[2] = {pools[i].k, pools[i].k}, st[2] = {pools[i].stride, pools[i].stride};
      int64_t p[4] = {pools[i].pad, pools[i].pad, pools[i].pad, pools[i].pad};
      kt_attr_str(o.n, "op", "MaxPool");
      kt_attr_ints(o.n, "kernel_shape", k, 2);
      kt_attr_ints(o.n, "strides", st, 2);
      kt_attr_ints(o.n, "pads", p, 4);
      kt_attr_int(o.n, "ceil_mode", pools[i].ceil);
      float *x = o.in[0].data; /* NaN taps: their outputs NaN, as the reference's */
      for (size_t e = 5; e < kiln_tensor_count(&o.in[0]); e += 97) x[e] = NAN;
    }
    onenode_check(&o, pool, 1e-6f);
    onenode_free(&o);
  }
  /* the reorders, both ways, with pixel counts around the 8 x 8 transposes */
  static const int64_t shapes[][4] = {{1, 8, 1, 1}, {2, 16, 3, 5}, {1, 24, 8, 8}, {1, 32, 9, 7}};
  for (size_t i = 0; i < KILN__ARRAY_LEN(shapes); i++) {
    const int64_t *d = shapes[i];
    int r4[1] = {4}, r5[1] = {5};
    int64_t nchw[1][KILN_MAX_RANK] = {{d[0], d[1], d[2], d[3]}};
    int64_t blk[1][KILN_MAX_RANK] = {{d[0], d[1] / 8, d[2], d[3], 8}};
    onenode o;
    onenode_make(&o, "ToBlocked", 1, r4, nchw, 0);
    onenode_check(&o, pool, 0.0f);
    onenode_free(&o);
    onenode_make(&o, "FromBlocked", 1, r5, blk, 0);
    onenode_check(&o, pool, 0.0f);
    onenode_free(&o);
  }
}

static void blocked_conv_matches_reference(void **st) {
  (void)st;
  for_each_isa(blocked_cases);
}

/* The layout's ops and Attention's layout refuse what they cannot mean, with a message, at
   shape inference (a model file can carry any ai.kiln node). */
static void expect_infer_error(onenode *o, const char *want) {
  const kiln_tensor *ins[MAX_IN];
  for (int i = 0; i < o->n_in; i++) ins[i] = o->in[i].data ? &o->in[i] : NULL;
  kiln_tensor y = {0};
  kiln_tensor *outs[1] = {&y};
  kiln_error err = {0};
  kiln__kctx c = {.node = o->n, .n_in = o->n_in, .n_out = 1, .in = ins, .out = outs, .err = &err};
  assert_int_equal(o->n->op->infer(&c), KILN_INVALID_ARGUMENT);
  if (!strstr(err.message, want)) fail_msg("'%s' does not say '%s'", err.message, want);
}

static void layout_ops_reject_bad_input(void **st) {
  (void)st;
  onenode o;
  int r4[1] = {4}, r5[1] = {5};
  int64_t c12[1][KILN_MAX_RANK] = {{1, 12, 4, 4}}, lane4[1][KILN_MAX_RANK] = {{1, 2, 4, 4, 4}};
  onenode_make(&o, "ToBlocked", 1, r4, c12, 0);
  expect_infer_error(&o, "C a multiple of 8");
  onenode_free(&o);
  onenode_make(&o, "FromBlocked", 1, r5, lane4, 0);
  expect_infer_error(&o, "[N, C/8, H, W, 8]");
  onenode_free(&o);
  onenode_make(&o, "BlockedPool", 1, r5, lane4, 0);
  kt_attr_str(o.n, "op", "MaxPool");
  expect_infer_error(&o, "[N, C/8, H, W, 8]");
  onenode_free(&o);
  int64_t blk[1][KILN_MAX_RANK] = {{1, 2, 4, 4, 8}};
  onenode_make(&o, "BlockedPool", 1, r5, blk, 0);
  kt_attr_str(o.n, "op", "LpPool");
  expect_infer_error(&o, "op must be MaxPool");
  onenode_free(&o);
  /* BlockedConv: an NCHW X without input_layout, an unknown layout, 12 output channels */
  int ranks[2] = {4, 4};
  int64_t conv[2][KILN_MAX_RANK] = {{1, 16, 4, 4}, {8, 16, 1, 1}};
  onenode_make(&o, "BlockedConv", 2, ranks, conv, 2);
  expect_infer_error(&o, "[N, C/8, H, W, 8]");
  kt_attr_str(o.n, "input_layout", "NHWC");
  expect_infer_error(&o, "input_layout must be NCHW8c or NCHW");
  onenode_free(&o);
  int64_t conv12[2][KILN_MAX_RANK] = {{1, 16, 4, 4}, {12, 16, 1, 1}};
  onenode_make(&o, "BlockedConv", 2, ranks, conv12, 2);
  kt_attr_str(o.n, "input_layout", "NCHW");
  expect_infer_error(&o, "multiple of 8 output channels");
  onenode_free(&o);
  /* Attention: an unknown layout; BSHD shapes that disagree (K's H) */
  int r3[3] = {4, 4, 4};
  int64_t qkv[3][KILN_MAX_RANK] = {{1, 5, 2, 4}, {1, 6, 3, 4}, {1, 6, 2, 4}};
  onenode_make(&o, "Attention", 3, r3, qkv, 0);
  kt_attr_float(o.n, "scale", 0.5f);
  kt_attr_str(o.n, "layout", "BHDS");
  expect_infer_error(&o, "layout must be BHSD or BSHD");
  onenode_free(&o);
  onenode_make(&o, "Attention", 3, r3, qkv, 0);
  kt_attr_float(o.n, "scale", 0.5f);
  kt_attr_str(o.n, "layout", "BSHD");
  expect_infer_error(&o, "(BSHD)");
  onenode_free(&o);
}

/* ---- FusedConv, algorithm="winograd" (conv_winograd.c) --------------------------------------- */

static void wino_cases(kiln__pool *pool) {
  /* N, C, H, W, M, pads (top, left, bottom, right), bias, Z, activation index (-1: every one) */
  static const struct {
    int64_t n, c, h, w, m, pads[4];
    int bias, z, act;
  } cases[] = {
      {1, 3, 9, 11, 8, {1, 1, 1, 1}, 1, 1, -1},     /* odd plane, edge tiles, every epilogue */
      {2, 17, 13, 10, 19, {1, 1, 1, 1}, 1, 1, 2},   /* batch 2, C and K not multiples of 8 */
      {1, 64, 17, 17, 64, {0, 0, 0, 0}, 0, 1, 3},   /* no padding, Relu6 */
      {2, 33, 7, 5, 40, {1, 1, 1, 1}, 1, 0, 13},    /* Silu (after the store) */
      {1, 70, 40, 40, 24, {1, 1, 1, 1}, 1, 1, 2},   /* many blocks of tiles */
      {1, 5, 2, 3, 6, {1, 1, 1, 1}, 1, 1, 0},       /* a plane smaller than a tile */
      {1, 300, 6, 6, 7, {1, 1, 1, 1}, 0, 0, 0},     /* C over one packed k block (256) */
      {1, 16, 12, 9, 16, {0, 2, 1, 0}, 1, 1, 2},    /* asymmetric padding */
      {3, 8, 5, 30, 9, {2, 2, 2, 2}, 1, 1, 4},      /* padding 2, a long tile row */
      {1, 20, 4, 5, 130, {1, 1, 1, 1}, 1, 1, 2},    /* K in two parts, one block: split over K */
      {1, 8, 40, 40, 128, {1, 1, 1, 1}, 1, 1, 5},   /* K in two parts, many blocks */
      {1, 24, 13, 13, 136, {1, 1, 1, 1}, 1, 1, 2},  /* 49 tiles: a short last block, split over K */
      {1, 9, 7, 75, 11, {0, 0, 0, 0}, 1, 1, -1},    /* reads in place, 37 tiles a row, width 73 */
      {2, 4, 11, 57, 6, {1, 1, 1, 1}, 1, 1, -1},    /* odd plane, 29 tiles a row (not 8 k) */
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    size_t a0 = cases[i].act < 0 ? 0 : (size_t)cases[i].act;
    size_t a1 = cases[i].act < 0 ? KILN__ARRAY_LEN(acts) : a0 + 1;
    for (size_t a = a0; a < a1; a++) {
      const int64_t *p = cases[i].pads;
      int64_t oh = cases[i].h + p[0] + p[2] - 2, ow = cases[i].w + p[1] + p[3] - 2;
      int n_in = cases[i].z ? 4 : cases[i].bias ? 3 : 2;
      int ranks[4] = {4, 4, cases[i].bias ? 1 : -1, 4};
      int64_t dims[4][KILN_MAX_RANK] = {{cases[i].n, cases[i].c, cases[i].h, cases[i].w},
                                        {cases[i].m, cases[i].c, 3, 3},
                                        {cases[i].m},
                                        {cases[i].n, cases[i].m, oh, ow}};
      onenode o;
      onenode_make(&o, "FusedConv", n_in, ranks, dims, 2);
      kt_attr_ints(o.n, "pads", p, 4);
      kt_attr_str(o.n, "algorithm", "winograd");
      attr_act(o.n, acts[a].name, acts[a].np, acts[a].p0, acts[a].p1);
      assert_true(kiln__cpu_winograd_kernels[0].supports(o.n, o.g));
      onenode_check(&o, pool, 1e-4f);
      onenode_free(&o);
    }
  }
}

/* The Winograd row against the reference conv; it takes only 3x3, stride 1, dilation 1, group 1
   convs marked algorithm="winograd". */
static void winograd_conv_matches_reference(void **st) {
  (void)st;
  for_each_isa(wino_cases);
  static const struct { const char *attr; int64_t v[2]; } misses[] = {
      {"strides", {2, 2}}, {"dilations", {2, 2}}, {"group", {2, 0}}, {"algorithm", {0, 0}}};
  for (size_t i = 0; i < KILN__ARRAY_LEN(misses); i++) {
    int ranks[2] = {4, 4};
    int64_t dims[2][KILN_MAX_RANK] = {{1, 8, 9, 9}, {8, 4 << (i != 2), 3, 3}};
    onenode o;
    onenode_make(&o, "FusedConv", 2, ranks, dims, 2);
    if (i != 3) kt_attr_str(o.n, "algorithm", "winograd");
    if (i == 2) kt_attr_int(o.n, "group", 2);
    else if (i < 2) kt_attr_ints(o.n, misses[i].attr, misses[i].v, 2);
    assert_false(kiln__cpu_winograd_kernels[0].supports(o.n, o.g));
    onenode_free(&o);
  }
}

/* ---- DwPwConv (conv_dwpw.c) ------------------------------------------------------------------ */

static void dwpw_cases(kiln__pool *pool) {
  /* N, C, H, W, K, stride, bias, bias2, Z, depthwise and pointwise activation indexes (-1: every
     one) */
  static const struct {
    int64_t n, c, h, w, k, stride;
    int bias, bias2, z, dw_act, pw_act;
  } cases[] = {
      {1, 20, 13, 13, 12, 1, 1, 1, 1, 3, -1},  /* Relu6 then every pointwise epilogue */
      {2, 20, 13, 13, 12, 2, 1, 1, 1, -1, 0},  /* every depthwise activation, stride 2, batch 2 */
      {1, 9, 1, 1, 5, 1, 1, 0, 1, 2, 2},       /* a 1x1 plane */
      {2, 17, 2, 3, 30, 1, 0, 1, 0, 3, 5},     /* 2x3, K in two parts */
      {1, 24, 3, 7, 13, 2, 1, 1, 1, 3, 0},     /* 3x7 at stride 2 */
      {1, 300, 7, 7, 40, 1, 1, 1, 1, 3, 2},    /* 7x7 (the flat kernel), C over one k block */
      {2, 70, 57, 57, 24, 1, 1, 1, 1, 3, 0},   /* bands of 8 rows, the last one short */
      {1, 33, 57, 41, 10, 2, 1, 1, 1, 4, 13},  /* stride 2, bands of 7 rows, Silu after */
      {1, 64, 1, 40, 48, 1, 1, 1, 1, 3, 2},    /* one band: shared by 2 threads (C, then K) */
      {1, 40, 7, 7, 12, 1, 1, 1, 1, 3, 2},     /* one band, K too short to halve: C shared */
      {1, 16, 29, 29, 8, 2, 0, 0, 0, 0, 0},    /* no bias, no Z, no activation */
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    size_t d0 = cases[i].dw_act < 0 ? 0 : (size_t)cases[i].dw_act;
    size_t d1 = cases[i].dw_act < 0 ? KILN__ARRAY_LEN(acts) : d0 + 1;
    size_t p0 = cases[i].pw_act < 0 ? 0 : (size_t)cases[i].pw_act;
    size_t p1 = cases[i].pw_act < 0 ? KILN__ARRAY_LEN(acts) : p0 + 1;
    for (size_t da = d0; da < d1; da++)
      for (size_t pa = p0; pa < p1; pa++) {
        int64_t s = cases[i].stride, c = cases[i].c, k = cases[i].k;
        int64_t oh = (cases[i].h - 1) / s + 1, ow = (cases[i].w - 1) / s + 1;
        int n_in = cases[i].z ? 6 : cases[i].bias2 ? 5 : 4;
        int ranks[6] = {4, 4, cases[i].bias ? 1 : -1, 4, cases[i].bias2 ? 1 : -1, 4};
        int64_t dims[6][KILN_MAX_RANK] = {{cases[i].n, c, cases[i].h, cases[i].w},
                                          {c, 1, 3, 3}, {c}, {k, c, 1, 1}, {k},
                                          {cases[i].n, k, oh, ow}};
        onenode o;
        onenode_make(&o, "DwPwConv", n_in, ranks, dims, (1u << 1) | (1u << 3));
        const int64_t pads[4] = {1, 1, 1, 1}, strides[2] = {s, s};
        kt_attr_int(o.n, "group", c);
        kt_attr_ints(o.n, "pads", pads, 4);
        kt_attr_ints(o.n, "strides", strides, 2);
        attr_act(o.n, acts[da].name, acts[da].np, acts[da].p0, acts[da].p1);
        attr_act_named(o.n, "pw_", acts[pa].name, acts[pa].np, acts[pa].p0, acts[pa].p1);
        assert_true(kiln__cpu_dwpw_kernels[0].supports(o.n, o.g));
        onenode_check(&o, pool, 1e-4f);
        onenode_free(&o);
      }
  }
}

/* The band kernel against the reference (the depthwise FusedConv, then the 1x1 product in
   double); it does not take a pointwise weight that is not [K, C, 1, 1] or an unknown
   pw_activation. */
static void dwpw_matches_reference(void **st) {
  (void)st;
  for_each_isa(dwpw_cases);
  for (int i = 0; i < 2; i++) {
    int ranks[4] = {4, 4, -1, 4};
    int64_t dims[4][KILN_MAX_RANK] = {{1, 8, 9, 9}, {8, 1, 3, 3}, {8}, {4, 8, 1 + 2 * (i == 0), 1}};
    onenode o;
    onenode_make(&o, "DwPwConv", 4, ranks, dims, (1u << 1) | (1u << 3));
    kt_attr_int(o.n, "group", 8);
    if (i == 1) kt_attr_str(o.n, "pw_activation", "Softplus");
    assert_false(kiln__cpu_dwpw_kernels[0].supports(o.n, o.g));
    onenode_free(&o);
  }
}

/* The AVX2 transforms (intrinsics) against the portable ones (the .inc) on every edge a run can
   have: padding on any side, runs of 1-16 tiles, odd widths, one or two rows, residual, Relu and
   Clip, NaN inputs. The two do the same operations in the same order: bit-identical. */
static void winograd_transforms_match_portable(void **st) {
  (void)st;
  const kiln__wino_tf *g = kiln__wino_tf_get(KILN__ISA_GENERIC);
  const kiln__wino_tf *v = kiln__wino_tf_get(KILN__ISA_AVX2);
  if (!kiln__isa_supported(KILN__ISA_AVX2)) return; /* one implementation there: nothing to pair */
  assert_ptr_not_equal(g, v);
  enum { H = 7, W = 45, XS = 40 };
  static float x[H * W], a[16 * XS], b[16 * XS], z[2 * 64], ya[2 * 64], yb[2 * 64];
  for (size_t i = 0; i < H * W; i++) x[i] = (float)(rnd() % 2001) / 1000.0f - 1.0f;
  x[3 * W + 20] = NAN;
  for (int64_t iy0 = -2; iy0 < H; iy0++)
    for (int64_t ix0 = -3; ix0 < W; ix0 += 2)
      for (size_t nt = 1; nt <= KILN__WINO_RUN; nt++)
        for (size_t room = nt; room <= nt + 9; room += 9) {
          /* lanes [nt, room) of each row are the kernel's to use; past room untouched */
          memset(a, 0, sizeof a);
          for (size_t i = 0; i < 16 * XS; i++) b[i] = -7.0f;
          g->in(x, H, W, iy0, ix0, nt, a, XS, nt);
          v->in(x, H, W, iy0, ix0, nt, b, XS, room);
          for (size_t r = 0; r < 16; r++) {
            assert_memory_equal(a + r * XS, b + r * XS, nt * sizeof(float));
            for (size_t t = room; t < XS; t++) assert_true(b[r * XS + t] == -7.0f);
          }
        }
  for (size_t i = 0; i < 16 * XS; i++) a[i] = (float)(rnd() % 2001) / 100.0f - 10.0f;
  a[5 * XS + 3] = NAN;
  for (size_t i = 0; i < 2 * 64; i++) z[i] = (float)(rnd() % 2001) / 100.0f - 10.0f;
  kiln__act acts3[3] = {KILN__ACT_NONE, KILN__ACT_RELU, KILN__ACT_CLIP};
  for (int ac = 0; ac < 3; ac++)
    for (int zi = 0; zi < 2; zi++)
      for (size_t rows = 1; rows <= 2; rows++)
        for (size_t cols = 1; cols <= 2 * KILN__WINO_RUN; cols++) {
          kiln__wino_ep ep = {.bias = 0.25f, .z = zi ? z : NULL, .act = acts3[ac], .lo = -3.0f,
                              .hi = 6.0f};
          for (size_t i = 0; i < 2 * 64; i++) ya[i] = yb[i] = -99.0f;
          g->out(a, XS, ya, 64, rows, cols, &ep);
          v->out(a, XS, yb, 64, rows, cols, &ep);
          assert_memory_equal(ya, yb, sizeof ya);
        }
}

/* ---- FusedGemm ------------------------------------------------------------------------------- */

static void fgemm_cases(kiln__pool *pool) {
  /* m, n, k, transA, transB, C rank and dims, alpha, beta, Z, B constant, activation */
  static const struct {
    int64_t m, n, k;
    int ta, tb, rc;
    int64_t c0, c1;
    float alpha, beta;
    int z;
    unsigned init;
    int act;
  } cases[] = {
      {1, 100, 64, 0, 1, 1, 100, 0, 1.0f, 1.0f, 0, 2, 2},     /* classifier head + Relu */
      {5, 7, 9, 0, 0, 0, 0, 0, 1.0f, 1.0f, 1, 0, 12},         /* Z only, Gelu */
      {33, 20, 17, 1, 0, 2, 33, 1, 1.0f, 1.0f, 1, 2, 6},      /* per-row C, Tanh */
      {33, 20, 17, 1, 1, 2, 33, 20, 0.5f, 1.0f, 1, 2, 10},    /* full C and Z, LeakyRelu */
      {8, 40, 300, 0, 1, 2, 1, 40, 2.0f, 0.25f, 1, 2, 13},    /* scaled C, Silu */
      {70, 130, 90, 0, 0, 1, 130, 0, 1.0f, 1.0f, 1, 2, 7},    /* HardSigmoid */
      /* bias, Gelu over 37500 outputs: the activation's pass after the GEMM in 3 chunks */
      {150, 250, 40, 0, 1, 1, 250, 0, 1.0f, 1.0f, 0, 2, 12},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    int n_in = cases[i].z ? 4 : cases[i].rc ? 3 : 2;
    int ranks[4] = {2, 2, cases[i].rc ? cases[i].rc : -1, 2};
    int64_t dims[4][KILN_MAX_RANK] = {{0}};
    dims[0][0] = cases[i].ta ? cases[i].k : cases[i].m;
    dims[0][1] = cases[i].ta ? cases[i].m : cases[i].k;
    dims[1][0] = cases[i].tb ? cases[i].n : cases[i].k;
    dims[1][1] = cases[i].tb ? cases[i].k : cases[i].n;
    dims[2][0] = cases[i].c0;
    dims[2][1] = cases[i].c1;
    dims[3][0] = cases[i].m;
    dims[3][1] = cases[i].n;
    onenode o;
    onenode_make(&o, "FusedGemm", n_in, ranks, dims, cases[i].init);
    kt_attr_int(o.n, "transA", cases[i].ta);
    kt_attr_int(o.n, "transB", cases[i].tb);
    kt_attr_float(o.n, "alpha", cases[i].alpha);
    kt_attr_float(o.n, "beta", cases[i].beta);
    const int a = cases[i].act;
    attr_act(o.n, acts[a].name, acts[a].np, acts[a].p0, acts[a].p1);
    onenode_check(&o, pool, 1e-4f);
    onenode_free(&o);
  }
}

static void fused_gemm_matches_reference(void **st) {
  (void)st;
  for_each_isa(fgemm_cases);
}

/* ---- FusedMatMul ----------------------------------------------------------------------------- */

static void fmatmul_cases(kiln__pool *pool) {
  static const struct {
    int ra, rb, rz;
    int64_t a[4], b[4], z[4];
    int ta, tb, bias;
    float alpha;
    unsigned init;
    int act;
  } cases[] = {
      /* a BERT projection: packed B, Bias, full Z, Gelu */
      {3, 2, 3, {2, 17, 33}, {33, 20}, {2, 17, 20}, 0, 0, 1, 1.0f, 2, 12},
      /* Q K^T: batched transB, scaled, a broadcast mask as Z */
      {4, 4, 4, {2, 4, 9, 16}, {2, 4, 12, 16}, {2, 1, 1, 12}, 0, 1, 0, 0.25f, 0, 0},
      /* transA with batch broadcasting, Sigmoid, Z a row */
      {3, 3, 1, {3, 16, 9}, {1, 16, 7}, {7}, 1, 0, 1, 1.0f, 0, 5},
      /* transB on a constant B, no Z */
      {2, 2, -1, {30, 40}, {50, 40}, {0}, 0, 1, 1, 1.0f, 2, 3},
      /* a BERT FFN1: one tall product on a packed B, Bias, Gelu after the GEMM over 78000
         outputs in 5 chunks (and GeluTanh below, over a residual) */
      {3, 2, -1, {2, 130, 64}, {64, 300}, {0}, 0, 0, 1, 1.0f, 2, 12},
      {3, 2, 3, {2, 130, 64}, {64, 300}, {2, 130, 300}, 0, 0, 1, 1.0f, 2, 14},
      /* large enough for the pool, per-batch products, full Z, Silu */
      {3, 3, 3, {3, 70, 80}, {3, 80, 90}, {3, 70, 90}, 0, 0, 1, 1.0f, 0, 13},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    int n_in = cases[i].rz >= 0 ? 4 : cases[i].bias ? 3 : 2;
    int64_t n = cases[i].tb ? cases[i].b[cases[i].rb - 2] : cases[i].b[cases[i].rb - 1];
    int ranks[4] = {cases[i].ra, cases[i].rb, cases[i].bias ? 1 : -1, cases[i].rz};
    int64_t dims[4][KILN_MAX_RANK] = {{0}};
    memcpy(dims[0], cases[i].a, sizeof cases[i].a);
    memcpy(dims[1], cases[i].b, sizeof cases[i].b);
    dims[2][0] = n;
    memcpy(dims[3], cases[i].z, sizeof cases[i].z);
    onenode o;
    onenode_make(&o, "FusedMatMul", n_in, ranks, dims, cases[i].init);
    kt_attr_int(o.n, "transA", cases[i].ta);
    kt_attr_int(o.n, "transB", cases[i].tb);
    kt_attr_float(o.n, "alpha", cases[i].alpha);
    const int a = cases[i].act;
    attr_act(o.n, acts[a].name, acts[a].np, acts[a].p0, acts[a].p1);
    onenode_check(&o, pool, 1e-4f);
    onenode_free(&o);
  }
}

static void fused_matmul_matches_reference(void **st) {
  (void)st;
  for_each_isa(fmatmul_cases);
}

/* ---- LayerNorm, RMSNorm, Gelu ---------------------------------------------------------------- */

static void rows_cases(kiln__pool *pool) {
  static const struct {
    const char *op;
    int n_in, rank;
    int64_t x[4];
  } cases[] = {
      {"LayerNorm", 3, 3, {3, 5, 97}}, {"LayerNorm", 2, 2, {2, 768}}, {"LayerNorm", 3, 1, {7}},
      {"RMSNorm", 2, 3, {4, 7, 131}},  {"RMSNorm", 2, 2, {1, 768}},   {"RMSNorm", 2, 2, {3, 5}},
      {"Gelu", 1, 2, {3, 1029}},       {"Gelu", 1, 3, {1, 1, 1}},
      {"Gelu", 1, 2, {5, 333}}, /* approximate="tanh" (the last case) */
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    int r = cases[i].rank;
    int ranks[3] = {r, 1, 1};
    int64_t dims[3][KILN_MAX_RANK] = {{0}, {cases[i].x[r - 1]}, {cases[i].x[r - 1]}};
    memcpy(dims[0], cases[i].x, sizeof cases[i].x);
    onenode o;
    onenode_make(&o, cases[i].op, cases[i].n_in, ranks, dims, 6);
    if (i == 1) kt_attr_float(o.n, "epsilon", 1e-3f);
    if (i == KILN__ARRAY_LEN(cases) - 1) kt_attr_str(o.n, "approximate", "tanh");
    onenode_check(&o, pool, 2e-5f);
    onenode_free(&o);
  }
}

static void norms_and_gelu_match_reference(void **st) {
  (void)st;
  for_each_isa(rows_cases);
}

/* ---- Attention ------------------------------------------------------------------------------- */

/* Mask patterns: random padding (-1e9 on a fifth of the entries; never key 0, which every causal
   row sees: a row whose visible keys all carry -1e9 is decided by the reference's double sums
   that float cannot hold, scores like -1e9 + 0.3), or -inf on every key of the
   first 130 (the whole first key block and a bit of the next) for even query rows, or -inf on
   every key for every third query row (the output row is NaN in both kernels, as unfused). */
enum { MASK_RANDOM, MASK_FIRST_BLOCK, MASK_ALL_KEYS };

static void attention_cases(kiln__pool *pool) {
  static const struct {
    int64_t b, h, s, t, d, dv;
    int mask_rank;
    int64_t mask[4];
    int causal, pattern, bshd; /* bshd: layout BSHD, heads inside rows (strided Q, K, V, Y) */
  } cases[] = {
      {2, 3, 17, 150, 16, 24, 0, {0}, 0, 0},            /* two key blocks, no mask */
      {2, 3, 17, 150, 16, 24, 4, {2, 1, 1, 150}, 0, 0}, /* a padding mask, broadcast */
      {1, 2, 40, 40, 32, 32, 4, {1, 2, 40, 40}, 0, 0},  /* a full mask */
      {1, 2, 70, 70, 8, 8, 0, {0}, 1, 0},               /* causal, S = T, two query blocks */
      {1, 1, 5, 100, 8, 16, 2, {5, 100}, 1, 0},         /* causal with a KV cache, mask */
      {2, 2, 1, 33, 64, 64, 1, {33}, 0, 0},             /* one query row */
      {1, 1, 9, 3, 4, 4, 0, {0}, 1, 0},                 /* causal T < S: early rows see nothing */
      /* odd lengths and key blocks with a partial tail (blocks of 128 keys, 64 query rows) */
      {1, 3, 131, 131, 13, 7, 0, {0}, 0, 0},            /* odd D, Dv; tail of 3 keys */
      {2, 1, 65, 257, 24, 40, 2, {65, 257}, 0, 0},      /* three key blocks, 2-D mask */
      {1, 2, 200, 200, 32, 32, 4, {1, 2, 200, 200}, 1, 0}, /* causal over key blocks, 4-D mask */
      {1, 1, 77, 300, 16, 16, 4, {1, 1, 77, 1}, 0, 0},  /* a mask broadcast along T */
      {2, 2, 66, 129, 8, 8, 4, {2, 1, 1, 129}, 1, 0},   /* causal with T > S, padding mask */
      {1, 2, 30, 200, 16, 16, 4, {1, 1, 30, 200}, 0, MASK_FIRST_BLOCK}, /* max from -inf */
      {1, 1, 20, 140, 8, 8, 2, {20, 140}, 0, MASK_ALL_KEYS}, /* NaN rows */
      {1, 1, 10, 20, 130, 300, 0, {0}, 0, 0},           /* D over one block, Dv > 256 */
      {3, 12, 70, 40, 4, 4, 1, {40}, 0, 0},             /* 72 tasks, more than slots */
      /* BSHD: rows H * D apart; two key blocks and a padding mask, causal over blocks with a
         4-D mask, odd D and Dv with a partial key tail, D over one block, NaN rows */
      {2, 3, 17, 150, 16, 24, 4, {2, 1, 1, 150}, 0, 0, 1},
      {1, 2, 200, 200, 32, 32, 4, {1, 2, 200, 200}, 1, 0, 1},
      {1, 3, 131, 131, 13, 7, 0, {0}, 0, 0, 1},
      {1, 2, 10, 20, 130, 300, 0, {0}, 0, 0, 1},
      {1, 4, 20, 140, 8, 8, 2, {20, 140}, 0, MASK_ALL_KEYS, 1},
      /* minilm_l12's shape: two query blocks share one key block's K and V per head */
      {2, 3, 128, 128, 32, 32, 4, {2, 1, 1, 128}, 0, 0, 1},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    int n_in = cases[i].mask_rank ? 4 : 3;
    int ranks[4] = {4, 4, 4, cases[i].mask_rank};
    int64_t dims[4][KILN_MAX_RANK] = {
        {cases[i].b, cases[i].h, cases[i].s, cases[i].d},
        {cases[i].b, cases[i].h, cases[i].t, cases[i].d},
        {cases[i].b, cases[i].h, cases[i].t, cases[i].dv}};
    if (cases[i].bshd)
      for (int t = 0; t < 3; t++) { /* [B,H,R,W] -> [B,R,H,W] */
        int64_t h = dims[t][1];
        dims[t][1] = dims[t][2];
        dims[t][2] = h;
      }
    memcpy(dims[3], cases[i].mask, sizeof cases[i].mask);
    onenode o;
    onenode_make(&o, "Attention", n_in, ranks, dims, 0);
    if (cases[i].mask_rank) {
      const kiln_tensor *mt = &o.in[3];
      float *m = mt->data;
      size_t cols = (size_t)mt->dims[mt->rank - 1];
      size_t rows_ = (size_t)cases[i].s; /* the mask's query axis (when it has one) */
      for (size_t k = 0; k < kiln_tensor_count(mt); k++) {
        size_t t = k % cols, srow = mt->rank >= 2 ? k / cols % rows_ : 0;
        if (cases[i].pattern == MASK_RANDOM && t > 0 && rnd() % 5 == 0) m[k] = -1e9f;
        if (cases[i].pattern == MASK_FIRST_BLOCK && srow % 2 == 0 && t < 130) m[k] = -INFINITY;
        if (cases[i].pattern == MASK_ALL_KEYS && srow % 3 == 0) m[k] = -INFINITY;
      }
    }
    kt_attr_float(o.n, "scale", 1.0f / sqrtf((float)cases[i].d));
    kt_attr_int(o.n, "causal", cases[i].causal);
    if (cases[i].bshd) kt_attr_str(o.n, "layout", "BSHD");
    onenode_check(&o, pool, 1e-4f);
    onenode_free(&o);
  }
}

static void attention_matches_reference(void **st) {
  (void)st;
  for_each_isa(attention_cases);
}

/* Rows match on op name and domain: a node of another domain with a row's name is not taken, and
   an unknown activation is left to the reference kernel (which reports it). */
static void rows_check_domain_and_activation(void **st) {
  (void)st;
  int ranks[2] = {2, 2};
  int64_t dims[2][KILN_MAX_RANK] = {{4, 5}, {5, 6}};
  onenode o;
  onenode_make(&o, "FusedMatMul", 2, ranks, dims, 0);
  assert_true(kiln__backend_cpu.supports(o.n, o.g));
  kiln__free(o.n->domain);
  o.n->domain = kiln__strdup("com.example");
  assert_false(kiln__backend_cpu.supports(o.n, o.g));
  kiln__free(o.n->domain);
  o.n->domain = kiln__strdup("ai.kiln");
  kt_attr_str(o.n, "activation", "Softplus");
  assert_false(kiln__backend_cpu.supports(o.n, o.g));
  onenode_free(&o);
  int r1[1] = {2};
  onenode_make(&o, "RMSNorm", 1, r1, dims, 0);
  kiln__free(o.n->domain);
  o.n->domain = kiln__strdup("");
  assert_false(kiln__backend_cpu.supports(o.n, o.g));
  onenode_free(&o);
  /* The default domain's rows take "" and "ai.onnx" only (MatMul's supports() never looked). */
  static const char *const plain[][2] = {{"FusedMatMul", "MatMul"}, {"Gelu", "Relu"}};
  for (int i = 0; i < 2; i++) {
    onenode_make(&o, plain[i][0], i == 0 ? 2 : 1, ranks, dims, 0);
    kiln__free(o.n->op_type);
    o.n->op_type = kiln__strdup(plain[i][1]);
    o.n->op = kiln__op_find("", plain[i][1]);
    assert_non_null(o.n->op);
    static const char *const domains[] = {"", "ai.onnx", "com.example", "ai.kiln"};
    for (int d = 0; d < 4; d++) {
      kiln__free(o.n->domain);
      o.n->domain = kiln__strdup(domains[d]);
      assert_int_equal(kiln__backend_cpu.supports(o.n, o.g), d < 2);
    }
    onenode_free(&o);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(fused_conv_matches_reference),
      cmocka_unit_test(blocked_conv_matches_reference),
      cmocka_unit_test(layout_ops_reject_bad_input),
      cmocka_unit_test(winograd_conv_matches_reference),
      cmocka_unit_test(winograd_transforms_match_portable),
      cmocka_unit_test(dwpw_matches_reference),
      cmocka_unit_test(fused_gemm_matches_reference),
      cmocka_unit_test(fused_matmul_matches_reference),
      cmocka_unit_test(norms_and_gelu_match_reference),
      cmocka_unit_test(attention_matches_reference),
      cmocka_unit_test(rows_check_domain_and_activation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
