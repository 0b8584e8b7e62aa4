#!/usr/bin/env bash
# Bad input to the kiln command: each case must exit non-zero (not by a signal) and say why.
# usage: cli_errors.sh KILN REPO_DIR
set -u
kiln=$1
repo=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
model=$repo/models/digits/digits_cnn.onnx
fails=0
passes=0

# expect "what" EXPECTED_MESSAGE_REGEX -- kiln args...
expect() {
  local what=$1 want=$2
  shift 3
  local out rc
  out=$("$kiln" "$@" 2>&1)
  rc=$?
  if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ] || ! grep -Eq "$want" <<<"$out"; then
    echo "FAIL $what (exit $rc): $out"
    fails=$((fails + 1))
  else
    echo "ok   $what: $(head -n 1 <<<"$out")"
    passes=$((passes + 1))
  fi
}

head -c 3000 "$model" > "$tmp/truncated.onnx"
printf 'this is not a model' > "$tmp/garbage.onnx"
: > "$tmp/empty.onnx"
printf '\x93NUMPY\x01\x00\x10\x00{bad header}    \n' > "$tmp/bad.npy"
data=$repo/tests/data/npy

expect "missing model file" "cannot open" -- run "$tmp/none.onnx"
expect "truncated model" "malformed model" -- run "$tmp/truncated.onnx"
expect "garbage model" "malformed model" -- info "$tmp/garbage.onnx"
expect "empty model" "malformed model|no graph" -- info "$tmp/empty.onnx"
expect "unknown input name" "no input named 'nope'" -- run "$model" --input "nope=$repo/models/digits/test_x.npy"
expect "wrong dtype" "int32.*expects float32" -- run "$model" --input "input=$data/int32_1x1x8x8.npy"
expect "wrong shape" "dimension 2 is 4, the model expects 8" -- run "$model" --shape input=1,1,4,4
expect "wrong rank" "rank 2, the model expects 4" -- run "$model" --shape input=8,8
expect "unreadable npy header" "npy" -- run "$model" --input "input=$tmp/bad.npy"
expect "npy shorter than its shape" "data|size|bytes" -- run "$model" --input "input=$data/float32_truncated.npy"
expect "fortran-order npy" "ortran" -- run "$model" --input "input=$data/float32_fortran.npy"
expect "missing npy" "cannot open|No such" -- run "$model" --input "input=$tmp/none.npy"
expect "bad --shape" "shape" -- run "$model" --shape input=1,x
expect "unknown command" "unknown command" -- frobnicate
expect "conformance on a missing folder" "no such folder" -- conformance "$tmp/none"
expect "--profile-top 0" "profile-top wants a count of nodes .* not '0'" -- bench "$model" --runs 1 --profile-top 0
expect "--profile-top not a number" "not 'x'" -- run "$model" --profile-top x
expect "--profile-json without a file" "profile-json wants a value" -- bench "$model" --profile-json
expect "--profile-json into a missing folder" "cannot open '$tmp/none/p.json'" -- run "$model" --profile-json "$tmp/none/p.json"
q="quantize $model -o $tmp/q.onnx"
expect "quantize: int8 without --calib" "needs calibration data: --calib DIR" -- $q --to int8
expect "quantize: unknown method" "unknown --method 'kl'" -- $q --to int8 --calib "$tmp" --method kl
expect "quantize: bad block" "block '33': a power of two" -- $q --to int4 --block 33
expect "quantize: bad scale type" "scale-type 'fp8': fp16 or fp32" -- $q --to int4 --scale-type fp8
expect "quantize: bad accuracy level" "accuracy-level '7': 0 to 4" -- $q --to int4 --accuracy-level 7
expect "quantize: bad percentile" "percentile '101'" -- $q --to int8 --calib "$tmp" --percentile 101
expect "quantize: --node without =" "node 'f1': NAME=FORMAT" -- $q --to int8-dynamic --node f1
expect "quantize: --node bad format" "unknown quantization format 'int3'" -- $q --to fp16 --node /f1/Gemm=int3
expect "quantize: --node typo" "no node named '/f9/Gemm'" -- $q --to fp16 --keep-float /f9/Gemm
expect "quantize: --calib for a format without calibration" "for static int8 only" -- $q --to int4 --calib "$tmp"
expect "quantize: --per-row for a format other than int8-dynamic" "per-row is for int8-dynamic only" -- $q --to int8 --calib "$tmp" --per-row
expect "quantize: calibration folder without input.npy" "input.npy" -- $q --to int8 --calib "$tmp"
expect "quantize: --calib-samples 0" "calib-samples '0'" -- $q --to int8 --calib "$tmp" --calib-samples 0

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
