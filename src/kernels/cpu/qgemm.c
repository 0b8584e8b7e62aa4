/* The integer GEMM driver: ISA selection, packing, tiling over the pool, and the portable
 * microkernel and epilogue. See qgemm.h for the scheme. */
#include "kernels/cpu/qgemm.h"

#include <math.h>
#include <stdlib.h>

#include "core/threadpool.h"

#ifdef KILN__QGEMM_X86
#include <cpuid.h>
#endif
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* k block; a multiple of every format's k group (2, 4) and of 16 (kiln__qpack_taps). MC x NC
   int32 accumulators per tile live on the stack (36 KiB). Large enough for a whole 3x3 conv over
   512 channels: the requantizing microkernel (k <= KC) then covers every conv, with no int32 tile
   stored per k block and no epilogue pass, and the panels stream from L2 well enough (bench_qgemm
   conv table, best of 3 alternating rounds, KC 256 -> 4608: l2 3x3 159 -> 184 GOPS, l4 3x3 177 ->
   191, l4 1x1 139 -> 157, the k <= 256 shapes unchanged). */
#define KC 4608
#define MC_MAX 72
#define NC 128

typedef struct qimpl {
  size_t mr, nr, mc, kp, esz; /* tile, rows per tile, k group, bytes per stored value */
  kiln__qgemm_ukernel uk;
  kiln__qep_tile_fn ep;
  bool a_s8; /* byte formats: A stored as int8 and B as uint8 (else A uint8, B int8) */
  /* MR x NR/2 kernel for a last B panel of at most NR/2 columns, which is then packed NR/2 wide
     (NULL: none, every panel NR wide) */
  kiln__qgemm_ukernel uk_edge;
  /* MR x NR kernel that requantizes in registers (the conv case with k <= KC), or NULL (then
     ukqn, when set, does) */
  kiln__qgemm_ukernel_req ukq;
  /* rows-in-lanes kernel for an edge panel of at most 4 columns (kiln__qgemm_ukc_*), or NULL */
  void (*ukc)(size_t, const uint8_t *, size_t, size_t, const uint8_t *, size_t, size_t, int32_t *,
              size_t, bool);
  /* ukq over up to 4 adjacent panels at once (fewer loads per product), or NULL */
  kiln__qgemm_ukernel_reqn ukqn;
} qimpl;

static const qimpl impls[KILN__QFMT_COUNT] = {
    [KILN__QISA_GENERIC] = {4, 8, 64, 2, 2, kiln__qgemm_uk_4x8__generic, kiln__qep_tile__generic,
                            0},
#ifdef KILN__QGEMM_X86
    [KILN__QISA_AVX2] = {6, 16, 72, 2, 2, kiln__qgemm_uk_6x16__avx2, kiln__qep_tile__avx2, 0},
#ifdef KILN__QGEMM_HAVE_AVXVNNI
    [KILN__QISA_AVXVNNI] = {6, 16, 72, 4, 1, kiln__qgemm_uk_6x16__avxvnni, kiln__qep_tile__avx2,
                            0},
#endif
    [KILN__QISA_AVX512VNNI] = {6, 32, 72, 4, 1, kiln__qgemm_uk_6x32__avx512vnni,
                               kiln__qep_tile__avx2, 0},
    [KILN__QFMT_AVX2_U8S8] = {4, 16, 72, 4, 1, kiln__qgemm_uk_4x16__avx2_u8s8,
                              kiln__qep_tile__avx2, 0, kiln__qgemm_uk_4x8__avx2_u8s8},
    [KILN__QFMT_AVX2_S8U8] = {4, 16, 72, 4, 1, kiln__qgemm_uk_4x16__avx2_s8u8,
                              kiln__qep_tile__avx2, 1, kiln__qgemm_uk_4x8__avx2_s8u8,
                              kiln__qgemm_ukq_4x16__avx2_s8u8, kiln__qgemm_ukc_avx2_s8u8},
    [KILN__QFMT_VNNI_S8U8] = {4, 16, 72, 4, 1, kiln__qgemm_uk_4x16__vnni_s8u8,
                              kiln__qep_tile__avx2, 1, kiln__qgemm_uk_4x8__vnni_s8u8,
                              NULL, kiln__qgemm_ukc_vnni_s8u8, kiln__qgemm_ukqn_vnni_s8u8},
#endif
};

static const char *const names[KILN__QFMT_COUNT] = {
    "generic", "avx2", "avxvnni", "avx512vnni", "avx2-u8s8", "avx2-s8u8", "vnni-s8u8"};

const char *kiln__qisa_name(kiln__qisa isa) {
  return (unsigned)isa < KILN__QFMT_COUNT ? names[isa] : "?";
}

bool kiln__qisa_supported(kiln__qisa isa) {
#ifdef KILN__QGEMM_X86
  /* The VNNI byte format's edge kernel uses VPDPBUSD on ymm (AVX512VL). */
  if (isa == KILN__QFMT_VNNI_S8U8)
    return kiln__qisa_supported(KILN__QISA_AVX512VNNI) && __builtin_cpu_supports("avx512vl");
#endif
  if ((unsigned)isa >= KILN__QISA_COUNT || !impls[isa].uk) return false;
  if (isa == KILN__QISA_GENERIC) return true;
#ifdef KILN__QGEMM_X86
  __builtin_cpu_init();
  bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == KILN__QISA_AVX2) return avx2;
  if (isa == KILN__QISA_AVX512VNNI)
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni");
  if (isa == KILN__QISA_AVXVNNI) {
    /* CPUID.(EAX=7, ECX=1):EAX bit 4; not every compiler's __builtin_cpu_supports knows it. */
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!avx2 || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    return (a >> 4) & 1u;
  }
#endif
  return false;
}

