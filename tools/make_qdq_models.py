#!/usr/bin/python3
"""Writes the QDQ models tests/test_qdq.c optimizes with fuse-qdq (tests/models/qdq_*.onnx), in
the static int8 layout ONNX Runtime's quantizer writes. Run from anywhere:
    /usr/bin/python3 tools/make_qdq_models.py
Needs python3-numpy and python3-onnx (1.12). Deterministic (fixed seed).

qdq_wide: one quantized input read by several ops, each ending in its own graph output, so every
  fused op sees exactly the input the unfused graph sees (the test bounds each output by one step
  of its output scale). Fused: conv_a (per-channel, int32 bias), conv_b (per-tensor weight, no
  weight zero point, Relu dropped: y zero point 0), conv_c (Clip(0, 6) dropped: Q(6) is 255), conv_k (float bias), mm_d (N-D activation, per-column int8 output), gemm_e (transB=1,
  per-channel), gemm_f (transB=0, per-tensor). Left float: conv_g (Relu before a zero point of
  20), gemm_h (bias C), conv_i (bias scale not x_scale * w_scale), conv_j (output read twice),
  conv_m (grouped, not depthwise). Also fused: conv_l (depthwise), conv_n (depthwise, stride 2,
  Clip(0, 6) dropped).
Each model's qdq_NAME.steps lists its outputs with their quantization steps (0: a float output).
qdq_chain: Q -> conv1 + Relu -> conv2 -> DQ -> Q (same parameters) -> conv3: after fuse-qdq the
  three QLinearConvs follow each other with no Q/DQ between; conv1's output is also a graph
  output through its DequantizeLinear."""
import os

import numpy as np

np.float, np.int, np.bool, np.object = float, int, bool, object  # onnx 1.12 on numpy >= 1.24
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "models")
rng = np.random.default_rng(77)
F = TensorProto.FLOAT
inits, nodes = [], []


def const(name, a):
    inits.append(numpy_helper.from_array(np.asarray(a), name))
    return name


def node(op, ins, outs, name, **attrs):
    nodes.append(helper.make_node(op, ins, outs, name=name, **attrs))
    return outs[0]


