#include "core/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>

struct kiln__pool {
  int n;                 /* total threads including the caller */
  pthread_t *workers;
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  uint64_t generation;   /* bumped for every job */
  bool stop;
  /* the current job */
  kiln__range_fn fn;
  void *arg;
  size_t total;
  atomic_size_t next;    /* next chunk index to claim */
  size_t chunks, chunk_size;
  int pending;           /* workers still in the current job */
  atomic_bool busy;      /* a job is running: a nested parallel_for runs inline */
};

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
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->stop && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
    if (p->stop) break;
    seen = p->generation;
    pthread_mutex_unlock(&p->mu);
    run_chunks(p);
    pthread_mutex_lock(&p->mu);
    if (--p->pending == 0) pthread_cond_signal(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
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
  p->stop = true;
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
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->arg = arg;
  p->total = n;
  p->chunk_size = (n + chunks - 1) / chunks;
  p->chunks = (n + p->chunk_size - 1) / p->chunk_size;
  atomic_store(&p->next, 0);
  p->pending = p->n - 1;
  p->generation++;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  run_chunks(p);
  pthread_mutex_lock(&p->mu);
  while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
  atomic_store(&p->busy, false);
}