kiln_status kiln__qisa_select(kiln__qisa *out, kiln_error *err) {
  const char *want = getenv("KILN_ISA");
  *out = KILN__QISA_GENERIC;
  int top = KILN__QISA_COUNT - 1;
  /* "neon" names the float kernels (sgemm.h); with no integer NEON kernel, the best there is. */
  if (want && !strcmp(want, "neon")) {
#ifdef __aarch64__
    want = NULL;
#else
    return kiln__fail(err, KILN_UNSUPPORTED, "KILN_ISA=neon: this CPU does not support it");
#endif
  }
  if (want && *want && strcmp(want, "avx512") != 0) {
    for (int i = 0; i < KILN__QISA_COUNT; i++) {
      if (strcmp(want, names[i]) != 0) continue;
      if (!kiln__qisa_supported((kiln__qisa)i))
        return kiln__fail(err, KILN_UNSUPPORTED, "KILN_ISA=%s: this CPU or build does not support it",
                          want);
      *out = (kiln__qisa)i;
      return KILN_OK;
    }
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "KILN_ISA=%s: expected avx512, avx512vnni, avxvnni, avx2 or generic", want);
  }
  for (int i = top; i > 0; i--)
    if (kiln__qisa_supported((kiln__qisa)i)) {
      *out = (kiln__qisa)i;
      break;
    }
  return KILN_OK;
}

/* ---- packing --------------------------------------------------------------------------------- */

static size_t round_up(size_t x, size_t r) { return (x + r - 1) / r * r; }

static size_t data_bytes(const qimpl *im, bool is_a, size_t rows, size_t k, bool *ok) {
  size_t r = is_a ? im->mr : im->nr, cnt, bytes;
  *ok = kiln__mul_ok(round_up(rows, r), round_up(k, im->kp), &cnt) &&
        kiln__mul_ok(cnt, im->esz, &bytes) && bytes < SIZE_MAX / 2;
  return *ok ? round_up(bytes, 64) : 0;
}

size_t kiln__qpack_bytes(kiln__qisa isa, bool is_a, size_t rows, size_t k) {
  if ((unsigned)isa >= KILN__QFMT_COUNT || !impls[isa].uk) return 0;
  bool ok;
  size_t d = data_bytes(&impls[isa], is_a, rows, k, &ok), s;
  if (!ok || !kiln__mul_ok(rows + 1, sizeof(int32_t), &s)) return 0;
  return d + round_up(s, 64);
}

typedef struct pack_job {
  const qimpl *im;
  bool is_a;
  size_t rows, k, rpad;
  int32_t shift;
  const kiln__qsrc *src;
  const kiln__qpacked *out;
  bool fast_b16, stored_signed;
  uint8_t xor_;
  kiln__qgather_fn gather; /* kiln__qpack_gather's source, else NULL */
  const void *gctx;
  size_t gb;               /* columns per gathered block */
} pack_job;

/* Stores one value of a panel in the operand's format. */
static inline void put(void *dst, size_t esz, size_t i, int32_t v) {
  if (esz == 2) ((int16_t *)dst)[i] = (int16_t)v;
  else ((uint8_t *)dst)[i] = (uint8_t)v; /* u8 (A) or the s8 bit pattern (B) */
}

