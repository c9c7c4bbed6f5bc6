//! Versioned, consistent, encoded-once snapshots of every resource.
//!
//! A [`Snapshot`] is built from one [`Resources`] revision. Building it checks
//! consistency (rule 9 of `docs/xds-protocol.md`: every referenced cluster,
//! route configuration and load assignment exists), encodes each resource
//! into its `Any` exactly once, and derives every version from content:
//!
//! - a resource's version is a hash of its encoding with map entries taken
//!   in sorted order ([`canonical`]), so it is the same across restarts and
//!   replicas even though protobuf map encoding order is not deterministic;
//! - a type's version hashes the (name, version) pairs of that type;
//! - the snapshot version hashes the four type versions.
//!
//! Streams share the encoded bytes through `Arc`s and never re-encode. This
//! module knows no gRPC and no YAML.

mod canonical;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Instant;

use envoy_types::pb::envoy::config::{
    cluster::v3::{cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster},
    listener::v3::filter::ConfigType,
    route::v3::{route::Action, route_action::ClusterSpecifier, RouteConfiguration},
};
use envoy_types::pb::envoy::extensions::filters::network::{
    http_connection_manager::v3::{http_connection_manager::RouteSpecifier, HttpConnectionManager},
    tcp_proxy::v3::{tcp_proxy, TcpProxy},
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use sha2::{Digest, Sha256};

pub use crate::resources::Resource;
use crate::resources::{Encoded, Resources};
use crate::selection::{Names, Policy, Selector, DEFAULT_SELECTION};

use pylon::PerType;
pub use pylon::ResourceType;

/// Resources of one type by name. Shared: a snapshot's map is handed as is to
/// every wildcard stream, which keeps it as "what the client was sent".
/// Keys are the resources' own `name`s.
pub type ResourceMap = Arc<BTreeMap<Arc<str>, Arc<Resource>>>;

/// All resources of one type.
#[derive(Debug, Default)]
pub struct TypeSnapshot {
    /// Hash of the (name, version) pairs of this type in the revision: the
    /// version sent to clients.
    pub version: Arc<str>,
    /// Hash of the (name, version) pairs held here. The same as `version` in
    /// a revision; a view keeps the revision's `version` but has its own
    /// `content`.
    pub content: Arc<str>,
    /// Resources by name. A type whose content did not change since the
    /// previous revision shares the previous map.
    pub resources: ResourceMap,
    /// The last list [`TypeSnapshot::changes_from`] computed, and the map it
    /// was computed from: the streams of one selection are all brought up
    /// to date from the same map, so they share one walk.
    changes: Mutex<Option<(MapRef, Changes)>>,
}

/// A map a change list was computed from, without keeping it alive.
type MapRef = Weak<BTreeMap<Arc<str>, Arc<Resource>>>;

/// Names whose resource differs between two maps of one type (added,
/// changed or removed), in name order.
pub type Changes = Arc<[Arc<str>]>;

impl TypeSnapshot {
    fn new(version: Arc<str>, content: Arc<str>, resources: ResourceMap) -> Self {
        TypeSnapshot {
            version,
            content,
            resources,
            changes: Mutex::new(None),
        }
    }

    /// The names whose resource differs between `old` and this type's
    /// resources: in one and not the other, or with another version.
    ///
    /// A stream that holds `old` has only these to look at. The walk is done
    /// once per `old` map and shared (the last one is kept), so a push to
    /// many streams of one selection costs one walk, not one per stream.
    pub fn changes_from(&self, old: &ResourceMap) -> Changes {
        if Arc::ptr_eq(old, &self.resources) {
            return Arc::from([]);
        }
        let mut cached = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((from, changes)) = cached.as_ref() {
            if std::ptr::eq(from.as_ptr(), Arc::as_ptr(old)) && from.strong_count() > 0 {
                return Arc::clone(changes);
            }
        }
        let changes: Changes = diff_maps(old, &self.resources).into();
        *cached = Some((Arc::downgrade(old), Arc::clone(&changes)));
        changes
    }
}

/// The names of `a` and `b` whose entries differ, in order: one merge walk
/// over both (resources shared between revisions compare by pointer).
fn diff_maps(
    a: &BTreeMap<Arc<str>, Arc<Resource>>,
    b: &BTreeMap<Arc<str>, Arc<Resource>>,
) -> Vec<Arc<str>> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let (mut x, mut y) = (a.iter().peekable(), b.iter().peekable());
    loop {
        match (x.peek(), y.peek()) {
            (None, None) => break,
            (Some((n, _)), None) => {
                out.push(Arc::clone(n));
                x.next();
            }
            (None, Some((n, _))) => {
                out.push(Arc::clone(n));
                y.next();
            }
            (Some((n1, r1)), Some((n2, r2))) => match n1.cmp(n2) {
                Ordering::Less => {
                    out.push(Arc::clone(n1));
                    x.next();
                }
                Ordering::Greater => {
                    out.push(Arc::clone(n2));
                    y.next();
                }
                Ordering::Equal => {
                    if !Arc::ptr_eq(r1, r2) && r1.version != r2.version {
                        out.push(Arc::clone(n1));
                    }
                    x.next();
                    y.next();
                }
            },
        }
    }
    out
}

