/* Tests of the optimized CPU backend's non-GEMM parts:
 *   - the thread pool: every index covered exactly once, nested and concurrent calls run inline,
 *     a NULL pool runs inline, and an idle pool (after jobs, and after a real inference) burns no
 *     CPU once its workers stop spinning;
 *   - the vector math (src/kernels/cpu/vmath.h): exp, tanh, sigmoid, erf against libm in double
 *     over a dense sweep, for every ISA the machine runs, within the bounds the header states;
 *   - the "cpu" backend's elementwise (Clip included), Softmax and LayerNormalization kernels
 *     against the "ref" backend (the oracle) on single-node models built here with random odd
 *     shapes, and Concat (copy_kernels.c) on random shapes and axes, empty inputs and outputs
 *     above its threading threshold included.
 * argv[1]: the repository's models/ folder. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "kiln/kiln.h"
#include "core/threadpool.h"
#include "kernels/cpu/vmath.h"
#include "onnx/kiln_onnx.pb-c.h"

static const char *models_dir;

/* ---- thread pool ------------------------------------------------------------------------------ */

typedef struct cover {
  atomic_int *hits;
  kiln__pool *pool;
  atomic_int inner_calls;
} cover;

static void mark(void *arg, size_t b, size_t e) {
  cover *c = arg;
  for (size_t i = b; i < e; i++) atomic_fetch_add(&c->hits[i], 1);
}

static void check_cover(kiln__pool *p, size_t n) {
  atomic_int *hits = calloc(n + 1, sizeof *hits);
  cover c = {.hits = hits, .pool = p};
  kiln__parallel_for(p, n, mark, &c);
  for (size_t i = 0; i < n; i++) assert_int_equal(atomic_load(&hits[i]), 1);
  free(hits);
}

static void pool_covers_every_index_once(void **state) {
  (void)state;
  kiln__pool *p = NULL;
  kiln_error err;
  assert_int_equal(kiln__pool_create(3, &p, &err), KILN_OK);
  assert_non_null(p);
  assert_int_equal(kiln__pool_threads(p), 3);
  const size_t sizes[] = {0, 1, 2, 3, 7, 13, 100, 1001};
  /* Back to back, as the nodes of one inference call it: workers are mostly still spinning. */
  for (int rep = 0; rep < 300; rep++)
    for (size_t i = 0; i < KILN__ARRAY_LEN(sizes); i++) check_cover(p, sizes[i]);
  kiln__pool_free(p);
  /* threads <= 1 gives no pool, and no pool runs inline. */
  assert_int_equal(kiln__pool_create(1, &p, &err), KILN_OK);
  assert_null(p);
  assert_int_equal(kiln__pool_threads(NULL), 1);
  check_cover(NULL, 37);
}

/* A parallel_for inside a job runs inline on the calling thread: one call covering everything. */
static void inner(void *arg, size_t b, size_t e) {
  cover *c = arg;
  (void)b, (void)e;
  atomic_fetch_add(&c->inner_calls, 1);
}
static void outer(void *arg, size_t b, size_t e) {
  cover *c = arg;
  for (size_t i = b; i < e; i++) {
    kiln__parallel_for(c->pool, 50, inner, c);
    atomic_fetch_add(&c->hits[i], 1);
  }
}

static void pool_nested_runs_inline(void **state) {
  (void)state;
  kiln__pool *p = NULL;
  kiln_error err;
  assert_int_equal(kiln__pool_create(2, &p, &err), KILN_OK);
  atomic_int hits[64] = {0};
  cover c = {.hits = hits, .pool = p};
  kiln__parallel_for(p, 64, outer, &c);
  for (int i = 0; i < 64; i++) assert_int_equal(atomic_load(&hits[i]), 1);
  /* Inline means one call per inner parallel_for (the whole range at once). */
  assert_int_equal(atomic_load(&c.inner_calls), 64);
  kiln__pool_free(p);
}

typedef struct conc_arg {
  kiln__pool *p;
  int failures;
} conc_arg;

static void *conc_main(void *arg) {
  conc_arg *a = arg;
  for (int rep = 0; rep < 200; rep++) {
    atomic_int hits[97];
    for (int i = 0; i < 97; i++) atomic_init(&hits[i], 0);
    cover c = {.hits = hits, .pool = a->p};
    kiln__parallel_for(a->p, 97, mark, &c);
    for (int i = 0; i < 97; i++) a->failures += atomic_load(&hits[i]) != 1;
  }
  return NULL;
}

static void pool_concurrent_callers(void **state) {
  (void)state;
  kiln__pool *p = NULL;
  kiln_error err;
  assert_int_equal(kiln__pool_create(2, &p, &err), KILN_OK);
  pthread_t t[3];
  conc_arg a[3] = {{p, 0}, {p, 0}, {p, 0}};
  for (int i = 0; i < 3; i++) assert_int_equal(pthread_create(&t[i], NULL, conc_main, &a[i]), 0);
  for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < 3; i++) assert_int_equal(a[i].failures, 0);
  kiln__pool_free(p);
}

static double cpu_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CPU time the whole process uses during 100 ms of wall-clock sleep on this thread. */
static double idle_cpu_100ms(void) {
  double c0 = cpu_seconds();
  struct timespec d = {0, 100 * 1000 * 1000};
  while (nanosleep(&d, &d) != 0) {
  }
  return cpu_seconds() - c0;
}

