/* Reference kernels: string ops. STRING tensors hold char* per element; new strings are taken
   from the run's dynamic arena, so they live until the run ends. Case changes are ASCII only
   (the `locale` attribute is not consulted). */
#include <ctype.h>
#include <strings.h>

#include "ir/op.h"

static bool is_stopword(const kiln__node *n, const char *s, bool case_sensitive) {
  const kiln__attr *sw = kiln__attr_find(n, "stopwords");
  if (!sw || sw->type != KILN__ATTR_STRINGS) return false;
  for (size_t i = 0; i < sw->n; i++) {
    const char *w = sw->strings[i];
    if (case_sensitive ? !strcmp(w, s) : !strcasecmp(w, s)) return true;
  }
  return false;
}

static kiln_status shape_of(kiln__kctx *c, int64_t *kept, int *width_axis) {
  const kiln_tensor *x = c->in[0];
  if (x->dtype != KILN_DTYPE_STRING)
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "StringNormalizer takes strings");
  if (!(x->rank == 1 || (x->rank == 2 && x->dims[0] == 1)))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "StringNormalizer takes [C] or [1, C]");
  *width_axis = x->rank - 1;
  if (!x->data) return KILN__NEED_DATA;
  bool cs = kiln__attr_int(c->node, "is_case_sensitive", 0) != 0;
  const char *const *s = x->data;
  int64_t n = 0;
  for (int64_t i = 0; i < x->dims[*width_axis]; i++) n += !is_stopword(c->node, s[i], cs);
  *kept = n;
  return KILN_OK;
}

static kiln_status infer_normalizer(kiln__kctx *c) {
  int64_t kept = 0;
  int ax = 0;
  kiln_status st = shape_of(c, &kept, &ax);
  if (st != KILN_OK) return st;
  int64_t dims[2] = {1, kept ? kept : 1}; /* nothing left: one empty string */
  kiln__set_shape(c->out[0], KILN_DTYPE_STRING, c->in[0]->rank, ax ? dims : dims + 1);
  return KILN_OK;
}

static kiln_status run_normalizer(kiln__kctx *c) {
  const kiln_tensor *x = c->in[0];
  const char *action = kiln__attr_str(c->node, "case_change_action", "NONE");
  int mode = !strcmp(action, "LOWER") ? 1 : !strcmp(action, "UPPER") ? 2 : 0;
  if (!mode && strcmp(action, "NONE"))
    return kiln__fail(c->err, KILN_INVALID_ARGUMENT, "case_change_action '%s'", action);
  bool cs = kiln__attr_int(c->node, "is_case_sensitive", 0) != 0;
  const char *const *in = x->data;
  char **out = c->out[0]->data;
  size_t n = (size_t)x->dims[x->rank - 1], k = 0;
  for (size_t i = 0; i < n; i++) {
    if (is_stopword(c->node, in[i], cs)) continue;
    size_t len = strlen(in[i]);
    char *s = kiln__dyn_scratch(c, len + 1);
    if (!s) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory for strings");
    for (size_t j = 0; j <= len; j++) {
      unsigned char ch = (unsigned char)in[i][j];
      s[j] = (char)(mode == 1 ? tolower(ch) : mode == 2 ? toupper(ch) : ch);
    }
    out[k++] = s;
  }
  if (k == 0) {
    char *s = kiln__dyn_scratch(c, 1);
    if (!s) return kiln__fail(c->err, KILN_NO_MEMORY, "out of memory for strings");
    s[0] = 0;
    out[0] = s;
  }
  return KILN_OK;
}

const kiln__op kiln__ops_string[] = {
    /* NOFOLD: new strings need the run's arena, which planning does not have */
    {"", "StringNormalizer", infer_normalizer, run_normalizer, NULL, KILN__OPF_NOFOLD, 1, 1},
    {0},
};
