/* Optimized CPU kernels: MaxPool (2-D, float32, uint8 or int8, NCHW, no Indices output, dilation
 * 1) and GlobalAveragePool (float32).
 *
 * MaxPool is separable: per output row, the max over the window's input rows (clipped to the
 * image, so padding and ceil_mode need no special case; one pass, one store) goes into a row
 * buffer padded with -inf, and the output row is the max over kw taps of that buffer at the
 * stride, 8 outputs per AVX2 step (stride 2: one in-lane shuffle per tap, one permute per step);
 * the row ends are masked vector steps. NaN propagates as in the reference kernel, and the values
 * are the reference's exactly, but where a window's maximum is a zero held by both +0 and -0 the
 * sign may differ: the reference takes the first in row-major order, this kernel the first down
 * the columns (taking rows first, so as to match, ran 1.5-3x slower: bench/RESULTS.md). With
 * AVX-512, 3-wide windows at stride 2 on narrow outputs take the taps first instead, in strips
 * (mp_planes_k3s2_avx512 says why). 8-bit tensors (the integer chains fuse-qdq builds) take the
 * rows-first route on bytes, 32 outputs per AVX2 step (int8 flipped to unsigned order by its top
 * bit, so one unsigned max serves both), with the padding at the lowest code; a window entirely
 * in the padding runs the reference kernel. Anything else (other ranks and dtypes, Indices,
 * dilation, wide rows) runs the reference kernel. */
#include <limits.h>
#include <math.h>

#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/sgemm.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include "kernels/cpu/avx2_tail.h"
#define POOL_X86 1
#endif

#define ROWBUF 8192

static bool maybe_f32(const kiln__node *n, const kiln__graph *g) {
  kiln_dtype t = n->n_in > 0 && n->in[0] >= 0 ? g->values[n->in[0]].dtype : KILN_DTYPE_UNDEFINED;
  return t == KILN_DTYPE_UNDEFINED || t == KILN_DTYPE_FLOAT;
}

static kiln_status prepare_isa(const kiln__node *n, const kiln__graph *g, void **state,
                               kiln_error *err) {
  (void)n, (void)g;
  kiln__isa *isa = kiln__calloc(1, sizeof *isa);
  if (!isa) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing %s", n->op_type);
  kiln_status st = kiln__isa_select(isa, err);
  if (st != KILN_OK) {
    kiln__free(isa);
    return st;
  }
  *state = isa;
  return KILN_OK;
}

static void release_isa(void *state) { kiln__free(state); }

/* ---- MaxPool --------------------------------------------------------------------------------- */

typedef struct mp_job {
  kiln__isa isa;
  const float *x;
  float *y;
  size_t h, w, oh, ow, kh, kw, sh, sw, len, planes;
  size_t bands; /* float: units are band-major (band u / planes of plane u % planes), 8-bit: 1 */
  int64_t pt, pl;
  uint8_t flip; /* 8-bit: 0x80 for int8 (its order as unsigned bytes), 0 for uint8 */
} mp_job;

static inline float max_nan(float a, float b) { return a > b || a != a ? a : b; }

/* Work unit u of a float pool: plane *q, output rows [*r0, *r1). Units go band by band, one band
   per thread, so that with a thread's contiguous range of them (kiln__parallel_for) each thread
   pools the same rows of every plane that the stem conv before it wrote and the 1x1 conv after
   it reads (both cut by pixels), rather than whole planes of the other thread's rows. In the
   host's far vCPU placement SqueezeNet's stem, first pool and squeeze at two threads took
   0.217-0.243 ms this way against 0.260-0.287 with planes; 0.171-0.181 against 0.170-0.178 in
   the close one (bench/RESULTS.md, fourteenth session). Only outputs of 1024 floats a plane or
   more are cut (mp_execute says why). Cutting the depthwise convs by rows the same way was
   10-40% slower per node in the close placement and is not done. */
static inline void mp_unit(const mp_job *j, size_t u, size_t *q, size_t *r0, size_t *r1) {
  size_t b = u / j->planes;
  *q = u % j->planes;
  *r0 = b * j->oh / j->bands;
  *r1 = (b + 1) * j->oh / j->bands;
}

static void mp_row_generic(const mp_job *j, const float *v, float *y) {
  for (size_t ox = 0; ox < j->ow; ox++) {
    const float *r = v + ox * j->sw;
    float m = r[0];
    for (size_t kx = 1; kx < j->kw; kx++) m = max_nan(r[kx], m);
    y[ox] = m;
  }
}

