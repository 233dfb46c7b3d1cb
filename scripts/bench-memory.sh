#!/usr/bin/env bash
# Benchmark: peak resident memory (VmHWM) of `engine serve` answering one search against a
# local JSON source whose answer is N MiB of tiny records (`[{"id":"x"},...]`, or `[0,0,...]`
# with ZEROS=1), release build. Usage: scripts/bench-memory.sh [MiB...] (default 1 8 32);
# MAX_VALUES=N sets the source's `maxValues` (default: the engine's default).
# Prints, per size: the answer's status, its time, and the engine's peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --quiet -p engine
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cat > "$work/source.py" <<'PY'
import http.server, os, sys
size = int(float(sys.argv[2]) * (1 << 20))
rec = b'0,' if os.environ.get('ZEROS') else b'{"id":"x"},'
n = size // len(rec)
body = b'[' + rec * (n - 1) + rec[:-1] + b']'
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
PY
wait_for() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; return 1; }
printf '| answer | status | time | peak RSS |\n|---|---|---|---|\n'
for mib in "${@:-1 8 32}"; do
  for m in $mib; do
    src=$(free_port); eng=$(free_port)
    mkdir -p "$work/defs"
    cat > "$work/defs/tiny.yaml" <<YAML
apiVersion: fosps.gravitate-health.eu/v1
kind: Connector
metadata: { name: tiny }
spec:
  strategy: pull
  source: { url: "http://127.0.0.1:$src", timeout: 60s, retries: 0${MAX_VALUES:+, maxValues: $MAX_VALUES} }
  pull:
    resources:
      - type: Patient
        search: { request: { path: /records }, records: "\$[*]" }
  mapping:
    resourceType: Patient
    id: { \$path: \$.id }
YAML
    python3 "$work/source.py" "$src" "$m" & pids+=($!)
    target/release/engine serve "$work/defs" --listen "127.0.0.1:$eng" --state-dir "$work/state" --log error & epid=$!; pids+=($epid)
    wait_for "http://127.0.0.1:$src/records" && wait_for "http://127.0.0.1:$eng/healthz"
    out=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' "http://127.0.0.1:$eng/fhir/tiny/Patient")
    kb=$(awk '/VmHWM/ { print $2 }' "/proc/$epid/status")
    read -r code secs <<< "$out"
    printf '| %s MiB | %s | %s s | %d MiB |\n' "$m" "$code" "$secs" $((kb / 1024))
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
  done
done
