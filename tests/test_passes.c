/* The graph optimizer, proved differentially: each small model in tests/models/pass_*.onnx
   (tools/make_pass_models.py) exercises one pass. The model loaded at opt level 0 (the reference
   backend on the unrewritten graph) is the oracle: the optimized model must give the same
   outputs, bit for bit where the rewrite is exact, else within 1e-5 of the output's largest
   magnitude. The pass report must show the pass matched where the model was built to match and
   the node count the rewrite implies. Also: the shipped models, output names kept, level 0
   changing nothing, level 1 not fusing, and allocation failures during optimization. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h> /* setenv */
#include <string.h>

#include <cmocka.h>

#include "kiln_test.h"

#include "kiln/kiln.h"
#include "kiln/passes.h"
#include "core/common.h" /* kiln__alloc_fail_after */
#include "kernels/cpu/sgemm.h" /* kiln__isa_supported: blocked-layout runs with AVX2 */

static const char *models_dir; /* argv[1]: the repository's models/ */
static const char *tests_dir;  /* argv[2]: the repository's tests/ */

static void path_of(char *buf, size_t n, const char *dir, const char *file) {
  snprintf(buf, n, "%s/%s", dir, file);
}

static kiln_model *load_at(const char *path, int level) { return kt_load(path, 1, level); }

static uint64_t next_rand(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Random float inputs in [-2, 2) for every input of `m`; symbolic dims become 3. */
static size_t make_inputs(const kiln_model *m, uint64_t seed, const char **names, kiln_tensor *in) {
  size_t n = kiln_model_input_count(m);
  assert_true(n <= 8);
  for (size_t i = 0; i < n; i++) {
    kiln_io_info io;
    assert_int_equal(kiln_model_input_info(m, i, &io), KILN_OK);
    assert_int_equal(io.dtype, KILN_DTYPE_FLOAT);
    int64_t dims[KILN_MAX_RANK];
    for (int d = 0; d < io.rank; d++) dims[d] = io.dims[d] >= 0 ? io.dims[d] : 3;
    kiln_error err = {0};
    assert_int_equal(kiln_tensor_alloc(&in[i], KILN_DTYPE_FLOAT, io.rank, dims, &err), KILN_OK);
    float *p = in[i].data;
    for (size_t e = 0; e < kiln_tensor_count(&in[i]); e++)
      p[e] = (float)((double)(next_rand(&seed) >> 11) * (4.0 / 9007199254740992.0) - 2.0);
    names[i] = io.name;
  }
  return n;
}

/* Runs the model at level 0 and at `level` on the same random inputs and compares every output:
   memcmp when `exact`, else max|a-b| <= 1e-5 * max|ref|. */
static void differential2(const char *ref_path, int ref_level, const char *path, int level,
                          bool exact) {
  kiln_model *ref = load_at(ref_path, ref_level), *opt = load_at(path, level);
  assert_int_equal(kiln_model_output_count(ref), kiln_model_output_count(opt));
  assert_int_equal(kiln_model_input_count(ref), kiln_model_input_count(opt));
  kiln_session *sr = NULL, *so = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(ref, &sr, &err), KILN_OK);
  assert_int_equal(kiln_session_create(opt, &so, &err), KILN_OK);
  for (uint64_t seed = 1; seed <= 3; seed++) {
    const char *names[8];
    kiln_tensor in[8];
    size_t n = make_inputs(ref, seed, names, in);
    assert_int_equal(kiln_session_run(sr, names, in, n, &err), KILN_OK);
    if (kiln_session_run(so, names, in, n, &err) != KILN_OK) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(err.status, KILN_OK);
    for (size_t o = 0; o < kiln_model_output_count(ref); o++) {
      kiln_io_info ir, io;
      kiln_model_output_info(ref, o, &ir);
      kiln_model_output_info(opt, o, &io);
      assert_string_equal(ir.name, io.name); /* outputs keep their names and order */
      kiln_tensor a, b;
      assert_int_equal(kiln_session_output(sr, o, &a), KILN_OK);
      assert_int_equal(kiln_session_output(so, o, &b), KILN_OK);
      assert_int_equal(a.dtype, b.dtype);
      assert_int_equal(a.rank, b.rank);
      for (int d = 0; d < a.rank; d++) assert_int_equal(a.dims[d], b.dims[d]);
      if (exact) {
        assert_memory_equal(a.data, b.data, kiln_tensor_nbytes(&a));
        continue;
      }
      assert_int_equal(a.dtype, KILN_DTYPE_FLOAT);
      const float *x = a.data, *y = b.data;
      double maxref = 0, maxdiff = 0;
      for (size_t e = 0; e < kiln_tensor_count(&a); e++) {
        maxref = fmax(maxref, fabs(x[e]));
        maxdiff = fmax(maxdiff, fabs((double)x[e] - y[e]));
      }
      if (maxdiff > 1e-5 * maxref)
        fprintf(stderr, "%s output %s: max diff %g, max |ref| %g\n", path, ir.name, maxdiff, maxref);
      assert_true(maxdiff <= 1e-5 * maxref);
    }
    for (size_t i = 0; i < n; i++) kiln_tensor_release(&in[i]);
  }
  kiln_session_free(sr);
  kiln_session_free(so);
  kiln_model_free(ref);
  kiln_model_free(opt);
}

