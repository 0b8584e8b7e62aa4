#!/bin/bash
# MatMulNBits (int4, block 32) against the FP32 MatMul of the same weight, single-op models from
# bench/nbits_models.py, per M (rows of A) and path (KILN_NBITS_PATH: the 4-bit GEMV, dequantize +
# SGEMM, the automatic choice, and q8: A quantized to int8, accuracy_level 4's kernels). `kiln
# bench` on the files alternately, ROUNDS rounds, best p50 (ms) of each. Not part of ctest.
# usage: bench/run_nbits.sh [BUILD_DIR] [THREADS]  env: ROUNDS (3)  MS ("1 2 4 8 16 64 128")
#        SHAPES ("256x1024 1024x256 4096x4096")  STAT (p50, or min: kiln bench's min latency,
#        steadier on a loaded machine)
set -eu
build=${1:-build}
t=${2:-1}
rounds=${ROUNDS:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
/usr/bin/python3 "$(dirname "$0")/nbits_models.py" "$out"
stat=${STAT:-p50}
p50() { sed -n "s/.* $stat \([0-9.]*\).*/\1/p"; }
min() { awk "BEGIN{print ($1 < $2) ? $1 : $2}"; }
printf '%-10s %4s %10s %10s %10s %10s %10s  %s %s\n' "K x N" M fp32 gemv sgemm auto q8 "fp32/auto" "auto/q8"
for kn in ${SHAPES:-256x1024 1024x256 4096x4096}; do
  for m in ${MS:-1 2 4 8 16 64 128}; do
    runs=$([ "$kn" = 4096x4096 ] && echo 20 || echo 200)
    bf=1e9 bg=1e9 bs=1e9 ba=1e9 bq=1e9
    for _ in $(seq "$rounds"); do
      b() { "$build/kiln" bench "$1" --shape a=$m,${kn%x*} --threads "$t" --runs "$runs" --warmup 3 2>&1 | p50; }
      bf=$(min "$(b "$out/fp32_$kn.onnx")" "$bf")
      bg=$(min "$(KILN_NBITS_PATH=gemv b "$out/int4_$kn.onnx")" "$bg")
      bs=$(min "$(KILN_NBITS_PATH=sgemm b "$out/int4_$kn.onnx")" "$bs")
      ba=$(min "$(b "$out/int4_$kn.onnx")" "$ba")
      bq=$(min "$(KILN_NBITS_PATH=q8 b "$out/int4_$kn.onnx")" "$bq")
    done
    printf '%-10s %4d %10s %10s %10s %10s %10s  %.2f %.2f\n' "$kn" "$m" "$bf" "$bg" "$bs" "$ba" "$bq" \
      "$(awk "BEGIN{print $bf/$ba}")" "$(awk "BEGIN{print $ba/$bq}")"
  done
done
