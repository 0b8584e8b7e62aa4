/* The "cpu" backend's GEMM side against its oracles, for every ISA this machine runs:
 *   - the packed SGEMM against a double-precision product over many shapes (odd sizes, edge
 *     tiles, k = 0 and 1, k across several cache blocks), transposes, row strides, pre-packed
 *     operands, alpha, accumulation and each epilogue, serially and on a 2-thread pool;
 *   - A packed at run time against its documented layout, with exact-size buffers (ASan);
 *   - the MatMul, Gemm and Conv kernel rows against the reference kernels on one-node graphs
 *     (batched broadcasting, Gemm's C forms, strides, padding, dilation, groups, auto_pad), and
 *     the direct depthwise Conv (3x3, 5x5, other kernels, strides 1-3, pads, auto_pad), MaxPool
 *     (strides, pads, ceil_mode, auto_pad, NaN) and GlobalAveragePool; the reference run() fails
 *     while the cpu kernel runs, so a silent fallback fails the test;
 *   - whole models (digits CNN, transformer block) on {"cpu"} against {"ref"}, with nodes really
 *     dispatched to "cpu";
 *   - KILN_ISA: unknown names and ISAs the CPU lacks are errors. */
#if defined(__linux__)
#define _GNU_SOURCE 1 /* sched_getcpu, cpu_set_t */
#include <sched.h>
#endif
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "core/threadpool.h"
#include "kernels/cpu/bgemm.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/sgemm.h"
#include "kiln_test_ir.h"

static const char *models_dir; /* argv[1] */
static const char *tests_dir;  /* argv[2] */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}
static size_t rnd_in(size_t lo, size_t hi) { return lo + rnd() % (hi - lo + 1); }
static float rnd_f(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; }
static void fill(float *p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = rnd_f();
}

static void force_isa(kiln__isa isa) { setenv("KILN_ISA", kiln__isa_name(isa), 1); }

/* ---- the thread pool ------------------------------------------------------------------------- */

typedef struct count_job {
  kiln__pool *pool;
  unsigned *hits; /* one counter per index */
  size_t n;
  bool nest;      /* each range also runs a nested parallel_for, which must run inline */
  unsigned *inner;
  size_t lo, hi;  /* the shortest and longest range seen (only without nesting) */
} count_job;

static void inner_range(void *arg, size_t b, size_t e) {
  unsigned *c = arg;
  for (size_t i = b; i < e; i++) __atomic_fetch_add(&c[i], 1u, __ATOMIC_RELAXED);
}

/* *p = min or max (*p, v), for ranges run on several threads at once. */
static void atomic_bound(size_t *p, size_t v, bool max) {
  size_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
  while ((max ? v > cur : v < cur) &&
         !__atomic_compare_exchange_n(p, &cur, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
  }
}

static void count_range(void *arg, size_t b, size_t e) {
  count_job *j = arg;
  for (size_t i = b; i < e; i++) __atomic_fetch_add(&j->hits[i], 1u, __ATOMIC_RELAXED);
  if (j->nest) kiln__parallel_for(j->pool, 3, inner_range, j->inner + 3 * b);
  else {
    atomic_bound(&j->lo, e - b, false);
    atomic_bound(&j->hi, e - b, true);
  }
}

typedef struct slot_job {
  unsigned *hits;
  size_t threads;
  int busy[4];   /* ranges running on each slot now: a slot is one thread's scratch */
  int overlap;   /* set when two ranges ran on one slot at once */
  int bad_slot;  /* set when a slot was not below the thread count */
} slot_job;

static void slot_range(void *arg, size_t b, size_t e, size_t slot) {
  slot_job *j = arg;
  if (slot >= j->threads) {
    __atomic_store_n(&j->bad_slot, 1, __ATOMIC_RELAXED);
    return;
  }
  if (__atomic_fetch_add(&j->busy[slot], 1, __ATOMIC_ACQ_REL) != 0)
    __atomic_store_n(&j->overlap, 1, __ATOMIC_RELAXED);
  for (size_t i = b; i < e; i++) __atomic_fetch_add(&j->hits[i], 1u, __ATOMIC_RELAXED);
  __atomic_fetch_sub(&j->busy[slot], 1, __ATOMIC_ACQ_REL);
}

/* kiln__parallel_for_slots: every index once, each range told a slot below the thread count that
   no other range holds at the same time (kernels index per-thread scratch with it), with and
   without a pool. */
static void pool_slots_are_threads(void **st) {
  (void)st;
  for (int threads = 1; threads <= 3; threads++) {
    kiln__pool *pool = NULL;
    kiln_error err = {0};
    assert_int_equal(kiln__pool_create(threads, &pool, &err), KILN_OK);
    unsigned *hits = calloc(600, sizeof *hits);
    for (int it = 0; it < 2000; it++) {
      size_t n = 1 + (size_t)(it * 7919) % (it % 2 ? 40 : 600);
      slot_job j = {hits, (size_t)threads, {0}, 0, 0};
      kiln__parallel_for_slots(pool, n, slot_range, &j);
      assert_int_equal(j.bad_slot, 0);
      assert_int_equal(j.overlap, 0);
      for (size_t i = 0; i < n; i++) {
        if (hits[i] != 1) fail_msg("job %d (n=%zu): index %zu ran %u times", it, n, i, hits[i]);
        hits[i] = 0;
      }
    }
    free(hits);
    kiln__pool_free(pool);
  }
}

/* Every index of every job runs exactly once, for job sizes around the chunking boundaries,
   back to back (workers spinning) and after pauses long enough for them to sleep. */
static void pool_runs_each_index_once(void **st) {
  (void)st;
  for (int threads = 2; threads <= 3; threads++) {
    kiln__pool *pool = NULL;
    kiln_error err = {0};
    assert_int_equal(kiln__pool_create(threads, &pool, &err), KILN_OK);
    assert_int_equal(kiln__pool_threads(pool), threads);
    enum { NMAX = 5000 };
    unsigned *hits = calloc(NMAX, sizeof *hits), *inner = calloc(3 * NMAX, sizeof *inner);
    for (int it = 0; it < 3000; it++) {
      count_job j = {pool, hits, 1 + (size_t)(it * 7919) % (it % 3 ? 40 : NMAX), it % 7 == 0,
                     inner, SIZE_MAX, 0};
      kiln__parallel_for(pool, j.n, count_range, &j);
      for (size_t i = 0; i < j.n; i++) {
        if (hits[i] != 1) fail_msg("job %d (n=%zu): index %zu ran %u times", it, j.n, i, hits[i]);
        hits[i] = 0;
      }
      /* Chunks differ by one index at most (equal-cost units split evenly between threads),
         and up to 8 indices per thread each index is its own chunk. */
      if (!j.nest) {
        if (j.hi > j.lo + 1) fail_msg("job %d (n=%zu): ranges of %zu to %zu", it, j.n, j.lo, j.hi);
        if (j.n <= 8 * (size_t)threads) assert_int_equal(j.hi, 1);
      }
      if (j.nest) {
        /* A range starting at b ran a complete nested job over inner[3b .. 3b+2] (the pool was
           busy, so inline); the first range starts at 0. */
        assert_true(inner[0] == 1 && inner[1] == 1 && inner[2] == 1);
        for (size_t i = 0; i < j.n; i++) {
          assert_true(inner[3 * i] <= 1);
          assert_true(inner[3 * i + 1] == inner[3 * i] && inner[3 * i + 2] == inner[3 * i]);
          inner[3 * i] = inner[3 * i + 1] = inner[3 * i + 2] = 0;
        }
      }
      if (it % 500 == 0) {
        struct timespec ts = {0, 200000}; /* 200 us: the workers go to sleep */
        nanosleep(&ts, NULL);
      }
    }
    free(hits), free(inner);
    kiln__pool_free(pool);
  }
}

typedef struct caller_arg {
  kiln__pool *pool;
  unsigned *hits;
  int bad;
} caller_arg;

static void *caller_main(void *arg) {
  caller_arg *a = arg;
  for (int it = 0; it < 2000; it++) {
    size_t n = 1 + (size_t)it % 300;
    count_job j = {a->pool, a->hits, n, false, NULL, SIZE_MAX, 0};
    kiln__parallel_for(a->pool, n, count_range, &j);
    for (size_t i = 0; i < n; i++) {
      if (a->hits[i] != 1) a->bad++;
      a->hits[i] = 0;
    }
  }
  return NULL;
}

/* Two threads sharing one pool: one of them runs inline while the other's job is on the pool;
   neither loses nor repeats an index. */
static void pool_tolerates_concurrent_callers(void **st) {
  (void)st;
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  caller_arg a[2] = {{pool, calloc(300, sizeof(unsigned)), 0},
                     {pool, calloc(300, sizeof(unsigned)), 0}};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, caller_main, &a[1]), 0);
  caller_main(&a[0]);
  pthread_join(t, NULL);
  assert_int_equal(a[0].bad, 0);
  assert_int_equal(a[1].bad, 0);
  free(a[0].hits), free(a[1].hits);
  kiln__pool_free(pool);
}

