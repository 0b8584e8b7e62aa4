#!/usr/bin/python3
"""Writes the small ONNX models that tests/test_passes.c optimizes: each exercises one pass (and
the patterns it must leave alone). Run from the repository root:
    /usr/bin/python3 tools/make_pass_models.py
Needs python3-numpy and python3-onnx (1.12). Outputs are deterministic (fixed seeds)."""
import os

import numpy as np

np.float, np.int, np.bool, np.object = float, int, bool, object  # onnx 1.12 on numpy >= 1.24
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "models")
rng = np.random.default_rng(1234)
F = TensorProto.FLOAT


def init(name, a):
    return numpy_helper.from_array(np.asarray(a), name)


def rand(*shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def save(name, nodes, inputs, outputs, inits, opset=13):
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          producer_name="kiln make_pass_models.py")
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(OUT, f"pass_{name}.onnx"))


def vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, shape)


# identity-elim: Identity/Dropout chains; an Identity whose output is a graph output (its
# producer must write the output), and one from a graph input to a graph output (must stay).
save("identity", [
    helper.make_node("Identity", ["x"], ["a"], name="id_in"),
    helper.make_node("Relu", ["a"], ["b"], name="relu"),
    helper.make_node("Dropout", ["b"], ["c"], name="drop"),
    helper.make_node("Sigmoid", ["c"], ["d"], name="sig"),
    helper.make_node("Identity", ["d"], ["y"], name="id_out"),
    helper.make_node("Identity", ["x"], ["y_passthrough"], name="id_keep"),
    helper.make_node("Identity", ["d"], ["e"], name="id_mid"),
    helper.make_node("Neg", ["e"], ["y2"], name="neg"),
    helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
    helper.make_node("Identity", ["t"], ["y3"], name="id_out2"),
], [vi("x", [2, 5])],
   [vi("y", [2, 5]), vi("y_passthrough", [2, 5]), vi("y2", [2, 5]), vi("y3", [2, 5])], [])

# constant-fold: Constant nodes, initializer-only arithmetic, and the Shape -> Gather ->
# Unsqueeze -> Concat -> Reshape chain PyTorch exports, on a statically shaped input.
save("const_fold", [
    helper.make_node("Constant", [], ["k"], name="const_k",
                     value=numpy_helper.from_array(rand(4, 6), "k")),
    helper.make_node("Mul", ["k", "two"], ["k2"], name="k_times_2"),
    helper.make_node("Add", ["k2", "w"], ["kw"], name="k_plus_w"),
    helper.make_node("Shape", ["x"], ["shp"], name="shape"),
    helper.make_node("Gather", ["shp", "idx0"], ["d0"], name="gather", axis=0),
    helper.make_node("Unsqueeze", ["d0", "axes0"], ["d0u"], name="unsq"),
    helper.make_node("Concat", ["d0u", "minus1"], ["newshape"], name="concat", axis=0),
    helper.make_node("Reshape", ["x", "newshape"], ["xr"], name="reshape"),
    helper.make_node("MatMul", ["xr", "kw"], ["y"], name="matmul"),
], [vi("x", [3, 2, 2])], [vi("y", [3, 6])], [
    init("two", np.array(2.0, np.float32)), init("w", rand(4, 6)),
    init("idx0", np.array(0, np.int64)), init("axes0", np.array([0], np.int64)),
    init("minus1", np.array([-1], np.int64)),
])

# cse: duplicated subexpressions (same op, inputs, attributes), and near-duplicates that differ
# in one attribute (must stay).
save("cse", [
    helper.make_node("Relu", ["x"], ["r1"], name="relu1"),
    helper.make_node("Relu", ["x"], ["r2"], name="relu2"),
    helper.make_node("LeakyRelu", ["r1"], ["l1"], name="leaky1", alpha=0.1),
    helper.make_node("LeakyRelu", ["r2"], ["l2"], name="leaky2", alpha=0.1),
    helper.make_node("LeakyRelu", ["r2"], ["l3"], name="leaky3", alpha=0.2),
    helper.make_node("Add", ["l1", "l2"], ["s"], name="add1"),
    helper.make_node("Add", ["s", "l3"], ["y"], name="add2"),
], [vi("x", [4, 7])], [vi("y", [4, 7])], [])

