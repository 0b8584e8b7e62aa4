/* The async runtime: queues, workers, the deadline timer, the context pool and batching.
   One mutex (rt->mu) guards the queues, the deadline heap and every queued request's state;
   a request leaves the queue exactly once, under that mutex, and whoever takes it completes it,
   so no request completes twice. See docs/RUNTIME.md. */
#include <errno.h>
#include <stddef.h>
#include <time.h>
#include <unistd.h>

#include "ir/graph.h"
#include "runtime/runtime.h"
#include "sched/sched.h"

#define MAX_BATCH_REQS 256 /* requests in one batch; max_batch_size is capped to it */
#define MAX_FREE_FUTURES 4096 /* futures kept for reuse; more are freed */

int64_t kiln__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t kiln_runtime_now_ns(void) { return kiln__now_ns(); }

static void to_timespec(int64_t ns, struct timespec *ts) {
  ts->tv_sec = (time_t)(ns / 1000000000);
  ts->tv_nsec = (long)(ns % 1000000000);
}

static void cond_init(pthread_cond_t *c) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(c, &a);
  pthread_condattr_destroy(&a);
}

/* Waits until `deadline_ns` (monotonic), or forever when it is 0. */
static void cond_wait_until(pthread_cond_t *c, pthread_mutex_t *mu, int64_t deadline_ns) {
  if (deadline_ns <= 0) {
    pthread_cond_wait(c, mu);
    return;
  }
  struct timespec ts;
  to_timespec(deadline_ns, &ts);
  pthread_cond_timedwait(c, mu, &ts);
}

static int cores(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
}

/* ---- options ------------------------------------------------------------------------------ */

kiln_runtime_opts kiln_runtime_opts_default(void) {
  kiln_runtime_opts o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  for (int i = 0; i < KILN_PRIORITY_COUNT; i++) o.queue_limit[i] = 1024;
  o.backend_breaker_min_calls = 10;
  o.backend_breaker_failure_rate = 0.5;
  o.backend_breaker_cooldown_us = 5000000;
  o.backend_breaker_probes = 3;
  return o;
}

kiln_runtime_model_opts kiln_runtime_model_opts_default(void) {
  kiln_runtime_model_opts o;
  memset(&o, 0, sizeof o);
  o.struct_size = sizeof o;
  o.opt_level = -1;
  o.max_queue_delay_us = 1000;
  o.breaker_min_calls = 10;
  o.breaker_failure_rate = 0.5;
  o.breaker_slow_call_us = 1000000;
  o.breaker_cooldown_us = 5000000;
  o.breaker_probes = 3;
  return o;
}

kiln_request kiln_request_default(void) {
  kiln_request r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  r.priority = KILN_PRIORITY_NORMAL;
  return r;
}

/* Copies a caller's options struct over the defaults: an older, shorter struct is fine. */
static kiln_status copy_opts(void *dst, size_t dst_size, const void *src, const char *what,
                             kiln_error *err) {
  if (!src) return KILN_OK;
  size_t n;
  memcpy(&n, src, sizeof n);
  if (n < 2 * sizeof(size_t) || n > dst_size)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "%s.struct_size is wrong", what);
  memcpy(dst, src, n);
  memcpy(dst, &dst_size, sizeof dst_size);
  return KILN_OK;
}

/* ---- queues and the deadline heap (under rt->mu) ------------------------------------------ */

static void heap_set(kiln_runtime *rt, size_t i, kiln_future *f) {
  rt->heap[i] = f;
  f->heap_at = i + 1;
}

static void heap_up(kiln_runtime *rt, size_t i) {
  kiln_future *f = rt->heap[i];
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (rt->heap[p]->t_deadline <= f->t_deadline) break;
    heap_set(rt, i, rt->heap[p]);
    i = p;
  }
  heap_set(rt, i, f);
}

static void heap_down(kiln_runtime *rt, size_t i) {
  kiln_future *f = rt->heap[i];
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= rt->heap_n) break;
    if (c + 1 < rt->heap_n && rt->heap[c + 1]->t_deadline < rt->heap[c]->t_deadline) c++;
    if (rt->heap[c]->t_deadline >= f->t_deadline) break;
    heap_set(rt, i, rt->heap[c]);
    i = c;
  }
  heap_set(rt, i, f);
}

static void heap_remove(kiln_runtime *rt, kiln_future *f) {
  size_t i = f->heap_at - 1;
  f->heap_at = 0;
  kiln_future *last = rt->heap[--rt->heap_n];
  if (i == rt->heap_n) return;
  heap_set(rt, i, last);
  heap_up(rt, i);
  heap_down(rt, last->heap_at - 1);
}

static void q_remove(kiln_runtime *rt, kiln_future *f) {
  int l = f->prio;
  if (f->prev) f->prev->next = f->next;
  else rt->head[l] = f->next;
  if (f->next) f->next->prev = f->prev;
  else rt->tail[l] = f->prev;
  f->prev = f->next = NULL;
  rt->depth[l]--;
  f->m->queued_rows -= f->rows;
  atomic_fetch_sub_explicit(&f->m->pc[l].depth, 1, memory_order_relaxed);
  if (f->heap_at) heap_remove(rt, f);
}

/* ---- model references --------------------------------------------------------------------- */

static void model_free(kiln_runtime_model *m);

static void model_ref(kiln_runtime_model *m) { atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed); }

/* The last reference only goes after unload (the table holds one until then). */
static void model_unref(kiln_runtime_model *m) {
  if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1) return;
  kiln_runtime *rt = m->rt;
  model_free(m);
  atomic_fetch_sub_explicit(&rt->draining, 1, memory_order_release);
}

/* ---- completion --------------------------------------------------------------------------- */

static void fpool_unref(kiln__fpool *p) {
  if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1) return;
  while (p->free) {
    kiln_future *f = p->free;
    p->free = f->next_free;
    kiln__free(f->block);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    kiln__free(f);
  }
  pthread_mutex_destroy(&p->mu);
  kiln__free(p);
}

/* A future from the pool (its mutex, condition and output block kept) or a new one, with every
   other field reset. */
kiln_future *kiln__future_new(kiln_runtime_model *m, const kiln_request *req) {
  kiln__fpool *p = m->rt->fpool;
  pthread_mutex_lock(&p->mu);
  kiln_future *f = p->free;
  if (f) {
    p->free = f->next_free;
    p->n_free--;
  }
  pthread_mutex_unlock(&p->mu);
  if (!f) {
    f = kiln__calloc(1, sizeof *f);
    if (!f) return NULL;
    pthread_mutex_init(&f->mu, NULL);
    cond_init(&f->cv);
  }
  atomic_fetch_add_explicit(&p->refs, 1, memory_order_relaxed);
  f->pool = p;
  f->next_free = NULL;
  atomic_init(&f->refs, 1);
  f->m = m;
  f->rt = m->rt;
  f->req = *req;
  f->prio = (int)req->priority;
  f->t_submit = f->t_deadline = f->rows = 0;
  f->probe = false;
  f->bprobe = 0;
  f->state = KILN__REQ_QUEUED;
  atomic_init(&f->stop, 0);
  f->prev = f->next = NULL;
  f->heap_at = 0;
  f->status = KILN_UNAVAILABLE;
  f->err.status = KILN_OK;
  f->err.message[0] = 0;
  f->outs = NULL;
  f->n_outs = 0;
  atomic_init(&f->has_result, false);
  atomic_init(&f->done, false);
  f->stream = NULL;
  f->index = 0;
  return f;
}

