#include <string.h>

#include "cli.h"

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} cmds[] = {
    {"info", cmd_info, "info MODEL [--shape NAME=d0,d1,...] [--opt-level N] [--passes]   inputs, outputs, ops, parameters, dispatch, arena; --passes: what each optimization pass changed"},
    {"run", cmd_run, "run MODEL [--input NAME=FILE.npy]... [--shape NAME=dims] [--output DIR] [--labels FILE.npy] [--threads N] [--opt-level N]"},
    {"bench", cmd_bench, "bench MODEL [--threads N] [--runs N] [--warmup N] [--input NAME=FILE.npy] [--shape NAME=dims] [--opt-level N]"},
    {"conformance", cmd_conformance, "conformance DIR... [--rtol R] [--atol A] [--threads N] [--quiet] [--expect-failures FILE] [--opt-level N]"},
    {"optimize", cmd_optimize, "optimize MODEL -o OUT.onnx [--opt-level N]   the optimized graph as ONNX (Kiln's fused ops in domain ai.kiln)"},
    {"quantize", cmd_quantize, "quantize MODEL --to fp16|bf16|int8|int8-dynamic|int4 -o OUT.onnx   smaller variants: fp16/bf16 weights, int8 QDQ (--calib) or dynamic, int4 MatMulNBits; --auto picks per layer"},
    {"validate", cmd_validate, "validate --reference A.onnx --candidate B.onnx --data DIR [--labels FILE.npy] [--threads N] [--batch N] [--perplexity [--targets FILE.npy]] [--per-layer] [--min-top1-agreement X] [--min-cosine X] [--max-ppl-ratio X] [--max-accuracy-drop POINTS]   top-1 agreement/accuracy, cosine, abs errors, SNR, KL, perplexity, per-layer errors; exit 1 when a budget is missed"},
    {"prune", cmd_prune, "prune MODEL --sparsity S (--structured|--unstructured) -o OUT.onnx   magnitude pruning: whole channels (smaller, faster) or single weights (zeros)"},
    {"serve", cmd_serve, "serve --model-repository DIR [--host 127.0.0.1] [--port 8000] [--workers N] [--threads N]   KServe v2 / Open Inference Protocol server"},
};

static int usage(FILE *f) {
  fprintf(f, "usage: kiln COMMAND ...\n");
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) fprintf(f, "  kiln %s\n", cmds[i].help);
  return f == stderr ? 2 : 0;
}

int main(int argc, char **argv) {
  if (argc < 2) return usage(stderr);
  if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help"))
    return usage(stdout);
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
    if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 2, argv + 2);
  fprintf(stderr, "kiln: unknown command '%s'\n", argv[1]);
  return usage(stderr);
}
