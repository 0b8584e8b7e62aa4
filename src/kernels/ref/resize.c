/* Reference kernels: Resize and Upsample.
 *
 * Every axis gets a table of taps: for each output coordinate, the input indices (clamped to the
 * edge) and weights that produce it, or a marker for "outside the crop" (tf_crop_and_resize's
 * extrapolation_value). The tables follow the ONNX reference implementation exactly: the
 * coordinate transformation, the n nearest neighbours of the source coordinate, Keys cubic weights,
 * exclude_outside renormalisation and antialiasing (a kernel stretched by 1/scale when
 * downsampling). Nearest mode then gathers every output element directly; linear and cubic run one
 * separable pass per axis whose table is not the identity, downsampling axes first, through two
 * ping-pong scratch buffers. Tables and buffers live in scratch memory sized by
 * kiln__resize_scratch. */
#include "kernels/ref/resize.h"

#include <math.h>

/* Taps per output coordinate beyond which an antialiased kernel is refused. */
#define MAX_TAPS ((int64_t)1 << 20)

typedef enum rmode { MODE_NEAREST, MODE_LINEAR, MODE_CUBIC } rmode;

typedef enum ctmode {
  CT_HALF_PIXEL,
  CT_PYTORCH_HALF_PIXEL,
  CT_ALIGN_CORNERS,
  CT_ASYMMETRIC,
  CT_TF_CROP_AND_RESIZE,
  CT_HALF_PIXEL_SYMMETRIC,
} ctmode;

typedef enum nmode {
  NEAREST_ROUND_PREFER_FLOOR,
  NEAREST_ROUND_PREFER_CEIL,
  NEAREST_FLOOR,
  NEAREST_CEIL,
  NEAREST_LEGACY, /* Upsample and Resize-10: floor when upsampling, ceil when downsampling */
} nmode;

typedef struct rplan {
  int rank;
  kiln_dtype dtype;
  int64_t in[KILN_MAX_RANK], out[KILN_MAX_RANK];
  double scale[KILN_MAX_RANK]; /* output / input, as the coordinate transformation uses it */
  double outw[KILN_MAX_RANK];  /* output extent in the coordinate transformation */
  double roi0[KILN_MAX_RANK], roi1[KILN_MAX_RANK];
  int64_t taps[KILN_MAX_RANK]; /* taps per output coordinate before compaction */
  int order[KILN_MAX_RANK];    /* pass order of the axes */
  rmode mode;
  ctmode ct;
  nmode nm;
  double cubic_a, extrap;
  bool exclude_outside, antialias;
} rplan;

static kiln_status parse_mode(const kiln__kctx *c, bool legacy, rmode *m) {
  const char *s = kiln__attr_str(c->node, "mode", "nearest");
  if (!strcmp(s, "nearest")) *m = MODE_NEAREST;
  else if (!strcmp(s, "linear") || (legacy && (!strcmp(s, "bilinear") || !strcmp(s, "trilinear"))))
    *m = MODE_LINEAR;
  else if (!strcmp(s, "cubic") && !legacy) *m = MODE_CUBIC;
  else return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown mode '%s'", s);
  return KILN_OK;
}

static kiln_status parse_modern_attrs(const kiln__kctx *c, rplan *p) {
  const char *s = kiln__attr_str(c->node, "coordinate_transformation_mode", "half_pixel");
  if (!strcmp(s, "half_pixel")) p->ct = CT_HALF_PIXEL;
  else if (!strcmp(s, "pytorch_half_pixel")) p->ct = CT_PYTORCH_HALF_PIXEL;
  else if (!strcmp(s, "align_corners")) p->ct = CT_ALIGN_CORNERS;
  else if (!strcmp(s, "asymmetric")) p->ct = CT_ASYMMETRIC;
  else if (!strcmp(s, "tf_crop_and_resize")) p->ct = CT_TF_CROP_AND_RESIZE;
  else if (!strcmp(s, "half_pixel_symmetric")) p->ct = CT_HALF_PIXEL_SYMMETRIC;
  else
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown coordinate_transformation_mode '%s'",
                      s);
  s = kiln__attr_str(c->node, "nearest_mode", "round_prefer_floor");
  if (!strcmp(s, "round_prefer_floor")) p->nm = NEAREST_ROUND_PREFER_FLOOR;
  else if (!strcmp(s, "round_prefer_ceil")) p->nm = NEAREST_ROUND_PREFER_CEIL;
  else if (!strcmp(s, "floor")) p->nm = NEAREST_FLOOR;
  else if (!strcmp(s, "ceil")) p->nm = NEAREST_CEIL;
  else return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown nearest_mode '%s'", s);
  p->cubic_a = kiln__attr_float(c->node, "cubic_coeff_a", -0.75f);
  p->exclude_outside = kiln__attr_int(c->node, "exclude_outside", 0) != 0;
  p->extrap = kiln__attr_float(c->node, "extrapolation_value", 0.0f);
  p->antialias = kiln__attr_int(c->node, "antialias", 0) != 0 && p->mode != MODE_NEAREST;
  return KILN_OK;
}

