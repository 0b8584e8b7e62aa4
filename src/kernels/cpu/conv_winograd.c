/* Winograd FusedConv (ai.kiln, algorithm="winograd", set by the level-3 pass winograd): 3x3,
 * stride 1, dilation 1, group 1, float32; F(2x2, 3x3) (conv_winograd.h for the scheme).
 *
 * prepare() transforms the weights once and packs each of the 16 matrices U_xi [K x C] as the
 * SGEMM's A. execute() cuts the 2x2 tiles of all images (in order: image, tile row, tile column)
 * into blocks of 32, the work items of the pool; a block's input transform is written straight
 * into the SGEMM's packed-B panels in scratch (V_xi [C x tiles], no copy), its 16 products M_xi
 * [K x tiles] (the SGEMM's microkernel called directly) go to scratch too, and its output
 * transform writes y with the fused epilogue (bias, residual, activation). A block's V and M
 * are 16 (C + K) 32 floats (256 KiB at C = K = 64), so they are still in L2 when the GEMMs and
 * the output transform read them back. Scratch is one such slot per thread at work (up to
 * SLOTS_MAX: the plan sizes scratch without knowing the thread count), reused block after block,
 * so no call allocates. With fewer than two blocks per thread, or blocks that share out unevenly,
 * a block's GEMMs and output transform are split over two halves of K. */
#include "kernels/cpu/conv_winograd.h"
#include "core/threadpool.h"
#include "kernels/cpu/cpu_backend.h"

/* Tiles per block: measured over 16-256 on ResNet's 3x3 shapes (bench/bench_winograd.c), 32 was
   fastest; larger blocks reuse each packed weight panel more but spill V and M out of L2. */
#define BLOCK_TILES 32

typedef struct wino_state {
  kiln__isa isa;
  const kiln__wino_tf *tf;
  size_t nr, mr;                /* the SGEMM's B panel width and A panel height */
  kiln__sgemm_ukernel uk;       /* its packed microkernel */
  size_t c, k;                  /* input and output channels */
  kiln__conv2d cv;
  kiln__epilogue ep;            /* the activation and vector math */
  /* U_xi packed in `parts` row ranges [kp[p], kp[p + 1]) of K: two when K >= 2 KSPLIT_MIN, so a
     plane with fewer tile blocks than threads (7x7: one block) splits its GEMMs over K. */
  size_t parts, kp[3];
  kiln__sgemm_packed u[KILN__WINO_A * KILN__WINO_A][2];
} wino_state;

#define KSPLIT_MIN 64

static const kiln_tensor *weight(const kiln__node *n, const kiln__graph *g) {
  return kiln__cpu_const_f32(kiln__cpu_input(n, g, 1));
}

static bool wino_parse(const kiln__node *n, const kiln__graph *g, kiln__conv2d *cv) {
  kiln__act act;
  float p0, p1;
  if (strcmp(kiln__attr_str(n, "algorithm", ""), "winograd") != 0 || n->n_in < 2 ||
      n->n_in > 4 || !kiln__act_from_node(n, &act, &p0, &p1))
    return false;
  for (int i = 0; i < n->n_in; i++) {
    const kiln__value *v = kiln__cpu_input(n, g, i);
    if ((v || i < 2) && !kiln__cpu_maybe_float(v)) return false;
  }
  const kiln_tensor *w = weight(n, g);
  return w && kiln__cpu_conv2d_parse(n, w, cv) && cv->groups == 1 && cv->kh == 3 &&
         cv->kw == 3 && cv->sh == 1 && cv->sw == 1 && cv->dh == 1 && cv->dw == 1;
}

static bool wino_supports(const kiln__node *n, const kiln__graph *g) {
  kiln__conv2d cv;
  return wino_parse(n, g, &cv);
}

static void wino_release(void *state) {
  wino_state *s = state;
  for (size_t i = 0; i < KILN__WINO_A * KILN__WINO_A; i++)
    for (size_t p = 0; p < 2; p++) kiln__sgemm_packed_free(&s->u[i][p]);
  kiln__free(s);
}

