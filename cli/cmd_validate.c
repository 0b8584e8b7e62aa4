/* kiln validate --reference A.onnx --candidate B.onnx --data DIR [--labels FILE.npy] [budgets]:
   how far a variant's first output is from the reference's. Exit codes: 0 within every budget
   given, 1 a budget missed (each miss printed), 2 usage error, 3 a failure (unreadable files,
   mismatched models or data). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "kiln/quant.h"

static const char usage_text[] =
    "usage: kiln validate --reference A.onnx --candidate B.onnx --data DIR [--labels FILE.npy]\n"
    "         [--threads N] [--batch N] [--perplexity [--ids NAME] [--targets FILE.npy]]\n"
    "         [--per-layer] [--min-top1-agreement X] [--min-cosine X] [--max-ppl-ratio X]\n"
    "         [--max-accuracy-drop POINTS]\n";

static int number(const char *flag, const char *arg, double *out) {
  char *end;
  errno = 0;
  double v = strtod(arg, &end);
  if (end == arg || *end || errno || isnan(v)) {
    fprintf(stderr, "kiln validate: %s wants a number, not '%s'\n", flag, arg);
    return -1;
  }
  *out = v;
  return 0;
}

static void print_layers(const kiln_validate_ex_report *r) {
  printf("\nper layer (worst first: the SNR a layer loses between its input and its output)\n");
  printf("  %-40s %-7s %10s %10s %10s %10s %12s\n", "layer (output)", "op", "cosine", "snr dB",
         "in snr dB", "drop dB", "max abs err");
  for (size_t i = 0; i < r->n_layers; i++) {
    const kiln_layer_error *e = &r->layers[i];
    if (!e->matched) {
      printf("  %-40.40s %-7s %s\n", e->name, e->op, "(not in the candidate, or another shape)");
      continue;
    }
    printf("  %-40.40s %-7s %10.6f %10.2f %10.2f %10.2f %12.4g\n", e->name, e->op, e->cosine,
           e->snr_db, e->in_snr_db, e->snr_drop_db, e->max_abs_err);
  }
  if (r->n_layers && r->layers[0].matched)
    printf("hurts most: %s (%s): loses %.2f dB of SNR\n", r->layers[0].name, r->layers[0].op,
           r->layers[0].snr_drop_db);
}

int cmd_validate(int argc, char **argv) {
  const char *ref = NULL, *cand = NULL, *data = NULL, *labels = NULL;
  kiln_validate_ex_opts o = kiln_validate_ex_opts_default();
  kiln_validate_budget b = kiln_validate_budget_none();
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    bool has = i + 1 < argc;
    int bad = 0;
    if (!strcmp(a, "--reference") && has) ref = argv[++i];
    else if (!strcmp(a, "--candidate") && has) cand = argv[++i];
    else if (!strcmp(a, "--data") && has) data = argv[++i];
    else if (!strcmp(a, "--labels") && has) labels = argv[++i];
    else if (!strcmp(a, "--threads") && has) o.base.intra_threads = atoi(argv[++i]);
    else if (!strcmp(a, "--batch") && has) o.base.batch = (size_t)atol(argv[++i]);
    else if (!strcmp(a, "--perplexity")) o.perplexity = true;
    else if (!strcmp(a, "--ids") && has) o.ids_input = argv[++i];
    else if (!strcmp(a, "--targets") && has) o.targets = argv[++i];
    else if (!strcmp(a, "--per-layer")) o.per_layer = true;
    else if (!strcmp(a, "--min-top1-agreement") && has) bad = number(a, argv[++i], &b.min_top1_agreement);
    else if (!strcmp(a, "--min-cosine") && has) bad = number(a, argv[++i], &b.min_cosine);
    else if (!strcmp(a, "--max-ppl-ratio") && has) bad = number(a, argv[++i], &b.max_ppl_ratio);
    else if (!strcmp(a, "--max-accuracy-drop") && has) bad = number(a, argv[++i], &b.max_accuracy_drop);
    else {
      fprintf(stderr, "kiln validate: unexpected argument '%s'\n%s", a, usage_text);
      return 2;
    }
    if (bad) return 2;
  }
  if (!ref || !cand || !data) {
    fputs(usage_text, stderr);
    return 2;
  }
  /* budgets that cannot be checked are usage errors, found before any model runs */
  if (!isnan(b.max_ppl_ratio) && !o.perplexity) {
    fprintf(stderr, "kiln validate: --max-ppl-ratio needs --perplexity\n");
    return 2;
  }
  if (!isnan(b.max_accuracy_drop) && !labels) {
    fprintf(stderr, "kiln validate: --max-accuracy-drop needs --labels\n");
    return 2;
  }
  if ((o.ids_input || o.targets) && !o.perplexity) {
    fprintf(stderr, "kiln validate: --ids and --targets go with --perplexity\n");
    return 2;
  }
  kiln_error err = {0};
  kiln_validate_ex_report r;
  if (kiln_validate_files_ex(ref, cand, data, labels, &o, &r, &err) != KILN_OK) {
    cli_fail("validate", &err);
    return 3;
  }
  const kiln_validate_report *v = &r.base;
  printf("samples:         %zu (%zu rows of %zu classes)\n", v->samples, v->rows, v->classes);
  printf("top-1 agreement: %.4f (%zu/%zu)\n", v->top1_agreement, v->top1_agree, v->rows);
  if (v->has_labels) {
    printf("top-1 accuracy:  reference %.4f (%zu/%zu), candidate %.4f (%zu/%zu)\n",
           v->ref_accuracy, v->ref_correct, v->rows, v->cand_accuracy, v->cand_correct, v->rows);
  }
  printf("cosine:          %.6f\n", v->cosine);
  printf("max abs error:   %.6g\n", v->max_abs_err);
  printf("mean abs error:  %.6g\n", v->mean_abs_err);
  printf("snr:             %.2f dB\n", v->snr_db);
  printf("kl divergence:   %.6g nats (%s, reference || candidate)\n", r.kl_divergence,
         r.kl_of_probabilities ? "rows are probabilities already" : "softmax of each row");
  if (r.has_perplexity) {
    printf("perplexity:      reference %.5f (%.6f nats/token), candidate %.5f (%.6f nats/token) "
           "over %zu predictions\n",
           r.ref_ppl, r.ref_nll, r.cand_ppl, r.cand_nll, r.tokens);
    printf("ppl ratio:       %.5f\n", r.ppl_ratio);
    printf("next-token acc:  reference %.4f, candidate %.4f\n", r.ref_token_accuracy,
           r.cand_token_accuracy);
  }
  if (o.per_layer) print_layers(&r);
  char msg[1024];
  int missed = kiln_validate_check_budget(&r, &b, msg, sizeof msg);
  kiln_validate_ex_report_free(&r);
  if (missed) {
    fprintf(stderr, "kiln validate: %d budget%s missed:\n%s", missed, missed > 1 ? "s" : "", msg);
    printf("budget: MISSED\n");
    return 1;
  }
  if (!isnan(b.min_top1_agreement) || !isnan(b.min_cosine) || !isnan(b.max_ppl_ratio) ||
      !isnan(b.max_accuracy_drop))
    printf("budget: met\n");
  return 0;
}
