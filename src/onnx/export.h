/* Writes a graph back to ONNX (the inverse of import.h for what the importer keeps). */
#ifndef KILN_ONNX_EXPORT_H
#define KILN_ONNX_EXPORT_H

#include "ir/graph.h"

/* Serializes the top-level graph `g` to the file `path`: nodes in order with their domains and
   attributes, initializers as raw_data (little-endian hosts only), inputs and outputs with their
   dtypes and dims (symbolic dims by name), an opset_import for "" (g->opset) and, when any node
   uses it, ai.kiln version 1 (and any other domain a node uses, at the node's opset, e.g.
   com.microsoft 1). producer_name is `producer`. Graphs with subgraph attributes or
   string tensors are UNSUPPORTED. */
kiln_status kiln__onnx_export(const kiln__graph *g, const char *producer, const char *path,
                              kiln_error *err);

#endif
