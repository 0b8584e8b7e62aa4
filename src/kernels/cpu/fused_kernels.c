/* Optimized CPU kernels for the row-wise fused ops of domain ai.kiln (docs/FUSED_OPS.md):
 * LayerNorm, RMSNorm, Gelu and Attention. (FusedConv, FusedGemm and FusedMatMul ride on the SGEMM
 * epilogue in gemm_kernels.c and conv_dw.c.) Rows match on op name only in cpu_backend.c, so each
 * supports() checks the domain. As elsewhere in the backend, execute() hands shapes it does not
 * handle to the reference kernel (src/kernels/ref/fused.c), which reports any error. */
#include <math.h>

#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/sgemm.h"

#define GRAIN ((size_t)16384)


static bool f32(const kiln_tensor *t) { return t && t->dtype == KILN_DTYPE_FLOAT; }

static kiln_status ref_run(kiln__kctx *c) { return c->node->op->run(c); }

/* Row tasks: at least GRAIN elements each, at most one per row. */
static size_t tasks_for(size_t rows, size_t cols) {
  size_t t = (rows * cols + GRAIN - 1) / GRAIN;
  return KILN__MAX((size_t)1, KILN__MIN(t, rows));
}

typedef struct vm_state {
  const kiln__vmath *v;
  kiln__isa isa;
} vm_state;

static kiln_status prepare_vm(const kiln__node *n, const kiln__graph *g, void **state,
                              kiln_error *err) {
  (void)n, (void)g;
  vm_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing %s", n->op_type);
  kiln_status st = kiln__vmath_select(&s->v, err);
  if (st == KILN_OK) st = kiln__isa_select(&s->isa, err);
  if (st != KILN_OK) {
    kiln__free(s);
    return st;
  }
  *state = s;
  return KILN_OK;
}

static void release_vm(void *state) { kiln__free(state); }

/* ---- Gelu ------------------------------------------------------------------------------------ */

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

static kiln_status exec_gelu(kiln__kctx *c, void *state) {
  const vm_state *s = state;
  if (!f32(c->in[0])) return ref_run(c);
  const char *approx = kiln__attr_str(c->node, "approximate", "none");
  if (strcmp(approx, "none") && strcmp(approx, "tanh")) return ref_run(c); /* it reports */
  unary_job j = {strcmp(approx, "tanh") ? s->v->gelu : s->v->gelu_tanh, c->in[0]->data,
                 c->out[0]->data, kiln_tensor_count(c->in[0]), 0};
  if (j.n == 0) return KILN_OK;
  j.tasks = tasks_for(j.n, 1);
  kiln__parallel_for(c->pool, j.tasks, unary_range, &j);
  return KILN_OK;
}

/* ---- LayerNorm, RMSNorm ---------------------------------------------------------------------- */

typedef struct norm_job {
  const kiln__vmath *v;
  const float *x, *scale, *bias;
  float *y;
  float eps;
  size_t rows, cols, tasks;
} norm_job;

static void layernorm_rows(void *arg, size_t b, size_t e) {
  const norm_job *j = arg;
  for (size_t r = j->rows * b / j->tasks; r < j->rows * e / j->tasks; r++) {
    float mu, iv;
    j->v->layernorm_row(j->x + r * j->cols, j->y + r * j->cols, j->cols, j->scale, j->bias,
                        j->eps, &mu, &iv);
  }
}

/* Sum of squares in 8 float lanes (the compiler vectorizes the fixed-width inner loop). */
static void rmsnorm_rows(void *arg, size_t b, size_t e) {
  const norm_job *j = arg;
  size_t h = j->cols;
  for (size_t r = j->rows * b / j->tasks; r < j->rows * e / j->tasks; r++) {
    const float *restrict x = j->x + r * h;
    float *restrict y = j->y + r * h;
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= h; i += 8)
      for (int l = 0; l < 8; l++) acc[l] += x[i + l] * x[i + l];
    double sq = 0;
    for (; i < h; i++) sq += (double)x[i] * x[i];
    for (int l = 0; l < 8; l++) sq += acc[l];
    float inv = (float)(1.0 / sqrt(sq / (double)h + (double)j->eps));
    for (i = 0; i < h; i++) y[i] = x[i] * inv * j->scale[i];
  }
}

