/* blocked-layout (level 3): chains of convs (MobileNet's inverted residual blocks, SqueezeNet's
   fire modules) run in NCHW8c, with the layout's two reorders only where a chain begins and
   ends (docs/FUSED_OPS.md: ToBlocked, FromBlocked, BlockedConv, BlockedPool; kernels in
   src/kernels/cpu/conv_blocked.c).

   A Conv or FusedConv qualifies when its float input and output have static shapes with
   channels in multiples of 8, its weight is a constant, and it is
     pointwise: 1x1, stride 1, no padding, group 1;
     depthwise: 3x3, group = C = M, stride 1 or 2, each pad at most 1, dilation 1; or
     dense 3x3: stride 1, group 1, each pad at most 1, at most 64 input channels (Winograd);
   a residual Z (FusedConv's fourth input) must have the output's shape. MaxPool (dilation 1,
   explicit pads) and GlobalAveragePool (-> BlockedPool) and Concat along the channels (the same
   Concat along the block axis) of such tensors may join too. Members joined through the values
   they read (a conv's X and Z, a pool's X, a Concat's inputs) form regions. A region is converted
   when it has at least MIN_REGION convs and at most max(2, convs / 8) reorders: each member reads
   and writes blocked values, a ToBlocked is added once per value that enters the region, and a
   FromBlocked writes back each output that something outside the region (or the graph's output)
   still reads, under its own name. Other regions stay: a reorder costs about what a conv gains.

   Only where the cpu backend runs its AVX2 kernels (KILN_ISA and cpuid, as the kernels choose):
   that is where the layout was measured faster. With AVX-512 the NCHW kernels use 16-wide
   vectors and the blocked ones 8-wide (not measured); NEON and generic builds run the blocked
   tiles in portable C. So the optimized graph depends on the machine, as ONNX Runtime's NCHWc
   transformer does. */
#include <stdio.h>

#include "kernels/cpu/sgemm.h" /* kiln__isa_select: the layout pays with the AVX2 kernels */
#include "passes/pass.h"

enum { BLK = 8, MIN_REGION = 3 };

static bool conv_node(const kiln__node *n) {
  bool plain = !n->domain[0] && !strcmp(n->op_type, "Conv");
  bool fused = !strcmp(n->domain, "ai.kiln") && !strcmp(n->op_type, "FusedConv");
  return (plain || fused) && n->n_out == 1 && n->out[0] >= 0 && n->n_in >= 2 &&
         n->n_in <= (fused ? 4 : 3) && n->in[0] >= 0 && !kiln__attr_find(n, "algorithm");
}

static bool pads_at_most(const kiln__node *n, int64_t most) {
  const int64_t *p;
  size_t np = kiln__attr_ints(n, "pads", &p);
  if (np != 0 && np != 4) return false;
  for (size_t i = 0; i < np; i++)
    if (p[i] < 0 || p[i] > most) return false;
  const char *ap = kiln__attr_str(n, "auto_pad", "NOTSET");
  return !*ap || !strcmp(ap, "NOTSET");
}

/* What a region may hold. */
typedef enum { NOT_BLOCKED, B_CONV, B_POOL, B_CONCAT } member;

/* Whether input slot k of a member carries an activation in the layout (X and Z of a conv, a
   pool's X, every input of a Concat). */
static bool act_slot(member m, int k) {
  return m == B_CONCAT || k == 0 || (m == B_CONV && k == 3);
}

/* A static float [N, C, H, W] with C a multiple of 8. */
static bool blockable(const kiln__pass_ctx *ctx, int v, int64_t d[4]) {
  return v >= 0 && kiln__pass_static4(ctx, v, d) &&
         kiln__pass_dtype(ctx, v) == KILN_DTYPE_FLOAT && d[1] % BLK == 0;
}

/* MaxPool (dilation 1, explicit pads, no Indices) and GlobalAveragePool: BlockedPool. */
static bool pool_ok(const kiln__pass_ctx *ctx, const kiln__node *n) {
  int64_t x[4], y[4];
  if (n->domain[0] || n->n_in != 1 || n->n_out != 1 || !blockable(ctx, n->in[0], x) ||
      !blockable(ctx, n->out[0], y))
    return false;
  if (!strcmp(n->op_type, "GlobalAveragePool")) return true;
  return !strcmp(n->op_type, "MaxPool") && kiln__pass_ints_all(n, "dilations", 2, 1) &&
         pads_at_most(n, 1 << 20) && kiln__attr_int(n, "storage_order", 0) == 0;
}