#if defined(__linux__)
typedef struct cpu_job {
  int a;             /* the caller's CPU */
  int cpu[2];        /* the CPU slot s last ran a chunk on, -1 none */
  unsigned runs[2];  /* chunks run per slot */
  unsigned on_a[2];  /* of them on CPU a */
} cpu_job;

static void cpu_range(void *arg, size_t b, size_t e, size_t slot) {
  cpu_job *j = arg;
  for (size_t i = b; i < e; i++) {
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do clock_gettime(CLOCK_MONOTONIC, &t);
    while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 20000);
    j->cpu[slot] = sched_getcpu();
    j->runs[slot]++;
    j->on_a[slot] += j->cpu[slot] == j->a;
  }
}

/* A worker on the caller's CPU is moved off it: pinned there (as a guest kernel that packs
   threads onto one vCPU places it), it leaves within a few jobs and then runs its share on
   another CPU, never on the caller's. Without the move it would run there or not at all. */
static void pool_moves_worker_off_callers_cpu(void **st) {
  (void)st;
  cpu_set_t all, one;
  assert_int_equal(sched_getaffinity(0, sizeof all, &all), 0);
  int a = -1;
  for (int c = 0; c < CPU_SETSIZE && a < 0; c++)
    if (CPU_ISSET(c, &all)) a = c;
  if (CPU_COUNT(&all) < 2) {
    fprintf(stderr, "pool_moves_worker_off_callers_cpu: one CPU, nothing to move to\n");
    return;
  }
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  CPU_ZERO(&one);
  CPU_SET(a, &one);
  assert_int_equal(sched_setaffinity(0, sizeof one, &one), 0); /* the caller stays on a */
  assert_true(kiln__pool_pin_worker(pool, 1, a));
  int left = -1; /* the first job after which the worker ran a chunk off a */
  for (int it = 0; it < 400 && left < 0; it++) {
    cpu_job j = {a, {-1, -1}, {0, 0}, {0, 0}};
    kiln__parallel_for_slots(pool, 32, cpu_range, &j);
    if (j.runs[1] > j.on_a[1]) left = it;
  }
  unsigned worker = 0, on_a = 0;
  for (int it = 0; left >= 0 && it < 20; it++) {
    cpu_job j = {a, {-1, -1}, {0, 0}, {0, 0}};
    kiln__parallel_for_slots(pool, 32, cpu_range, &j);
    worker += j.runs[1];
    on_a += j.on_a[1];
  }
  assert_int_equal(sched_setaffinity(0, sizeof all, &all), 0);
  kiln__pool_free(pool);
  if (left < 0) fail_msg("the worker never left the caller's CPU %d in 400 jobs", a);
  assert_true(worker > 0);
  assert_int_equal(on_a, 0);
}
#endif

/* ---- SGEMM against doubles ------------------------------------------------------------------- */

typedef struct gemm_case {
  size_t m, n, k;
  bool ta, tb, pack_a, pack_b, accumulate;
  bool in_place;              /* b_in_place: B may be read unpacked */
  size_t pad_a, pad_b, pad_c; /* extra row stride */
  float alpha;
  int ep; /* 0 none, 1 bias per column, 2 bias per row, 3 residual, 4 relu + bias, 5 clip,
             6 relu + bias per row, 7 clip + bias per row (a conv's: AVX2's one-pass store) */
} gemm_case;

#define EPILOGUES 8

static void check_case(kiln__isa isa, kiln__pool *pool, const gemm_case *t) {
  size_t ar = t->ta ? t->k : t->m, ac = t->ta ? t->m : t->k;
  size_t br = t->tb ? t->n : t->k, bc = t->tb ? t->k : t->n;
  size_t lda = ac + t->pad_a, ldb = bc + t->pad_b, ldc = t->n + t->pad_c;
  float *a = malloc((ar * lda + 1) * sizeof *a), *b = malloc((br * ldb + 1) * sizeof *b);
  float *c = malloc((t->m * ldc + 1) * sizeof *c), *c0 = malloc((t->m * ldc + 1) * sizeof *c0);
  float *bias = malloc((t->m + t->n) * sizeof *bias), *res = malloc((t->m * t->n + 1) * sizeof *res);
  fill(a, ar * lda);
  fill(b, br * ldb);
  fill(c0, t->m * ldc);
  fill(bias, t->m + t->n);
  fill(res, t->m * t->n);
  memcpy(c, c0, t->m * ldc * sizeof *c);
  kiln__sgemm_args g = {.m = t->m, .n = t->n, .k = t->k, .a = a, .lda = lda, .trans_a = t->ta,
                        .b = b, .ldb = ldb, .trans_b = t->tb, .c = c, .ldc = ldc,
                        .alpha = t->alpha, .accumulate = t->accumulate,
                        .b_in_place = t->in_place};
  if (t->ep == 1 || t->ep == 4) g.ep.bias = bias;
  if (t->ep == 2 || t->ep >= 6) g.ep.bias = bias, g.ep.bias_per_row = true;
  if (t->ep == 3) g.ep.residual = res, g.ep.ldr = t->n;
  if (t->ep == 4 || t->ep == 6) g.ep.act = KILN__ACT_RELU;
  if (t->ep == 5 || t->ep == 7) g.ep.act = KILN__ACT_CLIP, g.ep.lo = -0.5f, g.ep.hi = 0.25f;
  kiln__sgemm_packed pa = {0}, pb = {0};
  kiln_error err = {0};
  if (t->pack_a && t->m && t->k) {
    assert_int_equal(kiln__sgemm_pack_a(isa, t->ta, t->m, t->k, a, lda, &pa, &err), KILN_OK);
    g.pa = &pa;
  }
  if (t->pack_b && t->n && t->k) {
    assert_int_equal(kiln__sgemm_pack_b(isa, t->tb, t->k, t->n, b, ldb, &pb, &err), KILN_OK);
    g.pb = &pb;
  }
  kiln__sgemm_run(pool, isa, &g);
  for (size_t i = 0; i < t->m; i++) {
    for (size_t j = 0; j < t->n; j++) {
      double acc = 0, mag = 0;
      for (size_t p = 0; p < t->k; p++) {
        double av = t->ta ? a[p * lda + i] : a[i * lda + p];
        double bv = t->tb ? b[j * ldb + p] : b[p * ldb + j];
        acc += av * bv;
        mag += fabs(av * bv);
      }
      double v = t->alpha * acc;
      mag *= fabs(t->alpha);
      if (t->accumulate) v += c0[i * ldc + j], mag += fabs(c0[i * ldc + j]);
      if (t->ep == 1 || t->ep == 4) v += bias[j], mag += fabs(bias[j]);
      if (t->ep == 2 || t->ep >= 6) v += bias[i], mag += fabs(bias[i]);
      if (t->ep == 3) v += res[i * t->n + j], mag += fabs(res[i * t->n + j]);
      if (t->ep == 4 || t->ep == 6) v = v > 0 ? v : 0;
      if (t->ep == 5 || t->ep == 7) v = v < -0.5 ? -0.5 : (v > 0.25 ? 0.25 : v);
      double got = c[i * ldc + j];
      if (!(fabs(got - v) <= 1e-5 * mag + 1e-6)) {
        fail_msg("%s m=%zu n=%zu k=%zu ldb=%zu ta=%d tb=%d pa=%d pb=%d inplace=%d acc=%d ep=%d: "
                 "C[%zu][%zu] = %.7g, expected %.7g",
                 kiln__isa_name(isa), t->m, t->n, t->k, ldb, t->ta, t->tb, t->pack_a, t->pack_b,
                 t->in_place, t->accumulate, t->ep, i, j, got, v);
      }
    }
    /* The padding between rows is never written. */
    for (size_t j = t->n; j < ldc; j++) assert_true(c[i * ldc + j] == c0[i * ldc + j]);
  }
  kiln__sgemm_packed_free(&pa);
  kiln__sgemm_packed_free(&pb);
  free(a), free(b), free(c), free(c0), free(bias), free(res);
}

