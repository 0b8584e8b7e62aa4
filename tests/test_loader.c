/* The ONNX importer and the tensor file readers, against valid, malformed and hostile input.
 *
 * Models are built in the test with the generated protobuf-c structs, so each case states exactly
 * which field is wrong. Every check prints one line; the exit status is the number of failures.
 * Run it under the sanitizer build (KILN_SANITIZE=ON) to turn the error-path and allocation-failure
 * cases into leak checks. */
#define _XOPEN_SOURCE 700 /* mkdtemp, symlink */

#include "core/common.h"
#include "onnx/import.h"
#include "onnx/kiln_onnx.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures, checks;

#define CHECK(cond, ...)                                    \
  do {                                                      \
    checks++;                                               \
    if (cond) {                                             \
      printf("ok    ");                                     \
    } else {                                                \
      failures++;                                           \
      printf("FAIL  %s:%d: (%s) ", __FILE__, __LINE__, #cond); \
    }                                                       \
    printf(__VA_ARGS__);                                    \
    printf("\n");                                           \
  } while (0)

/* ---- a small model, built field by field ----------------------------------------------------- */

/* X: float [N, 3] --Add(W)--> Y --Relu--> Z. W is a float [3] initializer in raw_data. The Relu
   node comes first in the file and has no name (the importer sorts and names it). */
typedef struct mb {
  KilnOnnx__ModelProto m;
  KilnOnnx__OperatorSetIdProto os, *osp[2];
  KilnOnnx__GraphProto g;
  KilnOnnx__NodeProto n[2], *np[2];
  char *relu_in[1], *relu_out[1], *add_in[2], *add_out[1];
  KilnOnnx__AttributeProto at, *atp[1];
  int64_t at_ints[3];
  KilnOnnx__TensorProto w, *wp[1];
  int64_t w_dims[KILN_MAX_RANK + 2];
  float w_data[3];
  KilnOnnx__StringStringEntryProto ext[3], *extp[3];
  KilnOnnx__ValueInfoProto x, z, *xp[1], *zp[1];
  KilnOnnx__TypeProto xt, zt;
  KilnOnnx__TypeProto__Tensor xtt, ztt;
  KilnOnnx__TensorShapeProto xs;
  KilnOnnx__TensorShapeProto__Dimension xd[2], *xdp[2];
} mb;

static void mb_init(mb *b) {
  memset(b, 0, sizeof *b);
  kiln_onnx__model_proto__init(&b->m);
  b->m.has_ir_version = 1;
  b->m.ir_version = 8;
  kiln_onnx__operator_set_id_proto__init(&b->os);
  b->os.domain = "";
  b->os.has_version = 1;
  b->os.version = 13;
  b->osp[0] = &b->os;
  b->m.n_opset_import = 1;
  b->m.opset_import = b->osp;
  kiln_onnx__graph_proto__init(&b->g);
  b->g.name = "tiny";
  b->m.graph = &b->g;

  for (int i = 0; i < 2; i++) {
    kiln_onnx__node_proto__init(&b->n[i]);
    b->np[i] = &b->n[i];
  }
  b->relu_in[0] = "Y";
  b->relu_out[0] = "Z";
  b->n[0].op_type = "Relu";
  b->n[0].n_input = 1, b->n[0].input = b->relu_in;
  b->n[0].n_output = 1, b->n[0].output = b->relu_out;
  b->add_in[0] = "X";
  b->add_in[1] = "W";
  b->add_out[0] = "Y";
  b->n[1].op_type = "Add";
  b->n[1].name = "add";
  b->n[1].n_input = 2, b->n[1].input = b->add_in;
  b->n[1].n_output = 1, b->n[1].output = b->add_out;
  kiln_onnx__attribute_proto__init(&b->at);
  b->at.name = "axes";
  b->at.has_type = 1;
  b->at.type = KILN_ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
  b->at_ints[0] = 1, b->at_ints[1] = -2, b->at_ints[2] = 3;
  b->at.n_ints = 3, b->at.ints = b->at_ints;
  b->atp[0] = &b->at;
  b->n[1].n_attribute = 1, b->n[1].attribute = b->atp;
  b->g.n_node = 2, b->g.node = b->np;

  kiln_onnx__tensor_proto__init(&b->w);
  b->w.name = "W";
  b->w.has_data_type = 1;
  b->w.data_type = KILN_DTYPE_FLOAT;
  b->w_dims[0] = 3;
  b->w.n_dims = 1, b->w.dims = b->w_dims;
  b->w_data[0] = 1.5f, b->w_data[1] = -2.0f, b->w_data[2] = 0.25f;
  b->w.has_raw_data = 1;
  b->w.raw_data.len = sizeof b->w_data;
  b->w.raw_data.data = (uint8_t *)b->w_data;
  b->wp[0] = &b->w;
  b->g.n_initializer = 1, b->g.initializer = b->wp;
  for (int i = 0; i < 3; i++) {
    kiln_onnx__string_string_entry_proto__init(&b->ext[i]);
    b->extp[i] = &b->ext[i];
  }

  kiln_onnx__value_info_proto__init(&b->x);
  kiln_onnx__type_proto__init(&b->xt);
  kiln_onnx__type_proto__tensor__init(&b->xtt);
  kiln_onnx__tensor_shape_proto__init(&b->xs);
  for (int i = 0; i < 2; i++) {
    kiln_onnx__tensor_shape_proto__dimension__init(&b->xd[i]);
    b->xdp[i] = &b->xd[i];
  }
  b->xd[0].value_case = KILN_ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
  b->xd[0].dim_param = "N";
  b->xd[1].value_case = KILN_ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
  b->xd[1].dim_value = 3;
  b->xs.n_dim = 2, b->xs.dim = b->xdp;
  b->xtt.has_elem_type = 1, b->xtt.elem_type = KILN_DTYPE_FLOAT, b->xtt.shape = &b->xs;
  b->xt.value_case = KILN_ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, b->xt.tensor_type = &b->xtt;
  b->x.name = "X", b->x.type = &b->xt;
  b->xp[0] = &b->x;
  b->g.n_input = 1, b->g.input = b->xp;

  kiln_onnx__value_info_proto__init(&b->z);
  kiln_onnx__type_proto__init(&b->zt);
  kiln_onnx__type_proto__tensor__init(&b->ztt);
  b->ztt.has_elem_type = 1, b->ztt.elem_type = KILN_DTYPE_FLOAT;
  b->zt.value_case = KILN_ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, b->zt.tensor_type = &b->ztt;
  b->z.name = "Z", b->z.type = &b->zt;
  b->zp[0] = &b->z;
  b->g.n_output = 1, b->g.output = b->zp;
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *len) {
  *len = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(*len ? *len : 1);
  protobuf_c_message_pack(m, buf);
  return buf;
}

static kiln_status load(const ProtobufCMessage *m, const char *base_dir, kiln__graph **g,
                        kiln_error *err) {
  size_t len;
  uint8_t *buf = pack(m, &len);
  memset(err, 0, sizeof *err);
  kiln_status st = kiln__onnx_import(buf, len, base_dir, g, err);
  free(buf);
  return st;
}

/* Loads the model, expects `want`, a message containing `needle`, and no graph. */
static void expect_fail(const mb *b, const char *base_dir, kiln_status want, const char *needle,
                        const char *what) {
  kiln__graph *g = (kiln__graph *)1;
  kiln_error err;
  kiln_status st = load(&b->m.base, base_dir, &g, &err);
  CHECK(st == want && g == NULL && strstr(err.message, needle), "%s -> %s: %s", what,
        kiln_status_str(st), err.message);
  if (st == KILN_OK) kiln__graph_free(g);
}

/* ---- valid models ---------------------------------------------------------------------------- */

static void test_valid(void) {
  mb b;
  mb_init(&b);
  kiln__graph *g = NULL;
  kiln_error err;
  kiln_status st = load(&b.m.base, NULL, &g, &err);
  CHECK(st == KILN_OK && g, "tiny model loads (%s)", err.message);
  if (!g) return;
  CHECK(g->ir_version == 8 && g->opset == 13, "ir_version %lld, opset %lld",
        (long long)g->ir_version, (long long)g->opset);
  CHECK(g->n_nodes == 2 && !strcmp(g->nodes[0].op_type, "Add") &&
            !strcmp(g->nodes[1].op_type, "Relu"),
        "nodes are sorted topologically");
  CHECK(!strcmp(g->nodes[1].name, "node_0_Relu") && !strcmp(g->nodes[0].name, "add"),
        "an unnamed node is named node_<i>_<op> (%s)", g->nodes[1].name);
  CHECK(g->nodes[0].opset == 13 && !strcmp(g->nodes[0].domain, ""), "node opset and domain");
  CHECK(g->n_inputs == 1 && g->n_outputs == 1, "one input, one output");
  const kiln__value *x = &g->values[g->inputs[0]];
  CHECK(!strcmp(x->name, "X") && x->is_input && x->dtype == KILN_DTYPE_FLOAT && x->rank == 2 &&
            x->dims[0] == -1 && x->dim_params[0] && !strcmp(x->dim_params[0], "N") &&
            x->dims[1] == 3 && !x->dim_params[1],
        "input X: float [N, 3]");
  int w = kiln__graph_find(g, "W");
  CHECK(w >= 0 && g->values[w].is_initializer && !g->values[w].is_input &&
            g->values[w].init.dtype == KILN_DTYPE_FLOAT && g->values[w].init.rank == 1 &&
            g->values[w].init.dims[0] == 3 &&
            !memcmp(g->values[w].init.data, b.w_data, sizeof b.w_data),
        "initializer W holds its data");
  const kiln__value *z = &g->values[g->outputs[0]];
  CHECK(!strcmp(z->name, "Z") && z->is_output && z->producer == 1 && z->dtype == KILN_DTYPE_FLOAT,
        "output Z is produced by node 1");
  const int64_t *ints;
  size_t n = kiln__attr_ints(&g->nodes[0], "axes", &ints);
  CHECK(n == 3 && ints[0] == 1 && ints[1] == -2 && ints[2] == 3, "INTS attribute");
  kiln__graph_free(g);

  /* IR 3 style: every initializer is also listed as a graph input. */
  mb_init(&b);
  KilnOnnx__ValueInfoProto wi = KILN_ONNX__VALUE_INFO_PROTO__INIT, *ins[2] = {&b.x, &wi};
  wi.name = "W";
  b.g.n_input = 2, b.g.input = ins;
  st = load(&b.m.base, NULL, &g, &err);
  CHECK(st == KILN_OK && g->n_inputs == 1, "an initializer listed as input is not fed");
  kiln__graph_free(g);

  /* ai.onnx is the default domain. */
  mb_init(&b);
  b.os.domain = "ai.onnx";
  b.n[0].domain = "ai.onnx";
  st = load(&b.m.base, NULL, &g, &err);
  CHECK(st == KILN_OK && g->opset == 13 && !strcmp(g->nodes[1].domain, ""),
        "'ai.onnx' is the default domain");
  kiln__graph_free(g);
}

/* Initializers in the typed fields: each dtype's field and conversion. */
static void test_typed_fields(void) {
  mb b;
  kiln__graph *g;
  kiln_error err;
  kiln_status st;
  const kiln_tensor *t;

  mb_init(&b);
  int32_t i32[3] = {1, 0, 7};
  b.w.has_raw_data = 0;
  b.w.data_type = KILN_DTYPE_BOOL;
  b.w.n_int32_data = 3, b.w.int32_data = i32;
  st = load(&b.m.base, NULL, &g, &err);
  t = st == KILN_OK ? &g->values[kiln__graph_find(g, "W")].init : NULL;
  CHECK(t && t->dtype == KILN_DTYPE_BOOL && !memcmp(t->data, "\1\0\1", 3),
        "bool from int32_data, normalised to 0/1 (%s)", err.message);
  if (st == KILN_OK) kiln__graph_free(g);

  mb_init(&b);
  int32_t half[3] = {0x3c00, 0xc000, 0x3400};
  b.w.has_raw_data = 0;
  b.w.data_type = KILN_DTYPE_FLOAT16;
  b.w.n_int32_data = 3, b.w.int32_data = half;
  st = load(&b.m.base, NULL, &g, &err);
  t = st == KILN_OK ? &g->values[kiln__graph_find(g, "W")].init : NULL;
  CHECK(t && ((uint16_t *)t->data)[0] == 0x3c00 && ((uint16_t *)t->data)[1] == 0xc000,
        "float16 bit patterns from int32_data");
  if (st == KILN_OK) kiln__graph_free(g);

  mb_init(&b);
  int64_t i64[3] = {-1, INT64_MAX, 5};
  b.w.has_raw_data = 0;
  b.w.data_type = KILN_DTYPE_INT64;
  b.w.n_int64_data = 3, b.w.int64_data = i64;
  st = load(&b.m.base, NULL, &g, &err);
  t = st == KILN_OK ? &g->values[kiln__graph_find(g, "W")].init : NULL;
  CHECK(t && !memcmp(t->data, i64, sizeof i64), "int64_data");
  if (st == KILN_OK) kiln__graph_free(g);

  mb_init(&b);
  uint64_t u64[3] = {0xffffffffu, 1, 2};
  b.w.has_raw_data = 0;
  b.w.data_type = KILN_DTYPE_UINT32;
  b.w.n_uint64_data = 3, b.w.uint64_data = u64;
  st = load(&b.m.base, NULL, &g, &err);
  t = st == KILN_OK ? &g->values[kiln__graph_find(g, "W")].init : NULL;
  CHECK(t && ((uint32_t *)t->data)[0] == 0xffffffffu && ((uint32_t *)t->data)[2] == 2,
        "uint32 from uint64_data");
  if (st == KILN_OK) kiln__graph_free(g);

  mb_init(&b);
  ProtobufCBinaryData strs[3] = {{1, (uint8_t *)"a"}, {0, NULL}, {3, (uint8_t *)"xyz"}};
  b.w.has_raw_data = 0;
  b.w.data_type = KILN_DTYPE_STRING;
  b.w.n_string_data = 3, b.w.string_data = strs;
  st = load(&b.m.base, NULL, &g, &err);
  t = st == KILN_OK ? &g->values[kiln__graph_find(g, "W")].init : NULL;
  CHECK(t && !strcmp(((char **)t->data)[0], "a") && !strcmp(((char **)t->data)[1], "") &&
            !strcmp(((char **)t->data)[2], "xyz"),
        "string_data");
  if (st == KILN_OK) kiln__graph_free(g);

  /* A scalar (rank 0) and an empty tensor (a zero dimension) need no data beyond their size. */
  mb_init(&b);
  b.w.n_dims = 0;
  b.w.raw_data.len = 4;
  st = load(&b.m.base, NULL, &g, &err);
  t = st == KILN_OK ? &g->values[kiln__graph_find(g, "W")].init : NULL;
  CHECK(t && t->rank == 0 && ((float *)t->data)[0] == 1.5f, "scalar initializer");
  if (st == KILN_OK) kiln__graph_free(g);
  mb_init(&b);
  b.w_dims[0] = 0;
  b.w.raw_data.len = 0;
  st = load(&b.m.base, NULL, &g, &err);
  CHECK(st == KILN_OK, "empty initializer [0] (%s)", err.message);
  if (st == KILN_OK) kiln__graph_free(g);
}

/* ---- malformed tensors and shapes ------------------------------------------------------------ */

static void test_bad_tensors(void) {
  mb b;
  mb_init(&b);
  b.w_dims[0] = -3;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "initializer 'W'", "negative initializer dim");

  mb_init(&b);
  b.w.raw_data.len = 11;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "raw_data has 11 bytes", "raw_data size mismatch");

  mb_init(&b);
  b.w.has_raw_data = 0;
  b.w.n_float_data = 2, b.w.float_data = b.w_data;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "float_data has 2 values", "typed field count mismatch");

  mb_init(&b);
  b.w.n_float_data = 3, b.w.float_data = b.w_data;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "both raw data and typed", "raw_data and float_data");

  mb_init(&b);
  b.w.has_raw_data = 0;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "float_data has 0 values", "no data at all");

  mb_init(&b);
  b.w.n_dims = KILN_MAX_RANK + 1;
  for (int i = 0; i < KILN_MAX_RANK + 1; i++) b.w_dims[i] = 1;
  b.w.raw_data.len = 4;
  expect_fail(&b, NULL, KILN_UNSUPPORTED, "rank 9", "rank above KILN_MAX_RANK");

  mb_init(&b);
  b.w.n_dims = 4;
  b.w_dims[0] = b.w_dims[1] = b.w_dims[2] = b.w_dims[3] = (int64_t)1 << 40;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "overflows", "dims product overflow");

  mb_init(&b);
  b.w.n_dims = 2;
  b.w_dims[0] = b.w_dims[1] = (int64_t)1 << 30;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "raw_data has 12 bytes",
              "huge declared size with little data (no huge allocation)");

  mb_init(&b);
  b.w.data_type = 99;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "invalid data type 99", "unknown data_type");

  mb_init(&b);
  b.w.data_type = 17;
  expect_fail(&b, NULL, KILN_UNSUPPORTED, "float8e4m3fn", "float8 data_type");

  mb_init(&b);
  b.w.has_data_type = 0;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "no data type", "missing data_type");

  mb_init(&b);
  b.xd[1].dim_value = -1;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "graph input 'X'", "negative dim in a value's shape");

  mb_init(&b);
  b.w.name = "";
  expect_fail(&b, NULL, KILN_BAD_MODEL, "initializer 0 has no name", "nameless initializer");

  mb_init(&b);
  KilnOnnx__TensorProto *two[2] = {&b.w, &b.w};
  b.g.n_initializer = 2, b.g.initializer = two;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "given twice", "duplicate initializer");
}

