/* com.microsoft MatMulNBits: the reference kernel (src/kernels/ref/nbits.c) and the cpu kernel
 * (src/kernels/cpu/nbits_kernels.c).
 *
 * - Random shapes (M from 1 to 130, odd K and N, K not a multiple of the block, blocks 16..512,
 *   K over several SGEMM k blocks, N over several tiles and below one panel, rank-3 A), with and
 *   without packed zero points and bias: both kernels against a product in double computed here
 *   from the spec's decoding, for every float ISA the machine runs (KILN_ISA),
 *   each cpu path forced (KILN_NBITS_PATH=gemv / sgemm) and the automatic choice, serially and on
 *   2 threads, with the reference run() replaced by one that fails while the cpu kernel runs.
 *   Tolerance: 1e-5 of sum |a * w| (float32 sums in another order), plus 1e-6.
 * - Bad input (bits, shapes, g_idx, zero points, bias, block size): clear errors from infer.
 * - End to end: tests/models/nbits_tiny.onnx (tools/make_nbits_model.py) against outputs numpy
 *   computed from the spec, on the default backends and on "ref" only. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/qgemm.h"
#include "kernels/cpu/sgemm.h"
#include "kernels/ref/nbits.h"
#include "kiln_test.h"
#include "kiln_test_ir.h"
#include "kiln_test_qisa.h"

static const char *tests_dir;

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static uint32_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}
static float rnd_f(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; }

enum { IN_A, IN_B, IN_S, IN_ZP, IN_GIDX, IN_BIAS, N_IN };

/* One MatMulNBits node with its inputs (B, scales, zero points, bias are initializers). */
typedef struct nbnode {
  kiln__graph *g;
  kiln__node *n;
  kiln_tensor in[N_IN];
  bool present[N_IN];
  kiln__op fast_only;
  int64_t m, k, nn, block, nb;
} nbnode;

static kiln_status run_fails(kiln__kctx *c) {
  return kiln__fail(c->err, KILN_INTERNAL, "the cpu kernel fell back to the reference");
}

static void alloc_in(nbnode *o, int i, kiln_dtype dt, int rank, const int64_t *dims) {
  kiln_error err = {0};
  assert_int_equal(kiln_tensor_alloc(&o->in[i], dt, rank, dims, &err), KILN_OK);
  o->present[i] = true;
}

/* a_rank 3 splits M as 2 x (M / 2). */
static void nb_make(nbnode *o, int64_t m, int64_t k, int64_t n, int64_t block, bool zp, bool bias,
                    int a_rank) {
  memset(o, 0, sizeof *o);
  o->m = m, o->k = k, o->nn = n, o->block = block, o->nb = (k + block - 1) / block;
  int64_t adims3[3] = {2, m / 2, k}, adims2[2] = {m, k};
  alloc_in(o, IN_A, KILN_DTYPE_FLOAT, a_rank, a_rank == 3 ? adims3 : adims2);
  int64_t bd[3] = {n, o->nb, block / 2}, sd[1] = {n * o->nb}, zd[1] = {n * ((o->nb + 1) / 2)};
  alloc_in(o, IN_B, KILN_DTYPE_UINT8, 3, bd);
  alloc_in(o, IN_S, KILN_DTYPE_FLOAT, 1, sd);
  if (zp) alloc_in(o, IN_ZP, KILN_DTYPE_UINT8, 1, zd);
  if (bias) alloc_in(o, IN_BIAS, KILN_DTYPE_FLOAT, 1, (int64_t[]){n});
  for (int i = 0; i < N_IN; i++) {
    if (!o->present[i]) continue;
    size_t cnt = kiln_tensor_count(&o->in[i]);
    for (size_t j = 0; j < cnt; j++) {
      if (o->in[i].dtype == KILN_DTYPE_UINT8) ((uint8_t *)o->in[i].data)[j] = (uint8_t)rnd();
      else if (i == IN_S) ((float *)o->in[i].data)[j] = 0.01f + 0.2f * fabsf(rnd_f());
      else ((float *)o->in[i].data)[j] = 2.0f * rnd_f();
    }
  }
  o->g = kiln__graph_new();
  int idx[N_IN];
  int n_in = 0;
  for (int i = 0; i < N_IN; i++) {
    idx[i] = -1;
    if (!o->present[i]) continue;
    n_in = i + 1;
    char name[16];
    snprintf(name, sizeof name, "in%d", i);
    idx[i] = kiln__graph_value(o->g, name);
    kiln__value *v = &o->g->values[idx[i]];
    v->dtype = o->in[i].dtype;
    if (i != IN_A) {
      kiln_error err = {0};
      v->is_initializer = true;
      assert_int_equal(
          kiln_tensor_alloc(&v->init, o->in[i].dtype, o->in[i].rank, o->in[i].dims, &err),
          KILN_OK);
      memcpy(v->init.data, o->in[i].data, kiln_tensor_nbytes(&o->in[i]));
    }
  }
  o->n = kiln__graph_add_node(o->g);
  o->n->op_type = kiln__strdup("MatMulNBits");
  o->n->domain = kiln__strdup("com.microsoft");
  o->n->name = kiln__strdup("node");
  o->n->opset = 1;
  o->n->n_in = n_in;
  o->n->in = kiln__malloc((size_t)n_in * sizeof(int));
  memcpy(o->n->in, idx, (size_t)n_in * sizeof(int));
  o->n->n_out = 1;
  o->n->out = kiln__malloc(sizeof(int));
  o->n->out[0] = kiln__graph_value(o->g, "out0");
  o->n->attrs = kiln__calloc(8, sizeof(kiln__attr));
  kt_attr_int(o->n, "K", k);
  kt_attr_int(o->n, "N", n);
  kt_attr_int(o->n, "bits", 4);
  kt_attr_int(o->n, "block_size", block);
  const kiln__op *ref = kiln__op_find("com.microsoft", "MatMulNBits");
  assert_non_null(ref);
  o->n->op = ref;
  o->fast_only = *ref;
  o->fast_only.run = run_fails;
}

