#!/usr/bin/env bash
# CPU per request (user + system from /proc/PID/stat, which the machine's load disturbs far
# less than rates) of two `engine serve` builds, both pinned to core 0, wrk on core 1, three
# interleaved rounds. The definitions are those of benches/push.rs (a queued push connector
# with an NDJSON sink). Usage:
#   scripts/bench-cpu-per-request.sh BEFORE_BIN AFTER_BIN            # GET /healthz, c=32
#   scripts/bench-cpu-per-request.sh BEFORE_BIN AFTER_BIN push       # queued pushes, c=16
# Environment: SECONDS_PER_RUN (default 4).
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
if [ "$what" = push ]; then path=/push/feed conns=16 script=(-s "$dir/push.lua"); else path=/healthz conns=32 script=(); fi
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
done
tck="$(getconf CLK_TCK)"
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for round in 1 2 3; do
  for side in before after; do
    c0="$(cpu "${pid[$side]}")"
    n="$(taskset -c 1 wrk -t1 -c"$conns" -d"${SECONDS_PER_RUN:-4}"s "${script[@]}" \
      "http://127.0.0.1:${port[$side]}$path" | awk '/requests in/ {print $1}')"
    c1="$(cpu "${pid[$side]}")"
    awk -v r="$round" -v s="$side" -v n="$n" -v c="$((c1 - c0))" -v t="$tck" -v secs="${SECONDS_PER_RUN:-4}" \
      'BEGIN { printf "round %d %-6s %8.0f req/s  %8.1f us CPU per request\n", r, s, n / secs, c * 1e6 / t / n }'
  done
done
