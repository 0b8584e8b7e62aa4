/* Graph optimization passes, run at load after import and before ops are resolved. */
#ifndef KILN_PASSES_PASSES_H
#define KILN_PASSES_PASSES_H

#include "ir/graph.h"

/* Optimization levels, as ONNX Runtime's: 0 none, 1 basic (semantics-preserving rewrites),
   2 extended (fusions into Kiln's own ops, domain ai.kiln), 3 layout. */
#define KILN__OPT_MAX 3

/* Rewrites `g` in place at `level` (clamped to 0..KILN__OPT_MAX) and re-finalizes it. */
kiln_status kiln__optimize(kiln__graph *g, int level, kiln_error *err);

#endif
