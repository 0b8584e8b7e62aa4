/* Reference kernels: convolution and pooling (Conv, ConvTranspose, MaxPool, AveragePool, LpPool,
 * their global forms, MaxUnpool). Resize and Upsample live in resize.c and are listed here.
 *
 * float32 convolutions lower to kiln__sgemm: Conv through im2col in output-column chunks (a
 * bounded scratch buffer however large the image), ConvTranspose through a GEMM into columns
 * followed by col2im. 1x1 stride-1 convolutions multiply the input directly, and 2D convolutions
 * with one input channel per group (depthwise) use a direct loop. Other dtypes take slow direct
 * loops through kiln__load_f64. Pools split N*C planes over the thread pool. */
#include "ir/op.h"
#include "kernels/ref/gemm.h"
#include "kernels/ref/resize.h"

#include <math.h>

/* Bound on kernel sizes, strides, dilations and pads, so their products cannot overflow. */
#define ATTR_MAX ((int64_t)1 << 31)

/* Upper bound of the im2col / col2im column buffer; larger images are processed in chunks. */
#define COL_BYTES ((size_t)4 << 20)
#define COL_MIN_COLS 64

/* ---- geometry -------------------------------------------------------------------------------- */

typedef enum auto_pad { PAD_NOTSET, PAD_SAME_UPPER, PAD_SAME_LOWER, PAD_VALID } auto_pad;

/* The spatial geometry of one convolution or pooling window. */
typedef struct geom {
  int nsp;                           /* spatial dims */
  int64_t in[KILN_MAX_RANK];         /* input spatial dims */
  int64_t k[KILN_MAX_RANK];          /* kernel */
  int64_t s[KILN_MAX_RANK];          /* strides */
  int64_t d[KILN_MAX_RANK];          /* dilations */
  int64_t pb[KILN_MAX_RANK];         /* padding at the beginning */
  int64_t pe[KILN_MAX_RANK];         /* padding at the end */
  int64_t out[KILN_MAX_RANK];        /* output spatial dims */
  size_t in_count, out_count, k_count; /* products of in, out, k */
} geom;

static kiln_status parse_auto_pad(const kiln__kctx *c, auto_pad *ap) {
  const char *s = kiln__attr_str(c->node, "auto_pad", "NOTSET");
  if (!strcmp(s, "NOTSET") || !*s) *ap = PAD_NOTSET;
  else if (!strcmp(s, "SAME_UPPER")) *ap = PAD_SAME_UPPER;
  else if (!strcmp(s, "SAME_LOWER")) *ap = PAD_SAME_LOWER;
  else if (!strcmp(s, "VALID")) *ap = PAD_VALID;
  else return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown auto_pad '%s'", s);
  return KILN_OK;
}

/* Reads an INTS attribute of exactly n values, each in [min, ATTR_MAX]; absent or empty means
   `def` for each. */
static kiln_status ints_attr(const kiln__kctx *c, const char *name, int n, int64_t def,
                             int64_t min, int64_t *v) {
  const int64_t *a;
  size_t na = kiln__attr_ints(c->node, name, &a);
  if (na == 0) {
    for (int i = 0; i < n; i++) v[i] = def;
    return KILN_OK;
  }
  if (na != (size_t)n)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "attribute '%s' has %zu values, expected %d",
                      name, na, n);
  for (int i = 0; i < n; i++) {
    if (a[i] < min || a[i] > ATTR_MAX)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "attribute '%s'[%d] = %lld is out of range",
                        name, i, (long long)a[i]);
    v[i] = a[i];
  }
  return KILN_OK;
}

static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

static int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

static kiln_status geom_counts(const kiln__kctx *c, geom *g) {
  if (!kiln__shape_count(g->nsp, g->in, &g->in_count) ||
      !kiln__shape_count(g->nsp, g->out, &g->out_count) ||
      !kiln__shape_count(g->nsp, g->k, &g->k_count))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "spatial shape overflows");
  return KILN_OK;
}

/* Geometry of a forward window op (Conv, pools) on input x with the given kernel. Reads strides,
   dilations, pads and auto_pad from the node. */
static kiln_status fwd_geom(const kiln__kctx *c, const kiln_tensor *x, const int64_t *kernel,
                            bool ceil_mode, geom *g) {
  kiln_status st;
  auto_pad ap;
  int n = x->rank - 2;
  if (n < 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "input must have rank >= 3, got %d", x->rank);
  g->nsp = n;
  int64_t pads[2 * KILN_MAX_RANK];
  if ((st = parse_auto_pad(c, &ap)) != KILN_OK ||
      (st = ints_attr(c, "strides", n, 1, 1, g->s)) != KILN_OK ||
      (st = ints_attr(c, "dilations", n, 1, 1, g->d)) != KILN_OK ||
      (st = ints_attr(c, "pads", 2 * n, 0, 0, pads)) != KILN_OK)
    return st;
  for (int i = 0; i < n; i++) {
    int64_t in = x->dims[i + 2], k = kernel[i];
    if (k < 1 || k > ATTR_MAX)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "kernel dim %d is %lld", i, (long long)k);
    int64_t ek = (k - 1) * g->d[i] + 1, s = g->s[i];
    g->in[i] = in;
    g->k[i] = k;
    if (ap == PAD_SAME_UPPER || ap == PAD_SAME_LOWER) {
      int64_t out = ceil_div(in, s);
      int64_t total = KILN__MAX((out - 1) * s + ek - in, 0);
      int64_t small = total / 2;
      g->pb[i] = ap == PAD_SAME_UPPER ? small : total - small;
      g->pe[i] = total - g->pb[i];
      g->out[i] = out;
      continue;
    }
    g->pb[i] = ap == PAD_VALID ? 0 : pads[i];
    g->pe[i] = ap == PAD_VALID ? 0 : pads[i + n];
    int64_t span = in + g->pb[i] + g->pe[i] - ek;
    if (span < 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "kernel extent %lld exceeds the padded input (%lld) along spatial dim %d",
                        (long long)ek, (long long)(in + g->pb[i] + g->pe[i]), i);
    int64_t out = (ceil_mode ? ceil_div(span, s) : span / s) + 1;
    /* The last window must start inside the input or its leading padding. */
    if (ceil_mode && (out - 1) * s >= in + g->pb[i]) out--;
    g->out[i] = out;
  }
  return geom_counts(c, g);
}

