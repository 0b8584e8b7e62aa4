/* Accuracy validation: run a candidate model (a quantized variant) and its reference on the same
 * inputs and say how far apart their first outputs are: agreement, errors, KL divergence of the
 * softmaxes, perplexity of a language model, a per-layer error table, and budgets. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "onnx/export.h"
#include "onnx/import.h"
#include "quant/qeval.h"
#include "quant/quant.h"

kiln_validate_opts kiln_validate_opts_default(void) {
  return (kiln_validate_opts){.struct_size = sizeof(kiln_validate_opts)};
}

static size_t argmax(const float *x, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

void kiln__quant_acc_add(kiln__quant_acc *a, const float *ref, const float *cand, size_t rows,
                         size_t classes, const int64_t *labels) {
  for (size_t r = 0; r < rows; r++) {
    const float *x = ref + r * classes, *y = cand + r * classes;
    size_t ax = argmax(x, classes), ay = argmax(y, classes);
    a->agree += ax == ay;
    if (labels) {
      a->ref_correct += (int64_t)ax == labels[r];
      a->cand_correct += (int64_t)ay == labels[r];
    }
    for (size_t c = 0; c < classes; c++) {
      double p = x[c], q = y[c], d = fabs(p - q);
      a->dot += p * q;
      a->ref2 += p * p;
      a->cand2 += q * q;
      a->diff2 += d * d;
      a->abs_sum += d;
      if (d > a->abs_max || isnan(d)) a->abs_max = d;
    }
  }
  a->rows += rows;
  a->elements += rows * classes;
}

void kiln__quant_acc_report(const kiln__quant_acc *a, bool has_labels, kiln_validate_report *r) {
  r->rows = a->rows;
  r->elements = a->elements;
  r->top1_agree = a->agree;
  r->top1_agreement = a->rows ? (double)a->agree / (double)a->rows : 0;
  r->has_labels = has_labels;
  r->ref_correct = has_labels ? a->ref_correct : 0;
  r->cand_correct = has_labels ? a->cand_correct : 0;
  r->ref_accuracy = has_labels && a->rows ? (double)a->ref_correct / (double)a->rows : 0;
  r->cand_accuracy = has_labels && a->rows ? (double)a->cand_correct / (double)a->rows : 0;
  /* two all-zero outputs are identical: cosine 1 */
  double den = sqrt(a->ref2) * sqrt(a->cand2);
  r->cosine = den > 0 ? a->dot / den : (a->ref2 == a->cand2 ? 1.0 : 0.0);
  r->max_abs_err = a->abs_max;
  r->mean_abs_err = a->elements ? a->abs_sum / (double)a->elements : 0;
  r->snr_db = a->diff2 > 0 ? 10.0 * log10(a->ref2 / a->diff2) : INFINITY;
}

/* ---- softmax and language-model metrics ------------------------------------------------------ */

/* log(sum(exp(x))) of one row, stable for any logits. */
static double logsumexp(const float *x, size_t n) {
  double m = x[0];
  for (size_t i = 1; i < n; i++)
    if (x[i] > m) m = x[i];
  double s = 0;
  for (size_t i = 0; i < n; i++) s += exp((double)x[i] - m);
  return m + log(s);
}

static bool is_distribution(const float *x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) {
    if (!(x[i] >= 0.0f)) return false; /* NaN too */
    s += x[i];
  }
  return fabs(s - 1.0) <= 1e-3;
}

/* log p of a row read as probabilities; 0 stands for e^-69 so a class the candidate calls
   impossible costs a large finite KL instead of infinity */
static double log_prob(float p) { return log(p > 1e-30f ? (double)p : 1e-30); }

