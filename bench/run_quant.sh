#!/usr/bin/env bash
# Quantization lab benchmark: per model and variant (fp32, every format `kiln quantize` knows
# but static int8 (bench/run_qdq.sh), int8-dynamic --per-row, pruned digits), the file size,
# `kiln bench` p50 at 1 and 2 threads (variants of a model measured alternately, ROUNDS times,
# median kept, so machine noise hits them alike) and the accuracy:
# digits top-1 on its 450 labelled test digits, charlm perplexity ratio and KL on held-out
# windows, cosine against fp32 for the random-weight models on seeded random inputs. Models that
# are missing are skipped with the reason. Not part of ctest.
#
# usage: bench/run_quant.sh [BUILD_DIR]
# env: MODELS_DIR (~/.cache/kiln-models)  SHARED_MODELS (../shared/models from the repo)
#      RUNS (20)  ROUNDS (3)  THREADS ("1 2")  CHARLM_WINDOWS (64)  OUT (a temp dir)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
kiln=$build/kiln
models_dir=${MODELS_DIR:-$HOME/.cache/kiln-models}
shared=${SHARED_MODELS:-$root/../shared/models}
runs=${RUNS:-20}
rounds=${ROUNDS:-3}
threads_list=${THREADS:-1 2}
windows=${CHARLM_WINDOWS:-64}
py=/usr/bin/python3
[ -x "$kiln" ] || { echo "run_quant: $kiln not built" >&2; exit 1; }
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"

# The formats in the quantizer's table, from its own error message (no list kept here), but
# static int8, which needs calibration data per model: bench/run_qdq.sh measures it.
formats=$("$kiln" quantize "$root/models/digits/digits_cnn.onnx" --to '?' -o /dev/null 2>&1 |
  sed -n 's/.*expected one of \(.*\), or none.*/\1/p' | tr -d ',' | tr ' ' '\n' |
  grep -vx int8 | tr '\n' ' ')
echo "# formats: $formats; runs $runs x $rounds rounds; threads $threads_list; $(date -u +%F)"

p50() { "$kiln" bench "$1" --threads "$2" --runs "$runs" --warmup 3 2>&1 | sed -n 's/.*p50 \([0-9.]*\).*/\1/p'; }
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "-")}'; }
size() { stat -c %s "$1"; }
gz() { gzip -9 -c "$1" | wc -c; }

# row MODEL VARIANT FILE ACCURACY: latency medians measured in measure_all
declare -A lat
measure_all() { # files...
  local t r f # the callers' $f is a model path: this loop must not overwrite it
  for t in $threads_list; do
    declare -A samples=()
    for ((r = 0; r < rounds; r++)); do
      for f in "$@"; do samples[$f]+="$(p50 "$f" "$t") "; done
    done
    for f in "$@"; do lat[$f,$t]=$(med ${samples[$f]}); done
  done
}

printf '| model | variant | file bytes | gzip bytes | p50 ms 1 thr | p50 ms 2 thr | accuracy |\n|---|---|---|---|---|---|---|\n' > "$out/table.md"
row() { # model variant file accuracy
  local l=""
  for t in $threads_list; do l+=" ${lat[$3,$t]:--} |"; done
  printf '| %s | %s | %s | %s |%s %s |\n' "$1" "$2" "$(size "$3")" "$(gz "$3")" "$l" "$4" >> "$out/table.md"
}

# rows MODEL PREFIX: adds the int8-dynamic --per-row variant to files/names
rows() {
  "$kiln" quantize "$1" --to int8-dynamic --per-row -o "$2_rows.onnx" >/dev/null &&
    files+=("$2_rows.onnx") names+=("int8-dynamic per-row")
}

# ---- digits: labelled accuracy ---------------------------------------------------------------
d=$root/models/digits/digits_cnn.onnx
mkdir -p "$out/digits_data" && ln -sf "$root/models/digits/test_x.npy" "$out/digits_data/input.npy"
files=("$d") names=(fp32)
for f in $formats; do
  "$kiln" quantize "$d" --to "$f" -o "$out/digits_$f.onnx" >/dev/null && files+=("$out/digits_$f.onnx") names+=("$f")
