/* Reference kernels: region and sampling ops (RoiAlign, GridSample, NonMaxSuppression).
 *
 * Exported through index.c's table. The arithmetic follows ONNX Runtime's CPU kernels (and, for
 * GridSample, PyTorch's grid_sample, which the ONNX spec reproduces), since those produced the
 * conformance data. */
#include "kernels/ref/index_ops.h"

#include <math.h>

/* Element i of a floating tensor; float32 directly, other types through the generic loader. */
static inline double ldf(const kiln_tensor *t, size_t i) {
  return t->dtype == KILN_DTYPE_FLOAT ? ((const float *)t->data)[i]
                                      : kiln__load_f64(t->data, t->dtype, i);
}

static inline void stf(kiln_tensor *t, size_t i, double v) {
  if (t->dtype == KILN_DTYPE_FLOAT) ((float *)t->data)[i] = (float)v;
  else kiln__store_f64(t->data, t->dtype, i, v);
}

static kiln_status need_float(kiln__kctx *c, const kiln_tensor *t, const char *what) {
  if (!kiln__dtype_is_float(t->dtype))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "%s must be a floating type, got %s", what,
                      kiln_dtype_name(t->dtype));
  return KILN_OK;
}

/* ---- RoiAlign -------------------------------------------------------------------------------- */

typedef struct roi_attrs {
  bool max_mode, half_pixel;
  int64_t oh, ow, sampling;
  double scale;
} roi_attrs;

static kiln_status roi_read(kiln__kctx *c, roi_attrs *a) {
  const kiln__node *n = c->node;
  const kiln_tensor *x = c->in[0], *rois = c->in[1], *bi = c->in[2];
  kiln_status st;
  if ((st = need_float(c, x, "X")) || (st = need_float(c, rois, "rois"))) return st;
  if (bi->dtype != KILN_DTYPE_INT64 && bi->dtype != KILN_DTYPE_INT32)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "batch_indices must be int64");
  if (x->rank != 4)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "X must be 4-D (N, C, H, W), got rank %d",
                      x->rank);
  if (rois->rank != 2 || rois->dims[1] != 4)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "rois must have shape (num_rois, 4)");
  if (bi->rank != 1 || bi->dims[0] != rois->dims[0])
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "batch_indices must have shape (num_rois)");
  const char *mode = kiln__attr_str(n, "mode", "avg");
  if (strcmp(mode, "avg") && strcmp(mode, "max"))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown mode '%s'", mode);
  a->max_mode = !strcmp(mode, "max");
  /* Opset 10 had no coordinate_transformation_mode and behaved as output_half_pixel. */
  const char *ctm = kiln__attr_str(n, "coordinate_transformation_mode",
                                   n->opset >= 16 ? "half_pixel" : "output_half_pixel");
  if (strcmp(ctm, "half_pixel") && strcmp(ctm, "output_half_pixel"))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "unknown coordinate_transformation_mode '%s'", ctm);
  a->half_pixel = !strcmp(ctm, "half_pixel");
  a->oh = kiln__attr_int(n, "output_height", 1);
  a->ow = kiln__attr_int(n, "output_width", 1);
  a->sampling = kiln__attr_int(n, "sampling_ratio", 0);
  a->scale = kiln__attr_float(n, "spatial_scale", 1.0f);
  if (a->oh < 1 || a->ow < 1 || a->sampling < 0)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "output_height/output_width must be positive, sampling_ratio >= 0");
  return KILN_OK;
}

kiln_status kiln__roialign_infer(kiln__kctx *c) {
  roi_attrs a = {0};
  kiln_status st = roi_read(c, &a);
  if (st) return st;
  int64_t dims[4] = {c->in[1]->dims[0], c->in[0]->dims[1], a.oh, a.ow};
  kiln__set_shape(c->out[0], c->in[0]->dtype, 4, dims);
  return KILN_OK;
}