/* v[i] = the max over the nr rows x, x + w, ... at column i (the earlier row winning ties). */
static void vcol_generic(float *restrict v, const float *restrict x, size_t w, size_t nr,
                         size_t n) {
  for (size_t i = 0; i < n; i++) {
    float m = x[i];
    for (size_t r = 1; r < nr; r++) m = max_nan(x[r * w + i], m);
    v[i] = m;
  }
}

#ifdef POOL_X86
#define AVX2 __attribute__((target("avx2,fma")))

/* max that returns a when a is NaN (and b when b is: _mm256_max_ps's rule). */
AVX2 static inline __m256 max8(__m256 a, __m256 b) {
  return _mm256_blendv_ps(_mm256_max_ps(a, b), a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
}

#define INLINE_AVX2 AVX2 static inline __attribute__((always_inline))

/* Lanes i < n (n <= 8) set: a row's tail is one masked step (a scalar tail's data-dependent
   compares mispredicted, and cost more than the vector body on 111-wide rows). */
INLINE_AVX2 __m256i tail8(size_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Stride 2: the even columns of r[0..15] in the order 0 2 8 10 4 6 12 14 (one in-lane shuffle);
   the taps are maxed in that order and put right by one permute per 8 outputs. */
INLINE_AVX2 __m256 even8(const float *r) {
  return _mm256_shuffle_ps(_mm256_loadu_ps(r), _mm256_loadu_ps(r + 8), _MM_SHUFFLE(2, 0, 2, 0));
}

/* The bodies take nr and kw as arguments so that the common 2 and 3 inline as constants. */
INLINE_AVX2 void vcol_body(float *restrict v, const float *restrict x, size_t w, size_t nr,
                           size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) { /* two independent chains */
    const float *p = x + i;
    __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    for (size_t r = 1; r < nr; r++) {
      p += w;
      a = max8(_mm256_loadu_ps(p), a);
      b = max8(_mm256_loadu_ps(p + 8), b);
    }
    _mm256_storeu_ps(v + i, a);
    _mm256_storeu_ps(v + i + 8, b);
  }
  for (; i < n; i += 8) {
    __m256i k = tail8(KILN__MIN(n - i, (size_t)8));
    const float *p = x + i;
    __m256 a = _mm256_maskload_ps(p, k);
    for (size_t r = 1; r < nr; r++) p += w, a = max8(_mm256_maskload_ps(p, k), a);
    /* lanes past n back to the padding's -inf, then a whole store (the buffer has room): the
       row step's loads cannot be forwarded from a masked store */
    _mm256_storeu_ps(v + i, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), a, _mm256_castsi256_ps(k)));
  }
}
AVX2 static void vcol_avx2(float *restrict v, const float *restrict x, size_t w, size_t nr,
                           size_t n) {
  if (nr == 3) vcol_body(v, x, w, 3, n);
  else if (nr == 2) vcol_body(v, x, w, 2, n);
  else vcol_body(v, x, w, nr, n);
}

INLINE_AVX2 void row_body(const float *v, float *y, size_t ow, size_t sw, size_t kw) {
  for (size_t ox = 0; ox < ow; ox += 8) {
    /* A short last step moves left to end at the last output when the row has 8: a plain
       store that rewrites a few outputs with the same values, where a masked store (slow on
       AMD) cost about as much as the rest of a 13-output row (SqueezeNet's 256@27). */
    if (ox + 8 > ow && ow >= 8) ox = ow - 8;
    const float *r = v + ox * sw;
    __m256 m;
    if (sw == 1) {
      m = _mm256_loadu_ps(r);
      for (size_t kx = 1; kx < kw; kx++) m = max8(_mm256_loadu_ps(r + kx), m);
    } else {
      m = even8(r);
      for (size_t kx = 1; kx < kw; kx++) m = max8(even8(r + kx), m);
      m = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(m), _MM_SHUFFLE(3, 1, 2, 0)));
    }
    if (ow - ox >= 8) _mm256_storeu_ps(y + ox, m);
    else kiln__avx2_store_head(y + ox, m, ow - ox);
  }
}

AVX2 static void mp_row_avx2(const mp_job *j, const float *v, float *y) {
  if (j->sw == 2 && j->kw == 3) row_body(v, y, j->ow, 2, 3);
  else if (j->sw == 1 && j->kw == 3) row_body(v, y, j->ow, 1, 3);
  else if (j->sw <= 2) row_body(v, y, j->ow, j->sw, j->kw);
  else mp_row_generic(j, v, y);
}

