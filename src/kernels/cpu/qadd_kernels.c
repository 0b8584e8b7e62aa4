/* com.microsoft QLinearAdd and QLinearGlobalAveragePool on the cpu backend: ResNet's residual
 * adds and final pool on the 8-bit tensors, so a static int8 ResNet has no float step between
 * its QLinearConvs.
 *
 * QLinearAdd: y = sat(rint(((float)(a - za) * sa + (float)(b - zb) * sb) / sc) + zc), the
 * reference kernel's float operations in the same order, eight lanes at a time (VCVTDQ2PS, VMULPS,
 * VADDPS, VDIVPS, VROUNDPS nearest-even): every operation is correctly rounded IEEE float32, so
 * the result is byte-identical to src/kernels/ref/quant.c. When the scales bound every quotient
 * well inside int32 (the usual case), the lean loop converts it with VCVTPS2DQ (rounding as rintf)
 * and clamps by the saturating packs instead of VROUNDPS, a NaN mask and float bounds: a third
 * fewer vector operations, 1.4x the codes per second, the same bytes; with AVX-512BW (and the
 * avx512vnni ISA selected) it runs 16 lanes wide (qadd_lean512). The functions are built
 * for AVX2 without FMA so that the compiler cannot contract the multiply-add. Broadcasting: the
 * output is walked as rows over the largest trailing block in which each operand is either
 * contiguous or one repeated element (a scalar operand's dequantized value is computed once, the
 * same float); tails go through the same vector code on a padded copy. Without AVX2 the reference
 * kernel runs.
 *
 * QLinearGlobalAveragePool: exact int32 sums per channel (NCHW: one contiguous image per
 * channel; channels_last: rows of channels added up), then the reference's requantization
 * (sum - zx * m) * (xs / (ys * m)) in float, so byte-identical too. */
#include <math.h>

#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/qgemm.h"

#ifdef KILN__QGEMM_X86
#include <immintrin.h>
#define TARGET_NOFMA __attribute__((target("avx2")))
#endif

static bool is_q8(kiln_dtype t) { return t == KILN_DTYPE_UINT8 || t == KILN_DTYPE_INT8; }

static bool scalar_f32(const kiln_tensor *t, float *v) {
  if (!t || t->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(t) != 1) return false;
  *v = *(const float *)t->data;
  return true;
}

/* A present per-tensor zero point of dtype `dt` (or an absent one: 0). */
static bool zp_scalar(const kiln_tensor *t, kiln_dtype dt, int32_t *z) {
  *z = 0;
  if (!t) return true;
  if (t->dtype != dt || kiln_tensor_count(t) != 1) return false;
  *z = dt == KILN_DTYPE_INT8 ? *(const int8_t *)t->data : *(const uint8_t *)t->data;
  return true;
}

static const kiln_tensor *opt_in(const kiln__kctx *c, int i) {
  return i < c->n_in ? c->in[i] : NULL;
}

typedef struct isa_state {
  kiln__qisa isa;
} isa_state;

static void isa_release(void *state) { kiln__free(state); }

static kiln_status isa_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                               kiln_error *err) {
  (void)g;
  isa_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing %s", n->op_type);
  kiln_status st = kiln__qisa_select(&s->isa, err);
  if (st != KILN_OK) {
    kiln__free(s);
    return st;
  }
  *state = s;
  return KILN_OK;
}

static bool any_supports(const kiln__node *n, const kiln__graph *g) {
  (void)n, (void)g;
  return true;
}

/* ---- QLinearAdd ------------------------------------------------------------------------------ */

typedef struct qadd_params {
  float sa, sb, sc;
  int32_t za, zb, zc;
  bool sgn;
  bool lean; /* |a - za| * |sa| + |b - zb| * |sb| over |sc| stays below 2^30: see qadd_lean */
  bool wide; /* qadd_lean on 16 lanes (AVX-512BW; the session's ISA is avx512vnni) */
} qadd_params;

