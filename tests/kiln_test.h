/* Helpers the cmocka test programs share. Include after <cmocka.h>. */
#ifndef KILN_TESTS_KILN_TEST_H
#define KILN_TESTS_KILN_TEST_H

#include <stdio.h>

#include "kiln/kiln.h"

/* Loads a model that must load (the test fails with the loader's message otherwise).
   opt_level -1 is the default (highest). */
static inline kiln_model *kt_load(const char *path, int threads, int opt_level) {
  kiln_model_opts o = kiln_model_opts_default();
  o.intra_threads = threads;
  o.opt_level = opt_level;
  kiln_model *m = NULL;
  kiln_error err = {0};
  kiln_status st = kiln_model_load(path, &o, &m, &err);
  if (st != KILN_OK) fprintf(stderr, "%s: %s\n", path, err.message);
  assert_int_equal(st, KILN_OK);
  return m;
}

/* Reads DIR/FILE as .npy; the test fails if it cannot. */
static inline void kt_read_npy(const char *dir, const char *file, kiln_tensor *t) {
  char path[1024];
  assert_true(snprintf(path, sizeof path, "%s/%s", dir, file) < (int)sizeof path);
  kiln_error err = {0};
  kiln_status st = kiln_tensor_read_npy(path, t, &err);
  if (st != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(st, KILN_OK);
}

#endif
