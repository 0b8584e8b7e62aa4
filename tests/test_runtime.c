/* The async runtime (include/kiln/runtime.h) on the shipped digits CNN: priority order under
   load, queue limits, aging, cancellation (queued, running, racing completion), deadlines fired
   by the timer while the only worker is busy, batching equivalence against direct session runs,
   streams (order, mid-stream cancel), circuit-breaker transitions, the context pool, the thread
   budget and shutdown with requests in flight. Requests are held at a node boundary by a gate
   hook, so ordering tests wait on conditions, not on sleeps. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "kiln/runtime.h"

static char digits_path[1024];
static kiln_tensor test_x; /* [450, 1, 8, 8] */
static const char *in_names[] = {"input"};
static const char *ref_backends[] = {"ref", NULL};

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_us(int64_t us) {
  struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (long)(us % 1000000) * 1000};
  nanosleep(&ts, NULL);
}

/* Rows [row, row + n) of the digits test set, as a view. */
static kiln_tensor rows(int64_t row, int64_t n) {
  kiln_tensor t = test_x;
  t.dims[0] = n;
  t.data = (float *)test_x.data + row * 64;
  return t;
}

/* ---- a gate: a request's interrupt hook that blocks at a node boundary until opened -------- */

typedef struct gate {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool open;
  int entered;
} gate;

static void gate_init(gate *g) {
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);
  g->open = false;
  g->entered = 0;
}

static kiln_status gate_hook(void *user) {
  gate *g = user;
  pthread_mutex_lock(&g->mu);
  g->entered++;
  pthread_cond_broadcast(&g->cv);
  while (!g->open) pthread_cond_wait(&g->cv, &g->mu);
  pthread_mutex_unlock(&g->mu);
  return KILN_OK;
}

static void gate_wait_entered(gate *g) {
  pthread_mutex_lock(&g->mu);
  while (g->entered == 0) pthread_cond_wait(&g->cv, &g->mu);
  pthread_mutex_unlock(&g->mu);
}

