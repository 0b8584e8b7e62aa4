/* Per-node profiling (kiln_profile): the session's node loop times each node when a run is given a
   profile, and records it here into memory allocated when the profile was made. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "runtime/runtime.h"

typedef struct prof_event {
  uint32_t run, node;
  int64_t t0, dur; /* ns; t0 from the profile's base */
  uint64_t macs;
  int n_out;
  uint8_t dtype[KILN_PROFILE_MAX_OUTPUTS];
  int8_t rank[KILN_PROFILE_MAX_OUTPUTS];
  int64_t dims[KILN_PROFILE_MAX_OUTPUTS][KILN_MAX_RANK];
} prof_event;

typedef struct prof_run {
  int64_t t0, t1;
} prof_run;

struct kiln_profile {
  const kiln_model *m;
  size_t max_runs, n_runs, dropped;
  size_t cap_events, n_events;
  bool has_base;
  int64_t base;
  bool recording; /* the current run fits */
  prof_run *runs;
  prof_event *ev;
};

kiln_status kiln_profile_create(const kiln_model *m, size_t max_runs, kiln_profile **out,
                                kiln_error *err) {
  *out = NULL;
  size_t cap;
  if (!m || max_runs == 0)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "a profile needs a model and max_runs >= 1");
  if (!kiln__mul_ok(max_runs, (size_t)m->g->n_nodes, &cap) ||
      !kiln__mul_ok(cap, sizeof(prof_event), &(size_t){0}))
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "a profile of %zu runs is too large", max_runs);
  kiln_profile *p = kiln__calloc(1, sizeof *p);
  if (p) {
    p->runs = kiln__calloc(max_runs, sizeof *p->runs);
    p->ev = kiln__calloc(cap + 1, sizeof *p->ev);
  }
  if (!p || !p->runs || !p->ev) {
    kiln_profile_free(p);
    return kiln__fail(err, KILN_NO_MEMORY, "out of memory for a profile of %zu runs", max_runs);
  }
  p->m = m;
  p->max_runs = max_runs;
  p->cap_events = cap;
  *out = p;
  return KILN_OK;
}

void kiln_profile_free(kiln_profile *p) {
  if (!p) return;
  kiln__free(p->runs);
  kiln__free(p->ev);
  kiln__free(p);
}

void kiln_profile_clear(kiln_profile *p) {
  if (!p) return;
  p->n_runs = p->n_events = p->dropped = 0;
  p->has_base = p->recording = false;
}

kiln_status kiln__profile_run_begin(kiln_profile *p, const kiln_model *m, int64_t now,
                                    bool *recording, kiln_error *err) {
  if (p->m != m)
    return kiln__fail(err, KILN_INVALID_ARGUMENT, "the profile was made for another model");
  *recording = p->recording = p->n_runs < p->max_runs;
  if (!p->recording) {
    p->dropped++;
    return KILN_OK;
  }
  if (!p->has_base) {
    p->base = now;
    p->has_base = true;
  }
  p->runs[p->n_runs++] = (prof_run){now - p->base, now - p->base};
  return KILN_OK;
}

void kiln__profile_run_end(kiln_profile *p, int64_t now) {
  if (p->recording) p->runs[p->n_runs - 1].t1 = now - p->base;
}

static uint64_t count_of(const kiln_tensor *t) {
  return t && t->rank >= 0 ? (uint64_t)kiln_tensor_count(t) : 0;
}

static int64_t dim_or0(const kiln_tensor *t, int d) {
  if (!t || t->rank <= 0) return 0;
  if (d < 0) d += t->rank;
  return d >= 0 && d < t->rank ? t->dims[d] : 0;
}

/* A convolution's MACs: every output (input, for ConvTranspose) element takes one product per
   weight of its group's filter, W [M, C/group, k...] holding M filters. */
static uint64_t conv_macs(const kiln_tensor *per, const kiln_tensor *w) {
  int64_t m = dim_or0(w, 0);
  return m > 0 ? count_of(per) * (count_of(w) / (uint64_t)m) : 0;
}

