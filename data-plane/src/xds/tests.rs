//! Client tests.
//!
//! The protocol (SotW and delta state machines, the store behind them, the
//! stream loop with its warming deadlines) is driven in memory on paused
//! time: the test feeds responses into the loop a real stream runs
//! ([`drive`]) and reads the requests it answers with, checking ACKs, NACKs,
//! subscriptions and the calls made on a recording sink. A reconnect is the
//! same `ClientState` on a new stream. Only what the transport itself does
//! (connecting, failing over between servers, shutdown while the server is
//! down) runs against a scripted gRPC server on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use pylon::{type_url, ResourceType};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::testing::*;
use super::*;

const WAIT: Duration = Duration::from_secs(5);

/// One stream in memory: the client's stream loop ([`drive`]) runs in a
/// task; the test sends it responses and reads the requests it sends.
struct Wire<P: Protocol> {
    requests: mpsc::Receiver<P::Request>,
    responses: mpsc::Sender<Result<P::Response, Status>>,
    task: JoinHandle<(ClientState, Result<(), StreamError>)>,
}

impl<P> Wire<P>
where
    P: Protocol + 'static,
    P::Request: std::fmt::Debug,
{
    /// Opens a stream for `cs` as `XdsClient::stream` does: the protocol's
    /// first requests, then the loop.
    async fn open(mut proto: P, mut cs: ClientState) -> Self {
        let (tx, requests) = mpsc::channel(64);
        let (responses, rx) = mpsc::channel(16);
        send_all(&tx, proto.initial(&cs)).await.unwrap();
        let task = tokio::spawn(async move {
            let mut got_response = false;
            let inbound = ReceiverStream::new(rx);
            let r = drive(&mut proto, inbound, tx, &mut cs, &mut got_response).await;
            (cs, r)
        });
        Wire {
            requests,
            responses,
            task,
        }
    }

    /// The next request (the test fails if none comes).
    async fn recv(&mut self) -> P::Request {
        match tokio::time::timeout(WAIT, self.requests.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => panic!("expected a request, the stream ended"),
            Err(_) => panic!("expected a request, none came"),
        }
    }

    /// Asserts that the client has nothing more to send. On paused time the
    /// wait ends only once the client's task is idle.
    async fn silent(&mut self) {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), self.requests.recv()).await {
            panic!("unexpected request: {r:?}");
        }
    }

    async fn send(&self, resp: P::Response) {
        self.responses.send(Ok(resp)).await.unwrap();
    }

    /// The server ends the stream: the loop stops, and what outlives a
    /// stream (held config, versions) is handed back for the next one.
    async fn close(self) -> ClientState {
        drop(self.responses);
        let (cs, r) = self.task.await.unwrap();
        assert!(matches!(r, Err(StreamError::Closed)), "{r:?}");
        cs
    }
}

/// A client with nothing held: its recording sink, its status, and the
/// state that outlives streams.
fn harness() -> (Arc<FakeSink>, Arc<XdsState>, ClientState) {
    let sink = Arc::new(FakeSink::default());
    let state = Arc::new(XdsState::default());
    let cs = ClientState::new(Arc::clone(&sink) as Arc<dyn ConfigSink>, Arc::clone(&state));
    (sink, state, cs)
}

async fn sotw(cs: ClientState) -> Wire<sotw::SotwStream> {
    Wire::open(sotw::SotwStream::new(node("n1", "c1")), cs).await
}

async fn delta(cs: ClientState) -> Wire<delta::DeltaStream> {
    Wire::open(delta::DeltaStream::new(node("n1", "c1")), cs).await
}

/// One accepted stream: the client's requests and our responses.
struct Conn<Req, Resp> {
    requests: Streaming<Req>,
    responses: mpsc::Sender<Result<Resp, Status>>,
}

impl<Req, Resp> Conn<Req, Resp> {
    async fn recv(&mut self) -> Req {
        match tokio::time::timeout(WAIT, self.requests.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!(
                "expected a request, got {}",
                match other {
                    Err(_) => "a timeout".to_string(),
                    Ok(Ok(None)) => "end of stream".to_string(),
                    Ok(Err(s)) => format!("error {s}"),
                    Ok(Ok(Some(_))) => unreachable!(),
                }
            ),
        }
    }

    async fn send(&self, resp: Resp) {
        self.responses.send(Ok(resp)).await.unwrap();
    }
}

type SotwConn = Conn<DiscoveryRequest, DiscoveryResponse>;
type DeltaConn = Conn<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

