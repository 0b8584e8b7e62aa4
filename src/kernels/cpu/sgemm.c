/* The SGEMM driver: ISA selection, packing, tiling over the pool, and the portable microkernel.
 * See sgemm.h for the scheme. */
#include "kernels/cpu/sgemm.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/threadpool.h"

#if defined(__x86_64__) || defined(__i386__)
#define KILN_X86 1
#endif

/* KC x NC slab of B and MC x KC slab of A per tile; the largest MC and NC of any ISA size the
   stack blocks (A: 72 KiB, B: 128 KiB). */
#define KC KILN__SGEMM_KC
#define MC_MAX 72
#define NC_MAX 128
/* Widest tile over a pre-packed B, in floats per MiB of L2 per core: every k block reads its
   mc x tn block of C back, so that block (72 x 1024 floats, 288 KiB, on a 1 MiB L2) must stay
   in L2 beside the A block and the B panels passing through. On the Zen 3 host's 512 KiB L2,
   1024 columns ran 1024^3 at 56-61 GFLOP/s on one thread, 512 at 75-79 (bench_gemm). */
#define TN_PER_MIB 1024
#define TN_MIN 256

typedef struct impl {
  size_t mr, nr, mc, nc;
  kiln__sgemm_ukernel uk;
  kiln__sgemm_pack_a_panel pack_a; /* NULL: the scalar loop packs A's full panels */
} impl;

static const impl impls[KILN__ISA_COUNT] = {
    [KILN__ISA_GENERIC] = {4, 8, 64, 128, kiln__sgemm_uk_4x8__generic},
#ifdef KILN_X86
    [KILN__ISA_AVX2] = {6, 16, 72, 128, kiln__sgemm_uk_6x16__avx2,
                         kiln__sgemm_pack_a_6__avx2},
    [KILN__ISA_AVX512] = {8, 32, 64, 128, kiln__sgemm_uk_8x32__avx512,
                           kiln__sgemm_pack_a_8__avx512},
#endif
#ifdef __aarch64__
    /* nc a multiple of nr (the B slab holds whole panels and must fit NC_MAX). */
    [KILN__ISA_NEON] = {8, 12, 64, 120, kiln__sgemm_uk_8x12__neon},
#endif
};

/* Microkernels that read an unpacked B (kiln__sgemm_args.b_in_place); NULL: B is packed. */
static const kiln__sgemm_ukernel_strided strided_uks[KILN__ISA_COUNT] = {
#ifdef KILN_X86
    [KILN__ISA_AVX2] = kiln__sgemm_uk_6x16s__avx2,
    [KILN__ISA_AVX512] = kiln__sgemm_uk_8x32s__avx512,
#endif
};

/* The same with software prefetch: [0] of B and C (a panel's first row tile), [1] of C only. */
static const kiln__sgemm_ukernel_strided strided_pf_uks[KILN__ISA_COUNT][2] = {
#ifdef KILN_X86
    [KILN__ISA_AVX2] = {kiln__sgemm_uk_6x16sbc__avx2, kiln__sgemm_uk_6x16sc__avx2},
#endif
};

/* The packed kernel with software prefetch of C (c_prefetch_pays); NULL: none. */
static const kiln__sgemm_ukernel packed_pf_uks[KILN__ISA_COUNT] = {
#ifdef KILN_X86
    [KILN__ISA_AVX2] = kiln__sgemm_uk_6x16c__avx2,
#endif
};

static const char *const isa_names[KILN__ISA_COUNT] = {"generic", "avx2", "avx512", "neon"};

const char *kiln__isa_name(kiln__isa isa) {
  return (unsigned)isa < KILN__ISA_COUNT ? isa_names[isa] : "?";
}

bool kiln__isa_supported(kiln__isa isa) {
  switch (isa) {
  case KILN__ISA_GENERIC:
    return true;
#ifdef KILN_X86
  case KILN__ISA_AVX2:
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  case KILN__ISA_AVX512:
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
#endif
#ifdef __aarch64__
  case KILN__ISA_NEON:
    return true; /* part of the AArch64 base ISA */
#endif
  default:
    return false;
  }
}