/// One consistent revision of the whole config, or one node selection's view
/// of it.
///
/// A view (see [`Snapshot::view`]) holds a subset of the resources and keeps
/// the revision's snapshot and type versions, so every node is served from the
/// same revision with the same versions whatever its selection.
#[derive(Debug)]
pub struct Snapshot {
    /// Hash of the four type versions (and of the node policy when there is one).
    pub version: String,
    types: PerType<TypeSnapshot>,
    /// When this snapshot was built (push latency is measured from here).
    pub created: Instant,
    /// The selection this is a view for; [`DEFAULT_SELECTION`] for the whole
    /// revision.
    pub selection: String,
    /// Which node receives what.
    policy: Arc<Policy>,
    /// What each resource uses, for narrowing to a selection.
    graph: Arc<Graph>,
    /// One lazily built view per selector of `policy`, shared by every stream
    /// of that selection.
    views: Box<[OnceLock<Arc<Snapshot>>]>,
}

/// The references between the resources of one revision.
#[derive(Debug, Default)]
struct Graph {
    /// Listener -> route configurations it fetches over RDS.
    listener_routes: BTreeMap<String, Vec<String>>,
    /// Listener -> clusters it names directly (TCP proxy, inline routes).
    listener_clusters: BTreeMap<String, Vec<String>>,
    /// Route configuration -> clusters its routes name.
    route_clusters: BTreeMap<String, Vec<String>>,
    /// EDS cluster -> the name of its ClusterLoadAssignment.
    cluster_cla: BTreeMap<String, String>,
}

/// Why a set of resources cannot form a snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Two resources of one type share a name.
    #[error("duplicate {kind} name {name:?}")]
    Duplicate {
        /// "cds", "eds", "lds" or "rds".
        kind: &'static str,
        /// The repeated name.
        name: String,
    },
    /// A resource names another that is not in the snapshot.
    #[error("{from} refers to {kind} {name:?}, which does not exist")]
    Dangling {
        /// The referring resource, e.g. `listener "front"`.
        from: String,
        /// The missing kind.
        kind: &'static str,
        /// The missing name.
        name: String,
    },
    /// An embedded `Any` could not be decoded.
    #[error("{from}: cannot decode {type_url}: {message}")]
    Decode {
        /// The resource holding the `Any`.
        from: String,
        /// The `Any`'s type URL.
        type_url: String,
        /// The decode error.
        message: String,
    },
}