kiln_status kiln__roialign_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *rois = c->in[1], *bi = c->in[2];
  kiln_tensor *y = c->out[0];
  roi_attrs a = {0};
  kiln_status st = roi_read(c, &a);
  if (st) return st;
  int64_t n_batch = x->dims[0], channels = x->dims[1], height = x->dims[2], width = x->dims[3];
  size_t nrois = (size_t)rois->dims[0], plane = (size_t)(height * width);
  double offset = a.half_pixel ? 0.5 : 0.0;
  size_t o = 0;
  for (size_t r = 0; r < nrois; r++) {
    int64_t b = kiln__load_i64(bi->data, bi->dtype, r);
    if (b < 0 || b >= n_batch)
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "batch index %lld is out of [0, %lld)",
                        (long long)b, (long long)n_batch);
    double x0 = ldf(rois, r * 4 + 0) * a.scale - offset, y0 = ldf(rois, r * 4 + 1) * a.scale - offset;
    double x1 = ldf(rois, r * 4 + 2) * a.scale - offset, y1 = ldf(rois, r * 4 + 3) * a.scale - offset;
    double rw = x1 - x0, rh = y1 - y0;
    if (!a.half_pixel) {
      rw = fmax(rw, 1.0);
      rh = fmax(rh, 1.0);
    }
    double bh = rh / (double)a.oh, bw = rw / (double)a.ow;
    int64_t gh = a.sampling > 0 ? a.sampling : (int64_t)ceil(rh / (double)a.oh);
    int64_t gw = a.sampling > 0 ? a.sampling : (int64_t)ceil(rw / (double)a.ow);
    gh = KILN__MAX(gh, 0);
    gw = KILN__MAX(gw, 0);
    double count = (double)KILN__MAX(gh * gw, 1);
    for (int64_t ch = 0; ch < channels; ch++) {
      size_t base = ((size_t)b * (size_t)channels + (size_t)ch) * plane;
      for (int64_t ph = 0; ph < a.oh; ph++) {
        for (int64_t pw = 0; pw < a.ow; pw++, o++) {
          double acc = 0.0;
          bool have = false;
          for (int64_t iy = 0; iy < gh; iy++) {
            double yy = y0 + (double)ph * bh + ((double)iy + 0.5) * bh / (double)gh;
            for (int64_t ix = 0; ix < gw; ix++) {
              double xx = x0 + (double)pw * bw + ((double)ix + 0.5) * bw / (double)gw;
              double v = 0.0;
              if (!(yy < -1.0 || yy > (double)height || xx < -1.0 || xx > (double)width)) {
                double sy = yy <= 0 ? 0 : yy, sx = xx <= 0 ? 0 : xx;
                int64_t ylo = (int64_t)sy, xlo = (int64_t)sx, yhi, xhi;
                if (ylo >= height - 1) {
                  yhi = ylo = height - 1;
                  sy = (double)ylo;
                } else {
                  yhi = ylo + 1;
                }
                if (xlo >= width - 1) {
                  xhi = xlo = width - 1;
                  sx = (double)xlo;
                } else {
                  xhi = xlo + 1;
                }
                double ly = sy - (double)ylo, lx = sx - (double)xlo, hy = 1.0 - ly, hx = 1.0 - lx;
                double v1 = hy * hx * ldf(x, base + (size_t)(ylo * width + xlo));
                double v2 = hy * lx * ldf(x, base + (size_t)(ylo * width + xhi));
                double v3 = ly * hx * ldf(x, base + (size_t)(yhi * width + xlo));
                double v4 = ly * lx * ldf(x, base + (size_t)(yhi * width + xhi));
                /* Max mode takes the largest weighted corner, as ONNX Runtime does. */
                v = a.max_mode ? fmax(fmax(fmax(v1, v2), v3), v4) : v1 + v2 + v3 + v4;
              }
              if (a.max_mode) acc = have ? fmax(acc, v) : v;
              else acc += v;
              have = true;
            }
          }
          stf(y, o, a.max_mode ? acc : acc / count);
        }
      }
    }
  }
  return KILN_OK;
}

/* ---- GridSample ------------------------------------------------------------------------------ */

enum { GS_LINEAR, GS_NEAREST, GS_CUBIC };
enum { GS_ZEROS, GS_BORDER, GS_REFLECTION };

typedef struct gs_attrs {
  int mode, pad;
  bool align;
} gs_attrs;