kiln_status kiln__isa_select(kiln__isa *out, kiln_error *err) {
  const char *want = getenv("KILN_ISA");
  /* The integer GEMM's names (qgemm.h) force the float kernels of the same register width. */
  if (want && !strcmp(want, "avxvnni")) want = "avx2";
  if (want && !strcmp(want, "avx512vnni")) want = "avx512";
  if (want && *want) {
    for (int i = 0; i < KILN__ISA_COUNT; i++) {
      if (strcmp(want, isa_names[i]) != 0) continue;
      if (!kiln__isa_supported((kiln__isa)i))
        return kiln__fail(err, KILN_UNSUPPORTED, "KILN_ISA=%s: this CPU does not support it",
                          want);
      *out = (kiln__isa)i;
      return KILN_OK;
    }
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "KILN_ISA=%s: expected avx512, avx512vnni, avxvnni, avx2, neon or generic", want);
  }
  *out = KILN__ISA_GENERIC;
  for (int i = KILN__ISA_COUNT - 1; i > 0; i--)
    if (kiln__isa_supported((kiln__isa)i)) {
      *out = (kiln__isa)i;
      break;
    }
  return KILN_OK;
}

/* Columns of the widest tile over a pre-packed B: TN_PER_MIB per MiB of the L2 per core, at
   least TN_MIN; 1 MiB where the OS does not say. Read once: it is a property of the machine
   (sysconf asks cpuid, which traps to the hypervisor in a VM). */
static size_t tn_max(void) {
  static _Atomic size_t cached;
  size_t v = atomic_load_explicit(&cached, memory_order_relaxed);
  if (v) return v;
  long l2 = -1;
#ifdef _SC_LEVEL2_CACHE_SIZE
  l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  if (l2 <= 0) l2 = 1L << 20;
  v = KILN__MAX((size_t)TN_MIN, (size_t)l2 / ((1u << 20) / TN_PER_MIB));
  atomic_store_explicit(&cached, v, memory_order_relaxed);
  return v;
}

/* ---- packing --------------------------------------------------------------------------------- */

static size_t round_up(size_t x, size_t r) { return (x + r - 1) / r * r; }

/* Packs op(A)[i0:i0+mc, p0:p0+kc] as ceil(mc/mr) panels of kc x mr, zero-padded; the ISA's
   panel packer (im->pack_a) takes the full panels of an untransposed A. */
KILN__NO_LIBCALL_LOOPS static void pack_a_block(const impl *im, bool trans, const float *a,
                                                size_t lda, size_t i0, size_t mc, size_t p0,
                                                size_t kc, float *restrict dst) {
  size_t mr = im->mr;
  for (size_t ip = 0; ip < mc; ip += mr) {
    size_t rows = KILN__MIN(mr, mc - ip);
    if (!trans && rows == mr && im->pack_a) {
      im->pack_a(a + (i0 + ip) * lda + p0, lda, kc, dst);
    } else if (!trans) {
      for (size_t r = 0; r < rows; r++) {
        const float *src = a + (i0 + ip + r) * lda + p0;
        for (size_t p = 0; p < kc; p++) dst[p * mr + r] = src[p];
      }
    } else {
      for (size_t p = 0; p < kc; p++) {
        const float *src = a + (p0 + p) * lda + i0 + ip;
        for (size_t r = 0; r < rows; r++) dst[p * mr + r] = src[r];
      }
    }
    for (size_t r = rows; r < mr; r++)
      for (size_t p = 0; p < kc; p++) dst[p * mr + r] = 0.0f;
    dst += kc * mr;
  }
}

/* Packs op(B)[p0:p0+kc, j0:j0+nc] as ceil(nc/nr) panels of kc x nr, zero-padded. */
KILN__NO_LIBCALL_LOOPS static void pack_b_block(size_t nr, bool trans, const float *b,
                                                size_t ldb, size_t p0, size_t kc, size_t j0,
                                                size_t nc, float *restrict dst) {
  if (!trans) {
    /* Row by row, so the source is read in order; the writes jump between panels in cache. */
    for (size_t p = 0; p < kc; p++) {
      const float *src = b + (p0 + p) * ldb + j0;
      for (size_t jp = 0; jp < nc; jp += nr) {
        size_t cols = KILN__MIN(nr, nc - jp);
        float *d = dst + jp * kc + p * nr;
#ifdef KILN__HAVE_ROW_AVX
        if (cols == nr && nr >= 16) {
          kiln__copy_row_avx(d, src + jp, nr);
          continue;
        }
#endif
        kiln__copy_floats(d, src + jp, cols);
        kiln__zero_floats(d + cols, nr - cols);
      }
    }
    return;
  }
  for (size_t jp = 0; jp < nc; jp += nr) {
    size_t cols = KILN__MIN(nr, nc - jp);
    for (size_t j = 0; j < cols; j++) {
      const float *src = b + (j0 + jp + j) * ldb + p0;
      for (size_t p = 0; p < kc; p++) dst[p * nr + j] = src[p];
    }
    for (size_t j = cols; j < nr; j++)
      for (size_t p = 0; p < kc; p++) dst[p * nr + j] = 0.0f;
    dst += kc * nr;
  }
}

