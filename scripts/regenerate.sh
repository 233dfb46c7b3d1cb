#!/usr/bin/env bash
# Regenerates every generated file that a test compares with what the code produces, after a
# change meant to change them (review the diff before committing it):
# - the expected diagnostics of the invalid definitions (engine/tests/invalid/*.expected) and
#   the expected FHIR or error of the mapping fixtures (engine/tests/fixtures/mapping/*/), by
#   the tests themselves in UPDATE_GOLDEN mode;
# - the JSON Schema of the format (schemas/connector.schema.json) and its reference
#   (docs/reference.md), by `engine schema`;
# - the generated Kubernetes and Istio parts of deploy/base (`engine manifests`; the other
#   files there are written by hand).
# On a tree where everything is current it changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

engine() { cargo run --locked --quiet -p engine -- "$@"; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# `capture FILE COMMAND...`: FILE becomes the output of COMMAND, only once it has succeeded.
capture() {
  local file="$1"
  shift
  "$@" > "$work/out"
  cat "$work/out" > "$file"
}

echo "== engine/tests/invalid/*.expected and engine/tests/fixtures/mapping/*/expected*"
UPDATE_GOLDEN=1 cargo test --locked --quiet -p engine --test suite -- invalid:: mapping::

echo "== schemas/connector.schema.json and docs/reference.md"
capture schemas/connector.schema.json engine schema
capture docs/reference.md engine schema --format markdown

echo "== deploy/base"
engine manifests connectors.d --out deploy/base

echo "regenerated; git status shows what changed"
