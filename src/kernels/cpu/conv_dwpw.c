/* DwPwConv (ai.kiln, made by the level-3 pass fuse-dwpw): a depthwise conv and the 1x1 conv that
 * reads it, float32 NCHW, run band of output rows by band so the depthwise result never goes to
 * memory.
 *
 * A work unit is one band of output rows of one image. It runs the depthwise kernel of conv_dw.c
 * on the band (every channel: the band as a plane of its own, its input rows offset and its top
 * padding what is left of the conv's) into the thread's scratch slot [C x band pixels], then the
 * packed SGEMM (weights W2 [K x C] packed at prepare) from the slot, read in place, into the
 * band's columns of Y (ldc = OH * OW) with the pointwise epilogue (bias, residual, activation)
 * in registers. A band's input rows and result together stay within BAND_FLOATS (bands are
 * whole row blocks of the 3x3 kernel), so the slot is still in L2 when the GEMM reads it; slots
 * are one per thread at work, planned as scratch (one per online CPU at prepare, up to
 * SLOTS_MAX), so no call allocates. With fewer bands than threads (7x7 planes) the threads share
 * each band instead: the depthwise conv by channels into one slot, then the GEMM by halves of K. */
#include <unistd.h>

#include "core/threadpool.h"
#include "kernels/cpu/conv_dw.h"
#include "kernels/cpu/cpu_backend.h"

/* Floats a band touches (its input rows and its depthwise result), at most: Zen 3's L2 (512
   KiB). Bands that touched more measured slower than the unfused pair (bench/RESULTS.md,
   2026-11-28); the pass fuses only where a band of the kernel's row block fits. */
#define BAND_FLOATS 131072
#define SLOTS_MAX 16

typedef struct dwpw_state {
  kiln__dw_conv d;            /* the depthwise conv (isa, weights, strides, pads) */
  kiln__epilogue dw_ep;       /* its activation */
  kiln__epilogue pw_ep;       /* the pointwise activation and vector math */
  size_t k;                   /* output channels */
  size_t parts, kp[3];        /* W2 packed as `parts` row ranges [kp[p], kp[p + 1]) of K */
  kiln__sgemm_packed w2[2];
  size_t cpus;                /* online CPUs at prepare: the scratch slots planned */
} dwpw_state;

static const kiln_tensor *pw_weight(const kiln__node *n, const kiln__graph *g) {
  return kiln__cpu_const_f32(kiln__cpu_input(n, g, 3));
}

static bool dwpw_supports(const kiln__node *n, const kiln__graph *g) {
  kiln__dw_conv d;
  kiln__act a;
  float p0, p1;
  if (n->n_in < 4 || n->n_in > 6 || !kiln__act_from_node(n, &a, &p0, &p1) ||
      !kiln__act_from_attrs(n, "pw_", &a, &p0, &p1) || !kiln__dw_conv_parse(n, g, &d))
    return false;
  for (int i = 4; i < n->n_in; i++)
    if (kiln__cpu_input(n, g, i) && !kiln__cpu_maybe_float(kiln__cpu_input(n, g, i))) return false;
  const kiln_tensor *w2 = pw_weight(n, g);
  return w2 && w2->rank == 4 && (size_t)w2->dims[1] == d.c && w2->dims[0] >= 1 &&
         w2->dims[2] == 1 && w2->dims[3] == 1;
}

static void dwpw_release(void *state) {
  dwpw_state *s = state;
  for (size_t p = 0; p < 2; p++) kiln__sgemm_packed_free(&s->w2[p]);
  kiln__free(s);
}

static kiln_status dwpw_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                kiln_error *err) {
  dwpw_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing DwPwConv");
  kiln__dw_conv_parse(n, g, &s->d);
  kiln__act_from_node(n, &s->dw_ep.act, &s->dw_ep.lo, &s->dw_ep.hi);
  kiln__act_from_attrs(n, "pw_", &s->pw_ep.act, &s->pw_ep.lo, &s->pw_ep.hi);
  const kiln_tensor *w2 = pw_weight(n, g);
  s->k = (size_t)w2->dims[0];
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  s->cpus = cpus > 1 ? (size_t)cpus : 1;
  kiln_status st = kiln__isa_select(&s->d.isa, err);
  /* Two halves of K (the first a multiple of the microkernel's rows) when there is enough of it
     to split. */
  size_t mr = kiln__sgemm_mr(s->d.isa);
  s->parts = s->k >= 4 * mr ? 2 : 1;
  s->kp[1] = s->parts == 2 ? (s->k / 2 + mr - 1) / mr * mr : s->k;
  s->kp[2] = s->k;
  if (st == KILN_OK) st = kiln__vmath_select(&s->dw_ep.vm, err);
  s->pw_ep.vm = s->dw_ep.vm;
  for (size_t p = 0; st == KILN_OK && p < s->parts; p++)
    st = kiln__sgemm_pack_a(s->d.isa, false, s->kp[p + 1] - s->kp[p], s->d.c,
                            (const float *)w2->data + s->kp[p] * s->d.c, s->d.c, &s->w2[p], err);
  if (st != KILN_OK) {
    dwpw_release(s);
    return st;
  }
  *state = s;
  return KILN_OK;
}