/* A whole packed operand is its k blocks back to back; block p0 holds every panel for that block
   and starts at p0 * rows_padded, so a tile finds its panels without any index. */
static kiln_status pack_whole(kiln__isa isa, bool is_a, bool trans, size_t rows, size_t k,
                              const float *src, size_t ld, kiln__sgemm_packed *out,
                              kiln_error *err) {
  memset(out, 0, sizeof *out);
  if ((unsigned)isa >= KILN__ISA_COUNT || !impls[isa].uk)
    return kiln__fail(err, KILN_UNSUPPORTED, "no GEMM kernel for ISA %s", kiln__isa_name(isa));
  const impl *im = &impls[isa];
  size_t r = is_a ? im->mr : im->nr, padded = round_up(rows, r), count, bytes;
  if (!kiln__mul_ok(padded, k, &count) || !kiln__mul_ok(count, sizeof(float), &bytes))
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "GEMM operand of %zu x %zu is too large", rows,
                      k);
  out->data = kiln__aligned_alloc(bytes ? bytes : sizeof(float));
  if (!out->data) return kiln__fail(err, KILN_NO_MEMORY, "out of memory packing GEMM weights");
  out->isa = isa;
  out->is_a = is_a;
  out->rows = rows;
  out->k = k;
  for (size_t p0 = 0; p0 < k; p0 += KC) {
    size_t kc = KILN__MIN((size_t)KC, k - p0);
    float *dst = out->data + p0 * padded;
    if (is_a) pack_a_block(im, trans, src, ld, 0, rows, p0, kc, dst);
    else pack_b_block(r, trans, src, ld, p0, kc, 0, rows, dst);
  }
  return KILN_OK;
}

kiln_status kiln__sgemm_pack_a(kiln__isa isa, bool trans_a, size_t m, size_t k, const float *a,
                               size_t lda, kiln__sgemm_packed *out, kiln_error *err) {
  return pack_whole(isa, true, trans_a, m, k, a, lda, out, err);
}

kiln_status kiln__sgemm_pack_b(kiln__isa isa, bool trans_b, size_t k, size_t n, const float *b,
                               size_t ldb, kiln__sgemm_packed *out, kiln_error *err) {
  return pack_whole(isa, false, trans_b, n, k, b, ldb, out, err);
}

/* The kernels of `isa`, or the generic ones for an ISA without its own. */
static const impl *impl_of(kiln__isa isa) {
  return &impls[(unsigned)isa < KILN__ISA_COUNT && impls[isa].uk ? isa : 0];
}

size_t kiln__sgemm_nr(kiln__isa isa) { return impl_of(isa)->nr; }

size_t kiln__sgemm_mr(kiln__isa isa) { return impl_of(isa)->mr; }

kiln__sgemm_ukernel kiln__sgemm_uk(kiln__isa isa) { return impl_of(isa)->uk; }

size_t kiln__sgemm_pack_a_floats(kiln__isa isa, size_t m, size_t k) {
  if ((unsigned)isa >= KILN__ISA_COUNT || !impls[isa].uk) return 0;
  return round_up(m, impls[isa].mr) * k;
}

typedef struct pack_a_job {
  const impl *im;
  size_t m, k, lda;
  bool trans;
  const float *a;
  float *mem;
} pack_a_job;

static void pack_a_range(void *arg, size_t b0, size_t b1) {
  const pack_a_job *j = arg;
  for (size_t b = b0; b < b1; b++) {
    size_t p0 = b * KC, kc = KILN__MIN((size_t)KC, j->k - p0);
    pack_a_block(j->im, j->trans, j->a, j->lda, 0, j->m, p0, kc,
                 j->mem + p0 * round_up(j->m, j->im->mr));
  }
}