void kiln__lm_acc_add(kiln__lm_acc *a, const float *ref, const float *cand, size_t rows,
                      size_t classes, const int64_t *targets) {
  bool probs = rows > 0 && classes > 1;
  for (size_t r = 0; probs && r < rows; r++)
    probs = is_distribution(ref + r * classes, classes) &&
            is_distribution(cand + r * classes, classes);
  for (size_t r = 0; r < rows; r++) {
    const float *x = ref + r * classes, *y = cand + r * classes;
    double lx = probs ? 0 : logsumexp(x, classes), ly = probs ? 0 : logsumexp(y, classes), kl = 0;
    /* KL(P || Q) = sum p (log p - log q), with log p = x - lse(x) for logits */
    for (size_t c = 0; c < classes; c++) {
      double lp = probs ? log_prob(x[c]) : x[c] - lx, lq = probs ? log_prob(y[c]) : y[c] - ly;
      if (!probs || x[c] > 0) kl += exp(lp) * (lp - lq);
    }
    a->kl_sum += kl;
    a->kl_rows++;
    a->prob_rows += probs;
    if (!targets || targets[r] < 0 || (uint64_t)targets[r] >= classes) continue;
    size_t t = (size_t)targets[r];
    a->ref_nll += probs ? -log_prob(x[t]) : lx - x[t];
    a->cand_nll += probs ? -log_prob(y[t]) : ly - y[t];
    a->tokens++;
    a->ref_hits += argmax(x, classes) == t;
    a->cand_hits += argmax(y, classes) == t;
  }
}

bool kiln__is_weight_layer(const kiln__graph *g, const kiln__node *n) {
  if (n->domain[0] || n->n_in < 2 || n->in[1] < 0 || n->n_out < 1 || n->out[0] < 0) return false;
  if (strcmp(n->op_type, "Conv") && strcmp(n->op_type, "MatMul") && strcmp(n->op_type, "Gemm"))
    return false;
  const kiln__value *w = &g->values[n->in[1]];
  return w->is_initializer && !w->is_input && w->init.dtype == KILN_DTYPE_FLOAT && w->init.data;
}

