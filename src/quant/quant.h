/* Internals of the quantizers and the accuracy report, shared with their tests. */
#ifndef KILN_QUANT_QUANT_H
#define KILN_QUANT_QUANT_H

#include "ir/graph.h"
#include "kiln/quant.h"

/* ---- the rewriter ------------------------------------------------------------------------------
 *
 * kiln__quant_graph() picks a format per node (opts.format, then the per-node overrides), calls
 * each format's prepare() once when some node uses it, then its node() on every original node
 * assigned to it, in graph order. A format lives in its own file (q_<format>.c) and is one row of
 * the table in quantize.c. Rewrites only add nodes and values and retarget inputs; the node
 * replaced by a pattern becomes the pattern's last node, so its output keeps its name. */

/* Per-value caches of converted weights (one array per tag, made on first use), so a weight
   shared by several nodes is converted once per form. Each format owns its tags. */
enum {
  KILN__QTAG_FP16,       /* fp16: the Cast's float32 output */
  KILN__QTAG_S8_W,       /* int8-dynamic: the int8 weight [K, N] */
  KILN__QTAG_S8_S,       /*               its per-column scales */
  KILN__QTAG_S8T_W,      /* the same for Gemm weights with transB=1 (stored transposed) */
  KILN__QTAG_S8T_S,
  KILN__QTAG_BF16,       /* bf16: the Cast's float32 output */
  KILN__QTAG_QDQ_W,      /* int8 (static): the weight's DequantizeLinear output */
  KILN__QTAG_QDQ_A,      /*               an activation's DequantizeLinear output */
  KILN__QTAG_QDQ_B,      /*               a bias's (marks the float bias as replaced) */
  KILN__QTAG_Q4_B,       /* int4: packed weight [N, blocks, block/2] of a [K, N] weight */
  KILN__QTAG_Q4_S,       /*       its scales */
  KILN__QTAG_Q4_Z,       /*       its packed zero points (asymmetric) */
  KILN__QTAG_Q4T_B,      /* the same for Gemm weights with transB=1 ([N, K]) */
  KILN__QTAG_Q4T_S,
  KILN__QTAG_Q4T_Z,
  KILN__QTAG_Q4_EMB,     /* int4: an embedding table's DequantizeLinear output (int8 per row) */
  KILN__QTAG_ROW_Q,      /* int8-dynamic per row: an activation's int8 rows */
  KILN__QTAG_ROW_S,      /*                       their scales */
  KILN__QTAG_ROW_Z,      /*                       and their zero point (128) */
  KILN__QTAG_COUNT = 19,
};

typedef struct kiln__qctx {
  kiln__graph *g;
  kiln_error *err;
  const kiln_quant_opts *opts;
  const char *model_path; /* the file the graph came from (calibration loads it), or NULL */
  unsigned seq;           /* for fresh names */
  int n_orig;             /* values before the rewrite: the caches cover these */
  const kiln_quant_format *node_format; /* each node's format (NONE for nodes the opset raise
                                          added), set before prepare() */
  int *cache[KILN__QTAG_COUNT];
  void *state[8];         /* per format (indexed by kiln_quant_format), set by its prepare() */
  kiln_quant_stats st;
} kiln__qctx;

/* What a format did with one node. */
typedef enum kiln__qoutcome {
  KILN__Q_NOT_CANDIDATE, /* not an op this format converts: not counted */
  KILN__Q_QUANTIZED,
  KILN__Q_KEPT_FLOAT,    /* a candidate op left in float (counted in nodes_kept_float) */
} kiln__qoutcome;

typedef struct kiln__quant_format_impl {
  kiln_quant_format format;
  const char *name;        /* as on the command line */
  int64_t min_opset;
  const char *nothing_msg; /* the error when no node could be converted */
  kiln_status (*prepare)(kiln__qctx *q); /* NULL or once before node() (e.g. calibration) */
  void (*release)(kiln__qctx *q);        /* NULL or frees what prepare() kept in q->state */
  kiln_status (*node)(kiln__qctx *q, int i, kiln__qoutcome *out);
} kiln__quant_format_impl;

extern const kiln__quant_format_impl kiln__quant_fp16;
extern const kiln__quant_format_impl kiln__quant_int8_dynamic;
extern const kiln__quant_format_impl kiln__quant_bf16;
extern const kiln__quant_format_impl kiln__quant_int8;
extern const kiln__quant_format_impl kiln__quant_int4;

/* Rewrites the finalized top-level graph `g` as `opts` say and finalizes it again. `model_path`
   may be NULL for formats that need no calibration. */
kiln_status kiln__quant_graph(kiln__graph *g, const kiln_quant_opts *opts, const char *model_path,
                              kiln_quant_stats *stats, kiln_error *err);

/* The name overrides match: the node's name, or its first output's name when it has none. */
const char *kiln__quant_node_name(const kiln__graph *g, const kiln__node *n);

/* ---- preparing imported graphs (qprep.c) ------------------------------------------------------ */

/* Turns every top-level Constant node holding a tensor `value` (not a graph output) into an
   initializer of its output value, and removes the node: weights written as Constant nodes are
   weights like any other. Node indices change; values do not. */
