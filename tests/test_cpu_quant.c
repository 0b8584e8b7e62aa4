/* The "cpu" backend's quantization kernels (quant_kernels.c on the integer GEMM of qgemm.h)
 * against the reference kernels of src/kernels/ref/quant.c, for every integer ISA this machine
 * runs (KILN_ISA), serially and on a 2-thread pool: MatMulInteger and QLinearMatMul (uint8/int8
 * on either side, zero points none / per tensor / per column, constant and computed B, batched A,
 * shapes around the tile edges), ConvInteger and QLinearConv (dense, 1x1, strided, padded with a
 * non-zero input zero point, grouped, depthwise, several im2col chunks, per-channel weight zero
 * points and scales, bias), QuantizeLinear / DequantizeLinear (per tensor, per axis, NaN and
 * out-of-range values) and DynamicQuantizeLinear.
 *
 * What is compared: every output byte, exactly (memcmp). The integer sums are exact, and the
 * fast requantization performs the reference's float operations in the same order, so even the
 * uint8/int8 outputs of QLinear* and the float outputs of DequantizeLinear must be identical.
 * While the cpu kernel runs, the reference run() is replaced by one that fails, so a case passes
 * only if the fast path computed it. */
#include <inttypes.h>
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
#include "kiln_test_ir.h"
#include "kiln_test_qisa.h"
#include "kiln_test_select.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
  rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(rng_state >> 33);
}
static float rnd_f(void) { return (float)(rnd() % 2000001) / 1000000.0f - 1.0f; }

#define MAX_IN 14
#define MAX_OUT 3

/* One input: dtype, shape, whether it is an initializer, and fixed values (NULL: random). */
typedef struct tin {
  kiln_dtype dt;
  int rank; /* -1: omitted */
  int64_t dims[4];
  bool init;
  const void *vals;
} tin;

typedef struct onenode {
  kiln__graph *g;
  kiln__node *n;
  kiln_tensor in[MAX_IN];
  int n_in, n_out;
  kiln__op fast_only;
  /* Which packed weight format prepare() must pick: 0 no check, 1 the AVX2 byte format
     (VPMADDUBSW), 2 the exact int16 one (only differs from the ISA's own under KILN_ISA=avx2;
     under avx512vnni a conv's are both the VNNI byte format). */
  int expect_fmt;
  /* Conv only: 1 the columns must come from an NHWC copy (kiln__qpack_taps), -1 they must not,
     0 no check. */
  int expect_nhwc;
} onenode;


static kiln_status run_fails(kiln__kctx *c) {
  return kiln__fail(c->err, KILN_INTERNAL, "the cpu kernel fell back to the reference");
}

static void fill(kiln_tensor *t, const void *vals) {
  size_t n = kiln_tensor_count(t);
  if (vals) {
    memcpy(t->data, vals, kiln_tensor_nbytes(t));
    return;
  }
  for (size_t i = 0; i < n; i++) switch (t->dtype) {
    case KILN_DTYPE_UINT8: ((uint8_t *)t->data)[i] = (uint8_t)rnd(); break;
    case KILN_DTYPE_INT8: ((int8_t *)t->data)[i] = (int8_t)(uint8_t)rnd(); break;
    case KILN_DTYPE_INT32: ((int32_t *)t->data)[i] = (int32_t)(rnd() % 20001) - 10000; break;
    default: ((float *)t->data)[i] = 4.0f * rnd_f(); break;
    }
}

static void onenode_make(onenode *o, const char *op, int n_in, const tin *ins, int n_out) {
  memset(o, 0, sizeof *o);
  o->g = kiln__graph_new();
  o->n_in = n_in;
  o->n_out = n_out;
  int idx[MAX_IN];
  kiln_error err = {0};
  for (int i = 0; i < n_in; i++) {
    if (ins[i].rank < 0) {
      idx[i] = -1;
      continue;
    }
    char name[16];
    snprintf(name, sizeof name, "in%d", i);
    idx[i] = kiln__graph_value(o->g, name);
    assert_int_equal(kiln_tensor_alloc(&o->in[i], ins[i].dt, ins[i].rank, ins[i].dims, &err),
                     KILN_OK);
    fill(&o->in[i], ins[i].vals);
    kiln__value *v = &o->g->values[idx[i]];
    v->dtype = ins[i].dt;
    if (ins[i].init) {
      v->is_initializer = true;
      assert_int_equal(kiln_tensor_alloc(&v->init, ins[i].dt, ins[i].rank, ins[i].dims, &err),
                       KILN_OK);
      memcpy(v->init.data, o->in[i].data, kiln_tensor_nbytes(&o->in[i]));
    }
  }
  o->n = kiln__graph_add_node(o->g);
  o->n->op_type = kiln__strdup(op);
  /* the default domain, or com.microsoft for its quantized ops (QLinearConcat) */
  const char *domain = kiln__op_find("", op)          ? ""
                       : kiln__op_find("ai.kiln", op) ? "ai.kiln"
                                                      : "com.microsoft";
  o->n->domain = kiln__strdup(domain);
  o->n->name = kiln__strdup("node");
  o->n->opset = 13;
  o->n->n_in = n_in;
  o->n->in = kiln__malloc((size_t)n_in * sizeof(int));
  memcpy(o->n->in, idx, (size_t)n_in * sizeof(int));
  o->n->n_out = n_out;
  o->n->out = kiln__malloc((size_t)n_out * sizeof(int));
  for (int i = 0; i < n_out; i++) {
    char name[16];
    snprintf(name, sizeof name, "out%d", i);
    o->n->out[i] = kiln__graph_value(o->g, name);
  }
  o->n->attrs = kiln__calloc(8, sizeof(kiln__attr));
  const kiln__op *ref = kiln__op_find(domain, op);
  assert_non_null(ref);
  o->n->op = ref;
  o->fast_only = *ref;
  o->fast_only.run = run_fails;
}

static void onenode_free(onenode *o) {
  for (int i = 0; i < o->n_in; i++) kiln_tensor_release(&o->in[i]);
  kiln__graph_free(o->g);
}

static bool is_conv(const char *op) { return strstr(op, "Conv") != NULL; }

/* The packed format prepare() chose for every weight group against the one expected. */
static void check_weight_format(const onenode *o, void *state, const char *what) {
  kiln__qisa isa;
  kiln_error err = {0};
  assert_int_equal(kiln__qisa_select(&isa, &err), KILN_OK);
  kiln__qisa want = isa;
  if (isa == KILN__QISA_AVX2 && o->expect_fmt == 1)
    want = is_conv(o->n->op_type) ? KILN__QFMT_AVX2_S8U8 : KILN__QFMT_AVX2_U8S8;
  /* AVX512-VNNI: conv weights in the byte layout whatever the values (VPDPBUSD is exact) */
  if (isa == KILN__QISA_AVX512VNNI && o->expect_fmt && is_conv(o->n->op_type) &&
      kiln__qisa_supported(KILN__QFMT_VNNI_S8U8))
    want = KILN__QFMT_VNNI_S8U8;
  const void *ks = kiln__cpu_kernel_state(state);
  size_t groups = 1;
  for (int i = 0; i < o->n->n_attrs; i++)
    if (!strcmp(o->n->attrs[i].name, "group")) groups = (size_t)o->n->attrs[i].i;
  for (size_t g = 0; g < groups; g++) {
    kiln__qisa got = kiln__cpu_quant_weight_format(o->n->op_type, ks, g);
    if (got != want)
      fail_msg("%s %s (KILN_ISA=%s): weights of group %zu packed as %s, expected %s",
               o->n->op_type, what, getenv("KILN_ISA"), g, kiln__qisa_name(got),
               kiln__qisa_name(want));
  }
}

/* Runs the node on "cpu" (fast path required unless `fallback_ok`) and on the reference
   kernel, and compares every output byte. */
static void onenode_check_ex(onenode *o, kiln__pool *pool, bool fallback_ok, const char *what) {
  const kiln__backend *cpu = &kiln__backend_cpu;
  assert_true(cpu->supports(o->n, o->g));
  void *state = NULL;
  kiln_error err = {0};
  assert_int_equal(cpu->prepare(o->n, o->g, &state, &err), KILN_OK);
  if (o->expect_fmt) check_weight_format(o, state, what);
  if (o->expect_nhwc &&
      kiln__cpu_qconv_nhwc(o->n->op_type, kiln__cpu_kernel_state(state)) != (o->expect_nhwc > 0))
    fail_msg("%s %s (KILN_ISA=%s): NHWC columns %s", o->n->op_type, what, getenv("KILN_ISA"),
             o->expect_nhwc > 0 ? "not taken" : "taken");
  const kiln_tensor *ins[MAX_IN];
  for (int i = 0; i < o->n_in; i++) ins[i] = o->in[i].data ? &o->in[i] : NULL;
  kiln_tensor y_cpu[MAX_OUT] = {{0}}, y_ref[MAX_OUT] = {{0}};
  kiln_tensor *outs[MAX_OUT] = {&y_cpu[0], &y_cpu[1], &y_cpu[2]};
  kiln__kctx c = {.node = o->n, .n_in = o->n_in, .n_out = o->n_out, .in = ins, .out = outs,
                  .pool = pool, .err = &err};
  kiln_status st = o->n->op->infer(&c);
  if (st != KILN_OK) fail_msg("%s %s: infer: %s", o->n->op_type, what, err.message);
  for (int i = 0; i < o->n_out; i++) {
    y_ref[i] = y_cpu[i];
    size_t nb = kiln_tensor_nbytes(&y_cpu[i]);
    y_cpu[i].data = malloc(nb + 1);
    y_ref[i].data = malloc(nb + 1);
    memset(y_cpu[i].data, 0xa5, nb); /* every byte must be written */
    memset(y_ref[i].data, 0x5a, nb);
  }
  c.scratch_bytes = cpu->scratch(&c, state);
  c.scratch = c.scratch_bytes ? malloc(c.scratch_bytes) : NULL;
  if (!fallback_ok) o->n->op = &o->fast_only;
  st = cpu->execute(&c, state);
  o->n->op = kiln__op_find(o->n->domain, o->n->op_type);
  if (st != KILN_OK) fail_msg("%s %s: %s", o->n->op_type, what, err.message);
  free(c.scratch);
  for (int i = 0; i < o->n_out; i++) outs[i] = &y_ref[i];
  c.pool = NULL;
  c.scratch_bytes = o->n->op->scratch ? o->n->op->scratch(&c) : 0;
  c.scratch = c.scratch_bytes ? malloc(c.scratch_bytes) : NULL;
  assert_int_equal(o->n->op->run(&c), KILN_OK);
  free(c.scratch);
  for (int i = 0; i < o->n_out; i++) {
    size_t nb = kiln_tensor_nbytes(&y_cpu[i]);
    const uint8_t *a = y_cpu[i].data, *b = y_ref[i].data;
    for (size_t j = 0; j < nb; j++)
      if (a[j] != b[j])
        fail_msg("%s %s (KILN_ISA=%s, %s): output %d byte %zu of %zu is 0x%02x, reference 0x%02x",
                 o->n->op_type, what, getenv("KILN_ISA"), pool ? "2 threads" : "serial", i, j,
                 nb, a[j], b[j]);
    free(y_cpu[i].data);
    free(y_ref[i].data);
  }
  cpu->release(state);
}

