#!/usr/bin/env python3
"""A proxyless gRPC client (grpcio, xds:/// resolver) driven over stdin/stdout.

Used by integration-tests/src/grpc_clients.rs. The xDS bootstrap comes from
GRPC_XDS_BOOTSTRAP, set by the harness; this script knows nothing of it.

Protocol: one command per line on stdin, one JSON line on stdout per command.

  call TARGET N TIMEOUT_MS
      Makes N sequential unary calls to /pylon.test.Echo/Who on the channel
      for TARGET (e.g. xds:///greeter.example:50051), each with a deadline of
      TIMEOUT_MS. Channels are created on first use and kept, one per target,
      so later calls see the xDS updates the channel received meanwhile.
      Answer: {"ok": {"<backend name>": count, ...},
               "errors": {"<StatusCode name>": count, ...}}
  quit
      Closes the channels and exits (as does EOF on stdin).

A malformed command is answered {"error": "<message>"}.
"""

import json
import sys

import grpc

METHOD = "/pylon.test.Echo/Who"


class Client:
    def __init__(self):
        self.channels = {}

    def stub(self, target):
        entry = self.channels.get(target)
        if entry is None:
            channel = grpc.insecure_channel(target)
            # No serializers: requests and responses are raw bytes.
            entry = (channel, channel.unary_unary(METHOD))
            self.channels[target] = entry
        return entry[1]

    def call(self, target, n, timeout_ms):
        stub = self.stub(target)
        ok, errors = {}, {}
        for _ in range(n):
            try:
                reply = stub(b"", timeout=timeout_ms / 1000.0)
            except grpc.RpcError as err:
                code = err.code()
                key = code.name if code is not None else "UNKNOWN"
                errors[key] = errors.get(key, 0) + 1
                continue
            name = reply.decode("utf-8", errors="replace")
            ok[name] = ok.get(name, 0) + 1
        return {"ok": ok, "errors": errors}

    def close(self):
        for channel, _ in self.channels.values():
            channel.close()
        self.channels.clear()


def handle(client, line):
    words = line.split()
    if len(words) != 4 or words[0] != "call":
        return {"error": f"unknown command {line!r}; expected `call TARGET N TIMEOUT_MS` or `quit`"}
    target = words[1]
    try:
        n, timeout_ms = int(words[2]), int(words[3])
    except ValueError:
        return {"error": f"N and TIMEOUT_MS must be integers in {line!r}"}
    if n < 0 or timeout_ms <= 0:
        return {"error": f"N must be >= 0 and TIMEOUT_MS > 0 in {line!r}"}
    return client.call(target, n, timeout_ms)


def main():
    client = Client()
    try:
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            if line == "quit":
                break
            answer = handle(client, line)
            sys.stdout.write(json.dumps(answer, sort_keys=True) + "\n")
            sys.stdout.flush()
    finally:
        client.close()


if __name__ == "__main__":
    main()
