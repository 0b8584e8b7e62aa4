/* The quantization driver: picks each node's format (the default, then per-node overrides),
 * runs the formats (one file each, q_<format>.c) over their nodes, drops the weights nothing
 * reads any more and writes the result as standard ONNX, so the file runs in Kiln and in ONNX
 * Runtime alike. */
#include <stdio.h>

#include "kiln/quant.h"
#include "onnx/export.h"
#include "onnx/import.h"
#include "quant/quant.h"

/* Every format, in the order the usage message lists them. */
static const kiln__quant_format_impl *const formats[] = {
    &kiln__quant_fp16,
    &kiln__quant_int8_dynamic,
    &kiln__quant_bf16,
    &kiln__quant_int8,
    &kiln__quant_int4,
};
#define N_FORMATS (sizeof formats / sizeof formats[0])

static const kiln__quant_format_impl *impl_of(kiln_quant_format f) {
  for (size_t k = 0; k < N_FORMATS; k++)
    if (formats[k]->format == f) return formats[k];
  return NULL;
}

kiln_status kiln_quant_format_parse(const char *name, kiln_quant_format *out, kiln_error *err) {
  for (size_t k = 0; name && k < N_FORMATS; k++)
    if (!strcmp(name, formats[k]->name)) {
      *out = formats[k]->format;
      return KILN_OK;
    }
  if (name && !strcmp(name, "none")) {
    *out = KILN_QUANT_NONE;
    return KILN_OK;
  }
  char list[256] = "";
  for (size_t k = 0; k < N_FORMATS; k++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "",
             formats[k]->name);
  return kiln__fail(err, KILN_INVALID_ARGUMENT,
                    "unknown quantization format '%s' (expected one of %s, or none)",
                    name ? name : "(null)", list);
}

const char *kiln_quant_format_name(kiln_quant_format f) {
  if (f == KILN_QUANT_NONE) return "none";
  const kiln__quant_format_impl *fi = impl_of(f);
  return fi ? fi->name : "?";
}

kiln_quant_opts kiln_quant_opts_default(void) {
  return (kiln_quant_opts){.struct_size = sizeof(kiln_quant_opts),
                           .format = KILN_QUANT_NONE,
                           .method = KILN_CALIB_MINMAX,
                           .percentile = 99.999,
                           .block_size = 32,
                           /* int4: int8 activations, faster than float activations at every M
                              measured at no measurable accuracy cost (docs/QUANT.md "int4") */
                           .accuracy_level = 4,
                           /* 7-bit int8 weights: they run on the AVX2 VPMADDUBSW path (qgemm.h)
                              at no measurable accuracy cost (docs/QUANT.md, "7-bit weights") */
                           .reduce_range = true};
}

const char *kiln__quant_node_name(const kiln__graph *g, const kiln__node *n) {
  if (n->name && n->name[0]) return n->name;
  return n->n_out > 0 && n->out[0] >= 0 ? g->values[n->out[0]].name : "";
}

static bool converted(const kiln__qctx *q, int v) {
  for (int t = 0; t < KILN__QTAG_COUNT; t++)
    if (q->cache[t] && q->cache[t][v] >= 0) return true;
  return false;
}

/* Releases the data of original initializers that no node, subgraph or output reads any more. */
static void drop_unused(kiln__qctx *q) {
  kiln__graph *g = q->g;
  bool *used = kiln__calloc((size_t)g->n_values + 1, sizeof *used);
  if (!used) return; /* the file keeps dead weights; still correct */
  for (int i = 0; i < g->n_nodes; i++) {
    const kiln__node *n = &g->nodes[i];
    for (int k = 0; k < n->n_in; k++)
      if (n->in[k] >= 0) used[n->in[k]] = true;
    for (int k = 0; k < n->n_captures; k++) used[n->captures[k]] = true;
  }
  for (int v = 0; v < q->n_orig; v++) {
    kiln__value *val = &g->values[v];
    if (val->is_initializer && !used[v] && !val->is_input && !val->is_output &&
        converted(q, v)) {
      kiln_tensor_release(&val->init);
      val->is_initializer = false;
    }
  }
  kiln__free(used);
}


/* Each original node's format: the default, then the overrides. An override that names no node
   is an error, so a typo cannot silently quantize what the user meant to keep float. */
static kiln_status assign_formats(kiln__qctx *q, kiln_quant_format *fmt) {
  const kiln_quant_opts *o = q->opts;
  for (int i = 0; i < q->g->n_nodes; i++) fmt[i] = o->format;
  for (size_t k = 0; k < o->n_nodes; k++) {
    const kiln_quant_node_format *nf = &o->nodes[k];
    if (nf->format != KILN_QUANT_NONE && !impl_of(nf->format))
      return kiln__fail(q->err, KILN_INVALID_ARGUMENT, "unknown quantization format %d for node '%s'",
                        (int)nf->format, nf->node ? nf->node : "(null)");
    bool found = false;
    for (int i = 0; nf->node && i < q->g->n_nodes; i++)
      if (!strcmp(kiln__quant_node_name(q->g, &q->g->nodes[i]), nf->node)) {
        fmt[i] = nf->format;
        found = true;
      }
    if (!found)
      return kiln__fail(q->err, KILN_INVALID_ARGUMENT, "no node named '%s' to quantize as %s",
                        nf->node ? nf->node : "(null)", kiln_quant_format_name(nf->format));
  }
  return KILN_OK;
}