/* Products behind one node, from its shapes: see kiln_profile_event.macs. */
static uint64_t node_macs(const kiln__node *n, const kiln_tensor *const *in, int n_in,
                          kiln_tensor *const *out) {
  const char *op = n->op_type;
  const char *dom = n->domain ? n->domain : "";
  bool onnx = !*dom || !strcmp(dom, "ai.onnx"), kiln = !strcmp(dom, "ai.kiln");
  const kiln_tensor *a = n_in > 0 ? in[0] : NULL, *y = n->n_out > 0 ? out[0] : NULL;
  if ((onnx && (!strcmp(op, "Conv") || !strcmp(op, "ConvInteger"))) ||
      (kiln && !strcmp(op, "FusedConv")))
    return n_in > 1 ? conv_macs(y, in[1]) : 0;
  if (onnx && !strcmp(op, "QLinearConv")) return n_in > 3 ? conv_macs(y, in[3]) : 0;
  if (kiln && !strcmp(op, "DwPwConv") && n_in > 3) {
    /* the depthwise conv's (T [N, C, OH, OW], kh kw each), then C per output of the 1x1 */
    int64_t k = dim_or0(in[3], 0), c = dim_or0(in[3], 1);
    if (k <= 0 || c <= 0) return 0;
    uint64_t t = count_of(y) / (uint64_t)k * (uint64_t)c;
    return t * (count_of(in[1]) / (uint64_t)c) + count_of(y) * (uint64_t)c;
  }
  if (onnx && !strcmp(op, "ConvTranspose")) return n_in > 1 ? conv_macs(a, in[1]) : 0;
  if ((onnx && (!strcmp(op, "MatMul") || !strcmp(op, "MatMulInteger") ||
                !strcmp(op, "QLinearMatMul"))) ||
      (kiln && (!strcmp(op, "FusedMatMul") || !strcmp(op, "QLinearMatMulDq")))) {
    bool ta = kiln && kiln__attr_int(n, "transA", 0);
    int64_t k = a && a->rank == 1 ? a->dims[0] : dim_or0(a, ta ? -2 : -1);
    return count_of(y) * (uint64_t)(k > 0 ? k : 0);
  }
  if ((onnx && !strcmp(op, "Gemm")) || (kiln && !strcmp(op, "FusedGemm"))) {
    int64_t k = dim_or0(a, kiln__attr_int(n, "transA", 0) ? 0 : 1);
    return count_of(y) * (uint64_t)(k > 0 ? k : 0);
  }
  if ((!strcmp(dom, "com.microsoft") && !strcmp(op, "MatMulIntegerToFloat")) ||
      (kiln && !strcmp(op, "RowQuantMatMul"))) {
    int64_t k = a && a->rank == 1 ? a->dims[0] : dim_or0(a, -1);
    return count_of(y) * (uint64_t)(k > 0 ? k : 0);
  }
  if (!strcmp(dom, "com.microsoft") && !strcmp(op, "MatMulNBits")) {
    int64_t k = kiln__attr_int(n, "K", 0);
    return count_of(y) * (uint64_t)(k > 0 ? k : 0);
  }
  if (kiln && !strcmp(op, "Attention") && n_in > 2) {
    /* Q K^T: [B, H, S, T] scores of D products each; then [B, H, S, Dv] outputs of T each
       (T is K's axis 1 in layout BSHD, 2 in BHSD) */
    bool bshd = !strcmp(kiln__attr_str(n, "layout", "BHSD"), "BSHD");
    int64_t t = dim_or0(in[1], bshd ? -3 : -2), d = dim_or0(in[0], -1);
    uint64_t scores = t > 0 && d > 0 ? count_of(a) / (uint64_t)d * (uint64_t)t : 0;
    return scores * (uint64_t)d + count_of(y) * (uint64_t)(t > 0 ? t : 0);
  }
  return 0;
}

void kiln__profile_node(kiln_profile *p, size_t node, const kiln__node *n,
                        const kiln_tensor *const *in, kiln_tensor *const *out, int64_t t0,
                        int64_t t1) {
  if (!p->recording || p->n_events == p->cap_events) return;
  prof_event *e = &p->ev[p->n_events++];
  e->run = (uint32_t)(p->n_runs - 1);
  e->node = (uint32_t)node;
  e->t0 = t0 - p->base;
  e->dur = t1 - t0;
  e->macs = node_macs(n, in, n->n_in, out);
  e->n_out = n->n_out;
  for (int o = 0; o < KILN_PROFILE_MAX_OUTPUTS; o++) {
    const kiln_tensor *t = o < n->n_out ? out[o] : NULL;
    e->rank[o] = (int8_t)(t && t->rank >= 0 ? t->rank : -1);
    e->dtype[o] = (uint8_t)(t ? t->dtype : KILN_DTYPE_UNDEFINED);
    for (int d = 0; d < e->rank[o]; d++) e->dims[o][d] = t->dims[d];
  }
  p->runs[p->n_runs - 1].t1 = t1 - p->base;
}

size_t kiln_profile_event_count(const kiln_profile *p) { return p->n_events; }
size_t kiln_profile_run_count(const kiln_profile *p) { return p->n_runs; }
size_t kiln_profile_dropped_runs(const kiln_profile *p) { return p->dropped; }