/* ---- graph structure ------------------------------------------------------------------------- */

static void test_bad_graphs(void) {
  mb b;
  mb_init(&b);
  b.add_in[0] = "Z"; /* Add reads Relu's output, Relu reads Add's: a cycle */
  expect_fail(&b, NULL, KILN_BAD_MODEL, "cycle", "cycle in the graph");

  mb_init(&b);
  b.add_in[0] = "nowhere";
  expect_fail(&b, NULL, KILN_BAD_MODEL, "'nowhere', which nothing defines", "dangling input");

  mb_init(&b);
  b.relu_out[0] = "Y";
  expect_fail(&b, NULL, KILN_BAD_MODEL, "defined more than once", "value defined twice");

  mb_init(&b);
  b.z.name = "missing";
  expect_fail(&b, NULL, KILN_BAD_MODEL, "never defined", "undefined graph output");

  mb_init(&b);
  b.n[0].op_type = "";
  expect_fail(&b, NULL, KILN_BAD_MODEL, "has no op_type", "node without op_type");

  mb_init(&b);
  b.os.version = 22;
  expect_fail(&b, NULL, KILN_UNSUPPORTED, "opset 22", "opset above 21");

  mb_init(&b);
  b.m.ir_version = 11;
  expect_fail(&b, NULL, KILN_UNSUPPORTED, "IR version 11", "IR version above 10");

  mb_init(&b);
  b.m.has_ir_version = 0;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "no ir_version", "missing ir_version");

  mb_init(&b);
  b.m.graph = NULL;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "no graph", "model without a graph");

  mb_init(&b);
  b.n[0].domain = "com.example";
  expect_fail(&b, NULL, KILN_BAD_MODEL, "does not import", "node domain not imported");

  mb_init(&b);
  KilnOnnx__OperatorSetIdProto *twice[2] = {&b.os, &b.os};
  b.m.n_opset_import = 2, b.m.opset_import = twice;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "twice", "opset domain imported twice");

  mb_init(&b);
  KilnOnnx__AttributeProto *a2[2] = {&b.at, &b.at};
  b.n[1].n_attribute = 2, b.n[1].attribute = a2;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "node 'add' (Add): attribute 'axes' is given twice",
              "duplicate attribute");

  mb_init(&b);
  b.at.type = 42;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "invalid attribute type 42", "unknown attribute type");

  mb_init(&b);
  b.at.type = KILN_ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "has no tensor", "TENSOR attribute without a tensor");

  mb_init(&b);
  KilnOnnx__ValueInfoProto *xx[2] = {&b.x, &b.x};
  b.g.n_input = 2, b.g.input = xx;
  expect_fail(&b, NULL, KILN_BAD_MODEL, "listed twice", "graph input listed twice");
}

