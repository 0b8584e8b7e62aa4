/* `kiln bench MODEL`: latency distribution of repeated runs on one session. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p) {
  size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
  return v[i < n ? i : n - 1];
}

int cmd_bench(int argc, char **argv) {
  const char *path = NULL;
  int threads = 0, runs = 100, warmup = 10, opt_level = -1;
  cli_inputs in = {0};
  cli_shapes sh = {0};
  cli_profile_opts po = {0};
  kiln_profile *prof = NULL;
  int rc = 2;
  for (int i = 0; i < argc; i++) {
    int pa = cli_profile_arg(&po, argc, argv, &i);
    if (pa < 0) goto out;
    if (pa > 0) continue;
    if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) warmup = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--opt-level") && i + 1 < argc) {
      if (cli_parse_opt_level(argv[++i], &opt_level)) goto out;
    } else if (!strcmp(argv[i], "--input") && i + 1 < argc) {
      if (cli_load_input(&in, argv[++i])) goto out;
    } else if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
      if (cli_parse_shape(&sh, argv[++i])) goto out;
    } else if (argv[i][0] != '-' && !path) path = argv[i];
    else path = NULL, i = argc;
  }
  if (!path || runs < 1 || warmup < 0) {
    fprintf(stderr, "usage: kiln bench MODEL [--threads N] [--runs N] [--warmup N] "
                    "[--input NAME=FILE.npy] [--shape NAME=d0,d1,...] [--opt-level N] "
                    "[--profile] [--profile-json FILE] [--profile-top N]\n");
    goto out;
  }
  rc = 1;
  kiln_model *m = cli_load_model(path, threads, opt_level);
  if (!m) goto out;
  kiln_session *s = NULL;
  kiln_error err = {0};
  double *t = calloc((size_t)runs, sizeof *t);
  if (!t || cli_fill_random(m, &sh, &in, 0, false) != 0) goto done;
  if (kiln_session_create(m, &s, &err) != KILN_OK) {
    cli_fail("session", &err);
    goto done;
  }
  if (po.on && kiln_profile_create(m, (size_t)runs, &prof, &err) != KILN_OK) {
    cli_fail("profile", &err);
    goto done;
  }
  kiln_run_opts ro = kiln_run_opts_default();
  for (int i = 0; i < warmup + runs; i++) {
    ro.profile = i >= warmup ? prof : NULL; /* the timed runs only */
    double t0 = now_ms();
    if (kiln_session_run_ex(s, in.names, in.tensors, in.n, &ro, &err) != KILN_OK) {
      cli_fail("run failed", &err);
      goto done;
    }
    if (i >= warmup) t[i - warmup] = now_ms() - t0;
  }
  double total = 0;
  for (int i = 0; i < runs; i++) total += t[i];
  qsort(t, (size_t)runs, sizeof *t, cmp_double);
  size_t n = (size_t)runs;
  kiln_model_stats ms;
  kiln_model_stats_get(m, &ms);
  char lvl[16];
  snprintf(lvl, sizeof lvl, "%d", opt_level);
  printf("model: %s  threads: %d  runs: %d  warmup: %d  cpu: %s  opt-level: %s  nodes: %zu%s\n",
         path, threads > 0 ? threads : 0, runs, warmup, kiln_cpu_name(),
         opt_level < 0 ? "max" : lvl, ms.node_count, prof ? "  (profiled runs)" : "");
  printf("latency ms: min %.3f  p50 %.3f  p95 %.3f  p99 %.3f  max %.3f\n", t[0], pct(t, n, 50),
         pct(t, n, 95), pct(t, n, 99), t[n - 1]);
  printf("throughput: %.1f inferences/s\n", total > 0 ? 1000.0 * runs / total : 0.0);
  kiln_session_stats ss;
  kiln_session_stats_get(s, &ss);
  printf("memory: arena %.2f MiB (all intermediates %.2f MiB), dynamic %.2f MiB; "
         "plans %zu hit / %zu miss; arena %zu hit / %zu miss\n",
         ss.arena_bytes / 1048576.0, ss.intermediate_bytes / 1048576.0,
         ss.dynamic_bytes / 1048576.0, ss.plan_hits, ss.plan_misses, ss.pool_hits,
         ss.pool_misses);
  rc = prof ? cli_profile_report(m, prof, &po) : 0;
done:
  kiln_profile_free(prof);
  free(t);
  kiln_session_free(s);
  kiln_model_free(m);
out:
  cli_inputs_free(&in);
  for (size_t i = 0; i < sh.n; i++) free((void *)sh.names[i]);
  return rc;
}
