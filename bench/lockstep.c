/* Kiln's half of bench/lockstep.js: loads MODEL once and answers one command per line on stdin,
 * so that a Node.js process can interleave Kiln and ONNX Runtime run by run on a host whose speed
 * changes in phases (bench/RESULTS.md, fifteenth session).
 *   "run N"  -> N inference runs, one line with each run's latency in microseconds
 *   "probe"  -> one line: microseconds of the phase probe (phase_probe.h)
 *   "quit"   -> exit
 * Inputs as in bench/pair.c: floats a fixed pattern in [0, 1), integers 0/1, symbolic dims 1
 * (128 for the second, a sequence length). Not part of ctest; build (bench/README.md):
 *   cc -std=c11 -D_POSIX_C_SOURCE=200809L -O2 -Iinclude bench/lockstep.c build/libkiln.a \
 *      -lprotobuf-c -lm -lpthread -o build/lockstep */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kiln/kiln.h"
#include "phase_probe.h"

#define MAX_IN 8

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

static void die(const char *what, const kiln_error *err) {
  fprintf(stderr, "lockstep: %s: %s\n", what, err ? err->message : "");
  exit(1);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: lockstep MODEL THREADS   (driven by bench/lockstep.js)\n");
    return 2;
  }
  kiln_model_opts mo = kiln_model_opts_default();
  mo.intra_threads = atoi(argv[2]);
  kiln_model *model;
  kiln_session *session;
  kiln_error err;
  if (kiln_model_load(argv[1], &mo, &model, &err) != KILN_OK) die(argv[1], &err);
  if (kiln_session_create(model, &session, &err) != KILN_OK) die("session", &err);
  size_t n = kiln_model_input_count(model);
  if (n > MAX_IN) die("too many inputs", NULL);
  kiln_tensor in[MAX_IN];
  const char *names[MAX_IN];
  for (size_t i = 0; i < n; i++) {
    kiln_io_info info;
    if (kiln_model_input_info(model, i, &info) != KILN_OK || info.rank < 0) die("input info", NULL);
    for (int d = 0; d < info.rank; d++)
      if (info.dims[d] <= 0) info.dims[d] = d == 1 ? 128 : 1;
    if (kiln_tensor_alloc(&in[i], info.dtype, info.rank, info.dims, &err) != KILN_OK)
      die("input", &err);
    names[i] = info.name;
    size_t count = kiln_tensor_count(&in[i]);
    if (info.dtype == KILN_DTYPE_FLOAT) {
      float *p = in[i].data;
      for (size_t j = 0; j < count; j++) p[j] = (float)((j * 7919) % 1000) / 1000.0f;
    } else if (info.dtype == KILN_DTYPE_INT64) {
      int64_t *p = in[i].data;
      for (size_t j = 0; j < count; j++) p[j] = (int64_t)(j % 2);
    }
  }
  static _Alignas(64) float buf[4096 + 8];
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    if (!strncmp(line, "run ", 4)) {
      int runs = atoi(line + 4);
      for (int r = 0; r < runs; r++) {
        double t0 = now_us();
        if (kiln_session_run(session, names, in, n, &err) != KILN_OK) die("run", &err);
        printf("%s%.1f", r ? " " : "", now_us() - t0);
      }
      printf("\n");
    } else if (!strncmp(line, "probe", 5)) {
      printf("%.1f\n", phase_probe(buf));
    } else {
      break;
    }
    fflush(stdout);
  }
  for (size_t i = 0; i < n; i++) kiln_tensor_release(&in[i]);
  kiln_session_free(session);
  kiln_model_free(model);
  return 0;
}