static void onenode_check(onenode *o, kiln__pool *pool, const char *what) {
  onenode_check_ex(o, pool, false, what);
}

static const uint8_t zero8 = 0; /* a zero point of 0, as uint8 or int8 */

/* ---- MatMulInteger / QLinearMatMul ----------------------------------------------------------- */

static const struct {
  int64_t batch, m, k, n;
} mm_shapes[] = {
    {0, 1, 1, 1},    {0, 3, 5, 7},     {0, 6, 16, 16},   {0, 7, 17, 33},  {0, 13, 64, 9},
    {0, 72, 256, 128}, {0, 73, 257, 129}, {0, 100, 300, 200}, {2, 5, 19, 23}, {0, 1, 768, 50},
    {3, 50, 130, 70}, {0, 4, 600, 8}, {0, 9, 4700, 21}, /* k past one 4608 block */
};

/* zero-point modes: 0 none, 1 za only, 2 za and per-column zb, 3 za and scalar zb, 4 per-row za
   ([M], single matrices) and per-column zb */
static void mm_cases(kiln__pool *pool) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(mm_shapes); si++)
    for (int combo = 0; combo < 4; combo++)
      for (int zmode = 0; zmode < 5; zmode++)
        for (int bconst = 0; bconst < 2; bconst++) {
          if (zmode == 4 && mm_shapes[si].batch) continue; /* per row of one matrix */
          kiln_dtype at = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
          kiln_dtype bt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
          int64_t m = mm_shapes[si].m, k = mm_shapes[si].k, n = mm_shapes[si].n;
          tin ins[4] = {{at, 2, {m, k}}, {bt, 2, {k, n}, bconst}, {at, -1}, {bt, -1}};
          if (mm_shapes[si].batch) ins[0] = (tin){at, 3, {mm_shapes[si].batch, m, k}};
          if (zmode >= 1) ins[2] = (tin){at, 0, {0}, true};
          if (zmode == 2) ins[3] = (tin){bt, 1, {n}, true};
          if (zmode == 3) ins[3] = (tin){bt, 1, {1}, false};
          if (zmode == 4) {
            ins[2] = (tin){at, 1, {m}, bconst}; /* a constant or a run-time input */
            ins[3] = (tin){bt, 1, {n}, true};
          }
          onenode o;
          onenode_make(&o, "MatMulInteger", zmode >= 2 ? 4 : zmode == 1 ? 3 : 2, ins, 1);
          char what[96];
          snprintf(what, sizeof what, "%lldx%lldx%lld batch %lld a %s b %s zp mode %d const %d",
                   (long long)m, (long long)k, (long long)n, (long long)mm_shapes[si].batch,
                   kiln_dtype_name(at), kiln_dtype_name(bt), zmode, bconst);
          onenode_check(&o, pool, what);
          onenode_free(&o);
        }
}

static void matmulinteger_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(mm_cases);
}

static void qlmm_cases(kiln__pool *pool) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(mm_shapes); si++)
    for (int combo = 0; combo < 8; combo++)
      for (int per_col = 0; per_col < 2; per_col++) {
        kiln_dtype at = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
        kiln_dtype bt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
        kiln_dtype yt = combo & 4 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
        int64_t m = mm_shapes[si].m, k = mm_shapes[si].k, n = mm_shapes[si].n;
        float sa = 0.02f, sy = 0.02f * 0.01f * 8.0f * sqrtf((float)k);
        float sb[256];
        for (int64_t j = 0; j < n; j++) sb[j] = 0.01f * (0.5f + (float)(rnd() % 1000) / 1000.0f);
        /* y_scale sized so that outputs spread over the range and some saturate. */
        tin ins[8] = {{at, 2, {m, k}},
                      {KILN_DTYPE_FLOAT, 0, {0}, true, &sa},
                      {at, 0, {0}, true},
                      {bt, 2, {k, n}, true},
                      {KILN_DTYPE_FLOAT, per_col ? 1 : 0, {n}, true, sb},
                      {bt, per_col ? 1 : 0, {n}, true},
                      {KILN_DTYPE_FLOAT, 0, {0}, true, &sy},
                      {yt, 0, {0}, true}};
        if (mm_shapes[si].batch) ins[0] = (tin){at, 3, {mm_shapes[si].batch, m, k}};
        onenode o;
        onenode_make(&o, "QLinearMatMul", 8, ins, 1);
        char what[96];
        snprintf(what, sizeof what, "%lldx%lldx%lld a %s b %s y %s per-column %d", (long long)m,
                 (long long)k, (long long)n, kiln_dtype_name(at), kiln_dtype_name(bt),
                 kiln_dtype_name(yt), per_col);
        onenode_check(&o, pool, what);
        onenode_free(&o);
      }
}

static void qlinearmatmul_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(qlmm_cases);
}

/* ai.kiln QLinearMatMulDq (fuse-qdq-out): the GEMM epilogue's requantize, dequantize and bias add
   against the reference's QLinearMatMul then DequantizeLinear then Add, bit for bit; with and
   without the bias and the dequantization's zero point, every 8-bit type mix, edge columns
   (n % 8) and k past one block. */
static void qlmmdq_cases(kiln__pool *pool) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(mm_shapes); si++)
    for (int combo = 0; combo < 16; combo++) {
      kiln_dtype at = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
      kiln_dtype bt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
      kiln_dtype yt = combo & 4 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
      bool bias = combo & 8, dz = combo % 3 != 0, per_col = combo % 5 < 2;
      int64_t m = mm_shapes[si].m, k = mm_shapes[si].k, n = mm_shapes[si].n;
      float sa = 0.02f, sy = 0.02f * 0.01f * 8.0f * sqrtf((float)k), ds = sy * 1.25f;
      float sb[256], bv[256];
      for (int64_t j = 0; j < n; j++) {
        sb[j] = 0.01f * (0.5f + (float)(rnd() % 1000) / 1000.0f);
        bv[j] = (float)((int)(rnd() % 2001) - 1000) / 337.0f;
      }
      tin ins[11] = {{at, 2, {m, k}},
                     {KILN_DTYPE_FLOAT, 0, {0}, true, &sa},
                     {at, 0, {0}, true},
                     {bt, 2, {k, n}, true},
                     {KILN_DTYPE_FLOAT, per_col ? 1 : 0, {n}, true, sb},
                     {bt, per_col ? 1 : 0, {n}, true},
                     {KILN_DTYPE_FLOAT, 0, {0}, true, &sy},
                     {yt, 0, {0}, true},
                     {KILN_DTYPE_FLOAT, 0, {0}, true, &ds},
                     dz ? (tin){yt, 0, {0}, true} : (tin){yt, -1},
                     {KILN_DTYPE_FLOAT, 1, {n}, true, bv}};
      if (mm_shapes[si].batch) ins[0] = (tin){at, 3, {mm_shapes[si].batch, m, k}};
      onenode o;
      onenode_make(&o, "QLinearMatMulDq", bias ? 11 : dz ? 10 : 9, ins, 1);
      char what[128];
      snprintf(what, sizeof what, "%lldx%lldx%lld a %s b %s y %s per-column %d bias %d dq zp %d",
               (long long)m, (long long)k, (long long)n, kiln_dtype_name(at), kiln_dtype_name(bt),
               kiln_dtype_name(yt), per_col, bias, dz);
      onenode_check(&o, pool, what);
      onenode_free(&o);
    }
}

/* com.microsoft MatMulIntegerToFloat (fuse-qdq-out's form of int8-dynamic's MatMulInteger ->
   Cast -> Mul -> Add): the epilogue's float conversion, product and bias against the reference,
   bit for bit; with and without zero points (per-row a_zero_point included) and bias, scalar or
   per-column b_scale. */
static void mif_cases(kiln__pool *pool) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(mm_shapes); si++)
    for (int combo = 0; combo < 16; combo++) {
      if ((combo & 8) && mm_shapes[si].batch) continue; /* per-row a_zero_point: one matrix */
      kiln_dtype at = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
      kiln_dtype bt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
      bool bias = combo & 4, per_col = combo % 3 != 0;
      int64_t m = mm_shapes[si].m, k = mm_shapes[si].k, n = mm_shapes[si].n;
      float sa = 0.0173f, sb[256], bv[256];
      for (int64_t j = 0; j < n; j++) {
        sb[j] = 0.01f * (0.5f + (float)(rnd() % 1000) / 1000.0f);
        bv[j] = (float)((int)(rnd() % 2001) - 1000) / 337.0f;
      }
      tin ins[7] = {{at, 2, {m, k}},
                    {bt, 2, {k, n}, true},
                    {KILN_DTYPE_FLOAT, 0, {0}, true, &sa},
                    {KILN_DTYPE_FLOAT, per_col ? 1 : 0, {n}, true, sb},
                    combo & 8 ? (tin){at, 1, {m}, true} : (tin){at, 0, {0}, true},
                    {bt, per_col ? 1 : 0, {n}, true},
                    {KILN_DTYPE_FLOAT, 1, {n}, true, bv}};
      if (mm_shapes[si].batch) ins[0] = (tin){at, 3, {mm_shapes[si].batch, m, k}};
      onenode o;
      onenode_make(&o, "MatMulIntegerToFloat", bias ? 7 : 6, ins, 1);
      char what[128];
      snprintf(what, sizeof what, "%lldx%lldx%lld a %s b %s per-column %d bias %d per-row za %d",
               (long long)m, (long long)k, (long long)n, kiln_dtype_name(at), kiln_dtype_name(bt),
               per_col, bias, (combo & 8) != 0);
      onenode_check(&o, pool, what);
      onenode_free(&o);
    }
}

static void matmulintegertofloat_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(mif_cases);
}

/* ai.kiln DynamicQuantizeRows and RowQuantMatMul (fuse-rowq: int8-dynamic --per-row's
   pattern) against the reference bit for bit. Rows: magnitudes from 2^-10 to 2^10, an all-zero
   row (the min_scale floor), a row holding NaN and infinity; qmax 127 or 100; int8 out or
   uint8 with zero point 128. The product: int8 or uint8 A and B, scalar or per-column b_scale,
   with and without zero points and the bias. */
