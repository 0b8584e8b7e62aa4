/* Paired A/B timing in one process, for a host whose speed changes in phases of a fraction of a
 * second to minutes (bench/RESULTS.md, fifteenth session): two sessions, A and B, run in
 * alternation, best of RUNS each per iteration, so that both see the same phases, and the ratio
 * B/A is taken per iteration. Before each iteration it times the phase probe (phase_probe.h:
 * stores that cross cache lines, which the host's slow phases slow down most).
 *
 *   pair MODEL_A MODEL_B THREADS_A[,THREADS_B] ITERS RUNS [ENV]
 *
 * A model given as PATH@LEVEL is loaded at that optimization level (M.onnx@0 M.onnx: what the
 * passes save).
 * A and B may be the same file: at different thread counts (scaling), or with ENV (a variable
 * the library reads per call in an experiment) set to 1 (or to $PAIR_VAL) while A runs and unset
 * for B. Prints one
 * line per iteration (probe us, A us, B us), then the medians and the median of B/A, over all
 * iterations and split at 1.25 times the fastest probe (fast and slow phases). Integer inputs are filled with 0/1, floats with a
 * fixed pattern in [0, 1); symbolic dims are 1 (128 for the second, a sequence length).
 * Not part of ctest; build (bench/README.md):
 *   cc -std=c11 -D_POSIX_C_SOURCE=200809L -O2 -Iinclude bench/pair.c build/libkiln.a \
 *      -lprotobuf-c -lm -lpthread -o build/pair */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln/kiln.h"
#include "phase_probe.h"

#define MAX_IN 8
#define MAX_ITERS 100000

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

typedef struct side {
  kiln_model *model;
  kiln_session *session;
  kiln_tensor in[MAX_IN];
  const char *names[MAX_IN];
  size_t n;
} side;

static void die(const char *what, const kiln_error *err) {
  fprintf(stderr, "pair: %s: %s\n", what, err ? err->message : "");
  exit(1);
}

/* PATH, or PATH@LEVEL: the optimization level (0-3; the highest without it). */
static void open_side(side *s, const char *arg, int threads) {
  kiln_model_opts mo = kiln_model_opts_default();
  mo.intra_threads = threads;
  char path[4096];
  snprintf(path, sizeof path, "%s", arg);
  char *at = strrchr(path, '@');
  if (at && at[1] >= '0' && at[1] <= '9' && !at[2]) {
    mo.opt_level = at[1] - '0';
    *at = '\0';
  }
  kiln_error err;
  if (kiln_model_load(path, &mo, &s->model, &err) != KILN_OK) die(path, &err);
  if (kiln_session_create(s->model, &s->session, &err) != KILN_OK) die("session", &err);
  s->n = kiln_model_input_count(s->model);
  if (s->n > MAX_IN) die("too many inputs", NULL);
  for (size_t i = 0; i < s->n; i++) {
    kiln_io_info info;
    if (kiln_model_input_info(s->model, i, &info) != KILN_OK || info.rank < 0)
      die("input info", NULL);
    for (int d = 0; d < info.rank; d++)
      if (info.dims[d] <= 0) info.dims[d] = d == 1 ? 128 : 1;
    if (kiln_tensor_alloc(&s->in[i], info.dtype, info.rank, info.dims, &err) != KILN_OK)
      die("input", &err);
    s->names[i] = info.name;
    size_t count = kiln_tensor_count(&s->in[i]);
    if (info.dtype == KILN_DTYPE_FLOAT) {
      float *p = s->in[i].data;
      for (size_t j = 0; j < count; j++) p[j] = (float)((j * 7919) % 1000) / 1000.0f;
    } else if (info.dtype == KILN_DTYPE_INT64) {
      int64_t *p = s->in[i].data;
      for (size_t j = 0; j < count; j++) p[j] = (int64_t)(j % 2);
    }
  }
}

static double best_of(side *s, int runs, const char *env, int set) {
  kiln_error err;
  double best = 1e30;
  if (env && set) setenv(env, getenv("PAIR_VAL") ? getenv("PAIR_VAL") : "1", 1);
  for (int r = 0; r < runs; r++) {
    double t0 = now_us();
    if (kiln_session_run(s->session, s->names, s->in, s->n, &err) != KILN_OK) die("run", &err);
    double d = now_us() - t0;
    if (d < best) best = d;
  }
  if (env && set) unsetenv(env);
  return best;
}

static int cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, size_t n) {
  if (!n) return 0;
  qsort(v, n, sizeof *v, cmpd);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void summary(const char *name, const double (*row)[3], size_t n, double cut, int which) {
  double *p = malloc((n + 1) * sizeof *p), *a = malloc((n + 1) * sizeof *a);
  double *b = malloc((n + 1) * sizeof *b), *r = malloc((n + 1) * sizeof *r);
  if (!p || !a || !b || !r) die("out of memory", NULL);
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    int slow = row[i][0] >= cut;
    if (which >= 0 && slow != which) continue;
    p[k] = row[i][0], a[k] = row[i][1], b[k] = row[i][2], r[k] = row[i][2] / row[i][1];
    k++;
  }
  if (k)
    printf("%-4s n=%zu probe %.0f  A %.1f  B %.1f  median B/A %.3f\n", name, k, median(p, k),
           median(a, k), median(b, k), median(r, k));
  free(p), free(a), free(b), free(r);
}

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: pair MODEL_A[@LEVEL] MODEL_B[@LEVEL] THREADS_A[,THREADS_B] ITERS RUNS [ENV]\n");
    return 2;
  }
  int ta = atoi(argv[3]), tb = strchr(argv[3], ',') ? atoi(strchr(argv[3], ',') + 1) : ta;
  long iters = atol(argv[4]);
  int runs = atoi(argv[5]);
  const char *env = argc > 6 ? argv[6] : NULL;
  if (iters < 1 || iters > MAX_ITERS || runs < 1) die("ITERS 1..100000 and RUNS >= 1", NULL);
  side A, B;
  open_side(&A, argv[1], ta);
  open_side(&B, argv[2], tb);
  static _Alignas(64) float buf[4096 + 8];
  double(*row)[3] = malloc((size_t)iters * sizeof *row);
  if (!row) die("out of memory", NULL);
  best_of(&A, 3, env, 1), best_of(&B, 3, env, 0);
  for (long i = 0; i < iters; i++) {
    row[i][0] = phase_probe(buf);
    if (i % 2) { /* alternate which side goes first */
      row[i][2] = best_of(&B, runs, env, 0);
      row[i][1] = best_of(&A, runs, env, 1);
    } else {
      row[i][1] = best_of(&A, runs, env, 1);
      row[i][2] = best_of(&B, runs, env, 0);
    }
    printf("%.1f %.1f %.1f\n", row[i][0], row[i][1], row[i][2]);
  }
  double fastest = row[0][0];
  for (long i = 1; i < iters; i++)
    if (row[i][0] < fastest) fastest = row[i][0];
  const double(*rows)[3] = (const double(*)[3])row;
  summary("all", rows, (size_t)iters, 0, -1);
  summary("fast", rows, (size_t)iters, 1.25 * fastest, 0);
  summary("slow", rows, (size_t)iters, 1.25 * fastest, 1);
  free(row);
  for (size_t i = 0; i < A.n; i++) kiln_tensor_release(&A.in[i]);
  for (size_t i = 0; i < B.n; i++) kiln_tensor_release(&B.in[i]);
  kiln_session_free(A.session), kiln_session_free(B.session);
  kiln_model_free(A.model), kiln_model_free(B.model);
  return 0;
}
