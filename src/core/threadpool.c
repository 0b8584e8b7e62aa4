/* The intra-op thread pool.
 *
 * A job is a number of chunks. Its state lives in one 64-bit `ticket`: the job's generation (high
 * 32 bits), its chunk count (16 bits) and the next unclaimed chunk (low 16 bits). The caller writes
 * the job fields (fn, arg, total, chunks) and then publishes the job by storing a new ticket
 * (release). Anyone claims a chunk with a compare-and-swap that bumps `next` in the ticket it read
 * (acquire): success means the chunk belongs to that job, and since the caller cannot return
 * before every chunk is done, the job fields stay valid while the claimer reads them and runs the
 * chunk. A worker that wakes late finds the ticket used up or replaced by a newer job, and its CAS
 * fails harmlessly: nothing waits for it.
 *
 * That is the point of this design on a loaded machine: the caller waits only for chunks that were
 * claimed, never for a worker that was not scheduled in time. (The previous pool made every worker
 * join every job, so a parallel_for whose worker had been descheduled waited for a time slice,
 * milliseconds, even when the caller had run every chunk itself; 2 threads were then slower than
 * 1 on a shared 2-core machine.)
 *
 * Between jobs a worker spins on the ticket for SPIN_NS with a pause instruction, then sleeps on a
 * condition variable, so the back-to-back parallel_for calls of one inference find it awake and
 * an idle pool burns no core after ~50 us. Once no chunk is left to claim, the caller polls for
 * the claimed ones for up to CALLER_SPIN_NS, then sleeps until they are done: waking a sleeping
 * caller cost a few microseconds per job on the 2-vCPU VM, but a worker descheduled mid-chunk
 * must not keep the caller burning a core. */
#include "core/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

/* How long a worker keeps polling for the next job before it sleeps. A node of a small model
   takes a few microseconds, so this covers the gaps inside one inference, not between runs. */
#define SPIN_NS 50000
/* How long the caller polls for the worker's last chunk before it sleeps. */
#define CALLER_SPIN_NS 30000
/* Pauses between clock reads while spinning. */
#define SPIN_CHECK 32
/* Chunks per job are capped so they fit the ticket's 16-bit fields. */
#define CHUNKS_MAX 4096u

struct kiln__pool {
  int n;                 /* total threads including the caller */
  pthread_t *workers;
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  atomic_uint_fast64_t ticket; /* generation << 32 | chunks << 16 | next */
  atomic_bool stop;
  int sleepers;          /* workers blocked on `wake` (under mu) */
  bool caller_waits;     /* the caller is blocked on `done` (under mu) */
  /* the current job: written by the caller before the ticket that publishes it */
  kiln__range_fn fn;
  void *arg;
  size_t total, chunks;   /* chunk i is [i q + min(i, r), ...) with q, r = total / chunks, % */
  atomic_size_t left;    /* chunks not yet finished */
  atomic_bool busy;      /* a job is running: a nested or concurrent parallel_for runs inline */
};

static inline uint64_t t_gen(uint64_t t) { return t >> 32; }
static inline uint64_t t_chunks(uint64_t t) { return t >> 16 & 0xffffu; }
static inline uint64_t t_next(uint64_t t) { return t & 0xffffu; }

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

/* Claims and runs chunks of whatever job is current until none is left. */
static void run_chunks(kiln__pool *p) {
  uint64_t t = atomic_load_explicit(&p->ticket, memory_order_acquire);
  for (;;) {
    if (t_next(t) >= t_chunks(t)) return;
    if (!atomic_compare_exchange_weak_explicit(&p->ticket, &t, t + 1, memory_order_acquire,
                                               memory_order_acquire))
      continue; /* t now holds the current ticket */
    size_t i = (size_t)t_next(t), q = p->total / p->chunks, r = p->total % p->chunks;
    size_t b = i * q + KILN__MIN(i, r);
    p->fn(p->arg, b, b + q + (i < r));
    if (atomic_fetch_sub_explicit(&p->left, 1, memory_order_acq_rel) == 1) {
      /* The last chunk done wakes the caller if it went to sleep. */
      pthread_mutex_lock(&p->mu);
      if (p->caller_waits) pthread_cond_signal(&p->done);
      pthread_mutex_unlock(&p->mu);
    }
    t = atomic_load_explicit(&p->ticket, memory_order_acquire);
  }
}