static void rowq_cases(kiln__pool *pool) {
  static float av[65536], sa[4096];
  for (size_t si = 0; si < KILN__ARRAY_LEN(mm_shapes); si++)
    for (int combo = 0; combo < 8; combo++) {
      int64_t m = mm_shapes[si].m, k = mm_shapes[si].k, n = mm_shapes[si].n;
      int64_t rows = m * (mm_shapes[si].batch ? mm_shapes[si].batch : 1);
      assert_true((size_t)(rows * k) <= KILN__ARRAY_LEN(av) && (size_t)rows <= KILN__ARRAY_LEN(sa));
      for (int64_t r = 0; r < rows; r++) {
        float mag = ldexpf(1.0f, (int)(rnd() % 21) - 10); /* 2^-10 .. 2^10 */
        for (int64_t p = 0; p < k; p++) av[r * k + p] = r == 1 ? 0.0f : mag * rnd_f();
        if (r == 2) av[r * k + k / 2] = NAN;
        if (r == 2 && k > 1) av[r * k] = INFINITY;
        sa[r] = mag / 127.0f;
      }
      char what[128];
      snprintf(what, sizeof what, "%lldx%lld qmax %s", (long long)rows, (long long)k,
               combo == 5 ? "100" : "127");
      onenode o;
      tin x = {KILN_DTYPE_FLOAT, 2, {m, k}, false, av};
      if (mm_shapes[si].batch) x = (tin){KILN_DTYPE_FLOAT, 3, {mm_shapes[si].batch, m, k}, false, av};
      if (combo < 4) { /* the quantization: int8 or uint8 (zero point 128) */
        onenode_make(&o, "DynamicQuantizeRows", 1, &x, 2);
        kt_attr_float(o.n, "min_scale", 1.1754944e-38f);
        if (combo & 1) kt_attr_float(o.n, "qmax", 100.0f);
        if (combo & 2) kt_attr_int(o.n, "zero_point", 128);
        onenode_check(&o, pool, what);
        onenode_free(&o);
      }
      kiln_dtype at = combo & 1 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
      kiln_dtype bt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
      bool bias = combo & 2, per_col = combo & 4;
      float sb[256], bv[256];
      for (int64_t j = 0; j < n; j++) {
        sb[j] = 0.01f * (0.5f + (float)(rnd() % 1000) / 1000.0f);
        bv[j] = (float)((int)(rnd() % 2001) - 1000) / 337.0f;
      }
      bool zps = combo % 3 != 0; /* a scalar a_zero_point, b_zero_point like b_scale */
      tin ins[7] = {{at, 2, {m, k}},
                    {bt, 2, {k, n}, true},
                    {KILN_DTYPE_FLOAT, 2, {m, 1}, false, sa},
                    {KILN_DTYPE_FLOAT, per_col ? 1 : 0, {n}, true, sb},
                    zps ? (tin){at, 0, {0}, true} : (tin){at, -1},
                    zps ? (tin){bt, per_col ? 1 : 0, {n}, true} : (tin){bt, -1},
                    {KILN_DTYPE_FLOAT, 1, {n}, true, bv}};
      if (mm_shapes[si].batch) {
        ins[0] = (tin){at, 3, {mm_shapes[si].batch, m, k}};
        ins[2] = (tin){KILN_DTYPE_FLOAT, 3, {mm_shapes[si].batch, m, 1}, false, sa};
      }
      onenode_make(&o, "RowQuantMatMul", bias ? 7 : zps ? 6 : 4, ins, 1);
      snprintf(what, sizeof what, "%lldx%lldx%lld a %s b %s per-column %d bias %d zero points %d",
               (long long)rows, (long long)k, (long long)n, kiln_dtype_name(at),
               kiln_dtype_name(bt), per_col, bias, zps);
      onenode_check(&o, pool, what);
      onenode_free(&o);
    }
}

static void rowquant_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(rowq_cases);
}

static void qlinearmatmuldq_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(qlmmdq_cases);
}

/* ---- ConvInteger / QLinearConv --------------------------------------------------------------- */

static const struct {
  int64_t n, c, h, w, m, k, group, stride, pad;
} conv_shapes[] = {
    {1, 3, 9, 11, 8, 3, 1, 1, 1},    /* dense 3x3, padded */
    {1, 16, 7, 9, 24, 1, 1, 1, 0},   /* pointwise: the input is the GEMM's B */
    {1, 12, 10, 13, 12, 3, 12, 1, 1}, /* depthwise */
    {2, 6, 9, 10, 9, 3, 3, 1, 1},    /* grouped, batch 2 */
    {1, 64, 14, 14, 70, 1, 1, 2, 0}, /* strided 1x1 */
    {1, 40, 60, 60, 20, 3, 1, 1, 1}, /* several im2col column chunks */
    {1, 40, 61, 61, 9, 3, 1, 1, 1},  /* chunks that start inside an output row */
    {1, 5, 17, 17, 7, 5, 1, 2, 2},   /* 5x5 strided */
    {1, 2, 9, 75, 6, 3, 1, 2, 1},    /* 3x3 stride 2, rows long enough for the 16-wide copy */
};

static void conv_cases(kiln__pool *pool, bool qlinear) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(conv_shapes); si++)
    for (int combo = 0; combo < 4; combo++)
      for (int zp = 0; zp < 3; zp++) {
        kiln_dtype xt = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
        kiln_dtype wt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
        int64_t n = conv_shapes[si].n, ch = conv_shapes[si].c, h = conv_shapes[si].h,
                w = conv_shapes[si].w, m = conv_shapes[si].m, k = conv_shapes[si].k,
                grp = conv_shapes[si].group;
        tin x = {xt, 4, {n, ch, h, w}}, wt4 = {wt, 4, {m, ch / grp, k, k}, true};
        /* zp 0: none; 1: x zero point only; 2: x and per-channel w zero points */
        tin xzp = zp >= 1 ? (tin){xt, 0, {0}, true} : (tin){xt, -1};
        tin wzp = zp == 2 ? (tin){wt, 1, {m}, true} : (tin){wt, -1};
        onenode o;
        if (!qlinear) {
          tin ins[4] = {x, wt4, xzp, wzp};
          onenode_make(&o, "ConvInteger", zp == 2 ? 4 : zp == 1 ? 3 : 2, ins, 1);
        } else {
          static float ws[128];
          for (int64_t j = 0; j < m; j++) ws[j] = 0.01f * (0.5f + (float)(rnd() % 1000) / 1000.0f);
          float xs = 0.02f;
          float ys = 0.02f * 0.01f * 6.0f * sqrtf((float)(ch / grp * k * k));
          /* a tiny y scale on odd shapes without zero points: multipliers ~2e5, products past
             +-2^31 (the epilogue's float-to-int conversion overflows there), all saturated */
          if (zp == 0 && si % 2 == 1) ys = 1e-9f;
          if (xzp.rank < 0) xzp = (tin){xt, 0, {0}, true};
          if (wzp.rank < 0) wzp = (tin){wt, 0, {0}, true, &zero8};
          kiln_dtype yt = zp == 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
          tin ins[9] = {x,
                        {KILN_DTYPE_FLOAT, 0, {0}, true, &xs},
                        xzp,
                        wt4,
                        {KILN_DTYPE_FLOAT, zp == 2 ? 1 : 0, {m}, true, ws},
                        wzp,
                        {KILN_DTYPE_FLOAT, 0, {0}, true, &ys},
                        {yt, 0, {0}, true},
                        {KILN_DTYPE_INT32, combo < 2 ? 1 : -1, {m}, true}};
          onenode_make(&o, "QLinearConv", combo < 2 ? 9 : 8, ins, 1);
        }
        int64_t s[2] = {conv_shapes[si].stride, conv_shapes[si].stride};
        int64_t p[4] = {conv_shapes[si].pad, conv_shapes[si].pad, conv_shapes[si].pad,
                        conv_shapes[si].pad};
        kt_attr_ints(o.n, "strides", s, 2);
        kt_attr_ints(o.n, "pads", p, 4);
        kt_attr_int(o.n, "group", grp);
        char what[96];
        snprintf(what, sizeof what, "shape %zu x %s w %s zp mode %d", si, kiln_dtype_name(xt),
                 kiln_dtype_name(wt), zp);
        onenode_check(&o, pool, what);
        onenode_free(&o);
      }
}

static void convint_cases(kiln__pool *pool) { conv_cases(pool, false); }
static void qlconv_cases(kiln__pool *pool) { conv_cases(pool, true); }

static void convinteger_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(convint_cases);
}

static void qlinearconv_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(qlconv_cases);
}

/* ---- depthwise (qconv_dw.c) ------------------------------------------------------------------ */

/* Odd sizes around the AVX2 kernel's 16-wide blocks, every stride/dilation form it runs (stride 1
   with dilation, stride 2) and the ones it hands to the portable loop (stride 3, stride 2 with
   dilation, a row too wide for its stack buffers), asymmetric pads, non-square kernels. */
typedef struct dw_shape {
  int64_t n, c, h, w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
} dw_shape;

static const dw_shape dw_shapes[] = {
    {1, 5, 9, 11, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},    /* 3x3 same, ow 11 (one partial block) */
    {2, 3, 17, 33, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1},   /* stride 2, batch 2, ow 17 */
    {1, 7, 20, 37, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0},   /* no padding, ow 35 */
    {1, 4, 12, 19, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2},   /* 5x5 (an odd tap pair with a zero) */
    {1, 3, 15, 21, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2},   /* dilation 2, stride 1 */
    {1, 3, 14, 23, 3, 4, 2, 2, 1, 1, 0, 1, 2, 3},   /* 3x4, asymmetric pads, stride 2 */
    {1, 2, 10, 13, 2, 1, 1, 1, 1, 1, 1, 0, 0, 0},   /* 2x1 */
    {1, 3, 13, 16, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1},   /* stride 3: portable loop */
    {1, 2, 12, 15, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2},   /* stride 2 + dilation: portable loop */
    {1, 2, 4, 2100, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},  /* ow 2100: too wide for the AVX2 rows */
    {1, 16, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},    /* 7x7 planes (mobilenet's last stage) */
    {1, 3, 6, 6, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0},     /* 1x1 depthwise */
};

static void extreme_acts(kiln_tensor *t);

/* One depthwise node of shape sh against the reference, byte for byte. combo: bit 0 int8 x,
   bit 1 uint8 w, bit 2 QLinearConv (else ConvInteger); zp: 0 none, 1 per tensor, 2 per-channel w
   zero points (and, for QLinearConv, per-channel w scales). */