/* Packs panels [pb, pe): each covers R rows across every k block, so its rows' sums are final. */
static void pack_panels(void *arg, size_t pb, size_t pe) {
  const pack_job *j = arg;
  const qimpl *im = j->im;
  const kiln__qsrc *s = j->src;
  size_t R = j->is_a ? im->mr : im->nr, KP = im->kp, esz = im->esz;
  const uint8_t *u8 = s->base;
  const int8_t *s8 = s->base;
  /* Byte-format B read along contiguous columns (activations, im2col columns): 4 source rows
     of 16 bytes interleave into one 64-byte quad group, no per-element loop. */
  bool fast_b = j->fast_b16;
  (void)fast_b; /* only the x86 packer reads it */
  for (size_t pi = pb; pi < pe; pi++) {
    size_t r0 = pi * R, rn = KILN__MIN(R, j->rows - r0);
    /* Stored width of this panel: a narrow last B panel for the edge kernel. */
    size_t W = !j->is_a && im->uk_edge && rn <= R / 2 ? R / 2 : R;
    int32_t sums[32]; /* R <= 32 */
    memset(sums, 0, R * sizeof *sums);
    for (size_t p0 = 0; p0 < j->k; p0 += KC) {
      size_t kc = KILN__MIN((size_t)KC, j->k - p0), kcp = round_up(kc, KP);
      uint8_t *blk = (uint8_t *)j->out->data + (p0 * j->rpad + r0 * kcp) * esz;
#ifdef KILN__QGEMM_X86
      if (fast_b && rn == R) {
        size_t k4 = kc & ~(size_t)3;
        kiln__qpack_b16_bytes__avx2(u8 + r0 + p0 * s->ks, s->ks, k4, j->xor_,
                                    j->stored_signed, blk, s->no_sums ? NULL : sums);
        if (k4 == kc) continue;
        /* the last partial quad: the generic loop below, zero-filled */
        memset(blk + k4 * R, 0, (kcp - k4) * R);
        for (size_t p = k4; p < kc; p++) {
          const size_t off = r0 + (p0 + p) * s->ks;
          for (size_t r = 0; r < rn; r++) {
            int32_t v = (s->is_signed ? (int32_t)s8[off + r] : (int32_t)u8[off + r]) + j->shift;
            blk[(p / 4) * R * 4 + r * 4 + p % 4] = (uint8_t)v;
            sums[r] += v;
          }
        }
        continue;
      }
#endif
      if (rn < W || kcp != kc) memset(blk, 0, W * kcp * esz);
      if (esz == 1 && s->ks == 1 && KP == 4) {
        /* Byte quads from rows contiguous along k (MatMul activations): each quad of a row is 4
           consecutive source bytes, moved as one word (the +-128 shift flips the top bits);
           the row sums in a separate loop the compiler vectorizes. */
        uint32_t flip = j->xor_ * 0x01010101u;
        size_t k4 = kc & ~(size_t)3, k16 = 0;
#ifdef KILN__QGEMM_X86
        if (rn == 6 && W == 6) { /* the 6-row tiles: 16 bytes of each row, a 6 x 4 word transpose */
          const __m128i fl = _mm_set1_epi8((char)j->xor_);
          const uint8_t *src = u8 + r0 * s->rs + p0;
          for (; k16 + 16 <= k4; k16 += 16) {
            __m128i v[6];
            for (size_t r = 0; r < 6; r++)
              v[r] = _mm_xor_si128(_mm_loadu_si128((const __m128i *)(src + r * s->rs + k16)), fl);
            __m128i t0 = _mm_unpacklo_epi32(v[0], v[1]), t1 = _mm_unpacklo_epi32(v[2], v[3]);
            __m128i t2 = _mm_unpackhi_epi32(v[0], v[1]), t3 = _mm_unpackhi_epi32(v[2], v[3]);
            __m128i t4 = _mm_unpacklo_epi32(v[4], v[5]), t5 = _mm_unpackhi_epi32(v[4], v[5]);
            uint8_t *dst = blk + k16 * 6; /* quad q of row r at q * 24 + r * 4 */
            _mm_storeu_si128((__m128i *)dst, _mm_unpacklo_epi64(t0, t1));
            _mm_storel_epi64((__m128i *)(dst + 16), t4);
            _mm_storeu_si128((__m128i *)(dst + 24), _mm_unpackhi_epi64(t0, t1));
            _mm_storel_epi64((__m128i *)(dst + 40), _mm_unpackhi_epi64(t4, t4));
            _mm_storeu_si128((__m128i *)(dst + 48), _mm_unpacklo_epi64(t2, t3));
            _mm_storel_epi64((__m128i *)(dst + 64), t5);
            _mm_storeu_si128((__m128i *)(dst + 72), _mm_unpackhi_epi64(t2, t3));
            _mm_storel_epi64((__m128i *)(dst + 88), _mm_unpackhi_epi64(t5, t5));
          }
        }
#endif
        for (size_t r = 0; r < rn; r++) {
          const uint8_t *src = u8 + (r0 + r) * s->rs + p0;
          uint8_t *dst = blk + r * 4 + k16 * W;
          for (size_t p = k16; p < k4; p += 4, dst += W * 4) {
            uint32_t w;
            memcpy(&w, src + p, 4);
            w ^= flip;
            memcpy(dst, &w, 4);
          }
          for (size_t p = k4; p < kc; p++) dst[p - k4] = src[p] ^ j->xor_;
          int32_t sum = 0;
          if (j->stored_signed)
            for (size_t p = 0; p < kc; p++) sum += (int8_t)(src[p] ^ j->xor_);
          else
            for (size_t p = 0; p < kc; p++) sum += (uint8_t)(src[p] ^ j->xor_);
          sums[r] += sum;
        }
        continue;
      }
      for (size_t p = 0; p < kc; p++) {
        size_t base = (p / KP) * W * KP + p % KP;
        const size_t off = r0 * s->rs + (p0 + p) * s->ks;
        for (size_t r = 0; r < rn; r++) {
          size_t si = off + r * s->rs;
          int32_t v = (s->is_signed ? (int32_t)s8[si] : (int32_t)u8[si]) + j->shift;
          put(blk, esz, base + r * KP, v);
          sums[r] += v;
        }
      }
    }
    for (size_t r = 0; r < rn; r++) j->out->sums[r0 + r] = sums[r];
  }
}

/* The packed operand's header and the job that fills it (kiln__qpack, kiln__qpack_gather). */
static pack_job pack_setup(kiln__qisa isa, bool is_a, size_t rows, size_t k, bool src_signed,
                           void *mem, kiln__qpacked *out) {
  const qimpl *im = &impls[isa];
  bool ok;
  size_t d = data_bytes(im, is_a, rows, k, &ok);
  memset(out, 0, sizeof *out);
  out->isa = isa;
  out->is_a = is_a;
  out->rows = rows;
  out->k = k;
  out->data = mem;
  out->sums = (int32_t *)((uint8_t *)mem + d);
  /* The byte formats hold one operand as uint8 and the other as int8 (VPDPBUSD's and
     VPMADDUBSW's operand types): a value of the other type is shifted by +-128. */
  bool stored_signed = is_a == im->a_s8;
  if (im->esz == 1)
    out->zp_off = stored_signed ? (src_signed ? 0 : -128) : (src_signed ? 128 : 0);
  size_t R = is_a ? im->mr : im->nr;
  pack_job j = {im, is_a, rows, k, round_up(rows, R), out->zp_off, NULL, out};
  j.stored_signed = stored_signed;
  j.xor_ = out->zp_off ? 0x80 : 0; /* +-128 on a byte is flipping its top bit */
  return j;
}

static void pack_run(struct kiln__pool *pool, pack_job *j, void (*fn)(void *, size_t, size_t)) {
  size_t R = j->is_a ? j->im->mr : j->im->nr, panels = (j->rows + R - 1) / R;
  if ((double)j->rows * (double)j->k < 32768.0) fn(j, 0, panels);
  else kiln__parallel_for(pool, panels, fn, j);
}

