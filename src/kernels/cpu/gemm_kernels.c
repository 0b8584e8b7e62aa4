/* Optimized CPU kernels: GEMM-based ops (MatMul, Gemm, Conv and their fused forms FusedMatMul,
 * FusedGemm, FusedConv of domain ai.kiln) on the packed SGEMM of sgemm.h. A fused op's bias,
 * residual Z and activation ride in the SGEMM epilogue, so they cost no extra pass over memory
 * (except a FusedMatMul Z smaller than the output, added after the product).
 *
 * Constant weights (initializers) are packed once in prepare() for the ISA chosen there. A row's
 * supports() accepts what it can decide at load (attributes, initializer shapes); what is known
 * only at run time (dtypes of computed values, channel counts) is checked in execute(), which
 * hands anything else to the reference kernel. So scratch() asks for the larger of the two
 * kernels' needs. */
#include "core/threadpool.h"
#include "kernels/cpu/bgemm.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/conv_stem.h"
#include "kernels/cpu/sgemm.h"
#include "kernels/ref/gemm.h"

/* ---- shared helpers -------------------------------------------------------------------------- */

/* Packs input 1 at load when it is a constant 2-D float32 matrix (weights); leaves *packed false
   otherwise, and execute() packs per call. */
static kiln_status pack_const_b(const kiln__node *n, const kiln__graph *g, kiln__isa isa, bool tb,
                                kiln__sgemm_packed *pb, bool *packed, kiln_error *err) {
  const kiln_tensor *b = kiln__cpu_const_f32(kiln__cpu_input(n, g, 1));
  if (!b || b->rank != 2 || b->dims[0] <= 0 || b->dims[1] <= 0) return KILN_OK;
  size_t k = (size_t)b->dims[tb ? 1 : 0], nn = (size_t)b->dims[tb ? 0 : 1];
  kiln_status st = kiln__sgemm_pack_b(isa, tb, k, nn, b->data, (size_t)b->dims[1], pb, err);
  *packed = st == KILN_OK;
  return st;
}

static size_t ref_scratch(const kiln__kctx *c);

/* The opt-in bfloat16 product (bgemm.h): packs input 1 for it when KILN_BF16=1, the CPU has
   AVX512-BF16, B is a packed constant whose values are all bfloat16 (a bf16 file's weights) and
   the node has no transA or alpha. */
static kiln_status bf16_prepare(const kiln__node *n, const kiln__graph *g, bool ta, bool tb,
                                float alpha, bool packed, kiln__bgemm_packed *bb, bool *on,
                                kiln_error *err) {
  const kiln_tensor *b = kiln__cpu_const_f32(kiln__cpu_input(n, g, 1));
  if (!packed || !b || ta || alpha != 1.0f || !kiln__bgemm_wanted()) return KILN_OK;
  size_t k = (size_t)b->dims[tb ? 1 : 0], nn = (size_t)b->dims[tb ? 0 : 1];
  if (!kiln__bgemm_exact(b->data, k, nn, (size_t)b->dims[1], tb)) return KILN_OK;
  kiln_status st = kiln__bgemm_pack_b(b->data, k, nn, (size_t)b->dims[1], tb, bb, err);
  *on = st == KILN_OK;
  return st;
}

/* Scratch of a node whose A (any rank, rows of its last dim) may take the bfloat16 product. */
static size_t bf16_scratch(const kiln__kctx *c, bool on) {
  size_t ref = ref_scratch(c);
  const kiln_tensor *a = c->in[0];
  if (!on || a->rank < 1) return ref;
  size_t k = (size_t)a->dims[a->rank - 1], rows = k ? kiln_tensor_count(a) / k : 0;
  return KILN__MAX(ref, kiln__bgemm_scratch(rows, k));
}

static size_t ref_scratch(const kiln__kctx *c) {
  return c->node->op->scratch ? c->node->op->scratch(c) : 0;
}

/* The fused ops of domain ai.kiln (docs/FUSED_OPS.md) share these rows' code: the activation
   and its parameters are parsed at load into an epilogue template, whose bias and residual are
   filled per run. */

static bool fused_ok(const kiln__node *n) {
  kiln__act a;
  float p0, p1;
  return n->n_in <= 4 && kiln__act_from_node(n, &a, &p0, &p1);
}

static kiln_status epilogue_prepare(const kiln__node *n, kiln__epilogue *ep, kiln_error *err) {
  kiln__act_from_node(n, &ep->act, &ep->lo, &ep->hi);
  return kiln__vmath_select(&ep->vm, err);
}