static void sgemm_matches_double_reference(void **st) {
  (void)st;
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  /* {3, 1100, 20}: a pre-packed B (serial) wider than a tile's 1024-column cap (NEON: 1020,
     whole 12-wide panels) */
  static const size_t edge[][3] = {
      {1, 1, 1},    {1, 1000, 64}, {6, 16, 1},   {7, 17, 3},     {5, 15, 256},  {12, 32, 257},
      {72, 128, 256}, {73, 129, 513}, {8, 32, 0}, {3, 5, 0},     {128, 256, 256}, {150, 3, 40},
      {2, 300, 700}, {64, 64, 64},  {13, 31, 129}, {200, 140, 30}, {3, 1100, 20},
      {1, 1000, 1280}, {1, 25, 257}, /* m = 1: a classifier's Gemm, the one-row kernel */
      /* 2 or 3 column tiles evened out on 2 threads (a 13x13 plane: 169 = 96 + 73) */
      {100, 169, 70}, {7, 385, 33}, {150, 300, 20},
      /* A blocks evened out on 2 threads (128 rows: 66 + 62; 145: 54 + 54 + 37) */
      {128, 384, 100}, {145, 64, 33}};
  for (int isa = 0; isa < KILN__ISA_COUNT; isa++) {
    if (!kiln__isa_supported((kiln__isa)isa)) continue;
    for (size_t e = 0; e < KILN__ARRAY_LEN(edge); e++)
      for (int v = 0; v < EPILOGUES; v++) {
        gemm_case t = {edge[e][0], edge[e][1], edge[e][2], .alpha = 1.0f, .ep = v};
        t.pack_a = v == 2, t.pack_b = v == 1 || v == 4;
        check_case((kiln__isa)isa, v & 1 ? pool : NULL, &t);
      }
    for (int r = 0; r < 250; r++) {
      gemm_case t = {rnd_in(1, 90), rnd_in(1, 150), rnd_in(0, 300)};
      if (r % 10 == 0) t.k = rnd_in(257, 600);
      t.ta = rnd() & 1, t.tb = rnd() & 1, t.pack_a = rnd() & 1, t.pack_b = rnd() & 1;
      if (t.pack_a && t.pack_b) t.pack_a = false; /* only one operand is ever a weight */
      t.accumulate = rnd() % 4 == 0;
      t.pad_a = rnd() % 3 ? 0 : rnd_in(1, 9);
      t.pad_b = rnd() % 3 ? 0 : rnd_in(1, 9);
      t.pad_c = rnd() % 3 ? 0 : rnd_in(1, 9);
      t.alpha = rnd() % 4 ? 1.0f : rnd_f() * 2.0f;
      t.ep = (int)(rnd() % EPILOGUES);
      t.in_place = rnd() & 1;
      check_case((kiln__isa)isa, r & 1 ? pool : NULL, &t);
    }
  }
  kiln__pool_free(pool);
}

/* B read in place (a pointwise conv's input planes): the shapes where the driver takes it (m <=
   64, rows that spread over L1's sets or a short k) and those where it packs after all (m > 64,
   rows a multiple of 256 bytes apart with k past what L1's ways hold), the short products over
   rows pages apart that prefetch (m <= 32, k <= 64, ldb >= 1024), tiles wider than 128 columns,
   with edge panels (n not a multiple of 16), k across KC blocks, every epilogue, serially and on
   2 threads. */
static void sgemm_b_in_place_matches_double_reference(void **st) {
  (void)st;
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  /* m, n, k, pad_b */
  static const size_t shapes[][4] = {
      {16, 3025, 128, 0}, {24, 49, 96, 0},  {32, 729, 300, 0},  {64, 169, 512, 0},
      {5, 33, 7, 0},      {64, 64, 40, 0},  {20, 128, 100, 0},  {20, 128, 200, 0},
      {6, 16, 1, 0},      {7, 17, 257, 5},  {65, 200, 70, 0},   {100, 49, 600, 0},
      {1, 1000, 64, 0},   {64, 192, 130, 0}, {13, 256, 260, 0}, {40, 15, 33, 3},
      /* rows 4 KiB or more apart with m <= 32, k <= 64: the prefetching kernels */
      {16, 1030, 32, 0},  {32, 3136, 64, 0}, {3, 1024, 16, 0},  {17, 2000, 1, 0},
      {8, 1000, 40, 30},  {31, 1040, 65, 0},
      /* column tiles evened out on 2 threads: 2 and 3 tiles with an edge panel; rows cut too
         where the column tiles are fewer than 2 per thread (one tile, two, a short last block) */
      {48, 169, 384, 0},  {16, 300, 48, 7}, {64, 196, 384, 0}, {40, 49, 576, 0}, {88, 100, 64, 0},
      /* tiles wider than 128 columns, row tiles outer (short k, n of 3 such tiles per thread):
         1024 columns, serial only; 1024 on 2 threads too; 400 (k = 40); all with edge panels */
      {24, 3100, 16, 0},  {96, 12600, 16, 0}, {40, 3000, 40, 5}};
  for (int isa = 0; isa < KILN__ISA_COUNT; isa++) {
    if (!kiln__isa_supported((kiln__isa)isa)) continue;
    for (size_t e = 0; e < KILN__ARRAY_LEN(shapes); e++)
      for (int v = 0; v < EPILOGUES; v++) {
        gemm_case t = {shapes[e][0], shapes[e][1], shapes[e][2], .in_place = true,
                       .pad_b = shapes[e][3], .alpha = 1.0f, .ep = v};
        t.pack_a = v != 3, t.accumulate = v == 5;
        check_case((kiln__isa)isa, v & 1 ? pool : NULL, &t);
      }
  }
  kiln__pool_free(pool);
}

/* Every live width of an edge panel, for each ISA: the AVX-512 kernel computes 1-4 columns as
   rows-in-lanes, 5-16 as a half tile, 17-20 as a half tile and 1-4 more, 21-31 as the full tile;
   AVX2's 16-wide panel has its own narrow cases. m = 8 and 11 (a full and a short row tile),
   k within one KC block and across two, every epilogue, B packed and read in place. */
static void sgemm_edge_panels_match_double_reference(void **st) {
  (void)st;
  static const size_t ns[] = {49, 52, 196, 785};
  for (int isa = 0; isa < KILN__ISA_COUNT; isa++) {
    if (!kiln__isa_supported((kiln__isa)isa)) continue;
    for (size_t n = 1; n <= 40 + KILN__ARRAY_LEN(ns); n++)
      for (int v = 0; v < 2 * EPILOGUES; v++) {
        size_t nn = n <= 40 ? n : ns[n - 41];
        gemm_case t = {v % 2 ? 11 : 8, nn, v % 4 < 2 ? 37 : 260, .pack_a = true,
                       .in_place = v >= EPILOGUES, .alpha = 1.0f, .ep = v % EPILOGUES};
        check_case((kiln__isa)isa, NULL, &t);
      }
  }
}

/* A short product writing a large C (k <= 32, rows 4 KiB or more apart, 256 Ki floats or more:
   a stem conv's shape), where the packed kernel prefetches C's rows: edge panels, a last row
   tile under 6 rows, padded C rows, k at and around the bound, every epilogue, accumulating,
   serially and on 2 threads; and the shapes just outside the rule, which do not prefetch. */
static void sgemm_c_prefetch_matches_double_reference(void **st) {
  (void)st;
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  /* m, n, k, pad_c */
  static const size_t shapes[][4] = {
      {64, 4100, 27, 0}, {32, 8193, 27, 3}, {13, 20171, 32, 0}, {70, 4097, 9, 0},
      {5, 60000, 1, 0},  {64, 4100, 33, 0}, {8, 2000, 27, 0}};
  for (int isa = 0; isa < KILN__ISA_COUNT; isa++) {
    if (!kiln__isa_supported((kiln__isa)isa)) continue;
    for (size_t e = 0; e < KILN__ARRAY_LEN(shapes); e++)
      for (int v = 0; v < EPILOGUES; v++) {
        gemm_case t = {shapes[e][0], shapes[e][1], shapes[e][2], .pad_c = shapes[e][3],
                       .alpha = 1.0f, .ep = v};
        t.pack_a = v != 3, t.pack_b = v == 4, t.accumulate = v == 5;
        check_case((kiln__isa)isa, v & 1 ? pool : NULL, &t);
      }
  }
  kiln__pool_free(pool);
}

/* A packed at run time (an activation, untransposed): the layout sgemm.h documents, checked
   element by element against A itself, for m around the panel height (full panels and a zero-
   padded last one), k below, at and past the vector packers' width and across KC blocks, and
   lda > k (a strided view). A and the packed memory are exactly as large as they must be, so
   ASan catches a read past A's last element or a write past the last panel. Then the same shapes
   through the whole SGEMM against doubles. */
