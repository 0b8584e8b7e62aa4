/* Validation extras, pruning and mixed precision (docs/QUANT.md): KL divergence against its closed
   form, perplexity and KL on a tiny LM against numpy (tools/make_quant_eval_fixtures.py), the
   per-layer table, budgets; structured pruning's identity at sparsity 0, its sizes and its choice
   of the lowest-norm channels, unstructured zeros; the --auto choice within its budget. */
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
#include "onnx/import.h"
#include "quant/qeval.h"

static const char *models_dir, *tests_dir;
static char tmp_dir[256];
static char digits[1024], digits_data[1024], digits_labels[1024];

/* ---- KL ------------------------------------------------------------------------------------------ */

static void kl_closed_form(void **state) {
  (void)state;
  /* softmax([0, log 3]) = [1/4, 3/4]; softmax([5, 5]) = [1/2, 1/2] (shifted logits: same softmax) */
  float ref[4] = {0.0f, logf(3.0f), 1.0f, 2.0f};
  float cand[4] = {5.0f, 5.0f, 1.0f, 2.0f};
  kiln__lm_acc a = {0};
  kiln__lm_acc_add(&a, ref, cand, 2, 2, NULL);
  double kl0 = 0.25 * log(0.25 / 0.5) + 0.75 * log(0.75 / 0.5); /* the second row: 0 */
  assert_int_equal(a.kl_rows, 2);
  assert_true(fabs(a.kl_sum / 2 - kl0 / 2) < 1e-7);
  /* identical rows: exactly 0, also with huge logits (no overflow) */
  float big[3] = {1000.0f, -1000.0f, 999.0f};
  kiln__lm_acc b = {0};
  int64_t tgt[1] = {2};
  kiln__lm_acc_add(&b, big, big, 1, 3, tgt);
  assert_true(b.kl_sum == 0.0);
  assert_int_equal(b.tokens, 1);
  /* -log softmax(big)[2] = log(1 + e^-1 + e^-2000) + 1 */
  assert_true(fabs(b.ref_nll - (1.0 + log(1.0 + exp(-1.0)))) < 1e-9);
  assert_int_equal(a.prob_rows + b.prob_rows, 0);
  /* rows that are distributions already (a model ending in Softmax) are read as they are:
     KL([1/4, 3/4] || [1/2, 1/2]), not the KL of their softmaxes (0.0156 here) */
  float p[4] = {0.25f, 0.75f, 0.5f, 0.5f}, q[4] = {0.5f, 0.5f, 0.5f, 0.5f};
  kiln__lm_acc c = {0};
  int64_t t2[2] = {1, 0};
  kiln__lm_acc_add(&c, p, q, 2, 2, t2);
  assert_int_equal(c.prob_rows, 2);
  assert_true(fabs(c.kl_sum - kl0) < 1e-7);
  assert_true(fabs(c.ref_nll - (-log(0.75) - log(0.5))) < 1e-7);
  /* one row that is not a distribution: the batch is logits */
  q[3] = 0.6f;
  kiln__lm_acc d = {0};
  kiln__lm_acc_add(&d, p, q, 2, 2, NULL);
  assert_int_equal(d.prob_rows, 0);
}

/* ---- perplexity on the tiny LM --------------------------------------------------------------- */

