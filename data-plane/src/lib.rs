//! pylon-proxy: a small Envoy-compatible proxy fed over ADS.
//!
//! The crate is a pipeline: `xds` (ADS client, SotW and delta; ACK/NACK) ->
//! `model` (validated types; no protos past this point) -> `runtime` (the
//! config in force: clusters with their hosts, load balancers and health
//! checkers; listeners with their accept loops) -> `listener` (TCP proxy and
//! HTTP connection handling) -> `upstream`. `admin` only reads. `bootstrap`
//! reads the subset of Envoy's bootstrap that pylon-proxy supports.

pub mod admin;
pub mod bootstrap;
pub mod http1;
pub mod listener;
pub mod model;
pub mod runtime;
pub mod stats;
pub mod upstream;
pub mod xds;
