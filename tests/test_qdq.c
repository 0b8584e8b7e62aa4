/* fuse-qdq, proved differentially: the QDQ models tools/make_qdq_models.py writes
   (tests/models/qdq_*.onnx) loaded at level 0 (the reference Q/DQ and float ops: the oracle) and at
   level 2 (QLinearConv / QLinearMatMul) on random inputs. The fused op requantizes its int32 sum
   once where the QDQ graph rounds a float sum, so an output may move by one quantization step
   (its output scale, listed in qdq_NAME.steps) and by no more; most elements must be equal. The
   report must show exactly the fusions each model was built for. Also: the digits CNN quantized
   with `kiln quantize --to int8 --calib` keeps its top-1 at levels 0 and 2, with both convs
   fused; a miniature ResNet (tests/models/resnet_tiny.onnx) quantized so runs every Conv, residual
   Add and the pool in integers; and allocation failures during a fused load fail cleanly. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kiln_test.h"

#include "kiln/kiln.h"
#include "kiln/passes.h"
#include "kiln/quant.h"
#include "core/common.h" /* kiln__alloc_fail_after */
#include "ir/graph.h"
#include "onnx/import.h"

static const char *models_dir; /* argv[1]: the repository's models/ */
static const char *tests_dir;  /* argv[2]: the repository's tests/ */
static char tmp_dir[256];

static void path_of(char *buf, size_t n, const char *dir, const char *file) {
  assert_true(snprintf(buf, n, "%s/%s", dir, file) < (int)n);
}

static uint64_t next_rand(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* The output's quantization step from qdq_NAME.steps ("name step" lines); fails when absent. */
static double step_of(const char *steps_file, const char *output) {
  FILE *f = fopen(steps_file, "r");
  assert_non_null(f);
  char name[256];
  double step = -1;
  while (fscanf(f, "%255s %lf", name, &step) == 2)
    if (!strcmp(name, output)) break;
  bool found = !strcmp(name, output);
  fclose(f);
  assert_true(found);
  return step;
}

static size_t op_count(const kiln_model *m, const char *op) {
  const char *types[64];
  size_t counts[64];
  size_t n = kiln_model_op_histogram(m, types, counts, 64);
  for (size_t i = 0; i < n && i < 64; i++)
    if (!strcmp(types[i], op)) return counts[i];
  return 0;
}

/* fuse-qdq's rewrites at `level` and where (joined), summed over rounds; node counts. */
static size_t qdq_matches(const char *path, int level, char *where, size_t cap, size_t *after) {
  kiln_pass_report *r = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_pass_report_load(path, level, &r, &err), KILN_OK);
  kiln_pass_report_summary(r, NULL, NULL, after);
  size_t total = 0;
  if (where) where[0] = 0;
  for (size_t i = 0; i < kiln_pass_report_count(r); i++) {
    kiln_pass_change c;
    assert_int_equal(kiln_pass_report_get(r, i, &c), KILN_OK);
    if (strcmp(c.pass, "fuse-qdq")) continue;
    total += c.matches;
    if (where && c.where) {
      strncat(where, c.where, cap - strlen(where) - 2);
      strcat(where, ",");
    }
  }
  kiln_pass_report_free(r);
  return total;
}

typedef struct diff_stats {
  size_t elements, equal;
  double worst_steps; /* max |level0 - level2| / step over the elements */
  double worst_abs, largest; /* max |level0 - level2|, max |level0| */
} diff_stats;

/* Runs `path` at level 0 and 2 on `seeds` random inputs (uniform in [-2, 2), dims as declared)
   and compares the output named `output`; float outputs with a step of 0 must be bit-equal
   unless `float_ok` (then worst_abs and largest tell how far apart). */
