/* Per-node timing and accuracy of the cpu backend's 3x3 stride-1 convs: the GEMM conv (implicit
 * im2col) against Winograd F(2x2, 3x3) (conv_winograd.c), on the 3x3 convs of ResNet-18/50 and
 * SqueezeNet-1.1. The two kernels alternate per repetition; min and median in
 * thread CPU time, one thread. Accuracy: each output against a direct conv in double precision,
 * as max |error| and max |error| / max |reference|.
 * Not a test. Build and run: see bench/README.md.
 * usage: bench_winograd [REPS [FILTER [wino]]]: "wino" runs only the Winograd kernel (to profile
 * it) and skips the accuracy check. THREADS=N in the environment runs both on an N-thread pool and
 * times wall-clock instead. */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"

static kiln__pool *pool; /* set once by main: THREADS > 1 */

static double now(void) {
  struct timespec ts;
  clock_gettime(pool ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmpd(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void attr_ints(kiln__node *n, const char *name, const int64_t *v, size_t cnt) {
  kiln__attr *a = &n->attrs[n->n_attrs++];
  a->name = kiln__strdup(name);
  a->type = KILN__ATTR_INTS;
  a->n = cnt;
  a->ints = kiln__malloc(cnt * sizeof *a->ints);
  memcpy(a->ints, v, cnt * sizeof *a->ints);
}

static void attr_str(kiln__node *n, const char *name, const char *s) {
  kiln__attr *a = &n->attrs[n->n_attrs++];
  a->name = kiln__strdup(name);
  a->type = KILN__ATTR_STRING;
  a->s = kiln__strdup(s);
  a->s_len = strlen(s);
}

static float frand(void) { return (float)rand() / (float)RAND_MAX - 0.5f; }

enum { GEMM, F2, NK };
static const char *const kname[NK] = {"gemm", "F2"};

/* Leaks its buffers: a one-shot benchmark. */
static bool wino_only; /* set once by main */

static void one(const char *name, size_t c, size_t h, size_t m, int reps, const char *filter) {
  if (filter && !strstr(name, filter)) return;
  size_t oh = h, hw = h * h;
  kiln_error err = {0};
  kiln__graph *g = kiln__graph_new();
  int ix = kiln__graph_value(g, "x"), iw = kiln__graph_value(g, "w");
  int ib = kiln__graph_value(g, "b");
  int iy = kiln__graph_value(g, "y");
  kiln_tensor tx = {0}, ty = {0};
  int64_t dx[4] = {1, (int64_t)c, (int64_t)h, (int64_t)h}, dw[4] = {(int64_t)m, (int64_t)c, 3, 3};
  int64_t db[1] = {(int64_t)m};
  kiln_tensor_alloc(&tx, KILN_DTYPE_FLOAT, 4, dx, &err);
  kiln__value *vw = &g->values[iw], *vb = &g->values[ib];
  vw->dtype = vb->dtype = g->values[ix].dtype = KILN_DTYPE_FLOAT;
  vw->is_initializer = vb->is_initializer = true;
  kiln_tensor_alloc(&vw->init, KILN_DTYPE_FLOAT, 4, dw, &err);
  kiln_tensor_alloc(&vb->init, KILN_DTYPE_FLOAT, 1, db, &err);
  float *x = tx.data, *w = vw->init.data, *b = vb->init.data;
  for (size_t i = 0; i < c * hw; i++) x[i] = frand();
  float ws = 1.0f / sqrtf((float)(9 * c)); /* He-like scale, as trained weights */
  for (size_t i = 0; i < m * c * 9; i++) w[i] = frand() * ws;
  for (size_t i = 0; i < m; i++) b[i] = 0.1f * frand();
  kiln__node *n = kiln__graph_add_node(g);
  n->op_type = kiln__strdup("FusedConv");
  n->domain = kiln__strdup("ai.kiln");
  n->name = kiln__strdup("conv");
  n->opset = 1;
  n->n_in = 3;
  n->in = kiln__malloc(3 * sizeof(int));
  n->in[0] = ix, n->in[1] = iw, n->in[2] = ib;
  n->n_out = 1;
  n->out = kiln__malloc(sizeof(int));
  n->out[0] = iy;
  n->attrs = kiln__calloc(4, sizeof(kiln__attr));
  int64_t st[2] = {1, 1}, pd[4] = {1, 1, 1, 1};
  attr_ints(n, "strides", st, 2);
  attr_ints(n, "pads", pd, 4);
  n->op = kiln__op_find("ai.kiln", "FusedConv");
  const kiln__backend *cpu = &kiln__backend_cpu;
  void *state[NK] = {0};
  const kiln_tensor *ins[3] = {&tx, &vw->init, &vb->init};
  kiln_tensor *outs[1] = {&ty};
  kiln__kctx kc[NK];
  float *y[NK];
  for (int k = 0; k < NK; k++) {
    if (k == F2) attr_str(n, "algorithm", "winograd");
    if (!cpu->supports(n, g) || cpu->prepare(n, g, &state[k], &err) != KILN_OK) {
      printf("%s: cpu backend does not take it\n", name);
      return;
    }
    kc[k] = (kiln__kctx){.node = n, .n_in = 3, .n_out = 1, .in = ins, .out = outs,
                         .pool = pool, .err = &err};
    n->op->infer(&kc[k]);
    kc[k].scratch_bytes = cpu->scratch(&kc[k], state[k]);
    kc[k].scratch = kc[k].scratch_bytes ? malloc(kc[k].scratch_bytes) : NULL;
    y[k] = malloc(m * oh * oh * sizeof(float));
  }
  double *t[NK];
  for (int k = 0; k < NK; k++) t[k] = malloc((size_t)reps * sizeof(double));
  for (int r = -2; r < reps; r++)
    for (int k = wino_only ? F2 : 0; k < NK; k++) {
      ty.data = y[k];
      double t0 = now();
      cpu->execute(&kc[k], state[k]);
      if (r >= 0) t[k][r] = now() - t0;
    }
  if (wino_only) {
    qsort(t[F2], (size_t)reps, sizeof(double), cmpd);
    printf("%-18s F2 %7.1f/%7.1f us\n", name, t[F2][0] * 1e6, t[F2][reps / 2] * 1e6);
    return;
  }
  /* direct conv in double */
  double maxe[NK] = {0}, maxr = 0;
  for (size_t o = 0; o < m; o++)
    for (size_t i = 0; i < oh; i++)
      for (size_t j = 0; j < oh; j++) {
        double acc = b[o];
        for (size_t ci = 0; ci < c; ci++)
          for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
              long yy = (long)i + ky - 1, xx = (long)j + kx - 1;
              if (yy < 0 || xx < 0 || yy >= (long)h || xx >= (long)h) continue;
              acc += (double)x[ci * hw + (size_t)yy * h + (size_t)xx] *
                     (double)w[((o * c + ci) * 3 + (size_t)ky) * 3 + (size_t)kx];
            }
        maxr = fmax(maxr, fabs(acc));
        for (int k = 0; k < NK; k++)
          maxe[k] = fmax(maxe[k], fabs(y[k][(o * oh + i) * oh + j] - acc));
      }
  double gf = 2.0 * (double)(m * oh * oh * c * 9) * 1e-9;
  printf("%-18s", name);
  for (int k = 0; k < NK; k++) {
    qsort(t[k], (size_t)reps, sizeof(double), cmpd);
    printf(" | %s %7.1f/%7.1f us %5.1f GF/s err %.1e rel %.1e", kname[k], t[k][0] * 1e6,
           t[k][reps / 2] * 1e6, gf / t[k][0], maxe[k], maxe[k] / maxr);
  }
  printf(" | F2/gemm %.2f\n", t[F2][0] / t[GEMM][0]);
  for (int k = 0; k < NK; k++) cpu->release(state[k]);
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 20;
  const char *filter = argc > 2 && argv[2][0] ? argv[2] : NULL;
  wino_only = argc > 3 && !strcmp(argv[3], "wino");
  int threads = getenv("THREADS") ? atoi(getenv("THREADS")) : 1;
  kiln_error err = {0};
  if (threads > 1 && kiln__pool_create(threads, &pool, &err) != KILN_OK) return 1;
  /* ResNet-18 and -50's stride-1 3x3 convs (same shapes, C = K) */
  one("r 3x3 64@56", 64, 56, 64, reps, filter);
  one("r 3x3 128@28", 128, 28, 128, reps, filter);
  one("r 3x3 256@14", 256, 14, 256, reps, filter);
  one("r 3x3 512@7", 512, 7, 512, reps, filter);
  /* squeezenet1_1 fire expand 3x3 */
  one("sq 3x3 16->64@55", 16, 55, 64, reps, filter);
  one("sq 3x3 32->128@27", 32, 27, 128, reps, filter);
  one("sq 3x3 48->192@13", 48, 13, 192, reps, filter);
  one("sq 3x3 64->256@13", 64, 13, 256, reps, filter);
  return 0;
}
