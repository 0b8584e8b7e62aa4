#!/usr/bin/env python3
"""Writes one-node ai.kiln Attention models with bert_tiny's and minilm_l12's shapes (128 tokens,
a [1,1,1,T] padding mask) and a long causal one, for timing the fused kernel alone with
`kiln bench FILE --threads 1 --runs 400` (bench/RESULTS.md, fused Attention section). Needs onnx.

usage: bench/make_attention_models.py OUT_DIR"""
import os
import sys

import onnx
from onnx import TensorProto as TP
from onnx import helper

# name: (B, H, S, T, D, Dv, mask dims or None, causal)
MODELS = {
    "attn_bert_tiny": (1, 4, 128, 128, 64, 64, [1, 1, 1, 128], 0),
    "attn_minilm_l12": (1, 12, 128, 128, 32, 32, [1, 1, 1, 128], 0),
    "attn_causal_512": (1, 4, 512, 512, 64, 64, None, 1),
}


def make(B, H, S, T, D, Dv, mask, causal):
    ins = [helper.make_tensor_value_info("q", TP.FLOAT, [B, H, S, D]),
           helper.make_tensor_value_info("k", TP.FLOAT, [B, H, T, D]),
           helper.make_tensor_value_info("v", TP.FLOAT, [B, H, T, Dv])]
    if mask:
        ins.append(helper.make_tensor_value_info("mask", TP.FLOAT, mask))
    node = helper.make_node("Attention", [i.name for i in ins], ["y"], domain="ai.kiln",
                            scale=D ** -0.5, causal=causal)
    out = helper.make_tensor_value_info("y", TP.FLOAT, [B, H, S, Dv])
    m = helper.make_model(helper.make_graph([node], "attention", ins, [out]),
                          opset_imports=[helper.make_opsetid("", 17),
                                         helper.make_opsetid("ai.kiln", 1)])
    m.ir_version = 8
    return m


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    os.makedirs(sys.argv[1], exist_ok=True)
    for name, shape in MODELS.items():
        onnx.save(make(*shape), os.path.join(sys.argv[1], name + ".onnx"))


if __name__ == "__main__":
    main()
