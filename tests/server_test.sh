#!/usr/bin/env bash
# Black-box test of `kiln serve`: starts it on a free loopback port with tests/repo and drives it
# with curl. The oracle for inference is `kiln run` on the same inputs (numbers within 1e-4,
# identical top-1), plus the labels shipped with the digits model.
# usage: server_test.sh KILN REPO_DIR
set -u
kiln=$1
src=$2
tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }

"$kiln" serve --model-repository "$src/tests/repo" --host 127.0.0.1 --port 0 --workers 2 --threads 1 \
  >"$tmp/out" 2>"$tmp/err" &
pid=$!
port=
for _ in $(seq 1 100); do
  port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$tmp/out")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  echo "FAIL server did not start"; cat "$tmp/err"; exit 1
fi
base=http://127.0.0.1:$port
C=(curl -s -m 30 -o "$tmp/body" -w '%{http_code}')

# expect CODE BODY_REGEX what -- curl args (the URL path last, relative to $base)
expect() {
  local want=$1 re=$2 what=$3
  shift 4
  local args=("$@")
  local last=${args[-1]}
  unset 'args[-1]'
  local code
  code=$("${C[@]}" "${args[@]}" "$base$last")
  if [ "$code" = "$want" ] && grep -Eq -- "$re" "$tmp/body"; then ok "$what ($code)"
  else bad "$what: got $code $(head -c 300 "$tmp/body")"; fi
}

expect 200 '"live":true' "health/live" -- /v2/health/live
expect 200 '"ready":true' "health/ready" -- /v2/health/ready
expect 200 '"binary_tensor_data"' "server metadata" -- /v2
expect 200 '"inputs":\[\{"name":"input","datatype":"FP32","shape":\[-1,1,8,8\]\}\]' "model metadata" -- /v2/models/digits
expect 200 '"outputs":\[\{"name":"logits","datatype":"FP32","shape":\[-1,10\]\}\]' "version metadata" -- /v2/models/digits/versions/1
expect 200 '"ready":true' "model ready" -- /v2/models/digits/ready
expect 404 '"error":' "unknown model" -- /v2/models/nope
expect 404 '"error":' "unknown model infer" -- -d '{}' /v2/models/nope/infer
expect 404 '"error":' "unknown version" -- /v2/models/digits/versions/7
expect 404 '"error":' "unknown path" -- /v3/x

# The oracle: kiln run on the held-out set.
"$kiln" run "$src/models/digits/digits_cnn.onnx" --input "input=$src/models/digits/test_x.npy" \
  --output "$tmp" >/dev/null || bad "kiln run"

python3 - "$src/models/digits/test_x.npy" "$tmp" <<'PY' || bad "request generation"
import json, struct, sys
def npy(path):
    b = open(path, 'rb').read()
    hl = struct.unpack('<H', b[8:10])[0]
    h = eval(b[10:10 + hl].decode('latin1'))
    return h['shape'], b[10 + hl:]
