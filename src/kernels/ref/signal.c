/* Reference kernels: signal processing (DFT, STFT, the window generators, MelWeightMatrix).
 *
 * Transforms run in double precision on one line at a time: the line is gathered into a complex
 * scratch buffer (zero-padded or truncated to the transform length), transformed, and scattered to
 * the output. Power-of-two lengths use an iterative radix-2 FFT, short ones a direct DFT, and the
 * rest Bluestein's chirp-z convolution over power-of-two FFTs. Tables (twiddles, chirp) are built
 * once per run from angles reduced modulo the period, so no angle loses precision. */
#include <math.h>

#include "ir/op.h"

#define KILN_PI 3.14159265358979323846

static const kiln_tensor *in_at(const kiln__kctx *c, int i) {
  return i < c->n_in ? c->in[i] : NULL;
}

static bool float_type(kiln_dtype t) {
  return t == KILN_DTYPE_FLOAT || t == KILN_DTYPE_DOUBLE || t == KILN_DTYPE_FLOAT16 ||
         t == KILN_DTYPE_BFLOAT16;
}

/* Any numeric type the generators may produce. */
static bool numeric_type(int64_t t) {
  return t > KILN_DTYPE_UNDEFINED && t < KILN_DTYPE_COUNT && t != KILN_DTYPE_STRING &&
         t != KILN_DTYPE_BOOL && t != KILN_DTYPE_COMPLEX64 && t != KILN_DTYPE_COMPLEX128;
}

static inline double load(const kiln_tensor *t, size_t i) {
  if (t->dtype == KILN_DTYPE_FLOAT) return ((const float *)t->data)[i];
  return kiln__load_f64(t->data, t->dtype, i);
}

static inline void store(kiln_tensor *t, size_t i, double v) {
  if (t->dtype == KILN_DTYPE_FLOAT) ((float *)t->data)[i] = (float)v;
  else kiln__store_f64(t->data, t->dtype, i, v);
}

/* Reads a scalar (or one-element) integer input. */
static kiln_status read_int_scalar(const kiln__kctx *c, const kiln_tensor *t, const char *what,
                                   int64_t *v) {
  *v = 0;
  if (!t->data) return KILN__NEED_DATA;
  if (t->dtype != KILN_DTYPE_INT64 && t->dtype != KILN_DTYPE_INT32)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s must be int32 or int64, got %s", what,
                      kiln_dtype_name(t->dtype));
  if (kiln_tensor_count(t) != 1 || t->rank > 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s must be a scalar", what);
  *v = kiln__load_i64(t->data, t->dtype, 0);
  return KILN_OK;
}

/* Reads a scalar (or one-element) float or integer input as double. */
static kiln_status read_num_scalar(const kiln__kctx *c, const kiln_tensor *t, const char *what,
                                   double *v) {
  *v = 0.0;
  if (!t->data) return KILN__NEED_DATA;
  if (kiln_tensor_count(t) != 1 || t->rank > 1 || t->dtype == KILN_DTYPE_STRING ||
      t->dtype == KILN_DTYPE_COMPLEX64 || t->dtype == KILN_DTYPE_COMPLEX128)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s must be a numeric scalar", what);
  *v = kiln__load_f64(t->data, t->dtype, 0);
  return KILN_OK;
}

/* ---- transforms ------------------------------------------------------------------------------ */

/* tw[k] = exp(-2 pi i k / n), interleaved re, im. */
static void twiddles(size_t n, double *tw) {
  for (size_t k = 0; k < n; k++) {
    double a = -2.0 * KILN_PI * (double)k / (double)n;
    tw[2 * k] = cos(a);
    tw[2 * k + 1] = sin(a);
  }
}

static bool is_pow2(size_t n) { return n && !(n & (n - 1)); }

/* In-place radix-2 FFT of x (n complex, n a power of two). inverse conjugates the twiddles. */
static void fft_pow2(size_t n, double *x, const double *tw, bool inverse) {
  for (size_t i = 1, j = 0; i < n; i++) {
    size_t bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j |= bit;
    if (i < j) {
      double r = x[2 * i], im = x[2 * i + 1];
      x[2 * i] = x[2 * j], x[2 * i + 1] = x[2 * j + 1];
      x[2 * j] = r, x[2 * j + 1] = im;
    }
  }
  double sgn = inverse ? -1.0 : 1.0;
  for (size_t len = 2; len <= n; len <<= 1) {
    size_t half = len >> 1, step = n / len;
    for (size_t i = 0; i < n; i += len) {
      for (size_t k = 0; k < half; k++) {
        double wr = tw[2 * k * step], wi = sgn * tw[2 * k * step + 1];
        double *a = x + 2 * (i + k), *b = x + 2 * (i + k + half);
        double br = b[0] * wr - b[1] * wi, bi = b[0] * wi + b[1] * wr;
        b[0] = a[0] - br, b[1] = a[1] - bi;
        a[0] += br, a[1] += bi;
      }
    }
  }
}

