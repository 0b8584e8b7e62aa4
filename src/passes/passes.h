/* Graph optimization passes, run at load after import and before ops are resolved. */
#ifndef KILN_PASSES_PASSES_H
#define KILN_PASSES_PASSES_H

#include "ir/graph.h"

/* Optimization levels, as ONNX Runtime's: 0 none, 1 basic (semantics-preserving rewrites),
   2 extended (fusions into Kiln's own ops, domain ai.kiln), 3 layout. */
#define KILN__OPT_MAX 3

/* What one pass changed in one round of the manager. */
typedef struct kiln__pass_rec {
  const char *pass;       /* static name */
  int level;
  int round;              /* 1-based round of the fixed-point loop */
  size_t nodes_before, nodes_after;
  size_t matches;         /* rewrites made */
  char *where;            /* "node, node+node, ..." (truncated with "...") */
  size_t where_len, where_cap;
} kiln__pass_rec;

typedef struct kiln__pass_log {
  int level;
  size_t nodes_in, nodes_out;
  size_t n, cap;
  kiln__pass_rec *recs;
} kiln__pass_log;

void kiln__pass_log_clear(kiln__pass_log *log);

/* Rewrites `g` in place at `level` (clamped to 0..KILN__OPT_MAX) and re-finalizes it. */
kiln_status kiln__optimize(kiln__graph *g, int level, kiln_error *err);
/* The same, recording what each pass changed into `log` (may be NULL). */
kiln_status kiln__optimize_ex(kiln__graph *g, int level, kiln__pass_log *log, kiln_error *err);

/* The registered passes, in the order they run (for listings): NULL name past the end. */
const char *kiln__pass_name_at(size_t i, int *level);

#endif
