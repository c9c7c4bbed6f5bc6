//! Pylon's shared foundation: the descriptor set compiled from `proto/`, the
//! xDS protocol constants and resource types every crate uses, and the small process plumbing both
//! binaries share: the admin HTTP server, accept loops that back off when
//! descriptors run out, the descriptor limit, rate-limited log lines, logging
//! set-up.
//!
//! This crate owns no proxy or control-plane behaviour. The control plane
//! (`control-plane`) and the data plane (`data-plane`) depend on it; it
//! depends on neither.

pub mod accept;
pub mod admin_http;
pub mod limits;
pub mod logging;
pub mod resource_type;
pub mod throttle;
pub mod tls;
pub mod type_url;
pub mod yaml;

pub use resource_type::{PerType, ResourceType};

use std::sync::OnceLock;

use prost_reflect::DescriptorPool;

/// The encoded `FileDescriptorSet` of `proto/` and the Envoy protos it imports.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pylon_descriptor.bin"));

/// A freshly decoded descriptor pool, owned by the caller.
///
/// For one-off parsing (pylon-proxy reads its bootstrap once): the pool takes
/// several megabytes, which are given back when it is dropped.
pub fn decode_descriptor_pool() -> Result<DescriptorPool, prost_reflect::DescriptorError> {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET)
}

/// The descriptor pool decoded from [`FILE_DESCRIPTOR_SET`], shared.
///
/// Decoded once on first use and kept: for a process that parses Envoy YAML
/// repeatedly (pylon-xds on every reload). It is immutable data compiled into
/// the binary, not process state, so sharing it does not couple two servers in
/// one process.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The bytes were produced by protox in build.rs from the same sources, so
        // a decode failure is a build defect, not an input error.
        #[allow(clippy::expect_used)]
        DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("descriptor set built by build.rs decodes")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_set_has_the_native_types() {
        let pool = descriptor_pool();
        for name in [
            "envoy.config.bootstrap.v3.Bootstrap",
            "envoy.config.cluster.v3.Cluster",
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        ] {
            assert!(pool.get_message_by_name(name).is_some(), "{name} missing");
        }
    }
}