void kiln__future_free(kiln_future *f) {
  kiln__fpool *p = f->pool;
  pthread_mutex_lock(&p->mu);
  bool keep = !p->closed && p->n_free < MAX_FREE_FUTURES;
  if (keep) {
    f->next_free = p->free;
    p->free = f;
    p->n_free++;
  }
  pthread_mutex_unlock(&p->mu);
  if (!keep) {
    kiln__free(f->block);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    kiln__free(f);
  }
  fpool_unref(p);
}

void kiln__future_unref(kiln_future *f) {
  if (f && atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1) kiln__future_free(f);
}

/* The elements of output `o` that belong to a request: all of them, or its rows of a batch. */
static void out_rows(const kiln_tensor *o, int64_t rows, int64_t row0, bool batched,
                     size_t *first, size_t *count) {
  size_t n = kiln_tensor_count(o);
  size_t per_row = batched && o->dims[0] > 0 ? n / (size_t)o->dims[0] : 0;
  *first = batched ? per_row * (size_t)row0 : 0;
  *count = batched ? per_row * (size_t)rows : n;
}

/* Stores the outcome; on success copies rows [row0, row0 + f->rows) of a batch's outputs (all of
   them when `batched` is false) into one block the future owns. */
static void set_result(kiln_future *f, kiln_status st, const kiln_error *err,
                       const kiln_tensor *outs, size_t n_outs, int64_t row0, bool batched) {
  f->status = st;
  if (st != KILN_OK) {
    if (err && err->message[0]) f->err = *err;
    else kiln__fail(&f->err, st, "%s", kiln_status_str(st));
    f->err.status = st;
    return;
  }
  size_t head = (n_outs * sizeof(kiln_tensor) + 63) & ~(size_t)63, total = head;
  for (size_t i = 0; i < n_outs; i++) {
    size_t es = kiln_dtype_size(outs[i].dtype);
    if ((es == 0 && outs[i].dtype != KILN_DTYPE_STRING) || outs[i].dtype >= KILN_DTYPE_COUNT) {
      f->status = kiln__fail(&f->err, KILN_UNSUPPORTED,
                             "output %zu is %s: the runtime returns only tensors of elements", i,
                             kiln_dtype_name(outs[i].dtype));
      return;
    }
    size_t first, count;
    out_rows(&outs[i], f->rows, row0, batched, &first, &count);
    size_t nb = count * (es ? es : sizeof(char *));
    if (!es) /* strings: the pointers, then their bytes */
      for (size_t k = 0; k < count; k++) nb += strlen(((char *const *)outs[i].data)[first + k]) + 1;
    total += (nb + 63) & ~(size_t)63;
  }
  if (f->block_cap < total) { /* pooled futures keep their block: a warm path allocates nothing */
    kiln__free(f->block);
    f->block_cap = 0;
    f->block = kiln__malloc(total);
    if (!f->block) {
      f->status = kiln__fail(&f->err, KILN_NO_MEMORY, "out of memory copying outputs");
      return;
    }
    f->block_cap = total;
  }
  uint8_t *block = f->block;
  kiln_tensor *t = (kiln_tensor *)block;
  size_t at = head;
  for (size_t i = 0; i < n_outs; i++) {
    t[i] = outs[i];
    size_t es = kiln_dtype_size(outs[i].dtype), first, count;
    out_rows(&outs[i], f->rows, row0, batched, &first, &count);
    if (batched) t[i].dims[0] = f->rows;
    t[i].data = block + at;
    size_t nb;
    if (es) {
      nb = count * es;
      if (nb) memcpy(t[i].data, (const uint8_t *)outs[i].data + first * es, nb);
    } else { /* deep copy, so the strings outlive the session's next run */
      char **dst = t[i].data;
      char *bytes = (char *)(dst + count);
      for (size_t k = 0; k < count; k++) {
        const char *src = ((char *const *)outs[i].data)[first + k];
        size_t len = strlen(src) + 1;
        memcpy(bytes, src, len);
        dst[k] = bytes;
        bytes += len;
      }
      nb = (size_t)(bytes - (char *)t[i].data);
    }
    at += (nb + 63) & ~(size_t)63;
  }
  f->outs = t;
  f->n_outs = n_outs;
  f->err.status = KILN_OK;
  f->err.message[0] = 0;
}

static void publish(kiln_future *f) { atomic_store_explicit(&f->has_result, true, memory_order_release); }

void kiln__future_reject(kiln_future *f, kiln_status st, const kiln_error *err) {
  set_result(f, st, err, NULL, 0, 0, false);
  publish(f);
  atomic_store_explicit(&f->done, true, memory_order_release);
}

/* What a run tells the backend breakers (kiln_runtime_opts): nothing (stopped between nodes,
   failed before the first node, never ran), a success of every backend the model uses, or a
   failure of the backend of the node that failed. */
enum { BK_NONE, BK_OK, BK_FAILED };
typedef struct bk_outcome {
  int kind;
  size_t use; /* BK_FAILED: index into the model's uses */
} bk_outcome;

static const bk_outcome bk_none = {BK_NONE, 0};

/* Probes admitted for `f` that will not be judged. */
static void forget_probes(kiln_future *f) {
  kiln_runtime_model *m = f->m;
  if (f->probe) kiln__breaker_forget_probe(&m->breaker);
  for (size_t u = 0; u < m->n_uses; u++)
    if (f->bprobe >> u & 1) kiln__breaker_forget_probe(&m->rt->backends[m->use_slot[u]].breaker);
  f->probe = false;
  f->bprobe = 0;
}

static void record_backends(kiln_future *f, const bk_outcome *bo, int64_t now) {
  kiln_runtime_model *m = f->m;
  for (size_t u = 0; u < m->n_uses; u++) {
    kiln__breaker *b = &m->rt->backends[m->use_slot[u]].breaker;
    bool probe = f->bprobe >> u & 1;
    if (bo->kind == BK_OK) kiln__breaker_record(b, probe, false, 0, now);
    else if (bo->kind == BK_FAILED && bo->use == u) kiln__breaker_record(b, probe, true, 0, now);
    else if (probe) kiln__breaker_forget_probe(b);
  }
  f->bprobe = 0;
}