static kiln_status wino_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                                kiln_error *err) {
  wino_state *s = kiln__calloc(1, sizeof *s);
  if (!s) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing Winograd FusedConv");
  wino_parse(n, g, &s->cv);
  s->c = s->cv.cg;
  s->k = s->cv.m;
  s->parts = s->k >= 2 * KSPLIT_MIN ? 2 : 1;
  s->kp[1] = s->parts == 2 ? s->k / 2 : s->k;
  s->kp[2] = s->k;
  kiln__act_from_node(n, &s->ep.act, &s->ep.lo, &s->ep.hi);
  kiln_status st = kiln__isa_select(&s->isa, err);
  if (st == KILN_OK) st = kiln__vmath_select(&s->ep.vm, err);
  size_t a2 = KILN__WINO_A * KILN__WINO_A, kc = s->k * s->c, bytes;
  float *tmp = NULL;
  if (st == KILN_OK && (!kiln__mul_ok(a2 * sizeof(float), kc, &bytes) ||
                        !(tmp = kiln__aligned_alloc(bytes ? bytes : sizeof(float)))))
    st = kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing Winograd FusedConv");
  if (st == KILN_OK) {
    s->tf = kiln__wino_tf_get(s->isa);
    s->nr = kiln__sgemm_nr(s->isa);
    s->mr = kiln__sgemm_mr(s->isa);
    s->uk = kiln__sgemm_uk(s->isa);
    const float *w = weight(n, g)->data;
    for (size_t o = 0; o < kc; o++) kiln__wino_weight(w + o * 9, tmp + o, kc);
  }
  for (size_t i = 0; st == KILN_OK && i < a2; i++)
    for (size_t p = 0; st == KILN_OK && p < s->parts; p++)
      st = kiln__sgemm_pack_a(s->isa, false, s->kp[p + 1] - s->kp[p], s->c,
                              tmp + i * kc + s->kp[p] * s->c, s->c, &s->u[i][p], err);
  kiln__aligned_free(tmp);
  if (st != KILN_OK) {
    wino_release(s);
    return st;
  }
  *state = s;
  return KILN_OK;
}

/* One call's geometry; false for shapes left to the reference kernel. */
typedef struct wino_geom {
  size_t n, h, w, oh, ow;
  int64_t pt, pl;
  size_t th, tw, tiles; /* tile rows and columns per image; tiles of all images */
  size_t padded;        /* tiles rounded up to the B panel width */
} wino_geom;

static bool wino_geom_get(const kiln__kctx *c, const wino_state *s, wino_geom *g) {
  const kiln_tensor *x = c->in[0], *y = c->out[0], *b = c->n_in > 2 ? c->in[2] : NULL,
                    *z = c->n_in > 3 ? c->in[3] : NULL;
  if (x->dtype != KILN_DTYPE_FLOAT || c->in[1]->dtype != KILN_DTYPE_FLOAT || x->rank != 4 ||
      y->rank != 4 || (size_t)x->dims[1] != s->c || (size_t)y->dims[1] != s->k)
    return false;
  if (b && (b->dtype != KILN_DTYPE_FLOAT || b->rank != 1 || (size_t)b->dims[0] != s->k))
    return false;
  if (z && (z->dtype != KILN_DTYPE_FLOAT || kiln_tensor_count(z) != kiln_tensor_count(y)))
    return false;
  g->n = (size_t)x->dims[0];
  g->h = (size_t)x->dims[2];
  g->w = (size_t)x->dims[3];
  g->oh = (size_t)y->dims[2];
  g->ow = (size_t)y->dims[3];
  bool pw;
  kiln__cpu_conv2d_pads(&s->cv, g->h, g->w, g->oh, g->ow, &g->pt, &g->pl, &pw);
  const size_t m = KILN__WINO_M;
  g->th = (g->oh + m - 1) / m;
  g->tw = (g->ow + m - 1) / m;
  g->tiles = g->n * g->th * g->tw;
  g->padded = (g->tiles + s->nr - 1) / s->nr * s->nr;
  return true;
}