kiln_status kiln__load_graph(const kiln__graph *g, const kiln_model_opts *mo, kiln_model **out,
                             kiln_error *err) {
  const char *tmp = getenv("TMPDIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/kiln_probe_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  int fd = mkstemp(path);
  if (fd < 0) return kiln__fail(err, KILN_IO_ERROR, "cannot create a temporary file in %s",
                                tmp && tmp[0] ? tmp : "/tmp");
  close(fd);
  kiln_status st = kiln__onnx_export(g, "kiln-validate", path, err);
  if (st == KILN_OK) st = kiln_model_load(path, mo, out, err);
  unlink(path);
  return st;
}

/* ---- running both models ---------------------------------------------------------------------- */

enum { MAX_INPUTS = 64 }; /* graph inputs a validation feeds */

/* A value exposed as an extra output of both models for the per-layer table. */
typedef struct probe {
  char *name;
  size_t out[2]; /* its output index in the reference and the candidate */
  bool ok;       /* present in both, same shape in every batch so far */
  double dot, ref2, cand2, diff2, abs_max;
} probe;

typedef struct layer {
  int out_probe, in_probe; /* in_probe -1: the layer reads a graph input (exact) */
  char op[32];
} layer;

typedef struct vstate {
  kiln_model *m[2];
  kiln_session *s[2];
  size_t n_in;
  const char *names[MAX_INPUTS];
  kiln_tensor in[MAX_INPUTS];
  kiln_tensor labels;
  int64_t *lab;
  /* perplexity */
  int ids;                /* index into in[] of the token ids, -1 when not scoring */
  kiln_tensor targets;    /* optional, [samples, T] */
  int64_t *tgt;           /* scratch: one target per output row of a batch */
  size_t tgt_cap;
  kiln__lm_acc lm;
  /* per layer */
  size_t n_probes, n_layers;
  probe *probes;
  layer *layers;
} vstate;

static void vstate_free(vstate *v) {
  for (int k = 0; k < 2; k++) {
    kiln_session_free(v->s[k]);
    kiln_model_free(v->m[k]);
  }
  for (size_t i = 0; i < v->n_in; i++) kiln_tensor_release(&v->in[i]);
  kiln_tensor_release(&v->labels);
  kiln_tensor_release(&v->targets);
  kiln__free(v->lab);
  kiln__free(v->tgt);
  for (size_t p = 0; p < v->n_probes; p++) kiln__free(v->probes[p].name);
  kiln__free(v->probes);
  kiln__free(v->layers);
}

/* The probe for value `name`, added when new; -1 when out of memory. */
static int probe_of(vstate *v, const char *name, size_t cap) {
  for (size_t p = 0; p < v->n_probes; p++)
    if (!strcmp(v->probes[p].name, name)) return (int)p;
  if (v->n_probes == cap) return -1;
  probe *pr = &v->probes[v->n_probes];
  memset(pr, 0, sizeof *pr);
  if (!(pr->name = kiln__strdup(name))) return -1;
  pr->ok = true;
  return (int)v->n_probes++;
}

/* Makes value `name` of g an output (appended unless it already is one); its output index. */
static kiln_status expose(kiln__graph *g, const char *name, size_t *index, bool *ok,
                          kiln_error *err) {
  int val = kiln__graph_find(g, name);
  *ok = val >= 0 && !g->values[val].is_initializer &&
        g->values[val].kind == KILN__VALUE_TENSOR &&
        (g->values[val].dtype == KILN_DTYPE_UNDEFINED || g->values[val].dtype == KILN_DTYPE_FLOAT);
  if (!*ok) return KILN_OK;
  for (int i = 0; i < g->n_outputs; i++)
    if (g->outputs[i] == val) {
      *index = (size_t)i;
      return KILN_OK;
    }
  int *o = kiln__realloc(g->outputs, (size_t)(g->n_outputs + 1) * sizeof *o);
  if (!o) return kiln__fail(err, KILN_NO_MEMORY, "out of memory exposing layer outputs");
  g->outputs = o;
  g->outputs[g->n_outputs] = val;
  *index = (size_t)g->n_outputs++;
  /* the file's value_info needs an element type; layers compute float32 */
  g->values[val].dtype = KILN_DTYPE_FLOAT;
  g->values[val].is_output = true;
  return KILN_OK;
}

/* Loads both models with every weight layer's data input and output exposed as extra outputs. */
static kiln_status load_probed(vstate *v, const char *const paths[2], const kiln_model_opts *mo,
                               kiln_error *err) {
  kiln__graph *g[2] = {NULL, NULL};
  kiln_status st = KILN_OK;
  for (int k = 0; k < 2 && st == KILN_OK; k++) {
    st = kiln__onnx_import_file(paths[k], &g[k], err);
    if (st != KILN_OK) kiln__err_prefix(err, "%s", paths[k]);
    else kiln__quant_const_to_init(g[k]); /* weights written as Constant nodes are layers too */
  }
  size_t cap = 0;
  if (st == KILN_OK) {
    for (int i = 0; i < g[0]->n_nodes; i++) cap += kiln__is_weight_layer(g[0], &g[0]->nodes[i]);
    v->probes = kiln__calloc(2 * cap + 1, sizeof *v->probes);
    v->layers = kiln__calloc(cap + 1, sizeof *v->layers);
    if (!v->probes || !v->layers) st = kiln__fail(err, KILN_NO_MEMORY, "out of memory");
  }
  for (int i = 0; st == KILN_OK && i < g[0]->n_nodes; i++) {
    const kiln__node *n = &g[0]->nodes[i];
    if (!kiln__is_weight_layer(g[0], n)) continue;
    layer *L = &v->layers[v->n_layers];
    snprintf(L->op, sizeof L->op, "%s", n->op_type);
    const kiln__value *in = n->in[0] >= 0 ? &g[0]->values[n->in[0]] : NULL;
    L->out_probe = probe_of(v, g[0]->values[n->out[0]].name, 2 * cap);
    L->in_probe = in && !in->is_input ? probe_of(v, in->name, 2 * cap) : -1;
    if (L->out_probe < 0 || (in && !in->is_input && L->in_probe < 0))
      st = kiln__fail(err, KILN_NO_MEMORY, "out of memory");
    v->n_layers++;
  }
  for (size_t p = 0; st == KILN_OK && p < v->n_probes; p++) {
    probe *pr = &v->probes[p];
    for (int k = 0; k < 2 && st == KILN_OK && pr->ok; k++)
      st = expose(g[k], pr->name, &pr->out[k], &pr->ok, err);
  }
  for (int k = 0; k < 2 && st == KILN_OK; k++) {
    st = kiln__load_graph(g[k], mo, &v->m[k], err);
    if (st == KILN_OK) st = kiln_session_create(v->m[k], &v->s[k], err);
    if (st != KILN_OK) kiln__err_prefix(err, "%s with its layers exposed", paths[k]);
  }
  kiln__graph_free(g[0]);
  kiln__graph_free(g[1]);
  return st;
}

static void probe_add(probe *p, const kiln_tensor *r, const kiln_tensor *c) {
  if (r->dtype != KILN_DTYPE_FLOAT || c->dtype != KILN_DTYPE_FLOAT || r->rank != c->rank ||
      memcmp(r->dims, c->dims, (size_t)r->rank * sizeof r->dims[0])) {
    p->ok = false; /* e.g. a structurally pruned layer: fewer channels */
    return;
  }
  const float *x = r->data, *y = c->data;
  size_t n = kiln_tensor_count(r);
  for (size_t i = 0; i < n; i++) {
    double a = x[i], b = y[i], d = fabs(a - b);
    p->dot += a * b;
    p->ref2 += a * a;
    p->cand2 += b * b;
    p->diff2 += d * d;
    if (d > p->abs_max || isnan(d)) p->abs_max = d;
  }
}

static double probe_snr(const probe *p) {
  return p->diff2 > 0 ? 10.0 * log10(p->ref2 / p->diff2) : INFINITY;
}

static kiln_status load_inputs(vstate *v, const char *dir, size_t *samples, kiln_error *err) {
  size_t n = kiln_model_input_count(v->m[0]);
  if (n > sizeof v->in / sizeof v->in[0])
    return kiln__fail(err, KILN_UNSUPPORTED, "the reference has %zu inputs (at most %zu)", n,
                      sizeof v->in / sizeof v->in[0]);
  if (kiln_model_input_count(v->m[1]) != n)
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "the candidate has %zu inputs and the reference %zu",
                      kiln_model_input_count(v->m[1]), n);
  for (size_t i = 0; i < n; i++) {
    kiln_io_info info;
    kiln_model_input_info(v->m[0], i, &info);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", dir, info.name);
    kiln_status st = kiln_tensor_read_npy(path, &v->in[i], err);
    if (st != KILN_OK) return st;
    v->names[i] = info.name;
    v->n_in = i + 1;
    if (v->in[i].rank < 1)
      return kiln__fail(err, KILN_INVALID_ARGUMENT,
                        "%s: a scalar; inputs are batched along their first dim", path);
    if (i == 0) *samples = (size_t)v->in[i].dims[0];
    else if ((size_t)v->in[i].dims[0] != *samples)
      return kiln__fail(err, KILN_INVALID_ARGUMENT, "%s: %lld samples, but %s.npy has %zu", path,
                        (long long)v->in[i].dims[0], v->names[0], *samples);
  }
  if (*samples == 0) return kiln__fail(err, KILN_INVALID_ARGUMENT, "%s: no samples", dir);
  return KILN_OK;
}

