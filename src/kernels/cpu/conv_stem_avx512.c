/* The direct stem conv (conv_stem.h) for AVX-512: output columns in the lanes, NCHW in and out.
 *
 * For each output row a job first copies the input rows its taps read into "phase rows": for
 * stride s, phase p of input row iy holds columns p - pl, p - pl + s, p - pl + 2s, ... (zeros
 * outside the image), so that tap (ic, ky, kx) of 16 consecutive outputs is one unaligned load
 * at phase kx % s, offset kx / s (stride 2 splits even and odd columns with one VPERMT2PS per
 * 16). Then each block of 3 output channels x 7 vectors (112 outputs, 21 accumulators) runs the
 * c kh kw taps: 7 loads and 3 broadcasts per 21 FMAs, and bias + ReLU/Clip in registers before
 * one store per vector. The GEMM path instead writes and packs an im2col of k = 27..147 rows
 * for a product too short to hide it (SqueezeNet's stem 310 us against ONNX Runtime's 194 at
 * one thread on Zen 5; bench/RESULTS.md). */
#include "kernels/cpu/conv_stem.h"

#define NV 7        /* 16-column vectors per block */
#define PBUF 12288  /* floats of a job's phase rows (48 KiB of stack) */
#define TAPS (4 * 7 * 7)

static size_t row_len(size_t ow) { return (ow + 15) / 16 * 16 + 16; } /* + kx / s <= 3 */

bool kiln__stem_fits(size_t c, size_t kh, size_t kw, size_t s, size_t ow, int64_t pt,
                     int64_t pl) {
  if (c == 0 || c > 4 || kh == 0 || kw == 0 || kh > 7 || kw > 7 || (s != 1 && s != 2) ||
      pt < 0 || pl < 0 || ow == 0 || ow > 4096)
    return false;
  return c * kh * s * row_len(ow) <= PBUF;
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define INL AVX512 static inline __attribute__((always_inline))

typedef struct stem_job {
  const kiln__stem_args *a;
  size_t L; /* floats per phase row */
} stem_job;

/* Lanes whose column c + i lies in [0, w). */
static inline __mmask16 lanes_in(int64_t c, int64_t w) {
  int64_t lo = c < 0 ? -c : 0, hi = w - c < 16 ? w - c : 16;
  if (hi <= lo) return 0;
  return (__mmask16)((1u << hi) - (1u << lo));
}

/* 16 floats of row r from column c, zeros outside [0, w) (a masked lane is never accessed; the
   address is computed as an integer, so no pointer leaves its object). */
INL __m512 ld16(const float *r, int64_t c, int64_t w) {
  if (c >= 0 && c + 16 <= w) return _mm512_loadu_ps(r + c);
  uintptr_t p = (uintptr_t)r + (uintptr_t)(c * (int64_t)sizeof *r);
  return _mm512_maskz_loadu_ps(lanes_in(c, w), (const void *)p);
}

/* d[j] = row[first + j s] for j < L, 0 outside the row; xr NULL: a row outside the image. */
INL void phase_row(const float *xr, int64_t first, size_t s, int64_t w, size_t L, float *d) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28,
                                         30);
  if (!xr) {
    for (size_t j = 0; j < L; j += 16) _mm512_storeu_ps(d + j, _mm512_setzero_ps());
    return;
  }
  for (size_t j = 0; j < L; j += 16) {
    int64_t c = first + (int64_t)(j * s);
    __m512 v = s == 1 ? ld16(xr, c, w)
                      : _mm512_permutex2var_ps(ld16(xr, c, w), even, ld16(xr, c + 16, w));
    _mm512_storeu_ps(d + j, v);
  }
}

/* The phase rows of output row oy of image b (s a constant in each call). */
INL void phase_rows(const kiln__stem_args *a, size_t b, size_t oy, size_t L, float *P,
                    const size_t s) {
  for (size_t ic = 0; ic < a->c; ic++)
    for (size_t ky = 0; ky < a->kh; ky++) {
      int64_t iy = (int64_t)(oy * s + ky) - a->pt;
      const float *xr = iy >= 0 && iy < (int64_t)a->h
                            ? a->x + ((b * a->c + ic) * a->h + (size_t)iy) * a->w
                            : NULL;
      for (size_t p = 0; p < s; p++)
        phase_row(xr, (int64_t)p - a->pl, s, (int64_t)a->w, L,
                  P + ((ic * a->kh + ky) * s + p) * L);
    }
}

/* The input rows of output row oy of image b, fetched while the row before runs its tiles: the
   phase rows of a fresh image (the model's input, not in cache) otherwise waited on c x kh short
   row streams, a fifth of SqueezeNet's stem. */
static void prefetch_rows(const kiln__stem_args *a, size_t b, size_t oy) {
  for (size_t ic = 0; ic < a->c; ic++)
    for (size_t ky = 0; ky < a->kh; ky++) {
      int64_t iy = (int64_t)(oy * a->s + ky) - a->pt;
      if (iy < 0 || iy >= (int64_t)a->h) continue;
      const float *xr = a->x + ((b * a->c + ic) * a->h + (size_t)iy) * a->w;
      for (size_t o = 0; o < a->w; o += 16) __builtin_prefetch(xr + o);
    }
}

/* Output row oy of image b, channels [oc, oc + R), columns [ox0, ox0 + 16 nv). Accumulators
   are named (an array of them is copied through other registers at every FMA by gcc 12). */