/* Floats between two of a block's 16 V (or M) matrices beyond their size: without it their
   distance is a multiple of 4 KiB at ResNet's shapes (64 channels x 32 tiles = 8 KiB), so the
   transforms' 16 streams fall into one L1 set (8 ways) and evict each other; one cache line more
   puts them in 16 sets (the input transform alone: 1.7x faster). */
#define XI_PAD 16
/* Slots of scratch at most: one per thread working at once. */
#define SLOTS_MAX 16

/* Floats of one slot: the V and M of a block of up to BLOCK_TILES tiles. */
static size_t slot_floats(const wino_state *s) {
  size_t bt = BLOCK_TILES / s->nr * s->nr;
  return KILN__WINO_A * KILN__WINO_A * ((s->c + s->k) * bt + 2 * XI_PAD);
}

/* Floats of scratch: a slot per work unit (block, or block x part of K), up to SLOTS_MAX. */
static bool wino_floats(const wino_state *s, const wino_geom *g, size_t *out) {
  size_t slots = KILN__MIN((size_t)SLOTS_MAX, g->padded / s->nr * s->parts);
  return kiln__mul_ok(slot_floats(s), slots, out);
}

static size_t wino_scratch(const kiln__kctx *c, void *state) {
  const kiln__op *op = c->node->op;
  size_t ref = op->scratch ? op->scratch(c) : 0;
  wino_geom g;
  if (!wino_geom_get(c, state, &g)) return ref;
  size_t floats; /* too large: execute() finds it short and runs the reference kernel */
  if (!wino_floats(state, &g, &floats) || floats > SIZE_MAX / sizeof(float)) return ref;
  return KILN__MAX(ref, floats * sizeof(float));
}

typedef struct wino_job {
  const wino_state *s;
  const wino_geom *g;
  size_t block, blocks;    /* tiles per block (a multiple of nr), and blocks */
  size_t split;            /* 1, or parts: a work unit is a block (all of K) or a block x part */
  const float *x, *bias, *z;
  float *y, *scratch;
} wino_job;

/* A run: adjacent tiles of one tile row inside one B panel, at most KILN__WINO_RUN. */
typedef struct wino_run {
  size_t j, len;          /* first tile's column in the block's GEMMs, and the count */
  size_t img, ty, tx;
} wino_run;

static size_t block_runs(const wino_state *s, const wino_geom *g, size_t q0, size_t nt,
                         wino_run *run) {
  size_t nrun = 0, tpi = g->th * g->tw;
  for (size_t j = 0; j < nt;) {
    size_t q = q0 + j, r = q % tpi, ty = r / g->tw, tx = r % g->tw;
    size_t len = KILN__MIN(g->tw - tx, s->nr - j % s->nr);
    len = KILN__MIN(KILN__MIN(len, (size_t)KILN__WINO_RUN), nt - j);
    run[nrun++] = (wino_run){j, len, q / tpi, ty, tx};
    j += len;
  }
  return nrun;
}

/* Block b, output channels of parts [p0, p1), with the V and M of the slot at `slot` (scratch the
   same thread reuses block after block, so it stays in L2: per-block regions were written back
   to memory between uses). */