/* An optional input: NULL when absent or not float32 (*ok then false). */
static const kiln_tensor *opt_in(const kiln__kctx *c, int i, bool *ok) {
  const kiln_tensor *t = i < c->n_in ? c->in[i] : NULL;
  if (t && t->dtype != KILN_DTYPE_FLOAT) *ok = false;
  return t;
}

/* An activation outside the microkernel's registers (kiln__act_is_post: Gelu, Sigmoid, Tanh...)
   over the whole output after the product, in chunks of GRAIN elements spread over the pool,
   rather than by the GEMM per 6x16 tile: there each call gets 16 floats a row, too few for the
   out-of-order core to overlap the polynomials' latency (Gelu's erf), and that ran at a third of
   the speed of one pass (bert_tiny's FFN, bench/RESULTS.md). Same values: the same vmath
   function on the same stored sums. */
#define ACT_GRAIN ((size_t)16384)

typedef struct act_job {
  const kiln__epilogue *ep;
  float *y;
  size_t n, tasks;
} act_job;

static void act_range(void *arg, size_t b, size_t e) {
  const act_job *j = arg;
  size_t lo = j->n * b / j->tasks, hi = j->n * e / j->tasks;
  kiln__act_apply(j->ep->vm, j->ep->act, j->ep->lo, j->ep->hi, j->y + lo, hi - lo);
}

static void act_after(struct kiln__pool *pool, const kiln__epilogue *ep, float *y, size_t n) {
  act_job j = {ep, y, n, KILN__MAX((size_t)1, (n + ACT_GRAIN - 1) / ACT_GRAIN)};
  kiln__parallel_for(kiln__pool_for(pool, (double)n), j.tasks, act_range, &j);
}

/* ---- MatMul, FusedMatMul --------------------------------------------------------------------- */

typedef struct matmul_state {
  kiln__isa isa;
  bool fused;
  bool ta, tb;            /* FusedMatMul's transA, transB */
  float alpha;
  kiln__epilogue ep;      /* the activation; bias and residual set per run */
  bool packed;            /* B is a 2-D initializer, packed */
  kiln__sgemm_packed pb;
  bool bf16;              /* KILN_BF16=1 and B all bfloat16 values: bgemm.h runs the product */
  kiln__bgemm_packed bb;
} matmul_state;

static bool matmul_supports(const kiln__node *n, const kiln__graph *g) {
  return n->n_in == 2 && kiln__cpu_maybe_float(kiln__cpu_input(n, g, 0)) && kiln__cpu_maybe_float(kiln__cpu_input(n, g, 1));
}

static bool fmatmul_supports(const kiln__node *n, const kiln__graph *g) {
  return fused_ok(n) && n->n_in >= 2 && kiln__cpu_maybe_float(kiln__cpu_input(n, g, 0)) &&
         kiln__cpu_maybe_float(kiln__cpu_input(n, g, 1));
}

static void matmul_release(void *state) {
  matmul_state *s = state;
  kiln__sgemm_packed_free(&s->pb);
  kiln__bgemm_packed_free(&s->bb);
  kiln__free(s);
}

static kiln_status matmul_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                  kiln_error *err) {
  matmul_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing %s", n->op_type);
  s->alpha = 1.0f;
  kiln_status st = kiln__isa_select(&s->isa, err);
  if (st == KILN_OK && kiln__cpu_kiln_domain(n)) {
    s->fused = true;
    s->ta = kiln__attr_int(n, "transA", 0) != 0;
    s->tb = kiln__attr_int(n, "transB", 0) != 0;
    s->alpha = kiln__attr_float(n, "alpha", 1.0f);
    st = epilogue_prepare(n, &s->ep, err);
  }
  if (st == KILN_OK) st = pack_const_b(n, g, s->isa, s->tb, &s->pb, &s->packed, err);
  if (st == KILN_OK)
    st = bf16_prepare(n, g, s->ta, s->tb, s->alpha, s->packed, &s->bb, &s->bf16, err);
  if (st != KILN_OK) {
    matmul_release(s);
    return st;
  }
  *state = s;
  return KILN_OK;
}

typedef struct matmul_batch {
  const matmul_state *st;
  const kiln__matmul_shape *s;
  const float *a, *b;
  float *y;
  const kiln__epilogue *ep;
  const float *z;         /* full-shape residual, or NULL */
} matmul_batch;

