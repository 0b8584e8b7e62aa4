/* kiln validate --reference A.onnx --candidate B.onnx --data DIR [--labels FILE.npy]: how far a
   variant's first output is from the reference's. Low accuracy is a result, not an error. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "kiln/quant.h"

int cmd_validate(int argc, char **argv) {
  const char *ref = NULL, *cand = NULL, *data = NULL, *labels = NULL;
  kiln_validate_opts o = kiln_validate_opts_default();
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--reference") && i + 1 < argc) ref = argv[++i];
    else if (!strcmp(argv[i], "--candidate") && i + 1 < argc) cand = argv[++i];
    else if (!strcmp(argv[i], "--data") && i + 1 < argc) data = argv[++i];
    else if (!strcmp(argv[i], "--labels") && i + 1 < argc) labels = argv[++i];
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) o.intra_threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc) o.batch = (size_t)atol(argv[++i]);
    else {
      fprintf(stderr, "kiln validate: unexpected argument '%s'\n", argv[i]);
      return 2;
    }
  }
  if (!ref || !cand || !data) {
    fprintf(stderr, "usage: kiln validate --reference A.onnx --candidate B.onnx --data DIR "
                    "[--labels FILE.npy] [--threads N] [--batch N]\n");
    return 2;
  }
  kiln_error err = {0};
  kiln_validate_report r;
  if (kiln_validate_files(ref, cand, data, labels, &o, &r, &err) != KILN_OK)
    return cli_fail("validate", &err);
  printf("samples:         %zu (%zu rows of %zu classes)\n", r.samples, r.rows, r.classes);
  printf("top-1 agreement: %.4f (%zu/%zu)\n", r.top1_agreement, r.top1_agree, r.rows);
  if (r.has_labels) {
    printf("top-1 accuracy:  reference %.4f (%zu/%zu), candidate %.4f (%zu/%zu)\n",
           r.ref_accuracy, r.ref_correct, r.rows, r.cand_accuracy, r.cand_correct, r.rows);
  }
  printf("cosine:          %.6f\n", r.cosine);
  printf("max abs error:   %.6g\n", r.max_abs_err);
  printf("mean abs error:  %.6g\n", r.mean_abs_err);
  printf("snr:             %.2f dB\n", r.snr_db);
  return 0;
}