/* One call's geometry; false for what the reference kernel runs instead. */
typedef struct dwpw_geom {
  size_t n, oh, ow, rows_max; /* rows_max: the largest band within BAND_FLOATS (or step) */
  size_t step;                /* bands are a multiple of this many rows where they can be */
  kiln__dw_geom dw;
} dwpw_geom;

/* The depthwise kernel's row block (the AVX2 kernel of conv_dw3x3.c: 8 output rows at stride 1,
   7 at stride 2; a band of 4 rows would still compute 8), so bands are cut at its multiples.
   The other kernels work row by row. */
static size_t step_rows(kiln__isa isa, const kiln__dw_geom *g) {
#if defined(__x86_64__) || defined(__i386__)
  if (isa != KILN__ISA_GENERIC && kiln__dw3x3_fits(g)) return g->sh == 1 ? 8 : 7;
#else
  (void)isa, (void)g;
#endif
  return 1;
}

/* Floats a band of `rows` output rows touches: its depthwise result and its input rows. */
static size_t band_floats(const dwpw_state *s, const dwpw_geom *g, size_t rows) {
  size_t in_rows = KILN__MIN(g->dw.h, (rows - 1) * g->dw.sh + g->dw.kh);
  return s->d.c * (rows * g->ow + in_rows * g->dw.w);
}

static bool dwpw_geom_get(const kiln__kctx *c, const dwpw_state *s, dwpw_geom *g) {
  const kiln_tensor *x = c->in[0], *y = c->out[0], *b = c->in[2];
  const kiln_tensor *b2 = c->n_in > 4 ? c->in[4] : NULL, *z = c->n_in > 5 ? c->in[5] : NULL;
  if (x->dtype != KILN_DTYPE_FLOAT || x->rank != 4 || y->rank != 4 ||
      (size_t)x->dims[1] != s->d.c || (size_t)y->dims[1] != s->k || x->dims[0] != y->dims[0])
    return false;
  if ((b && (b->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(b) != s->d.c)) ||
      (b2 && (b2->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(b2) != s->k)) ||
      (z && (z->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(z) != kiln_tensor_count(y))))
    return false;
  g->n = (size_t)x->dims[0];
  g->oh = (size_t)y->dims[2];
  g->ow = (size_t)y->dims[3];
  if (!kiln__dw_conv_geom(&s->d, (size_t)x->dims[2], (size_t)x->dims[3], g->oh, g->ow, &g->dw))
    return false;
  g->step = step_rows(s->d.isa, &g->dw);
  g->rows_max = g->oh;
  while (g->rows_max > g->step && band_floats(s, g, g->rows_max) > BAND_FLOATS)
    g->rows_max = g->rows_max % g->step ? g->rows_max / g->step * g->step : g->rows_max - g->step;
  return true;
}

/* Floats from one channel of a band's depthwise result to the next (the GEMM's ldb): whole
   cache lines, an odd number of them, so that the 6x16 kernel's 16-float reads down the C rows
   of a panel fall into every L1 set rather than a few (an even count of lines maps the rows
   onto 64 / 2^j sets: at 8 x 56 = 448 floats, 28 lines, 144 rows share 16 sets of 8 ways). */
static size_t band_ld(size_t pix) {
  size_t ld = (pix + 15) / 16 * 16;
  return ld / 16 % 2 ? ld : ld + 16;
}

static size_t slot_floats(const dwpw_state *s, const dwpw_geom *g) {
  return s->d.c * band_ld(g->rows_max * g->ow);
}

/* Slots planned: one per work unit at most, one per CPU, up to SLOTS_MAX. */
static size_t slots_planned(const dwpw_state *s, const dwpw_geom *g) {
  size_t units = g->n * g->oh * s->parts;
  return KILN__MIN(KILN__MIN((size_t)SLOTS_MAX, s->cpus), KILN__MAX(units, (size_t)1));
}