static kiln_status load_labels(vstate *v, const char *path, kiln_error *err) {
  kiln_status st = kiln_tensor_read_npy(path, &v->labels, err);
  if (st != KILN_OK) return st;
  kiln_dtype t = v->labels.dtype;
  if (t != KILN_DTYPE_INT64 && t != KILN_DTYPE_INT32 && t != KILN_DTYPE_UINT8)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "%s: labels must be integers, not %s", path,
                      kiln_dtype_name(t));
  size_t n = kiln_tensor_count(&v->labels);
  if (!(v->lab = kiln__malloc((n ? n : 1) * sizeof *v->lab)))
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory");
  for (size_t i = 0; i < n; i++)
    v->lab[i] = t == KILN_DTYPE_INT64   ? ((const int64_t *)v->labels.data)[i]
                : t == KILN_DTYPE_INT32 ? ((const int32_t *)v->labels.data)[i]
                                        : ((const uint8_t *)v->labels.data)[i];
  return KILN_OK;
}

/* The integer input scored for perplexity and the targets: opts->ids_input, else the first
   integer input. */
static kiln_status setup_lm(vstate *v, const kiln_validate_ex_opts *o, size_t samples,
                            kiln_error *err) {
  v->ids = -1;
  for (size_t i = 0; i < v->n_in && v->ids < 0; i++) {
    kiln_dtype t = v->in[i].dtype;
    bool integer = t == KILN_DTYPE_INT64 || t == KILN_DTYPE_INT32;
    if (o->ids_input ? !strcmp(v->names[i], o->ids_input) : integer) {
      if (!integer || v->in[i].rank != 2)
        return kiln__fail(err, KILN_INVALID_ARGUMENT,
                          "perplexity: input '%s' must be int64 or int32 token ids [B, T]",
                          v->names[i]);
      v->ids = (int)i;
    }
  }
  if (v->ids < 0)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "perplexity: %s%s%s", 
                      o->ids_input ? "no input named '" : "no integer token-id input",
                      o->ids_input ? o->ids_input : "", o->ids_input ? "'" : "");
  if (!o->targets) return KILN_OK;
  kiln_status st = kiln_tensor_read_npy(o->targets, &v->targets, err);
  if (st != KILN_OK) return st;
  const kiln_tensor *ids = &v->in[v->ids];
  if ((v->targets.dtype != KILN_DTYPE_INT64 && v->targets.dtype != KILN_DTYPE_INT32) ||
      v->targets.rank != 2 || (size_t)v->targets.dims[0] != samples ||
      v->targets.dims[1] != ids->dims[1])
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "%s: targets must be integers shaped like the token ids [%zu, %lld]",
                      o->targets, samples, (long long)ids->dims[1]);
  return KILN_OK;
}

