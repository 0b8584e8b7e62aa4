/* Per-node timing of a float conv on ResNet-50 and SqueezeNet-1.1 shapes: the cpu backend's
 * FusedConv (GEMM with implicit im2col, NCHW) against the experimental direct NCHW8c kernel of
 * conv_nchwc.h (weights packed beforehand, as at load), and the two reorders a region boundary
 * would add. A and B alternate per repetition; min and median of each in thread CPU time (which a
 * shared machine disturbs less than wall time), one thread. Every shape first checks that both
 * give the same output (exit 1 otherwise); KILN_ISA=generic checks the scalar path.
 * Not a test and not part of the library: the kernel was measured slower than the GEMM path on
 * most of these shapes and was not landed (bench/RESULTS.md, NCHWc section).
 * Build and run: see bench/README.md.
 * usage: bench_nchwc [REPS [gemm [FILTER]]]: "gemm" times only the cpu backend's conv (no direct
 * kernel, no check against it), on the shapes whose name contains FILTER. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conv_nchwc.h"
#include "kernels/cpu/cpu_backend.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
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

static bool gemm_only; /* set once by main before any shape runs */
static const char *filter;

static float frand(void) { return (float)rand() / (float)RAND_MAX - 0.5f; }

/* Leaks its buffers: a one-shot benchmark. */
static void one(const char *name, size_t c, size_t h, size_t m, size_t k, size_t s, size_t p,
                int reps) {
  if (filter && !strstr(name, filter)) return;
  size_t oh = (h + 2 * p - k) / s + 1, hw = h * h, ohw = oh * oh;
  kiln_error err = {0};
  kiln__graph *g = kiln__graph_new();
  int ix = kiln__graph_value(g, "x"), iw = kiln__graph_value(g, "w"), ib = kiln__graph_value(g, "b");
  int iy = kiln__graph_value(g, "y");
  kiln_tensor tx = {0}, tw = {0}, tb = {0}, ty = {0};
  int64_t dx[4] = {1, (int64_t)c, (int64_t)h, (int64_t)h}, dw[4] = {(int64_t)m, (int64_t)c,
                                                                     (int64_t)k, (int64_t)k};
  int64_t db[1] = {(int64_t)m};
  kiln_tensor_alloc(&tx, KILN_DTYPE_FLOAT, 4, dx, &err);
  kiln__value *vw = &g->values[iw], *vb = &g->values[ib];
  vw->dtype = vb->dtype = g->values[ix].dtype = KILN_DTYPE_FLOAT;
  vw->is_initializer = vb->is_initializer = true;
  kiln_tensor_alloc(&vw->init, KILN_DTYPE_FLOAT, 4, dw, &err);
  kiln_tensor_alloc(&vb->init, KILN_DTYPE_FLOAT, 1, db, &err);
  tw = vw->init, tb = vb->init;
  float *x = tx.data, *w = tw.data, *b = tb.data;
  for (size_t i = 0; i < c * hw; i++) x[i] = frand();
  for (size_t i = 0; i < m * c * k * k; i++) w[i] = frand();
  for (size_t i = 0; i < m; i++) b[i] = frand();
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
  int64_t st[2] = {(int64_t)s, (int64_t)s}, pd[4] = {(int64_t)p, (int64_t)p, (int64_t)p, (int64_t)p};
  attr_ints(n, "strides", st, 2);
  attr_ints(n, "pads", pd, 4);
  kiln__attr *a = &n->attrs[n->n_attrs++];
  a->name = kiln__strdup("activation");
  a->type = KILN__ATTR_STRING;
  a->s = kiln__strdup("Relu");
  a->s_len = 4;
  n->op = kiln__op_find("ai.kiln", "FusedConv");
  const kiln__backend *cpu = &kiln__backend_cpu;
  void *state = NULL;
  if (!cpu->supports(n, g) || cpu->prepare(n, g, &state, &err) != KILN_OK) {
    printf("%s: cpu backend does not take it\n", name);
    return;
  }
  const kiln_tensor *ins[3] = {&tx, &tw, &tb};
  kiln_tensor *outs[1] = {&ty};
  kiln__kctx kc = {.node = n, .n_in = 3, .n_out = 1, .in = ins, .out = outs, .err = &err};
  n->op->infer(&kc);
  ty.data = malloc(m * ohw * sizeof(float));
  kc.scratch_bytes = cpu->scratch(&kc, state);
  kc.scratch = kc.scratch_bytes ? malloc(kc.scratch_bytes) : NULL;

  kiln__isa isa;
  kiln__isa_select(&isa, &err);
  kiln__nchwc_geom ng = {kiln__nchwc_blocks(c), h, h, kiln__nchwc_blocks(m), oh, oh, k, k,
                         s, s, 1, 1, p, p};
  float *wp = kiln__aligned_alloc(kiln__nchwc_wsize(&ng) * sizeof(float));
  kiln__nchwc_pack_w(&ng, m, c, w, wp);
  float *bp = calloc(ng.ocb * 8, sizeof(float));
  memcpy(bp, b, m * sizeof(float));
  float *xb = kiln__aligned_alloc(ng.icb * 8 * hw * sizeof(float));
  float *yb = kiln__aligned_alloc(ng.ocb * 8 * ohw * sizeof(float));
  float *yr = malloc(m * ohw * sizeof(float));
  kiln__epilogue ep = {.act = KILN__ACT_RELU};

  double *ta = malloc((size_t)reps * sizeof(double)), *tbk = malloc((size_t)reps * sizeof(double));
  double *tr = malloc((size_t)reps * sizeof(double));
  for (int r = -2; r < reps; r++) {
    double t0 = now();
    cpu->execute(&kc, state);
    double t1 = now();
    if (gemm_only) {
      if (r >= 0) ta[r] = t1 - t0;
      continue;
    }
    kiln__nchwc_conv_f32(isa, &ng, xb, wp, bp, NULL, yb, &ep, 0, ng.ocb, 0, oh);
    double t2 = now();
    kiln__nchwc_from_nchw(x, c, hw, xb);
    kiln__nchwc_to_nchw(yb, m, ohw, yr);
    double t3 = now();
    if (r >= 0) ta[r] = t1 - t0, tbk[r] = t2 - t1, tr[r] = t3 - t2;
  }
  double gf = 2.0 * (double)(m * ohw * c * k * k) * 1e-9;
  if (gemm_only) {
    qsort(ta, (size_t)reps, sizeof *ta, cmpd);
    printf("%-26s gemm min %8.1f med %8.1f us (%5.1f GF/s)\n", name, ta[0] * 1e6,
           ta[reps / 2] * 1e6, gf / ta[0]);
    cpu->release(state);
    return;
  }
  double maxd = 0, maxr = 0;
  for (size_t i = 0; i < m * ohw; i++) {
    double r = ((float *)ty.data)[i];
    maxd = fmax(maxd, fabs(yr[i] - r));
    maxr = fmax(maxr, fabs(r));
  }
  qsort(ta, (size_t)reps, sizeof *ta, cmpd);
  qsort(tbk, (size_t)reps, sizeof *tbk, cmpd);
  qsort(tr, (size_t)reps, sizeof *tr, cmpd);
  printf("%-22s gemm min %8.1f med %8.1f us (%5.1f GF/s) | nchwc min %8.1f med %8.1f us (%5.1f "
         "GF/s) | min ratio %.2f | reorders %7.1f us | maxdiff %.1e\n",
         name, ta[0] * 1e6, ta[reps / 2] * 1e6, gf / ta[0], tbk[0] * 1e6, tbk[reps / 2] * 1e6,
         gf / tbk[0], tbk[0] / ta[0], tr[reps / 2] * 1e6, maxd);
  cpu->release(state);
  if (!(maxd <= 1e-5 * (double)(c * k * k) * (1.0 + maxr))) {
    printf("%s: the NCHWc output differs from the cpu backend's\n", name);
    exit(1);
  }
}

