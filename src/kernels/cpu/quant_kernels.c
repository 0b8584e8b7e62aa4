/* Optimized CPU kernels for the quantization ops: QuantizeLinear, DequantizeLinear,
 * DynamicQuantizeLinear (vectorized conversions), MatMulInteger and QLinearMatMul (the integer
 * GEMM of qgemm.h), ConvInteger and QLinearConv (im2col columns + the integer GEMM; 1x1
 * convolutions read the input directly; with byte-format weights the columns are packed
 * straight from the input, kiln__qpack_gather, with no im2col buffer).
 *
 * Every row computes exactly what the reference kernel (src/kernels/ref/quant.c) computes, bit
 * for bit: integer sums are exact, and requantization performs the same float operations in the
 * same order. Constant weights are packed once in prepare(); execute() checks what is known only
 * at run time (dtypes, parameter shapes) and hands anything it does not cover (per-row activation
 * zero points, batched B, depthwise or non-2-D convolutions, other attributes) and every
 * malformed input to the reference kernel, which runs or reports the error. */
#include <math.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/qconv_dw.h"
#include "kernels/cpu/qgemm.h"
#include "kernels/ref/gemm.h"

static size_t ref_scratch(const kiln__kctx *c) {
  return c->node->op->scratch ? c->node->op->scratch(c) : 0;
}

static const kiln_tensor *opt(const kiln__kctx *c, int i) { return i < c->n_in ? c->in[i] : NULL; }

static bool is_q8(kiln_dtype t) { return t == KILN_DTYPE_UINT8 || t == KILN_DTYPE_INT8; }

/* A per-tensor 8-bit zero point or one per `n` channels (1-D); false for anything else. */
static bool zp_get(const kiln_tensor *t, size_t n, kiln__qzp *z) {
  memset(z, 0, sizeof *z);
  if (!t) return true;
  size_t cnt = kiln_tensor_count(t);
  if (!is_q8(t->dtype) || !(cnt == 1 || (t->rank == 1 && cnt == n))) return false;
  z->p = t->data;
  z->is_signed = t->dtype == KILN_DTYPE_INT8;
  z->n = cnt;
  return true;
}

static bool scalar_f32(const kiln_tensor *t, float *v) {
  if (!t || t->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(t) != 1) return false;
  *v = *(const float *)t->data;
  return true;
}

static size_t align64(size_t x) { return (x + 63) / 64 * 64; }

typedef struct qstate {
  kiln__qisa isa;
  bool packed;            /* constant weights packed at load */
  kiln__qpacked w;
} qstate;

static void qstate_release(void *state) {
  qstate *s = state;
  kiln__qpacked_free(&s->w);
  kiln__free(s);
}

static kiln_status qstate_new(const kiln__node *n, void **state, qstate **out, kiln_error *err) {
  qstate *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing %s", n->op_type);
  kiln_status st = kiln__qisa_select(&s->isa, err);
  if (st != KILN_OK) {
    kiln__free(s);
    return st;
  }
  *state = s;
  *out = s;
  return KILN_OK;
}

/* ---- QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear --------------------------------- */

static bool conv_supports_float_in(const kiln__node *n, const kiln__graph *g) {
  return kiln__cpu_maybe_float(kiln__cpu_input(n, g, 0));
}

static bool any_supports(const kiln__node *n, const kiln__graph *g) { return true; }

static kiln_status simple_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                  kiln_error *err) {
  qstate *s = NULL;
  return qstate_new(n, state, &s, err);
}

/* x viewed as outer x ch x inner for a per-tensor (ch 1) or per-axis scale; false when the
   parameters are not the plain float32 / 8-bit forms (the reference kernel decides then). */
static bool q_geometry(const kiln__kctx *c, const kiln_tensor *x, size_t *outer, size_t *ch,
                       size_t *inner) {
  const kiln_tensor *scale = c->in[1], *zp = opt(c, 2);
  if (scale->dtype != KILN_DTYPE_FLOAT || kiln__attr_find(c->node, "block_size") ||
      kiln__attr_find(c->node, "output_dtype"))
    return false;
  size_t sc = kiln_tensor_count(scale), total = kiln_tensor_count(x);
  if (zp && (!is_q8(zp->dtype) || kiln_tensor_count(zp) != sc)) return false;
  *outer = 1;
  *ch = 1;
  *inner = total;
  if (sc == 1) return true;
  int axis;
  if (scale->rank != 1 || !kiln__norm_axis(kiln__attr_int(c->node, "axis", 1), x->rank, &axis) ||
      (int64_t)sc != x->dims[axis])
    return false;
  *ch = sc;
  *inner = 1;
  for (int i = 0; i < axis; i++) *outer *= (size_t)x->dims[i];
  for (int i = axis + 1; i < x->rank; i++) *inner *= (size_t)x->dims[i];
  return true;
}

static int32_t zp_val(const kiln_tensor *zp, size_t i) {
  if (!zp) return 0;
  return zp->dtype == KILN_DTYPE_INT8 ? ((const int8_t *)zp->data)[i]
                                      : ((const uint8_t *)zp->data)[i];
}

/* QuantizeLinear / DequantizeLinear over the pool: the flat index range split in tasks of about
   QGRAIN elements, each walking the (outer, channel) segments it covers (serial, they took 6-9%
   of bert_tiny int8 at two threads). */
#define QGRAIN ((size_t)16384)

typedef struct qdq_job { /* one QuantizeLinear or DequantizeLinear */
  kiln__qisa isa;
  bool quant, sgn;
  const void *x;
  void *y;
  const float *sc;
  const kiln_tensor *zp;
  size_t ch, inner, n, tasks;
} qdq_job;

static void qdq_range(void *arg, size_t b, size_t e) {
  const qdq_job *j = arg;
  size_t lo = j->n * b / j->tasks, hi = j->n * e / j->tasks;
  while (lo < hi) {
    size_t seg = lo / j->inner, end = KILN__MIN(hi, (seg + 1) * j->inner), k = seg % j->ch;
    if (j->quant)
      kiln__q_quantize(j->isa, (const float *)j->x + lo, end - lo, j->sc[k], zp_val(j->zp, k),
                       j->sgn, (uint8_t *)j->y + lo);
    else
      kiln__q_dequantize(j->isa, (const uint8_t *)j->x + lo, j->sgn, end - lo,
                         zp_val(j->zp, k), j->sc[k], (float *)j->y + lo);
    lo = end;
  }
}

static void qdq_run(kiln__kctx *c, qdq_job *j) {
  if (j->n == 0) return;
  j->tasks = KILN__MAX((size_t)1, KILN__MIN((j->n + QGRAIN - 1) / QGRAIN, (size_t)64));
  kiln__parallel_for(c->pool, j->tasks, qdq_range, j);
}

static kiln_status quantize_execute(kiln__kctx *c, void *state) {
  const qstate *s = state;
  const kiln_tensor *x = c->in[0], *zp = opt(c, 2);
  kiln_tensor *y = c->out[0];
  size_t outer, ch, inner;
  if (x->dtype != KILN_DTYPE_FLOAT || !is_q8(y->dtype) || (zp && zp->dtype != y->dtype) ||
      !q_geometry(c, x, &outer, &ch, &inner))
    return c->node->op->run(c);
  qdq_job j = {s->isa, true, y->dtype == KILN_DTYPE_INT8, x->data, y->data, c->in[1]->data,
                 zp, ch, inner, outer * ch * inner, 0};
  qdq_run(c, &j);
  return KILN_OK;
}

static kiln_status dequantize_execute(kiln__kctx *c, void *state) {
  const qstate *s = state;
  const kiln_tensor *x = c->in[0], *zp = opt(c, 2);
  kiln_tensor *y = c->out[0];
  size_t outer, ch, inner;
  if (!is_q8(x->dtype) || y->dtype != KILN_DTYPE_FLOAT || (zp && zp->dtype != x->dtype) ||
      !q_geometry(c, x, &outer, &ch, &inner))
    return c->node->op->run(c);
  qdq_job j = {s->isa, false, x->dtype == KILN_DTYPE_INT8, x->data, y->data, c->in[1]->data,
                 zp, ch, inner, outer * ch * inner, 0};
  qdq_run(c, &j);
  return KILN_OK;
}

