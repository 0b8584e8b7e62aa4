/* Kiln: an inference engine for ONNX models.
 *
 * The public API. Objects:
 *   kiln_model    a loaded, validated, immutable model. Safe to share between threads.
 *   kiln_session  an execution context for one model: owns the arena that holds every intermediate
 *                 and output of a run. One run at a time per session; sessions of one model run
 *                 concurrently.
 *   kiln_tensor   a plain view of a tensor (dtype, shape, data pointer). Kiln never frees a view's
 *                 data unless a function below says it allocated it.
 *
 * Every fallible call returns a kiln_status and, when `err` is not NULL, fills it with a message.
 */
#ifndef KILN_KILN_H
#define KILN_KILN_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KILN_MAX_RANK 8

/* One list, used for the enum and for kiln_status_str(). */
#define KILN_STATUS_LIST(X)                                   \
  X(OK, "ok")                                                 \
  X(INVALID_ARGUMENT, "invalid argument")                     \
  X(BAD_MODEL, "malformed model")                             \
  X(UNSUPPORTED, "unsupported")                               \
  X(NO_MEMORY, "out of memory")                               \
  X(IO_ERROR, "i/o error")                                    \
  X(NOT_FOUND, "not found")                                   \
  X(CANCELLED, "cancelled")                                   \
  X(DEADLINE_EXCEEDED, "deadline exceeded")                   \
  X(RESOURCE_EXHAUSTED, "resource exhausted")                 \
  X(UNAVAILABLE, "unavailable")                               \
  X(INTERNAL, "internal error")

typedef enum kiln_status {
#define KILN_X_(name, str) KILN_##name,
  KILN_STATUS_LIST(KILN_X_)
#undef KILN_X_
  KILN_STATUS_COUNT
} kiln_status;

const char *kiln_status_str(kiln_status st);

/* The detail of a failure. Fixed size so callers can keep one on the stack. */
typedef struct kiln_error {
  kiln_status status;
  char message[512];
} kiln_error;

/* Element types, numbered as ONNX's TensorProto.DataType. */
typedef enum kiln_dtype {
  KILN_DTYPE_UNDEFINED = 0,
  KILN_DTYPE_FLOAT = 1,
  KILN_DTYPE_UINT8 = 2,
  KILN_DTYPE_INT8 = 3,
  KILN_DTYPE_UINT16 = 4,
  KILN_DTYPE_INT16 = 5,
  KILN_DTYPE_INT32 = 6,
  KILN_DTYPE_INT64 = 7,
  KILN_DTYPE_STRING = 8,
  KILN_DTYPE_BOOL = 9,
  KILN_DTYPE_FLOAT16 = 10,
  KILN_DTYPE_DOUBLE = 11,
  KILN_DTYPE_UINT32 = 12,
  KILN_DTYPE_UINT64 = 13,
  KILN_DTYPE_COMPLEX64 = 14,
  KILN_DTYPE_COMPLEX128 = 15,
  KILN_DTYPE_BFLOAT16 = 16,
  KILN_DTYPE_COUNT,
  /* Not element types: the kinds of value that hold other values (ONNX sequence and optional).
     A SEQUENCE has rank 1 and dims[0] elements; its data points to kiln_tensor[dims[0]].
     An OPTIONAL has rank 0; its data is NULL (no value) or points to one kiln_tensor. */
  KILN_DTYPE_SEQUENCE = 64,
  KILN_DTYPE_OPTIONAL = 65,
} kiln_dtype;

const char *kiln_dtype_name(kiln_dtype t);
/* Bytes per element; 0 for UNDEFINED and STRING. */
size_t kiln_dtype_size(kiln_dtype t);

/* A tensor view. For STRING tensors `data` points to an array of NUL-terminated char*; for
   SEQUENCE and OPTIONAL values see kiln_dtype. */
typedef struct kiln_tensor {
  kiln_dtype dtype;
  int rank;
  int64_t dims[KILN_MAX_RANK];
  void *data;
} kiln_tensor;

size_t kiln_tensor_count(const kiln_tensor *t);  /* product of dims; 1 for a scalar */
size_t kiln_tensor_nbytes(const kiln_tensor *t);

/* Allocates zeroed data for a tensor of the given type and shape (freed by kiln_tensor_release). */
kiln_status kiln_tensor_alloc(kiln_tensor *t, kiln_dtype dtype, int rank, const int64_t *dims,
                              kiln_error *err);
/* Frees data that Kiln allocated (kiln_tensor_alloc, kiln_*_read_*), the elements of sequences
   and optionals included, and clears the view. */
void kiln_tensor_release(kiln_tensor *t);

/* File formats: NumPy .npy (version 1-3, little-endian, C order) and a serialized onnx.TensorProto. */
kiln_status kiln_tensor_read_npy(const char *path, kiln_tensor *out, kiln_error *err);
kiln_status kiln_tensor_write_npy(const char *path, const kiln_tensor *t, kiln_error *err);
kiln_status kiln_tensor_read_pb(const char *path, kiln_tensor *out, kiln_error *err);
/* Reads a serialized onnx.SequenceProto (kind SEQUENCE), onnx.OptionalProto (kind OPTIONAL) or
   TensorProto (any other kind) into a value released with kiln_tensor_release(). */