static void gate_open(gate *g) {
  pthread_mutex_lock(&g->mu);
  g->open = true;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

static void gate_destroy(gate *g) {
  pthread_mutex_destroy(&g->mu);
  pthread_cond_destroy(&g->cv);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static kiln_runtime *make_rt(int workers, kiln_runtime_opts *o_in) {
  kiln_runtime_opts o = o_in ? *o_in : kiln_runtime_opts_default();
  o.workers = workers;
  o.intra_threads = 1;
  o.oversubscribe = true; /* the tests need 2 workers even on a 1-core machine */
  kiln_runtime *rt = NULL;
  kiln_error err = {0};
  kiln_status st = kiln_runtime_create(&o, &rt, &err);
  if (st != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(st, KILN_OK);
  return rt;
}

static kiln_runtime_model *load(kiln_runtime *rt, kiln_runtime_model_opts *o_in) {
  kiln_runtime_model_opts o = o_in ? *o_in : kiln_runtime_model_opts_default();
  o.backends = ref_backends;
  kiln_runtime_model *m = NULL;
  kiln_error err = {0};
  kiln_status st = kiln_runtime_model_load(rt, digits_path, &o, &m, &err);
  if (st != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(st, KILN_OK);
  return m;
}

static kiln_request req_of(const kiln_tensor *x, kiln_priority p) {
  kiln_request r = kiln_request_default();
  r.names = in_names;
  r.inputs = x;
  r.n_inputs = 1;
  r.priority = p;
  return r;
}

static kiln_runtime_stats stats_of(kiln_runtime_model *m) {
  kiln_runtime_stats st;
  st.struct_size = sizeof st;
  assert_int_equal(kiln_runtime_model_stats(m, &st), KILN_OK);
  return st;
}

/* The oracle: direct session runs on the reference backend (created in main). */
static kiln_model *oracle_model;
static kiln_session *oracle;

/* Logits of `x` run as it is; malloc'd. */
static float *direct_logits(const kiln_tensor *x) {
  kiln_error err = {0};
  assert_int_equal(kiln_session_run(oracle, in_names, x, 1, &err), KILN_OK);
  kiln_tensor y;
  assert_int_equal(kiln_session_output(oracle, 0, &y), KILN_OK);
  assert_int_equal(y.dims[0], x->dims[0]);
  float *out = malloc(kiln_tensor_nbytes(&y));
  memcpy(out, y.data, kiln_tensor_nbytes(&y));
  return out;
}

/* Logits of rows [start, start + n), each row run on its own; malloc'd. */
static float *direct_logits_per_row(int64_t start, int64_t n) {
  float *out = malloc((size_t)n * 10 * sizeof(float));
  for (int64_t i = 0; i < n; i++) {
    kiln_tensor x = rows(start + i, 1);
    float *one = direct_logits(&x);
    memcpy(out + i * 10, one, 10 * sizeof(float));
    free(one);
  }
  return out;
}

static void expect_logits(kiln_future *f, const float *want, int64_t n) {
  assert_int_equal(kiln_future_output_count(f), 1);
  kiln_tensor y;
  assert_int_equal(kiln_future_output(f, 0, &y), KILN_OK);
  assert_int_equal(y.rank, 2);
  assert_int_equal(y.dims[0], n);
  assert_int_equal(y.dims[1], 10);
  assert_memory_equal(y.data, want, (size_t)n * 10 * sizeof(float)); /* bit for bit */
}

/* ---- tests -------------------------------------------------------------------------------- */

static void sync_run_and_context_pool(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(2, NULL);
  kiln_runtime_model *m = load(rt, NULL);
  kiln_tensor x = rows(0, 450);
  float *want = direct_logits(&x);
  kiln_request r = req_of(&x, KILN_PRIORITY_NORMAL);
  for (int i = 0; i < 3; i++) {
    kiln_future *f = NULL;
    kiln_error err = {0};
    assert_int_equal(kiln_runtime_run(m, &r, &f, &err), KILN_OK);
    assert_true(kiln_future_done(f));
    expect_logits(f, want, 450);
    kiln_future_release(f);
  }
  kiln_runtime_stats st = stats_of(m);
  assert_int_equal(st.prio[KILN_PRIORITY_NORMAL].ok, 3);
  assert_int_equal(st.prio[KILN_PRIORITY_NORMAL].submitted, 3);
  assert_int_equal(st.prio[KILN_PRIORITY_NORMAL].queue_depth, 0);
  assert_int_equal(st.runs, 3);
  assert_int_equal(st.context_hits + st.context_misses, 3);
  assert_true(st.contexts >= 1 && st.contexts <= 2);
  /* A bad input fails the request, not the runtime. */
  kiln_tensor bad = rows(0, 1);
  bad.dims[2] = 7;
  r.inputs = &bad;
  kiln_future *f = NULL;
  assert_int_equal(kiln_runtime_run(m, &r, &f, NULL), KILN_INVALID_ARGUMENT);
  kiln_error err = {0};
  assert_int_equal(kiln_future_status(f, &err), KILN_INVALID_ARGUMENT);
  assert_true(strstr(err.message, "dimension") != NULL);
  kiln_future_release(f);
  assert_int_equal(stats_of(m).prio[KILN_PRIORITY_NORMAL].failed, 1);
  kiln_runtime_free(rt);
  free(want);
}

static void thread_budget(void **state) {
  (void)state;
  kiln_runtime_opts o = kiln_runtime_opts_default();
  o.workers = 64;
  o.intra_threads = 64;
  kiln_runtime *rt = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_runtime_create(&o, &rt, &err), KILN_INVALID_ARGUMENT);
  assert_null(rt);
  assert_true(strstr(err.message, "oversubscribe") != NULL);
  assert_int_equal(kiln_runtime_create(NULL, &rt, &err), KILN_OK);
  int w = 0, t = 0;
  kiln_runtime_threads(rt, &w, &t);
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  assert_true(w >= 1 && t >= 1 && (long)w * t <= (cores < 1 ? 1 : cores));
  kiln_runtime_free(rt);
  o.workers = 2;
  o.intra_threads = 0;
  assert_int_equal(kiln_runtime_create(&o, &rt, &err), KILN_OK);
  kiln_runtime_threads(rt, &w, &t);
  assert_int_equal(w, 2);
  assert_true(t >= 1);
  kiln_runtime_free(rt);
}

typedef struct order_log {
  pthread_mutex_t mu;
  int tags[64];
  int n;
} order_log;

typedef struct tagged {
  order_log *log;
  int tag;
} tagged;

static void log_done(kiln_future *f, void *user) {
  tagged *t = user;
  assert_int_equal(kiln_future_status(f, NULL), KILN_OK);
  pthread_mutex_lock(&t->log->mu);
  t->log->tags[t->log->n++] = t->tag;
  pthread_mutex_unlock(&t->log->mu);
}

/* One worker held by a gate; requests of the four levels queued in mixed order run strictly by
   level and FIFO within one. */
static void priority_order_under_load(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model *m = load(rt, NULL);
  gate g;
  gate_init(&g);
  kiln_tensor x = rows(0, 1);
  kiln_request blocker = req_of(&x, KILN_PRIORITY_LOW);
  blocker.interrupt = gate_hook;
  blocker.user = &g;
  kiln_future *fb;
  assert_int_equal(kiln_runtime_submit(m, &blocker, &fb, NULL), KILN_OK);
  gate_wait_entered(&g);
  order_log log = {.n = 0};
  pthread_mutex_init(&log.mu, NULL);
  const kiln_priority mix[] = {KILN_PRIORITY_LOW, KILN_PRIORITY_NORMAL, KILN_PRIORITY_CRITICAL,
                               KILN_PRIORITY_HIGH, KILN_PRIORITY_NORMAL, KILN_PRIORITY_LOW,
                               KILN_PRIORITY_HIGH, KILN_PRIORITY_CRITICAL, KILN_PRIORITY_LOW,
                               KILN_PRIORITY_CRITICAL, KILN_PRIORITY_NORMAL, KILN_PRIORITY_HIGH};
  enum { N = sizeof mix / sizeof mix[0] };
  tagged tags[N];
  kiln_future *fs[N];
  int seq[KILN_PRIORITY_COUNT] = {0};
  for (int i = 0; i < N; i++) {
    tags[i] = (tagged){&log, (int)mix[i] * 100 + seq[mix[i]]++};
    kiln_request r = req_of(&x, mix[i]);
    r.on_complete = log_done;
    r.user = &tags[i];
    assert_int_equal(kiln_runtime_submit(m, &r, &fs[i], NULL), KILN_OK);
  }
  kiln_runtime_stats st = stats_of(m);
  for (int l = 0; l < KILN_PRIORITY_COUNT; l++) assert_int_equal(st.prio[l].queue_depth, 3);
  gate_open(&g);
  for (int i = 0; i < N; i++) {
    assert_true(kiln_future_wait(fs[i], 10000000));
    kiln_future_release(fs[i]);
  }
  assert_true(kiln_future_wait(fb, 10000000));
  kiln_future_release(fb);
  assert_int_equal(log.n, N);
  for (int i = 1; i < N; i++) assert_true(log.tags[i - 1] < log.tags[i]);
  kiln_runtime_free(rt);
  gate_destroy(&g);
  pthread_mutex_destroy(&log.mu);
}

/* A full level rejects at once; the other levels have their own limits. */
static void queue_limit_rejects(void **state) {
  (void)state;
  kiln_runtime_opts o = kiln_runtime_opts_default();
  o.queue_limit[KILN_PRIORITY_LOW] = 2;
  kiln_runtime *rt = make_rt(1, &o);
  kiln_runtime_model *m = load(rt, NULL);
  gate g;
  gate_init(&g);
  kiln_tensor x = rows(0, 1);
  kiln_request blocker = req_of(&x, KILN_PRIORITY_LOW);
  blocker.interrupt = gate_hook;
  blocker.user = &g;
  assert_int_equal(kiln_runtime_submit(m, &blocker, NULL, NULL), KILN_OK);
  gate_wait_entered(&g);
  kiln_request low = req_of(&x, KILN_PRIORITY_LOW), high = req_of(&x, KILN_PRIORITY_HIGH);
  kiln_future *f[3];
  assert_int_equal(kiln_runtime_submit(m, &low, &f[0], NULL), KILN_OK);
  assert_int_equal(kiln_runtime_submit(m, &low, &f[1], NULL), KILN_OK);
  kiln_future *rej = (kiln_future *)&g; /* must be cleared */
  kiln_error err = {0};
  assert_int_equal(kiln_runtime_submit(m, &low, &rej, &err), KILN_RESOURCE_EXHAUSTED);
  assert_null(rej);
  assert_int_equal(kiln_runtime_submit(m, &high, &f[2], NULL), KILN_OK);
  kiln_runtime_stats st = stats_of(m);
  assert_int_equal(st.prio[KILN_PRIORITY_LOW].rejected, 1);
  assert_int_equal(st.prio[KILN_PRIORITY_LOW].queue_depth, 2);
  gate_open(&g);
  for (int i = 0; i < 3; i++) {
    assert_true(kiln_future_wait(f[i], 10000000));
    assert_int_equal(kiln_future_status(f[i], NULL), KILN_OK);
    kiln_future_release(f[i]);
  }
  kiln_runtime_free(rt);
  gate_destroy(&g);
}

/* A model's own queue limit: its requests beyond it are refused while another model's requests
   at the same level still queue (the runtime-wide limit is far away). */
static void model_queue_limit_rejects(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model_opts mo = kiln_runtime_model_opts_default();
  mo.queue_limit[KILN_PRIORITY_NORMAL] = 1;
  kiln_runtime_model *limited = load(rt, &mo), *other = load(rt, NULL);
  gate g;
  gate_init(&g);
  kiln_tensor x = rows(0, 1);
  kiln_request blocker = req_of(&x, KILN_PRIORITY_NORMAL);
  blocker.interrupt = gate_hook;
  blocker.user = &g;
  assert_int_equal(kiln_runtime_submit(limited, &blocker, NULL, NULL), KILN_OK);
  gate_wait_entered(&g); /* running: the queue is empty again */
  kiln_request r = req_of(&x, KILN_PRIORITY_NORMAL), low = req_of(&x, KILN_PRIORITY_LOW);
  kiln_future *f[4];
  kiln_error err = {0};
  assert_int_equal(kiln_runtime_submit(limited, &r, &f[0], NULL), KILN_OK);
  assert_int_equal(kiln_runtime_submit(limited, &r, NULL, &err), KILN_RESOURCE_EXHAUSTED);
  assert_non_null(strstr(err.message, "model's priority 2 queue is full"));
  assert_int_equal(kiln_runtime_submit(limited, &low, &f[1], NULL), KILN_OK); /* other level */
  assert_int_equal(kiln_runtime_submit(other, &r, &f[2], NULL), KILN_OK);
  assert_int_equal(kiln_runtime_submit(other, &r, &f[3], NULL), KILN_OK);
  kiln_runtime_stats st = stats_of(limited);
  assert_int_equal(st.prio[KILN_PRIORITY_NORMAL].rejected, 1);
  assert_int_equal(st.prio[KILN_PRIORITY_NORMAL].queue_depth, 1);
  gate_open(&g);
  for (int i = 0; i < 4; i++) {
    assert_true(kiln_future_wait(f[i], 10000000));
    assert_int_equal(kiln_future_status(f[i], NULL), KILN_OK);
    kiln_future_release(f[i]);
  }
  kiln_runtime_free(rt);
  gate_destroy(&g);
}

/* Unload: new submits are refused, the running and queued requests finish with their outputs,
   and the model is freed when the last of them completes (ASan's leak check sees the rest). */
static void unload_drains_then_frees(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model *m = load(rt, NULL), *keep = load(rt, NULL);
  gate g;
  gate_init(&g);
  kiln_tensor x = rows(0, 3);
  kiln_request blocker = req_of(&x, KILN_PRIORITY_NORMAL);
  blocker.interrupt = gate_hook;
  blocker.user = &g;
  kiln_future *run = NULL, *queued = NULL, *cancelled = NULL;
  assert_int_equal(kiln_runtime_submit(m, &blocker, &run, NULL), KILN_OK);
  gate_wait_entered(&g);
  kiln_request r = req_of(&x, KILN_PRIORITY_NORMAL);
  assert_int_equal(kiln_runtime_submit(m, &r, &queued, NULL), KILN_OK);
  assert_int_equal(kiln_runtime_submit(m, &r, &cancelled, NULL), KILN_OK);
  assert_int_equal(kiln_runtime_models_draining(rt), 0);
  kiln_runtime_model_unload(m);
  assert_int_equal(kiln_runtime_models_draining(rt), 1);
  kiln_error err = {0};
  /* Still allocated while requests are in flight, so a racing submit is refused, not a crash. */
  assert_int_equal(kiln_runtime_submit(m, &r, NULL, &err), KILN_UNAVAILABLE);
  assert_non_null(strstr(err.message, "unloaded"));
  kiln_future_cancel(cancelled); /* a queued request of an unloaded model still cancels */
  assert_int_equal(kiln_future_status(cancelled, NULL), KILN_CANCELLED);
  assert_int_equal(kiln_runtime_models_draining(rt), 1);
  gate_open(&g);
  assert_true(kiln_future_wait(run, 10000000));
  assert_true(kiln_future_wait(queued, 10000000));
  /* The futures keep their outputs after the model is gone. */
  for (int k = 0; k < 2; k++) {
    kiln_future *f = k ? queued : run;
    assert_int_equal(kiln_future_status(f, NULL), KILN_OK);
    kiln_tensor y;
    assert_int_equal(kiln_future_output(f, 0, &y), KILN_OK);
    assert_int_equal(y.dims[0], 3);
    assert_int_equal(y.dims[1], 10);
  }
  for (int i = 0; i < 1000 && kiln_runtime_models_draining(rt); i++) sleep_us(1000);
  assert_int_equal(kiln_runtime_models_draining(rt), 0);
  kiln_future_cancel(run); /* a completed future of a freed model: no effect, no access */
  kiln_future_release(run);
  kiln_future_release(queued);
  kiln_future_release(cancelled);
  /* The other model serves on; unloaded with nothing queued, it is freed once the worker that ran
     its last request lets go (just after that request's waiter wakes). */
  kiln_future *f = NULL;
  assert_int_equal(kiln_runtime_run(keep, &r, &f, NULL), KILN_OK);
  kiln_future_release(f);
  kiln_runtime_model_unload(keep);
  for (int i = 0; i < 1000 && kiln_runtime_models_draining(rt); i++) sleep_us(1000);
  assert_int_equal(kiln_runtime_models_draining(rt), 0);
  kiln_runtime_model_unload(NULL);
  kiln_runtime_free(rt);
  gate_destroy(&g);
}

/* With aging, a LOW request that waited long enough runs before a fresh NORMAL one. */
static void aging_promotes_low(void **state) {
  (void)state;
  kiln_runtime_opts o = kiln_runtime_opts_default();
  o.aging_us = 50000;
  kiln_runtime *rt = make_rt(1, &o);
  kiln_runtime_model *m = load(rt, NULL);
  gate g;
  gate_init(&g);
  kiln_tensor x = rows(0, 1);
  kiln_request blocker = req_of(&x, KILN_PRIORITY_CRITICAL);
  blocker.interrupt = gate_hook;
  blocker.user = &g;
  assert_int_equal(kiln_runtime_submit(m, &blocker, NULL, NULL), KILN_OK);
  gate_wait_entered(&g);
  order_log log = {.n = 0};
  pthread_mutex_init(&log.mu, NULL);
  tagged t_low = {&log, 3}, t_norm = {&log, 2};
  kiln_request low = req_of(&x, KILN_PRIORITY_LOW), norm = req_of(&x, KILN_PRIORITY_NORMAL);
  low.on_complete = norm.on_complete = log_done;
  low.user = &t_low;
  norm.user = &t_norm;
  kiln_future *f1, *f2;
  assert_int_equal(kiln_runtime_submit(m, &low, &f1, NULL), KILN_OK);
  sleep_us(160000); /* aging is about time waited: LOW is now 3 aging periods old */
  assert_int_equal(kiln_runtime_submit(m, &norm, &f2, NULL), KILN_OK);
  gate_open(&g);
  assert_true(kiln_future_wait(f1, 10000000) && kiln_future_wait(f2, 10000000));
  assert_int_equal(log.n, 2);
  assert_int_equal(log.tags[0], 3);
  kiln_future_release(f1);
  kiln_future_release(f2);
  kiln_runtime_free(rt);
  gate_destroy(&g);
  pthread_mutex_destroy(&log.mu);
}

static void count_done(kiln_future *f, void *user) {
  (void)f;
  atomic_fetch_add((atomic_int *)user, 1);
}

static void stamp_done(kiln_future *f, void *user) {
  (void)f;
  atomic_store((_Atomic int64_t *)user, kiln_runtime_now_ns());
}

/* Queued: completes CANCELLED before cancel returns. Running: stops at the next node boundary.
   After completion: harmless. */
static void cancel_queued_and_running(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model *m = load(rt, NULL);
  gate g;
  gate_init(&g);
  kiln_tensor x = rows(0, 1);
  kiln_request blocker = req_of(&x, KILN_PRIORITY_NORMAL);
  blocker.interrupt = gate_hook;
  blocker.user = &g;
  kiln_future *fb, *fq;
  assert_int_equal(kiln_runtime_submit(m, &blocker, &fb, NULL), KILN_OK);
  gate_wait_entered(&g);
  atomic_int calls = 0;
  kiln_request r = req_of(&x, KILN_PRIORITY_NORMAL);
  r.on_complete = count_done;
  r.user = &calls;
  assert_int_equal(kiln_runtime_submit(m, &r, &fq, NULL), KILN_OK);
  assert_false(kiln_future_done(fq));
  kiln_future_cancel(fq);
  assert_true(kiln_future_done(fq));
  assert_int_equal(atomic_load(&calls), 1);
  kiln_error err = {0};
  assert_int_equal(kiln_future_status(fq, &err), KILN_CANCELLED);
  kiln_future_cancel(fq); /* harmless */
  assert_int_equal(atomic_load(&calls), 1);
  /* The running blocker: cancelled while held at a boundary, it stops at the next one. */
  kiln_future_cancel(fb);
  assert_false(kiln_future_done(fb));
  gate_open(&g);
  assert_true(kiln_future_wait(fb, 10000000));
  assert_int_equal(kiln_future_status(fb, &err), KILN_CANCELLED);
  assert_true(strstr(err.message, "before node") != NULL);
  assert_int_equal(kiln_future_output_count(fb), 0);
  kiln_runtime_stats st = stats_of(m);
  assert_int_equal(st.prio[KILN_PRIORITY_NORMAL].cancelled, 2);
  /* The context was released: the runtime still serves. */
  kiln_future *f = NULL;
  r.on_complete = NULL;
  assert_int_equal(kiln_runtime_run(m, &r, &f, NULL), KILN_OK);
  kiln_future_release(f);
  kiln_future_release(fq);
  kiln_future_release(fb);
  kiln_runtime_free(rt);
  gate_destroy(&g);
}

typedef struct race_item {
  atomic_int calls;
} race_item;

static void race_done(kiln_future *f, void *user) {
  (void)f;
  atomic_fetch_add(&((race_item *)user)->calls, 1);
}

/* Cancel at random moments against completion, thousands of times: each request completes
   exactly once, as OK (with the right logits) or CANCELLED. Leaks show under the sanitizers. */
static void cancel_races_completion(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(2, NULL);
  kiln_runtime_model *m = load(rt, NULL);
  kiln_tensor x = rows(3, 1);
  float *want = direct_logits(&x);
  enum { N = 3000 };
  static race_item items[N];
  unsigned seed = 12345;
  int ok = 0, cancelled = 0;
  for (int i = 0; i < N; i++) {
    atomic_init(&items[i].calls, 0);
    kiln_request r = req_of(&x, (kiln_priority)(i % KILN_PRIORITY_COUNT));
    r.on_complete = race_done;
    r.user = &items[i];
    kiln_future *f;
    assert_int_equal(kiln_runtime_submit(m, &r, &f, NULL), KILN_OK);
    seed = seed * 1103515245u + 12345u;
    /* Busy-wait 0-300 us so the cancel lands while queued, running or after completion. */
    int64_t until = now_us() + (int64_t)((seed >> 16) % 300);
    while (now_us() < until) {
    }
    kiln_future_cancel(f);
    assert_true(kiln_future_wait(f, 10000000));
    kiln_future_cancel(f);
    assert_int_equal(atomic_load(&items[i].calls), 1);
    kiln_status st = kiln_future_status(f, NULL);
    if (st == KILN_OK) {
      expect_logits(f, want, 1);
      ok++;
    } else {
      assert_int_equal(st, KILN_CANCELLED);
      cancelled++;
    }
    kiln_future_release(f);
  }
  uint64_t sok = 0, scan = 0;
  kiln_runtime_stats st = stats_of(m);
  for (int l = 0; l < KILN_PRIORITY_COUNT; l++) {
    sok += st.prio[l].ok;
    scan += st.prio[l].cancelled;
    assert_int_equal(st.prio[l].queue_depth, 0);
  }
  assert_int_equal(sok, ok);
  assert_int_equal(scan, cancelled);
  print_message("cancel race: %d ok, %d cancelled\n", ok, cancelled);
  kiln_runtime_free(rt);
  free(want);
}

/* The only worker is held; a queued request's deadline still fires, by the timer. */
static void deadline_fires_while_workers_busy(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model *m = load(rt, NULL);
  gate g;
  gate_init(&g);
  kiln_tensor x = rows(0, 1);
  kiln_request blocker = req_of(&x, KILN_PRIORITY_CRITICAL);
  blocker.interrupt = gate_hook;
  blocker.user = &g;
  kiln_future *fb, *f1, *f2, *f3;
  assert_int_equal(kiln_runtime_submit(m, &blocker, &fb, NULL), KILN_OK);
  gate_wait_entered(&g);
  kiln_request r = req_of(&x, KILN_PRIORITY_NORMAL);
  r.timeout_us = 30000;
  int64_t t0 = now_us();
  assert_int_equal(kiln_runtime_submit(m, &r, &f1, NULL), KILN_OK);
  r.timeout_us = 10000;
  assert_int_equal(kiln_runtime_submit(m, &r, &f2, NULL), KILN_OK);
  r.timeout_us = -1; /* none */
  assert_int_equal(kiln_runtime_submit(m, &r, &f3, NULL), KILN_OK);
  assert_true(kiln_future_wait(f1, 10000000));
  int64_t waited = now_us() - t0;
  assert_true(kiln_future_done(f2));
  assert_int_equal(kiln_future_status(f1, NULL), KILN_DEADLINE_EXCEEDED);
  assert_int_equal(kiln_future_status(f2, NULL), KILN_DEADLINE_EXCEEDED);
  assert_true(waited >= 30000);
  /* The worker never got free: the blocker is still held, so the timer did it. */
  assert_false(kiln_future_done(fb));
  assert_false(kiln_future_done(f3));
  assert_int_equal(stats_of(m).prio[KILN_PRIORITY_NORMAL].deadline_exceeded, 2);
  gate_open(&g);
  assert_true(kiln_future_wait(f3, 10000000));
  assert_int_equal(kiln_future_status(f3, NULL), KILN_OK);
  kiln_future_release(f1);
  kiln_future_release(f2);
  kiln_future_release(f3);
  kiln_future_release(fb);
  kiln_runtime_free(rt);
  gate_destroy(&g);
}

static kiln_status slow_hook(void *user) {
  (void)user;
  sleep_us(5000);
  return KILN_OK;
}

/* A running request past its deadline stops at the next node boundary; a default timeout per
   priority applies when the request sets none. */
static void deadline_stops_running_request(void **state) {
  (void)state;
  kiln_runtime_opts o = kiln_runtime_opts_default();
  o.default_timeout_us[KILN_PRIORITY_LOW] = 12000;
  kiln_runtime *rt = make_rt(1, &o);
  kiln_runtime_model *m = load(rt, NULL);
  kiln_tensor x = rows(0, 1);
  kiln_request r = req_of(&x, KILN_PRIORITY_LOW);
  r.interrupt = slow_hook;
  kiln_future *f = NULL;
  kiln_error err = {0};
  int64_t t0 = now_us();
  assert_int_equal(kiln_runtime_run(m, &r, &f, &err), KILN_DEADLINE_EXCEEDED);
  int64_t waited = now_us() - t0;
  assert_true(strstr(err.message, "before node") != NULL);
  kiln_future_release(f);
  kiln_runtime_stats st = stats_of(m);
  assert_int_equal(st.prio[KILN_PRIORITY_LOW].deadline_exceeded, 1);
  /* It ended no earlier than its deadline (timed by the caller: the stats count queue and
     compute time in whole microseconds and leave out the hand-over between them), and it ran. */
  assert_true(waited >= 12000);
  assert_true(st.prio[KILN_PRIORITY_LOW].compute_us_total >= 5000);
  kiln_runtime_free(rt);
}

/* Requests of 1-9 rows queued behind a held worker run as one batch; each gets exactly the rows
   a direct unbatched run gives (reference backend, bit for bit). */
static void batching_matches_unbatched(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model *plain = load(rt, NULL);
  kiln_runtime_model_opts mo = kiln_runtime_model_opts_default();
  mo.max_batch_size = 24;
  mo.max_queue_delay_us = 5000;
  kiln_runtime_model *m = load(rt, &mo);
  gate g;
  gate_init(&g);
  kiln_tensor bx = rows(0, 1);
  kiln_request blocker = req_of(&bx, KILN_PRIORITY_CRITICAL);
  blocker.interrupt = gate_hook;
  blocker.user = &g;
  assert_int_equal(kiln_runtime_submit(plain, &blocker, NULL, NULL), KILN_OK);
  gate_wait_entered(&g);
  const int64_t start[] = {10, 20, 31, 40, 52, 60}, n[] = {1, 5, 2, 6, 4, 9};
  const kiln_priority pr[] = {KILN_PRIORITY_LOW, KILN_PRIORITY_NORMAL, KILN_PRIORITY_HIGH,
                              KILN_PRIORITY_NORMAL, KILN_PRIORITY_CRITICAL, KILN_PRIORITY_LOW};
  enum { R = 6 };
  kiln_tensor xs[R];
  kiln_future *fs[R];
  float *want[R];
  for (int i = 0; i < R; i++) {
    xs[i] = rows(start[i], n[i]);
    want[i] = direct_logits(&xs[i]);
    kiln_request r = req_of(&xs[i], pr[i]);
    assert_int_equal(kiln_runtime_submit(m, &r, &fs[i], NULL), KILN_OK);
  }
  gate_open(&g);
  for (int i = 0; i < R; i++) {
    assert_true(kiln_future_wait(fs[i], 10000000));
    assert_int_equal(kiln_future_status(fs[i], NULL), KILN_OK);
    expect_logits(fs[i], want[i], n[i]);
  }
  kiln_runtime_stats st = stats_of(m);
  /* 27 rows, max 24: the first batch takes the highest priorities that fit (CRITICAL, HIGH, the
     two NORMAL, the first LOW: 18 rows); the last LOW request (9 rows) waits for the next run. */
  assert_int_equal(st.runs, 2);
  assert_int_equal(st.batched_runs, 1);
  assert_int_equal(st.batch_requests, 5);
  assert_int_equal(st.batch_rows_max, 18);
  /* A lone request runs once its delay is over. */
  kiln_tensor one = rows(99, 1);
  float *w1 = direct_logits(&one);
  kiln_request r = req_of(&one, KILN_PRIORITY_NORMAL);
  kiln_future *f = NULL;
  assert_int_equal(kiln_runtime_run(m, &r, &f, NULL), KILN_OK);
  expect_logits(f, w1, 1);
  kiln_future_release(f);
  for (int i = 0; i < R; i++) {
    kiln_future_release(fs[i]);
    free(want[i]);
  }
  free(w1);
  kiln_runtime_free(rt);
  gate_destroy(&g);
}

/* Batching options are checked at load. */
static void batching_options_checked(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model_opts mo = kiln_runtime_model_opts_default();
  mo.max_batch_size = 100000;
  mo.backends = ref_backends;
  kiln_runtime_model *m = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_runtime_model_load(rt, digits_path, &mo, &m, &err),
                   KILN_INVALID_ARGUMENT);
  assert_null(m);
  kiln_runtime_free(rt);
}

typedef struct stream_log {
  pthread_mutex_t mu;
  size_t order[64];
  kiln_status status[64];
  int seen[64];
  size_t n;
  const float *want; /* logits of rows 0..63, one per index */
  int wrong;         /* outputs that differ from the oracle (no asserts off the main thread) */
} stream_log;

static void stream_cb(size_t index, kiln_future *f, void *user) {
  stream_log *l = user;
  kiln_status st = kiln_future_status(f, NULL);
  kiln_tensor y;
  bool right = st != KILN_OK || (kiln_future_output(f, 0, &y) == KILN_OK && y.dims[0] == 1 &&
                                 !memcmp(y.data, l->want + index * 10, 10 * sizeof(float)));
  pthread_mutex_lock(&l->mu);
  l->wrong += !right;
  l->order[l->n++] = index;
  l->status[index] = st;
  l->seen[index]++;
  pthread_mutex_unlock(&l->mu);
}

static void streams_in_order_and_cancel(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model *m = load(rt, NULL);
  float *want = direct_logits_per_row(0, 40);
  enum { N = 40 };
  kiln_tensor xs[N];
  kiln_request rs[N];
  for (int i = 0; i < N; i++) {
    xs[i] = rows(i, 1);
    rs[i] = req_of(&xs[i], KILN_PRIORITY_NORMAL);
  }
  /* In order with one worker, each index once, each result the oracle's. */
  stream_log l = {.n = 0, .want = want};
  pthread_mutex_init(&l.mu, NULL);
  kiln_stream *s = NULL;
  assert_int_equal(kiln_runtime_submit_stream(m, rs, N, stream_cb, &l, &s, NULL), KILN_OK);
  assert_true(kiln_stream_wait(s, 10000000));
  kiln_stream_release(s);
  assert_int_equal(l.n, N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(l.order[i], i);
    assert_int_equal(l.status[i], KILN_OK);
  }
  /* Mid-stream cancel: request 10 is held at a gate; cancel the stream there. */
  gate g;
  gate_init(&g);
  rs[10].interrupt = gate_hook;
  rs[10].user = &g;
  memset(&l.order, 0, sizeof l.order);
  memset(&l.seen, 0, sizeof l.seen);
  l.n = 0;
  assert_int_equal(kiln_runtime_submit_stream(m, rs, N, stream_cb, &l, &s, NULL), KILN_OK);
  gate_wait_entered(&g);
  kiln_stream_cancel(s);
  assert_false(kiln_stream_wait(s, 0)); /* request 10 is still held */
  gate_open(&g);
  assert_true(kiln_stream_wait(s, 10000000));
  kiln_stream_release(s);
  assert_int_equal(l.n, N);
  for (int i = 0; i < N; i++) {
    assert_int_equal(l.seen[i], 1);
    assert_int_equal(l.status[i], i < 10 ? KILN_OK : KILN_CANCELLED);
  }
  assert_int_equal(l.order[N - 1], 10); /* the running one finished last */
  assert_int_equal(l.wrong, 0);
  kiln_runtime_free(rt);
  gate_destroy(&g);
  pthread_mutex_destroy(&l.mu);
  free(want);
}

/* CLOSED -> OPEN on failures, UNAVAILABLE with a retry-after while OPEN, HALF_OPEN after the
   cool-down, a good probe closes it, a bad one opens it again; slow calls open it too. */
static void breaker_transitions(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model_opts mo = kiln_runtime_model_opts_default();
  mo.breaker_window = 4;
  mo.breaker_min_calls = 4;
  mo.breaker_failure_rate = 0.5;
  mo.breaker_cooldown_us = 50000;
  mo.breaker_probes = 1;
  kiln_runtime_model *m = load(rt, &mo);
  kiln_tensor good = rows(0, 1), bad = rows(0, 1);
  bad.dims[3] = 7;
  kiln_request rg = req_of(&good, KILN_PRIORITY_NORMAL), rb = req_of(&bad, KILN_PRIORITY_NORMAL);
  kiln_future *f = NULL;
  for (int round = 0; round < 2; round++) {
    /* Two good calls and two failures: 50% of 4 opens it. */
    for (int i = 0; i < 4; i++) {
      assert_int_equal(stats_of(m).breaker_state, KILN_BREAKER_CLOSED);
      assert_int_equal(kiln_runtime_run(m, i % 2 ? &rb : &rg, &f, NULL),
                       i % 2 ? KILN_INVALID_ARGUMENT : KILN_OK);
      kiln_future_release(f);
    }
    kiln_runtime_stats st = stats_of(m);
    assert_int_equal(st.breaker_state, KILN_BREAKER_OPEN);
    assert_int_equal(st.breaker_opened, round == 0 ? 1 : 3);
    assert_true(st.retry_after_us > 0 && st.retry_after_us <= 50000);
    kiln_error err = {0};
    assert_int_equal(kiln_runtime_submit(m, &rg, &f, &err), KILN_UNAVAILABLE);
    assert_null(f);
    assert_true(strstr(err.message, "retry after") != NULL);
    assert_int_equal(stats_of(m).prio[KILN_PRIORITY_NORMAL].rejected, (uint64_t)round + 1);
    sleep_us(st.retry_after_us + 5000); /* the cool-down is a span of time */
    /* HALF_OPEN: round 0 probes with a failure (back to OPEN), round 1 with success. */
    if (round == 0) {
      assert_int_equal(kiln_runtime_run(m, &rb, &f, NULL), KILN_INVALID_ARGUMENT);
      kiln_future_release(f);
      st = stats_of(m);
      assert_int_equal(st.breaker_state, KILN_BREAKER_OPEN);
      assert_int_equal(st.breaker_half_opened, 1);
      assert_int_equal(st.breaker_opened, 2);
      sleep_us(st.retry_after_us + 5000);
    }
    assert_int_equal(kiln_runtime_run(m, &rg, &f, NULL), KILN_OK);
    kiln_future_release(f);
    st = stats_of(m);
    assert_int_equal(st.breaker_state, KILN_BREAKER_CLOSED);
    assert_int_equal(st.breaker_closed, (uint64_t)round + 1);
    if (round == 1) {
      assert_int_equal(st.breaker_opened, 3);
      assert_int_equal(st.breaker_half_opened, 3);
    }
  }
  /* Slow calls: every call is slower than 1 us. */
  kiln_runtime_model_opts so = kiln_runtime_model_opts_default();
  so.breaker_window = 2;
  so.breaker_min_calls = 2;
  so.breaker_failure_rate = 0;
  so.breaker_slow_rate = 1.0;
  so.breaker_slow_call_us = 1;
  kiln_runtime_model *slow = load(rt, &so);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(kiln_runtime_run(slow, &rg, &f, NULL), KILN_OK);
    kiln_future_release(f);
  }
  assert_int_equal(stats_of(slow).breaker_state, KILN_BREAKER_OPEN);
  assert_int_equal(kiln_runtime_submit(slow, &rg, NULL, NULL), KILN_UNAVAILABLE);
  kiln_runtime_free(rt);
}

/* With one context for two workers, the second request waits for it (counted). */
static void context_pool_waits(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(2, NULL);
  kiln_runtime_model_opts mo = kiln_runtime_model_opts_default();
  mo.max_contexts = 1;
  kiln_runtime_model *m = load(rt, &mo);
  gate g;
  gate_init(&g);
  kiln_tensor x = rows(0, 1);
  kiln_request a = req_of(&x, KILN_PRIORITY_NORMAL), b = a;
  a.interrupt = gate_hook;
  a.user = &g;
  kiln_future *fa, *fb;
  assert_int_equal(kiln_runtime_submit(m, &a, &fa, NULL), KILN_OK);
  gate_wait_entered(&g);
  assert_int_equal(kiln_runtime_submit(m, &b, &fb, NULL), KILN_OK);
  /* The second worker takes b and waits for the context: poll the counter that says so. */
  for (int i = 0; i < 100000 && stats_of(m).context_waits == 0; i++) sleep_us(100);
  assert_int_equal(stats_of(m).context_waits, 1);
  assert_false(kiln_future_done(fb));
  gate_open(&g);
  assert_true(kiln_future_wait(fa, 10000000) && kiln_future_wait(fb, 10000000));
  assert_int_equal(kiln_future_status(fb, NULL), KILN_OK);
  kiln_runtime_stats st = stats_of(m);
  assert_int_equal(st.contexts, 1);
  assert_int_equal(st.context_misses, 1);
  kiln_future_release(fa);
  kiln_future_release(fb);
  kiln_runtime_free(rt);
  gate_destroy(&g);
}

/* Shutdown with requests queued and running: every request completes exactly once (OK or
   CANCELLED), futures stay readable after the runtime is gone, later submits are refused. */
static void shutdown_with_requests_in_flight(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(2, NULL);
  kiln_runtime_model *m = load(rt, NULL);
  kiln_tensor x = rows(0, 1);
  enum { N = 200 };
  static race_item items[N];
  kiln_future *fs[N];
  for (int i = 0; i < N; i++) {
    atomic_init(&items[i].calls, 0);
    kiln_request r = req_of(&x, (kiln_priority)(i % KILN_PRIORITY_COUNT));
    r.on_complete = race_done;
    r.user = &items[i];
    if (i % 3 == 0) r.interrupt = slow_hook; /* some are mid-run at shutdown */
    assert_int_equal(kiln_runtime_submit(m, &r, &fs[i], NULL), KILN_OK);
  }
  kiln_runtime_free(rt);
  int cancelled = 0;
  for (int i = 0; i < N; i++) {
    assert_true(kiln_future_done(fs[i]));
    assert_int_equal(atomic_load(&items[i].calls), 1);
    kiln_status st = kiln_future_status(fs[i], NULL);
    assert_true(st == KILN_OK || st == KILN_CANCELLED);
    cancelled += st == KILN_CANCELLED;
    kiln_future_cancel(fs[i]); /* harmless after completion, even with the runtime gone */
    kiln_future_release(fs[i]);
  }
  assert_true(cancelled > 0);
}

/* ---- absolute deadlines, batch pruning, backend breakers, pooling, borrowed models -------- */

/* An absolute deadline fires by the timer while the only worker is held; the earlier of deadline
   and timeout applies; a deadline already past completes at once through the callback; with a
   deadline, the priority's default timeout does not apply. */
static void absolute_deadline(void **state) {
  (void)state;
  kiln_runtime_opts o = kiln_runtime_opts_default();
  o.default_timeout_us[KILN_PRIORITY_NORMAL] = 5000;
  kiln_runtime *rt = make_rt(1, &o);
  kiln_runtime_model *m = load(rt, NULL);
  gate g;
  gate_init(&g);
  kiln_tensor x = rows(0, 1);
  kiln_request blocker = req_of(&x, KILN_PRIORITY_CRITICAL);
  blocker.interrupt = gate_hook;
  blocker.user = &g;
  kiln_future *fb, *f1, *f2, *f3, *f4;
  assert_int_equal(kiln_runtime_submit(m, &blocker, &fb, NULL), KILN_OK);
  gate_wait_entered(&g);
  int64_t t0 = kiln_runtime_now_ns();
  kiln_request r = req_of(&x, KILN_PRIORITY_NORMAL);
  r.deadline_ns = t0 + 30000000; /* 30 ms, no timeout: the 5 ms default must not apply */
  _Atomic int64_t f1_done_ns = 0;
  r.on_complete = stamp_done;
  r.user = &f1_done_ns;
  assert_int_equal(kiln_runtime_submit(m, &r, &f1, NULL), KILN_OK);
  r.on_complete = NULL;
  r.user = NULL;
  r.deadline_ns = t0 + 10000000000; /* 10 s, but a 20 ms timeout: the timeout wins */
  r.timeout_us = 20000;
  assert_int_equal(kiln_runtime_submit(m, &r, &f2, NULL), KILN_OK);
  r.timeout_us = -1; /* none, and a deadline far away: runs once the worker is free */
  assert_int_equal(kiln_runtime_submit(m, &r, &f4, NULL), KILN_OK);
  assert_true(kiln_future_wait(f2, 10000000));
  int64_t t2 = kiln_runtime_now_ns();
  assert_true(kiln_future_wait(f1, 10000000));
  assert_int_equal(kiln_future_status(f1, NULL), KILN_DEADLINE_EXCEEDED);
  assert_int_equal(kiln_future_status(f2, NULL), KILN_DEADLINE_EXCEEDED);
  assert_true(t2 - t0 >= 20000000);
  /* Stamped by its callback, so a loaded machine cannot make it look late or early: the
     default timeout (5 ms) did not apply to it, its own 30 ms deadline did. */
  assert_true(atomic_load(&f1_done_ns) >= t0 + 30000000);
  assert_false(kiln_future_done(fb)); /* the worker is still held: the timer did it */
  /* Already past at submit: accepted, then completed with DEADLINE_EXCEEDED and its callback. */
  atomic_int calls = 0;
  r.deadline_ns = kiln_runtime_now_ns() - 1000;
  r.on_complete = count_done;
  r.user = &calls;
  assert_int_equal(kiln_runtime_submit(m, &r, &f3, NULL), KILN_OK);
  assert_true(kiln_future_wait(f3, 10000000));
  assert_int_equal(kiln_future_status(f3, NULL), KILN_DEADLINE_EXCEEDED);
  assert_int_equal(atomic_load(&calls), 1);
  assert_false(kiln_future_done(fb));
  gate_open(&g);
  assert_true(kiln_future_wait(f4, 10000000));
  assert_int_equal(kiln_future_status(f4, NULL), KILN_OK);
  assert_int_equal(stats_of(m).prio[KILN_PRIORITY_NORMAL].deadline_exceeded, 3);
  kiln_future *fs[] = {fb, f1, f2, f3, f4};
  for (size_t i = 0; i < 5; i++) kiln_future_release(fs[i]);
  kiln_runtime_free(rt);
  gate_destroy(&g);
}

/* Four 4-row requests form a full batch, which a worker takes and then waits on the only context
   (held by a gated request). Meanwhile one member is cancelled and another passes its absolute
   deadline: both leave the batch before it runs, with their own status; the other two run as one
   8-row batch whose rows are the direct runs' bit for bit. */
static void batch_drops_cancelled_and_expired(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(2, NULL);
  kiln_runtime_model_opts mo = kiln_runtime_model_opts_default();
  mo.max_batch_size = 16;
  mo.max_queue_delay_us = 10000000; /* batches run because they are full, never by the delay */
  mo.max_contexts = 1;
  kiln_runtime_model *m = load(rt, &mo);
  gate g;
  gate_init(&g);
  kiln_tensor bx = rows(200, 16);
  kiln_request blocker = req_of(&bx, KILN_PRIORITY_CRITICAL);
  blocker.interrupt = gate_hook;
  blocker.user = &g;
  kiln_future *fb;
  assert_int_equal(kiln_runtime_submit(m, &blocker, &fb, NULL), KILN_OK);
  gate_wait_entered(&g);
  enum { R = 4 };
  kiln_tensor xs[R];
  kiln_future *fs[R];
  float *want[R];
  atomic_int calls[R];
  for (int i = 0; i < R; i++) {
    xs[i] = rows(100 + 8 * i, 4);
    want[i] = direct_logits(&xs[i]);
  }
  int64_t deadline = kiln_runtime_now_ns() + 200000000; /* far enough to be taken first */
  for (int i = 0; i < R; i++) {
    atomic_init(&calls[i], 0);
    kiln_request r = req_of(&xs[i], KILN_PRIORITY_NORMAL);
    r.on_complete = count_done;
    r.user = &calls[i];
    if (i == 2) r.deadline_ns = deadline;
    assert_int_equal(kiln_runtime_submit(m, &r, &fs[i], NULL), KILN_OK);
  }
  /* The second worker took the full batch and waits for the context. */
  for (int i = 0; i < 100000 && stats_of(m).context_waits == 0; i++) sleep_us(100);
  assert_int_equal(stats_of(m).context_waits, 1);
  assert_int_equal(stats_of(m).prio[KILN_PRIORITY_NORMAL].queue_depth, 0);
  assert_false(kiln_future_done(fs[2]));
  kiln_future_cancel(fs[1]);
  while (kiln_runtime_now_ns() <= deadline) sleep_us(1000);
  gate_open(&g);
  for (int i = 0; i < R; i++) {
    assert_true(kiln_future_wait(fs[i], 10000000));
    assert_int_equal(atomic_load(&calls[i]), 1);
  }
  kiln_error err = {0};
  assert_int_equal(kiln_future_status(fs[1], &err), KILN_CANCELLED);
  assert_true(strstr(err.message, "before the run started") != NULL);
  assert_int_equal(kiln_future_status(fs[2], &err), KILN_DEADLINE_EXCEEDED);
  assert_true(strstr(err.message, "before the run started") != NULL);
  assert_int_equal(kiln_future_output_count(fs[1]), 0);
  for (int i = 0; i < R; i += 3) {
    assert_int_equal(kiln_future_status(fs[i], NULL), KILN_OK);
    expect_logits(fs[i], want[i], 4);
  }
  assert_true(kiln_future_wait(fb, 10000000));
  kiln_runtime_stats st = stats_of(m);
  assert_int_equal(st.batch_dropped, 2);
  assert_int_equal(st.runs, 2); /* the blocker, then one batch */
  assert_int_equal(st.batched_runs, 1);
  assert_int_equal(st.batch_requests, 2);
  assert_int_equal(st.batch_rows_max, 8);
  assert_int_equal(st.prio[KILN_PRIORITY_NORMAL].ok, 2);
  assert_int_equal(st.prio[KILN_PRIORITY_NORMAL].cancelled, 1);
  assert_int_equal(st.prio[KILN_PRIORITY_NORMAL].deadline_exceeded, 1);
  kiln_future_release(fb);
  for (int i = 0; i < R; i++) {
    kiln_future_release(fs[i]);
    free(want[i]);
  }
  kiln_runtime_free(rt);
  gate_destroy(&g);
}

static char gather_path[1100];

static size_t backend_index(kiln_runtime *rt, const char *name) {
  for (size_t i = 0; i < kiln_runtime_backend_count(rt); i++) {
    kiln_backend_stats b = {.struct_size = sizeof b};
    assert_int_equal(kiln_runtime_backend_stats(rt, i, &b), KILN_OK);
    if (!strcmp(b.name, name)) return i;
  }
  fail_msg("no backend %s", name);
  return 0;
}

static kiln_backend_stats backend_of(kiln_runtime *rt, size_t i) {
  kiln_backend_stats b = {.struct_size = sizeof b};
  assert_int_equal(kiln_runtime_backend_stats(rt, i, &b), KILN_OK);
  return b;
}

/* The "ref" backend's breaker is shared by two models: failures inside a Gather node (indices out
   of range) open it, and the other model (the digits CNN, also on "ref") is refused with
   UNAVAILABLE naming the backend. Failures before the first node (a bad input shape) do not
   count. After the cool-down a good probe of either model closes it. */
static void backend_breaker_shared_by_models(void **state) {
  (void)state;
  kiln_runtime_opts o = kiln_runtime_opts_default();
  o.backend_breaker_window = 4;
  o.backend_breaker_min_calls = 2;
  o.backend_breaker_failure_rate = 0.6;
  o.backend_breaker_cooldown_us = 50000;
  o.backend_breaker_probes = 1;
  kiln_runtime *rt = make_rt(1, &o);
  kiln_runtime_model *digits = load(rt, NULL);
  kiln_runtime_model_opts mo = kiln_runtime_model_opts_default();
  mo.backends = ref_backends;
  kiln_runtime_model *gather = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_runtime_model_load(rt, gather_path, &mo, &gather, &err), KILN_OK);
  size_t ref = backend_index(rt, "ref");
  assert_true(backend_of(rt, ref).breaker_on);
  float data[5 * 4 * 3 * 2];
  for (int i = 0; i < 120; i++) data[i] = (float)i;
  int64_t bad_idx[3] = {0, 7, 1}, good_idx[3] = {4, 0, 2};
  kiln_tensor gin[2] = {{.dtype = KILN_DTYPE_FLOAT, .rank = 4, .dims = {5, 4, 3, 2}, .data = data},
                        {.dtype = KILN_DTYPE_INT64, .rank = 1, .dims = {3}, .data = bad_idx}};
  const char *gnames[] = {"data", "indices"};
  kiln_request gr = kiln_request_default();
  gr.names = gnames;
  gr.inputs = gin;
  gr.n_inputs = 2;
  kiln_tensor x = rows(0, 1), badx = rows(0, 1);
  badx.dims[3] = 7;
  kiln_request good = req_of(&x, KILN_PRIORITY_NORMAL), bad = req_of(&badx, KILN_PRIORITY_NORMAL);
  kiln_future *f = NULL;
  /* Fails while binding inputs, before any node: not the backend's failure. */
  for (int i = 0; i < 3; i++) {
    assert_int_equal(kiln_runtime_run(digits, &bad, &f, NULL), KILN_INVALID_ARGUMENT);
    kiln_future_release(f);
  }
  assert_int_equal(backend_of(rt, ref).failures, 0);
  assert_int_equal(backend_of(rt, ref).breaker_state, KILN_BREAKER_CLOSED);
  /* A good run is a success of "ref"; then two failures inside the Gather node: 1 of 2 < 0.6,
     then 2 of 3 >= 0.6 opens it. */
  assert_int_equal(kiln_runtime_run(digits, &good, &f, NULL), KILN_OK);
  kiln_future_release(f);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(kiln_runtime_run(gather, &gr, &f, &err), KILN_INVALID_ARGUMENT);
    assert_true(strstr(err.message, "Gather") != NULL);
    kiln_future_release(f);
  }
  kiln_backend_stats b = backend_of(rt, ref);
  assert_int_equal(b.successes, 1);
  assert_int_equal(b.failures, 2);
  assert_int_equal(b.breaker_state, KILN_BREAKER_OPEN);
  assert_int_equal(b.breaker_opened, 1);
  assert_true(b.retry_after_us > 0 && b.retry_after_us <= 50000);
  /* The other model on "ref" fails fast; its own breaker (off) is not the reason. */
  assert_int_equal(kiln_runtime_submit(digits, &good, &f, &err), KILN_UNAVAILABLE);
  assert_null(f);
  assert_true(strstr(err.message, "backend 'ref'") != NULL);
  assert_true(strstr(err.message, "retry after") != NULL);
  assert_int_equal(backend_of(rt, ref).rejected, 1);
  assert_int_equal(stats_of(digits).prio[KILN_PRIORITY_NORMAL].rejected, 1);
  assert_int_equal(stats_of(digits).breaker_state, KILN_BREAKER_CLOSED);
  /* Other backends are untouched. */
  for (size_t i = 0; i < kiln_runtime_backend_count(rt); i++)
    if (i != ref) assert_int_equal(backend_of(rt, i).breaker_state, KILN_BREAKER_CLOSED);
  sleep_us(backend_of(rt, ref).retry_after_us + 5000);
  /* HALF_OPEN: one probe; a good Gather run closes it for everyone. */
  gin[1].data = good_idx;
  assert_int_equal(kiln_runtime_run(gather, &gr, &f, NULL), KILN_OK);
  kiln_tensor y;
  assert_int_equal(kiln_future_output(f, 0, &y), KILN_OK);
  assert_int_equal(y.dims[0], 3);
  assert_true(((float *)y.data)[0] == 4 * 24 && ((float *)y.data)[24] == 0 &&
              ((float *)y.data)[48] == 2 * 24);
  kiln_future_release(f);
  b = backend_of(rt, ref);
  assert_int_equal(b.breaker_state, KILN_BREAKER_CLOSED);
  assert_int_equal(b.breaker_half_opened, 1);
  assert_int_equal(b.breaker_closed, 1);
  assert_int_equal(kiln_runtime_run(digits, &good, &f, NULL), KILN_OK);
  kiln_future_release(f);
  kiln_runtime_free(rt);
}