static void wino_block(const wino_job *jb, size_t b, size_t p0, size_t p1, float *slot) {
  const wino_state *s = jb->s;
  const wino_geom *g = jb->g;
  const size_t m = KILN__WINO_M, a2 = KILN__WINO_A * KILN__WINO_A, q0 = b * jb->block;
  const size_t nt = KILN__MIN(jb->block, g->tiles - q0), plane = g->h * g->w;
  const size_t oplane = g->oh * g->ow, ntp = (nt + s->nr - 1) / s->nr * s->nr;
  size_t vs = kiln__sgemm_pb_floats(s->nr, s->c, nt) + XI_PAD; /* V_xi to V_xi+1 */
  size_t ms = s->k * ntp + XI_PAD;                               /* M_xi to M_xi+1 */
  float *v = slot, *mm = slot + a2 * vs;
  wino_run run[BLOCK_TILES];
  size_t nrun = block_runs(s, g, q0, nt, run);
  /* Input transform, plane by plane, into the packed panels of each V_xi. A run may write past
     its tiles up to the end of its panel row, which later runs fill, and on into the next row
     of the panel, which the next plane fills, except from a k block's last row (the next panel
     follows, already written). */
  for (size_t ci = 0; ci < s->c; ci++) {
    bool last = ci + 1 == s->c || (ci + 1) % KILN__SGEMM_KC == 0;
    for (size_t r = 0; r < nrun; r++) {
      const wino_run *ru = &run[r];
      const float *xp = jb->x + (ru->img * s->c + ci) * plane;
      float *dst = v + kiln__sgemm_pb_offset(s->nr, s->c, nt, ci, ru->j);
      size_t room = s->nr - ru->j % s->nr + (last ? 0 : s->nr);
      s->tf->in(xp, g->h, g->w, (int64_t)(ru->ty * m) - g->pt, (int64_t)(ru->tx * m) - g->pl,
                ru->len, dst, vs, room);
    }
  }
  /* M_xi [K x nt] = U_xi [K x C] V_xi [C x nt], for the parts' rows of K, straight to the
     microkernel in the driver's order for a packed B (panels outer): a block's products are
     tiny (m = K, n <= 32 tiles, k = C: 16 at SqueezeNet's first expand convs), and
     kiln__sgemm_run's setup and tile loop per call were ~5% of SqueezeNet's samples (pair: 1.024
     faster at one thread, 1.037 at two; ResNets even). Same tiles, same k blocks: bit-identical. */
  for (size_t i = 0; i < a2; i++)
    for (size_t p = p0; p < p1; p++) {
      size_t rows = s->kp[p + 1] - s->kp[p], mpad = (rows + s->mr - 1) / s->mr * s->mr;
      float *c = mm + i * ms + s->kp[p] * ntp;
      for (size_t k0 = 0; k0 < s->c; k0 += KILN__SGEMM_KC) {
        size_t kc = KILN__MIN((size_t)KILN__SGEMM_KC, s->c - k0);
        const float *ap = s->u[i][p].data + k0 * mpad, *bp = v + i * vs + k0 * ntp;
        kiln__uk_store st = {.alpha = 1.0f, .load_c = k0 > 0};
        for (size_t jp = 0; jp < nt; jp += s->nr)
          for (size_t ip = 0; ip < rows; ip += s->mr)
            s->uk(kc, ap + ip * kc, bp + jp * kc, c + ip * ntp + jp, ntp,
                  KILN__MIN(s->mr, rows - ip), KILN__MIN(s->nr, nt - jp), &st);
      }
    }
  /* Output transform with the epilogue, channel by channel. */
  bool post = kiln__act_is_post(s->ep.act);
  kiln__wino_ep ep = {.act = post ? KILN__ACT_NONE : s->ep.act, .lo = s->ep.lo, .hi = s->ep.hi};
  for (size_t ko = s->kp[p0]; ko < s->kp[p1]; ko++) {
    ep.bias = jb->bias ? jb->bias[ko] : 0.0f;
    for (size_t r = 0; r < nrun; r++) {
      const wino_run *ru = &run[r];
      size_t y0 = ru->ty * m, x0 = ru->tx * m;
      size_t off = (ru->img * s->k + ko) * oplane + y0 * g->ow + x0;
      size_t rows = KILN__MIN(m, g->oh - y0), cols = KILN__MIN(ru->len * m, g->ow - x0);
      ep.z = jb->z ? jb->z + off : NULL;
      s->tf->out(mm + ko * ntp + ru->j, ms, jb->y + off, g->ow, rows, cols, &ep);
      if (post)
        for (size_t p = 0; p < rows; p++)
          kiln__act_apply(s->ep.vm, s->ep.act, s->ep.lo, s->ep.hi, jb->y + off + p * g->ow, cols);
    }
  }
}

