#!/usr/bin/env bash
# Property-based tests of the live HTTP API with schemathesis: the release engine serves
# examples/ (its upstream replaced by a stand-in on 127.0.0.1:9101), and schemathesis drives
# every operation of the engine's own /openapi.json, checking for 5xx answers and answers that
# break the document. Bounded: 30 examples per operation.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools.sh
source scripts/tools.sh
if [ "$("$VENV/bin/pip" show schemathesis 2>/dev/null | sed -n 's/^Version: //p')" != "4.32.5" ]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5
fi
cargo build --locked --release --quiet -p engine
work="$(mktemp -d)"
python3 scripts/standin-labels.py 9101 & standin=$!
target/release/engine serve examples --listen 127.0.0.1:18099 --state-dir "$work/state" --log warn & engine=$!
trap 'kill $standin $engine 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do target/release/engine probe http://127.0.0.1:18099/healthz 2>/dev/null && break; sleep 0.1; done
"$VENV/bin/schemathesis" run http://127.0.0.1:18099/openapi.json \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples 30 --workers 2 --seed 1 "$@"