/* Whether every quotient of the node is finite and below 2^30 in magnitude (|a - za| and |b - zb|
   are at most 255; 2^30 leaves the float roundings of the products, sum and quotient a factor 2
   of room below 2^31). Then VCVTPS2DQ converts it exactly, no NaN can arise, and clamping after
   the conversion equals the reference's clamp of the rounded float. */
static bool qadd_lean_ok(const qadd_params *p) {
  double q = 255.0 * (fabs((double)p->sa) + fabs((double)p->sb)) / fabs((double)p->sc);
  return q < 1073741824.0; /* false for NaN, infinite or zero scales */
}

#ifdef KILN__QGEMM_X86
/* 8 codes at p (uint8 or int8) -> (float)(code - z) * s. */
TARGET_NOFMA static inline __m256 deq8(const uint8_t *p, bool sgn, __m256i z, __m256 s) {
  __m128i b = _mm_loadl_epi64((const __m128i *)p);
  __m256i v = sgn ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
  return _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, z)), s);
}

/* One code at p -> (float)(code - z) * s: a broadcast operand's value, the same float. */
static inline float deq1(const uint8_t *p, bool sgn, int32_t z, float s) {
  return (float)((sgn ? (int32_t)(int8_t)p[0] : p[0]) - z) * s;
}

/* The loops' constants: zero points and scales in lanes, and a broadcast operand's value. */
typedef struct qadd_vec {
  __m256i za, zb;
  __m256 sa, sb, sc, ca, cb;
} qadd_vec;

TARGET_NOFMA static inline qadd_vec qadd_vec_of(const qadd_params *p, const uint8_t *a,
                                                size_t a_step, const uint8_t *b, size_t b_step) {
  qadd_vec v = {_mm256_set1_epi32(p->za), _mm256_set1_epi32(p->zb), _mm256_set1_ps(p->sa),
                _mm256_set1_ps(p->sb),    _mm256_set1_ps(p->sc),    _mm256_setzero_ps(),
                _mm256_setzero_ps()};
  if (!a_step) v.ca = _mm256_set1_ps(deq1(a, p->sgn, p->za, p->sa));
  if (!b_step) v.cb = _mm256_set1_ps(deq1(b, p->sgn, p->zb, p->sb));
  return v;
}

/* Codes e .. e + 8: (DQ(a) + DQ(b)) / sc, the reference's operations in its order. */
TARGET_NOFMA static inline __m256 quot8(const qadd_vec *v, bool sgn, const uint8_t *a,
                                        size_t a_step, const uint8_t *b, size_t b_step, size_t e) {
  __m256 va = a_step ? deq8(a + e, sgn, v->za, v->sa) : v->ca;
  __m256 vb = b_step ? deq8(b + e, sgn, v->zb, v->sb) : v->cb;
  return _mm256_div_ps(_mm256_add_ps(va, vb), v->sc);
}

/* 32 codes from four vectors of 8 int16-range values, in order. */
TARGET_NOFMA static inline void store32(uint8_t *y, __m256i w01, __m256i w23, bool sgn) {
  __m256i bytes = sgn ? _mm256_packs_epi16(w01, w23) : _mm256_packus_epi16(w01, w23);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  _mm256_storeu_si256((__m256i *)y, _mm256_permutevar8x32_epi32(bytes, order));
}

/* y[0..n) for n a multiple of 32; a (b) is one repeated element when a_step (b_step) is 0. */
TARGET_NOFMA static void qadd_avx2(const qadd_params *p, const uint8_t *a, size_t a_step,
                                   const uint8_t *b, size_t b_step, uint8_t *y, size_t n) {
  const qadd_vec v = qadd_vec_of(p, a, a_step, b, b_step);
  const __m256i zc = _mm256_set1_epi32(p->zc);
  const int32_t lo = p->sgn ? -128 : 0, hi = p->sgn ? 127 : 255;
  /* clamping r before adding zc is clamping r + zc: r and the bounds are integers */
  const __m256 flo = _mm256_set1_ps((float)(lo - p->zc)), fhi = _mm256_set1_ps((float)(hi - p->zc));
  for (size_t i = 0; i < n; i += 32) {
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
      __m256 r = _mm256_round_ps(quot8(&v, p->sgn, a, a_step, b, b_step, i + 8 * (size_t)k),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q)); /* NaN -> 0, as the reference */
      r = _mm256_min_ps(_mm256_max_ps(r, flo), fhi);
      q[k] = _mm256_add_epi32(_mm256_cvtps_epi32(r), zc);
    }
    /* in range already, so the saturating packs only narrow */
    store32(y + i, _mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]), p->sgn);
  }
}

