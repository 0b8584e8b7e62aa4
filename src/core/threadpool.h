/* Kiln's intra-op thread pool: persistent workers that split a range between them.
   Workers spin briefly after a job, then sleep on a condition variable, so an idle pool costs
   no CPU. One job at a time per pool (a session owns its pool): a parallel_for called while a job
   runs, from inside it or from another thread, runs inline on the caller. */
#ifndef KILN_CORE_THREADPOOL_H
#define KILN_CORE_THREADPOOL_H

#include "ir/op.h"

typedef struct kiln__pool kiln__pool;

/* Creates a pool that runs jobs on `threads` threads in total (the caller counts as one).
   threads <= 1 returns NULL, which kiln__parallel_for treats as "run inline". */
kiln_status kiln__pool_create(int threads, kiln__pool **out, kiln_error *err);
void kiln__pool_free(kiln__pool *p);
int kiln__pool_threads(const kiln__pool *p);

/* `p`, or NULL (run inline) when a job has less than KILN__PAR_MIN_WORK units of work (element
   visits or multiply-adds, ~10 us on one core): a hand-off to the workers costs a few
   microseconds and a wake-up much more, so tiny nodes (digits_cnn's) run faster on one thread. */
#define KILN__PAR_MIN_WORK 32768.0
static inline kiln__pool *kiln__pool_for(kiln__pool *p, double work) {
  return work < KILN__PAR_MIN_WORK ? NULL : p;
}

#endif
