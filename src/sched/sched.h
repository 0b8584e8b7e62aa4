/* Internal structure of the async runtime (include/kiln/runtime.h). See docs/RUNTIME.md. */
#ifndef KILN_SCHED_SCHED_H
#define KILN_SCHED_SCHED_H

#include <pthread.h>
#include <stdatomic.h>

#include "core/common.h"
#include "kiln/runtime.h"

int64_t kiln__now_ns(void); /* CLOCK_MONOTONIC */

/* ---- circuit breaker (breaker.c) ---------------------------------------------------------- */

typedef struct kiln__breaker {
  pthread_mutex_t mu;
  bool on;
  size_t window_cap, min_calls, probes;
  double failure_rate, slow_rate;
  int64_t slow_ns, cooldown_ns;
  uint8_t *window; /* ring of the last calls: bit 0 failed, bit 1 slow */
  size_t head, count, failures, slows;
  atomic_int state;          /* kiln_breaker_state */
  atomic_llong open_until;   /* ns: end of the cool-down while OPEN */
  size_t probes_admitted, probes_ok;
  atomic_ullong opened, half_opened, closed;
  atomic_ullong n_ok, n_failed; /* calls recorded */
} kiln__breaker;

/* A breaker's settings (from kiln_runtime_model_opts or the backend fields of
   kiln_runtime_opts); window 0 = off. */
typedef struct kiln__breaker_cfg {
  size_t window, min_calls, probes;
  double failure_rate, slow_rate;
  int64_t slow_call_us, cooldown_us;
} kiln__breaker_cfg;

kiln_status kiln__breaker_init(kiln__breaker *b, const kiln__breaker_cfg *c, kiln_error *err);
void kiln__breaker_destroy(kiln__breaker *b);
/* Whether a request may go in now; `*probe` is set when it is a HALF_OPEN probe, `*retry_ns`
   to the wait left when it may not. */
bool kiln__breaker_admit(kiln__breaker *b, int64_t now, bool *probe, int64_t *retry_ns);
/* The outcome of a call that reached the model. */
void kiln__breaker_record(kiln__breaker *b, bool probe, bool failed, int64_t latency_ns,
                          int64_t now);
/* A probe that was admitted but never ran (cancelled, expired, rejected later). */
void kiln__breaker_forget_probe(kiln__breaker *b);

/* ---- requests ----------------------------------------------------------------------------- */

enum { KILN__REQ_QUEUED, KILN__REQ_RUNNING, KILN__REQ_DONE };

typedef struct kiln__prio_counters {
  atomic_ullong depth, submitted, ok, cancelled, deadline, rejected, failed;
  atomic_ullong queue_us, queue_us_max, compute_us, compute_us_max;
} kiln__prio_counters;

/* Futures are recycled through a free list shared by the runtime and every future it made, so
   a warm submit allocates nothing. Refcounted: a future outlives its runtime when the caller
   still holds it, and goes back here (or is freed, once the runtime is gone) on release. */
typedef struct kiln__fpool {
  atomic_size_t refs; /* the runtime's, plus one per future in use */
  pthread_mutex_t mu;
  struct kiln_future *free;
  size_t n_free;
  bool closed; /* the runtime is gone: free futures instead of keeping them */
} kiln__fpool;

/* Backend slots of a model: which runtime breakers its requests pass. */
#define KILN__MAX_USES 8

struct kiln_future {
  atomic_int refs;
  kiln__fpool *pool;
  struct kiln_future *next_free;
  /* The output block (tensor headers, then data), kept across reuse; grows only. */
  uint8_t *block;
  size_t block_cap;
  kiln_runtime_model *m; /* valid until the future completes (an unloaded model may go then) */
  kiln_runtime *rt;
  kiln_request req;
  int prio;
  int64_t t_submit, t_deadline; /* ns; t_deadline 0 = none */
  int64_t rows;                 /* first dimension of the first input (batching) */
  bool probe;                   /* admitted as a HALF_OPEN probe */
  uint8_t bprobe;               /* bit u: a probe of the model's backend use u */
  int state;                    /* KILN__REQ_*, under the runtime's mutex until DONE */
  atomic_int stop;              /* status that stops it when running (0 = none) */
  kiln_future *prev, *next;     /* the level's queue */
  size_t heap_at;               /* index in the deadline heap + 1; 0 = not in it */
  /* The result, written once by the completing thread before `done` is set. */
  kiln_status status;
  kiln_error err;
  kiln_tensor *outs;
  size_t n_outs;
  atomic_bool has_result; /* status and outputs are written (release) */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  atomic_bool done;       /* the callback has returned; waiters are woken */
  /* Streams. */
  struct kiln_stream *stream;
  size_t index;
};