/* AVX-512, kw = 3 at stride 2, outputs up to 32 wide (SqueezeNet's 55 -> 27 and 27 -> 13 pools):
   the plane in strips of 16 output columns. Down a strip, each input row's max over the three
   taps is taken once (two VPERMT2PS pick the even and odd columns of two loads, the third tap
   is the odd ones shifted a lane) into a column of 16-float rows in L1, and each output row is
   the max of its window's rows there: on these planes the rows-first scheme above spends most
   of its time on short rows and their masked tails (49 -> 35 and 38 -> 18 us at one thread).
   On wider planes it does not win (SqueezeNet's 111 -> 55: 73 us, the rows kernel below 65; a
   version that went row by row over all strips, so as to read the input in order, was slower
   still). Columns outside the image load as -inf (masked, so nothing outside the plane is
   read). */
#define AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))

/* a where a is NaN, else max(a, b), which is b where b is NaN: the reference's rule, b being
   the max so far. */
AVX512 static inline __m512 max16(__m512 a, __m512 b) {
  return _mm512_mask_max_ps(a, _mm512_cmp_ps_mask(a, a, _CMP_ORD_Q), a, b);
}

/* Lanes whose column c + i lies in [0, w). */
static inline __mmask16 cols16(int c, int w) {
  int lo = c < 0 ? -c : 0, hi = w - c < 16 ? w - c : 16;
  return hi > lo ? (__mmask16)((1u << hi) - (1u << lo)) : 0;
}

/* 16 floats of row r from column c: a plain load, or at an edge lanes outside the mask -inf
   and not read (the address is computed as an integer: a masked lane's is never accessed, and
   no pointer may leave its object). */
AVX512 static inline __m512 ld16(const float *r, int c, __mmask16 m, bool edge) {
  if (!edge) return _mm512_loadu_ps(r + c);
  const float *p = (const float *)((uintptr_t)r + (uintptr_t)((intptr_t)c * (intptr_t)sizeof *r));
  return _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, p);
}

static bool mp_k3s2_avx512_fits(const mp_job *j) {
  return j->kw == 3 && j->sw == 2 && j->ow <= 32 && j->h * 16 <= ROWBUF &&
         j->w < (size_t)INT_MAX / 2;
}

AVX512 static void mp_planes_k3s2_avx512(void *arg, size_t q0, size_t q1) {
  const mp_job *j = arg;
  _Alignas(64) float hbuf[ROWBUF];
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const int w = (int)j->w;
  for (size_t u = q0; u < q1; u++) {
    size_t q, oy0, oy1;
    mp_unit(j, u, &q, &oy0, &oy1);
    if (oy0 >= oy1) continue;
    const float *x = j->x + q * j->h * j->w;
    float *y = j->y + q * j->oh * j->ow;
    /* The input rows [ir0, ir1) the band's windows read. */
    const size_t ir0 = (size_t)KILN__MAX((int64_t)(oy0 * j->sh) - j->pt, (int64_t)0);
    const size_t ir1 =
        (size_t)KILN__MIN((int64_t)j->h, (int64_t)((oy1 - 1) * j->sh + j->kh) - j->pt);
    for (size_t ox = 0; ox < j->ow; ox += 16) {
      int c0 = (int)(ox * 2) - (int)j->pl;
      bool edge = c0 < 0 || c0 + 33 > w;
      /* One load per 16 columns (unaligned loads that split cache lines cost about two on Zen
         4/5): taps 1 and 2 are the even and odd columns from c0 + 1, tap 0 tap 2 shifted up a
         lane with column c0 (a broadcast; -inf when it is left of the plane). */
      __mmask16 m0 = cols16(c0 + 1, w), m1 = cols16(c0 + 17, w);
      __mmask16 lo_ok = c0 >= 0 && c0 < w ? 0xffff : 0;
      const int lo_c = KILN__MAX(0, KILN__MIN(c0, w - 1));
      for (size_t r = ir0; r < ir1; r++) {
        const float *xr = x + r * j->w;
        __m512 a = ld16(xr, c0 + 1, m0, edge), b = ld16(xr, c0 + 17, m1, edge);
        __m512 lo =
            _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), lo_ok, _mm512_set1_ps(xr[lo_c]));
        __m512 t2 = _mm512_permutex2var_ps(a, odd, b);
        __m512 m = _mm512_castsi512_ps(
            _mm512_alignr_epi32(_mm512_castps_si512(t2), _mm512_castps_si512(lo), 15));
        m = max16(_mm512_permutex2var_ps(a, even, b), m);
        m = max16(t2, m);
        _mm512_store_ps(hbuf + r * 16, m);
      }
      __mmask16 keep = j->ow - ox >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (j->ow - ox)) - 1);
      for (size_t oy = oy0; oy < oy1; oy++) {
        int64_t y0 = (int64_t)(oy * j->sh) - j->pt;
        int64_t lo = KILN__MAX(y0, (int64_t)0), hi = KILN__MIN(y0 + (int64_t)j->kh, (int64_t)j->h);
        __m512 m = _mm512_set1_ps(-INFINITY); /* a window entirely in the padding */
        if (lo < hi) {
          m = _mm512_load_ps(hbuf + (size_t)lo * 16);
          for (int64_t r = lo + 1; r < hi; r++) m = max16(_mm512_load_ps(hbuf + (size_t)r * 16), m);
        }
        _mm512_mask_storeu_ps(y + oy * j->ow + ox, keep, m);
      }
    }
  }
}

