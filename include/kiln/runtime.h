/* Kiln's asynchronous runtime: worker threads that run requests on pooled sessions, with
 * priorities, cancellation, deadlines, dynamic batching, streaming and circuit breakers.
 *
 * Objects:
 *   kiln_runtime        worker threads, the four priority queues, the deadline timer.
 *   kiln_runtime_model  a model the runtime loaded, with its pool of sessions (contexts), its
 *                       batching settings, circuit breaker and statistics. Owned by the runtime.
 *   kiln_future         one submitted request: poll it, wait on it, cancel it, read its outputs.
 *   kiln_stream         many requests submitted in one call, results streamed to a callback.
 *
 * Threads: every function here may be called from any thread, concurrently, except
 * kiln_runtime_free (once, when no other call on the runtime is in progress). Completion callbacks
 * run on a worker thread, on the deadline timer thread, or on the thread that cancelled the
 * request; they must not block for long and must not wait on their own future.
 */
#ifndef KILN_RUNTIME_H
#define KILN_RUNTIME_H

#include "kiln/kiln.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_runtime kiln_runtime;
typedef struct kiln_runtime_model kiln_runtime_model;
typedef struct kiln_future kiln_future;
typedef struct kiln_stream kiln_stream;

/* Strict priority between levels (lower value first), FIFO within one. */
typedef enum kiln_priority {
  KILN_PRIORITY_CRITICAL = 0,
  KILN_PRIORITY_HIGH = 1,
  KILN_PRIORITY_NORMAL = 2,
  KILN_PRIORITY_LOW = 3,
  KILN_PRIORITY_COUNT
} kiln_priority;

typedef struct kiln_runtime_opts {
  size_t struct_size; /* sizeof(kiln_runtime_opts), set by kiln_runtime_opts_default() */
  /* The thread budget: `workers` requests run at once, each on a session with `intra_threads`
     threads. 0 picks: with both 0, one intra thread and one worker per core; with one given, the
     other is cores / given (at least 1). workers x intra_threads above the core count is
     rejected unless `oversubscribe` is set. */
  int workers;
  int intra_threads;
  bool oversubscribe;
  /* Requests that may wait per priority level; a submit beyond it fails at once with
     KILN_RESOURCE_EXHAUSTED. 0 = no limit. Default 1024 each. */
  size_t queue_limit[KILN_PRIORITY_COUNT];
  /* Aging: a request that has waited `aging_us` counts one level higher when workers pick, two
     after twice that, and so on (it never passes CRITICAL). 0 (default) = strict priority. */
  int64_t aging_us;
  /* Timeout given to requests of each level that set neither a timeout nor a deadline.
     0 (default) = none. */
  int64_t default_timeout_us[KILN_PRIORITY_COUNT];
  /* Circuit breakers per backend ("ref", "cpu", ...), shared by every model of the runtime
     (off when `backend_breaker_window` is 0, the default). A backend's window holds the runs
     that reached its nodes: a run that completes counts as a success for every backend the
     model's nodes run on; a run that fails inside a node counts as a failure of that node's
     backend only. Runs stopped between nodes (cancel, deadline, hooks, shutdown) and failures
     before the first node (input binding, planning) do not count. Same rules as the model's
     breaker otherwise (min calls, failure share, cool-down, probes); no slow-call test, as
     latency belongs to a model. While a backend's breaker is OPEN, requests to every model
     with nodes on it fail at submit with KILN_UNAVAILABLE. */
  size_t backend_breaker_window;
  size_t backend_breaker_min_calls;   /* default 10 */
  double backend_breaker_failure_rate; /* default 0.5 */
  int64_t backend_breaker_cooldown_us; /* default 5 s */
  size_t backend_breaker_probes;       /* default 3 */
} kiln_runtime_opts;

kiln_runtime_opts kiln_runtime_opts_default(void);

/* Starts the workers and the deadline timer. */
kiln_status kiln_runtime_create(const kiln_runtime_opts *opts, kiln_runtime **out,
                                kiln_error *err);