/* Scale (and B) must hold exactly the last dim's count: the reference takes 1-element ones too. */
static bool norm_setup(kiln__kctx *c, const vm_state *s, int n_affine, float eps_def,
                       norm_job *j) {
  const kiln_tensor *x = c->in[0];
  if (!f32(x) || x->rank < 1) return false;
  *j = (norm_job){.v = s->v, .x = x->data, .y = c->out[0]->data,
                  .eps = kiln__attr_float(c->node, "epsilon", eps_def),
                  .cols = (size_t)x->dims[x->rank - 1]};
  if (j->cols == 0) return false;
  j->rows = kiln_tensor_count(x) / j->cols;
  for (int i = 1; i <= n_affine; i++) {
    const kiln_tensor *t = i < c->n_in ? c->in[i] : NULL;
    if (!t) continue;
    if (!f32(t) || kiln_tensor_count(t) != j->cols) return false;
    *(i == 1 ? &j->scale : &j->bias) = t->data;
  }
  j->tasks = tasks_for(j->rows, j->cols);
  return true;
}

static kiln_status exec_layernorm(kiln__kctx *c, void *state) {
  norm_job j;
  /* vmath's row kernel needs a scale; without one the reference runs. */
  if (!norm_setup(c, state, 2, 1e-5f, &j) || !j.scale) return ref_run(c);
  if (j.rows) kiln__parallel_for(c->pool, j.tasks, layernorm_rows, &j);
  return KILN_OK;
}

static kiln_status exec_rmsnorm(kiln__kctx *c, void *state) {
  norm_job j;
  if (!norm_setup(c, state, 1, 1e-6f, &j) || !j.scale) return ref_run(c);
  if (j.rows) kiln__parallel_for(c->pool, j.tasks, rmsnorm_rows, &j);
  return KILN_OK;
}

/* ---- Attention ------------------------------------------------------------------------------- */

/* Query rows and keys per block: the block's scores (SB x TB) and the running output (SB x Dv)
   live on the stack, so no [S, T] matrix exists. */
#define SB 64
#define TB 128
#define DV_MAX 256

typedef struct att_job {
  const vm_state *st;
  const float *q, *k, *v, *mask;
  float *y;
  size_t B, H, S, T, D, Dv, s_blocks;
  int64_t ms[4]; /* the mask's strides in [B, H, S, T] (0 where broadcast) */
  float scale;
  bool causal;
} att_job;

/* Max and sum of a row in 8 lanes, a shape the compiler vectorizes without -ffast-math. */
static float row_max(const float *x, size_t n) {
  float m[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; l++) m[l] = x[i + l] > m[l] ? x[i + l] : m[l];
  for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
  for (int l = 1; l < 8; l++) m[0] = m[l] > m[0] ? m[l] : m[0];
  return m[0];
}

