/* The `kiln` command: one file per subcommand, all through the public API. */
#ifndef KILN_CLI_H
#define KILN_CLI_H

#include <stdio.h>

#include "kiln/kiln.h"

int cmd_info(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_conformance(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_optimize(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_validate(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_quantize_auto(int argc, char **argv);

/* Inputs for a run: named tensors, owned. */
typedef struct cli_inputs {
  size_t n;
  const char *names[64];
  kiln_tensor tensors[64];
} cli_inputs;

/* --shape NAME=d0,d1,... values given on the command line. */
typedef struct cli_shapes {
  size_t n;
  const char *names[64];
  int rank[64];
  int64_t dims[64][KILN_MAX_RANK];
} cli_shapes;

int cli_parse_shape(cli_shapes *sh, const char *arg);
/* Loads NAME=FILE.npy into `in`. */
int cli_load_input(cli_inputs *in, const char *arg);
/* Makes seeded random tensors for every model input not already in `in`: floats uniform in
   [0, 1), integers in {0, 1}; symbolic dims from `sh`, else 1. */
int cli_fill_random(const kiln_model *m, const cli_shapes *sh, cli_inputs *in, uint64_t seed,
                    bool shapes_only);
void cli_inputs_free(cli_inputs *in);
int cli_fail(const char *what, const kiln_error *err);
/* opt_level: -1 = the highest (the library's default), else 0..3. */
kiln_model *cli_load_model(const char *path, int threads, int opt_level);
/* Parses --opt-level's argument (0..3, or -1); prints an error and returns -1 when bad. */
int cli_parse_opt_level(const char *arg, int *level);
void cli_print_shape(FILE *f, int rank, const int64_t *dims);

/* --profile, --profile-json FILE (implies --profile), --profile-top N (nodes listed, 20). */
typedef struct cli_profile_opts {
  bool on;
  const char *json;
  size_t top;
} cli_profile_opts;

/* argv[*i] is a profile flag: consumes it (and its value) and returns 1; 0 when it is not one;
   -1 (after printing why) when its value is missing or bad. */
int cli_profile_arg(cli_profile_opts *o, int argc, char **argv, int *i);
/* Prints the per-op-type and per-node tables and writes --profile-json; 0 or 1 (failed). */
int cli_profile_report(const kiln_model *m, const kiln_profile *p, const cli_profile_opts *o);

#endif
