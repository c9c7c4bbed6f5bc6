//! Who is connected and what each stream holds: the data behind `/nodes`,
//! `pylon-xds status` and the NACK metrics.
//!
//! Streams register themselves and update their entry as they send responses
//! and receive ACKs and NACKs; an entry disappears when its stream ends (the
//! [`StreamGuard`] is dropped). Readers take a consistent copy with
//! [`Registry::list`]. What a client holds and subscribes to is shared with
//! the stream's own state (`Arc`), so an entry costs no copy of it; the copy
//! `list` makes is of pointers.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use envoy_types::pb::google::protobuf::Any;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::metrics::{Metrics, NackLabels};
use crate::snapshot::{ResourceMap, ResourceType};

/// What a client holds of one type. Shared with the stream's own state (and,
/// for a SotW wildcard stream, with the snapshot), never copied per stream.
#[derive(Debug, Clone, Default)]
pub enum Held {
    /// Nothing sent or declared yet.
    #[default]
    Nothing,
    /// SotW: the resources of the last response.
    Sent(ResourceMap),
    /// Delta: name -> version of everything the client holds (sent, or
    /// declared in `initial_resource_versions`).
    Versions(Arc<HashMap<Arc<str>, Arc<str>>>),
}

impl Held {
    /// Number of resources held.
    pub fn len(&self) -> usize {
        match self {
            Held::Nothing => 0,
            Held::Sent(m) => m.len(),
            Held::Versions(m) => m.len(),
        }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The version held of `name`.
    pub fn version(&self, name: &str) -> Option<&str> {
        match self {
            Held::Nothing => None,
            Held::Sent(m) => m.get(name).map(|r| &*r.version),
            Held::Versions(m) => m.get(name).map(|v| &**v),
        }
    }

    /// The resource as it was sent, when the stream keeps it (SotW).
    pub fn body(&self, name: &str) -> Option<&Any> {
        match self {
            Held::Sent(m) => m.get(name).map(|r| &r.body),
            _ => None,
        }
    }

    /// (name, version) pairs ordered by name.
    pub fn sorted(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = match self {
            Held::Nothing => Vec::new(),
            Held::Sent(m) => m.iter().map(|(n, r)| (&**n, &*r.version)).collect(),
            Held::Versions(m) => m.iter().map(|(n, v)| (&**n, &**v)).collect(),
        };
        if matches!(self, Held::Versions(_)) {
            v.sort_unstable();
        }
        v
    }
}

/// Serialised as an object name -> version, ordered by name.
impl Serialize for Held {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (name, version) in self.sorted() {
            m.serialize_entry(name, version)?;
        }
        m.end()
    }
}

fn serialize_names<S: Serializer>(
    names: &Arc<BTreeSet<Arc<str>>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(names.iter().map(|n| &**n))
}

/// The last NACK a stream received for one type.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Nack {
    /// The version the client rejected.
    pub version: String,
    /// The nonce of the rejected response.
    pub nonce: String,
    /// The client's `error_detail.message`.
    pub message: String,
    /// When it arrived (milliseconds since the Unix epoch).
    pub at_unix_ms: u64,
}

/// Sync state of one type on one stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatus {
    /// `NOT_SENT`, `SYNCED`, `STALE` or `ERROR` (see [`TypeStatus::state`]);
    /// filled in by [`Registry::list`].
    pub state: &'static str,
    /// The version of the last response sent.
    pub sent_version: Option<String>,
    /// The nonce of the last response sent.
    pub sent_nonce: Option<String>,
    /// The last version the client ACKed.
    pub acked_version: Option<String>,
    /// Names in the last response sent (SotW) or known to be held (delta).
    pub resources: usize,
    /// What the client was sent and holds: name -> resource version (the
    /// last response for SotW; everything held for delta).
    pub held: Held,
    /// Whether the client subscribes to every resource of the type.
    pub wildcard: bool,
    /// The names the client asked for (besides a wildcard).
    #[serde(serialize_with = "serialize_names")]
    pub subscribed: Arc<BTreeSet<Arc<str>>>,
    /// When the last response of this type was sent (milliseconds since the
    /// Unix epoch).
    pub updated_at_unix_ms: Option<u64>,
    /// Requests of this type ignored (SotW) or answered for their
    /// subscription changes only (delta) because their nonce was stale.
    pub stale_nonces: u64,
    /// The last NACK received on this stream. Kept for reference after later
    /// ACKs; `state` says whether it concerns the version last sent.
    pub last_nack: Option<Nack>,
}