static kiln_status gs_read(kiln__kctx *c, gs_attrs *a) {
  const kiln__node *n = c->node;
  const kiln_tensor *x = c->in[0], *grid = c->in[1];
  kiln_status st;
  if ((st = need_float(c, x, "X")) || (st = need_float(c, grid, "grid"))) return st;
  const char *mode = kiln__attr_str(n, "mode", n->opset >= 20 ? "linear" : "bilinear");
  if (!strcmp(mode, "bilinear") || !strcmp(mode, "linear")) a->mode = GS_LINEAR;
  else if (!strcmp(mode, "nearest")) a->mode = GS_NEAREST;
  else if (!strcmp(mode, "bicubic") || !strcmp(mode, "cubic")) a->mode = GS_CUBIC;
  else return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown mode '%s'", mode);
  const char *pad = kiln__attr_str(n, "padding_mode", "zeros");
  if (!strcmp(pad, "zeros")) a->pad = GS_ZEROS;
  else if (!strcmp(pad, "border")) a->pad = GS_BORDER;
  else if (!strcmp(pad, "reflection")) a->pad = GS_REFLECTION;
  else return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "unknown padding_mode '%s'", pad);
  a->align = kiln__attr_int(n, "align_corners", 0) != 0;
  if (x->rank != 4)
    return kiln__fail(c->err, KILN_UNSUPPORTED, "GridSample supports 4-D input, got rank %d",
                      x->rank);
  if (grid->rank != 4 || grid->dims[0] != x->dims[0] || grid->dims[3] != 2)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "grid must have shape (N, H_out, W_out, 2)");
  return KILN_OK;
}

kiln_status kiln__gridsample_infer(kiln__kctx *c) {
  gs_attrs a = {0};
  kiln_status st = gs_read(c, &a);
  if (st) return st;
  int64_t dims[4] = {c->in[0]->dims[0], c->in[0]->dims[1], c->in[1]->dims[1], c->in[1]->dims[2]};
  kiln__set_shape(c->out[0], c->in[0]->dtype, 4, dims);
  return KILN_OK;
}

/* Grid coordinate in [-1, 1] to pixel coordinate. */
static inline double gs_unnormalize(double v, int64_t size, bool align) {
  return align ? (v + 1.0) / 2.0 * (double)(size - 1) : ((v + 1.0) * (double)size - 1.0) / 2.0;
}

static inline double gs_clip(double v, int64_t size) {
  return fmin((double)(size - 1), fmax(v, 0.0));
}

/* Reflects v into [twice_low / 2, twice_high / 2]. */
static double gs_reflect(double v, double twice_low, double twice_high) {
  if (twice_low == twice_high) return 0.0;
  double lo = twice_low / 2.0, span = (twice_high - twice_low) / 2.0;
  v = fabs(v - lo);
  double extra = fmod(v, span), flips = floor(v / span);
  return fmod(flips, 2.0) == 0.0 ? extra + lo : span - extra + lo;
}

static double gs_pad(double v, int64_t size, const gs_attrs *a) {
  if (a->pad == GS_BORDER) return gs_clip(v, size);
  if (a->pad == GS_REFLECTION) {
    v = a->align ? gs_reflect(v, 0.0, 2.0 * (double)(size - 1))
                 : gs_reflect(v, -1.0, 2.0 * (double)size - 1.0);
    return gs_clip(v, size);
  }
  return v;
}

typedef struct gs_plane {
  const kiln_tensor *x;
  size_t base;
  int64_t h, w;
} gs_plane;

static inline double gs_at(const gs_plane *p, int64_t iy, int64_t ix) {
  if (iy < 0 || iy >= p->h || ix < 0 || ix >= p->w) return 0.0;
  return ldf(p->x, p->base + (size_t)(iy * p->w + ix));
}

/* Bicubic taps are padded one by one. */
static inline double gs_at_padded(const gs_plane *p, const gs_attrs *a, double iy, double ix) {
  iy = gs_pad(iy, p->h, a);
  ix = gs_pad(ix, p->w, a);
  if (!(iy > -1.0 && ix > -1.0 && iy < (double)p->h && ix < (double)p->w)) return 0.0;
  return gs_at(p, (int64_t)iy, (int64_t)ix);
}