static float row_sum(const float *x, size_t n) {
  float s[8] = {0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; l++) s[l] += x[i + l];
  for (; i < n; i++) s[0] += x[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

static void att_block(const att_job *j, size_t task) {
  size_t bh = task / j->s_blocks, s0 = task % j->s_blocks * SB;
  size_t b = bh / j->H, h = bh % j->H, ns = KILN__MIN((size_t)SB, j->S - s0);
  size_t D = j->D, Dv = j->Dv, T = j->T;
  const float *q = j->q + (bh * j->S + s0) * D, *k = j->k + bh * T * D, *v = j->v + bh * T * Dv;
  _Alignas(32) float sc[SB * TB], acc[SB * DV_MAX];
  float run_max[SB], run_sum[SB];
  for (size_t r = 0; r < ns; r++) {
    run_max[r] = -INFINITY;
    run_sum[r] = 0.0f;
  }
  memset(acc, 0, ns * Dv * sizeof *acc);
  /* Causal: row s sees keys t <= s + (T - S); the block's last row sees the most. */
  size_t t_end = T;
  if (j->causal) {
    size_t last = s0 + ns - 1 + T;
    t_end = last < j->S ? 0 : KILN__MIN(T, last - j->S + 1);
  }
  for (size_t t0 = 0; t0 < t_end; t0 += TB) {
    size_t nt = KILN__MIN((size_t)TB, t_end - t0);
    kiln__sgemm_args g = {.m = ns, .n = nt, .k = D, .a = q, .lda = D, .b = k + t0 * D, .ldb = D,
                          .trans_b = true, .c = sc, .ldc = TB, .alpha = j->scale};
    kiln__sgemm_run(NULL, j->st->isa, &g);
    for (size_t r = 0; r < ns; r++) {
      float *row = sc + r * TB;
      size_t s = s0 + r;
      if (j->mask) {
        const float *m = j->mask + (int64_t)b * j->ms[0] + (int64_t)h * j->ms[1] +
                         (int64_t)s * j->ms[2] + (int64_t)t0 * j->ms[3];
        if (j->ms[3]) for (size_t t = 0; t < nt; t++) row[t] += m[t];
        else for (size_t t = 0; t < nt; t++) row[t] += m[0];
      }
      if (j->causal) {
        size_t lim = s + T < j->S ? 0 : s + T - j->S + 1; /* keys [0, lim) visible */
        for (size_t t = 0; t < nt; t++)
          if (t0 + t >= lim) row[t] = -INFINITY;
      }
      float bmax = row_max(row, nt);
      if (bmax == -INFINITY) { /* nothing visible in this block: it adds nothing */
        memset(row, 0, nt * sizeof *row);
        continue;
      }
      float new_max = bmax > run_max[r] ? bmax : run_max[r];
      float corr = expf(run_max[r] - new_max); /* 0 on the first block */
      for (size_t t = 0; t < nt; t++) row[t] -= new_max;
      j->st->v->exp(row, row, nt);
      float sum = row_sum(row, nt);
      run_sum[r] = run_sum[r] * corr + sum;
      run_max[r] = new_max;
      if (corr != 1.0f)
        for (size_t e = 0; e < Dv; e++) acc[r * Dv + e] *= corr;
    }
    kiln__sgemm_args pv = {.m = ns, .n = Dv, .k = nt, .a = sc, .lda = TB, .b = v + t0 * Dv,
                           .ldb = Dv, .c = acc, .ldc = Dv, .alpha = 1.0f, .accumulate = true};
    kiln__sgemm_run(NULL, j->st->isa, &pv);
  }
  float *y = j->y + (bh * j->S + s0) * Dv;
  for (size_t r = 0; r < ns; r++) {
    float inv = 1.0f / run_sum[r]; /* every key masked: 1/0, and 0 * inf = NaN as unfused */
    for (size_t e = 0; e < Dv; e++) y[r * Dv + e] = acc[r * Dv + e] * inv;
  }
}

static void att_range(void *arg, size_t b, size_t e) {
  for (size_t t = b; t < e; t++) att_block(arg, t);
}

static kiln_status exec_attention(kiln__kctx *c, void *state) {
  const kiln_tensor *q = c->in[0], *k = c->in[1], *v = c->in[2];
  const kiln_tensor *mask = c->n_in > 3 ? c->in[3] : NULL;
  if (!f32(q) || !f32(k) || !f32(v) || (mask && !f32(mask)) || q->rank != 4 || k->rank != 4 ||
      v->rank != 4 || v->dims[3] > DV_MAX || (mask && mask->rank > 4))
    return ref_run(c);
  att_job j = {.st = state, .q = q->data, .k = k->data, .v = v->data,
               .mask = mask ? mask->data : NULL, .y = c->out[0]->data,
               .B = (size_t)q->dims[0], .H = (size_t)q->dims[1], .S = (size_t)q->dims[2],
               .T = (size_t)k->dims[2], .D = (size_t)q->dims[3], .Dv = (size_t)v->dims[3],
               .scale = kiln__attr_float(c->node, "scale", 1.0f),
               .causal = kiln__attr_int(c->node, "causal", 0) != 0};
  if (mask) {
    int64_t sd[4] = {q->dims[0], q->dims[1], q->dims[2], k->dims[2]};
    kiln__bcast_strides(mask, 4, sd, j.ms);
  }
  if (j.B * j.H * j.S == 0 || j.Dv == 0) return KILN_OK;
  j.s_blocks = (j.S + SB - 1) / SB;
  kiln__parallel_for(c->pool, j.B * j.H * j.s_blocks, att_range, &j);
  return KILN_OK;
}

#define ROW(op, exec) {op, NULL, prepare_vm, release_vm, exec, NULL, "ai.kiln"}

const kiln__cpu_kernel kiln__cpu_fused_kernels[] = {
    ROW("LayerNorm", exec_layernorm),
    ROW("RMSNorm", exec_rmsnorm),
    ROW("Gelu", exec_gelu),
    ROW("Attention", exec_attention),
    {0},
};