static void complete(kiln_future *f, bool ran, int64_t compute_ns, const bk_outcome *bo) {
  publish(f);
  kiln_runtime_model *m = f->m;
  kiln_runtime *rt = m->rt;
  kiln__prio_counters *pc = &m->pc[f->prio];
  switch (f->status) {
    case KILN_OK: kiln__count(&pc->ok, 1); break;
    case KILN_CANCELLED: kiln__count(&pc->cancelled, 1); break;
    case KILN_DEADLINE_EXCEEDED: kiln__count(&pc->deadline, 1); break;
    default: kiln__count(&pc->failed, 1);
  }
  if (ran) {
    uint64_t us = (uint64_t)(compute_ns / 1000);
    kiln__count(&pc->compute_us, us);
    kiln__atomic_max(&pc->compute_us_max, us);
    bool failed = f->status != KILN_OK && f->status != KILN_CANCELLED;
    int64_t now = kiln__now_ns();
    kiln__breaker_record(&m->breaker, f->probe, failed, compute_ns, now);
    f->probe = false;
    record_backends(f, bo, now);
  } else {
    forget_probes(f);
  }
  if (f->stream) kiln__stream_item_done(f);
  else if (f->req.on_complete) f->req.on_complete(f, f->req.user);
  pthread_mutex_lock(&f->mu);
  atomic_store_explicit(&f->done, true, memory_order_release);
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
  /* Before the in-flight count drops, so kiln_runtime_free never races a model being freed. */
  model_unref(m);
  pthread_mutex_lock(&rt->mu);
  if (--rt->inflight == 0) pthread_cond_broadcast(&rt->idle_cv);
  pthread_mutex_unlock(&rt->mu);
  kiln__future_unref(f);
}

static void count_queue_time(kiln_future *f, int64_t now) {
  uint64_t q = (uint64_t)((now - f->t_submit) / 1000);
  kiln__count(&f->m->pc[f->prio].queue_us, q);
  kiln__atomic_max(&f->m->pc[f->prio].queue_us_max, q);
}

/* A request that left the queue without running; its queue time is counted unless it was. */
static void finish_unrun(kiln_future *f, kiln_status st, const char *why, bool queue_counted) {
  kiln_error e;
  kiln__fail(&e, st, "%s", why);
  if (!queue_counted) count_queue_time(f, kiln__now_ns());
  set_result(f, st, &e, NULL, 0, 0, false);
  complete(f, false, 0, &bk_none);
}

/* ---- submit ------------------------------------------------------------------------------- */

kiln_status kiln__submit(kiln_runtime_model *m, kiln_future *f, kiln_error *err) {
  kiln_runtime *rt = m->rt;
  const kiln_request *r = &f->req;
  if ((unsigned)r->priority >= KILN_PRIORITY_COUNT)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "priority %d is not valid", (int)r->priority);
  if (r->n_inputs && (!r->names || !r->inputs))
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "request inputs or names are NULL");
  kiln__prio_counters *pc = &m->pc[f->prio];
  f->t_submit = kiln__now_ns();
  int64_t timeout = r->timeout_us          ? r->timeout_us
                    : r->deadline_ns > 0 ? -1 /* the caller chose a deadline: no default */
                                         : rt->opts.default_timeout_us[f->prio];
  f->t_deadline = timeout > 0 ? f->t_submit + timeout * 1000 : 0;
  if (r->deadline_ns > 0 && (!f->t_deadline || r->deadline_ns < f->t_deadline))
    f->t_deadline = r->deadline_ns;
  f->rows = 0;
  if (m->max_batch > 1 && r->n_inputs && r->inputs[0].rank >= 1 && r->inputs[0].dims[0] > 0 &&
      (size_t)r->inputs[0].dims[0] <= m->max_batch)
    f->rows = r->inputs[0].dims[0];
  int64_t retry_ns;
  if (!kiln__breaker_admit(&m->breaker, f->t_submit, &f->probe, &retry_ns)) {
    kiln__count(&pc->rejected, 1);
    return kiln__fail(err, KILN_UNAVAILABLE, "circuit breaker open; retry after %lld us",
                      (long long)(retry_ns / 1000));
  }
  for (size_t u = 0; u < m->n_uses; u++) {
    kiln__backend_slot *bs = &rt->backends[m->use_slot[u]];
    bool probe;
    if (!kiln__breaker_admit(&bs->breaker, f->t_submit, &probe, &retry_ns)) {
      forget_probes(f);
      kiln__count(&pc->rejected, 1);
      kiln__count(&bs->rejected, 1);
      return kiln__fail(err, KILN_UNAVAILABLE,
                        "circuit breaker of backend '%s' open; retry after %lld us", bs->name,
                        (long long)(retry_ns / 1000));
    }
    if (probe) f->bprobe |= (uint8_t)(1u << u);
  }
  kiln_status st = KILN_OK;
  pthread_mutex_lock(&rt->mu);
  size_t limit = rt->opts.queue_limit[f->prio], mlimit = m->queue_limit[f->prio];
  if (rt->stopping) {
    st = kiln__fail(err, KILN_UNAVAILABLE, "the runtime is shutting down");
  } else if (m->unloaded) {
    st = kiln__fail(err, KILN_UNAVAILABLE, "the model is unloaded");
  } else if (limit && rt->depth[f->prio] >= limit) {
    st = kiln__fail(err, KILN_RESOURCE_EXHAUSTED, "the priority %d queue is full (%zu)", f->prio,
                    limit);
  } else if (mlimit && atomic_load_explicit(&pc->depth, memory_order_relaxed) >= mlimit) {
    st = kiln__fail(err, KILN_RESOURCE_EXHAUSTED,
                    "the model's priority %d queue is full (%zu)", f->prio, mlimit);
  } else if (f->t_deadline && rt->heap_n == rt->heap_cap) {
    size_t cap = rt->heap_cap ? rt->heap_cap * 2 : 64;
    kiln_future **h = kiln__realloc(rt->heap, cap * sizeof *h);
    if (!h) st = kiln__fail(err, KILN_NO_MEMORY, "out of memory queueing a request");
    else {
      rt->heap = h;
      rt->heap_cap = cap;
    }
  }
  if (st != KILN_OK) {
    pthread_mutex_unlock(&rt->mu);
    forget_probes(f);
    if (st != KILN_NO_MEMORY) kiln__count(&pc->rejected, 1);
    return st;
  }
  int l = f->prio;
  f->state = KILN__REQ_QUEUED;
  f->prev = rt->tail[l];
  f->next = NULL;
  if (rt->tail[l]) rt->tail[l]->next = f;
  else rt->head[l] = f;
  rt->tail[l] = f;
  rt->depth[l]++;
  m->queued_rows += f->rows;
  rt->inflight++;
  model_ref(m); /* the request's, dropped when it completes */
  atomic_fetch_add_explicit(&pc->depth, 1, memory_order_relaxed);
  kiln__count(&pc->submitted, 1);
  if (f->t_deadline) {
    rt->heap[rt->heap_n++] = f;
    heap_up(rt, rt->heap_n - 1);
    if (rt->heap[0] == f) pthread_cond_signal(&rt->timer_cv);
  }
  /* A worker waiting out a batch delay must see new rows, so batching models wake them all. */
  if (m->max_batch > 1) pthread_cond_broadcast(&rt->work_cv);
  else pthread_cond_signal(&rt->work_cv);
  pthread_mutex_unlock(&rt->mu);
  return KILN_OK;
}

kiln_status kiln_runtime_submit(kiln_runtime_model *m, const kiln_request *req,
                                kiln_future **out, kiln_error *err) {
  if (out) *out = NULL;
  if (!m || !req) return kiln__fail(err, KILN_INVALID_ARGUMENT, "NULL model or request");
  kiln_request r = kiln_request_default();
  kiln_status st = copy_opts(&r, sizeof r, req, "kiln_request", err);
  if (st != KILN_OK) return st;
  kiln_future *f = kiln__future_new(m, &r);
  if (!f) return kiln__fail(err, KILN_NO_MEMORY, "out of memory submitting a request");
  if (out) atomic_store_explicit(&f->refs, 2, memory_order_relaxed);
  st = kiln__submit(m, f, err);
  if (st != KILN_OK) {
    kiln__future_free(f);
    return st;
  }
  if (out) *out = f;
  return KILN_OK;
}