static inline double cubic_interp(double x0, double x1, double x2, double x3, double t) {
  const double A = -0.75;
  double u = t + 1.0, c0 = ((A * u - 5.0 * A) * u + 8.0 * A) * u - 4.0 * A;
  double c1 = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
  double s = 1.0 - t, c2 = ((A + 2.0) * s - (A + 3.0)) * s * s + 1.0;
  double v = s + 1.0, c3 = ((A * v - 5.0 * A) * v + 8.0 * A) * v - 4.0 * A;
  return x0 * c0 + x1 * c1 + x2 * c2 + x3 * c3;
}

static double gs_sample(const gs_plane *p, const gs_attrs *a, double gx, double gy) {
  double ix = gs_unnormalize(gx, p->w, a->align), iy = gs_unnormalize(gy, p->h, a->align);
  if (a->mode == GS_CUBIC) {
    double fx = floor(ix), fy = floor(iy), tx = ix - fx, ty = iy - fy, rows[4];
    for (int i = 0; i < 4; i++) {
      double yy = fy - 1.0 + i;
      rows[i] = cubic_interp(gs_at_padded(p, a, yy, fx - 1.0), gs_at_padded(p, a, yy, fx),
                             gs_at_padded(p, a, yy, fx + 1.0), gs_at_padded(p, a, yy, fx + 2.0),
                             tx);
    }
    return cubic_interp(rows[0], rows[1], rows[2], rows[3], ty);
  }
  ix = gs_pad(ix, p->w, a);
  iy = gs_pad(iy, p->h, a);
  if (a->mode == GS_NEAREST) {
    double rx = nearbyint(ix), ry = nearbyint(iy);
    if (!(rx >= 0 && ry >= 0 && rx < (double)p->w && ry < (double)p->h)) return 0.0;
    return gs_at(p, (int64_t)ry, (int64_t)rx);
  }
  double fx = floor(ix), fy = floor(iy);
  if (!(fx >= -1.0 && fy >= -1.0 && fx < (double)p->w && fy < (double)p->h)) return 0.0;
  int64_t x0 = (int64_t)fx, y0 = (int64_t)fy;
  double lx = ix - fx, ly = iy - fy;
  return gs_at(p, y0, x0) * (1.0 - lx) * (1.0 - ly) + gs_at(p, y0, x0 + 1) * lx * (1.0 - ly) +
         gs_at(p, y0 + 1, x0) * (1.0 - lx) * ly + gs_at(p, y0 + 1, x0 + 1) * lx * ly;
}

kiln_status kiln__gridsample_run(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0], *grid = c->in[1];
  kiln_tensor *y = c->out[0];
  gs_attrs a = {0};
  kiln_status st = gs_read(c, &a);
  if (st) return st;
  int64_t n = x->dims[0], ch = x->dims[1], oh = grid->dims[1], ow = grid->dims[2];
  size_t opix = (size_t)(oh * ow);
  gs_plane p = {x, 0, x->dims[2], x->dims[3]};
  for (int64_t b = 0; b < n; b++) {
    size_t gbase = (size_t)b * opix * 2;
    for (int64_t k = 0; k < ch; k++) {
      p.base = ((size_t)b * (size_t)ch + (size_t)k) * (size_t)(p.h * p.w);
      size_t obase = ((size_t)b * (size_t)ch + (size_t)k) * opix;
      for (size_t i = 0; i < opix; i++) {
        double gx = ldf(grid, gbase + 2 * i), gy = ldf(grid, gbase + 2 * i + 1);
        stf(y, obase + i, gs_sample(&p, &a, gx, gy));
      }
    }
  }
  return KILN_OK;
}

/* ---- NonMaxSuppression ----------------------------------------------------------------------- */

typedef struct nms_args {
  const kiln_tensor *boxes, *scores;
  size_t batches, classes, spatial;
  size_t max_out;
  float iou_threshold, score_threshold;
  bool has_score_threshold, center;
} nms_args;