void kiln__qpack(struct kiln__pool *pool, kiln__qisa isa, bool is_a, size_t rows, size_t k,
                 const kiln__qsrc *src, void *mem, kiln__qpacked *out) {
  pack_job j = pack_setup(isa, is_a, rows, k, src->is_signed, mem, out);
  j.src = src;
#ifdef KILN__QGEMM_X86
  j.fast_b16 = !is_a && j.im->esz == 1 && j.im->nr == 16 && src->rs == 1 &&
               kiln__qpack_gather_ok(isa);
#endif
  pack_run(pool, &j, pack_panels);
}

bool kiln__qpack_gather_ok(kiln__qisa isa) {
#ifdef KILN__QGEMM_X86
  return isa == KILN__QISA_AVXVNNI || isa == KILN__QFMT_AVX2_U8S8 || isa == KILN__QFMT_AVX2_S8U8 ||
         isa == KILN__QFMT_VNNI_S8U8;
#else
  (void)isa;
  return false;
#endif
}

/* B from the gather callback, by blocks of j->gb columns (job items [bb, be), one per thread
   unless the chunk is wider than GB_MAX): per GK k values the callback writes the block's
   values into an L1-sized buffer, and its 16-column panels are interleaved from there. Blocks
   span whole output rows of a conv, so im2col's per-call work is not repeated per panel.
   A short or narrow panel (the edge kernel's 8 columns) and a partial last quad take the element
   loop, with zeros stored past the values as pack_panels does. */
#define GB_MAX 512
#define GK 64
static void gather_blocks(void *arg, size_t bb, size_t be) {
#ifdef KILN__QGEMM_X86
  const pack_job *j = arg;
  const size_t R = 16, gb = j->gb;
  _Alignas(64) uint8_t tmp[GK * GB_MAX];
  int32_t sums[GB_MAX];
  for (size_t b = bb; b < be; b++) {
    size_t c0 = b * gb, cn = KILN__MIN(gb, j->rows - c0);
    memset(sums, 0, cn * sizeof *sums);
    for (size_t p0 = 0; p0 < j->k; p0 += KC) {
      size_t kc = KILN__MIN((size_t)KC, j->k - p0), kcp = round_up(kc, 4);
      for (size_t s0 = 0; s0 < kc; s0 += GK) {
        size_t sk = KILN__MIN((size_t)GK, kc - s0), k4 = sk & ~(size_t)3;
        j->gather(j->gctx, c0, cn, p0 + s0, sk, tmp, gb);
        for (size_t i = 0; i < cn; i += R) {
          size_t rn = KILN__MIN(R, cn - i), r0 = c0 + i;
          size_t W = j->im->uk_edge && rn <= R / 2 ? R / 2 : R;
          uint8_t *blk = (uint8_t *)j->out->data + p0 * j->rpad + r0 * kcp + s0 * W;
          size_t pe = 0;
          if (rn == R) {
            kiln__qpack_b16_bytes__avx2(tmp + i, gb, k4, j->xor_, j->stored_signed, blk,
                                        sums + i);
            pe = k4;
          }
          if (pe == sk) continue;
          /* the rest of this k block's quads, zero-filled (only the last sub-block is partial) */
          size_t end = s0 + sk == kc ? kcp - s0 : sk;
          memset(blk + pe * W, 0, (end - pe) * W);
          for (size_t p = pe; p < sk; p++)
            for (size_t r = 0; r < rn; r++) {
              uint8_t v = tmp[p * gb + i + r] ^ j->xor_;
              blk[(p / 4) * W * 4 + r * 4 + p % 4] = v;
              sums[i + r] += j->stored_signed ? (int32_t)(int8_t)v : (int32_t)v;
            }
        }
      }
    }
    for (size_t r = 0; r < cn; r++) j->out->sums[c0 + r] = sums[r];
  }
#else
  (void)arg, (void)bb, (void)be;
#endif
}

void kiln__qpack_gather(struct kiln__pool *pool, kiln__qisa isa, size_t n, size_t k,
                        bool is_signed, kiln__qgather_fn fn, const void *ctx, void *mem,
                        kiln__qpacked *out) {
  pack_job j = pack_setup(isa, false, n, k, is_signed, mem, out);
  j.gather = fn;
  j.gctx = ctx;
  bool serial = (double)n * (double)k < 32768.0;
  size_t threads = serial || !pool ? 1 : (size_t)kiln__pool_threads(pool);
  size_t blocks = KILN__MAX(threads, (n + GB_MAX - 1) / GB_MAX);
  j.gb = KILN__MIN((size_t)GB_MAX, round_up((n + blocks - 1) / blocks, 16));
  blocks = (n + j.gb - 1) / j.gb;
  if (serial || blocks == 1) gather_blocks(&j, 0, blocks);
  else kiln__parallel_for(pool, blocks, gather_blocks, &j);
}

/* kiln__qpack_taps: panels [pb, pe) of 16 columns; within a panel, each 16 k values (one tap's
   16 channels) of 4 columns are a 4 x 4 transpose of 32-bit words, which is exactly the k-quad
   layout (quad q holds word q of each column). Columns past n (the panel's padding) are 0. */
