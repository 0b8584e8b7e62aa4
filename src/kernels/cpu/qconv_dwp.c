/* Integer 3x3 depthwise convolution with a plane's output columns in the lanes (AVX512-VBMI and
 * VNNI; see qconv_dw.h).
 *
 * qconv_dwc.c puts 16 channels in the lanes, which costs a 16 x 16 byte transpose on the way in
 * (four per output block at stride 2) and another on the way out: about four instructions per
 * output, and MobileNetV2's int8 depthwise layers were 1.3-1.7x ONNX Runtime's time. Here one
 * VPDPBUSD takes a whole kernel row for 16 outputs of a row: VPERMB gathers, for output lane j,
 * the input bytes j*s .. j*s + 3 of a 64-byte masked load (the fourth against a zero weight), so
 * a 16-output block is three loads, three permutes, three VPDPBUSD and the requantization (about
 * one instruction per output). Planes narrower than 16 outputs (MobileNetV2's 14x14 and 7x7) run
 * as one flat run of outputs instead, in blocks planned once per node (below).
 *
 * VPDPBUSD multiplies unsigned by signed bytes, exact in int32: the weights must be int8 with a
 * zero point of 0 (Kiln's and ORT's symmetric weights; others take qconv_dwc.c). sum (x - zx) w
 * is computed as sum x w - zx sum w: padding bytes are loaded as zx (the reference pads with zx,
 * whose term is then 0), and int8 inputs are flipped to uint8 (x + 128, zx + 128). The
 * requantization is qconv_dwc.c's float expression, so the output is byte-identical to the
 * reference. */
#include "kernels/cpu/qconv_dw.h"

#include "core/threadpool.h"

#ifdef KILN__QGEMM_X86
#include <immintrin.h>
#define TARGET __attribute__((target("avx2,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")))
#define INLINE TARGET static inline __attribute__((always_inline))

#define PL_MAX 8 /* left padding the first block's permute absorbs (it needs pl + 15 s + 3 <= 64) */

bool kiln__qdwp_supported(void) {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
         __builtin_cpu_supports("avx512vbmi");
}

bool kiln__qdwp_fits(const kiln__qdw_args *a) {
  if (a->kh != 3 || a->kw != 3 || a->dh != 1 || a->dw != 1 || a->sh != a->sw ||
      (a->sw != 1 && a->sw != 2) || a->pt < 0 || a->pl < 0 || a->pl > PL_MAX ||
      a->kind == KILN__QOUT_I32 || !a->w_signed || !a->n || !a->c || !a->oh || !a->ow)
    return false;
  if (a->zw.n) { /* int8 weights: their zero point must be 0 */
    const uint8_t *z = a->zw.p;
    for (size_t i = 0; i < a->zw.n; i++)
      if (z[i]) return false;
  }
  return true;
}

/* Lanes [lo, hi) of a 64-lane mask (0 <= lo <= hi <= 64). */
static inline __mmask64 lanes(size_t lo, size_t hi) {
  uint64_t up = hi >= 64 ? ~0ull : (1ull << hi) - 1, down = lo >= 64 ? ~0ull : (1ull << lo) - 1;
  return (__mmask64)(up & ~down);
}

/* VPERMB indices: lane j's bytes j s + 0..3 (idx); the first block's load starts at column 0,
   not -pl: its indices are pl lower, the ones below 0 wrapping to the top lanes, which the load's
   mask leaves at zx (idx0). */
TARGET static void indices(size_t s, size_t pl, __m512i *idx, __m512i *idx0) {
  _Alignas(64) uint8_t ib[64], ib0[64];
  for (size_t i = 0; i < 64; i++) {
    ib[i] = (uint8_t)(i / 4 * s + i % 4);
    ib0[i] = (uint8_t)((ib[i] - pl) & 63);
  }
  *idx = _mm512_load_si512(ib);
  *idx0 = _mm512_load_si512(ib0);
}

/* A plane's constants: weight rows as byte quads (the fourth 0), the accumulator's start (bias -
   zx sum w), the requantization. */
typedef struct pconst {
  __m512i wq[3], acc0, zy, pad_u;
  __m512 mult, lo_z, hi_z;
} pconst;

