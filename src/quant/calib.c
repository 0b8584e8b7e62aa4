/* Calibration for static quantization: the ranges of activation tensors on a folder of inputs.
 *
 * The graph is exported with the wanted tensors as its outputs (to a temporary file, loaded and
 * removed again), run batch by batch on <calib_dir>/<input name>.npy, and each tensor's range
 * taken by opts.method:
 *   minmax      the observed [min, max];
 *   percentile  t = the opts.percentile-th percentile of |x| (2048-bin histogram over [0, max|x|],
 *               t is the upper edge of the bin where the count reaches it); [max(min,-t), min(max,t)];
 *   entropy     t = TensorRT's KL threshold on the same histogram of |x|: for each candidate i in
 *               [128, 2048] bins, P = the first i bins with the rest added to the last one, Q = those
 *               i bins merged into 128 levels and spread back over their non-empty bins; t = the
 *               upper edge of bin i with the least KL(P || Q); clamped as for percentile.
 * Histograms need the range first, so percentile and entropy run the data twice. */
#define _POSIX_C_SOURCE 200809L /* mkstemp, close, unlink */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "onnx/export.h"
#include "quant/quant.h"

void kiln__calib_minmax(const float *x, size_t n, float *lo, float *hi) {
  float a = *lo, b = *hi;
  for (size_t i = 0; i < n; i++) {
    if (x[i] < a) a = x[i];
    if (x[i] > b) b = x[i];
  }
  *lo = a, *hi = b;
}

void kiln__calib_hist_add(uint64_t *bins, size_t nb, float amax, const float *x, size_t n) {
  if (!(amax > 0)) {
    bins[0] += n;
    return;
  }
  double inv = (double)nb / amax;
  for (size_t i = 0; i < n; i++) {
    double b = fabs((double)x[i]) * inv;
    size_t k = b >= (double)(nb - 1) ? nb - 1 : (size_t)b; /* NaN lands in bin 0 */
    bins[k]++;
  }
}

float kiln__calib_percentile(const uint64_t *bins, size_t nb, float amax, double pct) {
  uint64_t total = 0;
  for (size_t i = 0; i < nb; i++) total += bins[i];
  if (!total) return 0;
  double want = pct / 100.0 * (double)total, acc = 0;
  for (size_t i = 0; i < nb; i++) {
    acc += (double)bins[i];
    if (acc >= want) return (float)((double)amax * (double)(i + 1) / (double)nb);
  }
  return amax;
}

float kiln__calib_entropy(const uint64_t *bins, size_t nb, float amax, size_t nq,
                          double *work) {
  double *p = work, *qd = work + nb;
  size_t best_i = nb;
  double best_kl = INFINITY;
  for (size_t i = nq; i <= nb; i++) {
    double outliers = 0, psum = 0;
    for (size_t k = i; k < nb; k++) outliers += (double)bins[k];
    for (size_t k = 0; k < i; k++) p[k] = (double)bins[k];
    p[i - 1] += outliers;
    for (size_t k = 0; k < i; k++) psum += p[k];
    if (psum <= 0) continue;
    /* Q: the i bins (without the outliers) merged into nq levels, each level's count spread
       evenly over its non-empty bins */
    double qsum = 0;
    for (size_t j = 0; j < nq; j++) {
      size_t b0 = j * i / nq, b1 = (j + 1) * i / nq;
      double cnt = 0;
      size_t nz = 0;
      for (size_t k = b0; k < b1; k++) {
        cnt += (double)bins[k];
        nz += bins[k] != 0;
      }
      for (size_t k = b0; k < b1; k++) qd[k] = bins[k] && nz ? cnt / (double)nz : 0;
      qsum += cnt;
    }
    double kl = 0;
    for (size_t k = 0; k < i; k++) {
      if (p[k] <= 0) continue;
      double pk = p[k] / psum;
      /* a bin P has and Q lacks (only the last, from the outliers): a small floor, not +inf */
      double qk = qsum > 0 && qd[k] > 0 ? qd[k] / qsum : 1e-9;
      kl += pk * log(pk / qk);
    }
    if (kl < best_kl) best_kl = kl, best_i = i;
  }
  return (float)((double)amax * (double)best_i / (double)nb);
}

void kiln__calib_qparams(float lo, float hi, float *scale, uint8_t *zp) {
  /* the range must hold 0 exactly (zero padding, ReLU outputs) */
  if (lo > 0) lo = 0;
  if (hi < 0) hi = 0;
  float s = (hi - lo) / 255.0f;
  if (!(s > 0) || !isfinite(s)) {
    *scale = 1.0f, *zp = 0;
    return;
  }
  float z = roundf(-lo / s);
  *scale = s;
  *zp = (uint8_t)(z < 0 ? 0 : z > 255 ? 255 : z);
}

/* ---- running the graph on the calibration data ------------------------------------------------ */

enum { MAX_INPUTS = 64 };