/* Concat along the channels of such tensors: the same Concat along the blocks. */
static bool concat_ok(const kiln__pass_ctx *ctx, const kiln__node *n) {
  int64_t d[4], axis = kiln__attr_int(n, "axis", 0);
  if (n->domain[0] || strcmp(n->op_type, "Concat") != 0 || n->n_out != 1 || n->n_in < 1 ||
      (axis != 1 && axis != -3) || !blockable(ctx, n->out[0], d))
    return false;
  for (int k = 0; k < n->n_in; k++)
    if (!blockable(ctx, n->in[k], d)) return false;
  return true;
}

static bool conv_ok(const kiln__pass_ctx *ctx, const kiln__node *n) {
  if (!conv_node(n)) return false;
  const kiln_tensor *w = kiln__pass_const_f32(ctx, n->in[1]);
  int64_t x[4], y[4], z[4];
  if (!w || w->rank != 4 || !kiln__pass_static4(ctx, n->in[0], x) ||
      !kiln__pass_static4(ctx, n->out[0], y) ||
      kiln__pass_dtype(ctx, n->in[0]) != KILN_DTYPE_FLOAT || x[1] % BLK || y[1] % BLK ||
      w->dims[0] != y[1] || !kiln__pass_ints_all(n, "dilations", 2, 1))
    return false;
  if (n->n_in > 3 && n->in[3] >= 0 &&
      (!kiln__pass_static4(ctx, n->in[3], z) || memcmp(z, y, sizeof z) != 0 ||
       kiln__pass_dtype(ctx, n->in[3]) != KILN_DTYPE_FLOAT))
    return false;
  int64_t group = kiln__attr_int(n, "group", 1);
  if (group == 1 && w->dims[1] == x[1] && w->dims[2] == 1 && w->dims[3] == 1 &&
      kiln__pass_ints_all(n, "kernel_shape", 2, 1) && kiln__pass_ints_all(n, "strides", 2, 1) &&
      pads_at_most(n, 0))
    return true;
  const int64_t *st;
  if (kiln__attr_ints(n, "strides", &st) != 2) st = NULL;
  bool stride12 = !st || (st[0] == st[1] && (st[0] == 1 || st[0] == 2));
  bool k3 = w->dims[2] == 3 && w->dims[3] == 3 && kiln__pass_ints_all(n, "kernel_shape", 2, 3);
  if (group == x[1] && x[1] == y[1] && w->dims[1] == 1 && k3 && stride12 && pads_at_most(n, 1))
    return true; /* depthwise */
  /* dense 3x3 at stride 1 from at most 64 channels: Winograd F(2x2, 3x3) on the layout. Per
     node SqueezeNet's expansions (C 16-64) ran 0.88-1.07 of the NCHW Winograd's time in the
     model, ResNet-50's 512 -> 512 at 7x7 1.19-1.23 (16 tiles: its blocks re-read U for few). */
  return group == 1 && k3 && w->dims[1] == x[1] && x[1] <= 64 &&
         kiln__pass_ints_all(n, "strides", 2, 1) && pads_at_most(n, 1);
}

static member member_of(const kiln__pass_ctx *ctx, const kiln__node *n) {
  return conv_ok(ctx, n) ? B_CONV : pool_ok(ctx, n) ? B_POOL : concat_ok(ctx, n) ? B_CONCAT
                                                                                  : NOT_BLOCKED;
}

static int find(int *parent, int i) {
  while (parent[i] != i) i = parent[i] = parent[parent[i]];
  return i;
}

/* The conv writing v when it can write the blocked layout itself (BlockedConv with
   input_layout="NCHW": a stem of up to 8 input channels, group 1, kernel up to 7x7, explicit
   pads, no residual) and only the region reads v (`reads` of its uses); else -1. */
static int stem_of(const kiln__pass_ctx *ctx, int v, int reads) {
  const kiln__graph *g = ctx->g;
  int p = g->values[v].producer;
  if (p < 0 || p >= g->n_nodes || ctx->dead[p] || ctx->uses[v] != reads ||
      !kiln__pass_value_private(ctx, v))
    return -1;
  const kiln__node *n = &g->nodes[p];
  const kiln_tensor *w = conv_node(n) ? kiln__pass_const_f32(ctx, n->in[1]) : NULL;
  int64_t x[4], y[4];
  if (!w || w->rank != 4 || n->n_in > 3 || !kiln__pass_static4(ctx, n->in[0], x) ||
      !kiln__pass_static4(ctx, n->out[0], y) ||
      kiln__pass_dtype(ctx, n->in[0]) != KILN_DTYPE_FLOAT || y[1] % BLK ||
      kiln__attr_int(n, "group", 1) != 1 || w->dims[1] != x[1] || x[1] > 8 || w->dims[2] > 7 ||
      w->dims[3] > 7 || !kiln__pass_ints_all(n, "dilations", 2, 1) || !pads_at_most(n, 7))
    return -1;
  return p;
}

