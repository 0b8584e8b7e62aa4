/* End-to-end tests of the public API on the shipped digits CNN and transformer block: accuracy
   against the labels, logits against the saved FP32 reference, input validation errors, plan
   caching and memory planning figures, and zero heap allocations per warm run. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "kiln_test.h"

#include "kiln/kiln.h"
#include "core/common.h" /* kiln__alloc_fail_after: the allocator is the fault injector */

static const char *models_dir; /* argv[1]: the repository's models/ folder */
static const char *tests_dir;  /* argv[2]: the repository's tests/ folder */

static kiln_model *load(const char *rel_dir, const char *file, int threads) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", rel_dir, file);
  return kt_load(path, threads, -1);
}

static void read_npy(const char *file, kiln_tensor *t) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/digits", models_dir);
  kt_read_npy(dir, file, t);
}

static void digits_accuracy_and_logits(void **state) {
  (void)state;
  kiln_model *m = load(models_dir, "digits/digits_cnn.onnx", 2);
  kiln_tensor x, y, ref;
  read_npy("test_x.npy", &x);
  read_npy("test_y.npy", &y);
  read_npy("test_logits.npy", &ref);
  kiln_session *s = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  const char *names[] = {"input"};
  assert_int_equal(kiln_session_run(s, names, &x, 1, &err), KILN_OK);
  kiln_tensor out;
  assert_int_equal(kiln_session_output(s, 0, &out), KILN_OK);
  assert_int_equal(out.rank, 2);
  assert_int_equal(out.dims[0], 450);
  assert_int_equal(out.dims[1], 10);
  const float *lo = out.data, *lr = ref.data;
  const int64_t *labels = y.data;
  int correct = 0;
  int mismatched = 0;
  for (int r = 0; r < 450; r++) {
    int best = 0;
    for (int c = 1; c < 10; c++)
      if (lo[r * 10 + c] > lo[r * 10 + best]) best = c;
    correct += best == labels[r];
    /* allclose(rtol=1e-4, atol=1e-5) elementwise: logits reach 30, so atol covers float
       rounding of the near-zero ones */
    for (int c = 0; c < 10; c++) {
      double e = lr[r * 10 + c], a = lo[r * 10 + c];
      mismatched += !(fabs(a - e) <= 1e-5 + 1e-4 * fabs(e));
    }
  }
  /* The reference FP32 accuracy is 443/450 (shared/models/README.md). */
  assert_int_equal(correct, 443);
  assert_int_equal(mismatched, 0);
  kiln_session_free(s);
  kiln_tensor_release(&x);
  kiln_tensor_release(&y);
  kiln_tensor_release(&ref);
  kiln_model_free(m);
}

static void bad_inputs_are_errors(void **state) {
  (void)state;
  kiln_model *m = load(models_dir, "digits/digits_cnn.onnx", 1);
  kiln_session *s = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  float buf[64 * 2] = {0};
  kiln_tensor t = {.dtype = KILN_DTYPE_FLOAT, .rank = 4, .dims = {1, 1, 8, 8}, .data = buf};
  const char *wrong[] = {"nope"};
  assert_int_equal(kiln_session_run(s, wrong, &t, 1, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "nope"));
  const char *names[] = {"input"};
  kiln_tensor bad_dtype = t;
  bad_dtype.dtype = KILN_DTYPE_INT32;
  assert_int_equal(kiln_session_run(s, names, &bad_dtype, 1, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "int32"));
  kiln_tensor bad_shape = t;
  bad_shape.dims[2] = 9;
  assert_int_equal(kiln_session_run(s, names, &bad_shape, 1, &err), KILN_INVALID_ARGUMENT);
  kiln_tensor bad_rank = t;
  bad_rank.rank = 3;
  assert_int_equal(kiln_session_run(s, names, &bad_rank, 1, &err), KILN_INVALID_ARGUMENT);
  assert_int_equal(kiln_session_run(s, names, &t, 0, &err), KILN_INVALID_ARGUMENT);
  /* the session still works after errors */
  assert_int_equal(kiln_session_run(s, names, &t, 1, &err), KILN_OK);
  kiln_session_free(s);
  kiln_model_free(m);
  /* a model that does not exist */
  kiln_model *none = NULL;
  assert_int_equal(kiln_model_load("/nonexistent/model.onnx", NULL, &none, &err), KILN_IO_ERROR);
  assert_null(none);
}