static void nb_free(nbnode *o) {
  for (int i = 0; i < N_IN; i++) kiln_tensor_release(&o->in[i]);
  kiln__graph_free(o->g);
}

/* The product from the spec, in double, and sum |a w| for the tolerance. */
static void spec_product(const nbnode *o, double *y, double *absum) {
  const float *A = o->in[IN_A].data, *S = o->in[IN_S].data;
  const uint8_t *B = o->in[IN_B].data, *Z = o->present[IN_ZP] ? o->in[IN_ZP].data : NULL;
  const float *bias = o->present[IN_BIAS] ? o->in[IN_BIAS].data : NULL;
  int64_t half = o->block / 2;
  for (int64_t r = 0; r < o->m; r++)
    for (int64_t c = 0; c < o->nn; c++) {
      double acc = bias ? bias[c] : 0.0, ab = bias ? fabs(bias[c]) : 0.0;
      for (int64_t k = 0; k < o->k; k++) {
        int64_t blk = k / o->block;
        uint8_t byte = B[(c * o->nb + blk) * half + (k % o->block) / 2];
        int code = k % 2 ? byte >> 4 : byte & 15, zp = 8;
        if (Z) {
          uint8_t zb = Z[c * ((o->nb + 1) / 2) + blk / 2];
          zp = blk % 2 ? zb >> 4 : zb & 15;
        }
        double w = (double)(code - zp) * S[c * o->nb + blk];
        acc += A[r * o->k + k] * w;
        ab += fabs(A[r * o->k + k] * w);
      }
      y[r * o->nn + c] = acc;
      absum[r * o->nn + c] = ab;
    }
}

static void check_close(const float *got, const double *want, const double *absum, size_t cnt,
                        const char *who, const char *what) {
  for (size_t i = 0; i < cnt; i++) {
    double tol = 1e-5 * absum[i] + 1e-6;
    if (!(fabs(got[i] - want[i]) <= tol))
      fail_msg("MatMulNBits %s %s (KILN_ISA=%s, KILN_NBITS_PATH=%s): element %zu is %.9g, "
               "expected %.9g (tolerance %.3g)",
               who, what, getenv("KILN_ISA"), getenv("KILN_NBITS_PATH"), i, got[i], want[i], tol);
  }
}