/* The blocked twin of value v for the converted nodes: the converting node's new output, the
   output of the stem that writes v converted (stem_of), or a ToBlocked added once per value
   that comes from outside. -1 when out of memory (*st set). */
static int blocked_input(kiln__pass_ctx *ctx, int v, int *blk_of, const int *reads,
                         kiln_status *st) {
  if (blk_of[v] >= 0) return blk_of[v];
  kiln__graph *g = ctx->g;
  char name[200];
  int p = stem_of(ctx, v, reads[v]);
  if (p >= 0) {
    snprintf(name, sizeof name, "%.150s/kiln_blocked", g->values[v].name);
    int b = kiln__pass_new_value(ctx, name);
    if (b < 0) goto oom;
    kiln__node *n = &g->nodes[p];
    kiln__pass_note(ctx, "%s (input NCHW)", n->name);
    if ((*st = kiln__pass_set_op(ctx, n, "ai.kiln", "BlockedConv")) != KILN_OK ||
        (*st = kiln__pass_add_attr_str(ctx, n, "input_layout", "NCHW")) != KILN_OK)
      return -1;
    n->out[0] = b;
    g->values[b].producer = p;
    return blk_of[v] = b;
  }
  snprintf(name, sizeof name, "%.150s/kiln_to_blocked", g->values[v].name);
  int b = kiln__pass_new_value(ctx, name);
  if (b < 0 || kiln__pass_add_node(ctx, name, "ai.kiln", "ToBlocked", &v, 1, &b, 1) < 0)
    goto oom;
  return blk_of[v] = b;
oom:
  *st = kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory placing the blocked layout");
  return -1;
}

/* The member producing node i's input slot k in the same region, else -1. */
static int region_producer(const kiln__pass_ctx *ctx, const int *elig, int *parent, int i,
                           int k) {
  const kiln__graph *g = ctx->g;
  int v = g->nodes[i].in[k], p = v >= 0 ? g->values[v].producer : -1;
  if (p < 0 || p >= ctx->g->n_nodes || ctx->dead[p] || !elig[p]) return -1;
  return find(parent, p) == find(parent, i) ? p : -1;
}

