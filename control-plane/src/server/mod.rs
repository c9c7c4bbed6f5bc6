//! The gRPC edge: ADS (state-of-the-world and delta), the standalone
//! CDS/EDS/LDS/RDS services and CSDS ([`csds`]), all over one tonic server.
//!
//! Each stream runs a protocol state machine ([`sotw`], [`delta`]) fed by
//! its requests and, once its first request names the node, by the node's
//! subscription to the cache (the node's view of every snapshot: which
//! `nodes:` selection applies is the cache's business, not the server's;
//! the server only checks the `clients:` rules of mutual TLS). The state
//! machines answer [`wire::Outgoing`] responses, which carry the snapshot's
//! shared resources; [`streams`] frames them onto the wire. [`limits`]
//! bounds what one client may make the server hold. The server knows no
//! YAML; `tonic::Status` appears only here.

pub mod csds;
pub mod delta;
pub mod limits;
pub mod sotw;
pub mod streams;
pub mod wire;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::cluster::v3::cluster_discovery_service_server::{
    ClusterDiscoveryService, ClusterDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_server::{
    EndpointDiscoveryService, EndpointDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::listener::v3::listener_discovery_service_server::{
    ListenerDiscoveryService, ListenerDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::route::v3::route_discovery_service_server::{
    RouteDiscoveryService, RouteDiscoveryServiceServer,
};
use futures::Stream;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::{Cache, Subscription};
use crate::registry::{Registry, StreamGuard};
use crate::snapshot::{ResourceType, Snapshot};

/// A stream's protocol state machine (SotW or delta), free of I/O.
pub trait Protocol: Send + 'static {
    /// What the client sends.
    type Request: Send + 'static;
    /// What the server answers.
    type Response: Send + 'static;
    /// Handles one request against the snapshot being served.
    fn on_request(
        &mut self,
        req: Self::Request,
        snap: &Snapshot,
    ) -> Result<Vec<Self::Response>, Status>;
    /// Handles a new snapshot.
    fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<Self::Response>;
    /// The stream's registry entry.
    fn guard(&self) -> &StreamGuard;
    /// The stream's registry entry, to record the node in.
    fn guard_mut(&mut self) -> &mut StreamGuard;
    /// The node a request carries, if any, taken out of it (the state
    /// machine does not read it; the stream keeps one shared copy).
    fn take_node(req: &mut Self::Request) -> Option<Node>;
}

/// One stream: feeds its protocol state machine the client's requests and
/// every new snapshot, and yields what it answers.
///
/// The driver is the response body's source (see [`streams`]): the HTTP/2
/// layer polls it for the next response when the stream may send, so the
/// stream needs no task and no queue of its own. A client that stops reading
/// stops being polled once its flow-control window is full; snapshots
/// published meanwhile are not queued for it, and when it reads again it
/// is sent what changed since what it holds, once, from the latest snapshot.
/// Responses made together (one snapshot's CDS, EDS, LDS and RDS) are yielded
/// before anything else is read.
pub struct Driver<P: Protocol, S> {
    shared: Arc<Shared>,
    requests: S,
    snapshots: Feed,
    /// What this stream's node receives of the snapshot being served; set
    /// from the first request (a node cannot change on a stream) and after
    /// every new snapshot.
    snap: Arc<Snapshot>,
    state: P,
    /// Responses made and not yet yielded.
    pending: std::vec::IntoIter<P::Response>,
    done: bool,
}

// Nothing in a driver is pinned: its request stream is `Unpin` and is
// polled through `Pin::new`.
impl<P: Protocol, S> Unpin for Driver<P, S> {}

impl<P: Protocol, S> std::fmt::Debug for Driver<P, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("stream", &self.state.guard().id())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Where a stream's snapshots come from: the whole snapshot's changes (only
/// to be woken) until the first request names the node, then the node's
/// subscription, which yields the node's view of each snapshot.
enum Feed {
    Waiting(WatchStream<Arc<Snapshot>>),
    Node(Subscription),
}

impl Feed {
    /// The next snapshot: `Some(view)` once the node is known, `None` before
    /// (nothing is subscribed then, so there is nothing to send).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Option<Arc<Snapshot>>>> {
        match self {
            Feed::Waiting(changes) => Pin::new(changes).poll_next(cx).map(|s| s.map(|_| None)),
            Feed::Node(sub) => Pin::new(sub).poll_next(cx).map(|s| s.map(Some)),
        }
    }
}

/// Requests (or snapshots) handled in one poll before the driver yields to
/// other streams.
const POLL_BUDGET: usize = 32;

impl<P, S> Driver<P, S>
where
    P: Protocol,
    S: Stream<Item = Result<P::Request, Status>> + Unpin,
{
    fn new(shared: Arc<Shared>, requests: S, state: P) -> Self {
        let snapshots = shared.cache.watch();
        let snap = snapshots.borrow().clone();
        Driver {
            snap,
            snapshots: Feed::Waiting(WatchStream::from_changes(snapshots)),
            shared,
            requests,
            state,
            pending: Vec::new().into_iter(),
            done: false,
        }
    }

    fn on_request(&mut self, mut req: P::Request) -> Result<Vec<P::Response>, Status> {
        let Driver {
            shared,
            state,
            snapshots,
            snap,
            ..
        } = self;
        if let Some(view) = take_node(shared, state, &mut req, snapshots)? {
            *snap = view;
        }
        state.on_request(req, snap)
    }

    /// Handles the node's view of a new snapshot (`None`: the node is not
    /// known yet, and nothing is subscribed).
    fn on_snapshot(&mut self, view: Option<Arc<Snapshot>>) -> Result<Vec<P::Response>, Status> {
        let (Some(view), Feed::Node(sub)) = (view, &self.snapshots) else {
            return Ok(Vec::new());
        };
        // A rule that no longer allows this node ends the stream.
        authorize(
            self.shared.transport,
            sub.policy(),
            self.state.guard(),
            sub.node(),
        )?;
        self.state.guard().set_selection(sub.selection());
        self.snap = view;
        Ok(self.state.on_snapshot(&self.snap))
    }

    /// Ends the stream with `status` (OK: `None`).
    fn end(&mut self, status: Option<Status>) -> Poll<Option<Result<P::Response, Status>>> {
        self.done = true;
        Poll::Ready(status.map(Err))
    }
}

impl<P, S> Stream for Driver<P, S>
where
    P: Protocol,
    S: Stream<Item = Result<P::Request, Status>> + Unpin,
{
    type Item = Result<P::Response, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        for _ in 0..POLL_BUDGET {
            if let Some(r) = this.pending.next() {
                return Poll::Ready(Some(Ok(r)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.shared.shutdown.is_cancelled() {
                return this.end(None);
            }
            let out = match Pin::new(&mut this.requests).poll_next(cx) {
                Poll::Ready(None) => return this.end(None),
                Poll::Ready(Some(Err(status))) => {
                    let id = this.state.guard().id();
                    tracing::debug!(stream = id, %status, "stream error");
                    let reason = match status.code() {
                        tonic::Code::OutOfRange => Some(limits::Reason::RequestTooLarge),
                        tonic::Code::Internal => Some(limits::Reason::Undecodable),
                        _ => None,
                    };
                    if let Some(reason) = reason {
                        this.state.guard().metrics().refused(reason);
                    }
                    // Tell the client why: a request that cannot be decoded
                    // is INTERNAL, one over the size limit OUT_OF_RANGE.
                    return this.end(Some(status));
                }
                Poll::Ready(Some(Ok(req))) => this.on_request(req),
                Poll::Pending => match this.snapshots.poll_next(cx) {
                    // The cache is gone: the server is stopping.
                    Poll::Ready(None) => return this.end(None),
                    // Checked again at the top: shutdown wakes every stream.
                    Poll::Ready(Some(_)) if this.shared.shutdown.is_cancelled() => continue,
                    Poll::Ready(Some(view)) => this.on_snapshot(view),
                    Poll::Pending => return Poll::Pending,
                },
            };
            match out {
                Ok(out) => this.pending = out.into_iter(),
                Err(status) => return this.end(Some(status)),
            }
        }
        // Budget spent with more to do: let other streams run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl<P: Protocol, S> Drop for Driver<P, S> {
    fn drop(&mut self) {
        let guard = self.state.guard();
        tracing::info!(stream = guard.id(), node = guard.node(), "stream closed");
    }
}

/// Checks the node `req` carries against [`limits::MAX_NODE_BYTES`], records
/// the first one in the registry, and fixes the stream's node on its first
/// request by subscribing with it. Returns the node's view of the snapshot
/// being served when it was just fixed.
///
/// The node is taken out of the request and kept once, shared by the
/// stream's subscription and its registry entry: later copies (Envoy may
/// repeat it on every request) are dropped with their request.
fn take_node<P: Protocol>(
    shared: &Shared,
    state: &mut P,
    req: &mut P::Request,
    feed: &mut Feed,
) -> Result<Option<Arc<Snapshot>>, Status> {
    use prost::Message as _;
    let sent = P::take_node(req);
    if let Some(n) = &sent {
        limits::check_node(state.guard().metrics(), n.encoded_len())?;
    }
    let sent = match sent {
        Some(n) if !state.guard().has_node() => {
            let n = Arc::new(n);
            state.guard_mut().set_node(Arc::clone(&n));
            Some(n)
        }
        _ => None,
    };
    if matches!(feed, Feed::Node(_)) {
        return Ok(None);
    }
    let sub = shared.cache.subscribe(sent.unwrap_or_default());
    let view = Arc::clone(sub.current());
    authorize(shared.transport, sub.policy(), state.guard(), sub.node())?;
    state.guard().set_selection(sub.selection());
    *feed = Feed::Node(sub);
    Ok(Some(view))
}

/// The largest request message decoded (tonic's default, stated): a larger
/// one ends its stream with `OUT_OF_RANGE` before it is buffered.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// How clients reach the xDS listener, which decides what they are trusted
/// with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Plaintext on a loopback address: local tooling, trusted (CSDS is
    /// answered).
    LocalPlaintext,
    /// Plaintext beyond loopback, accepted with `--insecure`: anyone who can
    /// reach the port can claim any node (CSDS is refused).
    InsecurePlaintext,
    /// TLS without client certificates: clients know the server, not the
    /// other way round (CSDS is refused).
    Tls,
    /// Mutual TLS: every client presents a certificate from the client CA,
    /// and the `clients:` rules bind its identity to the nodes it may claim.
    MutualTls,
}

/// What every stream task shares.
#[derive(Debug)]
pub struct Shared {
    /// The snapshot source.
    pub cache: Cache,
    /// Connected streams and their sync state.
    pub registry: Arc<Registry>,
    /// Cancelled when the server stops: every stream ends.
    pub shutdown: CancellationToken,
    /// How clients connect.
    pub transport: Transport,
}

/// The identity of the verified client certificate of `req`, if any.
pub(crate) fn identity<T>(req: &Request<T>) -> Option<pylon::tls::Identity> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    // Set by tonic for connections served from a TLS stream.
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    certs.first().map(pylon::tls::Identity::of)
}

/// Whether the stream of `guard` may claim `node` under `policy`: over
/// mutual TLS, the `clients:` rules decide; on any other transport they
/// cannot (there is no verified identity), and every node may be claimed.
fn authorize(
    transport: Transport,
    policy: &crate::selection::Policy,
    guard: &StreamGuard,
    node: &Node,
) -> Result<(), Status> {
    if transport != Transport::MutualTls {
        return Ok(());
    }
    let anonymous = pylon::tls::Identity::default();
    let identity = guard.identity().unwrap_or(&anonymous);
    let Err(denied) = policy.authorize(identity, &node.id, &node.cluster) else {
        return Ok(());
    };
    let (who, id, cluster) = (
        crate::registry::display(&identity.display()),
        crate::registry::display(&node.id),
        crate::registry::display(&node.cluster),
    );
    guard.metrics().denied(denied);
    if let Some(suppressed) = guard.client_warnings().allow() {
        tracing::warn!(
            stream = guard.id(),
            identity = %who,
            node = %id,
            cluster = %cluster,
            reason = denied.as_str(),
            suppressed,
            "stream refused: the certificate's identity may not claim this node"
        );
    }
    Err(Status::permission_denied(format!(
        "certificate identity {who} may not claim node {id:?} (cluster {cluster:?}): \
         no `clients:` rule of this server allows it"
    )))
}

/// The xDS services, cheap to clone (one per tonic service).
#[derive(Debug, Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

/// A SotW stream's driver over a stream of requests `S`.
pub type SotwDriver<S> = Driver<sotw::SotwStream, S>;
/// A delta stream's driver over a stream of requests `S`.
pub type DeltaDriver<S> = Driver<delta::DeltaStream, S>;
/// The stream types the generated standalone-service traits require. The
/// streaming methods are served by [`streams::XdsStreams`] before the
/// generated server sees their request, so these streams are never made.
type NeverSotw = futures::stream::Empty<Result<DiscoveryResponse, Status>>;
type NeverDelta = futures::stream::Empty<Result<DeltaDiscoveryResponse, Status>>;

/// The body of a generated streaming method: unreachable (see [`NeverSotw`]),
/// and an honest answer should that ever change.
fn served_by_hand<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "this streaming method is served by the hand-framed stream service",
    ))
}