static void taps_panels(void *arg, size_t pb, size_t pe) {
  const pack_job *j = arg;
  const uint8_t *const *ptrs = j->gctx;
  const size_t R = 16, taps = j->gb, kt = j->k / taps;
#ifdef KILN__QGEMM_X86
  /* the VNNI byte format implies AVX-512: 64 channels of a tap per 16 x 16 word transpose */
  const bool wide = j->im == &impls[KILN__QFMT_VNNI_S8U8];
#endif
  for (size_t pi = pb; pi < pe; pi++) {
    size_t r0 = pi * R, rn = KILN__MIN(R, j->rows - r0);
    size_t W = j->im->uk_edge && rn <= R / 2 ? R / 2 : R;
    for (size_t p0 = 0; p0 < j->k; p0 += KC) {
      size_t kc = KILN__MIN((size_t)KC, j->k - p0); /* a multiple of 16 */
      uint8_t *blk = (uint8_t *)j->out->data + p0 * j->rpad + r0 * kc;
      for (size_t p = 0; p < kc; p += 16) {
        size_t t = (p0 + p) / kt, c = (p0 + p) % kt;
        uint8_t *dst = blk + p * W; /* quad p / 4 of a W-wide panel */
#ifdef KILN__QGEMM_X86
        if (wide && rn == R && W == R && c % 64 == 0 && c + 64 <= kt && p + 64 <= kc) {
          const uint8_t *col[16];
          for (size_t i = 0; i < 16; i++) col[i] = ptrs[(r0 + i) * taps + t] + c;
          kiln__qpack_tap64__avx512(col, j->xor_, dst);
          p += 48; /* and the loop's 16 */
          continue;
        }
#endif
        for (size_t g = 0; g < W; g += 4) {
#ifdef __SSE2__
          const __m128i flip = _mm_set1_epi8((char)j->xor_);
          __m128i v[4];
          for (size_t i = 0; i < 4; i++)
            v[i] = g + i < rn ? _mm_xor_si128(_mm_loadu_si128((const __m128i *)(
                                                  ptrs[(r0 + g + i) * taps + t] + c)),
                                              flip)
                              : _mm_setzero_si128();
          __m128i t0 = _mm_unpacklo_epi32(v[0], v[1]), t1 = _mm_unpacklo_epi32(v[2], v[3]);
          __m128i t2 = _mm_unpackhi_epi32(v[0], v[1]), t3 = _mm_unpackhi_epi32(v[2], v[3]);
          _mm_storeu_si128((__m128i *)(dst + g * 4), _mm_unpacklo_epi64(t0, t1));
          _mm_storeu_si128((__m128i *)(dst + W * 4 + g * 4), _mm_unpackhi_epi64(t0, t1));
          _mm_storeu_si128((__m128i *)(dst + W * 8 + g * 4), _mm_unpacklo_epi64(t2, t3));
          _mm_storeu_si128((__m128i *)(dst + W * 12 + g * 4), _mm_unpackhi_epi64(t2, t3));
#else
          for (size_t i = 0; i < 4; i++)
            for (size_t b = 0; b < 16; b++)
              dst[(b / 4) * W * 4 + (g + i) * 4 + b % 4] =
                  g + i < rn ? ptrs[(r0 + g + i) * taps + t][c + b] ^ j->xor_ : 0;
#endif
        }
      }
    }
  }
}

void kiln__qpack_taps(struct kiln__pool *pool, kiln__qisa isa, size_t n, size_t taps, size_t kt,
                      bool is_signed, const uint8_t *const *ptrs, void *mem, kiln__qpacked *out) {
  pack_job j = pack_setup(isa, false, n, taps * kt, is_signed, mem, out);
  j.gctx = ptrs;
  j.gb = taps;
  pack_run(pool, &j, taps_panels);
}

/* Whether every k pair of the operand, stored as int8 (a uint8 source shifted by -128), has
   |v0| + |v1| <= 128: then u8 x s8 pair sums are at most 255 * 128 = 32640 and VPMADDUBSW's int16
   saturation never happens. Pairs are (2q, 2q + 1) of the whole k, which is how every k block
   (KC even) groups them; a lone last value pairs with the zero padding. */
static bool fits_maddubs(const kiln__qsrc *s, size_t rows, size_t k) {
  const uint8_t *u8 = s->base;
  const int8_t *s8 = s->base;
  int32_t shift = s->is_signed ? 0 : -128;
  for (size_t r = 0; r < rows; r++)
    for (size_t p = 0; p < k; p += 2) {
      size_t i = r * s->rs + p * s->ks;
      int32_t v0 = (s->is_signed ? s8[i] : u8[i]) + shift, v1 = 0;
      if (p + 1 < k) v1 = (s->is_signed ? s8[i + s->ks] : u8[i + s->ks]) + shift;
      if (abs(v0) + abs(v1) > 128) return false;
    }
  return true;
}

kiln_status kiln__qpack_alloc(kiln__qisa isa, bool is_a, size_t rows, size_t k,
                              const kiln__qsrc *src, kiln__qpacked *out, kiln_error *err) {
  memset(out, 0, sizeof *out);
  if (isa == KILN__QISA_AVX2 && fits_maddubs(src, rows, k))
    isa = is_a ? KILN__QFMT_AVX2_S8U8 : KILN__QFMT_AVX2_U8S8;
  else if (isa == KILN__QISA_AVX512VNNI && is_a && kiln__qisa_supported(KILN__QFMT_VNNI_S8U8))
    isa = KILN__QFMT_VNNI_S8U8;
  size_t bytes = kiln__qpack_bytes(isa, is_a, rows, k);
  if (!bytes)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "integer GEMM operand of %zu x %zu is too large",
                      rows, k);
  void *mem = kiln__aligned_alloc(bytes);
  if (!mem) return kiln__fail(err, KILN_NO_MEMORY, "out of memory packing integer weights");
  kiln__qpack(NULL, isa, is_a, rows, k, src, mem, out);
  out->owned = mem;
  return KILN_OK;
}

void kiln__qpacked_free(kiln__qpacked *p) {
  if (!p) return;
  kiln__aligned_free(p->owned);
  p->owned = p->data = NULL;
  p->sums = NULL;
}

/* ---- portable microkernel and epilogue ------------------------------------------------------- */