static kiln_status nms_read(kiln__kctx *c, nms_args *a) {
  const kiln_tensor *boxes = c->in[0], *scores = c->in[1];
  kiln_status st;
  if ((st = need_float(c, boxes, "boxes")) || (st = need_float(c, scores, "scores"))) return st;
  if (boxes->rank != 3 || boxes->dims[2] != 4)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "boxes must have shape (batches, boxes, 4)");
  if (scores->rank != 3 || scores->dims[0] != boxes->dims[0] || scores->dims[2] != boxes->dims[1])
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT,
                      "scores must have shape (batches, classes, boxes)");
  int64_t cpb = kiln__attr_int(c->node, "center_point_box", 0);
  if (cpb != 0 && cpb != 1)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "center_point_box must be 0 or 1");
  a->boxes = boxes;
  a->scores = scores;
  a->batches = (size_t)boxes->dims[0];
  a->classes = (size_t)scores->dims[1];
  a->spatial = (size_t)boxes->dims[1];
  a->center = cpb == 1;
  a->max_out = 0;
  a->iou_threshold = 0.0f;
  a->score_threshold = 0.0f;
  a->has_score_threshold = false;
  const kiln_tensor *t;
  if (c->n_in > 2 && (t = c->in[2]) && kiln_tensor_count(t) > 0) {
    if (!t->data) return KILN__NEED_DATA;
    int64_t m = kiln__load_i64(t->data, t->dtype, 0);
    a->max_out = m <= 0 ? 0 : (size_t)KILN__MIN((uint64_t)m, (uint64_t)a->spatial);
  }
  if (c->n_in > 3 && (t = c->in[3]) && kiln_tensor_count(t) > 0) {
    if (!t->data) return KILN__NEED_DATA;
    a->iou_threshold = (float)kiln__load_f64(t->data, t->dtype, 0);
    if (!(a->iou_threshold >= 0.0f && a->iou_threshold <= 1.0f))
      return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "iou_threshold must be in [0, 1]");
  }
  if (c->n_in > 4 && (t = c->in[4]) && kiln_tensor_count(t) > 0) {
    if (!t->data) return KILN__NEED_DATA;
    a->score_threshold = (float)kiln__load_f64(t->data, t->dtype, 0);
    a->has_score_threshold = true;
  }
  if (!boxes->data || !scores->data) return KILN__NEED_DATA;
  return KILN_OK;
}

typedef struct nms_box {
  float x0, y0, x1, y1;
} nms_box;

static nms_box nms_box_at(const nms_args *a, size_t b, size_t i) {
  size_t o = (b * a->spatial + i) * 4;
  float v0 = (float)ldf(a->boxes, o), v1 = (float)ldf(a->boxes, o + 1);
  float v2 = (float)ldf(a->boxes, o + 2), v3 = (float)ldf(a->boxes, o + 3);
  nms_box r;
  if (a->center) { /* [x_center, y_center, width, height] */
    r.x0 = v0 - v2 / 2.0f;
    r.x1 = v0 + v2 / 2.0f;
    r.y0 = v1 - v3 / 2.0f;
    r.y1 = v1 + v3 / 2.0f;
  } else { /* [y1, x1, y2, x2], either corner first */
    r.y0 = fminf(v0, v2);
    r.y1 = fmaxf(v0, v2);
    r.x0 = fminf(v1, v3);
    r.x1 = fmaxf(v1, v3);
  }
  return r;
}

static bool nms_suppress(const nms_box *p, const nms_box *q, float threshold) {
  float ix0 = fmaxf(p->x0, q->x0), ix1 = fminf(p->x1, q->x1);
  if (ix1 <= ix0) return false;
  float iy0 = fmaxf(p->y0, q->y0), iy1 = fminf(p->y1, q->y1);
  if (iy1 <= iy0) return false;
  float inter = (ix1 - ix0) * (iy1 - iy0);
  if (inter <= 0.0f) return false;
  float area_p = (p->x1 - p->x0) * (p->y1 - p->y0), area_q = (q->x1 - q->x0) * (q->y1 - q->y0);
  float uni = area_p + area_q - inter;
  if (area_p <= 0.0f || area_q <= 0.0f || uni <= 0.0f) return false;
  return inter / uni > threshold;
}

