#!/usr/bin/env bash
# The async runtime's benchmark goals (issue 5; docs/RUNTIME.md): overhead of submit + completion
# over a direct session run on digits_cnn (batch 1), throughput with and without dynamic batching
# under 16 concurrent submitters, and CRITICAL latency while LOW traffic saturates the workers.
# Builds bench_runtime.c against BUILD_DIR/libkiln.a (not part of the CMake build). Not ctest.
#
# usage: bench/run_runtime.sh [BUILD_DIR]      (default build)
# env:   MODELS_DIR (~/.cache/kiln-models)  RUNS (5000: overhead runs per variant)
#        SECONDS_EACH (3: per throughput cell and per priority run)  THREADS (16)
#        TP_MODELS ("resnet50 bert_tiny digits_cnn")  PRIO_MODELS ("digits_cnn squeezenet1_1")
#        TP_MODELS_DIR (MODELS_DIR: where the throughput models are; ~/.cache/kiln-models/batch
#          holds dynamic-batch resnet50/bert_tiny from tools/make_batch_models.py)
#        TP_BATCHES ("16": max_batch_size values run after batching off)  TP_DELAY_US (2000)
#        WORKERS (0: the default thread budget)  PARTS ("overhead throughput priority")
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
models_dir=${MODELS_DIR:-$HOME/.cache/kiln-models}
runs=${RUNS:-5000}
secs=${SECONDS_EACH:-3}
threads=${THREADS:-16}
tp_models=${TP_MODELS:-resnet50 bert_tiny digits_cnn}
prio_models=${PRIO_MODELS:-digits_cnn squeezenet1_1}
tp_dir=${TP_MODELS_DIR:-$models_dir}
tp_batches=${TP_BATCHES:-16}
tp_delay=${TP_DELAY_US:-2000}
workers=${WORKERS:-0}
parts=" ${PARTS:-overhead throughput priority} "

bin=$build/bench_runtime
cc -std=c11 -D_POSIX_C_SOURCE=200809L -O2 -I"$root/include" "$root/bench/bench_runtime.c" \
   "$build/libkiln.a" -lprotobuf-c -lm -lpthread -o "$bin" || { echo "bench: bench_runtime did not build"; exit 1; }

model() { # NAME [DIR]
  local d=${2:-$models_dir}
  local f=$d/${1}_opset17.onnx
  [ -f "$f" ] || f=$d/${1}_opset13.onnx
  echo "$f"
}

echo "# $(date -u +%F) $(uname -m), $(nproc) cores, $(kiln_cpu=$("$build/kiln" info "$(model digits_cnn)" 2>/dev/null | sed -n 's/^dispatch (cpu: \(.*\)):/\1/p'); echo "${kiln_cpu:-?}")"
[[ $parts == *" overhead "* ]] && "$bin" overhead "$(model digits_cnn)" "$runs"
[[ $parts == *" throughput "* ]] && for m in $tp_models; do
  f=$(model "$m" "$tp_dir")
  [ -f "$f" ] || { echo "throughput $m: missing ($tp_dir)"; continue; }
  "$bin" throughput "$f" "$secs" "$threads" 0 0 "$workers"
  for b in $tp_batches; do "$bin" throughput "$f" "$secs" "$threads" "$b" "$tp_delay" "$workers"; done
done
[[ $parts == *" priority "* ]] && for m in $prio_models; do
  f=$(model "$m")
  [ -f "$f" ] || { echo "priority $m: missing ($models_dir)"; continue; }
  "$bin" priority "$f" "$secs"
done
