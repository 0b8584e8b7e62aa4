#!/bin/bash
# Static int8, old build vs this one, each on the file its own quantizer writes (a quantizer change
# and a runtime change measured together): per model, both `kiln quantize --to int8` on the same
# synthetic calibration (tools/synth_calib.py), then N short alternations of `kiln bench --runs 3
# --warmup 1` (old, new, old, new, ...). Prints the min over all alternations and the median of the
# per-alternation mins, ms, and the new/old ratio of the mins. With IR=1 it also counts the
# instructions per inference of each (valgrind cachegrind: Ir of --runs 2 minus --runs 1, warmup 0),
# which the machine's load cannot move. Not part of ctest.
# usage: bench/ab_int8.sh OLD_KILN [BUILD_DIR]
# env:   MODELS ("resnet18 resnet50 mobilenet_v2 bert_tiny")  N (12)  THREADS (1)  IR (0)
#        MODELS_DIR (~/.cache/kiln-models)  OUT_DIR (temporary)
set -eu
old=$1
new=${2:-build}/kiln
md=${MODELS_DIR:-$HOME/.cache/kiln-models}
out=${OUT_DIR:-$(mktemp -d)}
here=$(cd "$(dirname "$0")/.." && pwd)
t=${THREADS:-1}
m1() { "$1" bench "$2" --threads "$t" --runs 3 --warmup 1 2>&1 | sed -n "s/.* min \([0-9.]*\).*/\1/p"; }
st() { sort -g | awk '{a[NR]=$1} END {printf "%s %s", a[1], a[int((NR+1)/2)]}'; }
ir() {
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "$1" bench "$2" \
    --threads 1 --runs "$3" --warmup 0 2>&1 | sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' | tr -d ,
}
printf '%-13s %3s %10s %10s %10s %10s %8s\n' model thr "old min" "old med" "new min" "new med" new/old
for m in ${MODELS:-resnet18 resnet50 mobilenet_v2 bert_tiny}; do
  fp32=$md/${m}_opset13.onnx
  /usr/bin/python3 "$here/tools/synth_calib.py" "$fp32" "$out/calib_$m" 4
  "$old" quantize "$fp32" --to int8 --calib "$out/calib_$m" -o "$out/${m}_old.onnx" >/dev/null
  "$new" quantize "$fp32" --to int8 --calib "$out/calib_$m" -o "$out/${m}_new.onnx" >/dev/null
  a="" b=""
  for _ in $(seq "${N:-12}"); do
    a+="$(m1 "$old" "$out/${m}_old.onnx")"$'\n'
    b+="$(m1 "$new" "$out/${m}_new.onnx")"$'\n'
  done
  read -r amin amed <<<"$(printf '%s' "$a" | st)"
  read -r bmin bmed <<<"$(printf '%s' "$b" | st)"
  printf '%-13s %3d %10s %10s %10s %10s %8s\n' "$m" "$t" "$amin" "$amed" "$bmin" "$bmed" \
    "$(awk -v a="$amin" -v b="$bmin" 'BEGIN {printf "%.2f", b / a}')"
  if [ "${IR:-0}" = 1 ]; then
    for who in old new; do
      bin=$old; [ $who = new ] && bin=$new
      x=$(ir "$bin" "$out/${m}_$who.onnx" 1) y=$(ir "$bin" "$out/${m}_$who.onnx" 2)
      printf '%-13s     %s: %d M instructions per inference\n' "$m" $who $(((y - x) / 1000000))
    done
  fi
done
