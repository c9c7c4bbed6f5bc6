#!/usr/bin/env bash
# The whole thing on loopback: pylon-xds serving examples/front-proxy.yaml
# (or the config given as the first argument, relative to where you run
# this), pylon-proxy subscribed to it over ADS, and four small demo backends.
#
# Each part must come up, or the demo stops everything it started, prints
# that part's log and exits 1: a busy port (another pylon-xds on 18000, say)
# never leaves pylon-proxy talking to a stranger. Ctrl-C stops everything.
#
# PYLON_BIN_DIR=target/debug uses already built binaries instead of building
# release ones (the tests do this).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The config path is the caller's: resolve it before leaving their directory.
if [[ $# -gt 0 ]]; then
    CONFIG="$(realpath -m -- "$1")"
else
    CONFIG="$ROOT/examples/front-proxy.yaml"
fi
if [[ ! -f "$CONFIG" ]]; then
    echo "demo: config file not found: $CONFIG" >&2
    exit 1
fi
cd "$ROOT"

if [[ -n "${PYLON_BIN_DIR:-}" ]]; then
    BIN="$(realpath -- "$PYLON_BIN_DIR")"
else
    cargo build --release -p control-plane -p data-plane -p integration-tests --bins
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
fi

LOGS="$(mktemp -d "${TMPDIR:-/tmp}/pylon-demo.XXXXXX")"
pids=()
stop() {
    trap - INT TERM EXIT
    echo
    echo "stopping..."
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped (logs in $LOGS)"
}
trap stop INT TERM EXIT

# fail PART LOG MESSAGE: says what failed, shows the part's log, stops all.
fail() {
    echo >&2
    echo "demo: $1 did not start: $3" >&2
    echo "--- last lines of $2:" >&2
    tail -n 20 "$2" >&2 || true
    exit 1
}

# ready PART PID LOG URL [LINE]: waits (10 s) until LOG has LINE (when
# given) and URL answers 2xx, while PID lives. LINE makes sure the answer
# comes from this process, not from another one on the same port.
ready() {
    local part="$1" pid="$2" log="$3" url="$4" line="${5:-}"
    for _ in $(seq 1 100); do
        if ! kill -0 "$pid" 2>/dev/null; then
            fail "$part" "$log" "it exited"
        fi
        if { [[ -z "$line" ]] || grep -qF "$line" "$log"; } &&
            curl -fsS -o /dev/null "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    fail "$part" "$log" "$url did not answer within 10 s"
}

"$BIN/pylon-demo-backends" \
    127.0.0.1:8081=service1-replica1 127.0.0.1:8082=service1-replica2 \
    127.0.0.1:8083=service1-replica3 127.0.0.1:8084=service2 >"$LOGS/backends.log" 2>&1 &
pids+=($!)
for port in 8081 8082 8083 8084; do
    ready "the demo backends" "${pids[-1]}" "$LOGS/backends.log" "127.0.0.1:$port/"
done

"$BIN/pylon-xds" serve --config "$CONFIG" --listen 127.0.0.1:18000 --admin 127.0.0.1:19000 \
    --state-dir "$LOGS/state" >"$LOGS/pylon-xds.log" 2>&1 &
pids+=($!)
# pylon-xds logs this once both its ports are bound.
ready "pylon-xds" "${pids[-1]}" "$LOGS/pylon-xds.log" 127.0.0.1:19000/readyz "xDS (ADS"
# The admin that answered is this pylon-xds's, serving this config.
if ! curl -fsS 127.0.0.1:19000/status | grep -qF "\"config\": \"$CONFIG\""; then
    fail "pylon-xds" "$LOGS/pylon-xds.log" "127.0.0.1:19000 is answered by another pylon-xds"
fi

"$BIN/pylon-proxy" --xds 127.0.0.1:18000 --node-id demo --admin 127.0.0.1:9901 \
    >"$LOGS/pylon-proxy.log" 2>&1 &
pids+=($!)
ready "pylon-proxy" "${pids[-1]}" "$LOGS/pylon-proxy.log" 127.0.0.1:9901/ready

cat <<MSG

Pylon demo is running ($CONFIG; logs in $LOGS):
  curl 127.0.0.1:8000/service/1        round robin over three replicas
  curl 127.0.0.1:8000/service/2        one replica
  curl 127.0.0.1:9901/clusters         pylon-proxy admin (Envoy-compatible): also /stats, /stats/prometheus, /listeners, /config_dump, /ready
  curl 127.0.0.1:19000/status          pylon-xds status; or: $BIN/pylon-xds status
Edit $CONFIG and watch the change arrive; Ctrl-C stops everything.

MSG
# Until Ctrl-C, or until any part exits on its own (which stops the rest).
wait -n "${pids[@]}" || true
echo "demo: a part exited; stopping the rest" >&2
exit 1