/* qadd_avx2 for a node with p->lean: the quotient goes straight to int32 (VCVTPS2DQ rounds half
   to even as rintf does, in the default rounding mode both use), the zero point is added with
   saturation in int16 and the final pack saturates to the 8-bit range: for quotients below 2^30
   that is the reference's rint, clamp and + zc, byte for byte. */
TARGET_NOFMA static void qadd_lean(const qadd_params *p, const uint8_t *a, size_t a_step,
                                   const uint8_t *b, size_t b_step, uint8_t *y, size_t n) {
  const qadd_vec v = qadd_vec_of(p, a, a_step, b, b_step);
  const __m256i zc = _mm256_set1_epi16((int16_t)p->zc);
  for (size_t i = 0; i < n; i += 32) {
    __m256i q[4];
    for (int k = 0; k < 4; k++)
      q[k] = _mm256_cvtps_epi32(quot8(&v, p->sgn, a, a_step, b, b_step, i + 8 * (size_t)k));
    store32(y + i, _mm256_adds_epi16(_mm256_packs_epi32(q[0], q[1]), zc),
            _mm256_adds_epi16(_mm256_packs_epi32(q[2], q[3]), zc), p->sgn);
  }
}

/* qadd_lean with 16 lanes per vector, 64 codes per step: the division, which bounds the loop,
   costs one VDIVPS per 16 lanes instead of 8 (Zen 5: the same time per instruction, so half per
   code; ResNet-50 int8's 56x56x256 adds 102 -> 60 us). The saturating packs work in 128-bit lanes,
   so the 16 dwords of bytes come out lane-major and one VPERMD puts them in order. */
#define TARGET_512 __attribute__((target("avx2,avx512f,avx512bw")))

TARGET_512 static inline __m512 deq16(const uint8_t *p, bool sgn, __m512i z, __m512 s) {
  __m128i b = _mm_loadu_si128((const __m128i *)p);
  __m512i v = sgn ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(v, z)), s);
}

TARGET_512 static void qadd_lean512(const qadd_params *p, const uint8_t *a, size_t a_step,
                                    const uint8_t *b, size_t b_step, uint8_t *y, size_t n) {
  const __m512i za = _mm512_set1_epi32(p->za), zb = _mm512_set1_epi32(p->zb);
  const __m512 sa = _mm512_set1_ps(p->sa), sb = _mm512_set1_ps(p->sb), sc = _mm512_set1_ps(p->sc);
  const __m512 ca = _mm512_set1_ps(a_step ? 0.0f : deq1(a, p->sgn, p->za, p->sa));
  const __m512 cb = _mm512_set1_ps(b_step ? 0.0f : deq1(b, p->sgn, p->zb, p->sb));
  const __m512i zc = _mm512_set1_epi16((int16_t)p->zc);
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  for (size_t i = 0; i < n; i += 64) {
    __m512i q[4];
    for (int k = 0; k < 4; k++) {
      size_t e = i + 16 * (size_t)k;
      __m512 va = a_step ? deq16(a + e, p->sgn, za, sa) : ca;
      __m512 vb = b_step ? deq16(b + e, p->sgn, zb, sb) : cb;
      q[k] = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_add_ps(va, vb), sc));
    }
    __m512i w01 = _mm512_adds_epi16(_mm512_packs_epi32(q[0], q[1]), zc);
    __m512i w23 = _mm512_adds_epi16(_mm512_packs_epi32(q[2], q[3]), zc);
    __m512i bytes = p->sgn ? _mm512_packs_epi16(w01, w23) : _mm512_packus_epi16(w01, w23);
    _mm512_storeu_si512(y + i, _mm512_permutexvar_epi32(order, bytes));
  }
}

