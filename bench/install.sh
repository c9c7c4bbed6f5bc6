#!/usr/bin/env bash
# Installs the benchmark's peers and load generators from Debian's packages.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq haproxy nginx libnginx-mod-stream wrk iperf3 util-linux procps
# The packages start system services on some images; the benchmark runs its own.
service nginx stop >/dev/null 2>&1 || true
service haproxy stop >/dev/null 2>&1 || true