static void differential(const char *path, int level, bool exact) {
  differential2(path, 0, path, level, exact);
}

/* Rewrites `pass` made at `level`, summed over rounds; the graph's node counts before/after. */
static size_t pass_matches(const char *path, int level, const char *pass, size_t *before,
                           size_t *after) {
  kiln_pass_report *r = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_pass_report_load(path, level, &r, &err), KILN_OK);
  kiln_pass_report_summary(r, NULL, before, after);
  size_t total = 0;
  for (size_t i = 0; i < kiln_pass_report_count(r); i++) {
    kiln_pass_change c;
    assert_int_equal(kiln_pass_report_get(r, i, &c), KILN_OK);
    assert_true(c.round >= 1);
    if (!strcmp(c.pass, pass)) total += c.matches;
  }
  kiln_pass_report_free(r);
  return total;
}

typedef struct pass_case {
  const char *file;
  const char *pass;
  int level;
  size_t matches;               /* rewrites the model was built to need */
  size_t nodes_before, nodes_after;
  bool exact;                   /* the rewrite computes the same floats */
} pass_case;

static void check_case(const pass_case *pc) {
  char path[1024];
  path_of(path, sizeof path, tests_dir, pc->file);
  size_t before, after;
  assert_int_equal(pass_matches(path, pc->level, pc->pass, &before, &after), pc->matches);
  assert_int_equal(before, pc->nodes_before);
  assert_int_equal(after, pc->nodes_after);
  kiln_model *m = load_at(path, pc->level);
  kiln_model_stats st;
  kiln_model_stats_get(m, &st);
  assert_int_equal(st.node_count, pc->nodes_after);
  kiln_model_free(m);
  differential(path, pc->level, pc->exact);
}

/* One level below pc->level the pass matches nothing and the graph keeps `nodes` nodes. */
static void check_not_below(const pass_case *pc, size_t nodes) {
  char path[1024];
  path_of(path, sizeof path, tests_dir, pc->file);
  size_t before, after;
  assert_int_equal(pass_matches(path, pc->level - 1, pc->pass, &before, &after), 0);
  assert_int_equal(after, nodes);
}

/* identity: id_in, drop, id_mid go; id_out2 goes by making Tanh write y3; id_out stays (its
   input has another reader) and id_keep stays (graph input to graph output). */
static void identity_elim(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_identity.onnx", "identity-elim", 1, 4, 10, 6, true});
}

/* Constant, Mul, Add of constants and the Shape chain fold: MatMul and Reshape remain. */
static void constant_fold(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_const_fold.onnx", "constant-fold", 1, 7, 9, 2, true});
}

/* relu2 and leaky2 merge; leaky3 (other alpha) stays. */
static void cse(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_cse.onnx", "cse", 1, 2, 7, 5, true});
}

/* The dead Exp -> Mul branch goes, and both unused initializers are dropped (2 + 2). */
static void dead_code(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_dce.onnx", "dead-code", 1, 4, 3, 1, true});
}

static void conv_bn_fold(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_conv_bn.onnx", "conv-bn-fold", 1, 2, 5, 3, false});
}

/* Mul and Add into conv, Mul into matmul; the spatially varying Mul stays. */
static void affine_fold(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_affine.onnx", "affine-fold", 1, 3, 7, 4, false});
}

static void fuse_layernorm(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_layernorm.onnx", "fuse-layernorm", 2, 1, 9, 1, false});
}

static void fuse_gelu(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_gelu.onnx", "fuse-gelu", 2, 1, 5, 1, false});
}

