/* The Open Inference Protocol's request and response bodies, JSON and binary tensor extension.
 * Pure functions over bytes (no HTTP, no runtime), so the decoder can be fuzzed on its own.
 * `srv_` names are internal to server/. */
#ifndef KILN_SERVER_CODEC_H
#define KILN_SERVER_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "kiln/kiln.h"

/* What one request may ask for; a request beyond any of them is a 400. */
typedef struct srv_limits {
  size_t max_body_bytes;      /* whole POST body, JSON header and binary section */
  size_t max_json_bytes;      /* the JSON part */
  size_t max_json_depth;      /* nesting of [ and { */
  size_t max_tensor_elements; /* per tensor */
  size_t max_tensors;         /* inputs, and requested outputs */
} srv_limits;

srv_limits srv_limits_default(void);

typedef struct srv_input {
  char *name;
  kiln_tensor t; /* data malloc'd (NULL when the tensor has no elements) */
} srv_input;

typedef struct srv_output_req {
  char *name;
  int binary; /* -1: the request's default, 0 JSON, 1 binary */
} srv_output_req;

typedef struct srv_infer_req {
  char *id; /* echoed back; NULL when absent */
  size_t n_inputs;
  srv_input *inputs;
  size_t n_outputs; /* 0: every output */
  srv_output_req *outputs;
  int priority;      /* 0 when not given, else 1 (critical) .. 4 (low) */
  int64_t timeout_us; /* 0 when not given */
  int binary_output; /* parameters.binary_data_output: 1, 0, or -1 when not given */
} srv_infer_req;

/* Decodes an inference request. `header_len` is Inference-Header-Content-Length (the JSON part;
   the binary section follows it), or 0 when the body is JSON only. Every failure is
   KILN_INVALID_ARGUMENT (or KILN_NO_MEMORY) with the reason in `err`; `out` then holds nothing.
   On success release `out` with srv_infer_req_free. */
kiln_status srv_decode_infer(const uint8_t *body, size_t len, size_t header_len,
                             const srv_limits *lim, srv_infer_req *out, kiln_error *err);
void srv_infer_req_free(srv_infer_req *r);

/* Protocol datatype names ("FP32", ...) <-> kiln dtypes; NULL / UNDEFINED when unknown. */
const char *srv_dtype_name(kiln_dtype t);
kiln_dtype srv_dtype_parse(const char *name);

float srv_half_to_float(uint16_t h);
uint16_t srv_float_to_half(float f);

/* A growable byte buffer; `failed` latches on allocation failure so callers check once. */
typedef struct srv_buf {
  char *data;
  size_t len, cap;
  int failed;
} srv_buf;

void srv_buf_put(srv_buf *b, const void *p, size_t n);
void srv_buf_puts(srv_buf *b, const char *s);
void srv_buf_printf(srv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends `s` as a JSON string literal, quotes included. */
void srv_buf_json_str(srv_buf *b, const char *s);
void srv_buf_free(srv_buf *b);

/* Appends one tensor's elements as a flat JSON array. */
void srv_buf_json_data(srv_buf *b, const kiln_tensor *t);

#endif
