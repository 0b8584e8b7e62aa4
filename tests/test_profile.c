/* The per-node profiler (kiln_profile): one event per executed node with the graph's names and op
   types, MACs from the shapes the ONNX file declares, times that fit inside the run, nothing
   recorded when it is off, no allocation while recording, a Chrome trace that parses (jansson),
   argument errors, sessions profiling concurrently on one model, and the MACs of a fused
   DwPwConv. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "kiln_test.h"

static const char *models_dir; /* argv[1]: the repository's models/ folder */
static const char *tests_dir;  /* argv[2]: the repository's tests/ folder */

/* models/digits/digits_cnn.onnx as onnx.shape_inference reads it, per sample of the batch:
   node names, op types, output shape (batch first) and MACs (Conv: C/g*kh*kw per output
   element; Gemm: K per output element). */
#define BATCH 16
static const struct {
  const char *name, *op;
  int rank;
  int64_t dims[3];
  uint64_t macs;
} digits_nodes[] = {
    {"/c1/Conv", "Conv", 4, {16, 8, 8}, 16 * 64 * 1 * 9},
    {"/Relu", "Relu", 4, {16, 8, 8}, 0},
    {"/c2/Conv", "Conv", 4, {32, 8, 8}, 32 * 64 * 16 * 9},
    {"/Relu_1", "Relu", 4, {32, 8, 8}, 0},
    {"/pool/MaxPool", "MaxPool", 4, {32, 4, 4}, 0},
    {"/Flatten", "Flatten", 2, {512}, 0},
    {"/f1/Gemm", "Gemm", 2, {64}, 64 * 512},
    {"/Relu_2", "Relu", 2, {64}, 0},
    {"/f2/Gemm", "Gemm", 2, {10}, 10 * 64},
};
#define N_DIGITS (sizeof digits_nodes / sizeof digits_nodes[0])

static kiln_model *load_digits(int threads, int opt_level) {
  char path[1024];
  snprintf(path, sizeof path, "%s/digits/digits_cnn.onnx", models_dir);
  return kt_load(path, threads, opt_level);
}

static void digits_input(kiln_tensor *x) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/digits", models_dir);
  kt_read_npy(dir, "test_x.npy", x);
  x->dims[0] = BATCH;
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static kiln_status run(kiln_session *s, const kiln_tensor *x, kiln_profile *p) {
  kiln_run_opts o = kiln_run_opts_default();
  o.profile = p;
  const char *names[] = {"input"};
  kiln_error err = {0};
  kiln_status st = kiln_session_run_ex(s, names, x, 1, &o, &err);
  if (st != KILN_OK) fprintf(stderr, "%s\n", err.message);
  return st;
}

/* Unoptimized digits: the events are the file's nodes, in order, with its shapes and MACs; the
   times are inside the run, and the run inside the call. */
static void events_match_the_graph(void **state) {
  (void)state;
  kiln_model *m = load_digits(1, 0);
  kiln_session *s = NULL;
  kiln_profile *p = NULL;
  kiln_error err = {0};
  kiln_tensor x;
  digits_input(&x);
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  assert_int_equal(kiln_profile_create(m, 1, &p, &err), KILN_OK);
  double t0 = now_us();
  assert_int_equal(run(s, &x, p), KILN_OK);
  double wall = now_us() - t0;
  assert_int_equal(kiln_profile_run_count(p), 1);
  assert_int_equal(kiln_profile_event_count(p), N_DIGITS);
  double run_start, run_dur, sum = 0;
  assert_int_equal(kiln_profile_run_get(p, 0, &run_start, &run_dur), KILN_OK);
  assert_true(run_start >= 0 && run_dur >= 0 && run_dur <= wall);
  double prev_end = run_start;
  for (size_t i = 0; i < N_DIGITS; i++) {
    kiln_profile_event e;
    assert_int_equal(kiln_profile_event_get(p, i, &e), KILN_OK);
    assert_int_equal(e.run, 0);
    assert_string_equal(e.name, digits_nodes[i].name);
    assert_string_equal(e.op_type, digits_nodes[i].op);
    assert_string_equal(e.domain, "");
    assert_non_null(e.backend);
    assert_non_null(e.kernel);
    assert_true(e.dur_us >= 0);
    /* nodes run one after another (1 ns slack: microseconds are ns / 1e3 in doubles) */
    assert_true(e.start_us >= prev_end - 1e-3);
    prev_end = e.start_us + e.dur_us;
    sum += e.dur_us;
    assert_int_equal(e.macs, (uint64_t)BATCH * digits_nodes[i].macs);
    assert_int_equal(e.n_outputs, 1);
    assert_int_equal(e.outputs[0].dtype, KILN_DTYPE_FLOAT);
    assert_int_equal(e.outputs[0].rank, digits_nodes[i].rank);
    assert_int_equal(e.outputs[0].dims[0], BATCH);
    for (int d = 1; d < digits_nodes[i].rank; d++)
      assert_int_equal(e.outputs[0].dims[d], digits_nodes[i].dims[d - 1]);
    assert_int_equal(e.outputs[1].rank, -1);
  }
  assert_true(prev_end <= run_start + run_dur + 1e-3);
  assert_true(sum <= run_dur + 1e-3 * N_DIGITS);
  kiln_profile_event e;
  assert_int_equal(kiln_profile_event_get(p, N_DIGITS, &e), KILN_INVALID_ARGUMENT);
  assert_int_equal(kiln_profile_run_get(p, 1, &run_start, &run_dur), KILN_INVALID_ARGUMENT);
  kiln_profile_free(p);
  kiln_session_free(s);
  kiln_tensor_release(&x);
  kiln_model_free(m);
}