/* Futures and their output blocks come back through a free list: once warm, submit + complete +
   release allocates nothing (Kiln's allocator counts every allocation). */
static void warm_path_allocates_nothing(void **state) {
  (void)state;
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model *m = load(rt, NULL);
  kiln_tensor x = rows(5, 3);
  float *want = direct_logits(&x);
  kiln_request r = req_of(&x, KILN_PRIORITY_HIGH);
  r.timeout_us = 10000000; /* through the deadline heap too */
  /* Warm: four futures in use at once. The one worker finishes each (and drops the runtime's
     reference) before it takes the next, so at least three are back in the pool, with blocks, by
     the time the last is done; the loop below never has more than two in use. */
  kiln_future *w[4];
  for (int i = 0; i < 4; i++) assert_int_equal(kiln_runtime_submit(m, &r, &w[i], NULL), KILN_OK);
  for (int i = 0; i < 4; i++) assert_true(kiln_future_wait(w[i], 10000000));
  for (int i = 0; i < 4; i++) kiln_future_release(w[i]);
  kiln_future *f = NULL;
  uint64_t before = kiln_alloc_count();
  for (int i = 0; i < 200; i++) {
    assert_int_equal(kiln_runtime_run(m, &r, &f, NULL), KILN_OK);
    if (i % 50 == 0) expect_logits(f, want, 3); /* a reused block holds this request's rows */
    kiln_future_release(f);
    atomic_int calls = 0;
    kiln_request cb = r;
    cb.on_complete = count_done;
    cb.user = &calls;
    assert_int_equal(kiln_runtime_submit(m, &cb, &f, NULL), KILN_OK);
    assert_true(kiln_future_wait(f, 10000000));
    kiln_future_release(f);
  }
  assert_int_equal(kiln_alloc_count() - before, 0);
  kiln_runtime_free(rt);
  free(want);
}

