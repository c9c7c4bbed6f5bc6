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
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Any;
use pylon::throttle::{truncate, Throttle};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use tonic::Status;

use crate::metrics::{Metrics, Reason, TypeLabel};
use crate::snapshot::{ResourceMap, ResourceType};
use pylon::PerType;

/// The longest node id, node cluster, user agent, version or nonce kept
/// for display (`/nodes`, `status`, logs); longer ones are cut, with their
/// length appended.
pub const DISPLAY_BYTES: usize = 256;

/// The longest NACK message kept per stream and type (for `/nodes`, `status`
/// and CSDS); longer ones are cut, with their length appended.
pub const MAX_NACK_MESSAGE_BYTES: usize = 4096;

/// Default for `--max-streams`: xDS streams one server serves at once.
/// Far beyond one server's fleet: each stream costs a task and, with 1,000
/// clusters, 160 to 310 KiB (README, "Memory per stream").
pub const DEFAULT_MAX_STREAMS: usize = 100_000;

/// Client-caused warnings (NACKs, unknown types) written per second, all
/// streams together; the next line says how many were left out.
const CLIENT_WARNINGS_PER_SECOND: u32 = 20;

/// `s` cut to [`DISPLAY_BYTES`].
pub(crate) fn display(s: &str) -> String {
    truncate(s, DISPLAY_BYTES).into_owned()
}

/// The names a stream subscribes to for one type, shared with the stream's
/// state and between streams that subscribe to the same names.
pub type NameSet = Arc<BTreeSet<Arc<str>>>;

/// What a client holds of one type. Shared with the stream's own state (and
/// with the snapshot), never copied per stream.
#[derive(Debug, Clone, Default)]
pub enum Held {
    /// Nothing sent or declared yet.
    #[default]
    Nothing,
    /// Exactly the resources of a snapshot's map that the subscription
    /// covers: all of them (`names: None`, a wildcard), or those it names.
    /// What a stream holds once it is up to date, without a copy.
    Scoped {
        /// The map of the snapshot (or view) the client was brought up to
        /// date with.
        map: ResourceMap,
        /// The names subscribed to; `None` for a wildcard.
        names: Option<NameSet>,
    },
    /// Delta: name -> version of everything the client holds (sent, or
    /// declared in `initial_resource_versions`) while it differs from any
    /// snapshot.
    Versions(Arc<HashMap<Arc<str>, Arc<str>>>),
}

impl Held {
    /// The resources of `map` in scope of `names` (all for `None`).
    fn scoped<'a>(
        map: &'a ResourceMap,
        names: &'a Option<NameSet>,
    ) -> Box<dyn Iterator<Item = (&'a str, &'a crate::snapshot::Resource)> + 'a> {
        match names {
            None => Box::new(map.iter().map(|(n, r)| (&**n, &**r))),
            Some(names) => Box::new(
                names
                    .iter()
                    .filter_map(|n| map.get(n).map(|r| (&**n, &**r))),
            ),
        }
    }

    /// Number of resources held.
    pub fn len(&self) -> usize {
        match self {
            Held::Nothing => 0,
            Held::Scoped { map, names: None } => map.len(),
            Held::Scoped { map, names } => Held::scoped(map, names).count(),
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
            Held::Scoped { map, names } => names
                .as_ref()
                .is_none_or(|n| n.contains(name))
                .then(|| map.get(name).map(|r| &*r.version))
                .flatten(),
            Held::Versions(m) => m.get(name).map(|v| &**v),
        }
    }

    /// The resource as the client holds it, when the stream knows its
    /// content (it is up to date with a snapshot).
    pub fn body(&self, name: &str) -> Option<&Any> {
        match self {
            Held::Scoped { map, names } if names.as_ref().is_none_or(|n| n.contains(name)) => {
                map.get(name).map(|r| &r.body)
            }
            _ => None,
        }
    }

    /// (name, version) pairs ordered by name.
    pub fn sorted(&self) -> Vec<(&str, &str)> {
        match self {
            Held::Nothing => Vec::new(),
            Held::Scoped { map, names } => Held::scoped(map, names)
                .map(|(n, r)| (n, &*r.version))
                .collect(),
            Held::Versions(m) => {
                let mut v: Vec<(&str, &str)> = m.iter().map(|(n, v)| (&**n, &**v)).collect();
                v.sort_unstable();
                v
            }
        }
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

fn serialize_names<S: Serializer>(names: &NameSet, s: S) -> Result<S::Ok, S::Error> {
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
    /// The version of the last response sent (shared with the snapshot).
    #[serde(serialize_with = "serialize_opt_str")]
    pub sent_version: Option<Arc<str>>,
    /// The nonce of the last response sent.
    #[serde(serialize_with = "serialize_opt_nonce")]
    pub sent_nonce: Option<u64>,
    /// How many resources the last response sent carried.
    pub sent_resources: usize,
    /// The last version the client ACKed.
    #[serde(serialize_with = "serialize_opt_str")]
    pub acked_version: Option<Arc<str>>,
    /// Names the client holds (the size of `held`); filled in by
    /// [`Registry::list`].
    pub resources: usize,
    /// What the client was sent and holds: name -> resource version (for
    /// SotW load assignments and route configurations, which a response
    /// leaves out when they did not change, what earlier responses sent too).
    pub held: Held,
    /// Whether the client subscribes to every resource of the type.
    pub wildcard: bool,
    /// The names the client asked for (besides a wildcard).
    #[serde(serialize_with = "serialize_names")]
    pub subscribed: NameSet,
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

fn serialize_opt_str<S: Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&**v),
        None => s.serialize_none(),
    }
}

