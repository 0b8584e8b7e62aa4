/* Quantizing models written the way paddle2onnx writes PP-OCR (src/quant/qprep.c): opset 9, every
   weight a Constant node, Clip/Slice/Squeeze/Unsqueeze with attributes, Softmax on axis 1 of a
   rank-3 tensor. Oracle: numpy's output of the opset-9 model (tools/make_quant_prep_fixtures.py).
   Raising the opset must not change the function; every format must now quantize the model and
   keep Softmax-9's normalization over the flattened tail; an op not known to keep its meaning
   (Split-2) is refused by name. */
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
#include "kiln/quant.h"
#include "onnx/export.h"
#include "onnx/import.h"
#include "quant/quant.h"

static const char *tests_dir;
static char model9[1024], split9[1024], data_dir[1024];
static kiln_tensor x, expected; /* numpy: y [2, 2, 5] */

/* Runs `path` on x and copies its output y [2, 2, 5] into y. */
static void run_model(const char *path, float y[20]) {
  kiln_model *m = kt_load(path, 1, -1);
  kiln_session *s = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  const char *names[1] = {"x"};
  kiln_status st = kiln_session_run(s, names, &x, 1, &err);
  if (st != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(st, KILN_OK);
  kiln_tensor out;
  assert_int_equal(kiln_session_output(s, 0, &out), KILN_OK);
  assert_int_equal(kiln_tensor_count(&out), 20);
  memcpy(y, out.data, 20 * sizeof *y);
  kiln_session_free(s);
  kiln_model_free(m);
}

static float max_err(const float *y) {
  float e = 0;
  for (int i = 0; i < 20; i++) e = fmaxf(e, fabsf(y[i] - ((const float *)expected.data)[i]));
  return e;
}

static int64_t file_opset(const char *path) {
  kiln__graph *g = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__onnx_import_file(path, &g, &err), KILN_OK);
  int64_t v = g->opset;
  kiln__graph_free(g);
  return v;
}

/* The opset-9 graph raised to `to` and written out computes numpy's opset-9 function. */
static void raise_to(int64_t to) {
  kiln__graph *g = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__onnx_import_file(model9, &g, &err), KILN_OK);
  kiln__quant_const_to_init(g);
  for (int i = 0; i < g->n_nodes; i++) assert_string_not_equal(g->nodes[i].op_type, "Constant");
  kiln_quant_opts o = kiln_quant_opts_default();
  kiln__qctx q = {.g = g, .err = &err, .opts = &o, .n_orig = g->n_values};
  kiln_status st = kiln__quant_raise_opset(&q, to);
  if (st != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(st, KILN_OK);
  assert_int_equal(g->opset, to);
  assert_int_equal(kiln__graph_finalize(g, &err), KILN_OK);
  char path[64];
  snprintf(path, sizeof path, "/tmp/kiln_test_qprep_%d.onnx", (int)getpid());
  assert_int_equal(kiln__onnx_export(g, "test", path, &err), KILN_OK);
  kiln__graph_free(g);
  assert_int_equal(file_opset(path), to);
  float y[20];
  run_model(path, y);
  unlink(path);
  assert_true(max_err(y) < 1e-6f);
}

static void raise_exact(void **state) {
  (void)state;
  float y[20];
  run_model(model9, y); /* the fixture itself, as Kiln reads opset 9 */
  assert_true(max_err(y) < 1e-6f);
  raise_to(11); /* Clip and Slice rewritten */
  raise_to(13); /* and Squeeze, Unsqueeze, Softmax */
}

/* Every format quantizes the model (each refused it before: no initializer weights, old opset)
   and the output still normalizes over the flattened tail, as Softmax-9 does. */