/* Optimized digits (fused ops): per run, the op types recorded are the model's op histogram and
   the backends are the dispatch counts kiln_model_backend_nodes reports. */
static void events_match_histogram_and_dispatch(void **state) {
  (void)state;
  kiln_model *m = load_digits(2, -1);
  kiln_session *s = NULL;
  kiln_profile *p = NULL;
  kiln_error err = {0};
  kiln_tensor x;
  digits_input(&x);
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  assert_int_equal(kiln_profile_create(m, 2, &p, &err), KILN_OK);
  for (int r = 0; r < 2; r++) assert_int_equal(run(s, &x, p), KILN_OK);
  kiln_session_stats ss;
  kiln_session_stats_get(s, &ss);
  kiln_model_stats ms;
  kiln_model_stats_get(m, &ms);
  size_t per_run = ms.node_count - ss.folded_nodes;
  assert_int_equal(kiln_profile_event_count(p), 2 * per_run);
  const char *ops[64];
  size_t counts[64];
  size_t n_ops = kiln_model_op_histogram(m, ops, counts, 64);
  assert_true(n_ops <= 64);
  for (size_t k = 0; k < n_ops; k++) {
    size_t seen = 0;
    for (size_t i = 0; i < kiln_profile_event_count(p); i++) {
      kiln_profile_event e;
      kiln_profile_event_get(p, i, &e);
      assert_int_equal(e.run, i / per_run);
      seen += !strcmp(e.op_type, ops[k]);
    }
    assert_int_equal(seen, 2 * counts[k]);
  }
  for (size_t b = 0; b < ms.backend_count; b++) {
    const char *name;
    size_t nodes, seen = 0;
    kiln_model_backend_nodes(m, b, &name, &nodes);
    for (size_t i = 0; i < kiln_profile_event_count(p); i++) {
      kiln_profile_event e;
      kiln_profile_event_get(p, i, &e);
      seen += !strcmp(e.backend, name);
    }
    assert_int_equal(seen, 2 * nodes);
  }
  kiln_profile_free(p);
  kiln_session_free(s);
  kiln_tensor_release(&x);
  kiln_model_free(m);
}

/* Nodes folded at planning time are not run, so not recorded: the transformer block folds its
   shape chain. */
static void folded_nodes_are_not_recorded(void **state) {
  (void)state;
  char path[1024];
  snprintf(path, sizeof path, "%s/models/transformer_block.onnx", tests_dir);
  kiln_model *m = kt_load(path, 1, 0);
  kiln_tensor x;
  int64_t dims[3] = {2, 16, 64};
  kiln_error err = {0};
  assert_int_equal(kiln_tensor_alloc(&x, KILN_DTYPE_FLOAT, 3, dims, &err), KILN_OK);
  kiln_session *s = NULL;
  kiln_profile *p = NULL;
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  assert_int_equal(kiln_profile_create(m, 1, &p, &err), KILN_OK);
  kiln_run_opts o = kiln_run_opts_default();
  o.profile = p;
  const char *names[] = {"x"};
  assert_int_equal(kiln_session_run_ex(s, names, &x, 1, &o, &err), KILN_OK);
  kiln_session_stats ss;
  kiln_session_stats_get(s, &ss);
  kiln_model_stats ms;
  kiln_model_stats_get(m, &ms);
  assert_true(ss.folded_nodes > 0);
  assert_int_equal(kiln_profile_event_count(p), ms.node_count - ss.folded_nodes);
  for (size_t i = 0; i < kiln_profile_event_count(p); i++) {
    kiln_profile_event e;
    kiln_profile_event_get(p, i, &e);
    assert_string_not_equal(e.op_type, "Shape");
  }
  kiln_profile_free(p);
  kiln_session_free(s);
  kiln_tensor_release(&x);
  kiln_model_free(m);
}