INLINE void pconst_init(const kiln__qdw_args *a, size_t ch, const bool xs, pconst *k) {
  const int8_t *wt = (const int8_t *)a->wt + ch * 9;
  int32_t zxu = xs ? a->zx + 128 : a->zx, sumw = 0;
  for (int ky = 0; ky < 3; ky++) {
    const int8_t *r = wt + 3 * ky;
    uint32_t q = (uint32_t)(uint8_t)r[0] | (uint32_t)(uint8_t)r[1] << 8 |
                 (uint32_t)(uint8_t)r[2] << 16;
    k->wq[ky] = _mm512_set1_epi32((int32_t)q);
    sumw += r[0] + r[1] + r[2];
  }
  k->acc0 = _mm512_set1_epi32((a->bias ? a->bias[ch] : 0) - zxu * sumw);
  k->mult = _mm512_set1_ps(a->mult[ch]);
  int32_t lo = a->kind == KILN__QOUT_U8 ? 0 : -128, hi = a->kind == KILN__QOUT_U8 ? 255 : 127;
  k->lo_z = _mm512_set1_ps((float)(lo - a->zy));
  k->hi_z = _mm512_set1_ps((float)(hi - a->zy));
  k->zy = _mm512_set1_epi32(a->zy);
  k->pad_u = _mm512_set1_epi8((char)zxu);
}

/* The requantized bytes of 16 accumulators: each lane's low byte (the value is in the output
   type's range: exact) by VPERMB; gcc turns VPMOVDB + a store into VPMOVDB to memory, which is
   microcoded on Zen 4/5. */
INLINE __m128i requant(__m512i acc, const pconst *k) {
  const __m512i low = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3c383430,
                                       0x2c282420, 0x1c181410, 0x0c080400);
  __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), k->mult);
  __m512i q = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(f, k->lo_z), k->hi_z));
  return _mm512_castsi512_si128(_mm512_permutexvar_epi8(low, _mm512_add_epi32(q, k->zy)));
}

INLINE void store(uint8_t *y, size_t cnt, __m128i bytes) {
  if (cnt >= 16) _mm_storeu_si128((__m128i *)y, bytes);
  else _mm_mask_storeu_epi8(y, (__mmask16)((1u << cnt) - 1), bytes);
}

/* One plane by output rows, 16 columns per block (rows of 16 and more). */
INLINE void plane_rows(const kiln__qdw_args *a, size_t pi, const size_t s, const bool xs,
                       const __m512i idx, const __m512i idx0) {
  size_t w = a->w, ow = a->ow, pl = (size_t)a->pl;
  const uint8_t *x = (const uint8_t *)a->x + pi * a->h * w;
  uint8_t *y = (uint8_t *)a->y + pi * a->oh * ow;
  pconst k;
  pconst_init(a, pi % a->c, xs, &k);
  const __m512i fill = _mm512_set1_epi8((char)a->zx), flip = _mm512_set1_epi8((char)0x80);
  const __mmask64 m0 = lanes(0, KILN__MIN(w, 64 - pl));
  for (size_t oy = 0; oy < a->oh; oy++) {
    const uint8_t *row[3];
    int64_t iy0 = (int64_t)(oy * s) - a->pt;
    for (int ky = 0; ky < 3; ky++) {
      int64_t iy = iy0 + ky;
      row[ky] = iy >= 0 && iy < (int64_t)a->h ? x + (size_t)iy * w : NULL;
    }
    uint8_t *yr = y + oy * ow;
    for (size_t ox0 = 0; ox0 < ow; ox0 += 16) {
      size_t base = ox0 * s - pl; /* ox0 > 0: >= 16 s - PL_MAX > 0 */
      __m512i ix = ox0 ? idx : idx0;
      __mmask64 m = ox0 ? lanes(0, w > base ? KILN__MIN(w - base, (size_t)64) : 0) : m0;
      size_t off = ox0 ? base : 0;
      __m512i acc = k.acc0;
      for (int ky = 0; ky < 3; ky++) {
        __m512i v = k.pad_u;
        if (row[ky]) {
          v = _mm512_mask_loadu_epi8(fill, m, row[ky] + off);
          if (xs) v = _mm512_xor_si512(v, flip);
          v = _mm512_permutexvar_epi8(ix, v);
        }
        acc = _mm512_dpbusd_epi32(acc, v, k.wq[ky]);
      }
      store(yr + ox0, ow - ox0, requant(acc, &k));
    }
  }
}

