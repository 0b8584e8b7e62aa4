#!/bin/bash
# FP32 vs int8-dynamic latency: quantizes each model with `kiln quantize --to int8-dynamic`, then
# runs `kiln bench` on the two files alternately (ROUNDS rounds each, so machine load hits both
# alike) and prints the best p50 of each and their ratio. "full" is a --full-range file (int8
# weights in [-127, 127]: the exact int16-pair path on AVX2; the default 7-bit file runs the
# VPMADDUBSW path); "rows" a --per-row file (activations quantized per row). Not part of ctest.
# usage: bench/run_int8_dynamic.sh [BUILD_DIR]   env: MODELS_DIR (~/.cache/kiln-models) ROUNDS (3)
#        MODELS ("bert_tiny minilm_l12 resnet50")
#        OUT_DIR (a temporary folder for the quantized files)
set -eu
build=${1:-build}
kiln=$build/kiln
models_dir=${MODELS_DIR:-$HOME/.cache/kiln-models}
rounds=${ROUNDS:-3}
out=${OUT_DIR:-$(mktemp -d)}
p50() { sed -n 's/.*p50 \([0-9.]*\).*/\1/p'; }
for m in ${MODELS:-bert_tiny minilm_l12 resnet50}; do
  fp32=$models_dir/${m}_opset13.onnx
  int8=$out/${m}_int8.onnx
  "$kiln" quantize "$fp32" --to int8-dynamic -o "$int8" >/dev/null
  full=$out/${m}_int8_full.onnx
  "$kiln" quantize "$fp32" --to int8-dynamic --full-range -o "$full" >/dev/null
  rows=$out/${m}_int8_rows.onnx
  "$kiln" quantize "$fp32" --to int8-dynamic --per-row -o "$rows" >/dev/null
  case $m in resnet50) runs=8 ;; minilm_l12) runs=10 ;; *) runs=30 ;; esac
  for t in 1 2; do
    bf=999999 bq=999999 bx=999999 br=999999
    for _ in $(seq "$rounds"); do
      f=$("$kiln" bench "$fp32" --threads "$t" --runs "$runs" --warmup 2 2>&1 | p50)
      q=$("$kiln" bench "$int8" --threads "$t" --runs "$runs" --warmup 2 2>&1 | p50)
      bf=$(awk "BEGIN{print ($f < $bf) ? $f : $bf}")
      bq=$(awk "BEGIN{print ($q < $bq) ? $q : $bq}")
      x=$("$kiln" bench "$full" --threads "$t" --runs "$runs" --warmup 2 2>&1 | p50)
      bx=$(awk "BEGIN{print ($x < $bx) ? $x : $bx}")
      w=$("$kiln" bench "$rows" --threads "$t" --runs "$runs" --warmup 2 2>&1 | p50)
      br=$(awk "BEGIN{print ($w < $br) ? $w : $br}")
    done
    printf '%-11s %d thr  bytes %10s %10s  p50 fp32 %9s int8 %9s full %9s rows %9s  fp32/int8 %s fp32/full %s fp32/rows %s\n' \
      "$m" "$t" "$(stat -c %s "$fp32")" "$(stat -c %s "$int8")" "$bf" "$bq" "$bx" "$br" \
      "$(awk "BEGIN{printf \"%.2f\", $bf/$bq}")" "$(awk "BEGIN{printf \"%.2f\", $bf/$bx}")" \
      "$(awk "BEGIN{printf \"%.2f\", $bf/$br}")"
  done
done