/* Any n: whole blocks of 64 (wide) and 32 in place, the tail through a padded copy. */
static void qadd_row(const qadd_params *p, const uint8_t *a, size_t a_step, const uint8_t *b,
                     size_t b_step, uint8_t *y, size_t n) {
  void (*run)(const qadd_params *, const uint8_t *, size_t, const uint8_t *, size_t, uint8_t *,
              size_t) = p->lean ? qadd_lean : qadd_avx2;
  if (p->wide) {
    size_t w = n / 64 * 64;
    if (w) qadd_lean512(p, a, a_step, b, b_step, y, w);
    a += w * a_step, b += w * b_step, y += w, n -= w;
  }
  size_t body = n / 32 * 32, tail = n - body;
  if (body) run(p, a, a_step, b, b_step, y, body);
  if (!tail) return;
  uint8_t ta[32] = {0}, tb[32] = {0}, ty[32];
  memcpy(ta, a_step ? a + body : a, a_step ? tail : 1);
  memcpy(tb, b_step ? b + body : b, b_step ? tail : 1);
  run(p, ta, a_step, tb, b_step, ty, 32);
  memcpy(y + body, ty, tail);
}
#endif

/* y viewed as rows x inner, with a's and b's element strides (0 where broadcast) per outer dim. */
typedef struct qadd_job {
  const qadd_params *p;
  const uint8_t *a, *b;
  uint8_t *y;
  int outer_rank;
  const int64_t *dims;       /* y's dims */
  const int64_t *as, *bs;    /* broadcast strides */
  size_t inner, a_step, b_step, chunk;
} qadd_job;

static void qadd_rows(void *arg, size_t r0, size_t r1) {
  const qadd_job *j = arg;
#ifdef KILN__QGEMM_X86
  for (size_t r = r0; r < r1; r++) {
    if (j->outer_rank == 0) { /* one row split in chunks */
      size_t e0 = r * j->chunk, n = KILN__MIN(j->chunk, j->inner - e0);
      qadd_row(j->p, j->a + e0 * j->a_step, j->a_step, j->b + e0 * j->b_step, j->b_step,
               j->y + e0, n);
      continue;
    }
    size_t rem = r;
    int64_t ao = 0, bo = 0;
    for (int d = j->outer_rank - 1; d >= 0; d--) {
      size_t i = rem % (size_t)j->dims[d];
      rem /= (size_t)j->dims[d];
      ao += (int64_t)i * j->as[d], bo += (int64_t)i * j->bs[d];
    }
    qadd_row(j->p, j->a + ao, j->a_step, j->b + bo, j->b_step, j->y + r * j->inner, j->inner);
  }
#else
  (void)j, (void)r0, (void)r1;
#endif
}