kiln_status kiln_value_read_pb(const char *path, kiln_dtype kind, kiln_tensor *out,
                               kiln_error *err);

/* ---- models ---------------------------------------------------------------------------------- */

typedef struct kiln_model kiln_model;

typedef struct kiln_model_opts {
  size_t struct_size;     /* sizeof(kiln_model_opts), set by kiln_model_opts_default() */
  int intra_threads;      /* threads per session for one inference; 0 = one per core */
  /* Backends in order of preference, by name ("ref", ...), NULL-terminated. NULL = all, best
     first. A node runs on the first backend that supports it; "ref" always supports every op. */
  const char *const *backends;
  /* Graph optimization: 0 none, 1 basic rewrites, 2 fusions, 3 layout; -1 = the highest. */
  int opt_level;
} kiln_model_opts;

kiln_model_opts kiln_model_opts_default(void);

/* Loads an ONNX file. External data files are read relative to the model's folder. */
kiln_status kiln_model_load(const char *path, const kiln_model_opts *opts, kiln_model **out,
                            kiln_error *err);
/* Loads from memory; `base_dir` (may be NULL) resolves external data. `data` is not kept. */
kiln_status kiln_model_load_memory(const void *data, size_t size, const char *base_dir,
                                   const kiln_model_opts *opts, kiln_model **out, kiln_error *err);
void kiln_model_free(kiln_model *m);  /* NULL is a no-op; all sessions must be freed first */

/* Describes a graph input or output. dims[i] is -1 where the dimension is symbolic or unknown,
   and dim_names[i] then holds its name (or NULL). Strings belong to the model. */
typedef struct kiln_io_info {
  const char *name;
  kiln_dtype dtype;       /* SEQUENCE or OPTIONAL for those kinds of value */
  int rank;  /* -1 when the model does not say */
  int64_t dims[KILN_MAX_RANK];
  const char *dim_names[KILN_MAX_RANK];
} kiln_io_info;

size_t kiln_model_input_count(const kiln_model *m);
size_t kiln_model_output_count(const kiln_model *m);
kiln_status kiln_model_input_info(const kiln_model *m, size_t i, kiln_io_info *info);
kiln_status kiln_model_output_info(const kiln_model *m, size_t i, kiln_io_info *info);

/* Static facts about a loaded model, for `kiln info`. */
typedef struct kiln_model_stats {
  int64_t ir_version;
  int64_t opset;          /* default-domain opset */
  size_t node_count;
  size_t param_count;     /* elements in initializers */
  size_t param_bytes;
  size_t backend_count;
} kiln_model_stats;

void kiln_model_stats_get(const kiln_model *m, kiln_model_stats *st);
/* Node counts per op type, sorted by count: fills up to `cap` entries, returns how many exist. */
size_t kiln_model_op_histogram(const kiln_model *m, const char **op_types, size_t *counts,
                               size_t cap);
/* Dispatch: how many nodes each backend was given (i < backend_count). */
void kiln_model_backend_nodes(const kiln_model *m, size_t i, const char **name, size_t *nodes);

/* ---- sessions -------------------------------------------------------------------------------- */

typedef struct kiln_session kiln_session;

kiln_status kiln_session_create(kiln_model *m, kiln_session **out, kiln_error *err);
void kiln_session_free(kiln_session *s);

/* Runs one inference. `inputs[i]` feeds the graph input called `names[i]`; every graph input
   without an initializer must be fed. Inputs are borrowed for the call. Outputs belong to the
   session and stay valid until its next run or free. Once the session has run with a given set of
   input shapes, running again with the same shapes performs no heap allocation. */
kiln_status kiln_session_run(kiln_session *s, const char *const *names, const kiln_tensor *inputs,
                             size_t n_inputs, kiln_error *err);
/* Options for one run. `interrupt`, when set, is called between nodes (never inside a kernel);
   a status other than KILN_OK stops the run, which returns that status (e.g. KILN_CANCELLED or
   KILN_DEADLINE_EXCEEDED). It runs on the calling thread and must be cheap. */
typedef struct kiln_profile kiln_profile;

typedef struct kiln_run_opts {
  size_t struct_size; /* sizeof(kiln_run_opts), set by kiln_run_opts_default() */
  kiln_status (*interrupt)(void *user);
  void *user;
  /* When set, the run records one event per executed node into this profile (made for the
     session's model; see "profiling" below). NULL: nothing is recorded and nothing is timed. */
  kiln_profile *profile;
} kiln_run_opts;

kiln_run_opts kiln_run_opts_default(void);

/* kiln_session_run with options (NULL = defaults). */
kiln_status kiln_session_run_ex(kiln_session *s, const char *const *names,
                                const kiln_tensor *inputs, size_t n_inputs,
                                const kiln_run_opts *opts, kiln_error *err);

