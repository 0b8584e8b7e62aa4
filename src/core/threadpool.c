/* The intra-op thread pool.
 *
 * A job is published by bumping `generation` (release); workers that see the new value (acquire)
 * read the job fields, claim chunks, and report with `pending` (release), which the caller waits
 * on (acquire) before it writes the next job. Every worker joins every job, so a worker can never
 * read the fields of a job that is being rewritten.
 *
 * Between jobs a worker spins on `generation` for SPIN_NS with a pause instruction, then sleeps on
 * the condition variable: the back-to-back parallel_for calls of one inference (one per node) find
 * their workers awake and pay no futex wake, and an idle pool burns no core after ~50 us. The
 * caller does not spin: it sleeps on `done` as soon as its own chunks are done, which leaves the
 * core to a worker the scheduler had set aside (on the shared 2-core test machine a spinning
 * caller made digits_cnn at 2 threads about 2x slower than a sleeping one). */
#include "core/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

/* How long a worker keeps polling for the next job before it sleeps. A node of a small model
   takes a few microseconds, so this covers the gaps inside one inference, not between runs. */
#define SPIN_NS 50000
/* Pauses between clock reads while spinning. */
#define SPIN_CHECK 32

struct kiln__pool {
  int n;                 /* total threads including the caller */
  pthread_t *workers;
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  atomic_uint_fast64_t generation; /* bumped for every job */
  atomic_bool stop;
  int sleepers;          /* workers blocked on `wake` (under mu) */
  bool caller_waits;     /* the caller is blocked on `done` (under mu) */
  /* the current job: written by the caller before `generation` is bumped */
  kiln__range_fn fn;
  void *arg;
  size_t total;
  size_t chunks, chunk_size;
  atomic_size_t next;    /* next chunk index to claim */
  atomic_int pending;    /* workers still in the current job */
  atomic_bool busy;      /* a job is running: a nested or concurrent parallel_for runs inline */
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Polls for a new job (or stop) for up to SPIN_NS; false when the time ran out. */
static bool spin_gen(kiln__pool *p, uint64_t seen) {
  uint64_t start = now_ns();
  for (;;) {
    for (int i = 0; i < SPIN_CHECK; i++) {
      if (atomic_load_explicit(&p->generation, memory_order_acquire) != seen ||
          atomic_load_explicit(&p->stop, memory_order_relaxed))
        return true;
      cpu_relax();
    }
    if (now_ns() - start > SPIN_NS) return false;
  }
}

static void run_chunks(kiln__pool *p) {
  for (;;) {
    size_t c = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
    if (c >= p->chunks) return;
    size_t b = c * p->chunk_size, e = KILN__MIN(p->total, b + p->chunk_size);
    p->fn(p->arg, b, e);
  }
}

static void *worker_main(void *arg) {
  kiln__pool *p = arg;
  uint64_t seen = 0;
  for (;;) {
    if (!spin_gen(p, seen)) {
      pthread_mutex_lock(&p->mu);
      p->sleepers++;
      while (!atomic_load(&p->stop) && atomic_load(&p->generation) == seen)
        pthread_cond_wait(&p->wake, &p->mu);
      p->sleepers--;
      pthread_mutex_unlock(&p->mu);
    }
    if (atomic_load(&p->stop)) break;
    seen = atomic_load_explicit(&p->generation, memory_order_acquire);
    run_chunks(p);
    if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
      /* The last worker out wakes the caller if it went to sleep. */
      pthread_mutex_lock(&p->mu);
      if (p->caller_waits) pthread_cond_signal(&p->done);
      pthread_mutex_unlock(&p->mu);
    }
  }
  return NULL;
}

kiln_status kiln__pool_create(int threads, kiln__pool **out, kiln_error *err) {
  *out = NULL;
  if (threads <= 1) return KILN_OK;
  kiln__pool *p = kiln__calloc(1, sizeof *p);
  if (!p) return kiln__fail(err, KILN_NO_MEMORY, "out of memory creating the thread pool");
  p->workers = kiln__calloc((size_t)threads, sizeof(pthread_t));
  if (!p->workers) {
    kiln__free(p);
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory creating the thread pool");
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->done, NULL);
  atomic_init(&p->generation, 0);
  atomic_init(&p->stop, false);
  atomic_init(&p->next, 0);
  atomic_init(&p->pending, 0);
  atomic_init(&p->busy, false);
  p->n = 1;
  for (int i = 1; i < threads; i++) {
    if (pthread_create(&p->workers[i - 1], NULL, worker_main, p) != 0) break;
    p->n++;
  }
  *out = p;
  return KILN_OK;
}

void kiln__pool_free(kiln__pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->stop, true);
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->n - 1; i++) pthread_join(p->workers[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->done);
  kiln__free(p->workers);
  kiln__free(p);
}

int kiln__pool_threads(const kiln__pool *p) { return p ? p->n : 1; }

void kiln__parallel_for(kiln__pool *p, size_t n, kiln__range_fn fn, void *arg) {
  if (n == 0) return;
  bool idle = false;
  if (!p || p->n <= 1 || n == 1 || !atomic_compare_exchange_strong(&p->busy, &idle, true)) {
    fn(arg, 0, n);
    return;
  }
  /* A few chunks per thread balance uneven work without much claiming traffic. */
  size_t chunks = KILN__MIN(n, (size_t)p->n * 4);
  p->fn = fn;
  p->arg = arg;
  p->total = n;
  p->chunk_size = (n + chunks - 1) / chunks;
  p->chunks = (n + p->chunk_size - 1) / p->chunk_size;
  atomic_store_explicit(&p->next, 0, memory_order_relaxed);
  atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
  /* A worker checks `generation` under mu before it sleeps, so taking mu here either finds it
     asleep (and wakes it) or lets it see the new job. Spinning workers need no wake. */
  pthread_mutex_lock(&p->mu);
  if (p->sleepers > 0) pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  run_chunks(p);
  if (atomic_load_explicit(&p->pending, memory_order_acquire) > 0) {
    pthread_mutex_lock(&p->mu);
    p->caller_waits = true;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0)
      pthread_cond_wait(&p->done, &p->mu);
    p->caller_waits = false;
    pthread_mutex_unlock(&p->mu);
  }
  atomic_store(&p->busy, false);
}
