/* Operators: one descriptor per ONNX op type (shape inference + reference kernel), and the
 * context every kernel receives.
 *
 * Contract of an op:
 *   infer(c)  sets dtype, rank and dims of every present output from the inputs' dtypes and
 *             shapes. An input's `data` is non-NULL when its value is known (a constant, a value
 *             folded at planning time, or at run time for nodes planned dynamically). When the
 *             output shape depends on data that is not known yet, infer returns KILN__NEED_DATA;
 *             when it can be known only by running the op (Loop, NonZero...), infer returns
 *             KILN__DEFER and run() allocates outputs itself with kiln__out_alloc().
 *   scratch(c) (optional) bytes of scratch memory run() needs, given the inferred shapes.
 *   run(c)    computes the outputs into memory the planner already assigned (out[i]->data).
 *             No allocation (except kiln__out_alloc for deferred ops), no I/O, no logging.
 * Attributes are read from c->node on every call; an op keeps no state between calls.
 */
#ifndef KILN_IR_OP_H
#define KILN_IR_OP_H

#include "ir/graph.h"

/* Internal statuses returned by infer; never escape to callers. */
#define KILN__NEED_DATA ((kiln_status)1000)
#define KILN__DEFER ((kiln_status)1001)

struct kiln__pool;
struct kiln__frame;

typedef struct kiln__kctx {
  const kiln__node *node;
  int n_in, n_out;
  const kiln_tensor *const *in;  /* in[i] is NULL for an omitted optional input */
  kiln_tensor *const *out;       /* out[i] is NULL for an omitted optional output */
  void *scratch;
  size_t scratch_bytes;
  struct kiln__pool *pool;       /* intra-op threads; NULL runs serially */
  struct kiln__frame *frame;     /* the executing frame: subgraphs, dynamic allocation */
  kiln_error *err;
} kiln__kctx;

enum {
  KILN__OPF_INPLACE = 1u << 0,    /* out[0] may share in[0]'s memory (same size, elementwise) */
  KILN__OPF_SHAPE_ONLY = 1u << 1, /* run() reads only input shapes (Shape, Size) */
  KILN__OPF_NOFOLD = 1u << 2,     /* never compute at planning time (random ops) */
};

typedef struct kiln__op {
  const char *domain;  /* "" = ai.onnx */
  const char *name;
  kiln_status (*infer)(kiln__kctx *c);
  kiln_status (*run)(kiln__kctx *c);
  size_t (*scratch)(const kiln__kctx *c);
  unsigned flags;
  int min_inputs, max_inputs;  /* max -1 = variadic */
} kiln__op;

/* Finds the descriptor for an op type in a domain ("" or "ai.onnx" for the default domain). */
const kiln__op *kiln__op_find(const char *domain, const char *name);
/* Iterates every registered op (for listings): returns NULL past the end. */
const kiln__op *kiln__op_at(size_t i);

/* Each family of reference kernels exports one table, terminated by an entry with name NULL. */
extern const kiln__op kiln__ops_elementwise[];
extern const kiln__op kiln__ops_shape[];
extern const kiln__op kiln__ops_reduce[];
extern const kiln__op kiln__ops_nn[];
extern const kiln__op kiln__ops_conv[];
extern const kiln__op kiln__ops_index[];
extern const kiln__op kiln__ops_misc[];
extern const kiln__op kiln__ops_control[];
extern const kiln__op kiln__ops_rnn[];
extern const kiln__op kiln__ops_quant[];
extern const kiln__op kiln__ops_signal[];
extern const kiln__op kiln__ops_sequence[];
extern const kiln__op kiln__ops_string[];
extern const kiln__op kiln__ops_fused[];
extern const kiln__op kiln__ops_nbits[]; /* com.microsoft MatMulNBits (nbits.c) */

/* ---- helpers for infer() and run() ----------------------------------------------------------- */

/* Sets an output's dtype and shape (data untouched). */
void kiln__set_shape(kiln_tensor *t, kiln_dtype dtype, int rank, const int64_t *dims);
/* Output i of a deferred op: sets the shape and allocates its data from the frame. */
kiln_status kiln__out_alloc(kiln__kctx *c, int i, kiln_dtype dtype, int rank,
                            const int64_t *dims);

