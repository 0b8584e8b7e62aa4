/* Kiln quantization: smaller variants of a model, written as standard ONNX, and the accuracy
 * report that says what a variant costs.
 *
 *   kiln_quantize_file   MODEL.onnx -> OUT.onnx in one of kiln_quant_format
 *   kiln_validate_files  a candidate model against a reference on a folder of .npy inputs
 *
 * Both functions are self-contained (they load, run and free what they need) and may run
 * concurrently on different files. */
#ifndef KILN_QUANT_H
#define KILN_QUANT_H

#include "kiln/kiln.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kiln_quant_format {
  /* Leave the node in float32 (a per-node override; as the default format, only the per-node
     choices in kiln_quant_opts.nodes are applied). */
  KILN_QUANT_NONE = 0,
  /* float32 weights of MatMul/Gemm/Conv stored as float16, each behind a Cast to float32. */
  KILN_QUANT_FP16 = 1,
  /* ONNX Runtime's dynamic quantization pattern for MatMul and Gemm with constant 2-D weights:
     weights int8, symmetric, one scale per output column; activations quantized per tensor at
     run time by DynamicQuantizeLinear (uint8); MatMulInteger; Cast to float; Mul by the product
     of the two scales; Add of Gemm's bias. Conv and every other op stay float. */
  KILN_QUANT_INT8_DYNAMIC = 2,
  /* float32 weights of MatMul/Gemm/Conv stored as bfloat16 (round to nearest even), each behind a
     Cast to float32 (needs opset 13). */
  KILN_QUANT_BF16 = 3,
  /* ONNX Runtime's static QDQ format (quantize_static, QuantFormat.QDQ) for Conv, MatMul and Gemm
     with constant weights: activations uint8 asymmetric per tensor from calibration (calib_dir),
     QuantizeLinear -> DequantizeLinear pairs on their inputs and outputs; weights int8 symmetric
     per output channel; biases int32 with scale x_scale * w_scale. Everything else stays float. */
  KILN_QUANT_INT8 = 4,
  /* Weight-only block-wise 4-bit for MatMul and Gemm with a constant 2-D weight, as ONNX Runtime's
     com.microsoft MatMulNBits (block_size along K, float16 or float32 scales, zero point 8 or packed
     per-block zero points with `asymmetric`). */
  KILN_QUANT_INT4 = 5,
} kiln_quant_format;

/* "fp16", "bf16", "int8", "int8-dynamic" or "int4" -> the format; INVALID_ARGUMENT naming the
   accepted ones otherwise. */
kiln_status kiln_quant_format_parse(const char *name, kiln_quant_format *out, kiln_error *err);
const char *kiln_quant_format_name(kiln_quant_format f);

/* How static quantization measures activation ranges on the calibration data. */
typedef enum kiln_calib_method {
  KILN_CALIB_MINMAX = 0,     /* the observed min and max */
  /* t = the given percentile of |x| (opts.percentile); range [max(min, -t), min(max, t)] */
  KILN_CALIB_PERCENTILE = 1,
  /* t = the threshold on |x| minimising the KL divergence between the 2048-bin histogram and its
     128-level quantization (TensorRT's method); the range is clamped to +-t as for percentile */
  KILN_CALIB_ENTROPY = 2,
} kiln_calib_method;

/* One node's precision, chosen by name (the node's name, or its first output's name when the
   node has none). */
typedef struct kiln_quant_node_format {
  const char *node;
  kiln_quant_format format;
} kiln_quant_node_format;