/* y[k] = sum_j x[j] w^(jk) for the first n_out bins. */
static void dft_direct(size_t n, size_t n_out, const double *x, double *y, const double *tw,
                       bool inverse) {
  double sgn = inverse ? -1.0 : 1.0;
  for (size_t k = 0; k < n_out; k++) {
    double re = 0.0, im = 0.0;
    size_t idx = 0; /* (j * k) mod n */
    for (size_t j = 0; j < n; j++) {
      double wr = tw[2 * idx], wi = sgn * tw[2 * idx + 1];
      re += x[2 * j] * wr - x[2 * j + 1] * wi;
      im += x[2 * j] * wi + x[2 * j + 1] * wr;
      idx += k;
      if (idx >= n) idx -= n;
    }
    y[2 * k] = re;
    y[2 * k + 1] = im;
  }
}

/* A transform of one length and direction, laid out in scratch:
 *   power of two:  radix-2 FFT in place.
 *   short lengths: direct DFT.
 *   otherwise:     Bluestein's algorithm, a convolution done with power-of-two FFTs of m >= 2n - 1
 *                  points: X[k] = c[k] * sum_j (x[j] c[j]) conj(c[k - j]), c[j] = exp(-i pi j^2/n).
 * All sizes are in complex values (two doubles). */
enum { DIRECT_MAX = 32 };

typedef struct fft_plan {
  size_t n, m; /* m: Bluestein's FFT length, 0 when unused */
  bool inverse;
  double *tw;    /* twiddles for n (or for m with Bluestein) */
  double *chirp; /* c[j], j < n (Bluestein) */
  double *bhat;  /* FFT of the conjugate chirp, m points (Bluestein) */
  double *work;  /* the line: n points in, max(n, m) long */
  double *out;   /* direct DFT output, n points */
} fft_plan;

static size_t bluestein_len(size_t n) {
  size_t m = 1;
  while (m < 2 * n - 1) m <<= 1;
  return m;
}

/* Scratch bytes for a plan of length n (0 on overflow; n <= 2^40 keeps this finite). */
static size_t fft_plan_bytes(size_t n) {
  size_t doubles;
  if (is_pow2(n)) doubles = 4 * n;
  else if (n <= DIRECT_MAX) doubles = 6 * n;
  else doubles = 2 * (3 * bluestein_len(n) + n);
  size_t bytes;
  return kiln__mul_ok(doubles, sizeof(double), &bytes) ? bytes : 0;
}

static void fft_plan_init(fft_plan *p, size_t n, bool inverse, void *mem) {
  double *d = (double *)mem;
  memset(p, 0, sizeof *p);
  p->n = n;
  p->inverse = inverse;
  if (is_pow2(n) || n <= DIRECT_MAX) {
    p->tw = d;
    p->work = d + 2 * n;
    p->out = d + 4 * n;
    twiddles(n, p->tw);
    return;
  }
  size_t m = bluestein_len(n);
  p->m = m;
  p->tw = d;
  p->chirp = d + 2 * m;
  p->bhat = p->chirp + 2 * n;
  p->work = p->bhat + 2 * m;
  twiddles(m, p->tw);
  double sgn = inverse ? 1.0 : -1.0;
  /* The angle uses j^2 mod 2n (the chirp's period), kept exact by stepping (j+1)^2 = j^2 + 2j + 1. */
  for (size_t j = 0, jj = 0; j < n; j++) {
    double a = sgn * KILN_PI * (double)jj / (double)n;
    p->chirp[2 * j] = cos(a);
    p->chirp[2 * j + 1] = sin(a);
    jj += 2 * j + 1;
    if (jj >= 2 * n) jj -= 2 * n;
  }
  memset(p->bhat, 0, 2 * m * sizeof(double));
  for (size_t j = 0; j < n; j++) {
    double re = p->chirp[2 * j], im = -p->chirp[2 * j + 1];
    p->bhat[2 * j] = re, p->bhat[2 * j + 1] = im;
    if (j) p->bhat[2 * (m - j)] = re, p->bhat[2 * (m - j) + 1] = im;
  }
  fft_pow2(m, p->bhat, p->tw, false);
}