/* One target per logits row of samples [begin, begin + count): the given targets, else the next
   token of the same row (none for the last position). */
static kiln_status lm_targets(vstate *v, size_t begin, size_t count, const kiln_tensor *logits,
                              kiln_error *err) {
  const kiln_tensor *ids = &v->in[v->ids];
  size_t T = (size_t)ids->dims[1];
  if (logits->rank != 3 || (size_t)logits->dims[0] != count || (size_t)logits->dims[1] != T)
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "perplexity: the first output must be logits [B, T, V] over the ids [%zu, "
                      "%zu]", count, T);
  size_t rows = count * T;
  if (rows > v->tgt_cap) {
    int64_t *t = kiln__realloc(v->tgt, rows * sizeof *t);
    if (!t) return kiln__fail(err, KILN_NO_MEMORY, "out of memory");
    v->tgt = t, v->tgt_cap = rows;
  }
  for (size_t b = 0; b < count; b++)
    for (size_t t = 0; t < T; t++) {
      size_t at = (begin + b) * T + t;
      if (v->targets.data) v->tgt[b * T + t] = kiln__load_i64(v->targets.data, v->targets.dtype, at);
      else v->tgt[b * T + t] = t + 1 < T ? kiln__load_i64(ids->data, ids->dtype, at + 1) : -1;
    }
  return KILN_OK;
}