static void plans_are_cached_per_shape(void **state) {
  (void)state;
  kiln_model *m = load(models_dir, "digits/digits_cnn.onnx", 1);
  kiln_session *s = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  static float buf[4 * 64];
  const char *names[] = {"input"};
  kiln_tensor t1 = {.dtype = KILN_DTYPE_FLOAT, .rank = 4, .dims = {1, 1, 8, 8}, .data = buf};
  kiln_tensor t4 = {.dtype = KILN_DTYPE_FLOAT, .rank = 4, .dims = {4, 1, 8, 8}, .data = buf};
  assert_int_equal(kiln_session_run(s, names, &t1, 1, &err), KILN_OK);
  assert_int_equal(kiln_session_run(s, names, &t1, 1, &err), KILN_OK);
  assert_int_equal(kiln_session_run(s, names, &t4, 1, &err), KILN_OK);
  assert_int_equal(kiln_session_run(s, names, &t1, 1, &err), KILN_OK);
  kiln_session_stats st;
  kiln_session_stats_get(s, &st);
  assert_int_equal(st.plan_misses, 2); /* batch 1 and batch 4 */
  assert_int_equal(st.plan_hits, 2);
  /* the arena grew for batch 1, then for batch 4, and batch 1 fits in it again */
  assert_int_equal(st.pool_misses, 2);
  assert_int_equal(st.pool_hits, 2);
  assert_true(st.arena_bytes > 0);
  assert_true(st.arena_bytes < st.intermediate_bytes); /* lifetimes overlap less than all */
  kiln_tensor out;
  assert_int_equal(kiln_session_output(s, 0, &out), KILN_OK);
  assert_int_equal(out.dims[0], 1);
  kiln_session_free(s);
  kiln_model_free(m);
}

/* Warm runs with the same input shapes make no heap allocation at all. */
static void assert_no_alloc_when_warm(kiln_model *m, const char *name, kiln_tensor *in) {
  kiln_session *s = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  const char *names[] = {name};
  for (int i = 0; i < 2; i++) assert_int_equal(kiln_session_run(s, names, in, 1, &err), KILN_OK);
  uint64_t before = kiln_alloc_count();
  for (int i = 0; i < 5; i++) assert_int_equal(kiln_session_run(s, names, in, 1, &err), KILN_OK);
  assert_int_equal(kiln_alloc_count() - before, 0);
  kiln_session_stats st;
  kiln_session_stats_get(s, &st);
  assert_int_equal(st.dynamic_bytes, 0); /* everything planned, nothing sized at run time */
  kiln_session_free(s);
}

static void zero_alloc_conv_net(void **state) {
  (void)state;
  kiln_model *m = load(models_dir, "digits/digits_cnn.onnx", 2);
  kiln_tensor x;
  read_npy("test_x.npy", &x);
  x.dims[0] = 16; /* a batch of 16 from the test set */
  assert_no_alloc_when_warm(m, "input", &x);
  kiln_tensor_release(&x);
  kiln_model_free(m);
}

static void zero_alloc_transformer_block(void **state) {
  (void)state;
  kiln_model *m = load(tests_dir, "models/transformer_block.onnx", 2);
  kiln_tensor x;
  int64_t dims[3] = {2, 16, 64};
  kiln_error err = {0};
  assert_int_equal(kiln_tensor_alloc(&x, KILN_DTYPE_FLOAT, 3, dims, &err), KILN_OK);
  float *p = x.data;
  for (size_t i = 0; i < kiln_tensor_count(&x); i++) p[i] = (float)((i * 37) % 101) / 101.0f;
  assert_no_alloc_when_warm(m, "x", &x);
  /* the shape subgraph (Shape -> Slice -> Concat) is folded at planning time */
  kiln_session *s = NULL;
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  const char *names[] = {"x"};
  assert_int_equal(kiln_session_run(s, names, &x, 1, &err), KILN_OK);
  kiln_session_stats st;
  kiln_session_stats_get(s, &st);
  assert_true(st.folded_nodes >= 9);
  kiln_tensor y;
  assert_int_equal(kiln_session_output(s, 0, &y), KILN_OK);
  for (size_t i = 0; i < kiln_tensor_count(&y); i++) assert_true(isfinite(((float *)y.data)[i]));
  kiln_session_free(s);
  kiln_tensor_release(&x);
  kiln_model_free(m);
}