/* Transforms the n points in p->work; returns the first n_out bins (scaled by 1/n if inverse). */
static const double *fft_exec(fft_plan *p, size_t n_out) {
  size_t n = p->n;
  double *res = p->work;
  if (p->m) {
    size_t m = p->m;
    double *w = p->work;
    const double *c = p->chirp;
    for (size_t j = 0; j < n; j++) {
      double re = w[2 * j] * c[2 * j] - w[2 * j + 1] * c[2 * j + 1];
      double im = w[2 * j] * c[2 * j + 1] + w[2 * j + 1] * c[2 * j];
      w[2 * j] = re, w[2 * j + 1] = im;
    }
    memset(w + 2 * n, 0, 2 * (m - n) * sizeof(double));
    fft_pow2(m, w, p->tw, false);
    for (size_t k = 0; k < m; k++) {
      double re = w[2 * k] * p->bhat[2 * k] - w[2 * k + 1] * p->bhat[2 * k + 1];
      double im = w[2 * k] * p->bhat[2 * k + 1] + w[2 * k + 1] * p->bhat[2 * k];
      w[2 * k] = re, w[2 * k + 1] = im;
    }
    fft_pow2(m, w, p->tw, true);
    double s = 1.0 / (double)m;
    for (size_t k = 0; k < n_out; k++) {
      double re = (w[2 * k] * c[2 * k] - w[2 * k + 1] * c[2 * k + 1]) * s;
      double im = (w[2 * k] * c[2 * k + 1] + w[2 * k + 1] * c[2 * k]) * s;
      w[2 * k] = re, w[2 * k + 1] = im;
    }
  } else if (is_pow2(n)) {
    fft_pow2(n, p->work, p->tw, p->inverse);
  } else {
    dft_direct(n, n_out, p->work, p->out, p->tw, p->inverse);
    res = p->out;
  }
  if (p->inverse) {
    double s = 1.0 / (double)n;
    for (size_t k = 0; k < 2 * n_out; k++) res[k] *= s;
  }
  return res;
}

/* ---- DFT ------------------------------------------------------------------------------------- */

typedef struct dft_cfg {
  int axis;
  size_t n;     /* transform length */
  size_t n_out; /* bins written */
  bool inverse;
} dft_cfg;

static kiln_status dft_parse(const kiln__kctx *c, dft_cfg *g) {
  memset(g, 0, sizeof *g);
  const kiln_tensor *x = c->in[0];
  if (!float_type(x->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "unsupported input type %s",
                      kiln_dtype_name(x->dtype));
  if (x->rank < 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "input must have rank >= 2, got %d",
                      x->rank);
  int64_t last = x->dims[x->rank - 1];
  if (last != 1 && last != 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "the last dimension must be 1 (real) or 2 (complex), got %lld",
                      (long long)last);
  int64_t axis;
  kiln_status st;
  if (c->node->opset >= 20) {
    axis = -2;
    const kiln_tensor *a = in_at(c, 2);
    if (a && (st = read_int_scalar(c, a, "axis", &axis))) return st;
  } else {
    axis = kiln__attr_int(c->node, "axis", 1);
  }
  int r = x->rank;
  if (axis < 0) axis += r;
  if (axis < 0 || axis > r - 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "axis is out of range for rank %d", r);
  g->axis = (int)axis;
  int64_t n = x->dims[g->axis];
  const kiln_tensor *len = in_at(c, 1);
  if (len) {
    if ((st = read_int_scalar(c, len, "dft_length", &n))) return st;
    if (n <= 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "dft_length must be positive, got %lld",
                        (long long)n);
  }
  if (n <= 0 || (uint64_t)n > ((uint64_t)1 << 40))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "invalid transform length %lld",
                      (long long)n);
  g->n = (size_t)n;
  g->inverse = kiln__attr_int(c->node, "inverse", 0) != 0;
  bool onesided = kiln__attr_int(c->node, "onesided", 0) != 0;
  if (onesided && g->inverse)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "onesided inverse DFT is not supported");
  g->n_out = onesided ? g->n / 2 + 1 : g->n;
  return KILN_OK;
}

static kiln_status dft_infer(kiln__kctx *c) {
  dft_cfg g;
  kiln_status st = dft_parse(c, &g);
  if (st) return st;
  const kiln_tensor *x = c->in[0];
  int64_t dims[KILN_MAX_RANK];
  for (int i = 0; i < x->rank; i++) dims[i] = x->dims[i];
  dims[g.axis] = (int64_t)g.n_out;
  dims[x->rank - 1] = 2;
  kiln__set_shape(c->out[0], x->dtype, x->rank, dims);
  return KILN_OK;
}