static diff_stats compare_ex(const char *path, const char *steps_file, const char *output,
                             int seeds, bool float_ok) {
  kiln_model *ref = kt_load(path, 1, 0), *opt = kt_load(path, 2, 2);
  kiln_session *sr = NULL, *so = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(ref, &sr, &err), KILN_OK);
  assert_int_equal(kiln_session_create(opt, &so, &err), KILN_OK);
  size_t out_idx = (size_t)-1;
  for (size_t o = 0; o < kiln_model_output_count(ref); o++) {
    kiln_io_info io;
    assert_int_equal(kiln_model_output_info(ref, o, &io), KILN_OK);
    if (!strcmp(io.name, output)) out_idx = o;
  }
  assert_true(out_idx != (size_t)-1);
  double step = step_of(steps_file, output);
  diff_stats d = {0};
  uint64_t rs = 99;
  for (int seed = 0; seed < seeds; seed++) {
    size_t n = kiln_model_input_count(ref);
    assert_true(n <= 4);
    const char *names[4];
    kiln_tensor in[4];
    for (size_t i = 0; i < n; i++) {
      kiln_io_info io;
      assert_int_equal(kiln_model_input_info(ref, i, &io), KILN_OK);
      assert_int_equal(kiln_tensor_alloc(&in[i], KILN_DTYPE_FLOAT, io.rank, io.dims, &err),
                       KILN_OK);
      float *p = in[i].data;
      for (size_t e = 0; e < kiln_tensor_count(&in[i]); e++)
        p[e] = (float)((double)(next_rand(&rs) >> 11) * (4.0 / 9007199254740992.0) - 2.0);
      names[i] = io.name;
    }
    assert_int_equal(kiln_session_run(sr, names, in, n, &err), KILN_OK);
    if (kiln_session_run(so, names, in, n, &err) != KILN_OK) fprintf(stderr, "%s\n", err.message);
    assert_int_equal(err.status, KILN_OK);
    kiln_tensor a, b;
    assert_int_equal(kiln_session_output(sr, out_idx, &a), KILN_OK);
    assert_int_equal(kiln_session_output(so, out_idx, &b), KILN_OK);
    assert_int_equal(a.dtype, KILN_DTYPE_FLOAT);
    assert_int_equal(b.dtype, KILN_DTYPE_FLOAT);
    assert_int_equal(kiln_tensor_count(&a), kiln_tensor_count(&b));
    const float *x = a.data, *y = b.data;
    for (size_t e = 0; e < kiln_tensor_count(&a); e++) {
      d.elements++;
      d.equal += x[e] == y[e];
      double diff = fabs((double)x[e] - y[e]);
      d.worst_abs = fmax(d.worst_abs, diff);
      d.largest = fmax(d.largest, fabs((double)x[e]));
      if (step == 0) {
        assert_true(diff == 0 || float_ok);
        continue;
      }
      d.worst_steps = fmax(d.worst_steps, diff / step);
    }
    for (size_t i = 0; i < n; i++) kiln_tensor_release(&in[i]);
  }
  kiln_session_free(sr);
  kiln_session_free(so);
  kiln_model_free(ref);
  kiln_model_free(opt);
  return d;
}

static diff_stats compare(const char *path, const char *steps_file, const char *output, int seeds) {
  return compare_ex(path, steps_file, output, seeds, false);
}

/* Each output of a fused op is within one step of the QDQ graph's (1e-4 of a step of slack for
   the float products (q - z) * s of the two dequantized values), and at least 90% are equal. */
static void within_one_step(const char *model, const char *output) {
  char path[1024], steps[1024];
  snprintf(path, sizeof path, "%s/models/%s.onnx", tests_dir, model);
  snprintf(steps, sizeof steps, "%s/models/%s.steps", tests_dir, model);
  diff_stats d = compare(path, steps, output, 3);
  fprintf(stderr, "  %-14s %5zu elements, %5.1f%% equal, worst %.4f steps\n", output, d.elements,
          100.0 * d.equal / d.elements, d.worst_steps);
  assert_true(d.worst_steps <= 1.0001);
  assert_true(d.equal * 10 >= d.elements * 9);
}

/* qdq_wide: nine fusions (conv_a, conv_b + Relu, conv_c + Clip, conv_k with a float bias, mm_d,
   gemm_e with transB, gemm_f, the depthwise conv_l, the strided depthwise conv_n + Clip), five
   near misses left float (conv_g, gemm_h, conv_i, conv_j, the grouped conv_m), gemm_h's weight
   dequantized at load (its output must stay bit-equal), none at level 1. */
