/* Internal structure of models, plans and sessions. */
#ifndef KILN_RUNTIME_RUNTIME_H
#define KILN_RUNTIME_RUNTIME_H

#include <pthread.h>

#include "core/threadpool.h"
#include "runtime/backend.h"

#define KILN__MAX_BACKENDS 8

/* Where a value's memory comes from in a plan. */
typedef enum kiln__where {
  KILN__AT_DYNAMIC = 0, /* shape known only at run time: allocated per run from the frame */
  KILN__AT_INPUT,       /* the caller's buffer */
  KILN__AT_CONST,       /* an initializer or a value folded at planning time */
  KILN__AT_ARENA,       /* planned offset in the session's arena */
} kiln__where;

typedef enum kiln__node_mode {
  KILN__NODE_STATIC = 0, /* shapes known: outputs in the arena */
  KILN__NODE_FOLDED,     /* computed at planning time */
  KILN__NODE_DYNAMIC,    /* shapes inferred at run time */
} kiln__node_mode;

/* Everything decided for one input-shape signature. Immutable once built; owned by the model. */
typedef struct kiln__plan {
  int n_inputs;
  kiln_tensor *sig;        /* input dtypes and shapes (data NULL) */
  kiln_tensor *vals;       /* per value: dtype, shape; data for CONST values */
  uint8_t *where;          /* kiln__where per value */
  size_t *offset;          /* arena offset per ARENA value */
  uint8_t *mode;           /* kiln__node_mode per node */
  size_t *scratch_off;     /* per node */
  size_t *scratch_bytes;   /* per node */
  void **folded;           /* data owned by the plan, one per folded output value */
  size_t arena_bytes, intermediate_bytes, folded_nodes;
  size_t concat_in_place;  /* Concat nodes whose inputs were planned inside the output */
} kiln__plan;

struct kiln_model {
  kiln__graph *g;
  kiln_model_opts opts;
  size_t n_backends;
  const kiln__backend *backends[KILN__MAX_BACKENDS];
  size_t backend_nodes[KILN__MAX_BACKENDS];
  uint8_t *node_backend;   /* index into backends, per node */
  void **node_state;       /* backend state per node */
  pthread_mutex_t plan_mu; /* guards plans */
  kiln__plan **plans;
  size_t n_plans, cap_plans;
  size_t param_count, param_bytes;
};

/* A bump allocator for values whose size is known only at run time; reset every run. */
typedef struct kiln__dynarena {
  uint8_t *base;
  size_t cap, used, peak;
  struct kiln__dynchunk *overflow; /* extra chunks taken during a run */
  bool grew;
} kiln__dynarena;

void *kiln__dyn_alloc(kiln__dynarena *a, size_t bytes);
void kiln__dyn_reset(kiln__dynarena *a);
void kiln__dyn_free(kiln__dynarena *a);

/* An executing graph: the main graph of a run or a subgraph call. */
typedef struct kiln__frame {
  const kiln__graph *g;
  kiln_tensor *vals;
  const struct kiln__frame *parent;
  kiln__dynarena *dyn;
  kiln__pool *pool;
  kiln_error *err;
} kiln__frame;

struct kiln_session {
  kiln_model *m;
  const kiln__plan *plan;
  kiln__pool *pool;
  kiln_tensor *vals;            /* per value of the main graph */
  kiln_tensor *sig;             /* the current run's input signature */
  const kiln_tensor **in_ptrs;  /* per node slices: node i's inputs at in_ptrs[in_start[i]] */
  kiln_tensor **out_ptrs;
  size_t *in_start, *out_start;
  uint8_t *arena;
  size_t arena_cap;
  kiln__dynarena dyn;
  bool ran;
  kiln_session_stats stats;
};

kiln_status kiln__plan_build(const kiln_model *m, const kiln_tensor *sig, int n_inputs,
                             kiln__plan **out, kiln_error *err);
void kiln__plan_free(const kiln__graph *g, kiln__plan *p);

/* Runs one node whose output shapes are inferred now: allocates outputs (and scratch) from the
   frame's dynamic arena. `in`/`out` are the node's tensor pointer slices. */
kiln_status kiln__run_node_dynamic(kiln__frame *f, const kiln__node *n, const kiln_tensor **in,
                                   kiln_tensor **out, const kiln__backend *be, void *state);

/* Profiling (profile.c). run_begin fails for a profile of another model, and sets *recording
   false once the profile is full (the run is counted as dropped and is not timed). Times are
   kiln__now_ns(). */
kiln_status kiln__profile_run_begin(kiln_profile *p, const kiln_model *m, int64_t now,
                                    bool *recording, kiln_error *err);
void kiln__profile_run_end(kiln_profile *p, int64_t now);
void kiln__profile_node(kiln_profile *p, size_t node, const kiln__node *n,
                        const kiln_tensor *const *in, kiln_tensor *const *out, int64_t t0,
                        int64_t t1);

#endif
