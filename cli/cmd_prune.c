/* kiln prune MODEL --sparsity S (--structured|--unstructured) -o OUT.onnx: magnitude pruning, with
   what happened to each layer. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "kiln/quant.h"

static const char usage_text[] =
    "usage: kiln prune MODEL --sparsity S (--structured|--unstructured) -o OUT.onnx\n"
    "  S in [0, 1), e.g. 0.3 or 0.5: the fraction of output channels (structured) or of weights\n"
    "  (unstructured) removed per Conv/MatMul/Gemm\n";

static long long file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

int cmd_prune(int argc, char **argv) {
  const char *model = NULL, *out = NULL, *sp = NULL;
  int mode = -1;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--sparsity") && i + 1 < argc) sp = argv[++i];
    else if (!strcmp(argv[i], "--structured") && mode < 0) mode = KILN_PRUNE_STRUCTURED;
    else if (!strcmp(argv[i], "--unstructured") && mode < 0) mode = KILN_PRUNE_UNSTRUCTURED;
    else if (!model && argv[i][0] != '-') model = argv[i];
    else {
      fprintf(stderr, "kiln prune: unexpected argument '%s'\n%s", argv[i], usage_text);
      return 2;
    }
  }
  if (!model || !out || !sp || mode < 0) {
    fputs(usage_text, stderr);
    return 2;
  }
  char *end;
  errno = 0;
  double s = strtod(sp, &end);
  if (end == sp || *end || errno || !(s >= 0 && s < 1)) {
    fprintf(stderr, "kiln prune: --sparsity wants a number in [0, 1), not '%s'\n", sp);
    return 2;
  }
  kiln_error err = {0};
  kiln_prune_report r;
  if (kiln_prune_file(model, out, (kiln_prune_mode)mode, s, &r, &err) != KILN_OK)
    return cli_fail("prune", &err);
  for (size_t i = 0; i < r.n_layers; i++) {
    const kiln_prune_layer *L = &r.layers[i];
    if (mode == KILN_PRUNE_UNSTRUCTURED)
      printf("  %-40.40s %-7s %zu of %zu weights zero (%.1f%%)\n", L->name, L->op, L->weights_zero,
             L->weights_before, L->weights_before ? 100.0 * (double)L->weights_zero / (double)L->weights_before : 0.0);
    else if (L->skipped[0])
      printf("  %-40.40s %-7s kept whole: %s\n", L->name, L->op, L->skipped);
    else
      printf("  %-40.40s %-7s %lld -> %lld output channels (and the consumer's inputs)\n", L->name,
             L->op, (long long)L->channels_before, (long long)L->channels_after);
  }
  printf("parameters: %zu -> %zu (%zu -> %zu exactly zero)\n", r.params_before, r.params_after,
         r.zeros_before, r.zeros_after);
  printf("file: %lld -> %lld bytes\n", file_size(model), file_size(out));
  if (mode == KILN_PRUNE_UNSTRUCTURED)
    printf("note: unstructured pruning keeps every shape; the dense kernels run exactly as fast, "
           "only a compressed file (e.g. gzip) is smaller\n");
  printf("wrote %s\n", out);
  kiln_prune_report_free(&r);
  return 0;
}
