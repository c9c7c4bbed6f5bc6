//! pylon-xds: a YAML source of truth served to Envoy fleets over xDS.
//!
//! The crate is a pipeline, one module per stage; each stage knows only its
//! neighbours:
//!
//! `config` (YAML, validation, translation to Envoy protos) -> `resources`
//! (the typed protos of one revision) -> `snapshot` (checked for consistency,
//! encoded once, content-hashed versions) -> `cache` (the current snapshot
//! and each node's view of it; publishing wakes every open stream) ->
//! `server` (tonic; streams, nonces, ACK/NACK). No module imports one above
//! it. The cache knows no gRPC; the server knows no YAML and no `nodes:`
//! selection. The rules the server follows are in `docs/xds-protocol.md`.
//! `source`
//! watches the file and feeds the cache, keeping the last good revision on
//! disk through `state`, with `dns` resolving the host names of concise
//! endpoints; `registry` and `metrics` record what
//! streams hold; `admin` serves them; `app` wires everything for `main` and
//! for tests; `bootstrap` prints an Envoy bootstrap pointing at this server;
//! `render` shows what a node would receive, as protobuf JSON.
//! `etcd` is the other source of truth (a key watched by every replica, and
//! the `apply`, `history`, `diff` and `rollback` commands), with `diff`
//! comparing revisions resource by resource.

pub mod admin;
pub mod app;
pub mod bootstrap;
pub mod cache;
pub mod config;
pub mod diff;
pub mod dns;
pub mod etcd;
pub mod metrics;
pub mod registry;
pub mod render;
pub mod resources;
pub mod secrets;
pub mod selection;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod table;

pub use app::{serve, Running, ServeOptions};