void kiln__sgemm_pack_a_into(struct kiln__pool *pool, kiln__isa isa, bool trans_a, size_t m,
                             size_t k, const float *a, size_t lda, float *mem,
                             kiln__sgemm_packed *out) {
  if ((unsigned)isa >= KILN__ISA_COUNT || !impls[isa].uk) isa = KILN__ISA_GENERIC;
  *out = (kiln__sgemm_packed){.isa = isa, .is_a = true, .rows = m, .k = k, .data = mem};
  pack_a_job j = {&impls[isa], m, k, lda, trans_a, a, mem};
  size_t blocks = (k + KC - 1) / KC;
  kiln__parallel_for(kiln__pool_for(pool, (double)m * (double)k), blocks, pack_a_range, &j);
}

void kiln__sgemm_packed_free(kiln__sgemm_packed *p) {
  if (!p) return;
  kiln__aligned_free(p->data);
  p->data = NULL;
}

/* ---- stores and the portable microkernel ----------------------------------------------------- */

void kiln__uk_store_tile(const float *tile, size_t ld, float *c, size_t ldc, size_t mr, size_t nr,
                         const kiln__uk_store *s) {
  const kiln__epilogue *ep = s->ep;
  for (size_t r = 0; r < mr; r++) {
    float *row = c + r * ldc;
    const float *t = tile + r * ld;
    float rb = ep && ep->bias && ep->bias_per_row ? ep->bias[s->row0 + r] : 0.0f;
    const float *cb = ep && ep->bias && !ep->bias_per_row ? ep->bias + s->col0 : NULL;
    const float *res = ep && ep->residual ? ep->residual + (s->row0 + r) * ep->ldr + s->col0 : NULL;
    for (size_t j = 0; j < nr; j++) {
      float v = s->alpha * t[j];
      if (s->load_c) v += row[j];
      if (ep) {
        v += rb;
        if (cb) v += cb[j];
        if (res) v += res[j];
        if (ep->act == KILN__ACT_RELU) v = v > 0.0f ? v : 0.0f;
        else if (ep->act == KILN__ACT_CLIP) v = v < ep->lo ? ep->lo : (v > ep->hi ? ep->hi : v);
      }
      row[j] = v;
    }
  }
}

#define GMR 4
#define GNR 8

/* Fixed trip counts and one accumulator array: the compiler keeps the tile in SIMD registers. */
void kiln__sgemm_uk_4x8__generic(size_t kc, const float *restrict a, const float *restrict b,
                                 float *restrict c, size_t ldc, size_t mr, size_t nr,
                                 const kiln__uk_store *s) {
  float acc[GMR][GNR] = {{0}};
  for (size_t p = 0; p < kc; p++) {
    const float *ap = a + p * GMR, *bp = b + p * GNR;
    for (size_t i = 0; i < GMR; i++)
      for (size_t j = 0; j < GNR; j++) acc[i][j] += ap[i] * bp[j];
  }
  kiln__uk_store_tile(&acc[0][0], GNR, c, ldc, mr, nr, s);
}

/* ---- the driver ------------------------------------------------------------------------------ */

typedef struct job {
  const kiln__sgemm_args *g;
  const impl *im;
  kiln__sgemm_ukernel_strided uks; /* set when B is read in place */
  const kiln__sgemm_ukernel_strided *uks_pf; /* NULL, or uks with prefetch ([0] B and C) */
  kiln__sgemm_ukernel uk; /* for packed B panels: im->uk, or its C-prefetching twin */
  size_t tiles_n;
  size_t mc; /* rows per A block: im->mc, or with threads the blocks' even share (whole panels) */
  size_t tm; /* rows per tile: a multiple of mc */
  size_t tn; /* columns per tile: nc, or with pre-packed B or B in place any multiple of nr */
} job;

