/* Test helpers on Kiln's internal graph (ir/graph.h): attributes for hand-built one-node graphs.
   The node's attrs array must have room for one more. */
#ifndef KILN_TESTS_KILN_TEST_IR_H
#define KILN_TESTS_KILN_TEST_IR_H

#include <string.h>

#include "ir/graph.h"

static inline kiln__attr *kt_attr_new(kiln__node *n, const char *name, kiln__attr_type type) {
  kiln__attr *a = &n->attrs[n->n_attrs++];
  a->name = kiln__strdup(name);
  a->type = type;
  return a;
}

static inline void kt_attr_ints(kiln__node *n, const char *name, const int64_t *v, size_t cnt) {
  kiln__attr *a = kt_attr_new(n, name, KILN__ATTR_INTS);
  a->n = cnt;
  a->ints = kiln__malloc(cnt * sizeof *a->ints);
  memcpy(a->ints, v, cnt * sizeof *a->ints);
}

static inline void kt_attr_int(kiln__node *n, const char *name, int64_t v) {
  kt_attr_new(n, name, KILN__ATTR_INT)->i = v;
}

static inline void kt_attr_float(kiln__node *n, const char *name, float v) {
  kt_attr_new(n, name, KILN__ATTR_FLOAT)->f = v;
}

static inline void kt_attr_str(kiln__node *n, const char *name, const char *v) {
  kiln__attr *a = kt_attr_new(n, name, KILN__ATTR_STRING);
  a->s = kiln__strdup(v);
  a->s_len = strlen(v);
}

#endif