/* The kernel context for one run of the node: inputs as present, output y shaped by infer(). */
static kiln__kctx node_ctx(nbnode *o, const kiln_tensor **ins, kiln_tensor *y, kiln_tensor **outs,
                           kiln__pool *pool, kiln_error *err, const char *what) {
  for (int i = 0; i < N_IN; i++) ins[i] = o->present[i] ? &o->in[i] : NULL;
  *y = (kiln_tensor){0};
  outs[0] = y;
  kiln__kctx c = {.node = o->n, .n_in = o->n->n_in, .n_out = 1, .in = ins, .out = outs,
                  .pool = pool, .err = err};
  if (o->n->op->infer(&c) != KILN_OK) fail_msg("infer %s: %s", what, err->message);
  assert_int_equal(kiln_tensor_count(y), (size_t)(o->m * o->nn));
  assert_int_equal(y->dims[y->rank - 1], o->nn);
  return c;
}

/* Runs the node on the cpu kernel (fast path required) into a new array of M x N floats. */
static float *cpu_run(nbnode *o, kiln__pool *pool, const char *what) {
  const kiln__backend *cpu = &kiln__backend_cpu;
  assert_true(cpu->supports(o->n, o->g));
  void *state = NULL;
  kiln_error err = {0};
  assert_int_equal(cpu->prepare(o->n, o->g, &state, &err), KILN_OK);
  const kiln_tensor *ins[N_IN];
  kiln_tensor y, *outs[1];
  kiln__kctx c = node_ctx(o, ins, &y, outs, pool, &err, what);
  size_t cnt = kiln_tensor_count(&y);
  float *yc = malloc(cnt * sizeof *yc);
  memset(yc, 0xff, cnt * sizeof *yc); /* NaN: every element must be written */
  y.data = yc;
  c.scratch_bytes = cpu->scratch(&c, state);
  c.scratch = c.scratch_bytes ? malloc(c.scratch_bytes) : NULL;
  o->n->op = &o->fast_only;
  kiln_status st = cpu->execute(&c, state);
  o->n->op = kiln__op_find("com.microsoft", "MatMulNBits");
  if (st != KILN_OK) fail_msg("cpu %s: %s", what, err.message);
  free(c.scratch);
  cpu->release(state);
  return yc;
}

/* Runs the node on the cpu kernel (fast path required) and the reference kernel; both must be
   within tolerance of the spec product. */
static void nb_check(nbnode *o, kiln__pool *pool, const char *what) {
  float *yc = cpu_run(o, pool, what);
  const kiln_tensor *ins[N_IN];
  kiln_tensor y, *outs[1];
  kiln_error err = {0};
  kiln__kctx c = node_ctx(o, ins, &y, outs, NULL, &err, what);
  size_t cnt = kiln_tensor_count(&y);
  float *yr = malloc(cnt * sizeof *yr);
  memset(yr, 0xff, cnt * sizeof *yr);
  y.data = yr;
  assert_int_equal(o->n->op->run(&c), KILN_OK);
  double *want = malloc(cnt * sizeof *want), *absum = malloc(cnt * sizeof *absum);
  spec_product(o, want, absum);
  check_close(yc, want, absum, cnt, "cpu", what);
  check_close(yr, want, absum, cnt, "ref", what);
  free(yc);
  free(yr);
  free(want);
  free(absum);
}

static const struct {
  int64_t m, k, n, block;
  int a_rank;
} shapes[] = {
    {1, 1, 1, 16, 2},    {1, 32, 1, 32, 2},   {1, 33, 7, 32, 2},    {2, 100, 13, 16, 2},
    {3, 47, 5, 32, 2},   {4, 64, 65, 64, 2},  {5, 257, 31, 32, 2},  {7, 300, 300, 32, 2},
    {2, 512, 96, 128, 2}, {6, 45, 37, 16, 3}, {70, 129, 259, 32, 2}, {1, 768, 50, 32, 2},
    {10, 200, 17, 64, 3},
    /* M > 16 (the decode-in-packing SGEMM under auto): K over several of the SGEMM's 256-deep k
       blocks and not a multiple of the block; N over several 128-column tiles, not a multiple of
       the panel width, or so small that a panel has an all-padding group of 8; a block (512)
       deeper than a k block; 3-D A. */
    {17, 300, 45, 32, 2}, {17, 1000, 3, 16, 2}, {64, 513, 130, 64, 3}, {130, 129, 259, 32, 2},
    {130, 700, 21, 512, 3}, {64, 77, 300, 128, 2},
};