static kiln_status qadd_execute(kiln__kctx *c, void *state) {
  const isa_state *s = state;
  const kiln_tensor *a = c->in[0], *b = opt_in(c, 3);
  kiln_tensor *y = c->out[0];
  qadd_params p;
#ifndef KILN__QGEMM_X86
  (void)s, (void)p;
  return c->node->op->run(c);
#endif
  if (s->isa == KILN__QISA_GENERIC || !a || !b || !is_q8(a->dtype) || b->dtype != a->dtype ||
      y->dtype != a->dtype || !scalar_f32(c->in[1], &p.sa) || !scalar_f32(opt_in(c, 4), &p.sb) ||
      !scalar_f32(opt_in(c, 6), &p.sc) || !zp_scalar(opt_in(c, 2), a->dtype, &p.za) ||
      !zp_scalar(opt_in(c, 5), a->dtype, &p.zb) || !zp_scalar(opt_in(c, 7), a->dtype, &p.zc))
    return c->node->op->run(c);
  p.sgn = a->dtype == KILN_DTYPE_INT8;
  p.lean = qadd_lean_ok(&p);
  p.wide = false;
#ifdef KILN__QGEMM_X86
  p.wide = p.lean && s->isa == KILN__QISA_AVX512VNNI && __builtin_cpu_supports("avx512bw");
#endif
  int rank = y->rank;
  int64_t as[KILN_MAX_RANK], bs[KILN_MAX_RANK], ra[KILN_MAX_RANK];
  kiln__bcast_strides(a, rank, y->dims, as);
  kiln__bcast_strides(b, rank, y->dims, bs);
  kiln__strides(rank, y->dims, ra);
  /* the trailing dims where each operand is contiguous (stride = y's) or constant (0) */
  int split = rank;
  bool a_cont = true, b_cont = true, a_zero = true, b_zero = true;
  while (split > 0) {
    int d = split - 1;
    if (y->dims[d] == 1) {
      split--;
      continue;
    }
    bool ac = a_cont && as[d] == ra[d], az = a_zero && as[d] == 0;
    bool bc = b_cont && bs[d] == ra[d], bz = b_zero && bs[d] == 0;
    if (!(ac || az) || !(bc || bz)) break;
    a_cont = ac, a_zero = az, b_cont = bc, b_zero = bz;
    split--;
  }
  size_t inner = 1, rows = 1;
  for (int d = split; d < rank; d++) inner *= (size_t)y->dims[d];
  for (int d = 0; d < split; d++) rows *= (size_t)y->dims[d];
  if (!kiln_tensor_count(y)) return KILN_OK;
  qadd_job j = {&p,   a->data, b->data, y->data, split,       y->dims,
                as,   bs,      inner,   a_cont ? 1 : 0, b_cont ? 1 : 0, 0};
  size_t jobs = rows;
  if (rows == 1) { /* one contiguous block: chunks of it */
    j.outer_rank = 0;
    j.chunk = 16384;
    jobs = (inner + j.chunk - 1) / j.chunk;
  }
  kiln__parallel_for(kiln__pool_for(c->pool, 4.0 * (double)kiln_tensor_count(y)), jobs, qadd_rows,
                     &j);
  return KILN_OK;
}

/* ---- QLinearGlobalAveragePool ---------------------------------------------------------------- */

typedef struct qgap_job {
  const uint8_t *x;
  uint8_t *y;
  bool sgn, last;
  size_t ch, m;
  int32_t zx, zy, lo, hi;
  float mult;
} qgap_job;

static inline uint8_t requant(const qgap_job *j, int32_t acc) {
  float r = rintf((float)(acc - j->zx * (int32_t)j->m) * j->mult);
  if (r != r) r = 0.0f;
  double q = (double)r + j->zy;
  return (uint8_t)(q < j->lo ? j->lo : q > j->hi ? j->hi : (int32_t)q);
}

#ifdef KILN__QGEMM_X86
/* The sum of n codes; exact in int32 for n < 2^23. */
TARGET_NOFMA static int32_t sum8_avx2(const uint8_t *p, size_t n, bool sgn) {
  __m256i acc = _mm256_setzero_si256();
  size_t i = 0;
  const __m256i bias = _mm256_set1_epi8((char)0x80);
  for (; i + 32 <= n; i += 32) {
    __m256i v = _mm256_loadu_si256((const __m256i *)(p + i));
    if (sgn) v = _mm256_xor_si256(v, bias); /* s8 + 128 as u8; the 128s come off below */
    __m256i w = _mm256_sad_epu8(v, _mm256_setzero_si256()); /* 4 x u64 sums of 8 bytes */
    acc = _mm256_add_epi64(acc, w);
  }
  int64_t lanes[4];
  _mm256_storeu_si256((__m256i *)lanes, acc);
  int64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  if (sgn) s -= 128 * (int64_t)i;
  for (; i < n; i++) s += sgn ? (int8_t)p[i] : p[i];
  return (int32_t)s;
}
#endif

