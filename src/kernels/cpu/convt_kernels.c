/* ConvTranspose (2-D, float32) of the "cpu" backend: the packed SGEMM, then col2im.
 *
 * A transposed convolution scatters each input pixel through the kernel: for group g,
 * cols [mg*kh*kw x H*W] = W_g^T [mg*kh*kw x cg] * X_g [cg x H*W], then each row (output channel,
 * ky, kx) of cols is added into the output plane at (iy*sh - pt + ky*dh, ix*sw - pl + kx*dw).
 * W_g^T is packed once at load as the SGEMM's A; X is the GEMM's B read where it lies. The
 * columns are made a chunk of input positions at a time, sized so that the chunk's cols stay in
 * L2 while they are scattered (scratch from the plan, no allocation). The reference kernel has
 * the same structure over its own unpacked GEMM: PP-OCRv4 det's two upsampling layers (2x2,
 * stride 2) ran at ~7 GFLOP/s there. Anything else (other ranks or dtypes, a weight computed at
 * run time) stays on the reference kernel. */
#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/sgemm.h"

/* Floats of cols per chunk: 512 KiB, about Zen's L2. */
#define CHUNK_FLOATS ((size_t)128 * 1024)

typedef struct convt_state {
  kiln__isa isa;
  size_t c, cg, groups, mg, kh, kw, rows; /* rows = mg * kh * kw */
  int64_t sh, sw, dh, dw, opad[2];
  int64_t pads[4];
  kiln__pad_mode pad;
  bool has_shape;                        /* output_shape given: pads follow from it */
  kiln__sgemm_packed *pw;                /* W_g^T per group */
} convt_state;

static bool convt_parse(const kiln__node *n, const kiln__graph *g, convt_state *s) {
  const kiln_tensor *w = kiln__cpu_const_f32(kiln__cpu_input(n, g, 1));
  if (n->n_in < 2 || n->n_in > 3 || n->n_out != 1 || !w || w->rank != 4 ||
      !kiln__cpu_maybe_float(kiln__cpu_input(n, g, 0)))
    return false;
  const kiln__value *b = kiln__cpu_input(n, g, 2);
  if (b && !kiln__cpu_maybe_float(b)) return false;
  for (int i = 0; i < 4; i++)
    if (w->dims[i] < 1) return false;
  int64_t groups = kiln__attr_int(n, "group", 1);
  if (groups < 1 || w->dims[0] % groups != 0) return false;
  s->c = (size_t)w->dims[0];
  s->groups = (size_t)groups;
  s->cg = s->c / s->groups;
  s->mg = (size_t)w->dims[1];
  s->kh = (size_t)w->dims[2];
  s->kw = (size_t)w->dims[3];
  s->rows = s->mg * s->kh * s->kw;
  const int64_t *ks, *os;
  size_t nks = kiln__attr_ints(n, "kernel_shape", &ks);
  if (nks && (nks != 2 || ks[0] != w->dims[2] || ks[1] != w->dims[3])) return false;
  size_t nos = kiln__attr_ints(n, "output_shape", &os);
  if (nos && nos != 2 && nos != 4) return false;
  s->has_shape = nos > 0;
  int64_t st[2], dl[2];
  if (!kiln__cpu_ints(n, "strides", 2, 1, 1, st) || !kiln__cpu_ints(n, "dilations", 2, 1, 1, dl) ||
      !kiln__cpu_ints(n, "pads", 4, 0, 0, s->pads) ||
      !kiln__cpu_ints(n, "output_padding", 2, 0, 0, s->opad))
    return false;
  s->sh = st[0], s->sw = st[1], s->dh = dl[0], s->dw = dl[1];
  const char *ap = kiln__attr_str(n, "auto_pad", "NOTSET");
  if (!strcmp(ap, "NOTSET") || !*ap) s->pad = KILN__PAD_NOTSET;
  else if (!strcmp(ap, "SAME_UPPER")) s->pad = KILN__PAD_SAME_UPPER;
  else if (!strcmp(ap, "SAME_LOWER")) s->pad = KILN__PAD_SAME_LOWER;
  else if (!strcmp(ap, "VALID")) s->pad = KILN__PAD_VALID;
  else return false;
  return true;
}

static bool convt_supports(const kiln__node *n, const kiln__graph *g) {
  convt_state s;
  return convt_parse(n, g, &s);
}

static void convt_release(void *state) {
  convt_state *s = state;
  if (s->pw)
    for (size_t i = 0; i < s->groups; i++) kiln__sgemm_packed_free(&s->pw[i]);
  kiln__free(s->pw);
  kiln__free(s);
}