static kiln_status dynquant_execute(kiln__kctx *c, void *state) {
  const qstate *s = state;
  const kiln_tensor *x = c->in[0];
  if (x->dtype != KILN_DTYPE_FLOAT) return c->node->op->run(c);
  size_t n = kiln_tensor_count(x);
  float mn, mx;
  kiln__q_minmax(s->isa, x->data, n, &mn, &mx);
  /* The reference kernel's parameter arithmetic, verbatim. */
  float scale = (mx - mn) / 255.0f;
  int32_t zp = 0;
  if (scale > 0.0f && isfinite(scale)) {
    float r = rintf((0.0f - mn) / scale);
    if (r != r) r = 0.0f;
    double q = (double)r;
    zp = q < 0 ? 0 : q > 255 ? 255 : (int32_t)q;
  }
  if (scale > 0.0f) kiln__q_quantize(s->isa, x->data, n, scale, zp, false, c->out[0]->data);
  else memset(c->out[0]->data, zp, n);
  if (c->n_out > 1 && c->out[1]) *(float *)c->out[1]->data = scale;
  if (c->n_out > 2 && c->out[2]) *(uint8_t *)c->out[2]->data = (uint8_t)zp;
  return KILN_OK;
}

/* ai.kiln DynamicQuantizeRows: each row's scale from its vector min and max (with 0, NaN
   ignored: max |x| = max(-min, max)), then the vector quantization; the reference's operations
   (ref/quant.c run_dqrows). */
typedef struct dqrows_job {
  kiln__qisa isa;
  const float *x;
  size_t k;
  float qmax, min_scale;
  int32_t zp;   /* 0: int8 out, 128: uint8 */
  uint8_t *y;
  float *scale;
} dqrows_job;

static void dqrows_range(void *arg, size_t begin, size_t end) {
  const dqrows_job *j = arg;
  for (size_t r = begin; r < end; r++) {
    const float *xr = j->x + r * j->k;
    float mn, mx;
    kiln__q_minmax(j->isa, xr, j->k, &mn, &mx);
    float sc = (-mn > mx ? -mn : mx) / j->qmax;
    if (!(sc > j->min_scale)) sc = j->min_scale;
    if (j->scale) j->scale[r] = sc;
    kiln__q_quantize(j->isa, xr, j->k, sc, j->zp, j->zp == 0, j->y + r * j->k);
  }
}

static kiln_status dqrows_execute(kiln__kctx *c, void *state) {
  const qstate *s = state;
  const kiln_tensor *x = c->in[0];
  float qmax = kiln__attr_float(c->node, "qmax", 127.0f);
  float min_scale = kiln__attr_float(c->node, "min_scale", 0.0f);
  /* the reference reports what is not covered */
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank < 1 || !(qmax > 0.0f && qmax <= 127.0f) ||
      !(min_scale > 0.0f && isfinite(min_scale)))
    return c->node->op->run(c);
  size_t k = (size_t)x->dims[x->rank - 1], rows = 1;
  for (int d = 0; d < x->rank - 1; d++) rows *= (size_t)x->dims[d];
  int32_t zp = kiln__attr_int(c->node, "zero_point", 0) == 128 ? 128 : 0;
  if (c->out[0]->dtype != (zp ? KILN_DTYPE_UINT8 : KILN_DTYPE_INT8)) return c->node->op->run(c);
  dqrows_job j = {s->isa, x->data, k, qmax, min_scale, zp, c->out[0]->data,
                  c->n_out > 1 && c->out[1] ? c->out[1]->data : NULL};
  kiln__parallel_for(kiln__pool_for(c->pool, (double)rows * (double)k * 4), rows, dqrows_range,
                     &j);
  return KILN_OK;
}

/* ---- MatMulInteger, QLinearMatMul ------------------------------------------------------------ */

/* Inputs of A and B and their zero points: MatMulInteger (a, b, a_zp, b_zp) or QLinearMatMul
   (a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp). */
typedef struct mm_io {
  int a, b, azp, bzp;
  bool qlinear;
  bool mif; /* com.microsoft MatMulIntegerToFloat (a, b, a_scale, b_scale, a_zp, b_zp, bias) */
  bool rows; /* ai.kiln RowQuantMatMul: MatMulIntegerToFloat's inputs, a_scale one per row */
} mm_io;

/* Whether the node's epilogue needs n floats of multipliers in scratch. */
static bool mm_mults(const mm_io *io) { return io->qlinear || io->mif || io->rows; }

static mm_io mm_inputs(const kiln__node *n) {
  bool ql = !strcmp(n->op_type, "QLinearMatMul") || !strcmp(n->op_type, "QLinearMatMulDq");
  if (!strcmp(n->op_type, "MatMulIntegerToFloat")) return (mm_io){0, 1, 4, 5, false, true};
  if (!strcmp(n->op_type, "RowQuantMatMul")) return (mm_io){0, 1, 4, 5, false, false, true};
  return ql ? (mm_io){0, 3, 2, 5, true, false} : (mm_io){0, 1, 2, 3, false, false};
}

static const kiln_tensor *const_q8_2d(const kiln__value *v) {
  return v && v->is_initializer && is_q8(v->init.dtype) && v->init.data && v->init.rank == 2 &&
                 v->init.dims[0] > 0 && v->init.dims[1] > 0
             ? &v->init
             : NULL;
}

static kiln_status mm_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                              kiln_error *err) {
  qstate *s = NULL;
  kiln_status st = qstate_new(n, state, &s, err);
  if (st != KILN_OK) return st;
  const kiln_tensor *w = const_q8_2d(kiln__cpu_input(n, g, mm_inputs(n).b));
  if (!w) return KILN_OK;
  size_t k = (size_t)w->dims[0], nn = (size_t)w->dims[1];
  kiln__qsrc src = {w->data, w->dtype == KILN_DTYPE_INT8, 1, nn};
  st = kiln__qpack_alloc(s->isa, false, nn, k, &src, &s->w, err);
  if (st != KILN_OK) {
    qstate_release(s);
    *state = NULL;
    return st;
  }
  s->packed = true;
  return KILN_OK;
}

/* The product's geometry when the fast path applies: A (..., m, k) of 8-bit values times a 2-D B
   (k, n), run as one (rows x k) by (k x n) product. */
typedef struct mm_geom {
  size_t rows, k, n;
  kiln__qzp za, zb;
} mm_geom;

static bool mm_geom_get(const kiln__kctx *c, const mm_io *io, mm_geom *mg) {
  const kiln_tensor *a = c->in[io->a], *b = c->in[io->b];
  if (!is_q8(a->dtype) || !is_q8(b->dtype) || b->rank != 2 || a->rank < 1) return false;
  kiln__matmul_shape s = {0};
  kiln_error e = {0};
  if (kiln__matmul_shape_get(a, b, &s, &e) != KILN_OK) return false;
  mg->rows = s.batch * s.m;
  mg->k = s.k;
  mg->n = s.n;
  /* One activation zero point, or MatMulInteger's one per row ([M]) of a single matrix: the
     GEMM's per-row za (with a batch, the reference decides). */
  const kiln_tensor *azp = opt(c, io->azp), *bzp = opt(c, io->bzp);
  size_t azn = azp ? kiln_tensor_count(azp) : 1;
  if (azn != 1 && (io->qlinear || s.batch != 1 || azn != s.m)) return false;
  if (azp && azp->dtype != a->dtype) return false;
  if (bzp && bzp->dtype != b->dtype) return false;
  return zp_get(azp, azn, &mg->za) && zp_get(bzp, s.n, &mg->zb);
}

