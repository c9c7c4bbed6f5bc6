//! The ADS client: one gRPC stream to the control plane carrying CDS, EDS,
//! LDS and RDS, state-of-the-world or delta.
//!
//! This module owns the stream, its requests (subscriptions, ACKs, NACKs),
//! reconnecting, and the order in which accepted configuration reaches the
//! runtime through a [`ConfigSink`]. It does not own the configuration in
//! force (the runtime does) nor decoding rules (`model`).
//!
//! # Use
//! ```ignore
//! let (client, state) = XdsClient::new(XdsOptions { targets, node: xds::node(id, cluster), delta: true, tls: None });
//! tokio::spawn(client.run(sink, shutdown.clone()));
//! state.status(); // for admin: connected, versions, last NACK, initialized
//! ```
//!
//! # Protocol
//! - Subscriptions: CDS and LDS as (legacy, empty-names) wildcards, as Envoy
//!   does; EDS for the `service_name` of every EDS cluster and RDS for the
//!   route configuration of every RDS listener, updated whenever clusters or
//!   listeners change (names still used by the version in force stay
//!   subscribed until it is replaced).
//! - Partial acceptance, as Envoy's CDS/LDS do: each resource of a response
//!   is decoded and validated on its own (`model::decode`). One that does not
//!   decode, has the wrong type, fails validation, or whose name appears
//!   twice in the response is left out: a new name is not added, a held name
//!   keeps its last good version. The valid ones are applied as usual (see
//!   `store` for warming and order).
//! - Any resource rejected: the response is NACKed (`error_detail` code 3,
//!   INVALID_ARGUMENT) with each rejected resource's [`NackError`] text,
//!   joined by `"; "` (`cluster rnd: lb_policy RANDOM is not supported`).
//!   A SotW NACK carries the previous accepted version, and that stays the
//!   version reported and resent after a reconnect, though the valid part is
//!   in force (each held resource keeps its own version: delta's
//!   `initial_resource_versions` name the rejected ones at their old
//!   version, so the server resends them). Nothing rejected: ACKed with the
//!   response's version and nonce.
//! - A resource the sink's [`ConfigSink::check`] refuses (pylon-proxy's
//!   sink: a listener whose address another process holds) is rejected
//!   before anything is applied, as one that did not decode.
//! - If the sink refuses the response's own type naming one of the
//!   response's resources, that resource is rejected too and the rest is
//!   retried without it; an error naming anything else rejects the whole
//!   response (nothing of it is applied).
//! - A first CDS or LDS response ends that type's initialization even when
//!   NACKed (Envoy does the same), so `/ready` does not wait forever on one
//!   bad resource.
//! - SotW: CDS and LDS responses are full sets (absent = removed, but a name
//!   present and rejected is kept; a rejected resource whose name cannot be
//!   read makes the response remove nothing); EDS and RDS responses are
//!   merged by name, and the assignments and routes of removed clusters and
//!   listeners are dropped by the client. Delta:
//!   `removed_resources` are applied; after a reconnect the first request of
//!   each type carries `initial_resource_versions` of what is held, so the
//!   server resends only what changed.
//! - The node goes in the first request of each stream only.
//! - Control plane down: the last config stays in force; reconnect with
//!   jittered exponential backoff from 100 ms to 10 s (reset once a stream
//!   has delivered a response). Connection events are logged at info.
//! - Several servers (replicas of one control plane serving the same
//!   content): the first is picked at random, so a fleet spreads over them,
//!   and each reconnect goes to the next one in the list. A delta client
//!   resumes on the new server with `initial_resource_versions`, so a
//!   replica serving the same content sends nothing new.
//!
//! # SotW or delta
//! Delta is the better default for pylon-proxy (`pylon-xds bootstrap --delta`
//! and `api_type: DELTA_GRPC`): a change to one cluster or listener sends that
//! resource only, where SotW resends every cluster (or listener) on each
//! change and the client re-decodes and re-compares all of them; and after a
//! reconnect `initial_resource_versions` spares resending everything. Both are
//! implemented; the bootstrap's `api_type` chooses (`XdsOptions::delta`).
//!
//! # Status
//! [`XdsClient::new`] returns an `Arc<XdsState>`; [`XdsState::status`] gives
//! an [`XdsStatus`] snapshot (connected, accepted version per type, last NACK,
//! whether the initial config has arrived and warmed) for the admin endpoints.
//!
//! # Structure
//! - `sotw` and `delta`: the two stream state machines, each a `Protocol`
//!   (first requests, a response in and the ACK or NACK and subscription
//!   changes out, resubscriptions after a reconcile). They hold no gRPC:
//!   `drive` runs one over any stream of responses, the gRPC one here, an
//!   in-memory one in the tests, which drive it on paused time.
//! - `store`: what is held and what is in force, and warming: the one place
//!   that decides when a cluster or listener is ready, and its one timeout
//!   ([`WARMING_TIMEOUT`]); `drive` wakes at its deadlines.
//! - The four types are [`pylon::ResourceType`]; what is kept per type
//!   (versions, nonces, subscriptions) is a [`pylon::PerType`].