static void matmul_one(const matmul_batch *p, struct kiln__pool *pool, size_t i) {
  const kiln__matmul_shape *s = p->s;
  size_t ao, bo;
  kiln__matmul_offsets(s, i, &ao, &bo);
  kiln__sgemm_args g = {.m = s->m, .n = s->n, .k = s->k, .a = p->a + ao,
                        .lda = p->st->ta ? s->m : s->k, .trans_a = p->st->ta, .b = p->b + bo,
                        .ldb = p->st->tb ? s->k : s->n, .trans_b = p->st->tb,
                        .c = p->y + i * s->m * s->n, .ldc = s->n, .alpha = p->st->alpha,
                        .ep = *p->ep};
  if (p->z) {
    g.ep.residual = p->z + i * s->m * s->n;
    g.ep.ldr = s->n;
  }
  kiln__sgemm_run(pool, p->st->isa, &g);
}

/* Many small products (attention heads): one thread per matrix. */
static void matmul_batch_range(void *arg, size_t begin, size_t end) {
  for (size_t i = begin; i < end; i++) matmul_one(arg, NULL, i);
}

/* A shape-only view of an operand with its last two dims swapped when `trans`. */
static bool trans_view(const kiln_tensor *t, bool trans, kiln_tensor *v) {
  *v = *t;
  if (!trans) return true;
  if (t->rank < 2) return false;
  v->dims[t->rank - 2] = t->dims[t->rank - 1];
  v->dims[t->rank - 1] = t->dims[t->rank - 2];
  return true;
}

/* y += z (z broadcast to y's shape, numpy rules) then the activation, row by row: the path for a
   FusedMatMul residual smaller than the output (an attention mask). */
static void add_bcast_act(kiln_tensor *y, const kiln_tensor *z, const kiln__epilogue *ep) {
  int r = y->rank;
  size_t n = (size_t)y->dims[r - 1], rows = n ? kiln_tensor_count(y) / n : 0;
  int64_t zs[KILN_MAX_RANK], idx[KILN_MAX_RANK] = {0};
  kiln__bcast_strides(z, r, y->dims, zs);
  const float *Z = z->data;
  float *Y = y->data;
  for (size_t row = 0; row < rows; row++) {
    int64_t off = 0;
    for (int d = 0; d < r - 1; d++) off += idx[d] * zs[d];
    float *yr = Y + row * n;
    const float *zr = Z + off;
    if (zs[r - 1]) for (size_t j = 0; j < n; j++) yr[j] += zr[j];
    else for (size_t j = 0; j < n; j++) yr[j] += zr[0];
    kiln__act_apply(ep->vm, ep->act, ep->lo, ep->hi, yr, n);
    for (int d = r - 2; d >= 0; d--) {
      if (++idx[d] < y->dims[d]) break;
      idx[d] = 0;
    }
  }
}

static kiln_status matmul_execute(kiln__kctx *c, void *state) {
  const matmul_state *st = state;
  bool ok = c->in[0]->dtype == KILN_DTYPE_FLOAT && c->in[1]->dtype == KILN_DTYPE_FLOAT;
  const kiln_tensor *bias = st->fused ? opt_in(c, 2, &ok) : NULL;
  const kiln_tensor *z = st->fused ? opt_in(c, 3, &ok) : NULL;
  kiln_tensor av, bv;
  if (!ok || !trans_view(c->in[0], st->ta, &av) || !trans_view(c->in[1], st->tb, &bv))
    return c->node->op->run(c);
  kiln__matmul_shape s;
  if (kiln__matmul_shape_get(&av, &bv, &s, c->err) != KILN_OK) return c->node->op->run(c);
  if (bias && (bias->rank != 1 || (size_t)bias->dims[0] != s.n)) return c->node->op->run(c);
  if (s.batch == 0 || s.m == 0 || s.n == 0) return KILN_OK;
  kiln_tensor *y = c->out[0];
  kiln__epilogue ep = st->ep;
  ep.bias = bias ? bias->data : NULL;
  bool z_full = z && kiln_tensor_count(z) == kiln_tensor_count(y);
  if (z && !z_full) ep.act = KILN__ACT_NONE; /* applied after the broadcast add */
  matmul_batch p = {st, &s, c->in[0]->data, c->in[1]->data, y->data, &ep,
                    z_full ? z->data : NULL};
  /* B is one shared matrix (always so when packed) and A's matrices lie back to back: one tall
     product. */
  bool a_dense = true;
  for (int d = 0; d < s.batch_rank; d++)
    if (s.batch_dims[d] != 1 && s.a_bstride[d] == 0) a_dense = false;
  if (!st->ta && (s.batch == 1 || (!s.b_batched && a_dense))) {
    kiln__sgemm_args g = {.m = s.batch * s.m, .n = s.n, .k = s.k, .a = p.a, .lda = s.k,
                          .b = p.b, .ldb = st->tb ? s.k : s.n, .trans_b = st->tb,
                          .pb = st->packed ? &st->pb : NULL, .c = p.y, .ldc = s.n,
                          .alpha = st->alpha, .ep = ep};
    if (p.z) {
      g.ep.residual = p.z;
      g.ep.ldr = s.n;
    }
    bool post = kiln__act_is_post(g.ep.act);
    if (post) g.ep.act = KILN__ACT_NONE;
    if (st->bf16 && c->scratch_bytes >= kiln__bgemm_scratch(g.m, s.k))
      kiln__bgemm_run(c->pool, g.m, p.a, s.k, &st->bb, p.y, s.n, &g.ep, c->scratch);
    else kiln__sgemm_run(c->pool, st->isa, &g);
    if (post) act_after(c->pool, &ep, p.y, s.batch * s.m * s.n);
  } else if ((double)s.m * (double)s.n * (double)s.k < 262144.0) {
    kiln__parallel_for(c->pool, s.batch, matmul_batch_range, &p);
  } else {
    for (size_t i = 0; i < s.batch; i++) matmul_one(&p, c->pool, i);
  }
  if (z && !z_full) add_bcast_act(y, z, &st->ep);
  return KILN_OK;
}