/* The t in [0, n) with 0 <= (o0 + t) * s + off < lim form one range [*lo, *hi). */
static void valid_range(int64_t o0, int64_t s, int64_t off, int64_t lim, int64_t n, int64_t *lo,
                        int64_t *hi) {
  int64_t a = -off - o0 * s; /* need t*s >= a */
  int64_t b = lim - off - o0 * s; /* need t*s < b */
  int64_t l = a <= 0 ? 0 : ceil_div(a, s);
  int64_t h = b <= 0 ? 0 : ceil_div(b, s);
  if (h > n) h = n;
  if (l > h) l = h;
  *lo = l;
  *hi = h;
}

/* Splits a flat index into coordinates of a shape. */
static void unflatten(size_t idx, int n, const int64_t *dims, int64_t *co) {
  for (int i = n - 1; i >= 0; i--) {
    co[i] = (int64_t)(idx % (size_t)dims[i]);
    idx /= (size_t)dims[i];
  }
}

static size_t col_chunk(size_t rows, size_t cols) {
  size_t chunk = rows ? COL_BYTES / sizeof(float) / rows : cols;
  if (chunk < COL_MIN_COLS) chunk = COL_MIN_COLS;
  if (chunk > cols) chunk = cols;
  return chunk ? chunk : 1;
}

static bool is_conv_float(kiln_dtype t) {
  return t == KILN_DTYPE_FLOAT || t == KILN_DTYPE_DOUBLE || t == KILN_DTYPE_FLOAT16 ||
         t == KILN_DTYPE_BFLOAT16;
}

/* ---- Conv ------------------------------------------------------------------------------------ */

typedef struct conv_shape {
  geom g;
  size_t n, c, m, groups, cg, mg;
} conv_shape;

static kiln_status conv_shape_get(const kiln__kctx *c, conv_shape *cs) {
  const kiln_tensor *x = c->in[0], *w = c->in[1], *b = c->n_in > 2 ? c->in[2] : NULL;
  if (!x || !w) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Conv needs X and W");
  if (!is_conv_float(x->dtype) || w->dtype != x->dtype)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "Conv on %s x %s is not supported",
                      kiln_dtype_name(x->dtype), kiln_dtype_name(w->dtype));
  if (x->rank < 3 || w->rank != x->rank)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Conv: X has rank %d and W rank %d", x->rank,
                      w->rank);
  int64_t groups = kiln__attr_int(c->node, "group", 1);
  int64_t C = x->dims[1], M = w->dims[0];
  if (groups < 1 || C % groups != 0 || M % groups != 0 || w->dims[1] != C / groups)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "Conv: group %lld does not fit %lld input channels, W of shape [%lld, %lld]",
                      (long long)groups, (long long)C, (long long)M, (long long)w->dims[1]);
  const int64_t *ks;
  size_t nks = kiln__attr_ints(c->node, "kernel_shape", &ks);
  if (nks) {
    bool ok = nks == (size_t)(x->rank - 2);
    for (size_t i = 0; ok && i < nks; i++) ok = ks[i] == w->dims[i + 2];
    if (!ok)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Conv: kernel_shape does not match W");
  }
  if (b && (b->rank != 1 || b->dims[0] != M || b->dtype != x->dtype))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Conv: B must be a vector of %lld %s",
                      (long long)M, kiln_dtype_name(x->dtype));
  kiln_status st = fwd_geom(c, x, w->dims + 2, false, &cs->g);
  if (st != KILN_OK) return st;
  cs->n = (size_t)x->dims[0];
  cs->c = (size_t)C;
  cs->m = (size_t)M;
  cs->groups = (size_t)groups;
  cs->cg = (size_t)(C / groups);
  cs->mg = (size_t)(M / groups);
  return KILN_OK;
}

static kiln_status conv_infer(kiln__kctx *c) {
  conv_shape cs;
  kiln_status st = conv_shape_get(c, &cs);
  if (st != KILN_OK) return st;
  int64_t dims[KILN_MAX_RANK];
  dims[0] = (int64_t)cs.n;
  dims[1] = (int64_t)cs.m;
  for (int i = 0; i < cs.g.nsp; i++) dims[i + 2] = cs.g.out[i];
  kiln__set_shape(c->out[0], c->in[0]->dtype, cs.g.nsp + 2, dims);
  return KILN_OK;
}

static bool conv_pointwise(const geom *g) {
  for (int i = 0; i < g->nsp; i++)
    if (g->k[i] != 1 || g->s[i] != 1 || g->pb[i] || g->pe[i]) return false;
  return true;
}

static bool conv_direct(const conv_shape *cs) { return cs->g.nsp == 2 && cs->cg == 1; }

static size_t conv_scratch(const kiln__kctx *c) {
  conv_shape cs;
  kiln_error e;
  kiln__kctx cc = *c;
  cc.err = &e;
  if (c->in[0]->dtype != KILN_DTYPE_FLOAT || conv_shape_get(&cc, &cs) != KILN_OK) return 0;
  if (conv_pointwise(&cs.g) || conv_direct(&cs)) return 0;
  size_t rows = cs.cg * cs.g.k_count;
  return rows * col_chunk(rows, cs.g.out_count) * sizeof(float);
}

typedef struct im2col_args {
  const geom *g;
  const float *x;     /* input of the group: cg planes */
  float *col;         /* rows x (p1 - p0) */
  size_t p0, p1;      /* output positions of the chunk */
} im2col_args;

static void im2col_rows(void *arg, size_t r0, size_t r1) {
  const im2col_args *a = arg;
  const geom *g = a->g;
  int n = g->nsp, last = n - 1;
  size_t width = a->p1 - a->p0;
  for (size_t r = r0; r < r1; r++) {
    size_t ch = r / g->k_count;
    int64_t koff[KILN_MAX_RANK], o[KILN_MAX_RANK];
    unflatten(r % g->k_count, n, g->k, koff);
    for (int i = 0; i < n; i++) koff[i] = koff[i] * g->d[i] - g->pb[i];
    const float *xc = a->x + ch * g->in_count;
    float *dst = a->col + r * width;
    unflatten(a->p0, n, g->out, o);
    size_t p = a->p0;
    while (p < a->p1) {
      bool ok = true;
      size_t base = 0;
      for (int i = 0; i < last; i++) {
        int64_t ii = o[i] * g->s[i] + koff[i];
        if (ii < 0 || ii >= g->in[i]) ok = false;
        base = base * (size_t)g->in[i] + (size_t)(ok ? ii : 0);
      }
      int64_t run = KILN__MIN(g->out[last] - o[last], (int64_t)(a->p1 - p));
      int64_t lo = 0, hi = 0;
      if (ok) valid_range(o[last], g->s[last], koff[last], g->in[last], run, &lo, &hi);
      for (int64_t t = 0; t < lo; t++) dst[t] = 0.0f;
      if (hi > lo) {
        const float *src = xc + base * (size_t)g->in[last];
        int64_t s = g->s[last], i0 = o[last] * s + koff[last];
        if (s == 1) memcpy(dst + lo, src + (i0 + lo), (size_t)(hi - lo) * sizeof(float));
        else
          for (int64_t t = lo; t < hi; t++) dst[t] = src[i0 + t * s];
      }
      for (int64_t t = hi; t < run; t++) dst[t] = 0.0f;
      dst += run;
      p += (size_t)run;
      o[last] += run;
      for (int i = last; i > 0 && o[i] >= g->out[i]; i--) {
        o[i] = 0;
        o[i - 1]++;
      }
    }
  }
}