static void sgemm_packs_a_exactly(void **st) {
  (void)st;
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  static const size_t ms[] = {1, 5, 6, 7, 8, 12, 13, 17, 72, 75};
  static const size_t ks[] = {1, 3, 4, 5, 7, 8, 9, 13, 255, 256, 259, 517};
  for (int isa = 0; isa < KILN__ISA_COUNT; isa++) {
    if (!kiln__isa_supported((kiln__isa)isa)) continue;
    size_t mr = kiln__sgemm_pack_a_floats((kiln__isa)isa, 1, 1); /* one padded row */
    assert_true(mr >= 4);
    for (size_t im = 0; im < KILN__ARRAY_LEN(ms); im++)
      for (size_t ik = 0; ik < KILN__ARRAY_LEN(ks); ik++)
        for (size_t pad = 0; pad < 7; pad += 3) {
          size_t m = ms[im], k = ks[ik], lda = k + pad, mpad = (m + mr - 1) / mr * mr;
          size_t na = (m - 1) * lda + k, nmem = kiln__sgemm_pack_a_floats((kiln__isa)isa, m, k);
          assert_int_equal(nmem, mpad * k);
          float *a = malloc(na * sizeof *a), *mem = malloc(nmem * sizeof *mem);
          fill(a, na);
          for (size_t i = 0; i < nmem; i++) mem[i] = NAN;
          kiln__sgemm_packed out;
          kiln__sgemm_pack_a_into(ik & 1 ? pool : NULL, (kiln__isa)isa, false, m, k, a, lda, mem,
                                  &out);
          for (size_t i = 0; i < mpad; i++)
            for (size_t p = 0; p < k; p++) {
              size_t p0 = p / KILN__SGEMM_KC * KILN__SGEMM_KC;
              size_t kc = k - p0 < KILN__SGEMM_KC ? k - p0 : KILN__SGEMM_KC;
              float want = i < m ? a[i * lda + p] : 0.0f;
              float got = mem[p0 * mpad + i / mr * mr * kc + (p - p0) * mr + i % mr];
              if (!(got == want))
                fail_msg("%s m=%zu k=%zu lda=%zu: A[%zu][%zu] packed as %g, expected %g",
                         kiln__isa_name((kiln__isa)isa), m, k, lda, i, p, got, want);
            }
          free(a), free(mem);
          gemm_case t = {m, 1 + (m * 7 + k) % 40, k, .pad_a = pad, .alpha = 1.0f};
          check_case((kiln__isa)isa, ik & 1 ? pool : NULL, &t);
        }
  }
  kiln__pool_free(pool);
}

static void isa_override_is_checked(void **st) {
  (void)st;
  kiln__isa isa;
  kiln_error err = {0};
  setenv("KILN_ISA", "sse9", 1);
  assert_int_equal(kiln__isa_select(&isa, &err), KILN_INVALID_ARGUMENT);
  for (int i = 0; i < KILN__ISA_COUNT; i++) {
    force_isa((kiln__isa)i);
    kiln_status s = kiln__isa_select(&isa, &err);
    if (kiln__isa_supported((kiln__isa)i)) {
      assert_int_equal(s, KILN_OK);
      assert_int_equal(isa, i);
    } else {
      assert_int_equal(s, KILN_UNSUPPORTED);
    }
  }
  unsetenv("KILN_ISA");
  assert_int_equal(kiln__isa_select(&isa, &err), KILN_OK);
  assert_true(kiln__isa_supported(isa));
#ifdef __aarch64__
  assert_int_equal(isa, KILN__ISA_NEON); /* the default there; generic only when forced */
#else
  assert_int_not_equal(isa, KILN__ISA_NEON);
#endif
}

/* ---- kernel rows against the reference kernels on one-node graphs --------------------------- */

typedef struct onenode {
  kiln__graph *g;
  kiln__node *n;
  kiln_tensor in[3];
  int n_in;
  bool exact; /* outputs must equal the reference's exactly (NaN: any NaN; +0 == -0) */
} onenode;


/* A graph with one node `op` whose inputs have the given shapes; inputs flagged in `init` are
   initializers. Data is random. */
static void onenode_make(onenode *o, const char *op, int n_in, const int *ranks,
                         const int64_t dims[][KILN_MAX_RANK], unsigned init) {
  memset(o, 0, sizeof *o);
  o->g = kiln__graph_new();
  o->n_in = n_in;
  static const char *names[] = {"in0", "in1", "in2"};
  int idx[3];
  for (int i = 0; i < n_in; i++) idx[i] = kiln__graph_value(o->g, names[i]);
  int out = kiln__graph_value(o->g, "out");
  kiln_error err = {0};
  for (int i = 0; i < n_in; i++) {
    assert_int_equal(kiln_tensor_alloc(&o->in[i], KILN_DTYPE_FLOAT, ranks[i], dims[i], &err),
                     KILN_OK);
    fill(o->in[i].data, kiln_tensor_count(&o->in[i]));
    kiln__value *v = &o->g->values[idx[i]];
    v->dtype = KILN_DTYPE_FLOAT;
    if (init & (1u << i)) {
      v->is_initializer = true;
      assert_int_equal(kiln_tensor_alloc(&v->init, KILN_DTYPE_FLOAT, ranks[i], dims[i], &err),
                       KILN_OK);
      memcpy(v->init.data, o->in[i].data, kiln_tensor_nbytes(&o->in[i]));
    }
  }
  o->n = kiln__graph_add_node(o->g);
  o->n->op_type = kiln__strdup(op);
  o->n->domain = kiln__strdup("");
  o->n->name = kiln__strdup("node");
  o->n->opset = 17;
  o->n->n_in = n_in;
  o->n->in = kiln__malloc((size_t)n_in * sizeof(int));
  memcpy(o->n->in, idx, (size_t)n_in * sizeof(int));
  o->n->n_out = 1;
  o->n->out = kiln__malloc(sizeof(int));
  o->n->out[0] = out;
  o->n->attrs = kiln__calloc(8, sizeof(kiln__attr));
  o->n->op = kiln__op_find("", op);
  assert_non_null(o->n->op);
}

static void onenode_free(onenode *o) {
  for (int i = 0; i < o->n_in; i++) kiln_tensor_release(&o->in[i]);
  kiln__graph_free(o->g);
}

static kiln_status run_fails(kiln__kctx *c) {
  return kiln__fail(c->err, KILN_INTERNAL, "the cpu kernel fell back to the reference");
}

/* Runs the node on "cpu" (which must accept it and compute it itself) and on the reference
   kernel; compares. */
static void onenode_check(onenode *o, kiln__pool *pool) {
  const kiln__backend *cpu = &kiln__backend_cpu;
  assert_true(cpu->supports(o->n, o->g));
  void *state = NULL;
  kiln_error err = {0};
  assert_int_equal(cpu->prepare(o->n, o->g, &state, &err), KILN_OK);
  const kiln_tensor *ins[3] = {&o->in[0], &o->in[1], &o->in[2]};
  kiln_tensor y_cpu = {0}, y_ref = {0};
  kiln_tensor *outs[1] = {&y_cpu};
  kiln__kctx c = {.node = o->n, .n_in = o->n_in, .n_out = 1, .in = ins, .out = outs,
                  .pool = pool, .err = &err};
  assert_int_equal(o->n->op->infer(&c), KILN_OK);
  y_ref = y_cpu;
  size_t count = kiln_tensor_count(&y_cpu);
  y_cpu.data = malloc(count * sizeof(float) + 1);
  y_ref.data = malloc(count * sizeof(float) + 1);
  for (size_t i = 0; i < count; i++) ((float *)y_cpu.data)[i] = NAN; /* all must be written */
  c.scratch_bytes = cpu->scratch(&c, state);
  c.scratch = c.scratch_bytes ? malloc(c.scratch_bytes) : NULL;
  /* The reference run() fails while the cpu kernel runs: a silent fallback fails the test. */
  const kiln__op *ref_op = o->n->op;
  kiln__op fast_only = *ref_op;
  fast_only.run = run_fails;
  o->n->op = &fast_only;
  kiln_status st = cpu->execute(&c, state);
  o->n->op = ref_op;
  if (st != KILN_OK) fail_msg("%s: %s", o->n->op_type, err.message);
  free(c.scratch);
  outs[0] = &y_ref;
  c.pool = NULL;
  c.scratch_bytes = o->n->op->scratch ? o->n->op->scratch(&c) : 0;
  c.scratch = c.scratch_bytes ? malloc(c.scratch_bytes) : NULL;
  assert_int_equal(o->n->op->run(&c), KILN_OK);
  free(c.scratch);
  const float *a = y_cpu.data, *b = y_ref.data;
  for (size_t i = 0; i < count; i++)
    if (o->exact ? !(isnan(a[i]) ? isnan(b[i]) : a[i] == b[i])
                 : !(fabsf(a[i] - b[i]) <= 1e-4f * (1.0f + fabsf(b[i]))) &&
                       !(isnan(a[i]) && isnan(b[i])))
      fail_msg("%s: element %zu is %.7g, reference %.7g", o->n->op_type, i, a[i], b[i]);
  free(y_cpu.data);
  free(y_ref.data);
  cpu->release(state);
}

static void for_each_isa(void (*fn)(kiln__isa, kiln__pool *)) {
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  for (int isa = 0; isa < KILN__ISA_COUNT; isa++) {
    if (!kiln__isa_supported((kiln__isa)isa)) continue;
    force_isa((kiln__isa)isa);
    fn((kiln__isa)isa, NULL);
    fn((kiln__isa)isa, pool);
  }
  unsetenv("KILN_ISA");
  kiln__pool_free(pool);
}