static void dw_case(kiln__pool *pool, const dw_shape *dws, int combo, int zp, bool extreme,
                    const char *label) {
  kiln_dtype xt = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
  kiln_dtype wt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
  bool ql = combo & 4;
  int64_t n = dws->n, ch = dws->c;
  tin x = {xt, 4, {n, ch, dws->h, dws->w}}, wt4 = {wt, 4, {ch, 1, dws->kh, dws->kw}, true};
  /* zp 0: none; 1: per-tensor x and w zero points; 2: per-channel w zero points */
  tin xzp = zp >= 1 ? (tin){xt, 0, {0}, true} : (tin){xt, -1};
  tin wzp = zp == 2 ? (tin){wt, 1, {ch}, true} : zp == 1 ? (tin){wt, 0, {0}, true}
                                                        : (tin){wt, -1};
  onenode o;
  if (!ql) {
    tin ins[4] = {x, wt4, xzp, wzp};
    onenode_make(&o, "ConvInteger", zp ? 4 : 2, ins, 1);
  } else {
    static float ws[64];
    for (int64_t j = 0; j < ch; j++) ws[j] = 0.01f * (0.5f + (float)(rnd() % 1000) / 1000.0f);
    float xs = 0.02f;
    /* zp 1 uses a small y scale: many outputs saturate. */
    float ys = 0.02f * 0.01f * (zp == 1 ? 0.5f : 6.0f) * sqrtf((float)(dws->kh * dws->kw));
    if (zp == 0 && combo == 5) ys = 1e-9f; /* products past +-2^31, all saturated */
    if (xzp.rank < 0) xzp = (tin){xt, 0, {0}, true};
    if (wzp.rank < 0) wzp = (tin){wt, 0, {0}, true, &zero8};
    kiln_dtype yt = combo & 1 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
    tin ins[9] = {x,
                  {KILN_DTYPE_FLOAT, 0, {0}, true, &xs},
                  xzp,
                  wt4,
                  {KILN_DTYPE_FLOAT, zp == 2 ? 1 : 0, {ch}, true, ws},
                  wzp,
                  {KILN_DTYPE_FLOAT, 0, {0}, true, &ys},
                  {yt, 0, {0}, true},
                  {KILN_DTYPE_INT32, 1, {ch}, true}};
    onenode_make(&o, "QLinearConv", combo & 2 ? 9 : 8, ins, 1);
  }
  if (extreme) extreme_acts(&o.in[0]);
  int64_t st[2] = {dws->sh, dws->sw};
  int64_t dl[2] = {dws->dh, dws->dw};
  int64_t p[4] = {dws->pt, dws->pl, dws->pb, dws->pr};
  kt_attr_ints(o.n, "strides", st, 2);
  kt_attr_ints(o.n, "dilations", dl, 2);
  kt_attr_ints(o.n, "pads", p, 4);
  kt_attr_int(o.n, "group", ch);
  char what[160];
  snprintf(what, sizeof what, "depthwise %s x %s w %s zp mode %d", label,
           kiln_dtype_name(xt), kiln_dtype_name(wt), zp);
  onenode_check(&o, pool, what);
  onenode_free(&o);
}

static void dw_cases(kiln__pool *pool) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(dw_shapes); si++)
    for (int combo = 0; combo < 8; combo++)
      for (int zp = 0; zp < 3; zp++) {
        char label[32];
        snprintf(label, sizeof label, "shape %zu", si);
        dw_case(pool, &dw_shapes[si], combo, zp, si % 3 == 1, label);
      }
}

/* Every small 3x3 plane, 1..10 rows x 1..20 columns, then 1, 2 and 5 rows x 21..33 columns
   (the 32-byte row copy, and 33: past the kernel's width limit), strides 1 and 2, each pad 0-2
   (cycled independently over the sizes, so every pad value meets every side and stride): all
   blocks of qconv_dw.c's 3x3 kernel are edge blocks here, and the inputs and outputs are
   exact-size allocations, so an out-of-bounds read or write shows under ASan. 3 or 5 channels:
   the last plane's rows take the exact copies. The dtypes, ConvInteger / QLinearConv and
   zero-point modes rotate with the case; saturating extreme inputs on every fourth. */
static void dw3_small_cases(kiln__pool *pool) {
  size_t k = 0;
  static const int64_t wide_h[] = {1, 2, 5};
  for (int64_t s = 1; s <= 2; s++)
    for (int64_t hi = 0; hi < 13; hi++)
      for (int64_t w = hi < 10 ? 1 : 21; w <= (hi < 10 ? 20 : 33); w++, k++) {
        int64_t h = hi < 10 ? hi + 1 : wide_h[hi - 10];
        dw_shape sh = {1, k % 5 == 2 ? 5 : 3, h, w, 3, 3, s, s, 1, 1, (int64_t)(k % 3),
                       (int64_t)(k / 3 % 3), (int64_t)(k / 9 % 3), (int64_t)(k / 27 % 3)};
        if (h + sh.pt + sh.pb < 3) sh.pb = 3 - h - sh.pt; /* at least one output row */
        if (w + sh.pl + sh.pr < 3) sh.pr = 3 - w - sh.pl;
        char label[64];
        snprintf(label, sizeof label, "3x3 %" PRId64 "x%" PRId64 " s%" PRId64 " pads %" PRId64
                 " %" PRId64 " %" PRId64 " %" PRId64, h, w, s, sh.pt, sh.pl, sh.pb, sh.pr);
        dw_case(pool, &sh, (int)(k % 8), (int)(k / 8 % 3), k % 4 == 3, label);
      }
}

/* qconv_dwc.c's channel blocks: 16 channels and more (a partial last block: 17, 33), widths
   around its 16-column transposes (1, 7, 15-17, 31-33, 56), MobileNetV2's planes, 112-wide
   planes cut into bands of rows (40 rows: 7 bands at stride 1), batch 2 (the input's last rows
   take the exact copies), every pad 0-3 on each side, strides 1 and 2; dtypes, node kinds and
   zero-point modes rotate. */
static void dw3_channel_block_cases(kiln__pool *pool) {
  static const int64_t hw[][2] = {{1, 1}, {7, 7}, {3, 15}, {14, 16}, {5, 17}, {9, 31},
                                  {4, 32}, {28, 33}, {11, 56}, {40, 112}, {2, 300}};
  static const int64_t chs[] = {16, 17, 33, 48};
  size_t k = 0;
  for (size_t i = 0; i < KILN__ARRAY_LEN(hw); i++)
    for (int64_t s = 1; s <= 2; s++, k++) {
      int64_t h = hw[i][0], w = hw[i][1];
      dw_shape sh = {1 + (int64_t)(k % 3 == 1), chs[k % 4], h, w, 3, 3, s, s, 1, 1,
                     (int64_t)(k % 4), (int64_t)(k / 2 % 4), (int64_t)((k + 1) % 4),
                     (int64_t)(k / 3 % 4)};
      if (h + sh.pt + sh.pb < 3) sh.pb = 3 - h - sh.pt; /* at least one output row */
      if (w + sh.pl + sh.pr < 3) sh.pr = 3 - w - sh.pl;
      if (h * w > 1000) sh.n = 1, sh.c = 17; /* the reference's time */
      for (int combo = 4; combo < 8; combo++) { /* QLinearConv: the kernel's requantization */
        char label[96];
        snprintf(label, sizeof label, "3x3 c%" PRId64 " n%" PRId64 " %" PRId64 "x%" PRId64
                 " s%" PRId64 " pads %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64, sh.c, sh.n,
                 h, w, s, sh.pt, sh.pl, sh.pb, sh.pr);
        dw_case(pool, &sh, combo, (int)((k + (size_t)combo) % 3), (k + (size_t)combo) % 4 == 3,
                label);
      }
    }
}

static void depthwise_3x3_channel_blocks(void **st) {
  (void)st;
  kt_for_each_qisa(dw3_channel_block_cases);
}

static void depthwise_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(dw_cases);
}

static void depthwise_3x3_small_planes(void **st) {
  (void)st;
  kt_for_each_qisa(dw3_small_cases);
}

/* ---- 8-bit MaxPool (pool.c's byte path) ------------------------------------------------------ */

static const struct {
  int64_t n, c, h, w, kh, kw, s, pt, pl, pb, pr, ceil;
} mp8_shapes[] = {
    {1, 3, 13, 111, 3, 3, 2, 0, 0, 0, 0, 1}, /* squeezenet's 3x3/2 ceil_mode, odd width */
    {2, 2, 9, 70, 3, 3, 1, 1, 1, 1, 1, 0},   /* stride 1, padded, two 32-byte steps + tail */
    {1, 4, 8, 8, 2, 2, 2, 0, 0, 0, 0, 0},    /* 2x2/2 */
    {1, 2, 11, 37, 3, 2, 3, 1, 1, 0, 0, 0},  /* stride 3: the portable row loop */
    {1, 3, 112, 112, 3, 3, 2, 1, 1, 1, 1, 0}, /* resnet50's stem pool */
    /* rows shorter than a step: whole-step stores into the job's next rows, an exact last row */
    {1, 9, 27, 27, 3, 3, 2, 0, 0, 0, 0, 1},  /* squeezenet's 27 -> 13 */
    {2, 5, 7, 13, 3, 3, 1, 1, 1, 1, 1, 0},   /* stride 1, ow 13 */
    {1, 7, 6, 20, 2, 2, 1, 0, 0, 0, 0, 0},   /* stride 1, ow 19 */
    {1, 6, 5, 5, 3, 3, 2, 1, 1, 1, 1, 1},    /* ow 3 */
    /* 3x3/2 with every window inside the plane: pool.c's direct kernel (16 outputs per step) */
    {2, 5, 9, 67, 3, 3, 2, 0, 0, 0, 0, 0},   /* ow 33: 16 + 16 + 1, batch 2 */
    {1, 3, 12, 28, 3, 3, 2, 0, 0, 0, 0, 1},  /* ceil_mode's last window past the edge: not it */
    {1, 4, 3, 3, 3, 3, 2, 0, 0, 0, 0, 0},    /* one output per plane */
};

static void mp8_cases(kiln__pool *pool) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(mp8_shapes); si++)
    for (int s8 = 0; s8 < 2; s8++) {
      kiln_dtype t = s8 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
      tin x = {t, 4, {mp8_shapes[si].n, mp8_shapes[si].c, mp8_shapes[si].h, mp8_shapes[si].w}};
      onenode o;
      onenode_make(&o, "MaxPool", 1, &x, 1);
      if (si % 2) extreme_acts(&o.in[0]);
      int64_t k[2] = {mp8_shapes[si].kh, mp8_shapes[si].kw};
      int64_t st[2] = {mp8_shapes[si].s, mp8_shapes[si].s};
      int64_t p[4] = {mp8_shapes[si].pt, mp8_shapes[si].pl, mp8_shapes[si].pb, mp8_shapes[si].pr};
      kt_attr_ints(o.n, "kernel_shape", k, 2);
      kt_attr_ints(o.n, "strides", st, 2);
      kt_attr_ints(o.n, "pads", p, 4);
      kt_attr_int(o.n, "ceil_mode", mp8_shapes[si].ceil);
      char what[64];
      snprintf(what, sizeof what, "shape %zu %s", si, kiln_dtype_name(t));
      onenode_check(&o, pool, what);
      onenode_free(&o);
    }
}

static void maxpool8_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(mp8_cases);
}

/* ---- com.microsoft QLinearConcat ------------------------------------------------------------- */