/* ---- external data --------------------------------------------------------------------------- */

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (f) {
    fwrite(data, 1, n, f);
    fclose(f);
  }
}

static void set_external(mb *b, const char *loc, const char *offset, const char *length) {
  b->w.has_raw_data = 0;
  b->w.has_data_location = 1;
  b->w.data_location = KILN_ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
  size_t n = 0;
  b->ext[n].key = "location", b->ext[n++].value = (char *)loc;
  if (offset) b->ext[n].key = "offset", b->ext[n++].value = (char *)offset;
  if (length) b->ext[n].key = "length", b->ext[n++].value = (char *)length;
  b->w.n_external_data = n, b->w.external_data = b->extp;
}

static void test_external(const char *tmp) {
  char dir[512], path[600], outside[600];
  snprintf(dir, sizeof dir, "%s/model", tmp);
  mkdir(dir, 0700);
  float data[5] = {9, 1.5f, -2.0f, 0.25f, 9};
  snprintf(path, sizeof path, "%s/weights.bin", dir);
  write_file(path, data, sizeof data);
  snprintf(path, sizeof path, "%s/sub", dir);
  mkdir(path, 0700);
  snprintf(path, sizeof path, "%s/sub/w.bin", dir);
  write_file(path, data + 1, 12);
  snprintf(outside, sizeof outside, "%s/secret.bin", tmp);
  write_file(outside, data + 1, 12);
  snprintf(path, sizeof path, "%s/link.bin", dir);
  if (symlink(outside, path) != 0) perror("symlink");

  mb b;
  kiln__graph *g;
  kiln_error err;
  mb_init(&b);
  set_external(&b, "weights.bin", "4", "12");
  kiln_status st = load(&b.m.base, dir, &g, &err);
  CHECK(st == KILN_OK && !memcmp(g->values[kiln__graph_find(g, "W")].init.data, data + 1, 12),
        "external data with offset and length (%s)", err.message);
  if (st == KILN_OK) kiln__graph_free(g);

  mb_init(&b);
  set_external(&b, "sub/w.bin", NULL, NULL);
  st = load(&b.m.base, dir, &g, &err);
  CHECK(st == KILN_OK, "external data in a subfolder, whole file (%s)", err.message);
  if (st == KILN_OK) kiln__graph_free(g);

  mb_init(&b);
  set_external(&b, "../secret.bin", NULL, NULL);
  expect_fail(&b, dir, KILN_BAD_MODEL, "leaves the model's folder", "external '../x'");
  mb_init(&b);
  set_external(&b, "sub/../../secret.bin", NULL, NULL);
  expect_fail(&b, dir, KILN_BAD_MODEL, "leaves the model's folder", "external 'a/../../x'");
  mb_init(&b);
  set_external(&b, outside, NULL, NULL);
  expect_fail(&b, dir, KILN_BAD_MODEL, "not a relative path", "external absolute path");
  mb_init(&b);
  set_external(&b, "link.bin", NULL, NULL);
  expect_fail(&b, dir, KILN_BAD_MODEL, "resolves outside", "external symlink leaving the folder");
  mb_init(&b);
  set_external(&b, "weights.bin", NULL, NULL);
  expect_fail(&b, dir, KILN_BAD_MODEL, "has 20 bytes", "external length != tensor size");
  mb_init(&b);
  set_external(&b, "weights.bin", "16", "12");
  expect_fail(&b, dir, KILN_BAD_MODEL, "has 12 bytes at offset 16", "external range past EOF");
  mb_init(&b);
  set_external(&b, "weights.bin", "99", NULL);
  expect_fail(&b, dir, KILN_BAD_MODEL, "past the end", "external offset past EOF");
  mb_init(&b);
  set_external(&b, "weights.bin", "-4", "12");
  expect_fail(&b, dir, KILN_BAD_MODEL, "offset '-4' is invalid", "external negative offset");
  mb_init(&b);
  set_external(&b, "missing.bin", NULL, NULL);
  expect_fail(&b, dir, KILN_IO_ERROR, "missing.bin", "external file missing");
  mb_init(&b);
  set_external(&b, "weights.bin", "4", "12");
  expect_fail(&b, NULL, KILN_INVALID_ARGUMENT, "no base folder", "external data without base_dir");
  /* A huge declared shape is checked against the file before anything is allocated (under ASan,
     an attempt to allocate it would abort the test). */
  mb_init(&b);
  b.w_dims[0] = (int64_t)1 << 60;
  set_external(&b, "weights.bin", NULL, NULL);
  expect_fail(&b, NULL, KILN_INVALID_ARGUMENT, "no base folder", "huge external tensor, no base");
  expect_fail(&b, dir, KILN_BAD_MODEL, "has 20 bytes", "huge external tensor, small file");
  snprintf(path, sizeof path, "%s/fifo", dir);
  if (mkfifo(path, 0600) == 0) {
    mb_init(&b);
    set_external(&b, "fifo", NULL, NULL);
    expect_fail(&b, dir, KILN_BAD_MODEL, "not a regular file", "external data is a FIFO (no hang)");
    kiln_tensor t;
    kiln_status st2 = kiln_tensor_read_npy(path, &t, NULL);
    CHECK(st2 == KILN_IO_ERROR, "reading a FIFO as .npy is refused without blocking");
  }
  mb_init(&b);
  set_external(&b, "sub", NULL, NULL);
  expect_fail(&b, dir, KILN_BAD_MODEL, "not a regular file", "external data is a folder");
}