/// The scripted ADS service: hands each new stream to the test.
struct Script {
    sotw: mpsc::UnboundedSender<SotwConn>,
    delta: mpsc::UnboundedSender<DeltaConn>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Script {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        req: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let _ = self.sotw.send(Conn {
            requests: req.into_inner(),
            responses: tx,
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        req: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let _ = self.delta.send(Conn {
            requests: req.into_inner(),
            responses: tx,
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A running scripted server.
struct Server {
    addr: SocketAddr,
    sotw: mpsc::UnboundedReceiver<SotwConn>,
    delta: mpsc::UnboundedReceiver<DeltaConn>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves on `addr` (port 0: any free port).
    async fn start(addr: SocketAddr) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sotw_tx, sotw) = mpsc::unbounded_channel();
        let (delta_tx, delta) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = AggregatedDiscoveryServiceServer::new(Script {
            sotw: sotw_tx,
            delta: delta_tx,
        });
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Server {
            addr,
            sotw,
            delta,
            stop,
            task,
        }
    }

    async fn sotw_conn(&mut self) -> SotwConn {
        tokio::time::timeout(WAIT, self.sotw.recv())
            .await
            .unwrap()
            .unwrap()
    }

    async fn delta_conn(&mut self) -> DeltaConn {
        tokio::time::timeout(WAIT, self.delta.recv())
            .await
            .unwrap()
            .unwrap()
    }

    /// Stops accepting at once (the listening socket closes); open streams
    /// end when their `Conn`s are dropped.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        drop(self.stop);
    }
}

fn start_client(
    addr: SocketAddr,
    delta: bool,
) -> (
    Arc<FakeSink>,
    Arc<XdsState>,
    CancellationToken,
    JoinHandle<()>,
) {
    let sink = Arc::new(FakeSink::default());
    let (client, state) = XdsClient::new(XdsOptions {
        targets: vec![addr.to_string()],
        tls: None,
        node: node("n1", "c1"),
        delta,
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(client.run(Arc::clone(&sink) as Arc<dyn ConfigSink>, shutdown.clone()));
    (sink, state, shutdown, task)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn sotw_resp(url: &str, version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
    DiscoveryResponse {
        version_info: version.into(),
        resources,
        type_url: url.into(),
        nonce: nonce.into(),
        ..Default::default()
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Checks a SotW request: type, names, version, nonce, and NACK message.
fn check(
    req: &DiscoveryRequest,
    url: &str,
    res: &[&str],
    version: &str,
    nonce: &str,
    nack: Option<&str>,
) {
    assert_eq!(req.type_url, url, "{req:?}");
    assert_eq!(req.resource_names, names(res), "{req:?}");
    assert_eq!(req.version_info, version, "{req:?}");
    assert_eq!(req.response_nonce, nonce, "{req:?}");
    match nack {
        None => assert_eq!(req.error_detail, None, "{req:?}"),
        Some(msg) => {
            let e = req.error_detail.as_ref().unwrap();
            assert_eq!(e.code, 3);
            assert_eq!(e.message, msg);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn sotw_warming_order_ack_and_nack() {
    let (sink, state, cs) = harness();
    let mut c = sotw(cs).await;

    // Wildcard CDS and LDS; the node in the first request only.
    let r = c.recv().await;
    check(&r, type_url::CLUSTER, &[], "", "", None);
    let n = r.node.unwrap();
    assert_eq!(
        (
            n.id.as_str(),
            n.cluster.as_str(),
            n.user_agent_name.as_str()
        ),
        ("n1", "c1", "pylon-proxy")
    );
    let r = c.recv().await;
    check(&r, type_url::LISTENER, &[], "", "", None);
    assert!(r.node.is_none());

    // CDS: ACK, then EDS for the new cluster; it warms (no sink call).
    c.send(sotw_resp(type_url::CLUSTER, "c1", "1", vec![pb_eds("a")]))
        .await;
    check(&c.recv().await, type_url::CLUSTER, &[], "c1", "1", None);
    check(&c.recv().await, type_url::ENDPOINT, &["a"], "", "", None);
    c.silent().await;
    assert_eq!(sink.take(), vec![]);

    // EDS: the assignment, then the cluster.
    c.send(sotw_resp(
        type_url::ENDPOINT,
        "e1",
        "2",
        vec![pb_cla("a", &[8081, 8082]), pb_cla("unasked", &[1])],
    ))
    .await;
    check(&c.recv().await, type_url::ENDPOINT, &["a"], "e1", "2", None);
    assert_eq!(
        sink.wait_calls(2).await,
        vec![
            Call::LoadAssignments(names(&["a"])),
            Call::Clusters(names(&["a"]))
        ]
    );
    assert_eq!(sink.endpoints(), vec![cla("a", 2)]);

    // LDS: ACK, RDS subscription; the listener waits for its routes.
    c.send(sotw_resp(
        type_url::LISTENER,
        "l1",
        "3",
        vec![pb_http_rds("front", "front-routes")],
    ))
    .await;
    check(&c.recv().await, type_url::LISTENER, &[], "l1", "3", None);
    check(
        &c.recv().await,
        type_url::ROUTE,
        &["front-routes"],
        "",
        "",
        None,
    );
    c.silent().await;
    assert_eq!(sink.take(), vec![]);
    c.send(sotw_resp(
        type_url::ROUTE,
        "r1",
        "4",
        vec![pb_routes("front-routes", "a")],
    ))
    .await;
    check(
        &c.recv().await,
        type_url::ROUTE,
        &["front-routes"],
        "r1",
        "4",
        None,
    );
    assert_eq!(
        sink.wait_calls(2).await,
        vec![
            Call::RouteConfigs(names(&["front-routes"])),
            Call::Listeners(names(&["front"]))
        ]
    );
    assert!(state.status().initialized);

    // A resource that fails validation: NACK with the previous version; the
    // sink is not called and the previous clusters stay.
    c.send(sotw_resp(
        type_url::CLUSTER,
        "c2",
        "5",
        vec![pb_eds("a"), pb_maglev("b")],
    ))
    .await;
    check(
        &c.recv().await,
        type_url::CLUSTER,
        &[],
        "c1",
        "5",
        Some("cluster b: lb_policy MAGLEV is not supported"),
    );
    c.silent().await;
    assert_eq!(sink.take(), vec![]);

    // Bytes that do not decode, and an Any of the wrong type: NACK too.
    let garbage = Any {
        type_url: type_url::CLUSTER.into(),
        value: vec![0xff, 0xff],
    };
    c.send(sotw_resp(type_url::CLUSTER, "c3", "6", vec![garbage]))
        .await;
    let r = c.recv().await;
    assert_eq!(
        (r.version_info.as_str(), r.response_nonce.as_str()),
        ("c1", "6")
    );
    assert!(r.error_detail.unwrap().message.starts_with(
        "resource type.googleapis.com/envoy.config.cluster.v3.Cluster: does not decode"
    ));
    c.send(sotw_resp(
        type_url::CLUSTER,
        "c4",
        "7",
        vec![pb_tcp("l", "a")],
    ))
    .await;
    check(&c.recv().await, type_url::CLUSTER, &[], "c1", "7", Some("resource type.googleapis.com/envoy.config.listener.v3.Listener: unexpected in a type.googleapis.com/envoy.config.cluster.v3.Cluster response"));
    c.send(sotw_resp(
        type_url::CLUSTER,
        "c5",
        "8",
        vec![pb_eds("a"), pb_eds("a")],
    ))
    .await;
    check(
        &c.recv().await,
        type_url::CLUSTER,
        &[],
        "c1",
        "8",
        Some("cluster a: appears twice in one response"),
    );

    // The runtime refusing the new set is a NACK as well.
    sink.reject(
        ResourceType::Listener,
        NackError {
            kind: Some(pylon::ResourceType::Listener),
            name: "k8s".into(),
            message: "address in use".into(),
        },
    );
    c.send(sotw_resp(
        type_url::LISTENER,
        "l2",
        "9",
        vec![pb_http_rds("front", "front-routes"), pb_tcp("k8s", "a")],
    ))
    .await;
    check(
        &c.recv().await,
        type_url::LISTENER,
        &[],
        "l1",
        "9",
        Some("listener k8s: address in use"),
    );
    sink.accept(ResourceType::Listener);
    let st = state.status();
    assert_eq!(
        st.last_nack.as_deref(),
        Some("listener k8s: address in use")
    );
    assert_eq!(st.versions[ResourceType::Cluster].as_deref(), Some("c1"));
    assert_eq!(st.versions[ResourceType::Listener].as_deref(), Some("l1"));

    // CDS without the cluster: removed, then its assignment; EDS unsubscribed.
    c.send(sotw_resp(type_url::CLUSTER, "c6", "10", vec![]))
        .await;
    check(&c.recv().await, type_url::CLUSTER, &[], "c6", "10", None);
    check(&c.recv().await, type_url::ENDPOINT, &[], "e1", "2", None);
    assert_eq!(
        sink.wait_calls(2).await,
        vec![Call::Clusters(vec![]), Call::LoadAssignments(vec![])]
    );

    // LDS without the listener: removed, then its routes; RDS unsubscribed.
    c.send(sotw_resp(type_url::LISTENER, "l3", "11", vec![]))
        .await;
    check(&c.recv().await, type_url::LISTENER, &[], "l3", "11", None);
    check(&c.recv().await, type_url::ROUTE, &[], "r1", "4", None);
    assert_eq!(
        sink.wait_calls(2).await,
        vec![Call::Listeners(vec![]), Call::RouteConfigs(vec![])]
    );

    c.close().await;
}

#[tokio::test(start_paused = true)]
async fn sotw_reconnect_resends_versions_and_keeps_config() {
    let (sink, state, cs) = harness();
    let mut c = sotw(cs).await;
    c.recv().await;
    c.recv().await;
    c.send(sotw_resp(type_url::CLUSTER, "c1", "1", vec![pb_eds("a")]))
        .await;
    c.recv().await;
    c.recv().await;
    c.send(sotw_resp(
        type_url::ENDPOINT,
        "e1",
        "2",
        vec![pb_cla("a", &[8081])],
    ))
    .await;
    c.recv().await;
    sink.wait_calls(2).await;

    // The control plane goes away: the config stays, the client reconnects.
    let mut c = sotw(c.close().await).await;
    assert_eq!(sink.take(), vec![], "nothing removed");
    let versions = state.status().versions;
    assert_eq!(versions[ResourceType::Cluster].as_deref(), Some("c1"));
    assert_eq!(versions[ResourceType::Endpoint].as_deref(), Some("e1"));
    let r = c.recv().await;
    check(&r, type_url::CLUSTER, &[], "c1", "", None);
    assert!(
        r.node.is_some(),
        "node in the first request of the new stream"
    );
    check(&c.recv().await, type_url::ENDPOINT, &["a"], "e1", "", None);
    check(&c.recv().await, type_url::LISTENER, &[], "", "", None);
    // The same content again changes nothing in the runtime.
    c.send(sotw_resp(type_url::CLUSTER, "c1", "1", vec![pb_eds("a")]))
        .await;
    check(&c.recv().await, type_url::CLUSTER, &[], "c1", "1", None);
    c.silent().await;
    assert_eq!(sink.take(), vec![]);

    c.close().await;
}

fn delta_resp(
    url: &str,
    nonce: &str,
    resources: Vec<(&str, &str, Any)>,
    removed: &[&str],
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        system_version_info: format!("v{nonce}"),
        resources: resources
            .into_iter()
            .map(|(name, version, any)| Resource {
                name: name.into(),
                version: version.into(),
                resource: Some(any),
                ..Default::default()
            })
            .collect(),
        type_url: url.into(),
        removed_resources: names(removed),
        nonce: nonce.into(),
        ..Default::default()
    }
}

fn check_delta(
    req: &DeltaDiscoveryRequest,
    url: &str,
    nonce: &str,
    sub: &[&str],
    unsub: &[&str],
    nack: Option<&str>,
) {
    assert_eq!(req.type_url, url, "{req:?}");
    assert_eq!(req.response_nonce, nonce, "{req:?}");
    assert_eq!(req.resource_names_subscribe, names(sub), "{req:?}");
    assert_eq!(req.resource_names_unsubscribe, names(unsub), "{req:?}");
    assert_eq!(
        req.error_detail.as_ref().map(|e| e.message.as_str()),
        nack,
        "{req:?}"
    );
}

fn versions(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn delta_ack_nack_reconnect_with_initial_versions() {
    let (sink, state, cs) = harness();
    let mut c = delta(cs).await;
    let r = c.recv().await;
    check_delta(&r, type_url::CLUSTER, "", &[], &[], None);
    assert!(r.node.is_some() && r.initial_resource_versions.is_empty());
    let r = c.recv().await;
    check_delta(&r, type_url::LISTENER, "", &[], &[], None);
    assert!(r.node.is_none());

    c.send(delta_resp(
        type_url::CLUSTER,
        "1",
        vec![("a", "ca1", pb_eds("a")), ("b", "cb1", pb_eds("b"))],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::CLUSTER, "1", &[], &[], None);
    check_delta(
        &c.recv().await,
        type_url::ENDPOINT,
        "",
        &["a", "b"],
        &[],
        None,
    );
    c.send(delta_resp(
        type_url::ENDPOINT,
        "2",
        vec![
            ("a", "ea1", pb_cla("a", &[8081])),
            ("b", "eb1", pb_cla("b", &[8082])),
        ],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::ENDPOINT, "2", &[], &[], None);
    assert_eq!(
        sink.wait_calls(2).await,
        vec![
            Call::LoadAssignments(names(&["a", "b"])),
            Call::Clusters(names(&["a", "b"]))
        ]
    );
    c.send(delta_resp(
        type_url::LISTENER,
        "3",
        vec![("k8s", "l1", pb_tcp("k8s", "a"))],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::LISTENER, "3", &[], &[], None);
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Listeners(names(&["k8s"]))]
    );

    // NACK: the nonce and the message; nothing applied.
    c.send(delta_resp(
        type_url::LISTENER,
        "4",
        vec![("bad", "x", pb_bad_listener("bad"))],
        &[],
    ))
    .await;
    check_delta(
        &c.recv().await,
        type_url::LISTENER,
        "4",
        &[],
        &[],
        Some("listener bad: address is required"),
    );
    c.send(delta_resp(
        type_url::LISTENER,
        "5",
        vec![("other", "x", pb_tcp("k8s", "a"))],
        &[],
    ))
    .await;
    check_delta(
        &c.recv().await,
        type_url::LISTENER,
        "5",
        &[],
        &[],
        Some("listener k8s: sent under the name \"other\""),
    );
    assert_eq!(sink.take(), vec![]);
    assert_eq!(
        state.status().versions[ResourceType::Listener].as_deref(),
        Some("v3")
    );

    // Control plane restarts: same config in force; the new stream says what is held.
    let mut c = delta(c.close().await).await;
    let r = c.recv().await;
    check_delta(&r, type_url::CLUSTER, "", &[], &[], None);
    assert_eq!(
        r.initial_resource_versions,
        versions(&[("a", "ca1"), ("b", "cb1")])
    );
    let r = c.recv().await;
    check_delta(&r, type_url::ENDPOINT, "", &["a", "b"], &[], None);
    assert_eq!(
        r.initial_resource_versions,
        versions(&[("a", "ea1"), ("b", "eb1")])
    );
    let r = c.recv().await;
    check_delta(&r, type_url::LISTENER, "", &[], &[], None);
    assert_eq!(r.initial_resource_versions, versions(&[("k8s", "l1")]));

    // A removal: the cluster, then its assignment; EDS unsubscribed.
    c.send(delta_resp(type_url::CLUSTER, "1", vec![], &["b"]))
        .await;
    check_delta(&c.recv().await, type_url::CLUSTER, "1", &[], &[], None);
    check_delta(&c.recv().await, type_url::ENDPOINT, "", &[], &["b"], None);
    assert_eq!(
        sink.wait_calls(2).await,
        vec![
            Call::Clusters(names(&["a"])),
            Call::LoadAssignments(names(&["a"]))
        ]
    );
    // An endpoint update for a held cluster.
    c.send(delta_resp(
        type_url::ENDPOINT,
        "2",
        vec![("a", "ea2", pb_cla("a", &[8081, 8083]))],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::ENDPOINT, "2", &[], &[], None);
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::LoadAssignments(names(&["a"]))]
    );
    assert_eq!(sink.endpoints()[0].endpoints.len(), 2);

    c.close().await;
}

#[tokio::test(start_paused = true)]
async fn delta_rds_subscriptions_follow_listeners() {
    let (sink, _state, cs) = harness();
    let mut c = delta(cs).await;
    c.recv().await;
    c.recv().await;
    c.send(delta_resp(
        type_url::LISTENER,
        "1",
        vec![("front", "l1", pb_http_rds("front", "r1"))],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::LISTENER, "1", &[], &[], None);
    check_delta(&c.recv().await, type_url::ROUTE, "", &["r1"], &[], None);
    c.send(delta_resp(
        type_url::ROUTE,
        "2",
        vec![("r1", "v1", pb_routes("r1", "a"))],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::ROUTE, "2", &[], &[], None);
    assert_eq!(
        sink.wait_calls(2).await,
        vec![
            Call::RouteConfigs(names(&["r1"])),
            Call::Listeners(names(&["front"]))
        ]
    );
    // The listener moves to r2: r1 stays subscribed until r2 is in force.
    c.send(delta_resp(
        type_url::LISTENER,
        "3",
        vec![("front", "l2", pb_http_rds("front", "r2"))],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::LISTENER, "3", &[], &[], None);
    check_delta(&c.recv().await, type_url::ROUTE, "", &["r2"], &[], None);
    c.send(delta_resp(
        type_url::ROUTE,
        "4",
        vec![("r2", "v1", pb_routes("r2", "a"))],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::ROUTE, "4", &[], &[], None);
    check_delta(&c.recv().await, type_url::ROUTE, "", &[], &["r1"], None);
    assert_eq!(
        sink.wait_calls(3).await,
        vec![
            Call::RouteConfigs(names(&["r1", "r2"])),
            Call::Listeners(names(&["front"])),
            Call::RouteConfigs(names(&["r2"])),
        ]
    );
    c.close().await;
}

/// The number of endpoints of the STATIC cluster `name` last given to the sink.
fn static_hosts(sink: &FakeSink, name: &str) -> Option<usize> {
    sink.clusters()
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| match c.discovery {
            crate::model::Discovery::Static(la) => la.endpoints.len(),
            crate::model::Discovery::Eds { .. } | crate::model::Discovery::Dns(_) => 0,
        })
}

const MAGLEV_RND: &str = "cluster rnd: lb_policy MAGLEV is not supported";
const MAGLEV_WEB: &str = "cluster web: lb_policy MAGLEV is not supported";

#[tokio::test(start_paused = true)]
async fn sotw_partial_acceptance() {
    let (sink, state, cs) = harness();
    let mut c = sotw(cs).await;
    c.recv().await;
    c.recv().await;

    // One valid and one invalid cluster: the valid one is applied, the
    // response NACKed naming the other, with the previous (no) version.
    c.send(sotw_resp(
        type_url::CLUSTER,
        "c1",
        "1",
        vec![pb_static("web", &[8081]), pb_maglev("rnd")],
    ))
    .await;
    check(
        &c.recv().await,
        type_url::CLUSTER,
        &[],
        "",
        "1",
        Some(MAGLEV_RND),
    );
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Clusters(names(&["web"]))]
    );
    let st = state.status();
    assert_eq!(st.versions[ResourceType::Cluster], None);
    assert_eq!(st.last_nack.as_deref(), Some(MAGLEV_RND));

    // A listener to `web` starts; CDS and LDS have answered: initialized.
    c.send(sotw_resp(
        type_url::LISTENER,
        "l1",
        "2",
        vec![pb_tcp("front", "web")],
    ))
    .await;
    check(&c.recv().await, type_url::LISTENER, &[], "l1", "2", None);
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Listeners(names(&["front"]))]
    );
    assert!(state.status().initialized);

    // Two errors are both named; an existing cluster made invalid keeps its
    // previous version, a new valid one is added.
    c.send(sotw_resp(
        type_url::CLUSTER,
        "c2",
        "3",
        vec![pb_maglev("web"), pb_static("b", &[9000]), pb_maglev("rnd")],
    ))
    .await;
    check(
        &c.recv().await,
        type_url::CLUSTER,
        &[],
        "",
        "3",
        Some(&format!("{MAGLEV_WEB}; {MAGLEV_RND}")),
    );
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Clusters(names(&["b", "web"]))]
    );
    assert_eq!(static_hosts(&sink, "web"), Some(1));

    // A fully valid response is ACKed with its version.
    c.send(sotw_resp(
        type_url::CLUSTER,
        "c3",
        "4",
        vec![pb_static("web", &[8081, 8082]), pb_static("b", &[9000])],
    ))
    .await;
    check(&c.recv().await, type_url::CLUSTER, &[], "c3", "4", None);
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Clusters(names(&["b", "web"]))]
    );
    assert_eq!(static_hosts(&sink, "web"), Some(2));
    assert_eq!(
        state.status().versions[ResourceType::Cluster].as_deref(),
        Some("c3")
    );

    // A full set still removes what it does not name (`b`), but not a name
    // it carries invalid (`web`); an undecodable resource (no name) makes
    // it remove nothing.
    c.send(sotw_resp(
        type_url::CLUSTER,
        "c4",
        "5",
        vec![pb_maglev("web")],
    ))
    .await;
    check(
        &c.recv().await,
        type_url::CLUSTER,
        &[],
        "c3",
        "5",
        Some(MAGLEV_WEB),
    );
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Clusters(names(&["web"]))]
    );
    assert_eq!(static_hosts(&sink, "web"), Some(2));
    let garbage = Any {
        type_url: type_url::CLUSTER.into(),
        value: vec![0xff, 0xff],
    };
    c.send(sotw_resp(type_url::CLUSTER, "c5", "6", vec![garbage]))
        .await;
    let r = c.recv().await;
    assert_eq!(
        (r.version_info.as_str(), r.response_nonce.as_str()),
        ("c3", "6")
    );
    assert!(r.error_detail.is_some());
    c.silent().await;
    assert_eq!(sink.take(), vec![]);

    c.close().await;
}

#[tokio::test(start_paused = true)]
async fn sink_error_naming_a_resource_rejects_that_one_only() {
    let (sink, state, cs) = harness();
    let mut c = sotw(cs).await;
    c.recv().await;
    c.recv().await;
    c.send(sotw_resp(
        type_url::LISTENER,
        "l1",
        "1",
        vec![pb_tcp("a", "x")],
    ))
    .await;
    check(&c.recv().await, type_url::LISTENER, &[], "l1", "1", None);
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Listeners(names(&["a"]))]
    );

    // `k8s` cannot bind: `b` is applied all the same; NACK naming `k8s`.
    sink.reject_named(
        ResourceType::Listener,
        NackError {
            kind: Some(pylon::ResourceType::Listener),
            name: "k8s".into(),
            message: "address in use".into(),
        },
    );
    c.send(sotw_resp(
        type_url::LISTENER,
        "l2",
        "2",
        vec![pb_tcp("a", "x"), pb_tcp("b", "x"), pb_tcp("k8s", "x")],
    ))
    .await;
    check(
        &c.recv().await,
        type_url::LISTENER,
        &[],
        "l1",
        "2",
        Some("listener k8s: address in use"),
    );
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Listeners(names(&["a", "b"]))]
    );
    assert_eq!(
        state.status().versions[ResourceType::Listener].as_deref(),
        Some("l1")
    );

