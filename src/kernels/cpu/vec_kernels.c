/* Optimized CPU kernels: vectorized elementwise, normalization and softmax ops. */
#include "kernels/cpu/cpu_backend.h"

const kiln__cpu_kernel kiln__cpu_vec_kernels[] = {
    {0},
};
