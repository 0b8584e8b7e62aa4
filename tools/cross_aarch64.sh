#!/usr/bin/env bash
# Cross-builds Kiln for AArch64 (Debian's gcc-aarch64-linux-gnu, multiarch arm64 -dev packages,
# warnings as errors) and runs the test suite under qemu's user-mode emulator, where the cpu
# backend selects its NEON kernels. Installs what is missing first (needs root or sudo).
# Usage: tools/cross_aarch64.sh [ctest -R regex]   (default: every test ctest can run under qemu)
# Speed under qemu means nothing; this checks that the code compiles and computes right on Arm.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"

host=(cmake make protobuf-c-compiler gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
arm=(libc6-dev libprotobuf-c-dev libmicrohttpd-dev libjansson-dev libcmocka-dev)
missing=()
for p in "${host[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
for p in "${arm[@]}"; do dpkg -s "$p:arm64" >/dev/null 2>&1 || missing+=("$p:arm64"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  dpkg --print-foreign-architectures | grep -qx arm64 || $sudo dpkg --add-architecture arm64
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== aarch64 cross build, -Werror"
cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
  -DCMAKE_BUILD_TYPE=Release -DKILN_WERROR=ON >/dev/null
cmake --build build-aarch64 -j"$(nproc)" >/dev/null

echo "== aarch64 tests under qemu"
# The shell-script tests run the kiln binary directly, not through the emulator: left out.
(cd build-aarch64 && ctest --output-on-failure --timeout 1800 -j"$(nproc)" \
  -E '^(cli_errors|server|cli_quant_eval)$' ${1:+-R "$1"})
