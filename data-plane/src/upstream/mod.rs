//! Upstream side: clusters, hosts, load balancing, health checking and
//! connections to hosts.
//!
//! Owns everything between "this request/connection goes to cluster X" and an
//! open connection to one of X's hosts:
//! - [`cluster`]: cluster versions, the cluster manager (CDS/EDS reconciliation)
//!   and the [`ClusterSlot`]s through which the request path reaches a cluster;
//! - [`stats`]: the cluster's stats, which every part below counts in;
//! - [`connect`]: opening connections within `max_connections`;
//! - [`host`]: hosts with atomic stats and health flags;
//! - [`lb`]: weighted round robin with the panic threshold, lock-free picks;
//! - [`dns`]: the hosts of STRICT_DNS and LOGICAL_DNS clusters, from DNS;
//! - [`health`]: active TCP/HTTP health checks with Envoy's state machine;
//! - [`tls`]: TLS to hosts, for health checks;
//! - [`outlier`]: outlier detection (passive health checks) with Envoy's
//!   ejection algorithm;
//! - [`client`]: the HTTP/1.1 client of the request path (one connection,
//!   driven by the request's own task);
//! - [`pool`]: idle HTTP/1.1 connections per host and per worker, and the
//!   request circuit breakers;
//! - [`replay`]: request bodies kept so that a retry can send them again.
//!
//! Imports run one way, from `cluster` down: `cluster` uses discovery
//! (`dns`, which feeds it through the [`dns::Fed`] trait rather than
//! importing it), health (`health`, `outlier`), selection (`lb`) and
//! connections (`pool` -> `client` -> `connect`), and those use `host`,
//! `lb`, `tls` and `stats` only; `host` (which keeps each host's outlier
//! counters for `outlier` to change) imports nothing of `upstream`. No
//! module imports one that imports it. Check with
//! `grep -n "crate::upstream::" data-plane/src/upstream/*.rs`.
//!
//! Does not own listeners, routing or the config in force (see `listener` and
//! `runtime`).

pub mod client;
pub mod cluster;
pub mod connect;
pub mod dns;
pub mod health;
pub mod host;
pub mod lb;
pub mod outlier;
pub mod pool;
pub mod replay;
pub mod stats;
pub mod tls;

pub use cluster::{Cluster, ClusterManager, ClusterSlot, RetryGuard};
pub use connect::{ConnectError, UpstreamCx};
pub use host::Host;
pub use stats::ClusterStats;
