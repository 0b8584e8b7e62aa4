#!/usr/bin/python3
"""Writes calibration data for static int8 on the digits CNN: the first N samples of the model's
*training* split, so calibration never sees the 450 test digits that accuracy is measured on.

The split is the one the model was trained with (shared/models/README.md): scikit-learn's 8x8
digits, train_test_split(test_size=450, random_state=0, stratify=y), pixels / 16. The script
checks that its test split equals the shipped models/digits/test_x.npy before writing anything.

usage: tools/digits_calib.py REPO_DIR OUT_DIR [N=256]   (writes OUT_DIR/input.npy, float32 [N,1,8,8])
"""
import os
import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def main():
    repo, out = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xtr, xte, _, _ = train_test_split(x, d.target, test_size=450, random_state=0, stratify=d.target)
    shipped = np.load(os.path.join(repo, "models/digits/test_x.npy"))
    if shipped.shape != xte.shape or not np.array_equal(shipped, xte):
        sys.exit("the reproduced test split differs from models/digits/test_x.npy: not writing")
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "input.npy"), np.ascontiguousarray(xtr[:n]))
    print(f"wrote {n} of {len(xtr)} training digits to {out}/input.npy")


if __name__ == "__main__":
    main()