typedef struct dw_args {
  const conv_shape *cs;
  const float *x, *w, *b;
  float *y;
} dw_args;

/* Direct 2D convolution, one input channel per group: one output plane per work item. Each
   kernel tap sweeps a whole output row (an axpy over the columns where it lands in the input). */
static void conv_dw_planes(void *arg, size_t q0, size_t q1) {
  const dw_args *a = arg;
  const conv_shape *cs = a->cs;
  const geom *g = &cs->g;
  int64_t H = g->in[0], W = g->in[1], KH = g->k[0], KW = g->k[1], OW = g->out[1];
  int64_t sh = g->s[0], sw = g->s[1], dh = g->d[0], dw = g->d[1];
  for (size_t q = q0; q < q1; q++) {
    size_t n = q / cs->m, m = q % cs->m, grp = m / cs->mg;
    const float *xp = a->x + (n * cs->c + grp) * g->in_count;
    const float *wk = a->w + m * g->k_count;
    float *yp = a->y + q * g->out_count;
    float bias = a->b ? a->b[m] : 0.0f;
    for (int64_t oh = 0; oh < g->out[0]; oh++) {
      int64_t ih0 = oh * sh - g->pb[0], khlo, khhi;
      valid_range(0, dh, ih0, H, KH, &khlo, &khhi);
      float *restrict yr = yp + oh * OW;
      for (int64_t ow = 0; ow < OW; ow++) yr[ow] = bias;
      for (int64_t kh = khlo; kh < khhi; kh++) {
        const float *restrict xr = xp + (ih0 + kh * dh) * W;
        for (int64_t kw = 0; kw < KW; kw++) {
          int64_t off = kw * dw - g->pb[1], lo, hi;
          float wv = wk[kh * KW + kw];
          valid_range(0, sw, off, W, OW, &lo, &hi);
          if (sw == 1)
            for (int64_t ow = lo; ow < hi; ow++) yr[ow] += wv * xr[ow + off];
          else
            for (int64_t ow = lo; ow < hi; ow++) yr[ow] += wv * xr[ow * sw + off];
        }
      }
    }
  }
}

/* Fills each output plane (n, m) with b[m], or zero. */
static void fill_bias(float *y, size_t n, size_t m, size_t plane, const float *b) {
  for (size_t i = 0; i < n * m; i++) {
    float v = b ? b[i % m] : 0.0f;
    float *p = y + i * plane;
    for (size_t j = 0; j < plane; j++) p[j] = v;
  }
}

static kiln_status conv_run_f32(kiln__kctx *c, const conv_shape *cs) {
  const geom *g = &cs->g;
  const float *x = c->in[0]->data, *w = c->in[1]->data;
  const float *b = c->n_in > 2 && c->in[2] ? c->in[2]->data : NULL;
  float *y = c->out[0]->data;
  if (conv_direct(cs)) {
    dw_args a = {cs, x, w, b, y};
    kiln__parallel_for(c->pool, cs->n * cs->m, conv_dw_planes, &a);
    return KILN_OK;
  }
  size_t rows = cs->cg * g->k_count, cols = g->out_count;
  float beta = b ? 1.0f : 0.0f;
  if (b) fill_bias(y, cs->n, cs->m, cols, b);
  bool pointwise = conv_pointwise(g);
  size_t chunk = col_chunk(rows, cols);
  if (!pointwise && c->scratch_bytes < rows * chunk * sizeof(float))
    return kiln__fail(c->err, KILN_INTERNAL, "Conv: scratch too small");
  for (size_t n = 0; n < cs->n; n++) {
    for (size_t grp = 0; grp < cs->groups; grp++) {
      const float *xg = x + (n * cs->c + grp * cs->cg) * g->in_count;
      const float *wg = w + grp * cs->mg * rows;
      float *yg = y + (n * cs->m + grp * cs->mg) * cols;
      if (pointwise) {
        kiln__sgemm(c->pool, false, false, cs->mg, cols, cs->cg, 1.0f, wg, rows, xg, cols, beta,
                    yg, cols);
        continue;
      }
      for (size_t p0 = 0; p0 < cols; p0 += chunk) {
        size_t p1 = KILN__MIN(cols, p0 + chunk);
        im2col_args a = {g, xg, c->scratch, p0, p1};
        kiln__parallel_for(c->pool, rows, im2col_rows, &a);
        kiln__sgemm(c->pool, false, false, cs->mg, p1 - p0, rows, 1.0f, wg, rows, c->scratch,
                    p1 - p0, beta, yg + p0, cols);
      }
    }
  }
  return KILN_OK;
}

typedef struct conv_slow_args {
  const conv_shape *cs;
  const kiln_tensor *x, *w, *b;
  kiln_tensor *y;
} conv_slow_args;

/* Direct convolution in double for dtypes other than float32: one output plane per item. */
static void conv_slow_planes(void *arg, size_t q0, size_t q1) {
  const conv_slow_args *a = arg;
  const conv_shape *cs = a->cs;
  const geom *g = &cs->g;
  int n = g->nsp;
  kiln_dtype t = a->x->dtype;
  for (size_t q = q0; q < q1; q++) {
    size_t bn = q / cs->m, m = q % cs->m, grp = m / cs->mg;
    double bias = a->b ? kiln__load_f64(a->b->data, t, m) : 0.0;
    for (size_t p = 0; p < g->out_count; p++) {
      int64_t o[KILN_MAX_RANK], kk[KILN_MAX_RANK];
      unflatten(p, n, g->out, o);
      double acc = bias;
      for (size_t kidx = 0; kidx < g->k_count; kidx++) {
        unflatten(kidx, n, g->k, kk);
        size_t off = 0;
        bool ok = true;
        for (int i = 0; i < n && ok; i++) {
          int64_t ii = o[i] * g->s[i] - g->pb[i] + kk[i] * g->d[i];
          ok = ii >= 0 && ii < g->in[i];
          off = off * (size_t)g->in[i] + (size_t)ii;
        }
        if (!ok) continue;
        for (size_t ch = 0; ch < cs->cg; ch++) {
          size_t xi = (bn * cs->c + grp * cs->cg + ch) * g->in_count + off;
          size_t wi = (m * cs->cg + ch) * g->k_count + kidx;
          acc += kiln__load_f64(a->x->data, t, xi) * kiln__load_f64(a->w->data, t, wi);
        }
      }
      kiln__store_f64(a->y->data, t, q * g->out_count + p, acc);
    }
  }
}