done
rows "$d" "$out/digits"
for s in 0.3 0.5; do
  for m in structured unstructured; do
    "$kiln" prune "$d" --sparsity $s --$m -o "$out/digits_${m}_$s.onnx" >/dev/null &&
      files+=("$out/digits_${m}_$s.onnx") names+=("pruned $m $s")
  done
done
measure_all "${files[@]}"
for i in "${!files[@]}"; do
  acc=$("$kiln" validate --threads 1 --reference "$d" --candidate "${files[$i]}" --data "$out/digits_data" \
          --labels "$root/models/digits/test_y.npy" | sed -n 's/.*candidate \([0-9.]*\) (\([0-9]*\/[0-9]*\)).*/top-1 \1 (\2)/p')
  row digits "${names[$i]}" "${files[$i]}" "$acc"
done

# ---- charlm: perplexity and KL on held-out windows -----------------------------------------
c=$shared/charlm/charlm.onnx
if [ ! -f "$c" ]; then
  echo "| charlm | skipped: $c missing | | | | | |" >> "$out/table.md"
else
  $py "$root/tools/quant_data.py" "$shared/charlm/charlm_heldout.txt" "$out/lm" "$windows"
  files=("$c") names=(fp32)
  for f in $formats; do
    "$kiln" quantize "$c" --to "$f" -o "$out/charlm_$f.onnx" >/dev/null && files+=("$out/charlm_$f.onnx") names+=("$f")
  done
  rows "$c" "$out/charlm"
  measure_all "${files[@]}"
  for i in "${!files[@]}"; do
    v=$("$kiln" validate --reference "$c" --candidate "${files[$i]}" --data "$out/lm" --perplexity \
          --targets "$out/lm_targets.npy" --batch 16)
    ppl=$(sed -n 's/.*candidate \([0-9.]*\) (.*/\1/p' <<<"$v" | head -1)
    ratio=$(sed -n 's/ppl ratio: *\([0-9.]*\)/\1/p' <<<"$v")
    kl=$(sed -n 's/kl divergence: *\([0-9.e+-]*\) nats.*/\1/p' <<<"$v")
    row charlm "${names[$i]}" "${files[$i]}" "PPL $ppl (ratio $ratio, KL $kl) on $windows windows"
  done
fi

# ---- random-weight models: cosine against fp32 on seeded random inputs ----------------------
for m in bert_tiny minilm_l12 resnet50; do
  f=$models_dir/${m}_opset17.onnx
  [ -f "$f" ] || f=$models_dir/${m}_opset13.onnx
  if [ ! -f "$f" ]; then echo "| $m | skipped: not in $models_dir | | | | | |" >> "$out/table.md"; continue; fi
  mkdir -p "$out/${m}_data"
  $py - "$out/${m}_data" "$m" <<'PY'
import sys, numpy as np
d, m = sys.argv[1], sys.argv[2]
r = np.random.default_rng(0)
if m == "resnet50":
    np.save(d + "/input.npy", r.random((4, 3, 224, 224), dtype=np.float32))
else:
    np.save(d + "/input_ids.npy", r.integers(0, 1000, (8, 128)).astype(np.int64))
    np.save(d + "/attention_mask.npy", np.ones((8, 128), np.int64))
    np.save(d + "/token_type_ids.npy", np.zeros((8, 128), np.int64))
PY
  files=("$f") names=(fp32)
  for q in $formats; do
    "$kiln" quantize "$f" --to "$q" -o "$out/${m}_$q.onnx" >/dev/null && files+=("$out/${m}_$q.onnx") names+=("$q")
  done
  [ "$m" = resnet50 ] || rows "$f" "$out/$m"
  measure_all "${files[@]}"
  for i in "${!files[@]}"; do
    cos=$("$kiln" validate --threads 1 --reference "$f" --candidate "${files[$i]}" --data "$out/${m}_data" | sed -n 's/cosine: *\([0-9.]*\)/\1/p')
    row "$m" "${names[$i]}" "${files[$i]}" "cosine $cos"
  done
done
cat "$out/table.md"
