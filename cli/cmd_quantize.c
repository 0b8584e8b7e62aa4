/* kiln quantize MODEL --to fp16|int8-dynamic -o OUT.onnx: a smaller variant as standard ONNX. */
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "kiln/quant.h"

static long long file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

int cmd_quantize(int argc, char **argv) {
  for (int i = 0; i < argc; i++)
    if (!strcmp(argv[i], "--auto")) return cmd_quantize_auto(argc, argv);
  const char *model = NULL, *out = NULL, *to = NULL;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--to") && i + 1 < argc) to = argv[++i];
    else if (!model && argv[i][0] != '-') model = argv[i];
    else {
      fprintf(stderr, "kiln quantize: unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (!model || !out || !to) {
    fprintf(stderr, "usage: kiln quantize MODEL --to fp16|int8-dynamic -o OUT.onnx\n");
    return 2;
  }
  kiln_error err = {0};
  kiln_quant_format fmt;
  if (kiln_quant_format_parse(to, &fmt, &err) != KILN_OK) {
    fprintf(stderr, "kiln quantize: %s\n", err.message);
    return 2;
  }
  kiln_quant_stats st;
  if (kiln_quantize_file(model, out, fmt, &st, &err) != KILN_OK) return cli_fail("quantize", &err);
  printf("quantized %zu nodes to %s (%zu weight tensors, %.1f KiB -> %.1f KiB); %zu "
         "MatMul/Gemm/Conv kept in float%s\n",
         st.nodes_quantized, kiln_quant_format_name(fmt), st.weights_converted,
         (double)st.weight_bytes_before / 1024, (double)st.weight_bytes_after / 1024,
         st.nodes_kept_float,
         fmt == KILN_QUANT_INT8_DYNAMIC ? " (int8-dynamic keeps Conv in float)" : "");
  printf("file: %lld -> %lld bytes\nwrote %s\n", file_size(model), file_size(out), out);
  return 0;
}
