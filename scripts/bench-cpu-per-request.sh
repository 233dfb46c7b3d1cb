#!/usr/bin/env bash
# CPU per request (user + system from /proc/PID/stat, which the machine's load disturbs far
# less than rates) of two `engine serve` builds, both pinned to core 0, wrk on core 1, three
# interleaved rounds. The definitions are those of benches/push.rs (a queued push connector
# with an NDJSON sink). Usage:
#   scripts/bench-cpu-per-request.sh BEFORE_BIN AFTER_BIN            # GET /healthz, c=32
#   scripts/bench-cpu-per-request.sh BEFORE_BIN AFTER_BIN push       # queued pushes, c=16
#   scripts/bench-cpu-per-request.sh BEFORE_BIN AFTER_BIN hit        # cached search, c=1
#   scripts/bench-cpu-per-request.sh BEFORE_BIN AFTER_BIN miss       # cache-filling miss, c=1
# hit and miss use the `labels` connector of benches/serve.rs over a Python stand-in source.
# Environment: SECONDS_PER_RUN (default 4), ROUNDS (default 3).
set -euo pipefail
before="$1" after="$2" what="${3:-healthz}"
dir="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$dir"' EXIT
token=bench-token-0123456789abcdef
cat >"$dir/defs.yaml" <<YAML
apiVersion: fosps.gravitate-health.eu/v1
kind: Sink
metadata: { name: files }
spec:
  ndjson: { dir: "$dir/sink" }
---
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: feed }
spec:
  strategy: push
  sink: files
  push:
    auth: { bearer: { token: "$token" } }
    mode: queued
  mapping:
    resourceType: Patient
    id: { \$path: \$.id }
    name: [ { family: { \$path: "\$.name" } } ]
YAML
cat >"$dir/push.lua" <<LUA
counter = 0
request = function()
  counter = counter + 1
  local body = '{"id":"p' .. counter .. '-' .. math.random(1, 1000000000) .. '","name":"x"}'
  return wrk.format('POST', nil, {['Content-Type'] = 'application/json', ['Authorization'] = 'Bearer $token'}, body)
end
LUA
cat >"$dir/miss.lua" <<LUA
counter = 0
request = function()
  counter = counter + 1
  return wrk.format('GET', '/fhir/labels/MedicinalProductDefinition?name=m' .. counter .. '-' .. math.random(1, 1000000000))
end
LUA
if [ "$what" = hit ] || [ "$what" = miss ]; then
  cat >"$dir/source.py" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_GET(self):
        q = urlsplit(self.path).query
        body = json.dumps({"meta": {"results": {"total": 1}}, "results": [{
            "set_id": "id-%d" % len(q), "effective_time": "20240105",
            "indications_and_usage": ["Relief of minor aches and pains (%s)." % q],
            "warnings": ["Do not exceed the stated dose.", "Keep out of reach of children."],
            "openfda": {"brand_name": ["Painaway " + q], "generic_name": ["IBUPROFEN"]}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
  taskset -c 1 python3 "$dir/source.py" >"$dir/source.port" 2>/dev/null &
  pids+=("$!")
  for _ in $(seq 50); do [ -s "$dir/source.port" ] && break; sleep 0.1; done
  sport="$(cat "$dir/source.port")"
  cat >"$dir/defs.yaml" <<YAML
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: labels }
spec:
  strategy: pull
  fhirVersion: R5
  source: { url: "http://127.0.0.1:$sport", timeout: 10s, concurrency: 256 }
  pull:
    resources:
      - type: MedicinalProductDefinition
        search:
          params: { name: {} }
          request: { path: /drug/label.json, query: { search: "brand:{{params.name}}" } }
          records: \$.results[*]
          total: \$.meta.results.total
  cache: { ttl: 1h, maxEntries: 100000, maxBytes: 512MiB }
  mapping:
    resourceType: MedicinalProductDefinition
    id: { \$path: \$.set_id }
    name:
      - \$each: "\$.openfda.brand_name[*]"
        \$do: { productName: "{{item}}" }
    description: { \$path: "\$.indications_and_usage[0]" }
    statusDate: { \$dateTime: { \$path: \$.effective_time } }
YAML
fi
if [ "$what" = hit ]; then path=/fhir/labels/MedicinalProductDefinition?name=Painaway conns=1 script=()
elif [ "$what" = miss ]; then path=/ conns=1 script=(-s "$dir/miss.lua")
elif [ "$what" = push ]; then path=/push/feed conns=16 script=(-s "$dir/push.lua"); else path=/healthz conns=32 script=(); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
declare -A pid port
for side in before after; do
  bin="${!side}"
  port[$side]="$(free_port)"
  taskset -c 0 "$bin" serve "$dir/defs.yaml" --listen "127.0.0.1:${port[$side]}" --log warn \
    --state-dir "$dir/state-$side" >/dev/null 2>&1 &
  pid[$side]=$!
  pids+=("$!")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:${port[$side]}/healthz" >/dev/null && break; sleep 0.1; done
  if [ "$what" = hit ]; then curl -sf "http://127.0.0.1:${port[$side]}$path" >/dev/null; fi
done
tck="$(getconf CLK_TCK)"
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in $(seq "${ROUNDS:-3}"); do
  for side in before after; do
    c0="$(cpu "${pid[$side]}")"
    n="$(taskset -c 1 wrk -t1 -c"$conns" -d"${SECONDS_PER_RUN:-4}"s "${script[@]}" \
      "http://127.0.0.1:${port[$side]}$path" | awk '/requests in/ {print $1}')"
    c1="$(cpu "${pid[$side]}")"
    awk -v r="$round" -v s="$side" -v n="$n" -v c="$((c1 - c0))" -v t="$tck" -v secs="${SECONDS_PER_RUN:-4}" \
      'BEGIN { printf "round %d %-6s %8.0f req/s  %8.1f us CPU per request\n", r, s, n / secs, c * 1e6 / t / n }' |
      tee -a "$dir/rounds"
  done
done
# One `ratio:` line (scripts/bench.sh collects it): the median of the per-round after/before ratios.
awk -v what="$what" -v c="$conns" '
  function sort(x, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && x[j - 1] > x[j]; j--) { t = x[j]; x[j] = x[j - 1]; x[j - 1] = t } }
  { us[$3 == "before" ? "b" : "a", $2] = $(NF - 4); rounds = $2 }
  END {
    for (r = 1; r <= rounds; r++) { q[r] = us["a", r] / us["b", r]; b[r] = us["b", r]; a[r] = us["a", r] }
    sort(q, rounds); sort(b, rounds); sort(a, rounds); m = int((rounds + 1) / 2)
    printf "ratio: CPU per request, %s c=%d, after / before (lower is better) = %.3fx (spread %.3f-%.3f; engine %.1f us, anchor before %.1f us)\n", what, c, q[m], q[1], q[rounds], a[m], b[m]
  }' "$dir/rounds"