kiln_status kiln_runtime_run(kiln_runtime_model *m, const kiln_request *req, kiln_future **out,
                             kiln_error *err) {
  *out = NULL;
  kiln_future *f;
  kiln_status st = kiln_runtime_submit(m, req, &f, err);
  if (st != KILN_OK) return st;
  kiln_future_wait(f, -1);
  *out = f;
  return kiln_future_status(f, err);
}

/* ---- futures ------------------------------------------------------------------------------ */

bool kiln_future_done(const kiln_future *f) {
  return atomic_load_explicit(&f->done, memory_order_acquire);
}

bool kiln_future_wait(kiln_future *f, int64_t timeout_us) {
  if (kiln_future_done(f)) return true;
  int64_t until = timeout_us < 0 ? 0 : kiln__now_ns() + timeout_us * 1000;
  pthread_mutex_lock(&f->mu);
  while (!atomic_load_explicit(&f->done, memory_order_relaxed)) {
    if (until && kiln__now_ns() >= until) break;
    cond_wait_until(&f->cv, &f->mu, until);
  }
  bool done = atomic_load_explicit(&f->done, memory_order_relaxed);
  pthread_mutex_unlock(&f->mu);
  return done;
}

/* The result fields are written before `done` (release) and read after it (acquire); inside the
   completion callback the completing thread reads its own writes. */
kiln_status kiln_future_status(const kiln_future *f, kiln_error *err) {
  if (!atomic_load_explicit(&f->has_result, memory_order_acquire))
    return kiln__fail(err, KILN_UNAVAILABLE, "the request has not completed");
  if (err) *err = f->err;
  return f->status;
}

size_t kiln_future_output_count(const kiln_future *f) {
  return atomic_load_explicit(&f->has_result, memory_order_acquire) ? f->n_outs : 0;
}

kiln_status kiln_future_output(const kiln_future *f, size_t i, kiln_tensor *out) {
  if (i >= kiln_future_output_count(f)) return KILN_INVALID_ARGUMENT;
  *out = f->outs[i];
  return KILN_OK;
}

static kiln_status set_stop(kiln_future *f, kiln_status st) {
  int expect = 0;
  if (atomic_compare_exchange_strong_explicit(&f->stop, &expect, (int)st, memory_order_relaxed,
                                              memory_order_relaxed))
    return st;
  return (kiln_status)expect;
}

void kiln_future_cancel(kiln_future *f) {
  if (!f || kiln_future_done(f)) return;
  kiln_runtime *rt = f->rt; /* f->m may be freed by the time a completed future is cancelled */
  pthread_mutex_lock(&rt->mu);
  if (f->state == KILN__REQ_QUEUED) {
    q_remove(rt, f);
    f->state = KILN__REQ_DONE;
    pthread_mutex_unlock(&rt->mu);
    finish_unrun(f, KILN_CANCELLED, "cancelled while queued", false);
    return;
  }
  if (f->state == KILN__REQ_RUNNING) set_stop(f, KILN_CANCELLED);
  pthread_mutex_unlock(&rt->mu);
}

void kiln_future_release(kiln_future *f) { kiln__future_unref(f); }

/* ---- contexts ----------------------------------------------------------------------------- */

static void ctx_free(kiln__ctx *c, size_t n_inputs) {
  if (!c) return;
  kiln_session_free(c->s);
  for (size_t i = 0; c->stage_buf && i < n_inputs; i++) kiln__aligned_free(c->stage_buf[i]);
  kiln__free(c->stage_buf);
  kiln__free(c->stage_cap);
  kiln__free(c->staged);
  kiln__free(c->outs);
  kiln__free(c);
}

static kiln_status ctx_create(kiln_runtime_model *m, kiln__ctx **out, kiln_error *err) {
  kiln__ctx *c = kiln__calloc(1, sizeof *c);
  size_t n_out = kiln_model_output_count(m->model);
  if (c) {
    c->staged = kiln__calloc(m->n_inputs + 1, sizeof *c->staged);
    c->stage_buf = kiln__calloc(m->n_inputs + 1, sizeof *c->stage_buf);
    c->stage_cap = kiln__calloc(m->n_inputs + 1, sizeof *c->stage_cap);
    c->outs = kiln__calloc(n_out + 1, sizeof *c->outs);
  }
  if (!c || !c->staged || !c->stage_buf || !c->stage_cap || !c->outs) {
    ctx_free(c, m->n_inputs);
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory creating a context");
  }
  kiln_status st = kiln_session_create(m->model, &c->s, err);
  if (st != KILN_OK) {
    ctx_free(c, m->n_inputs);
    return st;
  }
  *out = c;
  return KILN_OK;
}

static kiln_status ctx_acquire(kiln_runtime_model *m, kiln__ctx **out, kiln_error *err) {
  bool waited = false;
  pthread_mutex_lock(&m->pool_mu);
  for (;;) {
    if (m->free_ctx) {
      *out = m->free_ctx;
      m->free_ctx = (*out)->next_free;
      if (!waited) kiln__count(&m->ctx_hits, 1);
      pthread_mutex_unlock(&m->pool_mu);
      return KILN_OK;
    }
    if (m->n_ctx < m->max_ctx) {
      m->n_ctx++;
      pthread_mutex_unlock(&m->pool_mu);
      kiln__count(&m->ctx_misses, 1);
      kiln_status st = ctx_create(m, out, err);
      pthread_mutex_lock(&m->pool_mu);
      if (st != KILN_OK) {
        m->n_ctx--; /* give the slot back */
        pthread_cond_signal(&m->pool_cv);
      } else {
        m->ctxs[m->n_ready++] = *out;
      }
      pthread_mutex_unlock(&m->pool_mu);
      return st;
    }
    if (!waited) kiln__count(&m->ctx_waits, 1);
    waited = true;
    pthread_cond_wait(&m->pool_cv, &m->pool_mu);
  }
}

static void ctx_release(kiln_runtime_model *m, kiln__ctx *c) {
  pthread_mutex_lock(&m->pool_mu);
  c->next_free = m->free_ctx;
  m->free_ctx = c;
  pthread_cond_signal(&m->pool_cv);
  pthread_mutex_unlock(&m->pool_mu);
}

/* ---- workers ------------------------------------------------------------------------------ */

/* Same input names, dtypes and shapes but the first dimension: rows can be stacked. */
static bool compatible(const kiln_future *a, const kiln_future *b) {
  if (a->req.n_inputs != b->req.n_inputs) return false;
  for (size_t k = 0; k < a->req.n_inputs; k++) {
    const kiln_tensor *x = &a->req.inputs[k], *y = &b->req.inputs[k];
    if (!a->req.names[k] || !b->req.names[k] || strcmp(a->req.names[k], b->req.names[k]) ||
        x->dtype != y->dtype || x->rank != y->rank || x->rank < 1 || x->dims[0] != a->rows ||
        y->dims[0] != b->rows || kiln_dtype_size(x->dtype) == 0 ||
        x->dtype >= KILN_DTYPE_COUNT)
      return false;
    for (int d = 1; d < x->rank; d++)
      if (x->dims[d] != y->dims[d]) return false;
  }
  return true;
}