int main(int argc, char **argv) {
  int reps = argc > 1 ? atoi(argv[1]) : 20;
  gemm_only = argc > 2 && !strcmp(argv[2], "gemm");
  filter = argc > 3 ? argv[3] : NULL;
  /* resnet50 */
  one("r50 3x3 64@56", 64, 56, 64, 3, 1, 1, reps);
  one("r50 3x3 128@28", 128, 28, 128, 3, 1, 1, reps);
  one("r50 3x3 256@14", 256, 14, 256, 3, 1, 1, reps);
  one("r50 3x3 512@7", 512, 7, 512, 3, 1, 1, reps);
  one("r50 3x3 128@56 s2", 128, 56, 128, 3, 2, 1, reps);
  one("r50 3x3 256@28 s2", 256, 28, 256, 3, 2, 1, reps);
  one("r50 3x3 512@14 s2", 512, 14, 512, 3, 2, 1, reps);
  one("r50 1x1 256->64@56", 256, 56, 64, 1, 1, 0, reps);
  one("r50 1x1 64->256@56", 64, 56, 256, 1, 1, 0, reps);
  one("r50 1x1 512->128@28", 512, 28, 128, 1, 1, 0, reps);
  one("r50 1x1 1024->256@14", 1024, 14, 256, 1, 1, 0, reps);
  one("r50 1x1 2048->512@7", 2048, 7, 512, 1, 1, 0, reps);
  one("r50 1x1 512->2048@7", 512, 7, 2048, 1, 1, 0, reps);
  one("r50 1x1 s2 1024->2048@14", 1024, 14, 2048, 1, 2, 0, reps);
  /* squeezenet1_1 fire modules */
  one("sq 1x1 128->16@55", 128, 55, 16, 1, 1, 0, reps);
  one("sq 1x1 16->64@55", 16, 55, 64, 1, 1, 0, reps);
  one("sq 3x3 16->64@55", 16, 55, 64, 3, 1, 1, reps);
  one("sq 1x1 256->32@27", 256, 27, 32, 1, 1, 0, reps);
  one("sq 3x3 32->128@27", 32, 27, 128, 3, 1, 1, reps);
  one("sq 1x1 512->64@13", 512, 13, 64, 1, 1, 0, reps);
  one("sq 3x3 64->256@13", 64, 13, 256, 3, 1, 1, reps);
  one("sq 1x1 512->1000@13", 512, 13, 1000, 1, 1, 0, reps);
  /* mobilenet_v2 pointwise convs (its depthwise ones run in conv_dw.c) */
  one("mb 1x1 32->16@112", 32, 112, 16, 1, 1, 0, reps);
  one("mb 1x1 16->96@112", 16, 112, 96, 1, 1, 0, reps);
  one("mb 1x1 96->24@56", 96, 56, 24, 1, 1, 0, reps);
  one("mb 1x1 24->144@56", 24, 56, 144, 1, 1, 0, reps);
  one("mb 1x1 144->32@28", 144, 28, 32, 1, 1, 0, reps);
  one("mb 1x1 192->64@14", 192, 14, 64, 1, 1, 0, reps);
  one("mb 1x1 64->384@14", 64, 14, 384, 1, 1, 0, reps);
  one("mb 1x1 384->64@14", 384, 14, 64, 1, 1, 0, reps);
  one("mb 1x1 960->160@7", 960, 7, 160, 1, 1, 0, reps);
  one("mb 1x1 320->1280@7", 320, 7, 1280, 1, 1, 0, reps);
  return 0;
}
