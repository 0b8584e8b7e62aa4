/* Reference float32 GEMM: packed, cache-blocked, portable C.
 *
 * C is cut into MC x NC tiles, each an independent work item for the pool. A tile walks k in KC
 * steps: it packs its KC x NC slab of op(B) into NR-wide column panels and its MC x KC slab of
 * op(A) into MR-high row panels (zero-padded at the edges), then runs an MR x NR register-tile
 * microkernel over them. The microkernel's fixed-size inner loops are what the compiler turns into
 * SIMD code. Packing buffers are on the stack (192 KiB), so nothing is allocated.
 *
 * Very short A (m < MR) skips packing: every output row is an axpy (or dot-product) sweep over B,
 * which is bound by reading B anyway, and is split over the pool by column ranges. Both paths sum
 * in the same order, so a row's result does not depend on m. */
#include "kernels/ref/gemm.h"

#include "ir/op.h"

/* Register tile MR x NR: 8 SSE accumulators, which fit the 16 registers of baseline x86-64
   without spilling. Cache blocks: an MC x KC slab of A (64 KiB) and a KC x NC slab of B (128 KiB),
   both on the stack. */
#define MR 4
#define NR 8
#define MC 64
#define KC 256
#define NC 128

typedef struct sgemm_args {
  bool trans_a, trans_b;
  size_t m, n, k;
  float alpha, beta;
  const float *a, *b;
  size_t lda, ldb, ldc;
  float *c;
  size_t tiles_n; /* tiles along n */
} sgemm_args;

/* Packs op(A)[i0:i0+mc, p0:p0+kc] as ceil(mc/MR) panels of kc x MR. */
static void pack_a(const sgemm_args *g, size_t i0, size_t mc, size_t p0, size_t kc,
                   float *restrict dst) {
  for (size_t ip = 0; ip < mc; ip += MR) {
    size_t mr = KILN__MIN((size_t)MR, mc - ip);
    for (size_t p = 0; p < kc; p++) {
      for (size_t r = 0; r < mr; r++) {
        size_t i = i0 + ip + r, q = p0 + p;
        dst[p * MR + r] = g->trans_a ? g->a[q * g->lda + i] : g->a[i * g->lda + q];
      }
      for (size_t r = mr; r < MR; r++) dst[p * MR + r] = 0.0f;
    }
    dst += kc * MR;
  }
}

/* Packs op(B)[p0:p0+kc, j0:j0+nc] as ceil(nc/NR) panels of kc x NR. */
static void pack_b(const sgemm_args *g, size_t p0, size_t kc, size_t j0, size_t nc,
                   float *restrict dst) {
  for (size_t jp = 0; jp < nc; jp += NR) {
    size_t nr = KILN__MIN((size_t)NR, nc - jp);
    if (!g->trans_b) {
      for (size_t p = 0; p < kc; p++) {
        const float *src = g->b + (p0 + p) * g->ldb + j0 + jp;
        float *d = dst + p * NR;
        if (nr == NR) {
          for (size_t j = 0; j < NR; j++) d[j] = src[j];
        } else {
          for (size_t j = 0; j < nr; j++) d[j] = src[j];
          for (size_t j = nr; j < NR; j++) d[j] = 0.0f;
        }
      }
    } else {
      for (size_t j = 0; j < nr; j++) {
        const float *src = g->b + (j0 + jp + j) * g->ldb + p0;
        for (size_t p = 0; p < kc; p++) dst[p * NR + j] = src[p];
      }
      for (size_t j = nr; j < NR; j++)
        for (size_t p = 0; p < kc; p++) dst[p * NR + j] = 0.0f;
    }
    dst += kc * NR;
  }
}

/* acc = packed A panel (kc x MR) times packed B panel (kc x NR). One named accumulator row per
   row of the tile and fixed trip counts: the compiler keeps the MR x NR tile in SIMD registers. */
static void micro_tile(size_t kc, const float *restrict ap, const float *restrict bp,
                       float acc[MR][NR]) {
  float c0[NR] = {0}, c1[NR] = {0}, c2[NR] = {0}, c3[NR] = {0};
  for (size_t p = 0; p < kc; p++) {
    const float *b = bp + p * NR, *a = ap + p * MR;
    for (size_t j = 0; j < NR; j++) {
      c0[j] += a[0] * b[j];
      c1[j] += a[1] * b[j];
      c2[j] += a[2] * b[j];
      c3[j] += a[3] * b[j];
    }
  }
  memcpy(acc[0], c0, sizeof c0);
  memcpy(acc[1], c1, sizeof c1);
  memcpy(acc[2], c2, sizeof c2);
  memcpy(acc[3], c3, sizeof c3);
}

