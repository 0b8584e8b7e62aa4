#!/bin/bash
# Static int8 (QDQ) latency: `kiln quantize M --to int8 --calib DIR` on synthetic calibration
# inputs (tools/synth_calib.py: random data, so the files are good for size and speed only), then,
# alternately per round: Kiln FP32, Kiln int8 (default level: fuse-qdq runs the pairs on
# QLinearConv / QLinearMatMul), ONNX Runtime FP32 and ONNX Runtime on the *same* int8 file (both
# --opt all). ORT's Python quantizer is not available here; the file is in ORT's own QDQ layout,
# so ORT running it is ORT's static int8. Prints the median over rounds of each run's p50 (or STAT) and the
# ratios. Not part of ctest.
# usage: bench/run_qdq.sh [BUILD_DIR]
# env:   MODELS_DIR (~/.cache/kiln-models)  ORT_DIR (~/.cache/kiln-ort)  ROUNDS (3)  THREADS ("1 2")
#        MODELS ("squeezenet1_1 mobilenet_v2 resnet18 resnet50 bert_tiny")  OUT_DIR (temporary)
#        BASE_KILN: another kiln binary (e.g. a main build) that also runs the same int8 file in
#        every round, alternating with this build ("base int8" column, base / this ratio)
#        STAT (p50): the per-run statistic, p50 or min (min is the steadier one on a shared,
#        loaded machine); the table shows the median over rounds of it
set -eu
build=${1:-build}
kiln=$build/kiln
models_dir=${MODELS_DIR:-$HOME/.cache/kiln-models}
ort_dir=${ORT_DIR:-$HOME/.cache/kiln-ort}
rounds=${ROUNDS:-3}
threads=${THREADS:-"1 2"}
models=${MODELS:-"squeezenet1_1 mobilenet_v2 resnet18 resnet50 bert_tiny"}
out=${OUT_DIR:-$(mktemp -d)}
here=$(cd "$(dirname "$0")/.." && pwd)
base=${BASE_KILN:-}
stat=${STAT:-p50}
have_ort=1
command -v node >/dev/null && [ -f "$ort_dir/ortbench.js" ] || have_ort=0

ort_inputs() { # as bench/run.sh: int64 ids in {0,1} for the encoders
  case $1 in
    bert_tiny|minilm_l12)
      for n in input_ids attention_mask token_type_ids; do printf -- '--input %s=1,128:randint:0:2 ' $n; done ;;
  esac
}
kiln_p50() { "$kiln" bench "$1" --threads "$2" --runs "$3" --warmup 2 2>&1 | sed -n "s/.* $stat \([0-9.]*\).*/\1/p"; }
base_p50() { "$base" bench "$1" --threads "$2" --runs "$3" --warmup 2 2>&1 | sed -n "s/.* $stat \([0-9.]*\).*/\1/p"; }
ort_p50() {
  # shellcheck disable=SC2046
  node "$ort_dir/ortbench.js" "$1" --threads "$2" --opt all --warmup 2 --runs "$3" --min-time 0 \
    --max-time 60 $(ort_inputs "$4") 2>&1 | sed -n "s/.* $stat=\([0-9.]*\).*/\1/p" | head -1
}
med() { sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "")}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf (a != "" && b != "" ? "%.2f" : "-"), a / b}'; }

# kiln int8 runs the default file (7-bit weights: the AVX2 VPMADDUBSW path); "k8 full" a
# --full-range file of the same model and calibration (the exact int16-pair path on AVX2).
printf '%-13s %3s %10s %10s %10s %10s %10s %10s  %9s %9s %9s %9s %9s\n' model thr "kiln fp32" \
  "kiln int8" "k8 full" "ort fp32" "ort int8" "base int8" "kfp/kint8" "kfp/kfull" "ort8/k8" \
  "ortfp/o8" "base/k8"
for m in $models; do
  fp32=$models_dir/${m}_opset13.onnx
  int8=$out/${m}_int8.onnx
  /usr/bin/python3 "$here/tools/synth_calib.py" "$fp32" "$out/calib_$m" 4
  "$kiln" quantize "$fp32" --to int8 --calib "$out/calib_$m" -o "$int8" >/dev/null
  full=$out/${m}_int8_full.onnx
  "$kiln" quantize "$fp32" --to int8 --full-range --calib "$out/calib_$m" -o "$full" >/dev/null
  case $m in resnet50) runs=8 ;; resnet18|mobilenet_v2|squeezenet1_1) runs=15 ;; *) runs=30 ;; esac
  for t in $threads; do
    kf="" ki="" kx="" of="" oi="" bi=""
    for _ in $(seq "$rounds"); do
      kf+="$(kiln_p50 "$fp32" "$t" "$runs")"$'\n'
      ki+="$(kiln_p50 "$int8" "$t" "$runs")"$'\n'
      kx+="$(kiln_p50 "$full" "$t" "$runs")"$'\n'
      [ -n "$base" ] && bi+="$(base_p50 "$int8" "$t" "$runs")"$'\n'
      if [ $have_ort = 1 ]; then
        of+="$(ort_p50 "$fp32" "$t" "$runs" "$m")"$'\n'
        oi+="$(ort_p50 "$int8" "$t" "$runs" "$m")"$'\n'
      fi
    done
    kf=$(printf '%s' "$kf" | med) ki=$(printf '%s' "$ki" | med) kx=$(printf '%s' "$kx" | med)
    of=$(printf '%s' "$of" | med) oi=$(printf '%s' "$oi" | med) bi=$(printf '%s' "$bi" | med)
    printf '%-13s %3d %10s %10s %10s %10s %10s %10s  %9s %9s %9s %9s %9s\n' "$m" "$t" "$kf" "$ki" \
      "$kx" "${of:--}" "${oi:--}" "${bi:--}" "$(ratio "$kf" "$ki")" "$(ratio "$kf" "$kx")" \
      "$(ratio "$oi" "$ki")" "$(ratio "$of" "$oi")" "$(ratio "$bi" "$ki")"
  done
  printf '%-13s     bytes fp32 %s int8 %s\n' "$m" "$(stat -c %s "$fp32")" "$(stat -c %s "$int8")"
done