/* A pooled session with the staging buffers a batch is assembled in. */
typedef struct kiln__ctx {
  kiln_session *s;
  kiln_tensor *staged; /* per input */
  void **stage_buf;
  size_t *stage_cap;
  kiln_tensor *outs; /* per output: the session's views after a run */
  struct kiln__ctx *next_free;
} kiln__ctx;

struct kiln_runtime_model {
  kiln_runtime *rt;
  kiln_model *model;
  bool owned; /* loaded by the runtime (freed with it) or added by the caller */
  /* Backends the model's nodes run on: runtime breaker slots, and per node which use. */
  size_t n_uses;
  size_t use_slot[KILN__MAX_USES];
  uint8_t *node_use;
  size_t n_nodes;
  size_t n_inputs;
  size_t max_batch;
  int64_t delay_ns;
  kiln__breaker breaker;
  /* The context pool. */
  pthread_mutex_t pool_mu;
  pthread_cond_t pool_cv;
  kiln__ctx **ctxs;
  size_t n_ctx, n_ready, max_ctx; /* slots taken, sessions in ctxs, the cap */
  kiln__ctx *free_ctx;
  atomic_ullong ctx_hits, ctx_misses, ctx_waits;
  /* Under the runtime's mutex: rows queued, for the batching decision. */
  int64_t queued_rows;
  uint64_t pick_mark;
  kiln__prio_counters pc[KILN_PRIORITY_COUNT];
  atomic_ullong runs, batched_runs, batch_requests, batch_rows_max, batch_dropped;
  size_t queue_limit[KILN_PRIORITY_COUNT]; /* 0 = only the runtime's */
  /* One reference for the runtime's table (dropped by unload), one per request submitted and not
     completed, one per worker executing it: the last one frees the model. */
  atomic_size_t refs;
  bool unloaded; /* under the runtime's mutex */
  struct kiln_runtime_model *next;
};

struct kiln_runtime {
  kiln_runtime_opts opts;
  int workers, intra;
  pthread_mutex_t mu;
  pthread_cond_t work_cv;  /* workers: new work, or a batch became ready */
  pthread_cond_t timer_cv; /* the timer: a sooner deadline, or stop */
  pthread_cond_t idle_cv;  /* shutdown: in-flight count reached 0 */
  kiln_future *head[KILN_PRIORITY_COUNT], *tail[KILN_PRIORITY_COUNT];
  size_t depth[KILN_PRIORITY_COUNT];
  kiln_future **heap; /* deadline min-heap of queued requests */
  size_t heap_n, heap_cap;
  size_t inflight; /* submitted, not completed */
  uint64_t pick_epoch;
  atomic_bool stopping; /* written under mu; read between nodes without it */
  kiln_runtime_model *models;
  atomic_size_t draining; /* unloaded models not freed yet */
  pthread_t *threads;
  size_t n_threads;
  pthread_t timer;
  bool timer_started;
  kiln__fpool *fpool;
  /* One breaker per compiled-in backend. */
  size_t n_backends;
  struct kiln__backend_slot *backends;
};

typedef struct kiln__backend_slot {
  const char *name;
  kiln__breaker breaker;
  atomic_ullong rejected;
} kiln__backend_slot;

/* Marks a request refused at submit as completed with `st`, without callback (streams). */
void kiln__future_reject(kiln_future *f, kiln_status st, const kiln_error *err);
void kiln__future_unref(kiln_future *f);
/* The shared part of every submit; `f` is prepared by the caller. */
kiln_status kiln__submit(kiln_runtime_model *m, kiln_future *f, kiln_error *err);
kiln_future *kiln__future_new(kiln_runtime_model *m, const kiln_request *req);
/* Back to the pool, or freed (the refcount is not consulted). */
void kiln__future_free(kiln_future *f);

void kiln__stream_item_done(kiln_future *f);

static inline void kiln__atomic_max(atomic_ullong *a, uint64_t v) {
  unsigned long long cur = atomic_load_explicit(a, memory_order_relaxed);
  while (cur < v && !atomic_compare_exchange_weak_explicit(a, &cur, v, memory_order_relaxed,
                                                           memory_order_relaxed)) {
  }
}

static inline void kiln__count(atomic_ullong *a, uint64_t v) {
  atomic_fetch_add_explicit(a, v, memory_order_relaxed);
}

#endif