static void tiles_range(void *arg, size_t begin, size_t end) {
  const job *jb = arg;
  const kiln__sgemm_args *g = jb->g;
  const impl *im = jb->im;
  _Alignas(64) float abuf[MC_MAX * KC];
  _Alignas(64) float bbuf[KC * NC_MAX];
  size_t mpad = round_up(g->m, im->mr), npad = round_up(g->n, im->nr);
  for (size_t t = begin; t < end; t++) {
    size_t i0 = (t / jb->tiles_n) * jb->tm, j0 = (t % jb->tiles_n) * jb->tn;
    size_t i_end = KILN__MIN(g->m, i0 + jb->tm), nc = KILN__MIN(jb->tn, g->n - j0);
    for (size_t p0 = 0; p0 < g->k; p0 += KC) {
      size_t kc = KILN__MIN((size_t)KC, g->k - p0);
      const float *bp;
      /* B read in place: columns [0, edge) of the tile are full panels read where they lie, the
         rest one packed edge panel at bbuf. Otherwise edge is 0 and all panels are at bp. */
      size_t edge = 0;
      if (jb->uks) {
        edge = nc / im->nr * im->nr;
        bp = bbuf;
        if (edge < nc)
          pack_b_block(im->nr, false, g->b, g->ldb, p0, kc, j0 + edge, nc - edge, bbuf);
      } else if (g->pb) {
        bp = g->pb->data + p0 * npad + j0 * kc;
      } else if (g->pack_b) {
        g->pack_b(g->pack_b_ctx, im->nr, p0, kc, j0, nc, bbuf);
        bp = bbuf;
      } else {
        pack_b_block(im->nr, g->trans_b, g->b, g->ldb, p0, kc, j0, nc, bbuf);
        bp = bbuf;
      }
      kiln__uk_store st = {.alpha = g->alpha,
                           .load_c = g->accumulate || p0 > 0,
                           .ep = p0 + kc >= g->k ? &g->ep : NULL};
      /* Activations outside the microkernel's registers run on the tile just stored. */
      bool post = st.ep && kiln__act_is_post(g->ep.act);
      for (size_t i1 = i0; i1 < i_end; i1 += jb->mc) {
        size_t mc = KILN__MIN(jb->mc, i_end - i1);
        const float *ap;
        if (g->pa) {
          ap = g->pa->data + p0 * mpad + i1 * kc;
        } else {
          pack_a_block(im, g->trans_a, g->a, g->lda, i1, mc, p0, kc, abuf);
          ap = abuf;
        }
        /* Panels outer (each B panel reused by every row tile while in L1), except with B in
           place, where row tiles run outer (in_place_tile_n), and with B packed per call for a
           short product (k <= 64): its whole kc x tn block is in L1 anyway, and panels outer
           wrote one line into each of C's m rows per panel, m streams: SqueezeNet's 32->128 at
           27x27 into a cold concat buffer took 259 us, 137 with rows outer (per node, five
           rounds; the model 1.8-3.4% faster by pair, ResNets and MobileNet-v2 even). Not for
           the last, short k block of a long product (k = 576: ResNet-18 2.5% slower). */
        bool rows_outer = jb->uks != NULL || (!g->pb && g->k <= 64);
        size_t outer = rows_outer ? mc : nc, inner = rows_outer ? nc : mc;
        size_t step_o = rows_outer ? im->mr : im->nr, step_i = rows_outer ? im->nr : im->mr;
        for (size_t o = 0; o < outer; o += step_o) {
          for (size_t q = 0; q < inner; q += step_i) {
            size_t jp = rows_outer ? q : o, ip = rows_outer ? o : q;
            size_t nr = KILN__MIN(im->nr, nc - jp);
            st.col0 = j0 + jp;
            size_t mr = KILN__MIN(im->mr, mc - ip);
            st.row0 = i1 + ip;
            float *ct = g->c + st.row0 * g->ldc + st.col0;
            if (st.ep && g->ep.residual) {
              /* The next tile's residual rows, fetched while this tile's products run: read in
                 the store, they came from L3 or memory as mr short streams and stalled it. */
              bool down = ip + im->mr < mc;
              size_t ni = down ? st.row0 + im->mr : i1, nj = down ? st.col0 : st.col0 + im->nr;
              size_t last = nj < j0 + nc ? KILN__MIN(im->nr, j0 + nc - nj) - 1 : 0;
              if (nj < j0 + nc)
                for (size_t r = ni; r < KILN__MIN(ni + im->mr, i_end); r++) {
                  const float *z = g->ep.residual + r * g->ep.ldr + nj;
                  __builtin_prefetch(z, 0, 3);
                  __builtin_prefetch(z + last, 0, 3);
                }
            }
            if (jp < edge) {
              kiln__sgemm_ukernel_strided uks = jb->uks_pf ? jb->uks_pf[ip == 0 ? 0 : 1] : jb->uks;
              uks(kc, ap + ip * kc, g->b + p0 * g->ldb + j0 + jp, g->ldb, ct, g->ldc, mr, nr, &st);
            } else {
              jb->uk(kc, ap + ip * kc, bp + (jp - edge) * kc, ct, g->ldc, mr, nr, &st);
            }
            if (post)
              for (size_t r = 0; r < mr; r++)
                kiln__act_apply(g->ep.vm, g->ep.act, g->ep.lo, g->ep.hi, ct + r * g->ldc, nr);
          }
        }
      }
    }
  }
}