/* Units [begin, end) on thread `slot`'s scratch, unit u being block u % blocks, part u / blocks
   of K (so that with parts each thread's share holds one part of every block, not a few whole
   blocks of unequal size). */
static void wino_range(void *arg, size_t begin, size_t end, size_t slot) {
  wino_job *jb = arg;
  float *mem = jb->scratch + slot * slot_floats(jb->s);
  for (size_t u = begin; u < end; u++) {
    size_t b = u % jb->blocks, p = u / jb->blocks;
    if (jb->split == 1) wino_block(jb, b, 0, jb->s->parts, mem);
    else wino_block(jb, b, p, p + 1, mem);
  }
}

static kiln_status wino_execute(kiln__kctx *c, void *state) {
  const wino_state *s = state;
  wino_geom g;
  size_t floats;
  if (!wino_geom_get(c, s, &g) || !wino_floats(s, &g, &floats) ||
      c->scratch_bytes / sizeof(float) < floats)
    return c->node->op->run(c);
  if (g.tiles == 0) return KILN_OK;
  /* BLOCK_TILES, or smaller blocks (whole panels) that give each thread two. */
  double work = (double)g.tiles * 16.0 * (double)s->c * (double)s->k;
  struct kiln__pool *pool = kiln__pool_for(c->pool, work);
  size_t threads = (size_t)kiln__pool_threads(pool);
  size_t per = (g.tiles + 2 * threads - 1) / (2 * threads);
  size_t block = KILN__MIN((size_t)BLOCK_TILES / s->nr * s->nr, (per + s->nr - 1) / s->nr * s->nr);
  block = KILN__MAX(block, s->nr);
  size_t blocks = (g.tiles + block - 1) / block;
  /* Fewer than two blocks per thread, or blocks that share out unevenly: each block's GEMMs and
     output transform split over K too (its input transform is then done once per part). With
     one block per thread, a plane's last block is short and the threads finished far apart:
     SqueezeNet's 13x13 expand convs (49 tiles: blocks of 32 and 17) ran 95 us at two threads,
     90 split. At two threads 49 tiles come as blocks of 16, 16, 16 and 1, and the thread
     ranges hold 32 and 17 tiles (the pool gives each thread a contiguous range of units): split
     when the busiest range holds over 1.125 times the mean (pair at two threads: SqueezeNet
     1.021, ResNet-50 1.023, ResNet-18 1.010 faster; 14x14 planes are 49 tiles too). */
  bool split = threads > 1 && blocks < 2 * threads;
  if (threads > 1 && !split) {
    size_t busiest = 0;
    for (size_t t = 0; t < threads; t++) {
      size_t q0 = t * blocks / threads * block;
      size_t q1 = KILN__MIN((t + 1) * blocks / threads * block, g.tiles);
      busiest = KILN__MAX(busiest, q1 > q0 ? q1 - q0 : 0);
    }
    split = busiest * threads * 8 > g.tiles * 9;
  }
  wino_job jb = {s, &g, block, blocks, split ? s->parts : 1, c->in[0]->data,
                 c->n_in > 2 && c->in[2] ? c->in[2]->data : NULL,
                 c->n_in > 3 && c->in[3] ? c->in[3]->data : NULL, c->out[0]->data, c->scratch};
  /* A slot of scratch per thread (the plan sized it without knowing the thread count). */
  if (floats / slot_floats(s) < threads) pool = NULL;
  kiln__parallel_for_slots(pool, blocks * jb.split, wino_range, &jb);
  return KILN_OK;
}

const kiln__cpu_kernel kiln__cpu_winograd_kernels[] = {
    {"FusedConv", wino_supports, wino_prepare, wino_release, wino_execute, wino_scratch,
     "ai.kiln"},
    {0},
};