/* Polls for a job newer than `seen` (or stop) for up to SPIN_NS; false when the time ran out. */
static bool spin_gen(kiln__pool *p, uint64_t seen) {
  uint64_t start = now_ns();
  for (;;) {
    for (int i = 0; i < SPIN_CHECK; i++) {
      if (t_gen(atomic_load_explicit(&p->ticket, memory_order_relaxed)) != seen ||
          atomic_load_explicit(&p->stop, memory_order_relaxed))
        return true;
      cpu_relax();
    }
    if (now_ns() - start > SPIN_NS) return false;
  }
}

/* Polls for the job's last chunk to finish for up to CALLER_SPIN_NS; true when it did. */
static bool spin_done(kiln__pool *p) {
  uint64_t start = now_ns();
  for (;;) {
    for (int i = 0; i < SPIN_CHECK; i++) {
      if (atomic_load_explicit(&p->left, memory_order_acquire) == 0) return true;
      cpu_relax();
    }
    if (now_ns() - start > CALLER_SPIN_NS) return false;
  }
}

static void *worker_main(void *arg) {
  kiln__pool *p = arg;
  uint64_t seen = 0;
  for (;;) {
    if (!spin_gen(p, seen)) {
      pthread_mutex_lock(&p->mu);
      p->sleepers++;
      while (!atomic_load(&p->stop) && t_gen(atomic_load(&p->ticket)) == seen)
        pthread_cond_wait(&p->wake, &p->mu);
      p->sleepers--;
      pthread_mutex_unlock(&p->mu);
    }
    if (atomic_load(&p->stop)) break;
    seen = t_gen(atomic_load_explicit(&p->ticket, memory_order_acquire));
    run_chunks(p);
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
  atomic_init(&p->ticket, 0);
  atomic_init(&p->stop, false);
  atomic_init(&p->left, 0);
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
  /* A few chunks per thread balance uneven work without much claiming traffic. Their sizes
     differ by at most one unit and their count is a multiple of the threads where n allows: a
     job's units usually cost the same (GEMM tiles, rows), and rounding the size up instead
     (14 tiles -> 7 chunks of 2) left one thread a chunk more, 4 against 3 (SqueezeNet's
     classifier GEMM). Up to 8 units per thread each unit is a chunk. */
  size_t chunks = n <= (size_t)p->n * 8 ? n : (size_t)p->n * 4;
  chunks = KILN__MIN(chunks, (size_t)CHUNKS_MAX);
  p->fn = fn;
  p->arg = arg;
  p->total = n;
  p->chunks = chunks;
  atomic_store_explicit(&p->left, chunks, memory_order_relaxed);
  uint64_t gen = t_gen(atomic_load_explicit(&p->ticket, memory_order_relaxed)) + 1;
  atomic_store_explicit(&p->ticket, (gen & 0xffffffffu) << 32 | (uint64_t)chunks << 16,
                        memory_order_release);
  /* A worker checks the ticket under mu before it sleeps, so taking mu here either finds it
     asleep (and wakes it) or lets it see the new job. Spinning workers need no wake. */
  pthread_mutex_lock(&p->mu);
  if (p->sleepers > 0) pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  run_chunks(p);
  if (atomic_load_explicit(&p->left, memory_order_acquire) > 0 && !spin_done(p)) {
    pthread_mutex_lock(&p->mu);
    p->caller_waits = true;
    while (atomic_load_explicit(&p->left, memory_order_acquire) > 0)
      pthread_cond_wait(&p->done, &p->mu);
    p->caller_waits = false;
    pthread_mutex_unlock(&p->mu);
  }
  atomic_store(&p->busy, false);
}