kiln_status kiln_profile_run_get(const kiln_profile *p, size_t r, double *start_us,
                                 double *dur_us) {
  if (r >= p->n_runs) return KILN_INVALID_ARGUMENT;
  *start_us = (double)p->runs[r].t0 / 1e3;
  *dur_us = (double)(p->runs[r].t1 - p->runs[r].t0) / 1e3;
  return KILN_OK;
}

kiln_status kiln_profile_event_get(const kiln_profile *p, size_t i, kiln_profile_event *ev) {
  if (i >= p->n_events) return KILN_INVALID_ARGUMENT;
  const prof_event *e = &p->ev[i];
  const kiln_model *m = p->m;
  const kiln__node *n = &m->g->nodes[e->node];
  const kiln__backend *be = m->backends[m->node_backend[e->node]];
  memset(ev, 0, sizeof *ev);
  ev->run = e->run;
  ev->node = e->node;
  ev->name = n->name ? n->name : "";
  ev->op_type = n->op_type;
  ev->domain = n->domain ? n->domain : "";
  ev->backend = be->name;
  ev->kernel = be->kernel_name ? be->kernel_name(m->node_state[e->node]) : be->name;
  ev->start_us = (double)e->t0 / 1e3;
  ev->dur_us = (double)e->dur / 1e3;
  ev->macs = e->macs;
  ev->n_outputs = e->n_out;
  for (int o = 0; o < KILN_PROFILE_MAX_OUTPUTS; o++) {
    kiln_tensor *t = &ev->outputs[o];
    t->rank = e->rank[o];
    t->dtype = (kiln_dtype)e->dtype[o];
    for (int d = 0; d < t->rank; d++) t->dims[d] = e->dims[o][d];
  }
  return KILN_OK;
}

/* ---- Chrome trace events ------------------------------------------------------------------- */

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (*c == '"' || *c == '\\') fprintf(f, "\\%c", *c);
    else if (*c < 0x20) fprintf(f, "\\u%04x", *c);
    else fputc(*c, f);
  }
  fputc('"', f);
}

kiln_status kiln_profile_write_json(const kiln_profile *p, const char *path, kiln_error *err) {
  FILE *f = fopen(path, "w");
  if (!f) return kiln__fail(err, KILN_IO_ERROR, "cannot open '%s' for writing", path);
  long pid = (long)getpid();
  fputs("[\n", f);
  for (size_t r = 0; r < p->n_runs; r++) {
    double ts, dur;
    kiln_profile_run_get(p, r, &ts, &dur);
    fprintf(f,
            "%s{\"cat\":\"Session\",\"pid\":%ld,\"tid\":0,\"ph\":\"X\",\"ts\":%.3f,"
            "\"dur\":%.3f,\"name\":\"model_run\",\"args\":{\"run\":%zu}}",
            r ? ",\n" : "", pid, ts, dur, r);
  }
  for (size_t i = 0; i < p->n_events; i++) {
    kiln_profile_event e;
    kiln_profile_event_get(p, i, &e);
    fprintf(f, ",\n{\"cat\":\"Node\",\"pid\":%ld,\"tid\":0,\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,"
            "\"name\":", pid, e.start_us, e.dur_us);
    json_str(f, *e.name ? e.name : e.op_type);
    fputs(",\"args\":{\"op_name\":", f);
    json_str(f, e.op_type);
    fputs(",\"domain\":", f);
    json_str(f, e.domain);
    fputs(",\"provider\":", f);
    json_str(f, e.backend);
    fputs(",\"kernel\":", f);
    json_str(f, e.kernel);
    fprintf(f, ",\"node_index\":%zu,\"run\":%zu,\"macs\":%llu,\"output_type_shape\":[", e.node,
            e.run, (unsigned long long)e.macs);
    int shown = e.n_outputs < KILN_PROFILE_MAX_OUTPUTS ? e.n_outputs : KILN_PROFILE_MAX_OUTPUTS;
    for (int o = 0, first = 1; o < shown; o++) {
      const kiln_tensor *t = &e.outputs[o];
      if (t->rank < 0) continue;
      fprintf(f, "%s{", first ? "" : ",");
      first = 0;
      json_str(f, kiln_dtype_name(t->dtype));
      fputs(":[", f);
      for (int d = 0; d < t->rank; d++) fprintf(f, "%s%lld", d ? "," : "", (long long)t->dims[d]);
      fputs("]}", f);
    }
    fputs("]}}", f);
  }
  fputs(p->n_runs == 0 && p->n_events == 0 ? "]\n" : "\n]\n", f);
  bool bad = ferror(f) != 0;
  if (fclose(f) != 0) bad = true;
  return bad ? kiln__fail(err, KILN_IO_ERROR, "cannot write '%s'", path) : KILN_OK;
}