/* The next request to start, or NULL. Levels are visited by effective priority (aging); a
   request of a batching model whose batch is neither full nor past its delay is passed over (with
   the rest of its model), and `*wake_at` says when the first such batch becomes due. */
static kiln_future *pick(kiln_runtime *rt, int64_t now, int64_t *wake_at) {
  int order[KILN_PRIORITY_COUNT];
  int64_t eff[KILN_PRIORITY_COUNT];
  int64_t aging = rt->opts.aging_us * 1000;
  for (int l = 0; l < KILN_PRIORITY_COUNT; l++) {
    order[l] = l;
    eff[l] = l;
    if (aging > 0 && rt->head[l]) {
      int64_t up = (now - rt->head[l]->t_submit) / aging;
      eff[l] = up >= l ? 0 : l - up;
    }
  }
  for (int i = 1; i < KILN_PRIORITY_COUNT; i++) /* stable: equal levels keep the higher first */
    for (int j = i; j > 0 && eff[order[j]] < eff[order[j - 1]]; j--) {
      int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  uint64_t epoch = ++rt->pick_epoch;
  *wake_at = 0;
  for (int i = 0; i < KILN_PRIORITY_COUNT; i++) {
    for (kiln_future *f = rt->head[order[i]]; f; f = f->next) {
      kiln_runtime_model *m = f->m;
      if (f->rows > 0) {
        if (m->pick_mark == epoch) continue;
        int64_t due = f->t_submit + m->delay_ns;
        if (m->queued_rows < (int64_t)m->max_batch && now < due && !rt->stopping) {
          m->pick_mark = epoch;
          if (!*wake_at || due < *wake_at) *wake_at = due;
          continue;
        }
      }
      return f;
    }
  }
  return NULL;
}

/* Takes `f` and, when its model batches, compatible queued requests (higher priority first) up
   to max_batch rows. */
static size_t take(kiln_runtime *rt, kiln_future *f, kiln_future **batch) {
  q_remove(rt, f);
  f->state = KILN__REQ_RUNNING;
  batch[0] = f;
  size_t n = 1;
  if (f->rows <= 0) return n;
  kiln_runtime_model *m = f->m;
  int64_t rows = f->rows;
  for (int l = 0; l < KILN_PRIORITY_COUNT && rows < (int64_t)m->max_batch; l++) {
    kiln_future *g = rt->head[l];
    while (g && rows < (int64_t)m->max_batch && n < MAX_BATCH_REQS) {
      kiln_future *next = g->next;
      if (g->m == m && g->rows > 0 && rows + g->rows <= (int64_t)m->max_batch &&
          compatible(f, g)) {
        q_remove(rt, g);
        g->state = KILN__REQ_RUNNING;
        batch[n++] = g;
        rows += g->rows;
      }
      g = next;
    }
  }
  return n;
}

typedef struct batch_run {
  kiln_runtime *rt;
  kiln_future **f;
  size_t n;
  size_t next_node; /* calls so far: the node about to run is next_node - 1 */
  bool stopped;     /* the run was stopped here, not failed by a node */
} batch_run;

/* Between nodes: a member is stopped by its cancel, its deadline, its own hook or shutdown; the
   run stops when no member is left to serve. */
static kiln_status batch_interrupt(void *user) {
  batch_run *b = user;
  b->next_node++;
  int64_t now = kiln__now_ns();
  bool stopping = atomic_load_explicit(&b->rt->stopping, memory_order_relaxed);
  size_t live = 0;
  for (size_t i = 0; i < b->n; i++) {
    kiln_future *f = b->f[i];
    kiln_status s = (kiln_status)atomic_load_explicit(&f->stop, memory_order_relaxed);
    if (!s && f->t_deadline && now >= f->t_deadline) s = set_stop(f, KILN_DEADLINE_EXCEEDED);
    if (!s && stopping) s = set_stop(f, KILN_CANCELLED);
    if (!s && f->req.interrupt) {
      kiln_status h = f->req.interrupt(f->req.user);
      if (h != KILN_OK) s = set_stop(f, h);
    }
    live += !s;
  }
  if (live) return KILN_OK;
  b->stopped = true;
  return (kiln_status)atomic_load_explicit(&b->f[0]->stop, memory_order_relaxed);
}

/* Members stopped after `take` but before the run starts (cancelled, past their deadline,
   shutdown) leave the batch here and complete with their own status: they neither run nor take
   rows of it. The others keep their order. */
static size_t prune(kiln_runtime *rt, kiln_future **batch, size_t n, bool queue_counted) {
  kiln_runtime_model *m = batch[0]->m;
  int64_t now = kiln__now_ns();
  bool stopping = atomic_load_explicit(&rt->stopping, memory_order_relaxed);
  size_t live = 0, taken = n;
  for (size_t i = 0; i < n; i++) {
    kiln_future *f = batch[i];
    kiln_status s = (kiln_status)atomic_load_explicit(&f->stop, memory_order_relaxed);
    if (!s && f->t_deadline && now >= f->t_deadline) s = set_stop(f, KILN_DEADLINE_EXCEEDED);
    if (!s && stopping) s = set_stop(f, KILN_CANCELLED);
    if (!s) {
      if (!queue_counted) count_queue_time(f, now);
      batch[live++] = f;
      continue;
    }
    if (taken > 1) kiln__count(&m->batch_dropped, 1);
    finish_unrun(f, s,
                 s == KILN_DEADLINE_EXCEEDED ? "deadline exceeded before the run started"
                 : s == KILN_CANCELLED       ? "cancelled before the run started"
                                             : "stopped before the run started",
                 queue_counted);
  }
  return live;
}

static void run_batch(kiln_runtime *rt, kiln_future **batch, size_t n) {
  kiln_runtime_model *m = batch[0]->m;
  n = prune(rt, batch, n, false);
  if (!n) return;
  kiln_error err = {0};
  kiln__ctx *c = NULL;
  kiln_status st = ctx_acquire(m, &c, &err);
  if (st != KILN_OK) {
    for (size_t i = 0; i < n; i++) {
      set_result(batch[i], st, &err, NULL, 0, 0, false);
      complete(batch[i], false, 0, &bk_none);
    }
    return;
  }
  /* Waiting for the context may have taken long: look again before staging. */
  n = prune(rt, batch, n, true);
  if (!n) {
    ctx_release(m, c);
    return;
  }
  const kiln_request *r0 = &batch[0]->req;
  const kiln_tensor *inputs = r0->inputs;
  int64_t total = 0;
  if (n > 1) {
    for (size_t i = 0; i < n; i++) total += batch[i]->rows;
    for (size_t k = 0; k < r0->n_inputs && st == KILN_OK; k++) {
      kiln_tensor t = r0->inputs[k];
      size_t row = kiln_tensor_nbytes(&t) / (size_t)t.dims[0];
      size_t need = row * (size_t)total;
      if (c->stage_cap[k] < need) {
        kiln__aligned_free(c->stage_buf[k]);
        c->stage_cap[k] = 0;
        c->stage_buf[k] = kiln__aligned_alloc(need);
        if (!c->stage_buf[k]) {
          st = kiln__fail(&err, KILN_NO_MEMORY, "out of memory staging a batch");
          break;
        }
        c->stage_cap[k] = need;
      }
      uint8_t *dst = c->stage_buf[k];
      for (size_t i = 0; i < n; i++) {
        size_t nb = row * (size_t)batch[i]->rows;
        memcpy(dst, batch[i]->req.inputs[k].data, nb);
        dst += nb;
      }
      t.dims[0] = total;
      t.data = c->stage_buf[k];
      c->staged[k] = t;
    }
    inputs = c->staged;
    kiln__count(&m->batched_runs, 1);
    kiln__count(&m->batch_requests, n);
    kiln__atomic_max(&m->batch_rows_max, (uint64_t)total);
  }
  kiln__count(&m->runs, 1);
  batch_run b = {.rt = rt, .f = batch, .n = n};
  kiln_run_opts o = kiln_run_opts_default();
  o.interrupt = batch_interrupt;
  o.user = &b;
  int64_t t0 = kiln__now_ns();
  if (st == KILN_OK) st = kiln_session_run_ex(c->s, r0->names, inputs, r0->n_inputs, &o, &err);
  int64_t dt = kiln__now_ns() - t0;
  bk_outcome bo = bk_none;
  if (st == KILN_OK) bo.kind = BK_OK;
  else if (!b.stopped && b.next_node > 0 && b.next_node - 1 < m->n_nodes &&
           m->node_use[b.next_node - 1] < m->n_uses)
    bo = (bk_outcome){BK_FAILED, m->node_use[b.next_node - 1]}; /* that node's backend failed */
  size_t n_out = kiln_model_output_count(m->model);
  for (size_t i = 0; st == KILN_OK && i < n_out; i++) {
    kiln_session_output(c->s, i, &c->outs[i]);
    if (n > 1 && (c->outs[i].rank < 1 || c->outs[i].dims[0] != total))
      st = kiln__fail(&err, KILN_INTERNAL, "output %zu does not keep the batch dimension", i);
  }
  int64_t row0 = 0;
  for (size_t i = 0; i < n; i++) {
    kiln_future *f = batch[i];
    kiln_status s = st;
    kiln_error e = err;
    /* A member stopped on its own (cancel, deadline) takes that outcome even when the run went
       on for the others. */
    kiln_status stop = (kiln_status)atomic_load_explicit(&f->stop, memory_order_relaxed);
    if (stop && (st == KILN_OK || st == KILN_CANCELLED || st == KILN_DEADLINE_EXCEEDED)) {
      if (stop != st) kiln__fail(&e, stop, "%s while running", kiln_status_str(stop));
      s = stop;
    }
    set_result(f, s, &e, c->outs, n_out, row0, n > 1);
    row0 += f->rows;
  }
  ctx_release(m, c);
  for (size_t i = 0; i < n; i++) complete(batch[i], true, dt, &bo);
}

/* The worker's own reference keeps an unloaded model alive while it still touches the model
   after its requests completed (pruned ones complete before the context goes back). */
static void execute(kiln_runtime *rt, kiln_future **batch, size_t n) {
  kiln_runtime_model *m = batch[0]->m;
  model_ref(m);
  run_batch(rt, batch, n);
  model_unref(m);
}

static void *worker_main(void *arg) {
  kiln_runtime *rt = arg;
  kiln_future *batch[MAX_BATCH_REQS];
  pthread_mutex_lock(&rt->mu);
  while (!rt->stopping) {
    int64_t wake_at;
    kiln_future *f = pick(rt, kiln__now_ns(), &wake_at);
    if (!f) {
      cond_wait_until(&rt->work_cv, &rt->mu, wake_at);
      continue;
    }
    size_t n = take(rt, f, batch);
    pthread_mutex_unlock(&rt->mu);
    execute(rt, batch, n);
    pthread_mutex_lock(&rt->mu);
  }
  pthread_mutex_unlock(&rt->mu);
  return NULL;
}

/* Completes queued requests at their deadline even when every worker is busy. */
static void *timer_main(void *arg) {
  kiln_runtime *rt = arg;
  pthread_mutex_lock(&rt->mu);
  while (!rt->stopping) {
    if (!rt->heap_n) {
      pthread_cond_wait(&rt->timer_cv, &rt->mu);
      continue;
    }
    int64_t now = kiln__now_ns();
    kiln_future *f = rt->heap[0];
    if (now < f->t_deadline) {
      cond_wait_until(&rt->timer_cv, &rt->mu, f->t_deadline);
      continue;
    }
    q_remove(rt, f);
    f->state = KILN__REQ_DONE;
    pthread_mutex_unlock(&rt->mu);
    finish_unrun(f, KILN_DEADLINE_EXCEEDED, "deadline exceeded while queued", false);
    pthread_mutex_lock(&rt->mu);
  }
  pthread_mutex_unlock(&rt->mu);
  return NULL;
}

/* ---- runtime ------------------------------------------------------------------------------ */

static void stop_threads(kiln_runtime *rt) {
  pthread_mutex_lock(&rt->mu);
  rt->stopping = true;
  pthread_cond_broadcast(&rt->work_cv);
  pthread_cond_broadcast(&rt->timer_cv);
  pthread_mutex_unlock(&rt->mu);
  for (size_t i = 0; i < rt->n_threads; i++) pthread_join(rt->threads[i], NULL);
  if (rt->timer_started) pthread_join(rt->timer, NULL);
  rt->n_threads = 0;
  rt->timer_started = false;
}

kiln_status kiln_runtime_create(const kiln_runtime_opts *opts, kiln_runtime **out,
                                kiln_error *err) {
  *out = NULL;
  kiln_runtime_opts o = kiln_runtime_opts_default();
  kiln_status st = copy_opts(&o, sizeof o, opts, "kiln_runtime_opts", err);
  if (st != KILN_OK) return st;
  if (o.workers < 0 || o.intra_threads < 0 || o.aging_us < 0)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "workers, intra_threads and aging_us must be >= 0");
  int nc = cores(), w = o.workers, t = o.intra_threads;
  if (!w && !t) t = 1;
  if (!w) w = KILN__MAX(1, nc / t);
  if (!t) t = KILN__MAX(1, nc / w);
  if ((int64_t)w * t > nc && !o.oversubscribe)
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "%d workers x %d intra-op threads oversubscribe %d cores "
                      "(set oversubscribe to allow it)", w, t, nc);
  kiln_runtime *rt = kiln__calloc(1, sizeof *rt);
  if (!rt) return kiln__fail(err, KILN_NO_MEMORY, "out of memory creating a runtime");
  rt->opts = o;
  rt->workers = w;
  rt->intra = t;
  pthread_mutex_init(&rt->mu, NULL);
  cond_init(&rt->work_cv);
  cond_init(&rt->timer_cv);
  cond_init(&rt->idle_cv);
  rt->threads = kiln__calloc((size_t)w, sizeof *rt->threads);
  rt->fpool = kiln__calloc(1, sizeof *rt->fpool);
  rt->n_backends = kiln__backend_count();
  rt->backends = kiln__calloc(rt->n_backends + 1, sizeof *rt->backends);
  if (!rt->threads || !rt->fpool || !rt->backends) {
    kiln_runtime_free(rt);
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory creating a runtime");
  }
  atomic_init(&rt->fpool->refs, 1);
  pthread_mutex_init(&rt->fpool->mu, NULL);
  kiln__breaker_cfg bc = {.window = o.backend_breaker_window,
                          .min_calls = o.backend_breaker_min_calls,
                          .probes = o.backend_breaker_probes,
                          .failure_rate = o.backend_breaker_failure_rate,
                          .cooldown_us = o.backend_breaker_cooldown_us};
  for (size_t i = 0; i < rt->n_backends; i++) {
    rt->backends[i].name = kiln__backend_at(i)->name;
    st = kiln__breaker_init(&rt->backends[i].breaker, &bc, err);
    if (st != KILN_OK) {
      kiln_runtime_free(rt);
      return st;
    }
  }
  for (int i = 0; i < w; i++) {
    if (pthread_create(&rt->threads[i], NULL, worker_main, rt) != 0) {
      kiln_runtime_free(rt);
      return kiln__fail(err, KILN_UNAVAILABLE, "cannot start a worker thread");
    }
    rt->n_threads++;
  }
  if (pthread_create(&rt->timer, NULL, timer_main, rt) != 0) {
    kiln_runtime_free(rt);
    return kiln__fail(err, KILN_UNAVAILABLE, "cannot start the timer thread");
  }
  rt->timer_started = true;
  *out = rt;
  return KILN_OK;
}