static size_t dwpw_scratch(const kiln__kctx *c, void *state) {
  const kiln__op *op = c->node->op;
  size_t ref = op->scratch ? op->scratch(c) : 0;
  dwpw_geom g;
  size_t floats;
  if (!state || !dwpw_geom_get(c, state, &g) ||
      !kiln__mul_ok(slot_floats(state, &g), slots_planned(state, &g), &floats) ||
      floats > SIZE_MAX / sizeof(float))
    return ref; /* execute() then finds the scratch short and runs the reference kernel */
  return KILN__MAX(ref, floats * sizeof(float));
}

typedef struct dwpw_job {
  const dwpw_state *s;
  const dwpw_geom *g;
  size_t rows, bands; /* rows per band, bands per image */
  size_t slot_floats;
  const float *x, *bias, *bias2, *z;
  float *y, *scratch;
} dwpw_job;

/* The depthwise result of channels [c0, c1) of band `band` of image `img`, into `slot`. */
static void dw_part(const dwpw_job *jb, size_t img, size_t band, size_t c0, size_t c1,
                    float *slot) {
  const dwpw_state *s = jb->s;
  const dwpw_geom *g = jb->g;
  const size_t r0 = band * jb->rows, rows = KILN__MIN(jb->rows, g->oh - r0);
  const size_t ld = band_ld(rows * g->ow), plane = g->dw.h * g->dw.w;
  /* The band as a plane of its own: input from row r0 * sh - pt on, what is left of the top
     padding, the rows below it (the bottom padding follows from oh). */
  kiln__dw_geom bg = g->dw;
  size_t top = r0 * bg.sh, skip = top > bg.pt ? top - bg.pt : 0;
  bg.pt = top >= bg.pt ? 0 : bg.pt - top;
  bg.h -= skip;
  bg.oh = rows;
  const float *x = jb->x + img * s->d.c * plane + skip * bg.w;
  const size_t khw = s->d.kh * s->d.kw;
  /* Floats of the input rows the band reads (rows at and after x). */
  const size_t span = KILN__MIN(bg.h, (rows - 1) * bg.sh + s->d.kh) * bg.w;
#if defined(__x86_64__) || defined(__i386__)
  if (s->d.isa == KILN__ISA_AVX512 && bg.ow <= 8 && kiln__dw3x3_c16_fits(&bg)) { /* 7x7 */
    kiln__dw3x3_c16_avx512(&bg, c1 - c0, x + c0 * plane, plane, s->d.w + c0 * khw,
                           jb->bias ? jb->bias + c0 : NULL, NULL, slot + c0 * ld, ld, &s->dw_ep);
    return;
  }
  if (s->d.isa != KILN__ISA_GENERIC && kiln__dw3x3_flat_fits(&bg)) { /* 7x7: the whole plane */
    kiln__dw3x3_flat_avx2(&bg, c1 - c0, x + c0 * plane, plane, s->d.w + c0 * khw,
                          jb->bias ? jb->bias + c0 : NULL, NULL, slot + c0 * ld, ld, &s->dw_ep);
    return;
  }
#endif
  for (size_t ci = c0; ci < c1; ci++) {
    /* The next channel's input rows, one contiguous run: a few KiB per plane, too short for the
       hardware prefetcher to learn before it ends (144 x 56 x 56 in isolation: ~10% slower
       without). */
    if (ci + 1 < c1)
      for (size_t o = 0; o < span; o += 16) __builtin_prefetch(x + (ci + 1) * plane + o);
    kiln__dwconv_plane_f32(s->d.isa, &bg, x + ci * plane, s->d.w + ci * khw,
                           jb->bias ? jb->bias[ci] : 0.0f, NULL, slot + ci * ld, &s->dw_ep);
  }
}

/* The pointwise conv of band `band` of image `img` for the output channels of parts [p0, p1),
   from the band's depthwise result in `slot`. */
static void pw_part(const dwpw_job *jb, size_t img, size_t band, size_t p0, size_t p1,
                    const float *slot) {
  const dwpw_state *s = jb->s;
  const dwpw_geom *g = jb->g;
  const size_t r0 = band * jb->rows, pix = KILN__MIN(jb->rows, g->oh - r0) * g->ow;
  const size_t oplane = g->oh * g->ow;
  for (size_t p = p0; p < p1; p++) {
    size_t k0 = s->kp[p], off = (img * s->k + k0) * oplane + r0 * g->ow;
    kiln__sgemm_args ga = {.m = s->kp[p + 1] - k0, .n = pix, .k = s->d.c, .pa = &s->w2[p],
                           .b = slot, .ldb = band_ld(pix), .b_in_place = true, .c = jb->y + off,
                           .ldc = oplane, .alpha = 1.0f, .ep = s->pw_ep};
    ga.ep.bias = jb->bias2 ? jb->bias2 + k0 : NULL;
    ga.ep.bias_per_row = true;
    ga.ep.residual = jb->z ? jb->z + off : NULL;
    ga.ep.ldr = oplane;
    kiln__sgemm_run(NULL, s->d.isa, &ga);
  }
}

