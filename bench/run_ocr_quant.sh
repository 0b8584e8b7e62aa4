#!/usr/bin/env bash
# Quantization lab on a real model with real data: PP-OCRv4 text recognition
# (shared/models/ocr/ppocrv4_rec.onnx, opset 9, weights as Constant nodes) on 200 rendered text
# lines. Variants: fp16, bf16, int8 (static QDQ, calibrated on lines 0-49 only), the same with
# --method percentile, int8-dynamic, int4 and one `--auto` mixed-precision file (calibrated on
# lines 0-15). Each runs in Kiln over the held-out lines 50-199 and is scored after CTC greedy
# decoding (tools/ocr_eval.py: exact lines, CER, per-step argmax agreement with the FP32
# reference argmax), compared with Kiln's FP32 output (per-step agreement, KL of the per-step
# probabilities) and by `kiln validate` (cosine, KL, max abs). ONNX Runtime runs the fp32, int8 and
# int4 files on the same lines (agreement with Kiln's output of the same file, score) and for
# speed. Latency: `kiln bench` / ortbench p50 on one 48x320 line at 1 and 2 threads, variants
# measured alternately ROUNDS times, median of the p50s kept. Then the detection model
# (ppocrv4_det.onnx, no labels) as fp16, bf16, int8: size, speed, validate against FP32. First,
# FP32 on all 200 lines must reproduce the models README (197/200, CER 0.0014): that checks the
# decoder. Skips itself (exit 0, with the reason) when the models are absent. Not in ctest.
#
# usage: bench/run_ocr_quant.sh [BUILD_DIR]
# env: KILN_MODELS_DIR (/work/shared/models, else ../shared/models from the repo)
#      ORT_DIR (~/.cache/kiln-ort)  RUNS (10)  ROUNDS (3)  THREADS ("1 2")  OUT (a temp dir)
#      AUTO_BUDGET (top1=0.995)  AUTO_FORMATS (int8,fp16)  SKIP_AUTO (unset)
#      SKIP_ORT_ACC (ORT's accuracy runs)  SKIP_DET / ONLY_DET (the detection model's part: size, speed, validate against FP32)
#      AUTO_FILE (use this --auto file, made earlier with the same budget, instead of searching)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
kiln=$build/kiln
shared=${KILN_MODELS_DIR:-/work/shared/models}
[ -n "${KILN_MODELS_DIR:-}" ] || [ -d "$shared" ] || shared=$root/../shared/models
ocr=$shared/ocr
rec=$ocr/ppocrv4_rec.onnx
ort_dir=${ORT_DIR:-$HOME/.cache/kiln-ort}
runs=${RUNS:-10}
rounds=${ROUNDS:-3}
threads_list=${THREADS:-1 2}
budget=${AUTO_BUDGET:-top1=0.995}
auto_formats=${AUTO_FORMATS:-int8,fp16}
py=/usr/bin/python3
ev() { "$py" "$root/tools/ocr_eval.py" "$@"; }
if [ ! -f "$rec" ] || [ ! -f "$ocr/ocr_lines_x.npy" ]; then
  echo "run_ocr_quant: skipped: $rec or its data not found (set KILN_MODELS_DIR)"
  exit 0
fi
[ -x "$kiln" ] || { echo "run_ocr_quant: $kiln not built" >&2; exit 1; }
have_ort=1
command -v node >/dev/null && [ -f "$ort_dir/ortrun.js" ] || have_ort=0
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
echo "# run_ocr_quant $(date -u +%F): runs $runs x $rounds rounds, threads $threads_list, out $out"

ev split "$ocr/ocr_lines_x.npy" "$out/all" 0 200
ev split "$ocr/ocr_lines_x.npy" "$out/calib" 0 50
ev split "$ocr/ocr_lines_x.npy" "$out/auto_calib" 0 16
ev split "$ocr/ocr_lines_x.npy" "$out/eval" 50 200

run_out() { # model outdir data: Kiln's output of the model on data/x.npy, as outdir/y.npy
  mkdir -p "$2" && "$kiln" run "$1" --input x="$3/x.npy" --output "$2" --threads 2 >/dev/null &&
    mv "$2"/*.npy "$2/y.npy"
}
ort_out() { # model outdir data
  node "$ort_dir/ortrun.js" "$1" --input x="$3/x.npy" --outdir "$2" --threads 2 --opt all >/dev/null &&
    mv "$2"/*.npy "$2/y.npy"
}

kiln_det_p50() { "$kiln" bench "$1" --shape x=1,3,320,320 --threads "$2" --runs "$runs" --warmup 2 2>&1 |
  sed -n 's/.*p50 \([0-9.]*\).*/\1/p'; }
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "-")}'; }

