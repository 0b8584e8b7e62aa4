/* Per-node timing of the cpu backend's float MaxPool (pool.c) on the 3x3 stride-2 pools of
 * SqueezeNet-1.1 and ResNet, one thread, thread CPU time, min and median, checked bit for bit
 * against the reference kernel. With -DPOOL_B and a second pool.c compiled with
 * -Dkiln__cpu_pool_kernels=pool_b_kernels (e.g. `git show HEAD~1:src/kernels/cpu/pool.c`), it
 * alternates that build ("B") with this one ("A") per repetition, for an A/B on a noisy machine.
 * Not a test. Build and run: see bench/README.md.
 * usage: bench_pool [REPS] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cpu/cpu_backend.h"
#include "kiln_test_ir.h" /* tests/: attributes of hand-built nodes */

#ifdef POOL_B
extern const kiln__cpu_kernel pool_b_kernels[];
#define NK 3
#else
#define NK 2
#endif

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}


/* Leaks its buffers: a one-shot benchmark. */
static void one(const char *name, int64_t c, int64_t h, int64_t pad, int64_t ceil, int reps) {
  kiln_error err = {0};
  kiln__graph *g = kiln__graph_new();
  int ix = kiln__graph_value(g, "x"), iy = kiln__graph_value(g, "y");
  g->values[ix].dtype = KILN_DTYPE_FLOAT;
  kiln_tensor tx = {0}, ty = {0};
  int64_t dx[4] = {1, c, h, h};
  kiln_tensor_alloc(&tx, KILN_DTYPE_FLOAT, 4, dx, &err);
  float *x = tx.data;
  for (int64_t i = 0; i < c * h * h; i++) x[i] = (float)rand() / (float)RAND_MAX - 0.5f;
  kiln__node *n = kiln__graph_add_node(g);
  n->op_type = kiln__strdup("MaxPool");
  n->domain = kiln__strdup("");
  n->name = kiln__strdup("pool");
  n->opset = 17;
  n->n_in = 1;
  n->in = kiln__malloc(sizeof(int));
  n->in[0] = ix;
  n->n_out = 1;
  n->out = kiln__malloc(sizeof(int));
  n->out[0] = iy;
  n->attrs = kiln__calloc(4, sizeof(kiln__attr));
  int64_t k[2] = {3, 3}, st[2] = {2, 2}, pd[4] = {pad, pad, pad, pad};
  kt_attr_ints(n, "kernel_shape", k, 2);
  kt_attr_ints(n, "strides", st, 2);
  kt_attr_ints(n, "pads", pd, 4);
  kt_attr_int(n, "ceil_mode", ceil);
  n->op = kiln__op_find("", "MaxPool");
  const kiln_tensor *ins[1] = {&tx};
  kiln_tensor *outs[1] = {&ty};
  kiln__kctx kc = {.node = n, .n_in = 1, .n_out = 1, .in = ins, .out = outs, .err = &err};
  n->op->infer(&kc);
  size_t count = kiln_tensor_count(&ty);
  const kiln__cpu_kernel *kern[NK] = {NULL, kiln__cpu_pool_kernels,
#ifdef POOL_B
                                      pool_b_kernels
#endif
  };
  static const char *const kname[3] = {"ref", "A", "B"};
  void *state[NK] = {0};
  float *y[NK];
  double *t[NK];
  for (int i = 0; i < NK; i++) {
    if (kern[i] && kern[i][0].prepare(n, g, &state[i], &err) != KILN_OK) return;
    y[i] = malloc(count * sizeof(float));
    t[i] = malloc((size_t)reps * sizeof(double));
  }
  for (int r = -2; r < reps; r++)
    for (int i = r < 0 ? 0 : 1; i < NK; i++) { /* the reference twice only: the oracle */
      ty.data = y[i];
      double t0 = now();
      if (kern[i]) kern[i][0].execute(&kc, state[i]);
      else n->op->run(&kc);
      if (r >= 0) t[i][r] = now() - t0;
    }
  printf("%-16s", name);
  for (int i = 1; i < NK; i++) {
    size_t bad = 0;
    for (size_t e = 0; e < count; e++) bad += memcmp(&y[i][e], &y[0][e], sizeof(float)) != 0;
    qsort(t[i], (size_t)reps, sizeof(double), cmpd);
    printf(" | %s %7.1f/%7.1f us %5.1f GB/s%s", kname[i], t[i][0] * 1e6, t[i][reps / 2] * 1e6,
           (double)(c * h * h + (int64_t)count) * 4e-9 / t[i][0], bad ? " MISMATCH" : "");
  }
#ifdef POOL_B
  printf(" | A/B %.2f", t[1][0] / t[2][0]);
#endif
  printf("\n");
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 200;
  one("sq 64@111 ceil", 64, 111, 0, 1, reps);
  one("sq 128@55 ceil", 128, 55, 0, 1, reps);
  one("sq 256@27 ceil", 256, 27, 0, 1, reps);
  one("r 64@112 pad1", 64, 112, 1, 0, reps);
  return 0;
}
