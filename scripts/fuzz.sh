#!/usr/bin/env bash
# Runs one cargo-fuzz target (or all of them) for a bounded time.
#
#   ./scripts/fuzz.sh [TARGET|all] [SECONDS]      default: all, 300 s each
#
# Targets (fuzz/fuzz_targets/): config_yaml (pylon-xds's YAML loader, both
# forms), proxy_bootstrap (pylon-proxy's Envoy bootstrap reader), xds_resource
# (pylon-proxy's xDS resource conversion), config_reuse (the reload shortcut
# against reading the whole file, on two revisions), identity_glob. Needs the nightly toolchain
# (`rustup toolchain install nightly`) and cargo-fuzz (`cargo install
# cargo-fuzz --locked`; installed here if missing). Corpora start from the
# examples and are kept in fuzz/corpus/ (git-ignored); a crash is saved in
# fuzz/artifacts/TARGET/ and must become a regression test in the crate it
# concerns. Not part of CI (see docs/fuzzing.md for figures).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

target="${1:-all}"
seconds="${2:-300}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked
fi

seed() {
    local t="$1" dir="fuzz/corpus/$1"
    mkdir -p "$dir"
    case "$t" in
        config_yaml) cp examples/*.yaml "$dir/" ;;
        config_reuse)
            # Each example followed by itself with one endpoint moved, and
            # a file of 20 clusters with one endpoint moved.
            for f in examples/*.yaml; do
                { cat "$f"; printf '\xff'; sed 's/127.0.0.1:/127.0.0.9:/' "$f"; } >"$dir/$(basename "$f" .yaml).edit"
            done
            {
                printf 'clusters:\n'
                for i in $(seq 0 19); do printf '  - name: c-%d\n    endpoints: [127.0.0.1:%d]\n' "$i" $((10000 + i)); done
                printf '\xff'
                printf 'clusters:\n'
                for i in $(seq 0 19); do printf '  - name: c-%d\n    endpoints: [127.0.0.1:%d]\n' "$i" $((i == 0 ? 20000 : 10000 + i)); done
            } >"$dir/fleet.edit"
            ;;
        proxy_bootstrap)
            for id in a b; do
                cargo run --quiet -p control-plane --bin pylon-xds -- bootstrap --node-id "$id" >"$dir/bootstrap-$id.yaml"
            done
            cargo run --quiet -p control-plane --bin pylon-xds -- bootstrap --node-id d --delta >"$dir/bootstrap-delta.yaml"
            ;;
        xds_resource | identity_glob) : ;;
    esac
}

run() {
    local t="$1"
    seed "$t"
    echo "==> fuzzing $t for ${seconds}s"
    # -rss_limit_mb: the loaders are bounded; a run over 2 GB is a finding.
    cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30
}

if [[ "$target" == all ]]; then
    for t in config_yaml config_reuse proxy_bootstrap xds_resource identity_glob; do run "$t"; done
else
    run "$target"
fi