static size_t dft_scratch(const kiln__kctx *c) {
  kiln_error e;
  kiln__kctx cc = *c;
  cc.err = &e;
  dft_cfg g;
  if (dft_parse(&cc, &g)) return 0;
  return fft_plan_bytes(g.n);
}

static kiln_status dft_run(kiln__kctx *c) {
  dft_cfg g;
  kiln_status st = dft_parse(c, &g);
  if (st) return st;
  size_t need = fft_plan_bytes(g.n);
  if (!need || c->scratch_bytes < need || !c->scratch)
    return kiln__fail(c->err, KILN_INTERNAL, "scratch too small");
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  size_t outer = 1, inner = 1, comp = (size_t)x->dims[x->rank - 1];
  for (int i = 0; i < g.axis; i++) outer *= (size_t)x->dims[i];
  for (int i = g.axis + 1; i < x->rank - 1; i++) inner *= (size_t)x->dims[i];
  size_t len_in = (size_t)x->dims[g.axis], n = g.n, take = KILN__MIN(len_in, n);
  fft_plan plan;
  fft_plan_init(&plan, n, g.inverse, c->scratch);
  double *buf = plan.work;
  for (size_t o = 0; o < outer; o++) {
    for (size_t i = 0; i < inner; i++) {
      size_t in_base = o * len_in * inner + i, out_base = o * g.n_out * inner + i;
      for (size_t j = 0; j < take; j++) {
        size_t at = (in_base + j * inner) * comp;
        buf[2 * j] = load(x, at);
        buf[2 * j + 1] = comp == 2 ? load(x, at + 1) : 0.0;
      }
      for (size_t j = take; j < n; j++) buf[2 * j] = buf[2 * j + 1] = 0.0;
      const double *res = fft_exec(&plan, g.n_out);
      for (size_t k = 0; k < g.n_out; k++) {
        size_t at = (out_base + k * inner) * 2;
        store(y, at, res[2 * k]);
        store(y, at + 1, res[2 * k + 1]);
      }
    }
  }
  return KILN_OK;
}

/* ---- STFT ------------------------------------------------------------------------------------ */

typedef struct stft_cfg {
  size_t batch, length, comp;
  size_t step, frame_len, frames, bins;
} stft_cfg;

static kiln_status stft_parse(const kiln__kctx *c, stft_cfg *g) {
  memset(g, 0, sizeof *g);
  const kiln_tensor *x = c->in[0], *step = c->in[1], *win = in_at(c, 2), *flen = in_at(c, 3);
  if (!float_type(x->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "unsupported signal type %s",
                      kiln_dtype_name(x->dtype));
  if (x->rank == 3 && (x->dims[2] == 1 || x->dims[2] == 2)) g->comp = (size_t)x->dims[2];
  else if (x->rank == 2) g->comp = 1;
  else
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "signal must have shape [batch, length, 1 or 2]");
  g->batch = (size_t)x->dims[0];
  g->length = (size_t)x->dims[1];
  int64_t s, fl = -1;
  kiln_status st;
  if ((st = read_int_scalar(c, step, "frame_step", &s))) return st;
  if (s <= 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "frame_step must be positive, got %lld",
                      (long long)s);
  if (flen && (st = read_int_scalar(c, flen, "frame_length", &fl))) return st;
  if (win) {
    if (win->rank != 1 || !float_type(win->dtype))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "window must be a 1-D float tensor");
    if (flen && fl != win->dims[0])
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "frame_length %lld does not match the window's length %lld",
                        (long long)fl, (long long)win->dims[0]);
    fl = win->dims[0];
  }
  if (fl < 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "one of window and frame_length is needed");
  if (fl == 0 || (uint64_t)fl > g->length)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "frame_length %lld must be in [1, signal length %zu]", (long long)fl,
                      g->length);
  g->step = (size_t)s;
  g->frame_len = (size_t)fl;
  g->frames = (g->length - g->frame_len) / g->step + 1;
  bool onesided = kiln__attr_int(c->node, "onesided", 1) != 0;
  g->bins = onesided ? g->frame_len / 2 + 1 : g->frame_len;
  return KILN_OK;
}