/* An optional input that is present and not empty. */
static const kiln_tensor *given(const kiln__kctx *c, int i) {
  const kiln_tensor *t = i < c->n_in ? c->in[i] : NULL;
  return t && kiln_tensor_count(t) > 0 ? t : NULL;
}

/* Reads the scales (a float vector) into v; NEED_DATA when its data is not known yet. */
static kiln_status read_scales(const kiln__kctx *c, const kiln_tensor *t, size_t want,
                               double *v) {
  if (!t->data) return KILN__NEED_DATA;
  if (!kiln__dtype_is_float(t->dtype) || t->rank != 1 || kiln_tensor_count(t) != want)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "scales must be %zu floats", want);
  for (size_t i = 0; i < want; i++) {
    v[i] = kiln__load_f64(t->data, t->dtype, i);
    if (!(v[i] > 0) || isinf(v[i]))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "scale %zu is %g", i, v[i]);
  }
  return KILN_OK;
}

static double taps_support(const rplan *p) { return p->mode == MODE_CUBIC ? 2.0 : 1.0; }

static double kernel_scale(const rplan *p, int d) {
  return p->antialias && p->scale[d] < 1.0 ? p->scale[d] : 1.0;
}

/* Interprets the node: output shape, per-axis scales, modes. `need_roi` also reads the roi
   (tf_crop_and_resize at run time). */