/* Scratch: packed A, packed B unless prepacked, the requantization multipliers. */
/* The format of the per-call operands: the prepacked weights' (a byte format when they qualify
   for VPMADDUBSW, qgemm.h), else the session's ISA. */
static kiln__qisa mm_fmt(const qstate *s) { return s->packed ? s->w.isa : s->isa; }

static size_t mm_scratch_for(const qstate *s, const mm_geom *mg, bool qlinear) {
  size_t bytes = align64(kiln__qpack_bytes(mm_fmt(s), true, mg->rows, mg->k));
  if (!s->packed) bytes += align64(kiln__qpack_bytes(s->isa, false, mg->n, mg->k));
  if (qlinear) bytes += align64(mg->n * sizeof(float));
  return bytes;
}

static size_t mm_scratch(const kiln__kctx *c, void *state) {
  const qstate *s = state;
  mm_io io = mm_inputs(c->node);
  mm_geom mg;
  size_t mine = mm_geom_get(c, &io, &mg) ? mm_scratch_for(s, &mg, mm_mults(&io)) : 0;
  size_t ref = ref_scratch(c);
  return mine > ref ? mine : ref;
}

/* QLinearMatMul's per-column multipliers sa * sb[j] / sy (the reference's expression), or false
   when the scales are not the covered forms. */
static bool ql_mults(const kiln__kctx *c, size_t n, float *mult) {
  float sa, sy;
  const kiln_tensor *sb = c->in[4];
  if (!scalar_f32(c->in[1], &sa) || !scalar_f32(c->in[6], &sy) || sb->dtype != KILN_DTYPE_FLOAT)
    return false;
  size_t cnt = kiln_tensor_count(sb);
  if (!(cnt == 1 || (sb->rank == 1 && cnt == n))) return false;
  const float *b = sb->data;
  for (size_t j = 0; j < n; j++) {
    mult[j] = sa * b[cnt == 1 ? 0 : j] / sy;
    if (!isfinite(mult[j])) return false;
  }
  return true;
}

static kiln_status mm_execute(kiln__kctx *c, void *state) {
  const qstate *s = state;
  mm_io io = mm_inputs(c->node);
  mm_geom mg;
  kiln_tensor *y = c->out[0];
  bool dq = io.qlinear && c->n_in > 8; /* QLinearMatMulDq: float out */
  if (!mm_geom_get(c, &io, &mg) ||
      (!io.qlinear && y->dtype != (io.mif || io.rows ? KILN_DTYPE_FLOAT : KILN_DTYPE_INT32)))
    return c->node->op->run(c);
  if (c->scratch_bytes < mm_scratch_for(s, &mg, mm_mults(&io))) return c->node->op->run(c);
  kiln__qgemm_args g = {.m = mg.rows, .n = mg.n, .k = mg.k, .za = mg.za, .zb = mg.zb,
                        .kind = KILN__QOUT_I32, .c = y->data, .ldc = mg.n};
  uint8_t *mem = c->scratch;
  size_t abytes = align64(kiln__qpack_bytes(mm_fmt(s), true, mg.rows, mg.k));
  size_t bbytes = s->packed ? 0 : align64(kiln__qpack_bytes(s->isa, false, mg.n, mg.k));
  if (io.qlinear) {
    const kiln_tensor *yzp = c->in[7];
    kiln_dtype qt = dq ? yzp->dtype : y->dtype; /* the requantized values' type */
    if (!is_q8(qt) || yzp->dtype != qt || kiln_tensor_count(yzp) != 1 ||
        !ql_mults(c, mg.n, (float *)(mem + abytes + bbytes)))
      return c->node->op->run(c);
    if (dq) {
      const kiln_tensor *ds = c->in[8], *dz = opt(c, 9), *bias = opt(c, 10);
      if (y->dtype != KILN_DTYPE_FLOAT || !scalar_f32(ds, &g.dq_scale) ||
          (dz && (dz->dtype != qt || kiln_tensor_count(dz) != 1)) ||
          (bias && (bias->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(bias) != mg.n)))
        return c->node->op->run(c);
      g.dq = true;
      g.dq_zp = dz ? zp_val(dz, 0) : 0;
      g.dq_bias = bias ? bias->data : NULL;
    }
    g.kind = qt == KILN_DTYPE_UINT8 ? KILN__QOUT_U8 : KILN__QOUT_S8;
    g.mult = (const float *)(mem + abytes + bbytes);
    g.zy = zp_val(yzp, 0);
  }
  if (io.mif || io.rows) {
    /* MatMulIntegerToFloat: dq_mult[j] = a_scale * b_scale[j], the Mul node's float products;
       RowQuantMatMul: b_scale[j], then the row's a_scale (two Mul nodes) */
    const kiln_tensor *as = c->in[2], *bs = c->in[3], *bias = opt(c, 6);
    float sa = 1.0f, *mult = (float *)(mem + abytes + bbytes);
    size_t bn = kiln_tensor_count(bs);
    bool as_ok = io.rows ? as->dtype == KILN_DTYPE_FLOAT && kiln_tensor_count(as) == mg.rows &&
                               mg.za.n <= 1
                         : scalar_f32(as, &sa);
    if (!as_ok || bs->dtype != KILN_DTYPE_FLOAT || !(bn == 1 || bn == mg.n) ||
        (bias && (bias->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(bias) != mg.n)))
      return c->node->op->run(c);
    const float *b = bs->data;
    for (size_t j = 0; j < mg.n; j++) {
      float bj = b[bn == 1 ? 0 : j];
      mult[j] = io.rows ? bj : sa * bj;
    }
    g.dq = true;
    g.dq_mult = mult;
    g.dq_bias = bias ? bias->data : NULL;
    if (io.rows) g.per_row = true, g.mult = as->data;
  }
  if (mg.rows == 0 || mg.n == 0) return KILN_OK;
  const kiln_tensor *a = c->in[io.a], *b = c->in[io.b];
  kiln__qpacked pa, pb;
  kiln__qsrc as = {a->data, a->dtype == KILN_DTYPE_INT8, mg.k, 1};
  kiln__qpack(c->pool, mm_fmt(s), true, mg.rows, mg.k, &as, mem, &pa);
  if (!s->packed) {
    kiln__qsrc bs = {b->data, b->dtype == KILN_DTYPE_INT8, 1, mg.n};
    kiln__qpack(c->pool, s->isa, false, mg.n, mg.k, &bs, mem + abytes, &pb);
  }
  g.a = &pa;
  g.b = s->packed ? &s->w : &pb;
  kiln__qgemm_run(c->pool, &g);
  return KILN_OK;
}

/* ---- ConvInteger, QLinearConv ---------------------------------------------------------------- */

/* Bound of the 8-bit im2col columns per chunk (the packed copy is twice that in int16 formats). */
#define COL_BYTES ((size_t)256 << 10)

typedef struct qconv_state {
  kiln__qisa isa;
  bool qlinear;
  bool dw;           /* depthwise: qconv_dw.c, no packed weights */
  kiln__conv2d cv;
  kiln__qpacked *pw; /* one packed mg x kk weight matrix per group (the GEMM's A) */
  kiln__qisa bsize_fmt; /* of the groups' formats, the one whose packed columns are largest */
  bool gather;       /* every group's format packs its columns straight from the input
                        (kiln__qpack_gather): no im2col buffer */
  bool nhwc;         /* one group of c a multiple of 16, S8U8 weights with za 0, packed with k
                        in (ky, kx, c) order: the columns come from an NHWC copy of the input
                        (kiln__qpack_taps); a 1x1 kernel's order is the same either way */
  kiln__qdwp_plan *dwp; /* depthwise 3x3 on small planes of static shape: the kernel's blocks */
} qconv_state;

static const kiln_tensor *const_q8(const kiln__value *v) {
  return v && v->is_initializer && is_q8(v->init.dtype) && v->init.data ? &v->init : NULL;
}