    // An error naming nothing of the response rejects all of it.
    sink.reject(
        ResourceType::Listener,
        NackError {
            kind: Some(pylon::ResourceType::Listener),
            name: "elsewhere".into(),
            message: "out of file descriptors".into(),
        },
    );
    c.send(sotw_resp(
        type_url::LISTENER,
        "l3",
        "3",
        vec![pb_tcp("c", "x")],
    ))
    .await;
    check(
        &c.recv().await,
        type_url::LISTENER,
        &[],
        "l1",
        "3",
        Some("listener elsewhere: out of file descriptors"),
    );
    c.silent().await;
    assert_eq!(sink.take(), vec![]);

    // A resource the sink's check refuses (a listener that cannot bind) is
    // left out before any set is applied: the rest goes in (`c` added, `b`
    // removed), the NACK names `d`.
    sink.accept(ResourceType::Listener);
    sink.refuse_in_check(NackError {
        kind: Some(pylon::ResourceType::Listener),
        name: "d".into(),
        message: "cannot bind".into(),
    });
    c.send(sotw_resp(
        type_url::LISTENER,
        "l4",
        "4",
        vec![pb_tcp("a", "x"), pb_tcp("c", "x"), pb_tcp("d", "x")],
    ))
    .await;
    check(
        &c.recv().await,
        type_url::LISTENER,
        &[],
        "l1",
        "4",
        Some("listener d: cannot bind"),
    );
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Listeners(names(&["a", "c"]))]
    );

    c.close().await;
}