impl TypeStatus {
    /// `NOT_SENT`, `SYNCED` (the last response was ACKed, or, before any
    /// response, a reconnecting delta client already holds what it should),
    /// `STALE` (sent, not yet ACKed) or `ERROR` (the last response was NACKed).
    pub fn state(&self) -> &'static str {
        match (&self.sent_nonce, &self.last_nack) {
            (None, _) if !self.held.is_empty() => "SYNCED",
            (None, _) => "NOT_SENT",
            (Some(nonce), Some(n)) if &n.nonce == nonce => "ERROR",
            _ if self.acked_version.is_some() && self.acked_version == self.sent_version => {
                "SYNCED"
            }
            _ => "STALE",
        }
    }
}

/// One open stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    /// Server-local stream id.
    pub stream: u64,
    /// `node.id` (empty until the first request carrying a node).
    pub node: String,
    /// `node.cluster`.
    pub cluster: String,
    /// `node.user_agent_name` and version, e.g. `envoy 1.40.0`.
    pub user_agent: String,
    /// The `nodes:` entry the node matched (`default` when none).
    pub selection: String,
    /// The node as the client sent it (for CSDS).
    #[serde(skip)]
    pub node_proto: Option<envoy_types::pb::envoy::config::core::v3::Node>,
    /// Peer address.
    pub peer: Option<SocketAddr>,
    /// `ads`, `cds`, `eds`, `lds` or `rds`, with `-delta` for incremental streams.
    pub protocol: String,
    /// When the stream opened (milliseconds since the Unix epoch).
    pub connected_at_unix_ms: u64,
    /// Per type: `cds`, `eds`, `lds`, `rds`.
    pub types: TypeStatuses,
}

/// Per-type status, serialised as an object keyed by short type name.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TypeStatuses {
    /// Clusters.
    pub cds: TypeStatus,
    /// Endpoints.
    pub eds: TypeStatus,
    /// Listeners.
    pub lds: TypeStatus,
    /// Routes.
    pub rds: TypeStatus,
}

impl TypeStatuses {
    /// The status of one type.
    pub fn get(&self, ty: ResourceType) -> &TypeStatus {
        match ty {
            ResourceType::Cluster => &self.cds,
            ResourceType::Endpoint => &self.eds,
            ResourceType::Listener => &self.lds,
            ResourceType::Route => &self.rds,
        }
    }

    fn get_mut(&mut self, ty: ResourceType) -> &mut TypeStatus {
        match ty {
            ResourceType::Cluster => &mut self.cds,
            ResourceType::Endpoint => &mut self.eds,
            ResourceType::Listener => &mut self.lds,
            ResourceType::Route => &mut self.rds,
        }
    }
}

/// Every open stream of one server.
#[derive(Debug)]
pub struct Registry {
    streams: DashMap<u64, StreamStatus>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Registry {
    /// An empty registry that counts streams and NACKs in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Registry {
            streams: DashMap::new(),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    /// Registers a new stream; it is removed when the guard drops.
    pub fn open(self: &Arc<Self>, protocol: &str, peer: Option<SocketAddr>) -> StreamGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.streams.insert(
            id,
            StreamStatus {
                stream: id,
                node: String::new(),
                cluster: String::new(),
                user_agent: String::new(),
                selection: String::new(),
                node_proto: None,
                peer,
                protocol: protocol.to_string(),
                connected_at_unix_ms: now_ms(),
                types: TypeStatuses::default(),
            },
        );
        self.metrics.connected_streams.inc();
        StreamGuard {
            id,
            registry: Arc::clone(self),
            node: String::new(),
        }
    }

    /// A copy of every stream's status, ordered by node then stream id.
    pub fn list(&self) -> Vec<StreamStatus> {
        let mut v: Vec<StreamStatus> = self.streams.iter().map(|e| e.value().clone()).collect();
        for s in &mut v {
            for t in [
                &mut s.types.cds,
                &mut s.types.eds,
                &mut s.types.lds,
                &mut s.types.rds,
            ] {
                t.state = t.state();
            }
        }
        v.sort_by(|a, b| (&a.node, a.stream).cmp(&(&b.node, b.stream)));
        v
    }

    /// The metrics this registry updates.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// A stream's handle on its registry entry.
#[derive(Debug)]
pub struct StreamGuard {
    id: u64,
    registry: Arc<Registry>,
    node: String,
}

impl StreamGuard {
    /// This stream's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.registry.metrics
    }