def qparams(lo, hi, dtype=np.uint8):
    """Asymmetric parameters for [lo, hi] widened to hold 0 (as the calibrators do)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    qmin, qmax = (0, 255) if dtype == np.uint8 else (-128, 127)
    s = np.float32((hi - lo) / (qmax - qmin))
    z = int(np.clip(round(qmin - lo / s), qmin, qmax))
    return s, np.array(z, dtype)


def q(x, s, z, tag):
    return node("QuantizeLinear", [x, const(tag + "_s", np.float32(s)), const(tag + "_z", z)],
                [tag + "_q"], tag + "/Q")


def dq(x, s, z, tag, axis=None):
    ins = [x, const(tag + "_ds", s)] + ([const(tag + "_dz", z)] if z is not None else [])
    kw = {"axis": axis} if axis is not None else {}
    return node("DequantizeLinear", ins, [tag + "_dq"], tag + "/DQ", **kw)


def weight(tag, shape, axis, per_channel=True, zp=True):
    w = rng.uniform(-1, 1, size=shape).astype(np.float32)
    if per_channel:
        red = tuple(d for d in range(len(shape)) if d != axis)
        s = (np.abs(w).max(axis=red) / 127).astype(np.float32)
        bs = [1] * len(shape)
        bs[axis] = shape[axis]
        wq = np.clip(np.rint(w / s.reshape(bs)), -127, 127).astype(np.int8)
        z = np.zeros(shape[axis], np.int8)
    else:
        s = np.float32(np.abs(w).max() / 127)
        wq = np.clip(np.rint(w / s), -127, 127).astype(np.int8)
        z = np.array(0, np.int8)
    return dq(const(tag + "_wq", wq), s, z if zp else None, tag + "_w", axis if per_channel else None), s


def bias(tag, xs, ws, n, scale_mul=1.0):
    bs = (np.float32(xs) * np.asarray(ws, np.float32) * np.float32(scale_mul)).astype(np.float32)
    bs = np.broadcast_to(bs, (n,)).copy()
    bq = rng.integers(-2000, 2000, size=n).astype(np.int32)
    return dq(const(tag + "_bq", bq), bs, None, tag + "_b", 0)


steps = {}  # graph output -> its quantization step (the output scale), for the test


def out_q(y, tag, lo, hi, dtype=np.uint8, s_z=None):
    s, z = s_z if s_z else qparams(lo, hi, dtype)
    yq = q(y, s, z, tag + "_y")
    out = dq(yq, s, z, tag + "_yo")
    steps[out] = s
    return out, yq, (s, z)


def save(name, inputs, outputs):
    # the outputs' types and shapes from ONNX's own shape inference (on the graph without them)
    probe = helper.make_model(helper.make_graph(nodes, name, inputs, [], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    known = {v.name: v for v in onnx.shape_inference.infer_shapes(probe).graph.value_info}
    outputs = [known[o] for o in outputs]
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)],
                          producer_name="kiln make_qdq_models.py")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, os.path.join(OUT, f"qdq_{name}.onnx"))
    with open(os.path.join(OUT, f"qdq_{name}.steps"), "w") as f:
        for o in m.graph.output:  # "name step" per output, 0 for float outputs
            f.write(f"{o.name} {float(steps.get(o.name, 0)):.9g}\n")
    steps.clear()
    nodes.clear()
    inits.clear()


def vi(name, shape):
    return helper.make_tensor_value_info(name, F, shape)


# ---- qdq_wide ------------------------------------------------------------------------------
# The test's inputs are uniform in [-2, 2).
xs, xz = qparams(-2.0, 2.0)
xd = dq(q("x", xs, xz, "x"), xs, xz, "x")
outs = []
# conv_a: 3x3 pad 1, per-channel weights, int32 bias, uint8 output with a mid-range zero point.
w, ws = weight("conv_a", (6, 4, 3, 3), 0)
y = node("Conv", [xd, w, bias("conv_a", xs, ws, 6)], ["conv_a_y"], "conv_a", pads=[1, 1, 1, 1])
outs.append(out_q(y, "conv_a", -12.0, 9.0)[0])
# conv_b: 1x1 stride 2, per-tensor weight without a zero point, Relu then Q with zero point 0.
w, _ = weight("conv_b", (8, 4, 1, 1), 0, per_channel=False, zp=False)
y = node("Conv", [xd, w], ["conv_b_y"], "conv_b", strides=[2, 2])
y = node("Relu", [y], ["conv_b_r"], "conv_b_relu")
outs.append(out_q(y, "conv_b", 0.0, 5.0)[0])
# conv_c: 3x3 with bias, Clip(0, 6), Q with scale 6/255: Q(6) = 255, Q(0) = 0.
w, ws = weight("conv_c", (4, 4, 3, 3), 0)
y = node("Conv", [xd, w, bias("conv_c", xs, ws, 4)], ["conv_c_y"], "conv_c", pads=[1, 1, 1, 1])
y = node("Clip", [y, const("c_lo", np.float32(0)), const("c_hi", np.float32(6))], ["conv_c_r"],
         "conv_c_clip")
outs.append(out_q(y, "conv_c", 0.0, 6.0)[0])
# conv_k: a float bias (quantized onto the accumulator grid by the pass).
w, ws = weight("conv_k", (5, 4, 3, 3), 0)
y = node("Conv", [xd, w, const("conv_k_bf", rng.uniform(-1, 1, 5).astype(np.float32))],
         ["conv_k_y"], "conv_k")
outs.append(out_q(y, "conv_k", -10.0, 10.0)[0])
# mm_d: [1, 4, 9, 9] x [9, 5], per-column weights, int8 output.
w, _ = weight("mm_d", (9, 5), 1)
y = node("MatMul", [xd, w], ["mm_d_y"], "mm_d")
outs.append(out_q(y, "mm_d", -4.0, 5.0, np.int8)[0])
# The Gemms read a second input, quantized to int8.
x2s, x2z = qparams(-2.0, 2.0, np.int8)
x2d = dq(q("x2", x2s, x2z, "x2"), x2s, x2z, "x2")
w, _ = weight("gemm_e", (7, 16), 0)
y = node("Gemm", [x2d, w], ["gemm_e_y"], "gemm_e", transB=1)
outs.append(out_q(y, "gemm_e", -8.0, 8.0)[0])
w, _ = weight("gemm_f", (16, 7), 1, per_channel=False)
y = node("Gemm", [x2d, w], ["gemm_f_y"], "gemm_f")
outs.append(out_q(y, "gemm_f", -8.0, 8.0)[0])
# Near misses.
w, _ = weight("conv_g", (3, 4, 3, 3), 0)
y = node("Relu", [node("Conv", [xd, w], ["conv_g_y"], "conv_g")], ["conv_g_r"], "conv_g_relu")
outs.append(out_q(y, "conv_g", -1.0, 12.0)[0])  # zero point 20: Relu is not a no-op
w, _ = weight("gemm_h", (7, 16), 0)
y = node("Gemm", [x2d, w, const("gemm_h_c", rng.uniform(-1, 1, 7).astype(np.float32))],
         ["gemm_h_y"], "gemm_h", transB=1)
outs.append(out_q(y, "gemm_h", -8.0, 8.0)[0])
w, ws = weight("conv_i", (3, 4, 3, 3), 0)
y = node("Conv", [xd, w, bias("conv_i", xs, ws, 3, 1.001)], ["conv_i_y"], "conv_i")
outs.append(out_q(y, "conv_i", -12.0, 12.0)[0])
w, _ = weight("conv_j", (3, 4, 1, 1), 0)
y = node("Conv", [xd, w], ["conv_j_y"], "conv_j")
outs.append(out_q(y, "conv_j", -4.0, 4.0)[0])
outs.append(node("Neg", [y], ["conv_j_neg"], "conv_j_neg"))  # the conv output's second reader
# conv_l: depthwise (group 4), fused (the integer depthwise kernel).
w, ws = weight("conv_l", (4, 1, 3, 3), 0)
y = node("Conv", [xd, w, bias("conv_l", xs, ws, 4)], ["conv_l_y"], "conv_l", group=4)
outs.append(out_q(y, "conv_l", -3.0, 3.0)[0])
# conv_m: grouped but not depthwise (group 2, two input channels per group): left float.
w, ws = weight("conv_m", (4, 2, 3, 3), 0)
y = node("Conv", [xd, w, bias("conv_m", xs, ws, 4)], ["conv_m_y"], "conv_m", group=2)
outs.append(out_q(y, "conv_m", -3.0, 3.0)[0])
# conv_n: depthwise, stride 2, padded, Clip(0, 6) dropped (mobilenet_v2's form): fused.
w, ws = weight("conv_n", (4, 1, 3, 3), 0)
y = node("Conv", [xd, w, bias("conv_n", xs, ws, 4)], ["conv_n_y"], "conv_n", group=4,
         strides=[2, 2], pads=[1, 1, 1, 1])
y = node("Clip", [y, const("conv_n_lo", np.array(0.0, np.float32)),
                  const("conv_n_hi", np.array(6.0, np.float32))], ["conv_n_r"], "conv_n_clip")
outs.append(out_q(y, "conv_n", 0.0, 6.0)[0])
save("wide", [vi("x", [1, 4, 9, 9]), vi("x2", [3, 16])], outs)

# ---- qdq_chain -----------------------------------------------------------------------------
xs, xz = qparams(-2.0, 2.0)
xd = dq(q("x", xs, xz, "x"), xs, xz, "x")
w, ws = weight("conv1", (8, 3, 3, 3), 0)
y = node("Conv", [xd, w, bias("conv1", xs, ws, 8)], ["conv1_y"], "conv1", pads=[1, 1, 1, 1])
y = node("Relu", [y], ["conv1_r"], "conv1_relu")
y1, _, (s1, z1) = out_q(y, "conv1", 0.0, 10.0)
w, ws = weight("conv2", (8, 8, 3, 3), 0)
y = node("Conv", [y1, w, bias("conv2", s1, ws, 8)], ["conv2_y"], "conv2", pads=[1, 1, 1, 1])
y2, _, (s2, z2) = out_q(y, "conv2", -40.0, 40.0)
# A second pair with the same parameters (a tool that quantizes every tensor it reads writes it).
y2b = dq(q(y2, s2, z2, "conv2_again"), s2, z2, "conv2_again")
w, ws = weight("conv3", (4, 8, 1, 1), 0)
y = node("Conv", [y2b, w, bias("conv3", s2, ws, 4)], ["conv3_y"], "conv3")
y3 = out_q(y, "conv3", -60.0, 60.0)[0]
save("chain", [vi("x", [1, 3, 10, 10])], [y3, y1])

# ---- qdq_pool ------------------------------------------------------------------------------
# Integer chains (squeezenet's fire modules and pools), fed by quantizations of the input so that
# both levels see the same 8-bit tensors and the rewrites must be bit-exact:
#   pool_a: DQ -> MaxPool 3x3/2 ceil_mode -> Q with the same parameters: MaxPool on the 8-bit x.
#   cat_b:  DQ, DQ (different scales and zero points) -> Concat -> Q: QLinearConcat.
#   cat_c:  DQ, DQ -> Concat -> MaxPool 2x2/2 -> Q: QLinearConcat -> 8-bit MaxPool.
#   Left float: pool_d (its Q has another scale), cat_e (one input is not dequantized), pool_f
#   (pads as large as the kernel).
xs, xz = qparams(-2.0, 2.0)
xq = q("x", xs, xz, "x")
xd = dq(xq, xs, xz, "x")
p = node("MaxPool", [xd], ["pool_a_y"], "pool_a", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
outs = [out_q(p, "pool_a", 0, 0, s_z=(xs, xz))[0]]
s1, z1 = qparams(-1.0, 1.5)
s3, z3 = qparams(-3.0, 2.5)
e1q, e3q = q("x", s1, z1, "x1"), q("x", s3, z3, "x3")
d1, d3 = dq(e1q, s1, z1, "e1_b"), dq(e3q, s3, z3, "e3_b")
c = node("Concat", [d1, d3], ["cat_b_y"], "cat_b", axis=1)
outs.append(out_q(c, "cat_b", -2.0, 2.0)[0])
d1, d3 = dq(e1q, s1, z1, "e1_c"), dq(e3q, s3, z3, "e3_c")
c = node("Concat", [d1, d3], ["cat_c_y"], "cat_c", axis=1)
p = node("MaxPool", [c], ["pool_c_y"], "pool_c", kernel_shape=[2, 2], strides=[2, 2])
outs.append(out_q(p, "pool_c", -1.0, 1.0)[0])
p = node("MaxPool", [dq(e1q, s1, z1, "e1_d")], ["pool_d_y"], "pool_d", kernel_shape=[2, 2])
outs.append(out_q(p, "pool_d", 0.0, 3.0)[0])
c = node("Concat", [dq(e1q, s1, z1, "e1_e"), "x"], ["cat_e_y"], "cat_e", axis=1)
outs.append(out_q(c, "cat_e", -2.0, 6.0)[0])
p = node("MaxPool", [dq(e1q, s1, z1, "e1_f")], ["pool_f_y"], "pool_f", kernel_shape=[2, 2],
         pads=[2, 2, 2, 2])
outs.append(out_q(p, "pool_f", 0, 0, s_z=(s1, z1))[0])
save("pool", [vi("x", [1, 3, 12, 14])], outs)

# ---- qdq_resid -----------------------------------------------------------------------------
# ResNet's residual adds and final pool (issue 7), fed by quantizations of the input so that both
# levels see the same 8-bit tensors:
#   add_a: DQ, DQ (different scales and zero points) -> Add -> Q: QLinearAdd, bit-exact.
#   add_b: DQ, DQ -> Add -> Relu -> Q (zero point 0): QLinearAdd, the Relu dropped, bit-exact.
#   add_c: DQ(x), DQ(constant [3, 1, 1]) -> Add -> Q: QLinearAdd broadcasting, bit-exact.
#   add_d: int8 throughout: QLinearAdd on int8, bit-exact.
#   gap_e: DQ -> GlobalAveragePool -> Q: QLinearGlobalAveragePool, within one step.
#   Left float: add_f (Relu before a zero point of 40), add_g (one input is not dequantized),
#   add_h (uint8 and int8 inputs), gap_i (int8 output of a uint8 input).
s1, z1 = qparams(-1.0, 1.5)
s3, z3 = qparams(-3.0, 2.5)
e1q, e3q = q("x", s1, z1, "r1"), q("x", s3, z3, "r3")
a = node("Add", [dq(e1q, s1, z1, "r1_a"), dq(e3q, s3, z3, "r3_a")], ["add_a_y"], "add_a")
outs = [out_q(a, "add_a", -4.0, 4.0)[0]]
a = node("Add", [dq(e1q, s1, z1, "r1_b"), dq(e3q, s3, z3, "r3_b")], ["add_b_s"], "add_b")
r = node("Relu", [a], ["add_b_y"], "add_b_relu")
outs.append(out_q(r, "add_b", 0.0, 3.0)[0])
cq = rng.integers(0, 256, size=(3, 1, 1)).astype(np.uint8)
cs, cz = qparams(-0.5, 0.7)
a = node("Add", [dq(e1q, s1, z1, "r1_c"), dq(const("add_c_cq", cq), cs, cz, "add_c_c")], ["add_c_y"],
         "add_c")
outs.append(out_q(a, "add_c", -2.0, 2.5)[0])
t1, u1 = qparams(-1.5, 1.0, np.int8)
t3, u3 = qparams(-2.0, 2.0, np.int8)
i1, i3 = q("x", t1, u1, "ri1"), q("x", t3, u3, "ri3")
a = node("Add", [dq(i1, t1, u1, "ri1_d"), dq(i3, t3, u3, "ri3_d")], ["add_d_y"], "add_d")
outs.append(out_q(a, "add_d", -3.0, 3.5, np.int8)[0])
p = node("GlobalAveragePool", [dq(e1q, s1, z1, "r1_e")], ["gap_e_y"], "gap_e")
outs.append(out_q(p, "gap_e", -0.3, 0.4)[0])
a = node("Add", [dq(e1q, s1, z1, "r1_f"), dq(e3q, s3, z3, "r3_f")], ["add_f_s"], "add_f")
r = node("Relu", [a], ["add_f_y"], "add_f_relu")
outs.append(out_q(r, "add_f", 0, 0, s_z=(np.float32(0.02), np.array(40, np.uint8)))[0])
a = node("Add", [dq(e1q, s1, z1, "r1_g"), "x"], ["add_g_y"], "add_g")
outs.append(out_q(a, "add_g", -3.0, 3.5)[0])
a = node("Add", [dq(e1q, s1, z1, "r1_h"), dq(i3, t3, u3, "ri3_h")], ["add_h_y"], "add_h")
outs.append(out_q(a, "add_h", -3.0, 3.5)[0])
p = node("GlobalAveragePool", [dq(e1q, s1, z1, "r1_i")], ["gap_i_y"], "gap_i")
outs.append(out_q(p, "gap_i", -0.3, 0.4, np.int8)[0])
save("resid", [vi("x", [1, 3, 12, 14])], outs)

# ---- qdq_fc ----------------------------------------------------------------------------------
# Float outputs on integer products (a classifier's logits, issue 7): integer_float_out in
# fuse_qdq.c runs them as MatMulInteger -> [Add bias] -> Cast -> Mul(xs * ws):
#   fc_a: Gemm transB=1, per-channel int8 weight, int32 bias on the xs * ws grid, int8 input.
#   fc_b: MatMul on a 3-D uint8 input (zero point 131), per-tensor weight with zero point 3.
#   fc_c: Gemm transB=0, per-column weight, no bias.
#   Left float (weight dequantized at load): fc_d (bias scale not xs * ws).
f1s, f1z = qparams(-2.0, 2.0, np.int8)
f1 = q("x", f1s, f1z, "f1")
w, ws = weight("fc_a", (10, 48), 0)
outs = [node("Gemm", [dq(f1, f1s, f1z, "f1_a"), w, bias("fc_a", f1s, ws, 10)], ["fc_a_y"], "fc_a",
             transB=1)]
f2s, f2z = np.float32(4.5 / 255), np.array(131, np.uint8)
f2 = q("x3", f2s, f2z, "f2")
wq = rng.integers(-127, 128, size=(48, 5)).astype(np.int8)
wd = dq(const("fc_b_wq", wq), np.float32(0.011), np.array(3, np.int8), "fc_b_w")
outs.append(node("MatMul", [dq(f2, f2s, f2z, "f2_b"), wd], ["fc_b_y"], "fc_b"))
w, ws = weight("fc_c", (48, 6), 1)
outs.append(node("Gemm", [dq(f1, f1s, f1z, "f1_c"), w], ["fc_c_y"], "fc_c"))
w, ws = weight("fc_d", (4, 48), 0)
outs.append(node("Gemm", [dq(f1, f1s, f1z, "f1_d"), w, bias("fc_d", f1s, ws, 4, 1.001)],
                 ["fc_d_y"], "fc_d", transB=1))
save("fc", [vi("x", [3, 48]), vi("x3", [2, 3, 48])], outs)
