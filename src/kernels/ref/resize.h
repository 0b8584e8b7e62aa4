/* Resize (opsets 10-19) and the deprecated Upsample (7, 9): nearest, linear and cubic
 * interpolation. Listed in the conv family's table (conv.c); the same three functions serve both
 * ops, which they tell apart by the node's op type. */
#ifndef KILN_KERNELS_REF_RESIZE_H
#define KILN_KERNELS_REF_RESIZE_H

#include "ir/op.h"

kiln_status kiln__resize_infer(kiln__kctx *c);
kiln_status kiln__resize_run(kiln__kctx *c);
size_t kiln__resize_scratch(const kiln__kctx *c);

#endif
