/* Whole-file reads and the folder a model's external data is resolved against. */
#include <stdio.h>

#include "core/common.h"

kiln_status kiln__read_file(const char *path, uint8_t **out, size_t *size, kiln_error *err) {
  *out = NULL;
  *size = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return kiln__fail(err, KILN_IO_ERROR, "cannot open '%s'", path);
  uint8_t *buf = NULL;
  size_t n = 0, cap = 0;
  kiln_status st = KILN_OK;
  for (;;) {
    if (n == cap) {
      cap = cap ? cap * 2 : (size_t)1 << 16;
      uint8_t *nb = kiln__realloc(buf, cap);
      if (!nb) {
        st = kiln__fail(err, KILN_NO_MEMORY, "out of memory reading '%s'", path);
        break;
      }
      buf = nb;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) {
      if (ferror(f)) st = kiln__fail(err, KILN_IO_ERROR, "cannot read '%s'", path);
      break;
    }
  }
  fclose(f);
  if (st != KILN_OK) {
    kiln__free(buf);
    return st;
  }
  *out = buf;
  *size = n;
  return KILN_OK;
}

char *kiln__path_dir(const char *path) {
  char *dir = kiln__malloc(strlen(path) + 2);
  if (!dir) return NULL;
  strcpy(dir, path);
  char *slash = strrchr(dir, '/');
  if (slash == dir) slash[1] = 0; /* "/model.onnx" lives in "/" */
  else if (slash) *slash = 0;
  else strcpy(dir, ".");
  return dir;
}