static void cases(kiln__pool *pool) {
  static const char *const paths[] = {"gemv", "sgemm", NULL};
  for (size_t si = 0; si < KILN__ARRAY_LEN(shapes); si++)
    for (int p = 0; p < 3; p++)
      for (int zp = 0; zp < 2; zp++)
        for (int bias = 0; bias < 2; bias++) {
          if (paths[p]) setenv("KILN_NBITS_PATH", paths[p], 1);
          else unsetenv("KILN_NBITS_PATH");
          nbnode o;
          nb_make(&o, shapes[si].m, shapes[si].k, shapes[si].n, shapes[si].block, zp, bias,
                  shapes[si].a_rank);
          char what[128];
          snprintf(what, sizeof what, "M %lld K %lld N %lld block %lld rank %d zp %d bias %d %s",
                   (long long)shapes[si].m, (long long)shapes[si].k, (long long)shapes[si].n,
                   (long long)shapes[si].block, shapes[si].a_rank, zp, bias,
                   pool ? "2 threads" : "serial");
          nb_check(&o, pool, what);
          nb_free(&o);
        }
  unsetenv("KILN_NBITS_PATH");
}

static void matches_spec_per_isa(void **st) {
  (void)st;
  kiln__pool *pool = NULL;
  kiln_error err = {0};
  assert_int_equal(kiln__pool_create(2, &pool, &err), KILN_OK);
  int ran = 0;
  for (int isa = 0; isa < KILN__ISA_COUNT; isa++) {
    if (!kiln__isa_supported((kiln__isa)isa)) {
      printf("  ISA %s: not available on this machine, not run\n", kiln__isa_name((kiln__isa)isa));
      continue;
    }
    setenv("KILN_ISA", kiln__isa_name((kiln__isa)isa), 1);
    cases(NULL);
    cases(pool);
    ran++;
  }
  assert_true(ran >= 1);
  unsetenv("KILN_ISA");
  kiln__pool_free(pool);
}

/* ---- int8 activations (accuracy_level 4) ------------------------------------------------------ */


/* The reference q8 arithmetic (kernels/ref/nbits.h): per row and block the reference quantizer,
   integer block sums, sum_j (dot - zp * asum) * s_a * s_w in double; and for the tolerance, as
   for the float path, the sum of |product| over the elements: |a_q (code - zp)| s_a s_w. */
static void q8_reference(const nbnode *o, double *y, double *absum) {
  const float *A = o->in[IN_A].data, *S = o->in[IN_S].data;
  const uint8_t *B = o->in[IN_B].data, *Z = o->present[IN_ZP] ? o->in[IN_ZP].data : NULL;
  const float *bias = o->present[IN_BIAS] ? o->in[IN_BIAS].data : NULL;
  size_t nb = (size_t)o->nb, block = (size_t)o->block;
  int8_t *aq = malloc(nb * block);
  float *sa = malloc(nb * sizeof *sa);
  int32_t *asum = malloc(nb * sizeof *asum);
  for (int64_t r = 0; r < o->m; r++) {
    kiln__nbits_q8_quant_row(A + r * o->k, (size_t)o->k, block, aq, sa, asum);
    for (int64_t c = 0; c < o->nn; c++) {
      double acc = bias ? bias[c] : 0.0, ab = bias ? fabs(bias[c]) : 0.0;
      for (size_t j = 0; j < nb; j++) {
        int zp = 8;
        if (Z) {
          uint8_t zb = Z[c * ((o->nb + 1) / 2) + (int64_t)j / 2];
          zp = j % 2 ? zb >> 4 : zb & 15;
        }
        const uint8_t *blob = B + (c * o->nb + (int64_t)j) * (o->block / 2);
        int32_t d = kiln__nbits_q8_block_dot(blob, aq + j * block, block) - zp * asum[j];
        double sc = (double)sa[j] * S[c * o->nb + (int64_t)j];
        acc += (double)d * sc;
        for (size_t t = 0; t < block; t++)
          ab += fabs((double)aq[j * block + t] * ((t % 2 ? blob[t / 2] >> 4 : blob[t / 2] & 15) - zp) * sc);
      }
      y[r * o->nn + c] = acc;
      absum[r * o->nn + c] = ab;
    }
  }
  free(aq);
  free(sa);
  free(asum);
}

