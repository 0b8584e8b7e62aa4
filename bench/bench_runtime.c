/* The async runtime's benchmark goals (issue 5), against the public API only. Not part of ctest:
 * bench/run_runtime.sh builds it against libkiln.a and runs the three parts.
 *
 *   bench_runtime overhead   MODEL [RUNS]
 *       direct kiln_session_run vs the same model through the runtime (one worker, one intra
 *       thread, the same kiln_model borrowed with kiln_runtime_model_add): submit + wait on the
 *       future ("wait"), and submit + spin on kiln_future_done ("poll"). Interleaved in blocks so
 *       machine noise hits all three; prints p50/p99 of each and the added latency (async minus
 *       direct, per percentile) in microseconds.
 *   bench_runtime throughput MODEL SECONDS THREADS MAX_BATCH [DELAY_US [WORKERS [INTRA]]]
 *       THREADS closed-loop submitters (submit, wait, release) for SECONDS on a runtime with
 *       WORKERS workers x INTRA threads each (0 or absent: the default thread budget, as
 *       `kiln serve --workers --threads` takes them); MAX_BATCH 0 = no batching.
 *       Prints requests/s, latency p50/p99, session runs, mean requests per run and the largest
 *       batch. A model whose batch dimension is fixed says so. Each request is one row.
 *   bench_runtime priority   MODEL SECONDS
 *       CRITICAL requests, one at a time, paced, first alone and then while LOW traffic (32
 *       requests kept in flight by their own completion callbacks) saturates the workers. Prints
 *       CRITICAL p50/p99 both ways, one model run (the CRITICAL requests' mean compute time) and
 *       the target 1.5 x unloaded p99 + one run.
 *
 * Inputs are seeded random: floats in [0, 1), integers in {0, 1}; symbolic dimensions are 1. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln/runtime.h"

static int64_t now_ns(void) { return kiln_runtime_now_ns(); }

static void die(const char *what, const kiln_error *err) {
  fprintf(stderr, "bench_runtime: %s: %s\n", what, err ? err->message : "");
  exit(1);
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* Percentile p (0-100) of n samples, sorted in place; nearest rank. */
static double pct_us(int64_t *v, size_t n, double p) {
  if (!n) return 0;
  qsort(v, n, sizeof *v, cmp_i64);
  size_t i = (size_t)(p / 100.0 * (double)n);
  if (i >= n) i = n - 1;
  return (double)v[i] / 1000.0;
}

/* ---- inputs ------------------------------------------------------------------------------ */

typedef struct inputs {
  size_t n;
  const char **names;
  kiln_tensor *t;
} inputs;

static void make_inputs(const kiln_model *m, inputs *in) {
  in->n = kiln_model_input_count(m);
  in->names = calloc(in->n + 1, sizeof *in->names);
  in->t = calloc(in->n + 1, sizeof *in->t);
  unsigned seed = 42;
  for (size_t i = 0; i < in->n; i++) {
    kiln_io_info io;
    kiln_model_input_info(m, i, &io);
    int64_t dims[KILN_MAX_RANK];
    for (int d = 0; d < io.rank; d++) dims[d] = io.dims[d] > 0 ? io.dims[d] : 1;
    kiln_error err;
    if (kiln_tensor_alloc(&in->t[i], io.dtype, io.rank, dims, &err) != KILN_OK)
      die("input", &err);
    in->names[i] = io.name;
    size_t count = kiln_tensor_count(&in->t[i]);
    for (size_t k = 0; k < count; k++) {
      seed = seed * 1103515245u + 12345u;
      if (io.dtype == KILN_DTYPE_FLOAT) ((float *)in->t[i].data)[k] = (float)(seed >> 8) / 16777216.0f;
      else if (io.dtype == KILN_DTYPE_INT64) ((int64_t *)in->t[i].data)[k] = (seed >> 16) & 1;
      else if (io.dtype == KILN_DTYPE_INT32) ((int32_t *)in->t[i].data)[k] = (seed >> 16) & 1;
    }
  }
}