/* Multidirectional (numpy) broadcasting of two shapes. */
kiln_status kiln__broadcast(int ra, const int64_t *a, int rb, const int64_t *b, int *rank,
                            int64_t *dims, kiln_error *err);
/* Element strides of `t` viewed in the broadcast shape (rank, dims): 0 along broadcast dims. */
void kiln__bcast_strides(const kiln_tensor *t, int rank, const int64_t *dims, int64_t *strides);
/* Row-major strides of a shape, in elements. */
void kiln__strides(int rank, const int64_t *dims, int64_t *strides);
/* Normalizes a possibly negative axis into [0, rank); false when out of range. */
bool kiln__norm_axis(int64_t axis, int rank, int *out);
/* Reads an integer tensor (int32/int64) into `v`; fails when it has more than `cap` elements
   or its data is unknown. */
kiln_status kiln__read_ints(const kiln__kctx *c, const kiln_tensor *t, int64_t *v, size_t cap,
                            size_t *n);

/* Memory that lives until the current run ends, from the frame's dynamic arena (for deferred ops
   such as Loop that cannot size their needs at planning time). NULL when out of memory. */
void *kiln__dyn_scratch(kiln__kctx *c, size_t bytes);

/* ai.kiln Attention's geometry (docs/FUSED_OPS.md). Its `layout` attribute places the heads:
   "BHSD" (default) Q [B,H,S,D], K [B,H,T,D], V [B,H,T,Dv], Y [B,H,S,Dv]; "BSHD" the same with
   the head axis inside each row (Q [B,S,H,D]...), as projections write them before the split's
   Transpose. Row r of head (b, h) of a tensor starts at b * sb + h * sh + r * ld elements. */
typedef struct kiln__att_view {
  size_t sb, sh, ld;
} kiln__att_view;
typedef struct kiln__att_geom {
  size_t B, H, S, T, D, Dv;
  kiln__att_view q, k, v, y;
} kiln__att_geom;
/* Reads the sizes from Q, K, V (rank 4, float or not) under the node's layout; fails with a
   message naming the expected shapes when they disagree or the layout is unknown. */
kiln_status kiln__att_geom_of(const kiln__node *n, const kiln_tensor *q, const kiln_tensor *k,
                              const kiln_tensor *v, kiln__att_geom *g, kiln_error *err);

/* SEQUENCE and OPTIONAL values hold other values instead of elements. */
static inline bool kiln__is_container(kiln_dtype t) {
  return t == KILN_DTYPE_SEQUENCE || t == KILN_DTYPE_OPTIONAL;
}
/* Copies a value so that it stays valid until the run ends: tensor data goes to the frame's
   dynamic arena (arena memory of a planned value may be reused once that value dies); sequences
   and optionals are shared, since their elements are copied when they are put in. */
kiln_status kiln__value_copy(kiln__kctx *c, const kiln_tensor *src, kiln_tensor *dst);

/* Runs a subgraph (If/Loop/Scan bodies) on the given inputs; outputs are allocated from the
   frame and valid until the enclosing run ends. Outer-scope names resolve in the calling frame. */
kiln_status kiln__subgraph_run(kiln__kctx *c, const kiln__graph *g, const kiln_tensor *inputs,
                               int n_inputs, kiln_tensor *outputs, int n_outputs);

/* Splits [0, n) over the pool's threads: fn(arg, begin, end). Runs inline without a pool. The
   ranges' lengths differ by one at most (one index each up to 8 per thread). */
typedef void (*kiln__range_fn)(void *arg, size_t begin, size_t end);
void kiln__parallel_for(struct kiln__pool *pool, size_t n, kiln__range_fn fn, void *arg);
/* The same, fn also told the index of the thread running it (0 the caller, below
   kiln__pool_threads: 1 without a pool), for kernels with a scratch slot per thread. Each thread
   runs its own contiguous share of [0, n) first, so a unit runs on the same thread in every run
   while the threads keep up (its output lines stay in that thread's cache), and takes units
   from the back of another's share when it finishes first. */
typedef void (*kiln__range_slot_fn)(void *arg, size_t begin, size_t end, size_t slot);
void kiln__parallel_for_slots(struct kiln__pool *pool, size_t n, kiln__range_slot_fn fn,
                              void *arg);

#endif
