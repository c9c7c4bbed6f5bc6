#!/usr/bin/env node
// A proxyless gRPC client (@grpc/grpc-js with @grpc/grpc-js-xds's xds:
// resolver) driven over stdin/stdout, with the same protocol as
// ../grpc_client.py. Used by integration-tests/src/grpc_clients.rs; the xDS
// bootstrap comes from GRPC_XDS_BOOTSTRAP, set by the harness.
//
// Protocol: one command per line on stdin, one JSON line on stdout per command.
//
//   call TARGET N TIMEOUT_MS
//       N sequential unary calls to /pylon.test.Echo/Who on the client for
//       TARGET (e.g. xds:///greeter.example:50051), each with a deadline of
//       TIMEOUT_MS. Clients are created on first use and kept, one per target.
//       Answer: {"ok": {"<backend name>": count}, "errors": {"<status name>": count}}
//   quit
//       Closes the clients and exits (as does EOF on stdin).
//
// A malformed command is answered {"error": "<message>"}.

'use strict';

const readline = require('node:readline');
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const METHOD = '/pylon.test.Echo/Who';

// Status code number -> name (`UNAVAILABLE`), as grpcio's StatusCode names them.
const STATUS_NAMES = Object.fromEntries(
  Object.entries(grpc.status)
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => [v, k]),
);

// Requests and responses are raw bytes: identity (de)serialisation.
const identity = (buf) => buf;

const clients = new Map();

function clientFor(target) {
  let client = clients.get(target);
  if (client === undefined) {
    client = new grpc.Client(target, grpc.credentials.createInsecure());
    clients.set(target, client);
  }
  return client;
}

function callOnce(client, timeoutMs) {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      METHOD,
      identity,
      identity,
      Buffer.alloc(0),
      new grpc.Metadata(),
      { deadline: Date.now() + timeoutMs },
      (err, reply) => resolve({ err, reply }),
    );
  });
}

async function call(target, n, timeoutMs) {
  const client = clientFor(target);
  const ok = {};
  const errors = {};
  for (let i = 0; i < n; i++) {
    const { err, reply } = await callOnce(client, timeoutMs);
    if (err) {
      const name = STATUS_NAMES[err.code] ?? 'UNKNOWN';
      errors[name] = (errors[name] ?? 0) + 1;
    } else {
      const name = reply.toString('utf8');
      ok[name] = (ok[name] ?? 0) + 1;
    }
  }
  return { ok, errors };
}

async function handle(line) {
  const words = line.split(/\s+/);
  if (words.length !== 4 || words[0] !== 'call') {
    return { error: `unknown command ${JSON.stringify(line)}; expected \`call TARGET N TIMEOUT_MS\` or \`quit\`` };
  }
  const [, target, nText, timeoutText] = words;
  if (!/^\d+$/.test(nText) || !/^\d+$/.test(timeoutText)) {
    return { error: `N and TIMEOUT_MS must be non-negative integers in ${JSON.stringify(line)}` };
  }
  const n = Number(nText);
  const timeoutMs = Number(timeoutText);
  if (timeoutMs <= 0) {
    return { error: `TIMEOUT_MS must be > 0 in ${JSON.stringify(line)}` };
  }
  return call(target, n, timeoutMs);
}

function sortKeys(obj) {
  return Object.fromEntries(Object.entries(obj).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

async function main() {
  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  for await (const raw of rl) {
    const line = raw.trim();
    if (line === '') continue;
    if (line === 'quit') break;
    const answer = await handle(line);
    const out = answer.error !== undefined ? answer : { errors: sortKeys(answer.errors), ok: sortKeys(answer.ok) };
    process.stdout.write(JSON.stringify(out) + '\n');
  }
  rl.close();
  for (const client of clients.values()) client.close();
  // The xDS client keeps timers and its ADS stream alive: do not wait for them.
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`grpc_client.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