/* Scales rounded to float16 values (what a file with fp16 scales gives the kernel after the
   planner folds its Cast). */
static void round_scales_f16(nbnode *o) {
  float *s = o->in[IN_S].data, *g = o->g->values[o->n->in[IN_S]].init.data;
  for (size_t i = 0; i < kiln_tensor_count(&o->in[IN_S]); i++)
    s[i] = g[i] = kiln__f16_to_f32(kiln__f32_to_f16(s[i]));
}

static const int64_t q8_shapes[][3] = { /* K, N, block; M runs 1..17 over them */
    {32, 1, 32},  {33, 7, 32},   {100, 13, 32}, {257, 31, 64}, {300, 45, 32},
    {45, 3, 128}, {512, 17, 128}, {1000, 9, 32}, {64, 65, 64},
};

static void q8_cases(kiln__pool *pool) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(q8_shapes); si++)
    for (int64_t m = 1 + (int64_t)si % 3; m <= 17; m += 3)
      for (int v = 0; v < 4; v++) { /* bit 0: zero points; bit 1: fp16 scales + bias */
        bool attr = (m + v) % 2; /* accuracy_level=4 on the node, else KILN_NBITS_PATH=q8 */
        if (attr) unsetenv("KILN_NBITS_PATH");
        else setenv("KILN_NBITS_PATH", "q8", 1);
        nbnode o;
        nb_make(&o, m, q8_shapes[si][0], q8_shapes[si][1], q8_shapes[si][2], v & 1, v & 2, 2);
        if (attr) kt_attr_int(o.n, "accuracy_level", 4);
        if (v & 2) round_scales_f16(&o);
        char what[160];
        snprintf(what, sizeof what, "q8 M %lld K %lld N %lld block %lld zp %d f16 %d %s %s",
                 (long long)m, (long long)q8_shapes[si][0], (long long)q8_shapes[si][1],
                 (long long)q8_shapes[si][2], v & 1, v >> 1, attr ? "attr" : "env",
                 pool ? "2 threads" : "serial");
        size_t cnt = (size_t)(m * o.nn);
        double *want = malloc(cnt * sizeof *want), *absum = malloc(cnt * sizeof *absum);
        q8_reference(&o, want, absum);
        float *got = cpu_run(&o, pool, what);
        check_close(got, want, absum, cnt, "cpu", what);
        free(got);
        free(want);
        free(absum);
        nb_free(&o);
      }
  unsetenv("KILN_NBITS_PATH");
}

/* Inputs whose q8 arithmetic is exact: every block of A holds +-127 * 2^-6 and integer multiples
   of 2^-6 (so s_a = 2^-6 and a / s_a is the integer), weight scales 2^-3 or 2^-2. Every term is
   then a multiple of 2^-9 and every sum below 2^23 of those, so any summation order gives the
   spec's product (computed here in double) exactly: the integer block sums must be exact. */
static void q8_exact_cases(kiln__pool *pool) {
  static const int64_t sh[][4] = {{1, 33, 7, 32}, {5, 300, 19, 32}, {17, 257, 9, 64}, {4, 130, 3, 128}};
  setenv("KILN_NBITS_PATH", "q8", 1);
  for (size_t si = 0; si < KILN__ARRAY_LEN(sh); si++)
    for (int zp = 0; zp < 2; zp++) {
      nbnode o;
      nb_make(&o, sh[si][0], sh[si][1], sh[si][2], sh[si][3], zp, false, 2);
      float *A = o.in[IN_A].data, *S = o.in[IN_S].data;
      for (int64_t r = 0; r < o.m; r++)
        for (int64_t k = 0; k < o.k; k++)
          A[r * o.k + k] = (k % o.block == 0 ? (rnd() % 2 ? 127.0f : -127.0f)
                                             : (float)((int)(rnd() % 255) - 127)) / 64.0f;
      float *gs = o.g->values[o.n->in[IN_S]].init.data;
      for (size_t i = 0; i < kiln_tensor_count(&o.in[IN_S]); i++)
        S[i] = gs[i] = rnd() % 2 ? 0.125f : 0.25f;
      char what[128];
      snprintf(what, sizeof what, "q8 exact M %lld K %lld N %lld block %lld zp %d %s",
               (long long)o.m, (long long)o.k, (long long)o.nn, (long long)o.block, zp,
               pool ? "2 threads" : "serial");
      size_t cnt = (size_t)(o.m * o.nn);
      double *want = malloc(cnt * sizeof *want), *absum = malloc(cnt * sizeof *absum), *qr = malloc(cnt * sizeof *qr);
      spec_product(&o, want, absum);
      q8_reference(&o, qr, absum);
      float *got = cpu_run(&o, pool, what);
      for (size_t i = 0; i < cnt; i++) {
        assert_true(qr[i] == want[i]); /* the reference arithmetic is exact here too */
        if (got[i] != (float)want[i])
          fail_msg("%s (KILN_ISA=%s): element %zu is %.9g, exactly %.9g expected", what,
                   getenv("KILN_ISA"), i, got[i], want[i]);
      }
      free(got);
      free(want);
      free(absum);
      free(qr);
      nb_free(&o);
    }
  unsetenv("KILN_NBITS_PATH");
}

