/* Mixed precision: per-layer sensitivity, then a greedy choice of each layer's format within an
 * accuracy budget.
 *
 * 1. The reference runs once over the calibration data; its first outputs are kept.
 * 2. Sensitivity: every candidate layer (Conv/MatMul/Gemm with a constant weight) is quantized
 *    alone with every candidate format (kiln_quant_opts.nodes), and the variant's metric against
 *    the reference is measured. A format a layer cannot take (e.g. int8-dynamic on a Conv), or that
 *    misses the budget even alone, is dropped for that layer.
 * 3. Greedy: layers in order of increasing sensitivity each take their most aggressive remaining
 *    format (fewest weight bytes, or lowest measured latency); the combined model is validated
 *    again and the layer backs off to its next format, then to float, when the budget is missed.
 *
 * The formats come from the quantizer's table (kiln_quant_format_name), so formats added there are
 * candidates here without a change. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "onnx/import.h"
#include "quant/qeval.h"
#include "quant/quant.h"

enum { MAX_FORMATS = 16, MAX_INPUTS = 64 };

kiln_auto_opts kiln_auto_opts_default(void) {
  return (kiln_auto_opts){.struct_size = sizeof(kiln_auto_opts), .metric = KILN_AUTO_COSINE,
                          .budget = 0.999};
}

void kiln_auto_report_free(kiln_auto_report *r) {
  if (!r) return;
  kiln__free(r->layers);
  r->layers = NULL;
  r->n_layers = 0;
}

typedef struct actx {
  const char *path;
  kiln_auto_opts o;
  kiln_error *err;
  kiln_model_opts mo;
  size_t n_in, samples, batch;
  const char *names[MAX_INPUTS];
  kiln_tensor in[MAX_INPUTS];
  int ids;                 /* ppl: the token-id input */
  size_t n_batches;
  float **ref;             /* the reference's first output per batch */
  size_t *ref_count;
  kiln_tensor ref_shape[1];
  double ref_ms;           /* reference latency per pass over the data */
  char tmp[4096];
} actx;

