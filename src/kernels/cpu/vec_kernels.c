/* Optimized CPU kernels: vectorized elementwise, normalization and softmax ops (float32).
 *
 * supports() turns down what is known at load not to be handled (another domain, an opset
 * without the op's current meaning); shapes and dtypes are often unknown at load, so execute()
 * takes the fast path when the run's tensors fit it and otherwise calls the reference kernel
 * (same contract, same scratch), so every node still computes the right thing. The vector-math
 * table is chosen at prepare (vmath.h) and is the node's state. */
#include <float.h>
#include <math.h>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/vmath.h"

/* Elements per task: below this the pool's hand-off costs more than the work. */
#define GRAIN ((size_t)16384)


/* Float32 or not known yet: anything else goes to ref at load. */
static bool maybe_f32(const kiln__node *n, const kiln__graph *g, int i) {
  if (i >= n->n_in || n->in[i] < 0) return true;
  kiln_dtype t = g->values[n->in[i]].dtype;
  return t == KILN_DTYPE_UNDEFINED || t == KILN_DTYPE_FLOAT;
}

static bool f32_in(const kiln__kctx *c, int i) {
  return i < c->n_in && c->in[i] && c->in[i]->dtype == KILN_DTYPE_FLOAT;
}

static kiln_status prepare_vmath(const kiln__node *n, const kiln__graph *g, void **state,
                                 kiln_error *err) {
  (void)n, (void)g;
  const kiln__vmath *v = NULL;
  kiln_status st = kiln__vmath_select(&v, err);
  *state = (void *)v; /* a static table: nothing to release */
  return st;
}

static kiln_status ref_run(kiln__kctx *c) { return c->node->op->run(c); }

static size_t tasks_for(size_t elems, size_t units) {
  size_t t = (elems + GRAIN - 1) / GRAIN;
  return KILN__MAX((size_t)1, KILN__MIN(t, units));
}

/* ---- unary ---------------------------------------------------------------------------------- */

typedef struct unary_job {
  kiln__vmath_unary f;
  const float *x;
  float *y;
  size_t n, tasks;
} unary_job;

static void unary_range(void *arg, size_t b, size_t e) {
  const unary_job *j = arg;
  size_t lo = j->n * b / j->tasks, hi = j->n * e / j->tasks;
  j->f(j->x + lo, j->y + lo, hi - lo);
}

static kiln_status run_unary(kiln__kctx *c, kiln__vmath_unary f) {
  if (!f32_in(c, 0)) return ref_run(c);
  unary_job j = {f, c->in[0]->data, c->out[0]->data, kiln_tensor_count(c->in[0]), 0};
  if (j.n == 0) return KILN_OK;
  j.tasks = tasks_for(j.n, j.n);
  kiln__parallel_for(c->pool, j.tasks, unary_range, &j);
  return KILN_OK;
}

static bool supports_unary(const kiln__node *n, const kiln__graph *g) {
  return maybe_f32(n, g, 0);
}

/* Gelu entered the default domain at opset 20. */
static bool supports_gelu(const kiln__node *n, const kiln__graph *g) {
  if (!supports_unary(n, g) || n->opset < 20) return false;
  const char *a = kiln__attr_str(n, "approximate", "none");
  return !strcmp(a, "none") || !strcmp(a, "tanh");
}

static kiln_status exec_relu(kiln__kctx *c, void *s) { return run_unary(c, ((const kiln__vmath *)s)->relu); }
static kiln_status exec_sigmoid(kiln__kctx *c, void *s) { return run_unary(c, ((const kiln__vmath *)s)->sigmoid); }
static kiln_status exec_tanh(kiln__kctx *c, void *s) { return run_unary(c, ((const kiln__vmath *)s)->tanh); }
static kiln_status exec_erf(kiln__kctx *c, void *s) { return run_unary(c, ((const kiln__vmath *)s)->erf); }
static kiln_status exec_gelu(kiln__kctx *c, void *s) {
  const kiln__vmath *v = s;
  bool t = !strcmp(kiln__attr_str(c->node, "approximate", "none"), "tanh");
  return run_unary(c, t ? v->gelu_tanh : v->gelu);
}

