#!/usr/bin/env bash
# Installs what is missing, then builds and runs every test: a Release build with warnings as
# errors, the same tests under AddressSanitizer + UndefinedBehaviorSanitizer, the threaded tests
# under ThreadSanitizer, and the model-loader fuzzer for a bounded time (KILN_FUZZ_SECONDS,
# default 60).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh --test
jobs=$(nproc)

echo "== release build, -Werror"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKILN_WERROR=ON >/dev/null
cmake --build build -j"$jobs" >/dev/null
(cd build && ctest --output-on-failure --timeout 900 -j"$jobs")

echo "== clang build, -Werror (the code must build warning-free with both compilers)"
CC=clang cmake -S . -B build-clang -DCMAKE_BUILD_TYPE=Release -DKILN_WERROR=ON >/dev/null
cmake --build build-clang -j"$jobs" >/dev/null

echo "== address + undefined behaviour sanitizers"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKILN_WERROR=ON -DKILN_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs" >/dev/null
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure --timeout 900 -j"$jobs")

echo "== thread sanitizer: the tests that run threads"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_WERROR=ON -DKILN_TSAN=ON >/dev/null
cmake --build build-tsan -j"$jobs" >/dev/null
(cd build-tsan && TSAN_OPTIONS=halt_on_error=1 \
  ctest --output-on-failure --timeout 900 -j"$jobs" -R '^(session|profile|runtime|cpu_vec|cpu_gemm)$')

echo "== fuzzing the model loader and the server's request decoder, ${KILN_FUZZ_SECONDS:-60} s each"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_FUZZ=ON >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_model >/dev/null
mkdir -p build-fuzz/corpus
build-fuzz/fuzz/fuzz_model -max_total_time="${KILN_FUZZ_SECONDS:-60}" -max_len=65536 \
  -rss_limit_mb=2048 build-fuzz/corpus fuzz/corpus 2>&1 | tail -n 3
cmake --build build-fuzz -j"$jobs" --target fuzz_request >/dev/null
mkdir -p build-fuzz/corpus_request
build-fuzz/fuzz/fuzz_request -max_total_time="${KILN_FUZZ_SECONDS:-60}" -max_len=65536 \
  -rss_limit_mb=2048 build-fuzz/corpus_request 2>&1 | tail -n 3
echo "fuzz: no crash, leak or sanitizer report"

echo "== aarch64: cross build (-Werror) and the kernel suites under qemu (NEON SGEMM, portable rest)"
# The whole suite under qemu takes ~20 min here; the kernel suites are what differs per ISA.
tools/cross_aarch64.sh '^(cpu_gemm|cpu_vec|cpu_fused|cpu_quant.*|cpu_nbits|session|passes)$'
