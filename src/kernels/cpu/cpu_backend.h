/* The optimized CPU backend ("cpu"): fast kernels for the hot ops, chosen per node at load.
 *
 * Each kernel family exports a table of kiln__cpu_kernel rows. For a node, the backend takes the
 * first row whose op name matches and whose supports() accepts the node (shapes, dtypes,
 * attributes); nodes no row accepts fall back to the reference backend. prepare() runs once at
 * load (pack weights, pick the microkernel for the machine's ISA) and its state is passed to every
 * execute(). Kernels follow the same contract as reference kernels (src/ir/op.h): outputs are
 * already allocated, scratch comes from the plan (sized by the row's scratch(), or by the reference
 * op's when the row has none), no allocation, no I/O. */
#ifndef KILN_KERNELS_CPU_BACKEND_H
#define KILN_KERNELS_CPU_BACKEND_H

#include "runtime/backend.h"

typedef struct kiln__cpu_kernel {
  const char *op;    /* op type in `domain` */
  bool (*supports)(const kiln__node *n, const kiln__graph *g);
  kiln_status (*prepare)(const kiln__node *n, const kiln__graph *g, void **state, kiln_error *err);
  void (*release)(void *state);
  kiln_status (*execute)(kiln__kctx *c, void *state);
  size_t (*scratch)(const kiln__kctx *c, void *state); /* NULL: the reference op's scratch() */
  const char *domain; /* the op's domain; NULL: the default ONNX domain. Matched with the name
                         before supports() is asked, so a row never sees another domain's op */
} kiln__cpu_kernel;

/* Helpers for supports()/prepare(): what the graph says about a node at load. */
const kiln__value *kiln__cpu_input(const kiln__node *n, const kiln__graph *g, int i); /* or NULL */
/* float32, or not known until planning (execute() must check it then). */
bool kiln__cpu_maybe_float(const kiln__value *v);
/* A float32 initializer's tensor (weights packed at load), or NULL. */
const kiln_tensor *kiln__cpu_const_f32(const kiln__value *v);
bool kiln__cpu_kiln_domain(const kiln__node *n); /* an ai.kiln fused op */
/* An INTS attribute of exactly `cnt` values in [lo, 2^24] into v, or `def` everywhere when the
   attribute is absent; false otherwise. */
bool kiln__cpu_ints(const kiln__node *n, const char *name, size_t cnt, int64_t lo, int64_t def,
                    int64_t *v);

/* 2-D convolution geometry, shared by the float (gemm_kernels.c) and integer (quant_kernels.c)
   conv kernels. */
typedef enum kiln__pad_mode {
  KILN__PAD_NOTSET, KILN__PAD_SAME_UPPER, KILN__PAD_SAME_LOWER, KILN__PAD_VALID
} kiln__pad_mode;

typedef struct kiln__conv2d {
  size_t m, cg, groups, mg, kh, kw, kk; /* kk = cg * kh * kw: the GEMM's k */
  int64_t sh, sw, dh, dw;
  int64_t pads[4];                      /* top, left, bottom, right (NOTSET) */
  kiln__pad_mode pad;
} kiln__conv2d;

/* What the load fixes, from the constant weight W [M, C/group, kh, kw] and the node's
   attributes; false for what the fast kernels do not run (an empty dim, a group that does not
   divide M, a kernel_shape that disagrees with W, bad strides/dilations/pads, unknown auto_pad). */
bool kiln__cpu_conv2d_parse(const kiln__node *n, const kiln_tensor *w, kiln__conv2d *cv);

/* One call's padding before (top, left) for input h x w and output oh x ow (from shape
   inference), and whether the conv is pointwise: 1x1, stride 1, no padding, the input is the
   GEMM's operand as it is. */
void kiln__cpu_conv2d_pads(const kiln__conv2d *cv, size_t h, size_t w, size_t oh, size_t ow,
                           int64_t *pt, int64_t *pl, bool *pointwise);

/* Kernel families, each terminated by a row with op NULL. */
extern const kiln__cpu_kernel kiln__cpu_gemm_kernels[];  /* MatMul, Gemm, Conv, ... */
extern const kiln__cpu_kernel kiln__cpu_vec_kernels[];   /* Softmax, LayerNorm, GELU, ... */
extern const kiln__cpu_kernel kiln__cpu_dwconv_kernels[]; /* depthwise Conv (conv_dw.c) */
extern const kiln__cpu_kernel kiln__cpu_pool_kernels[];   /* MaxPool, AveragePool, global pools */
extern const kiln__cpu_kernel kiln__cpu_fused_kernels[];  /* domain ai.kiln (fused_kernels.c) */
extern const kiln__cpu_kernel kiln__cpu_quant_kernels[];  /* QLinear*, *Integer, Q/DQ (qgemm.h) */
extern const kiln__cpu_kernel kiln__cpu_nbits_kernels[];  /* com.microsoft MatMulNBits */
extern const kiln__cpu_kernel kiln__cpu_copy_kernels[];   /* Concat (copy_kernels.c) */
extern const kiln__cpu_kernel kiln__cpu_convt_kernels[];  /* ConvTranspose (convt_kernels.c) */
extern const kiln__cpu_kernel kiln__cpu_winograd_kernels[]; /* FusedConv algorithm=winograd */
extern const kiln__cpu_kernel kiln__cpu_dwpw_kernels[];     /* DwPwConv (conv_dwpw.c) */
/* NCHW8c: BlockedConv, ToBlocked, FromBlocked (conv_blocked.c) */
extern const kiln__cpu_kernel kiln__cpu_blocked_kernels[];
extern const kiln__cpu_kernel kiln__cpu_cast_kernels[];     /* Cast of 16-bit floats (F16C) */
/* com.microsoft QLinearAdd, QLinearGlobalAveragePool (qadd_kernels.c) */
extern const kiln__cpu_kernel kiln__cpu_qadd_kernels[];

extern const kiln__backend kiln__backend_cpu;

/* What a kernel's prepare() built, from the backend's per-node state (tests inspect it). */
void *kiln__cpu_kernel_state(void *backend_state);

#endif