/* ---- subgraphs ------------------------------------------------------------------------------- */

/* If(C) { then: Identity(X) } { else: Neg(X) }: both branches read X from the enclosing graph. */
static void test_subgraph(void) {
  mb b;
  mb_init(&b);
  KilnOnnx__GraphProto br[2] = {KILN_ONNX__GRAPH_PROTO__INIT, KILN_ONNX__GRAPH_PROTO__INIT};
  KilnOnnx__NodeProto bn[2] = {KILN_ONNX__NODE_PROTO__INIT, KILN_ONNX__NODE_PROTO__INIT};
  KilnOnnx__NodeProto *bnp[2] = {&bn[0], &bn[1]};
  KilnOnnx__ValueInfoProto bo[2] = {KILN_ONNX__VALUE_INFO_PROTO__INIT,
                                    KILN_ONNX__VALUE_INFO_PROTO__INIT};
  KilnOnnx__ValueInfoProto *bop[2] = {&bo[0], &bo[1]};
  char *bin[1] = {"X"}, *bout[2][1] = {{"t"}, {"e"}};
  const char *ops[2] = {"Identity", "Neg"}, *names[2] = {"then_branch", "else_branch"};
  KilnOnnx__AttributeProto ba[2] = {KILN_ONNX__ATTRIBUTE_PROTO__INIT,
                                    KILN_ONNX__ATTRIBUTE_PROTO__INIT};
  KilnOnnx__AttributeProto *bap[2] = {&ba[0], &ba[1]};
  for (int i = 0; i < 2; i++) {
    bn[i].op_type = (char *)ops[i];
    bn[i].n_input = 1, bn[i].input = bin;
    bn[i].n_output = 1, bn[i].output = bout[i];
    bo[i].name = bout[i][0];
    br[i].name = (char *)names[i];
    br[i].n_node = 1, br[i].node = &bnp[i];
    br[i].n_output = 1, br[i].output = &bop[i];
    ba[i].name = (char *)names[i];
    ba[i].has_type = 1, ba[i].type = KILN_ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH;
    ba[i].g = &br[i];
  }
  /* Replace Relu with If(X) -> Z (the condition is X for the test; types are not checked). */
  char *if_in[1] = {"X"};
  b.n[0].op_type = "If";
  b.n[0].n_input = 1, b.n[0].input = if_in;
  b.n[0].n_attribute = 2, b.n[0].attribute = bap;
  kiln__graph *g;
  kiln_error err;
  kiln_status st = load(&b.m.base, NULL, &g, &err);
  CHECK(st == KILN_OK, "If with two branches loads (%s)", err.message);
  if (st == KILN_OK) {
    const kiln__node *n = NULL;
    for (int i = 0; i < g->n_nodes; i++)
      if (!strcmp(g->nodes[i].op_type, "If")) n = &g->nodes[i];
    const kiln__attr *a = n ? kiln__attr_find(n, "then_branch") : NULL;
    const kiln__graph *sg = a && a->type == KILN__ATTR_GRAPH ? a->g : NULL;
    int x = sg ? kiln__graph_find(sg, "X") : -1;
    CHECK(sg && sg->parent == g && sg->opset == 13 && x >= 0 && sg->values[x].is_outer &&
              !sg->values[x].is_input && sg->n_outputs == 1,
          "then_branch: parent set, X captured from the outer scope");
    kiln__graph_free(g);
  }

  bin[0] = "undefined_anywhere";
  expect_fail(&b, NULL, KILN_BAD_MODEL, "a subgraph reads 'undefined_anywhere'",
              "subgraph reads a name no scope defines");
  bin[0] = "X";
  bn[1].op_type = "";
  expect_fail(&b, NULL, KILN_BAD_MODEL,
              "node 'node_0_If' (If): attribute 'else_branch': subgraph 'else_branch': node 0",
              "error inside a subgraph names the path to it");
}

