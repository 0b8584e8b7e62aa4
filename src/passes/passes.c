/* The pass manager: runs the passes of the chosen level, in order, round after round until a
   round changes nothing (a fold can expose a dead node, a dead node a common subexpression).
   After each pass that changed the graph, dead nodes are dropped and the graph re-finalized, so
   every pass starts from a sorted, valid graph. */
#include "passes/pass.h"


/* Order matters within a round: identities go first so later patterns see through them, folding
   before the patterns that need constant operands, fuse-qdq before fuse-linear (which would take
   the Relu between a Conv and its QuantizeLinear), blocked-layout after fuse-linear (it takes
   finished FusedConvs and leaves what it does not convert to the next two), winograd after
   fuse-linear (it marks the fused convs; a Conv it makes fused still takes its epilogue next
   round), fuse-dwpw after both (it takes finished FusedConv pairs), fuse-qdq-out after fuse-qdq
   (it takes the QLinearMatMuls
   that one makes) and fuse-rowq (int8-dynamic per row), dead-code elimination last. */
static const kiln__pass *const passes[] = {
    &kiln__pass_identity,       &kiln__pass_const_fold,   &kiln__pass_cse,
    &kiln__pass_conv_bn,        &kiln__pass_affine_fold,  &kiln__pass_fuse_layernorm,
    &kiln__pass_fuse_gelu,      &kiln__pass_fuse_rmsnorm, &kiln__pass_fuse_attention,
    &kiln__pass_fuse_qdq,       &kiln__pass_fuse_qdq_out, &kiln__pass_fuse_rowq,
    &kiln__pass_fuse_chain,     &kiln__pass_fuse_linear,  &kiln__pass_blocked,
    &kiln__pass_winograd,       &kiln__pass_fuse_dwpw,    &kiln__pass_dce,
};

enum { MAX_ROUNDS = 8 };

const char *kiln__pass_name_at(size_t i, int *level) {
  if (i >= KILN__ARRAY_LEN(passes)) return NULL;
  if (level) *level = passes[i]->level;
  return passes[i]->name;
}

void kiln__pass_log_clear(kiln__pass_log *log) {
  if (!log) return;
  for (size_t i = 0; i < log->n; i++) kiln__free(log->recs[i].where);
  kiln__free(log->recs);
  memset(log, 0, sizeof *log);
}

static int log_open(kiln__pass_log *log, const kiln__pass *p, int round, size_t nodes) {
  if (!log) return -1;
  if (log->n == log->cap) {
    size_t cap = log->cap ? log->cap * 2 : 16;
    kiln__pass_rec *r = kiln__realloc(log->recs, cap * sizeof *r);
    if (!r) return -1; /* the log is diagnostics: losing it must not fail the load */
    log->recs = r;
    log->cap = cap;
  }
  kiln__pass_rec *r = &log->recs[log->n];
  memset(r, 0, sizeof *r);
  r->pass = p->name;
  r->level = p->level;
  r->round = round;
  r->nodes_before = r->nodes_after = nodes;
  return (int)log->n++;
}

/* Use counts and subgraph captures, from scratch for each pass. */
static kiln_status ctx_init(kiln__pass_ctx *ctx, kiln__graph *g, kiln_error *err) {
  memset(ctx, 0, sizeof *ctx);
  ctx->g = g;
  ctx->err = err;
  ctx->log_entry = -1;
  ctx->uses = kiln__calloc((size_t)g->n_values + 1, sizeof *ctx->uses);
  ctx->captured = kiln__calloc((size_t)g->n_values + 1, sizeof *ctx->captured);
  ctx->dead = kiln__calloc((size_t)g->n_nodes + 1, sizeof *ctx->dead);
  if (!ctx->uses || !ctx->captured || !ctx->dead)
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory optimizing the graph");
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] >= 0) ctx->uses[n->in[k]]++;
    for (int k = 0; k < n->n_captures; k++) {
      ctx->uses[n->captures[k]]++;
      ctx->captured[n->captures[k]] = true;
    }
  }
  for (int i = 0; i < g->n_outputs; i++) ctx->uses[g->outputs[i]]++;
  return KILN_OK;
}

static void ctx_free(kiln__pass_ctx *ctx) {
  kiln__free(ctx->uses);
  kiln__free(ctx->captured);
  kiln__free(ctx->dead);
  kiln__free(ctx->shape[0]);
  kiln__free(ctx->shape[1]);
}

static void compact(kiln__pass_ctx *ctx) {
  kiln__graph *g = ctx->g;
  int w = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    if (ctx->dead[i]) {
      kiln__pass_node_clear(&g->nodes[i]);
      continue;
    }
    if (w != i) g->nodes[w] = g->nodes[i];
    w++;
  }
  g->n_nodes = w;
}

static kiln_status run_pass(kiln__graph *g, const kiln__pass *p, int round, kiln__pass_log *log,
                            bool *changed, kiln_error *err) {
  kiln__pass_ctx ctx;
  kiln_status st = ctx_init(&ctx, g, err);
  size_t before = (size_t)g->n_nodes;
  ctx.log = log;
  ctx.log_entry = st == KILN_OK ? log_open(log, p, round, before) : -1;
  bool ch = false;
  if (st == KILN_OK) st = p->run(&ctx, &ch);
  if (st == KILN_OK && (ch || ctx.n_dead)) {
    compact(&ctx);
    st = kiln__graph_finalize(g, err);
    if (st != KILN_OK) kiln__err_prefix(err, "after pass %s", p->name);
    ch = true;
  }
  if (ctx.log_entry >= 0) {
    kiln__pass_rec *r = &log->recs[ctx.log_entry];
    r->nodes_after = (size_t)g->n_nodes;
    if (!ch) { /* keep the log to what changed */
      kiln__free(r->where);
      log->n--;
    }
  }
  ctx_free(&ctx);
  *changed = ch;
  return st;
}

kiln_status kiln__optimize_ex(kiln__graph *g, int level, kiln__pass_log *log, kiln_error *err) {
  if (level < 0) level = 0;
  if (level > KILN__OPT_MAX) level = KILN__OPT_MAX;
  /* A file kiln optimize wrote has had these passes already: loading it does not redo them. */
  if (level <= g->optimized_level) level = 0;
  if (log) {
    log->level = level;
    log->nodes_in = log->nodes_out = (size_t)g->n_nodes;
  }
  kiln_status st = KILN_OK;
  for (int round = 1; level > 0 && round <= MAX_ROUNDS && st == KILN_OK; round++) {
    bool any = false;
    for (size_t i = 0; i < KILN__ARRAY_LEN(passes) && st == KILN_OK; i++) {
      if (passes[i]->level > level) continue;
      bool ch = false;
      st = run_pass(g, passes[i], round, log, &ch, err);
      any |= ch;
    }
    if (!any) break;
  }
  if (log) log->nodes_out = (size_t)g->n_nodes;
  if (st == KILN_OK && level > g->optimized_level) g->optimized_level = level;
  return st;
}

kiln_status kiln__optimize(kiln__graph *g, int level, kiln_error *err) {
  return kiln__optimize_ex(g, level, NULL, err);
}