/* Whether reading B in place beats packing it (measured on pointwise convs, bench/RESULTS.md).
   Packing copies B once per call and the copy is shared by every MR-row panel of A, so it pays
   when m is large (ResNet's 512->2048: in place was ~15% slower); in place wins when m <= 64,
   where the copy is a sizeable share of the work (MobileNet/SqueezeNet's 96->24, 144->32,
   128->16: 20-40% faster), unless B's rows collide in L1: with rows a multiple of 256 bytes
   apart (ResNet's 56x56 planes) a panel's kc rows map to at most 16 of a 32 KiB 8-way L1's 64
   sets, 128 lines, and a longer panel is re-read from L2 by every A panel. Two measured
   exceptions (MobileNet-v2, bench/RESULTS.md): with m <= 32 the copy is shared by so few A
   panels that it costs more than those L2 re-reads (144->24@56: 26% faster in place), and up to
   m = 96 in place still wins without the conflict (384->96 and 576->96@14: 5-6%). */
static bool in_place_pays(const kiln__sgemm_args *g) {
  if (g->m > 96) return false;
  if (g->m <= 32) return true;
  size_t bytes = g->ldb * sizeof(float), kc = KILN__MIN(g->k, (size_t)KC);
  if (bytes % 64 != 0) return true; /* rows land on shifting sets */
  size_t lines = bytes / 64, sets = 64;
  while (sets > 1 && lines % 2 == 0) lines /= 2, sets /= 2;
  return kc <= 8 * sets;
}

/* Whether the in-place kernel should prefetch: a short product (k <= 64: a 32->16 pointwise
   conv) over few rows of A, with B's rows 4 KiB or more apart (planes of 32x32 and up). Each
   panel then reads k rows on k pages and writes m rows of C on m more, more streams than the
   hardware prefetcher follows, and the FMAs per panel are too few to hide the misses: in
   MobileNet-v2, where the planes come from L3 or memory, 32->16 at 112x112 ran at half its
   speed on data in L2. With k = 96 or 144 (96->24, 144->24 at 56x56) the prefetches cost more
   than they saved (up to 14% slower), and m = 96 (16->96 at 112x112) gained nothing. */
static bool prefetch_pays(const kiln__sgemm_args *g) {
  return g->m <= 32 && g->k <= 64 && g->ldb >= 1024;
}

/* Whether the packed kernel should prefetch C: a short product (k <= 32: a stem conv's 27)
   writing a C larger than L2 (1 MiB or more, rows 4 KiB or more apart). The tile loop runs
   down a column panel, row tile after row tile, so C is written as m streams a line at a time,
   and 27 k steps hide no store miss: SqueezeNet's stem (3.2 MB out) ran at ~1.6x its
   standalone time in the model, where its output lines come from L3 or memory. */
static bool c_prefetch_pays(const kiln__sgemm_args *g) {
  return g->k <= 32 && g->ldc >= 1024 && (double)g->m * (double)g->n >= 256.0 * 1024.0;
}

/* Columns per tile when B is read in place. Its row tiles then run outer, each writing its MR
   rows of C as runs of the tile's width while the tile's kc x tn block of B stays in L1 or L2
   (at most 64 KiB: 16 Ki floats). Panels outer, as for packed B, write one line into each of C's
   m rows per panel: m streams more than the prefetcher follows, and C, when larger than L2
   (MobileNet-v2's 16->96 at 112x112: 4.8 MB), comes from memory a line at a time. Measured
   with pair (bench/RESULTS.md, sixteenth session): MobileNet-v2 1.085x faster at one thread,
   1.03x at two; its 16->96 at 112x112 881 -> 662 us (min per node). Wider tiles only where
   they still leave 3 per thread. */
static size_t in_place_tile_n(const impl *im, size_t k, size_t n, size_t threads) {
  size_t tn = (size_t)16384 / KILN__MIN(k, (size_t)KC);
  tn = KILN__MAX(im->nc, KILN__MIN(tn, (size_t)1024)) / im->nr * im->nr;
  return n >= tn * 3 * threads ? tn : im->nc;
}