/* `depth` nested If nodes, each body holding the next; the innermost reads 'X' from the top. */
static uint8_t *nested_model(int depth, size_t *len) {
  mb b;
  mb_init(&b);
  KilnOnnx__GraphProto *gs = calloc((size_t)depth, sizeof *gs);
  KilnOnnx__NodeProto *ns = calloc((size_t)depth, sizeof *ns);
  KilnOnnx__NodeProto **nps = calloc((size_t)depth, sizeof *nps);
  KilnOnnx__AttributeProto *as = calloc((size_t)depth, sizeof *as);
  KilnOnnx__AttributeProto **aps = calloc((size_t)depth, sizeof *aps);
  static char *x_in[1] = {"X"};
  for (int i = 0; i < depth; i++) {
    kiln_onnx__graph_proto__init(&gs[i]);
    kiln_onnx__node_proto__init(&ns[i]);
    kiln_onnx__attribute_proto__init(&as[i]);
    nps[i] = &ns[i];
    aps[i] = &as[i];
    ns[i].op_type = "If";
    ns[i].n_input = 1, ns[i].input = x_in;
    ns[i].n_attribute = 1, ns[i].attribute = &aps[i];
    as[i].name = "then_branch";
    as[i].has_type = 1, as[i].type = KILN_ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH;
    as[i].g = &gs[i];
    if (i + 1 < depth) gs[i].n_node = 1, gs[i].node = &nps[i + 1];
  }
  KilnOnnx__NodeProto *top[2] = {&b.n[1], &ns[0]};
  b.g.n_node = 2, b.g.node = top;
  b.z.name = "Y";
  uint8_t *buf = pack(&b.m.base, len);
  free(gs), free(ns), free(nps), free(as), free(aps);
  return buf;
}