static kiln_status convt_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                 kiln_error *err) {
  convt_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing ConvTranspose");
  convt_parse(n, g, s);
  kiln_status st = kiln__isa_select(&s->isa, err);
  if (st == KILN_OK && !(s->pw = kiln__calloc(s->groups, sizeof *s->pw)))
    st = kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing ConvTranspose");
  /* W is [C, mg, kh, kw]: group g's cg x rows block, transposed, is the GEMM's A. */
  const float *w = kiln__cpu_const_f32(kiln__cpu_input(n, g, 1))->data;
  for (size_t i = 0; st == KILN_OK && i < s->groups; i++)
    st = kiln__sgemm_pack_a(s->isa, true, s->rows, s->cg, w + i * s->cg * s->rows, s->rows,
                            &s->pw[i], err);
  if (st != KILN_OK) {
    convt_release(s);
    return st;
  }
  *state = s;
  return KILN_OK;
}

/* Input positions per chunk: a multiple of 16 (whole SGEMM panels) that keeps rows x chunk
   within CHUNK_FLOATS, or all of them. */
static size_t chunk_of(const convt_state *s, size_t hw) {
  size_t c = CHUNK_FLOATS / s->rows / 16 * 16;
  return KILN__MIN(hw, KILN__MAX((size_t)16, c));
}

/* The run-time geometry, from the input and the inferred output; false when the shapes are not
   what this kernel handles (the reference kernel then runs and reports any error). */
typedef struct convt_geom {
  size_t n, h, w, oh, ow;
  int64_t pt, pl;
} convt_geom;

