/* Pass reports: the optimizer's log for one model, behind the public API. */
#include <stdio.h>

#include "kiln/passes.h"
#include "onnx/export.h"
#include "onnx/import.h"
#include "passes/passes.h"

struct kiln_pass_report {
  kiln__pass_log log;
};

kiln_status kiln_pass_report_load(const char *path, int opt_level, kiln_pass_report **out,
                                  kiln_error *err) {
  *out = NULL;
  kiln_pass_report *r = kiln__calloc(1, sizeof *r);
  kiln__graph *g = NULL;
  kiln_status st = r ? kiln__onnx_import_file(path, &g, err)
                     : kiln__fail(err, KILN_NO_MEMORY, "out of memory");
  if (st == KILN_OK)
    st = kiln__optimize_ex(g, opt_level < 0 ? KILN__OPT_MAX : opt_level, &r->log, err);
  if (st != KILN_OK) {
    kiln__err_prefix(err, "%s", path);
    kiln_pass_report_free(r);
    r = NULL;
  }
  kiln__graph_free(g);
  *out = r;
  return st;
}

void kiln_pass_report_free(kiln_pass_report *r) {
  if (!r) return;
  kiln__pass_log_clear(&r->log);
  kiln__free(r);
}

void kiln_pass_report_summary(const kiln_pass_report *r, int *level, size_t *nodes_before,
                              size_t *nodes_after) {
  if (level) *level = r->log.level;
  if (nodes_before) *nodes_before = r->log.nodes_in;
  if (nodes_after) *nodes_after = r->log.nodes_out;
}

size_t kiln_pass_report_count(const kiln_pass_report *r) { return r->log.n; }

kiln_status kiln_pass_report_get(const kiln_pass_report *r, size_t i, kiln_pass_change *c) {
  if (i >= r->log.n) return KILN_INVALID_ARGUMENT;
  const kiln__pass_rec *rec = &r->log.recs[i];
  c->pass = rec->pass;
  c->level = rec->level;
  c->round = rec->round;
  c->nodes_before = rec->nodes_before;
  c->nodes_after = rec->nodes_after;
  c->matches = rec->matches;
  c->where = rec->where ? rec->where : "";
  return KILN_OK;
}

const char *kiln_pass_name(size_t i, int *level) { return kiln__pass_name_at(i, level); }

kiln_status kiln_optimize_file(const char *path, const char *out_path, int opt_level,
                               kiln_error *err) {
  kiln__graph *g = NULL;
  kiln_status st = kiln__onnx_import_file(path, &g, err);
  if (st == KILN_OK) st = kiln__optimize(g, opt_level < 0 ? KILN__OPT_MAX : opt_level, err);
  if (st == KILN_OK) st = kiln__onnx_export(g, "kiln-optimize", out_path, err);
  if (st != KILN_OK) kiln__err_prefix(err, "%s", path);
  kiln__graph_free(g);
  return st;
}
