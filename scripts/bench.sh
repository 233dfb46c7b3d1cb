#!/usr/bin/env bash
# The one benchmark command of issue 16: every ratio of its table, engine against anchor.
# Installs the anchors where missing (nginx, wrk from Debian), builds the release engine and
# benches, pins the system under test (the engine, nginx) to core 0 and the client (wrk, the
# stand-in sources) to core 1, runs each pair interleaved three times (`--quick`: once, shorter
# runs), and prints one `ratio:` line per measure with its spread (the cached search at c=1 and
# the miss also against their floors: a bare hyper server on the same core; `note:` lines give
# each side's rate and CPU per request). Then the mapping, sink, formats, push and bulk
# benches' `ratio:` lines ("not measured" where a bench prints none, or cannot run); the
# shared_cache and guide benches are run on their own.
# Usage: scripts/bench.sh [--quick]. Environment: BENCH_SECONDS (per wrk run), SUT_CPU,
# CLIENT_CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

reps=3
seconds="${BENCH_SECONDS:-5}"
if [ "${1:-}" = "--quick" ]; then
  reps=1
  seconds="${BENCH_SECONDS:-2}"
elif [ -n "${1:-}" ]; then
  echo "usage: scripts/bench.sh [--quick]" >&2
  exit 2
fi
sut_cpu="${SUT_CPU:-0}"
client_cpu="${CLIENT_CPU:-1}"

# The anchors and the pinning tool, from Debian, only where missing.
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || missing+=(nginx)
command -v taskset >/dev/null || missing+=(util-linux)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bench: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "bench: one core only; the system under test and the client share it" >&2
  sut_cpu=0
  client_cpu=0
fi

# Release builds of the engine and of the benches (the bench profile is the release one).
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
if ! cargo bench --locked -p engine --no-run --bench serve --bench mapping --bench sink --bench bulk --bench formats --bench push >"$out" 2>&1; then
  cat "$out" >&2
  exit 1
fi
echo "bench: $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); engine and nginx on core $sut_cpu, wrk and stand-ins on core $client_cpu; $reps repetition(s) of $seconds s"

# Cached search, /healthz, misses, fan-out, faults and push (benches/serve.rs).
BENCH_REPS="$reps" BENCH_SECONDS="$seconds" BENCH_SUT_CPU="$sut_cpu" \
  taskset -c "$client_cpu" cargo bench --locked -q -p engine --bench serve 2>&1 |
  grep -E '^(ratio:|reps|note:|thread .* panicked)' || true

# Mapping against serde, sink against Helios direct, record formats against JSON, queued
# push acceptance on Redis against the local queue (with Debian's redis-server), the Bulk
# Data import of 100,000 resources against a plain read (and its peak RSS against 10,000):
# their own benches' `ratio:` lines. The bulk bench's `engine run` on the system's core, its
# stand-in and plain reader on the client's.
for bench in mapping sink formats push bulk; do
  if [ "$bench" = bulk ]; then
    lines="$(BENCH_REPS="$reps" BENCH_SUT_CPU="$sut_cpu" taskset -c "$client_cpu" cargo bench --locked -q -p engine --bench bulk 2>/dev/null | grep -E '^ratio:' || true)"
    echo "${lines:-ratio: bulk: not measured (the bench printed no ratio: line)}"
    continue
  fi
  if [ "$bench" = sink ]; then
    # Helios, installed once per machine by scripts/tools.sh (a long build the first time).
    # shellcheck disable=SC1091
    if ! source scripts/tools.sh >/dev/null 2>&1; then
      echo "ratio: $bench: not measured (scripts/tools.sh failed: no Helios)"
      continue
    fi
    export HFS_BIN
  fi
  lines="$(cargo bench --locked -q -p engine --bench "$bench" 2>/dev/null | grep -E '^ratio:' || true)"
  if [ -n "$lines" ]; then
    echo "$lines"
  else
    echo "ratio: $bench: not measured (the bench printed no ratio: line)"
  fi
done