/* If branches that read values of the enclosing graph: those values stay alive, and apart, until
   the If runs. */
static void subgraph_captures_stay_alive(void **state) {
  (void)state;
  kiln_model *m = load(tests_dir, "models/if_capture.onnx", 1);
  kiln_session *s = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  float x[4] = {-2.0f, -0.5f, 1.0f, 3.0f};
  for (int c = 0; c < 2; c++) {
    uint8_t cond = (uint8_t)c;
    kiln_tensor in[2] = {{.dtype = KILN_DTYPE_BOOL, .rank = 0, .data = &cond},
                         {.dtype = KILN_DTYPE_FLOAT, .rank = 1, .dims = {4}, .data = x}};
    const char *names[] = {"cond", "x"};
    assert_int_equal(kiln_session_run(s, names, in, 2, &err), KILN_OK);
    kiln_tensor y;
    assert_int_equal(kiln_session_output(s, 0, &y), KILN_OK);
    for (int i = 0; i < 4; i++)
      assert_true(((float *)y.data)[i] == (cond ? fmaxf(x[i], 0.0f) : -x[i]));
  }
  kiln_session_free(s);
  kiln_model_free(m);
}

/* The interrupt hook stops a run between nodes with the status it returns; the session then
   runs normally again. */
static kiln_status stop_after_three(void *user) {
  int *calls = user;
  return ++*calls > 3 ? KILN_CANCELLED : KILN_OK;
}

static void interrupt_stops_between_nodes(void **state) {
  (void)state;
  kiln_model *m = load(tests_dir, "models/transformer_block.onnx", 1);
  kiln_session *s = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  static float buf[16 * 64];
  kiln_tensor x = {.dtype = KILN_DTYPE_FLOAT, .rank = 3, .dims = {1, 16, 64}, .data = buf};
  const char *names[] = {"x"};
  int calls = 0;
  kiln_run_opts o = kiln_run_opts_default();
  o.interrupt = stop_after_three;
  o.user = &calls;
  assert_int_equal(kiln_session_run_ex(s, names, &x, 1, &o, &err), KILN_CANCELLED);
  assert_int_equal(calls, 4);
  assert_non_null(strstr(err.message, "stopped before node"));
  kiln_tensor y;
  assert_int_equal(kiln_session_output(s, 0, &y), KILN_INVALID_ARGUMENT); /* no result */
  assert_int_equal(kiln_session_run(s, names, &x, 1, &err), KILN_OK);
  assert_int_equal(kiln_session_output(s, 0, &y), KILN_OK);
  kiln_session_free(s);
  kiln_model_free(m);
}

/* One model shared by several threads, each with its own session and its own input shapes:
   every result equals the one a lone session computes. */
typedef struct worker {
  kiln_model *m;
  int batch;
  const float *expect; /* the lone session's output for this batch */
  int mismatches;
  kiln_status st;
} worker;

static void make_input(kiln_tensor *x, int batch, float *buf) {
  *x = (kiln_tensor){.dtype = KILN_DTYPE_FLOAT, .rank = 3, .dims = {batch, 16, 64}, .data = buf};
  for (int i = 0; i < batch * 16 * 64; i++) buf[i] = (float)((i * 31) % 97) / 97.0f - 0.5f;
}