INL void tile(const kiln__stem_args *a, const float *P, const int32_t *off, size_t b, size_t oy,
              size_t oc, size_t ox0, size_t nv, const int R, const bool full) {
  if (full) nv = NV; /* a constant: no per-column tests in the tap loop */
  const size_t kk = a->c * a->kh * a->kw;
  const float *w0 = a->wt + oc * kk;
  const __m512 z = _mm512_setzero_ps();
  __m512 a00 = z, a01 = z, a02 = z, a03 = z, a04 = z, a05 = z, a06 = z;
  __m512 a10 = z, a11 = z, a12 = z, a13 = z, a14 = z, a15 = z, a16 = z;
  __m512 a20 = z, a21 = z, a22 = z, a23 = z, a24 = z, a25 = z, a26 = z;
  for (size_t t = 0; t < kk; t++) {
    const float *src = P + off[t] + ox0;
    const __m512 w0v = _mm512_set1_ps(w0[t]);
    const __m512 w1v = R > 1 ? _mm512_set1_ps(w0[kk + t]) : z;
    const __m512 w2v = R > 2 ? _mm512_set1_ps(w0[2 * kk + t]) : z;
#define COL(v)                                                                                     \
  if (nv > v) {                                                                                    \
    __m512 xv = _mm512_loadu_ps(src + 16 * v);                                                     \
    __asm__("" : "+v"(xv)); /* one load in a register, not a memory operand of each FMA */        \
    a0##v = _mm512_fmadd_ps(w0v, xv, a0##v);                                                       \
    if (R > 1) a1##v = _mm512_fmadd_ps(w1v, xv, a1##v);                                            \
    if (R > 2) a2##v = _mm512_fmadd_ps(w2v, xv, a2##v);                                            \
  }
    COL(0) COL(1) COL(2) COL(3) COL(4) COL(5) COL(6)
#undef COL
  }
  const __m512 acc[3][NV] = {{a00, a01, a02, a03, a04, a05, a06},
                             {a10, a11, a12, a13, a14, a15, a16},
                             {a20, a21, a22, a23, a24, a25, a26}};
  const __m512 lo = _mm512_set1_ps(a->lo), hi = _mm512_set1_ps(a->hi);
  for (int r = 0; r < R; r++) {
    const __m512 bv = _mm512_set1_ps(a->bias ? a->bias[oc + (size_t)r] : 0.0f);
    float *y = a->y + ((b * a->m + oc + (size_t)r) * a->oh + oy) * a->ow + ox0;
    for (size_t v = 0; v < nv; v++) {
      __m512 o = _mm512_add_ps(acc[r][v], bv);
      if (a->act == KILN__ACT_RELU) o = _mm512_max_ps(o, z);
      else if (a->act == KILN__ACT_CLIP) o = _mm512_min_ps(_mm512_max_ps(o, lo), hi);
      size_t left = a->ow - ox0 - 16 * v;
      if (left >= 16) _mm512_storeu_ps(y + 16 * v, o);
      else _mm512_mask_storeu_ps(y + 16 * v, (__mmask16)((1u << left) - 1), o);
    }
  }
}

AVX512 static void stem_rows(void *arg, size_t r0, size_t r1) {
  const stem_job *j = arg;
  const kiln__stem_args *a = j->a;
  _Alignas(64) float P[PBUF];
  int32_t off[TAPS];
  const size_t s = a->s, L = j->L, kk = a->c * a->kh * a->kw;
  for (size_t t = 0; t < kk; t++) { /* tap (ic, ky, kx): phase row and offset */
    size_t ic = t / (a->kh * a->kw), ky = t / a->kw % a->kh, kx = t % a->kw;
    off[t] = (int32_t)(((ic * a->kh + ky) * s + kx % s) * L + kx / s);
  }
  for (size_t r = r0; r < r1; r++) {
    size_t b = r / a->oh, oy = r % a->oh;
    if (s == 1) phase_rows(a, b, oy, L, P, 1);
    else phase_rows(a, b, oy, L, P, 2);
    if (r + 1 < r1) prefetch_rows(a, (r + 1) / a->oh, (r + 1) % a->oh);
    for (size_t ox0 = 0; ox0 < a->ow; ox0 += 16 * NV) {
      size_t nv = KILN__MIN((size_t)NV, (a->ow - ox0 + 15) / 16);
      size_t oc = 0;
      if (nv == NV)
        for (; oc + 3 <= a->m; oc += 3) tile(a, P, off, b, oy, oc, ox0, nv, 3, true);
      for (; oc + 3 <= a->m; oc += 3) tile(a, P, off, b, oy, oc, ox0, nv, 3, false);
      if (a->m - oc == 2) tile(a, P, off, b, oy, oc, ox0, nv, 2, false);
      else if (a->m - oc == 1) tile(a, P, off, b, oy, oc, ox0, nv, 1, false);
    }
  }
}

void kiln__conv_stem_avx512(struct kiln__pool *pool, const kiln__stem_args *a) {
  stem_job j = {a, row_len(a->ow)};
  double work = (double)(a->n * a->oh * a->ow) * (double)(a->m * a->c * a->kh * a->kw);
  kiln__parallel_for(kiln__pool_for(pool, work), a->n * a->oh, stem_rows, &j);
}
#else
void kiln__conv_stem_avx512(struct kiln__pool *pool, const kiln__stem_args *a) {
  (void)pool;
  (void)a;
}
#endif
