//! The typed Envoy v3 resources one revision of the source of truth becomes.
//!
//! This is the seam between `config` (YAML in) and `snapshot` (versioned,
//! encoded resources out): `config` produces a [`Resources`], `snapshot` checks
//! it for consistency and encodes it once.

use std::sync::{Arc, OnceLock};

use envoy_types::pb::google::protobuf::Any;
use prost::Message as _;

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
    /// Load assignments with host names among their endpoints: `endpoints`
    /// holds their IP endpoints only until `crate::dns` fills in the
    /// names' addresses.
    pub names: Vec<NamedAssignment>,
    /// Concise clusters already translated and encoded, kept by the reload
    /// memo from one revision to the next (`config::reuse`): each is an EDS
    /// cluster with a load assignment of its own name.
    pub encoded: Vec<Arc<Encoded>>,
}

/// One encoded resource, shared by every stream that sends it. Its name and
/// version are shared too: streams keep them (as subscribed names, as what a
/// client holds) without allocating copies. Built by `snapshot`.
#[derive(Debug, PartialEq)]
pub struct Resource {
    /// The resource name.
    pub name: Arc<str>,
    /// Content hash of the resource.
    pub version: Arc<str>,
    /// The encoded resource, ready for a response.
    pub body: Any,
}

/// A concise cluster as it is served: its EDS `Cluster` and its
/// `ClusterLoadAssignment` (of the same name), encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// The cluster's name, which is its load assignment's too.
    pub name: String,
    /// The `Cluster`, encoded.
    pub cluster: Vec<u8>,
    /// The `ClusterLoadAssignment`, encoded.
    pub endpoints: Vec<u8>,
    /// Where the cluster holds inline secrets (`crate::secrets::in_cluster`).
    pub inline_secrets: Vec<String>,
    /// The two as [`Resource`]s, once a snapshot has served them: later
    /// snapshots share them without looking at the bytes again.
    pub served: OnceLock<[Arc<Resource>; 2]>,
}

impl Resources {
    /// The same resources with every [`Encoded`] cluster decoded back into
    /// protos, and each kind in name order: what two reads of one revision
    /// are compared by (the order of a kind is not served).
    pub fn comparable(mut self) -> Resources {
        for e in std::mem::take(&mut self.encoded) {
            self.clusters
                .push(Cluster::decode(e.cluster.as_slice()).unwrap_or_default());
            self.endpoints
                .push(ClusterLoadAssignment::decode(e.endpoints.as_slice()).unwrap_or_default());
        }
        self.clusters.sort_by(|a, b| a.name.cmp(&b.name));
        self.endpoints
            .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        self.listeners.sort_by(|a, b| a.name.cmp(&b.name));
        self.routes.sort_by(|a, b| a.name.cmp(&b.name));
        self
    }
}

/// A load assignment (of a concise cluster or gRPC service) with endpoints
/// written as `host:port`, which EDS cannot carry: pylon-xds resolves them.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedAssignment {
    /// The `ClusterLoadAssignment`'s name.
    pub assignment: String,
    /// Its endpoints, in the order written.
    pub endpoints: Vec<NamedEndpoint>,
    /// How long after an answer its names are looked up again.
    pub refresh: std::time::Duration,
}

/// One endpoint of a [`NamedAssignment`].
#[derive(Debug, Clone, PartialEq)]
pub enum NamedEndpoint {
    /// An IP endpoint, served as written (boxed: much larger than a name).
    Fixed(Box<envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint>),
    /// A name: every address it resolves to becomes an endpoint with this
    /// port and weight.
    Name {
        host: String,
        port: u16,
        weight: u32,
    },
}