impl Snapshot {
    /// Checks and encodes `resources`. Resources whose content did not change
    /// since `previous` are shared with it rather than kept twice.
    pub fn build(resources: Resources, previous: Option<&Snapshot>) -> Result<Self, SnapshotError> {
        let Resources {
            clusters,
            endpoints,
            listeners,
            routes,
            encoded,
            ..
        } = &resources;
        let mut maps: PerType<Map> = PerType::default();
        let mut bytes = Vec::new();
        let before = |ty: ResourceType| previous.map(|p| &p.get(ty).resources);
        for ty in ResourceType::ALL {
            let mut items = Vec::new();
            let one = |name: &str, bytes: &[u8]| {
                let resource = shared(ty, before(ty), name, bytes);
                (Arc::clone(&resource.name), resource)
            };
            match ty {
                ResourceType::Cluster => {
                    for r in clusters {
                        encode_into(r, &mut bytes);
                        items.push(one(&r.name, &bytes));
                    }
                    for e in encoded {
                        let [r, _] = kept(e, previous);
                        items.push((Arc::clone(&r.name), Arc::clone(r)));
                    }
                }
                ResourceType::Endpoint => {
                    for r in endpoints {
                        encode_into(r, &mut bytes);
                        items.push(one(&r.cluster_name, &bytes));
                    }
                    for e in encoded {
                        let [_, r] = kept(e, previous);
                        items.push((Arc::clone(&r.name), Arc::clone(r)));
                    }
                }
                ResourceType::Listener => {
                    for r in listeners {
                        encode_into(r, &mut bytes);
                        items.push(one(&r.name, &bytes));
                    }
                }
                ResourceType::Route => {
                    for r in routes {
                        encode_into(r, &mut bytes);
                        items.push(one(&r.name, &bytes));
                    }
                }
            }
            // A repeated name leaves the map short (refused below).
            maps[ty] = items.into_iter().collect();
        }
        let graph = check_consistency(&resources, &maps)?;
        let policy = resources.policy;
        let mut types: PerType<TypeSnapshot> = PerType::default();
        for ty in ResourceType::ALL {
            let map = std::mem::take(&mut maps[ty]);
            let content: Arc<str> = Arc::from(content_hash(&map));
            // Unchanged: the previous map, so that streams holding it see
            // at once that there is nothing to send.
            let resources = match previous.map(|p| p.get(ty)) {
                Some(p) if p.content == content => Arc::clone(&p.resources),
                _ => Arc::new(map),
            };
            types[ty] = TypeSnapshot::new(Arc::clone(&content), content, resources);
        }
        let mut h = Sha256::new();
        for t in types.values() {
            h.update(t.version.as_bytes());
        }
        if !policy.selectors.is_empty() || !policy.clients.is_empty() {
            // A change of selection or of client rules alone is a new
            // revision too (streams re-check what they may receive). Its JSON
            // is canonical: selectors and rules in file order, name sets
            // sorted.
            h.update(
                serde_json::to_string(&policy)
                    .unwrap_or_default()
                    .as_bytes(),
            );
        }
        let views = policy.selectors.iter().map(|_| OnceLock::new()).collect();
        Ok(Snapshot {
            version: short_hex(&h.finalize()),
            types,
            created: Instant::now(),
            selection: DEFAULT_SELECTION.to_string(),
            policy: Arc::new(policy),
            graph: Arc::new(graph),
            views,
        })
    }

    /// The node policy of this revision.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What a node that matched selector `index` (see [`Policy::select`])
    /// receives; `None` is the default, everything. Views are built once per
    /// snapshot and selector and shared.
    pub fn view(self: &Arc<Self>, index: Option<usize>) -> Arc<Snapshot> {
        let slot = index.and_then(|i| Some((self.policy.selectors.get(i)?, self.views.get(i)?)));
        match slot {
            Some((selector, view)) if !selector.is_everything() => {
                Arc::clone(view.get_or_init(|| Arc::new(self.narrow(selector))))
            }
            _ => Arc::clone(self),
        }
    }