static void matmul_cases(kiln__isa isa, kiln__pool *pool) {
  (void)isa;
  static const struct {
    int ra, rb;
    int64_t a[4], b[4];
    unsigned init;
  } cases[] = {
      {2, 2, {7, 13}, {13, 19}, 0},         {2, 2, {7, 13}, {13, 19}, 2},
      {3, 2, {2, 33, 64}, {64, 70}, 2},     {3, 3, {4, 9, 16}, {4, 16, 9}, 0},
      {4, 4, {2, 3, 5, 8}, {1, 3, 8, 6}, 0}, {3, 2, {3, 1, 300}, {300, 17}, 0},
      {1, 2, {40}, {40, 30}, 2},            {2, 1, {30, 40}, {40}, 0},
      {4, 3, {2, 2, 70, 80}, {2, 80, 90}, 0}, {2, 2, {130, 257}, {257, 129}, 2},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    int ranks[2] = {cases[i].ra, cases[i].rb};
    int64_t dims[2][KILN_MAX_RANK] = {{0}};
    memcpy(dims[0], cases[i].a, sizeof cases[i].a);
    memcpy(dims[1], cases[i].b, sizeof cases[i].b);
    onenode o;
    onenode_make(&o, "MatMul", 2, ranks, dims, cases[i].init);
    onenode_check(&o, pool);
    onenode_free(&o);
  }
}

static void matmul_matches_reference(void **st) {
  (void)st;
  for_each_isa(matmul_cases);
}

static void gemm_cases(kiln__isa isa, kiln__pool *pool) {
  (void)isa;
  /* m, n, k, transA, transB, C rank and dims, alpha, beta, B constant */
  static const struct {
    int64_t m, n, k;
    int ta, tb, rc;
    int64_t c0, c1;
    float alpha, beta;
    unsigned init;
  } cases[] = {
      {5, 7, 9, 0, 0, 0, 0, 0, 1.0f, 1.0f, 0},   {1, 100, 64, 0, 1, 1, 100, 0, 1.0f, 1.0f, 2 | 4},
      {33, 20, 17, 1, 0, 2, 33, 1, 1.0f, 1.0f, 2}, {33, 20, 17, 1, 1, 2, 33, 20, 0.5f, 1.0f, 2},
      {8, 40, 300, 0, 1, 2, 1, 40, 2.0f, 0.25f, 2}, {12, 6, 3, 0, 0, 1, 1, 0, 1.0f, 3.0f, 0},
      {70, 130, 90, 1, 1, 2, 70, 130, 1.0f, -1.0f, 0}, {3, 4, 5, 0, 0, 0, 0, 0, 0.7f, 0.0f, 2},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    int n_in = cases[i].rc ? 3 : 2;
    int ranks[3] = {2, 2, cases[i].rc};
    int64_t dims[3][KILN_MAX_RANK] = {{0}};
    dims[0][0] = cases[i].ta ? cases[i].k : cases[i].m;
    dims[0][1] = cases[i].ta ? cases[i].m : cases[i].k;
    dims[1][0] = cases[i].tb ? cases[i].n : cases[i].k;
    dims[1][1] = cases[i].tb ? cases[i].k : cases[i].n;
    dims[2][0] = cases[i].c0;
    dims[2][1] = cases[i].c1;
    onenode o;
    onenode_make(&o, "Gemm", n_in, ranks, dims, cases[i].init);
    kt_attr_int(o.n, "transA", cases[i].ta);
    kt_attr_int(o.n, "transB", cases[i].tb);
    kt_attr_float(o.n, "alpha", cases[i].alpha);
    kt_attr_float(o.n, "beta", cases[i].beta);
    onenode_check(&o, pool);
    onenode_free(&o);
  }
}

static void gemm_matches_reference(void **st) {
  (void)st;
  for_each_isa(gemm_cases);
}

static void conv_cases(kiln__isa isa, kiln__pool *pool) {
  (void)isa;
  /* N, C, H, W, M, kh, kw, group, stride, dilation, pad, auto_pad, bias */
  static const struct {
    int64_t n, c, h, w, m, kh, kw, group, stride, dil, pad;
    const char *auto_pad;
    int bias;
  } cases[] = {
      {1, 16, 9, 11, 24, 1, 1, 1, 1, 1, 0, NULL, 1},  /* pointwise */
      {2, 8, 7, 7, 12, 1, 1, 2, 1, 1, 0, NULL, 1},    /* pointwise, grouped */
      {1, 3, 17, 19, 8, 3, 3, 1, 1, 1, 1, NULL, 1},
      {1, 3, 20, 20, 10, 7, 7, 1, 2, 1, 3, NULL, 1},  /* a ResNet stem */
      {2, 6, 9, 10, 9, 3, 3, 3, 1, 1, 1, NULL, 0},    /* grouped */
      {1, 4, 12, 12, 5, 3, 3, 1, 2, 2, 2, NULL, 1},   /* dilated, strided */
      {1, 5, 8, 9, 7, 3, 2, 1, 1, 1, 0, "SAME_UPPER", 1},
      {1, 5, 8, 9, 7, 2, 3, 1, 2, 1, 0, "SAME_LOWER", 0},
      {1, 5, 8, 9, 7, 3, 3, 1, 1, 1, 0, "VALID", 1},
      {1, 1, 8, 8, 16, 3, 3, 1, 1, 1, 1, NULL, 1},    /* one input channel (digits) */
      {1, 64, 14, 14, 70, 1, 1, 1, 2, 1, 0, NULL, 1}, /* strided 1x1 (downsample) */
      {1, 40, 60, 60, 20, 3, 3, 1, 1, 1, 1, NULL, 1}, /* k across KC blocks, mid-kernel starts */
      {1, 8, 70, 70, 8, 3, 3, 1, 2, 1, 1, NULL, 1},   /* stride 2, interior runs of 16 (SSE
                                                         gather) up to the tensor's last float */
      {1, 3, 71, 69, 9, 7, 7, 1, 2, 1, 3, NULL, 1},   /* odd stem: border runs at stride 2 */
      {1, 3, 227, 229, 24, 3, 3, 1, 2, 1, 1, NULL, 1}, /* 3x3 stem, C over 256 Ki floats: the
                                                          C-prefetching kernel */
      {1, 4, 6, 1, 6, 3, 3, 1, 1, 1, 1, NULL, 1},     /* one column: a run per output position */
      {1, 2, 9, 40, 7, 3, 3, 1, 3, 1, 2, NULL, 0},    /* stride 3 */
      {1, 6, 7, 7, 13, 3, 3, 1, 1, 1, 1, NULL, 1},    /* 7x7: 49 columns, a 1-column panel */
      /* pointwise with few outputs: B read in place where L1 allows (odd planes, short k) or
         m <= 32, packed otherwise (planes a multiple of 256 bytes with k = 130, m 33-96) */
      {1, 300, 5, 13, 20, 1, 1, 1, 1, 1, 0, NULL, 1},
      {2, 40, 9, 9, 64, 1, 1, 1, 1, 1, 0, NULL, 1},
      {1, 20, 8, 16, 6, 1, 1, 1, 1, 1, 0, NULL, 1},
      {1, 130, 8, 16, 6, 1, 1, 1, 1, 1, 0, NULL, 0},
      {1, 130, 8, 16, 40, 1, 1, 1, 1, 1, 0, NULL, 1},
      {1, 130, 8, 16, 90, 1, 1, 1, 1, 1, 0, NULL, 1},
      {1, 300, 9, 11, 90, 1, 1, 1, 1, 1, 0, NULL, 1},  /* m 65-96 in place, k over KC */
      {1, 24, 7, 7, 70, 1, 1, 1, 1, 1, 0, NULL, 1},
      {2, 3, 33, 33, 5, 3, 3, 1, 1, 2, 0, NULL, 1},   /* dilation 2, no padding, batch 2 */
      /* m > 72 on small planes: with the pool the rows are split, and B is packed once for
         both threads (b_scratch): one column chunk, several k blocks, several column chunks,
         a packed pointwise B, grouped */
      {1, 32, 7, 7, 150, 3, 3, 1, 1, 1, 1, NULL, 1},
      {1, 64, 9, 9, 100, 3, 3, 1, 1, 1, 1, NULL, 1},
      {1, 16, 20, 20, 150, 3, 3, 1, 1, 1, 1, NULL, 0},
      {1, 300, 7, 7, 200, 1, 1, 1, 1, 1, 0, NULL, 1},
      {2, 32, 8, 8, 300, 3, 3, 2, 2, 1, 1, NULL, 1},
      /* the direct stem kernel (conv_stem.h, AVX-512): three column blocks (ow 250) at stride
         1, m = 3 + 2, batch 2, no bias; four channels, 5x5 at stride 2, asymmetric SAME pads */
      {2, 3, 19, 250, 5, 3, 3, 1, 1, 1, 1, NULL, 0},
      {1, 4, 23, 30, 7, 5, 5, 1, 2, 1, 0, "SAME_UPPER", 1},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    int n_in = cases[i].bias ? 3 : 2;
    int ranks[3] = {4, 4, 1};
    int64_t dims[3][KILN_MAX_RANK] = {
        {cases[i].n, cases[i].c, cases[i].h, cases[i].w},
        {cases[i].m, cases[i].c / cases[i].group, cases[i].kh, cases[i].kw},
        {cases[i].m}};
    onenode o;
    onenode_make(&o, "Conv", n_in, ranks, dims, 2);
    int64_t s[2] = {cases[i].stride, cases[i].stride}, d[2] = {cases[i].dil, cases[i].dil};
    int64_t p[4] = {cases[i].pad, cases[i].pad, cases[i].pad, cases[i].pad};
    kt_attr_ints(o.n, "strides", s, 2);
    kt_attr_ints(o.n, "dilations", d, 2);
    kt_attr_int(o.n, "group", cases[i].group);
    if (cases[i].auto_pad) kt_attr_str(o.n, "auto_pad", cases[i].auto_pad);
    else kt_attr_ints(o.n, "pads", p, 4);
    onenode_check(&o, pool);
    onenode_free(&o);
  }
}

