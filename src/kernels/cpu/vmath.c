/* Choosing the vector-math table: CPU features, or KILN_ISA for tests and comparisons. Read at
   prepare time (model load), never cached in a global. */
#include "kernels/cpu/vmath.h"

#include <stdlib.h>

static bool cpu_has_avx2(void) {
#ifdef KILN__VMATH_HAVE_AVX2
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

kiln_status kiln__vmath_select(const kiln__vmath **out, kiln_error *err) {
  const char *want = getenv("KILN_ISA");
  bool avx2 = cpu_has_avx2();
  *out = &kiln__vmath_generic;
  if (!want || !*want || !strcmp(want, "avx512")) {
    /* No AVX-512 table here: the best below it. */
#ifdef KILN__VMATH_HAVE_AVX2
    if (avx2) *out = &kiln__vmath_avx2;
#endif
    return KILN_OK;
  }
  if (!strcmp(want, "generic")) return KILN_OK;
  if (!strcmp(want, "avx2")) {
#ifdef KILN__VMATH_HAVE_AVX2
    if (avx2) {
      *out = &kiln__vmath_avx2;
      return KILN_OK;
    }
#endif
    return kiln__fail(err, KILN_UNSUPPORTED, "KILN_ISA=avx2, but this CPU has no AVX2 and FMA");
  }
  return kiln__fail(err, KILN_INVALID_ARGUMENT,
                    "KILN_ISA=%s: expected avx512, avx2 or generic", want);
}
