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
/* For tests: pins worker w (1 .. threads - 1) to one CPU, as a guest scheduler that packs threads
   might place it; false where unsupported (not Linux) or on failure. */
bool kiln__pool_pin_worker(kiln__pool *p, int w, int cpu);

/* `p`, or NULL (run inline) when a job has less than KILN__PAR_MIN_WORK units of work (element
   visits or multiply-adds, ~10 us on one core): a hand-off to the workers costs a few
   microseconds and a wake-up much more, so tiny nodes (digits_cnn's) run faster on one thread. */
#define KILN__PAR_MIN_WORK 32768.0
static inline kiln__pool *kiln__pool_for(kiln__pool *p, double work) {
  return work < KILN__PAR_MIN_WORK ? NULL : p;
}

/* A block length for work of `len` units cut into blocks, `copies` times over (images), and
   shared out to `threads`: of `max` and the multiples of `step` down to max / 2, the one that
   leaves the busiest thread the fewest units (the larger on a tie). Cutting at `max` alone left
   one thread a block more than the other: 576 GEMM rows as nine blocks of 64, 112 rows of a
   depthwise + pointwise pair as seven bands of 16. */
static inline size_t kiln__pool_block(size_t len, size_t max, size_t step, size_t copies,
                                      size_t threads) {
  size_t best = max, cost = (size_t)-1;
  for (size_t b = max; b >= 1 && 2 * b >= max; b = b % step ? b / step * step : b - step) {
    size_t blocks = copies * ((len + b - 1) / b), c = (blocks + threads - 1) / threads * b;
    if (c < cost) cost = c, best = b;
    if (b <= step) break;
  }
  return best;
}

#endif