static size_t matmul_scratch(const kiln__kctx *c, void *state) {
  return bf16_scratch(c, ((const matmul_state *)state)->bf16);
}

/* ---- Gemm, FusedGemm ------------------------------------------------------------------------- */

typedef struct gemm_state {
  kiln__isa isa;
  bool ta, tb;
  float alpha, beta;
  bool fused;
  kiln__epilogue ep;
  bool packed;
  kiln__sgemm_packed pb;
  bool bf16; /* the bfloat16 product (bgemm.h) */
  kiln__bgemm_packed bb;
} gemm_state;

static bool gemm_supports(const kiln__node *n, const kiln__graph *g) {
  if (n->n_in < 2 || n->n_in > (kiln__cpu_kiln_domain(n) ? 4 : 3)) return false;
  for (int i = 0; i < n->n_in; i++) {
    const kiln__value *v = kiln__cpu_input(n, g, i);
    if ((v || i < 2) && !kiln__cpu_maybe_float(v)) return false;
  }
  return true;
}

static bool fgemm_supports(const kiln__node *n, const kiln__graph *g) {
  return fused_ok(n) && gemm_supports(n, g);
}

static void gemm_release(void *state) {
  gemm_state *s = state;
  kiln__sgemm_packed_free(&s->pb);
  kiln__bgemm_packed_free(&s->bb);
  kiln__free(s);
}

static kiln_status gemm_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                kiln_error *err) {
  gemm_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing %s", n->op_type);
  s->ta = kiln__attr_int(n, "transA", 0) != 0;
  s->tb = kiln__attr_int(n, "transB", 0) != 0;
  s->alpha = kiln__attr_float(n, "alpha", 1.0f);
  s->beta = kiln__attr_float(n, "beta", 1.0f);
  kiln_status st = kiln__isa_select(&s->isa, err);
  if (st == KILN_OK && kiln__cpu_kiln_domain(n)) {
    s->fused = true;
    st = epilogue_prepare(n, &s->ep, err);
  }
  if (st == KILN_OK) st = pack_const_b(n, g, s->isa, s->tb, &s->pb, &s->packed, err);
  if (st == KILN_OK)
    st = bf16_prepare(n, g, s->ta, s->tb, s->alpha, s->packed, &s->bb, &s->bf16, err);
  if (st != KILN_OK) {
    gemm_release(s);
    return st;
  }
  *state = s;
  return KILN_OK;
}

