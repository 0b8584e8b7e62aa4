#!/usr/bin/env bash
# Kiln against ONNX Runtime, side by side: for each benchmark model at 1 and 2 threads, runs
# `kiln bench` and ORT's ortbench.js alternately (ROUNDS times each, interleaved, so machine noise
# hits both), prints min, p50 and p99 of each and the ratios Kiln/ORT at p50 and at min, then the
# GEMM efficiency lines (bench_gemm.c), with the load average before and after (the machine may be
# shared: say so with the numbers). Two-thread rows end with the core-to-core round trip measured
# before each round (bench/core_rtt.c; ~90 ns when the two CPUs are close, ~400 when the host has
# put them far apart, which slows every two-thread figure: bench/RESULTS.md). Not part of ctest.
#
# With LOCKSTEP=1 each cell is instead one run of bench/lockstep.js: the two engines alternate
# 5 runs at a time in one timeline (ROUNDS x 10 iterations), which a host whose speed changes in
# phases needs (bench/RESULTS.md, sixteenth session: whole processes one after the other compare
# phases as much as engines); the columns are the same, over all runs of each engine.
#
# usage: bench/run.sh [BUILD_DIR]      (default build; needs BUILD_DIR/kiln and libkiln.a)
# env:   MODELS_DIR (~/.cache/kiln-models)  ORT_DIR (~/.cache/kiln-ort)  RUNS (30)  WARMUP (5)
#        ROUNDS (1)  THREADS ("1 2")  MODELS (the list below)  GEMM_SECONDS (0.3)
#        GEMM (1; 0 skips the GEMM lines, for quick model-only A/B runs of two builds)
#        LOCKSTEP (0; 1: both engines in one timeline, above)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
models_dir=${MODELS_DIR:-$HOME/.cache/kiln-models}
ort_dir=${ORT_DIR:-$HOME/.cache/kiln-ort}
runs=${RUNS:-30}
warmup=${WARMUP:-5}
rounds=${ROUNDS:-1}
threads_list=${THREADS:-1 2}
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

# Transformer inputs: int64 ids in {0,1}, what `kiln bench` feeds integers by default.
ort_inputs() {
  case $1 in
    bert_tiny|minilm_l12)
      for n in input_ids attention_mask token_type_ids; do printf -- '--input %s=1,128:randint:0:2 ' $n; done ;;
    digits_cnn) printf -- '--input input=1,1,8,8' ;; # batch N: kiln bench makes symbolic dims 1
  esac
}

pct() { sed -n "s/.*$1 \([0-9.]*\).*/\1/p"; }

rtt_bin=$build/core_rtt
cc -std=c11 -D_GNU_SOURCE -O2 -pthread "$root/bench/core_rtt.c" -o "$rtt_bin" 2>/dev/null || rtt_bin=
rtt() { [ -n "$rtt_bin" ] && "$rtt_bin" 0 1 50000 2>/dev/null | awk '{print $6}'; }

lockstep=${LOCKSTEP:-0}
if [ "$lockstep" = 1 ] && ! cc -std=c11 -D_POSIX_C_SOURCE=200809L -O2 -I"$root/include" \
     "$root/bench/lockstep.c" "$build/libkiln.a" -lprotobuf-c -lm -lpthread -o "$build/lockstep"; then
  echo "bench: bench/lockstep.c did not build; alternating processes instead"; lockstep=0
fi
# One cell in lockstep: sets kmin k50 k99 omin o50 o99 from lockstep.js's "all" line.
lockstep_cell() {
  local out
  out=$(node "$root/bench/lockstep.js" "$1" --threads "$2" --iters $((rounds * 10)) --runs 5 \
          --lockstep "$build/lockstep" --ort-dir "$ort_dir" 2>&1 | grep '^all')
  k50=$(echo "$out" | sed -n 's/.*kiln p50 \([0-9.]*\).*/\1/p')
  k99=$(echo "$out" | sed -n 's/.*kiln p50 [0-9.]* p99 \([0-9.]*\).*/\1/p')
  kmn=$(echo "$out" | sed -n 's/.*kiln p50 [0-9.]* p99 [0-9.]* min \([0-9.]*\).*/\1/p')
  o50=$(echo "$out" | sed -n 's/.*ort p50 \([0-9.]*\).*/\1/p')
  o99=$(echo "$out" | sed -n 's/.*ort p50 [0-9.]* p99 \([0-9.]*\).*/\1/p')
  omn=$(echo "$out" | sed -n 's/.*ort p50 [0-9.]* p99 [0-9.]* min \([0-9.]*\).*/\1/p')
  ko=$out oo=$out
}