static void conv_matches_reference(void **st) {
  (void)st;
  for_each_isa(conv_cases);
}

static void depthwise_cases(kiln__isa isa, kiln__pool *pool) {
  (void)isa;
  /* N, C, H, W, kh, kw, stride h/w, pads t l b r, auto_pad, bias */
  static const struct {
    int64_t n, c, h, w, kh, kw, sh, sw, pt, pl, pb, pr;
    const char *auto_pad;
    int bias;
  } cases[] = {
      {1, 8, 14, 14, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 1},   /* MobileNet's shapes */
      {1, 8, 15, 15, 3, 3, 2, 2, 1, 1, 1, 1, NULL, 1},
      {2, 3, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 0},     /* narrower than one vector */
      {1, 5, 13, 29, 5, 5, 1, 1, 2, 2, 2, 2, NULL, 1},
      {1, 5, 13, 30, 5, 5, 2, 2, 2, 2, 2, 2, NULL, 1},
      {1, 4, 9, 17, 3, 3, 2, 1, 0, 2, 1, 0, NULL, 1},    /* asymmetric pads, mixed strides */
      {1, 4, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 1},     /* one pixel */
      {1, 6, 10, 11, 3, 3, 2, 2, 0, 0, 0, 0, "SAME_UPPER", 1},
      {1, 6, 10, 11, 3, 3, 1, 1, 0, 0, 0, 0, "SAME_LOWER", 0},
      {1, 6, 10, 11, 3, 3, 1, 1, 0, 0, 0, 0, "VALID", 1},
      {1, 3, 12, 12, 3, 1, 1, 1, 1, 0, 1, 0, NULL, 1},   /* 3x1: the general tap loop */
      {1, 3, 19, 23, 7, 7, 3, 3, 3, 3, 3, 3, NULL, 1},   /* stride 3: the portable row */
      {1, 2, 40, 200, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 1},  /* many vectors per row */
      /* The AVX2 paths: 8 channels in the lanes (ow <= 32; C = 12 and 20 leave a short group
         that runs plane by plane), a zero-bordered copy of narrow planes, and wide planes read
         in place with edge blocks through padded segments; rows not a multiple of 4. */
      {2, 12, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 1},
      {1, 9, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 0},    /* flat kernel, odd plane, short group */
      {1, 16, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 1},   /* flat kernel, two whole groups */
      {1, 16, 6, 3, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 1},   /* rows of 3: a load spans 3 rows */
      {1, 8, 5, 6, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 0},
      {1, 20, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1, NULL, 1},
      {1, 16, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 0},
      {1, 8, 13, 11, 3, 3, 1, 2, 0, 1, 2, 0, NULL, 1},    /* mixed strides, asymmetric pads */
      {1, 8, 16, 16, 7, 7, 1, 1, 3, 3, 3, 3, NULL, 1},    /* 49 taps in the lanes */
      {1, 8, 9, 9, 9, 9, 1, 1, 4, 4, 4, 4, NULL, 1},      /* 81 taps: too many for the lanes */
      {1, 3, 41, 45, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 1},    /* padded copy, ow > 32 */
      {1, 3, 38, 61, 5, 5, 2, 2, 2, 2, 2, 2, NULL, 1},
      {1, 3, 67, 130, 3, 3, 1, 1, 1, 1, 1, 1, NULL, 1},   /* read in place */
      {1, 3, 66, 131, 3, 3, 2, 2, 1, 1, 1, 1, NULL, 1},
      {1, 2, 70, 97, 5, 5, 2, 2, 2, 2, 2, 2, NULL, 0},
      {1, 2, 66, 70, 3, 5, 2, 1, 1, 2, 0, 1, NULL, 1},    /* 3x5, sh 2 sw 1 */
      {1, 2, 30, 70, 4, 4, 4, 2, 1, 1, 2, 2, NULL, 1},    /* sh 4, even kernel */
      {1, 2, 30, 70, 3, 3, 5, 2, 1, 1, 1, 1, NULL, 1},    /* sh 5: the phase-split path */
      {1, 37, 121, 119, 3, 3, 2, 2, 1, 1, 1, 1, NULL, 1}, /* over 2 MiB in: the 3x3 kernel
                                                             prefetches a band ahead */
      {1, 2, 17, 9, 3, 3, 2, 2, 0, 0, 0, 0, "SAME_UPPER", 1},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    int n_in = cases[i].bias ? 3 : 2;
    int ranks[3] = {4, 4, 1};
    int64_t dims[3][KILN_MAX_RANK] = {
        {cases[i].n, cases[i].c, cases[i].h, cases[i].w},
        {cases[i].c, 1, cases[i].kh, cases[i].kw},
        {cases[i].c}};
    onenode o;
    onenode_make(&o, "Conv", n_in, ranks, dims, 2);
    int64_t s[2] = {cases[i].sh, cases[i].sw};
    int64_t p[4] = {cases[i].pt, cases[i].pl, cases[i].pb, cases[i].pr};
    kt_attr_ints(o.n, "strides", s, 2);
    kt_attr_int(o.n, "group", cases[i].c);
    if (cases[i].auto_pad) kt_attr_str(o.n, "auto_pad", cases[i].auto_pad);
    else kt_attr_ints(o.n, "pads", p, 4);
    onenode_check(&o, pool);
    onenode_free(&o);
  }
}

static void depthwise_conv_matches_reference(void **st) {
  (void)st;
  for_each_isa(depthwise_cases);
}

static void convt_cases(kiln__isa isa, kiln__pool *pool) {
  (void)isa;
  /* N, C, H, W, M/group, kh, kw, group, stride, dilation, pad, output_padding, bias; then
     auto_pad or output_shape (oh, ow; 0 = none) */
  static const struct {
    int64_t n, c, h, w, mg, kh, kw, group, stride, dil, pad, opad;
    int bias;
    const char *auto_pad;
    int64_t oh, ow;
  } cases[] = {
      {1, 24, 20, 20, 24, 2, 2, 1, 2, 1, 0, 0, 1, NULL, 0, 0}, /* PP-OCR det's upsampling */
      {1, 24, 40, 40, 1, 2, 2, 1, 2, 1, 0, 0, 1, NULL, 0, 0},  /* ... down to one channel */
      {2, 6, 7, 9, 5, 3, 3, 1, 1, 1, 1, 0, 1, NULL, 0, 0},     /* stride 1: kernel overlaps */
      {1, 8, 9, 7, 3, 3, 3, 2, 2, 1, 1, 1, 0, NULL, 0, 0},     /* grouped, output_padding */
      {1, 5, 6, 6, 4, 4, 4, 1, 2, 1, 1, 0, 1, NULL, 0, 0},     /* the DCGAN shape */
      {1, 3, 5, 8, 2, 3, 2, 1, 3, 2, 2, 0, 1, NULL, 0, 0},     /* stride 3, dilation 2 */
      {1, 4, 6, 5, 3, 3, 3, 1, 2, 1, 0, 0, 1, "SAME_UPPER", 0, 0},
      {1, 4, 6, 5, 3, 2, 3, 1, 2, 1, 0, 0, 0, "SAME_LOWER", 0, 0},
      {1, 4, 6, 5, 3, 3, 3, 1, 2, 1, 0, 0, 1, "VALID", 0, 0},
      {1, 4, 6, 5, 3, 3, 3, 1, 2, 1, 0, 0, 1, NULL, 12, 11},  /* output_shape: implied pads */
      {1, 16, 50, 60, 12, 3, 3, 1, 1, 1, 1, 0, 1, NULL, 0, 0}, /* several chunks of columns */
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    int n_in = cases[i].bias ? 3 : 2;
    int ranks[3] = {4, 4, 1};
    int64_t dims[3][KILN_MAX_RANK] = {
        {cases[i].n, cases[i].c, cases[i].h, cases[i].w},
        {cases[i].c, cases[i].mg, cases[i].kh, cases[i].kw},
        {cases[i].mg * cases[i].group}};
    onenode o;
    onenode_make(&o, "ConvTranspose", n_in, ranks, dims, 2);
    int64_t s[2] = {cases[i].stride, cases[i].stride}, d[2] = {cases[i].dil, cases[i].dil};
    int64_t p[4] = {cases[i].pad, cases[i].pad, cases[i].pad, cases[i].pad};
    int64_t op[2] = {cases[i].opad, cases[i].opad}, os[2] = {cases[i].oh, cases[i].ow};
    kt_attr_ints(o.n, "strides", s, 2);
    kt_attr_ints(o.n, "dilations", d, 2);
    kt_attr_int(o.n, "group", cases[i].group);
    if (cases[i].opad) kt_attr_ints(o.n, "output_padding", op, 2);
    if (cases[i].auto_pad) kt_attr_str(o.n, "auto_pad", cases[i].auto_pad);
    else if (cases[i].oh) kt_attr_ints(o.n, "output_shape", os, 2);
    else kt_attr_ints(o.n, "pads", p, 4);
    onenode_check(&o, pool);
    onenode_free(&o);
  }
}

