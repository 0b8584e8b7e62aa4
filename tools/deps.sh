#!/usr/bin/env bash
# Installs the Debian packages Kiln needs to build and test, when any is missing.
# Usage: tools/deps.sh [--test]   (--test adds what the test suite needs)
set -euo pipefail
pkgs=(cmake make gcc protobuf-c-compiler libprotobuf-c-dev libmicrohttpd-dev libjansson-dev)
if [ "${1:-}" = "--test" ]; then
  pkgs+=(libcmocka-dev clang libclang-rt-14-dev prometheus curl)
fi
missing=()
arch=$(dpkg --print-architecture)
for p in "${pkgs[@]}"; do
  # With the AArch64 cross stage's arm64 libraries installed too, a bare name is ambiguous to
  # dpkg (two instances), so ask for this machine's architecture as well.
  dpkg -s "$p" >/dev/null 2>&1 || dpkg -s "$p:$arch" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