static void qconcat_cases(kiln__pool *pool) {
  /* Y (0.05, zero point 10 / -3); per input: the same parameters (a plain copy), a coarser and a
     finer scale (the finer one saturates), another zero point. */
  static const float xs[4] = {0.05f, 0.11f, 0.013f, 0.05f};
  static const uint8_t xz_u[4] = {10, 0, 200, 128};
  static const int8_t xz_s[4] = {-3, 0, 100, -128};
  static const float ys = 0.05f;
  static const uint8_t yz_u = 10;
  static const int8_t yz_s = -3;
  for (int s8 = 0; s8 < 2; s8++)
    for (int axis = 0; axis < 4; axis++)
      for (int nin = 1; nin <= 4; nin++) {
        kiln_dtype t = s8 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
        tin ins[2 + 3 * 4];
        ins[0] = (tin){KILN_DTYPE_FLOAT, 0, {0}, true, &ys};
        ins[1] = (tin){t, 0, {0}, true, s8 ? (const void *)&yz_s : (const void *)&yz_u};
        for (int i = 0; i < nin; i++) {
          int64_t dims[4] = {2, 3, 5, 7};
          dims[axis] += i; /* inputs of different lengths along the axis */
          ins[2 + 3 * i] = (tin){t, 4, {dims[0], dims[1], dims[2], dims[3]}};
          ins[3 + 3 * i] = (tin){KILN_DTYPE_FLOAT, 0, {0}, true, &xs[i]};
          const void *xz = s8 ? (const void *)&xz_s[i] : (const void *)&xz_u[i];
          ins[4 + 3 * i] = (tin){t, 0, {0}, true, xz};
        }
        onenode o;
        onenode_make(&o, "QLinearConcat", 2 + 3 * nin, ins, 1);
        kt_attr_int(o.n, "axis", axis - (axis == 3 ? 4 : 0)); /* a negative axis too */
        char what[64];
        snprintf(what, sizeof what, "%s axis %d, %d inputs", kiln_dtype_name(t), axis, nin);
        onenode_check(&o, pool, what);
        onenode_free(&o);
      }
}

static void qlinearconcat_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(qconcat_cases);
}

/* ---- com.microsoft QLinearAdd and QLinearGlobalAveragePool (qadd_kernels.c) ---------------- */

/* Whether the selected integer ISA is the portable one (QLinearAdd then runs the reference). */
static bool qisa_generic(void) {
  kiln__qisa isa;
  kiln_error err = {0};
  assert_int_equal(kiln__qisa_select(&isa, &err), KILN_OK);
  return isa == KILN__QISA_GENERIC;
}

static void qadd_cases(kiln__pool *pool) {
  /* A and B shapes (rank -1 ends the list): same shapes around the 32- and 64-element blocks and
     the 16384-element chunk, per-channel and scalar operands on either side, two-sided
     broadcasts, rows of 1 */
  static const struct { int ra; int64_t a[4]; int rb; int64_t b[4]; } shapes[] = {
      {1, {1}, 1, {1}},           {1, {31}, 1, {31}},          {1, {32}, 1, {32}},
      {1, {33}, 1, {33}},         {2, {3, 95}, 2, {3, 95}},    {4, {2, 3, 5, 7}, 4, {2, 3, 5, 7}},
      {1, {64}, 1, {64}},         {1, {161}, 1, {161}},        {2, {2, 129}, 0, {0}},
      {4, {1, 32, 56, 56}, 4, {1, 32, 56, 56}},               {4, {1, 16, 9, 9}, 4, {1, 16, 1, 1}},
      {3, {16, 1, 1}, 4, {2, 16, 9, 9}},                      {2, {100, 3}, 0, {0}},
      {0, {0}, 2, {7, 70}},       {3, {3, 1, 40}, 2, {5, 1}},  {2, {5, 33}, 2, {5, 1}},
      {3, {1, 4, 1}, 3, {6, 1, 5}}, {4, {2, 1, 3, 1}, 4, {1, 4, 1, 65}},
  };
  /* (sa, za), (sb, zb), (sc, zc) per parameter set; the fourth saturates both ways. The last
     two are outside the lean loop's bounds (quotients of 2^30 or more): the fifth's products
     overflow to infinities of both signs, whose sums are NaN (-> zc), the sixth's quotients
     reach 5e9 and saturate. */
  static const float sc_[6][3] = {{0.02f, 0.05f, 0.04f}, {0.5f, 0.25f, 1.0f},
                                  {0.013f, 0.2f, 0.11f}, {0.05f, 0.05f, 0.001f},
                                  {3e38f, 3e38f, 1.0f},  {1.0f, 1.0f, 1e-7f}};
  static const uint8_t zu[6][3] = {{128, 3, 100}, {0, 0, 0}, {255, 17, 1}, {0, 250, 3},
                                   {0, 255, 7},   {0, 0, 9}};
  static const int8_t zs[6][3] = {{0, -3, 10}, {0, 0, 0}, {-128, 127, -1}, {5, -7, 3},
                                  {-128, 127, 7}, {0, 0, -9}};
  bool fallback_ok = qisa_generic();
  for (int s8 = 0; s8 < 2; s8++)
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
      for (int ps = 0; ps < 6; ps++)
        for (int omit = 0; omit < 2; omit++) { /* omit: no zero point for A and C */
          if (omit && ps != 1) continue;
          kiln_dtype t = s8 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
          const void *z0 = s8 ? (const void *)&zs[ps][0] : (const void *)&zu[ps][0];
          const void *z1 = s8 ? (const void *)&zs[ps][1] : (const void *)&zu[ps][1];
          const void *z2 = s8 ? (const void *)&zs[ps][2] : (const void *)&zu[ps][2];
          tin ins[8] = {
              {t, shapes[sh].ra, {shapes[sh].a[0], shapes[sh].a[1], shapes[sh].a[2], shapes[sh].a[3]}},
              {KILN_DTYPE_FLOAT, 0, {0}, true, &sc_[ps][0]},
              {t, omit ? -1 : 0, {0}, true, z0},
              {t, shapes[sh].rb, {shapes[sh].b[0], shapes[sh].b[1], shapes[sh].b[2], shapes[sh].b[3]}},
              {KILN_DTYPE_FLOAT, 0, {0}, true, &sc_[ps][1]},
              {t, 0, {0}, true, z1},
              {KILN_DTYPE_FLOAT, 0, {0}, true, &sc_[ps][2]},
              {t, 0, {0}, true, z2},
          };
          onenode o;
          onenode_make(&o, "QLinearAdd", omit ? 7 : 8, ins, 1);
          char what[64];
          snprintf(what, sizeof what, "%s shapes %zu params %d%s", kiln_dtype_name(t), sh, ps,
                   omit ? " no zero points" : "");
          onenode_check_ex(&o, pool, fallback_ok, what);
          onenode_free(&o);
        }
}

/* Every pair of codes (A [256, 1] holds all 256, B [1, 256] too, so C holds all 65536 sums),
   under 40 random parameter sets per type, scales spread over 2^-20 .. 2^4: the lean loop's
   conversion and saturating packs against the reference's rint and clamp wherever they could
   part. */
static void qadd_pair_cases(kiln__pool *pool) {
  bool fallback_ok = qisa_generic();
  uint8_t codes[256];
  for (int i = 0; i < 256; i++) codes[i] = (uint8_t)i;
  for (int s8 = 0; s8 < 2; s8++)
    for (int ps = 0; ps < 40; ps++) {
      kiln_dtype t = s8 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
      float sc[3];
      uint8_t z[3];
      for (int k = 0; k < 3; k++) {
        sc[k] = ldexpf(1.0f + 0.5f * rnd_f(), (int)(rnd() % 25) - 20); /* [0.5, 1.5] x 2^e */
        z[k] = (uint8_t)rnd();
      }
      tin ins[8] = {
          {t, 2, {256, 1}, false, codes},  {KILN_DTYPE_FLOAT, 0, {0}, true, &sc[0]},
          {t, 0, {0}, true, &z[0]},        {t, 2, {1, 256}, false, codes},
          {KILN_DTYPE_FLOAT, 0, {0}, true, &sc[1]}, {t, 0, {0}, true, &z[1]},
          {KILN_DTYPE_FLOAT, 0, {0}, true, &sc[2]}, {t, 0, {0}, true, &z[2]},
      };
      onenode o;
      onenode_make(&o, "QLinearAdd", 8, ins, 1);
      char what[96];
      snprintf(what, sizeof what, "%s all pairs, scales %g %g %g", kiln_dtype_name(t),
               (double)sc[0], (double)sc[1], (double)sc[2]);
      onenode_check_ex(&o, pool, fallback_ok, what);
      onenode_free(&o);
    }
}

static void qlinearadd_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(qadd_cases);
  kt_for_each_qisa(qadd_pair_cases);
}

static void qgap_cases(kiln__pool *pool) {
  /* NCHW and channels_last (3-D images: tests/test_qlinear.c); images of 1, under and over 32 codes, 49, 1600 */
  static const struct { int rank; int64_t d[4]; int last; } shapes[] = {
      {4, {1, 5, 1, 1}, 0},  {4, {2, 3, 5, 7}, 0},      {4, {1, 64, 7, 7}, 0},
      {4, {1, 512, 7, 7}, 0}, {4, {1, 16, 40, 40}, 0},  {4, {2, 3, 4, 12}, 0},
      {4, {2, 7, 7, 64}, 1},  {4, {1, 3, 3, 5}, 1},     {3, {2, 33, 9}, 1},
  };
  static const float sx[3] = {0.02f, 0.1f, 0.5f}, sy[3] = {0.01f, 0.002f, 0.5f};
  static const uint8_t zxu[3] = {128, 0, 7}, zyu[3] = {5, 10, 250};
  static const int8_t zxs[3] = {0, -128, 3}, zys[3] = {-3, 4, 127};
  for (int s8 = 0; s8 < 2; s8++)
    for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++)
      for (int ps = 0; ps < 3; ps++) {
        kiln_dtype t = s8 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
        tin ins[5] = {
            {t, shapes[sh].rank, {shapes[sh].d[0], shapes[sh].d[1], shapes[sh].d[2], shapes[sh].d[3]}},
            {KILN_DTYPE_FLOAT, 0, {0}, true, &sx[ps]},
            {t, 0, {0}, true, s8 ? (const void *)&zxs[ps] : (const void *)&zxu[ps]},
            {KILN_DTYPE_FLOAT, 0, {0}, true, &sy[ps]},
            {t, 0, {0}, true, s8 ? (const void *)&zys[ps] : (const void *)&zyu[ps]},
        };
        onenode o;
        onenode_make(&o, "QLinearGlobalAveragePool", 5, ins, 1);
        if (shapes[sh].last) kt_attr_int(o.n, "channels_last", 1);
        char what[64];
        snprintf(what, sizeof what, "%s shape %zu params %d", kiln_dtype_name(t), sh, ps);
        onenode_check(&o, pool, what);
        onenode_free(&o);
      }
}

static void qlinearglobalavgpool_matches_reference(void **st) {
  (void)st;
  kt_for_each_qisa(qgap_cases);
}