static void model_free(kiln_runtime_model *m) {
  for (size_t i = 0; i < m->n_ready; i++) ctx_free(m->ctxs[i], m->n_inputs);
  kiln__free(m->ctxs);
  kiln__breaker_destroy(&m->breaker);
  pthread_mutex_destroy(&m->pool_mu);
  pthread_cond_destroy(&m->pool_cv);
  if (m->owned) kiln_model_free(m->model);
  kiln__free(m->node_use);
  kiln__free(m);
}

void kiln_runtime_free(kiln_runtime *rt) {
  if (!rt) return;
  /* Take every queued request out first, so none starts; running ones see `stopping`. */
  pthread_mutex_lock(&rt->mu);
  rt->stopping = true;
  kiln_future *list = NULL;
  for (int l = 0; l < KILN_PRIORITY_COUNT; l++)
    while (rt->head[l]) {
      kiln_future *f = rt->head[l];
      q_remove(rt, f);
      f->state = KILN__REQ_DONE;
      f->next = list;
      list = f;
    }
  pthread_mutex_unlock(&rt->mu);
  while (list) {
    kiln_future *f = list;
    list = f->next;
    f->next = NULL;
    finish_unrun(f, KILN_CANCELLED, "cancelled by shutdown", false);
  }
  stop_threads(rt);
  pthread_mutex_lock(&rt->mu);
  while (rt->inflight) pthread_cond_wait(&rt->idle_cv, &rt->mu);
  pthread_mutex_unlock(&rt->mu);
  while (rt->models) {
    kiln_runtime_model *m = rt->models;
    rt->models = m->next;
    model_free(m);
  }
  kiln__free(rt->heap);
  kiln__free(rt->threads);
  for (size_t i = 0; rt->backends && i < rt->n_backends; i++)
    kiln__breaker_destroy(&rt->backends[i].breaker);
  kiln__free(rt->backends);
  if (rt->fpool) { /* futures the caller still holds keep the pool until released */
    pthread_mutex_lock(&rt->fpool->mu);
    rt->fpool->closed = true;
    pthread_mutex_unlock(&rt->fpool->mu);
    fpool_unref(rt->fpool);
  }
  pthread_mutex_destroy(&rt->mu);
  pthread_cond_destroy(&rt->work_cv);
  pthread_cond_destroy(&rt->timer_cv);
  pthread_cond_destroy(&rt->idle_cv);
  kiln__free(rt);
}