typedef struct kiln_quant_opts {
  size_t struct_size;         /* sizeof(kiln_quant_opts), set by kiln_quant_opts_default() */
  kiln_quant_format format;   /* every candidate node's format unless overridden below */
  const kiln_quant_node_format *nodes; /* per-node overrides (KILN_QUANT_NONE keeps a node float) */
  size_t n_nodes;
  const char *calib_dir;      /* static formats: a folder of <input name>.npy, batched on dim 0 */
  kiln_calib_method method;
  double percentile;          /* KILN_CALIB_PERCENTILE: e.g. 99.99 */
  size_t calib_samples;       /* at most this many samples from calib_dir; 0 = all */
  int block_size;             /* block-wise formats (int4): elements per block along K; 0 = 32 */
  int intra_threads;          /* threads for running the model during calibration; 0 = per core */
  /* int4: per-block min/max with packed zero points instead of symmetric blocks (zero point 8) */
  bool asymmetric;
  /* int8, int8-dynamic: weights in [-63, 63] (7 bits), as ONNX Runtime's reduce_range: u8 x s8
     pair sums then fit int16, so AVX2's VPMADDUBSW runs them exactly (Kiln's fast int8 path; ORT's
     kernels saturate on full-range weights). Default true; false: [-127, 127]. */
  bool reduce_range;
  /* int4: scales stored float32 instead of the default float16 (behind a Cast to float32; the codes
     are quantized against the rounded scales) */
  bool fp32_scales;
  /* int4: MatMulNBits' accuracy_level attribute, 0 (not written: float activations) to 4 (A may be
     quantized to int8 per block: Kiln's int8-activation kernels). Default 4. */
  int accuracy_level;
  /* int8-dynamic: activations quantized per row (per token) instead of per tensor: each row of a
     MatMul's A gets its own symmetric scale max |row| / 127 at run time (Abs, ReduceMax, Div,
     Max, Div, Round, Add 128, Cast to uint8, then MatMulInteger with zero point 128, Cast, Mul
     by the weight scales and by the row scales): standard ops that ONNX Runtime runs too; Kiln
     fuses them into two kernels (fuse-rowq). Default false: the per-tensor layout of ORT's
     quantize_dynamic. */
  bool per_row;
} kiln_quant_opts;

kiln_quant_opts kiln_quant_opts_default(void);

/* What a quantization changed. */
typedef struct kiln_quant_stats {
  size_t nodes_quantized;  /* nodes whose weights were converted */
  size_t nodes_kept_float; /* MatMul/Gemm/Conv left in float (e.g. Conv in int8-dynamic, a
                              non-constant weight, a Gemm with transA/alpha/beta, an override) */
  size_t weights_converted; /* distinct weight tensors converted */
  size_t weight_bytes_before; /* bytes of those weights as float32 */
  size_t weight_bytes_after;  /* bytes of what replaced them (data + scales) */
} kiln_quant_stats;

/* Reads the ONNX model at `path`, rewrites it as `opts` say and writes it to `out_path`. Fails
   with UNSUPPORTED when nothing was quantized (no MatMul/Gemm/Conv with a constant float32
   weight for fp16; no such MatMul/Gemm for int8-dynamic; every candidate overridden to NONE) or
   the model's opset is older than a format needs (int8-dynamic 11, int8/bf16 13) and holds an op
   the quantizer cannot raise to it (docs/QUANT.md); nothing is written then. Weights stored as
   Constant nodes count as initializers. An override naming no node of the graph is INVALID_ARGUMENT. `stats` may be NULL. */
kiln_status kiln_quantize_file_ex(const char *path, const char *out_path,
                                  const kiln_quant_opts *opts, kiln_quant_stats *stats,
                                  kiln_error *err);

/* kiln_quantize_file_ex with the default options and `format` for every node. */
kiln_status kiln_quantize_file(const char *path, const char *out_path, kiln_quant_format format,
                               kiln_quant_stats *stats, kiln_error *err);

/* ---- accuracy validation --------------------------------------------------------------------- */

typedef struct kiln_validate_opts {
  size_t struct_size; /* sizeof(kiln_validate_opts), set by kiln_validate_opts_default() */
  int intra_threads;  /* threads per session; 0 = one per core */
  /* Samples per run (along the first dim); 0 = the model's fixed batch dim, or 64 when symbolic. */
  size_t batch;
} kiln_validate_opts;

kiln_validate_opts kiln_validate_opts_default(void);

/* Metrics of the first output of both models. Rows are the output viewed as [rows, classes]
   (classes = its last dim): top-1 is the argmax of a row, ties to the lowest index. */
typedef struct kiln_validate_report {
  size_t samples;        /* inputs along the first dim */
  size_t rows;           /* argmax rows over all samples */
  size_t classes;        /* last dim of the first output */
  size_t elements;       /* output elements compared */
  size_t top1_agree;     /* rows where the two models' argmax agree */
  double top1_agreement; /* top1_agree / rows */
  bool has_labels;
  size_t ref_correct, cand_correct; /* rows whose argmax equals the label (with labels) */
  double ref_accuracy, cand_accuracy;
  double cosine;         /* cosine similarity of the two outputs, flattened */
  double max_abs_err, mean_abs_err;
  double snr_db;         /* 10 log10(sum ref^2 / sum (ref - cand)^2); inf when equal */
} kiln_validate_report;