mod delta;
mod sotw;
mod store;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::core::v3::{node::UserAgentVersionType, Node};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as PbLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration as PbRouteConfig;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc;
use prost::Message as _;
use pylon::{PerType, ResourceType};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::model::{self, Decoded, NackError};
pub use store::WARMING_TIMEOUT;
use store::{Store, Update};

/// Where the runtime takes the configuration the client accepted.
///
/// Each call carries the complete set of its type in force (a name absent
/// from the set is removed). Calls come in make-before-break order:
/// assignments before the clusters that use them, clusters before the
/// listeners that use them, route configurations before their listeners, and
/// removals of assignments and routes after their users. Two cases to expect:
/// `set_load_assignments` may carry an assignment whose cluster is still
/// warming (not yet given to `set_clusters`); and after the warming timeout an
/// EDS cluster may arrive without its assignment (no hosts yet), a listener
/// without its RDS route configuration (no routes: 404). The sink uses them
/// as given: the client has done the waiting ([`WARMING_TIMEOUT`]).
///
/// Resources from the bootstrap's `static_resources` are not included: an
/// implementation that also serves them must merge them into each set
/// (Envoy refuses xDS resources named like static ones; so may the sink).
///
/// `Err` rejects the set: for the type of the response being applied, the
/// response is NACKed with the error's text; the client keeps the previous
/// set in force. If the error names (`kind` and `name`) a resource of that
/// response, the client calls again without it (keeping its previous
/// version); otherwise it does not call again until something changes.
#[tonic::async_trait]
pub trait ConfigSink: Send + Sync + 'static {
    /// All clusters.
    async fn set_clusters(&self, v: Vec<model::Cluster>) -> Result<(), model::NackError>;
    /// All load assignments (EDS).
    async fn set_load_assignments(
        &self,
        v: Vec<model::LoadAssignment>,
    ) -> Result<(), model::NackError>;
    /// All listeners.
    async fn set_listeners(&self, v: Vec<model::Listener>) -> Result<(), model::NackError>;
    /// All route configurations (RDS).
    async fn set_route_configs(&self, v: Vec<model::RouteConfig>) -> Result<(), model::NackError>;
    /// Whether one decoded resource can be applied at all, before any set
    /// is: `Err` rejects that resource alone (the rest of its response is
    /// applied, and its held version, if any, stays), as Envoy rejects a
    /// listener whose address it cannot bind. The default accepts all.
    fn check(&self, _resource: &Decoded) -> Result<(), model::NackError> {
        Ok(())
    }
}

/// How to reach the control plane, and who we are.
#[derive(Debug, Clone)]
pub struct XdsOptions {
    /// The ADS servers, `host:port` each (the endpoints of the bootstrap's
    /// xDS cluster, or `--xds`): replicas serving the same content, tried
    /// in turn. A host name is resolved at each connect. At least one.
    pub targets: Vec<String>,
    /// TLS to the server; `None`: plaintext.
    pub tls: Option<XdsTls>,
    /// Sent in the first request of each stream; see [`node`].
    pub node: Node,
    /// Incremental (delta) ADS instead of state-of-the-world.
    pub delta: bool,
}

/// TLS to the xDS server: the client configuration (reloaded when its files
/// change; each connect uses the current one) and the name the server's
/// certificate must carry.
#[derive(Debug, Clone)]
pub struct XdsTls {
    /// CA, and optionally the client certificate.
    pub client: Arc<pylon::tls::ClientTls>,
    /// The server name checked against its certificate (and sent as SNI);
    /// `None`: the host of the target being dialled.
    pub server_name: Option<String>,
}

