#!/usr/bin/env python3
"""gRPC test backends for the proxyless scenarios (integration-tests/tests/proxyless.rs).

Usage: grpc_backends.py NAME=PORT [NAME=PORT ...]

Starts one gRPC server per argument on 127.0.0.1:PORT. Each answers the unary
method /pylon.test.Echo/Who with its own NAME as UTF-8 bytes, so a client can
tell which backend served a call. There is no generated code: requests and
responses are raw bytes (no serializer on either side).

Prints READY on stdout once every server listens. Exits on stdin EOF (the
harness holds stdin open, so the servers die with the test process) or on
SIGTERM/SIGINT. A port that cannot be bound is reported on stderr as
"bind failed: NAME=PORT" and exits with status 2, so the harness can retry
with other ports.
"""

import signal
import sys
from concurrent import futures

import grpc

SERVICE = "pylon.test.Echo"
METHOD = "Who"


def parse_args(argv):
    backends = []
    for arg in argv:
        name, sep, port = arg.partition("=")
        if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
            sys.exit(f"usage: grpc_backends.py NAME=PORT...; bad argument {arg!r}")
        backends.append((name, int(port)))
    if not backends:
        sys.exit("usage: grpc_backends.py NAME=PORT...")
    return backends


def start_server(name, port):
    answer = name.encode("utf-8")

    def who(_request, _context):
        return answer

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(who)}
    )
    # SO_REUSEPORT is on by default in gRPC: off, so that a port someone else
    # holds fails the bind instead of silently sharing it.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        handlers=[handler],
        options=[("grpc.so_reuseport", 0)],
    )
    try:
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
    except RuntimeError:
        bound = 0
    if bound != port:
        print(f"bind failed: {name}={port}", file=sys.stderr, flush=True)
        sys.exit(2)
    server.start()
    return server


def main():
    backends = parse_args(sys.argv[1:])

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    servers = []
    try:
        for name, port in backends:
            servers.append(start_server(name, port))
        print("READY", flush=True)
        # Block until the harness closes stdin (or goes away).
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        for server in servers:
            server.stop(grace=None)


if __name__ == "__main__":
    main()
