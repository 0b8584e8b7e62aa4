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

# fuse-chain: MatMul -> Add(bias) -> MatMul folds (8*6 + 6*4 > 8*4); three MatMuls in a row fold
# over two rounds; a bottleneck (16*4 + 4*16 <= 16*16), a Relu between and an intermediate that is
# also a graph output must stay.
crng = np.random.default_rng(77)  # its own generator: the models above and below keep theirs


def crand(*shape):
    return crng.uniform(-1.0, 1.0, size=shape).astype(np.float32)


save("chain", [
    helper.make_node("MatMul", ["x", "wa"], ["ta"], name="mm_a"),
    helper.make_node("Add", ["ta", "ba"], ["tb"], name="add_a"),
    helper.make_node("MatMul", ["tb", "wb"], ["y"], name="mm_b"),
    helper.make_node("MatMul", ["x2", "w3a"], ["t3a"], name="mm3_a"),
    helper.make_node("MatMul", ["t3a", "w3b"], ["t3b"], name="mm3_b"),
    helper.make_node("MatMul", ["t3b", "w3c"], ["y3"], name="mm3_c"),
    helper.make_node("MatMul", ["x3", "wn1"], ["tn"], name="mm_neck1"),
    helper.make_node("MatMul", ["tn", "wn2"], ["yn"], name="mm_neck2"),
    helper.make_node("MatMul", ["x2", "wr1"], ["tr"], name="mm_relu1"),
    helper.make_node("Relu", ["tr"], ["trr"], name="relu"),
    helper.make_node("MatMul", ["trr", "wr2"], ["yr"], name="mm_relu2"),
    helper.make_node("MatMul", ["x2", "wo1"], ["to"], name="mm_out1"),
    helper.make_node("MatMul", ["to", "wo2"], ["yo"], name="mm_out2"),
], [vi("x", ["N", 8]), vi("x2", [2, 3, 10]), vi("x3", [2, 16])],
   [vi("y", ["N", 4]), vi("y3", [2, 3, 2]), vi("yn", [2, 16]), vi("yr", [2, 3, 2]),
    vi("to", [2, 3, 8]), vi("yo", [2, 3, 2])], [
    init("wa", crand(8, 6)), init("ba", crand(1, 6)), init("wb", crand(6, 4)),
    init("w3a", crand(10, 8)), init("w3b", crand(8, 6)), init("w3c", crand(6, 2)),
    init("wn1", crand(16, 4)), init("wn2", crand(4, 16)),
    init("wr1", crand(10, 8)), init("wr2", crand(8, 2)),
    init("wo1", crand(10, 8)), init("wo2", crand(8, 2)),
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

# fuse-gelu, tanh form: t1 as torch exports F.gelu(approximate="tanh") (x * x * x, constants
# first); t2 as Hugging Face's NewGELU writes it (Pow(x, 3), x * 0.5 first); t3 a near-miss with
# 0.05 for 0.044715 (a different function: must stay; on its own input, so cse cannot merge its
# x * x with t1's).
def gelu_tanh_torch(p, x, y, coef):
    return [
        helper.make_node("Mul", [x, x], [p + "sq"], name=p + "sq"),
        helper.make_node("Mul", [x, p + "sq"], [p + "cube"], name=p + "cube"),
        helper.make_node("Mul", [coef, p + "cube"], [p + "term"], name=p + "term"),
        helper.make_node("Add", [x, p + "term"], [p + "in"], name=p + "in"),
        helper.make_node("Mul", ["k", p + "in"], [p + "u"], name=p + "u"),
        helper.make_node("Tanh", [p + "u"], [p + "t"], name=p + "tanh"),
        helper.make_node("Add", ["one", p + "t"], [p + "e1"], name=p + "e1"),
        helper.make_node("Mul", [x, p + "e1"], [p + "m"], name=p + "m"),
        helper.make_node("Mul", ["half", p + "m"], [y], name=p + "half"),
    ]


save("gelu_tanh", gelu_tanh_torch("t1_", "x", "y1", "c") + [
    helper.make_node("Mul", ["x", "half"], ["t2_h"], name="t2_h"),
    helper.make_node("Pow", ["x", "three"], ["t2_cube"], name="t2_pow"),
    helper.make_node("Mul", ["t2_cube", "c"], ["t2_term"], name="t2_term"),
    helper.make_node("Add", ["x", "t2_term"], ["t2_in"], name="t2_in"),
    helper.make_node("Mul", ["t2_in", "k"], ["t2_u"], name="t2_u"),
    helper.make_node("Tanh", ["t2_u"], ["t2_t"], name="t2_tanh"),
    helper.make_node("Add", ["t2_t", "one"], ["t2_e1"], name="t2_e1"),
    helper.make_node("Mul", ["t2_h", "t2_e1"], ["y2"], name="t2_mul"),
] + gelu_tanh_torch("t3_", "x3", "y3", "c_wrong"),
    [vi("x", [3, 10]), vi("x3", [3, 10])], [vi("y1", [3, 10]), vi("y2", [3, 10]), vi("y3", [3, 10])], [
    init("c", np.array(0.044714998453855515, np.float32)),
    init("c_wrong", np.array(0.05, np.float32)),
    init("k", np.array(0.7978845834732056, np.float32)),
    init("three", np.array(3.0, np.float32)), init("one", np.array(1.0, np.float32)),
    init("half", np.array(0.5, np.float32)),
])

# fuse-linear: epilogues of Conv / Gemm / MatMul. conv1: bias + residual + Relu (ResNet);
# conv2: Clip(0, 6) (Relu6); conv3: x * HardSigmoid(x) (HardSwish); conv4: Relu then Add (the Add
# is after the activation: not a residual, stays); gemm: LeakyRelu; mm1: Transpose(B) + bias +
# x * Sigmoid(x) (SiLU); mm2: Transpose(A) + residual broadcast from [N] rows + exact-erf GELU;
# mm3: output read twice (near-miss, stays a MatMul).
save("linear", [
    helper.make_node("Conv", ["x", "cw1", "cb1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
    helper.make_node("Add", ["c1", "x"], ["c1r"], name="res_add"),
    helper.make_node("Relu", ["c1r"], ["r1"], name="relu1"),
    helper.make_node("Conv", ["r1", "cw2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
    helper.make_node("Clip", ["c2", "zero", "six"], ["r2"], name="relu6"),
    helper.make_node("Conv", ["r2", "cw3", "cb3"], ["c3"], name="conv3"),
    helper.make_node("HardSigmoid", ["c3"], ["hs"], name="hsig", alpha=1.0 / 6, beta=0.5),
    helper.make_node("Mul", ["c3", "hs"], ["r3"], name="hswish_mul"),
    helper.make_node("Conv", ["r3", "cw4", "cb4"], ["c4"], name="conv4"),
    helper.make_node("Relu", ["c4"], ["r4"], name="relu4"),
    helper.make_node("Add", ["r4", "r3"], ["y"], name="add_after_act"),
    helper.make_node("Gemm", ["a", "gw", "gb"], ["g"], name="gemm", transB=1),
    helper.make_node("LeakyRelu", ["g"], ["y2"], name="leaky", alpha=0.2),
    helper.make_node("Transpose", ["mw1"], ["mw1t"], name="tr_b", perm=[1, 0]),
    helper.make_node("MatMul", ["m", "mw1t"], ["mm1"], name="mm1"),
    helper.make_node("Add", ["mb1", "mm1"], ["mm1b"], name="mm1_bias"),
    helper.make_node("Sigmoid", ["mm1b"], ["sg"], name="silu_sig"),
    helper.make_node("Mul", ["sg", "mm1b"], ["y3"], name="silu_mul"),
    helper.make_node("Transpose", ["mt"], ["mtt"], name="tr_a", perm=[0, 2, 1]),
    helper.make_node("MatMul", ["mtt", "mw2"], ["mm2"], name="mm2"),
    helper.make_node("Add", ["mm2", "row"], ["mm2r"], name="mm2_res"),
    helper.make_node("Div", ["mm2r", "sqrt2"], ["gd"], name="g_div"),
    helper.make_node("Erf", ["gd"], ["ge"], name="g_erf"),
    helper.make_node("Add", ["ge", "one"], ["ge1"], name="g_add"),
    helper.make_node("Mul", ["mm2r", "ge1"], ["gm"], name="g_mul"),
    helper.make_node("Mul", ["gm", "half"], ["y4"], name="g_half"),
    helper.make_node("MatMul", ["m", "mw3"], ["mm3"], name="mm3"),
    helper.make_node("Relu", ["mm3"], ["mm3r"], name="mm3_relu"),
    helper.make_node("Add", ["mm3", "mm3r"], ["y5"], name="mm3_add"),
], [vi("x", ["batch", 4, 6, 6]), vi("a", [3, 5]), vi("m", ["batch", 7, 6]),
    vi("mt", ["batch", 6, 7]), vi("row", [5])],
   [vi("y", ["batch", 4, 6, 6]), vi("y2", [3, 4]), vi("y3", ["batch", 7, 5]),
    vi("y4", ["batch", 7, 5]), vi("y5", ["batch", 7, 5])], [
    init("cw1", rand(4, 4, 3, 3)), init("cb1", rand(4)), init("cw2", rand(4, 4, 3, 3)),
    init("zero", np.array(0.0, np.float32)), init("six", np.array(6.0, np.float32)),
    init("cw3", rand(4, 4, 1, 1)), init("cb3", rand(4)), init("cw4", rand(4, 4, 1, 1)),
    init("cb4", rand(4)), init("gw", rand(4, 5)), init("gb", rand(4)),
    init("mw1", rand(5, 6)), init("mb1", rand(5)), init("mw2", rand(6, 5)), init("mw3", rand(6, 5)),
    init("sqrt2", np.array(1.4142135381698608, np.float32)), init("one", np.array(1.0, np.float32)),
    init("half", np.array(0.5, np.float32)),
])


# fuse-attention: multi-head self-attention as BERT exports it (heads split by Reshape; K as
# Transpose(0,2,3,1); Div by sqrt(D); an additive [B,1,1,T] mask input), a second head group
# where K^T comes as Transpose(0,1,3,2) of K with a Mul scale and no mask, and a third whose
# heads are not merged (Y [B,H,T,D] is a graph output: the Attention stays BHSD). T = 80 spans
# two blocks of the online softmax.
def attention_nodes(p, x, kperm, scale_op, mask, merge=True):
    nodes = []
    for w in "qkv":
        nodes += [helper.make_node("MatMul", [x, f"{p}w{w}"], [f"{p}{w}l"], name=f"{p}{w}_mm"),
                  helper.make_node("Reshape", [f"{p}{w}l", "heads"], [f"{p}{w}h"],
                                   name=f"{p}{w}_split")]
    nodes += [helper.make_node("Transpose", [f"{p}qh"], [f"{p}q"], name=f"{p}q_t", perm=[0, 2, 1, 3]),
              helper.make_node("Transpose", [f"{p}vh"], [f"{p}v"], name=f"{p}v_t", perm=[0, 2, 1, 3])]
    if kperm == "0231":
        nodes.append(helper.make_node("Transpose", [f"{p}kh"], [f"{p}kt"], name=f"{p}k_t",
                                      perm=[0, 2, 3, 1]))
    else:
        nodes += [helper.make_node("Transpose", [f"{p}kh"], [f"{p}k"], name=f"{p}k_t",
                                   perm=[0, 2, 1, 3]),
                  helper.make_node("Transpose", [f"{p}k"], [f"{p}kt"], name=f"{p}k_tt",
                                   perm=[0, 1, 3, 2])]
    nodes += [helper.make_node("MatMul", [f"{p}q", f"{p}kt"], [f"{p}qk"], name=f"{p}qk"),
              helper.make_node(scale_op, [f"{p}qk", f"{p}sc"], [f"{p}s"], name=f"{p}scale")]
    last = f"{p}s"
    if mask:
        nodes.append(helper.make_node("Add", [last, mask], [f"{p}sm"], name=f"{p}mask"))
        last = f"{p}sm"
    nodes += [helper.make_node("Softmax", [last], [f"{p}pr"], name=f"{p}softmax", axis=-1),
              helper.make_node("MatMul", [f"{p}pr", f"{p}v"], [f"{p}o"], name=f"{p}pv")]
    if merge:
        nodes += [helper.make_node("Transpose", [f"{p}o"], [f"{p}ot"], name=f"{p}o_t", perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [f"{p}ot", "merge"], [f"{p}y"], name=f"{p}merge")]
    return nodes


T, E, NH = 80, 32, 4
att_inits = [init("heads", np.array([0, 0, NH, E // NH], np.int64)),
             init("merge", np.array([0, 0, E], np.int64)),
             init("a_sc", np.array(np.sqrt(E // NH), np.float32)),
             init("b_sc", np.array(1 / np.sqrt(E // NH), np.float32))]
for p in "ab":
    for w in "qkv":
        att_inits.append(init(f"{p}_w{w}", rand(E, E)))
# the third group's weights from their own generator, so the models after this one keep theirs
rng_c = np.random.default_rng(4321)
att_inits.append(init("c_sc", np.array(1 / np.sqrt(E // NH), np.float32)))
for w in "qkv":
    att_inits.append(init(f"c_w{w}", rng_c.uniform(-1, 1, (E, E)).astype(np.float32)))
save("attention", attention_nodes("a_", "x", "0231", "Div", "mask") +
     attention_nodes("b_", "x", "0132", "Mul", None) +
     attention_nodes("c_", "x", "0231", "Mul", None, merge=False),
     [vi("x", ["batch", T, E]), vi("mask", ["batch", 1, 1, T])],
     [vi("a_y", ["batch", T, E]), vi("b_y", ["batch", T, E]),
      vi("c_o", ["batch", NH, T, E // NH])], att_inits)

# fuse-rmsnorm: Pow / ReduceMean / Add eps / Sqrt / Div / Mul scale, and the Mul(x, x) /
# Reciprocal form with the scale first.
H = 24
save("rmsnorm", [
    helper.make_node("Pow", ["x", "p2"], ["x2"], name="rms_pow"),
    helper.make_node("ReduceMean", ["x2"], ["ms"], name="rms_mean", axes=[-1], keepdims=1),
    helper.make_node("Add", ["ms", "eps"], ["mse"], name="rms_eps"),
    helper.make_node("Sqrt", ["mse"], ["rms"], name="rms_sqrt"),
    helper.make_node("Div", ["x", "rms"], ["n"], name="rms_div"),
    helper.make_node("Mul", ["n", "w"], ["y"], name="rms_scale"),
    helper.make_node("Mul", ["y", "y"], ["b2"], name="rms2_sq"),
    helper.make_node("ReduceMean", ["b2"], ["bms"], name="rms2_mean", axes=[-1], keepdims=1),
    helper.make_node("Add", ["eps", "bms"], ["bmse"], name="rms2_eps"),
    helper.make_node("Sqrt", ["bmse"], ["brms"], name="rms2_sqrt"),
    helper.make_node("Reciprocal", ["brms"], ["brc"], name="rms2_recip"),
    helper.make_node("Mul", ["y", "brc"], ["bn"], name="rms2_mul"),
    helper.make_node("Mul", ["w2", "bn"], ["y2"], name="rms2_scale"),
], [vi("x", ["batch", 3, H])], [vi("y", ["batch", 3, H]), vi("y2", ["batch", 3, H])], [
    init("p2", np.array(2.0, np.float32)), init("eps", np.array(1e-6, np.float32)),
    init("w", rand(H, lo=0.5, hi=1.5)), init("w2", rand(H, lo=0.5, hi=1.5)),
])


# Attention's causal mode, checked against its definition: the same fused op written directly
# (causal = 1, S = 40 queries over T = 100 keys, scale 0.3) and the unfused graph with the mask
# -inf where t > s + (T - S).
def save_raw(name, nodes, inputs, outputs, inits, kiln_domain):
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    ops = [helper.make_opsetid("", 13)] + ([helper.make_opsetid("ai.kiln", 1)] if kiln_domain else [])
    m = helper.make_model(g, opset_imports=ops, producer_name="kiln make_pass_models.py")
    m.ir_version = 8
    onnx.save(m, os.path.join(OUT, f"pass_{name}.onnx"))


S, T, D = 40, 100, 8
qkv = [vi("q", [1, 2, S, D]), vi("k", [1, 2, T, D]), vi("v", [1, 2, T, D])]
save_raw("causal_fused", [helper.make_node("Attention", ["q", "k", "v"], ["y"], name="att",
                                           domain="ai.kiln", scale=0.3, causal=1)],
         qkv, [vi("y", [1, 2, S, D])], [], True)
cm = np.where(np.arange(T)[None, :] > np.arange(S)[:, None] + (T - S), -np.inf, 0).astype(np.float32)
save_raw("causal_ref", [
    helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
    helper.make_node("MatMul", ["q", "kt"], ["qk"]),
    helper.make_node("Mul", ["qk", "sc"], ["s"]),
    helper.make_node("Add", ["s", "cm"], ["sm"]),
    helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
    helper.make_node("MatMul", ["p", "v"], ["y"]),
], qkv, [vi("y", [1, 2, S, D])], [init("sc", np.array(0.3, np.float32)), init("cm", cm)], False)


# winograd (level 3): 3x3 stride-1 convs with >= 16 channels in and >= 64 out on a >= 7x7 output
# plane are marked: conv_w1 (bias, then Relu), conv_w2 (no bias, residual x), conv_w7 (no
# padding, 15x15, Sigmoid), all on an odd 17x17 plane with batch 2 (edge tiles), conv_c16 (16
# input channels, after a 1x1) and conv_p7 (9x9 -> 7x7). Near misses: stride 2, 8 input channels
# (after a 1x1), 32 output channels, dilation 2, group 2, a 5x5 output.
save("winograd", [
    helper.make_node("Conv", ["x", "ww1", "wb1"], ["w1"], name="conv_w1", pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["w1"], ["a1"], name="relu_w1"),
    helper.make_node("Conv", ["a1", "ww2"], ["w2"], name="conv_w2", pads=[1, 1, 1, 1]),
    helper.make_node("Add", ["w2", "x"], ["y1"], name="res_w2"),
    helper.make_node("Conv", ["y1", "ww7", "wb7"], ["w7"], name="conv_w7"),
    helper.make_node("Sigmoid", ["w7"], ["y2"], name="sig_w7"),
    helper.make_node("Conv", ["x", "ww3"], ["y3"], name="conv_s2", pads=[1, 1, 1, 1],
                     strides=[2, 2]),
    helper.make_node("Conv", ["x", "wp1"], ["p1"], name="conv_1x1"),
    helper.make_node("Conv", ["p1", "ww4"], ["y4"], name="conv_c16", pads=[1, 1, 1, 1]),
    helper.make_node("Conv", ["x", "wq1"], ["q1"], name="conv_1x1b"),
    helper.make_node("Conv", ["q1", "wq4"], ["y8"], name="conv_c8", pads=[1, 1, 1, 1]),
    helper.make_node("Conv", ["x", "wk4"], ["y9"], name="conv_k32", pads=[1, 1, 1, 1]),
    helper.make_node("Conv", ["x", "ww5"], ["y5"], name="conv_dil", pads=[2, 2, 2, 2],
                     dilations=[2, 2]),
    helper.make_node("Conv", ["x", "ww6"], ["y6"], name="conv_g2", pads=[1, 1, 1, 1], group=2),
    helper.make_node("Conv", ["y3", "ww8"], ["p7"], name="conv_p7"),
    helper.make_node("Conv", ["p7", "ww9"], ["y7"], name="conv_p5"),
], [vi("x", [2, 64, 17, 17])],
   [vi("y1", [2, 64, 17, 17]), vi("y2", [2, 64, 15, 15]), vi("y3", [2, 64, 9, 9]),
    vi("y4", [2, 64, 17, 17]), vi("y5", [2, 64, 17, 17]), vi("y6", [2, 64, 17, 17]),
    vi("y7", [2, 64, 5, 5]), vi("y8", [2, 64, 17, 17]), vi("y9", [2, 32, 17, 17])], [
    init("ww1", rand(64, 64, 3, 3, lo=-0.1, hi=0.1)), init("wb1", rand(64)),
    init("ww2", rand(64, 64, 3, 3, lo=-0.1, hi=0.1)),
    init("ww7", rand(64, 64, 3, 3, lo=-0.1, hi=0.1)), init("wb7", rand(64)),
    init("ww3", rand(64, 64, 3, 3, lo=-0.1, hi=0.1)), init("wp1", rand(16, 64, 1, 1)),
    init("ww4", rand(64, 16, 3, 3, lo=-0.1, hi=0.1)), init("ww5", rand(64, 64, 3, 3)),
    init("ww6", rand(64, 32, 3, 3)), init("ww8", rand(64, 64, 3, 3, lo=-0.1, hi=0.1)),
    init("ww9", rand(64, 64, 3, 3, lo=-0.1, hi=0.1)), init("wq1", rand(8, 64, 1, 1)),
    init("wq4", rand(64, 8, 3, 3, lo=-0.1, hi=0.1)),
    init("wk4", rand(32, 64, 3, 3, lo=-0.1, hi=0.1)),
])
# fuse-linear, HardSwish as PaddlePaddle exports it (PP-OCR): hs_a: x * Clip(x + 3, 0, 6) / 6;
# hs_b: the same with operands swapped and * (1/6); near-misses that stay: hs_c adds 2.5, hs_d
# clips at 5. Opset 11 (Clip bounds as inputs, no HardSwish op yet), as paddle2onnx writes.
def hswish(p, x, add=3.0, hi="six", swap=False, div=True):
    a = [x, "k3" if add == 3.0 else "k25"]
    m = [p + "cl", x]
    return [
        helper.make_node("Add", a[::-1] if swap else a, [p + "ad"], name=p + "add"),
        helper.make_node("Clip", [p + "ad", "zero", hi], [p + "cl"], name=p + "clip"),
        helper.make_node("Mul", m if swap else m[::-1], [p + "mu"], name=p + "mul"),
        helper.make_node("Div", [p + "mu", "six"], [p + "y"], name=p + "div") if div else
        helper.make_node("Mul", ["sixth", p + "mu"], [p + "y"], name=p + "div"),
    ]


save("hswish", [
    helper.make_node("Conv", ["x", "hw1", "hb1"], ["ha"], name="conv_a", pads=[1, 1, 1, 1]),
] + hswish("hs_a_", "ha") + [
    helper.make_node("Conv", ["hs_a_y", "hw2", "hb2"], ["hb"], name="conv_b"),
] + hswish("hs_b_", "hb", swap=True, div=False) + [
    helper.make_node("Conv", ["hs_b_y", "hw3"], ["hc"], name="conv_c"),
] + hswish("hs_c_", "hc", add=2.5) + [
    helper.make_node("Conv", ["hs_c_y", "hw4"], ["hd"], name="conv_d"),
] + hswish("hs_d_", "hd", hi="five"), [vi("x", ["batch", 4, 6, 6])], [vi("hs_d_y", ["batch", 4, 6, 6])], [
    init("hw1", rand(4, 4, 3, 3)), init("hb1", rand(4)), init("hw2", rand(4, 4, 1, 1)),
    init("hb2", rand(4)), init("hw3", rand(4, 4, 1, 1)), init("hw4", rand(4, 4, 1, 1)),
    init("k3", np.array(3.0, np.float32)), init("k25", np.array(2.5, np.float32)),
    init("zero", np.array(0.0, np.float32)), init("six", np.array(6.0, np.float32)),
    init("five", np.array(5.0, np.float32)), init("sixth", np.array(1.0 / 6, np.float32)),
], opset=11)
# fuse-dwpw (level 3): a depthwise 3x3 (stride 1) whose only reader is a 1x1 conv becomes one
# DwPwConv: dwa (bias, Relu6) -> pwa (bias, residual x, Relu), dwb (no bias, no activation) ->
# pwb (no bias, Sigmoid), on a 7x7 plane (one band: the rule), batch 2, 20 channels. Near misses that stay:
# dws (stride 2), dwr (its output is also a graph output), dwk (read by a 3x3 conv), dw5 (5x5),
# dwg (group 2: not depthwise).
save("dwpw", [
    helper.make_node("Conv", ["x", "da", "dab"], ["ta"], name="dwa", group=20, pads=[1, 1, 1, 1]),
    helper.make_node("Clip", ["ta", "zero", "six"], ["ua"], name="clip_a"),
    helper.make_node("Conv", ["ua", "pa", "pab"], ["va"], name="pwa"),
    helper.make_node("Add", ["va", "x"], ["wa"], name="res_a"),
    helper.make_node("Relu", ["wa"], ["y1"], name="relu_a"),
    helper.make_node("Conv", ["x", "db"], ["tb"], name="dwb", group=20, pads=[1, 1, 1, 1]),
    helper.make_node("Conv", ["tb", "pb"], ["vb"], name="pwb"),
    helper.make_node("Sigmoid", ["vb"], ["y2"], name="sig_b"),
    helper.make_node("Conv", ["x", "db"], ["ts"], name="dws", group=20, pads=[1, 1, 1, 1],
                     strides=[2, 2]),
    helper.make_node("Conv", ["ts", "pb"], ["y3"], name="pws"),
    helper.make_node("Conv", ["x", "dr"], ["y4"], name="dwr", group=20, pads=[1, 1, 1, 1]),
    helper.make_node("Conv", ["y4", "pb"], ["y5"], name="pwr"),
    helper.make_node("Conv", ["x", "dk"], ["tk"], name="dwk", group=20, pads=[1, 1, 1, 1]),
    helper.make_node("Conv", ["tk", "pk"], ["y6"], name="pwk", pads=[1, 1, 1, 1]),
    helper.make_node("Conv", ["x", "d5"], ["t5"], name="dw5", group=20, pads=[2, 2, 2, 2]),
    helper.make_node("Conv", ["t5", "pb"], ["y7"], name="pw5"),
    helper.make_node("Conv", ["x", "dg"], ["tg"], name="dwg", group=2, pads=[1, 1, 1, 1]),
    helper.make_node("Conv", ["tg", "pg"], ["y8"], name="pwg"),
], [vi("x", [2, 20, 7, 7])],
   [vi("y1", [2, 20, 7, 7]), vi("y2", [2, 12, 7, 7]), vi("y3", [2, 12, 4, 4]),
    vi("y4", [2, 20, 7, 7]), vi("y5", [2, 12, 7, 7]), vi("y6", [2, 12, 7, 7]),
    vi("y7", [2, 12, 7, 7]), vi("y8", [2, 12, 7, 7])], [
    init("da", rand(20, 1, 3, 3)), init("dab", rand(20)), init("pa", rand(20, 20, 1, 1)),
    init("pab", rand(20)), init("db", rand(20, 1, 3, 3)), init("pb", rand(12, 20, 1, 1)),
    init("dr", rand(20, 1, 3, 3)), init("dk", rand(20, 1, 3, 3)),
    init("pk", rand(12, 20, 3, 3)), init("d5", rand(20, 1, 5, 5)),
    init("dg", rand(20, 10, 3, 3)), init("pg", rand(12, 20, 1, 1)),
    init("zero", np.array(0.0, np.float32)), init("six", np.array(6.0, np.float32)),
])
# fuse-qdq-out: QLinearMatMul -> DequantizeLinear [-> Add(bias)] as one QLinearMatMulDq. mm1 with
# a bias Add, mm2 without an Add (and no DequantizeLinear zero point), mm3 with the bias first
# and rank 3 (leading 1s), mm4's 8-bit output is a graph output too (not fused), mm5 (int8 out)
# feeds an Add of two activations (the DequantizeLinear fused, the Add kept).
U8, I8 = TensorProto.UINT8, TensorProto.INT8


def qweight(name, k, n):
    w = rng.uniform(-1, 1, size=(k, n))
    return [init(name, np.round(w * 127).astype(np.int8)),
            init(name + "_s", np.full(n, 1 / 127, np.float32) * rng.uniform(0.8, 1.2, n).astype(np.float32)),
            init(name + "_z", np.zeros(n, np.int8))]


def qlmm(p, w, ys, yz):
    return helper.make_node("QLinearMatMul", ["xq", "xs", "xz", w, w + "_s", w + "_z", ys, yz],
                            [p], name=p.replace("q", "").replace("y", "mm"))


save("qdq_out", [
    helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="quant"),
    qlmm("y1q", "w1", "ys", "yz"),
    helper.make_node("DequantizeLinear", ["y1q", "ys", "yz"], ["y1f"], name="dq1"),
    helper.make_node("Add", ["y1f", "b1"], ["y1"], name="add1"),
    qlmm("y2q", "w2", "ys", "yz"),
    helper.make_node("DequantizeLinear", ["y2q", "ys2"], ["y2"], name="dq2"),
    qlmm("y3q", "w3", "ys", "yz"),
    helper.make_node("DequantizeLinear", ["y3q", "ys", "yz"], ["y3f"], name="dq3"),
    helper.make_node("Add", ["b3", "y3f"], ["y3"], name="add3"),
    qlmm("y4q", "w4", "ys", "yz"),
    helper.make_node("DequantizeLinear", ["y4q", "ys", "yz"], ["y4"], name="dq4"),
    qlmm("y5q", "w5", "ys", "yz8"),
    helper.make_node("DequantizeLinear", ["y5q", "ys", "yz8"], ["y5f"], name="dq5"),
    helper.make_node("Add", ["y5f", "y2"], ["y5"], name="add5"),
], [vi("x", [3, 5, 32])],
   [vi("y1", [3, 5, 24]), vi("y2", [3, 5, 16]), vi("y3", [3, 5, 16]), vi("y4q", [3, 5, 16], U8),
    vi("y4", [3, 5, 16]), vi("y5", [3, 5, 16])],
   qweight("w1", 32, 24) + qweight("w2", 32, 16) + qweight("w3", 32, 16) + qweight("w4", 32, 16) +
   qweight("w5", 32, 16) + [
    init("xs", np.array(4 / 255, np.float32)), init("xz", np.array(128, np.uint8)),
    init("ys", np.array(8 / 255, np.float32)), init("yz", np.array(120, np.uint8)),
    init("yz8", np.array(-5, np.int8)), init("ys2", np.array(0.03, np.float32)),
    init("b1", rand(24)), init("b3", rand(1, 1, 16)),
])
# fuse-qdq-out, int8-dynamic form: DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(., s),
# s = Mul(x_scale, w_scale) [-> Add(bias)] as com.microsoft MatMulIntegerToFloat. dm1 with a bias,
# dm2 with the scale product's operands and the Mul's the other way round and no Add, dm3's scale
# product is also a graph output (left).
def dyn_mm(p, w, s_first=False, const_first=False):
    sv = p + "_s"
    s_in = [w + "_s", "dxs"] if const_first else ["dxs", w + "_s"]
    m_in = [sv, p + "_f"] if s_first else [p + "_f", sv]
    return [helper.make_node("MatMulInteger", ["dxq", w, "dxz"], [p + "_i"], name=p),
            helper.make_node("Cast", [p + "_i"], [p + "_f"], name=p + "_cast", to=F),
            helper.make_node("Mul", s_in, [sv], name=p + "_scale"),
            helper.make_node("Mul", m_in, [p + "_y"], name=p + "_rescale")]


save("dyn_out", [
    helper.make_node("DynamicQuantizeLinear", ["x"], ["dxq", "dxs", "dxz"], name="dql"),
] + dyn_mm("dm1", "v1") + [helper.make_node("Add", ["dm1_y", "c1"], ["y1"], name="dm1_bias")]
  + dyn_mm("dm2", "v2", s_first=True, const_first=True)
  + dyn_mm("dm3", "v3"),
   [vi("x", [3, 5, 32])],
   [vi("y1", [3, 5, 24]), vi("dm2_y", [3, 5, 16]), vi("dm3_y", [3, 5, 16]), vi("dm3_s", [16])],
   qweight("v1", 32, 24)[:2] + qweight("v2", 32, 16)[:2] + qweight("v3", 32, 16)[:2] + [
    init("c1", rand(24))])
# fuse-rowq: int8-dynamic --per-row's pattern. x's rows quantized once (uint8, + 128) for rm1
# (per-column w_scale, bias) and rm2 (scalar w_scale, bias first, no Add... the Add is of two
# activations: kept); x2's in the int8 form (no + 128) for rm3; x3's floor is 0 (not a positive
# constant: left, so rm4 stays too); rm5 reads x's rows but multiplies by s before w_scale
# (another rounding order: left).
def row_quant(p, x, floor, u8=True):
    q = p + "_q"
    nodes = [helper.make_node("Abs", [x], [p + "_abs"], name=p + "_abs"),
             helper.make_node("ReduceMax", [p + "_abs"], [p + "_max"], name=p + "_max", axes=[-1],
                              keepdims=1),
             helper.make_node("Div", [p + "_max", "c127"], [p + "_s0"], name=p + "_s0"),
             helper.make_node("Max", [p + "_s0", floor], [p + "_s"], name=p + "_s"),
             helper.make_node("Div", [x, p + "_s"], [p + "_f"], name=p + "_div"),
             helper.make_node("Round", [p + "_f"], [p + "_r"], name=p + "_round")]
    if u8:
        return nodes + [helper.make_node("Add", [p + "_r", "c128"], [p + "_o"], name=p + "_off"),
                        helper.make_node("Cast", [p + "_o"], [q], name=p + "_cast", to=U8)]
    return nodes + [helper.make_node("Cast", [p + "_r"], [q], name=p + "_cast", to=I8)]


def row_mm(p, q, s, w, zp=True, swap=False):
    m1 = [p + "_f", s] if swap else [p + "_f", w + "_s"]
    m2 = [p + "_y1", w + "_s"] if swap else [p + "_y1", s]
    return [helper.make_node("MatMulInteger", [q, w, "z128"] if zp else [q, w], [p + "_i"], name=p),
            helper.make_node("Cast", [p + "_i"], [p + "_f"], name=p + "_cast", to=F),
            helper.make_node("Mul", m1, [p + "_y1"], name=p + "_wscale"),
            helper.make_node("Mul", m2, [p + "_y"], name=p + "_rscale")]


save("rowq", row_quant("qa", "x", "tiny") + row_quant("qb", "x2", "tiny", u8=False)
     + row_quant("qc", "x3", "zero")
     + row_mm("rm1", "qa_q", "qa_s", "u1") + [helper.make_node("Add", ["rm1_y", "e1"], ["y1"], name="rm1_bias")]
     + row_mm("rm2", "qa_q", "qa_s", "u2") + [helper.make_node("Add", ["rm2_y", "x"], ["y2"], name="rm2_res")]
     + row_mm("rm3", "qb_q", "qb_s", "u3", zp=False)
     + row_mm("rm4", "qc_q", "qc_s", "u4")
     + row_mm("rm5", "qa_q", "qa_s", "u5", swap=True),
     [vi("x", [3, 5, 32]), vi("x2", [3, 5, 32]), vi("x3", [3, 5, 32])],
     [vi("y1", [3, 5, 24]), vi("y2", [3, 5, 32]), vi("rm3_y", [3, 5, 16]), vi("rm4_y", [3, 5, 16]),
      vi("rm5_y", [3, 5, 16])],
     qweight("u1", 32, 24)[:2] + [init("u2", np.round(rng.uniform(-1, 1, (32, 32)) * 63).astype(np.int8)),
                                   init("u2_s", np.array(0.02, np.float32))]
     + qweight("u3", 32, 16)[:2] + qweight("u4", 32, 16)[:2] + qweight("u5", 32, 16)[:2] + [
         init("c127", np.array(127, np.float32)), init("c128", np.array(128, np.float32)),
         init("tiny", np.array(np.finfo(np.float32).tiny, np.float32)),
         init("zero", np.array(0, np.float32)), init("z128", np.array(128, np.uint8)),
         init("e1", rand(24))])

# blocked-layout (level 3): an inverted-residual chain in NCHW8c. The stem (a dense 3x3 from the
# 3-channel input img, Relu) feeds e1 (1x1 16 -> 48, Relu6), d1 (depthwise 3x3, Relu6), p1 (1x1
# 48 -> 16, residual the stem's output), e2 (1x1, Relu), d2 (depthwise 3x3 stride 2, Relu), p2
# (1x1 32 -> 24, the graph output): 6 convs, the stem writing NCHW8c itself (its output is read
# only as their X and Z) and one FromBlocked (y1). From the graph input f1 -> MaxPool -> f2
# (depthwise) -> Concat(f2, the pool) -> f3 (dense 3x3: Winograd in the layout) ->
# GlobalAveragePool: pools and Concat in the layout between a ToBlocked and a FromBlocked. Near misses that stay NCHW: a1 -> b1 (dense 5x5: not in
# the layout) -> a2 (residual a1) -> a3, three 1x1 convs with 4 reorders; c1 -> c2, a region of
# two. Batch 2, 12x12 planes. Weights from their own generator, so the models above keep theirs.
rng_b = np.random.default_rng(77)


def brand(*shape):
    return rng_b.uniform(-0.5, 0.5, size=shape).astype(np.float32)


save("blocked", [
    helper.make_node("Conv", ["img", "ws", "bs"], ["s0"], name="stem", pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["s0"], ["s"], name="stem_relu"),
    helper.make_node("Conv", ["s", "we1", "be1"], ["e1"], name="e1"),
    helper.make_node("Clip", ["e1", "zero", "six"], ["e1c"], name="e1_clip"),
    helper.make_node("Conv", ["e1c", "wd1", "bd1"], ["d1"], name="d1", group=48, pads=[1, 1, 1, 1]),
    helper.make_node("Clip", ["d1", "zero", "six"], ["d1c"], name="d1_clip"),
    helper.make_node("Conv", ["d1c", "wp1", "bp1"], ["p1"], name="p1"),
    helper.make_node("Add", ["p1", "s"], ["r1"], name="p1_res"),
    helper.make_node("Conv", ["r1", "we2"], ["e2"], name="e2"),
    helper.make_node("Relu", ["e2"], ["e2r"], name="e2_relu"),
    helper.make_node("Conv", ["e2r", "wd2", "bd2"], ["d2"], name="d2", group=32, pads=[1, 1, 1, 1],
                     strides=[2, 2]),
    helper.make_node("Relu", ["d2"], ["d2r"], name="d2_relu"),
    helper.make_node("Conv", ["d2r", "wp2", "bp2"], ["y1"], name="p2"),
    helper.make_node("Conv", ["x", "wa1"], ["a1"], name="a1"),
    helper.make_node("Conv", ["a1", "wb1"], ["b1"], name="b1", pads=[2, 2, 2, 2]),
    helper.make_node("Conv", ["b1", "wa2"], ["a2"], name="a2"),
    helper.make_node("Add", ["a2", "a1"], ["a2r"], name="a2_res"),
    helper.make_node("Conv", ["a2r", "wa3"], ["y2"], name="a3"),
    helper.make_node("Conv", ["x", "wc1"], ["c1"], name="c1"),
    helper.make_node("Conv", ["c1", "wc2"], ["y3"], name="c2", group=8, pads=[1, 1, 1, 1]),
    helper.make_node("Conv", ["x", "wf1"], ["f1"], name="f1"),
    helper.make_node("MaxPool", ["f1"], ["fp"], name="f_pool", kernel_shape=[3, 3],
                     strides=[2, 2], ceil_mode=1),
    helper.make_node("Conv", ["fp", "wf2"], ["f2"], name="f2", group=16, pads=[1, 1, 1, 1]),
    helper.make_node("Concat", ["f2", "fp"], ["fc"], name="f_cat", axis=1),
    helper.make_node("Conv", ["fc", "wf3"], ["f3"], name="f3", pads=[1, 1, 1, 1]),
    helper.make_node("GlobalAveragePool", ["f3"], ["y4"], name="f_gap"),
], [vi("x", [2, 8, 12, 12]), vi("img", [2, 3, 12, 12])],
   [vi("y1", [2, 24, 6, 6]), vi("y2", [2, 8, 12, 12]), vi("y3", [2, 8, 12, 12]),
    vi("y4", [2, 8, 1, 1])], [
    init("ws", brand(16, 3, 3, 3)), init("bs", brand(16)),
    init("we1", brand(48, 16, 1, 1)), init("be1", brand(48)),
    init("wd1", brand(48, 1, 3, 3)), init("bd1", brand(48)),
    init("wp1", brand(16, 48, 1, 1)), init("bp1", brand(16)),
    init("we2", brand(32, 16, 1, 1)),
    init("wd2", brand(32, 1, 3, 3)), init("bd2", brand(32)),
    init("wp2", brand(24, 32, 1, 1)), init("bp2", brand(24)),
    init("wa1", brand(8, 8, 1, 1)), init("wb1", brand(8, 8, 5, 5)),
    init("wa2", brand(8, 8, 1, 1)), init("wa3", brand(8, 8, 1, 1)),
    init("wc1", brand(8, 8, 1, 1)), init("wc2", brand(8, 1, 3, 3)),
    init("wf1", brand(16, 8, 1, 1)), init("wf2", brand(16, 1, 3, 3)),
    init("wf3", brand(8, 32, 3, 3)),
    init("zero", np.array(0.0, np.float32)), init("six", np.array(6.0, np.float32)),
])
print("wrote pass_*.onnx to", os.path.normpath(OUT))
