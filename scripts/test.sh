#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need (pinned,
# idempotent, see scripts/tools.sh), runs the Rust tests, and checks the shipped files with
# outside validators.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools.sh
source scripts/tools.sh

echo "== cargo test"
cargo test --locked --workspace

echo "== engine validate connectors.d examples"
cargo run --locked --quiet -p engine -- validate connectors.d examples --deny-warnings

echo "== definitions against the published schema, with check-jsonschema"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mapfile -t defs < <(find connectors.d examples -name '*.yaml' -o -name '*.yml' | sort)
"$VENV/bin/python" scripts/split-yaml.py "$work/ok" "${defs[@]}"
"$VENV/bin/check-jsonschema" --schemafile schemas/connector.schema.json "$work"/ok/*.json
# The same validator must also refuse what `engine validate` refuses.
printf 'apiVersion: fosps.gravitate-health.eu/v1\nkind: Source\nmetadata: {name: s}\nspec: {url: "http://x", timout: 1s}\n' > "$work/bad.yaml"
if "$VENV/bin/check-jsonschema" --schemafile schemas/connector.schema.json "$work/bad.yaml" > /dev/null; then
  echo "check-jsonschema accepted a definition with an unknown key" >&2
  exit 1
fi
echo "check-jsonschema refuses the unknown key, as engine validate does"

echo "== release build (the Dockerfile's build step)"
cargo build --locked --release -p engine

echo "== Dockerfile with hadolint"
"$VENV/bin/hadolint" Dockerfile

echo "== deploy/ against Kubernetes and Istio schemas"
cargo run --locked --quiet -p engine -- manifests connectors.d --out deploy/base --check ||
  { echo "deploy/base is stale: run scripts/regenerate.sh" >&2; exit 1; }
core=()
for kind in deployment service pdb hpa pvc configmap cronjobs networkpolicy; do core+=("deploy/base/$kind.yaml"); done
"$VENV/bin/kubernetes-validate" --strict --quiet "${core[@]}"
# The optional components' patches are valid objects of their own.
"$VENV/bin/kubernetes-validate" --strict --quiet deploy/components/shared-cache/deployment-patch.yaml \
  deploy/components/push-queue/deployment-patch.yaml
istio="engine/tests/data/istio-crd-schemas"
for pair in virtualservice:virtualservice_v1 authorizationpolicy:authorizationpolicy_v1 requestauthentication:requestauthentication_v1; do
  "$VENV/bin/check-jsonschema" --schemafile "$istio/${pair#*:}.json" "deploy/base/${pair%%:*}.yaml"
done

echo "== OpenAPI document with openapi-spec-validator"
cargo run --locked --quiet -p engine -- openapi connectors.d examples --prefix /connector/api > "$work/openapi.json"
"$VENV/bin/openapi-spec-validator" "$work/openapi.json"
echo "all checks passed"
