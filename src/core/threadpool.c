/* The intra-op thread pool.
 *
 * A job is a number of chunks, cut into one contiguous range per thread: the caller is thread 0,
 * worker i thread i. Each range has a cursor in its own cache line, one 64-bit word: the job's
 * generation (high 32 bits), the next unclaimed chunk (16 bits) and the range's end (low 16
 * bits). A thread claims the chunks of its own range from the front, then steals what is left of
 * the others' from their back, each claim a compare-and-swap on the cursor that checks the
 * generation. The caller writes the job fields (fn, arg, total, chunks) and the cursors, then
 * publishes the job by storing its generation in `ticket` (release); a claim that succeeds means
 * the chunk belongs to that job, and since the caller cannot return before every chunk is done,
 * the job fields stay valid while the claimer reads them and runs the chunk. A worker that wakes
 * late finds the cursors used up or of a newer job, and its CAS fails harmlessly: nothing waits
 * for it.
 *
 * Each thread thus runs the same chunks of a node in every run while all threads keep up, so the
 * lines of the node's output it writes are the lines it wrote last time, still in its own cache:
 * with chunks claimed first-come from one counter (the pool before), a line was written by
 * either thread from run to run and most stores had to take it from the other core's cache. On
 * this VM the host places the two vCPUs on different L3s for minutes at a time (bench/RESULTS.md,
 * tenth session: ~400 ns round trips), where that made two threads little faster than one
 * (SqueezeNet's 55x55 Winograd conv 213 us at two threads, 131 with fixed ranges).
 *
 * That is also the point of claiming on a loaded machine: the caller waits only for chunks that
 * were claimed, never for a worker that was not scheduled in time. (An earlier pool made every
 * worker join every job, so a parallel_for whose worker had been descheduled waited for a time
 * slice, milliseconds, even when the caller had run every chunk itself; 2 threads were then
 * slower than 1 on a shared 2-core machine.) Here the caller steals a late worker's whole range.
 *
 * Between jobs a worker spins on the ticket for SPIN_NS with a pause instruction, then sleeps on a
 * condition variable, so the back-to-back parallel_for calls of one inference find it awake and
 * an idle pool burns no core after ~50 us. Once no chunk is left to claim, the caller polls for
 * the claimed ones for up to CALLER_SPIN_NS, then sleeps until they are done: waking a sleeping
 * caller cost a few microseconds per job on the 2-vCPU VM, but a worker descheduled mid-chunk
 * must not keep the caller burning a core.
 *
 * A worker never shares the caller's CPU for long: found there, it is moved off it (move_off). */
#if defined(__linux__)
#define _GNU_SOURCE 1 /* sched_getcpu, cpu_set_t, sched_setaffinity */
#endif
#include "core/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#if defined(__linux__)
#include <sched.h>
#define POOL_STEP_ASIDE 1
#endif

/* How long a worker keeps polling for the next job before it sleeps. A node of a small model
   takes a few microseconds, so this covers the gaps inside one inference, not between runs. */
#define SPIN_NS 50000
/* How long the caller polls for the worker's last chunk before it sleeps. */
#define CALLER_SPIN_NS 30000
/* Pauses between clock reads while spinning. */
#define SPIN_CHECK 32
/* Chunks per job are capped so they fit the cursors' 16-bit fields. */
#define CHUNKS_MAX 4096u

/* A thread's range of the current job, alone in its cache line. */
typedef struct cursor {
  _Alignas(64) atomic_uint_fast64_t c; /* generation << 32 | next << 16 | end */
} cursor;

typedef struct worker_arg {
  struct kiln__pool *p;
  size_t self;    /* the worker's thread index (the caller is 0) */
  atomic_int cpu; /* the CPU it last started a job on, -1 unknown */
} worker_arg;

