#!/usr/bin/python3
"""PP-OCRv4 recognition scoring for bench/run_ocr_quant.sh (numpy only).

  ocr_eval.py split X.npy DIR LO HI       write DIR/x.npy = lines [LO, HI) of X.npy (a --data or
                                          --calib folder for kiln: one <input name>.npy)
  ocr_eval.py score OCR_DIR OUT.npy LO HI score a model's softmax output [HI-LO, T, 6625] of lines
                                          [LO, HI): exact lines, CER, per-step agreement with
                                          OCR_DIR/ocr_lines_ref_argmax.npy
  ocr_eval.py det X.npy DIR LO N          write DIR/x.npy: N 320x320 "pages" for the detection model,
                                          each 6 consecutive lines from LO on stacked on white,
                                          in PaddleOCR's detection normalization (ImageNet mean/std)
  ocr_eval.py agree A.npy B.npy           per-step argmax agreement of two outputs (Kiln vs ORT)
                                          and the mean KL(A || B) of their per-step probabilities

Decoding as /work/shared/models/README.md says: argmax per step (ties to the lowest class),
collapse repeats, drop class 0 (blank); class i in 1..6623 is line i-1 of ppocr_keys_v1.txt,
6624 is a space; leading and trailing spaces stripped. CER = sum of Levenshtein distances / sum
of ground-truth lengths."""
import sys

import numpy as np


def decode(steps, keys):
    out, prev = [], -1
    for c in steps:
        c = int(c)
        if c != prev and c != 0:
            out.append(" " if c == len(keys) + 1 else keys[c - 1])
        prev = c
    return "".join(out).strip(" ")


def levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def score(ocr_dir, out_path, lo, hi):
    keys = open(f"{ocr_dir}/ppocr_keys_v1.txt", encoding="utf-8").read().splitlines()
    gt = open(f"{ocr_dir}/ocr_lines_gt.txt", encoding="utf-8").read().splitlines()[lo:hi]
    ref = np.load(f"{ocr_dir}/ocr_lines_ref_argmax.npy")[lo:hi]
    arg = np.load(out_path, mmap_mode="r").argmax(axis=-1)
    if arg.shape != ref.shape:
        sys.exit(f"ocr_eval: output steps {arg.shape} != reference {ref.shape}")
    pred = [decode(r, keys) for r in arg]
    exact = sum(p == g for p, g in zip(pred, gt))
    dist = sum(levenshtein(p, g) for p, g in zip(pred, gt))
    chars = sum(len(g) for g in gt)
    agree = float((arg == ref).mean())
    print(f"exact {exact}/{len(gt)} ({exact / len(gt):.3f}) cer {dist / chars:.4f} "
          f"({dist}/{chars}) step-agreement {agree:.5f} ({int((arg == ref).sum())}/{ref.size})")


def main():
    a = sys.argv[1:]
    if len(a) == 5 and a[0] == "split":
        import os
        os.makedirs(a[2], exist_ok=True)
        x = np.load(a[1], mmap_mode="r")[int(a[3]):int(a[4])]
        np.save(f"{a[2]}/x.npy", np.ascontiguousarray(x))
    elif len(a) == 5 and a[0] == "score":
        score(a[1], a[2], int(a[3]), int(a[4]))
    elif len(a) == 5 and a[0] == "det":
        import os
        os.makedirs(a[2], exist_ok=True)
        lines = np.load(a[1], mmap_mode="r")
        lo, n = int(a[3]), int(a[4])
        pages = np.ones((n, 3, 320, 320), np.float32)  # white, in the lines' [-1, 1] scale
        for p in range(n):
            for k in range(6):
                pages[p, :, 8 + 50 * k:56 + 50 * k, :] = lines[lo + 6 * p + k]
        mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
        std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
        np.save(f"{a[2]}/x.npy", ((pages * 0.5 + 0.5 - mean) / std).astype(np.float32))
    elif len(a) == 3 and a[0] == "agree":
        p, q = np.load(a[1]), np.load(a[2])
        x, y = p.argmax(axis=-1), q.argmax(axis=-1)
        # the outputs are probabilities already (kiln validate's KL softmaxes them again)
        tiny = np.float32(1e-30)
        kl = (p * (np.log(np.maximum(p, tiny)) - np.log(np.maximum(q, tiny)))).sum(axis=-1).mean()
        print(f"step-agreement {float((x == y).mean()):.5f} ({int((x == y).sum())}/{x.size}) "
              f"prob-kl {float(kl):.3g}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
