#!/usr/bin/python3
"""Writes the MatMulNBits fixture of tests/test_cpu_nbits.c: a two-layer model of com.microsoft
MatMulNBits nodes with random 4-bit codes, and numpy-computed outputs for two inputs (1 row: the
GEMV path; 9 rows: the dequantize + SGEMM path). The expected outputs come from the op's spec
(ONNX Runtime contrib ops), decoded here independently of Kiln's C code. Run from the repo root:
    /usr/bin/python3 tools/make_nbits_model.py
Outputs (deterministic): tests/models/nbits_tiny.onnx, tests/data/nbits/{x1,x9,y1,y9}.npy

  layer 1: K=45, N=37, block 16 (3 blocks, the last partial), packed uint8 zero points (odd block
           count: the last byte's high nibble unused), bias
  Relu
  layer 2: K=37, N=11, block 32 (2 blocks), no zero points (8), no bias
"""
import os

import numpy as np

np.float, np.int, np.bool, np.object = float, int, bool, object  # onnx 1.12 on numpy >= 1.24
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
rng = np.random.default_rng(2026)


def layer(name, K, N, block, zp, bias):
    nb = (K + block - 1) // block
    codes = rng.integers(0, 16, size=(N, nb * block)).astype(np.uint8)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).reshape(N, nb, block // 2)
    scales = rng.uniform(0.02, 0.2, size=(N * nb,)).astype(np.float32)
    inits = [numpy_helper.from_array(packed, name + "_B"),
             numpy_helper.from_array(scales, name + "_scales")]
    inputs = [None, name + "_B", name + "_scales"]
    zps = np.full((N, nb), 8, np.int64)
    if zp:
        zps = rng.integers(0, 16, size=(N, nb))
        padded = np.zeros((N, (nb + 1) // 2 * 2), np.int64)
        padded[:, :nb] = zps
        zbytes = (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8).reshape(-1)
        inits.append(numpy_helper.from_array(zbytes, name + "_zp"))
        inputs.append(name + "_zp")
    b = None
    if bias:
        b = rng.uniform(-1, 1, size=(N,)).astype(np.float32)
        while len(inputs) < 5:
            inputs.append("")
        inits.append(numpy_helper.from_array(b, name + "_bias"))
        inputs.append(name + "_bias")
    # W[k, n] = (code - zp) * scale, in float32 as the spec writes it; K columns of the padding cut
    blk = np.arange(nb * block) // block
    w = ((codes.astype(np.float32) - zps[:, blk].astype(np.float32))
         * scales.reshape(N, nb)[:, blk]).astype(np.float32)[:, :K].T
    return inits, inputs, w, b


def main():
    os.makedirs(os.path.join(ROOT, "tests", "data", "nbits"), exist_ok=True)
    i1, in1, w1, b1 = layer("l1", 45, 37, 16, zp=True, bias=True)
    i2, in2, w2, _ = layer("l2", 37, 11, 32, zp=False, bias=False)
    in1[0], in2[0] = "x", "r"
    attrs = lambda K, N, blk: dict(K=K, N=N, bits=4, block_size=blk)  # noqa: E731
    nodes = [helper.make_node("MatMulNBits", in1, ["h"], "l1", domain="com.microsoft",
                              **attrs(45, 37, 16)),
             helper.make_node("Relu", ["h"], ["r"], "relu"),
             helper.make_node("MatMulNBits", in2, ["y"], "l2", domain="com.microsoft",
                              **attrs(37, 11, 32))]
    g = helper.make_graph(nodes, "nbits_tiny",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 45])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 11])],
                          i1 + i2)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13),
                                            helper.make_opsetid("com.microsoft", 1)],
                          producer_name="kiln make_nbits_model.py")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(ROOT, "tests", "models", "nbits_tiny.onnx"))
    for rows in (1, 9):
        x = rng.uniform(-1, 1, size=(rows, 45)).astype(np.float32)
        h = np.maximum(x.astype(np.float64) @ w1.astype(np.float64) + b1, 0)
        y = (h @ w2.astype(np.float64)).astype(np.float32)
        np.save(os.path.join(ROOT, "tests", "data", "nbits", f"x{rows}.npy"), x)
        np.save(os.path.join(ROOT, "tests", "data", "nbits", f"y{rows}.npy"), y)
    print("wrote tests/models/nbits_tiny.onnx and tests/data/nbits/{x1,x9,y1,y9}.npy")


if __name__ == "__main__":
    main()
