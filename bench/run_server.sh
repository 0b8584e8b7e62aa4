#!/usr/bin/env bash
# Issue 6's goal: `kiln serve` driven by wrk over loopback. Requests/s, p50 and p99 for the digits
# model (JSON tensors, one row) at each concurrency in CONCURRENCY; then resnet50 (binary tensor
# extension in and out: a 224x224x3 image as JSON would measure the JSON parser, not the server)
# through the server against the in-process throughput of the same runtime (bench_runtime
# throughput: same workers x threads, as many closed-loop submitters as wrk has connections),
# alternating ROUNDS times, and the ratio server / in-process (target >= 0.95). Not ctest.
#
# usage: bench/run_server.sh [BUILD_DIR]       (default build)
# env:   SECONDS_EACH (10 per digits cell)  RESNET_SECONDS (20 per resnet50 cell)  CONCURRENCY ("1 8 64")  WORKERS (2)
#        THREADS (1: intra-op threads per worker)  RESNET_CONC (4: connections / submitters)
#        ROUNDS (3: resnet50 server / in-process pairs)  MODELS_DIR (~/.cache/kiln-models)
#        DIGITS_CONFIG ('{}': the digits model's config.json, e.g. to turn on dynamic batching)
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
secs=${SECONDS_EACH:-10}
rsecs=${RESNET_SECONDS:-20}
concs=${CONCURRENCY:-1 8 64}
workers=${WORKERS:-2}
threads=${THREADS:-1}
rconc=${RESNET_CONC:-4}
rounds=${ROUNDS:-3}
models_dir=${MODELS_DIR:-$HOME/.cache/kiln-models}
py=/usr/bin/python3
[ -x "$py" ] || py=python3
kiln=$build/kiln
[ -x "$kiln" ] || { echo "bench: $kiln is not built"; exit 1; }

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench: installing wrk (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null 2>&1
  fi
  command -v wrk >/dev/null || {
    echo "bench: skipped: wrk is not installed and cannot be installed here (apt-get install wrk as root)"
    exit 0
  }
fi

tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

mkdir -p "$tmp/repo/digits/1"
cp "$root/models/digits/digits_cnn.onnx" "$tmp/repo/digits/1/model.onnx"
echo "${DIGITS_CONFIG:-{\}}" >"$tmp/repo/digits/config.json"
resnet=$models_dir/resnet50_opset17.onnx
if [ -f "$resnet" ]; then
  mkdir -p "$tmp/repo/resnet50/1"
  ln -s "$resnet" "$tmp/repo/resnet50/1/model.onnx"
else
  echo "resnet50: skipped: $resnet is missing (make it with ../shared/tools/models)"
  resnet=
fi

"$kiln" serve --model-repository "$tmp/repo" --port 0 --workers "$workers" --threads "$threads" \
  >"$tmp/out" 2>"$tmp/err" &
pid=$!
port=
for _ in $(seq 1 600); do # resnet50 compiles at start: allow a minute
  port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$tmp/out")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$port" ] || { echo "bench: the server did not start"; cat "$tmp/err"; exit 1; }
base=http://127.0.0.1:$port

# Request bodies from the models' own metadata: symbolic dims are 1, floats uniform in [0, 1).
body() { # MODEL json|binary OUTFILE -> prints the header length for binary
  curl -s "$base/v2/models/$1" >"$tmp/meta.json"
  "$py" - "$tmp/meta.json" "$2" "$3" <<'PY'
import json, random, struct, sys
meta = json.load(open(sys.argv[1]))
mode, out = sys.argv[2], sys.argv[3]
random.seed(42)
inputs, raw = [], b''
for i in meta['inputs']:
    assert i['datatype'] == 'FP32', i
    shape = [d if d > 0 else 1 for d in i['shape']]
    n = 1
    for d in shape: n *= d
    vals = [random.random() for _ in range(n)]
    t = {'name': i['name'], 'datatype': 'FP32', 'shape': shape}
    if mode == 'json':
        t['data'] = vals
    else:
        b = struct.pack('<%df' % n, *vals)
        t['parameters'] = {'binary_data_size': len(b)}
        raw += b
    inputs.append(t)
req = {'inputs': inputs}
if mode == 'binary':
    req['parameters'] = {'binary_data_output': True}
hdr = json.dumps(req).encode()
open(out, 'wb').write(hdr + raw)
if mode == 'binary': print(len(hdr))
PY
}

