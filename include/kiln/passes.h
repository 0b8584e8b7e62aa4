/* Kiln: what the graph optimizer does to a model, for inspection (`kiln info --passes`).
 *
 * A report is made by importing the model and running the optimizer at a level, exactly as
 * kiln_model_load does, recording each pass that changed the graph: the round of the fixed-point
 * loop it ran in, node counts before and after, how many rewrites it made and where (node
 * names). A report is immutable; its strings belong to it.
 */
#ifndef KILN_PASSES_H
#define KILN_PASSES_H

#include "kiln/kiln.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kiln_pass_report kiln_pass_report;

/* One pass's effect in one round. */
typedef struct kiln_pass_change {
  const char *pass;
  int level;              /* the optimization level the pass belongs to */
  int round;              /* 1-based */
  size_t nodes_before, nodes_after;
  size_t matches;         /* rewrites made */
  const char *where;      /* the matched nodes, comma-separated (may end in "...") */
} kiln_pass_change;

/* Imports `path` and optimizes it at `opt_level` (-1 = the highest), recording every change. */
kiln_status kiln_pass_report_load(const char *path, int opt_level, kiln_pass_report **out,
                                  kiln_error *err);
void kiln_pass_report_free(kiln_pass_report *r); /* NULL is a no-op */

/* The level used and the node counts of the graph before and after all passes. */
void kiln_pass_report_summary(const kiln_pass_report *r, int *level, size_t *nodes_before,
                              size_t *nodes_after);
size_t kiln_pass_report_count(const kiln_pass_report *r);
kiln_status kiln_pass_report_get(const kiln_pass_report *r, size_t i, kiln_pass_change *c);

/* Imports `path`, optimizes it at `opt_level` (-1 = the highest) and writes the result as ONNX to
   `out_path`: Kiln's fused ops in domain ai.kiln (opset_import ai.kiln 1), initializers as
   raw_data, inputs and outputs as declared, producer_name "kiln-optimize". Kiln loads the file
   like any model. Models with subgraphs (If/Loop/Scan) are UNSUPPORTED for now. */
kiln_status kiln_optimize_file(const char *path, const char *out_path, int opt_level,
                               kiln_error *err);

/* The registered passes in the order they run: name and level; NULL past the end. */
const char *kiln_pass_name(size_t i, int *level);

#ifdef __cplusplus
}
#endif
#endif
