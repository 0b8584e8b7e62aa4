#!/usr/bin/env python3
"""Writes a one-node model (Conv, plus its Clip when that is the only consumer) for every Conv of
mobilenet_v2_opset17.onnx with its real weights, named NN_KIND_CINtoCOUT_SIDE_kKsS[_clip], and
prints each one's multiply-adds: per-node timing with `kiln bench FILE --threads 1 --runs 100`
(bench/RESULTS.md, MobileNet-v2 per-node section). Needs numpy and onnx.

usage: bench/mobilenet_nodes.py OUT_DIR > macs.txt"""
import os, sys, onnx, numpy as np
from onnx import helper, numpy_helper, shape_inference, TensorProto
if len(sys.argv) != 2:
    sys.exit(__doc__)
models = os.environ.get('MODELS_DIR', os.path.expanduser('~/.cache/kiln-models'))
m = onnx.load(os.path.join(models, 'mobilenet_v2_opset17.onnx'))
m = shape_inference.infer_shapes(m)
g = m.graph
consts = {}
for i in g.initializer: consts[i.name] = numpy_helper.to_array(i)
for n in g.node:
    if n.op_type == 'Constant': consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
for n in g.node:
    if n.op_type == 'Identity' and n.input[0] in consts: consts[n.output[0]] = consts[n.input[0]]
shapes = {}
for vi in list(g.value_info) + list(g.input) + list(g.output):
    shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
users = {}
for n in g.node:
    for i in n.input: users.setdefault(i, []).append(n)
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
for idx, n in enumerate([n for n in g.node if n.op_type == 'Conv']):
    W = consts[n.input[1]]; B = consts[n.input[2]] if len(n.input) > 2 else None
    xs = shapes[n.input[0]]; ys = shapes[n.output[0]]
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    inits = [numpy_helper.from_array(W, 'W')] + ([numpy_helper.from_array(B, 'B')] if B is not None else [])
    nodes = [helper.make_node('Conv', ['x', 'W'] + (['B'] if B is not None else []), ['c'], **attrs)]
    u = users.get(n.output[0], [])
    clip = len(u) == 1 and u[0].op_type == 'Clip'
    if clip:
        inits += [numpy_helper.from_array(np.array(consts[u[0].input[1]], np.float32), 'lo'),
                  numpy_helper.from_array(np.array(consts[u[0].input[2]], np.float32), 'hi')]
        nodes.append(helper.make_node('Clip', ['c', 'lo', 'hi'], ['y']))
    else:
        nodes[0].output[0] = 'y'
    kind = 'dw' if attrs.get('group', 1) > 1 else ('pw' if W.shape[2] == 1 else 'full')
    name = f"{idx:02d}_{kind}_{xs[1]}to{ys[1]}_{xs[2]}_k{W.shape[2]}s{attrs.get('strides',[1])[0]}{'_clip' if clip else ''}"
    gr = helper.make_graph(nodes, name, [helper.make_tensor_value_info('x', TensorProto.FLOAT, xs)],
                           [helper.make_tensor_value_info('y', TensorProto.FLOAT, ys)], inits)
    mm = helper.make_model(gr, opset_imports=[helper.make_opsetid('', 17)]); mm.ir_version = 8
    onnx.save(mm, os.path.join(out, name + '.onnx'))
    macs = int(np.prod(ys)) * W.shape[1] * W.shape[2] * W.shape[3]
    print(name, macs)