/* Shuts down: new submits fail with KILN_UNAVAILABLE, queued requests complete with
   KILN_CANCELLED, running ones are cancelled at their next node boundary; returns once every
   request has completed (callbacks included) and every thread has exited. Frees the models.
   Futures and streams the caller still holds stay readable until released. NULL is a no-op. */
void kiln_runtime_free(kiln_runtime *rt);
/* The thread budget actually used. */
void kiln_runtime_threads(const kiln_runtime *rt, int *workers, int *intra_threads);

/* ---- models ------------------------------------------------------------------------------- */

typedef enum kiln_breaker_state {
  KILN_BREAKER_CLOSED = 0,    /* requests flow */
  KILN_BREAKER_OPEN = 1,      /* requests fail fast with KILN_UNAVAILABLE until the cool-down */
  KILN_BREAKER_HALF_OPEN = 2, /* a few probe requests decide between CLOSED and OPEN */
} kiln_breaker_state;

typedef struct kiln_runtime_model_opts {
  size_t struct_size; /* sizeof(kiln_runtime_model_opts), set by kiln_runtime_model_opts_default() */
  /* Backends and optimization level as in kiln_model_opts (intra_threads is the runtime's). */
  const char *const *backends;
  int opt_level;
  /* Sessions kept for this model; 0 = one per worker. A worker that finds none free waits. */
  size_t max_contexts;
  /* Dynamic batching, for models whose every input and output has a symbolic first dimension:
     queued requests with otherwise equal shapes are run as one, up to `max_batch_size` rows,
     waiting at most `max_queue_delay_us` after the first one was submitted. 0 or 1 = off. */
  size_t max_batch_size;
  int64_t max_queue_delay_us;
  /* Circuit breaker over the last `breaker_window` calls that ran (off when 0). Once at least
     `breaker_min_calls` are in the window, it opens when the share of failed calls reaches
     `breaker_failure_rate` or the share of calls slower than `breaker_slow_call_us` reaches
     `breaker_slow_rate` (rates in (0, 1]; 0 disables that test). After `breaker_cooldown_us` it
     admits `breaker_probes` requests: all succeeding closes it, any failing opens it again.
     Failures are statuses other than OK and CANCELLED of calls that reached the model. */
  size_t breaker_window;
  size_t breaker_min_calls;
  double breaker_failure_rate;
  double breaker_slow_rate;
  int64_t breaker_slow_call_us;
  int64_t breaker_cooldown_us;
  size_t breaker_probes;
  /* Requests of this model that may wait per priority level, on top of the runtime's
     queue_limit for the level; a submit beyond it fails at once with KILN_RESOURCE_EXHAUSTED.
     0 (default) = only the runtime's limit. */
  size_t queue_limit[KILN_PRIORITY_COUNT];
} kiln_runtime_model_opts;

kiln_runtime_model_opts kiln_runtime_model_opts_default(void);

/* Loads an ONNX file into the runtime (which owns it until kiln_runtime_model_unload or
   kiln_runtime_free; the runtime sets the sessions' threads from its budget). `out` stays valid
   until then. */
kiln_status kiln_runtime_model_load(kiln_runtime *rt, const char *path,
                                    const kiln_runtime_model_opts *opts,
                                    kiln_runtime_model **out, kiln_error *err);
/* Adds a model the caller loaded: the runtime borrows it (the caller frees it after
   kiln_runtime_free) and its sessions use the model's own intra_threads, which the thread
   budget does not check. Otherwise as kiln_runtime_model_load (`opts->backends` and
   `opt_level` are ignored: the model was loaded with its own). */
kiln_status kiln_runtime_model_add(kiln_runtime *rt, kiln_model *model,
                                   const kiln_runtime_model_opts *opts,
                                   kiln_runtime_model **out, kiln_error *err);
/* Takes the model out of the runtime: submits fail with KILN_UNAVAILABLE from now on, requests
   already queued or running go on, and the model (sessions, weights; the kiln_model too when the
   runtime loaded it) is freed when the last of them completes (the worker that ran it lets go
   just after its waiters wake), or before this returns when nothing holds it. The caller drops its pointer: only the completion callbacks of the in-flight
   requests (which run before the free) may still use it. A borrowed model
   (kiln_runtime_model_add) stays the caller's: free it once kiln_runtime_models_draining no
   longer counts it, or after kiln_runtime_free. NULL is a no-op; unloading twice is a bug. */