static void actx_free(actx *a) {
  for (size_t i = 0; i < a->n_in; i++) kiln_tensor_release(&a->in[i]);
  for (size_t b = 0; a->ref && b < a->n_batches; b++) kiln__free(a->ref[b]);
  kiln__free(a->ref);
  kiln__free(a->ref_count);
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Runs model m over the data; with `keep` stores its outputs as the reference, else compares
   against the reference and sets *metric. *ms: the time of the runs. */
static kiln_status run_all(actx *a, kiln_model *m, bool keep, double *metric, double *ms) {
  kiln_session *s = NULL;
  kiln_status st = kiln_session_create(m, &s, a->err);
  kiln__quant_acc acc = {0};
  kiln__lm_acc lm = {0};
  int64_t *tgt = NULL;
  double t0 = now_ms();
  for (size_t b = 0; st == KILN_OK && b < a->n_batches; b++) {
    size_t begin = b * a->batch, count = a->samples - begin < a->batch ? a->samples - begin : a->batch;
    kiln_tensor views[MAX_INPUTS];
    for (size_t i = 0; i < a->n_in; i++) {
      views[i] = a->in[i];
      size_t row = kiln_tensor_nbytes(&a->in[i]) / (size_t)a->in[i].dims[0];
      views[i].dims[0] = (int64_t)count;
      views[i].data = (char *)a->in[i].data + begin * row;
    }
    if ((st = kiln_session_run(s, a->names, views, a->n_in, a->err)) != KILN_OK) break;
    kiln_tensor out;
    kiln_session_output(s, 0, &out);
    size_t n = kiln_tensor_count(&out);
    if (out.dtype != KILN_DTYPE_FLOAT || out.rank < 1 || n == 0) {
      st = kiln__fail(a->err, KILN_UNSUPPORTED, "the first output must be non-empty float32");
      break;
    }
    size_t c = (size_t)out.dims[out.rank - 1];
    if (keep) {
      if (!(a->ref[b] = kiln__malloc(n * sizeof(float)))) {
        st = kiln__fail(a->err, KILN_NO_MEMORY, "out of memory");
        break;
      }
      memcpy(a->ref[b], out.data, n * sizeof(float));
      a->ref_count[b] = n;
      a->ref_shape[0].rank = out.rank;
      memcpy(a->ref_shape[0].dims, out.dims, sizeof out.dims);
      continue;
    }
    if (n != a->ref_count[b]) {
      st = kiln__fail(a->err, KILN_INTERNAL, "a variant's output has another shape");
      break;
    }
    size_t rows = n / c;
    kiln__quant_acc_add(&acc, a->ref[b], out.data, rows, c, NULL);
    if (a->o.metric == KILN_AUTO_PPL) {
      const kiln_tensor *ids = &a->in[a->ids];
      size_t T = (size_t)ids->dims[1];
      if (out.rank != 3 || (size_t)out.dims[1] != T || rows != count * T) {
        st = kiln__fail(a->err, KILN_INVALID_ARGUMENT,
                        "ppl budget: the first output must be logits [B, T, V] over the ids");
        break;
      }
      int64_t *t2 = kiln__realloc(tgt, rows * sizeof *t2);
      if (!t2) {
        st = kiln__fail(a->err, KILN_NO_MEMORY, "out of memory");
        break;
      }
      tgt = t2;
      for (size_t r = 0; r < rows; r++)
        tgt[r] = r % T + 1 < T ? kiln__load_i64(ids->data, ids->dtype, begin * T + r + 1) : -1;
      kiln__lm_acc_add(&lm, a->ref[b], out.data, rows, c, tgt);
    }
  }
  if (ms) *ms = now_ms() - t0;
  kiln__free(tgt);
  kiln_session_free(s);
  if (st != KILN_OK || keep) return st;
  kiln_validate_report r;
  kiln__quant_acc_report(&acc, false, &r);
  switch (a->o.metric) {
  case KILN_AUTO_TOP1: *metric = r.top1_agreement; break;
  case KILN_AUTO_COSINE: *metric = r.cosine; break;
  case KILN_AUTO_PPL:
    *metric = lm.tokens ? exp((lm.cand_nll - lm.ref_nll) / (double)lm.tokens) : NAN;
    break;
  }
  return KILN_OK;
}

static bool meets(const actx *a, double m) {
  return a->o.metric == KILN_AUTO_PPL ? m <= a->o.budget : m >= a->o.budget;
}

/* How far from lossless: 0 is exact, larger is worse. */
static double loss(const actx *a, double m) {
  if (isnan(m)) return INFINITY;
  return a->o.metric == KILN_AUTO_PPL ? m - 1.0 : 1.0 - m;
}

/* Quantizes with these per-node formats and measures the result. *ok false (no error) when the
   quantizer has nothing to do with them, or the result uses an op Kiln cannot run (UNSUPPORTED). */
static kiln_status evaluate(actx *a, const kiln_quant_node_format *nodes, size_t n, bool *ok,
                            double *metric, double *ms, kiln_quant_stats *qs) {
  kiln_quant_opts qo = kiln_quant_opts_default();
  qo.format = KILN_QUANT_NONE;
  qo.nodes = nodes;
  qo.n_nodes = n;
  qo.calib_dir = a->o.calib_dir;
  qo.intra_threads = a->o.intra_threads;
  kiln_error e = {0};
  kiln_status st = kiln_quantize_file_ex(a->path, a->tmp, &qo, qs, &e);
  *ok = st == KILN_OK;
  if (st == KILN_UNSUPPORTED) return KILN_OK;
  if (st != KILN_OK) {
    *a->err = e;
    return st;
  }
  kiln_model *m = NULL;
  st = kiln_model_load(a->tmp, &a->mo, &m, &e);
  unlink(a->tmp);
  if (st == KILN_UNSUPPORTED) {
    /* a format this build writes but cannot run (an op without a kernel): not a candidate */
    fprintf(stderr, "kiln quantize --auto: skipping a candidate Kiln cannot run: %s\n", e.message);
    *ok = false;
    return KILN_OK;
  }
  if (st != KILN_OK) *a->err = e;
  if (st == KILN_OK) {
    double best = INFINITY, t;
    /* latency: the best of three passes, the least disturbed by other load */
    for (int rep = 0; st == KILN_OK && rep < (a->o.objective == KILN_AUTO_LATENCY ? 3 : 1); rep++) {
      st = run_all(a, m, false, metric, &t);
      if (t < best) best = t;
    }
    *ms = best;
  }
  kiln_model_free(m);
  return st;
}

static kiln_status load_data(actx *a, kiln_error *err) {
  kiln_model *m = NULL;
  kiln_status st = kiln_model_load(a->path, &a->mo, &m, err);
  if (st != KILN_OK) return st;
  size_t n = kiln_model_input_count(m);
  if (n > MAX_INPUTS) st = kiln__fail(err, KILN_UNSUPPORTED, "more than %d inputs", MAX_INPUTS);
  a->ids = -1;
  for (size_t i = 0; st == KILN_OK && i < n; i++) {
    kiln_io_info info;
    kiln_model_input_info(m, i, &info);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", a->o.calib_dir, info.name);
    if ((st = kiln_tensor_read_npy(path, &a->in[i], err)) != KILN_OK) break;
    a->n_in = i + 1;
    a->names[i] = info.name; /* valid while m lives: copied below */
    if (a->in[i].rank < 1 || (i > 0 && a->in[i].dims[0] != a->in[0].dims[0]) || a->in[i].dims[0] < 1)
      st = kiln__fail(err, KILN_INVALID_ARGUMENT, "%s: inputs must share a non-empty first dim", path);
    kiln_dtype t = a->in[i].dtype;
    if (a->ids < 0 && (t == KILN_DTYPE_INT64 || t == KILN_DTYPE_INT32) && a->in[i].rank == 2)
      a->ids = (int)i;
  }
  if (st == KILN_OK && a->o.metric == KILN_AUTO_PPL && a->ids < 0)
    st = kiln__fail(err, KILN_INVALID_ARGUMENT, "a ppl budget needs an integer token-id input [B, T]");
  if (st == KILN_OK) {
    a->samples = (size_t)a->in[0].dims[0];
    kiln_io_info info;
    kiln_model_input_info(m, 0, &info);
    a->batch = a->o.batch ? a->o.batch : info.rank > 0 && info.dims[0] > 0 ? (size_t)info.dims[0] : 64;
    a->n_batches = (a->samples + a->batch - 1) / a->batch;
    a->ref = kiln__calloc(a->n_batches, sizeof *a->ref);
    a->ref_count = kiln__calloc(a->n_batches, sizeof *a->ref_count);
    if (!a->ref || !a->ref_count) st = kiln__fail(err, KILN_NO_MEMORY, "out of memory");
  }
  if (st == KILN_OK) {
    double t = INFINITY, x;
    st = run_all(a, m, true, NULL, &x);
    t = x;
    for (int rep = 0; st == KILN_OK && rep < (a->o.objective == KILN_AUTO_LATENCY ? 2 : 0); rep++) {
      st = run_all(a, m, true, NULL, &x);
      if (x < t) t = x;
    }
    a->ref_ms = t;
  }
  /* input names belong to the model: keep private copies */
  for (size_t i = 0; i < a->n_in; i++) {
    char *c = kiln__strdup(a->names[i]);
    a->names[i] = c;
    if (!c && st == KILN_OK) st = kiln__fail(err, KILN_NO_MEMORY, "out of memory");
  }
  kiln_model_free(m);
  return st;
}

typedef struct cand {
  kiln_quant_format f;
  double metric, cost; /* cost: weight bytes, or ms */
} cand;

typedef struct alayer {
  char *name;
  cand c[MAX_FORMATS];
  int n;               /* formats that meet the budget alone, cheapest first */
  double sens;         /* loss of the cheapest one */
} alayer;

static int cand_cmp(const void *x, const void *y) {
  const cand *a = x, *b = y;
  return a->cost < b->cost ? -1 : a->cost > b->cost;
}

static int layer_cmp(const void *x, const void *y) {
  const alayer *a = x, *b = y;
  if ((a->n > 0) != (b->n > 0)) return a->n > 0 ? -1 : 1;
  return a->sens < b->sens ? -1 : a->sens > b->sens;
}

kiln_status kiln_quantize_auto_file(const char *path, const char *out_path,
                                    const kiln_auto_opts *opts, kiln_auto_report *report,
                                    kiln_error *err) {
  memset(report, 0, sizeof *report);
  if (!path || !out_path || !opts || !opts->calib_dir)
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "quantize --auto: a model, an output path and calibration data are needed");
  actx a = {.path = path, .err = err, .mo = kiln_model_opts_default()};
  a.o = kiln_auto_opts_default();
  memcpy(&a.o, opts, opts->struct_size < sizeof a.o ? opts->struct_size : sizeof a.o);
  if (!(a.o.budget > 0) || (a.o.metric != KILN_AUTO_PPL && a.o.budget > 1))
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "quantize --auto: budget %g is out of range",
                      a.o.budget);
  a.mo.intra_threads = a.o.intra_threads;
  /* the candidate formats: the given ones, else every one in the quantizer's table */
  kiln_quant_format fmts[MAX_FORMATS];
  size_t nf = 0;
  if (a.o.formats) {
    for (size_t k = 0; k < a.o.n_formats && nf < MAX_FORMATS; k++)
      if (a.o.formats[k] != KILN_QUANT_NONE) fmts[nf++] = a.o.formats[k];
  } else {
    for (int f = 1; f < MAX_FORMATS && nf < MAX_FORMATS; f++)
      if (strcmp(kiln_quant_format_name((kiln_quant_format)f), "?")) fmts[nf++] = (kiln_quant_format)f;
  }
  if (nf == 0) return kiln__fail(err, KILN_INVALID_ARGUMENT, "quantize --auto: no formats");
  const char *tmpdir = getenv("TMPDIR");
  snprintf(a.tmp, sizeof a.tmp, "%s/kiln_auto_XXXXXX", tmpdir && tmpdir[0] ? tmpdir : "/tmp");
  int fd = mkstemp(a.tmp);
  if (fd < 0) return kiln__fail(err, KILN_IO_ERROR, "cannot create a temporary file");
  close(fd);
  unlink(a.tmp);

  kiln__graph *g = NULL;
  alayer *L = NULL;
  size_t nl = 0;
  kiln_quant_node_format *sel = NULL;
  kiln_status st = kiln__onnx_import_file(path, &g, err);
  if (st == KILN_OK) kiln__quant_const_to_init(g); /* find weights written as Constant nodes */
  if (st == KILN_OK) st = load_data(&a, err);
  if (st == KILN_OK) {
    size_t cap = 0;
    for (int i = 0; i < g->n_nodes; i++) cap += kiln__is_weight_layer(g, &g->nodes[i]);
    L = kiln__calloc(cap + 1, sizeof *L);
    sel = kiln__calloc(cap + 1, sizeof *sel);
    if (!L || !sel) st = kiln__fail(err, KILN_NO_MEMORY, "out of memory");
    for (int i = 0; st == KILN_OK && i < g->n_nodes; i++) {
      if (!kiln__is_weight_layer(g, &g->nodes[i])) continue;
      if (!(L[nl].name = kiln__strdup(kiln__quant_node_name(g, &g->nodes[i]))))
        st = kiln__fail(err, KILN_NO_MEMORY, "out of memory");
      else nl++;
    }
  }
  if (st == KILN_OK && nl == 0)
    st = kiln__fail(err, KILN_UNSUPPORTED, "nothing to quantize: no Conv, MatMul or Gemm with a constant float32 weight");
  if (st == KILN_OK && a.o.verbose)
    printf("sensitivity: %zu layers x %zu formats on %zu samples (reference %.1f ms per pass)\n",
           nl, nf, a.samples, a.ref_ms);
  /* 2. each layer alone with each format */
  for (size_t l = 0; st == KILN_OK && l < nl; l++) {
    for (size_t k = 0; st == KILN_OK && k < nf; k++) {
      kiln_quant_node_format one = {L[l].name, fmts[k]};
      bool ok;
      double m = NAN, ms = 0;
      kiln_quant_stats qs;
      st = evaluate(&a, &one, 1, &ok, &m, &ms, &qs);
      report->evaluations += ok;
      if (st != KILN_OK || !ok) continue;
      double cost = a.o.objective == KILN_AUTO_LATENCY ? ms : (double)qs.weight_bytes_after;
      bool fits = meets(&a, m) &&
                  (a.o.objective != KILN_AUTO_LATENCY || ms < a.ref_ms * 0.99);
      if (a.o.verbose)
        printf("  %-40.40s %-13s metric %.6f  %s %.1f%s\n", L[l].name, kiln_quant_format_name(fmts[k]),
               m, a.o.objective == KILN_AUTO_LATENCY ? "ms" : "weight KiB",
               a.o.objective == KILN_AUTO_LATENCY ? ms : cost / 1024,
               fits ? "" : meets(&a, m) ? "  (not faster)" : "  (misses the budget alone)");
      if (fits) L[l].c[L[l].n++] = (cand){fmts[k], m, cost};
    }
    qsort(L[l].c, (size_t)L[l].n, sizeof L[l].c[0], cand_cmp);
    L[l].sens = L[l].n ? loss(&a, L[l].c[0].metric) : INFINITY;
  }
  /* 3. greedy, least sensitive first */
  if (st == KILN_OK) qsort(L, nl, sizeof *L, layer_cmp);
  size_t ns = 0;
  double final_metric = NAN;
  for (size_t l = 0; st == KILN_OK && l < nl; l++) {
    for (int k = 0; st == KILN_OK && k < L[l].n; k++) {
      sel[ns] = (kiln_quant_node_format){L[l].name, L[l].c[k].f};
      bool ok;
      double m = NAN, ms;
      kiln_quant_stats qs;
      st = evaluate(&a, sel, ns + 1, &ok, &m, &ms, &qs);
      report->evaluations += ok;
      bool keep = st == KILN_OK && ok && meets(&a, m) &&
                  (a.o.objective != KILN_AUTO_LATENCY || ms < a.ref_ms * 0.99);
      if (a.o.verbose && st == KILN_OK)
        printf("  + %-38.38s %-13s combined metric %.6f: %s\n", L[l].name,
               kiln_quant_format_name(L[l].c[k].f), m, keep ? "kept" : "backed off");
      if (keep) {
        ns++;
        final_metric = m;
        break;
      }
    }
  }
  if (st == KILN_OK && ns == 0)
    st = kiln__fail(err, KILN_UNSUPPORTED,
                    "no layer can be quantized within the budget (%s %g)",
                    a.o.metric == KILN_AUTO_TOP1 ? "top1" : a.o.metric == KILN_AUTO_COSINE ? "cosine" : "ppl",
                    a.o.budget);
  if (st == KILN_OK) {
    kiln_quant_opts qo = kiln_quant_opts_default();
    qo.format = KILN_QUANT_NONE;
    qo.nodes = sel;
    qo.n_nodes = ns;
    qo.calib_dir = a.o.calib_dir;
    kiln_quant_stats qs;
    st = kiln_quantize_file_ex(path, out_path, &qo, &qs, err);
    report->weight_bytes_before = qs.weight_bytes_before;
    report->weight_bytes_after = qs.weight_bytes_after;
    report->metric = final_metric;
  }
  if (st == KILN_OK && !(report->layers = kiln__calloc(nl + 1, sizeof *report->layers)))
    st = kiln__fail(err, KILN_NO_MEMORY, "out of memory");
  for (size_t l = 0; st == KILN_OK && l < nl; l++) {
    kiln_auto_layer *r = &report->layers[report->n_layers++];
    snprintf(r->name, sizeof r->name, "%s", L[l].name);
    r->format = KILN_QUANT_NONE;
    for (size_t s = 0; s < ns; s++)
      if (sel[s].node == L[l].name) r->format = sel[s].format;
    r->sensitivity = L[l].sens;
  }
  for (size_t l = 0; L && l < nl; l++) kiln__free(L[l].name);
  for (size_t i = 0; i < a.n_in; i++) kiln__free((void *)a.names[i]);
  kiln__free(L);
  kiln__free(sel);
  kiln__graph_free(g);
  actx_free(&a);
  if (st != KILN_OK) kiln_auto_report_free(report);
  return st;
}
