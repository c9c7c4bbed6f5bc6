#!/usr/bin/env python3
"""Side-by-side proxy benchmark: pylon-proxy vs Envoy, HAProxy and nginx.

Every proxy runs with one worker, pinned to CPU 0; the load generator (wrk or
iperf3) and the backends are pinned to the other CPUs. All traffic stays on
127.0.0.1. Each measurement is repeated ROUNDS times, interleaving proxies so
that machine noise hits all of them alike; the report gives medians and ratios
against the best peer.

Measured, through each proxy to one nginx backend:
  - HTTP/1.1 keep-alive requests per second and p99 latency (wrk), in three
    workloads: `small` (50 connections, a 2-byte body), `c1000` (1,000
    connections, the same body) and `1mib` (50 connections, 1 MiB bodies,
    also given in Gbit/s);
  - single-stream TCP throughput (iperf3, 1 stream) through each proxy's TCP
    passthrough to an iperf3 server;
  - idle RSS of each proxy with its configuration loaded, before any traffic.

Usage: bench/run.py [--rounds 5] [--duration 10] [--only pylon-proxy,envoy]
       [--workloads small,c1000,1mib] [--baseline PATH]
       [--markdown BENCHMARKS-results.md]
--baseline adds another pylon-proxy binary (say, a build of an earlier
commit) as `pylon-base`, interleaved with the others.
Needs: wrk, iperf3, haproxy, nginx (+ libnginx-mod-stream) from Debian
(`bench/install.sh`), Envoy in .venv (scripts/test.sh installs it) or
PYLON_ENVOY, and `cargo build --release -p data-plane`.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
HTTP_BACKEND = 19100
TCP_BACKEND = 19200
PORTS = {  # proxy -> (http listen, tcp listen, admin)
    "pylon-proxy": (19001, 19002, 19003),
    "envoy": (19011, 19012, 19013),
    "haproxy": (19021, 19022, 19023),
    "nginx": (19031, 19032, 19033),
    "pylon-base": (19041, 19042, 19043),
}
# name -> (wrk connections, path on the backend, response body bytes)
WORKLOADS = {
    "small": (50, "/", 2),
    "c1000": (1000, "/", 2),
    "1mib": (50, "/1m", 1 << 20),
}
BASELINE = None  # set by --baseline
NCPU = os.cpu_count() or 2
PROXY_CPU = "0"
LOAD_CPUS = ",".join(str(c) for c in range(1, NCPU)) if NCPU > 1 else "0"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def wait_port(port, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {HOST}:{port} after {timeout}s")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_rss_kib(pid):
    """RSS of a process and its children (nginx and haproxy fork workers)."""
    total = rss_kib(pid)
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        for child in out.split():
            total += tree_rss_kib(int(child))
    except OSError:
        pass
    return total


def cpu_seconds(pid):
    """User + system CPU time of a process and its children, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        for child in out.split():
            total += cpu_seconds(int(child))
    except (OSError, IndexError, ValueError):
        pass
    return total


def envoy_bin():
    env = os.environ.get("PYLON_ENVOY")
    if env:
        return env
    return os.path.join(ROOT, ".venv", "bin", "envoy")


def pylon_proxy_bin():
    return os.path.join(ROOT, "target", "release", "pylon-proxy")


# ---------------------------------------------------------------- configs

def envoy_yaml(http_port, tcp_port, admin_port):
    return f"""
admin:
  address: {{ socket_address: {{ address: {HOST}, port_value: {admin_port} }} }}
static_resources:
  listeners:
    - name: http
      address: {{ socket_address: {{ address: {HOST}, port_value: {http_port} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: http
                route_config:
                  name: local
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/" }}
                          route: {{ cluster: http_backend }}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
    - name: tcp
      address: {{ socket_address: {{ address: {HOST}, port_value: {tcp_port} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.tcp_proxy
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
                stat_prefix: tcp
                cluster: tcp_backend
  clusters:
    - name: http_backend
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: http_backend
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: {HOST}, port_value: {HTTP_BACKEND} }} }} }}
    - name: tcp_backend
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: tcp_backend
        endpoints:
          - lb_endpoints:
              - endpoint: {{ address: {{ socket_address: {{ address: {HOST}, port_value: {TCP_BACKEND} }} }} }}
"""


