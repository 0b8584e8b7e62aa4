#!/usr/bin/python3
"""Writes the small models Kiln's tests use (random weights, fixed seed) into tests/models/.

Run with Debian's python3-onnx and python3-numpy:  /usr/bin/python3 tools/make_test_models.py
The output is committed; rerun only when changing the models.

transformer_block.onnx: one pre-LN GPT-style block as PyTorch exports it (LayerNormalization,
Q/K/V MatMul+Add, Reshape/Transpose into heads, scaled QK^T, additive mask, Softmax, weighted V,
output projection, residual, exact-erf GELU MLP), input x float32 [batch, seq, 64].
"""
import os
import numpy as np
for _n, _t in (("float", float), ("int", int), ("bool", bool), ("object", object)):
    if _n not in np.__dict__:
        setattr(np, _n, _t)
import onnx
from onnx import TensorProto, helper, numpy_helper

D, H, S, F = 64, 4, 16, 256
rng = np.random.default_rng(0)
inits, nodes = [], []


def w(name, *shape, scale=0.1):
    inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
    return name


def c(name, value, dtype=np.float32):
    inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
    return name


def n(op, ins, outs, **attrs):
    nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{len(nodes)}", **attrs))
    return outs[0]


x = "x"
ln1 = n("LayerNormalization", [x, w("ln1_g", D), w("ln1_b", D)], ["ln1"], axis=-1, epsilon=1e-5)
heads = {}
for p in "qkv":
    proj = n("Add", [n("MatMul", [ln1, w(f"w{p}", D, D)], [f"{p}_mm"]), w(f"b{p}", D)], [f"{p}_lin"])
    shape = n("Concat", [n("Slice", [n("Shape", [proj], [f"{p}_shape"]), c(f"{p}_s0", [0], np.int64),
                                      c(f"{p}_s1", [2], np.int64)], [f"{p}_bs"]),
                          c(f"{p}_hd", [H, D // H], np.int64)], [f"{p}_newshape"], axis=0)
    r = n("Reshape", [proj, shape], [f"{p}_heads"])
    heads[p] = n("Transpose", [r], [f"{p}_t"], perm=[0, 2, 3, 1] if p == "k" else [0, 2, 1, 3])
scores = n("Mul", [n("MatMul", [heads["q"], heads["k"]], ["qk"]), c("scale", 1.0 / np.sqrt(D // H))], ["scaled"])
mask = np.triu(np.full((S, S), -1e4, np.float32), 1)
masked = n("Add", [scores, c("mask", mask)], ["masked"])
probs = n("Softmax", [masked], ["probs"], axis=-1)
ctx = n("Transpose", [n("MatMul", [probs, heads["v"]], ["ctx_h"])], ["ctx_t"], perm=[0, 2, 1, 3])
ctx = n("Reshape", [ctx, c("ctx_shape", [0, 0, D], np.int64)], ["ctx"])
attn = n("Add", [n("MatMul", [ctx, w("wo", D, D)], ["o_mm"]), w("bo", D)], ["attn"])
res1 = n("Add", [x, attn], ["res1"])
ln2 = n("LayerNormalization", [res1, w("ln2_g", D), w("ln2_b", D)], ["ln2"], axis=-1, epsilon=1e-5)
h = n("Add", [n("MatMul", [ln2, w("w1", D, F)], ["f1_mm"]), w("b1", F)], ["f1"])
erf = n("Erf", [n("Div", [h, c("sqrt2", np.sqrt(2.0))], ["h_div"])], ["h_erf"])
gelu = n("Mul", [n("Mul", [h, n("Add", [erf, c("one", 1.0)], ["h_1p"])], ["h_mul"]), c("half", 0.5)], ["gelu"])
f2 = n("Add", [n("MatMul", [gelu, w("w2", F, D)], ["f2_mm"]), w("b2", D)], ["f2"])
n("Add", [res1, f2], ["y"])

block_nodes = nodes
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "models")
os.makedirs(out, exist_ok=True)


def save(graph, name):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(out, name))
    print("wrote", os.path.join(out, name))


save(helper.make_graph(
    block_nodes, "transformer_block",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", S, D])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", S, D])], inits),
    "transformer_block.onnx")

# if_capture.onnx: y = cond ? relu(x) : -x. Both branches read values of the enclosing graph
# that no node of it reads: the planner must keep them alive (and apart) until the If runs.
then_g = helper.make_graph([helper.make_node("Identity", ["z"], ["t"])], "then", [],
                           [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
else_g = helper.make_graph([helper.make_node("Identity", ["w"], ["e"])], "else", [],
                           [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
save(helper.make_graph(
    [helper.make_node("Relu", ["x"], ["z"]),
     helper.make_node("Neg", ["x"], ["w"]),
     helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
    "if_capture",
    [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
     helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])]), "if_capture.onnx")

# slow.onnx: y = tanh(...tanh(tanh(x W) W)... W), 48 rounds of one shared 256x256 weight, x float32
# [batch, 256]. The server tests use it as a request whose run time they set by its row count
# (queue limits, disconnects, deadlines). Tanh between the MatMuls keeps fusion from folding the
# chain into one product.
W = (rng.standard_normal((256, 256)) / 16).astype(np.float32)
slow_nodes, prev = [], "x"
for i in range(48):
    slow_nodes.append(helper.make_node("MatMul", [prev, "w"], [f"mm{i}"]))
    prev = "y" if i == 47 else f"t{i}"
    slow_nodes.append(helper.make_node("Tanh", [f"mm{i}"], [prev]))
save(helper.make_graph(
    slow_nodes, "slow",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
    [numpy_helper.from_array(W, "w")]), "slow.onnx")

# strings.onnx: the server's BYTES test. StringNormalizer upper-cases a [n] string tensor and
# drops the stop word "the" (case-insensitively); the test's oracle is Python's str.upper.
save(helper.make_graph(
    [helper.make_node("StringNormalizer", ["text"], ["normalized"], case_change_action="UPPER",
                      is_case_sensitive=0, stopwords=["the"])],
    "strings",
    [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
    [helper.make_tensor_value_info("normalized", TensorProto.STRING, ["m"])]), "strings.onnx")

# plan_concat.onnx: Concats the planner may or may not compute in place (plan.c), x float32
# [batch, 4, 8, 8] and y float32 [batch, 3, 5, 1]; every op exact, so the test's oracle is its own
# arithmetic. At batch 1: c1 = [relu(x), relu(-x)] and c3 = [c1, x*x] (nested) are in place; c2
# is not (abs_x has a second reader), nor c4 (60-byte slices are not arena-aligned), nor c5
# (axis 2: the inputs interleave in the output). At batch 2 none is.
save(helper.make_graph(
    [helper.make_node("Relu", ["x"], ["rx"]),
     helper.make_node("Neg", ["x"], ["nx"]),
     helper.make_node("Relu", ["nx"], ["rnx"]),
     helper.make_node("Concat", ["rx", "rnx"], ["c1"], axis=1),
     helper.make_node("Mul", ["x", "x"], ["xx"]),
     helper.make_node("Concat", ["c1", "xx"], ["c3"], axis=1),
     helper.make_node("Abs", ["x"], ["abs_x"]),
     helper.make_node("Neg", ["abs_x"], ["nabs"]),
     helper.make_node("Concat", ["abs_x", "nabs"], ["c2"], axis=1),
     helper.make_node("Add", ["abs_x", "x"], ["d"]),
     helper.make_node("Relu", ["y"], ["ry"]),
     helper.make_node("Neg", ["y"], ["ny"]),
     helper.make_node("Concat", ["ry", "ny"], ["c4"], axis=1),
     helper.make_node("Abs", ["x"], ["ax2"]),
     helper.make_node("Neg", ["x"], ["nx2"]),
     helper.make_node("Concat", ["ax2", "nx2"], ["c5"], axis=2)],
    "plan_concat",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8]),
     helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 5, 1])],
    [helper.make_tensor_value_info("c3", TensorProto.FLOAT, ["batch", 12, 8, 8]),
     helper.make_tensor_value_info("c2", TensorProto.FLOAT, ["batch", 8, 8, 8]),
     helper.make_tensor_value_info("d", TensorProto.FLOAT, ["batch", 4, 8, 8]),
     helper.make_tensor_value_info("c4", TensorProto.FLOAT, ["batch", 6, 5, 1]),
     helper.make_tensor_value_info("c5", TensorProto.FLOAT, ["batch", 4, 16, 8])]),
    "plan_concat.onnx")