static bool qconv_parse(const kiln__node *n, const kiln__graph *g, qconv_state *s) {
  s->qlinear = !strcmp(n->op_type, "QLinearConv");
  const kiln_tensor *w = const_q8(kiln__cpu_input(n, g, s->qlinear ? 3 : 1));
  if (!kiln__cpu_conv2d_parse(n, w, &s->cv)) return false;
  s->dw = s->cv.groups > 1 && s->cv.cg == 1 && s->cv.mg == 1;
  return true;
}

static bool qconv_supports(const kiln__node *n, const kiln__graph *g) {
  qconv_state s;
  return qconv_parse(n, g, &s);
}

static void qconv_release(void *state) {
  qconv_state *s = state;
  if (s->pw)
    for (size_t i = 0; i < s->cv.groups; i++) kiln__qpacked_free(&s->pw[i]);
  kiln__free(s->pw);
  kiln__qdwp_plan_free(s->dwp);
  kiln__free(s);
}

/* Whether every row's za of the packed weights (zero point plus the format's offset) is 0: then
   the GEMM never reads B's column sums (qgemm.h). */
static bool za_all_zero(const kiln__qzp *z, size_t m, int32_t off) {
  size_t n = z->n == 0 ? 0 : z->n == 1 ? 1 : m;
  if (n == 0) return off == 0;
  for (size_t i = 0; i < n; i++) {
    int32_t v = z->is_signed ? ((const int8_t *)z->p)[i] : ((const uint8_t *)z->p)[i];
    if (v + off != 0) return false;
  }
  return true;
}

/* The NHWC-column form (qconv_state.nhwc) when the node qualifies: the weights' k reordered to
   (ky, kx, c) and packed; kept only if they pack as S8U8, AVX2's (whose pair check is on the new
   order) with a constant zero point that makes every za 0, else the usual packing follows. */
static kiln_status qconv_prepare_nhwc(const kiln__node *n, const kiln__graph *g,
                                      const kiln_tensor *w, qconv_state *s, kiln_error *err) {
  const kiln__conv2d *cv = &s->cv;
  if (cv->groups != 1 || cv->cg % 16 ||
      (s->isa != KILN__QISA_AVX2 && s->isa != KILN__QISA_AVX512VNNI))
    return KILN_OK;
  int zi = s->qlinear ? 5 : 3;
  const kiln__value *zv = zi < n->n_in ? kiln__cpu_input(n, g, zi) : NULL;
  const kiln_tensor *zt = zv ? const_q8(zv) : NULL;
  kiln__qzp zw;
  if ((zv && !zt) || (zt && zt->dtype != w->dtype) || !zp_get(zt, cv->m, &zw)) return KILN_OK;
  size_t taps = cv->kh * cv->kw;
  uint8_t *tw = kiln__malloc(cv->m * cv->kk);
  if (!tw) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing %s", n->op_type);
  const uint8_t *src = w->data;
  for (size_t o = 0; o < cv->m; o++)
    for (size_t c = 0; c < cv->cg; c++)
      for (size_t t = 0; t < taps; t++)
        tw[o * cv->kk + t * cv->cg + c] = src[o * cv->kk + c * taps + t];
  kiln__qsrc ts = {tw, w->dtype == KILN_DTYPE_INT8, cv->kk, 1};
  kiln_status st = kiln__qpack_alloc(s->isa, true, cv->m, cv->kk, &ts, &s->pw[0], err);
  kiln__free(tw);
  if (st != KILN_OK) return st;
  if ((s->pw[0].isa == KILN__QFMT_AVX2_S8U8 || s->pw[0].isa == KILN__QFMT_VNNI_S8U8) &&
      za_all_zero(&zw, cv->m, s->pw[0].zp_off))
    s->nhwc = true;
  else
    kiln__qpacked_free(&s->pw[0]);
  return KILN_OK;
}

static kiln_status qconv_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                 kiln_error *err) {
  qconv_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing %s", n->op_type);
  qconv_parse(n, g, s);
  kiln_status st = kiln__qisa_select(&s->isa, err);
  if (st == KILN_OK && s->dw) { /* the depthwise kernel reads the weights as they are */
    const kiln__value *x = kiln__cpu_input(n, g, 0);
    const kiln__value *y = n->out[0] >= 0 ? &g->values[n->out[0]] : NULL;
    if (x && y && x->rank == 4 && y->rank == 4 && s->cv.kh == 3 && s->cv.kw == 3 &&
        x->dims[2] > 0 && x->dims[3] > 0 && y->dims[2] > 0 && y->dims[3] > 0) {
      size_t h = (size_t)x->dims[2], w = (size_t)x->dims[3];
      size_t oh = (size_t)y->dims[2], ow = (size_t)y->dims[3];
      int64_t pt, pl;
      bool pointwise;
      kiln__cpu_conv2d_pads(&s->cv, h, w, oh, ow, &pt, &pl, &pointwise);
      s->dwp = kiln__qdwp_plan_make(h, w, oh, ow, s->cv.sw, pt, pl); /* NULL: made per call */
    }
    *state = s;
    return KILN_OK;
  }
  if (st == KILN_OK && !(s->pw = kiln__calloc(s->cv.groups, sizeof *s->pw)))
    st = kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing %s", n->op_type);
  const kiln_tensor *w = const_q8(kiln__cpu_input(n, g, s->qlinear ? 3 : 1));
  if (st == KILN_OK) st = qconv_prepare_nhwc(n, g, w, s, err);
  for (size_t i = 0; st == KILN_OK && !s->nhwc && i < s->cv.groups; i++) {
    kiln__qsrc src = {(const uint8_t *)w->data + i * s->cv.mg * s->cv.kk, w->dtype == KILN_DTYPE_INT8,
                      s->cv.kk, 1};
    st = kiln__qpack_alloc(s->isa, true, s->cv.mg, s->cv.kk, &src, &s->pw[i], err);
  }
  /* Each group's columns are packed in its weights' format; scratch is sized for the largest
     (int16 pairs take at least as many bytes as byte quads). */
  s->bsize_fmt = s->isa;
  if (st == KILN_OK) {
    s->bsize_fmt = s->pw[0].isa;
    for (size_t i = 1; i < s->cv.groups; i++)
      if (s->pw[i].isa != s->bsize_fmt) s->bsize_fmt = s->isa;
    s->gather = true;
    for (size_t i = 0; i < s->cv.groups; i++) s->gather &= kiln__qpack_gather_ok(s->pw[i].isa);
  }
  if (st != KILN_OK) {
    qconv_release(s);
    return st;
  }
  *state = s;
  return KILN_OK;
}

typedef struct qconv_geom {
  size_t n, c, h, w, oh, ow, p, chunk;
  int64_t pt, pl;
  bool pointwise;
  kiln__qzp zx, zw;
} qconv_geom;

static bool qconv_geom_get(const kiln__kctx *c, const qconv_state *s, qconv_geom *cg) {
  const kiln_tensor *x = c->in[0], *w = c->in[s->qlinear ? 3 : 1], *y = c->out[0];
  if (!is_q8(x->dtype) || !is_q8(w->dtype) || x->rank != 4 || y->rank != 4 ||
      (size_t)x->dims[1] != s->cv.cg * s->cv.groups || (size_t)y->dims[1] != s->cv.m)
    return false;
  const kiln_tensor *xzp = opt(c, 2), *wzp = opt(c, s->qlinear ? 5 : 3);
  if ((xzp && (xzp->dtype != x->dtype || kiln_tensor_count(xzp) != 1)) ||
      (wzp && wzp->dtype != w->dtype) || !zp_get(xzp, 1, &cg->zx) || !zp_get(wzp, s->cv.m, &cg->zw))
    return false;
  cg->n = (size_t)x->dims[0];
  cg->c = (size_t)x->dims[1];
  cg->h = (size_t)x->dims[2];
  cg->w = (size_t)x->dims[3];
  cg->oh = (size_t)y->dims[2];
  cg->ow = (size_t)y->dims[3];
  cg->p = cg->oh * cg->ow;
  kiln__cpu_conv2d_pads(&s->cv, cg->h, cg->w, cg->oh, cg->ow, &cg->pt, &cg->pl, &cg->pointwise);
  /* As few chunks as COL_BYTES allows, of equal width rounded up to the GEMM's 16-column panels:
     a remainder chunk (ResNet-50's 3x3 on 14x14: 96 + 96 + 4 columns) re-streamed every weight
     for a mostly padded panel. */
  size_t bound = KILN__MAX((size_t)32, COL_BYTES / s->cv.kk);
  size_t nch = KILN__MAX((size_t)1, (cg->p + bound - 1) / bound); /* p may be 0 */
  size_t chunk = ((cg->p + nch - 1) / nch + 15) / 16 * 16;
  cg->chunk = cg->pointwise ? cg->p : KILN__MIN(chunk, cg->p);
  return true;
}

