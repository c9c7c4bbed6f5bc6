#!/usr/bin/env python3
"""pylon-xds against go-control-plane with the same fleet, in one interleaved run.

Runs target/release/examples/xds-fleet for every configuration (streams,
clusters, mode) once per server per round; round k starts with a different
server, so drift in machine load hits both alike. Prints, per configuration,
the medians of each server's figures and the ratios (go-control-plane divided
by pylon-xds: above 1 means pylon-xds needs less), then every raw JSON line.

Usage (release builds; see BENCHMARKS.md):

    cargo build --release -p control-plane --bin pylon-xds --example xds-fleet
    python3 bench/xds_compare.py --rounds 3 --edits 3 \\
        --streams 1000,10000 --clusters 100,1000 --modes sotw,delta

The peer is built by xds-fleet when missing (`go build`, see
bench/peers/go-control-plane).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "target/release/examples/xds-fleet"
PYLON = ROOT / "target/release/pylon-xds"
SERVERS = ["pylon-xds", "go-control-plane"]
FIELDS = [
    ("rss_per_stream_kib", "KiB per stream", "{:.1f}"),
    ("push_cpu_us_per_stream", "push CPU us per stream", "{:.1f}"),
    ("push_ms_median", "push wall ms", "{:.0f}"),
    ("sync_ms", "sync wall ms", "{:.0f}"),
    ("sync_cpu_s", "sync CPU s", "{:.2f}"),
]


def run(server, streams, clusters, mode, edits):
    cmd = [str(FLEET), "--server", str(PYLON), "--streams", str(streams),
           "--clusters", str(clusters), "--mode", mode, "--edits", str(edits)]
    if server == "go-control-plane":
        cmd += ["--peer", "go-control-plane"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"failed: {' '.join(cmd)}")
    sys.stderr.write(out.stdout)
    line = [l for l in out.stdout.splitlines() if l.startswith("json: ")][-1]
    return json.loads(line[len("json: "):])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--streams", default="1000,10000")
    ap.add_argument("--clusters", default="100,1000")
    ap.add_argument("--modes", default="sotw,delta")
    a = ap.parse_args()
    configs = [(int(s), int(c), m)
               for s in a.streams.split(",")
               for c in a.clusters.split(",")
               for m in a.modes.split(",")]
    results = {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for k in range(a.rounds):
        for cfg in configs:
            order = SERVERS[k % 2:] + SERVERS[:k % 2]
            for server in order:
                sys.stderr.write(f"==> round {k + 1}: {server} {cfg}\n")
                results.setdefault(cfg, {}).setdefault(server, []).append(
                    run(server, *cfg, a.edits))
    print(f"Run: {started}, {a.rounds} interleaved rounds, {a.edits} edits each "
          f"(push figures: the median edit of a run); medians of the rounds.\n")
    header = "| streams | clusters | mode | server | " + " | ".join(f[1] for f in FIELDS) + " |"
    print(header)
    print("|" + "---|" * 4 + "---:|" * len(FIELDS))
    ratios = []
    for cfg in configs:
        med = {}
        for server in SERVERS:
            runs = results[cfg][server]
            med[server] = {k: statistics.median(r[k] for r in runs) for k, _, _ in FIELDS}
            cells = " | ".join(fmt.format(med[server][k]) for k, _, fmt in FIELDS)
            print(f"| {cfg[0]:,} | {cfg[1]:,} | {cfg[2]} | {server} | {cells} |")
        p, g = med["pylon-xds"], med["go-control-plane"]
        ratios.append((cfg, {k: (g[k] / p[k] if p[k] else float("inf")) for k, _, _ in FIELDS}))
    print("\nRatios, go-control-plane / pylon-xds (above 1: pylon-xds needs less):\n")
    print("| streams | clusters | mode | " + " | ".join(f[1] for f in FIELDS) + " |")
    print("|" + "---|" * 3 + "---:|" * len(FIELDS))
    for cfg, r in ratios:
        cells = " | ".join(f"{r[k]:.1f}x" for k, _, _ in FIELDS)
        print(f"| {cfg[0]:,} | {cfg[1]:,} | {cfg[2]} | {cells} |")
    print("\nRaw:")
    for cfg in configs:
        for server in SERVERS:
            for r in results[cfg][server]:
                print(json.dumps(r, sort_keys=True))


if __name__ == "__main__":
    main()