static int32_t sum8(const uint8_t *p, size_t n, bool sgn, bool avx2) {
#ifdef KILN__QGEMM_X86
  if (avx2) return sum8_avx2(p, n, sgn);
#endif
  (void)avx2;
  int32_t s = 0;
  for (size_t i = 0; i < n; i++) s += sgn ? (int8_t)p[i] : p[i];
  return s;
}

typedef struct qgap_args {
  const qgap_job *j;
  bool avx2;
} qgap_args;

/* NCHW: planes [p0, p1) of (batch, channel), each contiguous. */
static void qgap_planes(void *arg, size_t p0, size_t p1) {
  const qgap_args *ga = arg;
  const qgap_job *j = ga->j;
  for (size_t pl = p0; pl < p1; pl++) j->y[pl] = requant(j, sum8(j->x + pl * j->m, j->m, j->sgn, ga->avx2));
}

static kiln_status qgap_execute(kiln__kctx *c, void *state) {
  const isa_state *s = state;
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  float xs, ys;
  qgap_job j = {0};
  if (!is_q8(x->dtype) || x->rank < 3 || y->dtype != x->dtype || c->n_in != 5 ||
      !scalar_f32(c->in[1], &xs) || !scalar_f32(c->in[3], &ys) ||
      !zp_scalar(c->in[2], x->dtype, &j.zx) || !zp_scalar(c->in[4], x->dtype, &j.zy) ||
      !c->in[2] || !c->in[4])
    return c->node->op->run(c);
  j.last = kiln__attr_int(c->node, "channels_last", 0) != 0;
  j.sgn = x->dtype == KILN_DTYPE_INT8;
  j.x = x->data, j.y = y->data;
  size_t n = (size_t)x->dims[0];
  j.ch = (size_t)x->dims[j.last ? x->rank - 1 : 1];
  j.m = 1;
  for (int d = 2; d < x->rank; d++) j.m *= (size_t)x->dims[j.last ? d - 1 : d];
  if (j.m >= (1u << 23)) return c->node->op->run(c); /* int32 sums of the reference */
  j.mult = xs / (ys * (float)j.m);
  j.lo = j.sgn ? -128 : 0, j.hi = j.sgn ? 127 : 255;
  bool avx2 = s->isa != KILN__QISA_GENERIC;
  if (!j.last) {
    qgap_args ga = {&j, avx2};
    kiln__parallel_for(kiln__pool_for(c->pool, (double)kiln_tensor_count(x)), n * j.ch,
                       qgap_planes, &ga);
    return KILN_OK;
  }
  /* channels_last: rows of ch codes added up (int32 per channel in the scratch) */
  int32_t *acc = c->scratch;
  for (size_t b = 0; b < n; b++) {
    memset(acc, 0, j.ch * sizeof *acc);
    const uint8_t *xb = j.x + b * j.m * j.ch;
    for (size_t e = 0; e < j.m; e++)
      for (size_t k = 0; k < j.ch; k++)
        acc[k] += j.sgn ? (int8_t)xb[e * j.ch + k] : xb[e * j.ch + k];
    for (size_t k = 0; k < j.ch; k++) j.y[b * j.ch + k] = requant(&j, acc[k]);
  }
  return KILN_OK;
}

static size_t qgap_scratch(const kiln__kctx *c, void *state) {
  (void)state;
  const kiln_tensor *x = c->in[0];
  return x->rank >= 3 ? (size_t)x->dims[x->rank - 1] * sizeof(int32_t) : 0;
}

const kiln__cpu_kernel kiln__cpu_qadd_kernels[] = {
    {"QLinearAdd", any_supports, isa_prepare, isa_release, qadd_execute, NULL, "com.microsoft"},
    {"QLinearGlobalAveragePool", any_supports, isa_prepare, isa_release, qgap_execute,
     qgap_scratch, "com.microsoft"},
    {NULL},
};
