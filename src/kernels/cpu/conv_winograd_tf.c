/* The Winograd transforms: the portable build of conv_winograd_tf.inc, and the AVX2 intrinsics of
 * conv_winograd_avx2.c where the machine has AVX2. */
#include "kernels/cpu/conv_winograd.h"

#define TF_ATTR KILN__NO_LIBCALL_LOOPS
#define TF(name) name##_generic
#include "kernels/cpu/conv_winograd_tf.inc"
#undef TF_ATTR
#undef TF

static const kiln__wino_tf tf_generic = {in_generic, out_generic};

const kiln__wino_tf *kiln__wino_tf_get(kiln__isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa == KILN__ISA_AVX2 || isa == KILN__ISA_AVX512) return kiln__wino_tf_avx2();
#endif
  (void)isa;
  return &tf_generic;
}

/* G, 4 x 3. */
static const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};

void kiln__wino_weight(const float g[9], float *u, size_t us) {
  double t[4][3];
  for (int i = 0; i < 4; i++)
    for (int c = 0; c < 3; c++)
      t[i][c] = G[i][0] * g[c] + G[i][1] * g[3 + c] + G[i][2] * g[6 + c];
  for (int i = 0; i < 4; i++)
    for (int k = 0; k < 4; k++)
      u[(size_t)(i * 4 + k) * us] =
          (float)(t[i][0] * G[k][0] + t[i][1] * G[k][1] + t[i][2] * G[k][2]);
}
