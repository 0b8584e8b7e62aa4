/* What a pass sees: the graph being rewritten, use counts, and the log it reports into.
 *
 * Passes rewrite the top-level graph only (subgraph bodies read outer values by name, so a pass
 * never renames or removes a value a subgraph captures). Values are never deleted: a rewrite
 * points consumers at another value and kills nodes; the manager compacts dead nodes and calls
 * kiln__graph_finalize after each pass. Graph inputs and outputs keep their names. */
#ifndef KILN_PASSES_PASS_H
#define KILN_PASSES_PASS_H

#include "passes/passes.h"

typedef struct kiln__pass_ctx {
  kiln__graph *g;
  kiln_error *err;
  int *uses;          /* per value: node inputs, subgraph captures and graph outputs reading it */
  bool *captured;     /* per value: read by name from a subgraph */
  bool *dead;         /* per node: removed by this pass */
  int n_dead;
  kiln__pass_log *log; /* NULL when nothing is recorded */
  int log_entry;      /* the entry this pass appends matches to */
  unsigned name_seq;  /* for fresh value names */
  /* Per value, from kiln__pass_shapes: dtype, rank and dims (rank -1 when unknown) under two
     different substitutions of the graph inputs' symbolic dims; NULL until computed. */
  kiln_tensor *shape[2];
  int shape_n;        /* values covered by shape[] */
} kiln__pass_ctx;

typedef struct kiln__pass {
  const char *name;
  int level;
  /* Rewrites ctx->g; sets *changed when it did anything. */
  kiln_status (*run)(kiln__pass_ctx *ctx, bool *changed);
} kiln__pass;

extern const kiln__pass kiln__pass_dce;
extern const kiln__pass kiln__pass_identity;
extern const kiln__pass kiln__pass_const_fold;
extern const kiln__pass kiln__pass_cse;
extern const kiln__pass kiln__pass_conv_bn;
extern const kiln__pass kiln__pass_fuse_chain;
extern const kiln__pass kiln__pass_affine_fold;
extern const kiln__pass kiln__pass_fuse_layernorm;
extern const kiln__pass kiln__pass_fuse_gelu;
extern const kiln__pass kiln__pass_fuse_rmsnorm;
extern const kiln__pass kiln__pass_fuse_attention;
extern const kiln__pass kiln__pass_fuse_linear;
extern const kiln__pass kiln__pass_fuse_qdq;
extern const kiln__pass kiln__pass_fuse_qdq_out;
extern const kiln__pass kiln__pass_fuse_rowq;
extern const kiln__pass kiln__pass_winograd;
extern const kiln__pass kiln__pass_fuse_dwpw;
extern const kiln__pass kiln__pass_blocked;

/* ---- helpers (pass_util.c) ------------------------------------------------------------------- */

/* Records that the pass matched at `where` (a node name, or "a+b" for a chain). */
void kiln__pass_note(kiln__pass_ctx *ctx, const char *fmt, ...) KILN__PRINTF(2, 3);
/* Marks node i removed and drops its input uses. */
void kiln__pass_kill(kiln__pass_ctx *ctx, int i);
/* Points every node input reading `from` at `to`. The caller checks that `from` is neither a
   graph output nor captured by a subgraph. */
void kiln__pass_replace_uses(kiln__pass_ctx *ctx, int from, int to);
/* True when `v` may disappear or be renamed: not a graph input/output, not captured. */
bool kiln__pass_value_private(const kiln__pass_ctx *ctx, int v);
/* The single node reading `v` and the input slot, or -1 when `v` has not exactly one reader or
   is not private. */
int kiln__pass_sole_user(const kiln__pass_ctx *ctx, int v, int *slot);
/* Adds an initializer value (fresh name derived from `hint`) that takes ownership of `t`.
   Returns its index, or -1 when out of memory (then `t` is released). */
int kiln__pass_add_init(kiln__pass_ctx *ctx, const char *hint, kiln_tensor *t);
/* Constant float data of value v when it is a FLOAT initializer, else NULL. */
const kiln_tensor *kiln__pass_const_f32(const kiln__pass_ctx *ctx, int v);
/* An initializer that is really constant (not an overridable graph input), or NULL. */
const kiln_tensor *kiln__pass_const_init(const kiln__pass_ctx *ctx, int v);
/* Whether `bias` is n floats added along the last axis of an output of rank `out_rank` (-1:
   unknown) without broadcasting the output to more axes (rank 1, or leading 1s and no more axes
   than the output): a GEMM epilogue's per-column bias. */