/* Runs samples [begin, begin + count) through both models and accumulates the comparison. */
static kiln_status run_batch(vstate *v, size_t begin, size_t count, const char *label_path,
                             kiln__quant_acc *acc, size_t *classes, kiln_error *err) {
  kiln_tensor views[sizeof v->in / sizeof v->in[0]];
  for (size_t i = 0; i < v->n_in; i++) {
    views[i] = v->in[i];
    size_t row = kiln_tensor_nbytes(&v->in[i]) / (size_t)v->in[i].dims[0];
    views[i].dims[0] = (int64_t)count;
    views[i].data = (char *)v->in[i].data + begin * row;
  }
  kiln_tensor out[2];
  for (int k = 0; k < 2; k++) {
    kiln_status st = kiln_session_run(v->s[k], v->names, views, v->n_in, err);
    if (st != KILN_OK) {
      kiln__err_prefix(err, "%s", k ? "candidate" : "reference");
      return st;
    }
    kiln_session_output(v->s[k], 0, &out[k]);
    if (out[k].dtype != KILN_DTYPE_FLOAT)
      return kiln__fail(err, KILN_UNSUPPORTED, "the %s's first output is %s, not float32",
                        k ? "candidate" : "reference", kiln_dtype_name(out[k].dtype));
  }
  if (out[0].rank != out[1].rank ||
      memcmp(out[0].dims, out[1].dims, (size_t)out[0].rank * sizeof out[0].dims[0]))
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "the first outputs differ in shape (rank %d and %d)", out[0].rank,
                      out[1].rank);
  size_t n = kiln_tensor_count(&out[0]);
  size_t c = out[0].rank > 0 ? (size_t)out[0].dims[out[0].rank - 1] : 1;
  if (c == 0 || n == 0) return kiln__fail(err, KILN_UNSUPPORTED, "the first output is empty");
  *classes = c;
  size_t rows = n / c;
  const int64_t *lab = NULL;
  if (v->lab) {
    /* rows per sample are fixed by the model, so the labels must cover this batch's rows */
    if (acc->rows + rows > kiln_tensor_count(&v->labels))
      return kiln__fail(err, KILN_INVALID_ARGUMENT,
                        "%s: %zu labels, but the output has more rows than that", label_path,
                        kiln_tensor_count(&v->labels));
    lab = v->lab + acc->rows;
  }
  kiln__quant_acc_add(acc, out[0].data, out[1].data, rows, c, lab);
  const int64_t *tgt = NULL;
  if (v->ids >= 0) {
    kiln_status st = lm_targets(v, begin, count, &out[0], err);
    if (st != KILN_OK) return st;
    tgt = v->tgt;
  }
  kiln__lm_acc_add(&v->lm, out[0].data, out[1].data, rows, c, tgt);
  for (size_t p = 0; p < v->n_probes; p++) {
    probe *pr = &v->probes[p];
    if (!pr->ok) continue;
    kiln_tensor r, q;
    if (kiln_session_output(v->s[0], pr->out[0], &r) != KILN_OK ||
        kiln_session_output(v->s[1], pr->out[1], &q) != KILN_OK)
      pr->ok = false;
    else probe_add(pr, &r, &q);
  }
  return KILN_OK;
}

kiln_validate_ex_opts kiln_validate_ex_opts_default(void) {
  return (kiln_validate_ex_opts){.struct_size = sizeof(kiln_validate_ex_opts),
                                 .base = kiln_validate_opts_default()};
}

void kiln_validate_ex_report_free(kiln_validate_ex_report *r) {
  if (!r) return;
  kiln__free(r->layers);
  r->layers = NULL;
  r->n_layers = 0;
}

enum { EXACT_DB = 140 }; /* an exact input counts as float32's own precision */

static int layer_cmp(const void *a, const void *b) {
  const kiln_layer_error *x = a, *y = b;
  if (x->matched != y->matched) return x->matched ? -1 : 1;
  double dx = isnan(x->snr_drop_db) ? INFINITY : x->snr_drop_db;
  double dy = isnan(y->snr_drop_db) ? INFINITY : y->snr_drop_db;
  return dx > dy ? -1 : dx < dy ? 1 : strcmp(x->name, y->name);
}

