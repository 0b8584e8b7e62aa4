#!/usr/bin/python3
"""Writes single-op models for bench/run_nbits.sh: for each K x N, an FP32 MatMul with a random
[K, N] weight and the same weight as com.microsoft MatMulNBits (block 32, symmetric), A [M, K]
with a symbolic M (kiln bench --shape picks it). usage: bench/nbits_models.py OUT_DIR"""
import os
import sys

import numpy as np

np.float, np.int, np.bool, np.object = float, int, bool, object  # onnx 1.12 on numpy >= 1.24
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SHAPES = [(256, 1024), (1024, 256), (4096, 4096)]
rng = np.random.default_rng(7)


def save(path, node, inits, K, N, ms):
    g = helper.make_graph([node], "b", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", N])], inits)
    ops = [helper.make_opsetid("", 13)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = 8
    onnx.save(m, path)


for K, N in SHAPES:
    w = rng.standard_normal((K, N)).astype(np.float32)
    save(os.path.join(sys.argv[1], f"fp32_{K}x{N}.onnx"),
         helper.make_node("MatMul", ["a", "w"], ["y"]), [numpy_helper.from_array(w, "w")], K, N, False)
    nb = K // 32
    blocks = w.T.reshape(N, nb, 32)
    idx = np.abs(blocks).argmax(axis=2)
    mx = np.take_along_axis(blocks, idx[:, :, None], 2)[:, :, 0]
    s = np.where(mx != 0, mx / -8.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(blocks / s[:, :, None]) + 8, 0, 15).astype(np.uint8)
    packed = (codes[:, :, 0::2] | (codes[:, :, 1::2] << 4)).astype(np.uint8)
    node = helper.make_node("MatMulNBits", ["a", "B", "S"], ["y"], domain="com.microsoft",
                            K=K, N=N, bits=4, block_size=32)
    save(os.path.join(sys.argv[1], f"int4_{K}x{N}.onnx"), node,
         [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(s.reshape(-1), "S")], K, N, True)