/// Nonces are shown as the client sees them: strings.
fn serialize_opt_nonce<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&v.to_string()),
        None => s.serialize_none(),
    }
}

impl TypeStatus {
    /// `NOT_SENT`, `SYNCED` (the last response was ACKed, or, before any
    /// response, a reconnecting delta client already holds what it should),
    /// `STALE` (sent, not yet ACKed) or `ERROR` (the last response was NACKed).
    pub fn state(&self) -> &'static str {
        match (&self.sent_nonce, &self.last_nack) {
            (None, _) if !self.held.is_empty() => "SYNCED",
            (None, _) => "NOT_SENT",
            (Some(nonce), Some(n)) if n.nonce == nonce.to_string() => "ERROR",
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
    pub types: PerType<TypeStatus>,
}

/// Every open stream of one server.
#[derive(Debug)]
pub struct Registry {
    /// Each stream's entry, shared with its guard, which updates it under
    /// the entry's own lock (no map lookup per response or ACK).
    streams: DashMap<u64, Arc<Mutex<StreamStatus>>>,
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
    /// Streams open (and reserved by [`Registry::open`]), at most `max_streams`.
    open: AtomicUsize,
    max_streams: usize,
    client_warnings: Throttle,
    /// Every stream's subscribed names, by a hash of their content (see
    /// [`Registry::share_names`]).
    name_sets: Mutex<NameSets>,
}

/// Subscriptions in use, so that streams naming the same resources share one
/// set: a fleet configured alike subscribes alike, and a set of 1,000 names
/// costs tens of KiB.
#[derive(Debug, Default)]
struct NameSets {
    by_hash: HashMap<u64, Vec<Weak<BTreeSet<Arc<str>>>>>,
    /// Sets added since dead entries were last swept out.
    added: usize,
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
            name_sets: Mutex::default(),
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
            self.metrics.refused(Reason::TooManyStreams);
            return Err(Status::unavailable(format!(
                "this server already serves its maximum of {max} streams (--max-streams); \
                 try another server or later"
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Mutex::new(StreamStatus {
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
            types: PerType::default(),
        }));
        self.streams.insert(id, Arc::clone(&entry));
        self.metrics.connected_streams.inc();
        Ok(StreamGuard {
            id,
            entry,
            registry: Arc::clone(self),
            node: String::new(),
            has_node: false,
            identity,
        })
    }

    /// A copy of every stream's status, ordered by node then stream id.
    pub fn list(&self) -> Vec<StreamStatus> {
        let mut v: Vec<StreamStatus> = self
            .streams
            .iter()
            .map(|e| lock(e.value()).clone())
            .collect();
        for s in &mut v {
            for (_, t) in s.types.iter_mut() {
                t.state = t.state();
                t.resources = t.held.len();
            }
        }
        v.sort_by(|a, b| (&a.node, a.stream).cmp(&(&b.node, b.stream)));
        v
    }

    /// A set with the names of `set`: one already in use by some stream if
    /// there is one (then `set` is dropped), else `set` itself, remembered.
    pub fn share_names(&self, set: NameSet) -> NameSet {
        use std::hash::{Hash, Hasher};
        if set.is_empty() {
            return set;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for n in set.iter() {
            n.hash(&mut h);
        }
        let key = h.finish();
        let mut sets = self
            .name_sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let bucket = sets.by_hash.entry(key).or_default();
        bucket.retain(|w| w.strong_count() > 0);
        if let Some(same) = bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|other| **other == *set)
        {
            return same;
        }
        bucket.push(Arc::downgrade(&set));
        sets.added += 1;
        // Sets whose streams all ended leave a dead entry behind: sweep them
        // out now and then, in time proportional to the sets added meanwhile.
        if sets.added > 1024 && sets.added > sets.by_hash.len() {
            sets.by_hash.retain(|_, b| {
                b.retain(|w| w.strong_count() > 0);
                !b.is_empty()
            });
            sets.added = 0;
        }
        set
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
    /// This stream's entry in the registry.
    entry: Arc<Mutex<StreamStatus>>,
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

    /// See [`Registry::share_names`].
    pub fn share_names(&self, set: NameSet) -> NameSet {
        self.registry.share_names(set)
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
        let mut s = lock(&self.entry);
        s.node = self.node.clone();
        s.cluster = display(&node.cluster);
        s.user_agent = display(format!("{} {}", node.user_agent_name, version).trim());
        s.node_proto = Some(node);
    }

    /// Records the node selection the stream's node matched.
    pub fn set_selection(&self, selection: &str) {
        let mut s = lock(&self.entry);
        if s.selection != selection {
            s.selection = selection.to_string();
        }
    }

    /// Records what the client subscribes to for one type (shared with the
    /// stream's state, not copied).
    pub fn subscribed(&self, ty: ResourceType, wildcard: bool, names: NameSet) {
        let mut s = lock(&self.entry);
        let t = &mut s.types[ty];
        t.wildcard = wildcard;
        t.subscribed = names;
    }

    /// Records what a reconnecting delta client says it holds
    /// (`initial_resource_versions`) before anything is sent on this stream.
    pub fn seeded(&self, ty: ResourceType, held: Held) {
        let mut s = lock(&self.entry);
        s.types[ty].held = held;
    }

    /// Records a response sent (carrying `resources` resources), and what
    /// the client holds once it applies it.
    pub fn sent(
        &self,
        ty: ResourceType,
        version: &Arc<str>,
        nonce: u64,
        resources: usize,
        held: Held,
    ) {
        let mut s = lock(&self.entry);
        let t = &mut s.types[ty];
        t.sent_version = Some(Arc::clone(version));
        t.sent_nonce = Some(nonce);
        t.sent_resources = resources;
        t.updated_at_unix_ms = Some(now_ms());
        t.held = held;
    }

    /// Records an ACK of `version`.
    pub fn acked(&self, ty: ResourceType, version: &str) {
        let mut s = lock(&self.entry);
        let t = &mut s.types[ty];
        // Usually the version just sent: shared, not copied. Otherwise
        // the client's text, cut like any other shown.
        t.acked_version = match &t.sent_version {
            Some(sent) if **sent == *version => Some(Arc::clone(sent)),
            _ => Some(Arc::from(display(version))),
        };
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
        let mut s = lock(&self.entry);
        s.types[ty].stale_nonces += 1;
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
        let mut s = lock(&self.entry);
        s.types[ty].last_nack = Some(Nack {
            version: display(version),
            nonce: display(nonce),
            message: truncate(message, MAX_NACK_MESSAGE_BYTES).into_owned(),
            at_unix_ms: now_ms(),
        });
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.registry.streams.remove(&self.id);
        self.registry.metrics.connected_streams.dec();
        self.registry.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The entry's lock; a panic while it was held leaves a usable status.
fn lock(entry: &Mutex<StreamStatus>) -> std::sync::MutexGuard<'_, StreamStatus> {
    entry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let st = |reg: &Registry| reg.list()[0].types[ResourceType::Cluster].state();
        assert_eq!(st(&reg), "NOT_SENT");
        let held = Held::Versions(Arc::new([(Arc::from("a"), Arc::from("1"))].into()));
        let v = |s: &str| Arc::<str>::from(s);
        g.sent(ResourceType::Cluster, &v("v1"), 1, 1, held.clone());
        assert_eq!(st(&reg), "STALE");
        g.acked(ResourceType::Cluster, "v1");
        assert_eq!(st(&reg), "SYNCED");
        g.sent(ResourceType::Cluster, &v("v2"), 2, 1, held.clone());
        g.nacked(ResourceType::Cluster, "v2", "2", "bad");
        assert_eq!(st(&reg), "ERROR");
        g.sent(ResourceType::Cluster, &v("v3"), 3, 1, held);
        g.acked(ResourceType::Cluster, "v3");
        assert_eq!(st(&reg), "SYNCED");
        assert_eq!(reg.metrics().connected_streams.get(), 1);
        drop(g);
        assert!(reg.list().is_empty());
        assert_eq!(reg.metrics().connected_streams.get(), 0);
    }

    #[test]
    fn streams_naming_the_same_resources_share_one_set() {
        let reg = Registry::new(Arc::new(Metrics::new()));
        let set =
            |names: &[&str]| -> NameSet { Arc::new(names.iter().map(|n| Arc::from(*n)).collect()) };
        let a = reg.share_names(set(&["x", "y"]));
        let b = reg.share_names(set(&["x", "y"]));
        assert!(Arc::ptr_eq(&a, &b));
        let c = reg.share_names(set(&["x"]));
        assert!(!Arc::ptr_eq(&a, &c));
        // Once no stream uses a set, it is not handed out again.
        let ptr = Arc::as_ptr(&c);
        drop(c);
        let d = reg.share_names(set(&["x"]));
        assert_eq!(*d, *set(&["x"]));
        assert!(Arc::strong_count(&d) == 1 || Arc::as_ptr(&d) != ptr);
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
        let nack = s.types[ResourceType::Cluster].last_nack.as_ref().unwrap();
        assert!(nack.message.len() < MAX_NACK_MESSAGE_BYTES + 32);
        assert!(nack.nonce.len() < DISPLAY_BYTES + 32);
        assert!(
            s.types[ResourceType::Cluster]
                .acked_version
                .as_ref()
                .unwrap()
                .len()
                < DISPLAY_BYTES + 32
        );
        assert!(reg
            .metrics()
            .encode()
            .contains("pylon_xds_nacks_total{type=\"cds\"} 1"));
    }
}