static kiln_status conv_run(kiln__kctx *c) {
  conv_shape cs;
  kiln_status st = conv_shape_get(c, &cs);
  if (st != KILN_OK) return st;
  if (cs.n * cs.m * cs.g.out_count == 0) return KILN_OK;
  if (c->in[0]->dtype == KILN_DTYPE_FLOAT) return conv_run_f32(c, &cs);
  conv_slow_args a = {&cs, c->in[0], c->in[1], c->n_in > 2 ? c->in[2] : NULL, c->out[0]};
  kiln__parallel_for(c->pool, cs.n * cs.m, conv_slow_planes, &a);
  return KILN_OK;
}

/* ---- ConvTranspose --------------------------------------------------------------------------- */

static kiln_status convt_shape_get(const kiln__kctx *c, conv_shape *cs) {
  const kiln_tensor *x = c->in[0], *w = c->in[1], *b = c->n_in > 2 ? c->in[2] : NULL;
  if (!x || !w) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "ConvTranspose needs X and W");
  if (!is_conv_float(x->dtype) || w->dtype != x->dtype)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "ConvTranspose on %s x %s is not supported",
                      kiln_dtype_name(x->dtype), kiln_dtype_name(w->dtype));
  if (x->rank < 3 || w->rank != x->rank)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "ConvTranspose: X has rank %d and W rank %d",
                      x->rank, w->rank);
  int n = x->rank - 2;
  int64_t groups = kiln__attr_int(c->node, "group", 1);
  int64_t C = x->dims[1];
  if (groups < 1 || C % groups != 0 || w->dims[0] != C)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "ConvTranspose: group %lld does not fit %lld input channels and W[0] = %lld",
                      (long long)groups, (long long)C, (long long)w->dims[0]);
  int64_t M = w->dims[1] * groups;
  if (b && (b->rank != 1 || b->dims[0] != M || b->dtype != x->dtype))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "ConvTranspose: B must be a vector of %lld %s", (long long)M,
                      kiln_dtype_name(x->dtype));
  const int64_t *ks;
  size_t nks = kiln__attr_ints(c->node, "kernel_shape", &ks);
  if (nks) {
    bool ok = nks == (size_t)n;
    for (size_t i = 0; ok && i < nks; i++) ok = ks[i] == w->dims[i + 2];
    if (!ok)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "ConvTranspose: kernel_shape does not match W");
  }
  geom *g = &cs->g;
  g->nsp = n;
  auto_pad ap;
  kiln_status st;
  int64_t pads[2 * KILN_MAX_RANK], opad[KILN_MAX_RANK];
  if ((st = parse_auto_pad(c, &ap)) != KILN_OK ||
      (st = ints_attr(c, "strides", n, 1, 1, g->s)) != KILN_OK ||
      (st = ints_attr(c, "dilations", n, 1, 1, g->d)) != KILN_OK ||
      (st = ints_attr(c, "pads", 2 * n, 0, 0, pads)) != KILN_OK ||
      (st = ints_attr(c, "output_padding", n, 0, 0, opad)) != KILN_OK)
    return st;
  const int64_t *os;
  size_t nos = kiln__attr_ints(c->node, "output_shape", &os);
  if (nos == (size_t)n + 2) os += 2;
  else if (nos && nos != (size_t)n)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "ConvTranspose: output_shape has %zu values for %d spatial dims", nos, n);
  for (int i = 0; i < n; i++) {
    int64_t in = x->dims[i + 2], k = w->dims[i + 2], s = g->s[i];
    if (k < 1 || k > ATTR_MAX || in > ATTR_MAX)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "ConvTranspose: kernel %lld or input %lld out of range", (long long)k,
                        (long long)in);
    int64_t full = s * (in - 1) + opad[i] + (k - 1) * g->d[i] + 1; /* unpadded output extent */
    g->in[i] = in;
    g->k[i] = k;
    if (nos || ap == PAD_SAME_UPPER || ap == PAD_SAME_LOWER) {
      int64_t out = nos ? os[i] : in * s;
      if (out < 0 || out > ((int64_t)1 << 40))
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                          "ConvTranspose: output_shape[%d] = %lld is out of range", i,
                          (long long)out);
      int64_t total = full - out, half = floor_div(total, 2);
      g->pb[i] = ap == PAD_SAME_UPPER ? half : total - half;
      g->pe[i] = total - g->pb[i];
      g->out[i] = out;
    } else {
      g->pb[i] = ap == PAD_VALID ? 0 : pads[i];
      g->pe[i] = ap == PAD_VALID ? 0 : pads[i + n];
      g->out[i] = full - g->pb[i] - g->pe[i];
    }
    if (g->out[i] < 0 || in < 1)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "ConvTranspose: output spatial dim %d would be %lld", i,
                        (long long)g->out[i]);
  }
  if ((st = geom_counts(c, g)) != KILN_OK) return st;
  cs->n = (size_t)x->dims[0];
  cs->c = (size_t)C;
  cs->m = (size_t)M;
  cs->groups = (size_t)groups;
  cs->cg = (size_t)(C / groups);
  cs->mg = (size_t)w->dims[1];
  return KILN_OK;
}

static kiln_status convt_infer(kiln__kctx *c) {
  conv_shape cs;
  kiln_status st = convt_shape_get(c, &cs);
  if (st != KILN_OK) return st;
  int64_t dims[KILN_MAX_RANK];
  dims[0] = (int64_t)cs.n;
  dims[1] = (int64_t)cs.m;
  for (int i = 0; i < cs.g.nsp; i++) dims[i + 2] = cs.g.out[i];
  kiln__set_shape(c->out[0], c->in[0]->dtype, cs.g.nsp + 2, dims);
  return KILN_OK;
}

static size_t convt_scratch(const kiln__kctx *c) {
  conv_shape cs;
  kiln_error e;
  kiln__kctx cc = *c;
  cc.err = &e;
  if (c->in[0]->dtype != KILN_DTYPE_FLOAT || convt_shape_get(&cc, &cs) != KILN_OK) return 0;
  size_t rows = cs.mg * cs.g.k_count;
  return rows * col_chunk(rows, cs.g.in_count) * sizeof(float);
}

