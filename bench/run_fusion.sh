#!/usr/bin/env bash
# What the fusion engine saves (issue 4's goal): for each benchmark model and thread count, Kiln at
# --opt-level 0 and at the highest level, side by side with ONNX Runtime at --opt disabled and all.
# The four are run alternately (ROUNDS times, interleaved, so machine noise hits all of them);
# prints min (over all rounds) and p50 (median over rounds) of each (min is the steadier on a
# shared machine), the % Kiln's passes save against its own level 0 (at p50 and at min) and the
# ratio Kiln highest / ORT all at p50. Not part of ctest.
#
# usage: bench/run_fusion.sh [BUILD_DIR]  (default build; needs BUILD_DIR/kiln)
# env:   MODELS_DIR (~/.cache/kiln-models)  ORT_DIR (~/.cache/kiln-ort)  RUNS (15)  WARMUP (3)
#        ROUNDS (1)  THREADS ("1 2")  MODELS (the list below)  OPT_HIGH (-1: the highest level)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
models_dir=${MODELS_DIR:-$HOME/.cache/kiln-models}
ort_dir=${ORT_DIR:-$HOME/.cache/kiln-ort}
runs=${RUNS:-15}
warmup=${WARMUP:-3}
rounds=${ROUNDS:-1}
threads_list=${THREADS:-1 2}
opt_high=${OPT_HIGH:--1}
models=${MODELS:-digits_cnn squeezenet1_1 mobilenet_v2 resnet18 resnet50 bert_tiny minilm_l12}

kiln=$build/kiln
[ -x "$kiln" ] || { echo "bench: $kiln not built (cmake --build $build)" >&2; exit 1; }
if ! command -v node >/dev/null; then
  echo "bench: skipped: node is not installed (ONNX Runtime runs under Node.js)"; exit 0
fi
if [ ! -f "$ort_dir/ortbench.js" ] || [ ! -d "$ort_dir/node_modules/onnxruntime-node" ]; then
  echo "bench: skipped: ONNX Runtime is not installed in $ort_dir (run ../shared/tools/ort/setup.sh)"
  exit 0
fi

# Same inputs as bench/run.sh: int64 ids in {0,1} for the encoders, batch 1 for digits_cnn.
ort_inputs() {
  case $1 in
    bert_tiny|minilm_l12)
      for n in input_ids attention_mask token_type_ids; do printf -- '--input %s=1,128:randint:0:2 ' $n; done ;;
    digits_cnn) printf -- '--input input=1,1,8,8' ;;
  esac
}

# kiln bench prints "min X  p50 Y"; ortbench.js prints "min=X p50=Y".
kiln_run() { # MODEL THREADS LEVEL -> "min p50"
  "$kiln" bench "$1" --threads "$2" --runs "$runs" --warmup "$warmup" --opt-level "$3" 2>&1 |
    sed -n 's/.*min \([0-9.]*\)  *p50 \([0-9.]*\).*/\1 \2/p' | head -1
}
ort_run() { # MODEL THREADS OPT NAME -> "min p50"
  # shellcheck disable=SC2046
  node "$ort_dir/ortbench.js" "$1" --threads "$2" --opt "$3" --warmup "$warmup" --runs "$runs" \
    --min-time 0 --max-time 30 $(ort_inputs "$4") 2>&1 |
    sed -n 's/.* min=\([0-9.]*\) p50=\([0-9.]*\).*/\1 \2/p' | head -1
}
# Over rounds, of column $1 of the lines on stdin: the smallest (lo) and the median (med).
lo() { awk -v c="$1" 'NF {print $c}' | sort -g | head -1; }
med() { awk -v c="$1" 'NF {print $c}' | sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "")}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
saved() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.0f%%", 100 * (1 - b / a)}'; }

printf '%-14s %3s  %17s %17s  %17s %17s  %8s %8s %8s\n' model thr "kiln0 min/p50" "kilnmax min/p50" \
  "ort_dis min/p50" "ort_all min/p50" "saved50" "savedmin" "kmax/ort"
for m in $models; do
  f=$models_dir/${m}_opset17.onnx
  [ -f "$f" ] || f=$models_dir/${m}_opset13.onnx
  if [ ! -f "$f" ]; then printf '%-14s missing (%s)\n' "$m" "$models_dir"; continue; fi
  for t in $threads_list; do
    k0='' kh='' od='' oa=''
    for ((r = 0; r < rounds; r++)); do
      k0+="$(kiln_run "$f" "$t" 0)"$'\n'
      od+="$(ort_run "$f" "$t" disabled "$m")"$'\n'
      kh+="$(kiln_run "$f" "$t" "$opt_high")"$'\n'
      oa+="$(ort_run "$f" "$t" all "$m")"$'\n'
    done
    k0m=$(echo "$k0" | lo 1) k0p=$(echo "$k0" | med 2) khm=$(echo "$kh" | lo 1) khp=$(echo "$kh" | med 2)
    odm=$(echo "$od" | lo 1) odp=$(echo "$od" | med 2) oam=$(echo "$oa" | lo 1) oap=$(echo "$oa" | med 2)
    if [ -z "$k0p" ] || [ -z "$khp" ] || [ -z "$odp" ] || [ -z "$oap" ]; then
      printf '%-14s %3s  failed: [%s] [%s] [%s] [%s]\n' "$m" "$t" "$k0p" "$khp" "$odp" "$oap"
      continue
    fi
    printf '%-14s %3s  %8s/%-8s %8s/%-8s  %8s/%-8s %8s/%-8s  %8s %8s %8s\n' "$m" "$t" \
      "$k0m" "$k0p" "$khm" "$khp" "$odm" "$odp" "$oam" "$oap" "$(saved "$k0p" "$khp")" \
      "$(saved "$k0m" "$khm")" "$(ratio "$khp" "$oap")"
  done
done