/* The tanh form as torch and Hugging Face export it (9 and 8 nodes -> one Gelu each, with
   approximate="tanh"); the 0.05 near-miss keeps its 9 nodes. */
static void fuse_gelu_tanh(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_gelu_tanh.onnx", "fuse-gelu", 2, 2, 26, 11, false});
}

/* conv1: residual + Relu; conv2: Relu6; conv3: x * HardSigmoid(x); conv4: Relu (the Add after it
   stays); gemm: LeakyRelu; mm1: bias + SiLU; mm2: transA + broadcast residual + GELU (fused by
   fuse-gelu first); mm3's output is read twice and stays: 11 rewrites, 24 -> 11 nodes after
   folding the constant Transpose and fuse-gelu. Not bit-equal only because of HardSwish. */
static void fuse_linear(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_linear.onnx", "fuse-linear", 2, 11, 29, 11, false});
}

/* HardSwish as PaddlePaddle writes it, x * Clip(x + 3, 0, 6) / 6 (conv_a) or with the operands
   swapped and * (1/6) (conv_b), fused into the conv; the near-misses (+2.5, Clip to 5) keep their
   4 nodes each. Not bit-equal: the kernel computes x * clip(x / 6 + 1/2, 0, 1). */
static void fuse_hardswish(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_hswish.onnx", "fuse-linear", 2, 2, 20, 12, false});
}

/* Three attention blocks (K^T by Transpose(0,2,3,1) with Div scale and a mask input; by
   Transpose(0,1,3,2) of K with Mul scale, no mask; the first form without a head merge, Y a
   graph output), T = 80 over two blocks of the online softmax; symbolic batch. Each block's 5
   nodes become one Attention. The first two also lose their 4 head Transposes (split of Q, K, V,
   merge of Y; the second its 0,1,3,2 one too): 16 nodes -> 8 each, layout BSHD. The third keeps
   its split (K's Transpose with perm 0,2,1,3): 13 -> 10, layout BHSD. */
static void fuse_attention(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_attention.onnx", "fuse-attention", 2, 3, 45, 26, false});
}

/* blocked-layout: the inverted-residual chain (6 convs after fuse-linear) runs in NCHW8c, its
   stem writing the layout itself (7 rewrites, one FromBlocked); the chain from the graph input
   (1x1, depthwise and 3x3 convs, a MaxPool, a Concat, a GlobalAveragePool: 6 rewrites) with a
   ToBlocked and a FromBlocked; the region with 4 reorders for 3 convs and the region of 2
   stay: 19 -> 22 nodes after level 2's 26 -> 19. Nothing at level 2. */
static void blocked_layout(void **s) {
  (void)s;
  pass_case pc = {"models/pass_blocked.onnx", "blocked-layout", 3, 13, 26, 22, false};
  if (kiln__isa_supported(KILN__ISA_AVX2)) {
    setenv("KILN_ISA", "avx2", 1);
    check_case(&pc);
    check_not_below(&pc, 19);
  }
  /* Only with the AVX2 kernels: the generic ISA (any machine) keeps level 2's graph. */
  setenv("KILN_ISA", "generic", 1);
  pass_case none = {"models/pass_blocked.onnx", "blocked-layout", 3, 0, 26, 19, false};
  check_case(&none);
  unsetenv("KILN_ISA");
}

static void fuse_rmsnorm(void **s) {
  (void)s;
  check_case(&(pass_case){"models/pass_rmsnorm.onnx", "fuse-rmsnorm", 2, 2, 13, 2, false});
}

/* Attention with causal = 1 (S = 40 queries, T = 100 keys) against the unfused graph with the
   -inf mask its definition implies; and that graph fused (mask as an input). */
static void attention_causal(void **s) {
  (void)s;
  char ref[1024], fused[1024];
  path_of(ref, sizeof ref, tests_dir, "models/pass_causal_ref.onnx");
  path_of(fused, sizeof fused, tests_dir, "models/pass_causal_fused.onnx");
  differential2(ref, 0, fused, 0, false);
  differential(ref, 2, false);
}

/* kiln optimize: the written file, loaded with no passes, computes what the original computes at
   level 0, holds the fused graph (its node count), and loading it runs no pass again. */
