/* Test helper: run a case function on every integer-GEMM ISA this machine runs (qgemm.h), serial
   and on a 2-thread pool, forcing each with KILN_ISA; the ones it cannot run are named. Include
   after cmocka.h. */
#ifndef KILN_TESTS_KILN_TEST_QISA_H
#define KILN_TESTS_KILN_TEST_QISA_H

#include <stdio.h>
#include <stdlib.h>

#include "core/threadpool.h"
#include "kernels/cpu/qgemm.h"

static inline void kt_for_each_qisa(void (*fn)(kiln__pool *)) {
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  int ran = 0;
  for (int isa = 0; isa < KILN__QISA_COUNT; isa++) {
    if (!kiln__qisa_supported((kiln__qisa)isa)) {
      printf("  integer ISA %s: not available on this machine or build, not run\n",
             kiln__qisa_name((kiln__qisa)isa));
      continue;
    }
    setenv("KILN_ISA", kiln__qisa_name((kiln__qisa)isa), 1);
    fn(NULL);
    fn(pool);
    ran++;
  }
  assert_true(ran >= 1);
  unsetenv("KILN_ISA");
  kiln__pool_free(pool);
}

#endif