#[tokio::test(start_paused = true)]
async fn delta_partial_acceptance() {
    let (sink, state, cs) = harness();
    let mut c = delta(cs).await;
    c.recv().await;
    c.recv().await;

    c.send(delta_resp(
        type_url::CLUSTER,
        "1",
        vec![
            ("web", "w1", pb_static("web", &[8081])),
            ("rnd", "r1", pb_maglev("rnd")),
        ],
        &[],
    ))
    .await;
    check_delta(
        &c.recv().await,
        type_url::CLUSTER,
        "1",
        &[],
        &[],
        Some(MAGLEV_RND),
    );
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Clusters(names(&["web"]))]
    );
    assert_eq!(state.status().versions[ResourceType::Cluster], None);

    // `web` made invalid: its previous version stays.
    c.send(delta_resp(
        type_url::CLUSTER,
        "2",
        vec![("web", "w2", pb_maglev("web"))],
        &[],
    ))
    .await;
    check_delta(
        &c.recv().await,
        type_url::CLUSTER,
        "2",
        &[],
        &[],
        Some(MAGLEV_WEB),
    );
    c.silent().await;
    assert_eq!(sink.take(), vec![]);
    assert_eq!(static_hosts(&sink, "web"), Some(1));

    // After a reconnect the client says it holds `web` at w1 (not w2, and
    // not `rnd`), so the server resends what was rejected.
    let mut c = delta(c.close().await).await;
    let r = c.recv().await;
    check_delta(&r, type_url::CLUSTER, "", &[], &[], None);
    assert_eq!(r.initial_resource_versions, versions(&[("web", "w1")]));
    c.recv().await;

    // A fully valid response is ACKed.
    c.send(delta_resp(
        type_url::CLUSTER,
        "3",
        vec![("web", "w3", pb_static("web", &[8081, 8082]))],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::CLUSTER, "3", &[], &[], None);
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Clusters(names(&["web"]))]
    );
    assert_eq!(static_hosts(&sink, "web"), Some(2));
    assert_eq!(
        state.status().versions[ResourceType::Cluster].as_deref(),
        Some("v3")
    );

    c.close().await;
}