check() { # MODEL BODY [HLEN]: one request must answer 200 with outputs
  local h=()
  [ -n "${3:-}" ] && h=(-H "Inference-Header-Content-Length: $3")
  local code
  code=$(curl -s -m 120 -o "$tmp/resp" -w '%{http_code}' "${h[@]}" --data-binary @"$2" "$base/v2/models/$1/infer")
  [ "$code" = 200 ] && grep -q '"outputs"' "$tmp/resp" || {
    echo "bench: $1 answered $code: $(head -c 300 "$tmp/resp")"; exit 1; }
}

wrk_run() { # MODEL CONNECTIONS BODY [HLEN] -> the KILN line; $dur seconds
  local t=$(($2 < 2 ? $2 : 2))
  KILN_BODY=$3 KILN_HLEN=${4:-} wrk -t "$t" -c "$2" -d "${dur}s" --timeout 30s --latency \
    -s "$root/bench/wrk_infer.lua" "$base/v2/models/$1/infer" | sed -n 's/^KILN //p'
}

cpu=$("$kiln" info "$root/models/digits/digits_cnn.onnx" 2>/dev/null | sed -n 's/^dispatch (cpu: \(.*\)):/\1/p')
echo "# $(date -u +%F) $(uname -m), $(nproc) cores, ${cpu:-?}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# kiln serve --workers $workers --threads $threads; wrk ${secs}s per digits cell, ${rsecs}s per resnet50 cell"

dur=$secs
bin=$build/bench_runtime
cc -std=c11 -D_POSIX_C_SOURCE=200809L -O2 -I"$root/include" "$root/bench/bench_runtime.c" \
   "$build/libkiln.a" -lprotobuf-c -lm -lpthread -o "$bin" || { echo "bench: bench_runtime did not build"; exit 1; }
inproc() { # MODEL_FILE SECONDS SUBMITTERS -> req/s of the same runtime settings, in process
  "$bin" throughput "$1" "$2" "$3" 0 0 "$workers" "$threads" | sed -n 's/^ *\([0-9.]*\) req\/s.*/\1/p'
}

body digits json "$tmp/digits.json" >/dev/null
check digits "$tmp/digits.json"
wrk_run digits 8 "$tmp/digits.json" >/dev/null # warm every context
echo "digits (JSON, 1 row); in-process: the same runtime with as many closed-loop submitters"
for c in $concs; do
  ip=$(inproc "$root/models/digits/digits_cnn.onnx" "$secs" "$c")
  echo "  c=$c  $(wrk_run digits "$c" "$tmp/digits.json")  in-process ${ip} req/s"
done

if [ -n "$resnet" ]; then
  hlen=$(body resnet50 binary "$tmp/resnet.bin")
  check resnet50 "$tmp/resnet.bin" "$hlen"
  dur=3
  wrk_run resnet50 "$rconc" "$tmp/resnet.bin" "$hlen" >/dev/null # warm up
  dur=$rsecs
  echo "resnet50 (binary tensors), $rconc connections vs $rconc in-process submitters, alternating"
  ratios=
  for r in $(seq 1 "$rounds"); do
    ipr=$(inproc "$resnet" "$rsecs" "$rconc")
    srv=$(wrk_run resnet50 "$rconc" "$tmp/resnet.bin" "$hlen")
    srps=$(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' <<<"$srv")
    ratio=$(awk -v a="$srps" -v b="$ipr" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
    ratios="$ratios $ratio"
    echo "  round $r  in-process ${ipr} req/s  server: $srv  ratio $ratio"
  done
  echo "  ratios:$ratios  median $(tr ' ' '\n' <<<"$ratios" | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
fi
echo "# load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