    /// The subset of this revision `selector` names, closed over references:
    /// a selected listener brings its route configurations and clusters, a
    /// selected cluster its load assignment.
    fn narrow(&self, selector: &Selector) -> Snapshot {
        let g = &self.graph;
        let all = |ty: ResourceType| &self.types[ty].resources;
        let keys = |ty: ResourceType| all(ty).keys().map(|k| &**k);
        let listeners: BTreeSet<&str> = keys(ResourceType::Listener)
            .filter(|n| selector.listeners.contains(n))
            .collect();
        let mut routes: BTreeSet<&str> = if selector.listeners == Names::All {
            keys(ResourceType::Route).collect()
        } else {
            listeners
                .iter()
                .flat_map(|l| g.listener_routes.get(*l).into_iter().flatten())
                .map(String::as_str)
                .collect()
        };
        routes.retain(|r| all(ResourceType::Route).contains_key(*r));
        let mut clusters: BTreeSet<&str> = keys(ResourceType::Cluster)
            .filter(|n| selector.clusters.contains(n))
            .collect();
        clusters.extend(
            listeners
                .iter()
                .flat_map(|l| g.listener_clusters.get(*l).into_iter().flatten())
                .map(String::as_str),
        );
        clusters.extend(
            routes
                .iter()
                .flat_map(|r| g.route_clusters.get(*r).into_iter().flatten())
                .map(String::as_str),
        );
        let endpoints: BTreeSet<&str> = clusters
            .iter()
            .filter_map(|c| g.cluster_cla.get(*c))
            .map(String::as_str)
            .collect();
        let pick = |ty: ResourceType, names: &BTreeSet<&str>| {
            let picked: BTreeMap<Arc<str>, Arc<Resource>> = all(ty)
                .iter()
                .filter(|(n, _)| names.contains(&***n))
                .map(|(n, r)| (Arc::clone(n), Arc::clone(r)))
                .collect();
            TypeSnapshot::new(
                Arc::clone(&self.types[ty].version),
                Arc::from(content_hash(&picked)),
                Arc::new(picked),
            )
        };
        Snapshot {
            version: self.version.clone(),
            types: PerType::from_fn(|ty| match ty {
                ResourceType::Cluster => pick(ty, &clusters),
                ResourceType::Endpoint => pick(ty, &endpoints),
                ResourceType::Listener => pick(ty, &listeners),
                ResourceType::Route => pick(ty, &routes),
            }),
            created: self.created,
            selection: selector.name.clone(),
            policy: Arc::default(),
            graph: Arc::default(),
            views: Box::new([]),
        }
    }

    /// Every resource served, by type then name, with its version and
    /// bytes: what two snapshots are compared by.
    pub fn served(&self) -> Vec<(ResourceType, &str, &str, &[u8])> {
        ResourceType::ALL
            .into_iter()
            .flat_map(|ty| {
                self.types[ty]
                    .resources
                    .values()
                    .map(move |r| (ty, &*r.name, &*r.version, r.body.value.as_slice()))
            })
            .collect()
    }

    /// The resources of one type.
    pub fn get(&self, ty: ResourceType) -> &TypeSnapshot {
        &self.types[ty]
    }

    /// Number of resources of each type, in [`ResourceType::ALL`] order.
    pub fn counts(&self) -> [usize; 4] {
        ResourceType::ALL.map(|ty| self.types[ty].resources.len())
    }
}

/// `name` as the `Arc<str>` `map` already holds for it (no allocation), or a
/// new one for a name it does not hold.
pub fn intern(map: &BTreeMap<Arc<str>, Arc<Resource>>, name: String) -> Arc<str> {
    map.get_key_value(name.as_str())
        .map(|(k, _)| Arc::clone(k))
        .unwrap_or_else(|| Arc::from(name))
}

/// Hash of the (name, version) pairs of `map`.
fn content_hash(map: &BTreeMap<Arc<str>, Arc<Resource>>) -> String {
    let mut h = Sha256::new();
    for (name, r) in map {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(r.version.as_bytes());
        h.update([0]);
    }
    short_hex(&h.finalize())
}

fn short_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(16);
    for b in &bytes[..8] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A version derived from content only: the [`canonical`] hash of the
/// resource when its bytes parse, else a hash of the bytes.
fn content_version(ty: ResourceType, bytes: &[u8]) -> String {
    let pool = pylon::descriptor_pool();
    let canonical = pool
        .get_message_by_name(ty.message_name())
        .and_then(|desc| canonical::hash(pool, &desc, bytes));
    match canonical {
        Some(hash) => short_hex(&hash),
        None => short_hex(&Sha256::digest(bytes)),
    }
}

/// `m` encoded into `buf` (cleared first).
fn encode_into(m: &impl Message, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(m.encoded_len());
    m.encode_raw(buf);
}

/// A kept cluster's `Cluster` and `ClusterLoadAssignment` resources: built
/// once, by the first snapshot that serves it, and shared by later ones as
/// they are.
fn kept<'a>(e: &'a Encoded, previous: Option<&Snapshot>) -> &'a [Arc<Resource>; 2] {
    e.served.get_or_init(|| {
        let before = |ty: ResourceType| previous.map(|p| &p.get(ty).resources);
        [
            shared(
                ResourceType::Cluster,
                before(ResourceType::Cluster),
                &e.name,
                &e.cluster,
            ),
            shared(
                ResourceType::Endpoint,
                before(ResourceType::Endpoint),
                &e.name,
                &e.endpoints,
            ),
        ]
    })
}