/* Scratch: im2col columns (unless pointwise or gathered), their packed copy, per-row multipliers
   and bias. */
/* The NHWC form's scratch ahead of the packed columns: the input image in NHWC, a row of zero
   points for padding, and the chunk's tap pointers. */
static size_t nhwc_bytes(const qconv_state *s, const qconv_geom *cg) {
  if (!s->nhwc || cg->pointwise) return 0;
  return align64(cg->c * cg->h * cg->w) + align64(cg->c) +
         align64(cg->chunk * s->cv.kh * s->cv.kw * sizeof(const uint8_t *));
}

/* The NHWC form's per-thread bands (qconv_nhwc): `bands` standalone packed operands of equal
   whole panels covering `cols` columns; bytes of one. At most NHWC_BANDS_MAX bands (threads): the
   plan does not know the session's thread count, so scratch covers every count up to it. */
#define NHWC_BANDS_MAX 8
static size_t nhwc_band_bytes(const qconv_state *s, size_t cols, size_t bands) {
  size_t panels = (cols + 15) / 16;
  return align64(kiln__qpack_bytes(s->pw[0].isa, false, (panels + bands - 1) / bands * 16,
                                   s->cv.kk));
}

/* Whether the NHWC form splits a chunk into per-thread bands: its columns outweigh the weights. */
static bool nhwc_banded(const qconv_state *s, const qconv_geom *cg) {
  return s->nhwc && !cg->pointwise && cg->chunk >= s->cv.m;
}

/* Bytes of the packed columns of one chunk, as one operand or as bands for any thread count. */
static size_t qconv_bregion(const qconv_state *s, const qconv_geom *cg) {
  size_t b = align64(kiln__qpack_bytes(s->bsize_fmt, false, cg->chunk, s->cv.kk));
  if (nhwc_banded(s, cg))
    for (size_t t = 2; t <= NHWC_BANDS_MAX; t++)
      b = KILN__MAX(b, t * nhwc_band_bytes(s, cg->chunk, t));
  return b;
}

static size_t qconv_scratch_for(const qconv_state *s, const qconv_geom *cg) {
  if (s->dw) return align64(s->cv.m * sizeof(float));
  size_t cols = cg->pointwise || s->gather ? nhwc_bytes(s, cg) : align64(s->cv.kk * cg->chunk);
  return cols + qconv_bregion(s, cg) + align64(s->cv.m * sizeof(float));
}

static size_t qconv_scratch(const kiln__kctx *c, void *state) {
  const qconv_state *s = state;
  qconv_geom cg;
  size_t mine = qconv_geom_get(c, s, &cg) && cg.p ? qconv_scratch_for(s, &cg) : 0;
  size_t ref = ref_scratch(c);
  return mine > ref ? mine : ref;
}

typedef struct im2col_job {
  const qconv_state *s;
  const qconv_geom *g;
  const uint8_t *x; /* the group's cg input planes */
  uint8_t *col;     /* kk x (q1 - q0) */
  size_t q0, q1;
  uint8_t pad;      /* the input zero point: padding contributes (zx - zx) = 0 */
} im2col_job;

/* Short copies and fills (rows of 7-56 bytes, pads of 1-3) inline: a libc call per run cost more
   than the bytes. Constant-size memcpy compiles to plain moves. */
static inline void copy_short(uint8_t *d, const uint8_t *s, size_t n) {
  for (; n >= 8; n -= 8, d += 8, s += 8) memcpy(d, s, 8);
  if (n & 4) memcpy(d, s, 4), d += 4, s += 4;
  if (n & 2) memcpy(d, s, 2), d += 2, s += 2;
  if (n & 1) *d = *s;
}

static inline void fill_short(uint8_t *d, uint8_t v, size_t n) {
  uint64_t w = v * 0x0101010101010101u;
  for (; n >= 8; n -= 8, d += 8) memcpy(d, &w, 8);
  if (n & 4) memcpy(d, &w, 4), d += 4;
  if (n & 2) memcpy(d, &w, 2), d += 2;
  if (n & 1) *d = v;
}

/* dst[t] = src[t * sw] for t in [lo, hi); src[0 .. avail) is readable. Stride 2 (the strided
   3x3 and 7x7 convs of ResNets) takes the even bytes of 32 at a time with SSE2. */
static inline void copy_strided(uint8_t *dst, const uint8_t *src, int64_t sw, int64_t lo,
                                int64_t hi, int64_t avail) {
  int64_t t = lo;
#ifdef __SSE2__
  if (sw == 2) {
    const __m128i even = _mm_set1_epi16(0xFF);
    for (; t + 16 <= hi && 2 * t + 32 <= avail; t += 16) {
      __m128i a = _mm_and_si128(_mm_loadu_si128((const __m128i *)(src + 2 * t)), even);
      __m128i b = _mm_and_si128(_mm_loadu_si128((const __m128i *)(src + 2 * t + 16)), even);
      _mm_storeu_si128((__m128i *)(dst + t), _mm_packus_epi16(a, b));
    }
  }
#endif
  for (; t < hi; t++) dst[t] = src[t * sw];
}

/* The run of output columns [ox, ox + run) of a kernel tap whose first input column is
   first = ox * sw + kx * dw - pl: columns [lo, hi) of the run read the input, the rest pad. */
static void tap_span(int64_t first, int64_t sw, int64_t w, int64_t run, int64_t *lo, int64_t *hi) {
  int64_t l = first >= 0 ? 0 : (-first + sw - 1) / sw;
  int64_t h = first >= w ? 0 : (w - first + sw - 1) / sw;
  *lo = KILN__MIN(l, run);
  *hi = KILN__MAX(*lo, KILN__MIN(h, run));
}

/* Row r (kernel tap) of the columns [qa, qb) into dst. */
static void im2col_tap(const im2col_job *j, size_t r, size_t qa, size_t qb, uint8_t *dst) {
  const qconv_state *s = j->s;
  const qconv_geom *g = j->g;
  int64_t sw = s->cv.sw, w = (int64_t)g->w;
  size_t ci = r / (s->cv.kh * s->cv.kw), ky = r / s->cv.kw % s->cv.kh, kx = r % s->cv.kw;
  const uint8_t *xp = j->x + ci * g->h * g->w;
  size_t oy = qa / g->ow, ox = qa % g->ow;
  int64_t ix0 = (int64_t)kx * s->cv.dw - g->pl;
  /* The span of a whole output row (ox 0), the same for every row: computed once. */
  int64_t lo_row, hi_row;
  tap_span(ix0, sw, w, (int64_t)g->ow, &lo_row, &hi_row);
  for (size_t q = qa; q < qb;) {
    int64_t iy = (int64_t)oy * s->cv.sh - g->pt + (int64_t)ky * s->cv.dh;
    size_t run = KILN__MIN(g->ow - ox, qb - q);
    if (iy < 0 || iy >= (int64_t)g->h) {
      fill_short(dst, j->pad, run);
    } else {
      const uint8_t *xrow = xp + (size_t)iy * g->w;
      int64_t first = (int64_t)ox * sw + ix0, lo, hi;
      if (ox == 0) {
        lo = KILN__MIN(lo_row, (int64_t)run);
        hi = KILN__MAX(lo, KILN__MIN(hi_row, (int64_t)run));
      } else {
        tap_span(first, sw, w, (int64_t)run, &lo, &hi);
      }
      if (lo) fill_short(dst, j->pad, (size_t)lo);
      if (sw == 1) copy_short(dst + lo, xrow + first + lo, (size_t)(hi - lo));
      else copy_strided(dst, xrow + first, sw, lo, hi, w - first);
      if ((int64_t)run > hi) fill_short(dst + hi, j->pad, (size_t)((int64_t)run - hi));
    }
    dst += run;
    q += run;
    ox = 0;
    oy++;
  }
}