/// Waits (on paused time: until the client's next timer, if nothing else
/// happens) for `n` sink calls, and says when they came.
async fn calls_at(sink: &FakeSink, n: usize, t0: Instant) -> (Duration, Vec<Call>) {
    let calls = sink.wait_calls_within(n, WARMING_TIMEOUT * 2).await;
    (Instant::now() - t0, calls)
}

/// Warming has one owner, the store, and one timeout counted from when the
/// resource started warming: an EDS cluster whose assignment never comes is
/// given to the sink exactly [`WARMING_TIMEOUT`] after its CDS response,
/// without hosts; the initial config then counts as applied.
#[tokio::test(start_paused = true)]
async fn eds_cluster_is_used_after_exactly_the_warming_timeout() {
    let (sink, state, cs) = harness();
    let mut c = sotw(cs).await;
    c.recv().await;
    c.recv().await;
    c.send(sotw_resp(type_url::LISTENER, "l1", "1", vec![]))
        .await;
    check(&c.recv().await, type_url::LISTENER, &[], "l1", "1", None);
    assert_eq!(sink.take(), vec![], "an empty set changes nothing");
    let t0 = Instant::now();
    c.send(sotw_resp(type_url::CLUSTER, "c1", "2", vec![pb_eds("a")]))
        .await;
    check(&c.recv().await, type_url::CLUSTER, &[], "c1", "2", None);
    check(&c.recv().await, type_url::ENDPOINT, &["a"], "", "", None);
    assert!(!state.status().initialized, "the cluster is warming");

    // Just before the deadline: still warming.
    tokio::time::advance(WARMING_TIMEOUT - Duration::from_millis(2)).await;
    c.silent().await;
    assert_eq!(sink.take(), vec![]);
    assert!(!state.status().initialized);

    // At the deadline: used without its assignment, and nothing is resent
    // (the EDS subscription stays).
    let (after, calls) = calls_at(&sink, 1, t0).await;
    assert_eq!(after, WARMING_TIMEOUT);
    assert_eq!(calls, vec![Call::Clusters(names(&["a"]))]);
    assert!(state.status().initialized);
    c.silent().await;

    // The assignment arriving later fills it in.
    c.send(sotw_resp(
        type_url::ENDPOINT,
        "e1",
        "3",
        vec![pb_cla("a", &[8081])],
    ))
    .await;
    check(&c.recv().await, type_url::ENDPOINT, &["a"], "e1", "3", None);
    assert_eq!(sink.take(), vec![Call::LoadAssignments(names(&["a"]))]);
    c.close().await;
}