void kiln_runtime_threads(const kiln_runtime *rt, int *workers, int *intra_threads) {
  if (workers) *workers = rt->workers;
  if (intra_threads) *intra_threads = rt->intra;
}

/* Batching needs every input and output to lead with a symbolic (batch) dimension. */
static kiln_status check_batchable(const kiln_model *model, kiln_error *err) {
  kiln_io_info io;
  for (size_t i = 0; i < kiln_model_input_count(model); i++) {
    kiln_model_input_info(model, i, &io);
    if (io.rank < 1 || io.dims[0] >= 0)
      return kiln__fail(err, KILN_INVALID_ARGUMENT,
                        "input '%s' has no symbolic first dimension: the model cannot batch",
                        io.name);
  }
  for (size_t i = 0; i < kiln_model_output_count(model); i++) {
    kiln_model_output_info(model, i, &io);
    if (io.rank == 0 || (io.rank > 0 && io.dims[0] >= 0))
      return kiln__fail(err, KILN_INVALID_ARGUMENT,
                        "output '%s' has no symbolic first dimension: the model cannot batch",
                        io.name);
  }
  return KILN_OK;
}

/* Which runtime breaker slot each backend of the model is, and each node's. */
static kiln_status map_backends(kiln_runtime_model *m, kiln_error *err) {
  const kiln_model *km = m->model;
  size_t use_of[KILN__MAX_BACKENDS];
  for (size_t j = 0; j < km->n_backends; j++) {
    use_of[j] = KILN__MAX_USES; /* no nodes, or not compiled in: no breaker */
    if (!km->backend_nodes[j]) continue;
    for (size_t i = 0; i < m->rt->n_backends; i++)
      if (kiln__backend_at(i) == km->backends[j] && m->n_uses < KILN__MAX_USES) {
        m->use_slot[m->n_uses] = i;
        use_of[j] = m->n_uses++;
        break;
      }
  }
  m->n_nodes = (size_t)km->g->n_nodes;
  m->node_use = kiln__calloc(m->n_nodes + 1, 1);
  if (!m->node_use) return kiln__fail(err, KILN_NO_MEMORY, "out of memory loading a model");
  for (size_t i = 0; i < m->n_nodes; i++) m->node_use[i] = (uint8_t)use_of[km->node_backend[i]];
  return KILN_OK;
}