static void q8_all_cases(kiln__pool *pool) {
  q8_exact_cases(pool);
  q8_cases(pool);
}

static void q8_per_isa(void **st) {
  (void)st;
  kt_for_each_qisa(q8_all_cases);
}

/* accuracy_level 4 with a block the q8 kernels do not take (16) runs the float path: the spec's
   product within float rounding. */
static void q8_block16_float(void **st) {
  (void)st;
  nbnode o;
  nb_make(&o, 3, 45, 37, 16, true, true, 2);
  kt_attr_int(o.n, "accuracy_level", 4);
  nb_check(&o, NULL, "accuracy_level 4, block 16");
  nb_free(&o);
}

/* infer on a node edited by `edit` must fail with `status` and a message containing `needle`;
   the cpu backend must not claim it (except when only A's shape is wrong, which it cannot see). */
static void expect_reject(void (*edit)(nbnode *), kiln_status status, const char *needle,
                          bool cpu_may_claim) {
  nbnode o;
  nb_make(&o, 3, 40, 5, 16, true, true, 2);
  edit(&o);
  /* mirror edited inputs into the graph's initializers so supports() sees them too */
  for (int i = IN_B; i < N_IN; i++) {
    if (i >= o.n->n_in || o.n->in[i] < 0) continue;
    kiln__value *v = &o.g->values[o.n->in[i]];
    kiln_tensor_release(&v->init);
    kiln_error err = {0};
    assert_int_equal(
        kiln_tensor_alloc(&v->init, o.in[i].dtype, o.in[i].rank, o.in[i].dims, &err), KILN_OK);
    memcpy(v->init.data, o.in[i].data, kiln_tensor_nbytes(&o.in[i]));
  }
  if (!cpu_may_claim) assert_false(kiln__backend_cpu.supports(o.n, o.g));
  const kiln_tensor *ins[N_IN];
  for (int i = 0; i < N_IN; i++) ins[i] = o.present[i] ? &o.in[i] : NULL;
  kiln_tensor y = {0};
  kiln_tensor *outs[1] = {&y};
  kiln_error err = {0};
  kiln__kctx c = {.node = o.n, .n_in = o.n->n_in, .n_out = 1, .in = ins, .out = outs, .err = &err};
  assert_int_equal(o.n->op->infer(&c), status);
  if (!strstr(err.message, needle)) fail_msg("message '%s' lacks '%s'", err.message, needle);
  nb_free(&o);
}