/* Workers spin ~50 us after a job, then sleep: 100 ms of idleness must cost (almost) no CPU.
   The bound is loose (20 ms, a fifth of one core) so a loaded machine does not make it flaky;
   a pool that kept spinning would use ~100 ms per worker. */
#define IDLE_CPU_MAX 0.020

static void pool_idle_burns_no_cpu(void **state) {
  (void)state;
  kiln__pool *p = NULL;
  kiln_error err;
  assert_int_equal(kiln__pool_create(2, &p, &err), KILN_OK);
  for (int rep = 0; rep < 100; rep++) check_cover(p, 1000);
  double used = idle_cpu_100ms();
  print_message("pool idle: %.2f ms CPU in 100 ms\n", used * 1e3);
  assert_true(used < IDLE_CPU_MAX);
  kiln__pool_free(p);

  /* The same through a session that ran a real model on two threads. */
  char path[1024];
  snprintf(path, sizeof path, "%s/digits/digits_cnn.onnx", models_dir);
  kiln_model_opts o = kiln_model_opts_default();
  o.intra_threads = 2;
  kiln_model *m = NULL;
  kiln_session *s = NULL;
  assert_int_equal(kiln_model_load(path, &o, &m, &err), KILN_OK);
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  static float x[64 * 64];
  for (size_t i = 0; i < KILN__ARRAY_LEN(x); i++) x[i] = (float)(i % 17) / 17.0f;
  kiln_tensor in = {.dtype = KILN_DTYPE_FLOAT, .rank = 4, .dims = {64, 1, 8, 8}, .data = x};
  const char *names[] = {"input"};
  for (int rep = 0; rep < 5; rep++)
    assert_int_equal(kiln_session_run(s, names, &in, 1, &err), KILN_OK);
  used = idle_cpu_100ms();
  print_message("session idle: %.2f ms CPU in 100 ms\n", used * 1e3);
  assert_true(used < IDLE_CPU_MAX);
  kiln_session_free(s);
  kiln_model_free(m);
}


/* ---- vector math ------------------------------------------------------------------------------ */

static const kiln__vmath *isas[3];
static size_t n_isas;

static void find_isas(void) {
  n_isas = 0;
  isas[n_isas++] = &kiln__vmath_generic;
#ifdef KILN__VMATH_HAVE_AVX2
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isas[n_isas++] = &kiln__vmath_avx2;
  if (n_isas == 2 && __builtin_cpu_supports("avx512f")) isas[n_isas++] = &kiln__vmath_avx512;
#endif
}

static double gelu_d(double x) { return 0.5 * x * (1.0 + erf(x * 0.7071067811865476)); }
static double gelu_tanh_d(double x) {
  return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}
static double sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }

typedef struct err_stats {
  double rel, abs_tail; /* max relative error; max |err| / |x| where only an absolute bound holds */
} err_stats;

#define SWEEP 4194304 /* 2^22 points per range */

/* Runs f on a uniform sweep of [lo, hi] plus a geometric sweep of tiny magnitudes, compares with
   the double-precision oracle. Below `abs_below` the measure is |err| / |x| (GELU's 1 + erf cancels for x < 0). */
static err_stats sweep(kiln__vmath_unary f, double (*ref)(double), double lo, double hi,
                       double abs_below) {
  static float x[SWEEP], y[SWEEP];
  err_stats e = {0, 0};
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < SWEEP; i++) {
      if (pass == 0) x[i] = (float)(lo + (hi - lo) * (double)i / (SWEEP - 1));
      else { /* +-[1e-30, 1] geometrically, where relative error near zero shows */
        double m = pow(10.0, -30.0 + 30.0 * (double)(i / 2) / (SWEEP / 2));
        x[i] = (float)(i % 2 ? -m : m);
        if (x[i] < lo || x[i] > hi) x[i] = 0.5f * (float)(lo + hi);
      }
    }
    f(x, y, SWEEP - 3); /* an odd count exercises the masked tail */
    f(x + SWEEP - 3, y + SWEEP - 3, 3);
    for (size_t i = 0; i < SWEEP; i++) {
      double r = ref((double)x[i]), d = fabs((double)y[i] - r);
      if ((double)x[i] < abs_below) {
        double a = d / fabs((double)x[i]);
        if (a > e.abs_tail) e.abs_tail = a;
      } else if (r != 0.0) {
        double rel = d / fabs(r);
        if (rel > e.rel) e.rel = rel;
      } else {
        assert_true(y[i] == 0.0f);
      }
    }
  }
  return e;
}

