#!/usr/bin/env python3
"""User-space instructions per proxied request of pylon-proxy, under callgrind.

Wall-clock numbers on a shared machine are noisy; instruction counts are not.
This runs the HTTP setup of bench/run.py (one nginx backend answering a 2-byte
body, pylon-proxy with one worker) with pylon-proxy under
`valgrind --tool=callgrind`, warms up, zeroes the counters, drives wrk
(50 connections) for a while, dumps the counters and prints instructions per
request, followed by the functions that cost the most (exclusive).
Kernel time (about two thirds of the proxy's CPU on loopback) is not counted.

Usage: bench/callgrind.py [--binary target/release/pylon-proxy] [--duration 10]
       [--connections 50] [--path /] [--top 30] [--out DIR]
(`--path /1m` measures 1 MiB responses, as bench/run.py's `1mib` workload.)
Needs: valgrind, wrk, nginx, and `cargo build --release -p data-plane`.
"""

import argparse
import collections
import glob
import importlib.util
import os
import re
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("bench_run", os.path.join(HERE, "run.py"))
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)


def wrk(port, duration, connections=50, path="/"):
    out = subprocess.run(
        ["taskset", "-c", run.LOAD_CPUS, "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
         f"http://{run.HOST}:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        run.log(out)
    return int(re.search(r"(\d+) requests in", out).group(1))


def exclusive_costs(path):
    """Exclusive Ir per function of an uncompressed callgrind dump."""
    excl = collections.Counter()
    fn, in_call = None, False
    with open(path) as f:
        for line in f:
            if line.startswith("fn="):
                fn = line[3:].rstrip("\n")
            elif line.startswith("calls="):
                in_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if in_call:
                    in_call = False  # the line after calls= is the call's inclusive cost
                elif fn and len(parts) >= 2:
                    excl[fn] += int(parts[1])
    return excl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=run.pylon_proxy_bin())
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--path", default="/")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", help="keep the callgrind dump in this directory")
    args = ap.parse_args()
    tmp = args.out or tempfile.mkdtemp(prefix="pylon-callgrind-")
    # nginx's workers drop root: they must be able to read the 1 MiB file.
    os.chmod(tmp, 0o755)
    os.makedirs(tmp, exist_ok=True)
    for old in glob.glob(os.path.join(tmp, "callgrind.out.*")):
        os.remove(old)
    with open(os.path.join(tmp, "1m"), "wb") as f:
        f.write(b"x" * (1 << 20))
    with open(os.path.join(tmp, "nginx-backend.conf"), "w") as f:
        f.write(run.nginx_conf(0, 0, 0, tmp, role="backend"))
    http_port, tcp_port, admin_port = run.PORTS["pylon-proxy"]
    cfg = os.path.join(tmp, "pylon-proxy.yaml")
    with open(cfg, "w") as f:
        f.write(run.envoy_yaml(http_port, tcp_port, admin_port))
    backend = run.Proc("http-backend", ["nginx", "-c", os.path.join(tmp, "nginx-backend.conf"),
                                        "-e", os.path.join(tmp, "nginx-backend-stderr.log")],
                       run.LOAD_CPUS, os.path.join(tmp, "http-backend.log"))
    proxy = run.Proc("pylon-proxy",
                     ["valgrind", "--tool=callgrind", "--dump-instr=no", "--compress-strings=no",
                      "--compress-pos=no", f"--callgrind-out-file={tmp}/callgrind.out.%p",
                      args.binary, "-c", cfg, "--concurrency", "1"],
                     run.PROXY_CPU, os.path.join(tmp, "pylon-proxy.log"))
    try:
        run.wait_port(run.HTTP_BACKEND)
        run.wait_port(http_port, timeout=60)
        wrk(http_port, 3, args.connections, args.path)  # warm-up: connections, allocator, caches
        time.sleep(0.5)
        pid = str(proxy.p.pid)  # taskset execs valgrind in place
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        requests = wrk(http_port, args.duration, args.connections, args.path)
        time.sleep(0.3)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        time.sleep(0.5)
    finally:
        proxy.stop()
        backend.stop()
    dumps = sorted(glob.glob(os.path.join(tmp, "callgrind.out.*.*")))
    if not dumps:
        raise SystemExit(f"no callgrind dump in {tmp}")
    excl = exclusive_costs(dumps[-1])
    total = sum(excl.values())
    print(f"{requests} requests, {total:,} instructions, {total / requests:,.0f} per request"
          f" (dump: {dumps[-1]})")
    for fn, cost in excl.most_common(args.top):
        print(f"{cost / requests:8.0f} {100 * cost / total:5.1f}%  {fn[:160]}")


if __name__ == "__main__":
    main()