static void formats_quantize(void **state) {
  (void)state;
  static const struct {
    kiln_quant_format f;
    size_t nodes;  /* Conv and MatMul, or the MatMul alone */
    int64_t opset; /* raised only as far as the format needs */
  } cases[] = {
      {KILN_QUANT_FP16, 2, 9},          {KILN_QUANT_BF16, 2, 13}, {KILN_QUANT_INT8, 2, 13},
      {KILN_QUANT_INT8_DYNAMIC, 1, 11}, {KILN_QUANT_INT4, 1, 9},
  };
  char path[64];
  snprintf(path, sizeof path, "/tmp/kiln_test_qprep_f%d.onnx", (int)getpid());
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    kiln_quant_opts o = kiln_quant_opts_default();
    o.format = cases[c].f;
    if (o.format == KILN_QUANT_INT8) o.calib_dir = data_dir;
    kiln_quant_stats qs;
    kiln_error err = {0};
    kiln_status st = kiln_quantize_file_ex(model9, path, &o, &qs, &err);
    if (st != KILN_OK) fprintf(stderr, "%s: %s\n", kiln_quant_format_name(o.format), err.message);
    assert_int_equal(st, KILN_OK);
    assert_int_equal(qs.nodes_quantized, cases[c].nodes);
    assert_int_equal(file_opset(path), cases[c].opset);
    float y[20];
    run_model(path, y);
    for (int b = 0; b < 2; b++) {
      double sum = 0; /* opset 13's Softmax on axis 1 alone would make this 5 */
      for (int i = 0; i < 10; i++) sum += y[b * 10 + i];
      assert_true(fabs(sum - 1.0) < 1e-5);
    }
    assert_true(max_err(y) < 0.1f); /* 4-bit weights: measured 0.066; int8 0.009, bf16 0.001 */
  }
  unlink(path);
}

/* Split-2 (split as an attribute; an input from 13) is refused by name, nothing written; fp16
   needs no raise and still converts the Constant-node Conv weight. */
static void unknown_op_refused(void **state) {
  (void)state;
  char path[64];
  snprintf(path, sizeof path, "/tmp/kiln_test_qprep_s%d.onnx", (int)getpid());
  unlink(path);
  kiln_quant_opts o = kiln_quant_opts_default();
  o.format = KILN_QUANT_INT8;
  o.calib_dir = data_dir;
  kiln_error err = {0};
  assert_int_equal(kiln_quantize_file_ex(split9, path, &o, NULL, &err), KILN_UNSUPPORTED);
  assert_non_null(strstr(err.message, "(Split)"));
  assert_int_equal(access(path, F_OK), -1);
  o.format = KILN_QUANT_FP16;
  o.calib_dir = NULL;
  kiln_quant_stats qs;
  assert_int_equal(kiln_quantize_file_ex(split9, path, &o, &qs, &err), KILN_OK);
  assert_int_equal(qs.nodes_quantized, 1);
  unlink(path);
}

/* Pruning sees weights written as Constant nodes too (it found no layer in such models): half
   of each layer's weights become zero, and the file still runs. */
static void prune_constant_weights(void **state) {
  (void)state;
  char path[64];
  snprintf(path, sizeof path, "/tmp/kiln_test_qprep_p%d.onnx", (int)getpid());
  kiln_prune_report rep;
  kiln_error err = {0};
  kiln_status st = kiln_prune_file(model9, path, KILN_PRUNE_UNSTRUCTURED, 0.5, &rep, &err);
  if (st != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(st, KILN_OK);
  assert_int_equal(rep.n_layers, 2); /* the Conv and the MatMul */
  for (size_t i = 0; i < rep.n_layers; i++)
    assert_true(rep.layers[i].weights_zero >= rep.layers[i].weights_before / 2);
  assert_true(rep.zeros_after >= rep.zeros_before + rep.layers[0].weights_before / 2);
  kiln_prune_report_free(&rep);
  float y[20];
  run_model(path, y);
  unlink(path);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_quant_prep TESTS_DIR\n");
    return 2;
  }
  tests_dir = argv[1];
  snprintf(model9, sizeof model9, "%s/models/qprep_opset9.onnx", tests_dir);
  snprintf(split9, sizeof split9, "%s/models/qprep_split9.onnx", tests_dir);
  snprintf(data_dir, sizeof data_dir, "%s/data/qprep", tests_dir);
  kiln_error err = {0};
  char p[1100];
  snprintf(p, sizeof p, "%s/x.npy", data_dir);
  if (kiln_tensor_read_npy(p, &x, &err) != KILN_OK) return 2;
  snprintf(p, sizeof p, "%s/expected.npy", data_dir);
  if (kiln_tensor_read_npy(p, &expected, &err) != KILN_OK) return 2;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(raise_exact),
      cmocka_unit_test(formats_quantize),
      cmocka_unit_test(unknown_op_refused),
      cmocka_unit_test(prune_constant_weights),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  kiln_tensor_release(&x);
  kiln_tensor_release(&expected);
  return rc;
}
