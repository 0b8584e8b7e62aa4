/* ONNX writer for `kiln optimize`. The protobuf-c message structs are filled with pointers into
   the graph (names, tensor data) and into blocks from one list, all freed at the end. */
#include <stdio.h>

#include "onnx/export.h"
#include "onnx/kiln_onnx.pb-c.h"

typedef struct block {
  struct block *next;
  max_align_t data[];
} block;

typedef struct writer {
  block *blocks;
  bool oom;
} writer;

static void *wr_alloc(writer *w, size_t n, size_t size) {
  block *b = kiln__calloc(1, sizeof *b + (n ? n : 1) * size);
  if (!b) {
    w->oom = true;
    return NULL;
  }
  b->next = w->blocks;
  w->blocks = b;
  return b->data;
}

static KilnOnnx__ValueInfoProto *value_info(writer *w, const kiln__value *v) {
  KilnOnnx__ValueInfoProto *vi = wr_alloc(w, 1, sizeof *vi);
  KilnOnnx__TypeProto *tp = wr_alloc(w, 1, sizeof *tp);
  KilnOnnx__TypeProto__Tensor *tt = wr_alloc(w, 1, sizeof *tt);
  if (!vi || !tp || !tt) return NULL;
  kiln_onnx__value_info_proto__init(vi);
  kiln_onnx__type_proto__init(tp);
  kiln_onnx__type_proto__tensor__init(tt);
  vi->name = v->name;
  vi->type = tp;
  tp->value_case = KILN_ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
  tp->tensor_type = tt;
  tt->has_elem_type = true;
  tt->elem_type = (int32_t)v->dtype;
  if (v->rank < 0) return vi;
  KilnOnnx__TensorShapeProto *sp = wr_alloc(w, 1, sizeof *sp);
  KilnOnnx__TensorShapeProto__Dimension **dp = wr_alloc(w, (size_t)v->rank, sizeof *dp);
  if (!sp || !dp) return NULL;
  kiln_onnx__tensor_shape_proto__init(sp);
  tt->shape = sp;
  sp->n_dim = (size_t)v->rank;
  sp->dim = dp;
  for (int d = 0; d < v->rank; d++) {
    KilnOnnx__TensorShapeProto__Dimension *dim = wr_alloc(w, 1, sizeof *dim);
    if (!dim) return NULL;
    kiln_onnx__tensor_shape_proto__dimension__init(dim);
    if (v->dims[d] >= 0) {
      dim->value_case = KILN_ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
      dim->dim_value = v->dims[d];
    } else if (v->dim_params[d]) {
      dim->value_case = KILN_ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
      dim->dim_param = v->dim_params[d];
    }
    dp[d] = dim;
  }
  return vi;
}

static KilnOnnx__TensorProto *tensor(writer *w, const char *name, const kiln_tensor *t) {
  KilnOnnx__TensorProto *tp = wr_alloc(w, 1, sizeof *tp);
  int64_t *dims = wr_alloc(w, (size_t)t->rank, sizeof *dims);
  if (!tp || !dims) return NULL;
  kiln_onnx__tensor_proto__init(tp);
  tp->name = (char *)name;
  tp->has_data_type = true;
  tp->data_type = (int32_t)t->dtype;
  for (int d = 0; d < t->rank; d++) dims[d] = t->dims[d];
  tp->n_dims = (size_t)t->rank;
  tp->dims = dims;
  tp->has_raw_data = true;
  tp->raw_data.len = kiln_tensor_nbytes(t);
  tp->raw_data.data = t->data;
  return tp;
}

