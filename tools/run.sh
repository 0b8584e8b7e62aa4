#!/usr/bin/env bash
# Kiln's main job on the model that ships with the repository: installs what is missing, builds,
# and classifies the 450 held-out 8x8 digits with the bundled CNN, printing the first predictions
# and the accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
build/kiln run models/digits/digits_cnn.onnx \
  --input input=models/digits/test_x.npy --labels models/digits/test_y.npy
