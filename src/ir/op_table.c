/* The op registry: the union of every kernel family's table, looked up by domain and name. */
#include "ir/op.h"

static const kiln__op *const families[] = {
    kiln__ops_elementwise, kiln__ops_shape, kiln__ops_reduce, kiln__ops_nn,
    kiln__ops_conv,        kiln__ops_index, kiln__ops_misc,   kiln__ops_control,
    kiln__ops_rnn,         kiln__ops_quant, kiln__ops_signal, kiln__ops_sequence,
    kiln__ops_string,      kiln__ops_fused, kiln__ops_nbits,
};

static bool same_domain(const char *a, const char *b) {
  if (!strcmp(a, "ai.onnx")) a = "";
  if (!strcmp(b, "ai.onnx")) b = "";
  return !strcmp(a, b);
}

const kiln__op *kiln__op_find(const char *domain, const char *name) {
  for (size_t f = 0; f < KILN__ARRAY_LEN(families); f++)
    for (const kiln__op *op = families[f]; op->name; op++)
      if (!strcmp(op->name, name) && same_domain(op->domain ? op->domain : "", domain))
        return op;
  return NULL;
}

const kiln__op *kiln__op_at(size_t i) {
  for (size_t f = 0; f < KILN__ARRAY_LEN(families); f++)
    for (const kiln__op *op = families[f]; op->name; op++)
      if (i-- == 0) return op;
  return NULL;
}