/// The host of `host:port` (an IPv6 literal without its brackets).
fn host_of(target: &str) -> &str {
    target
        .rsplit_once(':')
        .map_or(target, |(h, _)| h)
        .trim_matches(['[', ']'])
}

/// Dials the xDS server over TLS for tonic: TCP to the target, then the
/// handshake with the current client configuration.
#[derive(Debug, Clone)]
struct TlsDialer {
    target: String,
    tls: XdsTls,
}

impl tonic::codegen::Service<tonic::codegen::http::Uri> for TlsDialer {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: tonic::codegen::http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&this.target).await?;
            tcp.set_nodelay(true)?;
            let name = match &this.tls.server_name {
                Some(n) => n.as_str(),
                None => host_of(&this.target),
            };
            let tls = this.tls.client.connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// The `Node` pylon-proxy presents: id, cluster, user agent `pylon-proxy`
/// and this crate's version.
pub fn node(id: &str, cluster: &str) -> Node {
    Node {
        id: id.to_string(),
        cluster: cluster.to_string(),
        user_agent_name: "pylon-proxy".to_string(),
        user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").to_string(),
        )),
        ..Default::default()
    }
}

/// A snapshot of the client's state, for admin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XdsStatus {
    /// A stream to the control plane is open.
    pub connected: bool,
    /// The server of the current (or last) stream, `host:port`.
    pub server: Option<String>,
    /// Accepted version per type (`None`: nothing accepted yet): that of
    /// the last response ACKed (a partly accepted, NACKed response leaves
    /// it). SotW: the response's `version_info`; delta: its
    /// `system_version_info`.
    pub versions: PerType<Option<String>>,
    /// The text of the last NACK sent (kept after later ACKs).
    pub last_nack: Option<String>,
    /// The last error applying an already ACKed update (a warming resource
    /// the runtime refused); retried on the next change.
    pub last_apply_error: Option<String>,
    /// CDS and LDS have each answered once (ACKed, or NACKed: the valid part
    /// is applied) and what they brought has warmed (or timed out): Envoy's
    /// end of initialization. Stays true.
    pub initialized: bool,
}

/// The client's shared status; see [`XdsState::status`].
#[derive(Debug, Default)]
pub struct XdsState {
    status: Mutex<XdsStatus>,
}