static void wide(void **s) {
  (void)s;
  char path[1024], where[4096];
  path_of(path, sizeof path, tests_dir, "models/qdq_wide.onnx");
  size_t after;
  assert_int_equal(qdq_matches(path, 2, where, sizeof where, &after), 10);
  /* gemm_h stays a float Gemm (bias C) with its weight dequantized once at load. */
  assert_non_null(strstr(where, "gemm_h weight dequantized at load"));
  const char *fused[] = {"conv_a+", "conv_b+conv_b_relu+", "conv_c+conv_c_clip+", "conv_k+",
                         "mm_d+",   "gemm_e+",           "gemm_f+",            "conv_l+",
                         "conv_n+conv_n_clip+"};
  for (size_t i = 0; i < sizeof fused / sizeof fused[0]; i++)
    assert_non_null(strstr(where, fused[i]));
  const char *kept[] = {"conv_g", "gemm_h+", "conv_i", "conv_j", "conv_m"};
  for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) assert_null(strstr(where, kept[i]));
  assert_int_equal(qdq_matches(path, 1, NULL, 0, &after), 0);
  kiln_model *m = kt_load(path, 1, 2);
  assert_int_equal(op_count(m, "QLinearConv"), 6);
  assert_int_equal(op_count(m, "Conv") + op_count(m, "FusedConv"), 4); /* g, i, j, m */
  /* each QLinearMatMul's output is only dequantized: fuse-qdq-out made QLinearMatMulDq of them */
  assert_int_equal(op_count(m, "QLinearMatMul"), 0);
  assert_int_equal(op_count(m, "QLinearMatMulDq"), 3);
  assert_int_equal(op_count(m, "Gemm"), 1); /* gemm_h */
  kiln_model_free(m);
  const char *outs[] = {"conv_a_yo_dq", "conv_b_yo_dq", "conv_c_yo_dq", "conv_k_yo_dq",
                        "mm_d_yo_dq",   "gemm_e_yo_dq", "gemm_f_yo_dq", "conv_g_yo_dq",
                        "gemm_h_yo_dq", "conv_i_yo_dq", "conv_j_yo_dq", "conv_j_neg",
                        "conv_l_yo_dq", "conv_m_yo_dq", "conv_n_yo_dq"};
  for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) within_one_step("qdq_wide", outs[i]);
}

/* qdq_fc: float outputs of integer products (fc_a Gemm with an int32 bias, fc_b a 3-D MatMul
   with zero points on both sides, fc_c Gemm without bias) run as MatMulInteger -> [Add] -> Cast
   -> Mul: the exact int32 sum rounded once, where the QDQ graph (level 0, the oracle) rounds each
   float product and partial sum of its 48 terms, so the two differ by float rounding only: here
   by at most 48 ulps (2^-23) of (1 + the largest |output|), ~1.4e-4 for these outputs, where one
   quantization step of one term (xs * ws) is ~1.2e-4 and a wrong zero point, bias or scale
   moves outputs by far more. fc_d (bias scale not xs * ws)
   stays a float Gemm with its weight dequantized at load: bit-equal. */
static void float_out(void **s) {
  (void)s;
  char path[1024], steps[1024], where[4096];
  path_of(path, sizeof path, tests_dir, "models/qdq_fc.onnx");
  path_of(steps, sizeof steps, tests_dir, "models/qdq_fc.steps");
  size_t after;
  assert_int_equal(qdq_matches(path, 2, where, sizeof where, &after), 4);
  assert_non_null(strstr(where, "fc_a on integers, float out"));
  assert_non_null(strstr(where, "fc_b on integers, float out"));
  assert_non_null(strstr(where, "fc_c on integers, float out"));
  assert_non_null(strstr(where, "fc_d weight dequantized at load"));
  kiln_model *m = kt_load(path, 1, 2);
  assert_int_equal(op_count(m, "MatMulInteger"), 3);
  assert_int_equal(op_count(m, "Cast"), 3);
  assert_int_equal(op_count(m, "Add"), 1);
  assert_int_equal(op_count(m, "Gemm"), 1);
  assert_int_equal(op_count(m, "MatMul"), 0);
  kiln_model_free(m);
  const char *outs[] = {"fc_a_y", "fc_b_y", "fc_c_y"};
  for (size_t i = 0; i < 3; i++) {
    diff_stats d = compare_ex(path, steps, outs[i], 3, true);
    fprintf(stderr, "  %-8s %4zu elements, %5.1f%% equal, worst %.3g (largest |y| %.3g)\n",
            outs[i], d.elements, 100.0 * d.equal / d.elements, d.worst_abs, d.largest);
    assert_true(d.worst_abs <= 48 * 0x1p-23 * (1 + d.largest));
  }
  diff_stats d = compare(path, steps, "fc_d_y", 3);
  assert_true(d.worst_abs == 0);
}

/* qdq_chain: three convs fused and the DQ -> Q pair with equal parameters folded, so the level-2
   graph is Q -> QLinearConv x3 -> DQ (+ conv1's DQ as a second output): 6 nodes, no Q/DQ
   between the convs. conv1's output sees the same input as in the QDQ graph: within one step.
   conv3's input already differs by conv1's and conv2's one-step moves, so its output is only
   checked to stay close: within 2 steps everywhere, and mostly equal. */