static void test_nesting(void) {
  size_t len;
  kiln__graph *g = NULL;
  kiln_error err = {0};
  uint8_t *buf = nested_model(12, &len);
  kiln_status st = kiln__onnx_import(buf, len, NULL, &g, &err);
  bool chain = st == KILN_OK;
  int levels = 0;
  /* Each body but the innermost holds an If that reads X, so X is captured in each of those. */
  for (const kiln__graph *cur = g; chain;) {
    const kiln__node *n = NULL;
    for (int i = 0; i < cur->n_nodes; i++)
      if (!strcmp(cur->nodes[i].op_type, "If")) n = &cur->nodes[i];
    if (cur != g) {
      int x = kiln__graph_find(cur, "X");
      chain = cur->parent && (!n || (x >= 0 && cur->values[x].is_outer));
    }
    if (!n) break;
    cur = n->attrs[0].g;
    levels++;
  }
  CHECK(chain && levels == 12, "12 nested subgraphs load; X is captured at every level (%s)",
        err.message);
  kiln__graph_free(g);
  free(buf);

  buf = nested_model(40, &len);
  g = (kiln__graph *)1;
  st = kiln__onnx_import(buf, len, NULL, &g, &err);
  CHECK(st == KILN_UNSUPPORTED && !g && strstr(err.message, "deeper"),
        "40 nested subgraphs are refused before parsing: %s", err.message);
  free(buf);

  /* Raw bytes: Model.graph, then Graph.node / Node.attribute / Attribute.g repeated, 100000
     levels deep (protobuf-c alone would recurse once per level). */
  size_t n = 100000, cap = n * 6 + 16;
  uint8_t *deep = malloc(cap);
  size_t pos = cap;
  for (size_t i = 0; i < n; i++) {
    size_t inner = cap - pos;
    uint8_t v[10];
    int k = 0;
    do {
      v[k++] = (uint8_t)((inner & 0x7f) | (inner > 0x7f ? 0x80 : 0));
      inner >>= 7;
    } while (inner);
    pos -= (size_t)k;
    memcpy(deep + pos, v, (size_t)k);
    static const uint8_t cycle[3] = {0x0a, 0x2a, 0x32};
    size_t d = n - 1 - i; /* depth from the outside */
    deep[--pos] = d == 0 ? 0x3a : cycle[(d - 1) % 3];
  }
  st = kiln__onnx_import(deep + pos, cap - pos, NULL, &g, &err);
  CHECK(st != KILN_OK && !g, "100000-deep raw nesting fails cleanly: %s", err.message);
  free(deep);
}

/* ---- hostile bytes --------------------------------------------------------------------------- */

static void test_truncation_and_flips(void) {
  mb b;
  mb_init(&b);
  size_t len;
  uint8_t *full = pack(&b.m.base, &len);
  int bad = 0;
  for (size_t n = 0; n < len; n++) {
    uint8_t *p = malloc(n ? n : 1);
    memcpy(p, full, n);
    kiln__graph *g = (kiln__graph *)1;
    kiln_error err;
    kiln_status st = kiln__onnx_import(p, n, NULL, &g, &err);
    if (st == KILN_OK || g != NULL || !err.message[0]) {
      bad++;
      if (st == KILN_OK) kiln__graph_free(g);
    }
    free(p);
  }
  CHECK(bad == 0, "every strict prefix (0..%zu bytes) fails with a message (%d did not)", len - 1,
        bad);

  uint32_t seed = 12345;
  int ok = 0, failed = 0;
  uint8_t *p = malloc(len);
  for (int iter = 0; iter < 20000; iter++) {
    memcpy(p, full, len);
    int flips = 1 + iter % 4;
    for (int f = 0; f < flips; f++) {
      seed = seed * 1664525u + 1013904223u;
      size_t at = (seed >> 8) % len;
      seed = seed * 1664525u + 1013904223u;
      if (iter & 1)
        p[at] ^= (uint8_t)(1u << ((seed >> 16) & 7));
      else
        p[at] = (uint8_t)(seed >> 24);
    }
    kiln__graph *g = NULL;
    kiln_error err;
    if (kiln__onnx_import(p, len, NULL, &g, &err) == KILN_OK) {
      ok++;
      kiln__graph_free(g);
    } else {
      failed++;
    }
  }
  free(p);
  free(full);
  CHECK(ok + failed == 20000, "20000 corrupted copies: %d load, %d fail, none crash", ok, failed);
}