/* ConvTranspose on the packed SGEMM and col2im against the reference kernel: every output
   element written (NaN-filled), strides 1-3, overlapping and disjoint kernels, groups, pads
   from attributes, auto_pad or output_shape, a column count over one chunk. */
static void conv_transpose_matches_reference(void **st) {
  (void)st;
  for_each_isa(convt_cases);
}

static void pool_cases(kiln__isa isa, kiln__pool *pool) {
  (void)isa;
  /* N, C, H, W, kh, kw, stride, pads (t l b r), ceil_mode, auto_pad */
  static const struct {
    int64_t n, c, h, w, kh, kw, s, pt, pl, pb, pr, ceil;
    const char *auto_pad;
  } cases[] = {
      {1, 4, 112, 112, 3, 3, 2, 1, 1, 1, 1, 0, NULL}, /* ResNet's stem pool */
      {1, 3, 111, 111, 3, 3, 2, 0, 0, 0, 0, 1, NULL}, /* SqueezeNet's, ceil_mode */
      {2, 3, 13, 13, 3, 3, 2, 0, 0, 0, 0, 1, NULL},
      {1, 3, 55, 55, 3, 3, 2, 0, 0, 0, 0, 1, NULL},   /* 27 and 13 outputs a row: the last */
      {2, 3, 27, 27, 3, 3, 2, 0, 0, 0, 0, 1, NULL},   /* step moves left, overlapping */
      {1, 2, 17, 19, 3, 3, 1, 1, 1, 1, 1, 0, NULL},   /* stride 1, 19 outputs a row */
      {1, 5, 9, 17, 2, 2, 2, 0, 0, 0, 0, 0, NULL},
      {1, 2, 7, 7, 3, 3, 1, 1, 1, 1, 1, 0, NULL},
      {1, 2, 10, 11, 3, 2, 3, 0, 1, 0, 0, 0, NULL},   /* stride 3: the portable row */
      {1, 2, 10, 11, 3, 3, 2, 0, 0, 0, 0, 0, "SAME_UPPER"},
      {1, 2, 10, 11, 3, 3, 2, 0, 0, 0, 0, 0, "SAME_LOWER"},
      {1, 2, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, NULL},
      /* over 32 outputs a row at stride 2 (the AVX-512 rows kernel): a one-lane last vector,
         windows of two rows, left pads of 1 and 2 */
      {1, 2, 9, 67, 3, 3, 2, 0, 0, 0, 0, 1, NULL},
      {1, 2, 8, 70, 2, 3, 2, 1, 1, 0, 0, 0, NULL},
      {2, 2, 6, 80, 3, 3, 2, 1, 2, 1, 2, 0, NULL},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    int ranks[1] = {4};
    int64_t dims[1][KILN_MAX_RANK] = {{cases[i].n, cases[i].c, cases[i].h, cases[i].w}};
    onenode o;
    onenode_make(&o, "MaxPool", 1, ranks, dims, 0);
    if (i == 0) ((float *)o.in[0].data)[5] = NAN; /* NaN propagates */
    o.exact = true;
    int64_t k[2] = {cases[i].kh, cases[i].kw}, s[2] = {cases[i].s, cases[i].s};
    int64_t p[4] = {cases[i].pt, cases[i].pl, cases[i].pb, cases[i].pr};
    kt_attr_ints(o.n, "kernel_shape", k, 2);
    kt_attr_ints(o.n, "strides", s, 2);
    kt_attr_int(o.n, "ceil_mode", cases[i].ceil);
    if (cases[i].auto_pad) kt_attr_str(o.n, "auto_pad", cases[i].auto_pad);
    else kt_attr_ints(o.n, "pads", p, 4);
    onenode_check(&o, pool);
    onenode_free(&o);
  }
  /* Random shapes: odd and tiny widths (the masked tails), kernels 1-5, strides 1-3, pads below
     the kernel, ceil_mode, NaN, many zeros of both signs (ties); max is exact (but for the sign of
     a zero maximum held by both zeros: pool.c says why). */
  for (int t = 0; t < 60; t++) {
    int64_t kh = (int64_t)rnd_in(1, 5), kw = (int64_t)rnd_in(1, 5);
    int64_t sh = (int64_t)rnd_in(1, 3), sw = t % 3 ? (int64_t)rnd_in(1, 2) : (int64_t)rnd_in(1, 3);
    int64_t p[4] = {(int64_t)rnd_in(0, (size_t)kh - 1), (int64_t)rnd_in(0, (size_t)kw - 1),
                    (int64_t)rnd_in(0, (size_t)kh - 1), (int64_t)rnd_in(0, (size_t)kw - 1)};
    int ranks[1] = {4};
    int64_t dims[1][KILN_MAX_RANK] = {{(int64_t)rnd_in(1, 2), (int64_t)rnd_in(1, 3),
                                       kh + (int64_t)rnd_in(0, 20), kw + (int64_t)rnd_in(0, 40)}};
    onenode o;
    onenode_make(&o, "MaxPool", 1, ranks, dims, 0);
    float *x = o.in[0].data;
    size_t cnt = kiln_tensor_count(&o.in[0]);
    for (size_t e = 0; e < cnt; e++)
      if (rnd() % 8 == 0) x[e] = rnd() % 2 ? 0.0f : -0.0f;
    if (t % 4 == 0) x[rnd() % cnt] = NAN;
    int64_t k[2] = {kh, kw}, s[2] = {sh, sw};
    kt_attr_ints(o.n, "kernel_shape", k, 2);
    kt_attr_ints(o.n, "strides", s, 2);
    kt_attr_int(o.n, "ceil_mode", t % 2);
    kt_attr_ints(o.n, "pads", p, 4);
    o.exact = true;
    onenode_check(&o, pool);
    onenode_free(&o);
  }
  static const int64_t gap[][4] = {{2, 5, 7, 7}, {1, 3, 1, 1}, {1, 4, 33, 17}};
  for (size_t i = 0; i < KILN__ARRAY_LEN(gap); i++) {
    int ranks[1] = {4};
    int64_t dims[1][KILN_MAX_RANK] = {{gap[i][0], gap[i][1], gap[i][2], gap[i][3]}};
    onenode o;
    onenode_make(&o, "GlobalAveragePool", 1, ranks, dims, 0);
    onenode_check(&o, pool);
    onenode_free(&o);
  }
}

static void pools_match_reference(void **st) {
  (void)st;
  for_each_isa(pool_cases);
}

static void conv_rows_decline(void **st) {
  (void)st;
  int ranks[2] = {4, 4};
  /* Dilated depthwise: neither the GEMM row nor the direct one. */
  int64_t dims[2][KILN_MAX_RANK] = {{1, 8, 6, 6}, {8, 1, 3, 3}};
  onenode o;
  onenode_make(&o, "Conv", 2, ranks, dims, 2);
  kt_attr_int(o.n, "group", 8);
  int64_t d[2] = {2, 2};
  kt_attr_ints(o.n, "dilations", d, 2);
  assert_false(kiln__backend_cpu.supports(o.n, o.g));
  onenode_free(&o);
  /* Weights that are not constants cannot be packed at load. */
  int64_t dims2[2][KILN_MAX_RANK] = {{1, 8, 6, 6}, {4, 8, 3, 3}};
  onenode_make(&o, "Conv", 2, ranks, dims2, 0);
  assert_false(kiln__backend_cpu.supports(o.n, o.g));
  onenode_free(&o);
}

/* ---- whole models ---------------------------------------------------------------------------- */

static kiln_model *load_with(const char *path, const char *backend, int threads) {
  const char *const backends[] = {backend, NULL};
  kiln_model_opts o = kiln_model_opts_default();
  o.backends = backends;
  o.intra_threads = threads;
  kiln_model *m = NULL;
  kiln_error err = {0};
  kiln_status s = kiln_model_load(path, &o, &m, &err);
  if (s != KILN_OK) fprintf(stderr, "%s\n", err.message);
  assert_int_equal(s, KILN_OK);
  return m;
}

/* Runs the model on "cpu" and "ref" with the same random inputs (symbolic dims = 3) and
   compares every output within 1e-4 relative. */