/* Units [begin, end) (image u / bands, band u % bands) on thread `slot`'s scratch. */
static void dwpw_range(void *arg, size_t begin, size_t end, size_t slot) {
  dwpw_job *jb = arg;
  float *mem = jb->scratch + slot * jb->slot_floats;
  for (size_t u = begin; u < end; u++) {
    size_t img = u / jb->bands, band = u % jb->bands;
    dw_part(jb, img, band, 0, jb->s->d.c, mem);
    pw_part(jb, img, band, 0, jb->s->parts, mem);
  }
}

/* With fewer bands than threads, every thread takes part in each band: the depthwise conv cut
   by channels into one shared slot, then the pointwise conv by parts of K. (Each thread running
   the whole depthwise conv for its half of K, as before, doubled the depthwise work: MobileNet-v2's
   960-channel 7x7 pairs sped up 1.53x on two threads.) */
typedef struct dwpw_phase {
  const dwpw_job *jb;
  size_t img, band;
} dwpw_phase;

static void dw_range(void *arg, size_t begin, size_t end) {
  const dwpw_phase *ph = arg;
  dw_part(ph->jb, ph->img, ph->band, begin, end, ph->jb->scratch);
}

static void pw_range(void *arg, size_t begin, size_t end) {
  const dwpw_phase *ph = arg;
  pw_part(ph->jb, ph->img, ph->band, begin, end, ph->jb->scratch);
}

static kiln_status dwpw_execute(kiln__kctx *c, void *state) {
  const dwpw_state *s = state;
  dwpw_geom g;
  if (!dwpw_geom_get(c, s, &g) || c->scratch_bytes / sizeof(float) < slot_floats(s, &g))
    return c->node->op->run(c);
  if (g.n == 0 || g.oh == 0 || g.ow == 0 || s->k == 0) return KILN_OK;
  double work = (double)g.n * (double)(g.oh * g.ow) * (double)s->d.c *
                (double)(s->k + s->d.kh * s->d.kw);
  struct kiln__pool *pool = kiln__pool_for(c->pool, work);
  size_t threads = (size_t)kiln__pool_threads(pool);
  /* Bands of rows_max rows, or fewer rows so that every thread gets a band. */
  size_t per_img = (threads + g.n - 1) / g.n, share = (g.oh + per_img - 1) / per_img;
  share = (share + g.step - 1) / g.step * g.step;
  size_t rows = KILN__MIN(g.rows_max, share);
  /* With threads, down to half that (whole row blocks), the height that shares out evenly:
     MobileNet-v2's 112 rows went as seven bands of 16, four for one thread and three for the
     other (fourteen of 8 now). */
  if (threads > 1) rows = kiln__pool_block(g.oh, rows, g.step, g.n, threads);
  size_t bands = (g.oh + rows - 1) / rows;
  dwpw_job jb = {.s = s, .g = &g, .rows = rows, .bands = bands,
                 .slot_floats = slot_floats(s, &g), .x = c->in[0]->data,
                 .bias = c->in[2] ? c->in[2]->data : NULL,
                 .bias2 = c->n_in > 4 && c->in[4] ? c->in[4]->data : NULL,
                 .z = c->n_in > 5 && c->in[5] ? c->in[5]->data : NULL, .y = c->out[0]->data,
                 .scratch = c->scratch};
  size_t units = g.n * bands;
  if (units < threads && threads > 1) {
    for (size_t u = 0; u < units; u++) {
      dwpw_phase ph = {&jb, u / bands, u % bands};
      kiln__parallel_for(pool, s->d.c, dw_range, &ph);
      kiln__parallel_for(pool, s->parts, pw_range, &ph);
    }
    return KILN_OK;
  }
  /* A slot of scratch per thread, or one thread. */
  if (c->scratch_bytes / sizeof(float) / jb.slot_floats < threads) pool = NULL;
  kiln__parallel_for_slots(pool, units, dwpw_range, &jb);
  return KILN_OK;
}

const kiln__cpu_kernel kiln__cpu_dwpw_kernels[] = {
    {"DwPwConv", dwpw_supports, dwpw_prepare, dwpw_release, dwpw_execute, dwpw_scratch,
     "ai.kiln"},
    {0},
};
