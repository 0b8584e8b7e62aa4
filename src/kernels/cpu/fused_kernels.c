/* Optimized CPU kernels for the row-wise fused ops of domain ai.kiln (docs/FUSED_OPS.md):
 * LayerNorm, RMSNorm, Gelu and Attention. (FusedConv, FusedGemm and FusedMatMul ride on the SGEMM
 * epilogue in gemm_kernels.c and conv_dw.c.) Rows match on op name only in cpu_backend.c, so each
 * supports() checks the domain. As elsewhere in the backend, execute() hands shapes it does not
 * handle to the reference kernel (src/kernels/ref/fused.c), which reports any error. */
#include <math.h>
#include <stdint.h>
#include <unistd.h>

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
  size_t cpus; /* online CPUs at prepare (Attention's scratch slots) */
} vm_state;

static kiln_status prepare_vm(const kiln__node *n, const kiln__graph *g, void **state,
                              kiln_error *err) {
  (void)n, (void)g;
  vm_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing %s", n->op_type);
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  s->cpus = cpus > 1 ? (size_t)cpus : 1;
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

/* A task is one head's block of up to SB query rows; it walks the keys in blocks of TB. Per block
   the SB x TB score tile is one SGEMM (Q packed once per task, the mask added in the GEMM's
   epilogue), the online-softmax step runs over each row in place (vmath softmax_step), and P V is
   a second SGEMM accumulating straight into the task's rows of Y (V read in place where the ISA
   can). So no [S, T] matrix exists: a slot of scratch holds Q's panels, one score tile and one
   transposed K block. Tasks are claimed from an atomic counter by one slot per thread, so a
   slot's memory is never shared. */
#define SB 64
#define TB 128
#define ATT_SLOTS_MAX 64
/* Row stride of K's transposed block: not a multiple of 256 bytes, so the GEMM can read it in
   place without its rows colliding in L1 (sgemm.c, in_place_pays). */
#define KT_LD (TB + 16)

typedef struct att_job {
  const vm_state *st;
  const float *q, *k, *v, *mask;
  float *y, *scratch;
  kiln__att_geom g; /* sizes, and where each head's rows are (either layout) */
  size_t s_blocks, tasks, slot_floats, qpack_floats;
  int64_t ms[4]; /* the mask's strides in [B, H, S, T] (0 where broadcast) */
  float scale;
  bool causal;
  bool share_kv; /* one key block for every query block: see att_shares_kv */
} att_job;

/* dst[c * ldd + r] = src[r * lds + c] for rows x cols: K's block as the score GEMM's B, which
   the GEMM then reads in place instead of gathering K^T's columns element by element. */
KILN__NO_LIBCALL_LOOPS static void transpose(const float *restrict src, size_t lds, size_t rows,
                                             size_t cols, float *restrict dst, size_t ldd) {
  size_t r = 0;
#if defined(__SSE2__)
  for (; r + 4 <= rows; r += 4) {
    size_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      __m128 a = _mm_loadu_ps(src + r * lds + c), b = _mm_loadu_ps(src + (r + 1) * lds + c);
      __m128 x = _mm_loadu_ps(src + (r + 2) * lds + c), y = _mm_loadu_ps(src + (r + 3) * lds + c);
      _MM_TRANSPOSE4_PS(a, b, x, y);
      _mm_storeu_ps(dst + c * ldd + r, a);
      _mm_storeu_ps(dst + (c + 1) * ldd + r, b);
      _mm_storeu_ps(dst + (c + 2) * ldd + r, x);
      _mm_storeu_ps(dst + (c + 3) * ldd + r, y);
    }
    for (; c < cols; c++)
      for (size_t i = r; i < r + 4; i++) dst[c * ldd + i] = src[i * lds + c];
  }
#endif
  for (; r < rows; r++)
    for (size_t c = 0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
}

/* Rows x k of a row-major matrix as a GEMM's packed A (sgemm.h: ceil(rows/mr) panels of k x mr,
   rows past `rows` zero; k <= TB, one k block of the driver), each panel by the transpose above
   instead of the GEMM's element-by-element packer: Q once per task, P once per key block. */
static void pack_rows(const float *a, size_t lda, size_t rows, size_t k, size_t mr,
                      float *restrict dst) {
  for (size_t i = 0; i < rows; i += mr, dst += k * mr) {
    size_t n = KILN__MIN(mr, rows - i);
    transpose(a + i * lda, lda, n, k, dst, mr);
    if (n < mr)
      for (size_t t = 0; t < k; t++)
        for (size_t r = n; r < mr; r++) dst[t * mr + r] = 0.0f;
  }
}

/* Per slot: Q's packed panels, the score tile, then K's transposed block, whose memory P's
   packed panels reuse once the score GEMM has read it; each a whole number of 64-byte lines. */
static size_t round16(size_t n) { return (n + 15) / 16 * 16; }

static size_t att_qpack_floats(kiln__isa isa, size_t D) {
  return round16(kiln__sgemm_pack_a_floats(isa, SB, D));
}

static size_t att_ppack_floats(kiln__isa isa) {
  return round16(kiln__sgemm_pack_a_floats(isa, SB, TB));
}

static size_t att_tasks(const kiln__att_geom *g) { return g->B * g->H * ((g->S + SB - 1) / SB); }

/* V's rows copied together when they lie apart (layout BSHD: H * Dv floats), where the P V
   product would read them in place from 128 rows on a few L1 sets. */
static bool att_v_copied(const kiln__att_geom *g) { return g->v.ld != g->Dv; }

/* With every key in one block (T <= TB, not causal: each query block reads all T keys) a slot's
   transposed K and copied V serve the next task when it is the same head's next query block, so
   P's panels get their own memory instead of reusing K's. */
static bool att_shares_kv(const kiln__att_geom *g, bool causal) { return g->T <= TB && !causal; }

/* Floats from a slot's transposed K block to what follows it: P's panels when they reuse its
   memory, else P's panels come first. */
static size_t att_kt_floats(kiln__isa isa, const kiln__att_geom *g, bool share) {
  size_t kt = round16(g->D * KT_LD);
  return share ? kt + att_ppack_floats(isa) : KILN__MAX(att_ppack_floats(isa), kt);
}

/* kv_ready: the slot holds this head's K block and V copy (the previous task's, att_shares_kv). */
static void att_task(const att_job *j, size_t task, float *mem, bool kv_ready) {
  size_t bh = task / j->s_blocks, s0 = task % j->s_blocks * SB;
  const kiln__att_geom *g = &j->g;
  size_t b = bh / g->H, h = bh % g->H, ns = KILN__MIN((size_t)SB, g->S - s0);
  size_t D = g->D, Dv = g->Dv, T = g->T, S = g->S;
  size_t ldq = g->q.ld, ldk = g->k.ld, ldv = g->v.ld, ldy = g->y.ld;
  kiln__isa isa = j->st->isa;
  const float *k = j->k + b * g->k.sb + h * g->k.sh, *v = j->v + b * g->v.sb + h * g->v.sh;
  float *y = j->y + b * g->y.sb + h * g->y.sh + s0 * ldy;
  float *sc = mem + j->qpack_floats, *kt = sc + SB * TB;
  float *pp = j->share_kv ? kt + round16(D * KT_LD) : kt;
  float *vb = att_v_copied(g) ? kt + att_kt_floats(isa, g, j->share_kv) : NULL;
  /* The microkernel's rows: floats for one row of k = 1 (0 when the ISA has no kernel, and
     the GEMM then packs P itself). */
  size_t mr = kiln__sgemm_pack_a_floats(isa, 1, 1);
  float run_max[SB], run_sum[SB];
  for (size_t r = 0; r < ns; r++) {
    run_max[r] = -INFINITY;
    run_sum[r] = 0.0f;
  }
  /* Causal: row s sees keys t < s + 1 + (T - S); the block's last row sees the most. */
  size_t t_end = T;
  if (j->causal) t_end = s0 + ns + T <= S ? 0 : KILN__MIN(T, s0 + ns + T - S);
  if (t_end == 0) { /* every key masked: 0 / 0, the NaN the unfused Softmax gives */
    for (size_t r = 0; r < ns; r++)
      for (size_t e = 0; e < Dv; e++) y[r * ldy + e] = NAN;
    return;
  }
  kiln__sgemm_packed pq = {.isa = isa, .is_a = true, .rows = ns, .k = D, .data = mem};
  const float *q = j->q + b * g->q.sb + h * g->q.sh + s0 * ldq;
  if (mr && D <= TB) pack_rows(q, ldq, ns, D, mr, mem);
  else kiln__sgemm_pack_a_into(NULL, isa, false, ns, D, q, ldq, mem, &pq);
  const float *mrow = NULL; /* the mask at (b, h, s0, 0) */
  if (j->mask) mrow = j->mask + (int64_t)b * j->ms[0] + (int64_t)h * j->ms[1] +
                      (int64_t)s0 * j->ms[2];
  bool mask_in_gemm = mrow && j->ms[3] == 1;
  for (size_t t0 = 0; t0 < t_end; t0 += TB) {
    size_t nt = KILN__MIN((size_t)TB, t_end - t0);
    if (!kv_ready) transpose(k + t0 * ldk, ldk, nt, D, kt, KT_LD);
    kiln__sgemm_args g = {.m = ns, .n = nt, .k = D, .pa = &pq, .b = kt, .ldb = KT_LD,
                          .b_in_place = true, .c = sc, .ldc = TB, .alpha = j->scale};
    if (mask_in_gemm) g.ep = (kiln__epilogue){.residual = mrow + t0, .ldr = (size_t)j->ms[2]};
    kiln__sgemm_run(NULL, isa, &g);
    for (size_t r = 0; r < ns; r++) {
      float *row = sc + r * TB;
      if (mrow && !mask_in_gemm) { /* a mask broadcast along T: one value per row */
        const float *m = mrow + (int64_t)r * j->ms[2] + (int64_t)t0 * j->ms[3];
        for (size_t t = 0; t < nt; t++) row[t] += m[(int64_t)t * j->ms[3]];
      }
      if (j->causal) { /* keys [0, lim) visible to row s */
        size_t s = s0 + r, lim = s + 1 + T <= S ? 0 : s + 1 + T - S;
        for (size_t t = lim > t0 ? lim - t0 : 0; t < nt; t++) row[t] = -INFINITY;
      }
      float old = run_max[r];
      float sum = j->st->v->softmax_step(row, nt, &run_max[r]);
      if (t0 == 0) {
        run_sum[r] = sum;
      } else if (run_max[r] != old) { /* rescale what earlier blocks added */
        float corr = old == -INFINITY ? 0.0f : expf(old - run_max[r]);
        run_sum[r] = run_sum[r] * corr + sum;
        for (size_t e = 0; e < Dv; e++) y[r * ldy + e] *= corr;
      } else {
        run_sum[r] += sum;
      }
    }
    /* The first block writes Y's rows, later ones add to them. */
    const float *vr = v + t0 * ldv;
    size_t ldb = ldv;
    if (vb) {
      if (!kv_ready)
        for (size_t t = 0; t < nt; t++) memcpy(vb + t * Dv, vr + t * ldv, Dv * sizeof *vb);
      vr = vb, ldb = Dv;
    }
    kiln__sgemm_args pv = {.m = ns, .n = Dv, .k = nt, .a = sc, .lda = TB, .b = vr,
                           .ldb = ldb, .b_in_place = true, .c = y, .ldc = ldy, .alpha = 1.0f,
                           .accumulate = t0 > 0};
    kiln__sgemm_packed ppk = {.isa = isa, .is_a = true, .rows = ns, .k = nt, .data = pp};
    if (mr) {
      pack_rows(sc, TB, ns, nt, mr, pp);
      pv.pa = &ppk;
    }
    kiln__sgemm_run(NULL, isa, &pv);
  }
  for (size_t r = 0; r < ns; r++) {
    float inv = 1.0f / run_sum[r]; /* every key masked: 1/0, and 0 * inf = NaN as unfused */
    for (size_t e = 0; e < Dv; e++) y[r * ldy + e] *= inv;
  }
}

/* Tasks [b, e) on thread `slot`'s scratch. */
static void att_slots(void *arg, size_t b, size_t e, size_t slot) {
  att_job *j = arg;
  float *mem = j->scratch + slot * j->slot_floats;
  size_t prev = SIZE_MAX; /* the head whose K and V the slot holds */
  for (size_t t = b; t < e; t++) {
    size_t bh = t / j->s_blocks;
    att_task(j, t, mem, j->share_kv && bh == prev);
    prev = bh;
  }
}

static size_t att_slot_floats(kiln__isa isa, const kiln__att_geom *g, bool share) {
  return att_qpack_floats(isa, g->D) + (size_t)SB * TB + att_kt_floats(isa, g, share) +
         (att_v_copied(g) ? (size_t)TB * g->Dv : 0);
}

/* Whether the fast kernel runs these inputs, and their geometry (else the reference runs them,
   and reports errors). */
static bool att_fast(const kiln__kctx *c, kiln__att_geom *g) {
  const kiln_tensor *q = c->in[0], *k = c->in[1], *v = c->in[2];
  const kiln_tensor *mask = c->n_in > 3 ? c->in[3] : NULL;
  kiln_error err = {0};
  return f32(q) && f32(k) && f32(v) && (!mask || f32(mask)) && (!mask || mask->rank <= 4) &&
         kiln__att_geom_of(c->node, q, k, v, g, &err) == KILN_OK;
}

/* Slots the scratch holds: one per task up to one per online CPU (the plan does not know the
   session's thread count; a pool of more threads than CPUs gains nothing here). */
static size_t att_slot_count(const kiln__att_geom *g, const vm_state *s) {
  return KILN__MIN(KILN__MIN((size_t)ATT_SLOTS_MAX, s->cpus), att_tasks(g));
}

static size_t scratch_attention(const kiln__kctx *c, void *state) {
  const vm_state *s = state;
  size_t ref = c->node->op->scratch ? c->node->op->scratch(c) : 0;
  kiln__att_geom g;
  if (!att_fast(c, &g)) return ref;
  bool share = att_shares_kv(&g, kiln__attr_int(c->node, "causal", 0) != 0);
  size_t fast = att_slot_count(&g, s) * att_slot_floats(s->isa, &g, share) * sizeof(float) + 64;
  return KILN__MAX(ref, fast);
}

static kiln_status exec_attention(kiln__kctx *c, void *state) {
  const vm_state *s = state;
  att_job j = {.st = s, .scale = kiln__attr_float(c->node, "scale", 1.0f),
               .causal = kiln__attr_int(c->node, "causal", 0) != 0};
  if (!att_fast(c, &j.g)) return ref_run(c);
  const kiln_tensor *mask = c->n_in > 3 ? c->in[3] : NULL;
  j.q = c->in[0]->data, j.k = c->in[1]->data, j.v = c->in[2]->data;
  j.mask = mask ? mask->data : NULL, j.y = c->out[0]->data;
  const kiln__att_geom *g = &j.g;
  if (mask) {
    int64_t sd[4] = {(int64_t)g->B, (int64_t)g->H, (int64_t)g->S, (int64_t)g->T};
    kiln__bcast_strides(mask, 4, sd, j.ms);
  }
  if (g->B * g->H * g->S == 0 || g->Dv == 0) return KILN_OK;
  j.qpack_floats = att_qpack_floats(s->isa, g->D);
  j.share_kv = att_shares_kv(g, j.causal);
  j.slot_floats = att_slot_floats(s->isa, g, j.share_kv);
  /* As many slots as the scratch holds (the count scratch() asked for). */
  size_t slots =
      c->scratch_bytes < 64 ? 0 : (c->scratch_bytes - 64) / sizeof(float) / j.slot_floats;
  if (slots == 0) return ref_run(c);
  j.scratch = (float *)(((uintptr_t)c->scratch + 63) & ~(uintptr_t)63);
  j.s_blocks = (g->S + SB - 1) / SB;
  j.tasks = att_tasks(g);
  double work = (double)g->B * g->H * g->S * g->T * (double)(g->D + g->Dv);
  struct kiln__pool *pool = kiln__pool_for(c->pool, work);
  /* A slot per thread, or one thread. */
  if (slots < (size_t)kiln__pool_threads(pool)) pool = NULL;
  kiln__parallel_for_slots(pool, j.tasks, att_slots, &j);
  return KILN_OK;
}

#define ROW(op, exec) {op, NULL, prepare_vm, release_vm, exec, NULL, "ai.kiln"}

const kiln__cpu_kernel kiln__cpu_fused_kernels[] = {
    ROW("LayerNorm", exec_layernorm),
    ROW("RMSNorm", exec_rmsnorm),
    ROW("Gelu", exec_gelu),
    {"Attention", NULL, prepare_vm, release_vm, exec_attention, scratch_attention, "ai.kiln"},
    {0},
};