static kiln_status plan_get(const kiln__kctx *c, bool need_roi, rplan *p) {
  const kiln_tensor *x = c->in[0];
  bool upsample = !strcmp(c->node->op_type, "Upsample");
  bool legacy = upsample || c->node->opset < 11;
  memset(p, 0, sizeof *p);
  p->rank = x->rank;
  p->dtype = x->dtype;
  if (x->rank < 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s needs an input of rank >= 1",
                      c->node->op_type);
  if (kiln_dtype_size(x->dtype) == 0 || kiln_dtype_size(x->dtype) > 8)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "%s on %s is not supported", c->node->op_type,
                      kiln_dtype_name(x->dtype));
  kiln_status st = parse_mode(c, legacy, &p->mode);
  if (st != KILN_OK) return st;
  if (p->mode != MODE_NEAREST && (x->dtype == KILN_DTYPE_BOOL || x->dtype == KILN_DTYPE_STRING))
    return kiln__fail(c->err, KILN_UNSUPPORTED, "%s: interpolation of %s",
                      c->node->op_type, kiln_dtype_name(x->dtype));
  int rank = x->rank;
  int axes[KILN_MAX_RANK];
  int n_axes = rank;
  for (int i = 0; i < rank; i++) {
    axes[i] = i;
    p->in[i] = p->out[i] = x->dims[i];
    p->scale[i] = 1.0;
    p->outw[i] = (double)x->dims[i];
    p->roi0[i] = 0.0;
    p->roi1[i] = 1.0;
  }
  double scales[KILN_MAX_RANK];
  int64_t sizes[KILN_MAX_RANK];
  bool have_sizes = false;
  const kiln_tensor *roi = NULL;
  p->cubic_a = -0.75;
  if (legacy) {
    p->ct = CT_ASYMMETRIC;
    p->nm = NEAREST_LEGACY;
    if (upsample && c->node->opset < 9) {
      const float *f;
      size_t nf = kiln__attr_floats(c->node, "scales", &f);
      if (nf != (size_t)rank)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Upsample: %zu scales for rank %d", nf,
                          rank);
      for (int i = 0; i < rank; i++) {
        scales[i] = f[i];
        if (!(scales[i] > 0) || isinf(scales[i]))
          return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "scale %d is %g", i, scales[i]);
      }
    } else {
      const kiln_tensor *s = c->n_in > 1 ? c->in[1] : NULL;
      if (!s) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "the scales input is required");
      if ((st = read_scales(c, s, (size_t)rank, scales)) != KILN_OK) return st;
    }
  } else {
    if ((st = parse_modern_attrs(c, p)) != KILN_OK) return st;
    const int64_t *ax;
    size_t nax = kiln__attr_ints(c->node, "axes", &ax);
    if (kiln__attr_find(c->node, "axes")) {
      if (nax < 1 || nax > (size_t)rank)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Resize: %zu axes for rank %d", nax,
                          rank);
      n_axes = (int)nax;
      bool seen[KILN_MAX_RANK] = {false};
      for (int i = 0; i < n_axes; i++) {
        if (!kiln__norm_axis(ax[i], rank, &axes[i]) || seen[axes[i]])
          return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Resize: bad or repeated axis %lld",
                            (long long)ax[i]);
        seen[axes[i]] = true;
      }
    }
    const kiln_tensor *s = given(c, 2), *z = given(c, 3);
    roi = given(c, 1);
    if ((s != NULL) == (z != NULL))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                        "Resize needs exactly one of scales and sizes");
    if (s) {
      if ((st = read_scales(c, s, (size_t)n_axes, scales)) != KILN_OK) return st;
    } else {
      size_t nz;
      if (z->rank != 1)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Resize: sizes must be a vector");
      if ((st = kiln__read_ints(c, z, sizes, KILN_MAX_RANK, &nz)) != KILN_OK) return st;
      if (nz != (size_t)n_axes)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Resize: %zu sizes for %d axes", nz,
                          n_axes);
      for (int i = 0; i < n_axes; i++)
        if (sizes[i] < 0)
          return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Resize: negative size %lld",
                            (long long)sizes[i]);
      have_sizes = true;
    }
  }
  if (have_sizes) {
    const char *pol = kiln__attr_str(c->node, "keep_aspect_ratio_policy", "stretch");
    bool stretch = !strcmp(pol, "stretch"), not_larger = !strcmp(pol, "not_larger");
    if (!stretch && !not_larger && strcmp(pol, "not_smaller"))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown keep_aspect_ratio_policy '%s'",
                        pol);
    double keep = not_larger ? INFINITY : 0.0;
    for (int i = 0; i < n_axes; i++) {
      int a = axes[i];
      if (p->in[a] == 0) {
        if (sizes[i] != 0)
          return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Resize: cannot grow an empty axis");
        continue;
      }
      double r = (double)sizes[i] / (double)p->in[a];
      keep = not_larger ? fmin(keep, r) : fmax(keep, r);
      p->out[a] = sizes[i];
      p->scale[a] = r;
      p->outw[a] = (double)sizes[i];
    }
    if (!stretch) {
      if (!(keep > 0) || isinf(keep))
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Resize: degenerate sizes");
      for (int i = 0; i < n_axes; i++) {
        int a = axes[i];
        p->scale[a] = keep;
        p->outw[a] = keep * (double)p->in[a];
        p->out[a] = (int64_t)(p->outw[a] + 0.5);
      }
    }
  } else {
    for (int i = 0; i < n_axes; i++) {
      int a = axes[i];
      double o = (double)p->in[a] * scales[i];
      if (o >= 4e18)
        return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Resize: output too large");
      p->scale[a] = scales[i];
      p->outw[a] = o;
      p->out[a] = (int64_t)floor(o);
    }
  }
  size_t count;
  if (!kiln__shape_count(rank, p->out, &count))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "Resize: output too large");
  if (p->ct == CT_TF_CROP_AND_RESIZE) {
    if (!roi)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "tf_crop_and_resize needs the roi input");
    if (!kiln__dtype_is_float(roi->dtype) || kiln_tensor_count(roi) != 2 * (size_t)n_axes)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "roi must hold %d floats", 2 * n_axes);
    if (need_roi) {
      if (!roi->data) return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "roi is not known");
      for (int i = 0; i < n_axes; i++) {
        p->roi0[axes[i]] = kiln__load_f64(roi->data, roi->dtype, (size_t)i);
        p->roi1[axes[i]] = kiln__load_f64(roi->data, roi->dtype, (size_t)(i + n_axes));
      }
    }
  }
  for (int d = 0; d < rank; d++) {
    if (p->mode == MODE_NEAREST) {
      p->taps[d] = 1;
      continue;
    }
    double reach = taps_support(p) / kernel_scale(p, d);
    if (reach > (double)MAX_TAPS)
      return kiln__fail(c->err, KILN_UNSUPPORTED, "Resize: antialiasing scale %g is too small",
                        p->scale[d]);
    int64_t start = (int64_t)floor(-reach) + 1;
    p->taps[d] = 2 - 2 * start;
  }
  /* Downsampling axes first keeps the intermediate tensors small. */
  for (int i = 0; i < rank; i++) p->order[i] = i;
  for (int i = 1; i < rank; i++) {
    int a = p->order[i], j = i;
    double ra = p->in[a] ? (double)p->out[a] / (double)p->in[a] : 1.0;
    for (; j > 0; j--) {
      int b = p->order[j - 1];
      double rb = p->in[b] ? (double)p->out[b] / (double)p->in[b] : 1.0;
      if (rb <= ra) break;
      p->order[j] = b;
    }
    p->order[j] = a;
  }
  return KILN_OK;
}

