/* `kiln run MODEL`: one inference on .npy inputs (or seeded random ones); prints every output's
   shape and first values, writes them as .npy with --output, and with --labels reports the
   top-1 predictions and accuracy of the first output. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(void) {
  fprintf(stderr,
          "usage: kiln run MODEL [--input NAME=FILE.npy]... [--shape NAME=d0,d1,...] "
          "[--output DIR] [--labels FILE.npy] [--threads N] [--seed N] [--opt-level N] "
          "[--profile] [--profile-json FILE] [--profile-top N]\n");
}

static void print_values(const kiln_tensor *t) {
  size_t n = kiln_tensor_count(t), show = n < 8 ? n : 8;
  printf(" = [");
  for (size_t i = 0; i < show; i++) {
    if (i) printf(", ");
    switch (t->dtype) {
      case KILN_DTYPE_FLOAT: printf("%.6g", ((float *)t->data)[i]); break;
      case KILN_DTYPE_DOUBLE: printf("%.6g", ((double *)t->data)[i]); break;
      case KILN_DTYPE_INT64: printf("%lld", (long long)((int64_t *)t->data)[i]); break;
      case KILN_DTYPE_INT32: printf("%d", ((int32_t *)t->data)[i]); break;
      case KILN_DTYPE_BOOL:
      case KILN_DTYPE_UINT8: printf("%u", ((uint8_t *)t->data)[i]); break;
      case KILN_DTYPE_INT8: printf("%d", ((int8_t *)t->data)[i]); break;
      default: printf("?"); break;
    }
  }
  printf("%s]\n", n > show ? ", ..." : "");
}

/* Top-1 per row of a [N, C] float output against int labels. */
static int report_labels(const kiln_tensor *out, const char *labels_path) {
  kiln_tensor lab;
  kiln_error err = {0};
  if (kiln_tensor_read_npy(labels_path, &lab, &err) != KILN_OK)
    return cli_fail(labels_path, &err);
  int rc = 0;
  size_t rows = out->rank >= 1 ? (size_t)out->dims[0] : 1;
  size_t cols = rows ? kiln_tensor_count(out) / rows : 0;
  if (out->dtype != KILN_DTYPE_FLOAT || out->rank != 2 || kiln_tensor_count(&lab) != rows ||
      (lab.dtype != KILN_DTYPE_INT64 && lab.dtype != KILN_DTYPE_INT32)) {
    fprintf(stderr, "kiln: --labels needs a float [N, C] first output and N int labels\n");
    rc = 1;
  } else {
    size_t correct = 0;
    for (size_t r = 0; r < rows; r++) {
      const float *row = (const float *)out->data + r * cols;
      size_t best = 0;
      for (size_t c = 1; c < cols; c++)
        if (row[c] > row[best]) best = c;
      long long want = lab.dtype == KILN_DTYPE_INT64 ? (long long)((int64_t *)lab.data)[r]
                                                     : (long long)((int32_t *)lab.data)[r];
      correct += (long long)best == want;
      if (r < 10)
        printf("sample %zu: predicted %zu, label %lld%s\n", r, best, want,
               (long long)best == want ? "" : "  (wrong)");
    }
    printf("accuracy: %.4f (%zu/%zu)\n", rows ? (double)correct / (double)rows : 0.0, correct,
           rows);
  }
  kiln_tensor_release(&lab);
  return rc;
}

int cmd_run(int argc, char **argv) {
  const char *path = NULL, *outdir = NULL, *labels = NULL;
  int threads = 0, opt_level = -1;
  uint64_t seed = 0;
  cli_inputs in = {0};
  cli_shapes sh = {0};
  cli_profile_opts po = {0};
  kiln_profile *prof = NULL;
  int rc = 2;
  for (int i = 0; i < argc; i++) {
    int pa = cli_profile_arg(&po, argc, argv, &i);
    if (pa < 0) goto out;
    if (pa > 0) continue;
    if (!strcmp(argv[i], "--input") && i + 1 < argc) {
      if (cli_load_input(&in, argv[++i])) goto out;
    } else if (!strcmp(argv[i], "--shape") && i + 1 < argc) {
      if (cli_parse_shape(&sh, argv[++i])) goto out;
    } else if (!strcmp(argv[i], "--output") && i + 1 < argc) {
      outdir = argv[++i];
    } else if (!strcmp(argv[i], "--labels") && i + 1 < argc) {
      labels = argv[++i];
    } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--opt-level") && i + 1 < argc) {
      if (cli_parse_opt_level(argv[++i], &opt_level)) goto out;
    } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
      seed = strtoull(argv[++i], NULL, 10);
    } else if (argv[i][0] != '-' && !path) {
      path = argv[i];
    } else {
      usage();
      goto out;
    }
  }
  if (!path) {
    usage();
    goto out;
  }
  rc = 1;
  kiln_model *m = cli_load_model(path, threads, opt_level);
  if (!m) goto out;
  kiln_session *s = NULL;
  kiln_error err = {0};
  if (cli_fill_random(m, &sh, &in, seed, false) != 0) goto free_model;
  if (kiln_session_create(m, &s, &err) != KILN_OK) {
    cli_fail("session", &err);
    goto free_model;
  }
  if (po.on && kiln_profile_create(m, 1, &prof, &err) != KILN_OK) {
    cli_fail("profile", &err);
    goto free_session;
  }
  kiln_run_opts ro = kiln_run_opts_default();
  ro.profile = prof;
  if (kiln_session_run_ex(s, in.names, in.tensors, in.n, &ro, &err) != KILN_OK) {
    cli_fail("run failed", &err);
    goto free_session;
  }
  rc = 0;
  for (size_t i = 0; i < kiln_model_output_count(m); i++) {
    kiln_io_info io;
    kiln_tensor t;
    kiln_model_output_info(m, i, &io);
    kiln_session_output(s, i, &t);
    printf("%s: %s ", io.name, kiln_dtype_name(t.dtype));
    cli_print_shape(stdout, t.rank, t.dims);
    print_values(&t);
    if (outdir) {
      char file[4096];
      snprintf(file, sizeof file, "%s/%s.npy", outdir, io.name);
      for (char *c = file + strlen(outdir) + 1; *c; c++)
        if (*c == '/' || *c == ':') *c = '_';
      if (kiln_tensor_write_npy(file, &t, &err) != KILN_OK) rc = cli_fail(file, &err);
    }
    if (i == 0 && labels && report_labels(&t, labels)) rc = 1;
  }
  if (prof && cli_profile_report(m, prof, &po)) rc = 1;
free_session:
  kiln_profile_free(prof);
  kiln_session_free(s);
free_model:
  kiln_model_free(m);
out:
  cli_inputs_free(&in);
  for (size_t i = 0; i < sh.n; i++) free((void *)sh.names[i]);
  return rc;
}
