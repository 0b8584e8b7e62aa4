#!/usr/bin/env python3
"""Fixtures for tests/test_quant_eval.c: two tiny byte-level "language models" (embedding lookup,
tanh, projection to V logits; same graph, different seeded weights) and numpy's perplexities and
KL divergence for them, computed here independently of Kiln.

  tests/models/qeval_lm_a.onnx, qeval_lm_b.onnx   input_ids int64 [B, T] -> logits float32 [B, T, V]
  tests/data/qeval/lm/input_ids.npy               int64 [3, 6]
  tests/data/qeval/lm_expected.npy                float64 [ppl_a, ppl_b, kl(a||b), tokens]
                                                  (next-token targets: ids[t + 1], T - 1 per row)

usage: make_quant_eval_fixtures.py REPO_DIR"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

repo = sys.argv[1] if len(sys.argv) > 1 else "."
V, D, B, T = 7, 5, 3, 6


def weights(seed):
    r = np.random.default_rng(seed)
    return (r.normal(size=(V, D)) * 1.5).astype(np.float32), (r.normal(size=(D, V)) * 2).astype(np.float32)


def model(emb, proj):
    g = helper.make_graph(
        [helper.make_node("Gather", ["emb", "input_ids"], ["h"], axis=0),
         helper.make_node("Tanh", ["h"], ["a"]),
         helper.make_node("MatMul", ["a", "proj"], ["logits"])],
        "qeval_lm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", T])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", T, V])],
        [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(proj, "proj")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(m)
    return m


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


ids = np.random.default_rng(7).integers(0, V, size=(B, T)).astype(np.int64)
lps = []
for name, seed in (("a", 1), ("b", 2)):
    emb, proj = weights(seed)
    onnx.save(model(emb, proj), os.path.join(repo, "tests/models/qeval_lm_%s.onnx" % name))
    lps.append(log_softmax(np.tanh(emb[ids].astype(np.float64)) @ proj.astype(np.float64)))
nll = [-lp[:, :-1, :][np.arange(B)[:, None], np.arange(T - 1)[None, :], ids[:, 1:]].mean()
       for lp in lps]
pa = np.exp(lps[0])
kl = (pa * (lps[0] - lps[1])).sum(-1).mean()  # over all B*T rows
os.makedirs(os.path.join(repo, "tests/data/qeval/lm"), exist_ok=True)
np.save(os.path.join(repo, "tests/data/qeval/lm/input_ids.npy"), ids)
np.save(os.path.join(repo, "tests/data/qeval/lm_expected.npy"),
        np.array([np.exp(nll[0]), np.exp(nll[1]), kl, B * (T - 1)], dtype=np.float64))
print("ppl a %.6f b %.6f kl %.6f" % (np.exp(nll[0]), np.exp(nll[1]), kl))
