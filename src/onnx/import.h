/* ONNX protobuf -> graph IR. */
#ifndef KILN_ONNX_IMPORT_H
#define KILN_ONNX_IMPORT_H

#include "ir/graph.h"

/* Parses a serialized ModelProto into a finalized graph (nodes topologically sorted, each node's
   opset set from the model's opset_import, subgraphs imported recursively with their outer-scope
   references marked is_outer). External tensor data is read from files under `base_dir` (NULL
   forbids external data); a location that leaves base_dir is rejected. Ops are not resolved here. */
kiln_status kiln__onnx_import(const void *data, size_t size, const char *base_dir,
                              kiln__graph **out, kiln_error *err);

/* kiln__onnx_import of a file, with external data resolved against the file's folder. */
kiln_status kiln__onnx_import_file(const char *path, kiln__graph **out, kiln_error *err);

/* Parses a serialized TensorProto into a tensor whose data the caller releases with
   kiln_tensor_release(). */
kiln_status kiln__onnx_tensor(const void *data, size_t size, kiln_tensor *out, kiln_error *err);

/* Parses a serialized SequenceProto (kind SEQUENCE), OptionalProto (kind OPTIONAL) or, for any
   other kind, TensorProto. Released with kiln_tensor_release(). */
kiln_status kiln__onnx_value(const void *data, size_t size, kiln_dtype kind, kiln_tensor *out,
                             kiln_error *err);

#endif