/* Special values: NaN stays NaN, infinities and saturation give the exact limits. */
static void check_specials(const kiln__vmath *v) {
  const float in[6] = {NAN, INFINITY, -INFINITY, 1e30f, -1e30f, 0.0f};
  float y[6];
  v->exp(in, y, 6);
  assert_true(isnan(y[0]) && isinf(y[1]) && y[2] == 0.0f && isinf(y[3]) && y[4] == 0.0f && y[5] == 1.0f);
  v->tanh(in, y, 6);
  assert_true(isnan(y[0]) && y[1] == 1.0f && y[2] == -1.0f && y[3] == 1.0f && y[4] == -1.0f && y[5] == 0.0f);
  v->sigmoid(in, y, 6);
  assert_true(isnan(y[0]) && y[1] == 1.0f && y[2] == 0.0f && y[3] == 1.0f && y[4] == 0.0f && y[5] == 0.5f);
  v->erf(in, y, 6);
  assert_true(isnan(y[0]) && y[1] == 1.0f && y[2] == -1.0f && y[3] == 1.0f && y[4] == -1.0f && y[5] == 0.0f);
  v->relu(in, y, 6);
  assert_true(isnan(y[0]) && isinf(y[1]) && y[2] == 0.0f && y[3] == 1e30f && y[4] == 0.0f);
  /* In place. */
  float z[5] = {-1, 0, 1, 2, -3};
  v->relu(z, z, 5);
  assert_true(z[0] == 0 && z[2] == 1 && z[3] == 2 && z[4] == 0);
}

/* The bounds vmath.h states. */
static void vmath_error_bounds(void **state) {
  (void)state;
  find_isas();
  for (size_t k = 0; k < n_isas; k++) {
    const kiln__vmath *v = isas[k];
    err_stats ex = sweep(v->exp, exp, -87.3, 88.7, -INFINITY);
    err_stats th = sweep(v->tanh, tanh, -12.0, 12.0, -INFINITY);
    err_stats sg = sweep(v->sigmoid, sigmoid_d, -87.0, 40.0, -INFINITY);
    err_stats ef = sweep(v->erf, erf, -6.0, 6.0, -INFINITY);
    err_stats ge = sweep(v->gelu, gelu_d, -12.0, 12.0, 0.0);
    err_stats gt = sweep(v->gelu_tanh, gelu_tanh_d, -12.0, 12.0, 0.0);
    print_message("%-8s max rel err: exp %.3g tanh %.3g sigmoid %.3g erf %.3g gelu %.3g "
                  "gelu_tanh %.3g; x<0 |err|/|x|: gelu %.3g gelu_tanh %.3g\n",
                  v->isa, ex.rel, th.rel, sg.rel, ef.rel, ge.rel, gt.rel, ge.abs_tail,
                  gt.abs_tail);
    assert_true(ex.rel <= 1.5e-7);
    assert_true(th.rel <= 2.0e-7);
    assert_true(sg.rel <= 2.5e-7);
    assert_true(ef.rel <= 5.0e-7);
    assert_true(ge.rel <= 3.0e-7 && ge.abs_tail <= 2.5e-7);
    assert_true(gt.rel <= 2.0e-7 && gt.abs_tail <= 1.0e-7);
    check_specials(v);
  }
}

static void vmath_select_honours_env(void **state) {
  (void)state;
  const kiln__vmath *v = NULL;
  kiln_error err;
  setenv("KILN_ISA", "generic", 1);
  assert_int_equal(kiln__vmath_select(&v, &err), KILN_OK);
  assert_ptr_equal(v, &kiln__vmath_generic);
  setenv("KILN_ISA", "sse9", 1);
  assert_int_equal(kiln__vmath_select(&v, &err), KILN_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "KILN_ISA"));
  setenv("KILN_ISA", "avx2", 1);
  kiln_status st = kiln__vmath_select(&v, &err);
  find_isas();
  if (n_isas >= 2) {
    assert_int_equal(st, KILN_OK);
    assert_string_equal(v->isa, "avx2");
  } else {
    assert_int_equal(st, KILN_UNSUPPORTED);
  }
  /* avx512 (also the default): the widest table this CPU runs */
  setenv("KILN_ISA", "avx512", 1);
  assert_int_equal(kiln__vmath_select(&v, &err), KILN_OK);
  assert_ptr_equal(v, isas[n_isas - 1]);
  /* NEON (AArch64's float kernels) has no table of its own: the portable one, which gcc
     vectorizes with NEON; elsewhere the name is unsupported. */
  setenv("KILN_ISA", "neon", 1);
  st = kiln__vmath_select(&v, &err);
#ifdef __aarch64__
  assert_int_equal(st, KILN_OK);
  assert_ptr_equal(v, &kiln__vmath_generic);
#else
  assert_int_equal(st, KILN_UNSUPPORTED);
#endif
  unsetenv("KILN_ISA");
  assert_int_equal(kiln__vmath_select(&v, &err), KILN_OK);
  assert_ptr_equal(v, isas[n_isas - 1]);
}

/* ---- kernels against the reference backend ---------------------------------------------------- */

/* One node with float32 inputs x0..x(n-1) of the given shapes and outputs y0..y(m-1). */
typedef struct node_spec {
  const char *op;
  int opset;
  int n_in, n_out;
  int rank[3];
  int64_t dims[3][4];
  const char *attr[3]; /* "name=i:3", "name=f:1e-3", "name=s:tanh" */
  float lo[3], hi[3];  /* input value ranges (hi == lo: [-3, 3]) */
  int elem[6];         /* inputs' then outputs' element types (0: float32) */
} node_spec;

