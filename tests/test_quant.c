/* The quantizers and the accuracy report on the shipped digits CNN (trained weights, the 450
   held-out digits): each variant loads and runs, keeps its accuracy within budget, has the
   parameter bytes its format implies, uses the ops its pattern says; kiln_validate_files'
   metrics equal a direct computation; bad input gives clear errors. */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "kiln_test.h"

#include "kiln/kiln.h"
#include "kiln/quant.h"
#include "kernels/cpu/bgemm.h"
#include "onnx/export.h"
#include "onnx/import.h"
#include "quant/quant.h"

static const char *models_dir; /* argv[1]: the repository's models/ folder */
static const char *tests_dir;  /* argv[2]: the repository's tests/ folder */
static char tmp_dir[256];      /* this process's scratch folder */

/* The digits CNN (shared/models/README.md): Conv 1->16 3x3, Conv 16->32 3x3, Gemm 512->64,
   Gemm 64->10, all with biases: 38282 float32 parameters. */
enum { DIGITS_PARAMS = 38282, CONV_W = 16 * 9 + 32 * 16 * 9, GEMM_W = 512 * 64 + 64 * 10,
       GEMM_N = 64 + 10 };
/* Accuracy budget: within 1% of FP32 on 450 digits is at most 4 fewer correct (4/450 = 0.89%). */
enum { BUDGET = 4 };

static void path_in(char *buf, size_t cap, const char *dir, const char *file) {
  snprintf(buf, cap, "%s/%s", dir, file);
}

static kiln_model *load(const char *path, int opt_level) { return kt_load(path, 2, opt_level); }

static void read_digits(const char *file, kiln_tensor *t) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/digits", models_dir);
  kt_read_npy(dir, file, t);
}

/* Runs the model on all 450 digits; copies the logits into `logits` [450*10]; returns how many
   argmaxes equal the labels. */
static int run_digits(const char *path, float *logits) {
  kiln_model *m = load(path, -1);
  kiln_tensor x, y;
  read_digits("test_x.npy", &x);
  read_digits("test_y.npy", &y);
  kiln_session *s = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  const char *names[] = {"input"};
  assert_int_equal(kiln_session_run(s, names, &x, 1, &err), KILN_OK);
  kiln_tensor out;
  assert_int_equal(kiln_session_output(s, 0, &out), KILN_OK);
  assert_int_equal(out.dtype, KILN_DTYPE_FLOAT);
  assert_int_equal(out.dims[0], 450);
  assert_int_equal(out.dims[1], 10);
  memcpy(logits, out.data, 450 * 10 * sizeof *logits);
  int correct = 0;
  for (int r = 0; r < 450; r++) {
    int best = 0;
    for (int c = 1; c < 10; c++)
      if (logits[r * 10 + c] > logits[r * 10 + best]) best = c;
    correct += best == ((const int64_t *)y.data)[r];
  }
  kiln_session_free(s);
  kiln_model_free(m);
  kiln_tensor_release(&x);
  kiln_tensor_release(&y);
  return correct;
}

static long file_size(const char *path) {
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  return (long)sb.st_size;
}

static size_t op_count(const kiln_model *m, const char *op) {
  const char *types[64];
  size_t counts[64];
  size_t n = kiln_model_op_histogram(m, types, counts, 64);
  for (size_t i = 0; i < n && i < 64; i++)
    if (!strcmp(types[i], op)) return counts[i];
  return 0;
}