typedef struct col2im_args {
  const geom *g;
  const float *col;   /* (mg * k_count) x (p1 - p0) */
  float *y;           /* output planes of the group */
  size_t p0, p1;      /* input positions of the chunk */
} col2im_args;

/* Scatters the columns of output channels [m0, m1) into their planes. */
static void col2im_channels(void *arg, size_t m0, size_t m1) {
  const col2im_args *a = arg;
  const geom *g = a->g;
  int n = g->nsp, last = n - 1;
  size_t width = a->p1 - a->p0;
  for (size_t r = m0 * g->k_count; r < m1 * g->k_count; r++) {
    size_t ch = r / g->k_count;
    int64_t koff[KILN_MAX_RANK], o[KILN_MAX_RANK];
    unflatten(r % g->k_count, n, g->k, koff);
    for (int i = 0; i < n; i++) koff[i] = koff[i] * g->d[i] - g->pb[i];
    float *yc = a->y + ch * g->out_count;
    const float *src = a->col + r * width;
    unflatten(a->p0, n, g->in, o);
    size_t p = a->p0;
    while (p < a->p1) {
      bool ok = true;
      size_t base = 0;
      for (int i = 0; i < last; i++) {
        int64_t oo = o[i] * g->s[i] + koff[i];
        if (oo < 0 || oo >= g->out[i]) ok = false;
        base = base * (size_t)g->out[i] + (size_t)(ok ? oo : 0);
      }
      int64_t run = KILN__MIN(g->in[last] - o[last], (int64_t)(a->p1 - p));
      if (ok) {
        int64_t lo, hi, s = g->s[last], o0 = o[last] * s + koff[last];
        valid_range(o[last], s, koff[last], g->out[last], run, &lo, &hi);
        float *row = yc + base * (size_t)g->out[last];
        for (int64_t t = lo; t < hi; t++) row[o0 + t * s] += src[t];
      }
      src += run;
      p += (size_t)run;
      o[last] += run;
      for (int i = last; i > 0 && o[i] >= g->in[i]; i--) {
        o[i] = 0;
        o[i - 1]++;
      }
    }
  }
}

static kiln_status convt_run_f32(kiln__kctx *c, const conv_shape *cs) {
  const geom *g = &cs->g;
  const float *x = c->in[0]->data, *w = c->in[1]->data;
  const float *b = c->n_in > 2 && c->in[2] ? c->in[2]->data : NULL;
  float *y = c->out[0]->data;
  fill_bias(y, cs->n, cs->m, g->out_count, b);
  size_t rows = cs->mg * g->k_count, cols = g->in_count;
  size_t chunk = col_chunk(rows, cols);
  if (c->scratch_bytes < rows * chunk * sizeof(float))
    return kiln__fail(c->err, KILN_INTERNAL, "ConvTranspose: scratch too small");
  float *col = c->scratch;
  for (size_t n = 0; n < cs->n; n++) {
    for (size_t grp = 0; grp < cs->groups; grp++) {
      const float *xg = x + (n * cs->c + grp * cs->cg) * cols;
      const float *wg = w + grp * cs->cg * rows;
      float *yg = y + (n * cs->m + grp * cs->mg) * g->out_count;
      for (size_t p0 = 0; p0 < cols; p0 += chunk) {
        size_t p1 = KILN__MIN(cols, p0 + chunk);
        kiln__sgemm(c->pool, true, false, rows, p1 - p0, cs->cg, 1.0f, wg, rows, xg + p0, cols,
                    0.0f, col, p1 - p0);
        col2im_args a = {g, col, yg, p0, p1};
        kiln__parallel_for(c->pool, cs->mg, col2im_channels, &a);
      }
    }
  }
  return KILN_OK;
}

/* Gathering transposed convolution in double for dtypes other than float32. */
static void convt_slow_planes(void *arg, size_t q0, size_t q1) {
  const conv_slow_args *a = arg;
  const conv_shape *cs = a->cs;
  const geom *g = &cs->g;
  int n = g->nsp;
  kiln_dtype t = a->x->dtype;
  for (size_t q = q0; q < q1; q++) {
    size_t bn = q / cs->m, m = q % cs->m, grp = m / cs->mg, mm = m % cs->mg;
    double bias = a->b ? kiln__load_f64(a->b->data, t, m) : 0.0;
    for (size_t p = 0; p < g->out_count; p++) {
      int64_t o[KILN_MAX_RANK], kk[KILN_MAX_RANK];
      unflatten(p, n, g->out, o);
      double acc = bias;
      for (size_t kidx = 0; kidx < g->k_count; kidx++) {
        unflatten(kidx, n, g->k, kk);
        size_t off = 0;
        bool ok = true;
        for (int i = 0; i < n && ok; i++) {
          int64_t num = o[i] + g->pb[i] - kk[i] * g->d[i];
          ok = num >= 0 && num % g->s[i] == 0 && num / g->s[i] < g->in[i];
          off = off * (size_t)g->in[i] + (size_t)(num / g->s[i]);
        }
        if (!ok) continue;
        for (size_t ch = 0; ch < cs->cg; ch++) {
          size_t ci = grp * cs->cg + ch;
          size_t xi = (bn * cs->c + ci) * g->in_count + off;
          size_t wi = (ci * cs->mg + mm) * g->k_count + kidx;
          acc += kiln__load_f64(a->x->data, t, xi) * kiln__load_f64(a->w->data, t, wi);
        }
      }
      kiln__store_f64(a->y->data, t, q * g->out_count + p, acc);
    }
  }
}

static kiln_status convt_run(kiln__kctx *c) {
  conv_shape cs;
  kiln_status st = convt_shape_get(c, &cs);
  if (st != KILN_OK) return st;
  if (cs.n * cs.m * cs.g.out_count == 0) return KILN_OK;
  if (c->in[0]->dtype == KILN_DTYPE_FLOAT) return convt_run_f32(c, &cs);
  conv_slow_args a = {&cs, c->in[0], c->in[1], c->n_in > 2 ? c->in[2] : NULL, c->out[0]};
  kiln__parallel_for(c->pool, cs.n * cs.m, convt_slow_planes, &a);
  return KILN_OK;
}

/* ---- pooling --------------------------------------------------------------------------------- */

typedef enum pool_kind { POOL_MAX, POOL_AVG, POOL_LP } pool_kind;

typedef struct pool_args {
  pool_kind kind;
  geom g;
  bool include_pad;
  bool col_major;      /* MaxPool storage_order 1 */
  double p;            /* LpPool */
  const kiln_tensor *x;
  kiln_tensor *y, *idx;
} pool_args;