/* A model the caller loaded is borrowed: it serves, and outlives the runtime. */
static void borrowed_model(void **state) {
  (void)state;
  kiln_model_opts mo = kiln_model_opts_default();
  mo.intra_threads = 1;
  mo.backends = ref_backends;
  kiln_model *model = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln_model_load(digits_path, &mo, &model, &err), KILN_OK);
  kiln_runtime *rt = make_rt(1, NULL);
  kiln_runtime_model *m = NULL;
  assert_int_equal(kiln_runtime_model_add(rt, NULL, NULL, &m, &err), KILN_INVALID_ARGUMENT);
  assert_int_equal(kiln_runtime_model_add(rt, model, NULL, &m, &err), KILN_OK);
  assert_ptr_equal(kiln_runtime_model_get(m), model);
  kiln_tensor x = rows(7, 4);
  float *want = direct_logits(&x);
  kiln_request r = req_of(&x, KILN_PRIORITY_NORMAL);
  kiln_future *f = NULL;
  assert_int_equal(kiln_runtime_run(m, &r, &f, NULL), KILN_OK);
  kiln_runtime_free(rt);
  expect_logits(f, want, 4); /* readable after the runtime is gone */
  kiln_future_release(f);
  kiln_session *s = NULL;
  assert_int_equal(kiln_session_create(model, &s, &err), KILN_OK); /* the model is still ours */
  assert_int_equal(kiln_session_run(s, in_names, &x, 1, &err), KILN_OK);
  kiln_session_free(s);
  kiln_model_free(model);
  free(want);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_runtime MODELS_DIR\n");
    return 2;
  }
  snprintf(digits_path, sizeof digits_path, "%s/digits/digits_cnn.onnx", argv[1]);
  snprintf(gather_path, sizeof gather_path, "%s/../tests/data/onnx-node/test_gather_0/model.onnx",
           argv[1]);
  char xp[1100];
  snprintf(xp, sizeof xp, "%s/digits/test_x.npy", argv[1]);
  kiln_error err = {0};
  if (kiln_tensor_read_npy(xp, &test_x, &err) != KILN_OK) {
    fprintf(stderr, "%s\n", err.message);
    return 1;
  }
  kiln_model_opts mo = kiln_model_opts_default();
  mo.intra_threads = 1;
  mo.backends = ref_backends;
  if (kiln_model_load(digits_path, &mo, &oracle_model, &err) != KILN_OK ||
      kiln_session_create(oracle_model, &oracle, &err) != KILN_OK) {
    fprintf(stderr, "%s\n", err.message);
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(sync_run_and_context_pool),
      cmocka_unit_test(thread_budget),
      cmocka_unit_test(priority_order_under_load),
      cmocka_unit_test(queue_limit_rejects),
      cmocka_unit_test(model_queue_limit_rejects),
      cmocka_unit_test(unload_drains_then_frees),
      cmocka_unit_test(aging_promotes_low),
      cmocka_unit_test(cancel_queued_and_running),
      cmocka_unit_test(cancel_races_completion),
      cmocka_unit_test(deadline_fires_while_workers_busy),
      cmocka_unit_test(deadline_stops_running_request),
      cmocka_unit_test(batching_matches_unbatched),
      cmocka_unit_test(batching_options_checked),
      cmocka_unit_test(streams_in_order_and_cancel),
      cmocka_unit_test(breaker_transitions),
      cmocka_unit_test(context_pool_waits),
      cmocka_unit_test(shutdown_with_requests_in_flight),
      cmocka_unit_test(absolute_deadline),
      cmocka_unit_test(batch_drops_cancelled_and_expired),
      cmocka_unit_test(backend_breaker_shared_by_models),
      cmocka_unit_test(warm_path_allocates_nothing),
      cmocka_unit_test(borrowed_model),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  kiln_session_free(oracle);
  kiln_model_free(oracle_model);
  kiln_tensor_release(&test_x);
  return rc;
}