/* Small planes (rows under 16 outputs) as one flat run of outputs, in blocks of up to 16 whose
   taps all lie in one 64-byte window of the input plane. Each block's window offset, load mask,
   and per kernel row the VPERMB indices and the mask of real (not padding) taps are made once per
   node at session creation (kiln__qdwp_plan_make: made per call, it cost MobileNetV2 ~40 us a
   run); a plane is then per block one load, three masked permutes (padding lanes take zx) and
   three VPDPBUSD, and its output bytes are contiguous. 960 x 7 x 7: 4 blocks a plane where rows
   take 7, 27 -> 14 us. */
#define FB_MAX 32

typedef struct fblock {
  _Alignas(64) uint8_t idx[3][64];
  uint64_t tap[3]; /* lanes that read the input (others: padding) */
  uint64_t load;   /* the window's bytes inside the plane */
  size_t off, p0, cnt;
} fblock;

struct kiln__qdwp_plan {
  fblock b[FB_MAX];
  size_t nb;
  size_t h, w, oh, ow; /* the geometry it was made for */
  int64_t s, pt, pl;
};
typedef struct kiln__qdwp_plan flat_plan;

/* Greedy blocks of outputs whose real taps span at most 64 bytes; false when the plane needs more
   blocks than FB_MAX or than the row kernel's (then it runs by rows). */
static bool flat_plan_make(size_t h, size_t w, size_t oh, size_t ow, int64_t s, int64_t pt,
                           int64_t pl, flat_plan *fp) {
  size_t np = oh * ow, hw = h * w;
  memset(fp, 0, sizeof *fp);
  fp->h = h, fp->w = w, fp->oh = oh, fp->ow = ow, fp->s = s, fp->pt = pt, fp->pl = pl;
  if (ow >= 16 || !np) return false;
  for (size_t p = 0; p < np;) {
    if (fp->nb == FB_MAX || fp->nb == oh) return false;
    fblock *b = &fp->b[fp->nb++];
    int64_t lo = INT64_MAX, hi = -1;
    size_t cnt = 0;
    while (cnt < 16 && p + cnt < np) {
      int64_t oy = (int64_t)((p + cnt) / ow), ox = (int64_t)((p + cnt) % ow), l = INT64_MAX, u = -1;
      for (int t = 0; t < 9; t++) {
        int64_t iy = oy * s - pt + t / 3, ix = ox * s - pl + t % 3;
        if (iy < 0 || iy >= (int64_t)h || ix < 0 || ix >= (int64_t)w) continue;
        l = KILN__MIN(l, iy * (int64_t)w + ix), u = KILN__MAX(u, iy * (int64_t)w + ix);
      }
      int64_t nlo = KILN__MIN(lo, l), nhi = KILN__MAX(hi, u);
      if (cnt && u >= 0 && nhi - nlo >= 64) break;
      lo = nlo, hi = nhi, cnt++;
    }
    if (hi < 0) lo = 0; /* every tap padding */
    b->off = (size_t)lo, b->p0 = p, b->cnt = cnt;
    b->load = lanes(0, KILN__MIN(hw - b->off, (size_t)64));
    for (size_t j = 0; j < cnt; j++) {
      int64_t oy = (int64_t)((p + j) / ow), ox = (int64_t)((p + j) % ow);
      for (int t = 0; t < 9; t++) {
        int64_t iy = oy * s - pt + t / 3, ix = ox * s - pl + t % 3;
        if (iy < 0 || iy >= (int64_t)h || ix < 0 || ix >= (int64_t)w) continue;
        size_t lane = 4 * j + (size_t)(t % 3);
        b->idx[t / 3][lane] = (uint8_t)(iy * (int64_t)w + ix - lo);
        b->tap[t / 3] |= 1ull << lane;
      }
    }
    p += cnt;
  }
  return true;
}

kiln__qdwp_plan *kiln__qdwp_plan_make(size_t h, size_t w, size_t oh, size_t ow, int64_t s,
                                      int64_t pt, int64_t pl) {
  flat_plan *fp = kiln__aligned_alloc(sizeof *fp);
  if (fp && !flat_plan_make(h, w, oh, ow, s, pt, pl, fp)) kiln__aligned_free(fp), fp = NULL;
  return fp;
}

void kiln__qdwp_plan_free(kiln__qdwp_plan *p) { kiln__aligned_free(p); }

static bool plan_matches(const flat_plan *p, const kiln__qdw_args *a) {
  return p && p->h == a->h && p->w == a->w && p->oh == a->oh && p->ow == a->ow && p->s == a->sw &&
         p->pt == a->pt && p->pl == a->pl;
}

