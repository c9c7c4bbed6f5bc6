//! pylon-proxy: a small Envoy-compatible proxy fed over ADS.
//!
//! `app` runs one proxy from a plan: it applies the static resources, lays
//! xDS updates over them, serves the admin API and owns the drain order.
//! Under it the crate is a pipeline: `xds` (ADS client, SotW and delta;
//! ACK/NACK) -> `model` (validated types; no protos past this point; the
//! files a resource names are read there) -> `runtime` (the config in force:
//! clusters with their hosts, load balancers and health checkers; listeners
//! with their accept loops) -> `listener` (TCP proxy and HTTP connection
//! handling) -> `upstream`. `admin` only reads. `bootstrap` reads the subset
//! of Envoy's bootstrap that pylon-proxy supports.

pub mod admin;
pub mod app;
pub mod bootstrap;
pub mod http1;
pub mod listener;
pub mod model;
pub mod runtime;
pub mod stats;
pub mod upstream;
pub mod xds;