static kiln_status gemm_execute(kiln__kctx *c, void *state) {
  const gemm_state *st = state;
  bool ok = true;
  const kiln_tensor *a = c->in[0], *b = c->in[1], *cc = opt_in(c, 2, &ok);
  const kiln_tensor *z = st->fused ? opt_in(c, 3, &ok) : NULL;
  if (!ok || a->dtype != KILN_DTYPE_FLOAT || b->dtype != KILN_DTYPE_FLOAT || a->rank != 2 ||
      b->rank != 2 || (cc && cc->rank > 2))
    return c->node->op->run(c);
  size_t m = (size_t)a->dims[st->ta ? 1 : 0], k = (size_t)a->dims[st->ta ? 0 : 1];
  size_t n = (size_t)b->dims[st->tb ? 0 : 1];
  if ((size_t)b->dims[st->tb ? 1 : 0] != k) return c->node->op->run(c); /* it reports the error */
  if (z && (z->rank != 2 || (size_t)z->dims[0] != m || (size_t)z->dims[1] != n))
    return c->node->op->run(c);
  if (m == 0 || n == 0) return KILN_OK;
  float *y = c->out[0]->data;
  kiln__sgemm_args g = {.m = m, .n = n, .k = k, .a = a->data, .lda = st->ta ? m : k,
                        .trans_a = st->ta, .b = b->data, .ldb = st->tb ? k : n,
                        .trans_b = st->tb, .pb = st->packed ? &st->pb : NULL, .c = y, .ldc = n,
                        .alpha = st->alpha, .ep = st->ep};
  if (cc && st->beta != 0.0f) {
    /* C's shape as m x n with broadcast: d0 rows, d1 columns. */
    size_t d0 = cc->rank == 2 ? (size_t)cc->dims[0] : 1;
    size_t d1 = cc->rank >= 1 ? (size_t)cc->dims[cc->rank - 1] : 1;
    if ((d0 != 1 && d0 != m) || (d1 != 1 && d1 != n)) return c->node->op->run(c);
    const float *cd = cc->data;
    if (st->beta == 1.0f && d0 == 1 && d1 == n) {
      g.ep.bias = cd;
    } else if (st->beta == 1.0f && d0 == m && d1 == 1) {
      g.ep.bias = cd;
      g.ep.bias_per_row = true;
    } else if (st->beta == 1.0f && d0 == m && d1 == n && !z) {
      g.ep.residual = cd;
      g.ep.ldr = n;
    } else {
      size_t si = d0 == 1 ? 0 : d1, sj = d1 == 1 ? 0 : 1;
      for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) y[i * n + j] = st->beta * cd[i * si + j * sj];
      g.accumulate = true;
    }
  }
  if (z) {
    g.ep.residual = z->data;
    g.ep.ldr = n;
  }
  bool post = kiln__act_is_post(g.ep.act);
  if (post) g.ep.act = KILN__ACT_NONE;
  if (st->bf16 && !g.accumulate && !g.ep.bias_per_row &&
      c->scratch_bytes >= kiln__bgemm_scratch(m, k))
    kiln__bgemm_run(c->pool, m, a->data, k, &st->bb, y, n, &g.ep, c->scratch);
  else kiln__sgemm_run(c->pool, st->isa, &g);
  if (post) act_after(c->pool, &st->ep, y, m * n);
  return KILN_OK;
}

static size_t gemm_scratch(const kiln__kctx *c, void *state) {
  return bf16_scratch(c, ((const gemm_state *)state)->bf16);
}

/* ---- Conv ------------------------------------------------------------------------------------ */

/* Conv is a GEMM: y[m x p] = w[m x kk] * cols[kk x p], with cols the im2col matrix of the input.
   The weights are packed at load; cols is never built: the GEMM asks conv_pack_b for each
   kc x nc block of it in its panel layout, read straight from the input (implicit im2col).
   Before, im2col wrote a column buffer that the GEMM then copied again into panels: two passes
   over kk x p floats per conv, ~14% of ResNet-50's time in memcpy and im2col. */

typedef struct conv_state {
  kiln__isa isa;
  kiln__conv2d cv;
  bool fused;                           /* FusedConv: Z input and the epilogue's activation */
  kiln__epilogue ep;
  kiln__sgemm_packed *pw;               /* one packed mg x kk weight matrix per group */
} conv_state;

/* Parses everything the load fixes; false for what this kernel does not run. */
static bool conv_parse(const kiln__node *n, const kiln__graph *g, conv_state *s) {
  const kiln_tensor *w = kiln__cpu_const_f32(kiln__cpu_input(n, g, 1));
  if (n->n_in < 2 || n->n_in > (kiln__cpu_kiln_domain(n) ? 4 : 3) || !kiln__cpu_maybe_float(kiln__cpu_input(n, g, 0)) ||
      !w)
    return false;
  const kiln__value *b = kiln__cpu_input(n, g, 2), *z = kiln__cpu_input(n, g, 3);
  if ((b && !kiln__cpu_maybe_float(b)) || (z && !kiln__cpu_maybe_float(z))) return false;
  if (!kiln__cpu_conv2d_parse(n, w, &s->cv)) return false;
  return !(s->cv.groups > 1 && s->cv.cg == 1); /* depthwise: conv_dw.c or the reference */
}

static bool conv_supports(const kiln__node *n, const kiln__graph *g) {
  conv_state s;
  return conv_parse(n, g, &s);
}

static bool fconv_supports(const kiln__node *n, const kiln__graph *g) {
  return fused_ok(n) && conv_supports(n, g);
}

static void conv_release(void *state) {
  conv_state *s = state;
  if (s->pw)
    for (size_t i = 0; i < s->cv.groups; i++) kiln__sgemm_packed_free(&s->pw[i]);
  kiln__free(s->pw);
  kiln__free(s);
}