struct kiln__pool {
  int n;                 /* total threads including the caller */
  pthread_t *workers;
  worker_arg *wargs;
  cursor *cur;           /* n cursors */
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  atomic_uint_fast64_t ticket; /* generation << 32 of the current job */
  atomic_bool stop;
  int sleepers;          /* workers blocked on `wake` (under mu) */
  bool caller_waits;     /* the caller is blocked on `done` (under mu) */
  /* the current job: written by the caller before the ticket that publishes it */
  kiln__range_fn fn;
  kiln__range_slot_fn fn_slot; /* set instead of fn by kiln__parallel_for_slots */
  void *arg;
  size_t total, chunks;   /* chunk i is [i total / chunks, (i + 1) total / chunks) */
  _Alignas(64) atomic_size_t left; /* chunks not yet finished */
  atomic_bool busy;      /* a job is running: a nested or concurrent parallel_for runs inline */
  atomic_int caller_cpu; /* the CPU the caller published its last job from, -1 unknown */
#if POOL_STEP_ASIDE
  cpu_set_t allowed;     /* the process's CPUs when the pool was made */
  atomic_bool can_move;  /* allowed is known and no move has failed (then none is tried again) */
#endif
};

static inline uint64_t t_gen(uint64_t t) { return t >> 32; }
static inline uint64_t c_next(uint64_t c) { return c >> 16 & 0xffffu; }
static inline uint64_t c_end(uint64_t c) { return c & 0xffffu; }

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

/* Moves worker w off CPU `cpu`: its CPUs become the process's without that one. Some VMs' guest
   kernels pack lightly loaded threads onto few vCPUs (this one boots with sched_vcpu_pack=15;
   bench/RESULTS.md, seventeenth session): after another process's turn the worker shared the
   caller's vCPU for 10-20 jobs in a row, the caller running every chunk while the worker's spin
   took its time slices, two threads slower than one. The caller checks before each job, the
   worker when it starts one and while it spins. The mask is kept, so a later wake cannot pack
   the worker back, and changes only when the caller turns up on the worker's CPU. A no-op where
   the process has one CPU, and outside Linux. */
static void move_off(kiln__pool *p, size_t w, pthread_t t, int cpu) {
#if POOL_STEP_ASIDE
  if (cpu < 0 || !atomic_load_explicit(&p->can_move, memory_order_relaxed)) return;
  cpu_set_t m = p->allowed;
  CPU_CLR(cpu, &m);
  /* A mask the kernel refuses (a cpuset narrowed since) is not retried on every spin check. */
  if (CPU_COUNT(&m) == 0 || pthread_setaffinity_np(t, sizeof m, &m) != 0)
    atomic_store_explicit(&p->can_move, false, memory_order_relaxed);
  atomic_store_explicit(&p->wargs[w].cpu, -1, memory_order_relaxed);
#else
  (void)p, (void)w, (void)t, (void)cpu;
#endif
}

/* The calling thread's CPU, -1 where unknown. */
static int current_cpu(void) {
#if POOL_STEP_ASIDE
  return sched_getcpu();
#else
  return -1;
#endif
}

/* Worker `self` on the caller's CPU moves off it; elsewhere it records its CPU for the caller's
   check when `record` (at the start of a job, not while it spins). */
static void check_place(kiln__pool *p, size_t self, bool record) {
  int me = current_cpu();
  if (me >= 0 && me == atomic_load_explicit(&p->caller_cpu, memory_order_relaxed))
    move_off(p, self, pthread_self(), me);
  else if (record)
    atomic_store_explicit(&p->wargs[self].cpu, me, memory_order_relaxed);
}

/* Where chunk i of the current job starts: i total / chunks, computed without overflow. */
static inline size_t chunk_start(const kiln__pool *p, size_t i) {
  size_t q = p->total / p->chunks, r = p->total % p->chunks;
  return i * q + i * r / p->chunks;
}

/* Claims a chunk from cursor `cur` of job `gen`: from the front of the range, or from the back
   (stealing); false when the range is used up or belongs to another job. */
static bool claim(cursor *cur, uint64_t gen, bool back, size_t *chunk) {
  uint64_t c = atomic_load_explicit(&cur->c, memory_order_acquire);
  for (;;) {
    if (t_gen(c) != gen || c_next(c) >= c_end(c)) return false;
    uint64_t to = back ? c - 1 : c + (1u << 16);
    if (atomic_compare_exchange_weak_explicit(&cur->c, &c, to, memory_order_acquire,
                                              memory_order_acquire)) {
      *chunk = (size_t)(back ? c_end(c) - 1 : c_next(c));
      return true;
    }
  }
}

