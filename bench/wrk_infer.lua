-- wrk script for bench/run_server.sh: POSTs one Open Inference Protocol request, read from the
-- file named by KILN_BODY. With KILN_HLEN set the body is the binary tensor extension's layout
-- (JSON header of KILN_HLEN bytes, then raw tensor bytes). done() prints one machine-readable
-- line, so the script does not parse wrk's human units.
local f = assert(io.open(assert(os.getenv("KILN_BODY"), "KILN_BODY is not set"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
local hlen = os.getenv("KILN_HLEN")
if hlen and hlen ~= "" then
  wrk.headers["Inference-Header-Content-Length"] = hlen
  wrk.headers["Content-Type"] = "application/octet-stream"
else
  wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("KILN requests=%d seconds=%.3f rps=%.1f p50_ms=%.3f p99_ms=%.3f non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, e.status,
    e.connect + e.read + e.write + e.timeout))
end