static kiln_status layer_table(const vstate *v, kiln_validate_ex_report *out, kiln_error *err) {
  if (!v->n_layers) return KILN_OK;
  if (!(out->layers = kiln__calloc(v->n_layers, sizeof *out->layers)))
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory");
  for (size_t l = 0; l < v->n_layers; l++) {
    const layer *L = &v->layers[l];
    const probe *po = &v->probes[L->out_probe];
    const probe *pi = L->in_probe >= 0 ? &v->probes[L->in_probe] : NULL;
    kiln_layer_error *e = &out->layers[l];
    snprintf(e->name, sizeof e->name, "%s", po->name);
    snprintf(e->op, sizeof e->op, "%s", L->op);
    e->matched = po->ok && (!pi || pi->ok);
    double den = sqrt(po->ref2) * sqrt(po->cand2);
    e->cosine = den > 0 ? po->dot / den : (po->ref2 == po->cand2 ? 1.0 : 0.0);
    e->snr_db = probe_snr(po);
    e->max_abs_err = po->abs_max;
    e->in_snr_db = pi ? probe_snr(pi) : INFINITY;
    double in = e->in_snr_db > EXACT_DB ? EXACT_DB : e->in_snr_db;
    double o = e->snr_db > EXACT_DB ? EXACT_DB : e->snr_db;
    e->snr_drop_db = in - o;
  }
  out->n_layers = v->n_layers;
  qsort(out->layers, out->n_layers, sizeof *out->layers, layer_cmp);
  return KILN_OK;
}

kiln_status kiln_validate_files_ex(const char *reference, const char *candidate,
                                   const char *data_dir, const char *labels,
                                   const kiln_validate_ex_opts *opts,
                                   kiln_validate_ex_report *out, kiln_error *err) {
  memset(out, 0, sizeof *out);
  if (!reference || !candidate || !data_dir)
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "validate: a reference, a candidate and a data folder are needed");
  kiln_validate_ex_opts o = kiln_validate_ex_opts_default();
  if (opts) memcpy(&o, opts, opts->struct_size < sizeof o ? opts->struct_size : sizeof o);
  vstate v = {.ids = -1};
  kiln_model_opts mo = kiln_model_opts_default();
  mo.intra_threads = o.base.intra_threads;
  const char *paths[2] = {reference, candidate};
  kiln_status st = KILN_OK;
  if (o.per_layer) st = load_probed(&v, paths, &mo, err);
  for (int k = 0; k < 2 && st == KILN_OK && !o.per_layer; k++) {
    st = kiln_model_load(paths[k], &mo, &v.m[k], err);
    if (st == KILN_OK) st = kiln_session_create(v.m[k], &v.s[k], err);
  }
  size_t samples = 0;
  if (st == KILN_OK) st = load_inputs(&v, data_dir, &samples, err);
  if (st == KILN_OK && labels) st = load_labels(&v, labels, err);
  if (st == KILN_OK && o.perplexity) st = setup_lm(&v, &o, samples, err);
  size_t batch = o.base.batch;
  if (st == KILN_OK && batch == 0) {
    kiln_io_info info;
    kiln_model_input_info(v.m[0], 0, &info);
    batch = info.rank > 0 && info.dims[0] > 0 ? (size_t)info.dims[0] : 64;
  }
  kiln__quant_acc acc = {0};
  size_t classes = 0;
  for (size_t b = 0; st == KILN_OK && b < samples; b += batch) {
    size_t count = samples - b < batch ? samples - b : batch;
    st = run_batch(&v, b, count, labels, &acc, &classes, err);
  }
  if (st == KILN_OK && v.lab && acc.rows != kiln_tensor_count(&v.labels))
    st = kiln__fail(err, KILN_INVALID_ARGUMENT, "%s: %zu labels for %zu output rows", labels,
                    kiln_tensor_count(&v.labels), acc.rows);
  if (st == KILN_OK && v.ids >= 0 && v.lm.tokens == 0)
    st = kiln__fail(err, KILN_INVALID_ARGUMENT, "perplexity: no position has a target");
  if (st == KILN_OK) {
    kiln__quant_acc_report(&acc, v.lab != NULL, &out->base);
    out->base.samples = samples;
    out->base.classes = classes;
    out->kl_divergence = v.lm.kl_rows ? v.lm.kl_sum / (double)v.lm.kl_rows : 0;
    out->kl_of_probabilities = v.lm.kl_rows && v.lm.prob_rows == v.lm.kl_rows;
    if (v.ids >= 0) {
      double t = (double)v.lm.tokens;
      out->has_perplexity = true;
      out->tokens = v.lm.tokens;
      out->ref_nll = v.lm.ref_nll / t;
      out->cand_nll = v.lm.cand_nll / t;
      out->ref_ppl = exp(out->ref_nll);
      out->cand_ppl = exp(out->cand_nll);
      out->ppl_ratio = out->cand_ppl / out->ref_ppl;
      out->ref_token_accuracy = (double)v.lm.ref_hits / t;
      out->cand_token_accuracy = (double)v.lm.cand_hits / t;
    }
    st = layer_table(&v, out, err);
  }
  vstate_free(&v);
  if (st != KILN_OK) kiln_validate_ex_report_free(out);
  return st;
}