/* AVX-512, kw = 3 at stride 2 on planes more than 32 outputs wide (SqueezeNet's 111 -> 55,
   ResNet's 112 -> 56): mp_planes' rows-first scheme with 16 lanes. An output row's max down its
   window's input rows goes into a -inf bordered row in L1 (one load per 16 columns of each row,
   masked at its end; three rows in straight-line code), and the max across is read from that
   row with aligned loads, two per 16 outputs: taps 0 and 1 are their even and odd columns, tap 2
   tap 0 shifted down a lane with the next float broadcast in, where the AVX2 row makes six
   unaligned loads per 8 outputs. The same order of maxima as mp_planes. 71 -> 65 us (111 -> 55)
   and 64 -> 58 (112 -> 56, 64 planes, one thread); reading the input rows aligned as well, each
   vector a VPERMT2PS of two aligned loads, was slower (95). */
static size_t mp_rows_floats(const mp_job *j) {
  size_t nb = (j->ow + 15) / 16;
  return KILN__MAX(32 * nb + 16, (size_t)j->pl + (j->w + 15) / 16 * 16 + 16);
}

static bool mp_k3s2_rows_avx512_fits(const mp_job *j) {
  return j->kw == 3 && j->sw == 2 && j->ow > 32 && j->w < (size_t)INT_MAX / 2 &&
         mp_rows_floats(j) <= ROWBUF;
}

AVX512 static void mp_planes_k3s2_rows_avx512(void *arg, size_t q0, size_t q1) {
  const mp_job *j = arg;
  _Alignas(64) float buf[ROWBUF];
  const __m512i even =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (size_t i = 0, n = mp_rows_floats(j); i < n; i++) buf[i] = -INFINITY;
  float *v = buf + j->pl; /* v[ix]: input column ix; -inf outside [0, w) */
  const int w = (int)j->w;
  for (size_t u = q0; u < q1; u++) {
    size_t q, oy0, oy1;
    mp_unit(j, u, &q, &oy0, &oy1);
    const float *x = j->x + q * j->h * j->w;
    float *y = j->y + (q * j->oh + oy0) * j->ow;
    for (size_t oy = oy0; oy < oy1; oy++, y += j->ow) {
      int64_t y0 = (int64_t)(oy * j->sh) - j->pt;
      int64_t lo = KILN__MAX(y0, (int64_t)0), hi = KILN__MIN(y0 + (int64_t)j->kh, (int64_t)j->h);
      if (lo >= hi) { /* a window entirely in the padding */
        for (size_t ox = 0; ox < j->ow; ox++) y[ox] = -INFINITY;
        continue;
      }
      const float *x0 = x + (size_t)lo * j->w;
      const size_t nr = (size_t)(hi - lo), ws = j->w;
      int c = 0;
      if (nr == 3) /* the whole window: three rows in straight-line code */
        for (; c + 16 <= w; c += 16) {
          const float *p = x0 + c;
          __m512 a = _mm512_loadu_ps(p);
          a = max16(_mm512_loadu_ps(p + ws), a);
          _mm512_storeu_ps(v + c, max16(_mm512_loadu_ps(p + 2 * ws), a));
        }
      for (; c < w; c += 16) { /* lanes past the row's end load as -inf */
        const __mmask16 m = cols16(c, w);
        const float *p = x0 + c;
        __m512 a = _mm512_mask_loadu_ps(ninf, m, p);
        for (size_t r = 1; r < nr; r++) a = max16(_mm512_mask_loadu_ps(ninf, m, p + r * ws), a);
        _mm512_storeu_ps(v + c, a);
      }
      for (size_t ox = 0; ox < j->ow; ox += 16) {
        const float *r = buf + 2 * ox; /* tap kx of output ox + i is r[2 i + kx] */
        __m512 a = _mm512_load_ps(r), b = _mm512_load_ps(r + 16);
        __m512 t0 = _mm512_permutex2var_ps(a, even, b);
        __m512 t2 = _mm512_castsi512_ps(_mm512_alignr_epi32(
            _mm512_castps_si512(_mm512_set1_ps(r[32])), _mm512_castps_si512(t0), 1));
        __m512 mx = max16(t2, max16(_mm512_permutex2var_ps(a, odd, b), t0));
        if (ox + 16 <= j->ow) _mm512_storeu_ps(y + ox, mx);
        else _mm512_mask_storeu_ps(y + ox, (__mmask16)((1u << (j->ow - ox)) - 1), mx);
      }
    }
  }
}
#endif