static void chain(void **s) {
  (void)s;
  char path[1024], steps[1024], where[4096];
  path_of(path, sizeof path, tests_dir, "models/qdq_chain.onnx");
  path_of(steps, sizeof steps, tests_dir, "models/qdq_chain.steps");
  size_t after;
  assert_int_equal(qdq_matches(path, 2, where, sizeof where, &after), 4);
  assert_non_null(strstr(where, "conv2_yo/DQ+conv2_again/Q"));
  assert_int_equal(after, 6);
  kiln_model *m = kt_load(path, 1, 2);
  assert_int_equal(op_count(m, "QLinearConv"), 3);
  assert_int_equal(op_count(m, "QuantizeLinear"), 1);
  assert_int_equal(op_count(m, "DequantizeLinear"), 2);
  kiln_model_free(m);
  within_one_step("qdq_chain", "conv1_yo_dq");
  diff_stats d = compare(path, steps, "conv3_yo_dq", 3);
  fprintf(stderr, "  conv3 (end of chain): %5.1f%% equal, worst %.4f steps\n",
          100.0 * d.equal / d.elements, d.worst_steps);
  assert_true(d.worst_steps <= 2.0001);
  assert_true(d.equal * 10 >= d.elements * 8);
}

/* qdq_pool: MaxPool and Concat between quantized tensors run on the 8-bit tensors: pool_a
   (DQ -> MaxPool -> Q, same parameters), cat_b (QLinearConcat), cat_c + pool_c (QLinearConcat ->
   8-bit MaxPool); pool_d, cat_e, pool_f left float. Every rewrite is exact, so every output of
   the level-2 graph equals the QDQ graph's bit for bit. */
static void pool(void **s) {
  (void)s;
  char path[1024], steps[1024], where[4096];
  path_of(path, sizeof path, tests_dir, "models/qdq_pool.onnx");
  path_of(steps, sizeof steps, tests_dir, "models/qdq_pool.steps");
  size_t after;
  assert_int_equal(qdq_matches(path, 2, where, sizeof where, &after), 3);
  assert_non_null(strstr(where, "pool_a+pool_a_y/Q"));
  assert_non_null(strstr(where, "cat_b+cat_b_y/Q"));
  assert_non_null(strstr(where, "cat_c+pool_c+pool_c_y/Q"));
  const char *kept[] = {"pool_d", "cat_e", "pool_f"};
  for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) assert_null(strstr(where, kept[i]));
  kiln_model *m = kt_load(path, 1, 2);
  assert_int_equal(op_count(m, "QLinearConcat"), 2);
  assert_int_equal(op_count(m, "Concat"), 1);
  assert_int_equal(op_count(m, "MaxPool"), 4);
  kiln_model_free(m);
  const char *outs[] = {"pool_a_yo_dq", "cat_b_yo_dq", "pool_c_yo_dq",
                        "pool_d_yo_dq", "cat_e_yo_dq", "pool_f_yo_dq"};
  for (size_t i = 0; i < sizeof outs / sizeof outs[0]; i++) {
    diff_stats d = compare(path, steps, outs[i], 3);
    fprintf(stderr, "  %-14s %5zu elements, %5.1f%% equal\n", outs[i], d.elements,
            100.0 * d.equal / d.elements);
    assert_int_equal(d.equal, d.elements);
  }
}

/* qdq_resid: residual Adds and a GlobalAveragePool between quantized tensors (issue 7): add_a,
   add_b (+ Relu dropped), add_c (broadcast constant), add_d (int8) become QLinearAdd, gap_e
   QLinearGlobalAveragePool; add_f (Relu before a zero point of 40), add_g (a float input), add_h
   (mixed 8-bit types), gap_i (int8 output of a uint8 input) stay float. QLinearAdd performs the
   QDQ graph's float operations, so its outputs (and those left float) are equal bit for bit; the
   pool sums in int32 and requantizes once: within one step. */