static void free_inputs(inputs *in) {
  for (size_t i = 0; i < in->n; i++) kiln_tensor_release(&in->t[i]);
  free(in->t);
  free(in->names);
}

static kiln_request request_of(const inputs *in, kiln_priority p) {
  kiln_request r = kiln_request_default();
  r.names = in->names;
  r.inputs = in->t;
  r.n_inputs = in->n;
  r.priority = p;
  return r;
}

static kiln_runtime *runtime(int workers, int intra) {
  kiln_runtime_opts o = kiln_runtime_opts_default();
  o.workers = workers;
  o.intra_threads = intra;
  kiln_runtime *rt;
  kiln_error err;
  if (kiln_runtime_create(&o, &rt, &err) != KILN_OK) die("runtime", &err);
  return rt;
}

/* ---- overhead ----------------------------------------------------------------------------- */

static int overhead(const char *path, size_t runs) {
  kiln_model_opts mo = kiln_model_opts_default();
  mo.intra_threads = 1;
  kiln_model *model;
  kiln_session *s;
  kiln_error err;
  if (kiln_model_load(path, &mo, &model, &err) != KILN_OK) die(path, &err);
  if (kiln_session_create(model, &s, &err) != KILN_OK) die("session", &err);
  kiln_runtime *rt = runtime(1, 1);
  kiln_runtime_model *m;
  if (kiln_runtime_model_add(rt, model, NULL, &m, &err) != KILN_OK) die("add", &err);
  inputs in;
  make_inputs(model, &in);
  kiln_request r = request_of(&in, KILN_PRIORITY_NORMAL);
  int64_t *t[3];
  for (int k = 0; k < 3; k++) t[k] = calloc(runs, sizeof **t);
  enum { BLOCK = 100 };
  size_t warm = runs / 10 + BLOCK;
  for (size_t base = 0; base < warm + runs; base += BLOCK) {
    for (int k = 0; k < 3; k++) {
      for (size_t j = 0; j < BLOCK; j++) {
        size_t i = base + j;
        int64_t t0 = now_ns();
        if (k == 0) {
          if (kiln_session_run(s, in.names, in.t, in.n, &err) != KILN_OK) die("run", &err);
        } else {
          kiln_future *f;
          if (kiln_runtime_submit(m, &r, &f, &err) != KILN_OK) die("submit", &err);
          if (k == 1) kiln_future_wait(f, -1);
          else
            while (!kiln_future_done(f)) {
            }
          if (kiln_future_status(f, &err) != KILN_OK) die("async run", &err);
          kiln_future_release(f);
        }
        int64_t dt = now_ns() - t0;
        if (i >= warm && i - warm < runs) t[k][i - warm] = dt;
      }
    }
  }
  double p50[3], p99[3];
  for (int k = 0; k < 3; k++) {
    p50[k] = pct_us(t[k], runs, 50);
    p99[k] = pct_us(t[k], runs, 99);
  }
  printf("overhead  %s  runs %zu each (interleaved blocks of %d), 1 worker x 1 intra thread\n",
         path, runs, BLOCK);
  printf("  direct kiln_session_run    p50 %8.1f us  p99 %8.1f us\n", p50[0], p99[0]);
  printf("  runtime submit + wait      p50 %8.1f us  p99 %8.1f us   added: p50 %+7.1f us  p99 %+7.1f us\n",
         p50[1], p99[1], p50[1] - p50[0], p99[1] - p99[0]);
  printf("  runtime submit + poll      p50 %8.1f us  p99 %8.1f us   added: p50 %+7.1f us  p99 %+7.1f us\n",
         p50[2], p99[2], p50[2] - p50[0], p99[2] - p99[0]);
  kiln_runtime_free(rt);
  kiln_session_free(s);
  kiln_model_free(model);
  free_inputs(&in);
  for (int k = 0; k < 3; k++) free(t[k]);
  return 0;
}