static uint8_t *build_model(const node_spec *sp, size_t *len) {
  KilnOnnx__ModelProto m = KILN_ONNX__MODEL_PROTO__INIT;
  KilnOnnx__OperatorSetIdProto os = KILN_ONNX__OPERATOR_SET_ID_PROTO__INIT, *osp[1] = {&os};
  KilnOnnx__GraphProto g = KILN_ONNX__GRAPH_PROTO__INIT;
  KilnOnnx__NodeProto n = KILN_ONNX__NODE_PROTO__INIT, *np[1] = {&n};
  KilnOnnx__AttributeProto at[3], *atp[3];
  KilnOnnx__ValueInfoProto vi[6], *vin[3], *vout[3];
  KilnOnnx__TypeProto tp[6];
  KilnOnnx__TypeProto__Tensor tt[6];
  KilnOnnx__TensorShapeProto sh[3];
  KilnOnnx__TensorShapeProto__Dimension d[3][4], *dp[3][4];
  char *in_names[3] = {"x0", "x1", "x2"}, *out_names[3] = {"y0", "y1", "y2"};
  char an[3][32], as[3][32];
  m.has_ir_version = 1, m.ir_version = 8;
  os.domain = "", os.has_version = 1, os.version = sp->opset;
  m.n_opset_import = 1, m.opset_import = osp;
  g.name = "one";
  m.graph = &g;
  n.op_type = (char *)sp->op;
  n.n_input = (size_t)sp->n_in, n.input = in_names;
  n.n_output = (size_t)sp->n_out, n.output = out_names;
  size_t na = 0;
  for (int i = 0; i < 3 && sp->attr[i]; i++, na++) {
    kiln_onnx__attribute_proto__init(&at[i]);
    atp[i] = &at[i];
    const char *eq = strchr(sp->attr[i], '=');
    snprintf(an[i], sizeof an[i], "%.*s", (int)(eq - sp->attr[i]), sp->attr[i]);
    at[i].name = an[i];
    at[i].has_type = 1;
    if (eq[1] == 'i') {
      at[i].type = KILN_ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
      at[i].has_i = 1, at[i].i = atoll(eq + 3);
    } else if (eq[1] == 'f') {
      at[i].type = KILN_ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
      at[i].has_f = 1, at[i].f = strtof(eq + 3, NULL);
    } else {
      at[i].type = KILN_ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
      snprintf(as[i], sizeof as[i], "%s", eq + 3);
      at[i].has_s = 1, at[i].s.data = (uint8_t *)as[i], at[i].s.len = strlen(as[i]);
    }
  }
  n.n_attribute = na, n.attribute = atp;
  g.n_node = 1, g.node = np;
  for (int i = 0; i < sp->n_in + sp->n_out; i++) {
    kiln_onnx__value_info_proto__init(&vi[i]);
    kiln_onnx__type_proto__init(&tp[i]);
    kiln_onnx__type_proto__tensor__init(&tt[i]);
    tt[i].has_elem_type = 1, tt[i].elem_type = sp->elem[i] ? sp->elem[i] : KILN_DTYPE_FLOAT;
    tp[i].value_case = KILN_ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, tp[i].tensor_type = &tt[i];
    vi[i].type = &tp[i];
    if (i < sp->n_in) {
      kiln_onnx__tensor_shape_proto__init(&sh[i]);
      for (int k = 0; k < sp->rank[i]; k++) {
        kiln_onnx__tensor_shape_proto__dimension__init(&d[i][k]);
        d[i][k].value_case = KILN_ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
        d[i][k].dim_value = sp->dims[i][k];
        dp[i][k] = &d[i][k];
      }
      sh[i].n_dim = (size_t)sp->rank[i], sh[i].dim = dp[i];
      tt[i].shape = &sh[i];
      vi[i].name = in_names[i];
      vin[i] = &vi[i];
    } else {
      vi[i].name = out_names[i - sp->n_in];
      vout[i - sp->n_in] = &vi[i];
    }
  }
  g.n_input = (size_t)sp->n_in, g.input = vin;
  g.n_output = (size_t)sp->n_out, g.output = vout;
  *len = kiln_onnx__model_proto__get_packed_size(&m);
  uint8_t *buf = malloc(*len);
  kiln_onnx__model_proto__pack(&m, buf);
  return buf;
}

static uint64_t rng = 0x9E3779B97F4A7C15u;
static float urand(float lo, float hi) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return lo + (hi - lo) * (float)(rng >> 40) / (float)(1u << 24);
}

/* Runs the node on `backend` ("cpu" or "ref"); copies the outputs into out[] (malloc'd). Returns
   how many nodes the first backend took. */