/// A listener whose route configuration never comes is used one
/// [`WARMING_TIMEOUT`] after its LDS response, not later: a cluster its
/// routes name that arrived meanwhile and is still warming does not restart
/// the wait. Delta, so that the test also covers that protocol's loop.
#[tokio::test(start_paused = true)]
async fn rds_listener_is_used_after_one_timeout_not_two() {
    let (sink, state, cs) = harness();
    let mut c = delta(cs).await;
    c.recv().await;
    c.recv().await;
    c.send(delta_resp(type_url::CLUSTER, "1", vec![], &[]))
        .await;
    check_delta(&c.recv().await, type_url::CLUSTER, "1", &[], &[], None);
    assert_eq!(sink.take(), vec![], "an empty set changes nothing");
    let t0 = Instant::now();
    c.send(delta_resp(
        type_url::LISTENER,
        "2",
        vec![("front", "l1", pb_http_rds("front", "r"))],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::LISTENER, "2", &[], &[], None);
    check_delta(&c.recv().await, type_url::ROUTE, "", &["r"], &[], None);

    // Late in the listener's warming, a cluster its routes will name
    // arrives, and starts warming on its own clock.
    tokio::time::advance(WARMING_TIMEOUT - Duration::from_secs(1)).await;
    c.silent().await;
    assert_eq!(sink.take(), vec![]);
    let t1 = Instant::now();
    c.send(delta_resp(
        type_url::CLUSTER,
        "3",
        vec![("web", "c1", pb_eds("web"))],
        &[],
    ))
    .await;
    check_delta(&c.recv().await, type_url::CLUSTER, "3", &[], &[], None);
    check_delta(&c.recv().await, type_url::ENDPOINT, "", &["web"], &[], None);
    assert_eq!(sink.take(), vec![]);

    // The listener's deadline: used without its routes (it answers 404),
    // though the cluster is still warming.
    let (after, calls) = calls_at(&sink, 1, t0).await;
    assert_eq!(after, WARMING_TIMEOUT);
    assert_eq!(calls, vec![Call::Listeners(names(&["front"]))]);
    // The cluster's own deadline, one timeout after it arrived.
    let (after, calls) = calls_at(&sink, 1, t1).await;
    assert_eq!(after, WARMING_TIMEOUT);
    assert_eq!(calls, vec![Call::Clusters(names(&["web"]))]);
    assert!(state.status().initialized);
    c.close().await;
}

/// What arrives before the timeout ends warming then: the cluster is used
/// with its assignment, the listener with its routes, and the deadline that
/// passes later changes nothing.
#[tokio::test(start_paused = true)]
async fn arrival_before_the_timeout_ends_warming_then() {
    let (sink, state, cs) = harness();
    let mut c = sotw(cs).await;
    c.recv().await;
    c.recv().await;
    let t0 = Instant::now();
    c.send(sotw_resp(type_url::CLUSTER, "c1", "1", vec![pb_eds("a")]))
        .await;
    c.recv().await;
    c.recv().await;
    c.send(sotw_resp(
        type_url::LISTENER,
        "l1",
        "2",
        vec![pb_http_rds("front", "r")],
    ))
    .await;
    c.recv().await;
    c.recv().await;
    assert_eq!(sink.take(), vec![]);

    tokio::time::advance(Duration::from_secs(5)).await;
    c.send(sotw_resp(
        type_url::ENDPOINT,
        "e1",
        "3",
        vec![pb_cla("a", &[8081])],
    ))
    .await;
    check(&c.recv().await, type_url::ENDPOINT, &["a"], "e1", "3", None);
    assert_eq!(
        sink.take(),
        vec![
            Call::LoadAssignments(names(&["a"])),
            Call::Clusters(names(&["a"]))
        ]
    );
    assert!(!state.status().initialized, "the listener is still warming");
    tokio::time::advance(Duration::from_secs(5)).await;
    c.send(sotw_resp(
        type_url::ROUTE,
        "r1",
        "4",
        vec![pb_routes("r", "a")],
    ))
    .await;
    check(&c.recv().await, type_url::ROUTE, &["r"], "r1", "4", None);
    assert_eq!(
        sink.take(),
        vec![
            Call::RouteConfigs(names(&["r"])),
            Call::Listeners(names(&["front"]))
        ]
    );
    assert!(state.status().initialized);
    assert_eq!(Instant::now() - t0, Duration::from_secs(10));

    // Past the deadlines: nothing more happens.
    tokio::time::advance(WARMING_TIMEOUT * 2).await;
    c.silent().await;
    assert_eq!(sink.take(), vec![]);
    c.close().await;
}

/// The transport, in each mode, against a scripted gRPC server on loopback:
/// the first requests carry the node once, a response is applied and ACKed,
/// the status says which server the client is connected to, and once the
/// server ends the stream, that it is not; shutdown then stops the client.
#[tokio::test]
async fn both_modes_stream_over_grpc() {
    for delta_mode in [false, true] {
        let mut server = Server::start("127.0.0.1:0".parse().unwrap()).await;
        let (sink, state, shutdown, task) = start_client(server.addr, delta_mode);
        if delta_mode {
            let mut c = server.delta_conn().await;
            let r = c.recv().await;
            check_delta(&r, type_url::CLUSTER, "", &[], &[], None);
            assert!(r.node.is_some());
            let r = c.recv().await;
            check_delta(&r, type_url::LISTENER, "", &[], &[], None);
            assert!(r.node.is_none());
            c.send(delta_resp(
                type_url::CLUSTER,
                "1",
                vec![("web", "w1", pb_static("web", &[8081]))],
                &[],
            ))
            .await;
            check_delta(&c.recv().await, type_url::CLUSTER, "1", &[], &[], None);
        } else {
            let mut c = server.sotw_conn().await;
            let r = c.recv().await;
            check(&r, type_url::CLUSTER, &[], "", "", None);
            assert!(r.node.is_some());
            let r = c.recv().await;
            check(&r, type_url::LISTENER, &[], "", "", None);
            assert!(r.node.is_none());
            c.send(sotw_resp(
                type_url::CLUSTER,
                "c1",
                "1",
                vec![pb_static("web", &[8081])],
            ))
            .await;
            check(&c.recv().await, type_url::CLUSTER, &[], "c1", "1", None);
        }
        assert_eq!(
            sink.wait_calls(1).await,
            vec![Call::Clusters(names(&["web"]))]
        );
        let st = state.status();
        assert!(st.connected, "delta: {delta_mode}");
        assert_eq!(st.server, Some(server.addr.to_string()));
        // The `Conn` is gone: the server ended the stream.
        server.kill().await;
        eventually("disconnected", || !state.status().connected).await;
        shutdown.cancel();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_the_server_is_down() {
    // Nothing listens here: the client keeps backing off until shutdown.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (_sink, state, shutdown, task) = start_client(addr, false);
    // Several connect attempts and backoff delays go by (paused time runs
    // them without waiting).
    tokio::time::advance(BACKOFF_MAX * 3).await;
    assert!(!state.status().connected);
    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let mut b = Backoff::default();
    let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
    for (i, d) in delays.iter().enumerate() {
        let full = BACKOFF_BASE.saturating_mul(1 << i).min(BACKOFF_MAX);
        assert!(
            *d >= full / 2 && *d <= full,
            "attempt {i}: {d:?} not in [{:?}, {full:?}]",
            full / 2
        );
    }
    b.reset();
    assert!(b.next_delay() <= BACKOFF_BASE);
}

/// An `api_listener` (for proxyless gRPC clients sharing the config) is
/// skipped, as Envoy skips it over LDS: the response is ACKed and the other
/// listeners are applied.
#[tokio::test(start_paused = true)]
async fn api_listeners_are_skipped_not_rejected() {
    use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener as PbL};
    use prost::Message as _;
    let (sink, _state, cs) = harness();
    let mut c = sotw(cs).await;
    c.recv().await;
    c.recv().await;
    c.send(sotw_resp(
        type_url::CLUSTER,
        "c1",
        "1",
        vec![pb_static("web", &[8081])],
    ))
    .await;
    c.recv().await;
    sink.wait_calls(1).await;
    let api = PbL {
        name: "greeter.example:50051".into(),
        api_listener: Some(ApiListener {
            api_listener: Some(Any {
                type_url: type_url::HTTP_CONNECTION_MANAGER.into(),
                value: Vec::new(),
            }),
        }),
        ..Default::default()
    };
    let api = Any {
        type_url: type_url::LISTENER.into(),
        value: api.encode_to_vec(),
    };
    c.send(sotw_resp(
        type_url::LISTENER,
        "l1",
        "2",
        vec![pb_tcp("front", "web"), api],
    ))
    .await;
    check(&c.recv().await, type_url::LISTENER, &[], "l1", "2", None);
    assert_eq!(
        sink.wait_calls(1).await,
        vec![Call::Listeners(names(&["front"]))]
    );
    c.close().await;
}

/// Several servers (replicas): the client reaches a live one whichever it
/// tries first, and when the stream to it breaks it moves to the next.
#[tokio::test]
async fn several_servers_fail_over_to_the_next() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mut a = Server::start("127.0.0.1:0".parse().unwrap()).await;
    let mut b = Server::start("127.0.0.1:0".parse().unwrap()).await;
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let sink = Arc::new(FakeSink::default());
    let (client, state) = XdsClient::new(XdsOptions {
        targets: vec![dead.to_string(), a_addr.clone(), b_addr.clone()],
        tls: None,
        node: node("n1", "c1"),
        delta: false,
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(client.run(Arc::clone(&sink) as Arc<dyn ConfigSink>, shutdown.clone()));
    // Whichever server the client picked, a stream arrives at a live one.
    let (first, survivor, conn) = tokio::time::timeout(WAIT, async {
        tokio::select! {
            c = a.sotw.recv() => (a, b, c),
            c = b.sotw.recv() => (b, a, c),
        }
    })
    .await
    .unwrap();
    let mut conn = conn.unwrap();
    let _ = conn.recv().await;
    eventually("connected", || state.status().connected).await;
    let first_addr = state.status().server.unwrap();
    assert!(first_addr == a_addr || first_addr == b_addr, "{first_addr}");
    // That replica dies: the client reconnects to the next, which is either
    // the other live one or the dead address and then the live one.
    drop(conn);
    first.kill().await;
    let mut survivor = survivor;
    let mut conn = survivor.sotw_conn().await;
    let _ = conn.recv().await;
    eventually("connected to the other replica", || {
        let st = state.status();
        st.connected && st.server.as_deref() != Some(first_addr.as_str())
    })
    .await;
    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}
