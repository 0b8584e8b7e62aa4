/* Accuracy validation: run a candidate model (a quantized variant) and its reference on the same
 * inputs and say how far apart their first outputs are. */
#include <math.h>
#include <stdio.h>

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

/* ---- running both models ---------------------------------------------------------------------- */

enum { MAX_INPUTS = 64 }; /* graph inputs a validation feeds */

typedef struct vstate {
  kiln_model *m[2];
  kiln_session *s[2];
  size_t n_in;
  const char *names[MAX_INPUTS];
  kiln_tensor in[MAX_INPUTS];
  kiln_tensor labels;
  int64_t *lab;
} vstate;

static void vstate_free(vstate *v) {
  for (int k = 0; k < 2; k++) {
    kiln_session_free(v->s[k]);
    kiln_model_free(v->m[k]);
  }
  for (size_t i = 0; i < v->n_in; i++) kiln_tensor_release(&v->in[i]);
  kiln_tensor_release(&v->labels);
  kiln__free(v->lab);
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
  return KILN_OK;
}

kiln_status kiln_validate_files(const char *reference, const char *candidate,
                                const char *data_dir, const char *labels,
                                const kiln_validate_opts *opts, kiln_validate_report *out,
                                kiln_error *err) {
  memset(out, 0, sizeof *out);
  if (!reference || !candidate || !data_dir)
    return kiln__fail(err, KILN_INVALID_ARGUMENT,
                      "validate: a reference, a candidate and a data folder are needed");
  kiln_validate_opts o = kiln_validate_opts_default();
  if (opts) {
    o.intra_threads = opts->intra_threads;
    o.batch = opts->batch;
  }
  vstate v = {0};
  kiln_model_opts mo = kiln_model_opts_default();
  mo.intra_threads = o.intra_threads;
  const char *paths[2] = {reference, candidate};
  kiln_status st = KILN_OK;
  for (int k = 0; k < 2 && st == KILN_OK; k++) {
    st = kiln_model_load(paths[k], &mo, &v.m[k], err);
    if (st == KILN_OK) st = kiln_session_create(v.m[k], &v.s[k], err);
  }
  size_t samples = 0;
  if (st == KILN_OK) st = load_inputs(&v, data_dir, &samples, err);
  if (st == KILN_OK && labels) st = load_labels(&v, labels, err);
  size_t batch = o.batch;
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
  if (st == KILN_OK) {
    kiln__quant_acc_report(&acc, v.lab != NULL, out);
    out->samples = samples;
    out->classes = classes;
  }
  vstate_free(&v);
  return st;
}
