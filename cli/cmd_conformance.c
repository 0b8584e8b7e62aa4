/* `kiln conformance DIR...`: runs ONNX backend test folders (model.onnx + test_data_set_N/) and
   compares as the ONNX runner does: dtype and shape exact, then |a - e| <= atol + rtol * |e|
   (NaN equals NaN), exact for integers and bool. */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"

typedef struct opts {
  double rtol, atol;
  bool quiet;
  int threads;
  int opt_level; /* --opt-level: -1 = the highest */
  int passed, failed;
  /* --expect-failures: test names known to fail, one per line ("name  reason") */
  char **expected;
  size_t n_expected;
  int expected_failed, unexpected_failed, unexpected_passed;
} opts;

static bool is_expected(const opts *o, const char *name) {
  for (size_t i = 0; i < o->n_expected; i++)
    if (!strcmp(o->expected[i], name)) return true;
  return false;
}

static int load_expected(opts *o, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "kiln conformance: cannot open '%s'\n", path);
    return -1;
  }
  char line[1024];
  while (fgets(line, sizeof line, f)) {
    char *p = line;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '#' || *p == '\n' || !*p) continue;
    size_t len = strcspn(p, " \t\n");
    o->expected = realloc(o->expected, (o->n_expected + 1) * sizeof *o->expected);
    o->expected[o->n_expected++] = strndup(p, len);
  }
  fclose(f);
  return 0;
}

static bool is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted subdirectory names of `dir` starting with `prefix` (NULL = all). */
static size_t list_dirs(const char *dir, const char *prefix, char ***out) {
  DIR *d = opendir(dir);
  *out = NULL;
  if (!d) return 0;
  size_t n = 0, cap = 0;
  char **names = NULL;
  struct dirent *e;
  char path[4096];
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    if (prefix && strncmp(e->d_name, prefix, strlen(prefix))) continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (!is_dir(path)) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      names = realloc(names, cap * sizeof *names);
    }
    names[n++] = strdup(e->d_name);
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp_str);
  *out = names;
  return n;
}

static void free_list(char **names, size_t n) {
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
}

static double f16_value(uint16_t h) {
  int ex = (h >> 10) & 31, m = h & 1023;
  double v = ex == 0 ? ldexp(m, -24) : ex == 31 ? (m ? NAN : INFINITY) : ldexp(m + 1024, ex - 25);
  return h >> 15 ? -v : v;
}