static kiln_status stft_infer(kiln__kctx *c) {
  stft_cfg g;
  kiln_status st = stft_parse(c, &g);
  if (st) return st;
  int64_t dims[4] = {(int64_t)g.batch, (int64_t)g.frames, (int64_t)g.bins, 2};
  kiln__set_shape(c->out[0], c->in[0]->dtype, 4, dims);
  return KILN_OK;
}

static size_t stft_scratch(const kiln__kctx *c) {
  kiln_error e;
  kiln__kctx cc = *c;
  cc.err = &e;
  stft_cfg g;
  if (stft_parse(&cc, &g)) return 0;
  return fft_plan_bytes(g.frame_len);
}

static kiln_status stft_run(kiln__kctx *c) {
  stft_cfg g;
  kiln_status st = stft_parse(c, &g);
  if (st) return st;
  size_t n = g.frame_len;
  size_t need = fft_plan_bytes(n);
  if (!need || c->scratch_bytes < need || !c->scratch)
    return kiln__fail(c->err, KILN_INTERNAL, "scratch too small");
  const kiln_tensor *x = c->in[0], *win = in_at(c, 2);
  kiln_tensor *y = c->out[0];
  fft_plan plan;
  fft_plan_init(&plan, n, false, c->scratch);
  double *buf = plan.work;
  for (size_t b = 0; b < g.batch; b++) {
    for (size_t f = 0; f < g.frames; f++) {
      size_t start = b * g.length + f * g.step;
      for (size_t j = 0; j < n; j++) {
        double w = win ? load(win, j) : 1.0;
        size_t at = (start + j) * g.comp;
        buf[2 * j] = load(x, at) * w;
        buf[2 * j + 1] = g.comp == 2 ? load(x, at + 1) * w : 0.0;
      }
      const double *res = fft_exec(&plan, g.bins);
      size_t ob = (b * g.frames + f) * g.bins * 2;
      for (size_t k = 0; k < 2 * g.bins; k++) store(y, ob + k, res[k]);
    }
  }
  return KILN_OK;
}

/* ---- windows --------------------------------------------------------------------------------- */

typedef struct window_coef {
  double a0, a1, a2; /* a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N) */
} window_coef;

static kiln_status window_size(const kiln__kctx *c, int64_t *size, kiln_dtype *dtype) {
  *size = 0;
  *dtype = KILN_DTYPE_FLOAT;
  kiln_status st = read_int_scalar(c, c->in[0], "size", size);
  if (st) return st;
  if (*size < 0 || *size > ((int64_t)1 << 40))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "invalid window size %lld",
                      (long long)*size);
  int64_t t = kiln__attr_int(c->node, "output_datatype", KILN_DTYPE_FLOAT);
  if (!numeric_type(t))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "invalid output_datatype %lld",
                      (long long)t);
  *dtype = (kiln_dtype)t;
  return KILN_OK;
}

static kiln_status window_infer(kiln__kctx *c) {
  int64_t size;
  kiln_dtype dt;
  kiln_status st = window_size(c, &size, &dt);
  if (st) return st;
  kiln__set_shape(c->out[0], dt, 1, &size);
  return KILN_OK;
}

static kiln_status window_run(kiln__kctx *c, window_coef w) {
  int64_t size;
  kiln_dtype dt;
  kiln_status st = window_size(c, &size, &dt);
  if (st) return st;
  bool periodic = kiln__attr_int(c->node, "periodic", 1) != 0;
  kiln_tensor *y = c->out[0];
  double N = (double)(periodic ? size : size - 1);
  for (int64_t i = 0; i < size; i++) {
    double v = 1.0;
    if (N > 0) {
      double a = 2.0 * KILN_PI * (double)i / N;
      v = w.a0 - w.a1 * cos(a) + w.a2 * cos(2.0 * a);
    }
    store(y, (size_t)i, v);
  }
  return KILN_OK;
}

static kiln_status hann_run(kiln__kctx *c) { return window_run(c, (window_coef){0.5, 0.5, 0.0}); }
static kiln_status hamming_run(kiln__kctx *c) {
  return window_run(c, (window_coef){25.0 / 46.0, 21.0 / 46.0, 0.0});
}
static kiln_status blackman_run(kiln__kctx *c) {
  return window_run(c, (window_coef){0.42, 0.5, 0.08});
}

/* ---- MelWeightMatrix ------------------------------------------------------------------------- */

typedef struct mel_cfg {
  int64_t mel_bins, dft_len, rate;
  double lower, upper;
  kiln_dtype dtype;
} mel_cfg;

