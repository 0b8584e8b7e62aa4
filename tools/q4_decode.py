#!/usr/bin/python3
"""Decodes every com.microsoft MatMulNBits node of a model back to a float MatMul (numpy, written
from the op's spec, independently of Kiln's C writer), so the packing can be checked by running
both files: ONNX Runtime on the int4 file must give what any runtime gives on the decoded one.

  W[k, n] = (code(n, k) - zero_point(n, k // block)) * scale[n * n_blocks + k // block]
  code: B[n, k // block, (k % block) // 2], low nibble for even k, high for odd k
  scale: float32, or float16 behind a Cast(to=FLOAT) (Kiln's default, --scale-type fp16)
  zero point: 8 without zero_points, else zero_points[n * ceil(n_blocks / 2) + blk // 2],
              low nibble for even blk

usage: tools/q4_decode.py IN.onnx OUT.onnx
"""
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper


def nibbles(b):
    """uint8 array [..., m] -> [..., 2m]: low nibble first."""
    out = np.empty(b.shape[:-1] + (b.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = b & 0x0F
    out[..., 1::2] = b >> 4
    return out


def decode(node, inits):
    at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    K, N, block = at["K"], at["N"], at["block_size"]
    assert at.get("bits", 4) == 4
    B = inits[node.input[1]]
    nb = (K + block - 1) // block
    assert B.shape == (N, nb, block // 2), B.shape
    scales = inits[node.input[2]].reshape(N, nb).astype(np.float32)  # fp16 -> fp32 is exact
    codes = nibbles(B).reshape(N, nb, block).astype(np.float32)
    if len(node.input) > 3 and node.input[3]:
        zp = nibbles(inits[node.input[3]].reshape(N, -1))[:, :nb].astype(np.float32)
    else:
        zp = np.full((N, nb), 8, np.float32)
    w = (codes - zp[:, :, None]) * scales[:, :, None]  # [N, nb, block]
    return np.ascontiguousarray(w.reshape(N, nb * block)[:, :K].T)  # [K, N]


def main():
    m = onnx.load(sys.argv[1])
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:  # Cast(float16 initializer, to=FLOAT): the scales as the op reads them
        if node.op_type == "Cast" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]].astype(np.float32)
    nodes, new_inits, n_dec = [], [], 0
    for node in g.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            nodes.append(node)
            continue
        w = decode(node, inits)
        wname = node.input[1] + "_decoded"
        new_inits.append(numpy_helper.from_array(w, wname))
        nodes.append(helper.make_node("MatMul", [node.input[0], wname], list(node.output), node.name))
        n_dec += 1
    used = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if n.op_type != "Cast" or n.output[0] in used]  # the scales' Casts
    used = {i for n in nodes for i in n.input}
    keep = [t for t in g.initializer if t.name in used] + new_inits
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(keep)
    ops = [o for o in m.opset_import if o.domain not in ("com.microsoft",)]
    del m.opset_import[:]
    m.opset_import.extend(ops)
    onnx.checker.check_model(m)
    onnx.save(m, sys.argv[2])
    print(f"decoded {n_dec} MatMulNBits nodes -> {sys.argv[2]}")


if __name__ == "__main__":
    main()