static void model_matches_ref(const char *path, int threads) {
  kiln_model *mc = load_with(path, "cpu", threads), *mr = load_with(path, "ref", 1);
  size_t cpu_nodes = 0;
  kiln_model_stats stc;
  kiln_model_stats_get(mc, &stc);
  for (size_t i = 0; i < stc.backend_count; i++) {
    const char *name;
    size_t nodes;
    kiln_model_backend_nodes(mc, i, &name, &nodes);
    if (!strcmp(name, "cpu")) cpu_nodes = nodes;
  }
  assert_true(cpu_nodes > 0);
  size_t ni = kiln_model_input_count(mc);
  assert_true(ni <= 4);
  kiln_tensor in[4];
  const char *names[4];
  for (size_t i = 0; i < ni; i++) {
    kiln_io_info info;
    assert_int_equal(kiln_model_input_info(mc, i, &info), KILN_OK);
    assert_int_equal(info.dtype, KILN_DTYPE_FLOAT);
    int64_t dims[KILN_MAX_RANK];
    for (int d = 0; d < info.rank; d++) dims[d] = info.dims[d] < 0 ? 3 : info.dims[d];
    kiln_error err = {0};
    assert_int_equal(kiln_tensor_alloc(&in[i], KILN_DTYPE_FLOAT, info.rank, dims, &err), KILN_OK);
    fill(in[i].data, kiln_tensor_count(&in[i]));
    names[i] = info.name;
  }
  kiln_session *sc, *sr;
  kiln_error err = {0};
  assert_int_equal(kiln_session_create(mc, &sc, &err), KILN_OK);
  assert_int_equal(kiln_session_create(mr, &sr, &err), KILN_OK);
  assert_int_equal(kiln_session_run(sc, names, in, ni, &err), KILN_OK);
  assert_int_equal(kiln_session_run(sr, names, in, ni, &err), KILN_OK);
  for (size_t o = 0; o < kiln_model_output_count(mc); o++) {
    kiln_tensor yc, yr;
    assert_int_equal(kiln_session_output(sc, o, &yc), KILN_OK);
    assert_int_equal(kiln_session_output(sr, o, &yr), KILN_OK);
    assert_int_equal(kiln_tensor_count(&yc), kiln_tensor_count(&yr));
    const float *a = yc.data, *b = yr.data;
    double maxabs = 0;
    for (size_t i = 0; i < kiln_tensor_count(&yr); i++) maxabs = fmax(maxabs, fabs(b[i]));
    for (size_t i = 0; i < kiln_tensor_count(&yr); i++)
      if (!(fabs(a[i] - b[i]) <= 1e-4 * maxabs + 1e-6))
        fail_msg("%s output %zu[%zu]: cpu %.7g, ref %.7g", path, o, i, a[i], b[i]);
  }
  for (size_t i = 0; i < ni; i++) kiln_tensor_release(&in[i]);
  kiln_session_free(sc);
  kiln_session_free(sr);
  kiln_model_free(mc);
  kiln_model_free(mr);
}

static void models_match_ref(void **st) {
  (void)st;
  char p1[1024], p2[1024];
  snprintf(p1, sizeof p1, "%s/digits/digits_cnn.onnx", models_dir);
  snprintf(p2, sizeof p2, "%s/models/transformer_block.onnx", tests_dir);
  for (int isa = 0; isa < KILN__ISA_COUNT; isa++) {
    if (!kiln__isa_supported((kiln__isa)isa)) continue;
    force_isa((kiln__isa)isa);
    model_matches_ref(p1, 1);
    model_matches_ref(p1, 2);
    model_matches_ref(p2, 1);
    model_matches_ref(p2, 2);
  }
  unsetenv("KILN_ISA");
}

/* ---- the bfloat16 GEMM (bgemm.h) ------------------------------------------------------------ */

static float to_bf16(float f) { /* round to nearest even, as VCVTNE2PS2BF16 for finite f */
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* kiln__bgemm_run against a double sum of the bfloat16-rounded A times B (each product exact in
   float), over shapes around the 8 x 32 tile, the 64 x 128 work item, odd k and a k of 1, with
   bias, a residual, ReLU or Clip, serial and on 2 threads; B transposed or not. Tolerance: float
   summation error, 2^-22 of the sum of |products| (a wrong index or pair is off by a product).
   Also: a matrix with one value that is not a bfloat16 is refused. Not run where the CPU lacks
   AVX512-BF16 (said so). */
static void bgemm_matches_double_reference(void **st) {
  (void)st;
  setenv("KILN_BF16", "1", 1);
  bool have = kiln__bgemm_wanted();
  setenv("KILN_BF16", "0", 1);
  assert_false(kiln__bgemm_wanted()); /* opt-in only */
  unsetenv("KILN_BF16");
  if (!have) {
    printf("  AVX512-BF16: not available on this machine or build, not run\n");
    return;
  }
  static const size_t shapes[][3] = {{1, 1, 1},   {8, 2, 32},   {7, 5, 33},   {9, 64, 31},
                                     {64, 256, 128}, {65, 255, 129}, {130, 300, 260}, {3, 1, 70}};
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
    for (int v = 0; v < 4; v++) {
      size_t m = shapes[si][0], k = shapes[si][1], n = shapes[si][2];
      bool tb = v & 1;
      float *a = malloc(m * k * sizeof *a), *b = malloc(k * n * sizeof *b);
      float *bias = malloc(n * sizeof *bias), *z = malloc(m * n * sizeof *z);
      float *c = malloc(m * n * sizeof *c);
      fill(a, m * k);
      fill(bias, n);
      fill(z, m * n);
      for (size_t i = 0; i < k * n; i++) b[i] = to_bf16(rnd_f());
      assert_true(kiln__bgemm_exact(b, k, n, tb ? k : n, tb));
      kiln__bgemm_packed pb;
      assert_int_equal(kiln__bgemm_pack_b(b, k, n, tb ? k : n, tb, &pb, &err), KILN_OK);
      kiln__epilogue ep = {.bias = v & 2 ? bias : NULL, .residual = v >= 2 ? z : NULL, .ldr = n,
                           .act = v == 1 ? KILN__ACT_RELU : v == 3 ? KILN__ACT_CLIP
                                                                   : KILN__ACT_NONE,
                           .lo = -0.5f, .hi = 0.75f};
      void *scratch = malloc(kiln__bgemm_scratch(m, k));
      for (int threads = 1; threads <= 2; threads++) {
        kiln__bgemm_run(threads == 2 ? pool : NULL, m, a, k, &pb, c, n, &ep, scratch);
        for (size_t i = 0; i < m; i++)
          for (size_t j = 0; j < n; j++) {
            double sum = 0, mag = 0;
            for (size_t p = 0; p < k; p++) {
              double t = (double)to_bf16(a[i * k + p]) * (tb ? b[j * k + p] : b[p * n + j]);
              sum += t, mag += fabs(t);
            }
            if (ep.bias) sum += bias[j], mag += fabs(bias[j]);
            if (ep.residual) sum += z[i * n + j], mag += fabs(z[i * n + j]);
            if (ep.act == KILN__ACT_RELU) sum = sum > 0 ? sum : 0;
            if (ep.act == KILN__ACT_CLIP) sum = sum < ep.lo ? ep.lo : sum > ep.hi ? ep.hi : sum;
            double d = fabs(c[i * n + j] - sum);
            if (d > mag * 0x1p-22 + 1e-30)
              fail_msg("bgemm %zux%zux%zu variant %d threads %d: C[%zu][%zu] %.9g, reference %.9g",
                       m, k, n, v, threads, i, j, (double)c[i * n + j], sum);
          }
      }
      b[k * n / 2] = 0.1f; /* not a bfloat16 */
      assert_false(kiln__bgemm_exact(b, k, n, tb ? k : n, tb));
      kiln__bgemm_packed_free(&pb);
      free(scratch), free(a), free(b), free(bias), free(z), free(c);
    }
  kiln__pool_free(pool);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: test_cpu_gemm MODELS_DIR TESTS_DIR\n");
    return 2;
  }
  models_dir = argv[1];
  tests_dir = argv[2];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(isa_override_is_checked),
      cmocka_unit_test(pool_runs_each_index_once),
      cmocka_unit_test(pool_slots_are_threads),
      cmocka_unit_test(pool_tolerates_concurrent_callers),
#if defined(__linux__)
      cmocka_unit_test(pool_moves_worker_off_callers_cpu),
#endif
      cmocka_unit_test(sgemm_matches_double_reference),
      cmocka_unit_test(sgemm_packs_a_exactly),
      cmocka_unit_test(bgemm_matches_double_reference),
      cmocka_unit_test(matmul_matches_reference),
      cmocka_unit_test(gemm_matches_reference),
      cmocka_unit_test(sgemm_b_in_place_matches_double_reference),
      cmocka_unit_test(sgemm_edge_panels_match_double_reference),
      cmocka_unit_test(sgemm_c_prefetch_matches_double_reference),
      cmocka_unit_test(conv_matches_reference),
      cmocka_unit_test(depthwise_conv_matches_reference),
      cmocka_unit_test(conv_transpose_matches_reference),
      cmocka_unit_test(conv_rows_decline),
      cmocka_unit_test(pools_match_reference),
      cmocka_unit_test(models_match_ref),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
