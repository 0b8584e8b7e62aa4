/* The "cpu" backend: dispatch over the kernel families in cpu_backend.h. */
#include "kernels/cpu/cpu_backend.h"

const kiln__value *kiln__cpu_input(const kiln__node *n, const kiln__graph *g, int i) {
  return i < n->n_in && n->in[i] >= 0 ? &g->values[n->in[i]] : NULL;
}

bool kiln__cpu_maybe_float(const kiln__value *v) {
  return v && (v->dtype == KILN_DTYPE_FLOAT || v->dtype == KILN_DTYPE_UNDEFINED);
}

const kiln_tensor *kiln__cpu_const_f32(const kiln__value *v) {
  return v && v->is_initializer && v->init.dtype == KILN_DTYPE_FLOAT && v->init.data ? &v->init
                                                                                      : NULL;
}

bool kiln__cpu_kiln_domain(const kiln__node *n) {
  return n->domain && !strcmp(n->domain, "ai.kiln");
}

bool kiln__cpu_ints(const kiln__node *n, const char *name, size_t cnt, int64_t lo, int64_t def,
                    int64_t *v) {
  const int64_t *a;
  size_t na = kiln__attr_ints(n, name, &a);
  for (size_t i = 0; i < cnt; i++) v[i] = def;
  if (na == 0) return true;
  if (na != cnt) return false;
  for (size_t i = 0; i < cnt; i++) {
    if (a[i] < lo || a[i] > ((int64_t)1 << 24)) return false;
    v[i] = a[i];
  }
  return true;
}

/* The kernel families, searched in order, and their names for profiles
   (kiln_profile_event.kernel). */
static const struct {
  const char *name;
  const kiln__cpu_kernel *rows;
} families[] = {
    {"winograd", kiln__cpu_winograd_kernels}, {"gemm", kiln__cpu_gemm_kernels},
    {"vec", kiln__cpu_vec_kernels},           {"dwconv", kiln__cpu_dwconv_kernels},
    {"pool", kiln__cpu_pool_kernels},         {"fused", kiln__cpu_fused_kernels},
    {"quant", kiln__cpu_quant_kernels},       {"nbits", kiln__cpu_nbits_kernels},
    {"copy", kiln__cpu_copy_kernels},         {"qadd", kiln__cpu_qadd_kernels},
    {"convt", kiln__cpu_convt_kernels},       {"dwpw", kiln__cpu_dwpw_kernels},
    {"cast", kiln__cpu_cast_kernels},         {"blocked", kiln__cpu_blocked_kernels}};

static bool same_domain(const char *row, const char *node) {
  if (!node || !strcmp(node, "ai.onnx")) node = "";
  return !strcmp(row ? row : "", node);
}

static const kiln__cpu_kernel *find(const kiln__node *n, const kiln__graph *g) {
  for (size_t f = 0; f < KILN__ARRAY_LEN(families); f++)
    for (const kiln__cpu_kernel *k = families[f].rows; k->op; k++)
      if (!strcmp(k->op, n->op_type) && same_domain(k->domain, n->domain) &&
          (!k->supports || k->supports(n, g)))
        return k;
  return NULL;
}

/* Per-node state: the kernel chosen and what its prepare() built. */
typedef struct node_state {
  const kiln__cpu_kernel *k;
  void *state;
} node_state;

static bool cpu_supports(const kiln__node *n, const kiln__graph *g) { return find(n, g) != NULL; }

void *kiln__cpu_kernel_state(void *backend_state) {
  return backend_state ? ((node_state *)backend_state)->state : NULL;
}

static kiln_status cpu_prepare(const kiln__node *n, const kiln__graph *g, void **state,
                               kiln_error *err) {
  node_state *ns = kiln__calloc(1, sizeof *ns);
  if (!ns) return kiln__fail(err, KILN_NO_MEMORY, "out of memory preparing a kernel");
  ns->k = find(n, g);
  kiln_status st = ns->k->prepare ? ns->k->prepare(n, g, &ns->state, err) : KILN_OK;
  if (st != KILN_OK) {
    kiln__free(ns);
    return st;
  }
  *state = ns;
  return KILN_OK;
}

static void cpu_release(void *state) {
  node_state *ns = state;
  if (ns && ns->k->release && ns->state) ns->k->release(ns->state);
  kiln__free(ns);
}

static kiln_status cpu_execute(kiln__kctx *c, void *state) {
  node_state *ns = state;
  return ns->k->execute(c, ns->state);
}

