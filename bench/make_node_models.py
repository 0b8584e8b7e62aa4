#!/usr/bin/env python3
"""Writes one-node ONNX models of MobileNet-v2's depthwise convs, SqueezeNet's Concats and the
3x3 stride-2 MaxPools (SqueezeNet's, ResNet's), for timing one kernel with
`kiln bench FILE --threads 1 --runs 300` (bench/RESULTS.md, depthwise section). Needs numpy and onnx (Debian: python3-numpy,
python3-onnx or pip).

usage: bench/make_node_models.py OUT_DIR"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (channels, input side, stride) of MobileNet-v2's 3x3 depthwise layers (pads 1).
DW = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
      (384, 14, 1), (576, 14, 2), (960, 7, 1)]
# (channels per input, side) of SqueezeNet-1.1's fire-module Concats (axis 1, two inputs).
CAT = [(64, 55), (128, 27), (256, 13)]
# (channels, input side, pads, ceil_mode) of the 3x3 stride-2 MaxPools: SqueezeNet-1.1's three,
# ResNet's stem.
POOL = [(64, 111, 0, 1), (128, 55, 0, 1), (256, 27, 0, 1), (64, 112, 1, 0)]


def save(graph, path):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    f32 = TensorProto.FLOAT
    for c, h, s in DW:
        oh = (h + 2 - 3) // s + 1
        w = numpy_helper.from_array(rng.standard_normal((c, 1, 3, 3)).astype(np.float32), "W")
        b = numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "B")
        n = helper.make_node("Conv", ["x", "W", "B"], ["y"], group=c, pads=[1, 1, 1, 1],
                             strides=[s, s], kernel_shape=[3, 3])
        g = helper.make_graph([n], "dw", [helper.make_tensor_value_info("x", f32, [1, c, h, h])],
                              [helper.make_tensor_value_info("y", f32, [1, c, oh, oh])], [w, b])
        save(g, os.path.join(out, f"dw_{c}_{h}_s{s}.onnx"))
    for c, h in CAT:
        n = helper.make_node("Concat", ["a", "b"], ["y"], axis=1)
        ins = [helper.make_tensor_value_info(v, f32, [1, c, h, h]) for v in "ab"]
        g = helper.make_graph([n], "cat", ins,
                              [helper.make_tensor_value_info("y", f32, [1, 2 * c, h, h])])
        save(g, os.path.join(out, f"cat_{c}_{h}.onnx"))
    for c, h, p, ceil in POOL:
        oh = -(-(h + 2 * p - 3) // 2) + 1 if ceil else (h + 2 * p - 3) // 2 + 1
        n = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                             pads=[p] * 4, ceil_mode=ceil)
        g = helper.make_graph([n], "pool", [helper.make_tensor_value_info("x", f32, [1, c, h, h])],
                              [helper.make_tensor_value_info("y", f32, [1, c, oh, oh])])
        save(g, os.path.join(out, f"maxpool_{c}_{h}.onnx"))


if __name__ == "__main__":
    main()