kiln_status kiln_validate_files(const char *reference, const char *candidate,
                                const char *data_dir, const char *labels,
                                const kiln_validate_opts *opts, kiln_validate_report *out,
                                kiln_error *err) {
  kiln_validate_ex_opts o = kiln_validate_ex_opts_default();
  if (opts) {
    o.base.intra_threads = opts->intra_threads;
    o.base.batch = opts->batch;
  }
  kiln_validate_ex_report r;
  kiln_status st = kiln_validate_files_ex(reference, candidate, data_dir, labels, &o, &r, err);
  *out = r.base;
  kiln_validate_ex_report_free(&r);
  return st;
}

/* ---- budgets ------------------------------------------------------------------------------------ */

kiln_validate_budget kiln_validate_budget_none(void) {
  return (kiln_validate_budget){NAN, NAN, NAN, NAN};
}

KILN__PRINTF(3, 4) static void say(char *msg, size_t cap, const char *fmt, ...) {
  if (!msg || !cap) return;
  size_t len = strlen(msg);
  if (len >= cap) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + len, cap - len, fmt, ap);
  va_end(ap);
}

int kiln_validate_check_budget(const kiln_validate_ex_report *r, const kiln_validate_budget *b,
                               char *msg, size_t cap) {
  if (msg && cap) msg[0] = 0;
  int missed = 0;
  const kiln_validate_report *v = &r->base;
  /* a NaN metric (a NaN output) misses every budget: the comparisons are written so */
  if (!isnan(b->min_top1_agreement) && !(v->top1_agreement >= b->min_top1_agreement)) {
    say(msg, cap, "top-1 agreement %.4f < %.6g\n", v->top1_agreement, b->min_top1_agreement);
    missed++;
  }
  if (!isnan(b->min_cosine) && !(v->cosine >= b->min_cosine)) {
    say(msg, cap, "cosine %.8f < %.8g\n", v->cosine, b->min_cosine);
    missed++;
  }
  if (!isnan(b->max_ppl_ratio)) {
    if (!r->has_perplexity) {
      say(msg, cap, "perplexity ratio budget given, but no perplexity was measured\n");
      missed++;
    } else if (!(r->ppl_ratio <= b->max_ppl_ratio)) {
      say(msg, cap, "perplexity ratio %.4f > %.4f\n", r->ppl_ratio, b->max_ppl_ratio);
      missed++;
    }
  }
  if (!isnan(b->max_accuracy_drop)) {
    double drop = 100.0 * (v->ref_accuracy - v->cand_accuracy);
    if (!v->has_labels) {
      say(msg, cap, "accuracy-drop budget given, but no labels\n");
      missed++;
    } else if (!(drop <= b->max_accuracy_drop)) {
      say(msg, cap, "top-1 accuracy drop %.2f points > %.2f (%.4f -> %.4f)\n", drop,
          b->max_accuracy_drop, v->ref_accuracy, v->cand_accuracy);
      missed++;
    }
  }
  return missed;
}