echo "bench: $(date -u +%FT%TZ) load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
[ "$lockstep" = 1 ] && echo "bench: lockstep (bench/lockstep.js): both engines in one timeline"
printf '%-14s %3s  %10s %10s %10s  %10s %10s %10s  %9s %9s  %s\n' model thr kiln_min kiln_p50 kiln_p99 \
  ort_min ort_p50 ort_p99 p50_ratio min_ratio rtt_ns
for m in $models; do
  f=$models_dir/${m}_opset17.onnx
  [ -f "$f" ] || f=$models_dir/${m}_opset13.onnx
  if [ ! -f "$f" ]; then printf '%-14s missing (%s)\n' "$m" "$models_dir"; continue; fi
  for t in $threads_list; do
    kmin=() kp50=() kp99=() omin=() op50=() op99=() rtts=""
    if [ "$lockstep" = 1 ]; then
      [ "$t" -ge 2 ] && rtts=$(rtt)
      lockstep_cell "$f" "$t"
      kmin=("$kmn") kp50=("$k50") kp99=("$k99") omin=("$omn") op50=("$o50") op99=("$o99")
    fi
    for ((r = 0; r < rounds && lockstep != 1; r++)); do
      [ "$t" -ge 2 ] && rtts+="${rtts:+,}$(rtt)"
      ko=$("$kiln" bench "$f" --threads "$t" --runs "$runs" --warmup "$warmup" 2>&1)
      kmin+=("$(echo "$ko" | sed -n 's/.*min \([0-9.]*\).*/\1/p')")
      kp50+=("$(echo "$ko" | sed -n 's/.*p50 \([0-9.]*\).*/\1/p')")
      kp99+=("$(echo "$ko" | sed -n 's/.*p99 \([0-9.]*\).*/\1/p')")
      # shellcheck disable=SC2046
      oo=$(node "$ort_dir/ortbench.js" "$f" --threads "$t" --opt all --warmup "$warmup" \
             --runs "$runs" --min-time 0 --max-time 20 $(ort_inputs "$m") 2>&1)
      omin+=("$(echo "$oo" | sed -n 's/.* min=\([0-9.]*\).*/\1/p' | head -1)")
      op50+=("$(echo "$oo" | sed -n 's/.* p50=\([0-9.]*\).*/\1/p' | head -1)")
      op99+=("$(echo "$oo" | sed -n 's/.* p99=\([0-9.]*\).*/\1/p' | head -1)")
    done
    # The median over rounds of p50 and p99, the minimum over rounds of min (the figure least
    # disturbed by other load on a shared machine).
    med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "")}'; }
    low() { printf '%s\n' "$@" | sort -g | head -1; }
    k50=$(med "${kp50[@]}") k99=$(med "${kp99[@]}") o50=$(med "${op50[@]}") o99=$(med "${op99[@]}")
    kmn=$(low "${kmin[@]}") omn=$(low "${omin[@]}")
    if [ -z "$k50" ] || [ -z "$o50" ]; then
      printf '%-14s %3s  failed: kiln [%s] ort [%s]\n' "$m" "$t" "$(echo "$ko" | tail -1)" "$(echo "$oo" | tail -1)"
      continue
    fi
    printf '%-14s %3s  %10s %10s %10s  %10s %10s %10s  %9s %9s  %s\n' "$m" "$t" "$kmn" "$k50" \
      "$k99" "$omn" "$o50" "$o99" "$(awk -v a="$k50" -v b="$o50" 'BEGIN {printf "%.2f", a / b}')" \
      "$(awk -v a="$kmn" -v b="$omn" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}')" "${rtts:--}"
  done
done

# GEMM efficiency: built here against the library (not part of the CMake build).
gemm_bin=$build/bench_gemm
if [ "${GEMM:-1}" = 0 ]; then
  echo "bench: GEMM lines skipped (GEMM=0)"
elif cc -std=c11 -D_POSIX_C_SOURCE=200809L -O2 ${GEMM_CFLAGS:-} -I"$root/include" -I"$root/src" \
     "$root/bench/bench_gemm.c" "$build/libkiln.a" -lprotobuf-c -lm -lpthread -o "$gemm_bin"; then
  for t in $threads_list; do "$gemm_bin" "$t" "${GEMM_SECONDS:-0.3}"; done
else
  echo "bench: bench_gemm did not build"
fi
echo "bench: load average after: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