static bool pool_dtype_ok(pool_kind kind, kiln_dtype t) {
  if (kind == POOL_MAX && (t == KILN_DTYPE_INT8 || t == KILN_DTYPE_UINT8)) return true;
  return is_conv_float(t);
}

/* The p of LpPool / GlobalLpPool: an int since opset 2, a float in opset 1. */
static kiln_status lp_order(const kiln__kctx *c, double *p) {
  const kiln__attr *at = kiln__attr_find(c->node, "p");
  *p = !at ? 2.0 : at->type == KILN__ATTR_FLOAT ? (double)at->f : (double)at->i;
  if (!(*p > 0) || isinf(*p))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s: p = %g", c->node->op_type, *p);
  return KILN_OK;
}

static kiln_status pool_setup(const kiln__kctx *c, pool_kind kind, pool_args *a) {
  const kiln_tensor *x = c->in[0];
  memset(a, 0, sizeof *a);
  a->kind = kind;
  a->x = x;
  if (!pool_dtype_ok(kind, x->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "%s on %s is not supported", c->node->op_type,
                      kiln_dtype_name(x->dtype));
  if (x->rank < 3)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "input must have rank >= 3, got %d",
                      x->rank);
  int64_t k[KILN_MAX_RANK];
  const int64_t *ks;
  size_t nks = kiln__attr_ints(c->node, "kernel_shape", &ks);
  if (nks != (size_t)(x->rank - 2))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "kernel_shape has %zu values for %d spatial dims", nks, x->rank - 2);
  for (size_t i = 0; i < nks; i++) k[i] = ks[i];
  int64_t ceil_mode = kiln__attr_int(c->node, "ceil_mode", 0);
  kiln_status st = fwd_geom(c, x, k, ceil_mode != 0, &a->g);
  if (st != KILN_OK) return st;
  a->include_pad = kiln__attr_int(c->node, "count_include_pad", 0) != 0;
  a->col_major = kiln__attr_int(c->node, "storage_order", 0) != 0;
  if (kind == POOL_LP) return lp_order(c, &a->p);
  return KILN_OK;
}

static void pool_set_out(kiln__kctx *c, const pool_args *a) {
  int64_t dims[KILN_MAX_RANK];
  dims[0] = a->x->dims[0];
  dims[1] = a->x->dims[1];
  for (int i = 0; i < a->g.nsp; i++) dims[i + 2] = a->g.out[i];
  kiln__set_shape(c->out[0], a->x->dtype, a->g.nsp + 2, dims);
  if (c->n_out > 1 && c->out[1]) kiln__set_shape(c->out[1], KILN_DTYPE_INT64, a->g.nsp + 2, dims);
}

static inline double load_val(const void *p, kiln_dtype t, size_t i) {
  return t == KILN_DTYPE_FLOAT ? (double)((const float *)p)[i] : kiln__load_f64(p, t, i);
}

/* Pools the planes [q0, q1) (each an (n, c) pair), any rank, any supported dtype. */
static void pool_planes(void *arg, size_t q0, size_t q1) {
  const pool_args *a = arg;
  const geom *g = &a->g;
  int n = g->nsp;
  kiln_dtype t = a->x->dtype;
  int64_t rstride[KILN_MAX_RANK], cstride[KILN_MAX_RANK];
  kiln__strides(n, g->in, rstride);
  for (int i = 0; i < n; i++) cstride[i] = i ? cstride[i - 1] * g->in[i - 1] : 1;
  for (size_t q = q0; q < q1; q++) {
    size_t xoff = q * g->in_count, yoff = q * g->out_count;
    int64_t o[KILN_MAX_RANK] = {0};
    for (size_t p = 0; p < g->out_count; p++) {
      int64_t start[KILN_MAX_RANK], lo[KILN_MAX_RANK], hi[KILN_MAX_RANK];
      double inside = 1, padded = 1;
      for (int i = 0; i < n; i++) {
        start[i] = o[i] * g->s[i] - g->pb[i];
        valid_range(0, g->d[i], start[i], g->in[i], g->k[i], &lo[i], &hi[i]);
        inside *= (double)(hi[i] - lo[i]);
        if (a->include_pad) {
          int64_t plo, phi;
          valid_range(0, g->d[i], start[i] + g->pb[i], g->in[i] + g->pb[i] + g->pe[i], g->k[i],
                      &plo, &phi);
          padded *= (double)(phi - plo);
        }
      }
      double acc = a->kind == POOL_MAX ? -INFINITY : 0.0;
      int64_t best = -1;
      if (inside > 0) {
        int64_t k[KILN_MAX_RANK];
        for (int i = 0; i < n; i++) k[i] = lo[i];
        bool first = true;
        for (;;) {
          size_t off = 0, coff = 0;
          for (int i = 0; i < n; i++) {
            int64_t ii = start[i] + k[i] * g->d[i];
            off += (size_t)(ii * rstride[i]);
            coff += (size_t)(ii * cstride[i]);
          }
          double v = load_val(a->x->data, t, xoff + off);
          if (a->kind == POOL_MAX) {
            if (first || v > acc) {
              acc = v;
              best = (int64_t)(xoff + (a->col_major ? coff : off));
            }
            first = false;
          } else if (a->kind == POOL_AVG) {
            acc += v;
          } else {
            acc += a->p == 2.0 ? v * v : pow(fabs(v), a->p);
          }
          int i = n - 1;
          for (; i >= 0; i--) {
            if (++k[i] < hi[i]) break;
            k[i] = lo[i];
          }
          if (i < 0) break;
        }
      }
      if (a->kind == POOL_AVG) acc = acc / (a->include_pad ? padded : inside);
      else if (a->kind == POOL_LP) acc = a->p == 2.0 ? sqrt(acc) : pow(acc, 1.0 / a->p);
      else if (inside == 0) /* a window entirely in the padding */
        acc = kiln__dtype_is_float(t) ? -INFINITY : t == KILN_DTYPE_UINT8 ? 0 : -128;
      if (t == KILN_DTYPE_FLOAT) ((float *)a->y->data)[yoff + p] = (float)acc;
      else kiln__store_f64(a->y->data, t, yoff + p, acc);
      if (a->idx) ((int64_t *)a->idx->data)[yoff + p] = best;
      for (int i = n - 1; i >= 0; i--) {
        if (++o[i] < g->out[i]) break;
        o[i] = 0;
      }
    }
  }
}

/* float32 2D max / average pooling, the common CNN case: each kernel tap sweeps a whole output
   row, without per-element dispatch. */