static void set_attr(nbnode *o, const char *name, int64_t v) {
  for (int i = 0; i < o->n->n_attrs; i++)
    if (!strcmp(o->n->attrs[i].name, name)) o->n->attrs[i].i = v;
}
static void edit_bits(nbnode *o) { set_attr(o, "bits", 8); }
static void edit_block(nbnode *o) { set_attr(o, "block_size", 24); }
static void edit_k(nbnode *o) { set_attr(o, "K", 41); }
static void edit_b_shape(nbnode *o) {
  kiln_tensor_release(&o->in[IN_B]);
  alloc_in(o, IN_B, KILN_DTYPE_UINT8, 3, (int64_t[]){5, 2, 8});
}
static void edit_scales(nbnode *o) {
  kiln_tensor_release(&o->in[IN_S]);
  alloc_in(o, IN_S, KILN_DTYPE_FLOAT, 1, (int64_t[]){14});
}
static void edit_zp(nbnode *o) {
  kiln_tensor_release(&o->in[IN_ZP]);
  alloc_in(o, IN_ZP, KILN_DTYPE_UINT8, 1, (int64_t[]){15}); /* unpacked count, not packed */
}
static void edit_bias(nbnode *o) {
  kiln_tensor_release(&o->in[IN_BIAS]);
  alloc_in(o, IN_BIAS, KILN_DTYPE_FLOAT, 1, (int64_t[]){4});
}
static void edit_gidx(nbnode *o) {
  alloc_in(o, IN_GIDX, KILN_DTYPE_INT32, 1, (int64_t[]){40});
  o->n->in[IN_GIDX] = kiln__graph_value(o->g, "gidx");
}

static void bad_input(void **st) {
  (void)st;
  expect_reject(edit_bits, KILN_UNSUPPORTED, "bits=8 is not supported", false);
  expect_reject(edit_block, KILN_INVALID_ARGUMENT, "block_size must be a power of two", false);
  expect_reject(edit_k, KILN_INVALID_ARGUMENT, "A's last dim must equal K=41", true);
  expect_reject(edit_b_shape, KILN_INVALID_ARGUMENT, "B must be uint8 [N=5, n_blocks=3", false);
  expect_reject(edit_scales, KILN_INVALID_ARGUMENT, "scales must be float32", false);
  expect_reject(edit_zp, KILN_INVALID_ARGUMENT, "zero_points must be uint8", false);
  expect_reject(edit_bias, KILN_INVALID_ARGUMENT, "bias must be float32 [N=5]", true);
  expect_reject(edit_gidx, KILN_UNSUPPORTED, "g_idx", false);
}

/* The shipped model against numpy's outputs; rows 1 (GEMV) and 9 (SGEMM); all backends and
   "ref" alone. */
static void model_fixture(void **st) {
  (void)st;
  char path[1024], dir[1024];
  snprintf(path, sizeof path, "%s/models/nbits_tiny.onnx", tests_dir);
  snprintf(dir, sizeof dir, "%s/data/nbits", tests_dir);
  static const char *const ref_only[] = {"ref", NULL};
  for (int be = 0; be < 2; be++)
    for (int rows = 1; rows <= 9; rows += 8) {
      kiln_model_opts mo = kiln_model_opts_default();
      mo.intra_threads = 2;
      mo.backends = be ? ref_only : NULL;
      kiln_model *m = NULL;
      kiln_error err = {0};
      if (kiln_model_load(path, &mo, &m, &err) != KILN_OK) fail_msg("%s", err.message);
      char xf[16], yf[16];
      snprintf(xf, sizeof xf, "x%d.npy", rows);
      snprintf(yf, sizeof yf, "y%d.npy", rows);
      kiln_tensor x, want, y;
      kt_read_npy(dir, xf, &x);
      kt_read_npy(dir, yf, &want);
      kiln_session *s = NULL;
      assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
      const char *names[] = {"x"};
      if (kiln_session_run(s, names, &x, 1, &err) != KILN_OK) fail_msg("%s", err.message);
      assert_int_equal(kiln_session_output(s, 0, &y), KILN_OK);
      assert_int_equal(kiln_tensor_count(&y), kiln_tensor_count(&want));
      assert_int_equal(y.dims[0], rows);
      const float *a = y.data, *b = want.data;
      for (size_t i = 0; i < kiln_tensor_count(&y); i++)
        if (!(fabsf(a[i] - b[i]) <= 1e-4f * (1.0f + fabsf(b[i]))))
          fail_msg("%s rows %d element %zu: %g, numpy %g", be ? "ref" : "default", rows, i, a[i],
                   b[i]);
      kiln_session_free(s);
      kiln_model_free(m);
      kiln_tensor_release(&x);
      kiln_tensor_release(&want);
    }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s TESTS_DIR\n", argv[0]);
    return 2;
  }
  tests_dir = argv[1];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(matches_spec_per_isa),
      cmocka_unit_test(q8_per_isa),
      cmocka_unit_test(q8_block16_float),
      cmocka_unit_test(bad_input),
      cmocka_unit_test(model_fixture),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