kiln_status kiln__resize_infer(kiln__kctx *c) {
  rplan p;
  kiln_status st = plan_get(c, false, &p);
  if (st != KILN_OK) return st;
  kiln__set_shape(c->out[0], c->in[0]->dtype, p.rank, p.out);
  return KILN_OK;
}

/* ---- scratch layout -------------------------------------------------------------------------- */

typedef struct rlayout {
  size_t table_off[KILN_MAX_RANK]; /* idx (int64) then weights (double), taps*out each */
  size_t buf_off[2];
  size_t buf_elems;
  int nbuf;
  size_t total;
} rlayout;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

static bool layout_get(const rplan *p, rlayout *l) {
  size_t off = 0, elem = p->dtype == KILN_DTYPE_FLOAT ? sizeof(float) : sizeof(double);
  memset(l, 0, sizeof *l);
  for (int d = 0; d < p->rank; d++) {
    size_t n;
    l->table_off[d] = off;
    if (!kiln__mul_ok((size_t)p->out[d], (size_t)p->taps[d], &n) || n > SIZE_MAX / 32)
      return false;
    off = align64(off + n * (sizeof(int64_t) + sizeof(double)));
  }
  if (p->mode != MODE_NEAREST) {
    /* Sizes along the chain when every axis gets a pass: the actual passes are a subset. */
    int64_t dims[KILN_MAX_RANK];
    size_t biggest = 0, cnt;
    memcpy(dims, p->in, sizeof dims);
    bool generic = p->dtype != KILN_DTYPE_FLOAT;
    if (generic && kiln__shape_count(p->rank, dims, &cnt)) biggest = cnt;
    for (int k = 0; k < p->rank; k++) {
      dims[p->order[k]] = p->out[p->order[k]];
      if (!kiln__shape_count(p->rank, dims, &cnt)) return false;
      if (k < p->rank - 1 || generic) biggest = KILN__MAX(biggest, cnt);
    }
    l->nbuf = generic ? 2 : KILN__MIN(p->rank - 1, 2);
    l->buf_elems = biggest;
    for (int b = 0; b < l->nbuf; b++) {
      if (biggest > SIZE_MAX / 16) return false;
      l->buf_off[b] = off;
      off = align64(off + biggest * elem);
    }
  }
  l->total = off;
  return true;
}

size_t kiln__resize_scratch(const kiln__kctx *c) {
  rplan p;
  rlayout l;
  kiln_error e;
  kiln__kctx cc = *c;
  cc.err = &e;
  if (plan_get(&cc, false, &p) != KILN_OK || !layout_get(&p, &l)) return 0;
  return l.total;
}

/* ---- tables ---------------------------------------------------------------------------------- */

/* The source coordinate of output index x along axis d; false when it lies outside the crop. */
static bool source_coord(const rplan *p, int d, int64_t x, double *xo) {
  double in = (double)p->in[d], outw = p->outw[d], s = p->scale[d], xf = (double)x, v;
  switch (p->ct) {
    case CT_ALIGN_CORNERS: v = outw == 1.0 ? 0.0 : xf * (in - 1.0) / (outw - 1.0); break;
    case CT_ASYMMETRIC: v = xf / s; break;
    case CT_TF_CROP_AND_RESIZE: {
      double r0 = p->roi0[d], r1 = p->roi1[d];
      v = outw == 1.0 ? (r1 - r0) * (in - 1.0) / 2.0 : xf * (r1 - r0) * (in - 1.0) / (outw - 1.0);
      v += r0 * (in - 1.0);
      if (v < 0.0 || v > in - 1.0) return false;
      break;
    }
    case CT_PYTORCH_HALF_PIXEL: v = outw == 1.0 ? -0.5 : (xf + 0.5) / s - 0.5; break;
    case CT_HALF_PIXEL_SYMMETRIC: {
      double adjustment = (double)p->out[d] / outw, center = in / 2.0;
      v = center * (1.0 - adjustment) + (xf + 0.5) / s - 0.5;
      break;
    }
    default: v = (xf + 0.5) / s - 0.5; break;
  }
  *xo = v;
  return true;
}