impl XdsServer {
    /// Services backed by `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        XdsServer { shared }
    }

    /// A tonic router with ADS and the four standalone services.
    pub fn router(&self) -> tonic::transport::server::Router {
        /// Streams one HTTP/2 connection may have open at once (tonic sets no
        /// limit). Envoy and gRPC clients open one ADS stream per connection;
        /// a client asking for more waits for some to end.
        const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
        /// A connection the peer has sent nothing on for this long is pinged,
        /// so that the streams of a peer that vanished without closing its
        /// connection end (when the ping goes unanswered for tonic's 20 s
        /// keepalive timeout) instead of lingering forever.
        const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
        tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            // ADS has only its two streaming methods, served by hand: no
            // generated server behind them.
            .add_service(self.streams(
                streams::AdsOnly,
                None,
                ("StreamAggregatedResources", "DeltaAggregatedResources"),
            ))
            .add_service(
                self.streams(
                    ClusterDiscoveryServiceServer::new(self.clone())
                        .max_decoding_message_size(MAX_REQUEST_BYTES),
                    Some(ResourceType::Cluster),
                    ("StreamClusters", "DeltaClusters"),
                ),
            )
            .add_service(
                self.streams(
                    EndpointDiscoveryServiceServer::new(self.clone())
                        .max_decoding_message_size(MAX_REQUEST_BYTES),
                    Some(ResourceType::Endpoint),
                    ("StreamEndpoints", "DeltaEndpoints"),
                ),
            )
            .add_service(
                self.streams(
                    ListenerDiscoveryServiceServer::new(self.clone())
                        .max_decoding_message_size(MAX_REQUEST_BYTES),
                    Some(ResourceType::Listener),
                    ("StreamListeners", "DeltaListeners"),
                ),
            )
            .add_service(
                self.streams(
                    RouteDiscoveryServiceServer::new(self.clone())
                        .max_decoding_message_size(MAX_REQUEST_BYTES),
                    Some(ResourceType::Route),
                    ("StreamRoutes", "DeltaRoutes"),
                ),
            )
            .add_service(csds::Csds::new(Arc::clone(&self.shared)).service())
    }

    /// `generated` with its `methods` (SotW, delta) served by
    /// [`streams::XdsStreams`] for `only` one type (`None`: ADS).
    fn streams<S>(
        &self,
        generated: S,
        only: Option<ResourceType>,
        methods: (&'static str, &'static str),
    ) -> streams::XdsStreams<S> {
        streams::XdsStreams::new(generated, self.clone(), only, methods, MAX_REQUEST_BYTES)
    }

    /// Opens a SotW stream over `requests`; `UNAVAILABLE` when the server
    /// is full.
    fn sotw<S>(
        &self,
        req: Request<S>,
        only: Option<ResourceType>,
    ) -> Result<Response<SotwDriver<S>>, Status>
    where
        S: Stream<Item = Result<DiscoveryRequest, Status>> + Unpin,
    {
        let protocol = only.map_or("ads", ResourceType::short);
        let guard = self
            .shared
            .registry
            .open(protocol, req.remote_addr(), identity(&req))?;
        let state = sotw::SotwStream::new(guard, only);
        Ok(Response::new(Driver::new(
            Arc::clone(&self.shared),
            req.into_inner(),
            state,
        )))
    }

    /// Opens a delta stream over `requests`; `UNAVAILABLE` when the server
    /// is full.
    fn delta<S>(
        &self,
        req: Request<S>,
        only: Option<ResourceType>,
    ) -> Result<Response<DeltaDriver<S>>, Status>
    where
        S: Stream<Item = Result<DeltaDiscoveryRequest, Status>> + Unpin,
    {
        let protocol = format!("{}-delta", only.map_or("ads", ResourceType::short));
        let guard = self
            .shared
            .registry
            .open(&protocol, req.remote_addr(), identity(&req))?;
        let state = delta::DeltaStream::new(guard, only);
        Ok(Response::new(Driver::new(
            Arc::clone(&self.shared),
            req.into_inner(),
            state,
        )))
    }

    /// Unary fetch: the named resources (all of a full-set type when none are named).
    fn fetch(&self, req: DiscoveryRequest, ty: ResourceType) -> Result<DiscoveryResponse, Status> {
        if req.type_url != ty.type_url() && !req.type_url.is_empty() {
            return Err(Status::invalid_argument(format!(
                "this service serves {}, not {}",
                ty.type_url(),
                req.type_url
            )));
        }
        let snap = self.shared.cache.current();
        let all = &snap.get(ty).resources;
        let wildcard = req.resource_names.is_empty() || req.resource_names.iter().any(|n| n == "*");
        let resources = if wildcard {
            all.values().map(|r| r.body.clone()).collect()
        } else {
            req.resource_names
                .iter()
                .filter_map(|n| all.get(n.as_str()).map(|r| r.body.clone()))
                .collect()
        };
        Ok(DiscoveryResponse {
            version_info: snap.get(ty).version.to_string(),
            resources,
            type_url: ty.type_url().to_string(),
            ..Default::default()
        })
    }
}