/// The resource `name` of type `ty` encoded as `bytes`: the previous
/// revision's when it has the same bytes or the same version (without
/// hashing it again: an edit usually changes one resource of many, and the
/// canonical hash is most of a rebuild's cost), a new one otherwise.
fn shared(
    ty: ResourceType,
    before: Option<&ResourceMap>,
    name: &str,
    bytes: &[u8],
) -> Arc<Resource> {
    let before = before.and_then(|m| m.get(name));
    if let Some(r) = before.filter(|r| r.body.value == bytes) {
        return Arc::clone(r);
    }
    let version = content_version(ty, bytes);
    if let Some(r) = before.filter(|r| *r.version == *version) {
        return Arc::clone(r);
    }
    Arc::new(Resource {
        name: Arc::from(name),
        version: Arc::from(version),
        body: Any {
            type_url: ty.type_url().to_string(),
            value: bytes.to_vec(),
        },
    })
}

/// One type's resources by name, as built.
type Map = BTreeMap<Arc<str>, Arc<Resource>>;

/// Rule 9 of `docs/xds-protocol.md`: names are unique per type and every
/// reference inside the revision resolves within it (looked up in `maps`,
/// the revision's resources by type and name). Returns the references, for
/// narrowing to node selections.
fn check_consistency(r: &Resources, maps: &PerType<Map>) -> Result<Graph, SnapshotError> {
    let mut graph = Graph::default();
    let encoded = || r.encoded.iter().map(|e| e.name.as_str());
    // A map shorter than its list: some name is repeated (found the slow
    // way, in list order).
    let once = |kind, ty, count: usize, names: &mut dyn Iterator<Item = &str>| {
        if maps[ty].len() == count {
            Ok(())
        } else {
            unique(kind, names).map(drop)
        }
    };
    let n = r.encoded.len();
    once(
        "cds",
        ResourceType::Cluster,
        n + r.clusters.len(),
        &mut encoded().chain(r.clusters.iter().map(|c| c.name.as_str())),
    )?;
    once(
        "rds",
        ResourceType::Route,
        r.routes.len(),
        &mut r.routes.iter().map(|rc| rc.name.as_str()),
    )?;
    once(
        "eds",
        ResourceType::Endpoint,
        n + r.endpoints.len(),
        &mut encoded().chain(r.endpoints.iter().map(|c| c.cluster_name.as_str())),
    )?;
    once(
        "lds",
        ResourceType::Listener,
        r.listeners.len(),
        &mut r.listeners.iter().map(|l| l.name.as_str()),
    )?;
    let known = Known {
        clusters: &maps[ResourceType::Cluster],
        routes: &maps[ResourceType::Route],
    };
    let cla = &maps[ResourceType::Endpoint];
    // Only node selections narrow by the graph: without any, it is not kept.
    let narrowed = !r.policy.selectors.is_empty();
    if narrowed {
        for name in encoded() {
            graph.cluster_cla.insert(name.to_string(), name.to_string());
        }
    }

    for c in &r.clusters {
        if is_eds(c) {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            if !cla.contains_key(service) {
                return Err(dangling(
                    format!("cluster {:?}", c.name),
                    "ClusterLoadAssignment",
                    service,
                ));
            }
            if narrowed {
                graph
                    .cluster_cla
                    .insert(c.name.clone(), service.to_string());
            }
        }
    }
    for l in &r.listeners {
        let from = format!("listener {:?}", l.name);
        let mut routes = Vec::new();
        let mut clusters = Vec::new();
        let typed = l
            .filter_chains
            .iter()
            .chain(l.default_filter_chain.iter())
            .flat_map(|chain| chain.filters.iter())
            .filter_map(|f| match &f.config_type {
                Some(ConfigType::TypedConfig(any)) => Some(any),
                _ => None,
            })
            .chain(
                l.api_listener
                    .as_ref()
                    .and_then(|a| a.api_listener.as_ref()),
            );
        for any in typed {
            if any.type_url == pylon::type_url::TCP_PROXY {
                let tp: TcpProxy = decode(&from, any)?;
                match tp.cluster_specifier {
                    Some(tcp_proxy::ClusterSpecifier::Cluster(name)) => {
                        known.cluster(&from, &name, &mut clusters)?
                    }
                    Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                        for c in &w.clusters {
                            known.cluster(&from, &c.name, &mut clusters)?;
                        }
                    }
                    None => {}
                }
            } else if any.type_url == pylon::type_url::HTTP_CONNECTION_MANAGER {
                let hcm: HttpConnectionManager = decode(&from, any)?;
                match hcm.route_specifier {
                    Some(RouteSpecifier::Rds(rds)) => {
                        known.route(&from, &rds.route_config_name)?;
                        routes.push(rds.route_config_name);
                    }
                    Some(RouteSpecifier::RouteConfig(rc)) => known.routes_of(&rc, &mut clusters)?,
                    _ => {}
                }
            }
        }
        graph.listener_routes.insert(l.name.clone(), routes);
        graph.listener_clusters.insert(l.name.clone(), clusters);
    }
    for rc in &r.routes {
        let mut clusters = Vec::new();
        known.routes_of(rc, &mut clusters)?;
        graph.route_clusters.insert(rc.name.clone(), clusters);
    }
    Ok(graph)
}