static int64_t floor_half(int64_t v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

/* Padding before, along one axis: what the attributes say, or what output_shape / SAME imply. */
static int64_t pad_before(const convt_state *s, int64_t in, int64_t out, int64_t st, int64_t k,
                          int64_t d, int64_t opad, int64_t explicit_pad) {
  if (s->pad == KILN__PAD_VALID) return 0;
  if (s->pad == KILN__PAD_NOTSET && !s->has_shape) return explicit_pad;
  int64_t total = st * (in - 1) + opad + (k - 1) * d + 1 - out, half = floor_half(total);
  return s->pad == KILN__PAD_SAME_UPPER ? half : total - half;
}

static bool convt_geom_get(const kiln__kctx *c, const convt_state *s, convt_geom *cg) {
  const kiln_tensor *x = c->in[0], *w = c->in[1], *y = c->out[0],
                    *b = c->n_in > 2 ? c->in[2] : NULL;
  if (x->dtype != KILN_DTYPE_FLOAT || w->dtype != KILN_DTYPE_FLOAT || x->rank != 4 ||
      y->rank != 4 || (size_t)x->dims[1] != s->c || (size_t)y->dims[1] != s->mg * s->groups ||
      y->dims[0] != x->dims[0])
    return false;
  if (b && (b->dtype != KILN_DTYPE_FLOAT || b->rank != 1 ||
            (size_t)b->dims[0] != s->mg * s->groups))
    return false;
  cg->n = (size_t)x->dims[0];
  cg->h = (size_t)x->dims[2];
  cg->w = (size_t)x->dims[3];
  cg->oh = (size_t)y->dims[2];
  cg->ow = (size_t)y->dims[3];
  cg->pt = pad_before(s, x->dims[2], y->dims[2], s->sh, (int64_t)s->kh, s->dh, s->opad[0],
                      s->pads[0]);
  cg->pl = pad_before(s, x->dims[3], y->dims[3], s->sw, (int64_t)s->kw, s->dw, s->opad[1],
                      s->pads[1]);
  return true;
}

typedef struct col2im_job {
  const convt_state *s;
  const convt_geom *g;
  const float *cols;   /* rows x (p1 - p0) */
  float *y;            /* the group's output planes */
  const float *bias;   /* the group's, or NULL */
  size_t p0, p1;       /* input positions of this chunk */
} col2im_job;

/* First index t in [0, n) with 0 <= o0 + t * s < lim, and the end of that range (s >= 1). */
static void valid_span(int64_t o0, int64_t s, int64_t lim, int64_t n, int64_t *lo, int64_t *hi) {
  int64_t a = o0 >= 0 ? 0 : (-o0 + s - 1) / s;
  int64_t b = o0 >= lim ? 0 : (lim - o0 + s - 1) / s;
  *lo = KILN__MIN(a, n);
  *hi = KILN__MAX(*lo, KILN__MIN(b, n));
}

/* Output channels [m0, m1) of the group: their planes start at the bias on the first chunk,
   then every (ky, kx) row of cols is added in, input row by input row. */
static void col2im_range(void *arg, size_t m0, size_t m1) {
  const col2im_job *j = arg;
  const convt_state *s = j->s;
  const convt_geom *g = j->g;
  size_t width = j->p1 - j->p0, plane = g->oh * g->ow;
  for (size_t ch = m0; ch < m1; ch++) {
    float *yc = j->y + ch * plane;
    if (j->p0 == 0) {
      float v = j->bias ? j->bias[ch] : 0.0f;
      for (size_t i = 0; i < plane; i++) yc[i] = v;
    }
    for (size_t ky = 0; ky < s->kh; ky++)
      for (size_t kx = 0; kx < s->kw; kx++) {
        const float *src = j->cols + ((ch * s->kh + ky) * s->kw + kx) * width;
        int64_t dy = (int64_t)ky * s->dh - g->pt, dx = (int64_t)kx * s->dw - g->pl;
        for (size_t p = j->p0; p < j->p1;) {
          size_t iy = p / g->w, ix = p % g->w, run = KILN__MIN(g->w - ix, j->p1 - p);
          int64_t oy = (int64_t)iy * s->sh + dy;
          if (oy >= 0 && oy < (int64_t)g->oh) {
            int64_t o0 = (int64_t)ix * s->sw + dx, lo, hi;
            valid_span(o0, s->sw, (int64_t)g->ow, (int64_t)run, &lo, &hi);
            float *row = yc + (size_t)oy * g->ow;
            const float *sp = src + (p - j->p0);
            if (s->sw == 1)
              for (int64_t t = lo; t < hi; t++) row[o0 + t] += sp[t];
            else
              for (int64_t t = lo; t < hi; t++) row[o0 + t * s->sw] += sp[t];
          }
          p += run;
        }
      }
  }
}

static size_t convt_scratch(const kiln__kctx *c, void *state) {
  const convt_state *s = state;
  convt_geom g;
  if (!convt_geom_get(c, s, &g)) return c->node->op->scratch ? c->node->op->scratch(c) : 0;
  return s->rows * chunk_of(s, g.h * g.w) * sizeof(float);
}

static kiln_status convt_execute(kiln__kctx *c, void *state) {
  const convt_state *s = state;
  convt_geom g;
  if (!convt_geom_get(c, s, &g)) return c->node->op->run(c);
  size_t hw = g.h * g.w, plane = g.oh * g.ow, chunk = chunk_of(s, hw);
  if (g.n == 0 || plane == 0) return KILN_OK;
  if (c->scratch_bytes < s->rows * chunk * sizeof(float))
    return kiln__fail(c->err, KILN_INTERNAL, "ConvTranspose: scratch too small");
  const float *x = c->in[0]->data, *bias = c->n_in > 2 && c->in[2] ? c->in[2]->data : NULL;
  float *y = c->out[0]->data, *cols = c->scratch;
  size_t m = s->mg * s->groups;
  for (size_t b = 0; b < g.n; b++)
    for (size_t gi = 0; gi < s->groups; gi++) {
      const float *xg = x + (b * s->c + gi * s->cg) * hw;
      float *yg = y + (b * m + gi * s->mg) * plane;
      if (hw == 0) { /* nothing to scatter: the planes are the bias */
        col2im_job j = {s, &g, cols, yg, bias ? bias + gi * s->mg : NULL, 0, 0};
        col2im_range(&j, 0, s->mg);
        continue;
      }
      for (size_t p0 = 0; p0 < hw; p0 += chunk) {
        size_t p1 = KILN__MIN(hw, p0 + chunk);
        kiln__sgemm_args ga = {.m = s->rows, .n = p1 - p0, .k = s->cg, .pa = &s->pw[gi],
                               .b = xg + p0, .ldb = hw, .b_in_place = true, .c = cols,
                               .ldc = p1 - p0, .alpha = 1.0f};
        kiln__sgemm_run(c->pool, s->isa, &ga);
        col2im_job j = {s, &g, cols, yg, bias ? bias + gi * s->mg : NULL, p0, p1};
        double work = (double)s->rows * (double)(p1 - p0) + (p0 ? 0.0 : (double)s->mg * plane);
        kiln__parallel_for(kiln__pool_for(c->pool, work), s->mg, col2im_range, &j);
      }
    }
  return KILN_OK;
}

const kiln__cpu_kernel kiln__cpu_convt_kernels[] = {
    {"ConvTranspose", convt_supports, convt_prepare, convt_release, convt_execute, convt_scratch},
    {0},
};