static double bf16_value(uint16_t h) {
  uint32_t bits = (uint32_t)h << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

/* onnx 1.12's generator writes bfloat16 tensors as uint16 holding the same bits (numpy has no
   bfloat16); read them as what the model declares. */
static void fix_bfloat16(kiln_tensor *t, kiln_dtype declared) {
  if (declared == KILN_DTYPE_BFLOAT16 && t->dtype == KILN_DTYPE_UINT16) t->dtype = declared;
}

static bool compare(const kiln_tensor *got, const kiln_tensor *exp, const opts *o, char *why,
                    size_t whylen) {
  if (got->dtype == exp->dtype && exp->dtype == KILN_DTYPE_OPTIONAL) {
    if (!got->data != !exp->data) {
      snprintf(why, whylen, "optional %s a value", exp->data ? "should hold" : "should not hold");
      return false;
    }
    return !exp->data || compare(got->data, exp->data, o, why, whylen);
  }
  if (got->dtype == exp->dtype && exp->dtype == KILN_DTYPE_SEQUENCE) {
    if (got->dims[0] != exp->dims[0]) {
      snprintf(why, whylen, "sequence of %lld, expected %lld", (long long)got->dims[0],
               (long long)exp->dims[0]);
      return false;
    }
    for (int64_t i = 0; i < exp->dims[0]; i++) {
      char w[200];
      if (!compare((const kiln_tensor *)got->data + i, (const kiln_tensor *)exp->data + i, o, w,
                   sizeof w)) {
        snprintf(why, whylen, "element %lld: %s", (long long)i, w);
        return false;
      }
    }
    return true;
  }
  if (got->dtype != exp->dtype) {
    snprintf(why, whylen, "dtype %s, expected %s", kiln_dtype_name(got->dtype),
             kiln_dtype_name(exp->dtype));
    return false;
  }
  bool same_shape = got->rank == exp->rank;
  for (int d = 0; same_shape && d < got->rank; d++) same_shape = got->dims[d] == exp->dims[d];
  if (!same_shape) {
    char a[128], b[128];
    int k = 0;
    k += snprintf(a + k, sizeof a - (size_t)k, "[");
    for (int d = 0; d < got->rank && k < 100; d++)
      k += snprintf(a + k, sizeof a - (size_t)k, "%s%lld", d ? "," : "", (long long)got->dims[d]);
    snprintf(a + k, sizeof a - (size_t)k, "]");
    k = 0;
    k += snprintf(b + k, sizeof b - (size_t)k, "[");
    for (int d = 0; d < exp->rank && k < 100; d++)
      k += snprintf(b + k, sizeof b - (size_t)k, "%s%lld", d ? "," : "", (long long)exp->dims[d]);
    snprintf(b + k, sizeof b - (size_t)k, "]");
    if (snprintf(why, whylen, "shape %s, expected %s", a, b) < 0) why[0] = 0;
    return false;
  }
  size_t n = kiln_tensor_count(exp);
  if (exp->dtype == KILN_DTYPE_STRING) {
    for (size_t i = 0; i < n; i++)
      if (strcmp(((char **)got->data)[i], ((char **)exp->data)[i])) {
        snprintf(why, whylen, "string %zu differs", i);
        return false;
      }
    return true;
  }
  bool is_float = exp->dtype == KILN_DTYPE_FLOAT || exp->dtype == KILN_DTYPE_DOUBLE ||
                  exp->dtype == KILN_DTYPE_FLOAT16 || exp->dtype == KILN_DTYPE_BFLOAT16;
  size_t es = kiln_dtype_size(exp->dtype);
  for (size_t i = 0; i < n; i++) {
    if (!is_float) {
      if (memcmp((char *)got->data + i * es, (char *)exp->data + i * es, es)) {
        snprintf(why, whylen, "element %zu differs", i);
        return false;
      }
      continue;
    }
    double a, e;
    switch (exp->dtype) {
      case KILN_DTYPE_FLOAT: a = ((float *)got->data)[i], e = ((float *)exp->data)[i]; break;
      case KILN_DTYPE_DOUBLE: a = ((double *)got->data)[i], e = ((double *)exp->data)[i]; break;
      case KILN_DTYPE_BFLOAT16:
        a = bf16_value(((uint16_t *)got->data)[i]), e = bf16_value(((uint16_t *)exp->data)[i]);
        break;
      default:
        a = f16_value(((uint16_t *)got->data)[i]), e = f16_value(((uint16_t *)exp->data)[i]);
    }
    if (isnan(e) && isnan(a)) continue;
    if (isinf(e) && a == e) continue;
    if (!(fabs(a - e) <= o->atol + o->rtol * fabs(e))) {
      snprintf(why, whylen, "element %zu is %.9g, expected %.9g", i, a, e);
      return false;
    }
  }
  return true;
}

/* Runs one test folder; returns true when every data set matches. */
static bool run_test(const char *dir, const opts *o, char *why, size_t whylen) {
  char path[4096];
  snprintf(path, sizeof path, "%s/model.onnx", dir);
  kiln_model_opts mo = kiln_model_opts_default();
  mo.intra_threads = o->threads;
  mo.opt_level = o->opt_level;
  kiln_model *m = NULL;
  kiln_session *s = NULL;
  kiln_error err = {0};
  char **sets = NULL;
  size_t nsets = 0;
  bool ok = false;
  if (kiln_model_load(path, &mo, &m, &err) != KILN_OK) {
    snprintf(why, whylen, "%s: %s", err.status == KILN_UNSUPPORTED ? "unsupported" : "load",
             err.message);
    return false;
  }
  if (kiln_session_create(m, &s, &err) != KILN_OK) {
    snprintf(why, whylen, "session: %s", err.message);
    goto done;
  }
  nsets = list_dirs(dir, "test_data_set_", &sets);
  if (nsets == 0) {
    snprintf(why, whylen, "no test_data_set_* folders");
    goto done;
  }
  for (size_t ds = 0; ds < nsets; ds++) {
    size_t nin = kiln_model_input_count(m);
    kiln_tensor ins[64];
    const char *names[64];
    size_t loaded = 0;
    bool good = true;
    for (size_t i = 0; i < nin && i < 64; i++) {
      snprintf(path, sizeof path, "%s/%s/input_%zu.pb", dir, sets[ds], i);
      kiln_io_info info;
      kiln_model_input_info(m, i, &info);
      names[i] = info.name;
      if (kiln_value_read_pb(path, info.dtype, &ins[i], &err) != KILN_OK) {
        snprintf(why, whylen, "input %zu: %s", i, err.message);
        good = false;
        break;
      }
      fix_bfloat16(&ins[i], info.dtype);
      loaded++;
    }
    if (good && kiln_session_run(s, names, ins, loaded, &err) != KILN_OK) {
      snprintf(why, whylen, "%s: %s", err.status == KILN_UNSUPPORTED ? "unsupported" : "run",
               err.message);
      good = false;
    }
    for (size_t i = 0; good && i < kiln_model_output_count(m); i++) {
      snprintf(path, sizeof path, "%s/%s/output_%zu.pb", dir, sets[ds], i);
      kiln_tensor exp, got;
      kiln_io_info info;
      kiln_model_output_info(m, i, &info);
      if (kiln_value_read_pb(path, info.dtype, &exp, &err) != KILN_OK) {
        snprintf(why, whylen, "expected output %zu: %s", i, err.message);
        good = false;
        break;
      }
      fix_bfloat16(&exp, info.dtype);
      kiln_session_output(s, i, &got);
      char w[256];
      if (!compare(&got, &exp, o, w, sizeof w)) {
        snprintf(why, whylen, "output '%s': %s", info.name, w);
        good = false;
      }
      kiln_tensor_release(&exp);
    }
    for (size_t i = 0; i < loaded; i++) kiln_tensor_release(&ins[i]);
    if (!good) goto done;
  }
  ok = true;
done:
  free_list(sets, nsets);
  kiln_session_free(s);
  kiln_model_free(m);
  return ok;
}

static void run_path(const char *dir, opts *o) {
  char path[4096];
  snprintf(path, sizeof path, "%s/model.onnx", dir);
  if (is_file(path)) {
    char why[1024] = "";
    const char *name = strrchr(dir, '/');
    name = name && name[1] ? name + 1 : dir;
    bool expected = is_expected(o, name);
    if (run_test(dir, o, why, sizeof why)) {
      o->passed++;
      if (expected) {
        o->unexpected_passed++;
        printf("PASS %s (listed as a known failure: remove it from the list)\n", name);
      } else if (!o->quiet) {
        printf("PASS %s\n", name);
      }
    } else {
      o->failed++;
      if (expected) o->expected_failed++;
      else o->unexpected_failed++;
      if (!expected || !o->quiet) printf("FAIL %s: %s\n", name, why);
    }
    fflush(stdout);
    return;
  }
  char **subs;
  size_t n = list_dirs(dir, NULL, &subs);
  if (n == 0) {
    printf("FAIL %s: not a test folder (no model.onnx, no subfolders)\n", dir);
    o->failed++;
  }
  for (size_t i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, subs[i]);
    run_path(path, o);
  }
  free_list(subs, n);
}

