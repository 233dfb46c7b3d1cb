#!/usr/bin/env bash
# Benchmark: `engine validate` on 1,000 generated definitions (copies of
# examples/drug-labels with their own names, each with its definition test), release build.
# Prints wall time and peak resident memory, and the same for one definition as a baseline
# (that run is mostly start-up: reading the binary, one definition, one FHIR version decoded).
#
# With BASELINE_ENGINE set (a release binary of another checkout, e.g. main) and
# BASELINE_EXAMPLE (that checkout's examples/drug-labels/connector.yaml), the baseline is
# measured in the same run, just before this build, so both see the same machine load.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --quiet -p engine
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
generate() { # generate <connector.yaml> <dir>
  mkdir -p "$2/one" "$2/many"
  for dir in one many; do
    cp -r examples/drug-labels/secrets examples/drug-labels/label.json examples/drug-labels/expected.json "$2/$dir/"
  done
  sed 's/name: drug-labels$/name: drug-labels-0/' "$1" > "$2/one/c0.yaml"
  for i in $(seq 0 999); do
    sed "s/name: drug-labels\$/name: drug-labels-$i/" "$1" > "$2/many/c$i.yaml"
  done
}
once() { # once <engine> <dir>: prints "ms kb"
  local start end
  start=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$work/t" "$1" validate "$2" > "$work/out"
  end=$(date +%s%N)
  echo "$(( (end - start) / 100000 )) $(cat "$work/t")"
}
measure() { # measure <label> <engine> <dir>, best of 5
  local best=99999999 rss=0 tenths kb
  for _ in 1 2 3 4 5; do
    read -r tenths kb < <(once "$2" "$3")
    [ "$tenths" -lt "$best" ] && best=$tenths
    [ "$kb" -gt "$rss" ] && rss=$kb
  done
  printf '%-26s %d.%d ms, peak RSS %d MiB (best of 5)\n' "$1" $((best / 10)) $((best % 10)) $((rss / 1024))
}
generate examples/drug-labels/connector.yaml "$work/this"
[ -n "${BASELINE_ENGINE:-}" ] && generate "${BASELINE_EXAMPLE:?set BASELINE_EXAMPLE too}" "$work/base"
for n in one many; do
  [ -n "${BASELINE_ENGINE:-}" ] && measure "baseline, $n:" "$BASELINE_ENGINE" "$work/base/$n"
  measure "this build, $n:" target/release/engine "$work/this/$n"
done
tail -1 "$work/out"
ls -l target/release/engine ${BASELINE_ENGINE:-} | awk '{ print "binary size:", $5, "bytes", $9 }'