static void mp_planes(void *arg, size_t q0, size_t q1) {
  const mp_job *j = arg;
  float buf[ROWBUF];
  void (*row)(const mp_job *, const float *, float *) = mp_row_generic;
  void (*vcol)(float *restrict, const float *restrict, size_t, size_t, size_t) = vcol_generic;
#ifdef POOL_X86
  if (j->isa != KILN__ISA_GENERIC) row = mp_row_avx2, vcol = vcol_avx2;
#endif
  for (size_t i = 0; i < j->len; i++) buf[i] = -INFINITY;
  float *v = buf + j->pl; /* v[ix] for input column ix; -inf outside */
  for (size_t u = q0; u < q1; u++) {
    size_t q, oy0, oy1;
    mp_unit(j, u, &q, &oy0, &oy1);
    const float *x = j->x + q * j->h * j->w;
    float *y = j->y + q * j->oh * j->ow;
    for (size_t oy = oy0; oy < oy1; oy++) {
      int64_t y0 = (int64_t)(oy * j->sh) - j->pt;
      int64_t lo = KILN__MAX(y0, (int64_t)0), hi = KILN__MIN(y0 + (int64_t)j->kh, (int64_t)j->h);
      if (lo >= hi) { /* a window entirely in the padding */
        for (size_t ox = 0; ox < j->ow; ox++) y[oy * j->ow + ox] = -INFINITY;
        continue;
      }
      vcol(v, x + (size_t)lo * j->w, j->w, (size_t)(hi - lo), j->w);
      row(j, buf, y + oy * j->ow);
    }
  }
}

/* 8-bit rows: v[] holds (x ^ flip), unsigned order; max over kw taps at the stride. */
static void qmp_row_generic(const mp_job *j, const uint8_t *v, uint8_t *y, size_t room) {
  (void)room;
  for (size_t ox = 0; ox < j->ow; ox++) {
    const uint8_t *r = v + ox * j->sw;
    uint8_t m = r[0];
    for (size_t kx = 1; kx < j->kw; kx++) m = r[kx] > m ? r[kx] : m;
    y[ox] = m ^ j->flip;
  }
}

/* v[i] = the max over the nr rows x, x + w, ... at column i, in unsigned order (x ^ f). */
static void qvcol_generic(uint8_t *restrict v, const uint8_t *restrict x, size_t w, size_t nr,
                          size_t n, uint8_t f, const uint8_t *end) {
  (void)end;
  for (size_t i = 0; i < n; i++) {
    uint8_t m = x[i] ^ f;
    for (size_t r = 1; r < nr; r++) {
      uint8_t t = x[r * w + i] ^ f;
      m = t > m ? t : m;
    }
    v[i] = m;
  }
}

#ifdef POOL_X86
/* One vertical pass, one store per 32 bytes (it was a clear of the row buffer, then a
   read-modify-write per row, each row's tail through memset + memcpy into a 32-byte copy: libc
   calls and a store-forwarding stall per row). The last step reads whole 32 bytes past the row
   (into the next row: rows of one plane are contiguous) wherever that stays before `end`, the
   end of the input, and the bytes it wrote past n are then cleared back to the padding's 0; a
   scalar loop, whose data-dependent compares mispredict, is left only for the plane rows at the
   very end of the tensor (13- and 27-wide planes were all tail). */
AVX2 static void qvcol_avx2(uint8_t *restrict v, const uint8_t *restrict x, size_t w, size_t nr,
                            size_t n, uint8_t f, const uint8_t *end) {
  __m256i fl = _mm256_set1_epi8((char)f);
  size_t i = 0;
  for (; i < n && (size_t)(end - x) >= (nr - 1) * w + i + 32; i += 32) {
    const uint8_t *p = x + i;
    __m256i a = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), fl);
    for (size_t r = 1; r < nr; r++) {
      p += w;
      a = _mm256_max_epu8(a, _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), fl));
    }
    _mm256_storeu_si256((__m256i *)(v + i), a);
  }
  if (i >= n) { /* the row buffer has 32 bytes of room past n */
    _mm256_storeu_si256((__m256i *)(v + n), _mm256_setzero_si256());
    return;
  }
  qvcol_generic(v + i, x + i, w, nr, n - i, f, end);
}