/* k == 0: the product is zero, but the store (accumulate, epilogue) still applies. */
static void run_k0(const kiln__sgemm_args *g) {
  static const float zeros[64];
  kiln__uk_store st = {.alpha = g->alpha, .load_c = g->accumulate, .ep = &g->ep};
  for (size_t i = 0; i < g->m; i++) {
    st.row0 = i;
    for (size_t j = 0; j < g->n; j += 64) {
      st.col0 = j;
      size_t nr = KILN__MIN(64, g->n - j);
      kiln__uk_store_tile(zeros, 0, g->c + i * g->ldc + j, g->ldc, 1, nr, &st);
      if (kiln__act_is_post(g->ep.act))
        kiln__act_apply(g->ep.vm, g->ep.act, g->ep.lo, g->ep.hi, g->c + i * g->ldc + j, nr);
    }
  }
}

/* B packed once for all threads (kiln__sgemm_args.b_scratch). When the columns alone do not give
   every thread its tiles, the driver cuts C's rows too, and each row tile packs the same B slabs
   for itself: with Conv's implicit im2col that doubled the packing's share of ResNet-50 at two
   threads (perf samples of conv_pack_b and pack_b_block 2.2x those of one thread). Here the
   threads first pack B's KC x NC blocks into the pre-packed layout (kiln__sgemm_pb_offset), then
   run the product on it as a pre-packed B. */
typedef struct shared_b_job {
  const kiln__sgemm_args *g;
  const impl *im;
  size_t chunks_n, npad;
} shared_b_job;

static void shared_b_range(void *arg, size_t begin, size_t end) {
  const shared_b_job *j = arg;
  const kiln__sgemm_args *g = j->g;
  for (size_t t = begin; t < end; t++) {
    size_t p0 = t / j->chunks_n * KC, j0 = t % j->chunks_n * j->im->nc;
    size_t kc = KILN__MIN((size_t)KC, g->k - p0), nc = KILN__MIN(j->im->nc, g->n - j0);
    float *dst = g->b_scratch + p0 * j->npad + j0 * kc;
    if (g->pack_b) g->pack_b(g->pack_b_ctx, j->im->nr, p0, kc, j0, nc, dst);
    else pack_b_block(j->im->nr, g->trans_b, g->b, g->ldb, p0, kc, j0, nc, dst);
  }
}

static void run_shared_b(struct kiln__pool *pool, kiln__isa isa, const impl *im,
                         const kiln__sgemm_args *g) {
  shared_b_job j = {g, im, (g->n + im->nc - 1) / im->nc, round_up(g->n, im->nr)};
  kiln__parallel_for(pool, (g->k + KC - 1) / KC * j.chunks_n, shared_b_range, &j);
  kiln__sgemm_packed view = {.isa = isa, .is_a = false, .rows = g->n, .k = g->k,
                             .data = g->b_scratch};
  kiln__sgemm_args g2 = *g;
  g2.pb = &view;
  g2.pack_b = NULL;
  g2.b_in_place = false;
  g2.b_scratch = NULL;
  kiln__sgemm_run(pool, isa, &g2);
}