/// Implements one standalone discovery service's generated trait: its unary
/// `Fetch*` method, the only one its generated server is left to route.
/// The trait also requires the two streaming methods, which
/// [`streams::XdsStreams`] serves before they reach it.
macro_rules! single_type_service {
    ($trait:ident, $ty:expr, $stream:ident, $delta_stream:ident, $sotw:ident, $delta:ident, $fetch:ident) => {
        #[tonic::async_trait]
        impl $trait for XdsServer {
            type $stream = NeverSotw;
            type $delta_stream = NeverDelta;

            async fn $sotw(
                &self,
                _: Request<Streaming<DiscoveryRequest>>,
            ) -> Result<Response<NeverSotw>, Status> {
                served_by_hand()
            }

            async fn $delta(
                &self,
                _: Request<Streaming<DeltaDiscoveryRequest>>,
            ) -> Result<Response<NeverDelta>, Status> {
                served_by_hand()
            }

            async fn $fetch(
                &self,
                req: Request<DiscoveryRequest>,
            ) -> Result<Response<DiscoveryResponse>, Status> {
                self.fetch(req.into_inner(), $ty).map(Response::new)
            }
        }
    };
}

single_type_service!(
    ClusterDiscoveryService,
    ResourceType::Cluster,
    StreamClustersStream,
    DeltaClustersStream,
    stream_clusters,
    delta_clusters,
    fetch_clusters
);
single_type_service!(
    EndpointDiscoveryService,
    ResourceType::Endpoint,
    StreamEndpointsStream,
    DeltaEndpointsStream,
    stream_endpoints,
    delta_endpoints,
    fetch_endpoints
);
single_type_service!(
    ListenerDiscoveryService,
    ResourceType::Listener,
    StreamListenersStream,
    DeltaListenersStream,
    stream_listeners,
    delta_listeners,
    fetch_listeners
);
single_type_service!(
    RouteDiscoveryService,
    ResourceType::Route,
    StreamRoutesStream,
    DeltaRoutesStream,
    stream_routes,
    delta_routes,
    fetch_routes
);