static void optimize_roundtrip(void **s) {
  (void)s;
  const char *files[] = {"models/transformer_block.onnx", "models/pass_linear.onnx",
                         "models/pass_attention.onnx", "models/pass_rmsnorm.onnx",
                         "models/pass_winograd.onnx", "models/pass_dwpw.onnx"};
  const char *out = "test_passes_optimized.onnx";
  for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
    char path[1024];
    path_of(path, sizeof path, tests_dir, files[f]);
    kiln_error err = {0};
    if (kiln_optimize_file(path, out, -1, &err) != KILN_OK) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(err.status, KILN_OK);
    differential2(path, 0, out, 0, false);
    size_t before, after, again_before, again_after;
    pass_matches(path, -1, "", &before, &after);
    pass_matches(out, -1, "", &again_before, &again_after);
    assert_int_equal(again_before, after);
    assert_int_equal(again_after, after);
    assert_true(after < before);
    /* the file says which level it was optimized at, so loading it runs no pass at all */
    kiln_pass_report *r = NULL;
    assert_int_equal(kiln_pass_report_load(out, -1, &r, &err), KILN_OK);
    int level = -1;
    size_t nb = 0, na = 0;
    kiln_pass_report_summary(r, &level, &nb, &na);
    assert_int_equal(level, 0);
    assert_int_equal(kiln_pass_report_count(r), 0);
    kiln_pass_report_free(r);
  }
  remove(out);
}

/* Level 0 changes nothing; level 1 leaves the fusion patterns alone. */
static void levels(void **s) {
  (void)s;
  char path[1024];
  size_t before, after;
  path_of(path, sizeof path, tests_dir, "models/pass_identity.onnx");
  assert_int_equal(pass_matches(path, 0, "identity-elim", &before, &after), 0);
  assert_int_equal(before, after);
  path_of(path, sizeof path, tests_dir, "models/pass_layernorm.onnx");
  assert_int_equal(pass_matches(path, 1, "fuse-layernorm", &before, &after), 0);
  assert_int_equal(after, 9);
  path_of(path, sizeof path, tests_dir, "models/pass_gelu.onnx");
  assert_int_equal(pass_matches(path, 1, "fuse-gelu", &before, &after), 0);
  assert_int_equal(after, 5);
  int level;
  assert_non_null(kiln_pass_name(0, &level));
  assert_null(kiln_pass_name(1000, &level));
}

/* The shipped models agree at level 0 and at the highest level. */
static void shipped_models(void **s) {
  (void)s;
  char path[1024];
  path_of(path, sizeof path, tests_dir, "models/transformer_block.onnx");
  differential(path, -1, false);
  path_of(path, sizeof path, models_dir, "digits/digits_cnn.onnx");
  differential(path, -1, false);
}

/* Every allocation during an optimized load failing in turn: a clean error, never a crash or a
   leak (leaks are caught under KILN_SANITIZE). */
static void alloc_failures(void **s) {
  (void)s;
  const char *files[] = {"models/pass_conv_bn.onnx", "models/pass_const_fold.onnx",
                         "models/pass_affine.onnx", "models/pass_identity.onnx",
                         "models/pass_layernorm.onnx", "models/pass_gelu.onnx",
                         "models/pass_gelu_tanh.onnx",
                         "models/pass_linear.onnx", "models/pass_attention.onnx",
                         "models/pass_rmsnorm.onnx", "models/pass_chain.onnx",
                         "models/pass_winograd.onnx", "models/pass_dwpw.onnx"};
  for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
    char path[1024];
    path_of(path, sizeof path, tests_dir, files[f]);
    bool loaded = false;
    for (uint64_t n = 1; n < 100000 && !loaded; n++) {
      kiln_model_opts o = kiln_model_opts_default();
      kiln_model *m = NULL;
      kiln_error err = {0};
      kiln__alloc_fail_after(n);
      kiln_status st = kiln_model_load(path, &o, &m, &err);
      kiln__alloc_fail_after(0);
      if (st == KILN_OK) {
        loaded = true;
        kiln_model_free(m);
      } else {
        assert_null(m);
        assert_true(err.message[0] != 0);
      }
    }
    assert_true(loaded);
  }
}

/* fuse-chain: mm_a+add_a+mm_b fold (bias carried through W2), mm3_a..c fold over two rounds; the
   bottleneck, the Relu between and the intermediate that is a graph output stay. Not at level 1. */
static void fuse_chain(void **s) {
  (void)s;
  const pass_case pc = {"models/pass_chain.onnx", "fuse-chain", 2, 3, 13, 8, false};
  check_case(&pc);
  check_not_below(&pc, 13);
}