static kiln_status conv_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                kiln_error *err) {
  conv_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing Conv");
  conv_parse(n, g, s);
  kiln_status st = kiln__isa_select(&s->isa, err);
  if (st == KILN_OK && kiln__cpu_kiln_domain(n)) {
    s->fused = true;
    st = epilogue_prepare(n, &s->ep, err);
  }
  if (st == KILN_OK && !(s->pw = kiln__calloc(s->cv.groups, sizeof *s->pw)))
    st = kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing Conv");
  const float *w = kiln__cpu_const_f32(kiln__cpu_input(n, g, 1))->data;
  for (size_t i = 0; st == KILN_OK && i < s->cv.groups; i++)
    st = kiln__sgemm_pack_a(s->isa, false, s->cv.mg, s->cv.kk, w + i * s->cv.mg * s->cv.kk, s->cv.kk, &s->pw[i],
                            err);
  if (st != KILN_OK) {
    conv_release(s);
    return st;
  }
  *state = s;
  return KILN_OK;
}

/* The run-time geometry of one call. */
typedef struct conv_geom {
  size_t n, c, h, w, oh, ow, p; /* p = oh * ow */
  int64_t pt, pl;               /* padding before, top and left */
  bool pointwise;               /* 1x1, stride 1, no padding: the input is the GEMM's B */
} conv_geom;

/* False when the shapes are not the ones this kernel handles (the reference kernel then runs and
   reports any error). Output dims come from shape inference. */
static bool conv_geom_get(const kiln__kctx *c, const conv_state *s, conv_geom *cg) {
  const kiln_tensor *x = c->in[0], *w = c->in[1], *y = c->out[0],
                    *b = c->n_in > 2 ? c->in[2] : NULL;
  if (x->dtype != KILN_DTYPE_FLOAT || w->dtype != KILN_DTYPE_FLOAT || x->rank != 4 ||
      y->rank != 4 || (size_t)x->dims[1] != s->cv.cg * s->cv.groups || (size_t)y->dims[1] != s->cv.m)
    return false;
  if (b && (b->dtype != KILN_DTYPE_FLOAT || b->rank != 1 || (size_t)b->dims[0] != s->cv.m))
    return false;
  cg->n = (size_t)x->dims[0];
  cg->c = (size_t)x->dims[1];
  cg->h = (size_t)x->dims[2];
  cg->w = (size_t)x->dims[3];
  cg->oh = (size_t)y->dims[2];
  cg->ow = (size_t)y->dims[3];
  cg->p = cg->oh * cg->ow;
  kiln__cpu_conv2d_pads(&s->cv, cg->h, cg->w, cg->oh, cg->ow, &cg->pt, &cg->pl, &cg->pointwise);
  return true;
}

/* Output planes of at most this many positions get room for their B packed whole: with two
   threads the GEMM then packs it once instead of once per row tile (kiln__sgemm_args.b_scratch);
   wider planes give every thread column tiles of its own. */
#define SHARED_B_MAX_P 640

static size_t shared_b_floats(const conv_state *s, size_t p) {
  return p <= SHARED_B_MAX_P ? kiln__sgemm_pb_floats(kiln__sgemm_nr(s->isa), s->cv.kk, p) : 0;
}

static size_t conv_scratch(const kiln__kctx *c, void *state) {
  const conv_state *s = state;
  size_t ref = ref_scratch(c); /* the fallback's; implicit im2col needs none */
  conv_geom cg;
  if (!s || !conv_geom_get(c, s, &cg)) return ref;
  return KILN__MAX(ref, shared_b_floats(s, cg.p) * sizeof(float));
}

typedef struct conv_pack_ctx {
  const conv_state *s;
  const conv_geom *g;
  const float *x; /* the group's cg input planes */
} conv_pack_ctx;

/* d[t] = x[t * sw] for t < n: a strided conv's columns (stride 2 deinterleaved with SSE). */
KILN__NO_LIBCALL_LOOPS static inline void gather_floats(float *restrict d, const float *x,
                                                        int64_t sw, size_t n) {
  size_t t = 0;
#if defined(__SSE2__)
  if (sw == 2) /* each step reads x[2t .. 2t+7]; the last needed is x[2n-2], so stop short */
    for (; t + 5 <= n; t += 4) {
      __m128 lo = _mm_loadu_ps(x + 2 * t), hi = _mm_loadu_ps(x + 2 * t + 4);
      _mm_storeu_ps(d + t, _mm_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)));
    }
#endif
  for (; t < n; t++) d[t] = x[(int64_t)t * sw];
}

/* Columns [t0, t1) of a panel row come from one output row: copy what lies inside the input row
   and zero the padding either side. */