def haproxy_cfg(http_port, tcp_port, admin_port):
    return f"""
global
    nbthread 1
    maxconn 4096
defaults
    timeout connect 1s
    timeout client 60s
    timeout server 60s
frontend http
    mode http
    bind {HOST}:{http_port}
    default_backend http_backend
backend http_backend
    mode http
    http-reuse always
    server b1 {HOST}:{HTTP_BACKEND}
frontend tcp
    mode tcp
    bind {HOST}:{tcp_port}
    default_backend tcp_backend
backend tcp_backend
    mode tcp
    server t1 {HOST}:{TCP_BACKEND}
"""


def nginx_conf(http_port, tcp_port, admin_port, tmp, role="proxy"):
    stream_mod = "/usr/lib/nginx/modules/ngx_stream_module.so"
    load = f"load_module {stream_mod};" if os.path.exists(stream_mod) else ""
    common = f"""
{load}
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx-{role}.pid;
error_log {tmp}/nginx-{role}-error.log warn;
events {{ worker_connections 4096; }}
"""
    if role == "backend":
        return common + f"""
http {{
    access_log off;
    client_body_temp_path {tmp}/cb; proxy_temp_path {tmp}/pt; fastcgi_temp_path {tmp}/ft;
    uwsgi_temp_path {tmp}/ut; scgi_temp_path {tmp}/st;
    keepalive_requests 1000000;
    server {{
        listen {HOST}:{HTTP_BACKEND} backlog=4096;
        location / {{ return 200 "ok"; }}
        location = /1m {{ root {tmp}; try_files /1m =404; }}
    }}
}}
"""
    return common + f"""
http {{
    access_log off;
    client_body_temp_path {tmp}/cb2; proxy_temp_path {tmp}/pt2; fastcgi_temp_path {tmp}/ft2;
    uwsgi_temp_path {tmp}/ut2; scgi_temp_path {tmp}/st2;
    keepalive_requests 1000000;
    upstream http_backend {{ server {HOST}:{HTTP_BACKEND}; keepalive 64; keepalive_requests 1000000; }}
    server {{
        listen {HOST}:{http_port};
        location / {{
            proxy_pass http://http_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
stream {{
    server {{
        listen {HOST}:{tcp_port};
        proxy_pass {HOST}:{TCP_BACKEND};
    }}
}}
"""


# ---------------------------------------------------------------- processes

class Proc:
    def __init__(self, name, argv, cpus, log_path):
        self.name = name
        self.log = open(log_path, "w")
        self.p = subprocess.Popen(["taskset", "-c", cpus] + argv, stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        self.log.close()


def start_proxy(name, tmp):
    http_port, tcp_port, admin_port = PORTS[name]
    logf = os.path.join(tmp, f"{name}.log")
    if name in ("pylon-proxy", "pylon-base"):
        cfg = os.path.join(tmp, f"{name}.yaml")
        with open(cfg, "w") as f:
            f.write(envoy_yaml(http_port, tcp_port, admin_port))
        binary = BASELINE if name == "pylon-base" else pylon_proxy_bin()
        argv = [binary, "-c", cfg, "--concurrency", "1"]
    elif name == "envoy":
        cfg = os.path.join(tmp, "envoy.yaml")
        with open(cfg, "w") as f:
            f.write(envoy_yaml(http_port, tcp_port, admin_port))
        argv = [envoy_bin(), "-c", cfg, "--concurrency", "1", "--disable-hot-restart",
                "--log-level", "error"]
    elif name == "haproxy":
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_cfg(http_port, tcp_port, admin_port))
        argv = ["haproxy", "-db", "-f", cfg]
    elif name == "nginx":
        cfg = os.path.join(tmp, "nginx-proxy.conf")
        with open(cfg, "w") as f:
            f.write(nginx_conf(http_port, tcp_port, admin_port, tmp))
        argv = ["nginx", "-c", cfg, "-e", os.path.join(tmp, "nginx-proxy-stderr.log")]
    else:
        raise ValueError(name)
    proc = Proc(name, argv, PROXY_CPU, logf)
    wait_port(http_port)
    wait_port(tcp_port)
    return proc


# ---------------------------------------------------------------- measurements

