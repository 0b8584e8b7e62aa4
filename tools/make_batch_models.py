#!/usr/bin/python3
"""Dynamic-batch versions of resnet50 and bert_tiny, for the runtime's batching benchmark.

Run with Debian's python:  /usr/bin/python3 tools/make_batch_models.py [OUTDIR] [resnet50] [bert_tiny]
(default OUTDIR ~/.cache/kiln-models/batch; default both models). Needs torch 1.13, torchvision
0.14, onnx 1.12 (the same packages as ../shared/tools/models/make_models.py).

The files in ~/.cache/kiln-models have a fixed batch of 1, so the runtime refuses dynamic batching
on them (docs/RUNTIME.md). These are the same architectures, random-init after
torch.manual_seed(0), exported with dynamic_axes on the first dimension of every input and output
(named "N"); everything else stays static (224x224 images, sequence 128). Opset 17 only:
  resnet50_opset17.onnx   input  [N,3,224,224] f32 -> logits [N,1000]
  bert_tiny_opset17.onnx  input_ids/attention_mask/token_type_ids int64 [N,128]
                          -> last_hidden_state [N,128,256]
Each export is checked with onnx.checker and by comparing torch at batch 1 and 3 (rows of a batch
must equal the rows run alone, up to float noise), so a batch axis that got baked in as a constant
(a Reshape to 1, say) fails here rather than in the benchmark.
"""
import math
import os
import sys

import numpy as np

# onnx 1.12 still uses the aliases numpy 1.24 removed.
np.float = float
np.int = int
np.bool = bool
np.object = object

import onnx  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torchvision  # noqa: E402

OPSET = 17
torch.set_num_threads(2)


# ------------------------------------------------------------------------- BERT-like encoder
# Copied from ../shared/tools/models/make_models.py (BertLayer, BertEncoder) rather than imported:
# importing that script runs its top level (reads sys.argv, creates OUTDIR/ref). Keep in step.
class BertLayer(nn.Module):
    def __init__(self, hidden, heads, ffn, eps=1e-12):
        super().__init__()
        self.h, self.nh, self.dh = hidden, heads, hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.o = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden, eps=eps)
        self.ffn1 = nn.Linear(hidden, ffn)
        self.ffn2 = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden, eps=eps)

    def split(self, x):  # [B,S,H] -> [B,nh,S,dh]
        b, s, _ = x.shape
        return x.view(b, s, self.nh, self.dh).permute(0, 2, 1, 3)

    def forward(self, x, ext_mask):
        b, s, _ = x.shape
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh)
        probs = torch.softmax(scores + ext_mask, dim=-1)
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(b, s, self.h)
        x = self.ln1(x + self.o(ctx))
        y = self.ffn2(torch.nn.functional.gelu(self.ffn1(x)))  # exact (erf) GELU
        return self.ln2(x + y)


class BertEncoder(nn.Module):
    def __init__(self, layers, hidden, heads, ffn, vocab=30522, max_pos=512, type_vocab=2):
        super().__init__()
        self.word = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_pos, hidden)
        self.typ = nn.Embedding(type_vocab, hidden)
        self.ln = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList([BertLayer(hidden, heads, ffn) for _ in range(layers)])
        for m in self.modules():  # BERT-style init
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, input_ids, attention_mask, token_type_ids):
        s = input_ids.shape[1]
        pos_ids = torch.arange(s, dtype=torch.long).unsqueeze(0)
        x = self.word(input_ids) + self.pos(pos_ids) + self.typ(token_type_ids)
        x = self.ln(x)
        ext = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -10000.0
        for layer in self.layers:
            x = layer(x, ext)
        return x


# ------------------------------------------------------------------------------------ export
def check_rows(model, make_args, tol):
    """Batch-3 output rows must match the same inputs run one at a time (torch eager)."""
    with torch.no_grad():
        batch = model(*make_args(3))
        for i in range(3):
            one = model(*[a[i:i + 1] for a in make_args(3)])
            d = (batch[i:i + 1] - one).abs().max().item()
            if d > tol:
                raise SystemExit("row %d of a batch differs from it alone by %g" % (i, d))


def export(model, make_args, name, in_names, out_names, out_dir):
    model.eval()
    fn = os.path.join(out_dir, "%s_opset%d.onnx" % (name, OPSET))
    axes = {n: {0: "N"} for n in in_names + out_names}
    torch.onnx.export(model, make_args(2), fn, opset_version=OPSET, input_names=in_names,
                      output_names=out_names, dynamic_axes=axes, do_constant_folding=True)
    m = onnx.load(fn)
    onnx.checker.check_model(m)
    for vi in list(m.graph.input) + list(m.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        if d0.dim_param != "N":
            raise SystemExit("%s: %s has first dimension %s, not N" % (fn, vi.name, d0))
    print("wrote", fn, os.path.getsize(fn), flush=True)


def images(n):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 3, 224, 224, generator=g),)


def tokens(n, s=128):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 30522, (n, s), generator=g, dtype=torch.long)
    mask = torch.ones(n, s, dtype=torch.long)
    mask[:, 100:] = 0  # last 28 positions are padding, as in make_models.py
    tt = torch.zeros(n, s, dtype=torch.long)
    tt[:, 64:] = 1
    return ids, mask, tt


def make_resnet50(out_dir):
    torch.manual_seed(0)
    m = torchvision.models.resnet50(weights=None).eval()
    check_rows(m, images, 1e-4)
    export(m, images, "resnet50", ["input"], ["logits"], out_dir)


def make_bert_tiny(out_dir):
    torch.manual_seed(0)
    m = BertEncoder(4, 256, 4, 1024).eval()
    check_rows(m, tokens, 1e-4)
    export(m, tokens, "bert_tiny", ["input_ids", "attention_mask", "token_type_ids"],
           ["last_hidden_state"], out_dir)


if __name__ == "__main__":
    args = sys.argv[1:]
    names = [a for a in args if a in ("resnet50", "bert_tiny")]
    dirs = [a for a in args if a not in names]
    out_dir = dirs[0] if dirs else os.path.expanduser("~/.cache/kiln-models/batch")
    os.makedirs(out_dir, exist_ok=True)
    for n in names or ["resnet50", "bert_tiny"]:
        {"resnet50": make_resnet50, "bert_tiny": make_bert_tiny}[n](out_dir)