shape, raw = npy(sys.argv[1])
vals = list(struct.unpack('<%df' % (len(raw) // 4), raw))
out = sys.argv[2]
n = shape[0]
# nested JSON, every row, id echoed, requested output
rows = [[[vals[(i * 64) + r * 8:(i * 64) + r * 8 + 8] for r in range(8)]] for i in range(n)]
json.dump({'id': 'req-7', 'inputs': [{'name': 'input', 'datatype': 'FP32', 'shape': [n, 1, 8, 8],
           'data': rows}], 'outputs': [{'name': 'logits'}],
           'parameters': {'priority': 1}}, open(out + '/nested.json', 'w'))
# flat JSON, 16 rows
json.dump({'inputs': [{'name': 'input', 'datatype': 'FP32', 'shape': [16, 1, 8, 8],
           'data': vals[:16 * 64]}]}, open(out + '/flat.json', 'w'))
# binary in, binary out
hdr = json.dumps({'inputs': [{'name': 'input', 'datatype': 'FP32', 'shape': [n, 1, 8, 8],
                  'parameters': {'binary_data_size': len(raw)}}],
                  'outputs': [{'name': 'logits', 'parameters': {'binary_data': True}}]}).encode()
open(out + '/bin.req', 'wb').write(hdr + raw)
open(out + '/bin.hlen', 'w').write(str(len(hdr)))
PY

check() { # check WHAT RESPONSE_FILE ROWS [HEADER_LEN]
  python3 - "$tmp/logits.npy" "$2" "$3" "${4:-0}" <<'PY'
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
hl = struct.unpack('<H', b[8:10])[0]
raw = b[10 + hl:]
want = struct.unpack('<%df' % (len(raw) // 4), raw)
body = open(sys.argv[2], 'rb').read()
rows, hlen = int(sys.argv[3]), int(sys.argv[4])
if hlen:
    meta = json.loads(body[:hlen])
    o = meta['outputs'][0]
    blob = body[hlen:]
    assert o['parameters']['binary_data_size'] == len(blob) == rows * 40, o
    got = struct.unpack('<%df' % (len(blob) // 4), blob)
else:
    meta = json.loads(body)
    o = meta['outputs'][0]
    got = o['data']
assert o['name'] == 'logits' and o['datatype'] == 'FP32' and o['shape'] == [rows, 10], o
assert len(got) == rows * 10
for r in range(rows):
    g, w = got[r * 10:r * 10 + 10], want[r * 10:r * 10 + 10]
    assert max(range(10), key=lambda i: g[i]) == max(range(10), key=lambda i: w[i]), r
    for a, e in zip(g, w):
        assert abs(a - e) <= 1e-4 * max(1.0, abs(e)), (r, a, e)
print(meta.get('id', ''))
PY
}

code=$("${C[@]}" -H 'Content-Type: application/json' --data-binary @"$tmp/nested.json" "$base/v2/models/digits/infer")
if [ "$code" = 200 ] && [ "$(check x "$tmp/body" 450)" = "req-7" ]; then ok "nested JSON infer, 450 rows, id echoed"
else bad "nested JSON infer: $code $(head -c 300 "$tmp/body")"; fi

code=$("${C[@]}" --data-binary @"$tmp/flat.json" "$base/v2/models/digits/versions/1/infer")
if [ "$code" = 200 ] && check x "$tmp/body" 16 >/dev/null; then ok "flat JSON infer, 16 rows"
else bad "flat JSON infer: $code $(head -c 300 "$tmp/body")"; fi

hlen=$(cat "$tmp/bin.hlen")
code=$(curl -s -m 30 -D "$tmp/hdr" -o "$tmp/body" -w '%{http_code}' -H "Inference-Header-Content-Length: $hlen" \
  -H 'Content-Type: application/octet-stream' --data-binary @"$tmp/bin.req" "$base/v2/models/digits/infer")
rh=$(sed -n 's/^Inference-Header-Content-Length: *\([0-9]*\).*/\1/ip' "$tmp/hdr" | tr -d '\r')
if [ "$code" = 200 ] && [ -n "$rh" ] && check x "$tmp/body" 450 "$rh" >/dev/null; then ok "binary tensors in and out"
else bad "binary infer: $code hdr=$rh $(head -c 300 "$tmp/body")"; fi

# Malformed requests: 400 with a message, the server stays healthy.
data64=$(python3 -c 'print(",".join(["0.5"]*64))')
ints64=$(python3 -c 'print(",".join(["1"]*64))')
bj='{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,8,8],"parameters":{"binary_data_size":12}}]}'
i='{"name":"input","datatype":"FP32","shape":[1,1,8,8]'
expect 400 '"error":"malformed JSON' "malformed JSON" -- -d '{"inputs":[' /v2/models/digits/infer
expect 400 '"error":' "not an object" -- -d '[1,2]' /v2/models/digits/infer
expect 400 'inputs' "no inputs" -- -d '{}' /v2/models/digits/infer
expect 400 'datatype' "unknown datatype" -- -d '{"inputs":[{"name":"input","datatype":"FP8","shape":[1],"data":[1]}]}' /v2/models/digits/infer
expect 400 'expects' "wrong datatype" -- -d '{"inputs":[{"name":"input","datatype":"INT32","shape":[1,1,8,8],"data":['"$ints64"']}]}' /v2/models/digits/infer
expect 400 'data elements' "too few data" -- -d '{"inputs":['"$i"',"data":[1,2,3]}]}' /v2/models/digits/infer
expect 400 'more data' "too much data" -- -d '{"inputs":['"$i"',"data":['"$data64"',1]}]}' /v2/models/digits/infer
expect 400 'not a number' "string data" -- -d '{"inputs":['"$i"',"data":["x"]}]}' /v2/models/digits/infer
expect 400 'dimension' "wrong shape" -- -d '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,4,16],"data":['"$data64"']}]}' /v2/models/digits/infer
expect 400 'rank' "rank too high" -- -d '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,1,1,1,1,1,1,1],"data":[1]}]}' /v2/models/digits/infer
expect 400 'elements' "too many elements" -- -d '{"inputs":[{"name":"input","datatype":"FP32","shape":[100000,100000,100000],"data":[1]}]}' /v2/models/digits/infer
expect 400 'no input named' "unknown input" -- -d '{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}' /v2/models/digits/infer
expect 400 'no output named' "unknown output" -- -d '{"inputs":['"$i"',"data":['"$data64"']}],"outputs":[{"name":"nope"}]}' /v2/models/digits/infer
expect 400 'priority' "bad priority" -- -d '{"inputs":['"$i"',"data":['"$data64"']}],"parameters":{"priority":9}}' /v2/models/digits/infer
expect 400 'nested deeper' "deep JSON" -- -d "$(printf '[%.0s' $(seq 1 100))" /v2/models/digits/infer
expect 400 'binary_data_size 12 does not match' "binary size mismatch" -- -H "Inference-Header-Content-Length: ${#bj}" -d "${bj}abcdefghijkl" /v2/models/digits/infer
expect 400 'Inference-Header' "header length past body" -- -H 'Inference-Header-Content-Length: 99999' -d '{}' /v2/models/digits/infer
expect 400 'too large' "body over the limit" -- -H 'Content-Length: 999999999999' -d '{}' /v2/models/digits/infer
expect 200 '"ready":true' "still ready after bad requests" -- /v2/health/ready

# Requested output as JSON while the default is binary; a 1 us timeout answers 503 (deadline
# exceeded) or, if the machine was that fast, 200: never anything else.
expect 200 '"data":\[' "binary_data_output overridden per output" -- -d '{"inputs":['"$i"',"data":['"$data64"']}],"parameters":{"binary_data_output":true},"outputs":[{"name":"logits","parameters":{"binary_data":false}}]}' /v2/models/digits/infer
code=$("${C[@]}" -d '{"inputs":['"$i"',"data":['"$data64"']}],"parameters":{"timeout":1}}' "$base/v2/models/digits/infer")
if [ "$code" = 503 ] || [ "$code" = 200 ]; then ok "timeout parameter ($code)"; else bad "timeout: $code $(cat "$tmp/body")"; fi

# Statistics and metrics.
expect 200 '"model_stats":\[\{"name":"digits","version":"1"' "stats" -- /v2/models/digits/stats
curl -s -m 30 "$base/metrics" >"$tmp/metrics"
if promtool check metrics <"$tmp/metrics" >"$tmp/lint" 2>&1; then ok "promtool check metrics"
else bad "promtool: $(cat "$tmp/lint")"; fi
succ=$(sed -n 's/^kiln_request_success_total{model="digits",version="1"} //p' "$tmp/metrics")
badreq=$(sed -n 's/^kiln_request_failure_total{model="digits",version="1",reason="bad_request"} //p' "$tmp/metrics")
if [ "${succ:-0}" -ge 4 ] && [ "${badreq:-0}" -ge 14 ]; then ok "metrics count successes ($succ) and bad requests ($badreq)"
else bad "metrics counts: success=$succ bad_request=$badreq"; fi
grep -q '^kiln_inference_compute_duration_seconds_bucket{model="digits",version="1",le="+Inf"}' "$tmp/metrics" \
  && grep -q '^process_resident_memory_bytes [1-9]' "$tmp/metrics" && ok "histograms and process metrics" \
  || bad "histograms or process metrics missing"

# Without a control token the repository endpoints are open.
expect 200 '^\[\{"name":"digits","version":"1","state":"READY"\}\]$' "repository index (no token configured)" -- -X POST /v2/repository/index
expect 405 '"error":' "repository index takes POST" -- /v2/repository/index

# Clean shutdown on SIGTERM, exit status 0, within a bounded time.
kill -TERM "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then bad "still running 10 s after SIGTERM"
else
  wait "$pid"; rc=$?
  [ "$rc" = 0 ] && ok "SIGTERM: clean exit" || bad "SIGTERM: exit $rc; $(tail -5 "$tmp/err")"
fi
pid=

# ---- Model control: a copied repository with digits and a model that cannot load, polled
# every 100 ms, control endpoints behind a token (from the environment).
repo2=$tmp/repo2
mkdir -p "$repo2/bad/1"
cp -r "$src/tests/repo/digits" "$repo2/"
printf 'this is not an onnx file' >"$repo2/bad/1/model.onnx"
KILN_CONTROL_TOKEN=s3cret "$kiln" serve --model-repository "$repo2" --host 127.0.0.1 --port 0 \
  --workers 2 --threads 1 --model-control poll --poll-interval-ms 100 >"$tmp/out2" 2>"$tmp/err2" &
pid=$!
port=
for _ in $(seq 1 100); do
  port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$tmp/out2")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then echo "FAIL second server did not start"; cat "$tmp/err2"; exit 1; fi
base=http://127.0.0.1:$port
A=(-H 'Authorization: Bearer s3cret')
infer_ok() { # infer_ok MODEL WHAT: the flat request answers the oracle's numbers
  local code
  code=$("${C[@]}" --data-binary @"$tmp/flat.json" "$base/v2/models/$1/infer")
  if [ "$code" = 200 ] && check x "$tmp/body" 16 >/dev/null; then ok "$2"
  else bad "$2: $code $(head -c 300 "$tmp/body")"; fi
}
# wait_code CODE PATH WHAT: polls (bounded, 10 s) until GET PATH answers CODE
wait_code() {
  local code=
  for _ in $(seq 1 100); do
    code=$("${C[@]}" "$base$2")
    [ "$code" = "$1" ] && break
    sleep 0.1
  done
  [ "$code" = "$1" ] && ok "$3 ($code)" || bad "$3: got $code $(head -c 300 "$tmp/body")"
}

expect 401 'Bearer' "index without a token" -- -X POST /v2/repository/index
expect 403 'wrong control token' "index with a wrong token" -- -X POST -H 'Authorization: Bearer nope' /v2/repository/index
expect 401 'Bearer' "load without a token" -- -X POST /v2/repository/models/digits/load
expect 403 'wrong control token' "unload with a wrong token" -- -X POST -H 'Authorization: Bearer s3cret2' /v2/repository/models/digits/unload
expect 200 '"name":"bad","state":"UNAVAILABLE","reason":"version 1: [^"]*model.onnx: [^"]+".*"name":"digits","version":"1","state":"READY"' \
  "index: bad model with its reason, digits ready" -- -X POST "${A[@]}" /v2/repository/index
expect 503 'model.onnx' "bad model's ready says why" -- /v2/models/bad/ready
infer_ok digits "digits serves beside the bad model"
expect 400 '"error":"version 1: [^"]*model.onnx: ' "load of the bad model answers its reason" -- -X POST "${A[@]}" /v2/repository/models/bad/load
infer_ok digits "digits serves after the failed load"
expect 404 '"error":' "load of a model not in the repository" -- -X POST "${A[@]}" /v2/repository/models/nope/load
expect 404 '"error":' "unload of an unknown model" -- -X POST "${A[@]}" /v2/repository/models/nope/unload

expect 200 '^\{\}$' "unload digits" -- -X POST "${A[@]}" /v2/repository/models/digits/unload
expect 503 'unloaded' "infer after unload answers 503" -- --data-binary @"$tmp/flat.json" /v2/models/digits/infer
expect 503 'unloaded' "ready after unload answers 503" -- /v2/models/digits/ready
expect 200 '"name":"digits","state":"UNLOADED"' "index shows digits unloaded" -- -X POST "${A[@]}" /v2/repository/index
sleep 0.3 # a few polling passes: an unload on request is not undone while the files stay as they are
expect 503 'unloaded' "polling leaves the unload alone" -- /v2/models/digits/ready
expect 200 '^\{\}$' "load digits back" -- -X POST "${A[@]}" /v2/repository/models/digits/load
infer_ok digits "infer after load back"
# Triton's index filter and a load's parameters.config (used instead of config.json).
expect 200 '^\[\{"name":"digits","version":"1","state":"READY"\}\]$' "index with ready: true lists only what serves" -- -X POST "${A[@]}" -d '{"ready": true}' /v2/repository/index
expect 200 '"name":"bad","state":"UNAVAILABLE"' "index with ready: false lists everything" -- -X POST "${A[@]}" -d '{"ready": false}' /v2/repository/index
expect 400 "unexpected 'readyy'" "index with a misspelt key answers 400" -- -X POST "${A[@]}" -d '{"readyy": true}' /v2/repository/index
expect 400 "unsupported load parameter 'file:1/model.onnx'" "load with an unsupported parameter answers 400" -- -X POST "${A[@]}" -d '{"parameters": {"file:1/model.onnx": "x"}}' /v2/repository/models/digits/load
expect 200 '^\{\}$' "load with parameters.config" -- -X POST "${A[@]}" -d '{"parameters": {"config": "{\"input\": [{\"name\": \"input\", \"data_type\": \"TYPE_FP32\", \"dims\": [16, 1, 8, 8]}]}"}}' /v2/repository/models/digits/load
expect 200 '"inputs":\[\{"name":"input","datatype":"FP32","shape":\[16,1,8,8\]\}\]' "the load's config applies" -- /v2/models/digits
infer_ok digits "16 rows infer under the load's config"
expect 400 "the model expects 16" "other row counts answer 400 under it" -- -d '{"inputs":['"$i"',"data":['"$data64"']}]}' /v2/models/digits/infer
expect 400 "version 1: config.json: the model has no input named 'x'" "a load whose config names a missing input answers 400" -- -X POST "${A[@]}" -d '{"parameters": {"config": "{\"input\": [{\"name\": \"x\"}]}"}}' /v2/repository/models/digits/load
infer_ok digits "the previous version keeps serving after that failed load"
expect 200 '"shape":\[16,1,8,8\]' "and so does its config" -- /v2/models/digits
expect 200 '^\{\}$' "a plain load rereads config.json" -- -X POST "${A[@]}" /v2/repository/models/digits/load
expect 200 '"inputs":\[\{"name":"input","datatype":"FP32","shape":\[-1,1,8,8\]\}\]' "config.json's shapes are back" -- /v2/models/digits

# Polling: a model copied in is picked up, a removed one is unloaded.
cp -r "$src/tests/repo/digits" "$tmp/d2"
mv "$tmp/d2" "$repo2/d2" # appears at once, complete
wait_code 200 /v2/models/d2/ready "poll loads a model copied in"
infer_ok d2 "the polled model infers"
rm -rf "$repo2/d2"
wait_code 503 /v2/models/d2/ready "poll unloads a removed model"
infer_ok digits "digits still serves"
curl -s -m 30 "$base/metrics" >"$tmp/metrics2"
if promtool check metrics <"$tmp/metrics2" >"$tmp/lint2" 2>&1 && grep -q '^kiln_request_success_total{model="digits",version="1"} [1-9]' "$tmp/metrics2"; then
  ok "metrics after load/unload/poll pass promtool"
else bad "metrics after model control: $(head -c 300 "$tmp/lint2")"; fi

kill -TERM "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then bad "second server still running 10 s after SIGTERM"
else
  wait "$pid"; rc=$?
  [ "$rc" = 0 ] && ok "second server: clean exit" || bad "second server: exit $rc; $(tail -5 "$tmp/err2")"
fi
pid=
# ---- Overload, deadlines and disconnects: one worker, a model whose run time a request sets by
# its row count (tests/models/slow.onnx), a queue of one per priority level, and at level 4 a
# 100 ms timeout that requests may not override.
repo3=$tmp/repo3
mkdir -p "$repo3/slow/1" "$repo3/strings/1"
cp "$src/tests/models/slow.onnx" "$repo3/slow/1/model.onnx"
cp "$src/tests/models/strings.onnx" "$repo3/strings/1/model.onnx"
cat >"$repo3/slow/config.json" <<'EOF'
{"instance_count": 1, "optimization_level": 2,
 "dynamic_batching": {"default_queue_policy": {"max_queue_size": 1, "timeout_action": "REJECT"},
                      "priority_queue_policy": {"4": {"max_queue_size": 1, "default_timeout_microseconds": 100000,
                                                      "allow_timeout_override": false}}}}
EOF
"$kiln" serve --model-repository "$repo3" --host 127.0.0.1 --port 0 --workers 1 --threads 1 \
  >"$tmp/out3" 2>"$tmp/err3" &
pid=$!
port=
for _ in $(seq 1 100); do
  port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$tmp/out3")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then echo "FAIL third server did not start"; cat "$tmp/err3"; exit 1; fi
base=http://127.0.0.1:$port
# slow_req ROWS FILE [PARAMS_JSON]: a binary request of ROWS zero rows
slow_req() {
  python3 - "$1" "$2" "${3:-null}" <<'PY'
import json, sys
rows, path, params = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]) or {}
hdr = json.dumps({'inputs': [{'name': 'x', 'datatype': 'FP32', 'shape': [rows, 256],
                              'parameters': {'binary_data_size': rows * 1024}}],
                  'outputs': [{'name': 'y', 'parameters': {'binary_data': True}}],
                  'parameters': params}).encode()
open(path, 'wb').write(hdr + bytes(rows * 1024))
open(path + '.hlen', 'w').write(str(len(hdr)))
PY
}
# post FILE OUT_PREFIX [curl args]: writes OUT_PREFIX.code, .body, .hdr
post() {
  local f=$1 o=$2
  shift 2
  curl -s -m 120 "$@" -D "$o.hdr" -o "$o.body" -w '%{http_code}' \
    -H "Inference-Header-Content-Length: $(cat "$f.hlen")" --data-binary @"$f" \
    "$base/v2/models/slow/infer" >"$o.code"
}
metric() { # metric REASON: the slow model's failure counter for that reason
  curl -s -m 30 "$base/metrics" | sed -n 's/^kiln_request_failure_total{model="slow",version="1",reason="'"$1"'"} //p'
}
successes() {
  curl -s -m 30 "$base/metrics" | sed -n 's/^kiln_request_success_total{model="slow",version="1"} //p'
}
runs_started() { # runs of the slow model that have taken a session, i.e. started
  curl -s -m 30 "$base/metrics" |
    sed -n 's/^kiln_context_pool_\(hits\|misses\|waits\)_total{model="slow",version="1"} //p' |
    awk '{s += $1} END {print s + 0}'
}
# start_busy OUT: posts the busy request in the background (pid in bpid) and returns once its
# run has started (bounded, 10 s), so what follows finds the one worker busy however loaded the
# machine is (a fixed 0.3 s sleep was not always enough beside other tests under ctest -j).
start_busy() {
  local n0
  n0=$(runs_started)
  post "$tmp/busy" "$1" &
  bpid=$!
  for _ in $(seq 1 200); do
    [ "$(runs_started)" -gt "$n0" ] && return
    sleep 0.05
  done
}
# Calibrate: rows for a run of about 2 s on this machine and build (ASan is far slower); the
# first request also creates the session, so the second one is timed.
slow_req 256 "$tmp/cal"
for _ in 1 2; do
  t=$(curl -s -m 120 -o /dev/null -w '%{time_total}' -H "Inference-Header-Content-Length: $(cat "$tmp/cal.hlen")" \
    --data-binary @"$tmp/cal" "$base/v2/models/slow/infer")
done
rows=$(python3 -c "print(max(8, min(65536, int(256 * 2.0 / max($t, 1e-3)))))")
echo "     (slow model: 256 rows took ${t}s; a busy request is $rows rows)"
slow_req "$rows" "$tmp/busy"
slow_req 1 "$tmp/small"
slow_req 1 "$tmp/small_t" '{"timeout": 100000}'
slow_req 1 "$tmp/low_long" '{"priority": 4, "timeout": 60000000}'

# Overload: while the busy request runs, six more arrive at once; one may queue, the others are
# refused at once with 503 and Retry-After, and the server stays healthy.
start_busy "$tmp/b0"
kids=()
for k in 1 2 3 4 5 6; do post "$tmp/small" "$tmp/o$k" & kids+=($!); done
wait "${kids[@]}" "$bpid"
n503=0 n200=0 other=
for k in 1 2 3 4 5 6; do
  c=$(cat "$tmp/o$k.code")
  if [ "$c" = 503 ] && grep -qi '^Retry-After: *[1-9]' "$tmp/o$k.hdr" && grep -q 'queue is full' "$tmp/o$k.body"; then
    n503=$((n503 + 1))
  elif [ "$c" = 200 ]; then n200=$((n200 + 1))
  else other="$other $c:$(head -c 100 "$tmp/o$k.body")"; fi
done
if [ "$(cat "$tmp/b0.code")" = 200 ] && [ "$n503" -ge 4 ] && [ "$n200" -le 2 ] && [ -z "$other" ]; then
  ok "queue limit 1: $n503 of 6 answered 503 with Retry-After, $n200 served"
else bad "overload: busy=$(cat "$tmp/b0.code") 503s=$n503 200s=$n200 other=$other"; fi
expect 200 '"ready":true' "ready after overload" -- /v2/health/ready
code=$("${C[@]}" -H "Inference-Header-Content-Length: $(cat "$tmp/small.hlen")" --data-binary @"$tmp/small" "$base/v2/models/slow/infer")
[ "$code" = 200 ] && ok "serves after overload" || bad "after overload: $code $(head -c 200 "$tmp/body")"
r=$(metric rejected)
[ "${r:-0}" -ge 4 ] && ok "metrics count the rejections ($r)" || bad "rejected counter: $r"

# Deadlines: behind the busy request, a 100 ms timeout expires in the queue (503, Retry-After);
# at level 4 the policy's 100 ms applies although the request asks for 60 s (no override).
start_busy "$tmp/b1"
post "$tmp/small_t" "$tmp/d1" & # levels 3 and 4: one queue place each
d1=$!
post "$tmp/low_long" "$tmp/d2"
wait "$d1" "$bpid"
for k in d1 d2; do
  if [ "$(cat "$tmp/$k.code")" = 503 ] && grep -q 'deadline exceeded' "$tmp/$k.body" && grep -qi '^Retry-After:' "$tmp/$k.hdr"; then
    ok "expired in the queue: 503 deadline exceeded ($k)"
  else bad "deadline $k: $(cat "$tmp/$k.code") $(head -c 200 "$tmp/$k.body")"; fi
done
r=$(metric deadline_exceeded)
[ "${r:-0}" = 2 ] && ok "metrics count 2 deadlines" || bad "deadline counter: $r"

# Disconnects: a client that gives up while its request is queued, and one that gives up while
# its request runs; both requests are cancelled (counted as such, not served).
succ0=$(successes)
start_busy "$tmp/b2"
post "$tmp/small" "$tmp/q" --max-time 0.3 # queued behind the busy one, then gone
wait "$bpid"
post "$tmp/busy" "$tmp/r" --max-time 0.3 # running, then gone
c=
for _ in $(seq 1 100); do c=$(metric cancelled); [ "${c:-0}" -ge 2 ] && break; sleep 0.1; done
succ1=$(successes)
if [ "${c:-0}" = 2 ] && [ "$succ1" = $((succ0 + 1)) ]; then
  ok "client disconnects cancel a queued and a running request"
else bad "disconnect: cancelled=$c success $succ0 -> $succ1 (only the busy one should count)"; fi
expect 200 '"ready":true' "ready after disconnects" -- /v2/health/ready

# BYTES tensors (tests/models/strings.onnx: upper-case, drop "the"), JSON and binary; the oracle
# is Python's str.upper (the engine changes ASCII case only, so non-ASCII text here has no case).
expect 200 '"inputs":\[\{"name":"text","datatype":"BYTES","shape":\[-1\]\}\]' "BYTES model metadata" -- /v2/models/strings
python3 - "$tmp" <<'PY'
import json, struct, sys
out = sys.argv[1]
words = ['The', 'quick', 'Brown', '\u20ac5 fox', 'say "hi"', '', 'the', 'x' * 300]
json.dump({'inputs': [{'name': 'text', 'datatype': 'BYTES', 'shape': [len(words)], 'data': words}]},
          open(out + '/s.json', 'w'))
blob = b''.join(struct.pack('<I', len(w.encode())) + w.encode() for w in words)
hdr = json.dumps({'inputs': [{'name': 'text', 'datatype': 'BYTES', 'shape': [len(words)],
                              'parameters': {'binary_data_size': len(blob)}}],
                  'parameters': {'binary_data_output': True}}).encode()
open(out + '/s.bin', 'wb').write(hdr + blob)
open(out + '/s.bin.hlen', 'w').write(str(len(hdr)))
want = [w.upper() for w in words if w.lower() != 'the']
json.dump(want, open(out + '/s.want', 'w'))
# framing errors: a length past the end, one element too many, a NUL inside an element
bad = {'past': struct.pack('<I', 9) + b'abc', 'extra': struct.pack('<I', 1) + b'a' + struct.pack('<I', 0),
       'nul': struct.pack('<I', 3) + b'a\0b'}
for k, b in bad.items():
    h = json.dumps({'inputs': [{'name': 'text', 'datatype': 'BYTES', 'shape': [1],
                                'parameters': {'binary_data_size': len(b)}}]}).encode()
    open(out + '/s.' + k, 'wb').write(h + b)
    open(out + '/s.' + k + '.hlen', 'w').write(str(len(h)))
PY
check_strings() { # check_strings BODY HLEN: the response's output equals the oracle
  python3 - "$1" "$2" "$tmp/s.want" <<'PY'
import json, struct, sys
body, hlen, want = open(sys.argv[1], 'rb').read(), int(sys.argv[2]), json.load(open(sys.argv[3]))
if hlen:
    o = json.loads(body[:hlen])['outputs'][0]
    blob, got, at = body[hlen:], [], 0
    assert o['parameters']['binary_data_size'] == len(blob), o
    while at < len(blob):
        n = struct.unpack('<I', blob[at:at + 4])[0]
        got.append(blob[at + 4:at + 4 + n].decode())
        at += 4 + n
else:
    o = json.loads(body)['outputs'][0]
    got = o['data']
assert o['datatype'] == 'BYTES' and o['shape'] == [len(want)], o
assert got == want, (got, want)
PY
}
code=$("${C[@]}" --data-binary @"$tmp/s.json" "$base/v2/models/strings/infer")
if [ "$code" = 200 ] && check_strings "$tmp/body" 0; then ok "BYTES in and out as JSON"
else bad "BYTES JSON: $code $(head -c 300 "$tmp/body")"; fi
code=$(curl -s -m 30 -D "$tmp/hdr" -o "$tmp/body" -w '%{http_code}' -H "Inference-Header-Content-Length: $(cat "$tmp/s.bin.hlen")" \
  --data-binary @"$tmp/s.bin" "$base/v2/models/strings/infer")
rh=$(sed -n 's/^Inference-Header-Content-Length: *\([0-9]*\).*/\1/ip' "$tmp/hdr" | tr -d '\r')
if [ "$code" = 200 ] && [ -n "$rh" ] && check_strings "$tmp/body" "$rh"; then ok "BYTES in and out as length-prefixed binary"
else bad "BYTES binary: $code hdr=$rh $(head -c 300 "$tmp/body")"; fi
for k in past extra nul; do
  code=$(curl -s -m 30 -o "$tmp/body" -w '%{http_code}' -H "Inference-Header-Content-Length: $(cat "$tmp/s.$k.hlen")" \
    --data-binary @"$tmp/s.$k" "$base/v2/models/strings/infer")
  [ "$code" = 400 ] && grep -q 'BYTES' "$tmp/body" && ok "bad BYTES framing ($k): 400" || bad "BYTES $k: $code $(head -c 200 "$tmp/body")"
done
expect 400 'BYTES data must be strings' "BYTES JSON with a number" -- -d '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":[1]}]}' /v2/models/strings/infer
curl -s -m 30 "$base/metrics" >"$tmp/metrics3"
promtool check metrics <"$tmp/metrics3" >"$tmp/lint3" 2>&1 && ok "metrics pass promtool" || bad "promtool: $(cat "$tmp/lint3")"

kill -TERM "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then bad "third server still running 10 s after SIGTERM"
else
  wait "$pid"; rc=$?
  [ "$rc" = 0 ] && ok "third server: clean exit" || bad "third server: exit $rc; $(tail -5 "$tmp/err3")"
fi
pid=

# ---- config.json input/output overrides, and a slow load beside serving models. digits' own
# config (max_batch_size 8: dims exclude the batch) restates its input and output; fixed2 (no
# batching: full dims) narrows the batch to 2; five models whose config contradicts the model
# must fail to load with the reason while the others serve. `big` is loaded on request later,
# made slow by the server's test-only load delay.
repo4=$tmp/repo4
mk4() { # mk4 NAME CONFIG_JSON
  mkdir -p "$repo4/$1/1"
  cp "$src/tests/repo/digits/1/model.onnx" "$repo4/$1/1/model.onnx"
  printf '%s\n' "$2" >"$repo4/$1/config.json"
}
mk4 digits '{"max_batch_size": 8, "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}],
             "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [-1]}]}'
mk4 fixed2 '{"input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [2, 1, 8, 8]}]}'
mk4 badname '{"max_batch_size": 8, "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]}'
mk4 baddtype '{"max_batch_size": 8, "input": [{"name": "input", "data_type": "TYPE_INT64", "dims": [1, 8, 8]}]}'
mk4 baddim '{"max_batch_size": 8, "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 8, 9]}]}'
mk4 badrank '{"max_batch_size": 8, "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [1, 1, 8, 8]}]}'
mk4 badtype '{"output": [{"name": "logits", "data_type": "FP32"}]}'
KILN_SERVE_TEST_LOAD_DELAY=big:12000 "$kiln" serve --model-repository "$repo4" --host 127.0.0.1 --port 0 \
  --workers 2 --threads 1 >"$tmp/out4" 2>"$tmp/err4" &
pid=$!
port=
for _ in $(seq 1 100); do
  port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\)$|\1|p' "$tmp/out4")
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then echo "FAIL fourth server did not start"; cat "$tmp/err4"; exit 1; fi
base=http://127.0.0.1:$port
python3 - "$src/models/digits/test_x.npy" "$tmp" <<'PY'
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
hl = struct.unpack('<H', b[8:10])[0]
vals = list(struct.unpack('<%df' % (2 * 64), b[10 + hl:10 + hl + 2 * 64 * 4]))
for rows in (1, 2):
    json.dump({'inputs': [{'name': 'input', 'datatype': 'FP32', 'shape': [rows, 1, 8, 8],
               'data': vals[:rows * 64]}]}, open('%s/rows%d.json' % (sys.argv[2], rows), 'w'))
PY
expect 200 '"inputs":\[\{"name":"input","datatype":"FP32","shape":\[-1,1,8,8\]\}\].*"outputs":\[\{"name":"logits","datatype":"FP32","shape":\[-1,10\]\}\]' \
  "config restating dims (batch excluded) keeps the model's shapes" -- /v2/models/digits
infer_ok digits "digits with input/output entries infers"
expect 200 '"inputs":\[\{"name":"input","datatype":"FP32","shape":\[2,1,8,8\]\}\]' "metadata reports the narrowed dims" -- /v2/models/fixed2
inf0=$(curl -s -m 30 "$base/metrics" | sed -n 's/^kiln_inference_count_total{model="fixed2",version="1"} //p')
expect 400 "'input' dimension 0 is 1, the model expects 2" "narrowed dim: another shape answers 400" -- --data-binary @"$tmp/rows1.json" /v2/models/fixed2/infer
inf1=$(curl -s -m 30 "$base/metrics" | sed -n 's/^kiln_inference_count_total{model="fixed2",version="1"} //p')
[ -n "$inf0" ] && [ "$inf0" = "$inf1" ] && ok "the refused request never reached the runtime ($inf0 -> $inf1)" \
  || bad "inference count of fixed2 moved on a refused request: $inf0 -> $inf1"
code=$("${C[@]}" --data-binary @"$tmp/rows2.json" "$base/v2/models/fixed2/infer")
if [ "$code" = 200 ] && check x "$tmp/body" 2 >/dev/null; then ok "narrowed dim: the fixed shape infers the oracle's numbers"
else bad "fixed2 2 rows: $code $(head -c 300 "$tmp/body")"; fi
expect 503 "version 1: config.json: the model has no input named 'image'" "override of a missing tensor is a load error" -- /v2/models/badname/ready
expect 503 "version 1: config.json: input 'input' is INT64 in the config, FP32 in the model" "override with another dtype is a load error" -- /v2/models/baddtype/ready
expect 503 "version 1: config.json: input 'input' dim 3 is 9 in the config, 8 in the model" "override contradicting a fixed dim is a load error" -- /v2/models/baddim/ready
expect 503 "input 'input' has 5 dims in the config \(with the batch dim\), 4 in the model" "override of another rank is a load error" -- /v2/models/badrank/ready
expect 503 "config.json: output 'logits': data_type must be one of TYPE_BOOL" "data_type without TYPE_ is a config error" -- /v2/models/badtype/ready
expect 200 '"name":"baddim","state":"UNAVAILABLE","reason":"version 1: config.json: input' "index lists the failed override with its reason" -- -X POST /v2/repository/index
infer_ok digits "digits serves beside the models whose config failed"

# A slow load (12 s, the test-only delay: ASan on a loaded machine is slow) does not stall the others: while it runs, digits infers,
# the index and metadata answer, and the loading model says so; only then does the load answer.
cp -r "$repo4/digits" "$tmp/big"
mv "$tmp/big" "$repo4/big"
curl -s -m 60 -o "$tmp/load.body" -w '%{http_code}' -X POST "$base/v2/repository/models/big/load" >"$tmp/load.code" &
lpid=$!
t0=$(date +%s.%N)
sleep 0.5 # the load request is in: its thread sleeps inside the load
expect 503 'model is loading' "the loading model says so" -- /v2/models/big/ready
expect 200 '"name":"digits","version":"1","state":"READY"' "index answers during the slow load" -- -X POST /v2/repository/index
for k in 1 2 3; do infer_ok digits "infer $k during a slow load of another model"; done
el=$(python3 -c "import sys; print('%.1f' % ($(date +%s.%N) - $t0))")
if kill -0 "$lpid" 2>/dev/null; then ok "all of that answered in ${el}s, while the load was still running"
else bad "the load finished before the other requests did (${el}s): they may have waited for it"; fi
wait "$lpid"
[ "$(cat "$tmp/load.code")" = 200 ] && ok "the slow load completes (200)" || bad "slow load: $(cat "$tmp/load.code") $(head -c 200 "$tmp/load.body")"
infer_ok big "the slowly loaded model infers"

kill -TERM "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then bad "fourth server still running 10 s after SIGTERM"
else
  wait "$pid"; rc=$?
  [ "$rc" = 0 ] && ok "fourth server: clean exit" || bad "fourth server: exit $rc; $(tail -5 "$tmp/err4")"
fi
pid=
[ "$fails" = 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "all passed"
