/* Optimized CPU kernels: GEMM-based ops. */
#include "kernels/cpu/cpu_backend.h"

const kiln__cpu_kernel kiln__cpu_gemm_kernels[] = {
    {0},
};