/* ---- the AVX2 byte formats (VPMADDUBSW on weights that qualify) ----------------------------- */

/* Stored int8 value (uint8 weights are stored shifted by -128) -> the tensor's value. */
static void put_w(kiln_tensor *t, size_t i, int v) {
  if (t->dtype == KILN_DTYPE_INT8) ((int8_t *)t->data)[i] = (int8_t)v;
  else ((uint8_t *)t->data)[i] = (uint8_t)(v + 128);
}

/* Rewrites input `wi` (an initializer, the graph's copy too) as weights whose stored values
   satisfy |v0| + |v1| <= 128 for every k pair: random values in [-64, 63] with every fourth pair
   at the extreme (-64, -64), and a lone last value up to -128 when k is odd. near_miss: one pair
   somewhere gets |v0| + |v1| = 129, which must keep the exact int16 format. The k axis is rows
   of B (k x n) for MatMul, the inner c*kh*kw of each output channel for Conv. */
static bool qualify_weights(onenode *o, int wi, bool conv, bool near_miss) {
  kiln_tensor *t = &o->in[wi];
  size_t rows, k, rs, ks;
  if (conv) rows = (size_t)t->dims[0], k = kiln_tensor_count(t) / rows, rs = k, ks = 1;
  else k = (size_t)t->dims[0], rows = (size_t)t->dims[1], rs = 1, ks = rows;
  for (size_t r = 0; r < rows; r++)
    for (size_t p = 0; p < k; p += 2) {
      bool extreme = (p / 2 + r) % 4 == 0;
      int v0 = extreme ? -64 : (int)(rnd() % 128) - 64, v1 = extreme ? -64 : (int)(rnd() % 128) - 64;
      if (p + 1 == k) v0 = extreme ? -128 : v0;
      put_w(t, r * rs + p * ks, v0);
      if (p + 1 < k) put_w(t, r * rs + (p + 1) * ks, v1);
    }
  /* (With k == 1 every value qualifies: |v| <= 128; there is no near miss to make.) */
  bool missed = near_miss && k >= 2;
  if (missed) {
    size_t r = rnd() % rows, p = (rnd() % (k / 2)) * 2;
    put_w(t, r * rs + p * ks, -65);
    put_w(t, r * rs + (p + 1) * ks, -64); /* same signs: saturates with 255s */
  }
  memcpy(o->g->values[o->n->in[wi]].init.data, t->data, kiln_tensor_nbytes(t));
  return missed;
}

/* Activations at the extremes (0 / 255 stored), so a pair sum reaches 255 * 128 = 32640. */
static void extreme_acts(kiln_tensor *t) {
  size_t n = kiln_tensor_count(t);
  for (size_t i = 0; i < n; i++) {
    bool hi = rnd() % 4 != 0;
    if (t->dtype == KILN_DTYPE_INT8) ((int8_t *)t->data)[i] = (int8_t)(hi ? 127 : -128);
    else ((uint8_t *)t->data)[i] = (uint8_t)(hi ? 255 : 0);
  }
}

static void byte_mm_cases(kiln__pool *pool) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(mm_shapes); si++)
    for (int combo = 0; combo < 8; combo++)
      for (int wmode = 1; wmode <= 2; wmode++) {
        kiln_dtype at = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
        kiln_dtype bt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
        bool ql = combo & 4;
        int64_t m = mm_shapes[si].m, k = mm_shapes[si].k, n = mm_shapes[si].n;
        float sa = 0.02f, sb = 0.004f, sy = 0.02f * 0.004f * 40.0f * sqrtf((float)k);
        onenode o;
        if (!ql) {
          tin ins[4] = {{at, 2, {m, k}}, {bt, 2, {k, n}, true}, {at, 0, {0}, true},
                        {bt, 1, {n}, true}};
          if (mm_shapes[si].batch) ins[0] = (tin){at, 3, {mm_shapes[si].batch, m, k}};
          onenode_make(&o, "MatMulInteger", 4, ins, 1);
        } else {
          tin ins[8] = {{at, 2, {m, k}},
                        {KILN_DTYPE_FLOAT, 0, {0}, true, &sa},
                        {at, 0, {0}, true},
                        {bt, 2, {k, n}, true},
                        {KILN_DTYPE_FLOAT, 0, {0}, true, &sb},
                        {bt, 0, {0}, true},
                        {KILN_DTYPE_FLOAT, 0, {0}, true, &sy},
                        {KILN_DTYPE_UINT8, 0, {0}, true}};
          if (mm_shapes[si].batch) ins[0] = (tin){at, 3, {mm_shapes[si].batch, m, k}};
          onenode_make(&o, "QLinearMatMul", 8, ins, 1);
        }
        int wi = ql ? 3 : 1;
        bool missed = qualify_weights(&o, wi, false, wmode == 2);
        if (si % 2) extreme_acts(&o.in[0]);
        o.expect_fmt = missed ? 2 : 1;
        char what[112];
        snprintf(what, sizeof what, "%lldx%lldx%lld a %s b %s %s weights", (long long)m,
                 (long long)k, (long long)n, kiln_dtype_name(at), kiln_dtype_name(bt),
                 wmode == 1 ? "qualifying" : "near-miss");
        onenode_check(&o, pool, what);
        onenode_free(&o);
      }
}

/* A ConvInteger node on x and the weights wt4 (m = wt4's dim 0) with random per-tensor x and
   per-channel w zero points, or with ql a QLinearConv whose y scale (y of type yt) suits fan_in
   products per output. */
static void qconv_node(onenode *o, bool ql, tin x, tin wt4, int64_t fan_in, kiln_dtype yt) {
  int64_t m = wt4.dims[0];
  tin xzp = {x.dt, 0, {0}, true}, wzp = {wt4.dt, 1, {m}, true};
  if (!ql) {
    tin ins[4] = {x, wt4, xzp, wzp};
    onenode_make(o, "ConvInteger", 4, ins, 1);
    return;
  }
  float xs = 0.02f, ws = 0.004f, ys = 0.02f * 0.004f * 30.0f * sqrtf((float)fan_in);
  tin ins[9] = {x,
                {KILN_DTYPE_FLOAT, 0, {0}, true, &xs},
                xzp,
                wt4,
                {KILN_DTYPE_FLOAT, 0, {0}, true, &ws},
                {wt4.dt, 0, {0}, true},
                {KILN_DTYPE_FLOAT, 0, {0}, true, &ys},
                {yt, 0, {0}, true},
                {KILN_DTYPE_INT32, 1, {m}, true}};
  onenode_make(o, "QLinearConv", 9, ins, 1);
}

static void byte_conv_cases(kiln__pool *pool) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(conv_shapes); si++)
    for (int combo = 0; combo < 8; combo++)
      for (int wmode = 1; wmode <= 2; wmode++) {
        kiln_dtype xt = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
        kiln_dtype wt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
        bool ql = combo & 4;
        int64_t n = conv_shapes[si].n, ch = conv_shapes[si].c, h = conv_shapes[si].h,
                w = conv_shapes[si].w, m = conv_shapes[si].m, k = conv_shapes[si].k,
                grp = conv_shapes[si].group;
        tin x = {xt, 4, {n, ch, h, w}}, wt4 = {wt, 4, {m, ch / grp, k, k}, true};
        onenode o;
        qconv_node(&o, ql, x, wt4, ch / grp * k * k, KILN_DTYPE_INT8);
        bool missed = qualify_weights(&o, ql ? 3 : 1, true, wmode == 2);
        if (si % 2) extreme_acts(&o.in[0]);
        int64_t s[2] = {conv_shapes[si].stride, conv_shapes[si].stride};
        int64_t p[4] = {conv_shapes[si].pad, conv_shapes[si].pad, conv_shapes[si].pad,
                        conv_shapes[si].pad};
        kt_attr_ints(o.n, "strides", s, 2);
        kt_attr_ints(o.n, "pads", p, 4);
        kt_attr_int(o.n, "group", grp);
        /* A near miss in one group leaves the other groups on the byte format: checked per
           group only when there is one group. */
        o.expect_fmt = !missed ? 1 : grp > 1 ? 0 : 2;
        if (grp == ch && m == ch) o.expect_fmt = 0; /* depthwise: qconv_dw.c, nothing packed */
        char what[112];
        snprintf(what, sizeof what, "shape %zu x %s w %s %s weights", si, kiln_dtype_name(xt),
                 kiln_dtype_name(wt), wmode == 1 ? "qualifying" : "near-miss");
        onenode_check(&o, pool, what);
        onenode_free(&o);
      }
}

static void byte_formats_match_reference(void **st) {
  (void)st;
  kt_for_each_qisa(byte_mm_cases);
  kt_for_each_qisa(byte_conv_cases);
}

/* Convolutions whose im2col columns are packed straight from the input (kiln__qpack_gather,
   the byte formats) against the reference kernel, with qualifying weights (the gathered path on
   AVX2) and full-range ones (im2col + pack): kernels 3x3 / 5x5 / 7x7 / 1x3, strides, dilation,
   asymmetric pads, groups, odd channel counts (partial k quads, edge tiles), k past one k block,
   planes from 1x1 to several 512-column blocks per chunk, batch 2. */
static const struct {
  int64_t n, c, h, w, m, kh, kw, sh, sw, dh, dw, pads[4], group;
} gather_shapes[] = {
    {1, 8, 9, 11, 7, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}, 1},     /* small, odd m */
    {1, 3, 64, 64, 16, 7, 7, 2, 2, 1, 1, {3, 3, 3, 3}, 1},   /* ResNet stem: k 147 */
    {1, 5, 23, 29, 9, 5, 5, 1, 1, 1, 1, {2, 2, 2, 2}, 1},    /* 5x5 */
    {1, 6, 12, 40, 10, 1, 3, 1, 1, 1, 1, {0, 1, 0, 1}, 1},   /* 1x3 */
    {2, 4, 15, 17, 12, 3, 3, 2, 1, 2, 2, {2, 1, 0, 3}, 2},   /* dilated, grouped, batch 2 */
    {1, 31, 20, 21, 33, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}, 1},  /* k 279: two k blocks */
    {1, 2, 1, 1, 5, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}, 1},      /* 1x1 plane */
    {1, 3, 2, 3, 4, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}, 1},      /* 2x3 plane */
    {1, 16, 70, 70, 20, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}, 1},  /* 4900 columns, 3 chunks */
    {1, 24, 30, 30, 17, 3, 3, 2, 2, 1, 1, {1, 1, 1, 1}, 1},  /* strided 3x3 */
    {1, 64, 7, 7, 18, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}, 1},    /* 49 columns: the 8-wide edge */
    {1, 7, 30, 33, 6, 3, 3, 1, 1, 1, 1, {0, 0, 0, 0}, 1},    /* unpadded: direct rows */
    {1, 530, 4, 5, 6, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}, 1},    /* k 4770: two k blocks */
};