/* Off records nothing; on, warm runs still make no heap allocation; runs past max_runs are
   dropped, not recorded; clear() starts over. */
static void off_records_nothing_and_on_does_not_allocate(void **state) {
  (void)state;
  kiln_model *m = load_digits(2, -1);
  kiln_session *s = NULL;
  kiln_profile *p = NULL;
  kiln_error err = {0};
  kiln_tensor x;
  digits_input(&x);
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  assert_int_equal(kiln_profile_create(m, 3, &p, &err), KILN_OK);
  for (int r = 0; r < 2; r++) assert_int_equal(run(s, &x, NULL), KILN_OK);
  const char *names[] = {"input"};
  assert_int_equal(kiln_session_run(s, names, &x, 1, &err), KILN_OK);
  assert_int_equal(kiln_profile_event_count(p), 0);
  assert_int_equal(kiln_profile_run_count(p), 0);
  uint64_t before = kiln_alloc_count();
  for (int r = 0; r < 5; r++) assert_int_equal(run(s, &x, p), KILN_OK);
  assert_int_equal(kiln_alloc_count() - before, 0);
  assert_int_equal(kiln_profile_run_count(p), 3);
  assert_int_equal(kiln_profile_dropped_runs(p), 2);
  size_t per_run = kiln_profile_event_count(p) / 3;
  assert_true(per_run > 0);
  assert_int_equal(kiln_profile_event_count(p), 3 * per_run);
  kiln_profile_clear(p);
  assert_int_equal(kiln_profile_event_count(p), 0);
  assert_int_equal(run(s, &x, p), KILN_OK);
  assert_int_equal(kiln_profile_event_count(p), per_run);
  assert_int_equal(kiln_profile_dropped_runs(p), 0);
  kiln_profile_free(p);
  kiln_session_free(s);
  kiln_tensor_release(&x);
  kiln_model_free(m);
}

/* The trace: a JSON array with one "Node" event per node per run and one "Session" event per
   run, each a complete ("X") event with numeric ts/dur and the node's op type in args. */
static void chrome_trace_parses(void **state) {
  (void)state;
  kiln_model *m = load_digits(1, 0);
  kiln_session *s = NULL;
  kiln_profile *p = NULL;
  kiln_error err = {0};
  kiln_tensor x;
  digits_input(&x);
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  assert_int_equal(kiln_profile_create(m, 3, &p, &err), KILN_OK);
  for (int r = 0; r < 3; r++) assert_int_equal(run(s, &x, p), KILN_OK);
  char path[] = "/tmp/kiln_profile_XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(kiln_profile_write_json(p, path, &err), KILN_OK);
  json_error_t jerr;
  json_t *root = json_load_file(path, 0, &jerr);
  if (!root) fprintf(stderr, "%s:%d: %s\n", path, jerr.line, jerr.text);
  assert_non_null(root);
  assert_true(json_is_array(root));
  size_t nodes = 0, runs = 0, per_node[N_DIGITS] = {0};
  for (size_t i = 0; i < json_array_size(root); i++) {
    json_t *ev = json_array_get(root, i);
    assert_string_equal(json_string_value(json_object_get(ev, "ph")), "X");
    assert_true(json_is_number(json_object_get(ev, "ts")));
    assert_true(json_number_value(json_object_get(ev, "dur")) >= 0);
    const char *cat = json_string_value(json_object_get(ev, "cat"));
    assert_non_null(cat);
    json_t *args = json_object_get(ev, "args");
    if (!strcmp(cat, "Session")) {
      runs++;
      continue;
    }
    assert_string_equal(cat, "Node");
    nodes++;
    json_int_t k = json_integer_value(json_object_get(args, "node_index"));
    assert_true(k >= 0 && (size_t)k < N_DIGITS);
    per_node[k]++;
    assert_string_equal(json_string_value(json_object_get(ev, "name")), digits_nodes[k].name);
    assert_string_equal(json_string_value(json_object_get(args, "op_name")), digits_nodes[k].op);
    assert_int_equal(json_integer_value(json_object_get(args, "macs")),
                     (json_int_t)(BATCH * digits_nodes[k].macs));
    json_t *shape = json_object_get(json_array_get(json_object_get(args, "output_type_shape"), 0),
                                    "float32");
    assert_int_equal(json_array_size(shape), (size_t)digits_nodes[k].rank);
  }
  assert_int_equal(runs, 3);
  assert_int_equal(nodes, 3 * N_DIGITS);
  for (size_t k = 0; k < N_DIGITS; k++) assert_int_equal(per_node[k], 3);
  json_decref(root);
  unlink(path);
  /* a folder that does not exist */
  assert_int_equal(kiln_profile_write_json(p, "/nonexistent-dir/x.json", &err), KILN_IO_ERROR);
  kiln_profile_free(p);
  kiln_session_free(s);
  kiln_tensor_release(&x);
  kiln_model_free(m);
}