/* Writes nr accumulated values into a row of C. The first k block applies beta; later ones add. */
static void store_row(const sgemm_args *g, float *restrict row, size_t nr, const float *acc,
                      bool first) {
  float alpha = g->alpha, beta = g->beta;
  if (!first || beta == 1.0f) {
    for (size_t j = 0; j < nr; j++) row[j] += alpha * acc[j];
  } else if (beta == 0.0f) {
    for (size_t j = 0; j < nr; j++) row[j] = alpha * acc[j];
  } else {
    for (size_t j = 0; j < nr; j++) row[j] = beta * row[j] + alpha * acc[j];
  }
}

static void store_tile(const sgemm_args *g, float *restrict c, size_t mr, size_t nr,
                       float acc[MR][NR], bool first) {
  for (size_t r = 0; r < mr; r++) store_row(g, c + r * g->ldc, nr, acc[r], first);
}

static void tile_range(void *arg, size_t begin, size_t end) {
  const sgemm_args *g = arg;
  float apack[(MC + MR - 1) / MR * MR * KC];
  float bpack[KC * ((NC + NR - 1) / NR * NR)];
  float acc[MR][NR];
  for (size_t t = begin; t < end; t++) {
    size_t i0 = (t / g->tiles_n) * MC, j0 = (t % g->tiles_n) * NC;
    size_t mc = KILN__MIN((size_t)MC, g->m - i0), nc = KILN__MIN((size_t)NC, g->n - j0);
    for (size_t p0 = 0; p0 < g->k; p0 += KC) {
      size_t kc = KILN__MIN((size_t)KC, g->k - p0);
      pack_b(g, p0, kc, j0, nc, bpack);
      pack_a(g, i0, mc, p0, kc, apack);
      for (size_t jp = 0; jp < nc; jp += NR) {
        size_t nr = KILN__MIN((size_t)NR, nc - jp);
        for (size_t ip = 0; ip < mc; ip += MR) {
          size_t mr = KILN__MIN((size_t)MR, mc - ip);
          micro_tile(kc, apack + ip * kc, bpack + jp * kc, acc);
          store_tile(g, g->c + (i0 + ip) * g->ldc + j0 + jp, mr, nr, acc, p0 == 0);
        }
      }
    }
  }
}

/* Short-A path over output column blocks [begin, end) of NC columns. Each element is summed in
   the same order as the packed path (per k block, from zero, p ascending) so that a row's result
   does not depend on how many rows it was computed with: batching stays bit-exact. */
static void rows_range(void *arg, size_t begin, size_t end) {
  const sgemm_args *g = arg;
  float acc[NC];
  for (size_t t = begin; t < end; t++) {
    size_t j0 = t * NC, nc = KILN__MIN((size_t)NC, g->n - j0);
    for (size_t i = 0; i < g->m; i++) {
      for (size_t p0 = 0; p0 < g->k; p0 += KC) {
        size_t p1 = KILN__MIN(g->k, p0 + KC);
        if (!g->trans_b) {
          for (size_t j = 0; j < nc; j++) acc[j] = 0.0f;
          for (size_t p = p0; p < p1; p++) {
            float av = g->trans_a ? g->a[p * g->lda + i] : g->a[i * g->lda + p];
            const float *restrict brow = g->b + p * g->ldb + j0;
            for (size_t j = 0; j < nc; j++) acc[j] += av * brow[j];
          }
        } else {
          for (size_t j = 0; j < nc; j++) {
            const float *restrict bcol = g->b + (j0 + j) * g->ldb;
            float sum = 0.0f;
            for (size_t p = p0; p < p1; p++)
              sum += (g->trans_a ? g->a[p * g->lda + i] : g->a[i * g->lda + p]) * bcol[p];
            acc[j] = sum;
          }
        }
        store_row(g, g->c + i * g->ldc + j0, nc, acc, p0 == 0);
      }
    }
  }
}

