#!/usr/bin/python3
"""Runs `kiln run` on every model made by ../shared/tools/models/make_models.py and compares its
outputs with the golden torch outputs that script saved (ref/<model>.json).

Usage: /usr/bin/python3 tools/check_models.py [MODEL_DIR] [KILN]
(default MODEL_DIR ~/.cache/kiln-models, KILN build/kiln). Needs python3-numpy.
Prints, per model, the max absolute error, the max error relative to the output's largest
magnitude, and whether the top-1 class agrees.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

models = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/kiln-models")
kiln = sys.argv[2] if len(sys.argv) > 2 else "build/kiln"
refdir = os.path.join(models, "ref")
worst = 0.0
for js in sorted(f for f in os.listdir(refdir) if f.endswith(".json")):
    desc = json.load(open(os.path.join(refdir, js)))
    with tempfile.TemporaryDirectory() as tmp:
        args = [kiln, "run", os.path.join(models, desc["model"]), "--output", tmp]
        for i in desc["inputs"]:
            a = np.fromfile(os.path.join(refdir, i["file"]), dtype=i["dtype"]).reshape(i["shape"])
            p = os.path.join(tmp, "in_" + i["name"] + ".npy")
            np.save(p, a)
            args += ["--input", f"{i['name']}={p}"]
        r = subprocess.run(args, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{desc['model']:32s} FAILED: {r.stderr.strip()}")
            worst = float("inf")
            continue
        for o in desc["outputs"]:
            want = np.fromfile(os.path.join(refdir, o["file"]), dtype=o["dtype"]).reshape(o["shape"])
            got = np.load(os.path.join(tmp, o["name"].replace("/", "_").replace(":", "_") + ".npy"))
            err = float(np.abs(got.astype(np.float64) - want).max())
            rel = err / max(float(np.abs(want).max()), 1e-30)
            top1 = "same" if got.reshape(got.shape[0], -1).argmax(1).tolist() == want.reshape(want.shape[0], -1).argmax(1).tolist() else "DIFFERENT"
            worst = max(worst, rel)
            print(f"{desc['model']:32s} {o['name']:16s} max abs err {err:.3e}  rel {rel:.3e}  top-1 {top1}")
print(f"worst relative error: {worst:.3e}")
sys.exit(0 if worst < 1e-4 else 1)