void kiln_runtime_model_unload(kiln_runtime_model *m);
/* Models unloaded whose in-flight requests have not all completed yet (their memory not freed). */
size_t kiln_runtime_models_draining(const kiln_runtime *rt);

/* The loaded model, for its input and output descriptions (do not free it). */
const kiln_model *kiln_runtime_model_get(const kiln_runtime_model *m);

/* Counters of one priority level of one model. Totals in microseconds. */
typedef struct kiln_runtime_prio_stats {
  uint64_t queue_depth;   /* waiting now */
  uint64_t submitted;     /* accepted into the queue */
  uint64_t ok, cancelled, deadline_exceeded, rejected, failed; /* outcomes */
  uint64_t queue_us_total, queue_us_max;     /* submit to start (or to removal) */
  uint64_t compute_us_total, compute_us_max; /* model run, for requests that ran */
} kiln_runtime_prio_stats;

typedef struct kiln_runtime_stats {
  size_t struct_size; /* set by the caller to sizeof(kiln_runtime_stats) */
  kiln_runtime_prio_stats prio[KILN_PRIORITY_COUNT];
  uint64_t runs;           /* session runs (a batch is one) */
  uint64_t batched_runs;   /* runs of more than one request */
  uint64_t batch_requests; /* requests in those runs */
  uint64_t batch_rows_max; /* largest batch, in rows */
  /* The context pool. */
  uint64_t context_hits;   /* a free session was there */
  uint64_t context_misses; /* a session was created */
  uint64_t context_waits;  /* a worker had to wait for a session */
  uint64_t contexts;       /* sessions created */
  /* The circuit breaker. */
  kiln_breaker_state breaker_state;
  uint64_t breaker_opened, breaker_half_opened, breaker_closed; /* transitions into each state */
  int64_t retry_after_us; /* while OPEN: time left of the cool-down; else 0 */
  /* Batch members cancelled or expired after they were taken for a batch but before it ran:
     they were removed from it (and completed with their own status). */
  uint64_t batch_dropped;
} kiln_runtime_stats;

/* A snapshot of relaxed counters: each value is exact, the set is not one instant. A caller built
   against an older, shorter kiln_runtime_stats gets the fields it knows. */
kiln_status kiln_runtime_model_stats(const kiln_runtime_model *m, kiln_runtime_stats *st);

/* The breaker of one backend (see kiln_runtime_opts.backend_breaker_window). */
typedef struct kiln_backend_stats {
  size_t struct_size; /* set by the caller to sizeof(kiln_backend_stats) */
  const char *name;   /* the backend's name (static storage) */
  bool breaker_on;
  kiln_breaker_state breaker_state;
  uint64_t successes, failures; /* runs recorded (see kiln_runtime_opts) */
  uint64_t rejected;            /* submits refused because this breaker was open */
  uint64_t breaker_opened, breaker_half_opened, breaker_closed;
  int64_t retry_after_us; /* while OPEN: time left of the cool-down; else 0 */
} kiln_backend_stats;

/* Backends compiled in, one breaker each; `i` < kiln_runtime_backend_count(). */
size_t kiln_runtime_backend_count(const kiln_runtime *rt);
kiln_status kiln_runtime_backend_stats(const kiln_runtime *rt, size_t i, kiln_backend_stats *st);

/* ---- requests ----------------------------------------------------------------------------- */