static void resid(void **s) {
  (void)s;
  char path[1024], steps[1024], where[4096];
  path_of(path, sizeof path, tests_dir, "models/qdq_resid.onnx");
  path_of(steps, sizeof steps, tests_dir, "models/qdq_resid.steps");
  size_t after;
  assert_int_equal(qdq_matches(path, 2, where, sizeof where, &after), 5);
  const char *fused[] = {"add_a+add_a_y/Q", "add_b+add_b_relu+add_b_y/Q", "add_c+add_c_y/Q",
                         "add_d+add_d_y/Q", "gap_e+gap_e_y/Q"};
  for (size_t i = 0; i < sizeof fused / sizeof fused[0]; i++)
    assert_non_null(strstr(where, fused[i]));
  const char *kept[] = {"add_f", "add_g", "add_h", "gap_i"};
  for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) assert_null(strstr(where, kept[i]));
  kiln_model *m = kt_load(path, 1, 2);
  assert_int_equal(op_count(m, "QLinearAdd"), 4);
  assert_int_equal(op_count(m, "QLinearGlobalAveragePool"), 1);
  assert_int_equal(op_count(m, "Add"), 3);
  assert_int_equal(op_count(m, "GlobalAveragePool"), 1);
  kiln_model_free(m);
  const char *exact[] = {"add_a_yo_dq", "add_b_yo_dq", "add_c_yo_dq", "add_d_yo_dq",
                         "add_f_yo_dq", "add_g_yo_dq", "add_h_yo_dq", "gap_i_yo_dq"};
  for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++) {
    diff_stats d = compare(path, steps, exact[i], 3);
    fprintf(stderr, "  %-12s %5zu elements, %5.1f%% equal\n", exact[i], d.elements,
            100.0 * d.equal / d.elements);
    assert_int_equal(d.equal, d.elements);
  }
  diff_stats d = compare(path, steps, "gap_e_yo_dq", 8);
  fprintf(stderr, "  gap_e_yo_dq  %5zu elements, %5.1f%% equal, worst %.4f steps\n", d.elements,
          100.0 * d.equal / d.elements, d.worst_steps);
  assert_true(d.worst_steps <= 1.0001);
}

/* A tiny model's logits on its 16 test inputs (tests/data/DATA/input.npy) at `level` into
   out[16 * 10]. */
static void tiny_logits(const char *path, int level, const char *data, float *out) {
  kiln_model *m = kt_load(path, 1, level);
  kiln_tensor x, y;
  char dir[1024], sub[256];
  snprintf(sub, sizeof sub, "data/%s", data);
  path_of(dir, sizeof dir, tests_dir, sub);
  kt_read_npy(dir, "input.npy", &x);
  kiln_session *s = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  const char *names[] = {"input"};
  assert_int_equal(kiln_session_run(s, names, &x, 1, &err), KILN_OK);
  assert_int_equal(kiln_session_output(s, 0, &y), KILN_OK);
  assert_int_equal(kiln_tensor_count(&y), 160);
  memcpy(out, y.data, 160 * sizeof *out);
  kiln_session_free(s);
  kiln_model_free(m);
  kiln_tensor_release(&x);
}

static double cosine(const float *a, const float *b, size_t n) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < n; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
  return ab / sqrt(aa * bb);
}

static int argmax10(const float *v) {
  int best = 0;
  for (int c = 1; c < 10; c++)
    if (v[c] > v[best]) best = c;
  return best;
}