static size_t run_on(const char *backend, const uint8_t *buf, size_t len, const node_spec *sp,
                     const kiln_tensor *in, kiln_tensor *out) {
  const char *const be[] = {backend, NULL};
  kiln_model_opts o = kiln_model_opts_default();
  o.backends = be;
  o.intra_threads = 2;
  kiln_model *m = NULL;
  kiln_session *s = NULL;
  kiln_error err = {0};
  kiln_status st = kiln_model_load_memory(buf, len, NULL, &o, &m, &err);
  if (st != KILN_OK) fprintf(stderr, "%s: %s\n", sp->op, err.message);
  assert_int_equal(st, KILN_OK);
  assert_int_equal(kiln_session_create(m, &s, &err), KILN_OK);
  const char *names[] = {"x0", "x1", "x2"};
  st = kiln_session_run(s, names, in, (size_t)sp->n_in, &err);
  if (st != KILN_OK) fprintf(stderr, "%s: %s\n", sp->op, err.message);
  assert_int_equal(st, KILN_OK);
  for (int i = 0; i < sp->n_out; i++) {
    kiln_tensor t;
    assert_int_equal(kiln_session_output(s, (size_t)i, &t), KILN_OK);
    out[i] = t;
    out[i].data = malloc(kiln_tensor_nbytes(&t) + 1);
    /* An empty output's data may be NULL. */
    if (kiln_tensor_nbytes(&t)) memcpy(out[i].data, t.data, kiln_tensor_nbytes(&t));
  }
  const char *name;
  size_t nodes;
  kiln_model_backend_nodes(m, 0, &name, &nodes);
  assert_string_equal(name, backend);
  kiln_session_free(s);
  kiln_model_free(m);
  return nodes;
}

/* Compares the cpu backend with ref on random inputs: |cpu - ref| <= 1e-5 |ref| + 2e-6 (the
   vmath bounds plus float accumulation where ref accumulates in double). `fast` says whether the
   cpu backend must have taken the node (false where its execute falls back to ref). */
static void check_node(const node_spec *sp, bool fast) {
  size_t len;
  uint8_t *buf = build_model(sp, &len);
  kiln_tensor in[3];
  for (int i = 0; i < sp->n_in; i++) {
    in[i] = (kiln_tensor){.dtype = KILN_DTYPE_FLOAT, .rank = sp->rank[i]};
    memcpy(in[i].dims, sp->dims[i], sizeof sp->dims[i]);
    size_t n = kiln_tensor_count(&in[i]);
    float *d = malloc(n * sizeof *d + 1);
    float lo = sp->lo[i], hi = sp->hi[i];
    if (lo == hi) lo = -3.0f, hi = 3.0f;
    for (size_t k = 0; k < n; k++) d[k] = urand(lo, hi);
    in[i].data = d;
  }
  kiln_tensor oc[3], orf[3];
  size_t cpu_nodes = run_on("cpu", buf, len, sp, in, oc);
  if (fast) assert_int_equal(cpu_nodes, 1);
  run_on("ref", buf, len, sp, in, orf);
  for (int i = 0; i < sp->n_out; i++) {
    assert_int_equal(oc[i].rank, orf[i].rank);
    size_t n = kiln_tensor_count(&orf[i]);
    assert_int_equal(kiln_tensor_count(&oc[i]), n);
    const float *a = oc[i].data, *r = orf[i].data;
    for (size_t k = 0; k < n; k++) {
      double d = fabs((double)a[k] - (double)r[k]);
      if (!(d <= 1e-5 * fabs((double)r[k]) + 2e-6)) {
        fprintf(stderr, "%s (opset %d, ISA %s) output %d [%zu]: cpu %.9g ref %.9g\n", sp->op,
                sp->opset, getenv("KILN_ISA"), i, k, a[k], r[k]);
        fail();
      }
    }
    free(oc[i].data);
    free(orf[i].data);
  }
  for (int i = 0; i < sp->n_in; i++) free(in[i].data);
  free(buf);
}

#define SHAPE1(a) 1, {{a}}
static const char *const isa_names[] = {"generic", "avx2", "avx512"}; /* in isas[] order */

static void each_isa(void (*body)(void)) {
  find_isas();
  for (size_t k = 0; k < n_isas; k++) {
    setenv("KILN_ISA", isa_names[k], 1);
    body();
  }
  unsetenv("KILN_ISA");
}

/* softmax_step (the online-softmax step of the fused Attention kernel), both ISAs: the new running
   max is exactly max(old, max(x)); each x becomes exp(x - m) of the float difference within exp's
   bound (exactly 0 for -inf and below exp's range, NaN for NaN); the sum matches a double sum of
   the outputs; a row with nothing visible (m = -inf) becomes zeros. Lengths cover the masked
   tails and the 16-wide body. */