void kiln__quant_const_to_init(kiln__graph *g);
/* Raises the graph's default-domain opset to `to` (from 7 or later): ops whose interface changed
   are rewritten to the new form, ops known unchanged relabeled, anything else refused
   (UNSUPPORTED, naming the node; the graph is then unchanged). Adds nodes and values. */
kiln_status kiln__quant_raise_opset(kiln__qctx *q, int64_t to);

/* ---- graph editing helpers (qedit.c) ---------------------------------------------------------- */

kiln_status kiln__qoom(kiln__qctx *q);
/* A value with a fresh name derived from `hint`; -1 when out of memory. */
int kiln__qvalue(kiln__qctx *q, const char *hint);
/* An initializer that takes `t`'s data (released on failure); -1 when out of memory. */
int kiln__qinit(kiln__qctx *q, const char *hint, kiln_tensor *t);
/* Sets node n to op `op` of the default domain with these inputs and outputs and no attributes. */
kiln_status kiln__qnode_set(kiln__qctx *q, kiln__node *n, const char *name, const char *op,
                            const int *in, int n_in, const int *out, int n_out);
/* Appends a node; its index, or -1 (error set). Node pointers taken before are invalidated. */
int kiln__qnode_add(kiln__qctx *q, const char *name, const char *op, const int *in, int n_in,
                    const int *out, int n_out);
kiln_status kiln__qattr_int(kiln__qctx *q, int node, const char *name, int64_t v);
kiln_status kiln__qattr_ints(kiln__qctx *q, int node, const char *name, const int64_t *v,
                             size_t count);
/* A Cast of `in` to `to`, writing `out`. */
kiln_status kiln__qcast(kiln__qctx *q, const char *name, int in, int out, kiln_dtype to);
/* The float32 initializer in original value v that may be rewritten (constant, not a graph
   input or output, not captured by a subgraph), or NULL. */
const kiln_tensor *kiln__qweight_f32(const kiln__qctx *q, int v);
bool kiln__qis_op(const kiln__node *n, const char *op);
/* The cache array of `tag` (n_orig entries, -1 = not converted yet), made on first use. */
kiln_status kiln__qcache(kiln__qctx *q, int tag, int **out);
/* A base for the names of the nodes a pattern adds: the node's name or its output's. */
void kiln__qbase(const kiln__qctx *q, int i, char *buf, size_t cap);

/* Symmetric per-column int8 quantization of W viewed as [k, n] (stored [n, k] when `trans`):
   q [k, n] = round(W / scale) clamped to [-qmax, qmax], scale [n] = max |column| / qmax (1 for an
   all-zero column); qmax 127, or 63 for reduce_range (7-bit weights). */
void kiln__quant_weight_s8(const float *w, size_t k, size_t n, bool trans, int qmax, int8_t *q,
                           float *scale);

/* ---- calibration (calib.c) -------------------------------------------------------------------- */

enum { KILN__CALIB_BINS = 2048, KILN__CALIB_QBINS = 128 };

/* The ranges [lo[k], hi[k]] of the float activations vals[k] (original values of q->g, graph
   inputs allowed) on q->opts->calib_dir by q->opts->method. q->g is left as it was. */
kiln_status kiln__calibrate(kiln__qctx *q, const int *vals, size_t n, float *lo, float *hi);
/* Widens [*lo, *hi] to hold x[0..n) (NaN ignored). */
void kiln__calib_minmax(const float *x, size_t n, float *lo, float *hi);
/* Counts |x| into nb bins over [0, amax] (values beyond go to the last bin). */
void kiln__calib_hist_add(uint64_t *bins, size_t nb, float amax, const float *x, size_t n);
/* The upper edge of the bin where the cumulative count reaches pct percent of the total. */
float kiln__calib_percentile(const uint64_t *bins, size_t nb, float amax, double pct);
/* TensorRT's KL threshold on the histogram of |x| with nq quantization levels; `work` holds
   2 * nb doubles. */
float kiln__calib_entropy(const uint64_t *bins, size_t nb, float amax, size_t nq, double *work);
/* uint8 asymmetric parameters of [lo, hi] widened to hold 0: scale (hi - lo) / 255, zero point
   round(-lo / scale); scale 1, zero point 0 for an empty range. */
void kiln__calib_qparams(float lo, float hi, float *scale, uint8_t *zp);

/* Symmetric int8 per channel of W viewed as [outer, ch, inner]: q = round(W / scale[c]) in
   [-qmax, qmax], scale[c] = max |W[:, c, :]| / qmax (1 for an all-zero channel). */
void kiln__quant_weight_s8_axis(const float *w, size_t outer, size_t ch, size_t inner, int qmax,
                                int8_t *q, float *scale);

/* int4 blocks of one row w[0..k) (stride `stride` between elements): n_blocks blocks of `block`
   values, packed two per byte (low nibble = even k) into `packed` [n_blocks * block / 2],
   scales[n_blocks]; zero points into zps[n_blocks] (0..15) when `asym`, else 8. With
   `f16_scales` each scale is rounded to float16 first and the codes are quantized against the
   rounded value; false when a scale does not fit float16. */
bool kiln__quant_row_q4(const float *w, size_t k, size_t stride, size_t block, bool asym,
                        bool f16_scales, uint8_t *packed, float *scales, uint8_t *zps);

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