/* Loads (path) or borrows (model) a model and registers it. */
static kiln_status model_add(kiln_runtime *rt, const char *path, kiln_model *model,
                             const kiln_runtime_model_opts *opts, kiln_runtime_model **out,
                             kiln_error *err) {
  *out = NULL;
  kiln_runtime_model_opts o = kiln_runtime_model_opts_default();
  kiln_status st = copy_opts(&o, sizeof o, opts, "kiln_runtime_model_opts", err);
  if (st != KILN_OK) return st;
  if (o.max_batch_size > MAX_BATCH_REQS || o.max_queue_delay_us < 0)
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "max_batch_size must be <= %d and max_queue_delay_us >= 0", MAX_BATCH_REQS);
  kiln_runtime_model *m = kiln__calloc(1, sizeof *m);
  if (!m) return kiln__fail(err, KILN_NO_MEMORY, "out of memory loading a model");
  m->rt = rt;
  atomic_init(&m->refs, 1);
  memcpy(m->queue_limit, o.queue_limit, sizeof m->queue_limit);
  pthread_mutex_init(&m->pool_mu, NULL);
  pthread_cond_init(&m->pool_cv, NULL);
  kiln__breaker_cfg bc = {.window = o.breaker_window,
                          .min_calls = o.breaker_min_calls,
                          .probes = o.breaker_probes,
                          .failure_rate = o.breaker_failure_rate,
                          .slow_rate = o.breaker_slow_rate,
                          .slow_call_us = o.breaker_slow_call_us,
                          .cooldown_us = o.breaker_cooldown_us};
  st = kiln__breaker_init(&m->breaker, &bc, err);
  if (model) {
    m->model = model;
  } else if (st == KILN_OK) {
    kiln_model_opts mo = kiln_model_opts_default();
    mo.intra_threads = rt->intra;
    mo.backends = o.backends;
    mo.opt_level = o.opt_level;
    st = kiln_model_load(path, &mo, &m->model, err);
    m->owned = st == KILN_OK;
  }
  if (st == KILN_OK && o.max_batch_size > 1) st = check_batchable(m->model, err);
  if (st == KILN_OK) st = map_backends(m, err);
  if (st == KILN_OK) {
    m->n_inputs = kiln_model_input_count(m->model);
    m->max_batch = o.max_batch_size > 1 ? o.max_batch_size : 0;
    m->delay_ns = o.max_queue_delay_us * 1000;
    m->max_ctx = o.max_contexts ? o.max_contexts : (size_t)rt->workers;
    m->ctxs = kiln__calloc(m->max_ctx, sizeof *m->ctxs);
    if (!m->ctxs) st = kiln__fail(err, KILN_NO_MEMORY, "out of memory loading a model");
  }
  if (st != KILN_OK) {
    model_free(m);
    return st;
  }
  pthread_mutex_lock(&rt->mu);
  m->next = rt->models;
  rt->models = m;
  pthread_mutex_unlock(&rt->mu);
  *out = m;
  return KILN_OK;
}

kiln_status kiln_runtime_model_load(kiln_runtime *rt, const char *path,
                                    const kiln_runtime_model_opts *opts,
                                    kiln_runtime_model **out, kiln_error *err) {
  if (!rt || !path || !out) return kiln__fail(err, KILN_INVALID_ARGUMENT, "NULL argument");
  return model_add(rt, path, NULL, opts, out, err);
}

kiln_status kiln_runtime_model_add(kiln_runtime *rt, kiln_model *model,
                                   const kiln_runtime_model_opts *opts,
                                   kiln_runtime_model **out, kiln_error *err) {
  if (!rt || !model || !out) return kiln__fail(err, KILN_INVALID_ARGUMENT, "NULL argument");
  return model_add(rt, NULL, model, opts, out, err);
}

void kiln_runtime_model_unload(kiln_runtime_model *m) {
  if (!m) return;
  kiln_runtime *rt = m->rt;
  pthread_mutex_lock(&rt->mu);
  m->unloaded = true;
  for (kiln_runtime_model **p = &rt->models; *p; p = &(*p)->next)
    if (*p == m) {
      *p = m->next;
      break;
    }
  atomic_fetch_add_explicit(&rt->draining, 1, memory_order_relaxed);
  pthread_mutex_unlock(&rt->mu);
  model_unref(m); /* the table's: frees it now when nothing is in flight */
}

size_t kiln_runtime_models_draining(const kiln_runtime *rt) {
  return rt ? atomic_load_explicit(&rt->draining, memory_order_acquire) : 0;
}

const kiln_model *kiln_runtime_model_get(const kiln_runtime_model *m) { return m->model; }

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

static void breaker_read(const kiln__breaker *cb, kiln_breaker_state *state, uint64_t *opened,
                         uint64_t *half_opened, uint64_t *closed, int64_t *retry_after_us) {
  kiln__breaker *b = (kiln__breaker *)cb; /* atomics are read, never written */
  *state = (kiln_breaker_state)LOAD(b->state);
  *opened = LOAD(b->opened);
  *half_opened = LOAD(b->half_opened);
  *closed = LOAD(b->closed);
  *retry_after_us = 0;
  if (b->on && *state == KILN_BREAKER_OPEN) {
    int64_t left = LOAD(b->open_until) - kiln__now_ns();
    *retry_after_us = left > 0 ? left / 1000 : 0;
  }
}

/* Fills a full-size copy, then gives the caller the fields its (possibly older) struct has. */
kiln_status kiln_runtime_model_stats(const kiln_runtime_model *m, kiln_runtime_stats *out) {
  if (!m || !out || out->struct_size < offsetof(kiln_runtime_stats, batch_dropped) ||
      out->struct_size > sizeof *out)
    return KILN_INVALID_ARGUMENT;
  size_t size = out->struct_size;
  kiln_runtime_stats full, *st = &full;
  kiln_runtime_model *mm = (kiln_runtime_model *)m; /* atomics are read, never written */
  memset(st, 0, sizeof *st);
  for (int l = 0; l < KILN_PRIORITY_COUNT; l++) {
    kiln__prio_counters *c = &mm->pc[l];
    kiln_runtime_prio_stats *p = &st->prio[l];
    p->queue_depth = LOAD(c->depth);
    p->submitted = LOAD(c->submitted);
    p->ok = LOAD(c->ok);
    p->cancelled = LOAD(c->cancelled);
    p->deadline_exceeded = LOAD(c->deadline);
    p->rejected = LOAD(c->rejected);
    p->failed = LOAD(c->failed);
    p->queue_us_total = LOAD(c->queue_us);
    p->queue_us_max = LOAD(c->queue_us_max);
    p->compute_us_total = LOAD(c->compute_us);
    p->compute_us_max = LOAD(c->compute_us_max);
  }
  st->runs = LOAD(mm->runs);
  st->batched_runs = LOAD(mm->batched_runs);
  st->batch_requests = LOAD(mm->batch_requests);
  st->batch_rows_max = LOAD(mm->batch_rows_max);
  st->context_hits = LOAD(mm->ctx_hits);
  st->context_misses = LOAD(mm->ctx_misses);
  st->context_waits = LOAD(mm->ctx_waits);
  st->contexts = st->context_misses;
  breaker_read(&m->breaker, &st->breaker_state, &st->breaker_opened, &st->breaker_half_opened,
               &st->breaker_closed, &st->retry_after_us);
  st->batch_dropped = LOAD(mm->batch_dropped);
  memcpy(out, st, size);
  out->struct_size = size;
  return KILN_OK;
}

size_t kiln_runtime_backend_count(const kiln_runtime *rt) { return rt ? rt->n_backends : 0; }

kiln_status kiln_runtime_backend_stats(const kiln_runtime *rt, size_t i, kiln_backend_stats *st) {
  if (!rt || !st || st->struct_size != sizeof *st || i >= rt->n_backends)
    return KILN_INVALID_ARGUMENT;
  kiln__backend_slot *bs = &rt->backends[i];
  memset(st, 0, sizeof *st);
  st->struct_size = sizeof *st;
  st->name = bs->name;
  st->breaker_on = bs->breaker.on;
  st->successes = LOAD(bs->breaker.n_ok);
  st->failures = LOAD(bs->breaker.n_failed);
  st->rejected = LOAD(bs->rejected);
  breaker_read(&bs->breaker, &st->breaker_state, &st->breaker_opened, &st->breaker_half_opened,
               &st->breaker_closed, &st->retry_after_us);
  return KILN_OK;
}