bool kiln__pass_bias_fits(const kiln_tensor *bias, int64_t n, int out_rank);
/* The Add that is v's sole reader and adds such a bias of n floats to it: its index into *add and
   the bias value into *bias, or -1 in both. */
kiln_status kiln__pass_bias_add(kiln__pass_ctx *ctx, int v, int64_t n, int *add, int *bias);
/* A scalar float constant (any shape of one element), or false. */
bool kiln__pass_const_scalar(const kiln__pass_ctx *ctx, int v, double *out);
/* True when the node has a GRAPH/GRAPHS attribute. */
bool kiln__pass_has_subgraph(const kiln__node *n);
/* Replaces a node's op type and domain (strings owned by the node). */
kiln_status kiln__pass_set_op(kiln__pass_ctx *ctx, kiln__node *n, const char *domain,
                              const char *op_type);
/* Replaces a node's inputs. */
kiln_status kiln__pass_set_inputs(kiln__pass_ctx *ctx, kiln__node *n, const int *in, int n_in);
/* Removes every attribute / adds a FLOAT or INT attribute. */
void kiln__pass_clear_attrs(kiln__node *n);
kiln_status kiln__pass_add_attr_float(kiln__pass_ctx *ctx, kiln__node *n, const char *name,
                                      float f);
kiln_status kiln__pass_add_attr_int(kiln__pass_ctx *ctx, kiln__node *n, const char *name,
                                    int64_t i);
kiln_status kiln__pass_add_attr_str(kiln__pass_ctx *ctx, kiln__node *n, const char *name,
                                    const char *s);
kiln_status kiln__pass_add_attr_floats(kiln__pass_ctx *ctx, kiln__node *n, const char *name,
                                       const float *f, size_t count);
kiln_status kiln__pass_add_attr_ints(kiln__pass_ctx *ctx, kiln__node *n, const char *name,
                                     const int64_t *v, size_t count);
/* Adds a value with a fresh name derived from `hint`; its index, or -1 when out of memory. */
int kiln__pass_new_value(kiln__pass_ctx *ctx, const char *hint);
/* Appends a node (default opset of its domain: the graph's for "", 1 otherwise); its index, or
   -1 when out of memory. Node pointers taken before the call are invalidated. */
int kiln__pass_add_node(kiln__pass_ctx *ctx, const char *name, const char *domain,
                        const char *op_type, const int *in, int n_in, const int *out, int n_out);
/* True when node n is op `op` of the default domain with one output. */
bool kiln__pass_is(const kiln__node *n, const char *op);
/* True when n's ints attribute `name` is absent or holds `cnt` values, all `want`. */
bool kiln__pass_ints_all(const kiln__node *n, const char *name, size_t cnt, int64_t want);

/* Shapes (shapes.c): infers every value's dtype and shape from the graph inputs and initializers
   with the ops' infer(), twice, each time substituting different sizes for the symbolic dims, so
   two shapes that agree in both are the same symbolic shape. Computed once per pass run. */
kiln_status kiln__pass_shapes(kiln__pass_ctx *ctx);
/* The inferred shape of v under substitution `probe` (0 or 1), or NULL when unknown. */
const kiln_tensor *kiln__pass_shape(const kiln__pass_ctx *ctx, int v, int probe);
/* v's rank when known in both probes, else -1; the dtype likewise (UNDEFINED). */
int kiln__pass_rank(const kiln__pass_ctx *ctx, int v);
kiln_dtype kiln__pass_dtype(const kiln__pass_ctx *ctx, int v);
/* v's dims when static (the same in both probes, all positive) and of rank 4. */
bool kiln__pass_static4(const kiln__pass_ctx *ctx, int v, int64_t dims[4]);
/* True when a's shape broadcasts to b's without widening it (every dim of a equal to b's, or 1
   when `allow_ones`), in both probes. */
bool kiln__pass_fits(const kiln__pass_ctx *ctx, int a, int b, bool allow_ones);

/* Frees a node's contents (the node's slot stays). */
void kiln__pass_node_clear(kiln__node *n);

#endif
