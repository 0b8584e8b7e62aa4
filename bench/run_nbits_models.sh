#!/bin/bash
# Whole models FP32 vs int4 (com.microsoft MatMulNBits, `kiln quantize --to int4`, block 32):
# bert_tiny and minilm_l12 (MODELS_DIR, sequence 128) and charlm (CHARLM, sequence 128), so every
# MatMulNBits runs with M = 128 rows. Per model and thread count, ROUNDS rounds of `kiln bench`
# alternating FP32, int4 and int4 with --accuracy-level 4 (q8: int8 activations) (and int4 on a
# second build, BEFORE=path/to/kiln, when given), median of the rounds' p50 (ms; STAT=min for
# kiln bench's min latency). Not part of ctest.
# usage: bench/run_nbits_models.sh [BUILD_DIR]
# env:   ROUNDS (5)  RUNS (20)  THREADS ("1 2")  MODELS_DIR (~/.cache/kiln-models)  STAT (p50)
#        CHARLM (/work/shared/models/charlm/charlm.onnx)  BEFORE (unset)
set -eu
build=${1:-build}
kiln=$build/kiln
rounds=${ROUNDS:-5}
runs=${RUNS:-20}
threads_list=${THREADS:-1 2}
models_dir=${MODELS_DIR:-$HOME/.cache/kiln-models}
charlm=${CHARLM:-/work/shared/models/charlm/charlm.onnx}
before=${BEFORE:-}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
stat=${STAT:-p50}
p50() { sed -n "s/.* $stat \([0-9.]*\).*/\1/p"; }
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END{print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-11s %3s %9s %9s %9s %9s %9s %10s %s\n' model thr fp32 int4 q8 "fp32/int4" "fp32/q8" size "int4(before)"
for name in bert_tiny minilm_l12 charlm; do
  if [ "$name" = charlm ]; then src=$charlm; else src=$models_dir/${name}_opset13.onnx; fi
  [ -f "$src" ] || { echo "$name: $src missing, skipped"; continue; }
  "$kiln" quantize "$src" --to int4 -o "$out/$name.onnx" >/dev/null
  "$kiln" quantize "$src" --to int4 --accuracy-level 4 -o "$out/${name}_q8.onnx" >/dev/null
  size=$(awk -v a="$(stat -c %s "$src")" -v b="$(stat -c %s "$out/$name.onnx")" 'BEGIN{printf "%.2fx", b/a}')
  for t in $threads_list; do
    f="" q="" o="" e=""
    b() { "$1" bench "$2" --threads "$t" --runs "$runs" --warmup 3 2>&1 | p50; }
    for _ in $(seq "$rounds"); do
      f="$f $(b "$kiln" "$src")"
      q="$q $(b "$kiln" "$out/$name.onnx")"
      e="$e $(b "$kiln" "$out/${name}_q8.onnx")"
      [ -z "$before" ] || o="$o $(b "$before" "$out/$name.onnx")"
    done
    mf=$(echo "$f" | median) mq=$(echo "$q" | median) me=$(echo "$e" | median)
    mo=$([ -z "$before" ] && echo - || echo "$o" | median)
    printf '%-11s %3d %9s %9s %9s %9.2f %9.2f %10s %s\n' "$name" "$t" "$mf" "$mq" "$me" \
      "$(awk "BEGIN{print $mf/$mq}")" "$(awk "BEGIN{print $mf/$me}")" "$size" "$mo"
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