static void im2col_rows(void *arg, size_t r0, size_t r1) {
  const im2col_job *j = arg;
  for (size_t r = r0; r < r1; r++) im2col_tap(j, r, j->q0, j->q1, j->col + r * (j->q1 - j->q0));
}

/* kiln__qgather_fn of the chunk [q0, q1): rows of im2col, a block of columns at a time. */
static void im2col_gather(const void *ctx, size_t c0, size_t cn, size_t p0, size_t kc,
                          uint8_t *dst, size_t ld) {
  const im2col_job *j = ctx;
  for (size_t p = 0; p < kc; p++) im2col_tap(j, p0 + p, j->q0 + c0, j->q0 + c0 + cn, dst + p * ld);
}

/* x (c planes of hw bytes) to xh (hw pixels of c bytes), c a multiple of 16: 16 x 16 byte
   transposes with SSE2 (four rounds of unpacks), pixels [p0, p1) of the job's share. */
typedef struct nhwc_job {
  const uint8_t *x;
  uint8_t *xh;
  size_t c, hw;
} nhwc_job;

static void nhwc_blocks(void *arg, size_t b0, size_t b1) {
  const nhwc_job *j = arg;
  size_t p1 = KILN__MIN(j->hw, b1 * 16);
  for (size_t p0 = b0 * 16; p0 < p1; p0 += 16)
    for (size_t c0 = 0; c0 < j->c; c0 += 16) {
      const uint8_t *src = j->x + c0 * j->hw + p0;
      uint8_t *dst = j->xh + p0 * j->c + c0;
#ifdef __SSE2__
      if (p0 + 16 <= j->hw) {
        __m128i a[16], b[16];
        for (int i = 0; i < 16; i++) a[i] = _mm_loadu_si128((const __m128i *)(src + i * j->hw));
        for (int k = 0; k < 8; k++) { /* channel pairs: 16-bit pixels */
          b[2 * k] = _mm_unpacklo_epi8(a[2 * k], a[2 * k + 1]);
          b[2 * k + 1] = _mm_unpackhi_epi8(a[2 * k], a[2 * k + 1]);
        }
        for (int k = 0; k < 4; k++) /* channel quads: 32-bit pixels, groups of 4 */
          for (int h = 0; h < 2; h++) {
            a[4 * k + 2 * h] = _mm_unpacklo_epi16(b[4 * k + h], b[4 * k + 2 + h]);
            a[4 * k + 2 * h + 1] = _mm_unpackhi_epi16(b[4 * k + h], b[4 * k + 2 + h]);
          }
        for (int m = 0; m < 2; m++) /* channel octets: 64-bit pixels, pairs */
          for (int g = 0; g < 4; g++) {
            b[8 * m + 2 * g] = _mm_unpacklo_epi32(a[8 * m + g], a[8 * m + 4 + g]);
            b[8 * m + 2 * g + 1] = _mm_unpackhi_epi32(a[8 * m + g], a[8 * m + 4 + g]);
          }
        for (int i = 0; i < 8; i++) {
          _mm_storeu_si128((__m128i *)(dst + 2 * i * j->c), _mm_unpacklo_epi64(b[i], b[8 + i]));
          _mm_storeu_si128((__m128i *)(dst + (2 * i + 1) * j->c),
                           _mm_unpackhi_epi64(b[i], b[8 + i]));
        }
        continue;
      }
#endif
      for (size_t p = 0; p < KILN__MIN((size_t)16, j->hw - p0); p++)
        for (size_t i = 0; i < 16; i++) dst[p * j->c + i] = src[i * j->hw + p];
    }
}

/* One chunk of the NHWC form: items are column bands, each packed and multiplied by one thread
   (band_cols columns, standalone packed operands of band_bytes each in bmem). */
typedef struct nhwc_chunk {
  const qconv_state *s;
  const qconv_geom *cg;
  const uint8_t *xh, *padrow;
  const uint8_t **ptrs; /* one per (column of the chunk, tap) */
  uint8_t *bmem;
  size_t q0, q1, band_cols, band_bytes;
  bool xs8;
  kiln__qgemm_args g;   /* n, b, c set per band */
  uint8_t *y;           /* the output image */
  size_t out_esz;
} nhwc_chunk;

/* Pointers of the chunk's columns [a, b): tap t of column q at ptrs[(q - q0) * taps + t]. */
static void nhwc_ptrs(const nhwc_chunk *h, size_t a, size_t b) {
  const kiln__conv2d *cv = &h->s->cv;
  const qconv_geom *cg = h->cg;
  const uint8_t **pp = h->ptrs + (a - h->q0) * cv->kh * cv->kw;
  /* a window inside the image: the tap offsets from its corner, no tests */
  enum { TAPS_MAX = 64 };
  size_t off[TAPS_MAX], taps = cv->kh * cv->kw;
  bool fast = taps <= TAPS_MAX;
  for (size_t t = 0; fast && t < taps; t++)
    off[t] = ((t / cv->kw) * (size_t)cv->dh * cg->w + (t % cv->kw) * (size_t)cv->dw) * cg->c;
  const int64_t ylast = ((int64_t)cv->kh - 1) * cv->dh, xlast = ((int64_t)cv->kw - 1) * cv->dw;
  for (size_t q = a; q < b; q++) {
    int64_t oy = (int64_t)(q / cg->ow), ox = (int64_t)(q % cg->ow);
    int64_t iy0 = oy * cv->sh - cg->pt, ix0 = ox * cv->sw - cg->pl;
    if (fast && iy0 >= 0 && ix0 >= 0 && iy0 + ylast < (int64_t)cg->h &&
        ix0 + xlast < (int64_t)cg->w) {
      const uint8_t *base = h->xh + ((size_t)iy0 * cg->w + (size_t)ix0) * cg->c;
      for (size_t t = 0; t < taps; t++) *pp++ = base + off[t];
      continue;
    }
    for (size_t ky = 0; ky < cv->kh; ky++) {
      int64_t iy = oy * cv->sh - cg->pt + (int64_t)ky * cv->dh;
      bool row_in = iy >= 0 && iy < (int64_t)cg->h;
      for (size_t kx = 0; kx < cv->kw; kx++) {
        int64_t ix = ox * cv->sw - cg->pl + (int64_t)kx * cv->dw;
        *pp++ = row_in && ix >= 0 && ix < (int64_t)cg->w
                    ? h->xh + ((size_t)iy * cg->w + (size_t)ix) * cg->c
                    : h->padrow;
      }
    }
  }
}

static void nhwc_bands(void *arg, size_t b0, size_t b1) {
  const nhwc_chunk *h = arg;
  size_t taps = h->s->cv.kh * h->s->cv.kw;
  for (size_t b = b0; b < b1; b++) {
    size_t a = h->q0 + b * h->band_cols, e = KILN__MIN(h->q1, a + h->band_cols);
    if (a >= e) continue;
    nhwc_ptrs(h, a, e);
    kiln__qpacked pb;
    uint8_t *mem = h->bmem + b * h->band_bytes;
    kiln__qpack_taps(NULL, h->s->pw[0].isa, e - a, taps, h->cg->c, h->xs8,
                     h->ptrs + (a - h->q0) * taps, mem, &pb);
    kiln__qgemm_args g = h->g;
    g.n = e - a;
    g.b = &pb;
    g.c = h->y + a * h->out_esz;
    kiln__qgemm_run(NULL, &g);
  }
}

