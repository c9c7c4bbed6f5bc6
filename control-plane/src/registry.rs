//! Who is connected and what each stream holds: the data behind `/nodes`,
//! `pylon-xds status` and the NACK metrics.
//!
//! Streams register themselves and update their entry as they send responses
//! and receive ACKs and NACKs; an entry disappears when its stream ends (the
//! [`StreamGuard`] is dropped). Readers take a consistent copy with
//! [`Registry::list`]. What a client holds and subscribes to is shared with
//! the stream's own state (`Arc`), so an entry costs no copy of it; the copy
//! `list` makes is of pointers.
//!
//! What a client chose is kept only in bounded form: the node as one shared
//! copy (at most `server::limits::MAX_NODE_BYTES`, checked before it gets
//! here), its id, cluster and user agent cut to [`DISPLAY_BYTES`] for
//! display and logs, NACK messages to [`MAX_NACK_MESSAGE_BYTES`]. The
//! registry also enforces the server's stream limit (`--max-streams`).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use pylon::tls::Identity;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use pylon::throttle::{truncate, Throttle};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use tonic::Status;

use crate::metrics::{Metrics, TypeLabel};
use crate::server::limits::{refuse, Reason, DEFAULT_MAX_STREAMS};
use crate::snapshot::{ResourceMap, ResourceType};

/// The longest node id, node cluster, user agent, version or nonce kept
/// for display (`/nodes`, `status`, logs); longer ones are cut, with their
/// length appended.
pub const DISPLAY_BYTES: usize = 256;

/// The longest NACK message kept per stream and type (for `/nodes`, `status`
/// and CSDS); longer ones are cut, with their length appended.
pub const MAX_NACK_MESSAGE_BYTES: usize = 4096;

/// Client-caused warnings (NACKs, unknown types) written per second, all
/// streams together; the next line says how many were left out.
const CLIENT_WARNINGS_PER_SECOND: u32 = 20;

/// `s` cut to [`DISPLAY_BYTES`].
pub(crate) fn display(s: &str) -> String {
    truncate(s, DISPLAY_BYTES).into_owned()
}

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
    /// The node as the client sent it (for CSDS), shared with the stream.
    #[serde(skip)]
    pub node_proto: Option<Arc<Node>>,
    /// Peer address.
    pub peer: Option<SocketAddr>,
    /// The identity of the client's certificate (its first URI SAN, else its
    /// first DNS SAN), over mutual TLS.
    pub identity: Option<String>,
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
    /// Streams open (and reserved by [`Registry::open`]), at most `max_streams`.
    open: AtomicUsize,
    max_streams: usize,
    client_warnings: Throttle,
}

impl Registry {
    /// An empty registry that counts streams and NACKs in `metrics`, with
    /// the default stream limit.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Registry::with_max_streams(metrics, DEFAULT_MAX_STREAMS)
    }

    /// An empty registry that admits at most `max_streams` streams at once.
    pub fn with_max_streams(metrics: Arc<Metrics>, max_streams: usize) -> Self {
        Registry {
            streams: DashMap::new(),
            next_id: AtomicU64::new(1),
            metrics,
            open: AtomicUsize::new(0),
            max_streams,
            client_warnings: Throttle::new(CLIENT_WARNINGS_PER_SECOND, Duration::from_secs(1)),
        }
    }

    /// Registers a new stream; it is removed when the guard drops. Refused
    /// with `UNAVAILABLE` when the server already serves its maximum.
    pub fn open(
        self: &Arc<Self>,
        protocol: &str,
        peer: Option<SocketAddr>,
        identity: Option<Identity>,
    ) -> Result<StreamGuard, Status> {
        let max = self.max_streams;
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(refuse(
                &self.metrics,
                Reason::TooManyStreams,
                Status::unavailable(format!(
                    "this server already serves its maximum of {max} streams (--max-streams); \
                     try another server or later"
                )),
            ));
        }
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
                identity: identity.as_ref().map(|i| display(&i.display())),
                protocol: protocol.to_string(),
                connected_at_unix_ms: now_ms(),
                types: TypeStatuses::default(),
            },
        );
        self.metrics.connected_streams.inc();
        Ok(StreamGuard {
            id,
            registry: Arc::clone(self),
            node: String::new(),
            has_node: false,
            identity,
        })
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

    /// The allowance for warnings clients cause (NACKs, unknown types): see
    /// [`Throttle::allow`].
    pub fn client_warnings(&self) -> &Throttle {
        &self.client_warnings
    }
}