/* Stride 1: 32 outputs per step. Stride 2: the max over the taps of 32 consecutive bytes, then
   its even bytes (max commutes with taking every other byte): 16 outputs per step. Steps store
   whole where `room` (bytes this job may write from y: the rows after this one are its own and
   written later) allows; only the job's last row ends through a copy (on 13- and 27-wide planes
   that byte loop was every row's end). */
AVX2 static void qmp_row_avx2(const mp_job *j, const uint8_t *v, uint8_t *y, size_t room) {
  if (j->sw > 2) {
    qmp_row_generic(j, v, y, room);
    return;
  }
  __m256i fl = _mm256_set1_epi8((char)j->flip), lo8 = _mm256_set1_epi16(0xff);
  size_t step = j->sw == 1 ? 32 : 16;
  for (size_t ox = 0; ox < j->ow; ox += step) {
    const uint8_t *r = v + ox * j->sw;
    __m256i m = _mm256_loadu_si256((const __m256i *)r);
    for (size_t kx = 1; kx < j->kw; kx++)
      m = _mm256_max_epu8(m, _mm256_loadu_si256((const __m256i *)(r + kx)));
    if (j->sw == 2) {
      __m256i e = _mm256_and_si256(m, lo8);
      m = _mm256_permute4x64_epi64(_mm256_packus_epi16(e, e), 0xD8);
    }
    m = _mm256_xor_si256(m, fl);
    size_t valid = KILN__MIN(step, j->ow - ox), left = room - ox;
    if (step == 32 && left >= 32) {
      _mm256_storeu_si256((__m256i *)(y + ox), m);
    } else if (valid <= 16 && left >= 16) {
      _mm_storeu_si128((__m128i *)(y + ox), _mm256_castsi256_si128(m));
    } else {
      uint8_t t[32];
      _mm256_storeu_si256((__m256i *)t, m);
      for (size_t i = 0; i < valid; i++) y[ox + i] = t[i];
    }
  }
}

/* 3x3 windows at stride 2 that all lie inside the plane (SqueezeNet's pools): 16 outputs at a
   time straight from the input, the max of three rows at column offsets 0, 1 and 2 (nine 32-byte
   loads) whose even bytes are the outputs. No row buffer and no per-row calls: on 27- and 55-wide
   planes vcol + row cost ~40 cycles per output row, 2-4x ONNX Runtime's NHWC pool. */
AVX2 static inline __m256i qmax8(__m256i a, __m256i b, bool sgn) {
  return sgn ? _mm256_max_epi8(a, b) : _mm256_max_epu8(a, b);
}

AVX2 static void qmp_s2k3_avx2(void *arg, size_t q0, size_t q1) {
  const mp_job *j = arg;
  const bool sgn = j->flip != 0;
  const size_t w = j->w, ow = j->ow;
  const uint8_t *xb = (const void *)j->x, *end = xb + j->planes * j->h * w;
  uint8_t *yb = (void *)j->y, *yend = yb + q1 * j->oh * ow;
  const __m256i lo8 = _mm256_set1_epi16(0xff);
  for (size_t q = q0; q < q1; q++)
    for (size_t oy = 0; oy < j->oh; oy++) {
      const uint8_t *r = xb + (q * j->h + 2 * oy) * w;
      uint8_t *y = yb + (q * j->oh + oy) * ow;
      for (size_t ox = 0; ox < ow; ox += 16) {
        const uint8_t *p = r + 2 * ox;
        size_t valid = KILN__MIN((size_t)16, ow - ox);
        if ((size_t)(end - p) < 2 * w + 34) { /* the tensor's last row: bytes, in bounds */
          for (size_t i = 0; i < valid; i++) {
            uint8_t m = p[2 * i] ^ j->flip;
            for (size_t t = 0; t < 9; t++) {
              uint8_t v = p[2 * i + t / 3 * w + t % 3] ^ j->flip;
              m = v > m ? v : m;
            }
            y[ox + i] = m ^ j->flip;
          }
          continue;
        }
        __m256i m = _mm256_loadu_si256((const __m256i *)p);
        for (size_t t = 1; t < 9; t++)
          m = qmax8(m, _mm256_loadu_si256((const __m256i *)(p + t / 3 * w + t % 3)), sgn);
        __m256i e = _mm256_and_si256(m, lo8);
        e = _mm256_permute4x64_epi64(_mm256_packus_epi16(e, e), 0xD8);
        __m128i o = _mm256_castsi256_si128(e);
        if ((size_t)(yend - (y + ox)) >= 16) {
          _mm_storeu_si128((__m128i *)(y + ox), o);
        } else {
          uint8_t t[16];
          _mm_storeu_si128((__m128i *)t, o);
          memcpy(y + ox, t, valid);
        }
      }
    }
}
#endif