typedef struct kiln_request {
  size_t struct_size; /* sizeof(kiln_request), set by kiln_request_default() */
  /* Inputs as for kiln_session_run. Borrowed (names, tensors and data) until the request
     completes: the caller keeps them alive and unchanged until then. */
  const char *const *names;
  const kiln_tensor *inputs;
  size_t n_inputs;
  kiln_priority priority; /* default NORMAL */
  /* Time allowed from submit to completion: past it the request completes with
     KILN_DEADLINE_EXCEEDED (queued: at once, by the timer; taken for a batch that has not run
     yet: removed from it; running: at the next node boundary). 0 = the runtime's default for
     the priority (unless deadline_ns is set); negative = none. */
  int64_t timeout_us;
  /* Called once when the request completes, before waiters are woken; `f` can be read inside. */
  void (*on_complete)(kiln_future *f, void *user);
  void *user;
  /* Optional: called between nodes with `user` while the request runs; a status other than OK
     stops it with that status. */
  kiln_status (*interrupt)(void *user);
  /* Absolute deadline on CLOCK_MONOTONIC, in nanoseconds (kiln_runtime_now_ns() is that clock);
     0 = none. With a timeout as well, the earlier of the two applies; with a deadline and no
     timeout, the priority's default timeout does not. A deadline already past at submit is
     accepted and completes at once with KILN_DEADLINE_EXCEEDED (through the callback). */
  int64_t deadline_ns;
} kiln_request;

kiln_request kiln_request_default(void);
/* CLOCK_MONOTONIC in nanoseconds: the clock of kiln_request.deadline_ns. */
int64_t kiln_runtime_now_ns(void);

/* Queues a request without blocking. On KILN_OK, `*out` (when `out` is not NULL) is a future the
   caller releases with kiln_future_release; pass NULL to rely on the callback alone. Fails at
   once, with no callback, with KILN_RESOURCE_EXHAUSTED when the priority's queue is full,
   KILN_UNAVAILABLE when the model's breaker or that of a backend its nodes run on is open (the
   message and the statistics give the retry-after time) or the runtime is shutting down, KILN_INVALID_ARGUMENT for a malformed
   request. Shapes and dtypes are checked when the request runs. */
kiln_status kiln_runtime_submit(kiln_runtime_model *m, const kiln_request *req,
                                kiln_future **out, kiln_error *err);
/* The synchronous call: submit, then wait. Returns the request's status; on a completed request
   `*out` is its future (release it), else NULL. */
kiln_status kiln_runtime_run(kiln_runtime_model *m, const kiln_request *req, kiln_future **out,
                             kiln_error *err);

/* True once the request has completed (its outputs and status are then readable). */
bool kiln_future_done(const kiln_future *f);
/* Waits up to `timeout_us` (negative = forever) for completion; true when completed. */
bool kiln_future_wait(kiln_future *f, int64_t timeout_us);
/* The outcome of a completed request (KILN_UNAVAILABLE with a message while it is pending). */
kiln_status kiln_future_status(const kiln_future *f, kiln_error *err);
/* Outputs of a completed successful request: owned by the future, valid until its release. */
size_t kiln_future_output_count(const kiln_future *f);
kiln_status kiln_future_output(const kiln_future *f, size_t i, kiln_tensor *out);
/* Cancels the request: a queued one completes with KILN_CANCELLED before this returns; one taken
   for a batch that has not started is removed from the batch before it runs; a running one stops
   at its next node boundary. No effect on a completed request. */
void kiln_future_cancel(kiln_future *f);
/* Drops the caller's reference. The request itself goes on (cancel it first to stop it). */
void kiln_future_release(kiln_future *f);

/* ---- streams ------------------------------------------------------------------------------ */

/* Called once per request of a stream, in completion order, with its index in the submitted
   array; `f` is readable during the call (it belongs to the stream). */
typedef void (*kiln_stream_fn)(size_t index, kiln_future *f, void *user);

/* Submits `n` requests (their own callbacks are ignored). A request refused at submit (full
   queue, open breaker) is reported through `fn` with that status, before this returns. */
kiln_status kiln_runtime_submit_stream(kiln_runtime_model *m, const kiln_request *reqs, size_t n,
                                       kiln_stream_fn fn, void *user, kiln_stream **out,
                                       kiln_error *err);
/* Cancels every request of the stream not completed yet (each is still reported once). */
void kiln_stream_cancel(kiln_stream *s);
/* Waits up to `timeout_us` (negative = forever) for all of the stream's results; true if all in. */
bool kiln_stream_wait(kiln_stream *s, int64_t timeout_us);
/* Drops the caller's reference; the stream's requests go on. */
void kiln_stream_release(kiln_stream *s);

#ifdef __cplusplus
}
#endif
#endif