static void vmath_softmax_step(void **state) {
  (void)state;
  find_isas();
  static const size_t lens[] = {1, 3, 7, 8, 9, 16, 17, 31, 128, 131};
  static const float inits[] = {-INFINITY, -5.0f, 40.0f};
  float x[131], y[131];
  for (size_t k = 0; k < n_isas; k++) {
    const kiln__vmath *v = isas[k];
    for (size_t li = 0; li < KILN__ARRAY_LEN(lens); li++)
      for (size_t ii = 0; ii < KILN__ARRAY_LEN(inits); ii++) {
        size_t n = lens[li];
        float mx = inits[ii];
        for (size_t i = 0; i < n; i++) {
          x[i] = urand(-30.0f, 30.0f);
          if (i % 5 == 3) x[i] = -INFINITY;     /* masked keys */
          if (i % 11 == 7) x[i] = -200.0f;      /* below exp's range once shifted */
        }
        for (size_t i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
        memcpy(y, x, n * sizeof *x);
        float run = inits[ii];
        float sum = v->softmax_step(y, n, &run);
        assert_true(run == mx);
        double ref_sum = 0.0;
        for (size_t i = 0; i < n; i++) {
          ref_sum += y[i];
          if (mx == -INFINITY) {
            assert_true(y[i] == 0.0f);
            continue;
          }
          double r = exp((double)(x[i] - mx));
          if (r < 1.2e-38) assert_true(y[i] == 0.0f);
          else if (fabs(y[i] - r) > 1.5e-7 * r)
            fail_msg("%s n %zu: exp(%g - %g) = %.9g, expected %.9g", v->isa, n, x[i], mx, y[i], r);
        }
        assert_true(fabs(sum - ref_sum) <= 1e-6 * (ref_sum + 1e-30) || (sum == 0 && ref_sum == 0));
      }
    /* Nothing visible: -inf everywhere, max stays -inf, zeros out. */
    for (size_t i = 0; i < 19; i++) x[i] = -INFINITY;
    float run = -INFINITY;
    assert_true(v->softmax_step(x, 19, &run) == 0.0f && run == -INFINITY);
    for (size_t i = 0; i < 19; i++) assert_true(x[i] == 0.0f);
    /* A NaN score stays NaN. */
    for (size_t i = 0; i < 19; i++) x[i] = (float)i - 10.0f;
    x[12] = NAN;
    run = -INFINITY;
    (void)v->softmax_step(x, 19, &run);
    assert_true(isnan(x[12]));
  }
}

static void unary_body(void) {
  const char *ops[] = {"Relu", "Sigmoid", "Tanh", "Erf"};
  const int64_t shapes[][3] = {{1, 1, 1}, {1, 1, 7}, {3, 5, 1}, {2, 3, 37}, {4, 129, 67}};
  for (size_t o = 0; o < 4; o++)
    for (size_t s = 0; s < 5; s++) {
      node_spec sp = {.op = ops[o], .opset = 17, .n_in = 1, .n_out = 1, .rank = {3},
                      .lo = {-6}, .hi = {6}};
      memcpy(sp.dims[0], shapes[s], sizeof shapes[s]);
      check_node(&sp, true);
    }
  for (int t = 0; t < 2; t++) {
    node_spec sp = {.op = "Gelu", .opset = 20, .n_in = 1, .n_out = 1, .rank = {2},
                    .dims = {{3, 1029}}, .attr = {t ? "approximate=s:tanh" : NULL},
                    .lo = {-6}, .hi = {6}};
    check_node(&sp, true);
  }
}

static void clip_body(void) {
  /* Bounds as scalar inputs (both, min only), as attributes (opset 6), and none. */
  node_spec both = {.op = "Clip", .opset = 13, .n_in = 3, .n_out = 1, .rank = {3, 0, 0},
                    .dims = {{2, 3, 37}}, .lo = {-3, -2, 0.5f}, .hi = {3, -1, 2}};
  check_node(&both, true);
  node_spec lo_only = {.op = "Clip", .opset = 13, .n_in = 2, .n_out = 1, .rank = {2, 0},
                       .dims = {{5, 1029}}, .lo = {-3, -0.5f}, .hi = {3, 0.5f}};
  check_node(&lo_only, true);
  node_spec attrs = {.op = "Clip", .opset = 6, .n_in = 1, .n_out = 1, .rank = {1},
                     .dims = {{77}}, .attr = {"min=f:-0.5", "max=f:0.7"}};
  check_node(&attrs, true);
  node_spec none = {.op = "Clip", .opset = 13, .n_in = 1, .n_out = 1, .rank = {2},
                    .dims = {{3, 9}}};
  check_node(&none, true);
}

static void binary_body(void) {
  const char *ops[] = {"Add", "Sub", "Mul", "Div"};
  /* a and b shapes: same, scalar either side, trailing blocks either side, and one the fast path
     does not take (a column broadcast: the reference runs it). */
  const struct { int ra, rb; int64_t a[4], b[4]; bool fast_shape; } cases[] = {
      {2, 2, {5, 7}, {5, 7}, true},         {3, 1, {2, 3, 33}, {1}, true},
      {1, 3, {1}, {2, 3, 33}, true},        {3, 1, {2, 3, 33}, {33}, true},
      {1, 3, {33}, {2, 3, 33}, true},       {3, 2, {2, 3, 33}, {3, 33}, true},
      {3, 3, {2, 3, 33}, {1, 1, 33}, true}, {2, 2, {4, 5}, {4, 1}, false},
      {0, 0, {0}, {0}, true},               {2, 1, {300, 301}, {301}, true},
  };
  for (size_t o = 0; o < 4; o++)
    for (size_t k = 0; k < KILN__ARRAY_LEN(cases); k++) {
      node_spec sp = {.op = ops[o], .opset = 14, .n_in = 2, .n_out = 1,
                      .rank = {cases[k].ra, cases[k].rb}, .lo = {-3, 0.5f}, .hi = {3, 2}};
      memcpy(sp.dims[0], cases[k].a, sizeof cases[k].a);
      memcpy(sp.dims[1], cases[k].b, sizeof cases[k].b);
      check_node(&sp, true); /* the row takes every float node; execute may hand it to ref */
    }
}

static void softmax_body(void) {
  const struct { int opset, rank; int64_t d[4]; const char *axis; } cases[] = {
      {13, 2, {1, 1}, NULL},        {13, 2, {3, 17}, NULL},       {13, 3, {2, 3, 1000}, NULL},
      {13, 3, {2, 3, 9}, "axis=i:2"}, {13, 3, {2, 7, 5}, "axis=i:1"}, /* not last: ref */
      {11, 3, {2, 3, 5}, NULL},     {11, 3, {2, 3, 5}, "axis=i:0"}, {11, 3, {4, 3, 65}, "axis=i:-1"},
      {13, 1, {8}, NULL},
  };
  for (size_t k = 0; k < KILN__ARRAY_LEN(cases); k++) {
    node_spec sp = {.op = "Softmax", .opset = cases[k].opset, .n_in = 1, .n_out = 1,
                    .rank = {cases[k].rank}, .attr = {cases[k].axis}, .lo = {-20}, .hi = {20}};
    memcpy(sp.dims[0], cases[k].d, sizeof cases[k].d);
    check_node(&sp, true);
  }
}

static void layernorm_body(void) {
  /* x, scale, bias shapes; outputs Y, Mean, InvStdDev. */
  const struct { int n_in, n_out, rx, rs; int64_t x[4], s[4]; const char *a0, *a1; } cases[] = {
      {3, 1, 3, 1, {3, 5, 97}, {97}, NULL, NULL},
      {3, 3, 3, 1, {3, 5, 97}, {97}, "epsilon=f:0.001", NULL},
      {2, 1, 2, 1, {7, 8}, {8}, NULL, NULL},
      {3, 3, 3, 2, {3, 5, 97}, {5, 97}, "axis=i:-2", NULL},
      {3, 1, 3, 2, {2, 4, 3}, {1, 3}, "axis=i:1", NULL}, /* broadcast scale: ref */
      {3, 1, 2, 1, {1, 768}, {768}, NULL, NULL},
  };
  for (size_t k = 0; k < KILN__ARRAY_LEN(cases); k++) {
    node_spec sp = {.op = "LayerNormalization", .opset = 17, .n_in = cases[k].n_in,
                    .n_out = cases[k].n_out, .rank = {cases[k].rx, cases[k].rs, cases[k].rs},
                    .attr = {cases[k].a0, cases[k].a1}, .lo = {-4, 0.5f, -1}, .hi = {4, 2, 1}};
    memcpy(sp.dims[0], cases[k].x, sizeof cases[k].x);
    memcpy(sp.dims[1], cases[k].s, sizeof cases[k].s);
    memcpy(sp.dims[2], cases[k].s, sizeof cases[k].s);
    check_node(&sp, true);
  }
}

/* Concat (copy_kernels.c): axis first, middle, last and negative; 1 to 3 inputs; empty inputs
   on the axis, an all-empty output and an empty non-axis dimension; and outputs above the
   kernel's threading threshold (256 KiB), both as one big row per input (outer == 1, SqueezeNet's
   shape) and as many rows, so the chunks split rows and pieces at odd places. */
static void concat_body(void) {
  const struct { int n_in, rank; int64_t d[3][4]; const char *axis; } cases[] = {
      {2, 2, {{3, 5}, {4, 5}}, "axis=i:0"},
      {2, 2, {{3, 5}, {3, 7}}, "axis=i:1"},
      {3, 3, {{2, 3, 5}, {2, 1, 5}, {2, 4, 5}}, "axis=i:1"},
      {3, 3, {{2, 3, 5}, {2, 3, 1}, {2, 3, 9}}, "axis=i:-1"},
      {3, 4, {{1, 3, 5, 7}, {1, 0, 5, 7}, {1, 2, 5, 7}}, "axis=i:1"}, /* an empty input */
      {2, 2, {{0, 5}, {0, 5}}, "axis=i:0"},                           /* empty output */
      {2, 3, {{2, 0, 3}, {2, 0, 4}}, "axis=i:2"},                     /* empty elsewhere */
      {1, 3, {{2, 3, 4}}, "axis=i:1"},
      {2, 4, {{1, 64, 55, 55}, {1, 64, 55, 55}}, "axis=i:1"},           /* threaded, outer 1 */
      {3, 4, {{3, 7, 33, 29}, {3, 1, 33, 29}, {3, 5, 33, 29}}, "axis=i:1"}, /* threaded rows */
      {2, 2, {{700, 130}, {700, 3}}, "axis=i:-1"},                    /* threaded, short rows */
      {2, 3, {{2, 3, 4}, {5, 3, 4}}, "axis=i:-3"},
  };
  for (size_t k = 0; k < KILN__ARRAY_LEN(cases); k++) {
    node_spec sp = {.op = "Concat", .opset = 13, .n_in = cases[k].n_in, .n_out = 1,
                    .attr = {cases[k].axis}};
    for (int i = 0; i < cases[k].n_in; i++) {
      sp.rank[i] = cases[k].rank;
      memcpy(sp.dims[i], cases[k].d[i], sizeof cases[k].d[i]);
    }
    check_node(&sp, true);
  }
}

/* Cast int32 -> float32 of 100005 values of every magnitude (rounding above 2^24, the extremes),
   float16 -> float32 and bfloat16 -> float32 of every 16-bit pattern, and float32 -> float16 of
   specials (NaNs with payloads, infinities, signed zeros, the overflow edge 65520,
   subnormal edges and ties) and 300000 random bit patterns, byte for byte against the reference
   (cast_kernels.c, F16C), the cpu backend taking the node; lengths leave a scalar tail. */
static void cast_body(void) {
  static uint16_t h[65536 + 7];
  for (size_t i = 0; i < 65536 + 7; i++) h[i] = (uint16_t)(i * 40503u + (i >> 16));
  enum { NF = 300000 + 32 };
  static float f[NF];
  static const uint32_t special[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff812345u,
                                     0x7fbfffffu, 0x7f800000u, 0xff800000u, 0x00000000u,
                                     0x80000000u, 0x477fe000u, 0x477fefffu, 0x477ff000u,
                                     0x477ff001u, 0x38800000u, 0x387fffffu, 0x33000000u,
                                     0x33000001u, 0x32ffffffu, 0x3f801000u, 0x3f803000u,
                                     0x3f800fffu, 0x00000001u, 0x80800000u, 0x7f7fffffu};
  for (size_t i = 0; i < NF; i++) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    uint32_t u = i < KILN__ARRAY_LEN(special) ? special[i] : (uint32_t)(rng >> 32);
    memcpy(&f[i], &u, sizeof u);
  }
  static int32_t iv[100000 + 5];
  static const int32_t ispecial[] = {0, 1, -1, 16777216, 16777217, 16777219, -16777217,
                                     2147483647, -2147483647 - 1, 33554435, -33554433};
  for (size_t i = 0; i < KILN__ARRAY_LEN(iv); i++) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    iv[i] = i < KILN__ARRAY_LEN(ispecial) ? ispecial[i]
                                          : (int32_t)(uint32_t)(rng >> 32) >> (i % 31);
  }
  const struct { int from, to; size_t n; const void *data; } cases[] = {
      {KILN_DTYPE_INT32, KILN_DTYPE_FLOAT, KILN__ARRAY_LEN(iv), iv},
      {KILN_DTYPE_FLOAT16, KILN_DTYPE_FLOAT, 65536 + 7, h},
      {KILN_DTYPE_BFLOAT16, KILN_DTYPE_FLOAT, 65536 + 7, h},
      {KILN_DTYPE_FLOAT, KILN_DTYPE_FLOAT16, NF - 3, f},
  };
  for (size_t k = 0; k < KILN__ARRAY_LEN(cases); k++) {
    char to[32];
    snprintf(to, sizeof to, "to=i:%d", cases[k].to);
    node_spec sp = {.op = "Cast", .opset = 13, .n_in = 1, .n_out = 1, .rank = {1},
                    .dims = {{(int64_t)cases[k].n}}, .attr = {to},
                    .elem = {cases[k].from, cases[k].to}};
    size_t len;
    uint8_t *buf = build_model(&sp, &len);
    kiln_tensor in = {.dtype = (kiln_dtype)cases[k].from, .rank = 1, .dims = {(int64_t)cases[k].n},
                      .data = (void *)cases[k].data};
    kiln_tensor oc, orf;
    assert_int_equal(run_on("cpu", buf, len, &sp, &in, &oc), 1);
    run_on("ref", buf, len, &sp, &in, &orf);
    assert_int_equal(oc.dtype, cases[k].to);
    size_t nb = kiln_tensor_nbytes(&orf);
    assert_int_equal(kiln_tensor_nbytes(&oc), nb);
    const uint8_t *a = oc.data, *r = orf.data;
    for (size_t b = 0; b < nb; b++)
      if (a[b] != r[b])
        fail_msg("Cast %d -> %d (ISA %s): byte %zu is 0x%02x, reference 0x%02x", cases[k].from,
                 cases[k].to, getenv("KILN_ISA"), b, a[b], r[b]);
    free(oc.data);
    free(orf.data);
    free(buf);
  }
}