def wrk(port, duration, pid, connections=50, path="/"):
    cpu0, t0 = cpu_seconds(pid), time.time()
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPUS, "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
         "--timeout", "10s", f"http://{HOST}:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = parse_latency(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_err = re.search(r"Socket errors: (.*)", out)
    if errors or sock_err:
        log(f"  wrk on {port}: {errors.group(0) if errors else ''} {sock_err.group(0) if sock_err else ''}")
    util = (cpu_seconds(pid) - cpu0) / (time.time() - t0)
    return rps, p99, util


def parse_latency(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000.0 if unit == "us" else v if unit == "ms" else v * 1000.0


def iperf(port, duration, pid):
    cpu0, t0 = cpu_seconds(pid), time.time()
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPUS, "iperf3", "-c", HOST, "-p", str(port), "-t", str(duration), "-J"],
        capture_output=True, text=True)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3 through {port}: {data['error']}")
    util = (cpu_seconds(pid) - cpu0) / (time.time() - t0)
    return data["end"]["sum_received"]["bits_per_second"] / 1e9, util


def main():
    global BASELINE
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--tcp-duration", type=int, default=5)
    ap.add_argument("--only", default="pylon-proxy,envoy,haproxy,nginx")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--baseline", help="another pylon-proxy binary, run as pylon-base")
    ap.add_argument("--no-tcp", action="store_true", help="skip the TCP (iperf3) runs")
    ap.add_argument("--markdown", help="write the results tables to this file")
    args = ap.parse_args()
    proxies = [p for p in args.only.split(",") if p]
    if args.baseline:
        BASELINE = os.path.abspath(args.baseline)
        proxies.append("pylon-base")
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w}: {', '.join(WORKLOADS)}")
    for tool in ["wrk", "iperf3", "taskset"] + [p for p in proxies if p in ("haproxy", "nginx")]:
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: run bench/install.sh")
    if "pylon-proxy" in proxies and not os.path.exists(pylon_proxy_bin()):
        sys.exit("build pylon-proxy first: cargo build --release -p data-plane")
    if "envoy" in proxies and not os.path.exists(envoy_bin()):
        sys.exit("Envoy not found: run scripts/test.sh once, or set PYLON_ENVOY")

    tmp = tempfile.mkdtemp(prefix="pylon-bench-")
    # nginx's workers drop root: they must be able to read the 1 MiB file.
    os.chmod(tmp, 0o755)
    backends = []
    running = {}
    results = {p: {"http": {w: {"rps": [], "p99": [], "cpu": []} for w in workloads},
                   "gbps": [], "tcp_cpu": [], "rss": None}
               for p in proxies}
    try:
        with open(os.path.join(tmp, "1m"), "wb") as f:
            f.write(b"x" * (1 << 20))
        with open(os.path.join(tmp, "nginx-backend.conf"), "w") as f:
            f.write(nginx_conf(0, 0, 0, tmp, role="backend"))
        backends.append(Proc("http-backend", ["nginx", "-c", os.path.join(tmp, "nginx-backend.conf"),
                                              "-e", os.path.join(tmp, "nginx-backend-stderr.log")],
                             LOAD_CPUS, os.path.join(tmp, "http-backend.log")))
        backends.append(Proc("tcp-backend", ["iperf3", "-s", "-B", HOST, "-p", str(TCP_BACKEND)],
                             LOAD_CPUS, os.path.join(tmp, "tcp-backend.log")))
        wait_port(HTTP_BACKEND)
        wait_port(TCP_BACKEND)
        for p in proxies:
            running[p] = start_proxy(p, tmp)
        time.sleep(2)  # let every proxy finish start-up work before reading its idle RSS
        for p in proxies:
            results[p]["rss"] = tree_rss_kib(running[p].p.pid) / 1024.0
            log(f"{p}: idle RSS {results[p]['rss']:.1f} MiB")
        for p in proxies:  # warm-up
            wrk(PORTS[p][0], 2, running[p].p.pid)
        for r in range(args.rounds):
            order = proxies[r % len(proxies):] + proxies[:r % len(proxies)]
            for w in workloads:
                conns, path, _ = WORKLOADS[w]
                for p in order:
                    rps, p99, util = wrk(PORTS[p][0], args.duration, running[p].p.pid, conns, path)
                    res = results[p]["http"][w]
                    res["rps"].append(rps)
                    res["p99"].append(p99)
                    res["cpu"].append(util)
                    log(f"round {r + 1} {w} {p}: {rps:,.0f} req/s, p99 {p99:.2f} ms, proxy CPU {util:.2f}")
            if args.no_tcp:
                continue
            for p in order:
                gbps, util = iperf(PORTS[p][1], args.tcp_duration, running[p].p.pid)
                results[p]["gbps"].append(gbps)
                results[p]["tcp_cpu"].append(util)
                log(f"round {r + 1} {p}: {gbps:.2f} Gbit/s, proxy CPU {util:.2f}")
    finally:
        for proc in list(running.values()) + backends:
            proc.stop()

    table = report(results, proxies, workloads, args)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    shutil.rmtree(tmp, ignore_errors=True)


