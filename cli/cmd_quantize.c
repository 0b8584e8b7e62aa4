/* kiln quantize MODEL --to FORMAT [options] -o OUT.onnx: a smaller variant as standard ONNX. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "kiln/quant.h"

enum { MAX_NODE_ARGS = 256 };

static const char usage[] =
    "usage: kiln quantize MODEL --to fp16|bf16|int8|int8-dynamic|int4 -o OUT.onnx\n"
    "         [--calib DIR] [--method minmax|percentile|entropy] [--percentile P]\n"
    "         [--calib-samples N] [--full-range|--reduce-range] [--per-row] [--block 32] [--asymmetric]\n"
    "         [--scale-type fp16|fp32] [--accuracy-level 0|4] [--threads N] [--node NAME=FORMAT]... [--keep-float NAME]...\n";

static long long file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

static int bad(const char *fmt, const char *arg) {
  fprintf(stderr, "kiln quantize: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\n%s", usage);
  return 2;
}

/* A whole decimal number in [lo, hi]. */
static bool parse_long(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

int cmd_quantize(int argc, char **argv) {
  /* --auto (mixed precision) has its own parser (cmd_quantize_auto.c) */
  for (int i = 0; i < argc; i++)
    if (!strcmp(argv[i], "--auto")) return cmd_quantize_auto(argc, argv);
  const char *model = NULL, *out = NULL, *to = NULL, *method = NULL;
  kiln_quant_opts o = kiln_quant_opts_default();
  kiln_quant_node_format nodes[MAX_NODE_ARGS];
  size_t n_nodes = 0;
  kiln_error err = {0};
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    bool has = i + 1 < argc;
    long v;
    if (!strcmp(a, "-o") && has) out = argv[++i];
    else if (!strcmp(a, "--to") && has) to = argv[++i];
    else if (!strcmp(a, "--calib") && has) o.calib_dir = argv[++i];
    else if (!strcmp(a, "--method") && has) method = argv[++i];
    else if (!strcmp(a, "--asymmetric")) o.asymmetric = true;
    else if (!strcmp(a, "--per-row")) o.per_row = true; /* int8-dynamic: activation scale per row */
    else if (!strcmp(a, "--reduce-range")) o.reduce_range = true; /* the default since 7-bit */
    else if (!strcmp(a, "--full-range")) o.reduce_range = false;   /* int8 weights in [-127, 127] */
    else if (!strcmp(a, "--percentile") && has) {
      char *end;
      o.percentile = strtod(argv[++i], &end);
      if (end == argv[i] || *end || !(o.percentile > 0 && o.percentile <= 100))
        return bad("--percentile '%s': a number in (0, 100] is needed", argv[i]);
    } else if (!strcmp(a, "--calib-samples") && has) {
      if (!parse_long(argv[++i], 1, 1L << 30, &v))
        return bad("--calib-samples '%s': a positive count is needed", argv[i]);
      o.calib_samples = (size_t)v;
    } else if (!strcmp(a, "--scale-type") && has) {
      const char *t = argv[++i];
      if (strcmp(t, "fp16") && strcmp(t, "fp32"))
        return bad("--scale-type '%s': fp16 or fp32 is needed", t);
      o.fp32_scales = !strcmp(t, "fp32");
    } else if (!strcmp(a, "--accuracy-level") && has) {
      if (!parse_long(argv[++i], 0, 4, &v))
        return bad("--accuracy-level '%s': 0 to 4 is needed (4: int8 activations)", argv[i]);
      o.accuracy_level = (int)v;
    } else if (!strcmp(a, "--block") && has) {
      if (!parse_long(argv[++i], 16, 4096, &v) || (v & (v - 1)))
        return bad("--block '%s': a power of two from 16 to 4096 is needed", argv[i]);
      o.block_size = (int)v;
    } else if (!strcmp(a, "--threads") && has) {
      if (!parse_long(argv[++i], 0, 1024, &v))
        return bad("--threads '%s': a count from 0 to 1024 is needed", argv[i]);
      o.intra_threads = (int)v;
    } else if ((!strcmp(a, "--node") || !strcmp(a, "--keep-float")) && has) {
      if (n_nodes == MAX_NODE_ARGS) return bad("%s: too many per-node choices", a);
      char *arg = argv[++i];
      kiln_quant_node_format *nf = &nodes[n_nodes];
      if (!strcmp(a, "--keep-float")) {
        nf->node = arg, nf->format = KILN_QUANT_NONE;
      } else {
        char *eq = strrchr(arg, '=');
        if (!eq || eq == arg) return bad("--node '%s': NAME=FORMAT is needed", arg);
        *eq = '\0'; /* argv is ours to split */
        if (kiln_quant_format_parse(eq + 1, &nf->format, &err) != KILN_OK)
          return bad("%s", err.message);
        nf->node = arg;
      }
      n_nodes++;
    } else if (!model && a[0] != '-') model = a;
    else return bad("unexpected argument '%s'", a);
  }
  if (!model || !out || !to) {
    fputs(usage, stderr);
    return 2;
  }
  if (kiln_quant_format_parse(to, &o.format, &err) != KILN_OK) return bad("%s", err.message);
  if (method) {
    if (!strcmp(method, "minmax")) o.method = KILN_CALIB_MINMAX;
    else if (!strcmp(method, "percentile")) o.method = KILN_CALIB_PERCENTILE;
    else if (!strcmp(method, "entropy")) o.method = KILN_CALIB_ENTROPY;
    else return bad("unknown --method '%s' (expected minmax, percentile or entropy)", method);
  }
  bool static_int8 = o.format == KILN_QUANT_INT8;
  for (size_t k = 0; k < n_nodes; k++) static_int8 |= nodes[k].format == KILN_QUANT_INT8;
  if (static_int8 && !o.calib_dir)
    return bad("%s", "int8 (static) needs calibration data: --calib DIR (a folder of <input "
                     "name>.npy); int8-dynamic needs none");
  if (!static_int8 && (o.calib_dir || method))
    return bad("%s", "--calib and --method are for static int8 only");
  bool dynamic = o.format == KILN_QUANT_INT8_DYNAMIC;
  for (size_t k = 0; k < n_nodes; k++) dynamic |= nodes[k].format == KILN_QUANT_INT8_DYNAMIC;
  if (o.per_row && !dynamic) return bad("%s", "--per-row is for int8-dynamic only");
  o.nodes = nodes;
  o.n_nodes = n_nodes;
  kiln_quant_stats st;
  if (kiln_quantize_file_ex(model, out, &o, &st, &err) != KILN_OK) return cli_fail("quantize", &err);
  printf("quantized %zu nodes to %s%s", st.nodes_quantized, kiln_quant_format_name(o.format),
         o.per_row ? " (activations per row)" : "");
  if (n_nodes) printf(" (%zu per-node choices)", n_nodes);
  printf(" (%zu weight tensors, %.1f KiB -> %.1f KiB); %zu MatMul/Gemm/Conv kept in float\n",
         st.weights_converted, (double)st.weight_bytes_before / 1024,
         (double)st.weight_bytes_after / 1024, st.nodes_kept_float);
  if (o.format == KILN_QUANT_INT8_DYNAMIC || o.format == KILN_QUANT_INT4)
    printf("note: %s keeps Conv in float\n", kiln_quant_format_name(o.format));
  if (static_int8) {
    static const char *const names[] = {"minmax", "percentile", "entropy"};
    printf("calibration: %s on %s", names[o.method], o.calib_dir);
    if (o.method == KILN_CALIB_PERCENTILE) printf(" (%g%%)", o.percentile);
    if (o.calib_samples) printf(", at most %zu samples", o.calib_samples);
    printf("\n");
  }
  if (o.format == KILN_QUANT_INT4)
    printf("int4: block %d, %s, %s scales, accuracy_level %d%s\n", o.block_size ? o.block_size : 32,
           o.asymmetric ? "asymmetric (packed zero points)" : "symmetric (zero point 8)",
           o.fp32_scales ? "float32" : "float16", o.accuracy_level,
           o.accuracy_level == 4 ? " (int8 activations)" : "");
  long long before = file_size(model), after = file_size(out);
  printf("file: %lld -> %lld bytes (%.2fx)\nwrote %s\n", before, after,
         before > 0 ? (double)after / (double)before : 0.0, out);
  return 0;
}