static void bad_arguments_are_errors(void **state) {
  (void)state;
  kiln_model *m = load_digits(1, -1), *other = load_digits(1, 0);
  kiln_session *s = NULL;
  kiln_profile *p = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_profile_create(m, 0, &p, &err), KILN_INVALID_ARGUMENT);
  assert_null(p);
  assert_int_equal(kiln_profile_create(m, SIZE_MAX / 2, &p, &err), KILN_INVALID_ARGUMENT);
  assert_null(p);
  kiln_profile_free(NULL);
  assert_int_equal(kiln_profile_create(other, 1, &p, &err), KILN_OK);
  kiln_tensor x;
  digits_input(&x);
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  kiln_run_opts o = kiln_run_opts_default();
  o.profile = p;
  const char *names[] = {"input"};
  assert_int_equal(kiln_session_run_ex(s, names, &x, 1, &o, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "another model"));
  assert_int_equal(kiln_profile_run_count(p), 0);
  kiln_profile_free(p);
  kiln_session_free(s);
  kiln_tensor_release(&x);
  kiln_model_free(m);
  kiln_model_free(other);
}

/* Sessions of one model profile at once, each into its own profile, on 2-thread pools. */
typedef struct worker {
  kiln_model *m;
  kiln_tensor *x;
  kiln_status st;
  size_t events, runs;
} worker;

/* DwPwConv (tests/models/pass_dwpw.onnx at level 3): its MACs are the depthwise conv's (9 per
   element of T [2, 20, 7, 7]) plus the 1x1 conv's (C = 20 per output element): dwa+pwa
   (K = 20) and dwb+pwb (K = 12). */
static void fused_dwpw_macs(void **state) {
  (void)state;
  char path[1024];
  snprintf(path, sizeof path, "%s/models/pass_dwpw.onnx", tests_dir);
  kiln_model *m = kt_load(path, 1, 3);
  kiln_session *s = NULL;
  kiln_profile *p = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  assert_int_equal(kiln_profile_create(m, 1, &p, &err), KILN_OK);
  int64_t dims[4] = {2, 20, 7, 7};
  kiln_tensor x;
  assert_int_equal(kiln_tensor_alloc(&x, KILN_DTYPE_FLOAT, 4, dims, &err), KILN_OK);
  memset(x.data, 0, kiln_tensor_nbytes(&x));
  kiln_run_opts o = kiln_run_opts_default();
  o.profile = p;
  const char *names[] = {"x"};
  assert_int_equal(kiln_session_run_ex(s, names, &x, 1, &o, &err), KILN_OK);
  const uint64_t t = 2 * 20 * 7 * 7, want[2] = {t * 9 + t * 20, t * 9 + 2 * 12 * 49 * 20};
  size_t seen = 0;
  for (size_t i = 0; i < kiln_profile_event_count(p); i++) {
    kiln_profile_event e;
    assert_int_equal(kiln_profile_event_get(p, i, &e), KILN_OK);
    if (strcmp(e.op_type, "DwPwConv")) continue;
    assert_string_equal(e.domain, "ai.kiln");
    assert_int_equal(e.macs, want[!strcmp(e.name, "dwb")]);
    seen++;
  }
  assert_int_equal(seen, 2);
  kiln_tensor_release(&x);
  kiln_profile_free(p);
  kiln_session_free(s);
  kiln_model_free(m);
}