static KilnOnnx__AttributeProto *attribute(writer *w, const kiln__attr *a) {
  KilnOnnx__AttributeProto *ap = wr_alloc(w, 1, sizeof *ap);
  if (!ap) return NULL;
  kiln_onnx__attribute_proto__init(ap);
  ap->name = a->name;
  ap->has_type = true;
  ap->type = (KilnOnnx__AttributeProto__AttributeType)a->type;
  switch (a->type) {
  case KILN__ATTR_FLOAT: ap->has_f = true; ap->f = a->f; break;
  case KILN__ATTR_INT: ap->has_i = true; ap->i = a->i; break;
  case KILN__ATTR_STRING:
    ap->has_s = true;
    ap->s.data = (uint8_t *)a->s;
    ap->s.len = a->s_len;
    break;
  case KILN__ATTR_FLOATS: ap->n_floats = a->n; ap->floats = a->floats; break;
  case KILN__ATTR_INTS: ap->n_ints = a->n; ap->ints = a->ints; break;
  case KILN__ATTR_STRINGS: {
    ProtobufCBinaryData *s = wr_alloc(w, a->n, sizeof *s);
    if (!s) return NULL;
    for (size_t i = 0; i < a->n; i++) {
      s[i].data = (uint8_t *)a->strings[i];
      s[i].len = strlen(a->strings[i]);
    }
    ap->n_strings = a->n;
    ap->strings = s;
    break;
  }
  case KILN__ATTR_TENSOR:
    if (a->t->dtype == KILN_DTYPE_STRING || !(ap->t = tensor(w, "", a->t))) return NULL;
    break;
  default:
    return NULL; /* graphs, tensor lists, sparse tensors, type protos: not written */
  }
  return ap;
}

static KilnOnnx__NodeProto *node(writer *w, const kiln__graph *g, const kiln__node *n) {
  KilnOnnx__NodeProto *np = wr_alloc(w, 1, sizeof *np);
  char **in = wr_alloc(w, (size_t)n->n_in, sizeof *in);
  char **out = wr_alloc(w, (size_t)n->n_out, sizeof *out);
  KilnOnnx__AttributeProto **ap = wr_alloc(w, (size_t)n->n_attrs, sizeof *ap);
  if (!np || !in || !out || !ap) return NULL;
  kiln_onnx__node_proto__init(np);
  np->name = n->name;
  np->op_type = n->op_type;
  np->domain = n->domain;
  for (int k = 0; k < n->n_in; k++) in[k] = n->in[k] >= 0 ? g->values[n->in[k]].name : "";
  for (int k = 0; k < n->n_out; k++) out[k] = n->out[k] >= 0 ? g->values[n->out[k]].name : "";
  np->n_input = (size_t)n->n_in;
  np->input = in;
  np->n_output = (size_t)n->n_out;
  np->output = out;
  for (int a = 0; a < n->n_attrs; a++)
    if (!(ap[a] = attribute(w, &n->attrs[a]))) return NULL;
  np->n_attribute = (size_t)n->n_attrs;
  np->attribute = ap;
  return np;
}