#[cfg(test)]
pub(crate) mod tests {
    //! Fixtures shared by the stream state-machine tests.
    use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        tcp_proxy, TcpProxy,
    };
    use envoy_types::pb::google::protobuf::{Any, Duration};
    use prost::Message;

    use crate::resources::Resources;
    use crate::snapshot::Snapshot;

    pub fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            cluster: "test".into(),
            ..Default::default()
        }
    }

    pub fn snapshot(r: &Resources) -> Snapshot {
        Snapshot::build(r.clone(), None).unwrap()
    }

    /// The `name` of each encoded Cluster/ClusterLoadAssignment/Listener.
    pub fn names_of(anys: &[Any]) -> Vec<String> {
        anys.iter()
            .map(|a| match a.type_url.as_str() {
                pylon::type_url::CLUSTER => Cluster::decode(a.value.as_slice()).unwrap().name,
                pylon::type_url::ENDPOINT => {
                    ClusterLoadAssignment::decode(a.value.as_slice())
                        .unwrap()
                        .cluster_name
                }
                pylon::type_url::LISTENER => Listener::decode(a.value.as_slice()).unwrap().name,
                other => panic!("unexpected {other}"),
            })
            .collect()
    }

    pub struct Fixture;

    fn cluster(name: &str, timeout_s: i64) -> Cluster {
        Cluster {
            name: name.into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig::default()),
            connect_timeout: Some(Duration {
                seconds: timeout_s,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn cla(name: &str) -> ClusterLoadAssignment {
        ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        }
    }

    fn listener(cluster: &str) -> Listener {
        let tp = TcpProxy {
            stat_prefix: format!("l-{cluster}"),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        };
        Listener {
            name: "l".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: pylon::type_url::TCP_PROXY_FILTER.into(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: pylon::type_url::TCP_PROXY.into(),
                        value: tp.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    impl Fixture {
        pub fn empty() -> Resources {
            Resources::default()
        }
        pub fn one_cluster() -> Resources {
            Resources {
                clusters: vec![cluster("a", 5)],
                endpoints: vec![cla("a")],
                ..Default::default()
            }
        }
        pub fn two_clusters() -> Resources {
            Resources {
                clusters: vec![cluster("a", 5), cluster("b", 5)],
                endpoints: vec![cla("a"), cla("b")],
                ..Default::default()
            }
        }
        /// `two_clusters` with b's load assignment changed.
        pub fn two_clusters_b_moved() -> Resources {
            use envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints;
            let mut r = Self::two_clusters();
            r.endpoints[1].endpoints = vec![LocalityLbEndpoints {
                priority: 1,
                ..Default::default()
            }];
            r
        }
        pub fn two_clusters_timeout_changed() -> Resources {
            Resources {
                clusters: vec![cluster("a", 7), cluster("b", 7)],
                endpoints: vec![cla("a"), cla("b")],
                ..Default::default()
            }
        }
        pub fn with_ghost() -> Resources {
            Resources {
                clusters: vec![cluster("a", 5), cluster("ghost", 5)],
                endpoints: vec![cla("a"), cla("ghost")],
                ..Default::default()
            }
        }
        pub fn two_clusters_listener_on_b() -> Resources {
            Resources {
                listeners: vec![listener("b")],
                ..Self::two_clusters()
            }
        }
        pub fn one_cluster_listener_on_a() -> Resources {
            Resources {
                listeners: vec![listener("a")],
                ..Self::one_cluster()
            }
        }
        pub fn one_cluster_listener_on_a_changed() -> Resources {
            Resources {
                clusters: vec![cluster("a", 9)],
                endpoints: vec![cla("a")],
                listeners: vec![listener("a")],
                ..Default::default()
            }
        }
    }
}