typedef struct cdata {
  kiln__qctx *q;
  const int *vals;
  size_t n;
  size_t n_in;
  const char *names[MAX_INPUTS];
  kiln_tensor in[MAX_INPUTS];
  size_t samples, batch;
  kiln_model *m;
  kiln_session *s;
  int *out_of;      /* vals[k]'s index among the model's outputs, or -(input index) - 1 */
  float *amax;
  uint64_t *hist;   /* n x KILN__CALIB_BINS */
} cdata;

static void cdata_free(cdata *c) {
  kiln_session_free(c->s);
  kiln_model_free(c->m);
  for (size_t i = 0; i < c->n_in; i++) kiln_tensor_release(&c->in[i]);
  kiln__free(c->out_of);
  kiln__free(c->amax);
  kiln__free(c->hist);
}

/* <dir>/<input>.npy for every graph input, all with the same first dim (the samples). */
static kiln_status load_data(cdata *c, const char *dir) {
  kiln__graph *g = c->q->g;
  kiln_error *err = c->q->err;
  if (g->n_inputs > MAX_INPUTS)
    return kiln__fail(err, KILN_UNSUPPORTED, "calibration: %d graph inputs (at most %d)",
                      g->n_inputs, MAX_INPUTS);
  for (int i = 0; i < g->n_inputs; i++) {
    const kiln__value *v = &g->values[g->inputs[i]];
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.npy", dir, v->name);
    kiln_status st = kiln_tensor_read_npy(path, &c->in[i], err);
    if (st != KILN_OK) return st;
    c->names[i] = v->name;
    c->n_in = (size_t)i + 1;
    if (c->in[i].rank < 1 || c->in[i].dims[0] < 1)
      return kiln__fail(err, KILN_INVALID_ARGUMENT,
                        "%s: no samples (calibration inputs are batched along their first dim)",
                        path);
    if (i == 0) c->samples = (size_t)c->in[0].dims[0];
    else if ((size_t)c->in[i].dims[0] != c->samples)
      return kiln__fail(err, KILN_INVALID_ARGUMENT, "%s: %lld samples, but %s.npy has %zu", path,
                        (long long)c->in[i].dims[0], c->names[0], c->samples);
    /* a model with a fixed batch dim is run in batches of that size */
    if (i == 0) c->batch = v->rank > 0 && v->dims[0] > 0 ? (size_t)v->dims[0] : 64;
  }
  if (c->q->opts->calib_samples && c->q->opts->calib_samples < c->samples)
    c->samples = c->q->opts->calib_samples;
  return KILN_OK;
}

/* The graph with vals (those not graph inputs) as its outputs, loaded as a model. */
static kiln_status load_model(cdata *c) {
  kiln__graph *g = c->q->g;
  kiln_error *err = c->q->err;
  int *outs = kiln__malloc((c->n + 1) * sizeof *outs);
  kiln_dtype *saved = kiln__malloc((c->n + 1) * sizeof *saved);
  if (!outs || !saved) {
    kiln__free(outs), kiln__free(saved);
    return kiln__qoom(c->q);
  }
  int n_out = 0;
  for (size_t k = 0; k < c->n; k++) {
    kiln__value *v = &g->values[c->vals[k]];
    saved[k] = v->dtype;
    if (v->is_input) {
      for (int i = 0; i < g->n_inputs; i++)
        if (g->inputs[i] == c->vals[k]) c->out_of[k] = -i - 1;
      continue;
    }
    if (v->dtype == KILN_DTYPE_UNDEFINED) v->dtype = KILN_DTYPE_FLOAT; /* activations of float ops */
    c->out_of[k] = n_out;
    outs[n_out++] = c->vals[k];
  }
  kiln_status st = KILN_OK;
  if (n_out > 0) {
    const char *tmp = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/kiln_calib_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
      st = kiln__fail(err, KILN_IO_ERROR, "calibration: cannot create a temporary file in %s",
                      tmp && tmp[0] ? tmp : "/tmp");
    } else {
      close(fd);
      int *orig = g->outputs, n_orig = g->n_outputs;
      g->outputs = outs, g->n_outputs = n_out;
      st = kiln__onnx_export(g, "kiln-calibrate", path, err);
      g->outputs = orig, g->n_outputs = n_orig;
      if (st == KILN_OK) {
        kiln_model_opts mo = kiln_model_opts_default();
        mo.intra_threads = c->q->opts->intra_threads;
        st = kiln_model_load(path, &mo, &c->m, err);
        if (st == KILN_OK) st = kiln_session_create(c->m, &c->s, err);
        if (st != KILN_OK) kiln__err_prefix(err, "calibration model");
      }
      unlink(path);
    }
  }
  for (size_t k = 0; k < c->n; k++) g->values[c->vals[k]].dtype = saved[k];
  kiln__free(outs);
  kiln__free(saved);
  return st;
}

