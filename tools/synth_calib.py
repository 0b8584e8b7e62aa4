#!/usr/bin/python3
"""Writes synthetic calibration inputs for `kiln quantize --calib DIR`: one <input name>.npy per
graph input of MODEL, N samples batched on dim 0. Float inputs are N(0, 1) (an image model's
normalized pixels), integer inputs named *mask* are ones, *type* zeros, anything else (token ids)
uniform in [0, IDS). Random data: good for size and speed runs only, never for accuracy.
    /usr/bin/python3 tools/synth_calib.py MODEL.onnx DIR [N=4] [IDS=1000]"""
import os
import sys

import numpy as np

np.float, np.int, np.bool, np.object = float, int, bool, object  # onnx 1.12 on numpy >= 1.24
import onnx  # noqa: E402
from onnx import mapping  # noqa: E402


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    model, out = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    ids = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
    rng = np.random.default_rng(7)
    m = onnx.load(model, load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    os.makedirs(out, exist_ok=True)
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dt = mapping.TENSOR_TYPE_TO_NP_TYPE[t.elem_type]
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        dims[0] = n  # calibration batches along dim 0
        if np.issubdtype(dt, np.floating):
            a = rng.standard_normal(dims).astype(dt)
        elif "mask" in vi.name:
            a = np.ones(dims, dt)
        elif "type" in vi.name:
            a = np.zeros(dims, dt)
        else:
            a = rng.integers(0, ids, size=dims).astype(dt)
        np.save(os.path.join(out, vi.name + ".npy"), a)


if __name__ == "__main__":
    main()