/* winograd (level 3): conv_w1, conv_w2 and conv_w7 (their Relu, residual Add and Sigmoid fused
   first), conv_c16 (16 input channels) and conv_p7 (a 7x7 output) are marked; the stride-2,
   8-input-channel, 32-output-channel, dilated and grouped convs and conv_p5 (5x5) are not; the
   cpu backend's Winograd kernel then runs them within 1e-5 of level 0's direct conv. Level 2
   marks nothing. */
static void winograd(void **s) {
  (void)s;
  const pass_case pc = {"models/pass_winograd.onnx", "winograd", 3, 5, 16, 13, false};
  check_case(&pc);
  check_not_below(&pc, 13);
}

/* fuse-dwpw (level 3): dwa+pwa (Relu6 between; bias, residual and Relu after) and dwb+pwb (no
   bias, Sigmoid) become DwPwConv; the stride-2 pair, the depthwise output that is also a graph
   output, the 3x3 reader, the 5x5 and the group-2 conv stay. The cpu backend's band kernel then
   computes them within 1e-5 of level 0's unfused graph. Level 2 fuses none. */
static void fuse_dwpw(void **s) {
  (void)s;
  const pass_case pc = {"models/pass_dwpw.onnx", "fuse-dwpw", 3, 2, 18, 12, false};
  check_case(&pc);
  check_not_below(&pc, 14);
}

/* fuse-qdq-out: mm1 (+ bias), mm2 (no Add), mm3 (bias first, rank 3) and mm5's DequantizeLinear
   (its Add reads two activations: kept) fused; mm4's 8-bit output is a graph output: left. The
   fused op computes the same floats (exact), 14 nodes -> 8; nothing at level 1. */
static void fuse_qdq_out(void **s) {
  (void)s;
  const pass_case pc = {"models/pass_qdq_out.onnx", "fuse-qdq-out", 2, 4, 14, 8, true};
  check_case(&pc);
  check_not_below(&pc, 14);
}

/* fuse-qdq-out's int8-dynamic form: dm1 (+ bias) and dm2 (scale product and Mul operands the
   other way round, no Add) become MatMulIntegerToFloat, dm3 (its scale product is also a graph
   output) stays; exact, 14 nodes -> 7; nothing at level 1. */
static void fuse_dyn_out(void **s) {
  (void)s;
  const pass_case pc = {"models/pass_dyn_out.onnx", "fuse-qdq-out", 2, 2, 14, 7, true};
  check_case(&pc);
  check_not_below(&pc, 14);
}

/* fuse-rowq: the row quantizations of x (uint8 with + 128) and x2 (int8) become
   DynamicQuantizeRows, rm1 (+ bias), rm2 (its Add reads two activations: kept) and rm3 (no zero
   points) RowQuantMatMul; x3's (floor 0) and with it rm4, and rm5 (the two Muls the other way
   round) stay. Exact, 45 nodes -> 22; nothing at level 1. */
static void fuse_rowq(void **s) {
  (void)s;
  const pass_case pc = {"models/pass_rowq.onnx", "fuse-rowq", 2, 5, 45, 22, true};
  check_case(&pc);
  check_not_below(&pc, 45);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_passes MODELS_DIR TESTS_DIR\n");
    return 2;
  }
  models_dir = argv[1];
  tests_dir = argv[2];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(identity_elim),  cmocka_unit_test(constant_fold),
      cmocka_unit_test(cse),            cmocka_unit_test(dead_code),
      cmocka_unit_test(conv_bn_fold),   cmocka_unit_test(affine_fold),
      cmocka_unit_test(fuse_layernorm), cmocka_unit_test(fuse_gelu),
      cmocka_unit_test(fuse_gelu_tanh), cmocka_unit_test(fuse_hardswish),
      cmocka_unit_test(fuse_linear),    cmocka_unit_test(fuse_attention),
      cmocka_unit_test(blocked_layout),
      cmocka_unit_test(fuse_rmsnorm),   cmocka_unit_test(attention_causal),
      cmocka_unit_test(fuse_chain),     cmocka_unit_test(winograd),
      cmocka_unit_test(fuse_dwpw),      cmocka_unit_test(fuse_qdq_out),
      cmocka_unit_test(fuse_dyn_out),   cmocka_unit_test(fuse_rowq),
      cmocka_unit_test(optimize_roundtrip),
      cmocka_unit_test(levels),         cmocka_unit_test(shipped_models),
      cmocka_unit_test(alloc_failures),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