static kiln_status mel_parse(const kiln__kctx *c, mel_cfg *g) {
  memset(g, 0, sizeof *g);
  kiln_status st;
  if ((st = read_int_scalar(c, c->in[0], "num_mel_bins", &g->mel_bins)) ||
      (st = read_int_scalar(c, c->in[1], "dft_length", &g->dft_len)) ||
      (st = read_int_scalar(c, c->in[2], "sample_rate", &g->rate)) ||
      (st = read_num_scalar(c, c->in[3], "lower_edge_hertz", &g->lower)) ||
      (st = read_num_scalar(c, c->in[4], "upper_edge_hertz", &g->upper)))
    return st;
  if (g->mel_bins <= 0 || g->mel_bins > ((int64_t)1 << 24) || g->dft_len <= 0 ||
      g->dft_len > ((int64_t)1 << 30) || g->rate <= 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "num_mel_bins, dft_length and sample_rate must be positive");
  if (!(g->lower >= 0.0) || !(g->upper >= g->lower) || !isfinite(g->upper))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "need 0 <= lower_edge_hertz <= upper_edge_hertz");
  int64_t t = kiln__attr_int(c->node, "output_datatype", KILN_DTYPE_FLOAT);
  if (!numeric_type(t))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "invalid output_datatype %lld",
                      (long long)t);
  g->dtype = (kiln_dtype)t;
  return KILN_OK;
}

static kiln_status mel_infer(kiln__kctx *c) {
  mel_cfg g;
  kiln_status st = mel_parse(c, &g);
  if (st) return st;
  int64_t dims[2] = {g.dft_len / 2 + 1, g.mel_bins};
  kiln__set_shape(c->out[0], g.dtype, 2, dims);
  return KILN_OK;
}

/* The spectrogram bin of the i-th of num_mel_bins + 2 points evenly spaced on the mel scale. */
static int64_t mel_point(const mel_cfg *g, int64_t i) {
  double lo = 2595.0 * log10(1.0 + g->lower / 700.0);
  double hi = 2595.0 * log10(1.0 + g->upper / 700.0);
  double step = (hi - lo) / (double)(g->mel_bins + 2);
  double hz = 700.0 * (pow(10.0, ((double)i * step + lo) / 2595.0) - 1.0);
  double bin = floor((double)(g->dft_len + 1) * hz / (double)g->rate);
  /* Clamped just past the spectrogram: far points only bound loops that are clipped anyway. */
  double cap = (double)g->dft_len + 2.0;
  return (int64_t)(bin < -1.0 ? -1.0 : bin > cap ? cap : bin);
}

static kiln_status mel_run(kiln__kctx *c) {
  mel_cfg g;
  kiln_status st = mel_parse(c, &g);
  if (st) return st;
  kiln_tensor *y = c->out[0];
  int64_t rows = g.dft_len / 2 + 1, cols = g.mel_bins;
  size_t total = (size_t)rows * (size_t)cols;
  for (size_t i = 0; i < total; i++) store(y, i, 0.0);
  for (int64_t i = 0; i < cols; i++) {
    int64_t lo = mel_point(&g, i), mid = mel_point(&g, i + 1), hi = mel_point(&g, i + 2);
    /* Rows past the spectrogram (rounding at the upper edge) are dropped. */
    if (mid == lo) {
      if (mid >= 0 && mid < rows) store(y, (size_t)mid * (size_t)cols + (size_t)i, 1.0);
    } else {
      for (int64_t j = KILN__MAX(lo, 0); j <= mid && j < rows; j++)
        store(y, (size_t)j * (size_t)cols + (size_t)i, (double)(j - lo) / (double)(mid - lo));
    }
    for (int64_t j = KILN__MAX(mid, 0); j < hi && j < rows; j++)
      store(y, (size_t)j * (size_t)cols + (size_t)i, (double)(hi - j) / (double)(hi - mid));
  }
  return KILN_OK;
}

const kiln__op kiln__ops_signal[] = {
    {"", "DFT", dft_infer, dft_run, dft_scratch, 0, 1, 3},
    {"", "STFT", stft_infer, stft_run, stft_scratch, 0, 2, 4},
    {"", "HannWindow", window_infer, hann_run, NULL, 0, 1, 1},
    {"", "HammingWindow", window_infer, hamming_run, NULL, 0, 1, 1},
    {"", "BlackmanWindow", window_infer, blackman_run, NULL, 0, 1, 1},
    {"", "MelWeightMatrix", mel_infer, mel_run, NULL, 0, 5, 5},
    {0},
};