/* ---- Clip ----------------------------------------------------------------------------------- */

typedef struct clip_job {
  const float *x;
  float *y;
  float lo, hi;
  size_t n, tasks;
} clip_job;

static void clip_range(void *arg, size_t b, size_t e) {
  const clip_job *j = arg;
  size_t lo = j->n * b / j->tasks, hi = j->n * e / j->tasks;
  if (j->y != j->x) memcpy(j->y + lo, j->x + lo, (hi - lo) * sizeof *j->y);
  kiln__act_apply(NULL, KILN__ACT_CLIP, j->lo, j->hi, j->y + lo, hi - lo);
}

/* Bounds: attributes before opset 11, optional float32 scalar inputs since (anything else, ref). */
static kiln_status exec_clip(kiln__kctx *c, void *state) {
  (void)state;
  if (!f32_in(c, 0)) return ref_run(c);
  clip_job j = {c->in[0]->data, c->out[0]->data, -INFINITY, INFINITY,
                kiln_tensor_count(c->in[0]), 0};
  if (c->node->opset < 11) {
    j.lo = kiln__attr_float(c->node, "min", -FLT_MAX);
    j.hi = kiln__attr_float(c->node, "max", FLT_MAX);
  }
  for (int i = 1; c->node->opset >= 11 && i <= 2 && i < c->n_in; i++) {
    const kiln_tensor *b = c->in[i];
    if (!b || kiln_tensor_count(b) == 0) continue;
    if (b->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(b) != 1 || !b->data) return ref_run(c);
    *(i == 1 ? &j.lo : &j.hi) = *(const float *)b->data;
  }
  if (j.n == 0) return KILN_OK;
  j.tasks = tasks_for(j.n, j.n);
  kiln__parallel_for(c->pool, j.tasks, clip_range, &j);
  return KILN_OK;
}

/* ---- binary --------------------------------------------------------------------------------- */

/* a and b are elementwise (sa = sb = 1), or one is a scalar (stride 0), or one repeats with
   period `period` along the other's rows (its shape is the output's trailing dims). */
typedef struct binary_job {
  kiln__vmath_binary f;
  const float *a, *b;
  size_t sa, sb;
  float *y;
  size_t n, period, tasks;
} binary_job;

static void binary_flat(void *arg, size_t b, size_t e) {
  const binary_job *j = arg;
  size_t lo = j->n * b / j->tasks, hi = j->n * e / j->tasks;
  j->f(j->a + lo * j->sa, j->sa, j->b + lo * j->sb, j->sb, j->y + lo, hi - lo);
}

static void binary_rows(void *arg, size_t b, size_t e) {
  const binary_job *j = arg;
  size_t rows = j->n / j->period, p = j->period;
  for (size_t r = rows * b / j->tasks; r < rows * e / j->tasks; r++)
    j->f(j->a + (j->sa ? r * p : 0), 1, j->b + (j->sb ? r * p : 0), 1, j->y + r * p, p);
}

/* True when `t` (leading 1s dropped) is exactly the trailing dims of `y`. */
static bool is_trailing_block(const kiln_tensor *t, const kiln_tensor *y) {
  int lead = 0;
  while (lead < t->rank && t->dims[lead] == 1) lead++;
  int k = t->rank - lead;
  if (k > y->rank) return false;
  for (int i = 0; i < k; i++)
    if (t->dims[lead + i] != y->dims[y->rank - k + i]) return false;
  return true;
}