static void *worker_main(void *arg) {
  worker *w = arg;
  static _Thread_local float buf[4 * 16 * 64];
  kiln_tensor x;
  make_input(&x, w->batch, buf);
  kiln_session *s = NULL;
  kiln_error err = {0};
  const char *names[] = {"x"};
  w->st = kiln_session_create(w->m, &s, &err);
  for (int it = 0; it < 20 && w->st == KILN_OK; it++) {
    w->st = kiln_session_run(s, names, &x, 1, &err);
    kiln_tensor y;
    if (w->st == KILN_OK) kiln_session_output(s, 0, &y);
    for (int i = 0; w->st == KILN_OK && i < w->batch * 16 * 64; i++)
      w->mismatches += ((float *)y.data)[i] != w->expect[i];
  }
  kiln_session_free(s);
  return NULL;
}

static void sessions_share_a_model_across_threads(void **state) {
  (void)state;
  kiln_model *m = load(tests_dir, "models/transformer_block.onnx", 1);
  static float expect[4][4 * 16 * 64];
  static float buf[4 * 16 * 64];
  for (int b = 1; b <= 4; b++) {
    kiln_session *s = NULL;
    kiln_error err = {0};
    kiln_tensor x, y;
    make_input(&x, b, buf);
    const char *names[] = {"x"};
    assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
    assert_int_equal(kiln_session_run(s, names, &x, 1, &err), KILN_OK);
    kiln_session_output(s, 0, &y);
    memcpy(expect[b - 1], y.data, kiln_tensor_nbytes(&y));
    kiln_session_free(s);
  }
  kiln_model_free(m);
  m = load(tests_dir, "models/transformer_block.onnx", 1); /* a fresh plan cache, filled concurrently */
  pthread_t th[8];
  worker w[8];
  for (int i = 0; i < 8; i++) {
    w[i] = (worker){.m = m, .batch = 1 + i % 4, .expect = expect[i % 4]};
    assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
  }
  for (int i = 0; i < 8; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(w[i].st, KILN_OK);
    assert_int_equal(w[i].mismatches, 0);
  }
  kiln_model_free(m);
}

/* Fails the n-th allocation of load + session + two runs, for every n until all succeed: each
   failure must come back as an error status (ASan checks that nothing leaks). */
static void allocation_failures_are_clean(void **state) {
  (void)state;
  char path[1024];
  snprintf(path, sizeof path, "%s/models/transformer_block.onnx", tests_dir);
  float buf[16 * 64];
  for (size_t i = 0; i < 16 * 64; i++) buf[i] = (float)(i % 7) * 0.1f;
  kiln_tensor x = {.dtype = KILN_DTYPE_FLOAT, .rank = 3, .dims = {1, 16, 64}, .data = buf};
  const char *names[] = {"x"};
  int failures = 0;
  for (uint64_t n = 1; n < 100000; n++) {
    kiln_model_opts o = kiln_model_opts_default();
    o.intra_threads = 1;
    kiln_model *m = NULL;
    kiln_session *s = NULL;
    kiln_error err = {0};
    kiln__alloc_fail_after(n);
    kiln_status st = kiln_model_load(path, &o, &m, &err);
    if (st == KILN_OK) st = kiln_session_create(m, &s, &err);
    if (st == KILN_OK) st = kiln_session_run(s, names, &x, 1, &err);
    if (st == KILN_OK) st = kiln_session_run(s, names, &x, 1, &err);
    kiln__alloc_fail_after(0);
    kiln_session_free(s);
    kiln_model_free(m);
    if (st == KILN_OK) break;
    assert_int_equal(st, KILN_NO_MEMORY);
    failures++;
  }
  assert_true(failures > 50); /* the loop really walked through the allocations */
}

/* The planner computes a Concat in place (its inputs' producers write inside its output) only
   where that cannot change a result: see tools/make_test_models.py for plan_concat.onnx's cases.
   Every op in it is exact, so outputs must equal the arithmetic here bit for bit, at batch 1
   (two Concats in place, one nested in the other) and batch 2 (none), on the reference and the
   cpu backend, warm runs included. */
