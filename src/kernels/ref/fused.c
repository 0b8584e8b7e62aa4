/* Reference kernels: Kiln's fused ops (domain ai.kiln), made by the fusion passes. */
#include "ir/op.h"

const kiln__op kiln__ops_fused[] = {
    {0},
};