/// A stream's handle on its registry entry.
#[derive(Debug)]
pub struct StreamGuard {
    id: u64,
    registry: Arc<Registry>,
    /// The node id, cut to [`DISPLAY_BYTES`] (for logs).
    node: String,
    has_node: bool,
    /// The verified certificate's identity, over mutual TLS.
    identity: Option<Identity>,
}

impl StreamGuard {
    /// The identity of the client's verified certificate, if any.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// This stream's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.registry.metrics
    }

    /// The node id, cut to [`DISPLAY_BYTES`] (empty until known).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the stream's node is recorded.
    pub fn has_node(&self) -> bool {
        self.has_node
    }

    /// The server's allowance for client-caused warnings.
    pub fn client_warnings(&self) -> &Throttle {
        &self.registry.client_warnings
    }

    /// Records the node from the first request that carries one (its size
    /// already checked): the node itself shared, its names cut for display.
    pub fn set_node(&mut self, node: Arc<Node>) {
        use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
        self.node = display(&node.id);
        self.has_node = true;
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
            s.node = self.node.clone();
            s.cluster = display(&node.cluster);
            s.user_agent = display(format!("{} {}", node.user_agent_name, version).trim());
            s.node_proto = Some(node);
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
            // The client's text: cut like any other shown.
            t.acked_version = Some(display(version));
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

    /// Records a NACK (its message cut to [`MAX_NACK_MESSAGE_BYTES`]) and
    /// counts it by type.
    pub fn nacked(&self, ty: ResourceType, version: &str, nonce: &str, message: &str) {
        self.registry
            .metrics
            .nacks
            .get_or_create(&TypeLabel {
                r#type: ty.short().to_string(),
            })
            .inc();
        if let Some(mut s) = self.registry.streams.get_mut(&self.id) {
            s.types.get_mut(ty).last_nack = Some(Nack {
                version: display(version),
                nonce: display(nonce),
                message: truncate(message, MAX_NACK_MESSAGE_BYTES).into_owned(),
                at_unix_ms: now_ms(),
            });
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.registry.streams.remove(&self.id);
        self.registry.metrics.connected_streams.dec();
        self.registry.open.fetch_sub(1, Ordering::AcqRel);
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
        let g = reg.open("ads", None, None).unwrap();
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

    #[test]
    fn streams_beyond_the_maximum_are_unavailable() {
        let reg = Arc::new(Registry::with_max_streams(Arc::new(Metrics::new()), 2));
        let a = reg.open("ads", None, None).unwrap();
        let _b = reg.open("ads-delta", None, None).unwrap();
        let st = reg.open("ads", None, None).unwrap_err();
        assert_eq!(st.code(), tonic::Code::Unavailable);
        assert!(st.message().contains("--max-streams"), "{st:?}");
        drop(a);
        let _c = reg.open("ads", None, None).unwrap();
        assert!(reg
            .metrics()
            .encode()
            .contains("pylon_xds_refused_requests_total{reason=\"too_many_streams\"} 1"));
    }

    #[test]
    fn client_chosen_text_is_kept_cut() {
        let reg = Arc::new(Registry::new(Arc::new(Metrics::new())));
        let mut g = reg.open("ads", None, None).unwrap();
        let long = "x".repeat(1 << 20);
        g.set_node(Arc::new(Node {
            id: long.clone(),
            cluster: long.clone(),
            user_agent_name: long.clone(),
            ..Default::default()
        }));
        g.acked(ResourceType::Cluster, &long);
        g.nacked(ResourceType::Cluster, &long, &long, &long);
        let s = &reg.list()[0];
        assert!(g.node().len() < DISPLAY_BYTES + 32, "{}", g.node().len());
        for field in [&s.node, &s.cluster, &s.user_agent] {
            assert!(field.len() < DISPLAY_BYTES + 32, "{}", field.len());
            assert!(
                field.ends_with("(1048576 bytes)"),
                "{}",
                &field[field.len() - 20..]
            );
        }
        let nack = s.types.cds.last_nack.as_ref().unwrap();
        assert!(nack.message.len() < MAX_NACK_MESSAGE_BYTES + 32);
        assert!(nack.nonce.len() < DISPLAY_BYTES + 32);
        assert!(s.types.cds.acked_version.as_ref().unwrap().len() < DISPLAY_BYTES + 32);
        assert!(reg
            .metrics()
            .encode()
            .contains("pylon_xds_nacks_total{type=\"cds\"} 1"));
    }
}