static void concat_planned_in_place(void **state) {
  (void)state;
  char path[1024];
  snprintf(path, sizeof path, "%s/models/plan_concat.onnx", tests_dir);
  static const char *const ref_only[] = {"ref", NULL};
  for (int be = 0; be < 2; be++) {
    kiln_model_opts o = kiln_model_opts_default();
    o.opt_level = 0; /* the graph as written: no pass merges its nodes */
    o.backends = be ? NULL : ref_only;
    kiln_model *m = NULL;
    kiln_error err = {0};
    assert_int_equal(kiln_model_load(path, &o, &m, &err), KILN_OK);
    kiln_session *s = NULL;
    assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
    for (int round = 0; round < 4; round++) {
      int64_t nb = round < 2 ? 1 : 2;
      static float xb[2 * 256], yb[2 * 15];
      for (int i = 0; i < 2 * 256; i++) xb[i] = (float)((i * 37 + round) % 23) * 0.25f - 2.75f;
      for (int i = 0; i < 2 * 15; i++) yb[i] = (float)((i * 11 + round) % 7) - 3.0f;
      kiln_tensor in[2] = {
          {.dtype = KILN_DTYPE_FLOAT, .rank = 4, .dims = {nb, 4, 8, 8}, .data = xb},
          {.dtype = KILN_DTYPE_FLOAT, .rank = 4, .dims = {nb, 3, 5, 1}, .data = yb}};
      const char *names[] = {"x", "y"};
      assert_int_equal(kiln_session_run(s, names, in, 2, &err), KILN_OK);
      kiln_session_stats st;
      kiln_session_stats_get(s, &st);
      assert_int_equal(st.concat_in_place, nb == 1 ? 2 : 0);
      kiln_tensor c3, c2, d, c4, c5;
      assert_int_equal(kiln_session_output(s, 0, &c3), KILN_OK);
      assert_int_equal(kiln_session_output(s, 1, &c2), KILN_OK);
      assert_int_equal(kiln_session_output(s, 2, &d), KILN_OK);
      assert_int_equal(kiln_session_output(s, 3, &c4), KILN_OK);
      assert_int_equal(kiln_session_output(s, 4, &c5), KILN_OK);
      const float *o3 = c3.data, *o2 = c2.data, *od = d.data, *o4 = c4.data, *o5 = c5.data;
      for (int64_t b = 0; b < nb; b++)
        for (int ch = 0; ch < 4; ch++)
          for (int i = 0; i < 64; i++) {
            float v = xb[b * 256 + ch * 64 + i];
            const float *p3 = o3 + b * 12 * 64, *p2 = o2 + b * 8 * 64;
            assert_true(p3[ch * 64 + i] == (v > 0 ? v : 0.0f));
            assert_true(p3[(4 + ch) * 64 + i] == (-v > 0 ? -v : 0.0f));
            assert_true(p3[(8 + ch) * 64 + i] == v * v);
            assert_true(p2[ch * 64 + i] == fabsf(v));
            assert_true(p2[(4 + ch) * 64 + i] == -fabsf(v));
            assert_true(od[b * 256 + ch * 64 + i] == fabsf(v) + v);
            /* c5 = concat on axis 2: rows 0-7 |x|, rows 8-15 -x */
            const float *p5 = o5 + b * 4 * 128 + ch * 128;
            assert_true(p5[i] == fabsf(v));
            assert_true(p5[64 + i] == -v);
          }
      for (int64_t b = 0; b < nb; b++)
        for (int i = 0; i < 15; i++) {
          float v = yb[b * 15 + i];
          assert_true(o4[b * 30 + i] == (v > 0 ? v : 0.0f));
          assert_true(o4[b * 30 + 15 + i] == -v);
        }
    }
    kiln_session_free(s);
    kiln_model_free(m);
  }
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_session MODELS_DIR TESTS_DIR\n");
    return 2;
  }
  models_dir = argv[1];
  tests_dir = argv[2];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(digits_accuracy_and_logits),
      cmocka_unit_test(bad_inputs_are_errors),
      cmocka_unit_test(plans_are_cached_per_shape),
      cmocka_unit_test(concat_planned_in_place),
      cmocka_unit_test(zero_alloc_conv_net),
      cmocka_unit_test(zero_alloc_transformer_block),
      cmocka_unit_test(subgraph_captures_stay_alive),
      cmocka_unit_test(interrupt_stops_between_nodes),
      cmocka_unit_test(sessions_share_a_model_across_threads),
      cmocka_unit_test(allocation_failures_are_clean),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