static kiln_status run_binary(kiln__kctx *c, void *state, int op) {
  const kiln__vmath *v = state;
  if (!f32_in(c, 0) || !f32_in(c, 1)) return ref_run(c);
  const kiln_tensor *a = c->in[0], *b = c->in[1];
  kiln_tensor *y = c->out[0];
  size_t na = kiln_tensor_count(a), nb = kiln_tensor_count(b), ny = kiln_tensor_count(y);
  if (ny == 0) return KILN_OK;
  binary_job j = {v->binary[op], a->data, b->data, 1, 1, y->data, ny, 0, 0};
  if (na == ny && nb == ny) { /* equal counts under broadcasting: the same layout */
  } else if (na == ny && nb == 1) {
    j.sb = 0;
  } else if (nb == ny && na == 1) {
    j.sa = 0;
  } else if (na == ny && is_trailing_block(b, y)) {
    j.period = nb, j.sb = 0;
  } else if (nb == ny && is_trailing_block(a, y)) {
    j.period = na, j.sa = 0;
  } else {
    return ref_run(c);
  }
  if (j.period) {
    j.tasks = tasks_for(ny, ny / j.period);
    kiln__parallel_for(c->pool, j.tasks, binary_rows, &j);
  } else {
    j.tasks = tasks_for(ny, ny);
    kiln__parallel_for(c->pool, j.tasks, binary_flat, &j);
  }
  return KILN_OK;
}

static bool supports_binary(const kiln__node *n, const kiln__graph *g) {
  return maybe_f32(n, g, 0) && maybe_f32(n, g, 1);
}

static kiln_status exec_add(kiln__kctx *c, void *s) { return run_binary(c, s, KILN__VBIN_ADD); }
static kiln_status exec_sub(kiln__kctx *c, void *s) { return run_binary(c, s, KILN__VBIN_SUB); }
static kiln_status exec_mul(kiln__kctx *c, void *s) { return run_binary(c, s, KILN__VBIN_MUL); }
static kiln_status exec_div(kiln__kctx *c, void *s) { return run_binary(c, s, KILN__VBIN_DIV); }

/* ---- Softmax -------------------------------------------------------------------------------- */

typedef struct rows_job {
  const kiln__vmath *v;
  const float *x, *scale, *bias;
  float *y, *mean, *inv;
  size_t rows, cols, tasks;
  float eps;
} rows_job;

static void softmax_rows(void *arg, size_t b, size_t e) {
  const rows_job *j = arg;
  for (size_t r = j->rows * b / j->tasks; r < j->rows * e / j->tasks; r++)
    j->v->softmax_row(j->x + r * j->cols, j->y + r * j->cols, j->cols);
}

/* Row counts and lengths of a split at `axis`: rows = prod(dims[:axis]), cols = the rest. */
static void split_rows(const kiln_tensor *x, int axis, size_t *rows, size_t *cols) {
  size_t r = 1, n = 1;
  for (int i = 0; i < x->rank; i++) {
    if (i < axis) r *= (size_t)x->dims[i];
    else n *= (size_t)x->dims[i];
  }
  *rows = r;
  *cols = n;
}

/* Rows are contiguous when softmax runs along the last axis (opset >= 13), and always before
   opset 13, which coerces the input to 2-D at `axis`. Other axes go to the reference kernel. */
static kiln_status exec_softmax(kiln__kctx *c, void *state) {
  if (!f32_in(c, 0)) return ref_run(c);
  const kiln_tensor *x = c->in[0];
  bool old = c->node->opset < 13;
  int64_t a = kiln__attr_int(c->node, "axis", old ? 1 : -1);
  int axis;
  if (x->rank == 0 || !kiln__norm_axis(a, x->rank, &axis) || (!old && axis != x->rank - 1))
    return ref_run(c);
  rows_job j = {.v = state, .x = x->data, .y = c->out[0]->data};
  split_rows(x, axis, &j.rows, &j.cols);
  if (j.rows == 0 || j.cols == 0) return KILN_OK;
  j.tasks = tasks_for(j.rows * j.cols, j.rows);
  kiln__parallel_for(c->pool, j.tasks, softmax_rows, &j);
  return KILN_OK;
}