/* ---- throughput --------------------------------------------------------------------------- */

typedef struct submitter {
  pthread_t th;
  kiln_runtime_model *m;
  const inputs *in;
  int64_t until;
  int64_t *lat;
  size_t n, cap;
  size_t errors;
} submitter;

static void *submit_loop(void *arg) {
  submitter *s = arg;
  kiln_request r = request_of(s->in, KILN_PRIORITY_NORMAL);
  while (now_ns() < s->until) {
    int64_t t0 = now_ns();
    kiln_future *f;
    if (kiln_runtime_run(s->m, &r, &f, NULL) != KILN_OK) s->errors++;
    if (f) kiln_future_release(f);
    if (s->n == s->cap) {
      s->cap = s->cap ? 2 * s->cap : 1024;
      s->lat = realloc(s->lat, s->cap * sizeof *s->lat);
    }
    s->lat[s->n++] = now_ns() - t0;
  }
  return NULL;
}

static int throughput(const char *path, double seconds, int threads, size_t max_batch,
                      int64_t delay_us, int workers, int intra) {
  kiln_runtime *rt = runtime(workers, intra);
  int w, t;
  kiln_runtime_threads(rt, &w, &t);
  kiln_runtime_model_opts mo = kiln_runtime_model_opts_default();
  mo.max_batch_size = max_batch;
  mo.max_queue_delay_us = delay_us;
  kiln_runtime_model *m;
  kiln_error err;
  printf("throughput  %s  %d submitters, %.1f s, %d workers x %d intra, batching %s", path,
         threads, seconds, w, t, max_batch > 1 ? "on" : "off");
  if (max_batch > 1) printf(" (max %zu rows, delay %lld us)", max_batch, (long long)delay_us);
  printf("\n");
  if (kiln_runtime_model_load(rt, path, &mo, &m, &err) != KILN_OK) {
    printf("  n/a: %s\n", err.message);
    kiln_runtime_free(rt);
    return 0;
  }
  inputs in;
  make_inputs(kiln_runtime_model_get(m), &in);
  { /* warm up every context, and with batching a full batch (first runs at a shape plan it) */
    kiln_request r = request_of(&in, KILN_PRIORITY_NORMAL);
    for (int i = 0; i < w; i++) {
      kiln_future *f;
      if (kiln_runtime_run(m, &r, &f, &err) != KILN_OK) die("warm-up", &err);
      kiln_future_release(f);
    }
    size_t burst = max_batch > 1 ? max_batch : 0;
    kiln_future **fs = calloc(burst + 1, sizeof *fs);
    for (size_t i = 0; i < burst; i++)
      if (kiln_runtime_submit(m, &r, &fs[i], &err) != KILN_OK) die("warm-up batch", &err);
    for (size_t i = 0; i < burst; i++) {
      kiln_future_wait(fs[i], -1);
      if (kiln_future_status(fs[i], &err) != KILN_OK) die("warm-up batch", &err);
      kiln_future_release(fs[i]);
    }
    free(fs);
  }
  kiln_runtime_stats st0 = {.struct_size = sizeof st0};
  kiln_runtime_model_stats(m, &st0);
  submitter *s = calloc((size_t)threads, sizeof *s);
  int64_t t0 = now_ns(), until = t0 + (int64_t)(seconds * 1e9);
  for (int i = 0; i < threads; i++) {
    s[i] = (submitter){.m = m, .in = &in, .until = until};
    pthread_create(&s[i].th, NULL, submit_loop, &s[i]);
  }
  size_t total = 0, errors = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(s[i].th, NULL);
    total += s[i].n;
    errors += s[i].errors;
  }
  double el = (double)(now_ns() - t0) / 1e9;
  int64_t *all = malloc((total + 1) * sizeof *all);
  size_t k = 0;
  for (int i = 0; i < threads; i++) {
    memcpy(all + k, s[i].lat, s[i].n * sizeof *all);
    k += s[i].n;
    free(s[i].lat);
  }
  kiln_runtime_stats st = {.struct_size = sizeof st};
  kiln_runtime_model_stats(m, &st);
  uint64_t runs = st.runs - st0.runs;
  printf("  %8.1f req/s  latency p50 %9.2f ms  p99 %9.2f ms  runs %llu  req/run %.2f  errors %zu\n",
         (double)total / el, pct_us(all, total, 50) / 1000, pct_us(all, total, 99) / 1000,
         (unsigned long long)runs, runs ? (double)total / (double)runs : 0.0, errors);
  /* batch_rows_max is over the whole life of the model, warm-up burst included. */
  printf("  batched runs %llu  largest batch %llu rows  context waits %llu\n",
         (unsigned long long)(st.batched_runs - st0.batched_runs),
         (unsigned long long)st.batch_rows_max,
         (unsigned long long)(st.context_waits - st0.context_waits));
  free(all);
  free(s);
  kiln_runtime_free(rt);
  free_inputs(&in);
  return 0;
}

