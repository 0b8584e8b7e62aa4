/* libFuzzer target for the .npy reader. The reader takes a path, so each input is written to a
   private temporary file first. Whatever reads successfully must survive a write/read round trip
   unchanged. */
#define _XOPEN_SOURCE 700 /* mkstemp */

#include "core/common.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char in_path[64], out_path[64];

static void make_temp(char *path, size_t cap, const char *tag) {
  snprintf(path, cap, "/tmp/kiln_fuzz_%s_XXXXXX", tag);
  int fd = mkstemp(path);
  if (fd < 0) abort();
  close(fd);
}

static void cleanup(void) {
  unlink(in_path);
  unlink(out_path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!in_path[0]) {
    make_temp(in_path, sizeof in_path, "in");
    make_temp(out_path, sizeof out_path, "out");
    atexit(cleanup);
  }
  FILE *f = fopen(in_path, "wb");
  if (!f) abort();
  if (size && fwrite(data, 1, size, f) != size) abort();
  fclose(f);
  kiln_tensor t, r;
  kiln_error err;
  if (kiln_tensor_read_npy(in_path, &t, &err) != KILN_OK) {
    if (t.data) abort();
    return 0;
  }
  if (t.rank < 0 || t.rank > KILN_MAX_RANK || !t.data) abort();
  if (kiln_tensor_write_npy(out_path, &t, &err) != KILN_OK) abort();
  if (kiln_tensor_read_npy(out_path, &r, &err) != KILN_OK) abort();
  if (r.dtype != t.dtype || r.rank != t.rank || memcmp(r.dims, t.dims, sizeof t.dims) ||
      memcmp(r.data, t.data, kiln_tensor_nbytes(&t)))
    abort();
  kiln_tensor_release(&r);
  kiln_tensor_release(&t);
  return 0;
}