/* ai.kiln Attention (tests/models/pass_attention.onnx at level 2, batch 1): B H S T D + B H S T Dv
   = 2 * 4 * 80 * 80 * 8 MACs each, from the shapes of either layout (the first two nodes are
   BSHD, Q [1, 80, 4, 8], the third BHSD, Q [1, 4, 80, 8]). */
static void attention_macs(void **state) {
  (void)state;
  char path[1024];
  snprintf(path, sizeof path, "%s/models/pass_attention.onnx", tests_dir);
  kiln_model *m = kt_load(path, 1, 2);
  kiln_session *s = NULL;
  kiln_profile *p = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  assert_int_equal(kiln_profile_create(m, 1, &p, &err), KILN_OK);
  int64_t xd[3] = {1, 80, 32}, md[4] = {1, 1, 1, 80};
  kiln_tensor in[2];
  assert_int_equal(kiln_tensor_alloc(&in[0], KILN_DTYPE_FLOAT, 3, xd, &err), KILN_OK);
  assert_int_equal(kiln_tensor_alloc(&in[1], KILN_DTYPE_FLOAT, 4, md, &err), KILN_OK);
  for (int i = 0; i < 2; i++) memset(in[i].data, 0, kiln_tensor_nbytes(&in[i]));
  kiln_run_opts o = kiln_run_opts_default();
  o.profile = p;
  const char *names[] = {"x", "mask"};
  assert_int_equal(kiln_session_run_ex(s, names, in, 2, &o, &err), KILN_OK);
  size_t seen = 0;
  for (size_t i = 0; i < kiln_profile_event_count(p); i++) {
    kiln_profile_event e;
    assert_int_equal(kiln_profile_event_get(p, i, &e), KILN_OK);
    if (strcmp(e.op_type, "Attention")) continue;
    assert_int_equal(e.macs, (uint64_t)2 * 4 * 80 * 80 * 8);
    seen++;
  }
  assert_int_equal(seen, 3);
  for (int i = 0; i < 2; i++) kiln_tensor_release(&in[i]);
  kiln_profile_free(p);
  kiln_session_free(s);
  kiln_model_free(m);
}

static void *worker_main(void *arg) {
  worker *w = arg;
  kiln_session *s = NULL;
  kiln_profile *p = NULL;
  kiln_error err = {0};
  w->st = kiln_session_create(w->m, &s, &err);
  if (w->st == KILN_OK) w->st = kiln_profile_create(w->m, 4, &p, &err);
  for (int r = 0; r < 4 && w->st == KILN_OK; r++) w->st = run(s, w->x, p);
  if (p) {
    w->events = kiln_profile_event_count(p);
    w->runs = kiln_profile_run_count(p);
  }
  kiln_profile_free(p);
  kiln_session_free(s);
  return NULL;
}

static void concurrent_sessions_profile(void **state) {
  (void)state;
  kiln_model *m = load_digits(2, -1);
  kiln_tensor x;
  digits_input(&x);
  kiln_model_stats ms;
  kiln_model_stats_get(m, &ms);
  pthread_t th[3];
  worker w[3];
  for (int i = 0; i < 3; i++) {
    w[i] = (worker){.m = m, .x = &x};
    assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
  }
  for (int i = 0; i < 3; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(w[i].st, KILN_OK);
    assert_int_equal(w[i].runs, 4);
    assert_int_equal(w[i].events, 4 * ms.node_count); /* digits folds nothing */
  }
  kiln_tensor_release(&x);
  kiln_model_free(m);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_profile MODELS_DIR TESTS_DIR\n");
    return 2;
  }
  models_dir = argv[1];
  tests_dir = argv[2];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(events_match_the_graph),
      cmocka_unit_test(events_match_histogram_and_dispatch),
      cmocka_unit_test(folded_nodes_are_not_recorded),
      cmocka_unit_test(off_records_nothing_and_on_does_not_allocate),
      cmocka_unit_test(chrome_trace_parses),
      cmocka_unit_test(bad_arguments_are_errors),
      cmocka_unit_test(concurrent_sessions_profile),
      cmocka_unit_test(fused_dwpw_macs),
      cmocka_unit_test(attention_macs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