/* ---- priority ----------------------------------------------------------------------------- */

typedef struct low_load {
  kiln_runtime_model *m;
  kiln_request r;
  atomic_bool stop;
  atomic_int inflight;
  atomic_ullong done;
} low_load;

/* Each LOW completion submits the next one, so the load stays at a fixed depth. */
static void low_done(kiln_future *f, void *user) {
  (void)f;
  low_load *l = user;
  atomic_fetch_add(&l->done, 1);
  if (!atomic_load(&l->stop) && kiln_runtime_submit(l->m, &l->r, NULL, NULL) == KILN_OK) return;
  atomic_fetch_sub(&l->inflight, 1);
}

static void sleep_ns(int64_t ns) {
  struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
  nanosleep(&ts, NULL);
}

/* CRITICAL requests one at a time, `gap_ns` apart, for `seconds`; latencies in `lat`. */
static size_t critical_phase(kiln_runtime_model *m, const inputs *in, double seconds,
                             int64_t gap_ns, int64_t *lat, size_t cap) {
  kiln_request r = request_of(in, KILN_PRIORITY_CRITICAL);
  size_t n = 0;
  int64_t until = now_ns() + (int64_t)(seconds * 1e9);
  while (now_ns() < until && n < cap) {
    int64_t t0 = now_ns();
    kiln_future *f;
    kiln_error err;
    if (kiln_runtime_run(m, &r, &f, &err) != KILN_OK) die("critical", &err);
    kiln_future_release(f);
    lat[n++] = now_ns() - t0;
    sleep_ns(gap_ns);
  }
  return n;
}