def per_core(values, cpus):
    return statistics.median(v / max(c, 1e-6) for v, c in zip(values, cpus))


def report(results, proxies, workloads, args):
    med = statistics.median
    peers = [p for p in proxies if p not in ("pylon-proxy", "pylon-base")]
    lines = [
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {NCPU} CPUs, proxies pinned to CPU {PROXY_CPU}, "
        f"load and backends on CPUs {LOAD_CPUS}; {args.rounds} interleaved rounds of {args.duration} s (HTTP) and "
        f"{args.tcp_duration} s (TCP); medians.",
    ]
    for w in workloads:
        conns, path, size = WORKLOADS[w]
        big = size >= 1 << 20
        lines += [
            "",
            f"HTTP `{w}`: wrk -t1 -c{conns}, GET {path}, {size:,}-byte body.",
            "",
            "| proxy | req/s | p99 (ms) | proxy CPU (cores) | req/s per proxy core |"
            + (" Gbit/s | Gbit/s per proxy core |" if big else ""),
            "|---|---:|---:|---:|---:|" + ("---:|---:|" if big else ""),
        ]
        for p in proxies:
            res = results[p]["http"][w]
            rps, p99, cpu = med(res["rps"]), med(res["p99"]), med(res["cpu"])
            eff = per_core(res["rps"], res["cpu"])
            row = f"| {p} | {rps:,.0f} | {p99:.2f} | {cpu:.2f} | {eff:,.0f} |"
            if big:
                gbit = size * 8 / 1e9
                row += f" {rps * gbit:.2f} | {eff * gbit:.2f} |"
            lines.append(row)
        if "pylon-proxy" in proxies and peers:
            m = results["pylon-proxy"]["http"][w]
            m_eff = per_core(m["rps"], m["cpu"])
            for peer in peers:
                o = results[peer]["http"][w]
                lines.append(
                    f"- vs {peer}: {med(m['rps']) / med(o['rps']):.2f}x req/s, "
                    f"{m_eff / per_core(o['rps'], o['cpu']):.2f}x per proxy core, "
                    f"p99 {med(m['p99']):.2f} ms vs {med(o['p99']):.2f} ms.")
            if "pylon-base" in proxies:
                b = results["pylon-base"]["http"][w]
                lines.append(
                    f"- vs pylon-base: {med(m['rps']) / med(b['rps']):.2f}x req/s, "
                    f"{m_eff / per_core(b['rps'], b['cpu']):.2f}x per proxy core, "
                    f"p99 {med(m['p99']):.2f} ms vs {med(b['p99']):.2f} ms.")
    if not args.no_tcp:
        lines += [
            "",
            "TCP: iperf3, one stream.",
            "",
            "| proxy | Gbit/s | proxy CPU (cores) | Gbit/s per proxy core |",
            "|---|---:|---:|---:|",
        ]
        for p in proxies:
            r = results[p]
            lines.append(f"| {p} | {med(r['gbps']):.2f} | {med(r['tcp_cpu']):.2f} | "
                         f"{per_core(r['gbps'], r['tcp_cpu']):.2f} |")
    lines += ["", "| proxy | idle RSS (MiB) |", "|---|---:|"]
    for p in proxies:
        lines.append(f"| {p} | {results[p]['rss']:.1f} |")
    lines.append("")
    lines.append("Raw samples: " + json.dumps(results))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