/// The names references may point at.
struct Known<'a> {
    clusters: &'a Map,
    routes: &'a Map,
}

impl Known<'_> {
    fn cluster(&self, from: &str, name: &str, out: &mut Vec<String>) -> Result<(), SnapshotError> {
        if self.clusters.contains_key(name) {
            out.push(name.to_string());
            Ok(())
        } else {
            Err(dangling(from.to_string(), "cluster", name))
        }
    }

    fn route(&self, from: &str, name: &str) -> Result<(), SnapshotError> {
        if self.routes.contains_key(name) {
            Ok(())
        } else {
            Err(dangling(from.to_string(), "RouteConfiguration", name))
        }
    }

    fn routes_of(
        &self,
        rc: &RouteConfiguration,
        out: &mut Vec<String>,
    ) -> Result<(), SnapshotError> {
        let from = format!("route configuration {:?}", rc.name);
        for route in rc.virtual_hosts.iter().flat_map(|vh| vh.routes.iter()) {
            if let Some(Action::Route(action)) = &route.action {
                match &action.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(name)) => self.cluster(&from, name, out)?,
                    Some(ClusterSpecifier::WeightedClusters(w)) => {
                        for c in &w.clusters {
                            self.cluster(&from, &c.name, out)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

fn dangling(from: String, kind: &'static str, name: &str) -> SnapshotError {
    SnapshotError::Dangling {
        from,
        kind,
        name: name.to_string(),
    }
}

fn is_eds(c: &Cluster) -> bool {
    matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
    )
}

fn unique<'a>(
    kind: &'static str,
    names: impl Iterator<Item = &'a str>,
) -> Result<BTreeSet<&'a str>, SnapshotError> {
    let mut set = BTreeSet::new();
    for n in names {
        if !set.insert(n) {
            return Err(SnapshotError::Duplicate {
                kind,
                name: n.to_string(),
            });
        }
    }
    Ok(set)
}

fn decode<M: Message + Default>(from: &str, any: &Any) -> Result<M, SnapshotError> {
    M::decode(any.value.as_slice()).map_err(|e| SnapshotError::Decode {
        from: from.to_string(),
        type_url: any.type_url.clone(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn eds_cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig::default()),
            ..Default::default()
        }
    }

    fn cla(name: &str) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        }
    }

    fn tcp_listener(name: &str, cluster: &str) -> Listener {
        let tp = TcpProxy {
            stat_prefix: name.into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        };
        Listener {
            name: name.into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: pylon::type_url::TCP_PROXY_FILTER.into(),
                    config_type: Some(ConfigType::TypedConfig(Any {
                        type_url: pylon::type_url::TCP_PROXY.into(),
                        value: tp.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// EDS cluster `name` and its load assignment, as the reload memo keeps
    /// them.
    fn kept(name: &str) -> Arc<crate::resources::Encoded> {
        Arc::new(crate::resources::Encoded {
            name: name.into(),
            cluster: eds_cluster(name).encode_to_vec(),
            endpoints: cla(name).encode_to_vec(),
            inline_secrets: Vec::new(),
            served: OnceLock::new(),
        })
    }

    fn resources() -> Resources {
        Resources {
            clusters: vec![eds_cluster("a"), eds_cluster("b")],
            endpoints: vec![cla("a"), cla("b")],
            listeners: vec![tcp_listener("l", "a")],
            routes: vec![],
            policy: Policy::default(),
            names: Vec::new(),
            encoded: Vec::new(),
        }
    }

    #[test]
    fn views_narrow_to_a_selection_and_keep_versions() {
        use crate::selection::Glob;
        let selector = |name: &str, listeners: Names, clusters: Names| Selector {
            name: name.into(),
            id: Some(Glob::new(format!("{name}-*"))),
            cluster: None,
            metadata: Vec::new(),
            listeners,
            clusters,
        };
        let only = |n: &str| Names::Only([n.to_string()].into());
        // Cluster b as protos, then as a kept (encoded) cluster.
        for as_kept in [false, true] {
            let mut r = resources();
            if as_kept {
                r.clusters.retain(|c| c.name != "b");
                r.endpoints.retain(|e| e.cluster_name != "b");
                r.encoded.push(kept("b"));
            }
            r.policy = Policy {
                selectors: vec![
                    selector("front", only("l"), Names::default()),
                    selector("b", Names::default(), only("b")),
                    selector("all", Names::All, Names::All),
                ],
                clients: Vec::new(),
            };
            let full = Arc::new(Snapshot::build(r, None).unwrap());
            let names = |s: &Snapshot, ty: ResourceType| -> Vec<String> {
                s.get(ty).resources.keys().map(|k| k.to_string()).collect()
            };
            let node = |id: &str| envoy_types::pb::envoy::config::core::v3::Node {
                id: id.into(),
                ..Default::default()
            };
            let view = |id: &str| full.view(full.policy().select(&node(id)));

            let front = view("front-1");
            assert_eq!(front.selection, "front");
            assert_eq!(names(&front, ResourceType::Listener), ["l"]);
            // The listener brings the cluster it proxies to, and its endpoints.
            assert_eq!(names(&front, ResourceType::Cluster), ["a"]);
            assert_eq!(names(&front, ResourceType::Endpoint), ["a"]);
            assert_eq!(front.version, full.version);
            assert_eq!(
                front.get(ResourceType::Cluster).version,
                full.get(ResourceType::Cluster).version
            );
            assert_eq!(
                front.get(ResourceType::Cluster).resources["a"],
                full.get(ResourceType::Cluster).resources["a"]
            );
            // Built once, shared by every stream of the selection.
            assert!(Arc::ptr_eq(&front, &view("front-2")));

            let b = view("b-1");
            assert!(names(&b, ResourceType::Listener).is_empty());
            assert_eq!(names(&b, ResourceType::Cluster), ["b"]);
            assert_eq!(names(&b, ResourceType::Endpoint), ["b"]);

            assert!(Arc::ptr_eq(&view("all-1"), &full));
            let default = view("nobody");
            assert!(Arc::ptr_eq(&default, &full));
            assert_eq!(default.selection, DEFAULT_SELECTION);
        }
    }

    #[test]
    fn versions_depend_on_content_only() {
        let s1 = Snapshot::build(resources(), None).unwrap();
        let s2 = Snapshot::build(resources(), None).unwrap();
        assert_eq!(s1.version, s2.version);
        let mut changed = resources();
        changed.clusters[1].connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 3,
            nanos: 0,
        });
        let s3 = Snapshot::build(changed, Some(&s1)).unwrap();
        assert_ne!(s1.version, s3.version);
        assert_ne!(
            s1.get(ResourceType::Cluster).version,
            s3.get(ResourceType::Cluster).version
        );
        // Unchanged types keep their version and share their encoded resources.
        assert_eq!(
            s1.get(ResourceType::Endpoint).version,
            s3.get(ResourceType::Endpoint).version
        );
        let a1 = &s1.get(ResourceType::Cluster).resources["a"];
        let a3 = &s3.get(ResourceType::Cluster).resources["a"];
        assert!(Arc::ptr_eq(a1, a3));
    }

    #[test]
    fn changes_are_listed_once_per_map_and_unchanged_types_share_theirs() {
        let s1 = Snapshot::build(resources(), None).unwrap();
        let mut r = resources();
        r.clusters[1].connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 3,
            nanos: 0,
        });
        r.clusters.push(eds_cluster("c"));
        r.endpoints.push(cla("c"));
        r.clusters.remove(0);
        r.endpoints.remove(0);
        r.listeners.clear();
        let s2 = Snapshot::build(r, Some(&s1)).unwrap();
        let old = &s1.get(ResourceType::Cluster).resources;
        let changes = s2.get(ResourceType::Cluster).changes_from(old);
        let names: Vec<&str> = changes.iter().map(|n| &**n).collect();
        assert_eq!(names, ["a", "b", "c"]);
        // Computed once for that map, shared after.
        let again = s2.get(ResourceType::Cluster).changes_from(old);
        assert!(Arc::ptr_eq(&changes, &again));
        let eds = s2
            .get(ResourceType::Endpoint)
            .changes_from(&s1.get(ResourceType::Endpoint).resources);
        assert_eq!(eds.iter().map(|n| &**n).collect::<Vec<_>>(), ["a", "c"]);
        // A type whose content did not change keeps the previous map.
        let s3 = Snapshot::build(resources(), Some(&s1)).unwrap();
        for ty in ResourceType::ALL {
            assert!(Arc::ptr_eq(&s1.get(ty).resources, &s3.get(ty).resources));
            assert!(s3.get(ty).changes_from(&s1.get(ty).resources).is_empty());
        }
    }

    #[test]
    fn map_order_does_not_change_the_version() {
        // Struct is a protobuf map: its encoding order follows HashMap order,
        // which differs between instances. The version must not.
        let mut versions = BTreeSet::new();
        for _ in 0..8 {
            let mut r = resources();
            let mut fields = std::collections::HashMap::new();
            for k in ["zeta", "alpha", "mid", "beta", "omega"] {
                fields.insert(k.to_string(), Value::default());
            }
            r.clusters[0].metadata = Some(envoy_types::pb::envoy::config::core::v3::Metadata {
                filter_metadata: [("pylon".to_string(), Struct { fields })].into(),
                ..Default::default()
            });
            versions.insert(Snapshot::build(r, None).unwrap().version);
        }
        assert_eq!(versions.len(), 1);
    }

    #[test]
    fn inconsistent_revisions_are_refused() {
        let mut r = resources();
        r.endpoints.pop();
        assert_eq!(
            Snapshot::build(r, None).unwrap_err().to_string(),
            "cluster \"b\" refers to ClusterLoadAssignment \"b\", which does not exist"
        );
        let mut r = resources();
        r.listeners.push(tcp_listener("m", "nope"));
        assert_eq!(
            Snapshot::build(r, None).unwrap_err().to_string(),
            "listener \"m\" refers to cluster \"nope\", which does not exist"
        );
        let mut r = resources();
        r.clusters.push(eds_cluster("a"));
        assert_eq!(
            Snapshot::build(r, None).unwrap_err().to_string(),
            "duplicate cds name \"a\""
        );
        // A kept (encoded) cluster counts as any other.
        let mut r = resources();
        r.encoded.push(kept("b"));
        assert_eq!(
            Snapshot::build(r, None).unwrap_err().to_string(),
            "duplicate cds name \"b\""
        );
    }

    #[test]
    fn interned_names_share_the_snapshots_strings() {
        let s = Snapshot::build(resources(), None).unwrap();
        let all = &s.get(ResourceType::Cluster).resources;
        let (key, r) = all.iter().next().unwrap();
        let name = intern(all, key.to_string());
        assert!(Arc::ptr_eq(&name, key));
        assert!(Arc::ptr_eq(&name, &r.name));
        let unknown = intern(all, "not-served".to_string());
        assert_eq!(&*unknown, "not-served");
    }

    #[test]
    fn type_urls_round_trip() {
        for t in ResourceType::ALL {
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
        }
        assert_eq!(
            ResourceType::from_type_url("type.googleapis.com/nope"),
            None
        );
    }
}
