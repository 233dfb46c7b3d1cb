#!/usr/bin/env bash
# Benchmark: `engine validate` on 1,000 generated definitions (copies of
# examples/drug-labels with their own names, each with its definition test), release build.
# Prints wall time and peak resident memory, and the same for one definition as a baseline.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --release --quiet -p engine
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/one" "$work/many"
for dir in one many; do
  cp -r examples/drug-labels/secrets examples/drug-labels/label.json examples/drug-labels/expected.json "$work/$dir/"
done
sed 's/name: drug-labels$/name: drug-labels-0/' examples/drug-labels/connector.yaml > "$work/one/c0.yaml"
for i in $(seq 0 999); do
  sed "s/name: drug-labels\$/name: drug-labels-$i/" examples/drug-labels/connector.yaml > "$work/many/c$i.yaml"
done
measure() {
  local best=999999 rss=0
  for _ in 1 2 3 4 5; do
    /usr/bin/time -f "%e %M" -o "$work/t" target/release/engine validate "$1" > "$work/out"
    read -r secs kb < "$work/t"
    ms=$(awk -v s="$secs" 'BEGIN { printf "%d", s * 1000 }')
    [ "$ms" -lt "$best" ] && best=$ms
    [ "$kb" -gt "$rss" ] && rss=$kb
  done
  echo "$best $rss"
}
read -r one_ms one_kb < <(measure "$work/one")
read -r many_ms many_kb < <(measure "$work/many")
tail -1 "$work/out"
echo "1 definition:      ${one_ms} ms, peak RSS $((one_kb / 1024)) MiB (best of 5)"
echo "1000 definitions:  ${many_ms} ms, peak RSS $((many_kb / 1024)) MiB (best of 5)"
