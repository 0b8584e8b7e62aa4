#!/usr/bin/env bash
# Regenerates tests/data/onnx-node (and onnx-simple) with the official ONNX test-case generator of
# Debian's python3-onnx (onnx 1.12). The shipped copy was made this way; rerun only to refresh it.
# Usage: tools/make_conformance_data.sh [OUTDIR]   (default tests/data)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-tests/data}
dpkg -s python3-onnx >/dev/null 2>&1 || { echo "needs: apt-get install python3-onnx" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# numpy 1.24 dropped aliases that onnx 1.12's generator still uses
/usr/bin/python3 -c 'import numpy as np; [setattr(np, a, t) for a, t in (("float", float), ("int", int), ("bool", bool), ("object", object))]
import sys; from onnx.backend.test import cmd_tools; sys.argv = ["x", "generate-data", "-o", sys.argv[1]]; cmd_tools.main()' "$tmp"
mkdir -p "$out"
rm -rf "$out/onnx-node" "$out/onnx-simple"
cp -r "$tmp/node" "$out/onnx-node"
cp -r "$tmp/simple" "$out/onnx-simple"
echo "wrote $(ls "$out/onnx-node" | wc -l) node tests and $(ls "$out/onnx-simple" | wc -l) simple tests to $out"