static kiln_status run(kiln__pass_ctx *ctx, bool *changed) {
  kiln__graph *g = ctx->g;
  kiln__isa isa;
  kiln_error isa_err = {0};
  if (kiln__isa_select(&isa, &isa_err) != KILN_OK || isa != KILN__ISA_AVX2) return KILN_OK;
  kiln_status st = kiln__pass_shapes(ctx);
  if (st != KILN_OK) return st;
  int n_nodes = g->n_nodes, n_values = g->n_values;
  /* per node: eligible, union-find parent, region size and reorders (at the root); per value:
     its blocked twin, the region that counted it as an entry, reads from inside its region */
  int *elig = kiln__malloc((size_t)n_nodes * 4 * sizeof *elig);
  int *blk_of = kiln__malloc((size_t)n_values * 3 * sizeof *blk_of);
  if (!elig || !blk_of) {
    kiln__free(elig);
    kiln__free(blk_of);
    return kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory placing the blocked layout");
  }
  int *parent = elig + n_nodes, *size = parent + n_nodes, *reorders = size + n_nodes;
  int *entry_of = blk_of + n_values, *inside = entry_of + n_values;
  for (int v = 0; v < n_values; v++) blk_of[v] = entry_of[v] = -1, inside[v] = 0;
  for (int i = 0; i < n_nodes; i++) {
    parent[i] = i, size[i] = reorders[i] = 0;
    elig[i] = ctx->dead[i] ? NOT_BLOCKED : (int)member_of(ctx, &g->nodes[i]);
  }
  /* Regions: each member joins the members producing its activations. */
  for (int i = 0; i < n_nodes; i++) {
    if (!elig[i]) continue;
    const kiln__node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++) {
      if (!act_slot((member)elig[i], k)) continue;
      int p = n->in[k] >= 0 ? g->values[n->in[k]].producer : -1;
      if (p < 0 || p >= n_nodes || ctx->dead[p] || !elig[p]) continue;
      int a = find(parent, i), b = find(parent, p);
      if (a != b) parent[a] = b;
    }
  }
  /* Per region: its convs, and the reorders it would need (a ToBlocked per value entering, a
     FromBlocked per output read outside). */
  for (int i = 0; i < n_nodes; i++) {
    if (!elig[i]) continue;
    int r = find(parent, i);
    size[r] += elig[i] == B_CONV;
    const kiln__node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++) {
      int v = n->in[k];
      if (v < 0 || !act_slot((member)elig[i], k)) continue;
      if (region_producer(ctx, elig, parent, i, k) >= 0) inside[v]++;
      else if (entry_of[v] != r) entry_of[v] = r, reorders[r]++;
    }
  }
  for (int i = 0; i < n_nodes; i++)
    if (elig[i] && ctx->uses[g->nodes[i].out[0]] > inside[g->nodes[i].out[0]])
      reorders[find(parent, i)]++;
  /* Converted: regions of MIN_REGION convs or more with few reorders for their size (ResNet-50's
     1x1 convs form regions broken by every 3x3 conv: 26 convs, 33 reorders, even with the
     NCHW kernels; MobileNet-v2's 51 convs need 2). */
  int converted = 0;
  for (int v = 0; v < n_values; v++) inside[v] = 0; /* now: reads by converted nodes */
  for (int i = 0; i < n_nodes; i++) {
    int r = elig[i] ? find(parent, i) : -1;
    if (r < 0 || size[r] < MIN_REGION || reorders[r] > KILN__MAX(2, size[r] / 8)) elig[i] = 0;
    if (!elig[i]) continue;
    char name[200];
    int y = g->nodes[i].out[0];
    snprintf(name, sizeof name, "%.150s/kiln_blocked", g->values[y].name);
    int b = kiln__pass_new_value(ctx, name);
    if (b < 0) goto oom;
    blk_of[y] = b;
    converted++;
    const kiln__node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] >= 0 && act_slot((member)elig[i], k)) inside[n->in[k]]++;
  }
  for (int i = 0; i < n_nodes && converted; i++) {
    if (!elig[i]) continue;
    member m = (member)elig[i];
    int n_in = g->nodes[i].n_in;
    int *in = kiln__malloc((size_t)n_in * sizeof *in);
    if (!in) goto oom;
    for (int k = 0; k < n_in; k++) {
      in[k] = g->nodes[i].in[k];
      if (in[k] >= 0 && act_slot(m, k) &&
          (in[k] = blocked_input(ctx, in[k], blk_of, inside, &st)) < 0) {
        kiln__free(in);
        goto done;
      }
    }
    kiln__node *n = &g->nodes[i]; /* blocked_input may have moved the nodes */
    kiln__pass_note(ctx, "%s", n->name);
    st = kiln__pass_set_inputs(ctx, n, in, n_in);
    kiln__free(in);
    if (st == KILN_OK && m == B_CONV) st = kiln__pass_set_op(ctx, n, "ai.kiln", "BlockedConv");
    if (st == KILN_OK && m == B_POOL) { /* the pool's name first: set_op replaces it */
      char op[32];
      snprintf(op, sizeof op, "%s", n->op_type);
      st = kiln__pass_set_op(ctx, n, "ai.kiln", "BlockedPool");
      if (st == KILN_OK) st = kiln__pass_add_attr_str(ctx, n, "op", op);
    }
    if (st == KILN_OK && m == B_CONCAT) { /* the channel axis is the block axis, 1 of 5 */
      kiln__attr *a = (kiln__attr *)kiln__attr_find(n, "axis");
      if (a) a->i = 1;
      else st = kiln__pass_add_attr_int(ctx, n, "axis", 1);
    }
    if (st != KILN_OK) goto done;
  }
  /* Outputs something else still reads: written back in NCHW under their own names. */
  for (int i = 0; i < n_nodes && converted; i++) {
    if (!elig[i]) continue;
    int y = g->nodes[i].out[0], b = blk_of[y];
    g->nodes[i].out[0] = b;
    g->values[b].producer = i;
    if (ctx->uses[y] == 0) continue;
    char name[200];
    snprintf(name, sizeof name, "%.150s/kiln_from_blocked", g->values[y].name);
    if (kiln__pass_add_node(ctx, name, "ai.kiln", "FromBlocked", &b, 1, &y, 1) < 0) goto oom;
  }
  *changed = converted > 0;
  st = KILN_OK;
  goto done;
oom:
  st = kiln__fail(ctx->err, KILN_NO_MEMORY, "out of memory placing the blocked layout");
done:
  kiln__free(elig);
  kiln__free(blk_of);
  return st;
}

const kiln__pass kiln__pass_blocked = {"blocked-layout", 3, run};
