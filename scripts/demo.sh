#!/usr/bin/env bash
# The whole thing on loopback: pylon-xds serving examples/front-proxy.yaml,
# pylon-proxy subscribed to it over ADS, and four small demo backends.
# Ctrl-C stops everything.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

cargo build --release -p control-plane -p data-plane -p integration-tests --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
CONFIG="${1:-examples/front-proxy.yaml}"

pids=()
stop() {
    trap - INT TERM EXIT
    echo
    echo "stopping..."
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "stopped"
}
trap stop INT TERM EXIT

"$BIN/pylon-demo-backends" \
    127.0.0.1:8081=service1-replica1 127.0.0.1:8082=service1-replica2 \
    127.0.0.1:8083=service1-replica3 127.0.0.1:8084=service2 &
pids+=($!)
"$BIN/pylon-xds" serve --config "$CONFIG" --listen 127.0.0.1:18000 --admin 127.0.0.1:19000 &
pids+=($!)
"$BIN/pylon-proxy" --xds 127.0.0.1:18000 --node-id demo --admin 127.0.0.1:9901 &
pids+=($!)

for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null 127.0.0.1:9901/ready 2>/dev/null; then break; fi
    sleep 0.1
done

cat <<MSG

Pylon demo is running ($CONFIG):
  curl 127.0.0.1:8000/service/1        round robin over three replicas
  curl 127.0.0.1:8000/service/2        one replica
  curl 127.0.0.1:9901/clusters         pylon-proxy admin (Envoy-compatible): also /stats, /stats/prometheus, /listeners, /config_dump, /ready
  curl 127.0.0.1:19000/status          pylon-xds status; or: $BIN/pylon-xds status
Edit $CONFIG and watch the change arrive; Ctrl-C stops everything.

MSG
wait
