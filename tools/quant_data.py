#!/usr/bin/env python3
"""Writes DIR/input_ids.npy: the first N windows of 128 bytes of the charlm held-out text (int64
[N,128]), the inputs `kiln validate` feeds the charlm reference and its quantized variants, and
DIR/../<basename DIR>_targets.npy: the byte after each position (int64 [N,128]; the last position
of a window predicts the first byte of the next), the held-out metric of
shared/models/README.md, for `kiln validate --perplexity --targets`. The targets live outside DIR
because every .npy in DIR is read as a model input.

usage: quant_data.py HELDOUT.txt DIR [N]     (N = 2047 is the whole metric)"""
import os
import sys

import numpy as np

src, out = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 64
b = np.frombuffer(open(src, "rb").read(), dtype=np.uint8)
assert len(b) >= 128 * n + 1, "not enough text"
os.makedirs(out, exist_ok=True)
np.save(os.path.join(out, "input_ids.npy"), b[: 128 * n].reshape(n, 128).astype(np.int64))
tgt = os.path.join(os.path.dirname(os.path.abspath(out)), os.path.basename(os.path.abspath(out)) + "_targets.npy")
np.save(tgt, b[1 : 128 * n + 1].reshape(n, 128).astype(np.int64))