impl XdsState {
    /// The current status.
    pub fn status(&self) -> XdsStatus {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, XdsStatus> {
        // The status is plain data; a panic while holding the lock cannot
        // leave it inconsistent.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The ADS client. Build with [`XdsClient::new`], then [`XdsClient::run`].
#[derive(Debug)]
pub struct XdsClient {
    opts: XdsOptions,
    state: Arc<XdsState>,
}

/// Runs an ADS client until `shutdown` (when no status is needed).
pub async fn run(opts: XdsOptions, sink: Arc<dyn ConfigSink>, shutdown: CancellationToken) {
    XdsClient::new(opts).0.run(sink, shutdown).await;
}

/// First reconnect delay.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Time to establish the TCP + HTTP/2 connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive: detects a control plane that vanished without closing.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response accepted (tonic's default of 4 MiB is small for big fleets).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("the server closed the stream")]
    Closed,
}

impl XdsClient {
    /// A client for `opts`, and its status handle.
    pub fn new(opts: XdsOptions) -> (XdsClient, Arc<XdsState>) {
        let state = Arc::new(XdsState::default());
        (
            XdsClient {
                opts,
                state: Arc::clone(&state),
            },
            state,
        )
    }

    /// Connects, and keeps reconnecting, until `shutdown` is cancelled.
    pub async fn run(self, sink: Arc<dyn ConfigSink>, shutdown: CancellationToken) {
        let mut cs = ClientState::new(sink, Arc::clone(&self.state));
        let mut backoff = Backoff::default();
        let mode = if self.opts.delta {
            "delta"
        } else {
            "state of the world"
        };
        let n = self.opts.targets.len().max(1);
        // A random first server spreads a fleet over the replicas.
        let mut at = rand::rng().random_range(0..n);
        loop {
            let Some(target) = self.opts.targets.get(at % n) else {
                warn!("no xDS server to connect to");
                break;
            };
            info!(addr = %target, tls = self.opts.tls.is_some(), mode, "connecting to the xDS server");
            let mut got_response = false;
            let result = tokio::select! {
                () = shutdown.cancelled() => break,
                r = self.stream(target, &mut cs, &mut got_response) => r,
            };
            self.state.lock().connected = false;
            match result {
                Ok(()) => {}
                Err(e) => {
                    info!(addr = %target, error = %e, "xDS stream ended; keeping the last config")
                }
            }
            if got_response {
                backoff.reset();
            }
            // The next attempt goes to the next server: the one that failed
            // may be gone for a while.
            at = (at + 1) % n;
            let delay = backoff.next_delay();
            info!(
                delay_ms = delay.as_millis() as u64,
                "reconnecting to the xDS server"
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.state.lock().connected = false;
        info!("xDS client stopped");
    }

    /// One stream, from connecting until it ends.
    async fn stream(
        &self,
        target: &str,
        cs: &mut ClientState,
        got_response: &mut bool,
    ) -> Result<(), StreamError> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{target}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = match &self.opts.tls {
            None => endpoint.connect().await?,
            Some(tls) => {
                endpoint
                    .connect_with_connector(TlsDialer {
                        target: target.to_string(),
                        tls: tls.clone(),
                    })
                    .await?
            }
        };
        let mut grpc = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        if self.opts.delta {
            let mut proto = delta::DeltaStream::new(self.opts.node.clone());
            let (tx, rx) = mpsc::channel(16);
            send_all(&tx, proto.initial(cs)).await?;
            let inbound = grpc
                .delta_aggregated_resources(ReceiverStream::new(rx))
                .await?
                .into_inner();
            self.connected(target);
            drive(&mut proto, inbound, tx, cs, got_response).await
        } else {
            let mut proto = sotw::SotwStream::new(self.opts.node.clone());
            let (tx, rx) = mpsc::channel(16);
            send_all(&tx, proto.initial(cs)).await?;
            let inbound = grpc
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await?
                .into_inner();
            self.connected(target);
            drive(&mut proto, inbound, tx, cs, got_response).await
        }
    }

    fn connected(&self, target: &str) {
        let mut st = self.state.lock();
        st.connected = true;
        st.server = Some(target.to_string());
        drop(st);
        info!(addr = %target, "connected to the xDS server");
    }
}

/// What the SotW and delta stream state machines have in common.
trait Protocol: Send {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// The first requests of a stream.
    fn initial(&mut self, cs: &ClientState) -> Vec<Self::Request>;

    /// Handles a response: applies it, and returns the ACK or NACK followed
    /// by any subscription changes.
    fn on_response(
        &mut self,
        resp: Self::Response,
        cs: &mut ClientState,
    ) -> impl Future<Output = Vec<Self::Request>> + Send;

    /// Subscription changes since the last requests (after a reconcile).
    fn resubscribe(&mut self, cs: &ClientState) -> Vec<Self::Request>;
}

async fn send_all<T>(tx: &mpsc::Sender<T>, reqs: Vec<T>) -> Result<(), StreamError> {
    for r in reqs {
        tx.send(r).await.map_err(|_| StreamError::Closed)?;
    }
    Ok(())
}

/// Runs one stream after its first requests were sent: handles each
/// response, and reconciles when a warming deadline passes, sending what the
/// protocol answers. `inbound` is the gRPC response stream, or, in tests, a
/// channel fed in memory.
async fn drive<P, S>(
    proto: &mut P,
    mut inbound: S,
    tx: mpsc::Sender<P::Request>,
    cs: &mut ClientState,
    got_response: &mut bool,
) -> Result<(), StreamError>
where
    P: Protocol,
    S: Stream<Item = Result<P::Response, tonic::Status>> + Unpin,
{
    loop {
        let deadline = cs.store.next_deadline(Instant::now());
        let reqs = tokio::select! {
            msg = inbound.next() => match msg.transpose()? {
                None => return Err(StreamError::Closed),
                Some(resp) => {
                    *got_response = true;
                    proto.on_response(resp, cs).await
                }
            },
            () = sleep_until(deadline) => {
                cs.reconcile().await;
                proto.resubscribe(cs)
            }
        };
        send_all(&tx, reqs).await?;
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What outlives a stream: the held config, accepted versions, the status
/// handle and the sink.
struct ClientState {
    store: Store,
    versions: PerType<Option<String>>,
    /// A response of the type has been handled (ACKed or NACKed): as in
    /// Envoy, a rejected first response ends that type's initialization too.
    responded: PerType<bool>,
    state: Arc<XdsState>,
    sink: Arc<dyn ConfigSink>,
}

impl ClientState {
    /// Nothing held yet.
    fn new(sink: Arc<dyn ConfigSink>, state: Arc<XdsState>) -> Self {
        ClientState {
            store: Store::default(),
            versions: PerType::default(),
            responded: PerType::default(),
            state,
            sink,
        }
    }

    /// The last accepted version of `kind`, or empty.
    fn version(&self, kind: ResourceType) -> String {
        self.versions[kind].clone().unwrap_or_default()
    }

    /// Applies the valid part of a response (`update`; `rejected` are the
    /// resources decoding left out) and returns the NACK text if anything
    /// was rejected, `None` to ACK. On an ACK `version` becomes the accepted
    /// version; on a NACK the previous one stays, although the valid part is
    /// in force (the held resources carry their own versions).
    ///
    /// If the sink refuses the new set naming one of the response's
    /// resources, that resource is left out too and the rest retried;
    /// otherwise nothing of the response is applied.
    async fn apply(
        &mut self,
        mut update: Update,
        mut rejected: Vec<NackError>,
        version: &str,
    ) -> Option<String> {
        let kind = update.kind;
        let now = Instant::now();
        self.responded[kind] = true;
        let mut applied = false;
        // What the sink refuses to take at all is left out first, as a
        // resource that did not decode is.
        let sink = &*self.sink;
        update.upserts.retain(|(d, _)| match sink.check(d) {
            Ok(()) => true,
            Err(e) => {
                update.keep.insert(d.name().to_string());
                rejected.push(e);
                false
            }
        });
        loop {
            match self.store.apply(&update, &*self.sink, now).await {
                Ok(errors) => {
                    if let Some(e) = errors.last() {
                        self.state.lock().last_apply_error = Some(e.to_string());
                    }
                    applied = true;
                    break;
                }
                Err(e) => {
                    let culprit = if e.kind == Some(kind) {
                        update.upserts.iter().position(|(d, _)| d.name() == e.name)
                    } else {
                        None
                    };
                    rejected.push(e);
                    let Some(i) = culprit else { break };
                    let (d, _) = update.upserts.remove(i);
                    update.keep.insert(d.name().to_string());
                }
            }
        }
        if rejected.is_empty() {
            self.versions[kind] = Some(version.to_string());
            self.state.lock().versions[kind] = Some(version.to_string());
            self.update_initialized(now);
            return None;
        }
        let message = rejected
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if applied {
            warn!(r#type = kind.short(), version, error = %message, "NACK: the rest of the response is applied; rejected resources keep their previous version");
        } else {
            warn!(r#type = kind.short(), version, error = %message, "NACK: nothing of the response is applied");
        }
        self.state.lock().last_nack = Some(message.clone());
        self.update_initialized(now);
        Some(message)
    }

    /// Pushes what finished warming or timed out.
    async fn reconcile(&mut self) {
        let now = Instant::now();
        let errors = self.store.reconcile(&*self.sink, now).await;
        if let Some(e) = errors.last() {
            self.state.lock().last_apply_error = Some(e.to_string());
        }
        self.update_initialized(now);
    }

    fn update_initialized(&self, now: Instant) {
        let ready = self.responded[ResourceType::Cluster]
            && self.responded[ResourceType::Listener]
            && self.store.is_warm(now);
        if ready {
            let mut st = self.state.lock();
            if !st.initialized {
                st.initialized = true;
                info!("initial xDS config applied");
            }
        }
    }
}

/// Decodes one resource of a `kind` response.
fn decode_any(kind: ResourceType, any: &Any) -> Result<Option<Decoded>, NackError> {
    if any.type_url != kind.type_url() {
        return Err(NackError {
            kind: None,
            name: any.type_url.clone(),
            message: format!("unexpected in a {} response", kind.type_url()),
        });
    }
    model::decode(&any.type_url, &any.value)
}

/// The name of a resource that failed validation, if its bytes decode as a
/// `kind` message (so that a full set keeps that name's previous version).
fn resource_name(kind: ResourceType, any: &Any) -> Option<String> {
    if any.type_url != kind.type_url() {
        return None;
    }
    let bytes = any.value.as_slice();
    let name = match kind {
        ResourceType::Cluster => PbCluster::decode(bytes).ok()?.name,
        ResourceType::Endpoint => PbLoadAssignment::decode(bytes).ok()?.cluster_name,
        ResourceType::Listener => PbListener::decode(bytes).ok()?.name,
        ResourceType::Route => PbRouteConfig::decode(bytes).ok()?.name,
    };
    (!name.is_empty()).then_some(name)
}

/// One resource of a response, decoded or rejected.
struct Item {
    /// Its name, when known: the decoded name, the name a delta response
    /// gives it, or the name read from a resource that failed validation.
    name: Option<String>,
    result: Result<Decoded, NackError>,
    /// Its version (SotW: the response's).
    version: String,
}

impl Item {
    /// A resource of a `kind` response; `name` is the name the response
    /// gives it (delta), if any. `None` for a resource left out without
    /// being rejected (see `model::decode`).
    fn decode(kind: ResourceType, any: &Any, name: Option<&str>, version: &str) -> Option<Item> {
        let result = match decode_any(kind, any) {
            Ok(None) => {
                info!(r#type = kind.short(), name = ?name, "skipping an api_listener: it is for proxyless gRPC clients");
                return None;
            }
            Ok(Some(d)) => Ok(d),
            Err(e) => Err(e),
        };
        let name = match (&result, name) {
            (Ok(d), _) => Some(d.name().to_string()),
            (Err(_), Some(n)) if !n.is_empty() => Some(n.to_string()),
            (Err(_), _) => resource_name(kind, any),
        };
        Some(Item {
            name,
            result,
            version: version.to_string(),
        })
    }
}

/// Splits a response's resources into the update to apply and the rejected
/// ones (partial acceptance, as Envoy's CDS and LDS do): a resource that does
/// not decode or validate, or whose name appears twice, is left out, and its
/// name, when known, keeps its held version (a full set does not remove it).
/// A rejected resource whose name is unknown makes a full set remove nothing.
/// Resources of EDS and RDS not subscribed to (`wanted`) are ignored.
fn sort_resources(
    kind: ResourceType,
    items: Vec<Item>,
    mut full_set: bool,
    removed: Vec<String>,
    wanted: &BTreeSet<String>,
) -> (Update, Vec<NackError>) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for name in items.iter().filter_map(|i| i.name.as_deref()) {
        *count.entry(name).or_default() += 1;
    }
    let twice: HashSet<String> = count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(name, _)| name.to_string())
        .collect();
    let mut upserts = Vec::new();
    let mut rejected = Vec::new();
    let mut keep = BTreeSet::new();
    let mut unnamed = false;
    for item in items {
        match item.result {
            Ok(d) if twice.contains(d.name()) => {
                if keep.insert(d.name().to_string()) {
                    rejected.push(NackError {
                        kind: Some(kind),
                        name: d.name().to_string(),
                        message: "appears twice in one response".to_string(),
                    });
                }
            }
            Ok(d) if !kind.is_full_set() && !wanted.contains(d.name()) => {
                debug!(
                    r#type = kind.short(),
                    name = d.name(),
                    "ignoring a resource not subscribed to"
                );
            }
            Ok(d) => upserts.push((d, item.version)),
            Err(e) => {
                match item.name {
                    Some(name) => {
                        keep.insert(name);
                    }
                    None => unnamed = true,
                }
                rejected.push(e);
            }
        }
    }
    if unnamed && full_set {
        warn!(
            r#type = kind.short(),
            "a rejected resource has no name: nothing is removed by this response"
        );
        full_set = false;
    }
    let update = Update {
        kind,
        full_set,
        upserts,
        removed,
        keep,
    };
    (update, rejected)
}

/// A NACK's `error_detail`.
fn error_detail(message: &str) -> rpc::Status {
    rpc::Status {
        code: INVALID_ARGUMENT,
        message: message.to_string(),
        details: Vec::new(),
    }
}

/// Exponential backoff with jitter: each delay is drawn from
/// `[d/2, d]` where `d` doubles from [`BACKOFF_BASE`] up to [`BACKOFF_MAX`].
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(16);
        let d = BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}
