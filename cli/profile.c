/* --profile for `kiln run` and `kiln bench`: the per-node profile aggregated over the recorded
   runs, per op type and per node, and the Chrome trace with --profile-json. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cli_profile_arg(cli_profile_opts *o, int argc, char **argv, int *i) {
  const char *a = argv[*i];
  if (!strcmp(a, "--profile")) {
    o->on = true;
    return 1;
  }
  if (strcmp(a, "--profile-json") && strcmp(a, "--profile-top")) return 0;
  if (*i + 1 >= argc) {
    fprintf(stderr, "kiln: %s wants a value\n", a);
    return -1;
  }
  const char *v = argv[++*i];
  o->on = true;
  if (!strcmp(a, "--profile-json")) {
    /* find out now, not after a long benchmark, that the file cannot be written */
    FILE *f = fopen(v, "w");
    if (!f) {
      fprintf(stderr, "kiln: --profile-json: cannot open '%s' for writing: %s\n", v,
              strerror(errno));
      return -1;
    }
    fclose(f);
    o->json = v;
    return 1;
  }
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (end == v || *end || errno || n < 1 || n > 100000) {
    fprintf(stderr, "kiln: --profile-top wants a count of nodes (1 or more), not '%s'\n", v);
    return -1;
  }
  o->top = (size_t)n;
  return 1;
}

typedef struct agg {
  const char *op_type, *domain;     /* per op type */
  kiln_profile_event first;         /* per node: its first event (names, shapes) */
  size_t calls;
  double us;
  double macs;
} agg;

static int cmp_us_desc(const void *a, const void *b) {
  const agg *x = a, *y = b;
  return x->us < y->us ? 1 : x->us > y->us ? -1 : 0;
}

static void print_rate(const agg *a) {
  if (a->macs > 0 && a->us > 0) printf("  %8.2f", 2.0 * a->macs / (a->us * 1e3));
  else printf("  %8s", "-");
}

/* Rows keyed by two strings: (domain, op type) or (backend, kernel). */
static void print_groups(const char *title, char sep, agg *ops, size_t n_ops, double run_us) {
  qsort(ops, n_ops, sizeof *ops, cmp_us_desc);
  printf("\nby %s:\n  %-28s %7s %10s %10s %7s %9s\n", title, title, "calls", "total ms",
         "mean us", "share", "GFLOP/s");
  for (size_t k = 0; k < n_ops; k++) {
    char name[96];
    if (!*ops[k].domain || !strcmp(ops[k].domain, ops[k].op_type))
      snprintf(name, sizeof name, "%s", ops[k].op_type);
    else snprintf(name, sizeof name, "%s%c%s", ops[k].domain, sep, ops[k].op_type);
    printf("  %-28s %7zu %10.3f %10.1f %6.1f%%", name, ops[k].calls, ops[k].us / 1e3,
           ops[k].us / (double)ops[k].calls, run_us > 0 ? 100.0 * ops[k].us / run_us : 0.0);
    print_rate(&ops[k]);
    printf("\n");
  }
}

/* Adds an event to the row keyed (a, b), appending the row when new. */
static void add_to_group(agg *rows, size_t *n, const char *a, const char *b,
                         const kiln_profile_event *e) {
  size_t k = 0;
  while (k < *n && (strcmp(rows[k].op_type, a) || strcmp(rows[k].domain, b))) k++;
  if (k == *n) rows[(*n)++] = (agg){.op_type = a, .domain = b};
  rows[k].calls++, rows[k].us += e->dur_us, rows[k].macs += (double)e->macs;
}

static void print_nodes(agg *nodes, size_t n_nodes, size_t top, double run_us) {
  size_t ran = 0;
  for (size_t k = 0; k < n_nodes; k++) {
    if (nodes[k].calls) nodes[ran++] = nodes[k];
  }
  qsort(nodes, ran, sizeof *nodes, cmp_us_desc);
  size_t show = ran < top ? ran : top;
  printf("\nby node (top %zu of %zu by total time):\n  %-32s %-18s %-12s %7s %10s %10s %7s %9s"
         "  output\n", show, ran, "node", "op type", "kernel", "calls", "total ms", "mean us",
         "share", "GFLOP/s");
  for (size_t k = 0; k < show; k++) {
    const kiln_profile_event *e = &nodes[k].first;
    char kernel[64];
    if (strcmp(e->backend, e->kernel)) snprintf(kernel, sizeof kernel, "%s/%s", e->backend, e->kernel);
    else snprintf(kernel, sizeof kernel, "%s", e->backend);
    printf("  %-32.32s %-18.18s %-12s %7zu %10.3f %10.1f %6.1f%%", *e->name ? e->name : "-",
           e->op_type, kernel, nodes[k].calls, nodes[k].us / 1e3,
           nodes[k].us / (double)nodes[k].calls,
           run_us > 0 ? 100.0 * nodes[k].us / run_us : 0.0);
    print_rate(&nodes[k]);
    printf("  ");
    if (e->n_outputs > 0 && e->outputs[0].rank >= 0)
      cli_print_shape(stdout, e->outputs[0].rank, e->outputs[0].dims);
    printf("\n");
  }
}

int cli_profile_report(const kiln_model *m, const kiln_profile *p, const cli_profile_opts *o) {
  kiln_model_stats ms;
  kiln_model_stats_get(m, &ms);
  size_t n_ev = kiln_profile_event_count(p), runs = kiln_profile_run_count(p);
  agg *nodes = calloc(ms.node_count + 1, sizeof *nodes);
  agg *ops = calloc(ms.node_count + 1, sizeof *ops);
  agg *kernels = calloc(ms.node_count + 1, sizeof *kernels);
  if (!nodes || !ops || !kernels) {
    free(nodes);
    free(ops);
    free(kernels);
    fprintf(stderr, "kiln: out of memory for the profile\n");
    return 1;
  }
  size_t n_ops = 0, n_kernels = 0;
  double node_us = 0, run_us = 0;
  for (size_t r = 0; r < runs; r++) {
    double ts, dur;
    kiln_profile_run_get(p, r, &ts, &dur);
    run_us += dur;
  }
  for (size_t i = 0; i < n_ev; i++) {
    kiln_profile_event e;
    kiln_profile_event_get(p, i, &e);
    agg *a = &nodes[e.node];
    if (!a->calls) a->first = e;
    a->calls++, a->us += e.dur_us, a->macs += (double)e.macs;
    add_to_group(ops, &n_ops, e.op_type, e.domain, &e);
    add_to_group(kernels, &n_kernels, e.kernel, e.backend, &e);
    node_us += e.dur_us;
  }
  printf("\nprofile: %zu runs recorded, %zu node events; run wall time mean %.3f ms, of which "
         "nodes %.1f%%\n", runs, n_ev, runs ? run_us / (double)runs / 1e3 : 0.0,
         run_us > 0 ? 100.0 * node_us / run_us : 0.0);
  print_groups("op type", ':', ops, n_ops, run_us);
  print_groups("kernel", '/', kernels, n_kernels, run_us);
  print_nodes(nodes, ms.node_count, o->top ? o->top : 20, run_us);
  free(nodes);
  free(ops);
  free(kernels);
  if (o->json) {
    kiln_error err = {0};
    if (kiln_profile_write_json(p, o->json, &err) != KILN_OK) return cli_fail("--profile-json", &err);
    printf("\nprofile written to %s (Chrome trace events: chrome://tracing, ui.perfetto.dev)\n",
           o->json);
  }
  return 0;
}
