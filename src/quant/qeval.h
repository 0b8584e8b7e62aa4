/* Internals of validation extras, pruning and mixed precision (validate.c, prune.c, auto.c),
 * shared with their tests. Kept apart from quant.h so the formats and these tools can change
 * independently. */
#ifndef KILN_QUANT_QEVAL_H
#define KILN_QUANT_QEVAL_H

#include "ir/graph.h"
#include "kiln/quant.h"

/* Running sums for the softmax/LM metrics of rows of logits. */
typedef struct kiln__lm_acc {
  double kl_sum;            /* sum over rows of KL(softmax(ref) || softmax(cand)) */
  size_t kl_rows;
  size_t prob_rows;         /* of those, rows read as probabilities (see kiln__lm_acc_add) */
  double ref_nll, cand_nll; /* sums of -log softmax(.)[target] */
  size_t tokens, ref_hits, cand_hits;
} kiln__lm_acc;

/* Adds `rows` rows of `classes` logits. When every row of both is already a probability
   distribution (>= 0, sums to 1 within 1e-3: a model ending in Softmax), the rows are read as
   probabilities, not logits: a second softmax would shrink the KL towards 0. `targets` (may be NULL) gives one class per row, or a
   negative value to skip that row's prediction. */
void kiln__lm_acc_add(kiln__lm_acc *a, const float *ref, const float *cand, size_t rows,
                      size_t classes, const int64_t *targets);

/* The layers the per-layer table and the pruner look at: Conv, MatMul or Gemm whose input 1 is a
   float32 initializer. */
bool kiln__is_weight_layer(const kiln__graph *g, const kiln__node *n);

/* Writes `g` to a fresh temporary .onnx file and loads it; the file is removed again. */
kiln_status kiln__load_graph(const kiln__graph *g, const kiln_model_opts *mo, kiln_model **out,
                             kiln_error *err);

#endif