/* Quantizes src into out with o; the test fails with the quantizer's message otherwise. */
static void quantize_ok(const char *src, const char *out, const kiln_quant_opts *o) {
  kiln_error err = {0};
  kiln_status st = kiln_quantize_file_ex(src, out, o, NULL, &err);
  if (st != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(st, KILN_OK);
}

/* A tiny model's int8 file q at level 2 stays close to the same file read op by op (level 0)
   and to the float model src, on the 16 inputs of tests/data/DATA: cosine of the logits and
   top-1 agreement. */
static void tiny_int8_close(const char *src, const char *q, const char *data, const char *tag) {
  float f32[160], l0[160], l2[160];
  tiny_logits(src, 0, data, f32);
  tiny_logits(q, 0, data, l0);
  tiny_logits(q, 2, data, l2);
  int agree0 = 0, agree_f = 0;
  for (int r = 0; r < 16; r++) {
    agree0 += argmax10(l2 + 10 * r) == argmax10(l0 + 10 * r);
    agree_f += argmax10(l2 + 10 * r) == argmax10(f32 + 10 * r);
  }
  double c0 = cosine(l0, l2, 160), cf = cosine(f32, l2, 160);
  fprintf(stderr, "  %s: cosine %.5f to level 0, %.5f to fp32; top-1 %d/16 and %d/16\n", tag, c0,
          cf, agree0, agree_f);
  assert_true(c0 >= 0.999);
  assert_true(cf >= 0.99);
  assert_true(agree0 >= 15 && agree_f >= 14);
}

/* A miniature float ResNet (tools/make_resnet_tiny.py) quantized with --to int8 --calib: the file
   keeps ONNX Runtime's QDQ layout in the default domain only (the op set ORT's quantizer writes;
   bench/RESULTS.md has ORT running such files), with pairs on both residual Adds' and the pool's
   outputs as well as on the convs'; at level 2 every Conv, Add (its Relu dropped) and the pool run
   in integers, nothing float between them. The integer graph stays close to the QDQ graph read op
   by op (each QLinearConv may move an output by a step and the moves add up through the blocks)
   and to the float model. A per-node override keeps the last Add float: no pair on its output,
   so it and the pool after it stay float. (An Add kept float between two quantized convs, like
   b1add, still reads two dequantized tensors and feeds a QuantizeLinear that the next convs
   need, so fuse-qdq runs it as a QLinearAdd: bit-identical to the float Add in the file.) */
static void resnet_tiny(void **s) {
  (void)s;
  char src[1024], calib[1024], q[1024];
  path_of(src, sizeof src, tests_dir, "models/resnet_tiny.onnx");
  path_of(calib, sizeof calib, tests_dir, "data/resnet_tiny_calib");
  snprintf(q, sizeof q, "%s/resnet_tiny_int8.onnx", tmp_dir);
  for (int override = 0; override < 2; override++) {
    kiln_quant_opts o = kiln_quant_opts_default();
    o.format = KILN_QUANT_INT8;
    o.calib_dir = calib;
    kiln_quant_node_format keep = {"b2add", KILN_QUANT_NONE};
    if (override) o.nodes = &keep, o.n_nodes = 1;
    quantize_ok(src, q, &o);
    kiln_model *m = kt_load(q, 1, 0);
    const char *types[32];
    size_t counts[32], n = kiln_model_op_histogram(m, types, counts, 32);
    static const char *const ort_ops[] = {"QuantizeLinear", "DequantizeLinear", "Conv", "Relu",
                                          "Add", "GlobalAveragePool", "Flatten", "Gemm"};
    for (size_t i = 0; i < n; i++) {
      bool known = false;
      for (size_t k = 0; k < sizeof ort_ops / sizeof ort_ops[0]; k++) known |= !strcmp(types[i], ort_ops[k]);
      if (!known) fail_msg("unexpected op %s in the int8 file", types[i]);
    }
    /* the input, stem, b1c1, b1c2, b1add, b2c1, b2c2, b2down, b2add, pool, flatten; with b2add
       kept float, neither its output nor the pool's (whose input is then float) */
    assert_int_equal(op_count(m, "QuantizeLinear"), override ? 9 : 11);
    assert_int_equal(op_count(m, "Add"), 2);
    assert_int_equal(op_count(m, "GlobalAveragePool"), 1);
    kiln_model_free(m);
    m = kt_load(q, 1, 2);
    assert_int_equal(op_count(m, "QLinearConv"), 6);
    assert_int_equal(op_count(m, "QLinearAdd"), override ? 1 : 2);
    /* the classifier Gemm (int32 bias, its input the quantized flatten) on integers with a float
       out: MatMulInteger, its bias Add, Cast, Mul */
    assert_int_equal(op_count(m, "MatMulInteger"), 1);
    assert_int_equal(op_count(m, "Gemm"), 0);
    assert_int_equal(op_count(m, "Add"), override ? 2 : 1);
    assert_int_equal(op_count(m, "Relu"), override ? 1 : 0);
    assert_int_equal(op_count(m, "QLinearGlobalAveragePool"), override ? 0 : 1);
    assert_int_equal(op_count(m, "GlobalAveragePool"), override ? 1 : 0);
    kiln_model_free(m);
    tiny_int8_close(src, q, "resnet_tiny_test",
                    override ? "resnet_tiny int8 (b2add float)" : "resnet_tiny int8");
  }
  unlink(q);
}

/* Two fire modules in miniature (tools/make_resnet_tiny.py) quantized with --to int8 --calib: each
   Concat's inputs get the Concat's range (the union of theirs), so their scales and zero points
   equal the output's (the MaxPool's after fire1) and at level 2 both Concats run as plain Concats
   of the 8-bit tensors: no QLinearConcat, and no QuantizeLinear but the input's. The logits stay
   as close to the QDQ graph and to the float model as resnet_tiny's. */
static void fire_tiny(void **s) {
  (void)s;
  char src[1024], calib[1024], q[1024];
  path_of(src, sizeof src, tests_dir, "models/fire_tiny.onnx");
  path_of(calib, sizeof calib, tests_dir, "data/fire_tiny_calib");
  snprintf(q, sizeof q, "%s/fire_tiny_int8.onnx", tmp_dir);
  kiln_quant_opts o = kiln_quant_opts_default();
  o.format = KILN_QUANT_INT8;
  o.calib_dir = calib;
  quantize_ok(src, q, &o);
  kiln_model *m = kt_load(q, 1, 2);
  assert_int_equal(op_count(m, "QLinearConv"), 8);
  assert_int_equal(op_count(m, "QLinearConcat"), 0);
  assert_int_equal(op_count(m, "Concat"), 2);
  assert_int_equal(op_count(m, "MaxPool"), 1);
  assert_int_equal(op_count(m, "QuantizeLinear"), 1);
  kiln_model_free(m);
  tiny_int8_close(src, q, "fire_tiny_test", "fire_tiny int8");
  unlink(q);
}

/* Top-1 of a model on the 450 held-out digits. */
static int digits_correct(const char *path, int level) {
  kiln_model *m = kt_load(path, 2, level);
  kiln_tensor x, y;
  char dir[1024];
  path_of(dir, sizeof dir, models_dir, "digits");
  kt_read_npy(dir, "test_x.npy", &x);
  kt_read_npy(dir, "test_y.npy", &y);
  kiln_session *s = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  const char *names[] = {"input"};
  assert_int_equal(kiln_session_run(s, names, &x, 1, &err), KILN_OK);
  kiln_tensor out;
  assert_int_equal(kiln_session_output(s, 0, &out), KILN_OK);
  assert_int_equal(out.dims[0], 450);
  assert_int_equal(out.dims[1], 10);
  const float *l = out.data;
  int correct = 0;
  for (int r = 0; r < 450; r++) {
    int best = 0;
    for (int c = 1; c < 10; c++)
      if (l[r * 10 + c] > l[r * 10 + best]) best = c;
    correct += best == ((const int64_t *)y.data)[r];
  }
  kiln_session_free(s);
  kiln_model_free(m);
  kiln_tensor_release(&x);
  kiln_tensor_release(&y);
  return correct;
}

/* Static int8 digits (calibrated on tests/data/digits_calib): FP32 gets 443/450; the QDQ file
   keeps 443 +- 2 read op by op (level 0) and with both convs (and their Relus) on QLinearConv
   (level 2). The Gemms (int32 bias C, float outputs) run as MatMulInteger -> Add -> Cast -> Mul. */
static void digits(void **s) {
  (void)s;
  char src[1024], calib[1024], q[1024];
  path_of(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  path_of(calib, sizeof calib, tests_dir, "data/digits_calib");
  snprintf(q, sizeof q, "%s/digits_int8.onnx", tmp_dir);
  kiln_quant_opts o = kiln_quant_opts_default();
  o.format = KILN_QUANT_INT8;
  o.calib_dir = calib;
  quantize_ok(src, q, &o);
  assert_int_equal(digits_correct(src, 0), 443);
  int l0 = digits_correct(q, 0), l2 = digits_correct(q, 2);
  fprintf(stderr, "  digits int8: %d/450 at level 0, %d/450 at level 2\n", l0, l2);
  assert_true(abs(l0 - 443) <= 2);
  assert_true(abs(l2 - 443) <= 2);
  char where[4096];
  size_t after;
  /* Both convs fused; both Gemms (int32 bias C) on integers with float outputs. */
  assert_int_equal(qdq_matches(q, 2, where, sizeof where, &after), 4);
  assert_non_null(strstr(where, "/c1/Conv+/Relu+"));
  assert_non_null(strstr(where, "/c2/Conv+/Relu_1+"));
  assert_non_null(strstr(where, "/f1/Gemm on integers, float out"));
  assert_non_null(strstr(where, "/f2/Gemm on integers, float out"));
  kiln_model *m = kt_load(q, 1, 2);
  assert_int_equal(op_count(m, "QLinearConv"), 2);
  assert_int_equal(op_count(m, "Conv"), 0);
  kiln_model_free(m);
  unlink(q);
}

/* The largest |code| over the file's int8 initializers (the quantized weights). */
static int max_int8_code(const char *path) {
  kiln__graph *g = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__onnx_import_file(path, &g, &err), KILN_OK);
  int mx = -1;
  for (int i = 0; i < g->n_values; i++) {
    const kiln__value *v = &g->values[i];
    if (!v->is_initializer || v->init.dtype != KILN_DTYPE_INT8) continue;
    size_t n = kiln_tensor_count(&v->init);
    for (size_t j = 0; j < n; j++) {
      int c = abs(((const int8_t *)v->init.data)[j]);
      if (c > mx) mx = c;
    }
  }
  kiln__graph_free(g);
  return mx;
}

/* int8 and int8-dynamic default to 7-bit weights ([-63, 63], reduce_range: what the AVX2
   VPMADDUBSW path runs exactly); reduce_range = false gives the full [-127, 127]. Both keep
   digits at 443 +- 2, run fused. */
static void weight_range_default(void **s) {
  (void)s;
  char src[1024], calib[1024], q[1024];
  path_of(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  path_of(calib, sizeof calib, tests_dir, "data/digits_calib");
  snprintf(q, sizeof q, "%s/digits_range.onnx", tmp_dir);
  assert_true(kiln_quant_opts_default().reduce_range);
  const kiln_quant_format fmts[] = {KILN_QUANT_INT8, KILN_QUANT_INT8_DYNAMIC};
  for (int f = 0; f < 2; f++)
    for (int full = 0; full < 2; full++) {
      kiln_quant_opts o = kiln_quant_opts_default();
      o.format = fmts[f];
      o.calib_dir = fmts[f] == KILN_QUANT_INT8 ? calib : NULL;
      if (full) o.reduce_range = false;
      quantize_ok(src, q, &o);
      /* per-channel symmetric: each channel's largest weight lands exactly on the bound */
      assert_int_equal(max_int8_code(q), full ? 127 : 63);
      int correct = digits_correct(q, 2);
      fprintf(stderr, "  digits %s %s: %d/450\n", kiln_quant_format_name(fmts[f]),
              full ? "full-range" : "7-bit", correct);
      assert_true(abs(correct - 443) <= 2);
      unlink(q);
    }
}

/* Every allocation during a fused load failing in turn: a clean error, never a crash or a leak
   (leaks are caught under KILN_SANITIZE). */
/* Allocation failures while quantizing resnet_tiny (calibration, the QDQ rewrite of its convs,
   residual Adds and pool): a clean error with a message, never a crash (leaks: the sanitizer
   build). Sampled: the nth allocation for n growing by ~6% up to the first success. */
static void quantize_alloc_failures(void **s) {
  (void)s;
  char src[1024], calib[1024], q[1024];
  path_of(src, sizeof src, tests_dir, "models/resnet_tiny.onnx");
  path_of(calib, sizeof calib, tests_dir, "data/resnet_tiny_calib");
  snprintf(q, sizeof q, "%s/resnet_tiny_fail.onnx", tmp_dir);
  kiln_quant_opts o = kiln_quant_opts_default();
  o.format = KILN_QUANT_INT8;
  o.calib_dir = calib;
  o.intra_threads = 1;
  bool done = false;
  size_t tries = 0;
  for (uint64_t n = 1; n < 100000000 && !done; n += n / 16 + 1, tries++) {
    kiln_error err = {0};
    kiln__alloc_fail_after(n);
    kiln_status st = kiln_quantize_file_ex(src, q, &o, NULL, &err);
    kiln__alloc_fail_after(0);
    if (st == KILN_OK) done = true;
    else assert_true(err.message[0] != 0);
  }
  fprintf(stderr, "  quantize: %zu failure points tried\n", tries);
  assert_true(done);
  unlink(q);
}

static void alloc_failures(void **s) {
  (void)s;
  const char *files[] = {"models/qdq_wide.onnx", "models/qdq_chain.onnx", "models/qdq_resid.onnx"};
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
        assert_int_equal(op_count(m, "QLinearConv") + op_count(m, "QLinearAdd") > 0, true);
        kiln_model_free(m);
      } else {
        assert_null(m);
        assert_true(err.message[0] != 0);
      }
    }
    assert_true(loaded);
  }
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_qdq MODELS_DIR TESTS_DIR\n");
    return 2;
  }
  models_dir = argv[1];
  tests_dir = argv[2];
  snprintf(tmp_dir, sizeof tmp_dir, "/tmp/kiln_test_qdq_XXXXXX");
  if (!mkdtemp(tmp_dir)) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(wide),
      cmocka_unit_test(float_out),
      cmocka_unit_test(chain),
      cmocka_unit_test(pool),
      cmocka_unit_test(resid),
      cmocka_unit_test(resnet_tiny),
      cmocka_unit_test(fire_tiny),
      cmocka_unit_test(digits),
      cmocka_unit_test(weight_range_default),
      cmocka_unit_test(alloc_failures),
      cmocka_unit_test(quantize_alloc_failures),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  rmdir(tmp_dir);
  return rc;
}