typedef struct nms_cmp_ctx {
  const kiln_tensor *scores;
  size_t base;
} nms_cmp_ctx;

/* Higher scores first; the stable sort keeps equal scores in box order. */
static int nms_cmp(const void *ctx, size_t i, size_t j) {
  const nms_cmp_ctx *s = ctx;
  double a = ldf(s->scores, s->base + i), b = ldf(s->scores, s->base + j);
  return (a < b) - (a > b);
}

/* Runs the selection; writes (batch, class, box) triples to out when it is not NULL. Buffers:
   cand, tmp and sel hold `spatial` entries each. Returns the number selected. */
static size_t nms_select(const nms_args *a, size_t *cand, size_t *tmp, size_t *sel,
                         int64_t *out) {
  size_t total = 0;
  if (a->max_out == 0) return 0;
  for (size_t b = 0; b < a->batches; b++) {
    for (size_t k = 0; k < a->classes; k++) {
      nms_cmp_ctx ctx = {a->scores, (b * a->classes + k) * a->spatial};
      size_t n = 0;
      for (size_t i = 0; i < a->spatial; i++)
        if (!a->has_score_threshold || ldf(a->scores, ctx.base + i) > a->score_threshold)
          cand[n++] = i;
      kiln__sort_indices(cand, tmp, n, nms_cmp, &ctx);
      size_t ns = 0;
      for (size_t i = 0; i < n && ns < a->max_out; i++) {
        nms_box p = nms_box_at(a, b, cand[i]);
        bool keep = true;
        for (size_t j = 0; j < ns && keep; j++) {
          nms_box q = nms_box_at(a, b, sel[j]);
          keep = !nms_suppress(&p, &q, a->iou_threshold);
        }
        if (!keep) continue;
        sel[ns++] = cand[i];
        if (out) {
          out[total * 3] = (int64_t)b;
          out[total * 3 + 1] = (int64_t)k;
          out[total * 3 + 2] = (int64_t)cand[i];
        }
        total++;
      }
    }
  }
  return total;
}

kiln_status kiln__nms_infer(kiln__kctx *c) {
  c->out[0]->dtype = KILN_DTYPE_INT64;
  nms_args a = {0};
  kiln_status st = nms_read(c, &a);
  if (st) return st;
  size_t bytes;
  if (!kiln__mul_ok(a.spatial, 3 * sizeof(size_t), &bytes))
    return kiln__fail(c->err, KILN_NO_MEMORY, "too many boxes");
  size_t *buf = kiln__malloc(bytes ? bytes : 1);
  if (!buf) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory in NonMaxSuppression");
  size_t n = nms_select(&a, buf, buf + a.spatial, buf + 2 * a.spatial, NULL);
  kiln__free(buf);
  int64_t dims[2] = {(int64_t)n, 3};
  kiln__set_shape(c->out[0], KILN_DTYPE_INT64, 2, dims);
  return KILN_OK;
}

size_t kiln__nms_scratch(const kiln__kctx *c) {
  const kiln_tensor *boxes = c->in[0];
  return boxes->rank == 3 ? 3 * (size_t)boxes->dims[1] * sizeof(size_t) : 0;
}

kiln_status kiln__nms_run(kiln__kctx *c) {
  nms_args a = {0};
  kiln_status st = nms_read(c, &a);
  if (st == KILN__NEED_DATA) return kiln__fail(c->err, KILN_INTERNAL, "inputs not available");
  if (st) return st;
  if (c->scratch_bytes < 3 * a.spatial * sizeof(size_t))
    return kiln__fail(c->err, KILN_INTERNAL, "NonMaxSuppression scratch too small");
  size_t *buf = c->scratch;
  /* Count first, so a mismatch with the inferred shape cannot overrun the output. */
  size_t n = nms_select(&a, buf, buf + a.spatial, buf + 2 * a.spatial, NULL);
  if ((int64_t)n != c->out[0]->dims[0])
    return kiln__fail(c->err, KILN_INTERNAL, "input changed after inference");
  nms_select(&a, buf, buf + a.spatial, buf + 2 * a.spatial, c->out[0]->data);
  return KILN_OK;
}