KILN__NO_LIBCALL_LOOPS static inline void pack_run(float *restrict d, const float *xrow, int64_t first, int64_t sw,
                            int64_t w, size_t len) {
  int64_t lo, hi, n = (int64_t)len;
  if (sw == 1) {
    lo = first >= 0 ? 0 : -first;
    hi = w - first;
  } else {
    lo = first >= 0 ? 0 : (-first + sw - 1) / sw;
    hi = first >= w ? 0 : (w - first + sw - 1) / sw;
  }
  lo = KILN__MIN(lo, n);
  hi = KILN__MAX(lo, KILN__MIN(hi, n));
  kiln__zero_floats(d, (size_t)lo);
  if (sw == 1) kiln__copy_floats(d + lo, xrow + first + lo, (size_t)(hi - lo));
  else gather_floats(d + lo, xrow + first + lo * sw, sw, (size_t)(hi - lo));
  kiln__zero_floats(d + hi, (size_t)(n - hi));
}

/* kiln__sgemm_pack_fn: rows p0..p0+kc of cols are (input channel, ky, kx) triples, columns
   j0..j0+nc output positions. The block's columns are first cut into runs that stay inside one
   panel and one output row (usually one run per panel); then each row of cols is written run by
   run, so the input is read in order (row-major, a row's runs are adjacent in the input) while
   the writes jump between panels that sit in L1/L2. A run fully inside the input row at stride 1
   is a plain copy. */
KILN__NO_LIBCALL_LOOPS static void conv_pack_b(const void *ctx, size_t nr, size_t p0, size_t kc,
                                               size_t j0, size_t nc, float *restrict dst) {
  const conv_pack_ctx *cp = ctx;
  const conv_state *s = cp->s;
  const conv_geom *g = cp->g;
  const int64_t h = (int64_t)g->h, w = (int64_t)g->w, sw = s->cv.sw, sh = s->cv.sh;
  const size_t khw = s->cv.kh * s->cv.kw, plane = g->h * g->w;
  enum { RUNS_MAX = 512 }; /* >= any GEMM's NC: a run holds at least one column */
  struct { size_t doff, len; int64_t oy, ox; } run[RUNS_MAX];
  size_t nrun = 0, npan = (nc + nr - 1) / nr;
  for (size_t jp = 0; jp < nc; jp += nr) {
    size_t cols = KILN__MIN(nr, nc - jp), q = j0 + jp, doff = jp * kc;
    for (size_t oy = q / g->ow, ox = q % g->ow, left = cols; left; oy++, ox = 0) {
      size_t len = KILN__MIN(g->ow - ox, left);
      run[nrun].doff = doff, run[nrun].len = len;
      run[nrun].oy = (int64_t)oy * sh - g->pt, run[nrun].ox = (int64_t)ox * sw - g->pl;
      nrun++;
      doff += len;
      left -= len;
    }
  }
  size_t tail = npan * nr - nc; /* zero columns of the last panel */
  float *last = dst + (npan - 1) * kc * nr + (nr - tail);
  size_t ci = p0 / khw, ky = p0 % khw / s->cv.kw, kx = p0 % s->cv.kw;
  for (size_t p = 0; p < kc; p++) {
    const float *xp = cp->x + ci * plane;
    const int64_t dx = (int64_t)kx * s->cv.dw, dy = (int64_t)ky * s->cv.dh;
    float *restrict d = dst + p * nr;
    for (size_t r = 0; r < nrun; r++) {
      int64_t iy = run[r].oy + dy, first = run[r].ox + dx;
      size_t len = run[r].len;
      float *dr = d + run[r].doff;
      if (iy < 0 || iy >= h) kiln__zero_floats(dr, len);
      else if (first >= 0 && first + ((int64_t)len - 1) * sw < w) { /* inside the row */
#ifdef KILN__HAVE_ROW_AVX
        /* a whole panel row of the AVX2/AVX-512 kernels (nr >= 16: the CPU has AVX2) */
        if (len == nr && nr >= 16 && sw <= 2) {
          if (sw == 1) kiln__copy_row_avx(dr, xp + iy * w + first, nr);
          else
            for (size_t q = 0; q < nr; q += 16)
              kiln__gather16_s2_avx2(dr + q, xp + iy * w + first + 2 * (int64_t)q);
          continue;
        }
#endif
        sw == 1 ? kiln__copy_floats(dr, xp + iy * w + first, len)
                : gather_floats(dr, xp + iy * w + first, sw, len);
      }
      else pack_run(dr, xp + iy * w, first, sw, w, len);
    }
    if (tail) kiln__zero_floats(last + p * nr, tail);
    if (++kx == s->cv.kw) {
      kx = 0;
      if (++ky == s->cv.kh) ky = 0, ci++;
    }
  }
}