static void test_alloc_failures(void) {
  mb b;
  mb_init(&b);
  /* Add an If with a subgraph and a TENSOR attribute so the error paths there are covered. */
  KilnOnnx__GraphProto br = KILN_ONNX__GRAPH_PROTO__INIT;
  KilnOnnx__NodeProto bn = KILN_ONNX__NODE_PROTO__INIT, *bnp[1] = {&bn};
  KilnOnnx__ValueInfoProto bo = KILN_ONNX__VALUE_INFO_PROTO__INIT, *bop[1] = {&bo};
  KilnOnnx__AttributeProto ba = KILN_ONNX__ATTRIBUTE_PROTO__INIT, bt = KILN_ONNX__ATTRIBUTE_PROTO__INIT;
  KilnOnnx__AttributeProto *bap[1] = {&ba}, *btp[1] = {&bt};
  char *bin[2] = {"Y", "X"}, *bout[1] = {"t"};
  bn.op_type = "Add";
  bn.n_input = 2, bn.input = bin;
  bn.n_output = 1, bn.output = bout;
  bt.name = "value";
  bt.has_type = 1, bt.type = KILN_ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR;
  bt.t = &b.w;
  bn.n_attribute = 1, bn.attribute = btp;
  bo.name = "t";
  br.name = "body";
  br.n_node = 1, br.node = bnp;
  br.n_output = 1, br.output = bop;
  ba.name = "then_branch";
  ba.has_type = 1, ba.type = KILN_ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__GRAPH;
  ba.g = &br;
  char *if_in[1] = {"Y"};
  b.n[0].op_type = "If";
  b.n[0].n_input = 1, b.n[0].input = if_in;
  b.n[0].n_attribute = 1, b.n[0].attribute = bap;

  size_t len;
  uint8_t *buf = pack(&b.m.base, &len);
  int n, wrong = 0;
  kiln_status st = KILN_NO_MEMORY;
  for (n = 1; n < 100000; n++) {
    kiln__graph *g = NULL;
    kiln_error err = {0};
    kiln__alloc_fail_after((uint64_t)n);
    st = kiln__onnx_import(buf, len, NULL, &g, &err);
    kiln__alloc_fail_after(0);
    if (st == KILN_OK) {
      kiln__graph_free(g);
      break;
    }
    if (st != KILN_NO_MEMORY || g) {
      wrong++;
      printf("      allocation %d: %s: %s\n", n, kiln_status_str(st), err.message);
    }
  }
  CHECK(st == KILN_OK && wrong == 0,
        "failing allocation 1..%d in turn: each gives NO_MEMORY and frees everything", n - 1);
  free(buf);

  /* The same for a TensorProto. */
  size_t tl;
  uint8_t *tb = pack(&b.w.base, &tl);
  wrong = 0;
  for (n = 1; n < 1000; n++) {
    kiln_tensor t;
    kiln__alloc_fail_after((uint64_t)n);
    st = kiln__onnx_tensor(tb, tl, &t, NULL);
    kiln__alloc_fail_after(0);
    if (st == KILN_OK) {
      kiln_tensor_release(&t);
      break;
    }
    if (st != KILN_NO_MEMORY || t.data) wrong++;
  }
  CHECK(st == KILN_OK && wrong == 0, "TensorProto: allocation failures 1..%d are clean", n - 1);
  free(tb);
}

/* ---- TensorProto and .npy files -------------------------------------------------------------- */