static void pool2d_f32_planes(void *arg, size_t q0, size_t q1) {
  const pool_args *a = arg;
  const geom *g = &a->g;
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  int64_t sw = g->s[1], dw = g->d[1];
  bool is_max = a->kind == POOL_MAX;
  for (size_t q = q0; q < q1; q++) {
    const float *xp = (const float *)a->x->data + q * g->in_count;
    float *yp = (float *)a->y->data + q * g->out_count;
    for (int64_t oh = 0; oh < OH; oh++) {
      int64_t h0 = oh * g->s[0] - g->pb[0], khlo, khhi, phlo, phhi;
      valid_range(0, g->d[0], h0, H, g->k[0], &khlo, &khhi);
      valid_range(0, g->d[0], h0 + g->pb[0], H + g->pb[0] + g->pe[0], g->k[0], &phlo, &phhi);
      float *restrict yr = yp + oh * OW;
      for (int64_t ow = 0; ow < OW; ow++) yr[ow] = is_max ? -INFINITY : 0.0f;
      for (int64_t kh = khlo; kh < khhi; kh++) {
        const float *restrict xr = xp + (h0 + kh * g->d[0]) * W;
        for (int64_t kw = 0; kw < g->k[1]; kw++) {
          int64_t off = kw * dw - g->pb[1], lo, hi;
          valid_range(0, sw, off, W, OW, &lo, &hi);
          if (is_max) {
            for (int64_t ow = lo; ow < hi; ow++) {
              float v = xr[ow * sw + off], acc = yr[ow];
              yr[ow] = v > acc || v != v ? v : acc;
            }
          } else {
            for (int64_t ow = lo; ow < hi; ow++) yr[ow] += xr[ow * sw + off];
          }
        }
      }
      if (is_max) continue;
      for (int64_t ow = 0; ow < OW; ow++) {
        int64_t w0 = ow * sw - g->pb[1], kwlo, kwhi, cnt;
        if (a->include_pad) {
          valid_range(0, dw, w0 + g->pb[1], W + g->pb[1] + g->pe[1], g->k[1], &kwlo, &kwhi);
          cnt = (phhi - phlo) * (kwhi - kwlo);
        } else {
          valid_range(0, dw, w0, W, g->k[1], &kwlo, &kwhi);
          cnt = (khhi - khlo) * (kwhi - kwlo);
        }
        yr[ow] = cnt ? yr[ow] / (float)cnt : NAN;
      }
    }
  }
}

static kiln_status pool_infer_kind(kiln__kctx *c, pool_kind kind) {
  pool_args a;
  kiln_status st = pool_setup(c, kind, &a);
  if (st != KILN_OK) return st;
  pool_set_out(c, &a);
  return KILN_OK;
}

static kiln_status pool_run_kind(kiln__kctx *c, pool_kind kind) {
  pool_args a;
  kiln_status st = pool_setup(c, kind, &a);
  if (st != KILN_OK) return st;
  a.y = c->out[0];
  a.idx = c->n_out > 1 ? c->out[1] : NULL;
  size_t planes = (size_t)a.x->dims[0] * (size_t)a.x->dims[1];
  if (a.g.nsp == 2 && a.x->dtype == KILN_DTYPE_FLOAT && !a.idx && kind != POOL_LP)
    kiln__parallel_for(c->pool, planes, pool2d_f32_planes, &a);
  else
    kiln__parallel_for(c->pool, planes, pool_planes, &a);
  return KILN_OK;
}

static kiln_status maxpool_infer(kiln__kctx *c) { return pool_infer_kind(c, POOL_MAX); }
static kiln_status maxpool_run(kiln__kctx *c) { return pool_run_kind(c, POOL_MAX); }
static kiln_status avgpool_infer(kiln__kctx *c) { return pool_infer_kind(c, POOL_AVG); }
static kiln_status avgpool_run(kiln__kctx *c) { return pool_run_kind(c, POOL_AVG); }
static kiln_status lppool_infer(kiln__kctx *c) { return pool_infer_kind(c, POOL_LP); }
static kiln_status lppool_run(kiln__kctx *c) { return pool_run_kind(c, POOL_LP); }

/* ---- global pools ---------------------------------------------------------------------------- */

typedef struct gpool_args {
  pool_kind kind;
  double p;
  size_t plane;
  const kiln_tensor *x;
  kiln_tensor *y;
} gpool_args;

static void gpool_planes(void *arg, size_t q0, size_t q1) {
  const gpool_args *a = arg;
  kiln_dtype t = a->x->dtype;
  for (size_t q = q0; q < q1; q++) {
    size_t off = q * a->plane;
    double acc;
    if (t == KILN_DTYPE_FLOAT && a->kind != POOL_LP) {
      const float *xp = (const float *)a->x->data + off;
      float m = a->plane ? xp[0] : -INFINITY, s = 0.0f;
      if (a->kind == POOL_MAX)
        for (size_t i = 0; i < a->plane; i++) m = xp[i] > m || xp[i] != xp[i] ? xp[i] : m;
      else
        for (size_t i = 0; i < a->plane; i++) s += xp[i];
      acc = a->kind == POOL_MAX ? m : (double)s / (double)a->plane;
    } else {
      acc = a->kind == POOL_MAX ? -INFINITY : 0.0;
      for (size_t i = 0; i < a->plane; i++) {
        double v = kiln__load_f64(a->x->data, t, off + i);
        if (a->kind == POOL_MAX) acc = v > acc || v != v ? v : acc;
        else if (a->kind == POOL_AVG) acc += v;
        else acc += pow(fabs(v), a->p);
      }
      if (a->kind == POOL_AVG) acc /= (double)a->plane;
      else if (a->kind == POOL_LP) acc = pow(acc, 1.0 / a->p);
    }
    kiln__store_f64(a->y->data, t, q, acc);
  }
}

static kiln_status gpool_infer_kind(kiln__kctx *c, pool_kind kind) {
  const kiln_tensor *x = c->in[0];
  if (x->rank < 3)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "input must have rank >= 3, got %d",
                      x->rank);
  if (!is_conv_float(x->dtype))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "%s on %s is not supported", c->node->op_type,
                      kiln_dtype_name(x->dtype));
  int64_t dims[KILN_MAX_RANK];
  for (int i = 0; i < x->rank; i++) dims[i] = i < 2 ? x->dims[i] : 1;
  kiln__set_shape(c->out[0], x->dtype, x->rank, dims);
  return KILN_OK;
}

static kiln_status gpool_run_kind(kiln__kctx *c, pool_kind kind) {
  const kiln_tensor *x = c->in[0];
  gpool_args a = {kind, 2.0, 1, x, c->out[0]};
  if (kind == POOL_LP) {
    kiln_status st = lp_order(c, &a.p);
    if (st != KILN_OK) return st;
  }
  for (int i = 2; i < x->rank; i++) a.plane *= (size_t)x->dims[i];
  kiln__parallel_for(c->pool, (size_t)x->dims[0] * (size_t)x->dims[1], gpool_planes, &a);
  return KILN_OK;
}