void kiln__qgemm_uk_4x8__generic(size_t groups, const void *restrict a, const void *restrict b,
                                 int32_t *restrict c, size_t ldc, bool accumulate) {
  const int16_t *A = a, *B = b;
  int32_t acc[4][8] = {{0}};
  for (size_t g = 0; g < groups; g++, A += 8, B += 16)
    for (int i = 0; i < 4; i++)
      for (int j = 0; j < 8; j++) acc[i][j] += A[2 * i] * B[2 * j] + A[2 * i + 1] * B[2 * j + 1];
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < 8; j++)
      c[i * ldc + j] =
          (int32_t)((accumulate ? (uint32_t)c[i * ldc + j] : 0u) + (uint32_t)acc[i][j]);
}

/* The reference kernel's saturate(): rint, NaN to 0, add the zero point, clamp. */
static inline int32_t requant(int32_t v, float mult, int32_t zy, int32_t lo, int32_t hi) {
  float r = rintf((float)v * mult);
  if (r != r) r = 0.0f;
  double q = (double)r + zy;
  return q < lo ? lo : q > hi ? hi : (int32_t)q;
}

void kiln__qep__generic(const kiln__qep_row *r) {
  for (size_t j = 0; j < r->n; j++) {
    /* Unsigned arithmetic: int32 wrap-around without undefined behaviour. */
    uint32_t v = (uint32_t)r->acc[j] + (uint32_t)r->row_add;
    if (r->za) v -= (uint32_t)r->za * (uint32_t)r->cs[j];
    if (r->zb) v -= (uint32_t)r->zb[j] * (uint32_t)r->rowterm;
    if (r->kind == KILN__QOUT_I32) {
      if (r->dq) { /* Cast's then Mul's then Add's float operations */
        float f = (float)(int32_t)v;
        f *= r->dq_mult[j];
        if (r->dq_row) f *= r->mult_row;
        if (r->dq_bias) f += r->dq_bias[j];
        ((float *)r->dst)[j] = f;
      } else {
        ((int32_t *)r->dst)[j] = (int32_t)v;
      }
      continue;
    }
    v += (uint32_t)(r->bias ? r->bias[j] : r->bias_row);
    int32_t q = requant((int32_t)v, r->mult ? r->mult[j] : r->mult_row, r->zy, r->lo, r->hi);
    if (r->dq) { /* DequantizeLinear's then Add's float operations, one statement each */
      float f = (float)(q - r->dq_zp) * r->dq_scale;
      if (r->dq_bias) f += r->dq_bias[j];
      ((float *)r->dst)[j] = f;
    } else if (r->kind == KILN__QOUT_U8) ((uint8_t *)r->dst)[j] = (uint8_t)q;
    else ((int8_t *)r->dst)[j] = (int8_t)q;
  }
}

void kiln__qep_tile__generic(const kiln__qep_tile *t) {
  size_t esz = t->kind == KILN__QOUT_I32 || t->dq ? 4 : 1;
  kiln__qep_row r = {.n = t->n, .cs = t->cs, .zb = t->zb, .bias = t->bias, .mult = t->mult,
                     .zy = t->zy, .lo = t->lo, .hi = t->hi, .kind = t->kind, .dq = t->dq,
                     .dq_zp = t->dq_zp, .dq_scale = t->dq_scale, .dq_mult = t->dq_mult,
                     .dq_bias = t->dq_bias};
  for (size_t i = 0; i < t->rows; i++) {
    r.acc = t->acc + i * t->ldacc;
    r.za = t->za ? t->za[i] : 0;
    r.rowterm = t->rowterm[i];
    r.row_add = t->radd[i];
    r.mult_row = t->mult_row ? t->mult_row[i] : 0.0f;
    r.dq_row = t->mult_row != NULL;
    r.dst = (uint8_t *)t->dst + i * t->ldd * esz;
    kiln__qep__generic(&r);
  }
}

/* ---- the driver ------------------------------------------------------------------------------ */

static inline int32_t zp_at(const kiln__qzp *z, size_t i) {
  if (!z->n) return 0;
  size_t k = z->n == 1 ? 0 : i;
  return z->is_signed ? ((const int8_t *)z->p)[k] : ((const uint8_t *)z->p)[k];
}

typedef struct qjob {
  const kiln__qgemm_args *g;
  const qimpl *im;
  size_t tiles_n;
  size_t mc, nc; /* tile size: at most im->mc x NC, multiples of the microkernel's */
} qjob;