static const char *cpu_kernel_name(const void *state) {
  const node_state *ns = state;
  for (size_t f = 0; ns && f < KILN__ARRAY_LEN(families); f++)
    for (const kiln__cpu_kernel *k = families[f].rows; k->op; k++)
      if (k == ns->k) return families[f].name;
  return "cpu";
}

static size_t cpu_scratch(const kiln__kctx *c, void *state) {
  node_state *ns = state;
  if (ns->k->scratch) return ns->k->scratch(c, ns->state);
  return c->node->op->scratch ? c->node->op->scratch(c) : 0;
}

const kiln__backend kiln__backend_cpu = {
    .name = "cpu",
    .supports = cpu_supports,
    .prepare = cpu_prepare,
    .release = cpu_release,
    .execute = cpu_execute,
    .scratch = cpu_scratch,
    .kernel_name = cpu_kernel_name,
};

bool kiln__cpu_conv2d_parse(const kiln__node *n, const kiln_tensor *w, kiln__conv2d *cv) {
  if (!w || w->rank != 4) return false;
  for (int i = 0; i < 4; i++)
    if (w->dims[i] < 1) return false;
  int64_t groups = kiln__attr_int(n, "group", 1);
  if (groups < 1 || w->dims[0] % groups != 0) return false;
  cv->m = (size_t)w->dims[0];
  cv->cg = (size_t)w->dims[1];
  cv->groups = (size_t)groups;
  cv->mg = cv->m / cv->groups;
  cv->kh = (size_t)w->dims[2];
  cv->kw = (size_t)w->dims[3];
  cv->kk = cv->cg * cv->kh * cv->kw;
  const int64_t *ks;
  size_t nks = kiln__attr_ints(n, "kernel_shape", &ks);
  if (nks && (nks != 2 || ks[0] != w->dims[2] || ks[1] != w->dims[3])) return false;
  int64_t st[2], dl[2];
  if (!kiln__cpu_ints(n, "strides", 2, 1, 1, st) || !kiln__cpu_ints(n, "dilations", 2, 1, 1, dl) ||
      !kiln__cpu_ints(n, "pads", 4, 0, 0, cv->pads))
    return false;
  cv->sh = st[0], cv->sw = st[1], cv->dh = dl[0], cv->dw = dl[1];
  const char *ap = kiln__attr_str(n, "auto_pad", "NOTSET");
  if (!strcmp(ap, "NOTSET") || !*ap) cv->pad = KILN__PAD_NOTSET;
  else if (!strcmp(ap, "SAME_UPPER")) cv->pad = KILN__PAD_SAME_UPPER;
  else if (!strcmp(ap, "SAME_LOWER")) cv->pad = KILN__PAD_SAME_LOWER;
  else if (!strcmp(ap, "VALID")) cv->pad = KILN__PAD_VALID;
  else return false;
  return true;
}

static int64_t same_pad(kiln__pad_mode pm, int64_t in, int64_t out, int64_t s, int64_t k,
                        int64_t d) {
  int64_t total = (out - 1) * s + (k - 1) * d + 1 - in;
  if (total < 0) total = 0;
  return pm == KILN__PAD_SAME_UPPER ? total / 2 : total - total / 2;
}

void kiln__cpu_conv2d_pads(const kiln__conv2d *cv, size_t h, size_t w, size_t oh, size_t ow,
                           int64_t *pt, int64_t *pl, bool *pointwise) {
  if (cv->pad == KILN__PAD_NOTSET) {
    *pt = cv->pads[0];
    *pl = cv->pads[1];
  } else if (cv->pad == KILN__PAD_VALID) {
    *pt = *pl = 0;
  } else {
    *pt = same_pad(cv->pad, (int64_t)h, (int64_t)oh, cv->sh, (int64_t)cv->kh, cv->dh);
    *pl = same_pad(cv->pad, (int64_t)w, (int64_t)ow, cv->sw, (int64_t)cv->kw, cv->dw);
  }
  int64_t pb = cv->pad == KILN__PAD_NOTSET ? cv->pads[2] : 0;
  int64_t pr = cv->pad == KILN__PAD_NOTSET ? cv->pads[3] : 0;
  *pointwise = cv->kh == 1 && cv->kw == 1 && cv->sh == 1 && cv->sw == 1 && *pt == 0 &&
               *pl == 0 && pb == 0 && pr == 0 && oh == h && ow == w;
}