    /// The node id (empty until known).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Records the node from the first request that carries one.
    pub fn set_node(&mut self, node: &envoy_types::pb::envoy::config::core::v3::Node) {
        use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
        self.node = node.id.clone();
        let version = match &node.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
            Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
                .version
                .as_ref()
                .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
                .unwrap_or_default(),
            None => String::new(),
        };
        if let Some(mut s) = self.registry.streams.get_mut(&self.id) {
            s.node = node.id.clone();
            s.cluster = node.cluster.clone();
            s.user_agent = format!("{} {}", node.user_agent_name, version)
                .trim()
                .to_string();
            s.node_proto = Some(node.clone());
        }
    }

    /// Records the node selection the stream's node matched.
    pub fn set_selection(&self, selection: &str) {
        if let Some(mut s) = self.registry.streams.get_mut(&self.id) {
            if s.selection != selection {
                s.selection = selection.to_string();
            }
        }
    }

    /// Records what the client subscribes to for one type (shared with the
    /// stream's state, not copied).
    pub fn subscribed(&self, ty: ResourceType, wildcard: bool, names: Arc<BTreeSet<Arc<str>>>) {
        if let Some(mut s) = self.registry.streams.get_mut(&self.id) {
            let t = s.types.get_mut(ty);
            t.wildcard = wildcard;
            t.subscribed = names;
        }
    }

    /// Records what a reconnecting delta client says it holds
    /// (`initial_resource_versions`) before anything is sent on this stream.
    pub fn seeded(&self, ty: ResourceType, held: Held) {
        if let Some(mut s) = self.registry.streams.get_mut(&self.id) {
            let t = s.types.get_mut(ty);
            t.resources = held.len();
            t.held = held;
        }
    }

    /// Records a response sent, and what the client holds once it applies it.
    pub fn sent(&self, ty: ResourceType, version: &str, nonce: &str, held: Held) {
        if let Some(mut s) = self.registry.streams.get_mut(&self.id) {
            let t = s.types.get_mut(ty);
            t.sent_version = Some(version.to_string());
            t.sent_nonce = Some(nonce.to_string());
            t.updated_at_unix_ms = Some(now_ms());
            t.resources = held.len();
            t.held = held;
        }
    }

    /// Records an ACK of `version`.
    pub fn acked(&self, ty: ResourceType, version: &str) {
        if let Some(mut s) = self.registry.streams.get_mut(&self.id) {
            let t = s.types.get_mut(ty);
            t.acked_version = Some(version.to_string());
        }
    }

    /// Counts a request with a stale nonce, on this stream and in the metrics.
    pub fn stale_nonce(&self, ty: ResourceType) {
        self.registry
            .metrics
            .stale_nonces
            .get_or_create(&crate::metrics::TypeLabel {
                r#type: ty.short().to_string(),
            })
            .inc();
        if let Some(mut s) = self.registry.streams.get_mut(&self.id) {
            s.types.get_mut(ty).stale_nonces += 1;
        }
    }

    /// Records a NACK and counts it.
    pub fn nacked(&self, ty: ResourceType, version: &str, nonce: &str, message: &str) {
        self.registry
            .metrics
            .nacks
            .get_or_create(&NackLabels {
                node: self.node.clone(),
                r#type: ty.short().to_string(),
            })
            .inc();
        if let Some(mut s) = self.registry.streams.get_mut(&self.id) {
            s.types.get_mut(ty).last_nack = Some(Nack {
                version: version.to_string(),
                nonce: nonce.to_string(),
                message: message.to_string(),
                at_unix_ms: now_ms(),
            });
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.registry.streams.remove(&self.id);
        self.registry.metrics.connected_streams.dec();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_sends_acks_and_nacks() {
        let reg = Arc::new(Registry::new(Arc::new(Metrics::new())));
        let g = reg.open("ads", None);
        let st = |reg: &Registry| reg.list()[0].types.cds.state();
        assert_eq!(st(&reg), "NOT_SENT");
        let held = Held::Versions(Arc::new([(Arc::from("a"), Arc::from("1"))].into()));
        g.sent(ResourceType::Cluster, "v1", "1", held.clone());
        assert_eq!(st(&reg), "STALE");
        g.acked(ResourceType::Cluster, "v1");
        assert_eq!(st(&reg), "SYNCED");
        g.sent(ResourceType::Cluster, "v2", "2", held.clone());
        g.nacked(ResourceType::Cluster, "v2", "2", "bad");
        assert_eq!(st(&reg), "ERROR");
        g.sent(ResourceType::Cluster, "v3", "3", held);
        g.acked(ResourceType::Cluster, "v3");
        assert_eq!(st(&reg), "SYNCED");
        assert_eq!(reg.metrics().connected_streams.get(), 1);
        drop(g);
        assert!(reg.list().is_empty());
        assert_eq!(reg.metrics().connected_streams.get(), 0);
    }
}