/* The NHWC form of the conv (qconv_state.nhwc, a kernel larger than 1x1 or strided / padded):
   per image, the input in NHWC; per chunk of output pixels, one pointer per (pixel, tap) to the
   tap's c input bytes (or to the zero-point row), the columns packed from them, the GEMM. When a
   chunk's columns outweigh the weights (chunk >= m: ResNet's 56x56 and 28x28 layers), each thread
   packs and multiplies its own band of columns (one hand-off per chunk, and its columns stay in
   its own cache); else the packing and the GEMM's tiles are each split over the pool. */
static void qconv_nhwc(kiln__kctx *c, const qconv_state *s, const qconv_geom *cg, uint8_t *mem,
                       uint8_t pad, uint8_t *bmem, kiln__qout_kind kind, const int32_t *bias,
                       const float *mult, int32_t zy) {
  const kiln__conv2d *cv = &s->cv;
  const kiln_tensor *x = c->in[0];
  size_t taps = cv->kh * cv->kw, hw = cg->h * cg->w;
  uint8_t *xh = mem, *padrow = xh + align64(cg->c * hw);
  memset(padrow, pad, cg->c);
  size_t threads =
      c->pool ? KILN__MIN((size_t)kiln__pool_threads(c->pool), (size_t)NHWC_BANDS_MAX) : 1;
  nhwc_chunk h = {.s = s, .cg = cg, .xh = xh, .padrow = padrow,
                  .ptrs = (const uint8_t **)(padrow + align64(cg->c)), .bmem = bmem,
                  .xs8 = x->dtype == KILN_DTYPE_INT8,
                  .out_esz = kind == KILN__QOUT_I32 ? 4 : 1};
  h.g = (kiln__qgemm_args){.m = cv->m, .k = cv->kk, .a = &s->pw[0], .za = cg->zw, .zb = cg->zx,
                           .kind = kind, .ldc = cg->p, .per_row = true, .zy = zy, .bias = bias,
                           .mult = s->qlinear ? mult : NULL};
  bool bands = threads > 1 && nhwc_banded(s, cg);
  for (size_t b = 0; b < cg->n; b++) {
    nhwc_job nj = {(const uint8_t *)x->data + b * cg->c * hw, xh, cg->c, hw};
    size_t blocks = (hw + 15) / 16;
    if ((double)cg->c * (double)hw < 32768.0) nhwc_blocks(&nj, 0, blocks);
    else kiln__parallel_for(c->pool, blocks, nhwc_blocks, &nj);
    h.y = (uint8_t *)c->out[0]->data + b * cv->m * cg->p * h.out_esz;
    for (h.q0 = 0; h.q0 < cg->p; h.q0 += cg->chunk) {
      h.q1 = KILN__MIN(cg->p, h.q0 + cg->chunk);
      size_t cols = h.q1 - h.q0;
      if (bands) {
        /* equal bands of whole 16-column panels, one per thread */
        size_t panels = (cols + 15) / 16;
        h.band_cols = (panels + threads - 1) / threads * 16;
        h.band_bytes = nhwc_band_bytes(s, cols, threads);
        kiln__parallel_for(c->pool, threads, nhwc_bands, &h);
        continue;
      }
      nhwc_ptrs(&h, h.q0, h.q1);
      kiln__qpacked pb;
      kiln__qpack_taps(c->pool, s->pw[0].isa, cols, taps, cg->c, h.xs8, h.ptrs, bmem, &pb);
      kiln__qgemm_args g = h.g;
      g.n = cols;
      g.b = &pb;
      g.c = h.y + h.q0 * h.out_esz;
      kiln__qgemm_run(c->pool, &g);
    }
  }
}

static kiln_status qconv_execute(kiln__kctx *c, void *state) {
  const qconv_state *s = state;
  qconv_geom cg;
  kiln_tensor *y = c->out[0];
  if (!qconv_geom_get(c, s, &cg)) return c->node->op->run(c);
  if (cg.n == 0 || cg.p == 0) return KILN_OK;
  if (c->scratch_bytes < qconv_scratch_for(s, &cg)) return c->node->op->run(c);
  uint8_t *mem = c->scratch;
  uint8_t *col = mem;
  size_t colb = s->dw ? 0 : cg.pointwise || s->gather ? nhwc_bytes(s, &cg)
                                                      : align64(s->cv.kk * cg.chunk);
  uint8_t *bmem = mem + colb;
  float *mult = s->dw ? (float *)mem : (float *)(bmem + qconv_bregion(s, &cg));
  const int32_t *bias = NULL;
  kiln__qout_kind kind = KILN__QOUT_I32;
  int32_t zy = 0;
  if (s->qlinear) {
    /* mult[oc] = x_scale * w_scale[oc] / y_scale, the reference's expression. */
    float xs, ys;
    const kiln_tensor *ws = c->in[4], *yzp = c->in[7], *b = opt(c, 8);
    size_t wn = kiln_tensor_count(ws);
    if (!scalar_f32(c->in[1], &xs) || !scalar_f32(c->in[6], &ys) ||
        ws->dtype != KILN_DTYPE_FLOAT || !(wn == 1 || (ws->rank == 1 && wn == s->cv.m)) ||
        !is_q8(y->dtype) || yzp->dtype != y->dtype || kiln_tensor_count(yzp) != 1 ||
        (b && (b->dtype != KILN_DTYPE_INT32 || b->rank != 1 || (size_t)b->dims[0] != s->cv.m)))
      return c->node->op->run(c);
    for (size_t o = 0; o < s->cv.m; o++) {
      mult[o] = xs * ((const float *)ws->data)[wn == 1 ? 0 : o] / ys;
      if (!isfinite(mult[o])) return c->node->op->run(c);
    }
    bias = b ? b->data : NULL;
    kind = y->dtype == KILN_DTYPE_UINT8 ? KILN__QOUT_U8 : KILN__QOUT_S8;
    zy = zp_val(yzp, 0);
  }
  const kiln_tensor *x = c->in[0];
  bool xs8 = x->dtype == KILN_DTYPE_INT8;
  uint8_t pad = cg.zx.n ? *(const uint8_t *)cg.zx.p : 0;
  size_t out_esz = kind == KILN__QOUT_I32 ? 4 : 1;
  if (s->dw) {
    const kiln_tensor *w = c->in[s->qlinear ? 3 : 1];
    kiln__qdw_args a = {.x = x->data, .x_signed = xs8, .n = cg.n, .c = cg.c, .h = cg.h, .w = cg.w,
                        .oh = cg.oh, .ow = cg.ow, .kh = s->cv.kh, .kw = s->cv.kw, .sh = s->cv.sh,
                        .sw = s->cv.sw, .dh = s->cv.dh, .dw = s->cv.dw, .pt = cg.pt, .pl = cg.pl,
                        .wt = w->data, .w_signed = w->dtype == KILN_DTYPE_INT8,
                        .zx = zp_val(opt(c, 2), 0), .zw = cg.zw, .kind = kind, .bias = bias,
                        .mult = s->qlinear ? mult : NULL, .zy = zy, .y = y->data,
                        .plan = s->dwp};
    kiln__qconv_dw(c->pool, s->isa, &a);
    return KILN_OK;
  }
  if (s->nhwc && !cg.pointwise) {
    /* The packed weights assume za 0 (checked at load on the constant zero point). */
    if (!za_all_zero(&cg.zw, s->cv.m, s->pw[0].zp_off)) return c->node->op->run(c);
    qconv_nhwc(c, s, &cg, col, pad, bmem, kind, bias, mult, zy);
    return KILN_OK;
  }
  for (size_t b = 0; b < cg.n; b++)
    for (size_t gi = 0; gi < s->cv.groups; gi++) {
      const uint8_t *xg = (const uint8_t *)x->data + (b * cg.c + gi * s->cv.cg) * cg.h * cg.w;
      size_t yoff = (b * s->cv.m + gi * s->cv.mg) * cg.p;
      kiln__qzp zw = cg.zw;
      if (zw.n > 1) zw.p = (const uint8_t *)zw.p + gi * s->cv.mg;
      bool za0 = za_all_zero(&zw, s->cv.mg, s->pw[gi].zp_off);
      kiln__qgemm_args g = {.m = s->cv.mg, .k = s->cv.kk, .a = &s->pw[gi], .za = zw, .zb = cg.zx,
                            .kind = kind, .ldc = cg.p, .per_row = true, .zy = zy,
                            .bias = bias ? bias + gi * s->cv.mg : NULL,
                            .mult = s->qlinear ? mult + gi * s->cv.mg : NULL};
      for (size_t q0 = 0; q0 < cg.p; q0 += cg.chunk) {
        size_t q1 = KILN__MIN(cg.p, q0 + cg.chunk);
        kiln__qsrc src = {xg, xs8, 1, cg.p};
        kiln__qpacked pb;
        im2col_job j = {s, &cg, xg, col, q0, q1, pad};
        if (!cg.pointwise && s->gather) {
          kiln__qpack_gather(c->pool, s->pw[gi].isa, q1 - q0, s->cv.kk, xs8, im2col_gather, &j,
                             bmem, &pb);
        } else {
          if (!cg.pointwise) {
            kiln__parallel_for(c->pool, s->cv.kk, im2col_rows, &j);
            src = (kiln__qsrc){col, xs8, 1, q1 - q0};
          }
          src.no_sums = za0;
          kiln__qpack(c->pool, s->pw[gi].isa, false, q1 - q0, s->cv.kk, &src, bmem, &pb);
        }
        g.n = q1 - q0;
        g.b = &pb;
        g.c = (uint8_t *)y->data + (yoff + q0) * out_esz;
        kiln__qgemm_run(c->pool, &g);
      }
    }
  return KILN_OK;
}

