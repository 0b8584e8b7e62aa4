#!/usr/bin/env python3
"""Per-op-type time of Chrome trace profiles: `kiln bench --profile-json` and ONNX Runtime's
(bench/ort_profile.js), side by side. Only the last RUNS `model_run` events of each file count
(ORT's file also holds its warm-up runs). Convolutions and matrix products are grouped into
families (Conv = Conv/FusedConv/QLinearConv..., MatMul = MatMul/FusedMatMul/Gemm/...) so that the
two engines' different fusions compare; GFLOP/s uses Kiln's MAC counts (args.macs) and, for
ORT, MACs computed from the input/output shapes its events carry.
Per node, STAT (median by default, or min, mean) of its durations over the runs is taken, then
summed per op type: on a shared machine the median and min are steadier than the mean. Shares
are of the sum of the nodes' figures.
Several files for one engine (NAME=A.json,B.json: rounds of the same benchmark) are pooled.
usage: profile_ops.py RUNS [--stat median|min|mean] NAME=TRACE.json[,...]...   (stdlib only)"""
import json
import sys
from collections import defaultdict
from math import prod

CONV = {"Conv", "FusedConv", "ConvInteger", "QLinearConv", "NhwcFusedConv"}
MATMUL = {"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "MatMulInteger", "QLinearMatMul",
          "MatMulNBits", "Attention"}


def shape_macs(op, args):
    """MACs from an ORT event's shapes (Conv: out * W/M; MatMul/Gemm: out * K)."""
    ins = [list(t.values())[0] for t in args.get("input_type_shape", [])]
    outs = [list(t.values())[0] for t in args.get("output_type_shape", [])]
    if not outs or not ins:
        return 0
    if op in CONV and len(ins) > 1 and ins[1] and ins[1][0]:
        return prod(outs[0]) * prod(ins[1]) // ins[1][0]
    if op in ("MatMul", "FusedMatMul") and ins[0]:
        return prod(outs[0]) * ins[0][-1]
    if op == "Gemm" and len(ins[0]) == 2:
        return prod(outs[0]) * ins[0][1]  # ORT's events do not say transA; exporters leave it 0
    return 0


def events(paths, runs):
    """The node events inside the last `runs` model_run spans of each file, and the spans."""
    out, all_spans = [], []
    for path in paths:
        ev = json.load(open(path))
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in ev
                       if e.get("cat") == "Session" and e.get("name") == "model_run")[-runs:]
        all_spans += spans
        out += [e for e in ev if e.get("cat") == "Node" and any(a <= e["ts"] <= b for a, b in spans)]
    return out, all_spans


def load(paths, runs, stat):
    ev, spans = events(paths, runs)
    nodes = defaultdict(lambda: [None, [], 0])  # per node: op, durations, macs per call
    for e in ev:
        if "op_name" not in e.get("args", {}):
            continue
        if e["name"].endswith(("_fence_before", "_fence_after")):
            continue
        op, args = e["args"]["op_name"], e["args"]
        nd = nodes[(op, str(args.get("node_index", e["name"])))]
        nd[0] = op
        nd[1].append(e["dur"])
        nd[2] = int(args["macs"]) if "macs" in args else shape_macs(op, args)
        if op in CONV:  # Kiln names its depthwise kernel; ORT's events show W [C, 1, kh, kw]
            w = [list(t.values())[0] for t in args.get("input_type_shape", [])][1:2]
            dw = args.get("kernel") == "dwconv" or (w and len(w[0]) == 4 and w[0][1] == 1
                                                    and w[0][2] * w[0][3] > 1)
            nd[0] = op + (" (depthwise)" if dw else "")
    ops = defaultdict(lambda: [0, 0.0, 0])  # calls per run, us per run, macs per run
    n = max(len(spans), 1)
    for op, durs, macs in nodes.values():
        durs.sort()
        per_run = {"min": durs[0], "median": durs[len(durs) // 2],
                   "mean": sum(durs) / n}[stat] if durs else 0.0
        base = op.split(" ")[0]
        fam = "[conv family]" if base in CONV else "[matmul family]" if base in MATMUL else None
        for key in (op, fam, "[depthwise conv]" if op.endswith("(depthwise)") else None):
            if key:
                o = ops[key]
                o[0] += len(durs) / n
                o[1] += per_run
                o[2] += macs * len(durs) / n
    wall = sum(b - a for a, b in spans) / n
    total = sum(o[1] for k, o in ops.items() if not k.startswith("["))
    return ops, wall, total, len(spans)


def main():
    args = sys.argv[1:]
    runs = int(args.pop(0))
    stat = "median"
    if args and args[0] == "--stat":
        stat = args[1]
        args = args[2:]
    data = {name: load(paths.split(","), runs, stat)
            for name, paths in (a.split("=", 1) for a in args)}
    for name, (_, wall, total, n) in data.items():
        print("%s: %d runs, wall %.3f ms/run (mean), nodes %.3f ms/run (%s per node)"
              % (name, n, wall / 1e3, total / 1e3, stat))
    keys = sorted({k for d in data.values() for k in d[0]},
                  key=lambda k: (not k.startswith("["),
                                 -max(d[0][k][1] if k in d[0] else 0 for d in data.values())))
    print("%-22s" % "op type" + "".join(" | %-5s calls/run   ms/run  share GFLOP/s" % name
                                        for name in data))
    for k in keys:
        line = "%-22s" % k
        for name, (ops, wall, total, n) in data.items():
            c, us, macs = ops.get(k, [0, 0.0, 0])
            rate = "%7.1f" % (2 * macs / (us * 1e3)) if macs and us else "%7s" % "-"
            line += " | %-5s %9.1f %8.3f %5.1f%% %s" % ("", c, us / 1e3,
                                                      100 * us / total if total else 0, rate)
        print(line)


if __name__ == "__main__":
    main()