static kiln_status rewrite(kiln__qctx *q, kiln_quant_format **fmtp, int n_nodes) {
  bool used[8] = {false}, prepared[8] = {false};
  kiln_status st = KILN_OK;
  kiln_quant_format *fmt = *fmtp;
  for (int i = 0; i < n_nodes; i++)
    if (fmt[i] != KILN_QUANT_NONE) used[fmt[i]] = true;
  /* an older model is raised to the opset the formats need (qprep.c), or refused naming why */
  const kiln__quant_format_impl *need = NULL;
  for (size_t k = 0; k < N_FORMATS; k++)
    if (used[formats[k]->format] && (!need || formats[k]->min_opset > need->min_opset))
      need = formats[k];
  if (need && q->g->opset < need->min_opset &&
      (st = kiln__quant_raise_opset(q, need->min_opset)) != KILN_OK)
    kiln__err_prefix(q->err, "%s needs opset %lld", need->name, (long long)need->min_opset);
  q->n_orig = q->g->n_values; /* what the raise added is original to the formats */
  if (st == KILN_OK && q->g->n_nodes > n_nodes) { /* prepare() reads a format per node: NONE */
    fmt = kiln__realloc(fmt, (size_t)q->g->n_nodes * sizeof *fmt);
    if (!fmt) return kiln__qoom(q); /* *fmtp is still the caller's to free */
    *fmtp = fmt;
    for (int i = n_nodes; i < q->g->n_nodes; i++) fmt[i] = KILN_QUANT_NONE;
  }
  q->node_format = fmt;
  for (size_t k = 0; st == KILN_OK && k < N_FORMATS; k++) {
    const kiln__quant_format_impl *fi = formats[k];
    if (used[fi->format] && fi->prepare && (st = fi->prepare(q)) == KILN_OK)
      prepared[fi->format] = true;
  }
  /* nodes the rewrites add are not visited: only the original n_nodes */
  for (int i = 0; st == KILN_OK && i < n_nodes; i++) {
    if (fmt[i] == KILN_QUANT_NONE) {
      const kiln__node *n = &q->g->nodes[i];
      if (kiln__qis_op(n, "Conv") || kiln__qis_op(n, "MatMul") || kiln__qis_op(n, "Gemm"))
        q->st.nodes_kept_float++;
      continue;
    }
    kiln__qoutcome out = KILN__Q_NOT_CANDIDATE;
    st = impl_of(fmt[i])->node(q, i, &out);
    if (out == KILN__Q_QUANTIZED) q->st.nodes_quantized++;
    else if (out == KILN__Q_KEPT_FLOAT) q->st.nodes_kept_float++;
  }
  for (size_t k = 0; k < N_FORMATS; k++)
    if (prepared[formats[k]->format] && formats[k]->release) formats[k]->release(q);
  return st;
}

kiln_status kiln__quant_graph(kiln__graph *g, const kiln_quant_opts *opts, const char *model_path,
                              kiln_quant_stats *stats, kiln_error *err) {
  kiln_quant_opts o = kiln_quant_opts_default();
  if (opts) memcpy(&o, opts, opts->struct_size < sizeof o ? opts->struct_size : sizeof o);
  if (o.format != KILN_QUANT_NONE && !impl_of(o.format))
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "unknown quantization format %d", (int)o.format);
  kiln__quant_const_to_init(g);
  kiln__qctx q = {.g = g, .err = err, .opts = &o, .model_path = model_path, .n_orig = g->n_values};
  int n_nodes = g->n_nodes;
  kiln_quant_format *fmt = kiln__malloc(((size_t)n_nodes + 1) * sizeof *fmt);
  kiln_status st = fmt ? assign_formats(&q, fmt) : kiln__qoom(&q);
  if (st == KILN_OK) st = rewrite(&q, &fmt, n_nodes);
  if (st == KILN_OK && q.st.nodes_quantized == 0) {
    const kiln__quant_format_impl *fi = impl_of(o.format);
    st = kiln__fail(err, KILN_UNSUPPORTED, "%s",
                    fi ? fi->nothing_msg : "nothing to quantize: no node was given a format");
  }
  if (st == KILN_OK) {
    drop_unused(&q);
    st = kiln__graph_finalize(g, err);
  }
  if (stats) *stats = q.st;
  for (int t = 0; t < KILN__QTAG_COUNT; t++) kiln__free(q.cache[t]);
  kiln__free(fmt);
  return st;
}

kiln_status kiln_quantize_file_ex(const char *path, const char *out_path,
                                  const kiln_quant_opts *opts, kiln_quant_stats *stats,
                                  kiln_error *err) {
  if (stats) memset(stats, 0, sizeof *stats);
  if (!path || !out_path)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "quantize: a model and an output path are needed");
  kiln__graph *g = NULL;
  kiln_status st = kiln__onnx_import_file(path, &g, err);
  if (st == KILN_OK) st = kiln__quant_graph(g, opts, path, stats, err);
  if (st == KILN_OK) st = kiln__onnx_export(g, "kiln-quantize", out_path, err);
  if (st != KILN_OK) kiln__err_prefix(err, "%s", path);
  kiln__graph_free(g);
  return st;
}

kiln_status kiln_quantize_file(const char *path, const char *out_path, kiln_quant_format format,
                               kiln_quant_stats *stats, kiln_error *err) {
  kiln_quant_opts o = kiln_quant_opts_default();
  o.format = format;
  return kiln_quantize_file_ex(path, out_path, &o, stats, err);
}
