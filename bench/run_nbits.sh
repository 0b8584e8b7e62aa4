#!/bin/bash
# MatMulNBits (int4, block 32) against the FP32 MatMul of the same weight, single-op models from
# bench/nbits_models.py, per M (rows of A) and path (KILN_NBITS_PATH: the 4-bit GEMV, dequantize +
# SGEMM, and the automatic choice). `kiln bench` on the files alternately, ROUNDS rounds, best p50
# (ms) of each. Not part of ctest.  usage: bench/run_nbits.sh [BUILD_DIR] [THREADS]  env: ROUNDS (3)
set -eu
build=${1:-build}
t=${2:-1}
rounds=${ROUNDS:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
/usr/bin/python3 "$(dirname "$0")/nbits_models.py" "$out"
p50() { sed -n 's/.*p50 \([0-9.]*\).*/\1/p'; }
min() { awk "BEGIN{print ($1 < $2) ? $1 : $2}"; }
printf '%-10s %4s %10s %10s %10s %10s  %s\n' "K x N" M fp32 gemv sgemm auto "fp32/auto"
for kn in 256x1024 1024x256 4096x4096; do
  for m in 1 2 4 8 16 64; do
    runs=$([ "$kn" = 4096x4096 ] && echo 20 || echo 200)
    bf=1e9 bg=1e9 bs=1e9 ba=1e9
    for _ in $(seq "$rounds"); do
      b() { "$build/kiln" bench "$1" --shape a=$m,${kn%x*} --threads "$t" --runs "$runs" --warmup 3 2>&1 | p50; }
      bf=$(min "$(b "$out/fp32_$kn.onnx")" "$bf")
      bg=$(min "$(KILN_NBITS_PATH=gemv b "$out/int4_$kn.onnx")" "$bg")
      bs=$(min "$(KILN_NBITS_PATH=sgemm b "$out/int4_$kn.onnx")" "$bs")
      ba=$(min "$(b "$out/int4_$kn.onnx")" "$ba")
    done
    printf '%-10s %4d %10s %10s %10s %10s  %.2f\n' "$kn" "$m" "$bf" "$bg" "$bs" "$ba" "$(awk "BEGIN{print $bf/$ba}")"
  done
done
