#!/bin/bash
# Kiln with its default ISA, Kiln with KILN_ISA=avx2 and ONNX Runtime (--opt all), alternating
# round by round on each model and thread count: how much the widest kernels buy on this CPU and
# where each path stands against the peer. Prints min and median p50 (ms) of each and the min
# ratios against ORT. Not part of ctest; skips itself without ORT (../shared/tools/ort/setup.sh).
# usage: bench/run_isa.sh [BUILD_DIR]
# env:   MODELS_DIR (~/.cache/kiln-models)  ORT_DIR (~/.cache/kiln-ort)  ROUNDS (3)  RUNS (10)
#        THREADS ("1 2")  MODELS (the seven of bench/run.sh)
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
kiln=${1:-$root/build}/kiln
md=${MODELS_DIR:-$HOME/.cache/kiln-models}
ortb=${ORT_DIR:-$HOME/.cache/kiln-ort}/ortbench.js
[ -x "$kiln" ] || { echo "run_isa: $kiln not built" >&2; exit 1; }
[ -f "$ortb" ] || { echo "run_isa: skipped: ONNX Runtime is not installed (../shared/tools/ort/setup.sh)"; exit 0; }
rounds=${ROUNDS:-3} runs=${RUNS:-10}
mn() { printf '%s\n' "$@" | sort -g | head -1; }
md_() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-14s %3s  %17s  %17s  %17s  %s\n' model thr "kiln min/p50" "kiln-avx2 min/p50" \
  "ort min/p50" "min ratios to ORT (kiln, kiln-avx2)"
for m in ${MODELS:-digits_cnn squeezenet1_1 mobilenet_v2 resnet18 resnet50 bert_tiny minilm_l12}; do
  f=$md/${m}_opset17.onnx
  [ -f "$f" ] || { echo "$m missing ($md)"; continue; }
  kin=() oin=()
  [ "$m" = digits_cnn ] && kin=(--shape input=1,1,8,8) oin=(--input input=1,1,8,8)
  for t in ${THREADS:-1 2}; do
    a=() ap=() b=() bp=() o=() op=()
    for _ in $(seq "$rounds"); do
      read -r x y < <("$kiln" bench "$f" --threads "$t" --runs "$runs" --warmup 2 "${kin[@]}" |
                      awk '/latency/ {print $4, $6}')
      a+=("$x") ap+=("$y")
      read -r x y < <(KILN_ISA=avx2 "$kiln" bench "$f" --threads "$t" --runs "$runs" --warmup 2 \
                      "${kin[@]}" | awk '/latency/ {print $4, $6}')
      b+=("$x") bp+=("$y")
      read -r x y < <(node "$ortb" "$f" --threads "$t" --opt all --runs "$runs" --warmup 2 \
                      --min-time 0 "${oin[@]}" | grep -v '^JSON' |
                      sed -n 's/.*min=\([0-9.]*\) p50=\([0-9.]*\).*/\1 \2/p')
      o+=("$x") op+=("$y")
    done
    printf '%-14s %3s  %8s/%-8s  %8s/%-8s  %8s/%-8s  %.2f, %.2f\n' "$m" "$t" "$(mn "${a[@]}")" \
      "$(md_ "${ap[@]}")" "$(mn "${b[@]}")" "$(md_ "${bp[@]}")" "$(mn "${o[@]}")" \
      "$(md_ "${op[@]}")" "$(echo "$(mn "${a[@]}") / $(mn "${o[@]}")" | bc -l)" \
      "$(echo "$(mn "${b[@]}") / $(mn "${o[@]}")" | bc -l)"
  done
done