static void qmp_planes(void *arg, size_t q0, size_t q1) {
  const mp_job *j = arg;
  uint8_t buf[ROWBUF];
  void (*row)(const mp_job *, const uint8_t *, uint8_t *, size_t) = qmp_row_generic;
  void (*vcol)(uint8_t *restrict, const uint8_t *restrict, size_t, size_t, size_t, uint8_t,
               const uint8_t *) = qvcol_generic;
#ifdef POOL_X86
  if (j->isa != KILN__ISA_GENERIC) row = qmp_row_avx2, vcol = qvcol_avx2;
#endif
  memset(buf, 0, j->len); /* the lowest code in unsigned order: the padding */
  uint8_t *v = buf + j->pl;
  const uint8_t *xb = (const void *)j->x, *end = xb + j->planes * j->h * j->w;
  uint8_t *yb = (void *)j->y, *yend = yb + q1 * j->oh * j->ow;
  for (size_t q = q0; q < q1; q++) {
    const uint8_t *x = xb + q * j->h * j->w;
    uint8_t *y = yb + q * j->oh * j->ow;
    for (size_t oy = 0; oy < j->oh; oy++) {
      int64_t y0 = (int64_t)(oy * j->sh) - j->pt;
      int64_t lo = KILN__MAX(y0, (int64_t)0), hi = KILN__MIN(y0 + (int64_t)j->kh, (int64_t)j->h);
      vcol(v, x + (size_t)lo * j->w, j->w, (size_t)(hi - lo), j->w, j->flip, end);
      row(j, buf, y + oy * j->ow, (size_t)(yend - (y + oy * j->ow)));
    }
  }
}

static bool is_q8(kiln_dtype t) { return t == KILN_DTYPE_UINT8 || t == KILN_DTYPE_INT8; }

static bool mp_supports(const kiln__node *n, const kiln__graph *g) {
  const int64_t *ks, *d;
  size_t nd = kiln__attr_ints(n, "dilations", &d);
  for (size_t i = 0; i < nd; i++)
    if (d[i] != 1) return false;
  bool q8 = n->n_in > 0 && n->in[0] >= 0 && is_q8(g->values[n->in[0]].dtype);
  return (maybe_f32(n, g) || q8) && n->n_out == 1 &&
         kiln__attr_ints(n, "kernel_shape", &ks) == 2;
}

