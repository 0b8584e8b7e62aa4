#!/usr/bin/env bash
# kiln validate's exit codes (0 within budget, 1 budget missed, 2 usage, 3 failure), kiln prune and
# kiln quantize --auto through the command line.
# usage: quant_eval_cli.sh KILN REPO_DIR
set -u
kiln=$1
repo=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model=$repo/models/digits/digits_cnn.onnx
mkdir "$tmp/data"
ln -s "$(realpath "$repo/models/digits/test_x.npy")" "$tmp/data/input.npy"
labels=$repo/models/digits/test_y.npy
fails=0

# want RC REGEX -- kiln args...
want() {
  local rc_want=$1 re=$2
  shift 3
  local out rc
  out=$("$kiln" "$@" 2>&1)
  rc=$?
  if [ "$rc" -ne "$rc_want" ] || ! grep -Eq "$re" <<<"$out"; then
    echo "FAIL (exit $rc, wanted $rc_want, /$re/): kiln $*"
    echo "$out" | tail -5
    fails=$((fails + 1))
  else
    echo "ok   exit $rc: kiln $*"
  fi
}

"$kiln" quantize "$model" --to int8-dynamic -o "$tmp/q.onnx" >/dev/null || exit 1
v=(validate --reference "$model" --candidate "$tmp/q.onnx" --data "$tmp/data" --labels "$labels")
want 0 "budget: met" -- "${v[@]}" --min-top1-agreement 0.99 --min-cosine 0.999 --max-accuracy-drop 0.5
want 1 "cosine .* < 0.9999999" -- "${v[@]}" --min-cosine 0.9999999
want 1 "top-1 agreement 1.0000 < 1.01" -- "${v[@]}" --min-top1-agreement 1.01
want 1 "2 budgets missed" -- "${v[@]}" --min-cosine 0.9999999 --max-accuracy-drop -1
want 2 "needs --perplexity" -- "${v[@]}" --max-ppl-ratio 1.02
want 2 "wants a number" -- "${v[@]}" --min-cosine abc
want 2 "needs --labels" -- validate --reference "$model" --candidate "$tmp/q.onnx" --data "$tmp/data" --max-accuracy-drop 1
want 3 "validate:" -- validate --reference "$model" --candidate "$tmp/missing.onnx" --data "$tmp/data"
want 0 "hurts most: /f1/Gemm_output_0" -- "${v[@]}" --per-layer
want 0 "perplexity: +reference" -- validate --reference "$repo/tests/models/qeval_lm_a.onnx" \
  --candidate "$repo/tests/models/qeval_lm_b.onnx" --data "$repo/tests/data/qeval/lm" --perplexity --max-ppl-ratio 2
want 1 "perplexity ratio 1.8" -- validate --reference "$repo/tests/models/qeval_lm_a.onnx" \
  --candidate "$repo/tests/models/qeval_lm_b.onnx" --data "$repo/tests/data/qeval/lm" --perplexity --max-ppl-ratio 1.5

want 0 "16 -> 8 output channels" -- prune "$model" --sparsity 0.5 --structured -o "$tmp/p.onnx"
want 0 "same|exactly as fast" -- prune "$model" --sparsity 0.3 --unstructured -o "$tmp/u.onnx"
want 2 "sparsity wants" -- prune "$model" --sparsity 1.5 --structured -o "$tmp/p.onnx"
want 2 "usage" -- prune "$model" --sparsity 0.3 -o "$tmp/p.onnx"
want 1 "prune:" -- prune "$tmp/missing.onnx" --sparsity 0.3 --structured -o "$tmp/p.onnx"

want 0 "chosen precision per layer" -- quantize "$model" --auto --budget top1=0.99 --calib "$tmp/data" -o "$tmp/a.onnx"
want 2 "budget wants" -- quantize "$model" --auto --budget size=3 --calib "$tmp/data" -o "$tmp/a.onnx"
want 2 "unknown quantization format 'int3'" -- quantize "$model" --auto --budget top1=0.99 --formats fp16,int3 --calib "$tmp/data" -o "$tmp/a.onnx"
echo "$fails failed"
[ "$fails" -eq 0 ]
