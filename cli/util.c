#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cli_fail(const char *what, const kiln_error *err) {
  fprintf(stderr, "kiln: %s: %s (%s)\n", what, err->message, kiln_status_str(err->status));
  return 1;
}

int cli_parse_opt_level(const char *arg, int *level) {
  char *end;
  errno = 0;
  long v = strtol(arg, &end, 10);
  if (end == arg || *end || errno || v < -1 || v > 3) {
    fprintf(stderr, "kiln: --opt-level wants 0, 1, 2, 3 (or -1 for the highest), not '%s'\n", arg);
    return -1;
  }
  *level = (int)v;
  return 0;
}

kiln_model *cli_load_model(const char *path, int threads, int opt_level) {
  kiln_model_opts o = kiln_model_opts_default();
  o.intra_threads = threads;
  o.opt_level = opt_level;
  kiln_model *m = NULL;
  kiln_error err = {0};
  if (kiln_model_load(path, &o, &m, &err) != KILN_OK) {
    cli_fail("cannot load model", &err);
    return NULL;
  }
  return m;
}

void cli_print_shape(FILE *f, int rank, const int64_t *dims) {
  fputc('[', f);
  for (int d = 0; d < rank; d++) fprintf(f, "%s%lld", d ? "," : "", (long long)dims[d]);
  fputc(']', f);
}

int cli_parse_shape(cli_shapes *sh, const char *arg) {
  const char *eq = strchr(arg, '=');
  if (!eq || eq == arg || sh->n == 64) {
    fprintf(stderr, "kiln: --shape wants NAME=d0,d1,...\n");
    return -1;
  }
  size_t i = sh->n;
  sh->names[i] = strndup(arg, (size_t)(eq - arg));
  int r = 0;
  const char *p = eq + 1;
  while (*p) {
    char *end;
    errno = 0;
    long long d = strtoll(p, &end, 10);
    if (end == p || errno || d < 0 || r == KILN_MAX_RANK) {
      fprintf(stderr, "kiln: bad --shape '%s'\n", arg);
      free((void *)sh->names[i]);
      return -1;
    }
    sh->dims[i][r++] = d;
    p = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') {
      fprintf(stderr, "kiln: bad --shape '%s'\n", arg);
      free((void *)sh->names[i]);
      return -1;
    }
  }
  sh->rank[i] = r;
  sh->n++;
  return 0;
}

int cli_load_input(cli_inputs *in, const char *arg) {
  const char *eq = strchr(arg, '=');
  if (!eq || eq == arg || in->n == 64) {
    fprintf(stderr, "kiln: --input wants NAME=FILE.npy\n");
    return -1;
  }
  kiln_error err = {0};
  kiln_tensor t;
  if (kiln_tensor_read_npy(eq + 1, &t, &err) != KILN_OK) return cli_fail("cannot read input", &err), -1;
  in->names[in->n] = strndup(arg, (size_t)(eq - arg));
  in->tensors[in->n++] = t;
  return 0;
}

static uint64_t next_rand(uint64_t *s) {
  /* splitmix64: reproducible across platforms */
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

int cli_fill_random(const kiln_model *m, const cli_shapes *sh, cli_inputs *in, uint64_t seed,
                    bool shapes_only) {
  uint64_t state = seed;
  for (size_t i = 0; i < kiln_model_input_count(m); i++) {
    kiln_io_info info;
    kiln_model_input_info(m, i, &info);
    bool have = false;
    for (size_t k = 0; k < in->n; k++) have |= !strcmp(in->names[k], info.name);
    if (have) continue;
    if (in->n == 64) return -1;
    int rank = info.rank < 0 ? 0 : info.rank;
    int64_t dims[KILN_MAX_RANK];
    const cli_shapes *given = NULL;
    size_t gi = 0;
    for (size_t k = 0; k < sh->n; k++)
      if (!strcmp(sh->names[k], info.name)) given = sh, gi = k;
    if (given) {
      rank = given->rank[gi];
      memcpy(dims, given->dims[gi], sizeof dims);
    } else {
      for (int d = 0; d < rank; d++) dims[d] = info.dims[d] >= 0 ? info.dims[d] : 1;
    }
    kiln_dtype dt = info.dtype == KILN_DTYPE_UNDEFINED ? KILN_DTYPE_FLOAT : info.dtype;
    kiln_tensor t;
    kiln_error err = {0};
    if (shapes_only) {
      memset(&t, 0, sizeof t);
      t.dtype = dt;
      t.rank = rank;
      memcpy(t.dims, dims, sizeof dims);
    } else {
      if (kiln_tensor_alloc(&t, dt, rank, dims, &err) != KILN_OK)
        return cli_fail(info.name, &err), -1;
      size_t n = kiln_tensor_count(&t);
      for (size_t e = 0; e < n; e++) {
        uint64_t r = next_rand(&state);
        double u = (double)(r >> 11) * (1.0 / 9007199254740992.0);
        switch (dt) {
          case KILN_DTYPE_FLOAT: ((float *)t.data)[e] = (float)u; break;
          case KILN_DTYPE_DOUBLE: ((double *)t.data)[e] = u; break;
          case KILN_DTYPE_INT64: ((int64_t *)t.data)[e] = (int64_t)(r & 1); break;
          case KILN_DTYPE_INT32: ((int32_t *)t.data)[e] = (int32_t)(r & 1); break;
          case KILN_DTYPE_BOOL:
          case KILN_DTYPE_UINT8:
          case KILN_DTYPE_INT8: ((uint8_t *)t.data)[e] = (uint8_t)(r & 1); break;
          default: break; /* zeros */
        }
      }
    }
    in->names[in->n] = strdup(info.name);
    in->tensors[in->n++] = t;
  }
  return 0;
}

void cli_inputs_free(cli_inputs *in) {
  for (size_t i = 0; i < in->n; i++) {
    free((void *)in->names[i]);
    kiln_tensor_release(&in->tensors[i]);
  }
  in->n = 0;
}