void kiln__sgemm_run(struct kiln__pool *pool, kiln__isa isa, const kiln__sgemm_args *g) {
  if (g->m == 0 || g->n == 0) return;
  if (g->k == 0) {
    run_k0(g);
    return;
  }
  /* A packed operand fixes the tile shape it was packed for. */
  if (g->pa) isa = g->pa->isa;
  else if (g->pb) isa = g->pb->isa;
  const impl *im = impl_of(isa);
  job jb = {.g = g, .im = im, .mc = im->mc, .tn = im->nc, .uk = im->uk};
  if (im == &impls[isa] && packed_pf_uks[isa] && c_prefetch_pays(g)) jb.uk = packed_pf_uks[isa];
  if (g->b_in_place && !g->pb && !g->pack_b && !g->trans_b && im == &impls[isa] &&
      in_place_pays(g)) {
    jb.uks = strided_uks[isa];
    if (strided_pf_uks[isa][0] && prefetch_pays(g)) jb.uks_pf = strided_pf_uks[isa];
  }
  size_t threads = pool ? (size_t)kiln__pool_threads(pool) : 1, want = 3 * threads;
  if (jb.uks) jb.tn = in_place_tile_n(im, g->k, g->n, threads);
  size_t blocks_m = (g->m + im->mc - 1) / im->mc, rb = 1;
  /* With threads, A blocks of whole panels sized to share out evenly (kiln__pool_block): m =
     128 (a transformer's tokens) was cut into 72 + 56 rows (66 + 62 now), MobileNet-v2's 576
     into nine blocks of 64 (twelve of 48 now). */
  if (threads > 1 && blocks_m > 1) {
    size_t panels = (g->m + im->mr - 1) / im->mr;
    jb.mc = kiln__pool_block(panels, im->mc / im->mr, 1, 1, threads) * im->mr;
    blocks_m = (g->m + jb.mc - 1) / jb.mc;
  }
  if (g->pb) {
    /* Pre-packed B costs nothing to walk, so a tile spans as many columns as the threads leave
       it (all of n when serial): its A block is then packed once per tile instead of once per
       128 columns (8 times over for 1024^3), and B's panels stream through it. */
    size_t ct = threads <= 1 || blocks_m >= want ? 1 : (want + blocks_m - 1) / blocks_m;
    jb.tn = round_up((g->n + ct - 1) / ct, im->nr);
    /* ... up to tn_max(), so the tile of C that each k block reads back stays in L2 (whole
       panels: NEON's are 12 wide). */
    size_t tmax = tn_max();
    if (jb.tn > tmax) jb.tn = tmax / im->nr * im->nr;
  }
  jb.tiles_n = (g->n + jb.tn - 1) / jb.tn;
  /* With threads, column tiles of even width (whole panels): n = 169 (a 13x13 plane) was cut
     into 128 + 41, so two threads ran 8 panels against 3; 96 + 73 is 6 against 5. */
  if (!g->pb && threads > 1 && jb.tiles_n > 1) {
    jb.tn = round_up((g->n + jb.tiles_n - 1) / jb.tiles_n, im->nr);
    jb.tiles_n = (g->n + jb.tn - 1) / jb.tn;
  }
  /* B read in place costs nothing to share between row tiles (every A panel re-reads it
     anyway), so when the column tiles alone are fewer than two per thread, C's rows are cut too
     (whole panels): MobileNet-v2's 384->64 at 14x14 ran as two tiles of 128 and 68 columns, 4
     panels against 3, and two threads sped it up 1.55x. */
  if (jb.uks && threads > 1 && blocks_m * jb.tiles_n < 2 * threads) {
    size_t panels = (g->m + im->mr - 1) / im->mr;
    size_t cut = KILN__MIN(panels, (2 * threads + jb.tiles_n - 1) / jb.tiles_n);
    jb.mc = round_up((g->m + cut - 1) / cut, im->mr);
    blocks_m = (g->m + jb.mc - 1) / jb.mc;
  }
  /* A B slab packed per call is shared by every MC block of a tile's rows, so tiles take as many
     rows as the threads leave them: all of them when serial or when the columns alone give each
     thread 3 tiles; otherwise about 3 tiles per thread (enough for the dynamic claiming to even
     out, while B is packed once per tile row, not once per MC block: with Conv's implicit im2col
     the packing is the costly part of a small-n layer such as ResNet's 7x7 stage). */
  if (!g->pb) {
    if (threads <= 1 || jb.tiles_n >= want) rb = blocks_m;
    else rb = (blocks_m * jb.tiles_n + want - 1) / want;
    rb = KILN__MAX((size_t)1, KILN__MIN(rb, blocks_m));
  }
  if (!g->pb && rb < blocks_m && !jb.uks && g->b_scratch && im == &impls[isa] &&
      (double)g->m * (double)g->n * (double)g->k >= 65536.0 &&
      kiln__sgemm_pb_floats(im->nr, g->k, g->n) <= g->b_scratch_floats) {
    run_shared_b(pool, isa, im, g);
    return;
  }
  jb.tm = rb * jb.mc;
  size_t tiles = (blocks_m + rb - 1) / rb * jb.tiles_n;
  /* Below ~64k multiply-adds the pool's hand-off costs more than the work. */
  if (tiles == 1 || (double)g->m * (double)g->n * (double)g->k < 65536.0)
    tiles_range(&jb, 0, tiles);
  else
    kiln__parallel_for(pool, tiles, tiles_range, &jb);
}