static void qtiles(void *arg, size_t begin, size_t end) {
  const qjob *jb = arg;
  const kiln__qgemm_args *g = jb->g;
  const qimpl *im = jb->im;
  const kiln__qpacked *A = g->a, *B = g->b;
  _Alignas(64) int32_t acc[MC_MAX * NC];
  int32_t zbv[NC], zar[MC_MAX], rtr[MC_MAX], raddr[MC_MAX];
  float multr[MC_MAX];
  size_t arpad = round_up(g->m, im->mr), brpad = round_up(g->n, im->nr);
  size_t out_esz = g->kind == KILN__QOUT_I32 || g->dq ? 4 : 1;
  bool req = g->kind != KILN__QOUT_I32;
  /* Per-column zero points with the packing offset (zbv, per tile); a uniform one (per tensor)
     makes zb * rowterm a constant of the row, folded into radd with a per-row bias. */
  bool zb_uniform = g->zb.n <= 1;
  int32_t zbu = zp_at(&g->zb, 0) + B->zp_off;
  /* The requantizing microkernel's case (kiln__qreq_rows); za is checked per tile. */
  const bool fuse =
      (im->ukq || im->ukqn) && req && !g->dq && g->per_row && zb_uniform && g->k <= KC;
  kiln__qep_tile et = {.ldacc = NC, .rowterm = rtr, .radd = raddr, .zy = g->zy,
                       .lo = g->kind == KILN__QOUT_U8 ? 0 : -128,
                       .hi = g->kind == KILN__QOUT_U8 ? 255 : 127, .kind = g->kind,
                       .dq = g->dq, .dq_zp = g->dq_zp, .dq_scale = g->dq_scale,
                       .ldd = g->ldc};
  bool any_za = false;
  size_t last_i0 = SIZE_MAX; /* the row constants below are those of this row block */
  for (size_t t = begin; t < end; t++) {
    size_t i0 = (t / jb->tiles_n) * jb->mc, j0 = (t % jb->tiles_n) * jb->nc;
    size_t mc = KILN__MIN(jb->mc, g->m - i0), nc = KILN__MIN(jb->nc, g->n - j0);
    size_t mpad = round_up(mc, im->mr), npad = round_up(nc, im->nr);
    /* A row block's constants serve all its column tiles (consecutive t): computed once per
       block, not per tile (a short-k pointwise conv has hundreds of tiles) */
    if (i0 != last_i0) any_za = false;
    for (size_t i = 0; i0 != last_i0 && i < mc; i++) {
      size_t gi = i0 + i;
      zar[i] = zp_at(&g->za, gi) + A->zp_off;
      any_za |= zar[i] != 0;
      rtr[i] = (int32_t)((uint32_t)A->sums[gi] - (uint32_t)g->k * (uint32_t)zar[i]);
      uint32_t add = zb_uniform ? 0u - (uint32_t)zbu * (uint32_t)rtr[i] : 0u;
      if (req && g->per_row && g->bias) add += (uint32_t)g->bias[gi];
      raddr[i] = (int32_t)add;
      multr[i] = g->per_row ? (g->mult ? g->mult[gi] : 1.0f) : 0.0f;
    }
    last_i0 = i0;
    if (!zb_uniform)
      for (size_t j = 0; j < nc; j++) zbv[j] = zp_at(&g->zb, j0 + j) + B->zp_off;
    const int32_t *cbias = req && !g->per_row && g->bias ? g->bias + j0 : NULL;
    const float *cmult = !g->per_row && g->mult ? g->mult + j0 : NULL;
    /* Columns [0, jq) of the tile are requantized by im->ukq or ukqn (full panels only); the rest
       (an edge or short last panel) through acc and the epilogue. */
    size_t jq = 0;
    if (fuse && !any_za) {
      jq = nc & ~(im->nr - 1);
      size_t kcp = round_up(g->k, im->kp);
      const uint8_t *ab = (const uint8_t *)A->data + i0 * kcp * im->esz;
      const uint8_t *bb = (const uint8_t *)B->data + j0 * kcp * im->esz;
      kiln__qreq_rows q = {.mult = multr, .zy = g->zy, .lo = et.lo, .hi = et.hi,
                           .to_signed = g->kind == KILN__QOUT_S8};
      uint8_t *d0 = (uint8_t *)g->c + i0 * g->ldc + j0;
      for (size_t jp = 0, np; jp < jq; jp += np * im->nr) {
        np = im->ukqn ? KILN__MIN((size_t)4, (jq - jp) / im->nr) : 1;
        for (size_t ip = 0; ip < mpad; ip += im->mr) {
          const uint8_t *ap = ab + ip * kcp * im->esz, *bp = bb + jp * kcp * im->esz;
          uint8_t *dp = d0 + ip * g->ldc + jp;
          size_t rows = KILN__MIN(im->mr, mc - ip);
          q.radd = raddr + ip;
          q.mult = multr + ip;
          if (im->ukqn)
            im->ukqn(kcp / im->kp, ap, bp, im->nr * kcp * im->esz, np, &q, rows, dp, g->ldc);
          else im->ukq(kcp / im->kp, ap, bp, &q, rows, dp, g->ldc);
        }
      }
      if (jq == nc) continue;
    }
    for (size_t p0 = 0; p0 < g->k; p0 += KC) {
      size_t kcp = round_up(KILN__MIN((size_t)KC, g->k - p0), im->kp);
      const uint8_t *ab = (const uint8_t *)A->data + (p0 * arpad + i0 * kcp) * im->esz;
      const uint8_t *bb = (const uint8_t *)B->data + (p0 * brpad + j0 * kcp) * im->esz;
      for (size_t jp = jq; jp < npad; jp += im->nr) {
        /* B's last panel, packed narrow when it has at most nr / 2 columns (pack_panels) */
        bool edge = im->uk_edge && g->n - (j0 + jp) <= im->nr / 2;
        if (edge && im->ukc && g->n - (j0 + jp) <= 4) {
          im->ukc(kcp / im->kp, ab, im->mr * kcp, mpad, bb + jp * kcp, 4 * im->nr / 2,
                  g->n - (j0 + jp), acc + jp, NC, p0 > 0);
          continue;
        }
        kiln__qgemm_ukernel uk = edge ? im->uk_edge : im->uk;
        for (size_t ip = 0; ip < mpad; ip += im->mr)
          uk(kcp / im->kp, ab + ip * kcp * im->esz, bb + jp * kcp * im->esz, acc + ip * NC + jp,
             NC, p0 > 0);
      }
    }
    et.acc = acc + jq;
    et.rows = mc;
    et.n = nc - jq;
    et.za = any_za ? zar : NULL;
    et.mult_row = g->per_row ? multr : NULL;
    et.cs = B->sums + j0 + jq;
    et.zb = zb_uniform ? NULL : zbv + jq;
    et.bias = cbias ? cbias + jq : NULL;
    et.mult = cmult ? cmult + jq : NULL;
    et.dq_bias = g->dq && g->dq_bias ? g->dq_bias + j0 + jq : NULL;
    et.dq_mult = g->dq && g->dq_mult ? g->dq_mult + j0 + jq : NULL;
    et.dst = (uint8_t *)g->c + (i0 * g->ldc + j0 + jq) * out_esz;
    im->ep(&et);
  }
}

