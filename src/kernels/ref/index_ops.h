/* Reference index kernels shared between index.c (the kiln__ops_index table) and roi.c (the
 * region and sampling ops it exports through that table). */
#ifndef KILN_KERNELS_REF_INDEX_OPS_H
#define KILN_KERNELS_REF_INDEX_OPS_H

#include "ir/op.h"

/* Stable bottom-up merge sort of the index array v[0..n) by cmp(ctx, a, b) (<0, 0, >0); tmp holds
   n entries of scratch. Equal elements keep their order, so ties resolve by position. */
typedef int (*kiln__idx_cmp)(const void *ctx, size_t a, size_t b);
void kiln__sort_indices(size_t *v, size_t *tmp, size_t n, kiln__idx_cmp cmp, const void *ctx);

kiln_status kiln__roialign_infer(kiln__kctx *c);
kiln_status kiln__roialign_run(kiln__kctx *c);
kiln_status kiln__gridsample_infer(kiln__kctx *c);
kiln_status kiln__gridsample_run(kiln__kctx *c);
kiln_status kiln__nms_infer(kiln__kctx *c);
kiln_status kiln__nms_run(kiln__kctx *c);
size_t kiln__nms_scratch(const kiln__kctx *c);

#endif