static void lm_validate(const char *a, const char *b, kiln_validate_ex_report *r) {
  char ra[1024], rb[1024], data[1024];
  snprintf(ra, sizeof ra, "%s/models/%s", tests_dir, a);
  snprintf(rb, sizeof rb, "%s/models/%s", tests_dir, b);
  snprintf(data, sizeof data, "%s/data/qeval/lm", tests_dir);
  kiln_validate_ex_opts o = kiln_validate_ex_opts_default();
  o.perplexity = true;
  o.base.batch = 2; /* 3 samples: a full and a partial batch */
  kiln_error err = {0};
  kiln_status st = kiln_validate_files_ex(ra, rb, data, NULL, &o, r, &err);
  if (st != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(st, KILN_OK);
}

static void lm_perplexity(void **state) {
  (void)state;
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/data/qeval", tests_dir);
  kiln_tensor e;
  kt_read_npy(dir, "lm_expected.npy", &e);
  const double *x = e.data; /* numpy: ppl a, ppl b, kl(a||b), tokens */
  kiln_validate_ex_report r;
  lm_validate("qeval_lm_a.onnx", "qeval_lm_b.onnx", &r);
  assert_true(r.has_perplexity);
  assert_int_equal(r.tokens, (size_t)x[3]);
  assert_true(fabs(r.ref_ppl / x[0] - 1) < 1e-5);
  assert_true(fabs(r.cand_ppl / x[1] - 1) < 1e-5);
  assert_true(fabs(r.ppl_ratio - x[1] / x[0]) < 1e-5);
  assert_true(fabs(r.kl_divergence - x[2]) < 1e-5);
  kiln_validate_ex_report_free(&r);
  /* a model against itself: KL 0, ratio 1 */
  lm_validate("qeval_lm_a.onnx", "qeval_lm_a.onnx", &r);
  assert_true(r.kl_divergence == 0.0);
  assert_true(r.ppl_ratio == 1.0);
  assert_true(fabs(r.ref_ppl / x[0] - 1) < 1e-5);
  kiln_validate_ex_report_free(&r);
  kiln_tensor_release(&e);
}

/* ---- per-layer table and budgets --------------------------------------------------------------- */

static void quantize(kiln_quant_format f, char *out, size_t cap) {
  snprintf(out, cap, "%s/digits_%s.onnx", tmp_dir, kiln_quant_format_name(f));
  kiln_error err = {0};
  assert_int_equal(kiln_quantize_file(digits, out, f, NULL, &err), KILN_OK);
}

static void per_layer_table(void **state) {
  (void)state;
  char q[1024];
  quantize(KILN_QUANT_INT8_DYNAMIC, q, sizeof q);
  kiln_validate_ex_opts o = kiln_validate_ex_opts_default();
  o.per_layer = true;
  kiln_validate_ex_report r;
  kiln_error err = {0};
  assert_int_equal(kiln_validate_files_ex(digits, q, digits_data, digits_labels, &o, &r, &err), KILN_OK);
  assert_int_equal(r.n_layers, 4);
  int convs = 0;
  for (size_t i = 0; i < r.n_layers; i++) {
    const kiln_layer_error *e = &r.layers[i];
    assert_true(e->matched);
    if (i) assert_true(r.layers[i - 1].snr_drop_db >= e->snr_drop_db); /* worst first */
    if (!strcmp(e->op, "Conv")) {
      /* int8-dynamic keeps Conv float and the Convs come first: exact */
      assert_true(isinf(e->snr_db) && e->max_abs_err == 0 && e->cosine == 1.0);
      convs++;
    } else {
      assert_true(isfinite(e->snr_db) && e->snr_db > 20 && e->max_abs_err > 0);
    }
  }
  assert_int_equal(convs, 2);
  /* the first Gemm reads an exact input, so it alone adds all of its error: it hurts most */
  assert_string_equal(r.layers[0].name, "/f1/Gemm_output_0");
  assert_true(isinf(r.layers[0].in_snr_db));
  /* the last output is the model's first output: its SNR is the report's */
  for (size_t i = 0; i < r.n_layers; i++)
    if (!strcmp(r.layers[i].name, "logits")) assert_true(fabs(r.layers[i].snr_db - r.base.snr_db) < 1e-9);
  /* budgets */
  kiln_validate_budget b = kiln_validate_budget_none();
  char msg[512];
  assert_int_equal(kiln_validate_check_budget(&r, &b, msg, sizeof msg), 0);
  b.min_cosine = r.base.cosine; /* met exactly */
  b.max_accuracy_drop = 100.0 * (r.base.ref_accuracy - r.base.cand_accuracy);
  assert_int_equal(kiln_validate_check_budget(&r, &b, msg, sizeof msg), 0);
  b.min_cosine = nextafter(r.base.cosine, 2.0);
  b.max_accuracy_drop = -0.01; /* the candidate would have to gain accuracy */
  b.max_ppl_ratio = 1.02;      /* no perplexity measured: counted as missed */
  assert_int_equal(kiln_validate_check_budget(&r, &b, msg, sizeof msg), 3);
  assert_non_null(strstr(msg, "cosine"));
  assert_non_null(strstr(msg, "no perplexity"));
  kiln_validate_ex_report_free(&r);
}

/* ---- pruning ------------------------------------------------------------------------------------ */

static void run_digits(const char *path, float *logits) {
  kiln_model *m = kt_load(path, 1, -1);
  kiln_session *s = NULL;
  kiln_error err = {0};
  kiln_tensor x;
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/digits", models_dir);
  kt_read_npy(dir, "test_x.npy", &x);
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  const char *names[] = {"input"};
  assert_int_equal(kiln_session_run(s, names, &x, 1, &err), KILN_OK);
  kiln_tensor out;
  assert_int_equal(kiln_session_output(s, 0, &out), KILN_OK);
  assert_int_equal(kiln_tensor_count(&out), 4500);
  memcpy(logits, out.data, 4500 * sizeof *logits);
  kiln_session_free(s);
  kiln_model_free(m);
  kiln_tensor_release(&x);
}

static const kiln_tensor *init_of(const kiln__graph *g, const char *name) {
  int v = kiln__graph_find(g, name);
  assert_true(v >= 0 && g->values[v].is_initializer);
  return &g->values[v].init;
}

static void prune_identity_at_zero(void **state) {
  (void)state;
  char out[1024];
  snprintf(out, sizeof out, "%s/pruned0.onnx", tmp_dir);
  kiln_prune_report r;
  kiln_error err = {0};
  assert_int_equal(kiln_prune_file(digits, out, KILN_PRUNE_STRUCTURED, 0.0, &r, &err), KILN_OK);
  assert_int_equal(r.params_before, r.params_after);
  kiln_prune_report_free(&r);
  static float a[4500], b[4500];
  run_digits(digits, a);
  run_digits(out, b);
  assert_memory_equal(a, b, sizeof a); /* bit-equal */
}

static double l1_row(const float *w, size_t row, size_t per) {
  double s = 0;
  for (size_t k = 0; k < per; k++) s += fabs(w[row * per + k]);
  return s;
}

static void prune_structured_half(void **state) {
  (void)state;
  char out[1024];
  snprintf(out, sizeof out, "%s/pruned50.onnx", tmp_dir);
  kiln_prune_report r;
  kiln_error err = {0};
  assert_int_equal(kiln_prune_file(digits, out, KILN_PRUNE_STRUCTURED, 0.5, &r, &err), KILN_OK);
  /* Conv 1->16 -> 8, Conv 16->32 -> 8->16, Gemm 512->64 -> 256->32 (16 channels x 16 positions
     after Flatten), Gemm 64->10 -> 32->10 (its output is the graph's: whole) */
  size_t expect = (8 * 9 + 8) + (16 * 8 * 9 + 16) + (32 * 256 + 32) + (10 * 32 + 10);
  assert_int_equal(r.params_before, 38282);
  assert_int_equal(r.params_after, expect);
  assert_int_equal(r.n_layers, 4);
  assert_int_equal(r.layers[0].channels_after, 8);
  assert_int_equal(r.layers[2].channels_after, 32);
  assert_true(r.layers[3].skipped[0] != 0);
  kiln_prune_report_free(&r);
  /* loads, infers its shapes and runs */
  static float y[4500];
  run_digits(out, y);
  for (int i = 0; i < 4500; i++) assert_true(isfinite(y[i]));
  /* the kept c1 filters are the 8 of highest L1 norm, in their order: each kept norm >= every
     removed one, and the rows are the original rows */
  kiln__graph *g0 = NULL, *g1 = NULL;
  assert_int_equal(kiln__onnx_import_file(digits, &g0, &err), KILN_OK);
  assert_int_equal(kiln__onnx_import_file(out, &g1, &err), KILN_OK);
  const kiln_tensor *w0 = init_of(g0, "c1.weight"), *w1 = init_of(g1, "c1.weight");
  assert_int_equal(w1->dims[0], 8);
  bool kept[16] = {false};
  size_t at = 0;
  for (size_t row = 0; row < 16 && at < 8; row++)
    if (!memcmp((const float *)w0->data + row * 9, (const float *)w1->data + at * 9, 9 * sizeof(float))) {
      kept[row] = true;
      at++;
    }
  assert_int_equal(at, 8);
  for (size_t i = 0; i < 16; i++)
    for (size_t j = 0; j < 16; j++)
      if (kept[i] && !kept[j]) assert_true(l1_row(w0->data, i, 9) >= l1_row(w0->data, j, 9));
  /* c2 keeps the input channels of the kept c1 filters */
  const kiln_tensor *c2 = init_of(g1, "c2.weight");
  assert_int_equal(c2->dims[1], 8);
  kiln__graph_free(g0);
  kiln__graph_free(g1);
}

static void prune_unstructured(void **state) {
  (void)state;
  char out[1024];
  snprintf(out, sizeof out, "%s/pruned_u30.onnx", tmp_dir);
  kiln_prune_report r;
  kiln_error err = {0};
  assert_int_equal(kiln_prune_file(digits, out, KILN_PRUNE_UNSTRUCTURED, 0.3, &r, &err), KILN_OK);
  assert_int_equal(r.params_after, r.params_before);
  kiln__graph *g0 = NULL, *g1 = NULL;
  assert_int_equal(kiln__onnx_import_file(digits, &g0, &err), KILN_OK);
  assert_int_equal(kiln__onnx_import_file(out, &g1, &err), KILN_OK);
  static const char *const ws[] = {"c1.weight", "c2.weight", "f1.weight", "f2.weight"};
  for (int k = 0; k < 4; k++) {
    const kiln_tensor *a = init_of(g0, ws[k]), *b = init_of(g1, ws[k]);
    size_t n = kiln_tensor_count(a), zeros = 0;
    const float *x = a->data, *y = b->data;
    float max_dropped = 0, min_kept = INFINITY;
    for (size_t i = 0; i < n; i++) {
      if (y[i] == 0) {
        zeros++;
        if (fabsf(x[i]) > max_dropped) max_dropped = fabsf(x[i]);
      } else {
        assert_true(y[i] == x[i]);
        if (fabsf(x[i]) < min_kept) min_kept = fabsf(x[i]);
      }
    }
    assert_int_equal(zeros, (size_t)floor(0.3 * (double)n)); /* no weight was already 0 */
    assert_int_equal(r.layers[k].weights_zero, zeros);
    assert_true(max_dropped <= min_kept);
  }
  kiln__graph_free(g0);
  kiln__graph_free(g1);
  kiln_prune_report_free(&r);
  /* bad sparsity */
  assert_int_equal(kiln_prune_file(digits, out, KILN_PRUNE_STRUCTURED, 1.0, &r, &err), KILN_INVALID_ARGUMENT);
  assert_int_equal(kiln_prune_file(digits, out, KILN_PRUNE_STRUCTURED, NAN, &r, &err), KILN_INVALID_ARGUMENT);
}

/* ---- mixed precision ----------------------------------------------------------------------------- */

static void auto_digits(void **state) {
  (void)state;
  char out[1024];
  snprintf(out, sizeof out, "%s/auto.onnx", tmp_dir);
  kiln_auto_opts o = kiln_auto_opts_default();
  o.metric = KILN_AUTO_COSINE;
  o.budget = 0.99999;
  o.calib_dir = digits_data;
  kiln_auto_report r;
  kiln_error err = {0};
  kiln_status st = kiln_quantize_auto_file(digits, out, &o, &r, &err);
  if (st != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(st, KILN_OK);
  assert_int_equal(r.n_layers, 4);
  size_t quantized = 0;
  for (size_t i = 0; i < r.n_layers; i++) {
    quantized += r.layers[i].format != KILN_QUANT_NONE;
    /* int8-dynamic cannot take a Conv */
    if (strstr(r.layers[i].name, "Conv")) assert_true(r.layers[i].format != KILN_QUANT_INT8_DYNAMIC);
    if (i) assert_true(r.layers[i - 1].sensitivity <= r.layers[i].sensitivity);
  }
  assert_true(quantized > 0);
  assert_true(r.weight_bytes_after < r.weight_bytes_before);
  /* the written model meets the budget when validated independently */
  kiln_validate_report v;
  assert_int_equal(kiln_validate_files(digits, out, digits_data, NULL, NULL, &v, &err), KILN_OK);
  assert_true(v.cosine >= 0.99999);
  assert_true(fabs(v.cosine - r.metric) < 1e-9);
  kiln_auto_report_free(&r);
  /* a budget nothing meets (fp16 alone moves the cosine by ~1e-10): UNSUPPORTED, nothing written */
  char none[1024];
  snprintf(none, sizeof none, "%s/none.onnx", tmp_dir);
  o.budget = 1.0 - 1e-13;
  assert_int_equal(kiln_quantize_auto_file(digits, none, &o, &r, &err), KILN_UNSUPPORTED);
  assert_int_equal(access(none, F_OK), -1);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_quant_eval MODELS_DIR TESTS_DIR\n");
    return 2;
  }
  models_dir = argv[1];
  tests_dir = argv[2];
  snprintf(digits, sizeof digits, "%s/digits/digits_cnn.onnx", models_dir);
  snprintf(digits_labels, sizeof digits_labels, "%s/digits/test_y.npy", models_dir);
  snprintf(tmp_dir, sizeof tmp_dir, "/tmp/kiln_test_qeval_XXXXXX");
  if (!mkdtemp(tmp_dir)) return 2;
  /* validate reads <input name>.npy from a folder: link the digits' test_x.npy as input.npy */
  snprintf(digits_data, sizeof digits_data, "%s/data", tmp_dir);
  char x[1024], link_path[1100];
  snprintf(x, sizeof x, "%s/digits/test_x.npy", models_dir);
  snprintf(link_path, sizeof link_path, "%s/input.npy", digits_data);
  if (mkdir(digits_data, 0700) || symlink(x, link_path)) return 2; /* ctest passes absolute dirs */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(kl_closed_form),        cmocka_unit_test(lm_perplexity),
      cmocka_unit_test(per_layer_table),       cmocka_unit_test(prune_identity_at_zero),
      cmocka_unit_test(prune_structured_half), cmocka_unit_test(prune_unstructured),
      cmocka_unit_test(auto_digits),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp_dir);
  if (system(cmd)) rc = rc ? rc : 1;
  return rc;
}