int cmd_conformance(int argc, char **argv) {
  opts o = {.rtol = 1e-3, .atol = 1e-7, .threads = 1, .opt_level = -1};
  int ndirs = 0;
  for (int i = 0; i < argc; i++) {
    if (!strcmp(argv[i], "--rtol") && i + 1 < argc) o.rtol = atof(argv[++i]);
    else if (!strcmp(argv[i], "--atol") && i + 1 < argc) o.atol = atof(argv[++i]);
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) o.threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--quiet")) o.quiet = true;
    else if (!strcmp(argv[i], "--opt-level") && i + 1 < argc) {
      if (cli_parse_opt_level(argv[++i], &o.opt_level)) return 2;
    }
    else if (!strcmp(argv[i], "--expect-failures") && i + 1 < argc) {
      if (load_expected(&o, argv[++i])) return 2;
    }
    else if (argv[i][0] == '-') {
      fprintf(stderr, "kiln conformance: unknown option '%s'\n", argv[i]);
      return 2;
    } else ndirs++;
  }
  if (ndirs == 0) {
    fprintf(stderr, "usage: kiln conformance DIR... [--rtol R] [--atol A] [--threads N] [--quiet] "
                    "[--expect-failures FILE] [--opt-level N]\n");
    return 2;
  }
  for (int i = 0; i < argc; i++) {
    if (argv[i][0] == '-') {
      if (strcmp(argv[i], "--quiet")) i++;
      continue;
    }
    if (!is_dir(argv[i])) {
      printf("FAIL %s: no such folder\n", argv[i]);
      o.failed++;
      continue;
    }
    run_path(argv[i], &o);
  }
  int rc = o.failed ? 1 : 0;
  if (o.n_expected) {
    printf("known failures: %d of %zu listed still fail; %d unexpected failures, %d unexpected "
           "passes\n", o.expected_failed, o.n_expected, o.unexpected_failed, o.unexpected_passed);
    rc = o.unexpected_failed || o.unexpected_passed ? 1 : 0;
  }
  for (size_t i = 0; i < o.n_expected; i++) free(o.expected[i]);
  free(o.expected);
  printf("%d passed, %d failed\n", o.passed, o.failed);
  return rc;
}