/* Thread `self` runs the chunks of the current job: its own range, then what is left of the
   others'. */
static void run_chunks(kiln__pool *p, size_t self) {
  uint64_t gen = t_gen(atomic_load_explicit(&p->ticket, memory_order_acquire));
  size_t n = (size_t)p->n, done = 0, i;
  for (size_t k = 0; k < n; k++) {
    cursor *cur = &p->cur[(self + k) % n];
    while (claim(cur, gen, k > 0, &i)) {
      if (p->fn_slot) p->fn_slot(p->arg, chunk_start(p, i), chunk_start(p, i + 1), self);
      else p->fn(p->arg, chunk_start(p, i), chunk_start(p, i + 1));
      done++;
    }
  }
  if (done && atomic_fetch_sub_explicit(&p->left, done, memory_order_acq_rel) == done) {
    /* The last chunk done wakes the caller if it went to sleep. */
    pthread_mutex_lock(&p->mu);
    if (p->caller_waits) pthread_cond_signal(&p->done);
    pthread_mutex_unlock(&p->mu);
  }
}

/* Polls for a job newer than `seen` (or stop) for up to SPIN_NS; false when the time ran out. */
static bool spin_gen(kiln__pool *p, size_t self, uint64_t seen) {
  uint64_t start = now_ns();
  for (;;) {
    for (int i = 0; i < SPIN_CHECK; i++) {
      if (t_gen(atomic_load_explicit(&p->ticket, memory_order_relaxed)) != seen ||
          atomic_load_explicit(&p->stop, memory_order_relaxed))
        return true;
      cpu_relax();
    }
    if (now_ns() - start > SPIN_NS) return false;
    check_place(p, self, false); /* spinning on the caller's CPU takes the caller's time */
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
  kiln__pool *p = ((worker_arg *)arg)->p;
  size_t self = ((worker_arg *)arg)->self;
  uint64_t seen = 0;
  for (;;) {
    if (!spin_gen(p, self, seen)) {
      pthread_mutex_lock(&p->mu);
      p->sleepers++;
      while (!atomic_load(&p->stop) && t_gen(atomic_load(&p->ticket)) == seen)
        pthread_cond_wait(&p->wake, &p->mu);
      p->sleepers--;
      pthread_mutex_unlock(&p->mu);
    }
    if (atomic_load(&p->stop)) break;
    seen = t_gen(atomic_load_explicit(&p->ticket, memory_order_acquire));
    check_place(p, self, true);
    run_chunks(p, self);
  }
  return NULL;
}

kiln_status kiln__pool_create(int threads, kiln__pool **out, kiln_error *err) {
  *out = NULL;
  if (threads <= 1) return KILN_OK;
  kiln__pool *p = kiln__aligned_alloc(sizeof *p);
  if (p) memset(p, 0, sizeof *p);
  if (p) p->workers = kiln__calloc((size_t)threads, sizeof(pthread_t));
  if (p && p->workers) p->wargs = kiln__calloc((size_t)threads, sizeof(worker_arg));
  if (p && p->wargs) p->cur = kiln__aligned_alloc((size_t)threads * sizeof(cursor));
  if (!p || !p->workers || !p->wargs || !p->cur) {
    if (p) kiln__free(p->workers), kiln__free(p->wargs), kiln__aligned_free(p);
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory creating the thread pool");
  }
  for (int i = 0; i < threads; i++) atomic_init(&p->cur[i].c, 0);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->done, NULL);
  atomic_init(&p->ticket, 0);
  atomic_init(&p->stop, false);
  atomic_init(&p->left, 0);
  atomic_init(&p->busy, false);
  atomic_init(&p->caller_cpu, -1);
#if POOL_STEP_ASIDE
  atomic_init(&p->can_move, sched_getaffinity(0, sizeof p->allowed, &p->allowed) == 0);
#endif
  p->n = 1;
  for (int i = 1; i < threads; i++) {
    p->wargs[i].p = p;
    p->wargs[i].self = (size_t)i;
    atomic_init(&p->wargs[i].cpu, -1);
    if (pthread_create(&p->workers[i - 1], NULL, worker_main, &p->wargs[i]) != 0) break;
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
  kiln__free(p->wargs);
  kiln__aligned_free(p->cur);
  kiln__aligned_free(p);
}

int kiln__pool_threads(const kiln__pool *p) { return p ? p->n : 1; }

/* Runs a job of n units on the pool (busy claimed by take_pool): fn, or fn_slot. */
static void run_job(kiln__pool *p, size_t n, kiln__range_fn fn, kiln__range_slot_fn fn_slot,
                    void *arg) {
  /* A few chunks per thread balance uneven work without much claiming traffic. Their sizes
     differ by at most one unit, the larger ones spread out, and their count is a multiple of
     the threads where n allows, so each thread's range holds its share of the units to within
     one: a job's units usually cost the same (GEMM tiles, rows), and rounding the size up
     instead (14 tiles -> 7 chunks of 2) left one thread a chunk more, 4 against 3 (SqueezeNet's
     classifier GEMM). Up to 8 units per thread each unit is a chunk. */
  size_t chunks = n <= (size_t)p->n * 8 ? n : (size_t)p->n * 4;
  chunks = KILN__MIN(chunks, (size_t)CHUNKS_MAX);
  p->fn = fn;
  p->fn_slot = fn_slot;
  p->arg = arg;
  p->total = n;
  p->chunks = chunks;
  atomic_store_explicit(&p->left, chunks, memory_order_relaxed);
  uint64_t gen = (t_gen(atomic_load_explicit(&p->ticket, memory_order_relaxed)) + 1) & 0xffffffffu;
  for (size_t t = 0, T = (size_t)p->n; t < T; t++) /* thread t's chunks [t C / T, (t+1) C / T) */
    atomic_store_explicit(&p->cur[t].c,
                          gen << 32 | (uint64_t)(t * chunks / T) << 16 | (t + 1) * chunks / T,
                          memory_order_relaxed);
  /* A worker last seen on this CPU is moved off it before it is woken (move_off). */
  int me = current_cpu();
  for (int w = 1; me >= 0 && w < p->n; w++)
    if (atomic_load_explicit(&p->wargs[w].cpu, memory_order_relaxed) == me)
      move_off(p, (size_t)w, p->workers[w - 1], me);
  atomic_store_explicit(&p->caller_cpu, me, memory_order_relaxed);
  atomic_store_explicit(&p->ticket, gen << 32, memory_order_release);
  /* A worker checks the ticket under mu before it sleeps, so taking mu here either finds it
     asleep (and wakes it) or lets it see the new job. Spinning workers need no wake. */
  pthread_mutex_lock(&p->mu);
  if (p->sleepers > 0) pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  run_chunks(p, 0);
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

/* Whether n units go to the pool (its busy flag now claimed): not without a pool or a second
   thread, not for one unit, and not while a job runs (a nested or concurrent call runs inline). */
static bool take_pool(kiln__pool *p, size_t n) {
  bool idle = false;
  return p && p->n > 1 && n > 1 && atomic_compare_exchange_strong(&p->busy, &idle, true);
}

void kiln__parallel_for(kiln__pool *p, size_t n, kiln__range_fn fn, void *arg) {
  if (n == 0) return;
  if (take_pool(p, n)) run_job(p, n, fn, NULL, arg);
  else fn(arg, 0, n);
}

/* Inline the caller runs everything as slot 0: a kernel passing its pool runs no nested
   parallel_for inside a slot's work. */
void kiln__parallel_for_slots(kiln__pool *p, size_t n, kiln__range_slot_fn fn, void *arg) {
  if (n == 0) return;
  if (take_pool(p, n)) run_job(p, n, NULL, fn, arg);
  else fn(arg, 0, n, 0);
}

bool kiln__pool_pin_worker(kiln__pool *p, int w, int cpu) {
#if POOL_STEP_ASIDE
  if (!p || w < 1 || w >= p->n || cpu < 0 || cpu >= CPU_SETSIZE) return false;
  cpu_set_t m;
  CPU_ZERO(&m);
  CPU_SET(cpu, &m);
  return pthread_setaffinity_np(p->workers[w - 1], sizeof m, &m) == 0;
#else
  (void)p, (void)w, (void)cpu;
  return false;
#endif
}
