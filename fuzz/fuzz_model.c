/* libFuzzer target for the ONNX importer: the input is parsed both as a ModelProto and as a
   TensorProto. Anything that parses is then checked for the invariants the rest of Kiln relies
   on (value indices in range, ranks bounded, subgraphs linked to their parent), so a finding is a
   crash, a sanitizer report, a leak, or a graph the executor could not trust. */
#include "onnx/import.h"

#include <stdlib.h>

static void check_graph(const kiln__graph *g, const kiln__graph *parent) {
  if (g->parent != parent || g->n_values < 0 || g->n_nodes < 0) abort();
  for (int i = 0; i < g->n_inputs; i++)
    if (g->inputs[i] < 0 || g->inputs[i] >= g->n_values || !g->values[g->inputs[i]].is_input)
      abort();
  for (int i = 0; i < g->n_outputs; i++)
    if (g->outputs[i] < 0 || g->outputs[i] >= g->n_values) abort();
  for (int v = 0; v < g->n_values; v++) {
    const kiln__value *val = &g->values[v];
    if (!val->name || val->rank < -1 || val->rank > KILN_MAX_RANK) abort();
    if (val->is_outer && !parent) abort();
    if (val->is_initializer && kiln_tensor_count(&val->init) && !val->init.data) abort();
    if (val->producer >= g->n_nodes) abort();
  }
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    if (!n->name || !n->op_type || !n->domain || n->n_in < 0 || n->n_out < 0) abort();
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] < -1 || n->in[k] >= g->n_values) abort();
    for (int k = 0; k < n->n_out; k++) {
      int v = n->out[k];
      if (v < -1 || v >= g->n_values) abort();
      if (v >= 0 && g->values[v].producer != i) abort(); /* sorted, producers consistent */
    }
    for (int a = 0; a < n->n_attrs; a++) {
      const kiln__attr *at = &n->attrs[a];
      if (!at->name) abort();
      if (at->type == KILN__ATTR_GRAPH) {
        if (!at->g) abort();
        check_graph(at->g, g);
      }
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kiln__graph *g = NULL;
  kiln_error err;
  if (kiln__onnx_import(data, size, NULL, &g, &err) == KILN_OK) {
    check_graph(g, NULL);
    kiln__graph_free(g);
  } else if (g) {
    abort(); /* a failed import must not hand back a graph */
  }
  kiln_tensor t;
  if (kiln__onnx_tensor(data, size, &t, &err) == KILN_OK) {
    if (t.rank < 0 || t.rank > KILN_MAX_RANK || !t.data) abort();
    kiln_tensor_release(&t);
  } else if (t.data) {
    abort();
  }
  return 0;
}