/* One pass over the data: pass 0 takes min and max, pass 1 fills the histograms of |x|. */
static kiln_status run_pass(cdata *c, int pass, float *lo, float *hi) {
  kiln_error *err = c->q->err;
  kiln_tensor views[MAX_INPUTS];
  for (size_t b = 0; b < c->samples; b += c->batch) {
    size_t count = c->samples - b < c->batch ? c->samples - b : c->batch;
    for (size_t i = 0; i < c->n_in; i++) {
      views[i] = c->in[i];
      size_t row = kiln_tensor_nbytes(&c->in[i]) / (size_t)c->in[i].dims[0];
      views[i].dims[0] = (int64_t)count;
      views[i].data = (char *)c->in[i].data + b * row;
    }
    if (c->s) {
      kiln_status st = kiln_session_run(c->s, c->names, views, c->n_in, err);
      if (st != KILN_OK) {
        kiln__err_prefix(err, "calibration");
        return st;
      }
    }
    for (size_t k = 0; k < c->n; k++) {
      kiln_tensor t;
      if (c->out_of[k] < 0) t = views[-c->out_of[k] - 1];
      else kiln_session_output(c->s, (size_t)c->out_of[k], &t);
      if (t.dtype != KILN_DTYPE_FLOAT)
        return kiln__fail(err, KILN_UNSUPPORTED, "calibration: '%s' is %s, not float32",
                          c->q->g->values[c->vals[k]].name, kiln_dtype_name(t.dtype));
      size_t n = kiln_tensor_count(&t);
      if (pass == 0) kiln__calib_minmax(t.data, n, &lo[k], &hi[k]);
      else
        kiln__calib_hist_add(c->hist + k * KILN__CALIB_BINS, KILN__CALIB_BINS, c->amax[k],
                             t.data, n);
    }
  }
  return KILN_OK;
}

kiln_status kiln__calibrate(kiln__qctx *q, const int *vals, size_t n, float *lo, float *hi) {
  const kiln_quant_opts *o = q->opts;
  if (!o->calib_dir)
    return kiln__fail(q->err, KILN_INVALID_ARGUMENT,
                      "static int8 needs calibration data (a folder of <input>.npy; --calib DIR)");
  if (o->method == KILN_CALIB_PERCENTILE && !(o->percentile > 0 && o->percentile <= 100))
    return kiln__fail(q->err, KILN_INVALID_ARGUMENT, "percentile %g is not in (0, 100]",
                      o->percentile);
  if (o->method != KILN_CALIB_MINMAX && o->method != KILN_CALIB_PERCENTILE &&
      o->method != KILN_CALIB_ENTROPY)
    return kiln__fail(q->err, KILN_INVALID_ARGUMENT, "unknown calibration method %d",
                      (int)o->method);
  cdata c = {.q = q, .vals = vals, .n = n};
  for (size_t k = 0; k < n; k++) lo[k] = INFINITY, hi[k] = -INFINITY;
  kiln_status st = KILN_OK;
  if (!(c.out_of = kiln__calloc(n + 1, sizeof *c.out_of))) st = kiln__qoom(q);
  if (st == KILN_OK) st = load_data(&c, o->calib_dir);
  if (st == KILN_OK) st = load_model(&c);
  if (st == KILN_OK) st = run_pass(&c, 0, lo, hi);
  if (st == KILN_OK && o->method != KILN_CALIB_MINMAX) {
    c.amax = kiln__malloc((n + 1) * sizeof *c.amax);
    c.hist = kiln__calloc(n * KILN__CALIB_BINS + 1, sizeof *c.hist);
    if (!c.amax || !c.hist) st = kiln__qoom(q);
    for (size_t k = 0; st == KILN_OK && k < n; k++)
      c.amax[k] = fmaxf(fabsf(lo[k]), fabsf(hi[k]));
    if (st == KILN_OK) st = run_pass(&c, 1, lo, hi);
    double *work = st == KILN_OK ? kiln__malloc(2 * KILN__CALIB_BINS * sizeof *work) : NULL;
    if (st == KILN_OK && !work) st = kiln__qoom(q);
    for (size_t k = 0; st == KILN_OK && k < n; k++) {
      const uint64_t *h = c.hist + k * KILN__CALIB_BINS;
      float t = o->method == KILN_CALIB_PERCENTILE
                    ? kiln__calib_percentile(h, KILN__CALIB_BINS, c.amax[k], o->percentile)
                    : kiln__calib_entropy(h, KILN__CALIB_BINS, c.amax[k], KILN__CALIB_QBINS, work);
      if (lo[k] < -t) lo[k] = -t;
      if (hi[k] > t) hi[k] = t;
    }
    kiln__free(work);
  }
  for (size_t k = 0; st == KILN_OK && k < n; k++)
    if (!isfinite(lo[k]) || !isfinite(hi[k]))
      st = kiln__fail(q->err, KILN_INVALID_ARGUMENT,
                      "calibration: '%s' has no finite range (NaN or inf in the data?)",
                      q->g->values[vals[k]].name);
  cdata_free(&c);
  if (st != KILN_OK) kiln__err_prefix(q->err, "%s", o->calib_dir);
  return st;
}