static kiln_status gmaxpool_infer(kiln__kctx *c) { return gpool_infer_kind(c, POOL_MAX); }
static kiln_status gmaxpool_run(kiln__kctx *c) { return gpool_run_kind(c, POOL_MAX); }
static kiln_status gavgpool_infer(kiln__kctx *c) { return gpool_infer_kind(c, POOL_AVG); }
static kiln_status gavgpool_run(kiln__kctx *c) { return gpool_run_kind(c, POOL_AVG); }
static kiln_status glppool_infer(kiln__kctx *c) { return gpool_infer_kind(c, POOL_LP); }
static kiln_status glppool_run(kiln__kctx *c) { return gpool_run_kind(c, POOL_LP); }

/* ---- MaxUnpool ------------------------------------------------------------------------------- */

/* The shape MaxPool's input had (from kernel_shape, strides and pads): indices refer to it. With an
   output_shape input, that tensor lands in the leading corner of a larger zero tensor. */
static kiln_status maxunpool_shapes(const kiln__kctx *c, int64_t *pooled, int64_t *dims) {
  const kiln_tensor *x = c->in[0], *ind = c->in[1];
  const kiln_tensor *shape = c->n_in > 2 ? c->in[2] : NULL;
  if (x->rank < 3)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "MaxUnpool: X must have rank >= 3");
  if (ind->dtype != KILN_DTYPE_INT64 || ind->rank != x->rank ||
      memcmp(ind->dims, x->dims, sizeof(int64_t) * (size_t)x->rank))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "MaxUnpool: I must be int64 with the shape of X");
  if (kiln_dtype_size(x->dtype) == 0)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "MaxUnpool on %s", kiln_dtype_name(x->dtype));
  int n = x->rank - 2;
  int64_t k[KILN_MAX_RANK], s[KILN_MAX_RANK], pads[2 * KILN_MAX_RANK];
  kiln_status st;
  const int64_t *ks;
  if (kiln__attr_ints(c->node, "kernel_shape", &ks) == 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "MaxUnpool: kernel_shape is required");
  if ((st = ints_attr(c, "kernel_shape", n, 0, 1, k)) != KILN_OK ||
      (st = ints_attr(c, "strides", n, 1, 1, s)) != KILN_OK ||
      (st = ints_attr(c, "pads", 2 * n, 0, 0, pads)) != KILN_OK)
    return st;
  pooled[0] = x->dims[0];
  pooled[1] = x->dims[1];
  for (int i = 0; i < n; i++) {
    pooled[i + 2] = (x->dims[i + 2] - 1) * s[i] + k[i] - pads[i] - pads[i + n];
    if (pooled[i + 2] < 0)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "MaxUnpool: negative output dim");
  }
  memcpy(dims, pooled, sizeof(int64_t) * (size_t)x->rank);
  if (shape) {
    size_t cnt;
    if ((st = kiln__read_ints(c, shape, dims, KILN_MAX_RANK, &cnt)) != KILN_OK) return st;
    if (cnt != (size_t)x->rank)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "MaxUnpool: output_shape has %zu values for rank %d", cnt, x->rank);
    for (int i = 0; i < x->rank; i++)
      if (dims[i] < pooled[i])
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                          "MaxUnpool: output_shape[%d] = %lld is smaller than %lld", i,
                          (long long)dims[i], (long long)pooled[i]);
  }
  return KILN_OK;
}

static kiln_status maxunpool_infer(kiln__kctx *c) {
  int64_t pooled[KILN_MAX_RANK], dims[KILN_MAX_RANK];
  kiln_status st = maxunpool_shapes(c, pooled, dims);
  if (st != KILN_OK) return st;
  kiln__set_shape(c->out[0], c->in[0]->dtype, c->in[0]->rank, dims);
  return KILN_OK;
}

static kiln_status maxunpool_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *ind = c->in[1];
  kiln_tensor *y = c->out[0];
  int64_t pooled[KILN_MAX_RANK], dims[KILN_MAX_RANK];
  kiln_status st = maxunpool_shapes(c, pooled, dims);
  if (st != KILN_OK) return st;
  int rank = x->rank;
  bool same = !memcmp(pooled, dims, sizeof(int64_t) * (size_t)rank);
  size_t es = kiln_dtype_size(x->dtype), total = kiln_tensor_count(y), n = kiln_tensor_count(x);
  size_t limit;
  kiln__shape_count(rank, pooled, &limit);
  memset(y->data, 0, total * es);
  const int64_t *ip = ind->data;
  for (size_t i = 0; i < n; i++) {
    if (ip[i] < 0 || (uint64_t)ip[i] >= limit)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "MaxUnpool: index %lld is outside the unpooled tensor (%zu elements)",
                        (long long)ip[i], limit);
    size_t at = (size_t)ip[i];
    if (!same) {
      int64_t co[KILN_MAX_RANK];
      unflatten(at, rank, pooled, co);
      at = 0;
      for (int d = 0; d < rank; d++) at = at * (size_t)dims[d] + (size_t)co[d];
    }
    memcpy((char *)y->data + at * es, (const char *)x->data + i * es, es);
  }
  return KILN_OK;
}

/* ---- table ----------------------------------------------------------------------------------- */

const kiln__op kiln__ops_conv[] = {
    {"", "Conv", conv_infer, conv_run, conv_scratch, 0, 2, 3},
    {"", "ConvTranspose", convt_infer, convt_run, convt_scratch, 0, 2, 3},
    {"", "MaxPool", maxpool_infer, maxpool_run, NULL, 0, 1, 1},
    {"", "AveragePool", avgpool_infer, avgpool_run, NULL, 0, 1, 1},
    {"", "LpPool", lppool_infer, lppool_run, NULL, 0, 1, 1},
    {"", "GlobalMaxPool", gmaxpool_infer, gmaxpool_run, NULL, 0, 1, 1},
    {"", "GlobalAveragePool", gavgpool_infer, gavgpool_run, NULL, 0, 1, 1},
    {"", "GlobalLpPool", glppool_infer, glppool_run, NULL, 0, 1, 1},
    {"", "MaxUnpool", maxunpool_infer, maxunpool_run, NULL, 0, 2, 3},
    {"", "Resize", kiln__resize_infer, kiln__resize_run, kiln__resize_scratch, 0, 1, 4},
    {"", "Upsample", kiln__resize_infer, kiln__resize_run, kiln__resize_scratch, 0, 1, 2},
    {0},
};
