/* kiln quantize MODEL --auto --budget top1=X|cosine=X|ppl=X --calib DIR [--formats a,b,...]
   [--objective size|latency] -o OUT.onnx: mixed precision within an accuracy budget. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "kiln/quant.h"

static const char usage_text[] =
    "usage: kiln quantize MODEL --auto --budget top1=X|cosine=X|ppl=X --calib DIR\n"
    "         [--formats F1,F2,...] [--objective size|latency] [--threads N] [--batch N]\n"
    "         [--quiet] -o OUT.onnx\n"
    "  top1: agreement with FP32 >= X; cosine: similarity >= X; ppl: perplexity ratio <= X\n";

static long long file_size(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

int cmd_quantize_auto(int argc, char **argv) {
  const char *model = NULL, *out = NULL, *budget = NULL, *formats = NULL, *objective = NULL;
  kiln_auto_opts o = kiln_auto_opts_default();
  o.verbose = true;
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    bool has = i + 1 < argc;
    if (!strcmp(a, "--auto")) continue;
    if (!strcmp(a, "-o") && has) out = argv[++i];
    else if (!strcmp(a, "--budget") && has) budget = argv[++i];
    else if (!strcmp(a, "--calib") && has) o.calib_dir = argv[++i];
    else if (!strcmp(a, "--formats") && has) formats = argv[++i];
    else if (!strcmp(a, "--objective") && has) objective = argv[++i];
    else if (!strcmp(a, "--threads") && has) o.intra_threads = atoi(argv[++i]);
    else if (!strcmp(a, "--batch") && has) o.batch = (size_t)atol(argv[++i]);
    else if (!strcmp(a, "--quiet")) o.verbose = false;
    else if (!model && a[0] != '-') model = a;
    else {
      fprintf(stderr, "kiln quantize --auto: unexpected argument '%s'\n%s", a, usage_text);
      return 2;
    }
  }
  if (!model || !out || !budget || !o.calib_dir) {
    fputs(usage_text, stderr);
    return 2;
  }
  const char *eq = strchr(budget, '=');
  char *end = NULL;
  errno = 0;
  double v = eq ? strtod(eq + 1, &end) : 0;
  size_t kl = eq ? (size_t)(eq - budget) : 0;
  if (!eq || end == eq + 1 || *end || errno) kl = 0;
  if (kl == 4 && !strncmp(budget, "top1", 4)) o.metric = KILN_AUTO_TOP1;
  else if (kl == 6 && !strncmp(budget, "cosine", 6)) o.metric = KILN_AUTO_COSINE;
  else if (kl == 3 && !strncmp(budget, "ppl", 3)) o.metric = KILN_AUTO_PPL;
  else {
    fprintf(stderr, "kiln quantize --auto: --budget wants top1=X, cosine=X or ppl=X, not '%s'\n",
            budget);
    return 2;
  }
  o.budget = v;
  if (objective && !strcmp(objective, "size")) o.objective = KILN_AUTO_SIZE;
  else if (objective && !strcmp(objective, "latency")) o.objective = KILN_AUTO_LATENCY;
  else if (objective) {
    fprintf(stderr, "kiln quantize --auto: --objective wants size or latency, not '%s'\n", objective);
    return 2;
  }
  kiln_quant_format fl[16];
  kiln_error err = {0};
  if (formats) {
    size_t n = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", formats);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
      if (n == 16 || kiln_quant_format_parse(t, &fl[n], &err) != KILN_OK) {
        fprintf(stderr, "kiln quantize --auto: %s\n", n == 16 ? "too many formats" : err.message);
        return 2;
      }
      n++;
    }
    o.formats = fl;
    o.n_formats = n;
  }
  kiln_auto_report r;
  if (kiln_quantize_auto_file(model, out, &o, &r, &err) != KILN_OK)
    return cli_fail("quantize --auto", &err);
  printf("\nchosen precision per layer (least sensitive first):\n");
  for (size_t i = 0; i < r.n_layers; i++) {
    const kiln_auto_layer *L = &r.layers[i];
    printf("  %-40.40s %-13s (sensitivity %.3g)\n", L->name,
           L->format == KILN_QUANT_NONE ? "float32" : kiln_quant_format_name(L->format),
           L->sensitivity);
  }
  printf("final %s: %.6f (budget %s %g); quantized weights %.1f KiB -> %.1f KiB; %zu models "
         "validated\n",
         o.metric == KILN_AUTO_TOP1 ? "top-1 agreement" : o.metric == KILN_AUTO_COSINE ? "cosine" : "ppl ratio",
         r.metric, o.metric == KILN_AUTO_PPL ? "<=" : ">=", o.budget,
         (double)r.weight_bytes_before / 1024, (double)r.weight_bytes_after / 1024, r.evaluations);
  printf("file: %lld -> %lld bytes\nwrote %s\n", file_size(model), file_size(out), out);
  kiln_auto_report_free(&r);
  return 0;
}
