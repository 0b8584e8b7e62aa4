/* com.microsoft QLinearAdd and QLinearGlobalAveragePool against numpy: tests/models/
   qlinear_add_gap.onnx holds one node per case (u8 and s8; same shapes, a per-channel, scalar
   and two-sided broadcast, omitted zero points, exact ties that must round half to even,
   saturation at both ends; NCHW, a 3-D image, channels_last), and tests/data/qlinear/ each
   case's inputs and the output tools/make_qlinear_fixtures.py computed with numpy following ONNX
   Runtime's kernels. The reference backend alone, then the cpu backend first (its AVX2 kernels
   where the machine has them, on one thread and on two), must produce every byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "kiln_test.h"

static const char *tests_dir; /* argv[1]: the repository's tests/ */

static size_t op_count(const kiln_model *m, const char *op) {
  const char *types[16];
  size_t counts[16];
  size_t n = kiln_model_op_histogram(m, types, counts, 16);
  for (size_t i = 0; i < n && i < 16; i++)
    if (!strcmp(types[i], op)) return counts[i];
  return 0;
}

static void check_backends(const char *const *backends, int threads, const char *want_backend) {
  char path[1024], dir[1024];
  snprintf(path, sizeof path, "%s/models/qlinear_add_gap.onnx", tests_dir);
  snprintf(dir, sizeof dir, "%s/data/qlinear", tests_dir);
  kiln_model_opts o = kiln_model_opts_default();
  o.intra_threads = threads;
  o.opt_level = 0;
  o.backends = backends;
  kiln_model *m = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_model_load(path, &o, &m, &err), KILN_OK);
  assert_int_equal(op_count(m, "QLinearAdd"), 8);
  assert_int_equal(op_count(m, "QLinearGlobalAveragePool"), 5);
  kiln_model_stats ms;
  kiln_model_stats_get(m, &ms);
  for (size_t b = 0; b < ms.backend_count; b++) { /* every node on want_backend */
    const char *name;
    size_t nodes;
    kiln_model_backend_nodes(m, b, &name, &nodes);
    if (nodes) assert_string_equal(name, want_backend);
  }
  size_t n_in = kiln_model_input_count(m);
  assert_true(n_in <= 32);
  kiln_tensor in[32];
  const char *names[32];
  for (size_t i = 0; i < n_in; i++) {
    kiln_io_info io;
    assert_int_equal(kiln_model_input_info(m, i, &io), KILN_OK);
    char file[300];
    snprintf(file, sizeof file, "%s.npy", io.name);
    kt_read_npy(dir, file, &in[i]);
    names[i] = io.name;
  }
  kiln_session *s = NULL;
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  assert_int_equal(kiln_session_run(s, names, in, n_in, &err), KILN_OK);
  for (size_t k = 0; k < kiln_model_output_count(m); k++) {
    kiln_io_info io;
    assert_int_equal(kiln_model_output_info(m, k, &io), KILN_OK);
    char file[300];
    snprintf(file, sizeof file, "%s.npy", io.name);
    kiln_tensor want, got;
    kt_read_npy(dir, file, &want);
    assert_int_equal(kiln_session_output(s, k, &got), KILN_OK);
    assert_int_equal(got.dtype, want.dtype);
    assert_int_equal(got.rank, want.rank);
    for (int d = 0; d < got.rank; d++) assert_int_equal(got.dims[d], want.dims[d]);
    size_t bad = 0, first = 0;
    const uint8_t *g = got.data, *w = want.data;
    for (size_t e = kiln_tensor_nbytes(&got); e-- > 0;)
      if (g[e] != w[e]) bad++, first = e;
    if (bad)
      fail_msg("%s on %s (%d threads): %zu of %zu bytes differ from numpy, first at %zu "
               "(%d, want %d)", io.name, want_backend, threads, bad, kiln_tensor_nbytes(&got),
               first, g[first], w[first]);
    kiln_tensor_release(&want);
  }
  for (size_t i = 0; i < n_in; i++) kiln_tensor_release(&in[i]);
  kiln_session_free(s);
  kiln_model_free(m);
}

static void reference_matches_numpy(void **st) {
  (void)st;
  static const char *const ref[] = {"ref", NULL};
  check_backends(ref, 1, "ref");
}

static void cpu_matches_numpy(void **st) {
  (void)st;
  static const char *const cpu[] = {"cpu", "ref", NULL};
  check_backends(cpu, 1, "cpu");
  check_backends(cpu, 2, "cpu");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s TESTS_DIR\n", argv[0]);
    return 2;
  }
  tests_dir = argv[1];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(reference_matches_numpy),
      cmocka_unit_test(cpu_matches_numpy),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