static void kernels_unary(void **state) { (void)state; each_isa(unary_body); }
static void kernels_cast(void **state) { (void)state; each_isa(cast_body); }
static void kernels_binary(void **state) { (void)state; each_isa(binary_body); }
static void kernels_clip(void **state) { (void)state; each_isa(clip_body); }
static void kernels_softmax(void **state) { (void)state; each_isa(softmax_body); }
static void kernels_layernorm(void **state) { (void)state; each_isa(layernorm_body); }
static void kernels_concat(void **state) { (void)state; each_isa(concat_body); }

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODELS_DIR\n", argv[0]);
    return 2;
  }
  models_dir = argv[1];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(kernels_cast),
      cmocka_unit_test(pool_covers_every_index_once),
      cmocka_unit_test(pool_nested_runs_inline),
      cmocka_unit_test(pool_concurrent_callers),
      cmocka_unit_test(pool_idle_burns_no_cpu),
      cmocka_unit_test(vmath_error_bounds),
      cmocka_unit_test(vmath_softmax_step),
      cmocka_unit_test(vmath_select_honours_env),
      cmocka_unit_test(kernels_unary),
      cmocka_unit_test(kernels_binary),
      cmocka_unit_test(kernels_clip),
      cmocka_unit_test(kernels_softmax),
      cmocka_unit_test(kernels_layernorm),
      cmocka_unit_test(kernels_concat),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