static void quantize_digits(kiln_quant_format f, char *out, size_t cap, kiln_quant_stats *st) {
  char src[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  snprintf(out, cap, "%s/digits_%s.onnx", tmp_dir, kiln_quant_format_name(f));
  kiln_error err = {0};
  kiln_status s = kiln_quantize_file(src, out, f, st, &err);
  if (s != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(s, KILN_OK);
}

static void digits_fp16(void **state) {
  (void)state;
  char src[1024], q[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  kiln_quant_stats st;
  quantize_digits(KILN_QUANT_FP16, q, sizeof q, &st);
  /* every weight of the two Convs and the two Gemms, not the biases */
  assert_int_equal(st.nodes_quantized, 4);
  assert_int_equal(st.weights_converted, 4);
  assert_int_equal(st.weight_bytes_before, (size_t)(CONV_W + GEMM_W) * 4);
  assert_int_equal(st.weight_bytes_after, (size_t)(CONV_W + GEMM_W) * 2);

  kiln_model *m = load(q, 0);
  kiln_model_stats ms;
  kiln_model_stats_get(m, &ms);
  assert_int_equal(ms.param_count, DIGITS_PARAMS);
  assert_int_equal(ms.param_bytes, (size_t)DIGITS_PARAMS * 4 - (size_t)(CONV_W + GEMM_W) * 2);
  assert_int_equal(op_count(m, "Cast"), 4);
  kiln_model_free(m);
  /* the weights are nearly the whole file: it halves */
  assert_true(file_size(q) < file_size(src) * 55 / 100);

  static float ref[4500], cand[4500];
  int fp32 = run_digits(src, ref), fp16 = run_digits(q, cand);
  assert_int_equal(fp32, 443); /* shared/models/README.md */
  assert_true(fp16 >= fp32 - BUDGET);
  /* float16 weights: relative rounding 2^-11 per weight, so logits (up to ~30) move by far less
     than 0.1 */
  for (int i = 0; i < 4500; i++) assert_true(fabsf(ref[i] - cand[i]) < 0.1f);
}

static void digits_int8_dynamic(void **state) {
  (void)state;
  char src[1024], q[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  kiln_quant_stats st;
  quantize_digits(KILN_QUANT_INT8_DYNAMIC, q, sizeof q, &st);
  assert_int_equal(st.nodes_quantized, 2);  /* the Gemms */
  assert_int_equal(st.nodes_kept_float, 2); /* the Convs */
  assert_int_equal(st.weight_bytes_after, (size_t)GEMM_W + (size_t)GEMM_N * 4);

  kiln_model *m = load(q, 0);
  assert_int_equal(op_count(m, "Gemm"), 0);
  assert_int_equal(op_count(m, "MatMulInteger"), 2);
  assert_int_equal(op_count(m, "DynamicQuantizeLinear"), 2);
  assert_int_equal(op_count(m, "Conv"), 2);
  kiln_model_stats ms;
  kiln_model_stats_get(m, &ms);
  /* Gemm weights as int8 plus one float scale per output column; the rest stays float32 */
  assert_int_equal(ms.param_bytes, (size_t)(DIGITS_PARAMS - GEMM_W) * 4 + (size_t)GEMM_W +
                                       (size_t)GEMM_N * 4);
  kiln_model_free(m);
  assert_true(file_size(q) < file_size(src) * 40 / 100);

  static float ref[4500], cand[4500];
  int fp32 = run_digits(src, ref), i8 = run_digits(q, cand);
  assert_int_equal(fp32, 443);
  assert_true(i8 >= fp32 - BUDGET);
}

/* int8-dynamic --per-row: each Gemm's input quantized per row in standard ops (no
   DynamicQuantizeLinear), which the optimizer turns into DynamicQuantizeRows + RowQuantMatMul;
   accuracy within the budget (fuse-rowq's exactness: test_passes). */
static void digits_int8_dynamic_per_row(void **state) {
  (void)state;
  char src[1024], q[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  snprintf(q, sizeof q, "%s/digits_rows.onnx", tmp_dir);
  kiln_quant_opts o = kiln_quant_opts_default();
  o.format = KILN_QUANT_INT8_DYNAMIC;
  o.per_row = true;
  kiln_quant_stats st;
  kiln_error err = {0};
  assert_int_equal(kiln_quantize_file_ex(src, q, &o, &st, &err), KILN_OK);
  assert_int_equal(st.nodes_quantized, 2);
  assert_int_equal(st.weight_bytes_after, (size_t)GEMM_W + (size_t)GEMM_N * 4);

  kiln_model *m = load(q, 0);
  assert_int_equal(op_count(m, "MatMulInteger"), 2);
  assert_int_equal(op_count(m, "DynamicQuantizeLinear"), 0);
  assert_int_equal(op_count(m, "ReduceMax"), 2);
  assert_int_equal(op_count(m, "Round"), 2);
  assert_int_equal(op_count(m, "Conv"), 2);
  kiln_model_free(m);
  m = load(q, -1);
  assert_int_equal(op_count(m, "DynamicQuantizeRows"), 2);
  assert_int_equal(op_count(m, "RowQuantMatMul"), 2);
  assert_int_equal(op_count(m, "MatMulInteger"), 0);
  assert_int_equal(op_count(m, "ReduceMax"), 0);
  kiln_model_free(m);

  static float ref[4500], cand[4500];
  int fp32 = run_digits(src, ref), i8 = run_digits(q, cand);
  assert_int_equal(fp32, 443);
  assert_true(i8 >= fp32 - BUDGET);
}

/* Oracle for the report: the metrics computed here, straight from the two models' logits. */
static void check_report(const kiln_validate_report *r, const float *ref, const float *cand,
                         const int64_t *labels, double tol) {
  size_t agree = 0, rc = 0, cc = 0;
  double dot = 0, a2 = 0, b2 = 0, mx = 0, sum = 0;
  for (int row = 0; row < 450; row++) {
    int ba = 0, bb = 0;
    for (int c = 1; c < 10; c++) {
      if (ref[row * 10 + c] > ref[row * 10 + ba]) ba = c;
      if (cand[row * 10 + c] > cand[row * 10 + bb]) bb = c;
    }
    agree += ba == bb;
    rc += ba == labels[row];
    cc += bb == labels[row];
  }
  for (int i = 0; i < 4500; i++) {
    double a = ref[i], b = cand[i], d = fabs(a - b);
    dot += a * b, a2 += a * a, b2 += b * b, sum += d;
    if (d > mx) mx = d;
  }
  assert_int_equal(r->samples, 450);
  assert_int_equal(r->rows, 450);
  assert_int_equal(r->classes, 10);
  assert_int_equal(r->top1_agree, agree);
  assert_int_equal(r->ref_correct, rc);
  assert_int_equal(r->cand_correct, cc);
  assert_true(r->has_labels);
  assert_true(fabs(r->top1_agreement - (double)agree / 450) < 1e-12);
  assert_true(fabs(r->cand_accuracy - (double)cc / 450) < 1e-12);
  assert_true(fabs(r->cosine - dot / sqrt(a2 * b2)) < tol);
  assert_true(fabs(r->max_abs_err - mx) <= tol * (1 + mx));
  assert_true(fabs(r->mean_abs_err - sum / 4500) <= tol * (1 + sum / 4500));
}

static void validate_matches_direct(void **state) {
  (void)state;
  char src[1024], q[1024], labels[1024], in[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  path_in(labels, sizeof labels, models_dir, "digits/test_y.npy");
  quantize_digits(KILN_QUANT_INT8_DYNAMIC, q, sizeof q, NULL);
  /* the data folder: one .npy per graph input, named after it */
  kiln_tensor x, y;
  read_digits("test_x.npy", &x);
  read_digits("test_y.npy", &y);
  path_in(in, sizeof in, tmp_dir, "input.npy");
  kiln_error err = {0};
  assert_int_equal(kiln_tensor_write_npy(in, &x, &err), KILN_OK);

  static float ref[4500], cand[4500];
  run_digits(src, ref);
  run_digits(q, cand);
  kiln_validate_opts o = kiln_validate_opts_default();
  o.intra_threads = 2;
  o.batch = 450; /* one run, as the direct computation does: the same floats */
  kiln_validate_report r;
  assert_int_equal(kiln_validate_files(src, q, tmp_dir, labels, &o, &r, &err), KILN_OK);
  check_report(&r, ref, cand, y.data, 1e-9);
  assert_true(r.snr_db > 0 && isfinite(r.snr_db));
  /* Batches of 7 (the last one partial). Not with int8-dynamic: its activation range is taken
     over the whole batch, so its logits depend on the batching (as in ONNX Runtime). The fp16
     variant computes each sample on its own: no count changes, sums agree to float rounding. */
  char h[1024];
  quantize_digits(KILN_QUANT_FP16, h, sizeof h, NULL);
  run_digits(h, cand);
  o.batch = 7;
  assert_int_equal(kiln_validate_files(src, h, tmp_dir, labels, &o, &r, &err), KILN_OK);
  check_report(&r, ref, cand, y.data, 1e-4);

  /* a model against itself: identical outputs */
  assert_int_equal(kiln_validate_files(src, src, tmp_dir, NULL, NULL, &r, &err), KILN_OK);
  assert_int_equal(r.top1_agree, 450);
  assert_false(r.has_labels);
  assert_true(fabs(r.cosine - 1) < 1e-12);
  assert_true(r.max_abs_err == 0 && r.mean_abs_err == 0 && isinf(r.snr_db));
  kiln_tensor_release(&x);
  kiln_tensor_release(&y);
}

static void bad_input(void **state) {
  (void)state;
  kiln_error err = {0};
  kiln_quant_format f;
  assert_int_equal(kiln_quant_format_parse("int3", &f, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "unknown quantization format 'int3'"));
  assert_non_null(strstr(err.message, "expected one of fp16, int8-dynamic"));

  /* a model with no MatMul, Gemm or Conv: nothing to do is an error, and nothing is written */
  char relu[1024], out[1024];
  path_in(relu, sizeof relu, tests_dir, "data/onnx-node/test_relu/model.onnx");
  snprintf(out, sizeof out, "%s/relu_q.onnx", tmp_dir);
  for (int k = 0; k < 2; k++) {
    kiln_quant_format fmt = k ? KILN_QUANT_INT8_DYNAMIC : KILN_QUANT_FP16;
    memset(&err, 0, sizeof err);
    assert_int_equal(kiln_quantize_file(relu, out, fmt, NULL, &err), KILN_UNSUPPORTED);
    assert_non_null(strstr(err.message, "nothing to quantize"));
    assert_int_not_equal(access(out, F_OK), 0);
  }
  /* a missing model */
  assert_int_equal(kiln_quantize_file("/nonexistent.onnx", out, KILN_QUANT_FP16, NULL, &err),
                   KILN_IO_ERROR);

  /* validate: a data folder without the input's .npy; labels that do not match the rows */
  char src[1024], labels[1024], empty[512];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  path_in(labels, sizeof labels, models_dir, "digits/test_logits.npy");
  snprintf(empty, sizeof empty, "%s/empty", tmp_dir);
  assert_int_equal(mkdir(empty, 0700), 0);
  kiln_validate_report r;
  assert_int_not_equal(kiln_validate_files(src, src, empty, NULL, NULL, &r, &err), KILN_OK);
  assert_non_null(strstr(err.message, "input.npy"));
  kiln_tensor x;
  read_digits("test_x.npy", &x);
  char in[1024];
  path_in(in, sizeof in, tmp_dir, "input.npy");
  assert_int_equal(kiln_tensor_write_npy(in, &x, &err), KILN_OK);
  kiln_tensor_release(&x);
  /* float logits are not labels */
  assert_int_equal(kiln_validate_files(src, src, tmp_dir, labels, NULL, &r, &err),
                   KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "labels must be integers"));
  rmdir(empty);
}

/* Per-node choices: the default format for all but the overridden nodes; NONE keeps a node float;
   a name that matches no node is an error, not a silent no-op. */
static void per_node_overrides(void **state) {
  (void)state;
  char src[1024], out[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  snprintf(out, sizeof out, "%s/digits_mixed.onnx", tmp_dir);
  kiln_error err = {0};
  kiln_quant_stats st;
  /* only /f1/Gemm in int8, the convs in fp16, /f2/Gemm left float */
  const kiln_quant_node_format nodes[] = {{"/f1/Gemm", KILN_QUANT_INT8_DYNAMIC},
                                          {"/f2/Gemm", KILN_QUANT_NONE}};
  kiln_quant_opts o = kiln_quant_opts_default();
  o.format = KILN_QUANT_FP16;
  o.nodes = nodes;
  o.n_nodes = 2;
  assert_int_equal(kiln_quantize_file_ex(src, out, &o, &st, &err), KILN_OK);
  assert_int_equal(st.nodes_quantized, 3);  /* two Convs (fp16) and /f1/Gemm (int8) */
  assert_int_equal(st.nodes_kept_float, 1); /* /f2/Gemm */
  kiln_model *m = load(out, 0);
  assert_int_equal(op_count(m, "MatMulInteger"), 1);
  assert_int_equal(op_count(m, "Gemm"), 1);
  assert_int_equal(op_count(m, "Cast"), 3); /* two fp16 weights + the int8 result */
  kiln_model_free(m);
  static float ref[4500], cand[4500];
  assert_int_equal(run_digits(src, ref), 443);
  int correct = run_digits(out, cand);
  /* the int8 budget: within 0.5 points (2 of 450 samples) of float */
  assert_true(correct >= 441 && correct <= 445);

  /* a typo in a node name */
  const kiln_quant_node_format typo[] = {{"/f9/Gemm", KILN_QUANT_NONE}};
  o.nodes = typo;
  o.n_nodes = 1;
  assert_int_equal(kiln_quantize_file_ex(src, out, &o, NULL, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "no node named '/f9/Gemm'"));
  /* everything overridden to float: nothing to quantize */
  const kiln_quant_node_format all_float[] = {{"/f1/Gemm", KILN_QUANT_NONE},
                                              {"/f2/Gemm", KILN_QUANT_NONE}};
  o.format = KILN_QUANT_INT8_DYNAMIC;
  o.nodes = all_float;
  o.n_nodes = 2;
  assert_int_equal(kiln_quantize_file_ex(src, out, &o, NULL, &err), KILN_UNSUPPORTED);
  assert_non_null(strstr(err.message, "nothing to quantize"));
}


/* ---- bf16, static int8 (QDQ), int4 (MatMulNBits) ------------------------------------------- */

static void quantize_digits_opts(const kiln_quant_opts *o, const char *tag, char *out, size_t cap,
                                 kiln_quant_stats *st) {
  char src[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  snprintf(out, cap, "%s/digits_%s.onnx", tmp_dir, tag);
  kiln_error err = {0};
  kiln_status s = kiln_quantize_file_ex(src, out, o, st, &err);
  if (s != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(s, KILN_OK);
}

/* bfloat16 keeps float32's exponent: rounding to nearest even on the 8-bit mantissa. */
static void bf16_rounding(void **state) {
  (void)state;
  /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0) */
  assert_int_equal(kiln__f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
  /* 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up */
  assert_int_equal(kiln__f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
  /* just above the halfway point rounds up */
  assert_int_equal(kiln__f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
  assert_int_equal(kiln__f32_to_bf16(-2.0f), 0xc000);
  assert_true(isnan(kiln__bf16_to_f32(kiln__f32_to_bf16(NAN))));
}

static void digits_bf16(void **state) {
  (void)state;
  char src[1024], q[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  kiln_quant_stats st;
  quantize_digits(KILN_QUANT_BF16, q, sizeof q, &st);
  assert_int_equal(st.nodes_quantized, 4);
  assert_int_equal(st.weight_bytes_after, (size_t)(CONV_W + GEMM_W) * 2);
  kiln_model *m = load(q, 0);
  assert_int_equal(op_count(m, "Cast"), 4);
  kiln_model_free(m);
  assert_true(file_size(q) < file_size(src) * 55 / 100);
  static float ref[4500], cand[4500];
  int fp32 = run_digits(src, ref), bf = run_digits(q, cand);
  assert_int_equal(fp32, 443);
  assert_true(bf >= fp32 - 2); /* the 0.5-point budget */
  /* bf16 weights: relative rounding 2^-9 (4x fp16's), so logits (up to ~30) move by well under
     1 where fp16's moved under 0.1 */
  double worst = 0;
  /* not fmax(): gcc 12.2 for AArch64 dies vectorizing that reduction (internal compiler error) */
  for (int i = 0; i < 4500; i++)
    if (fabs(ref[i] - cand[i]) > worst) worst = fabs(ref[i] - cand[i]);
  assert_true(worst < 0.5);
  assert_true(worst > 0); /* the weights really changed */
  /* KILN_BF16=1: the Gemms' products in bfloat16 (bgemm.h, activations rounded too) where the CPU
     has AVX512-BF16: the same top-1 budget, logits within 0.5 of the fp32 products', and not
     equal to them (the path ran). */
  setenv("KILN_BF16", "1", 1);
  static float bf_math[4500];
  int bm = run_digits(q, bf_math);
  bool have = kiln__bgemm_wanted();
  unsetenv("KILN_BF16");
  assert_true(bm >= fp32 - 2);
  double d = 0;
  for (int i = 0; i < 4500; i++)
    if (fabs(bf_math[i] - cand[i]) > d) d = fabs(bf_math[i] - cand[i]);
  fprintf(stderr, "digits bf16 file, bf16 products: %d/450, max |logit change| %.4f%s\n", bm, d,
          have ? "" : " (no AVX512-BF16 here: fp32 products)");
  assert_true(d < 0.5);
  if (have) assert_true(d > 0);
  else assert_true(d == 0);
}

/* Static int8 on the digits CNN, calibrated on 256 *training* digits (tests/data/digits_calib,
   written by tools/digits_calib.py), evaluated on the 450 test digits: each method keeps top-1
   within 0.5 points (2 digits) of float. */
static void digits_int8_static(void **state) {
  (void)state;
  char src[1024], q[1024], calib[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  path_in(calib, sizeof calib, tests_dir, "data/digits_calib");
  static float ref[4500], cand[4500];
  assert_int_equal(run_digits(src, ref), 443);
  const kiln_calib_method methods[] = {KILN_CALIB_MINMAX, KILN_CALIB_PERCENTILE,
                                       KILN_CALIB_ENTROPY};
  for (int k = 0; k < 3; k++) {
    kiln_quant_opts o = kiln_quant_opts_default();
    o.format = KILN_QUANT_INT8;
    o.calib_dir = calib;
    o.method = methods[k];
    o.intra_threads = 2;
    kiln_quant_stats st;
    char tag[32];
    snprintf(tag, sizeof tag, "int8_%d", k);
    quantize_digits_opts(&o, tag, q, sizeof q, &st);
    assert_int_equal(st.nodes_quantized, 4); /* both Convs and both Gemms */
    assert_int_equal(st.nodes_kept_float, 0);
    kiln_model *m = load(q, 0);
    /* activations: the input, relu1's output, relu2's, the flattened pool, relu3's: 5
       tensors, each one pair (a conv or gemm output read only by a Relu is quantized after the
       Relu, as ORT does); weights: 4 DQs; biases: 4 DQs */
    assert_int_equal(op_count(m, "QuantizeLinear"), 5);
    assert_int_equal(op_count(m, "DequantizeLinear"), 5 + 4 + 4);
    assert_int_equal(op_count(m, "Conv"), 2);
    assert_int_equal(op_count(m, "Gemm"), 2);
    kiln_model_free(m);
    assert_true(file_size(q) < file_size(src) * 32 / 100);
    int correct = run_digits(q, cand);
    fprintf(stderr, "int8 method %d: %d/450\n", k, correct);
    assert_true(correct >= 443 - 2);
    double worst = 0, d2 = 0, r2 = 0;
    for (int i = 0; i < 4500; i++) {
      if (fabs(ref[i] - cand[i]) > worst) worst = fabs(ref[i] - cand[i]); /* see digits_bf16 */
      d2 += (ref[i] - cand[i]) * (ref[i] - cand[i]), r2 += ref[i] * ref[i];
    }
    fprintf(stderr, "  max |logit error| %.3f, SNR %.1f dB\n", worst, 10 * log10(r2 / d2));
    assert_true(worst > 0);
    /* 8-bit activations and weights with the full range kept: ~40 dB. Entropy clips the
       activations' tails on purpose (17 dB here, the top-1 budget still met), so its bound is
       only that the logits are not noise. */
    assert_true(10 * log10(r2 / d2) > (methods[k] == KILN_CALIB_ENTROPY ? 10 : 35));
  }
  /* --keep-float: the last Gemm stays float and reads a dequantized input */
  const kiln_quant_node_format keep[] = {{"/f2/Gemm", KILN_QUANT_NONE}};
  kiln_quant_opts o = kiln_quant_opts_default();
  o.format = KILN_QUANT_INT8;
  o.calib_dir = calib;
  o.nodes = keep;
  o.n_nodes = 1;
  kiln_quant_stats st;
  quantize_digits_opts(&o, "int8_keep", q, sizeof q, &st);
  assert_int_equal(st.nodes_quantized, 3);
  assert_int_equal(st.nodes_kept_float, 1);
  kiln_model *m = load(q, 0);
  /* gemm1's output still has its pair, after relu3 */
  assert_int_equal(op_count(m, "QuantizeLinear"), 5);
  assert_int_equal(op_count(m, "DequantizeLinear"), 5 + 3 + 3);
  kiln_model_free(m);
  assert_true(run_digits(q, cand) >= 441);
}

/* The calibration methods on synthetic data with known answers. */
static uint64_t lcg(uint64_t *s) {
  *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
  return *s >> 11;
}

static void calib_methods(void **state) {
  (void)state;
  /* minmax */
  const float x[] = {0.5f, -3.25f, 2.0f, NAN, 7.5f, -1.0f};
  float lo = INFINITY, hi = -INFINITY;
  kiln__calib_minmax(x, 6, &lo, &hi);
  assert_true(lo == -3.25f && hi == 7.5f);
  /* uint8 parameters: [-1, 3] -> scale 4/255, zero point round(255/4) = 64 */
  float s;
  uint8_t zp;
  kiln__calib_qparams(-1.0f, 3.0f, &s, &zp);
  assert_true(fabsf(s - 4.0f / 255) < 1e-7f && zp == 64);
  kiln__calib_qparams(0.5f, 2.0f, &s, &zp); /* widened to hold 0 */
  assert_true(fabsf(s - 2.0f / 255) < 1e-7f && zp == 0);
  kiln__calib_qparams(0, 0, &s, &zp);
  assert_true(s == 1.0f && zp == 0);

  enum { NB = KILN__CALIB_BINS, N = 100000 };
  static uint64_t bins[NB];
  static float v[N];
  static double work[2 * NB];
  /* percentile of a ramp: |x| for x = -(i) and +(i), i = 0..999 -> the 99th percentile of |x| is
     989 (990 of the 1000 magnitudes are <= 989); the answer is exact to one bin */
  for (int i = 0; i < 1000; i++) v[2 * i] = (float)i, v[2 * i + 1] = -(float)i;
  memset(bins, 0, sizeof bins);
  kiln__calib_hist_add(bins, NB, 999.0f, v, 2000);
  float t = kiln__calib_percentile(bins, NB, 999.0f, 99.0);
  float width = 999.0f / NB;
  assert_true(t >= 989.0f && t <= 989.0f + 2 * width);
  assert_true(kiln__calib_percentile(bins, NB, 999.0f, 100.0) == 999.0f);

  /* entropy on a uniform |x| on [0, 1]: nothing to clip, the threshold stays near the max */
  uint64_t seed = 42;
  for (int i = 0; i < N; i++) v[i] = (float)((double)lcg(&seed) / 9007199254740992.0);
  memset(bins, 0, sizeof bins);
  kiln__calib_hist_add(bins, NB, 1.0f, v, N);
  t = kiln__calib_entropy(bins, NB, 1.0f, KILN__CALIB_QBINS, work);
  assert_true(t >= 0.95f && t <= 1.0f);
  /* entropy on a Gaussian N(0,1) with 20 outliers at 40: the outliers are clipped (minmax would
     keep 40, spending most of the 256 levels on nothing) while the body (|x| < ~4.5) is kept */
  for (int i = 0; i + 1 < N; i += 2) {
    double u1 = ((double)lcg(&seed) + 1) / 9007199254740993.0, u2 = (double)lcg(&seed) / 9007199254740992.0;
    double r = sqrt(-2 * log(u1));
    v[i] = (float)(r * cos(6.283185307179586 * u2));
    v[i + 1] = (float)(r * sin(6.283185307179586 * u2));
  }
  for (int i = 0; i < 20; i++) v[i * 997] = i % 2 ? 40.0f : -40.0f;
  memset(bins, 0, sizeof bins);
  kiln__calib_hist_add(bins, NB, 40.0f, v, N);
  t = kiln__calib_entropy(bins, NB, 40.0f, KILN__CALIB_QBINS, work);
  fprintf(stderr, "entropy threshold for N(0,1) + outliers: %g\n", t);
  assert_true(t >= 2.5f && t <= 12.0f);
  /* the 99.99th percentile of the same data: between the body's tail and the outliers */
  t = kiln__calib_percentile(bins, NB, 40.0f, 99.9);
  assert_true(t > 3.0f && t < 4.0f); /* N(0,1): P(|x| > 3.29) = 0.001 */
}

/* IEEE half -> float, written from the format (not Kiln's converter). */
static float f16_widen(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 1023;
  float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(1024 + m), e - 25);
  return h >> 15 ? -v : v;
}

/* The float32 scales a MatMulNBits node reads: its initializer, or (fp16 scales) the float16
   initializer of the Cast(to=FLOAT) that produces the input, widened here. NULL otherwise; the
   caller frees. */
static float *node_scales(const kiln__graph *g, int v, bool *was_f16) {
  const kiln__value *val = &g->values[v];
  const kiln_tensor *t = val->is_initializer ? &val->init : NULL;
  *was_f16 = false;
  for (int i = 0; i < g->n_nodes && !t; i++) {
    const kiln__node *n = &g->nodes[i];
    if (strcmp(n->op_type, "Cast") || n->out[0] != v) continue;
    assert_int_equal(kiln__attr_int(n, "to", -1), 1); /* FLOAT */
    t = &g->values[n->in[0]].init;
    assert_true(g->values[n->in[0]].is_initializer);
    assert_int_equal(t->dtype, KILN_DTYPE_FLOAT16);
    *was_f16 = true;
  }
  if (!t) return NULL;
  size_t cnt = kiln_tensor_count(t);
  float *out = malloc(cnt * sizeof *out);
  assert_non_null(out);
  for (size_t i = 0; i < cnt; i++)
    out[i] = *was_f16 ? f16_widen(((const uint16_t *)t->data)[i]) : ((const float *)t->data)[i];
  return out;
}

/* Decodes one MatMulNBits weight (independently of the writer: the contrib op's spec) and checks
   it against the float weight: every weight within half a step of its block, the node's
   attributes and shapes as the spec says. Returns the number of MatMulNBits nodes. */
static int check_q4_file(const char *path, const char *src, int block, bool asym, bool f16,
                         int acc_level) {
  kiln__graph *g = NULL, *f = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__onnx_import_file(path, &g, &err), KILN_OK);
  assert_int_equal(kiln__onnx_import_file(src, &f, &err), KILN_OK);
  int found = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    if (strcmp(n->op_type, "MatMulNBits")) continue;
    found++;
    assert_string_equal(n->domain, "com.microsoft");
    int64_t K = kiln__attr_int(n, "K", -1), N = kiln__attr_int(n, "N", -1);
    assert_int_equal(kiln__attr_int(n, "bits", -1), 4);
    assert_int_equal(kiln__attr_int(n, "block_size", -1), block);
    assert_int_equal(kiln__attr_int(n, "accuracy_level", 0), acc_level);
    assert_int_equal(n->n_in, asym ? 4 : 3);
    const kiln_tensor *B = &g->values[n->in[1]].init;
    bool was_f16;
    float *S = node_scales(g, n->in[2], &was_f16);
    assert_non_null(S);
    assert_int_equal(was_f16, f16);
    int64_t nb = (K + block - 1) / block;
    assert_int_equal(B->dtype, KILN_DTYPE_UINT8);
    assert_int_equal(B->rank, 3);
    assert_true(B->dims[0] == N && B->dims[1] == nb && B->dims[2] == block / 2);
    const uint8_t *Z = asym ? g->values[n->in[3]].init.data : NULL;
    if (asym) assert_int_equal(kiln_tensor_count(&g->values[n->in[3]].init), (size_t)(N * ((nb + 1) / 2)));
    /* the float weight: the digits Gemms are Gemm(transB=1) with W [N, K] named <layer>.weight */
    const kiln_tensor *W = NULL;
    for (int v = 0; v < f->n_values && !W; v++) {
      const kiln_tensor *t = &f->values[v].init;
      if (f->values[v].is_initializer && t->rank == 2 && t->dims[0] == N && t->dims[1] == K)
        W = t;
    }
    assert_non_null(W);
    const uint8_t *b = B->data;
    const float *s = S, *w = W->data;
    for (int64_t c = 0; c < N; c++)
      for (int64_t k = 0; k < K; k++) {
        int64_t blk = k / block, at = (c * nb + blk) * (block / 2) + (k % block) / 2;
        int code = k % 2 ? b[at] >> 4 : b[at] & 15;
        int zp = 8;
        if (asym) {
          uint8_t zb = Z[c * ((nb + 1) / 2) + blk / 2];
          zp = blk % 2 ? zb >> 4 : zb & 15;
        }
        float sc = s[c * nb + blk], dec = (float)(code - zp) * sc;
        /* round to nearest against the stored (fp16: rounded) scale: half a step; a code
           clamped at either end (symmetric: +m where the block's largest magnitude is -m, and
           -m itself when the rounded scale is below m / 8; asymmetric: the zero point's own
           rounding) a step */
        float tol = code == 0 || code == 15 ? fabsf(sc) : fabsf(sc) * 0.5f;
        assert_true(fabsf(dec - w[c * K + k]) <= tol * 1.0001f + 1e-7f);
      }
    free(S);
  }
  kiln__graph_free(g);
  kiln__graph_free(f);
  return found;
}

static void digits_int4(void **state) {
  (void)state;
  char src[1024], q[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  for (int k = 0; k < 6; k++) {
    kiln_quant_opts o = kiln_quant_opts_default();
    o.format = KILN_QUANT_INT4;
    o.block_size = k == 2 ? 64 : 32;
    o.asymmetric = k == 1 || k == 5;
    o.fp32_scales = k == 3; /* the default is float16 scales */
    o.accuracy_level = k >= 4 ? 4 : 0; /* int8 activations: Kiln's q8 kernels */
    kiln_quant_stats st;
    char tag[32];
    snprintf(tag, sizeof tag, "int4_%d", k);
    quantize_digits_opts(&o, tag, q, sizeof q, &st);
    assert_int_equal(st.nodes_quantized, 2);  /* the Gemms */
    assert_int_equal(st.nodes_kept_float, 2); /* the Convs */
    /* 64x512 and 10x64 weights: half a byte each plus one scale (2 or 4 bytes) per block */
    size_t blocks = 64 * (512 / (size_t)o.block_size) + 10 * ((64 + (size_t)o.block_size - 1) / (size_t)o.block_size);
    size_t zps = o.asymmetric ? 64 * (512 / 32 / 2) + 10 * 1 : 0;
    assert_int_equal(st.weight_bytes_after,
                     blocks * ((size_t)o.block_size / 2) + blocks * (o.fp32_scales ? 4 : 2) + zps);
    assert_int_equal(check_q4_file(q, src, o.block_size, o.asymmetric, !o.fp32_scales,
                                   o.accuracy_level), 2);
    assert_true(file_size(q) < file_size(src) * 30 / 100);
    /* Kiln runs it (MatMulNBits, cpu kernel: 450 rows take the dequantize + SGEMM path, or with
       accuracy_level 4 the int8-activation kernels): top-1 within 1 point of FP32's 443/450,
       i.e. at least 439 */
    float logits[450 * 10];
    int correct = run_digits(q, logits);
    fprintf(stderr, "int4 block %d%s %s scales%s: %d/450\n", o.block_size,
            o.asymmetric ? " asym" : "", o.fp32_scales ? "fp32" : "fp16",
            o.accuracy_level ? ", int8 activations" : "", correct);
    assert_true(correct >= 439);
  }
}

/* A file with float16 scales (behind Cast) runs exactly as the same codes with float32 scales
   equal to the rounded values, written here as plain initializers (widened from the file's
   float16 independently of the Cast kernel): same logits bit for bit. */
static void int4_fp16_scales_exact(void **state) {
  (void)state;
  char q[1024], q2[1024];
  kiln_quant_opts o = kiln_quant_opts_default();
  o.format = KILN_QUANT_INT4;
  o.asymmetric = true;
  quantize_digits_opts(&o, "int4_f16", q, sizeof q, NULL);
  kiln__graph *g = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__onnx_import_file(q, &g, &err), KILN_OK);
  int replaced = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    if (strcmp(g->nodes[i].op_type, "MatMulNBits")) continue;
    bool was_f16;
    float *S = node_scales(g, g->nodes[i].in[2], &was_f16);
    assert_true(S && was_f16);
    char name[64];
    snprintf(name, sizeof name, "test_scales_%d", i);
    int v = kiln__graph_value(g, name);
    assert_true(v >= 0);
    kiln__value *val = &g->values[v];
    int64_t cnt = kiln__attr_int(&g->nodes[i], "N", 0) *
                  ((kiln__attr_int(&g->nodes[i], "K", 0) + 31) / 32);
    assert_int_equal(kiln_tensor_alloc(&val->init, KILN_DTYPE_FLOAT, 1, &cnt, &err), KILN_OK);
    memcpy(val->init.data, S, (size_t)cnt * sizeof *S);
    val->is_initializer = true;
    val->dtype = KILN_DTYPE_FLOAT;
    val->rank = 1;
    val->dims[0] = cnt;
    g->nodes[i].in[2] = v;
    free(S);
    replaced++;
  }
  assert_int_equal(replaced, 2);
  snprintf(q2, sizeof q2, "%s/digits_int4_f32rounded.onnx", tmp_dir);
  assert_int_equal(kiln__onnx_export(g, "test_quant", q2, &err), KILN_OK);
  kiln__graph_free(g);
  static float a[450 * 10], b[450 * 10];
  int ca = run_digits(q, a), cb = run_digits(q2, b);
  assert_int_equal(ca, cb);
  assert_memory_equal(a, b, sizeof a);
}

/* Static int8 and int4 reject what they cannot do, with the reason. */
static void int8_int4_bad_input(void **state) {
  (void)state;
  char src[1024], out[1024];
  path_in(src, sizeof src, models_dir, "digits/digits_cnn.onnx");
  snprintf(out, sizeof out, "%s/bad.onnx", tmp_dir);
  kiln_error err = {0};
  kiln_quant_opts o = kiln_quant_opts_default();
  o.format = KILN_QUANT_INT8;
  assert_int_equal(kiln_quantize_file_ex(src, out, &o, NULL, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "needs calibration data"));
  o.calib_dir = tests_dir; /* no input.npy there */
  assert_int_not_equal(kiln_quantize_file_ex(src, out, &o, NULL, &err), KILN_OK);
  assert_non_null(strstr(err.message, "input.npy"));
  char calib[1024];
  path_in(calib, sizeof calib, tests_dir, "data/digits_calib");
  o.calib_dir = calib;
  o.method = KILN_CALIB_PERCENTILE;
  o.percentile = 0;
  assert_int_equal(kiln_quantize_file_ex(src, out, &o, NULL, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "percentile"));
  o = kiln_quant_opts_default();
  o.format = KILN_QUANT_INT4;
  o.block_size = 24;
  assert_int_equal(kiln_quantize_file_ex(src, out, &o, NULL, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "block size 24"));
  o.block_size = 32;
  o.accuracy_level = 5;
  assert_int_equal(kiln_quantize_file_ex(src, out, &o, NULL, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "accuracy level 5"));
  assert_int_not_equal(access(out, F_OK), 0);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_quant MODELS_DIR TESTS_DIR\n");
    return 2;
  }
  models_dir = argv[1];
  tests_dir = argv[2];
  snprintf(tmp_dir, sizeof tmp_dir, "/tmp/kiln_test_quant_XXXXXX");
  if (!mkdtemp(tmp_dir)) return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(digits_fp16),
      cmocka_unit_test(digits_int8_dynamic),
      cmocka_unit_test(digits_int8_dynamic_per_row),
      cmocka_unit_test(validate_matches_direct),
      cmocka_unit_test(bad_input),
      cmocka_unit_test(per_node_overrides),
      cmocka_unit_test(bf16_rounding),
      cmocka_unit_test(digits_bf16),
      cmocka_unit_test(digits_int8_static),
      cmocka_unit_test(calib_methods),
      cmocka_unit_test(digits_int4),
      cmocka_unit_test(int4_fp16_scales_exact),
      cmocka_unit_test(int8_int4_bad_input),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
  if (system(cmd) != 0) rc = rc ? rc : 1;
  return rc;
}