/* k == 0: every product is 0 (an empty sum), then the epilogue. */
static void run_k0(const kiln__qgemm_args *g) {
  static const int32_t zeros[NC], nosums[NC];
  kiln__qep_row r = {.acc = zeros, .cs = nosums, .kind = g->kind, .zy = g->zy,
                     .lo = g->kind == KILN__QOUT_U8 ? 0 : -128,
                     .hi = g->kind == KILN__QOUT_U8 ? 255 : 127, .dq = g->dq,
                     .dq_zp = g->dq_zp, .dq_scale = g->dq_scale};
  size_t out_esz = g->kind == KILN__QOUT_I32 || g->dq ? 4 : 1;
  for (size_t i = 0; i < g->m; i++)
    for (size_t j0 = 0; j0 < g->n; j0 += NC) {
      r.n = KILN__MIN((size_t)NC, g->n - j0);
      r.bias = g->bias && !g->per_row ? g->bias + j0 : NULL;
      r.bias_row = g->bias && g->per_row ? g->bias[i] : 0;
      r.mult = g->mult && !g->per_row ? g->mult + j0 : NULL;
      r.mult_row = g->mult && g->per_row ? g->mult[i] : 1.0f;
      r.dq_row = g->per_row;
      r.dq_bias = g->dq && g->dq_bias ? g->dq_bias + j0 : NULL;
      r.dq_mult = g->dq && g->dq_mult ? g->dq_mult + j0 : NULL;
      r.dst = (uint8_t *)g->c + (i * g->ldc + j0) * out_esz;
      kiln__qep__generic(&r);
    }
}

void kiln__qgemm_run(struct kiln__pool *pool, const kiln__qgemm_args *g) {
  if (g->m == 0 || g->n == 0) return;
  if (g->k == 0) {
    run_k0(g);
    return;
  }
  const qimpl *im = &impls[g->a->isa];
  /* Tiles of even size: 208 columns as 112 + 96, not 128 + 80. With threads and few tiles, more
     row tiles until the count is a multiple of the threads: ResNet-18's 64 x 352 conv chunk was
     3 column tiles, so of 2 threads one waited a third of the node; now 2 x 3 tiles of 32 rows. */
  size_t T = pool ? (size_t)kiln__pool_threads(pool) : 1;
  size_t tm = (g->m + im->mc - 1) / im->mc, tn = (g->n + NC - 1) / NC;
  if (T > 1 && (tm * tn) % T && tm * tn < 4 * T) {
    size_t most = KILN__MIN((g->m + im->mr - 1) / im->mr, tm * T);
    for (size_t t2 = tm + 1; t2 <= most; t2++)
      if (t2 * tn % T == 0) {
        tm = t2;
        break;
      }
  }
  qjob jb = {.g = g, .im = im, .mc = round_up((g->m + tm - 1) / tm, im->mr),
             .nc = round_up((g->n + tn - 1) / tn, im->nr)};
  jb.tiles_n = (g->n + jb.nc - 1) / jb.nc;
  size_t tiles = (g->m + jb.mc - 1) / jb.mc * jb.tiles_n;
  /* Below ~64k multiply-adds the pool's hand-off costs more than the work. */
  if (tiles == 1 || (double)g->m * (double)g->n * (double)g->k < 65536.0) qtiles(&jb, 0, tiles);
  else kiln__parallel_for(pool, tiles, qtiles, &jb);
}

/* ---- conversions ----------------------------------------------------------------------------- */

void kiln__q_quantize(kiln__qisa isa, const float *x, size_t n, float scale, int32_t zp,
                      bool to_signed, void *y) {
#ifdef KILN__QGEMM_X86
  if (isa == KILN__QISA_AVX512VNNI && __builtin_cpu_supports("avx512bw")) {
    kiln__q_quantize__avx512(x, n, scale, zp, to_signed, y);
    return;
  }
  if (isa != KILN__QISA_GENERIC) {
    kiln__q_quantize__avx2(x, n, scale, zp, to_signed, y);
    return;
  }
#endif
  int32_t lo = to_signed ? -128 : 0, hi = to_signed ? 127 : 255;
  for (size_t i = 0; i < n; i++) {
    float r = rintf(x[i] / scale);
    if (r != r) r = 0.0f;
    double d = (double)r + zp;
    int32_t q = d < lo ? lo : d > hi ? hi : (int32_t)d;
    if (to_signed) ((int8_t *)y)[i] = (int8_t)q;
    else ((uint8_t *)y)[i] = (uint8_t)q;
  }
}

void kiln__q_dequantize(kiln__qisa isa, const void *x, bool from_signed, size_t n, int32_t zp,
                        float scale, float *y) {
#ifdef KILN__QGEMM_X86
  if (isa != KILN__QISA_GENERIC) {
    kiln__q_dequantize__avx2(x, from_signed, n, zp, scale, y);
    return;
  }
#endif
  for (size_t i = 0; i < n; i++) {
    int32_t v = from_signed ? ((const int8_t *)x)[i] : ((const uint8_t *)x)[i];
    y[i] = (float)(v - zp) * scale;
  }
}

void kiln__q_minmax(kiln__qisa isa, const float *x, size_t n, float *mn, float *mx) {
#ifdef KILN__QGEMM_X86
  if (isa != KILN__QISA_GENERIC) {
    kiln__q_minmax__avx2(x, n, mn, mx);
    return;
  }
#endif
  float a = 0.0f, b = 0.0f;
  for (size_t i = 0; i < n; i++) {
    if (x[i] < a) a = x[i];
    if (x[i] > b) b = x[i];
  }
  *mn = a;
  *mx = b;
}