static void gather_cases(kiln__pool *pool) {
  for (size_t si = 0; si < KILN__ARRAY_LEN(gather_shapes); si++)
    for (int combo = 0; combo < 8; combo++) {
      kiln_dtype xt = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
      kiln_dtype wt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
      bool ql = combo & 4, full = (combo + si) % 3 == 0;
      __typeof__(gather_shapes[0]) sh = gather_shapes[si];
      tin x = {xt, 4, {sh.n, sh.c, sh.h, sh.w}};
      tin wt4 = {wt, 4, {sh.m, sh.c / sh.group, sh.kh, sh.kw}, true};
      onenode o;
      qconv_node(&o, ql, x, wt4, sh.c / sh.group * sh.kh * sh.kw,
                 combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8);
      if (!full) qualify_weights(&o, ql ? 3 : 1, true, false);
      if (si % 2) extreme_acts(&o.in[0]);
      int64_t st[2] = {sh.sh, sh.sw}, dl[2] = {sh.dh, sh.dw};
      kt_attr_ints(o.n, "strides", st, 2);
      kt_attr_ints(o.n, "dilations", dl, 2);
      kt_attr_ints(o.n, "pads", sh.pads, 4);
      kt_attr_int(o.n, "group", sh.group);
      /* full-range weights take whatever format they fit: not checked */
      o.expect_fmt = full ? 0 : 1;
      char what[112];
      snprintf(what, sizeof what, "gather shape %zu x %s w %s %s weights", si,
               kiln_dtype_name(xt), kiln_dtype_name(wt), full ? "random" : "qualifying");
      onenode_check(&o, pool, what);
      onenode_free(&o);
    }
}

static void gathered_columns_match_reference(void **st) {
  (void)st;
  kt_for_each_qisa(gather_cases);
}

/* Convolutions on the NHWC columns (kiln__qpack_taps: one group, channels a multiple of 16,
   S8U8 weights whose zero point makes every za 0, i.e. int8 weights with zp 0 or uint8 ones with
   zp 128, on AVX2) against the reference kernel: 3x3 / 5x5 / 1x3 / strided 1x1 kernels, strides 1
   and 2, dilation, asymmetric pads, planes from 1x1 to several chunks, a k block that ends inside
   a tap (c 544: 4608 = 8 * 544 + 256), output channel counts off the 4-row tiles and past one
   72-row tile, edge panels of 1-4 columns (the rows-in-lanes kernel, also across two k blocks),
   batch 2, per-tensor and per-channel weight scales and zero points, ConvInteger, uint8 / int8
   inputs and outputs, activations at the extremes. Weights with a za that is not 0 (a uint8
   zero point other than 128) must keep the im2col path and still match. */
static const struct {
  int64_t n, c, h, w, m, kh, kw, sh, sw, dh, dw, pads[4];
} nhwc_shapes[] = {
    {1, 16, 9, 11, 7, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}},    /* odd plane, odd m */
    {1, 32, 14, 14, 33, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}},  /* k 288 */
    {1, 48, 7, 7, 16, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}},    /* c 48: three 16-channel groups a tap */
    {2, 16, 15, 17, 12, 3, 3, 2, 2, 1, 1, {1, 1, 1, 1}},  /* strided, batch 2 */
    {1, 16, 1, 1, 5, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}},     /* 1x1 plane: all but one tap pad */
    {1, 32, 12, 13, 20, 5, 5, 1, 1, 1, 1, {2, 1, 0, 3}},  /* 5x5, asymmetric pads */
    {1, 16, 12, 20, 9, 1, 3, 1, 1, 1, 1, {0, 1, 0, 1}},   /* 1x3 */
    {1, 16, 15, 13, 10, 3, 3, 1, 2, 2, 2, {2, 1, 0, 2}},  /* dilated, mixed strides */
    {1, 64, 14, 14, 75, 1, 1, 2, 2, 1, 1, {0, 0, 0, 0}},  /* ResNet downsample 1x1 / 2 */
    {1, 16, 50, 50, 8, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}},   /* 2500 columns: two chunks */
    {1, 64, 7, 7, 18, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}},    /* 49 columns: the 8-wide edge */
    {1, 16, 6, 7, 4, 3, 3, 1, 1, 1, 1, {0, 0, 0, 0}},     /* unpadded */
    {1, 544, 5, 4, 9, 3, 3, 1, 1, 1, 1, {1, 1, 1, 1}},    /* k 4896, block ends in a tap */
};

static void nhwc_cases(kiln__pool *pool) {
  static const uint8_t w_zp128 = 128, w_zp3 = 3;
  static uint8_t zps[128];
  static float ws[128];
  kiln__qisa isa;
  kiln_error err = {0};
  assert_int_equal(kiln__qisa_select(&isa, &err), KILN_OK);
  for (size_t si = 0; si < KILN__ARRAY_LEN(nhwc_shapes); si++)
    for (int combo = 0; combo < 16; combo++) {
      __typeof__(nhwc_shapes[0]) sh = nhwc_shapes[si];
      kiln_dtype xt = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
      kiln_dtype wt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
      kiln_dtype yt = (combo + si) % 3 == 0 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
      bool ql = !(combo & 4), per_ch = combo & 8;
      /* uint8 weights with zp 3 (za -125): the im2col path */
      bool za0 = !(wt == KILN_DTYPE_UINT8 && (combo + si) % 4 == 1);
      uint8_t zfill = wt == KILN_DTYPE_UINT8 ? (za0 ? 128 : 3) : 0;
      memset(zps, zfill, sizeof zps);
      for (int64_t j = 0; j < sh.m; j++) ws[j] = 0.004f * (0.5f + (float)(rnd() % 1000) / 1000.0f);
      int64_t fan = sh.c * sh.kh * sh.kw;
      float xs = 0.02f, ys = 0.02f * 0.004f * 30.0f * sqrtf((float)fan);
      tin x = {xt, 4, {sh.n, sh.c, sh.h, sh.w}}, w = {wt, 4, {sh.m, sh.c, sh.kh, sh.kw}, true};
      tin wz = per_ch ? (tin){wt, 1, {sh.m}, true, zps}
                      : (tin){wt, 0, {0}, true,
                              wt == KILN_DTYPE_UINT8 ? (za0 ? &w_zp128 : &w_zp3) : &zero8};
      onenode o;
      if (ql) {
        tin ins[9] = {x,  {KILN_DTYPE_FLOAT, 0, {0}, true, &xs},
                      {xt, 0, {0}, true},
                      w,  per_ch ? (tin){KILN_DTYPE_FLOAT, 1, {sh.m}, true, ws}
                                 : (tin){KILN_DTYPE_FLOAT, 0, {0}, true, ws},
                      wz, {KILN_DTYPE_FLOAT, 0, {0}, true, &ys},
                      {yt, 0, {0}, true}, {KILN_DTYPE_INT32, 1, {sh.m}, true}};
        onenode_make(&o, "QLinearConv", (combo + si) % 2 ? 9 : 8, ins, 1);
      } else {
        tin ins[4] = {x, w, {xt, 0, {0}, true}, wz};
        onenode_make(&o, "ConvInteger", 4, ins, 1);
      }
      qualify_weights(&o, ql ? 3 : 1, true, false);
      if (si % 2) extreme_acts(&o.in[0]);
      int64_t st[2] = {sh.sh, sh.sw}, dl[2] = {sh.dh, sh.dw};
      kt_attr_ints(o.n, "strides", st, 2);
      kt_attr_ints(o.n, "dilations", dl, 2);
      kt_attr_ints(o.n, "pads", sh.pads, 4);
      o.expect_fmt = 1;
      if (isa == KILN__QISA_AVX2 ||
          (isa == KILN__QISA_AVX512VNNI && kiln__qisa_supported(KILN__QFMT_VNNI_S8U8)))
        o.expect_nhwc = za0 ? 1 : -1;
      else o.expect_nhwc = -1;
      char what[128];
      snprintf(what, sizeof what, "nhwc shape %zu x %s w %s zp %u y %s%s", si,
               kiln_dtype_name(xt), kiln_dtype_name(wt), zfill, kiln_dtype_name(yt),
               per_ch ? " per-channel" : "");
      onenode_check(&o, pool, what);
      onenode_free(&o);
    }
}

static void nhwc_columns_match_reference(void **st) {
  (void)st;
  kt_for_each_qisa(nhwc_cases);
}

/* The qualification rule itself, at its boundary, on tiny operands packed directly. */
/* Pointwise QLinearConvs on the byte format with the weights' zero point at 0 after the format's
   offset (int8 weights with zp 0, uint8 ones with zp 128): the tiles whose whole k fits one k
   block are requantized in the microkernel's registers (kiln__qgemm_ukq_*), the partial last
   panels through the int32 tile and the epilogue. k = 1 .. 40 (odd k: a partial last quad), row
   counts that are not multiples of 4 and one past a 72-row tile, planes whose column counts
   leave full panels only, a 9-15 column panel and an edge panel of 1-8, uint8 / int8 inputs and
   outputs, per-channel weight scales, with and without bias, and a tiny output scale on some
   (every output saturated at one end or the other). */
static void pointwise_small_k_cases(kiln__pool *pool) {
  static const uint8_t w_zp128 = 128;
  static const int64_t planes[][2] = {{4, 8}, {5, 7}, {6, 9}, {11, 13}, {1, 1}, {7, 7}};
  for (int64_t k = 1; k <= 40; k++)
    for (int combo = 0; combo < 4; combo++) {
      kiln_dtype xt = combo & 1 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
      kiln_dtype wt = combo & 2 ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8;
      kiln_dtype yt = (k + combo) % 3 == 0 ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
      int64_t m = k == 17 ? 75 : 1 + (k * 7 + combo * 5) % 23;
      const int64_t *pl = planes[(size_t)(k + combo) % KILN__ARRAY_LEN(planes)];
      static float ws[128];
      for (int64_t j = 0; j < m; j++) ws[j] = 0.01f * (0.5f + (float)(rnd() % 1000) / 1000.0f);
      float xs = 0.02f, ys = 0.02f * 0.01f * 3.0f * sqrtf((float)k);
      if ((k + combo) % 5 == 0) ys = 1e-7f; /* saturating */
      bool has_bias = (k + combo) % 2 == 0;
      tin ins[9] = {{xt, 4, {1, k, pl[0], pl[1]}},
                    {KILN_DTYPE_FLOAT, 0, {0}, true, &xs},
                    {xt, 0, {0}, true},
                    {wt, 4, {m, k, 1, 1}, true},
                    {KILN_DTYPE_FLOAT, 1, {m}, true, ws},
                    {wt, 0, {0}, true, wt == KILN_DTYPE_UINT8 ? &w_zp128 : &zero8},
                    {KILN_DTYPE_FLOAT, 0, {0}, true, &ys},
                    {yt, 0, {0}, true},
                    {KILN_DTYPE_INT32, 1, {m}, true}};
      onenode o;
      onenode_make(&o, "QLinearConv", has_bias ? 9 : 8, ins, 1);
      qualify_weights(&o, 3, true, false);
      if (k % 4 == 1) extreme_acts(&o.in[0]);
      o.expect_fmt = 1;
      char what[112];
      snprintf(what, sizeof what, "1x1 k %lld m %lld plane %lldx%lld x %s w %s y %s%s",
               (long long)k, (long long)m, (long long)pl[0], (long long)pl[1],
               kiln_dtype_name(xt), kiln_dtype_name(wt), kiln_dtype_name(yt),
               has_bias ? " bias" : "");
      onenode_check(&o, pool, what);
      onenode_free(&o);
    }
}