# conv-bn-fold: Conv with and without bias, each followed by inference BatchNormalization.
C, M = 3, 4
save("conv_bn", [
    helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
    helper.make_node("BatchNormalization", ["c1", "s1", "beta1", "m1", "v1"], ["n1"], name="bn1",
                     epsilon=1e-3),
    helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
    helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", group=2),
    helper.make_node("BatchNormalization", ["c2", "s2", "beta2", "m2", "v2"], ["y"], name="bn2"),
], [vi("x", [2, C, 6, 6])], [vi("y", [2, M, 6, 6])], [
    init("w1", rand(M, C, 3, 3)), init("b1", rand(M)),
    init("s1", rand(M, lo=0.5, hi=2)), init("beta1", rand(M)), init("m1", rand(M)),
    init("v1", rand(M, lo=0.1, hi=2)),
    init("w2", rand(M, M // 2, 1, 1)),
    init("s2", rand(M, lo=0.5, hi=2)), init("beta2", rand(M)), init("m2", rand(M)),
    init("v2", rand(M, lo=0.1, hi=2)),
])

# affine-fold: Conv -> Mul(per channel) -> Add(per channel); MatMul -> Mul(per column); a Mul
# whose constant varies along a spatial axis (must stay).
save("affine", [
    helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
    helper.make_node("Mul", ["c", "scale"], ["cs"], name="mul_scale"),
    helper.make_node("Add", ["shift", "cs"], ["y"], name="add_shift"),
    helper.make_node("MatMul", ["x2", "w2"], ["mm"], name="matmul"),
    helper.make_node("Mul", ["mm", "col"], ["y2"], name="mul_col"),
    helper.make_node("Conv", ["x", "w"], ["c3"], name="conv3"),
    helper.make_node("Mul", ["c3", "rowscale"], ["y3"], name="mul_row"),
], [vi("x", [1, 3, 5, 5]), vi("x2", [2, 3, 8])],
   [vi("y", [1, 4, 3, 3]), vi("y2", [2, 3, 5]), vi("y3", [1, 4, 3, 3])], [
    init("w", rand(4, 3, 3, 3)), init("b", rand(4)),
    init("scale", rand(1, 4, 1, 1, lo=0.5, hi=2)), init("shift", rand(4, 1, 1)),
    init("w2", rand(8, 5)), init("col", rand(5, lo=0.5, hi=2)),
    init("rowscale", rand(1, 1, 3, 1)),
])

# dead-code: a branch nothing reads and an unused initializer.
save("dce", [
    helper.make_node("Exp", ["x"], ["e"], name="dead_exp"),
    helper.make_node("Mul", ["e", "unused_w"], ["e2"], name="dead_mul"),
    helper.make_node("Tanh", ["x"], ["y"], name="tanh"),
], [vi("x", [3, 3])], [vi("y", [3, 3])], [init("unused_w", rand(3, 3)), init("never", rand(9))])

# fuse-layernorm: the LayerNorm PyTorch exports (opset 13: ReduceMean axes attribute), over the
# last axis, with symbolic batch.
H = 16
save("layernorm", [
    helper.make_node("ReduceMean", ["x"], ["mu"], name="ln_mean", axes=[-1], keepdims=1),
    helper.make_node("Sub", ["x", "mu"], ["d"], name="ln_sub"),
    helper.make_node("Pow", ["d", "p2"], ["d2"], name="ln_pow"),
    helper.make_node("ReduceMean", ["d2"], ["var"], name="ln_var", axes=[-1], keepdims=1),
    helper.make_node("Add", ["var", "eps"], ["ve"], name="ln_add_eps"),
    helper.make_node("Sqrt", ["ve"], ["sd"], name="ln_sqrt"),
    helper.make_node("Div", ["d", "sd"], ["nrm"], name="ln_div"),
    helper.make_node("Mul", ["nrm", "gamma"], ["sc"], name="ln_mul"),
    helper.make_node("Add", ["sc", "beta"], ["y"], name="ln_add"),
], [vi("x", ["batch", 5, H])], [vi("y", ["batch", 5, H])], [
    init("p2", np.array(2.0, np.float32)), init("eps", np.array(1e-5, np.float32)),
    init("gamma", rand(H, lo=0.5, hi=1.5)), init("beta", rand(H)),
])

# fuse-gelu: exact-erf GELU as exported (x * 0.5 * (1 + erf(x / sqrt 2))).
save("gelu", [
    helper.make_node("Div", ["x", "sqrt2"], ["xs"], name="g_div"),
    helper.make_node("Erf", ["xs"], ["e"], name="g_erf"),
    helper.make_node("Add", ["e", "one"], ["e1"], name="g_add"),
    helper.make_node("Mul", ["x", "e1"], ["m"], name="g_mul"),
    helper.make_node("Mul", ["m", "half"], ["y"], name="g_half"),
], [vi("x", [3, 10])], [vi("y", [3, 10])], [
    init("sqrt2", np.array(1.4142135381698608, np.float32)), init("one", np.array(1.0, np.float32)),
    init("half", np.array(0.5, np.float32)),
])
print("wrote pass_*.onnx to", os.path.normpath(OUT))
