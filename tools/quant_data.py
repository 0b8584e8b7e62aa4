#!/usr/bin/env python3
"""Writes DIR/input_ids.npy: the first N windows of 128 bytes of the charlm held-out text (int64
[N,128]), the inputs `kiln validate` feeds the charlm reference and its quantized variants.

usage: quant_data.py HELDOUT.txt DIR [N]"""
import os
import sys

import numpy as np

src, out = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 64
b = np.frombuffer(open(src, "rb").read(), dtype=np.uint8)
assert len(b) >= 128 * n, "not enough text"
os.makedirs(out, exist_ok=True)
np.save(os.path.join(out, "input_ids.npy"), b[: 128 * n].reshape(n, 128).astype(np.int64))
