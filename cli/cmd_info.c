/* `kiln info MODEL`: what the model takes and gives, what it is made of, where its nodes run and
   how much memory a session plans for it. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "kiln/passes.h"

static void print_io(const kiln_io_info *io) {
  printf("  %-24s %-8s [", io->name, kiln_dtype_name(io->dtype));
  for (int d = 0; d < io->rank; d++) {
    if (d) printf(",");
    if (io->dims[d] >= 0) printf("%lld", (long long)io->dims[d]);
    else printf("%s", io->dim_names[d] ? io->dim_names[d] : "?");
  }
  printf("]%s\n", io->rank < 0 ? " (rank unknown)" : "");
}

#define INFO_USAGE "usage: kiln info MODEL [--shape NAME=d0,d1,...] [--opt-level N] [--passes]\n"

/* What each optimization pass changed, round by round. */
static int print_passes(const char *path, int opt_level) {
  kiln_pass_report *r = NULL;
  kiln_error err = {0};
  if (kiln_pass_report_load(path, opt_level, &r, &err) != KILN_OK)
    return cli_fail("cannot optimize model", &err);
  int level;
  size_t before, after;
  kiln_pass_report_summary(r, &level, &before, &after);
  printf("passes (opt-level %d): %zu nodes -> %zu nodes\n", level, before, after);
  printf("  registered:");
  int pl;
  for (size_t i = 0; kiln_pass_name(i, &pl); i++)
    printf(" %s(%d)%s", kiln_pass_name(i, &pl), pl, pl > level ? "[off]" : "");
  printf("\n");
  size_t n = kiln_pass_report_count(r);
  if (!n) printf("  no pass changed the graph\n");
  for (size_t i = 0; i < n; i++) {
    kiln_pass_change c;
    kiln_pass_report_get(r, i, &c);
    printf("  round %d  %-16s L%d  nodes %zu -> %zu  rewrites %zu\n", c.round, c.pass, c.level,
           c.nodes_before, c.nodes_after, c.matches);
    if (c.where[0]) printf("      at: %s\n", c.where);
  }
  kiln_pass_report_free(r);
  return 0;
}

int cmd_info(int argc, char **argv) {
  const char *path = NULL;
  cli_shapes sh = {0};
  int opt_level = -1;
  bool passes = false;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
      if (cli_parse_shape(&sh, argv[++i])) return 2;
    } else if (!strcmp(argv[i], "--opt-level") && i + 1 < argc) {
      if (cli_parse_opt_level(argv[++i], &opt_level)) return 2;
    } else if (!strcmp(argv[i], "--passes")) {
      passes = true;
    } else if (argv[i][0] != '-' && !path) {
      path = argv[i];
    } else {
      fprintf(stderr, INFO_USAGE);
      return 2;
    }
  }
  if (!path) {
    fprintf(stderr, INFO_USAGE);
    return 2;
  }
  kiln_model *m = cli_load_model(path, 1, opt_level);
  if (!m) return 1;
  kiln_model_stats st;
  kiln_model_stats_get(m, &st);
  printf("model:      %s\n", path);
  printf("ir_version: %lld   opset: %lld   nodes: %zu\n", (long long)st.ir_version,
         (long long)st.opset, st.node_count);
  printf("parameters: %zu (%.2f MiB)\n", st.param_count, st.param_bytes / 1048576.0);
  printf("inputs:\n");
  for (size_t i = 0; i < kiln_model_input_count(m); i++) {
    kiln_io_info io;
    kiln_model_input_info(m, i, &io);
    print_io(&io);
  }
  printf("outputs:\n");
  for (size_t i = 0; i < kiln_model_output_count(m); i++) {
    kiln_io_info io;
    kiln_model_output_info(m, i, &io);
    print_io(&io);
  }
  const char *types[256];
  size_t counts[256];
  size_t nt = kiln_model_op_histogram(m, types, counts, 256);
  printf("ops (%zu types):\n", nt);
  for (size_t i = 0; i < nt && i < 256; i++) printf("  %-24s %zu\n", types[i], counts[i]);
  printf("dispatch (cpu: %s):\n", kiln_cpu_name());
  for (size_t b = 0; b < st.backend_count; b++) {
    const char *name;
    size_t nodes;
    kiln_model_backend_nodes(m, b, &name, &nodes);
    printf("  %-24s %zu nodes (%.1f%%)\n", name, nodes,
           st.node_count ? 100.0 * (double)nodes / (double)st.node_count : 0.0);
  }
  cli_inputs in = {0};
  int rc = 0;
  kiln_session *s = NULL;
  kiln_error err = {0};
  if (cli_fill_random(m, &sh, &in, 0, true) == 0 && kiln_session_create(m, &s, &err) == KILN_OK &&
      kiln_session_plan(s, in.names, in.tensors, in.n, &err) == KILN_OK) {
    kiln_session_stats ss;
    kiln_session_stats_get(s, &ss);
    printf("memory plan (symbolic dims = 1 unless --shape):\n");
    printf("  arena:          %zu bytes (%.2f MiB)\n", ss.arena_bytes, ss.arena_bytes / 1048576.0);
    printf("  intermediates:  %zu bytes without reuse (planning saves %.1f%%)\n",
           ss.intermediate_bytes,
           ss.intermediate_bytes
               ? 100.0 * (1.0 - (double)ss.arena_bytes / (double)ss.intermediate_bytes)
               : 0.0);
    printf("  folded nodes:   %zu\n", ss.folded_nodes);
    printf("  concat in place: %zu (inputs written inside the output, no copy)\n",
           ss.concat_in_place);
  } else {
    printf("memory plan: not available (%s)\n", err.message[0] ? err.message : "inputs");
  }
  kiln_session_free(s);
  cli_inputs_free(&in);
  kiln_model_free(m);
  if (rc == 0 && passes) rc = print_passes(path, opt_level);
  return rc;
}