static void test_tensor_files(const char *tmp) {
  mb b;
  mb_init(&b);
  size_t len;
  uint8_t *buf = pack(&b.w.base, &len);
  char path[600];
  snprintf(path, sizeof path, "%s/w.pb", tmp);
  write_file(path, buf, len);
  free(buf);
  kiln_tensor t;
  kiln_error err = {0};
  kiln_status st = kiln_tensor_read_pb(path, &t, &err);
  CHECK(st == KILN_OK && t.dtype == KILN_DTYPE_FLOAT && t.rank == 1 && t.dims[0] == 3 &&
            !memcmp(t.data, b.w_data, 12),
        "kiln_tensor_read_pb (%s)", err.message);
  kiln_tensor_release(&t);

  snprintf(path, sizeof path, "%s/nothing.pb", tmp);
  st = kiln_tensor_read_pb(path, &t, &err);
  CHECK(st == KILN_NOT_FOUND && !t.data, "read_pb of a missing file: %s", err.message);

  /* Round trips through .npy for each dtype it supports, at ranks 0, 1 and 3. */
  static const kiln_dtype types[] = {
      KILN_DTYPE_FLOAT, KILN_DTYPE_DOUBLE, KILN_DTYPE_FLOAT16, KILN_DTYPE_INT8,
      KILN_DTYPE_INT16, KILN_DTYPE_INT32,  KILN_DTYPE_INT64,   KILN_DTYPE_UINT8,
      KILN_DTYPE_UINT16, KILN_DTYPE_UINT32, KILN_DTYPE_UINT64, KILN_DTYPE_BOOL};
  static const int64_t shapes[3][3] = {{0}, {7}, {2, 3, 4}};
  static const int ranks[3] = {0, 1, 3};
  int bad = 0;
  snprintf(path, sizeof path, "%s/t.npy", tmp);
  for (size_t i = 0; i < KILN__ARRAY_LEN(types); i++)
    for (int s = 0; s < 3; s++) {
      kiln_tensor a, r;
      if (kiln_tensor_alloc(&a, types[i], ranks[s], shapes[s], NULL) != KILN_OK) {
        bad++;
        continue;
      }
      size_t nb = kiln_tensor_nbytes(&a);
      for (size_t k = 0; k < nb; k++) ((uint8_t *)a.data)[k] = (uint8_t)(k * 37 + 1);
      if (types[i] == KILN_DTYPE_BOOL)
        for (size_t k = 0; k < nb; k++) ((uint8_t *)a.data)[k] &= 1;
      st = kiln_tensor_write_npy(path, &a, &err);
      if (st == KILN_OK) st = kiln_tensor_read_npy(path, &r, &err);
      if (st != KILN_OK || r.dtype != a.dtype || r.rank != a.rank ||
          memcmp(r.dims, a.dims, sizeof a.dims) || memcmp(r.data, a.data, nb)) {
        bad++;
        printf("      %s rank %d: %s\n", kiln_dtype_name(types[i]), ranks[s], err.message);
      }
      if (st == KILN_OK) kiln_tensor_release(&r);
      kiln_tensor_release(&a);
    }
  CHECK(bad == 0, ".npy write/read round trip for 12 dtypes x ranks 0, 1, 3");

  /* Hand-written files: what numpy writes (v1 and v2), and what it must not accept. */
  static const struct {
    const char *header;
    int version;
    size_t data;
    kiln_status want;
    const char *needle;
  } cases[] = {
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 1, 24, KILN_OK, ""},
      {"{\"shape\": (2,3),\"descr\":\"<f4\",\"fortran_order\":False}", 2, 24, KILN_OK, ""},
      {"{'descr': '|b1', 'fortran_order': False, 'shape': (5,), }", 3, 5, KILN_OK, ""},
      {"{'descr': '<i8', 'fortran_order': False, 'shape': (), }", 1, 8, KILN_OK, ""},
      {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 1, 24, KILN_UNSUPPORTED,
       "Fortran order"},
      {"{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 1, 24, KILN_UNSUPPORTED,
       "big-endian"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 1, 20, KILN_BAD_MODEL,
       "data size"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 1, 28, KILN_BAD_MODEL,
       "data size"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", 1, 24, KILN_BAD_MODEL,
       "dimension"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (3), }", 1, 12, KILN_BAD_MODEL,
       "not a tuple"},
      {"{'descr': '<f4', 'fortran_order': False, }", 1, 4, KILN_BAD_MODEL, "lacks 'shape'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", 1, 4, KILN_BAD_MODEL,
       "unexpected key"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", 1, 4,
       KILN_BAD_MODEL, "twice"},
      {"{'descr': '<U8', 'fortran_order': False, 'shape': (1,), }", 1, 32, KILN_UNSUPPORTED,
       "not supported"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3, 4, 5, 6, 7, 8, 9), }", 1, 4,
       KILN_UNSUPPORTED, "more than 8"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, "
       "99999999999), }",
       1, 4, KILN_BAD_MODEL, "data size"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } trailing", 1, 4,
       KILN_BAD_MODEL, "after the dict"},
      {"[1, 2]", 1, 4, KILN_BAD_MODEL, "not a dict"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,)", 1, 4, KILN_BAD_MODEL,
       "malformed"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 9, 4, KILN_UNSUPPORTED,
       "version 9"},
  };
  for (size_t i = 0; i < KILN__ARRAY_LEN(cases); i++) {
    FILE *f = fopen(path, "wb");
    size_t hl = strlen(cases[i].header) + 1;
    uint8_t pre[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', (uint8_t)cases[i].version, 0};
    if (cases[i].version == 1) {
      pre[8] = (uint8_t)hl, pre[9] = (uint8_t)(hl >> 8);
      fwrite(pre, 1, 10, f);
    } else {
      pre[8] = (uint8_t)hl, pre[9] = (uint8_t)(hl >> 8), pre[10] = pre[11] = 0;
      fwrite(pre, 1, 12, f);
    }
    fwrite(cases[i].header, 1, hl - 1, f);
    fputc('\n', f);
    for (size_t k = 0; k < cases[i].data; k++) fputc((int)(k & 1), f);
    fclose(f);
    kiln_tensor r;
    memset(&err, 0, sizeof err);
    st = kiln_tensor_read_npy(path, &r, &err);
    CHECK(st == cases[i].want && (st == KILN_OK) == (r.data != NULL) &&
              strstr(err.message, cases[i].needle),
          ".npy case %zu -> %s %s", i, kiln_status_str(st), err.message);
    kiln_tensor_release(&r);
  }

  /* Truncation of a valid file at every length. */
  kiln_tensor a;
  int64_t d2[2] = {3, 5};
  kiln_tensor_alloc(&a, KILN_DTYPE_FLOAT, 2, d2, NULL);
  kiln_tensor_write_npy(path, &a, NULL);
  kiln_tensor_release(&a);
  FILE *f = fopen(path, "rb");
  uint8_t whole[256];
  size_t wl = fread(whole, 1, sizeof whole, f);
  fclose(f);
  bad = 0;
  for (size_t n = 0; n < wl; n++) {
    write_file(path, whole, n);
    kiln_tensor r;
    if (kiln_tensor_read_npy(path, &r, NULL) == KILN_OK) {
      bad++;
      kiln_tensor_release(&r);
    }
  }
  CHECK(wl == 128 + 60 && bad == 0, ".npy truncated at each of %zu lengths fails", wl);

  write_file(path, whole, wl);
  int n;
  for (n = 1; n < 100; n++) {
    kiln_tensor r;
    kiln__alloc_fail_after((uint64_t)n);
    st = kiln_tensor_read_npy(path, &r, NULL);
    kiln__alloc_fail_after(0);
    if (st == KILN_OK) {
      kiln_tensor_release(&r);
      break;
    }
    if (st != KILN_NO_MEMORY) break;
  }
  CHECK(st == KILN_OK, ".npy read: allocation failures 1..%d give NO_MEMORY", n - 1);

  kiln_tensor s = {.dtype = KILN_DTYPE_STRING};
  st = kiln_tensor_write_npy(path, &s, &err);
  CHECK(st == KILN_UNSUPPORTED, "writing a string tensor as .npy: %s", err.message);
}

/* Optional: real models given on the command line must load. */
static void test_files(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    if (!f) {
      CHECK(0, "cannot open %s", argv[i]);
      continue;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc(sz > 0 ? (size_t)sz : 1);
    size_t n = fread(buf, 1, (size_t)(sz > 0 ? sz : 0), f);
    fclose(f);
    kiln__graph *g = NULL;
    kiln_error err = {0};
    kiln_status st = kiln__onnx_import(buf, n, NULL, &g, &err);
    CHECK(st == KILN_OK, "%s loads (%s)", argv[i], err.message);
    kiln__graph_free(g);
    free(buf);
  }
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  char tmp[] = "/tmp/kiln_test_loader_XXXXXX";
  if (!mkdtemp(tmp)) {
    perror("mkdtemp");
    return 1;
  }
  test_valid();
  test_typed_fields();
  test_bad_tensors();
  test_bad_graphs();
  test_external(tmp);
  test_subgraph();
  test_nesting();
  test_truncation_and_flips();
  test_alloc_failures();
  test_tensor_files(tmp);
  test_files(argc, argv);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
  printf("%d of %d checks failed\n", failures, checks);
  return failures ? 1 : 0;
}
