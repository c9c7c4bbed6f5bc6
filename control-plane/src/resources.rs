//! The typed Envoy v3 resources one revision of the source of truth becomes.
//!
//! This is the seam between `config` (YAML in) and `snapshot` (versioned,
//! encoded resources out): `config` produces a [`Resources`], `snapshot` checks
//! it for consistency and encodes it once.

use crate::selection::Policy;

/// The longest resource name served, in bytes. Validation refuses a config
/// with a longer cluster, listener or route configuration name, and the
/// server refuses a request naming a longer one (`server::limits`): a client
/// could not subscribe to it anyway.
pub const MAX_NAME_BYTES: usize = 1024;
use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};

/// Every resource of one config revision, as Envoy v3 protos.
///
/// Invariants (checked again by `snapshot::Snapshot::build`): names are unique
/// per kind; every EDS cluster has a `ClusterLoadAssignment` of the same name;
/// every cluster a listener or route names exists; every RDS route
/// configuration a listener names exists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// CDS resources. Pylon serves clusters as `type: EDS` over ADS.
    pub clusters: Vec<Cluster>,
    /// EDS resources, one per EDS cluster.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// LDS resources.
    pub listeners: Vec<Listener>,
    /// RDS resources referenced by HTTP listeners.
    pub routes: Vec<RouteConfiguration>,
    /// Which node receives which part of the resources (the `nodes:` section).
    pub policy: Policy,
}
