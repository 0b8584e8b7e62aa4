/* GET /metrics (Prometheus text format 0.0.4) and GET /v2/models/{m}/stats (Triton's statistics
   extension). The server's own counters live on srv_version; the runtime's come from
   kiln_runtime_model_stats. */
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "server_int.h"

const double srv_hist_bounds[SRV_HIST_N] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                            0.01,   0.025,   0.05,   0.1,   0.25,   0.5,
                                            1,      2.5,     5,      10};
const char *const srv_fail_names[SRV_FAIL_COUNT] = {"bad_request", "rejected", "cancelled",
                                                    "deadline_exceeded", "internal"};

#define LD(x) atomic_load_explicit(&(x), memory_order_relaxed)

void srv_hist_add(srv_hist *h, uint64_t ns) {
  size_t i = 0;
  while (i < SRV_HIST_N && (double)ns > srv_hist_bounds[i] * 1e9) i++;
  atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

static void head(srv_buf *b, const char *name, const char *type, const char *help) {
  srv_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Label values are model directory names: escape what the format requires. */
static void labels(srv_buf *b, const srv_model *m, const srv_version *v) {
  srv_buf_puts(b, "model=\"");
  for (const char *p = m->name; *p; p++) {
    if (*p == '"' || *p == '\\') srv_buf_put(b, "\\", 1);
    if (*p == '\n') srv_buf_puts(b, "\\n");
    else srv_buf_put(b, p, 1);
  }
  srv_buf_printf(b, "\",version=\"%s\"", v->label);
}

typedef void (*row_fn)(srv_buf *b, const srv_model *m, const srv_version *v,
                       const kiln_runtime_stats *st, const char *name);

static void for_each(const srv_repo *r, const kiln_runtime_stats *stats, srv_buf *b,
                     const char *name, row_fn fn) {
  size_t k = 0;
  for (size_t i = 0; i < r->n; i++)
    for (size_t j = 0; j < r->models[i]->n_versions; j++, k++)
      fn(b, r->models[i], r->models[i]->versions[j], &stats[k], name);
}

#define SIMPLE_ROW(fn_name, expr)                                                            \
  static void fn_name(srv_buf *b, const srv_model *m, const srv_version *v,                  \
                      const kiln_runtime_stats *st, const char *name) {                      \
    (void)st;                                                                                \
    srv_buf_printf(b, "%s{", name);                                                          \
    labels(b, m, v);                                                                         \
    srv_buf_printf(b, "} %llu\n", (unsigned long long)(expr));                               \
  }

static uint64_t total(const kiln_runtime_stats *st, size_t off) {
  uint64_t s = 0;
  for (int p = 0; p < KILN_PRIORITY_COUNT; p++)
    s += *(const uint64_t *)((const char *)&st->prio[p] + off);
  return s;
}

SIMPLE_ROW(row_success, LD(((srv_version *)v)->ok))
SIMPLE_ROW(row_inferences, total(st, offsetof(kiln_runtime_prio_stats, ok)))
SIMPLE_ROW(row_executions, st->runs)
SIMPLE_ROW(row_pending, total(st, offsetof(kiln_runtime_prio_stats, queue_depth)))
SIMPLE_ROW(row_breaker, st->breaker_state)
SIMPLE_ROW(row_breaker_opened, st->breaker_opened)
SIMPLE_ROW(row_ctx_hits, st->context_hits)
SIMPLE_ROW(row_ctx_misses, st->context_misses)
SIMPLE_ROW(row_ctx_waits, st->context_waits)

static void row_failure(srv_buf *b, const srv_model *m, const srv_version *v,
                        const kiln_runtime_stats *st, const char *name) {
  for (int f = 0; f < SRV_FAIL_COUNT; f++) {
    srv_buf_printf(b, "%s{", name);
    labels(b, m, v);
    srv_buf_printf(b, ",reason=\"%s\"} %llu\n", srv_fail_names[f],
                   (unsigned long long)LD(((srv_version *)v)->fail[f]));
  }
}

static void hist_rows(srv_buf *b, const srv_model *m, const srv_version *v, const srv_hist *h,
                      const char *name) {
  uint64_t cum = 0;
  for (int i = 0; i <= SRV_HIST_N; i++) {
    cum += LD(((srv_hist *)h)->bucket[i]);
    srv_buf_printf(b, "%s_bucket{", name);
    labels(b, m, v);
    if (i < SRV_HIST_N) srv_buf_printf(b, ",le=\"%g\"} %llu\n", srv_hist_bounds[i], (unsigned long long)cum);
    else srv_buf_printf(b, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
  }
  srv_buf_printf(b, "%s_sum{", name);
  labels(b, m, v);
  srv_buf_printf(b, "} %.9f\n%s_count{", (double)LD(((srv_hist *)h)->sum_ns) / 1e9, name);
  labels(b, m, v);
  /* The count is the +Inf bucket, so the two agree even while requests complete. */
  srv_buf_printf(b, "} %llu\n", (unsigned long long)cum);
}

static void row_queue(srv_buf *b, const srv_model *m, const srv_version *v,
                      const kiln_runtime_stats *st, const char *name) {
  hist_rows(b, m, v, &v->queue, name);
}
static void row_compute(srv_buf *b, const srv_model *m, const srv_version *v,
                        const kiln_runtime_stats *st, const char *name) {
  hist_rows(b, m, v, &v->compute, name);
}

void srv_metrics_write(const srv_repo *r, srv_buf *b) {
  size_t n = 0;
  for (size_t i = 0; i < r->n; i++) n += r->models[i]->n_versions;
  kiln_runtime_stats stats[n ? n : 1];
  size_t k = 0;
  for (size_t i = 0; i < r->n; i++)
    for (size_t j = 0; j < r->models[i]->n_versions; j++, k++) {
      memset(&stats[k], 0, sizeof stats[k]);
      stats[k].struct_size = sizeof stats[k];
      kiln_runtime_model_stats(r->models[i]->versions[j]->rm, &stats[k]);
    }
  static const struct {
    const char *name, *type, *help;
    row_fn fn;
  } rows[] = {
      {"kiln_request_success_total", "counter", "Inference requests answered 200.", row_success},
      {"kiln_request_failure_total", "counter", "Inference requests that failed, by reason.", row_failure},
      {"kiln_inference_count_total", "counter", "Requests the runtime completed successfully.", row_inferences},
      {"kiln_execution_count_total", "counter", "Model runs (a dynamic batch is one run).", row_executions},
      {"kiln_inference_queue_duration_seconds", "histogram", "Time from submit to the start of the run.", row_queue},
      {"kiln_inference_compute_duration_seconds", "histogram", "Time from the start of the run to completion.", row_compute},
      {"kiln_pending_requests", "gauge", "Requests waiting in the runtime's queues.", row_pending},
      {"kiln_circuit_breaker_state", "gauge", "Circuit breaker: 0 closed, 1 open, 2 half-open.", row_breaker},
      {"kiln_circuit_breaker_opened_total", "counter", "Transitions of the breaker into open.", row_breaker_opened},
      {"kiln_context_pool_hits_total", "counter", "Runs that found a free session.", row_ctx_hits},
      {"kiln_context_pool_misses_total", "counter", "Runs that created a session.", row_ctx_misses},
      {"kiln_context_pool_waits_total", "counter", "Runs that waited for a session.", row_ctx_waits},
  };
  for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
    head(b, rows[i].name, rows[i].type, rows[i].help);
    for_each(r, stats, b, rows[i].name, rows[i].fn);
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
               ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) / 1e6;
  head(b, "process_cpu_seconds_total", "counter", "User and system CPU time spent.");
  srv_buf_printf(b, "process_cpu_seconds_total %.6f\n", cpu);
  unsigned long long pages_total = 0, pages_rss = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f) {
    if (fscanf(f, "%llu %llu", &pages_total, &pages_rss) != 2) pages_total = pages_rss = 0;
    fclose(f);
  }
  long page = sysconf(_SC_PAGESIZE);
  head(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
  srv_buf_printf(b, "process_resident_memory_bytes %llu\n", pages_rss * (unsigned long long)page);
  head(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
  srv_buf_printf(b, "process_virtual_memory_bytes %llu\n", pages_total * (unsigned long long)page);
}

static void stat_pair(srv_buf *b, const char *name, uint64_t count, uint64_t ns, int comma) {
  srv_buf_printf(b, "%s\"%s\":{\"count\":%llu,\"ns\":%llu}", comma ? "," : "", name,
                 (unsigned long long)count, (unsigned long long)ns);
}

void srv_stats_write(const srv_model *m, const srv_version *only, srv_buf *b) {
  srv_buf_puts(b, "{\"model_stats\":[");
  int first = 1;
  for (size_t j = 0; j < m->n_versions; j++) {
    srv_version *v = m->versions[j];
    if (only && v != only) continue;
    kiln_runtime_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    kiln_runtime_model_stats(v->rm, &st);
    uint64_t fails = 0;
    for (int f = 0; f < SRV_FAIL_COUNT; f++) fails += LD(v->fail[f]);
    uint64_t ok = total(&st, offsetof(kiln_runtime_prio_stats, ok));
    srv_buf_printf(b, "%s{\"name\":", first ? "" : ",");
    first = 0;
    srv_buf_json_str(b, m->name);
    srv_buf_printf(b, ",\"version\":\"%s\",\"last_inference\":%llu,\"inference_count\":%llu,"
                      "\"execution_count\":%llu,\"inference_stats\":{",
                   v->label, (unsigned long long)LD(v->last_ms), (unsigned long long)ok,
                   (unsigned long long)st.runs);
    stat_pair(b, "success", LD(v->ok), LD(v->ok_ns), 0);
    stat_pair(b, "fail", fails, LD(v->fail_ns), 1);
    stat_pair(b, "queue", LD(v->queue.count), LD(v->queue.sum_ns), 1);
    stat_pair(b, "compute_input", 0, 0, 1);
    stat_pair(b, "compute_infer", LD(v->compute.count), LD(v->compute.sum_ns), 1);
    stat_pair(b, "compute_output", 0, 0, 1);
    srv_buf_printf(b, "},\"batch_stats\":[],\"kiln\":{\"batched_runs\":%llu,\"batch_requests\":%llu,"
                      "\"batch_rows_max\":%llu,\"context_hits\":%llu,\"context_misses\":%llu,"
                      "\"breaker_state\":%d,\"pending\":%llu}}",
                   (unsigned long long)st.batched_runs, (unsigned long long)st.batch_requests,
                   (unsigned long long)st.batch_rows_max, (unsigned long long)st.context_hits,
                   (unsigned long long)st.context_misses, (int)st.breaker_state,
                   (unsigned long long)total(&st, offsetof(kiln_runtime_prio_stats, queue_depth)));
  }
  srv_buf_puts(b, "]}");
}