/* ---- com.microsoft QLinearConcat ------------------------------------------------------------- */

/* y = Q(DQ(x)) for each of the 256 codes, in the reference kernel's float operations; true when
   the table is the identity (then the input is copied). */
static bool requant_table(bool is_signed, float sx, int32_t zx, float sy, int32_t zy, uint8_t *t) {
  int32_t lo = is_signed ? -128 : 0, hi = is_signed ? 127 : 255;
  bool same = true;
  for (int b = 0; b < 256; b++) {
    int32_t x = is_signed ? (int8_t)b : b;
    float r = rintf((float)(x - zx) * sx / sy);
    if (r != r) r = 0.0f;
    double q = (double)r + zy;
    int32_t v = q < lo ? lo : q > hi ? hi : (int32_t)q;
    t[b] = (uint8_t)v;
    same &= t[b] == (uint8_t)b;
  }
  return same;
}

static kiln_status qconcat_execute(kiln__kctx *c, void *state) {
  (void)state;
  kiln_tensor *y = c->out[0];
  const kiln__attr *at = kiln__attr_find(c->node, "axis");
  int axis;
  float sy;
  if (c->n_in < 5 || (c->n_in - 2) % 3 || !is_q8(y->dtype) || !at ||
      !kiln__norm_axis(at->i, y->rank, &axis) || !scalar_f32(c->in[0], &sy) ||
      c->in[1]->dtype != y->dtype || kiln_tensor_count(c->in[1]) != 1)
    return c->node->op->run(c);
  for (int i = 2; i < c->n_in; i += 3) {
    float sx;
    const kiln_tensor *x = c->in[i], *xz = c->in[i + 2];
    if (!x || !xz || x->dtype != y->dtype || xz->dtype != y->dtype || kiln_tensor_count(xz) != 1 ||
        !scalar_f32(c->in[i + 1], &sx) || x->rank != y->rank)
      return c->node->op->run(c);
  }
  bool sgn = y->dtype == KILN_DTYPE_INT8;
  size_t outer = 1, row = 1, off = 0;
  for (int d = 0; d < axis; d++) outer *= (size_t)y->dims[d];
  for (int d = axis; d < y->rank; d++) row *= (size_t)y->dims[d];
  for (int i = 2; i < c->n_in; i += 3) {
    const kiln_tensor *x = c->in[i];
    size_t inner = outer ? kiln_tensor_count(x) / outer : 0;
    uint8_t t[256];
    bool copy = requant_table(sgn, *(const float *)c->in[i + 1]->data, zp_val(c->in[i + 2], 0), sy,
                              zp_val(c->in[1], 0), t);
    const uint8_t *src = x->data;
    uint8_t *dst = (uint8_t *)y->data + off;
    for (size_t o = 0; o < outer; o++, src += inner, dst += row) {
      if (copy) memcpy(dst, src, inner);
      else for (size_t e = 0; e < inner; e++) dst[e] = t[src[e]];
    }
    off += inner;
  }
  return KILN_OK;
}

kiln__qisa kiln__cpu_quant_weight_format(const char *op_type, const void *kstate, size_t group) {
  if (!kstate) return KILN__QFMT_COUNT;
  if (!strcmp(op_type, "MatMulInteger") || !strcmp(op_type, "QLinearMatMul") ||
      !strcmp(op_type, "QLinearMatMulDq") || !strcmp(op_type, "MatMulIntegerToFloat") ||
      !strcmp(op_type, "RowQuantMatMul")) {
    const qstate *s = kstate;
    return s->packed ? s->w.isa : KILN__QFMT_COUNT;
  }
  if (!strcmp(op_type, "ConvInteger") || !strcmp(op_type, "QLinearConv")) {
    const qconv_state *s = kstate;
    return s->pw && group < s->cv.groups ? s->pw[group].isa : KILN__QFMT_COUNT;
  }
  return KILN__QFMT_COUNT;
}

bool kiln__cpu_qconv_nhwc(const char *op_type, const void *kstate) {
  if (!kstate || (strcmp(op_type, "ConvInteger") && strcmp(op_type, "QLinearConv"))) return false;
  return ((const qconv_state *)kstate)->nhwc;
}

const kiln__cpu_kernel kiln__cpu_quant_kernels[] = {
    {"QuantizeLinear", conv_supports_float_in, simple_prepare, qstate_release, quantize_execute,
     NULL},
    {"DequantizeLinear", any_supports, simple_prepare, qstate_release, dequantize_execute, NULL},
    {"DynamicQuantizeLinear", conv_supports_float_in, simple_prepare, qstate_release,
     dynquant_execute, NULL},
    {"MatMulInteger", any_supports, mm_prepare, qstate_release, mm_execute, mm_scratch},
    {"QLinearMatMul", any_supports, mm_prepare, qstate_release, mm_execute, mm_scratch},
    {"QLinearMatMulDq", any_supports, mm_prepare, qstate_release, mm_execute, mm_scratch,
     "ai.kiln"},
    {"MatMulIntegerToFloat", any_supports, mm_prepare, qstate_release, mm_execute, mm_scratch,
     "com.microsoft"},
    {"RowQuantMatMul", any_supports, mm_prepare, qstate_release, mm_execute, mm_scratch,
     "ai.kiln"},
    {"DynamicQuantizeRows", any_supports, simple_prepare, qstate_release, dqrows_execute, NULL,
     "ai.kiln"},
    {"ConvInteger", qconv_supports, qconv_prepare, qconv_release, qconv_execute, qconv_scratch},
    {"QLinearConv", qconv_supports, qconv_prepare, qconv_release, qconv_execute, qconv_scratch},
    {"QLinearConcat", any_supports, NULL, NULL, qconcat_execute, NULL, "com.microsoft"},
    {NULL},
};