if [ -z "${ONLY_DET:-}" ]; then
# ---- FP32 on all 200 lines: the decoder against the README's reference ------------------------
run_out "$rec" "$out/fp32_all" "$out/all" || { echo "run_ocr_quant: FP32 failed" >&2; exit 1; }
echo "kiln fp32, all 200 lines (README: 197/200, CER 0.0014): $(ev score "$ocr" "$out/fp32_all/y.npy" 0 200)"
rm -rf "$out/fp32_all"

# ---- the variants ------------------------------------------------------------------------------
names=(fp32) files=("$rec")
add() { # name file quantize-args...
  local n=$1 f=$2
  shift 2
  if "$kiln" quantize "$rec" "$@" -o "$f" > "$out/$n.qlog" 2>&1; then
    names+=("$n") files+=("$f")
  else
    echo "| $n | quantize failed: $(tail -1 "$out/$n.qlog") |" >> "$out/failed.md"
  fi
}
add fp16 "$out/rec_fp16.onnx" --to fp16
add bf16 "$out/rec_bf16.onnx" --to bf16
add int8 "$out/rec_int8.onnx" --to int8 --calib "$out/calib"
add "int8 percentile" "$out/rec_int8_pct.onnx" --to int8 --calib "$out/calib" --method percentile
add int8-dynamic "$out/rec_int8dyn.onnx" --to int8-dynamic
add int4 "$out/rec_int4.onnx" --to int4
if [ -n "${AUTO_FILE:-}" ]; then # a file an earlier run made (the search takes ~17 min here)
  names+=("auto $budget") files+=("$AUTO_FILE")
elif [ -z "${SKIP_AUTO:-}" ]; then
  add "auto $budget" "$out/rec_auto.onnx" --auto --budget "$budget" --calib "$out/auto_calib" \
    --formats "$auto_formats" --threads 2
  [ -f "$out/auto $budget.qlog" ] && sed -n '/^chosen/,$p' "$out/auto $budget.qlog"
fi

# ---- accuracy on the held-out lines 50-199 ------------------------------------------------------
run_out "$rec" "$out/ref" "$out/eval" || exit 1
declare -A acc
for i in "${!names[@]}"; do
  n=${names[$i]} f=${files[$i]}
  if ! run_out "$f" "$out/k" "$out/eval"; then acc[$n]="kiln run failed"; continue; fi
  s=$(ev score "$ocr" "$out/k/y.npy" 50 200)
  a=$(ev agree "$out/ref/y.npy" "$out/k/y.npy")
  v=$("$kiln" validate --threads 2 --reference "$rec" --candidate "$f" --data "$out/eval" --batch 50)
  cos=$(sed -n 's/^cosine: *//p' <<<"$v") mx=$(sed -n 's/^max abs error: *//p' <<<"$v")
  kl=$(sed -n 's/^kl divergence: *\([0-9.e+-]*\).*/\1/p' <<<"$v")
  acc[$n]="$(sed 's/ step-agreement/ |/; s/^exact //; s/ cer / | /' <<<"$s") | ${a#step-agreement } | $cos | $kl | $mx"
  echo "accuracy $n: ${acc[$n]}"
  if [ $have_ort = 1 ] && [ -z "${SKIP_ORT_ACC:-}" ] &&
     [[ $n == fp32 || $n == int8 || $n == int4 || $n == int8-dynamic ]]; then
    if ort_out "$f" "$out/o" "$out/eval"; then
      echo "ort $n: $(ev score "$ocr" "$out/o/y.npy" 50 200); vs kiln same file: $(ev agree "$out/k/y.npy" "$out/o/y.npy")"
    else
      echo "ort $n: failed to run"
    fi
    rm -rf "$out/o"
  fi
  rm -rf "$out/k"
done
rm -rf "$out/ref"

# ---- latency: one line, alternately ----------------------------------------------------------------
kp50() { "$kiln" bench "$1" --shape x=1,3,48,320 --threads "$2" --runs "$runs" --warmup 3 2>&1 |
  sed -n 's/.*p50 \([0-9.]*\).*/\1/p'; }
