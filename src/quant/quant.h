/* Internals of the quantizers and the accuracy report, shared with their tests. */
#ifndef KILN_QUANT_QUANT_H
#define KILN_QUANT_QUANT_H

#include "ir/graph.h"
#include "kiln/quant.h"

/* Rewrites the finalized top-level graph `g` into `format` in place and finalizes it again. */
kiln_status kiln__quant_graph(kiln__graph *g, kiln_quant_format format, kiln_quant_stats *stats,
                              kiln_error *err);

/* Symmetric per-column int8 quantization of W viewed as [k, n] (stored [n, k] when `trans`):
   q [k, n] = round(W / scale) clamped to [-127, 127], scale [n] = max |column| / 127 (1 for an
   all-zero column). */
void kiln__quant_weight_s8(const float *w, size_t k, size_t n, bool trans, int8_t *q,
                           float *scale);

/* Running comparison of two float outputs, fed one batch at a time. */
typedef struct kiln__quant_acc {
  double dot, ref2, cand2, diff2, abs_sum, abs_max;
  size_t elements, rows, agree, ref_correct, cand_correct;
} kiln__quant_acc;

/* Adds `rows` rows of `classes` values of both outputs; `labels` (may be NULL) holds one label
   per row. */
void kiln__quant_acc_add(kiln__quant_acc *a, const float *ref, const float *cand, size_t rows,
                         size_t classes, const int64_t *labels);
/* The report's metrics from the accumulated sums. */
void kiln__quant_acc_report(const kiln__quant_acc *a, bool has_labels, kiln_validate_report *r);

#endif