static bool supports_softmax(const kiln__node *n, const kiln__graph *g) {
  return maybe_f32(n, g, 0);
}

/* ---- LayerNormalization --------------------------------------------------------------------- */

static void layernorm_rows(void *arg, size_t b, size_t e) {
  const rows_job *j = arg;
  for (size_t r = j->rows * b / j->tasks; r < j->rows * e / j->tasks; r++) {
    float mu, iv;
    j->v->layernorm_row(j->x + r * j->cols, j->y + r * j->cols, j->cols, j->scale, j->bias,
                        j->eps, &mu, &iv);
    if (j->mean) j->mean[r] = mu;
    if (j->inv) j->inv[r] = iv;
  }
}

static float *opt_out_f32(const kiln__kctx *c, int i, bool *ok) {
  if (i >= c->n_out || !c->out[i]) return NULL;
  if (c->out[i]->dtype != KILN_DTYPE_FLOAT) *ok = false;
  return c->out[i]->data;
}

/* Fast path: float32 throughout, Scale and B with exactly the normalized shape's element count
   (so they are contiguous over a row), float statistics (stash_type 1). */
static kiln_status exec_layernorm(kiln__kctx *c, void *state) {
  if (!f32_in(c, 0) || !f32_in(c, 1) || (c->n_in > 2 && c->in[2] && !f32_in(c, 2)))
    return ref_run(c);
  const kiln_tensor *x = c->in[0];
  int axis;
  if (!kiln__norm_axis(kiln__attr_int(c->node, "axis", -1), x->rank, &axis) ||
      kiln__attr_int(c->node, "stash_type", 1) != KILN_DTYPE_FLOAT)
    return ref_run(c);
  rows_job j = {.v = state, .x = x->data, .y = c->out[0]->data, .scale = c->in[1]->data,
                .eps = kiln__attr_float(c->node, "epsilon", 1e-5f)};
  split_rows(x, axis, &j.rows, &j.cols);
  const kiln_tensor *bias = c->n_in > 2 ? c->in[2] : NULL;
  bool ok = kiln_tensor_count(c->in[1]) == j.cols &&
            (!bias || kiln_tensor_count(bias) == j.cols);
  j.bias = bias ? bias->data : NULL;
  j.mean = opt_out_f32(c, 1, &ok);
  j.inv = opt_out_f32(c, 2, &ok);
  if (!ok) return ref_run(c);
  if (j.rows == 0) return KILN_OK;
  if (j.cols == 0) return ref_run(c); /* mean of nothing: leave it to the oracle */
  j.tasks = tasks_for(j.rows * j.cols, j.rows);
  kiln__parallel_for(c->pool, j.tasks, layernorm_rows, &j);
  return KILN_OK;
}

static bool supports_layernorm(const kiln__node *n, const kiln__graph *g) {
  return maybe_f32(n, g, 0) && maybe_f32(n, g, 1) && maybe_f32(n, g, 2);
}

#define ROW(op, sup, exec) {op, sup, prepare_vmath, NULL, exec, NULL}

const kiln__cpu_kernel kiln__cpu_vec_kernels[] = {
    ROW("Relu", supports_unary, exec_relu),
    ROW("Sigmoid", supports_unary, exec_sigmoid),
    ROW("Tanh", supports_unary, exec_tanh),
    ROW("Erf", supports_unary, exec_erf),
    ROW("Gelu", supports_gelu, exec_gelu),
    ROW("Clip", supports_unary, exec_clip),
    ROW("Add", supports_binary, exec_add),
    ROW("Sub", supports_binary, exec_sub),
    ROW("Mul", supports_binary, exec_mul),
    ROW("Div", supports_binary, exec_div),
    ROW("Softmax", supports_softmax, exec_softmax),
    ROW("LayerNormalization", supports_layernorm, exec_layernorm),
    {0},
};