static int64_t nearest_index(const rplan *p, int d, double xo) {
  double f = floor(xo), r = xo - f;
  int64_t i;
  if (p->nm == NEAREST_LEGACY) i = (int64_t)(p->scale[d] < 1.0 ? ceil(xo) : f);
  else if (r == 0.0) i = (int64_t)f;
  else {
    bool up;
    switch (p->nm) {
      case NEAREST_ROUND_PREFER_CEIL: up = r >= 0.5; break;
      case NEAREST_FLOOR: up = false; break;
      case NEAREST_CEIL: up = true; break;
      default: up = r > 0.5; break;
    }
    i = (int64_t)f + up;
  }
  return i < 0 ? 0 : i >= p->in[d] ? p->in[d] - 1 : i;
}

static double keys_cubic(double x, double a) {
  x = fabs(x);
  if (x <= 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a;
  return 0.0;
}

/* Fills the table of axis d (taps[d] per output index; idx -1 marks "outside the crop"), then
   drops zero-weight taps. Returns the taps per output index left, and whether the axis is the
   identity. */
static int64_t build_table(const rplan *p, int d, int64_t *idx, double *w, bool *identity) {
  int64_t n = p->taps[d], in = p->in[d], out = p->out[d];
  double ks = kernel_scale(p, d);
  int64_t start = 1 - n / 2;
  for (int64_t o = 0; o < out; o++) {
    int64_t *ix = idx + o * n;
    double *wt = w + o * n, xo;
    if (!source_coord(p, d, o, &xo)) {
      for (int64_t t = 0; t < n; t++) {
        ix[t] = -1;
        wt[t] = 0.0;
      }
      continue;
    }
    if (p->mode == MODE_NEAREST) {
      ix[0] = nearest_index(p, d, xo);
      wt[0] = 1.0;
      continue;
    }
    double f = floor(xo), r = xo - f, sum = 0.0;
    if (r == 0.0) {
      f -= 1.0;
      r = 1.0;
    }
    for (int64_t t = 0; t < n; t++) {
      double arg = ((double)(start + t) - r) * ks, v;
      if (p->mode == MODE_LINEAR) v = fmax(0.0, 1.0 - fabs(arg));
      else v = keys_cubic(arg, p->cubic_a);
      int64_t i = (int64_t)f + start + t;
      if (p->exclude_outside && (i < 0 || i >= in)) v = 0.0;
      ix[t] = i < 0 ? 0 : i >= in ? in - 1 : i;
      wt[t] = v;
      sum += v;
    }
    if ((p->antialias || p->exclude_outside) && sum != 0.0)
      for (int64_t t = 0; t < n; t++) wt[t] /= sum;
  }
  /* Compaction: keep only the taps with a weight, in place (the new stride is not larger). */
  int64_t ne = 1;
  for (int64_t o = 0; o < out; o++) {
    int64_t k = 0;
    for (int64_t t = 0; t < n; t++) k += w[o * n + t] != 0.0;
    ne = KILN__MAX(ne, k);
  }
  bool id = out == in;
  for (int64_t o = 0; o < out; o++) {
    int64_t k = 0, first = idx[o * n];
    double tmpw[64];
    int64_t tmpi[64];
    if (ne < n && ne <= 64) {
      for (int64_t t = 0; t < n; t++)
        if (w[o * n + t] != 0.0) {
          tmpi[k] = idx[o * n + t];
          tmpw[k++] = w[o * n + t];
        }
      for (int64_t t = 0; t < ne; t++) {
        idx[o * ne + t] = first < 0 ? -1 : t < k ? tmpi[t] : (k ? tmpi[0] : first);
        w[o * ne + t] = t < k ? tmpw[t] : 0.0;
      }
    }
    int64_t stride = ne < n && ne <= 64 ? ne : n;
    if (id) {
      int64_t hits = 0;
      bool ok = idx[o * stride] >= 0;
      for (int64_t t = 0; t < stride && ok; t++) {
        double v = w[o * stride + t];
        if (v == 1.0 && idx[o * stride + t] == o) hits++;
        else if (v != 0.0) ok = false;
      }
      id = ok && hits == 1;
    }
  }
  *identity = id;
  return ne < n && ne <= 64 ? ne : n;
}

/* ---- nearest: a direct gather ---------------------------------------------------------------- */

typedef struct gather_args {
  const rplan *p;
  const int64_t *idx[KILN_MAX_RANK];
  int64_t istride[KILN_MAX_RANK];
  const unsigned char *x;
  unsigned char *y;
  size_t es;
  unsigned char ext[8];
} gather_args;

#define GATHER_ROW(T)                                                       \
  do {                                                                      \
    const T *src = (const T *)a->x + base;                                  \
    T *dst = (T *)yr, e;                                                    \
    memcpy(&e, a->ext, sizeof e);                                           \
    for (int64_t j = 0; j < width; j++) dst[j] = il[j] < 0 ? e : src[il[j]]; \
  } while (0)

static void gather_rows(void *arg, size_t r0, size_t r1) {
  const gather_args *a = arg;
  const rplan *p = a->p;
  int last = p->rank - 1;
  int64_t width = p->out[last];
  const int64_t *il = a->idx[last];
  for (size_t row = r0; row < r1; row++) {
    size_t rest = row;
    int64_t base = 0;
    bool outside = false;
    for (int d = last - 1; d >= 0; d--) {
      int64_t o = (int64_t)(rest % (size_t)p->out[d]);
      rest /= (size_t)p->out[d];
      int64_t i = a->idx[d][o];
      if (i < 0) outside = true;
      else base += i * a->istride[d];
    }
    unsigned char *yr = a->y + row * (size_t)width * a->es;
    if (outside) {
      for (int64_t j = 0; j < width; j++) memcpy(yr + (size_t)j * a->es, a->ext, a->es);
      continue;
    }
    switch (a->es) {
      case 1: GATHER_ROW(uint8_t); break;
      case 2: GATHER_ROW(uint16_t); break;
      case 4: GATHER_ROW(uint32_t); break;
      default: GATHER_ROW(uint64_t); break;
    }
  }
}

/* ---- linear / cubic: one pass per axis ------------------------------------------------------- */

typedef struct pass_args {
  const void *src;
  void *dst;
  size_t in_d, out_d, inner;
  size_t n;
  const int64_t *idx;
  const double *w;
  double extrap;
} pass_args;

#define DEFINE_PASS(NAME, T)                                                       \
  static void NAME(void *arg, size_t i0, size_t i1) {                              \
    const pass_args *a = arg;                                                      \
    const T *src = a->src;                                                         \
    T *dst = a->dst;                                                               \
    size_t inner = a->inner, n = a->n;                                             \
    size_t ot = i0 / a->out_d, o = i0 % a->out_d;                                  \
    for (size_t it = i0; it < i1; it++, o++) {                                     \
      if (o == a->out_d) {                                                         \
        o = 0;                                                                     \
        ot++;                                                                      \
      }                                                                            \
      T *dr = dst + it * inner;                                                    \
      const int64_t *ix = a->idx + o * n;                                          \
      const double *wt = a->w + o * n;                                             \
      if (ix[0] < 0) {                                                             \
        for (size_t j = 0; j < inner; j++) dr[j] = (T)a->extrap;                   \
        continue;                                                                  \
      }                                                                            \
      const T *s0 = src + ot * a->in_d * inner;                                    \
      if (inner == 1) {                                                            \
        double acc;                                                                \
        if (n == 2) acc = wt[0] * (double)s0[ix[0]] + wt[1] * (double)s0[ix[1]];   \
        else if (n == 4)                                                           \
          acc = (wt[0] * (double)s0[ix[0]] + wt[1] * (double)s0[ix[1]]) +          \
                (wt[2] * (double)s0[ix[2]] + wt[3] * (double)s0[ix[3]]);           \
        else {                                                                     \
          acc = 0.0;                                                               \
          for (size_t t = 0; t < n; t++) acc += wt[t] * (double)s0[ix[t]];         \
        }                                                                          \
        dr[0] = (T)acc;                                                            \
        continue;                                                                  \
      }                                                                            \
      const T *r = s0 + (size_t)ix[0] * inner;                                     \
      T w0 = (T)wt[0];                                                             \
      for (size_t j = 0; j < inner; j++) dr[j] = w0 * r[j];                        \
      for (size_t t = 1; t < n; t++) {                                             \
        if (wt[t] == 0.0) continue;                                                \
        T wv = (T)wt[t];                                                           \
        r = s0 + (size_t)ix[t] * inner;                                            \
        for (size_t j = 0; j < inner; j++) dr[j] += wv * r[j];                     \
      }                                                                            \
    }                                                                              \
  }

DEFINE_PASS(pass_f32, float)
DEFINE_PASS(pass_f64, double)

kiln_status kiln__resize_run(kiln__kctx *c) {
  rplan p;
  rlayout l;
  kiln_status st = plan_get(c, true, &p);
  if (st != KILN_OK) return st;
  const kiln_tensor *x = c->in[0];
  kiln_tensor *y = c->out[0];
  size_t out_count = kiln_tensor_count(y), in_count = kiln_tensor_count(x);
  if (out_count == 0) return KILN_OK;
  if (in_count == 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s: cannot resize an empty tensor",
                      c->node->op_type);
  if (!layout_get(&p, &l) || c->scratch_bytes < l.total)
    return kiln__fail(c->err, KILN_INTERNAL, "%s: scratch too small", c->node->op_type);
  unsigned char *scr = c->scratch;
  int64_t *idx[KILN_MAX_RANK];
  double *w[KILN_MAX_RANK];
  int64_t taps[KILN_MAX_RANK];
  bool identity[KILN_MAX_RANK];
  for (int d = 0; d < p.rank; d++) {
    idx[d] = (int64_t *)(scr + l.table_off[d]);
    w[d] = (double *)(idx[d] + p.out[d] * p.taps[d]);
    taps[d] = build_table(&p, d, idx[d], w[d], &identity[d]);
  }
  size_t es = kiln_dtype_size(x->dtype);
  if (p.mode == MODE_NEAREST) {
    gather_args a = {.p = &p, .x = x->data, .y = y->data, .es = es};
    kiln__strides(p.rank, p.in, a.istride);
    for (int d = 0; d < p.rank; d++) a.idx[d] = idx[d];
    kiln__store_f64(a.ext, x->dtype, 0, p.extrap);
    kiln__parallel_for(c->pool, out_count / (size_t)p.out[p.rank - 1], gather_rows, &a);
    return KILN_OK;
  }
  int passes[KILN_MAX_RANK], np = 0;
  for (int k = 0; k < p.rank; k++)
    if (!identity[p.order[k]]) passes[np++] = p.order[k];
  bool f32 = x->dtype == KILN_DTYPE_FLOAT;
  if (np == 0) {
    memcpy(y->data, x->data, out_count * es);
    return KILN_OK;
  }
  void *buf[2] = {scr + l.buf_off[0], scr + l.buf_off[1]};
  const void *cur = x->data;
  if (!f32) {
    double *b = buf[0];
    for (size_t i = 0; i < in_count; i++) b[i] = kiln__load_f64(x->data, x->dtype, i);
    cur = b;
  }
  int64_t dims[KILN_MAX_RANK];
  memcpy(dims, p.in, sizeof dims);
  for (int k = 0; k < np; k++) {
    int d = passes[k];
    pass_args a = {.src = cur, .in_d = (size_t)dims[d], .out_d = (size_t)p.out[d], .inner = 1,
                   .n = (size_t)taps[d], .idx = idx[d], .w = w[d], .extrap = p.extrap};
    size_t outer = 1;
    for (int i = 0; i < d; i++) outer *= (size_t)dims[i];
    for (int i = d + 1; i < p.rank; i++) a.inner *= (size_t)dims[i];
    if (f32) a.dst = k == np - 1 ? y->data : buf[k % 2];
    else a.dst = buf[(k + 1) % 2];
    kiln__parallel_for(c->pool, outer * a.out_d, f32 ? pass_f32 : pass_f64, &a);
    dims[d] = p.out[d];
    cur = a.dst;
  }
  if (!f32)
    for (size_t i = 0; i < out_count; i++)
      kiln__store_f64(y->data, x->dtype, i, ((const double *)cur)[i]);
  return KILN_OK;
}