INLINE void plane_flat(const kiln__qdw_args *a, const flat_plan *fp, size_t pi, const bool xs) {
  const uint8_t *x = (const uint8_t *)a->x + pi * a->h * a->w;
  uint8_t *y = (uint8_t *)a->y + pi * a->oh * a->ow;
  pconst k;
  pconst_init(a, pi % a->c, xs, &k);
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  size_t i = 0;
  for (; i + 2 <= fp->nb; i += 2) { /* two independent chains per step */
    const fblock *b = &fp->b[i], *c = b + 1;
    __m512i v = _mm512_maskz_loadu_epi8(b->load, x + b->off), acc = k.acc0;
    __m512i u = _mm512_maskz_loadu_epi8(c->load, x + c->off), acd = k.acc0;
    if (xs) v = _mm512_xor_si512(v, flip), u = _mm512_xor_si512(u, flip);
    for (int ky = 0; ky < 3; ky++) {
      __m512i t = _mm512_mask_permutexvar_epi8(k.pad_u, b->tap[ky],
                                               _mm512_load_si512(b->idx[ky]), v);
      __m512i r = _mm512_mask_permutexvar_epi8(k.pad_u, c->tap[ky],
                                               _mm512_load_si512(c->idx[ky]), u);
      acc = _mm512_dpbusd_epi32(acc, t, k.wq[ky]);
      acd = _mm512_dpbusd_epi32(acd, r, k.wq[ky]);
    }
    __m128i qb = requant(acc, &k), qc = requant(acd, &k);
    store(y + b->p0, b->cnt, qb);
    store(y + c->p0, c->cnt, qc);
  }
  for (; i < fp->nb; i++) {
    const fblock *b = &fp->b[i];
    __m512i v = _mm512_maskz_loadu_epi8(b->load, x + b->off), acc = k.acc0;
    if (xs) v = _mm512_xor_si512(v, flip);
    for (int ky = 0; ky < 3; ky++) {
      __m512i t = _mm512_mask_permutexvar_epi8(k.pad_u, b->tap[ky],
                                               _mm512_load_si512(b->idx[ky]), v);
      acc = _mm512_dpbusd_epi32(acc, t, k.wq[ky]);
    }
    store(y + b->p0, b->cnt, requant(acc, &k));
  }
}

typedef struct dwp_job {
  const kiln__qdw_args *a;
  const flat_plan *flat; /* or NULL: by rows */
} dwp_job;

TARGET static void planes(void *arg, size_t i0, size_t i1) {
  const dwp_job *j = arg;
  const kiln__qdw_args *a = j->a;
  bool xs = a->x_signed;
  if (j->flat) {
    for (size_t i = i0; i < i1; i++) xs ? plane_flat(a, j->flat, i, true)
                                        : plane_flat(a, j->flat, i, false);
    return;
  }
  __m512i idx, idx0;
  indices((size_t)a->sw, (size_t)a->pl, &idx, &idx0);
  for (size_t i = i0; i < i1; i++) { /* constant stride and signedness inlined */
    if (a->sw == 1) xs ? plane_rows(a, i, 1, true, idx, idx0) : plane_rows(a, i, 1, false, idx, idx0);
    else xs ? plane_rows(a, i, 2, true, idx, idx0) : plane_rows(a, i, 2, false, idx, idx0);
  }
}

void kiln__qdwp(struct kiln__pool *pool, const kiln__qdw_args *a) {
  _Alignas(64) flat_plan fp; /* when the session's plan is for another geometry */
  dwp_job j = {a, NULL};
  if (plan_matches(a->plan, a)) j.flat = a->plan;
  else if (a->ow < 16 && flat_plan_make(a->h, a->w, a->oh, a->ow, a->sw, a->pt, a->pl, &fp))
    j.flat = &fp;
  double work = (double)(a->n * a->c) * (double)(a->oh * a->ow) * 9.0;
  kiln__parallel_for(kiln__pool_for(pool, work), a->n * a->c, planes, &j);
}
#else
kiln__qdwp_plan *kiln__qdwp_plan_make(size_t h, size_t w, size_t oh, size_t ow, int64_t s,
                                      int64_t pt, int64_t pl) {
  (void)h, (void)w, (void)oh, (void)ow, (void)s, (void)pt, (void)pl;
  return NULL;
}

void kiln__qdwp_plan_free(kiln__qdwp_plan *p) { (void)p; }
#endif