static void pointwise_small_k_match_reference(void **st) {
  (void)st;
  kt_for_each_qisa(pointwise_small_k_cases);
}

static void byte_format_choice(void **st) {
  (void)st;
  if (!kiln__qisa_supported(KILN__QISA_AVX2)) {
    printf("  AVX2 not available: the byte-format choice is not run\n");
    return;
  }
  static const struct {
    bool sgn;
    int k, v[3];
    bool fits;
  } cases[] = {
      {true, 2, {-64, -64}, true},    {true, 2, {-64, 63}, true},   {true, 2, {-65, -64}, false},
      {true, 2, {-65, 63}, true},     {true, 2, {-128, 0}, true},   {true, 2, {-128, 1}, false},
      {true, 3, {0, 0, -128}, true},  {true, 3, {64, 64, 1}, true}, {true, 3, {64, 65, 0}, false},
      {false, 2, {192, 192}, true},   {false, 2, {193, 192}, false}, {false, 2, {64, 64}, true},
      {false, 2, {63, 64}, false},    {false, 1, {0}, true},        {false, 2, {0, 255}, false},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++)
    for (int as_b = 0; as_b < 2; as_b++) {
      uint8_t raw[3];
      for (int p = 0; p < cases[i].k; p++) raw[p] = (uint8_t)cases[i].v[p];
      /* One row (A) / one column (B) of k values, contiguous along k either way. */
      kiln__qsrc src = {raw, cases[i].sgn, (size_t)cases[i].k, 1};
      if (as_b) src = (kiln__qsrc){raw, cases[i].sgn, 1, 1};
      kiln__qpacked pk;
      kiln_error err = {0};
      assert_int_equal(kiln__qpack_alloc(KILN__QISA_AVX2, !as_b, 1, (size_t)cases[i].k, &src,
                                         &pk, &err),
                       KILN_OK);
      kiln__qisa want = !cases[i].fits ? KILN__QISA_AVX2
                        : as_b         ? KILN__QFMT_AVX2_U8S8
                                       : KILN__QFMT_AVX2_S8U8;
      if (pk.isa != want)
        fail_msg("case %zu (%s): packed as %s, expected %s", i, as_b ? "B" : "A",
                 kiln__qisa_name(pk.isa), kiln__qisa_name(want));
      kiln__qpacked_free(&pk);
    }
}

/* ---- QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear ------------------------------- */

static void qdq_cases(kiln__pool *pool) {
  /* the last size spans three of the pool's tasks (16384 elements each), cut mid-segment */
  static const int64_t sizes[][3] = {{1, 1, 1}, {3, 5, 7}, {2, 16, 33}, {1, 8, 1000}, {3, 7, 2300}};
  for (size_t si = 0; si < KILN__ARRAY_LEN(sizes); si++)
    for (int sgn = 0; sgn < 2; sgn++)
      for (int axis = -1; axis < 3; axis++) {
        kiln_dtype qt = sgn ? KILN_DTYPE_INT8 : KILN_DTYPE_UINT8;
        int64_t ch = axis < 0 ? 1 : sizes[si][axis];
        static float sc[2300];
        for (int64_t j = 0; j < ch; j++) sc[j] = 0.003f + 0.05f * (float)(rnd() % 1000) / 1000.0f;
        tin scale = {KILN_DTYPE_FLOAT, axis < 0 ? 0 : 1, {ch}, true, sc};
        tin zp = {qt, axis < 0 ? 0 : 1, {ch}, true};
        /* Quantize: random floats, then NaN, +-inf and far out-of-range values. */
        onenode o;
        tin qin[3] = {{KILN_DTYPE_FLOAT, 3, {sizes[si][0], sizes[si][1], sizes[si][2]}}, scale, zp};
        onenode_make(&o, "QuantizeLinear", 3, qin, 1);
        if (axis >= 0) kt_attr_int(o.n, "axis", axis);
        float *x = o.in[0].data;
        size_t cnt = kiln_tensor_count(&o.in[0]);
        for (size_t i = 0; i < cnt; i += 7) x[i] *= 100.0f;
        if (cnt > 20) x[3] = NAN, x[11] = INFINITY, x[19] = -INFINITY, x[5] = 1e30f;
        onenode_check(&o, pool, "quantize");
        onenode_free(&o);
        tin din[3] = {{qt, 3, {sizes[si][0], sizes[si][1], sizes[si][2]}}, scale, zp};
        onenode_make(&o, "DequantizeLinear", 3, din, 1);
        if (axis >= 0) kt_attr_int(o.n, "axis", axis);
        onenode_check(&o, pool, "dequantize");
        onenode_free(&o);
      }
  /* Dynamic: mixed signs, all positive, all zero, with NaN. */
  static const int64_t dsz[] = {1, 7, 8, 9, 100, 4099};
  for (size_t si = 0; si < KILN__ARRAY_LEN(dsz); si++)
    for (int mode = 0; mode < 4; mode++) {
      onenode o;
      tin in[1] = {{KILN_DTYPE_FLOAT, 2, {1, dsz[si]}}};
      onenode_make(&o, "DynamicQuantizeLinear", 1, in, 3);
      float *x = o.in[0].data;
      for (int64_t i = 0; i < dsz[si]; i++) {
        if (mode == 1) x[i] = fabsf(x[i]) + 0.5f;
        if (mode == 2) x[i] = 0.0f;
        if (mode == 3 && i % 5 == 2) x[i] = NAN;
      }
      onenode_check(&o, pool, "dynamic");
      onenode_free(&o);
    }
}

static void qdq_match_reference(void **st) {
  (void)st;
  kt_for_each_qisa(qdq_cases);
}

/* ---- fallbacks, errors, ISA selection -------------------------------------------------------- */

/* Forms the fast path does not cover still run, through the reference kernel, with its results;
   malformed inputs get the reference kernel's error. */
static void uncovered_forms_fall_back(void **st) {
  (void)st;
  /* QLinearMatMul with a per-row a_scale: a valid form outside the fast path. */
  float sa[3] = {0.01f, 0.02f, 0.03f}, sb = 0.01f, sy = 0.05f;
  tin ins[8] = {{KILN_DTYPE_UINT8, 2, {3, 10}},
                {KILN_DTYPE_FLOAT, 1, {3}, true, sa},
                {KILN_DTYPE_UINT8, 0, {0}, true},
                {KILN_DTYPE_INT8, 2, {10, 5}, true},
                {KILN_DTYPE_FLOAT, 0, {0}, true, &sb},
                {KILN_DTYPE_INT8, 0, {0}, true, &zero8},
                {KILN_DTYPE_FLOAT, 0, {0}, true, &sy},
                {KILN_DTYPE_UINT8, 0, {0}, true}};
  onenode o;
  onenode_make(&o, "QLinearMatMul", 8, ins, 1);
  onenode_check_ex(&o, NULL, true, "per-row a_scale");
  onenode_free(&o);

  /* MatMulInteger with mismatched k: the reference's error, not a crash. */
  tin bad[2] = {{KILN_DTYPE_UINT8, 2, {3, 10}}, {KILN_DTYPE_INT8, 2, {11, 5}, true}};
  onenode_make(&o, "MatMulInteger", 2, bad, 1);
  const kiln__backend *cpu = &kiln__backend_cpu;
  void *state = NULL;
  kiln_error err = {0};
  assert_int_equal(cpu->prepare(o.n, o.g, &state, &err), KILN_OK);
  const kiln_tensor *in2[2] = {&o.in[0], &o.in[1]};
  kiln_tensor y = {0};
  kiln_tensor *outs[1] = {&y};
  kiln__kctx c = {.node = o.n, .n_in = 2, .n_out = 1, .in = in2, .out = outs, .err = &err};
  assert_int_equal(cpu->execute(&c, state), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "1"));
  cpu->release(state);
  onenode_free(&o);
}

static void isa_selection(void **st) {
  (void)st;
  kiln_error err = {0};
  kiln__qisa isa;
  setenv("KILN_ISA", "sse9", 1);
  assert_int_equal(kiln__qisa_select(&isa, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "KILN_ISA"));
  for (int i = 0; i < KILN__QISA_COUNT; i++) {
    setenv("KILN_ISA", kiln__qisa_name((kiln__qisa)i), 1);
    kiln_status s = kiln__qisa_select(&isa, &err);
    if (kiln__qisa_supported((kiln__qisa)i)) {
      assert_int_equal(s, KILN_OK);
      assert_int_equal(isa, i);
    } else {
      assert_int_equal(s, KILN_UNSUPPORTED);
    }
  }
  unsetenv("KILN_ISA");
  assert_int_equal(kiln__qisa_select(&isa, &err), KILN_OK);
  assert_true(kiln__qisa_supported(isa));
}

int main(int argc, char **argv) {
  struct CMUnitTest tests[] = {
      cmocka_unit_test(isa_selection),
      cmocka_unit_test(matmulinteger_matches_reference),
      cmocka_unit_test(qlinearmatmul_matches_reference),
      cmocka_unit_test(qlinearmatmuldq_matches_reference),
      cmocka_unit_test(matmulintegertofloat_matches_reference),
      cmocka_unit_test(rowquant_matches_reference),
      cmocka_unit_test(convinteger_matches_reference),
      cmocka_unit_test(qlinearconv_matches_reference),
      cmocka_unit_test(gathered_columns_match_reference),
      cmocka_unit_test(nhwc_columns_match_reference),
      cmocka_unit_test(depthwise_matches_reference),
      cmocka_unit_test(depthwise_3x3_small_planes),
      cmocka_unit_test(depthwise_3x3_channel_blocks),
      cmocka_unit_test(maxpool8_matches_reference),
      cmocka_unit_test(qlinearconcat_matches_reference),
      cmocka_unit_test(qlinearadd_matches_reference),
      cmocka_unit_test(qlinearglobalavgpool_matches_reference),
      cmocka_unit_test(qdq_match_reference),
      cmocka_unit_test(pointwise_small_k_match_reference),
      cmocka_unit_test(byte_format_choice),
      cmocka_unit_test(byte_formats_match_reference),
      cmocka_unit_test(uncovered_forms_fall_back),
  };
  return kt_run_selected("cpu_quant", tests, sizeof tests / sizeof tests[0], argc, argv);
}