/* Runs `reference` and `candidate` on the inputs in `data_dir` (one <input name>.npy per graph
   input, all with the same first dim: the samples) and compares their first outputs. `labels`
   (may be NULL) is an integer .npy with one label per row. The options may be NULL. Low
   agreement is a result, not an error. */
kiln_status kiln_validate_files(const char *reference, const char *candidate,
                                const char *data_dir, const char *labels,
                                const kiln_validate_opts *opts, kiln_validate_report *out,
                                kiln_error *err);

/* ---- validation extras, budgets, pruning, mixed precision --------------------------------------
 *
 *   kiln_validate_files_ex  kiln_validate_files plus KL divergence, perplexity and a per-layer
 *                           error table; kiln_validate_check_budget gates a deployment on it
 *   kiln_prune_file         magnitude pruning, structured (smaller dense model) or unstructured
 *   kiln_quantize_auto_file per-layer precision chosen to fit an accuracy budget */

typedef struct kiln_validate_ex_opts {
  size_t struct_size;     /* sizeof(kiln_validate_ex_opts), set by kiln_validate_ex_opts_default() */
  kiln_validate_opts base;
  /* Language model: the first output is logits [B, T, V] over the integer input `ids_input`
     [B, T] (NULL: the first integer input); next-token cross entropy of both models. */
  bool perplexity;
  const char *ids_input;
  /* An integer .npy [B, T] with the target of every position (e.g. the byte after each window);
     NULL: position t predicts ids[t + 1], so T - 1 predictions per row. */
  const char *targets;
  /* Run both models with every layer's input and output exposed (layers: Conv, MatMul, Gemm with
     a constant weight in the reference; matched in the candidate by value name). */
  bool per_layer;
} kiln_validate_ex_opts;

kiln_validate_ex_opts kiln_validate_ex_opts_default(void);

/* One layer's error: the candidate's value against the reference's, over all samples. */
typedef struct kiln_layer_error {
  char name[128];       /* the layer's output value */
  char op[32];          /* the reference node's op */
  bool matched;         /* false: absent from the candidate or of another shape (pruned) */
  double cosine, snr_db, max_abs_err;
  double in_snr_db;     /* the same for the layer's data input (inf when exact) */
  /* in_snr_db - snr_db, with an exact input counted as 140 dB (float32's own precision): the
     error this layer adds; the table is sorted by it, worst first */
  double snr_drop_db;
} kiln_layer_error;

typedef struct kiln_validate_ex_report {
  kiln_validate_report base;
  /* mean over rows of KL(softmax(reference) || softmax(candidate)), in nats; of the rows
     themselves when every row of both outputs is already a distribution (kl_of_probabilities) */
  double kl_divergence;
  bool has_perplexity;
  size_t tokens;                /* predictions scored */
  double ref_nll, cand_nll;     /* mean negative log-likelihood, nats per token */
  double ref_ppl, cand_ppl, ppl_ratio; /* exp(nll); cand / ref */
  double ref_token_accuracy, cand_token_accuracy; /* argmax == target */
  size_t n_layers;
  kiln_layer_error *layers;     /* sorted by snr_drop_db, descending; unmatched last */
  bool kl_of_probabilities;     /* outputs were probabilities: no softmax applied (and the
                                   perplexity reads them as such) */
} kiln_validate_ex_report;

/* kiln_validate_files with the extras `opts` asks for. Free the report with
   kiln_validate_ex_report_free (also after a failure). */
kiln_status kiln_validate_files_ex(const char *reference, const char *candidate,
                                   const char *data_dir, const char *labels,
                                   const kiln_validate_ex_opts *opts,
                                   kiln_validate_ex_report *out, kiln_error *err);
void kiln_validate_ex_report_free(kiln_validate_ex_report *r);

/* Deployment budgets; NaN leaves one unchecked. */
typedef struct kiln_validate_budget {
  double min_top1_agreement; /* fraction, e.g. 0.99 */
  double min_cosine;
  double max_ppl_ratio;      /* candidate / reference perplexity, e.g. 1.02 */
  double max_accuracy_drop;  /* percentage points of top-1 accuracy against the labels */
} kiln_validate_budget;

kiln_validate_budget kiln_validate_budget_none(void);