static kiln_status build(writer *w, const kiln__graph *g, const char *producer,
                         KilnOnnx__ModelProto *m, KilnOnnx__GraphProto *gp, kiln_error *err) {
  kiln_onnx__model_proto__init(m);
  kiln_onnx__graph_proto__init(gp);
  m->has_ir_version = true;
  m->ir_version = g->ir_version > 0 ? g->ir_version : 8;
  m->producer_name = (char *)producer;
  m->graph = gp;
  gp->name = g->name ? g->name : "kiln";
  /* the non-default domains the nodes use (ai.kiln, com.microsoft, ...), each imported once */
  enum { MAX_DOMAINS = 8 };
  const char *domains[MAX_DOMAINS];
  int64_t versions[MAX_DOMAINS];
  size_t n_domains = 0;
  gp->node = wr_alloc(w, (size_t)g->n_nodes, sizeof *gp->node);
  for (int i = 0; i < g->n_nodes && gp->node; i++) {
    const kiln__node *n = &g->nodes[i];
    if (n->n_captures)
      return kiln__fail(err, KILN_UNSUPPORTED, "node '%s': subgraphs are not written", n->name);
    if (!(gp->node[i] = node(w, g, n))) {
      if (w->oom) break;
      return kiln__fail(err, KILN_UNSUPPORTED, "node '%s' (%s): an attribute kind not written",
                        n->name, n->op_type);
    }
    size_t d = 0;
    while (d < n_domains && strcmp(domains[d], n->domain)) d++;
    if (n->domain[0] && d == n_domains) {
      if (n_domains == MAX_DOMAINS)
        return kiln__fail(err, KILN_UNSUPPORTED, "more than %d operator domains", MAX_DOMAINS);
      domains[n_domains] = n->domain;
      versions[n_domains++] = n->opset > 0 && strcmp(n->domain, "ai.kiln") ? n->opset : 1;
    }
  }
  gp->n_node = (size_t)g->n_nodes;
  size_t n_init = 0;
  for (int v = 0; v < g->n_values; v++) n_init += g->values[v].is_initializer && g->values[v].init.data;
  gp->initializer = wr_alloc(w, n_init, sizeof *gp->initializer);
  gp->input = wr_alloc(w, (size_t)g->n_inputs, sizeof *gp->input);
  gp->output = wr_alloc(w, (size_t)g->n_outputs, sizeof *gp->output);
  for (int v = 0; v < g->n_values && gp->initializer && !w->oom; v++) {
    const kiln__value *val = &g->values[v];
    if (!val->is_initializer || !val->init.data) continue;
    if (val->init.dtype == KILN_DTYPE_STRING)
      return kiln__fail(err, KILN_UNSUPPORTED, "string initializer '%s' is not written", val->name);
    gp->initializer[gp->n_initializer++] = tensor(w, val->name, &val->init);
  }
  for (int i = 0; i < g->n_inputs && gp->input && !w->oom; i++)
    gp->input[gp->n_input++] = value_info(w, &g->values[g->inputs[i]]);
  for (int i = 0; i < g->n_outputs && gp->output && !w->oom; i++)
    gp->output[gp->n_output++] = value_info(w, &g->values[g->outputs[i]]);
  size_t n_ops = n_domains + 1;
  m->opset_import = wr_alloc(w, n_ops, sizeof *m->opset_import);
  for (size_t i = 0; i < n_ops && m->opset_import; i++) {
    KilnOnnx__OperatorSetIdProto *op = wr_alloc(w, 1, sizeof *op);
    if (!op) break;
    kiln_onnx__operator_set_id_proto__init(op);
    op->domain = i ? (char *)domains[i - 1] : "";
    op->has_version = true;
    op->version = i ? versions[i - 1] : g->opset;
    m->opset_import[m->n_opset_import++] = op;
  }
  /* Says which passes already ran, so loading the file does not run them again. */
  static const char *const digits[] = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  KilnOnnx__StringStringEntryProto *meta = wr_alloc(w, 1, sizeof *meta);
  m->metadata_props = wr_alloc(w, 1, sizeof *m->metadata_props);
  if (meta && m->metadata_props && g->optimized_level >= 0 && g->optimized_level <= 9) {
    kiln_onnx__string_string_entry_proto__init(meta);
    meta->key = "kiln.optimized_level";
    meta->value = (char *)digits[g->optimized_level];
    m->metadata_props[0] = meta;
    m->n_metadata_props = 1;
  }
  if (w->oom) return kiln__fail(err, KILN_NO_MEMORY, "out of memory writing ONNX");
  return KILN_OK;
}

kiln_status kiln__onnx_export(const kiln__graph *g, const char *producer, const char *path,
                              kiln_error *err) {
  writer w = {0};
  KilnOnnx__ModelProto m;
  KilnOnnx__GraphProto gp;
  kiln_status st = build(&w, g, producer, &m, &gp, err);
  uint8_t *buf = NULL;
  size_t len = 0;
  if (st == KILN_OK) {
    len = kiln_onnx__model_proto__get_packed_size(&m);
    if (!(buf = kiln__malloc(len ? len : 1)))
      st = kiln__fail(err, KILN_NO_MEMORY, "out of memory writing ONNX");
  }
  if (st == KILN_OK) {
    kiln_onnx__model_proto__pack(&m, buf);
    FILE *f = fopen(path, "wb");
    if (!f) {
      st = kiln__fail(err, KILN_IO_ERROR, "cannot create '%s'", path);
    } else {
      bool ok = fwrite(buf, 1, len, f) == len;
      ok &= fclose(f) == 0;
      if (!ok) st = kiln__fail(err, KILN_IO_ERROR, "cannot write '%s'", path);
    }
  }
  kiln__free(buf);
  while (w.blocks) {
    block *b = w.blocks;
    w.blocks = b->next;
    kiln__free(b);
  }
  return st;
}