/* The i-th graph output of the last successful run (a view into the session). */
kiln_status kiln_session_output(const kiln_session *s, size_t i, kiln_tensor *out);

/* Memory planning and buffer-pool figures for the session's current plan. */
typedef struct kiln_session_stats {
  size_t arena_bytes;          /* planned arena for intermediates and outputs */
  size_t intermediate_bytes;   /* sum of all planned tensors: what planning without reuse needs */
  size_t dynamic_bytes;        /* bytes taken by values whose shapes are known only at run time */
  size_t plan_hits;            /* runs whose input shapes matched a cached plan */
  size_t plan_misses;          /* runs that had to plan (new input-shape signature) */
  size_t pool_hits;            /* runs served from the existing arena */
  size_t pool_misses;          /* runs that had to grow the arena */
  size_t folded_nodes;         /* nodes computed once at planning time (constant inputs) */
  size_t concat_in_place;      /* Concat nodes whose inputs are planned inside their output, so
                                  their producers write there and the Concat copies nothing */
} kiln_session_stats;

void kiln_session_stats_get(const kiln_session *s, kiln_session_stats *st);

/* Plans the session for the given input shapes without running (for `kiln info`). Inputs' data
   may be NULL. */
kiln_status kiln_session_plan(kiln_session *s, const char *const *names,
                              const kiln_tensor *inputs, size_t n_inputs, kiln_error *err);

/* ---- profiling -------------------------------------------------------------------------------- */

/* A per-node profile of runs, like ONNX Runtime's enable_profiling: pass it in kiln_run_opts and
   every node the run executes (not those folded at planning time; a subgraph's nodes count as
   their If/Loop/Scan node) gets an event with its wall time (CLOCK_MONOTONIC), what ran it and
   the shapes it produced. All memory is allocated by kiln_profile_create, so recording never
   allocates; runs past `max_runs` are counted but not kept. A profile borrows strings from its
   model: free it before the model. One run at a time may record into a profile. */
kiln_status kiln_profile_create(const kiln_model *m, size_t max_runs, kiln_profile **out,
                                kiln_error *err);
void kiln_profile_free(kiln_profile *p);  /* NULL is a no-op */
void kiln_profile_clear(kiln_profile *p); /* forgets every run; capacity stays */

#define KILN_PROFILE_MAX_OUTPUTS 4

typedef struct kiln_profile_event {
  size_t run;             /* which recorded run, from 0 */
  size_t node;            /* the node's index in the model's (optimized) graph */
  const char *name;       /* the node's name ("" when it has none) */
  const char *op_type;
  const char *domain;     /* "" for the default ONNX domain */
  const char *backend;    /* "cpu", "ref", ... */
  const char *kernel;     /* the backend's kernel family ("gemm", "dwconv", ...) or its name */
  double start_us;        /* from the start of the first recorded run */
  double dur_us;
  /* Multiply-accumulates of a Conv, ConvTranspose, MatMul, Gemm, their ai.kiln fused forms and
     integer/quantized forms (ConvInteger, QLinearConv, MatMulInteger, QLinearMatMul,
     MatMulNBits) and ai.kiln Attention; 0 for every other op. FLOPs = 2 * macs. */
  uint64_t macs;
  int n_outputs;          /* the node's outputs; the first KILN_PROFILE_MAX_OUTPUTS are below */
  kiln_tensor outputs[KILN_PROFILE_MAX_OUTPUTS]; /* dtype and shape; data NULL (rank -1: absent) */
} kiln_profile_event;

/* Events in the order they were recorded (run by run, node order within a run). */
size_t kiln_profile_event_count(const kiln_profile *p);
kiln_status kiln_profile_event_get(const kiln_profile *p, size_t i, kiln_profile_event *ev);
/* Recorded runs, and runs that did not fit. A run that failed keeps the nodes that completed. */
size_t kiln_profile_run_count(const kiln_profile *p);
size_t kiln_profile_dropped_runs(const kiln_profile *p);
/* The wall time of recorded run r, from its first node to its last (binding inputs and finding
   the plan excluded), on the same clock as the events. */
kiln_status kiln_profile_run_get(const kiln_profile *p, size_t r, double *start_us,
                                 double *dur_us);
/* Writes the profile as Chrome trace events (a JSON array, as ONNX Runtime's profile files;
   chrome://tracing and Perfetto load it): one "Node" event per node per run and one "Session"
   event per run, times in microseconds. */
kiln_status kiln_profile_write_json(const kiln_profile *p, const char *path, kiln_error *err);

/* ---- process-wide hooks (for tests) ---------------------------------------------------------- */

/* Number of heap allocations Kiln has made through its allocator in this process. Read-only
   diagnostics; relaxed atomic. */
uint64_t kiln_alloc_count(void);

/* The name of the CPU feature level Kiln detected ("avx512", "avx2", "sse2", "neon", "generic"). */
const char *kiln_cpu_name(void);

#ifdef __cplusplus
}
#endif
#endif