op50() { node "$ort_dir/ortbench.js" "$1" --input x=1,3,48,320 --threads "$2" --opt all --warmup 3 \
  --runs "$runs" --min-time 0 --max-time 60 2>&1 | sed -n 's/.* p50=\([0-9.]*\).*/\1/p' | head -1; }
declare -A lat olat
for t in $threads_list; do
  declare -A ks=() os=()
  for ((r = 0; r < rounds; r++)); do
    for i in "${!names[@]}"; do
      n=${names[$i]}
      ks[$n]+="$(kp50 "${files[$i]}" "$t") "
      if [ $have_ort = 1 ] && [[ $n == fp32 || $n == int8 || $n == int4 || $n == int8-dynamic ]]; then
        os[$n]+="$(op50 "${files[$i]}" "$t") "
      fi
    done
  done
  for n in "${names[@]}"; do
    lat[$n,$t]=$(med ${ks[$n]}) olat[$n,$t]=-
    [ -n "${os[$n]:-}" ] && olat[$n,$t]=$(med ${os[$n]})
  done
done

# ---- the table -----------------------------------------------------------------------------------
fp32_bytes=$(stat -c %s "$rec")
echo
echo "| variant | file bytes (x FP32) | exact lines 50-199 | CER | per-step agreement with FP32 ref argmax | agreement with Kiln FP32, prob KL | validate cosine | validate KL | validate max abs | kiln p50 ms 1 / 2 thr | ORT p50 ms 1 / 2 thr |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for i in "${!names[@]}"; do
  n=${names[$i]} b=$(stat -c %s "${files[$i]}")
  l="" o=""
  for t in $threads_list; do l+="${l:+ / }${lat[$n,$t]}"; o+="${o:+ / }${olat[$n,$t]}"; done
  printf '| %s | %s (%.2fx) | %s | %s | %s |\n' "$n" "$b" "$(awk -v a="$b" -v b="$fp32_bytes" 'BEGIN{print a/b}')" \
    "${acc[$n]}" "$l" "$o"
done
[ -f "$out/failed.md" ] && cat "$out/failed.md"
fi # ONLY_DET

# ---- detection (no labels): size, speed, validate against FP32 -----------------------------------
det=$ocr/ppocrv4_det.onnx
if [ -n "${SKIP_DET:-}" ] || [ ! -f "$det" ]; then exit 0; fi
ev det "$ocr/ocr_lines_x.npy" "$out/det_calib" 0 4  # lines 0-23
ev det "$ocr/ocr_lines_x.npy" "$out/det_eval" 50 8  # lines 50-97
dn=(fp32) df=("$det")
for q in fp16 bf16 int8; do
  c=() && [ $q = int8 ] && c=(--calib "$out/det_calib")
  if "$kiln" quantize "$det" --to $q "${c[@]}" -o "$out/det_$q.onnx" > "$out/det_$q.qlog" 2>&1; then
    dn+=("$q") df+=("$out/det_$q.onnx")
  else
    echo "det $q: quantize failed: $(tail -1 "$out/det_$q.qlog")"
  fi
done
declare -A dl
for t in $threads_list; do
  declare -A ds=()
  for ((r = 0; r < rounds; r++)); do
    for i in "${!dn[@]}"; do ds[${dn[$i]}]+="$(kiln_det_p50 "${df[$i]}" "$t") "; done
  done
  for n in "${dn[@]}"; do dl[$n,$t]=$(med ${ds[$n]}); done
done
det_bytes=$(stat -c %s "$det")
echo
echo "| det variant | file bytes (x FP32) | validate cosine | max abs | snr dB | kiln p50 ms 1 / 2 thr (1x3x320x320) |"
echo "|---|---|---|---|---|---|"
for i in "${!dn[@]}"; do
  n=${dn[$i]} b=$(stat -c %s "${df[$i]}")
  v=$("$kiln" validate --threads 2 --reference "$det" --candidate "${df[$i]}" --data "$out/det_eval" --batch 4)
  l=""
  for t in $threads_list; do l+="${l:+ / }${dl[$n,$t]}"; done
  printf '| %s | %s (%.2fx) | %s | %s | %s | %s |\n' "$n" "$b" "$(awk -v a="$b" -v b="$det_bytes" 'BEGIN{print a/b}')" \
    "$(sed -n 's/^cosine: *//p' <<<"$v")" "$(sed -n 's/^max abs error: *//p' <<<"$v")" \
    "$(sed -n 's/^snr: *\([0-9.-]*\).*/\1/p' <<<"$v")" "$l"
done
exit 0