static kiln_status mp_execute(kiln__kctx *c, void *state) {
  const kiln_tensor *x = c->in[0], *y = c->out[0];
  const int64_t *ks, *st, *pads;
  bool q8 = is_q8(x->dtype) && y->dtype == x->dtype;
  if ((x->dtype != KILN_DTYPE_FLOAT && !q8) || x->rank != 4 || y->rank != 4 ||
      kiln__attr_ints(c->node, "kernel_shape", &ks) != 2 || ks[0] < 1 || ks[1] < 1 ||
      ks[0] > 64 || ks[1] > 64)
    return c->node->op->run(c);
  size_t nst = kiln__attr_ints(c->node, "strides", &st);
  size_t np = kiln__attr_ints(c->node, "pads", &pads);
  if ((nst && nst != 2) || (np && np != 4)) return c->node->op->run(c);
  mp_job j = {.isa = *(const kiln__isa *)state, .x = x->data, .y = y->data,
              .h = (size_t)x->dims[2], .w = (size_t)x->dims[3], .oh = (size_t)y->dims[2],
              .ow = (size_t)y->dims[3], .kh = (size_t)ks[0], .kw = (size_t)ks[1],
              .sh = nst ? (size_t)st[0] : 1, .sw = nst ? (size_t)st[1] : 1};
  const char *ap = kiln__attr_str(c->node, "auto_pad", "NOTSET");
  if (!strcmp(ap, "SAME_UPPER") || !strcmp(ap, "SAME_LOWER")) {
    int64_t th = KILN__MAX((int64_t)((j.oh - 1) * j.sh + j.kh) - (int64_t)j.h, (int64_t)0);
    int64_t tw = KILN__MAX((int64_t)((j.ow - 1) * j.sw + j.kw) - (int64_t)j.w, (int64_t)0);
    bool upper = ap[5] == 'U';
    j.pt = upper ? th / 2 : th - th / 2;
    j.pl = upper ? tw / 2 : tw - tw / 2;
  } else if (!strcmp(ap, "VALID")) {
    j.pt = j.pl = 0;
  } else {
    j.pt = np ? pads[0] : 0;
    j.pl = np ? pads[1] : 0;
  }
  if (j.sh < 1 || j.sw < 1 || j.pt < 0 || j.pl < 0 || j.pt >= (int64_t)j.kh ||
      j.pl >= (int64_t)j.kw || x->dims[0] != y->dims[0] || x->dims[1] != y->dims[1])
    return c->node->op->run(c);
  j.len = KILN__MAX(j.sw * ((j.ow + 7) / 8 * 8) + j.kw + 16, (size_t)j.pl + j.w + 8);
  if (q8) { /* 32-byte steps; a window past the image (ceil_mode) would be all padding */
    j.len = KILN__MAX(j.sw * ((j.ow + 31) / 32 * 32) + j.kw + 32, (size_t)j.pl + j.w + 32);
    j.flip = x->dtype == KILN_DTYPE_INT8 ? 0x80 : 0;
    if (j.oh && j.ow && ((int64_t)((j.oh - 1) * j.sh) - j.pt >= (int64_t)j.h ||
                         (int64_t)((j.ow - 1) * j.sw) - j.pl >= (int64_t)j.w))
      return c->node->op->run(c);
  }
  if (j.len > ROWBUF) return c->node->op->run(c);
  size_t planes = (size_t)x->dims[0] * (size_t)x->dims[1];
  j.planes = planes;
  void (*fn)(void *, size_t, size_t) = q8 ? qmp_planes : mp_planes;
#ifdef POOL_X86
  if (!q8 && j.isa == KILN__ISA_AVX512 && mp_k3s2_avx512_fits(&j)) fn = mp_planes_k3s2_avx512;
  if (!q8 && j.isa == KILN__ISA_AVX512 && mp_k3s2_rows_avx512_fits(&j))
    fn = mp_planes_k3s2_rows_avx512;
  if (q8 && j.isa != KILN__ISA_GENERIC && j.kh == 3 && j.kw == 3 && j.sh == 2 && j.sw == 2 &&
      !j.pt && !j.pl && j.oh && j.ow && 2 * (j.oh - 1) + 3 <= j.h && 2 * (j.ow - 1) + 3 <= j.w)
    fn = qmp_s2k3_avx2;
#endif
  struct kiln__pool *pool = kiln__pool_for(c->pool, (double)planes * j.oh * j.ow * j.kh * j.kw);
  /* Float: a band of rows per thread where the output planes are large (the 8-bit kernels take
     whole planes). A band boundary shares an output line between the threads in every plane,
     one line in 11 of a 13 x 13 plane: in the far placement SqueezeNet's banded 55 -> 27 and
     27 -> 13 pools took 57 and 54 us at two threads (18 and 11 in the close one), where whole
     planes share one line per thread. */
  j.bands = q8 || j.oh * j.ow < 1024 ? 1 : KILN__MIN(j.oh, (size_t)kiln__pool_threads(pool));
  if (planes && j.oh && j.ow) kiln__parallel_for(pool, j.bands * planes, fn, &j);
  return KILN_OK;
}

/* ---- GlobalAveragePool ----------------------------------------------------------------------- */

typedef struct gap_job {
  const float *x;
  float *y;
  size_t plane;
} gap_job;

/* Eight float partial sums per plane (vectorized by the compiler), then double. */
static void gap_planes(void *arg, size_t q0, size_t q1) {
  const gap_job *j = arg;
  for (size_t q = q0; q < q1; q++) {
    const float *x = j->x + q * j->plane;
    float acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= j->plane; i += 8)
      for (int l = 0; l < 8; l++) acc[l] += x[i + l];
    double s = 0;
    for (; i < j->plane; i++) s += x[i];
    for (int l = 0; l < 8; l++) s += acc[l];
    j->y[q] = (float)(s / (double)j->plane);
  }
}

static bool gap_supports(const kiln__node *n, const kiln__graph *g) {
  return maybe_f32(n, g);
}

static kiln_status gap_execute(kiln__kctx *c, void *state) {
  (void)state;
  const kiln_tensor *x = c->in[0];
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank < 3) return c->node->op->run(c);
  gap_job j = {x->data, c->out[0]->data, 1};
  for (int i = 2; i < x->rank; i++) j.plane *= (size_t)x->dims[i];
  size_t planes = (size_t)x->dims[0] * (size_t)x->dims[1];
  if (j.plane == 0) return c->node->op->run(c); /* mean of nothing: the reference's NaN */
  if (planes)
    kiln__parallel_for(kiln__pool_for(c->pool, (double)planes * j.plane), planes, gap_planes, &j);
  return KILN_OK;
}

const kiln__cpu_kernel kiln__cpu_pool_kernels[] = {
    {"MaxPool", mp_supports, prepare_isa, release_isa, mp_execute, NULL},
    {"GlobalAveragePool", gap_supports, NULL, NULL, gap_execute, NULL},
    {0},
};
