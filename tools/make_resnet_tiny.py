#!/usr/bin/python3
"""Writes tests/models/resnet_tiny.onnx, a float ResNet in miniature (stem conv + Relu, a basic
block with an identity shortcut, a strided block with a 1x1 downsample shortcut, each ending in
Add -> Relu, then GlobalAveragePool -> Flatten -> Gemm), and its calibration and test inputs
(tests/data/resnet_tiny_calib/input.npy, tests/data/resnet_tiny_test/input.npy: [N, 3, 16, 16]).
tests/test_qdq.c quantizes it with `kiln quantize --to int8` and checks that the residual Adds
and the pool join the integer chain. Run from anywhere:
    /usr/bin/python3 tools/make_resnet_tiny.py
It also writes tests/models/fire_tiny.onnx, two SqueezeNet fire modules in miniature (squeeze 1x1,
expand 1x1 and 3x3, Concat; a MaxPool after the first), with its own calibration and test inputs
(tests/data/fire_tiny_calib, tests/data/fire_tiny_test: [N, 3, 12, 12]): the Concats the int8
quantizer gives one range.
Needs python3-numpy and python3-onnx (1.12). Deterministic (fixed seed)."""
import os

import numpy as np

np.float, np.int, np.bool, np.object = float, int, bool, object  # onnx 1.12 on numpy >= 1.24
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
rng = np.random.default_rng(18)
inits, nodes = [], []


def conv(x, cin, cout, k, stride, name, relu=True):
    w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    inits.extend([numpy_helper.from_array(w, name + ".w"), numpy_helper.from_array(b, name + ".b")])
    nodes.append(helper.make_node("Conv", [x, name + ".w", name + ".b"], [name + "_y"], name=name,
                                  kernel_shape=[k, k], strides=[stride, stride],
                                  pads=[k // 2] * 4))
    if not relu:
        return name + "_y"
    nodes.append(helper.make_node("Relu", [name + "_y"], [name + "_r"], name=name + "_relu"))
    return name + "_r"


def add_relu(a, b, name):
    nodes.append(helper.make_node("Add", [a, b], [name + "_y"], name=name))
    nodes.append(helper.make_node("Relu", [name + "_y"], [name + "_r"], name=name + "_relu"))
    return name + "_r"


def save(name, side):
    """Writes tests/models/NAME.onnx (input [N, 3, side, side] -> logits [N, 10]) from the nodes
    and initializers built so far, and its calibration (8) and test (16) inputs."""
    g = helper.make_graph(nodes, name,
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["N", 3, side, side])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)],
                          producer_name="kiln make_resnet_tiny.py")
    m.ir_version = 7
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, os.path.join(HERE, "models", name + ".onnx"))
    for sub, n in ((name + "_calib", 8), (name + "_test", 16)):
        os.makedirs(os.path.join(HERE, "data", sub), exist_ok=True)
        np.save(os.path.join(HERE, "data", sub, "input.npy"),
                rng.standard_normal((n, 3, side, side)).astype(np.float32))


x0 = conv("input", 3, 8, 3, 1, "stem")
h = conv(x0, 8, 8, 3, 1, "b1c1")
h = conv(h, 8, 8, 3, 1, "b1c2", relu=False)
x1 = add_relu(h, x0, "b1add")
h = conv(x1, 8, 16, 3, 2, "b2c1")
h = conv(h, 16, 16, 3, 1, "b2c2", relu=False)
d = conv(x1, 8, 16, 1, 2, "b2down", relu=False)
x2 = add_relu(h, d, "b2add")
nodes.append(helper.make_node("GlobalAveragePool", [x2], ["pool"], name="pool"))
nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
w = (rng.standard_normal((10, 16)) * 0.3).astype(np.float32)
inits.extend([numpy_helper.from_array(w, "fc.w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc.b")])
nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1))
save("resnet_tiny", 16)

# ---- fire_tiny --------------------------------------------------------------------------------
inits, nodes = [], []


def fire(x, cin, sq, ex, name):
    s = conv(x, cin, sq, 1, 1, name + "_sq")
    e1 = conv(s, sq, ex, 1, 1, name + "_e1")
    e3 = conv(s, sq, ex, 3, 1, name + "_e3")
    nodes.append(helper.make_node("Concat", [e1, e3], [name + "_cat"], name=name + "_cat", axis=1))
    return name + "_cat"


x0 = conv("input", 3, 8, 3, 1, "stem")
f1 = fire(x0, 8, 4, 8, "fire1")
nodes.append(helper.make_node("MaxPool", [f1], ["pool1"], name="pool1", kernel_shape=[3, 3],
                              strides=[2, 2], ceil_mode=1))
f2 = fire("pool1", 16, 4, 8, "fire2")
h = conv(f2, 16, 10, 1, 1, "head")
nodes.append(helper.make_node("GlobalAveragePool", [h], ["gap"], name="gap"))
nodes.append(helper.make_node("Flatten", ["gap"], ["logits"], name="flatten"))
save("fire_tiny", 12)