static int priority(const char *path, double seconds) {
  kiln_runtime *rt = runtime(0, 0);
  int w, t;
  kiln_runtime_threads(rt, &w, &t);
  kiln_runtime_model *m;
  kiln_error err;
  if (kiln_runtime_model_load(rt, path, NULL, &m, &err) != KILN_OK) die(path, &err);
  inputs in;
  make_inputs(kiln_runtime_model_get(m), &in);
  kiln_request r = request_of(&in, KILN_PRIORITY_CRITICAL);
  int64_t run_ns = 0;
  for (int i = 0; i < 5; i++) { /* warm every context, time one run */
    kiln_future *f;
    int64_t t0 = now_ns();
    if (kiln_runtime_run(m, &r, &f, &err) != KILN_OK) die("warm-up", &err);
    run_ns = now_ns() - t0;
    kiln_future_release(f);
  }
  /* Pace CRITICAL at about a quarter of one worker: a latency probe, not load. */
  int64_t gap = run_ns * 3 > 200000 ? run_ns * 3 : 200000;
  size_t cap = 1000000;
  int64_t *a = malloc(cap * sizeof *a), *b = malloc(cap * sizeof *b);
  kiln_runtime_stats s0 = {.struct_size = sizeof s0}, s1 = s0;
  kiln_runtime_model_stats(m, &s0);
  size_t na = critical_phase(m, &in, seconds / 2, gap, a, cap);
  kiln_runtime_model_stats(m, &s1);
  const kiln_runtime_prio_stats *c0 = &s0.prio[0], *c1 = &s1.prio[0];
  double one_run_us = (double)(c1->compute_us_total - c0->compute_us_total) /
                      (double)(c1->ok - c0->ok ? c1->ok - c0->ok : 1);
  low_load l = {.m = m, .r = request_of(&in, KILN_PRIORITY_LOW)};
  l.r.on_complete = low_done;
  l.r.user = &l;
  enum { LOW_DEPTH = 32 };
  for (int i = 0; i < LOW_DEPTH; i++) {
    atomic_fetch_add(&l.inflight, 1);
    if (kiln_runtime_submit(m, &l.r, NULL, &err) != KILN_OK) die("low", &err);
  }
  sleep_ns(50000000); /* let the queue fill */
  kiln_runtime_stats s2 = {.struct_size = sizeof s2}, s3 = s2;
  kiln_runtime_model_stats(m, &s2);
  size_t nb = critical_phase(m, &in, seconds / 2, gap, b, cap);
  kiln_runtime_model_stats(m, &s3);
  uint64_t low_done_n = s3.prio[KILN_PRIORITY_LOW].ok - s2.prio[KILN_PRIORITY_LOW].ok;
  atomic_store(&l.stop, true);
  while (atomic_load(&l.inflight) > 0) sleep_ns(1000000);
  double ua50 = pct_us(a, na, 50), ua99 = pct_us(a, na, 99);
  double lb50 = pct_us(b, nb, 50), lb99 = pct_us(b, nb, 99);
  double target = 1.5 * ua99 + one_run_us;
  printf("priority  %s  %d workers x %d intra, CRITICAL every %.0f us, LOW depth %d\n", path, w, t,
         (double)gap / 1000, LOW_DEPTH);
  printf("  CRITICAL unloaded  n %5zu  p50 %9.1f us  p99 %9.1f us   (one run %.1f us)\n", na, ua50,
         ua99, one_run_us);
  printf("  CRITICAL + LOW     n %5zu  p50 %9.1f us  p99 %9.1f us   (LOW completed %llu, %.1f/s)\n",
         nb, lb50, lb99, (unsigned long long)low_done_n, (double)low_done_n / (seconds / 2));
  printf("  target 1.5 x %.1f + %.1f = %.1f us: %s (loaded p99 / unloaded p99 = %.2f)\n", ua99,
         one_run_us, target, lb99 <= target ? "met" : "MISSED", ua99 > 0 ? lb99 / ua99 : 0);
  free(a);
  free(b);
  kiln_runtime_free(rt);
  free_inputs(&in);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && !strcmp(argv[1], "overhead"))
    return overhead(argv[2], argc > 3 ? (size_t)atol(argv[3]) : 5000);
  if (argc >= 6 && !strcmp(argv[1], "throughput"))
    return throughput(argv[2], atof(argv[3]), atoi(argv[4]), (size_t)atol(argv[5]),
                      argc > 6 ? atoll(argv[6]) : 2000, argc > 7 ? atoi(argv[7]) : 0,
                      argc > 8 ? atoi(argv[8]) : 0);
  if (argc >= 4 && !strcmp(argv[1], "priority")) return priority(argv[2], atof(argv[3]));
  fprintf(stderr,
          "usage: bench_runtime overhead MODEL [RUNS]\n"
          "       bench_runtime throughput MODEL SECONDS THREADS MAX_BATCH [DELAY_US [WORKERS [INTRA]]]\n"
          "       bench_runtime priority MODEL SECONDS\n");
  return 2;
}