/* The direct stem kernel (conv_stem.h) instead of im2col + GEMM: AVX-512, one group of at most
   4 input channels, no dilation, the same stride both ways, no residual, and an activation it
   applies in registers. */
static bool stem_direct(const conv_state *s, const conv_geom *cg, const float *z) {
  kiln__act act = s->fused ? s->ep.act : KILN__ACT_NONE;
  return s->isa == KILN__ISA_AVX512 && s->cv.groups == 1 && s->cv.dh == 1 && s->cv.dw == 1 &&
         s->cv.sh == s->cv.sw && !z &&
         (act == KILN__ACT_NONE || act == KILN__ACT_RELU || act == KILN__ACT_CLIP) &&
         kiln__stem_fits(cg->c, s->cv.kh, s->cv.kw, (size_t)s->cv.sw, cg->ow, cg->pt, cg->pl);
}

static kiln_status conv_execute(kiln__kctx *c, void *state) {
  const conv_state *s = state;
  conv_geom cg;
  if (!conv_geom_get(c, s, &cg)) return c->node->op->run(c);
  if (cg.n == 0 || cg.p == 0) return KILN_OK;
  const float *x = c->in[0]->data, *bias = c->n_in > 2 && c->in[2] ? c->in[2]->data : NULL;
  bool ok = true;
  const kiln_tensor *zt = s->fused ? opt_in(c, 3, &ok) : NULL;
  if (!ok || (zt && kiln_tensor_count(zt) != kiln_tensor_count(c->out[0])))
    return c->node->op->run(c);
  const float *z = zt ? zt->data : NULL;
  float *y = c->out[0]->data;
  if (stem_direct(s, &cg, z)) {
    kiln__stem_args sa = {x, c->in[1]->data, bias, y, cg.n, cg.c, cg.h, cg.w, s->cv.m, cg.oh,
                          cg.ow, s->cv.kh, s->cv.kw, (size_t)s->cv.sw, cg.pt, cg.pl,
                          s->fused ? s->ep.act : KILN__ACT_NONE, s->ep.lo, s->ep.hi};
    kiln__conv_stem_avx512(c->pool, &sa);
    return KILN_OK;
  }
  for (size_t b = 0; b < cg.n; b++)
    for (size_t gi = 0; gi < s->cv.groups; gi++) {
      const float *xg = x + (b * cg.c + gi * s->cv.cg) * cg.h * cg.w;
      size_t yoff = (b * s->cv.m + gi * s->cv.mg) * cg.p;
      kiln__sgemm_args g = {.m = s->cv.mg, .n = cg.p, .k = s->cv.kk, .pa = &s->pw[gi],
                            .c = y + yoff, .ldc = cg.p, .alpha = 1.0f, .ep = s->ep};
      g.ep.bias = bias ? bias + gi * s->cv.mg : NULL;
      g.ep.bias_per_row = true;
      g.ep.residual = z ? z + yoff : NULL;
      g.ep.ldr = cg.p;
      conv_pack_ctx pc = {s, &cg, xg};
      if (cg.pointwise) {
        g.b = xg; /* the input planes are cols already: read in place */
        g.ldb = cg.p;
        g.b_in_place = true;
      } else {
        g.pack_b = conv_pack_b;
        g.pack_b_ctx = &pc;
      }
      if (c->scratch && shared_b_floats(s, cg.p) &&
          c->scratch_bytes >= shared_b_floats(s, cg.p) * sizeof(float)) {
        g.b_scratch = c->scratch;
        g.b_scratch_floats = c->scratch_bytes / sizeof(float);
      }
      kiln__sgemm_run(c->pool, s->isa, &g);
    }
  return KILN_OK;
}

const kiln__cpu_kernel kiln__cpu_gemm_kernels[] = {
    {"MatMul", matmul_supports, matmul_prepare, matmul_release, matmul_execute, matmul_scratch},
    {"Gemm", gemm_supports, gemm_prepare, gemm_release, gemm_execute, gemm_scratch},
    {"Conv", conv_supports, conv_prepare, conv_release, conv_execute, conv_scratch},
    {"FusedMatMul", fmatmul_supports, matmul_prepare, matmul_release, matmul_execute,
     matmul_scratch, "ai.kiln"},
    {"FusedGemm", fgemm_supports, gemm_prepare, gemm_release, gemm_execute, gemm_scratch,
     "ai.kiln"},
    {"FusedConv", fconv_supports, conv_prepare, conv_release, conv_execute, conv_scratch,
     "ai.kiln"},
    {0},
};