/* How many budgets `r` misses; each miss (and a budget the report cannot check, e.g. a PPL ratio
   without perplexity) is described on its own line in `msg` (may be NULL). */
int kiln_validate_check_budget(const kiln_validate_ex_report *r, const kiln_validate_budget *b,
                               char *msg, size_t cap);

/* ---- pruning ----------------------------------------------------------------------------------- */

typedef enum kiln_prune_mode {
  /* Zero the smallest-magnitude weights of every Conv/MatMul/Gemm: same shapes, same dense speed;
     only a compressed file gets smaller. */
  KILN_PRUNE_UNSTRUCTURED = 0,
  /* Remove whole Conv filters / MatMul-Gemm output columns of lowest L1 norm, and the matching
     input channels of the consumers, so the model is smaller and faster. */
  KILN_PRUNE_STRUCTURED = 1,
} kiln_prune_mode;

/* What happened to one layer. */
typedef struct kiln_prune_layer {
  char name[128];
  char op[32];
  int64_t channels_before, channels_after; /* structured: output channels */
  size_t weights_before, weights_zero;     /* unstructured: weights and those now zero */
  char skipped[96];                        /* why a structured layer was left whole, or "" */
} kiln_prune_layer;

typedef struct kiln_prune_report {
  size_t params_before, params_after;    /* elements of all float initializers */
  size_t zeros_before, zeros_after;      /* of those, exactly zero */
  size_t n_layers;
  kiln_prune_layer *layers;
} kiln_prune_report;

/* Prunes the model at `path` to `out_path`. sparsity is in [0, 1): structured removes
   floor(sparsity * channels) channels per prunable layer (at least one kept); unstructured zeroes
   floor(sparsity * count) weights per layer. Free the report with kiln_prune_report_free. */
kiln_status kiln_prune_file(const char *path, const char *out_path, kiln_prune_mode mode,
                            double sparsity, kiln_prune_report *report, kiln_error *err);
void kiln_prune_report_free(kiln_prune_report *r);

/* ---- mixed precision ---------------------------------------------------------------------------- */

typedef enum kiln_auto_metric {
  KILN_AUTO_TOP1 = 0,   /* top-1 agreement with FP32 >= budget */
  KILN_AUTO_COSINE = 1, /* cosine similarity with FP32 >= budget */
  KILN_AUTO_PPL = 2,    /* perplexity ratio to FP32 <= budget (first output: LM logits) */
} kiln_auto_metric;

typedef enum kiln_auto_objective {
  KILN_AUTO_SIZE = 0,    /* fewest weight bytes */
  KILN_AUTO_LATENCY = 1, /* lowest measured latency on the calibration batch */
} kiln_auto_objective;

typedef struct kiln_auto_opts {
  size_t struct_size;          /* sizeof(kiln_auto_opts), set by kiln_auto_opts_default() */
  kiln_auto_metric metric;
  double budget;
  const char *calib_dir;       /* <input name>.npy, batched on dim 0 */
  const kiln_quant_format *formats; /* candidates; NULL: every format that exists */
  size_t n_formats;
  kiln_auto_objective objective;
  int intra_threads;
  size_t batch;                /* samples per run, as kiln_validate_opts.batch */
  bool verbose;                /* print the sensitivity table and each step on stdout */
} kiln_auto_opts;

kiln_auto_opts kiln_auto_opts_default(void);

typedef struct kiln_auto_layer {
  char name[128];
  kiln_quant_format format;     /* chosen (KILN_QUANT_NONE = float32) */
  double sensitivity;           /* the metric's loss with only this layer quantized to `format`'s
                                   most aggressive candidate (1 - agreement, 1 - cosine, ratio - 1) */
} kiln_auto_layer;

typedef struct kiln_auto_report {
  size_t n_layers;
  kiln_auto_layer *layers;
  double metric;                /* the final model's metric */
  size_t weight_bytes_before, weight_bytes_after;
  size_t evaluations;           /* combined models validated */
} kiln_auto_report;

/* Chooses per-layer formats for `path` within the budget and writes the result to `out_path`.
   UNSUPPORTED when not even one layer can be quantized within the budget (nothing written). */
kiln_status kiln_quantize_auto_file(const char *path, const char *out_path,
                                    const kiln_auto_opts *opts, kiln_auto_report *report,
                                    kiln_error *err);
void kiln_auto_report_free(kiln_auto_report *r);

#ifdef __cplusplus
}
#endif
#endif
