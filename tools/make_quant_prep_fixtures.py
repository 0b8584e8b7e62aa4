#!/usr/bin/env python3
"""Fixtures for tests/test_quant_prep.c: tiny opset-9 models written the way paddle2onnx writes
PP-OCR (every weight a Constant node, Clip/Slice/Squeeze/Unsqueeze with attributes, Softmax on
axis 1 of a rank-3 tensor, where opset 9's flatten-to-2-D meaning differs from opset 13's), and
their outputs computed here with numpy from the opset-9 definitions.

  tests/models/qprep_opset9.onnx    x float32 [2, 3, 4, 4] -> y float32 [2, 2, 5]
  tests/models/qprep_split9.onnx    the same start, then a Split-2 (split as an attribute): an op
                                    the quantizer must refuse to relabel at opset 13
  tests/data/qprep/x.npy            the input (also the calibration folder)
  tests/data/qprep/expected.npy     y for qprep_opset9.onnx

usage: make_quant_prep_fixtures.py REPO_DIR"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

repo = sys.argv[1] if len(sys.argv) > 1 else "."
r = np.random.default_rng(7)
x = r.normal(size=(2, 3, 4, 4)).astype(np.float32)
w1 = (r.normal(size=(4, 3, 3, 3)) * 0.5).astype(np.float32)
b1 = r.normal(size=(4,)).astype(np.float32)
w2 = (r.normal(size=(16, 5)) * 0.5).astype(np.float32)


def const(name, a):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(a, name + "_v"))


def head(extra_nodes, outputs):
    nodes = [const("w1", w1), const("b1", b1), const("w2", w2),
             const("shape", np.array([2, 2, 16], np.int64)),
             helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Clip", ["c"], ["r"], min=0.0, max=6.0)] + extra_nodes
    g = helper.make_graph(nodes, "qprep", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
                          outputs)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)], ir_version=7)
    onnx.checker.check_model(m)
    return m


main = head([helper.make_node("Slice", ["r"], ["s"], starts=[1], ends=[3], axes=[1]),
             helper.make_node("Reshape", ["s", "shape"], ["rs"]),
             helper.make_node("MatMul", ["rs", "w2"], ["m"], name="matmul"),
             helper.make_node("Unsqueeze", ["m"], ["u"], axes=[0]),
             helper.make_node("Squeeze", ["u"], ["q"], axes=[0]),
             helper.make_node("Softmax", ["q"], ["y"], axis=1)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 5])])
split = head([helper.make_node("Split", ["r"], ["s0", "s1"], axis=1, split=[2, 2]),
              helper.make_node("Add", ["s0", "s1"], ["y"])],
             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2, 4, 4])])

# numpy, opset 9 meanings
xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
c = np.zeros((2, 4, 4, 4))
for i in range(4):
    for j in range(4):
        c[:, :, i, j] = np.einsum("nchw,ochw->no", xp[:, :, i:i + 3, j:j + 3], w1) + b1
q = np.clip(c, 0, 6)[:, 1:3].reshape(2, 2, 16) @ w2.astype(np.float64)
flat = q.reshape(2, 10)  # Softmax-9, axis 1: normalized over the flattened dims 1..
e = np.exp(flat - flat.max(axis=1, keepdims=True))
y = (e / e.sum(axis=1, keepdims=True)).reshape(2, 2, 5).astype(np.float32)

os.makedirs(f"{repo}/tests/data/qprep", exist_ok=True)
onnx.save(main, f"{repo}/tests/models/qprep_opset9.onnx")
onnx.save(split, f"{repo}/tests/models/qprep_split9.onnx")
np.save(f"{repo}/tests/data/qprep/x.npy", x)
np.save(f"{repo}/tests/data/qprep/expected.npy", y)
