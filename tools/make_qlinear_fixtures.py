#!/usr/bin/python3
"""Writes tests/models/qlinear_add_gap.onnx (one com.microsoft QLinearAdd or
QLinearGlobalAveragePool node per case, each with its own graph inputs and output) and, under
tests/data/qlinear/, each case's inputs and the output numpy computes for it, which
tests/test_qlinear.c compares Kiln's reference and cpu kernels against. Run from anywhere:
    /usr/bin/python3 tools/make_qlinear_fixtures.py
Needs python3-numpy and python3-onnx (1.12). Deterministic (fixed seed).

The expectations follow ONNX Runtime's kernels, computed here with numpy float32 arithmetic:
  QLinearAdd (MlasQLinearAddKernelRawHelper): y = sat(rint(((a - za) * sa + (b - zb) * sb) / sc) + zc)
    with numpy broadcasting; each product and the sum, the quotient rounded to float32.
  QLinearGlobalAveragePool (MlasQLinearGlobalAveragePoolNchw / Nhwc): the exact integer sum s over
    the m spatial elements, y = sat(rint(float32(s - zx * m) * (xs / (ys * m))) + zy), the
    multiplier computed in float32.
rint rounds half to even; the cases include exact ties (scales 0.5) and saturation at both ends."""
import os

import numpy as np

np.float, np.int, np.bool, np.object = float, int, bool, object  # onnx 1.12 on numpy >= 1.24
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "tests", "models", "qlinear_add_gap.onnx")
DATA = os.path.join(HERE, "..", "tests", "data", "qlinear")
rng = np.random.default_rng(2026)
f32 = np.float32
inits, nodes, inputs, outputs = [], [], [], []
TT = {np.uint8: TensorProto.UINT8, np.int8: TensorProto.INT8}


def rng_q(dt, shape):
    lo, hi = (0, 256) if dt == np.uint8 else (-128, 128)
    return rng.integers(lo, hi, size=shape).astype(dt)


def sat(r, z, dt):
    lo, hi = (0, 255) if dt == np.uint8 else (-128, 127)
    return np.clip(r.astype(np.float64) + z, lo, hi).astype(dt)


def const(name, v):
    inits.append(numpy_helper.from_array(np.asarray(v), name))
    return name


def graph_in(name, a):
    inputs.append(helper.make_tensor_value_info(name, TT[a.dtype.type], list(a.shape)))
    np.save(os.path.join(DATA, name + ".npy"), a)
    return name


def graph_out(name, y):
    outputs.append(helper.make_tensor_value_info(name, TT[y.dtype.type], list(y.shape)))
    np.save(os.path.join(DATA, name + ".npy"), y)


def add_case(tag, dt, sa_, sb_, ash, bsh, p, omit=()):
    (sa, za), (sb, zb), (sc, zc) = p
    a, b = rng_q(dt, ash), rng_q(dt, bsh)
    if sa_ is not None:  # fixed inputs (ties)
        a, b = sa_.astype(dt), sb_.astype(dt)
    va = (a.astype(np.int32) - za).astype(f32) * f32(sa)
    vb = (b.astype(np.int32) - zb).astype(f32) * f32(sb)
    y = sat(np.rint((va + vb) / f32(sc)), zc, dt)
    ins = [graph_in(tag + "_a", a), const(tag + "_sa", f32(sa)),
           "" if "za" in omit else const(tag + "_za", np.array(za, dt)),
           graph_in(tag + "_b", b), const(tag + "_sb", f32(sb)),
           "" if "zb" in omit else const(tag + "_zb", np.array(zb, dt)),
           const(tag + "_sc", f32(sc))]
    if "zc" not in omit:
        ins.append(const(tag + "_zc", np.array(zc, dt)))
    nodes.append(helper.make_node("QLinearAdd", ins, [tag + "_y"], name=tag, domain="com.microsoft"))
    graph_out(tag + "_y", y)


def gap_case(tag, dt, shape, last, xs, zx, ys, zy):
    x = rng_q(dt, shape)
    axes = tuple(range(1, len(shape) - 1)) if last else tuple(range(2, len(shape)))
    m = int(np.prod([shape[d] for d in axes]))
    s = x.astype(np.int64).sum(axis=axes, keepdims=True)
    mult = f32(xs) / (f32(ys) * f32(m))
    y = sat(np.rint((s - zx * m).astype(f32) * mult), zy, dt)
    ins = [graph_in(tag + "_x", x), const(tag + "_xs", f32(xs)), const(tag + "_xz", np.array(zx, dt)),
           const(tag + "_ys", f32(ys)), const(tag + "_yz", np.array(zy, dt))]
    nodes.append(helper.make_node("QLinearGlobalAveragePool", ins, [tag + "_y"], name=tag,
                                  domain="com.microsoft", channels_last=int(last)))
    graph_out(tag + "_y", y)


os.makedirs(DATA, exist_ok=True)
U8, S8 = np.uint8, np.int8
add_case("add_same", U8, None, None, [2, 3, 5, 7], [2, 3, 5, 7], ((0.02, 128), (0.05, 3), (0.04, 100)))
add_case("add_chan", S8, None, None, [2, 3, 4, 5], [3, 1, 1], ((0.1, -5), (0.03, 7), (0.08, -10)))
add_case("add_scalar", U8, None, None, [4, 37], [], ((0.02, 10), (0.5, 200), (0.03, 0)))
add_case("add_both", U8, None, None, [1, 4, 1, 6], [3, 1, 5, 1], ((0.07, 30), (0.02, 220), (0.05, 128)))
add_case("add_sat", S8, None, None, [67], [67], ((0.05, 0), (0.05, -7), (0.001, 3)))
add_case("add_nozp", U8, None, None, [3, 70], [3, 70], ((0.01, 0), (0.02, 0), (0.025, 0)),
         omit=("zb", "zc"))
ties = np.arange(256)
add_case("add_ties", U8, ties, ties[::-1].copy(), None, None, ((0.5, 0), (0.25, 0), (1.0, 0)))
add_case("add_ties_s8", S8, ties - 128, (ties[::-1] - 128).copy(), None, None,
         ((0.5, 0), (0.5, 1), (1.0, -1)))
gap_case("gap_nchw", U8, [2, 3, 5, 7], False, 0.02, 128, 0.01, 5)
gap_case("gap_3d", S8, [1, 4, 3, 3, 2], False, 0.05, -3, 0.02, 4)
gap_case("gap_nhwc", U8, [2, 5, 3, 6], True, 0.03, 7, 0.02, 120)
gap_case("gap_nhwc_s8", S8, [1, 7, 7, 16], True, 0.04, 0, 0.03, -2)
gap_case("gap_sat", U8, [1, 8, 4, 4], False, 0.1, 0, 0.002, 10)

g = helper.make_graph(nodes, "qlinear_add_gap", inputs, outputs, inits)
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13),
                                        helper.make_opsetid("com.microsoft", 1)])
m.ir_version = 7
onnx.save(m, MODEL)
print("wrote", MODEL, "and", len(inputs) + len(outputs), "arrays in", DATA)
