/* kiln optimize MODEL -o OUT.onnx [--opt-level N]: the optimized graph, written as ONNX. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "kiln/passes.h"

int cmd_optimize(int argc, char **argv) {
  const char *model = NULL, *out = NULL;
  int level = -1;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--opt-level") && i + 1 < argc) level = atoi(argv[++i]);
    else if (!model && argv[i][0] != '-') model = argv[i];
    else {
      fprintf(stderr, "kiln optimize: unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (!model || !out) {
    fprintf(stderr, "usage: kiln optimize MODEL -o OUT.onnx [--opt-level N]\n");
    return 2;
  }
  kiln_error err = {0};
  if (kiln_optimize_file(model, out, level, &err) != KILN_OK) return cli_fail("optimize", &err);
  printf("wrote %s\n", out);
  return 0;
}