void kiln__sgemm(struct kiln__pool *pool, bool trans_a, bool trans_b, size_t m, size_t n, size_t k,
                 float alpha, const float *a, size_t lda, const float *b, size_t ldb, float beta,
                 float *c, size_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0 || alpha == 0.0f) {
    for (size_t i = 0; i < m; i++) {
      float *row = c + i * ldc;
      if (beta == 0.0f) {
        for (size_t j = 0; j < n; j++) row[j] = 0.0f;
      } else if (beta != 1.0f) {
        for (size_t j = 0; j < n; j++) row[j] *= beta;
      }
    }
    return;
  }
  sgemm_args g = {.trans_a = trans_a, .trans_b = trans_b, .m = m, .n = n, .k = k,
                  .alpha = alpha, .beta = beta, .a = a, .b = b, .lda = lda, .ldb = ldb,
                  .ldc = ldc, .c = c};
  g.tiles_n = (n + NC - 1) / NC;
  /* Serial small problems: the pool's hand-off costs more than the work. */
  bool small = (double)m * (double)n * (double)k < 32768.0;
  if (m < MR) {
    if (small) rows_range(&g, 0, g.tiles_n);
    else kiln__parallel_for(pool, g.tiles_n, rows_range, &g);
    return;
  }
  size_t tiles = ((m + MC - 1) / MC) * g.tiles_n;
  if (small) tile_range(&g, 0, tiles);
  else kiln__parallel_for(pool, tiles, tile_range, &g);
}

kiln_status kiln__matmul_shape_get(const kiln_tensor *a, const kiln_tensor *b,
                                   kiln__matmul_shape *s, kiln_error *err) {
  if (a->rank < 1 || b->rank < 1)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "matmul operands must have rank >= 1");
  memset(s, 0, sizeof *s);
  int64_t am = a->rank >= 2 ? a->dims[a->rank - 2] : 1, ak = a->dims[a->rank - 1];
  int64_t bk = b->rank >= 2 ? b->dims[b->rank - 2] : b->dims[0];
  int64_t bn = b->rank >= 2 ? b->dims[b->rank - 1] : 1;
  if (ak != bk)
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "matmul inner dimensions differ: A has %lld columns, B has %lld rows",
                      (long long)ak, (long long)bk);
  if (am < 0 || ak < 0 || bn < 0)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "matmul operand has a negative dimension");
  int ra = a->rank > 2 ? a->rank - 2 : 0, rb = b->rank > 2 ? b->rank - 2 : 0;
  kiln_status st = kiln__broadcast(ra, a->dims, rb, b->dims, &s->batch_rank, s->batch_dims, err);
  if (st != KILN_OK) return st;
  s->m = (size_t)am;
  s->k = (size_t)ak;
  s->n = (size_t)bn;
  /* Matrix strides first, then batch strides from the innermost batch dim outwards. */
  size_t astep = s->m * s->k, bstep = s->k * s->n;
  s->batch = 1;
  for (int i = s->batch_rank - 1; i >= 0; i--) {
    int ia = i - (s->batch_rank - ra), ib = i - (s->batch_rank - rb);
    int64_t da = ia >= 0 ? a->dims[ia] : 1, db = ib >= 0 ? b->dims[ib] : 1;
    s->a_bstride[i] = da == 1 ? 0 : astep;
    s->b_bstride[i] = db == 1 ? 0 : bstep;
    if (da != 1) s->a_batched = true;
    if (db != 1) s->b_batched = true;
    astep *= (size_t)da;
    bstep *= (size_t)db;
    s->batch *= (size_t)s->batch_dims[i];
  }
  s->out_rank = 0;
  for (int i = 0; i < s->batch_rank; i++) s->out_dims[s->out_rank++] = s->batch_dims[i];
  if (a->rank >= 2) s->out_dims[s->out_rank++] = am;
  if (b->rank >= 2) s->out_dims[s->out_rank++] = bn;
  return KILN_OK;
}

void kiln__matmul_offsets(const kiln__matmul_shape *s, size_t i, size_t *a_off, size_t *b_off) {
  size_t ao = 0, bo = 0;
  for (int d = s->batch_rank - 1; d >= 0; d--) {
    size_t dim = (size_t)s->batch_dims[d], idx = i % dim;
    i /= dim;
    ao += idx * s->a_bstride[d];
    bo += idx * s->b_bstride[d];
  }
  *a_off = ao;
  *b_off = bo;
}
