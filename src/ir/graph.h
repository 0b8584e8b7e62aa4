/* The graph IR: values, nodes with attributes, graphs (with subgraphs for If/Loop/Scan).
 *
 * A graph is built once by the ONNX importer and never changes after kiln__graph_finalize(): the
 * executor and every session read it concurrently. Values are referred to by index. */
#ifndef KILN_IR_GRAPH_H
#define KILN_IR_GRAPH_H

#include "core/common.h"

struct kiln__op;
struct kiln__graph;

typedef enum kiln__attr_type {
  KILN__ATTR_UNDEFINED = 0,
  KILN__ATTR_FLOAT = 1,
  KILN__ATTR_INT = 2,
  KILN__ATTR_STRING = 3,
  KILN__ATTR_TENSOR = 4,
  KILN__ATTR_GRAPH = 5,
  KILN__ATTR_FLOATS = 6,
  KILN__ATTR_INTS = 7,
  KILN__ATTR_STRINGS = 8,
  KILN__ATTR_TENSORS = 9,
  KILN__ATTR_GRAPHS = 10,
  KILN__ATTR_SPARSE_TENSOR = 11,
  KILN__ATTR_TYPE_PROTO = 13,
} kiln__attr_type;

typedef struct kiln__attr {
  char *name;
  kiln__attr_type type;
  int64_t i;
  float f;
  char *s;          /* STRING: NUL-terminated copy (s_len excludes the NUL) */
  size_t s_len;
  size_t n;         /* element count of ints / floats / strings / tensors */
  int64_t *ints;
  float *floats;
  char **strings;
  kiln_tensor *t;   /* TENSOR (one) or TENSORS (n); data owned by the attribute */
  struct kiln__graph *g; /* GRAPH */
} kiln__attr;

typedef enum kiln__value_kind {
  KILN__VALUE_TENSOR = 0,
  KILN__VALUE_SEQUENCE,
  KILN__VALUE_OPTIONAL,
  KILN__VALUE_OTHER,
} kiln__value_kind;

typedef struct kiln__value {
  char *name;
  kiln__value_kind kind;
  kiln_dtype dtype;       /* UNDEFINED until known */
  int rank;               /* -1 unknown */
  int64_t dims[KILN_MAX_RANK];   /* -1 where symbolic/unknown */
  char *dim_params[KILN_MAX_RANK];
  int producer;           /* node index, -1 for inputs/initializers/outer-scope values */
  bool is_input;          /* a graph input the caller feeds */
  bool is_output;
  bool is_initializer;    /* holds `init` */
  bool is_outer;          /* captured from an enclosing graph (subgraphs only) */
  int outer_index;        /* is_outer: the value's index in the parent graph (set at finalize) */
  kiln_tensor init;       /* initializer data (owned by the graph) */
} kiln__value;

typedef struct kiln__node {
  char *name;
  char *op_type;
  char *domain;           /* "" for the default ONNX domain */
  int64_t opset;          /* version of `domain` imported by the model */
  int n_in, n_out;
  int *in;                /* value indices; -1 for an omitted optional input */
  int *out;               /* value indices; -1 for an omitted optional output */
  int n_attrs;
  kiln__attr *attrs;
  const struct kiln__op *op; /* resolved at load */
  int n_captures;         /* values of this graph that the node's subgraphs read by name: */
  int *captures;          /* they must exist before the node runs and live until it ends */
} kiln__node;

typedef struct kiln__graph {
  char *name;
  int n_values, cap_values;
  kiln__value *values;
  int n_nodes, cap_nodes;
  kiln__node *nodes;      /* topologically sorted after finalize */
  int n_inputs, n_outputs;
  int *inputs;            /* values the caller feeds (graph inputs minus initializers) */
  int *outputs;
  const struct kiln__graph *parent; /* enclosing graph of a subgraph */
  int64_t ir_version;
  int64_t opset;          /* default-domain opset */
  int optimized_level;    /* optimization passes up to this level already ran (a file written by
                             kiln optimize says so in metadata_props "kiln.optimized_level") */
} kiln__graph;

kiln__graph *kiln__graph_new(void);
void kiln__graph_free(kiln__graph *g);
/* Finds a value by name, or adds it. Returns its index, or -1 when out of memory. */
int kiln__graph_value(kiln__graph *g, const char *name);
int kiln__graph_find(const kiln__graph *g, const char *name);
/* Appends an empty node; returns it, or NULL when out of memory. */
kiln__node *kiln__graph_add_node(kiln__graph *g);
/* Links subgraph captures to this graph's values, sorts nodes topologically (a node comes after
   the producers of its inputs and of what its subgraphs capture), sets producers, and checks for
   cycles, dangling inputs and values defined twice. Subgraphs must be finalized first. */
kiln_status kiln__graph_finalize(kiln__graph *g, kiln_error *err);

void kiln__attr_clear(kiln__attr *a);

/* Attribute access; the defaults apply when the attribute is absent. */
const kiln__attr *kiln__attr_find(const kiln__node *n, const char *name);
int64_t kiln__attr_int(const kiln__node *n, const char *name, int64_t def);
float kiln__attr_float(const kiln__node *n, const char *name, float def);
const char *kiln__attr_str(const kiln__node *n, const char *name, const char *def);
/* INTS attribute: returns the count (0 if absent) and points *v at the data. */
size_t kiln__attr_ints(const kiln__node *n, const char *name, const int64_t **v);
size_t kiln__attr_floats(const kiln__node *n, const char *name, const float **v);

#endif
